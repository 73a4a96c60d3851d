//! Disaster recovery on the lab: a 3-control-plane cluster with Kubernetes
//! objects → etcd snapshot → every disk killed → `recover --snapshot` → the
//! objects are back (and still there after the restored node's reboot), 3 etcd
//! members, nodes Ready, Bootstrap called exactly once. A bad snapshot is refused
//! before any node is touched; a recovery killed at each step boundary and run
//! again converges; Velero restores suspend and resume the app's Kustomizations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{
    Cluster, ClusterSource, Doctor, Emitter, Event, EventKind, EventSink, FlowError, MemorySecrets,
    MemorySource, Outcome, StepId,
};
use endsys_bootstrap::flows::backup::take_backup;
use endsys_bootstrap::flows::recover::{self, recover, Phase, RecoverOptions, RecoverReport};
use endsys_bootstrap::flows::up::{up, UpOptions};
use endsys_bootstrap::flows::velero::{restore_apps, VeleroError, VeleroOptions, SUSPENDED_BY};
use endsys_bootstrap::snapshot::{check_snapshot, sidecar_path, BackupMeta, KubeRecord};
use endsys_bootstrap::talos::CallPolicy;
use endsys_lab::{Lab, LabOptions, NodeState};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn options(dir: &Path, until: StepId) -> UpOptions {
    let mut o = UpOptions::new(dir.to_path_buf());
    o.until = until;
    o.node_deadline = WAIT;
    o.reach_deadline = Duration::from_secs(30);
    o.etcd_deadline = WAIT;
    o.apiserver_deadline = WAIT;
    o.probe_timeout = Duration::from_secs(2);
    o.policy = CallPolicy {
        attempt_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    };
    o
}

/// A lab cluster brought up by `up`, with the objects a disaster must not lose.
struct Fixture {
    lab: Lab,
    src: Arc<MemorySource>,
    dir: tempfile::TempDir,
    opts: UpOptions,
    snapshot: PathBuf,
    meta: BackupMeta,
    scale: f64,
    /// `up` ran through the Flux layers (the app has no Kustomization of its own).
    flux: bool,
}

async fn lab(subnet: u8, scale: f64) -> Lab {
    Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, subnet, 11),
        port: 50000,
        talos_version: "v1.13.9".into(),
        time_scale: scale,
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

fn kustomization_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    )
}

async fn client(dir: &Path) -> kube::Client {
    let bytes = std::fs::read(dir.join("kubeconfig")).unwrap();
    endsys_bootstrap::kube::client_from_kubeconfig(&bytes)
        .await
        .unwrap()
}

async fn apply(c: &kube::Client, ar: &ApiResource, ns: Option<&str>, obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, ar),
        None => Api::all_with(c.clone(), ar),
    };
    api.patch(
        &name,
        &PatchParams::apply("day2-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Installs CRDs and waits until they are served.
async fn install_crds(c: &kube::Client, crds: Vec<Value>) {
    let crd_ar = ar(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        apply(c, &crd_ar, None, crd).await;
        let api: Api<DynamicObject> = Api::all_with(c.clone(), &crd_ar);
        let established = |o: Option<&DynamicObject>| {
            o.and_then(|o| o.data.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
        };
        tokio::time::timeout(
            WAIT,
            kube::runtime::wait::await_condition(api, &name, established),
        )
        .await
        .expect("CRD established")
        .unwrap();
    }
}

/// The objects of "before the disaster": an app namespace, a ConfigMap with data,
/// and (`with_ks`) its own Flux Kustomization. With Flux running the cluster's
/// Kustomizations come from the Git tree instead (a hand-made one pointing at a
/// path the tree lacks would never be Ready).
async fn create_app(c: &kube::Client, ns: &str, with_ks: bool) {
    let ns_ar = ar("", "v1", "Namespace", "namespaces");
    apply(
        c,
        &ns_ar,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    apply(
        c,
        &ar("", "v1", "ConfigMap", "configmaps"),
        Some(ns),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": ns},
            "data": {"albums": "1337"}}),
    )
    .await;
    if !with_ks {
        return;
    }
    apply(
        c,
        &kustomization_ar(),
        Some(ns),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"interval": "1h", "path": format!("./apps/{ns}/app"), "prune": true,
                "targetNamespace": ns,
                "sourceRef": {"kind": "GitRepository", "name": "flux-system", "namespace": "flux-system"}}}),
    )
    .await;
}

