//! Cilium values Talos needs; each missing one is a warning with the reason.

use serde_json::Value;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    pub key: String,
    pub want: String,
    pub reason: String,
}

impl std::fmt::Display for LintWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cilium values: {} should be {} ({})",
            self.key, self.want, self.reason
        )
    }
}

const AGENT_CAPS: [&str; 13] = [
    "CHOWN",
    "KILL",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "SYS_ADMIN",
    "SYS_RESOURCE",
    "PERFMON",
    "BPF",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETGID",
    "SETUID",
];
const CLEAN_CAPS: [&str; 3] = ["NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"];

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(&format!("/{}", path.replace('.', "/")))
}

fn caps(v: &Value, path: &str) -> Option<Vec<String>> {
    at(v, path)?.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// Checks merged Cilium values against what Talos (with `proxy.disabled` and
/// KubePrism) needs.
pub fn lint_cilium(values: &Value) -> Vec<LintWarning> {
    let mut w = Vec::new();
    let mut need = |key: &str, want: &str, ok: bool, reason: &str| {
        if !ok {
            w.push(LintWarning {
                key: key.into(),
                want: want.into(),
                reason: reason.into(),
            });
        }
    };
    let kpr = at(values, "kubeProxyReplacement");
    need(
        "kubeProxyReplacement",
        "true",
        matches!(kpr, Some(Value::Bool(true))) || kpr.and_then(Value::as_str) == Some("true"),
        "Talos runs without kube-proxy (cluster.proxy.disabled: true); without the replacement Services do not work",
    );
    let host = at(values, "k8sServiceHost").and_then(Value::as_str);
    need(
        "k8sServiceHost",
        "127.0.0.1 (or localhost)",
        matches!(host, Some("127.0.0.1") | Some("localhost")),
        "before the CNI and without kube-proxy the kubernetes ClusterIP is dead; the agent must reach the API through KubePrism on the host",
    );
    let port = at(values, "k8sServicePort");
    need(
        "k8sServicePort",
        "7445",
        port.and_then(Value::as_i64) == Some(7445) || port.and_then(Value::as_str) == Some("7445"),
        "KubePrism listens on 7445 on every Talos node",
    );
    need(
        "cgroup.autoMount.enabled",
        "false",
        at(values, "cgroup.autoMount.enabled") == Some(&Value::Bool(false)),
        "Talos already mounts cgroup2; Cilium must not mount it again",
    );
    need(
        "cgroup.hostRoot",
        "/sys/fs/cgroup",
        at(values, "cgroup.hostRoot").and_then(Value::as_str) == Some("/sys/fs/cgroup"),
        "the host's cgroup2 mount on Talos",
    );
    let agent = caps(values, "securityContext.capabilities.ciliumAgent");
    need(
        "securityContext.capabilities.ciliumAgent",
        &AGENT_CAPS.join(","),
        agent.as_ref().is_some_and(|c| {
            AGENT_CAPS.iter().all(|x| c.iter().any(|y| y == x)) && !c.iter().any(|y| y == "SYS_MODULE")
        }),
        "the chart default includes SYS_MODULE, which Talos forbids to workloads; the agent needs the rest",
    );
    let clean = caps(values, "securityContext.capabilities.cleanCiliumState");
    need(
        "securityContext.capabilities.cleanCiliumState",
        &CLEAN_CAPS.join(","),
        clean.as_ref().is_some_and(|c| {
            CLEAN_CAPS.iter().all(|x| c.iter().any(|y| y == x))
                && !c.iter().any(|y| y == "SYS_MODULE")
        }),
        "the init container's default includes SYS_MODULE, which Talos forbids",
    );
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn talos_values_pass_and_chart_defaults_warn() {
        let good = json!({
            "kubeProxyReplacement": true, "k8sServiceHost": "127.0.0.1", "k8sServicePort": 7445,
            "cgroup": {"autoMount": {"enabled": false}, "hostRoot": "/sys/fs/cgroup"},
            "securityContext": {"capabilities": {
                "ciliumAgent": AGENT_CAPS, "cleanCiliumState": CLEAN_CAPS}},
        });
        assert_eq!(lint_cilium(&good), vec![]);
        let w = lint_cilium(&json!({}));
        assert_eq!(w.len(), 7);
        assert!(w[0].to_string().contains("kube-proxy"));
        let mut with_module = good.clone();
        with_module["securityContext"]["capabilities"]["ciliumAgent"] = json!(["SYS_MODULE"]);
        assert_eq!(
            lint_cilium(&with_module)[0].key,
            "securityContext.capabilities.ciliumAgent"
        );
    }
}
