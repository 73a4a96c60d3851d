//! `upgrade talos` (and its plan): a rollout ([`crate::flows::rollout`]) that
//! moves every node to the target Talos version through the gates
//! ([`crate::flows::gates`]), the way the node's running version offers it.
//!
//! - [`skew`]: version rules checked before any node is touched.
//! - [`preflight`]: target images from the definition, every node's version, refusals.
//! - [`talos`]: the per-node step table.

pub mod kubernetes;
pub mod preflight;
pub mod removed;
pub mod skew;
pub mod talos;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::{
    Cluster, Emitter, FlowError, JournalHandle, NodeDef, Outcome, PlanItem, Scope, StepId,
};
use crate::flows::gates::layers::LayersGate;
use crate::flows::rollout::{self, RolloutFacts};
use crate::gitops::LayerMap;
use crate::talos::CallPolicy;

/// How `upgrade talos` runs.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub state_dir: PathBuf,
    pub policy: CallPolicy,
    /// Target version; default: the definition's (the install image's tag).
    pub to: Option<String>,
    /// Workers upgraded at once (control planes are always one at a time).
    pub max_parallel: usize,
    /// Proceed past refusals (a node down, the quorum gate), each said why.
    pub force: bool,
    /// Allow a jump of two Talos minors where the installer allows it.
    pub allow_skip_minor: bool,
    /// Use MachineService.Upgrade on 1.13+ nodes too (talosctl's `--legacy`):
    /// the 1.13 API drops extraKernelArgs on GRUB nodes without the UKI
    /// command line, and the Talos docs give the legacy call as the stopgap.
    pub legacy_upgrade: bool,
    /// How long a PodDisruptionBudget refusal is retried.
    pub drain_timeout: Duration,
    /// After `drain_timeout`, delete the pod instead of stopping.
    pub force_drain: bool,
    /// Pass the layers gate with a warning instead of waiting and refusing.
    pub ignore_gitops: bool,
    pub layers: LayerMap,
    /// The GitOps repository and its Flux sync path (None: the default `up`
    /// derives from the repository), scanned by `upgrade kubernetes` for
    /// manifests of APIs the target removes. None: not scanned (said so).
    pub gitops_tree: Option<(PathBuf, Option<String>)>,
    /// How long a not-Ready layer is waited for.
    pub layers_deadline: Duration,
    /// Snapshot etcd before the first control plane.
    pub auto_snapshot: bool,
    /// Back after the reboot.
    pub node_deadline: Duration,
    /// Leader hand-over, etcd member healthy.
    pub etcd_deadline: Duration,
    /// Node Ready, services healthy.
    pub kube_deadline: Duration,
}

impl UpgradeOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            policy: CallPolicy::default(),
            to: None,
            max_parallel: 1,
            force: false,
            allow_skip_minor: false,
            legacy_upgrade: false,
            drain_timeout: Duration::from_secs(300),
            force_drain: false,
            ignore_gitops: false,
            layers: LayerMap::endsys(),
            gitops_tree: None,
            layers_deadline: Duration::from_secs(600),
            auto_snapshot: true,
            node_deadline: Duration::from_secs(30 * 60),
            etcd_deadline: Duration::from_secs(10 * 60),
            kube_deadline: Duration::from_secs(10 * 60),
        }
    }

    pub fn layers_gate(&self) -> LayersGate {
        LayersGate {
            layers: self.layers.clone(),
            deadline: self.layers_deadline,
            ignore: self.ignore_gitops,
        }
    }
}

/// The rollout's shared context: what every node's steps read.
pub struct Rollout<'a> {
    pub cluster: &'a Cluster,
    pub opts: &'a UpgradeOptions,
    pub em: &'a Emitter,
    pub journal: JournalHandle<RolloutFacts>,
    pub kube: Option<kube::Client>,
    /// The client drains evict through (429s not retried inside it).
    pub drain_kube: Option<kube::Client>,
    pub target: skew::Version,
    /// The installer image per node (hostname).
    pub images: BTreeMap<String, String>,
    /// Versions read in preflight (hostname → tag); absent: not answering.
    pub versions: BTreeMap<String, String>,
    /// Nodes left out because they do not answer (`--force`).
    pub excused: Vec<String>,
    /// The first control plane the rollout touches (the snapshot goes before it).
    pub first_cp: Option<String>,
}

/// One node's run inside the rollout.
pub struct NodeRun<'a> {
    pub r: &'a Rollout<'a>,
    pub node: NodeDef,
    pub image: String,
}

/// What an upgrade did.
#[derive(Debug, Clone)]
pub struct UpgradeReport {
    pub target: String,
    /// Per node, in rollout order: `upgraded v1.12.6 → v1.13.9 (boot a → b)`,
    /// `already on v1.13.9`, `left out: …`.
    pub nodes: Vec<(String, String)>,
    pub backup: Option<String>,
    pub forced: Vec<String>,
    pub ignored_gitops: Vec<String>,
    pub resumed: bool,
    pub elapsed: Duration,
}

