//! Velero restores per app, after a cluster rebuild: Flux brings an app back
//! empty; its data comes back from the latest Velero backup. Per app namespace:
//! suspend its Flux Kustomizations (so Flux does not fight the restore), create a
//! Velero `Restore` from the latest completed `Backup` covering the namespace,
//! wait until it is `Completed`, resume the Kustomizations.
//!
//! [`runbook`] prints those steps as commands; [`restore_apps`] carries them out
//! when Velero's CRDs are installed. Re-runs are safe: the Restore is named after
//! namespace and backup and followed if it exists; only Kustomizations this tool
//! suspended (marked with [`SUSPENDED_BY`]) are resumed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};

use crate::kube::flux::{self as kflux, resource, str_at};
use kube::core::ApiResource;
use serde_json::{json, Value};

use crate::engine::{Emitter, StepId, Wait};
use endsys_core::Doctor;

/// Annotation on a Kustomization this tool suspended for a restore (value: the Restore).
pub const SUSPENDED_BY: &str = "endsys.dev/suspended-for-restore";

/// The CRDs that must be served.
pub const VELERO_CRDS: [&str; 2] = ["backups.velero.io", "restores.velero.io"];

const STEP: StepId = StepId::Run;

/// Knobs of the restore automation.
#[derive(Debug, Clone)]
pub struct VeleroOptions {
    /// Where Velero keeps its Backups and Restores.
    pub namespace: String,
    /// How long one Restore may take.
    pub deadline: Duration,
}

impl Default for VeleroOptions {
    fn default() -> Self {
        Self {
            namespace: "velero".into(),
            deadline: Duration::from_secs(60 * 60),
        }
    }
}

/// What happened for one app namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRestore {
    pub namespace: String,
    pub backup: String,
    pub restore: String,
    /// `ns/name` of the Kustomizations suspended for the restore and resumed after it.
    pub resumed: Vec<String>,
    /// Suspended before this tool came (by the operator): left suspended.
    pub left_suspended: Vec<String>,
    pub phase: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VeleroError {
    #[error("Velero is not installed: CRD(s) {} not served; nothing was changed", .missing.join(", "))]
    CrdsMissing { missing: Vec<String> },
    #[error("{namespace}: no Completed Velero Backup in namespace {velero} covers this namespace; nothing was changed for it")]
    NoBackup { namespace: String, velero: String },
    #[error("{namespace}: Restore {velero}/{restore} ended {phase}{detail}; its Kustomizations stay suspended")]
    RestoreFailed {
        namespace: String,
        velero: String,
        restore: String,
        phase: String,
        detail: String,
    },
    #[error("{namespace}: Restore {restore} still {phase} after {after:?}; its Kustomizations stay suspended")]
    Timeout {
        namespace: String,
        restore: String,
        phase: String,
        after: Duration,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Doctor for VeleroError {
    fn likely_cause(&self) -> String {
        match self {
            VeleroError::CrdsMissing { .. } => "Flux has not installed Velero yet (layer 5), or the cluster does not use Velero".into(),
            VeleroError::NoBackup { .. } => "no backup schedule includes this namespace, or Velero has not synced its backups from object storage yet".into(),
            VeleroError::RestoreFailed { .. } => "some items could not be restored (existing objects, missing storage class, volume snapshot errors)".into(),
            VeleroError::Timeout { .. } => "large volumes, or the Velero server is not running".into(),
            VeleroError::Kube { .. } => "the Kubernetes API refused or failed the request".into(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            VeleroError::CrdsMissing { .. } => "wait until Flux reports velero Ready (`status`), then run the same command again".into(),
            VeleroError::NoBackup { namespace, velero } => format!("`kubectl -n {velero} get backups.velero.io`; check the backup location is available, then retry (nothing of {namespace} was changed)"),
            VeleroError::RestoreFailed { velero, restore, .. } => format!("`velero -n {velero} restore describe {restore} --details`; fix, delete the Restore and retry, or resume the Kustomizations with `flux resume kustomization`"),
            VeleroError::Timeout { .. } => "`kubectl -n velero logs deploy/velero`; run the same command again to keep following the Restore".into(),
            VeleroError::Kube { .. } => "check the API server is reachable and re-run; the steps are idempotent".into(),
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> VeleroError {
    let what = what.into();
    move |e| VeleroError::Kube {
        what,
        source: Box::new(e),
    }
}

fn backups() -> ApiResource {
    resource("velero.io", "v1", "Backup", "backups")
}
fn restores() -> ApiResource {
    resource("velero.io", "v1", "Restore", "restores")
}

/// The Velero CRDs the API does not serve (empty: Velero is installed).
pub async fn missing_crds(client: &kube::Client) -> Result<Vec<String>, VeleroError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in VELERO_CRDS {
        if api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("CustomResourceDefinition {name}")))?
            .is_none()
        {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}

/// One Flux Kustomization and the app namespace it deploys into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKustomization {
    pub namespace: String,
    pub name: String,
    /// `spec.targetNamespace`, else its own namespace.
    pub app_namespace: String,
    pub suspended: bool,
    pub ours: bool,
}

impl AppKustomization {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Every Kustomization, by app namespace (empty when Flux's CRD is absent).
pub async fn apps(
    client: &kube::Client,
) -> Result<BTreeMap<String, Vec<AppKustomization>>, VeleroError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kflux::kustomizations());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(BTreeMap::new()),
        Err(e) => return Err(kube_err("list Kustomizations")(e)),
    };
    let mut out: BTreeMap<String, Vec<AppKustomization>> = BTreeMap::new();
    for k in list.items {
        let namespace = k.metadata.namespace.clone().unwrap_or_default();
        let target = str_at(&k.data, "/spec/targetNamespace");
        let app_namespace = if target.is_empty() {
            namespace.clone()
        } else {
            target.to_string()
        };
        let ks = AppKustomization {
            name: k.metadata.name.clone().unwrap_or_default(),
            suspended: k.data.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true),
            ours: k
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SUSPENDED_BY)),
            namespace,
            app_namespace: app_namespace.clone(),
        };
        out.entry(app_namespace).or_default().push(ks);
    }
    Ok(out)
}

