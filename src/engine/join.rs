//! What lets a worker join, checked on the rendered configs before any node is
//! touched: a Talos worker gets its apid certificate from trustd on the control
//! planes, which compares the worker's `machine.token` with its own and signs
//! with the OS CA (`machine.ca`); its kubelet joins Kubernetes with the
//! bootstrap token (`cluster.token`) and trusts the API server by `cluster.ca`.
//! A worker whose value differs (a per-node patch, a stale file) would boot and
//! never serve its API (trustd answers "invalid token"), so it is named here.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::error::FlowError;
use super::source::Definition;

/// The values of one config that must match the control planes'.
#[derive(Debug, Default, PartialEq, Eq)]
struct JoinSecrets {
    machine_token: String,
    bootstrap_token: String,
    os_ca_crt: String,
    cluster_ca_crt: String,
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("").trim()
}

fn secrets_of(yaml: &[u8]) -> Option<JoinSecrets> {
    for doc in serde_yaml_ng::Deserializer::from_slice(yaml) {
        let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
            return None;
        };
        if at(&v, &["version"]) == "v1alpha1" {
            return Some(JoinSecrets {
                machine_token: at(&v, &["machine", "token"]).to_string(),
                bootstrap_token: at(&v, &["cluster", "token"]).to_string(),
                os_ca_crt: at(&v, &["machine", "ca", "crt"]).to_string(),
                cluster_ca_crt: at(&v, &["cluster", "ca", "crt"]).to_string(),
            });
        }
    }
    None
}

/// Every worker's join secrets against the first control plane's.
pub fn check_worker_join(
    def: &Definition,
    configs: &BTreeMap<String, Vec<u8>>,
    file: &str,
) -> Result<(), FlowError> {
    let Some(cp) = def.control_planes().next() else {
        return Ok(());
    };
    let Some(want) = configs.get(&cp.hostname).and_then(|c| secrets_of(c)) else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for n in def.nodes.iter().filter(|n| !n.control_plane) {
        let Some(got) = configs.get(&n.hostname).and_then(|c| secrets_of(c)) else {
            continue;
        };
        let who = n.label();
        if got.machine_token != want.machine_token {
            problems.push(format!(
                "worker {who}: machine.token differs from the control planes' ({}): trustd on the control planes would refuse its apid certificate request (Unauthenticated: invalid token) and the node would never serve its API; remove the per-node machine.token override",
                cp.hostname
            ));
        }
        if got.os_ca_crt != want.os_ca_crt {
            problems.push(format!(
                "worker {who}: machine.ca differs from the control planes': it could not verify trustd, and trustd's certificate would not be the one clients trust"
            ));
        }
        if got.bootstrap_token != want.bootstrap_token {
            problems.push(format!(
                "worker {who}: cluster.token (the bootstrap token) differs from the control planes': its kubelet could not join Kubernetes (401 Unauthorized)"
            ));
        }
        if got.cluster_ca_crt != want.cluster_ca_crt {
            problems.push(format!(
                "worker {who}: cluster.ca differs from the control planes': its kubelet would not trust the API server"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FlowError::Definition {
            file: file.to_string(),
            detail: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NodeDef;

    fn node(name: &str, cp: bool) -> NodeDef {
        NodeDef {
            hostname: name.into(),
            address: format!("127.0.60.{}", if cp { 11 } else { 14 }),
            control_plane: cp,
            install_disk: None,
            links: vec![],
        }
    }

    fn config(token: &str) -> Vec<u8> {
        format!("version: v1alpha1\nmachine:\n  token: {token}\n  ca: {{crt: AAA}}\ncluster:\n  token: boot.strap\n  ca: {{crt: BBB}}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: x\n").into_bytes()
    }

    #[test]
    fn a_worker_with_another_machine_token_is_named() {
        let def = Definition {
            cluster: "c".into(),
            endpoint: "https://127.0.60.11:6443".into(),
            nodes: vec![node("cp1", true), node("worker1", false)],
        };
        let mut configs = BTreeMap::new();
        configs.insert("cp1".to_string(), config("aaaaaa.0123456789abcdef"));
        configs.insert("worker1".to_string(), config("aaaaaa.0123456789abcdef"));
        assert!(check_worker_join(&def, &configs, "talconfig.yaml").is_ok());
        configs.insert("worker1".to_string(), config("bbbbbb.0123456789abcdef"));
        let e = check_worker_join(&def, &configs, "talconfig.yaml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("worker worker1 (127.0.60.14): machine.token"),
            "{text}"
        );
        assert!(text.contains("invalid token"), "{text}");
    }
}
