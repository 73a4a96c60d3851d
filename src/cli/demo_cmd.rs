//! `demo`: the real `up` against the lab (simulated nodes and Kubernetes API on
//! loopback), with a timing table. Built with the `lab` feature only.

use std::path::PathBuf;

use super::up::{flow_error, spawn_display};
use super::{CliError, Output, OutputFormat};
use crate::demo::{run_demo, DemoOptions};
use crate::engine::{Emitter, Ledger};

/// `demo`: the whole flow against simulated nodes on this machine.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = super::bounds::node_count)]
    pub nodes: usize,
    /// How many of them are control planes.
    #[arg(long, default_value_t = 3)]
    pub controlplanes: usize,
    /// Multiplies every lab delay (1 ≈ real hardware in proportion; 0 = none).
    #[arg(long, default_value_t = 1.5, value_parser = super::bounds::time_scale)]
    pub time_scale: f64,
    /// Talos version the simulated nodes emulate (v1.12.x, v1.13.x or v1.14.x).
    #[arg(long, default_value = "v1.13.9")]
    pub talos_version: String,
    /// Keep the state (journal, talosconfig, kubeconfig, secrets) here instead of
    /// a temporary directory, which is removed when the demo ends.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Keep the temporary state directory (it holds a plaintext secrets bundle)
    /// and print where it is.
    #[arg(long, conflicts_with = "state_dir")]
    pub keep: bool,
    /// Third octet of the lab's loopback addresses (127.0.N.11 and up).
    #[arg(long, default_value_t = 0)]
    pub subnet: u8,
    /// Use a copy of this (plain) secrets bundle instead of generating one.
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// helm for the lab charts [default: helm on PATH; without one, the lab
    /// chart set's pre-rendered manifests go through the same apply/wait path].
    #[arg(long)]
    pub helm: Option<PathBuf>,
    /// Run `up` a second time afterwards; it must change nothing.
    #[arg(long)]
    pub rerun: bool,
}

pub async fn demo(args: DemoArgs, out: &Output) -> Result<(), CliError> {
    if args.nodes == 0 || args.controlplanes == 0 || args.controlplanes > args.nodes {
        return Err(CliError::Usage(format!(
            "--controlplanes must be between 1 and --nodes ({}), got {}",
            args.nodes, args.controlplanes
        )));
    }
    if !(args.time_scale >= 0.0 && args.time_scale.is_finite()) {
        return Err(CliError::Usage(format!(
            "--time-scale must be a number >= 0, got {}",
            args.time_scale
        )));
    }
    // Without --state-dir the demo's state, plaintext secrets included, lives in
    // a temporary directory removed on every way out (success, failure, Ctrl-C)
    // unless --keep.
    let temp = match &args.state_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("endsys-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::Failed(format!(
                        "{}: cannot create a temporary directory: {e}",
                        std::env::temp_dir().display()
                    ))
                })?,
        ),
    };
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()));
    let opts = DemoOptions {
        nodes: args.nodes,
        controlplanes: args.controlplanes,
        time_scale: args.time_scale,
        talos_version: args.talos_version,
        first_ip: std::net::Ipv4Addr::new(127, 0, args.subnet, 11),
        state_dir,
        secrets_from: args.secrets,
        helm: args.helm,
        rerun: args.rerun,
        ..DemoOptions::default()
    };
    if out.format == OutputFormat::Text {
        eprintln!(
            "demo: {} simulated Talos node(s) ({} control plane(s)) on 127.0.{}.11+, time scale {}; `up` runs against them over gRPC/TLS as on metal,\n      then the Kubernetes half (namespaces, SOPS secrets, CRDs, Cilium, nodes Ready, charts) against the lab's Kubernetes API,\n      then Flux (age key check, flux-operator + FluxInstance, sync) and the watch until all five layers are Ready.\n      Writing talconfig.yaml and a new secrets bundle first (RSA-4096: a few seconds).",
            opts.nodes, opts.controlplanes, args.subnet, opts.time_scale
        );
    }
    let em = Emitter::new();
    let ledger = Ledger::new();
    em.add_sink(ledger.sink());
    let display = spawn_display(&em, out);
    let result = run_demo(&opts, &em).await;
    drop(em);
    let _ = display.await;
    let kept = match temp {
        Some(t) if args.keep => Some(t.keep()),
        Some(t) => {
            let where_ = t.path().display().to_string();
            drop(t);
            out.info(
                "demo",
                &format!("removed the demo's state directory {where_} (secrets included); --keep keeps it"),
            );
            None
        }
        None => args.state_dir.clone(),
    };
    if let (Err(_), Some(dir)) = (&result, &kept) {
        out.info("demo", &format!("state kept in {}", dir.display()));
    }
    let report = result.map_err(flow_error)?;
    match out.format {
        OutputFormat::Text => {
            eprintln!();
            println!("{}", report.summary());
            if let Some(dir) = &kept {
                println!("state kept in {}", dir.display());
            }
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "event": "demo_report",
                "wall_ms": report.wall.as_millis() as u64,
                "critical_path_ms": report.critical_path.as_millis() as u64,
                "overhead_ms": report.overhead().as_millis() as u64,
                "peak_rss_bytes": report.peak_rss,
                "overhead_per_step_ms": report.overhead.steps.iter().map(|s| (s.step.name().to_string(), serde_json::json!(s.overhead().as_millis() as u64))).collect::<serde_json::Map<_, _>>(),
                "kube_half_ms": report.kube_wall.as_millis() as u64,
                "kube_half_overhead_ms": report.kube_overhead().as_millis() as u64,
                "lag_p95_ms": report.lag_p95.as_millis() as u64,
                "gitops_ms": report.gitops_wall.as_millis() as u64,
                "gitops_critical_path_ms": report.gitops_critical_path.as_millis() as u64,
                "layers_ready_ms": report.layers_ready.iter().map(|(l, d)| serde_json::json!({"layer": l, "ms": d.as_millis() as u64})).collect::<Vec<_>>(),
                "nodes": opts.nodes,
                "state_dir": kept,
            })
        ),
    }
    Ok(())
}
