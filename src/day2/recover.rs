//! `recover`: rebuild a cluster after a disaster, from an etcd snapshot
//! (`--snapshot FILE`), or without one as a full `up` with the existing secrets.
//!
//! With a snapshot, in this order (talos-api.md §6.5, anchors.md #27):
//! 1. the file is checked (size 512·n + 32, SHA-256 trailer, sidecar checksum)
//!    before any node is touched;
//! 2. every node must be in maintenance mode; configured nodes are refused by
//!    name, or reset (STATE + EPHEMERAL wiped) with `--reset-nodes`;
//! 3. `up` through kube-apiserver with [`UpOptions::recover_from`]: configs from
//!    the same secrets bundle (existing talosconfig/kubeconfig stay valid), every
//!    node running its final config, then EtcdRecover + Bootstrap{recover_etcd} on
//!    the first control plane only; the others join;
//! 4. the restore is verified in Kubernetes: the objects of the snapshot are back,
//!    not an empty cluster;
//! 5. the restored control plane is rebooted and the check repeated (Omni #3300:
//!    a restore lost at the first reboot);
//! 6. the rest of `up`, which finds the restored state in place.
//!
//! `recover.json` in the state directory records the phase reached, so a run
//! killed anywhere and started again never wipes a node it configured, never
//! bootstraps twice (the bootstrap step reads etcd on every control plane first)
//! and never reboots twice for the check.

use endsys_core::Doctor;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::backup::{check_snapshot, CheckedSnapshot, KubeRecord, SnapshotFileError};
use crate::kube::inventory::{kube_inventory, KubeInventory};

use crate::orchestrator::events::{Emitter, EventKind, StepId};
use crate::orchestrator::journal::Journal;
use crate::orchestrator::up::{classify, NodeClass, RECOVER_PENDING};
use crate::orchestrator::{ClusterSource, FlowError, NodeDef, UpOptions, UpReport};
use crate::talos::resources::MachineStage;
use crate::talos::{probe_mode, Credentials, Dial, NodeMode, ResetOptions, TalosClient, TlsMode};

/// Longest pause between two looks at a state that has no watch.
const POLL_MAX: Duration = Duration::from_secs(1);

/// Namespaces every new cluster has: their presence proves nothing.
pub const DEFAULT_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Knobs of a recovery.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The `up` run that follows (state directory, deadlines, Kubernetes half, `until`).
    pub up: UpOptions,
    /// The etcd snapshot to restore; `None`: a full `up` with the existing secrets.
    pub snapshot: Option<PathBuf>,
    /// Reset configured nodes to maintenance (wipe STATE and EPHEMERAL) instead of refusing.
    pub reset_nodes: bool,
    /// Reboot the restored control plane once and check the data is still there.
    pub reboot_check: bool,
    /// How long the Kubernetes API may take to answer the verification.
    pub verify_deadline: Duration,
}

impl RecoverOptions {
    pub fn new(up: UpOptions) -> Self {
        Self {
            up,
            snapshot: None,
            reset_nodes: false,
            reboot_check: true,
            verify_deadline: Duration::from_secs(10 * 60),
        }
    }
}

/// Why a recovery stopped. Each says what, where, the likely cause and the next action.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{path}: cannot read the snapshot: {detail}; no node was touched")]
    SnapshotUnreadable { path: String, detail: String },
    #[error("{path}: not a usable etcd snapshot: {detail}; no node was touched")]
    SnapshotCorrupt { path: String, detail: String },
    #[error("{path}: does not match its sidecar {sidecar}: {detail}; no node was touched")]
    SidecarMismatch {
        path: String,
        sidecar: String,
        detail: String,
    },
    #[error("no secrets bundle at {location}: recover never creates new secrets")]
    NoSecrets { location: String },
    #[error("{} node(s) not in maintenance mode: {}; no node was touched", .nodes.len(), .nodes.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", "))]
    NodesConfigured { nodes: Vec<(String, String)> },
    #[error("{} node(s) do not answer on the Talos API: {}; no node was touched", .nodes.len(), .nodes.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", "))]
    NodesUnreachable { nodes: Vec<(String, String)> },
    #[error("cannot reset {}: {}; no node was touched", .nodes.len(), .nodes.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", "))]
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
    #[error("{path}: {detail}")]
    Local { path: String, detail: String },
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl From<crate::talos::TalosError> for RecoverError {
    fn from(e: crate::talos::TalosError) -> Self {
        RecoverError::Flow(e.into())
    }
}

