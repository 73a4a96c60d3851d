//! One node of `upgrade talos`, as a step table on the engine:
//!
//! guard (quorum survives the reboot) → layers Ready → snapshot (before the
//! first control plane) → install image in the machine config (NO_REBOOT) →
//! hand etcd leadership over → cordon → drain → pull the installer
//! (ImageService, Talos ≥ 1.13) → upgrade (LifecycleService on ≥ 1.13,
//! MachineService.Upgrade on 1.12, which reboots by itself) → reboot → back
//! with a new boot ID → version = target (else rolled back) → services →
//! etcd → Node Ready → uncordon → layers Ready.
//!
//! Every step reads the journal's per-node facts and the real state first: a
//! requested upgrade is never asked again, a cordon of ours is always undone.

use futures::StreamExt;

use crate::engine::{Flow, FlowError, GateError, Outcome, PlanItem, StepId};
use crate::flows::gates::{back, drain, layers, leader, quorum, snapshot, GuardOp};
use crate::flows::nodes::state::{done, skipped};
use crate::flows::rollout::{self, NodeRunFacts};
use crate::talos::client::{ImageNamespace, LegacyUpgrade, PullProgress};
use crate::talos::{ApplyMode, TalosClient};

use super::{same_version, NodeRun};

/// A step of the per-node table (run and plan side by side).
macro_rules! nstep {
    ($id:expr, $run:path, $plan:path) => {
        $crate::engine::Step {
            id: $id,
            run: |cx| Box::pin($run(cx)),
            plan: |cx| {
                let items: Vec<PlanItem> = $plan(&*cx);
                Box::pin(async move { items })
            },
        }
    };
}

/// The steps of one node, in order.
pub fn steps<'a>() -> Flow<NodeRun<'a>> {
    Flow {
        steps: vec![
            nstep!(StepId::Guard, guard, plan_guard),
            nstep!(StepId::Layers, layers_before, plan_layers_before),
            nstep!(StepId::Snapshot, take_snapshot, plan_snapshot),
            nstep!(StepId::InstallImage, install_image, plan_install_image),
            nstep!(StepId::ForfeitLeader, forfeit, plan_forfeit),
            nstep!(StepId::Cordon, cordon, plan_cordon),
            nstep!(StepId::Drain, drain_node, plan_drain),
            nstep!(StepId::PullImage, pull_image, plan_pull),
            nstep!(StepId::Upgrade, upgrade, plan_upgrade),
            nstep!(StepId::Reboot, reboot, plan_reboot),
            nstep!(StepId::WaitBack, wait_back, plan_wait_back),
            nstep!(StepId::VerifyVersion, verify_version, plan_verify_version),
            nstep!(StepId::Services, services, plan_services),
            nstep!(StepId::Verify, etcd_member, plan_etcd_member),
            nstep!(StepId::NodeReady, node_ready, plan_node_ready),
            nstep!(StepId::Uncordon, uncordon, plan_uncordon),
            nstep!(StepId::Layers, layers_after, plan_layers_after),
        ],
        announce: crate::engine::Announce::Outcomes,
    }
}

impl NodeRun<'_> {
    fn host(&self) -> &str {
        &self.node.hostname
    }

    fn facts(&self) -> NodeRunFacts {
        rollout::node_facts(&self.r.journal, self.host())
    }

    fn update(&self, f: impl FnOnce(&mut NodeRunFacts)) -> Result<(), FlowError> {
        rollout::update_node(&self.r.journal, self.host(), f)
    }

    fn started(&self, step: StepId, message: impl Into<String>) {
        self.r.em.started_with(step, Some(self.host()), message);
    }

    fn mtls(&self) -> Result<TalosClient, FlowError> {
        self.r.cluster.mtls(&self.node, self.r.opts.policy)
    }

    fn target(&self) -> String {
        self.r.target.to_string()
    }

    /// The node takes MachineService.Upgrade: it ran Talos < 1.13 when the
    /// rollout reached it, or answered Unimplemented to the new API.
    fn legacy(&self) -> bool {
        let f = self.facts();
        f.legacy_api
            || f.version_before
                .as_deref()
                .or(self.r.versions.get(self.host()).map(String::as_str))
                .and_then(super::skew::Version::parse)
                .is_some_and(|v| v.major == 1 && v.minor < 13)
    }

    fn line(&self, step: StepId, acts: bool, action: impl Into<String>) -> Vec<PlanItem> {
        vec![
            PlanItem::on(step, &self.node, acts, action).done(rollout::node_done(
                &self.r.journal,
                self.host(),
                step,
            )),
        ]
    }

    fn kube_call(&self, call: &str) -> String {
        if self.r.cluster.kubeconfig.is_some() {
            format!("{call} → Kubernetes API ({})", self.r.cluster.def.endpoint)
        } else {
            format!("{call}: skipped (no kubeconfig in the state directory)")
        }
    }

    /// Undoes our cordon (a stop after the cordon must not leave the node out
    /// of scheduling); errors are reported as warnings: the stop's own error wins.
    async fn release(&self) {
        let f = self.facts();
        if let (Some(k), true) = (&self.r.kube, f.cordoned_by_us()) {
            match drain::uncordon(k, &self.node).await {
                Ok(_) => {
                    let _ = self.update(|n| n.was_unschedulable = None);
                    self.r.em.warning(
                        StepId::Uncordon,
                        Some(self.host()),
                        format!(
                            "Node {} uncordoned (the upgrade stopped on it)",
                            self.host()
                        ),
                    );
                }
                Err(e) => self.r.em.warning(
                    StepId::Uncordon,
                    Some(self.host()),
                    format!("could not uncordon after the stop: {e}"),
                ),
            }
        }
    }
}

