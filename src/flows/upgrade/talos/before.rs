//! The steps before the upgrade call: gates, snapshot, install image, leader, cordon, drain.

use crate::engine::{FlowError, Outcome, PlanItem, StepId};
use crate::flows::gates::{back, drain, layers, leader, quorum, snapshot, GuardOp};
use crate::flows::nodes::state::{done, skipped};
use crate::talos::ApplyMode;

use super::super::NodeRun;

// ---- before ------------------------------------------------------------------------------

/// Records what the node ran and its boot ID (once), then the quorum gate:
/// a control plane must be able to reboot without etcd losing quorum.
pub(super) async fn guard(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let f = cx.facts();
    if f.requested {
        return Ok(skipped(
            "the upgrade was requested earlier: the node may be rebooting",
        ));
    }
    if let Some(before) = &f.boot_id_before {
        // A run killed right after a call (the reboot, the legacy upgrade) may
        // have rebooted the node without journaling it: wait for it to answer,
        // then a new boot ID means the upgrade is under way.
        if settled_boot_id(cx).await? != *before {
            cx.update(|n| n.requested = true)?;
            return Ok(skipped(
                "the node rebooted since an earlier run reached it: waiting for it, not asking again",
            ));
        }
    }
    if f.version_before.is_none() || f.boot_id_before.is_none() {
        let c = cx.mtls()?;
        let version = c.version().await?.tag;
        let (boot, _) =
            back::boot_id(cx.r.cluster, &cx.node, cx.r.opts.policy, cx.r.kube.as_ref()).await?;
        cx.update(|n| {
            n.version_before.get_or_insert(version);
            n.boot_id_before.get_or_insert(boot);
        })?;
    }
    let op = if cx.node.control_plane {
        GuardOp::Reboot
    } else {
        GuardOp::Worker
    };
    let checked = quorum::check(
        cx.r.cluster,
        cx.r.opts.policy,
        cx.r.opts.force,
        cx.r.em,
        "upgrade",
        &cx.node,
        op,
    )
    .await;
    let report = match (checked, &f.boot_id_before) {
        (Ok(r), _) => r,
        // Touched by an earlier run: a Reboot it sent may take the node down
        // only now, between the boot-ID read above and the guard's survey (on
        // metal as in the lab, Reboot answers before the node goes down). If
        // the node comes back on a new boot ID, that was the reboot: go on
        // waiting for it instead of refusing.
        (Err(refusal), Some(before)) => {
            if settled_boot_id(cx).await? != *before {
                cx.update(|n| n.requested = true)?;
                return Ok(skipped(
                    "the node went down for a reboot an earlier run asked for: waiting for it, not asking again",
                ));
            }
            return Err(refusal);
        }
        (Err(refusal), None) => return Err(refusal),
    };
    if report.forced && op != GuardOp::Worker {
        let host = cx.host().to_string();
        cx.r.journal.update(|j| {
            j.facts
                .forced
                .extend(report.reasons.iter().map(|r| format!("{host}: {r}")))
        })?;
    }
    let f = cx.facts();
    let before = format!(
        "runs {}, boot {}",
        f.version_before.unwrap_or_default(),
        f.boot_id_before.as_deref().map(short).unwrap_or("?")
    );
    Ok(done(
        if report.reasons.is_empty() && op == GuardOp::Worker {
            format!("{before}; etcd healthy (a worker: membership unchanged)")
        } else if report.reasons.is_empty() {
            format!("{before}; etcd healthy, quorum survives the reboot")
        } else {
            format!("{before}; FORCED past: {}", report.reasons.join("; "))
        },
    ))
}

/// The node's boot ID once it answers (within the node deadline).
pub(super) async fn settled_boot_id(cx: &NodeRun<'_>) -> Result<String, FlowError> {
    let mut w = crate::engine::Wait::new(
        cx.node.label(),
        "answering with a boot ID",
        cx.r.opts.node_deadline,
    )
    .backoff(crate::engine::Backoff::new(
        std::time::Duration::from_millis(25),
        crate::talos::wait::POLL_FALLBACK,
    ));
    loop {
        match back::boot_id(cx.r.cluster, &cx.node, cx.r.opts.policy.once(), None).await {
            Ok((id, _)) => return Ok(id),
            Err(e) => w.seen(e.to_string()),
        }
        if w.news("away") {
            cx.r.em.waiting(
                StepId::Guard,
                Some(cx.host()),
                format!("{} to answer again: {}", cx.node.label(), w.last()),
            );
        }
        w.pause().await?;
    }
}

