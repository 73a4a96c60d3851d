//! The cluster definition in talhelper's format: `talconfig.yaml` with `talenv.yaml`
//! substitution. Fields talhelper knows but this tool does not implement are refused
//! (with file and line) rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use super::contract::parse_k8s_version;
use super::envsubst::{substitute, Vars};
use super::error::{locate_line, ConfigError};
pub use super::yaml::parse_strict;

/// `talconfig.yaml`, top level.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TalConfig {
    pub cluster_name: String,
    #[serde(default)]
    pub talos_version: Option<String>,
    pub kubernetes_version: String,
    pub endpoint: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub allow_scheduling_on_control_planes: Option<bool>,
    #[serde(default)]
    pub allow_scheduling_on_masters: Option<bool>,
    #[serde(default)]
    pub additional_machine_cert_sans: Vec<String>,
    #[serde(default)]
    pub additional_api_server_cert_sans: Vec<String>,
    #[serde(default)]
    pub cluster_pod_nets: Vec<String>,
    #[serde(default)]
    pub cluster_svc_nets: Vec<String>,
    #[serde(default)]
    pub cni_config: Option<CniConfig>,
    #[serde(default)]
    pub patches: Vec<String>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub control_plane: Option<NodeGroup>,
    #[serde(default)]
    pub worker: Option<NodeGroup>,
}

/// The pod network when `clusterPodNets` is empty: Talos' `DefaultIPv4PodNet`
/// (siderolabs/talos v1.13.9 `pkg/machinery/constants/constants.go`), which
/// talhelper leaves to Talos' generator.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";

/// The service network when `clusterSvcNets` is empty: Talos'
/// `DefaultIPv4ServiceNet` (same file).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

impl TalConfig {
    /// `clusterPodNets`, or [`DEFAULT_POD_CIDR`].
    pub fn pod_nets(&self) -> Vec<String> {
        or_default(&self.cluster_pod_nets, DEFAULT_POD_CIDR)
    }

    /// `clusterSvcNets`, or [`DEFAULT_SERVICE_CIDR`].
    pub fn service_nets(&self) -> Vec<String> {
        or_default(&self.cluster_svc_nets, DEFAULT_SERVICE_CIDR)
    }
}

