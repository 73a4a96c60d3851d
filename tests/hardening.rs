//! What a hostile tester found against the binary: concurrent runs on one state
//! directory, signals, a full disk, a file that is not an etcd snapshot, racing
//! `gen secrets`, unbounded numbers, errors under `--output json`, a symlinked
//! kubeconfig, the demo's temporary secrets, maintenance certificate pinning.
//! Each runs the built binary; the lab runs in-process on 127.0.90-99.x.

#[path = "common/fixture.rs"]
mod fixture;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use endsys_bootstrap::engine::StepId;
use endsys_lab::NodeState;
use fixture::{start_lab, up_options, write_talconfig, Deadlines, SECRETS};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_endsys-bootstrap");
const DEADLINE: Duration = Duration::from_secs(120);

fn bin() -> Command {
    let mut c = Command::new(BIN);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn definition(c: &mut Command, talconfig: &Path, state: &Path) {
    c.arg("--config")
        .arg(talconfig)
        .arg("--secrets")
        .arg(SECRETS)
        .arg("--state-dir")
        .arg(state);
}

/// Runs a command to its end off the async runtime.
async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a failed `--output json` run: exactly one JSON object, the error.
fn one_json_error(o: &Output) -> Value {
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON object expected: {out}\n{}",
        text(&o.stderr)
    );
    let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["event"], "error", "{v}");
    assert_eq!(v["exit_code"], o.status.code().unwrap(), "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    for k in ["likely_cause", "next_action"] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
    v
}

