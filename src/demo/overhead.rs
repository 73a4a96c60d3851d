//! The tool's overhead, measured against the lab's own record: the lab
//! timestamps every simulated delay it runs (install, reboot, boot, etcd
//! start and join, the API server's start, each controller's rollout), and a
//! step's lab time is how much of the step's window had at least one of those
//! delays running. What is left of the step is time the tool spent with the
//! lab idle: its overhead. Delays that ran in parallel count once; a lab delay
//! the tool was not waiting on still counts as lab time, so the overhead is a
//! lower bound, never a figure flattered by a nominal table.

use std::time::{Duration, Instant};

use endsys_lab::LabDelay;

use crate::engine::ledger::StepTiming;
use crate::engine::StepId;

/// One step: its wall time, the lab's busy time inside it, the rest.
#[derive(Debug, Clone)]
pub struct StepOverhead {
    pub step: StepId,
    pub wall: Duration,
    pub lab: Duration,
}

impl StepOverhead {
    pub fn overhead(&self) -> Duration {
        self.wall.saturating_sub(self.lab)
    }
}

/// The run's figures, per step and in total.
#[derive(Debug, Clone, Default)]
pub struct Overhead {
    pub steps: Vec<StepOverhead>,
    /// The whole run's wall time and the lab's busy time inside it.
    pub wall: Duration,
    pub lab: Duration,
}

impl Overhead {
    /// Measures `steps` (one run's, from the ledger) inside `run` against the
    /// lab's `delays`.
    pub fn measure(steps: &[StepTiming], delays: &[LabDelay], run: (Instant, Instant)) -> Self {
        let spans: Vec<(Instant, Instant)> = delays.iter().map(|d| (d.start, d.end)).collect();
        let steps = steps
            .iter()
            .map(|s| {
                let start = s.finished_at.checked_sub(s.duration).unwrap_or(run.0);
                StepOverhead {
                    step: s.step,
                    wall: s.duration,
                    lab: covered(&spans, start, s.finished_at),
                }
            })
            .collect();
        Overhead {
            steps,
            wall: run.1.saturating_duration_since(run.0),
            lab: covered(&spans, run.0, run.1),
        }
    }

    /// Wall and lab time summed over the steps `pick` selects.
    pub fn part(&self, pick: impl Fn(StepId) -> bool) -> (Duration, Duration) {
        self.steps
            .iter()
            .filter(|s| pick(s.step))
            .fold((Duration::ZERO, Duration::ZERO), |(w, l), s| {
                (w + s.wall, l + s.lab)
            })
    }

    pub fn overhead(&self) -> Duration {
        self.wall.saturating_sub(self.lab)
    }

    /// `overhead per step: preflight 12 ms, apply 30 ms (lab 0.40 s), …`;
    /// steps that took no measurable time are left out.
    pub fn per_step_text(&self) -> String {
        let parts: Vec<String> = self
            .steps
            .iter()
            .filter(|s| !s.wall.is_zero())
            .map(|s| {
                // Under 5 ms the lab's share would print as 0.00 s: left out.
                let lab = if s.lab < Duration::from_millis(5) {
                    String::new()
                } else {
                    format!(
                        " (lab {:.2}s of {:.2}s)",
                        s.lab.as_secs_f64(),
                        s.wall.as_secs_f64()
                    )
                };
                format!("{} {} ms{lab}", s.step.name(), s.overhead().as_millis())
            })
            .collect();
        format!("tool overhead per step: {}", parts.join(", "))
    }
}

/// This process's peak resident memory (Linux `VmHWM`), lab included: the
/// demo runs the lab in the same process as the tool.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How much of `[from, to]` at least one span covers.
pub fn covered(spans: &[(Instant, Instant)], from: Instant, to: Instant) -> Duration {
    let mut clipped: Vec<(Instant, Instant)> = spans
        .iter()
        .map(|(s, e)| ((*s).max(from), (*e).min(to)))
        .filter(|(s, e)| e > s)
        .collect();
    clipped.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (s, e) in clipped {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn overlapping_delays_count_once_and_are_clipped_to_the_window() {
        let t = Instant::now();
        let spans = [
            (t, t + ms(100)),
            (t + ms(50), t + ms(150)),
            (t + ms(300), t + ms(400)),
            (t + ms(900), t + ms(2000)),
        ];
        assert_eq!(covered(&spans, t, t + ms(1000)), ms(150 + 100 + 100));
        assert_eq!(covered(&spans, t + ms(120), t + ms(350)), ms(30 + 50));
        assert_eq!(covered(&[], t, t + ms(10)), Duration::ZERO);
    }

    #[test]
    fn a_step_overhead_is_its_time_with_the_lab_idle() {
        let t = Instant::now();
        let delays = vec![LabDelay {
            node: None,
            what: "install",
            start: t + ms(10),
            end: t + ms(90),
        }];
        let steps = vec![StepTiming {
            step: StepId::WaitConfigured,
            outcome: "done".into(),
            duration: ms(100),
            slowest: None,
            finished_at: t + ms(100),
        }];
        let o = Overhead::measure(&steps, &delays, (t, t + ms(120)));
        assert_eq!(o.steps[0].lab, ms(80));
        assert_eq!(o.steps[0].overhead(), ms(20));
        assert_eq!(o.overhead(), ms(40));
        assert!(
            o.per_step_text().contains("wait_configured 20 ms"),
            "{}",
            o.per_step_text()
        );
    }
}
