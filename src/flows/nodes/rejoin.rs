//! `node rejoin NAME`: bring back a node that died, or whose disk was replaced
//! and now boots into maintenance — or add a node new to the definition.
//!
//! guard (the node is not expected to answer) → snapshot (control plane) →
//! remove its stale etcd member(s) by ID through a healthy control plane and
//! confirm → delete the old Node object → apply the config (maintenance) → wait
//! for running with etcd joined and the member count back → Node registered/Ready
//! → uncordon → verify. Journaled and resumable like reimage.

use std::time::Instant;

use crate::engine::{
    Announce, Cluster, Emitter, Flow, FlowError, NodeProbe, Outcome, PlanItem, Scope, StepId,
};
use crate::flows::gates::GuardOp;
use crate::kube::nodes;

use super::common;
use super::state::{done, skipped, step, NodeOp, NodeOpOptions, NodeOpReport};
use super::watch;

const OP: &str = "rejoin";

/// The steps of a rejoin, in order (each journaled, as `plan node rejoin` lists them).
pub fn steps<'a>() -> Flow<NodeOp<'a>> {
    Flow {
        steps: vec![
            step!(StepId::Guard, guard, plan_guard),
            step!(StepId::Snapshot, common::snapshot, |cx: &NodeOp<'_>| {
                common::plan_snapshot(cx, "")
            }),
            step!(StepId::RemoveMember, remove_member, plan_remove_member),
            step!(StepId::DeleteNode, delete_node, common::plan_delete_node),
            step!(StepId::Apply, common::apply, common::plan_apply),
            step!(StepId::WaitJoin, common::wait_join, common::plan_wait_join),
            step!(StepId::NodeReady, common::node_ready, |cx| {
                common::plan_node_ready(cx, "registered/Ready")
            }),
            step!(StepId::Uncordon, common::uncordon, common::plan_uncordon),
            step!(StepId::Verify, common::verify, |cx| common::plan_verify(
                cx, ""
            )),
        ],
        announce: Announce::Outcomes,
    }
}

