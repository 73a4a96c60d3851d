//! The layers gate: every GitOps layer Ready before a node goes away and after
//! it is back, so a rolling operation never takes the next node while the last
//! one left something broken. `--ignore-gitops` turns a refusal into a loud
//! warning that the journal keeps.

use std::time::Duration;

use crate::engine::{Backoff, Emitter, FlowError, GateError, StepId};
use crate::gitops::{LayerMap, Progress, TrackError, Tracker};

/// What the gate saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    /// No Flux objects (or no Flux CRDs): nothing to gate on.
    NoGitops,
    /// Every object Ready: the per-layer counts.
    Ready(String),
    /// Not Ready, passed because of `--ignore-gitops`: the blocking objects.
    Ignored(Vec<String>),
}

impl Layers {
    /// The gate's outcome line.
    pub fn summary(&self) -> String {
        match self {
            Layers::NoGitops => "no Flux objects in the cluster: nothing to gate on".into(),
            Layers::Ready(s) => format!("all layers Ready ({s})"),
            Layers::Ignored(b) => format!("NOT Ready, ignored (--ignore-gitops): {}", b.join("; ")),
        }
    }
}

/// How the gate runs.
#[derive(Debug, Clone)]
pub struct LayersGate {
    pub layers: LayerMap,
    /// How long a not-Ready layer is waited for before the gate refuses.
    pub deadline: Duration,
    /// Pass with a warning instead of waiting and refusing.
    pub ignore: bool,
}

/// Checks the layers now; not Ready: warns and passes with `ignore`, else
/// waits up to the deadline and refuses naming the blocking objects. `when`
/// (`before cp2`, `after w1`) names the moment in messages; `node` the node
/// the events are about.
pub async fn check(
    k: &kube::Client,
    gate: &LayersGate,
    em: &Emitter,
    step: StepId,
    node: Option<&str>,
    when: &str,
) -> Result<Layers, FlowError> {
    let tracker = Tracker::new(k.clone(), gate.layers.clone());
    let mut pause = Backoff::new(Duration::from_millis(50), Duration::from_millis(250));
    let end = tokio::time::Instant::now() + gate.deadline;
    let mut told = false;
    loop {
        let p = match tracker.snapshot().await {
            Ok(p) => p,
            Err(TrackError::Kube { source, .. }) if not_installed(&source) => {
                return Ok(Layers::NoGitops)
            }
            Err(e) => return Err(FlowError::track(step, e)),
        };
        if p.items.is_empty() {
            return Ok(Layers::NoGitops);
        }
        if p.all_ready() {
            return Ok(Layers::Ready(counts(&p)));
        }
        let blocking = blocking(&p);
        if gate.ignore {
            em.warning(
                step,
                node,
                format!(
                    "GitOps layers NOT Ready {when}; going on because of --ignore-gitops. Blocking: {}",
                    blocking.join("; ")
                ),
            );
            return Ok(Layers::Ignored(blocking));
        }
        if tokio::time::Instant::now() + pause.peek() > end {
            return Err(GateError::LayersNotReady {
                when: when.to_string(),
                after: gate.deadline,
                blocking,
            }
            .into());
        }
        if !told {
            em.waiting(
                step,
                node,
                format!("GitOps layers Ready {when}: {}", blocking.join("; ")),
            );
            told = true;
        }
        tokio::time::sleep(pause.next_pause()).await;
    }
}

fn not_installed(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn counts(p: &Progress) -> String {
    p.layers
        .iter()
        .filter(|l| l.total > 0)
        .map(|l| format!("layer {}: {}/{}", l.layer, l.ready, l.total))
        .collect::<Vec<_>>()
        .join(", ")
}

fn blocking(p: &Progress) -> Vec<String> {
    let b: Vec<String> = p.blocking().iter().map(|i| i.to_string()).collect();
    if b.is_empty() {
        p.items
            .iter()
            .filter(|i| i.state != crate::gitops::ItemState::Ready)
            .map(|i| i.to_string())
            .collect()
    } else {
        b
    }
}
