//! The lab's helm-controller: a HelmRelease becomes a Helm release.
//!
//! There is no chart to render, so a release's objects are the ones already in
//! the cluster that carry its `meta.helm.sh/release-name` annotation — exactly
//! the objects a tool installed with `helm template` + server-side apply and
//! Helm's ownership metadata. With no release Secret in storage Helm *installs*:
//! it takes ownership of those objects (helm-controller's default; with
//! `spec.install.disableTakeOwnership` it validates their ownership metadata
//! first and refuses like Helm), keeps them (same UIDs), applies them with its
//! own field manager, stamps helm-controller's origin labels and writes the
//! release Secret `sh.helm.release.v1.<release>.v1`. With a release in storage
//! it *upgrades* to the next version. Releases with no objects (applications)
//! install the same way.

use std::io::Write as _;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::objects::{fail, gen, get, is_ready, list, s, set_status, stalled, Types, FAULT};
use crate::kube::server::{now, Api};
use crate::kube::store::ApiError;
use crate::kube::types::ResType;

const HR_INSTALL: f64 = 1.5;

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const RELEASE_NAME: &str = "meta.helm.sh/release-name";
const RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
const ORIGIN_NAME: &str = "helm.toolkit.fluxcd.io/name";
const ORIGIN_NAMESPACE: &str = "helm.toolkit.fluxcd.io/namespace";
/// helm-controller's field manager.
const MANAGER: &str = "helm-controller";
/// Helm's limit on release names; helm-controller shortens longer ones.
const MAX_RELEASE_NAME: usize = 53;
/// History entries kept (helm-controller's default `maxHistory`).
const MAX_HISTORY: usize = 5;

/// Kinds that are never part of a release's manifest: cluster bookkeeping,
/// and CRDs (Helm installs `crds/` outside the release).
const NOT_IN_RELEASES: &[&str] = &[
    "Event",
    "Node",
    "Lease",
    "Endpoints",
    "EndpointSlice",
    "CustomResourceDefinition",
];

/// Where a HelmRelease's Helm release lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    pub name: String,
    /// The release namespace (objects and ownership annotations).
    pub namespace: String,
    /// Where the release Secrets are stored.
    pub storage: String,
}

/// helm-controller's `ShortenName`: names past 53 characters keep 40 and get a
/// hash suffix.
fn shorten(name: &str) -> String {
    if name.len() <= MAX_RELEASE_NAME {
        return name.to_string();
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let head: String = name.chars().take(40).collect();
    format!("{head}-{}", &hash[..12]).to_ascii_lowercase()
}

/// Release name and namespaces as helm-controller derives them.
pub(crate) fn release_of(hr: &Value) -> Release {
    let ns = s(hr, "/metadata/namespace");
    let name = s(hr, "/metadata/name");
    let target = s(hr, "/spec/targetNamespace");
    let rel_name = match (s(hr, "/spec/releaseName"), target) {
        ("", "") => name.to_string(),
        ("", t) => format!("{t}-{name}"),
        (r, _) => r.to_string(),
    };
    let or_ns = |v: &str| {
        if v.is_empty() {
            ns.to_string()
        } else {
            v.to_string()
        }
    };
    Release {
        name: shorten(&rel_name),
        namespace: or_ns(target),
        storage: or_ns(s(hr, "/spec/storageNamespace")),
    }
}

/// The chart a HelmRelease installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chart {
    pub name: String,
    pub version: String,
}

