//! A missing helm is a clear preflight error before any node is touched.

use std::time::Duration;

use endsys_bootstrap::charts::lab;
use endsys_bootstrap::lab::{Lab, LabOptions, NodeState};
use endsys_bootstrap::orchestrator::demo::lab_definition;
use endsys_bootstrap::orchestrator::layer1::Renderer;
use endsys_bootstrap::orchestrator::{up, Emitter, FlowError, MemorySource, StepId, UpOptions};

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
    let mut half = lab::kube_half(repo, None).expect("half");
    half.renderer = Renderer::Helm(Some("/nonexistent/bin/helm".into()));
    let mut opts = UpOptions::new(dir.path().join("state"));
    opts.probe_timeout = Duration::from_secs(2);
    opts.kube = Some(half);
    let src = MemorySource::new(lab_definition(&lab, 3, "nohelm"), None);
    let em = Emitter::new();
    match up(&src, &opts, &em).await {
        Err(e @ FlowError::Kube { .. }) => {
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
