//! What the steps of `recover` share: the knobs ([`RecoverOptions`]), the
//! journal's facts ([`RecoverFacts`], `recover.json`), the report and the
//! context ([`Recovery`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{ClusterSource, Definition, Emitter, Facts, FlowError, Journal, JournalHandle};
use crate::flows::up::{UpOptions, UpReport};
use crate::kube::inventory::KubeInventory;
use crate::snapshot::CheckedSnapshot;

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

/// How far a recovery got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Snapshot checked; nodes not touched.
    #[default]
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

/// `recover.json`'s facts: one recovery's snapshot and phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverFacts {
    pub snapshot: String,
    pub sha256: String,
    pub phase: Phase,
    /// Nodes reset by this recovery.
    #[serde(default)]
    pub reset: Vec<String>,
}

impl Facts for RecoverFacts {}

/// `recover.json` in a state directory, when a recovery wrote one.
pub fn journal(dir: &Path) -> Result<Option<Journal<RecoverFacts>>, FlowError> {
    Journal::read(&Journal::<RecoverFacts>::recover_path(dir))
}

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

/// The context of a recovery from a snapshot.
pub struct Recovery<'r> {
    pub source: &'r dyn ClusterSource,
    pub opts: &'r RecoverOptions,
    pub em: &'r Emitter,
    pub def: Definition,
    pub facts: CheckedSnapshot,
    /// The state directory.
    pub dir: PathBuf,
    pub journal: JournalHandle<RecoverFacts>,
    /// The `up` options every `up` of the recovery starts from.
    pub up: UpOptions,
    pub kubeconfig: PathBuf,
    pub report: RecoverReport,
}

impl Recovery<'_> {
    pub fn phase(&self) -> Phase {
        self.journal.get(|j| j.facts.phase)
    }

    /// Records the phase reached (written before the next call goes out).
    pub fn set(&self, phase: Phase) -> Result<(), FlowError> {
        self.journal.update(|j| j.facts.phase = phase)
    }

    /// The file that tells `up` a restore is not verified yet.
    pub fn marker(&self) -> PathBuf {
        self.dir.join(crate::flows::up::RECOVER_PENDING)
    }
}
