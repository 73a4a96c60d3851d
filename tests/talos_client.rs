//! End-to-end tests of the Talos client against simulated nodes, over real TCP +
//! TLS on loopback. Each test owns a /24 of 127.0.0.0/8 so they run in parallel.

mod common;

use std::time::Duration;

use common::{apply_all, insecure, lab, mtls, policy, TestCluster};
use endsys_bootstrap::talos::client::ResetOptions;
use endsys_bootstrap::talos::resources::MachineStage;
use endsys_bootstrap::talos::wait::wait_for_status;
use endsys_bootstrap::talos::{probe_mode, ApplyMode, Dial, NodeMode, TalosError, TlsFailure};
use endsys_bootstrap::Doctor;
use endsys_lab::NodeState;
use futures::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn maintenance_mode_is_detected_and_restricted() {
    let lab = lab(101, 1, 1, "v1.13.9").await;
    let ip = lab.nodes()[0].ip().to_string();
    let dial = Dial::parse(&ip).unwrap();
    assert_eq!(
        probe_mode(&dial, None, Duration::from_secs(2))
            .await
            .unwrap(),
        NodeMode::Maintenance
    );

    let c = insecure(&ip);
    let v = c.version().await.unwrap();
    assert!(v.tag.starts_with("v1.13"), "{}", v.tag);
    assert!(!v.configured, "maintenance nodes report no features");
    assert_eq!(
        c.machine_status().await.unwrap().stage,
        MachineStage::Maintenance
    );
    let disks = c.disks().await.unwrap();
    assert!(disks
        .iter()
        .any(|d| d.name == "sda" && !d.spec.serial.is_empty()));
    let links = c.links().await.unwrap();
    assert_eq!(
        links[0].spec.hardware_addr,
        lab.nodes()[0].hardware().links[0].mac
    );

    // Reader role in 1.13 maintenance: bootstrap and kubeconfig refused, etcd calls
    // need a machine type.
    let e = c.bootstrap(false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let e = c.kubeconfig().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let e = c.etcd_members(true).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unimplemented), "{e}");
    assert!(
        e.likely_cause().contains("maintenance"),
        "{}",
        e.likely_cause()
    );
    // The maintenance wipe is allowed.
    c.block_device_wipe(&["nvme0n1".to_string()]).await.unwrap();
}

