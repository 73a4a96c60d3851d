//! Disaster recovery on the lab: a 3-control-plane cluster with Kubernetes
//! objects → etcd snapshot → every disk killed → `recover --snapshot` → the
//! objects are back (and still there after the restored node's reboot), 3 etcd
//! members, nodes Ready, Bootstrap called exactly once. A bad snapshot is refused
//! before any node is touched; a recovery killed at each step boundary and run
//! again converges. (Velero restores: day2_velero.rs.)

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/recover.rs"]
mod recover_fixture;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{
    Cluster, ClusterSource, Doctor, Emitter, Event, EventKind, EventSink, FlowError, Outcome,
    StepId,
};
use endsys_bootstrap::flows::backup::take_backup;
use endsys_bootstrap::flows::recover::{self, recover, Phase, RecoverOptions, RecoverReport};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::snapshot::{check_snapshot, sidecar_path, KubeRecord};
use endsys_lab::{Lab, NodeState};
use fixture::{killed_at, start_lab, KillAt};
use memory::{MemorySecrets, MemorySource};
use recover_fixture::{assert_objects_back, disaster, fixture, options, recover_options, Fixture};
use serde_json::Value;

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
    let rest = fixture::steps_of(report.up.last().unwrap());
    let steps = [&[StepId::Bootstrap][..], &fixture::LAYER1_APPLY].concat();
    fixture::assert_all_skipped(&rest, &steps, "");
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

/// Kills `recover` at `at` (as if the process died there); true if it was killed.
async fn killed_recover(f: &Fixture, at: KillAt, reset_nodes: bool) -> bool {
    let src = f.src.clone();
    let o = recover_options(f, reset_nodes);
    killed_at(at, move |em| async move {
        recover(&*src as &dyn ClusterSource, &o, &em)
            .await
            .map(|_| ())
    })
    .await
    .is_none()
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
        (KillAt::WaitingText("to restore the snapshot"), false),
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
    let lab = start_lab(223, 3, 3, 0.0).await;
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
