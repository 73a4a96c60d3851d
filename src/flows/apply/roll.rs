//! One node rolled through a reboot, behind the gates every rolling operation
//! shares ([`crate::flows::gates`]):
//!
//! quorum (`Reboot` for a control plane) → layers Ready → snapshot (once,
//! before the first control plane) → etcd leadership handed over → cordon →
//! drain → STAGED apply then Reboot (reinstall: NO_REBOOT, then the legacy
//! Upgrade to the node's own installer image, which reboots it) — the call
//! recorded first → back with a new boot ID → running config is the
//! definition, nothing staged → services → etcd healthy → Node Ready →
//! uncordon (only what we cordoned) → layers Ready.
//!
//! STAGED then Reboot works on 1.12, 1.13 and 1.14 alike and never sends the
//! REBOOT apply mode (gone in 1.14). A resumed run reads the node first: a
//! requested reboot is waited for, never asked again.

use std::time::Instant;

use crate::engine::{Cluster, Emitter, FlowError, JournalHandle, NodeDef, Outcome, StepId};
use crate::flows::drift::{docs, machine_config};
use crate::flows::gates::{self, GuardOp};
use crate::talos::{ApplyMode, LegacyUpgrade};

use super::{ApplyOptions, NodePlan, REINSTALL};
use crate::flows::rollout::{node_facts as facts_of, update_node as set_facts, RolloutFacts};

/// The gates of one rolled node, for `plan apply`.
pub fn gate_line(n: &NodeDef, reinstall: bool) -> String {
    let mut g = vec![if n.control_plane {
        "quorum guard (reboot)"
    } else {
        "quorum guard (worker)"
    }];
    g.push("layers Ready");
    if n.control_plane {
        g.push("etcd leader handed over");
    }
    g.extend(["cordon", "drain"]);
    if reinstall {
        g.extend([
            "apply NO_REBOOT",
            "upgrade to its own installer image (reboots)",
        ]);
    } else {
        g.extend(["apply STAGED", "Reboot"]);
    }
    g.push("back (new boot ID)");
    g.push("config verified");
    g.push("services");
    if n.control_plane {
        g.push("etcd member healthy");
    }
    g.extend(["Node Ready", "uncordon", "layers Ready"]);
    g.join(" → ")
}

/// A step with its start and end events.
async fn step<T, F>(em: &Emitter, id: StepId, n: &NodeDef, f: F) -> Result<T, FlowError>
where
    F: std::future::Future<Output = Result<(T, String), FlowError>>,
{
    let t0 = Instant::now();
    // Where the step's shared description would mislead, say what runs here.
    let own = match id {
        StepId::Apply => Some("ApplyConfiguration over mTLS"),
        StepId::Verify => {
            Some("the node runs the definition: MachineConfigs v1alpha1 = persistent = rendered")
        }
        StepId::EtcdQuorum => Some("etcd: every member healthy, one leader"),
        _ => None,
    };
    match own {
        Some(d) => em.started_with(id, Some(&n.hostname), d),
        None => em.started_step(id, Some(&n.hostname)),
    }
    let (v, detail) = f.await?;
    em.finished(id, Some(&n.hostname), Outcome::Done { detail }, t0);
    Ok(v)
}

