//! The "old field + its new document" rule of Talos ≥ 1.12 (table B.1 of the 1.14
//! research): each multi-document kind refuses a config whose v1alpha1 document
//! still sets the legacy field it replaces. The table is data: the legacy field,
//! how Talos tests it, the document kind, where the value belongs instead, and
//! Talos's own error text (each `V1Alpha1ConflictValidate` under
//! `pkg/machinery/config/types/`@v1.14.0-rc.1), so the tool and the lab refuse with
//! the same words a real node uses.

use serde_yaml_ng::Value;

use super::error::{locate_line, ConfigError};
use super::patch::{LoadedPatch, Patch};
use super::talconfig::PatchSource;

/// How Talos tests the legacy field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// The key is present, even empty (Go: a non-nil pointer).
    Present,
    /// A non-empty list, map or string.
    NonEmpty,
    /// A number other than 0.
    NonZero,
    /// A boolean `true`.
    True,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Dotted path in the v1alpha1 document.
    pub legacy: &'static str,
    pub test: Test,
    /// The document kind whose presence makes the legacy field an error.
    pub kind: &'static str,
    /// The field of the new document that must be set (when present) for the rule
    /// to fire (`ResolverConfig.hostDNS`, a VolumeConfig's `encryption`).
    pub when_doc_has: Option<&'static str>,
    /// Where the legacy value belongs under the new contract.
    pub belongs_in: &'static str,
    /// Talos's error, verbatim.
    pub talos: &'static str,
    /// Upstream source of the check.
    pub source: &'static str,
}

const fn r(
    legacy: &'static str,
    test: Test,
    kind: &'static str,
    belongs_in: &'static str,
    talos: &'static str,
    source: &'static str,
) -> Rule {
    Rule {
        legacy,
        test,
        kind,
        when_doc_has: None,
        belongs_in,
        talos,
        source,
    }
}

use Test::*;

