//! A rollout: one operation carried node by node through the cluster —
//! control planes one at a time in definition order, then workers in batches
//! of `--max-parallel` — each node through the same step table on the engine,
//! the whole rollout in one journal (`<state>/day2/<op>.json`).
//!
//! The journal keeps, per node, what the real state cannot tell afterwards
//! (the version and boot ID before, whether the call reached the node, whether
//! this run cordoned it) and which steps finished. Every step still reads the
//! real state first, so a run killed at any step boundary and started again
//! converges: a node already on the target is skipped, a requested upgrade is
//! waited for rather than asked again, a cordon of ours is always undone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{
    Definition, Event, EventKind, Facts, FlowError, Journal, JournalHandle, NodeDef, StepId,
};

/// What one node's run keeps in the rollout's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRunFacts {
    /// The version the node ran when the rollout first reached it.
    #[serde(default)]
    pub version_before: Option<String>,
    /// Its boot ID then: a different one proves the reboot.
    #[serde(default)]
    pub boot_id_before: Option<String>,
    /// The installer ran to exit code 0 (LifecycleService): the next boot is the new image.
    #[serde(default)]
    pub installed: bool,
    /// The reboot (or the legacy upgrade, which reboots) reached the node.
    #[serde(default)]
    pub requested: bool,
    /// The node answered `Unimplemented` to the 1.13 API: it takes the legacy call.
    #[serde(default)]
    pub legacy_api: bool,
    /// Whether the Node was unschedulable before this rollout cordoned it
    /// (recorded before the cordon, so a kill right after it still knows).
    #[serde(default)]
    pub was_unschedulable: Option<bool>,
    #[serde(default)]
    pub was_ready: Option<bool>,
    /// Every boot ID seen after the call (a rollback shows two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_ids: Vec<String>,
    /// Steps of this node that finished (done or skipped).
    #[serde(default)]
    pub steps: BTreeSet<String>,
    /// The node is finished: on the target, verified, uncordoned.
    #[serde(default)]
    pub done: bool,
}

impl NodeRunFacts {
    /// This rollout cordoned the node (so it must uncordon it).
    pub fn cordoned_by_us(&self) -> bool {
        self.was_unschedulable == Some(false)
    }
}

/// A rollout's journal facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFacts {
    /// The version rolled out (`v1.13.9`).
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub per_node: BTreeMap<String, NodeRunFacts>,
    /// The automatic snapshot, taken once before the first control plane.
    #[serde(default)]
    pub backup: Option<String>,
    /// Refusals overridden with `--force` (node: reason).
    #[serde(default)]
    pub forced: Vec<String>,
    /// Layers gates passed with `--ignore-gitops` (when: blocking objects).
    #[serde(default)]
    pub ignored_gitops: Vec<String>,
}

impl Facts for RolloutFacts {
    /// A node's step that finished (done or skipped) is recorded for that node.
    fn apply(&mut self, ev: &Event) -> bool {
        match (&ev.kind, &ev.node) {
            (EventKind::StepFinished { outcome, .. }, Some(node)) if outcome.is_ok() => self
                .per_node
                .entry(node.clone())
                .or_default()
                .steps
                .insert(ev.step.name().to_string()),
            _ => false,
        }
    }
}

/// The rollout's journal file.
pub fn journal_path(state_dir: &Path, op: &str) -> PathBuf {
    state_dir.join("day2").join(format!("{op}.json"))
}

/// The rollout's unfinished journal, or a new one for `target`. An
/// unfinished rollout to another target is refused: finish it first.
pub fn open_journal(
    state_dir: &Path,
    cluster: &str,
    op: &'static str,
    target: &str,
) -> Result<JournalHandle<RolloutFacts>, FlowError> {
    let path = journal_path(state_dir, op);
    let journal = match Journal::<RolloutFacts>::read_of(&path, cluster)?
        .filter(|j| j.completed_ms.is_none())
    {
        Some(j) if j.facts.target == target || j.facts.target.is_empty() => j,
        Some(j) => {
            return Err(crate::engine::GateError::Refused {
                op,
                rule: format!(
                    "an unfinished {op} to {} is in {}",
                    j.facts.target,
                    path.display()
                ),
                next: format!(
                    "finish it (run again with --to {}), or move that file away to start a new one",
                    j.facts.target
                ),
            }
            .into())
        }
        None => {
            let mut j = Journal::<RolloutFacts>::new(cluster, Some(op), None);
            j.facts.target = target.to_string();
            j
        }
    };
    Ok(JournalHandle::new(path, journal))
}

