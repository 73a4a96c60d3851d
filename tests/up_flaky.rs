//! `up` on a flaky network: a share of every call to every node fails with
//! `Unavailable` or is held back; `up` still converges, with one Bootstrap.
//! Subnets 114–116.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "common/memory.rs"]
mod memory;

use std::time::Duration;

use endsys_bootstrap::demo::lab_definition;
use endsys_bootstrap::engine::{ClusterSource, Doctor, Emitter, StepId};
use endsys_bootstrap::flows::up::up;
use endsys_lab::{FlakyNetwork, NodeState};
use fixture::{start_lab, up_options, within_lab, Deadlines};
use memory::MemorySource;

async fn converges_on_a_flaky_network(subnet: u8, nodes: usize, share: f64) {
    let lab = start_lab(subnet, nodes, 3.min(nodes), 0.0).await;
    lab.set_flaky(Some(FlakyNetwork {
        fail_share: share,
        delay_share: share,
        delay: Duration::from_millis(50),
    }));
    let src = MemorySource::new(lab_definition(&lab, 3.min(nodes), "flaky"), None);
    let dir = tempfile::tempdir().unwrap();
    let opts = up_options(
        dir.path(),
        StepId::Kubeconfig,
        Deadlines {
            node: Duration::from_secs(60),
            reach: Duration::from_secs(30),
            retry_budget: Duration::from_secs(10),
        },
    );
    within_lab(&lab, "up on a flaky network", async {
        up(&src as &dyn ClusterSource, &opts, &Emitter::new())
            .await
            .unwrap_or_else(|e| panic!("{}\n{}", e.explain(), lab.report()));
    })
    .await;
    let (failed, delayed) = lab.flaky_counts();
    assert!(
        failed > 0 && delayed > 0,
        "{failed} failed, {delayed} delayed"
    );
    assert_eq!(lab.bootstrap_calls(), 1);
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running, "{}", n.report());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_converges_with_one_bootstrap_when_a_tenth_of_calls_fail() {
    converges_on_a_flaky_network(114, 3, 0.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_converges_with_one_bootstrap_when_a_quarter_of_calls_fail() {
    converges_on_a_flaky_network(115, 5, 0.25).await;
}

/// Drops the next call to a node once `apply` starts.
struct DropAtApply(endsys_lab::LabNode, bool);

impl endsys_bootstrap::engine::EventSink for DropAtApply {
    fn record(&mut self, e: &endsys_bootstrap::engine::Event) {
        if !self.1 && e.step == StepId::Apply {
            self.1 = true;
            self.0.drop_next_calls(1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_maintenance_apply_is_retried() {
    let lab = start_lab(116, 3, 3, 0.0).await;
    let src = MemorySource::new(lab_definition(&lab, 3, "dropped"), None);
    let dir = tempfile::tempdir().unwrap();
    let opts = up_options(
        dir.path(),
        StepId::WaitConfigured,
        Deadlines {
            node: Duration::from_secs(60),
            reach: Duration::from_secs(30),
            retry_budget: Duration::from_secs(10),
        },
    );
    let em = Emitter::new();
    em.add_sink(Box::new(DropAtApply(lab.nodes()[1].clone(), false)));
    within_lab(&lab, "up with one apply dropped", async {
        up(&src as &dyn ClusterSource, &opts, &em)
            .await
            .unwrap_or_else(|e| panic!("{}", e.explain()));
    })
    .await;
    // Three nodes, one apply dropped (counted: it reached the node) and sent again.
    assert_eq!(lab.apply_calls(), 4);
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running, "{}", n.report());
    }
}
