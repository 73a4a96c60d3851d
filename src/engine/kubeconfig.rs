//! The admin kubeconfig: where it is kept, what it points to, and merging it into
//! `~/.kube/config` under the context `admin@<cluster>` (idempotent).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml_ng::{Mapping, Value};

use super::error::FlowError;

fn local(path: &Path, detail: impl Into<String>) -> FlowError {
    FlowError::Local {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Server URL and CA (PEM) of the first cluster in a kubeconfig.
pub fn server_and_ca(text: &str, path: &Path) -> Result<(String, Vec<u8>), FlowError> {
    let v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| local(path, format!("not a kubeconfig: {e}")))?;
    let cluster = v
        .get("clusters")
        .and_then(Value::as_sequence)
        .and_then(|s| s.first())
        .and_then(|c| c.get("cluster"))
        .ok_or_else(|| local(path, "kubeconfig has no clusters[0].cluster"))?;
    let server = cluster
        .get("server")
        .and_then(Value::as_str)
        .ok_or_else(|| local(path, "kubeconfig cluster has no server"))?
        .to_string();
    let ca = cluster
        .get("certificate-authority-data")
        .and_then(Value::as_str)
        .ok_or_else(|| local(path, "kubeconfig cluster has no certificate-authority-data"))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca.trim())
        .map_err(|e| {
            local(
                path,
                format!("certificate-authority-data is not base64: {e}"),
            )
        })?;
    Ok((server, ca))
}

/// The API server URL of a kubeconfig's current context (else of its only
/// cluster): where `kubectl` with this file would send requests.
pub fn current_server(bytes: &[u8]) -> Option<String> {
    let doc: Value = serde_yaml_ng::from_slice(bytes).ok()?;
    let clusters = doc.get("clusters")?.as_sequence()?;
    let current = doc
        .get("contexts")
        .and_then(Value::as_sequence)
        .and_then(|cs| {
            let name = doc.get("current-context")?.as_str()?;
            cs.iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|c| {
            c.get("context")?
                .get("cluster")?
                .as_str()
                .map(str::to_owned)
        });
    let cluster = clusters
        .iter()
        .find(|c| current.is_some() && c.get("name").and_then(Value::as_str) == current.as_deref())
        .or_else(|| (clusters.len() == 1).then(|| &clusters[0]))?;
    Some(cluster.get("cluster")?.get("server")?.as_str()?.to_string())
}

/// `~/.kube/config` (or the first path in `$KUBECONFIG`).
pub fn default_kubeconfig_path() -> PathBuf {
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        if let Some(first) = std::env::split_paths(&v).next() {
            return first;
        }
    }
    dirs::home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".kube")
        .join("config")
}

fn seq_mut<'a>(root: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let k = Value::String(key.into());
    if !matches!(root.get(&k), Some(Value::Sequence(_))) {
        root.insert(k.clone(), Value::Sequence(Vec::new()));
    }
    match root.get_mut(&k) {
        Some(Value::Sequence(s)) => s,
        _ => unreachable!("just inserted a sequence"),
    }
}

fn upsert_named(list: &mut Vec<Value>, name: &str, item: Value) {
    let named = |v: &Value| v.get("name").and_then(Value::as_str) == Some(name);
    match list.iter_mut().find(|v| named(v)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

fn entry(name: &str, key: &str, body: Value) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), Value::String(name.into()));
    m.insert(key.into(), body);
    Value::Mapping(m)
}

