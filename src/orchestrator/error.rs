//! Flow-level failures and the error doctor: each says what failed, where, the
//! likely cause and the next action. Talos call failures keep their own
//! explanation ([`TalosError::explain`]).

use endsys_core::Doctor;
use std::time::Duration;

use thiserror::Error;

use crate::talos::TalosError;

/// One node's failure inside a parallel step.
#[derive(Debug, Clone)]
pub struct NodeFailure {
    pub node: String,
    pub error: Box<FlowError>,
}

/// Why `up` (or `plan`) stopped.
#[derive(Debug, Clone, Error)]
pub enum FlowError {
    /// The cluster definition is invalid (exit code 2).
    #[error("{file}: {detail}")]
    Definition { file: String, detail: String },

    /// No secrets bundle, and at least one node already runs with a CA.
    #[error("no secrets bundle at {path}, but {} already serve(s) a cluster CA: {}", .nodes.len(), .nodes.join(", "))]
    SecretsMissingClusterExists { path: String, nodes: Vec<String> },

    /// Nodes configured from a different secrets bundle.
    #[error("{} configured by another cluster (its certificate is not from our CA): {}", .nodes.len(), .nodes.join(", "))]
    ForeignCa { nodes: Vec<String> },

    /// Nodes that did not answer on the Talos API port.
    #[error("{} unreachable on port 50000: {}", .nodes.len(), .nodes.iter().map(|(n, d)| format!("{n} ({d})")).collect::<Vec<_>>().join(", "))]
    Unreachable { nodes: Vec<(String, String)> },

    /// The install-disk selector matches no disk, or more than one.
    #[error("{node}: install disk {selector} matches {} disk(s); exactly one is required\n{table}", .matched)]
    DiskSelector {
        node: String,
        selector: String,
        matched: usize,
        table: String,
    },

    /// An interface selector matches no link, or more than one.
    #[error("{node}: interface selector {selector} matches {} link(s); exactly one is required\n{table}", .matched)]
    LinkSelector {
        node: String,
        selector: String,
        matched: usize,
        table: String,
    },

    /// Several problems found before touching any node.
    #[error("preflight found {} problem(s); no node was changed:\n{}", .0.len(), .0.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<FlowError>),

    /// Some nodes failed a parallel step; the others finished.
    #[error("{step}: {} node(s) failed: {}", .failures.len(), .failures.iter().map(|f| f.node.as_str()).collect::<Vec<_>>().join(", "))]
    Nodes {
        step: String,
        failures: Vec<NodeFailure>,
    },

    #[error(transparent)]
    Talos(Box<TalosError>),

    /// A wait hit its deadline.
    #[error("{node}: still not {what} after {after:?}; last seen: {last}")]
    Timeout {
        node: String,
        what: String,
        after: Duration,
        last: String,
    },

    /// Bootstrap cannot run safely (etcd in an unexpected state, a control plane missing).
    #[error("{node}: etcd bootstrap refused: {detail}")]
    BootstrapRefused { node: String, detail: String },

    /// A node said AlreadyExists but its membership could not be verified.
    #[error(
        "{node}: Bootstrap answered AlreadyExists but membership could not be verified: {detail}"
    )]
    AlreadyBootstrappedUnverified { node: String, detail: String },

    /// Bootstrap{recover_etcd} was accepted but etcd failed to restore the snapshot.
    #[error("{node}: etcd could not restore the snapshot: {detail}")]
    RestoreFailed { node: String, detail: String },

    /// The journal or another local file could not be read or written.
    #[error("{path}: {detail}")]
    Local { path: String, detail: String },

    /// The cluster source (definition, secrets, renderer) failed.
    #[error("{0}")]
    Source(String),

    /// The Kubernetes half: an apply, a wait, a chart or a secret failed.
    #[error("{step}: {detail}")]
    Kube {
        step: String,
        detail: String,
        cause: String,
        next: String,
    },

    /// Layers 2–5: Flux's inputs (secrets, age key), its install and sync, or
    /// the tracker's report of what blocks a layer.
    #[error("{step}: {detail}")]
    Gitops {
        step: String,
        detail: String,
        cause: String,
        next: String,
    },
}

impl From<TalosError> for FlowError {
    fn from(e: TalosError) -> Self {
        FlowError::Talos(Box::new(e))
    }
}

impl FlowError {
    /// Wrong input (definition, selectors, secrets policy): exit code 2.
    pub fn is_input_error(&self) -> bool {
        match self {
            FlowError::Definition { .. }
            | FlowError::DiskSelector { .. }
            | FlowError::LinkSelector { .. }
            | FlowError::SecretsMissingClusterExists { .. } => true,
            FlowError::Preflight(all) => all.iter().all(FlowError::is_input_error),
            _ => false,
        }
    }