/// Rules in the order Talos checks them within one document kind (first match wins
/// per document, as in upstream's early returns).
pub const RULES: &[Rule] = &[
    r("cluster.apiServer", Present, "KubeAPIServerConfig", "KubeAPIServerConfig (image, extraArgs, env, resources, certExtraSANs), KubeAdmissionControlConfig, KubeAuditPolicyConfig, KubeAuthorizerConfig",
      "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)", "k8s/apiserver.go"),
    r("cluster.controlPlane.localAPIServerPort", NonZero, "KubeAPIServerConfig", "KubeAPIServerConfig.apiPort",
      "kube-apiserver API port is already set in v1alpha1 config (.cluster.controlPlane.localAPIServerPort)", "k8s/apiserver.go"),
    r("cluster.apiServer.admissionControl", NonEmpty, "KubeAdmissionControlConfig", "KubeAdmissionControlConfig (one per plugin: name, configuration)",
      "admission control plugin config is already set in v1alpha1 config", "k8s/admission_control.go"),
    // Upstream's authorizer document checks the admission list too (k8s/authorization.go).
    r("cluster.apiServer.admissionControl", NonEmpty, "KubeAuthorizerConfig", "KubeAdmissionControlConfig (one per plugin: name, configuration)",
      "admission control plugin config is already set in v1alpha1 config", "k8s/authorization.go"),
    r("cluster.apiServer.auditPolicy", NonEmpty, "KubeAuditPolicyConfig", "KubeAuditPolicyConfig.configuration",
      "audit policy config is already set in v1alpha1 config", "k8s/audit_policy.go"),
    r("cluster.ca", Present, "KubeAPIServerCAConfig", "KubeAPIServerCAConfig.issuingCA (PEM, not base64)",
      "kube-apiserver CA is already set in v1alpha1 config (.cluster.ca)", "k8s/apiserver_ca.go"),
    r("cluster.aggregatorCA", Present, "KubeAggregatorCAConfig", "KubeAggregatorCAConfig.issuingCA (PEM, not base64)",
      "kube-apiserver aggregator CA is already set in v1alpha1 config (.cluster.aggregatorCA), please remove it and use the new KubeAggregatorCAConfig document instead", "k8s/aggregator_ca.go"),
    r("cluster.serviceAccount", Present, "KubeServiceAccountConfig", "KubeServiceAccountConfig.issuer",
      "service account is already set in v1alpha1 config (.cluster.serviceAccount)", "k8s/service_account.go"),
    r("cluster.secretboxEncryptionSecret", NonEmpty, "KubeEtcdEncryptionConfig", "KubeEtcdEncryptionConfig.config",
      "etcd encryption config is already set in v1alpha1 config", "k8s/etcd_encryption.go"),
    r("cluster.aescbcEncryptionSecret", NonEmpty, "KubeEtcdEncryptionConfig", "KubeEtcdEncryptionConfig.config",
      "etcd encryption config is already set in v1alpha1 config", "k8s/etcd_encryption.go"),
    r("cluster.controllerManager", Present, "KubeControllerManagerConfig", "KubeControllerManagerConfig (image, extraArgs, env, resources)",
      "kube-controller-manager config is already set in v1alpha1 config (.cluster.controllerManager)", "k8s/controller_manager.go"),
    r("machine.controlPlane.controllerManager", Present, "KubeControllerManagerConfig", "KubeControllerManagerConfig.enabled",
      "kube-controller-manager config is already set in v1alpha1 config (.machine.controlplane.controllerManager)", "k8s/controller_manager.go"),
    r("cluster.scheduler", Present, "KubeSchedulerConfig", "KubeSchedulerConfig (image, extraArgs, env, resources, config)",
      "kube-scheduler config is already set in v1alpha1 config (.cluster.scheduler)", "k8s/scheduler.go"),
    r("machine.controlPlane.scheduler", Present, "KubeSchedulerConfig", "KubeSchedulerConfig.enabled",
      "kube-scheduler config is already set in v1alpha1 config (.machine.controlplane.scheduler)", "k8s/scheduler.go"),
    r("cluster.proxy", Present, "KubeProxyConfig", "KubeProxyConfig (enabled, image, mode, extraArgs)",
      "cluster proxy config in v1alpha1 config (.machine.cluster.proxy) can't be used with KubeProxyConfig document, please remove it to avoid conflicts", "k8s/proxy.go"),
    r("cluster.coreDNS", Present, "KubeCoreDNSConfig", "KubeCoreDNSConfig (enabled, image)",
      "CoreDNS config is already set in v1alpha1 config (.cluster.coreDNS)", "k8s/coredns.go"),
    r("cluster.network", Present, "KubeNetworkConfig", "KubeNetworkConfig (dnsDomain, podSubnets, serviceSubnets)",
      "cluster network config is already set in the v1alpha1 config (.machine.cluster.network). Please remove it and use only the new KubeNetworkConfig document to avoid conflicts", "k8s/network.go"),
    r("cluster.network", Present, "KubeFlannelCNIConfig", "KubeNetworkConfig, and the CNI as KubeFlannelCNIConfig or KubeExternalManifestConfig",
      "cluster network config in v1alpha1 config (.machine.cluster.network) can't be used with KubeFlannelCNIConfig document, please remove it to avoid conflicts", "k8s/flannel.go"),
    r("cluster.clusterName", NonEmpty, "KubeClusterConfig", "KubeClusterConfig.clusterName",
      "cluster name is already set in the v1alpha1 config (.cluster.clusterName). Please remove it and use only the new KubeClusterConfig document to avoid conflicts", "k8s/cluster.go"),
    r("cluster.controlPlane.endpoint", Present, "KubeClusterConfig", "KubeClusterConfig.endpoint",
      "cluster endpoint is already set in the v1alpha1 config (.cluster.controlPlane.endpoint). Please remove it and use only the new KubeClusterConfig document to avoid conflicts", "k8s/cluster.go"),
    r("cluster.allowSchedulingOnControlPlanes", Present, "KubeNodeConfig", "KubeNodeConfig.taints (remove the control-plane NoSchedule taint)",
      ".cluster.allowSchedulingOnControlPlanes is already set in v1alpha1 config", "k8s/node.go"),
    r("cluster.allowSchedulingOnMasters", Present, "KubeNodeConfig", "KubeNodeConfig.taints (remove the control-plane NoSchedule taint)",
      ".cluster.allowSchedulingOnMasters is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.kubelet.skipNodeRegistration", Present, "KubeNodeConfig", "KubeNodeConfig.skipNodeRegistration",
      ".machine.kubelet.skipNodeRegistration is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.kubelet.registerWithFQDN", Present, "KubeNodeConfig", "KubeNodeConfig.registerWithFQDN",
      ".machine.kubelet.registerWithFQDN is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.kubelet.nodeIP", Present, "KubeNodeConfig", "KubeNodeConfig.nodeIP",
      ".machine.kubelet.nodeIP is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.nodeLabels", Present, "KubeNodeConfig", "KubeNodeConfig.labels",
      ".machine.nodeLabels is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.nodeAnnotations", Present, "KubeNodeConfig", "KubeNodeConfig.annotations",
      ".machine.nodeAnnotations is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.nodeTaints", Present, "KubeNodeConfig", "KubeNodeConfig.taints",
      ".machine.nodeTaints is already set in v1alpha1 config", "k8s/node.go"),
    r("machine.kubelet", Present, "KubeletConfig", "KubeletConfig (image, extraArgs, config, clusterDNS), KubeNodeConfig (nodeIP, registerWithFQDN, skipNodeRegistration)",
      "kubelet config is already set in v1alpha1 config (.machine.kubelet)", "k8s/kubelet.go"),
    r("machine.kubelet", Present, "KubeCredentialProviderConfig", "KubeletConfig and KubeCredentialProviderConfig",
      "cannot use KubeCredentialProviderConfig with legacy kubelet configuration (.machine.kubelet)", "k8s/credential_provider.go"),
    r("machine.features.kubePrism", Present, "KubePrismConfig", "KubePrismConfig.port",
      "KubePrism config in v1alpha1 config (.machine.features.kubePrism) can't be used with KubePrismConfig document, please remove it to avoid conflicts", "k8s/kubeprism.go"),
    r("machine.features.kubernetesTalosAPIAccess", Present, "KubeTalosAPIAccessConfig", "KubeTalosAPIAccessConfig",
      ".machine.features.kubernetesTalosAPIAccess is already set in v1alpha1 config", "k8s/talos_api_access.go"),
    r("machine.install", Present, "UnattendedInstallConfig", "UnattendedInstallConfig (installer.image, provisioning.diskSelector)",
      "UnattendedInstallConfig config is incompatible with v1alpha1 config (.machine.install)", "runtime/unattended_install.go"),
    r("cluster.discovery", Present, "DiscoveryServiceConfig", "DiscoveryServiceConfig.endpoint",
      "discovery service is already configured in .cluster.discovery of the v1alpha1 config", "cluster/discovery_service.go"),
    r("cluster.id", NonEmpty, "DiscoveryIdentityConfig", "DiscoveryIdentityConfig.clusterID",
      "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config", "cluster/discovery_identity.go"),
    r("cluster.secret", NonEmpty, "DiscoveryIdentityConfig", "DiscoveryIdentityConfig.clusterSecret",
      "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config", "cluster/discovery_identity.go"),
    r("machine.network.searchDomains", Present, "ResolverConfig", "ResolverConfig.searchDomains.domains",
      ".machine.network.searchDomains is already set in v1alpha1 config", "network/resolver.go"),
    r("machine.network.nameservers", Present, "ResolverConfig", "ResolverConfig.nameservers[].address",
      ".machine.network.nameservers is already set in v1alpha1 config", "network/resolver.go"),
    r("machine.network.disableSearchDomain", True, "ResolverConfig", "ResolverConfig.searchDomains.disableDefault",
      ".machine.network.disableSearchDomain is already set in v1alpha1 config", "network/resolver.go"),
    Rule { when_doc_has: Some("hostDNS"), ..r("machine.features.hostDNS", Present, "ResolverConfig", "ResolverConfig.hostDNS",
      ".machine.features.hostDNS is already set in v1alpha1 config", "network/resolver.go") },
    r("machine.network.hostname", NonEmpty, "HostnameConfig", "HostnameConfig.hostname",
      "static hostname is already set in v1alpha1 config", "network/hostname.go"),
    r("machine.features.stableHostname", True, "HostnameConfig", "HostnameConfig.auto: stable",
      "stable hostname is already set in v1alpha1 config", "network/hostname.go"),
    r("machine.time.disabled", True, "TimeSyncConfig", "TimeSyncConfig.enabled",
      "time sync cannot be disabled in both v1alpha1 and new-style configuration", "network/timesync.go"),
    r("machine.time.servers", NonEmpty, "TimeSyncConfig", "TimeSyncConfig.ntp.servers",
      "time servers cannot be specified in both v1alpha1 and new-style configuration", "network/timesync.go"),
    r("machine.time.bootTimeout", NonEmpty, "TimeSyncConfig", "TimeSyncConfig.bootTimeout",
      "boot timeout cannot be specified in both v1alpha1 and new-style configuration", "network/timesync.go"),
    r("machine.network.kubespan", Present, "KubeSpanConfig", "KubeSpanConfig",
      "kubespan is already configured in v1alpha1 machine.network.kubespan", "network/kubespan.go"),
    r("machine.baseRuntimeSpecOverrides", Present, "CRIBaseRuntimeSpecConfig", "CRIBaseRuntimeSpecConfig",
      "base runtime spec overrides are already set in v1alpha1 config", "cri/base_runtime_spec.go"),
    r("machine.features.imageCache", Present, "ImageCacheConfig", "ImageCacheConfig",
      "image cache config is already set in v1alpha1 config", "cri/image_cache.go"),
];

