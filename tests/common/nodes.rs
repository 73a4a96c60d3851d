//! The raw gRPC view of lab nodes, for the `lab_nodes_*` tests: a test-only
//! secrets and machine-config generator, tonic clients over our own rustls
//! connector (insecure, as maintenance mode needs, and mutual TLS with roles),
//! and waits on node state, COSI watches and Events — no sleeping. Included with
//! `#[path]`; the tool's real client is tested in `talos_client.rs`.
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use endsys_bootstrap::pki::{CertAndKey, CertificateAuthority, KeyAlgorithm, CA_VALIDITY};
use endsys_bootstrap::talos::api::{
    cosi::resource::{self as cosi, state_client::StateClient},
    machine::{self, machine_service_client::MachineServiceClient},
};
use endsys_bootstrap::talos::talosconfig::client_certificate;
use endsys_lab::{LabNode, LabOptions, NodeState};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

pub const WAIT: Duration = Duration::from_secs(20);

// ---------- secrets and configs (test-only generator) ----------

pub struct Secrets {
    pub os_ca: CertificateAuthority,
    pub k8s_ca: CertificateAuthority,
    pub etcd_ca: CertificateAuthority,
}

impl Secrets {
    pub fn new() -> Self {
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

    pub fn client(&self, roles: &[&str]) -> CertAndKey {
        client_certificate(&self.os_ca, roles).unwrap()
    }

    pub fn config(&self, machine_type: &str, hostname: &str, endpoint_ip: IpAddr) -> Vec<u8> {
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
pub struct AcceptAny;

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
pub struct RecordingResolver {
    pub asked: AtomicBool,
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

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn insecure_config() -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

pub fn mtls_config(ca: &CertificateAuthority, client: &CertAndKey) -> rustls::ClientConfig {
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

pub async fn channel(
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

pub async fn insecure(node: &LabNode) -> MachineServiceClient<Channel> {
    MachineServiceClient::new(channel(node.addr(), insecure_config()).await.unwrap())
}

pub async fn mtls(node: &LabNode, s: &Secrets, roles: &[&str]) -> MachineServiceClient<Channel> {
    let ch = channel(node.addr(), mtls_config(&s.os_ca, &s.client(roles)))
        .await
        .unwrap();
    MachineServiceClient::new(ch)
}

/// Awaits `f` with the test deadline.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub async fn wait_state(node: &LabNode, want: NodeState) {
    let mut rx = node.watch_state();
    within(&format!("{} to reach {want:?}", node.addr()), async {
        rx.wait_for(|s| *s == want).await.unwrap();
    })
    .await;
}

pub fn opts(third_octet: u8, nodes: usize, version: &str) -> LabOptions {
    LabOptions {
        nodes,
        controlplanes: nodes,
        first_ip: std::net::Ipv4Addr::new(127, 0, third_octet, 11),
        port: 50000,
        talos_version: version.into(),
        time_scale: 0.0,
        hardware: vec![],
        node_versions: vec![],
    }
}

pub async fn apply(node: &LabNode, cfg: Vec<u8>) -> machine::ApplyConfiguration {
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

pub async fn configure(node: &LabNode, s: &Secrets, machine_type: &str, hostname: &str) {
    apply(node, s.config(machine_type, hostname, node.ip())).await;
    wait_state(node, NodeState::Running).await;
}

/// Waits (through a COSI watch, no sleeping) until the node has an etcd member.
pub async fn wait_etcd_member(node: &LabNode, s: &Secrets) -> String {
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

pub async fn wait_service(
    node: &LabNode,
    s: &Secrets,
    id: &str,
    want: &str,
) -> machine::ServiceInfo {
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
