//! Renders one machine config per node: the documents `talosctl gen config` makes for
//! the version contract, talhelper's network documents, then the patches in
//! talhelper's order, canonical key order, and yaml.v3-style output with indent 2.

use serde_yaml_ng::{Mapping, Value};

pub(crate) mod install;
mod kube_docs;
pub mod netdocs;
mod order;
mod talhelper_docs;
mod v1alpha1;

pub use talhelper_docs::legacy_device;
use v1alpha1::base_documents;

pub use super::contract::{Contract, DEFAULT_TALOS_VERSION};
use super::envsubst;
use super::error::ConfigError;
use super::gotmpl;
use super::patch;
use super::schema;
use super::schematic::{self, Schematic};
use super::secrets::SecretsBundle;
use super::talconfig::{ClusterDefinition, PatchSource, ResolvedNode};
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

/// Renders one node's config, in talhelper's order (`th:pkg/generate/config.go`
/// @v3.1.16): generator documents with talhelper's overrides, the installer image,
/// templated labels and annotations, its own documents as one strategic patch, the
/// node's then the global patches (templated ones rendered against the config they
/// patch), then node `extraManifests` appended as documents.
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
            "set talosVersion to a 1.8 to 1.14 release",
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

/// One node's config under `contract`, in talhelper's order (see [`render_node`]).
pub fn render_node_at(
    def: &ClusterDefinition,
    secrets: &SecretsBundle,
    node: &ResolvedNode,
    contract: Contract,
) -> Result<RenderedConfig, ConfigError> {
    let version = talos_version(def);
    let at_node = |m: String, hint: &str| ConfigError::input(&def.source, node.line, m, hint);
    let image = installer_url(def, node, &version).map_err(|m| {
        at_node(
            format!("node {}: installer image: {m}", node.hostname()),
            "check imageFactory.installerURLTmpl and the node's schematic",
        )
    })?;
    let mut docs = if contract.multidoc_kubernetes() {
        kube_docs::base_documents(def, secrets, node, &image)
            .map_err(|m| at_node(m, "fix the node's settings named above"))?
    } else {
        let mut docs = base_documents(def, secrets, node, contract);
        talhelper_docs::v1alpha1_overrides(&mut docs[0], def, node, contract);
        if docs[0]
            .get("machine")
            .and_then(|m| m.get("install"))
            .is_some()
        {
            set(&mut docs[0], &["machine", "install", "image"], s(&image));
        }
        docs
    };
    template_labels(&mut docs[0], node).map_err(|m| {
        at_node(
            format!("node {}: {m}", node.hostname()),
            "use the template subset this tool supports (see docs), or write the value out",
        )
    })?;
    let mut extra = Vec::new();
    let node_docs = |r: Result<Vec<Value>, String>| {
        r.map_err(|m| {
            at_node(
                format!("node {}: {m}", node.hostname()),
                "talhelper refuses this too; fix the node's settings",
            )
        })
    };
    if contract.multidoc_network_config_supported() {
        extra.extend(node_docs(netdocs::resolver_and_hostname(node))?);
    }
    extra.extend(node_docs(talhelper_docs::extra_documents(node))?);
    if contract.multidoc_network_config_supported() && !node.node.network_interfaces.is_empty() {
        extra.extend(node_docs(netdocs::link_documents(
            &node.node.network_interfaces,
        ))?);
    }
    // talhelper merges its own documents as one strategic patch before user patches.
    let talhelper_patch = patch::LoadedPatch {
        patch: patch::Patch::Strategic(extra),
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
        // Each batch (node patches, then global ones) is rendered against the config
        // as it was before the batch, as talhelper's PatchesPatcher does.
        let split = node.global_patches_from.min(node.patches.len());
        for batch in [&node.patches[..split], &node.patches[split..]] {
            let before = docs.clone();
            for p in batch {
                let p = render_patch(def, p, &before)?;
                patch::LoadedPatch::load(&p)?.apply(&mut docs)?;
            }
        }
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
    for m in &node.extra_manifests {
        let text = render_patch(def, m, &docs)?.text;
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(de).map_err(|e| {
                ConfigError::input(
                    &m.file,
                    e.location().map(|l| l.line()).unwrap_or(0),
                    format!("extra manifest is not valid YAML: {e}"),
                    "fix the manifest's YAML",
                )
            })?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    for d in docs.iter_mut() {
        fill_go_zero_values(d);
        schema::coerce(d);
        if contract.multidoc_kubernetes() {
            // The v1alpha1 fields 1.14 deprecates are only in the 1.13 schema (above).
            schema::with_contract_1_14(|| schema::coerce(d));
        }
        yaml::canonicalize(d);
        order::apply(d);
    }
    if let Some(path) = docs
        .iter()
        .find_map(|d| leftover_template(d, &mut Vec::new()))
    {
        return Err(at_node(
            format!(
                "node {}: `{{{{` is left in the rendered config at {path}",
                node.hostname()
            ),
            "a template was not rendered; this is a bug to report, with the definition",
        ));
    }
    let text = yaml::emit_documents(&docs, 2);
    let file_name = output_file_name(def, node).map_err(|m| {
        at_node(
            format!("node {}: filenameTmpl: {m}", node.hostname()),
            "the template must give a plain file name such as `{{.ClusterName}}-{{.Hostname}}.yaml`",
        )
    })?;
    Ok(RenderedConfig {
        hostname: node.hostname().to_string(),
        file_name,
        control_plane: node.is_control_plane(),
        documents: docs,
        yaml: text,
    })
}

/// A templated patch rendered against the current v1alpha1 document (then talenv
/// substitution for patch files, as talhelper does); other patches unchanged.
fn render_patch(
    def: &ClusterDefinition,
    p: &PatchSource,
    docs: &[Value],
) -> Result<PatchSource, ConfigError> {
    if !p.template {
        return Ok(p.clone());
    }
    let data = docs.first().cloned().unwrap_or(Value::Null);
    let rendered = gotmpl::render(&p.text, &data, &gotmpl::Names::GoConfig).map_err(|m| {
        ConfigError::input(
            &p.file,
            p.line,
            format!("template: {m}"),
            "use the template subset this tool supports (field chains, if/range/with, pipes, sprig basics), or write the value out",
        )
    })?;
    let text = if p.envsubst_after_template {
        envsubst::substitute(&rendered, &def.vars, &p.file)?
    } else {
        rendered
    };
    Ok(PatchSource {
        text,
        template: false,
        envsubst_after_template: false,
        ..p.clone()
    })
}

/// Fills templated label and annotation values, rendered against the config as it
/// is once the installer image is set (talhelper's `templateConfig`).
fn template_labels(d: &mut Value, node: &ResolvedNode) -> Result<(), String> {
    let data = d.clone();
    for (field, src) in [
        ("nodeLabels", &node.node.node_labels),
        ("nodeAnnotations", &node.node.node_annotations),
    ] {
        for (k, v) in src.iter().filter(|(_, v)| gotmpl::is_template(v)) {
            let r = gotmpl::render(v, &data, &gotmpl::Names::GoConfig)
                .map_err(|m| format!("{field}.{k}: template: {m}"))?;
            set(d, &["machine", field, k], s(&r));
        }
    }
    Ok(())
}

/// The path of a string still holding `{{`, outside file and manifest contents
/// (which talhelper writes as they are).
fn leftover_template(v: &Value, path: &mut Vec<String>) -> Option<String> {
    match v {
        Value::String(x) if x.contains("{{") => Some(path.join(".")),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            let k = k.as_str().unwrap_or_default();
            if matches!(k, "content" | "contents") {
                return None;
            }
            path.push(k.to_string());
            let r = leftover_template(v, path);
            path.pop();
            r
        }),
        Value::Sequence(q) => q.iter().enumerate().find_map(|(i, v)| {
            path.push(i.to_string());
            let r = leftover_template(v, path);
            path.pop();
            r
        }),
        _ => None,
    }
}