impl RecoverError {
    pub fn is_input_error(&self) -> bool {
        match self {
            RecoverError::SnapshotUnreadable { .. }
            | RecoverError::SnapshotCorrupt { .. }
            | RecoverError::SidecarMismatch { .. }
            | RecoverError::NoSecrets { .. }
            | RecoverError::NodesConfigured { .. }
            | RecoverError::NodesUnreachable { .. }
            | RecoverError::OtherRecoveryInProgress { .. } => true,
            RecoverError::Flow(e) => e.is_input_error(),
            _ => false,
        }
    }

    pub fn likely_cause(&self) -> String {
        match self {
            RecoverError::SnapshotUnreadable { .. } => "wrong path, or no permission to read it".into(),
            RecoverError::SnapshotCorrupt { .. } => "the file was truncated (an interrupted copy or download) or is not an etcd snapshot".into(),
            RecoverError::SidecarMismatch { .. } => "the snapshot was replaced or damaged after `etcd backup` wrote it, or the sidecar belongs to another snapshot".into(),
            RecoverError::NoSecrets { .. } => "the secrets bundle is missing or misnamed; new secrets would give a cluster no existing talosconfig, kubeconfig or workload can talk to".into(),
            RecoverError::NodesConfigured { .. } => "these nodes still run a Talos config (the disaster spared them, or a reset did not happen)".into(),
            RecoverError::NodesUnreachable { .. } => "the machines are powered off, still booting, at another address, or a firewall drops port 50000".into(),
            RecoverError::CannotReset { .. } => "the nodes run a config from another secrets bundle (no credentials to reset them) or do not answer".into(),
            RecoverError::OtherRecoveryInProgress { .. } => "an earlier `recover` with a different snapshot did not finish".into(),
            RecoverError::NotRestored { .. } => "etcd started without the snapshot's data (empty etcd), or the snapshot predates the objects expected".into(),
            RecoverError::LostAfterReboot { .. } => "the restored data did not survive the control plane's reboot (Omni #3300-like): etcd was re-initialised".into(),
            RecoverError::Local { .. } => "a local file could not be read or written".into(),
            RecoverError::Flow(e) => e.likely_cause(),
        }
    }

    pub fn next_action(&self) -> String {
        match self {
            RecoverError::SnapshotUnreadable { .. } => "check the path given to --snapshot".into(),
            RecoverError::SnapshotCorrupt { .. } | RecoverError::SidecarMismatch { .. } => "use another snapshot (`ls -l` the backups; `etcd backup` verifies each one it writes)".into(),
            RecoverError::NoSecrets { .. } => "restore the secrets bundle (git history, password manager) to the path above; without it there is nothing to recover into".into(),
            RecoverError::NodesConfigured { .. } => "if these nodes really are to be wiped, run the same command with --reset-nodes; else boot them into maintenance mode".into(),
            RecoverError::NodesUnreachable { .. } => "power them on and boot them into maintenance mode (Talos ISO/PXE); `talos mode --insecure --endpoint <ip>` must answer; then run recover again".into(),
            RecoverError::CannotReset { .. } => "boot these nodes from the Talos ISO/PXE into maintenance mode by hand, then run recover again".into(),
            RecoverError::OtherRecoveryInProgress { .. } => "finish it with the same --snapshot, or remove recover.json from the state directory and start over with --reset-nodes".into(),
            RecoverError::NotRestored { .. } => "do not use the cluster: reset the nodes (`recover --reset-nodes --snapshot` again) with a snapshot that has the data; keep the sidecar next to the snapshot".into(),
            RecoverError::LostAfterReboot { .. } => "collect `talos services` and etcd logs of the node, then recover again with --reset-nodes".into(),
            RecoverError::Local { .. } => "check the path's permissions and free space, or pass --state-dir".into(),
            RecoverError::Flow(e) => format!("{}; then run the same `recover` command again (it resumes)", e.next_action()),
        }
    }

    pub fn explain(&self) -> String {
        match self {
            RecoverError::Flow(e) => e.explain(),
            _ => format!(
                "{self}\n  likely cause: {}\n  next action:  {}",
                self.likely_cause(),
                self.next_action()
            ),
        }
    }
}

// ---- the snapshot check and the Kubernetes side -------------------------------------

