//! `diff [NODE…]`: rendered vs running config per node and document, secrets
//! redacted, with Talos's dry-run verdict; exit 0 nothing differs, 2 something
//! does, 1 on failure. `apply [NODE…]` and `plan apply`: the rollout. The flows
//! are [`crate::flows::drift`] and [`crate::flows::apply`]. `status`: the GitOps
//! layers and, when the definition is at hand, one drift line per node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::cluster_args::ClusterArgs;
use super::up::{flow_error, layer_map};
use super::{CliError, Output, OutputFormat};
use crate::engine::journal::state_dir;
use crate::engine::Emitter;
use crate::engine::{Cluster, NodeDef};
use crate::flows::apply::{self, ApplyOptions, RolloutMode};
use crate::flows::drift::{survey_node, NodeDrift};
use crate::flows::up::kube::{repo_sync_path, walk_graph};
use crate::flows::up::KubeHalf;
use crate::talos::CallPolicy;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Nodes to compare (hostname or address); default: every node of the definition.
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The nodes named on the command line, or all of them.
pub(crate) fn select<'a>(
    cluster: &'a Cluster,
    names: &[String],
) -> Result<Vec<&'a NodeDef>, CliError> {
    if names.is_empty() {
        return Ok(cluster.def.nodes.iter().collect());
    }
    names
        .iter()
        .map(|n| cluster.node(n).map_err(flow_error))
        .collect()
}

/// Surveys `nodes` in parallel; failures keep their node.
pub(crate) async fn survey(
    cluster: &Cluster,
    nodes: &[&NodeDef],
) -> Vec<(String, Result<NodeDrift, String>)> {
    let policy = CallPolicy::default();
    let futs = nodes.iter().map(|n| async move {
        (
            n.label(),
            survey_node(cluster, n, policy)
                .await
                .map_err(|e| endsys_core::Doctor::explain(&e)),
        )
    });
    futures::future::join_all(futs).await
}

/// Prints one node's drift.
pub(crate) fn print_node(d: &NodeDrift, out: &Output, with_diff: bool) {
    match out.format {
        OutputFormat::Json => {
            for doc in &d.docs {
                println!(
                    "{}",
                    serde_json::json!({"event": "diff", "node": d.hostname, "document": doc.key.label(),
                        "api_version": doc.key.api_version, "kind": doc.key.kind, "name": doc.key.name,
                        "status": doc.status, "fields": doc.fields, "diff": doc.diff})
                );
            }
            println!(
                "{}",
                serde_json::json!({"event": "drift", "node": d.hostname, "version": d.version,
                    "verdict": d.verdict, "summary": d.verdict.describe(), "talos_mode": d.talos_mode,
                    "talos_reason": d.talos_reason, "fields": d.fields})
            );
        }
        OutputFormat::Text => {
            let talos = d
                .talos_mode
                .as_deref()
                .map(|m| format!(" [Talos dry run: {m}]"))
                .unwrap_or_default();
            println!(
                "{}: {}: {}{talos}",
                d.label,
                d.verdict.name(),
                d.verdict.describe()
            );
            if with_diff {
                for doc in d.docs.iter().filter(|doc| !doc.diff.is_empty()) {
                    print!("{}", doc.diff);
                }
                if let Some(reason) = &d.talos_reason {
                    println!("  Talos: {}", reason.replace('\n', "\n  "));
                }
            }
        }
    }
}

