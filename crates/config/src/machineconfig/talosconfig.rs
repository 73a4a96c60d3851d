//! The talosconfig file talosctl reads, with an admin client certificate issued from
//! the bundle's OS CA. Kept minimal and named `TalosconfigFile` so it does not clash
//! with the client's own model in `talos/`; the two can be merged later.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use super::error::ConfigError;
use super::secrets::SecretsBundle;
use super::talconfig::ClusterDefinition;
use super::yaml;
use endsys_core::pki::{LeafSpec, Usage, CLIENT_VALIDITY};

/// One context: where to connect and with which credentials (base64 PEM).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TalosconfigContext {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    pub ca: String,
    pub crt: String,
    pub key: String,
}

impl std::fmt::Debug for TalosconfigContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalosconfigContext")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// The talosconfig file (`context` + `contexts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TalosconfigFile {
    pub context: String,
    pub contexts: BTreeMap<String, TalosconfigContext>,
}

impl TalosconfigFile {
    /// talhelper's talosconfig: context = cluster name, endpoints = every control
    /// plane's addresses (never the VIP: talosctl must reach apid on each node even
    /// when the VIP is down), nodes = every node's addresses. The admin certificate
    /// is Ed25519, `O=os:admin`, clientAuth only, valid one year.
    pub fn for_cluster(
        def: &ClusterDefinition,
        secrets: &SecretsBundle,
    ) -> Result<Self, ConfigError> {
        let ca = secrets.os_ca()?;
        let leaf = ca.issue(&LeafSpec {
            common_name: String::new(),
            organizations: vec!["os:admin".into()],
            ip_sans: vec![],
            dns_sans: vec![],
            usage: Usage::Client,
            validity: CLIENT_VALIDITY,
        })?;
        let endpoints = def.control_planes().flat_map(|n| n.addresses()).collect();
        let nodes = def.nodes.iter().flat_map(|n| n.addresses()).collect();
        let ctx = TalosconfigContext {
            endpoints,
            nodes,
            ca: secrets.certs.os.crt.clone(),
            crt: STANDARD.encode(leaf.cert_pem.as_bytes()),
            key: STANDARD.encode(leaf.key_pem()?.as_bytes()),
        };
        let name = def.cluster_name().to_string();
        Ok(Self {
            context: name.clone(),
            contexts: BTreeMap::from([(name, ctx)]),
        })
    }

    /// YAML as talosctl writes it (4-space indent, Go field order).
    pub fn to_yaml(&self) -> String {
        let s = |v: &str| Value::String(v.to_string());
        let mut contexts = Mapping::new();
        for (name, c) in &self.contexts {
            let mut m = Mapping::new();
            m.insert(
                s("endpoints"),
                Value::Sequence(c.endpoints.iter().map(|e| s(e)).collect()),
            );
            if !c.nodes.is_empty() {
                m.insert(
                    s("nodes"),
                    Value::Sequence(c.nodes.iter().map(|e| s(e)).collect()),
                );
            }
            m.insert(s("ca"), s(&c.ca));
            m.insert(s("crt"), s(&c.crt));
            m.insert(s("key"), s(&c.key));
            contexts.insert(s(name), Value::Mapping(m));
        }
        let mut root = Mapping::new();
        root.insert(s("context"), s(&self.context));
        root.insert(s("contexts"), Value::Mapping(contexts));
        yaml::emit(&Value::Mapping(root), 4)
    }
}