impl From<SnapshotFileError> for RecoverError {
    /// The snapshot model's findings, as refusals that say no node was touched.
    fn from(e: SnapshotFileError) -> Self {
        match e {
            SnapshotFileError::Unreadable { path, detail } => RecoverError::SnapshotUnreadable {
                path: path.display().to_string(),
                detail,
            },
            SnapshotFileError::Corrupt { path, detail } => RecoverError::SnapshotCorrupt {
                path: path.display().to_string(),
                detail,
            },
            SnapshotFileError::Sidecar {
                snapshot,
                sidecar,
                detail,
            }
            | SnapshotFileError::Mismatch {
                snapshot,
                sidecar,
                detail,
            } => RecoverError::SidecarMismatch {
                path: snapshot.display().to_string(),
                sidecar: sidecar.display().to_string(),
                detail,
            },
        }
    }
}

/// Whether `found` is the restored cluster: everything `expected` recorded is
/// there (and etcd's revision did not start over); without a record, at least
/// that the cluster is not a new, empty one. Ok = what was checked.
pub fn judge_restore(
    found: &KubeInventory,
    expected: Option<&KubeInventory>,
) -> Result<String, String> {
    match expected {
        Some(want) => {
            let have_ns: BTreeSet<&str> = found.namespaces.iter().map(String::as_str).collect();
            let have_ks: BTreeSet<&str> = found.kustomizations.iter().map(String::as_str).collect();
            let missing: Vec<String> = want
                .namespaces
                .iter()
                .filter(|n| !have_ns.contains(n.as_str()))
                .map(|n| format!("Namespace {n}"))
                .chain(
                    want.kustomizations
                        .iter()
                        .filter(|k| !have_ks.contains(k.as_str()))
                        .map(|k| format!("Kustomization {k}")),
                )
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} object(s) recorded with the snapshot are missing: {}",
                    missing.len(),
                    missing.join(", ")
                ));
            }
            if let (Some(w), Some(h)) = (want.resource_version, found.resource_version) {
                if h < w {
                    return Err(format!(
                        "etcd revision {h} is below the snapshot's {w}: etcd started over"
                    ));
                }
            }
            Ok(format!(
                "all {} namespace(s) and {} Kustomization(s) recorded with the snapshot are back{}",
                want.namespaces.len(),
                want.kustomizations.len(),
                match (want.resource_version, found.resource_version) {
                    (Some(w), Some(h)) => format!("; revision {h} ≥ {w}"),
                    _ => String::new(),
                }
            ))
        }
        None => {
            let extra: Vec<&String> = found
                .namespaces
                .iter()
                .filter(|n| !DEFAULT_NAMESPACES.contains(&n.as_str()))
                .collect();
            if extra.is_empty() && found.kustomizations.is_empty() {
                return Err(
                    "only the default namespaces and no Kustomization: this is a new, empty cluster".into(),
                );
            }
            Ok(format!(
                "not empty: {} namespace(s) beyond the defaults, {} Kustomization(s) (no sidecar inventory to compare with)",
                extra.len(),
                found.kustomizations.len()
            ))
        }
    }
}

// ---- the recovery journal ---------------------------------------------------------

/// How far a recovery got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Snapshot checked; nodes not touched.
    Checked,
    /// Resets were sent to configured nodes.
    Resetting,
    /// Configs are being applied: from here on no node is ever reset again.
    Applying,
    /// The restore was verified in Kubernetes.
    Restored,
    /// The restored control plane was asked to reboot.
    RebootRequested,
    /// The data was still there after the reboot.
    RebootChecked,
    /// Finished; the next `recover` starts a new recovery.
    Done,
}

/// `recover.json`: one recovery's progress (0600, rewritten atomically).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverJournal {
    pub snapshot: String,
    pub sha256: String,
    pub phase: Phase,
    pub started_ms: u64,
    pub updated_ms: u64,
    /// Nodes reset by this recovery.
    #[serde(default)]
    pub reset: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RecoverJournal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("recover.json")
    }

    pub fn load(dir: &Path) -> Result<Option<RecoverJournal>, RecoverError> {
        let path = Self::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RecoverError::Local {
                    path: path.display().to_string(),
                    detail: format!("not a recovery journal: {e}; move it away to start afresh"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecoverError::Local {
                path: path.display().to_string(),
                detail: format!("cannot read: {e}"),
            }),
        }
    }

    fn set(&mut self, dir: &Path, phase: Phase) -> Result<(), RecoverError> {
        self.phase = phase;
        self.updated_ms = now_ms();
        let path = Self::path(dir);
        let local = |detail: String| RecoverError::Local {
            path: path.display().to_string(),
            detail,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| local(e.to_string()))?;
        crate::talos::talosconfig::write_private(&path, text.as_bytes())
            .map_err(|e| local(format!("cannot write: {e}")))
    }
}