/// `prog args…` with file writes limited to `bytes` per file (a full disk as a
/// process sees it: the write fails), SIGXFSZ ignored so the write returns an error.
fn with_fsize(bytes: u64) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize={bytes} -- \"$0\" \"$@\""
        ))
        .arg(BIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn deadlines() -> Deadlines {
    Deadlines {
        node: Duration::from_secs(60),
        reach: Duration::from_secs(30),
        retry_budget: Duration::from_secs(10),
    }
}

/// `up --until etcd` in-process: a cluster with etcd to run day-2 verbs on.
async fn cluster_with_etcd(lab: &endsys_lab::Lab, dir: &Path, state: &Path) -> PathBuf {
    let talconfig = write_talconfig(dir, lab, lab.nodes().len(), "hard");
    let mut src =
        endsys_bootstrap::engine::talhelper::TalhelperSource::new(&talconfig, Path::new(SECRETS));
    src.vars = endsys_bootstrap::machineconfig::Vars::default();
    let opts = up_options(state, StepId::Kubeconfig, deadlines());
    let em = endsys_bootstrap::engine::Emitter::new();
    endsys_bootstrap::flows::up::up(&src, &opts, &em)
        .await
        .unwrap_or_else(|e| panic!("up: {e}"));
    talconfig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_up_runs_on_one_state_dir_call_bootstrap_once() {
    tokio::time::timeout(DEADLINE, async {
        let lab = start_lab(90, 3, 3, 0.05).await;
        let dir = tempfile::tempdir().unwrap();
        let talconfig = write_talconfig(dir.path(), &lab, 3, "lock");
        let state = dir.path().join("state");
        let children: Vec<_> = (0..3)
            .map(|_| {
                let mut c = bin();
                c.args(["--output", "json", "up", "--until", "etcd"]);
                definition(&mut c, &talconfig, &state);
                c.spawn().unwrap()
            })
            .collect();
        let outs = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let ok = outs.iter().filter(|o| o.status.success()).count();
        let refused: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
        assert_eq!(ok, 1, "exactly one run does the work");
        assert_eq!(refused.len(), 2);
        for o in refused {
            assert_eq!(o.status.code(), Some(2));
            let v = one_json_error(o);
            let e = v["error"].as_str().unwrap();
            assert!(
                e.contains("in use by another run") && e.contains("pid ") && e.contains("`up`"),
                "{v}"
            );
            assert!(!v["next_action"].as_str().unwrap().contains("reset"), "{v}");
        }
        assert_eq!(lab.bootstrap_calls(), 1, "Bootstrap calls");
    })
    .await
    .expect("three concurrent up runs did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_the_run_record_and_the_next_run_resumes_and_clears_temporaries() {
    tokio::time::timeout(DEADLINE, async {
        let lab = start_lab(91, 3, 3, 0.3).await;
        let dir = tempfile::tempdir().unwrap();
        let talconfig = write_talconfig(dir.path(), &lab, 3, "sig");
        let state = dir.path().join("state");
        let mut c = bin();
        c.args(["--output", "json", "up", "--until", "etcd"]);
        definition(&mut c, &talconfig, &state);
        let (code, tail) = tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            let mut tail = Vec::new();
            for line in lines.by_ref() {
                let line = line.unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                if !sent
                    && v["event"] == "step_finished"
                    && v["step"] == "apply"
                    && v.get("node").is_none()
                {
                    let pid = child.id().to_string();
                    assert!(Command::new("kill")
                        .args(["-INT", &pid])
                        .status()
                        .unwrap()
                        .success());
                    sent = true;
                } else if sent {
                    tail.push(v);
                }
            }
            assert!(sent, "apply never finished");
            (child.wait().unwrap().code(), tail)
        })
        .await
        .unwrap();
        assert_eq!(code, Some(130));
        let last = tail.last().expect("a message after the signal");
        assert_eq!(last["event"], "error", "{last}");
        assert_eq!(last["exit_code"], 130);
        let e = last["error"].as_str().unwrap();
        assert!(
            e.contains("interrupted by SIGINT during `up`") && e.contains("journal.json"),
            "{e}"
        );
        assert!(
            last["next_action"].as_str().unwrap().contains("again"),
            "{last}"
        );
        let journal: Value =
            serde_json::from_slice(&std::fs::read(state.join("journal.json")).unwrap()).unwrap();
        let run = journal["runs"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(run["interrupted"], "SIGINT", "{run}");
        assert_eq!(run["ok"], false);
        assert!(run["finished_ms"].is_u64());
        // A temporary a killed run left behind (it may hold a kubeconfig).
        let stale = state.join(".endsys-tmp-Ab12Cd");
        std::fs::write(&stale, "kubeconfig contents").unwrap();
        let mut c = bin();
        c.args(["up", "--until", "etcd"]);
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(!stale.exists(), "stale temporary removed under the lock");
        assert!(text(&o.stdout).contains("left by an interrupted run"));
        assert_eq!(lab.bootstrap_calls(), 1);
        let left: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".endsys-tmp-"))
            .collect();
        assert!(left.is_empty());
    })
    .await
    .expect("interrupted up did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_whose_journal_cannot_be_saved_fails() {
    tokio::time::timeout(DEADLINE, async {
        let lab = start_lab(92, 1, 1, 0.0).await;
        let dir = tempfile::tempdir().unwrap();
        let talconfig = write_talconfig(dir.path(), &lab, 1, "full");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        // Present, so preflight does not write it: only the journal hits the limit.
        std::fs::write(state.join("talosconfig"), "x").unwrap();
        let mut c = with_fsize(100);
        c.args(["up", "--until", "apply"]);
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("journal could not be saved") && err.contains("journal.json"),
            "{err}"
        );
        assert!(
            !text(&o.stdout).contains("journal:"),
            "no journal path printed as if saved"
        );
    })
    .await
    .expect("up on a full disk did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backup_on_a_full_disk_blames_the_write_not_etcd() {
    tokio::time::timeout(DEADLINE, async {
        let lab = start_lab(93, 1, 1, 0.0).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let talconfig = cluster_with_etcd(&lab, dir.path(), &state).await;
        let out = dir.path().join("b.snapshot");
        let mut c = with_fsize(4096);
        c.args(["etcd", "backup"])
            .arg(&out)
            .arg("--kubeconfig")
            .arg("/dev/null");
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot write the snapshot") && err.contains("b.snapshot"),
            "{err}"
        );
        assert!(!err.contains("quorum"), "{err}");
        assert!(!out.exists());
    })
    .await
    .expect("backup on a full disk did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_a_file_that_is_not_an_etcd_database_before_resetting_any_node() {
    tokio::time::timeout(DEADLINE, async {
        use sha2::Digest;
        let lab = start_lab(94, 1, 1, 0.0).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let talconfig = cluster_with_etcd(&lab, dir.path(), &state).await;
        // Random bytes with a valid SHA-256 trailer.
        let mut data: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let sum = sha2::Sha256::digest(&data);
        data.extend_from_slice(&sum);
        let snap = dir.path().join("random.db");
        std::fs::write(&snap, &data).unwrap();
        let mut c = bin();
        c.args(["recover", "--reset-nodes", "--snapshot"])
            .arg(&snap);
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("random.db") && err.contains("not a valid etcd database"),
            "{err}"
        );
        let n = &lab.nodes()[0];
        assert_eq!(n.state(), NodeState::Running, "the node was not reset");
        assert!(n.has_etcd_data());
    })
    .await
    .expect("recover did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_fingerprint_pins_maintenance_nodes() {
    tokio::time::timeout(DEADLINE, async {
        let lab = start_lab(96, 1, 1, 0.0).await;
        let dir = tempfile::tempdir().unwrap();
        let talconfig = write_talconfig(dir.path(), &lab, 1, "pin");
        let state = dir.path().join("state");
        let wrong = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let mut c = bin();
        c.args(["up", "--until", "apply", "--cert-fingerprint"])
            .arg(format!("cp1={wrong}"));
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("fingerprint mismatch"), "{err}");
        assert_eq!(
            lab.apply_calls(),
            0,
            "nothing applied to an unpinned machine"
        );
        // The node's own fingerprint, as the refusal names it, is accepted.
        let presents = err
            .split("node presents ")
            .nth(1)
            .and_then(|s| s.split([',', ' ', '"', '\n']).next())
            .unwrap_or_else(|| panic!("no presented fingerprint in {err}"))
            .to_string();
        let mut c = bin();
        c.args(["up", "--until", "apply", "--cert-fingerprint"])
            .arg(format!("cp1={presents}"));
        definition(&mut c, &talconfig, &state);
        let o = output(c).await;
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(lab.apply_calls(), 1);
        // A hostname the definition lacks, or a value that is no fingerprint,
        // is refused up front.
        for (pin, says) in [
            (format!("cp9={wrong}"), "no node \"cp9\""),
            ("cp1=AAAA".to_string(), "not a fingerprint"),
            (wrong.to_string(), "expected HOSTNAME=FINGERPRINT"),
        ] {
            let mut c = bin();
            c.args(["up", "--cert-fingerprint"]).arg(&pin);
            definition(&mut c, &talconfig, &state);
            let o = output(c).await;
            assert_eq!(o.status.code(), Some(2), "{pin}");
            assert!(text(&o.stderr).contains(says), "{pin}: {}", text(&o.stderr));
        }
    })
    .await
    .expect("pinned up did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_state_dir_leaves_no_secrets_behind() {
    tokio::time::timeout(DEADLINE, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = bin();
        c.args([
            "demo",
            "--nodes",
            "1",
            "--controlplanes",
            "1",
            "--time-scale",
            "0",
            "--subnet",
            "95",
        ])
        .env("TMPDIR", tmp.path());
        let o = output(c).await;
        assert!(o.status.success(), "{}", text(&o.stderr));
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert!(text(&o.stdout).contains("removed the demo's state directory"));
    })
    .await
    .expect("demo did not finish in time");
}

