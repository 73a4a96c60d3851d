//! The one pause schedule between two looks at something that has no watch:
//! doubling from a first pause, capped. The flow engine's waits
//! (`endsys_bootstrap::engine::wait`) and the drain's eviction retries use it.

use std::time::Duration;

/// The longest pause between two looks at a state without a watch.
pub const POLL_MAX: Duration = Duration::from_secs(1);

/// A doubling pause: `first`, then twice as long each time, never above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first.min(max),
        }
    }

    /// A fixed period (`first == max`).
    pub fn every(period: Duration) -> Self {
        Self::new(period, period)
    }

    /// The next pause (and doubles the one after).
    pub fn next_pause(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// The next pause, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first pause (something happened: look again soon).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

impl Default for Backoff {
    /// 50 ms doubling to [`POLL_MAX`].
    fn default() -> Self {
        Self::new(Duration::from_millis(50), POLL_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(100));
        let mut f = Backoff::every(Duration::from_millis(250));
        assert_eq!(f.next_pause(), f.next_pause());
        assert_eq!(Backoff::default().max, POLL_MAX);
    }
}