    pub fn likely_cause(&self) -> String {
        match self {
            FlowError::Definition { .. } => "the cluster definition has an error".into(),
            FlowError::SecretsMissingClusterExists { .. } => "the secrets bundle file is missing or misnamed while the cluster exists; generating a new one would lock you out of the running nodes".into(),
            FlowError::ForeignCa { .. } => "these nodes were configured from a different secrets bundle (another cluster, or secrets regenerated since)".into(),
            FlowError::Unreachable { .. } => "the nodes are powered off, still booting the Talos ISO, on another network, or the IPs in the definition are wrong".into(),
            FlowError::DiskSelector { matched: 0, .. } => "no disk on this machine fits the selector (wrong model/serial/size, or the disk is missing)".into(),
            FlowError::DiskSelector { .. } => "the selector is too loose: Talos would pick one of several disks, possibly the wrong one".into(),
            FlowError::LinkSelector { matched: 0, .. } => "no network link on this machine fits the selector (wrong MAC, or another machine answers on this IP)".into(),
            FlowError::LinkSelector { .. } => "the selector matches several links".into(),
            FlowError::Preflight(all) => all.first().map(FlowError::likely_cause).unwrap_or_default(),
            FlowError::Nodes { failures, .. } => failures
                .iter()
                .map(|f| format!("{}: {}", f.node, f.error.likely_cause()))
                .collect::<Vec<_>>()
                .join("; "),
            FlowError::Talos(e) => e.likely_cause(),
            FlowError::Timeout { .. } => "the node did not reach the state in time: it may be stuck (install failed, no network, wrong disk) or slower than the deadline".into(),
            FlowError::BootstrapRefused { .. } => "etcd on the control planes is in a state where bootstrapping could create a second cluster or would not work".into(),
            FlowError::AlreadyBootstrappedUnverified { .. } => "the node has etcd data that this tool cannot confirm belongs to this cluster".into(),
            FlowError::RestoreFailed { .. } => "the snapshot is damaged in a way its checksum did not catch, or is not an etcd snapshot".into(),
            FlowError::Local { .. } => "a local file could not be read or written".into(),
            FlowError::Source(_) => "the cluster definition or secrets could not be turned into configs".into(),
            FlowError::Kube { cause, .. } | FlowError::Gitops { cause, .. } => cause.clone(),
        }
    }

    pub fn next_action(&self) -> String {
        match self {
            FlowError::Definition { .. } => "fix the definition and run `plan` again".into(),
            FlowError::SecretsMissingClusterExists { .. } => "restore the secrets bundle (e.g. from git history); only if you mean to wipe the cluster, pass --new-cluster".into(),
            FlowError::ForeignCa { .. } => "check the node IPs; if the nodes should join this cluster, reset them to maintenance mode (`talos reset`) first".into(),
            FlowError::Unreachable { .. } => "power the nodes on and boot them into Talos maintenance mode, then run `up` again".into(),
            FlowError::DiskSelector { .. } => "edit installDiskSelector (or installDisk) in the definition using the table above, then run `plan`".into(),
            FlowError::LinkSelector { .. } => "edit the deviceSelector in networkInterfaces using the table above".into(),
            FlowError::Preflight(all) => all.first().map(FlowError::next_action).unwrap_or_default(),
            FlowError::Nodes { failures, .. } => failures
                .iter()
                .map(|f| format!("{}: {}", f.node, f.error.next_action()))
                .collect::<Vec<_>>()
                .join("; "),
            FlowError::Talos(e) => e.next_action(),
            FlowError::Timeout { .. } => "look at the node's console or `talos status`; run `up` again to resume".into(),
            FlowError::BootstrapRefused { .. } => "inspect with `talos members` and `talos services` on each control plane; run `up` again once etcd waits to join".into(),
            FlowError::AlreadyBootstrappedUnverified { .. } => "compare `talos members` on each control plane; if the node belongs to another cluster, reset it".into(),
            FlowError::RestoreFailed { .. } => "reset the node's EPHEMERAL partition (`talos reset`), then run `recover` with another snapshot".into(),
            FlowError::Local { .. } => "check the path's permissions and free space, or pass --state-dir".into(),
            FlowError::Source(_) => "run `validate` on the definition".into(),
            FlowError::Kube { next, .. } | FlowError::Gitops { next, .. } => next.clone(),
        }
    }

    /// What, where, likely cause, next action.
    pub fn explain(&self) -> String {
        match self {
            FlowError::Talos(e) => e.explain(),
            FlowError::Nodes { failures, step } => {
                let mut s = format!("{step}: {} node(s) failed", failures.len());
                for f in failures {
                    s.push_str(&format!(
                        "\n- {}: {}",
                        f.node,
                        f.error.explain().replace('\n', "\n  ")
                    ));
                }
                s
            }
            FlowError::Preflight(all) if all.len() > 1 => {
                let mut s = format!(
                    "preflight found {} problems; no node was changed:",
                    all.len()
                );
                for e in all {
                    s.push_str(&format!("\n- {}", e.explain().replace('\n', "\n  ")));
                }
                s
            }
            FlowError::Preflight(all) if all.len() == 1 => all[0].explain(),
            _ => format!(
                "{self}\n  likely cause: {}\n  next action:  {}",
                self.likely_cause(),
                self.next_action()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_names_nodes_cause_and_action() {
        let e = FlowError::ForeignCa {
            nodes: vec!["cp2 (127.0.0.12)".into()],
        };
        let x = e.explain();
        assert!(x.contains("cp2 (127.0.0.12)"), "{x}");
        assert!(x.contains("different secrets bundle"), "{x}");
        assert!(x.contains("reset"), "{x}");
        assert!(!e.is_input_error());
        let d = FlowError::DiskSelector {
            node: "cp1".into(),
            selector: "model=X*".into(),
            matched: 0,
            table: "sda ...".into(),
        };
        assert!(d.is_input_error());
        assert!(FlowError::Preflight(vec![d])
            .explain()
            .contains("installDiskSelector"));
    }
}
