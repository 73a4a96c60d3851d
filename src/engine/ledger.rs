//! The timing ledger: fed by the event stream, it keeps per-step and per-node
//! durations and when each node state was first observed, and prints the
//! per-phase table that ends `up` and `demo`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::events::{Event, EventKind, EventSink};
use super::step::StepId;

#[derive(Debug, Clone)]
pub struct StepTiming {
    pub step: StepId,
    pub outcome: String,
    pub duration: Duration,
    /// Slowest node of the step, when per-node.
    pub slowest: Option<(String, Duration)>,
    /// When the step finished (it started `duration` earlier).
    pub finished_at: Instant,
}

#[derive(Debug, Default)]
struct Data {
    steps: Vec<StepTiming>,
    node_steps: BTreeMap<(StepId, String), Duration>,
    /// (node, state) → first time the tool observed it.
    observed: BTreeMap<(String, String), Instant>,
    decisions: Vec<(String, String, Instant)>,
    started: Option<Instant>,
    finished: Option<Instant>,
}

/// Shared handle; [`Ledger::sink`] gives the part that the emitter feeds.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    data: Arc<Mutex<Data>>,
}

struct LedgerSink(Arc<Mutex<Data>>);

impl EventSink for LedgerSink {
    fn record(&mut self, ev: &Event) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match (&ev.kind, &ev.node) {
            (EventKind::RunStarted { .. }, _) => d.started = Some(ev.at),
            (EventKind::RunFinished { .. }, _) => d.finished = Some(ev.at),
            (
                EventKind::StepFinished {
                    outcome,
                    duration_ms,
                },
                None,
            ) => {
                let step = ev.step;
                let slowest = d
                    .node_steps
                    .iter()
                    .filter(|((s, _), _)| *s == step)
                    .max_by_key(|(_, dur)| **dur)
                    .map(|((_, n), dur)| (n.clone(), *dur));
                d.steps.push(StepTiming {
                    step,
                    outcome: outcome.label().to_string(),
                    duration: Duration::from_millis(*duration_ms),
                    slowest,
                    finished_at: ev.at,
                });
            }
            (EventKind::StepFinished { duration_ms, .. }, Some(n)) => {
                d.node_steps
                    .insert((ev.step, n.clone()), Duration::from_millis(*duration_ms));
            }
            (EventKind::NodeState { state }, Some(n)) => {
                d.observed
                    .entry((n.clone(), state.clone()))
                    .or_insert(ev.at);
            }
            (EventKind::Decision { key, value }, _) => {
                d.decisions.push((key.clone(), value.clone(), ev.at));
            }
            _ => {}
        }
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn sink(&self) -> Box<dyn EventSink> {
        Box::new(LedgerSink(self.data.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn steps(&self) -> Vec<StepTiming> {
        self.lock().steps.clone()
    }

    /// When the tool first saw `node` in `state` (e.g. "running", which also
    /// matches "running, waiting for …").
    pub fn observed(&self, node: &str, state: &str) -> Option<Instant> {
        let prefix = format!("{state},");
        self.lock()
            .observed
            .iter()
            .filter(|((n, s), _)| n == node && (s == state || s.starts_with(&prefix)))
            .map(|(_, at)| *at)
            .min()
    }

    pub fn decision_at(&self, key: &str) -> Option<Instant> {
        self.lock()
            .decisions
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, at)| *at)
    }

    /// When the run started and finished.
    pub fn window(&self) -> Option<(Instant, Instant)> {
        let d = self.lock();
        Some((d.started?, d.finished?))
    }

    pub fn wall(&self) -> Option<Duration> {
        let d = self.lock();
        Some(d.finished?.duration_since(d.started?))
    }

    /// The per-phase table.
    pub fn table(&self) -> String {
        let steps = self.steps();
        let mut out = format!(
            "{:<16} {:<8} {:>9}  {}\n",
            "PHASE", "RESULT", "SECONDS", "SLOWEST NODE"
        );
        let mut total = Duration::ZERO;
        for s in &steps {
            total += s.duration;
            let slow = s
                .slowest
                .as_ref()
                .map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64()))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<16} {:<8} {:>9.2}  {}\n",
                s.step.name(),
                s.outcome,
                s.duration.as_secs_f64(),
                slow
            ));
        }
        let wall = self.wall().unwrap_or(total);
        out.push_str(&format!(
            "{:<16} {:<8} {:>9.2}\n",
            "total",
            "",
            wall.as_secs_f64()
        ));
        out
    }
}

/// The p-th percentile (0..=100) of durations, nearest-rank.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(19));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(20));
        assert_eq!(percentile(&[], 95.0), Duration::ZERO);
    }
}
