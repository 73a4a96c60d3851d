//! What upgrades look like through the lab's Kubernetes API: Node nodeInfo
//! (boot ID, kubelet version, OS image) following the node, the control-plane
//! mirror pods following the config's images with `talos.dev/config-version`,
//! PodDisruptionBudgets with status and the Eviction API's 429 carrying the
//! budget, Talos's own cordon and drain during a legacy upgrade (uncordoned
//! after the boot only when Talos cordoned), and GitOps objects not Ready
//! while their node is away. One lab (subnet 127.0.34.0/24), phases in order.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab;
use endsys_bootstrap::talos::{ApplyMode, LegacyUpgrade};
use endsys_lab::kube::flux;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, EvictParams, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kubelab::up_lab;
use serde_json::json;

const PHASE: Duration = Duration::from_secs(60);

async fn phase<T>(lab: &endsys_lab::Lab, what: &str, f: impl Future<Output = T>) -> T {
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(PHASE, f).await;
    eprintln!("phase {what}: {:?}", t.elapsed());
    match r {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}\n{}", lab.report()),
    }
}

fn pp() -> PatchParams {
    PatchParams::apply("lab-upgrade-test").force()
}

async fn node_where(
    lab: &endsys_lab::Lab,
    nodes: &Api<Node>,
    name: &str,
    what: &str,
    f: impl Fn(&Node) -> bool,
) -> Node {
    phase(lab, what, async {
        await_condition(nodes.clone(), name, move |n: Option<&Node>| {
            n.is_some_and(&f)
        })
        .await
        .unwrap()
        .unwrap()
    })
    .await
}

async fn pod_where(
    lab: &endsys_lab::Lab,
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    f: impl Fn(&Pod) -> bool,
) -> Pod {
    phase(lab, what, async {
        await_condition(pods.clone(), name, move |p: Option<&Pod>| p.is_some_and(&f))
            .await
            .unwrap()
            .unwrap()
    })
    .await
}

fn info(n: &Node) -> k8s_openapi::api::core::v1::NodeSystemInfo {
    n.status.as_ref().unwrap().node_info.clone().unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn config_version(p: &Pod) -> String {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("talos.dev/config-version").cloned())
        .unwrap_or_default()
}

fn pod(name: &str, node: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx:1.29"}]}})
}

fn evict_cause(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => {
            let cause = s
                .details
                .as_ref()
                .and_then(|d| d.causes.first())
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| s.message.clone());
            (s.code, cause)
        }
        other => panic!("not an API answer: {other}"),
    }
}

/// kube-rs 5 retries 429 answers (15 times, exponential backoff from 5 ms) by
/// default, which would hide the eviction answers this test reads.
async fn no_retry_client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

fn lab_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux-tree")
}

