//! Day-2 operations end to end against the lab, over real TCP + TLS: etcd backup
//! and status, the quorum guard, `node reimage` and `node rejoin`, kills at every
//! journaled step boundary. Each cluster is brought up by the real `up` (Talos
//! half plus the kubeconfig, so the Kubernetes steps run against the lab API).
//! Each test owns a /24 of 127.0.0.0/8 (201–239).

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::ClusterSource;
use endsys_bootstrap::engine::{
    Cluster, Doctor, Emitter, Event, EventKind, EventSink, FlowError, Outcome, StepId,
};
use endsys_bootstrap::flows::backup::{etcd_status, take_backup, verify_backup};
use endsys_bootstrap::flows::nodes::{self, reimage, rejoin, NodeOpOptions};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::snapshot::sidecar_path;
use endsys_bootstrap::talos::CallPolicy;
use endsys_lab::{Lab, NodeState};
use fixture::{node_op_options, up_options, Deadlines, KillAt};
use memory::MemorySource;

const DEADLINES: Deadlines = Deadlines {
    node: Duration::from_secs(60),
    reach: Duration::from_secs(10),
    retry_budget: Duration::from_secs(5),
};

fn policy() -> CallPolicy {
    fixture::policy(DEADLINES.retry_budget)
}

struct Env {
    lab: Lab,
    dir: tempfile::TempDir,
    cluster: Cluster,
}

/// A 3-CP lab cluster brought up by the real `up`, its API endpoint a VIP-like
/// address (127.0.N.10) that no node owns, as endsys has, so the Kubernetes API
/// survives any one control plane being wiped.
async fn cluster(subnet: u8, time_scale: f64) -> Env {
    let lab = fixture::start_lab(subnet, 3, 3, time_scale).await;
    let mut def = lab_definition(&lab, 3, "day2");
    def.endpoint = format!("https://127.0.{subnet}.10:6443");
    let src = MemorySource::new(def, None);
    let dir = tempfile::tempdir().unwrap();
    let o = up_options(dir.path(), StepId::Kubeconfig, DEADLINES);
    up(&src as &dyn ClusterSource, &o, &Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    // The Kubernetes steps need the API; it comes up by itself after etcd.
    tokio::time::timeout(Duration::from_secs(30), lab.kube().wait_up())
        .await
        .expect("lab kube-apiserver up");
    let cluster = Cluster::load(&src, dir.path()).unwrap();
    assert!(cluster.kubeconfig.is_some());
    Env { lab, dir, cluster }
}

fn options(env: &Env) -> NodeOpOptions {
    node_op_options(env.dir.path(), DEADLINES)
}

/// The text a node operation's event carries (its `day2` line's message).
fn message(e: &Event) -> Option<String> {
    Some(match &e.kind {
        EventKind::StepStarted { description } => description.clone(),
        EventKind::StepFinished {
            outcome: Outcome::Done { detail },
            ..
        } => detail.clone(),
        EventKind::StepFinished {
            outcome: Outcome::Skipped { reason },
            ..
        } => reason.clone(),
        EventKind::Waiting { what } => what.clone(),
        EventKind::Progress { message } | EventKind::Warning { message } => message.clone(),
        _ => return None,
    })
}

/// Every event of an operation, as the sink saw it (synchronously).
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Event>>>);

impl EventSink for Collect {
    fn record(&mut self, ev: &Event) {
        self.0.lock().unwrap().push(ev.clone());
    }
}

impl Collect {
    fn messages(&self, step: StepId) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.step == step)
            .filter_map(message)
            .collect()
    }

    /// An emitter feeding this collector.
    fn emitter(&self) -> Emitter {
        let em = Emitter::new();
        em.add_sink(Box::new(self.clone()));
        em
    }
}

/// An emitter nobody listens to.
fn quiet() -> Emitter {
    Emitter::new()
}