/// talhelper's output file name (`GetOutputFileName`): `filenameTmpl` rendered
/// with ClusterName, Hostname, IPAddress and Role; `<cluster>-<hostname>.yaml` without.
fn output_file_name(def: &ClusterDefinition, node: &ResolvedNode) -> Result<String, String> {
    let Some(t) = node.node.filename_tmpl.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(def.file_name(node));
    };
    let mut data = Mapping::new();
    for (k, v) in [
        ("ClusterName", def.cluster_name()),
        ("Hostname", node.hostname()),
        ("IPAddress", node.node.ip_address.as_str()),
        (
            "Role",
            if node.is_control_plane() {
                "controlplane"
            } else {
                "worker"
            },
        ),
    ] {
        data.insert(s(k), s(v));
    }
    let name = gotmpl::render(t, &Value::Mapping(data), &gotmpl::Names::Plain)?;
    // The name is joined to the output folder: it must stay inside it.
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name.starts_with('.') {
        return Err(format!("`{name}` is not a plain file name"));
    }
    Ok(name)
}

/// The node's installer image, as talhelper chooses it (`installerURL`): the
/// factory URL of its schematic, else `<talosImageURL>:<version>`, else the factory
/// URL of the empty schematic. Offline: the schematic ID is computed, not fetched.
pub fn installer_url(
    def: &ClusterDefinition,
    node: &ResolvedNode,
    version: &str,
) -> Result<String, String> {
    let n = &node.node;
    let url = n.talos_image_url.as_deref().filter(|u| !u.is_empty());
    if let Some(url) = url {
        return Ok(format!("{url}:{version}"));
    }
    let id = n
        .schematic
        .as_ref()
        .map(Schematic::id)
        .unwrap_or_else(|| EMPTY_SCHEMATIC_ID.to_string());
    schematic::installer_url(&def.config.image_factory, &machine_spec(node), &id, version)
}

/// `machineSpec` with talhelper's defaults (`Node.GetMachineSpec`).
pub fn machine_spec(node: &ResolvedNode) -> schematic::Spec {
    let m = node.node.machine_spec.clone().unwrap_or_default();
    let or = |v: Option<String>, d: &str| v.filter(|x| !x.is_empty()).unwrap_or_else(|| d.into());
    schematic::Spec {
        mode: or(m.mode, "metal"),
        arch: or(m.arch, "amd64"),
        secureboot: m.secureboot.unwrap_or(false),
        use_uki: m.use_uki.unwrap_or(false),
        boot_method: or(m.boot_method, "iso"),
        image_suffix: or(m.image_suffix, "iso"),
    }
}

/// What the v1alpha1 builder writes as `install.image`; [`render_node`] has already
/// refused a node whose URL cannot be built, so the fallback is never written.
pub(super) fn installer_image(
    def: &ClusterDefinition,
    node: &ResolvedNode,
    version: &str,
) -> String {
    installer_url(def, node, version).unwrap_or_default()
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
