//! Velero restores on a lab cluster brought up by `up`: without Velero's CRDs a
//! clear refusal; a restore suspends the app's Kustomizations, restores from the
//! latest backup covering the namespace and resumes them; a re-run follows the
//! same Restore; a partially failed restore leaves the app suspended.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/recover.rs"]
mod recover_fixture;

use endsys_bootstrap::engine::{Doctor, Emitter, StepId};
use endsys_bootstrap::flows::velero::{restore_apps, VeleroError, VeleroOptions, SUSPENDED_BY};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use recover_fixture::{
    apply, ar, client, create_app, fixture, install_crds, kustomization_ar, WAIT,
};
use serde_json::{json, Value};

fn backup(name: &str, ns: &str, completed: &str, fault: Option<&str>) -> Value {
    let mut b = json!({"apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "velero"},
        "spec": {"includedNamespaces": [ns]},
        "status": {"phase": "Completed", "completionTimestamp": completed}});
    if let Some(f) = fault {
        b["metadata"]["annotations"] = json!({"lab.endsys.dev/fault": f});
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_restore_suspends_restores_and_resumes() {
    let f = fixture(224, 0.0, StepId::Apiserver, "velero").await;
    let c = client(f.dir.path()).await;
    let em = Emitter::new();
    let vo = VeleroOptions {
        namespace: "velero".into(),
        deadline: WAIT,
    };
    // Without Velero's CRDs: a clear refusal, nothing changed.
    let e = restore_apps(&c, &["photos".into()], &vo, &em)
        .await
        .unwrap_err();
    assert!(
        matches!(e, VeleroError::CrdsMissing { ref missing } if missing.len() == 2),
        "{e}"
    );
    assert!(
        e.explain().contains("restores.velero.io"),
        "{}",
        e.explain()
    );

    install_crds(&c, endsys_lab::kube::velero::crds()).await;
    create_app(&c, "media", true).await;
    apply(
        &c,
        &ar("", "v1", "Namespace", "namespaces"),
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "velero"}}),
    )
    .await;
    let backups: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "velero",
        &ar("velero.io", "v1", "Backup", "backups"),
    );
    for b in [
        backup("daily-1", "photos", "2026-05-01T03:00:00Z", None),
        backup("daily-2", "photos", "2026-05-02T03:00:00Z", None),
        backup("other-3", "books", "2026-05-03T03:00:00Z", None),
        backup(
            "media-1",
            "media",
            "2026-05-02T03:00:00Z",
            Some("partially-fails"),
        ),
    ] {
        backups
            .create(&PostParams::default(), &serde_json::from_value(b).unwrap())
            .await
            .unwrap();
    }
    // Follow spec.suspend of photos/app from here on.
    let ks: Api<DynamicObject> = Api::namespaced_with(c.clone(), "photos", &kustomization_ar());
    let (seen_tx, mut seen) = tokio::sync::watch::channel(Vec::<bool>::new());
    let follower = {
        let ks = ks.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=app");
            let mut s = Box::pin(kube::runtime::watcher(ks, cfg));
            while let Some(Ok(ev)) = s.next().await {
                if let kube::runtime::watcher::Event::Apply(o)
                | kube::runtime::watcher::Event::InitApply(o) = ev
                {
                    let v = o.data.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
                    seen_tx.send_if_modified(|s| {
                        let changed = s.last() != Some(&v);
                        if changed {
                            s.push(v);
                        }
                        changed
                    });
                }
            }
        })
    };
    // The watch has its initial state before anything changes.
    tokio::time::timeout(WAIT, seen.wait_for(|s| !s.is_empty()))
        .await
        .unwrap()
        .unwrap();
    let out = restore_apps(&c, &["photos".into()], &vo, &em)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].backup, "daily-2",
        "the latest backup covering photos"
    );
    assert_eq!(out[0].phase, "Completed");
    assert_eq!(out[0].resumed, vec!["photos/app".to_string()]);
    let app = ks.get("app").await.unwrap();
    assert_eq!(
        app.data.pointer("/spec/suspend").and_then(Value::as_bool),
        Some(false)
    );
    assert!(!app
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(SUSPENDED_BY));
    // The watch saw suspend go true, then false.
    let history = tokio::time::timeout(WAIT, seen.wait_for(|s| s.len() >= 3))
        .await
        .expect("suspend and resume seen")
        .unwrap()
        .clone();
    assert_eq!(history, [false, true, false]);
    follower.abort();
    // A re-run follows the existing Restore instead of creating another.
    let again = restore_apps(&c, &["photos".into()], &vo, &em)
        .await
        .unwrap();
    assert_eq!(again[0].restore, out[0].restore);
    let restores: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "velero",
        &ar("velero.io", "v1", "Restore", "restores"),
    );
    assert_eq!(
        restores
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // PartiallyFailed: reported, and the app stays suspended for inspection.
    let e = restore_apps(&c, &["media".into()], &vo, &em)
        .await
        .unwrap_err();
    assert!(
        matches!(e, VeleroError::RestoreFailed { ref phase, .. } if phase == "PartiallyFailed"),
        "{e}"
    );
    let media: Api<DynamicObject> = Api::namespaced_with(c.clone(), "media", &kustomization_ar());
    let app = media.get("app").await.unwrap();
    assert_eq!(
        app.data.pointer("/spec/suspend").and_then(Value::as_bool),
        Some(true)
    );
    // No backup covering the namespace: refused.
    let e = restore_apps(&c, &["nothing".into()], &vo, &em)
        .await
        .unwrap_err();
    assert!(matches!(e, VeleroError::NoBackup { .. }), "{e}");
}
