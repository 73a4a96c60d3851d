//! The lab's Flux: the simulated API plays flux-operator and the source,
//! kustomize and helm controllers.
//!
//! - flux-operator: once a FluxInstance exists (its CRD from
//!   [`fluxinstance_crd`]), the Flux CRDs are registered, the controller
//!   Deployments of `spec.components` are created in the instance's namespace
//!   (they roll out like any Deployment: they need schedulable nodes, i.e. a
//!   CNI), and the sync `GitRepository` and `Kustomization` (named
//!   `spec.sync.name`, default the namespace) are applied from `spec.sync`. The
//!   instance turns Ready (`ReconciliationSucceeded`) once the sync source has
//!   an artifact and every controller is rolled out, with `components`,
//!   `lastAppliedRevision` (`v<distribution>@sha256:…`) and an inventory.
//! - source-controller: a GitRepository's `spec.url` is fetched from the lab's
//!   Git host ([`super::KubeLab::serve_git`]); `file://` URLs and plain
//!   paths are directories on disk. The artifact revision is
//!   `<ref>@sha1:<commit>` (a tree hash when the directory is no Git checkout);
//!   an unknown URL fails with `GitOperationFailed` as source-controller does.
//! - kustomize-controller: Kustomizations are reconciled in `dependsOn` order
//!   with Flux's dependency check, after a delay (× time scale): SOPS decryption
//!   needs the `spec.decryption.secretRef` Secret with an `age.agekey` whose
//!   recipient is one of every `*.sops.yaml` file's recipients; the build of
//!   `spec.path` (the lab's own `kustomize build`, [`kustomize`]) applies
//!   Namespaces, Flux Kustomizations and HelmReleases
//!   (labelled with the applying Kustomization, as kustomize-controller does);
//!   `wait` / `healthChecks` wait for those HelmReleases.
//! - helm-controller ([`helm`]): HelmReleases install (adopting the objects a
//!   tool applied with Helm ownership metadata) or upgrade after a delay, after
//!   their `dependsOn`, writing Helm's release Secrets.
//!
//! A fault set with [`super::KubeLab::set_not_ready_while_node_away`] keeps a
//! Kustomization or HelmRelease not Ready while a given node is away (its
//! kubelet not posting: Node Ready `Unknown`).
//! Faults ride on the objects (annotation [`FAULT`]): `never-ready` keeps a
//! Kustomization failing its health check forever; `install-fails` makes a
//! HelmRelease's install fail (Stalled, RetriesExceeded, once its remediation
//! retries are used up). A missing `sops-age` Secret fails every Kustomization
//! that decrypts with it, with Flux's message.
//!
//! One module per controller: `operator` (flux-operator and the FluxInstance
//! CRD), `source` (source-controller, fetching from the lab's Git host),
//! `kustomization` (kustomize-controller, building with the lab's own
//! `kustomize`) and `helm` (helm-controller); `objects` holds what they share
//! (conditions and status writes as the controllers make them, the fault
//! annotation). `pass` runs them in that order.

mod helm;
mod kustomization;
pub mod kustomize;
mod objects;
mod operator;
mod source;

use std::collections::BTreeMap;

use serde_json::Value;

use super::server::Api;
use super::store::ApiError;
use objects::{list, s, Types};

pub use objects::FAULT;
pub use operator::{flux_crds, fluxinstance, fluxinstance_crd, fluxinstance_for_url};

/// One pass of the Flux controllers. `due(key, generation, base)` says whether
/// a step's delay is over (and schedules a wake-up when it is not).
pub(crate) fn pass(
    api: &Api,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let Some(fi_t) = api.type_by_kind("FluxInstance") else {
        return Ok(());
    };
    let instances = list(api, &fi_t);
    if instances.is_empty() {
        return Ok(());
    }
    if let Some(crd_t) = api.type_by_kind("CustomResourceDefinition") {
        for c in flux_crds() {
            api.sim_create(&crd_t, c)?;
        }
    }
    let (Some(git_t), Some(ks_t), Some(hr_t), Some(secret_t), Some(ns_t), Some(deploy_t)) = (
        api.type_by_kind("GitRepository"),
        api.type_by_kind("Kustomization"),
        api.type_by_kind("HelmRelease"),
        api.type_by_kind("Secret"),
        api.type_by_kind("Namespace"),
        api.type_by_kind("Deployment"),
    ) else {
        return Ok(()); // CRDs not established yet; their establishment wakes us.
    };
    let types = Types {
        git: git_t,
        ks: ks_t,
        hr: hr_t,
        secret: secret_t,
        ns: ns_t,
        deploy: deploy_t,
    };

    // flux-operator.
    for fi in &instances {
        operator::reconcile_instance(api, &fi_t, &types, fi, due)?;
    }

    // source-controller.
    for g in list(api, &types.git) {
        source::reconcile_source(api, &types, &g, due)?;
    }

    // kustomize-controller.
    let all_ks = list(api, &types.ks);
    let by_key: BTreeMap<(String, String), &Value> = all_ks
        .iter()
        .map(|k| {
            (
                (
                    s(k, "/metadata/namespace").to_string(),
                    s(k, "/metadata/name").to_string(),
                ),
                k,
            )
        })
        .collect();
    for ks in &all_ks {
        if let Some(node) = away(api, "Kustomization", ks) {
            let msg = format!(
                "health check failed after 30s: timeout waiting for: [Deployment/{}/{} status: 'InProgress']",
                s(ks, "/metadata/namespace"),
                s(ks, "/metadata/name")
            );
            tracing::debug!("lab Flux: {msg} (node {node} away)");
            objects::fail(
                api,
                &types.ks,
                ks,
                "HealthCheckFailed",
                msg,
                serde_json::json!({}),
            )?;
            continue;
        }
        kustomization::reconcile_ks(api, &types, ks, &by_key, due)?;
    }

    // helm-controller.
    let all_hr = list(api, &types.hr);
    for hr in &all_hr {
        if let Some(node) = away(api, "HelmRelease", hr) {
            let msg = format!(
                "Helm upgrade failed for release {}/{}: context deadline exceeded",
                s(hr, "/metadata/namespace"),
                s(hr, "/metadata/name")
            );
            tracing::debug!("lab Flux: {msg} (node {node} away)");
            objects::fail(
                api,
                &types.hr,
                hr,
                "UpgradeFailed",
                msg,
                serde_json::json!({}),
            )?;
            continue;
        }
        helm::reconcile_hr(api, &types, hr, &all_hr, due)?;
    }
    Ok(())
}

/// The node an object needs when a fault ties it to one and that node is away.
fn away(api: &Api, kind: &str, obj: &Value) -> Option<String> {
    let node = api.shared.needs_node(
        kind,
        s(obj, "/metadata/namespace"),
        s(obj, "/metadata/name"),
    )?;
    // Away: no Node, or its kubelet stopped posting (Ready Unknown).
    let posting = api
        .type_by_kind("Node")
        .and_then(|t| api.store.get(&t.key(None, &node)).ok().flatten())
        .and_then(|n| n.pointer("/status/conditions").cloned())
        .and_then(|c| c.as_array().cloned())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Ready" && matches!(s(c, "/status"), "True" | "False"))
        });
    (!posting).then_some(node)
}
