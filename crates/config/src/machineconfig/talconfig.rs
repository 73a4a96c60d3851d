//! The cluster definition in talhelper's format: `talconfig.yaml` with `talenv.yaml`
//! substitution, read leniently like talhelper (`yaml.Unmarshal`, not strict): keys
//! neither tool knows become warnings with file and line (`unknown_keys.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

pub use super::contract::parse_k8s_version;
pub use super::devices::{DeviceSelector, DhcpOptions, NetworkDevice, Route, Vip};
use super::envsubst::Vars;
use super::error::Finding;
use super::error::{locate_line, ConfigError};
pub use super::nodeconfigs::{
    ExtensionService, ImageFactory, IngressFirewall, InlineManifest, KernelModule, MachineFile,
};
pub use super::schematic::Schematic;
pub use super::yaml::parse_strict;

/// `talconfig.yaml`, top level.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
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
    #[serde(default)]
    pub inline_manifests: Vec<InlineManifest>,
    #[serde(default)]
    pub image_factory: ImageFactory,
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
pub struct CniConfig {
    pub name: String,
    #[serde(default)]
    pub urls: Vec<String>,
    /// Talos's `flannel: {extraArgs, kubeNetworkPoliciesEnabled}`, passed through.
    #[serde(default)]
    pub flannel: Option<Value>,
}

/// One entry of `nodes:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
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
    #[serde(default)]
    pub override_extra_manifests: bool,
    #[serde(default, rename = "overrideMachineCertSANs")]
    pub override_machine_cert_sans: bool,
    #[serde(default)]
    pub machine_disks: Vec<Value>,
    #[serde(default)]
    pub machine_files: Vec<MachineFile>,
    #[serde(default)]
    pub kernel_modules: Vec<KernelModule>,
    #[serde(default)]
    pub extra_manifests: Vec<String>,
    #[serde(default)]
    pub no_schematic_validate: bool,
    #[serde(default)]
    pub schematic: Option<Schematic>,
    /// Only feeds talhelper's `genurl image`; never part of a config.
    #[serde(default)]
    pub image_schematic: Option<Schematic>,
    #[serde(default)]
    pub ingress_firewall: Option<IngressFirewall>,
    #[serde(default)]
    pub extension_services: Vec<ExtensionService>,
    /// Talos `VolumeConfig` specs (name, provisioning, encryption), passed through.
    #[serde(default)]
    pub volumes: Vec<Value>,
    /// Talos `UserVolumeConfig` specs, passed through.
    #[serde(default)]
    pub user_volumes: Vec<Value>,
    #[serde(default)]
    pub filename_tmpl: Option<String>,
}

/// `controlPlane:` / `worker:` settings folded into every node of that role.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
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
    #[serde(default)]
    pub network_interfaces: Vec<NetworkDevice>,
    #[serde(default)]
    pub machine_disks: Vec<Value>,
    #[serde(default)]
    pub machine_files: Vec<MachineFile>,
    #[serde(default)]
    pub kernel_modules: Vec<KernelModule>,
    #[serde(default)]
    pub extra_manifests: Vec<String>,
    #[serde(default)]
    pub no_schematic_validate: bool,
    #[serde(default)]
    pub schematic: Option<Schematic>,
    /// Only feeds talhelper's `genurl image`; never part of a config.
    #[serde(default)]
    pub image_schematic: Option<Schematic>,
    #[serde(default)]
    pub ingress_firewall: Option<IngressFirewall>,
    #[serde(default)]
    pub extension_services: Vec<ExtensionService>,
    /// Talos `VolumeConfig` specs (name, provisioning, encryption), passed through.
    #[serde(default)]
    pub volumes: Vec<Value>,
    /// Talos `UserVolumeConfig` specs, passed through.
    #[serde(default)]
    pub user_volumes: Vec<Value>,
    #[serde(default)]
    pub filename_tmpl: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
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

/// The machine's platform, for the image-factory URLs (talhelper's `MachineSpec`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    pub mode: Option<String>,
    pub arch: Option<String>,
    pub secureboot: Option<bool>,
    #[serde(rename = "useUKI")]
    pub use_uki: Option<bool>,
    pub boot_method: Option<String>,
    pub image_suffix: Option<String>,
}

/// A patch ready to apply: its text after substitution and where it came from.
#[derive(Debug, Clone)]
pub struct PatchSource {
    /// The patch file, or talconfig.yaml for inline patches.
    pub file: PathBuf,
    /// Line in `file` where the patch text starts (1 for files).
    pub line: usize,
    pub text: String,
    /// A Go template, rendered against the config it patches (talhelper's
    /// patcher); for patch files, talenv substitution follows the rendering.
    pub template: bool,
    pub envsubst_after_template: bool,
}

/// A node with its group settings folded in and its patches loaded in talhelper's
/// order: group patches, node patches, then the top-level patches.
#[derive(Debug, Clone)]
pub struct ResolvedNode {
    pub node: Node,
    pub patches: Vec<PatchSource>,
    /// Where the top-level patches start in `patches`: talhelper renders the node's
    /// patch templates against the config before them, the global ones against the
    /// config the node patches made (two `PatchesPatcher` calls, generate/config.go).
    pub global_patches_from: usize,
    /// Node `extraManifests` (deprecated in talhelper), appended as documents.
    pub extra_manifests: Vec<PatchSource>,
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
    /// What loading found that talhelper accepts but may bite (unknown keys,
    /// fields talhelper ignores), each naming file and line.
    pub warnings: Vec<Finding>,
    /// The talenv variables, for templated patch files (substituted after rendering).
    pub vars: Vars,
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
    /// The age key for SOPS-encrypted talenv, patch and content files (None: where
    /// sops looks: `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY`, the default key file).
    pub age_key: Option<PathBuf>,
}

impl DefinitionPaths {
    /// talhelper's defaults next to a talconfig.yaml.
    pub fn beside(talconfig: &Path) -> Self {
        let dir = talconfig.parent().unwrap_or(Path::new("."));
        Self {
            talconfig: talconfig.to_path_buf(),
            // talhelper's default `--env-file` list (cmd/genconfig.go@v3.1.16).
            talenv: [
                "talenv.yaml",
                "talenv.sops.yaml",
                "talenv.yml",
                "talenv.sops.yml",
            ]
            .iter()
            .map(|n| dir.join(n))
            .collect(),
            talenv_required: false,
            age_key: None,
        }
    }
}

pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    crate::limits::read_text(path, crate::limits::MAX_INPUT_BYTES)
        .map_err(|p| ConfigError::unreadable(path, p))
}

impl ClusterDefinition {
    pub(super) fn dir(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub(super) fn err(&self, path: &[&str], message: String, hint: &str) -> ConfigError {
        ConfigError::input(&self.source, locate_line(&self.text, path), message, hint)
    }

    pub(super) fn node_line(&self, index: usize) -> usize {
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