#[tokio::test]
async fn upgrades_as_the_kubernetes_api_shows_them() {
    let kc = up_lab(lab(34, 3, 3, "v1.12.11").await, "k34").await;
    let lab = &kc.lab;
    let c = no_retry_client(&kc.kubeconfig).await;
    let nodes: Api<Node> = Api::all(c.clone());

    // nodeInfo follows the node: boot ID, kubelet image tag, Talos version.
    let n1 = node_where(lab, &nodes, "node1", "node1 posts its boot ID", |n| {
        n.status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .is_some_and(|i| i.boot_id == kc.lab.nodes()[0].boot_id())
    })
    .await;
    assert_eq!(info(&n1).kubelet_version, endsys_lab::kube::KUBE_VERSION);
    assert_eq!(info(&n1).os_image, "Talos (v1.12.11)");

    // Mirror pods of the control-plane static pods, Ready, image from the config.
    let system: Api<Pod> = Api::namespaced(c.clone(), "kube-system");
    let api1 = pod_where(
        lab,
        &system,
        "kube-apiserver-node1",
        "apiserver mirror pod",
        ready,
    )
    .await;
    assert_eq!(
        image(&api1),
        format!(
            "registry.k8s.io/kube-apiserver:{}",
            endsys_lab::kube::KUBE_VERSION
        )
    );
    assert_eq!(config_version(&api1), "1");
    for p in ["kube-controller-manager-node3", "kube-scheduler-node2"] {
        pod_where(lab, &system, p, p, ready).await;
    }
    // A config naming new images: the static pod and the kubelet follow.
    let cfg = kc
        .cluster
        .machine_config("node1", "controlplane", &kc.ips[0])
        .replacen(
            "cluster:\n",
            "cluster:\n  apiServer:\n    image: registry.k8s.io/kube-apiserver:v1.36.0\n",
            1,
        )
        .replacen(
            "machine:\n",
            "machine:\n  kubelet:\n    image: ghcr.io/siderolabs/kubelet:v1.36.0\n",
            1,
        );
    kc.admin
        .apply_configuration(cfg.as_bytes(), ApplyMode::NoReboot, false)
        .await
        .unwrap();
    let api1 = pod_where(
        lab,
        &system,
        "kube-apiserver-node1",
        "new apiserver image",
        |p| image(p) == "registry.k8s.io/kube-apiserver:v1.36.0" && ready(p),
    )
    .await;
    assert_eq!(config_version(&api1), "2");
    // node1 serves the endpoint: the API reports its apiserver's version.
    let v = c.apiserver_version().await.unwrap();
    assert_eq!(
        (v.git_version.as_str(), v.minor.as_str()),
        ("v1.36.0", "36")
    );
    node_where(lab, &nodes, "node1", "kubelet v1.36.0", |n| {
        info(n).kubelet_version == "v1.36.0"
    })
    .await;

    // PodDisruptionBudgets: status from the pods, 429 with the budget.
    let ns: Api<Namespace> = Api::all(c.clone());
    ns.patch(
        "shop",
        &pp(),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        ),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "shop");
    for (name, app) in [
        ("web-1", "web"),
        ("web-2", "web"),
        ("cart-1", "cart"),
        ("loose-1", "loose"),
    ] {
        pods.patch(name, &pp(), &Patch::Apply(pod(name, "node3", app)))
            .await
            .unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "shop");
    for (name, app, min) in [
        ("web", "web", 2),
        ("cart-a", "cart", 0),
        ("cart-b", "cart", 0),
    ] {
        pdbs.patch(
            name,
            &pp(),
            &Patch::Apply(
                json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"minAvailable": min, "selector": {"matchLabels": {"app": app}}}}),
            ),
        )
        .await
        .unwrap();
    }
    phase(lab, "PDB web observed", async {
        await_condition(pdbs.clone(), "web", |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(1) && s.current_healthy == 2)
        })
        .await
        .unwrap()
    })
    .await;
    let (code, cause) = evict_cause(
        pods.evict("web-1", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 429);
    assert_eq!(
        cause,
        "DisruptionBudget: The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    let (code, _) = evict_cause(
        pods.evict("cart-1", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500, "two budgets on one pod");
    pdbs.patch(
        "web",
        &pp(),
        &Patch::Apply(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        ),
    )
    .await
    .unwrap();
    phase(lab, "PDB web allows one", async {
        await_condition(pdbs.clone(), "web", |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(2) && s.disruptions_allowed == 1)
        })
        .await
        .unwrap()
    })
    .await;
    pods.evict("web-1", &EvictParams::default()).await.unwrap();
    assert!(pods.get_opt("web-1").await.unwrap().is_none());
    let (code, cause) = evict_cause(
        pods.evict("web-2", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, cause.as_str()),
        (
            429,
            "DisruptionBudget: The disruption budget web needs 1 healthy pods and has 1 currently"
        )
    );

    // A legacy upgrade: Talos cordons (annotated), drains what budgets allow,
    // and uncordons after the boot; a node cordoned by someone else stays so.
    let boot3 = lab.nodes()[2].boot_id();
    let node3 = lab.nodes()[2].ip().to_string();
    let admin3 = common::mtls(&node3, kc.cluster.credentials(&["os:admin"]));
    admin3
        .upgrade_legacy(&LegacyUpgrade {
            image: "ghcr.io/siderolabs/installer:v1.13.9".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    node_where(lab, &nodes, "node3", "node3 cordoned by Talos", |n| {
        n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
            && n.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.get("talos.dev/cordoned").map(String::as_str) == Some("true"))
    })
    .await;
    phase(lab, "loose-1 drained", async {
        await_condition(pods.clone(), "loose-1", conditions::is_deleted(""))
            .await
            .unwrap()
    })
    .await;
    let n3 = node_where(lab, &nodes, "node3", "node3 back, uncordoned", |n| {
        info(n).boot_id != boot3 && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(false)
    })
    .await;
    assert_eq!(info(&n3).os_image, "Talos (v1.13.9)");
    assert_eq!(info(&n3).boot_id, lab.nodes()[2].boot_id());
    assert!(
        !n3.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("talos.dev/cordoned"),
        "the annotation goes with the uncordon"
    );
    assert!(
        pods.get_opt("web-2").await.unwrap().is_some(),
        "the budget kept web-2"
    );

    nodes
        .patch(
            "node2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let boot2 = lab.nodes()[1].boot_id();
    let admin2 = common::mtls(&kc.ips[1], kc.cluster.credentials(&["os:admin"]));
    admin2
        .upgrade_legacy(&LegacyUpgrade {
            image: "ghcr.io/siderolabs/installer:v1.13.9".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let n2 = node_where(lab, &nodes, "node2", "node2 back", |n| {
        info(n).boot_id != boot2
    })
    .await;
    assert_eq!(
        n2.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "not cordoned by Talos: left cordoned"
    );

    // GitOps objects tied to a node: not Ready while it is away.
    flux_installed(lab, &c).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    );
    let ks: Api<DynamicObject> = Api::namespaced_with(c.clone(), "flux-system", &ar);
    let ks_ready = |want: &'static str| {
        move |o: Option<&DynamicObject>| {
            o.and_then(|o| o.data.pointer("/status/conditions"))
                .and_then(|c| c.as_array())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == want)
                })
        }
    };
    phase(lab, "cluster-meta Ready", async {
        await_condition(ks.clone(), "cluster-meta", ks_ready("True"))
            .await
            .unwrap()
    })
    .await;
    lab.kube().set_not_ready_while_node_away(
        "Kustomization",
        "flux-system",
        "cluster-meta",
        "node3",
    );
    // node1 serves the API endpoint: node3 goes away.
    lab.nodes()[2].power_off().await;
    let away = phase(lab, "cluster-meta not Ready while node3 is away", async {
        await_condition(ks.clone(), "cluster-meta", ks_ready("False"))
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        away.data.to_string().contains("HealthCheckFailed"),
        "{}",
        away.data
    );
    lab.nodes()[2].power_on().await;
    phase(lab, "cluster-meta Ready again", async {
        await_condition(ks.clone(), "cluster-meta", ks_ready("True"))
            .await
            .unwrap()
    })
    .await;
}

