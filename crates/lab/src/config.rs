//! What a simulated node reads from an applied machine configuration.
//!
//! Only the fields the lab acts on are parsed; everything else is kept verbatim in
//! `raw` (served back through the sensitive `MachineConfigs` resource).

use base64::Engine;
use serde_yaml_ng::Value;

use endsys_core::pki::{certs_from_pem, CertificateAuthority};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MachineType {
    Init,
    ControlPlane,
    Worker,
}

impl MachineType {
    pub(crate) fn is_control_plane(self) -> bool {
        matches!(self, MachineType::Init | MachineType::ControlPlane)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MachineType::Init => "init",
            MachineType::ControlPlane => "controlplane",
            MachineType::Worker => "worker",
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigError {
    /// Not YAML at all.
    Parse(String),
    /// No `version: v1alpha1` document (Talos accepts that in maintenance and waits
    /// for the rest of the config).
    NoV1alpha1,
    /// A v1alpha1 document that fails validation.
    Invalid(String),
}

#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub raw: Vec<u8>,
    pub machine_type: MachineType,
    /// `machine.ca` with its key: the OS CA (issues the apid server cert, signs
    /// workers' CSRs in trustd). Control planes only; a worker's config carries
    /// the certificate alone.
    pub os_ca: Option<CertificateAuthority>,
    /// PEM of `machine.ca.crt` (every node has it).
    pub os_ca_crt: String,
    /// PEM of `machine.ca.crt` then every `machine.acceptedCAs` crt: what trustd
    /// returns as `ca` (OSRoot's accepted CAs).
    pub accepted_cas_pem: Vec<u8>,
    /// `machine.token`: trustd compares it with the `token` a worker sends.
    pub token: String,
    /// `cluster.token`: the bootstrap token kubelets join Kubernetes with.
    pub bootstrap_token: String,
    /// PEM of `cluster.ca.crt`, which a kubelet verifies the API server with.
    pub cluster_ca_crt: Option<String>,
    /// DER of every CA a client certificate may chain to (`machine.ca` + `machine.acceptedCAs`).
    pub client_cas: Vec<Vec<u8>>,
    pub cert_sans: Vec<String>,
    pub cluster_name: String,
    pub endpoint: String,
    /// `cluster.ca` (crt + key), issues the admin kubeconfig.
    pub cluster_ca: Option<CertificateAuthority>,
    /// Identity of the etcd cluster this node belongs to: the etcd CA certificate
    /// (or, without one, the Kubernetes CA), so nodes of one secrets bundle share it.
    pub etcd_key: String,
    pub hostname: Option<String>,
    pub install_disk: Option<String>,
    pub disk_selector: Option<Value>,
    /// Contract 1.14: `UnattendedInstallConfig.provisioning.diskSelector.match` (CEL).
    pub install_match: Option<String>,
    /// Whether the config asks for an install (`machine.install` or, from 1.14, an
    /// UnattendedInstallConfig); a 1.14 config without either runs without one.
    pub install_requested: bool,
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.as_mapping()?.get(Value::String((*p).to_string()))?;
    }
    Some(cur)
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn b64_pem(v: &Value, path: &[&str]) -> Result<Option<Vec<u8>>, ConfigError> {
    match get_str(v, path) {
        None => Ok(None),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("{}: invalid base64: {e}", path.join(".")))),
    }
}

fn ca_from(v: &Value, path: &[&str]) -> Result<Option<CertificateAuthority>, ConfigError> {
    let mut crt_path = path.to_vec();
    crt_path.push("crt");
    let mut key_path = path.to_vec();
    key_path.push("key");
    let crt = b64_pem(v, &crt_path)?;
    let key = b64_pem(v, &key_path)?;
    match (crt, key) {
        (Some(crt), Some(key)) => CertificateAuthority::from_pem(&crt, &key, &path.join("."))
            .map(Some)
            .map_err(|e| ConfigError::Invalid(e.to_string())),
        _ => Ok(None),
    }
}