/// A legacy field set together with its new document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The legacy field (dotted path in the v1alpha1 document).
    pub legacy: String,
    /// The document kind present in the config.
    pub kind: String,
    /// Where the value belongs instead.
    pub belongs_in: String,
    /// Talos's error text.
    pub talos: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is set next to a {} document: it belongs in {}; Talos: \"{}\"",
            self.legacy, self.kind, self.belongs_in, self.talos
        )
    }
}

fn at<'a>(doc: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for k in dotted.split('.') {
        cur = cur.as_mapping()?.get(k)?;
    }
    Some(cur)
}

fn fires(v: Option<&Value>, test: Test) -> bool {
    let Some(v) = v else { return false };
    match test {
        // YAML `key:` with nothing is a nil pointer in Go: absent.
        Present => !v.is_null(),
        NonEmpty => match v {
            Value::Sequence(s) => !s.is_empty(),
            Value::Mapping(m) => !m.is_empty(),
            Value::String(s) => !s.is_empty(),
            Value::Null => false,
            _ => true,
        },
        NonZero => match v {
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty() && s != "0",
            _ => false,
        },
        True => v.as_bool() == Some(true) || v.as_str() == Some("true"),
    }
}

fn kind_of(d: &Value) -> Option<&str> {
    d.get("kind").and_then(Value::as_str)
}

