//! `up`, the Talos half of layer 1: preflight → apply → wait configured →
//! bootstrap etcd once → etcd quorum → kubeconfig → kube-apiserver serving.
//!
//! Every step reads the real state first, acts only when needed and verifies.
//! Per-node work runs concurrently; one node's failure fails the step with its
//! name once the other nodes have finished theirs.

use endsys_core::Doctor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use serde::Deserialize;
use tonic::Code;

use crate::talos::resources::MachineStage;
use crate::talos::wait::WaitProgress;
use crate::talos::{
    probe_mode, ApplyMode, CallPolicy, Credentials, Dial, NodeMode, TalosClient, TalosError,
    TlsFailure, TlsMode,
};

use super::error::{FlowError, NodeFailure};
use super::events::{Emitter, EventKind, Outcome, StepId};
use super::hardware;
use super::journal::{Journal, JournalSink};
use super::source::{ClusterSource, Definition, NodeDef, Rendered};

/// Longest pause between two looks at a state that has no watch.
pub const POLL: Duration = Duration::from_millis(250);

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Journal, talosconfig and kubeconfig go here.
    pub state_dir: PathBuf,
    /// Allow creating a secrets bundle even though nodes already serve a CA.
    pub new_cluster: bool,
    /// Last step to run; later steps are reported as skipped with the reason.
    pub until: StepId,
    /// How long a node may take from apply to running.
    pub node_deadline: Duration,
    /// How long preflight waits for a node that does not answer, when an earlier
    /// run applied configs (it may be rebooting); fresh runs wait `probe_timeout`.
    pub reach_deadline: Duration,
    /// etcd bootstrap + quorum.
    pub etcd_deadline: Duration,
    /// kube-apiserver serving after etcd.
    pub apiserver_deadline: Duration,
    pub policy: CallPolicy,
    /// One TLS probe.
    pub probe_timeout: Duration,
    /// The Kubernetes half of layer 1 (namespaces, secrets, CRDs, charts); its
    /// steps are skipped when `None`.
    pub kube: Option<super::layer1::KubeHalf>,
    /// Disaster recovery (`recover --snapshot`): the bootstrap step uploads this
    /// snapshot with EtcdRecover and calls Bootstrap{recover_etcd} instead of
    /// starting an empty etcd. Ignored once etcd has a member.
    pub recover_from: Option<PathBuf>,
}

/// File in the state directory while a recovery has not yet verified its
/// restore; `up` without a snapshot refuses to bootstrap an empty etcd then.
pub const RECOVER_PENDING: &str = "recover-pending";

impl UpOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            new_cluster: false,
            until: StepId::LAST,
            node_deadline: Duration::from_secs(20 * 60),
            reach_deadline: Duration::from_secs(5 * 60),
            etcd_deadline: Duration::from_secs(10 * 60),
            apiserver_deadline: Duration::from_secs(10 * 60),
            policy: CallPolicy::default(),
            probe_timeout: Duration::from_secs(5),
            kube: None,
            recover_from: None,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub steps: Vec<(StepId, Outcome)>,
    pub talosconfig: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub duration: Duration,
}

/// What preflight learned about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeClass {
    Maintenance,
    /// Configured; its certificate is from our CA.
    Ours,
    /// Configured from another secrets bundle.
    Foreign,
    /// Configured, but we hold no secrets to tell whose.
    ConfiguredUnknown,
    Unreachable(String),
}

impl NodeClass {
    pub fn describe(&self) -> String {
        match self {
            NodeClass::Maintenance => "maintenance".into(),
            NodeClass::Ours => "configured (our CA)".into(),
            NodeClass::Foreign => "configured (another CA)".into(),
            NodeClass::ConfiguredUnknown => "configured (CA unknown: no secrets)".into(),
            NodeClass::Unreachable(why) => format!("unreachable: {why}"),
        }
    }
}

fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => address,
    }
}

/// State shared by the steps of one run.
struct Run<'a> {
    em: &'a Emitter,
    opts: &'a UpOptions,
    def: Definition,
    journal: Journal,
    rendered: Option<Rendered>,
    classes: BTreeMap<String, NodeClass>,
    kube: super::layer1::KubeState,
}

impl<'a> Run<'a> {
    fn creds(&self) -> Option<&Arc<Credentials>> {
        self.rendered.as_ref().map(|r| &r.credentials)
    }

    fn mtls(&self, node: &NodeDef) -> Result<TalosClient, FlowError> {
        let creds = self
            .creds()
            .ok_or_else(|| FlowError::Source("no credentials rendered".into()))?
            .clone();
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Mutual(creds),
            self.opts.policy,
        )?)
    }

    fn insecure(&self, node: &NodeDef) -> Result<TalosClient, FlowError> {
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Insecure { fingerprint: None },
            self.opts.policy,
        )?)
    }

    fn config_of(&self, node: &NodeDef) -> Result<&[u8], FlowError> {
        self.rendered
            .as_ref()
            .and_then(|r| r.configs.get(&node.hostname))
            .map(Vec::as_slice)
            .ok_or_else(|| FlowError::Source(format!("no config rendered for {}", node.hostname)))
    }

    fn bootstrap_node(&self) -> &NodeDef {
        let hint = self.journal.bootstrap_node.as_deref();
        self.def
            .control_planes()
            .find(|n| Some(n.hostname.as_str()) == hint)
            .or_else(|| self.def.control_planes().next())
            .unwrap_or(&self.def.nodes[0])
    }
}

