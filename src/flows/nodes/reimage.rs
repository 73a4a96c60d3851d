//! `node reimage NAME`: wipe a live node and bring it back with quorum kept.
//!
//! guard → snapshot (control plane) → cordon → drain → leave etcd and confirm the
//! member is gone through another control plane → Reset (STATE + EPHEMERAL, or
//! the whole disk) into maintenance → delete the Node → apply the config
//! (maintenance, insecure) → wait for running with etcd joined and the member
//! count back → Node registered/Ready → uncordon → verify.
//!
//! Every step is journaled and reads the real state first, so a run killed at any
//! point and started again converges.

use std::time::Instant;

use crate::engine::{
    Announce, Cluster, Emitter, Flow, FlowError, NodeDef, NodeProbe, Outcome, PlanItem, Scope,
    StepId,
};
use crate::flows::gates::{drain, GuardOp};
use crate::talos::ResetOptions;

use super::common;
use super::state::{done, skipped, step, NodeOp, NodeOpOptions, NodeOpReport};
use super::watch;

const OP: &str = "reimage";

/// The steps of a reimage, in order.
pub fn steps<'a>() -> Flow<NodeOp<'a>> {
    Flow {
        steps: vec![
            step!(StepId::Guard, guard, plan_guard),
            step!(StepId::Snapshot, common::snapshot, |cx: &NodeOp<'_>| {
                common::plan_snapshot(cx, " (0600 + .json sidecar)")
            }),
            step!(StepId::Cordon, cordon, plan_cordon),
            step!(StepId::Drain, drain, plan_drain),
            step!(StepId::LeaveEtcd, leave_etcd, plan_leave_etcd),
            step!(StepId::Reset, reset, plan_reset),
            step!(StepId::DeleteNode, delete_node, common::plan_delete_node),
            step!(StepId::Apply, common::apply, common::plan_apply),
            step!(StepId::WaitJoin, common::wait_join, common::plan_wait_join),
            step!(StepId::NodeReady, common::node_ready, |cx| {
                common::plan_node_ready(cx, "registered (Ready if it was)")
            }),
            step!(StepId::Uncordon, common::uncordon, common::plan_uncordon),
            step!(StepId::Verify, common::verify, |cx| {
                common::plan_verify(cx, "EtcdMemberList → first with a leader: ")
            }),
        ],
        announce: Announce::Outcomes,
    }
}

/// Runs (or resumes) the reimage of `name`.
pub async fn reimage(
    cluster: &Cluster,
    name: &str,
    opts: &NodeOpOptions,
    em: &Emitter,
) -> Result<NodeOpReport, FlowError> {
    let t0 = Instant::now();
    refuse_api_on_node(cluster, cluster.node(name)?, opts)?;
    let mut cx = NodeOp::open(cluster, name, opts, em, OP)?;
    let resumed = cx.announce_resume();
    let _journal = em.attach(cx.journal.sink());
    let host = cx.node.hostname.clone();
    let scope = Scope {
        em,
        node: Some(&host),
        until: None,
    };
    let outcomes = steps().run(&mut cx, scope).await?;
    cx.journal.complete()?;
    Ok(cx.report(outcomes, resumed, t0.elapsed()))
}

/// `plan node reimage NAME`: the steps, each naming the node that receives each call.
pub async fn plan(
    cluster: &Cluster,
    name: &str,
    opts: &NodeOpOptions,
) -> Result<Vec<PlanItem>, FlowError> {
    let em = Emitter::new();
    let mut cx = NodeOp::for_plan(cluster, name, opts, &em, OP)?;
    Ok(steps().plan(&mut cx).await)
}

/// Before anything is touched: the Kubernetes steps after the reset (delete
/// the Node, watch it come back) need an API that is not on the wiped node.
fn refuse_api_on_node(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &NodeOpOptions,
) -> Result<(), FlowError> {
    if opts.skip_kubernetes {
        return Ok(());
    }
    match cluster.api_server_host() {
        Some(host) if host == node.host() => Err(FlowError::ApiOnNode {
            node: node.label(),
            server: host,
        }),
        _ => Ok(()),
    }
}

