//! The lab's Flux: the simulated API plays flux-operator and the source,
//! kustomize and helm controllers.
//!
//! - flux-operator: once a FluxInstance exists (its CRD from
//!   [`fluxinstance_crd`]), the Flux CRDs are registered, the controller
//!   Deployments of `spec.components` are created in the instance's namespace
//!   (they roll out like any Deployment: they need schedulable nodes, i.e. a
//!   CNI), and the sync `GitRepository` and `Kustomization` (named
//!   `spec.sync.name`, default the namespace) are applied from `spec.sync`. The
//!   instance turns Ready (`ReconciliationSucceeded`) once the sync source has
//!   an artifact and every controller is rolled out, with `components`,
//!   `lastAppliedRevision` (`v<distribution>@sha256:…`) and an inventory.
//! - source-controller: a GitRepository's `spec.url` is fetched from the lab's
//!   Git host ([`git`], [`super::KubeLab::serve_git`]); `file://` URLs and plain
//!   paths are directories on disk. The artifact revision is
//!   `<ref>@sha1:<commit>` (a tree hash when the directory is no Git checkout);
//!   an unknown URL fails with `GitOperationFailed` as source-controller does.
//! - kustomize-controller: Kustomizations are reconciled in `dependsOn` order
//!   with Flux's dependency check, after a delay (× time scale): SOPS decryption
//!   needs the `spec.decryption.secretRef` Secret with an `age.agekey` whose
//!   recipient is one of every `*.sops.yaml` file's recipients; the build of
//!   `spec.path` (the lab's own `kustomize build`, [`kustomize`]) applies
//!   Namespaces, Flux Kustomizations and HelmReleases
//!   (labelled with the applying Kustomization, as kustomize-controller does);
//!   `wait` / `healthChecks` wait for those HelmReleases.
//! - helm-controller ([`helm`]): HelmReleases install (adopting the objects a
//!   tool applied with Helm ownership metadata) or upgrade after a delay, after
//!   their `dependsOn`, writing Helm's release Secrets.
//!
//! Faults ride on the objects (annotation [`FAULT`]): `never-ready` keeps a
//! Kustomization failing its health check forever; `install-fails` makes a
//! HelmRelease's install fail (Stalled, RetriesExceeded, once its remediation
//! retries are used up). A missing `sops-age` Secret fails every Kustomization
//! that decrypts with it, with Flux's message.

pub(crate) mod git;
mod helm;
pub mod kustomize;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::server::{now, Api};
use super::store::ApiError;
use super::types::ResType;

/// Annotation that injects a fault into a Kustomization or HelmRelease.
pub const FAULT: &str = "lab.endsys.dev/fault";

const FLUX_INSTANCE: f64 = 1.0;
const SOURCE_FETCH: f64 = 0.5;
const KS_APPLY: f64 = 1.0;
const HR_INSTALL: f64 = 1.5;

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
/// [`super::KubeLab::serve_git`]), ref `refs/heads/main`, at `path` — the shape
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

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn gen(v: &Value) -> i64 {
    v.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn list(api: &Api, t: &ResType) -> Vec<Value> {
    api.store
        .list(&t.prefix())
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default()
}

fn get(api: &Api, t: &ResType, ns: &str, name: &str) -> Option<Value> {
    api.store.get(&t.key(Some(ns), name)).ok().flatten()
}

fn ready_of(v: &Value) -> Option<(String, String)> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| (s(c, "/status").to_string(), s(c, "/reason").to_string()))
}

fn is_ready(v: &Value) -> bool {
    ready_of(v).is_some_and(|r| r.0 == "True")
        && v.pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            == Some(gen(v))
}