/// Samples etcd quorum on every lab change until stopped; returns the samples
/// that had no quorum and the number of samples.
fn sample_quorum(
    lab: &Lab,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(Vec<String>, usize)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut changes = lab.changes();
    let etcd = lab.etcd();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut lost = Vec::new();
        let mut n = 0;
        while !s.load(Ordering::SeqCst) {
            match etcd.quorum() {
                Ok((healthy, members, true)) => {
                    n += 1;
                    let _ = (healthy, members);
                }
                Ok((healthy, members, false)) => {
                    n += 1;
                    lost.push(format!("{healthy} healthy of {members}"));
                }
                Err(e) => lost.push(e.to_string()),
            }
            if tokio::time::timeout(Duration::from_millis(200), changes.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        (lost, n)
    });
    (stop, task)
}

async fn member_names(env: &Env) -> Vec<String> {
    let view = endsys_bootstrap::flows::guard::survey(&env.cluster, policy()).await;
    let mut names: Vec<String> = view.members.iter().map(|m| m.hostname.clone()).collect();
    names.sort();
    names
}

/// A run killed after EtcdLeaveCluster reached the node but before the journal
/// recorded it: the next run reads the member list (real state wins), sees the
/// member gone and converges, instead of refusing because the node no longer
/// answers EtcdStatus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimage_after_an_unjournaled_etcd_leave_converges() {
    let env = cluster(218, 0.0).await;
    let cp2 = env.cluster.node("cp2").unwrap().clone();
    env.cluster
        .mtls(&cp2, policy())
        .unwrap()
        .etcd_leave_cluster()
        .await
        .unwrap();
    assert_eq!(member_names(&env).await, ["cp1", "cp3"]);
    let (o, em) = (options(&env), quiet());
    tokio::time::timeout(
        Duration::from_secs(120),
        reimage(&env.cluster, "cp2", &o, &em),
    )
    .await
    .expect("reimage within 120 s")
    .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_private_with_sidecar_and_corruption_is_refused() {
    let env = cluster(211, 0.0).await;
    let out = env.dir.path().join("b").join("etcd.snapshot");
    let meta = take_backup(&env.cluster, policy(), &out).await.unwrap();
    assert_eq!(meta.cluster, "day2");
    assert_eq!(meta.members.len(), 3);
    assert!(meta.raft_index > 0);
    assert_eq!(meta.tool_version, env!("CARGO_PKG_VERSION"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [out.clone(), sidecar_path(&out)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
    }
    assert!(!out.with_extension("snapshot.tmp").exists());
    assert_eq!(verify_backup(&out).unwrap(), meta);

    // A flipped byte breaks the trailer; a re-trailered file breaks the sidecar.
    let good = std::fs::read(&out).unwrap();
    let mut bad = good.clone();
    bad[40] ^= 0xff;
    std::fs::write(&out, &bad).unwrap();
    let e = verify_backup(&out).unwrap_err();
    assert!(matches!(e, FlowError::Snapshot { .. }), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    use sha2::Digest;
    let n = bad.len() - 32;
    let trailer = sha2::Sha256::digest(&bad[..n]);
    bad[n..].copy_from_slice(&trailer);
    std::fs::write(&out, &bad).unwrap();
    let e = verify_backup(&out).unwrap_err();
    assert!(e.to_string().contains("sidecar records"), "{e}");
    // Truncated.
    std::fs::write(&out, &good[..good.len() - 100]).unwrap();
    assert!(verify_backup(&out).is_err());
    // No sidecar.
    std::fs::write(&out, &good).unwrap();
    std::fs::remove_file(sidecar_path(&out)).unwrap();
    assert!(verify_backup(&out)
        .unwrap_err()
        .to_string()
        .contains("sidecar"));

    // etcd status: members, one leader, per-CP DB size and raft index, alarms.
    let st = etcd_status(&env.cluster, policy()).await;
    assert_eq!(st.members.len(), 3);
    assert_eq!(st.members.iter().filter(|m| m.leader).count(), 1);
    assert!(st.leader.is_some());
    assert_eq!(st.control_planes.len(), 3);
    for c in &st.control_planes {
        assert!(c.error.is_none(), "{c:?}");
        assert!(c.db_size.unwrap() > 0 && c.raft_index.unwrap() > 0);
        assert!(c.alarms.is_empty());
    }
    let json = serde_json::to_value(&st).unwrap();
    assert!(json["members"][0]["peer_urls"].is_array());
    assert!(json["control_planes"][0]["db_size"].is_number());
    env.lab.nodes()[1].set_etcd_alarm("NOSPACE");
    let st = etcd_status(&env.cluster, policy()).await;
    assert!(
        st.control_planes[1].alarms[0].contains("alarm:NOSPACE"),
        "{st:?}"
    );
    assert!(st.table.contains("NOSPACE"), "{}", st.table);
    // The guard refuses while an alarm is raised.
    let e = reimage(&env.cluster, "cp1", &options(&env), &quiet())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NOSPACE"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimage_each_control_plane_keeps_quorum() {
    // Non-zero delays so the reimage spends real time in each lab state.
    let scale = 0.1;
    let env = cluster(212, scale).await;
    // Pods on cp1: one to evict, one a DaemonSet's (drains leave those).
    let kc =
        endsys_bootstrap::kube::client_from_kubeconfig(env.cluster.kubeconfig.as_ref().unwrap())
            .await
            .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(kc, "default");
    for (name, owner) in [("web", None), ("agent", Some("DaemonSet"))] {
        let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "cp1", "containers": [{"name": "c", "image": "nginx"}]}});
        if let Some(kind) = owner {
            pod["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": "agent", "uid": "u1", "controller": true}]);
        }
        pods.create(&Default::default(), &serde_json::from_value(pod).unwrap())
            .await
            .unwrap();
    }
    let (stop, sampler) = sample_quorum(&env.lab);
    let mut walls = Vec::new();
    for name in ["cp1", "cp2", "cp3"] {
        let c = Collect::default();
        let t0 = Instant::now();
        let r = reimage(&env.cluster, name, &options(&env), &c.emitter())
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", e.explain()));
        walls.push(t0.elapsed());
        assert!(r.backup.is_some());
        assert!(!r.resumed);
        assert!(r.forced.is_empty());
        assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"]);
        if name == "cp1" {
            let drain = c.messages(StepId::Drain).join("\n");
            // The web pod is evicted; the DaemonSet pod stays, and so do the
            // control-plane mirror pods (how many the lab kubelet has posted by
            // now depends on timing, so only "none of them evicted" is fixed).
            assert!(drain.contains("1 pod(s) evicted, "), "{drain}");
            let left: usize = drain
                .split("1 pod(s) evicted, ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(left >= 1, "{drain}");
            assert!(pods.get_opt("web").await.unwrap().is_none());
            assert!(pods.get_opt("agent").await.unwrap().is_some());
        }
        // The leave was confirmed through another control plane.
        let leave = c.messages(StepId::LeaveEtcd).join("\n");
        assert!(leave.contains("confirmed by EtcdMemberList"), "{leave}");
        assert!(!leave.contains(&format!("→ {name}\n")));
        let node = env.lab.node(name).unwrap();
        assert_eq!(node.state(), NodeState::Running);
        // The Node registered again and is schedulable.
        let n = env
            .lab
            .kube()
            .get("Node", None, name)
            .expect("Node registered again");
        assert!(
            n.pointer("/spec/unschedulable")
                .is_none_or(|v| v.is_null() || v == false),
            "{n}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let (lost, samples) = sampler.await.unwrap();
    assert!(lost.is_empty(), "quorum lost during reimage: {lost:?}");
    assert!(samples > 20, "only {samples} samples");
    // Lab critical path of one CP reimage (crates/lab/src/node.rs delays): reset 1 +
    // reboot 3 + boot 2 + etcd join 2, × time scale.
    let critical = Duration::from_secs_f64((1.0 + 3.0 + 2.0 + 2.0) * scale);
    let mut sorted = walls.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "reimage wall times {:?}; median {:.0} ms vs lab critical path {:.0} ms (overhead {:.0} ms); {samples} quorum samples, none lost",
        walls,
        median.as_secs_f64() * 1000.0,
        critical.as_secs_f64() * 1000.0,
        (median.as_secs_f64() - critical.as_secs_f64()) * 1000.0
    );
    assert!(median >= critical);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_disk_replacement_removes_the_stale_member() {
    let env = cluster(213, 0.0).await;
    let cp2 = env.lab.node("cp2").unwrap().clone();
    let old_id = cp2.etcd_member_id().unwrap();
    cp2.wipe_disk().await;
    cp2.power_on().await;
    assert_eq!(cp2.state(), NodeState::Maintenance);
    // The dead member is still listed (it never left).
    assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"]);
    // Reimaging another control plane now would leave 1 of 2: refused.
    let e = reimage(&env.cluster, "cp1", &options(&env), &quiet())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, FlowError::Guard { .. }), "{text}");
    assert!(text.contains("quorum needs 2"), "{text}");
    // Reimage is not the verb for a wiped node either... but rejoin is. First
    // with a fault: its etcd never joins; the rejoin times out naming etcd.
    cp2.block_etcd_join(true);
    let mut o = options(&env);
    o.node_deadline = Duration::from_secs(3);
    o.etcd_deadline = Duration::from_secs(3);
    let e = rejoin(&env.cluster, "cp2", &o, &quiet()).await.unwrap_err();
    assert!(matches!(e, FlowError::Timeout { .. }), "{}", e.explain());
    assert!(e.explain().contains("etcd"), "{}", e.explain());
    // Fault gone: the re-run resumes and converges.
    cp2.block_etcd_join(false);
    let r = rejoin(&env.cluster, "cp2", &options(&env), &quiet())
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert!(r.resumed);
    assert_eq!(r.removed.len(), 1, "{r:?}");
    assert_eq!(r.removed[0].0, format!("{old_id:016x}"));
    assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"]);
    let new_id = cp2.etcd_member_id().unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(cp2.state(), NodeState::Running);
    // A live, configured node is not rejoined.
    let e = rejoin(&env.cluster, "cp3", &options(&env), &quiet())
        .await
        .unwrap_err();
    assert!(e.explain().contains("node reimage cp3"), "{}", e.explain());
}

