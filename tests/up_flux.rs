//! `up` through all five layers against the lab (through `demo`, which runs the
//! real `up` over gRPC/TLS and HTTPS): layer 2 (Flux secrets check, install,
//! sync), the tracker's per-layer events, the adoption check, a re-run that
//! changes nothing; and the failures: a missing or wrong age key caught before
//! Flux is installed, a Kustomization that never becomes Ready reported with
//! its message and dependents within the deadline, a HelmRelease that fails
//! terminally failing fast.

#[path = "common/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endsys_bootstrap::demo::{run_demo, DemoOptions, DemoReport, Inspect};
use endsys_bootstrap::engine::{Doctor, Emitter, Event, EventKind, FlowError, Outcome, StepId};
use endsys_lab::repository as lab;
use serde_json::Value;

use fixture::{demo_options as opts, steps_of};

/// The lab repository, written for a test to change before `up` runs.
fn repo() -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep().join("repo");
    lab::write_repo(&dir).expect("write lab repo");
    dir
}

/// Adds an annotation to the first `metadata:` of a file.
fn annotate(file: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    let out = text.replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {key}: {value}\n"),
        1,
    );
    assert_ne!(text, out, "{}", file.display());
    std::fs::write(file, out).expect("write");
}

/// Runs the demo, collecting every event; `seen` gets the lab's objects of
/// the given kinds after the run (failed or not).
async fn run(
    o: DemoOptions,
    kinds: &'static [&'static str],
) -> (
    Result<DemoReport, FlowError>,
    Vec<Event>,
    BTreeMap<&'static str, Vec<Value>>,
) {
    let seen: Arc<Mutex<BTreeMap<&'static str, Vec<Value>>>> = Arc::default();
    let s2 = seen.clone();
    let theirs = o.inspect.clone();
    let o = DemoOptions {
        inspect: Some(Inspect(Arc::new(move |k| {
            if let Some(t) = &theirs {
                (t.0)(k);
            }
            let mut m = s2.lock().expect("lock");
            for kind in kinds {
                m.insert(*kind, k.list(kind, None));
            }
        }))),
        ..o
    };
    let em = Emitter::new();
    let collected = fixture::collect_events(&em);
    let r = fixture::within("demo", run_demo(&o, &em)).await;
    drop(em);
    let events = collected.await.expect("events");
    let seen = seen.lock().expect("lock").clone();
    (r, events, seen)
}

fn started(events: &[Event], step: StepId) -> bool {
    events
        .iter()
        .any(|e| e.step == step && matches!(e.kind, EventKind::StepStarted { .. }))
}

