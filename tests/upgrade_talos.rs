//! `upgrade talos` end to end against the lab, over real TCP + TLS: a rolling
//! upgrade 1.12 → 1.13 with etcd quorum sampled on every lab change, the
//! rollback that stops the rollout, refusals, the plan. Each test owns a /24
//! of 127.0.0.0/8 (35–44 for the upgrade tests).

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/upgrade.rs"]
mod upgrade;

use std::time::Instant;

use endsys_bootstrap::engine::{Doctor, FlowError, GateError, StepId};
use endsys_bootstrap::flows::upgrade::{plan_upgrade_talos, upgrade_talos};
use upgrade::{cluster, cluster_until, sample_quorum, Collect, TEST_DEADLINE};

const FROM: &str = "v1.12.6";
const TO: &str = "v1.13.9";
const IMAGE: &str = "ghcr.io/siderolabs/installer:v1.13.9";

/// 3 control planes + 2 workers on 1.12.6 → 1.13.9: every node on the new
/// version with a new boot ID, etcd quorum never lost on any lab change, the
/// legacy call on the 1.12 nodes (they all run 1.12 when reached), cordons
/// undone, every layer Ready before and after each node; a second run skips
/// every node; then on to 1.14.2 through the 1.13 API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_rolling_3cp_2w() {
    let env = cluster_until(35, FROM, 3, 2, 0.0, StepId::Adoption).await;
    let before = env.boot_ids();
    let (stop, sampler) = sample_quorum(&env.lab);
    let c = Collect::default();
    let em = c.emitter();
    let mut o = env.options();
    o.max_parallel = 2;
    let t0 = Instant::now();
    let r = tokio::time::timeout(TEST_DEADLINE, upgrade_talos(&env.cluster, &o, &em))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "upgrade within {TEST_DEADLINE:?}; the lab:\n{}",
                env.lab.report()
            )
        })
        .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), c.lines().join("\n")));
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (lost, samples) = sampler.await.unwrap();
    assert!(
        lost.is_empty(),
        "quorum lost in {} of {samples} samples: {lost:?}",
        lost.len()
    );
    assert!(samples > 10, "only {samples} quorum samples");
    assert_eq!(r.target, TO);
    let after = env.boot_ids();
    for (n, (host, id)) in env.lab.nodes().iter().zip(&after) {
        assert_eq!(n.talos_version(), TO, "{host}");
        let old = &before.iter().find(|(h, _)| h == host).unwrap().1;
        assert_ne!(old, id, "{host}: same boot ID");
        // Cordons undone.
        assert!(
            !env.lab
                .kube()
                .get("Node", None, host)
                .is_some_and(|n| n["spec"]["unschedulable"] == true),
            "{host} left cordoned"
        );
    }
    // 1.12 nodes take the legacy call; never LifecycleService.
    for host in ["cp1", "cp2", "cp3", "worker1", "worker2"] {
        let lines = c.of(host, StepId::Upgrade);
        assert!(
            lines.iter().any(|l| l.contains("MachineService.Upgrade")),
            "{host}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("LifecycleService")),
            "{host}: {lines:?}"
        );
    }
    assert!(
        r.backup.is_some(),
        "snapshot before the first control plane"
    );
    eprintln!("rolling upgrade of 5 nodes took {took:?}");
    // The layers gate ran before and after every node and saw every layer Ready.
    for host in ["cp1", "cp2", "cp3", "worker1", "worker2"] {
        let lines = c.of(host, StepId::Layers);
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("done all layers Ready"))
                .count(),
            2,
            "{host}: {lines:?}"
        );
    }
    let k =
        endsys_bootstrap::kube::client_from_kubeconfig(env.cluster.kubeconfig.as_ref().unwrap())
            .await
            .unwrap();
    let p = endsys_bootstrap::gitops::Tracker::new(k, endsys_bootstrap::gitops::LayerMap::endsys())
        .snapshot()
        .await
        .unwrap();
    assert!(p.all_ready(), "layers at the end:\n{}", p.render());
    // The etcd leader handed leadership over before it went down: exactly one
    // hand-over per control plane that led when reached, and at least one.
    let handed: Vec<String> = ["cp1", "cp2", "cp3"]
        .iter()
        .flat_map(|h| c.of(h, StepId::ForfeitLeader))
        .filter(|l| l.contains("done etcd leadership handed to"))
        .collect();
    assert!(!handed.is_empty(), "no leader hand-over: {:?}", c.lines());
    // Again: nothing to do.
    let r2 = upgrade_talos(&env.reload(), &o, &em).await.unwrap();
    assert!(
        r2.nodes.iter().all(|(_, w)| w.contains("already on")),
        "{:?}",
        r2.nodes
    );
    // The endsys path goes on to 1.14: now every node takes the 1.13 API
    // (pull, LifecycleService, Reboot) and proves its reboot with the 1.14
    // BootIDs resource.
    let mut o = env.options();
    o.to = Some("v1.14.2".into());
    o.max_parallel = 2;
    let c = Collect::default();
    let r3 = tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.reload(), &o, &c.emitter()),
    )
    .await
    .expect("within the deadline")
    .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), c.lines().join("\n")));
    assert!(
        r3.nodes
            .iter()
            .all(|(_, w)| w.contains("v1.13.9 → v1.14.2")),
        "{:?}",
        r3.nodes
    );
    for host in ["cp1", "cp2", "cp3", "worker1", "worker2"] {
        let lines = c.of(host, StepId::Upgrade);
        assert!(
            lines.iter().any(|l| l.contains("LifecycleService.Upgrade")),
            "{host}: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("MachineService.Upgrade")),
            "{host}: {lines:?}"
        );
    }
    assert!(env
        .lab
        .nodes()
        .iter()
        .all(|n| n.talos_version() == "v1.14.2"));
}

