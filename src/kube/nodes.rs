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
    /// Pods deleted past their budget after the timeout (`force`).
    pub forced: Vec<String>,
}

/// How a drain treats a pod its PodDisruptionBudget protects.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// How long evictions are retried (and evicted pods awaited) in all.
    pub timeout: Duration,
    /// After `timeout`, DELETE a pod whose eviction is still refused instead of
    /// stopping (the budget is bypassed, as `talosctl --force-drain` would).
    pub force: bool,
}

/// Why a drain stopped.
#[derive(Debug)]
pub enum DrainError {
    /// An eviction kept being refused (429) until the timeout.
    Blocked {
        /// `namespace/name` of the pod.
        pod: String,
        /// The budget the API named in the refusal's cause, and its numbers.
        budget: Option<BudgetCause>,
        /// The API's message when no cause named a budget.
        message: String,
    },
    Kube(KubeError),
}

impl From<KubeError> for DrainError {
    fn from(e: KubeError) -> Self {
        DrainError::Kube(e)
    }
}

/// What a 429 eviction refusal says about the budget: "The disruption budget
/// <pdb> needs <desired> healthy pods and has <current> currently".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCause {
    /// The budget's name (same namespace as the pod).
    pub pdb: String,
    pub needs: Option<u32>,
    pub has: Option<u32>,
}

/// The budget named by a refusal's `details.causes` (reason DisruptionBudget).
pub fn budget_cause(s: &kube::core::Status) -> Option<BudgetCause> {
    let causes = &s.details.as_ref()?.causes;
    causes
        .iter()
        .filter(|c| {
            c.reason == "DisruptionBudget" || c.message.starts_with("The disruption budget")
        })
        .find_map(|c| parse_budget_message(&c.message))
}

fn parse_budget_message(m: &str) -> Option<BudgetCause> {
    let rest = m.strip_prefix("The disruption budget ")?;
    let (pdb, rest) = rest.split_once(' ')?;
    let number_after = |word: &str| -> Option<u32> {
        let (_, tail) = rest.split_once(word)?;
        tail.split_whitespace().next()?.parse().ok()
    };
    Some(BudgetCause {
        pdb: pdb.to_string(),
        needs: number_after("needs "),
        has: number_after("has "),
    })
}

/// Evicts every evictable pod from `node` and waits until they are gone. A
/// PodDisruptionBudget refusal (429) is retried until `deadline`, then reported
/// with the pod it blocks and the budget's name.
pub async fn drain(
    client: &Client,
    node: &str,
    deadline: Duration,
) -> Result<DrainReport, DrainError> {
    drain_with(
        client,
        node,
        DrainOptions {
            timeout: deadline,
            force: false,
        },
    )
    .await
}

/// [`drain`] with the force-after-timeout choice.
pub async fn drain_with(
    client: &Client,
    node: &str,
    opts: DrainOptions,
) -> Result<DrainReport, DrainError> {
    let deadline = opts.timeout;
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
            let r = api.evict(&name, &EvictParams::default()).await;
            match r {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    if Instant::now() + pause.peek() > end {
                        if opts.force {
                            match api.delete(&name, &DeleteParams::default()).await {
                                Ok(_) => {}
                                Err(kube::Error::Api(s)) if s.code == 404 => {}
                                Err(e) => {
                                    return Err(KubeError::from_kube(e, &label, "delete").into())
                                }
                            }
                            report.forced.push(format!("{ns}/{name}"));
                            break;
                        }
                        return Err(DrainError::Blocked {
                            pod: format!("{ns}/{name}"),
                            budget: budget_cause(&s),
                            message: s.message.clone(),
                        });
                    }
                    tokio::time::sleep(pause.next_pause()).await;
                }
                Err(e) => return Err(KubeError::from_kube(e, &label, "evict").into()),
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
                }
                .into())
            }
            Err(_) => {
                return Err(KubeError::Timeout {
                    object: label,
                    what: "gone after eviction".into(),
                    after: deadline,
                    status: "still terminating".into(),
                }
                .into())
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

/// The Node's `status.nodeInfo.bootID` (None when there is no Node or no ID yet).
pub async fn boot_id(client: &Client, node: &str) -> Result<Option<String>, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let n = api
        .get_opt(node)
        .await
        .map_err(|e| KubeError::from_kube(e, &object(node), "get"))?;
    Ok(n.and_then(|n| n.status?.node_info.map(|i| i.boot_id))
        .filter(|id| !id.is_empty()))
}

