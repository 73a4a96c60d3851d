//! The simulated Talos nodes over real TCP + TLS on 127.0.x.y.
//!
//! Every test uses its own 127.0.N.0/24 range so tests run in parallel. The client
//! here is a minimal test helper (tonic over our own rustls connector); the tool's
//! real client lives in `src/talos/`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use endsys_bootstrap::pki::{
    CertAndKey, CertInfo, CertificateAuthority, KeyAlgorithm, CA_VALIDITY,
};
use endsys_bootstrap::talos::api::{
    common,
    cosi::resource::{self as cosi, state_client::StateClient},
    machine::{self, machine_service_client::MachineServiceClient},
};
use endsys_bootstrap::talos::talosconfig::client_certificate;
use endsys_lab::{Lab, LabNode, LabOptions, NodeState, MAINTENANCE_CN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

// ---------- secrets and configs (test-only generator) ----------

struct Secrets {
    os_ca: CertificateAuthority,
    k8s_ca: CertificateAuthority,
    etcd_ca: CertificateAuthority,
}

impl Secrets {
    fn new() -> Self {
        Secrets {
            os_ca: CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", CA_VALIDITY)
                .unwrap(),
            k8s_ca: CertificateAuthority::generate(
                KeyAlgorithm::EcdsaP256,
                "kubernetes",
                CA_VALIDITY,
            )
            .unwrap(),
            etcd_ca: CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, "etcd", CA_VALIDITY)
                .unwrap(),
        }
    }

    fn client(&self, roles: &[&str]) -> CertAndKey {
        client_certificate(&self.os_ca, roles).unwrap()
    }

    fn config(&self, machine_type: &str, hostname: &str, endpoint_ip: IpAddr) -> Vec<u8> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let ca = |c: &CertificateAuthority| {
            (
                b64(&c.pair.cert_pem),
                b64(&c.pair.key.to_talos_pem().unwrap()),
            )
        };
        let (os_crt, os_key) = ca(&self.os_ca);
        let (k_crt, k_key) = ca(&self.k8s_ca);
        let (e_crt, e_key) = ca(&self.etcd_ca);
        format!(
            "version: v1alpha1\nmachine:\n  type: {machine_type}\n  token: lab.token\n  ca:\n    crt: {os_crt}\n    key: {os_key}\n  certSANs: []\n  install:\n    disk: /dev/sda\ncluster:\n  clusterName: lab\n  controlPlane:\n    endpoint: https://{endpoint_ip}:6443\n  ca:\n    crt: {k_crt}\n    key: {k_key}\n  etcd:\n    ca:\n      crt: {e_crt}\n      key: {e_key}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: {hostname}\n"
        )
        .into_bytes()
    }
}

// ---------- client helper ----------

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Records whether the server asked for a client certificate (and sends none).
#[derive(Debug, Default)]
struct RecordingResolver {
    asked: AtomicBool,
}

impl rustls::client::ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        None
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn insecure_config() -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

fn mtls_config(ca: &CertificateAuthority, client: &CertAndKey) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.pair.cert_der().unwrap()))
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key.pkcs8_der().to_vec()));
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(client.cert_der().unwrap())], key)
        .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

async fn channel(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let cfg = Arc::new(cfg);
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let cfg = cfg.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

async fn insecure(node: &LabNode) -> MachineServiceClient<Channel> {
    MachineServiceClient::new(channel(node.addr(), insecure_config()).await.unwrap())
}

async fn mtls(node: &LabNode, s: &Secrets, roles: &[&str]) -> MachineServiceClient<Channel> {
    let ch = channel(node.addr(), mtls_config(&s.os_ca, &s.client(roles)))
        .await
        .unwrap();
    MachineServiceClient::new(ch)
}

/// Awaits `f` with the test deadline.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_state(node: &LabNode, want: NodeState) {
    let mut rx = node.watch_state();
    within(&format!("{} to reach {want:?}", node.addr()), async {
        rx.wait_for(|s| *s == want).await.unwrap();
    })
    .await;
}

fn opts(third_octet: u8, nodes: usize, version: &str) -> LabOptions {
    LabOptions {
        nodes,
        controlplanes: nodes,
        first_ip: std::net::Ipv4Addr::new(127, 0, third_octet, 11),
        port: 50000,
        talos_version: version.into(),
        time_scale: 0.0,
        hardware: vec![],
    }
}

async fn apply(node: &LabNode, cfg: Vec<u8>) -> machine::ApplyConfiguration {
    let mut c = insecure(node).await;
    let resp = c
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: cfg,
            mode: machine::apply_configuration_request::Mode::Auto as i32,
            dry_run: false,
            try_mode_timeout: None,
        })
        .await
        .unwrap()
        .into_inner();
    resp.messages.into_iter().next().unwrap()
}

async fn configure(node: &LabNode, s: &Secrets, machine_type: &str, hostname: &str) {
    apply(node, s.config(machine_type, hostname, node.ip())).await;
    wait_state(node, NodeState::Running).await;
}

/// Waits (through a COSI watch, no sleeping) until the node has an etcd member.
async fn wait_etcd_member(node: &LabNode, s: &Secrets) -> String {
    let ch = channel(
        node.addr(),
        mtls_config(&s.os_ca, &s.client(&["os:reader"])),
    )
    .await
    .unwrap();
    let mut st = StateClient::new(ch);
    let mut stream = st
        .watch(cosi::WatchRequest {
            namespace: "etcd".into(),
            r#type: "EtcdMembers.etcd.talos.dev".into(),
            id: Some("local".into()),
            options: None,
            api_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    within("etcd member", async {
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            first.event.is_empty(),
            "first watch message is the empty marker"
        );
        loop {
            let msg = stream.message().await.unwrap().unwrap();
            for ev in msg.event {
                if ev.event_type != cosi::EventType::Destroyed as i32 {
                    return ev.resource.unwrap().spec.unwrap().yaml_spec;
                }
            }
        }
    })
    .await
}

async fn wait_service(node: &LabNode, s: &Secrets, id: &str, want: &str) -> machine::ServiceInfo {
    // Events stream: follow ServiceStateEvents instead of polling.
    let mut c = mtls(node, s, &["os:reader"]).await;
    let mut events = c
        .events(machine::EventsRequest {
            tail_events: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    within(&format!("service {id} {want}"), async {
        loop {
            let list = c.service_list(()).await.unwrap().into_inner();
            if let Some(svc) = list.messages[0].services.iter().find(|x| x.id == id) {
                if svc.state == want {
                    return svc.clone();
                }
            }
            events.message().await.unwrap().unwrap();
        }
    })
    .await
}

// ---------- tests ----------

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
    let lab12 = Lab::start(opts(4, 1, "v1.12.11")).await.unwrap();
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
    let r = insecure(n12)
        .await
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: s.config("worker", "w", n12.ip()),
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
    assert_eq!(lab.etcd().revision().unwrap(), rev);
    lab.shutdown().await;
}

#[tokio::test]
async fn faults_and_reset_back_to_maintenance() {
    let lab = Lab::start(opts(7, 1, "v1.13.9")).await.unwrap();
    let node = lab.nodes()[0].clone();
    let s = Secrets::new();
    configure(&node, &s, "worker", "w-1").await;
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
    let cfg = String::from_utf8(s.config("worker", "w-a", a.ip()))
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
    configure(&b, &s, "worker", "w-b").await;
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

    // AUTO with a changed config: reboot cycle, new hostname after it.
    b.set_reboot_delay(Duration::from_millis(200));
    let mut admin = mtls(&b, &s, &["os:admin"]).await;
    let r = admin
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: s.config("worker", "w-b2", b.ip()),
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
