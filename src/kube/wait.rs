//! Readiness by kind, on watches (kube-runtime's watcher: relists on 410, resumes
//! after errors), each with a deadline; a timeout names the blocking object and
//! its last status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;

use super::{Applied, KubeError};

/// Where an object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not yet; the text says why (for progress and timeouts).
    Pending(String),
    /// Will not become ready (a failed Job).
    Failed(String),
}

fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn cond_true(v: &Value, ty: &str) -> bool {
    condition(v, ty)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// The non-True conditions with their reasons and messages.
pub fn conditions_summary(v: &Value) -> String {
    let Some(cs) = v.pointer("/status/conditions").and_then(Value::as_array) else {
        return "no conditions".into();
    };
    cs.iter()
        .map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
            let mut t = format!("{}={}", s("type"), s("status"));
            if !s("reason").is_empty() {
                t.push_str(&format!(" ({})", s("reason")));
            }
            if !s("message").is_empty() {
                t.push_str(&format!(": {}", s("message")));
            }
            t
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn generation_observed(v: &Value) -> bool {
    i(v, "/status/observedGeneration") >= i(v, "/metadata/generation")
}

/// Readiness of an object of `kind` (kinds without a notion of readiness are
/// ready once they exist).
pub fn readiness(kind: &str, v: &Value) -> Readiness {
    match kind {
        "Deployment" | "StatefulSet" => {
            let want = v
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready_field = if kind == "Deployment" {
                "/status/availableReplicas"
            } else {
                "/status/readyReplicas"
            };
            let updated = i(v, "/status/updatedReplicas");
            let ready = i(v, ready_field);
            if generation_observed(v) && updated >= want && ready >= want {
                Readiness::Ready
            } else {
                Readiness::Pending(format!(
                    "{ready}/{want} ready, {updated} updated; {}",
                    conditions_summary(v)
                ))
            }
        }
        "DaemonSet" => {
            let desired = i(v, "/status/desiredNumberScheduled");
            let updated = i(v, "/status/updatedNumberScheduled");
            let ready = i(v, "/status/numberReady");
            let unavailable = i(v, "/status/numberUnavailable");
            if v.get("status").is_some()
                && generation_observed(v)
                && desired > 0
                && updated == desired
                && ready == desired
                && unavailable == 0
            {
                Readiness::Ready
            } else {
                Readiness::Pending(format!(
                    "{ready}/{desired} ready, {updated} updated, {unavailable} unavailable; {}",
                    conditions_summary(v)
                ))
            }
        }
        "Job" => {
            if cond_true(v, "Complete") {
                Readiness::Ready
            } else if cond_true(v, "Failed") {
                Readiness::Failed(conditions_summary(v))
            } else {
                Readiness::Pending(format!(
                    "{} active, {} failed; {}",
                    i(v, "/status/active"),
                    i(v, "/status/failed"),
                    conditions_summary(v)
                ))
            }
        }
        "CustomResourceDefinition" => {
            if cond_true(v, "Established") {
                Readiness::Ready
            } else {
                Readiness::Pending(conditions_summary(v))
            }
        }
        "Node" => {
            if cond_true(v, "Ready") {
                Readiness::Ready
            } else {
                Readiness::Pending(conditions_summary(v))
            }
        }
        _ => Readiness::Ready,
    }
}

/// Whether `kind` has a readiness to wait for.
pub fn has_readiness(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CustomResourceDefinition" | "Node"
    )
}

/// Waits on a watch of this one object until it is ready, or `deadline` passes.
pub async fn wait_ready(
    client: &Client,
    obj: &Applied,
    deadline: Duration,
) -> Result<(), KubeError> {
    let api: Api<DynamicObject> = match obj.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &obj.resource),
        None => Api::all_with(client.clone(), &obj.resource),
    };
    let label = obj.label();
    let kind = obj.gvk.kind.clone();
    let t0 = Instant::now();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", obj.name));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut last = "not seen yet".to_string();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let next = tokio::time::timeout_at(end, stream.next()).await;
        let ev = match next {
            Err(_) => {
                return Err(KubeError::Timeout {
                    object: label,
                    what: ready_word(&kind).into(),
                    after: t0.elapsed(),
                    status: last,
                })
            }
            Ok(None) => {
                return Err(KubeError::Transport {
                    object: label,
                    verb: "watch",
                    detail: "the watch ended".into(),
                })
            }
            Ok(Some(Err(e))) => {
                last = format!("watch error (retrying): {e}");
                continue;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let o = match ev {
            Event::Apply(o) | Event::InitApply(o) => o,
            Event::Delete(_) => {
                last = "deleted".into();
                continue;
            }
            Event::Init | Event::InitDone => continue,
        };
        let v = serde_json::to_value(&o).unwrap_or(Value::Null);
        match readiness(&kind, &v) {
            Readiness::Ready => return Ok(()),
            Readiness::Failed(s) => {
                return Err(KubeError::Failed {
                    object: label,
                    status: s,
                })
            }
            Readiness::Pending(s) => last = s,
        }
    }
}