pub(super) fn plan_guard(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    let cps: Vec<String> =
        cx.r.cluster
            .def
            .control_planes()
            .map(|n| n.label())
            .collect();
    cx.line(
        StepId::Guard,
        false,
        format!(
            "Version, boot ID → {}; EtcdStatus → {}; {}",
            cx.node.label(),
            cps.join(", "),
            if cx.node.control_plane {
                format!("refuse unless quorum survives {} rebooting", cx.host())
            } else {
                "etcd healthy (worker: membership unchanged)".into()
            }
        ),
    )
}

pub(super) async fn layers_gate(cx: &NodeRun<'_>, when: String) -> Result<Outcome, FlowError> {
    let Some(k) = &cx.r.kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    let gate = cx.r.opts.layers_gate();
    let l = layers::check(k, &gate, cx.r.em, StepId::Layers, Some(cx.host()), &when).await?;
    if let layers::Layers::Ignored(b) = &l {
        let line = format!("{when}: {}", b.join("; "));
        cx.r.journal.update(|j| j.facts.ignored_gitops.push(line))?;
    }
    Ok(done(l.summary()))
}

pub(super) async fn layers_before(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let when = format!("before {}", cx.host());
    layers_gate(cx, when).await
}

pub(super) fn plan_layers_before(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    plan_layers(cx, "before")
}

pub(super) fn plan_layers(cx: &NodeRun<'_>, when: &str) -> Vec<PlanItem> {
    vec![PlanItem::on(
        StepId::Layers,
        &cx.node,
        false,
        cx.kube_call(&format!(
            "LIST Kustomizations, HelmReleases {when} {}: every layer Ready{}",
            cx.host(),
            if cx.r.opts.ignore_gitops {
                " (--ignore-gitops: warn only)"
            } else {
                ""
            }
        )),
    )]
}

pub(super) async fn take_snapshot(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Snapshot;
    if !cx.r.opts.auto_snapshot {
        return Ok(skipped("automatic snapshot turned off"));
    }
    if let Some(b) = cx.r.journal.get(|j| j.facts.backup.clone()) {
        return Ok(skipped(format!("taken earlier in this upgrade: {b}")));
    }
    if cx.r.first_cp.as_deref() != Some(cx.host()) {
        return Ok(skipped("only before the first control plane"));
    }
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let path = snapshot::path(cx.r.cluster, &cx.r.opts.state_dir);
    cx.started(step, snapshot::started_line(&path));
    let taken = snapshot::take(cx.r.cluster, cx.r.opts.policy, &path).await?;
    cx.r.journal
        .update(|j| j.facts.backup = Some(taken.path.clone()))?;
    Ok(done(taken.summary))
}

pub(super) fn plan_snapshot(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    let first = cx.r.first_cp.as_deref() == Some(cx.host());
    cx.line(
        StepId::Snapshot,
        first && cx.r.opts.auto_snapshot,
        if first && cx.r.opts.auto_snapshot {
            snapshot::plan_line(&cx.r.opts.state_dir, "")
        } else {
            "none (only before the first control plane, once)".into()
        },
    )
}

/// The machine config's install image set to the target, live (NO_REBOOT:
/// `.machine.install` applies immediately on every version). No dry run:
/// NO_REBOOT itself refuses, changing nothing, what would need a reboot.
pub(super) async fn install_image(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::InstallImage;
    let f = cx.facts();
    if f.requested || f.installed {
        return Ok(skipped("the upgrade went further earlier"));
    }
    let config = cx.r.cluster.config_of(&cx.node)?;
    let config = super::super::preflight::with_install_image(config, &cx.image).map_err(|e| {
        FlowError::NodeState {
            node: cx.node.label(),
            detail: format!("cannot set the install image in its rendered config: {e}"),
            next: "check the definition renders (`gen config`)".into(),
        }
    })?;
    cx.started(
        step,
        format!(
            "ApplyConfiguration (NO_REBOOT, machine.install.image={}) → {}",
            cx.image,
            cx.node.label()
        ),
    );
    let out = cx
        .mtls()?
        .apply_configuration(&config, ApplyMode::NoReboot, false)
        .await?;
    Ok(done(format!(
        "install image {} ({})",
        cx.image,
        out.mode_details.lines().next().unwrap_or("applied")
    )))
}

