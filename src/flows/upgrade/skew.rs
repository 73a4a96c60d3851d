//! Version rules an upgrade checks before any node is touched: how far a Talos
//! host may jump (the installer's `MinimumHostUpgradeVersion`, and the docs'
//! "one minor at a time"), and which Kubernetes versions each Talos minor runs
//! (`compatibility/talos1NN`). Facts from talos v1.12.6, v1.13.9 and
//! v1.14.0-rc.1; see docs/upgrade.md.

use std::fmt;

/// A `vMAJOR.MINOR.PATCH` version (a pre-release suffix is kept for display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub pre: String,
}

impl Version {
    /// Parses `v1.13.9`, `1.13.9`, `v1.14.0-rc.1`; None otherwise.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let (core, pre) = match s.split_once(['-', '+']) {
            Some((c, p)) => (c, p.to_string()),
            None => (s, String::new()),
        };
        let mut it = core.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        if it.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }

    fn key(&self) -> (u32, u32, u32, bool) {
        (self.major, self.minor, self.patch, self.pre.is_empty())
    }

    /// Same major.minor.patch (and suffix).
    pub fn same(&self, other: &Version) -> bool {
        self.key() == other.key()
    }

    pub fn older_than(&self, other: &Version) -> bool {
        self.key() < other.key()
    }

    /// `1.13` of `1.13.9`.
    pub fn minor_str(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// The oldest host minor (1.x) an installer of `target_minor` upgrades from
/// (`MinimumHostUpgradeVersion`: 1.12 ← 1.10, 1.13 ← 1.11, 1.14 ← 1.12).
fn min_host_minor(target_minor: u32) -> u32 {
    target_minor.saturating_sub(2)
}

/// Whether a Talos host may move from `host` to `target`; Err names the rule.
/// One minor at a time unless `allow_skip_minor` (then up to the installer's
/// limit of two); never down a minor.
pub fn talos_step(host: &Version, target: &Version, allow_skip_minor: bool) -> Result<(), String> {
    if host.major != 1 || target.major != 1 {
        return Err(format!(
            "only Talos 1.x is known to this tool (host {host}, target {target})"
        ));
    }
    if target.older_than(host) {
        return Err(format!(
            "{host} → {target} is a downgrade; this tool only upgrades (a downgrade needs talosctl and the release notes)"
        ));
    }
    let jump = target.minor - host.minor;
    if target.minor > host.minor && host.minor < min_host_minor(target.minor) {
        return Err(format!(
            "{host} → {target}: the {} installer upgrades only from Talos 1.{} or newer; go through every minor in between (latest patch of each)",
            target.minor_str(),
            min_host_minor(target.minor)
        ));
    }
    if jump > 1 && !allow_skip_minor {
        return Err(format!(
            "{host} → {target} skips a minor: upgrade one minor at a time (to the latest 1.{} patch first), or pass --allow-skip-minor (Talos {} allows it from 1.{})",
            host.minor + 1,
            target.minor_str(),
            min_host_minor(target.minor)
        ));
    }
    Ok(())
}

/// The Kubernetes minors each Talos minor supports (`SupportedWith`):
/// 1.12 runs 1.30–1.35, 1.13 runs 1.31–1.36, 1.14 runs 1.32–1.37.
pub fn kubernetes_range(talos: &Version) -> Option<(u32, u32)> {
    match (talos.major, talos.minor) {
        (1, 12) => Some((30, 35)),
        (1, 13) => Some((31, 36)),
        (1, 14) => Some((32, 37)),
        _ => None,
    }
}

/// Whether Kubernetes `k8s` runs on Talos `talos`; Err names the rule.
pub fn kubernetes_on(k8s: &Version, talos: &Version) -> Result<(), String> {
    let Some((lo, hi)) = kubernetes_range(talos) else {
        return Err(format!(
            "this tool knows no Kubernetes support table for Talos {talos}"
        ));
    };
    if k8s.major != 1 || k8s.minor < lo || k8s.minor > hi {
        return Err(format!(
            "Kubernetes {k8s} does not run on Talos {} (it supports 1.{lo}–1.{hi})",
            talos.minor_str()
        ));
    }
    Ok(())
}

/// A Kubernetes upgrade moves at most one minor, never down (`Path.IsSupported`).
pub fn kubernetes_step(from: &Version, to: &Version) -> Result<(), String> {
    if to.older_than(from) {
        return Err(format!("{from} → {to} is a downgrade"));
    }
    if to.major != from.major || to.minor > from.minor + 1 {
        return Err(format!(
            "{from} → {to} skips a minor: Kubernetes upgrades one minor at a time (1.{} first)",
            from.minor + 1
        ));
    }
    Ok(())
}

/// The tag of an image reference (`repo:tag[@digest]`), if any.
pub fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let slash = name.rfind('/').unwrap_or(0);
    name[slash..].rfind(':').map(|i| &name[slash + i + 1..])
}