// ---- the flow -------------------------------------------------------------------------

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct RecoverReport {
    pub snapshot: Option<CheckedSnapshot>,
    /// Nodes reset to maintenance by this run.
    pub reset: Vec<String>,
    /// What the restored API held, and what was checked.
    pub restored: Option<(KubeInventory, String)>,
    /// The same after the restored control plane's reboot.
    pub after_reboot: Option<(KubeInventory, String)>,
    /// The `up` runs: through kube-apiserver, then the rest.
    pub up: Vec<UpReport>,
    pub duration: Duration,
}

const STEP: StepId = StepId::Run;

/// Runs a recovery (see the module documentation).
pub async fn recover(
    source: &dyn ClusterSource,
    opts: &RecoverOptions,
    em: &Emitter,
) -> Result<RecoverReport, RecoverError> {
    let started = Instant::now();
    let def = source.definition()?;
    // The snapshot first: a bad file must stop us before anything is touched.
    let facts = match &opts.snapshot {
        Some(p) => Some(check_snapshot(p)?),
        None => None,
    };
    if !source.has_secrets()? {
        return Err(RecoverError::NoSecrets {
            location: source.secrets_location(),
        });
    }
    let mut report = RecoverReport {
        snapshot: facts.clone(),
        reset: Vec::new(),
        restored: None,
        after_reboot: None,
        up: Vec::new(),
        duration: Duration::ZERO,
    };
    let mut up_opts = opts.up.clone();
    up_opts.new_cluster = false;
    let Some(facts) = facts else {
        // No snapshot: `up` with the existing secrets (a new etcd, same identities).
        up_opts.recover_from = None;
        report
            .up
            .push(crate::orchestrator::up(source, &up_opts, em).await?);
        report.duration = started.elapsed();
        return Ok(report);
    };
    em.progress(
        StepId::Preflight,
        None,
        format!(
            "snapshot {}: {} bytes, SHA-256 trailer ok, sha256 {}{}",
            facts.path.display(),
            facts.size,
            &facts.sha256[..16],
            match &facts.sidecar {
                Some(meta) => format!(
                    "; sidecar {} matches (taken {} from {}); {}",
                    super::backup::sidecar_path(&facts.path).display(),
                    meta.taken_at,
                    meta.node,
                    meta.kubernetes.describe()
                ),
                None => "; no sidecar".into(),
            }
        ),
    );
    // Without a recorded inventory the restore can only be judged "not empty".
    let no_inventory = match facts.sidecar.as_ref().map(|m| &m.kubernetes) {
        Some(KubeRecord::Inventory(_)) => None,
        Some(KubeRecord::None { reason }) => Some(format!("its sidecar records none ({reason})")),
        None => Some(format!(
            "it has no sidecar {}",
            super::backup::sidecar_path(&facts.path).display()
        )),
    };
    if let Some(why) = no_inventory {
        em.progress(
            StepId::Preflight,
            None,
            format!(
                "warning: no Kubernetes inventory was recorded with {}: {why}; the restore can only be checked for \"not an empty cluster\", not object by object (take backups with `etcd backup` while the API answers)",
                facts.path.display()
            ),
        );
    }
    let dir = opts.up.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| RecoverError::Local {
        path: dir.display().to_string(),
        detail: format!("cannot create the state directory: {e}"),
    })?;
    let mut journal = match RecoverJournal::load(&dir)? {
        Some(j) if j.phase != Phase::Done && j.sha256 != facts.sha256 => {
            return Err(RecoverError::OtherRecoveryInProgress {
                journal: RecoverJournal::path(&dir).display().to_string(),
                other: j.sha256,
                phase: format!("{:?}", j.phase),
            })
        }
        Some(j) if j.phase != Phase::Done => {
            em.progress(
                STEP,
                None,
                format!(
                    "resuming the recovery started earlier (phase {:?})",
                    j.phase
                ),
            );
            j
        }
        // The same command again after it finished: converge, never wipe the
        // restored cluster. Only a new disaster (every node in maintenance)
        // starts a new recovery from the same file.
        Some(j)
            if j.sha256 == facts.sha256
                && !all_in_maintenance(source, &opts.up, em, &def.nodes).await? =>
        {
            em.progress(
                STEP,
                None,
                "this snapshot was already restored and the nodes run: converging without resetting anything",
            );
            j
        }
        _ => RecoverJournal {
            snapshot: facts.path.display().to_string(),
            sha256: facts.sha256.clone(),
            phase: Phase::Checked,
            started_ms: now_ms(),
            updated_ms: now_ms(),
            reset: Vec::new(),
        },
    };
    if journal.phase < Phase::Applying {
        journal.set(&dir, journal.phase)?;
        report.reset = gate_nodes(source, opts, em, &def.nodes, &mut journal).await?;
        // Recorded before the first apply: from here on nothing is wiped again.
        journal.set(&dir, Phase::Applying)?;
    } else {
        em.progress(
            StepId::Preflight,
            None,
            "configs were applied by an earlier run of this recovery: no node is reset again",
        );
    }
    let marker = dir.join(RECOVER_PENDING);
    if journal.phase < Phase::Restored {
        crate::talos::talosconfig::write_private(
            &marker,
            format!("{} sha256 {}\n", facts.path.display(), facts.sha256).as_bytes(),
        )
        .map_err(|e| RecoverError::Local {
            path: marker.display().to_string(),
            detail: format!("cannot write: {e}"),
        })?;
    }

    // Restore, quorum, kubeconfig, API server.
    let mut first = up_opts.clone();
    first.recover_from = Some(facts.path.clone());
    first.until = StepId::Apiserver;
    let r1 = crate::orchestrator::up(source, &first, em).await?;
    let kubeconfig = r1
        .kubeconfig
        .clone()
        .unwrap_or_else(|| dir.join("kubeconfig"));
    report.up.push(r1);

    let found = verify_restore(&kubeconfig, &facts, opts.verify_deadline, em).await?;
    if journal.phase < Phase::Restored {
        journal.set(&dir, Phase::Restored)?;
    }
    let _ = std::fs::remove_file(&marker);
    report.restored = Some(found);

    if opts.reboot_check && journal.phase < Phase::RebootChecked {
        let rendered = source.render()?;
        let target = restored_node(&dir, &def)?;
        let after = reboot_check(
            &target,
            &rendered.credentials,
            &up_opts,
            &kubeconfig,
            &facts,
            opts.verify_deadline,
            em,
            &mut journal,
            &dir,
        )
        .await?;
        report.after_reboot = Some(after);
        journal.set(&dir, Phase::RebootChecked)?;
    }

    if opts.up.until > StepId::Apiserver {
        let mut rest = up_opts.clone();
        rest.recover_from = Some(facts.path.clone());
        report
            .up
            .push(crate::orchestrator::up(source, &rest, em).await?);
    }
    journal.set(&dir, Phase::Done)?;
    report.duration = started.elapsed();
    em.progress(
        STEP,
        None,
        format!(
            "recovered from {} in {:.1}s",
            facts.path.display(),
            report.duration.as_secs_f64()
        ),
    );
    Ok(report)
}

