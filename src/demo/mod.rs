//! `demo`: starts the lab, describes it as a cluster definition, and runs the real
//! `up` against it over the same gRPC/TLS paths as on metal. Measures the tool
//! against the lab: overhead beyond the lab's own critical path, and how long the
//! tool takes to notice each node reaching `running`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endsys_lab::{Lab, LabOptions, NodeState};

use crate::engine::ledger::{percentile, Ledger};
use crate::engine::talhelper::TalhelperSource;
use crate::engine::{ClusterSource, Emitter, Event, EventKind, EventSink, FlowError, StepId};
use crate::flows::up::{up, UpOptions, UpReport};

mod definition;
mod half;
pub mod overhead;
pub use definition::{lab_definition, lab_talconfig, write_lab_files};
pub use half::kube_half;
pub use overhead::{Overhead, StepOverhead};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub controlplanes: usize,
    pub time_scale: f64,
    pub talos_version: String,
    pub first_ip: Ipv4Addr,
    /// Keep the state here instead of a temporary directory.
    pub state_dir: Option<PathBuf>,
    pub until: StepId,
    /// Copy this secrets bundle instead of generating one (RSA-4096 takes seconds).
    pub secrets_from: Option<PathBuf>,
    /// helm for the lab charts; `None`: `helm` on PATH, else pre-rendered manifests.
    pub helm: Option<PathBuf>,
    /// Run `up` a second time after the first (it must change nothing).
    pub rerun: bool,
    /// Use this gitops repository (lab-shaped) instead of writing the lab's.
    pub repo: Option<PathBuf>,
    /// Deadline of the `gitops` step (default: the lab's 300 s).
    pub gitops_timeout: Option<Duration>,
    /// Deadline of the `flux_sync` step (default: the lab's 120 s).
    pub flux_timeout: Option<Duration>,
    /// Caps every wait of the run (node, etcd, API server, charts, Flux): tests
    /// set it far below the defaults so a hang fails fast.
    pub deadline: Option<Duration>,
    /// Called with the lab's Kubernetes API after the run(s), failed or not,
    /// before the lab stops (tests look at what the run left behind).
    pub inspect: Option<Inspect>,
}

/// A look at the lab before it stops.
#[derive(Clone)]
pub struct Inspect(pub Arc<dyn Fn(&endsys_lab::kube::KubeLab) + Send + Sync>);

impl std::fmt::Debug for Inspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspect")
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            controlplanes: 3,
            time_scale: 1.5,
            talos_version: "v1.13.9".into(),
            first_ip: Ipv4Addr::new(127, 0, 0, 11),
            state_dir: None,
            until: StepId::LAST,
            secrets_from: None,
            helm: None,
            rerun: false,
            repo: None,
            gitops_timeout: None,
            flux_timeout: None,
            deadline: None,
            inspect: None,
        }
    }
}

/// What a demo run measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub up: UpReport,
    /// The second run, with `rerun`.
    pub rerun: Option<UpReport>,
    pub table: String,
    pub wall: Duration,
    /// How long the lab was busy (some simulated delay running) during the
    /// run, from its own timestamps.
    pub critical_path: Duration,
    /// The tool's overhead per step and in total, against the lab's record.
    pub overhead: Overhead,
    /// Peak resident memory of the process (tool and lab together), if known.
    pub peak_rss: Option<u64>,
    /// Node reaching `running` in the lab → the tool observing it.
    pub lags: Vec<Duration>,
    pub lag_p95: Duration,
    pub state_dir: PathBuf,
    /// The Kubernetes half (kube_api … layer1_done) of the first run, and the
    /// lab's busy time inside its steps.
    pub kube_wall: Duration,
    pub kube_critical_path: Duration,
    /// When each GitOps layer first had every Flux object Ready (since the run
    /// started), from the `layer_progress` events of the first run.
    pub layers_ready: Vec<(u8, Duration)>,
    /// The steps after layer 1 (flux_secrets … adoption) of the first run,
    /// and the lab's busy time inside them.
    pub gitops_wall: Duration,
    pub gitops_critical_path: Duration,
    /// Flux objects whose resourceVersion changed during the re-run (none
    /// expected).
    pub rerun_changed: Vec<String>,
    /// The machine config each lab node received, by hostname, as the node
    /// holds it at the end of the run.
    pub applied: BTreeMap<String, Vec<u8>>,
}

impl DemoReport {
    fn layers_text(&self) -> String {
        if self.layers_ready.is_empty() {
            return String::new();
        }
        let mut s = format!(
            "\nGitOps (flux_secrets → adoption): {}; every Flux object Ready per layer at:",
            versus(self.gitops_critical_path, self.gitops_wall)
        );
        for (l, at) in &self.layers_ready {
            s.push_str(&format!(" L{l} {:.2}s", at.as_secs_f64()));
        }
        s
    }

    pub fn overhead(&self) -> Duration {
        self.wall.saturating_sub(self.critical_path)
    }

    /// The Kubernetes half's time beyond the lab's simulated delays.
    pub fn kube_overhead(&self) -> Duration {
        self.kube_wall.saturating_sub(self.kube_critical_path)
    }

