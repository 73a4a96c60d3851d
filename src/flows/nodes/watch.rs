//! The waits of a node operation: the node back in maintenance after a reset,
//! answering at all, running its config; etcd membership as another control
//! plane reports it. Each is one [`Wait`]: a deadline, what it waits for and
//! what it saw last.

use std::time::Duration;

use futures::StreamExt;

use crate::engine::cluster::wait_machine;
use crate::engine::{Backoff, Doctor, FlowError, NodeDef, NodeProbe, StepId, Wait};
use crate::flows::gates::quorum::owner;
use crate::talos::client::EtcdMember;
use crate::talos::resources::MachineStage;
use crate::talos::wait::{WaitProgress, POLL_FALLBACK};

use super::state::NodeOp;

/// Most a wait on etcd membership pauses between two member lists: there is no
/// watchable resource for the cluster-wide member list (quorum reads only).
const MEMBER_POLL: Duration = Duration::from_millis(250);

/// A node's waits poll at most [`POLL_FALLBACK`] apart (a node that comes back
/// is seen within a quarter second).
fn node_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(25), POLL_FALLBACK)
}

/// Waits until the node answers in maintenance mode. While it still runs its
/// config, the wait follows its MachineStatus watch until the stream ends (the
/// node went down); while it is down, reconnects at most [`POLL_FALLBACK`] apart.
/// Verifying by handshake, not by the reset's event stream, is deliberate: that
/// stream is cut by the very reboot it reports.
pub async fn wait_maintenance(cx: &NodeOp<'_>) -> Result<(), FlowError> {
    let node = &cx.node;
    let mut w = Wait::new(
        node.label(),
        "back in maintenance mode after the reset",
        cx.opts.node_deadline,
    )
    .backoff(node_backoff());
    let mut told = false;
    loop {
        w.check()?;
        match cx.probe().await {
            NodeProbe::Maintenance => return Ok(()),
            NodeProbe::Ours | NodeProbe::ConfiguredUnknown => {
                w.seen("still running its config (reset in progress)");
                let c = cx.cluster.mtls(node, cx.opts.policy.once())?;
                // Follow the node until it goes away; a stage change wakes us.
                let followed = w
                    .bounded(async {
                        match c.watch_machine_status().await {
                            Ok(s) => {
                                let mut s = Box::pin(s);
                                while let Some(Ok(st)) = s.next().await {
                                    if !told {
                                        cx.waiting(
                                            StepId::Reset,
                                            format!(
                                                "{} to come back in maintenance ({})",
                                                node.label(),
                                                st.summary()
                                            ),
                                        );
                                        told = true;
                                    }
                                }
                                true
                            }
                            Err(_) => false,
                        }
                    })
                    .await;
                if matches!(followed, Some(true)) {
                    w.woke();
                    continue;
                }
            }
            NodeProbe::Foreign => w.seen("serves a certificate from another CA"),
            NodeProbe::Unreachable(e) => w.seen(format!("not answering ({e})")),
        }
        w.pause().await?;
    }
}

/// Waits until the node answers at all (maintenance or configured).
pub async fn wait_reachable(cx: &NodeOp<'_>, step: StepId) -> Result<NodeProbe, FlowError> {
    let node = &cx.node;
    let mut w = Wait::new(
        node.label(),
        "answering on port 50000",
        cx.opts.node_deadline,
    )
    .backoff(node_backoff());
    loop {
        let mode = cx.probe().await;
        let NodeProbe::Unreachable(e) = &mode else {
            return Ok(mode);
        };
        w.seen(e.clone());
        let msg = format!(
            "for {} to answer on port 50000 (power it on / boot it into maintenance): {e}",
            node.label()
        );
        // Said once: the error text changes as the node boots.
        if w.news("unreachable") {
            cx.waiting(step, msg);
        }
        w.pause().await?;
    }
}

/// Waits on the node's MachineStatus watch until it runs and is ready (for a
/// control plane that includes etcd running).
pub async fn wait_running(cx: &NodeOp<'_>) -> Result<(), FlowError> {
    let node = &cx.node;
    let c = cx.cluster.mtls(node, cx.opts.policy)?;
    let mut last_told = String::new();
    let what = if node.control_plane {
        "running with etcd joined"
    } else {
        "running"
    };
    wait_machine(
        &c,
        node,
        what,
        cx.opts.node_deadline,
        |s| s.stage == MachineStage::Running && s.status.ready,
        |p| {
            let line = match p {
                WaitProgress::Status(s) => s.summary(),
                WaitProgress::Away(e) => format!("the node to answer again ({})", e.likely_cause()),
            };
            if line != last_told {
                cx.waiting(StepId::WaitJoin, line.clone());
                last_told = line;
            }
        },
    )
    .await?;
    Ok(())
}

/// The member list as another control plane reports it: `(who answered, members)`.
pub async fn members_via_other(cx: &NodeOp<'_>) -> Result<(String, Vec<EtcdMember>), FlowError> {
    let mut tried = Vec::new();
    let policy = cx
        .opts
        .policy
        .with_budget(cx.opts.policy.retry_budget.min(Duration::from_secs(2)));
    for n in cx.cluster.other_control_planes(cx.host()) {
        match cx.cluster.mtls(n, policy)?.etcd_members(false).await {
            Ok(m) => return Ok((n.hostname.clone(), m)),
            Err(e) => tried.push(format!("{}: {e}", n.label())),
        }
    }
    Err(FlowError::NoHealthyControlPlane {
        what: "EtcdMemberList".into(),
        tried,
    })
}

/// Members of the definition node `node` (normally one; more after a botched rejoin).
pub fn members_of<'m>(
    cx: &NodeOp<'_>,
    node: &NodeDef,
    members: &'m [EtcdMember],
) -> Vec<&'m EtcdMember> {
    members
        .iter()
        .filter(|m| owner(cx.cluster, m).is_some_and(|n| n.hostname == node.hostname))
        .collect()
}

/// Waits until `cond(members)` holds, reading the list through another control
/// plane; `what` names the wait in progress and timeout messages.
pub async fn wait_members(
    cx: &NodeOp<'_>,
    step: StepId,
    what: &str,
    mut cond: impl FnMut(&[EtcdMember]) -> bool,
) -> Result<String, FlowError> {
    let mut w = Wait::new(
        cx.node.label(),
        format!("{what} (etcd)"),
        cx.opts.etcd_deadline,
    )
    .backoff(Backoff::every(MEMBER_POLL));
    loop {
        match members_via_other(cx).await {
            Ok((from, m)) => {
                if cond(&m) {
                    return Ok(from);
                }
                w.seen(format!(
                    "{} member(s) via {from}: {}",
                    m.len(),
                    m.iter()
                        .map(|x| format!(
                            "{}{}",
                            x.hostname,
                            if x.is_learner { " (learner)" } else { "" }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Err(e) => w.seen(e.to_string()),
        }
        if w.news("members") {
            cx.waiting(step, format!("{what}: {}", w.last()));
        }
        w.pause().await?;
    }
}

/// After a join: the node's member present and promoted, and as many members as
/// control planes in the definition.
pub async fn wait_member_back(cx: &NodeOp<'_>) -> Result<String, FlowError> {
    let want = cx.cluster.def.control_planes().count();
    let node = cx.node.clone();
    wait_members(
        cx,
        StepId::WaitJoin,
        &format!("{} etcd member(s) with {} promoted", want, node.hostname),
        |m| {
            let mine = members_of(cx, &node, m);
            m.len() == want && mine.len() == 1 && mine.iter().all(|x| !x.is_learner)
        },
    )
    .await
}
