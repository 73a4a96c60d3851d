//! A machine config as a set of documents keyed by (apiVersion, kind, name),
//! each normalised through one serializer (the config room's emitter, Go's key
//! order) so comments, key order and quoting never count as drift; and the
//! field paths in which two documents differ.

use serde_yaml_ng::Value;

use crate::machineconfig::yaml;

/// Which document: the v1alpha1 one has no kind and no name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

impl DocKey {
    pub fn of(doc: &Value) -> DocKey {
        let s = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if doc.get("kind").is_none() && s("version") == "v1alpha1" {
            return DocKey {
                api_version: "v1alpha1".into(),
                kind: "v1alpha1".into(),
                name: String::new(),
            };
        }
        DocKey {
            api_version: s("apiVersion"),
            kind: s("kind"),
            name: s("name"),
        }
    }

    pub fn is_v1alpha1(&self) -> bool {
        self.kind == "v1alpha1"
    }

    /// `v1alpha1`, `HostnameConfig`, `LinkConfig/enp1s0`.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.kind.clone()
        } else {
            format!("{}/{}", self.kind, self.name)
        }
    }
}

/// One document, its key and its normalised value.
#[derive(Debug, Clone)]
pub struct Doc {
    pub key: DocKey,
    pub value: Value,
}

/// Splits a multi-document config; `what` names it in errors.
pub fn split(raw: &[u8], what: &str) -> Result<Vec<Doc>, String> {
    let mut out = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_slice(raw) {
        let mut value = <Value as serde::Deserialize>::deserialize(d)
            .map_err(|e| format!("{what}: not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        yaml::canonicalize(&mut value);
        out.push(Doc {
            key: DocKey::of(&value),
            value,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The one serializer both sides go through.
pub fn emit(v: &Value) -> String {
    yaml::emit(v, 2)
}

/// The dotted paths (`.machine.sysctls`, `.machine.install.extraKernelArgs`)
/// where `a` and `b` differ, down to mappings' leaves; lists count whole.
pub fn changed_paths(a: Option<&Value>, b: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk(a, b, String::new(), &mut out);
    out
}

fn walk(a: Option<&Value>, b: Option<&Value>, path: String, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Some(Value::Mapping(x)), Some(Value::Mapping(y))) => {
            let mut keys: Vec<&Value> = x.keys().chain(y.keys()).collect();
            keys.sort_by_key(|k| k.as_str().unwrap_or_default().to_string());
            keys.dedup();
            for k in keys {
                let name = k.as_str().unwrap_or_default();
                walk(x.get(k), y.get(k), format!("{path}.{name}"), out);
            }
        }
        _ => out.push(if path.is_empty() { ".".into() } else { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_order_and_quoting_are_normalised_away() {
        let a = split(
            b"# c\nversion: v1alpha1\nmachine:\n  type: worker\n  token: 'x'\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: enp1s0\nmtu: 1500\n",
            "a",
        )
        .unwrap();
        let b = split(
            b"apiVersion: v1alpha1\nkind: LinkConfig\nname: enp1s0\nmtu: 1500\n---\nmachine:\n  token: \"x\"\n  type: worker\nversion: v1alpha1\n",
            "b",
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].key.label(), "v1alpha1");
        assert_eq!(a[0].key.label(), "LinkConfig/enp1s0");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.key, y.key);
            assert_eq!(emit(&x.value), emit(&y.value));
        }
    }

    #[test]
    fn changed_paths_go_down_mappings() {
        let a: Value = serde_yaml_ng::from_str(
            "machine:\n  sysctls: {a: '1'}\n  install: {extraKernelArgs: [x], disk: /dev/sda}\n",
        )
        .unwrap();
        let b: Value = serde_yaml_ng::from_str(
            "machine:\n  sysctls: {a: '2', b: '1'}\n  install: {extraKernelArgs: [y], disk: /dev/sda}\n",
        )
        .unwrap();
        assert_eq!(
            changed_paths(Some(&a), Some(&b)),
            vec![
                ".machine.install.extraKernelArgs",
                ".machine.sysctls.a",
                ".machine.sysctls.b"
            ]
        );
        assert_eq!(changed_paths(None, Some(&b)), vec!["."]);
    }
}
