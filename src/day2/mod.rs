//! Day-2 operations on a running (or lost) cluster: etcd backup and status, the
//! quorum guard, `node reimage`, `node rejoin` and `recover`.
//!
//! - [`backup`]: verified etcd snapshots with a metadata sidecar ([`backup::take_backup`],
//!   [`backup::verify_backup`]) and `etcd status`.
//! - [`guard`]: the quorum guard every destructive verb runs first.
//! - [`reimage`]: wipe a live node and bring it back, quorum kept.
//! - [`rejoin`]: bring back a dead or replaced node (stale member removed first).
//! - [`journal`]: per-operation step journal (a hint for resuming; real state wins).
//! - [`recover`]: disaster-recovery rebuild from an etcd snapshot.
//! - [`velero`]: per-app Velero restores after a rebuild.
//!
//! Every call goes to a node directly (never through a VIP or an endpoint proxy),
//! so the operator can see which node receives it and a dead endpoint cannot
//! hide which member answered.

pub mod backup;
pub mod guard;
pub mod journal;
pub mod recover;
pub mod reimage;
pub mod rejoin;
mod steps;
pub mod velero;

pub use reimage::reimage;
pub use rejoin::rejoin;

use endsys_core::Doctor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;

use crate::kube::KubeError;
use crate::orchestrator::source::{ClusterSource, Definition, NodeDef, Rendered};
use crate::orchestrator::FlowError;
use crate::talos::{CallPolicy, Credentials, TalosClient, TalosError, TlsMode};

/// Why a day-2 operation stopped. Each names the node, the likely cause and the
/// next action ([`Day2Error::explain`]).
#[derive(Debug, Error)]
pub enum Day2Error {
    /// The node is not in the cluster definition.
    #[error("{node}: not in the cluster definition (nodes: {known})")]
    UnknownNode { node: String, known: String },

    /// The quorum guard refused the operation.
    #[error("{op} {node} refused by the quorum guard:\n{}\n{table}", .reasons.iter().map(|r| format!("- {r}")).collect::<Vec<_>>().join("\n"))]
    Guard {
        op: &'static str,
        node: String,
        reasons: Vec<String>,
        table: String,
    },

    /// No control plane could serve the call.
    #[error("no healthy control plane for {what}: {}", .tried.join("; "))]
    NoHealthyControlPlane { what: String, tried: Vec<String> },

    #[error(transparent)]
    Talos(Box<TalosError>),

    #[error("{node}: Kubernetes: {error}")]
    Kube { node: String, error: KubeError },

    /// A wait hit its deadline.
    #[error("{node}: still not {what} after {after:?}; last seen: {last}")]
    Timeout {
        node: String,
        what: String,
        after: Duration,
        last: String,
    },

    /// The node is in a state the operation cannot start from.
    #[error("{node}: {detail}")]
    NodeState {
        node: String,
        detail: String,
        next: String,
    },

    /// The kubeconfig reaches Kubernetes through the very node being wiped.
    #[error("{node}: the kubeconfig's API server {server} is this node; once it is reset, its Node could not be deleted nor watched back")]
    ApiOnNode { node: String, server: String },

    /// A backup file, its sidecar or another local file.
    #[error("{path}: {detail}")]
    Backup { path: String, detail: String },

    /// Definition, secrets or rendering.
    #[error(transparent)]
    Flow(Box<FlowError>),
}

impl From<TalosError> for Day2Error {
    fn from(e: TalosError) -> Self {
        Day2Error::Talos(Box::new(e))
    }
}

impl From<FlowError> for Day2Error {
    fn from(e: FlowError) -> Self {
        Day2Error::Flow(Box::new(e))
    }
}

impl Day2Error {
    pub fn likely_cause(&self) -> String {
        match self {
            Day2Error::UnknownNode { .. } => "a typo, or the node was not added to talconfig.yaml".into(),
            Day2Error::Guard { .. } => "the operation would lose etcd quorum, or etcd is already unhealthy, or a member is not in the definition".into(),
            Day2Error::NoHealthyControlPlane { .. } => "etcd has no quorum or every control plane is down".into(),
            Day2Error::Talos(e) => e.likely_cause(),
            Day2Error::Kube { .. } => "the Kubernetes API is unreachable, or a PodDisruptionBudget blocks the drain".into(),
            Day2Error::Timeout { what, .. } if what.contains("etcd") => "the node's etcd cannot reach its peers (network, firewall on 2379/2380) or it is stuck as a learner".into(),
            Day2Error::Timeout { .. } => "the node is slow to install/boot, or stuck (see its console / `talos status`)".into(),
            Day2Error::NodeState { .. } => "the node is not where the operation starts".into(),
            Day2Error::ApiOnNode { .. } => "the cluster endpoint is one control plane's address instead of a VIP or load balancer".into(),
            Day2Error::Backup { .. } => "the file is truncated, modified, or not an etcd snapshot".into(),
            Day2Error::Flow(e) => e.to_string(),
        }
    }