/// Chart name and version from `spec.chart.spec`, or from `spec.chartRef` (an
/// OCIRepository: name from its URL, version from its tag) — tolerant of
/// whatever is missing.
fn chart_of(api: &Api, hr: &Value) -> Chart {
    let fallback_version = "0.1.0";
    let name = s(hr, "/spec/chart/spec/chart");
    if !name.is_empty() {
        let version = match s(hr, "/spec/chart/spec/version") {
            "" => fallback_version,
            v => v,
        };
        return Chart {
            name: name.to_string(),
            version: version.to_string(),
        };
    }
    let ref_name = s(hr, "/spec/chartRef/name");
    if ref_name.is_empty() {
        return Chart {
            name: s(hr, "/metadata/name").to_string(),
            version: fallback_version.to_string(),
        };
    }
    let ref_ns = match s(hr, "/spec/chartRef/namespace") {
        "" => s(hr, "/metadata/namespace"),
        n => n,
    };
    let source = api
        .type_by_kind(match s(hr, "/spec/chartRef/kind") {
            "" => "OCIRepository",
            k => k,
        })
        .and_then(|t| get(api, &t, ref_ns, ref_name));
    let from_url = source
        .as_ref()
        .map(|o| s(o, "/spec/url").trim_end_matches('/'))
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && !n.contains(':'));
    let version = source
        .as_ref()
        .map(|o| s(o, "/spec/ref/tag"))
        .filter(|t| !t.is_empty())
        .unwrap_or(fallback_version);
    Chart {
        name: from_url.unwrap_or(ref_name).to_string(),
        version: version.to_string(),
    }
}

/// The release's Secrets in storage, newest version first.
fn stored(api: &Api, secret_t: &ResType, rel: &Release) -> Vec<(i64, Value)> {
    let mut out: Vec<(i64, Value)> = api
        .store
        .list(&secret_t.list_prefix(Some(&rel.storage)))
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|o| {
            s(o, "/metadata/labels/owner") == "helm" && s(o, "/metadata/labels/name") == rel.name
        })
        .filter_map(|o| {
            let v = s(&o, "/metadata/labels/version").parse().ok()?;
            Some((v, o))
        })
        .collect();
    out.sort_by_key(|(v, _)| -v);
    out
}

/// Objects in the cluster that carry the release's name annotation.
fn release_objects(api: &Api, rel: &Release) -> Vec<(ResType, Value)> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in api.types() {
        // Every served version of a resource shares one stored object.
        if NOT_IN_RELEASES.contains(&t.kind.as_str()) || !seen.insert(t.prefix()) {
            continue;
        }
        for o in list(api, &t) {
            let storage = s(&o, "/type") == "helm.sh/release.v1";
            if !storage && meta_value(&o, "annotations", RELEASE_NAME) == Some(rel.name.as_str()) {
                out.push((t.clone(), o));
            }
        }
    }
    out
}

/// A JSON pointer segment for a key with `/` in it.
fn ptr(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn meta_value<'a>(o: &'a Value, field: &str, key: &str) -> Option<&'a str> {
    o.pointer(&format!("/metadata/{field}/{}", ptr(key)))
        .and_then(Value::as_str)
}

/// Helm's `requireValue`.
fn require_value(actual: Option<&str>, key: &str, want: &str) -> Option<String> {
    match actual {
        None => Some(format!("missing key \"{key}\": must be set to \"{want}\"")),
        Some(a) if a != want => Some(format!(
            "key \"{key}\" must equal \"{want}\": current value is \"{a}\""
        )),
        Some(_) => None,
    }
}

/// Helm's `checkOwnership` + `existingResourceConflict` message for one object
/// (None: it may be imported).
fn ownership_error(t: &ResType, o: &Value, rel: &Release) -> Option<String> {
    let mut errs = Vec::new();
    if let Some(e) = require_value(meta_value(o, "labels", MANAGED_BY), MANAGED_BY, "Helm") {
        errs.push(format!("label validation error: {e}"));
    }
    for (key, want) in [
        (RELEASE_NAME, &rel.name),
        (RELEASE_NAMESPACE, &rel.namespace),
    ] {
        if let Some(e) = require_value(meta_value(o, "annotations", key), key, want) {
            errs.push(format!("annotation validation error: {e}"));
        }
    }
    if errs.is_empty() {
        return None;
    }
    Some(format!(
        "{} \"{}\" in namespace \"{}\" exists and cannot be imported into the current release: invalid ownership metadata; {}",
        t.kind,
        s(o, "/metadata/name"),
        s(o, "/metadata/namespace"),
        errs.join("; ")
    ))
}