/// Powers a node on when a step starts (the operator bringing it back).
struct PowerOnAt {
    step: StepId,
    node: endsys_lab::LabNode,
    fired: AtomicBool,
}

impl EventSink for PowerOnAt {
    fn record(&mut self, ev: &Event) {
        if ev.step == self.step && !self.fired.swap(true, Ordering::SeqCst) {
            let n = self.node.clone();
            tokio::spawn(async move { n.power_on().await });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimage_refused_when_another_control_plane_is_down_allowed_with_force() {
    let env = cluster(214, 0.0).await;
    let cp3 = env.lab.node("cp3").unwrap().clone();
    cp3.power_off().await;
    let e = reimage(&env.cluster, "cp1", &options(&env), &quiet())
        .await
        .unwrap_err();
    let text = e.explain();
    assert!(matches!(e, FlowError::Guard { .. }), "{text}");
    assert!(text.contains("cp3"), "{text}");
    assert!(text.contains("keeps 1 healthy of 2"), "{text}");
    assert!(text.contains("MEMBER ID"), "{text}");
    assert!(text.contains("--force"), "{text}");
    // Nothing was touched.
    assert_eq!(env.lab.node("cp1").unwrap().state(), NodeState::Running);
    assert_eq!(member_names(&env).await.len(), 3);

    // Forced: proceeds with the reasons printed; the operator powers cp3 back on
    // while cp1 leaves, so quorum returns and the reimage completes.
    let c = Collect::default();
    let em = c.emitter();
    em.add_sink(Box::new(PowerOnAt {
        step: StepId::LeaveEtcd,
        node: cp3.clone(),
        fired: AtomicBool::new(false),
    }));
    let mut o = options(&env);
    o.force = true;
    let r = reimage(&env.cluster, "cp1", &o, &em)
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    assert!(!r.forced.is_empty());
    let warn: Vec<String> =
        c.0.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Warning { message } if e.step == StepId::Guard => Some(message.clone()),
                _ => None,
            })
            .collect();
    assert!(
        warn.iter()
            .any(|w| w.contains("--force") && w.contains("cp3")),
        "{warn:?}"
    );
    assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimage_killed_at_every_step_boundary_then_rerun_converges() {
    // Small delays so kills land while the node resets, reboots and joins.
    let env = Arc::new(cluster(215, 0.02).await);
    let (stop, sampler) = sample_quorum(&env.lab);
    let targets = ["cp2", "cp3", "cp1"];
    let mut killed = 0;
    let steps = nodes::reimage::steps().ids();
    for (i, step) in steps.iter().copied().enumerate() {
        let name = targets[i % targets.len()];
        if killed_at(&env, step, move |env, o, em| async move {
            reimage(&env.cluster, name, &o, &em).await
        })
        .await
        .is_none()
        {
            killed += 1;
        }
        let r = reimage(&env.cluster, name, &options(&env), &quiet())
            .await
            .unwrap_or_else(|e| panic!("{step}: re-run: {}", e.explain()));
        let _ = r;
        assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"], "{step}");
        for n in env.lab.nodes() {
            assert_eq!(n.state(), NodeState::Running, "{step}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (lost, _) = sampler.await.unwrap();
    assert!(lost.is_empty(), "quorum lost: {lost:?}");
    assert!(killed + 1 >= steps.len(), "only {killed} killed");
}

/// Runs `op` on `env` with its options, killed at the first `Done`/`Skipped` of
/// `step`; `None` if the kill landed, else what the run returned.
async fn killed_at<T, F, Fut>(env: &Arc<Env>, step: StepId, op: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Env>, NodeOpOptions, Emitter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, FlowError>> + Send + 'static,
{
    let env = env.clone();
    let o = options(&env);
    fixture::killed_at(KillAt::Completed(step), move |em| op(env, o, em)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_killed_at_every_step_boundary_then_rerun_converges() {
    let env = Arc::new(cluster(217, 0.02).await);
    let (stop, sampler) = sample_quorum(&env.lab);
    let targets = ["cp2", "cp3", "cp1"];
    let plan = nodes::rejoin::plan(&env.cluster, "cp1", &options(&env))
        .await
        .unwrap();
    let planned: Vec<StepId> = plan.iter().map(|s| s.step).collect();
    let steps = nodes::rejoin::steps().ids();
    assert_eq!(planned, steps);
    let mut killed = 0;
    let mut table = Vec::new();
    for (i, step) in steps.iter().copied().enumerate() {
        let name = targets[i % targets.len()];
        // The disk is replaced: the node boots into maintenance with a fresh
        // identity, its etcd member still listed.
        let node = env.lab.node(name).unwrap().clone();
        let old_id = node.etcd_member_id().unwrap();
        node.wipe_disk().await;
        node.power_on().await;
        assert_eq!(node.state(), NodeState::Maintenance, "{step}");
        assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"], "{step}");
        let removals = env.lab.member_removals();
        let t0 = Instant::now();
        let first = killed_at(&env, step, move |env, o, em| async move {
            rejoin(&env.cluster, name, &o, &em).await
        })
        .await;
        // Killed: the same command again. (Not killed, the node is rejoined and
        // a second `node rejoin` would be refused: it runs its config.)
        let r = match first {
            Some(r) => r,
            None => {
                killed += 1;
                rejoin(&env.cluster, name, &options(&env), &quiet())
                    .await
                    .unwrap_or_else(|e| panic!("{step}: re-run: {}", e.explain()))
            }
        };
        assert_eq!(
            env.lab.member_removals() - removals,
            1,
            "{step}: the stale member removed exactly once over both runs"
        );
        assert_eq!(r.removed.len(), 1, "{step}: {r:?}");
        assert_eq!(r.removed[0].0, format!("{old_id:016x}"), "{step}");
        assert_eq!(member_names(&env).await, ["cp1", "cp2", "cp3"], "{step}");
        assert_ne!(node.etcd_member_id().unwrap(), old_id, "{step}");
        for n in env.lab.nodes() {
            assert_eq!(n.state(), NodeState::Running, "{step}");
        }
        assert!(
            env.lab.kube().get("Node", None, name).is_some(),
            "{step}: Node {name} registered again"
        );
        table.push(format!(
            "{step}: {name}, both runs {:.2}s",
            t0.elapsed().as_secs_f64()
        ));
    }
    stop.store(true, Ordering::SeqCst);
    let (lost, _) = sampler.await.unwrap();
    println!("{}", table.join("\n"));
    // One member of three is down from the disk replacement until the rejoin:
    // 2 of 3 keep quorum throughout.
    assert!(lost.is_empty(), "quorum lost: {lost:?}");
    assert!(killed + 1 >= steps.len(), "only {killed} killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_node_receiving_each_call() {
    let env = cluster(216, 0.0).await;
    let o = options(&env);
    let steps = nodes::reimage::plan(&env.cluster, "cp2", &o).await.unwrap();
    let text: Vec<String> = steps
        .iter()
        .map(|s| format!("{}: {}", s.step, s.action))
        .collect();
    let text = text.join("\n");
    assert!(
        text.contains("EtcdLeaveCluster → cp2 (127.0.216.12)"),
        "{text}"
    );
    assert!(
        text.contains("EtcdMemberList → cp1 (127.0.216.11)"),
        "{text}"
    );
    assert!(
        text.contains("ApplyConfiguration (insecure, maintenance) → cp2"),
        "{text}"
    );
    assert!(text.contains("DELETE Node cp2 → Kubernetes API"), "{text}");
    let steps = nodes::rejoin::plan(&env.cluster, "cp1", &o).await.unwrap();
    let text: Vec<String> = steps
        .iter()
        .map(|s| format!("{}: {}", s.step, s.action))
        .collect();
    assert!(text
        .join("\n")
        .contains("EtcdRemoveMemberByID <stale id of cp1> → cp2 (127.0.216.12)"));
    // Plans change nothing.
    assert!(!env.dir.path().join("day2").exists());
    assert_eq!(member_names(&env).await.len(), 3);

    // A kubeconfig whose API server is the node to reimage (endpoint = one
    // CP's address, no VIP) is refused before anything is touched: after the
    // reset nothing could delete its Node or watch it come back.
    let mut on_cp1 = env.cluster.clone();
    let kc = String::from_utf8(on_cp1.kubeconfig.clone().unwrap()).unwrap();
    assert!(kc.contains("https://127.0.216.10:6443"), "{kc}");
    on_cp1.kubeconfig = Some(
        kc.replace("https://127.0.216.10:6443", "https://127.0.216.11:6443")
            .into_bytes(),
    );
    let applies = env.lab.apply_calls();
    let err = match reimage(&on_cp1, "cp1", &o, &quiet()).await {
        Err(e) => e,
        Ok(_) => panic!("reimage through the node's own API server was not refused"),
    };
    assert!(
        matches!(err, FlowError::ApiOnNode { ref server, .. } if server == "127.0.216.11"),
        "{err}"
    );
    assert!(
        err.next_action().contains("--skip-kubernetes"),
        "{}",
        err.next_action()
    );
    assert_eq!(env.lab.apply_calls(), applies);
    assert_eq!(env.lab.nodes()[0].state(), NodeState::Running);
    assert_eq!(member_names(&env).await.len(), 3);
    assert!(
        !env.dir.path().join("day2").exists(),
        "a refused reimage left a journal"
    );
}
