//! `upgrade talos` and `plan upgrade talos`: arguments and output. The rollout
//! lives in [`crate::flows::upgrade`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::cluster_args::{spawn_printer, ClusterArgs};
use super::up::flow_error;
use super::{CliError, Output};
use crate::engine::{Emitter, PlanItem};
use crate::flows::upgrade::{self, UpgradeOptions, UpgradeReport};

/// `upgrade …`
#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Roll Talos to a new version, node by node, each gated on health.
    ///
    /// Order: control planes one at a time (definition order), then workers in
    /// batches of --max-parallel. Per node: quorum gate (etcd keeps quorum
    /// while it reboots) → every GitOps layer Ready → an etcd snapshot before
    /// the first control plane → the machine config's install image set to the
    /// target (NO_REBOOT) → etcd leadership handed over → cordon → drain
    /// (a PodDisruptionBudget that refuses past --drain-timeout is named) →
    /// LifecycleService.Upgrade with the image pulled first (Talos ≥ 1.13) or
    /// MachineService.Upgrade (1.12) → reboot → back with a new boot ID on the
    /// target version (the old one means Talos rolled back: the rollout stops
    /// and names the node) → services, etcd, Node Ready → uncordon → layers
    /// Ready again. Nodes already on the target are skipped.
    ///
    /// The image is computed from the definition exactly as `gen config`
    /// renders it (talosImageURL, factory schematic, secure boot), with the tag
    /// --to. Refused before any node is touched when a node does not answer
    /// (--force leaves it out), when a host would skip a Talos minor
    /// (--allow-skip-minor), or when the cluster's Kubernetes does not run on
    /// the target. Journaled in <state-dir>/day2/upgrade-talos.json: killed
    /// anywhere, the same command resumes without upgrading a node twice or
    /// leaving one cordoned. Try `plan upgrade talos` (or --dry-run) first.
    ///
    /// Example: `upgrade talos --to v1.13.9 --max-parallel 2`.
    Talos(UpgradeTalosArgs),
    /// Move Kubernetes to a new version through machine-config changes, node by node.
    ///
    /// As talosctl's upgrade-k8s: preflight (one minor at a time; the target
    /// supported by every node's Talos — Talos 1.12 runs 1.30–1.35, 1.13 runs
    /// 1.31–1.36, 1.14 runs 1.32–1.37; the definition's kubernetesVersion
    /// already V, else a later `up` would revert the images; no object left of
    /// an API the target removes, in the cluster or — with --repo — in the
    /// GitOps tree, each named by file:line) → every image pulled on every node first →
    /// kube-apiserver, then kube-controller-manager, then kube-scheduler, each
    /// control plane in turn (ApplyConfiguration NO_REBOOT with the image,
    /// then its mirror pod on the new image and Ready) → the kubelet on every
    /// node (control planes first, workers in batches of --max-parallel),
    /// each Node Ready with the new kubelet version → GitOps layers Ready.
    /// Which components moved is read from the cluster, so a re-run resumes.
    ///
    /// Example: set `kubernetesVersion: v1.36.0` in talconfig.yaml, then
    /// `upgrade kubernetes --to v1.36.0 --repo .`.
    Kubernetes(UpgradeKubernetesArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeKubernetesArgs {
    /// Target Kubernetes version (must equal the definition's kubernetesVersion).
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    /// Kubelets upgraded at once on workers (control planes one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_parallel: u16,
    /// Go on when GitOps layers are not Ready (printed as a warning).
    #[arg(long)]
    pub ignore_gitops: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds for each static pod or Node to come back Ready on the new version.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub timeout: u64,
    /// The gitops repository (as `up --repo`): its Flux tree is scanned for
    /// manifests of APIs the target removes. Without it, preflight says the
    /// tree was not scanned.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Flux sync path in --repo [default: the flux-instance values' instance.sync.path,
    /// else kubernetes/flux/cluster].
    #[arg(long, requires = "repo")]
    pub sync_path: Option<String>,
    /// Layer overrides (same file as `up --layers`).
    #[arg(long, value_name = "FILE")]
    pub layers: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn kube_options(dir: PathBuf, a: &UpgradeKubernetesArgs) -> Result<UpgradeOptions, CliError> {
    let mut o = UpgradeOptions::new(dir);
    o.to = Some(a.to.clone());
    o.max_parallel = a.max_parallel as usize;
    o.ignore_gitops = a.ignore_gitops;
    o.kube_deadline = Duration::from_secs(a.timeout);
    o.layers = super::up::layer_map(a.layers.as_deref())?;
    o.gitops_tree = a.repo.clone().map(|r| (r, a.sync_path.clone()));
    Ok(o)
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeTalosArgs {
    /// Target Talos version [default: the definition's talosVersion].
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Workers upgraded at once (control planes always go one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_parallel: u16,
    /// Seconds a PodDisruptionBudget refusal is retried before the drain stops.
    #[arg(long, default_value_t = 300, value_parser = super::bounds::secs)]
    pub drain_timeout: u64,
    /// After --drain-timeout, delete the pods a budget still protects instead of stopping.
    #[arg(long)]
    pub force_drain: bool,
    /// Go on when GitOps layers are not Ready (printed as a warning, journaled).
    #[arg(long)]
    pub ignore_gitops: bool,
    /// Seconds a not-Ready GitOps layer is waited for before the rollout stops.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub layers_timeout: u64,
    /// Proceed past refusals, each printed with its reason: nodes that do not
    /// answer are left out, the quorum gate and Talos 1.12's etcd check are passed.
    #[arg(long)]
    pub force: bool,
    /// Allow a host to jump two Talos minors where the installer allows it
    /// (the docs recommend the latest patch of every minor in between).
    #[arg(long)]
    pub allow_skip_minor: bool,
    /// Upgrade 1.13+ nodes through MachineService.Upgrade as on 1.12 (talosctl's
    /// `--legacy`), not LifecycleService: the new API does not pass
    /// machine.install.extraKernelArgs on GRUB nodes without grubUseUKICmdline.
    #[arg(long)]
    pub legacy_upgrade: bool,
    /// Do not take the etcd snapshot before the first control plane.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Print the plan (order, gates, calls, receiving nodes) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds for a node to come back after its reboot.
    #[arg(long, default_value_t = 1800, value_parser = super::bounds::secs)]
    pub node_timeout: u64,
    /// Seconds for etcd leadership hand-over and members back, Node Ready, services.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub etcd_timeout: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn options(dir: PathBuf, a: &UpgradeTalosArgs) -> UpgradeOptions {
    let mut o = UpgradeOptions::new(dir);
    o.to = a.to.clone();
    o.max_parallel = a.max_parallel as usize;
    o.drain_timeout = Duration::from_secs(a.drain_timeout);
    o.force_drain = a.force_drain;
    o.ignore_gitops = a.ignore_gitops;
    o.layers_deadline = Duration::from_secs(a.layers_timeout);
    o.force = a.force;
    o.allow_skip_minor = a.allow_skip_minor;
    o.legacy_upgrade = a.legacy_upgrade;
    o.auto_snapshot = !a.no_snapshot;
    o.node_deadline = Duration::from_secs(a.node_timeout);
    o.etcd_deadline = Duration::from_secs(a.etcd_timeout);
    o.kube_deadline = Duration::from_secs(a.etcd_timeout);
    o
}

pub async fn upgrade(cmd: UpgradeCommand, out: &Output) -> Result<(), CliError> {
    let a = match cmd {
        UpgradeCommand::Talos(a) => a,
        UpgradeCommand::Kubernetes(a) => return upgrade_kubernetes(a, out).await,
    };
    if a.dry_run {
        return plan(UpgradeCommand::Talos(a), out).await;
    }
    let (cluster, dir) = a.cluster.load()?;
    let _lock = super::lock_state(&dir, "upgrade talos", out)?;
    let o = options(dir, &a);
    let em = Emitter::new();
    let printer = spawn_printer(&em, "upgrade-talos", out);
    let r = upgrade::upgrade_talos(&cluster, &o, &em).await;
    drop(em);
    let _ = printer.await;
    let r = r.map_err(flow_error)?;
    out.result(
        &cluster.def.cluster,
        "upgrade-talos",
        &report_text(&r),
        report_json(&r),
    );
    Ok(())
}

fn report_text(r: &UpgradeReport) -> String {
    let mut s = format!(
        "every node on {} in {:.1}s{}",
        r.target,
        r.elapsed.as_secs_f64(),
        if r.resumed { " (resumed)" } else { "" }
    );
    for (n, what) in &r.nodes {
        s.push_str(&format!("\n  {n}: {what}"));
    }
    if let Some(b) = &r.backup {
        s.push_str(&format!("\n  etcd snapshot: {b}"));
    }
    if !r.forced.is_empty() {
        s.push_str(&format!("\n  FORCED past: {}", r.forced.join("; ")));
    }
    if !r.ignored_gitops.is_empty() {
        s.push_str(&format!(
            "\n  GitOps NOT Ready, ignored (--ignore-gitops): {}",
            r.ignored_gitops.join(" | ")
        ));
    }
    s
}

fn report_json(r: &UpgradeReport) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = r
        .nodes
        .iter()
        .map(|(n, w)| serde_json::json!({"node": n, "outcome": w}))
        .collect();
    serde_json::json!({"target": r.target, "nodes": nodes, "backup": r.backup,
        "forced": r.forced, "ignored_gitops": r.ignored_gitops, "resumed": r.resumed,
        "elapsed_ms": r.elapsed.as_millis() as u64})
}

async fn upgrade_kubernetes(a: UpgradeKubernetesArgs, out: &Output) -> Result<(), CliError> {
    if a.dry_run {
        return plan(UpgradeCommand::Kubernetes(a), out).await;
    }
    let (cluster, dir) = a.cluster.load()?;
    let _lock = super::lock_state(&dir, "upgrade kubernetes", out)?;
    let o = kube_options(dir, &a)?;
    let em = Emitter::new();
    let printer = spawn_printer(&em, "upgrade-kubernetes", out);
    let r = upgrade::kubernetes::upgrade_kubernetes(&cluster, &o, &em).await;
    drop(em);
    let _ = printer.await;
    let r = r.map_err(flow_error)?;
    let mut text = format!(
        "Kubernetes {} → {} in {:.1}s",
        r.from,
        r.to,
        r.elapsed.as_secs_f64()
    );
    for (n, w) in &r.nodes {
        text.push_str(&format!("\n  {n}: {w}"));
    }
    let nodes: Vec<serde_json::Value> = r
        .nodes
        .iter()
        .map(|(n, w)| serde_json::json!({"node": n, "outcome": w}))
        .collect();
    out.result(
        &cluster.def.cluster,
        "upgrade-kubernetes",
        &text,
        serde_json::json!({"from": r.from, "to": r.to, "nodes": nodes,
            "elapsed_ms": r.elapsed.as_millis() as u64}),
    );
    Ok(())
}

/// `plan upgrade talos|kubernetes`: the order, the gates and each call's receiving node.
pub async fn plan(cmd: UpgradeCommand, out: &Output) -> Result<(), CliError> {
    let a = match cmd {
        UpgradeCommand::Talos(a) => a,
        UpgradeCommand::Kubernetes(a) => {
            let (cluster, dir) = a.cluster.load()?;
            let o = kube_options(dir, &a)?;
            let items = upgrade::kubernetes::plan_upgrade_kubernetes(&cluster, &o)
                .await
                .map_err(flow_error)?;
            out.result(
                &cluster.def.cluster,
                "plan-upgrade-kubernetes",
                &format!("upgrade kubernetes would:\n{}", plan_text(&items)),
                serde_json::to_value(&items).unwrap_or_default(),
            );
            return Ok(());
        }
    };
    let (cluster, dir) = a.cluster.load()?;
    let o = options(dir, &a);
    let items = upgrade::plan_upgrade_talos(&cluster, &o)
        .await
        .map_err(flow_error)?;
    out.result(
        &cluster.def.cluster,
        "plan-upgrade-talos",
        &format!("upgrade talos would:\n{}", plan_text(&items)),
        serde_json::to_value(&items).unwrap_or_default(),
    );
    Ok(())
}

fn plan_text(items: &[PlanItem]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{:3}. {:<8} {:<15} {}{}",
                i + 1,
                s.node.as_deref().unwrap_or("-"),
                s.step.name(),
                s.action,
                if s.done { "  [done]" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
