//! Field ownership and server-side apply, simplified the way the reference allows:
//! maps merge key by key, lists and scalars are atomic leaves, and each manager
//! owns a set of leaf paths recorded in `metadata.managedFields` (FieldsV1).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

pub(crate) type Path = Vec<String>;

/// Fields nobody owns: identity and server-maintained metadata.
fn ignored(p: &[String]) -> bool {
    match p {
        [a] if a == "apiVersion" || a == "kind" => true,
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "managedFields"
                | "resourceVersion"
                | "uid"
                | "creationTimestamp"
                | "generation"
                | "selfLink"
                | "deletionTimestamp"
        ),
        _ => false,
    }
}

/// Leaf paths of a value: maps recurse, everything else (and `{}`) is a leaf.
pub(crate) fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, p: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    p.push(k.clone());
                    if !ignored(p) {
                        walk(c, p, out);
                    }
                    p.pop();
                }
            }
            _ => {
                if !p.is_empty() {
                    out.insert(p.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Leaf paths whose values differ between two objects (either side may lack them).
pub(crate) fn changed(old: &Value, new: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    for p in leaves(new) {
        if get(old, &p) != get(new, &p) {
            out.insert(p);
        }
    }
    for p in leaves(old) {
        if get(new, &p).is_none() {
            out.insert(p);
        }
    }
    out
}

pub(crate) fn get<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for k in p {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}

fn remove(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

pub(crate) fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Deep-merges `patch` into `base` (maps merge, everything else replaces).
pub(crate) fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// FieldsV1 (`{"f:spec":{"f:replicas":{}}}`) from a set of paths.
pub(crate) fn encode(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let entry = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            match entry.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

/// Paths from FieldsV1. Keyed list entries (`k:`, `v:`, `i:`) make their list an
/// atomic leaf here, since lists are atomic in this simulation.
pub(crate) fn decode(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, p: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object() else {
            out.insert(p.clone());
            return;
        };
        let fields: Vec<(&String, &Value)> =
            m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        let keyed = m
            .keys()
            .any(|k| k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:"));
        if fields.is_empty() || keyed {
            if !p.is_empty() {
                out.insert(p.clone());
            }
            return;
        }
        for (k, c) in fields {
            p.push(k[2..].to_string());
            walk(c, p, out);
            p.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub(crate) fn dotted(p: &[String]) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: Option<String>,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

pub(crate) fn managers(obj: &Value) -> Vec<Manager> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                    Manager {
                        manager: s("manager").unwrap_or_default(),
                        operation: s("operation").unwrap_or_else(|| "Update".into()),
                        api_version: s("apiVersion").unwrap_or_default(),
                        subresource: s("subresource"),
                        time: s("time").unwrap_or_default(),
                        fields: e.get("fieldsV1").map(decode).unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn set_managers(obj: &mut Value, ms: &[Manager]) {
    let list: Vec<Value> = ms
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&m.fields),
            });
            if let Some(s) = &m.subresource {
                e["subresource"] = json!(s);
            }
            e
        })
        .collect();
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records a non-apply write: `who` takes the changed fields from everyone else.
pub(crate) fn record_update(
    old: &Value,
    new: &mut Value,
    who: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let diff = changed(old, new);
    let mut ms = managers(old);
    if diff.is_empty() {
        set_managers(new, &ms);
        return;
    }
    for m in ms.iter_mut() {
        m.fields
            .retain(|p| !diff.iter().any(|d| overlaps(p, d) && p.len() >= d.len()));
    }
    let sub = subresource.map(str::to_string);
    match ms
        .iter_mut()
        .find(|m| m.manager == who && m.operation == "Update" && m.subresource == sub)
    {
        Some(m) => {
            m.fields.extend(diff);
            m.time = now.to_string();
            m.api_version = api_version.to_string();
        }
        None => ms.push(Manager {
            manager: who.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            subresource: sub,
            time: now.to_string(),
            fields: diff,
        }),
    }
    set_managers(new, &ms);
}

/// A conflict: another manager owns a field the apply would change.
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: Path,
}

/// Server-side apply of `config` by `who` onto `live` (None = create). Returns the
/// new object, or the conflicts when `force` is false.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    who: &str,
    api_version: &str,
    subresource: Option<&str>,
    force: bool,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(config);
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    let mut merged = live_v.clone();
    merge(&mut merged, config);

    let sub = subresource.map(str::to_string);
    let mut ms = managers(live_v);
    let mine = |m: &Manager| m.manager == who && m.operation == "Apply" && m.subresource == sub;

    let mut conflicts = Vec::new();
    for m in ms.iter().filter(|m| !mine(m)) {
        for p in &m.fields {
            if applied.iter().any(|a| overlaps(a, p)) && get(live_v, p) != get(&merged, p) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    api_version: m.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced: the applier takes the conflicting fields over.
    for m in ms.iter_mut().filter(|m| !mine(m)) {
        m.fields.retain(|p| {
            !conflicts
                .iter()
                .any(|c| c.path == *p && c.manager == m.manager)
        });
    }
    // Fields this manager applied before but no longer does are removed, unless
    // someone else also owns them.
    let before: BTreeSet<Path> = ms
        .iter()
        .find(|m| mine(m))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for d in before.difference(&applied) {
        let still_applied = applied.iter().any(|a| overlaps(a, d));
        let shared = ms
            .iter()
            .filter(|m| !mine(m))
            .any(|m| m.fields.iter().any(|p| overlaps(p, d)));
        if !still_applied && !shared {
            remove(&mut merged, d);
        }
    }
    let unchanged = before == applied;
    match ms.iter_mut().find(|m| mine(m)) {
        Some(m) => {
            if !unchanged {
                m.time = now.to_string();
            }
            m.fields = applied;
            m.api_version = api_version.to_string();
        }
        None => ms.push(Manager {
            manager: who.to_string(),
            operation: "Apply".into(),
            api_version: api_version.to_string(),
            subresource: sub,
            time: now.to_string(),
            fields: applied,
        }),
    }
    set_managers(&mut merged, &ms);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2, "x": []}});
        let l = leaves(&v);
        assert_eq!(decode(&encode(&l)), l);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn apply_conflicts_and_force() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "a"}});
        let o = apply(None, &cfg, "one", "v1", None, false, "t").unwrap();
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "b"}});
        let e = apply(Some(&o), &cfg2, "two", "v1", None, false, "t").unwrap_err();
        assert_eq!(e[0].manager, "one");
        assert_eq!(dotted(&e[0].path), ".data.k");
        let o2 = apply(Some(&o), &cfg2, "two", "v1", None, true, "t").unwrap();
        assert_eq!(o2["data"]["k"], "b");
        // The same value from two managers is shared, not a conflict.
        let o3 = apply(Some(&o2), &cfg2, "three", "v1", None, false, "t").unwrap();
        assert_eq!(managers(&o3).len(), 2);
        // Dropping a field removes it.
        let cfg4 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"z": "1"}});
        let o4 = apply(Some(&o), &cfg4, "one", "v1", None, false, "t").unwrap();
        assert!(o4["data"].get("k").is_none());
    }
}
