//! How a simulated node reads the Talos 1.14 config contract (siderolabs/talos
//! v1.14.0-rc.1, the newest 1.14 tag): the multi-document Kubernetes settings, the
//! opt-in `UnattendedInstallConfig` with its CEL disk selector, Talos's refusal of an
//! old v1alpha1 field next to the document that replaces it, and — on 1.12/1.13 nodes
//! — the decoder's refusal of kinds those releases do not know.
//!
//! The lab's own code (not the tool's), so a mistake in the tool's mapping shows up
//! as a refusal here.

use serde_yaml_ng::Value;

use crate::hardware::{DiskInfo, Hardware};

/// Kinds that first exist in Talos 1.14 (the 1.14 schema's kinds minus 1.13's).
const NEW_IN_1_14: &[&str] = &[
    "BGPInstanceConfig",
    "CRIBaseRuntimeSpecConfig",
    "CRICustomizationConfig",
    "ContainerConfig",
    "DiscoveryIdentityConfig",
    "DiscoveryServiceConfig",
    "EtcFileConfig",
    "FilesystemScrubConfig",
    "FilesystemTrimConfig",
    "HTTPProbeConfig",
    "ImageCacheConfig",
    "KernelModuleConfig",
    "KubeAPIServerCAConfig",
    "KubeAPIServerConfig",
    "KubeAdmissionControlConfig",
    "KubeAggregatorCAConfig",
    "KubeAuditPolicyConfig",
    "KubeAuthenticationConfig",
    "KubeAuthorizerConfig",
    "KubeClusterConfig",
    "KubeControllerManagerConfig",
    "KubeCoreDNSConfig",
    "KubeCredentialProviderConfig",
    "KubeEtcdEncryptionConfig",
    "KubeExternalManifestConfig",
    "KubeFlannelCNIConfig",
    "KubeInlineManifestConfig",
    "KubeNetworkConfig",
    "KubeNodeConfig",
    "KubePrismConfig",
    "KubeProxyConfig",
    "KubeSchedulerConfig",
    "KubeServiceAccountConfig",
    "KubeStaticPodConfig",
    "KubeTalosAPIAccessConfig",
    "KubeletConfig",
    "LVMLogicalVolumeConfig",
    "LVMVolumeGroupConfig",
    "RAIDArrayConfig",
    "SecurityProfileConfig",
    "SysctlConfig",
    "SysfsConfig",
    "UdevRulesConfig",
    "UnattendedInstallConfig",
    "VethConfig",
];

/// Kinds a worker may not carry (`ControlplaneOnlyDocument` in types/k8s).
const CONTROL_PLANE_ONLY: &[&str] = &[
    "KubeAdmissionControlConfig",
    "KubeAggregatorCAConfig",
    "KubeAPIServerConfig",
    "KubeAuditPolicyConfig",
    "KubeAuthenticationConfig",
    "KubeAuthorizerConfig",
    "KubeControllerManagerConfig",
    "KubeCoreDNSConfig",
    "KubeEtcdEncryptionConfig",
    "KubeFlannelCNIConfig",
    "KubeProxyConfig",
    "KubeSchedulerConfig",
    "KubeServiceAccountConfig",
    "KubeTalosAPIAccessConfig",
];

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.as_mapping()?.get(k)?;
    }
    Some(cur).filter(|v| !v.is_null())
}

