//! What the steps of a node operation share: the knobs ([`NodeOpOptions`]),
//! the journal's facts ([`NodeFacts`]) and the context ([`NodeOp`]): the cluster
//! handle, the node, its journal, and (once the first Kubernetes step asks) the
//! Kubernetes client and the node's mode.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{
    probe, Cluster, Emitter, Facts, FlowError, Journal, JournalHandle, NodeDef, NodeProbe, Outcome,
    PlanItem, StepId,
};
use crate::talos::CallPolicy;

/// How node operations run.
#[derive(Debug, Clone)]
pub struct NodeOpOptions {
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
}

impl NodeOpOptions {
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
        }
    }
}

/// What a node operation's journal keeps beyond its steps: what the real
/// state cannot tell afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Whether the Kubernetes Node was Ready before the operation.
    #[serde(default)]
    pub was_ready: Option<bool>,
    /// The automatic snapshot taken before the operation.
    #[serde(default)]
    pub backup: Option<String>,
    /// Stale etcd members removed (hex ID, peer URLs), kept for the report of a
    /// resumed run.
    #[serde(default)]
    pub removed: Vec<(String, String)>,
    /// Guard reasons overridden with `--force`.
    #[serde(default)]
    pub forced: Vec<String>,
}

impl Facts for NodeFacts {}

/// What a node operation did.
#[derive(Debug, Clone)]
pub struct NodeOpReport {
    pub node: String,
    pub control_plane: bool,
    /// The automatic snapshot taken before a control-plane operation.
    pub backup: Option<String>,
    /// Guard reasons overridden with `--force`.
    pub forced: Vec<String>,
    /// Stale members removed (hex ID, peer URLs); rejoin only.
    pub removed: Vec<(String, String)>,
    /// Step → "done text" / "skipped: why".
    pub steps: Vec<(&'static str, String)>,
    /// Whether this run resumed an earlier, interrupted one.
    pub resumed: bool,
    pub elapsed: Duration,
}

/// The context of one node operation (or its plan).
pub struct NodeOp<'a> {
    pub cluster: &'a Cluster,
    pub opts: &'a NodeOpOptions,
    pub em: &'a Emitter,
    /// `reimage`, `rejoin`.
    pub op: &'static str,
    pub node: NodeDef,
    pub journal: JournalHandle<NodeFacts>,
    /// The node's mode, once probed.
    pub mode: Option<NodeProbe>,
    /// The Kubernetes client: `None` inside = the Kubernetes steps are skipped.
    pub kube: Option<Option<kube::Client>>,
}

impl<'a> NodeOp<'a> {
    /// The operation's context over the node's unfinished journal (a finished
    /// one starts a new operation). Nothing is written until a step finishes.
    pub fn open(
        cluster: &'a Cluster,
        name: &str,
        opts: &'a NodeOpOptions,
        em: &'a Emitter,
        op: &'static str,
    ) -> Result<Self, FlowError> {
        Self::with_journal(cluster, name, opts, em, op, |path| {
            Journal::read_of(path, &cluster.def.cluster)
        })
    }

    /// The plan's context: the journal as it is, unreadable taken as none
    /// (a plan never writes it).
    pub fn for_plan(
        cluster: &'a Cluster,
        name: &str,
        opts: &'a NodeOpOptions,
        em: &'a Emitter,
        op: &'static str,
    ) -> Result<Self, FlowError> {
        Self::with_journal(cluster, name, opts, em, op, |path| {
            Ok(Journal::read(path).ok().flatten())
        })
    }

    fn with_journal(
        cluster: &'a Cluster,
        name: &str,
        opts: &'a NodeOpOptions,
        em: &'a Emitter,
        op: &'static str,
        read: impl FnOnce(&std::path::Path) -> Result<Option<Journal<NodeFacts>>, FlowError>,
    ) -> Result<Self, FlowError> {
        let node = cluster.node(name)?.clone();
        let path = Journal::<NodeFacts>::node_op_path(&opts.state_dir, op, &node.hostname);
        let journal = read(&path)?
            .filter(|j| j.completed_ms.is_none())
            .unwrap_or_else(|| Journal::new(&cluster.def.cluster, Some(op), Some(&node.hostname)));
        Ok(Self {
            cluster,
            opts,
            em,
            op,
            node,
            journal: JournalHandle::new(path, journal),
            mode: None,
            kube: None,
        })
    }

    pub fn host(&self) -> &str {
        &self.node.hostname
    }

    pub fn done(&self, step: StepId) -> bool {
        self.journal.done(step)
    }

    /// Whether an earlier, interrupted run finished steps of this operation.
    pub fn resumed(&self) -> bool {
        self.journal.get(|j| j.resumed())
    }

    /// Says so when the operation resumes an interrupted one; true then.
    pub fn announce_resume(&self) -> bool {
        let resumed = self.resumed();
        if resumed {
            self.em.progress(
                StepId::Resume,
                Some(&self.node.hostname),
                format!(
                    "resuming the {} started earlier (done: {})",
                    self.op,
                    self.journal.get(|j| j.finished_steps()).join(", ")
                ),
            );
        }
        resumed
    }

