//! The v1alpha1 document and the generator's extra documents, as `talosctl gen config`
//! renders them for a contract.

use serde_yaml_ng::{Mapping, Value};

use crate::machineconfig::gotmpl;

use super::{installer_image, map, pair, s, seq, set, talos_version, Contract};
use crate::machineconfig::secrets::SecretsBundle;
use crate::machineconfig::talconfig::{ClusterDefinition, ResolvedNode};

/// What `talosctl gen config` produces for this node's role and contract, with the
/// talconfig settings that talhelper passes as generate options.
pub(super) fn base_documents(
    def: &ClusterDefinition,
    sec: &SecretsBundle,
    node: &ResolvedNode,
    contract: Contract,
) -> Vec<Value> {
    let c = &def.config;
    let cp = node.is_control_plane();
    let k8s = c.kubernetes_version.trim_start_matches('v');
    let version = talos_version(def);
    let mut d = Value::Mapping(Mapping::new());
    set(&mut d, &["version"], s("v1alpha1"));
    set(&mut d, &["debug"], Value::Bool(false));
    set(&mut d, &["persist"], Value::Bool(true));
    set(
        &mut d,
        &["machine", "type"],
        s(if cp { "controlplane" } else { "worker" }),
    );
    set(&mut d, &["machine", "token"], s(&sec.trustdinfo.token));
    set(
        &mut d,
        &["machine", "ca"],
        pair(&sec.certs.os.crt, if cp { &sec.certs.os.key } else { "" }),
    );
    let mut sans: Vec<String> = c.additional_machine_cert_sans.clone();
    sans.extend(node.node.cert_sans.iter().cloned());
    set(&mut d, &["machine", "certSANs"], seq(&sans));
    set(
        &mut d,
        &["machine", "kubelet", "image"],
        s(&format!("ghcr.io/siderolabs/kubelet:v{k8s}")),
    );
    set(
        &mut d,
        &["machine", "kubelet", "defaultRuntimeSeccompProfileEnabled"],
        Value::Bool(true),
    );
    set(
        &mut d,
        &["machine", "kubelet", "disableManifestsDirectory"],
        Value::Bool(true),
    );
    if !contract.kubespan_multidoc_config() {
        // Up to 1.12 the generator still emits an empty legacy network block.
        set(
            &mut d,
            &["machine", "network"],
            Value::Mapping(Mapping::new()),
        );
    }
    if let Some(disk) = &node.node.install_disk {
        set(&mut d, &["machine", "install", "disk"], s(disk));
    }
    if let Some(sel) = &node.node.install_disk_selector {
        let mut m = Mapping::new();
        for (k, v) in sel.fields() {
            m.insert(s(k), s(v));
        }
        set(
            &mut d,
            &["machine", "install", "diskSelector"],
            Value::Mapping(m),
        );
    }
    set(
        &mut d,
        &["machine", "install", "image"],
        s(&installer_image(def, node, &version)),
    );
    set(&mut d, &["machine", "install", "wipe"], Value::Bool(false));
    if contract.grub_use_uki_cmdline_default() {
        set(
            &mut d,
            &["machine", "install", "grubUseUKICmdline"],
            Value::Bool(true),
        );
    }
    if !contract.hide_rbac_and_key_usage() {
        // Contracts up to 1.11 (gen/controlplane.go, gen/network.go@v1.13.9).
        for f in ["rbac", "stableHostname", "apidCheckExtKeyUsage"] {
            set(&mut d, &["machine", "features", f], Value::Bool(true));
        }
    }
    set(
        &mut d,
        &["machine", "features", "diskQuotaSupport"],
        Value::Bool(true),
    );
    set(
        &mut d,
        &["machine", "features", "kubePrism"],
        map(&[
            ("enabled", Value::Bool(true)),
            ("port", Value::Number(7445.into())),
        ]),
    );
    set(
        &mut d,
        &["machine", "features", "hostDNS"],
        map(&[
            ("enabled", Value::Bool(true)),
            ("forwardKubeDNSToHost", Value::Bool(true)),
        ]),
    );
    let mut labels = Mapping::new();
    if cp {
        labels.insert(
            s("node.kubernetes.io/exclude-from-external-load-balancers"),
            s(""),
        );
    }
    // talhelper replaces the generated labels and annotations with the node's
    // entries that are not templates (`applyNodeOverride`); templates come later.
    let plain = |m: &std::collections::BTreeMap<String, String>| -> Mapping {
        m.iter()
            .filter(|(_, v)| !gotmpl::is_template(v))
            .map(|(k, v)| (s(k), s(v)))
            .collect()
    };
    if !node.node.node_labels.is_empty() {
        labels = plain(&node.node.node_labels);
    }
    if !labels.is_empty() || !node.node.node_labels.is_empty() {
        set(&mut d, &["machine", "nodeLabels"], Value::Mapping(labels));
    }
    if !node.node.node_annotations.is_empty() {
        set(
            &mut d,
            &["machine", "nodeAnnotations"],
            Value::Mapping(plain(&node.node.node_annotations)),
        );
    }
    if !node.node.node_taints.is_empty() {
        let mm: Mapping = node
            .node
            .node_taints
            .iter()
            .map(|(k, v)| (s(k), s(v)))
            .collect();
        set(&mut d, &["machine", "nodeTaints"], Value::Mapping(mm));
    }

    set(&mut d, &["cluster", "id"], s(&sec.cluster.id));
    set(&mut d, &["cluster", "secret"], s(&sec.cluster.secret));
    set(
        &mut d,
        &["cluster", "controlPlane", "endpoint"],
        s(&c.endpoint),
    );
    set(&mut d, &["cluster", "clusterName"], s(&c.cluster_name));
    if let Some(cni) = &c.cni_config {
        let mut m = Mapping::new();
        m.insert(s("name"), s(&cni.name));
        if !cni.urls.is_empty() {
            m.insert(s("urls"), seq(&cni.urls));
        }
        if let Some(f) = &cni.flannel {
            m.insert(s("flannel"), f.clone());
        }
        set(&mut d, &["cluster", "network", "cni"], Value::Mapping(m));
    }
    set(
        &mut d,
        &["cluster", "network", "dnsDomain"],
        s(c.domain.as_deref().unwrap_or("cluster.local")),
    );
    let pods = c.pod_nets();
    let svcs = c.service_nets();
    set(&mut d, &["cluster", "network", "podSubnets"], seq(&pods));
    set(
        &mut d,
        &["cluster", "network", "serviceSubnets"],
        seq(&svcs),
    );
    set(
        &mut d,
        &["cluster", "token"],
        s(&sec.secrets.bootstraptoken),
    );
    if cp {
        if let Some(a) = &sec.secrets.secretboxencryptionsecret {
            set(&mut d, &["cluster", "secretboxEncryptionSecret"], s(a));
        }
    }
    // talhelper writes the bundle's AES-CBC secret on every node, workers too
    // (th:pkg/talos/nodeconfig.go@v3.1.16, GenerateNodeConfig).
    if let Some(a) = &sec.secrets.aescbcencryptionsecret {
        set(&mut d, &["cluster", "aescbcEncryptionSecret"], s(a));
    }
    set(
        &mut d,
        &["cluster", "ca"],
        pair(&sec.certs.k8s.crt, if cp { &sec.certs.k8s.key } else { "" }),
    );
    if cp {
        set(
            &mut d,
            &["cluster", "aggregatorCA"],
            pair(&sec.certs.k8saggregator.crt, &sec.certs.k8saggregator.key),
        );
        set(
            &mut d,
            &["cluster", "serviceAccount", "key"],
            s(&sec.certs.k8sserviceaccount.key),
        );
        set(
            &mut d,
            &["cluster", "apiServer", "image"],
            s(&format!("registry.k8s.io/kube-apiserver:v{k8s}")),
        );
        let mut api_sans = Vec::new();
        if contract.populate_cluster_sans_from_endpoint() {
            api_sans.push(crate::machineconfig::net::endpoint_host(&c.endpoint));
        }
        api_sans.extend(c.additional_api_server_cert_sans.iter().cloned());
        if !api_sans.is_empty() {
            set(
                &mut d,
                &["cluster", "apiServer", "certSANs"],
                seq(&api_sans),
            );
        }
        if !contract.hide_disable_psp() {
            set(
                &mut d,
                &["cluster", "apiServer", "disablePodSecurityPolicy"],
                Value::Bool(true),
            );
        }
        set(
            &mut d,
            &["cluster", "apiServer", "admissionControl"],
            Value::Sequence(vec![pod_security_plugin()]),
        );
        set(
            &mut d,
            &["cluster", "apiServer", "auditPolicy"],
            map(&[
                ("apiVersion", s("audit.k8s.io/v1")),
                ("kind", s("Policy")),
                (
                    "rules",
                    Value::Sequence(vec![map(&[("level", s("Metadata"))])]),
                ),
            ]),
        );
        set(
            &mut d,
            &["cluster", "controllerManager", "image"],
            s(&format!("registry.k8s.io/kube-controller-manager:v{k8s}")),
        );
        set(
            &mut d,
            &["cluster", "proxy", "image"],
            s(&format!("registry.k8s.io/kube-proxy:v{k8s}")),
        );
        set(
            &mut d,
            &["cluster", "scheduler", "image"],
            s(&format!("registry.k8s.io/kube-scheduler:v{k8s}")),
        );
    }
    set(
        &mut d,
        &["cluster", "discovery", "enabled"],
        Value::Bool(true),
    );
    set(
        &mut d,
        &["cluster", "discovery", "registries"],
        map(&[
            ("kubernetes", map(&[("disabled", Value::Bool(true))])),
            ("service", Value::Mapping(Mapping::new())),
        ]),
    );
    if cp {
        set(
            &mut d,
            &["cluster", "etcd", "ca"],
            pair(&sec.certs.etcd.crt, &sec.certs.etcd.key),
        );
        let allow = c
            .allow_scheduling_on_control_planes
            .or(c.allow_scheduling_on_masters)
            .unwrap_or(false);
        if allow {
            set(
                &mut d,
                &["cluster", "allowSchedulingOnControlPlanes"],
                Value::Bool(true),
            );
        }
    }
    if !contract.multidoc_network_config_supported() {
        // Up to 1.11: no HostnameConfig, the stable hostname is a legacy feature.
        return vec![d];
    }
    let hostname = map(&[
        ("apiVersion", s("v1alpha1")),
        ("kind", s("HostnameConfig")),
        ("auto", s("stable")),
    ]);
    vec![d, hostname]
}

pub(super) fn pod_security_plugin() -> Value {
    let defaults = map(&[
        ("audit", s("restricted")),
        ("audit-version", s("latest")),
        ("enforce", s("baseline")),
        ("enforce-version", s("latest")),
        ("warn", s("restricted")),
        ("warn-version", s("latest")),
    ]);
    let exemptions = map(&[
        ("namespaces", seq(["kube-system"])),
        ("runtimeClasses", Value::Sequence(vec![])),
        ("usernames", Value::Sequence(vec![])),
    ]);
    map(&[
        ("name", s("PodSecurity")),
        (
            "configuration",
            map(&[
                (
                    "apiVersion",
                    s("pod-security.admission.config.k8s.io/v1alpha1"),
                ),
                ("defaults", defaults),
                ("exemptions", exemptions),
                ("kind", s("PodSecurityConfiguration")),
            ]),
        ),
    ])
}
