//! `apply` end to end against lab clusters brought up by the real `up`: a live
//! sysctl applied to every node in parallel with no reboot; a change Talos
//! 1.13 reboots for (`.machine.env`), then a kernel-argument change (a
//! reinstall from the node's own installer image), rolled one control plane
//! at a time with etcd quorum sampled on every lab change; an install-disk selector matching
//! no disk refused before any ApplyConfiguration (on Talos 1.14 nodes, where
//! a reboot change is then rolled by the tool's own table); `--mode no-reboot` refused
//! for a reboot change, naming the field; a rollout killed mid-way converging
//! without a second reboot of a finished node; `up` re-run after a reboot
//! change rolling instead of rebooting everything. Subnets 127.0.49–54.0/24.

#[path = "common/day2cfg.rs"]
#[allow(dead_code)]
mod day2cfg;
#[path = "common/fixture.rs"]
mod fixture;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use day2cfg::{json_lines, text, up_cluster, Env};
use endsys_bootstrap::engine::{Cluster, ClusterSource, StepId};
use endsys_bootstrap::flows::apply::{self, ApplyOptions};
use endsys_lab::{Lab, NodeState};
use fixture::KillAt;

const DEADLINE: Duration = Duration::from_secs(150);
const ENV_PATCH: &str = "machine:\n  env:\n    HTTPS_PROXY: http://127.0.0.1:3128";

fn boot_ids(lab: &Lab) -> Vec<String> {
    lab.nodes().iter().map(|n| n.boot_id()).collect()
}

fn boots(lab: &Lab) -> Vec<u64> {
    lab.nodes().iter().map(|n| n.boots()).collect()
}

/// Samples without quorum, most nodes down at once, number of samples.
type Samples = (Vec<String>, usize, usize);

/// Samples, on every lab change, etcd quorum and how many nodes are down at once.
fn sample(lab: &Lab) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Samples>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut changes = lab.changes();
    let etcd = lab.etcd();
    let nodes: Vec<_> = lab.nodes().to_vec();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let (mut lost, mut most_down, mut n) = (Vec::new(), 0, 0);
        while !s.load(Ordering::SeqCst) {
            n += 1;
            match etcd.quorum() {
                Ok((_, _, true)) => {}
                Ok((healthy, members, false)) => {
                    lost.push(format!("{healthy} healthy of {members}"))
                }
                Err(e) => lost.push(e.to_string()),
            }
            let down = nodes
                .iter()
                .filter(|x| x.state() != NodeState::Running)
                .count();
            most_down = most_down.max(down);
            if tokio::time::timeout(Duration::from_millis(200), changes.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        (lost, most_down, n)
    });
    (stop, task)
}

