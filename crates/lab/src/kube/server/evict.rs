//! The Eviction subresource (`POST pods/<name>/eviction`), as the API server
//! decides it (`pkg/registry/core/pod/storage/eviction.go`): pods that are not
//! running or already going skip the budgets; a pod under more than one
//! PodDisruptionBudget is a 500; a budget the disruption controller has not
//! observed yet, or one that allows no disruption, refuses with 429 and the
//! cause; otherwise the budget's allowance drops by one and the pod is deleted.

use serde_json::{json, Value};

use super::Api;
use crate::kube::select::selects;
use crate::kube::store::ApiError;
use crate::kube::types::ResType;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn too_many(cause: String, retry_after: i64) -> ApiError {
    let mut e = ApiError::new(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.details = Some(json!({
        "causes": [{"reason": "DisruptionBudget", "message": cause}],
        "retryAfterSeconds": retry_after,
    }));
    e
}

/// Evicts `ns/name`: `Ok` once deleted, `Err` with the API's answer otherwise.
pub(crate) fn evict(api: &Api, pod_t: &ResType, ns: &str, name: &str) -> Result<(), ApiError> {
    let pod = api
        .store
        .get(&pod_t.key(Some(ns), name))?
        .ok_or_else(|| ApiError::not_found(&pod_t.plural, &pod_t.group, name))?;
    let phase = s(&pod, "/status/phase");
    let going = pod.pointer("/metadata/deletionTimestamp").is_some();
    if !(going || matches!(phase, "Pending" | "Succeeded" | "Failed")) {
        let labels = pod
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        let pdbs = pdbs_for(api, ns, &labels);
        if pdbs.len() > 1 {
            return Err(ApiError::new(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = pdbs.first() {
            let pdb_name = s(pdb, "/metadata/name").to_string();
            let gen = pdb
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let observed = pdb
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if observed < gen {
                return Err(too_many(
                    format!(
                        "The disruption budget {pdb_name} is still being processed by the server."
                    ),
                    10,
                ));
            }
            let num = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            if num("/status/disruptionsAllowed") <= 0 {
                return Err(too_many(
                    format!(
                        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        num("/status/desiredHealthy"),
                        num("/status/currentHealthy")
                    ),
                    0,
                ));
            }
            if let Some(t) = api.type_by_kind("PodDisruptionBudget") {
                api.sim_write(&t, Some(ns), &pdb_name, |o| {
                    let left = o
                        .pointer("/status/disruptionsAllowed")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    o["status"]["disruptionsAllowed"] = json!(left - 1);
                })?;
            }
        }
    }
    api.delete(pod_t, Some(ns), name, false)?;
    Ok(())
}

/// The PodDisruptionBudgets in `ns` that select a pod with `labels`.
pub(crate) fn pdbs_for(api: &Api, ns: &str, labels: &Value) -> Vec<Value> {
    let Some(t) = api.type_by_kind("PodDisruptionBudget") else {
        return vec![];
    };
    api.store
        .list(&t.list_prefix(Some(ns)))
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.pointer("/spec/selector")
                .is_some_and(|sel| selects(sel, labels))
        })
        .collect()
}
