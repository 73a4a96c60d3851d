//! The one set-up of the end-to-end tests of the flows (`up`, `recover`, node
//! reimage/rejoin, the `up` binary): a lab on the test's own loopback /24, its
//! talhelper definition written to disk, options with the test's own short
//! deadlines, and the kill-at-step harness that aborts a run at a step boundary
//! as if the process died there (the journal is written before the event
//! returns). Included with `#[path]`, like `kubelab.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endsys_bootstrap::demo::{lab_definition, lab_talconfig, DemoOptions};
use endsys_bootstrap::engine::StepId;
use endsys_bootstrap::engine::{Doctor, Emitter, Event, EventKind, EventSink, FlowError, Outcome};
use endsys_bootstrap::flows::nodes::NodeOpOptions;
use endsys_bootstrap::flows::up::{UpOptions, UpReport};
use endsys_bootstrap::talos::CallPolicy;
use endsys_lab::{Lab, LabOptions};

/// The Talos version every lab of these tests runs.
pub const TALOS: &str = "v1.13.9";

/// A Talos secrets bundle checked in for tests that run the binary.
pub const SECRETS: &str = "tests/fixtures/machineconfig/secrets.yaml";

/// A lab of `nodes` nodes (the first `controlplanes` are control planes) on
/// 127.0.`subnet`.11 onwards; `time_scale` 0 runs without delays.
pub async fn start_lab(subnet: u8, nodes: usize, controlplanes: usize, time_scale: f64) -> Lab {
    start_lab_of(TALOS, subnet, nodes, controlplanes, time_scale).await
}

/// [`start_lab`] with nodes of another Talos version.
pub async fn start_lab_of(
    talos_version: &str,
    subnet: u8,
    nodes: usize,
    controlplanes: usize,
    time_scale: f64,
) -> Lab {
    Lab::start(LabOptions {
        nodes,
        controlplanes,
        first_ip: Ipv4Addr::new(127, 0, subnet, 11),
        port: 50000,
        talos_version: talos_version.into(),
        time_scale,
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

/// Every end-to-end test's own deadline, far below any node timeout: a hang
/// fails fast, with what the lab was doing in the message.
pub const TEST_DEADLINE: Duration = Duration::from_secs(100);

/// The `--node-timeout` (seconds) tests give the binary: a node that never
/// comes up fails the run well inside [`TEST_DEADLINE`].
pub const NODE_TIMEOUT_SECS: &str = "60";

/// Awaits `f` within [`TEST_DEADLINE`]; on expiry panics naming `what` and
/// every node of the lab (state, listener, etcd).
pub async fn within_lab<T>(lab: &Lab, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: no result within {TEST_DEADLINE:?}; the lab now:\n{}",
            lab.report()
        ),
    }
}

/// Writes the lab's talhelper definition to `dir/talconfig.yaml`.
pub fn write_talconfig(dir: &Path, lab: &Lab, controlplanes: usize, name: &str) -> PathBuf {
    let def = lab_definition(lab, controlplanes, name);
    let p = dir.join("talconfig.yaml");
    std::fs::write(&p, lab_talconfig(&def, TALOS)).unwrap();
    p
}

/// Short call deadlines so a broken test fails fast.
pub fn policy(retry_budget: Duration) -> CallPolicy {
    CallPolicy {
        attempt_timeout: Duration::from_secs(5),
        retry_budget,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    }
}

/// A test's own deadlines: `node` for node, etcd (and API server) waits.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub node: Duration,
    pub reach: Duration,
    pub retry_budget: Duration,
}

/// `up` through `until` with state in `dir`.
pub fn up_options(dir: &Path, until: StepId, d: Deadlines) -> UpOptions {
    let mut o = UpOptions::new(dir.to_path_buf());
    o.until = until;
    o.node_deadline = d.node;
    o.reach_deadline = d.reach;
    o.etcd_deadline = d.node;
    o.probe_timeout = Duration::from_secs(2);
    o.policy = policy(d.retry_budget);
    o
}

/// `node reimage` / `node rejoin` with state in `dir`.
pub fn node_op_options(dir: &Path, d: Deadlines) -> NodeOpOptions {
    let mut o = NodeOpOptions::new(dir.to_path_buf());
    o.policy = policy(d.retry_budget);
    o.node_deadline = d.node;
    o.etcd_deadline = d.node;
    o.kube_deadline = d.node;
    o.probe_timeout = Duration::from_secs(2);
    o
}