/// 1.13.8 → 1.13.9: on 1.13 nodes the image is pulled, then LifecycleService runs
/// the installer and the tool reboots; an image that fails to boot brings the
/// node back on its old version: the rollout stops there, names the node, and
/// touches no node after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_rollback_stops_and_names_node() {
    let env = cluster(36, "v1.13.8", 3, 1, 0.0).await;
    env.lab.set_image_fails_to_boot(IMAGE);
    let boots: Vec<u64> = env.lab.nodes().iter().map(|n| n.boots()).collect();
    let c = Collect::default();
    let em = c.emitter();
    let o = env.options();
    let e = tokio::time::timeout(TEST_DEADLINE, upgrade_talos(&env.cluster, &o, &em))
        .await
        .expect("within the deadline")
        .expect_err("rolled back");
    let text = e.explain();
    assert!(
        matches!(&e, FlowError::Gate(g) if matches!(**g, GateError::RolledBack { .. })),
        "{text}"
    );
    assert!(
        text.contains("cp1") && text.contains("rolled back"),
        "{text}"
    );
    assert!(text.contains("v1.13.8 → v1.13.9"), "{text}");
    let lines = c.of("cp1", StepId::PullImage);
    assert!(
        lines.iter().any(|l| l.contains("ImageService.Pull")),
        "{lines:?}"
    );
    let lines = c.of("cp1", StepId::Upgrade);
    assert!(
        lines.iter().any(|l| l.contains("LifecycleService.Upgrade")),
        "{lines:?}"
    );
    let cps = env.lab.nodes();
    assert_eq!(cps[0].talos_version(), "v1.13.8");
    assert_eq!(
        cps[0].boots(),
        boots[0] + 2,
        "cp1: the failed boot and the fallback"
    );
    for (n, b) in cps[1..].iter().zip(&boots[1..]) {
        assert_eq!(n.talos_version(), "v1.13.8");
        let host = n.hostname().unwrap_or_default();
        assert_eq!(n.boots(), *b, "{host} touched after the rollback");
    }
    assert!(
        !env.lab
            .kube()
            .get("Node", None, "cp1")
            .is_some_and(|n| n["spec"]["unschedulable"] == true),
        "cp1 left cordoned after the rollback"
    );

    // The image fixed: the same command upgrades cp1 afresh and goes on.
    env.lab.clear_image_fails_to_boot(IMAGE);
    let c = Collect::default();
    let r = tokio::time::timeout(
        TEST_DEADLINE,
        upgrade_talos(&env.reload(), &o, &c.emitter()),
    )
    .await
    .expect("within the deadline")
    .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), c.lines().join("\n")));
    assert!(r.resumed);
    assert!(env.lab.nodes().iter().all(|n| n.talos_version() == TO));
}

/// A control plane down: refused before any node is touched, naming it; with
/// --force the others are upgraded and the silent one is left out, said why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_refused_when_cp_down() {
    let env = cluster(38, FROM, 3, 1, 0.0).await;
    env.lab.nodes()[2].power_off().await;
    let boots: Vec<u64> = env.lab.nodes().iter().map(|n| n.boots()).collect();
    let o = env.options();
    let c = Collect::default();
    let e = upgrade_talos(&env.cluster, &o, &c.emitter())
        .await
        .expect_err("refused");
    let text = e.explain();
    assert!(e.is_input_error(), "{text}");
    assert!(
        text.contains("cp3") && text.contains("control plane down"),
        "{text}"
    );
    let now: Vec<u64> = env.lab.nodes().iter().map(|n| n.boots()).collect();
    assert_eq!(now, boots, "a node was touched");
    // --force: cp3 left out, the others upgraded. Quorum with 2 of 3 while one
    // reboots is lost: that is what --force accepts, and the guard says so.
    let mut o = env.options();
    o.force = true;
    let c = Collect::default();
    let r = tokio::time::timeout(TEST_DEADLINE, upgrade_talos(&env.cluster, &o, &c.emitter()))
        .await
        .expect("within the deadline")
        .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), c.lines().join("\n")));
    let cp3 = r.nodes.iter().find(|(h, _)| h == "cp3").unwrap();
    assert!(cp3.1.contains("left out"), "{cp3:?}");
    assert!(r.forced.iter().any(|f| f.contains("cp3")), "{:?}", r.forced);
    for n in [0, 1, 3] {
        assert_eq!(env.lab.nodes()[n].talos_version(), TO);
    }
    assert!(
        c.lines()
            .iter()
            .any(|l| l.contains("warning") && l.contains("--force")),
        "{:?}",
        c.lines()
    );
}

