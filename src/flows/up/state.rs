//! What the steps of `up` share: the knobs ([`UpOptions`]), the report, and the
//! run's context ([`Up`]): the cluster handle, the journal, what preflight
//! learned about each node and the Kubernetes half's live state. The steps
//! (preflight, talos, etcd, layer1, charts, flux, gitops) read and write it;
//! none of them imports another.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::charts::helmfile::Helmfile;
use crate::charts::ChartsError;
use crate::engine::flow::StepFuture;
use crate::engine::{
    Cluster, ClusterSource, Emitter, FlowError, JournalHandle, NodeDef, NodeProbe, Outcome,
    PlanItem, StepId, UpFacts,
};
use crate::kube::{Applied, Tally};
use crate::talos::{CallPolicy, TalosClient};

use super::kube::{KubeHalf, KubeState};

/// File in the state directory while a recovery has not yet verified its
/// restore; `up` without a snapshot refuses to bootstrap an empty etcd then.
pub const RECOVER_PENDING: &str = "recover-pending";

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
    /// The Kubernetes half of layer 1 (namespaces, secrets, CRDs, charts) and
    /// the GitOps layers; their steps are skipped when `None`.
    pub kube: Option<KubeHalf>,
    /// Disaster recovery (`recover --snapshot`): the bootstrap step uploads this
    /// snapshot with EtcdRecover and calls Bootstrap{recover_etcd} instead of
    /// starting an empty etcd. Ignored once etcd has a member.
    pub recover_from: Option<PathBuf>,
    /// Maintenance certificates pinned per hostname (base64 SHA-256 of the
    /// SubjectPublicKeyInfo, as the node console prints it): configs go only
    /// to the machine that presents it.
    pub fingerprints: std::collections::BTreeMap<String, String>,
}

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
            fingerprints: Default::default(),
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

/// The context of one run (or one plan) of `up`.
pub struct Up<'r> {
    pub em: &'r Emitter,
    pub opts: &'r UpOptions,
    pub source: &'r dyn ClusterSource,
    pub cluster: Cluster,
    pub journal: JournalHandle<UpFacts>,
    /// What preflight's TLS probe found, per hostname.
    pub classes: BTreeMap<String, NodeProbe>,
    /// Whether a secrets bundle existed when the run started (plans).
    pub had_secrets: bool,
    /// Plans: the install disk each maintenance node would get (preflight's
    /// hardware gate, named again in apply's line).
    pub hardware: BTreeMap<String, String>,
    /// The kubeconfig step's file.
    pub kubeconfig_path: Option<PathBuf>,
    pub kube: KubeState,
}

impl<'r> Up<'r> {
    pub fn mtls(&self, node: &NodeDef) -> Result<TalosClient, FlowError> {
        self.cluster.mtls(node, self.opts.policy)
    }

    /// A maintenance-mode client, pinned to the node's certificate fingerprint
    /// when `--cert-fingerprint` gave one.
    pub fn insecure(&self, node: &NodeDef) -> Result<TalosClient, FlowError> {
        match self.opts.fingerprints.get(&node.hostname) {
            Some(fp) => Ok(TalosClient::connect(
                &node.address,
                crate::talos::TlsMode::Insecure {
                    fingerprint: Some(fp.clone()),
                },
                self.opts.policy,
            )?),
            None => self.cluster.insecure(node, self.opts.policy),
        }
    }

    pub fn nodes(&self) -> Vec<&NodeDef> {
        self.cluster.def.nodes.iter().collect()
    }

    pub fn control_planes(&self) -> Vec<&NodeDef> {
        self.cluster.def.control_planes().collect()
    }

    /// The node preflight classified, as it found it.
    pub fn class(&self, node: &NodeDef) -> NodeProbe {
        self.classes
            .get(&node.hostname)
            .cloned()
            .unwrap_or_else(|| NodeProbe::Unreachable("not probed".into()))
    }

    /// The control plane that bootstraps etcd: the journal's earlier choice,
    /// else the first control plane.
    pub fn bootstrap_node(&self) -> &NodeDef {
        let hint = self.journal.get(|j| j.facts.bootstrap_node.clone());
        let def = &self.cluster.def;
        def.control_planes()
            .find(|n| Some(n.hostname.as_str()) == hint.as_deref())
            .or_else(|| def.control_planes().next())
            .unwrap_or(&def.nodes[0])
    }

