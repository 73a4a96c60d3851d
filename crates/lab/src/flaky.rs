//! The flaky-network fault: a share of the calls reaching any node of the lab
//! fails with `Unavailable` before its handler runs (as a dropped connection or
//! an overloaded apid answers), and another share is held back first. Draws are
//! pseudo-random from a fixed seed, so a run's mix is the same share every time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How unreliable the lab's network is (see [`crate::Lab::set_flaky`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlakyNetwork {
    /// Share of calls (0.0–1.0) answered `Unavailable` without reaching the handler.
    pub fail_share: f64,
    /// Share of calls (0.0–1.0) delayed by `delay` before they are handled.
    pub delay_share: f64,
    pub delay: Duration,
}

/// What happens to one call.
pub(crate) enum Fate {
    Pass,
    Fail,
    Delay(Duration),
}

#[derive(Default)]
pub(crate) struct Flaky {
    mode: Mutex<Option<FlakyNetwork>>,
    draws: AtomicU64,
    pub failed: AtomicUsize,
    pub delayed: AtomicUsize,
}

impl Flaky {
    pub(crate) fn set(&self, mode: Option<FlakyNetwork>) {
        *self.mode.lock().expect("flaky lock") = mode;
    }

    /// Decides one call's fate.
    pub(crate) fn draw(&self) -> Fate {
        let Some(m) = *self.mode.lock().expect("flaky lock") else {
            return Fate::Pass;
        };
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let x = unit(splitmix(n));
        if x < m.fail_share {
            self.failed.fetch_add(1, Ordering::Relaxed);
            Fate::Fail
        } else if x < m.fail_share + m.delay_share {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            Fate::Delay(m.delay)
        } else {
            Fate::Pass
        }
    }
}

/// SplitMix64: a well-spread 64-bit value from a counter.
fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_out_as_asked() {
        let f = Flaky::default();
        f.set(Some(FlakyNetwork {
            fail_share: 0.1,
            delay_share: 0.2,
            delay: Duration::from_millis(1),
        }));
        for _ in 0..10_000 {
            f.draw();
        }
        let failed = f.failed.load(Ordering::Relaxed);
        let delayed = f.delayed.load(Ordering::Relaxed);
        assert!((900..1100).contains(&failed), "{failed}");
        assert!((1800..2200).contains(&delayed), "{delayed}");
    }
}
