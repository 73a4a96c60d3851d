//! Renders one machine config per node: the documents `talosctl gen config` makes for
//! the version contract, talhelper's network documents, then the patches in
//! talhelper's order, canonical key order, and yaml.v3-style output with indent 2.

use serde_yaml_ng::{Mapping, Value};

pub(crate) mod install;
mod kube_docs;
mod netdocs;
mod v1alpha1;

pub use netdocs::network_documents;
use v1alpha1::base_documents;

pub use super::contract::{Contract, DEFAULT_TALOS_VERSION};
use super::error::ConfigError;
use super::patch;
use super::schema;
use super::secrets::SecretsBundle;
use super::talconfig::{ClusterDefinition, ResolvedNode};
use super::yaml;

/// Schematic ID of the empty schematic on the image factory; what talhelper gets
/// back when a node names no schematic.
pub const EMPTY_SCHEMATIC_ID: &str =
    "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

/// One rendered node config.
#[derive(Debug, Clone)]
pub struct RenderedConfig {
    pub hostname: String,
    /// talhelper's file name, `<cluster>-<hostname>.yaml`.
    pub file_name: String,
    pub control_plane: bool,
    /// The documents, v1alpha1 first.
    pub documents: Vec<Value>,
    /// The YAML text to write.
    pub yaml: String,
}

pub(super) fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

pub(super) fn set(root: &mut Value, path: &[&str], v: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        if i + 1 == path.len() {
            m.insert(s(k), v);
            return;
        }
        cur = m
            .entry(s(k))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
}

pub(super) fn seq<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Value {
    Value::Sequence(items.into_iter().map(|x| s(x.as_ref())).collect())
}

pub(super) fn map(pairs: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

pub(super) fn pair(crt: &str, key: &str) -> Value {
    map(&[("crt", s(crt)), ("key", s(key))])
}

/// Renders every node of the definition.
pub fn render_all(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
) -> Result<Vec<RenderedConfig>, ConfigError> {
    def.nodes
        .iter()
        .map(|n| render_node(def, secrets, n))
        .collect()
}

/// The talosVersion in effect, with a leading `v`.
pub fn talos_version(def: &ClusterDefinition) -> String {
    let v = def
        .config
        .talos_version
        .clone()
        .unwrap_or_else(|| DEFAULT_TALOS_VERSION.to_string());
    if v.starts_with('v') {
        v
    } else {
        format!("v{v}")
    }
}

/// Renders one node's config.
pub fn render_node(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
    node: &ResolvedNode,
) -> Result<RenderedConfig, ConfigError> {
    let version = talos_version(def);
    let contract = Contract::parse(&version).map_err(|m| {
        ConfigError::input(
            &def.source,
            0,
            m,
            "set talosVersion to a 1.12, 1.13 or 1.14 release",
        )
    })?;
    render_node_at(def, secrets, node, contract)
}

/// Every node under `contract` instead of talosVersion's (the installer image keeps
/// talosVersion's tag): for a node still running an older Talos, which cannot read
/// the newer contract's documents but installs the newer release from this config.
pub fn render_all_at(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
    contract: Contract,
) -> Result<Vec<RenderedConfig>, ConfigError> {
    def.nodes
        .iter()
        .map(|n| render_node_at(def, secrets, n, contract))
        .collect()
}

/// One node's config under `contract`.
pub fn render_node_at(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
    node: &ResolvedNode,
    contract: Contract,
) -> Result<RenderedConfig, ConfigError> {
    let mut docs = if contract.multidoc_kubernetes() {
        let image = installer_image(def, node, &talos_version(def));
        kube_docs::base_documents(def, secrets, node, &image).map_err(|m| {
            ConfigError::input(
                &def.source,
                node.line,
                m,
                "fix the node's install disk selector",
            )
        })?
    } else {
        base_documents(def, secrets, node, contract)
    };
    let net = network_documents(node);
    // talhelper merges its own documents as one strategic patch before user patches.
    let talhelper_patch = patch::LoadedPatch {
        patch: patch::Patch::Strategic(net),
        file: def.source.clone(),
        line: node.line,
        text: String::new(),
    };
    let contract_name = format!("{}.{}", contract.major, contract.minor);
    let mut patch_all = || -> Result<(), ConfigError> {
        talhelper_patch.apply(&mut docs)?;
        if contract.multidoc_kubernetes() {
            super::conflicts::refuse_legacy_json_ops(&node.patches, &contract_name)?;
        }
        patch::apply_all(&mut docs, &node.patches)?;
        super::conflicts::refuse(
            &docs,
            &node.patches,
            (&def.source, node.line),
            &contract_name,
        )
    };
    if contract.multidoc_kubernetes() {
        // Patches may name the 1.14 document kinds.
        schema::with_contract_1_14(patch_all)?;
    } else {
        patch_all()?;
    }
    for d in docs.iter_mut() {
        fill_go_zero_values(d);
        schema::coerce(d);
        if contract.multidoc_kubernetes() {
            // The v1alpha1 fields 1.14 deprecates are only in the 1.13 schema (above).
            schema::with_contract_1_14(|| schema::coerce(d));
        }
        yaml::canonicalize(d);
    }
    let text = yaml::emit_documents(&docs, 2);
    Ok(RenderedConfig {
        hostname: node.hostname().to_string(),
        file_name: def.file_name(node),
        control_plane: node.is_control_plane(),
        documents: docs,
        yaml: text,
    })
}

pub(super) fn installer_image(
    def: &ClusterDefinition,
    node: &ResolvedNode,
    version: &str,
) -> String {
    match &node.node.talos_image_url {
        Some(url) => format!("{url}:{version}"),
        None => {
            let spec = node.node.machine_spec.clone().unwrap_or_default();
            let mode = spec.mode.unwrap_or_else(|| "metal".into());
            let sb = if spec.secureboot.unwrap_or(false) {
                "-secureboot"
            } else {
                ""
            };
            let _ = def;
            format!("factory.talos.dev/{mode}-installer{sb}/{EMPTY_SCHEMATIC_ID}:{version}")
        }
    }
}

/// Fields Go always marshals (no omitempty) even when a patch left them out.
fn fill_go_zero_values(d: &mut Value) {
    if let Some(Value::Sequence(files)) = d.get_mut("machine").and_then(|m| m.get_mut("files")) {
        for f in files.iter_mut().filter_map(Value::as_mapping_mut) {
            if !f.contains_key("permissions") {
                f.insert(s("permissions"), Value::Number(0.into()));
            }
        }
    }
}
