//! The one event stream of a run.
//!
//! Every step reports through an [`Emitter`]: the journal and the timing ledger are
//! fed synchronously (so a process killed right after an event cannot lose what the
//! event recorded), the progress display and `--output json` read a broadcast
//! channel. Field names of the serialized form are stable: tools may parse them.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// The five layers of a cluster (only the first is driven by this tool directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Foundation,
    Gitops,
    DataServices,
    Security,
    Applications,
}

impl Layer {
    pub fn number(self) -> u8 {
        match self {
            Layer::Foundation => 1,
            Layer::Gitops => 2,
            Layer::DataServices => 3,
            Layer::Security => 4,
            Layer::Applications => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Layer::Foundation => "foundation",
            Layer::Gitops => "gitops",
            Layer::DataServices => "data services",
            Layer::Security => "security",
            Layer::Applications => "applications",
        }
    }
}

/// The steps of `up`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepId {
    /// The run as a whole (run_started / run_finished events).
    Run,
    Preflight,
    Apply,
    WaitConfigured,
    Bootstrap,
    EtcdQuorum,
    Kubeconfig,
    Apiserver,
    /// The Kubernetes half of layer 1 (src/orchestrator/layer1.rs).
    KubeApi,
    NodesRegistered,
    Namespaces,
    Secrets,
    Crds,
    Cni,
    NodesReady,
    Charts,
    Layer1Done,
    /// Layer 2 (src/orchestrator/flux.rs).
    FluxSecrets,
    FluxInstall,
    FluxSync,
    /// Layers 3–5: the tracker over the live Flux objects.
    Gitops,
    /// Flux adopted the bootstrap releases.
    Adoption,
}

impl StepId {
    /// Steps of `up` in execution order: layer 1 (Talos half, Kubernetes
    /// half), layer 2 (Flux), then the watch over layers 3–5.
    pub const UP: [StepId; 21] = [
        StepId::Preflight,
        StepId::Apply,
        StepId::WaitConfigured,
        StepId::Bootstrap,
        StepId::EtcdQuorum,
        StepId::Kubeconfig,
        StepId::Apiserver,
        StepId::KubeApi,
        StepId::NodesRegistered,
        StepId::Namespaces,
        StepId::Secrets,
        StepId::Crds,
        StepId::Cni,
        StepId::NodesReady,
        StepId::Charts,
        StepId::Layer1Done,
        StepId::FluxSecrets,
        StepId::FluxInstall,
        StepId::FluxSync,
        StepId::Gitops,
        StepId::Adoption,
    ];

    /// The last step of `up`.
    pub const LAST: StepId = StepId::Adoption;

