//! The apply engine and readiness waits against the lab's simulated Kubernetes API.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::time::Duration;

use endsys_bootstrap::kube::wait::{wait_all, wait_nodes, wait_ready};
use endsys_bootstrap::kube::{
    client_from_kubeconfig, parse_manifests, Applier, Change, KubeError, Tally,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kubelab::{up, WAIT};
use serde_json::json;

const BUNDLE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx:1.29}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: apps}
spec: {size: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: a}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
"#;

#[tokio::test]
async fn apply_orders_namespaces_crds_then_the_rest_and_is_idempotent() {
    let kc = up(171, "k171").await;
    let client = client_from_kubeconfig(kc.kubeconfig.as_bytes())
        .await
        .expect("client from the streamed kubeconfig");
    let mut applier = Applier::new(client.clone()).await.expect("discovery");
    let objs = parse_manifests(BUNDLE, "bundle.yaml").expect("parses");
    // A custom resource before its CRD, in a namespace declared last: the
    // engine applies the namespace, the CRD, waits Established, rediscovers.
    let first = applier
        .apply_all(objs.clone(), "apps")
        .await
        .expect("applies");
    let order: Vec<String> = first.iter().map(|a| a.gvk.kind.clone()).collect();
    assert_eq!(
        order,
        [
            "Namespace",
            "CustomResourceDefinition",
            "ConfigMap",
            "Deployment",
            "Widget"
        ]
    );
    assert!(first.iter().all(|a| a.change == Change::Created));
    assert_eq!(
        first[2].namespace.as_deref(),
        Some("apps"),
        "default namespace"
    );
    let widget = kc
        .lab
        .kube()
        .get("Widget", Some("apps"), "w1")
        .expect("custom resource stored");
    assert_eq!(widget["spec"]["size"], 3);

    // No CNI yet: the Deployment cannot schedule; the wait says why.
    match wait_all(&client, &first, Duration::from_millis(300)).await {
        Err(KubeError::Timeout { object, status, .. }) => {
            assert_eq!(object, "Deployment apps/web");
            assert!(status.contains("node.kubernetes.io/not-ready"), "{status}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A re-run changes nothing.
    let served = kc.lab.kube().requests_served();
    let again = applier
        .apply_all(objs.clone(), "apps")
        .await
        .expect("re-applies");
    let tally = Tally::of(&again);
    assert!(tally.is_noop(), "re-run changed something: {tally}");
    assert_eq!(tally.unchanged, 5);
    assert!(kc.lab.kube().requests_served() > served);

    // A changed field is reported as changed.
    let edited = BUNDLE.replace("mode: a", "mode: b");
    let third = applier
        .apply_all(
            parse_manifests(&edited, "edited.yaml").expect("parses"),
            "apps",
        )
        .await
        .expect("applies");
    let t = Tally::of(&third);
    assert_eq!((t.created, t.changed, t.unchanged), (0, 1, 4));
}

#[tokio::test]
async fn ssa_conflicts_are_typed_and_force_takes_over() {
    let kc = up(172, "k172").await;
    let client = client_from_kubeconfig(kc.kubeconfig.as_bytes())
        .await
        .expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.patch(
        "owned",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"k": "theirs"}})),
    )
    .await
    .expect("other manager applies");
    let mut applier = Applier::new(client.clone()).await.expect("discovery");
    let ours = parse_manifests(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned}\ndata: {k: ours}\n",
        "ours.yaml",
    )
    .expect("parses");
    match applier.apply_all(ours.clone(), "default").await {
        Err(KubeError::Conflict { object, detail }) => {
            assert_eq!(object, "ConfigMap default/owned");
            assert!(detail.contains("someone-else"), "{detail}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let cm = cms.get("owned").await.expect("get");
    assert_eq!(cm.data.expect("data")["k"], "theirs", "nothing changed");
    applier.force = true;
    let done = applier.apply_all(ours, "default").await.expect("forced");
    assert_eq!(done[0].change, Change::Changed);
    let cm = cms.get("owned").await.expect("get");
    assert_eq!(cm.data.expect("data")["k"], "ours");
}

#[tokio::test]
async fn waits_watch_nodes_and_time_out_with_the_blocking_status() {
    let kc = up(173, "k173").await;
    let client = client_from_kubeconfig(kc.kubeconfig.as_bytes())
        .await
        .expect("client");
    // Registered but NotReady: no CNI yet.
    let nodes = wait_nodes(&client, 3, false, WAIT, |_| {})
        .await
        .expect("three nodes register");
    assert!(nodes.values().all(|n| !n.ready));
    match wait_nodes(&client, 3, true, Duration::from_millis(300), |_| {}).await {
        Err(KubeError::Timeout { status, .. }) => {
            assert!(status.contains("cni plugin not initialized"), "{status}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A workload whose image never pulls: the timeout names it and its status.
    kc.lab.kube().inject_stuck_image("stuck-image");
    let mut applier = Applier::new(client.clone()).await.expect("discovery");
    let objs = parse_manifests(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: cilium, namespace: kube-system, labels: {k8s-app: cilium}}
spec:
  selector: {matchLabels: {k8s-app: cilium}}
  template:
    metadata: {labels: {k8s-app: cilium}}
    spec: {hostNetwork: true, containers: [{name: agent, image: quay.io/cilium/cilium:v1.19.5}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck, namespace: default}
spec:
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec: {containers: [{name: s, image: example.com/stuck-image:1}]}
"#,
        "faults.yaml",
    )
    .expect("parses");
    let applied = applier.apply_all(objs, "default").await.expect("applies");
    wait_ready(&client, &applied[0], WAIT)
        .await
        .expect("the CNI rolls out");
    let ready = wait_nodes(&client, 3, true, WAIT, |_| {})
        .await
        .expect("nodes Ready after the CNI");
    assert!(ready.values().all(|n| n.ready));
    let t0 = std::time::Instant::now();
    match wait_ready(&client, &applied[1], Duration::from_millis(500)).await {
        Err(KubeError::Timeout { object, status, .. }) => {
            assert_eq!(object, "Deployment default/stuck");
            assert!(status.contains("0/1 ready"), "{status}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "the deadline holds");
}