/// Runs (or resumes) the rejoin of `name`.
pub async fn rejoin(
    cluster: &Cluster,
    name: &str,
    opts: &NodeOpOptions,
    em: &Emitter,
) -> Result<NodeOpReport, FlowError> {
    let t0 = Instant::now();
    let mut cx = NodeOp::open(cluster, name, opts, em, OP)?;
    let resumed = cx.announce_resume();
    refuse_live_node(&mut cx).await?;
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

/// A node that runs its config with our CA is not dead: reimage is the verb
/// for it. After an earlier run got past the member removal, configured means
/// the apply happened.
async fn refuse_live_node(cx: &mut NodeOp<'_>) -> Result<(), FlowError> {
    let mode = cx.probe().await;
    if mode == NodeProbe::Ours && !cx.done(StepId::RemoveMember) {
        return Err(FlowError::NodeState {
            node: cx.node.label(),
            detail: "runs its config with this cluster's CA: it is not dead or wiped".into(),
            next: format!(
                "use `node reimage {}` to wipe and rejoin a live node",
                cx.node.hostname
            ),
        });
    }
    if mode == NodeProbe::Foreign {
        return Err(FlowError::NodeState {
            node: cx.node.label(),
            detail: "serves a certificate from another cluster's CA".into(),
            next: "reset it to maintenance (or wipe its disk) first, or check the address".into(),
        });
    }
    cx.mode = Some(mode);
    Ok(())
}

/// `plan node rejoin NAME`: the steps and the node receiving each call.
pub async fn plan(
    cluster: &Cluster,
    name: &str,
    opts: &NodeOpOptions,
) -> Result<Vec<PlanItem>, FlowError> {
    let em = Emitter::new();
    let mut cx = NodeOp::for_plan(cluster, name, opts, &em, OP)?;
    Ok(steps().plan(&mut cx).await)
}

// ---- the steps -------------------------------------------------------------------------

async fn guard(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let gop = if cx.node.control_plane {
        GuardOp::Replace
    } else {
        GuardOp::Worker
    };
    common::guard(
        cx,
        gop,
        "etcd healthy without the node, every member matched, quorum kept",
        "proceeding past",
    )
    .await
}

fn plan_guard(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    cx.check_line(
        StepId::Guard,
        format!(
            "TLS handshake → {} (must be in maintenance or down); EtcdStatus → {}; quorum must hold without {}",
            cx.node.label(),
            cx.cps().join(", "),
            cx.node.hostname
        ),
    )
}

/// Stale members: those of this node (by name or peer address), removed by ID
/// through another control plane, then confirmed gone.
async fn remove_member(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::RemoveMember;
    if !cx.node.control_plane {
        return Ok(skipped("worker"));
    }
    if cx.done(step) {
        return Ok(skipped("done earlier"));
    }
    let node = cx.node.clone();
    let (from, members) = watch::members_via_other(cx).await?;
    let stale: Vec<(u64, String)> = watch::members_of(cx, &node, &members)
        .iter()
        .map(|m| (m.id, m.peer_urls.join(",")))
        .collect();
    if stale.is_empty() {
        return Ok(skipped(format!(
            "no member of {} (list from {from})",
            node.hostname
        )));
    }
    let mut removed = cx.journal.get(|j| j.facts.removed.clone());
    let via = cx.cluster.other_control_planes(&node.hostname);
    for (id, peers) in &stale {
        cx.started(
            step,
            format!("EtcdRemoveMemberByID {id:016x} ({peers}) → {from}"),
        );
        let Some(target) = via
            .iter()
            .find(|n| n.hostname == from)
            .or(via.first())
            .copied()
        else {
            return Err(FlowError::NoHealthyControlPlane {
                what: "EtcdRemoveMemberByID".into(),
                tried: vec![],
            });
        };
        match cx
            .cluster
            .mtls(target, cx.opts.policy)?
            .etcd_remove_member(*id)
            .await
        {
            Ok(()) => {}
            // Already gone (a lost reply on an earlier attempt).
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        removed.push((format!("{id:016x}"), peers.clone()));
    }
    cx.journal.update(|j| j.facts.removed = removed.clone())?;
    let ids: Vec<u64> = stale.iter().map(|(i, _)| *i).collect();
    let confirmed = watch::wait_members(cx, step, "stale member gone", |m| {
        !m.iter().any(|x| ids.contains(&x.id))
    })
    .await?;
    Ok(done(format!(
        "removed {} via {from}; confirmed by EtcdMemberList → {confirmed}",
        removed
            .iter()
            .map(|(i, p)| format!("{i} ({p})"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn plan_remove_member(cx: &NodeOp<'_>) -> Vec<PlanItem> {
    let other = cx.other();
    cx.line(
        StepId::RemoveMember,
        if cx.node.control_plane {
            format!("EtcdMemberList → {other}; EtcdRemoveMemberByID <stale id of {}> → {other}; confirm with EtcdMemberList → {other}", cx.node.hostname)
        } else {
            "none (worker)".into()
        },
    )
}

/// The old Node object goes before the node registers again. A dead node's
/// Node is NotReady; whether it should come back Ready follows the other
/// nodes (Ready once the CNI runs).
async fn delete_node(cx: &mut NodeOp<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = cx.kube().await? else {
        return Ok(skipped("no Kubernetes access"));
    };
    if cx.done(StepId::DeleteNode) || cx.done(StepId::Apply) {
        return Ok(skipped("done earlier"));
    }
    let host = cx.node.hostname.clone();
    let st = nodes::node_state(&k, &host)
        .await
        .map_err(|e| cx.kube_err(e))?;
    if cx.journal.get(|j| j.facts.was_ready.is_none()) {
        let others_ready = nodes::any_ready(&k).await;
        cx.journal
            .update(|j| j.facts.was_ready = Some(st.ready || others_ready))?;
    }
    common::delete_node(cx, &k, "old Node", "no Node object (new node)").await
}
