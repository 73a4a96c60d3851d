//! The quorum gate: before a destructive operation, etcd must be healthy (every
//! control plane answers EtcdStatus, all agree on one leader, no alarms), every
//! member must belong to a node of the definition, and the operation must leave
//! a quorum of healthy members. Otherwise the operation is refused with the member
//! table and the reasons, unless forced (the reasons are printed anyway).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::engine::source::url_host;
use crate::engine::{Cluster, Emitter, FlowError, NodeDef, StepId};
use crate::talos::client::{EtcdMember, EtcdStatus};
use crate::talos::CallPolicy;

/// One control plane's answer to EtcdStatus (asked directly, never through a VIP).
#[derive(Debug, Clone, Serialize)]
pub struct CpProbe {
    pub hostname: String,
    pub address: String,
    #[serde(skip)]
    pub status: Result<EtcdStatus, String>,
}

impl CpProbe {
    fn ok(&self) -> Option<&EtcdStatus> {
        self.status.as_ref().ok()
    }
}

/// What the control planes say about etcd right now.
#[derive(Debug, Clone)]
pub struct EtcdView {
    pub cps: Vec<CpProbe>,
    /// The member list (empty when it could not be read, see `members_error`).
    pub members: Vec<EtcdMember>,
    /// The control plane that answered EtcdMemberList.
    pub members_from: Option<String>,
    pub members_error: Option<String>,
}

/// How an operation changes etcd membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOp {
    /// A live control plane leaves (reimage): its member goes away for a while.
    Remove,
    /// A dead or replaced control plane comes back (rejoin): its stale member is
    /// removed; it is not expected to answer.
    Replace,
    /// A worker: etcd membership is unchanged.
    Worker,
    /// A control plane reboots (upgrade, reboot-needing apply): its member stays
    /// in the list but is away for a while, so quorum is counted over every
    /// member with only the others healthy.
    Reboot,
}

/// The guard's verdict.
#[derive(Debug, Clone)]
pub struct GuardReport {
    pub view: EtcdView,
    /// Why the operation is unsafe (empty = safe).
    pub reasons: Vec<String>,
    /// Proceeding although `reasons` is not empty.
    pub forced: bool,
    pub table: String,
}

/// Asks every control plane of the definition for its etcd status, concurrently
/// and directly, then reads the member list from the first one with a leader.
pub async fn survey(cluster: &Cluster, policy: CallPolicy) -> EtcdView {
    // A down node should not hold the guard up for the whole retry budget.
    let policy = policy.with_budget(policy.retry_budget.min(std::time::Duration::from_secs(2)));
    let cps: Vec<&NodeDef> = cluster.def.control_planes().collect();
    let probes = futures::future::join_all(cps.iter().map(|n| async move {
        let status = match cluster.mtls(n, policy) {
            Ok(c) => c.etcd_status().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        CpProbe {
            hostname: n.hostname.clone(),
            address: n.address.clone(),
            status,
        }
    }))
    .await;
    let mut view = EtcdView {
        cps: probes,
        members: Vec::new(),
        members_from: None,
        members_error: None,
    };
    let mut errors = Vec::new();
    let order: Vec<usize> = (0..view.cps.len())
        .filter(|i| view.cps[*i].ok().is_some_and(|s| s.leader != 0))
        .collect();
    for i in order {
        let node = cps[i];
        let r = match cluster.mtls(node, policy) {
            Ok(c) => c.etcd_members(false).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(m) => {
                view.members = m;
                view.members_from = Some(node.hostname.clone());
                view.members_error = None;
                return view;
            }
            Err(e) => errors.push(format!("{}: {e}", node.hostname)),
        }
    }
    view.members_error = Some(if errors.is_empty() {
        "no control plane with an etcd leader answered".into()
    } else {
        errors.join("; ")
    });
    view
}

/// The control plane of the definition a member runs on: by member name (Talos
/// names members after the hostname), else by the peer URL's host.
pub fn owner<'a>(cluster: &'a Cluster, m: &EtcdMember) -> Option<&'a NodeDef> {
    let cps: Vec<&NodeDef> = cluster.def.control_planes().collect();
    cps.iter()
        .find(|n| n.hostname == m.hostname)
        .or_else(|| {
            cps.iter().find(|n| {
                let host = n.host();
                m.peer_urls.iter().any(|u| url_host(u) == host)
            })
        })
        .copied()
}

