//! The rolling upgrade's wall time against the lab's own critical path: the
//! union of every simulated delay (drain, install, reboot, boot, etcd start,
//! static pods …) inside the upgrade's window. What lies outside that union is
//! the tool's overhead: gates, polls, calls. Subnet 127.0.43.0/24.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/upgrade.rs"]
mod upgrade;

use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use endsys_bootstrap::demo::overhead::covered;
use endsys_bootstrap::engine::{Doctor, Event, EventKind, StepId};
use endsys_bootstrap::flows::upgrade::upgrade_talos;
use upgrade::{cluster_until, Collect};

/// Milliseconds per step, summed over the nodes.
fn per_step(events: &Arc<Mutex<Vec<Event>>>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in events.lock().unwrap().iter() {
        if let EventKind::StepFinished { duration_ms, .. } = &e.kind {
            *m.entry(e.step.name().to_string()).or_default() += duration_ms;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_wall_time_against_the_lab_critical_path() {
    // Time scale 0.1: a node's upgrade costs the lab about 1.1 s (drain 0.1,
    // install 0.4, reboot 0.3, boot 0.2, etcd start 0.1).
    let env = cluster_until(43, "v1.12.6", 3, 2, 0.1, StepId::Adoption).await;
    let mut o = env.options();
    o.max_parallel = 2;
    let c = Collect::default();
    let em = c.emitter();
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        upgrade_talos(&env.cluster, &o, &em),
    )
    .await
    .unwrap_or_else(|_| panic!("within 120 s; the lab:\n{}", env.lab.report()))
    .unwrap_or_else(|e| panic!("{}", e.explain()));
    let t1 = Instant::now();
    let wall = t1 - t0;
    let spans: Vec<(Instant, Instant)> =
        env.lab.delays().iter().map(|d| (d.start, d.end)).collect();
    let lab = covered(&spans, t0, t1);
    let overhead = wall.saturating_sub(lab);
    eprintln!(
        "rolling upgrade 3 cp + 2 workers (max-parallel 2), lab time scale 0.1: wall {wall:?}, lab critical path {lab:?}, tool overhead {overhead:?} ({:.0}% of wall); nodes: {:?}",
        100.0 * overhead.as_secs_f64() / wall.as_secs_f64(),
        r.nodes
    );
    eprintln!("per step (ms, summed over nodes): {:?}", per_step(&c.0));
    assert!(lab > Duration::ZERO, "the lab recorded no delay");
    // The tool adds at most a few seconds of its own over five nodes.
    assert!(
        overhead < Duration::from_secs(5),
        "overhead {overhead:?} over a lab critical path of {lab:?}"
    );
}