#[tokio::test]
async fn two_gen_secrets_at_once_never_replace_each_other() {
    tokio::time::timeout(DEADLINE, async {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s.yaml");
        let children: Vec<_> = (0..2)
            .map(|_| {
                let mut c = bin();
                c.args(["gen", "secrets", "--out"]).arg(&target);
                c.spawn().unwrap()
            })
            .collect();
        let outs = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        assert!(
            codes.contains(&Some(0)) && codes.contains(&Some(2)),
            "{codes:?}"
        );
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        assert!(
            text(&loser.stderr).contains("refusing to overwrite"),
            "{}",
            text(&loser.stderr)
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["s.yaml".to_string()], "no temporary left");
    })
    .await
    .expect("gen secrets did not finish in time");
}

#[tokio::test]
async fn numbers_out_of_range_are_argument_errors_not_panics() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["talos", "version", "--timeout", "360000000000"],
            "--timeout",
        ),
        (&["demo", "--time-scale", "1e300"], "--time-scale"),
        (&["lab", "serve", "--time-scale", "NaN"], "--time-scale"),
        (&["lab", "serve", "--nodes", "0"], "--nodes"),
        (
            &[
                "up",
                "--node-timeout",
                "18446744073709551615",
                "--config",
                "x",
            ],
            "--node-timeout",
        ),
    ];
    for (args, flag) in cases {
        let mut c = bin();
        c.args(args);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("--controlplanes"), "{args:?}: {err}");
    }
    // Under --output json, the same as one JSON object.
    let mut c = bin();
    c.args(["--output", "json", "demo", "--nodes", "0"]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(one_json_error(&o)["error"]
        .as_str()
        .unwrap()
        .contains("--nodes"));
}