/// Member IDs whose own control plane answered EtcdStatus with a leader.
fn healthy_ids(view: &EtcdView) -> BTreeSet<u64> {
    view.cps
        .iter()
        .filter_map(CpProbe::ok)
        .filter(|s| s.leader != 0 && s.errors.is_empty())
        .map(|s| s.member_id)
        .collect()
}

/// The leaders the control planes name (more than one: they disagree).
fn leaders(view: &EtcdView) -> BTreeSet<u64> {
    view.cps
        .iter()
        .filter_map(CpProbe::ok)
        .map(|s| s.leader)
        .filter(|l| *l != 0)
        .collect()
}

/// The member table: every member with its node, health and leadership, then
/// control planes that hold no member.
pub fn member_table(cluster: &Cluster, view: &EtcdView) -> String {
    let healthy = healthy_ids(view);
    let leaders = leaders(view);
    let mut rows = vec![[
        "MEMBER ID".to_string(),
        "NAME".into(),
        "PEER URLS".into(),
        "NODE".into(),
        "STATE".into(),
    ]];
    for m in &view.members {
        let node = owner(cluster, m)
            .map(|n| n.label())
            .unwrap_or_else(|| "- (not in definition: STALE)".into());
        let mut state = if healthy.contains(&m.id) {
            "healthy".to_string()
        } else {
            "unreachable".to_string()
        };
        if m.is_learner {
            state.push_str(", learner");
        }
        if leaders.contains(&m.id) {
            state.push_str(", leader");
        }
        rows.push([
            m.id_hex(),
            m.hostname.clone(),
            m.peer_urls.join(","),
            node,
            state,
        ]);
    }
    let mut out = render_rows(&rows);
    if let Some(e) = &view.members_error {
        out.push_str(&format!("member list unavailable: {e}\n"));
    } else if let Some(from) = &view.members_from {
        out.push_str(&format!("(member list from {from})\n"));
    }
    for p in &view.cps {
        let has = view
            .members
            .iter()
            .any(|m| owner(cluster, m).is_some_and(|n| n.hostname == p.hostname));
        if !has && view.members_error.is_none() {
            out.push_str(&format!("{} ({}): no etcd member\n", p.hostname, p.address));
        }
        if let Err(e) = &p.status {
            out.push_str(&format!(
                "{} ({}): EtcdStatus failed: {e}\n",
                p.hostname, p.address
            ));
        }
    }
    out
}

