//! Workers as on metal: `up` and the day-2 verbs on 3 control planes + 2
//! workers from a talhelper definition, every node running the config `gen
//! config` renders (workers' `machine.ca` carries no key: their apid
//! certificate comes from the control planes' trustd). Each test owns a /24
//! of 127.0.0.0/8 (63–66).

#[path = "common/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use endsys_bootstrap::demo::{run_demo, DemoOptions, Inspect};
use endsys_bootstrap::engine::talhelper::TalhelperSource;
use endsys_bootstrap::engine::{
    Cluster, ClusterSource, Doctor, Emitter, Event, EventKind, EventSink, FlowError, StepId,
};
use endsys_bootstrap::flows::nodes::{reimage, rejoin};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::talos::{TalosClient, TlsMode};
use endsys_lab::{Lab, NodeState};
use fixture::{node_op_options, start_lab, up_options, Deadlines, SECRETS};
use serde_json::Value;

const DEADLINES: Deadlines = Deadlines {
    node: Duration::from_secs(60),
    reach: Duration::from_secs(10),
    retry_budget: Duration::from_secs(5),
};

/// Whole-test deadline.
const TEST: Duration = Duration::from_secs(120);

/// What `gen config` (the binary) writes for the files in `dir`, by hostname.
fn gen_config(talconfig: &Path, secrets: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = tempfile::tempdir().unwrap().keep().join("clusterconfig");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_endsys-bootstrap"))
        .args(["gen", "config", "--config"])
        .arg(talconfig)
        .arg("--secrets")
        .arg(secrets)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "gen config: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Some(host) = name
            .strip_suffix(".yaml")
            .and_then(|n| n.split_once('-'))
            .map(|(_, h)| h.to_string())
        {
            files.insert(host, std::fs::read(&p).unwrap());
        }
    }
    files
}

fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_workers_runs_every_node_on_its_rendered_config_through_five_layers() {
    let nodes: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let seen = nodes.clone();
    let o = DemoOptions {
        controlplanes: 3,
        inspect: Some(Inspect(Arc::new(move |k| {
            *seen.lock().unwrap() = k.list("Node", None);
        }))),
        ..fixture::demo_options(63, 5)
    };
    let em = Emitter::new();
    let events = fixture::collect_events(&em);
    let report = tokio::time::timeout(TEST, run_demo(&o, &em))
        .await
        .expect("demo within the deadline")
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    drop(em);
    let events = events.await.unwrap();
    for e in &events {
        if let EventKind::Progress { message } = &e.kind {
            assert!(!message.contains("in-memory"), "{message}");
        }
    }
    // Every lab node received exactly what `gen config` writes for it.
    let talos = report.state_dir.join("talos");
    let rendered = gen_config(&talos.join("talconfig.yaml"), &talos.join("talsecret.yaml"));
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        ["cp1", "cp2", "cp3", "worker1", "worker2"]
    );
    assert_eq!(
        report.applied.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>()
    );
    for (host, want) in &rendered {
        assert!(
            report.applied.get(host) == Some(want),
            "{host}: the lab node received another config than `gen config` writes"
        );
    }
    let worker = String::from_utf8_lossy(&rendered["worker1"]).to_string();
    assert!(worker.contains("type: worker"), "{worker}");
    assert!(!worker.contains("etcd:"), "a worker has no etcd section");
    // All five nodes joined Kubernetes and are Ready (the CNI rolled out).
    let nodes = nodes.lock().unwrap().clone();
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| ready(n))
        .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names, ["cp1", "cp2", "cp3", "worker1", "worker2"]);
}

/// The lab's talhelper definition (3 control planes + 2 workers) and the
/// checked-in secrets, in a fresh directory.
fn definition(lab: &Lab, name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let talconfig = fixture::write_talconfig(dir.path(), lab, 3, name);
    let secrets = dir.path().join("talsecret.yaml");
    std::fs::copy(SECRETS, &secrets).unwrap();
    (dir, talconfig, secrets)
}

fn source(talconfig: &Path, secrets: &Path) -> TalhelperSource {
    let mut s = TalhelperSource::new(talconfig, secrets);
    s.vars = Default::default();
    s
}

/// Reboots a node over its API (Reboot RPC, admin mTLS) once, when a step starts.
struct RebootAt {
    step: StepId,
    ip: String,
    creds: Arc<endsys_bootstrap::talos::Credentials>,
    fired: Arc<AtomicBool>,
}

