//! Validation of a contract-1.14 config: the 1.14 JSON schema (deprecated v1alpha1
//! fields, which Talos still reads, are warnings: "passes the 1.14 schema" means
//! "fully migrated"), the old-field + new-document conflicts, and the checks Talos's
//! config container runs across documents (`container/validate.go`,
//! `types/k8s/apiserver.go`@v1.14.0-rc.1).

use serde_yaml_ng::Value;

use super::conflicts;
use super::error::{Finding, Severity};
use super::net::check_endpoint;
use super::schema;

/// Kinds Talos accepts only on control planes (their `ControlplaneOnlyDocument`).
pub const CONTROL_PLANE_ONLY: &[&str] = &[
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

/// kube-apiserver flags the KubeAPIServerConfig refuses, and what to use instead.
const DENIED_APISERVER_ARGS: &[(&str, &str)] = &[
    ("anonymous-auth", "use KubeAuthenticationConfig"),
    ("authentication-config", "use KubeAuthenticationConfig"),
    ("authorization-config", "use KubeAuthorizationConfig"),
    ("authorization-mode", "use KubeAuthorizationConfig"),
    ("authorization-webhook-", "use KubeAuthorizationConfig"),
    ("oidc-", "use KubeAuthenticationConfig"),
];

fn kind(d: &Value) -> Option<&str> {
    d.get("kind").and_then(Value::as_str)
}

fn has(docs: &[Value], k: &str) -> bool {
    docs.iter().any(|d| kind(d) == Some(k))
}

fn nonempty(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .map(|s| !s.is_empty())
        .unwrap_or(false)
}

/// Talos's cross-document errors for a 1.14 config, in its words.
pub fn container_errors(docs: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let main = docs.iter().find(|d| kind(d).is_none());
    let cluster = main.and_then(|m| m.get("cluster"));
    let machine_type = main
        .and_then(|m| m.get("machine"))
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let cp = machine_type == "controlplane" || machine_type == "init";

    let mut seen: Vec<(String, String)> = Vec::new();
    for d in docs {
        let Some(k) = kind(d) else { continue };
        let name = d
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let id = (k.to_string(), name);
        if seen.contains(&id) {
            out.push(format!("duplicate document: {}/{}", id.0, id.1));
        }
        seen.push(id);
    }

    if has(docs, "DiscoveryServiceConfig") {
        let ident = docs
            .iter()
            .find(|d| kind(d) == Some("DiscoveryIdentityConfig"));
        let id = nonempty(ident.and_then(|d| d.get("clusterID")))
            || nonempty(cluster.and_then(|c| c.get("id")));
        let secret = nonempty(ident.and_then(|d| d.get("clusterSecret")))
            || nonempty(cluster.and_then(|c| c.get("secret")));
        if !id {
            out.push("cluster ID (.cluster.id or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled".into());
        }
        if !secret {
            out.push("cluster secret (.cluster.secret or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled".into());
        }
    }

    if cp && has(docs, "KubeAPIServerCAConfig") {
        let legacy = nonempty(cluster.and_then(|c| c.get("secretboxEncryptionSecret")))
            || nonempty(cluster.and_then(|c| c.get("aescbcEncryptionSecret")));
        if !legacy && !has(docs, "KubeEtcdEncryptionConfig") {
            out.push(
                "etcd encryption config is required for control plane machines running kube-apiserver"
                    .into(),
            );
        }
    }

    if !cp {
        let mut wrong: Vec<&str> = docs
            .iter()
            .filter_map(kind)
            .filter(|k| CONTROL_PLANE_ONLY.contains(k))
            .collect();
        wrong.dedup();
        if !wrong.is_empty() {
            out.push(format!(
                "the following document kinds are only allowed on control plane machines: [{}]",
                wrong.join(" ")
            ));
        }
    }

    for d in docs
        .iter()
        .filter(|d| kind(d) == Some("KubeAPIServerConfig"))
    {
        let args: Vec<&str> = d
            .get("extraArgs")
            .and_then(Value::as_mapping)
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (prefix, instead) in DENIED_APISERVER_ARGS {
            for a in args.iter().filter(|a| a.starts_with(prefix)) {
                out.push(format!(
                    "kube-apiserver extra argument {a:?} is not allowed: {instead}"
                ));
            }
        }
    }
    out
}

/// Everything `validate` reports for one contract-1.14 config.
pub fn validate_config(subject: &str, docs: &[Value]) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut push = |severity, message: String| {
        f.push(Finding {
            severity,
            subject: subject.to_string(),
            message,
        })
    };
    if !docs.iter().any(|d| kind(d).is_none()) {
        push(Severity::Error, "no v1alpha1 document".into());
        return f;
    }
    for d in docs {
        let k = kind(d).unwrap_or("v1alpha1");
        let issues14 = schema::with_contract_1_14(|| schema::validate(d, false));
        // A v1alpha1 field 1.13's schema knows is deprecated, not unknown.
        let issues13 = if k == "v1alpha1" {
            schema::validate(d, false)
        } else {
            Vec::new()
        };
        for i in issues14 {
            if k == "v1alpha1" && !issues13.iter().any(|o| o.path == i.path) {
                push(
                    Severity::Warning,
                    format!(
                        "schema 1.14 ({k}): `{}` is deprecated under contract 1.14 (Talos still reads it; `migrate --to v1.14` moves it): {}",
                        i.path.join("."),
                        i.message
                    ),
                );
            } else {
                push(Severity::Error, format!("schema 1.14 ({k}): {}", i.message));
            }
        }
    }
    for c in conflicts::find(docs) {
        push(Severity::Error, c.to_string());
    }
    for e in container_errors(docs) {
        push(Severity::Error, e);
    }
    let cluster_doc = docs.iter().find(|d| kind(d) == Some("KubeClusterConfig"));
    let legacy_ep = docs
        .iter()
        .find(|d| kind(d).is_none())
        .and_then(|m| m.get("cluster"))
        .and_then(|c| c.get("controlPlane"))
        .and_then(|c| c.get("endpoint"));
    match cluster_doc
        .and_then(|d| d.get("endpoint"))
        .or(legacy_ep)
        .and_then(Value::as_str)
    {
        None => push(
            Severity::Error,
            "KubeClusterConfig.endpoint (or .cluster.controlPlane.endpoint) is required".into(),
        ),
        Some(ep) => {
            if let Err(m) = check_endpoint(ep) {
                push(Severity::Error, m)
            }
        }
    }
    f
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
    fn container_checks_use_talos_texts() {
        let w = y("machine:\n  type: worker\n---\nkind: KubeEtcdEncryptionConfig\n---\nkind: DiscoveryServiceConfig\n");
        let e = container_errors(&w);
        assert!(e.contains(&"the following document kinds are only allowed on control plane machines: [KubeEtcdEncryptionConfig]".to_string()), "{e:?}");
        assert!(e
            .iter()
            .any(|m| m.starts_with("cluster ID (.cluster.id or DiscoveryIdentityConfig)")));
        let cp = y("machine:\n  type: controlplane\n---\nkind: KubeAPIServerCAConfig\n---\nkind: KubeAPIServerConfig\nextraArgs:\n  oidc-issuer-url: x\n---\nkind: KubeAPIServerCAConfig\n");
        let e = container_errors(&cp);
        assert!(e.contains(
            &"etcd encryption config is required for control plane machines running kube-apiserver"
                .to_string()
        ));
        assert!(e.contains(&"kube-apiserver extra argument \"oidc-issuer-url\" is not allowed: use KubeAuthenticationConfig".to_string()));
        assert!(e.contains(&"duplicate document: KubeAPIServerCAConfig/".to_string()));
    }
}