/// Helm applies the object as its own (server-side, conflicts forced) with the
/// ownership metadata and helm-controller's origin labels. Values the tool
/// applied stay shared with the tool's field manager, so the tool re-applying
/// the same object is a no-op.
fn take_ownership(
    api: &Api,
    t: &ResType,
    obj: &Value,
    rel: &Release,
    hr: &Value,
) -> Result<(), ApiError> {
    let mut cfg = obj.clone();
    if let Some(m) = cfg.as_object_mut() {
        m.remove("status");
    }
    if let Some(md) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
        md.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    let labels = [
        (MANAGED_BY, "Helm"),
        (ORIGIN_NAME, s(hr, "/metadata/name")),
        (ORIGIN_NAMESPACE, s(hr, "/metadata/namespace")),
    ];
    for (k, v) in labels {
        cfg["metadata"]["labels"][k] = json!(v);
    }
    cfg["metadata"]["annotations"][RELEASE_NAME] = json!(rel.name);
    cfg["metadata"]["annotations"][RELEASE_NAMESPACE] = json!(rel.namespace);
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    api.sim_apply(t, ns, s(obj, "/metadata/name"), &cfg, MANAGER)?;
    Ok(())
}

/// Helm's release record (the JSON inside the storage Secret).
fn release_record(rel: &Release, chart: &Chart, version: i64, first: &str, action: &str) -> Value {
    let t = now();
    json!({
        "name": rel.name, "namespace": rel.namespace, "version": version,
        "info": {"first_deployed": first, "last_deployed": t, "deleted": "",
            "description": if action == "install" { "Install complete" } else { "Upgrade complete" },
            "status": "deployed"},
        "chart": {"metadata": {"apiVersion": "v2", "name": chart.name, "version": chart.version,
            "appVersion": chart.version}},
        "config": {}, "manifest": "", "apply_method": "ssa",
    })
}

/// Helm's storage encoding: gzip, then base64 (the Secret's data is that text).
fn encode_record(record: &Value) -> Result<String, ApiError> {
    let raw = serde_json::to_vec(record).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let zipped = gz
        .finish()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(b64.encode(b64.encode(zipped)))
}

fn release_secret(rel: &Release, version: i64, record: &Value) -> Result<Value, ApiError> {
    Ok(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {"name": format!("sh.helm.release.v1.{}.v{version}", rel.name),
            "namespace": rel.storage,
            "labels": {"owner": "helm", "name": rel.name, "status": "deployed",
                "version": version.to_string(), "modifiedAt": crate::kube::server::unix_now().to_string()}},
        "data": {"release": encode_record(record)?},
    }))
}

fn digest(v: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    )
}

/// What a failed attempt reports.
struct Failure {
    action: &'static str,
    detail: String,
}