    pub fn next_action(&self) -> String {
        match self {
            Day2Error::UnknownNode { .. } => "use a hostname from the definition (see `plan`)".into(),
            Day2Error::Guard { .. } => "bring the named members back (or `node rejoin` them) first; `--force` proceeds anyway, at the risk of losing etcd".into(),
            Day2Error::NoHealthyControlPlane { .. } => "check the control planes with `talos status` / `etcd status`; without quorum use `recover --snapshot`".into(),
            Day2Error::Talos(e) => e.next_action(),
            Day2Error::Kube { error, .. } => error.next_action(),
            Day2Error::Timeout { .. } => "re-run the same command: it resumes from the journal after checking the real state".into(),
            Day2Error::NodeState { next, .. } => next.clone(),
            Day2Error::ApiOnNode { .. } => "point the kubeconfig's `server:` at a VIP or another control plane, or re-run with --skip-kubernetes and delete the old Node through another control plane afterwards".into(),
            Day2Error::Backup { .. } => "take a new backup with `etcd backup`".into(),
            Day2Error::Flow(e) => e.explain(),
        }
    }

    /// What failed, the likely cause and the next action, for the operator.
    pub fn explain(&self) -> String {
        if let Day2Error::Talos(e) = self {
            return e.explain();
        }
        if let Day2Error::Flow(e) = self {
            return e.explain();
        }
        format!(
            "{self}\n  likely cause: {}\n  next: {}",
            self.likely_cause(),
            self.next_action()
        )
    }

    /// Bad input (unknown node): exit code 2.
    pub fn is_input_error(&self) -> bool {
        match self {
            Day2Error::UnknownNode { .. } => true,
            Day2Error::Flow(e) => e.is_input_error(),
            _ => false,
        }
    }
}

/// What a day-2 operation reports as it goes.
#[derive(Debug, Clone, Serialize)]
pub struct Day2Event {
    /// `reimage`, `rejoin`, `backup`.
    pub op: &'static str,
    /// The node the operation is about.
    pub node: String,
    /// Step name (`guard`, `leave_etcd`, ...).
    pub step: &'static str,
    pub kind: EventKind,
    pub message: String,
    pub ts_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    /// The step acted and verified.
    Done,
    /// The real state showed nothing to do.
    Skipped,
    Waiting,
    Info,
    /// Something the operator must see (forced guard, skipped Kubernetes half).
    Warning,
}

/// Receives events (display, NDJSON, tests). Called synchronously, after the
/// journal has been written for `Done`/`Skipped`.
pub trait Reporter: Send + Sync {
    fn report(&self, ev: &Day2Event);
}

/// A reporter that drops everything.
pub struct Quiet;

impl Reporter for Quiet {
    fn report(&self, _: &Day2Event) {}
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How day-2 operations run.
#[derive(Clone)]
pub struct Day2Options {
    /// The cluster's state directory (journal, talosconfig, kubeconfig, backups).
    pub state_dir: PathBuf,
    pub policy: CallPolicy,
    /// Proceed although the quorum guard refuses (the reasons are still printed).
    pub force: bool,
    /// Reimage: wipe the whole system disk instead of STATE and EPHEMERAL.
    pub wipe_all: bool,
    /// Take a snapshot into `<state_dir>/backups` before a control-plane operation.
    pub auto_snapshot: bool,
    /// Skip the Kubernetes steps (cordon, drain, Node delete/Ready, uncordon).
    pub skip_kubernetes: bool,
    /// Reset → maintenance, and apply → running.
    pub node_deadline: Duration,
    /// Member gone / member back.
    pub etcd_deadline: Duration,
    /// Drain, Node registered/Ready.
    pub kube_deadline: Duration,
    /// One TLS probe.
    pub probe_timeout: Duration,
    pub reporter: Arc<dyn Reporter>,
}

impl Day2Options {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            policy: CallPolicy::default(),
            force: false,
            wipe_all: false,
            auto_snapshot: true,
            skip_kubernetes: false,
            node_deadline: Duration::from_secs(20 * 60),
            etcd_deadline: Duration::from_secs(10 * 60),
            kube_deadline: Duration::from_secs(10 * 60),
            probe_timeout: Duration::from_secs(5),
            reporter: Arc::new(Quiet),
        }
    }
}

