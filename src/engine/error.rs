//! Why a flow stopped: one error type for `up`, `plan`, the node operations and
//! `recover`. Each says what failed and where; its [`Doctor`] adds the likely
//! cause and the next action, in one wording everywhere. Errors of the rooms
//! below (Talos, Kubernetes, charts, SOPS, the Flux tracker) stay chained as the
//! `source`, not flattened into strings.

use std::path::Path;
use std::time::Duration;

use endsys_core::Doctor;
use thiserror::Error;

use super::gate_error::GateError;
use crate::charts::ChartsError;
use crate::gitops::TrackError;
use crate::kube::KubeError;
use crate::snapshot::SnapshotFileError;
use crate::sops::SopsError;
use crate::talos::TalosError;

/// One node's failure inside a parallel step.
#[derive(Debug)]
pub struct NodeFailure {
    pub node: String,
    pub error: Box<FlowError>,
}

fn list(nodes: &[(String, String)]) -> String {
    nodes
        .iter()
        .map(|(n, d)| format!("{n} ({d})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a flow (or `plan`) stopped.
#[derive(Debug, Error)]
pub enum FlowError {
    // ---- inputs ------------------------------------------------------------------
    /// The cluster definition is invalid (exit code 2).
    #[error("{file}: {detail}")]
    Definition { file: String, detail: String },

    /// No secrets bundle, and at least one node already runs with a CA.
    #[error("no secrets bundle at {path}, but {} already serve(s) a cluster CA: {}", .nodes.len(), .nodes.join(", "))]
    SecretsMissingClusterExists { path: String, nodes: Vec<String> },

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

    /// A node operation names a node the definition does not have.
    #[error("{node}: not in the cluster definition (nodes: {known})")]
    UnknownNode { node: String, known: String },

    /// The cluster source (definition, secrets, renderer) failed.
    #[error("{0}")]
    Source(String),

    /// The journal or another local file could not be read or written.
    #[error("{path}: {detail}")]
    Local { path: String, detail: String },

    // ---- nodes -------------------------------------------------------------------
    /// Nodes configured from a different secrets bundle.
    #[error("{} configured by another cluster (its certificate is not from our CA): {}", .nodes.len(), .nodes.join(", "))]
    ForeignCa { nodes: Vec<String> },

    /// Nodes that did not answer on the Talos API port.
    #[error("{} unreachable on port 50000: {}", .nodes.len(), list(.nodes))]
    Unreachable { nodes: Vec<(String, String)> },

    /// Several problems found before touching any node.
    #[error("preflight found {} problem(s); no node was changed:\n{}", .0.len(), .0.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<FlowError>),

    /// Some nodes failed a parallel step; the others finished.
    #[error("{step}: {} node(s) failed: {}", .failures.len(), .failures.iter().map(|f| f.node.as_str()).collect::<Vec<_>>().join(", "))]
    Nodes {
        step: String,
        failures: Vec<NodeFailure>,
    },

    /// The node is in a state the operation cannot start from.
    #[error("{node}: {detail}")]
    NodeState {
        node: String,
        detail: String,
        next: String,
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

    // ---- etcd --------------------------------------------------------------------
    /// Bootstrap cannot run safely (etcd in an unexpected state, a control plane missing).
    #[error("{node}: etcd bootstrap refused: {detail}")]
    BootstrapRefused { node: String, detail: String },

    /// A node that had left maintenance answers in maintenance mode again: its
    /// config is gone, so waiting for it to run that config cannot succeed.
    #[error("{node}: back in maintenance mode ({detail}); it will not run its config")]
    BackInMaintenance { node: String, detail: String },

    /// A node said AlreadyExists but its membership could not be verified.
    #[error(
        "{node}: Bootstrap answered AlreadyExists but membership could not be verified: {detail}"
    )]
    AlreadyBootstrappedUnverified { node: String, detail: String },

    /// Bootstrap{recover_etcd} was accepted but etcd failed to restore the snapshot.
    #[error("{node}: etcd could not restore the snapshot: {detail}")]
    RestoreFailed { node: String, detail: String },

    /// The quorum guard refused a node operation.
    #[error("{op} {node} refused by the quorum guard:\n{}\n{table}", .reasons.iter().map(|r| format!("- {r}")).collect::<Vec<_>>().join("\n"))]
    Guard {
        op: &'static str,
        node: String,
        reasons: Vec<String>,
        table: String,
    },

    /// A gate of a rolling operation stopped it (drain blocked, node rolled
    /// back, layers not Ready, skew refused …): see [`GateError`].
    #[error(transparent)]
    Gate(Box<GateError>),

    /// No control plane could serve the call.
    #[error("no healthy control plane for {what}: {}", .tried.join("; "))]
    NoHealthyControlPlane { what: String, tried: Vec<String> },

    /// The kubeconfig reaches Kubernetes through the very node being wiped.
    #[error("{node}: the kubeconfig's API server {server} is this node; once it is reset, its Node could not be deleted nor watched back")]
    ApiOnNode { node: String, server: String },

    // ---- Kubernetes and GitOps ------------------------------------------------------
    /// A Kubernetes call or wait failed (in a step of `up`, or on a node).
    #[error("{}", match .node { Some(n) => format!("{n}: Kubernetes: {source}"), None => format!("{step}: {source}") })]
    Kube {
        step: String,
        node: Option<String>,
        #[source]
        source: Box<KubeError>,
    },

    /// A chart, the helmfile or helm itself.
    #[error("{step}: {source}")]
    Charts {
        step: String,
        #[source]
        source: Box<ChartsError>,
    },

    /// A SOPS file that does not decrypt.
    #[error("{step}: {file} does not decrypt: {source}")]
    Sops {
        step: String,
        file: String,
        #[source]
        source: Box<SopsError>,
    },

    /// The tracker over layers 3–5 ended without every layer Ready.
    #[error("{step}: {source}")]
    Track {
        step: String,
        #[source]
        source: Box<TrackError>,
    },

    /// A step's own finding in layer 1, with the cause and next action it knows.
    #[error("{step}: {detail}")]
    Step {
        step: String,
        detail: String,
        cause: String,
        next: String,
    },

    /// Layers 2–5: Flux's inputs (secrets, age key), its install and sync.
    #[error("{step}: {detail}")]
    Gitops {
        step: String,
        detail: String,
        cause: String,
        next: String,
    },

    // ---- backups and recovery ------------------------------------------------------
    /// A snapshot file or its sidecar; `refused`: a recovery stopped on it
    /// before touching any node.
    #[error("{}", snapshot_text(.source, *.refused))]
    Snapshot {
        #[source]
        source: Box<SnapshotFileError>,
        refused: bool,
    },

    /// A backup could not be written where asked.
    #[error("{path}: {detail}")]
    Backup { path: String, detail: String },

    #[error("no secrets bundle at {location}: recover never creates new secrets")]
    NoSecrets { location: String },

    #[error("{} node(s) not in maintenance mode: {}; no node was touched", .nodes.len(), list(.nodes))]
    NodesConfigured { nodes: Vec<(String, String)> },

    #[error("{} node(s) do not answer on the Talos API: {}; no node was touched", .nodes.len(), list(.nodes))]
    NodesUnreachable { nodes: Vec<(String, String)> },

    #[error("cannot reset {}: {}; no node was touched", .nodes.len(), list(.nodes))]
    CannotReset { nodes: Vec<(String, String)> },

    #[error("{journal}: a recovery from another snapshot (sha256 {other}) is in phase {phase}")]
    OtherRecoveryInProgress {
        journal: String,
        other: String,
        phase: String,
    },

    #[error("{endpoint}: the restore is not verified: {detail}")]
    NotRestored { endpoint: String, detail: String },

    #[error("{node}: after its reboot, {detail}")]
    LostAfterReboot { node: String, detail: String },

    /// Another run holds the state directory's lock.
    #[error("{dir}: in use by another run ({holder}); nothing was done")]
    StateLocked { dir: String, holder: String },
}

fn snapshot_text(e: &SnapshotFileError, refused: bool) -> String {
    if !refused {
        return e.to_string();
    }
    match e {
        SnapshotFileError::Unreadable { path, detail } => format!(
            "{}: cannot read the snapshot: {detail}; no node was touched",
            path.display()
        ),
        SnapshotFileError::Corrupt { path, detail } => format!(
            "{}: not a usable etcd snapshot: {detail}; no node was touched",
            path.display()
        ),
        SnapshotFileError::Sidecar {
            snapshot,
            sidecar,
            detail,
        }
        | SnapshotFileError::Mismatch {
            snapshot,
            sidecar,
            detail,
        } => format!(
            "{}: does not match its sidecar {}: {detail}; no node was touched",
            snapshot.display(),
            sidecar.display()
        ),
    }
}

impl From<TalosError> for FlowError {
    fn from(e: TalosError) -> Self {
        FlowError::Talos(Box::new(e))
    }
}

impl FlowError {
    /// A local file problem.
    pub fn local(path: &Path, detail: impl Into<String>) -> Self {
        FlowError::Local {
            path: path.display().to_string(),
            detail: detail.into(),
        }
    }

    /// A Kubernetes failure in `step` of a cluster-wide flow.
    pub fn kube(step: impl std::fmt::Display, source: KubeError) -> Self {
        FlowError::Kube {
            step: step.to_string(),
            node: None,
            source: Box::new(source),
        }
    }

    /// A Kubernetes failure about one node (node operations).
    pub fn kube_on(node: &str, source: KubeError) -> Self {
        FlowError::Kube {
            step: String::new(),
            node: Some(node.to_string()),
            source: Box::new(source),
        }
    }

    pub fn charts(step: impl std::fmt::Display, source: ChartsError) -> Self {
        FlowError::Charts {
            step: step.to_string(),
            source: Box::new(source),
        }
    }

    /// A SOPS file of `step` that does not decrypt.
    pub fn sops(step: impl std::fmt::Display, file: String, source: SopsError) -> Self {
        FlowError::Sops {
            step: step.to_string(),
            file,
            source: Box::new(source),
        }
    }

    /// The tracker over layers 3–5 ended without every layer Ready.
    pub fn track(step: impl std::fmt::Display, source: TrackError) -> Self {
        FlowError::Track {
            step: step.to_string(),
            source: Box::new(source),
        }
    }

    /// A finding of a layer-1 step.
    pub fn step(step: impl std::fmt::Display, detail: String, cause: &str, next: &str) -> Self {
        FlowError::Step {
            step: step.to_string(),
            detail,
            cause: cause.into(),
            next: next.into(),
        }
    }

    /// A finding of a GitOps step.
    pub fn gitops(step: impl std::fmt::Display, detail: String, cause: &str, next: &str) -> Self {
        FlowError::Gitops {
            step: step.to_string(),
            detail,
            cause: cause.into(),
            next: next.into(),
        }
    }

    /// A snapshot problem in `etcd backup|verify` and node operations.
    pub fn snapshot(source: SnapshotFileError) -> Self {
        FlowError::Snapshot {
            source: Box::new(source),
            refused: false,
        }
    }

    /// A snapshot problem that stops a recovery before it touches a node.
    pub fn snapshot_refused(source: SnapshotFileError) -> Self {
        FlowError::Snapshot {
            source: Box::new(source),
            refused: true,
        }
    }
}

impl Doctor for FlowError {
    /// Wrong input (definition, selectors, secrets policy, snapshot, node
    /// names, nodes not in the mode a recovery needs): exit code 2.
    fn is_input_error(&self) -> bool {
        match self {
            FlowError::Definition { .. }
            | FlowError::DiskSelector { .. }
            | FlowError::LinkSelector { .. }
            | FlowError::SecretsMissingClusterExists { .. }
            | FlowError::UnknownNode { .. }
            | FlowError::NoSecrets { .. }
            | FlowError::NodesConfigured { .. }
            | FlowError::NodesUnreachable { .. }
            | FlowError::OtherRecoveryInProgress { .. }
            | FlowError::StateLocked { .. }
            | FlowError::Snapshot { refused: true, .. } => true,
            FlowError::Preflight(all) => all.iter().all(FlowError::is_input_error),
            FlowError::Gate(g) => g.is_input_error(),
            _ => false,
        }
    }

    fn likely_cause(&self) -> String {
        match self {
            FlowError::Definition { .. } => "the cluster definition has an error".into(),
            FlowError::SecretsMissingClusterExists { .. } => "the secrets bundle file is missing or misnamed while the cluster exists; generating a new one would lock you out of the running nodes".into(),
            FlowError::DiskSelector { matched: 0, .. } => "no disk on this machine fits the selector (wrong model/serial/size, or the disk is missing)".into(),
            FlowError::DiskSelector { .. } => "the selector is too loose: Talos would pick one of several disks, possibly the wrong one".into(),
            FlowError::LinkSelector { matched: 0, .. } => "no network link on this machine fits the selector (wrong MAC, or another machine answers on this IP)".into(),
            FlowError::LinkSelector { .. } => "the selector matches several links".into(),
            FlowError::UnknownNode { .. } => "a typo, or the node was not added to talconfig.yaml".into(),
            FlowError::Source(_) => "the cluster definition or secrets could not be turned into configs".into(),
            FlowError::Local { .. } | FlowError::Backup { .. } => "a local file could not be read or written".into(),
            FlowError::ForeignCa { .. } => "these nodes were configured from a different secrets bundle (another cluster, or secrets regenerated since)".into(),
            FlowError::Unreachable { .. } => "the nodes are powered off, still booting the Talos ISO, on another network, or the IPs in the definition are wrong".into(),
            FlowError::Preflight(all) => all.first().map(FlowError::likely_cause).unwrap_or_default(),
            FlowError::Nodes { failures, .. } => failures
                .iter()
                .map(|f| format!("{}: {}", f.node, f.error.likely_cause()))
                .collect::<Vec<_>>()
                .join("; "),
            FlowError::NodeState { .. } => "the node is not where the operation starts".into(),
            FlowError::Talos(e) => e.likely_cause(),
            FlowError::Timeout { what, .. } if what.contains("etcd") => "the node's etcd cannot reach its peers (network, firewall on 2379/2380), is stuck as a learner, or is slower than the deadline".into(),
            FlowError::Timeout { what, .. } if what.contains("trustd") => "the worker has no apid certificate yet: trustd on the control planes (port 50001, through the cluster endpoint or the API server's addresses) is unreachable from it, or refuses its machine.token".into(),
            FlowError::Timeout { .. } => "the node did not reach the state in time: it may be stuck (install failed, no network, wrong disk) or slower than the deadline".into(),
            FlowError::BootstrapRefused { .. } => "etcd on the control planes is in a state where bootstrapping could create a second cluster or would not work".into(),
            FlowError::BackInMaintenance { .. } => "the node lost its config: its system disk was wiped or replaced, it was reset, or the machine (or lab) was reinstalled".into(),
            FlowError::AlreadyBootstrappedUnverified { .. } => "etcd on the node was already bootstrapped (by another run, or earlier) and its membership could not be read yet; most often etcd is still starting".into(),
            FlowError::RestoreFailed { .. } => "the snapshot is damaged in a way its checksum did not catch, or is not an etcd snapshot".into(),
            FlowError::Guard { .. } => "the operation would lose etcd quorum, or etcd is already unhealthy, or a member is not in the definition".into(),
            FlowError::Gate(g) => g.likely_cause(),
            FlowError::NoHealthyControlPlane { .. } => "etcd has no quorum or every control plane is down".into(),
            FlowError::ApiOnNode { .. } => "the cluster endpoint is one control plane's address instead of a VIP or load balancer".into(),
            FlowError::Kube { source, node, .. } => kube_cause(source, node.is_some()),
            FlowError::Charts { source, .. } => source.likely_cause(),
            FlowError::Sops { source, .. } => source.likely_cause(),
            FlowError::Track { source, .. } => source.likely_cause(),
            FlowError::Step { cause, .. } | FlowError::Gitops { cause, .. } => cause.clone(),
            FlowError::Snapshot { source, .. } => match **source {
                SnapshotFileError::Unreadable { .. } => "wrong path, or no permission to read it".into(),
                SnapshotFileError::Corrupt { .. } => "the file was truncated (an interrupted copy or download) or is not an etcd snapshot".into(),
                SnapshotFileError::Sidecar { .. } | SnapshotFileError::Mismatch { .. } => "the snapshot was replaced or damaged after `etcd backup` wrote it, or the sidecar belongs to another snapshot".into(),
            },
            FlowError::NoSecrets { .. } => "the secrets bundle is missing or misnamed; new secrets would give a cluster no existing talosconfig, kubeconfig or workload can talk to".into(),
            FlowError::NodesConfigured { .. } => "these nodes still run a Talos config (the disaster spared them, or a reset did not happen)".into(),
            FlowError::NodesUnreachable { .. } => "the machines are powered off, still booting, at another address, or a firewall drops port 50000".into(),
            FlowError::CannotReset { .. } => "the nodes run a config from another secrets bundle (no credentials to reset them) or do not answer".into(),
            FlowError::OtherRecoveryInProgress { .. } => "an earlier `recover` with a different snapshot did not finish".into(),
            FlowError::StateLocked { .. } => "two runs on one state directory at once (a second terminal, a CI job, a timer); both would act on the same nodes and journal".into(),
            FlowError::NotRestored { .. } => "etcd started without the snapshot's data (empty etcd), or the snapshot predates the objects expected".into(),
            FlowError::LostAfterReboot { .. } => "the restored data did not survive the control plane's reboot (Omni #3300-like): etcd was re-initialised".into(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            FlowError::Definition { .. } => "fix the definition and run `plan` again".into(),
            FlowError::SecretsMissingClusterExists { .. } => "restore the secrets bundle (e.g. from git history); only if you mean to wipe the cluster, pass --new-cluster".into(),
            FlowError::DiskSelector { .. } => "edit installDiskSelector (or installDisk) in the definition using the table above, then run `plan`".into(),
            FlowError::LinkSelector { .. } => "edit the deviceSelector in networkInterfaces using the table above".into(),
            FlowError::UnknownNode { .. } => "use a hostname from the definition (see `plan`)".into(),
            FlowError::Source(_) => "run `validate` on the definition".into(),
            FlowError::Local { .. } | FlowError::Backup { .. } => "check the path's permissions and free space, or pass --state-dir".into(),
            FlowError::ForeignCa { .. } => "check the node IPs; if the nodes should join this cluster, reset them to maintenance mode (`talos reset`) first".into(),
            FlowError::Unreachable { .. } => "power the nodes on and boot them into Talos maintenance mode, then run `up` again".into(),
            FlowError::Preflight(all) => all.first().map(FlowError::next_action).unwrap_or_default(),
            FlowError::Nodes { failures, .. } => failures
                .iter()
                .map(|f| format!("{}: {}", f.node, f.error.next_action()))
                .collect::<Vec<_>>()
                .join("; "),
            FlowError::NodeState { next, .. } => next.clone(),
            FlowError::Talos(e) => e.next_action(),
            FlowError::Timeout { .. } => "look at the node's console or `talos status`; run the same command again: it resumes where it stopped, after checking the real state".into(),
            FlowError::BootstrapRefused { .. } => "inspect with `talos members` and `talos services` on each control plane; run `up` again once etcd waits to join".into(),
            FlowError::BackInMaintenance { .. } => "run the same command again: preflight sees the node in maintenance and applies its config (a control plane then joins etcd)".into(),
            FlowError::AlreadyBootstrappedUnverified { .. } => "do not reset it: the node may be healthy (etcd bootstrapped by another run, or still starting). Run the same command again in a minute; if it still fails, compare `talos members` and `talos etcd status` on each control plane".into(),
            FlowError::RestoreFailed { .. } => "reset the node's EPHEMERAL partition (`talos reset`), then run `recover` with another snapshot".into(),
            FlowError::Guard { .. } => "bring the named members back (or `node rejoin` them) first; `--force` proceeds anyway, at the risk of losing etcd".into(),
            FlowError::Gate(g) => g.next_action(),
            FlowError::NoHealthyControlPlane { .. } => "check the control planes with `talos status` / `etcd status`; without quorum use `recover --snapshot`".into(),
            FlowError::ApiOnNode { .. } => "point the kubeconfig's `server:` at a VIP or another control plane, or re-run with --skip-kubernetes and delete the old Node through another control plane afterwards".into(),
            FlowError::Kube { source, .. } => source.next_action(),
            FlowError::Charts { source, .. } => source.next_action(),
            FlowError::Sops { source, .. } => source.next_action(),
            FlowError::Track { source, .. } => source.next_action(),
            FlowError::Step { next, .. } | FlowError::Gitops { next, .. } => next.clone(),
            FlowError::Snapshot { source, refused } => match **source {
                SnapshotFileError::Unreadable { .. } if *refused => "check the path given to --snapshot".into(),
                _ if *refused => "use another snapshot (`ls -l` the backups; `etcd backup` verifies each one it writes)".into(),
                _ => "take a new backup with `etcd backup`".into(),
            },
            FlowError::NoSecrets { .. } => "restore the secrets bundle (git history, password manager) to the path above; without it there is nothing to recover into".into(),
            FlowError::NodesConfigured { .. } => "if these nodes really are to be wiped, run the same command with --reset-nodes; else boot them into maintenance mode".into(),
            FlowError::NodesUnreachable { .. } => "power them on and boot them into maintenance mode (Talos ISO/PXE); `talos mode --insecure --endpoint <ip>` must answer; then run recover again".into(),
            FlowError::CannotReset { .. } => "boot these nodes from the Talos ISO/PXE into maintenance mode by hand, then run recover again".into(),
            FlowError::OtherRecoveryInProgress { .. } => "finish it with the same --snapshot, or remove recover.json from the state directory and start over with --reset-nodes".into(),
            FlowError::NotRestored { .. } => "do not use the cluster: reset the nodes (`recover --reset-nodes --snapshot` again) with a snapshot that has the data; keep the sidecar next to the snapshot".into(),
            FlowError::LostAfterReboot { .. } => "collect `talos services` and etcd logs of the node, then recover again with --reset-nodes".into(),
            FlowError::StateLocked { .. } => "wait for that run to finish (or stop it), then run the command again; the lock goes with the process, there is nothing to delete".into(),
        }
    }

    /// What, where, likely cause, next action (for each node, and each
    /// problem preflight found).
    fn explain(&self) -> String {
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
            _ => endsys_core::doctor::explain(self),
        }
    }
}

/// The likely cause of a Kubernetes failure: the error's own, except where a
/// node operation knows better (a drain's eviction held up).
fn kube_cause(e: &KubeError, on_node: bool) -> String {
    match e {
        KubeError::Timeout { what, .. } if on_node && what.contains("evicted") => {
            "a PodDisruptionBudget blocks the eviction, or the pod does not terminate".into()
        }
        _ => e.likely_cause(),
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
        assert!(
            x.contains("likely cause: these nodes were configured from a different secrets bundle"),
            "{x}"
        );
        assert!(x.contains("next action:") && x.contains("reset"), "{x}");
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

    #[test]
    fn sources_stay_chained() {
        use std::error::Error as _;
        let e = FlowError::kube_on(
            "cp1 (127.0.0.11)",
            KubeError::Timeout {
                object: "Pod default/web".into(),
                what: "evicted from cp1".into(),
                after: Duration::from_secs(3),
                status: "eviction refused".into(),
            },
        );
        assert!(e
            .to_string()
            .starts_with("cp1 (127.0.0.11): Kubernetes: Pod default/web"));
        assert!(e
            .source()
            .is_some_and(|s| s.to_string().contains("evicted")));
        assert!(
            e.explain().contains("PodDisruptionBudget"),
            "{}",
            e.explain()
        );
        let t = FlowError::Timeout {
            node: "cp2".into(),
            what: "a member (etcd)".into(),
            after: Duration::from_secs(1),
            last: "2 members".into(),
        };
        assert!(t.explain().contains("2379/2380"), "{}", t.explain());
    }
}
