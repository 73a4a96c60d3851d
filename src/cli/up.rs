//! `up`, `plan`, `status`, `kubeconfig` and `demo`: arguments, the progress
//! display and the NDJSON stream. The flows live in [`crate::flows`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::broadcast;

use super::{CliError, Output, OutputFormat};
use crate::engine::journal::state_dir;
use crate::engine::talhelper::TalhelperSource;
use crate::engine::{
    kubeconfig, ClusterSource, Doctor, Emitter, Event, EventKind, FlowError, Journal, Ledger,
    Outcome, StepId, UpFacts,
};
use crate::flows::up::kube::{repo_sync_path, walk_graph};
use crate::flows::up::{KubeHalf, Renderer, UpOptions};

/// Which steps to run: everything (default), or stop after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Stop after configs are applied.
    Apply,
    /// Stop once every node runs its config.
    Configured,
    /// Stop after etcd quorum and the kubeconfig fetch; kube-apiserver is not waited for.
    Etcd,
    /// The Talos half, including kube-apiserver serving.
    Apiserver,
    /// Through the CNI: namespaces, secrets, CRDs, Cilium, nodes Ready.
    Cni,
    /// Layer 1 done: the other bootstrap charts healthy (needs --repo).
    Layer1,
    /// Layer 2: Flux installed and synced (flux-system and cluster-meta Ready).
    Flux,
    /// Everything: all five layers Ready, and Flux's adoption of the bootstrap releases checked.
    All,
}

impl Until {
    pub fn last_step(self) -> StepId {
        match self {
            Until::Apply => StepId::Apply,
            Until::Configured => StepId::WaitConfigured,
            Until::Etcd => StepId::Kubeconfig,
            Until::Apiserver => StepId::Apiserver,
            Until::Cni => StepId::NodesReady,
            Until::Layer1 => StepId::Layer1Done,
            Until::Flux => StepId::FluxSync,
            Until::All => StepId::LAST,
        }
    }
}

/// `up` and `plan`: the cluster definition and how to run.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub definition: super::gen::DefinitionArgs,
    /// age identity file for SOPS-encrypted secrets [default: $SOPS_AGE_KEY_FILE, then ~/.config/sops/age/keys.txt].
    #[arg(long)]
    pub age_key: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl UpArgs {
    fn source(&self) -> TalhelperSource {
        let mut s = TalhelperSource::new(&self.definition.config, &self.definition.secrets_path());
        s.paths = self.definition.paths();
        s.age_key = self.age_key.clone();
        s
    }
}

/// `kubeconfig`: print where the admin kubeconfig is, or merge it.
#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// Cluster name (the state directory's last component).
    #[arg(long, value_parser = super::bounds::cluster_name)]
    pub cluster: String,
    /// State directory (default: $XDG_STATE_HOME/endsys-bootstrap/<cluster>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Merge into ~/.kube/config (or --into) with context admin@<cluster>; idempotent.
    #[arg(long)]
    pub merge: bool,
    /// Target of --merge.
    #[arg(long, requires = "merge")]
    pub into: Option<PathBuf>,
}

