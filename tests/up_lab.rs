//! End-to-end tests of `up` and `plan` against the lab, over real TCP + TLS.
//! Each test owns a /24 of 127.0.0.0/8 (140–199) so they run in parallel.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{
    ClusterSource, DiskTarget, Doctor, Emitter, Event, EventKind, EventSink, FlowError, Journal,
    Outcome, StepId, UpFacts,
};
use endsys_bootstrap::flows::up::{plan, up, UpOptions, UpReport};
use endsys_bootstrap::talos::{ApplyMode, CallPolicy, TalosClient, TlsMode};
use endsys_lab::NodeState;
use fixture::{start_lab, up_options, Deadlines};
use memory::{MemorySecrets, MemorySource};

fn options(dir: &std::path::Path) -> UpOptions {
    up_options(
        dir,
        StepId::Kubeconfig,
        Deadlines {
            node: Duration::from_secs(30),
            reach: Duration::from_secs(10),
            retry_budget: Duration::from_secs(5),
        },
    )
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Event>>>);

impl EventSink for Collect {
    fn record(&mut self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Collect {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

async fn run(src: &MemorySource, opts: &UpOptions) -> (Result<UpReport, FlowError>, Vec<Event>) {
    let em = Emitter::new();
    let c = Collect::default();
    em.add_sink(Box::new(c.clone()));
    let r = up(src as &dyn ClusterSource, opts, &em).await;
    (r, c.events())
}

fn outcome_of(events: &[Event], step: StepId) -> Outcome {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepFinished { outcome, .. } if e.step == step && e.node.is_none() => {
                Some(outcome.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no step_finished for {step:?}"))
}

async fn etcd_member_count(src: &MemorySource, ip: &str) -> usize {
    let r = src.render().unwrap();
    let c =
        TalosClient::connect(ip, TlsMode::Mutual(r.credentials), CallPolicy::default()).unwrap();
    c.etcd_members(false).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_three_control_planes_then_rerun_changes_nothing() {
    let lab = start_lab(140, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "lab"), None);
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let (r, events) = run(&src, &opts).await;
    let report = r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(lab.bootstrap_calls(), 1);
    assert_eq!(lab.apply_calls(), 3);
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running);
        assert_eq!(n.service_state("etcd").as_deref(), Some("Running"));
    }
    assert_eq!(etcd_member_count(&src, "127.0.140.11").await, 3);
    assert!(matches!(
        outcome_of(&events, StepId::Bootstrap),
        Outcome::Done { .. }
    ));
    match outcome_of(&events, StepId::Apiserver) {
        Outcome::Skipped { reason } => assert!(reason.contains("--until"), "{reason}"),
        o => panic!("{o:?}"),
    }
    let kc = report.kubeconfig.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let j = Journal::<UpFacts>::read_of(&Journal::<UpFacts>::up_path(dir.path()), "lab")
        .unwrap()
        .expect("journal written");
    assert_eq!(j.facts.bootstrap_node.as_deref(), Some("cp1"));
    assert_ne!(j.steps["etcd_quorum"].outcome, "failed");

    // Re-run on the finished cluster: nothing applied, no Bootstrap call, every
    // step skipped, no node changed state.
    let mut watches: Vec<_> = lab.nodes().iter().map(|n| n.watch_state()).collect();
    for w in &mut watches {
        w.borrow_and_update();
    }
    let (r, events) = run(&src, &opts).await;
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(lab.bootstrap_calls(), 1, "re-run must not call Bootstrap");
    assert_eq!(lab.apply_calls(), 3, "re-run must not apply");
    for step in [
        StepId::Apply,
        StepId::WaitConfigured,
        StepId::Bootstrap,
        StepId::EtcdQuorum,
        StepId::Kubeconfig,
    ] {
        let o = outcome_of(&events, step);
        assert!(matches!(o, Outcome::Skipped { .. }), "{step:?}: {o:?}");
    }
    for w in &watches {
        assert!(!w.has_changed().unwrap(), "a node changed state on re-run");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_and_two_workers() {
    let lab = start_lab(141, 5, 5, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "mixed"), None);
    let dir = tempfile::tempdir().unwrap();
    let (r, events) = run(&src, &options(dir.path())).await;
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(lab.bootstrap_calls(), 1);
    assert_eq!(etcd_member_count(&src, "127.0.141.11").await, 3);
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running);
    }
    assert_eq!(
        lab.nodes()[3].service_state("etcd"),
        None,
        "workers run no etcd"
    );
    // Per-node apply and wait events for all five nodes.
    for host in ["cp1", "cp2", "cp3", "worker1", "worker2"] {
        for step in [StepId::Apply, StepId::WaitConfigured] {
            assert!(
                events.iter().any(|e| e.step == step
                    && e.node.as_deref() == Some(host)
                    && matches!(e.kind, EventKind::StepFinished { .. })),
                "{host} {step:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_selector_matching_nothing_stops_before_any_apply() {
    let lab = start_lab(142, 3, 3, 0.0).await;
    let mut def = lab_definition(&lab, 3, "disks");
    def.nodes[1].install_disk = Some(DiskTarget::Selector(vec![(
        "model".into(),
        "WDC WD40EFRX*".into(),
    )]));
    def.nodes[2].install_disk = Some(DiskTarget::Selector(vec![(
        "model".into(),
        "Samsung*".into(),
    )]));
    let src = MemorySource::new(def, None);
    let dir = tempfile::tempdir().unwrap();
    let (r, events) = run(&src, &options(dir.path())).await;
    let e = r.unwrap_err();
    assert!(e.is_input_error());
    let text = e.explain();
    assert!(
        text.contains("cp2 (127.0.142.12)") && text.contains("matches 0 disk"),
        "{text}"
    );
    assert!(
        text.contains("cp3 (127.0.142.13)") && text.contains("matches 2 disk"),
        "{text}"
    );
    // The table shows model, serial and size.
    assert!(
        text.contains("Samsung SSD 980 500GB") && text.contains("S64DNL0T000002B"),
        "{text}"
    );
    assert!(text.contains("500 GB"), "{text}");
    assert_eq!(lab.apply_calls(), 0);
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Maintenance);
    }
    assert!(matches!(
        outcome_of(&events, StepId::Preflight),
        Outcome::Failed { .. }
    ));
    assert!(!events
        .iter()
        .any(|e| e.step == StepId::Apply && matches!(e.kind, EventKind::StepStarted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_configured_by_another_cluster_is_refused() {
    let lab = start_lab(143, 3, 3, 0.0).await;
    let def = lab_definition(&lab, 3, "ours");
    // cp2 already runs a config from another secrets bundle.
    let other = MemorySource::new(def.clone(), Some(MemorySecrets::generate().unwrap()));
    let cfg = other.render().unwrap().configs["cp2"].clone();
    let c = TalosClient::connect(
        "127.0.143.12",
        TlsMode::Insecure { fingerprint: None },
        CallPolicy::default(),
    )
    .unwrap();
    c.apply_configuration(&cfg, ApplyMode::Auto, false)
        .await
        .unwrap();
    let mut w = lab.nodes()[1].watch_state();
    w.wait_for(|s| *s == NodeState::Running).await.unwrap();

    let src = MemorySource::new(def, Some(MemorySecrets::generate().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(&src, &options(dir.path())).await;
    let e = r.unwrap_err();
    let text = e.explain();
    assert!(text.contains("cp2 (127.0.143.12)"), "{text}");
    assert!(
        text.contains("another cluster") && text.contains("reset"),
        "{text}"
    );
    assert_eq!(lab.apply_calls(), 1, "only the foreign apply");

    // Without any secrets, the tool refuses to generate a bundle under a running node.
    let fresh = MemorySource::new(lab_definition(&lab, 3, "ours"), None);
    let dir2 = tempfile::tempdir().unwrap();
    let (r, _) = run(&fresh, &options(dir2.path())).await;
    match r.unwrap_err() {
        FlowError::SecretsMissingClusterExists { nodes, .. } => {
            assert_eq!(nodes, vec!["cp2 (127.0.143.12)".to_string()])
        }
        other => panic!("{}", other.explain()),
    }
    assert!(!fresh.has_secrets().unwrap(), "no secrets generated");
}

/// Powers a node off synchronously when the apply step starts (before any apply).
struct PowerOffAtApply {
    node: endsys_lab::LabNode,
    done: bool,
}

impl EventSink for PowerOffAtApply {
    fn record(&mut self, e: &Event) {
        if !self.done
            && e.step == StepId::Apply
            && e.node.is_none()
            && matches!(e.kind, EventKind::StepStarted { .. })
        {
            self.done = true;
            let node = self.node.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(node.power_off())
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_powered_off_during_apply_fails_with_its_name_while_others_finish() {
    let lab = start_lab(144, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "power"), None);
    let dir = tempfile::tempdir().unwrap();
    let em = Emitter::new();
    let c = Collect::default();
    em.add_sink(Box::new(PowerOffAtApply {
        node: lab.nodes()[2].clone(),
        done: false,
    }));
    em.add_sink(Box::new(c.clone()));
    let e = up(&src as &dyn ClusterSource, &options(dir.path()), &em)
        .await
        .unwrap_err();
    match &e {
        FlowError::Nodes { step, failures } => {
            assert_eq!(step, "apply");
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].node, "cp3 (127.0.144.13)");
        }
        other => panic!("{}", other.explain()),
    }
    let text = e.explain();
    assert!(
        text.contains("cp3") && text.contains("next action"),
        "{text}"
    );
    let events = c.events();
    for host in ["cp1", "cp2"] {
        let o = events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::StepFinished { outcome, .. }
                    if e.step == StepId::Apply && e.node.as_deref() == Some(host) =>
                {
                    Some(outcome.clone())
                }
                _ => None,
            })
            .unwrap();
        assert!(matches!(o, Outcome::Done { .. }), "{host}: {o:?}");
    }
    assert_eq!(lab.apply_calls(), 2);
    assert_eq!(lab.bootstrap_calls(), 0);

    // Power it back on: the next run converges.
    lab.nodes()[2].power_on().await;
    let (r, _) = run(&src, &options(dir.path())).await;
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(lab.bootstrap_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_what_up_would_do_and_changes_nothing() {
    let lab = start_lab(145, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "plan"), None);
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let items = plan(&src as &dyn ClusterSource, &opts).await.unwrap();
    assert!(items
        .iter()
        .any(|i| i.step == StepId::Preflight && i.acts && i.action.contains("secrets")));
    assert_eq!(
        items
            .iter()
            .filter(|i| i.step == StepId::Apply && i.acts)
            .count(),
        3
    );
    assert!(items
        .iter()
        .any(|i| i.action.contains("install disk /dev/nvme0n1")));
    assert_eq!(lab.apply_calls(), 0);
    assert!(!src.has_secrets().unwrap(), "plan generates nothing");
    let (r, _) = run(&src, &opts).await;
    r.unwrap();
    let items = plan(&src as &dyn ClusterSource, &opts).await.unwrap();
    let acting: Vec<_> = items.iter().filter(|i| i.acts).collect();
    assert!(acting.is_empty(), "{acting:?}");
    assert!(items
        .iter()
        .any(|i| i.step == StepId::Bootstrap && i.action.contains("already bootstrapped")));
    assert_eq!(lab.apply_calls(), 3);
    assert_eq!(lab.bootstrap_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_named_and_nothing_is_applied() {
    let lab = start_lab(146, 3, 3, 0.0).await;
    lab.nodes()[1].power_off().await;
    let src = MemorySource::new(lab_definition(&lab, 3, "down"), None);
    let dir = tempfile::tempdir().unwrap();
    let (r, events) = run(&src, &options(dir.path())).await;
    let e = r.unwrap_err();
    let text = e.explain();
    assert!(
        text.contains("cp2 (127.0.146.12)") && text.contains("unreachable"),
        "{text}"
    );
    assert!(text.contains("power the nodes on"), "{text}");
    assert_eq!(lab.apply_calls(), 0);
    assert!(events.iter().any(|e| e.node.as_deref() == Some("cp2")
        && matches!(&e.kind, EventKind::NodeState { state } if state.starts_with("unreachable"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talos_1_12_nodes_come_up_too() {
    // 1.12 maintenance is a separate server without Version: classification is by
    // TLS handshake only, applies use AUTO.
    let lab = fixture::start_lab_of("v1.12.6", 147, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "old"), None);
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(&src, &options(dir.path())).await;
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(lab.bootstrap_calls(), 1);
    assert_eq!(etcd_member_count(&src, "127.0.147.11").await, 3);
}
