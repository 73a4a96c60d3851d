//! The tracker against the lab's Flux: every layer Ready in dependsOn order, a
//! re-run changes nothing; a missing `sops-age`, a Kustomization that never
//! becomes Ready and a HelmRelease that fails terminally are reported with
//! their messages and dependents. And the lab's Flux itself: a FluxInstance
//! syncing a Git URL served by the lab's Git host, its status like
//! flux-operator's, and helm-controller adopting the bootstrap charts the tool
//! applied (install, upgrade, ownership refusal).

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use endsys_bootstrap::gitops::{walk, ItemState, Key, Kind, LayerMap, TrackError, Tracker};
use endsys_lab::kube::flux;
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
    install_instance(client, flux::fluxinstance(tree, "flux/cluster")).await;
}

async fn install_instance(client: &kube::Client, instance: serde_json::Value) {
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
    fi.patch("flux", &pp(), &Patch::Apply(instance))
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

const HOME_OPS: &str = "https://github.com/endsys-lab/home-ops.git";
const COMMIT: &str = "4f2c1e0d9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const STEP: Duration = Duration::from_secs(30);

/// The fixture tree as a Git checkout whose `main` is packed at [`COMMIT`].
fn checkout() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_tree(&lab_tree(), tmp.path());
    std::fs::create_dir_all(tmp.path().join(".git/refs/heads")).expect("mkdir");
    std::fs::write(tmp.path().join(".git/HEAD"), "ref: refs/heads/main\n").expect("HEAD");
    std::fs::write(
        tmp.path().join(".git/packed-refs"),
        format!("# pack-refs with: peeled fully-peeled sorted\n{COMMIT} refs/heads/main\n"),
    )
    .expect("packed-refs");
    tmp
}

fn flux_api(
    client: &kube::Client,
    gvk: (&str, &str, &str),
    plural: &str,
    ns: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(gvk.0, gvk.1, gvk.2), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn hr_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    flux_api(
        client,
        ("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
        ns,
    )
}

/// A condition of a Flux object: (status, reason, message).
fn condition(o: &DynamicObject, ty: &str) -> Option<(String, String, String)> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (f("status"), f("reason"), f("message"))
        })
}

