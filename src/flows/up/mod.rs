//! `up`: from maintenance-mode nodes to all five layers Ready, resumable at any
//! point. The runbook, as the step table below runs it:
//!
//! | layer | step | what |
//! | --- | --- | --- |
//! | 1 | preflight | definition, secrets, each node's mode, disks and links; nothing touched |
//! | 1 | apply | configs to maintenance nodes (insecure) and configured ones (mTLS, when changed) |
//! | 1 | wait_configured | every node running its config |
//! | 1 | bootstrap | etcd bootstrapped exactly once (or restored from a snapshot) |
//! | 1 | etcd_quorum | every control plane an etcd member, healthy |
//! | 1 | kubeconfig | the admin kubeconfig, 0600 |
//! | 1 | apiserver | kube-apiserver serving TLS with the cluster CA |
//! | 1 | kube_api … layer1_done | namespaces, SOPS secrets, CRDs, Cilium, nodes Ready, charts |
//! | 2 | flux_secrets, flux_install, flux_sync | Flux's inputs checked, Flux installed and synced |
//! | 3–5 | gitops | every Flux object Ready, by layer |
//! | 2 | adoption | Flux adopted the bootstrap releases |
//!
//! Every step reads the real state first, acts only when needed and verifies;
//! per-node work runs concurrently. Shared state lives in [`state`] and
//! [`kube`]; the step modules import only those, never each other's steps.

pub mod charts;
pub mod etcd;
pub mod flux;
pub mod gitops;
pub use crate::flows::gates::hardware;
pub mod kube;
pub mod layer1;
pub mod preflight;
pub mod state;
pub mod talos;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::engine::flow::no_plan;
use crate::engine::{
    Announce, Cluster, ClusterSource, Emitter, EventKind, Flow, FlowError, Journal, JournalHandle,
    PlanItem, Scope, Step, StepId, UpFacts,
};

pub use kube::{KubeHalf, Renderer};
pub use state::{kube_step, Up, UpOptions, UpReport, RECOVER_PENDING};

/// A step of the Talos half.
macro_rules! talos_step {
    ($id:expr, $run:path, $plan:expr) => {
        Step {
            id: $id,
            run: |cx| Box::pin($run(cx)),
            plan: $plan,
        }
    };
}

/// A step of the Kubernetes half or the GitOps layers: skipped without a
/// repository, timed with one.
macro_rules! kube_step {
    ($id:expr, $run:path, $plan:path) => {
        Step {
            id: $id,
            run: |cx| kube_step(cx, $id, |cx| $run(cx)),
            plan: |cx| Box::pin($plan(cx)),
        }
    };
}

/// The steps of `up`, in order.
pub fn steps<'r>() -> Flow<Up<'r>> {
    Flow {
        steps: vec![
            talos_step!(StepId::Preflight, preflight::run, |cx| Box::pin(
                preflight::plan(cx)
            )),
            talos_step!(StepId::Apply, talos::apply, |cx| Box::pin(
                talos::plan_apply(cx)
            )),
            talos_step!(StepId::WaitConfigured, talos::wait_configured, no_plan),
            talos_step!(StepId::Bootstrap, etcd::bootstrap, |cx| Box::pin(
                etcd::plan_bootstrap(cx)
            )),
            talos_step!(StepId::EtcdQuorum, etcd::etcd_quorum, |cx| Box::pin(
                etcd::plan_quorum(cx)
            )),
            talos_step!(StepId::Kubeconfig, talos::kubeconfig, |cx| Box::pin(
                talos::plan_kubeconfig(cx)
            )),
            talos_step!(StepId::Apiserver, talos::apiserver, |cx| Box::pin(
                talos::plan_apiserver(cx)
            )),
            kube_step!(StepId::KubeApi, layer1::kube_api, layer1::plan_kube_api),
            kube_step!(
                StepId::NodesRegistered,
                layer1::nodes_registered,
                layer1::plan_nodes_registered
            ),
            kube_step!(
                StepId::Namespaces,
                layer1::namespaces,
                layer1::plan_namespaces
            ),
            kube_step!(StepId::Secrets, layer1::secrets, layer1::plan_secrets),
            kube_step!(StepId::Crds, layer1::crds, layer1::plan_crds),
            kube_step!(StepId::Cni, charts::cni, charts::plan_cni),
            kube_step!(
                StepId::NodesReady,
                layer1::nodes_ready,
                layer1::plan_nodes_ready
            ),
            kube_step!(StepId::Charts, charts::charts, charts::plan_charts),
            kube_step!(
                StepId::Layer1Done,
                layer1::layer1_done,
                layer1::plan_layer1_done
            ),
            kube_step!(
                StepId::FluxSecrets,
                flux::flux_secrets,
                flux::plan_flux_secrets
            ),
            kube_step!(
                StepId::FluxInstall,
                charts::flux_install,
                charts::plan_flux_install
            ),
            kube_step!(StepId::FluxSync, flux::flux_sync, flux::plan_flux_sync),
            kube_step!(StepId::Gitops, gitops::gitops, gitops::plan_gitops),
            kube_step!(StepId::Adoption, gitops::adoption, gitops::plan_adoption),
        ],
        announce: Announce::Steps,
    }
}

