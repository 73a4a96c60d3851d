//! Node maintenance on the Kubernetes side, as `kubectl cordon/drain/uncordon`
//! do it: cordon by `spec.unschedulable`, drain through the Eviction API (so
//! PodDisruptionBudgets are honoured), delete a Node object, and wait for a Node to
//! register or turn Ready on a watch.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::{wait::await_condition, watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::time::Instant;

use endsys_core::backoff::Backoff;

use super::KubeError;

/// Longest pause between eviction retries while a PodDisruptionBudget says no
/// (the API gives no event for "budget available again").
const EVICT_RETRY_MAX: Duration = Duration::from_secs(1);

fn object(node: &str) -> String {
    format!("Node {node}")
}

/// A Node as the drain flow needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub exists: bool,
    pub unschedulable: bool,
    pub ready: bool,
}

/// Reads a Node (absent is not an error).
pub async fn node_state(client: &Client, node: &str) -> Result<NodeState, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let n = api
        .get_opt(node)
        .await
        .map_err(|e| KubeError::from_kube(e, &object(node), "get"))?;
    Ok(match n {
        None => NodeState {
            exists: false,
            unschedulable: false,
            ready: false,
        },
        Some(n) => NodeState {
            exists: true,
            unschedulable: n
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            ready: is_ready(&n),
        },
    })
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks the Node unschedulable (true) or schedulable (false). Returns false when
/// the Node does not exist (nothing to do).
pub async fn set_unschedulable(
    client: &Client,
    node: &str,
    unschedulable: bool,
) -> Result<bool, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let verb = if unschedulable { "cordon" } else { "uncordon" };
    // null removes the field, as kubectl uncordon does.
    let value = if unschedulable {
        json!(true)
    } else {
        serde_json::Value::Null
    };
    match api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": value}})),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(KubeError::from_kube(e, &object(node), verb)),
    }
}

/// Pods a drain must evict: bound to the node, not owned by a DaemonSet (its
/// controller would put them straight back), not mirror pods, not already finished.
fn evictable(p: &Pod) -> bool {
    let md = &p.metadata;
    let daemonset = md
        .owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
    let mirror = md
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    !daemonset && !mirror && !finished
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// `namespace/name` of every pod evicted.
    pub evicted: Vec<String>,
    /// DaemonSet and mirror pods left in place.
    pub ignored: usize,
}

/// Evicts every evictable pod from `node` and waits until they are gone. A
/// PodDisruptionBudget refusal (429) is retried until `deadline`, then reported
/// with the pod it blocks.
pub async fn drain(
    client: &Client,
    node: &str,
    deadline: Duration,
) -> Result<DrainReport, KubeError> {
    let end = Instant::now() + deadline;
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| KubeError::from_kube(e, &format!("pods on {node}"), "list"))?;
    let mut report = DrainReport::default();
    let mut waits = Vec::new();
    for p in pods.items {
        if !evictable(&p) {
            report.ignored += 1;
            continue;
        }
        let (Some(name), Some(ns)) = (p.metadata.name.clone(), p.metadata.namespace.clone()) else {
            continue;
        };
        let label = format!("Pod {ns}/{name}");
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut pause = Backoff::new(Duration::from_millis(50), EVICT_RETRY_MAX);
        loop {
            match api.evict(&name, &EvictParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    if Instant::now() + pause.peek() > end {
                        return Err(KubeError::Timeout {
                            object: label,
                            what: format!("evicted from {node}"),
                            after: deadline,
                            status: format!("eviction refused: {}", s.message),
                        });
                    }
                    tokio::time::sleep(pause.next_pause()).await;
                }
                Err(e) => return Err(KubeError::from_kube(e, &label, "evict")),
            }
        }
        let uid = p.metadata.uid.clone();
        report.evicted.push(format!("{ns}/{name}"));
        waits.push((label, api, name, uid));
    }
    // Evicted pods terminate gracefully; wait for each to be gone (watch-based).
    for (label, api, name, uid) in waits {
        let cond = kube::runtime::conditions::is_deleted(uid.as_deref().unwrap_or(""));
        match tokio::time::timeout_at(end, await_condition(api, &name, cond)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(KubeError::Transport {
                    object: label,
                    verb: "watch",
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                return Err(KubeError::Timeout {
                    object: label,
                    what: "gone after eviction".into(),
                    after: deadline,
                    status: "still terminating".into(),
                })
            }
        }
    }
    Ok(report)
}

/// Deletes the Node object; false when there was none.
pub async fn delete_node(client: &Client, node: &str) -> Result<bool, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(node, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(KubeError::from_kube(e, &object(node), "delete")),
    }
}

/// Waits on a watch until the Node exists and, with `ready`, is Ready.
pub async fn wait_node(
    client: &Client,
    node: &str,
    ready: bool,
    deadline: Duration,
) -> Result<(), KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let end = Instant::now() + deadline;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut last = "not registered".to_string();
    let mut seen: Option<Node> = None;
    loop {
        let ev = match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) | Ok(None) => {
                return Err(KubeError::Timeout {
                    object: object(node),
                    what: if ready { "Ready" } else { "registered" }.into(),
                    after: deadline,
                    status: last,
                })
            }
            Ok(Some(Err(e))) => {
                last = e.to_string();
                continue;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        match ev {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => seen = Some(n),
            watcher::Event::Delete(_) => seen = None,
            watcher::Event::Init => seen = None,
            watcher::Event::InitDone => {}
        }
        if let Some(n) = &seen {
            last = ready_summary(n);
            if !ready || is_ready(n) {
                return Ok(());
            }
        } else {
            last = "not registered".into();
        }
    }
}

fn ready_summary(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            format!(
                "Ready={} ({}: {})",
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "registered, no Ready condition yet".into())
}

/// Whether any Node of the cluster is Ready (false when they cannot be listed).
pub async fn any_ready(client: &Client) -> bool {
    let api: Api<Node> = Api::all(client.clone());
    api.list(&ListParams::default()).await.is_ok_and(|l| {
        l.items.iter().any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
}
