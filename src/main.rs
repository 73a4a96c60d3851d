//! endsys-bootstrap: arguments in, library calls out.

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

use endsys_bootstrap::cli::{
    day2, docs, drift_cmd, gen, migrate_cmd, process, recover_cmd, talos_cmd, up, upgrade_cmd,
    CliError, Output, OutputFormat,
};
#[cfg(feature = "lab")]
use endsys_bootstrap::cli::{demo_cmd, lab_cmd};
use endsys_bootstrap::machineconfig::Vars;

/// Provision and bootstrap Talos Linux clusters on bare metal, then hand off to Flux.
#[derive(Debug, Parser)]
#[command(name = "endsys-bootstrap", version, about, long_about = None)]
struct Cli {
    /// Output format: human text, or NDJSON (one JSON object per line).
    #[arg(long, short = 'o', value_enum, global = true, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Low-level Talos API calls (version, apply, bootstrap, members, …) for when things go wrong.
    Talos(talos_cmd::TalosArgs),
    /// Generate secrets or machine configs from a talhelper cluster definition.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Check the cluster definition and the configs it renders (talosctl's metal checks,
    /// cluster-level checks, the upstream schema). Changes nothing.
    Validate {
        #[command(flatten)]
        args: gen::ValidateArgs,
        /// age identity file for SOPS-encrypted secrets.
        #[arg(long)]
        age_key: Option<PathBuf>,
    },
    /// Rewrite the talhelper patches for a new Talos config contract (`--to v1.14`): a
    /// diff by default, `--write` to change the files; refused unless the result
    /// validates and describes the same cluster field by field.
    Migrate(migrate_cmd::MigrateArgs),
    /// From maintenance-mode nodes to all five layers Ready (Talos, bootstrap charts, Flux,
    /// then Flux's own layers, watched), resumable at any point.
    Up(up::UpArgs),
    /// Print what `up` would do now, then the GitOps graph layer by layer (dependsOn
    /// cycles and missing Kustomizations reported with file:line); with
    /// `node reimage|rejoin NAME`, a node operation's steps and the node receiving
    /// each call; with `upgrade talos|kubernetes`, an upgrade's order, gates and
    /// calls per node. Changes nothing.
    Plan(day2::PlanArgs),
    /// The GitOps layers as the cluster sees them now: n of m Flux objects Ready per layer,
    /// and what blocks (message, what it waits on, what it blocks). Exit 1 unless all Ready.
    Status(drift_cmd::StatusArgs),
    /// Rendered vs running machine config per node and document (unified diff,
    /// secrets shown as `<redacted sha256:…>`), with Talos's own dry-run verdict:
    /// unchanged, live, reboot, reinstall, staged-pending. Exit 0 when nothing
    /// differs, 2 when something does, 1 on failure (a CI drift gate);
    /// `--output json`: one object per node and document.
    Diff(drift_cmd::DiffArgs),
    /// Push the definition to the running cluster without taking it down: the
    /// hardware gate and a dry run per node first; live changes in parallel
    /// (NO_REBOOT); changes that need a reboot rolled one node at a time, control
    /// planes first, each behind the gates (quorum, layers, etcd leader handed
    /// over, drain, STAGED, Reboot, back by boot ID, etcd member, Ready,
    /// uncordon). Journaled and resumable; `plan apply` shows order and gates.
    Apply(drift_cmd::ApplyArgs),
    /// etcd: verified backups (snapshot + sidecar), status per control plane.
    #[command(subcommand)]
    Etcd(day2::EtcdCommand),
    /// Day-2 node operations: reimage a live node, rejoin a dead or replaced one.
    #[command(subcommand)]
    Node(day2::NodeCommand),
    /// Rolling upgrades, node by node, gated on etcd quorum, drains, the node
    /// coming back on the new version, and the GitOps layers. Resumable.
    #[command(subcommand)]
    Upgrade(upgrade_cmd::UpgradeCommand),
    /// Print the admin kubeconfig's path, or merge it into ~/.kube/config (--merge).
    Kubeconfig(up::KubeconfigArgs),
    /// Simulated Talos nodes on loopback, for trying the tool without hardware.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(LabCommand),
    /// The real `up` against simulated nodes on this machine, with a timing table.
    #[cfg(feature = "lab")]
    Demo(demo_cmd::DemoArgs),
    /// Rebuild after a disaster: restore an etcd snapshot onto wiped nodes (verified,
    /// resumable), or a full `up` with the existing secrets; Velero restores per app.
    Recover(recover_cmd::RecoverArgs),
    /// Print a shell completion script (install: see README, "Shell completions and man page").
    ///
    /// bash: `endsys-bootstrap completions bash > ~/.local/share/bash-completion/completions/endsys-bootstrap`;
    /// zsh: into a folder on `$fpath` as `_endsys-bootstrap`; fish: `~/.config/fish/completions/endsys-bootstrap.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per verb into a folder (`--out-dir`).
    ///
    /// `endsys-bootstrap man --out-dir ~/.local/share/man/man1` then `man endsys-bootstrap-up`.
    Man {
        /// Write `endsys-bootstrap.1` and one `endsys-bootstrap-VERB.1` per verb here
        /// instead of printing the top page.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum GenCommand {
    /// Create a new secrets bundle (refuses to overwrite one). A `*.sops.yaml` target is
    /// encrypted for the recipients of the matching `.sops.yaml` creation rule.
    Secrets(gen::GenSecretsArgs),
    /// Render one machine config per node plus a talosconfig (files 0600).
    Config {
        #[command(flatten)]
        args: gen::GenConfigArgs,
        /// age identity file for SOPS-encrypted secrets [default: $SOPS_AGE_KEY_FILE, then ~/.config/sops/age/keys.txt].
        #[arg(long)]
        age_key: Option<PathBuf>,
    },
}

#[cfg(feature = "lab")]
#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Run simulated nodes (127.0.0.11, .12, …) until Ctrl-C.
    Serve(lab_cmd::ServeArgs),
    /// Walk the raw Talos API calls of a bootstrap (probe, apply, wait for mTLS,
    /// bootstrap, members, kubeconfig) against a fresh lab, one by one, with timings.
    Walkthrough(lab_cmd::LabArgs),
}

