//! The recovery tests' cluster: a 3-control-plane lab brought up by `up`, with
//! the Kubernetes objects a disaster must not lose, an etcd snapshot and its
//! sidecar; the disaster itself and the checks that the objects came back.
//! Included with `#[path]` next to `fixture.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{Cluster, ClusterSource, Doctor, Emitter, StepId};
use endsys_bootstrap::flows::backup::take_backup;
use endsys_bootstrap::flows::recover::RecoverOptions;
use endsys_bootstrap::flows::up::{up, UpOptions};
use endsys_bootstrap::snapshot::BackupMeta;
use endsys_lab::{Lab, NodeState};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::fixture::{start_lab, up_options, Deadlines};
use crate::memory::{MemorySecrets, MemorySource};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn options(dir: &Path, until: StepId) -> UpOptions {
    let mut o = up_options(
        dir,
        until,
        Deadlines {
            node: WAIT,
            reach: Duration::from_secs(30),
            retry_budget: Duration::from_secs(10),
        },
    );
    o.apiserver_deadline = WAIT;
    o
}

/// A lab cluster brought up by `up`, with the objects a disaster must not lose.
pub struct Fixture {
    pub lab: Lab,
    pub src: Arc<MemorySource>,
    pub dir: tempfile::TempDir,
    pub opts: UpOptions,
    pub snapshot: PathBuf,
    pub meta: BackupMeta,
    pub scale: f64,
    /// `up` ran through the Flux layers (the app has no Kustomization of its own).
    pub flux: bool,
}

pub fn kustomization_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    )
}

pub async fn client(dir: &Path) -> kube::Client {
    let bytes = std::fs::read(dir.join("kubeconfig")).unwrap();
    endsys_bootstrap::kube::client_from_kubeconfig(&bytes)
        .await
        .unwrap()
}

pub async fn apply(c: &kube::Client, ar: &ApiResource, ns: Option<&str>, obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, ar),
        None => Api::all_with(c.clone(), ar),
    };
    api.patch(
        &name,
        &PatchParams::apply("day2-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
}

pub fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Installs CRDs and waits until they are served.
pub async fn install_crds(c: &kube::Client, crds: Vec<Value>) {
    let crd_ar = ar(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        apply(c, &crd_ar, None, crd).await;
        let api: Api<DynamicObject> = Api::all_with(c.clone(), &crd_ar);
        let established = |o: Option<&DynamicObject>| {
            o.and_then(|o| o.data.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
        };
        tokio::time::timeout(
            WAIT,
            kube::runtime::wait::await_condition(api, &name, established),
        )
        .await
        .expect("CRD established")
        .unwrap();
    }
}

/// The objects of "before the disaster": an app namespace, a ConfigMap with data,
/// and (`with_ks`) its own Flux Kustomization. With Flux running the cluster's
/// Kustomizations come from the Git tree instead (a hand-made one pointing at a
/// path the tree lacks would never be Ready).
pub async fn create_app(c: &kube::Client, ns: &str, with_ks: bool) {
    let ns_ar = ar("", "v1", "Namespace", "namespaces");
    apply(
        c,
        &ns_ar,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    apply(
        c,
        &ar("", "v1", "ConfigMap", "configmaps"),
        Some(ns),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": ns},
            "data": {"albums": "1337"}}),
    )
    .await;
    if !with_ks {
        return;
    }
    apply(
        c,
        &kustomization_ar(),
        Some(ns),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"interval": "1h", "path": format!("./apps/{ns}/app"), "prune": true,
                "targetNamespace": ns,
                "sourceRef": {"kind": "GitRepository", "name": "flux-system", "namespace": "flux-system"}}}),
    )
    .await;
}

pub fn flux_kustomization_crd() -> Value {
    endsys_lab::kube::flux::flux_crds()
        .into_iter()
        .find(|c| c["metadata"]["name"] == "kustomizations.kustomize.toolkit.fluxcd.io")
        .unwrap()
}

/// `up` through `until`, objects created, snapshot + sidecar written.
pub async fn fixture(subnet: u8, scale: f64, until: StepId, name: &str) -> Fixture {
    let lab = start_lab(subnet, 3, 3, scale).await;
    let src = Arc::new(MemorySource::new(
        lab_definition(&lab, 3, name),
        Some(MemorySecrets::generate().unwrap()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), until);
    if until > StepId::Apiserver {
        let repo = dir.path().join("repo");
        endsys_lab::repository::write_repo(&repo).unwrap();
        if until > StepId::Layer1Done {
            // Layer 2 on: Flux fetches the lab repository from the lab's Git URL.
            lab.kube()
                .serve_git(endsys_lab::repository::GIT_URL, repo.clone());
        }
        opts.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).unwrap());
    }
    let flux = until > StepId::Layer1Done;
    up(&*src as &dyn ClusterSource, &opts, &Emitter::new())
        .await
        .expect("up");
    let c = client(dir.path()).await;
    if !flux {
        install_crds(&c, vec![flux_kustomization_crd()]).await;
    }
    create_app(&c, "photos", !flux).await;
    // The backup, as `etcd backup` takes it: the inventory through the state
    // directory's kubeconfig, then the snapshot, then the sidecar.
    let cluster = Cluster::load(&*src, dir.path()).unwrap();
    let snapshot = dir.path().join("etcd.db");
    let meta = take_backup(&cluster, opts.policy, &snapshot)
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    let inv = meta.kubernetes.inventory().expect("inventory recorded");
    assert!(inv.namespaces.contains(&"photos".to_string()), "{inv:?}");
    if flux {
        assert!(
            inv.kustomizations
                .contains(&"flux-system/flux-system".to_string()),
            "{inv:?}"
        );
    } else {
        assert_eq!(inv.kustomizations, ["photos/app"]);
    }
    assert!(inv.resource_version.is_some());
    Fixture {
        lab,
        src,
        dir,
        opts,
        snapshot,
        meta,
        scale,
        flux,
    }
}

/// Every disk dies: nodes power off, lose config and etcd data, boot into maintenance.
pub async fn disaster(lab: &Lab) {
    for n in lab.nodes() {
        n.wipe_disk().await;
        n.power_on().await;
    }
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Maintenance);
    }
}

pub fn recover_options(f: &Fixture, reset_nodes: bool) -> RecoverOptions {
    let mut o = RecoverOptions::new(f.opts.clone());
    o.snapshot = Some(f.snapshot.clone());
    o.reset_nodes = reset_nodes;
    o.verify_deadline = WAIT;
    o
}

/// The objects from before the disaster, read through the API.
pub async fn assert_objects_back(f: &Fixture) {
    let dir = f.dir.path();
    let c = client(dir).await;
    let cm: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "photos");
    let settings = cm
        .get("settings")
        .await
        .expect("ConfigMap from the snapshot");
    assert_eq!(settings.data.unwrap()["albums"], "1337");
    if !f.flux {
        let ks: Api<DynamicObject> = Api::namespaced_with(c, "photos", &kustomization_ar());
        ks.get("app")
            .await
            .expect("Kustomization from the snapshot");
    }
}
