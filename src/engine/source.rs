//! Where a flow gets the cluster from: the definition (nodes, roles, hardware
//! selectors), the secrets bundle, and the rendered machine configs.
//!
//! [`ClusterSource`] is the seam between the flows and the machine-config
//! room: the talhelper-format source reads files; [`MemorySource`] builds minimal
//! but complete configs in memory (tests, and `demo` before the real renderer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine;

use super::error::FlowError;
use crate::pki::{CertificateAuthority, KeyAlgorithm, CA_VALIDITY};
use crate::talos::talosconfig::Talosconfig;
use crate::talos::Credentials;

/// How a node's install disk is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskTarget {
    /// `machine.install.disk`, e.g. `/dev/sda`.
    Path(String),
    /// `machine.install.diskSelector`: (field, pattern) pairs, all must match.
    Selector(Vec<(String, String)>),
}

impl std::fmt::Display for DiskTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskTarget::Path(p) => write!(f, "disk {p}"),
            DiskTarget::Selector(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "selector {{{}}}", parts.join(", "))
            }
        }
    }
}

/// A `deviceSelector` of one network interface: (field, pattern) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSelector {
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for LinkSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// One node of the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    pub hostname: String,
    /// Address of its Talos API (IP, or IP:port).
    pub address: String,
    pub control_plane: bool,
    pub install_disk: Option<DiskTarget>,
    pub links: Vec<LinkSelector>,
}

impl NodeDef {
    /// `hostname (address)`, the way nodes are named in messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.hostname, self.address)
    }

    /// The host of its address (without a port).
    pub fn host(&self) -> &str {
        host_of(&self.address)
    }
}

/// Host part of a URL: `https://10.0.0.1:2380` → `10.0.0.1`, `https://[fd00::1]:6443/` → `fd00::1`.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

pub use endsys_core::net::host_of;

/// The parsed, validated cluster definition.
#[derive(Debug, Clone)]
pub struct Definition {
    pub cluster: String,
    /// Kubernetes API endpoint, e.g. `https://10.0.0.10:6443`.
    pub endpoint: String,
    pub nodes: Vec<NodeDef>,
}

impl Definition {
    pub fn control_planes(&self) -> impl Iterator<Item = &NodeDef> {
        self.nodes.iter().filter(|n| n.control_plane)
    }

    /// Cluster-level checks every source gets for free.
    pub fn check(&self, file: &str) -> Result<(), FlowError> {
        let bad = |detail: String| FlowError::Definition {
            file: file.to_string(),
            detail,
        };
        if self.cluster.is_empty() {
            return Err(bad("clusterName is empty".into()));
        }
        if self.nodes.is_empty() {
            return Err(bad("no nodes defined".into()));
        }
        if self.control_planes().next().is_none() {
            return Err(bad("at least one control-plane node is required".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.hostname.as_str()) {
                return Err(bad(format!("duplicate hostname {}", n.hostname)));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(n.address.as_str()) {
                return Err(bad(format!("duplicate node address {}", n.address)));
            }
        }
        Ok(())
    }
}

/// What the renderer produced from definition + secrets.
#[derive(Clone)]
pub struct Rendered {
    /// Machine config per hostname.
    pub configs: BTreeMap<String, Vec<u8>>,
    /// Admin client credentials (os:admin) from the bundle's OS CA.
    pub credentials: Arc<Credentials>,
    /// The talosconfig to write next to the state (context = cluster name).
    pub talosconfig: Talosconfig,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("nodes", &self.configs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The flows' view of the machine-config room.
pub trait ClusterSource: Send + Sync {
    /// Reads and validates the definition.
    fn definition(&self) -> Result<Definition, FlowError>;
    /// Where the secrets bundle lives (for messages).
    fn secrets_location(&self) -> String;
    /// Whether a secrets bundle exists (and can be read).
    fn has_secrets(&self) -> Result<bool, FlowError>;
    /// Creates a new secrets bundle. Only called after preflight proved that no node
    /// serves a CA, or with `--new-cluster`.
    fn create_secrets(&self) -> Result<(), FlowError>;
    /// Renders every node's config and the admin credentials.
    fn render(&self) -> Result<Rendered, FlowError>;
}

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

/// Admin credentials and talosconfig from an OS CA (one admin certificate,
/// minted by [`Talosconfig::admin`]).
pub fn admin_access(
    def: &Definition,
    os_ca: &CertificateAuthority,
) -> Result<(Arc<Credentials>, Talosconfig), FlowError> {
    let endpoints: Vec<String> = def.control_planes().map(|n| n.address.clone()).collect();
    let nodes: Vec<String> = def.nodes.iter().map(|n| n.address.clone()).collect();
    let tc = Talosconfig::admin(&def.cluster, os_ca, endpoints, nodes)
        .map_err(|e| FlowError::Source(format!("admin certificate: {e}")))?;
    let creds = tc
        .contexts
        .get(&def.cluster)
        .ok_or_else(|| FlowError::Source("admin talosconfig has no context".into()))?
        .credentials(std::path::Path::new("<admin talosconfig>"))
        .map_err(|e| FlowError::Source(format!("admin credentials: {e}")))?;
    Ok((creds, tc))
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses_and_urls() {
        assert_eq!(host_of("127.0.0.1:50000"), "127.0.0.1");
        assert_eq!(url_host("https://10.0.0.1:2380"), "10.0.0.1");
        assert_eq!(url_host("https://[fd00::1]:6443/x"), "fd00::1");
        assert_eq!(url_host("10.0.0.2"), "10.0.0.2");
    }
}
