//! Steps and the one dispatcher.
//!
//! A flow is a table of [`Step`]s over a context of its own (`C`): each step has
//! its plan and its run side by side. `plan` reads the real state and says what
//! the step would do, changing nothing; `run` checks the real state, acts only
//! when needed and verifies, returning [`Outcome::Done`] or
//! [`Outcome::Skipped`] (nothing to do). [`Flow::run`] runs the table in order,
//! reports each step as the flow's [`Announce`] says, and stops after `--until`;
//! [`Flow::plan`] collects the plans in the same order.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use endsys_core::Doctor;
use futures::future::join_all;
use serde::Serialize;

use super::error::{FlowError, NodeFailure};
use super::events::{Emitter, Outcome};
use super::source::NodeDef;
use super::step::StepId;

/// What a step's run returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Outcome, FlowError>> + Send + 'a>>;
/// What a step's plan returns.
pub type PlanFuture<'a> = Pin<Box<dyn Future<Output = Vec<PlanItem>> + Send + 'a>>;

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    pub step: StepId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// True when running the step now would change something.
    pub acts: bool,
    /// What happens, naming each call and the node that receives it.
    pub action: String,
    /// An interrupted run already finished this step (it resumes past it).
    pub done: bool,
}

impl PlanItem {
    /// A cluster-wide line.
    pub fn new(step: StepId, acts: bool, action: impl Into<String>) -> Self {
        Self {
            step,
            node: None,
            acts,
            action: action.into(),
            done: false,
        }
    }

    /// A line about one node.
    pub fn on(step: StepId, node: &NodeDef, acts: bool, action: impl Into<String>) -> Self {
        Self {
            node: Some(node.hostname.clone()),
            ..Self::new(step, acts, action)
        }
    }

    /// Marks the line as done by an interrupted run.
    pub fn done(mut self, done: bool) -> Self {
        self.done = done;
        self
    }
}

/// One step of a flow over the context `C`.
pub struct Step<C> {
    pub id: StepId,
    /// What the step would do now (reads state, changes nothing).
    pub plan: for<'a> fn(&'a mut C) -> PlanFuture<'a>,
    /// Check, act only if needed, verify.
    pub run: for<'a> fn(&'a mut C) -> StepFuture<'a>,
}

/// How a flow reports its steps on the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Every step starts with its description and finishes with its outcome,
    /// failures included (`up`).
    Steps,
    /// Steps say themselves what they start (the call and the node receiving
    /// it); each step that finishes (done or skipped) is reported; a failure
    /// ends the flow with its error (node operations).
    Outcomes,
    /// The steps report for themselves (`recover`, whose phases wrap `up`).
    Nothing,
}

/// A flow: its steps in order, and how they are reported.
pub struct Flow<C> {
    pub steps: Vec<Step<C>>,
    pub announce: Announce,
}

/// Where a run's events go and where it stops.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub em: &'a Emitter,
    /// The node a node operation is about (its events name it).
    pub node: Option<&'a str>,
    /// The last step to run; the later ones are reported skipped (`--until`).
    pub until: Option<StepId>,
}

impl<C: Send> Flow<C> {
    /// The step ids, in order.
    pub fn ids(&self) -> Vec<StepId> {
        self.steps.iter().map(|s| s.id).collect()
    }

    /// Runs every step in order; the first failure stops the flow.
    pub async fn run(
        &self,
        cx: &mut C,
        scope: Scope<'_>,
    ) -> Result<Vec<(StepId, Outcome)>, FlowError> {
        let Scope { em, node, until } = scope;
        let mut outcomes = Vec::new();
        let mut past_until = false;
        for step in &self.steps {
            let t0 = Instant::now();
            if past_until {
                let outcome = Outcome::Skipped {
                    reason: format!(
                        "not run: --until {}",
                        until.map(StepId::until_flag).unwrap_or_default()
                    ),
                };
                if self.announce != Announce::Nothing {
                    em.finished(step.id, node, outcome.clone(), t0);
                }
                outcomes.push((step.id, outcome));
                continue;
            }
            if self.announce == Announce::Steps {
                em.started_step(step.id, node);
            }
            match (step.run)(cx).await {
                Ok(outcome) => {
                    if self.announce != Announce::Nothing {
                        em.finished(step.id, node, outcome.clone(), t0);
                    }
                    outcomes.push((step.id, outcome));
                }
                Err(e) => {
                    if self.announce == Announce::Steps {
                        em.finished(step.id, node, failed(&e), t0);
                    }
                    return Err(e);
                }
            }
            past_until |= until == Some(step.id);
        }
        Ok(outcomes)
    }

    /// The plans of every step, in order.
    pub async fn plan(&self, cx: &mut C) -> Vec<PlanItem> {
        let mut items = Vec::new();
        for step in &self.steps {
            items.extend((step.plan)(cx).await);
        }
        items
    }
}

/// The outcome event of a failed step: the error, its likely cause and next action.
pub fn failed(e: &FlowError) -> Outcome {
    Outcome::Failed {
        error: e.to_string(),
        cause: e.likely_cause(),
        next_action: e.next_action(),
    }
}