/// Shared options of `up`-like runs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Journal, talosconfig and kubeconfig directory
    /// (default: $XDG_STATE_HOME/endsys-bootstrap/<cluster>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Pin a maintenance-mode node's certificate: HOSTNAME=FINGERPRINT, the
    /// fingerprint as the node console prints it (base64 SHA-256 of the public
    /// key, talosctl's --cert-fingerprint). Repeatable; unpinned nodes are not checked.
    #[arg(long = "cert-fingerprint", value_name = "HOSTNAME=FINGERPRINT")]
    pub cert_fingerprints: Vec<String>,
    /// Allow generating a new secrets bundle although nodes already serve a CA.
    #[arg(long)]
    pub new_cluster: bool,
    /// Stop after this stage. `etcd` skips waiting for kube-apiserver (reported, never silent);
    /// later steps are reported as skipped with the reason.
    #[arg(long, value_enum, default_value_t = Until::All)]
    pub until: Until,
    /// Per-node deadline from apply to running, in seconds.
    #[arg(long, default_value_t = 1200, value_parser = super::bounds::secs)]
    pub node_timeout: u64,
    /// The gitops repository (endsys layout: bootstrap/helmfile.yaml,
    /// kubernetes/apps/<namespace>/, SOPS files); enables the Kubernetes half.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// helm binary for `helm template` [default: helm on PATH]; checked in preflight.
    #[arg(long)]
    pub helm: Option<PathBuf>,
    /// CRD manifest source (URL or file relative to --repo), applied before the charts. Repeatable.
    #[arg(long = "crd")]
    pub crds: Vec<String>,
    /// Take over fields other field managers own (server-side apply force).
    #[arg(long)]
    pub force_conflicts: bool,
    /// Deadline of each chart's rollout and of nodes registering/Ready, in seconds.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub kube_timeout: u64,
    /// Layer overrides (YAML: `layers: {garage: 5, database/dragonfly: 3}`, `replace: true`
    /// drops the endsys defaults); unmapped Kustomizations are layer 5.
    #[arg(long, value_name = "FILE")]
    pub layers: Option<PathBuf>,
    /// Flux sync path in --repo [default: the flux-instance values' instance.sync.path,
    /// else kubernetes/flux/cluster].
    #[arg(long)]
    pub sync_path: Option<String>,
    /// Deadline of flux_sync (FluxInstance Ready, source fetched, flux-system and
    /// cluster-meta Ready), in seconds.
    #[arg(long, default_value_t = 600, value_parser = super::bounds::secs)]
    pub flux_timeout: u64,
    /// Deadline for every layer to turn Ready once Flux runs, in seconds; on expiry `up`
    /// prints the blocking objects with their messages and exits non-zero.
    #[arg(long, default_value_t = 1800, value_parser = super::bounds::secs)]
    pub gitops_timeout: u64,
}

/// Reads the layer map: endsys defaults plus `--layers` overrides.
pub fn layer_map(file: Option<&std::path::Path>) -> Result<crate::gitops::LayerMap, CliError> {
    let mut layers = crate::gitops::LayerMap::endsys();
    if let Some(f) = file {
        layers
            .load_overrides(f)
            .map_err(|e| CliError::Usage(e.explain()))?;
    }
    Ok(layers)
}

impl RunArgs {
    pub fn options(&self, cluster: &str) -> UpOptions {
        let dir = state_dir(self.state_dir.as_deref(), cluster);
        let mut o = UpOptions::new(dir);
        o.new_cluster = self.new_cluster;
        o.until = self.until.last_step();
        o.node_deadline = Duration::from_secs(self.node_timeout);
        o
    }

    /// `--cert-fingerprint` as hostname → fingerprint, every hostname one of
    /// the definition's.
    pub fn fingerprints(
        &self,
        def: &crate::engine::Definition,
    ) -> Result<BTreeMap<String, String>, CliError> {
        super::bounds::fingerprint_pins(&self.cert_fingerprints, def).map_err(CliError::Usage)
    }

    /// The Kubernetes half from `--repo` (none without it).
    pub fn kube_half(
        &self,
        age_key: Option<&std::path::Path>,
    ) -> Result<Option<KubeHalf>, CliError> {
        let Some(repo) = &self.repo else {
            return Ok(None);
        };
        let mut half = KubeHalf::endsys(repo.clone());
        half.renderer = Renderer::Helm(self.helm.clone());
        half.crds = self
            .crds
            .iter()
            .map(|c| crate::charts::ManifestSource::parse(c))
            .collect();
        half.force_conflicts = self.force_conflicts;
        half.nodes_deadline = Duration::from_secs(self.kube_timeout);
        half.chart_deadline = Duration::from_secs(self.kube_timeout);
        half.layers = layer_map(self.layers.as_deref())?;
        half.sync_path = self.sync_path.clone();
        half.flux_deadline = Duration::from_secs(self.flux_timeout);
        half.gitops_deadline = Duration::from_secs(self.gitops_timeout);
        // A missing key only matters if a SOPS file exists (the step says so).
        half.identities = crate::sops::AgeIdentities::load(age_key)
            .ok()
            .map(std::sync::Arc::new);
        Ok(Some(half))
    }
}