/// Flux from the fixture tree (the lab's flux-operator), with the sops key.
async fn flux_installed(lab: &endsys_lab::Lab, c: &kube::Client) {
    use age::secrecy::ExposeSecret;
    let ns: Api<Namespace> = Api::all(c.clone());
    ns.patch(
        "flux-system",
        &pp(),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        ),
    )
    .await
    .unwrap();
    let id = age::x25519::Identity::generate();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(c.clone(), "flux-system");
    secrets
        .patch(
            "sops-age",
            &pp(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "sops-age", "namespace": "flux-system"},
                "stringData": {"age.agekey": id.to_string().expose_secret()}})),
        )
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.patch(
        "fluxinstances.fluxcd.controlplane.io",
        &pp(),
        &Patch::Apply(flux::fluxinstance_crd()),
    )
    .await
    .unwrap();
    phase(lab, "FluxInstance CRD", async {
        await_condition(
            crds,
            "fluxinstances.fluxcd.controlplane.io",
            conditions::is_crd_established(),
        )
        .await
        .unwrap()
    })
    .await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("fluxcd.controlplane.io", "v1", "FluxInstance"),
        "fluxinstances",
    );
    let fi: Api<DynamicObject> = Api::namespaced_with(c.clone(), "flux-system", &ar);
    fi.patch(
        "flux",
        &pp(),
        &Patch::Apply(flux::fluxinstance(&lab_tree(), "flux/cluster")),
    )
    .await
    .unwrap();
}