/// The cluster as day-2 operations see it: the definition, the rendered configs
/// and admin credentials, and the kubeconfig `up` saved (if any).
#[derive(Clone)]
pub struct Cluster {
    pub def: Definition,
    pub rendered: Rendered,
    /// Admin kubeconfig bytes (`<state_dir>/kubeconfig`).
    pub kubeconfig: Option<Vec<u8>>,
}

impl Cluster {
    /// Reads the definition, renders configs and credentials, and loads the
    /// kubeconfig from the state directory when present.
    pub fn load(src: &dyn ClusterSource, state_dir: &std::path::Path) -> Result<Self, Day2Error> {
        let def = src.definition()?;
        let rendered = src.render()?;
        let kubeconfig = std::fs::read(state_dir.join("kubeconfig")).ok();
        Ok(Self {
            def,
            rendered,
            kubeconfig,
        })
    }

    pub fn creds(&self) -> &Arc<Credentials> {
        &self.rendered.credentials
    }

    /// A node of the definition by hostname (or address).
    pub fn node(&self, name: &str) -> Result<&NodeDef, Day2Error> {
        self.def
            .nodes
            .iter()
            .find(|n| n.hostname == name)
            .or_else(|| self.def.nodes.iter().find(|n| n.address == name))
            .ok_or_else(|| Day2Error::UnknownNode {
                node: name.to_string(),
                known: self
                    .def
                    .nodes
                    .iter()
                    .map(|n| n.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn config_of(&self, node: &NodeDef) -> Result<&[u8], Day2Error> {
        self.rendered
            .configs
            .get(&node.hostname)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                Day2Error::Flow(Box::new(FlowError::Source(format!(
                    "no config rendered for {}",
                    node.hostname
                ))))
            })
    }

    /// An mTLS client straight to `node` (never via an endpoint).
    pub fn mtls(&self, node: &NodeDef, policy: CallPolicy) -> Result<TalosClient, Day2Error> {
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Mutual(self.creds().clone()),
            policy,
        )?)
    }

    /// A maintenance-mode (insecure) client to `node`.
    pub fn insecure(&self, node: &NodeDef, policy: CallPolicy) -> Result<TalosClient, Day2Error> {
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Insecure { fingerprint: None },
            policy,
        )?)
    }

    /// The host of the saved kubeconfig's API server (current context's
    /// cluster, else the only one).
    pub fn api_server_host(&self) -> Option<String> {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_slice(self.kubeconfig.as_ref()?).ok()?;
        let clusters = doc.get("clusters")?.as_sequence()?;
        let current = doc
            .get("contexts")
            .and_then(|c| c.as_sequence())
            .and_then(|cs| {
                let name = doc.get("current-context")?.as_str()?;
                cs.iter()
                    .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(name))
            })
            .and_then(|c| {
                c.get("context")?
                    .get("cluster")?
                    .as_str()
                    .map(str::to_owned)
            });
        let cluster = clusters
            .iter()
            .find(|c| {
                current.is_some() && c.get("name").and_then(|n| n.as_str()) == current.as_deref()
            })
            .or_else(|| (clusters.len() == 1).then(|| &clusters[0]))?;
        let server = cluster.get("cluster")?.get("server")?.as_str()?;
        let rest = server.split_once("://").map_or(server, |(_, r)| r);
        let authority = rest.split('/').next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        Some(host.to_string())
    }

    /// A Kubernetes client from the saved kubeconfig.
    pub async fn kube(&self) -> Option<Result<kube::Client, KubeError>> {
        let bytes = self.kubeconfig.as_ref()?;
        Some(crate::kube::client_from_kubeconfig(bytes).await)
    }
}

/// Sends one event to the reporter.
pub(crate) fn emit(
    opts: &Day2Options,
    op: &'static str,
    node: &str,
    step: &'static str,
    kind: EventKind,
    message: impl Into<String>,
) {
    opts.reporter.report(&Day2Event {
        op,
        node: node.to_string(),
        step,
        kind,
        message: message.into(),
        ts_ms: now_ms(),
    });
}

/// Host part of `ip[:port]`.
pub(crate) fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => address,
    }
}

/// One step of a plan: what is called, and on which node.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    pub step: &'static str,
    /// What happens, naming each call and the node that receives it.
    pub action: String,
    /// Done already (from the journal and the real state), to be skipped.
    pub done: bool,
}
