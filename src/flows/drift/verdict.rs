//! What a difference means for one node. Two sources, both shown: Talos's own
//! dry run (authoritative on 1.12/1.13: AUTO resolves to NO_REBOOT or REBOOT),
//! and the tool's table of changes Talos applies "live" that only take effect
//! later: `.cluster.etcd` (etcd reads it at start and Talos never restarts it),
//! on 1.14 the documented reboot list (AUTO never reboots there), and install
//! fields, which only an install or upgrade reads (Talos 1.12/1.13 apply
//! `.machine.install` live; its kernel arguments need the node reinstalled).

use serde::Serialize;

/// A node's drift, as `diff`, `status` and `apply` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The node runs the rendered config (and nothing is staged).
    Unchanged,
    /// Applies without a reboot and takes effect at once.
    Live,
    /// Needs a reboot to take effect; `reasons` name the fields.
    Reboot { reasons: Vec<String> },
    /// Only install fields changed (or with live ones): they take effect
    /// through a reinstall, an upgrade to the node's own installer image.
    Reinstall { fields: Vec<String> },
    /// The rendered config is staged (persistent) and waits for a reboot.
    StagedPending,
    /// Talos refused the rendered config (its validation message).
    Refused { message: String },
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Unchanged => "unchanged",
            Verdict::Live => "live",
            Verdict::Reboot { .. } => "reboot",
            Verdict::Reinstall { .. } => "reinstall",
            Verdict::StagedPending => "staged-pending",
            Verdict::Refused { .. } => "refused",
        }
    }

    /// One line for `status` and `diff`'s summary.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Unchanged => "matches the definition".into(),
            Verdict::Live => "differs; applies live (no reboot)".into(),
            Verdict::Reboot { reasons } => {
                format!("differs; needs a reboot ({})", reasons.join(", "))
            }
            Verdict::Reinstall { fields } => format!(
                "differs; {} take(s) effect only through a reinstall (upgrade to the same installer image)",
                fields.join(", ")
            ),
            Verdict::StagedPending => {
                "the definition is staged on the node and waits for its next reboot".into()
            }
            Verdict::Refused { message } => format!("refused by Talos: {message}"),
        }
    }

    pub fn differs(&self) -> bool {
        !matches!(self, Verdict::Unchanged)
    }
}

/// The Talos minor version of a tag (`v1.13.9` → 13), if it is 1.x.
pub fn minor_of(tag: &str) -> Option<u32> {
    let v = tag.trim_start_matches('v');
    let mut it = v.split('.');
    (it.next()? == "1").then_some(())?;
    it.next()?.parse().ok()
}

/// Rows of the tool's own table that apply to the changed `paths`
/// (`.machine.env`, `EnvironmentConfig`, …) on a node running Talos 1.`minor`.
pub fn table_rows(paths: &[String], minor: u32) -> Vec<String> {
    let mut rows: Vec<&str> = vec![".cluster.etcd"];
    if minor >= 14 {
        rows.extend([
            ".machine.env",
            "EnvironmentConfig",
            ".machine.kernel.modules",
        ]);
    }
    let mut out: Vec<String> = paths
        .iter()
        .filter(|p| {
            rows.iter()
                .any(|r| p.as_str() == *r || p.starts_with(&format!("{r}.")))
        })
        .cloned()
        .collect();
    out.dedup();
    out
}

/// Install fields among the changed paths.
pub fn install_fields(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .filter(|p| p.starts_with(".machine.install"))
        .cloned()
        .collect()
}

/// The verdict from the changed paths (v1alpha1 paths dotted, other documents
/// by label), Talos's dry-run mode and the node's minor version.
pub fn classify(paths: &[String], talos_mode: Option<&str>, minor: u32) -> Verdict {
    if paths.is_empty() {
        return Verdict::Unchanged;
    }
    if talos_mode == Some("REBOOT") {
        let mut reasons: Vec<String> = paths
            .iter()
            .filter(|p| p.starts_with(".machine") && !is_live_on_113(p))
            .cloned()
            .collect();
        if reasons.is_empty() {
            reasons.push("Talos's dry run says REBOOT".into());
        }
        return Verdict::Reboot { reasons };
    }
    let rows = table_rows(paths, minor);
    if !rows.is_empty() {
        return Verdict::Reboot { reasons: rows };
    }
    let install = install_fields(paths);
    if !install.is_empty() {
        return Verdict::Reinstall { fields: install };
    }
    Verdict::Live
}

/// Fields Talos 1.12/1.13 reconcile at runtime (`CanApplyImmediate`); only
/// used to name the reboot fields among a REBOOT verdict's changed paths.
fn is_live_on_113(path: &str) -> bool {
    const LIVE: &[&str] = &[
        ".machine.ca",
        ".machine.acceptedCAs",
        ".machine.time",
        ".machine.certSANs",
        ".machine.install",
        ".machine.network",
        ".machine.sysfs",
        ".machine.sysctls",
        ".machine.logging",
        ".machine.controlplane",
        ".machine.kubelet",
        ".machine.kernel",
        ".machine.registries",
        ".machine.pods",
        ".machine.seccompProfiles",
        ".machine.nodeAnnotations",
        ".machine.nodeLabels",
        ".machine.nodeTaints",
        ".machine.features.kubernetesTalosAPIAccess",
        ".machine.features.kubePrism",
        ".machine.features.hostDNS",
        ".machine.features.imageCache",
        ".machine.features.nodeAddressSortAlgorithm",
    ];
    LIVE.iter()
        .any(|l| path == *l || path.starts_with(&format!("{l}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn verdict_table() {
        assert_eq!(classify(&[], Some("NO_REBOOT"), 13), Verdict::Unchanged);
        assert_eq!(
            classify(&p(&[".machine.sysctls.a"]), Some("NO_REBOOT"), 13),
            Verdict::Live
        );
        assert_eq!(
            classify(
                &p(&[".machine.files", ".machine.sysctls.a"]),
                Some("REBOOT"),
                13
            ),
            Verdict::Reboot {
                reasons: p(&[".machine.files"])
            }
        );
        assert_eq!(
            classify(
                &p(&[".machine.install.extraKernelArgs"]),
                Some("NO_REBOOT"),
                13
            ),
            Verdict::Reinstall {
                fields: p(&[".machine.install.extraKernelArgs"])
            }
        );
        // .cluster.etcd: Talos calls it live; the table knows better.
        assert_eq!(
            classify(&p(&[".cluster.etcd.extraArgs"]), Some("NO_REBOOT"), 13),
            Verdict::Reboot {
                reasons: p(&[".cluster.etcd.extraArgs"])
            }
        );
        // 1.14: AUTO never says REBOOT; env is on the documented list.
        assert_eq!(
            classify(&p(&[".machine.env.X"]), Some("NO_REBOOT"), 14),
            Verdict::Reboot {
                reasons: p(&[".machine.env.X"])
            }
        );
        assert_eq!(
            classify(&p(&[".machine.env.X"]), Some("NO_REBOOT"), 13),
            Verdict::Live
        );
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor_of("v1.13.9"), Some(13));
        assert_eq!(minor_of("1.14.0-rc.1"), Some(14));
        assert_eq!(minor_of("v2.0.0"), None);
    }
}
