//! What the server owns in an object, as the apiserver keeps it: identity and
//! server-set metadata survive client writes, `.status` changes only through the
//! status subresource where there is one, `metadata.generation` moves with the
//! spec, every object is served in the version asked for, and names are RFC 1123
//! subdomains.

use serde_json::{json, Value};

use crate::kube::types::ResType;

/// Drops what a request may not set: status through the main resource (when there
/// is a status subresource), everything but status through `/status`.
pub(super) fn strip_for(ty: &ResType, sub: Option<&str>, config: &mut Value) {
    let Some(m) = config.as_object_mut() else {
        return;
    };
    if sub == Some("status") {
        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            md.retain(|k, _| k == "name" || k == "namespace");
        }
    } else if ty.status {
        m.remove("status");
    }
}

pub(super) fn keep_server_fields_for(
    ty: &ResType,
    sub: Option<&str>,
    old: &Value,
    new: &mut Value,
) {
    if sub == Some("status") {
        let status = new.get("status").cloned();
        let mf = new.pointer("/metadata/managedFields").cloned();
        *new = old.clone();
        if let Some(s) = status {
            new["status"] = s;
        }
        if let Some(mf) = mf {
            new["metadata"]["managedFields"] = mf;
        }
    } else {
        keep_server_fields(ty, old, new);
    }
}

/// Identity and server-owned metadata survive client writes; so does `.status`
/// when only the status subresource may change it.
pub(super) fn keep_server_fields(ty: &ResType, old: &Value, new: &mut Value) {
    for k in [
        "uid",
        "creationTimestamp",
        "generation",
        "name",
        "namespace",
    ] {
        match old.pointer(&format!("/metadata/{k}")) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(k);
                }
            }
        }
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();
    if ty.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
}

/// `metadata.generation` moves when anything but metadata and status changes.
pub(super) fn bump_generation(ty: &ResType, old: &Value, new: &mut Value) {
    let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64) else {
        return;
    };
    let spec = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    };
    let _ = ty;
    new["metadata"]["generation"] = json!(if spec(old) != spec(new) { g + 1 } else { g });
}

/// Serves an object in the version asked for (one stored copy for all versions).
pub(super) fn versioned(mut v: Value, ty: &ResType) -> Value {
    v["apiVersion"] = json!(ty.api_version());
    v["kind"] = json!(ty.kind);
    v
}

pub(super) fn qualified(ty: &ResType) -> String {
    if ty.group.is_empty() {
        ty.plural.clone()
    } else {
        format!("{}.{}", ty.plural, ty.group)
    }
}

pub(super) fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == ':'
        })
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
}