async fn kube_up(env: &Env) {
    tokio::time::timeout(Duration::from_secs(30), env.lab.kube().wait_up())
        .await
        .expect("lab kube-apiserver up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_live_sysctl_parallel_no_reboot() {
    tokio::time::timeout(DEADLINE, async {
        let env = up_cluster(49, 3, 3, 0.0).await;
        kube_up(&env).await;
        let before = boot_ids(&env.lab);
        env.set_patch("machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"");
        let o = env.run(&["--output", "json", "apply"]).await;
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let lines = json_lines(&o);
        // Parallel: every node's apply started before the first one finished.
        let kinds: Vec<(String, String)> = lines
            .iter()
            .filter(|v| v["event"] == "day2" && v["step"] == "apply")
            .map(|v| {
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let first_done = kinds
            .iter()
            .position(|(k, _)| k == "done")
            .expect("a done apply");
        assert_eq!(
            kinds[..first_done]
                .iter()
                .filter(|(k, _)| k == "started")
                .count(),
            3,
            "{kinds:?}"
        );
        assert!(
            !lines.iter().any(|v| v["step"] == "reboot_requested"),
            "no reboot asked"
        );
        assert_eq!(boot_ids(&env.lab), before, "no node rebooted");
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
        env.lab.shutdown().await;
    })
    .await
    .expect("live apply within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reboot_change_rolls_one_cp_at_a_time() {
    tokio::time::timeout(DEADLINE, async {
        let env = up_cluster(50, 3, 3, 0.02).await;
        kube_up(&env).await;
        let before = boot_ids(&env.lab);
        let boots_before = boots(&env.lab);
        env.set_patch(ENV_PATCH);
        let plan = env.run(&["plan", "apply"]).await;
        let p = text(&plan.stdout);
        assert_eq!(plan.status.code(), Some(0), "{p}\n{}", text(&plan.stderr));
        assert!(
            p.contains("roll #1: snapshot (once) → quorum guard (reboot)"),
            "{p}"
        );
        assert!(
            p.contains("etcd leader handed over")
                && p.contains("apply STAGED → Reboot → back (new boot ID)"),
            "{p}"
        );
        let (cp1, cp3) = (p.find("roll #1").unwrap(), p.find("roll #3").unwrap());
        assert!(p[cp1..].starts_with("roll #1") && cp1 < cp3);

        let (stop, sampler) = sample(&env.lab);
        let o = env.run(&["apply"]).await;
        stop.store(true, Ordering::SeqCst);
        let (lost, most_down, n) = sampler.await.unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{}\n{err}", text(&o.stdout));
        assert!(
            lost.is_empty(),
            "quorum lost in {} of {n} samples: {lost:?}",
            lost.len()
        );
        assert_eq!(most_down, 1, "one node down at a time ({n} samples)");
        let after = boot_ids(&env.lab);
        for i in 0..3 {
            assert_ne!(after[i], before[i], "node {i} has a new boot ID");
        }
        let booted: Vec<u64> = boots(&env.lab)
            .iter()
            .zip(&boots_before)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(booted, vec![1, 1, 1], "each node rebooted exactly once");
        // Control planes in definition order, each finished before the next.
        let order: Vec<usize> = [
            "cp1 reboot_requested",
            "cp2 reboot_requested",
            "cp3 reboot_requested",
        ]
        .iter()
        .map(|s| err.find(s).unwrap_or_else(|| panic!("{s} in {err}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{err}");
        let back_cp1 = err.find("cp1 wait_back").unwrap();
        assert!(back_cp1 < order[1], "cp1 back before cp2 goes down");
        assert!(err.contains("snapshot"), "{err}");
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));

        // Kernel arguments: Talos applies .machine.install live, but only an
        // install reads it: each node is reinstalled from its own installer
        // image and rebooted, one at a time, behind the same gates.
        env.set_patch(&format!(
            "{ENV_PATCH}\n  install:\n    grubUseUKICmdline: false\n    extraKernelArgs:\n      - console=ttyS0"
        ));
        let o = env.run(&["diff", "cp1"]).await;
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{out}\n{}", text(&o.stderr));
        assert!(out.contains("cp1 (127.0.50.11): reinstall: differs; .machine.install.extraKernelArgs, .machine.install.grubUseUKICmdline take(s) effect only through a reinstall"), "{out}\n{}", text(&o.stderr));
        let p = text(&env.run(&["plan", "apply"]).await.stdout);
        assert!(p.contains("apply NO_REBOOT → upgrade to its own installer image (reboots) → back"), "{p}");
        let boots_before = boots(&env.lab);
        let (stop, sampler) = sample(&env.lab);
        let o = env.run(&["apply"]).await;
        stop.store(true, Ordering::SeqCst);
        let (lost, most_down, n) = sampler.await.unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{}\n{err}", text(&o.stdout));
        assert!(lost.is_empty(), "quorum lost in {} of {n} samples: {lost:?}", lost.len());
        assert_eq!(most_down, 1, "one node down at a time ({n} samples)");
        let booted: Vec<u64> = boots(&env.lab).iter().zip(&boots_before).map(|(a, b)| a - b).collect();
        assert_eq!(booted, vec![1, 1, 1], "each node reinstalled and rebooted once");
        assert_eq!(err.matches("upgrade: done installer factory.talos.dev/").count(), 3, "{err}");
        assert!(!err.contains("reboot_requested"), "the legacy Upgrade reboots by itself: {err}");
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
        env.lab.shutdown().await;
    })
    .await
    .expect("rolled apply within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_unmatched_install_disk_before_any_call() {
    tokio::time::timeout(DEADLINE, async {
        // Talos 1.14 nodes: the refusal is the tool's own, before any call;
        // then a reboot change rolled there too (1.14 never reboots on apply).
        let env = day2cfg::up_cluster_of("v1.14.0", 51, 2, 1, 0.0).await;
        let text_before = std::fs::read_to_string(&env.talconfig).unwrap();
        std::fs::write(
            &env.talconfig,
            text_before.replacen("Samsung SSD 980*", "NoSuchDisk*", 1),
        )
        .unwrap();
        let calls = env.lab.apply_calls();
        let before = boot_ids(&env.lab);
        let o = env.run(&["apply"]).await;
        let err = text(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{err}");
        assert!(
            err.contains("cp1 (127.0.51.11): install disk")
                && err.contains("NoSuchDisk*")
                && err.contains("matches 0 disk"),
            "{err}"
        );
        assert_eq!(
            env.lab.apply_calls(),
            calls,
            "no ApplyConfiguration, not even a dry run"
        );
        assert_eq!(boot_ids(&env.lab), before);

        // On 1.14 Talos's dry run says NO_REBOOT for .machine.env; the tool's
        // table knows it needs a reboot, and the roll uses STAGED + Reboot.
        std::fs::write(&env.talconfig, &text_before).unwrap();
        env.set_patch(ENV_PATCH);
        let o = env.run(&["diff", "cp1"]).await;
        let out = text(&o.stdout);
        assert!(out.contains("cp1 (127.0.51.11): reboot: differs; needs a reboot (.machine.env) [Talos dry run: NO_REBOOT]"), "{out}\n{}", text(&o.stderr));
        let boots_before = boots(&env.lab);
        // One control plane: rebooting it stops etcd, so the guard refuses
        // (nothing applied) until --force says to go on.
        let o = env.run(&["apply"]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("refused by the quorum guard"), "{}", text(&o.stderr));
        assert_eq!(boots(&env.lab), boots_before);
        let o = env.run(&["apply", "--force"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let booted: Vec<u64> = boots(&env.lab).iter().zip(&boots_before).map(|(a, b)| a - b).collect();
        assert_eq!(booted, vec![1, 1]);
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
        env.lab.shutdown().await;
    })
    .await
    .expect("hardware refusal within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_no_reboot_mode_refused_for_reboot_change() {
    tokio::time::timeout(DEADLINE, async {
        let env = up_cluster(52, 2, 1, 0.0).await;
        env.set_patch(ENV_PATCH);
        let before = boot_ids(&env.lab);
        let o = env.run(&["apply", "--mode", "no-reboot"]).await;
        let err = text(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{err}");
        assert!(
            err.contains("needs a reboot (.machine.env)")
                && err.contains("--mode no-reboot refuses it"),
            "{err}"
        );
        assert!(
            err.contains("cp1 (127.0.52.11)") && err.contains("worker1 (127.0.52.12)"),
            "{err}"
        );
        assert_eq!(boot_ids(&env.lab), before);
        // Nothing was applied: the drift is still there.
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(2));
        // --mode staged stages it everywhere, no reboot; diff says so.
        let o = env.run(&["apply", "--mode", "staged"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_eq!(boot_ids(&env.lab), before);
        let o = env.run(&["diff"]).await;
        let out = text(&o.stdout);
        assert_eq!(out.matches("staged-pending").count(), 2, "{out}");
        env.lab.shutdown().await;
    })
    .await
    .expect("no-reboot refusal within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_mid_rollout_converges_without_second_reboot() {
    tokio::time::timeout(DEADLINE, async {
        let env = up_cluster(54, 3, 3, 0.02).await;
        kube_up(&env).await;
        env.set_patch(ENV_PATCH);
        let boots_before = boots(&env.lab);
        let load = |env: &Env| {
            let mut src = endsys_bootstrap::engine::talhelper::TalhelperSource::new(
                &env.talconfig,
                &env.secrets,
            );
            src.vars = endsys_bootstrap::machineconfig::Vars::default();
            let _ = src.definition().unwrap();
            Cluster::load(&src, &env.state).unwrap()
        };
        let mut o = ApplyOptions::new(env.state.clone());
        o.policy = fixture::policy(Duration::from_secs(10));
        o.node_deadline = Duration::from_secs(60);
        o.etcd_deadline = Duration::from_secs(30);
        o.kube_deadline = Duration::from_secs(30);
        o.layers_deadline = Duration::from_secs(30);
        // Killed twice: once cp1 was back but still cordoned (its services
        // checked), then once cp2's reboot was requested (cp2 rebooting).
        for at in [
            KillAt::NodeFinished(StepId::Services, "cp1"),
            KillAt::NodeFinished(StepId::RebootRequested, "cp2"),
        ] {
            let (c1, o1) = (load(&env), o.clone());
            let r = fixture::killed_at(
                at,
                move |em| async move { apply::apply(&c1, &o1, &em).await },
            )
            .await;
            assert!(r.is_none(), "the kill at {at:?} landed");
        }
        let mid: Vec<u64> = boots(&env.lab)
            .iter()
            .zip(&boots_before)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(mid[2], 0, "cp3 untouched at the kill: {mid:?}");
        // The re-run resumes: cp1 skipped, cp2 waited for (not rebooted again), cp3 rolled.
        let c2 = load(&env);
        let report = apply::apply(&c2, &o, &endsys_bootstrap::engine::Emitter::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.resumed);
        // Wait for every node to settle before counting boots.
        let booted: Vec<u64> = boots(&env.lab)
            .iter()
            .zip(&boots_before)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(
            booted,
            vec![1, 1, 1],
            "each node rebooted exactly once: {report:?}"
        );
        // No Node left cordoned by the killed runs.
        let k = c2.kube().await.unwrap().unwrap();
        for n in ["cp1", "cp2", "cp3"] {
            let st = endsys_bootstrap::kube::nodes::node_state(&k, n)
                .await
                .unwrap();
            assert!(st.exists && !st.unschedulable, "{n} left cordoned");
        }
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
        env.lab.shutdown().await;
    })
    .await
    .expect("killed rollout converged within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_rerun_after_reboot_change_rolls() {
    tokio::time::timeout(DEADLINE, async {
        // Three control planes and a worker: the worker is rolled after them.
        let env = up_cluster(53, 4, 3, 0.02).await;
        kube_up(&env).await;
        env.set_patch(ENV_PATCH);
        let boots_before = boots(&env.lab);
        let (stop, sampler) = sample(&env.lab);
        let mut src =
            endsys_bootstrap::engine::talhelper::TalhelperSource::new(&env.talconfig, &env.secrets);
        src.vars = endsys_bootstrap::machineconfig::Vars::default();
        let opts = fixture::up_options(&env.state, StepId::Kubeconfig, day2cfg::deadlines());
        let report =
            endsys_bootstrap::flows::up::up(&src, &opts, &endsys_bootstrap::engine::Emitter::new())
                .await
                .unwrap_or_else(|e| panic!("up re-run: {e}"));
        stop.store(true, Ordering::SeqCst);
        let (lost, most_down, n) = sampler.await.unwrap();
        assert!(
            lost.is_empty(),
            "quorum lost in {} of {n} samples: {lost:?}",
            lost.len()
        );
        assert_eq!(most_down, 1, "never more than one node down ({n} samples)");
        let booted: Vec<u64> = boots(&env.lab)
            .iter()
            .zip(&boots_before)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(booted, vec![1, 1, 1, 1], "each node rebooted exactly once");
        let apply = report
            .steps
            .iter()
            .find(|(s, _)| *s == StepId::Apply)
            .unwrap();
        assert!(
            format!("{:?}", apply.1).contains("4 rolled one at a time"),
            "{:?}",
            apply.1
        );
        let o = env.run(&["diff"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
        env.lab.shutdown().await;
    })
    .await
    .expect("up re-run within the deadline");
}