/// Runs `up` against the cluster of `source`, reporting through `em`.
pub async fn up(
    source: &dyn ClusterSource,
    opts: &UpOptions,
    em: &Emitter,
) -> Result<UpReport, FlowError> {
    let started = Instant::now();
    let def = source.definition()?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| FlowError::Local {
        path: opts.state_dir.display().to_string(),
        detail: format!("cannot create the state directory: {e}"),
    })?;
    let journal = Journal::load(&opts.state_dir, &def.cluster)?;
    em.add_sink(Box::new(JournalSink::new(
        opts.state_dir.clone(),
        journal.clone(),
    )));
    em.emit(
        StepId::Run,
        None,
        EventKind::RunStarted {
            cluster: def.cluster.clone(),
            steps: StepId::UP.iter().map(|s| s.name().to_string()).collect(),
        },
    );
    let mut run = Run {
        em,
        opts,
        def,
        journal,
        rendered: None,
        classes: BTreeMap::new(),
        kube: Default::default(),
    };
    let mut report = UpReport {
        steps: Vec::new(),
        talosconfig: opts.state_dir.join("talosconfig"),
        kubeconfig: None,
        duration: Duration::ZERO,
    };
    let result = run_steps(&mut run, source, &mut report).await;
    report.duration = started.elapsed();
    em.emit(
        StepId::Run,
        None,
        EventKind::RunFinished {
            ok: result.is_ok(),
            duration_ms: started.elapsed().as_millis() as u64,
        },
    );
    result.map(|()| report)
}

async fn run_steps(
    run: &mut Run<'_>,
    source: &dyn ClusterSource,
    report: &mut UpReport,
) -> Result<(), FlowError> {
    for step in StepId::UP {
        let t0 = Instant::now();
        if step > run.opts.until {
            let outcome = Outcome::Skipped {
                reason: format!("not run: --until {}", run.opts.until.until_flag()),
            };
            run.em.finished(step, None, outcome.clone(), t0);
            report.steps.push((step, outcome));
            continue;
        }
        run.em.started_step(step, None);
        let result = match step {
            StepId::Preflight => preflight(run, source).await,
            StepId::Apply => apply(run).await,
            StepId::WaitConfigured => wait_configured(run).await,
            StepId::Bootstrap => bootstrap(run).await,
            StepId::EtcdQuorum => etcd_quorum(run).await,
            StepId::Kubeconfig => kubeconfig(run, report).await,
            StepId::Apiserver => apiserver(run).await,
            StepId::Run => Ok(Outcome::Skipped {
                reason: String::new(),
            }),
            k8s => match &run.opts.kube {
                None => Ok(Outcome::Skipped {
                    reason: "no gitops repository given (--repo): the Kubernetes half is not run"
                        .into(),
                }),
                Some(half) => {
                    super::layer1::run_step(
                        k8s,
                        half,
                        &mut run.kube,
                        &run.opts.state_dir,
                        run.def.nodes.len(),
                        run.em,
                    )
                    .await
                }
            },
        };
        match result {
            Ok(outcome) => {
                run.em.finished(step, None, outcome.clone(), t0);
                report.steps.push((step, outcome));
            }
            Err(e) => {
                run.em.finished(step, None, failed(&e), t0);
                return Err(e);
            }
        }
    }
    Ok(())
}

fn failed(e: &FlowError) -> Outcome {
    Outcome::Failed {
        error: e.to_string(),
        cause: e.likely_cause(),
        next_action: e.next_action(),
    }
}

/// Runs `f` on every node concurrently; per-node start/finish events; collects
/// failures after all have finished.
async fn per_node<'n, F, Fut>(
    run: &Run<'_>,
    step: StepId,
    nodes: Vec<&'n NodeDef>,
    f: F,
) -> Result<Vec<(&'n NodeDef, Outcome)>, FlowError>
where
    F: Fn(&'n NodeDef) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, FlowError>>,
{
    let em = run.em;
    let results = join_all(nodes.into_iter().map(|n| {
        let fut = f(n);
        async move {
            let t0 = Instant::now();
            em.started_step(step, Some(&n.hostname));
            let r = fut.await;
            let outcome = match &r {
                Ok(o) => o.clone(),
                Err(e) => failed(e),
            };
            em.finished(step, Some(&n.hostname), outcome, t0);
            (n, r)
        }
    }))
    .await;
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for (n, r) in results {
        match r {
            Ok(o) => ok.push((n, o)),
            Err(e) => failures.push(NodeFailure {
                node: n.label(),
                error: Box::new(e),
            }),
        }
    }
    if failures.is_empty() {
        Ok(ok)
    } else {
        Err(FlowError::Nodes {
            step: step.name().to_string(),
            failures,
        })
    }
}

/// A step's outcome from its nodes': skipped when no node needed anything.
fn aggregate(results: &[(&NodeDef, Outcome)]) -> Outcome {
    let done = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Done { .. }))
        .count();
    let skipped = results.len() - done;
    if done == 0 {
        Outcome::Skipped {
            reason: format!("all {skipped} node(s) already in place"),
        }
    } else {
        Outcome::Done {
            detail: format!("{done} node(s) changed, {skipped} already in place"),
        }
    }
}

/// The doctor's cause, or the error itself when the doctor has nothing specific.
fn short_cause(e: &TalosError) -> String {
    let cause = e.likely_cause();
    if cause == "the node returned an error" {
        e.root().to_string()
    } else {
        cause
    }
}

// ---- preflight ------------------------------------------------------------------