#[tokio::test]
async fn talos_1_12_maintenance_has_no_version_but_is_still_classified() {
    let lab = lab(102, 1, 1, "v1.12.6").await;
    let ip = lab.nodes()[0].ip().to_string();
    let c = insecure(&ip);
    let e = c.version().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unimplemented));
    assert!(
        e.likely_cause().contains("maintenance mode"),
        "{}",
        e.likely_cause()
    );
    let dial = Dial::parse(&ip).unwrap();
    assert_eq!(
        probe_mode(&dial, None, Duration::from_secs(2))
            .await
            .unwrap(),
        NodeMode::Maintenance
    );
    assert_eq!(
        c.machine_status().await.unwrap().stage,
        MachineStage::Maintenance
    );
    // 1.12 maintenance refuses NO_REBOOT applies.
    let cluster = TestCluster::new("old");
    let cfg = cluster.machine_config("n1", "controlplane", &ip);
    let e = c
        .apply_configuration(cfg.as_bytes(), ApplyMode::NoReboot, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unimplemented), "{e}");
    c.apply_configuration(cfg.as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap();
    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));
    wait_for_status(
        &admin,
        "running",
        WAIT,
        |s| s.stage == MachineStage::Running,
        |_| {},
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn apply_switches_the_node_to_mutual_tls_with_our_ca() {
    let lab = lab(103, 1, 1, "v1.13.9").await;
    let ip = lab.nodes()[0].ip().to_string();
    let cluster = TestCluster::new("t103");
    let other = TestCluster::new("other");
    let cfg = cluster.machine_config("node1", "controlplane", &ip);
    let out = insecure(&ip)
        .apply_configuration(cfg.as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(
        out.mode.as_deref(),
        Some("NO_REBOOT"),
        "1.13 maintenance rewrites AUTO"
    );

    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));
    let mut seen = Vec::new();
    let st = wait_for_status(
        &admin,
        "running",
        WAIT,
        |s| s.stage == MachineStage::Running,
        |p| seen.push(format!("{p:?}")),
    )
    .await
    .unwrap();
    assert_eq!(st.stage, MachineStage::Running);
    assert_eq!(lab.nodes()[0].state(), NodeState::Running);

    let dial = Dial::parse(&ip).unwrap();
    let ours = cluster.credentials(&["os:admin"]);
    let theirs = other.credentials(&["os:admin"]);
    assert_eq!(
        probe_mode(&dial, Some(&ours), Duration::from_secs(2))
            .await
            .unwrap(),
        NodeMode::Configured { our_ca: Some(true) }
    );
    assert_eq!(
        probe_mode(&dial, Some(&theirs), Duration::from_secs(2))
            .await
            .unwrap(),
        NodeMode::Configured {
            our_ca: Some(false)
        }
    );

    let v = admin.version().await.unwrap();
    assert!(v.configured);
    assert_eq!(admin.hostname().await.unwrap().hostname, "node1");

    // Insecure access no longer works, and the error says why.
    let e = insecure(&ip)
        .with_policy(policy().once())
        .version()
        .await
        .unwrap_err();
    match e.root() {
        TalosError::Tls { kind, .. } => assert!(
            matches!(kind, TlsFailure::ClientCertRequired),
            "{kind:?}: {e}"
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(
        e.next_action().contains("talosconfig"),
        "{}",
        e.next_action()
    );

    // A talosconfig from another bundle: the node's certificate is unknown to us.
    let e = mtls(&ip, theirs)
        .with_policy(policy().once())
        .version()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.root(),
            TalosError::Tls {
                kind: TlsFailure::UnknownAuthority,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.likely_cause().contains("different secrets bundle"));
}

#[tokio::test]
async fn roles_from_the_client_certificate_are_enforced() {
    let lab = lab(104, 1, 1, "v1.13.9").await;
    let ip = lab.nodes()[0].ip().to_string();
    let cluster = TestCluster::new("t104");
    apply_all(&cluster, &lab, 1).await;
    let reader = mtls(&ip, cluster.credentials(&["os:reader"]));
    reader.version().await.unwrap();
    reader.service_list().await.unwrap();
    let e = reader.bootstrap(false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
    let dir = tempfile::tempdir().unwrap();
    let e = reader
        .etcd_snapshot(&dir.path().join("s.db"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
    let e = reader.reboot().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));

    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));
    admin.bootstrap(false, false).await.unwrap();
    let backup = mtls(&ip, cluster.credentials(&["os:etcd:backup"]));
    wait_members(&admin, 1).await;
    backup
        .etcd_snapshot(&dir.path().join("s.db"))
        .await
        .unwrap();
    let e = backup.kubeconfig().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
}

/// Waits, on the nodes' own COSI watches, until each control plane reports a local
/// etcd member, then returns the member list as the first one sees it.
async fn wait_members(
    c: &endsys_bootstrap::talos::TalosClient,
    n: usize,
) -> Vec<endsys_bootstrap::talos::EtcdMember> {
    use endsys_bootstrap::talos::resources::{types, WatchEventKind};
    let (ns, ty, id) = types::ETCD_LOCAL_MEMBER;
    let ip = c.label().to_string();
    let base: std::net::Ipv4Addr = ip.parse().unwrap();
    let creds_client = c.clone();
    for i in 0..n {
        let o = base.octets();
        let node_ip = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3] + i as u8).to_string();
        let target = if i == 0 {
            creds_client.clone()
        } else {
            creds_client.for_node(&node_ip)
        };
        let mut events = Box::pin(target.watch(ns, ty, Some(id)).await.unwrap());
        tokio::time::timeout(WAIT, async {
            while let Some(ev) = events.next().await {
                let ev = ev.unwrap();
                if matches!(ev.kind, WatchEventKind::Created | WatchEventKind::Updated)
                    && ev.resource.is_some()
                {
                    return;
                }
            }
            panic!("{node_ip}: watch ended before etcd joined");
        })
        .await
        .unwrap_or_else(|_| panic!("{node_ip}: no etcd member within {WAIT:?}"));
    }
    let members = c.etcd_members(false).await.unwrap();
    assert_eq!(members.len(), n, "{members:?}");
    members
}

