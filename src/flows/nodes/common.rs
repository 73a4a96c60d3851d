//! The steps reimage and rejoin share: the quorum guard, the automatic
//! snapshot, and the way back — apply the config in maintenance, wait for the
//! node running with etcd joined, the Node registered (Ready if it was),
//! uncordon, verify.

use crate::engine::{FlowError, NodeProbe, Outcome, PlanItem, StepId};
use crate::flows::gates::quorum::{self as guard, GuardOp};
use crate::flows::gates::{drain, snapshot as snap};
use crate::kube::nodes;
use crate::talos::ApplyMode;

use super::state::{done, skipped, NodeOp};
use super::watch;

// ---- guard -----------------------------------------------------------------------------

/// Runs the guard for `gop`; a forced pass is journaled with its reasons.
/// `clean` and `past` word the outcome without and with reasons.
pub async fn guard(
    cx: &mut NodeOp<'_>,
    gop: GuardOp,
    clean: &str,
    past: &str,
) -> Result<Outcome, FlowError> {
    let report = guard::check(
        cx.cluster,
        cx.opts.policy,
        cx.opts.force,
        cx.em,
        cx.op,
        &cx.node,
        gop,
    )
    .await?;
    if report.forced && gop != GuardOp::Worker {
        cx.journal
            .update(|j| j.facts.forced = report.reasons.clone())?;
    }
    Ok(done(if report.reasons.is_empty() {
        clean.to_string()
    } else {
        format!("{past}: {}", report.reasons.join("; "))
    }))
}

// ---- snapshot --------------------------------------------------------------------------

/// The automatic snapshot before a control-plane operation.
pub async fn snapshot(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Snapshot;
    if !cx.node.control_plane {
        return Ok(skipped("worker: etcd is not touched"));
    }
    if !cx.opts.auto_snapshot {
        return Ok(skipped("automatic snapshot turned off"));
    }
    if let Some(b) = cx
        .journal
        .get(|j| j.facts.backup.clone())
        .filter(|_| cx.done(step))
    {
        return Ok(skipped(format!("taken earlier: {b}")));
    }
    let path = snap::path(cx.cluster, &cx.opts.state_dir);
    cx.started(step, snap::started_line(&path));
    let taken = snap::take(cx.cluster, cx.opts.policy, &path).await?;
    cx.journal
        .update(|j| j.facts.backup = Some(taken.path.clone()))?;
    Ok(done(taken.summary))
}

pub fn plan_snapshot(cx: &NodeOp<'_>, tail: &str) -> Vec<PlanItem> {
    cx.line(
        StepId::Snapshot,
        if cx.node.control_plane && cx.opts.auto_snapshot {
            snap::plan_line(&cx.opts.state_dir, tail)
        } else {
            "none (worker, or turned off)".into()
        },
    )
}

// ---- the way back ------------------------------------------------------------------------

/// Applies the config over the maintenance API (no client certificate).
pub async fn apply(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Apply;
    if cx.done(step) {
        return Ok(skipped("done earlier"));
    }
    let node = cx.node.clone();
    match watch::wait_reachable(cx, step).await? {
        NodeProbe::Maintenance => {
            cx.started(
                step,
                format!(
                    "ApplyConfiguration (insecure, maintenance) → {}",
                    node.label()
                ),
            );
            let config = cx.cluster.config_of(&node)?;
            cx.cluster
                .insecure(&node, cx.opts.policy)?
                .apply_configuration(config, ApplyMode::Auto, false)
                .await?;
            Ok(done("config applied; the node installs and boots into it"))
        }
        // Wiped earlier (journaled), configured with our CA now: only an
        // apply can have done that.
        NodeProbe::Ours => Ok(skipped("node already runs its config")),
        _ => Err(FlowError::NodeState {
            node: node.label(),
            detail: "serves a certificate from another cluster's CA".into(),
            next: "check the address in the definition".into(),
        }),
    }
}

pub fn plan_apply(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Apply,
        format!(
            "ApplyConfiguration (insecure, maintenance) → {}",
            cx.node.label()
        ),
    )
}

/// Running with etcd joined: the MachineStatus watch, then the member count
/// back through another control plane.
pub async fn wait_join(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    cx.started(
        StepId::WaitJoin,
        format!("watch MachineStatus → {}", cx.node.label()),
    );
    watch::wait_running(cx).await?;
    if cx.node.control_plane {
        let from = watch::wait_member_back(cx).await?;
        Ok(done(format!(
            "running; {} etcd members incl. {} (EtcdMemberList → {from})",
            cx.cluster.def.control_planes().count(),
            cx.node.hostname
        )))
    } else {
        Ok(done("running and ready"))
    }
}

