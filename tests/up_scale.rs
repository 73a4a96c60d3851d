//! A large lab: 500 nodes (5 control planes, 495 workers) whose addresses span
//! several 127.0.N /24s come up with one Bootstrap. Subnets 20–22.

#[path = "common/fixture.rs"]
mod fixture;

use endsys_bootstrap::demo::{run_demo, DemoOptions};
use endsys_bootstrap::engine::{Emitter, Outcome, StepId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes_across_three_subnets_come_up() {
    let opts = DemoOptions {
        nodes: 500,
        controlplanes: 5,
        time_scale: 0.0,
        // 127.0.20.11 … 127.0.22.4.
        first_ip: std::net::Ipv4Addr::new(127, 0, 20, 11),
        state_dir: Some(tempfile::tempdir().expect("tempdir").keep()),
        until: StepId::Kubeconfig,
        secrets_from: Some(fixture::SECRETS.into()),
        deadline: Some(fixture::WAIT_CAP),
        ..DemoOptions::default()
    };
    let r = fixture::within("500-node demo", run_demo(&opts, &Emitter::new()))
        .await
        .unwrap_or_else(|e| panic!("{}", endsys_bootstrap::engine::Doctor::explain(&e)));
    let steps = fixture::steps_of(&r.up);
    for s in [StepId::Apply, StepId::WaitConfigured, StepId::Bootstrap] {
        assert!(
            matches!(steps.get(&s), Some(Outcome::Done { .. })),
            "{s:?}: {:?}\n{}",
            steps.get(&s),
            r.summary()
        );
    }
    // Every node seen running by the tool.
    assert_eq!(r.lags.len(), 500, "{}", r.summary());
    eprintln!("{}", r.summary());
}