// ---- the steps -------------------------------------------------------------------------

/// Once the member left, the node is expected not to answer etcd. The journal
/// says so when the leave was recorded; the guard itself also treats a member
/// already missing from the list as left (a kill between the call and the journal).
async fn guard(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let gop = match (cx.node.control_plane, cx.done(StepId::LeaveEtcd)) {
        (false, _) => GuardOp::Worker,
        (true, false) => GuardOp::Remove,
        (true, true) => GuardOp::Replace,
    };
    common::guard(
        cx,
        gop,
        "etcd healthy, every member matched, quorum kept",
        "forced past",
    )
    .await
}

fn plan_guard(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.check_line(
        StepId::Guard,
        format!(
            "EtcdStatus → each control plane directly: {}; EtcdMemberList → first with a leader; refuse unless quorum survives without {}",
            cx.cps().join(", "),
            cx.node.hostname
        ),
    )
}

/// The Kubernetes client and the node's mode, read once before the first
/// Kubernetes step; a node serving another cluster's CA stops the reimage.
async fn prepare(cx: &mut NodeOp<'_>) -> Result<(Option<kube::Client>, bool), FlowError> {
    let kube = cx.kube().await?;
    if cx.mode.is_none() {
        let mode = cx.probe().await;
        if mode == NodeProbe::Foreign {
            return Err(FlowError::NodeState {
                node: cx.node.label(),
                detail: "serves a certificate from another cluster's CA".into(),
                next: "check the address in the definition; this node belongs to another cluster"
                    .into(),
            });
        }
        cx.mode = Some(mode);
    }
    let wiped = cx.done(StepId::Reset) || cx.mode == Some(NodeProbe::Maintenance);
    Ok((kube, wiped))
}

/// The Kubernetes client for a step on the node while it still runs its
/// workloads, or why the step has nothing to do.
async fn on_live_node(cx: &mut NodeOp<'_>) -> Result<Result<kube::Client, Outcome>, FlowError> {
    let (kube, wiped) = prepare(cx).await?;
    Ok(match kube {
        None => Err(skipped("no Kubernetes access")),
        Some(_) if wiped => Err(skipped("node already wiped")),
        Some(k) => Ok(k),
    })
}

/// Cordon, while the node still runs its workloads.
async fn cordon(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let k = match on_live_node(cx).await? {
        Ok(k) => k,
        Err(skip) => return Ok(skip),
    };
    let c = drain::cordon(&k, &cx.node).await?;
    if cx.journal.get(|j| j.facts.was_ready.is_none()) {
        cx.journal
            .update(|j| j.facts.was_ready = Some(c.was_ready))?;
    }
    Ok(match (c.exists, c.by_us) {
        (false, _) => skipped("no Node object"),
        (true, false) => skipped("already unschedulable"),
        (true, true) => done(format!("Node {} unschedulable", cx.node.hostname)),
    })
}

fn plan_cordon(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Cordon,
        cx.kube_call(&format!(
            "PATCH Node {} spec.unschedulable=true",
            cx.node.hostname
        )),
    )
}

async fn drain(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let k = match on_live_node(cx).await? {
        Ok(k) => k,
        Err(skip) => return Ok(skip),
    };
    let host = cx.node.hostname.clone();
    cx.started(
        StepId::Drain,
        format!("evicting pods from {host} (Eviction API)"),
    );
    let opts = drain::DrainOptions {
        timeout: cx.opts.kube_deadline,
        force: false,
    };
    // Evictions need a client that hands 429s back (the budget's answer).
    let k = match cx.cluster.kube_for_drains().await {
        Some(Ok(k)) => k,
        Some(Err(e)) => return Err(cx.kube_err(e)),
        None => k,
    };
    let d = drain::drain(&k, &cx.node, opts).await?;
    Ok(done(drain::summary(&d)))
}

