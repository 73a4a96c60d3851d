//! Syntax checks on single talconfig values that end up in file names, image
//! references and talosconfig: each would otherwise fail only on the node, or
//! write outside the output folder.

use std::net::IpAddr;

/// The cluster name becomes a file-name prefix (`<cluster>-<host>.yaml`), a state
/// folder and a kubeconfig context: letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit, so it can never be a path (`../x`, `/tmp/x`).
pub fn cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "clusterName `{}` is not a plain name: it names files and folders, so it may hold only letters, digits, `-`, `_` and `.` (at most 63, starting with a letter or digit)",
            name.escape_debug()
        ))
    }
}

/// A release version `vMAJOR.MINOR.PATCH[-pre][+build]`, the shape Talos and
/// Kubernetes tag images with (semver 2.0 identifiers: `[0-9A-Za-z-]` dot-separated).
/// Returns (major, minor, patch).
pub fn release_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let mut it = core.split('.');
    let mut num = || -> Option<u32> {
        let s = it.next()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 9 {
            return None;
        }
        s.parse().ok()
    };
    let (a, b, c) = (num()?, num()?, num()?);
    if it.next().is_some() {
        return None;
    }
    if !rest.is_empty() {
        let body = &rest[1..];
        let ident_ok = |s: &str| {
            s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        };
        let ok = match body.split_once('+') {
            Some((pre, build)) => rest.starts_with('-') && ident_ok(pre) && ident_ok(build),
            None => ident_ok(body),
        };
        if !ok {
            return None;
        }
    }
    Some((a, b, c))
}

/// An image repository without tag (`talosImageURL`): the reference grammar of the
/// distribution spec, lowercase path components separated by `/`, optional
/// `host[:port]` first.
pub fn image_repository(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("talosImageURL `{}` {why}", url.escape_debug()));
    if url.is_empty() || url.len() > 255 {
        return bad("is empty or longer than 255 characters");
    }
    let mut parts = url.split('/');
    let first = parts.next().unwrap_or("");
    let host_like = url.contains('/')
        && (first.contains(['.', ':']) || first == "localhost")
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    let path: Vec<&str> = if host_like {
        parts.collect()
    } else {
        url.split('/').collect()
    };
    let component_ok = |p: &str| {
        !p.is_empty()
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    };
    if path.is_empty() || !path.iter().all(|p| component_ok(p)) {
        return bad(
            "is not an image repository (lowercase `registry/path/name`, no spaces, no tag)",
        );
    }
    Ok(())
}

/// `ipAddress` entries: an IP address or a DNS name (talhelper: "IP or domain
/// syntax"); no prefix length, since it is where the tool dials the node.
pub fn node_address(a: &str) -> Result<(), String> {
    if a.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let cidr = a
        .split_once('/')
        .is_some_and(|(ip, len)| ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok());
    if cidr {
        return Err(format!(
            "ipAddress `{a}` carries a prefix length: it is the address the tool dials, not the node's network"
        ));
    }
    if dns_name(a) {
        return Ok(());
    }
    Err(format!(
        "ipAddress `{}` is neither an IP address nor a DNS name",
        a.escape_debug()
    ))
}

fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // A name of digits and dots only is a mistyped IPv4 address.
        && !s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// A certSANs entry: an IP address or a DNS name, possibly `*.`-prefixed.
pub fn cert_san(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || dns_name(s.strip_prefix("*.").unwrap_or(s)) {
        Ok(())
    } else {
        Err(format!(
            "certSAN `{}` is neither an IP address nor a DNS name",
            s.escape_debug()
        ))
    }
}

/// A single-line value: control characters (a newline from a talenv value)
/// would add lines to the rendered config or break an image reference.
pub fn single_line(field: &str, v: &str) -> Result<(), String> {
    match v.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(format!(
            "{field} `{}` contains the control character {c:?}",
            v.escape_debug()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_cannot_be_paths() {
        assert!(cluster_name("kubernetes").is_ok());
        assert!(cluster_name("lab-1.home").is_ok());
        for bad in ["../esc", "/tmp/x", "a/b", "", ".hidden", "a..b", "a b"] {
            assert!(cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_are_strict() {
        assert_eq!(release_version("v1.13.9"), Some((1, 13, 9)));
        assert_eq!(release_version("v1.36.0-rc.1"), Some((1, 36, 0)));
        assert_eq!(release_version("1.12.6+build.1"), Some((1, 12, 6)));
        for bad in [
            "v1.13.9 ; echo pwned",
            "v1.13.banana",
            "v1.13",
            "v1.13.9-",
            "v1.13.9-a;b",
            "v1.13.9\nx",
            "v1.2.3.4",
        ] {
            assert_eq!(release_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn image_urls_and_addresses() {
        assert!(image_repository("factory.talos.dev/installer/abc123").is_ok());
        assert!(image_repository("ghcr.io/siderolabs/installer").is_ok());
        assert!(image_repository("localhost:5000/installer").is_ok());
        assert!(image_repository("ghcr.io/x/installer\n  bad").is_err());
        assert!(image_repository("ghcr.io/X/installer").is_err());
        assert!(node_address("10.0.0.5").is_ok());
        assert!(node_address("cp1.lan").is_ok());
        assert!(node_address("1.2.3.4/24").is_err());
        assert!(node_address("x; rm -rf /").is_err());
        assert!(node_address("1.2.3.999").is_err());
    }
}