/// Records a failed install/upgrade like helm-controller: Ready and Released
/// False; once the remediation retries are used up (default 0), Stalled with
/// RetriesExceeded. The same failure seen again is not a new attempt (the lab
/// retries when something changes, not on a timer).
fn record_failure(
    api: &Api,
    ty: &Types,
    hr: &Value,
    rel: &Release,
    chart: &Chart,
    f: Failure,
) -> Result<(), ApiError> {
    let g = gen(hr);
    let (reason, counter) = match f.action {
        "install" => ("InstallFailed", "installFailures"),
        _ => ("UpgradeFailed", "upgradeFailures"),
    };
    let msg = format!(
        "Helm {} failed for release {}/{} with chart {}@{}: {}",
        f.action, rel.namespace, rel.name, chart.name, chart.version, f.detail
    );
    let same_attempt = s(hr, "/status/lastAttemptedReleaseAction") == f.action
        && hr
            .pointer("/status/lastAttemptedGeneration")
            .and_then(Value::as_i64)
            == Some(g)
        && hr
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| s(c, "/type") == "Ready" && s(c, "/message") == msg)
            });
    if same_attempt {
        return Ok(());
    }
    let before = if hr
        .pointer("/status/lastAttemptedGeneration")
        .and_then(Value::as_i64)
        == Some(g)
    {
        hr.pointer(&format!("/status/{counter}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    } else {
        0
    };
    let failures = before + 1;
    let retries = hr
        .pointer(&format!("/spec/{}/remediation/retries", f.action))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let exhausted = retries >= 0 && failures > retries;
    let mut conds = vec![
        ("Ready", "False", reason, msg.clone()),
        ("Released", "False", reason, msg.clone()),
    ];
    if exhausted {
        conds.push((
            "Stalled",
            "True",
            "RetriesExceeded",
            format!("Failed to {} after {failures} attempt(s)", f.action),
        ));
    } else {
        conds.push(("Reconciling", "True", "ProgressingWithRetry", msg));
    }
    let mut fields = json!({"observedGeneration": g, "lastAttemptedGeneration": g,
        "lastAttemptedRevision": chart.version, "lastAttemptedReleaseAction": f.action,
        "storageNamespace": rel.storage});
    fields[counter] = json!(failures);
    set_status(api, &ty.hr, hr, &conds, fields)
}

/// One HelmRelease: wait for dependencies and the install delay, then install
/// or upgrade.
pub(super) fn reconcile_hr(
    api: &Api,
    ty: &Types,
    hr: &Value,
    all: &[Value],
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let ns = s(hr, "/metadata/namespace").to_string();
    let name = s(hr, "/metadata/name").to_string();
    let g = gen(hr);
    let observed = hr
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        == Some(g);
    if is_ready(hr) || (stalled(hr) && observed) {
        return Ok(()); // Done for this generation: a re-run changes nothing.
    }
    if hr.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    if let Some(msg) = dependency_not_ready(hr, &ns, all) {
        return fail(api, &ty.hr, hr, "DependencyNotReady", msg, json!({}));
    }
    if !due(format!("hr/{ns}/{name}"), g, HR_INSTALL) {
        return mark_progressing(api, ty, hr);
    }
    let rel = release_of(hr);
    let chart = chart_of(api, hr);
    let history = stored(api, &ty.secret, &rel);
    let action = if history.is_empty() {
        "install"
    } else {
        "upgrade"
    };
    let fault = s(hr, &format!("/metadata/annotations/{}", ptr(FAULT)));
    if fault == "install-fails" {
        let detail = "context deadline exceeded".to_string();
        return record_failure(api, ty, hr, &rel, &chart, Failure { action, detail });
    }
    if let Err(detail) = run_action(api, ty, hr, &rel, action) {
        return record_failure(api, ty, hr, &rel, &chart, Failure { action, detail });
    }
    let version = history.first().map(|(v, _)| v + 1).unwrap_or(1);
    let first = hr
        .pointer("/status/history/0/firstDeployed")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(now);
    let record = release_record(&rel, &chart, version, &first, action);
    if let Err(e) = api.sim_create(&ty.secret, release_secret(&rel, version, &record)?) {
        let detail = format!("create: failed to create: {}", e.message);
        return record_failure(api, ty, hr, &rel, &chart, Failure { action, detail });
    }
    for (_, old) in &history {
        api.sim_write(
            &ty.secret,
            Some(&rel.storage),
            s(old, "/metadata/name"),
            |o| {
                if s(o, "/metadata/labels/status") == "deployed" {
                    o["metadata"]["labels"]["status"] = json!("superseded");
                }
            },
        )?;
    }
    mark_released(api, ty, hr, &rel, &chart, action, version, &first, &record)
}

fn dependency_not_ready(hr: &Value, ns: &str, all: &[Value]) -> Option<String> {
    let deps = hr.pointer("/spec/dependsOn").and_then(Value::as_array)?;
    deps.iter().find_map(|d| {
        let dns = match s(d, "/namespace") {
            "" => ns,
            n => n,
        };
        let dname = s(d, "/name");
        let dep = all
            .iter()
            .find(|h| s(h, "/metadata/namespace") == dns && s(h, "/metadata/name") == dname);
        (!dep.is_some_and(is_ready)).then(|| format!("dependency '{dns}/{dname}' is not ready"))
    })
}

fn mark_progressing(api: &Api, ty: &Types, hr: &Value) -> Result<(), ApiError> {
    let progressing = hr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/reason") == "Progressing")
        });
    if progressing {
        return Ok(());
    }
    set_status(
        api,
        &ty.hr,
        hr,
        &[
            (
                "Ready",
                "Unknown",
                "Progressing",
                "Fulfilling prerequisites".into(),
            ),
            (
                "Reconciling",
                "True",
                "Progressing",
                "Fulfilling prerequisites".into(),
            ),
        ],
        json!({}),
    )
}

