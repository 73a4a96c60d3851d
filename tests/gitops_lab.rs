//! The tracker against the lab's Flux: every layer Ready in dependsOn order, a
//! re-run changes nothing; a missing `sops-age`, a Kustomization that never
//! becomes Ready and a HelmRelease that fails terminally are reported with
//! their messages and dependents.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use endsys_bootstrap::gitops::{walk, ItemState, Key, Kind, LayerMap, TrackError, Tracker};
use endsys_bootstrap::lab::kube::flux;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kubelab::{client, up};
use serde_json::json;

fn lab_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux-tree")
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read") {
        let e = e.expect("entry");
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&t).expect("mkdir");
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).expect("copy");
        }
    }
}

fn pp() -> PatchParams {
    PatchParams::apply("gitops-test").force()
}

async fn seed(client: &kube::Client, with_key: bool) {
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.patch(
        "flux-system",
        &pp(),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        ),
    )
    .await
    .expect("namespace");
    if with_key {
        seed_key(client).await;
    }
}

async fn seed_key(client: &kube::Client) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "flux-system");
    secrets
        .patch(
            "sops-age",
            &pp(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "sops-age", "namespace": "flux-system"},
                "stringData": {"age.agekey": id.to_string().expose_secret()}})),
        )
        .await
        .expect("sops-age");
}

async fn install_flux(client: &kube::Client, tree: &Path) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = flux::fluxinstance_crd();
    crds.patch(
        "fluxinstances.fluxcd.controlplane.io",
        &pp(),
        &Patch::Apply(crd),
    )
    .await
    .expect("crd");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            crds,
            "fluxinstances.fluxcd.controlplane.io",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("established in time")
    .expect("watch");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("fluxcd.controlplane.io", "v1", "FluxInstance"),
        "fluxinstances",
    );
    let fi: Api<DynamicObject> = Api::namespaced_with(client.clone(), "flux-system", &ar);
    fi.patch(
        "flux",
        &pp(),
        &Patch::Apply(flux::fluxinstance(tree, "flux/cluster")),
    )
    .await
    .expect("FluxInstance");
}

fn ks_api(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    );
    Api::all_with(client.clone(), &ar)
}

