//! A run of `up` killed at every step boundary (and inside steps), then run again,
//! converges, with Bootstrap called exactly once in total.
//!
//! The kill aborts the task running `up` from inside the event stream: the task
//! never resumes past its next await, exactly as if the process had died there
//! (the journal is written atomically before the event returns).

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;

use std::sync::Arc;
use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{ClusterSource, Doctor, Emitter, Journal, StepId, UpFacts};
use endsys_bootstrap::flows::up::{up, UpOptions};
use endsys_bootstrap::talos::{CallPolicy, TalosClient, TlsMode};
use endsys_lab::NodeState;
use fixture::{killed_at, up_options, Deadlines, KillAt};
use memory::MemorySource;

fn options(dir: &std::path::Path) -> UpOptions {
    up_options(
        dir,
        StepId::Kubeconfig,
        Deadlines {
            node: Duration::from_secs(60),
            reach: Duration::from_secs(30),
            retry_budget: Duration::from_secs(5),
        },
    )
}

async fn kill_then_resume(subnet: u8, at: KillAt) -> bool {
    // Small but non-zero delays so kills land while nodes install and reboot.
    let lab = fixture::start_lab(subnet, 3, 3, 0.05).await;
    let src = Arc::new(MemorySource::new(lab_definition(&lab, 3, "resume"), None));
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());

    // After the last boundary there is no await left: the run may complete.
    let killed = killed_at(at, {
        let src = src.clone();
        let opts = opts.clone();
        move |em| async move { up(&*src as &dyn ClusterSource, &opts, &em).await }
    })
    .await
    .is_none();

    // Run again until it converges (the real state decides, the journal hints).
    let em = Emitter::new();
    let r = up(&*src as &dyn ClusterSource, &opts, &em).await;
    if let Err(e) = &r {
        panic!("{at:?}: re-run failed:\n{}", e.explain());
    }
    assert_eq!(lab.bootstrap_calls(), 1, "{at:?}: Bootstrap calls");
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running, "{at:?}");
        assert_eq!(
            n.service_state("etcd").as_deref(),
            Some("Running"),
            "{at:?}"
        );
    }
    let creds = src.render().unwrap().credentials;
    let c = TalosClient::connect(
        &lab.nodes()[0].ip().to_string(),
        TlsMode::Mutual(creds),
        CallPolicy::default(),
    )
    .unwrap();
    assert_eq!(c.etcd_members(false).await.unwrap().len(), 3, "{at:?}");
    let j = Journal::<UpFacts>::read_of(&Journal::<UpFacts>::up_path(dir.path()), "resume")
        .unwrap()
        .expect("journal written");
    assert_eq!(j.runs.len(), 2, "{at:?}");
    assert_eq!(j.runs[1].ok, Some(true), "{at:?}");
    if killed {
        assert_eq!(j.runs[0].ok, None, "{at:?}: a killed run has no end");
    }
    assert!(dir.path().join("kubeconfig").exists());
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_boundary_then_rerun_converges_with_one_bootstrap() {
    let points = [
        KillAt::Finished(StepId::Preflight),
        KillAt::NodeFinished(StepId::Apply, "cp2"),
        KillAt::Finished(StepId::Apply),
        KillAt::Waiting(StepId::WaitConfigured),
        KillAt::NodeStatePrefix(StepId::WaitConfigured, "running"),
        KillAt::Finished(StepId::WaitConfigured),
        KillAt::AnyDecision,
        KillAt::Progress("calling Bootstrap"),
        KillAt::Finished(StepId::Bootstrap),
        KillAt::NodeFinished(StepId::EtcdQuorum, "cp1"),
        KillAt::Finished(StepId::EtcdQuorum),
        KillAt::Finished(StepId::Kubeconfig),
    ];
    let runs = points
        .iter()
        .enumerate()
        .map(|(i, at)| kill_then_resume(160 + i as u8, *at));
    let killed = futures::future::join_all(runs).await;
    let n = killed.iter().filter(|k| **k).count();
    assert!(
        n + 1 >= points.len(),
        "only {n} of {} runs were killed: {killed:?}",
        points.len()
    );
}