fn ready_word(kind: &str) -> &'static str {
    match kind {
        "CustomResourceDefinition" => "Established",
        "Job" => "complete",
        "Deployment" | "DaemonSet" | "StatefulSet" => "rolled out",
        _ => "ready",
    }
}

/// Waits on every object with a readiness, concurrently; the first failure (by
/// input order) is returned once all have finished.
pub async fn wait_all(
    client: &Client,
    objs: &[Applied],
    deadline: Duration,
) -> Result<usize, KubeError> {
    let waiting: Vec<&Applied> = objs.iter().filter(|a| has_readiness(&a.gvk.kind)).collect();
    let n = waiting.len();
    let results =
        futures::future::join_all(waiting.into_iter().map(|a| wait_ready(client, a, deadline)))
            .await;
    for r in results {
        r?;
    }
    Ok(n)
}

/// What the node watch saw last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub ready: bool,
    pub summary: String,
}

/// Waits on a watch of Nodes until `want` nodes are registered and, with
/// `ready`, all Ready. `progress` gets the view whenever it changes.
pub async fn wait_nodes(
    client: &Client,
    want: usize,
    ready: bool,
    deadline: Duration,
    mut progress: impl FnMut(&BTreeMap<String, NodeView>),
) -> Result<BTreeMap<String, NodeView>, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let t0 = Instant::now();
    let end = tokio::time::Instant::now() + deadline;
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
    let mut init: BTreeMap<String, NodeView> = BTreeMap::new();
    let mut listed = false;
    let what = if ready { "Ready" } else { "registered" };
    let mut last_err = String::new();
    loop {
        if listed {
            let done = nodes.len() >= want && (!ready || nodes.values().all(|n| n.ready));
            if done {
                return Ok(nodes);
            }
        }
        let ev = match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => {
                let blocking: Vec<String> = nodes
                    .iter()
                    .filter(|(_, n)| ready && !n.ready)
                    .map(|(k, n)| format!("{k}: {}", n.summary))
                    .collect();
                let mut status = format!("{}/{want} node(s) registered", nodes.len());
                if !blocking.is_empty() {
                    status.push_str(&format!("; not Ready: {}", blocking.join("; ")));
                }
                if !last_err.is_empty() {
                    status.push_str(&format!("; {last_err}"));
                }
                return Err(KubeError::Timeout {
                    object: "nodes".into(),
                    what: format!("{want} {what}"),
                    after: t0.elapsed(),
                    status,
                });
            }
            Ok(None) => {
                return Err(KubeError::Transport {
                    object: "nodes".into(),
                    verb: "watch",
                    detail: "the watch ended".into(),
                })
            }
            Ok(Some(Err(e))) => {
                last_err = format!("watch error (retrying): {e}");
                continue;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let view = |n: &Node| {
            let v = serde_json::to_value(n).unwrap_or(Value::Null);
            let r = readiness("Node", &v);
            (
                n.metadata.name.clone().unwrap_or_default(),
                NodeView {
                    ready: r == Readiness::Ready,
                    summary: match r {
                        Readiness::Ready => "Ready".into(),
                        Readiness::Pending(s) | Readiness::Failed(s) => s,
                    },
                },
            )
        };
        let before = nodes.clone();
        match ev {
            Event::Init => init.clear(),
            Event::InitApply(n) => {
                let (k, v) = view(&n);
                init.insert(k, v);
            }
            Event::InitDone => {
                nodes = std::mem::take(&mut init);
                listed = true;
            }
            Event::Apply(n) => {
                let (k, v) = view(&n);
                nodes.insert(k, v);
            }
            Event::Delete(n) => {
                nodes.remove(&n.metadata.name.clone().unwrap_or_default());
            }
        }
        if listed && nodes != before {
            progress(&nodes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_by_kind() {
        let ds = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3}});
        assert_eq!(readiness("DaemonSet", &ds), Readiness::Ready);
        let ds = json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3}});
        assert!(matches!(readiness("DaemonSet", &ds), Readiness::Pending(_)));
        let job = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert!(
            matches!(readiness("Job", &job), Readiness::Failed(s) if s.contains("BackoffLimitExceeded"))
        );
        let dep = json!({"spec": {"replicas": 2}, "status": {"updatedReplicas": 2, "availableReplicas": 1}});
        assert!(
            matches!(readiness("Deployment", &dep), Readiness::Pending(s) if s.starts_with("1/2"))
        );
        assert_eq!(readiness("ConfigMap", &json!({})), Readiness::Ready);
    }
}
