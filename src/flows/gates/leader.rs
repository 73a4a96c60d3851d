//! The leader hand-over: before a control plane that leads etcd goes away, it
//! hands leadership to another member (EtcdForfeitLeadership), and the gate
//! waits until every control plane that answers agrees on a different leader.
//! Talos never does this by itself; a leader that just reboots costs the
//! cluster an election timeout of failed writes.

use std::time::Duration;

use crate::engine::{Backoff, Cluster, Emitter, FlowError, NodeDef, StepId, Wait};
use crate::talos::CallPolicy;

use super::quorum::{owner, survey, EtcdView};

/// Most a wait on the leader pauses between two surveys (no watchable resource;
/// the first ones come quicker: a hand-over takes one election round).
const LEADER_POLL: Duration = Duration::from_millis(200);

/// What the hand-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// The node did not lead etcd: nothing to hand over.
    NotLeader,
    /// Leadership moved to this node (hostname).
    Moved { to: String },
    /// No other etcd member (the node is the only one, or etcd has none yet):
    /// nobody to hand over to, and a forfeit would wait for an election that
    /// cannot happen.
    Alone,
}

/// The leader every answering control plane agrees on, as its definition node;
/// None when they disagree, none answers, or the leader is not in the definition.
pub fn leader_of<'a>(cluster: &'a Cluster, view: &EtcdView) -> Option<&'a NodeDef> {
    let mut leaders = view
        .cps
        .iter()
        .filter_map(|p| p.status.as_ref().ok())
        .map(|s| s.leader)
        .filter(|l| *l != 0);
    let first = leaders.next()?;
    if leaders.any(|l| l != first) {
        return None;
    }
    // The member whose own status says member_id == leader, else the member list.
    let by_status = view
        .cps
        .iter()
        .find(|p| p.status.as_ref().is_ok_and(|s| s.member_id == first))
        .map(|p| p.hostname.clone());
    let host = by_status.or_else(|| {
        view.members
            .iter()
            .find(|m| m.id == first)
            .and_then(|m| owner(cluster, m))
            .map(|n| n.hostname.clone())
    })?;
    cluster.def.control_planes().find(|n| n.hostname == host)
}

/// Hands etcd leadership away from `node` when it leads, and waits (up to
/// `deadline`) until the control planes agree on another leader. A forfeit
/// that answers "" while the node still leads (an election in between) is
/// asked again.
pub async fn hand_over(
    cluster: &Cluster,
    policy: CallPolicy,
    em: &Emitter,
    node: &NodeDef,
    deadline: Duration,
) -> Result<HandOver, FlowError> {
    let step = StepId::ForfeitLeader;
    let mut w = Wait::new(
        node.label(),
        "etcd leadership handed to another member",
        deadline,
    )
    .backoff(Backoff::new(Duration::from_millis(25), LEADER_POLL));
    let mut asked = false;
    loop {
        let view = survey(cluster, policy).await;
        let others = view
            .members
            .iter()
            .any(|m| owner(cluster, m).is_none_or(|n| n.hostname != node.hostname));
        if view.members.len() <= 1 && !others {
            return Ok(HandOver::Alone);
        }
        match leader_of(cluster, &view) {
            Some(l) if l.hostname != node.hostname => {
                return Ok(if asked {
                    HandOver::Moved {
                        to: l.hostname.clone(),
                    }
                } else {
                    HandOver::NotLeader
                });
            }
            Some(_) => {
                em.started_with(
                    step,
                    Some(&node.hostname),
                    format!("EtcdForfeitLeadership → {}", node.label()),
                );
                let to = cluster
                    .mtls(node, policy)?
                    .etcd_forfeit_leadership()
                    .await?;
                asked = true;
                w.seen(if to.is_empty() {
                    "forfeit answered \"\" (not leader at that moment)".to_string()
                } else {
                    format!("forfeit named {to}; waiting for every control plane to agree")
                });
            }
            None => w.seen("control planes disagree on the leader, or none has one"),
        }
        w.pause().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::gates::quorum::tests::{cluster3, status_view};

    #[test]
    fn the_leader_is_the_member_every_control_plane_names() {
        let c = cluster3();
        let v = status_view(&[(1, 2), (2, 2), (3, 2)], &[]);
        assert_eq!(leader_of(&c, &v).map(|n| n.hostname.as_str()), Some("cp2"));
        // Disagreement: no leader to act on.
        let v = status_view(&[(1, 1), (2, 2), (3, 2)], &[]);
        assert!(leader_of(&c, &v).is_none());
        // One control plane down: the others still agree.
        let v = status_view(&[(1, 3), (3, 3)], &[2]);
        assert_eq!(leader_of(&c, &v).map(|n| n.hostname.as_str()), Some("cp3"));
        // No leader at all.
        let v = status_view(&[(1, 0), (2, 0), (3, 0)], &[]);
        assert!(leader_of(&c, &v).is_none());
    }
}