fn or_default(nets: &[String], default: &str) -> Vec<String> {
    if nets.is_empty() {
        vec![default.to_string()]
    } else {
        nets.to_vec()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CniConfig {
    pub name: String,
    #[serde(default)]
    pub urls: Vec<String>,
}

/// One entry of `nodes:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub hostname: String,
    /// One address or a comma-separated list; not written into the config.
    pub ip_address: String,
    #[serde(default)]
    pub control_plane: bool,
    #[serde(default)]
    pub install_disk: Option<String>,
    #[serde(default)]
    pub install_disk_selector: Option<DiskSelector>,
    #[serde(default)]
    pub machine_spec: Option<MachineSpec>,
    #[serde(default, rename = "talosImageURL")]
    pub talos_image_url: Option<String>,
    #[serde(default)]
    pub ignore_hostname: bool,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkDevice>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub disable_search_domain: Option<bool>,
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_taints: BTreeMap<String, String>,
    #[serde(default, rename = "certSANs")]
    pub cert_sans: Vec<String>,
    #[serde(default)]
    pub patches: Vec<String>,
    #[serde(default)]
    pub override_patches: bool,
}

/// `controlPlane:` / `worker:` settings folded into every node of that role.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    #[serde(default)]
    pub install_disk: Option<String>,
    #[serde(default)]
    pub install_disk_selector: Option<DiskSelector>,
    #[serde(default)]
    pub machine_spec: Option<MachineSpec>,
    #[serde(default, rename = "talosImageURL")]
    pub talos_image_url: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub disable_search_domain: Option<bool>,
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_taints: BTreeMap<String, String>,
    #[serde(default, rename = "certSANs")]
    pub cert_sans: Vec<String>,
    #[serde(default)]
    pub patches: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiskSelector {
    pub size: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub modalias: Option<String>,
    pub uuid: Option<String>,
    pub wwid: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub bus_path: Option<String>,
}

impl DiskSelector {
    /// Fields in Talos's struct order, for output.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("size", &self.size),
            ("name", &self.name),
            ("model", &self.model),
            ("serial", &self.serial),
            ("modalias", &self.modalias),
            ("uuid", &self.uuid),
            ("wwid", &self.wwid),
            ("type", &self.kind),
            ("busPath", &self.bus_path),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// Only used to build image-factory URLs, which this tool does not do; accepted so
/// existing definitions load, and `talosImageURL` is then required.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineSpec {
    pub mode: Option<String>,
    pub arch: Option<String>,
    pub secureboot: Option<bool>,
    #[serde(rename = "useUKI")]
    pub use_uki: Option<bool>,
    pub boot_method: Option<String>,
}

/// One `networkInterfaces` entry (plain links; bonds, bridges, VLANs and wireguard
/// are not supported yet and are refused).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkDevice {
    pub interface: Option<String>,
    pub device_selector: Option<DeviceSelector>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
    pub dhcp: Option<bool>,
    pub dhcp_options: Option<DhcpOptions>,
    pub vip: Option<Vip>,
    #[serde(default)]
    pub ignore: bool,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceSelector {
    pub hardware_addr: Option<String>,
    pub permanent_addr: Option<String>,
    pub bus_path: Option<String>,
    pub driver: Option<String>,
    #[serde(rename = "pciID")]
    pub pci_id: Option<String>,
    pub physical: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub network: Option<String>,
    pub gateway: Option<String>,
    pub source: Option<String>,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DhcpOptions {
    pub route_metric: Option<u32>,
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub ip: String,
}

/// A patch ready to apply: its text after substitution and where it came from.
#[derive(Debug, Clone)]
pub struct PatchSource {
    /// The patch file, or talconfig.yaml for inline patches.
    pub file: PathBuf,
    /// Line in `file` where the patch text starts (1 for files).
    pub line: usize,
    pub text: String,
}

/// A node with its group settings folded in and its patches loaded in talhelper's
/// order: group patches, node patches, then the top-level patches.
#[derive(Debug, Clone)]
pub struct ResolvedNode {
    pub node: Node,
    pub patches: Vec<PatchSource>,
    /// Line of this node's `hostname:` in talconfig.yaml (for cluster-level errors).
    pub line: usize,
}

impl ResolvedNode {
    pub fn hostname(&self) -> &str {
        &self.node.hostname
    }
    pub fn is_control_plane(&self) -> bool {
        self.node.control_plane
    }
    /// The node's addresses (`ipAddress` may hold a comma-separated list).
    pub fn addresses(&self) -> Vec<String> {
        self.node
            .ip_address
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A loaded cluster definition.
#[derive(Debug, Clone)]
pub struct ClusterDefinition {
    pub config: TalConfig,
    /// talconfig.yaml's path; patches are resolved relative to its directory.
    pub source: PathBuf,
    /// The text after substitution (for locating lines).
    pub text: String,
    pub nodes: Vec<ResolvedNode>,
}

/// Where a definition lives on disk: endsys keeps these under `talos/`.
#[derive(Debug, Clone)]
pub struct DefinitionPaths {
    pub talconfig: PathBuf,
    /// talenv files to read; missing ones are skipped unless `talenv_required`.
    pub talenv: Vec<PathBuf>,
    /// True when the talenv files were named explicitly (`--env`): a missing one is
    /// then an error, not silently skipped.
    pub talenv_required: bool,
}

impl DefinitionPaths {
    /// talhelper's defaults next to a talconfig.yaml.
    pub fn beside(talconfig: &Path) -> Self {
        let dir = talconfig.parent().unwrap_or(Path::new("."));
        Self {
            talconfig: talconfig.to_path_buf(),
            talenv: ["talenv.yaml", "talenv.yml"]
                .iter()
                .map(|n| dir.join(n))
                .collect(),
            talenv_required: false,
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    crate::limits::read_text(path, crate::limits::MAX_INPUT_BYTES)
        .map_err(|p| ConfigError::unreadable(path, p))
}

impl ClusterDefinition {
    /// Reads talconfig.yaml and its talenv files from disk. `base_vars` is the
    /// environment to start from (`Vars::from_process_env()` for the CLI, empty in tests).
    pub fn load(paths: &DefinitionPaths, base_vars: Vars) -> Result<Self, ConfigError> {
        let mut vars = base_vars;
        for env in &paths.talenv {
            if paths.talenv_required || env.symlink_metadata().is_ok() {
                let text = read(env)?;
                if text.contains("sops:") && text.contains("ENC[") {
                    return Err(ConfigError::input(
                        env,
                        locate_line(&text, &["sops"]),
                        "this talenv file is SOPS-encrypted",
                        "decrypt it first (`sops -d`), then pass the plain file with --env",
                    ));
                }
                vars.load_talenv(&text, env)?;
            }
        }
        let text = read(&paths.talconfig)?;
        Self::from_text(&text, &paths.talconfig, &vars, &FsPatchReader)
    }

    /// Parses a definition from text. Patch files (`@path`) are read through `reader`.
    pub fn from_text(
        raw: &str,
        source: &Path,
        vars: &Vars,
        reader: &dyn PatchReader,
    ) -> Result<Self, ConfigError> {
        crate::limits::check_text(raw, crate::limits::MAX_INPUT_BYTES)
            .map_err(|p| ConfigError::unreadable(source, p))?;
        let text = substitute(raw, vars, source)?;
        let config: TalConfig = parse_strict(&text, source)?;
        let mut def = ClusterDefinition {
            config,
            source: source.to_path_buf(),
            text,
            nodes: Vec::new(),
        };
        def.check_basics()?;
        def.nodes = def.resolve_nodes(vars, reader)?;
        Ok(def)
    }

    fn dir(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub(super) fn err(&self, path: &[&str], message: String, hint: &str) -> ConfigError {
        ConfigError::input(&self.source, locate_line(&self.text, path), message, hint)
    }

    fn node_line(&self, index: usize) -> usize {
        // The n-th `- hostname:` (or first key of the n-th item) under `nodes:`.
        let mut count = 0;
        let mut in_nodes = false;
        for (i, l) in self.text.lines().enumerate() {
            if l.starts_with("nodes:") {
                in_nodes = true;
                continue;
            }
            if in_nodes {
                if !l.starts_with(' ')
                    && !l.starts_with('-')
                    && !l.trim().is_empty()
                    && !l.starts_with('#')
                {
                    break;
                }
                if l.trim_start().starts_with("- ") && l.len() - l.trim_start().len() <= 2 {
                    if count == index {
                        return i + 1;
                    }
                    count += 1;
                }
            }
        }
        locate_line(&self.text, &["nodes"])
    }

    fn resolve_nodes(
        &self,
        vars: &Vars,
        reader: &dyn PatchReader,
    ) -> Result<Vec<ResolvedNode>, ConfigError> {
        let c = &self.config;
        let top = self.load_patches(&c.patches, &["patches"], vars, reader)?;
        let cp_patches = match &c.control_plane {
            Some(g) => self.load_patches(&g.patches, &["controlPlane", "patches"], vars, reader)?,
            None => Vec::new(),
        };
        let wk_patches = match &c.worker {
            Some(g) => self.load_patches(&g.patches, &["worker", "patches"], vars, reader)?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (i, n) in c.nodes.iter().enumerate() {
            let line = self.node_line(i);
            let (group, group_patches) = if n.control_plane {
                (c.control_plane.clone().unwrap_or_default(), &cp_patches)
            } else {
                (c.worker.clone().unwrap_or_default(), &wk_patches)
            };
            let mut node = n.clone();
            fold_group(&mut node, &group);
            self.check_node(i, &node, line)?;
            let mut patches = Vec::new();
            if !node.override_patches {
                patches.extend(group_patches.iter().cloned());
            }
            patches.extend(self.load_patches_at(&n.patches, line, vars, reader)?);
            patches.extend(top.iter().cloned());
            out.push(ResolvedNode {
                node,
                patches,
                line,
            });
        }
        Ok(out)
    }

    fn load_patches(
        &self,
        list: &[String],
        path: &[&str],
        vars: &Vars,
        reader: &dyn PatchReader,
    ) -> Result<Vec<PatchSource>, ConfigError> {
        let line = locate_line(&self.text, path);
        self.load_patches_at(list, line, vars, reader)
    }

    fn load_patches_at(
        &self,
        list: &[String],
        line: usize,
        vars: &Vars,
        reader: &dyn PatchReader,
    ) -> Result<Vec<PatchSource>, ConfigError> {
        let mut out = Vec::new();
        for entry in list {
            let trimmed = entry.trim();
            // talhelper: `@file`, or a bare word without spaces is a file name too.
            let file = trimmed.strip_prefix('@').or_else(|| {
                (!trimmed.contains(' ')
                    && !trimmed.contains('\n')
                    && !trimmed.starts_with(['[', '{']))
                .then_some(trimmed)
            });
            if let Some(f) = file {
                let path = self.dir().join(f.strip_prefix("./").unwrap_or(f));
                let raw = reader.read(&path).map_err(|e| match e {
                    ConfigError::Io { source, .. } => ConfigError::input(
                        &self.source,
                        line,
                        format!("patch file `{f}` cannot be read: {source}"),
                        "check the path; it is relative to talconfig.yaml's folder",
                    ),
                    // The reader's own verdict (a folder, a loop, binary…), said from
                    // the line that names the patch.
                    ConfigError::Input {
                        location,
                        message,
                        hint,
                    } if location.line == 0 => ConfigError::input(
                        &self.source,
                        line,
                        format!("patch file `{f}` cannot be read: {message}"),
                        hint,
                    ),
                    other => other,
                })?;
                crate::limits::check_text(&raw, crate::limits::MAX_INPUT_BYTES)
                    .map_err(|p| ConfigError::unreadable(&path, p))?;
                if raw.trim().is_empty() {
                    continue; // talhelper skips blank patch files
                }
                if raw.contains("{{") {
                    return Err(ConfigError::input(
                        &path,
                        locate_text(&raw, "{{"),
                        "Go template syntax `{{` in a patch is not supported",
                        "write the value out literally",
                    ));
                }
                if raw.contains("ENC[AES256_GCM") {
                    return Err(ConfigError::input(
                        &path,
                        locate_text(&raw, "ENC["),
                        "this patch is SOPS-encrypted",
                        "decrypt it first; encrypted patches are not read directly",
                    ));
                }
                let text = substitute(&raw, vars, &path)?;
                out.push(PatchSource {
                    file: path,
                    line: 1,
                    text,
                });
            } else {
                out.push(PatchSource {
                    file: self.source.clone(),
                    line,
                    text: entry.clone(),
                });
            }
        }
        Ok(out)
    }

    pub fn control_planes(&self) -> impl Iterator<Item = &ResolvedNode> {
        self.nodes.iter().filter(|n| n.is_control_plane())
    }

    pub fn cluster_name(&self) -> &str {
        &self.config.cluster_name
    }

    /// talhelper's output file name: `<cluster>-<hostname>.yaml`.
    pub fn file_name(&self, node: &ResolvedNode) -> String {
        format!("{}-{}.yaml", self.config.cluster_name, node.hostname())
    }
}

fn locate_text(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// Node settings win over group settings; lists of SANs and maps of labels merge.
fn fold_group(node: &mut Node, g: &NodeGroup) {
    if node.install_disk.is_none() && node.install_disk_selector.is_none() {
        node.install_disk = g.install_disk.clone();
        node.install_disk_selector = g.install_disk_selector.clone();
    }
    if node.machine_spec.is_none() {
        node.machine_spec = g.machine_spec.clone();
    }
    if node.talos_image_url.is_none() {
        node.talos_image_url = g.talos_image_url.clone();
    }
    if node.nameservers.is_empty() {
        node.nameservers = g.nameservers.clone();
    }
    if node.disable_search_domain.is_none() {
        node.disable_search_domain = g.disable_search_domain;
    }
    for (src, dst) in [
        (&g.node_labels, &mut node.node_labels),
        (&g.node_annotations, &mut node.node_annotations),
        (&g.node_taints, &mut node.node_taints),
    ] {
        for (k, v) in src {
            dst.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut sans = g.cert_sans.clone();
    sans.append(&mut node.cert_sans);
    node.cert_sans = sans;
}

/// RFC 1123 hostname.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// How patch files are read: from disk in the CLI, from memory in tests and benches.
pub trait PatchReader {
    fn read(&self, path: &Path) -> Result<String, ConfigError>;
}

/// Reads patch files from disk.
pub struct FsPatchReader;

impl PatchReader for FsPatchReader {
    fn read(&self, path: &Path) -> Result<String, ConfigError> {
        read(path)
    }
}

/// Patch files held in memory, keyed by path.
#[derive(Debug, Default, Clone)]
pub struct MemPatchReader(pub BTreeMap<PathBuf, String>);

impl PatchReader for MemPatchReader {
    fn read(&self, path: &Path) -> Result<String, ConfigError> {
        self.0.get(path).cloned().ok_or_else(|| {
            ConfigError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such patch"),
            )
        })
    }
}
