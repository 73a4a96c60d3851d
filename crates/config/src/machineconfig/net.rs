//! Addresses in a definition: the cluster endpoint URL and CIDRs, checked the way
//! talosctl checks them.

use std::net::IpAddr;

/// `ValidateEndpointURI` plus the `https://` talosctl and the schema insist on.
pub fn check_endpoint(ep: &str) -> Result<(), String> {
    let rest = ep
        .strip_prefix("https://")
        .ok_or_else(|| format!("endpoint `{ep}` must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("endpoint `{ep}`: unclosed `[`"))?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        if authority.matches(':').count() > 1 {
            return Err(format!(
                "endpoint `{ep}`: IPv6 addresses need brackets, e.g. https://[fd00::1]:6443"
            ));
        }
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (authority.to_string(), None),
        }
    };
    if host.trim().is_empty() {
        return Err(format!("endpoint `{ep}` has no host"));
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => {
                return Err(format!(
                    "endpoint `{ep}`: port `{p}` is not a number in 1-65535"
                ))
            }
        }
    }
    Ok(())
}

/// The host part of an endpoint URL.
pub fn endpoint_host(ep: &str) -> String {
    let rest = ep.split_once("://").map(|x| x.1).unwrap_or(ep);
    let auth = rest.split('/').next().unwrap_or("");
    if let Some(r) = auth.strip_prefix('[') {
        return r.split(']').next().unwrap_or("").to_string();
    }
    auth.split(':').next().unwrap_or("").to_string()
}

/// `10.0.0.0/8` → (address, prefix).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let ip: IpAddr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((ip, p))
}

fn to_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// Whether `ip` lies in `net/prefix`.
pub fn cidr_contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    if net.0.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let (n, w) = to_bits(net.0);
    let (a, _) = to_bits(ip);
    let shift = (w - net.1) as u32;
    if shift >= 128 {
        return true;
    }
    (n >> shift) == (a >> shift)
}
