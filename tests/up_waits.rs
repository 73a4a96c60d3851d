//! Waits of `up` that act on what they see instead of running out their
//! deadline: preflight after an earlier apply waits no longer than the node
//! timeout, a node back in maintenance mid-wait is named at once, and a cluster
//! whose journal shows etcd ran is never bootstrapped again as a new empty one.
//! Subnets 111–115.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;

use std::time::{Duration, Instant};

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{
    ClusterSource, Doctor, Emitter, Event, EventKind, EventSink, FlowError, StepId,
};
use endsys_bootstrap::flows::up::{up, UpOptions};
use endsys_lab::LabNode;
use fixture::{start_lab, up_options, within_lab, Deadlines};
use memory::MemorySource;

fn options(dir: &std::path::Path, until: StepId, node: Duration) -> UpOptions {
    up_options(
        dir,
        until,
        Deadlines {
            node,
            // As long as the default: the node deadline must bound it.
            reach: Duration::from_secs(300),
            retry_budget: Duration::from_secs(5),
        },
    )
}

async fn run(src: &MemorySource, opts: &UpOptions) -> Result<(), FlowError> {
    up(src as &dyn ClusterSource, opts, &Emitter::new())
        .await
        .map(|_| ())
}

/// The whole error tree as text (node failures included).
fn text(e: &FlowError) -> String {
    match e {
        FlowError::Nodes { failures, .. } => failures
            .iter()
            .map(|f| format!("{}: {:?} {}", f.node, f.error, f.error.explain()))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{other:?} {}", other.explain()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_after_an_apply_waits_no_longer_than_the_node_timeout() {
    let lab = start_lab(111, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "reach"), None);
    let dir = tempfile::tempdir().unwrap();
    within_lab(&lab, "first run", async {
        run(
            &src,
            &options(dir.path(), StepId::WaitConfigured, Duration::from_secs(60)),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.explain()));
    })
    .await;
    lab.nodes()[2].power_off().await;
    let t0 = Instant::now();
    let e = within_lab(&lab, "preflight with a node off", async {
        run(
            &src,
            &options(dir.path(), StepId::WaitConfigured, Duration::from_secs(3)),
        )
        .await
        .unwrap_err()
    })
    .await;
    assert!(matches!(e, FlowError::Preflight(_)), "{}", e.explain());
    assert!(e.explain().contains("cp3"), "{}", e.explain());
    // Before: 300 s (reach_deadline) whatever --node-timeout said.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// Wipes a node's disk and powers it on again (back in maintenance) as soon as
/// it is seen in `wait_configured`.
struct WipeInWait {
    node: LabNode,
    host: &'static str,
    done: bool,
}

impl EventSink for WipeInWait {
    fn record(&mut self, e: &Event) {
        let seen = matches!(e.kind, EventKind::NodeState { .. })
            && e.step == StepId::WaitConfigured
            && e.node.as_deref() == Some(self.host);
        if seen && !self.done {
            self.done = true;
            let node = self.node.clone();
            tokio::spawn(async move {
                node.wipe_disk().await;
                node.power_on().await;
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_in_maintenance_mid_wait_is_named_at_once() {
    let lab = start_lab(112, 3, 3, 0.02).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "wiped"), None);
    let dir = tempfile::tempdir().unwrap();
    let em = Emitter::new();
    em.add_sink(Box::new(WipeInWait {
        node: lab.nodes()[1].clone(),
        host: "cp2",
        done: false,
    }));
    let t0 = Instant::now();
    // A node deadline of 60 s: the wait must end long before it.
    let opts = options(dir.path(), StepId::WaitConfigured, Duration::from_secs(60));
    let e = within_lab(&lab, "up with a node wiped", async {
        up(&src as &dyn ClusterSource, &opts, &em)
            .await
            .unwrap_err()
    })
    .await;
    let t = text(&e);
    assert!(t.contains("cp2") && t.contains("BackInMaintenance"), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "{:?}: {t}",
        t0.elapsed()
    );
    // The next run sees it in maintenance and applies its config again.
    within_lab(&lab, "rerun", async {
        run(&src, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}", text(&e)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_lab_is_not_bootstrapped_as_a_new_empty_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), StepId::Kubeconfig, Duration::from_secs(60));
    let first = start_lab(113, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&first, 3, "restarted"), None);
    within_lab(&first, "first run", async {
        run(&src, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}", e.explain()));
    })
    .await;
    assert_eq!(first.bootstrap_calls(), 1);
    first.shutdown().await;

    // The same addresses, every node fresh: the cluster's etcd is gone.
    let lab = start_lab(113, 3, 3, 0.0).await;
    let e = within_lab(&lab, "run on the new lab", run(&src, &opts))
        .await
        .unwrap_err();
    assert!(
        matches!(e, FlowError::BootstrapRefused { .. }),
        "{}",
        e.explain()
    );
    let explained = e.explain();
    assert!(
        explained.contains("journal") && explained.contains("--new-cluster"),
        "{explained}"
    );
    assert_eq!(lab.bootstrap_calls(), 0);

    // Asked for explicitly, it starts a new cluster.
    let mut new = opts.clone();
    new.new_cluster = true;
    within_lab(&lab, "run with --new-cluster", async {
        run(&src, &new)
            .await
            .unwrap_or_else(|e| panic!("{}", e.explain()));
    })
    .await;
    assert_eq!(lab.bootstrap_calls(), 1);
}
