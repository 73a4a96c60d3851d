//! The way back: new boot ID, version (rollback), services, etcd, Node, uncordon, layers.

use crate::engine::{FlowError, Outcome, PlanItem, StepId};
use crate::flows::gates::{back, drain};
use crate::flows::nodes::state::{done, skipped};

use super::before::{layers_gate, plan_layers, short};

use super::super::same_version;
use super::super::NodeRun;

// ---- after -------------------------------------------------------------------------------

pub(super) async fn wait_back(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let before = cx.facts().boot_id_before.unwrap_or_default();
    cx.started(
        StepId::WaitBack,
        format!(
            "boot ID → {} until it differs from {}, running and ready",
            cx.node.label(),
            short(&before)
        ),
    );
    let back = back::wait_rebooted(
        cx.r.cluster,
        &cx.node,
        cx.r.opts.policy,
        &before,
        cx.r.opts.node_deadline,
        cx.r.em,
        StepId::WaitBack,
    )
    .await?;
    cx.update(|n| {
        for id in &back.boot_ids {
            if !n.boot_ids.contains(id) {
                n.boot_ids.push(id.clone());
            }
        }
    })?;
    Ok(done(format!(
        "back: boot {}",
        back.boot_ids
            .iter()
            .map(|s| short(s))
            .collect::<Vec<_>>()
            .join(" → ")
    )))
}

pub(super) fn plan_wait_back(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::WaitBack,
        false,
        format!(
            "boot ID, MachineStatus → {} until a new boot ID, running and ready",
            cx.node.label()
        ),
    )
}

pub(super) async fn verify_version(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let running = back::running_version(cx.r.cluster, &cx.node, cx.r.opts.policy).await?;
    let f = cx.facts();
    let from = f.version_before.clone().unwrap_or_default();
    let target = cx.target();
    if same_version(&running, &target) {
        return Ok(done(format!("runs {running}")));
    }
    let events = if same_version(&running, &from) {
        back::recent_events(cx.r.cluster, &cx.node, cx.r.opts.policy).await
    } else {
        vec![]
    };
    let r = back::verify_version(&cx.node, &from, &target, &running, &f.boot_ids, events);
    cx.release().await;
    // The node runs, on another version: the next run starts it afresh (its
    // boot ID and version from then), rather than waiting on this attempt.
    cx.update(|n| *n = Default::default())?;
    r.map(|_| done(format!("runs {running}")))
}

pub(super) fn plan_verify_version(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::VerifyVersion,
        false,
        format!(
            "Version → {}: must be {} (its old version = rolled back: stop)",
            cx.node.label(),
            cx.target()
        ),
    )
}

pub(super) async fn services(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let ok = back::services_healthy(
        cx.r.cluster,
        &cx.node,
        cx.r.opts.policy,
        cx.r.opts.kube_deadline,
    )
    .await?;
    Ok(done(format!("{} running and healthy", ok.join(", "))))
}

pub(super) fn plan_services(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Services,
        false,
        format!(
            "ServiceList → {}: {} healthy",
            cx.node.label(),
            back::expected_services(&cx.node).join(", ")
        ),
    )
}

pub(super) async fn etcd_member(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if !cx.node.control_plane {
        return Ok(skipped("worker"));
    }
    let from = back::etcd_healthy(
        cx.r.cluster,
        &cx.node,
        cx.r.opts.policy,
        cx.r.opts.etcd_deadline,
        &cx.r.excused,
    )
    .await?;
    Ok(done(format!(
        "{} etcd members, healthy, one leader (member list from {from})",
        cx.r.cluster.def.control_planes().count()
    )))
}

pub(super) fn plan_etcd_member(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Verify,
        false,
        if cx.node.control_plane {
            "EtcdStatus → every control plane; EtcdMemberList: every member back and healthy"
        } else {
            "none (worker)"
        },
    )
}

pub(super) async fn node_ready(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = &cx.r.kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    if cx.facts().was_ready == Some(false) {
        return Ok(skipped("the Node was not Ready before the upgrade"));
    }
    back::node_ready(k, &cx.node, None, cx.r.opts.kube_deadline).await?;
    Ok(done(format!("Node {} Ready", cx.host())))
}

pub(super) fn plan_node_ready(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::NodeReady,
        false,
        cx.kube_call(&format!("watch Node {} until Ready", cx.host())),
    )
}

pub(super) async fn uncordon(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = &cx.r.kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    let f = cx.facts();
    if !f.cordoned_by_us() {
        return Ok(skipped(if f.was_unschedulable == Some(true) {
            "cordoned before the upgrade: left cordoned"
        } else {
            "not cordoned by this upgrade"
        }));
    }
    if !drain::uncordon(k, &cx.node).await? {
        return Ok(skipped("no Node object"));
    }
    Ok(done(format!("Node {} schedulable", cx.host())))
}

pub(super) fn plan_uncordon(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Uncordon,
        true,
        cx.kube_call(&format!(
            "PATCH Node {} spec.unschedulable=null (only if this upgrade cordoned it)",
            cx.host()
        )),
    )
}

pub(super) async fn layers_after(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let when = format!("after {}", cx.host());
    layers_gate(cx, when).await
}

pub(super) fn plan_layers_after(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    plan_layers(cx, "after")
}
