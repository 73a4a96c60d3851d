//! Validation: what `talosctl validate --mode metal --strict` checks on each config,
//! cluster-level checks across nodes, and the upstream JSON schema.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml_ng::Value;

use super::error::{ConfigError, Finding, Severity};
pub use super::net::{check_endpoint, cidr_contains, endpoint_host, parse_cidr};
use super::render::RenderedConfig;
use super::schema;
use super::talconfig::ClusterDefinition;

fn overlaps(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    cidr_contains(a, b.0) || cidr_contains(b, a.0)
}

fn cidr_or_addr(s: &str) -> bool {
    let s = s.strip_prefix('!').unwrap_or(s);
    parse_cidr(s).is_some() || s.parse::<IpAddr>().is_ok()
}

fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    Some(cur)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

const PROTECTED_KUBELET_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "address",
    "authentication",
    "authorization",
    "cgroupDriver",
    "cgroupRoot",
    "kubeletCgroups",
    "port",
    "protectKernelDefaults",
    "resolvConf",
    "rotateCertificates",
    "staticPodPath",
    "systemCgroups",
    "systemReserved",
    "tlsCertFile",
    "tlsPrivateKeyFile",
];

/// The metal-mode checks on one node's documents (strict: what talhelper enforces).
pub fn validate_config(subject: &str, docs: &[Value]) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut f_warn: Vec<String> = Vec::new();
    let mut e = |m: String| {
        f.push(Finding {
            severity: Severity::Error,
            subject: subject.to_string(),
            message: m,
        })
    };
    let Some(main) = docs.iter().find(|d| d.get("kind").is_none()) else {
        e("no v1alpha1 document".into());
        return f;
    };
    for d in docs {
        for issue in schema::validate(d, false) {
            let kind = d.get("kind").and_then(Value::as_str).unwrap_or("v1alpha1");
            e(format!("schema ({kind}): {}", issue.message));
        }
    }
    if main.get("persist") == Some(&Value::Bool(false)) {
        e("persist: false is not supported".into());
    }
    if main.get("machine").is_none() {
        e("machine section is required".into());
    }
    if main.get("cluster").is_none() {
        e("cluster section is required".into());
    }
    match str_at(main, &["cluster", "controlPlane", "endpoint"]) {
        None => e("cluster.controlPlane.endpoint is required".into()),
        Some(ep) => {
            if let Err(m) = check_endpoint(ep) {
                e(m)
            }
        }
    }
    if let Some(dom) = str_at(main, &["cluster", "network", "dnsDomain"]) {
        if !valid_dns_name(dom) {
            e(format!(
                "cluster.network.dnsDomain `{dom}` is not a valid DNS name"
            ));
        }
    }
    if let Some(cni) = get(main, &["cluster", "network", "cni"]) {
        let name = cni.get("name").and_then(Value::as_str).unwrap_or("");
        if !["flannel", "custom", "none"].contains(&name) {
            e(format!("cni name `{name}` is not flannel, custom or none"));
        }
        if name != "custom"
            && cni
                .get("urls")
                .and_then(Value::as_sequence)
                .map(|s| !s.is_empty())
                .unwrap_or(false)
        {
            e("cni urls are only allowed with name: custom".into());
        }
        if name == "custom"
            && cni
                .get("urls")
                .and_then(Value::as_sequence)
                .map(|s| s.is_empty())
                .unwrap_or(true)
        {
            e("cni name: custom needs urls".into());
        }
    }
    match get(main, &["machine", "install"]) {
        None => e("machine.install is required in metal mode".into()),
        Some(inst) => {
            let disk = inst
                .get("disk")
                .and_then(Value::as_str)
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            let sel = inst
                .get("diskSelector")
                .and_then(Value::as_mapping)
                .map(|m| !m.is_empty())
                .unwrap_or(false);
            if !disk && !sel {
                e("machine.install needs disk or a diskSelector in metal mode".into());
            }
            let kargs = inst
                .get("extraKernelArgs")
                .and_then(Value::as_sequence)
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            if kargs && inst.get("grubUseUKICmdline") == Some(&Value::Bool(true)) {
                e(
                    "install.extraKernelArgs and grubUseUKICmdline: true cannot be used together"
                        .into(),
                );
            }
        }
    }
    let mtype = str_at(main, &["machine", "type"]).unwrap_or("");
    let has_key = |p: &[&str]| str_at(main, p).map(|s| !s.is_empty()).unwrap_or(false);
    match mtype {
        "controlplane" | "init" => {
            if !has_key(&["machine", "ca", "key"]) {
                e("controlplane needs machine.ca.key".into());
            }
            if get(main, &["cluster", "etcd", "ca"]).is_none() {
                e("controlplane needs cluster.etcd.ca".into());
            }
        }
        "worker" => {
            if has_key(&["machine", "ca", "key"]) {
                e("a worker must not carry machine.ca.key".into());
            }
            if has_key(&["cluster", "ca", "key"]) {
                e("a worker must not carry cluster.ca.key".into());
            }
            if get(main, &["cluster", "etcd"]).is_some() {
                e("a worker must not have an etcd section".into());
            }
            if get(main, &["machine", "features", "kubernetesTalosAPIAccess"]).is_some() {
                e("kubernetesTalosAPIAccess is only allowed on control planes".into());
            }
            // The legacy interfaces (contracts <= 1.11): Talos's own refusal
            // (v1alpha1_validation.go@v1.11.5, TypeWorker).
            let devices =
                get(main, &["machine", "network", "interfaces"]).and_then(Value::as_sequence);
            for d in devices.into_iter().flatten() {
                let vlan_vip = d
                    .get("vlans")
                    .and_then(Value::as_sequence)
                    .is_some_and(|v| v.iter().any(|x| x.get("vip").is_some()));
                if d.get("vip").is_some() || vlan_vip {
                    e("virtual (shared) IP is not allowed on non-controlplane nodes".into());
                }
            }
        }
        other => e(format!("unknown machine.type `{other}`")),
    }
    if get(main, &["machine", "ca"]).is_none() && get(main, &["machine", "acceptedCAs"]).is_none() {
        e("machine.ca or machine.acceptedCAs is required".into());
    }
    if get(main, &["cluster", "etcd", "subnet"]).is_some()
        && get(main, &["cluster", "etcd", "advertisedSubnets"]).is_some()
    {
        e("etcd subnet and advertisedSubnets cannot both be set".into());
    }
    for p in [
        &["cluster", "etcd", "advertisedSubnets"][..],
        &["cluster", "etcd", "listenSubnets"][..],
        &["machine", "kubelet", "nodeIP", "validSubnets"][..],
    ] {
        for s in strings_at(main, p) {
            if !cidr_or_addr(&s) {
                e(format!("{}: `{s}` is not a CIDR or address", p.join(".")));
            }
        }
    }
    if let Some(m) = get(main, &["machine", "kubelet", "extraConfig"]).and_then(Value::as_mapping) {
        for k in m.keys().filter_map(Value::as_str) {
            if PROTECTED_KUBELET_FIELDS.contains(&k) {
                e(format!(
                    "kubelet.extraConfig must not set `{k}` (Talos manages it)"
                ));
            }
        }
    }
    for (field, vals) in [
        ("nodeLabels", true),
        ("nodeAnnotations", false),
        ("nodeTaints", false),
    ] {
        if let Some(m) = get(main, &["machine", field]).and_then(Value::as_mapping) {
            for (k, v) in m {
                let k = k.as_str().unwrap_or("");
                if !label_key_ok(k) {
                    e(format!(
                        "machine.{field}: key `{k}` is not a valid label key"
                    ));
                }
                if vals && !label_value_ok(v.as_str().unwrap_or("")) {
                    e(format!(
                        "machine.{field}: value of `{k}` is not a valid label value"
                    ));
                }
            }
        }
    }
    let mut names = Vec::new();
    for m in get(main, &["cluster", "inlineManifests"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let n = m.get("name").and_then(Value::as_str).unwrap_or("");
        if n.is_empty() {
            e("inline manifest with an empty name".into());
        } else if names.contains(&n) {
            e(format!("inline manifest `{n}` is defined twice"));
        }
        names.push(n);
    }
    // Multi-document rules and conflicts with deprecated v1alpha1 fields.
    for d in docs.iter().filter(|d| d.get("kind").is_some()) {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
        match kind {
            "HostnameConfig" => {
                let auto = d.get("auto").and_then(Value::as_str);
                let host = d.get("hostname").and_then(Value::as_str);
                if auto == Some("off") && host.is_none() {
                    e("HostnameConfig: auto: off needs a hostname".into());
                }
                if auto.is_some() && auto != Some("off") && host.is_some() {
                    e(
                        "HostnameConfig: hostname cannot be combined with auto other than off"
                            .into(),
                    );
                }
                if get(main, &["machine", "network", "hostname"]).is_some() {
                    e("HostnameConfig conflicts with machine.network.hostname".into());
                }
                if get(main, &["machine", "features", "stableHostname"]) == Some(&Value::Bool(true))
                {
                    e("HostnameConfig conflicts with machine.features.stableHostname".into());
                }
            }
            "ResolverConfig" => {
                for k in ["nameservers", "searchDomains", "disableSearchDomain"] {
                    if get(main, &["machine", "network", k]).is_some() {
                        e(format!("ResolverConfig conflicts with machine.network.{k}"));
                    }
                }
            }
            "TimeSyncConfig" => {
                for k in ["disabled", "servers", "bootTimeout"] {
                    if get(main, &["machine", "time", k]).is_some() {
                        e(format!("TimeSyncConfig conflicts with machine.time.{k}"));
                    }
                }
            }
            "Layer2VIPConfig" => {
                let n = d.get("name").and_then(Value::as_str).unwrap_or("");
                if n.parse::<IpAddr>().is_err() {
                    e(format!("Layer2VIPConfig name `{n}` is not an IP address"));
                }
                if d.get("link")
                    .and_then(Value::as_str)
                    .map(str::is_empty)
                    .unwrap_or(true)
                {
                    e(format!("Layer2VIPConfig {n}: link is required"));
                }
                if mtype == "worker" {
                    // Talos refuses only the legacy v1alpha1 VIP on workers;
                    // Layer2VIPConfig has no machine-type check (network/layer2_vip.go@v1.13.9).
                    f_warn.push(format!("{n}: a VIP on a worker is accepted by Talos and talhelper, but the worker joins the VIP election only if it runs the API server; check the endpoint"));
                }
            }
            "LinkConfig" => {
                if d.get("name")
                    .and_then(Value::as_str)
                    .map(str::is_empty)
                    .unwrap_or(true)
                {
                    e("LinkConfig: name is required".into());
                }
                for a in d
                    .get("addresses")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let s = a.get("address").and_then(Value::as_str).unwrap_or("");
                    if parse_cidr(s).is_none() {
                        e(format!("LinkConfig: address `{s}` is not a prefix"));
                    }
                }
            }
            _ => {}
        }
    }
    f.extend(f_warn.into_iter().map(|m| Finding {
        severity: Severity::Warning,
        subject: subject.to_string(),
        message: m,
    }));
    f
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.map(valid_dns_name).unwrap_or(true) && label_value_ok(name) && !name.is_empty()
}

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// Checks across the whole cluster.
pub fn validate_cluster(def: &ClusterDefinition, rendered: &[RenderedConfig]) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut push = |sev, m: String| {
        f.push(Finding {
            severity: sev,
            subject: "cluster".into(),
            message: m,
        })
    };
    let cps = def.control_planes().count();
    if cps == 0 {
        push(
            Severity::Error,
            "no control-plane node (set controlPlane: true on at least one node)".into(),
        );
    } else if cps.is_multiple_of(2) {
        push(Severity::Warning, format!("{cps} control planes: an even count tolerates no more failures than {} and risks split votes; use an odd number", cps - 1));
    }
    let mut hostnames: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ips: BTreeMap<String, &str> = BTreeMap::new();
    for n in &def.nodes {
        *hostnames.entry(n.hostname()).or_default() += 1;
        for a in n.addresses() {
            if let Some(prev) = ips.insert(a.clone(), n.hostname()) {
                push(
                    Severity::Error,
                    format!("address {a} is used by both {prev} and {}", n.hostname()),
                );
            }
        }
    }
    for (h, c) in hostnames {
        if c > 1 {
            push(
                Severity::Error,
                format!("hostname {h} is used by {c} nodes"),
            );
        }
    }
    // Networks: pod, service and every node subnet must not overlap.
    let mut nets: Vec<(String, (IpAddr, u8))> = Vec::new();
    let c = &def.config;
    let pods = c.pod_nets();
    let svcs = c.service_nets();
    for (what, list) in [("pod", &pods), ("service", &svcs)] {
        for n in list.iter() {
            if let Some(p) = parse_cidr(n) {
                nets.push((format!("{what} network {n}"), p));
            }
        }
    }
    let mut node_nets: Vec<(String, (IpAddr, u8), String)> = Vec::new();
    for r in rendered {
        for d in &r.documents {
            if d.get("kind").and_then(Value::as_str) == Some("LinkConfig") {
                let link = d
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                for a in d
                    .get("addresses")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = a
                        .get("address")
                        .and_then(Value::as_str)
                        .and_then(parse_cidr)
                    {
                        node_nets.push((r.hostname.clone(), p, link.clone()));
                    }
                }
            }
        }
    }
    for (h, p, _) in &node_nets {
        if let Some(net) = nets.iter().find(|(_, n)| overlaps(*n, *p)) {
            push(
                Severity::Error,
                format!("{h}'s address {}/{} overlaps the {}", p.0, p.1, net.0),
            );
        }
    }
    for i in 0..nets.len() {
        for j in i + 1..nets.len() {
            if overlaps(nets[i].1, nets[j].1) {
                push(
                    Severity::Error,
                    format!("{} overlaps {}", nets[i].0, nets[j].0),
                );
            }
        }
    }
    for n in &def.nodes {
        for a in n.addresses() {
            if let Ok(ip) = a.parse::<IpAddr>() {
                if let Some(net) = nets.iter().find(|(_, x)| cidr_contains(*x, ip)) {
                    push(
                        Severity::Error,
                        format!("{}'s address {a} lies inside the {}", n.hostname(), net.0),
                    );
                }
            }
        }
    }
    // VIPs: inside the node's subnet on that link, never a node address.
    let node_ips: Vec<IpAddr> = def
        .nodes
        .iter()
        .flat_map(|n| n.addresses())
        .filter_map(|a| a.parse().ok())
        .collect();
    for r in rendered {
        for d in &r.documents {
            if d.get("kind").and_then(Value::as_str) != Some("Layer2VIPConfig") {
                continue;
            }
            let Some(vip) = d
                .get("name")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let link = d.get("link").and_then(Value::as_str).unwrap_or("");
            if node_ips.contains(&vip) {
                push(
                    Severity::Error,
                    format!("{}: VIP {vip} is also a node address", r.hostname),
                );
            }
            let subnets: Vec<_> = node_nets
                .iter()
                .filter(|(h, _, l)| *h == r.hostname && l == link)
                .collect();
            if !subnets.is_empty() && !subnets.iter().any(|(_, p, _)| cidr_contains(*p, vip)) {
                push(
                    Severity::Error,
                    format!(
                        "{}: VIP {vip} is outside the subnet of link {link}",
                        r.hostname
                    ),
                );
            }
        }
    }
    // The endpoint must be a name the API server certificate covers.
    let host = endpoint_host(&c.endpoint);
    let vips: Vec<String> = rendered
        .iter()
        .flat_map(|r| r.documents.iter())
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Layer2VIPConfig"))
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    // One control plane suffices: they all carry the same apiServer settings.
    if let Some(r) = rendered.iter().find(|r| r.control_plane) {
        let main = &r.documents[0];
        let sans = strings_at(main, &["cluster", "apiServer", "certSANs"]);
        let cp_ips: Vec<String> = def.control_planes().flat_map(|n| n.addresses()).collect();
        if !sans.contains(&host) && !cp_ips.contains(&host) && !vips.contains(&host) {
            push(Severity::Warning, format!("{}: endpoint host {host} is not in cluster.apiServer.certSANs; Talos ≥ 1.12 adds it at runtime, older nodes will not", r.hostname));
        }
        if host.parse::<IpAddr>().is_ok() && !cp_ips.contains(&host) && !vips.contains(&host) {
            // Neither Talos nor talhelper checks this: an external load balancer or a
            // kube-vip address is a valid endpoint.
            push(Severity::Warning, format!("{}: endpoint {host} is neither a control-plane address nor a VIP of this definition; fine for an external load balancer or kube-vip, otherwise nodes will not reach the API", r.hostname));
        }
    }
    f
}

