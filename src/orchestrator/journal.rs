//! The run journal: what earlier runs did (steps finished, the node chosen for
//! the etcd bootstrap, timings), one JSON file per cluster, rewritten atomically
//! after every event that changes it.
//!
//! The journal is a hint. Every step reads the cluster's real state before acting;
//! the journal only keeps decisions stable across runs (the same bootstrap node)
//! and tells `plan` and the operator what happened last time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::FlowError;
use super::events::{Event, EventKind, EventSink, StepId};

/// Journal format version.
pub const VERSION: u32 = 1;

/// The state directory of a cluster: `--state-dir`, else
/// `$XDG_STATE_HOME/endsys-bootstrap/<cluster>` (`~/.local/state/...`).
pub fn state_dir(flag: Option<&Path>, cluster: &str) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(dirs::state_dir)
        .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("endsys-bootstrap").join(cluster)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// done / skipped / failed
    pub outcome: String,
    pub finished_ms: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub ok: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub cluster: String,
    /// Last outcome of each step (cluster-wide, not per node).
    #[serde(default)]
    pub steps: BTreeMap<String, StepRecord>,
    /// The control plane chosen to bootstrap etcd (kept across runs).
    #[serde(default)]
    pub bootstrap_node: Option<String>,
    #[serde(default)]
    pub runs: Vec<RunRecord>,
    /// Phase durations of the last run, in milliseconds.
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.json")
    }

    /// Loads the journal; a missing file is an empty journal.
    pub fn load(dir: &Path, cluster: &str) -> Result<Journal, FlowError> {
        let path = Self::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let j: Journal = serde_json::from_str(&text).map_err(|e| FlowError::Local {
                    path: path.display().to_string(),
                    detail: format!(
                        "not a journal (line {}): {e}; move it away to start afresh",
                        e.line()
                    ),
                })?;
                if j.cluster != cluster {
                    return Err(FlowError::Local {
                        path: path.display().to_string(),
                        detail: format!(
                            "journal belongs to cluster `{}`, not `{cluster}`; use another --state-dir",
                            j.cluster
                        ),
                    });
                }
                Ok(j)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal {
                version: VERSION,
                cluster: cluster.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(FlowError::Local {
                path: path.display().to_string(),
                detail: format!("cannot read: {e}"),
            }),
        }
    }

    /// Writes via a temporary file and rename (0600).
    pub fn save(&self, dir: &Path) -> Result<(), FlowError> {
        let path = Self::path(dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| FlowError::Local {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        crate::talos::talosconfig::write_private(&path, text.as_bytes()).map_err(|e| {
            FlowError::Local {
                path: path.display().to_string(),
                detail: format!("cannot write: {e}"),
            }
        })
    }

    /// Applies one event; true when the journal changed.
    pub fn apply(&mut self, ev: &Event) -> bool {
        match &ev.kind {
            EventKind::RunStarted { .. } => {
                self.runs.push(RunRecord {
                    started_ms: ev.ts_ms,
                    finished_ms: None,
                    ok: None,
                });
                // Keep the file small.
                if self.runs.len() > 50 {
                    self.runs.remove(0);
                }
                self.timings_ms.clear();
                true
            }
            EventKind::StepFinished {
                outcome,
                duration_ms,
            } if ev.node.is_none() && ev.step != StepId::Run => {
                self.steps.insert(
                    ev.step.name().to_string(),
                    StepRecord {
                        outcome: outcome.label().to_string(),
                        finished_ms: ev.ts_ms,
                        duration_ms: *duration_ms,
                    },
                );
                self.timings_ms
                    .insert(ev.step.name().to_string(), *duration_ms);
                true
            }
            EventKind::Decision { key, value } if key == "bootstrap_node" => {
                self.bootstrap_node = Some(value.clone());
                true
            }
            EventKind::RunFinished { ok, .. } => {
                if let Some(r) = self.runs.last_mut() {
                    r.finished_ms = Some(ev.ts_ms);
                    r.ok = Some(*ok);
                }
                true
            }
            _ => false,
        }
    }
}

/// Feeds a journal from the event stream and saves it after each change.
pub struct JournalSink {
    dir: PathBuf,
    journal: Journal,
}

impl JournalSink {
    pub fn new(dir: PathBuf, journal: Journal) -> Self {
        Self { dir, journal }
    }
}

impl EventSink for JournalSink {
    fn record(&mut self, event: &Event) {
        if self.journal.apply(event) {
            if let Err(e) = self.journal.save(&self.dir) {
                tracing::warn!("journal not saved: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::events::{Emitter, Outcome};

    #[test]
    fn journal_round_trips_through_events() {
        let dir = tempfile::tempdir().unwrap();
        let em = Emitter::new();
        let j = Journal::load(dir.path(), "lab").unwrap();
        em.add_sink(Box::new(JournalSink::new(dir.path().to_path_buf(), j)));
        em.emit(
            StepId::Run,
            None,
            EventKind::RunStarted {
                cluster: "lab".into(),
                steps: vec![],
            },
        );
        em.emit(
            StepId::Bootstrap,
            None,
            EventKind::Decision {
                key: "bootstrap_node".into(),
                value: "cp1".into(),
            },
        );
        em.finished(
            StepId::Bootstrap,
            None,
            Outcome::Done {
                detail: String::new(),
            },
            std::time::Instant::now(),
        );
        let back = Journal::load(dir.path(), "lab").unwrap();
        assert_eq!(back.bootstrap_node.as_deref(), Some("cp1"));
        assert_eq!(back.steps["bootstrap"].outcome, "done");
        assert_eq!(back.runs.len(), 1);
        assert!(Journal::load(dir.path(), "other").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(Journal::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
