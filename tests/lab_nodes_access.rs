//! Reaching a simulated node: maintenance mode's throw-away certificate and no
//! client certificate, the switch to mutual TLS with roles from the client
//! certificate after a config is applied, and how Talos 1.12's maintenance
//! server differs from 1.13's. Every test uses its own 127.0.N.0/24 range so
//! tests run in parallel.

#[path = "common/nodes.rs"]
mod nodes;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use endsys_bootstrap::pki::CertInfo;
use endsys_bootstrap::talos::api::{
    cosi::resource::{self as cosi, state_client::StateClient},
    machine::{self, machine_service_client::MachineServiceClient},
};
use endsys_lab::{Lab, NodeState, MAINTENANCE_CN};
use nodes::*;
use rustls::pki_types::ServerName;
use tonic::Code;

#[tokio::test]
async fn maintenance_serves_a_throwaway_cert_and_asks_no_client_cert() {
    let lab = Lab::start(opts(1, 1, "v1.13.9")).await.unwrap();
    let node = &lab.nodes()[0];
    assert_eq!(node.state(), NodeState::Maintenance);

    let resolver = Arc::new(RecordingResolver::default());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_client_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(node.ip().into()), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert!(
        !resolver.asked.load(Ordering::SeqCst),
        "maintenance must not ask for a client cert"
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let leaf = &conn.peer_certificates().unwrap()[0];
    let info = CertInfo::from_der(leaf.as_ref(), "maintenance").unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some(MAINTENANCE_CN));
    assert_eq!(info.ip_sans, vec![node.ip()]);

    // Not the cluster CA: a client that trusts the OS CA refuses the handshake.
    let s = Secrets::new();
    let err = channel(node.addr(), mtls_config(&s.os_ca, &s.client(&["os:admin"])))
        .await
        .unwrap_err();
    let _ = err;

    // The same connection works for the reader calls of 1.13 maintenance.
    let mut c = insecure(node).await;
    let v = c.version(()).await.unwrap().into_inner();
    assert_eq!(v.messages[0].version.as_ref().unwrap().tag, "v1.13.9");
    assert!(
        v.messages[0].features.is_none(),
        "no config yet, no features"
    );
    lab.shutdown().await;
}

#[tokio::test]
async fn apply_config_reboots_into_mtls_with_roles() {
    let lab = Lab::start(opts(2, 1, "v1.13.9")).await.unwrap();
    let node = lab.nodes()[0].clone();
    let s = Secrets::new();

    // Record every state the node goes through.
    let mut rx = node.transitions();
    let seen = tokio::spawn(async move {
        let mut seen = vec![];
        while let Ok(st) = rx.recv().await {
            seen.push(st);
            if st == NodeState::Running {
                break;
            }
        }
        seen
    });

    let reply = apply(&node, s.config("controlplane", "cp-1", node.ip())).await;
    assert_eq!(
        reply.mode,
        machine::apply_configuration_request::Mode::NoReboot as i32,
        "1.13 maintenance turns AUTO into NO_REBOOT"
    );
    let seen = within("state history", seen).await.unwrap();
    for st in [
        NodeState::Installing,
        NodeState::Rebooting,
        NodeState::Running,
    ] {
        assert!(seen.contains(&st), "state {st:?} not seen in {seen:?}");
    }
    assert_eq!(node.hostname().as_deref(), Some("cp-1"));

    // Insecure clients no longer get in (client cert required).
    let mut c = insecure(&node).await;
    assert!(c.version(()).await.is_err());

    // Admin over mTLS works.
    let mut admin = mtls(&node, &s, &["os:admin"]).await;
    let v = admin.version(()).await.unwrap().into_inner();
    assert!(v.messages[0].features.as_ref().unwrap().rbac);

    // A client cert from another CA is refused at the handshake.
    let other = Secrets::new();
    let bad = channel(
        node.addr(),
        mtls_config(&s.os_ca, &other.client(&["os:admin"])),
    )
    .await;
    match bad {
        Err(_) => {}
        Ok(ch) => {
            let mut c = MachineServiceClient::new(ch);
            assert!(c.version(()).await.is_err());
        }
    }

    // Reader: Version yes, Bootstrap / Kubeconfig / Reset no.
    let mut reader = mtls(&node, &s, &["os:reader"]).await;
    reader.version(()).await.unwrap();
    let err = reader
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "not authorized");
    assert_eq!(
        reader.kubeconfig(()).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Kubeconfig as admin: gzip tar with one 0600 file `kubeconfig`.
    let mut stream = admin.kubeconfig(()).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(d) = stream.message().await.unwrap() {
        bytes.extend(d.bytes);
    }
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut entries = ar.entries().unwrap();
    let mut e = entries.next().unwrap().unwrap();
    assert_eq!(e.path().unwrap().to_str(), Some("kubeconfig"));
    assert_eq!(e.header().mode().unwrap() & 0o777, 0o600);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut e, &mut text).unwrap();
    assert!(text.contains("current-context: admin@lab"));
    assert!(text.contains(&format!("server: https://{}:6443", node.ip())));
    assert!(entries.next().is_none());

    // Same config again: no changes, no reboot.
    let r = admin
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: s.config("controlplane", "cp-1", node.ip()),
            mode: machine::apply_configuration_request::Mode::Auto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.messages[0].mode,
        machine::apply_configuration_request::Mode::NoReboot as i32
    );
    assert_eq!(node.state(), NodeState::Running);
    lab.shutdown().await;
}