fn stalled(v: &Value) -> bool {
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
fn set_status(
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
fn apply_spec(api: &Api, t: &ResType, obj: Value) -> Result<(), ApiError> {
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
fn reconcile_instance(
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

/// source-controller: fetches a GitRepository from the lab's Git host.
fn reconcile_source(
    api: &Api,
    ty: &Types,
    g: &Value,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    if is_ready(g) && !s(g, "/status/artifact/revision").is_empty() {
        return Ok(());
    }
    let ns = s(g, "/metadata/namespace");
    let name = s(g, "/metadata/name");
    if !due(format!("git/{ns}/{name}"), gen(g), SOURCE_FETCH) {
        return Ok(());
    }
    let url = s(g, "/spec/url");
    match api.shared.git_fetch(url, g.pointer("/spec/ref")) {
        Ok(fetched) => {
            let rev = fetched.revision;
            let digest = hex::encode(Sha256::digest(rev.as_bytes()));
            set_status(
                api,
                &ty.git,
                g,
                &[(
                    "Ready",
                    "True",
                    "Succeeded",
                    format!("stored artifact for revision '{rev}'"),
                )],
                json!({"observedGeneration": gen(g),
                    "artifact": {"revision": rev, "path": format!("gitrepository/{ns}/{name}/{}.tar.gz", &digest[..40]),
                        "url": format!("http://source-controller.flux-system.svc.cluster.local./gitrepository/{ns}/{name}/{}.tar.gz", &digest[..40]),
                        "digest": format!("sha256:{digest}"), "lastUpdateTime": now()}}),
            )
        }
        Err(e) => set_status(
            api,
            &ty.git,
            g,
            &[
                (
                    "Ready",
                    "False",
                    "GitOperationFailed",
                    format!(
                        "failed to checkout and determine revision: unable to clone '{url}': {}",
                        e.0
                    ),
                ),
                ("Stalled", "False", "GitOperationFailed", String::new()),
            ],
            json!({"observedGeneration": gen(g)}),
        ),
    }
}

/// One pass of the Flux controllers. `due(key, generation, base)` says whether
/// a step's delay is over (and schedules a wake-up when it is not).
pub(crate) fn pass(
    api: &Api,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let Some(fi_t) = api.type_by_kind("FluxInstance") else {
        return Ok(());
    };
    let instances = list(api, &fi_t);
    if instances.is_empty() {
        return Ok(());
    }
    if let Some(crd_t) = api.type_by_kind("CustomResourceDefinition") {
        for c in flux_crds() {
            api.sim_create(&crd_t, c)?;
        }
    }
    let (Some(git_t), Some(ks_t), Some(hr_t), Some(secret_t), Some(ns_t), Some(deploy_t)) = (
        api.type_by_kind("GitRepository"),
        api.type_by_kind("Kustomization"),
        api.type_by_kind("HelmRelease"),
        api.type_by_kind("Secret"),
        api.type_by_kind("Namespace"),
        api.type_by_kind("Deployment"),
    ) else {
        return Ok(()); // CRDs not established yet; their establishment wakes us.
    };
    let types = Types {
        git: git_t,
        ks: ks_t,
        hr: hr_t,
        secret: secret_t,
        ns: ns_t,
        deploy: deploy_t,
    };

    // flux-operator.
    for fi in &instances {
        reconcile_instance(api, &fi_t, &types, fi, due)?;
    }

    // source-controller.
    for g in list(api, &types.git) {
        reconcile_source(api, &types, &g, due)?;
    }

    // kustomize-controller.
    let all_ks = list(api, &types.ks);
    let by_key: BTreeMap<(String, String), &Value> = all_ks
        .iter()
        .map(|k| {
            (
                (
                    s(k, "/metadata/namespace").to_string(),
                    s(k, "/metadata/name").to_string(),
                ),
                k,
            )
        })
        .collect();
    for ks in &all_ks {
        reconcile_ks(api, &types, ks, &by_key, due)?;
    }

    // helm-controller.
    let all_hr = list(api, &types.hr);
    for hr in &all_hr {
        helm::reconcile_hr(api, &types, hr, &all_hr, due)?;
    }
    Ok(())
}

struct Types {
    git: ResType,
    ks: ResType,
    hr: ResType,
    secret: ResType,
    ns: ResType,
    deploy: ResType,
}

fn fail(
    api: &Api,
    t: &ResType,
    obj: &Value,
    reason: &str,
    msg: String,
    extra: Value,
) -> Result<(), ApiError> {
    set_status(api, t, obj, &[("Ready", "False", reason, msg)], extra)
}

fn reconcile_ks(
    api: &Api,
    ty: &Types,
    ks: &Value,
    all: &BTreeMap<(String, String), &Value>,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let ns = s(ks, "/metadata/namespace").to_string();
    let name = s(ks, "/metadata/name").to_string();
    let g = gen(ks);
    if ks.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let src_ns = match s(ks, "/spec/sourceRef/namespace") {
        "" => ns.as_str(),
        n => n,
    };
    let src_name = s(ks, "/spec/sourceRef/name");
    let source = get(api, &ty.git, src_ns, src_name);
    let rev = source
        .as_ref()
        .filter(|g| is_ready(g))
        .map(|g| s(g, "/status/artifact/revision").to_string())
        .filter(|r| !r.is_empty());
    if is_ready(ks) && rev.as_deref() == Some(s(ks, "/status/lastAppliedRevision")) {
        return Ok(()); // Up to date: nothing to do (a re-run changes nothing).
    }
    let Some(rev) = rev else {
        return fail(
            api,
            &ty.ks,
            ks,
            "ArtifactFailed",
            format!(
                "Source artifact not found, retrying in 30s (GitRepository {src_ns}/{src_name})"
            ),
            json!({}),
        );
    };
    // Flux's dependency check.
    for d in ks
        .pointer("/spec/dependsOn")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let dns = match s(&d, "/namespace") {
            "" => ns.clone(),
            n => n.to_string(),
        };
        let dname = s(&d, "/name").to_string();
        let msg = match all.get(&(dns.clone(), dname.clone())) {
            None => Some(format!(
                "dependency '{dns}/{dname}' not found: kustomizations.kustomize.toolkit.fluxcd.io \"{dname}\" not found"
            )),
            Some(dep) => {
                let same_source = s(dep, "/spec/sourceRef/name") == src_name
                    && match s(dep, "/spec/sourceRef/namespace") {
                        "" => s(dep, "/metadata/namespace"),
                        n => n,
                    } == src_ns;
                if !is_ready(dep) {
                    Some(format!("dependency '{dns}/{dname}' is not ready"))
                } else if same_source && s(dep, "/status/lastAppliedRevision") != rev {
                    Some(format!("dependency '{dns}/{dname}' revision is not up to date"))
                } else {
                    None
                }
            }
        };
        if let Some(msg) = msg {
            return fail(api, &ty.ks, ks, "DependencyNotReady", msg, json!({}));
        }
    }
    let repo = source
        .as_ref()
        .and_then(|g| api.shared.git_dir(s(g, "/spec/url")))
        .unwrap_or_default();
    let path = s(ks, "/spec/path").trim_start_matches("./").to_string();
    let target = s(ks, "/spec/targetNamespace").to_string();
    let docs = match kustomize::build_for(
        &repo,
        &repo.join(&path),
        Some(target.as_str()).filter(|t| !t.is_empty()),
    ) {
        Ok(d) => d,
        Err(e) => {
            let (reason, msg) = e.flux_condition();
            return fail(
                api,
                &ty.ks,
                ks,
                reason,
                msg,
                json!({"lastAttemptedRevision": rev}),
            );
        }
    };
    // SOPS: the decryption Secret must exist and hold an age identity that is a
    // recipient of every encrypted file.
    if s(ks, "/spec/decryption/provider") == "sops" {
        let secret = s(ks, "/spec/decryption/secretRef/name");
        if !secret.is_empty() {
            // The lab stands in for the common component that copies the Secret
            // into every namespace: it also looks in flux-system.
            let found = get(api, &ty.secret, &ns, secret)
                .or_else(|| get(api, &ty.secret, "flux-system", secret));
            let identity = found.as_ref().and_then(age_recipient);
            let Some(recipient) = identity else {
                let exists = found.is_some();
                let msg = if exists {
                    format!("decryption secret error: Secret '{ns}/{secret}' has no valid age identity in 'age.agekey'")
                } else {
                    format!("decryption secret error: secrets \"{secret}\" not found")
                };
                return fail(
                    api,
                    &ty.ks,
                    ks,
                    "BuildFailed",
                    msg,
                    json!({"lastAttemptedRevision": rev}),
                );
            };
            for doc in &docs {
                let Some(rs) = doc.value.pointer("/sops/age").and_then(Value::as_array) else {
                    continue;
                };
                if !rs.iter().any(|r| s(r, "/recipient") == recipient) {
                    return fail(
                        api,
                        &ty.ks,
                        ks,
                        "BuildFailed",
                        format!("failed to decrypt and format '{}': no age identity in Secret '{ns}/{secret}' matches the file's recipients", doc.file.display()),
                        json!({"lastAttemptedRevision": rev}),
                    );
                }
            }
        }
    }
    if !due(format!("ks/{ns}/{name}"), g, KS_APPLY) {
        if ready_of(ks).is_none_or(|r| r.1 != "Progressing") {
            set_status(
                api,
                &ty.ks,
                ks,
                &[
                    (
                        "Ready",
                        "Unknown",
                        "Progressing",
                        "Reconciliation in progress".into(),
                    ),
                    (
                        "Reconciling",
                        "True",
                        "Progressing",
                        format!("Fetched revision: {rev}"),
                    ),
                ],
                json!({"lastAttemptedRevision": rev}),
            )?;
        }
        return Ok(());
    }
    // Apply: Namespaces first, then Flux objects, labelled with their applier.
    let mut inventory = Vec::new();
    let mut hrs = Vec::new();
    let mut ordered: Vec<&kustomize::BuiltDoc> = docs.iter().collect();
    ordered.sort_by_key(|d| s(&d.value, "/kind") != "Namespace");
    for kustomize::BuiltDoc {
        value: doc,
        namespace: ns_override,
        ..
    } in ordered
    {
        let kind = s(doc, "/kind");
        let api_version = s(doc, "/apiVersion");
        let t = match (kind, api_version.split('/').next().unwrap_or("")) {
            ("Namespace", _) => &ty.ns,
            ("Kustomization", "kustomize.toolkit.fluxcd.io") => &ty.ks,
            ("HelmRelease", "helm.toolkit.fluxcd.io") => &ty.hr,
            _ => continue,
        };
        let mut obj = doc.clone();
        let oname = s(doc, "/metadata/name").to_string();
        if kind == "Namespace" {
            api.sim_create(t, obj)?;
            inventory.push(json!({"id": format!("_{oname}__Namespace"), "v": "v1"}));
            continue;
        }
        // The build already carries spec.targetNamespace (the root
        // kustomization's namespace) and every kustomization's namespace.
        let ons = [
            ns_override.clone(),
            Some(s(doc, "/metadata/namespace").to_string()).filter(|n| !n.is_empty()),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_else(|| ns.clone());
        obj["metadata"]["namespace"] = json!(ons);
        obj["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] = json!(name);
        obj["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"] = json!(ns);
        if let Err(e) = api.sim_create(t, obj.clone()) {
            return fail(
                api,
                &ty.ks,
                ks,
                "ReconciliationFailed",
                format!("{kind}/{ons}/{oname} apply failed: {}", e.message),
                json!({"lastAttemptedRevision": rev}),
            );
        }
        // Changed in Git: update the spec (a new generation).
        let spec = obj.get("spec").cloned().unwrap_or(json!({}));
        api.sim_write(t, Some(&ons), &oname, |o| {
            if o.get("spec") != Some(&spec) {
                o["spec"] = spec.clone();
                o["metadata"]["generation"] = json!(gen(o) + 1);
            }
        })?;
        let group = api_version.split('/').next().unwrap_or("");
        inventory.push(json!({"id": format!("{ons}_{oname}_{group}_{kind}"), "v": api_version.split('/').nth(1).unwrap_or("")}));
        if kind == "HelmRelease" {
            hrs.push((ons, oname));
        }
    }
    let status = json!({"lastAttemptedRevision": rev, "inventory": {"entries": inventory}});
    if ks
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(FAULT))
        .and_then(Value::as_str)
        == Some("never-ready")
    {
        return fail(
            api,
            &ty.ks,
            ks,
            "HealthCheckFailed",
            format!("health check failed after 5m0s: timeout waiting for: [Deployment/{}/{name} status: 'InProgress']", if target.is_empty() { &ns } else { &target }),
            status,
        );
    }
    let wait = ks.pointer("/spec/wait").and_then(Value::as_bool) == Some(true)
        || ks
            .pointer("/spec/healthChecks")
            .and_then(Value::as_array)
            .is_some_and(|h| !h.is_empty());
    if wait {
        let mut pending = Vec::new();
        for (hns, hname) in &hrs {
            match get(api, &ty.hr, hns, hname) {
                Some(h) if is_ready(&h) => {}
                Some(h) if stalled(&h) => {
                    return fail(
                        api,
                        &ty.ks,
                        ks,
                        "HealthCheckFailed",
                        format!("health check failed after 0s: failed early due to stalled resources: [HelmRelease/{hns}/{hname} status: 'Failed']"),
                        status,
                    )
                }
                _ => pending.push(format!("HelmRelease/{hns}/{hname} status: 'InProgress'")),
            }
        }
        if !pending.is_empty() {
            return set_status(
                api,
                &ty.ks,
                ks,
                &[
                    (
                        "Ready",
                        "Unknown",
                        "Progressing",
                        "Reconciliation in progress".into(),
                    ),
                    (
                        "Reconciling",
                        "True",
                        "Progressing",
                        format!("Health check in progress: [{}]", pending.join(", ")),
                    ),
                ],
                status,
            );
        }
    }
    let mut status = status;
    status["lastAppliedRevision"] = json!(rev);
    status["observedGeneration"] = json!(g);
    set_status(
        api,
        &ty.ks,
        ks,
        &[(
            "Ready",
            "True",
            "ReconciliationSucceeded",
            format!("Applied revision: {rev}"),
        )],
        status,
    )
}

/// The age recipient of the identity in a `sops-age` Secret.
fn age_recipient(secret: &Value) -> Option<String> {
    use base64::Engine;
    let key = match secret.pointer("/data/age.agekey").and_then(Value::as_str) {
        Some(b64) => {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?
        }
        None => secret
            .pointer("/stringData/age.agekey")
            .and_then(Value::as_str)?
            .to_string(),
    };
    let line = key
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))?;
    let id: age::x25519::Identity = line.parse().ok()?;
    Some(id.to_public().to_string())
}