    pub fn name(self) -> &'static str {
        match self {
            StepId::Run => "run",
            StepId::Preflight => "preflight",
            StepId::Apply => "apply",
            StepId::WaitConfigured => "wait_configured",
            StepId::Bootstrap => "bootstrap",
            StepId::EtcdQuorum => "etcd_quorum",
            StepId::Kubeconfig => "kubeconfig",
            StepId::Apiserver => "apiserver",
            StepId::KubeApi => "kube_api",
            StepId::NodesRegistered => "nodes_registered",
            StepId::Namespaces => "namespaces",
            StepId::Secrets => "secrets",
            StepId::Crds => "crds",
            StepId::Cni => "cni",
            StepId::NodesReady => "nodes_ready",
            StepId::Charts => "charts",
            StepId::Layer1Done => "layer1_done",
            StepId::FluxSecrets => "flux_secrets",
            StepId::FluxInstall => "flux_install",
            StepId::FluxSync => "flux_sync",
            StepId::Gitops => "gitops",
            StepId::Adoption => "adoption",
        }
    }

    /// The layer a step works on. The tracker (`gitops`) watches every layer
    /// but ends when the last one is Ready; `adoption` checks the layer-2
    /// handoff, after Flux has reconciled the bootstrap HelmReleases.
    pub fn layer(self) -> Layer {
        match self {
            StepId::FluxSecrets | StepId::FluxInstall | StepId::FluxSync | StepId::Adoption => {
                Layer::Gitops
            }
            StepId::Gitops => Layer::Applications,
            _ => Layer::Foundation,
        }
    }

    /// What the step does, for plans and the display.
    pub fn describe(self) -> &'static str {
        match self {
            StepId::Run => "the whole run",
            StepId::Preflight => "check definition, secrets, node reachability, modes, disks and links",
            StepId::Apply => "apply machine configs (insecure to maintenance nodes, mTLS auto to configured ones)",
            StepId::WaitConfigured => "wait for every node to run its config",
            StepId::Bootstrap => "bootstrap etcd exactly once",
            StepId::EtcdQuorum => "wait for etcd quorum with every control plane a member",
            StepId::Kubeconfig => "fetch the admin kubeconfig",
            StepId::Apiserver => "wait for kube-apiserver to serve TLS on 6443",
            StepId::KubeApi => "connect to the Kubernetes API with the fetched kubeconfig (version, discovery)",
            StepId::NodesRegistered => "wait until every node is registered (NotReady is expected before the CNI)",
            StepId::Namespaces => "one namespace per folder under kubernetes/apps/ (server-side apply)",
            StepId::Secrets => "decrypt the listed SOPS files in process and apply them into flux-system",
            StepId::Crds => "apply CRDs from manifest sources (URL or file), wait Established",
            StepId::Cni => "render and apply the Cilium release (Talos values lint first), wait rolled out",
            StepId::NodesReady => "wait until every node is Ready (the CNI is up)",
            StepId::Charts => "render, apply and wait for the other bootstrap releases in needs order",
            StepId::Layer1Done => "layer 1 done: nodes Ready, bootstrap charts healthy",
            StepId::FluxSecrets => "check sops-age and cluster-secrets in flux-system; the cluster's age key decrypts every SOPS file Flux will build",
            StepId::FluxInstall => "render, apply and wait for the flux-operator and flux-instance releases",
            StepId::FluxSync => "wait for the FluxInstance Ready, the flux-system source at the expected revision, flux-system and cluster-meta Ready",
            StepId::Gitops => "watch every Flux Kustomization and HelmRelease until layers 3-5 are Ready",
            StepId::Adoption => "confirm Flux adopted each bootstrap release (same name and namespace, no reinstall)",
        }
    }

    /// The `--until` value that stops after this step.
    pub fn until_flag(self) -> &'static str {
        match self {
            StepId::Apply => "apply",
            StepId::WaitConfigured => "configured",
            StepId::EtcdQuorum | StepId::Kubeconfig => "etcd",
            StepId::NodesReady => "cni",
            StepId::Layer1Done => "layer1",
            StepId::FluxSync => "flux",
            StepId::Adoption => "all",
            other => other.name(),
        }
    }

    pub fn parse(s: &str) -> Option<StepId> {
        StepId::UP.into_iter().find(|st| st.name() == s)
    }
}

/// How a step (or one node's part of it) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The step acted and verified the result.
    Done { detail: String },
    /// The real state already was what the step makes; nothing was changed.
    Skipped { reason: String },
    /// The step failed; `cause` and `next_action` come from the error doctor.
    Failed {
        error: String,
        cause: String,
        next_action: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
        }
    }

    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        cluster: String,
        steps: Vec<String>,
    },
    StepStarted {
        description: String,
    },
    StepFinished {
        outcome: Outcome,
        duration_ms: u64,
    },
    /// The step waits for something outside the tool (a node, etcd, the API server).
    Waiting {
        what: String,
    },
    Progress {
        message: String,
    },
    /// A state observed on a node (mode, boot stage, etcd state).
    NodeState {
        state: String,
    },
    /// A decision the journal must keep (e.g. which node bootstraps etcd).
    Decision {
        key: String,
        value: String,
    },
    /// A measured interval (per phase, per node).
    Timing {
        phase: String,
        duration_ms: u64,
    },
    RunFinished {
        ok: bool,
        duration_ms: u64,
    },
    /// A GitOps layer's count changed (the event's `layer` is the layer
    /// counted, not the step's): `ready` of `total` Flux objects Ready, and the
    /// ones still waiting (`Kind namespace/name`).
    LayerProgress {
        title: String,
        ready: usize,
        total: usize,
        waiting: Vec<String>,
    },
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    /// Milliseconds since the run started.
    pub elapsed_ms: u64,
    /// Monotonic instant (not serialized), for latency measurements.
    #[serde(skip)]
    pub at: Instant,
    pub step: StepId,
    pub layer: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// One NDJSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"error\",\"message\":\"cannot serialize event: {e}\"}}")
        })
    }
}