/// The run's context over `up`'s journal (loaded, or new).
fn context<'r>(
    source: &'r dyn ClusterSource,
    opts: &'r UpOptions,
    em: &'r Emitter,
) -> Result<Up<'r>, FlowError> {
    let def = source.definition()?;
    let path = Journal::<UpFacts>::up_path(&opts.state_dir);
    let journal = Journal::read_of(&path, &def.cluster)?
        .unwrap_or_else(|| Journal::new(&def.cluster, None, None));
    Ok(Up {
        em,
        opts,
        source,
        cluster: Cluster::unrendered(def),
        journal: JournalHandle::new(path, journal),
        classes: BTreeMap::new(),
        had_secrets: false,
        hardware: BTreeMap::new(),
        kubeconfig_path: None,
        kube: Default::default(),
    })
}

/// Runs `up` against the cluster of `source`, reporting through `em`.
pub async fn up(
    source: &dyn ClusterSource,
    opts: &UpOptions,
    em: &Emitter,
) -> Result<UpReport, FlowError> {
    let started = Instant::now();
    let mut cx = context(source, opts, em)?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| {
        FlowError::local(
            &opts.state_dir,
            format!("cannot create the state directory: {e}"),
        )
    })?;
    cx.cluster.kubeconfig = std::fs::read(opts.state_dir.join("kubeconfig")).ok();
    let _journal = em.attach(cx.journal.sink());
    em.emit(
        StepId::Run,
        None,
        EventKind::RunStarted {
            cluster: cx.cluster.def.cluster.clone(),
            steps: StepId::UP.iter().map(|s| s.name().to_string()).collect(),
        },
    );
    let scope = Scope {
        em,
        node: None,
        until: Some(opts.until),
    };
    let result = steps().run(&mut cx, scope).await;
    em.emit(
        StepId::Run,
        None,
        EventKind::RunFinished {
            ok: result.is_ok(),
            duration_ms: started.elapsed().as_millis() as u64,
        },
    );
    let steps = result?;
    if let Some(e) = cx.journal.save_error() {
        return Err(e);
    }
    Ok(UpReport {
        steps,
        talosconfig: opts.state_dir.join("talosconfig"),
        kubeconfig: cx.kubeconfig_path,
        duration: started.elapsed(),
    })
}

/// What `up` would do now. Reads state (TLS probes, COSI reads, dry-run applies);
/// changes nothing, generates nothing.
pub async fn plan(
    source: &dyn ClusterSource,
    opts: &UpOptions,
) -> Result<Vec<PlanItem>, FlowError> {
    let em = Emitter::new();
    let mut cx = context(source, opts, &em)?;
    cx.had_secrets = source.has_secrets()?;
    if cx.had_secrets {
        cx.cluster.rendered = Some(source.render()?);
    }
    Ok(steps().plan(&mut cx).await)
}
