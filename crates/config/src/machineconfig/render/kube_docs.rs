//! Contract 1.14: what `talosctl gen config` renders at v1.14.0-rc.1 (the newest 1.14
//! tag; `pkg/machinery/config/generate/{init,worker,kubernetes,block,
//! security_profile,network}.go`, checked against
//! `types/v1alpha1/testdata/stability/v1.14/*.yaml`), with talhelper's fields
//! mapped onto the new documents (talhelper has no 1.14 mapping yet; the choices
//! are research C.10):
//! - a v1alpha1 document reduced to the machine identity, the cluster token and etcd;
//! - Kube* documents for everything the old `.cluster.*` / `.machine.kubelet` held,
//!   with certificates and keys as PEM text (not base64);
//! - UnattendedInstallConfig (install is opt-in from 1.14), discovery, resolver
//!   hostDNS, EPHEMERAL secure mount, trim, workload isolation, hostname.

use base64::Engine;
use serde_yaml_ng::{Mapping, Value};

use super::install::{dev_path_match, selector_match, unattended_install};
use super::{map, pair, s, seq, set};
use crate::machineconfig::secrets::SecretsBundle;
use crate::machineconfig::talconfig::{ClusterDefinition, ResolvedNode};

/// Base64 PEM (bundle and v1alpha1 form) → PEM text (Kube* documents).
fn pem(b64: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| b64.to_string())
}

