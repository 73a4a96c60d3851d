//! A run of `up` killed at every step boundary (and inside steps), then run again,
//! converges, with Bootstrap called exactly once in total.
//!
//! The kill aborts the task running `up` from inside the event stream: the task
//! never resumes past its next await, exactly as if the process had died there
//! (the journal is written atomically before the event returns).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{
    ClusterSource, Doctor, Emitter, Event, EventKind, EventSink, Journal, MemorySource, StepId,
    UpFacts,
};
use endsys_bootstrap::flows::up::{up, UpOptions};
use endsys_bootstrap::talos::{CallPolicy, TalosClient, TlsMode};
use endsys_lab::{Lab, LabOptions, NodeState};

/// Where to kill: the first event matching.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Finished(StepId),
    NodeFinished(StepId, &'static str),
    NodeStatePrefix(StepId, &'static str),
    Waiting(StepId),
    Decision,
    CallingBootstrap,
}

impl KillAt {
    fn matches(&self, e: &Event) -> bool {
        match (self, &e.kind) {
            (KillAt::Finished(s), EventKind::StepFinished { .. }) => {
                e.step == *s && e.node.is_none()
            }
            (KillAt::NodeFinished(s, n), EventKind::StepFinished { .. }) => {
                e.step == *s && e.node.as_deref() == Some(n)
            }
            (KillAt::NodeStatePrefix(s, p), EventKind::NodeState { state }) => {
                e.step == *s && state.starts_with(p)
            }
            (KillAt::Waiting(s), EventKind::Waiting { .. }) => e.step == *s,
            (KillAt::Decision, EventKind::Decision { .. }) => true,
            (KillAt::CallingBootstrap, EventKind::Progress { message }) => {
                message.contains("calling Bootstrap")
            }
            _ => false,
        }
    }
}

struct Killer {
    at: KillAt,
    handle: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    fired: Arc<Mutex<bool>>,
}

impl EventSink for Killer {
    fn record(&mut self, e: &Event) {
        let mut fired = self.fired.lock().unwrap();
        if !*fired && self.at.matches(e) {
            if let Some(h) = self.handle.lock().unwrap().as_ref() {
                h.abort();
                *fired = true;
            }
        }
    }
}

fn options(dir: &std::path::Path) -> UpOptions {
    let mut o = UpOptions::new(dir.to_path_buf());
    o.until = StepId::Kubeconfig;
    o.node_deadline = Duration::from_secs(60);
    o.reach_deadline = Duration::from_secs(30);
    o.etcd_deadline = Duration::from_secs(60);
    o.probe_timeout = Duration::from_secs(2);
    o.policy = CallPolicy {
        attempt_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    };
    o
}

async fn kill_then_resume(subnet: u8, at: KillAt) -> bool {
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, subnet, 11),
        port: 50000,
        talos_version: "v1.13.9".into(),
        // Small but non-zero delays so kills land while nodes install and reboot.
        time_scale: 0.05,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let src = Arc::new(MemorySource::new(lab_definition(&lab, 3, "resume"), None));
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());

    let em = Emitter::new();
    let handle = Arc::new(Mutex::new(None));
    let fired = Arc::new(Mutex::new(false));
    em.add_sink(Box::new(Killer {
        at,
        handle: handle.clone(),
        fired: fired.clone(),
    }));
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let src = src.clone();
        let opts = opts.clone();
        let em = em.clone();
        tokio::spawn(async move {
            let _ = go_rx.await;
            up(&*src as &dyn ClusterSource, &opts, &em).await
        })
    };
    *handle.lock().unwrap() = Some(task.abort_handle());
    go_tx.send(()).unwrap();
    let first = task.await;
    assert!(*fired.lock().unwrap(), "{at:?}: kill point never reached");
    // After the last boundary there is no await left: the run may complete.
    let killed = match first {
        Err(e) => {
            assert!(e.is_cancelled(), "{at:?}: {e}");
            true
        }
        Ok(r) => {
            r.unwrap_or_else(|e| panic!("{at:?}: {}", e.explain()));
            false
        }
    };

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
        KillAt::Decision,
        KillAt::CallingBootstrap,
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