fn plan_drain(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Drain,
        cx.kube_call(&format!(
            "POST pods/eviction for every pod on {} (DaemonSet and mirror pods stay)",
            cx.node.hostname
        )),
    )
}

/// Leave etcd (control planes), confirmed through another control plane.
async fn leave_etcd(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::LeaveEtcd;
    let (_, wiped) = prepare(cx).await?;
    if !cx.node.control_plane {
        return Ok(skipped("worker"));
    }
    if cx.done(step) || wiped {
        return Ok(skipped("member already gone"));
    }
    let node = cx.node.clone();
    let (from, members) = watch::members_via_other(cx).await?;
    let mine = watch::members_of(cx, &node, &members);
    if mine.is_empty() {
        return Ok(skipped(format!(
            "no member of {} in the list from {from}",
            node.hostname
        )));
    }
    let ids: Vec<u64> = mine.iter().map(|m| m.id).collect();
    cx.started(step, format!("EtcdLeaveCluster → {}", node.label()));
    cx.cluster
        .mtls(&node, cx.opts.policy)?
        .etcd_leave_cluster()
        .await?;
    let from = watch::wait_members(cx, step, "member gone", |m| {
        !m.iter().any(|x| ids.contains(&x.id))
    })
    .await?;
    Ok(done(format!(
        "member {} left; confirmed by EtcdMemberList → {from}",
        ids.iter()
            .map(|i| format!("{i:016x}"))
            .collect::<Vec<_>>()
            .join(",")
    )))
}

fn plan_leave_etcd(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::LeaveEtcd,
        if cx.node.control_plane {
            format!(
                "EtcdLeaveCluster → {}; confirm with EtcdMemberList → {}",
                cx.node.label(),
                cx.other()
            )
        } else {
            "none (worker)".into()
        },
    )
}

fn wipe_words(opts: &NodeOpOptions) -> &'static str {
    if opts.wipe_all {
        "whole system disk"
    } else {
        "STATE,EPHEMERAL"
    }
}

/// Reset into maintenance, verified by handshake.
async fn reset(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Reset;
    if cx.done(step) {
        return Ok(skipped("done earlier"));
    }
    if cx.mode == Some(NodeProbe::Maintenance) {
        return Ok(skipped("node already in maintenance mode"));
    }
    let node = cx.node.clone();
    if !cx.done(StepId::ResetRequested) {
        let opts_reset = ResetOptions {
            graceful: false,
            reboot: true,
            wipe_labels: if cx.opts.wipe_all {
                vec![]
            } else {
                vec!["STATE".into(), "EPHEMERAL".into()]
            },
        };
        cx.started(
            step,
            format!(
                "Reset(graceful=false, reboot=true, wipe {}) → {}",
                wipe_words(cx.opts),
                node.label()
            ),
        );
        cx.cluster
            .mtls(&node, cx.opts.policy)?
            .reset(&opts_reset)
            .await?;
        cx.journal.mark(StepId::ResetRequested)?;
    }
    watch::wait_maintenance(cx).await?;
    Ok(done(format!(
        "{} answers in maintenance mode",
        node.label()
    )))
}

fn plan_reset(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Reset,
        format!(
            "Reset(graceful=false, reboot=true, wipe {}) → {}; wait for maintenance (TLS handshake → {})",
            wipe_words(cx.opts),
            cx.node.label(),
            cx.node.address
        ),
    )
}

/// The old Node object goes before the node registers again.
async fn delete_node(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = cx.kube().await? else {
        return Ok(skipped("no Kubernetes access"));
    };
    if cx.done(StepId::Apply) || cx.done(StepId::DeleteNode) {
        return Ok(skipped("done earlier"));
    }
    common::delete_node(cx, &k, "Node", "no Node object").await
}
