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
    /// Go's `os.FileMode`: `420`, `0o644`, or `0644`, which Go's yaml.v3 reads as
    /// octal (YAML 1.1) where YAML 1.2 readers see a string.
    #[serde(default, deserialize_with = "file_mode")]
    pub permissions: u32,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub skip_envsubst: bool,
}

fn file_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| D::Error::custom(format!("permissions {n} is not a file mode"))),
        Value::String(t) => {
            let digits = t
                .strip_prefix("0o")
                .or_else(|| t.strip_prefix('0'))
                .unwrap_or(&t);
            u32::from_str_radix(if digits.is_empty() { "0" } else { digits }, 8).map_err(|_| {
                D::Error::custom(format!("permissions `{t}` is not an octal file mode"))
            })
        }
        Value::Null => Ok(0),
        _ => Err(D::Error::custom("permissions is not a file mode")),
    }
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
