//! What ApplyConfiguration compares, as Talos 1.12/1.13 do: the config diff of
//! its dry-run text (both containers re-encoded, comments gone) and the
//! "can it apply immediately" test (`CanApplyImmediate`): only the v1alpha1
//! document counts, and the fields machined reconciles at runtime are copied
//! over before comparing, so a difference anywhere else needs a reboot.

use serde_yaml_ng::{Mapping, Value};

use endsys_core::textdiff;

/// Fields of the v1alpha1 document that apply without a reboot on 1.12/1.13
/// (`talos@v1.13.9:…/v1alpha1_runtime.go`, identical in 1.12.6).
const LIVE: &[&[&str]] = &[
    &["debug"],
    &["cluster"],
    &["machine", "ca"],
    &["machine", "acceptedCAs"],
    &["machine", "time"],
    &["machine", "certSANs"],
    &["machine", "install"],
    &["machine", "network"],
    &["machine", "sysfs"],
    &["machine", "sysctls"],
    &["machine", "logging"],
    &["machine", "controlplane"],
    &["machine", "kubelet"],
    &["machine", "kernel"],
    &["machine", "registries"],
    &["machine", "pods"],
    &["machine", "seccompProfiles"],
    &["machine", "nodeAnnotations"],
    &["machine", "nodeLabels"],
    &["machine", "nodeTaints"],
    &["machine", "features", "kubernetesTalosAPIAccess"],
    &["machine", "features", "kubePrism"],
    &["machine", "features", "hostDNS"],
    &["machine", "features", "imageCache"],
    &["machine", "features", "nodeAddressSortAlgorithm"],
];

/// The documents of a multi-document config (nulls dropped); unparsable input
/// gives none (the caller parsed it already).
fn documents(raw: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_slice(raw) {
        match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) if !v.is_null() => out.push(v),
            Ok(_) => {}
            Err(_) => return Vec::new(),
        }
    }
    out
}

fn encode(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn is_v1alpha1(v: &Value) -> bool {
    v.get("version").and_then(Value::as_str) == Some("v1alpha1") && v.get("machine").is_some()
}

fn remove_path(v: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_mapping_mut() {
        m.remove(*last);
    }
}

/// The v1alpha1 document with every live field removed.
fn reboot_relevant(raw: &[u8]) -> Value {
    let mut doc = documents(raw)
        .into_iter()
        .find(is_v1alpha1)
        .unwrap_or(Value::Mapping(Mapping::new()));
    for path in LIVE {
        remove_path(&mut doc, path);
    }
    doc
}

/// The config diff Talos puts in a dry-run answer: empty when nothing changed.
pub(super) fn config_diff(old: &[u8], new: &[u8]) -> String {
    textdiff::unified(&encode(&documents(old)), &encode(&documents(new)), "a", "b")
}

/// `None` when the change applies immediately, else the diff of what needs a
/// reboot (the text of Talos's refusal in NO_REBOOT mode).
pub(super) fn needs_reboot(old: &[u8], new: &[u8]) -> Option<String> {
    let (a, b) = (reboot_relevant(old), reboot_relevant(new));
    if a == b {
        return None;
    }
    Some(textdiff::unified(
        &encode(std::slice::from_ref(&a)),
        &encode(std::slice::from_ref(&b)),
        "a",
        "b",
    ))
}

/// A disk selector as Talos prints its expression.
pub(super) fn selector_text(sel: &Value) -> String {
    sel.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    format!("{}: {v}", k.as_str().unwrap_or_default())
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version: v1alpha1\nmachine:\n  type: worker\n  sysctls:\n    a: \"1\"\n  env:\n    X: \"1\"\n  install:\n    extraKernelArgs: [a]\ncluster:\n  clusterName: c\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w1\n";

    #[test]
    fn live_fields_and_other_documents_need_no_reboot() {
        for new in [
            BASE.replace("a: \"1\"", "a: \"2\""),
            BASE.replace("extraKernelArgs: [a]", "extraKernelArgs: [b]"),
            BASE.replace("clusterName: c", "clusterName: d"),
            BASE.replace("hostname: w1", "hostname: w2"),
        ] {
            assert_eq!(needs_reboot(BASE.as_bytes(), new.as_bytes()), None, "{new}");
            assert!(!config_diff(BASE.as_bytes(), new.as_bytes()).is_empty());
        }
    }

    #[test]
    fn env_and_files_need_a_reboot_and_the_reason_names_them() {
        let new = BASE.replace("X: \"1\"", "X: \"2\"");
        let why = needs_reboot(BASE.as_bytes(), new.as_bytes()).unwrap();
        assert!(why.contains("-    X: '1'") || why.contains("X:"), "{why}");
        assert!(!why.contains("sysctls"), "{why}");
        let files = BASE.replace(
            "  env:",
            "  files:\n  - path: /var/f\n    content: x\n    op: create\n  env:",
        );
        assert!(needs_reboot(BASE.as_bytes(), files.as_bytes()).is_some());
    }

    #[test]
    fn comments_and_quoting_are_no_change() {
        let new = format!("# a comment\n{}", BASE.replace("a: \"1\"", "a: '1'"));
        assert_eq!(config_diff(BASE.as_bytes(), new.as_bytes()), "");
    }
}
