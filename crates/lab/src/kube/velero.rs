//! The lab's Velero server: idle until a test installs Velero's CRDs
//! ([`crds`]); then every `Restore` goes `New` → `InProgress` → `Completed`
//! after a delay (× time scale), as velero's restore controller reports it.
//!
//! - A Restore whose `spec.backupName` names no Backup in its namespace ends
//!   `FailedValidation` with velero's message.
//! - Fault: annotation [`super::flux::FAULT`] `partially-fails` on the Restore
//!   or on its Backup ends it `PartiallyFailed` with one error.
//!
//! The lab restores no objects: the tool only follows the phases.

use serde_json::{json, Value};

use super::server::{now, Api};
use super::store::ApiError;

/// Seconds (× time scale) a Restore stays InProgress.
const RESTORE: f64 = 2.0;

fn crd(kind: &str, plural: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.velero.io"),
            "labels": {"component": "velero"}},
        "spec": {"group": "velero.io", "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_ascii_lowercase(),
                "listKind": format!("{kind}List")},
            // Velero's CRDs have no status subresource: the server updates the object.
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    })
}

/// The CRDs a Velero install brings that the tool looks for
/// (`backups.velero.io`, `restores.velero.io`).
pub fn crds() -> Vec<Value> {
    vec![crd("Backup", "backups"), crd("Restore", "restores")]
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// One pass of the restore controller.
pub(crate) fn pass(
    api: &Api,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let (Some(restore_t), Some(backup_t)) =
        (api.type_by_kind("Restore"), api.type_by_kind("Backup"))
    else {
        return Ok(());
    };
    if restore_t.group != "velero.io" {
        return Ok(());
    }
    let restores = api
        .store
        .list(&restore_t.prefix())
        .map(|(items, _)| items)
        .unwrap_or_default();
    for (_, r) in restores {
        let ns = s(&r, "/metadata/namespace").to_string();
        let name = s(&r, "/metadata/name").to_string();
        let phase = s(&r, "/status/phase").to_string();
        match phase.as_str() {
            "" | "New" => {
                let backup = s(&r, "/spec/backupName").to_string();
                let found = api
                    .store
                    .get(&backup_t.key(Some(&ns), &backup))
                    .ok()
                    .flatten();
                let status = if found.is_some() {
                    json!({"phase": "InProgress", "startTimestamp": now(),
                        "progress": {"totalItems": 0, "itemsRestored": 0}})
                } else {
                    json!({"phase": "FailedValidation",
                        "validationErrors": [format!("Error retrieving backup: backups.velero.io \"{backup}\" not found")]})
                };
                api.sim_write(&restore_t, Some(&ns), &name, |o| o["status"] = status)?;
            }
            "InProgress" => {
                let gen = r
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if !due(format!("velero-restore/{ns}/{name}"), gen, RESTORE) {
                    continue;
                }
                // The fault rides on the Restore or on the Backup it restores.
                let fault = "/metadata/annotations/lab.endsys.dev~1fault";
                let backup = api
                    .store
                    .get(&backup_t.key(Some(&ns), s(&r, "/spec/backupName")))
                    .ok()
                    .flatten()
                    .unwrap_or(Value::Null);
                let fails =
                    s(&r, fault) == "partially-fails" || s(&backup, fault) == "partially-fails";
                api.sim_write(&restore_t, Some(&ns), &name, |o| {
                    let st = &mut o["status"];
                    st["completionTimestamp"] = json!(now());
                    st["progress"] = json!({"totalItems": 12, "itemsRestored": 12});
                    if fails {
                        st["phase"] = json!("PartiallyFailed");
                        st["errors"] = json!(1);
                    } else {
                        st["phase"] = json!("Completed");
                        st["warnings"] = json!(0);
                    }
                })?;
            }
            // Terminal phases stay as they are.
            _ => {}
        }
    }
    Ok(())
}
