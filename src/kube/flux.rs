//! Flux's custom resources as this tool reads them: the API resources (no
//! typed structs: the tool reads a few status fields, and Flux versions add
//! fields freely) and the condition accessor every reader uses.

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

/// An API resource by group, version, kind and plural.
pub fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// `kustomize.toolkit.fluxcd.io/v1` Kustomization.
pub fn kustomizations() -> ApiResource {
    resource(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    )
}

/// `helm.toolkit.fluxcd.io/v2` HelmRelease.
pub fn helmreleases() -> ApiResource {
    resource(
        "helm.toolkit.fluxcd.io",
        "v2",
        "HelmRelease",
        "helmreleases",
    )
}

/// `source.toolkit.fluxcd.io/v1` GitRepository.
pub fn gitrepositories() -> ApiResource {
    resource(
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
        "gitrepositories",
    )
}

/// flux-operator's `fluxcd.controlplane.io/v1` FluxInstance.
pub fn fluxinstances() -> ApiResource {
    resource(
        "fluxcd.controlplane.io",
        "v1",
        "FluxInstance",
        "fluxinstances",
    )
}

/// The string at a JSON pointer, "" when absent.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// (status, reason, message) of the condition of type `t`.
pub fn condition(v: &Value, t: &str) -> Option<(String, String, String)> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| str_at(c, "/type") == t)
        .map(|c| {
            (
                str_at(c, "/status").to_string(),
                str_at(c, "/reason").to_string(),
                str_at(c, "/message").to_string(),
            )
        })
}

/// Ready=True for the current generation (the check Flux's own dependsOn does).
pub fn ready_now(v: &Value) -> bool {
    let generation = v.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = v
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    condition(v, "Ready").is_some_and(|c| c.0 == "True")
        && (generation.is_none() || generation == observed)
}

pub fn ready_text(v: &Value) -> String {
    match condition(v, "Ready") {
        Some((st, reason, msg)) => format!("Ready={st} {reason}: {msg}"),
        None => "no Ready condition yet (waiting to be reconciled)".into(),
    }
}
