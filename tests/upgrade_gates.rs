//! The gates of `upgrade talos` that stop a rollout on the Kubernetes side: a
//! drain a PodDisruptionBudget blocks (named with the pod; `--force-drain`
//! passes), and GitOps layers not Ready (named; `--ignore-gitops` goes on,
//! loudly; an object not Ready only while its node is away is waited for).
//! Subnets 127.0.37.0/24 and 127.0.44.0/24.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/upgrade.rs"]
mod upgrade;

use std::time::Duration;

use endsys_bootstrap::engine::{Doctor, FlowError, GateError, StepId};
use endsys_bootstrap::flows::upgrade::upgrade_talos;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use upgrade::{cluster, cluster_until, Collect, Env, TEST_DEADLINE};

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn client(env: &Env) -> kube::Client {
    endsys_bootstrap::kube::client_from_kubeconfig(env.cluster.kubeconfig.as_ref().unwrap())
        .await
        .unwrap()
}

async fn apply(c: &kube::Client, ar: &ApiResource, ns: &str, obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), ns, ar);
    api.patch(
        &name,
        &PatchParams::apply("upgrade-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
}

/// A pod on worker1 that a budget protects: evicting it is refused with 429
/// and the budget's name; the upgrade stops on worker1, names both, leaves it
/// schedulable; `--force-drain` deletes the pod after the timeout and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_pdb_blocked_drain_names_pdb() {
    let env = cluster(37, "v1.13.8", 3, 1, 0.0).await;
    let c = client(&env).await;
    apply(
        &c,
        &ar("", "v1", "Pod", "pods"),
        "default",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "worker1", "containers": [{"name": "web", "image": "nginx:1.27"}]}}),
    )
    .await;
    apply(
        &c,
        &ar(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
        "default",
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web-pdb", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    let o = env.options();
    let col = Collect::default();
    let e = tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.cluster, &o, &col.emitter()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "within the deadline:\n{}\n{}",
            col.lines().join("\n"),
            env.lab.report()
        )
    })
    .expect_err("the drain of worker1 is blocked");
    let text = e.explain();
    assert!(
        matches!(&e, FlowError::Gate(g) if matches!(**g, GateError::DrainBlocked { .. })),
        "{text}"
    );
    assert!(text.contains("worker1"), "{text}");
    assert!(
        text.contains("default/web") && text.contains("default/web-pdb"),
        "{text}"
    );
    assert!(text.contains("--force-drain"), "{text}");
    // The control planes went first and are done; worker1 was not upgraded and
    // is schedulable again.
    for n in &env.lab.nodes()[..3] {
        assert_eq!(n.talos_version(), "v1.13.9");
    }
    assert_eq!(env.lab.nodes()[3].talos_version(), "v1.13.8");
    let w1 = env.lab.kube().get("Node", None, "worker1").unwrap();
    assert_ne!(w1["spec"]["unschedulable"], true, "worker1 left cordoned");
    // --force-drain: the pod is deleted past its budget; the rollout resumes at worker1.
    let mut o = env.options();
    o.force_drain = true;
    let col = Collect::default();
    let r = tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.reload(), &o, &col.emitter()),
    )
    .await
    .expect("within the deadline")
    .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), col.lines().join("\n")));
    assert!(r.resumed);
    let drain = col.of("worker1", StepId::Drain);
    assert!(
        drain
            .iter()
            .any(|l| l.contains("deleted past their budget") && l.contains("default/web")),
        "{drain:?}"
    );
    assert_eq!(env.lab.nodes()[3].talos_version(), "v1.13.9");
}

/// An object not Ready only while worker1 is away is waited for; a
/// Kustomization never Ready stops the rollout before the first node, named;
/// `--ignore-gitops` goes on with a warning per gate, kept in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_layers_gate() {
    let env = cluster_until(44, "v1.13.8", 3, 1, 0.0, StepId::Adoption).await;
    // Not Ready while its workloads' node is away, Ready again once back.
    let kube = env.lab.kube();
    let ks = kube.list("Kustomization", None);
    let app = ks
        .iter()
        .find(|k| k["metadata"]["namespace"] != "flux-system")
        .unwrap_or(&ks[0]);
    let (ns, name) = (
        app["metadata"]["namespace"].as_str().unwrap().to_string(),
        app["metadata"]["name"].as_str().unwrap().to_string(),
    );
    kube.set_not_ready_while_node_away("Kustomization", &ns, &name, "worker1");
    // 1. The object goes not Ready while worker1 reboots: the gate after
    // worker1 waits for it, and the rollout finishes.
    let col = Collect::default();
    tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.cluster, &env.options(), &col.emitter()),
    )
    .await
    .expect("within the deadline")
    .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), col.lines().join("\n")));
    assert!(env
        .lab
        .nodes()
        .iter()
        .all(|n| n.talos_version() == "v1.13.9"));
    let after = col.of("worker1", StepId::Layers);
    assert!(
        after
            .iter()
            .filter(|l| l.contains("done all layers Ready"))
            .count()
            == 2,
        "{after:?}"
    );
    // 2. Never Ready (its source does not exist): refused before the first node, named.
    let c = client(&env).await;
    apply(
        &c,
        &ar(
            "kustomize.toolkit.fluxcd.io",
            "v1",
            "Kustomization",
            "kustomizations",
        ),
        "flux-system",
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "broken", "namespace": "flux-system"},
            "spec": {"interval": "1h", "path": "./nowhere", "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": "nowhere"}}}),
    )
    .await;
    let to = "v1.13.10";
    env.lab
        .publish_installer(&format!("ghcr.io/siderolabs/installer:{to}"), to);
    let mut o = env.options();
    o.to = Some(to.into());
    o.layers_deadline = Duration::from_secs(2);
    let e = upgrade_talos(&env.reload(), &o, &Collect::default().emitter())
        .await
        .expect_err("layers not Ready");
    let text = e.explain();
    assert!(
        matches!(&e, FlowError::Gate(g) if matches!(**g, GateError::LayersNotReady { .. })),
        "{text}"
    );
    assert!(
        text.contains("before cp1") && text.contains("flux-system/broken"),
        "{text}"
    );
    assert!(env
        .lab
        .nodes()
        .iter()
        .all(|n| n.talos_version() == "v1.13.9"));
    // 3. --ignore-gitops: on, loudly.
    o.ignore_gitops = true;
    let col = Collect::default();
    let r = tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.reload(), &o, &col.emitter()),
    )
    .await
    .expect("within the deadline")
    .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), col.lines().join("\n")));
    assert!(env.lab.nodes().iter().all(|n| n.talos_version() == to));
    assert!(
        r.ignored_gitops
            .iter()
            .any(|g| g.starts_with("before cp1") && g.contains("flux-system/broken")),
        "{:?}",
        r.ignored_gitops
    );
    let warnings: Vec<String> = col
        .lines()
        .into_iter()
        .filter(|l| l.contains("warning GitOps layers NOT Ready"))
        .collect();
    assert_eq!(
        warnings.len(),
        8,
        "one per gate (before and after each of 4 nodes): {warnings:?}"
    );
}