fn kubelet_version(n: &Node) -> &str {
    n.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.as_str())
        .unwrap_or("")
}

/// Waits on a watch until the Node exists and, with `ready`, is Ready.
pub async fn wait_node(
    client: &Client,
    node: &str,
    ready: bool,
    deadline: Duration,
) -> Result<(), KubeError> {
    wait_node_as(client, node, ready, None, deadline).await
}

/// Waits on a watch until the Node is Ready and, with `kubelet`, reports that
/// kubelet version (`v1.36.0`).
pub async fn wait_node_version(
    client: &Client,
    node: &str,
    kubelet: Option<&str>,
    deadline: Duration,
) -> Result<(), KubeError> {
    wait_node_as(client, node, true, kubelet, deadline).await
}

async fn wait_node_as(
    client: &Client,
    node: &str,
    ready: bool,
    kubelet: Option<&str>,
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
                    what: match (ready, kubelet) {
                        (_, Some(v)) => format!("Ready with kubelet {v}"),
                        (true, None) => "Ready".into(),
                        (false, None) => "registered".into(),
                    },
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
            let version_ok = kubelet.is_none_or(|v| kubelet_version(n) == v);
            if !version_ok {
                last = format!("{last}; kubelet {}", kubelet_version(n));
            }
            if (!ready || is_ready(n)) && version_ok {
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

/// Every Node's kubelet version (`name`, `v1.35.3`).
pub async fn kubelet_versions(client: &Client) -> Result<Vec<(String, String)>, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| KubeError::from_kube(e, "Nodes", "list"))?;
    Ok(list
        .items
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                kubelet_version(n).to_string(),
            )
        })
        .collect())
}

/// A static pod's mirror pod as an upgrade watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPod {
    pub image: String,
    pub ready: bool,
    /// `talos.dev/config-version`: bumped by Talos on every config change.
    pub config_version: String,
}

/// The mirror pod `kube-system/<component>-<node>` (None when absent).
pub async fn mirror_pod(
    client: &Client,
    component: &str,
    node: &str,
) -> Result<Option<MirrorPod>, KubeError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let name = format!("{component}-{node}");
    let p = api
        .get_opt(&name)
        .await
        .map_err(|e| KubeError::from_kube(e, &format!("Pod kube-system/{name}"), "get"))?;
    Ok(p.map(|p| MirrorPod {
        image: p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        ready: p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        config_version: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("talos.dev/config-version").cloned())
            .unwrap_or_default(),
    }))
}

/// Waits until the mirror pod `kube-system/<component>-<node>` runs `image` and is Ready.
pub async fn wait_mirror_pod(
    client: &Client,
    component: &str,
    node: &str,
    image: &str,
    deadline: Duration,
) -> Result<MirrorPod, KubeError> {
    let end = Instant::now() + deadline;
    let mut pause = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
    loop {
        let last = match mirror_pod(client, component, node).await {
            Ok(Some(p)) if p.image == image && p.ready => return Ok(p),
            Ok(Some(p)) => {
                format!(
                    "{} {} (config-version {})",
                    p.image,
                    if p.ready { "Ready" } else { "not Ready" },
                    p.config_version
                )
            }
            Ok(None) => "absent".into(),
            Err(e) => e.to_string(),
        };
        if Instant::now() + pause.peek() > end {
            return Err(KubeError::Timeout {
                object: format!("Pod kube-system/{component}-{node}"),
                what: format!("running {image} and Ready"),
                after: deadline,
                status: last,
            });
        }
        tokio::time::sleep(pause.next_pause()).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_its_budget() {
        let s: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"}]}
        }))
        .unwrap();
        assert_eq!(
            budget_cause(&s),
            Some(BudgetCause {
                pdb: "web-pdb".into(),
                needs: Some(2),
                has: Some(2)
            })
        );
        let still: kube::core::Status = serde_json::from_value(json!({
            "code": 429, "message": "x",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web-pdb is still being processed by the server."}]}
        }))
        .unwrap();
        let c = budget_cause(&still).unwrap();
        assert_eq!((c.pdb.as_str(), c.needs, c.has), ("web-pdb", None, None));
        let none: kube::core::Status =
            serde_json::from_value(json!({"code": 429, "message": "slow down"})).unwrap();
        assert_eq!(budget_cause(&none), None);
    }
}