pub(super) fn plan_install_image(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::InstallImage,
        true,
        format!(
            "ApplyConfiguration (NO_REBOOT) of its config with machine.install.image={} → {}",
            cx.image,
            cx.node.label()
        ),
    )
}

pub(super) async fn forfeit(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if !cx.node.control_plane {
        return Ok(skipped("worker"));
    }
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    match leader::hand_over(
        cx.r.cluster,
        cx.r.opts.policy,
        cx.r.em,
        &cx.node,
        cx.r.opts.etcd_deadline,
    )
    .await?
    {
        leader::HandOver::NotLeader => Ok(skipped("not the etcd leader")),
        leader::HandOver::Moved { to } => Ok(done(format!("etcd leadership handed to {to}"))),
        leader::HandOver::Alone => Ok(skipped("the only etcd member: no leadership to hand over")),
    }
}

pub(super) fn plan_forfeit(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::ForfeitLeader,
        cx.node.control_plane,
        if cx.node.control_plane {
            format!(
                "if {} leads etcd: EtcdForfeitLeadership → {}; EtcdStatus → every control plane until another leader",
                cx.host(),
                cx.node.label()
            )
        } else {
            "none (worker)".into()
        },
    )
}

/// Records whether the Node was schedulable before touching it, then cordons.
pub(super) async fn cordon(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let Some(k) = &cx.r.kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    let host = cx.host().to_string();
    let st = crate::kube::nodes::node_state(k, &host)
        .await
        .map_err(|e| FlowError::kube_on(&cx.node.label(), e))?;
    if !st.exists {
        return Ok(skipped("no Node object"));
    }
    if cx.facts().was_unschedulable.is_none() {
        cx.update(|n| {
            n.was_unschedulable = Some(st.unschedulable);
            n.was_ready = Some(st.ready);
        })?;
    }
    if st.unschedulable {
        return Ok(skipped(if cx.facts().cordoned_by_us() {
            "cordoned earlier by this upgrade"
        } else {
            "already unschedulable (cordoned before the upgrade: stays so after)"
        }));
    }
    cx.started(
        StepId::Cordon,
        format!("PATCH Node {host} spec.unschedulable=true"),
    );
    crate::kube::nodes::set_unschedulable(k, &host, true)
        .await
        .map_err(|e| FlowError::kube_on(&cx.node.label(), e))?;
    Ok(done(format!("Node {host} unschedulable")))
}

pub(super) fn plan_cordon(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Cordon,
        true,
        cx.kube_call(&format!("PATCH Node {} spec.unschedulable=true", cx.host())),
    )
}

pub(super) async fn drain_node(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let Some(k) = &cx.r.drain_kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    cx.started(
        StepId::Drain,
        format!("evicting pods from {} (Eviction API)", cx.host()),
    );
    let opts = drain::DrainOptions {
        timeout: cx.r.opts.drain_timeout,
        force: cx.r.opts.force_drain,
    };
    match drain::drain(k, &cx.node, opts).await {
        Ok(d) => Ok(done(drain::summary(&d))),
        Err(e) => {
            cx.release().await;
            Err(e)
        }
    }
}

pub(super) fn plan_drain(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Drain,
        true,
        cx.kube_call(&format!(
            "POST pods/eviction for every pod on {} (budget refusals retried ≤ {}s{})",
            cx.host(),
            cx.r.opts.drain_timeout.as_secs(),
            if cx.r.opts.force_drain {
                ", then DELETE (--force-drain)"
            } else {
                ", then stop naming the PodDisruptionBudget"
            }
        )),
    )
}

/// A boot ID as events print it (its first 8 characters).
pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