    pub fn summary(&self) -> String {
        format!(
            "{}\nwhole run: {}\n{}\nreaction lag (lab node running -> tool notices): p95 {:.0} ms over {} node(s), max {:.0} ms",
            self.table,
            versus(self.critical_path, self.wall),
            self.overhead.per_step_text()
                + &self
                    .peak_rss
                    .map(|b| format!("\npeak memory: {} MiB (tool and lab: one process)", b / (1024 * 1024)))
                    .unwrap_or_default(),
            self.lag_p95.as_secs_f64() * 1000.0,
            self.lags.len(),
            self.lags.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        ) + &self.layers_text() + &if self.kube_wall.is_zero() {
            String::new()
        } else {
            format!(
                "\nKubernetes half: {}",
                versus(self.kube_critical_path, self.kube_wall)
            )
        }
    }
}

/// The tool's wall time against the lab's busy time on a path (from the lab's
/// own timestamps, so never more than the wall time).
fn versus(lab: Duration, tool: Duration) -> String {
    let (l, t) = (lab.as_secs_f64(), tool.as_secs_f64());
    let over = tool.saturating_sub(lab).as_secs_f64();
    let pct = if t > 0.0 { 100.0 * over / t } else { 0.0 };
    format!(
        "lab busy {l:.2}s (its own timestamps), tool {t:.2}s, tool overhead {:.0} ms ({pct:.1}% of the run)",
        over * 1000.0
    )
}

/// Records when each lab node enters each state (the lab's side of the lag).
pub fn record_lab_transitions(lab: &Lab) -> Arc<Mutex<Vec<(usize, NodeState, Instant)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    for n in lab.nodes() {
        let mut rx = n.watch_state();
        let idx = n.index();
        let log = log.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = *rx.borrow_and_update();
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((idx, s, Instant::now()));
            }
        });
    }
    log
}