fn step_ms(events: &[Event], step: StepId) -> Option<u64> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::StepFinished { duration_ms, .. } if e.step == step && e.node.is_none() => {
            Some(*duration_ms)
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_layers_ready_in_order_adoption_reported_and_a_rerun_changes_nothing() {
    // A small time scale: the lab's Flux takes its (scaled) time per
    // Kustomization and HelmRelease, so the layers fill up one after another.
    // The repository is a git checkout: Flux must fetch its HEAD commit.
    let r = repo();
    fake_git(&r, "main", SHA_MAIN, None);
    let o = DemoOptions {
        rerun: true,
        time_scale: 0.05,
        repo: Some(r.clone()),
        ..opts(190, 3)
    };
    // `status` (the verb, as a process) against the finished cluster, before
    // the lab stops: every layer Ready, exit 0, NDJSON per layer.
    let state = o.state_dir.clone().expect("state dir");
    let r2 = r.clone();
    let status_out: Arc<Mutex<Option<std::process::Output>>> = Arc::default();
    let s2 = status_out.clone();
    let o = DemoOptions {
        inspect: Some(Inspect(Arc::new(move |_| {
            let out = assert_cmd::Command::cargo_bin("endsys-bootstrap")
                .expect("binary")
                .args(["--output", "json", "status", "--state-dir"])
                .arg(&state)
                .arg("--repo")
                .arg(&r2)
                .output()
                .expect("status runs");
            *s2.lock().expect("lock") = Some(out);
        }))),
        ..o
    };
    let (r, events, seen) = run(o, &["HelmRelease", "FluxInstance"]).await;
    let report = r.unwrap_or_else(|e| panic!("{}", e.explain()));
    let out = status_out.lock().expect("lock").take().expect("status ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["event"], "layer_progress");
        assert_eq!(l["layer"], i + 1);
        assert_eq!(l["ready"], l["total"], "{l}");
    }
    let first = steps_of(&report.up);
    fixture::assert_all_done(
        &first,
        &[
            StepId::FluxSecrets,
            StepId::FluxInstall,
            StepId::FluxSync,
            StepId::Gitops,
            StepId::Adoption,
        ],
        "",
    );
    // Layer 1 no longer installs Flux; layer 2 does.
    match (&first[&StepId::Charts], &first[&StepId::FluxInstall]) {
        (Outcome::Done { detail: l1 }, Outcome::Done { detail: l2 }) => {
            assert!(!l1.contains("flux"), "{l1}");
            assert!(
                l2.contains("flux-operator") && l2.contains("flux-instance"),
                "{l2}"
            );
        }
        other => panic!("{other:?}"),
    }
    match &first[&StepId::FluxSync] {
        Outcome::Done { detail } => assert!(
            detail.contains(&format!("refs/heads/main@sha1:{SHA_MAIN} (= local HEAD)")),
            "{detail}"
        ),
        other => panic!("{other:?}"),
    }
    match &first[&StepId::FluxSecrets] {
        Outcome::Done { detail } => assert!(detail.contains("decrypts 1 SOPS file"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Per-layer events of the first run: every layer reaches total, and the
    // chains decide the order (layer 4 needs cnpg-operator of layer 3, immich
    // of layer 5 needs pocket-id of layer 4).
    let first_run_end = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::RunFinished { .. }))
        .expect("first run finished");
    let mut done_at: BTreeMap<u8, usize> = BTreeMap::new();
    let mut totals: BTreeMap<u8, usize> = BTreeMap::new();
    for (i, e) in events[..first_run_end].iter().enumerate() {
        if let EventKind::LayerProgress {
            ready,
            total,
            waiting,
            title,
        } = &e.kind
        {
            assert_eq!(e.step, StepId::Gitops);
            assert!(!title.is_empty());
            let v: Value = serde_json::from_str(&e.to_json_line()).expect("json");
            assert_eq!(v["event"], "layer_progress");
            assert_eq!(v["layer"], e.layer);
            assert_eq!(v["ready"], *ready);
            assert_eq!(v["total"], *total);
            assert!(v["waiting"].is_array());
            if ready == total {
                assert!(waiting.is_empty(), "{waiting:?}");
                done_at.entry(e.layer).or_insert(i);
                totals.insert(e.layer, *total);
            }
        }
    }
    assert_eq!(
        done_at.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "{done_at:?}"
    );
    assert!(
        done_at[&3] < done_at[&4] && done_at[&4] < done_at[&5],
        "{done_at:?}"
    );
    // 17 Kustomizations + 14 HelmReleases, by layer.
    assert_eq!(totals.values().sum::<usize>(), 31, "{totals:?}");
    // Adoption: the six bootstrap releases, each adopted.
    let adopted: Vec<String> = events[..first_run_end]
        .iter()
        .filter(|e| e.step == StepId::Adoption)
        .filter_map(|e| match &e.kind {
            EventKind::Progress { message } if message.contains("adopted by HelmRelease") => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(adopted.len(), 6, "{adopted:#?}");
    for r in [
        "kube-system/cilium",
        "kube-system/coredns",
        "kube-system/spegel",
        "cert-manager/cert-manager",
        "flux-system/flux-operator",
        "flux-system/flux-instance",
    ] {
        assert!(
            adopted
                .iter()
                .any(|m| m.starts_with(&format!("release {r}:"))),
            "{r}: {adopted:#?}"
        );
    }
    match &first[&StepId::Adoption] {
        Outcome::Done { detail } => assert!(detail.starts_with("6 of 6"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // The re-run: everything skipped, no Flux object touched (no reconcile, no
    // new HelmRelease history entry).
    let again = steps_of(report.rerun.as_ref().expect("rerun"));
    let steps = [
        &fixture::LAYER1_APPLY[..],
        &[StepId::FluxInstall, StepId::FluxSync, StepId::Gitops],
    ]
    .concat();
    fixture::assert_all_skipped(&again, &steps, "re-run ");
    assert!(
        report.rerun_changed.is_empty(),
        "{:?}",
        report.rerun_changed
    );
    let hrs = &seen["HelmRelease"];
    assert_eq!(hrs.len(), 14);
    for h in hrs {
        let history = h
            .pointer("/status/history")
            .and_then(Value::as_array)
            .expect("history");
        assert_eq!(history.len(), 1, "{h}");
    }
    assert_eq!(seen["FluxInstance"].len(), 1);
    println!("{}", report.summary());
}

const SHA_MAIN: &str = "3f1c2b9a7d5e4f60718293a4b5c6d7e8f9012345";
const SHA_TOPIC: &str = "aa11bb22cc33dd44ee55ff6677889900aabbccdd";

/// Makes `repo` look like a git checkout on `branch` (HEAD symbolic, loose
/// ref), with `refs/heads/main` in packed-refs when another branch is out.
fn fake_git(repo: &Path, branch: &str, sha: &str, main_packed: Option<&str>) {
    let g = repo.join(".git");
    std::fs::create_dir_all(g.join("refs/heads")).expect("mkdir");
    std::fs::write(g.join("HEAD"), format!("ref: refs/heads/{branch}\n")).expect("HEAD");
    std::fs::write(g.join("refs/heads").join(branch), format!("{sha}\n")).expect("ref");
    if let Some(m) = main_packed {
        std::fs::write(
            g.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{m} refs/heads/main\n"),
        )
        .expect("packed-refs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_sync_waits_for_the_checkouts_head_and_says_what_flux_fetched_instead() {
    // The checkout is on a topic branch whose commit is not what the
    // FluxInstance syncs (refs/heads/main): flux_sync must not call that synced.
    let r = repo();
    fake_git(&r, "topic", SHA_TOPIC, Some(SHA_MAIN));
    let o = DemoOptions {
        repo: Some(r),
        flux_timeout: Some(Duration::from_secs(3)),
        ..opts(195, 1)
    };
    let (r, events, _) = run(o, &[]).await;
    let e = r.expect_err("an unfetched HEAD must stop flux_sync");
    let text = e.explain();
    assert!(
        matches!(e, FlowError::Gitops { ref step, .. } if step == "flux_sync"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Flux fetched refs/heads/main@sha1:{SHA_MAIN}")),
        "{text}"
    );
    assert!(text.contains(SHA_TOPIC), "{text}");
    let warned = events.iter().any(|e| {
        matches!(&e.kind, EventKind::Progress { message } if message.contains("the checkout is on refs/heads/topic"))
    });
    assert!(warned);
    assert!(!started(&events, StepId::Gitops));
}

/// The sops-age Secret file replaced by one holding `other-key.txt`'s
/// identity (still encrypted for the operator's key, so the bootstrap applies
/// it): the cluster's key then cannot decrypt the tree's SOPS files.
fn wrong_key_sops_age(repo: &Path) {
    let other = std::fs::read_to_string("tests/fixtures/sops/other-key.txt").expect("other key");
    let line = other
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("identity");
    let plain = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sops-age\nstringData:\n  age.agekey: {line}\n"
    );
    let ours = endsys_bootstrap::sops::AgeIdentities::parse(lab::AGE_KEY, "lab key").expect("key");
    let enc = endsys_bootstrap::sops::encrypt_yaml(
        &plain,
        &ours.recipients(),
        &endsys_bootstrap::sops::EncryptionRules::kubernetes(),
    )
    .expect("encrypt");
    std::fs::write(
        repo.join("kubernetes/components/common/sops/sops-age.sops.yaml"),
        enc,
    )
    .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sops_age_file_or_a_wrong_age_key_stops_up_before_flux_is_installed() {
    // Missing file: the secrets step warns, flux_secrets refuses, naming it.
    let missing = repo();
    std::fs::remove_file(missing.join("kubernetes/components/common/sops/sops-age.sops.yaml"))
        .expect("rm");
    let o = DemoOptions {
        repo: Some(missing),
        ..opts(191, 1)
    };
    let (r, events, seen) = run(o, &["FluxInstance", "CustomResourceDefinition"]).await;
    let e = r.expect_err("missing sops-age must stop up");
    let text = e.explain();
    assert!(
        matches!(e, FlowError::Gitops { ref step, .. } if step == "flux_secrets"),
        "{text}"
    );
    assert!(
        text.contains("Secret flux-system/sops-age does not exist"),
        "{text}"
    );
    assert!(
        text.contains("kubernetes/components/common/sops/sops-age.sops.yaml is missing"),
        "{text}"
    );
    assert!(text.contains("Flux was not installed"), "{text}");
    assert!(!started(&events, StepId::FluxInstall));
    assert!(seen["FluxInstance"].is_empty());
    assert!(!seen["CustomResourceDefinition"].iter().any(|c| {
        c.pointer("/metadata/name").and_then(Value::as_str)
            == Some("fluxinstances.fluxcd.controlplane.io")
    }));

    // Wrong key: sops-age holds a key the tree's SOPS file is not encrypted for.
    let wrong = repo();
    wrong_key_sops_age(&wrong);
    let o = DemoOptions {
        repo: Some(wrong),
        ..opts(192, 1)
    };
    let (r, events, seen) = run(o, &["FluxInstance"]).await;
    let e = r.expect_err("a wrong key must stop up");
    let text = e.explain();
    assert!(
        matches!(e, FlowError::Gitops { ref step, .. } if step == "flux_secrets"),
        "{text}"
    );
    assert!(
        text.contains("kubernetes/apps/security/pocket-id/app/secret.sops.yaml"),
        "{text}"
    );
    assert!(text.contains("does not decrypt"), "{text}");
    assert!(text.contains("Kustomization security/pocket-id"), "{text}");
    assert!(!started(&events, StepId::FluxInstall));
    assert!(seen["FluxInstance"].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kustomization_that_never_becomes_ready_is_reported_with_its_message_and_dependents() {
    let r = repo();
    annotate(
        &r.join("kubernetes/apps/security/external-secrets-stores/ks.yaml"),
        "lab.endsys.dev/fault",
        "never-ready",
    );
    let deadline = Duration::from_secs(6);
    let o = DemoOptions {
        repo: Some(r),
        gitops_timeout: Some(deadline),
        ..opts(193, 1)
    };
    let (r, events, _) = run(o, &[]).await;
    let e = r.expect_err("a stuck Kustomization must fail up");
    let text = e.explain();
    assert!(
        matches!(e, FlowError::Track { ref step, .. } if step == "gitops"),
        "{text}"
    );
    assert!(text.contains("not Ready after 6s"), "{text}");
    // The blocker with its Ready message, and what waits on it.
    let line = text
        .lines()
        .find(|l| l.contains("Kustomization security/external-secrets-stores (layer 4)"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("HealthCheckFailed"), "{line}");
    assert!(line.contains("health check failed"), "{line}");
    assert!(line.contains("blocks"), "{line}");
    for dep in ["security/pocket-id", "default/immich"] {
        assert!(line.contains(dep), "{dep}: {line}");
    }
    assert!(text.contains("next action"), "{text}");
    // Within the deadline (plus the watch's own start-up), not a hang.
    let ms = step_ms(&events, StepId::Gitops).expect("gitops finished");
    assert!(
        ms >= deadline.as_millis() as u64 && ms < deadline.as_millis() as u64 + 3000,
        "{ms} ms"
    );
    assert!(!started(&events, StepId::Adoption));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helmrelease_that_fails_terminally_fails_fast() {
    let r = repo();
    let hr = r.join("kubernetes/apps/default/n8n/app/helmrelease.yaml");
    annotate(&hr, "lab.endsys.dev/fault", "install-fails");
    // No install retries (helm-controller's default): the first failure is
    // terminal. (endsys's `retries: -1` retries forever: that one is reported
    // at the deadline instead.)
    let text = std::fs::read_to_string(&hr).expect("read");
    let once = text.replacen("retries: -1", "retries: 0", 1);
    assert_ne!(text, once);
    std::fs::write(&hr, once).expect("write");
    let o = DemoOptions {
        repo: Some(r),
        gitops_timeout: Some(Duration::from_secs(120)),
        ..opts(194, 1)
    };
    let (r, events, _) = run(o, &[]).await;
    let e = r.expect_err("a failed HelmRelease must fail up");
    let text = e.explain();
    assert!(
        matches!(e, FlowError::Track { ref step, .. } if step == "gitops"),
        "{text}"
    );
    assert!(text.contains("Flux failed"), "{text}");
    assert!(text.contains("HelmRelease default/n8n"), "{text}");
    assert!(text.contains("RetriesExceeded"), "{text}");
    assert!(text.contains("Stalled"), "{text}");
    let ms = step_ms(&events, StepId::Gitops).expect("gitops finished");
    assert!(ms < 20_000, "fail fast, not at the deadline: {ms} ms");
}