#[tokio::test]
async fn etcd_bootstraps_once_across_nodes_and_the_others_join() {
    let lab = lab(105, 4, 3, "v1.13.9").await;
    let cluster = TestCluster::new("t105");
    apply_all(&cluster, &lab, 3).await;
    let creds = cluster.credentials(&["os:admin"]);
    let ips: Vec<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let first = mtls(&ips[0], creds.clone());
    first.bootstrap(false, false).await.unwrap();
    let members = wait_members(&first, 3).await;
    let mut names: Vec<_> = members.iter().map(|m| m.hostname.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["node1", "node2", "node3"],
        "workers never join etcd"
    );
    assert!(members.iter().all(|m| m.id_hex().len() == 16));

    // A second Bootstrap, anywhere, is refused as already done.
    for ip in &ips[..3] {
        let e = mtls(ip, creds.clone())
            .bootstrap(false, false)
            .await
            .unwrap_err();
        assert!(e.is_already_bootstrapped(), "{ip}: {e}");
    }
    assert_eq!(lab.etcd().cluster_count(), 1);
    // The worker cannot bootstrap and cannot forward calls.
    let worker = mtls(&ips[3], creds.clone());
    let e = worker.bootstrap(false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unimplemented));
    let e = worker.for_node(&ips[0]).version().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
    assert!(e.likely_cause().contains("worker"), "{}", e.likely_cause());

    // Targeting through an endpoint with `node` metadata.
    let via = first.for_node(&ips[1]);
    assert_eq!(via.hostname().await.unwrap().hostname, "node2");
    let local = via.etcd_local_member().await.unwrap();
    assert!(members.iter().any(|m| Some(m.id) == local));

    let status = first.etcd_status().await.unwrap();
    assert!(status.leader != 0);
    let services = first.service_list().await.unwrap();
    let etcd = services.iter().find(|s| s.id == "etcd").unwrap();
    assert_eq!(etcd.state, "Running");
    assert!(etcd.healthy);

    // Leadership and membership changes.
    let leader_node = members.iter().find(|m| m.id == status.leader).unwrap();
    let leader_ip = ips[["node1", "node2", "node3"]
        .iter()
        .position(|h| *h == leader_node.hostname)
        .unwrap()]
    .clone();
    let new_leader = mtls(&leader_ip, creds.clone())
        .etcd_forfeit_leadership()
        .await
        .unwrap();
    assert!(!new_leader.is_empty() && new_leader != leader_node.hostname);
    let node3 = members.iter().find(|m| m.hostname == "node3").unwrap();
    mtls(&ips[2], creds.clone())
        .etcd_leave_cluster()
        .await
        .unwrap();
    let after = first.etcd_members(false).await.unwrap();
    assert!(after.iter().all(|m| m.id != node3.id));
    let e = first.etcd_remove_member(node3.id).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
}

#[tokio::test]
async fn kubeconfig_is_extracted_from_the_tarball() {
    let lab = lab(106, 1, 1, "v1.13.9").await;
    let ip = lab.nodes()[0].ip().to_string();
    let cluster = TestCluster::new("t106");
    apply_all(&cluster, &lab, 1).await;
    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));
    let kc = String::from_utf8(admin.kubeconfig().await.unwrap()).unwrap();
    assert!(kc.contains("admin@t106"), "{kc}");
    assert!(kc.contains(&format!("https://{ip}:6443")));
    assert!(kc.contains("client-certificate-data"));
}

#[tokio::test]
async fn reboot_windows_and_dropped_calls_are_survived_by_retries() {
    let lab = lab(107, 1, 1, "v1.13.9").await;
    let node = &lab.nodes()[0];
    let ip = node.ip().to_string();
    let cluster = TestCluster::new("t107");
    apply_all(&cluster, &lab, 1).await;
    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));

    node.drop_next_calls(2);
    admin.version().await.unwrap();
    node.drop_next_calls(1);
    let e = admin
        .with_policy(policy().once())
        .version()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable));
    assert!(e.is_transient());

    // A reboot: the port closes, then comes back with the same config.
    node.set_reboot_delay(Duration::from_millis(300));
    let mut state = node.watch_state();
    admin.reboot().await.unwrap();
    state
        .wait_for(|s| *s == NodeState::Rebooting)
        .await
        .unwrap();
    let v = admin.version().await.unwrap();
    assert!(v.configured);

    // Powered off: refused, explained.
    node.power_off().await;
    // The open connection is cut first; reconnecting is then refused.
    let e = admin
        .with_policy(policy().with_budget(Duration::from_millis(300)))
        .version()
        .await
        .unwrap_err();
    match e.root() {
        TalosError::Connect { refused, .. } => assert!(refused),
        other => panic!("expected connection refused, got {other:?}"),
    }
    assert!(e.likely_cause().contains("powered off"));
    node.power_on().await;
    wait_for_status(
        &admin,
        "running",
        WAIT,
        |s| s.stage == MachineStage::Running,
        |_| {},
    )
    .await
    .unwrap();

    // Wrong CA served: a new connection refuses it (open ones keep their session).
    node.serve_wrong_ca(true);
    let fresh = mtls(&ip, cluster.credentials(&["os:admin"]));
    let e = fresh
        .with_policy(policy().once())
        .version()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.root(),
            TalosError::Tls {
                kind: TlsFailure::UnknownAuthority,
                ..
            }
        ),
        "{e:?}"
    );
    node.serve_wrong_ca(false);
}