/// The control plane that restored etcd (the bootstrap node `up` recorded).
fn restored_node(
    dir: &Path,
    def: &crate::orchestrator::Definition,
) -> Result<NodeDef, RecoverError> {
    let journal = Journal::load(dir, &def.cluster)?;
    def.control_planes()
        .find(|n| Some(n.hostname.as_str()) == journal.bootstrap_node.as_deref())
        .or_else(|| def.control_planes().next())
        .cloned()
        .ok_or_else(|| FlowError::Source("no control plane in the definition".into()).into())
}

/// Whether every node answers in maintenance mode now.
async fn all_in_maintenance(
    source: &dyn ClusterSource,
    up: &UpOptions,
    em: &Emitter,
    nodes: &[NodeDef],
) -> Result<bool, RecoverError> {
    let creds = source.render()?.credentials;
    let classes = join_all(nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            classify(
                em,
                StepId::Preflight,
                n,
                Some(&creds),
                up.probe_timeout,
                up.probe_timeout,
            )
            .await
        }
    }))
    .await;
    Ok(classes.iter().all(|c| *c == NodeClass::Maintenance))
}

/// Every node must be in maintenance mode; configured ones are refused, or reset
/// with `--reset-nodes`. Returns the nodes reset.
async fn gate_nodes(
    source: &dyn ClusterSource,
    opts: &RecoverOptions,
    em: &Emitter,
    nodes: &[NodeDef],
    journal: &mut RecoverJournal,
) -> Result<Vec<String>, RecoverError> {
    let step = StepId::Preflight;
    let rendered = source.render()?;
    let creds = rendered.credentials.clone();
    // Nodes reset by an earlier run may still be rebooting.
    let deadline = if journal.phase == Phase::Resetting {
        opts.up.reach_deadline
    } else {
        opts.up.probe_timeout
    };
    let classes = join_all(nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let c = classify(em, step, n, Some(&creds), opts.up.probe_timeout, deadline).await;
            em.node_state(step, &n.hostname, c.describe());
            (n, c)
        }
    }))
    .await;
    let others: Vec<&(&NodeDef, NodeClass)> = classes
        .iter()
        .filter(|(_, c)| *c != NodeClass::Maintenance)
        .collect();
    if others.is_empty() {
        em.progress(
            step,
            None,
            format!("all {} node(s) in maintenance mode", nodes.len()),
        );
        return Ok(Vec::new());
    }
    let listed = |pred: &dyn Fn(&NodeClass) -> bool| -> Vec<(String, String)> {
        others
            .iter()
            .filter(|(_, c)| pred(c))
            .map(|(n, c)| (n.label(), c.describe()))
            .collect()
    };
    // A node that does not answer cannot be reset either: say so before
    // suggesting --reset-nodes, which could not help.
    let silent = listed(&|c| matches!(c, NodeClass::Unreachable(_)));
    if !silent.is_empty() {
        return Err(RecoverError::NodesUnreachable { nodes: silent });
    }
    if !opts.reset_nodes {
        return Err(RecoverError::NodesConfigured {
            nodes: listed(&|_| true),
        });
    }
    let blocked = listed(&|c| *c != NodeClass::Ours);
    if !blocked.is_empty() {
        return Err(RecoverError::CannotReset { nodes: blocked });
    }
    journal.set(&opts.up.state_dir, Phase::Resetting)?;
    let targets: Vec<&NodeDef> = others.iter().map(|(n, _)| *n).collect();
    let results = join_all(targets.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let r = reset_to_maintenance(n, &creds, opts, em).await;
            (n, r)
        }
    }))
    .await;
    let mut failures = Vec::new();
    let mut reset = Vec::new();
    for (n, r) in results {
        match r {
            Ok(()) => reset.push(n.hostname.clone()),
            Err(e) => failures.push(crate::orchestrator::error::NodeFailure {
                node: n.label(),
                error: Box::new(e),
            }),
        }
    }
    if !failures.is_empty() {
        return Err(FlowError::Nodes {
            step: "reset".into(),
            failures,
        }
        .into());
    }
    journal.reset.extend(reset.iter().cloned());
    Ok(reset)
}

