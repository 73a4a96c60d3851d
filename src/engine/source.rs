//! Where a flow gets the cluster from: the definition (nodes, roles, hardware
//! selectors), the secrets bundle, and the rendered machine configs.
//!
//! [`ClusterSource`] is the seam between the flows and the machine-config
//! room: the talhelper-format source reads files and renders them as `gen
//! config` does (`demo` writes a talconfig for its lab and uses it too).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::FlowError;
use crate::pki::CertificateAuthority;
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
    /// The config contract minor the configs are rendered for (`talosVersion`), when known.
    pub contract_minor: Option<u32>,
    /// The same nodes under each older contract, for a node still running an older
    /// Talos (it cannot read a newer contract's documents); the error when the
    /// definition does not render under that contract.
    pub older: BTreeMap<u32, Result<BTreeMap<String, Vec<u8>>, String>>,
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
