//! A simulated node's lifecycle: faults and reset back to maintenance, the install
//! disk and reboots on a changed config, and delays that follow the lab's time
//! scale. Every test uses its own 127.0.N.0/24 range so tests run in parallel.

#[path = "common/nodes.rs"]
mod nodes;

use std::time::Duration;

use endsys_bootstrap::talos::api::{
    cosi::resource::{self as cosi, state_client::StateClient},
    machine,
};
use endsys_lab::{Lab, NodeState};
use nodes::*;
use tonic::Code;

#[tokio::test]
async fn faults_and_reset_back_to_maintenance() {
    let lab = Lab::start(opts(7, 1, "v1.13.9")).await.unwrap();
    let node = lab.nodes()[0].clone();
    let s = Secrets::new();
    // A lone node: a control plane (a worker would wait for trustd forever).
    configure(&node, &s, "controlplane", "w-1").await;
    let mut admin = mtls(&node, &s, &["os:admin"]).await;

    // Dropped calls.
    node.drop_next_calls(2);
    assert_eq!(
        admin.version(()).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(
        admin.version(()).await.unwrap_err().code(),
        Code::Unavailable
    );
    admin.version(()).await.unwrap();

    // Wrong CA: the handshake fails against the real OS CA.
    node.serve_wrong_ca(true);
    assert!(
        channel(node.addr(), mtls_config(&s.os_ca, &s.client(&["os:admin"])))
            .await
            .is_err()
    );
    node.serve_wrong_ca(false);

    // Power off: connection refused, open connections cut.
    node.power_off().await;
    let err = tokio::net::TcpStream::connect(node.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(admin.version(()).await.is_err());
    node.power_on().await;
    wait_state(&node, NodeState::Running).await;

    // Reboot (operator allowed) with a slow reboot window.
    node.set_reboot_delay(Duration::from_millis(200));
    let mut op = mtls(&node, &s, &["os:operator"]).await;
    op.reboot(machine::RebootRequest::default()).await.unwrap();
    wait_state(&node, NodeState::Rebooting).await;
    let err = tokio::net::TcpStream::connect(node.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    wait_state(&node, NodeState::Running).await;

    // Operator may not reset; admin reset wipes and reboots into maintenance.
    let mut op = mtls(&node, &s, &["os:operator"]).await;
    assert_eq!(
        op.reset(machine::ResetRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut admin = mtls(&node, &s, &["os:admin"]).await;
    admin
        .reset(machine::ResetRequest {
            graceful: true,
            reboot: true,
            system_partitions_to_wipe: vec![
                machine::ResetPartitionSpec {
                    label: "STATE".into(),
                    wipe: true,
                },
                machine::ResetPartitionSpec {
                    label: "EPHEMERAL".into(),
                    wipe: true,
                },
            ],
            user_disks_to_wipe: vec![],
            mode: 0,
        })
        .await
        .unwrap();
    wait_state(&node, NodeState::Maintenance).await;
    assert_eq!(node.hostname(), None);
    insecure(&node).await.version(()).await.unwrap();
    lab.shutdown().await;
}

#[tokio::test]
async fn install_disk_must_exist_and_changed_config_reboots() {
    let lab = Lab::start(opts(8, 2, "v1.13.9")).await.unwrap();
    let s = Secrets::new();
    let (a, b) = (lab.nodes()[0].clone(), lab.nodes()[1].clone());

    // No such disk: the node reports it and stays installing.
    let cfg = String::from_utf8(s.config("controlplane", "w-a", a.ip()))
        .unwrap()
        .replace("disk: /dev/sda", "disk: /dev/sdz");
    apply(&a, cfg.into_bytes()).await;
    wait_state(&a, NodeState::Installing).await;
    let ch = channel(a.addr(), mtls_config(&s.os_ca, &s.client(&["os:reader"])))
        .await
        .unwrap();
    let mut st = StateClient::new(ch);
    let mut w = st
        .watch(cosi::WatchRequest {
            namespace: "runtime".into(),
            r#type: "MachineStatuses.runtime.talos.dev".into(),
            id: Some("machine".into()),
            options: None,
            api_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    within("install failure", async {
        loop {
            let m = w.message().await.unwrap().unwrap();
            if let Some(e) = m.event.first() {
                let y = &e
                    .resource
                    .as_ref()
                    .unwrap()
                    .spec
                    .as_ref()
                    .unwrap()
                    .yaml_spec;
                if y.contains("stage: installing") && y.contains("/dev/sdz") {
                    break;
                }
            }
        }
    })
    .await;
    assert_eq!(a.state(), NodeState::Installing);

    // Disks resource and kind watch with bootstrap contents on the other node.
    configure(&b, &s, "controlplane", "w-b").await;
    let ch = channel(b.addr(), mtls_config(&s.os_ca, &s.client(&["os:reader"])))
        .await
        .unwrap();
    let mut st = StateClient::new(ch);
    let mut w = st
        .watch(cosi::WatchRequest {
            namespace: "runtime".into(),
            r#type: "Disks.block.talos.dev".into(),
            id: None,
            options: Some(cosi::WatchOptions {
                bootstrap_contents: true,
                ..Default::default()
            }),
            api_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    within("disks bootstrap", async {
        loop {
            let m = w.message().await.unwrap().unwrap();
            let Some(e) = m.event.first() else { continue };
            if e.event_type == cosi::EventType::Bootstrapped as i32 {
                break;
            }
            let r = e.resource.as_ref().unwrap();
            assert!(r.spec.as_ref().unwrap().yaml_spec.contains("serial: "));
            ids.push(r.metadata.as_ref().unwrap().id.clone());
        }
    })
    .await;
    assert_eq!(ids, vec!["nvme0n1".to_string(), "sda".to_string()]);
    // Writes are refused: by the role rule for a reader, by the filter for an admin.
    let destroy = || cosi::DestroyRequest {
        namespace: "runtime".into(),
        r#type: "Disks.block.talos.dev".into(),
        id: "sda".into(),
        options: None,
    };
    let err = st.destroy(destroy()).await.unwrap_err();
    assert_eq!(err.message(), "not authorized");
    let ch = channel(b.addr(), mtls_config(&s.os_ca, &s.client(&["os:admin"])))
        .await
        .unwrap();
    let err = StateClient::new(ch).destroy(destroy()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "write access is not allowed");

    // AUTO with a change Talos 1.13 cannot apply live (machine.token):
    // reboot cycle, the new hostname with it.
    b.set_reboot_delay(Duration::from_millis(200));
    let mut admin = mtls(&b, &s, &["os:admin"]).await;
    let cfg = String::from_utf8(s.config("controlplane", "w-b2", b.ip()))
        .unwrap()
        .replace("token: lab.token", "token: lab.token2");
    let r = admin
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: cfg.into_bytes(),
            mode: machine::apply_configuration_request::Mode::Auto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.messages[0].mode,
        machine::apply_configuration_request::Mode::Reboot as i32
    );
    wait_state(&b, NodeState::Rebooting).await;
    wait_state(&b, NodeState::Running).await;
    assert_eq!(b.hostname().as_deref(), Some("w-b2"));
    lab.shutdown().await;
}

#[tokio::test]
async fn delays_follow_the_time_scale() {
    let mut o = opts(9, 2, "v1.13.9");
    o.time_scale = 0.2; // install 0.8 s, reboot 0.6 s, boot 0.4 s, join 0.4 s
    let lab = Lab::start(o).await.unwrap();
    let s = Secrets::new();
    let (a, b) = (lab.nodes()[0].clone(), lab.nodes()[1].clone());
    apply(&a, s.config("controlplane", "cp-a", a.ip())).await;
    apply(&b, s.config("controlplane", "cp-b", a.ip())).await;
    wait_state(&a, NodeState::Booting).await;
    // Booting: mTLS already, but bootstrap is not available yet.
    let err = mtls(&a, &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "bootstrap is not available yet");
    wait_state(&a, NodeState::Running).await;
    wait_state(&b, NodeState::Running).await;

    let ch = channel(a.addr(), mtls_config(&s.os_ca, &s.client(&["os:reader"])))
        .await
        .unwrap();
    let mut cl =
        endsys_bootstrap::talos::api::cluster::cluster_service_client::ClusterServiceClient::new(
            ch,
        );
    let mut hc = cl
        .health_check(endsys_bootstrap::talos::api::cluster::HealthCheckRequest {
            wait_timeout: Some(prost_types::Duration {
                seconds: 15,
                nanos: 0,
            }),
            cluster_info: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hc.message().await.unwrap().unwrap().message,
        format!("discovered nodes: [\"{}\", \"{}\"]", a.ip(), b.ip())
    );
    let waiting = hc.message().await.unwrap().unwrap().message;
    assert!(
        waiting.starts_with("waiting for etcd to be healthy: ") && waiting.contains("Preparing"),
        "{waiting}"
    );

    mtls(&a, &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap();
    let mut lines = Vec::new();
    while let Some(p) = within("health", hc.message()).await.unwrap() {
        lines.push(p.message);
    }
    assert!(
        lines.contains(&"waiting for etcd to be healthy: OK".to_string()),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().ends_with(": OK"), "{lines:?}");
    assert!(b.has_etcd_data(), "second control plane joined");
    assert_eq!(lab.etcd().members().unwrap().len(), 2);
    lab.shutdown().await;
}
