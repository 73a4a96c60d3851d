//! `apply`: the definition pushed to a running cluster without taking it down.
//!
//! 1. **Preflight**, before any ApplyConfiguration (dry runs included): the
//!    hardware gate (install-disk and link selectors against each node's
//!    disks and links), then each node's drift ([`crate::flows::drift`]) with
//!    Talos's dry-run verdict; a node Talos refuses stops the run.
//! 2. **Live** nodes, in parallel, with NO_REBOOT (never AUTO: a race cannot
//!    turn into a reboot); a node that answers "can't be applied in immediate
//!    mode" joins the rolled ones.
//! 3. **Rolled** nodes (reboot, reinstall, staged-pending), control planes
//!    first in definition order, then workers in batches of `max_parallel`,
//!    each behind the gates ([`roll`]): quorum (Reboot), layers, snapshot once,
//!    leader hand-over, cordon, drain, STAGED apply (or NO_REBOOT plus an
//!    upgrade to the node's own installer image for install fields), Reboot,
//!    back with a new boot ID, config verified, services, etcd, Ready,
//!    uncordon, layers.
//!
//! `--mode`: `auto` as above; `no-reboot` refuses a node that needs a reboot,
//! naming the fields; `staged` stages everywhere, no reboot; `reboot` rolls
//! every changed node. Journaled in `<state>/day2/apply.json` as a rollout
//! ([`crate::flows::rollout`]: its journal facts and its order), resumable.

pub mod roll;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::engine::{Cluster, Emitter, FlowError, Journal, NodeDef, Outcome, PlanItem, StepId};
use crate::flows::drift::{survey_node, NodeDrift, Verdict};
use crate::flows::gates;
use crate::flows::rollout::{self, RolloutFacts};
use crate::gitops::LayerMap;
use crate::talos::{ApplyMode, CallPolicy};

/// The rollout's name: its journal is `<state>/day2/apply.json`.
pub const OP: &str = "apply";

/// The intent mark a reinstall leaves in the node's journaled steps before
/// its first call, so a resumed run takes the same path.
pub const REINSTALL: &str = "reinstall";

/// talosctl's apply modes, as the operator picks them for the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RolloutMode {
    /// Live changes in parallel, reboot changes rolled node by node.
    #[default]
    Auto,
    /// Only live changes; refused when a node needs a reboot.
    NoReboot,
    /// Stage everywhere; the change waits for each node's next reboot.
    Staged,
    /// Roll every changed node through a reboot.
    Reboot,
}

/// How `apply` runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub state_dir: PathBuf,
    pub policy: CallPolicy,
    pub mode: RolloutMode,
    /// Nodes to apply to (hostname or address); empty: every node.
    pub nodes: Vec<String>,
    /// Proceed although the quorum guard refuses (reasons still printed).
    pub force: bool,
    pub no_snapshot: bool,
    /// Pass a not-Ready layers gate with a journaled warning.
    pub ignore_gitops: bool,
    pub layers: LayerMap,
    pub layers_deadline: Duration,
    pub drain: gates::drain::DrainOptions,
    /// Workers rolled at once.
    pub max_parallel: usize,
    /// A rebooted node back, running and ready.
    pub node_deadline: Duration,
    /// etcd leadership, member healthy.
    pub etcd_deadline: Duration,
    /// Node Ready.
    pub kube_deadline: Duration,
}

impl ApplyOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            policy: CallPolicy::default(),
            mode: RolloutMode::Auto,
            nodes: Vec::new(),
            force: false,
            no_snapshot: false,
            ignore_gitops: false,
            layers: LayerMap::default(),
            layers_deadline: Duration::from_secs(10 * 60),
            drain: gates::drain::DrainOptions {
                timeout: Duration::from_secs(5 * 60),
                force: false,
            },
            max_parallel: 1,
            node_deadline: Duration::from_secs(20 * 60),
            etcd_deadline: Duration::from_secs(10 * 60),
            kube_deadline: Duration::from_secs(10 * 60),
        }
    }
}

/// What happens to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Skip,
    /// NO_REBOOT now (in parallel with the other live nodes).
    Live,
    /// STAGED only (`--mode staged`).
    Stage,
    /// Rolled through a reboot; `reinstall`: through an upgrade to its own
    /// installer image.
    Roll {
        reinstall: bool,
    },
}

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub node: NodeDef,
    pub drift: NodeDrift,
    pub action: Action,
    /// Why (verdict and fields), for plans and reports.
    pub why: String,
}