fn set_bool(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(true)
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

/// The first conflict check of one document kind that fails, as Talos words it
/// (each kind's `V1Alpha1ConflictValidate`).
fn conflict(kind: &str, doc: &Value, v1: &Value) -> Option<&'static str> {
    let p = |path: &str| at(v1, path);
    let checks: Vec<(bool, &'static str)> = match kind {
        "KubeAPIServerConfig" => vec![
            (p("cluster.apiServer").is_some(), "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)"),
            (non_empty(p("cluster.controlPlane.localAPIServerPort")), "kube-apiserver API port is already set in v1alpha1 config (.cluster.controlPlane.localAPIServerPort)"),
        ],
        "KubeAdmissionControlConfig" | "KubeAuthorizerConfig" => vec![(
            non_empty(p("cluster.apiServer.admissionControl")),
            "admission control plugin config is already set in v1alpha1 config",
        )],
        "KubeAuditPolicyConfig" => vec![(non_empty(p("cluster.apiServer.auditPolicy")), "audit policy config is already set in v1alpha1 config")],
        "KubeAPIServerCAConfig" => vec![(p("cluster.ca").is_some(), "kube-apiserver CA is already set in v1alpha1 config (.cluster.ca)")],
        "KubeAggregatorCAConfig" => vec![(p("cluster.aggregatorCA").is_some(), "kube-apiserver aggregator CA is already set in v1alpha1 config (.cluster.aggregatorCA), please remove it and use the new KubeAggregatorCAConfig document instead")],
        "KubeServiceAccountConfig" => vec![(p("cluster.serviceAccount").is_some(), "service account is already set in v1alpha1 config (.cluster.serviceAccount)")],
        "KubeEtcdEncryptionConfig" => vec![(
            non_empty(p("cluster.secretboxEncryptionSecret")) || non_empty(p("cluster.aescbcEncryptionSecret")),
            "etcd encryption config is already set in v1alpha1 config",
        )],
        "KubeControllerManagerConfig" => vec![
            (p("cluster.controllerManager").is_some(), "kube-controller-manager config is already set in v1alpha1 config (.cluster.controllerManager)"),
            (p("machine.controlPlane.controllerManager").is_some(), "kube-controller-manager config is already set in v1alpha1 config (.machine.controlplane.controllerManager)"),
        ],
        "KubeSchedulerConfig" => vec![
            (p("cluster.scheduler").is_some(), "kube-scheduler config is already set in v1alpha1 config (.cluster.scheduler)"),
            (p("machine.controlPlane.scheduler").is_some(), "kube-scheduler config is already set in v1alpha1 config (.machine.controlplane.scheduler)"),
        ],
        "KubeProxyConfig" => vec![(p("cluster.proxy").is_some(), "cluster proxy config in v1alpha1 config (.machine.cluster.proxy) can't be used with KubeProxyConfig document, please remove it to avoid conflicts")],
        "KubeCoreDNSConfig" => vec![(p("cluster.coreDNS").is_some(), "CoreDNS config is already set in v1alpha1 config (.cluster.coreDNS)")],
        "KubeNetworkConfig" => vec![(p("cluster.network").is_some(), "cluster network config is already set in the v1alpha1 config (.machine.cluster.network). Please remove it and use only the new KubeNetworkConfig document to avoid conflicts")],
        "KubeFlannelCNIConfig" => vec![(p("cluster.network").is_some(), "cluster network config in v1alpha1 config (.machine.cluster.network) can't be used with KubeFlannelCNIConfig document, please remove it to avoid conflicts")],
        "KubeClusterConfig" => vec![
            (non_empty(p("cluster.clusterName")), "cluster name is already set in the v1alpha1 config (.cluster.clusterName). Please remove it and use only the new KubeClusterConfig document to avoid conflicts"),
            (p("cluster.controlPlane.endpoint").is_some(), "cluster endpoint is already set in the v1alpha1 config (.cluster.controlPlane.endpoint). Please remove it and use only the new KubeClusterConfig document to avoid conflicts"),
        ],
        "KubeNodeConfig" => vec![
            (p("cluster.allowSchedulingOnControlPlanes").is_some(), ".cluster.allowSchedulingOnControlPlanes is already set in v1alpha1 config"),
            (p("cluster.allowSchedulingOnMasters").is_some(), ".cluster.allowSchedulingOnMasters is already set in v1alpha1 config"),
            (p("machine.kubelet.skipNodeRegistration").is_some(), ".machine.kubelet.skipNodeRegistration is already set in v1alpha1 config"),
            (p("machine.kubelet.registerWithFQDN").is_some(), ".machine.kubelet.registerWithFQDN is already set in v1alpha1 config"),
            (p("machine.kubelet.nodeIP").is_some(), ".machine.kubelet.nodeIP is already set in v1alpha1 config"),
            (p("machine.nodeLabels").is_some(), ".machine.nodeLabels is already set in v1alpha1 config"),
            (p("machine.nodeAnnotations").is_some(), ".machine.nodeAnnotations is already set in v1alpha1 config"),
            (p("machine.nodeTaints").is_some(), ".machine.nodeTaints is already set in v1alpha1 config"),
        ],
        "KubeletConfig" => vec![(p("machine.kubelet").is_some(), "kubelet config is already set in v1alpha1 config (.machine.kubelet)")],
        "KubePrismConfig" => vec![(p("machine.features.kubePrism").is_some(), "KubePrism config in v1alpha1 config (.machine.features.kubePrism) can't be used with KubePrismConfig document, please remove it to avoid conflicts")],
        "UnattendedInstallConfig" => vec![(p("machine.install").is_some(), "UnattendedInstallConfig config is incompatible with v1alpha1 config (.machine.install)")],
        "DiscoveryServiceConfig" => vec![(p("cluster.discovery").is_some(), "discovery service is already configured in .cluster.discovery of the v1alpha1 config")],
        "DiscoveryIdentityConfig" => vec![(
            non_empty(p("cluster.id")) || non_empty(p("cluster.secret")),
            "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config",
        )],
        "ResolverConfig" => vec![
            (p("machine.network.searchDomains").is_some(), ".machine.network.searchDomains is already set in v1alpha1 config"),
            (p("machine.network.nameservers").is_some(), ".machine.network.nameservers is already set in v1alpha1 config"),
            (set_bool(p("machine.network.disableSearchDomain")), ".machine.network.disableSearchDomain is already set in v1alpha1 config"),
            (at(doc, "hostDNS").is_some() && p("machine.features.hostDNS").is_some(), ".machine.features.hostDNS is already set in v1alpha1 config"),
        ],
        "TimeSyncConfig" => vec![
            (set_bool(p("machine.time.disabled")), "time sync cannot be disabled in both v1alpha1 and new-style configuration"),
            (non_empty(p("machine.time.servers")), "time servers cannot be specified in both v1alpha1 and new-style configuration"),
            (non_empty(p("machine.time.bootTimeout")), "boot timeout cannot be specified in both v1alpha1 and new-style configuration"),
        ],
        _ => Vec::new(),
    };
    checks.into_iter().find(|(hit, _)| *hit).map(|(_, m)| m)
}

