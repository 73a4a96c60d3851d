//! A throw-away cluster identity for the lab: CAs like Talos generates and minimal
//! but complete machine configs made from them. Used by `demo`'s walkthrough and
//! the end-to-end tests; real clusters get their configs from `machineconfig`.

use std::sync::Arc;

use base64::Engine;

use endsys_core::pki::{CertificateAuthority, KeyAlgorithm, PkiError, CA_VALIDITY};
use endsys_talos::talosconfig::Talosconfig;
use endsys_talos::Credentials;

/// The CAs of one lab cluster.
pub struct LabIdentity {
    pub name: String,
    pub os_ca: CertificateAuthority,
    pub k8s_ca: CertificateAuthority,
    pub etcd_ca: CertificateAuthority,
}

/// The `machine.token` of lab configs.
pub const LAB_TOKEN: &str = "abcdef.0123456789abcdef";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl LabIdentity {
    /// New CAs: Ed25519 OS CA, ECDSA P-256 Kubernetes and etcd CAs (as Talos makes them).
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        Ok(Self {
            name: name.to_string(),
            os_ca: CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", CA_VALIDITY)?,
            k8s_ca: CertificateAuthority::generate(
                KeyAlgorithm::EcdsaP256,
                "kubernetes",
                CA_VALIDITY,
            )?,
            etcd_ca: CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, "etcd", CA_VALIDITY)?,
        })
    }

    /// Talos API credentials from the OS CA carrying `roles`.
    pub fn credentials(&self, roles: &[&str]) -> Result<Arc<Credentials>, PkiError> {
        Credentials::issue(&self.os_ca, roles)
    }

    /// An admin talosconfig for `endpoints`.
    pub fn talosconfig(&self, endpoints: Vec<String>) -> Result<Talosconfig, PkiError> {
        Talosconfig::admin(&self.name, &self.os_ca, endpoints.clone(), endpoints)
    }

    /// A minimal but complete machine config (v1alpha1 + HostnameConfig). A
    /// worker's carries the CA certificates without keys and no etcd section, as
    /// Talos generates it (its apid certificate comes from trustd).
    pub fn machine_config(
        &self,
        hostname: &str,
        machine_type: &str,
        endpoint_ip: &str,
    ) -> Result<String, PkiError> {
        self.machine_config_with_token(hostname, machine_type, endpoint_ip, LAB_TOKEN)
    }

    /// [`Self::machine_config`] with another `machine.token` (a worker with a
    /// wrong one is refused by trustd).
    pub fn machine_config_with_token(
        &self,
        hostname: &str,
        machine_type: &str,
        endpoint_ip: &str,
        token: &str,
    ) -> Result<String, PkiError> {
        let worker = machine_type == "worker";
        let ca = |c: &CertificateAuthority| -> Result<String, PkiError> {
            let key = if worker {
                String::new()
            } else {
                b64(&c.pair.key_pem()?)
            };
            Ok(format!(
                "{{crt: {}, key: \"{key}\"}}",
                b64(&c.pair.cert_pem)
            ))
        };
        let etcd = if worker {
            String::new()
        } else {
            format!("  etcd:\n    ca: {}\n", ca(&self.etcd_ca)?)
        };
        Ok(format!(
            "version: v1alpha1\nmachine:\n  type: {machine_type}\n  token: {token}\n  ca: {os}\n  certSANs: []\n  install:\n    disk: /dev/sda\n    image: ghcr.io/siderolabs/installer:v1.13.9\n  network: {{}}\ncluster:\n  id: lab\n  secret: lab\n  clusterName: {name}\n  controlPlane:\n    endpoint: https://{endpoint_ip}:6443\n  ca: {k8s}\n{etcd}---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: {hostname}\nauto: \"off\"\n",
            os = ca(&self.os_ca)?,
            k8s = ca(&self.k8s_ca)?,
            name = self.name,
        ))
    }
}
