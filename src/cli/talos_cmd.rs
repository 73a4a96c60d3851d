//! `endsys-bootstrap talos …`: a small, honest subset of talosctl for when things
//! go wrong. Every call goes through the same client the flows use.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;

use super::{CliError, Output};
use crate::talos::client::{ResetOptions, SnapshotInfo};
use crate::talos::talosconfig::{resolve_path, write_private, Talosconfig};
use crate::talos::{probe_mode, ApplyMode, CallPolicy, Dial, NodeMode, TalosClient, TlsMode};

/// Where and how to connect.
#[derive(Debug, Args, Clone)]
pub struct ConnectArgs {
    /// Endpoint to dial (IP, IP:port or host). Defaults to the talosconfig context's first endpoint.
    #[arg(long, short = 'e', global = true)]
    pub endpoint: Option<String>,
    /// Node the endpoint should proxy the call to (`node` metadata). Defaults to the endpoint itself.
    #[arg(long, short = 'n', global = true)]
    pub node: Option<String>,
    /// Maintenance mode: no client certificate, server certificate not verified.
    #[arg(long, short = 'i', global = true)]
    pub insecure: bool,
    /// With --insecure: pin the node's certificate (base64 SHA-256 of its public key, as printed on the console).
    #[arg(long, global = true, requires = "insecure")]
    pub cert_fingerprint: Option<String>,
    /// talosconfig file [default: $TALOSCONFIG, then ~/.talos/config].
    #[arg(long, global = true, env = "TALOSCONFIG")]
    pub talosconfig: Option<PathBuf>,
    /// Context in the talosconfig [default: its current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Deadline of one attempt, in seconds.
    #[arg(long, global = true, default_value_t = 20, value_parser = super::bounds::secs)]
    pub timeout: u64,
    /// How long to keep retrying while a node is unreachable (rebooting), in seconds.
    #[arg(long, global = true, default_value_t = 30, value_parser = super::bounds::secs_or_zero)]
    pub retry_budget: u64,
}

#[derive(Debug, Args)]
pub struct TalosArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: TalosCommand,
}