/// Every conflict in a config (v1alpha1 document plus the others), one per
/// document kind at most (Talos returns the first failing check of each document).
pub fn find(docs: &[Value]) -> Vec<Conflict> {
    let Some(main) = docs.iter().find(|d| kind_of(d).is_none()) else {
        return Vec::new();
    };
    let mut out: Vec<Conflict> = Vec::new();
    for d in docs {
        let Some(kind) = kind_of(d) else { continue };
        for rule in RULES.iter().filter(|r| r.kind == kind) {
            if let Some(field) = rule.when_doc_has {
                if d.get(field).map(Value::is_null).unwrap_or(true) {
                    continue;
                }
            }
            if fires(at(main, rule.legacy), rule.test) {
                let c = Conflict {
                    legacy: rule.legacy.to_string(),
                    kind: kind.to_string(),
                    belongs_in: rule.belongs_in.to_string(),
                    talos: rule.talos.to_string(),
                };
                if !out.contains(&c) {
                    out.push(c);
                }
                break;
            }
        }
    }
    out
}

/// Where a conflict comes from: the patch that last wrote the legacy field (or, when
/// no patch did, the one that added the document), with the field as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: std::path::PathBuf,
    pub line: usize,
    /// The field the patch sets (the legacy path or a key below it).
    pub field: String,
}

