//! A missing helm is a clear preflight error before any node is touched.

#[path = "common/memory.rs"]
mod memory;

use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{Doctor, Emitter, FlowError, StepId};
use endsys_bootstrap::flows::up::{up, Renderer, UpOptions};
use endsys_lab::repository as lab;
use endsys_lab::{Lab, LabOptions, NodeState};
use memory::MemorySource;

#[tokio::test]
async fn missing_helm_stops_up_in_preflight_with_every_node_untouched() {
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, 177, 11),
        port: 50000,
        talos_version: "v1.13.9".into(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    lab::write_repo(&repo).expect("lab repo");
    let mut half = endsys_bootstrap::demo::kube_half(repo, None).expect("half");
    half.renderer = Renderer::Helm(Some("/nonexistent/bin/helm".into()));
    let mut opts = UpOptions::new(dir.path().join("state"));
    opts.probe_timeout = Duration::from_secs(2);
    opts.kube = Some(half);
    let src = MemorySource::new(lab_definition(&lab, 3, "nohelm"), None);
    let em = Emitter::new();
    match up(&src, &opts, &em).await {
        Err(e @ FlowError::Charts { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("preflight:"), "{text}");
            assert!(text.contains("/nonexistent/bin/helm"), "{text}");
            assert!(text.contains("nothing was changed"), "{text}");
            assert!(e.next_action().contains("helm"), "{}", e.next_action());
        }
        other => panic!("expected a preflight error, got {other:?}"),
    }
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Maintenance, "{} was touched", n.ip());
    }
    // With --until apiserver the Kubernetes half is not needed: no helm check.
    assert!(StepId::Apiserver < StepId::KubeApi);
    lab.shutdown().await;
}

/// The real kubectl 1.35 against the simulated API, with the kubeconfig `up`
/// fetched into its state directory, after layer 1: nodes Ready, wait, SSA.
/// (kubectl runs blocking on one worker; the lab serves on the other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_uses_the_kubeconfig_up_fetched_after_layer1() {
    let kubectl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    if !kubectl.is_file() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but .tools/bin/kubectl is missing: run scripts/fetch-tools.sh");
        }
        eprintln!("\n*** SKIPPED: kubectl interop (no .tools/bin/kubectl) ***\n");
        return;
    }
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, 178, 11),
        port: 50000,
        talos_version: "v1.13.9".into(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    lab::write_repo(&repo).expect("lab repo");
    let mut opts = UpOptions::new(dir.path().join("state"));
    opts.probe_timeout = Duration::from_secs(2);
    opts.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).expect("half"));
    // Layer 1 only: Flux is tests/up_flux.rs's business.
    opts.until = StepId::Layer1Done;
    let src = MemorySource::new(lab_definition(&lab, 3, "kubectl"), None);
    let report = up(&src, &opts, &Emitter::new()).await.expect("layer 1");
    let kubeconfig = report.kubeconfig.expect("kubeconfig fetched");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    };
    let nodes = run(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");
    run(&[
        "wait",
        "--for=condition=Ready",
        "nodes",
        "--all",
        "--timeout=10s",
    ]);
    run(&[
        "wait",
        "--for=condition=Available",
        "-n",
        "cert-manager",
        "deployment/cert-manager",
        "--timeout=10s",
    ]);
    let manifest = dir.path().join("cm.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-kubectl, namespace: flux-system}\ndata: {a: b}\n").expect("write");
    let applied = run(&[
        "apply",
        "--server-side",
        "-f",
        &manifest.display().to_string(),
    ]);
    assert!(applied.contains("serverside-applied"), "{applied}");
    let owned = run(&[
        "get",
        "-n",
        "kube-system",
        "daemonset/cilium",
        "-o",
        "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name}",
    ]);
    assert_eq!(owned.trim(), "cilium");
    lab.shutdown().await;
}
