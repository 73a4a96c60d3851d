//! `node rejoin NAME`: bring back a node that died, or whose disk was replaced
//! and now boots into maintenance — or add a node new to the definition.
//!
//! guard (the node is not expected to answer) → snapshot (control plane) →
//! remove its stale etcd member(s) by ID through a healthy control plane and
//! confirm → delete the old Node object → apply the config (maintenance) → wait
//! for running with etcd joined and the member count back → Node registered/Ready
//! → verify. Journaled and resumable like reimage.

use std::time::Instant;

use super::guard::{self, GuardOp};
use super::reimage::{apply_and_join, auto_snapshot, kube_client, verify, Ctx};
use super::steps::{self, kube_err, Mode};
use super::{Cluster, Day2Error, Day2Options, PlanStep};
use crate::kube::nodes;

const OP: &str = "rejoin";

/// The steps of a rejoin, in order (each journaled, as `plan node rejoin` lists them).
pub const STEPS: [&str; 9] = [
    "guard",
    "snapshot",
    "remove_member",
    "delete_node",
    "apply",
    "wait_join",
    "node_ready",
    "uncordon",
    "verify",
];

/// What a rejoin did.
#[derive(Debug, Clone)]
pub struct RejoinReport {
    pub node: String,
    pub control_plane: bool,
    /// Stale members removed (hex ID, peer URLs).
    pub removed: Vec<(String, String)>,
    pub backup: Option<String>,
    pub forced: Vec<String>,
    pub steps: Vec<(&'static str, String)>,
    pub resumed: bool,
    pub elapsed: std::time::Duration,
}

/// Runs (or resumes) the rejoin of `name`.
pub async fn rejoin(
    cluster: &Cluster,
    name: &str,
    opts: &Day2Options,
) -> Result<RejoinReport, Day2Error> {
    let t0 = Instant::now();
    let (mut ctx, resumed) = Ctx::open(cluster, name, opts, OP)?;
    let node = ctx.node.clone();

    // A node that runs its config with our CA is not dead: reimage is the verb
    // for it. After an earlier run got past the member removal, configured means
    // the apply happened.
    let mode = steps::probe(cluster, &node, opts).await;
    if mode == Mode::Ours && !ctx.j.done("remove_member") {
        return Err(Day2Error::NodeState {
            node: node.label(),
            detail: "runs its config with this cluster's CA: it is not dead or wiped".into(),
            next: format!(
                "use `node reimage {}` to wipe and rejoin a live node",
                node.hostname
            ),
        });
    }
    if let Mode::Foreign = mode {
        return Err(Day2Error::NodeState {
            node: node.label(),
            detail: "serves a certificate from another cluster's CA".into(),
            next: "reset it to maintenance (or wipe its disk) first, or check the address".into(),
        });
    }

    let gop = if node.control_plane {
        GuardOp::Replace
    } else {
        GuardOp::Worker
    };
    let report = guard::check(cluster, opts, OP, &node, gop).await?;
    if report.forced && gop != GuardOp::Worker {
        ctx.j.forced = report.reasons.clone();
    }
    ctx.done(
        "guard",
        if report.reasons.is_empty() {
            "etcd healthy without the node, every member matched, quorum kept".to_string()
        } else {
            format!("proceeding past: {}", report.reasons.join("; "))
        },
    )?;

    auto_snapshot(&mut ctx).await?;

    // Stale members: those of this node (by name or peer address), removed by ID
    // through another control plane, then confirmed gone.
    let mut removed = ctx.j.removed.clone();
    if !node.control_plane {
        ctx.skipped("remove_member", "worker")?;
    } else if ctx.j.done("remove_member") {
        ctx.skipped("remove_member", "done earlier")?;
    } else {
        let (from, members) = steps::members_via_other(cluster, &node.hostname, opts).await?;
        let stale: Vec<(u64, String)> = steps::members_of(cluster, &node, &members)
            .iter()
            .map(|m| (m.id, m.peer_urls.join(",")))
            .collect();
        if stale.is_empty() {
            ctx.skipped(
                "remove_member",
                format!("no member of {} (list from {from})", node.hostname),
            )?;
        } else {
            let via = steps::other_cps(cluster, &node.hostname);
            for (id, peers) in &stale {
                ctx.started(
                    "remove_member",
                    format!("EtcdRemoveMemberByID {id:016x} ({peers}) → {from}"),
                );
                let Some(target) = via
                    .iter()
                    .find(|n| n.hostname == from)
                    .or(via.first())
                    .copied()
                else {
                    return Err(Day2Error::NoHealthyControlPlane {
                        what: "EtcdRemoveMemberByID".into(),
                        tried: vec![],
                    });
                };
                match cluster
                    .mtls(target, opts.policy)?
                    .etcd_remove_member(*id)
                    .await
                {
                    Ok(()) => {}
                    // Already gone (a lost reply on an earlier attempt).
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                removed.push((format!("{id:016x}"), peers.clone()));
            }
            ctx.j.removed = removed.clone();
            let ids: Vec<u64> = stale.iter().map(|(i, _)| *i).collect();
            let confirmed = steps::wait_members(
                cluster,
                &node,
                opts,
                OP,
                "remove_member",
                "stale member gone",
                |m| !m.iter().any(|x| ids.contains(&x.id)),
            )
            .await?;
            ctx.done(
                "remove_member",
                format!(
                    "removed {} via {from}; confirmed by EtcdMemberList → {confirmed}",
                    removed
                        .iter()
                        .map(|(i, p)| format!("{i} ({p})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )?;
        }
    }

    let kube = kube_client(cluster, opts, OP, &node).await?;
    match &kube {
        None => ctx.skipped("delete_node", "no Kubernetes access")?,
        Some(_) if ctx.j.done("delete_node") || ctx.j.done("apply") => {
            ctx.skipped("delete_node", "done earlier")?
        }
        Some(k) => {
            let st = nodes::node_state(k, &node.hostname)
                .await
                .map_err(|e| kube_err(&node, e))?;
            // A dead node's Node is NotReady; whether it should come back Ready
            // follows the other nodes (Ready once the CNI runs).
            if ctx.j.was_ready.is_none() {
                let others_ready = cluster_has_ready_nodes(k).await;
                ctx.j.was_ready = Some(st.ready || others_ready);
            }
            if nodes::delete_node(k, &node.hostname)
                .await
                .map_err(|e| kube_err(&node, e))?
            {
                ctx.done("delete_node", format!("old Node {} deleted", node.hostname))?;
            } else {
                ctx.skipped("delete_node", "no Node object (new node)")?;
            }
        }
    }

    apply_and_join(&mut ctx, kube.as_ref()).await?;
    verify(&mut ctx).await?;
    Ok(RejoinReport {
        node: node.hostname.clone(),
        control_plane: node.control_plane,
        removed: ctx.j.removed.clone(),
        backup: ctx.j.backup.clone(),
        forced: ctx.j.forced.clone(),
        steps: ctx.outcomes,
        resumed,
        elapsed: t0.elapsed(),
    })
}

async fn cluster_has_ready_nodes(k: &kube::Client) -> bool {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(k.clone());
    api.list(&Default::default()).await.is_ok_and(|l| {
        l.items.iter().any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
}

/// `plan node rejoin NAME`: the steps and the node receiving each call.
pub async fn plan(
    cluster: &Cluster,
    name: &str,
    opts: &Day2Options,
) -> Result<Vec<PlanStep>, Day2Error> {
    let basis = steps::PlanBasis::new(cluster, name, opts, OP)?;
    let (node, other, cps) = (&basis.node, &basis.other, &basis.cps);
    let done = |s: &str| basis.done(s);
    let k = |s: String| basis.kube(&s);
    let cp = node.control_plane;
    Ok(vec![
        PlanStep {
            step: "guard",
            action: format!(
                "TLS handshake → {} (must be in maintenance or down); EtcdStatus → {}; quorum must hold without {}",
                node.label(),
                cps.join(", "),
                node.hostname
            ),
            done: false,
        },
        PlanStep {
            step: "snapshot",
            action: if cp && opts.auto_snapshot {
                format!("EtcdSnapshot → most up-to-date healthy control plane → {}/backups/", opts.state_dir.display())
            } else {
                "none (worker, or turned off)".into()
            },
            done: done("snapshot"),
        },
        PlanStep {
            step: "remove_member",
            action: if cp {
                format!("EtcdMemberList → {other}; EtcdRemoveMemberByID <stale id of {}> → {other}; confirm with EtcdMemberList → {other}", node.hostname)
            } else {
                "none (worker)".into()
            },
            done: done("remove_member"),
        },
        PlanStep { step: "delete_node", action: k(format!("DELETE Node {}", node.hostname)), done: done("delete_node") },
        PlanStep {
            step: "apply",
            action: format!("ApplyConfiguration (insecure, maintenance) → {}", node.label()),
            done: done("apply"),
        },
        PlanStep {
            step: "wait_join",
            action: if cp {
                format!("watch MachineStatus → {} until running+ready; EtcdMemberList → {other} until {} members", node.label(), cps.len())
            } else {
                format!("watch MachineStatus → {} until running+ready", node.label())
            },
            done: done("wait_join"),
        },
        PlanStep { step: "node_ready", action: k(format!("watch Node {} until registered/Ready", node.hostname)), done: done("node_ready") },
        PlanStep { step: "uncordon", action: k(format!("PATCH Node {} spec.unschedulable=null", node.hostname)), done: done("uncordon") },
        PlanStep {
            step: "verify",
            action: format!("EtcdStatus → {}; {} members, one leader", cps.join(", "), cps.len()),
            done: false,
        },
    ])
}