impl EventSink for RebootAt {
    fn record(&mut self, ev: &Event) {
        let started = matches!(ev.kind, EventKind::StepStarted { .. });
        if ev.step == self.step && started && !self.fired.swap(true, Ordering::SeqCst) {
            let c = TalosClient::connect(
                &self.ip,
                TlsMode::Mutual(self.creds.clone()),
                fixture::policy(DEADLINES.retry_budget),
            )
            .unwrap();
            tokio::spawn(async move { c.reboot().await.unwrap() });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rebooted_mid_run_rejoins_with_a_fresh_certificate_from_trustd() {
    let lab = start_lab(64, 5, 3, 0.0).await;
    let (dir, talconfig, secrets) = definition(&lab, "reboot");
    let src = source(&talconfig, &secrets);
    let creds = src.render().unwrap().credentials;
    let repo = dir.path().join("repo");
    endsys_lab::repository::write_repo(&repo).unwrap();
    let mut o = up_options(
        &dir.path().join("state"),
        StepId::NodesRegistered,
        DEADLINES,
    );
    o.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).unwrap());
    let fired = Arc::new(AtomicBool::new(false));
    let em = Emitter::new();
    // Before etcd is bootstrapped (no Kubernetes yet): worker2 goes down and must
    // come back through trustd before its Node can register.
    em.add_sink(Box::new(RebootAt {
        step: StepId::Bootstrap,
        ip: lab.nodes()[4].ip().to_string(),
        creds,
        fired: fired.clone(),
    }));
    let r = tokio::time::timeout(TEST, up(&src as &dyn ClusterSource, &o, &em))
        .await
        .expect("up within the deadline");
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    assert!(fired.load(Ordering::SeqCst), "the reboot never fired");
    // Two workers, and worker2 once more after its reboot.
    assert_eq!(lab.trustd_signed(), 3);
    let w2 = lab.node("worker2").unwrap();
    assert_eq!(w2.state(), NodeState::Running);
    assert!(w2.has_trustd_certificate());
    assert!(lab.kube().get("Node", None, "worker2").is_some());
    // Workers leave etcd alone.
    let mut members: Vec<String> = lab
        .etcd()
        .members()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    members.sort();
    assert_eq!(members, ["cp1", "cp2", "cp3"]);
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_machine_token_is_named_before_any_node_is_touched() {
    let lab = start_lab(65, 5, 3, 0.0).await;
    let (dir, talconfig, secrets) = definition(&lab, "token");
    // A per-node patch gives worker1 another machine token.
    let text = std::fs::read_to_string(&talconfig).unwrap();
    let patched = text.replacen(
        "  - hostname: worker1\n",
        "  - hostname: worker1\n    patches: ['@wrong-token.yaml']\n",
        1,
    );
    assert_ne!(text, patched);
    std::fs::write(&talconfig, patched).unwrap();
    std::fs::write(
        dir.path().join("wrong-token.yaml"),
        "machine:\n  token: wrong0.0123456789abcdef\n",
    )
    .unwrap();
    let src = source(&talconfig, &secrets);
    let o = up_options(&dir.path().join("state"), StepId::Kubeconfig, DEADLINES);
    let e = tokio::time::timeout(TEST, up(&src as &dyn ClusterSource, &o, &Emitter::new()))
        .await
        .expect("up within the deadline")
        .unwrap_err();
    let text = e.explain();
    assert!(matches!(e, FlowError::Definition { .. }), "{text}");
    assert!(text.contains("worker worker1 (127.0.65.14)"), "{text}");
    assert!(text.contains("machine.token"), "{text}");
    assert!(text.contains("invalid token"), "{text}");
    assert!(!text.contains("worker2"), "{text}");
    assert_eq!(lab.apply_calls(), 0);
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reimage_and_rejoin_of_a_worker() {
    let lab = start_lab(66, 5, 3, 0.0).await;
    let (dir, talconfig, secrets) = definition(&lab, "day2w");
    let src = source(&talconfig, &secrets);
    let state = dir.path().join("state");
    let o = up_options(&state, StepId::Kubeconfig, DEADLINES);
    tokio::time::timeout(TEST, up(&src as &dyn ClusterSource, &o, &Emitter::new()))
        .await
        .expect("up within the deadline")
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    tokio::time::timeout(Duration::from_secs(30), lab.kube().wait_up())
        .await
        .expect("lab kube-apiserver up");
    let cluster = Cluster::load(&src, &state).unwrap();
    let opts = node_op_options(&state, DEADLINES);
    let members = |lab: &Lab| {
        let mut m: Vec<String> = lab
            .etcd()
            .members()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        m.sort();
        m
    };
    assert_eq!(lab.trustd_signed(), 2);

    // Reimage: reset, reinstall from the rendered config, a new certificate.
    let r = tokio::time::timeout(TEST, reimage(&cluster, "worker1", &opts, &Emitter::new()))
        .await
        .expect("reimage within the deadline")
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert!(
        r.backup.is_none(),
        "a worker's reimage takes no etcd backup"
    );
    let w1 = lab.node("worker1").unwrap();
    assert_eq!(w1.state(), NodeState::Running);
    assert!(w1.has_trustd_certificate());
    assert_eq!(lab.trustd_signed(), 3);
    assert_eq!(members(&lab), ["cp1", "cp2", "cp3"]);

    // Rejoin: the disk died; the fresh machine boots into maintenance.
    let w2 = lab.node("worker2").unwrap().clone();
    w2.wipe_disk().await;
    w2.power_on().await;
    assert_eq!(w2.state(), NodeState::Maintenance);
    tokio::time::timeout(TEST, rejoin(&cluster, "worker2", &opts, &Emitter::new()))
        .await
        .expect("rejoin within the deadline")
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(w2.state(), NodeState::Running);
    assert!(w2.has_trustd_certificate());
    assert_eq!(lab.trustd_signed(), 4);
    assert_eq!(members(&lab), ["cp1", "cp2", "cp3"]);
    // It runs the rendered config again.
    let rendered = src.render().unwrap();
    assert_eq!(
        w2.applied_config().as_deref(),
        rendered.configs.get("worker2").map(Vec::as_slice)
    );
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_behind_a_vip_endpoint_run_once_etcd_is_bootstrapped() {
    // The endpoint is a VIP no node owns before etcd elects its holder: workers
    // reach trustd only after bootstrap, so `up` cannot wait for them before it.
    let lab = start_lab(67, 5, 3, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut def = endsys_bootstrap::demo::lab_definition(&lab, 3, "vip");
    def.endpoint = "https://127.0.67.10:6443".into();
    // Each control plane carries the Layer-2 VIP on its link, as endsys does.
    let mut text = endsys_bootstrap::demo::lab_talconfig(&def, fixture::TALOS);
    for (i, n) in lab.nodes().iter().take(3).enumerate() {
        let head = format!("  - hostname: cp{}\n", i + 1);
        let mac = &n.hardware().links[0].mac;
        let with = format!(
            "{head}    networkInterfaces:\n      - deviceSelector:\n          hardwareAddr: \"{mac}\"\n        addresses: [\"{}/24\"]\n        vip:\n          ip: \"127.0.67.10\"\n",
            n.ip()
        );
        assert!(text.contains(&head));
        text = text.replacen(&head, &with, 1);
    }
    let talconfig = dir.path().join("talconfig.yaml");
    std::fs::write(&talconfig, text).unwrap();
    let secrets = dir.path().join("talsecret.yaml");
    std::fs::copy(SECRETS, &secrets).unwrap();
    let src = source(&talconfig, &secrets);
    let o = up_options(
        &dir.path().join("state"),
        StepId::Kubeconfig,
        Deadlines {
            node: Duration::from_secs(15),
            ..DEADLINES
        },
    );
    let em = Emitter::new();
    let events = fixture::collect_events(&em);
    let r = tokio::time::timeout(TEST, up(&src as &dyn ClusterSource, &o, &em))
        .await
        .expect("up within the deadline")
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    drop(em);
    let events = events.await.unwrap();
    let steps = fixture::steps_of(&r);
    assert!(steps.contains_key(&StepId::EtcdQuorum));
    // The workers were waited for after bootstrap, and they run.
    let deferred = events.iter().any(|e| {
        e.step == StepId::WaitConfigured
            && e.node.as_deref() == Some("worker1")
            && matches!(
                &e.kind,
                EventKind::StepFinished {
                    outcome: endsys_bootstrap::engine::Outcome::Skipped { reason },
                    ..
                } if reason.contains("trustd")
            )
    });
    assert!(deferred, "worker1 was not deferred past bootstrap");
    let waited = events.iter().any(|e| {
        e.step == StepId::EtcdQuorum
            && e.node.as_deref() == Some("worker2")
            && matches!(e.kind, EventKind::StepFinished { .. })
    });
    assert!(waited, "worker2 was not waited for after bootstrap");
    for w in ["worker1", "worker2"] {
        assert_eq!(lab.node(w).unwrap().state(), NodeState::Running, "{w}");
    }
    assert_eq!(lab.trustd_signed(), 2);
    lab.shutdown().await;
}
