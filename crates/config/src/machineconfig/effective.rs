//! The effective cluster a config describes, field by field, whatever contract it is
//! written in: legacy v1alpha1 fields and their 1.14 documents read into the same
//! keys, with what Talos does implicitly for the legacy form (research B.4, the shims
//! in `types/v1alpha1/v1alpha1_k8s_bridge.go`@v1.14.0-rc.1). Two configs with equal
//! models make the same cluster; `migrate` and its tests compare them.

use std::collections::BTreeMap;

use base64::Engine;
use serde_yaml_ng::Value;

/// Model keys whose values differ between the legacy form and the 1.14 documents by
/// Talos's design (B.4), not by the migration.
pub const INTENDED_DIFFERENCES: &[(&str, &str)] = &[
    ("apiserver.authentication", "1.14 always passes --authentication-config; the generated one allows anonymous /livez, /readyz, /healthz (legacy: anonymous-auth=false)"),
    ("apiserver.authorizers", "1.14 injects no default authorizers; the generated Node and RBAC documents list them (legacy: injected)"),
    ("apiserver.startupProbes", "on by default with the 1.14 documents, off with the legacy fields"),
    ("serviceAccount.issuer", "1.14 sets issuerURL explicitly (legacy: the endpoint, implied)"),
];

pub type Model = BTreeMap<String, String>;

fn kind(d: &Value) -> Option<&str> {
    d.get("kind").and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.as_mapping()?.get(*p)?;
    }
    Some(cur)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn pem_of_b64(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|p| p.trim().to_string())
}

fn pem(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(|s| s.trim().to_string())
}

struct Builder {
    m: Model,
}

impl Builder {
    fn put(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.m.insert(k.into(), v.into());
    }

    fn put_opt(&mut self, k: &str, v: Option<&Value>) {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            self.put(k, text(v));
        }
    }

    /// Every entry of a map (args, labels, sysctls) under `prefix.`.
    fn put_map(&mut self, prefix: &str, v: Option<&Value>) {
        for (k, v) in v.and_then(Value::as_mapping).into_iter().flatten() {
            self.put(format!("{prefix}.{}", text(k)), text(v));
        }
    }

    fn put_list(&mut self, k: &str, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_sequence) {
            let items: Vec<String> = s.iter().map(text).collect();
            self.put(k, items.join(","));
        }
    }
}