/// The plan names every call's receiving node, in rollout order, changing
/// nothing; the binary prints it for `plan upgrade talos` and `upgrade talos
/// --dry-run`. The image is the definition's, as `gen config` renders it (the
/// image factory's installer with the empty schematic here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_upgrade_names_receivers() {
    let env = upgrade::talhelper_cluster(40, FROM, 3, 2).await;
    let mut o = env.options();
    o.max_parallel = 2;
    let items = plan_upgrade_talos(&env.cluster, &o)
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    let text: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "{} {} {}",
                i.node.as_deref().unwrap_or("-"),
                i.step,
                i.action
            )
        })
        .collect();
    let joined = text.join("\n");
    let image = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.9";
    assert!(
        joined.contains(&format!(
            "cp1 upgrade MachineService.Upgrade(image={image}) → cp1 (127.0.40.11)"
        )),
        "{joined}"
    );
    assert!(joined.contains("cp1 snapshot EtcdSnapshot"), "{joined}");
    assert!(
        joined.contains("batch 4: worker1, worker2 in parallel"),
        "{joined}"
    );
    let order: Vec<&str> = items
        .iter()
        .filter(|i| i.step == StepId::Upgrade)
        .filter_map(|i| i.node.as_deref())
        .collect();
    assert_eq!(order, ["cp1", "cp2", "cp3", "worker1", "worker2"]);
    // The binary: `plan upgrade talos` (NDJSON) and `upgrade talos --dry-run` (text).
    let bin = env!("CARGO_BIN_EXE_endsys-bootstrap");
    let files = env.files.as_ref().unwrap();
    let common = |c: &mut tokio::process::Command| {
        c.arg("--config")
            .arg(&files.0)
            .arg("--secrets")
            .arg(&files.1)
            .arg("--state-dir")
            .arg(env.dir.path())
            .kill_on_drop(true);
    };
    let mut c = tokio::process::Command::new(bin);
    c.args([
        "--output",
        "json",
        "plan",
        "upgrade",
        "talos",
        "--max-parallel",
        "2",
    ]);
    common(&mut c);
    let out = tokio::time::timeout(TEST_DEADLINE, c.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result: {stdout}"));
    assert_eq!(result["what"], "plan-upgrade-talos");
    let steps = result["data"].as_array().unwrap();
    assert_eq!(steps.len(), items.len(), "{result}");
    let mut c = tokio::process::Command::new(bin);
    c.args(["upgrade", "talos", "--dry-run"]);
    common(&mut c);
    let out = tokio::time::timeout(TEST_DEADLINE, c.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("upgrade talos would:"), "{stdout}");
    assert!(stdout.contains("worker2  upgrade"), "{stdout}");
    // Nothing changed.
    assert!(env.lab.nodes().iter().all(|n| n.talos_version() == FROM));
    assert!(env
        .lab
        .nodes()
        .iter()
        .all(|n| n.staged_talos_version().is_none()));
}

/// `--legacy-upgrade`: a 1.13 node takes MachineService.Upgrade (no pull, no
/// LifecycleService, no separate reboot call) and still comes back on the
/// target with a new boot ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_upgrade_flag_uses_machine_service_on_1_13_nodes() {
    let env = cluster(56, TO, 1, 0, 0.0).await;
    let before = env.boot_ids();
    let c = Collect::default();
    let mut o = env.options();
    o.to = Some("v1.14.2".into());
    o.legacy_upgrade = true;
    o.force = true; // one control plane: the quorum guard refuses without it
    let r = tokio::time::timeout(TEST_DEADLINE, upgrade_talos(&env.cluster, &o, &c.emitter()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "upgrade within the deadline; the lab:\n{}",
                env.lab.report()
            )
        })
        .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), c.lines().join("\n")));
    assert_eq!(r.target, "v1.14.2");
    assert_eq!(env.lab.nodes()[0].talos_version(), "v1.14.2");
    assert_ne!(env.boot_ids(), before, "a new boot ID");
    let calls = c.of("cp1", StepId::Upgrade);
    assert!(
        calls.iter().any(|l| l.contains("MachineService.Upgrade")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|l| l.contains("LifecycleService")),
        "{calls:?}"
    );
    assert!(
        c.of("cp1", StepId::PullImage)
            .iter()
            .any(|l| l.contains("pulls the image itself")),
        "{:?}",
        c.lines()
    );
}
