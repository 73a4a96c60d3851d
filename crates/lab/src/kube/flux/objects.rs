//! What every controller of the lab's Flux does with its objects: read them
//! (`Ready` and `Stalled` conditions, `observedGeneration`), write their status
//! the way Flux's runtime patches it (condition transition times kept while a
//! status does not change, other fields kept), apply desired specs (a new
//! generation on change); the kinds they reconcile ([`Types`]) and the fault
//! annotation ([`FAULT`]).

use serde_json::{json, Value};

use crate::kube::server::{now, Api};
use crate::kube::store::ApiError;
use crate::kube::types::ResType;

/// Annotation that injects a fault into a Kustomization or HelmRelease.
pub const FAULT: &str = "lab.endsys.dev/fault";

pub(super) fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn gen(v: &Value) -> i64 {
    v.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

pub(super) fn list(api: &Api, t: &ResType) -> Vec<Value> {
    api.store
        .list(&t.prefix())
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default()
}

pub(super) fn get(api: &Api, t: &ResType, ns: &str, name: &str) -> Option<Value> {
    api.store.get(&t.key(Some(ns), name)).ok().flatten()
}

pub(super) fn ready_of(v: &Value) -> Option<(String, String)> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| (s(c, "/status").to_string(), s(c, "/reason").to_string()))
}

pub(super) fn is_ready(v: &Value) -> bool {
    ready_of(v).is_some_and(|r| r.0 == "True")
        && v.pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            == Some(gen(v))
}

pub(super) fn stalled(v: &Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Stalled" && s(c, "/status") == "True")
        })
}

/// A condition list; transition times kept while the status does not change.
fn conds(old: &Value, new: &[(&str, &str, &str, String)]) -> Value {
    let olds = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let t = now();
    Value::Array(
        new.iter()
            .map(|(ty, st, reason, msg)| {
                let prev = olds
                    .iter()
                    .find(|o| s(o, "/type") == *ty && s(o, "/status") == *st);
                let at = prev
                    .and_then(|p| p.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(t));
                json!({"type": ty, "status": st, "reason": reason, "message": msg,
                    "observedGeneration": gen(old), "lastTransitionTime": at})
            })
            .collect(),
    )
}

/// Writes a status, keeping the fields not named in `fields`.
pub(super) fn set_status(
    api: &Api,
    t: &ResType,
    obj: &Value,
    c: &[(&str, &str, &str, String)],
    fields: Value,
) -> Result<(), ApiError> {
    let ns = s(obj, "/metadata/namespace").to_string();
    let name = s(obj, "/metadata/name").to_string();
    let conditions = conds(obj, c);
    api.sim_write(t, Some(&ns), &name, |o| {
        if !o.get("status").is_some_and(Value::is_object) {
            o["status"] = json!({});
        }
        o["status"]["conditions"] = conditions;
        if let Some(m) = fields.as_object() {
            for (k, v) in m {
                match (v, o["status"].as_object_mut()) {
                    // null clears a field (e.g. failure counters after a success).
                    (Value::Null, Some(st)) => {
                        st.remove(k);
                    }
                    _ => o["status"][k] = v.clone(),
                }
            }
        }
    })?;
    Ok(())
}

/// Creates `obj` or, when it exists, brings its spec to `obj`'s (a new
/// generation), as a controller applying its desired state does.
pub(super) fn apply_spec(api: &Api, t: &ResType, obj: Value) -> Result<(), ApiError> {
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = s(&obj, "/metadata/name").to_string();
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    api.sim_create(t, obj)?;
    api.sim_write(t, ns.as_deref(), &name, |o| {
        if o.get("spec") != Some(&spec) {
            o["spec"] = spec.clone();
            o["metadata"]["generation"] = json!(gen(o) + 1);
        }
    })?;
    Ok(())
}

pub(super) struct Types {
    pub git: ResType,
    pub ks: ResType,
    pub hr: ResType,
    pub secret: ResType,
    pub ns: ResType,
    pub deploy: ResType,
}

pub(super) fn fail(
    api: &Api,
    t: &ResType,
    obj: &Value,
    reason: &str,
    msg: String,
    extra: Value,
) -> Result<(), ApiError> {
    set_status(api, t, obj, &[("Ready", "False", reason, msg)], extra)
}
