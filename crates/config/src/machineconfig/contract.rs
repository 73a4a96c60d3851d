//! Talos version contracts: which Talos release a definition targets and what that
//! implies (the config documents rendered, the Kubernetes minors supported).

/// talhelper's `LatestTalosVersion` (v3.1.16), used when talosVersion is not set.
pub const DEFAULT_TALOS_VERSION: &str = "v1.13.8";

/// A Talos version contract (major.minor). Only 1.12 and 1.13 are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contract {
    pub major: u32,
    pub minor: u32,
}

impl Contract {
    pub fn parse(version: &str) -> Result<Self, String> {
        let v = version.trim().strip_prefix('v').unwrap_or(version.trim());
        let mut it = v.split('.');
        let major = it.next().and_then(|s| s.parse().ok());
        let minor = it
            .next()
            .and_then(|s| s.split(['-', '+']).next()?.parse().ok());
        let (Some(major), Some(minor)) = (major, minor) else {
            return Err(format!(
                "talosVersion `{version}` is not a version like v1.12.6"
            ));
        };
        let c = Contract { major, minor };
        if major != 1 || !(12..=13).contains(&minor) {
            return Err(format!(
                "Talos {major}.{minor} is not supported: this tool renders configs for the 1.12 and 1.13 contracts"
            ));
        }
        Ok(c)
    }

    /// Kubernetes minors this Talos release supports (compatibility/talos1NN).
    pub fn kubernetes_range(&self) -> (u32, u32) {
        match self.minor {
            12 => (30, 35),
            _ => (31, 36),
        }
    }
}

/// `v1.35.3` → (1, 35, 3).
pub fn parse_k8s_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut it = v.splitn(3, '.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c_raw = it.next()?;
    let c = c_raw.split(['-', '+']).next()?.parse().ok()?;
    Some((a, b, c))
}
