//! Shared by the `diff_*` and `apply_*` tests: a lab cluster brought up by the
//! real `up` from a talconfig on disk, the binary run against it, and edits of
//! the definition (a top-level talhelper patch).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use endsys_bootstrap::engine::StepId;
use endsys_lab::Lab;

use super::fixture::{start_lab_of, up_options, write_talconfig, Deadlines, SECRETS};

pub const BIN: &str = env!("CARGO_BIN_EXE_endsys-bootstrap");

pub fn deadlines() -> Deadlines {
    Deadlines {
        node: Duration::from_secs(60),
        reach: Duration::from_secs(30),
        retry_budget: Duration::from_secs(10),
    }
}

pub struct Env {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub talconfig: PathBuf,
    pub secrets: PathBuf,
    pub state: PathBuf,
}

/// A lab of `nodes` nodes (`cps` control planes) on 127.0.`subnet`, brought up
/// through `Kubeconfig` by the real `up` from a talconfig on disk.
pub async fn up_cluster(subnet: u8, nodes: usize, cps: usize, time_scale: f64) -> Env {
    up_cluster_of(super::fixture::TALOS, subnet, nodes, cps, time_scale).await
}

/// [`up_cluster`] on nodes running another Talos version (the definition
/// keeps the fixtures' `talosVersion`).
pub async fn up_cluster_of(
    version: &str,
    subnet: u8,
    nodes: usize,
    cps: usize,
    time_scale: f64,
) -> Env {
    let lab = start_lab_of(version, subnet, nodes, cps, time_scale).await;
    let dir = tempfile::tempdir().unwrap();
    let talconfig = write_talconfig(dir.path(), &lab, cps, "drift");
    let secrets = PathBuf::from(SECRETS);
    let state = dir.path().join("state");
    let mut src = endsys_bootstrap::engine::talhelper::TalhelperSource::new(&talconfig, &secrets);
    src.vars = endsys_bootstrap::machineconfig::Vars::default();
    let opts = up_options(&state, StepId::Kubeconfig, deadlines());
    endsys_bootstrap::flows::up::up(&src, &opts, &endsys_bootstrap::engine::Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("up: {e}"));
    Env {
        lab,
        dir,
        talconfig,
        secrets,
        state,
    }
}

impl Env {
    /// The binary with `args`, then the definition, secrets and state flags
    /// (and, for `apply`, deadlines well inside a test's own).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.args(args);
        if args.contains(&"apply") {
            c.args(["--node-timeout", "60", "--etcd-timeout", "30"]);
        }
        c.arg("--config")
            .arg(&self.talconfig)
            .arg("--secrets")
            .arg(&self.secrets)
            .arg("--state-dir")
            .arg(&self.state);
        c
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    /// Sets the definition's top-level talhelper patch (one strategic merge
    /// patch for every node), replacing the previous one.
    pub fn set_patch(&self, yaml: &str) {
        let text = std::fs::read_to_string(&self.talconfig).unwrap();
        let base = text
            .split("\npatches:\n")
            .next()
            .unwrap()
            .trim_end()
            .to_string();
        let body: String = yaml.lines().map(|l| format!("    {l}\n")).collect();
        std::fs::write(&self.talconfig, format!("{base}\npatches:\n  - |-\n{body}")).unwrap();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every line of stdout as JSON.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    text(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