// ---- before ------------------------------------------------------------------------------

/// Records what the node ran and its boot ID (once), then the quorum gate:
/// a control plane must be able to reboot without etcd losing quorum.
async fn guard(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let f = cx.facts();
    if f.requested {
        return Ok(skipped(
            "the upgrade was requested earlier: the node may be rebooting",
        ));
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
    let report = quorum::check(
        cx.r.cluster,
        cx.r.opts.policy,
        cx.r.opts.force,
        cx.r.em,
        "upgrade",
        &cx.node,
        op,
    )
    .await?;
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
    Ok(done(if report.reasons.is_empty() {
        format!("{before}; etcd healthy, quorum survives the reboot")
    } else {
        format!("{before}; FORCED past: {}", report.reasons.join("; "))
    }))
}

fn plan_guard(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn layers_gate(cx: &NodeRun<'_>, when: String) -> Result<Outcome, FlowError> {
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

async fn layers_before(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let when = format!("before {}", cx.host());
    layers_gate(cx, when).await
}

fn plan_layers_before(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    plan_layers(cx, "before")
}

fn plan_layers(cx: &NodeRun<'_>, when: &str) -> Vec<PlanItem> {
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

async fn take_snapshot(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_snapshot(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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
async fn install_image(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::InstallImage;
    let f = cx.facts();
    if f.requested || f.installed {
        return Ok(skipped("the upgrade went further earlier"));
    }
    let config = cx.r.cluster.config_of(&cx.node)?;
    let config = super::preflight::with_install_image(config, &cx.image).map_err(|e| {
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

fn plan_install_image(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn forfeit(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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
    }
}

fn plan_forfeit(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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
async fn cordon(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_cordon(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Cordon,
        true,
        cx.kube_call(&format!("PATCH Node {} spec.unschedulable=true", cx.host())),
    )
}

async fn drain_node(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    if cx.facts().requested {
        return Ok(skipped("the upgrade was requested earlier"));
    }
    let Some(k) = &cx.r.kube else {
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

fn plan_drain(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

// ---- the upgrade -------------------------------------------------------------------------

async fn pull_image(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_pull(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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
async fn rebooted_since(cx: &NodeRun<'_>) -> bool {
    let Some(before) = cx.facts().boot_id_before else {
        return false;
    };
    back::boot_id(cx.r.cluster, &cx.node, cx.r.opts.policy.once(), None)
        .await
        .is_ok_and(|(id, _)| id != before)
}

async fn upgrade(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn is_unimplemented(e: &FlowError) -> bool {
    matches!(e, FlowError::Talos(t) if t.code() == Some(tonic::Code::Unimplemented))
}

/// LifecycleService.Upgrade with its output streamed; exit code 0 → installed.
async fn lifecycle(cx: &NodeRun<'_>) -> Result<Outcome, FlowError> {
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
    let code = cx
        .mtls()?
        .lifecycle_upgrade_to_end(&cx.image, cx.r.opts.node_deadline, |l| {
            em.progress(step, Some(&host), format!("installer: {l}"));
            lines.push(l.to_string());
        })
        .await?;
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

fn plan_upgrade(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn reboot(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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
    let actor = cx.mtls()?.reboot().await?;
    cx.update(|n| n.requested = true)?;
    Ok(done(format!("reboot accepted (actor {actor})")))
}

fn plan_reboot(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

// ---- after -------------------------------------------------------------------------------

async fn wait_back(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_wait_back(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::WaitBack,
        false,
        format!(
            "boot ID, MachineStatus → {} until a new boot ID, running and ready",
            cx.node.label()
        ),
    )
}

async fn verify_version(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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
    r.map(|_| done(format!("runs {running}")))
}

fn plan_verify_version(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn services(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let ok = back::services_healthy(
        cx.r.cluster,
        &cx.node,
        cx.r.opts.policy,
        cx.r.opts.kube_deadline,
    )
    .await?;
    Ok(done(format!("{} running and healthy", ok.join(", "))))
}

fn plan_services(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn etcd_member(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_etcd_member(cx: &NodeRun<'_>) -> Vec<PlanItem> {
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

async fn node_ready(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let Some(k) = &cx.r.kube else {
        return Ok(skipped("no Kubernetes access"));
    };
    if cx.facts().was_ready == Some(false) {
        return Ok(skipped("the Node was not Ready before the upgrade"));
    }
    back::node_ready(k, &cx.node, None, cx.r.opts.kube_deadline).await?;
    Ok(done(format!("Node {} Ready", cx.host())))
}

fn plan_node_ready(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::NodeReady,
        false,
        cx.kube_call(&format!("watch Node {} until Ready", cx.host())),
    )
}

async fn uncordon(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
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

fn plan_uncordon(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    cx.line(
        StepId::Uncordon,
        true,
        cx.kube_call(&format!(
            "PATCH Node {} spec.unschedulable=null (only if this upgrade cordoned it)",
            cx.host()
        )),
    )
}

async fn layers_after(cx: &mut NodeRun<'_>) -> Result<Outcome, FlowError> {
    let when = format!("after {}", cx.host());
    layers_gate(cx, when).await
}

fn plan_layers_after(cx: &NodeRun<'_>) -> Vec<PlanItem> {
    plan_layers(cx, "after")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