impl NodeConfig {
    pub(crate) fn parse(data: &[u8]) -> Result<NodeConfig, ConfigError> {
        let mut v1alpha1: Option<Value> = None;
        let mut hostname_doc: Option<String> = None;
        let mut others: Vec<Value> = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_slice(data) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            if get_str(&value, &["version"]) == Some("v1alpha1")
                && get(&value, &["machine"]).is_some()
            {
                if v1alpha1.is_some() {
                    return Err(ConfigError::Invalid(
                        "duplicate v1alpha1 document in the configuration".into(),
                    ));
                }
                v1alpha1 = Some(value);
            } else {
                if get_str(&value, &["kind"]) == Some("HostnameConfig") {
                    hostname_doc = get_str(&value, &["hostname"]).map(str::to_string);
                }
                others.push(value);
            }
        }
        let Some(doc) = v1alpha1 else {
            return Err(ConfigError::NoV1alpha1);
        };
        // Contract 1.14 moves the Kubernetes identity into documents.
        let kind_doc = |k: &str| others.iter().find(|d| get_str(d, &["kind"]) == Some(k));
        let cluster_doc = kind_doc("KubeClusterConfig");
        let ca_doc = kind_doc("KubeAPIServerCAConfig");
        let install_doc = kind_doc("UnattendedInstallConfig");
        let invalid = |s: &str| ConfigError::Invalid(s.to_string());
        let machine_type = match get_str(&doc, &["machine", "type"]) {
            Some("controlplane") => MachineType::ControlPlane,
            Some("init") => MachineType::Init,
            Some("worker") => MachineType::Worker,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "machine.type: unknown machine type {other:?}"
                )))
            }
            None => return Err(invalid("machine.type is required")),
        };
        let os_ca = ca_from(&doc, &["machine", "ca"])?;
        if machine_type.is_control_plane() && os_ca.is_none() {
            return Err(invalid("machine.ca: crt and key are required"));
        }
        let os_ca_pem = b64_pem(&doc, &["machine", "ca", "crt"])?
            .ok_or_else(|| invalid("machine.ca.crt is required"))?;
        let os_ca_crt =
            String::from_utf8(os_ca_pem).map_err(|_| invalid("machine.ca.crt: not PEM text"))?;
        let mut client_cas = certs_from_pem(os_ca_crt.as_bytes(), "machine.ca.crt")
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut accepted_cas_pem = os_ca_crt.clone().into_bytes();
        if let Some(list) = get(&doc, &["machine", "acceptedCAs"]).and_then(Value::as_sequence) {
            for (i, item) in list.iter().enumerate() {
                if let Some(pem) = b64_pem(item, &["crt"])? {
                    let certs = certs_from_pem(&pem, &format!("machine.acceptedCAs[{i}]"))
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                    client_cas.extend(certs);
                    if !accepted_cas_pem.ends_with(b"\n") {
                        accepted_cas_pem.push(b'\n');
                    }
                    accepted_cas_pem.extend_from_slice(&pem);
                }
            }
        }
        let token = get_str(&doc, &["machine", "token"])
            .unwrap_or_default()
            .to_string();
        let bootstrap_token = get_str(&doc, &["cluster", "token"])
            .unwrap_or_default()
            .to_string();
        let cluster_ca_crt = b64_pem(&doc, &["cluster", "ca", "crt"])?
            .and_then(|p| String::from_utf8(p).ok())
            .or_else(|| {
                ca_doc.and_then(|d| {
                    get_str(d, &["issuingCA", "cert"])
                        .map(str::to_string)
                        .or_else(|| {
                            get(d, &["acceptedCAs"])
                                .and_then(Value::as_sequence)
                                .and_then(|s| s.first())
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                })
            });
        let cert_sans = get(&doc, &["machine", "certSANs"])
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let cluster_name = get_str(&doc, &["cluster", "clusterName"])
            .or_else(|| cluster_doc.and_then(|d| get_str(d, &["clusterName"])))
            .ok_or_else(|| invalid("cluster.clusterName is required"))?
            .to_string();
        let endpoint = get_str(&doc, &["cluster", "controlPlane", "endpoint"])
            .or_else(|| cluster_doc.and_then(|d| get_str(d, &["endpoint"])))
            .ok_or_else(|| invalid("cluster.controlPlane.endpoint is required"))?
            .to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(ConfigError::Invalid(format!(
                "cluster.controlPlane.endpoint: {endpoint:?} is not a valid URL"
            )));
        }
        let cluster_ca = match ca_from(&doc, &["cluster", "ca"])? {
            Some(ca) => Some(ca),
            None => match ca_doc.map(|d| {
                (
                    get_str(d, &["issuingCA", "cert"]),
                    get_str(d, &["issuingCA", "key"]),
                )
            }) {
                Some((Some(crt), Some(key))) => Some(
                    CertificateAuthority::from_pem(crt.as_bytes(), key.as_bytes(), "issuingCA")
                        .map_err(|e| ConfigError::Invalid(e.to_string()))?,
                ),
                _ => None,
            },
        };
        let etcd_crt = b64_pem(&doc, &["cluster", "etcd", "ca", "crt"])?;
        let key_source = etcd_crt.clone().or_else(|| {
            cluster_ca
                .as_ref()
                .map(|c| c.pair.cert_pem.clone().into_bytes())
        });
        if machine_type.is_control_plane() && key_source.is_none() {
            return Err(invalid(
                "cluster.etcd.ca is required on control plane nodes",
            ));
        }
        let etcd_key = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(key_source.unwrap_or_default());
            hex::encode(h.finalize())
        };
        let hostname = hostname_doc
            .or_else(|| get_str(&doc, &["machine", "network", "hostname"]).map(str::to_string));
        let install_disk = get_str(&doc, &["machine", "install", "disk"]).map(str::to_string);
        let disk_selector = get(&doc, &["machine", "install", "diskSelector"])
            .filter(|v| !v.is_null())
            .cloned();
        let install_match = install_doc
            .and_then(|d| get_str(d, &["provisioning", "diskSelector", "match"]))
            .map(str::to_string);
        let install_requested = get(&doc, &["machine", "install"]).is_some_and(|v| !v.is_null())
            || install_doc.is_some();
        Ok(NodeConfig {
            raw: data.to_vec(),
            machine_type,
            os_ca,
            os_ca_crt,
            accepted_cas_pem,
            token,
            bootstrap_token,
            cluster_ca_crt,
            client_cas,
            cert_sans,
            cluster_name,
            endpoint,
            cluster_ca,
            etcd_key,
            hostname,
            install_disk,
            disk_selector,
            install_match,
            install_requested,
        })
    }

    /// Parses a config the way a node running `talos_version` decodes and validates
    /// it (1.14's documents, and their conflicts with old fields; see config_v114).
    pub(crate) fn parse_for(data: &[u8], talos_version: &str) -> Result<NodeConfig, ConfigError> {
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_slice(data) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        // Decoding (unknown kinds) and conflicts come before the v1alpha1 checks.
        super::config_v114::check(&docs, talos_version).map_err(ConfigError::Invalid)?;
        Self::parse(data)
    }

    /// The install disk: an UnattendedInstallConfig's CEL selector, else
    /// `machine.install.disk` / `diskSelector`.
    pub(crate) fn select_disk<'a>(
        &self,
        hw: &'a crate::hardware::Hardware,
    ) -> Result<&'a crate::hardware::DiskInfo, String> {
        match &self.install_match {
            Some(expr) => super::config_v114::select_disk(hw, expr),
            None => {
                hw.select_install_disk(self.install_disk.as_deref(), self.disk_selector.as_ref())
            }
        }
    }
}