/// The rollout order: each control plane alone, in definition order, then the
/// workers in batches of `max_parallel` (at least 1).
pub fn batches(def: &Definition, max_parallel: usize) -> Vec<Vec<&NodeDef>> {
    let mut out: Vec<Vec<&NodeDef>> = def.control_planes().map(|n| vec![n]).collect();
    let workers: Vec<&NodeDef> = def.nodes.iter().filter(|n| !n.control_plane).collect();
    out.extend(
        workers
            .chunks(max_parallel.max(1))
            .map(<[&NodeDef]>::to_vec),
    );
    out
}

/// A node's facts, read.
pub fn node_facts(j: &JournalHandle<RolloutFacts>, host: &str) -> NodeRunFacts {
    j.get(|j| j.facts.per_node.get(host).cloned().unwrap_or_default())
}

/// Changes a node's facts and writes the journal.
pub fn update_node(
    j: &JournalHandle<RolloutFacts>,
    host: &str,
    f: impl FnOnce(&mut NodeRunFacts),
) -> Result<(), FlowError> {
    j.update(|j| f(j.facts.per_node.entry(host.to_string()).or_default()))
}

/// Whether `step` finished for `host` in this rollout.
pub fn node_done(j: &JournalHandle<RolloutFacts>, host: &str, step: StepId) -> bool {
    j.get(|j| {
        j.facts
            .per_node
            .get(host)
            .is_some_and(|n| n.steps.contains(step.name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Emitter, Outcome};

    fn def() -> Definition {
        let n = |h: &str, cp: bool| NodeDef {
            hostname: h.into(),
            address: format!("127.0.0.{}", h.len()),
            control_plane: cp,
            install_disk: None,
            links: vec![],
        };
        Definition {
            cluster: "t".into(),
            endpoint: "https://127.0.0.10:6443".into(),
            nodes: vec![
                n("w1", false),
                n("cp1", true),
                n("w2", false),
                n("cp2", true),
                n("w3", false),
                n("cp3", true),
            ],
        }
    }

    #[test]
    fn control_planes_alone_then_worker_batches() {
        let d = def();
        let names = |b: Vec<Vec<&NodeDef>>| -> Vec<Vec<String>> {
            b.iter()
                .map(|x| x.iter().map(|n| n.hostname.clone()).collect())
                .collect()
        };
        assert_eq!(
            names(batches(&d, 2)),
            [
                vec!["cp1"],
                vec!["cp2"],
                vec!["cp3"],
                vec!["w1", "w2"],
                vec!["w3"]
            ]
        );
        assert_eq!(names(batches(&d, 0)).len(), 6);
    }

    #[test]
    fn node_steps_are_journaled_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let j = open_journal(dir.path(), "t", "upgrade-talos", "v1.13.9").unwrap();
        let em = Emitter::new();
        let _a = em.attach(j.sink());
        let t0 = em.started();
        em.finished(
            StepId::Cordon,
            Some("cp1"),
            Outcome::Done { detail: "x".into() },
            t0,
        );
        assert!(node_done(&j, "cp1", StepId::Cordon));
        assert!(!node_done(&j, "cp2", StepId::Cordon));
        update_node(&j, "cp1", |n| n.was_unschedulable = Some(false)).unwrap();
        drop(_a);
        // Read back from disk; another target is refused while unfinished.
        let again = open_journal(dir.path(), "t", "upgrade-talos", "v1.13.9").unwrap();
        assert!(node_facts(&again, "cp1").cordoned_by_us());
        let Err(e) = open_journal(dir.path(), "t", "upgrade-talos", "v1.14.2") else {
            panic!("another target is refused");
        };
        assert!(
            e.to_string()
                .contains("unfinished upgrade-talos to v1.13.9"),
            "{e}"
        );
    }
}
