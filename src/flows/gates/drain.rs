//! The drain gate: cordon (remembering whether this run did it), drain through
//! the Eviction API with every PodDisruptionBudget refusal reported with its
//! pod and budget, and uncordon only what this run cordoned (a node the
//! operator cordoned stays cordoned).

use std::time::Duration;

use crate::engine::{FlowError, GateError, NodeDef};
use crate::kube::nodes::{self, DrainError, DrainReport};

pub use crate::kube::nodes::DrainOptions;

/// What cordoning found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cordoned {
    /// The Node exists (a node never registered has nothing to cordon).
    pub exists: bool,
    /// Ready before the cordon (the way back waits for Ready only then).
    pub was_ready: bool,
    /// This call made it unschedulable (false: it already was, or no Node).
    pub by_us: bool,
}

/// Marks the Node unschedulable unless it already is.
pub async fn cordon(k: &kube::Client, node: &NodeDef) -> Result<Cordoned, FlowError> {
    let host = &node.hostname;
    let st = nodes::node_state(k, host)
        .await
        .map_err(|e| FlowError::kube_on(&node.label(), e))?;
    if !st.exists || st.unschedulable {
        return Ok(Cordoned {
            exists: st.exists,
            was_ready: st.ready,
            by_us: false,
        });
    }
    let by_us = nodes::set_unschedulable(k, host, true)
        .await
        .map_err(|e| FlowError::kube_on(&node.label(), e))?;
    Ok(Cordoned {
        exists: true,
        was_ready: st.ready,
        by_us,
    })
}

/// Marks the Node schedulable; false when there is no Node.
pub async fn uncordon(k: &kube::Client, node: &NodeDef) -> Result<bool, FlowError> {
    nodes::set_unschedulable(k, &node.hostname, false)
        .await
        .map_err(|e| FlowError::kube_on(&node.label(), e))
}

/// Whether the Node is unschedulable now (false when absent).
pub async fn is_cordoned(k: &kube::Client, node: &NodeDef) -> Result<bool, FlowError> {
    nodes::node_state(k, &node.hostname)
        .await
        .map(|s| s.unschedulable)
        .map_err(|e| FlowError::kube_on(&node.label(), e))
}

/// Evicts the node's pods (DaemonSet and mirror pods stay). A budget that
/// keeps refusing past `opts.timeout` stops the drain with
/// [`GateError::DrainBlocked`] naming the pod and the budget, unless
/// `opts.force` (then the pod is deleted and listed in `forced`).
///
/// `k` must not retry 429s itself ([`crate::engine::Cluster::kube_for_drains`]):
/// kube-rs's default client would retry a budget's refusal for minutes.
pub async fn drain(
    k: &kube::Client,
    node: &NodeDef,
    opts: DrainOptions,
) -> Result<DrainReport, FlowError> {
    nodes::drain_with(k, &node.hostname, opts)
        .await
        .map_err(|e| blocked(node, opts.timeout, e))
}

fn blocked(node: &NodeDef, after: Duration, e: DrainError) -> FlowError {
    match e {
        DrainError::Kube(k) => FlowError::kube_on(&node.label(), k),
        DrainError::Blocked {
            pod,
            budget,
            message,
        } => {
            let ns = pod.split_once('/').map(|(ns, _)| ns).unwrap_or("");
            GateError::DrainBlocked {
                node: node.label(),
                pdb: budget
                    .as_ref()
                    .map(|b| format!("{ns}/{}", b.pdb))
                    .or_else(|| (!message.is_empty()).then(|| format!("(not named: {message})"))),
                needs: budget.as_ref().and_then(|b| b.needs),
                has: budget.as_ref().and_then(|b| b.has),
                pod,
                after,
            }
            .into()
        }
    }
}

/// The drain's outcome line.
pub fn summary(d: &DrainReport) -> String {
    let mut s = format!(
        "{} pod(s) evicted, {} DaemonSet/mirror pod(s) left",
        d.evicted.len(),
        d.ignored
    );
    if !d.forced.is_empty() {
        s.push_str(&format!(
            "; deleted past their budget (--force-drain): {}",
            d.forced.join(", ")
        ));
    }
    s
}