fn flux_kustomization_crd() -> Value {
    endsys_lab::kube::flux::flux_crds()
        .into_iter()
        .find(|c| c["metadata"]["name"] == "kustomizations.kustomize.toolkit.fluxcd.io")
        .unwrap()
}

/// `up` through `until`, objects created, snapshot + sidecar written.
async fn fixture(subnet: u8, scale: f64, until: StepId, name: &str) -> Fixture {
    let lab = lab(subnet, scale).await;
    let src = Arc::new(MemorySource::new(
        lab_definition(&lab, 3, name),
        Some(MemorySecrets::generate().unwrap()),
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), until);
    if until > StepId::Apiserver {
        let repo = dir.path().join("repo");
        endsys_lab::repository::write_repo(&repo).unwrap();
        if until > StepId::Layer1Done {
            // Layer 2 on: Flux fetches the lab repository from the lab's Git URL.
            lab.kube()
                .serve_git(endsys_lab::repository::GIT_URL, repo.clone());
        }
        opts.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).unwrap());
    }
    let flux = until > StepId::Layer1Done;
    up(&*src as &dyn ClusterSource, &opts, &Emitter::new())
        .await
        .expect("up");
    let c = client(dir.path()).await;
    if !flux {
        install_crds(&c, vec![flux_kustomization_crd()]).await;
    }
    create_app(&c, "photos", !flux).await;
    // The backup, as `etcd backup` takes it: the inventory through the state
    // directory's kubeconfig, then the snapshot, then the sidecar.
    let cluster = Cluster::load(&*src, dir.path()).unwrap();
    let snapshot = dir.path().join("etcd.db");
    let meta = take_backup(&cluster, opts.policy, &snapshot)
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    let inv = meta.kubernetes.inventory().expect("inventory recorded");
    assert!(inv.namespaces.contains(&"photos".to_string()), "{inv:?}");
    if flux {
        assert!(
            inv.kustomizations
                .contains(&"flux-system/flux-system".to_string()),
            "{inv:?}"
        );
    } else {
        assert_eq!(inv.kustomizations, ["photos/app"]);
    }
    assert!(inv.resource_version.is_some());
    Fixture {
        lab,
        src,
        dir,
        opts,
        snapshot,
        meta,
        scale,
        flux,
    }
}

/// Every disk dies: nodes power off, lose config and etcd data, boot into maintenance.
async fn disaster(lab: &Lab) {
    for n in lab.nodes() {
        n.wipe_disk().await;
        n.power_on().await;
    }
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Maintenance);
    }
}

fn recover_options(f: &Fixture, reset_nodes: bool) -> RecoverOptions {
    let mut o = RecoverOptions::new(f.opts.clone());
    o.snapshot = Some(f.snapshot.clone());
    o.reset_nodes = reset_nodes;
    o.verify_deadline = WAIT;
    o
}

/// The objects from before the disaster, read through the API.
async fn assert_objects_back(f: &Fixture) {
    let dir = f.dir.path();
    let c = client(dir).await;
    let cm: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "photos");
    let settings = cm
        .get("settings")
        .await
        .expect("ConfigMap from the snapshot");
    assert_eq!(settings.data.unwrap()["albums"], "1337");
    if !f.flux {
        let ks: Api<DynamicObject> = Api::namespaced_with(c, "photos", &kustomization_ar());
        ks.get("app")
            .await
            .expect("Kustomization from the snapshot");
    }
}

