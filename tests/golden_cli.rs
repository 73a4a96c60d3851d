//! Golden checks of the CLI contract that refactors must keep: the `--help` text of
//! every verb, and the shape of the NDJSON event stream (event names, their fields and
//! the step names) of `demo` (the whole `up` flow through five layers), `up`,
//! `node reimage`, `etcd backup` and `etcd status`.
//!
//! Everything runs as processes (`lab serve` is the lab), so the checks do not depend
//! on the library's internal types. After a deliberate change to the contract,
//! regenerate with `UPDATE_GOLDEN=1 cargo test --test golden_cli` and review the diff.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "common/verbs.rs"]
mod verbs;
use verbs::{verb_tree, BIN};
const SECRETS: &str = "tests/fixtures/machineconfig/secrets.yaml";

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file (or rewrites it under UPDATE_GOLDEN=1).
fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let exp: Vec<&str> = expected.lines().collect();
        let act: Vec<&str> = actual.lines().collect();
        let gone: Vec<&&str> = exp.iter().filter(|l| !act.contains(l)).collect();
        let new: Vec<&&str> = act.iter().filter(|l| !exp.contains(l)).collect();
        panic!(
            "{} differs from the golden file\n- lines gone: {gone:#?}\n+ lines new: {new:#?}",
            path.display()
        );
    }
}

#[test]
fn help_text_of_every_verb_is_unchanged() {
    let mut out = String::new();
    for (path, help) in verb_tree() {
        out.push_str(&format!(
            "==== endsys-bootstrap {} --help\n{help}\n",
            path.join(" ")
        ));
    }
    check_golden("help.txt", &out);
}

/// The shape of one NDJSON line: its event name and its fields (one level deep
/// into objects, so an outcome's fields count too).
fn shape(v: &Value) -> String {
    let event = v["event"].as_str().unwrap_or("<none>");
    let mut keys = Vec::new();
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            match val {
                Value::Object(inner) => {
                    let mut sub: Vec<&str> = inner.keys().map(String::as_str).collect();
                    sub.sort();
                    keys.push(format!("{k}{{{}}}", sub.join(",")));
                }
                _ => keys.push(k.clone()),
            }
        }
    }
    keys.sort();
    format!("{event}: {}", keys.join(" "))
}

/// What the golden file records of one verb's stream: the line shapes and the
/// step names (with the outcome or day-2 kind when the line has one).
fn summarize(verb: &str, lines: &[Value], out: &mut BTreeSet<String>) {
    for v in lines {
        out.insert(format!("{verb} | {}", shape(v)));
        if let Some(step) = v["step"].as_str() {
            out.insert(format!("{verb} | step {step}"));
        }
        if let Some(op) = v["op"].as_str() {
            out.insert(format!("{verb} | op {op}"));
        }
    }
}

/// Runs the binary; returns (exit code, NDJSON lines of stdout, stderr).
fn run_json(args: &[&str], deadline: Duration) -> (i32, Vec<Value>, String) {
    let child = Command::new(BIN)
        .arg("--output")
        .arg("json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Output is drained while the process runs (a full pipe would stall it); the
    // deadline is a timed receive on its exit, not a polling loop.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{args:?} did not finish within {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lab serve` as a child process, killed on drop.
struct LabProcess(Child);

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_lab(dir: &Path, first_ip: &str, nodes: usize) -> LabProcess {
    let mut child = Command::new(BIN)
        .args(["lab", "serve", "--time-scale", "0", "--first-ip", first_ip])
        .args([
            "--nodes",
            &nodes.to_string(),
            "--controlplanes",
            &nodes.to_string(),
        ])
        .arg("--talosconfig-out")
        .arg(dir.join("lab-talosconfig"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    // The lab prints one line per node, then the `try:` hint once every node listens.
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "lab serve exited before it was ready");
        if line.contains("try:") {
            break;
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    LabProcess(child)
}

fn talconfig(subnet: u8, nodes: usize) -> String {
    let mut t = format!(
        "clusterName: golden\ntalosVersion: v1.13.9\nkubernetesVersion: v1.35.0\nendpoint: https://127.0.{subnet}.11:6443\nnodes:\n"
    );
    for i in 0..nodes {
        t.push_str(&format!(
            "  - hostname: cp{}\n    ipAddress: 127.0.{subnet}.{}\n    controlPlane: true\n    installDiskSelector:\n      model: \"Samsung SSD 980*\"\n",
            i + 1,
            11 + i
        ));
    }
    t
}

#[test]
fn ndjson_event_shapes_are_unchanged() {
    let deadline = Duration::from_secs(240);
    let mut shapes = BTreeSet::new();

    // The whole `up` flow through five layers.
    let demo_state = tempfile::tempdir().unwrap();
    let (code, lines, err) = run_json(
        &[
            "demo",
            "--time-scale",
            "0",
            "--subnet",
            "241",
            "--state-dir",
            demo_state.path().to_str().unwrap(),
        ],
        deadline,
    );
    assert_eq!(code, 0, "demo failed: {err}");
    summarize("demo", &lines, &mut shapes);

    // `up` to etcd, then day-2 verbs, against `lab serve` in its own process.
    let dir = tempfile::tempdir().unwrap();
    let _lab = serve_lab(dir.path(), "127.0.242.11", 3);
    let tc = dir.path().join("talconfig.yaml");
    std::fs::write(&tc, talconfig(242, 3)).unwrap();
    let state = dir.path().join("state");
    let common = [
        "--config",
        tc.to_str().unwrap(),
        "--secrets",
        SECRETS,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let with = |verb: &[&str]| -> Vec<String> {
        verb.iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let args = with(&["up", "--until", "etcd"]);
    let (code, lines, err) = run_json(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        deadline,
    );
    assert_eq!(code, 0, "up failed: {err}");
    summarize("up", &lines, &mut shapes);

    let backup = dir.path().join("golden.snap");
    let mut args = with(&["etcd", "backup"]);
    args.push(backup.to_str().unwrap().to_string());
    let (code, lines, err) = run_json(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        deadline,
    );
    assert_eq!(code, 0, "etcd backup failed: {err}");
    summarize("etcd backup", &lines, &mut shapes);

    let args = with(&["etcd", "status"]);
    let (code, lines, err) = run_json(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        deadline,
    );
    assert_eq!(code, 0, "etcd status failed: {err}");
    summarize("etcd status", &lines, &mut shapes);

    let args = with(&["node", "reimage", "cp2", "--skip-kubernetes"]);
    let (code, lines, err) = run_json(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        deadline,
    );
    assert_eq!(code, 0, "node reimage failed: {err}");
    summarize("node reimage", &lines, &mut shapes);

    let mut text = String::new();
    for s in &shapes {
        text.push_str(s);
        text.push('\n');
    }
    check_golden("ndjson.txt", &text);
}
