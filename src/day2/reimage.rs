//! `node reimage NAME`: wipe a live node and bring it back with quorum kept.
//!
//! guard → snapshot (control plane) → cordon → drain → leave etcd and confirm the
//! member is gone through another control plane → Reset (STATE + EPHEMERAL, or
//! the whole disk) into maintenance → delete the Node → apply the config
//! (maintenance, insecure) → wait for running with etcd joined and the member
//! count back → Node registered/Ready → uncordon → verify.
//!
//! Every step is journaled and reads the real state first, so a run killed at any
//! point and started again converges.

use std::time::Instant;

use super::backup::{default_backup_path, take_backup};
use super::guard::{self, GuardOp};
use super::journal::OpJournal;
use super::steps::{self, kube_err, Mode};
use super::{emit, Cluster, Day2Error, Day2Options, EventKind, PlanStep};
use crate::kube::nodes;
use crate::orchestrator::source::NodeDef;
use crate::talos::ResetOptions;

const OP: &str = "reimage";

/// The steps of a reimage, in order.
pub const STEPS: [&str; 12] = [
    "guard",
    "snapshot",
    "cordon",
    "drain",
    "leave_etcd",
    "reset",
    "delete_node",
    "apply",
    "wait_join",
    "node_ready",
    "uncordon",
    "verify",
];

