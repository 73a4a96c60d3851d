//! The one way a flow waits for something outside the tool.
//!
//! A [`Wait`] knows what it waits for (and on which node or object), its
//! deadline and what it saw last; on timeout it becomes a
//! [`FlowError::Timeout`] that says all three. Between two looks it pauses with
//! a doubling [`Backoff`] capped at the polling fallback ([`POLL_MAX`], 1 s);
//! where a watch exists the wait follows the watch instead
//! ([`Wait::bounded`]) and only falls back to pausing while the watch cannot be
//! opened (the node rebooting, the kind not served yet).
//!
//! ```ignore
//! let mut w = Wait::new(node.label(), "etcd running", deadline);
//! loop {
//!     match look().await {
//!         Ok(state) if state.done() => return Ok(()),
//!         Ok(state) => w.seen(state.summary()),
//!         Err(e) => w.seen(e.to_string()),
//!     }
//!     w.pause().await?; // FlowError::Timeout once the deadline has passed
//! }
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::FlowError;

pub use endsys_core::backoff::{Backoff, POLL_MAX};

/// One wait: what for, where, until when, and what was seen last.
#[derive(Debug)]
pub struct Wait {
    node: String,
    what: String,
    deadline: Duration,
    started: Instant,
    last: String,
    backoff: Backoff,
    said: Option<String>,
}

impl Wait {
    /// Waits for `what` on `node` (a node label, an object, a server) for at
    /// most `deadline`, pausing 50 ms doubling to 1 s between looks.
    pub fn new(node: impl Into<String>, what: impl Into<String>, deadline: Duration) -> Self {
        Self {
            node: node.into(),
            what: what.into(),
            deadline,
            started: Instant::now(),
            last: "nothing yet".into(),
            backoff: Backoff::default(),
            said: None,
        }
    }

    /// Another pause schedule.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn last(&self) -> &str {
        &self.last
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }

    pub fn expired(&self) -> bool {
        self.started.elapsed() > self.deadline
    }

    /// Whether the next pause would end after the deadline.
    pub fn pause_outlasts(&self) -> bool {
        self.backoff.peek() > self.remaining()
    }

    /// Records what the last look saw (named in the timeout error).
    pub fn seen(&mut self, last: impl Into<String>) {
        self.last = last.into();
    }

    /// True the first time `message` differs from the last one said: callers
    /// emit a `waiting` event only when what they wait on changed.
    pub fn news(&mut self, message: &str) -> bool {
        if self.said.as_deref() == Some(message) {
            return false;
        }
        self.said = Some(message.to_string());
        true
    }

    /// The error this wait ends with at its deadline.
    pub fn timeout(&self) -> FlowError {
        FlowError::Timeout {
            node: self.node.clone(),
            what: self.what.clone(),
            after: self.started.elapsed(),
            last: self.last.clone(),
        }
    }

    /// Errs with [`Wait::timeout`] once the deadline has passed.
    pub fn check(&self) -> Result<(), FlowError> {
        if self.expired() {
            Err(self.timeout())
        } else {
            Ok(())
        }
    }

    /// Sleeps the next pause (never past the deadline); errs with
    /// [`Wait::timeout`] when the deadline has passed.
    pub async fn pause(&mut self) -> Result<(), FlowError> {
        self.check()?;
        let d = self.backoff.next_pause().min(self.remaining());
        tokio::time::sleep(d).await;
        Ok(())
    }

    /// After an event-driven wake (a watch stream ended): the next pause is
    /// the first again.
    pub fn woke(&mut self) {
        self.backoff.reset();
    }

    /// Runs `fut` (typically a watch followed until it ends) for at most the
    /// time left; `None` when the deadline came first.
    pub async fn bounded<F: Future>(&self, fut: F) -> Option<F::Output> {
        tokio::time::timeout(self.remaining(), fut).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Doctor;

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_naming_what_and_last_seen() {
        let mut w = Wait::new(
            "cp1 (127.0.0.11)",
            "etcd running",
            Duration::from_millis(400),
        )
        .backoff(Backoff::new(
            Duration::from_millis(40),
            Duration::from_millis(160),
        ));
        let t0 = Instant::now();
        let mut looks = 0;
        let err = loop {
            looks += 1;
            w.seen(format!("etcd Preparing (look {looks})"));
            if let Err(e) = w.pause().await {
                break e;
            }
        };
        // 40+80+160+120 (cut at the deadline) ms, then the deadline is reported:
        // the pauses never sleep past it.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
        assert!((4..=6).contains(&looks), "{looks}");
        let text = err.to_string();
        assert!(
            text.starts_with("cp1 (127.0.0.11): still not etcd running after"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("last seen: etcd Preparing (look {looks})")),
            "{text}"
        );
        assert!(err.explain().contains("next action"), "{}", err.explain());
    }

    #[tokio::test]
    async fn bounded_watches_stop_at_the_deadline() {
        let w = Wait::new("n", "x", Duration::from_millis(100));
        let never = std::future::pending::<()>();
        assert!(w.bounded(never).await.is_none());
        assert!(w.remaining() < Duration::from_millis(5));
        let w = Wait::new("n", "x", Duration::from_secs(5));
        assert_eq!(w.bounded(async { 7 }).await, Some(7));
    }

    #[test]
    fn news_only_once_per_message() {
        let mut w = Wait::new("n", "x", Duration::from_secs(1));
        assert!(w.news("a"));
        assert!(!w.news("a"));
        assert!(w.news("b"));
        assert!(w.news("a"));
    }
}