/// The restore steps for each app, as commands an operator can run by hand.
pub fn runbook(apps: &BTreeMap<String, Vec<AppKustomization>>, velero: &str) -> String {
    let mut s = String::from(
        "Velero restore, per app (after the rebuild, once Flux reports the app's Kustomizations Ready):\n",
    );
    for (ns, ks) in apps {
        s.push_str(&format!("\n  {ns}:\n"));
        for k in ks {
            s.push_str(&format!(
                "    flux suspend kustomization {} -n {}\n",
                k.name, k.namespace
            ));
        }
        s.push_str(&format!(
            "    kubectl -n {velero} get backups.velero.io --sort-by=.status.completionTimestamp   # latest Completed backup covering {ns}\n"
        ));
        s.push_str(&format!(
            "    velero -n {velero} restore create restore-{ns}-<BACKUP> --from-backup <BACKUP> --include-namespaces {ns} --wait\n"
        ));
        s.push_str(&format!(
            "    velero -n {velero} restore describe restore-{ns}-<BACKUP>   # Phase: Completed; PartiallyFailed = stop here and read --details\n"
        ));
        for k in ks {
            s.push_str(&format!(
                "    flux resume kustomization {} -n {}\n",
                k.name, k.namespace
            ));
        }
        s.push_str(&format!(
            "    # automated: endsys-bootstrap recover --velero-restore {ns}\n"
        ));
    }
    if apps.is_empty() {
        s.push_str("  (no Flux Kustomization found yet)\n");
    }
    s
}