pub fn flow_error(e: FlowError) -> CliError {
    if e.is_input_error() {
        CliError::Usage(e.explain())
    } else {
        CliError::Failed(e.explain())
    }
}

// ---- display ---------------------------------------------------------------------

/// Renders the event stream: NDJSON lines, an indicatif display on a terminal, or
/// plain lines otherwise. Ends when the emitter is dropped.
pub fn spawn_display(em: &Emitter, out: &Output) -> tokio::task::JoinHandle<()> {
    let rx = em.subscribe();
    let format = out.format;
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        match format {
            OutputFormat::Json => json_lines(rx).await,
            OutputFormat::Text if tty => bars(rx).await,
            OutputFormat::Text => plain(rx).await,
        }
    })
}

/// The next event, skipping over a lag; `None` once the emitter is gone.
pub(crate) async fn next(rx: &mut broadcast::Receiver<Event>) -> Option<Event> {
    loop {
        match rx.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn json_lines(mut rx: broadcast::Receiver<Event>) {
    use std::io::Write;
    let stdout = std::io::stdout();
    while let Some(e) = next(&mut rx).await {
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{}", e.to_json_line());
        let _ = lock.flush();
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Done { detail } => format!("done: {detail}"),
        Outcome::Skipped { reason } => format!("skipped: {reason}"),
        Outcome::Failed { error, .. } => format!("FAILED: {error}"),
    }
}

async fn plain(mut rx: broadcast::Receiver<Event>) {
    let mut last_wait: BTreeMap<Option<String>, String> = BTreeMap::new();
    while let Some(e) = next(&mut rx).await {
        let who = e.node.clone().map(|n| format!(" {n}")).unwrap_or_default();
        let t = e.elapsed_ms as f64 / 1000.0;
        let line = match &e.kind {
            EventKind::StepStarted { description } if e.node.is_none() => Some(format!(
                "[{t:7.2}s] layer {} {}: {description}",
                e.layer,
                e.step.name()
            )),
            EventKind::StepFinished {
                outcome,
                duration_ms,
            } => Some(format!(
                "[{t:7.2}s] {}{who}: {} ({:.2}s)",
                e.step.name(),
                outcome_text(outcome),
                *duration_ms as f64 / 1000.0
            )),
            EventKind::Waiting { what } => {
                if last_wait.get(&e.node) == Some(what) {
                    None
                } else {
                    last_wait.insert(e.node.clone(), what.clone());
                    Some(format!(
                        "[{t:7.2}s] {}{who}: waiting for {what}",
                        e.step.name()
                    ))
                }
            }
            EventKind::NodeState { state } => {
                Some(format!("[{t:7.2}s] {}{who}: {state}", e.step.name()))
            }
            EventKind::Progress { message } => {
                Some(format!("[{t:7.2}s] {}{who}: {message}", e.step.name()))
            }
            EventKind::Decision { key, value } => {
                Some(format!("[{t:7.2}s] {}: {key} = {value}", e.step.name()))
            }
            EventKind::LayerProgress { .. } => {
                Some(format!("[{t:7.2}s] {}", layer_line(&e).unwrap_or_default()))
            }
            EventKind::Warning { message } => Some(format!(
                "[{t:7.2}s] {}{who}: WARNING {message}",
                e.step.name()
            )),
            _ => None,
        };
        if let Some(l) = line {
            eprintln!("{l}");
        }
    }
}

/// One layer's progress as a display line.
fn layer_line(e: &Event) -> Option<String> {
    let EventKind::LayerProgress {
        title,
        ready,
        total,
        waiting,
    } = &e.kind
    else {
        return None;
    };
    let mut s = format!("layer {} {title}: {ready}/{total} Ready", e.layer);
    if !waiting.is_empty() {
        let shown: Vec<&str> = waiting.iter().take(4).map(String::as_str).collect();
        s.push_str(&format!("; waiting: {}", shown.join(", ")));
        if waiting.len() > 4 {
            s.push_str(&format!(" and {} more", waiting.len() - 4));
        }
    }
    Some(s)
}

async fn bars(mut rx: broadcast::Receiver<Event>) {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:<22} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let layer = multi.add(ProgressBar::new_spinner());
    layer.set_style(style.clone());
    layer.set_prefix("layer 1 foundation");
    layer.enable_steady_tick(Duration::from_millis(120));
    let mut nodes: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut layers: BTreeMap<u8, ProgressBar> = BTreeMap::new();
    while let Some(e) = next(&mut rx).await {
        if let Some(line) = layer_line(&e) {
            let b = layers.entry(e.layer).or_insert_with(|| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(format!("  layer {}", e.layer));
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            if let EventKind::LayerProgress { ready, total, .. } = &e.kind {
                if ready == total && *total > 0 {
                    b.finish_with_message(line);
                } else {
                    b.set_message(line);
                }
            }
            continue;
        }
        let bar = match &e.node {
            None => layer.clone(),
            Some(n) => nodes
                .entry(n.clone())
                .or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(style.clone());
                    b.set_prefix(format!("  {n}"));
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                })
                .clone(),
        };
        match &e.kind {
            EventKind::StepStarted { description } if e.node.is_none() => {
                let title = crate::gitops::LAYER_NAMES
                    .get(usize::from(e.layer.max(1) - 1))
                    .copied()
                    .unwrap_or("");
                layer.set_prefix(format!("layer {} {}", e.layer, title.to_lowercase()));
                bar.set_message(format!("{}: {description}", e.step.name()))
            }
            EventKind::StepFinished { outcome, .. } => {
                let msg = format!("{}: {}", e.step.name(), outcome_text(outcome));
                if e.node.is_none() {
                    let _ = multi.println(format!("layer {} {msg}", e.layer));
                }
                bar.set_message(msg);
            }
            EventKind::Waiting { what } => {
                bar.set_message(format!("{}: waiting for {what}", e.step.name()))
            }
            EventKind::NodeState { state } => {
                bar.set_message(format!("{}: {state}", e.step.name()))
            }
            EventKind::Progress { message } => {
                bar.set_message(format!("{}: {message}", e.step.name()))
            }
            EventKind::RunFinished { ok, .. } => {
                layer.finish_with_message(if *ok { "done" } else { "failed" });
                for b in nodes.values().chain(layers.values()) {
                    b.finish();
                }
            }
            _ => {}
        }
    }
}