/// The model of one node's config.
pub fn model(docs: &[Value]) -> Model {
    let mut b = Builder { m: Model::new() };
    let empty = Value::Null;
    let main = docs.iter().find(|d| kind(d).is_none()).unwrap_or(&empty);
    let doc = |k: &str| docs.iter().find(|d| kind(d) == Some(k));
    fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        docs.iter().filter(move |d| kind(d) == Some(k))
    }
    let docs_of = |k: &'static str| of_kind(docs, k);
    let m = |p: &[&str]| at(main, p);
    let cp = matches!(
        m(&["machine", "type"]).and_then(Value::as_str),
        Some("controlplane" | "init")
    );

    // Identity and machine.
    b.put_opt("machine.type", m(&["machine", "type"]));
    b.put_list("machine.certSANs", m(&["machine", "certSANs"]));
    b.put_opt("machine.ca.crt", m(&["machine", "ca", "crt"]));
    b.put_opt("cluster.token", m(&["cluster", "token"]));
    b.put_opt(
        "cluster.name",
        doc("KubeClusterConfig")
            .and_then(|d| d.get("clusterName"))
            .or(m(&["cluster", "clusterName"])),
    );
    b.put_opt(
        "cluster.endpoint",
        doc("KubeClusterConfig")
            .and_then(|d| d.get("endpoint"))
            .or(m(&["cluster", "controlPlane", "endpoint"])),
    );
    let net = doc("KubeNetworkConfig");
    for (k, legacy) in [
        ("dnsDomain", "dnsDomain"),
        ("podSubnets", "podSubnets"),
        ("serviceSubnets", "serviceSubnets"),
    ] {
        let v = net
            .and_then(|d| d.get(k))
            .or(m(&["cluster", "network", legacy]));
        if k == "dnsDomain" {
            b.put_opt("network.dnsDomain", v);
        } else {
            b.put_list(&format!("network.{k}"), v);
        }
    }
    let cni = if net.is_some() || doc("KubeFlannelCNIConfig").is_some() {
        if doc("KubeFlannelCNIConfig").is_some() {
            "flannel".to_string()
        } else {
            let urls: Vec<String> = docs_of("KubeExternalManifestConfig")
                .filter(|d| {
                    d.get("name")
                        .and_then(Value::as_str)
                        .map(|n| n.starts_with("custom-cni"))
                        .unwrap_or(false)
                })
                .filter_map(|d| d.get("url").map(text))
                .collect();
            if urls.is_empty() {
                "none".into()
            } else {
                format!("custom:{}", urls.join(","))
            }
        }
    } else {
        match m(&["cluster", "network", "cni", "name"]).and_then(Value::as_str) {
            None | Some("flannel") => "flannel".into(),
            Some("custom") => format!(
                "custom:{}",
                m(&["cluster", "network", "cni", "urls"])
                    .and_then(Value::as_sequence)
                    .map(|s| s.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            ),
            Some(other) => other.to_string(),
        }
    };
    if cp || net.is_some() || m(&["cluster", "network"]).is_some() {
        b.put("network.cni", cni);
    }

    // Certificates: the 1.14 documents hold PEM, v1alpha1 base64 PEM.
    let ca_doc = doc("KubeAPIServerCAConfig");
    let k8s_ca = ca_doc
        .and_then(|d| pem(at(d, &["issuingCA", "cert"])))
        .or_else(|| {
            ca_doc
                .and_then(|d| d.get("acceptedCAs"))
                .and_then(Value::as_sequence)
                .and_then(|s| pem(s.first()))
        })
        .or_else(|| pem_of_b64(m(&["cluster", "ca", "crt"])));
    if let Some(c) = k8s_ca {
        b.put("ca.kubernetes", c);
    }
    let agg = doc("KubeAggregatorCAConfig")
        .and_then(|d| pem(at(d, &["issuingCA", "cert"])))
        .or_else(|| pem_of_b64(m(&["cluster", "aggregatorCA", "crt"])));
    if let Some(c) = agg {
        b.put("ca.aggregator", c);
    }
    let sa = doc("KubeServiceAccountConfig")
        .and_then(|d| pem(at(d, &["issuer", "privateKey"])))
        .or_else(|| pem_of_b64(m(&["cluster", "serviceAccount", "key"])));
    if let Some(k) = sa {
        b.put("serviceAccount.key", k);
    }
    let enc = doc("KubeEtcdEncryptionConfig")
        .and_then(|d| at(d, &["config", "resources"]))
        .and_then(Value::as_sequence)
        .and_then(|r| r.first())
        .and_then(|r| r.get("providers"))
        .and_then(Value::as_sequence)
        .and_then(|p| p.iter().find_map(|p| at(p, &["secretbox", "keys"])))
        .and_then(Value::as_sequence)
        .and_then(|k| k.first())
        .and_then(|k| k.get("secret"))
        .cloned()
        .or(m(&["cluster", "secretboxEncryptionSecret"]).cloned());
    b.put_opt("etcd.encryption.secretbox", enc.as_ref());

    // Control plane components.
    if cp {
        let api = doc("KubeAPIServerConfig");
        let legacy_api = m(&["cluster", "apiServer"]);
        b.put_opt(
            "apiserver.image",
            api.and_then(|d| d.get("image"))
                .or(legacy_api.and_then(|a| a.get("image"))),
        );
        b.put_map(
            "apiserver.arg",
            api.and_then(|d| d.get("extraArgs"))
                .or(legacy_api.and_then(|a| a.get("extraArgs"))),
        );
        b.put_list(
            "apiserver.certSANs",
            api.and_then(|d| d.get("certExtraSANs"))
                .or(legacy_api.and_then(|a| a.get("certSANs"))),
        );
        let mut plugins: Vec<(String, String)> = docs_of("KubeAdmissionControlConfig")
            .map(|d| {
                (
                    d.get("name").map(text).unwrap_or_default(),
                    d.get("configuration").map(text).unwrap_or_default(),
                )
            })
            .collect();
        if api.is_none() {
            for p in legacy_api
                .and_then(|a| a.get("admissionControl"))
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                plugins.push((
                    p.get("name").map(text).unwrap_or_default(),
                    p.get("configuration").map(text).unwrap_or_default(),
                ));
            }
        }
        b.put(
            "apiserver.admission",
            serde_json::to_string(&plugins).unwrap_or_default(),
        );
        let audit = doc("KubeAuditPolicyConfig")
            .and_then(|d| d.get("configuration"))
            .or(if api.is_none() {
                legacy_api.and_then(|a| a.get("auditPolicy"))
            } else {
                None
            });
        b.put("apiserver.audit", audit.map(text).unwrap_or_default());
        if api.is_some() {
            b.put(
                "apiserver.authentication",
                doc("KubeAuthenticationConfig")
                    .and_then(|d| d.get("configuration"))
                    .map(text)
                    .unwrap_or_default(),
            );
            let authz: Vec<String> = docs_of("KubeAuthorizerConfig")
                .filter_map(|d| d.get("type").map(text))
                .collect();
            b.put("apiserver.authorizers", authz.join(","));
            b.put(
                "apiserver.startupProbes",
                api.and_then(|d| d.get("startupProbes"))
                    .map(text)
                    .unwrap_or_else(|| "true".into()),
            );
            b.put_opt(
                "serviceAccount.issuer",
                doc("KubeServiceAccountConfig").and_then(|d| at(d, &["issuer", "issuerURL"])),
            );
        } else {
            b.put("apiserver.authentication", "anonymous-auth=false");
            b.put("apiserver.authorizers", "Node,RBAC (injected)");
            b.put("apiserver.startupProbes", "false");
        }
        for (name, kind_name, legacy_key, disabled_path) in [
            (
                "controllerManager",
                "KubeControllerManagerConfig",
                "controllerManager",
                Some(&["machine", "controlPlane", "controllerManager", "disabled"][..]),
            ),
            (
                "scheduler",
                "KubeSchedulerConfig",
                "scheduler",
                Some(&["machine", "controlPlane", "scheduler", "disabled"][..]),
            ),
            ("proxy", "KubeProxyConfig", "proxy", None),
            ("coreDNS", "KubeCoreDNSConfig", "coreDNS", None),
        ] {
            let d = doc(kind_name);
            let legacy = m(&["cluster", legacy_key]);
            let enabled = match d {
                Some(d) => d.get("enabled").and_then(Value::as_bool).unwrap_or(true),
                None => {
                    let dis = match disabled_path {
                        Some(p) => m(p),
                        None => legacy.and_then(|l| l.get("disabled")),
                    };
                    !dis.and_then(Value::as_bool).unwrap_or(false)
                }
            };
            b.put(format!("{name}.enabled"), enabled.to_string());
            if !enabled {
                continue;
            }
            let src = d.or(legacy);
            b.put_opt(&format!("{name}.image"), src.and_then(|s| s.get("image")));
            b.put_map(&format!("{name}.arg"), src.and_then(|s| s.get("extraArgs")));
            b.put_opt(&format!("{name}.mode"), src.and_then(|s| s.get("mode")));
        }
        b.put_map("etcd.arg", m(&["cluster", "etcd", "extraArgs"]));
        b.put_list(
            "etcd.advertisedSubnets",
            m(&["cluster", "etcd", "advertisedSubnets"]),
        );
        b.put_list(
            "etcd.listenSubnets",
            m(&["cluster", "etcd", "listenSubnets"]),
        );
        b.put_opt("etcd.ca", m(&["cluster", "etcd", "ca", "crt"]));
    }

    // The node in Kubernetes: Talos adds the control-plane role label and, unless
    // scheduling is allowed, its NoSchedule taint to legacy control planes.
    let node = doc("KubeNodeConfig");
    let kubelet = m(&["machine", "kubelet"]);
    let (labels, taints) = match node {
        Some(n) => (n.get("labels").cloned(), n.get("taints").cloned()),
        None => {
            let mut labels = serde_yaml_ng::Mapping::new();
            let mut taints = serde_yaml_ng::Mapping::new();
            if cp {
                labels.insert("node-role.kubernetes.io/control-plane".into(), "".into());
                let allow = m(&["cluster", "allowSchedulingOnControlPlanes"])
                    .or(m(&["cluster", "allowSchedulingOnMasters"]))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if !allow {
                    taints.insert(
                        "node-role.kubernetes.io/control-plane".into(),
                        "NoSchedule".into(),
                    );
                }
            }
            for (k, v) in m(&["machine", "nodeLabels"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                labels.insert(k.clone(), v.clone());
            }
            for (k, v) in m(&["machine", "nodeTaints"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                taints.insert(k.clone(), v.clone());
            }
            (Some(Value::Mapping(labels)), Some(Value::Mapping(taints)))
        }
    };
    b.put_map("node.label", labels.as_ref());
    b.put_map("node.taint", taints.as_ref());
    b.put_map(
        "node.annotation",
        node.and_then(|n| n.get("annotations"))
            .or(m(&["machine", "nodeAnnotations"])),
    );
    b.put_list(
        "node.ip.validSubnets",
        node.and_then(|n| at(n, &["nodeIP", "validSubnets"]))
            .or(kubelet.and_then(|k| at(k, &["nodeIP", "validSubnets"]))),
    );
    let kd = doc("KubeletConfig");
    b.put_opt(
        "kubelet.image",
        kd.and_then(|d| d.get("image"))
            .or(kubelet.and_then(|k| k.get("image"))),
    );
    b.put_map(
        "kubelet.config",
        kd.and_then(|d| d.get("config"))
            .or(kubelet.and_then(|k| k.get("extraConfig"))),
    );
    b.put_map(
        "kubelet.arg",
        kd.and_then(|d| d.get("extraArgs"))
            .or(kubelet.and_then(|k| k.get("extraArgs"))),
    );
    b.put_opt(
        "kubelet.seccompDefault",
        kd.and_then(|d| d.get("defaultRuntimeSeccompProfileEnabled"))
            .or(kubelet.and_then(|k| k.get("defaultRuntimeSeccompProfileEnabled"))),
    );

    // Host: resolvers, time, sysctls, CRI customization, KubePrism, hostDNS.
    let res = doc("ResolverConfig");
    let ns: Option<Value> = res
        .and_then(|r| r.get("nameservers"))
        .and_then(Value::as_sequence)
        .map(|s| Value::Sequence(s.iter().filter_map(|n| n.get("address").cloned()).collect()));
    b.put_list(
        "resolver.nameservers",
        ns.as_ref().or(m(&["machine", "network", "nameservers"])),
    );
    b.put_opt(
        "resolver.disableSearchDomain",
        res.and_then(|r| at(r, &["searchDomains", "disableDefault"]))
            .or(m(&["machine", "network", "disableSearchDomain"])),
    );
    b.put_list(
        "resolver.searchDomains",
        res.and_then(|r| at(r, &["searchDomains", "domains"]))
            .or(m(&["machine", "network", "searchDomains"])),
    );
    let hostdns = res
        .and_then(|r| r.get("hostDNS"))
        .or(m(&["machine", "features", "hostDNS"]));
    b.put_map("hostDNS", hostdns);
    let prism = doc("KubePrismConfig").and_then(|d| d.get("port")).or(m(&[
        "machine",
        "features",
        "kubePrism",
        "port",
    ]));
    b.put_opt("kubePrism.port", prism);
    let time = doc("TimeSyncConfig");
    let time_enabled = match time {
        Some(t) => t.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        None => !m(&["machine", "time", "disabled"])
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    b.put("time.enabled", time_enabled.to_string());
    b.put_list(
        "time.servers",
        time.and_then(|t| at(t, &["ntp", "servers"]))
            .or(m(&["machine", "time", "servers"])),
    );
    let mut sysctls = Model::new();
    for (k, v) in m(&["machine", "sysctls"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        sysctls.insert(text(k), text(v));
    }
    for (k, v) in doc("SysctlConfig")
        .and_then(|d| d.get("params"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        sysctls.insert(text(k), text(v));
    }
    for (k, v) in sysctls {
        b.put(format!("sysctl.{k}"), v);
    }
    let mut cri: Vec<String> = Vec::new();
    for f in m(&["machine", "files"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if f.get("path").and_then(Value::as_str) == Some("/etc/cri/conf.d/20-customization.part") {
            cri.push(f.get("content").map(text).unwrap_or_default());
        }
    }
    for d in docs_of("CRICustomizationConfig") {
        cri.push(d.get("content").map(text).unwrap_or_default());
    }
    if !cri.is_empty() {
        b.put("cri.customization", cri.join("\n"));
    }
    // Install: the disk Talos picks, as the CEL it derives from a legacy selector.
    let ui = doc("UnattendedInstallConfig");
    b.put_opt(
        "install.image",
        ui.and_then(|d| at(d, &["installer", "image"]))
            .or(m(&["machine", "install", "image"])),
    );
    let disk = match ui {
        Some(d) => at(d, &["provisioning", "diskSelector", "match"]).map(text),
        None => match (
            m(&["machine", "install", "diskSelector"]),
            m(&["machine", "install", "disk"]),
        ) {
            (Some(sel), _) => serde_yaml_ng::from_value(sel.clone())
                .ok()
                .and_then(|sel| super::render::install::selector_match(&sel).ok()),
            (None, Some(d)) => Some(super::render::install::dev_path_match(&text(d))),
            (None, None) => None,
        },
    };
    if let Some(d) = disk {
        b.put("install.disk", d);
    }
    let hostname = doc("HostnameConfig");
    b.put_opt(
        "hostname",
        hostname
            .and_then(|h| h.get("hostname"))
            .or(m(&["machine", "network", "hostname"])),
    );
    b.put_opt(
        "discovery.identity",
        doc("DiscoveryIdentityConfig")
            .and_then(|d| d.get("clusterID"))
            .or(m(&["cluster", "id"])),
    );
    let discovery_on = doc("DiscoveryServiceConfig").is_some()
        || m(&["cluster", "discovery", "enabled"])
            .and_then(Value::as_bool)
            .unwrap_or(false);
    b.put("discovery.enabled", discovery_on.to_string());
    b.m
}

/// Keys whose values differ (`(key, left, right)`), intended differences left out.
pub fn differences(left: &Model, right: &Model) -> Vec<(String, String, String)> {
    let keys: std::collections::BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    keys.into_iter()
        .filter(|k| !INTENDED_DIFFERENCES.iter().any(|(i, _)| i == k))
        .filter(|k| left.get(*k) != right.get(*k))
        .map(|k| {
            (
                k.clone(),
                left.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
                right.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
            )
        })
        .collect()
}