/// DNS-1123 name of at most 63 characters.
fn restore_name(ns: &str, backup: &str) -> String {
    let raw = format!("restore-{ns}-{backup}");
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if name.len() > 63 {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
        name.truncate(54);
        name = format!("{}-{}", name.trim_end_matches('-'), &h[..8]);
    }
    name.trim_end_matches('-').to_string()
}

/// The latest Completed Backup whose scope includes `ns`.
async fn latest_backup(
    client: &kube::Client,
    ns: &str,
    velero: &str,
) -> Result<Option<String>, VeleroError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), velero, &backups());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list Velero Backups"))?;
    let covers = |b: &DynamicObject| {
        let list = |p: &str| -> Vec<String> {
            b.data
                .pointer(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let inc = list("/spec/includedNamespaces");
        let exc = list("/spec/excludedNamespaces");
        (inc.is_empty() || inc.iter().any(|n| n == ns || n == "*")) && !exc.iter().any(|n| n == ns)
    };
    let mut done: Vec<(String, String)> = list
        .items
        .iter()
        .filter(|b| str_at(&b.data, "/status/phase") == "Completed" && covers(b))
        .map(|b| {
            let at = match str_at(&b.data, "/status/completionTimestamp") {
                "" => b
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                t => t.to_string(),
            };
            (at, b.metadata.name.clone().unwrap_or_default())
        })
        .collect();
    // RFC 3339 UTC timestamps sort as strings.
    done.sort();
    Ok(done.pop().map(|(_, n)| n))
}

async fn set_suspend(
    client: &kube::Client,
    k: &AppKustomization,
    suspend: bool,
    restore: &str,
) -> Result<(), VeleroError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &k.namespace, &kflux::kustomizations());
    // The annotation marks what this tool suspended, so a re-run resumes only that.
    let body = if suspend {
        json!({"metadata": {"annotations": {SUSPENDED_BY: restore}}, "spec": {"suspend": true}})
    } else {
        json!({"metadata": {"annotations": {SUSPENDED_BY: null}}, "spec": {"suspend": false}})
    };
    api.patch(&k.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(kube_err(format!("Kustomization {}", k.id())))?;
    Ok(())
}

const TERMINAL: [&str; 4] = ["Completed", "PartiallyFailed", "Failed", "FailedValidation"];

