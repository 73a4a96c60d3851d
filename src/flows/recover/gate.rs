//! Every node in maintenance mode before a restore: configured nodes are
//! refused by name, or reset (STATE + EPHEMERAL wiped) with `--reset-nodes`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::engine::{
    classify, probe, Backoff, ClusterSource, Doctor, Emitter, FlowError, NodeDef, NodeFailure,
    NodeProbe, StepId, Wait,
};
use crate::flows::up::UpOptions;
use crate::talos::{Credentials, ResetOptions, TalosClient, TlsMode};

use super::state::{Phase, RecoverOptions, Recovery};

const STEP: StepId = StepId::Preflight;

/// Whether every node answers in maintenance mode now.
pub async fn all_in_maintenance(
    source: &dyn ClusterSource,
    up: &UpOptions,
    em: &Emitter,
    nodes: &[NodeDef],
) -> Result<bool, FlowError> {
    let creds = source.render()?.credentials;
    let classes = join_all(nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            classify(
                em,
                STEP,
                n,
                Some(&creds),
                up.probe_timeout,
                up.probe_timeout,
            )
            .await
        }
    }))
    .await;
    Ok(classes.iter().all(|c| *c == NodeProbe::Maintenance))
}

/// Every node must be in maintenance mode; configured ones are refused, or reset
/// with `--reset-nodes`. Returns the nodes reset.
pub async fn gate_nodes(cx: &Recovery<'_>) -> Result<Vec<String>, FlowError> {
    let (opts, em) = (cx.opts, cx.em);
    let nodes = &cx.def.nodes;
    let creds = cx.source.render()?.credentials;
    // Nodes reset by an earlier run may still be rebooting.
    let deadline = if cx.phase() == Phase::Resetting {
        opts.up.reach_deadline
    } else {
        opts.up.probe_timeout
    };
    let classes = join_all(nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let c = classify(em, STEP, n, Some(&creds), opts.up.probe_timeout, deadline).await;
            em.node_state(STEP, &n.hostname, c.describe());
            (n, c)
        }
    }))
    .await;
    let others: Vec<&(&NodeDef, NodeProbe)> = classes
        .iter()
        .filter(|(_, c)| *c != NodeProbe::Maintenance)
        .collect();
    if others.is_empty() {
        em.progress(
            STEP,
            None,
            format!("all {} node(s) in maintenance mode", nodes.len()),
        );
        return Ok(Vec::new());
    }
    let listed = |pred: &dyn Fn(&NodeProbe) -> bool| -> Vec<(String, String)> {
        others
            .iter()
            .filter(|(_, c)| pred(c))
            .map(|(n, c)| (n.label(), c.describe()))
            .collect()
    };
    // A node that does not answer cannot be reset either: say so before
    // suggesting --reset-nodes, which could not help.
    let silent = listed(&|c| matches!(c, NodeProbe::Unreachable(_)));
    if !silent.is_empty() {
        return Err(FlowError::NodesUnreachable { nodes: silent });
    }
    if !opts.reset_nodes {
        return Err(FlowError::NodesConfigured {
            nodes: listed(&|_| true),
        });
    }
    let blocked = listed(&|c| *c != NodeProbe::Ours);
    if !blocked.is_empty() {
        return Err(FlowError::CannotReset { nodes: blocked });
    }
    cx.set(Phase::Resetting)?;
    let targets: Vec<&NodeDef> = others.iter().map(|(n, _)| *n).collect();
    let results = join_all(targets.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let r = reset_to_maintenance(n, &creds, opts, em).await;
            (n, r)
        }
    }))
    .await;
    let mut failures = Vec::new();
    let mut reset = Vec::new();
    for (n, r) in results {
        match r {
            Ok(()) => reset.push(n.hostname.clone()),
            Err(e) => failures.push(NodeFailure {
                node: n.label(),
                error: Box::new(e),
            }),
        }
    }
    if !failures.is_empty() {
        return Err(FlowError::Nodes {
            step: "reset".into(),
            failures,
        });
    }
    cx.journal
        .update(|j| j.facts.reset.extend(reset.iter().cloned()))?;
    Ok(reset)
}

/// Reset{graceful: false, reboot, wipe STATE + EPHEMERAL}, then wait until the
/// node answers in maintenance mode. Not graceful: every control plane goes, so
/// none could leave etcd with quorum: a graceful reset asks etcd to remove the
/// member first, which a cluster without quorum cannot do (siderolabs/talos
/// v1.13.9 `internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_sequencer_tasks.go`,
/// `LeaveEtcd`).
async fn reset_to_maintenance(
    n: &NodeDef,
    creds: &Arc<Credentials>,
    opts: &RecoverOptions,
    em: &Emitter,
) -> Result<(), FlowError> {
    let c = TalosClient::connect(&n.address, TlsMode::Mutual(creds.clone()), opts.up.policy)?;
    em.progress(
        STEP,
        Some(&n.hostname),
        "reset: wipe STATE and EPHEMERAL, reboot into maintenance",
    );
    c.reset(&ResetOptions {
        graceful: false,
        reboot: true,
        wipe_labels: vec!["STATE".into(), "EPHEMERAL".into()],
    })
    .await?;
    // Judged by the TLS handshake, not the event stream (talosctl reset --wait
    // hangs when the node is already gone, talos #8802).
    let mut w = Wait::new(
        n.label(),
        "back in maintenance mode after the reset",
        opts.up.node_deadline,
    )
    .backoff(Backoff::new(
        Duration::from_millis(50),
        crate::engine::wait::POLL_MAX,
    ));
    loop {
        match probe(n, Some(creds), opts.up.probe_timeout).await {
            Ok(NodeProbe::Maintenance) => {
                em.node_state(STEP, &n.hostname, "maintenance (reset done)");
                return Ok(());
            }
            Ok(m) => w.seen(m.describe()),
            Err(e) => w.seen(e.likely_cause()),
        }
        w.pause().await?;
    }
}
