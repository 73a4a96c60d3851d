//! The fixture of the upgrade tests: a lab cluster on an old Talos brought up
//! by the real `up` (Talos half plus the kubeconfig), its API endpoint a
//! VIP-like address no node owns; etcd quorum sampled on every lab change; the
//! upgrade's options with the tests' short deadlines.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::talhelper::TalhelperSource;
use endsys_bootstrap::engine::{
    Cluster, ClusterSource, Emitter, Event, EventKind, EventSink, Outcome, StepId,
};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::flows::upgrade::UpgradeOptions;
use endsys_lab::Lab;

use super::fixture::{self, up_options, Deadlines};
use super::memory::MemorySource;

pub const DEADLINES: Deadlines = Deadlines {
    node: Duration::from_secs(60),
    reach: Duration::from_secs(10),
    retry_budget: Duration::from_secs(5),
};

/// Every test's own deadline.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

pub struct Env {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub src: Box<dyn ClusterSource>,
    pub cluster: Cluster,
    /// The talhelper definition and secrets files, when the cluster comes from them.
    pub files: Option<(PathBuf, PathBuf)>,
}

/// `cps` + `workers` nodes on Talos `from`, brought up through the kubeconfig
/// from a talhelper definition whose talosVersion is v1.13.9 (the files are in
/// the state directory, the checked-in secrets next to them).
pub async fn talhelper_cluster(subnet: u8, from: &str, cps: usize, workers: usize) -> Env {
    let lab = fixture::start_lab_of(from, subnet, cps + workers, cps, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    let def = lab_definition(&lab, cps, "upg");
    let talconfig = dir.path().join("talconfig.yaml");
    std::fs::write(
        &talconfig,
        endsys_bootstrap::demo::lab_talconfig(&def, "v1.13.9"),
    )
    .unwrap();
    let secrets = dir.path().join("talsecret.yaml");
    std::fs::copy(fixture::SECRETS, &secrets).unwrap();
    let mut src = TalhelperSource::new(&talconfig, &secrets);
    src.vars = Default::default();
    let o = up_options(dir.path(), StepId::Kubeconfig, DEADLINES);
    up(&src as &dyn ClusterSource, &o, &Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("{}", endsys_bootstrap::Doctor::explain(&e)));
    let cluster = Cluster::load(&src, dir.path()).unwrap();
    Env {
        lab,
        dir,
        src: Box::new(src),
        cluster,
        files: Some((talconfig, secrets)),
    }
}

/// `cps` control planes and `workers` workers on Talos `from`, brought up by
/// `up` through the kubeconfig; the definition's install image is
/// ghcr.io/siderolabs/installer:v1.13.9 (the memory source's config).
pub async fn cluster(subnet: u8, from: &str, cps: usize, workers: usize, scale: f64) -> Env {
    cluster_until(subnet, from, cps, workers, scale, StepId::Kubeconfig).await
}

/// [`cluster`] with `up` run through `until`; past layer 1 the lab's Git
/// repository is served and Flux brings up every layer.
pub async fn cluster_until(
    subnet: u8,
    from: &str,
    cps: usize,
    workers: usize,
    scale: f64,
    until: StepId,
) -> Env {
    let lab = fixture::start_lab_of(from, subnet, cps + workers, cps, scale).await;
    let mut def = lab_definition(&lab, cps, "upg");
    def.endpoint = format!("https://127.0.{subnet}.10:6443");
    let src = MemorySource::new(def, None);
    let dir = tempfile::tempdir().unwrap();
    let mut o = up_options(dir.path(), until, DEADLINES);
    o.apiserver_deadline = DEADLINES.node;
    if until > StepId::Apiserver {
        let repo = dir.path().join("repo");
        endsys_lab::repository::write_repo(&repo).unwrap();
        if until > StepId::Layer1Done {
            lab.kube()
                .serve_git(endsys_lab::repository::GIT_URL, repo.clone());
        }
        o.kube = Some(endsys_bootstrap::demo::kube_half(repo, None).unwrap());
    }
    up(&src as &dyn ClusterSource, &o, &Emitter::new())
        .await
        .unwrap_or_else(|e| panic!("{}", endsys_bootstrap::Doctor::explain(&e)));
    tokio::time::timeout(Duration::from_secs(30), lab.kube().wait_up())
        .await
        .expect("lab kube-apiserver up");
    let cluster = Cluster::load(&src, dir.path()).unwrap();
    Env {
        lab,
        dir,
        src: Box::new(src),
        cluster,
        files: None,
    }
}

impl Env {
    pub fn options(&self) -> UpgradeOptions {
        let mut o = UpgradeOptions::new(self.dir.path().to_path_buf());
        o.policy = fixture::policy(DEADLINES.retry_budget);
        o.node_deadline = DEADLINES.node;
        o.etcd_deadline = DEADLINES.node;
        o.kube_deadline = DEADLINES.node;
        o.drain_timeout = Duration::from_secs(3);
        o.layers_deadline = Duration::from_secs(20);
        o
    }

    /// The cluster as a fresh process would load it.
    pub fn reload(&self) -> Cluster {
        Cluster::load(&*self.src, self.dir.path()).unwrap()
    }

    /// Hostname → boot ID of every node now.
    pub fn boot_ids(&self) -> Vec<(String, String)> {
        self.lab
            .nodes()
            .iter()
            .map(|n| (n.hostname().unwrap_or_default(), n.boot_id()))
            .collect()
    }
}

/// Samples etcd quorum on every lab change until stopped; returns the samples
/// that had no quorum and the number of samples.
pub fn sample_quorum(
    lab: &Lab,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(Vec<String>, usize)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut changes = lab.changes();
    let etcd = lab.etcd();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut lost = Vec::new();
        let mut n = 0;
        while !s.load(Ordering::SeqCst) {
            n += 1;
            match etcd.quorum() {
                Ok((_, _, true)) => {}
                Ok((healthy, members, false)) => {
                    lost.push(format!("{healthy} healthy of {members}"))
                }
                Err(e) => lost.push(e.to_string()),
            }
            if tokio::time::timeout(Duration::from_millis(200), changes.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        (lost, n)
    });
    (stop, task)
}

/// Every event, as the sink saw it (synchronously).
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<Event>>>);

impl EventSink for Collect {
    fn record(&mut self, ev: &Event) {
        self.0.lock().unwrap().push(ev.clone());
    }
}

impl Collect {
    pub fn emitter(&self) -> Emitter {
        let em = Emitter::new();
        em.add_sink(Box::new(self.clone()));
        em
    }

    /// `node step: text` of every started/done/skipped/progress/warning event.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| {
                let text = match &e.kind {
                    EventKind::StepStarted { description } => format!("started {description}"),
                    EventKind::StepFinished {
                        outcome: Outcome::Done { detail },
                        ..
                    } => format!("done {detail}"),
                    EventKind::StepFinished {
                        outcome: Outcome::Skipped { reason },
                        ..
                    } => format!("skipped {reason}"),
                    EventKind::Progress { message } => format!("info {message}"),
                    EventKind::Warning { message } => format!("warning {message}"),
                    _ => return None,
                };
                Some(format!(
                    "{} {}: {text}",
                    e.node.as_deref().unwrap_or("-"),
                    e.step
                ))
            })
            .collect()
    }

    /// The lines of one node and step.
    pub fn of(&self, node: &str, step: StepId) -> Vec<String> {
        let p = format!("{node} {step}: ");
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(&p))
            .collect()
    }
}