/// Classifies a node by a TLS probe; waits up to `deadline` while it does not answer.
pub async fn classify(
    em: &Emitter,
    step: StepId,
    node: &NodeDef,
    creds: Option<&Arc<Credentials>>,
    probe_timeout: Duration,
    deadline: Duration,
) -> NodeClass {
    let dial = match Dial::parse(&node.address) {
        Ok(d) => d,
        Err(e) => return NodeClass::Unreachable(e.to_string()),
    };
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut said = String::new();
    loop {
        let err = match probe_mode(&dial, creds, probe_timeout).await {
            Ok(NodeMode::Maintenance) => return NodeClass::Maintenance,
            Ok(NodeMode::Configured { our_ca: Some(true) }) => return NodeClass::Ours,
            Ok(NodeMode::Configured {
                our_ca: Some(false),
            }) => return NodeClass::Foreign,
            Ok(NodeMode::Configured { our_ca: None }) => return NodeClass::ConfiguredUnknown,
            Err(e) => e,
        };
        let waitable = err.is_transient()
            || matches!(
                err.root(),
                TalosError::Tls {
                    kind: TlsFailure::Other,
                    ..
                }
            );
        if !waitable || t0.elapsed() + pause > deadline {
            return NodeClass::Unreachable(err.likely_cause());
        }
        let msg = format!(
            "{} to answer on the Talos API ({})",
            node.label(),
            err.likely_cause()
        );
        if msg != said {
            em.waiting(step, Some(&node.hostname), msg.clone());
            said = msg;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn preflight(run: &mut Run<'_>, source: &dyn ClusterSource) -> Result<Outcome, FlowError> {
    let em = run.em;
    let opts = run.opts;
    let step = StepId::Preflight;
    // The Kubernetes half's inputs first: a missing helm or a broken helmfile
    // must stop the run before any node is touched.
    if let Some(half) = &opts.kube {
        if opts.until >= StepId::KubeApi {
            super::layer1::preflight_into(half, &mut run.kube, em).await?;
        }
    }
    em.progress(
        step,
        None,
        format!(
            "definition ok: cluster {}, {} node(s), {} control plane(s)",
            run.def.cluster,
            run.def.nodes.len(),
            run.def.control_planes().count()
        ),
    );
    let has_secrets = source.has_secrets()?;
    if has_secrets {
        run.rendered = Some(source.render()?);
    } else {
        em.progress(
            step,
            None,
            format!("no secrets bundle at {}", source.secrets_location()),
        );
    }
    // A node may be rebooting into a config an earlier run applied.
    let deadline = if run.journal.steps.contains_key(StepId::Apply.name()) {
        opts.reach_deadline
    } else {
        opts.probe_timeout
    };
    let creds = run.creds().cloned();
    let classes = join_all(run.def.nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let c = classify(em, step, n, creds.as_ref(), opts.probe_timeout, deadline).await;
            em.node_state(step, &n.hostname, c.describe());
            (n.hostname.clone(), c)
        }
    }))
    .await;
    run.classes = classes.into_iter().collect();

    let labelled = |pred: &dyn Fn(&NodeClass) -> bool| -> Vec<String> {
        run.def
            .nodes
            .iter()
            .filter(|n| pred(&run.classes[&n.hostname]))
            .map(NodeDef::label)
            .collect()
    };
    let mut problems = Vec::new();
    if !has_secrets {
        let configured = labelled(&|c| matches!(c, NodeClass::ConfiguredUnknown));
        if !configured.is_empty() && !opts.new_cluster {
            // Never regenerate secrets under a running cluster.
            return Err(FlowError::SecretsMissingClusterExists {
                path: source.secrets_location(),
                nodes: configured,
            });
        }
        em.progress(step, None, "generating a new secrets bundle");
        source.create_secrets()?;
        run.rendered = Some(source.render()?);
        if !configured.is_empty() {
            problems.push(FlowError::ForeignCa { nodes: configured });
        }
    }
    let foreign = labelled(&|c| matches!(c, NodeClass::Foreign));
    if !foreign.is_empty() {
        problems.push(FlowError::ForeignCa { nodes: foreign });
    }
    let unreachable: Vec<(String, String)> = run
        .def
        .nodes
        .iter()
        .filter_map(|n| match &run.classes[&n.hostname] {
            NodeClass::Unreachable(why) => Some((n.label(), why.clone())),
            _ => None,
        })
        .collect();
    if !unreachable.is_empty() {
        problems.push(FlowError::Unreachable { nodes: unreachable });
    }

    // Hardware gate on maintenance nodes: every selector must match exactly one.
    let maint: Vec<&NodeDef> = run
        .def
        .nodes
        .iter()
        .filter(|n| run.classes[&n.hostname] == NodeClass::Maintenance)
        .collect();
    let checks = join_all(maint.iter().map(|n| {
        let run = &*run;
        async move {
            let c = run.insecure(n)?;
            let disks = c.disks().await?;
            let links = c.links().await?;
            Ok::<_, FlowError>((n, hardware::check_node(n, &disks, &links)))
        }
    }))
    .await;
    for r in checks {
        match r {
            Ok((n, Ok(m))) => {
                if let Some(d) = m.install_disk {
                    em.progress(step, Some(&n.hostname), format!("install disk: {d}"));
                }
            }
            Ok((_, Err(mut errs))) => problems.append(&mut errs),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(FlowError::Preflight(problems));
    }
    // The talosconfig the operator uses with talosctl or `talos …`.
    let tc_path = opts.state_dir.join("talosconfig");
    if !tc_path.exists() {
        if let Some(r) = &run.rendered {
            r.talosconfig.save(&tc_path)?;
        }
    }
    let n_maint = maint.len();
    Ok(Outcome::Done {
        detail: format!(
            "{} node(s): {n_maint} in maintenance, {} configured with our CA",
            run.def.nodes.len(),
            run.def.nodes.len() - n_maint
        ),
    })
}

// ---- apply ------------------------------------------------------------------------

/// Real Talos puts a config diff into the dry-run details; the lab says "No changes".
fn dry_run_unchanged(details: &str) -> bool {
    let lower = details.to_ascii_lowercase();
    if lower.contains("no changes") {
        return true;
    }
    match lower.split_once("config diff:") {
        Some((_, diff)) => diff.trim().is_empty(),
        None => false,
    }
}

async fn apply_node(run: &Run<'_>, n: &NodeDef) -> Result<Outcome, FlowError> {
    let config = run.config_of(n)?;
    match &run.classes[&n.hostname] {
        NodeClass::Maintenance => {
            let c = run.insecure(n)?;
            c.apply_configuration(config, ApplyMode::Auto, false)
                .await?;
            Ok(Outcome::Done {
                detail: "applied in maintenance mode (insecure); the node installs and reboots"
                    .into(),
            })
        }
        NodeClass::Ours => {
            let c = run.mtls(n)?;
            let t0 = Instant::now();
            // The node may be between install and reboot: wait that out.
            let dry = loop {
                match c.apply_configuration(config, ApplyMode::Auto, true).await {
                    Ok(d) => break d,
                    Err(e)
                        if e.code() == Some(Code::FailedPrecondition)
                            && e.to_string().contains("already applied") =>
                    {
                        return Ok(Outcome::Skipped {
                            reason: "config already applied; the node is rebooting into it".into(),
                        })
                    }
                    Err(e) if e.is_transient() && t0.elapsed() < run.opts.reach_deadline => {
                        run.em.waiting(
                            StepId::Apply,
                            Some(&n.hostname),
                            format!("{} to answer ({})", n.label(), e.likely_cause()),
                        );
                        tokio::time::sleep(POLL).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if dry_run_unchanged(&dry.mode_details) {
                return Ok(Outcome::Skipped {
                    reason: "config unchanged".into(),
                });
            }
            let out = c
                .apply_configuration(config, ApplyMode::Auto, false)
                .await?;
            Ok(Outcome::Done {
                detail: format!(
                    "applied over mTLS (auto: {})",
                    out.mode.unwrap_or_else(|| "applied".into()).to_lowercase()
                ),
            })
        }
        other => Err(FlowError::Source(format!(
            "{} cannot be configured: {}",
            n.label(),
            other.describe()
        ))),
    }
}

async fn apply(run: &mut Run<'_>) -> Result<Outcome, FlowError> {
    let run = &*run;
    let nodes: Vec<&NodeDef> = run.def.nodes.iter().collect();
    let results = per_node(run, StepId::Apply, nodes, |n| apply_node(run, n)).await?;
    Ok(aggregate(&results))
}

// ---- wait for configured + running -------------------------------------------------

async fn wait_node_running(run: &Run<'_>, n: &NodeDef) -> Result<Outcome, FlowError> {
    let step = StepId::WaitConfigured;
    let em = run.em;
    let c = run.mtls(n)?;
    let t0 = Instant::now();
    let mut last = String::new();
    let mut first_seen: Option<String> = None;
    em.waiting(
        step,
        Some(&n.hostname),
        format!("{} to run its config", n.label()),
    );
    let status = watch_until_running(&c, run.opts.node_deadline, |p| {
        let now = match &p {
            WaitProgress::Status(s) => s.summary(),
            WaitProgress::Away(e) => format!("away: {}", short_cause(e)),
        };
        if first_seen.is_none() {
            first_seen = Some(now.clone());
        }
        if now != last {
            match &p {
                WaitProgress::Status(_) => em.node_state(step, &n.hostname, now.clone()),
                WaitProgress::Away(_) => em.waiting(
                    step,
                    Some(&n.hostname),
                    format!("{} to come back ({now})", n.label()),
                ),
            }
            last = now;
        }
    })
    .await?;
    em.timing(step, Some(&n.hostname), "node_running", t0.elapsed());
    if first_seen.as_deref() == Some("running") {
        Ok(Outcome::Skipped {
            reason: "already running".into(),
        })
    } else {
        Ok(Outcome::Done {
            detail: status.summary(),
        })
    }
}

/// Follows MachineStatus (COSI Watch, reconnecting while the node is away) until
/// the stage is `running`.
async fn watch_until_running<P>(
    client: &TalosClient,
    deadline: Duration,
    progress: P,
) -> Result<crate::talos::resources::MachineStatus, FlowError>
where
    P: FnMut(WaitProgress),
{
    use crate::talos::wait::{wait_for_status, WaitError};
    wait_for_status(
        client,
        "running",
        deadline,
        |s| s.stage == MachineStage::Running,
        progress,
    )
    .await
    .map_err(|e| match e {
        WaitError::Timeout {
            node,
            wanted,
            after,
            last,
        } => FlowError::Timeout {
            node,
            what: wanted,
            after,
            last,
        },
        WaitError::Fatal(e) => FlowError::from(*e),
    })
}

async fn wait_configured(run: &mut Run<'_>) -> Result<Outcome, FlowError> {
    let run = &*run;
    let nodes: Vec<&NodeDef> = run.def.nodes.iter().collect();
    let results = per_node(run, StepId::WaitConfigured, nodes, |n| {
        wait_node_running(run, n)
    })
    .await?;
    Ok(aggregate(&results))
}

// ---- etcd bootstrap ---------------------------------------------------------------

/// etcd as one control plane reports it.
#[derive(Debug, Clone)]
pub struct EtcdView {
    pub member: Option<u64>,
    /// ServiceList state (`Preparing`, `Running`, ...), None if the service is absent.
    pub service: Option<String>,
    pub last_event: String,
}

async fn etcd_view(c: &TalosClient) -> Result<EtcdView, TalosError> {
    let member = c.etcd_local_member().await?;
    let services = c.service_list().await?;
    let etcd = services.iter().find(|s| s.id == "etcd");
    Ok(EtcdView {
        member,
        service: etcd.map(|s| s.state.clone()),
        last_event: etcd.map(|s| s.last_event.clone()).unwrap_or_default(),
    })
}

async fn read_etcd_everywhere<'r>(
    run: &'r Run<'_>,
) -> Result<Vec<(&'r NodeDef, EtcdView)>, FlowError> {
    let cps: Vec<&NodeDef> = run.def.control_planes().collect();
    let views = join_all(cps.iter().map(|n| async move {
        let c = run.mtls(n)?;
        let v = etcd_view(&c).await?;
        Ok::<_, FlowError>((*n, v))
    }))
    .await;
    views.into_iter().collect()
}

async fn bootstrap(run: &mut Run<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Bootstrap;
    let em = run.em;
    let t0 = Instant::now();
    let deadline = run.opts.etcd_deadline;
    // 1. Read etcd on every control plane; wait until each waits to join or has joined.
    let views = loop {
        let views = read_etcd_everywhere(run).await?;
        for (n, v) in &views {
            em.node_state(
                step,
                &n.hostname,
                format!(
                    "etcd {}{}",
                    v.service.as_deref().unwrap_or("absent"),
                    v.member
                        .map(|m| format!(", member {m:016x}"))
                        .unwrap_or_default()
                ),
            );
        }
        if let Some((n, v)) = views.iter().find(|(_, v)| v.member.is_some()) {
            return Ok(Outcome::Skipped {
                reason: format!(
                    "etcd already bootstrapped: {} is member {:016x}",
                    n.label(),
                    v.member.unwrap_or_default()
                ),
            });
        }
        let failed: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.service.as_deref() == Some("Failed"))
            .map(|(n, v)| format!("{}: {}", n.label(), v.last_event))
            .collect();
        if !failed.is_empty() {
            return Err(FlowError::BootstrapRefused {
                node: failed.join("; "),
                detail: "etcd failed on a control plane that has no member".into(),
            });
        }
        let not_ready: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.service.as_deref() != Some("Preparing"))
            .map(|(n, v)| {
                format!(
                    "{} ({})",
                    n.hostname,
                    v.service.as_deref().unwrap_or("no etcd service yet")
                )
            })
            .collect();
        let started = views.iter().any(|(_, v)| {
            matches!(
                v.service.as_deref(),
                Some("Starting" | "Running" | "Finished")
            )
        });
        if started {
            // A Bootstrap was accepted moments ago (the member appears shortly).
            return Ok(Outcome::Skipped {
                reason: "etcd is already starting after an earlier Bootstrap".into(),
            });
        }
        if not_ready.is_empty() {
            break views;
        }
        if t0.elapsed() > deadline {
            return Err(FlowError::Timeout {
                node: not_ready.join(", "),
                what: "etcd waiting to be bootstrapped".into(),
                after: t0.elapsed(),
                last: "see `talos services`".into(),
            });
        }
        em.waiting(
            step,
            None,
            format!("etcd to wait for bootstrap on {}", not_ready.join(", ")),
        );
        tokio::time::sleep(POLL).await;
    };
    debug_assert!(views.iter().all(|(_, v)| v.member.is_none()));
    // 2. Choose one node, record the choice, then call Bootstrap on it only.
    let target = run.bootstrap_node().clone();
    em.emit(
        step,
        Some(&target.hostname),
        EventKind::Decision {
            key: "bootstrap_node".into(),
            value: target.hostname.clone(),
        },
    );
    let recover = run.opts.recover_from.as_deref();
    if recover.is_none() {
        // An empty etcd now would bury the snapshot a recovery is restoring.
        let marker = run.opts.state_dir.join(RECOVER_PENDING);
        if let Ok(what) = std::fs::read_to_string(&marker) {
            return Err(FlowError::BootstrapRefused {
                node: target.label(),
                detail: format!(
                    "a disaster recovery is in progress ({}: {}); run `recover --snapshot` with that file to finish it",
                    marker.display(),
                    what.trim()
                ),
            });
        }
    }
    let c = run.mtls(&target)?.with_policy(run.opts.policy.once());
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = match recover {
            None => {
                em.progress(step, Some(&target.hostname), "calling Bootstrap");
                c.bootstrap(false, false).await
            }
            Some(path) => {
                // Uploaded again on every attempt: the node truncates the file.
                em.progress(
                    step,
                    Some(&target.hostname),
                    format!("uploading snapshot {} (EtcdRecover)", path.display()),
                );
                match c.etcd_recover(path, false).await {
                    Ok(()) => {
                        em.progress(
                            step,
                            Some(&target.hostname),
                            "calling Bootstrap (recover_etcd)",
                        );
                        c.bootstrap(true, false).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match attempt {
            Ok(()) => {
                if let Some(path) = recover {
                    // The restore runs when etcd starts, after the reply.
                    wait_restored(run, &c, &target).await?;
                    return Ok(Outcome::Done {
                        detail: format!(
                            "etcd restored from {} on {}",
                            path.display(),
                            target.label()
                        ),
                    });
                }
                return Ok(Outcome::Done {
                    detail: format!("etcd bootstrapped on {}", target.label()),
                });
            }
            Err(e) if e.is_already_bootstrapped() => {
                // Success only if this node is now a member of a cluster that
                // includes it, reached over mTLS with our CA.
                let members = c.etcd_members(true).await.map_err(|err| {
                    FlowError::AlreadyBootstrappedUnverified {
                        node: target.label(),
                        detail: err.to_string(),
                    }
                })?;
                let local = c.etcd_local_member().await?;
                return match local {
                    Some(id) if members.iter().any(|m| m.id == id) => Ok(Outcome::Skipped {
                        reason: format!(
                            "AlreadyExists verified: {} is member {id:016x} of a {}-member cluster, served with our CA",
                            target.label(),
                            members.len()
                        ),
                    }),
                    _ => Err(FlowError::AlreadyBootstrappedUnverified {
                        node: target.label(),
                        detail: format!(
                            "local member {:?} not among {} member(s)",
                            local,
                            members.len()
                        ),
                    }),
                };
            }
            Err(e)
                if (e.code() == Some(Code::FailedPrecondition) || e.is_transient())
                    && t0.elapsed() < deadline =>
            {
                em.waiting(
                    step,
                    Some(&target.hostname),
                    format!(
                        "{} to accept Bootstrap ({})",
                        target.label(),
                        e.likely_cause()
                    ),
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// After Bootstrap{recover_etcd}: etcd restores the snapshot as it starts; a
/// failed restore shows only as a failed etcd service (talos-api.md §6.5).
async fn wait_restored(run: &Run<'_>, c: &TalosClient, target: &NodeDef) -> Result<(), FlowError> {
    let t0 = Instant::now();
    let mut last: String;
    loop {
        match etcd_view(c).await {
            Ok(v) if v.member.is_some() && v.service.as_deref() == Some("Running") => return Ok(()),
            Ok(v) if v.service.as_deref() == Some("Failed") => {
                return Err(FlowError::RestoreFailed {
                    node: target.label(),
                    detail: v.last_event,
                })
            }
            Ok(v) => last = format!("etcd {}", v.service.as_deref().unwrap_or("absent")),
            Err(e) if e.is_transient() => last = e.to_string(),
            Err(e) => return Err(e.into()),
        }
        if t0.elapsed() > run.opts.etcd_deadline {
            return Err(FlowError::Timeout {
                node: target.label(),
                what: "etcd running on the restored snapshot".into(),
                after: t0.elapsed(),
                last,
            });
        }
        run.em.waiting(
            StepId::Bootstrap,
            Some(&target.hostname),
            format!(
                "etcd on {} to restore the snapshot and start",
                target.label()
            ),
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- etcd quorum -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ServiceSpec {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    healthy: bool,
}

/// Follows the node's etcd service resource (COSI Watch, reconnecting at most a
/// second apart) until it runs healthy.
async fn wait_etcd_healthy(
    run: &Run<'_>,
    n: &NodeDef,
    deadline: Duration,
) -> Result<(), FlowError> {
    let step = StepId::EtcdQuorum;
    let c = run.mtls(n)?;
    let t0 = Instant::now();
    let (ns, ty) = crate::talos::resources::types::SERVICES;
    let mut last = String::from("nothing yet");
    let mut pause = Duration::from_millis(50);
    loop {
        let remaining = deadline.saturating_sub(t0.elapsed());
        if remaining.is_zero() {
            return Err(FlowError::Timeout {
                node: n.label(),
                what: "etcd member running and healthy".into(),
                after: t0.elapsed(),
                last,
            });
        }
        let attempt = tokio::time::timeout(remaining, async {
            let stream = c.watch(ns, ty, Some("etcd")).await?;
            let mut stream = Box::pin(stream);
            while let Some(ev) = stream.next().await {
                let ev = ev?;
                if let Some(r) = ev.resource {
                    if let Ok(spec) = r.spec::<ServiceSpec>() {
                        let now = format!(
                            "etcd {}",
                            match (spec.running, spec.healthy) {
                                (true, true) => "running, healthy",
                                (true, false) => "running, not healthy yet",
                                _ => "not running",
                            }
                        );
                        if now != last {
                            run.em.node_state(step, &n.hostname, now.clone());
                            last = now;
                        }
                        if spec.running && spec.healthy {
                            return Ok::<bool, TalosError>(true);
                        }
                    }
                }
            }
            Ok(false)
        })
        .await;
        match attempt {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) if e.is_transient() || e.code() == Some(Code::NotFound) => {
                last = e.to_string();
            }
            Ok(Err(e)) => return Err(e.into()),
        }
        tokio::time::sleep(pause.min(deadline.saturating_sub(t0.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn etcd_quorum(run: &mut Run<'_>) -> Result<Outcome, FlowError> {
    let run = &*run;
    let step = StepId::EtcdQuorum;
    let t0 = Instant::now();
    let deadline = run.opts.etcd_deadline;
    let cps: Vec<&NodeDef> = run.def.control_planes().collect();
    let already = read_etcd_everywhere(run)
        .await
        .map(|v| {
            v.iter()
                .all(|(_, v)| v.member.is_some() && v.service.as_deref() == Some("Running"))
        })
        .unwrap_or(false);
    run.em.waiting(
        step,
        None,
        format!("etcd running on {} control plane(s)", cps.len()),
    );
    per_node(run, step, cps.clone(), |n| async move {
        wait_etcd_healthy(run, n, deadline).await?;
        Ok(Outcome::Done {
            detail: "etcd running, healthy".into(),
        })
    })
    .await?;
    // Every control plane must be in the member list, as every member sees it.
    let anchor = run.bootstrap_node();
    let c = run.mtls(anchor)?;
    loop {
        let members = c.etcd_members(false).await?;
        let missing: Vec<String> = cps
            .iter()
            .filter(|n| {
                let host = host_of(&n.address);
                !members.iter().any(|m| {
                    m.hostname == n.hostname
                        || m.peer_urls
                            .iter()
                            .any(|u| u.contains(&format!("//{host}:")))
                })
            })
            .map(|n| n.label())
            .collect();
        if missing.is_empty() {
            run.em.timing(step, None, "etcd_quorum", t0.elapsed());
            let detail = format!("{} member(s): every control plane joined", members.len());
            return Ok(if already {
                Outcome::Skipped { reason: detail }
            } else {
                Outcome::Done { detail }
            });
        }
        if t0.elapsed() > deadline {
            return Err(FlowError::Timeout {
                node: missing.join(", "),
                what: "an etcd member".into(),
                after: t0.elapsed(),
                last: format!("{} member(s) listed", members.len()),
            });
        }
        run.em.waiting(
            step,
            None,
            format!("etcd membership of {}", missing.join(", ")),
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- kubeconfig ----------------------------------------------------------------------

async fn kubeconfig(run: &mut Run<'_>, report: &mut UpReport) -> Result<Outcome, FlowError> {
    let path = run.opts.state_dir.join("kubeconfig");
    report.kubeconfig = Some(path.clone());
    if let Ok(text) = std::fs::read_to_string(&path) {
        if super::kubeconfig::server_and_ca(&text, &path).is_ok() {
            return Ok(Outcome::Skipped {
                reason: format!("present at {}", path.display()),
            });
        }
    }
    let node = run.bootstrap_node();
    let c = run.mtls(node)?;
    let bytes = c.kubeconfig().await?;
    crate::talos::talosconfig::write_private(&path, &bytes).map_err(|e| FlowError::Local {
        path: path.display().to_string(),
        detail: format!("cannot write: {e}"),
    })?;
    Ok(Outcome::Done {
        detail: format!("written to {} (0600)", path.display()),
    })
}

// ---- kube-apiserver serving ----------------------------------------------------------

/// One TCP + TLS handshake with `server` (https://host:port), verified against `ca_pem`.
pub async fn probe_apiserver(server: &str, ca_pem: &[u8], timeout: Duration) -> Result<(), String> {
    let rest = server.trim_start_matches("https://").trim_end_matches('/');
    let dial = Dial::parse(rest).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::pki::certs_from_pem(ca_pem, "kubeconfig CA").map_err(|e| e.to_string())? {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("kubeconfig CA: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(dial.server_name.clone())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(dial.addr))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", dial.addr))?
        .map_err(|e| format!("{}: {e}", dial.addr))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(())
}

async fn apiserver(run: &mut Run<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Apiserver;
    let path = run.opts.state_dir.join("kubeconfig");
    let text = std::fs::read_to_string(&path).map_err(|e| FlowError::Local {
        path: path.display().to_string(),
        detail: format!("cannot read: {e}"),
    })?;
    let (server, ca) = super::kubeconfig::server_and_ca(&text, &path)?;
    let t0 = Instant::now();
    let mut said = String::new();
    loop {
        match probe_apiserver(&server, &ca, run.opts.probe_timeout).await {
            Ok(()) => {
                return Ok(Outcome::Done {
                    detail: format!("{server} serves TLS with the cluster CA"),
                })
            }
            Err(e) => {
                if t0.elapsed() > run.opts.apiserver_deadline {
                    return Err(FlowError::Timeout {
                        node: server,
                        what: "kube-apiserver serving".into(),
                        after: t0.elapsed(),
                        last: e,
                    });
                }
                let msg = format!("kube-apiserver at {server} ({e})");
                if msg != said {
                    run.em.waiting(step, None, msg.clone());
                    said = msg;
                }
                tokio::time::sleep(Duration::from_secs(1).min(POLL * 4)).await;
            }
        }
    }
}

// ---- plan ------------------------------------------------------------------------------

/// One line of a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanItem {
    pub step: StepId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// True when `up` would change something.
    pub acts: bool,
    pub action: String,
}

/// What `up` would do now. Reads state (TLS probes, COSI reads, dry-run applies);
/// changes nothing, generates nothing.
pub async fn plan(
    source: &dyn ClusterSource,
    opts: &UpOptions,
) -> Result<Vec<PlanItem>, FlowError> {
    let def = source.definition()?;
    let journal = Journal::load(&opts.state_dir, &def.cluster)?;
    let em = Emitter::new();
    let has_secrets = source.has_secrets()?;
    let rendered = if has_secrets {
        Some(source.render()?)
    } else {
        None
    };
    let mut run = Run {
        em: &em,
        opts,
        def,
        journal,
        rendered,
        classes: BTreeMap::new(),
        kube: Default::default(),
    };
    let mut items = Vec::new();
    let item = |step, node: Option<&NodeDef>, acts, action: String| PlanItem {
        step,
        node: node.map(|n| n.hostname.clone()),
        acts,
        action,
    };
    let creds = run.creds().cloned();
    let classes = join_all(run.def.nodes.iter().map(|n| {
        let creds = creds.clone();
        let em = &em;
        async move {
            let c = classify(
                em,
                StepId::Preflight,
                n,
                creds.as_ref(),
                opts.probe_timeout,
                opts.probe_timeout,
            )
            .await;
            (n.hostname.clone(), c)
        }
    }))
    .await;
    run.classes = classes.into_iter().collect();
    if !has_secrets {
        items.push(item(
            StepId::Preflight,
            None,
            true,
            format!(
                "generate a new secrets bundle at {}",
                source.secrets_location()
            ),
        ));
    }
    for n in &run.def.nodes {
        let class = run.classes[&n.hostname].clone();
        items.push(item(StepId::Preflight, Some(n), false, class.describe()));
        let apply = match &class {
            NodeClass::Maintenance => {
                let hw = match run.insecure(n) {
                    Ok(c) => match (c.disks().await, c.links().await) {
                        (Ok(d), Ok(l)) => match hardware::check_node(n, &d, &l) {
                            Ok(m) => m
                                .install_disk
                                .map(|d| format!("; install disk {d}"))
                                .unwrap_or_default(),
                            Err(errs) => {
                                for e in errs {
                                    items.push(item(
                                        StepId::Preflight,
                                        Some(n),
                                        false,
                                        format!("REFUSE: {e}"),
                                    ));
                                }
                                String::new()
                            }
                        },
                        (Err(e), _) | (_, Err(e)) => format!("; hardware unreadable: {e}"),
                    },
                    Err(e) => format!("; {e}"),
                };
                (
                    true,
                    format!("apply config insecurely (maintenance), install and reboot{hw}"),
                )
            }
            NodeClass::Ours if run.rendered.is_some() => {
                let verdict = match (run.mtls(n), run.config_of(n)) {
                    (Ok(c), Ok(cfg)) => {
                        match c.apply_configuration(cfg, ApplyMode::Auto, true).await {
                            Ok(d) if dry_run_unchanged(&d.mode_details) => {
                                (false, "config unchanged: skip".to_string())
                            }
                            Ok(d) => (
                                true,
                                format!(
                                    "apply over mTLS (auto: {})",
                                    d.mode.unwrap_or_default().to_lowercase()
                                ),
                            ),
                            Err(e) => (true, format!("dry run failed: {e}")),
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => (true, e.to_string()),
                };
                verdict
            }
            NodeClass::Foreign | NodeClass::ConfiguredUnknown => {
                (false, "REFUSE: configured by another cluster".to_string())
            }
            NodeClass::Unreachable(why) => (false, format!("REFUSE: unreachable ({why})")),
            NodeClass::Ours => (false, "no credentials".to_string()),
        };
        items.push(item(StepId::Apply, Some(n), apply.0, apply.1));
    }
    let all_ours = run
        .def
        .nodes
        .iter()
        .all(|n| run.classes[&n.hostname] == NodeClass::Ours);
    let target = run.bootstrap_node().hostname.clone();
    if all_ours {
        match read_etcd_everywhere(&run).await {
            Ok(views) => match views.iter().find(|(_, v)| v.member.is_some()) {
                Some((n, _)) => items.push(item(
                    StepId::Bootstrap,
                    None,
                    false,
                    format!(
                        "etcd already bootstrapped ({} is a member): no Bootstrap call",
                        n.hostname
                    ),
                )),
                None => items.push(item(
                    StepId::Bootstrap,
                    None,
                    true,
                    format!("call Bootstrap once on {target}"),
                )),
            },
            Err(e) => items.push(item(
                StepId::Bootstrap,
                None,
                true,
                format!("etcd state unreadable now ({e}); decide after the nodes run"),
            )),
        }
    } else {
        items.push(item(StepId::Bootstrap, None, true, format!("after the nodes run: read etcd on every control plane, call Bootstrap once on {target} if none has members")));
    }
    items.push(item(
        StepId::EtcdQuorum,
        None,
        false,
        format!(
            "wait for {} etcd member(s)",
            run.def.control_planes().count()
        ),
    ));
    let kc = opts.state_dir.join("kubeconfig");
    items.push(item(
        StepId::Kubeconfig,
        None,
        !kc.exists(),
        if kc.exists() {
            format!("present at {}", kc.display())
        } else {
            format!("fetch to {}", kc.display())
        },
    ));
    items.push(item(
        StepId::Apiserver,
        None,
        false,
        if opts.until < StepId::Apiserver {
            format!("not run: --until {}", opts.until.until_flag())
        } else {
            "wait for kube-apiserver to serve TLS with the cluster CA".into()
        },
    ));
    items.extend(super::layer1::plan_items(opts).await);
    // Step order; nodes keep their definition order within a step.
    items.sort_by_key(|i| i.step);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_details_are_read() {
        assert!(dry_run_unchanged("Dry run summary:\nNo changes."));
        assert!(dry_run_unchanged(
            "Dry run summary:\nApplied configuration without a reboot\n\nConfig diff:\n\n"
        ));
        assert!(!dry_run_unchanged(
            "Dry run summary:\nConfig diff:\n- a\n+ b"
        ));
        assert_eq!(host_of("127.0.0.1:50000"), "127.0.0.1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