fn first_child(v: &Value, base: &str) -> String {
    match v
        .as_mapping()
        .and_then(|m| m.keys().next())
        .and_then(Value::as_str)
    {
        Some(k) => format!("{base}.{k}"),
        None => base.to_string(),
    }
}

/// The patch (last one wins) that sets `c.legacy`, or else adds a `c.kind` document.
pub fn origin(patches: &[PatchSource], c: &Conflict) -> Option<Origin> {
    let segs: Vec<&str> = c.legacy.split('.').collect();
    let pointer = format!("/{}", segs.join("/"));
    let mut by_kind = None;
    for src in patches.iter().rev() {
        let Ok(lp) = LoadedPatch::load(src) else {
            continue;
        };
        let offset = |l: usize| if l == 0 { src.line } else { l + src.line - 1 };
        match &lp.patch {
            Patch::Strategic(docs) => {
                for d in docs {
                    if kind_of(d).is_none() {
                        if let Some(v) = at(d, &c.legacy) {
                            let field = first_child(v, &c.legacy);
                            let path: Vec<&str> = field.split('.').collect();
                            let line = offset(locate_line(&src.text, &path));
                            return Some(Origin {
                                file: src.file.clone(),
                                line,
                                field,
                            });
                        }
                    } else if kind_of(d) == Some(c.kind.as_str()) && by_kind.is_none() {
                        let line = offset(locate_line(&src.text, &["kind"]));
                        by_kind = Some(Origin {
                            file: src.file.clone(),
                            line,
                            field: c.legacy.clone(),
                        });
                    }
                }
            }
            Patch::Json6902(ops) => {
                for op in ops.iter().rev() {
                    let writes = op.op != "remove" && op.op != "test";
                    if writes && (op.path == pointer || op.path.starts_with(&format!("{pointer}/")))
                    {
                        let field = op.path.trim_start_matches('/').replace('/', ".");
                        return Some(Origin {
                            file: src.file.clone(),
                            line: op.line,
                            field,
                        });
                    }
                }
            }
        }
    }
    by_kind
}

/// Refuses a rendered config that sets an old field next to its new document, naming
/// the patch file and line, the field, the document it belongs in and Talos's text.
pub fn refuse(
    docs: &[Value],
    patches: &[PatchSource],
    fallback: (&std::path::Path, usize),
    contract: &str,
) -> Result<(), ConfigError> {
    let all = find(docs);
    let Some(c) = all.first() else {
        return Ok(());
    };
    let locate = |c: &Conflict| {
        origin(patches, c).unwrap_or(Origin {
            file: fallback.0.to_path_buf(),
            line: fallback.1,
            field: c.legacy.clone(),
        })
    };
    let o = locate(c);
    let mut message = format!(
        "{} belongs in {} under contract {contract} (a {} document is present); Talos: \"{}\"",
        o.field, c.belongs_in, c.kind, c.talos
    );
    let others: Vec<String> = all[1..]
        .iter()
        .map(|c| {
            let o = locate(c);
            format!(
                "{} ({}:{}) belongs in {}",
                o.field,
                o.file.display(),
                o.line,
                c.belongs_in
            )
        })
        .collect();
    if !others.is_empty() {
        message.push_str(&format!("; also: {}", others.join("; ")));
    }
    Err(ConfigError::input(
        &o.file,
        o.line,
        message,
        "move the field into the document (`migrate --to v1.14` rewrites talhelper patches), or delete one of the two",
    ))
}

