//! A cluster source held in memory for tests: a definition and CAs, rendered
//! into minimal but complete configs (v1alpha1 + HostnameConfig). Test-only: the
//! tool's `up` and `demo` render the operator's talconfig (`TalhelperSource`).
//! Included with `#[path]`, like `fixture.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine;

use endsys_bootstrap::engine::source::admin_access;
use endsys_bootstrap::engine::{
    ClusterSource, Definition, DiskTarget, FlowError, NodeDef, Rendered,
};
use endsys_bootstrap::pki::{CertificateAuthority, KeyAlgorithm, CA_VALIDITY};

/// The CAs of a cluster built in memory.
#[derive(Clone)]
pub struct MemorySecrets {
    pub os_ca: CertificateAuthority,
    pub k8s_ca: CertificateAuthority,
    pub etcd_ca: CertificateAuthority,
}

impl MemorySecrets {
    pub fn generate() -> Result<Self, FlowError> {
        let gen = |alg, name: &str| {
            CertificateAuthority::generate(alg, name, CA_VALIDITY)
                .map_err(|e| FlowError::Source(format!("cannot generate the {name} CA: {e}")))
        };
        Ok(Self {
            os_ca: gen(KeyAlgorithm::Ed25519, "talos")?,
            k8s_ca: gen(KeyAlgorithm::EcdsaP256, "kubernetes")?,
            etcd_ca: gen(KeyAlgorithm::EcdsaP256, "etcd")?,
        })
    }
}

/// A definition and secrets held in memory; renders minimal complete configs
/// (v1alpha1 + HostnameConfig) the way Talos accepts them.
pub struct MemorySource {
    definition: Definition,
    secrets: Mutex<Option<MemorySecrets>>,
}

impl MemorySource {
    pub fn new(definition: Definition, secrets: Option<MemorySecrets>) -> Self {
        Self {
            definition,
            secrets: Mutex::new(secrets),
        }
    }

    fn secrets(&self) -> Option<MemorySecrets> {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The secrets, once created (tests use them to build foreign clusters).
    pub fn current_secrets(&self) -> Option<MemorySecrets> {
        self.secrets()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn ca_yaml(c: &CertificateAuthority) -> Result<String, FlowError> {
    let key = c
        .pair
        .key_pem()
        .map_err(|e| FlowError::Source(format!("CA key: {e}")))?;
    Ok(format!(
        "{{crt: {}, key: {}}}",
        b64(&c.pair.cert_pem),
        b64(&key)
    ))
}

/// A minimal complete machine config for one node.
pub fn minimal_config(
    def: &Definition,
    node: &NodeDef,
    s: &MemorySecrets,
) -> Result<String, FlowError> {
    let install = match &node.install_disk {
        Some(DiskTarget::Path(p)) => format!("    disk: {p}\n"),
        Some(DiskTarget::Selector(fields)) => {
            let mut out = String::from("    diskSelector:\n");
            for (k, v) in fields {
                out.push_str(&format!(
                    "      {k}: {}\n",
                    serde_json::Value::from(v.as_str())
                ));
            }
            out
        }
        None => "    disk: /dev/sda\n".into(),
    };
    let role = if node.control_plane {
        "controlplane"
    } else {
        "worker"
    };
    let ip = node.host();
    Ok(format!(
        "version: v1alpha1\nmachine:\n  type: {role}\n  token: abcdef.0123456789abcdef\n  ca: {os}\n  certSANs: [{ip}]\n  install:\n{install}    image: ghcr.io/siderolabs/installer:v1.13.9\n  network: {{}}\ncluster:\n  id: {name}\n  secret: {name}\n  clusterName: {name}\n  controlPlane:\n    endpoint: {endpoint}\n  ca: {k8s}\n  etcd:\n    ca: {etcd}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: {host}\nauto: \"off\"\n",
        os = ca_yaml(&s.os_ca)?,
        k8s = ca_yaml(&s.k8s_ca)?,
        etcd = ca_yaml(&s.etcd_ca)?,
        name = def.cluster,
        endpoint = def.endpoint,
        host = node.hostname,
    ))
}

impl ClusterSource for MemorySource {
    fn definition(&self) -> Result<Definition, FlowError> {
        self.definition.check("<in-memory definition>")?;
        Ok(self.definition.clone())
    }

    fn secrets_location(&self) -> String {
        "<in-memory secrets>".into()
    }

    fn has_secrets(&self) -> Result<bool, FlowError> {
        Ok(self.secrets().is_some())
    }

    fn create_secrets(&self) -> Result<(), FlowError> {
        let s = MemorySecrets::generate()?;
        *self.secrets.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        Ok(())
    }

    fn render(&self) -> Result<Rendered, FlowError> {
        let s = self
            .secrets()
            .ok_or_else(|| FlowError::Source("no secrets bundle to render from".into()))?;
        let mut configs = BTreeMap::new();
        for n in &self.definition.nodes {
            configs.insert(
                n.hostname.clone(),
                minimal_config(&self.definition, n, &s)?.into_bytes(),
            );
        }
        let (credentials, talosconfig) = admin_access(&self.definition, &s.os_ca)?;
        Ok(Rendered {
            configs,
            credentials,
            talosconfig,
            contract_minor: None,
            older: BTreeMap::new(),
        })
    }
}
