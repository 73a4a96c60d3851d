//! `etcd backup|status`, `node reimage|rejoin` and `plan node …`: arguments and
//! output. The flows live in [`crate::flows::nodes`] and [`crate::flows::backup`].

use std::path::PathBuf;
use std::time::Duration;

use super::cluster_args::{spawn_printer, ClusterArgs};
use super::up::flow_error;
use super::{CliError, Output};
use crate::engine::Emitter;
use crate::flows::backup;
use crate::flows::nodes::{self, NodeOpOptions, NodeOpReport};
use crate::snapshot::{sidecar_path, KubeRecord};
use clap::{Args, Subcommand};

/// `etcd …`
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Snapshot etcd from a healthy control plane (each asked directly, never
    /// through the VIP), verify its SHA-256 trailer, and write it 0600 with a
    /// metadata sidecar FILE.json (cluster, node, raft index, members, time,
    /// sha256, tool version).
    ///
    /// Example: `etcd backup backups/etcd-$(date +%F).snapshot`. Without FILE the
    /// snapshot goes to <state-dir>/backups/<cluster>-etcd-<UTC time>.snapshot.
    Backup(BackupArgs),
    /// Show etcd per control plane: members (ID, name, peer URLs, learner, the
    /// definition node they belong to), the leader, DB size, raft index and
    /// alarms. `--output json` for scripts.
    Status(ClusterArgs),
    /// Check a backup file: its SHA-256 trailer and its sidecar's checksum.
    Verify {
        /// The snapshot file (its sidecar is FILE.json).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the snapshot (written via FILE.tmp and renamed; 0600).
    pub file: Option<PathBuf>,
    /// Kubeconfig to read the Kubernetes inventory (namespaces, Flux
    /// Kustomizations) recorded in the sidecar, which `recover` checks the
    /// restore against [default: <state-dir>/kubeconfig].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Wipe a live node and bring it back, etcd quorum kept throughout.
    ///
    /// Steps: quorum guard → automatic etcd snapshot (control plane) → cordon →
    /// drain (Eviction API) → EtcdLeaveCluster, confirmed through another control
    /// plane → Reset wiping STATE and EPHEMERAL (--wipe-all: the whole disk) into
    /// maintenance → delete the Node → apply the config (maintenance) → wait for
    /// running, etcd member count back, Node registered/Ready → uncordon →
    /// verify. Journaled in <state-dir>/day2/: re-run the same command after an
    /// interruption and it resumes. See `plan node reimage NAME` first.
    Reimage(ReimageArgs),
    /// Bring back a dead node, or one whose disk was replaced and now boots into
    /// maintenance — or add a node new to the definition.
    ///
    /// Steps: quorum guard (the node need not answer) → automatic snapshot →
    /// remove its stale etcd member by ID through a healthy control plane → delete
    /// the old Node → apply the config (maintenance) → wait for running, etcd
    /// member count back, Node registered → verify. Resumable like reimage.
    Rejoin(RejoinArgs),
}

/// Options shared by reimage and rejoin.
#[derive(Debug, Clone, Args)]
pub struct OpArgs {
    /// Proceed although the quorum guard refuses (its reasons are still printed).
    /// Losing etcd quorum stops the whole cluster: bring members back instead.
    #[arg(long)]
    pub force: bool,
    /// Skip cordon, drain, Node delete/Ready and uncordon (Talos steps only).
    #[arg(long)]
    pub skip_kubernetes: bool,
    /// Do not take the automatic etcd snapshot before a control-plane operation.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Deadline for the node to reach maintenance / come back running, in seconds.
    #[arg(long, default_value_t = 1200, value_parser = super::bounds::secs)]
    pub node_timeout: u64,
    /// Deadline for etcd membership changes and drains, in seconds.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub etcd_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ReimageArgs {
    /// Hostname (or address) of the node, as in the definition.
    pub name: String,
    /// Wipe the whole system disk instead of only STATE and EPHEMERAL.
    #[arg(long)]
    pub wipe_all: bool,
    #[command(flatten)]
    pub op: OpArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RejoinArgs {
    /// Hostname (or address) of the node, as in the definition.
    pub name: String,
    #[command(flatten)]
    pub op: OpArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `plan …`: `up`'s plan, or a node operation's steps.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub what: Option<PlanWhat>,
    #[command(flatten)]
    pub up: super::up::UpArgs,
}

#[derive(Debug, Subcommand)]
pub enum PlanWhat {
    /// The steps of a node operation, naming the node that receives each call.
    #[command(subcommand)]
    Node(NodeCommand),
    /// What `apply` would do: each node's verdict, the live ones, then the
    /// rolled ones in order with the gates each passes.
    Apply(super::drift_cmd::ApplyArgs),
    /// An upgrade's order, gates and calls per node, naming the node that
    /// receives each call (reads every node's version; changes nothing).
    #[command(subcommand)]
    Upgrade(super::upgrade_cmd::UpgradeCommand),
}

fn options(dir: PathBuf, op: &OpArgs) -> NodeOpOptions {
    let mut o = NodeOpOptions::new(dir);
    o.force = op.force;
    o.skip_kubernetes = op.skip_kubernetes;
    o.auto_snapshot = !op.no_snapshot;
    o.node_deadline = Duration::from_secs(op.node_timeout);
    o.etcd_deadline = Duration::from_secs(op.etcd_timeout);
    o.kube_deadline = Duration::from_secs(op.etcd_timeout);
    o
}

fn report_json(r: &NodeOpReport, rejoin: bool) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = r
        .steps
        .iter()
        .map(|(s, o)| serde_json::json!({"step": s, "outcome": o}))
        .collect();
    let mut v = serde_json::json!({"node": r.node, "steps": steps, "backup": r.backup,
        "forced": r.forced, "resumed": r.resumed, "elapsed_ms": r.elapsed.as_millis() as u64});
    if rejoin {
        v["removed"] = serde_json::json!(r.removed);
    }
    v
}

pub async fn etcd(cmd: EtcdCommand, out: &Output) -> Result<(), CliError> {
    match cmd {
        EtcdCommand::Backup(args) => {
            let (mut cluster, dir) = args.cluster.load()?;
            if let Some(kc) = &args.kubeconfig {
                cluster.kubeconfig = Some(std::fs::read(kc).map_err(|e| {
                    CliError::Usage(format!(
                        "{}: cannot read the kubeconfig: {e}\n  next action:  check the path given to --kubeconfig, or leave it out to use <state-dir>/kubeconfig",
                        kc.display()
                    ))
                })?);
            }
            let path = args
                .file
                .clone()
                .unwrap_or_else(|| backup::default_backup_path(&dir, &cluster.def.cluster));
            let meta = backup::take_backup(&cluster, Default::default(), &path)
                .await
                .map_err(flow_error)?;
            out.result(
                &meta.node,
                "etcd-backup",
                &format!(
                    "wrote {} (0600, {} bytes, sha256 {}) and {}; {} members, raft index {}; {}",
                    path.display(),
                    meta.size,
                    meta.sha256,
                    sidecar_path(&path).display(),
                    meta.members.len(),
                    meta.raft_index,
                    meta.kubernetes.describe()
                ),
                serde_json::json!({"path": path, "sidecar": sidecar_path(&path), "meta": meta}),
            );
            if let KubeRecord::None { reason } = &meta.kubernetes {
                out.info(
                    &meta.node,
                    &format!("warning: no Kubernetes inventory recorded ({reason}); `recover` from this backup can only check the cluster is not empty (pass --kubeconfig, or run `up` to save one in the state directory)"),
                );
            }
            Ok(())
        }
        EtcdCommand::Status(args) => {
            let (cluster, _) = args.load()?;
            let report = backup::etcd_status(&cluster, Default::default()).await;
            let json = serde_json::to_value(&report).unwrap_or_default();
            out.result(&cluster.def.cluster, "etcd-status", &report.table, json);
            if report.leader.is_none() {
                return Err(CliError::Failed(
                    "etcd has no leader: quorum is lost or no control plane answers".into(),
                ));
            }
            Ok(())
        }
        EtcdCommand::Verify { file } => {
            let meta = backup::verify_backup(&file).map_err(flow_error)?;
            out.result(
                &meta.node,
                "etcd-verify",
                &format!(
                    "{}: trailer and sidecar checksum OK (cluster {}, taken {} from {}, {} members)",
                    file.display(),
                    meta.cluster,
                    meta.taken_at,
                    meta.node,
                    meta.members.len()
                ),
                serde_json::to_value(&meta).unwrap_or_default(),
            );
            Ok(())
        }
    }
}

pub async fn node(cmd: NodeCommand, out: &Output) -> Result<(), CliError> {
    let (op, a, wipe_all) = match &cmd {
        NodeCommand::Reimage(a) => ("reimage", (&a.name, &a.op, &a.cluster), a.wipe_all),
        NodeCommand::Rejoin(a) => ("rejoin", (&a.name, &a.op, &a.cluster), false),
    };
    let (name, op_args, cluster_args) = a;
    let (cluster, dir) = cluster_args.load()?;
    let _lock = super::lock_state(&dir, &format!("node {op} {name}"), out)?;
    let mut o = options(dir, op_args);
    o.wipe_all = wipe_all;
    let em = Emitter::new();
    let printer = spawn_printer(&em, op, out);
    let r = if op == "reimage" {
        nodes::reimage(&cluster, name, &o, &em).await
    } else {
        nodes::rejoin(&cluster, name, &o, &em).await
    };
    drop(em);
    let _ = printer.await;
    let r = r.map_err(flow_error)?;
    let text = if op == "reimage" {
        format!(
            "reimaged in {:.1}s{}{}",
            r.elapsed.as_secs_f64(),
            r.backup
                .as_deref()
                .map(|b| format!("; snapshot {b}"))
                .unwrap_or_default(),
            if r.forced.is_empty() {
                String::new()
            } else {
                format!("; FORCED past: {}", r.forced.join("; "))
            }
        )
    } else {
        format!(
            "rejoined in {:.1}s; stale members removed: {}",
            r.elapsed.as_secs_f64(),
            if r.removed.is_empty() {
                "none".to_string()
            } else {
                r.removed
                    .iter()
                    .map(|(i, p)| format!("{i} ({p})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    };
    out.result(&r.node, op, &text, report_json(&r, op == "rejoin"));
    Ok(())
}

pub async fn plan(what: PlanWhat, out: &Output) -> Result<(), CliError> {
    let cmd = match what {
        PlanWhat::Node(cmd) => cmd,
        PlanWhat::Apply(args) => return super::drift_cmd::plan_apply(args, out).await,
        PlanWhat::Upgrade(cmd) => return super::upgrade_cmd::plan(cmd, out).await,
    };
    let (op_name, name, cluster_args, op, wipe_all) = match &cmd {
        NodeCommand::Reimage(a) => ("reimage", &a.name, &a.cluster, &a.op, a.wipe_all),
        NodeCommand::Rejoin(a) => ("rejoin", &a.name, &a.cluster, &a.op, false),
    };
    let (cluster, dir) = cluster_args.load()?;
    let mut o = options(dir, op);
    o.wipe_all = wipe_all;
    let steps = if op_name == "reimage" {
        nodes::reimage::plan(&cluster, name, &o).await
    } else {
        nodes::rejoin::plan(&cluster, name, &o).await
    }
    .map_err(flow_error)?;
    let text = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{:2}. {:<12} {}{}",
                i + 1,
                s.step.name(),
                s.action,
                if s.done { "  [done]" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let json: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| serde_json::json!({"step": s.step, "action": s.action, "done": s.done}))
        .collect();
    out.result(
        name,
        &format!("plan-{op_name}"),
        &format!("node {op_name} {name} would:\n{text}"),
        serde_json::Value::Array(json),
    );
    Ok(())
}
