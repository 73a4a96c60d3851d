//! `upgrade kubernetes` end to end against the lab: the talhelper definition
//! moved from Kubernetes v1.35.0 to v1.36.0, then every static pod (mirror pod
//! image, Ready) and every kubelet (Node kubeletVersion, Ready) on the new
//! version; refused on Talos 1.12 nodes, which do not run 1.36; refused when
//! the GitOps tree holds a manifest of an API the target removes. Subnets
//! 127.0.41.0/24, 127.0.42.0/24 and 127.0.55.0/24.

#[path = "common/fixture.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use endsys_bootstrap::demo::{lab_definition, lab_talconfig};
use endsys_bootstrap::engine::talhelper::TalhelperSource;
use endsys_bootstrap::engine::{Cluster, ClusterSource, Doctor, Emitter, StepId};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::flows::upgrade::kubernetes::{
    plan_upgrade_kubernetes, upgrade_kubernetes, COMPONENTS,
};
use endsys_bootstrap::flows::upgrade::UpgradeOptions;
use endsys_lab::Lab;
use fixture::{up_options, Deadlines, KillAt, SECRETS};

const DEADLINES: Deadlines = Deadlines {
    node: Duration::from_secs(60),
    reach: Duration::from_secs(10),
    retry_budget: Duration::from_secs(5),
};

struct Env {
    lab: Lab,
    dir: tempfile::TempDir,
    talconfig: PathBuf,
    secrets: PathBuf,
}

fn source(talconfig: &Path, secrets: &Path) -> TalhelperSource {
    let mut s = TalhelperSource::new(talconfig, secrets);
    s.vars = Default::default();
    s
}

/// 3 control planes + 1 worker on Talos `talos`, Kubernetes v1.35.0, brought up
/// through layer 1 (Nodes Ready) from the talhelper definition, whose
/// talosVersion is v1.13.9 (ahead of the nodes when `talos` is older, as after
/// the operator bumped both versions but ran no upgrade yet).
async fn cluster(subnet: u8, talos: &str) -> Env {
    let lab = fixture::start_lab_of(talos, subnet, 4, 3, 0.0).await;
    // The lab's registry resolves installer images only: the Kubernetes
    // images of the target are published in it as a real registry has them.
    for image in [
        "ghcr.io/siderolabs/kubelet:v1.36.0",
        "registry.k8s.io/kube-apiserver:v1.36.0",
        "registry.k8s.io/kube-controller-manager:v1.36.0",
        "registry.k8s.io/kube-scheduler:v1.36.0",
    ] {
        lab.publish_installer(image, "v1.36.0");
    }
    let dir = tempfile::tempdir().unwrap();
    // No reboot in a Kubernetes upgrade: the endpoint may be a control plane.
    let def = lab_definition(&lab, 3, "k8s");
    let talconfig = dir.path().join("talconfig.yaml");
    std::fs::write(&talconfig, lab_talconfig(&def, "v1.13.9")).unwrap();
    let secrets = dir.path().join("talsecret.yaml");
    std::fs::copy(SECRETS, &secrets).unwrap();
    let mut o = up_options(dir.path(), StepId::Layer1Done, DEADLINES);
    o.apiserver_deadline = DEADLINES.node;
    let repo = dir.path().join("repo");
    endsys_lab::repository::write_repo(&repo).unwrap();
    o.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).unwrap());
    let src = source(&talconfig, &secrets);
    up(&src as &dyn ClusterSource, &o, &Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    Env {
        lab,
        dir,
        talconfig,
        secrets,
    }
}

impl Env {
    /// The definition moved to Kubernetes `to`, loaded as a fresh process would.
    fn definition_on(&self, to: &str) -> Cluster {
        let text = std::fs::read_to_string(&self.talconfig).unwrap();
        let text = text.replace(
            "kubernetesVersion: v1.35.0",
            &format!("kubernetesVersion: {to}"),
        );
        std::fs::write(&self.talconfig, text).unwrap();
        Cluster::load(&source(&self.talconfig, &self.secrets), self.dir.path()).unwrap()
    }