/// Suspend → Restore from the latest backup → wait Completed → resume, for each
/// namespace in turn. Refuses when Velero's CRDs are not served.
pub async fn restore_apps(
    client: &kube::Client,
    namespaces: &[String],
    opts: &VeleroOptions,
    em: &Emitter,
) -> Result<Vec<AppRestore>, VeleroError> {
    let missing = missing_crds(client).await?;
    if !missing.is_empty() {
        return Err(VeleroError::CrdsMissing { missing });
    }
    let velero = opts.namespace.as_str();
    let mut out = Vec::new();
    for ns in namespaces {
        let t0 = Instant::now();
        let Some(backup) = latest_backup(client, ns, velero).await? else {
            return Err(VeleroError::NoBackup {
                namespace: ns.clone(),
                velero: velero.into(),
            });
        };
        let restore = restore_name(ns, &backup);
        let ks: Vec<AppKustomization> = apps(client).await?.remove(ns).unwrap_or_default();
        let mut ours = Vec::new();
        let mut left = Vec::new();
        for k in &ks {
            if k.suspended && !k.ours {
                left.push(k.id());
                continue;
            }
            if !k.suspended {
                set_suspend(client, k, true, &restore).await?;
            }
            em.progress(
                STEP,
                Some(ns),
                format!("Kustomization {} suspended", k.id()),
            );
            ours.push(k.clone());
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), velero, &restores());
        let existing = api
            .get_opt(&restore)
            .await
            .map_err(kube_err(format!("Restore {velero}/{restore}")))?;
        if existing.is_none() {
            let mut obj = DynamicObject::new(&restore, &restores()).within(velero);
            obj.metadata.labels = Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "endsys-bootstrap".to_string(),
                )]
                .into(),
            );
            obj.data = json!({"spec": {"backupName": backup, "includedNamespaces": [ns], "restorePVs": true}});
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                // Created by a run killed a moment ago: follow it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_err(format!("create Restore {velero}/{restore}"))(e)),
            }
            em.progress(
                STEP,
                Some(ns),
                format!("Restore {velero}/{restore} created from backup {backup}"),
            );
        } else {
            em.progress(
                STEP,
                Some(ns),
                format!("Restore {velero}/{restore} exists: following it"),
            );
        }
        em.waiting(
            STEP,
            Some(ns),
            format!("Restore {velero}/{restore} to complete"),
        );
        let cond = |o: Option<&DynamicObject>| {
            o.is_some_and(|o| TERMINAL.contains(&str_at(&o.data, "/status/phase")))
        };
        // Followed on a watch of the Restore, bounded by the deadline.
        let wait = Wait::new(
            format!("Restore {velero}/{restore}"),
            "complete",
            opts.deadline,
        );
        let waited = wait
            .bounded(kube::runtime::wait::await_condition(
                api.clone(),
                &restore,
                cond,
            ))
            .await;
        let obj = match waited {
            None => {
                let phase = api
                    .get_opt(&restore)
                    .await
                    .ok()
                    .flatten()
                    .map(|o| str_at(&o.data, "/status/phase").to_string())
                    .unwrap_or_default();
                return Err(VeleroError::Timeout {
                    namespace: ns.clone(),
                    restore,
                    phase,
                    after: opts.deadline,
                });
            }
            Some(Err(e)) => {
                return Err(VeleroError::Kube {
                    what: format!("watch Restore {velero}/{restore}"),
                    source: Box::new(e),
                })
            }
            Some(Ok(o)) => o,
        };
        let data = obj.map(|o| o.data).unwrap_or(Value::Null);
        let phase = str_at(&data, "/status/phase").to_string();
        if phase != "Completed" {
            let mut detail = String::new();
            if let Some(n) = data.pointer("/status/errors").and_then(Value::as_i64) {
                detail.push_str(&format!(" with {n} error(s)"));
            }
            if let Some(v) = data
                .pointer("/status/validationErrors")
                .and_then(Value::as_array)
            {
                let msgs: Vec<&str> = v.iter().filter_map(Value::as_str).collect();
                detail.push_str(&format!(": {}", msgs.join("; ")));
            }
            return Err(VeleroError::RestoreFailed {
                namespace: ns.clone(),
                velero: velero.into(),
                restore,
                phase,
                detail,
            });
        }
        for k in &ours {
            set_suspend(client, k, false, &restore).await?;
            em.progress(STEP, Some(ns), format!("Kustomization {} resumed", k.id()));
        }
        em.progress(
            STEP,
            Some(ns),
            format!(
                "restored from backup {backup} in {:.1}s",
                t0.elapsed().as_secs_f64()
            ),
        );
        out.push(AppRestore {
            namespace: ns.clone(),
            backup,
            restore,
            resumed: ours.iter().map(AppKustomization::id).collect(),
            left_suspended: left,
            phase,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_names_are_dns_labels() {
        assert_eq!(
            restore_name("immich", "daily-2026"),
            "restore-immich-daily-2026"
        );
        let long = restore_name("a-very-long-namespace-name", &"b".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert!(long
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_eq!(restore_name("Ns_1", "x"), "restore-ns-1-x");
    }

    #[test]
    fn runbook_names_every_step() {
        let mut apps = BTreeMap::new();
        apps.insert(
            "immich".to_string(),
            vec![AppKustomization {
                namespace: "immich".into(),
                name: "immich".into(),
                app_namespace: "immich".into(),
                suspended: false,
                ours: false,
            }],
        );
        let r = runbook(&apps, "velero");
        for want in [
            "flux suspend kustomization immich -n immich",
            "--include-namespaces immich",
            "flux resume kustomization immich -n immich",
            "recover --velero-restore immich",
        ] {
            assert!(r.contains(want), "{want}\n{r}");
        }
    }
}