    /// The Kubernetes half's inputs (the steps that need them run only with a
    /// repository: see [`kube_step`]).
    pub fn half(&self) -> Result<&'r KubeHalf, FlowError> {
        self.opts.kube.as_ref().ok_or_else(|| {
            FlowError::step(
                "up",
                "no gitops repository".into(),
                "a Kubernetes step ran without --repo",
                "pass --repo",
            )
        })
    }

    /// Where `--until` stops the plan text of a step that would not run.
    pub fn until_note(&self) -> String {
        format!("not run: --until {}", self.opts.until.until_flag())
    }
}

/// Why the Kubernetes half is not run without a repository.
pub const NO_REPO: &str = "no gitops repository given (--repo): the Kubernetes half is not run";

/// Runs a step of the Kubernetes half (or GitOps layers): skipped without a
/// repository, timed (a `timing` event per step) with one.
pub fn kube_step<'a, 'r, F, Fut>(cx: &'a mut Up<'r>, step: StepId, f: F) -> StepFuture<'a>
where
    F: FnOnce(&'a mut Up<'r>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<Outcome, FlowError>> + Send + 'a,
{
    if cx.opts.kube.is_none() {
        return Box::pin(async {
            Ok(Outcome::Skipped {
                reason: NO_REPO.into(),
            })
        });
    }
    let em = cx.em;
    Box::pin(async move {
        let t0 = Instant::now();
        let r = f(cx).await;
        em.timing(step, None, step.name(), t0.elapsed());
        r
    })
}

/// The repository's inputs for the plan of a Kubernetes step, or the lines
/// the plan shows instead when the step will not run: no repository, or
/// `--until` stops before the Kubernetes half.
pub fn kube_plan_half<'r>(cx: &Up<'r>, step: StepId) -> Result<&'r KubeHalf, Vec<PlanItem>> {
    match cx.opts.kube.as_ref() {
        None => Err(vec![PlanItem::new(
            step,
            false,
            "not run: no gitops repository given (--repo)",
        )]),
        Some(_) if cx.opts.until < StepId::KubeApi => {
            Err(vec![PlanItem::new(step, false, cx.until_note())])
        }
        Some(half) => Ok(half),
    }
}

/// Longest pause between two looks at a state that has no watch.
pub const POLL: Duration = Duration::from_millis(250);

/// A step's outcome from what its applies changed: skipped when nothing did.
pub fn tally_outcome(what: &str, t: Tally) -> Outcome {
    if t.is_noop() {
        Outcome::Skipped {
            reason: format!("{what}: {} unchanged", t.unchanged),
        }
    } else {
        Outcome::Done {
            detail: format!("{what}: {t}"),
        }
    }
}

/// One progress line per applied object.
pub fn report(cx: &Up<'_>, step: StepId, applied: &[Applied]) {
    for a in applied {
        let word = match a.change {
            crate::kube::Change::Created => "created",
            crate::kube::Change::Changed => "changed",
            crate::kube::Change::Unchanged => "unchanged",
        };
        cx.em.progress(step, None, format!("{} {word}", a.label()));
    }
}

/// The helmfile as a plan reads it (no run state).
pub fn plan_helmfile(cx: &Up<'_>) -> Result<Helmfile, ChartsError> {
    match cx.opts.kube.as_ref() {
        Some(half) => Helmfile::load(&half.helmfile_path()),
        None => Err(ChartsError::Helmfile {
            file: "-".into(),
            detail: "no repository".into(),
        }),
    }
}

/// A deadline shown in plans.
pub fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Whether a plan lists the GitOps steps: `None` when it does (with the
/// repository's inputs), else the lines it shows instead.
pub fn gitops_plan_gate<'r>(cx: &Up<'r>, step: StepId) -> Result<&'r KubeHalf, Vec<PlanItem>> {
    let half = kube_plan_half(cx, step)?;
    if cx.opts.until > StepId::Layer1Done {
        Ok(half)
    } else {
        Err(vec![])
    }
}
