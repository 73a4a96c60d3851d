//! The upgrade call itself: pull, LifecycleService or MachineService.Upgrade, reboot.

use futures::StreamExt;

use crate::engine::{FlowError, GateError, Outcome, PlanItem, StepId};
use crate::flows::gates::back;
use crate::flows::nodes::state::{done, skipped};
use crate::talos::client::{ImageNamespace, LegacyUpgrade, PullProgress};

use super::super::NodeRun;

// ---- the upgrade -------------------------------------------------------------------------

pub(super) async fn pull_image(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::PullImage;
    let f = cx.facts();
    if f.requested || f.installed {
        return Ok(skipped("the upgrade went further earlier"));
    }
    if cx.legacy() {
        return Ok(skipped(format!(
            "Talos {} has no ImageService: MachineService.Upgrade pulls the image itself",
            f.version_before.unwrap_or_default()
        )));
    }
    cx.started(
        step,
        format!(
            "ImageService.Pull {} (system namespace) → {}",
            cx.image,
            cx.node.label()
        ),
    );
    let c = cx.mtls()?;
    let stream = match c.image_pull(&cx.image, ImageNamespace::System).await {
        Ok(s) => s,
        Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {
            cx.update(|n| n.legacy_api = true)?;
            return Ok(skipped(
                "ImageService unimplemented: the legacy upgrade pulls the image itself",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut stream = Box::pin(stream);
    let mut layers = 0usize;
    loop {
        match tokio::time::timeout(cx.r.opts.node_deadline, stream.next()).await {
            Ok(Some(Ok(PullProgress::Done { name }))) => {
                return Ok(done(format!("pulled {name} ({layers} layer update(s))")))
            }
            Ok(Some(Ok(PullProgress::Layer {
                layer_id, status, ..
            }))) => {
                layers += 1;
                if layers <= 20 {
                    cx.r.em
                        .progress(step, Some(cx.host()), format!("layer {layer_id}: {status}"));
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => {
                return Err(FlowError::NodeState {
                    node: cx.node.label(),
                    detail: format!(
                        "ImageService.Pull of {} ended without naming the image",
                        cx.image
                    ),
                    next: "run the same command again".into(),
                })
            }
            Err(_) => {
                return Err(FlowError::Timeout {
                    node: cx.node.label(),
                    what: format!("pull of {}", cx.image),
                    after: cx.r.opts.node_deadline,
                    last: format!("{layers} layer update(s)"),
                })
            }
        }
    }
}

pub(super) fn plan_pull(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::PullImage,
        !cx.legacy(),
        if cx.legacy() {
            "none (Talos 1.12: MachineService.Upgrade pulls the image itself)".into()
        } else {
            format!("ImageService.Pull {} → {}", cx.image, cx.node.label())
        },
    )
}

/// The boot ID now differs from the one before: the node rebooted since.
pub(super) async fn rebooted_since(cx: &NodeRun<'_>) -> bool {
    let Some(before) = cx.facts().boot_id_before else {
        return false;
    };
    back::boot_id(cx.r.cluster, &cx.node, cx.r.opts.policy.once(), None)
        .await
        .is_ok_and(|(id, _)| id != before)
}

pub(super) async fn upgrade(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Upgrade;
    let f = cx.facts();
    if f.requested {
        return Ok(skipped(
            "requested earlier: waiting for the node, not asking again",
        ));
    }
    if f.installed {
        return Ok(skipped("the installer ran earlier"));
    }
    if rebooted_since(cx).await {
        cx.update(|n| n.requested = true)?;
        return Ok(skipped(
            "the node rebooted since the upgrade started: not asking again",
        ));
    }
    if !cx.legacy() {
        match lifecycle(cx).await {
            Ok(o) => return Ok(o),
            Err(e) if is_unimplemented(&e) => {
                cx.update(|n| n.legacy_api = true)?;
            }
            Err(e) => {
                cx.release().await;
                return Err(e);
            }
        }
    }
    cx.started(
        step,
        format!(
            "MachineService.Upgrade(image={}, force={}) → {}",
            cx.image,
            cx.r.opts.force,
            cx.node.label()
        ),
    );
    let req = LegacyUpgrade {
        image: cx.image.clone(),
        force: cx.r.opts.force,
        ..Default::default()
    };
    match cx.mtls()?.upgrade_legacy(&req).await {
        Ok(ack) => {
            cx.update(|n| n.requested = true)?;
            Ok(done(format!(
                "{} (actor {}); the node drains, installs and reboots by itself",
                ack.ack, ack.actor_id
            )))
        }
        Err(e) => {
            cx.release().await;
            let text = e.to_string();
            if text.contains("error validating etcd for upgrade") || text.contains("upgrade mutex")
            {
                return Err(GateError::TalosRefused {
                    node: cx.node.label(),
                    detail: text,
                }
                .into());
            }
            Err(e.into())
        }
    }
}

pub(super) fn is_unimplemented(e: &FlowError) -> bool {
    matches!(e, FlowError::Talos(t) if t.code() == Some(tonic::Code::Unimplemented))
}

/// LifecycleService.Upgrade with its output streamed; exit code 0 → installed.
pub(super) async fn lifecycle(cx: &NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Upgrade;
    cx.started(
        step,
        format!(
            "LifecycleService.Upgrade(image={}) → {}",
            cx.image,
            cx.node.label()
        ),
    );
    let mut lines: Vec<String> = Vec::new();
    let em = cx.r.em;
    let host = cx.host().to_string();
    // An installer a killed run started may still be running: Talos refuses a
    // second one until it ends; then it runs again (writing the same slot).
    let mut w = crate::engine::Wait::new(
        cx.node.label(),
        "the installer an earlier run started to finish",
        cx.r.opts.node_deadline,
    )
    .backoff(crate::engine::Backoff::new(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(500),
    ));
    let code = loop {
        lines.clear();
        let r = cx
            .mtls()?
            .lifecycle_upgrade_to_end(&cx.image, cx.r.opts.node_deadline, |l| {
                em.progress(step, Some(&host), format!("installer: {l}"));
                lines.push(l.to_string());
            })
            .await;
        match r {
            Ok(code) => break code,
            Err(e)
                if e.code() == Some(tonic::Code::FailedPrecondition)
                    && e.to_string().contains("already in progress") =>
            {
                w.seen(e.to_string());
                if w.news("busy") {
                    cx.r.em.waiting(
                        step,
                        Some(&host),
                        format!("{}: {}", cx.node.label(), w.last()),
                    );
                }
                w.pause().await?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if code != 0 {
        return Err(GateError::InstallerFailed {
            node: cx.node.label(),
            image: cx.image.clone(),
            exit_code: code,
            lines,
        }
        .into());
    }
    cx.update(|n| n.installed = true)?;
    Ok(done(format!(
        "installer exited 0 ({} line(s)); the new image boots next",
        lines.len()
    )))
}

pub(super) fn plan_upgrade(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Upgrade,
        true,
        if cx.legacy() {
            format!(
                "MachineService.Upgrade(image={}) → {} (Talos 1.12: the node checks etcd, installs and reboots itself)",
                cx.image,
                cx.node.label()
            )
        } else {
            format!(
                "LifecycleService.Upgrade(image={}) → {} (streams the installer; non-zero exit stops)",
                cx.image,
                cx.node.label()
            )
        },
    )
}

pub(super) async fn reboot(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let f = cx.facts();
    if f.requested {
        return Ok(skipped(if cx.legacy() {
            "the legacy upgrade reboots the node itself"
        } else {
            "requested earlier"
        }));
    }
    if rebooted_since(cx).await {
        cx.update(|n| n.requested = true)?;
        return Ok(skipped("the node rebooted since"));
    }
    cx.started(StepId::Reboot, format!("Reboot → {}", cx.node.label()));
    match cx.mtls()?.reboot().await {
        Ok(actor) => {
            cx.update(|n| n.requested = true)?;
            Ok(done(format!("reboot accepted (actor {actor})")))
        }
        // Going down already: a reboot an earlier (killed) run asked for. A new
        // boot ID once it answers again says so; else the error stands.
        Err(e) => {
            let before = f.boot_id_before.unwrap_or_default();
            if super::before::settled_boot_id(cx).await? != before {
                cx.update(|n| n.requested = true)?;
                return Ok(skipped(
                    "the node was rebooting already (an earlier request): not asking again",
                ));
            }
            Err(e.into())
        }
    }
}

pub(super) fn plan_reboot(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Reboot,
        !cx.legacy(),
        if cx.legacy() {
            "none (the legacy upgrade reboots by itself)".into()
        } else {
            format!("Reboot → {}", cx.node.label())
        },
    )
}