/// What a reimage did.
#[derive(Debug, Clone)]
pub struct ReimageReport {
    pub node: String,
    pub control_plane: bool,
    /// The automatic snapshot taken before a control-plane reimage.
    pub backup: Option<String>,
    /// Guard reasons overridden with `--force`.
    pub forced: Vec<String>,
    /// Step → "done" / "skipped: why".
    pub steps: Vec<(&'static str, String)>,
    /// Whether this run resumed an earlier, interrupted one.
    pub resumed: bool,
    pub elapsed: std::time::Duration,
}

pub(crate) struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub opts: &'a Day2Options,
    pub node: NodeDef,
    pub j: OpJournal,
    pub op: &'static str,
    pub outcomes: Vec<(&'static str, String)>,
}

impl<'a> Ctx<'a> {
    /// Opens the node's journal for `op` and says so when it resumes an
    /// interrupted run; returns the context and whether it resumed.
    pub fn open(
        cluster: &'a Cluster,
        name: &str,
        opts: &'a Day2Options,
        op: &'static str,
    ) -> Result<(Ctx<'a>, bool), Day2Error> {
        let node = cluster.node(name)?.clone();
        let j = OpJournal::open(&opts.state_dir, &cluster.def.cluster, op, &node.hostname)?;
        let resumed = j.resumed();
        if resumed {
            emit(
                opts,
                op,
                &node.hostname,
                "resume",
                EventKind::Info,
                format!(
                    "resuming the {op} started earlier (done: {})",
                    j.steps.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let ctx = Ctx {
            cluster,
            opts,
            node,
            j,
            op,
            outcomes: Vec::new(),
        };
        Ok((ctx, resumed))
    }

    /// Journal first, then the event: a kill right after the event keeps the step.
    pub fn done(&mut self, step: &'static str, msg: impl Into<String>) -> Result<(), Day2Error> {
        let msg = msg.into();
        self.j.mark(step)?;
        emit(
            self.opts,
            self.op,
            &self.node.hostname,
            step,
            EventKind::Done,
            msg.clone(),
        );
        self.outcomes.push((step, msg));
        Ok(())
    }

    pub fn skipped(&mut self, step: &'static str, why: impl Into<String>) -> Result<(), Day2Error> {
        let why = why.into();
        self.j.mark(step)?;
        emit(
            self.opts,
            self.op,
            &self.node.hostname,
            step,
            EventKind::Skipped,
            why.clone(),
        );
        self.outcomes.push((step, format!("skipped: {why}")));
        Ok(())
    }

    pub fn started(&self, step: &'static str, msg: impl Into<String>) {
        emit(
            self.opts,
            self.op,
            &self.node.hostname,
            step,
            EventKind::Started,
            msg,
        );
    }
}

/// The Kubernetes client, or None (with a warning) when the Kubernetes steps
/// cannot run: `--skip-kubernetes`, or no kubeconfig in the state directory.
pub(crate) async fn kube_client(
    cluster: &Cluster,
    opts: &Day2Options,
    op: &'static str,
    node: &NodeDef,
) -> Result<Option<kube::Client>, Day2Error> {
    if opts.skip_kubernetes {
        emit(opts, op, &node.hostname, "kubernetes", EventKind::Warning,
            "Kubernetes steps skipped (--skip-kubernetes): no cordon/drain, the old Node object stays");
        return Ok(None);
    }
    match cluster.kube().await {
        None => {
            emit(opts, op, &node.hostname, "kubernetes", EventKind::Warning, format!(
                "no kubeconfig at {}: Kubernetes steps skipped (run `up` or `kubeconfig` first to get one)",
                opts.state_dir.join("kubeconfig").display()
            ));
            Ok(None)
        }
        Some(Ok(c)) => Ok(Some(c)),
        Some(Err(e)) => Err(kube_err(node, e)),
    }
}

/// Before anything is touched: the Kubernetes steps after the reset (delete
/// the Node, watch it come back) need an API that is not on the wiped node.
fn refuse_api_on_node(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
) -> Result<(), Day2Error> {
    if opts.skip_kubernetes {
        return Ok(());
    }
    let node_host = node
        .address
        .rsplit_once(':')
        .map_or(node.address.as_str(), |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') {
                h
            } else {
                node.address.as_str()
            }
        });
    match cluster.api_server_host() {
        Some(host) if host == node_host => Err(Day2Error::ApiOnNode {
            node: node.label(),
            server: host,
        }),
        _ => Ok(()),
    }
}

/// The automatic snapshot before a control-plane operation.
pub(crate) async fn auto_snapshot(ctx: &mut Ctx<'_>) -> Result<(), Day2Error> {
    if !ctx.node.control_plane {
        return ctx.skipped("snapshot", "worker: etcd is not touched");
    }
    if !ctx.opts.auto_snapshot {
        return ctx.skipped("snapshot", "automatic snapshot turned off");
    }
    if let Some(b) = ctx.j.backup.clone().filter(|_| ctx.j.done("snapshot")) {
        return ctx.skipped("snapshot", format!("taken earlier: {b}"));
    }
    let path = default_backup_path(&ctx.opts.state_dir, &ctx.cluster.def.cluster);
    ctx.started(
        "snapshot",
        format!(
            "EtcdSnapshot → most up-to-date healthy control plane → {}",
            path.display()
        ),
    );
    let meta = take_backup(ctx.cluster, ctx.opts.policy, &path).await?;
    ctx.j.backup = Some(path.display().to_string());
    ctx.done(
        "snapshot",
        format!(
            "{} ({} bytes, sha256 {}, from {})",
            path.display(),
            meta.size,
            &meta.sha256[..12],
            meta.node
        ),
    )
}

/// Runs (or resumes) the reimage of `name`.
pub async fn reimage(
    cluster: &Cluster,
    name: &str,
    opts: &Day2Options,
) -> Result<ReimageReport, Day2Error> {
    let t0 = Instant::now();
    refuse_api_on_node(cluster, cluster.node(name)?, opts)?;
    let (mut ctx, resumed) = Ctx::open(cluster, name, opts, OP)?;
    let node = ctx.node.clone();
    let cp = node.control_plane;

    // Guard. Once the member left, the node is expected not to answer etcd.
    let gop = match (cp, ctx.j.done("leave_etcd")) {
        (false, _) => GuardOp::Worker,
        (true, false) => GuardOp::Remove,
        (true, true) => GuardOp::Replace,
    };
    let report = guard::check(cluster, opts, OP, &node, gop).await?;
    if report.forced && gop != GuardOp::Worker {
        ctx.j.forced = report.reasons.clone();
    }
    ctx.done(
        "guard",
        if report.reasons.is_empty() {
            "etcd healthy, every member matched, quorum kept".to_string()
        } else {
            format!("forced past: {}", report.reasons.join("; "))
        },
    )?;

    auto_snapshot(&mut ctx).await?;

    let kube = kube_client(cluster, opts, OP, &node).await?;
    let mode = steps::probe(cluster, &node, opts).await;
    if let Mode::Foreign = mode {
        return Err(Day2Error::NodeState {
            node: node.label(),
            detail: "serves a certificate from another cluster's CA".into(),
            next: "check the address in the definition; this node belongs to another cluster"
                .into(),
        });
    }
    let wiped = ctx.j.done("reset") || mode == Mode::Maintenance;

    // Cordon + drain, while the node still runs its workloads.
    match (&kube, wiped) {
        (None, _) => {
            ctx.skipped("cordon", "no Kubernetes access")?;
            ctx.skipped("drain", "no Kubernetes access")?;
        }
        (Some(_), true) => {
            ctx.skipped("cordon", "node already wiped")?;
            ctx.skipped("drain", "node already wiped")?;
        }
        (Some(k), false) => {
            let st = nodes::node_state(k, &node.hostname)
                .await
                .map_err(|e| kube_err(&node, e))?;
            if ctx.j.was_ready.is_none() {
                ctx.j.was_ready = Some(st.ready);
            }
            if st.unschedulable {
                ctx.skipped("cordon", "already unschedulable")?;
            } else if nodes::set_unschedulable(k, &node.hostname, true)
                .await
                .map_err(|e| kube_err(&node, e))?
            {
                ctx.done("cordon", format!("Node {} unschedulable", node.hostname))?;
            } else {
                ctx.skipped("cordon", "no Node object")?;
            }
            ctx.started(
                "drain",
                format!("evicting pods from {} (Eviction API)", node.hostname),
            );
            let d = nodes::drain(k, &node.hostname, opts.kube_deadline)
                .await
                .map_err(|e| kube_err(&node, e))?;
            ctx.done(
                "drain",
                format!(
                    "{} pod(s) evicted, {} DaemonSet/mirror pod(s) left",
                    d.evicted.len(),
                    d.ignored
                ),
            )?;
        }
    }

    // Leave etcd (control planes), confirmed through another control plane.
    if !cp {
        ctx.skipped("leave_etcd", "worker")?;
    } else if ctx.j.done("leave_etcd") || wiped {
        ctx.skipped("leave_etcd", "member already gone")?;
    } else {
        let (from, members) = steps::members_via_other(cluster, &node.hostname, opts).await?;
        let mine = steps::members_of(cluster, &node, &members);
        if mine.is_empty() {
            ctx.skipped(
                "leave_etcd",
                format!("no member of {} in the list from {from}", node.hostname),
            )?;
        } else {
            let ids: Vec<u64> = mine.iter().map(|m| m.id).collect();
            ctx.started("leave_etcd", format!("EtcdLeaveCluster → {}", node.label()));
            cluster
                .mtls(&node, opts.policy)?
                .etcd_leave_cluster()
                .await?;
            let from =
                steps::wait_members(cluster, &node, opts, OP, "leave_etcd", "member gone", |m| {
                    !m.iter().any(|x| ids.contains(&x.id))
                })
                .await?;
            ctx.done(
                "leave_etcd",
                format!(
                    "member {} left; confirmed by EtcdMemberList → {from}",
                    ids.iter()
                        .map(|i| format!("{i:016x}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )?;
        }
    }

    // Reset into maintenance, verified by handshake.
    if ctx.j.done("reset") {
        ctx.skipped("reset", "done earlier")?;
    } else if mode == Mode::Maintenance {
        ctx.skipped("reset", "node already in maintenance mode")?;
    } else {
        if !ctx.j.done("reset_requested") {
            let opts_reset = ResetOptions {
                graceful: false,
                reboot: true,
                wipe_labels: if opts.wipe_all {
                    vec![]
                } else {
                    vec!["STATE".into(), "EPHEMERAL".into()]
                },
            };
            ctx.started(
                "reset",
                format!(
                    "Reset(graceful=false, reboot=true, wipe {}) → {}",
                    if opts.wipe_all {
                        "whole system disk"
                    } else {
                        "STATE,EPHEMERAL"
                    },
                    node.label()
                ),
            );
            cluster.mtls(&node, opts.policy)?.reset(&opts_reset).await?;
            ctx.j.mark("reset_requested")?;
        }
        steps::wait_maintenance(cluster, &node, opts, OP).await?;
        ctx.done(
            "reset",
            format!("{} answers in maintenance mode", node.label()),
        )?;
    }

    // The old Node object goes before the node registers again.
    match &kube {
        None => ctx.skipped("delete_node", "no Kubernetes access")?,
        Some(_) if ctx.j.done("apply") || ctx.j.done("delete_node") => {
            ctx.skipped("delete_node", "done earlier")?
        }
        Some(k) => {
            if nodes::delete_node(k, &node.hostname)
                .await
                .map_err(|e| kube_err(&node, e))?
            {
                ctx.done("delete_node", format!("Node {} deleted", node.hostname))?;
            } else {
                ctx.skipped("delete_node", "no Node object")?;
            }
        }
    }

    apply_and_join(&mut ctx, kube.as_ref()).await?;
    finish(ctx, kube.as_ref(), resumed, t0).await
}

/// Apply (maintenance) → running with etcd joined → Node → uncordon → verify.
/// Shared with rejoin.
pub(crate) async fn apply_and_join(
    ctx: &mut Ctx<'_>,
    kube: Option<&kube::Client>,
) -> Result<(), Day2Error> {
    let (cluster, opts, node) = (ctx.cluster, ctx.opts, ctx.node.clone());
    if ctx.j.done("apply") {
        ctx.skipped("apply", "done earlier")?;
    } else {
        match steps::wait_reachable(cluster, &node, opts, ctx.op, "apply").await? {
            Mode::Maintenance => {
                ctx.started(
                    "apply",
                    format!(
                        "ApplyConfiguration (insecure, maintenance) → {}",
                        node.label()
                    ),
                );
                steps::apply_insecure(cluster, &node, opts).await?;
                ctx.done(
                    "apply",
                    "config applied; the node installs and boots into it",
                )?;
            }
            // Wiped earlier (journaled), configured with our CA now: only an
            // apply can have done that.
            Mode::Ours => ctx.skipped("apply", "node already runs its config")?,
            Mode::Foreign => {
                return Err(Day2Error::NodeState {
                    node: node.label(),
                    detail: "serves a certificate from another cluster's CA".into(),
                    next: "check the address in the definition".into(),
                })
            }
            Mode::Unreachable(_) => unreachable!("wait_reachable returns a reachable mode"),
        }
    }
    ctx.started(
        "wait_join",
        format!("watch MachineStatus → {}", node.label()),
    );
    steps::wait_running(cluster, &node, opts, ctx.op).await?;
    if node.control_plane {
        let from = steps::wait_member_back(cluster, &node, opts, ctx.op).await?;
        ctx.done(
            "wait_join",
            format!(
                "running; {} etcd members incl. {} (EtcdMemberList → {from})",
                cluster.def.control_planes().count(),
                node.hostname
            ),
        )?;
    } else {
        ctx.done("wait_join", "running and ready")?;
    }
    match kube {
        None => {
            ctx.skipped("node_ready", "no Kubernetes access")?;
            ctx.skipped("uncordon", "no Kubernetes access")?;
        }
        Some(k) => {
            // Ready only if it was before (a cluster without a CNI yet has no Ready nodes).
            let ready = ctx.j.was_ready.unwrap_or(false);
            ctx.started(
                "node_ready",
                format!(
                    "watch Node {} until {}",
                    node.hostname,
                    if ready { "Ready" } else { "registered" }
                ),
            );
            nodes::wait_node(k, &node.hostname, ready, opts.kube_deadline)
                .await
                .map_err(|e| kube_err(&node, e))?;
            ctx.done(
                "node_ready",
                format!(
                    "Node {} {}",
                    node.hostname,
                    if ready { "Ready" } else { "registered" }
                ),
            )?;
            if nodes::set_unschedulable(k, &node.hostname, false)
                .await
                .map_err(|e| kube_err(&node, e))?
            {
                ctx.done("uncordon", format!("Node {} schedulable", node.hostname))?;
            } else {
                ctx.skipped("uncordon", "no Node object")?;
            }
        }
    }
    Ok(())
}

/// Verify with a fresh etcd survey; closes the journal.
pub(crate) async fn verify(ctx: &mut Ctx<'_>) -> Result<(), Day2Error> {
    let view = guard::survey(ctx.cluster, ctx.opts.policy).await;
    let want = ctx.cluster.def.control_planes().count();
    let reasons = guard::evaluate(ctx.cluster, &view, &ctx.node, GuardOp::Worker);
    if view.members.len() != want || !reasons.is_empty() {
        let mut why = reasons;
        if view.members.len() != want {
            why.push(format!(
                "{} etcd member(s), {want} control plane(s) in the definition",
                view.members.len()
            ));
        }
        return Err(Day2Error::Guard {
            op: ctx.op,
            node: ctx.node.label(),
            reasons: why,
            table: guard::member_table(ctx.cluster, &view),
        });
    }
    ctx.done(
        "verify",
        format!("{want} etcd member(s), all healthy, one leader"),
    )?;
    ctx.j.complete()
}

async fn finish(
    mut ctx: Ctx<'_>,
    _kube: Option<&kube::Client>,
    resumed: bool,
    t0: Instant,
) -> Result<ReimageReport, Day2Error> {
    verify(&mut ctx).await?;
    Ok(ReimageReport {
        node: ctx.node.hostname.clone(),
        control_plane: ctx.node.control_plane,
        backup: ctx.j.backup.clone(),
        forced: ctx.j.forced.clone(),
        steps: ctx.outcomes,
        resumed,
        elapsed: t0.elapsed(),
    })
}

/// `plan node reimage NAME`: the steps, each naming the node that receives each call.
pub async fn plan(
    cluster: &Cluster,
    name: &str,
    opts: &Day2Options,
) -> Result<Vec<PlanStep>, Day2Error> {
    let basis = steps::PlanBasis::new(cluster, name, opts, OP)?;
    let (node, other, cps) = (&basis.node, &basis.other, &basis.cps);
    let done = |s: &str| basis.done(s);
    let k = |s: &str| basis.kube(s);
    let cp = node.control_plane;
    let mut out = vec![PlanStep {
        step: "guard",
        action: format!(
            "EtcdStatus → each control plane directly: {}; EtcdMemberList → first with a leader; refuse unless quorum survives without {}",
            cps.join(", "),
            node.hostname
        ),
        done: false,
    }];
    out.push(PlanStep {
        step: "snapshot",
        action: if cp && opts.auto_snapshot {
            format!("EtcdSnapshot → most up-to-date healthy control plane → {}/backups/ (0600 + .json sidecar)", opts.state_dir.display())
        } else {
            "none (worker, or turned off)".into()
        },
        done: done("snapshot"),
    });
    out.push(PlanStep {
        step: "cordon",
        action: k(&format!(
            "PATCH Node {} spec.unschedulable=true",
            node.hostname
        )),
        done: done("cordon"),
    });
    out.push(PlanStep {
        step: "drain",
        action: k(&format!(
            "POST pods/eviction for every pod on {} (DaemonSet and mirror pods stay)",
            node.hostname
        )),
        done: done("drain"),
    });
    out.push(PlanStep {
        step: "leave_etcd",
        action: if cp {
            format!(
                "EtcdLeaveCluster → {}; confirm with EtcdMemberList → {other}",
                node.label()
            )
        } else {
            "none (worker)".into()
        },
        done: done("leave_etcd"),
    });
    out.push(PlanStep {
        step: "reset",
        action: format!(
            "Reset(graceful=false, reboot=true, wipe {}) → {}; wait for maintenance (TLS handshake → {})",
            if opts.wipe_all { "whole system disk" } else { "STATE,EPHEMERAL" },
            node.label(),
            node.address
        ),
        done: done("reset"),
    });
    out.push(PlanStep {
        step: "delete_node",
        action: k(&format!("DELETE Node {}", node.hostname)),
        done: done("delete_node"),
    });
    out.push(PlanStep {
        step: "apply",
        action: format!(
            "ApplyConfiguration (insecure, maintenance) → {}",
            node.label()
        ),
        done: done("apply"),
    });
    out.push(PlanStep {
        step: "wait_join",
        action: if cp {
            format!(
                "watch MachineStatus → {} until running+ready; EtcdMemberList → {other} until {} members",
                node.label(),
                cps.len()
            )
        } else {
            format!("watch MachineStatus → {} until running+ready", node.label())
        },
        done: done("wait_join"),
    });
    out.push(PlanStep {
        step: "node_ready",
        action: k(&format!(
            "watch Node {} until registered (Ready if it was)",
            node.hostname
        )),
        done: done("node_ready"),
    });
    out.push(PlanStep {
        step: "uncordon",
        action: k(&format!(
            "PATCH Node {} spec.unschedulable=null",
            node.hostname
        )),
        done: done("uncordon"),
    });
    out.push(PlanStep {
        step: "verify",
        action: format!(
            "EtcdStatus → {}; EtcdMemberList → first with a leader: {} members, one leader",
            cps.join(", "),
            cps.len()
        ),
        done: false,
    });
    Ok(out)
}