#[tokio::test]
async fn snapshot_recover_round_trip_and_corrupt_snapshots_are_refused() {
    let lab = lab(108, 3, 3, "v1.13.9").await;
    let cluster = TestCluster::new("t108");
    apply_all(&cluster, &lab, 3).await;
    let creds = cluster.credentials(&["os:admin"]);
    let ips: Vec<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let first = mtls(&ips[0], creds.clone());
    first.bootstrap(false, false).await.unwrap();
    wait_members(&first, 3).await;
    lab.etcd()
        .put(
            "/registry/namespaces/keep-me",
            b"before the disaster".to_vec(),
        )
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("etcd.snapshot");
    let info = first.etcd_snapshot(&snap).await.unwrap();
    assert_eq!(info.size % 512, 32);
    assert!(!dir.path().join("etcd.snapshot.part").exists());

    // A corrupt copy is refused before anything is uploaded.
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[10] ^= 0xff;
    let bad = dir.path().join("bad.snapshot");
    std::fs::write(&bad, &bytes).unwrap();
    let e = first.etcd_recover(&bad, false).await.unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    std::fs::write(&bad, &bytes[..bytes.len() - 7]).unwrap();
    let e = first.etcd_recover(&bad, false).await.unwrap_err();
    assert!(e.to_string().contains("sha256 checksum not found"), "{e}");

    // Disaster: every control plane wiped back to maintenance, configs re-applied.
    for ip in &ips {
        let c = mtls(ip, creds.clone());
        c.reset(&ResetOptions {
            graceful: false,
            reboot: true,
            wipe_labels: vec!["STATE".into(), "EPHEMERAL".into()],
        })
        .await
        .unwrap();
    }
    for node in lab.nodes() {
        node.watch_state()
            .wait_for(|s| *s == NodeState::Maintenance)
            .await
            .unwrap();
    }
    assert!(
        lab.etcd().get("/registry/namespaces/keep-me").is_err(),
        "no etcd left after the wipe"
    );
    apply_all(&cluster, &lab, 3).await;

    first.etcd_recover(&snap, false).await.unwrap();
    first.bootstrap(true, false).await.unwrap();
    wait_members(&first, 3).await;
    assert_eq!(
        lab.etcd()
            .get("/registry/namespaces/keep-me")
            .unwrap()
            .as_deref(),
        Some(&b"before the disaster"[..])
    );
}

#[tokio::test]
async fn health_check_and_events_stream() {
    let lab = lab(109, 1, 1, "v1.13.9").await;
    let ip = lab.nodes()[0].ip().to_string();
    let cluster = TestCluster::new("t109");
    apply_all(&cluster, &lab, 1).await;
    let admin = mtls(&ip, cluster.credentials(&["os:admin"]));
    admin.bootstrap(false, false).await.unwrap();
    let lines: Vec<String> = admin
        .health_check(Duration::from_secs(10), vec![ip.clone()], vec![])
        .await
        .unwrap()
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert!(
        lines.iter().any(|l| l.starts_with("discovered nodes")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("etcd") && l.ends_with("OK")),
        "{lines:?}"
    );

    let mut events = Box::pin(admin.events(-1).await.unwrap());
    let first = events.next().await.unwrap().unwrap();
    assert!(first
        .data
        .unwrap()
        .type_url
        .starts_with("talos/runtime/machine."));
}
