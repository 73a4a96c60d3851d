//! The journal of a flow: which steps finished, the decisions a re-run must
//! keep, and each flow's own facts. One format, one JSON file per flow run,
//! rewritten atomically (0600) after every change:
//!
//! | flow | file | facts |
//! | --- | --- | --- |
//! | `up` | `<state>/journal.json` | bootstrap node, phase timings ([`UpFacts`]) |
//! | `node reimage/rejoin` | `<state>/day2/<op>-<node>.json` | flows::nodes::NodeFacts |
//! | `recover` | `<state>/recover.json` | flows::recover::RecoverFacts |
//!
//! The journal is a hint. Every step reads the cluster's real state before acting;
//! the journal only keeps decisions stable across runs (the same bootstrap node,
//! whether a Node was Ready before its reimage) and tells `plan` and the operator
//! what happened last time. It is fed by the event stream ([`JournalHandle::sink`]),
//! synchronously, so it is on disk before anyone sees the event: a process killed
//! right after an event keeps what the event recorded.
//!
//! Files written by earlier versions load: day-2 journals kept `steps` as
//! `{name: finished_ms}`, `recover.json` had no `version` or `cluster`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::FlowError;
use super::events::{now_ms, Event, EventKind, EventSink};
use super::step::StepId;

/// Journal format version (2: one format for every flow).
pub const VERSION: u32 = 2;

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

/// How one step last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StepRecordFile")]
pub struct StepRecord {
    /// done / skipped / failed
    pub outcome: String,
    pub finished_ms: u64,
    pub duration_ms: u64,
}

/// A step record as files hold it: the full record, or (day-2 journals before
/// version 2) just when the step finished.
#[derive(Deserialize)]
#[serde(untagged)]
enum StepRecordFile {
    Full {
        outcome: String,
        finished_ms: u64,
        #[serde(default)]
        duration_ms: u64,
    },
    FinishedAt(u64),
}

impl From<StepRecordFile> for StepRecord {
    fn from(f: StepRecordFile) -> Self {
        match f {
            StepRecordFile::Full {
                outcome,
                finished_ms,
                duration_ms,
            } => StepRecord {
                outcome,
                finished_ms,
                duration_ms,
            },
            StepRecordFile::FinishedAt(ms) => StepRecord {
                outcome: "done".into(),
                finished_ms: ms,
                duration_ms: 0,
            },
        }
    }
}

impl StepRecord {
    /// The step acted or found nothing to do (not failed).
    pub fn finished(&self) -> bool {
        self.outcome != "failed"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub ok: Option<bool>,
    /// Set when a signal ended the run (`SIGINT`, `SIGTERM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

/// Closes the open run record of every journal in `dir` (`up`'s, `recover`'s,
/// the node operations') as interrupted by `signal`. Only the holder of the
/// directory's lock may call it: an open record then belongs to this process.
/// Returns the journals changed.
pub fn close_interrupted(dir: &Path, signal: &str) -> Vec<PathBuf> {
    let mut files = vec![dir.join("journal.json"), dir.join("recover.json")];
    if let Ok(day2) = std::fs::read_dir(dir.join("day2")) {
        files.extend(
            day2.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json")),
        );
    }
    let mut closed = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        // As JSON values: the facts differ per flow and must survive untouched.
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(last) = v
            .get_mut("runs")
            .and_then(|r| r.as_array_mut())
            .and_then(|r| r.last_mut())
        else {
            continue;
        };
        if !last.get("finished_ms").is_none_or(|f| f.is_null()) {
            continue;
        }
        last["finished_ms"] = serde_json::json!(now_ms());
        last["ok"] = serde_json::json!(false);
        last["interrupted"] = serde_json::json!(signal);
        let Ok(out) = serde_json::to_string_pretty(&v) else {
            continue;
        };
        if crate::talos::talosconfig::write_private(&f, out.as_bytes()).is_ok() {
            closed.push(f);
        }
    }
    closed
}

/// What a flow keeps beyond its steps, and how events update it.
pub trait Facts: Serialize + DeserializeOwned + Default + Send + 'static {
    /// Applies one event; true when the facts changed.
    fn apply(&mut self, _ev: &Event) -> bool {
        false
    }
}

/// A flow without facts of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoFacts {}

