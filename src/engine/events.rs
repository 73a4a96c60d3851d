//! The one event stream of every flow.
//!
//! Every step reports through an [`Emitter`]: the journal and the timing ledger are
//! fed synchronously (so a process killed right after an event cannot lose what the
//! event recorded), the progress display and `--output json` read a broadcast
//! channel. Field names of the serialized form are stable: tools may parse them.
//! `up` prints [`Event::to_json_line`]; the node operations render the same events
//! into their `day2` lines (src/cli/day2.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

use super::step::StepId;

pub use endsys_core::clock::now_ms;

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
    /// Something the operator must see that is not a failure (a forced
    /// guard, the Kubernetes steps of a node operation skipped).
    Warning {
        message: String,
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

/// Something fed synchronously with every event (journal, ledger, tests).
pub trait EventSink: Send {
    fn record(&mut self, event: &Event);
}

type Sinks = Vec<(u64, Box<dyn EventSink>)>;

/// Detaches a sink from its emitter when dropped (a flow's journal sink lives
/// as long as the flow, even when the flow's task is aborted).
pub struct Attached {
    id: u64,
    sinks: Arc<Mutex<Sinks>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.retain(|(id, _)| *id != self.id);
    }
}

/// Hands events to the synchronous sinks and the broadcast channel.
#[derive(Clone)]
pub struct Emitter {
    /// Start of the run (reset by `run_started`); `elapsed_ms` counts from here.
    started: Arc<Mutex<Instant>>,
    tx: broadcast::Sender<Event>,
    sinks: Arc<Mutex<Sinks>>,
    next_id: Arc<AtomicU64>,
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
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Receives every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Feeds `sink` every event from now on, for the emitter's lifetime.
    pub fn add_sink(&self, sink: Box<dyn EventSink>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, sink));
    }

    /// Feeds `sink` every event until the returned guard is dropped.
    #[must_use = "the sink is detached when the guard is dropped"]
    pub fn attach(&self, sink: Box<dyn EventSink>) -> Attached {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, sink));
        Attached {
            id,
            sinks: self.sinks.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sinks> {
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
        let ts_ms = now_ms();
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
        for (_, sink) in self.lock().iter_mut() {
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

    /// A step starts with a message of its own (the call it makes and the node
    /// receiving it) instead of the step's description.
    pub fn started_with(&self, step: StepId, node: Option<&str>, message: impl Into<String>) {
        self.emit(
            step,
            node,
            EventKind::StepStarted {
                description: message.into(),
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

    pub fn warning(&self, step: StepId, node: Option<&str>, message: impl Into<String>) {
        self.emit(
            step,
            node,
            EventKind::Warning {
                message: message.into(),
            },
        );
    }

    /// A decision the journal keeps (e.g. which node bootstraps etcd).
    pub fn decision(&self, step: StepId, node: Option<&str>, key: &str, value: impl Into<String>) {
        self.emit(
            step,
            node,
            EventKind::Decision {
                key: key.to_string(),
                value: value.into(),
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

    #[test]
    fn attached_sinks_detach_on_drop() {
        struct Count(Arc<Mutex<usize>>);
        impl EventSink for Count {
            fn record(&mut self, _: &Event) {
                *self.0.lock().unwrap() += 1;
            }
        }
        let em = Emitter::new();
        let n = Arc::new(Mutex::new(0));
        let guard = em.attach(Box::new(Count(n.clone())));
        em.progress(StepId::Run, None, "one");
        drop(guard);
        em.progress(StepId::Run, None, "two");
        assert_eq!(*n.lock().unwrap(), 1);
    }
}