/// The image with its tag replaced by `tag` (a digest is dropped: it pins the old tag).
pub fn with_tag(image: &str, tag: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let slash = name.rfind('/').unwrap_or(0);
    let repo = match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    };
    format!("{repo}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn talos_moves_one_minor_at_a_time() {
        assert!(talos_step(&v("v1.12.6"), &v("v1.13.9"), false).is_ok());
        assert!(talos_step(&v("v1.13.9"), &v("v1.13.9"), false).is_ok());
        assert!(talos_step(&v("v1.12.6"), &v("v1.12.11"), false).is_ok());
        let e = talos_step(&v("v1.12.6"), &v("v1.14.2"), false).unwrap_err();
        assert!(
            e.contains("--allow-skip-minor") && e.contains("1.13"),
            "{e}"
        );
        assert!(talos_step(&v("v1.12.6"), &v("v1.14.2"), true).is_ok());
        let e = talos_step(&v("v1.11.6"), &v("v1.14.2"), true).unwrap_err();
        assert!(e.contains("only from Talos 1.12"), "{e}");
        let e = talos_step(&v("v1.13.9"), &v("v1.12.6"), true).unwrap_err();
        assert!(e.contains("downgrade"), "{e}");
        assert!(v("v1.14.0-rc.1").older_than(&v("v1.14.0")));
    }

    #[test]
    fn kubernetes_skew_against_talos() {
        assert!(kubernetes_on(&v("v1.35.3"), &v("v1.13.9")).is_ok());
        let e = kubernetes_on(&v("v1.36.0"), &v("v1.12.6")).unwrap_err();
        assert!(e.contains("1.30–1.35"), "{e}");
        assert!(kubernetes_on(&v("v1.36.0"), &v("v1.13.9")).is_ok());
        assert!(kubernetes_on(&v("v1.37.0"), &v("v1.14.0")).is_ok());
        assert!(kubernetes_step(&v("1.35.3"), &v("1.36.0")).is_ok());
        assert!(kubernetes_step(&v("1.35.3"), &v("1.35.4")).is_ok());
        let e = kubernetes_step(&v("1.35.3"), &v("1.37.0")).unwrap_err();
        assert!(e.contains("one minor at a time"), "{e}");
        assert!(kubernetes_step(&v("1.36.0"), &v("1.35.3")).is_err());
    }

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("ghcr.io/siderolabs/installer:v1.12.6"),
            Some("v1.12.6")
        );
        assert_eq!(image_tag("localhost:5000/installer"), None);
        assert_eq!(
            with_tag(
                "factory.talos.dev/metal-installer/abc:v1.12.6@sha256:ff",
                "v1.13.9"
            ),
            "factory.talos.dev/metal-installer/abc:v1.13.9"
        );
        assert_eq!(
            with_tag("localhost:5000/installer", "v1.13.9"),
            "localhost:5000/installer:v1.13.9"
        );
    }
}
