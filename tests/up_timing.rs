//! Timing figures from the event stream, with lab delays in realistic proportions
//! (scaled down): the tool's overhead beyond the lab's critical path, the lag
//! between a lab node reaching `running` and the tool noticing, and 50 nodes
//! against 3 (work must not grow with the node count).

#[path = "common/fixture.rs"]
mod fixture;

use endsys_bootstrap::demo::{run_demo, DemoOptions};
use endsys_bootstrap::engine::{Emitter, StepId};

fn opts(subnet: u8, nodes: usize, scale: f64) -> DemoOptions {
    DemoOptions {
        nodes,
        controlplanes: 3,
        time_scale: scale,
        first_ip: std::net::Ipv4Addr::new(127, 0, subnet, 11),
        state_dir: Some(tempfile::tempdir().unwrap().keep()),
        until: StepId::Kubeconfig,
        secrets_from: Some(fixture::SECRETS.into()),
        deadline: Some(fixture::WAIT_CAP),
        ..DemoOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overhead_lag_and_node_count_scaling() {
    const SCALE: f64 = 0.25;
    let small = fixture::within(
        "3-node demo",
        run_demo(&opts(180, 3, SCALE), &Emitter::new()),
    )
    .await
    .unwrap();
    let large = fixture::within(
        "50-node demo",
        run_demo(&opts(181, 50, SCALE), &Emitter::new()),
    )
    .await
    .unwrap();
    eprintln!(
        "3 nodes:\n{}\n50 nodes:\n{}",
        small.summary(),
        large.summary()
    );
    let ratio = large.wall.as_secs_f64() / small.wall.as_secs_f64();
    eprintln!(
        "wall 3 nodes {:.2}s, 50 nodes {:.2}s, ratio {ratio:.2}",
        small.wall.as_secs_f64(),
        large.wall.as_secs_f64()
    );
    // Targets: overhead under 500 ms (3 nodes), lag p95 under 250 ms, 50/3 under 1.5.
    assert!(small.overhead().as_millis() < 500, "{}", small.summary());
    assert_eq!(small.lags.len(), 3);
    assert_eq!(large.lags.len(), 50);
    assert!(small.lag_p95.as_millis() < 250, "{}", small.summary());
    assert!(large.lag_p95.as_millis() < 250, "{}", large.summary());
    assert!(ratio < 1.5, "50 nodes took {ratio:.2}x the 3-node run");
}
