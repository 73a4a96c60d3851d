//! `upgrade talos` killed at every step boundary (as if the process died
//! there), then run again: the rollout converges with every node on the
//! target, exactly one reboot per node, no node left cordoned, etcd quorum
//! never lost; on the 1.13 call path and on the 1.12 one. Subnet 127.0.39.0/24.

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

/// Every step boundary of every node's table, once per round: killed there,
/// then run again to the end. Each round moves to a new patch release of
/// `minor`, so every node upgrades exactly once per round.
async fn rounds(env: &Arc<Env>, minor: u32, first_patch: usize) -> usize {
    let steps = talos::steps().ids();
    let mut killed = 0;
    for (i, step) in steps.iter().copied().enumerate() {
        let to = format!("v1.{minor}.{}", first_patch + i);
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
                "{to}: {step} on {node}: killed run within 60 s\n{}",
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
        .unwrap_or_else(|_| {
            panic!(
                "{to}: {step} on {node}: re-run within 60 s\n{}",
                env.lab.report()
            )
        })
        .unwrap_or_else(|e| panic!("{to}: {step} on {node}: re-run: {}", e.explain()));
        for (n, b) in env.lab.nodes().iter().zip(&boots) {
            let host = n.hostname().unwrap_or_default();
            assert_eq!(n.talos_version(), to, "{step} on {node}: {host}");
            assert_eq!(
                n.boots(),
                b + 1,
                "{to}: {step} on {node}: {host} rebooted more than once ({:?})",
                r.nodes
            );
            assert!(
                !cordoned(env, &host),
                "{to}: {step} on {node}: {host} left cordoned"
            );
        }
    }
    assert_eq!(killed, steps.len(), "v1.{minor}: every boundary killed");
    killed
}

/// A run killed after the installer ran on cp2 whose Reboot reached the node
/// but was never journaled (the process died between the call and the
/// journal): the re-run finds cp2 silent or on a new boot ID, waits for it and
/// does not reboot it again.
async fn unjournaled_reboot(env: &Arc<Env>, to: &str) {
    env.lab
        .publish_installer(&format!("ghcr.io/siderolabs/installer:{to}"), to);
    let boots: Vec<u64> = env.lab.nodes().iter().map(|n| n.boots()).collect();
    let (e2, to2) = (env.clone(), to.to_string());
    let first = killed_at(
        KillAt::NodeFinished(endsys_bootstrap::engine::StepId::Upgrade, "cp2"),
        move |em| async move {
            let mut o = e2.options();
            o.to = Some(to2);
            upgrade_talos(&e2.cluster, &o, &em).await
        },
    )
    .await;
    assert!(first.is_none(), "the kill landed");
    // Down longer than preflight retries a silent node (2 s).
    env.lab
        .node("cp2")
        .unwrap()
        .set_reboot_delay(Duration::from_secs(4));
    let cp2 = env.cluster.node("cp2").unwrap().clone();
    env.cluster
        .mtls(&cp2, fixture::policy(Duration::from_secs(5)))
        .unwrap()
        .reboot()
        .await
        .unwrap();
    let mut o = env.options();
    o.to = Some(to.into());
    let c = upgrade::Collect::default();
    tokio::time::timeout(
        Duration::from_secs(60),
        upgrade_talos(&env.reload(), &o, &c.emitter()),
    )
    .await
    .expect("re-run within 60 s")
    .unwrap_or_else(|e| {
        panic!(
            "re-run after an unjournaled reboot: {}\n{}",
            e.explain(),
            c.lines().join("\n")
        )
    });
    for (n, b) in env.lab.nodes().iter().zip(&boots) {
        let host = n.hostname().unwrap_or_default();
        assert_eq!(n.talos_version(), to, "{host}");
        assert_eq!(n.boots(), b + 1, "{host} rebooted more than once");
        assert!(!cordoned(env, &host), "{host} left cordoned");
    }
}

/// On Talos 1.13 nodes (ImageService.Pull, LifecycleService.Upgrade, Reboot),
/// then on Talos 1.12 nodes (MachineService.Upgrade, which reboots by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_talos_kill_at_every_step_boundary_converges() {
    let t0 = Instant::now();
    for (from, minor, first_patch) in [("v1.13.0", 13, 10), ("v1.12.0", 12, 12)] {
        let env = Arc::new(cluster(39, from, 3, 0, 0.01).await);
        let (stop, sampler) = sample_quorum(&env.lab);
        let killed = rounds(&env, minor, first_patch).await;
        if minor == 13 {
            unjournaled_reboot(&env, "v1.13.40").await;
        }
        stop.store(true, Ordering::SeqCst);
        let (lost, samples) = sampler.await.unwrap();
        assert!(
            lost.is_empty(),
            "{from}: quorum lost in {} of {samples} samples: {lost:?}",
            lost.len()
        );
        eprintln!(
            "{from}: {killed} boundaries, kill + re-run each, at {:?}",
            t0.elapsed()
        );
        // The next cluster takes the same addresses.
        match Arc::try_unwrap(env) {
            Ok(env) => env.lab.shutdown().await,
            Err(_) => panic!("the cluster is still shared"),
        }
    }
}