/// Under a contract that moved the Kubernetes fields out of v1alpha1, an RFC 6902
/// operation on one of them has nothing to act on (the generated v1alpha1 document no
/// longer has the field, and adding it would conflict with its document): refused
/// with the operation's line and where the field lives now.
pub fn refuse_legacy_json_ops(patches: &[PatchSource], contract: &str) -> Result<(), ConfigError> {
    for src in patches {
        let Ok(lp) = LoadedPatch::load(src) else {
            continue;
        };
        let Patch::Json6902(ops) = &lp.patch else {
            continue;
        };
        for op in ops {
            let field = op.path.trim_start_matches('/').replace('/', ".");
            // The most specific row names the right document.
            let hit = RULES
                .iter()
                .filter(|r| field == r.legacy || field.starts_with(&format!("{}.", r.legacy)))
                .max_by_key(|r| r.legacy.len());
            if let Some(rule) = hit {
                return Err(ConfigError::input(
                    &src.file,
                    op.line,
                    format!(
                        "JSON patch `{} {}`: {field} is not part of the contract {contract} v1alpha1 document; it belongs in {} (Talos: \"{}\")",
                        op.op, op.path, rule.belongs_in, rule.talos
                    ),
                    "rewrite the patch against the document (`migrate --to v1.14` does it), e.g. `$patch: delete` of the document to remove it",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(s)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn conflict_table_matches_upstream() {
        // One case per row: the legacy field set (minimally, as the test demands)
        // next to its document fires exactly that row's text.
        for rule in RULES {
            let value = match rule.test {
                Present | NonEmpty => "[x]",
                NonZero => "5443",
                True => "true",
            };
            let mut path: Vec<&str> = rule.legacy.split('.').collect();
            let last = path.pop().unwrap();
            let mut text = String::from("version: v1alpha1\n");
            for (i, k) in path.iter().enumerate() {
                text.push_str(&format!("{}{k}:\n", "  ".repeat(i)));
            }
            text.push_str(&format!("{}{last}: {value}\n", "  ".repeat(path.len())));
            let extra = rule
                .when_doc_has
                .map(|f| format!("{f}: {{enabled: true}}\n"))
                .unwrap_or_default();
            text.push_str(&format!(
                "---\napiVersion: v1alpha1\nkind: {}\n{extra}",
                rule.kind
            ));
            let found = find(&y(&text));
            assert_eq!(found.len(), 1, "{}: {found:?}\n{text}", rule.legacy);
            assert_eq!(found[0].legacy, rule.legacy);
            assert_eq!(found[0].talos, rule.talos);
            // The document alone is fine.
            let alone = format!(
                "version: v1alpha1\n---\napiVersion: v1alpha1\nkind: {}\n{extra}",
                rule.kind
            );
            assert!(find(&y(&alone)).is_empty(), "{}", rule.kind);
        }
    }

    #[test]
    fn apiserver_args_next_to_document_conflict_with_talos_text() {
        let docs = y("cluster:\n  apiServer:\n    extraArgs:\n      a: b\n---\napiVersion: v1alpha1\nkind: KubeAPIServerConfig\n");
        let c = find(&docs);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].talos,
            "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)"
        );
        assert!(c[0].to_string().contains("belongs in KubeAPIServerConfig"));
    }

    #[test]
    fn zero_port_and_false_flags_do_not_conflict() {
        let docs = y("cluster:\n  controlPlane:\n    localAPIServerPort: 0\nmachine:\n  network:\n    disableSearchDomain: false\n---\nkind: KubeAPIServerConfig\n---\nkind: ResolverConfig\n");
        assert!(find(&docs).is_empty());
    }

    #[test]
    fn hostdns_conflicts_only_when_the_resolver_sets_it() {
        let base =
            "machine:\n  features:\n    hostDNS:\n      enabled: true\n---\nkind: ResolverConfig\n";
        assert!(find(&y(base)).is_empty());
        let with = format!("{base}hostDNS:\n  enabled: true\n");
        assert_eq!(find(&y(&with)).len(), 1);
    }
}