/// The minor of a Talos version (`v1.14.0` → 14).
pub(crate) fn minor_of(talos_version: &str) -> u32 {
    talos_version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(13)
}

/// What a node running `talos_version` says about the documents of a config, in
/// Talos's words (a multierror of every failing document), or Ok.
pub(crate) fn check(docs: &[Value], talos_version: &str) -> Result<(), String> {
    let minor = minor_of(talos_version);
    let kind = |d: &Value| d.get("kind").and_then(Value::as_str).map(str::to_string);
    if minor < 14 {
        // The decoder meets an unregistered kind before any validation.
        for (i, d) in docs.iter().enumerate() {
            if let Some(k) = kind(d).filter(|k| NEW_IN_1_14.contains(&k.as_str())) {
                let name = d.get("name").and_then(Value::as_str).unwrap_or("");
                return Err(format!(
                    "error decoding document v1alpha1/{k}/{name} (document {}): {k:?} \"v1alpha1\": not registered",
                    i + 1
                ));
            }
        }
        return Ok(());
    }
    let Some(v1) = docs.iter().find(|d| kind(d).is_none()) else {
        return Ok(());
    };
    let mut errs: Vec<String> = docs
        .iter()
        .filter_map(|d| kind(d).and_then(|k| conflict(&k, d, v1)))
        .map(str::to_string)
        .collect();
    let worker = at(v1, "machine.type").and_then(Value::as_str) == Some("worker");
    if worker {
        let mut wrong: Vec<String> = docs
            .iter()
            .filter_map(kind)
            .filter(|k| CONTROL_PLANE_ONLY.contains(&k.as_str()))
            .collect();
        wrong.dedup();
        if !wrong.is_empty() {
            errs.push(format!(
                "the following document kinds are only allowed on control plane machines: [{}]",
                wrong.join(" ")
            ));
        }
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(format!("1 error occurred:\n\t* {}\n\n", errs[0])),
        n => Err(format!(
            "{n} errors occurred:\n{}\n",
            errs.iter()
                .map(|e| format!("\t* {e}\n"))
                .collect::<String>()
        )),
    }
}