impl Facts for NoFacts {}

/// `up`'s facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpFacts {
    /// The control plane chosen to bootstrap etcd (kept across runs).
    #[serde(default)]
    pub bootstrap_node: Option<String>,
    /// Phase durations of the last run, in milliseconds.
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
}

impl Facts for UpFacts {
    fn apply(&mut self, ev: &Event) -> bool {
        match &ev.kind {
            EventKind::RunStarted { .. } => {
                self.timings_ms.clear();
                true
            }
            EventKind::StepFinished { duration_ms, .. }
                if ev.node.is_none() && ev.step != StepId::Run =>
            {
                self.timings_ms
                    .insert(ev.step.name().to_string(), *duration_ms);
                true
            }
            EventKind::Decision { key, value } if key == "bootstrap_node" => {
                self.bootstrap_node = Some(value.clone());
                true
            }
            _ => false,
        }
    }
}

/// One flow run's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "F: Facts"))]
pub struct Journal<F> {
    #[serde(default)]
    pub version: u32,
    /// Empty in `recover.json` files written before version 2.
    #[serde(default)]
    pub cluster: String,
    /// The node operation (`reimage`, `rejoin`); none for `up` and `recover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The node a node operation is about: the journal records that node's
    /// step events (a cluster-wide flow records the events without a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_ms: u64,
    /// Last outcome of each step.
    #[serde(default)]
    pub steps: BTreeMap<String, StepRecord>,
    /// Set when the flow finished; the next run starts a new journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    #[serde(flatten)]
    pub facts: F,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl<F: Facts> Journal<F> {
    /// A new journal of `cluster` (about `node` for node operations).
    pub fn new(cluster: &str, op: Option<&str>, node: Option<&str>) -> Self {
        Journal {
            version: VERSION,
            cluster: cluster.to_string(),
            op: op.map(str::to_string),
            node: node.map(str::to_string),
            started_ms: now_ms(),
            updated_ms: 0,
            steps: BTreeMap::new(),
            completed_ms: None,
            runs: Vec::new(),
            facts: F::default(),
        }
    }

    /// `up`'s journal in a state directory.
    pub fn up_path(dir: &Path) -> PathBuf {
        dir.join("journal.json")
    }

    /// A node operation's journal in a state directory.
    pub fn node_op_path(dir: &Path, op: &str, node: &str) -> PathBuf {
        dir.join("day2").join(format!("{op}-{node}.json"))
    }

    /// `recover`'s journal in a state directory.
    pub fn recover_path(dir: &Path) -> PathBuf {
        dir.join("recover.json")
    }

    /// Reads a journal file; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, FlowError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FlowError::local(path, format!("cannot read: {e}"))),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            FlowError::local(
                path,
                format!(
                    "not a journal (line {}): {e}; move it away to start afresh",
                    e.line()
                ),
            )
        })
    }

    /// Reads a journal and checks it belongs to `cluster` (files that name no
    /// cluster, from before version 2, are taken as they are).
    pub fn read_of(path: &Path, cluster: &str) -> Result<Option<Self>, FlowError> {
        let j = Self::read(path)?;
        if let Some(j) = &j {
            if !j.cluster.is_empty() && j.cluster != cluster {
                return Err(FlowError::local(
                    path,
                    format!(
                        "journal belongs to cluster `{}`, not `{cluster}`; use another --state-dir",
                        j.cluster
                    ),
                ));
            }
        }
        Ok(j)
    }

    /// Writes via a temporary file and rename (0600).
    pub fn write(&mut self, path: &Path) -> Result<(), FlowError> {
        // Whatever version it was read as, it is written in this one.
        self.version = VERSION;
        self.updated_ms = now_ms();
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| FlowError::local(path, e.to_string()))?;
        crate::talos::talosconfig::write_private(path, text.as_bytes())
            .map_err(|e| FlowError::local(path, format!("cannot write: {e}")))
    }

    /// Whether `step` finished (acted, or found nothing to do) in this run.
    pub fn done(&self, step: StepId) -> bool {
        self.steps
            .get(step.name())
            .is_some_and(StepRecord::finished)
    }

    /// Whether `step` was reached at all (finished or failed).
    pub fn attempted(&self, step: StepId) -> bool {
        self.steps.contains_key(step.name())
    }

    /// The steps that finished, by name.
    pub fn finished_steps(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|(_, r)| r.finished())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a run of this journal already finished a step.
    pub fn resumed(&self) -> bool {
        self.steps.values().any(StepRecord::finished)
    }

    /// Records `step` with `outcome` (`done`, `skipped`, `failed`).
    pub fn record(&mut self, step: StepId, outcome: &str, duration_ms: u64) {
        self.steps.insert(
            step.name().to_string(),
            StepRecord {
                outcome: outcome.to_string(),
                finished_ms: now_ms(),
                duration_ms,
            },
        );
    }

    /// Applies one event; true when the journal changed.
    pub fn apply(&mut self, ev: &Event) -> bool {
        let mut changed = self.facts.apply(ev);
        match &ev.kind {
            EventKind::RunStarted { .. } => {
                self.runs.push(RunRecord {
                    started_ms: ev.ts_ms,
                    finished_ms: None,
                    ok: None,
                    interrupted: None,
                });
                // Keep the file small.
                if self.runs.len() > 50 {
                    self.runs.remove(0);
                }
                changed = true;
            }
            EventKind::StepFinished {
                outcome,
                duration_ms,
            } if ev.node == self.node && ev.step != StepId::Run => {
                self.steps.insert(
                    ev.step.name().to_string(),
                    StepRecord {
                        outcome: outcome.label().to_string(),
                        finished_ms: ev.ts_ms,
                        duration_ms: *duration_ms,
                    },
                );
                changed = true;
            }
            EventKind::RunFinished { ok, .. } => {
                if let Some(r) = self.runs.last_mut() {
                    r.finished_ms = Some(ev.ts_ms);
                    r.ok = Some(*ok);
                }
                changed = true;
            }
            _ => {}
        }
        changed
    }
}