/// The Kubernetes side of an install/upgrade: the release namespace must exist
/// and the existing objects are adopted (validated first when take-ownership is
/// off for an install). Err is Helm's error text.
fn run_action(
    api: &Api,
    ty: &Types,
    hr: &Value,
    rel: &Release,
    action: &str,
) -> Result<(), String> {
    if get(api, &ty.ns, "", &rel.namespace).is_none() {
        return Err(format!(
            "create: failed to create: namespaces \"{}\" not found",
            rel.namespace
        ));
    }
    let objects = release_objects(api, rel);
    let validate = action == "install"
        && hr
            .pointer("/spec/install/disableTakeOwnership")
            .and_then(Value::as_bool)
            == Some(true);
    if validate {
        if let Some(e) = objects.iter().find_map(|(t, o)| ownership_error(t, o, rel)) {
            return Err(format!("unable to continue with install: {e}"));
        }
    }
    for (t, o) in &objects {
        take_ownership(api, t, o, rel, hr).map_err(|e| e.message)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn mark_released(
    api: &Api,
    ty: &Types,
    hr: &Value,
    rel: &Release,
    chart: &Chart,
    action: &str,
    version: i64,
    first: &str,
    record: &Value,
) -> Result<(), ApiError> {
    let g = gen(hr);
    let (reason, verb) = match action {
        "install" => ("InstallSucceeded", "install"),
        _ => ("UpgradeSucceeded", "upgrade"),
    };
    let msg = format!(
        "Helm {verb} succeeded for release {}/{}.v{version} with chart {}@{}",
        rel.namespace, rel.name, chart.name, chart.version
    );
    let config_digest = digest(hr.pointer("/spec/values").unwrap_or(&json!({})));
    let snapshot = json!({
        "name": rel.name, "namespace": rel.namespace, "version": version, "status": "deployed",
        "chartName": chart.name, "chartVersion": chart.version, "appVersion": chart.version,
        "configDigest": config_digest, "firstDeployed": first,
        "lastDeployed": s(record, "/info/last_deployed"), "digest": digest(record),
    });
    let mut history = vec![snapshot];
    if let Some(old) = hr.pointer("/status/history").and_then(Value::as_array) {
        history.extend(old.iter().take(MAX_HISTORY - 1).cloned());
    }
    let mut fields = json!({"observedGeneration": g, "lastAttemptedGeneration": g,
        "lastAttemptedRevision": chart.version, "lastAttemptedConfigDigest": config_digest,
        "lastAttemptedReleaseAction": action, "storageNamespace": rel.storage,
        "history": history, "installFailures": null, "upgradeFailures": null});
    if !s(hr, "/spec/chart/spec/chart").is_empty() {
        let src_ns = match s(hr, "/spec/chart/spec/sourceRef/namespace") {
            "" => s(hr, "/metadata/namespace"),
            n => n,
        };
        fields["helmChart"] = json!(format!(
            "{src_ns}/{}-{}",
            s(hr, "/metadata/namespace"),
            s(hr, "/metadata/name")
        ));
    }
    set_status(
        api,
        &ty.hr,
        hr,
        &[
            ("Ready", "True", reason, msg.clone()),
            ("Released", "True", reason, msg),
        ],
        fields,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_follow_helm_controller() {
        let hr = |spec: Value| json!({"metadata": {"name": "cilium", "namespace": "kube-system"}, "spec": spec});
        assert_eq!(
            release_of(&hr(json!({}))),
            Release {
                name: "cilium".into(),
                namespace: "kube-system".into(),
                storage: "kube-system".into()
            }
        );
        let t = release_of(&hr(
            json!({"targetNamespace": "net", "storageNamespace": "flux-system"}),
        ));
        assert_eq!(
            (t.name.as_str(), t.namespace.as_str(), t.storage.as_str()),
            ("net-cilium", "net", "flux-system")
        );
        assert_eq!(
            release_of(&hr(json!({"releaseName": "x", "targetNamespace": "net"}))).name,
            "x"
        );
        let long = release_of(&hr(json!({"releaseName": "a".repeat(60)}))).name;
        assert_eq!(long.len(), 53);
        assert!(long.starts_with(&"a".repeat(40)));
    }

    #[test]
    fn ownership_errors_read_like_helm() {
        let t = crate::kube::types::builtins()
            .into_iter()
            .find(|t| t.kind == "ConfigMap")
            .expect("ConfigMap");
        let rel = Release {
            name: "demo".into(),
            namespace: "default".into(),
            storage: "default".into(),
        };
        let ok = json!({"metadata": {"name": "c", "namespace": "default",
            "labels": {MANAGED_BY: "Helm"},
            "annotations": {RELEASE_NAME: "demo", RELEASE_NAMESPACE: "default"}}});
        assert_eq!(ownership_error(&t, &ok, &rel), None);
        let mut other = ok.clone();
        other["metadata"]["annotations"][RELEASE_NAMESPACE] = json!("other");
        assert_eq!(
            ownership_error(&t, &other, &rel).expect("conflict"),
            "ConfigMap \"c\" in namespace \"default\" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key \"meta.helm.sh/release-namespace\" must equal \"default\": current value is \"other\""
        );
        let bare = json!({"metadata": {"name": "c", "namespace": "default", "annotations": {RELEASE_NAME: "demo"}}});
        let e = ownership_error(&t, &bare, &rel).expect("bare");
        assert!(e.contains("label validation error: missing key \"app.kubernetes.io/managed-by\": must be set to \"Helm\"; annotation validation error: missing key \"meta.helm.sh/release-namespace\": must be set to \"default\""), "{e}");
    }

    #[test]
    fn release_secrets_decode_like_helm_storage() {
        use std::io::Read as _;
        let rel = Release {
            name: "cilium".into(),
            namespace: "kube-system".into(),
            storage: "kube-system".into(),
        };
        let chart = Chart {
            name: "cilium".into(),
            version: "1.19.5".into(),
        };
        let rec = release_record(&rel, &chart, 2, "t0", "upgrade");
        let sec = release_secret(&rel, 2, &rec).expect("secret");
        assert_eq!(sec["metadata"]["name"], "sh.helm.release.v1.cilium.v2");
        assert_eq!(sec["metadata"]["labels"]["version"], "2");
        let b64 = base64::engine::general_purpose::STANDARD;
        let inner = b64.decode(s(&sec, "/data/release")).expect("outer");
        let zipped = b64.decode(inner).expect("inner");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_string(&mut text)
            .expect("gzip");
        let back: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back["version"], 2);
        assert_eq!(back["info"]["status"], "deployed");
        assert_eq!(back["chart"]["metadata"]["version"], "1.19.5");
    }
}