// ---- verbs -------------------------------------------------------------------------

pub async fn up(args: UpArgs, out: &Output) -> Result<(), CliError> {
    let source = args.source();
    let def = source.definition().map_err(flow_error)?;
    let mut opts = args.run.options(&def.cluster);
    opts.kube = args.run.kube_half(args.age_key.as_deref())?;
    opts.fingerprints = args.run.fingerprints(&def)?;
    let _lock = super::lock_state(&opts.state_dir, "up", out)?;
    let em = Emitter::new();
    let ledger = Ledger::new();
    em.add_sink(ledger.sink());
    let display = spawn_display(&em, out);
    let result = crate::flows::up::up(&source as &dyn ClusterSource, &opts, &em).await;
    drop(em);
    let _ = display.await;
    let report = result.map_err(flow_error)?;
    if out.format == OutputFormat::Text {
        eprintln!();
        println!("{}", ledger.table());
        println!("talosconfig: {}", report.talosconfig.display());
        if let Some(k) = &report.kubeconfig {
            println!(
                "kubeconfig:  {}  (merge it: endsys-bootstrap kubeconfig --cluster {} --merge)",
                k.display(),
                def.cluster
            );
        }
        println!(
            "journal:     {}",
            Journal::<UpFacts>::up_path(&opts.state_dir).display()
        );
    }
    Ok(())
}

