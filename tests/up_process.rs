//! The `up` binary against an in-process lab: NDJSON events validated field by
//! field, and the process SIGKILLed at step boundaries (read from its own event
//! stream), then run again: it converges with Bootstrap called exactly once.

#[path = "common/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::Stdio;

use endsys_lab::{Lab, NodeState};
use fixture::{start_lab, within_lab, write_talconfig, NODE_TIMEOUT_SECS, SECRETS};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A named kill point: SIGKILL on the first event line it matches.
type KillPoint = (&'static str, fn(&Value) -> bool);

fn up_cmd(talconfig: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_endsys-bootstrap"));
    c.args(["--output", "json", "up", "--until", "etcd"])
        .args(["--node-timeout", NODE_TIMEOUT_SECS, "--config"])
        .arg(talconfig)
        .arg("--secrets")
        .arg(SECRETS)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A test that gives up (its deadline) takes the process with it.
        .kill_on_drop(true);
    c
}

/// Runs `up` to the end within the test deadline; returns (exit code, NDJSON
/// lines, stderr). A hang fails with the lab's state.
async fn run_to_end(lab: &Lab, talconfig: &Path, state: &Path) -> (i32, Vec<Value>, String) {
    let out = within_lab(lab, "up to finish", up_cmd(talconfig, state).output())
        .await
        .expect("run up");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `up` and SIGKILLs it on the first event line for which `kill_at` holds
/// (within the test deadline); whether the kill point was reached.
async fn run_and_kill(
    lab: &Lab,
    talconfig: &Path,
    state: &Path,
    kill_at: fn(&Value) -> bool,
) -> bool {
    let mut child = up_cmd(talconfig, state).spawn().expect("spawn up");
    let stdout = child.stdout.take().expect("stdout");
    within_lab(lab, "up to reach its kill point", async {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let v: Value = serde_json::from_str(&line).expect("NDJSON");
            if kill_at(&v) {
                child.kill().await.expect("SIGKILL"); // no cleanup runs
                return true;
            }
        }
        child.wait().await.expect("wait");
        false
    })
    .await
}

fn is(v: &Value, event: &str, step: &str) -> bool {
    v["event"] == event && v["step"] == step && v.get("node").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_events_cover_every_step_node_and_timing() {
    // Control planes only: the lab cannot take real worker configs yet (a worker's
    // machine.ca has no key; real workers get their apid certificate via trustd).
    let lab = start_lab(150, 5, 5, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    let talconfig = write_talconfig(dir.path(), &lab, 5, "proc");
    let (code, events, stderr) = run_to_end(&lab, &talconfig, &dir.path().join("state")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lab.bootstrap_calls(), 1);
    // Every line has the stable envelope.
    for v in &events {
        for key in ["event", "ts_ms", "elapsed_ms", "step", "layer"] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        // The layer of the step (layer-2+ steps are reported skipped: --until etcd).
        let layer = match v["step"].as_str().unwrap_or("") {
            "flux_secrets" | "flux_install" | "flux_sync" | "adoption" => 2,
            "gitops" => 5,
            _ => 1,
        };
        assert_eq!(v["layer"], layer, "{v}");
    }
    assert_eq!(events.first().unwrap()["event"], "run_started");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["ok"], true);
    assert!(last["duration_ms"].is_u64());
    let steps = [
        "preflight",
        "apply",
        "wait_configured",
        "bootstrap",
        "etcd_quorum",
        "kubeconfig",
        "apiserver",
    ];
    // Each step: started before finished (apiserver: finished as skipped, never silently).
    let mut last_finish = 0;
    for s in steps {
        let start = events.iter().position(|v| is(v, "step_started", s));
        let finish = events
            .iter()
            .position(|v| is(v, "step_finished", s))
            .unwrap_or_else(|| panic!("{s}: no step_finished"));
        assert!(finish >= last_finish, "{s} out of order");
        last_finish = finish;
        let f = &events[finish];
        assert!(f["duration_ms"].is_u64(), "{f}");
        let status = f["outcome"]["status"].as_str().unwrap();
        if s == "apiserver" {
            assert!(start.is_none());
            assert_eq!(status, "skipped");
            assert!(f["outcome"]["reason"]
                .as_str()
                .unwrap()
                .contains("--until etcd"));
        } else {
            assert!(start.unwrap() < finish, "{s}");
            assert!(status == "done" || status == "skipped", "{s}: {f}");
        }
    }
    // Per node: apply and wait started + finished; a timing for each node.
    for host in ["cp1", "cp2", "cp3", "cp4", "cp5"] {
        for s in ["apply", "wait_configured"] {
            for ev in ["step_started", "step_finished"] {
                assert!(
                    events
                        .iter()
                        .any(|v| v["event"] == ev && v["step"] == s && v["node"] == host),
                    "{host} {s} {ev}"
                );
            }
        }
        assert!(events.iter().any(|v| v["event"] == "timing"
            && v["node"] == host
            && v["phase"] == "node_running"
            && v["duration_ms"].is_u64()));
    }
    assert!(events
        .iter()
        .any(|v| v["event"] == "decision" && v["key"] == "bootstrap_node" && v["value"] == "cp1"));
    assert!(events
        .iter()
        .any(|v| v["event"] == "waiting" && v["what"].as_str().is_some()));
    assert!(events
        .iter()
        .any(|v| v["event"] == "timing" && v["phase"] == "etcd_quorum"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_killed_at_step_boundaries_converges_with_one_bootstrap() {
    let points: [KillPoint; 5] = [
        ("preflight finished", |v| {
            is(v, "step_finished", "preflight")
        }),
        ("apply finished", |v| is(v, "step_finished", "apply")),
        ("bootstrap node chosen", |v| v["event"] == "decision"),
        ("bootstrap finished", |v| {
            is(v, "step_finished", "bootstrap")
        }),
        ("etcd quorum finished", |v| {
            is(v, "step_finished", "etcd_quorum")
        }),
    ];
    let lab = start_lab(151, 3, 3, 0.05).await;
    let dir = tempfile::tempdir().unwrap();
    let talconfig = write_talconfig(dir.path(), &lab, 3, "proc");
    let state = dir.path().join("state");
    // Kill at each boundary in turn, each time resuming the same cluster.
    for (name, at) in points {
        let killed = run_and_kill(&lab, &talconfig, &state, at).await;
        assert!(
            killed || name == "preflight finished",
            "{name}: never reached"
        );
    }
    let (code, events, stderr) = run_to_end(&lab, &talconfig, &state).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lab.bootstrap_calls(), 1, "Bootstrap calls in total");
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running);
        assert_eq!(n.service_state("etcd").as_deref(), Some("Running"));
    }
    // The converged run applied nothing and bootstrapped nothing (the kubeconfig
    // was still missing: the last kill came before it).
    for s in ["apply", "bootstrap"] {
        let f = events.iter().find(|v| is(v, "step_finished", s)).unwrap();
        assert_eq!(f["outcome"]["status"], "skipped", "{s}: {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cluster_per_kill_point_converges() {
    // Each boundary on its own fresh cluster: the kill is the only interruption.
    let points: [KillPoint; 3] = [
        ("apply finished", |v| is(v, "step_finished", "apply")),
        ("calling Bootstrap", |v| {
            v["event"] == "progress" && v["message"] == "calling Bootstrap"
        }),
        ("bootstrap finished", |v| {
            is(v, "step_finished", "bootstrap")
        }),
    ];
    for (i, (name, at)) in points.into_iter().enumerate() {
        let lab = start_lab(152 + i as u8, 3, 3, 0.05).await;
        let dir = tempfile::tempdir().unwrap();
        let talconfig = write_talconfig(dir.path(), &lab, 3, "proc");
        let state = dir.path().join("state");
        assert!(run_and_kill(&lab, &talconfig, &state, at).await, "{name}");
        let (code, _, stderr) = run_to_end(&lab, &talconfig, &state).await;
        assert_eq!(code, 0, "{name}: {stderr}");
        assert_eq!(lab.bootstrap_calls(), 1, "{name}: Bootstrap calls");
    }
}
