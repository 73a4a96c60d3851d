//! `demo` runs layer 1 end to end on the lab: the Talos half, then namespaces,
//! SOPS secrets, CRDs, Cilium, nodes Ready, the other charts; a re-run changes
//! nothing. Runs with the real helm when it is there, else pre-rendered manifests.

#[path = "common/fixture.rs"]
mod fixture;

use endsys_bootstrap::demo::{run_demo, DemoOptions};
use endsys_bootstrap::engine::{Emitter, EventKind, Outcome, StepId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_layer1_end_to_end_and_a_rerun_changes_nothing() {
    let em = Emitter::new();
    let collected = fixture::collect_events(&em);
    let opts = DemoOptions {
        rerun: true,
        // Layer 1 only: the Flux layers are tests/up_flux.rs's.
        until: StepId::Layer1Done,
        ..fixture::demo_options(174, 3)
    };
    let report = fixture::within("demo", run_demo(&opts, &em))
        .await
        .expect("demo runs layer 1");
    drop(em);
    let events = collected.await.expect("events");
    let first = fixture::steps_of(&report.up);
    // The Kubernetes half of layer 1, every step done.
    let kube_half: Vec<StepId> = StepId::UP
        .into_iter()
        .filter(|s| (StepId::KubeApi..=StepId::Layer1Done).contains(s))
        .collect();
    assert_eq!(kube_half.len(), 9, "{kube_half:?}");
    fixture::assert_all_done(&first, &kube_half, "");
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
    let again = fixture::steps_of(report.rerun.as_ref().expect("rerun"));
    fixture::assert_all_skipped(&again, &fixture::LAYER1_APPLY, "re-run ");
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
