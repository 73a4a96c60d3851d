//! `demo` runs layer 1 end to end on the lab: the Talos half, then namespaces,
//! SOPS secrets, CRDs, Cilium, nodes Ready, the other charts; a re-run changes
//! nothing. Runs with the real helm when it is there, else pre-rendered manifests.

use std::path::PathBuf;

use endsys_bootstrap::demo::{run_demo, DemoOptions};
use endsys_bootstrap::engine::{Emitter, EventKind, Outcome, StepId};

fn helm() -> Option<PathBuf> {
    let p = PathBuf::from(".tools/bin/helm");
    p.is_file().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_layer1_end_to_end_and_a_rerun_changes_nothing() {
    let em = Emitter::new();
    let mut rx = em.subscribe();
    let collected = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Ok(ev) = rx.recv().await {
            out.push(ev);
        }
        out
    });
    let opts = DemoOptions {
        nodes: 3,
        controlplanes: 3,
        time_scale: 0.0,
        first_ip: std::net::Ipv4Addr::new(127, 0, 174, 11),
        state_dir: Some(tempfile::tempdir().expect("tempdir").keep()),
        secrets_from: Some("tests/fixtures/machineconfig/secrets.yaml".into()),
        helm: helm(),
        rerun: true,
        // Layer 1 only: the Flux layers are tests/up_flux.rs's.
        until: StepId::Layer1Done,
        ..DemoOptions::default()
    };
    let report = run_demo(&opts, &em).await.expect("demo runs layer 1");
    drop(em);
    let events = collected.await.expect("events");
    let first: std::collections::BTreeMap<StepId, Outcome> =
        report.up.steps.iter().cloned().collect();
    for s in [
        StepId::KubeApi,
        StepId::NodesRegistered,
        StepId::Namespaces,
        StepId::Secrets,
        StepId::Crds,
        StepId::Cni,
        StepId::NodesReady,
        StepId::Charts,
        StepId::Layer1Done,
    ] {
        assert!(
            matches!(first.get(&s), Some(Outcome::Done { .. })),
            "{s:?}: {:?}",
            first.get(&s)
        );
    }
    match &first[&StepId::NodesReady] {
        Outcome::Done { detail } => assert!(detail.contains("3 Ready"), "{detail}"),
        other => panic!("{other:?}"),
    }
    match &first[&StepId::Secrets] {
        Outcome::Done { detail } => {
            assert!(detail.contains("2 created"), "{detail}");
            assert!(
                detail.contains("github-deploy-key"),
                "missing file warned: {detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The re-run: every apply step finds everything unchanged.
    let again: std::collections::BTreeMap<StepId, Outcome> = report
        .rerun
        .as_ref()
        .expect("rerun")
        .steps
        .iter()
        .cloned()
        .collect();
    for s in [
        StepId::Namespaces,
        StepId::Secrets,
        StepId::Crds,
        StepId::Cni,
        StepId::Charts,
    ] {
        assert!(
            matches!(again.get(&s), Some(Outcome::Skipped { .. })),
            "re-run {s:?}: {:?}",
            again.get(&s)
        );
    }
    // Every release reported healthy, in needs order.
    let healthy: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Progress { message }
                if message.starts_with("release ") && message.contains("healthy (") =>
            {
                Some(message.split_whitespace().nth(1).unwrap_or("").to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        &healthy[..4],
        [
            "kube-system/cilium",
            "kube-system/coredns",
            "kube-system/spegel",
            "cert-manager/cert-manager"
        ]
    );
    println!("{}", report.summary());
}