/// What `apply` did, per node.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub nodes: Vec<(String, String)>,
    pub backup: Option<String>,
    pub resumed: bool,
}

/// The action for a verdict under a mode; `Err` names why the mode refuses it.
pub fn action_for(verdict: &Verdict, mode: RolloutMode) -> Result<Action, String> {
    use RolloutMode as M;
    Ok(match (verdict, mode) {
        (Verdict::Unchanged, _) => Action::Skip,
        (Verdict::Refused { message }, _) => return Err(format!("Talos refuses the config: {message}")),
        (Verdict::StagedPending, M::Staged) => Action::Skip,
        (_, M::Staged) => Action::Stage,
        (Verdict::Live, M::Reboot) => Action::Roll { reinstall: false },
        (Verdict::Live, _) => Action::Live,
        (Verdict::Reboot { reasons }, M::NoReboot) => {
            return Err(format!(
                "needs a reboot ({}); --mode no-reboot refuses it: use --mode auto to roll it node by node, or --mode staged",
                reasons.join(", ")
            ))
        }
        (Verdict::StagedPending, M::NoReboot) => {
            return Err("a staged config waits for a reboot; --mode no-reboot cannot apply it".into())
        }
        (Verdict::Reboot { .. } | Verdict::StagedPending, _) => Action::Roll { reinstall: false },
        // Talos applies install fields live; they only act through a reinstall.
        (Verdict::Reinstall { .. }, M::NoReboot) => Action::Live,
        (Verdict::Reinstall { .. }, _) => Action::Roll { reinstall: true },
    })
}

/// The nodes `opts.nodes` names, or all, in definition order.
pub fn selected<'a>(cluster: &'a Cluster, names: &[String]) -> Result<Vec<&'a NodeDef>, FlowError> {
    if names.is_empty() {
        return Ok(cluster.def.nodes.iter().collect());
    }
    let picked: Vec<&NodeDef> = names
        .iter()
        .map(|n| cluster.node(n))
        .collect::<Result<_, _>>()?;
    Ok(cluster
        .def
        .nodes
        .iter()
        .filter(|n| picked.iter().any(|p| p.hostname == n.hostname))
        .collect())
}