#[tokio::test]
async fn a_broken_kubeconfig_is_named_and_json_errors_are_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("garbage.yaml");
    std::fs::write(&kc, "this: [is not, a kubeconfig").unwrap();
    let mut c = bin();
    c.args(["status", "--kubeconfig"]).arg(&kc);
    let o = output(c).await;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("garbage.yaml") && err.contains("not a usable kubeconfig"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("api server"), "{err}");
    let mut c = bin();
    c.args(["-o", "json", "status", "--kubeconfig"]).arg(&kc);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(2));
    let v = one_json_error(&o);
    assert!(v["error"].as_str().unwrap().contains("garbage.yaml"), "{v}");
    assert!(!v["likely_cause"].as_str().unwrap().is_empty(), "{v}");
    assert!(
        o.stderr.is_empty() || !text(&o.stderr).contains("error:"),
        "{}",
        text(&o.stderr)
    );
    // A verb failing for another reason, and a missing state.
    let mut c = bin();
    c.args([
        "--output=json",
        "kubeconfig",
        "--cluster",
        "none",
        "--state-dir",
    ])
    .arg(dir.path().join("absent"));
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(1));
    let v = one_json_error(&o);
    assert!(v["next_action"].as_str().unwrap().contains("up"), "{v}");
    assert!(!v["likely_cause"].as_str().unwrap().is_empty(), "{v}");
}

#[tokio::test]
async fn a_cluster_flag_that_is_a_path_is_refused_before_any_file_is_read() {
    // `--cluster` becomes a folder under the state directory: `../x` would read
    // (and for `kubeconfig --merge`, write) outside it.
    let home = tempfile::tempdir().unwrap();
    // <state>/endsys-bootstrap/../x is <state>/x: a kubeconfig planted there.
    let outside = home.path().join("state").join("x");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(home.path().join("state").join("endsys-bootstrap")).unwrap();
    std::fs::write(outside.join("kubeconfig"), "secret").unwrap();
    for args in [
        &["kubeconfig", "--cluster", "../x"][..],
        &["status", "--cluster", "../x"][..],
        &["kubeconfig", "--cluster", "/etc"][..],
    ] {
        let mut c = bin();
        c.env("XDG_STATE_HOME", home.path().join("state"))
            .args(args);
        let o = output(c).await;
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--cluster") && err.contains("plain name"),
            "{err}"
        );
        assert!(!text(&o.stdout).contains("secret"), "{args:?}");
    }
}