/// The verb as the operator typed it, for messages.
fn verb_of(c: &Command) -> &'static str {
    match c {
        Command::Talos(_) => "talos",
        Command::Gen(GenCommand::Secrets(_)) => "gen secrets",
        Command::Gen(GenCommand::Config { .. }) => "gen config",
        Command::Validate { .. } => "validate",
        Command::Migrate(_) => "migrate",
        Command::Up(_) => "up",
        Command::Plan(_) => "plan",
        Command::Status(_) => "status",
        Command::Diff(_) => "diff",
        Command::Apply(_) => "apply",
        Command::Etcd(_) => "etcd",
        Command::Node(day2::NodeCommand::Reimage(_)) => "node reimage",
        Command::Node(day2::NodeCommand::Rejoin(_)) => "node rejoin",
        Command::Upgrade(upgrade_cmd::UpgradeCommand::Talos(_)) => "upgrade talos",
        Command::Upgrade(upgrade_cmd::UpgradeCommand::Kubernetes(_)) => "upgrade kubernetes",
        Command::Kubeconfig(_) => "kubeconfig",
        #[cfg(feature = "lab")]
        Command::Lab(LabCommand::Serve(_)) => "lab serve",
        #[cfg(feature = "lab")]
        Command::Lab(LabCommand::Walkthrough(_)) => "lab walkthrough",
        #[cfg(feature = "lab")]
        Command::Demo(_) => "demo",
        Command::Recover(_) => "recover",
        Command::Completions { .. } => "completions",
        Command::Man { .. } => "man",
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = process::wants_json(&raw);
    process::exit_on_panic(json);
    let cli = match Cli::try_parse_from(&raw) {
        Ok(c) => c,
        Err(e) if json && e.use_stderr() => process::exit_with_json_usage_error(&e),
        Err(e) => e.exit(),
    };
    let out = Output { format: cli.output };
    let verb = verb_of(&cli.command);
    // `lab serve` runs until Ctrl-C by design: that is its normal end.
    #[cfg(feature = "lab")]
    let watch_signals = !matches!(cli.command, Command::Lab(LabCommand::Serve(_)));
    #[cfg(not(feature = "lab"))]
    let watch_signals = true;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            let e = CliError::Failed(format!("cannot start the async runtime: {e}"));
            process::report(&e, &out);
            std::process::exit(1);
        }
    };
    let result: Result<(), CliError> = runtime.block_on(async {
        let work = run(cli.command, out);
        tokio::pin!(work);
        if !watch_signals {
            return work.await;
        }
        tokio::select! {
            r = &mut work => r,
            signal = process::signalled() => {
                // The run's lock is still held here (`work` is alive): its open
                // run records are this process's to close.
                let journals = endsys_bootstrap::engine::lock::held()
                    .iter()
                    .flat_map(|d| endsys_bootstrap::engine::journal::close_interrupted(d, signal))
                    .collect();
                Err(CliError::Interrupted { signal, verb: verb.to_string(), journals })
            }
        }
    });
    if let Err(e) = result {
        process::report(&e, &out);
        std::process::exit(e.exit_code());
    }
}

