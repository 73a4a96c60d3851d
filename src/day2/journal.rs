//! The journal of one day-2 operation on one node
//! (`<state_dir>/day2/<op>-<node>.json`, 0600, rewritten atomically after each
//! step). Like `up`'s journal it is a hint: every step reads the real state
//! first. It keeps what the real state cannot tell afterwards — whether the Node
//! was Ready before the reimage, whether the node was already reset (a configured
//! node after a verified reset can only have been re-applied).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{now_ms, Day2Error};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpJournal {
    pub version: u32,
    pub cluster: String,
    pub op: String,
    pub node: String,
    pub started_ms: u64,
    /// Step name → when it finished (acted or found nothing to do).
    #[serde(default)]
    pub steps: BTreeMap<String, u64>,
    #[serde(default)]
    pub completed_ms: Option<u64>,
    /// Whether the Kubernetes Node was Ready before the operation.
    #[serde(default)]
    pub was_ready: Option<bool>,
    /// The automatic snapshot taken before the operation.
    #[serde(default)]
    pub backup: Option<String>,
    /// Stale etcd members removed (hex ID, peer URLs), kept for the report of a
    /// resumed run.
    #[serde(default)]
    pub removed: Vec<(String, String)>,
    /// Guard reasons overridden with `--force`.
    #[serde(default)]
    pub forced: Vec<String>,
    #[serde(skip)]
    path: PathBuf,
}

impl OpJournal {
    pub fn path_for(state_dir: &Path, op: &str, node: &str) -> PathBuf {
        state_dir.join("day2").join(format!("{op}-{node}.json"))
    }

    /// The unfinished operation `op` on `node`, or a fresh one (a finished
    /// journal starts a new operation).
    pub fn open(state_dir: &Path, cluster: &str, op: &str, node: &str) -> Result<Self, Day2Error> {
        let path = Self::path_for(state_dir, op, node);
        let fresh = || OpJournal {
            version: VERSION,
            cluster: cluster.to_string(),
            op: op.to_string(),
            node: node.to_string(),
            started_ms: now_ms(),
            path: path.clone(),
            ..Default::default()
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut j: OpJournal =
                    serde_json::from_slice(&bytes).map_err(|e| Day2Error::Backup {
                        path: path.display().to_string(),
                        detail: format!("not a day-2 journal: {e}; move it away to start afresh"),
                    })?;
                if j.cluster != cluster {
                    return Err(Day2Error::Backup {
                        path: path.display().to_string(),
                        detail: format!("journal of cluster `{}`, not `{cluster}`", j.cluster),
                    });
                }
                if j.completed_ms.is_some() {
                    return Ok(fresh());
                }
                j.path = path;
                Ok(j)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fresh()),
            Err(e) => Err(Day2Error::Backup {
                path: path.display().to_string(),
                detail: format!("cannot read: {e}"),
            }),
        }
    }

    /// Reads the journal as it is (finished or not), for `plan`.
    pub fn peek(state_dir: &Path, op: &str, node: &str) -> Option<Self> {
        let path = Self::path_for(state_dir, op, node);
        let bytes = std::fs::read(&path).ok()?;
        let mut j: OpJournal = serde_json::from_slice(&bytes).ok()?;
        j.path = path;
        Some(j)
    }

    /// Whether this operation already started (any step recorded).
    pub fn resumed(&self) -> bool {
        !self.steps.is_empty()
    }

    pub fn done(&self, step: &str) -> bool {
        self.steps.contains_key(step)
    }

    pub fn save(&self) -> Result<(), Day2Error> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Day2Error::Backup {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        crate::talos::talosconfig::write_private(&self.path, &text).map_err(|e| Day2Error::Backup {
            path: self.path.display().to_string(),
            detail: format!("cannot write: {e}"),
        })
    }

    /// Records `step` as finished and saves (before the event goes out, so a
    /// process killed right after the event has the step on disk).
    pub fn mark(&mut self, step: &str) -> Result<(), Day2Error> {
        self.steps.insert(step.to_string(), now_ms());
        self.save()
    }

    pub fn complete(&mut self) -> Result<(), Day2Error> {
        self.completed_ms = Some(now_ms());
        self.save()
    }
}
