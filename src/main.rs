//! endsys-bootstrap: arguments in, library calls out.

use clap::{Parser, Subcommand};
use endsys_bootstrap::cli::{lab_cmd, talos_cmd, up, CliError, Output, OutputFormat};

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
    /// Print the admin kubeconfig's path, or merge it into ~/.kube/config (--merge).
    Kubeconfig(up::KubeconfigArgs),
    /// Simulated Talos nodes on loopback, for trying the tool without hardware.
    #[command(subcommand)]
    Lab(LabCommand),
    /// The real `up` against simulated nodes on this machine, with a timing table.
    Demo(up::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Run simulated nodes (127.0.0.11, .12, …) until Ctrl-C.
    Serve(lab_cmd::ServeArgs),
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let out = Output { format: cli.output };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result: Result<(), CliError> = runtime.block_on(async {
        match cli.command {
            Command::Talos(args) => talos_cmd::run(args, &out).await,
            Command::Kubeconfig(args) => up::kubeconfig(args, &out).await,
            Command::Lab(LabCommand::Serve(args)) => lab_cmd::serve(args, &out).await,
            Command::Demo(args) => up::demo(args, &out).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