/// Reset{graceful: false, reboot, wipe STATE + EPHEMERAL}, then wait until the
/// node answers in maintenance mode. Not graceful: every control plane goes, so
/// none could leave etcd with quorum (talos-api.md §6.5, gotcha 7).
async fn reset_to_maintenance(
    n: &NodeDef,
    creds: &Arc<Credentials>,
    opts: &RecoverOptions,
    em: &Emitter,
) -> Result<(), FlowError> {
    let step = StepId::Preflight;
    let c = TalosClient::connect(&n.address, TlsMode::Mutual(creds.clone()), opts.up.policy)?;
    em.progress(
        step,
        Some(&n.hostname),
        "reset: wipe STATE and EPHEMERAL, reboot into maintenance",
    );
    c.reset(&ResetOptions {
        graceful: false,
        reboot: true,
        wipe_labels: vec!["STATE".into(), "EPHEMERAL".into()],
    })
    .await?;
    // Judged by the TLS handshake, not the event stream (talosctl reset --wait
    // hangs when the node is already gone, talos #8802).
    let dial = Dial::parse(&n.address)?;
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut last: String;
    loop {
        match probe_mode(&dial, Some(creds), opts.up.probe_timeout).await {
            Ok(NodeMode::Maintenance) => {
                em.node_state(step, &n.hostname, "maintenance (reset done)");
                return Ok(());
            }
            Ok(m) => last = format!("{m:?}"),
            Err(e) => last = e.likely_cause(),
        }
        if t0.elapsed() > opts.up.node_deadline {
            return Err(FlowError::Timeout {
                node: n.label(),
                what: "back in maintenance mode after the reset".into(),
                after: t0.elapsed(),
                last,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Reads the inventory through the admin kubeconfig until the API answers, then
/// judges it against the snapshot's record.
async fn verify_restore(
    kubeconfig: &Path,
    facts: &CheckedSnapshot,
    deadline: Duration,
    em: &Emitter,
) -> Result<(KubeInventory, String), RecoverError> {
    let found = read_inventory(kubeconfig, deadline, em).await?;
    let verdict =
        judge_restore(&found.1, facts.inventory()).map_err(|detail| RecoverError::NotRestored {
            endpoint: found.0.clone(),
            detail,
        })?;
    em.progress(
        STEP,
        None,
        format!("restore verified: {verdict} ({})", found.1.summary()),
    );
    Ok((found.1, verdict))
}

async fn read_inventory(
    kubeconfig: &Path,
    deadline: Duration,
    em: &Emitter,
) -> Result<(String, KubeInventory), RecoverError> {
    let local = |detail: String| RecoverError::Local {
        path: kubeconfig.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(kubeconfig).map_err(|e| local(format!("cannot read: {e}")))?;
    let client = crate::kube::client_from_kubeconfig(&bytes)
        .await
        .map_err(|e| local(e.to_string()))?;
    let endpoint = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| crate::orchestrator::kubeconfig::server_and_ca(t, kubeconfig).ok())
        .map(|(s, _)| s)
        .unwrap_or_else(|| kubeconfig.display().to_string());
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match kube_inventory(&client).await {
            Ok(inv) => return Ok((endpoint, inv)),
            Err(e) => {
                if t0.elapsed() > deadline {
                    return Err(RecoverError::NotRestored {
                        endpoint,
                        detail: format!(
                            "the Kubernetes API did not answer within {deadline:?}: {e}"
                        ),
                    });
                }
                em.waiting(
                    STEP,
                    None,
                    format!("the Kubernetes API at {endpoint} to list namespaces ({e})"),
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Reboots the restored control plane once and checks the data survived it.
#[allow(clippy::too_many_arguments)]
async fn reboot_check(
    node: &NodeDef,
    creds: &Arc<Credentials>,
    up: &UpOptions,
    kubeconfig: &Path,
    facts: &CheckedSnapshot,
    deadline: Duration,
    em: &Emitter,
    journal: &mut RecoverJournal,
    dir: &Path,
) -> Result<(KubeInventory, String), RecoverError> {
    let c = TalosClient::connect(&node.address, TlsMode::Mutual(creds.clone()), up.policy)?;
    let lost = |detail: String| RecoverError::LostAfterReboot {
        node: node.label(),
        detail,
    };
    if journal.phase < Phase::RebootRequested {
        // Subscribed before the reboot: the stream's end marks the node going down.
        let mut watch = Box::pin(
            c.with_policy(up.policy.once())
                .watch_machine_status()
                .await?,
        );
        let _ = watch.next().await;
        em.emit(
            STEP,
            Some(&node.hostname),
            EventKind::Decision {
                key: "recover_reboot_check".into(),
                value: node.hostname.clone(),
            },
        );
        em.progress(
            STEP,
            Some(&node.hostname),
            "rebooting the restored control plane once: the data must survive it (Omni #3300)",
        );
        c.reboot().await?;
        // Recorded once the node took the request: a run killed before that
        // reboots on the re-run instead of skipping the check.
        journal.set(dir, Phase::RebootRequested)?;
        let gone = tokio::time::timeout(up.node_deadline, async {
            while let Some(item) = watch.next().await {
                if item.is_err() {
                    break;
                }
            }
        })
        .await;
        if gone.is_err() {
            return Err(FlowError::Timeout {
                node: node.label(),
                what: "going down for the requested reboot".into(),
                after: up.node_deadline,
                last: "still answering".into(),
            }
            .into());
        }
    }
    em.waiting(
        STEP,
        Some(&node.hostname),
        format!("{} to run again after its reboot", node.label()),
    );
    crate::talos::wait::wait_for_status(
        &c,
        "running",
        up.node_deadline,
        |s| s.stage == MachineStage::Running,
        |_| {},
    )
    .await
    .map_err(|e| match e {
        crate::talos::wait::WaitError::Timeout {
            node,
            wanted,
            after,
            last,
        } => RecoverError::Flow(FlowError::Timeout {
            node,
            what: wanted,
            after,
            last,
        }),
        crate::talos::wait::WaitError::Fatal(e) => (*e).into(),
    })?;
    // etcd on the rebooted node: its member must still be there and running.
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let member = c.etcd_local_member().await;
        let service = c
            .service_list()
            .await
            .map(|l| l.into_iter().find(|s| s.id == "etcd"));
        match (member, service) {
            (Ok(Some(_)), Ok(Some(s))) if s.state == "Running" => break,
            (Ok(_), Ok(Some(s))) if s.state == "Failed" => {
                return Err(lost(format!("etcd failed: {}", s.last_event)))
            }
            (Ok(_), Ok(Some(s))) if s.state == "Preparing" => {
                return Err(lost(format!(
                    "etcd waits to be bootstrapped again: its data directory is empty ({})",
                    s.last_event
                )))
            }
            _ => {}
        }
        if t0.elapsed() > up.etcd_deadline {
            return Err(lost("etcd did not come back running".into()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
    let (endpoint, found) = read_inventory(kubeconfig, deadline, em).await?;
    let verdict = judge_restore(&found, facts.inventory())
        .map_err(|detail| lost(format!("{detail} (API {endpoint})")))?;
    em.progress(
        STEP,
        Some(&node.hostname),
        format!("still restored after the reboot: {verdict}"),
    );
    Ok((found, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(ns: &[&str], ks: &[&str], rv: Option<i64>) -> KubeInventory {
        KubeInventory {
            resource_version: rv,
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            kustomizations: ks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_cluster_is_not_a_restore() {
        let empty = inv(&DEFAULT_NAMESPACES, &[], Some(5));
        assert!(judge_restore(&empty, None).is_err());
        let want = inv(&["default", "apps"], &["apps/web"], Some(400));
        let err = judge_restore(&empty, Some(&want)).unwrap_err();
        assert!(
            err.contains("Namespace apps") && err.contains("Kustomization apps/web"),
            "{err}"
        );
        let back = inv(&["apps", "default"], &["apps/web"], Some(380));
        assert!(judge_restore(&back, Some(&want))
            .unwrap_err()
            .contains("revision 380"));
        let back = inv(&["apps", "default"], &["apps/web"], Some(401));
        assert!(judge_restore(&back, Some(&want)).is_ok());
        assert!(judge_restore(&back, None).is_ok());
    }

    #[test]
    fn snapshot_check_refuses_truncated_and_mismatched_files() {
        use super::super::backup::{sidecar_path, BackupMeta, META_FORMAT};
        use sha2::Digest;
        let refusal = |p: &Path| RecoverError::from(check_snapshot(p).unwrap_err());
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; 1024];
        let sum = sha2::Sha256::digest(&data);
        data.extend_from_slice(&sum);
        let good = dir.path().join("good.db");
        std::fs::write(&good, &data).unwrap();
        let facts = check_snapshot(&good).unwrap();
        assert_eq!(facts.size, 1056);
        assert!(facts.sidecar.is_none());
        let cut = dir.path().join("cut.db");
        std::fs::write(&cut, &data[..1000]).unwrap();
        let e = refusal(&cut);
        assert!(matches!(e, RecoverError::SnapshotCorrupt { .. }), "{e}");
        assert!(e.to_string().contains("cut.db"), "{e}");
        let e = refusal(&dir.path().join("absent.db"));
        assert!(matches!(e, RecoverError::SnapshotUnreadable { .. }), "{e}");
        // Not a backup sidecar, then one recording another file.
        std::fs::write(sidecar_path(&good), r#"{"sha256": "00"}"#).unwrap();
        let e = refusal(&good);
        assert!(matches!(e, RecoverError::SidecarMismatch { .. }), "{e}");
        assert!(e.explain().contains("next action"), "{}", e.explain());
        let mut meta = BackupMeta {
            format: META_FORMAT.into(),
            cluster: "c".into(),
            node: "cp1".into(),
            address: "127.0.0.1".into(),
            member_id: String::new(),
            revision: None,
            raft_index: 1,
            raft_term: 1,
            members: vec![],
            taken_at: String::new(),
            taken_ms: 0,
            size: facts.size,
            sha256: "0".repeat(64),
            tool_version: String::new(),
            kubernetes: KubeRecord::Inventory(KubeInventory {
                resource_version: Some(9),
                namespaces: vec!["apps".into()],
                kustomizations: vec![],
            }),
        };
        std::fs::write(sidecar_path(&good), serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = refusal(&good);
        assert!(
            matches!(e, RecoverError::SidecarMismatch { .. })
                && e.to_string().contains("good.db.json"),
            "{e}"
        );
        meta.sha256 = facts.sha256.clone();
        std::fs::write(sidecar_path(&good), serde_json::to_vec(&meta).unwrap()).unwrap();
        let f = check_snapshot(&good).unwrap();
        assert_eq!(f.inventory().unwrap().namespaces, vec!["apps".to_string()]);
        // A sidecar from before the `kubernetes` key: read, no inventory.
        let mut old = serde_json::to_value(&meta).unwrap();
        old.as_object_mut().unwrap().remove("kubernetes");
        std::fs::write(sidecar_path(&good), old.to_string()).unwrap();
        let f = check_snapshot(&good).unwrap();
        assert!(f.sidecar.is_some() && f.inventory().is_none());
    }
}