/// Something fed synchronously with every event (journal, ledger).
pub trait EventSink: Send {
    fn record(&mut self, event: &Event);
}

/// Hands events to the synchronous sinks and the broadcast channel.
#[derive(Clone)]
pub struct Emitter {
    /// Start of the run (reset by `run_started`); `elapsed_ms` counts from here.
    started: Arc<Mutex<Instant>>,
    tx: broadcast::Sender<Event>,
    sinks: Arc<Mutex<Vec<Box<dyn EventSink>>>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Default for Emitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Emitter {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(16 * 1024);
        Self {
            started: Arc::new(Mutex::new(Instant::now())),
            tx,
            sinks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Receives every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn add_sink(&self, sink: Box<dyn EventSink>) {
        self.lock().push(sink);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn EventSink>>> {
        // A sink that panicked leaves the list usable.
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn started(&self) -> Instant {
        *self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn emit(&self, step: StepId, node: Option<&str>, kind: EventKind) {
        self.emit_in(step, step.layer().number(), node, kind)
    }

    /// One layer's GitOps progress (the event carries that layer's number).
    pub fn layer_progress(
        &self,
        step: StepId,
        layer: u8,
        title: &str,
        ready: usize,
        total: usize,
        waiting: Vec<String>,
    ) {
        self.emit_in(
            step,
            layer,
            None,
            EventKind::LayerProgress {
                title: title.to_string(),
                ready,
                total,
                waiting,
            },
        )
    }

    fn emit_in(&self, step: StepId, layer: u8, node: Option<&str>, kind: EventKind) {
        let at = Instant::now();
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if matches!(kind, EventKind::RunStarted { .. }) {
            *self.started.lock().unwrap_or_else(|p| p.into_inner()) = at;
        }
        let event = Event {
            ts_ms,
            elapsed_ms: at.duration_since(self.started()).as_millis() as u64,
            at,
            step,
            layer,
            node: node.map(str::to_string),
            kind,
        };
        for sink in self.lock().iter_mut() {
            sink.record(&event);
        }
        // No receiver is fine (tests, plan).
        let _ = self.tx.send(event);
    }

    // Shorthands used by the steps.

    pub fn started_step(&self, step: StepId, node: Option<&str>) {
        self.emit(
            step,
            node,
            EventKind::StepStarted {
                description: step.describe().to_string(),
            },
        );
    }

    pub fn finished(&self, step: StepId, node: Option<&str>, outcome: Outcome, since: Instant) {
        self.emit(
            step,
            node,
            EventKind::StepFinished {
                outcome,
                duration_ms: since.elapsed().as_millis() as u64,
            },
        );
    }

    pub fn waiting(&self, step: StepId, node: Option<&str>, what: impl Into<String>) {
        self.emit(step, node, EventKind::Waiting { what: what.into() });
    }

    pub fn progress(&self, step: StepId, node: Option<&str>, message: impl Into<String>) {
        self.emit(
            step,
            node,
            EventKind::Progress {
                message: message.into(),
            },
        );
    }

    pub fn node_state(&self, step: StepId, node: &str, state: impl Into<String>) {
        self.emit(
            step,
            Some(node),
            EventKind::NodeState {
                state: state.into(),
            },
        );
    }

    pub fn timing(&self, step: StepId, node: Option<&str>, phase: &str, d: std::time::Duration) {
        self.emit(
            step,
            node,
            EventKind::Timing {
                phase: phase.to_string(),
                duration_ms: d.as_millis() as u64,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_stable_names() {
        let em = Emitter::new();
        let mut rx = em.subscribe();
        em.finished(
            StepId::Apply,
            Some("cp1"),
            Outcome::Skipped {
                reason: "config unchanged".into(),
            },
            Instant::now(),
        );
        let ev = rx.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(v["event"], "step_finished");
        assert_eq!(v["step"], "apply");
        assert_eq!(v["layer"], 1);
        assert_eq!(v["node"], "cp1");
        assert_eq!(v["outcome"]["status"], "skipped");
        assert_eq!(v["outcome"]["reason"], "config unchanged");
        assert!(v["ts_ms"].as_u64().unwrap() > 0);
        assert!(v.get("at").is_none());
    }
}