    /// A step starts, naming the call it makes and the node that receives it.
    pub fn started(&self, step: StepId, message: impl Into<String>) {
        self.em
            .started_with(step, Some(&self.node.hostname), message);
    }

    pub fn waiting(&self, step: StepId, what: impl Into<String>) {
        self.em.waiting(step, Some(&self.node.hostname), what);
    }

    /// A Kubernetes failure about this node.
    pub fn kube_err(&self, e: crate::kube::KubeError) -> FlowError {
        FlowError::kube_on(&self.node.label(), e)
    }

    /// The node's mode by TLS handshake now.
    pub async fn probe(&self) -> NodeProbe {
        let creds = self.cluster.creds().ok();
        match probe(&self.node, creds, self.opts.probe_timeout).await {
            Ok(p) => p,
            Err(e) => NodeProbe::Unreachable(e.to_string()),
        }
    }

    /// The Kubernetes client, or None (with a warning, once) when the
    /// Kubernetes steps cannot run: `--skip-kubernetes`, or no kubeconfig in
    /// the state directory.
    pub async fn kube(&mut self) -> Result<Option<kube::Client>, FlowError> {
        if let Some(k) = &self.kube {
            return Ok(k.clone());
        }
        let step = StepId::Kubernetes;
        let client = if self.opts.skip_kubernetes {
            self.em.warning(step, Some(&self.node.hostname),
                "Kubernetes steps skipped (--skip-kubernetes): no cordon/drain, the old Node object stays");
            None
        } else {
            match self.cluster.kube().await {
                None => {
                    self.em.warning(step, Some(&self.node.hostname), format!(
                        "no kubeconfig at {}: Kubernetes steps skipped (run `up` or `kubeconfig` first to get one)",
                        self.opts.state_dir.join("kubeconfig").display()
                    ));
                    None
                }
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => return Err(self.kube_err(e)),
            }
        };
        self.kube = Some(client.clone());
        Ok(client)
    }

    // ---- plans ------------------------------------------------------------------------

    /// A plan line for `step`, marked done when an interrupted run finished it.
    pub fn line(&self, step: StepId, action: impl Into<String>) -> Vec<PlanItem> {
        let done = self.done(step);
        vec![PlanItem::on(step, &self.node, !done, action).done(done)]
    }

    /// A check's plan line (never done: checks run again).
    pub fn check_line(&self, step: StepId, action: impl Into<String>) -> Vec<PlanItem> {
        vec![PlanItem::on(step, &self.node, false, action)]
    }

    /// A Kubernetes call, or why it will be skipped.
    pub fn kube_call(&self, call: &str) -> String {
        if !self.opts.skip_kubernetes && self.cluster.kubeconfig.is_some() {
            format!("{call} → Kubernetes API ({})", self.cluster.def.endpoint)
        } else {
            format!("{call}: skipped (--skip-kubernetes, or no kubeconfig in the state directory)")
        }
    }

    /// The first other control plane (the one asked for member lists).
    pub fn other(&self) -> String {
        self.cluster
            .other_control_planes(&self.node.hostname)
            .first()
            .map(|n| n.label())
            .unwrap_or_else(|| "(no other control plane)".into())
    }

    /// Every control plane, labelled.
    pub fn cps(&self) -> Vec<String> {
        self.cluster
            .def
            .control_planes()
            .map(|n| n.label())
            .collect()
    }

    /// The report of a finished operation.
    pub fn report(
        &self,
        outcomes: Vec<(StepId, Outcome)>,
        resumed: bool,
        elapsed: Duration,
    ) -> NodeOpReport {
        let facts = self.journal.get(|j| j.facts.clone());
        NodeOpReport {
            node: self.node.hostname.clone(),
            control_plane: self.node.control_plane,
            backup: facts.backup,
            forced: facts.forced,
            removed: facts.removed,
            steps: outcomes
                .into_iter()
                .map(|(s, o)| {
                    (
                        s.name(),
                        match o {
                            Outcome::Done { detail } => detail,
                            Outcome::Skipped { reason } => format!("skipped: {reason}"),
                            Outcome::Failed { error, .. } => format!("failed: {error}"),
                        },
                    )
                })
                .collect(),
            resumed,
            elapsed,
        }
    }
}

/// A step finished with something done.
pub fn done(detail: impl Into<String>) -> Outcome {
    Outcome::Done {
        detail: detail.into(),
    }
}

/// A step found nothing to do.
pub fn skipped(reason: impl Into<String>) -> Outcome {
    Outcome::Skipped {
        reason: reason.into(),
    }
}

/// A step of a node operation: its run, and its plan (which reads only the
/// journal and the definition).
macro_rules! step {
    ($id:expr, $run:path, $plan:expr) => {
        $crate::engine::Step {
            id: $id,
            run: |cx| Box::pin($run(cx)),
            plan: |cx| {
                let items: Vec<$crate::engine::PlanItem> = $plan(&*cx);
                Box::pin(async move { items })
            },
        }
    };
}
pub(crate) use step;
