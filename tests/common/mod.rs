//! Shared helpers for the end-to-end tests against the lab: a throw-away cluster
//! identity (CAs, admin certificate) and minimal machine configs built from it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use endsys_bootstrap::lab::{Lab, LabOptions};
use endsys_bootstrap::pki::{
    CertAndKey, CertificateAuthority, KeyAlgorithm, LeafSpec, Usage, CA_VALIDITY, CLIENT_VALIDITY,
};
use endsys_bootstrap::talos::{CallPolicy, Credentials, TalosClient, TlsMode};

/// The secrets of one test cluster.
pub struct TestCluster {
    pub name: String,
    pub os_ca: CertificateAuthority,
    pub k8s_ca: CertificateAuthority,
    pub etcd_ca: CertificateAuthority,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl TestCluster {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
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

    /// A client certificate from the OS CA with the given roles.
    pub fn client_cert(&self, roles: &[&str]) -> CertAndKey {
        self.os_ca
            .issue(&LeafSpec {
                common_name: String::new(),
                organizations: roles.iter().map(|r| r.to_string()).collect(),
                ip_sans: vec![],
                dns_sans: vec![],
                usage: Usage::Client,
                validity: CLIENT_VALIDITY,
            })
            .unwrap()
    }

    pub fn credentials(&self, roles: &[&str]) -> Arc<Credentials> {
        let c = self.client_cert(roles);
        Arc::new(Credentials {
            ca_pem: self.os_ca.pair.cert_pem.clone().into_bytes(),
            cert_pem: c.cert_pem.into_bytes(),
            key: c.key,
        })
    }

    /// A minimal but complete machine config (v1alpha1 + HostnameConfig).
    pub fn machine_config(&self, hostname: &str, machine_type: &str, endpoint_ip: &str) -> String {
        let ca = |c: &CertificateAuthority| {
            format!(
                "{{crt: {}, key: {}}}",
                b64(&c.pair.cert_pem),
                b64(&c.pair.key_pem().unwrap())
            )
        };
        format!(
            "version: v1alpha1\nmachine:\n  type: {machine_type}\n  token: abcdef.0123456789abcdef\n  ca: {os}\n  certSANs: []\n  install:\n    disk: /dev/sda\n    image: ghcr.io/siderolabs/installer:v1.13.9\n  network: {{}}\ncluster:\n  id: test\n  secret: test\n  clusterName: {name}\n  controlPlane:\n    endpoint: https://{endpoint_ip}:6443\n  ca: {k8s}\n  etcd:\n    ca: {etcd}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: {hostname}\nauto: \"off\"\n",
            os = ca(&self.os_ca),
            k8s = ca(&self.k8s_ca),
            etcd = ca(&self.etcd_ca),
            name = self.name,
        )
    }
}

/// A lab on its own loopback /24 (tests run in parallel).
pub async fn lab(subnet: u8, nodes: usize, controlplanes: usize, talos_version: &str) -> Lab {
    Lab::start(LabOptions {
        nodes,
        controlplanes,
        first_ip: Ipv4Addr::new(127, 0, subnet, 11),
        port: 50000,
        talos_version: talos_version.to_string(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

/// Short deadlines so a broken test fails fast.
pub fn policy() -> CallPolicy {
    CallPolicy {
        attempt_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    }
}

pub fn insecure(ip: &str) -> TalosClient {
    TalosClient::connect(ip, TlsMode::Insecure { fingerprint: None }, policy()).unwrap()
}

pub fn mtls(ip: &str, creds: Arc<Credentials>) -> TalosClient {
    TalosClient::connect(ip, TlsMode::Mutual(creds), policy()).unwrap()
}
