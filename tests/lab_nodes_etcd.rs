//! etcd on simulated nodes: bootstrap exactly once and control planes joining,
//! snapshots with etcd's trailer and recovery from them, and a reimaged control
//! plane rejoining while quorum decides what may happen. Every test uses its own
//! 127.0.N.0/24 range so tests run in parallel.

#[path = "common/nodes.rs"]
mod nodes;

use std::time::Duration;

use endsys_bootstrap::talos::api::{
    common,
    cosi::resource::{self as cosi, state_client::StateClient},
    machine,
};
use endsys_lab::{Lab, NodeState};
use nodes::*;
use sha2::Digest;
use tonic::Code;

#[tokio::test]
async fn bootstrap_happens_once_and_control_planes_join() {
    let lab = Lab::start(opts(5, 4, "v1.13.9")).await.unwrap();
    let s = Secrets::new();
    let nodes = lab.nodes().to_vec();
    let endpoint = nodes[0].ip();
    for (i, n) in nodes.iter().enumerate() {
        let (ty, name) = if i < 3 {
            ("controlplane", format!("cp-{i}"))
        } else {
            ("worker", format!("w-{i}"))
        };
        apply(n, s.config(ty, &name, endpoint)).await;
    }
    for n in &nodes {
        wait_state(n, NodeState::Running).await;
    }
    // Before bootstrap etcd waits in Preparing.
    wait_service(&nodes[1], &s, "etcd", "Preparing").await;

    // Worker: Unimplemented (1.13).
    let err = mtls(&nodes[3], &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(
        err.message(),
        "bootstrap is only available on control plane nodes"
    );

    mtls(&nodes[0], &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap();
    for n in &nodes[..3] {
        let err = mtls(n, &s, &["os:admin"])
            .await
            .bootstrap(machine::BootstrapRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{}: {err:?}", n.addr());
        assert_eq!(err.message(), "etcd data directory is not empty");
    }
    for n in &nodes[..3] {
        let yaml = wait_etcd_member(n, &s).await;
        assert!(yaml.contains("memberID"), "{yaml}");
    }
    let members = mtls(&nodes[1], &s, &["os:reader"])
        .await
        .etcd_member_list(machine::EtcdMemberListRequest { query_local: true })
        .await
        .unwrap()
        .into_inner();
    let m = &members.messages[0].members;
    assert_eq!(m.len(), 3);
    assert!(m
        .iter()
        .any(|x| x.hostname == "cp-0"
            && x.peer_urls == vec![format!("https://{}:2380", nodes[0].ip())]));
    assert!(!nodes[3].has_etcd_data(), "workers never join etcd");
    assert_eq!(lab.etcd().cluster_count(), 1);

    // `node` metadata through a control-plane endpoint reaches the target.
    let ch = channel(
        nodes[0].addr(),
        mtls_config(&s.os_ca, &s.client(&["os:reader"])),
    )
    .await
    .unwrap();
    let mut st = StateClient::new(ch);
    let mut req = tonic::Request::new(cosi::GetRequest {
        namespace: "network".into(),
        r#type: "HostnameStatuses.net.talos.dev".into(),
        id: "hostname".into(),
        options: None,
    });
    req.metadata_mut()
        .insert("node", nodes[3].ip().to_string().parse().unwrap());
    let r = st.get(req).await.unwrap().into_inner();
    assert!(r
        .resource
        .unwrap()
        .spec
        .unwrap()
        .yaml_spec
        .contains("hostname: w-3"));
    // Workers cannot forward.
    let mut w = mtls(&nodes[3], &s, &["os:admin"]).await;
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("node", nodes[0].ip().to_string().parse().unwrap());
    let err = w.version(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "no request forwarding");

    // HealthCheck: needs wait_timeout; then follows the real state.
    let ch = channel(
        nodes[0].addr(),
        mtls_config(&s.os_ca, &s.client(&["os:reader"])),
    )
    .await
    .unwrap();
    let mut cl =
        endsys_bootstrap::talos::api::cluster::cluster_service_client::ClusterServiceClient::new(
            ch,
        );
    let err = cl
        .health_check(endsys_bootstrap::talos::api::cluster::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let mut hc = cl
        .health_check(endsys_bootstrap::talos::api::cluster::HealthCheckRequest {
            wait_timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            cluster_info: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(p) = within("health", hc.message()).await.unwrap() {
        lines.push(p.message);
    }
    assert!(lines[0].starts_with("discovered nodes: ["), "{lines:?}");
    assert!(
        lines.contains(&"waiting for etcd to be healthy: OK".to_string()),
        "{lines:?}"
    );

    // Events carry Talos type URLs.
    let mut ev = mtls(&nodes[0], &s, &["os:reader"])
        .await
        .events(machine::EventsRequest {
            tail_events: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut urls = std::collections::BTreeSet::new();
    while urls.len() < 3 {
        let e = within("events", ev.message()).await.unwrap().unwrap();
        let url = e.data.unwrap().type_url;
        if url == "talos/runtime/machine.MachineStatusEvent"
            || url == "talos/runtime/machine.ServiceStateEvent"
            || url == "talos/runtime/machine.TaskEvent"
        {
            urls.insert(url);
        }
    }

    // Remove an unknown member: NotFound.
    let err = mtls(&nodes[0], &s, &["os:admin"])
        .await
        .etcd_remove_member_by_id(machine::EtcdRemoveMemberByIdRequest { member_id: 42 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A node of a different secrets bundle starts its own cluster (the tool must
    // prevent this; the lab allows it so the guard is testable).
    lab.nodes()[2].wipe_disk().await;
    lab.nodes()[2].power_on().await;
    wait_state(&nodes[2], NodeState::Maintenance).await;
    let s2 = Secrets::new();
    apply(&nodes[2], s2.config("controlplane", "rogue", endpoint)).await;
    wait_state(&nodes[2], NodeState::Running).await;
    mtls(&nodes[2], &s2, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap();
    assert_eq!(lab.etcd().cluster_count(), 2);
    lab.shutdown().await;
}

#[tokio::test]
async fn snapshot_has_trailer_and_recovery_round_trips() {
    let lab = Lab::start(opts(6, 1, "v1.13.9")).await.unwrap();
    let node = lab.nodes()[0].clone();
    let s = Secrets::new();
    configure(&node, &s, "controlplane", "cp-1").await;
    let mut admin = mtls(&node, &s, &["os:admin"]).await;
    admin
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap();
    wait_service(&node, &s, "etcd", "Running").await;
    lab.etcd().put("/registry/ns/default", "hello").unwrap();
    let rev = lab.etcd().revision().unwrap();

    // Reader may not snapshot; etcd:backup may.
    let err = mtls(&node, &s, &["os:reader"])
        .await
        .etcd_snapshot(machine::EtcdSnapshotRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut stream = mtls(&node, &s, &["os:etcd:backup"])
        .await
        .etcd_snapshot(machine::EtcdSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut snap = Vec::new();
    while let Some(d) = stream.message().await.unwrap() {
        assert!(d.bytes.len() <= 1024);
        snap.extend(d.bytes);
    }
    assert_eq!(snap.len() % 512, 32);
    let (body, trailer) = snap.split_at(snap.len() - 32);
    assert_eq!(sha2::Sha256::digest(body).as_slice(), trailer);

    // Recovery needs an empty etcd.
    let upload = |bytes: Vec<u8>| {
        tokio_stream::iter(
            bytes
                .chunks(4096)
                .map(|c| common::Data {
                    metadata: None,
                    bytes: c.to_vec(),
                })
                .collect::<Vec<_>>(),
        )
    };
    let err = admin.etcd_recover(upload(snap.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "etcd service is not ready for recovery yet");

    // Wipe EPHEMERAL and reboot: configured, etcd empty.
    node.set_reboot_delay(Duration::from_millis(300));
    admin
        .reset(machine::ResetRequest {
            graceful: false,
            reboot: true,
            system_partitions_to_wipe: vec![machine::ResetPartitionSpec {
                label: "EPHEMERAL".into(),
                wipe: true,
            }],
            user_disks_to_wipe: vec![],
            mode: 0,
        })
        .await
        .unwrap();
    wait_state(&node, NodeState::Rebooting).await;
    wait_state(&node, NodeState::Running).await;
    assert!(!node.has_etcd_data());
    let mut admin = mtls(&node, &s, &["os:admin"]).await;

    // A corrupt snapshot: Bootstrap succeeds, etcd fails (as on real Talos).
    let mut bad = snap.clone();
    bad[100] ^= 0xff;
    admin.etcd_recover(upload(bad)).await.unwrap();
    admin
        .bootstrap(machine::BootstrapRequest {
            recover_etcd: true,
            recover_skip_hash_check: false,
        })
        .await
        .unwrap();
    let svc = wait_service(&node, &s, "etcd", "Failed").await;
    assert!(svc.health.unwrap().last_message.contains("sha256"));

    // The good one restores the data.
    admin.etcd_recover(upload(snap)).await.unwrap();
    admin
        .bootstrap(machine::BootstrapRequest {
            recover_etcd: true,
            recover_skip_hash_check: false,
        })
        .await
        .unwrap();
    wait_service(&node, &s, "etcd", "Running").await;
    assert_eq!(
        lab.etcd().get("/registry/ns/default").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    // Restored, not restarted: the revision continues from the snapshot's (the
    // node's kubelet posts its new boot ID right after, so it may move on).
    assert!(lab.etcd().revision().unwrap() >= rev);
    lab.shutdown().await;
}

#[tokio::test]
async fn reimaged_control_plane_rejoins_and_quorum_matters() {
    let lab = Lab::start(opts(10, 3, "v1.13.9")).await.unwrap();
    let s = Secrets::new();
    let nodes = lab.nodes().to_vec();
    for (i, n) in nodes.iter().enumerate() {
        apply(
            n,
            s.config("controlplane", &format!("cp-{i}"), nodes[0].ip()),
        )
        .await;
    }
    for n in &nodes {
        wait_state(n, NodeState::Running).await;
    }
    mtls(&nodes[0], &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap();
    for n in &nodes {
        wait_etcd_member(n, &s).await;
    }
    let old_ids: Vec<u64> = lab.etcd().members().unwrap().iter().map(|m| m.id).collect();

    // Reimage cp-2 without leaving etcd: its stale member stays until it rejoins.
    nodes[2].set_reboot_delay(Duration::from_millis(200));
    mtls(&nodes[2], &s, &["os:admin"])
        .await
        .reset(machine::ResetRequest {
            graceful: false,
            reboot: true,
            system_partitions_to_wipe: ["STATE", "EPHEMERAL"]
                .iter()
                .map(|l| machine::ResetPartitionSpec {
                    label: l.to_string(),
                    wipe: true,
                })
                .collect(),
            user_disks_to_wipe: vec![],
            mode: 0,
        })
        .await
        .unwrap();
    wait_state(&nodes[2], NodeState::Rebooting).await;
    wait_state(&nodes[2], NodeState::Maintenance).await;
    assert_eq!(lab.etcd().members().unwrap().len(), 3, "stale member kept");
    apply(&nodes[2], s.config("controlplane", "cp-2", nodes[0].ip())).await;
    wait_state(&nodes[2], NodeState::Running).await;
    wait_etcd_member(&nodes[2], &s).await;
    let members = lab.etcd().members().unwrap();
    assert_eq!(members.len(), 3, "stale member replaced, not duplicated");
    let cp2 = members.iter().find(|m| m.name == "cp-2").unwrap();
    assert!(!old_ids.contains(&cp2.id));

    // Two of three down: no leader.
    nodes[1].power_off().await;
    nodes[2].power_off().await;
    let err = mtls(&nodes[0], &s, &["os:reader"])
        .await
        .etcd_member_list(machine::EtcdMemberListRequest { query_local: true })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "etcdserver: no leader");
    // The local member still answers status and snapshots.
    mtls(&nodes[0], &s, &["os:reader"])
        .await
        .etcd_status(())
        .await
        .unwrap();
    lab.shutdown().await;
}