/// Evaluates the CEL subset the install disk selector uses (terms joined by `&&`:
/// `glob("p", disk.f)`, `disk.f == "v"`, `disk.f != "v"`, `disk.size <op> Nu`,
/// `disk.rotational`, `!disk.f`).
pub(crate) fn disk_matches(expr: &str, d: &DiskInfo) -> Result<bool, String> {
    let field = |name: &str| -> Option<String> {
        Some(match name {
            "dev_path" => d.dev_path(),
            "serial" => d.serial.clone(),
            "model" => d.model.clone(),
            "wwid" => d.wwid.clone(),
            "transport" => d.transport.clone(),
            "size" => d.size.to_string(),
            "rotational" => d.rotational.to_string(),
            "readonly" | "cdrom" => "false".into(),
            "uuid" | "modalias" | "bus_path" => String::new(),
            _ => return None,
        })
    };
    let unquote = |s: &str| s.trim().trim_matches('"').replace("\\\"", "\"");
    for term in expr.split("&&").map(str::trim) {
        let ok = if let Some(rest) = term.strip_prefix("glob(").and_then(|r| r.strip_suffix(')')) {
            let (pat, f) = rest
                .rsplit_once(',')
                .ok_or(format!("bad glob term {term:?}"))?;
            let f = f
                .trim()
                .strip_prefix("disk.")
                .ok_or(format!("bad glob term {term:?}"))?;
            crate::hardware::glob(
                &unquote(pat),
                &field(f).ok_or(format!("unknown field {f}"))?,
            )
        } else if let Some(f) = term.strip_prefix("!disk.") {
            field(f).ok_or(format!("unknown field {f}"))? == "false"
        } else if let Some(rest) = term.strip_prefix("disk.") {
            let mut parts = rest.splitn(3, ' ');
            let (f, op, val) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let actual = field(f).ok_or(format!("unknown field {f}"))?;
            match (op, val) {
                (None, _) => actual == "true",
                (Some(op), Some(val)) if f == "size" => {
                    let want: u64 = val
                        .trim_end_matches('u')
                        .parse()
                        .map_err(|_| format!("bad size {val}"))?;
                    let have = d.size;
                    match op {
                        "==" => have == want,
                        "<=" => have <= want,
                        ">=" => have >= want,
                        "<" => have < want,
                        ">" => have > want,
                        _ => return Err(format!("bad operator {op}")),
                    }
                }
                (Some("=="), Some(val)) => actual == unquote(val),
                (Some("!="), Some(val)) => actual != unquote(val),
                _ => return Err(format!("unsupported term {term:?}")),
            }
        } else {
            return Err(format!("unsupported term {term:?}"));
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The disk an UnattendedInstallConfig's selector picks.
pub(crate) fn select_disk<'a>(hw: &'a Hardware, expr: &str) -> Result<&'a DiskInfo, String> {
    for d in &hw.disks {
        if disk_matches(expr, d)? {
            return Ok(d);
        }
    }
    Err("no disks matched the expression".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(s: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(s)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn old_field_next_to_document_is_refused_with_talos_text() {
        let d = docs("version: v1alpha1\nmachine:\n  type: controlplane\ncluster:\n  apiServer:\n    extraArgs:\n      a: b\n---\napiVersion: v1alpha1\nkind: KubeAPIServerConfig\nimage: x\n");
        assert_eq!(
            check(&d, "v1.14.0").unwrap_err(),
            "1 error occurred:\n\t* kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)\n\n"
        );
        // 1.13 does not know the document at all.
        assert!(check(&d, "v1.13.9")
            .unwrap_err()
            .contains("\"KubeAPIServerConfig\" \"v1alpha1\": not registered"));
    }

    #[test]
    fn cel_selector_picks_the_disk() {
        let hw = Hardware::default_for(0);
        let serial = hw.disks[1].serial.clone();
        let expr = format!("glob(\"{serial}\", disk.serial) && disk.transport != \"\" && !disk.readonly &&\n!disk.cdrom");
        assert_eq!(select_disk(&hw, &expr).unwrap().serial, serial);
        let path = format!("disk.dev_path == \"{}\"", hw.disks[0].dev_path());
        assert_eq!(
            select_disk(&hw, &path).unwrap().dev_name,
            hw.disks[0].dev_name
        );
        assert!(select_disk(&hw, "glob(\"nope\", disk.serial)").is_err());
    }
}