/// Rolls one node; returns its outcome line.
pub async fn roll_node(
    cluster: &Cluster,
    opts: &ApplyOptions,
    em: &Emitter,
    journal: &JournalHandle<RolloutFacts>,
    kube: Option<&kube::Client>,
    p: &NodePlan,
) -> Result<String, FlowError> {
    let n = &p.node;
    let host = n.hostname.as_str();
    let reinstall = matches!(p.action, super::Action::Roll { reinstall: true });
    if facts_of(journal, host).done {
        return Ok("already rolled by this rollout".into());
    }
    if reinstall {
        set_facts(journal, host, |f| {
            f.steps.insert(REINSTALL.to_string());
        })?;
    }
    let policy = opts.policy;
    let layers = gates::layers::LayersGate {
        layers: opts.layers.clone(),
        deadline: opts.layers_deadline,
        ignore: opts.ignore_gitops,
    };
    let requested = facts_of(journal, host).requested;

    if !requested {
        // Gates before the node goes away.
        let op = if n.control_plane {
            GuardOp::Reboot
        } else {
            GuardOp::Worker
        };
        let report = step(em, StepId::Guard, n, async {
            let r = gates::quorum::check(cluster, policy, opts.force, em, "apply", n, op).await?;
            let line = if r.forced {
                format!("proceeding despite: {}", r.reasons.join("; "))
            } else {
                "etcd keeps quorum while this node reboots".into()
            };
            Ok((r, line))
        })
        .await?;
        if report.forced {
            journal.update(|j| {
                j.facts
                    .forced
                    .push(format!("{host}: {}", report.reasons.join("; ")))
            })?;
        }
        if let Some(k) = kube {
            let l = step(em, StepId::Layers, n, async {
                let l = gates::layers::check(
                    k,
                    &layers,
                    em,
                    StepId::Layers,
                    Some(host),
                    &format!("before {host}"),
                )
                .await?;
                let s = l.summary();
                Ok((l, s))
            })
            .await?;
            if let gates::layers::Layers::Ignored(b) = l {
                journal.update(|j| {
                    j.facts
                        .forced
                        .push(format!("before {host}: --ignore-gitops: {}", b.join("; ")))
                })?;
            }
        }
        if n.control_plane && !opts.no_snapshot && journal.get(|j| j.facts.backup.is_none()) {
            let path = gates::snapshot::path(cluster, &opts.state_dir);
            let taken = step(em, StepId::Snapshot, n, async {
                let t = gates::snapshot::take(cluster, policy, &path).await?;
                let s = t.summary.clone();
                Ok((t, s))
            })
            .await?;
            journal.update(|j| j.facts.backup = Some(taken.path))?;
        }
        if n.control_plane {
            // The leader gate itself answers Alone for etcd's only member
            // (reachable only with --force): nobody to hand over to.
            step(em, StepId::ForfeitLeader, n, async {
                let h =
                    gates::leader::hand_over(cluster, policy, em, n, opts.etcd_deadline).await?;
                Ok(((), format!("{h:?}")))
            })
            .await?;
        }
        if let Some(k) = kube {
            let c = step(em, StepId::Cordon, n, async {
                let c = gates::drain::cordon(k, n).await?;
                Ok((
                    c,
                    if c.by_us {
                        "cordoned".into()
                    } else {
                        "already unschedulable (or no Node)".to_string()
                    },
                ))
            })
            .await?;
            // Recorded once: a resumed run must not forget that the first
            // run cordoned the node.
            set_facts(journal, host, |f| {
                if f.was_unschedulable.is_none() || c.by_us {
                    f.was_unschedulable = Some(!c.by_us);
                }
                f.was_ready = Some(c.exists && c.was_ready);
            })?;
            step(em, StepId::Drain, n, async {
                let d = gates::drain::drain(k, n, opts.drain).await?;
                Ok(((), gates::drain::summary(&d)))
            })
            .await?;
        }
        // The boot ID the reboot must change, recorded before anything
        // reaches the node.
        let (before, _) = gates::back::boot_id(cluster, n, policy, kube).await?;
        set_facts(journal, host, |f| f.boot_id_before = Some(before.clone()))?;
        let config = cluster.config_of(n)?;
        let c = cluster.mtls(n, policy)?;
        if reinstall {
            step(em, StepId::Apply, n, async {
                c.apply_configuration(config, ApplyMode::NoReboot, false)
                    .await?;
                Ok((
                    (),
                    "applied NO_REBOOT (install fields act at the reinstall)".into(),
                ))
            })
            .await?;
            set_facts(journal, host, |f| f.requested = true)?;
            // The legacy Upgrade reboots the node by itself.
            reinstall_node(cluster, opts, em, n).await?;
        } else {
            step(em, StepId::Apply, n, async {
                c.apply_configuration(config, ApplyMode::Staged, false)
                    .await?;
                Ok(((), "staged (MachineConfigs/persistent)".into()))
            })
            .await?;
            set_facts(journal, host, |f| f.requested = true)?;
            step(em, StepId::RebootRequested, n, async {
                let actor = c.reboot().await?;
                Ok(((), format!("Reboot accepted (actor {actor})")))
            })
            .await?;
        }
    }

    // Back: a new boot ID (a resumed run waits here rather than rebooting again).
    let before = facts_of(journal, host).boot_id_before.ok_or_else(|| {
        FlowError::Source(format!(
            "{}: the journal lost the boot ID from before the reboot; move {} away to start afresh",
            n.label(),
            journal.path().display()
        ))
    })?;
    let back = gates::back::wait_rebooted(
        cluster,
        n,
        policy,
        &before,
        opts.node_deadline,
        em,
        StepId::WaitBack,
    )
    .await?;
    set_facts(journal, host, |f| f.boot_ids = back.boot_ids.clone())?;
    em.progress(
        StepId::WaitBack,
        Some(host),
        format!("{} back with boot ID {}", n.label(), back.boot_id),
    );
    step(em, StepId::Verify, n, verify_config(cluster, n, policy)).await?;
    step(em, StepId::Services, n, async {
        let s = gates::back::services_healthy(cluster, n, policy, opts.etcd_deadline).await?;
        Ok(((), format!("healthy: {}", s.join(", "))))
    })
    .await?;
    if n.control_plane {
        step(em, StepId::EtcdQuorum, n, async {
            let s = gates::back::etcd_healthy(cluster, n, policy, opts.etcd_deadline, &[]).await?;
            Ok(((), format!("every member healthy (seen from {s})")))
        })
        .await?;
    }
    if let Some(k) = kube {
        if facts_of(journal, host).was_ready == Some(true) {
            step(em, StepId::NodeReady, n, async {
                gates::back::node_ready(k, n, None, opts.kube_deadline).await?;
                Ok(((), "Ready".into()))
            })
            .await?;
        }
        if facts_of(journal, host).cordoned_by_us() {
            step(em, StepId::Uncordon, n, async {
                gates::drain::uncordon(k, n).await?;
                Ok(((), "uncordoned".into()))
            })
            .await?;
        }
        step(em, StepId::Layers, n, async {
            let l = gates::layers::check(
                k,
                &layers,
                em,
                StepId::Layers,
                Some(host),
                &format!("after {host}"),
            )
            .await?;
            Ok(((), l.summary()))
        })
        .await?;
    }
    set_facts(journal, host, |f| f.done = true)?;
    Ok(format!(
        "rolled: {} (boot ID {} → {})",
        p.why,
        short(&before),
        short(&back.boot_id)
    ))
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The node runs the definition and nothing else is staged.
async fn verify_config(
    cluster: &Cluster,
    n: &NodeDef,
    policy: crate::talos::CallPolicy,
) -> Result<((), String), FlowError> {
    let c = cluster.mtls(n, policy)?;
    let norm = |raw: &[u8], what: &str| -> Result<Vec<String>, FlowError> {
        Ok(docs::split(raw, what)
            .map_err(FlowError::Source)?
            .iter()
            .map(|d| docs::emit(&d.value))
            .collect())
    };
    let rendered = norm(cluster.config_of(n)?, "rendered")?;
    let running = norm(&machine_config(&c, "v1alpha1").await?, "v1alpha1")?;
    let persistent = norm(&machine_config(&c, "persistent").await?, "persistent")?;
    if running != rendered || persistent != running {
        return Err(FlowError::Source(format!(
            "{}: after the reboot the node does not run the definition (running {} the rendered config, persistent {} the running one); run `diff {}`",
            n.label(),
            if running == rendered { "equals" } else { "differs from" },
            if persistent == running { "equals" } else { "differs from" },
            n.hostname
        )));
    }
    Ok(((), "MachineConfigs v1alpha1 = persistent = rendered".into()))
}

/// Install fields take effect through an upgrade to the node's own installer
/// image (`.machine.install.image` of the definition): the installer rewrites
/// the boot entry with the new kernel arguments. The legacy
/// MachineService.Upgrade does it on 1.12 to 1.14 alike (deprecated, removed in
/// 1.18) and reboots by itself; the 1.13 LifecycleService.Upgrade does not pass
/// `extraKernelArgs` to the installer on GRUB nodes without the UKI command
/// line (Talos 1.13 docs, "Known limitation", which name this same stopgap).
/// `preserve` keeps the node's data; the node's own etcd checks stay on.
async fn reinstall_node(
    cluster: &Cluster,
    opts: &ApplyOptions,
    em: &Emitter,
    n: &NodeDef,
) -> Result<(), FlowError> {
    let config = cluster.config_of(n)?;
    let image = docs::split(config, "rendered")
        .map_err(FlowError::Source)?
        .into_iter()
        .find(|d| d.key.is_v1alpha1())
        .and_then(|d| {
            d.value
                .get("machine")?
                .get("install")?
                .get("image")?
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| {
            FlowError::Source(format!(
                "{}: the rendered config has no .machine.install.image to reinstall from",
                n.label()
            ))
        })?;
    let c = cluster.mtls(n, opts.policy)?;
    step(em, StepId::Upgrade, n, async {
        let req = LegacyUpgrade {
            image: image.clone(),
            preserve: true,
            ..Default::default()
        };
        let ack = c.upgrade_legacy(&req).await?;
        Ok((
            (),
            format!(
                "installer {image} accepted (same version: a reinstall; the node reboots by itself, actor {})",
                ack.actor_id
            ),
        ))
    })
    .await
}