async fn run(command: Command, out: Output) -> Result<(), CliError> {
    match command {
        Command::Talos(args) => talos_cmd::run(args, &out).await,
        Command::Gen(GenCommand::Secrets(args)) => gen::run_gen_secrets_cli(&args).map(|p| {
            out.result(
                "gen",
                "secrets",
                &format!("wrote {} (0600)", p.display()),
                serde_json::json!({"path": p}),
            );
        }),
        Command::Gen(GenCommand::Config { mut args, age_key }) => {
            args.definition.age_key = age_key.clone();
            let secrets = gen::secrets_input(&args.definition, age_key.as_deref());
            secrets.and_then(|s| {
                let report = gen::run_gen_config(&args, &s, Vars::from_process_env())
                    .map_err(|e| CliError::Config(Box::new(e)))?;
                for w in &report.warnings {
                    out.warn(&w.subject, &w.message);
                }
                for f in &report.files {
                    out.result(
                        "gen",
                        "config",
                        &format!("wrote {} (0600)", f.display()),
                        serde_json::json!({"path": f}),
                    );
                }
                Ok(())
            })
        }
        Command::Validate { mut args, age_key } => {
            args.definition.age_key = age_key.clone();
            let secrets = gen::secrets_input(&args.definition, age_key.as_deref());
            secrets.and_then(|s| {
                let findings = gen::run_validate(&args, &s, Vars::from_process_env())
                    .map_err(|e| CliError::Config(Box::new(e)))?;
                for w in &findings {
                    out.warn(&w.subject, &w.message);
                }
                out.result(
                    "validate",
                    "validate",
                    "definition and rendered configs are valid",
                    serde_json::json!({"warnings": findings.len()}),
                );
                Ok(())
            })
        }
        Command::Migrate(args) => migrate_cmd::run(args, &out),
        Command::Up(args) => up::up(args, &out).await,
        Command::Plan(args) => match args.what {
            Some(what) => day2::plan(what, &out).await,
            None => up::plan(args.up, &out).await,
        },
        Command::Status(args) => drift_cmd::status(args, &out).await,
        Command::Diff(args) => drift_cmd::diff(args, &out).await,
        Command::Apply(args) => drift_cmd::apply(args, &out).await,
        Command::Etcd(cmd) => day2::etcd(cmd, &out).await,
        Command::Node(cmd) => day2::node(cmd, &out).await,
        Command::Upgrade(cmd) => upgrade_cmd::upgrade(cmd, &out).await,
        Command::Kubeconfig(args) => up::kubeconfig(args, &out).await,
        #[cfg(feature = "lab")]
        Command::Lab(LabCommand::Serve(args)) => lab_cmd::serve(args, &out).await,
        #[cfg(feature = "lab")]
        Command::Lab(LabCommand::Walkthrough(args)) => lab_cmd::demo(args, &out).await,
        #[cfg(feature = "lab")]
        Command::Demo(args) => demo_cmd::demo(args, &out).await,
        Command::Recover(args) => recover_cmd::run(args, &out).await,
        Command::Completions { shell } => docs::print(&docs::completions(Cli::command(), shell)),
        Command::Man { out_dir: None } => {
            docs::man_page(Cli::command()).and_then(|page| docs::print(&page))
        }
        Command::Man { out_dir: Some(dir) } => {
            docs::write_man_pages(Cli::command(), &dir).map(|pages| {
                out.result(
                    "man",
                    "pages",
                    &format!("wrote {} pages into {}", pages.len(), dir.display()),
                    serde_json::json!({"dir": dir, "pages": pages}),
                );
            })
        }
    }
}