/// Where to kill a run: the first event matching.
#[derive(Debug, Clone, Copy)]
pub enum KillAt {
    /// The step's cluster-wide `step_finished` (any outcome).
    Finished(StepId),
    /// The step's first `Done`/`Skipped`, for any node or none.
    Completed(StepId),
    /// The step's `step_finished` for one node.
    NodeFinished(StepId, &'static str),
    /// A `node_state` of the step starting with the text.
    NodeStatePrefix(StepId, &'static str),
    /// A `waiting` of the step.
    Waiting(StepId),
    /// A `waiting` whose text contains this.
    WaitingText(&'static str),
    /// A `progress` whose message contains this.
    Progress(&'static str),
    /// Any `decision`.
    AnyDecision,
    /// A `decision` with this key.
    Decision(&'static str),
}

impl KillAt {
    pub fn matches(&self, e: &Event) -> bool {
        match (self, &e.kind) {
            (KillAt::Finished(s), EventKind::StepFinished { .. }) => {
                e.step == *s && e.node.is_none()
            }
            (
                KillAt::Completed(s),
                EventKind::StepFinished {
                    outcome: Outcome::Done { .. } | Outcome::Skipped { .. },
                    ..
                },
            ) => e.step == *s,
            (KillAt::NodeFinished(s, n), EventKind::StepFinished { .. }) => {
                e.step == *s && e.node.as_deref() == Some(n)
            }
            (KillAt::NodeStatePrefix(s, p), EventKind::NodeState { state }) => {
                e.step == *s && state.starts_with(p)
            }
            (KillAt::Waiting(s), EventKind::Waiting { .. }) => e.step == *s,
            (KillAt::WaitingText(p), EventKind::Waiting { what }) => what.contains(p),
            (KillAt::Progress(p), EventKind::Progress { message }) => message.contains(p),
            (KillAt::AnyDecision, EventKind::Decision { .. }) => true,
            (KillAt::Decision(k), EventKind::Decision { key, .. }) => key == k,
            _ => false,
        }
    }
}

/// Aborts the task it is armed with at the first event matching `at`.
struct Killer {
    at: KillAt,
    handle: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    fired: Arc<AtomicBool>,
}

impl EventSink for Killer {
    fn record(&mut self, e: &Event) {
        if self.fired.load(Ordering::SeqCst) || !self.at.matches(e) {
            return;
        }
        if let Some(h) = self.handle.lock().unwrap().as_ref() {
            h.abort();
            self.fired.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs `op` in a task killed at `at` (as if the process died there): `None`
/// if the kill landed, else what the run returned (a kill point after the last
/// await lets the run finish). Panics if the kill point was never reached.
pub async fn killed_at<T, F, Fut>(at: KillAt, op: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Emitter) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, FlowError>> + Send + 'static,
{
    let handle = Arc::new(Mutex::new(None));
    let fired = Arc::new(AtomicBool::new(false));
    let em = Emitter::new();
    em.add_sink(Box::new(Killer {
        at,
        handle: handle.clone(),
        fired: fired.clone(),
    }));
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = go_rx.await;
        op(em).await
    });
    *handle.lock().unwrap() = Some(task.abort_handle());
    go_tx.send(()).unwrap();
    let r = task.await;
    if !fired.load(Ordering::SeqCst) {
        let how = match &r {
            Ok(Ok(_)) => "the run completed without passing it".to_string(),
            Ok(Err(e)) => format!("the run failed first:\n{}", e.explain()),
            Err(e) => format!("the task ended: {e}"),
        };
        panic!("{at:?}: kill point never reached: {how}");
    }
    match r {
        Err(e) => {
            assert!(e.is_cancelled(), "{at:?}: {e}");
            None
        }
        Ok(r) => Some(r.unwrap_or_else(|e| panic!("{at:?}: {}", e.explain()))),
    }
}

/// The real helm when the repository has it, else pre-rendered manifests.
pub fn helm() -> Option<PathBuf> {
    let p = PathBuf::from(".tools/bin/helm");
    p.is_file().then_some(p)
}

/// `demo` on a lab of `nodes` control planes on 127.0.`subnet`.11 onwards
/// (time scale 0), state in a fresh tempdir, the checked-in secrets.
pub fn demo_options(subnet: u8, nodes: usize) -> DemoOptions {
    DemoOptions {
        nodes,
        controlplanes: nodes,
        time_scale: 0.0,
        first_ip: Ipv4Addr::new(127, 0, subnet, 11),
        state_dir: Some(tempfile::tempdir().expect("tempdir").keep()),
        secrets_from: Some(SECRETS.into()),
        helm: helm(),
        deadline: Some(WAIT_CAP),
        ..DemoOptions::default()
    }
}

/// Every wait of a test's run is capped at this (node, etcd, charts, Flux).
pub const WAIT_CAP: Duration = Duration::from_secs(60);

/// Awaits a run with no lab handle (`demo` owns its lab) within
/// [`TEST_DEADLINE`]; the run's own waits are capped at [`WAIT_CAP`], so
/// expiry means a hang, not a slow node.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {TEST_DEADLINE:?} although every wait is capped at {WAIT_CAP:?}: a hang"))
}

/// The layer-1 steps that apply objects: all `Skipped` when nothing changed.
pub const LAYER1_APPLY: [StepId; 5] = [
    StepId::Namespaces,
    StepId::Secrets,
    StepId::Crds,
    StepId::Cni,
    StepId::Charts,
];

/// Each step of a run of `up` and how it ended.
pub fn steps_of(r: &UpReport) -> BTreeMap<StepId, Outcome> {
    r.steps.iter().cloned().collect()
}

/// Asserts each of `steps` ended `Done`; `what` prefixes the message.
pub fn assert_all_done(outcomes: &BTreeMap<StepId, Outcome>, steps: &[StepId], what: &str) {
    for s in steps {
        assert!(
            matches!(outcomes.get(s), Some(Outcome::Done { .. })),
            "{what}{s:?}: {:?}",
            outcomes.get(s)
        );
    }
}

/// Asserts each of `steps` ended `Skipped` (nothing changed); `what` prefixes
/// the message.
pub fn assert_all_skipped(outcomes: &BTreeMap<StepId, Outcome>, steps: &[StepId], what: &str) {
    for s in steps {
        assert!(
            matches!(outcomes.get(s), Some(Outcome::Skipped { .. })),
            "{what}{s:?}: {:?}",
            outcomes.get(s)
        );
    }
}

/// Every event `em` emits, in order, once the last handle to it is dropped.
pub fn collect_events(em: &Emitter) -> tokio::task::JoinHandle<Vec<Event>> {
    let mut rx = em.subscribe();
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Ok(ev) = rx.recv().await {
            out.push(ev);
        }
        out
    })
}