    fn options(&self, to: &str) -> UpgradeOptions {
        let mut o = UpgradeOptions::new(self.dir.path().to_path_buf());
        o.to = Some(to.into());
        o.policy = fixture::policy(DEADLINES.retry_budget);
        o.kube_deadline = DEADLINES.node;
        o.layers_deadline = Duration::from_secs(20);
        o
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_kubernetes_135_to_136() {
    let env = cluster(41, "v1.13.9").await;
    let cluster = env.definition_on("v1.36.0");
    // Killed once the first control plane's apiserver moved; the re-run
    // reads which components moved from the cluster and goes on.
    let (c2, o2) = (cluster.clone(), env.options("v1.36.0"));
    let killed = tokio::time::timeout(
        Duration::from_secs(60),
        fixture::killed_at(
            KillAt::NodeFinished(StepId::StaticPod, "cp1"),
            move |em| async move { upgrade_kubernetes(&c2, &o2, &em).await },
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("killed run within 60 s; the lab:\n{}", env.lab.report()));
    assert!(killed.is_none(), "the kill landed");
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        upgrade_kubernetes(&cluster, &env.options("v1.36.0"), &Emitter::new()),
    )
    .await
    .unwrap_or_else(|_| panic!("within 120 s; the lab:\n{}", env.lab.report()))
    .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(
        (r.from.as_str(), r.to.as_str()),
        ("v1.35.0", "v1.36.0"),
        "{:?}",
        r.nodes
    );
    let kube = env.lab.kube();
    for cp in ["cp1", "cp2", "cp3"] {
        for (component, _) in COMPONENTS {
            let p = kube
                .get("Pod", Some("kube-system"), &format!("{component}-{cp}"))
                .unwrap_or_else(|| panic!("{component}-{cp} missing"));
            let image = p["spec"]["containers"][0]["image"].as_str().unwrap_or("");
            assert!(image.ends_with(":v1.36.0"), "{component}-{cp}: {image}");
        }
    }
    for n in ["cp1", "cp2", "cp3", "worker1"] {
        let node = kube.get("Node", None, n).unwrap();
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"], "v1.36.0",
            "{n}"
        );
    }
    // Again: nothing left to move.
    let r2 = upgrade_kubernetes(&cluster, &env.options("v1.36.0"), &Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert!(
        r2.nodes.iter().all(|(_, w)| w.starts_with("already on")),
        "{:?}",
        r2.nodes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_kubernetes_refused_on_112_nodes() {
    let env = cluster(42, "v1.12.6").await;
    let cluster = env.definition_on("v1.36.0");
    let e = upgrade_kubernetes(&cluster, &env.options("v1.36.0"), &Emitter::new())
        .await
        .expect_err("1.36 does not run on Talos 1.12");
    let text = e.explain();
    assert!(e.is_input_error(), "{text}");
    assert!(
        text.contains("does not run on Talos 1.12") && text.contains("upgrade Talos first"),
        "{text}"
    );
    // Two minors at once: refused too.
    let cluster = Cluster::load(&source(&env.talconfig, &env.secrets), env.dir.path()).unwrap();
    let e = upgrade_kubernetes(&cluster, &env.options("v1.37.0"), &Emitter::new())
        .await
        .expect_err("1.35 → 1.37");
    assert!(
        e.explain().contains("one minor at a time"),
        "{}",
        e.explain()
    );
}

/// The other half of the removed-API check: a manifest in the Flux tree that
/// the target no longer serves would be re-created by Flux after the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_kubernetes_refused_for_a_removed_api_in_the_gitops_tree() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let env = cluster(55, "v1.13.9").await;
        let cluster = env.definition_on("v1.36.0");
        let repo = env.dir.path().join("repo");
        let explain = |e: endsys_bootstrap::engine::FlowError| panic!("{}", e.explain());
        // No tree given: the plan says it was not scanned.
        let items = plan_upgrade_kubernetes(&cluster, &env.options("v1.36.0"))
            .await
            .unwrap_or_else(explain);
        assert!(
            items[0].action.contains("GitOps tree NOT scanned"),
            "{}",
            items[0].action
        );
        // The lab's endsys tree: scanned, nothing 1.36 removes.
        let mut o = env.options("v1.36.0");
        o.gitops_tree = Some((repo.clone(), None));
        let items = plan_upgrade_kubernetes(&cluster, &o)
            .await
            .unwrap_or_else(explain);
        assert!(
            items[0].action.contains("document(s) scanned, 0 of an API"),
            "{}",
            items[0].action
        );
        // A Workload of scheduling.k8s.io/v1alpha2 (gone in 1.37) in an app's build.
        let rel = "kubernetes/apps/database/cnpg-operator/app/helmrelease.yaml";
        let mut text = std::fs::read_to_string(repo.join(rel)).unwrap();
        let line = text.lines().count() + 2;
        text.push_str("---\napiVersion: scheduling.k8s.io/v1alpha2\nkind: Workload\nmetadata:\n  name: nightly-train\n");
        std::fs::write(repo.join(rel), text).unwrap();
        let mut o = env.options("v1.37.0");
        o.gitops_tree = Some((repo, None));
        let named = format!(
            "{rel}:{line}: scheduling.k8s.io/v1alpha2 Workload \"nightly-train\" in the GitOps tree: Kubernetes 1.37 removes that API"
        );
        let e = upgrade_kubernetes(&cluster, &o, &Emitter::new())
            .await
            .expect_err("a removed API in the tree");
        assert!(e.is_input_error(), "{}", e.explain());
        assert!(e.explain().contains(&named), "{}", e.explain());
        // The plan refuses with the same line.
        let e = plan_upgrade_kubernetes(&cluster, &o)
            .await
            .expect_err("the plan refuses too");
        assert!(e.explain().contains(&named), "{}", e.explain());
        env
    })
    .await
    .unwrap_or_else(|_| panic!("the tree-scan test did not finish within 150 s"));
}