/// A plan that says nothing (steps that only check, or are planned by another).
pub fn no_plan<C>(_: &mut C) -> PlanFuture<'_> {
    Box::pin(async { Vec::new() })
}

/// Runs `f` on every node concurrently with per-node start/finish events;
/// collects the failures after all have finished (one node's failure fails
/// the step with its name, the others finish theirs).
pub async fn per_node<'n, F, Fut>(
    em: &Emitter,
    step: StepId,
    nodes: Vec<&'n NodeDef>,
    f: F,
) -> Result<Vec<(&'n NodeDef, Outcome)>, FlowError>
where
    F: Fn(&'n NodeDef) -> Fut,
    Fut: Future<Output = Result<Outcome, FlowError>>,
{
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
pub fn aggregate(results: &[(&NodeDef, Outcome)]) -> Outcome {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{Event, EventKind, EventSink};
    use std::sync::{Arc, Mutex};

    /// A flow over a log of what ran.
    struct Cx {
        ran: Vec<StepId>,
        fail_at: Option<StepId>,
    }

    fn step(id: StepId) -> Step<Cx> {
        fn run(cx: &mut Cx) -> StepFuture<'_> {
            Box::pin(async move {
                let id = [StepId::Preflight, StepId::Apply, StepId::Bootstrap]
                    .into_iter()
                    .find(|s| !cx.ran.contains(s))
                    .expect("a step left");
                cx.ran.push(id);
                if cx.fail_at == Some(id) {
                    return Err(FlowError::Source("boom".into()));
                }
                Ok(Outcome::Done {
                    detail: format!("{id} ran"),
                })
            })
        }
        fn plan(cx: &mut Cx) -> PlanFuture<'_> {
            let n = cx.ran.len();
            cx.ran.push(StepId::Run);
            Box::pin(async move { vec![PlanItem::new(StepId::Run, true, format!("line {n}"))] })
        }
        Step { id, run, plan }
    }

    fn flow(announce: Announce) -> Flow<Cx> {
        Flow {
            steps: vec![
                step(StepId::Preflight),
                step(StepId::Apply),
                step(StepId::Bootstrap),
            ],
            announce,
        }
    }

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl EventSink for Log {
        fn record(&mut self, e: &Event) {
            let what = match &e.kind {
                EventKind::StepStarted { .. } => "started".to_string(),
                EventKind::StepFinished { outcome, .. } => outcome.label().to_string(),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(format!("{} {what}", e.step));
        }
    }

    #[tokio::test]
    async fn steps_run_in_order_and_stop_after_until() {
        let em = Emitter::new();
        let log = Log::default();
        em.add_sink(Box::new(log.clone()));
        let mut cx = Cx {
            ran: vec![],
            fail_at: None,
        };
        let scope = Scope {
            em: &em,
            node: None,
            until: Some(StepId::Apply),
        };
        let out = flow(Announce::Steps).run(&mut cx, scope).await.unwrap();
        assert_eq!(cx.ran, [StepId::Preflight, StepId::Apply]);
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "preflight started",
                "preflight done",
                "apply started",
                "apply done",
                "bootstrap skipped"
            ]
        );
        assert!(
            matches!(&out[2], (StepId::Bootstrap, Outcome::Skipped { reason }) if reason == "not run: --until apply")
        );
    }

    #[tokio::test]
    async fn a_failure_stops_the_flow_and_is_announced_as_the_flow_says() {
        for (announce, want) in [
            (
                Announce::Steps,
                vec![
                    "preflight started",
                    "preflight done",
                    "apply started",
                    "apply failed",
                ],
            ),
            (Announce::Outcomes, vec!["preflight done"]),
            (Announce::Nothing, vec![]),
        ] {
            let em = Emitter::new();
            let log = Log::default();
            em.add_sink(Box::new(log.clone()));
            let mut cx = Cx {
                ran: vec![],
                fail_at: Some(StepId::Apply),
            };
            let scope = Scope {
                em: &em,
                node: Some("cp1"),
                until: None,
            };
            let e = flow(announce).run(&mut cx, scope).await.unwrap_err();
            assert_eq!(e.to_string(), "boom");
            assert_eq!(cx.ran, [StepId::Preflight, StepId::Apply], "{announce:?}");
            assert_eq!(*log.0.lock().unwrap(), want, "{announce:?}");
        }
    }

    #[tokio::test]
    async fn plans_come_in_step_order() {
        let mut cx = Cx {
            ran: vec![],
            fail_at: None,
        };
        let f = flow(Announce::Steps);
        let items = f.plan(&mut cx).await;
        let lines: Vec<&str> = items.iter().map(|i| i.action.as_str()).collect();
        assert_eq!(lines, ["line 0", "line 1", "line 2"]);
        assert_eq!(
            f.ids(),
            [StepId::Preflight, StepId::Apply, StepId::Bootstrap]
        );
    }
}
