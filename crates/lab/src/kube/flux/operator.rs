//! The lab's flux-operator: the FluxInstance CRD and instances (as the
//! flux-operator and flux-instance charts install and render them), the Flux
//! CRDs registered once an instance exists, the controller Deployments of
//! `spec.components` (image tags of the pinned Flux distribution), the sync
//! GitRepository and Kustomization from `spec.sync`, and the instance's status
//! (`ReconciliationSucceeded` with components, `lastAppliedRevision` and an
//! inventory, once the source has an artifact and every controller rolled out).

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::objects::{apply_spec, gen, get, is_ready, s, set_status, Types};
use crate::kube::server::Api;
use crate::kube::store::ApiError;
use crate::kube::types::ResType;

const FLUX_INSTANCE: f64 = 1.0;

fn crd(group: &str, kind: &str, plural: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"name": v, "served": true, "storage": i == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}"),
            "labels": {"app.kubernetes.io/part-of": "flux", "app.kubernetes.io/instance": "flux-system"}},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_ascii_lowercase(), "listKind": format!("{kind}List")},
            "versions": vs},
    })
}

/// The FluxInstance CRD (what the flux-operator chart installs).
pub fn fluxinstance_crd() -> Value {
    crd(
        "fluxcd.controlplane.io",
        "FluxInstance",
        "fluxinstances",
        &["v1"],
    )
}

/// The Flux CRDs the lab registers when a FluxInstance appears.
pub fn flux_crds() -> Vec<Value> {
    vec![
        crd(
            "source.toolkit.fluxcd.io",
            "GitRepository",
            "gitrepositories",
            &["v1"],
        ),
        crd(
            "source.toolkit.fluxcd.io",
            "HelmRepository",
            "helmrepositories",
            &["v1"],
        ),
        crd(
            "source.toolkit.fluxcd.io",
            "OCIRepository",
            "ocirepositories",
            &["v1"],
        ),
        crd(
            "kustomize.toolkit.fluxcd.io",
            "Kustomization",
            "kustomizations",
            &["v1"],
        ),
        crd(
            "helm.toolkit.fluxcd.io",
            "HelmRelease",
            "helmreleases",
            &["v2"],
        ),
    ]
}

/// A FluxInstance syncing `dir` (a directory on disk) at `path`.
pub fn fluxinstance(dir: &Path, path: &str) -> Value {
    fluxinstance_for_url(&format!("file://{}", dir.display()), path)
}

/// A FluxInstance syncing the Git repository at `url` (serve it with
/// [`crate::kube::KubeLab::serve_git`]), ref `refs/heads/main`, at `path` — the shape
/// the flux-instance chart renders.
pub fn fluxinstance_for_url(url: &str, path: &str) -> Value {
    json!({
        "apiVersion": "fluxcd.controlplane.io/v1", "kind": "FluxInstance",
        "metadata": {"name": "flux", "namespace": "flux-system"},
        "spec": {
            "distribution": {"version": "2.8.8", "registry": "ghcr.io/fluxcd"},
            "components": DEFAULT_COMPONENTS,
            "sync": {"kind": "GitRepository", "url": url, "ref": "refs/heads/main", "path": path},
        },
    })
}

/// flux-operator's default components.
const DEFAULT_COMPONENTS: [&str; 4] = [
    "source-controller",
    "kustomize-controller",
    "helm-controller",
    "notification-controller",
];

/// Controller image tags the lab reports (it pulls nothing).
fn component_tag(name: &str) -> &'static str {
    match name {
        "source-controller" => "v1.8.4",
        "kustomize-controller" => "v1.8.3",
        "helm-controller" => "v1.5.3",
        "notification-controller" => "v1.8.3",
        "image-reflector-controller" => "v1.1.1",
        "image-automation-controller" => "v1.1.1",
        _ => "v1.0.0",
    }
}

/// The components a FluxInstance asks for (flux-operator's default four).
fn components(fi: &Value) -> Vec<String> {
    match fi.pointer("/spec/components").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => cs
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => DEFAULT_COMPONENTS.iter().map(|c| c.to_string()).collect(),
    }
}

fn controller_deployment(fi: &Value, component: &str, registry: &str, version: &str) -> Value {
    let ns = s(fi, "/metadata/namespace");
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": component, "namespace": ns, "labels": {
            "app.kubernetes.io/component": component, "app.kubernetes.io/instance": ns,
            "app.kubernetes.io/part-of": "flux", "app.kubernetes.io/version": version,
            "app.kubernetes.io/managed-by": "flux-operator",
            "fluxcd.controlplane.io/name": s(fi, "/metadata/name"),
            "fluxcd.controlplane.io/namespace": ns}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": component}},
            "template": {"metadata": {"labels": {"app": component}},
                "spec": {"serviceAccountName": component, "containers": [{"name": "manager",
                    "image": format!("{registry}/{component}:{}", component_tag(component))}]}}},
    })
}

/// A Deployment counts as rolled out the way kstatus says: observed, all
/// replicas updated and available.
fn rolled_out(d: &Value) -> bool {
    let n = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    n("/status/observedGeneration") == gen(d)
        && n("/status/updatedReplicas") >= want
        && n("/status/availableReplicas") >= want
}

fn inventory_id(ns: &str, name: &str, group: &str, kind: &str) -> String {
    format!("{ns}_{name}_{group}_{kind}")
}

