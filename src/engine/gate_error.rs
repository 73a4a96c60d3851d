//! Why a gate of a rolling operation (upgrade, apply, reimage) stopped it. Kept
//! apart from [`super::FlowError`] so the gates' refusals stay typed and each
//! carries what the operator needs to act: the node, the pod and its
//! PodDisruptionBudget, the boot IDs of a rollback, the blocking GitOps objects.

use std::time::Duration;

use endsys_core::Doctor;
use thiserror::Error;

/// A gate's refusal or a rolling step that failed on one node.
#[derive(Debug, Error)]
pub enum GateError {
    /// An eviction the PodDisruptionBudget kept refusing until the drain timeout.
    #[error("{node}: drain blocked after {after:?}: evicting Pod {pod} is refused by PodDisruptionBudget {} ({})", .pdb.as_deref().unwrap_or("(unnamed)"), budget_words(*.needs, *.has))]
    DrainBlocked {
        node: String,
        /// `namespace/name`.
        pod: String,
        /// `namespace/name` of the budget (from the 429's cause), when the API named it.
        pdb: Option<String>,
        needs: Option<u32>,
        has: Option<u32>,
        after: Duration,
    },

    /// The node rebooted but runs the version it ran before: Talos reverted to
    /// the other boot slot because the new image failed to boot.
    #[error("{node} rolled back: asked to move {from} → {to}, it came back on {from} (boot IDs {}){}", .boot_ids.join(" → "), events_words(.events))]
    RolledBack {
        node: String,
        from: String,
        to: String,
        boot_ids: Vec<String>,
        /// What the node's event stream showed since the call.
        events: Vec<String>,
    },

    /// The node came back on a version that is neither the target nor the one before.
    #[error("{node} runs {running} after the upgrade; expected {to} (was {from})")]
    WrongVersion {
        node: String,
        from: String,
        to: String,
        running: String,
    },

    /// The installer ran and failed (non-zero exit code of LifecycleService.Upgrade).
    #[error("{node}: the installer ({image}) exited with code {exit_code}{}", lines_words(.lines))]
    InstallerFailed {
        node: String,
        image: String,
        exit_code: i32,
        /// Its last output lines.
        lines: Vec<String>,
    },

    /// Talos refused the legacy upgrade because of etcd (its own quorum check).
    #[error("{node}: Talos refused the upgrade: {detail}")]
    TalosRefused { node: String, detail: String },

    /// GitOps layers not Ready before or after a node, past the deadline.
    #[error("GitOps layers not Ready {when} (waited {after:?}); blocking:\n{}", .blocking.iter().map(|b| format!("  {b}")).collect::<Vec<_>>().join("\n"))]
    LayersNotReady {
        /// `before cp2`, `after w1`.
        when: String,
        after: Duration,
        blocking: Vec<String>,
    },

    /// A preflight rule refused the operation before any node was touched.
    #[error("{op} refused: {rule}")]
    Refused {
        op: &'static str,
        rule: String,
        next: String,
    },
}

fn budget_words(needs: Option<u32>, has: Option<u32>) -> String {
    match (needs, has) {
        (Some(n), Some(h)) => format!("needs {n} healthy pod(s), has {h}"),
        _ => "no disruption allowed".into(),
    }
}

fn events_words(events: &[String]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = events
        .iter()
        .rev()
        .take(12)
        .rev()
        .map(|e| format!("  {e}"))
        .collect();
    format!("\nthe node's events:\n{}", shown.join("\n"))
}

fn lines_words(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = lines
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(String::as_str)
        .collect();
    format!(":\n  {}", shown.join("\n  "))
}

impl Doctor for GateError {
    fn likely_cause(&self) -> String {
        match self {
            GateError::DrainBlocked { .. } => "the PodDisruptionBudget allows no disruption right now: too few replicas are healthy elsewhere, or the budget is as strict as the replica count".into(),
            GateError::RolledBack { .. } => "the new image failed to boot on this machine (kernel, drivers, extensions or kernel arguments), so Talos booted the previous slot again".into(),
            GateError::WrongVersion { .. } => "another upgrade reached the node meanwhile, or the installer image carries another version than its tag says".into(),
            GateError::InstallerFailed { .. } => "the installer image does not fit the node (architecture, schematic, secure boot) or the system disk could not be written".into(),
            GateError::TalosRefused { .. } => "etcd is not healthy enough for Talos to let a control plane go (a member down or not started, or only 2 members)".into(),
            GateError::LayersNotReady { .. } => "a workload did not survive the node's absence, or Flux is still reconciling".into(),
            GateError::Refused { .. } => "the cluster is not in a state (or on a version) this operation can start from".into(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            GateError::DrainBlocked { .. } => "scale the workload up or relax the budget, then run the same command again; or pass --force-drain to delete the pod after --drain-timeout".into(),
            GateError::RolledBack { node, .. } => format!("the node runs and is uncordoned on its old version; read `talos dmesg` of {node}, check the image (schematic, extensions), then run the same command again; the other nodes were not touched after it"),
            GateError::WrongVersion { .. } => "check `talos version` on the node, then run the same command again".into(),
            GateError::InstallerFailed { .. } => "check the image reference (`--to`, talosImageURL, schematic) and the node's disk, then run the same command again (the node was not rebooted)".into(),
            GateError::TalosRefused { .. } => "bring every etcd member back healthy (`etcd status`), then run the same command again; --force skips Talos's check too".into(),
            GateError::LayersNotReady { .. } => "fix the named objects (or wait), then run the same command again: it resumes where it stopped; --ignore-gitops goes on regardless".into(),
            GateError::Refused { next, .. } => next.clone(),
        }
    }

    fn is_input_error(&self) -> bool {
        matches!(self, GateError::Refused { .. })
    }
}

impl From<GateError> for super::FlowError {
    fn from(e: GateError) -> Self {
        super::FlowError::Gate(Box::new(e))
    }
}
