//! The talosconfig of a cluster definition, built as talhelper builds it, in the
//! one talosconfig model ([`Talosconfig`], from the Talos client crate), and written
//! the way talosctl writes it.

use serde_yaml_ng::{Mapping, Value};

use super::error::ConfigError;
use super::secrets::SecretsBundle;
use super::talconfig::ClusterDefinition;
use super::yaml;
use endsys_talos::talosconfig::Talosconfig;

/// talhelper's talosconfig (budimanjojo/talhelper v3.1.16 `pkg/talos/talosconfig.go`):
/// context = cluster name, endpoints = every control plane's addresses (never the
/// VIP: talosctl must reach apid on each node even when the VIP is down), nodes =
/// every node's addresses, and an admin certificate from the bundle's OS CA
/// ([`Talosconfig::admin`]).
pub fn for_cluster(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
) -> Result<Talosconfig, ConfigError> {
    let ca = secrets.os_ca()?;
    let endpoints = def.control_planes().flat_map(|n| n.addresses()).collect();
    let nodes = def.nodes.iter().flat_map(|n| n.addresses()).collect();
    Ok(Talosconfig::admin(
        def.cluster_name(),
        &ca,
        endpoints,
        nodes,
    )?)
}

/// YAML as talosctl writes it: 4-space indent, Go field order, `endpoints` always
/// present, `nodes` and `cluster` only when set (siderolabs/talos
/// `pkg/machinery/client/config/config.go`).
pub fn to_yaml(tc: &Talosconfig) -> String {
    let s = |v: &str| Value::String(v.to_string());
    let mut contexts = Mapping::new();
    for (name, c) in &tc.contexts {
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
        if let Some(cluster) = &c.cluster {
            m.insert(s("cluster"), s(cluster));
        }
        contexts.insert(s(name), Value::Mapping(m));
    }
    let mut root = Mapping::new();
    root.insert(s("context"), s(&tc.context));
    root.insert(s("contexts"), Value::Mapping(contexts));
    yaml::emit(&Value::Mapping(root), 4)
}