/// flux-operator: applies the controllers and the sync objects, then reports
/// Ready once the sync source has an artifact and every controller rolled out.
pub(super) fn reconcile_instance(
    api: &Api,
    fi_t: &ResType,
    ty: &Types,
    fi: &Value,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let ns = s(fi, "/metadata/namespace").to_string();
    let sync_name = match s(fi, "/spec/sync/name") {
        "" => ns.clone(),
        n => n.to_string(),
    };
    let version = match s(fi, "/spec/distribution/version") {
        "" => "2.x".to_string(),
        v => v.to_string(),
    };
    let version = format!("v{}", version.trim_start_matches('v'));
    let registry = match s(fi, "/spec/distribution/registry") {
        "" => "ghcr.io/fluxcd",
        r => r,
    };
    let mut inventory = Vec::new();
    let mut status_components = Vec::new();
    let mut pending = Vec::new();
    for c in components(fi) {
        apply_spec(
            api,
            &ty.deploy,
            controller_deployment(fi, &c, registry, &version),
        )?;
        inventory.push(json!({"id": inventory_id(&ns, &c, "apps", "Deployment"), "v": "v1"}));
        let tag = component_tag(&c);
        let image = format!("{registry}/{c}");
        let digest = hex::encode(Sha256::digest(format!("{image}:{tag}").as_bytes()));
        status_components.push(json!({"name": c, "repository": image, "tag": tag,
            "digest": format!("sha256:{digest}")}));
        if !get(api, &ty.deploy, &ns, &c).is_some_and(|d| rolled_out(&d)) {
            pending.push(format!("Deployment/{ns}/{c} status: 'InProgress'"));
        }
    }
    let source_problem = apply_sync(api, ty, fi, &ns, &sync_name)?;
    if !s(fi, "/spec/sync/kind").is_empty() {
        inventory.push(json!({"id": inventory_id(&ns, &sync_name, "source.toolkit.fluxcd.io", "GitRepository"), "v": "v1"}));
        inventory.push(json!({"id": inventory_id(&ns, &sync_name, "kustomize.toolkit.fluxcd.io", "Kustomization"), "v": "v1"}));
    }
    let g = gen(fi);
    let revision = format!(
        "{version}@sha256:{}",
        hex::encode(Sha256::digest(
            serde_json::to_string(&status_components)
                .unwrap_or_default()
                .as_bytes()
        ))
    );
    let fields = json!({"observedGeneration": g, "lastAttemptedRevision": revision,
        "components": status_components, "inventory": {"entries": inventory}});
    match source_problem {
        Some(SyncState::Failed(msg)) => {
            return set_status(
                api,
                fi_t,
                fi,
                &[("Ready", "False", "HealthCheckFailed", msg)],
                fields,
            )
        }
        Some(SyncState::Fetching(item)) => pending.push(item),
        None => {}
    }
    if !pending.is_empty() || !due(format!("fi/{ns}"), g, FLUX_INSTANCE) {
        let msg = if pending.is_empty() {
            "Reconciliation in progress".to_string()
        } else {
            format!("Health check in progress: [{}]", pending.join(", "))
        };
        let mut fields = fields;
        if let Some(m) = fields.as_object_mut() {
            m.remove("observedGeneration");
        }
        return set_status(
            api,
            fi_t,
            fi,
            &[
                (
                    "Ready",
                    "Unknown",
                    "Progressing",
                    "Reconciliation in progress".into(),
                ),
                ("Reconciling", "True", "Progressing", msg),
            ],
            fields,
        );
    }
    let mut fields = fields;
    fields["lastAppliedRevision"] = json!(revision);
    set_status(
        api,
        fi_t,
        fi,
        &[(
            "Ready",
            "True",
            "ReconciliationSucceeded",
            "Reconciliation finished in 1s".into(),
        )],
        fields,
    )
}

/// How the sync source stands, when it keeps the instance from Ready.
enum SyncState {
    Fetching(String),
    Failed(String),
}

/// Applies the sync GitRepository and Kustomization from `spec.sync` (nothing
/// without one) and says how the source stands.
fn apply_sync(
    api: &Api,
    ty: &Types,
    fi: &Value,
    ns: &str,
    sync_name: &str,
) -> Result<Option<SyncState>, ApiError> {
    match s(fi, "/spec/sync/kind") {
        "" => return Ok(None),
        "GitRepository" => {}
        other => {
            return Ok(Some(SyncState::Failed(format!(
                "the lab's flux-operator syncs only from GitRepository sources, not {other}"
            ))))
        }
    }
    let labels = json!({"app.kubernetes.io/managed-by": "flux-operator",
        "fluxcd.controlplane.io/name": s(fi, "/metadata/name"),
        "fluxcd.controlplane.io/namespace": ns});
    let mut git_spec = json!({"interval": "1m", "url": s(fi, "/spec/sync/url"),
        "ref": {"name": s(fi, "/spec/sync/ref")}});
    if let Some(secret) = fi
        .pointer("/spec/sync/pullSecret")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        git_spec["secretRef"] = json!({ "name": secret });
    }
    apply_spec(
        api,
        &ty.git,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": sync_name, "namespace": ns, "labels": labels},
            "spec": git_spec}),
    )?;
    apply_spec(
        api,
        &ty.ks,
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": sync_name, "namespace": ns, "labels": labels},
            "spec": {"interval": "10m", "path": s(fi, "/spec/sync/path"), "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": sync_name}}}),
    )?;
    let item = format!("GitRepository/{ns}/{sync_name}");
    let Some(git) = get(api, &ty.git, ns, sync_name) else {
        return Ok(Some(SyncState::Fetching(format!(
            "{item} status: 'InProgress'"
        ))));
    };
    if is_ready(&git) {
        return Ok(None);
    }
    let failed = git
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| s(c, "/type") == "Ready" && s(c, "/status") == "False")
        })
        .map(|c| s(c, "/message").to_string());
    Ok(Some(match failed {
        Some(m) => SyncState::Failed(format!("{item} status: 'Failed': {m}")),
        None => SyncState::Fetching(format!("{item} status: 'InProgress'")),
    }))
}
