//! Renders one machine config per node: the documents `talosctl gen config` makes for
//! the version contract, talhelper's network documents, then the patches in
//! talhelper's order, canonical key order, and yaml.v3-style output with indent 2.

use serde_yaml_ng::{Mapping, Value};

pub use super::contract::{Contract, DEFAULT_TALOS_VERSION};
use super::error::ConfigError;
use super::patch;
use super::schema;
use super::secrets::SecretsBundle;
use super::talconfig::{ClusterDefinition, NetworkDevice, ResolvedNode};
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

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn set(root: &mut Value, path: &[&str], v: Value) {
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

fn seq<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Value {
    Value::Sequence(items.into_iter().map(|x| s(x.as_ref())).collect())
}

fn map(pairs: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

fn pair(crt: &str, key: &str) -> Value {
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
            "set talosVersion to a 1.12 or 1.13 release",
        )
    })?;
    let mut docs = base_documents(def, secrets, node, contract);
    let net = network_documents(node);
    // talhelper merges its own documents as one strategic patch before user patches.
    let talhelper_patch = patch::LoadedPatch {
        patch: patch::Patch::Strategic(net),
        file: def.source.clone(),
        line: node.line,
        text: String::new(),
    };
    talhelper_patch.apply(&mut docs)?;
    patch::apply_all(&mut docs, &node.patches)?;
    for d in docs.iter_mut() {
        fill_go_zero_values(d);
        schema::coerce(d);
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

fn installer_image(def: &ClusterDefinition, node: &ResolvedNode, version: &str) -> String {
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

/// What `talosctl gen config` produces for this node's role and contract, with the
/// talconfig settings that talhelper passes as generate options.
fn base_documents(
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
    if contract.minor == 12 {
        // Contract 1.12 still emits an empty legacy network block; 1.13 drops it.
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
    set(
        &mut d,
        &["machine", "install", "grubUseUKICmdline"],
        Value::Bool(true),
    );
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
    for (k, v) in &node.node.node_labels {
        labels.insert(s(k), s(v));
    }
    if !labels.is_empty() {
        set(&mut d, &["machine", "nodeLabels"], Value::Mapping(labels));
    }
    for (field, m) in [
        ("nodeAnnotations", &node.node.node_annotations),
        ("nodeTaints", &node.node.node_taints),
    ] {
        if !m.is_empty() {
            let mm: Mapping = m.iter().map(|(k, v)| (s(k), s(v))).collect();
            set(&mut d, &["machine", field], Value::Mapping(mm));
        }
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
        if let Some(a) = &sec.secrets.aescbcencryptionsecret {
            set(&mut d, &["cluster", "aescbcEncryptionSecret"], s(a));
        }
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
        if !c.additional_api_server_cert_sans.is_empty() {
            set(
                &mut d,
                &["cluster", "apiServer", "certSANs"],
                seq(&c.additional_api_server_cert_sans),
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
    let hostname = map(&[
        ("apiVersion", s("v1alpha1")),
        ("kind", s("HostnameConfig")),
        ("auto", s("stable")),
    ]);
    vec![d, hostname]
}

fn pod_security_plugin() -> Value {
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

fn doc(kind: &str, fields: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    m.insert(s("apiVersion"), s("v1alpha1"));
    m.insert(s("kind"), s(kind));
    for (k, v) in fields {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

fn cel_selector(sel: &super::talconfig::DeviceSelector) -> String {
    let mut terms = Vec::new();
    if let Some(v) = &sel.hardware_addr {
        terms.push(format!("glob(\"{v}\", mac(link.hardware_addr))"));
    }
    if let Some(v) = &sel.permanent_addr {
        terms.push(format!("glob(\"{v}\", mac(link.permanent_addr))"));
    }
    if let Some(v) = &sel.bus_path {
        terms.push(format!("glob(\"{v}\", link.bus_path)"));
    }
    if let Some(v) = &sel.driver {
        terms.push(format!("glob(\"{v}\", link.driver)"));
    }
    if let Some(v) = &sel.pci_id {
        terms.push(format!("glob(\"{v}\", link.pciid)"));
    }
    if sel.physical == Some(true) {
        terms.push("link.type == 1".into());
    }
    terms.join(" && ")
}

/// talhelper's documents for contract ≥ 1.12: resolver, hostname, link aliases,
/// DHCP, VIP, links (in that order).
pub fn network_documents(node: &ResolvedNode) -> Vec<Value> {
    let n = &node.node;
    let mut resolver = Vec::new();
    if !n.nameservers.is_empty() || n.disable_search_domain.is_some() {
        let mut fields = Vec::new();
        if !n.nameservers.is_empty() {
            let ns = n
                .nameservers
                .iter()
                .map(|a| map(&[("address", s(a))]))
                .collect();
            fields.push(("nameservers", Value::Sequence(ns)));
        }
        if let Some(dis) = n.disable_search_domain {
            fields.push((
                "searchDomains",
                map(&[("disableDefault", Value::Bool(dis))]),
            ));
        }
        resolver.push(doc("ResolverConfig", &fields));
    }
    let hostname = if n.ignore_hostname {
        doc("HostnameConfig", &[("auto", s("stable"))])
    } else {
        doc(
            "HostnameConfig",
            &[("auto", s("off")), ("hostname", s(&n.hostname))],
        )
    };
    let mut used: Vec<String> = n
        .network_interfaces
        .iter()
        .filter_map(|d| d.interface.clone())
        .collect();
    let mut aliases = Vec::new();
    let mut dhcp = Vec::new();
    let mut vips = Vec::new();
    let mut links = Vec::new();
    let mut counter = 0;
    for dev in &n.network_interfaces {
        if dev.ignore {
            continue;
        }
        let name = match (&dev.interface, &dev.device_selector) {
            (Some(i), _) => i.clone(),
            (None, Some(sel)) => {
                let mut name = format!("ethSel{counter}");
                while used.contains(&name) {
                    counter += 1;
                    name = format!("ethSel{counter}");
                }
                counter += 1;
                used.push(name.clone());
                aliases.push(doc(
                    "LinkAliasConfig",
                    &[
                        ("name", s(&name)),
                        ("selector", map(&[("match", s(&cel_selector(sel)))])),
                    ],
                ));
                name
            }
            (None, None) => continue,
        };
        link_documents(dev, &name, &mut dhcp, &mut vips, &mut links);
    }
    let mut out = resolver;
    out.push(hostname);
    out.extend(aliases);
    out.extend(dhcp);
    out.extend(vips);
    out.extend(links);
    out
}

fn link_documents(
    dev: &NetworkDevice,
    name: &str,
    dhcp: &mut Vec<Value>,
    vips: &mut Vec<Value>,
    links: &mut Vec<Value>,
) {
    if dev.dhcp == Some(true) {
        let opts = dev.dhcp_options.clone().unwrap_or_default();
        let mut fields = vec![("name", s(name))];
        if let Some(m) = opts.route_metric {
            fields.push(("routeMetric", Value::Number(m.into())));
        }
        if opts.ipv4.unwrap_or(true) {
            dhcp.push(doc("DHCPv4Config", &fields));
        }
        if opts.ipv6 == Some(true) {
            dhcp.push(doc("DHCPv6Config", &fields));
        }
    }
    if let Some(v) = &dev.vip {
        vips.push(doc(
            "Layer2VIPConfig",
            &[("name", s(&v.ip)), ("link", s(name))],
        ));
    }
    if dev.addresses.is_empty() && dev.routes.is_empty() && dev.mtu.is_none() {
        return;
    }
    let mut fields = vec![("name", s(name))];
    if let Some(m) = dev.mtu {
        fields.push(("mtu", Value::Number(m.into())));
    }
    if !dev.addresses.is_empty() {
        let addrs = dev
            .addresses
            .iter()
            .map(|a| {
                let a = if a.contains('/') {
                    a.clone()
                } else if a.contains(':') {
                    format!("{a}/128")
                } else {
                    format!("{a}/32")
                };
                map(&[("address", s(&a))])
            })
            .collect();
        fields.push(("addresses", Value::Sequence(addrs)));
    }
    if !dev.routes.is_empty() {
        let routes = dev
            .routes
            .iter()
            .map(|r| {
                let mut m = Mapping::new();
                if let Some(net) = &r.network {
                    if net != "0.0.0.0/0" && net != "::/0" {
                        m.insert(s("destination"), s(net));
                    }
                }
                if let Some(g) = &r.gateway {
                    m.insert(s("gateway"), s(g));
                }
                if let Some(src) = &r.source {
                    m.insert(s("source"), s(src));
                }
                if let Some(x) = r.metric {
                    m.insert(s("metric"), Value::Number(x.into()));
                }
                if let Some(x) = r.mtu {
                    m.insert(s("mtu"), Value::Number(x.into()));
                }
                Value::Mapping(m)
            })
            .collect();
        fields.push(("routes", Value::Sequence(routes)));
    }
    links.push(doc("LinkConfig", &fields));
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