pub async fn plan(args: UpArgs, out: &Output) -> Result<(), CliError> {
    let source = args.source();
    let def = source.definition().map_err(flow_error)?;
    let mut opts = args.run.options(&def.cluster);
    opts.kube = args.run.kube_half(args.age_key.as_deref())?;
    opts.fingerprints = args.run.fingerprints(&def)?;
    let items = crate::flows::up::plan(&source as &dyn ClusterSource, &opts)
        .await
        .map_err(flow_error)?;
    // The GitOps graph as the repository describes it (the plan of layers 2–5).
    let graph = match &opts.kube {
        Some(half) => {
            let path = half
                .sync_path
                .clone()
                .unwrap_or_else(|| repo_sync_path(half));
            Some(walk_graph(&half.repo, &path, half.layers.clone()))
        }
        None => None,
    };
    match out.format {
        OutputFormat::Json => {
            for i in &items {
                println!(
                    "{}",
                    serde_json::json!({"event": "plan", "step": i.step, "layer": i.step.layer().number(), "node": i.node, "acts": i.acts, "action": i.action})
                );
            }
            match &graph {
                Some(Ok(g)) => println!("{}", graph_json(g)),
                Some(Err(e)) => println!(
                    "{}",
                    serde_json::json!({"event": "gitops_plan", "error": e.to_string()})
                ),
                None => {}
            }
        }
        OutputFormat::Text => {
            println!("plan for cluster {} (nothing changed):", def.cluster);
            let mut last = None;
            for i in &items {
                if last != Some(i.step) {
                    println!(
                        "layer {} {}: {}",
                        i.step.layer().number(),
                        i.step.name(),
                        i.step.describe()
                    );
                    last = Some(i.step);
                }
                let mark = if i.acts { "+" } else { "=" };
                let node = i
                    .node
                    .as_deref()
                    .map(|n| format!("{n}: "))
                    .unwrap_or_default();
                println!("  {mark} {node}{}", i.action);
            }
            match &graph {
                Some(Ok(g)) => print!("{}", crate::gitops::render_plan(g)),
                Some(Err(e)) => println!("GitOps graph: cannot be read: {}", e.explain()),
                None => println!("layers 2-5: no gitops repository given (--repo)"),
            }
            let n = items.iter().filter(|i| i.acts).count();
            println!("{n} action(s) would change the cluster; `up` runs them.");
        }
    }
    Ok(())
}

/// The repository graph as one NDJSON object: Kustomizations by layer with
/// their dependencies and file:line, then the problems.
fn graph_json(g: &crate::gitops::Graph) -> serde_json::Value {
    let order = g.topo_order();
    let layers: Vec<serde_json::Value> = (1..=5u8)
        .map(|l| {
            let ks: Vec<serde_json::Value> = order
                .iter()
                .filter(|k| g.layer_of(k) == l)
                .filter_map(|k| g.nodes.get(k))
                .map(|n| {
                    serde_json::json!({
                        "kustomization": n.key.to_string(),
                        "at": n.loc.to_string(),
                        "depends_on": n.depends_on.iter().map(|d| d.key.to_string()).collect::<Vec<_>>(),
                        "helm_releases": n.helm_releases.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({"layer": l, "title": crate::gitops::LAYER_NAMES[usize::from(l - 1)], "kustomizations": ks})
        })
        .collect();
    let problems: Vec<String> = g.problems.iter().map(|p| p.to_string()).collect();
    serde_json::json!({"event": "gitops_plan", "sync_path": g.sync_path, "layers": layers, "problems": problems})
}

pub async fn kubeconfig(args: KubeconfigArgs, out: &Output) -> Result<(), CliError> {
    let dir = state_dir(args.state_dir.as_deref(), &args.cluster);
    let file = dir.join("kubeconfig");
    if !file.exists() {
        return Err(CliError::Failed(format!(
            "{}: no kubeconfig yet\n  likely cause: `up` has not reached the kubeconfig step for this cluster (or its state is in another --state-dir)\n  next action:  run `up` for cluster {} first",
            file.display(),
            args.cluster
        )));
    }
    if !args.merge {
        out.result(
            &args.cluster,
            "kubeconfig",
            &file.display().to_string(),
            serde_json::json!({"path": file}),
        );
        return Ok(());
    }
    let target = args
        .into
        .unwrap_or_else(kubeconfig::default_kubeconfig_path);
    let changed = kubeconfig::merge_into(&file, &target, &args.cluster).map_err(flow_error)?;
    let ctx = format!("admin@{}", args.cluster);
    out.result(
        &args.cluster,
        "kubeconfig_merge",
        &format!(
            "{} context {ctx} in {}",
            if changed { "merged" } else { "unchanged:" },
            target.display()
        ),
        serde_json::json!({"path": target, "context": ctx, "changed": changed}),
    );
    Ok(())
}