pub fn plan_wait_join(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    let (other, cps) = (cx.other(), cx.cps());
    cx.line(
        StepId::WaitJoin,
        if cx.node.control_plane {
            format!(
                "watch MachineStatus → {} until running+ready; EtcdMemberList → {other} until {} members",
                cx.node.label(),
                cps.len()
            )
        } else {
            format!("watch MachineStatus → {} until running+ready", cx.node.label())
        },
    )
}

/// The Node registered again, Ready only if it was before (a cluster without
/// a CNI yet has no Ready nodes).
pub async fn node_ready(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = cx.kube().await? else {
        return Ok(skipped("no Kubernetes access"));
    };
    let ready = cx.journal.get(|j| j.facts.was_ready).unwrap_or(false);
    let host = cx.node.hostname.clone();
    cx.started(
        StepId::NodeReady,
        format!(
            "watch Node {host} until {}",
            if ready { "Ready" } else { "registered" }
        ),
    );
    nodes::wait_node(&k, &host, ready, cx.opts.kube_deadline)
        .await
        .map_err(|e| cx.kube_err(e))?;
    Ok(done(format!(
        "Node {host} {}",
        if ready { "Ready" } else { "registered" }
    )))
}

pub async fn uncordon(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = cx.kube().await? else {
        return Ok(skipped("no Kubernetes access"));
    };
    set_schedulable(cx, &k, true).await
}

/// PATCH the Node's `spec.unschedulable`; skipped when there is no Node.
pub async fn set_schedulable(
    cx: &NodeOp<'_>,
    k: &kube::Client,
    schedulable: bool,
) -> Result<Outcome, FlowError> {
    let host = &cx.node.hostname;
    let changed = if schedulable {
        drain::uncordon(k, &cx.node).await?
    } else {
        nodes::set_unschedulable(k, host, true)
            .await
            .map_err(|e| cx.kube_err(e))?
    };
    if changed {
        Ok(done(format!(
            "Node {host} {}",
            if schedulable {
                "schedulable"
            } else {
                "unschedulable"
            }
        )))
    } else {
        Ok(skipped("no Node object"))
    }
}

/// DELETE the node's Node object before it registers again; `deleted` and
/// `absent` word the outcome.
pub async fn delete_node(
    cx: &NodeOp<'_>,
    k: &kube::Client,
    deleted: &str,
    absent: &str,
) -> Result<Outcome, FlowError> {
    let host = &cx.node.hostname;
    if nodes::delete_node(k, host)
        .await
        .map_err(|e| cx.kube_err(e))?
    {
        Ok(done(format!("{deleted} {host} deleted")))
    } else {
        Ok(skipped(absent))
    }
}

pub fn plan_delete_node(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::DeleteNode,
        cx.kube_call(&format!("DELETE Node {}", cx.node.hostname)),
    )
}

/// `until`: what the watch waits for.
pub fn plan_node_ready(cx: &NodeOp<'_>, until: &str) -> Vec<PlanItem> {
    cx.line(
        StepId::NodeReady,
        cx.kube_call(&format!("watch Node {} until {until}", cx.node.hostname)),
    )
}

/// `list`: where the member list is read.
pub fn plan_verify(cx: &NodeOp<'_>, list: &str) -> Vec<PlanItem> {
    let cps = cx.cps();
    cx.check_line(
        StepId::Verify,
        format!(
            "EtcdStatus → {}; {list}{} members, one leader",
            cps.join(", "),
            cps.len()
        ),
    )
}

pub fn plan_uncordon(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Uncordon,
        cx.kube_call(&format!(
            "PATCH Node {} spec.unschedulable=null",
            cx.node.hostname
        )),
    )
}

/// Verify with a fresh etcd survey.
pub async fn verify(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let view = guard::survey(cx.cluster, cx.opts.policy).await;
    let want = cx.cluster.def.control_planes().count();
    let reasons = guard::evaluate(cx.cluster, &view, &cx.node, GuardOp::Worker);
    if view.members.len() != want || !reasons.is_empty() {
        let mut why = reasons;
        if view.members.len() != want {
            why.push(format!(
                "{} etcd member(s), {want} control plane(s) in the definition",
                view.members.len()
            ));
        }
        return Err(FlowError::Guard {
            op: cx.op,
            node: cx.node.label(),
            reasons: why,
            table: guard::member_table(cx.cluster, &view),
        });
    }
    Ok(done(format!(
        "{want} etcd member(s), all healthy, one leader"
    )))
}