pub(super) fn doc(kind: &str, fields: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    m.insert(s("apiVersion"), s("v1alpha1"));
    m.insert(s("kind"), s(kind));
    for (k, v) in fields {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn empty() -> Value {
    Value::Mapping(Mapping::new())
}

fn string_map(m: &std::collections::BTreeMap<String, String>) -> Mapping {
    m.iter().map(|(k, v)| (s(k), s(v))).collect()
}

/// The contract-1.14 documents for one node, in the generator's order.
/// `installer` is the node's installer image (talhelper's URL for it).
pub(super) fn base_documents(
    def: &ClusterDefinition,
    sec: &SecretsBundle,
    node: &ResolvedNode,
    installer: &str,
) -> Result<Vec<Value>, String> {
    let c = &def.config;
    let cp = node.is_control_plane();
    let k8s = c.kubernetes_version.trim_start_matches('v');
    // talhelper's templates read the v1alpha1 document (`.MachineConfig.…`), whose
    // fields 1.14 moves into other documents; talhelper has no 1.14 mapping to follow.
    let maps = [
        ("nodeLabels", &node.node.node_labels),
        ("nodeAnnotations", &node.node.node_annotations),
    ];
    for (field, map) in maps {
        if let Some((k, _)) = map.iter().find(|(_, v)| super::gotmpl::is_template(v)) {
            return Err(format!(
                "node {}: {field}.{k} is a template; templates in labels and annotations are rendered up to contract 1.13 only (their data, .MachineConfig, is the v1alpha1 document that 1.14 splits up): write the value out, or keep talosVersion at 1.13 until talhelper maps 1.14",
                node.hostname()
            ));
        }
    }

    let mut v1 = Value::Mapping(Mapping::new());
    set(&mut v1, &["version"], s("v1alpha1"));
    set(&mut v1, &["debug"], Value::Bool(false));
    set(&mut v1, &["persist"], Value::Bool(true));
    let role = if cp { "controlplane" } else { "worker" };
    set(&mut v1, &["machine", "type"], s(role));
    set(&mut v1, &["machine", "token"], s(&sec.trustdinfo.token));
    let os_key = if cp { sec.certs.os.key.as_str() } else { "" };
    set(&mut v1, &["machine", "ca"], pair(&sec.certs.os.crt, os_key));
    let mut sans: Vec<String> = c.additional_machine_cert_sans.clone();
    sans.extend(node.node.cert_sans.iter().cloned());
    set(&mut v1, &["machine", "certSANs"], seq(&sans));
    set(
        &mut v1,
        &["machine", "features", "diskQuotaSupport"],
        Value::Bool(true),
    );
    set(
        &mut v1,
        &["cluster", "token"],
        s(&sec.secrets.bootstraptoken),
    );
    if cp {
        set(
            &mut v1,
            &["cluster", "etcd", "ca"],
            pair(&sec.certs.etcd.crt, &sec.certs.etcd.key),
        );
    }

    let mut docs = vec![v1];
    docs.push(doc(
        "DiscoveryServiceConfig",
        vec![
            ("name", s("default")),
            ("endpoint", s("https://discovery.talos.dev/")),
        ],
    ));
    docs.push(doc(
        "DiscoveryIdentityConfig",
        vec![
            ("clusterID", s(&sec.cluster.id)),
            ("clusterSecret", s(&sec.cluster.secret)),
        ],
    ));
    // talhelper always passes an install disk option (installDisk or a selector).
    let disk_match = match (&node.node.install_disk_selector, &node.node.install_disk) {
        (Some(sel), _) => Some(selector_match(sel)?),
        (None, Some(disk)) => Some(dev_path_match(disk)),
        (None, None) => None,
    };
    if let Some(m) = disk_match {
        docs.push(unattended_install(installer, &m));
    }
    docs.push(doc(
        "ResolverConfig",
        vec![(
            "hostDNS",
            map(&[
                ("enabled", Value::Bool(true)),
                ("forwardKubeDNSToHost", Value::Bool(true)),
            ]),
        )],
    ));
    docs.push(doc(
        "VolumeConfig",
        vec![
            ("name", s("EPHEMERAL")),
            ("mount", map(&[("secure", Value::Bool(true))])),
        ],
    ));
    docs.push(doc(
        "FilesystemTrimConfig",
        vec![("interval", s("168h0m0s"))],
    ));
    docs.push(doc(
        "SecurityProfileConfig",
        vec![("workloadIsolation", Value::Bool(true))],
    ));
    docs.push(doc("HostnameConfig", vec![("auto", s("stable"))]));
    docs.extend(node_documents(def, sec, node, k8s));
    if cp {
        docs.extend(control_plane_documents(def, sec, k8s));
    }
    Ok(docs)
}

/// Documents every node carries.
fn node_documents(
    def: &ClusterDefinition,
    sec: &SecretsBundle,
    node: &ResolvedNode,
    k8s: &str,
) -> Vec<Value> {
    let c = &def.config;
    let cp = node.is_control_plane();
    let mut out = vec![doc(
        "KubeClusterConfig",
        vec![
            ("clusterName", s(&c.cluster_name)),
            ("endpoint", s(&c.endpoint)),
        ],
    )];
    let mut node_fields = vec![("nodeIP", empty())];
    let mut labels = Mapping::new();
    if cp {
        labels.insert(s("node-role.kubernetes.io/control-plane"), s(""));
        // talhelper replaces the generated labels when the node sets its own
        // (as at 1.12/1.13, render/v1alpha1.rs), so the same cluster results.
        if node.node.node_labels.is_empty() {
            labels.insert(
                s("node.kubernetes.io/exclude-from-external-load-balancers"),
                s(""),
            );
        }
    }
    labels.extend(string_map(&node.node.node_labels));
    if !labels.is_empty() {
        node_fields.push(("labels", Value::Mapping(labels)));
    }
    if !node.node.node_annotations.is_empty() {
        node_fields.push((
            "annotations",
            Value::Mapping(string_map(&node.node.node_annotations)),
        ));
    }
    let allow = c
        .allow_scheduling_on_control_planes
        .or(c.allow_scheduling_on_masters)
        .unwrap_or(false);
    let mut taints = Mapping::new();
    if cp && !allow {
        taints.insert(s("node-role.kubernetes.io/control-plane"), s("NoSchedule"));
    }
    taints.extend(string_map(&node.node.node_taints));
    if !taints.is_empty() {
        node_fields.push(("taints", Value::Mapping(taints)));
    }
    out.push(doc("KubeNodeConfig", node_fields));
    out.push(doc(
        "KubeletConfig",
        vec![
            ("image", s(&format!("ghcr.io/siderolabs/kubelet:v{k8s}"))),
            ("config", empty()),
            ("defaultRuntimeSeccompProfileEnabled", Value::Bool(true)),
        ],
    ));
    out.push(doc(
        "KubeNetworkConfig",
        vec![
            (
                "dnsDomain",
                s(c.domain.as_deref().unwrap_or("cluster.local")),
            ),
            ("podSubnets", seq(c.pod_nets())),
            ("serviceSubnets", seq(c.service_nets())),
        ],
    ));
    let ca = if cp {
        (
            "issuingCA",
            map(&[
                ("cert", s(&pem(&sec.certs.k8s.crt))),
                ("key", s(&pem(&sec.certs.k8s.key))),
            ]),
        )
    } else {
        ("acceptedCAs", seq([pem(&sec.certs.k8s.crt)]))
    };
    out.push(doc("KubeAPIServerCAConfig", vec![ca]));
    out.push(doc(
        "KubePrismConfig",
        vec![("port", Value::Number(7445.into()))],
    ));
    out
}

fn control_plane_documents(def: &ClusterDefinition, sec: &SecretsBundle, k8s: &str) -> Vec<Value> {
    let c = &def.config;
    let mut out = vec![doc(
        "KubeAggregatorCAConfig",
        vec![(
            "issuingCA",
            map(&[
                ("cert", s(&pem(&sec.certs.k8saggregator.crt))),
                ("key", s(&pem(&sec.certs.k8saggregator.key))),
            ]),
        )],
    )];
    let psa = super::v1alpha1::pod_security_plugin();
    let psa_cfg = psa.get("configuration").cloned().unwrap_or(Value::Null);
    out.push(doc(
        "KubeAdmissionControlConfig",
        vec![("name", s("PodSecurity")), ("configuration", psa_cfg)],
    ));
    out.push(doc(
        "KubeAuditPolicyConfig",
        vec![(
            "configuration",
            map(&[
                ("apiVersion", s("audit.k8s.io/v1")),
                ("kind", s("Policy")),
                (
                    "rules",
                    Value::Sequence(vec![map(&[("level", s("Metadata"))])]),
                ),
            ]),
        )],
    ));
    let probes = ["/livez", "/readyz", "/healthz"]
        .iter()
        .map(|p| map(&[("path", s(p))]))
        .collect();
    out.push(doc(
        "KubeAuthenticationConfig",
        vec![(
            "configuration",
            map(&[
                (
                    "anonymous",
                    map(&[
                        ("conditions", Value::Sequence(probes)),
                        ("enabled", Value::Bool(true)),
                    ]),
                ),
                ("jwt", Value::Sequence(vec![])),
            ]),
        )],
    ));
    for (name, ty) in [("node", "Node"), ("rbac", "RBAC")] {
        out.push(doc(
            "KubeAuthorizerConfig",
            vec![("name", s(name)), ("type", s(ty))],
        ));
    }
    let mut keys = Vec::new();
    if let Some(k) = &sec.secrets.secretboxencryptionsecret {
        keys.push(map(&[("name", s("key2")), ("secret", s(k))]));
    }
    // gen/kubernetes.go@rc.1 writes an aescbc secret as a second secretbox key named
    // key1, which the legacy apiserver template writes as aescbc; we keep aescbc so
    // old bundles keep decrypting their data.
    let mut providers = vec![];
    if !keys.is_empty() {
        providers.push(map(&[(
            "secretbox",
            map(&[("keys", Value::Sequence(keys))]),
        )]));
    }
    if let Some(k) = &sec.secrets.aescbcencryptionsecret {
        providers.push(map(&[(
            "aescbc",
            map(&[(
                "keys",
                Value::Sequence(vec![map(&[("name", s("key1")), ("secret", s(k))])]),
            )]),
        )]));
    }
    out.push(doc(
        "KubeEtcdEncryptionConfig",
        vec![(
            "config",
            map(&[(
                "resources",
                Value::Sequence(vec![map(&[
                    ("providers", Value::Sequence(providers)),
                    ("resources", seq(["secrets"])),
                ])]),
            )]),
        )],
    ));
    out.push(doc(
        "KubeServiceAccountConfig",
        vec![(
            "issuer",
            map(&[
                ("privateKey", s(&pem(&sec.certs.k8sserviceaccount.key))),
                ("issuerURL", s(&c.endpoint)),
            ]),
        )],
    ));
    let mut api = vec![(
        "image",
        s(&format!("registry.k8s.io/kube-apiserver:v{k8s}")),
    )];
    if !c.additional_api_server_cert_sans.is_empty() {
        api.push(("certExtraSANs", seq(&c.additional_api_server_cert_sans)));
    }
    out.push(doc("KubeAPIServerConfig", api));
    out.push(doc(
        "KubeControllerManagerConfig",
        vec![(
            "image",
            s(&format!("registry.k8s.io/kube-controller-manager:v{k8s}")),
        )],
    ));
    out.push(doc(
        "KubeSchedulerConfig",
        vec![
            (
                "image",
                s(&format!("registry.k8s.io/kube-scheduler:v{k8s}")),
            ),
            ("config", empty()),
        ],
    ));
    out.push(doc(
        "KubeProxyConfig",
        vec![
            ("image", s(&format!("registry.k8s.io/kube-proxy:v{k8s}"))),
            ("config", empty()),
        ],
    ));
    // talhelper's cniConfig: flannel (the default) → the flannel document; custom →
    // one external manifest per URL (instead of the deprecated extraManifests);
    // none → neither.
    let cni = c
        .cni_config
        .as_ref()
        .map(|x| x.name.as_str())
        .unwrap_or("flannel");
    if cni == "flannel" {
        out.push(doc(
            "KubeFlannelCNIConfig",
            vec![
                ("backendType", s("vxlan")),
                ("backendPort", Value::Number(4789.into())),
            ],
        ));
    }
    out.push(doc(
        "KubeCoreDNSConfig",
        vec![("enabled", Value::Bool(true))],
    ));
    if cni == "custom" {
        let urls = c
            .cni_config
            .as_ref()
            .map(|x| x.urls.clone())
            .unwrap_or_default();
        for (i, url) in urls.iter().enumerate() {
            let name = if i == 0 {
                "custom-cni".to_string()
            } else {
                format!("custom-cni-{i}")
            };
            out.push(doc(
                "KubeExternalManifestConfig",
                vec![("name", s(&name)), ("url", s(url))],
            ));
        }
    }
    out
}