/// Everything `validate` reports. Returns the warnings, or an error listing all findings
/// when any is an error.
pub fn validate_all(
    def: &ClusterDefinition,
    rendered: &[RenderedConfig],
) -> Result<Vec<Finding>, ConfigError> {
    let mut findings = def.warnings.clone();
    findings.extend(validate_cluster(def, rendered));
    let version = super::render::talos_version(def);
    let multidoc = super::render::Contract::parse(&version)
        .map(|c| c.multidoc_kubernetes())
        .unwrap_or(false);
    for r in rendered {
        findings.extend(if multidoc {
            super::validate_1_14::validate_config(&r.file_name, &r.documents)
        } else {
            validate_config(&r.file_name, &r.documents)
        });
    }
    // The Kubernetes version must be one this Talos release runs.
    if let (Ok(contract), Some((_, minor, _))) = (
        super::render::Contract::parse(&version),
        super::talconfig::parse_k8s_version(&def.config.kubernetes_version),
    ) {
        let (lo, hi) = contract.kubernetes_range();
        if minor < lo || minor > hi {
            findings.push(Finding { severity: Severity::Error, subject: "cluster".into(), message: format!("Kubernetes 1.{minor} is not supported by Talos {}.{} (supported: 1.{lo}–1.{hi})", contract.major, contract.minor) });
        }
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(ConfigError::Validation { findings });
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_talos_rules() {
        assert!(check_endpoint("https://10.127.0.40:6443").is_ok());
        assert!(check_endpoint("https://[fd00::1]:6443").is_ok());
        assert!(check_endpoint("http://x:6443").is_err());
        assert!(check_endpoint("https://:6443").is_err());
        assert!(check_endpoint("https://x:99999").is_err());
        assert!(check_endpoint("https://fd00::1:6443").is_err());
        assert_eq!(endpoint_host("https://[fd00::1]:6443"), "fd00::1");
    }

    #[test]
    fn cidr_math() {
        let n = parse_cidr("10.127.0.0/24").unwrap();
        assert!(cidr_contains(n, "10.127.0.40".parse().unwrap()));
        assert!(!cidr_contains(n, "10.127.1.40".parse().unwrap()));
        assert!(overlaps(
            parse_cidr("10.0.0.0/8").unwrap(),
            parse_cidr("10.42.0.0/16").unwrap()
        ));
        assert!(!overlaps(
            parse_cidr("10.42.0.0/16").unwrap(),
            parse_cidr("10.43.0.0/16").unwrap()
        ));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