/// Starts the lab and runs `up` against it.
pub async fn run_demo(opts: &DemoOptions, em: &Emitter) -> Result<DemoReport, FlowError> {
    if opts.controlplanes == 0 || opts.controlplanes > opts.nodes {
        return Err(FlowError::Definition {
            file: "demo options".into(),
            detail: format!(
                "--controlplanes must be between 1 and --nodes ({}), got {}",
                opts.nodes, opts.controlplanes
            ),
        });
    }
    let lab = Lab::start(LabOptions {
        nodes: opts.nodes,
        controlplanes: opts.controlplanes,
        first_ip: opts.first_ip,
        port: 50000,
        talos_version: opts.talos_version.clone(),
        time_scale: opts.time_scale,
        ..LabOptions::default()
    })
    .await
    .map_err(|e| FlowError::Source(format!("cannot start the lab: {e}")))?;
    let transitions = record_lab_transitions(&lab);
    let def = lab_definition(&lab, opts.controlplanes, "lab");
    let state_dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("endsys-demo-")
            .tempdir()
            .map_err(|e| FlowError::local(&std::env::temp_dir(), e.to_string()))?
            // Kept: the operator may want to look at the journal and kubeconfig.
            .keep(),
    };
    let (talconfig, secrets) = write_lab_files(
        &state_dir.join("talos"),
        &def,
        &opts.talos_version,
        opts.secrets_from.as_deref(),
    )?;
    // Every node, workers included, gets the config `gen config` renders from
    // these files (workers get their apid certificate from the lab's trustd).
    let mut files = TalhelperSource::new(&talconfig, &secrets);
    files.vars = crate::machineconfig::Vars::default();
    let source: &dyn ClusterSource = &files;
    let mut uo = UpOptions::new(state_dir.clone());
    uo.until = opts.until;
    if let Some(d) = opts.deadline {
        uo.node_deadline = d;
        uo.reach_deadline = d;
        uo.etcd_deadline = d;
        uo.apiserver_deadline = d;
    }
    // The demo's lab is new on every start: a journal an earlier demo left in
    // the same --state-dir describes a cluster that is gone, not one to protect.
    uo.new_cluster = true;
    let repo = match &opts.repo {
        Some(r) => r.clone(),
        None => state_dir.join("repo"),
    };
    if opts.until >= StepId::KubeApi {
        if opts.repo.is_none() {
            endsys_lab::repository::write_repo(&repo).map_err(|e| FlowError::Local {
                path: repo.display().to_string(),
                detail: format!("cannot write the lab repository: {e}"),
            })?;
        }
        let helm = match crate::charts::helm::Helm::find(opts.helm.as_deref()).await {
            Ok(h) => {
                em.progress(
                    StepId::Preflight,
                    None,
                    format!(
                        "lab charts: rendered by helm {} ({})",
                        h.version,
                        h.path.display()
                    ),
                );
                Some(h)
            }
            Err(e) => {
                em.progress(
                    StepId::Preflight,
                    None,
                    format!("lab charts: {e} — using the pre-rendered manifests of the lab chart set (same apply/wait path)"),
                );
                None
            }
        };
        let mut half = kube_half(repo.clone(), helm)
            .map_err(|e| FlowError::Source(format!("lab age key: {e}")))?;
        if let Some(d) = opts.gitops_timeout {
            half.gitops_deadline = d;
        }
        if let Some(d) = opts.flux_timeout {
            half.flux_deadline = d;
        }
        if let Some(d) = opts.deadline {
            half.nodes_deadline = half.nodes_deadline.min(d);
            half.chart_deadline = half.chart_deadline.min(d);
            half.flux_deadline = half.flux_deadline.min(d);
            half.gitops_deadline = half.gitops_deadline.min(d);
        }
        uo.kube = Some(half);
    }
    if opts.until > StepId::Layer1Done {
        serve_lab_git(&lab, &repo)?;
    }
    let ledger = Ledger::new();
    em.add_sink(ledger.sink());
    let layer_times = LayerTimes::default();
    em.add_sink(Box::new(layer_times.clone()));
    let first = up(source, &uo, em).await;
    let report = match first {
        Ok(r) => r,
        Err(e) => {
            if let Some(i) = &opts.inspect {
                (i.0)(&lab.kube());
            }
            lab.shutdown().await;
            return Err(e);
        }
    };
    let layers_ready = layer_times.first_ready();
    // Measured on the first run only; the re-run is a check that nothing changes.
    let wall = ledger.wall().unwrap_or(report.duration);
    // Against the lab's own record of its delays, for the first run only.
    let overhead = match ledger.window() {
        Some(window) => Overhead::measure(&ledger.steps(), &lab.delays(), window),
        None => Overhead::default(),
    };
    let (kube_wall, kube_critical_path) =
        overhead.part(|s| (StepId::KubeApi..=StepId::Layer1Done).contains(&s));
    let (gitops_wall, gitops_critical_path) = overhead.part(|s| s > StepId::Layer1Done);
    let before = flux_versions(&lab.kube());
    let rerun = if opts.rerun {
        let r = up(source, &uo, em).await;
        if r.is_err() {
            if let Some(i) = &opts.inspect {
                (i.0)(&lab.kube());
            }
        }
        Some(r?)
    } else {
        None
    };
    let after = flux_versions(&lab.kube());
    let rerun_changed: Vec<String> = if opts.rerun {
        after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect()
    } else {
        vec![]
    };
    if let Some(i) = &opts.inspect {
        (i.0)(&lab.kube());
    }

    let mut lags = Vec::new();
    let log = transitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (i, n) in def.nodes.iter().enumerate() {
        let lab_running = log
            .iter()
            .find(|(idx, s, _)| *idx == i && *s == NodeState::Running)
            .map(|(_, _, at)| *at);
        if let (Some(lab_at), Some(tool_at)) =
            (lab_running, ledger.observed(&n.hostname, "running"))
        {
            lags.push(tool_at.saturating_duration_since(lab_at));
        }
    }
    let critical_path = overhead.lab;
    let applied = lab
        .nodes()
        .iter()
        .filter_map(|n| Some((n.hostname()?, n.applied_config()?)))
        .collect();
    lab.shutdown().await;
    Ok(DemoReport {
        up: report,
        rerun,
        table: ledger.table(),
        wall,
        critical_path,
        overhead,
        peak_rss: overhead::peak_rss(),
        lag_p95: percentile(&lags, 95.0),
        lags,
        state_dir,
        kube_wall,
        kube_critical_path,
        layers_ready,
        gitops_wall,
        gitops_critical_path,
        rerun_changed,
        applied,
    })
}

/// resourceVersion of every Flux object in the lab (to show a re-run changed
/// none of them: no new reconcile, no new HelmRelease history entry).
fn flux_versions(k: &endsys_lab::kube::KubeLab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kind in [
        "FluxInstance",
        "GitRepository",
        "Kustomization",
        "HelmRelease",
    ] {
        for o in k.list(kind, None) {
            let at = |p: &str| {
                o.pointer(p)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            out.insert(
                format!(
                    "{kind} {}/{}",
                    at("/metadata/namespace"),
                    at("/metadata/name")
                ),
                at("/metadata/resourceVersion"),
            );
        }
    }
    out
}

/// Answers the FluxInstance's Git URL ([`endsys_lab::repository::GIT_URL`]) with
/// the lab repository, as a Git host serves the operator's repository.
fn serve_lab_git(lab: &Lab, repo: &std::path::Path) -> Result<(), FlowError> {
    lab.kube()
        .serve_git(endsys_lab::repository::GIT_URL, repo.to_path_buf());
    Ok(())
}

/// Records, per GitOps layer, when its count first reached total (for the
/// demo's timing lines).
#[derive(Clone, Default)]
struct LayerTimes(Arc<Mutex<Vec<(u8, Duration)>>>);

impl LayerTimes {
    fn first_ready(&self) -> Vec<(u8, Duration)> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort();
        v
    }
}

impl EventSink for LayerTimes {
    fn record(&mut self, ev: &Event) {
        if let EventKind::LayerProgress { ready, total, .. } = &ev.kind {
            let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if ready == total && *total > 0 && !v.iter().any(|(l, _)| *l == ev.layer) {
                v.push((ev.layer, Duration::from_millis(ev.elapsed_ms)));
            }
        }
    }
}
