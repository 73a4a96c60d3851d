//! The lab's kustomize-controller: Kustomizations reconciled after their source
//! has an artifact, with Flux's `dependsOn` check, the build of `spec.path` (the
//! lab's own `kustomize build`), SOPS decryption checked against the
//! `spec.decryption.secretRef` age identity, Namespaces, Kustomizations and
//! HelmReleases applied (labelled with the applying Kustomization) into an
//! inventory, and `wait` / `healthChecks` on those HelmReleases; conditions and
//! messages as kustomize-controller writes them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::kustomize;
use super::objects::{fail, gen, get, is_ready, ready_of, s, set_status, stalled, Types, FAULT};
use crate::kube::server::Api;
use crate::kube::store::ApiError;

const KS_APPLY: f64 = 1.0;

pub(super) fn reconcile_ks(
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