pub(crate) fn render_rows<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Why `op` on `target` is unsafe now (empty = safe).
pub fn evaluate(cluster: &Cluster, view: &EtcdView, target: &NodeDef, op: GuardOp) -> Vec<String> {
    let mut reasons = Vec::new();
    let is_target = |hostname: &str| hostname == target.hostname;
    // Real state wins over the journal: a live control plane whose member is
    // already gone (a run killed after LeaveEtcd reached the node, before it was
    // journaled) no longer serves etcd, as a replaced one would not.
    let already_left = view.members_error.is_none()
        && !view
            .members
            .iter()
            .any(|m| owner(cluster, m).is_some_and(|n| is_target(&n.hostname)));
    let op = if op == GuardOp::Remove && already_left {
        GuardOp::Replace
    } else {
        op
    };
    // 1. Every control plane answers (the target too when it must leave gracefully).
    for p in &view.cps {
        if op == GuardOp::Replace && is_target(&p.hostname) {
            continue;
        }
        match &p.status {
            Err(e) => reasons.push(format!(
                "{} ({}) does not answer EtcdStatus: {e}",
                p.hostname, p.address
            )),
            Ok(s) if s.leader == 0 => reasons.push(format!(
                "{} ({}): etcd has no leader",
                p.hostname, p.address
            )),
            Ok(s) if !s.errors.is_empty() => reasons.push(format!(
                "{} ({}): etcd alarm/errors: {}",
                p.hostname,
                p.address,
                s.errors.join("; ")
            )),
            Ok(_) => {}
        }
    }
    // 2. One leader.
    let leaders = leaders(view);
    if leaders.len() > 1 {
        reasons.push(format!(
            "control planes disagree on the etcd leader ({})",
            leaders
                .iter()
                .map(|l| format!("{l:016x}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // 3. Members known and all matched to the definition.
    if let Some(e) = &view.members_error {
        reasons.push(format!("etcd member list unavailable: {e}"));
        return reasons;
    }
    for m in &view.members {
        match owner(cluster, m) {
            None => reasons.push(format!(
                "stale member {} ({}, peer {}) belongs to no node of the definition; remove it by ID first",
                m.id_hex(),
                m.hostname,
                m.peer_urls.join(",")
            )),
            Some(_) if m.is_learner => reasons.push(format!(
                "member {} ({}) is still a learner (not promoted)",
                m.id_hex(),
                m.hostname
            )),
            Some(_) => {}
        }
    }
    if op == GuardOp::Worker {
        return reasons;
    }
    // 4. Quorum after the operation: the target's member(s) gone (Remove,
    // Replace) or away (Reboot: still counted in the member total).
    let healthy = healthy_ids(view);
    let after: Vec<&EtcdMember> = view
        .members
        .iter()
        .filter(|m| owner(cluster, m).is_none_or(|n| !is_target(&n.hostname)))
        .collect();
    let healthy_after = after.iter().filter(|m| healthy.contains(&m.id)).count();
    if op == GuardOp::Reboot {
        let total = view.members.len();
        let need = total / 2 + 1;
        if after.is_empty() {
            reasons.push(format!(
                "{} holds the only etcd member: while it reboots etcd stops accepting writes",
                target.hostname
            ));
        } else if healthy_after < need {
            reasons.push(format!(
                "while it reboots, etcd keeps {healthy_after} healthy of {total} member(s); quorum needs {need}: the cluster would stop accepting writes"
            ));
        }
        return reasons;
    }
    let need = after.len() / 2 + 1;
    if after.is_empty() {
        reasons.push(format!(
            "{} holds the only etcd member: taking it out destroys etcd; back it up (`etcd backup`) and use `recover --snapshot`",
            target.hostname
        ));
    } else if healthy_after < need {
        let verb = match op {
            GuardOp::Remove => "with it out",
            _ => "without it",
        };
        reasons.push(format!(
            "{verb}, etcd keeps {healthy_after} healthy of {} member(s); quorum needs {need}: the cluster would stop accepting writes",
            after.len()
        ));
    }
    reasons
}

/// Runs the guard for `op` on `target`: refuses with the table and reasons, or
/// returns the report (forced or clean). The table is reported either way.
pub async fn check(
    cluster: &Cluster,
    policy: CallPolicy,
    force: bool,
    em: &Emitter,
    op_name: &'static str,
    target: &NodeDef,
    op: GuardOp,
) -> Result<GuardReport, FlowError> {
    let view = survey(cluster, policy).await;
    let table = member_table(cluster, &view);
    let reasons = evaluate(cluster, &view, target, op);
    em.progress(
        StepId::Guard,
        Some(&target.hostname),
        format!("etcd members:\n{}", table.trim_end()),
    );
    if reasons.is_empty() {
        return Ok(GuardReport {
            view,
            reasons,
            forced: false,
            table,
        });
    }
    if op == GuardOp::Worker || force {
        em.warning(
            StepId::Guard,
            Some(&target.hostname),
            format!(
                "proceeding despite{}: {}",
                if force {
                    " (--force)"
                } else {
                    " (worker: etcd membership unchanged)"
                },
                reasons.join("; ")
            ),
        );
        return Ok(GuardReport {
            view,
            reasons,
            forced: true,
            table,
        });
    }
    Err(FlowError::Guard {
        op: op_name,
        node: target.label(),
        reasons,
        table,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::Definition;

    /// A definition of `n` control planes cp1..cpN on 127.0.0.1N.
    pub(crate) fn cluster_of(n: u64) -> Cluster {
        Cluster::unrendered(Definition {
            cluster: "t".into(),
            endpoint: "https://127.0.0.10:6443".into(),
            nodes: (1..=n)
                .map(|i| NodeDef {
                    hostname: format!("cp{i}"),
                    address: format!("127.0.0.{}", 10 + i),
                    control_plane: true,
                    install_disk: None,
                    links: vec![],
                })
                .collect(),
        })
    }

    pub(crate) fn cluster3() -> Cluster {
        cluster_of(3)
    }

    fn member(i: u64) -> EtcdMember {
        EtcdMember {
            id: i,
            hostname: format!("cp{i}"),
            peer_urls: vec![format!("https://127.0.0.{}:2380", 10 + i)],
            client_urls: vec![],
            is_learner: false,
        }
    }

    /// A view where control plane `cpI` answers `(I, leader)`, the ones in
    /// `down` fail EtcdStatus; every answering or down node holds a member.
    pub(crate) fn status_view(up: &[(u64, u64)], down: &[u64]) -> EtcdView {
        let mut all: Vec<u64> = up
            .iter()
            .map(|(i, _)| *i)
            .chain(down.iter().copied())
            .collect();
        all.sort();
        EtcdView {
            cps: all
                .iter()
                .map(|i| CpProbe {
                    hostname: format!("cp{i}"),
                    address: format!("127.0.0.{}", 10 + i),
                    status: match up.iter().find(|(m, _)| m == i) {
                        Some((m, l)) => Ok(EtcdStatus {
                            member_id: *m,
                            leader: *l,
                            db_size: 0,
                            raft_index: 0,
                            raft_term: 0,
                            errors: vec![],
                            is_learner: false,
                            protocol_version: String::new(),
                        }),
                        None => Err("connection refused".into()),
                    },
                })
                .collect(),
            members: all.iter().map(|i| member(*i)).collect(),
            members_from: Some("cp1".into()),
            members_error: None,
        }
    }

    fn reboot_reasons(c: &Cluster, v: &EtcdView, target: &str) -> Vec<String> {
        let node = c.node(target).unwrap().clone();
        evaluate(c, v, &node, GuardOp::Reboot)
    }

    #[test]
    fn reboot_keeps_the_member_in_the_count() {
        // 1 member: rebooting it stops etcd.
        let c = cluster_of(1);
        let r = reboot_reasons(&c, &status_view(&[(1, 1)], &[]), "cp1");
        assert!(r.iter().any(|x| x.contains("only etcd member")), "{r:?}");
        // 2 members: 1 healthy of 2 while away; quorum needs 2 (Talos 1.12 refuses too).
        let c = cluster_of(2);
        let r = reboot_reasons(&c, &status_view(&[(1, 1), (2, 1)], &[]), "cp1");
        assert!(r.iter().any(|x| x.contains("1 healthy of 2")), "{r:?}");
        // Remove on 2 members is allowed (1 of 1 after), Reboot is not.
        let node = c.node("cp2").unwrap().clone();
        assert!(evaluate(
            &c,
            &status_view(&[(1, 1), (2, 1)], &[]),
            &node,
            GuardOp::Remove
        )
        .is_empty());
        // 3 healthy members: 2 of 3 while one reboots.
        let c = cluster_of(3);
        assert!(reboot_reasons(&c, &status_view(&[(1, 1), (2, 1), (3, 1)], &[]), "cp2").is_empty());
        // 3 members, one already down: rebooting another leaves 1 of 3.
        let r = reboot_reasons(&c, &status_view(&[(1, 1), (2, 1)], &[3]), "cp2");
        assert!(
            r.iter()
                .any(|x| x.contains("cp3") && x.contains("does not answer")),
            "{r:?}"
        );
        assert!(r.iter().any(|x| x.contains("1 healthy of 3")), "{r:?}");
        // 5 members: one down, a second rebooting leaves 3 of 5 (quorum 3).
        let c = cluster_of(5);
        let v = status_view(&[(1, 1), (2, 1), (3, 1), (4, 1)], &[5]);
        let r = reboot_reasons(&c, &v, "cp2");
        assert!(!r.iter().any(|x| x.contains("quorum needs")), "{r:?}");
        // ... but a third would not.
        let v = status_view(&[(1, 1), (2, 1), (3, 1)], &[4, 5]);
        let r = reboot_reasons(&c, &v, "cp2");
        assert!(
            r.iter()
                .any(|x| x.contains("2 healthy of 5") && x.contains("needs 3")),
            "{r:?}"
        );
    }
}
