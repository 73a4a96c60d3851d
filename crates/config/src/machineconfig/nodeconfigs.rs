//! talhelper's node-level features beyond networking (`th:pkg/config/config.go@v3.1.16`,
//! `type NodeConfigs`): files, kernel modules, firewall, extension services, volumes,
//! inline manifests and the image factory settings. Talos-typed parts that talhelper
//! passes through unchanged are kept as YAML values and left to the Talos schema.

use serde::Deserialize;
use serde_yaml_ng::Value;

/// `machineFiles[]`: Talos's `MachineFile` plus talhelper's `skipEnvsubst`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineFile {
    #[serde(default)]
    pub content: String,
    /// Go's `os.FileMode`, a number (YAML `0o644` or `420`).
    #[serde(default)]
    pub permissions: u32,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub skip_envsubst: bool,
}

/// Top-level `inlineManifests[]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InlineManifest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub contents: String,
    #[serde(default)]
    pub skip_envsubst: bool,
}

/// `kernelModules[]`: Talos's `KernelModuleConfig`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct KernelModule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parameters: Vec<String>,
}

/// `ingressFirewall`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressFirewall {
    pub default_action: Option<String>,
    #[serde(default)]
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRule {
    #[serde(default)]
    pub name: String,
    pub port_selector: Option<Value>,
    pub ingress: Option<Value>,
}

/// `extensionServices[]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionService {
    #[serde(default)]
    pub name: String,
    pub config_files: Option<Value>,
    #[serde(default)]
    pub environment: Vec<String>,
}

/// `imageFactory`; empty fields take talhelper's defaults (`GetImageFactory`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageFactory {
    #[serde(rename = "registryURL")]
    pub registry_url: Option<String>,
    pub schematic_endpoint: Option<String>,
    pub protocol: Option<String>,
    #[serde(rename = "installerURLTmpl")]
    pub installer_url_tmpl: Option<String>,
    #[serde(rename = "ISOURLTmpl")]
    pub iso_url_tmpl: Option<String>,
}

/// talhelper's defaults (`th:pkg/config/defaults.go@v3.1.16`, `GetImageFactory`).
pub const DEFAULT_REGISTRY: &str = "factory.talos.dev";
pub const DEFAULT_INSTALLER_TMPL: &str =
    "{{.RegistryURL}}/{{.Mode}}-installer{{if .Secureboot}}-secureboot{{end}}/{{.ID}}:{{.Version}}";
pub const DEFAULT_IMAGE_TMPL: &str = "{{.Protocol}}://{{.RegistryURL}}/image/{{.ID}}/{{.Version}}/{{.Mode}}-{{.Arch}}{{if .Secureboot}}-secureboot{{end}}{{if and .Secureboot .UseUKI}}-uki.efi{{ else }}{{.Suffix}}{{end}}";

impl ImageFactory {
    fn or<'a>(v: &'a Option<String>, d: &'a str) -> &'a str {
        v.as_deref().filter(|s| !s.is_empty()).unwrap_or(d)
    }
    pub fn registry(&self) -> &str {
        Self::or(&self.registry_url, DEFAULT_REGISTRY)
    }
    pub fn protocol(&self) -> &str {
        Self::or(&self.protocol, "https")
    }
    pub fn installer_tmpl(&self) -> &str {
        Self::or(&self.installer_url_tmpl, DEFAULT_INSTALLER_TMPL)
    }
    pub fn image_tmpl(&self) -> &str {
        Self::or(&self.iso_url_tmpl, DEFAULT_IMAGE_TMPL)
    }
}