/// The hardware gate on every node, before anything else is sent.
async fn hardware(cluster: &Cluster, nodes: &[&NodeDef], policy: CallPolicy) -> Vec<FlowError> {
    let checks = nodes.iter().map(|n| async move {
        let c = match cluster.mtls(n, policy) {
            Ok(c) => c,
            Err(e) => return vec![e],
        };
        let (disks, links) = match (c.disks().await, c.links().await) {
            (Ok(d), Ok(l)) => (d, l),
            (Err(e), _) | (_, Err(e)) => return vec![e.into()],
        };
        gates::hardware::check_node(n, &disks, &links)
            .err()
            .unwrap_or_default()
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Preflight: hardware gate, drift and verdict per node, the mode's decision.
/// Nothing is applied; every problem is returned at once.
pub async fn plan_nodes(
    cluster: &Cluster,
    opts: &ApplyOptions,
    journal: Option<&Journal<RolloutFacts>>,
) -> Result<Vec<NodePlan>, FlowError> {
    let nodes = selected(cluster, &opts.nodes)?;
    let problems = hardware(cluster, &nodes, opts.policy).await;
    if !problems.is_empty() {
        return Err(FlowError::Preflight(problems));
    }
    let drifts =
        futures::future::join_all(nodes.iter().map(|n| survey_node(cluster, n, opts.policy))).await;
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for (n, d) in nodes.iter().zip(drifts) {
        let drift = match d {
            Ok(d) => d,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        // A node this rollout started and did not finish is finished first,
        // whatever its drift says now (it may already run the config).
        let unfinished = journal
            .and_then(|j| j.facts.per_node.get(&n.hostname))
            .filter(|f| !f.done && (f.requested || f.boot_id_before.is_some()));
        let decided = match unfinished {
            Some(f) => Ok(Action::Roll {
                reinstall: f.steps.contains(REINSTALL),
            }),
            None => action_for(&drift.verdict, opts.mode),
        };
        match decided {
            Ok(action) => plans.push(NodePlan {
                node: (*n).clone(),
                why: why(&drift, unfinished.is_some()),
                drift,
                action,
            }),
            Err(reason) => problems.push(FlowError::Source(format!("{}: {reason}", n.label()))),
        }
    }
    if !problems.is_empty() {
        return Err(FlowError::Preflight(problems));
    }
    Ok(plans)
}

fn why(d: &NodeDrift, resuming: bool) -> String {
    let mut s = format!("{}: {}", d.verdict.name(), d.verdict.describe());
    if resuming {
        s.push_str(" (resuming an unfinished roll)");
    }
    s
}

/// The rolled nodes in the rollout's order ([`rollout::batches`]): control
/// planes one at a time in definition order, then workers in batches of
/// `max_parallel`.
pub fn roll_batches<'a>(
    cluster: &Cluster,
    plans: &'a [NodePlan],
    max_parallel: usize,
) -> Vec<Vec<&'a NodePlan>> {
    let rolled = |n: &NodeDef| {
        plans
            .iter()
            .find(|p| p.node.hostname == n.hostname && matches!(p.action, Action::Roll { .. }))
    };
    let cps: Vec<Vec<&NodeDef>> = rollout::batches(&cluster.def, 1)
        .into_iter()
        .filter(|b| b.iter().all(|n| n.control_plane))
        .collect();
    let workers: Vec<&NodePlan> = cluster
        .def
        .nodes
        .iter()
        .filter(|n| !n.control_plane)
        .filter_map(rolled)
        .collect();
    let mut out: Vec<Vec<&NodePlan>> = cps
        .iter()
        .filter_map(|b| rolled(b[0]).map(|p| vec![p]))
        .collect();
    out.extend(
        workers
            .chunks(max_parallel.max(1))
            .map(<[&NodePlan]>::to_vec),
    );
    out
}

/// Runs the rollout.
pub async fn apply(
    cluster: &Cluster,
    opts: &ApplyOptions,
    em: &Emitter,
) -> Result<ApplyReport, FlowError> {
    let journal = rollout::open_journal(&opts.state_dir, &cluster.def.cluster, OP, "")?;
    let existing = Some(journal.snapshot()).filter(|j| !j.facts.per_node.is_empty());
    let resumed = existing.is_some();
    // Progress, not a step record: `up` runs this rollout inside its own
    // `apply` step, and its journal keeps its own preflight.
    let plans = plan_nodes(cluster, opts, existing.as_ref()).await?;
    em.progress(
        StepId::Preflight,
        None,
        format!(
            "{} node(s) checked: hardware selectors match, Talos accepts every config",
            plans.len()
        ),
    );
    // Each node's finished steps go into the journal as they happen.
    let _attached = em.attach(journal.sink());
    let mut report = ApplyReport {
        resumed,
        ..Default::default()
    };

    // Live and staged nodes: in parallel, never a reboot.
    let quick: Vec<&NodePlan> = plans
        .iter()
        .filter(|p| matches!(p.action, Action::Live | Action::Stage))
        .collect();
    let mut late_rolls: Vec<NodePlan> = Vec::new();
    let results =
        futures::future::join_all(quick.iter().map(|p| apply_quick(cluster, opts, em, p))).await;
    let mut failures = Vec::new();
    for (p, r) in quick.iter().zip(results) {
        match r {
            Ok(QuickOutcome::Done(detail)) => report.nodes.push((p.node.hostname.clone(), detail)),
            Ok(QuickOutcome::NeedsReboot(reason)) => {
                em.warning(
                    StepId::Apply,
                    Some(&p.node.hostname),
                    format!("{}: Talos says the change needs a reboot after all; rolled instead ({reason})", p.node.label()),
                );
                let mut p = (*p).clone();
                p.action = Action::Roll { reinstall: false };
                late_rolls.push(p);
            }
            Err(e) => failures.push(crate::engine::NodeFailure {
                node: p.node.label(),
                error: Box::new(e),
            }),
        }
    }
    if !failures.is_empty() {
        return Err(FlowError::Nodes {
            step: "apply (live)".into(),
            failures,
        });
    }

    let mut all: Vec<NodePlan> = plans
        .into_iter()
        .filter(|p| matches!(p.action, Action::Roll { .. }))
        .collect();
    all.extend(late_rolls);
    // Keep definition order (control planes first happens in batches).
    all.sort_by_key(|p| {
        cluster
            .def
            .nodes
            .iter()
            .position(|n| n.hostname == p.node.hostname)
    });
    let kube = match cluster.kube().await {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => return Err(FlowError::Source(format!("kubeconfig: {e}"))),
        None => None,
    };
    for batch in roll_batches(cluster, &all, opts.max_parallel) {
        let runs = batch
            .iter()
            .map(|p| roll::roll_node(cluster, opts, em, &journal, kube.as_ref(), p));
        for (p, r) in batch.iter().zip(futures::future::join_all(runs).await) {
            let detail = r?;
            report.nodes.push((p.node.hostname.clone(), detail));
        }
    }
    for p in all.iter().filter(|p| p.action == Action::Skip) {
        report
            .nodes
            .push((p.node.hostname.clone(), "unchanged".into()));
    }
    report.backup = journal.get(|j| j.facts.backup.clone());
    journal.complete()?;
    Ok(report)
}

enum QuickOutcome {
    Done(String),
    NeedsReboot(String),
}

async fn apply_quick(
    cluster: &Cluster,
    opts: &ApplyOptions,
    em: &Emitter,
    p: &NodePlan,
) -> Result<QuickOutcome, FlowError> {
    let n = &p.node;
    let (mode, step_text) = match p.action {
        Action::Stage => (ApplyMode::Staged, "staged (applies at the next reboot)"),
        _ => (ApplyMode::NoReboot, "applied live (NO_REBOOT)"),
    };
    let t0 = Instant::now();
    em.started_with(
        StepId::Apply,
        Some(&n.hostname),
        format!("{}: {}", n.label(), p.why),
    );
    let c = cluster.mtls(n, opts.policy)?;
    match c
        .apply_configuration(cluster.config_of(n)?, mode, false)
        .await
    {
        Ok(_) => {
            let detail = match &p.drift.verdict {
                Verdict::Reinstall { fields } => format!(
                    "{step_text}; {} take(s) effect at the next upgrade (reinstall)",
                    fields.join(", ")
                ),
                _ => step_text.to_string(),
            };
            em.finished(
                StepId::Apply,
                Some(&n.hostname),
                Outcome::Done {
                    detail: detail.clone(),
                },
                t0,
            );
            Ok(QuickOutcome::Done(detail))
        }
        Err(e)
            if e.code() == Some(Code::InvalidArgument)
                && e.to_string().contains("can't be applied in immediate mode") =>
        {
            Ok(QuickOutcome::NeedsReboot("immediate mode refused".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// `plan apply`: the order and the gates each node goes through.
pub async fn plan(cluster: &Cluster, opts: &ApplyOptions) -> Result<Vec<PlanItem>, FlowError> {
    let path = rollout::journal_path(&opts.state_dir, OP);
    let existing = Journal::<RolloutFacts>::read(&path)
        .ok()
        .flatten()
        .filter(|j| j.completed_ms.is_none());
    let plans = plan_nodes(cluster, opts, existing.as_ref()).await?;
    let mut items = vec![PlanItem::new(
        StepId::Preflight,
        false,
        "hardware selectors matched on every node; Talos's dry run accepts every config",
    )];
    for p in plans
        .iter()
        .filter(|p| matches!(p.action, Action::Live | Action::Stage | Action::Skip))
    {
        let what = match p.action {
            Action::Live => "NO_REBOOT now, in parallel with the other live nodes",
            Action::Stage => "STAGED now (applies at the node's next reboot)",
            _ => "nothing to do",
        };
        items.push(PlanItem::on(
            StepId::Apply,
            &p.node,
            p.action != Action::Skip,
            format!("{what} — {}", p.why),
        ));
    }
    let rolled: Vec<NodePlan> = plans
        .iter()
        .filter(|p| matches!(p.action, Action::Roll { .. }))
        .cloned()
        .collect();
    let mut first_cp = true;
    for (i, batch) in roll_batches(cluster, &rolled, opts.max_parallel)
        .iter()
        .enumerate()
    {
        for p in batch {
            let reinstall = matches!(p.action, Action::Roll { reinstall: true });
            let snapshot = if p.node.control_plane && first_cp && !opts.no_snapshot {
                first_cp = false;
                "snapshot (once) → "
            } else {
                ""
            };
            let gates_line = roll::gate_line(&p.node, reinstall);
            items.push(PlanItem::on(
                StepId::Reboot,
                &p.node,
                true,
                format!("roll #{}: {snapshot}{gates_line} — {}", i + 1, p.why),
            ));
        }
    }
    Ok(items)
}