#[tokio::test]
async fn maintenance_differs_between_1_12_and_1_13() {
    let lab13 = Lab::start(opts(3, 1, "v1.13.9")).await.unwrap();
    // Two 1.12 nodes: the second becomes the control plane whose trustd signs
    // the worker's apid certificate.
    let lab12 = Lab::start(opts(4, 2, "v1.12.11")).await.unwrap();
    let n13 = &lab13.nodes()[0];
    let n12 = &lab12.nodes()[0];
    let s = Secrets::new();

    // Version: 1.13 yes, 1.12 Unimplemented.
    insecure(n13).await.version(()).await.unwrap();
    let err = insecure(n12).await.version(()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "API is not implemented in maintenance mode");

    // Bootstrap: reader role refused on 1.13; not registered on 1.12.
    let err = insecure(n13)
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = insecure(n12)
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // Control-plane-only etcd calls on 1.13 maintenance: machine type not set.
    let err = insecure(n13)
        .await
        .etcd_member_list(machine::EtcdMemberListRequest { query_local: true })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(
        err.message(),
        "machine type is not set, cannot use member list API"
    );

    // COSI reads work on both.
    for n in [n13, n12] {
        let ch = channel(n.addr(), insecure_config()).await.unwrap();
        let mut st = StateClient::new(ch);
        let r = st
            .get(cosi::GetRequest {
                namespace: "runtime".into(),
                r#type: "MachineStatuses.runtime.talos.dev".into(),
                id: "machine".into(),
                options: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r
            .resource
            .unwrap()
            .spec
            .unwrap()
            .yaml_spec
            .contains("stage: maintenance"));
        let err = st
            .get(cosi::GetRequest {
                namespace: "runtime".into(),
                r#type: "Bogus.talos.dev".into(),
                id: "x".into(),
                options: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "resource type \"Bogus.talos.dev\" is not supported"
        );
        let mut links = st
            .list(cosi::ListRequest {
                namespace: "network".into(),
                r#type: "LinkStatuses.net.talos.dev".into(),
                options: None,
            })
            .await
            .unwrap()
            .into_inner();
        let link = links.message().await.unwrap().unwrap();
        assert!(link
            .resource
            .unwrap()
            .spec
            .unwrap()
            .yaml_spec
            .contains(&n.hardware().links[0].mac));
    }

    // Apply NO_REBOOT: Unimplemented on 1.12 maintenance.
    let err = insecure(n12)
        .await
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: s.config("worker", "w", n12.ip()),
            mode: machine::apply_configuration_request::Mode::NoReboot as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(
        err.message(),
        "apply configuration --mode='no-reboot' is not supported in maintenance mode"
    );

    // Invalid config → InvalidArgument naming the problem.
    let err = insecure(n13)
        .await
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: b"version: v1alpha1\nmachine:\n  type: controlplane\n".to_vec(),
            mode: machine::apply_configuration_request::Mode::Auto as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("machine.ca"), "{}", err.message());

    // 1.12 apply with AUTO goes through the same install/reboot flow.
    let cp12 = &lab12.nodes()[1];
    configure(cp12, &s, "controlplane", "cp").await;
    let r = insecure(n12)
        .await
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: s.config("worker", "w", cp12.ip()),
            mode: machine::apply_configuration_request::Mode::Auto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.messages.len(), 1);
    wait_state(n12, NodeState::Running).await;
    // Worker on 1.12: bootstrap is a FailedPrecondition.
    let err = mtls(n12, &s, &["os:admin"])
        .await
        .bootstrap(machine::BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    lab13.shutdown().await;
    lab12.shutdown().await;
}