async fn versions(client: &kube::Client) -> BTreeSet<(String, String)> {
    ks_api(client)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|o| {
            (
                o.metadata.name.unwrap_or_default(),
                o.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_layer_ready_in_depends_on_order_and_rerun_changes_nothing() {
    let kc = up(201, "g201").await;
    let client = client(&kc.kubeconfig).await;
    seed(&client, true).await;
    let graph = walk(&lab_tree(), "flux/cluster", LayerMap::endsys()).expect("walk");
    install_flux(&client, &lab_tree()).await;

    let tracker = Tracker::new(client.clone(), LayerMap::endsys()).expect(&graph);
    let mut steps: Vec<BTreeSet<Key>> = vec![];
    let done = tracker
        .wait_ready(Duration::from_secs(60), |p| {
            steps.push(
                p.items
                    .iter()
                    .filter(|i| i.kind == Kind::Kustomization && i.state == ItemState::Ready)
                    .map(|i| i.key.clone())
                    .collect(),
            );
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(done.all_ready());
    for l in &done.layers {
        assert!(
            l.total > 0 && l.ready == l.total,
            "layer {}: {l:?}",
            l.layer
        );
    }
    // Never Ready before its dependencies.
    for ready in &steps {
        for k in ready {
            if let Some(n) = graph.nodes.get(k) {
                for d in &n.depends_on {
                    assert!(ready.contains(&d.key), "{k} Ready before {}", d.key);
                }
            }
        }
    }
    let hr = done
        .items
        .iter()
        .find(|i| i.kind == Kind::HelmRelease && i.key == Key::new("default", "immich"))
        .expect("HelmRelease immich");
    assert_eq!(hr.layer, 5);
    assert_eq!(hr.owner, Some(Key::new("default", "immich")));

    // A re-run on the finished cluster changes nothing.
    let before = versions(&client).await;
    install_flux(&client, &lab_tree()).await;
    let again = tracker
        .wait_ready(Duration::from_secs(10), |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.all_ready());
    let status = tracker.snapshot().await.expect("snapshot");
    assert!(status.all_ready(), "{}", status.render());
    assert_eq!(versions(&client).await, before);
}

#[tokio::test]
async fn missing_key_stuck_and_failing_objects_are_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&lab_tree(), tmp.path());
    let es = tmp.path().join("apps/security/external-secrets/ks.yaml");
    let text = std::fs::read_to_string(&es).expect("read");
    std::fs::write(
        &es,
        text.replace(
            "  name: external-secrets\n",
            "  name: external-secrets\n  annotations:\n    lab.endsys.dev/fault: never-ready\n",
        ),
    )
    .expect("write");
    let kc = up(202, "g202").await;
    let client = client(&kc.kubeconfig).await;
    seed(&client, false).await;
    install_flux(&client, tmp.path()).await;
    let tracker = Tracker::new(client.clone(), LayerMap::endsys());

    // No sops-age: cluster-meta fails with Flux's message.
    let err = tracker
        .wait_ready(Duration::from_secs(3), |_| {})
        .await
        .expect_err("no key");
    let TrackError::Deadline { progress, .. } = &err else {
        panic!("{err}")
    };
    let meta = progress
        .items
        .iter()
        .find(|i| i.key == Key::new("flux-system", "cluster-meta"))
        .expect("cluster-meta");
    assert_eq!(
        meta.message,
        "decryption secret error: secrets \"sops-age\" not found"
    );
    assert!(meta
        .dependents
        .contains(&Key::new("flux-system", "cluster-apps")));
    assert!(err.to_string().contains("sops-age"), "{err}");

    // With the key, everything but the stuck Kustomization and what waits on it.
    seed_key(&client).await;
    let err = tracker
        .wait_ready(Duration::from_secs(8), |_| {})
        .await
        .expect_err("stuck");
    let TrackError::Deadline { progress, .. } = &err else {
        panic!("{err}")
    };
    let blocking = progress.blocking();
    let es = blocking
        .iter()
        .find(|i| i.key == Key::new("security", "external-secrets"))
        .unwrap_or_else(|| panic!("external-secrets blocks: {err}"));
    assert_eq!(es.reason, "HealthCheckFailed");
    assert!(es.message.contains("timeout waiting for"), "{}", es.message);
    assert!(es.dependents.contains(&Key::new("security", "pocket-id")));
    assert!(es.dependents.contains(&Key::new("default", "immich")));
    let immich = progress
        .items
        .iter()
        .find(|i| i.kind == Kind::Kustomization && i.key == Key::new("default", "immich"))
        .expect("immich");
    assert_eq!(
        immich.waiting_on,
        vec![Key::new("security", "external-secrets")]
    );
    assert!(
        err.to_string().contains("security/external-secrets"),
        "{err}"
    );

    // A HelmRelease that fails terminally fails the tracker fast.
    let hr_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    );
    let hrs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &hr_ar);
    hrs.patch(
        "broken",
        &pp(),
        &Patch::Apply(
            json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "broken", "namespace": "default",
                "annotations": {flux::FAULT: "install-fails"}},
            "spec": {"chart": {"spec": {"chart": "broken", "version": "1.2.3"}}}}),
        ),
    )
    .await
    .expect("HelmRelease");
    let started = std::time::Instant::now();
    let err = tracker
        .wait_ready(Duration::from_secs(30), |_| {})
        .await
        .expect_err("fails");
    assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
    let TrackError::Failed { progress } = &err else {
        panic!("{err}")
    };
    let failed = progress.failed();
    assert_eq!(failed.len(), 1, "{err}");
    assert_eq!(failed[0].key, Key::new("default", "broken"));
    assert_eq!(failed[0].reason, "RetriesExceeded");
    assert!(
        err.to_string()
            .contains("Failed to install after 1 attempt(s)"),
        "{err}"
    );
}