/// Merges the cluster's admin kubeconfig into an existing one (or none): cluster
/// `<cluster>`, user `admin@<cluster>`, context `admin@<cluster>` (made current).
/// Entries of the same names are replaced; everything else is kept. Merging the
/// same kubeconfig twice gives the same text.
pub fn merge(
    existing: Option<&str>,
    new: &str,
    cluster: &str,
    path: &Path,
) -> Result<String, FlowError> {
    let new: Value =
        serde_yaml_ng::from_str(new).map_err(|e| local(path, format!("new kubeconfig: {e}")))?;
    let first = |key: &str, inner: &str| -> Result<Value, FlowError> {
        new.get(key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(|c| c.get(inner))
            .cloned()
            .ok_or_else(|| local(path, format!("new kubeconfig has no {key}[0].{inner}")))
    };
    let cluster_body = first("clusters", "cluster")?;
    let user_body = first("users", "user")?;
    let ctx_name = format!("admin@{cluster}");
    let mut ctx = Mapping::new();
    ctx.insert("cluster".into(), Value::String(cluster.into()));
    ctx.insert("user".into(), Value::String(ctx_name.clone()));
    if let Some(ns) = first("contexts", "context")
        .ok()
        .and_then(|c| c.get("namespace").cloned())
    {
        ctx.insert("namespace".into(), ns);
    }

    let mut root: Mapping = match existing.map(str::trim).filter(|t| !t.is_empty()) {
        None => Mapping::new(),
        Some(text) => match serde_yaml_ng::from_str::<Value>(text)
            .map_err(|e| local(path, format!("existing kubeconfig is not YAML: {e}")))?
        {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => return Err(local(path, "existing kubeconfig is not a mapping")),
        },
    };
    root.entry("apiVersion".into())
        .or_insert_with(|| Value::String("v1".into()));
    root.entry("kind".into())
        .or_insert_with(|| Value::String("Config".into()));
    upsert_named(
        seq_mut(&mut root, "clusters"),
        cluster,
        entry(cluster, "cluster", cluster_body),
    );
    upsert_named(
        seq_mut(&mut root, "users"),
        &ctx_name,
        entry(&ctx_name, "user", user_body),
    );
    upsert_named(
        seq_mut(&mut root, "contexts"),
        &ctx_name,
        entry(&ctx_name, "context", Value::Mapping(ctx)),
    );
    root.insert("current-context".into(), Value::String(ctx_name));
    serde_yaml_ng::to_string(&Value::Mapping(root)).map_err(|e| local(path, e.to_string()))
}

/// Merges `kubeconfig_file` into `target` (0600, atomic; through a symlink into
/// the file it points to). Returns true when the target changed.
pub fn merge_into(kubeconfig_file: &Path, target: &Path, cluster: &str) -> Result<bool, FlowError> {
    let new = std::fs::read_to_string(kubeconfig_file).map_err(|e| {
        local(
            kubeconfig_file,
            format!("cannot read: {e}; run `up` first to fetch it"),
        )
    })?;
    // A symlinked ~/.kube/config (dotfiles, a shared volume) stays a link:
    // the file it points to is what gets merged into.
    let real = endsys_core::fs::resolve_link(target);
    let target = real.as_path();
    let existing = match std::fs::read_to_string(target) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(local(target, format!("cannot read: {e}"))),
    };
    let merged = merge(existing.as_deref(), &new, cluster, target)?;
    if existing.as_deref() == Some(merged.as_str()) {
        return Ok(false);
    }
    crate::talos::talosconfig::write_private(target, merged.as_bytes())
        .map_err(|e| local(target, format!("cannot write: {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://127.0.0.11:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: admin@lab\n  user:\n    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\ncontexts:\n- name: admin@lab\n  context:\n    cluster: lab\n    user: admin@lab\n    namespace: default\ncurrent-context: admin@lab\n";

    #[test]
    fn merge_is_idempotent_and_keeps_other_entries() {
        let other = "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod:6443\nusers:\n- name: me\n  user: {}\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: me\ncurrent-context: prod\n";
        let p = Path::new("/tmp/x");
        let once = merge(Some(other), NEW, "lab", p).unwrap();
        let twice = merge(Some(&once), NEW, "lab", p).unwrap();
        assert_eq!(once, twice);
        let v: Value = serde_yaml_ng::from_str(&twice).unwrap();
        assert_eq!(v["current-context"], Value::String("admin@lab".into()));
        assert_eq!(v["clusters"].as_sequence().unwrap().len(), 2);
        assert_eq!(v["contexts"].as_sequence().unwrap().len(), 2);
        let fresh = merge(None, NEW, "lab", p).unwrap();
        assert!(fresh.contains("admin@lab"));
        let (server, ca) = server_and_ca(NEW, p).unwrap();
        assert_eq!(server, "https://127.0.0.11:6443");
        assert_eq!(ca, b"CA");
    }

    #[cfg(unix)]
    #[test]
    fn merging_into_a_symlink_keeps_the_link_and_writes_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, NEW).unwrap();
        let real = dir.path().join("dotfiles-config");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(merge_into(&kc, &link, "lab").unwrap());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(&real)
            .unwrap()
            .contains("admin@lab"));
        assert!(!merge_into(&kc, &link, "lab").unwrap());
    }
}