#[derive(Debug, Subcommand)]
pub enum TalosCommand {
    /// Detect the node's mode from the TLS handshake alone (works on every Talos version).
    Mode,
    /// Talos version of the node (Talos 1.12 does not answer this in maintenance mode).
    Version,
    /// Apply a machine config file to the node.
    Apply {
        /// Machine config YAML (e.g. from `gen config`).
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        /// Ask the node what would change, apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bootstrap etcd on this control plane. Run once per cluster; `up` checks every node first.
    Bootstrap {
        /// Restore from the snapshot uploaded with `talos recover`.
        #[arg(long)]
        recover: bool,
        /// Skip the snapshot hash check (raw database copies only).
        #[arg(long, requires = "recover")]
        skip_hash_check: bool,
    },
    /// Fetch the admin kubeconfig (written 0600).
    Kubeconfig {
        /// Where to write it.
        #[arg(default_value = "kubeconfig")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// List etcd members as this control plane sees them.
    Members,
    /// List the node's services and their health.
    Services,
    /// Show the node's boot stage and what it waits for.
    Status,
    /// List the node's disks (model, serial, size).
    Disks,
    /// Stream an etcd snapshot to a file and verify its checksum.
    Snapshot { path: PathBuf },
    /// Upload an etcd snapshot for `bootstrap --recover`.
    Recover {
        snapshot: PathBuf,
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Reset the node (wipes data). Without --reboot it powers off afterwards.
    Reset {
        /// Cordon, drain and leave etcd first (never on a single control plane).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        graceful: bool,
        #[arg(long)]
        reboot: bool,
        /// Volume labels to wipe (STATE, EPHEMERAL); default wipes the whole system disk.
        #[arg(long, value_delimiter = ',')]
        wipe: Vec<String>,
        /// Required: resetting destroys the node's data.
        #[arg(long)]
        yes: bool,
    },
    /// Reboot the node.
    Reboot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl From<ModeArg> for ApplyMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => ApplyMode::Auto,
            ModeArg::NoReboot => ApplyMode::NoReboot,
            ModeArg::Reboot => ApplyMode::Reboot,
            ModeArg::Staged => ApplyMode::Staged,
            ModeArg::Try => ApplyMode::Try,
        }
    }
}

struct Target {
    client: TalosClient,
    endpoint: String,
    creds: Option<std::sync::Arc<crate::talos::Credentials>>,
}

fn connect(args: &ConnectArgs) -> Result<Target, CliError> {
    let policy = CallPolicy {
        attempt_timeout: Duration::from_secs(args.timeout.max(1)),
        retry_budget: Duration::from_secs(args.retry_budget),
        ..CallPolicy::default()
    };
    let path = resolve_path(args.talosconfig.as_deref());
    let (tls, ctx_endpoint, creds) = if args.insecure {
        (
            TlsMode::Insecure {
                fingerprint: args.cert_fingerprint.clone(),
            },
            None,
            None,
        )
    } else {
        let tc = Talosconfig::load(&path).map_err(|e| CliError::Talos(Box::new(e)))?;
        let ctx = tc
            .context(args.context.as_deref(), &path)
            .map_err(|e| CliError::Talos(Box::new(e)))?;
        let creds = ctx
            .credentials(&path)
            .map_err(|e| CliError::Talos(Box::new(e)))?;
        (
            TlsMode::Mutual(creds.clone()),
            ctx.endpoints.first().cloned(),
            Some(creds),
        )
    };
    let endpoint = args.endpoint.clone().or(ctx_endpoint).ok_or_else(|| {
        CliError::Usage(
            "no endpoint: pass --endpoint, or use a talosconfig whose context has endpoints".into(),
        )
    })?;
    let mut client =
        TalosClient::connect(&endpoint, tls, policy).map_err(|e| CliError::Talos(Box::new(e)))?;
    if let Some(node) = &args.node {
        if node != &endpoint {
            client = client.for_node(node);
        }
    }
    Ok(Target {
        client,
        endpoint,
        creds,
    })
}

pub async fn run(args: TalosArgs, out: &Output) -> Result<(), CliError> {
    // The file is checked before any node is dialled: its errors name the file.
    let apply_data = match &args.command {
        TalosCommand::Apply { file, .. } => Some(
            crate::machineconfig::config_file::read_machine_config(file)
                .map_err(|e| CliError::Config(Box::new(e)))?,
        ),
        _ => None,
    };
    let t = connect(&args.connect)?;
    let c = &t.client;
    let talos = |e| CliError::Talos(Box::new(e));
    match args.command {
        TalosCommand::Mode => {
            let dial = Dial::parse(&t.endpoint).map_err(talos)?;
            let mode = probe_mode(
                &dial,
                t.creds.as_ref(),
                Duration::from_secs(args.connect.timeout),
            )
            .await
            .map_err(talos)?;
            let text = match mode {
                NodeMode::Maintenance => "maintenance (no client certificate asked)".to_string(),
                NodeMode::Configured { our_ca: Some(true) } => {
                    "configured, serving our cluster CA".into()
                }
                NodeMode::Configured {
                    our_ca: Some(false),
                } => "configured with ANOTHER CA (different secrets bundle)".into(),
                NodeMode::Configured { our_ca: None } => {
                    "configured (asks for a client certificate)".into()
                }
            };
            out.result(
                &t.endpoint,
                "mode",
                &text,
                serde_json::json!({ "mode": text }),
            );
        }
        TalosCommand::Version => {
            let v = c.version().await.map_err(talos)?;
            out.result(
                c.label(),
                "version",
                &format!("Tag: {}  SHA: {}  OS/Arch: {}/{}  Platform: {}  Configured: {}", v.tag, v.sha, v.os, v.arch, v.platform, v.configured),
                serde_json::json!({"tag": v.tag, "sha": v.sha, "os": v.os, "arch": v.arch, "platform": v.platform, "configured": v.configured}),
            );
        }
        TalosCommand::Apply { mode, dry_run, .. } => {
            let data = apply_data.unwrap_or_default();
            let r = c
                .apply_configuration(&data, mode.into(), dry_run)
                .await
                .map_err(talos)?;
            for w in &r.warnings {
                out.warn(c.label(), w);
            }
            let text = if r.mode_details.is_empty() {
                "applied".to_string()
            } else {
                r.mode_details.clone()
            };
            out.result(c.label(), "apply", &text, serde_json::json!({"mode": r.mode, "details": r.mode_details, "warnings": r.warnings}));
        }
        TalosCommand::Bootstrap {
            recover,
            skip_hash_check,
        } => match c.bootstrap(recover, skip_hash_check).await {
            Ok(()) => out.result(
                c.label(),
                "bootstrap",
                "etcd bootstrap requested",
                serde_json::json!({"bootstrapped": true}),
            ),
            Err(e) if e.is_already_bootstrapped() => {
                out.warn(
                    c.label(),
                    "etcd is already bootstrapped on this node; check `talos members`",
                );
                out.result(
                    c.label(),
                    "bootstrap",
                    "already bootstrapped",
                    serde_json::json!({"bootstrapped": true, "already": true}),
                );
            }
            Err(e) => return Err(talos(e)),
        },
        TalosCommand::Kubeconfig { path, force } => {
            if path.exists() && !force {
                return Err(CliError::Usage(format!(
                    "{} exists; pass --force to overwrite",
                    path.display()
                )));
            }
            let kc = c.kubeconfig().await.map_err(talos)?;
            write_private(&path, &kc)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            out.result(
                c.label(),
                "kubeconfig",
                &format!("wrote {} (0600)", path.display()),
                serde_json::json!({"path": path}),
            );
        }
        TalosCommand::Members => {
            let members = c.etcd_members(true).await.map_err(talos)?;
            let mut text = format!(
                "{:<18} {:<16} {:<32} {}\n",
                "ID", "HOSTNAME", "PEER URLS", "LEARNER"
            );
            for m in &members {
                text.push_str(&format!(
                    "{:<18} {:<16} {:<32} {}\n",
                    m.id_hex(),
                    m.hostname,
                    m.peer_urls.join(","),
                    m.is_learner
                ));
            }
            let json: Vec<_> = members.iter().map(|m| serde_json::json!({"id": m.id_hex(), "hostname": m.hostname, "peer_urls": m.peer_urls, "is_learner": m.is_learner})).collect();
            out.result(
                c.label(),
                "members",
                text.trim_end(),
                serde_json::json!({"members": json}),
            );
        }
        TalosCommand::Services => {
            let services = c.service_list().await.map_err(talos)?;
            let mut text = format!(
                "{:<12} {:<12} {:<8} {}\n",
                "SERVICE", "STATE", "HEALTH", "LAST EVENT"
            );
            for s in &services {
                let h = if s.health_unknown {
                    "?"
                } else if s.healthy {
                    "OK"
                } else {
                    "FAIL"
                };
                text.push_str(&format!(
                    "{:<12} {:<12} {:<8} {}\n",
                    s.id, s.state, h, s.last_event
                ));
            }
            let json: Vec<_> = services.iter().map(|s| serde_json::json!({"id": s.id, "state": s.state, "healthy": s.healthy, "last_event": s.last_event})).collect();
            out.result(
                c.label(),
                "services",
                text.trim_end(),
                serde_json::json!({"services": json}),
            );
        }
        TalosCommand::Status => {
            let s = c.machine_status().await.map_err(talos)?;
            out.result(c.label(), "status", &s.summary(), serde_json::json!({"stage": format!("{:?}", s.stage).to_lowercase(), "ready": s.status.ready}));
        }
        TalosCommand::Disks => {
            let disks = c.disks().await.map_err(talos)?;
            let mut text = format!(
                "{:<10} {:<24} {:<20} {:>10}\n",
                "DEVICE", "MODEL", "SERIAL", "SIZE"
            );
            for d in &disks {
                text.push_str(&format!(
                    "{:<10} {:<24} {:<20} {:>10}\n",
                    d.name,
                    d.spec.model,
                    d.spec.serial,
                    human_size(d.spec.size)
                ));
            }
            let json: Vec<_> = disks.iter().map(|d| serde_json::json!({"name": d.name, "model": d.spec.model, "serial": d.spec.serial, "size": d.spec.size})).collect();
            out.result(
                c.label(),
                "disks",
                text.trim_end(),
                serde_json::json!({"disks": json}),
            );
        }
        TalosCommand::Snapshot { path } => {
            let SnapshotInfo { path, size, sha256 } =
                c.etcd_snapshot(&path).await.map_err(talos)?;
            out.result(
                c.label(),
                "snapshot",
                &format!(
                    "wrote {} ({size} bytes, sha256 {sha256}), checksum verified",
                    path.display()
                ),
                serde_json::json!({"path": path, "size": size, "sha256": sha256}),
            );
        }
        TalosCommand::Recover {
            snapshot,
            skip_hash_check,
        } => {
            c.etcd_recover(&snapshot, skip_hash_check)
                .await
                .map_err(talos)?;
            out.result(
                c.label(),
                "recover",
                "snapshot uploaded; now run `talos bootstrap --recover` on the same node",
                serde_json::json!({"uploaded": true}),
            );
        }
        TalosCommand::Reset {
            graceful,
            reboot,
            wipe,
            yes,
        } => {
            if !yes {
                return Err(CliError::Usage(
                    "reset wipes the node; pass --yes to confirm".into(),
                ));
            }
            let actor = c
                .reset(&ResetOptions {
                    graceful,
                    reboot,
                    wipe_labels: wipe,
                })
                .await
                .map_err(talos)?;
            out.result(
                c.label(),
                "reset",
                &format!("reset started (actor {actor})"),
                serde_json::json!({"actor_id": actor}),
            );
        }
        TalosCommand::Reboot => {
            let actor = c.reboot().await.map_err(talos)?;
            out.result(
                c.label(),
                "reboot",
                &format!("reboot started (actor {actor})"),
                serde_json::json!({"actor_id": actor}),
            );
        }
    }
    Ok(())
}

/// Sizes the way talosctl prints them (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.0} {}", UNITS[i])
}

/// Follows a stream until it ends (used by `lab` and tests for health output).
pub async fn drain_lines<S>(mut s: S, out: &Output, node: &str)
where
    S: futures::Stream<Item = Result<String, crate::talos::TalosError>> + Unpin,
{
    while let Some(item) = s.next().await {
        match item {
            Ok(line) => out.info(node, &line),
            Err(e) => {
                out.warn(node, &e.to_string());
                break;
            }
        }
    }
}