const OP: &str = "upgrade-talos";

/// Runs (or resumes) `upgrade talos`.
pub async fn upgrade_talos(
    cluster: &Cluster,
    opts: &UpgradeOptions,
    em: &Emitter,
) -> Result<UpgradeReport, FlowError> {
    let t0 = Instant::now();
    let pre = preflight::run(cluster, opts, em, &in_flight(cluster, opts)).await?;
    let journal = rollout::open_journal(
        &opts.state_dir,
        &cluster.def.cluster,
        OP,
        &pre.target.to_string(),
    )?;
    let resumed = journal.get(|j| !j.facts.per_node.is_empty());
    if resumed {
        em.progress(
            StepId::Resume,
            None,
            format!(
                "resuming the upgrade to {} started earlier (finished: {})",
                pre.target,
                journal.get(|j| j
                    .facts
                    .per_node
                    .iter()
                    .filter(|(_, n)| n.done)
                    .map(|(h, _)| h.clone())
                    .collect::<Vec<_>>()
                    .join(", "))
            ),
        );
    }
    let _sink = em.attach(journal.sink());
    if !pre.excused.is_empty() {
        let reasons: Vec<String> = pre
            .excused
            .iter()
            .map(|(h, why)| format!("{h}: {why}"))
            .collect();
        journal.update(|j| j.facts.forced.extend(reasons.iter().cloned()))?;
    }
    let kube = match cluster.kube().await {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => return Err(FlowError::kube(StepId::Kubernetes, e)),
        None => {
            em.warning(StepId::Kubernetes, None, format!(
                "no kubeconfig at {}: no cordon/drain/Node checks and no layers gate (run `up` or `kubeconfig` first to get one)",
                opts.state_dir.join("kubeconfig").display()
            ));
            None
        }
    };
    let drain_kube = match cluster.kube_for_drains().await {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => return Err(FlowError::kube(StepId::Kubernetes, e)),
        None => None,
    };
    let excused: Vec<String> = pre.excused.iter().map(|(h, _)| h.clone()).collect();
    let first_cp = first_to_touch(cluster, &pre, &journal, &excused);
    let r = Rollout {
        cluster,
        opts,
        em,
        journal,
        kube,
        drain_kube,
        target: pre.target.clone(),
        images: pre.images,
        versions: pre.versions,
        excused,
        first_cp,
    };
    let mut lines = Vec::new();
    for batch in rollout::batches(&cluster.def, opts.max_parallel) {
        let results = futures::future::join_all(batch.iter().map(|n| run_node(&r, n))).await;
        for (n, res) in batch.iter().zip(results) {
            lines.push((n.hostname.clone(), res?));
        }
    }
    r.journal.complete()?;
    if let Some(e) = r.journal.save_error() {
        return Err(e);
    }
    let facts = r.journal.get(|j| j.facts.clone());
    Ok(UpgradeReport {
        target: pre.target.to_string(),
        nodes: lines,
        backup: facts.backup,
        forced: facts.forced,
        ignored_gitops: facts.ignored_gitops,
        resumed,
        elapsed: t0.elapsed(),
    })
}

/// One node through the step table, or skipped (finished earlier, already on
/// the target, left out).
async fn run_node(r: &Rollout<'_>, node: &NodeDef) -> Result<String, FlowError> {
    let host = node.hostname.clone();
    let facts = rollout::node_facts(&r.journal, &host);
    let target = r.target.to_string();
    let skip = |why: String| {
        let t = r.em.started();
        r.em.finished(
            StepId::Upgrade,
            Some(&host),
            Outcome::Skipped {
                reason: why.clone(),
            },
            t,
        );
        Ok(why)
    };
    if facts.done {
        return skip(format!("finished earlier: on {target}"));
    }
    if r.excused.contains(&host) {
        return skip("left out: does not answer (--force)".into());
    }
    let started = facts.version_before.is_some();
    let running = r.versions.get(&host).cloned().unwrap_or_default();
    if !started && same_version(&running, &target) {
        rollout::update_node(&r.journal, &host, |n| n.done = true)?;
        return skip(format!("already on {target}"));
    }
    let mut cx = NodeRun {
        r,
        node: node.clone(),
        image: r.images.get(&host).cloned().unwrap_or_default(),
    };
    let scope = Scope {
        em: r.em,
        node: Some(&host),
        until: None,
    };
    talos::steps().run(&mut cx, scope).await?;
    rollout::update_node(&r.journal, &host, |n| n.done = true)?;
    let f = rollout::node_facts(&r.journal, &host);
    Ok(format!(
        "upgraded {} → {target} (boot {})",
        f.version_before.unwrap_or_default(),
        f.boot_ids.join(" → ")
    ))
}