pub async fn diff(args: DiffArgs, out: &Output) -> Result<(), CliError> {
    let (cluster, _dir) = args.cluster.load()?;
    let nodes = select(&cluster, &args.nodes)?;
    let results = survey(&cluster, &nodes).await;
    let mut differ = 0;
    let mut failed = Vec::new();
    for (label, r) in &results {
        match r {
            Ok(d) => {
                print_node(d, out, true);
                if d.verdict.differs() {
                    differ += 1;
                }
            }
            Err(e) => failed.push(format!("{label}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(CliError::Failed(format!(
            "cannot compare {} node(s):\n{}",
            failed.len(),
            failed.join("\n")
        )));
    }
    if differ > 0 {
        return Err(CliError::Differs { nodes: differ });
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Nodes to apply to (hostname or address); default: every node.
    pub nodes: Vec<String>,
    /// auto: live changes in parallel, reboot changes rolled node by node;
    /// no-reboot: refused when a node needs a reboot (the fields are named);
    /// staged: staged everywhere, no reboot; reboot: every changed node rolled.
    #[arg(long, value_enum, default_value_t = RolloutMode::Auto)]
    pub mode: RolloutMode,
    /// Proceed although the quorum guard refuses (its reasons are printed and journaled).
    #[arg(long)]
    pub force: bool,
    /// No automatic etcd snapshot before the first control plane.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Pass a not-Ready GitOps layers gate with a journaled warning.
    #[arg(long)]
    pub ignore_gitops: bool,
    /// Workers rolled at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: u16,
    /// How long a PodDisruptionBudget may refuse evictions, in seconds.
    #[arg(long, default_value_t = 300, value_parser = super::bounds::secs)]
    pub drain_timeout: u64,
    /// After --drain-timeout, delete the pods a budget still protects.
    #[arg(long)]
    pub force_drain: bool,
    /// Deadline for a rebooted node to be back, running and ready, in seconds.
    #[arg(long, default_value_t = 1200, value_parser = super::bounds::secs)]
    pub node_timeout: u64,
    /// Deadline for etcd leadership hand-over, the member healthy again and the
    /// Node Ready, in seconds.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub etcd_timeout: u64,
    /// Layer overrides (same file as `up --layers`).
    #[arg(long, value_name = "FILE")]
    pub layers: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl ApplyArgs {
    fn options(&self, dir: std::path::PathBuf) -> Result<ApplyOptions, CliError> {
        let mut o = ApplyOptions::new(dir);
        o.nodes = self.nodes.clone();
        o.mode = self.mode;
        o.force = self.force;
        o.no_snapshot = self.no_snapshot;
        o.ignore_gitops = self.ignore_gitops;
        o.max_parallel = usize::from(self.max_parallel);
        o.drain.timeout = Duration::from_secs(self.drain_timeout);
        o.drain.force = self.force_drain;
        o.node_deadline = Duration::from_secs(self.node_timeout);
        o.etcd_deadline = Duration::from_secs(self.etcd_timeout);
        o.kube_deadline = Duration::from_secs(self.etcd_timeout);
        o.layers_deadline = Duration::from_secs(self.etcd_timeout);
        o.layers = super::up::layer_map(self.layers.as_deref())?;
        Ok(o)
    }
}

pub async fn apply(args: ApplyArgs, out: &Output) -> Result<(), CliError> {
    let (cluster, dir) = args.cluster.load()?;
    let _lock = super::lock_state(&dir, "apply", out)?;
    let o = args.options(dir)?;
    let em = Emitter::new();
    let printer = super::cluster_args::spawn_printer(&em, "apply", out);
    let r = apply::apply(&cluster, &o, &em).await;
    drop(em);
    let _ = printer.await;
    let r = r.map_err(flow_error)?;
    for (node, detail) in &r.nodes {
        out.result(
            node,
            "apply",
            detail,
            serde_json::json!({"outcome": detail}),
        );
    }
    let summary = format!(
        "{} node(s) changed{}{}",
        r.nodes.len(),
        r.backup
            .as_deref()
            .map(|b| format!("; snapshot {b}"))
            .unwrap_or_default(),
        if r.resumed {
            "; resumed an interrupted rollout"
        } else {
            ""
        }
    );
    out.result(
        "apply",
        "summary",
        &summary,
        serde_json::json!({"nodes": r.nodes.len(), "backup": r.backup, "resumed": r.resumed}),
    );
    Ok(())
}

pub async fn plan_apply(args: ApplyArgs, out: &Output) -> Result<(), CliError> {
    let (cluster, dir) = args.cluster.load()?;
    let o = args.options(dir)?;
    let items = apply::plan(&cluster, &o).await.map_err(flow_error)?;
    let text = items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{:2}. {:<8} {:<8} {}",
                i + 1,
                s.step.name(),
                s.node.as_deref().unwrap_or("-"),
                s.action
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let json: Vec<serde_json::Value> = items
        .iter()
        .map(|s| serde_json::json!({"step": s.step, "node": s.node, "action": s.action, "acts": s.acts}))
        .collect();
    out.result(
        "apply",
        "plan-apply",
        &format!("apply would:\n{text}"),
        serde_json::Value::Array(json),
    );
    Ok(())
}

// ---- status: one drift line per node -------------------------------------------

/// Per node: (label, verdict name, one line), or one line saying why no
/// drift could be read. Nothing when the definition file is absent.
pub(crate) async fn drift_lines(args: &StatusArgs) -> Vec<(String, String, String)> {
    if !args.definition.config.is_file() {
        return Vec::new();
    }
    let cluster_args = ClusterArgs {
        definition: args.definition.clone(),
        age_key: args.age_key.clone(),
        state_dir: args.state_dir.clone(),
    };
    let cluster = match cluster_args.load() {
        Ok((c, _)) => c,
        Err(e) => {
            let text = endsys_core::Doctor::explain(&e);
            let first = text.lines().next().unwrap_or_default().to_string();
            return vec![("definition".into(), "unknown".into(), first)];
        }
    };
    let nodes: Vec<_> = cluster.def.nodes.iter().collect();
    survey(&cluster, &nodes)
        .await
        .into_iter()
        .map(|(label, r)| match r {
            Ok(d) => (label, d.verdict.name().to_string(), d.verdict.describe()),
            Err(e) => (
                label,
                "unknown".to_string(),
                e.lines().next().unwrap_or_default().to_string(),
            ),
        })
        .collect()
}

pub(crate) fn print_drift(lines: &[(String, String, String)], out: &Output) {
    if lines.is_empty() {
        return;
    }
    match out.format {
        OutputFormat::Json => {
            for (node, verdict, line) in lines {
                println!(
                    "{}",
                    serde_json::json!({"event": "drift", "node": node, "verdict": verdict, "summary": line})
                );
            }
        }
        OutputFormat::Text => {
            println!("drift (running config against the definition; `diff` shows it):");
            for (node, verdict, line) in lines {
                println!("  {node}: {verdict}: {line}");
            }
        }
    }
}

/// `status`: where the cluster is and what the GitOps layers look like.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Cluster name: reads the kubeconfig `up` wrote to its state directory.
    #[arg(long, required_unless_present_any = ["kubeconfig", "state_dir"], value_parser = super::bounds::cluster_name)]
    pub cluster: Option<String>,
    /// State directory holding the kubeconfig (default: $XDG_STATE_HOME/endsys-bootstrap/<cluster>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Use this kubeconfig instead of the state directory's.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The gitops repository: Kustomizations it defines that the cluster lacks are
    /// counted and listed as not created yet.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Flux sync path in --repo [default: the flux-instance values' instance.sync.path,
    /// else kubernetes/flux/cluster].
    #[arg(long, requires = "repo")]
    pub sync_path: Option<String>,
    /// Layer overrides (same file as `up --layers`).
    #[arg(long, value_name = "FILE")]
    pub layers: Option<PathBuf>,
    /// The cluster definition: when its talconfig exists, one drift line per
    /// node (its running config against the definition, as `diff` says).
    #[command(flatten)]
    pub definition: super::gen::DefinitionArgs,
    /// age identity file for SOPS-encrypted secrets (drift lines).
    #[arg(long)]
    pub age_key: Option<PathBuf>,
}

/// `status`: the per-layer view from the cluster. Exit 0 when every Flux object
/// is Ready, 1 otherwise (with the blocking objects), so scripts can wait on it.
pub async fn status(args: StatusArgs, out: &Output) -> Result<(), CliError> {
    let path = match (&args.kubeconfig, &args.state_dir, &args.cluster) {
        (Some(k), _, _) => k.clone(),
        (None, dir, cluster) => {
            state_dir(dir.as_deref(), cluster.as_deref().unwrap_or("")).join("kubeconfig")
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        CliError::Usage(format!(
            "{}: cannot read the kubeconfig: {e}\n  next action:  run `up` first, or pass --kubeconfig",
            path.display()
        ))
    })?;
    // The file is judged on its own first: a broken kubeconfig is not the API
    // server's fault, and the message must name the file.
    if let Err(e) = crate::kube::client_from_kubeconfig(&bytes).await {
        return Err(CliError::Usage(format!(
            "{}: not a usable kubeconfig: {}\n  likely cause: the file is not a kubeconfig (or is truncated), or its current context names a cluster or user it does not define\n  next action:  pass the admin kubeconfig `up` wrote (<state-dir>/kubeconfig), or check the file with `kubectl --kubeconfig {} config view`",
            path.display(),
            super::bounds::kube_detail(&e),
            path.display()
        )));
    }
    let layers = layer_map(args.layers.as_deref())?;
    let graph = match &args.repo {
        Some(repo) => {
            let half = KubeHalf::endsys(repo.clone());
            let sync = args
                .sync_path
                .clone()
                .unwrap_or_else(|| repo_sync_path(&half));
            Some(walk_graph(repo, &sync, layers.clone()).map_err(flow_error)?)
        }
        None => None,
    };
    let p = crate::flows::up::gitops::status(&bytes, layers, graph.as_ref()).await;
    let drift = drift_lines(&args).await;
    // The nodes' drift is worth showing even when the layers cannot be read.
    let p = p.map_err(|e| {
        print_drift(&drift, out);
        flow_error(e)
    })?;
    match out.format {
        OutputFormat::Json => {
            for l in &p.layers {
                println!(
                    "{}",
                    serde_json::json!({"event": "layer_progress", "layer": l.layer, "title": l.name, "ready": l.ready, "total": l.total, "waiting": l.waiting})
                );
            }
            for i in p
                .items
                .iter()
                .filter(|i| i.state != crate::gitops::ItemState::Ready)
            {
                println!(
                    "{}",
                    serde_json::json!({"event": "flux_object", "kind": i.kind.to_string(), "object": i.key.to_string(), "layer": i.layer,
                        "state": format!("{:?}", i.state).to_lowercase(), "reason": i.reason, "message": i.message,
                        "waiting_on": i.waiting_on.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                        "blocks": i.dependents.iter().map(|k| k.to_string()).collect::<Vec<_>>()})
                );
            }
            for k in &p.missing {
                println!(
                    "{}",
                    serde_json::json!({"event": "flux_object", "kind": "Kustomization", "object": k.to_string(), "state": "missing"})
                );
            }
        }
        OutputFormat::Text => print!("{}", p.render()),
    }
    print_drift(&drift, out);
    if p.all_ready() {
        Ok(())
    } else {
        let n = p
            .items
            .iter()
            .filter(|i| i.state != crate::gitops::ItemState::Ready)
            .count()
            + p.missing.len();
        Err(CliError::Failed(format!(
            "{n} Flux object(s) not Ready (listed above)\n  next action:  read the blocking object's message; `up` resumes watching where it stopped"
        )))
    }
}
