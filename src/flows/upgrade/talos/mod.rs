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

mod after;
mod before;
mod call;

use crate::engine::{Flow, FlowError, PlanItem, StepId};
use crate::flows::gates::drain;
use crate::flows::rollout::{self, NodeRunFacts};
use crate::talos::TalosClient;

use super::NodeRun;
use after::*;
use before::*;
use call::*;

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

    /// The node takes MachineService.Upgrade: the operator asked for it
    /// (`--legacy-upgrade`), it ran Talos < 1.13 when the rollout reached it,
    /// or it answered Unimplemented to the new API.
    fn legacy(&self) -> bool {
        let f = self.facts();
        self.r.opts.legacy_upgrade
            || f.legacy_api
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