/// Nodes an earlier, unfinished run reached and did not finish: their reboot
/// may be under way, so they may be silent now.
fn in_flight(cluster: &Cluster, opts: &UpgradeOptions) -> Vec<String> {
    crate::engine::Journal::<RolloutFacts>::read_of(
        &rollout::journal_path(&opts.state_dir, OP),
        &cluster.def.cluster,
    )
    .ok()
    .flatten()
    .filter(|j| j.completed_ms.is_none())
    .map(|j| {
        j.facts
            .per_node
            .into_iter()
            // Requested, or touched by a run killed right after a call
            // (an unjournaled reboot may be under way).
            .filter(|(_, n)| (n.requested || n.version_before.is_some()) && !n.done)
            .map(|(h, _)| h)
            .collect()
    })
    .unwrap_or_default()
}

/// The first control plane this run will upgrade (the snapshot goes before
/// it): not finished, not left out, not already on the target.
fn first_to_touch(
    cluster: &Cluster,
    pre: &preflight::Preflight,
    journal: &JournalHandle<RolloutFacts>,
    excused: &[String],
) -> Option<String> {
    let target = pre.target.to_string();
    cluster
        .def
        .control_planes()
        .find(|n| {
            let f = rollout::node_facts(journal, &n.hostname);
            let running = pre
                .versions
                .get(&n.hostname)
                .map(String::as_str)
                .unwrap_or("");
            !f.done
                && !excused.contains(&n.hostname)
                && (f.version_before.is_some() || !same_version(running, &target))
        })
        .map(|n| n.hostname.clone())
}

pub(crate) fn same_version(a: &str, b: &str) -> bool {
    match (skew::Version::parse(a), skew::Version::parse(b)) {
        (Some(x), Some(y)) => x.same(&y),
        _ => false,
    }
}

/// `plan upgrade talos` (and `upgrade talos --dry-run`): preflight (reads
/// every node's version, changes nothing), then every node's steps in
/// rollout order, each naming the call and the node receiving it.
pub async fn plan_upgrade_talos(
    cluster: &Cluster,
    opts: &UpgradeOptions,
) -> Result<Vec<PlanItem>, FlowError> {
    let em = Emitter::new();
    let pre = preflight::run(cluster, opts, &em, &in_flight(cluster, opts)).await?;
    let journal = rollout::open_journal(
        &opts.state_dir,
        &cluster.def.cluster,
        OP,
        &pre.target.to_string(),
    )
    // A plan never writes; an unreadable journal reads as none.
    .unwrap_or_else(|_| {
        crate::engine::JournalHandle::new(
            rollout::journal_path(&opts.state_dir, OP),
            crate::engine::Journal::new(&cluster.def.cluster, Some(OP), None),
        )
    });
    let excused: Vec<String> = pre.excused.iter().map(|(h, _)| h.clone()).collect();
    let first_cp = first_to_touch(cluster, &pre, &journal, &excused);
    let target = pre.target.to_string();
    let mut items = vec![PlanItem::new(
        StepId::Preflight,
        false,
        format!(
            "Version → every node: {}; target {target}; {}",
            pre.versions
                .iter()
                .map(|(h, v)| format!("{h} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            preflight::rules_line()
        ),
    )];
    let r = Rollout {
        cluster,
        opts,
        em: &em,
        journal,
        kube: None,
        drain_kube: None,
        target: pre.target.clone(),
        images: pre.images,
        versions: pre.versions,
        excused,
        first_cp,
    };
    for (i, batch) in rollout::batches(&cluster.def, opts.max_parallel)
        .iter()
        .enumerate()
    {
        if batch.len() > 1 {
            items.push(PlanItem::new(
                StepId::Run,
                false,
                format!(
                    "batch {}: {} in parallel (--max-parallel {})",
                    i + 1,
                    batch
                        .iter()
                        .map(|n| n.hostname.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    opts.max_parallel
                ),
            ));
        }
        for n in batch {
            let facts = rollout::node_facts(&r.journal, &n.hostname);
            let running = r.versions.get(&n.hostname).cloned().unwrap_or_default();
            let why = if facts.done {
                Some(format!("finished earlier: on {target}"))
            } else if r.excused.contains(&n.hostname) {
                Some("left out: does not answer (--force)".to_string())
            } else if facts.version_before.is_none() && same_version(&running, &target) {
                Some(format!("skip: already on {target}"))
            } else {
                None
            };
            if let Some(why) = why {
                items.push(PlanItem::on(StepId::Upgrade, n, false, why));
                continue;
            }
            let mut cx = NodeRun {
                r: &r,
                node: (*n).clone(),
                image: r.images.get(&n.hostname).cloned().unwrap_or_default(),
            };
            items.extend(talos::steps().plan(&mut cx).await);
        }
    }
    Ok(items)
}
