//! Tracker lag and footprint with 500 Kustomizations in the lab: the time from
//! a Kustomization turning Ready (status write answered) to the tracker
//! reporting it, the resident memory the tracker adds, and its CPU while
//! nothing changes. Figures are printed (`--nocapture`).

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::time::{Duration, Instant};

use endsys_bootstrap::gitops::{LayerMap, Tracker};
use endsys_lab::kube::flux;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kubelab::{client, up};
use serde_json::json;

const N: usize = 500;

fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_footprint_with_500_kustomizations() {
    let kc = up(203, "g203").await;
    let client = client(&kc.kubeconfig).await;
    let pp = PatchParams::apply("scale-test").force();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        "apps",
        &pp,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        ),
    )
    .await
    .expect("ns");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in flux::flux_crds() {
        let name = c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        crds.patch(&name, &pp, &Patch::Apply(c)).await.expect("crd");
        tokio::time::timeout(
            Duration::from_secs(20),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("established")
        .expect("watch");
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    );
    let ks: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &ar);
    for i in 0..N {
        let mut spec = json!({"path": format!("./apps/a{i}"), "interval": "1h"});
        if i > 0 {
            spec["dependsOn"] = json!([{"name": format!("a{}", i - 1)}]);
        }
        ks.patch(
            &format!("a{i}"),
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": format!("a{i}"), "namespace": "apps"}, "spec": spec}),
            ),
        )
        .await
        .expect("ks");
    }

    let rss_before = proc_field("/proc/self/status", "VmRSS:");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tracker = Tracker::new(client.clone(), LayerMap::endsys());
    let task = tokio::spawn(async move {
        tracker
            .wait_ready(Duration::from_secs(120), move |p| {
                let ready: usize = p.layers.iter().map(|l| l.ready).sum();
                let _ = tx.send((ready, Instant::now()));
            })
            .await
    });
    // Synced: the first report, nothing Ready.
    let (ready, _) = rx.recv().await.expect("first report");
    assert_eq!(ready, 0);
    let rss_synced = proc_field("/proc/self/status", "VmRSS:");

    // Idle: nothing changes for 2 s.
    let t0 = cpu_ticks();
    let idle = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(idle.is_err(), "no report while nothing changes");
    let idle_ticks = cpu_ticks() - t0;

    let mut lags = Vec::with_capacity(N);
    for i in 0..N {
        let status = json!({"status": {"observedGeneration": 1, "lastAppliedRevision": "main@sha1:0",
            "conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                "message": "Applied revision: main@sha1:0", "lastTransitionTime": "2026-11-26T00:00:00Z"}]}});
        // From before the status write: the watch event can beat its answer.
        let written = Instant::now();
        ks.patch_status(
            &format!("a{i}"),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .expect("status");
        loop {
            let (ready, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("reported in time")
                .expect("channel");
            if ready > i {
                lags.push(at.saturating_duration_since(written));
                break;
            }
        }
    }
    let done = task.await.expect("join").expect("all ready");
    assert!(done.all_ready());
    lags.sort();
    let p = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
    eprintln!(
        "FIGURES: {N} Kustomizations: tracker lag p50 {:?} p95 {:?} max {:?}; RSS before tracker {} kB, after sync {} kB (+{} kB); idle CPU over 2 s: {} ticks (1 tick = 10 ms, whole test process incl. lab)",
        p(0.5),
        p(0.95),
        lags[lags.len() - 1],
        rss_before,
        rss_synced,
        rss_synced.saturating_sub(rss_before),
        idle_ticks
    );
    assert!(p(0.95) < Duration::from_millis(250), "p95 {:?}", p(0.95));
    assert!(rss_synced.saturating_sub(rss_before) < 50 * 1024);
}