/// Waits (on a watch) until the object's condition `ty` has `status`.
async fn until(
    api: &Api<DynamicObject>,
    name: &str,
    ty: &'static str,
    status: &'static str,
) -> DynamicObject {
    let found = tokio::time::timeout(
        STEP,
        await_condition(api.clone(), name, move |o: Option<&DynamicObject>| {
            o.and_then(|o| condition(o, ty))
                .is_some_and(|c| c.0 == status)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: {ty}={status} in time"))
    .expect("watch");
    found.unwrap_or_else(|| panic!("{name} exists"))
}

/// What the tool does for a bootstrap chart: render (here: the lab's
/// pre-rendered manifests), stamp Helm ownership, server-side apply.
async fn apply_chart(
    client: &kube::Client,
    release: &str,
    ns: &str,
) -> Vec<endsys_bootstrap::kube::Applied> {
    let text = endsys_lab::repository::prerendered(release).expect("pre-rendered chart");
    let mut objs = endsys_bootstrap::kube::parse_manifests(text, release).expect("manifests");
    endsys_bootstrap::charts::add_ownership(&mut objs, release, ns);
    let mut applier = endsys_bootstrap::kube::Applier::new(client.clone())
        .await
        .expect("applier");
    applier.apply_all(objs, ns).await.expect("apply")
}

async fn helm_secrets(client: &kube::Client, ns: &str) -> BTreeSet<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .list(&ListParams::default().labels("owner=helm"))
        .await
        .expect("secrets")
        .items
        .into_iter()
        .map(|s| {
            (
                s.metadata.name.unwrap_or_default(),
                s.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn git_url_instance_status_and_helm_adoption_of_bootstrap_charts() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use kube::ResourceExt;
    let kc = up(204, "g204").await;
    let client = client(&kc.kubeconfig).await;
    seed(&client, true).await;
    // The tool's layer 1: Cilium from `helm template` + SSA with Helm metadata.
    apply_chart(&client, "cilium", "kube-system").await;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let cilium_uid = dss.get("cilium").await.expect("cilium").uid();

    // A Git URL nobody serves fails the sync source like source-controller.
    install_instance(
        &client,
        flux::fluxinstance_for_url(HOME_OPS, "flux/cluster"),
    )
    .await;
    let git = flux_api(
        &client,
        ("source.toolkit.fluxcd.io", "v1", "GitRepository"),
        "gitrepositories",
        "flux-system",
    );
    let failed = until(&git, "flux-system", "Ready", "False").await;
    assert_eq!(
        condition(&failed, "Ready").expect("Ready"),
        (
            "False".into(),
            "GitOperationFailed".into(),
            format!("failed to checkout and determine revision: unable to clone '{HOME_OPS}': repository not found")
        )
    );
    let fis = flux_api(
        &client,
        ("fluxcd.controlplane.io", "v1", "FluxInstance"),
        "fluxinstances",
        "flux-system",
    );
    let fi = until(&fis, "flux", "Ready", "False").await;
    let (_, _, msg) = condition(&fi, "Ready").expect("Ready");
    assert!(msg.contains(HOME_OPS), "{msg}");

    // Served: the revision is the commit `main` points at.
    let repo = checkout();
    kc.lab.kube().serve_git(HOME_OPS, repo.path().to_path_buf());
    let fi = until(&fis, "flux", "Ready", "True").await;
    assert_eq!(
        condition(&fi, "Ready").expect("Ready").1,
        "ReconciliationSucceeded"
    );
    let st = &fi.data["status"];
    assert_eq!(st["observedGeneration"], 1);
    let applied = st["lastAppliedRevision"]
        .as_str()
        .expect("lastAppliedRevision");
    assert!(applied.starts_with("v2.8.8@sha256:"), "{applied}");
    let names: Vec<&str> = st["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "source-controller",
            "kustomize-controller",
            "helm-controller",
            "notification-controller"
        ]
    );
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "flux-system");
    for n in names {
        let d = deps.get(n).await.expect("controller Deployment");
        assert_eq!(d.labels()["app.kubernetes.io/part-of"], "flux");
        assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1), "{n}");
    }
    let revision = format!("refs/heads/main@sha1:{COMMIT}");
    let g = git.get("flux-system").await.expect("GitRepository");
    assert_eq!(g.data["status"]["artifact"]["revision"], revision.as_str());
    let ks = flux_api(
        &client,
        ("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
        "flux-system",
    );
    let root = until(&ks, "flux-system", "Ready", "True").await;
    assert_eq!(
        root.data["status"]["lastAppliedRevision"],
        revision.as_str()
    );
    assert_eq!(
        root.data["status"]["lastAttemptedRevision"],
        revision.as_str()
    );

    // helm-controller installs the cilium release over the tool's objects.
    let hrs = hr_api(&client, "kube-system");
    let hr = until(&hrs, "cilium", "Ready", "True").await;
    let msg = "Helm install succeeded for release kube-system/cilium.v1 with chart cilium@1.0.0";
    assert_eq!(
        condition(&hr, "Ready").expect("Ready"),
        ("True".into(), "InstallSucceeded".into(), msg.into())
    );
    assert_eq!(condition(&hr, "Released").expect("Released").0, "True");
    let st = &hr.data["status"];
    assert_eq!(st["lastAttemptedReleaseAction"], "install");
    assert_eq!(st["lastAttemptedRevision"], "1.0.0");
    let h = &st["history"][0];
    for (k, v) in [
        ("name", "cilium"),
        ("namespace", "kube-system"),
        ("status", "deployed"),
        ("chartName", "cilium"),
        ("chartVersion", "1.0.0"),
    ] {
        assert_eq!(h[k], v, "history {k}");
    }
    assert_eq!(h["version"], 1);
    assert!(
        h["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{h}"
    );
    let ds = dss.get("cilium").await.expect("cilium");
    assert_eq!(ds.uid(), cilium_uid, "adopted, not recreated");
    assert_eq!(ds.labels()["helm.toolkit.fluxcd.io/name"], "cilium");
    assert_eq!(
        ds.labels()["helm.toolkit.fluxcd.io/namespace"],
        "kube-system"
    );
    let managers: BTreeSet<String> = ds
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains("helm-controller") && managers.contains("endsys-bootstrap"),
        "{managers:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let rel = secrets
        .get("sh.helm.release.v1.cilium.v1")
        .await
        .expect("release Secret");
    assert_eq!(rel.type_.as_deref(), Some("helm.sh/release.v1"));
    for (k, v) in [
        ("owner", "helm"),
        ("name", "cilium"),
        ("status", "deployed"),
        ("version", "1"),
    ] {
        assert_eq!(rel.labels()[k], v, "label {k}");
    }

    // A re-run of the tool's layer 1 changes nothing Flux reports.
    let hr_before = hrs.get("cilium").await.expect("hr").resource_version();
    let fi_before = fis.get("flux").await.expect("fi").resource_version();
    let stored = helm_secrets(&client, "kube-system").await;
    let again = apply_chart(&client, "cilium", "kube-system").await;
    assert!(
        again
            .iter()
            .all(|a| a.change == endsys_bootstrap::kube::Change::Unchanged),
        "{:?}",
        again
            .iter()
            .map(|a| (&a.name, &a.change))
            .collect::<Vec<_>>()
    );
    install_instance(
        &client,
        flux::fluxinstance_for_url(HOME_OPS, "flux/cluster"),
    )
    .await;
    let settle = tokio::time::timeout(
        Duration::from_secs(2),
        await_condition(hrs.clone(), "cilium", |o: Option<&DynamicObject>| {
            o.is_some_and(|o| condition(o, "Ready").is_none_or(|c| c.0 != "True"))
        }),
    )
    .await;
    assert!(settle.is_err(), "the HelmRelease left Ready after a re-run");
    assert_eq!(
        hrs.get("cilium").await.expect("hr").resource_version(),
        hr_before
    );
    assert_eq!(
        fis.get("flux").await.expect("fi").resource_version(),
        fi_before
    );
    assert_eq!(helm_secrets(&client, "kube-system").await, stored);
}

#[tokio::test]
async fn helm_controller_upgrades_takes_ownership_and_refuses_like_helm() {
    use kube::ResourceExt;
    let kc = up(205, "g205").await;
    let client = client(&kc.kubeconfig).await;
    seed(&client, false).await;
    install_flux(&client, &lab_tree()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "helmreleases.helm.toolkit.fluxcd.io",
        "ocirepositories.source.toolkit.fluxcd.io",
    ] {
        tokio::time::timeout(
            STEP,
            await_condition(crds.clone(), crd, conditions::is_crd_established()),
        )
        .await
        .expect("established in time")
        .expect("watch");
    }
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let owned_cm = |name: &str, release: &str, release_ns: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": release_ns}},
            "data": {"k": "v"}})
    };
    let hrs = hr_api(&client, "default");
    let apply = |api: Api<DynamicObject>, name: String, body: serde_json::Value| async move {
        api.patch(&name, &pp(), &Patch::Apply(body))
            .await
            .expect("apply");
    };
    let hr = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    };

    // Take-ownership off: an object of another release namespace is refused.
    cms.patch(
        "demo-config",
        &pp(),
        &Patch::Apply(owned_cm("demo-config", "demo", "other")),
    )
    .await
    .expect("cm");
    apply(
        hrs.clone(),
        "demo".into(),
        hr(
            "demo",
            json!({"chart": {"spec": {"chart": "demo", "version": "1.0.0"}},
        "install": {"disableTakeOwnership": true}}),
        ),
    )
    .await;
    let refused = until(&hrs, "demo", "Stalled", "True").await;
    let msg = "Helm install failed for release default/demo with chart demo@1.0.0: unable to continue with install: ConfigMap \"demo-config\" in namespace \"default\" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key \"meta.helm.sh/release-namespace\" must equal \"default\": current value is \"other\"";
    assert_eq!(
        condition(&refused, "Ready").expect("Ready"),
        ("False".into(), "InstallFailed".into(), msg.into())
    );
    assert_eq!(
        condition(&refused, "Released").expect("Released").1,
        "InstallFailed"
    );
    assert_eq!(
        condition(&refused, "Stalled").expect("Stalled"),
        (
            "True".into(),
            "RetriesExceeded".into(),
            "Failed to install after 1 attempt(s)".into()
        )
    );
    assert!(
        cms.get("demo-config").await.expect("cm").annotations()["meta.helm.sh/release-namespace"]
            == "other"
    );

    // Take-ownership on (helm-controller's default): the object is taken over.
    cms.patch(
        "taken",
        &pp(),
        &Patch::Apply(owned_cm("taken", "taker", "elsewhere")),
    )
    .await
    .expect("cm");
    let uid = cms.get("taken").await.expect("cm").metadata.uid;
    apply(
        hrs.clone(),
        "taker".into(),
        hr(
            "taker",
            json!({"chart": {"spec": {"chart": "taker", "version": "0.3.0"}}}),
        ),
    )
    .await;
    until(&hrs, "taker", "Ready", "True").await;
    let taken = cms.get("taken").await.expect("cm");
    assert_eq!(taken.metadata.uid, uid);
    assert_eq!(
        taken.annotations()["meta.helm.sh/release-namespace"],
        "default"
    );
    assert_eq!(taken.labels()["helm.toolkit.fluxcd.io/name"], "taker");

    // A release already in storage is upgraded; the chart comes from an OCIRepository.
    let oci = flux_api(
        &client,
        ("source.toolkit.fluxcd.io", "v1", "OCIRepository"),
        "ocirepositories",
        "default",
    );
    apply(
        oci,
        "up-chart".into(),
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "up-chart", "namespace": "default"},
        "spec": {"url": "oci://ghcr.io/endsys-lab/charts/upchart", "ref": {"tag": "2.0.1"}}}),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .patch(
            "sh.helm.release.v1.up.v1",
            &pp(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
        "type": "helm.sh/release.v1",
        "metadata": {"name": "sh.helm.release.v1.up.v1", "namespace": "default",
            "labels": {"owner": "helm", "name": "up", "status": "deployed", "version": "1"}},
        "data": {"release": ""}})),
        )
        .await
        .expect("release v1");
    apply(
        hrs.clone(),
        "up".into(),
        hr(
            "up",
            json!({"chartRef": {"kind": "OCIRepository", "name": "up-chart"}}),
        ),
    )
    .await;
    let up_hr = until(&hrs, "up", "Ready", "True").await;
    assert_eq!(
        condition(&up_hr, "Ready").expect("Ready"),
        (
            "True".into(),
            "UpgradeSucceeded".into(),
            "Helm upgrade succeeded for release default/up.v2 with chart upchart@2.0.1".into()
        )
    );
    assert_eq!(
        up_hr.data["status"]["lastAttemptedReleaseAction"],
        "upgrade"
    );
    assert_eq!(up_hr.data["status"]["history"][0]["version"], 2);
    assert_eq!(
        secrets
            .get("sh.helm.release.v1.up.v2")
            .await
            .expect("v2")
            .labels()["status"],
        "deployed"
    );
    assert_eq!(
        secrets
            .get("sh.helm.release.v1.up.v1")
            .await
            .expect("v1")
            .labels()["status"],
        "superseded"
    );
}
