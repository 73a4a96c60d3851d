//! What `apply`'s journal (`<state>/day2/apply.json`) keeps per node: what the
//! real state cannot tell afterwards. Every step still reads the node first,
//! so a run killed anywhere converges: a node whose reboot was requested is
//! waited for (never rebooted again), a cordon of ours is always undone, a
//! finished node is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::Facts;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeApply {
    /// Why the node is rolled (`reboot`, `reinstall`, `staged-pending`).
    #[serde(default)]
    pub verdict: String,
    /// Its boot ID before the reboot: a different one proves the reboot.
    #[serde(default)]
    pub boot_id_before: Option<String>,
    /// The reboot (or reinstall) call was sent (recorded before sending).
    #[serde(default)]
    pub requested: bool,
    /// The Node was schedulable before this rollout cordoned it.
    #[serde(default)]
    pub cordoned_by_us: bool,
    /// The Node was Ready before the roll (the way back waits for Ready only then).
    #[serde(default)]
    pub was_ready: Option<bool>,
    /// Every boot ID seen after the call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_ids: Vec<String>,
    /// The node runs the definition, verified, uncordoned.
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyFacts {
    #[serde(default)]
    pub per_node: BTreeMap<String, NodeApply>,
    /// The automatic snapshot, taken once before the first control plane.
    #[serde(default)]
    pub backup: Option<String>,
    /// Nodes applied live (NO_REBOOT) by this rollout.
    #[serde(default)]
    pub live: Vec<String>,
    /// Refusals overridden with `--force`, and gates passed with `--ignore-gitops`.
    #[serde(default)]
    pub forced: Vec<String>,
}

impl Facts for ApplyFacts {}

pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("day2").join("apply.json")
}
