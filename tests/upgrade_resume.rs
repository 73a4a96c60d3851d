//! `upgrade talos` killed at every step boundary (as if the process died
//! there), then run again: the rollout converges with every node on the
//! target, exactly one reboot per node, no node left cordoned, etcd quorum
//! never lost. Subnet 127.0.39.0/24.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/upgrade.rs"]
mod upgrade;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use endsys_bootstrap::engine::Doctor;
use endsys_bootstrap::flows::upgrade::{talos, upgrade_talos};
use fixture::{killed_at, KillAt};
use upgrade::{cluster, sample_quorum, Env};

const NODES: [&str; 3] = ["cp1", "cp2", "cp3"];

fn cordoned(env: &Env, host: &str) -> bool {
    env.lab
        .kube()
        .get("Node", None, host)
        .is_some_and(|n| n["spec"]["unschedulable"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_kill_at_every_step_boundary_converges() {
    let env = Arc::new(cluster(39, "v1.13.0", 3, 0, 0.01).await);
    let (stop, sampler) = sample_quorum(&env.lab);
    let steps = talos::steps().ids();
    let t0 = Instant::now();
    let mut killed = 0;
    for (i, step) in steps.iter().copied().enumerate() {
        // A new patch release per boundary: every node upgrades once per round.
        let to = format!("v1.13.{}", 10 + i);
        let image = format!("ghcr.io/siderolabs/installer:{to}");
        env.lab.publish_installer(&image, &to);
        let node = NODES[i % NODES.len()];
        let boots: Vec<u64> = env.lab.nodes().iter().map(|n| n.boots()).collect();
        let e2 = env.clone();
        let to2 = to.clone();
        let first = tokio::time::timeout(
            Duration::from_secs(60),
            killed_at(KillAt::NodeFinished(step, node), move |em| async move {
                let mut o = e2.options();
                o.to = Some(to2);
                upgrade_talos(&e2.cluster, &o, &em).await
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{step} on {node}: killed run within 60 s\n{}",
                env.lab.report()
            )
        });
        if first.is_none() {
            killed += 1;
        }
        let mut o = env.options();
        o.to = Some(to.clone());
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            upgrade_talos(&env.reload(), &o, &endsys_bootstrap::engine::Emitter::new()),
        )
        .await
        .unwrap_or_else(|_| panic!("{step} on {node}: re-run within 60 s\n{}", env.lab.report()))
        .unwrap_or_else(|e| panic!("{step} on {node}: re-run: {}", e.explain()));
        for (n, b) in env.lab.nodes().iter().zip(&boots) {
            let host = n.hostname().unwrap_or_default();
            assert_eq!(n.talos_version(), to, "{step} on {node}: {host}");
            assert_eq!(
                n.boots(),
                b + 1,
                "{step} on {node}: {host} rebooted more than once ({:?})",
                r.nodes
            );
            assert!(
                !cordoned(&env, &host),
                "{step} on {node}: {host} left cordoned"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (lost, samples) = sampler.await.unwrap();
    assert!(
        lost.is_empty(),
        "quorum lost in {} of {samples} samples: {lost:?}",
        lost.len()
    );
    assert_eq!(killed, steps.len(), "every boundary killed");
    eprintln!(
        "{} boundaries, kill + re-run each, in {:?}",
        steps.len(),
        t0.elapsed()
    );
}