/// A journal and its file, shared by the flow (which reads it and keeps its
/// facts) and the event sink (which records the steps).
pub struct JournalHandle<F> {
    inner: Arc<Mutex<(PathBuf, Journal<F>)>>,
    /// The first save that failed from the event sink (which cannot return it):
    /// a run whose journal is not on disk must not end as a success.
    unsaved: Arc<Mutex<Option<FlowError>>>,
}

impl<F> Clone for JournalHandle<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            unsaved: self.unsaved.clone(),
        }
    }
}

impl<F: Facts> JournalHandle<F> {
    /// A journal kept at `path` (not written until something changes).
    pub fn new(path: PathBuf, journal: Journal<F>) -> Self {
        Self {
            inner: Arc::new(Mutex::new((path, journal))),
            unsaved: Arc::new(Mutex::new(None)),
        }
    }

    /// The first failed save of the event sink, if any (taken: reported once).
    pub fn save_error(&self) -> Option<FlowError> {
        self.unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (PathBuf, Journal<F>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> PathBuf {
        self.lock().0.clone()
    }

    /// Reads the journal.
    pub fn get<T>(&self, f: impl FnOnce(&Journal<F>) -> T) -> T {
        f(&self.lock().1)
    }

    /// A copy of the journal as it is now.
    pub fn snapshot(&self) -> Journal<F>
    where
        F: Clone,
    {
        self.lock().1.clone()
    }

    pub fn done(&self, step: StepId) -> bool {
        self.get(|j| j.done(step))
    }

    /// Changes the journal and writes it before returning.
    pub fn update<T>(&self, f: impl FnOnce(&mut Journal<F>) -> T) -> Result<T, FlowError> {
        let mut g = self.lock();
        let (path, j) = &mut *g;
        let out = f(j);
        j.write(path)?;
        Ok(out)
    }

    /// Records a step that has no event of its own (e.g. a call accepted
    /// mid-step), and writes.
    pub fn mark(&self, step: StepId) -> Result<(), FlowError> {
        self.update(|j| j.record(step, "done", 0))
    }

    /// Marks the flow finished, and writes.
    pub fn complete(&self) -> Result<(), FlowError> {
        self.update(|j| j.completed_ms = Some(now_ms()))
    }

    /// The sink that feeds this journal from the event stream and writes it
    /// after each change.
    pub fn sink(&self) -> Box<dyn EventSink> {
        Box::new(JournalSink(self.clone()))
    }
}

struct JournalSink<F>(JournalHandle<F>);

impl<F: Facts> EventSink for JournalSink<F> {
    fn record(&mut self, event: &Event) {
        let mut g = self.0.lock();
        let (path, j) = &mut *g;
        if j.apply(event) {
            if let Err(e) = j.write(path) {
                tracing::warn!("journal not saved: {e}");
                let mut first = self.0.unsaved.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some(FlowError::local(
                        path,
                        format!(
                            "the journal could not be saved ({e}); the run did its work but a re-run cannot tell what finished"
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{Emitter, Outcome};

    #[test]
    fn journal_round_trips_through_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::<UpFacts>::up_path(dir.path());
        let em = Emitter::new();
        let j = Journal::<UpFacts>::read_of(&path, "lab")
            .unwrap()
            .unwrap_or_else(|| Journal::new("lab", None, None));
        let h = JournalHandle::new(path.clone(), j);
        let _sink = em.attach(h.sink());
        em.emit(
            StepId::Run,
            None,
            EventKind::RunStarted {
                cluster: "lab".into(),
                steps: vec![],
            },
        );
        em.decision(StepId::Bootstrap, Some("cp1"), "bootstrap_node", "cp1");
        em.finished(
            StepId::Bootstrap,
            None,
            Outcome::Done {
                detail: String::new(),
            },
            std::time::Instant::now(),
        );
        // A node's own finish is not the cluster-wide step.
        em.finished(
            StepId::Apply,
            Some("cp1"),
            Outcome::Done {
                detail: String::new(),
            },
            std::time::Instant::now(),
        );
        let back = Journal::<UpFacts>::read_of(&path, "lab").unwrap().unwrap();
        assert_eq!(back.facts.bootstrap_node.as_deref(), Some("cp1"));
        assert_eq!(back.steps["bootstrap"].outcome, "done");
        assert!(back.done(StepId::Bootstrap) && !back.attempted(StepId::Apply));
        assert!(back.facts.timings_ms.contains_key("bootstrap"));
        assert_eq!(back.runs.len(), 1);
        assert!(Journal::<UpFacts>::read_of(&path, "other").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn journals_written_before_version_2_load() {
        // `up`'s journal as version 1 wrote it.
        let up = r#"{
  "version": 1,
  "cluster": "lab",
  "steps": {"apply": {"outcome": "failed", "finished_ms": 5, "duration_ms": 2}},
  "bootstrap_node": "cp2",
  "runs": [{"started_ms": 1, "finished_ms": 9, "ok": false}],
  "timings_ms": {"apply": 2}
}"#;
        let j: Journal<UpFacts> = serde_json::from_str(up).unwrap();
        assert_eq!(j.facts.bootstrap_node.as_deref(), Some("cp2"));
        assert!(j.attempted(StepId::Apply) && !j.done(StepId::Apply));
        assert_eq!(j.runs[0].ok, Some(false));
        assert_eq!(j.facts.timings_ms["apply"], 2);
        // A day-2 journal: steps as finish times, its facts beside them.
        #[derive(Debug, Default, Serialize, Deserialize)]
        struct Node {
            #[serde(default)]
            was_ready: Option<bool>,
            #[serde(default)]
            removed: Vec<(String, String)>,
        }
        impl Facts for Node {}
        let day2 = r#"{"version": 1, "cluster": "lab", "op": "rejoin", "node": "cp2",
            "started_ms": 3, "steps": {"guard": 4, "remove_member": 6},
            "completed_ms": null, "was_ready": true, "backup": null,
            "removed": [["00000000000000aa", "https://127.0.0.12:2380"]], "forced": []}"#;
        let j: Journal<Node> = serde_json::from_str(day2).unwrap();
        assert!(j.done(StepId::Guard) && j.done(StepId::RemoveMember));
        assert_eq!(j.steps["guard"].finished_ms, 4);
        assert_eq!(j.facts.was_ready, Some(true));
        assert_eq!(j.facts.removed.len(), 1);
        assert_eq!(j.node.as_deref(), Some("cp2"));
        assert!(j.resumed());
        // Written back, it reads the same.
        let again: Journal<Node> =
            serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(again.steps, j.steps);
        assert_eq!(again.facts.removed, j.facts.removed);
    }
}