fn bootstrap_step(report: &RecoverReport) -> Outcome {
    report.up[0]
        .steps
        .iter()
        .find(|(s, _)| *s == StepId::Bootstrap)
        .map(|(_, o)| o.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wipe_everything_recover_brings_the_objects_back() {
    // Before the disaster: `up` through all five layers (Flux installed and
    // synced from the lab repository, every Kustomization and HelmRelease Ready).
    let f = fixture(221, 0.05, StepId::Adoption, "dr").await;
    let hr_before = helmreleases(&f.lab);
    assert_eq!(hr_before.len(), 14, "{hr_before:?}");
    let lab = &f.lab;
    let applies = lab.apply_calls();

    // A truncated snapshot, and one that does not match its sidecar: refused
    // before any node is touched (the nodes still run the live cluster).
    let cut = f.dir.path().join("cut.db");
    let bytes = std::fs::read(&f.snapshot).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let swapped = f.dir.path().join("swapped.db");
    std::fs::write(&swapped, &bytes).unwrap();
    std::fs::write(sidecar_path(&swapped), r#"{"sha256": "00"}"#).unwrap();
    for (file, want) in [(&cut, "sha256 checksum not found"), (&swapped, "sidecar")] {
        let mut o = recover_options(&f, true);
        o.snapshot = Some(file.clone());
        let e = recover(&*f.src as &dyn ClusterSource, &o, &Emitter::new())
            .await
            .unwrap_err();
        assert!(e.is_input_error(), "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(
            e.explain().contains("no node was touched"),
            "{}",
            e.explain()
        );
    }
    // A good snapshot while the nodes still run: refused by name without --reset-nodes.
    let e = recover(
        &*f.src as &dyn ClusterSource,
        &recover_options(&f, false),
        &Emitter::new(),
    )
    .await
    .unwrap_err();
    match &e {
        FlowError::NodesConfigured { nodes } => assert_eq!(nodes.len(), 3, "{e}"),
        other => panic!("{other}"),
    }
    assert!(e.explain().contains("--reset-nodes"), "{}", e.explain());
    assert_eq!(lab.apply_calls(), applies, "no node touched");
    assert!(lab.nodes().iter().all(|n| n.state() == NodeState::Running));
    assert!(recover::journal(f.dir.path())
        .unwrap()
        .is_some_and(|j| j.facts.phase == Phase::Checked));

    // The disaster, then the recovery.
    disaster(lab).await;
    assert_eq!(lab.etcd().cluster_count(), 0);
    let bootstraps = lab.bootstrap_calls();
    let em = Emitter::new();
    let layers = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    em.add_sink(Box::new(Layers(layers.clone())));
    let mut rx = em.subscribe();
    let t0 = Instant::now();
    let events = tokio::spawn(async move {
        let mut marks = Vec::new();
        while let Ok(ev) = rx.recv().await {
            if let EventKind::Progress { message } = &ev.kind {
                if message.starts_with("restore verified")
                    || message.starts_with("still restored after the reboot")
                {
                    marks.push((message.clone(), t0.elapsed()));
                }
            }
        }
        marks
    });
    let report = recover(
        &*f.src as &dyn ClusterSource,
        &recover_options(&f, false),
        &em,
    )
    .await
    .expect("recover");
    let wall = t0.elapsed();
    drop(em);
    let marks = events.await.unwrap();

    assert_eq!(
        lab.bootstrap_calls() - bootstraps,
        1,
        "Bootstrap exactly once"
    );
    assert!(
        matches!(bootstrap_step(&report), Outcome::Done { ref detail } if detail.contains("restored from")),
        "{:?}",
        bootstrap_step(&report)
    );
    assert_objects_back(&f).await;
    assert_eq!(lab.etcd().members().unwrap().len(), 3);
    assert_eq!(lab.etcd().cluster_count(), 1);
    let (_, verdict) = report.restored.clone().expect("verified");
    assert!(
        verdict.contains("recorded with the snapshot are back"),
        "{verdict}"
    );
    // Every namespace and Kustomization take_backup recorded is back.
    let (found, _) = report.restored.clone().unwrap();
    let want = f.meta.kubernetes.inventory().unwrap();
    for ns in &want.namespaces {
        assert!(found.namespaces.contains(ns), "Namespace {ns}: {found:?}");
    }
    for k in &want.kustomizations {
        assert!(
            found.kustomizations.contains(k),
            "Kustomization {k}: {found:?}"
        );
    }
    assert!(report.after_reboot.is_some(), "checked after a reboot");
    // The rest of `up` found the restored state in place: nothing re-applied.
    let rest: std::collections::BTreeMap<StepId, Outcome> =
        report.up.last().unwrap().steps.iter().cloned().collect();
    for s in [
        StepId::Bootstrap,
        StepId::Namespaces,
        StepId::Secrets,
        StepId::Crds,
        StepId::Cni,
        StepId::Charts,
    ] {
        assert!(
            matches!(rest.get(&s), Some(Outcome::Skipped { .. })),
            "{s:?}: {:?}",
            rest.get(&s)
        );
    }
    match &rest[&StepId::NodesReady] {
        Outcome::Done { detail } | Outcome::Skipped { reason: detail } => {
            assert!(detail.contains("3 Ready"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    // Layers 2–5: the Flux objects came back with the snapshot; the rest of
    // `up` finds Flux installed and synced, and every layer Ready.
    assert!(
        matches!(
            rest.get(&StepId::FluxInstall),
            Some(Outcome::Skipped { .. })
        ),
        "FluxInstall: {:?}",
        rest.get(&StepId::FluxInstall)
    );
    for s in [StepId::FluxSecrets, StepId::FluxSync, StepId::Adoption] {
        assert!(
            rest.get(&s).is_some_and(Outcome::is_ok),
            "{s:?}: {:?}",
            rest.get(&s)
        );
    }
    match &rest[&StepId::Gitops] {
        Outcome::Done { detail } | Outcome::Skipped { reason: detail } => {
            assert!(detail.contains("all five layers Ready"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    let layers = layers.lock().unwrap().clone();
    assert_eq!(
        layers.keys().copied().collect::<Vec<u8>>(),
        [1, 2, 3, 4, 5],
        "{layers:?}"
    );
    for (layer, (ready, total)) in &layers {
        assert!(
            *total > 0 && ready == total,
            "layer {layer}: {ready}/{total}"
        );
    }
    // No HelmRelease was installed again: same objects, one history entry each.
    let hr_after = helmreleases(lab);
    assert_eq!(hr_after, hr_before);
    assert!(hr_after.iter().all(|(_, n)| *n == 1), "{hr_after:?}");
    assert_eq!(lab.kube().list("FluxInstance", None).len(), 1);
    assert_eq!(
        recover::journal(f.dir.path()).unwrap().unwrap().facts.phase,
        Phase::Done
    );
    assert!(!f.dir.path().join("recover-pending").exists());

    // Wall time against the lab's own delays on the recovery's critical path up to
    // the reboot check: install 4 + reboot 3 + boot 2 + etcd start 1 + API start
    // after bootstrap 3 (overlaps the joins, 2) = 13, then the check: reboot 3 +
    // boot 2 + API start 3 = 8 (seconds at time scale 1).
    let critical = Duration::from_secs_f64(21.0 * f.scale);
    let verified = marks
        .iter()
        .find(|(m, _)| m.starts_with("still restored"))
        .map(|(_, t)| *t)
        .unwrap();
    println!(
        "recover: restore verified at {:.2}s, after-reboot check at {:.2}s (lab critical path {:.2}s, overhead {:.0} ms); whole recover incl. the rest of `up` through five layers {:.2}s; sidecar {}; after: {}",
        marks[0].1.as_secs_f64(),
        verified.as_secs_f64(),
        critical.as_secs_f64(),
        verified.saturating_sub(critical).as_secs_f64() * 1000.0,
        wall.as_secs_f64(),
        f.meta.kubernetes.describe(),
        [
            StepId::FluxSecrets,
            StepId::FluxInstall,
            StepId::FluxSync,
            StepId::Gitops,
            StepId::Adoption
        ]
        .iter()
        .map(|s| format!("{s:?} {}", rest[s].label()))
        .collect::<Vec<_>>()
        .join(", ")
    );
}

/// Where to kill a recovery: the first event matching.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Progress(&'static str),
    Finished(StepId),
    Waiting(&'static str),
    Decision(&'static str),
}

impl KillAt {
    fn matches(&self, e: &Event) -> bool {
        match (self, &e.kind) {
            (KillAt::Progress(p), EventKind::Progress { message }) => message.contains(p),
            (KillAt::Waiting(p), EventKind::Waiting { what }) => what.contains(p),
            (KillAt::Finished(s), EventKind::StepFinished { .. }) => {
                e.step == *s && e.node.is_none()
            }
            (KillAt::Decision(k), EventKind::Decision { key, .. }) => key == k,
            _ => false,
        }
    }
}

struct Killer {
    at: KillAt,
    handle: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    fired: Arc<Mutex<bool>>,
}

impl EventSink for Killer {
    fn record(&mut self, e: &Event) {
        let mut fired = self.fired.lock().unwrap();
        if !*fired && self.at.matches(e) {
            if let Some(h) = self.handle.lock().unwrap().as_ref() {
                h.abort();
                *fired = true;
            }
        }
    }
}

/// Kills `recover` at `at` (as if the process died there); true if it was killed.
async fn killed_recover(f: &Fixture, at: KillAt, reset_nodes: bool) -> bool {
    let em = Emitter::new();
    let handle = Arc::new(Mutex::new(None));
    let fired = Arc::new(Mutex::new(false));
    em.add_sink(Box::new(Killer {
        at,
        handle: handle.clone(),
        fired: fired.clone(),
    }));
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let src = f.src.clone();
        let o = recover_options(f, reset_nodes);
        tokio::spawn(async move {
            let _ = go_rx.await;
            recover(&*src as &dyn ClusterSource, &o, &em)
                .await
                .map(|_| ())
        })
    };
    *handle.lock().unwrap() = Some(task.abort_handle());
    go_tx.send(()).unwrap();
    let r = task.await;
    assert!(*fired.lock().unwrap(), "{at:?}: kill point never reached");
    match r {
        Err(e) => {
            assert!(e.is_cancelled(), "{at:?}: {e}");
            true
        }
        Ok(r) => {
            r.unwrap_or_else(|e| panic!("{at:?}: {}", e.explain()));
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_killed_at_every_step_boundary_converges() {
    let f = fixture(222, 0.05, StepId::Apiserver, "killed").await;
    let points = [
        // The live cluster is reset by --reset-nodes; killed during the resets.
        (KillAt::Progress("reset: wipe STATE"), true),
        (KillAt::Finished(StepId::Preflight), false),
        (KillAt::Finished(StepId::Apply), false),
        (KillAt::Finished(StepId::WaitConfigured), false),
        (KillAt::Progress("uploading snapshot"), false),
        (KillAt::Progress("calling Bootstrap (recover_etcd)"), false),
        (KillAt::Waiting("to restore the snapshot"), false),
        (KillAt::Finished(StepId::Bootstrap), false),
        (KillAt::Finished(StepId::EtcdQuorum), false),
        (KillAt::Progress("restore verified"), false),
        (KillAt::Decision("recover_reboot_check"), false),
        (KillAt::Progress("still restored after the reboot"), false),
    ];
    let mut table = Vec::new();
    for (at, reset_nodes) in points {
        if !reset_nodes {
            disaster(&f.lab).await;
        }
        let before = f.lab.bootstrap_calls();
        let killed = killed_recover(&f, at, reset_nodes).await;
        // The re-run: with --reset-nodes every time, which must not wipe anything
        // this recovery configured.
        let mut resets = Vec::new();
        for n in f.lab.nodes() {
            resets.push(n.transitions());
        }
        let t0 = Instant::now();
        let report = recover(
            &*f.src as &dyn ClusterSource,
            &recover_options(&f, true),
            &Emitter::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{at:?}: re-run: {}", e.explain()));
        let rerun = t0.elapsed();
        let journal = recover::journal(f.dir.path()).unwrap().unwrap();
        assert_eq!(journal.facts.phase, Phase::Done, "{at:?}");
        // (A kill point after the last await lets the run finish: the re-run then
        // finds the recovery done and must converge without wiping anything.)
        if !reset_nodes {
            for rx in &mut resets {
                while let Ok(s) = rx.try_recv() {
                    assert_ne!(s, NodeState::Resetting, "{at:?}: a node was reset again");
                }
            }
            assert!(report.reset.is_empty(), "{at:?}: {:?}", report.reset);
        }
        assert_eq!(
            f.lab.bootstrap_calls() - before,
            1,
            "{at:?}: Bootstrap exactly once over both runs"
        );
        assert_objects_back(&f).await;
        assert_eq!(f.lab.etcd().members().unwrap().len(), 3, "{at:?}");
        assert_eq!(f.lab.etcd().cluster_count(), 1, "{at:?}");
        table.push(format!(
            "{at:?}: killed={killed}, re-run {:.2}s",
            rerun.as_secs_f64()
        ));
    }
    println!("{}", table.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_new_secrets_and_a_restore_that_did_not_happen() {
    let lab = lab(223, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    // No secrets bundle: refused (never creates one), nothing touched.
    let src = MemorySource::new(lab_definition(&lab, 3, "nosecrets"), None);
    let mut o = RecoverOptions::new(options(dir.path(), StepId::Apiserver));
    let e = recover(&src as &dyn ClusterSource, &o, &Emitter::new())
        .await
        .unwrap_err();
    assert!(matches!(e, FlowError::NoSecrets { .. }), "{e}");
    assert_eq!(lab.apply_calls(), 0);
    // A snapshot of an empty cluster (no sidecar): the restore "succeeds" in etcd
    // but the cluster is empty, which recover must not call a recovery.
    let src = Arc::new(MemorySource::new(
        lab_definition(&lab, 3, "empty"),
        Some(MemorySecrets::generate().unwrap()),
    ));
    up(
        &*src as &dyn ClusterSource,
        &options(dir.path(), StepId::Apiserver),
        &Emitter::new(),
    )
    .await
    .unwrap();
    // Backed up by take_backup without a kubeconfig: the sidecar says so.
    let mut cluster = Cluster::load(&*src, dir.path()).unwrap();
    cluster.kubeconfig = None;
    let snapshot = dir.path().join("empty.db");
    let meta = take_backup(&cluster, o.up.policy, &snapshot).await.unwrap();
    assert!(
        matches!(&meta.kubernetes, KubeRecord::None { reason } if reason.contains("no kubeconfig")),
        "{:?}",
        meta.kubernetes
    );
    let checked = check_snapshot(&snapshot).unwrap();
    assert!(checked.sidecar.is_some() && checked.inventory().is_none());
    disaster(&lab).await;
    o.snapshot = Some(snapshot);
    let em = Emitter::new();
    let progress = Arc::new(Mutex::new(Vec::new()));
    em.add_sink(Box::new(Progress(progress.clone())));
    let e = recover(&*src as &dyn ClusterSource, &o, &em)
        .await
        .unwrap_err();
    let warned = progress.lock().unwrap().iter().any(|m: &String| {
        m.starts_with("warning: no Kubernetes inventory") && m.contains("no kubeconfig")
    });
    assert!(warned, "recover warns that it can only check \"not empty\"");
    assert!(
        matches!(e, FlowError::NotRestored { .. }),
        "{}",
        e.explain()
    );
    assert!(e.to_string().contains("new, empty cluster"), "{e}");
    // While the restore is unverified, a plain `up` refuses to bootstrap an empty etcd.
    assert!(dir.path().join("recover-pending").exists());
}

/// The last `layer_progress` (ready, total) of each layer.
struct Layers(Arc<Mutex<std::collections::BTreeMap<u8, (usize, usize)>>>);

impl EventSink for Layers {
    fn record(&mut self, e: &Event) {
        if let EventKind::LayerProgress { ready, total, .. } = &e.kind {
            self.0.lock().unwrap().insert(e.layer, (*ready, *total));
        }
    }
}

/// Every HelmRelease (`namespace/name`) and the length of its Helm history.
fn helmreleases(lab: &Lab) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = lab
        .kube()
        .list("HelmRelease", None)
        .iter()
        .map(|h| {
            (
                format!(
                    "{}/{}",
                    h["metadata"]["namespace"].as_str().unwrap_or(""),
                    h["metadata"]["name"].as_str().unwrap_or("")
                ),
                h.pointer("/status/history")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            )
        })
        .collect();
    v.sort();
    v
}

/// Keeps every progress message.
struct Progress(Arc<Mutex<Vec<String>>>);

impl EventSink for Progress {
    fn record(&mut self, e: &Event) {
        if let EventKind::Progress { message } = &e.kind {
            self.0.lock().unwrap().push(message.clone());
        }
    }
}

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
