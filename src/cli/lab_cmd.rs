//! `lab serve` (simulated nodes until Ctrl-C) and `demo` (a walkthrough of the
//! Talos API calls against a fresh lab).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use super::{CliError, Output};
use crate::talos::resources::{MachineStage, WatchEventKind};
use crate::talos::talosconfig::{Talosconfig, ADMIN_ROLE};
use crate::talos::wait::{wait_for_status, WaitProgress};
use crate::talos::{probe_mode, ApplyMode, CallPolicy, Dial, NodeMode, TalosClient, TlsMode};
use endsys_core::Doctor;
use endsys_lab::identity::LabIdentity;
use endsys_lab::{Lab, LabOptions, NodeState};

/// Options shared by `lab serve` and `demo`.
#[derive(Debug, Args, Clone)]
pub struct LabArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 3, value_parser = super::bounds::node_count)]
    pub nodes: usize,
    /// How many of them are control planes (the rest are workers).
    #[arg(long, default_value_t = 3)]
    pub controlplanes: usize,
    /// Address of the first node; the others follow (127.0.0.11, .12, …).
    #[arg(long, default_value = "127.0.0.11")]
    pub first_ip: Ipv4Addr,
    /// apid port on every node.
    #[arg(long, default_value_t = 50000)]
    pub port: u16,
    /// Talos version to emulate: v1.12.x (maintenance has no Version API), v1.13.x or v1.14.x (config contract 1.14).
    #[arg(long, default_value = "v1.13.9")]
    pub talos_version: String,
    /// Multiplies every simulated delay (1.0 ≈ real hardware, 0 = instant).
    #[arg(long, default_value_t = 0.25, value_parser = super::bounds::time_scale)]
    pub time_scale: f64,
}

impl LabArgs {
    fn options(&self) -> Result<LabOptions, CliError> {
        if self.controlplanes == 0 || self.controlplanes > self.nodes {
            return Err(CliError::Usage(format!(
                "--controlplanes must be between 1 and --nodes ({}), got {}",
                self.nodes, self.controlplanes
            )));
        }
        Ok(LabOptions {
            nodes: self.nodes,
            controlplanes: self.controlplanes,
            first_ip: self.first_ip,
            port: self.port,
            talos_version: self.talos_version.clone(),
            time_scale: self.time_scale,
            hardware: Vec::new(),
            node_versions: Vec::new(),
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Where to write an admin talosconfig once a node has been configured.
    #[arg(long, default_value = "lab-talosconfig")]
    pub talosconfig_out: PathBuf,
}

fn lab_err(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("lab: {e}"))
}

/// Runs the lab until Ctrl-C; writes a talosconfig when the first node gets its config.
pub async fn serve(args: ServeArgs, out: &Output) -> Result<(), CliError> {
    let lab = Lab::start(args.lab.options()?).await.map_err(lab_err)?;
    for n in lab.nodes() {
        out.info(
            &n.addr().to_string(),
            &format!(
                "simulated Talos {} node in maintenance mode",
                args.lab.talos_version
            ),
        );
    }
    out.info(
        "lab",
        &format!(
            "try: endsys-bootstrap talos mode --insecure --endpoint {}   (Ctrl-C stops the lab)",
            lab.nodes()[0].ip()
        ),
    );
    // Fan every node's state channel into one queue.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (idx, node) in lab.nodes().iter().enumerate() {
        let mut state = node.watch_state();
        let tx = tx.clone();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let s = *state.borrow_and_update();
                if tx.send((idx, s)).is_err() {
                    break;
                }
            }
        });
    }
    let mut written = false;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            msg = rx.recv() => {
                let Some((idx, state)) = msg else { break };
                let node = &lab.nodes()[idx];
                out.info(&node.addr().to_string(), &format!("{state:?}"));
                if written || state != NodeState::Running {
                    continue;
                }
                if let Some(ca) = node.os_ca() {
                    let endpoints: Vec<String> = lab
                        .nodes()
                        .iter()
                        .filter(|n| n.is_control_plane())
                        .map(|n| n.ip().to_string())
                        .collect();
                    let tc = Talosconfig::admin("lab", &ca, endpoints.clone(), endpoints).map_err(lab_err)?;
                    tc.save(&args.talosconfig_out)
                        .map_err(|e| CliError::Talos(Box::new(e)))?;
                    out.info(
                        "lab",
                        &format!(
                            "wrote {} (admin talosconfig for the applied CA)",
                            args.talosconfig_out.display()
                        ),
                    );
                    written = true;
                }
            }
        }
    }
    lab.shutdown().await;
    Ok(())
}

/// The low-level walkthrough: maintenance probe, apply, wait for mTLS, bootstrap,
/// members, kubeconfig — the calls `up` makes, one by one, with timings.
pub async fn demo(args: LabArgs, out: &Output) -> Result<(), CliError> {
    let started = Instant::now();
    let talos = |e| CliError::Talos(Box::new(e));
    let lab = Lab::start(args.options()?).await.map_err(lab_err)?;
    let identity = LabIdentity::generate("demo").map_err(lab_err)?;
    let ips: Vec<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let endpoint = ips[0].clone();
    let creds = identity.credentials(&[ADMIN_ROLE]).map_err(lab_err)?;
    let policy = CallPolicy::default();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    out.info(
        "demo",
        &format!(
            "lab of {} simulated nodes ({} control planes), time scale {}",
            ips.len(),
            args.controlplanes,
            args.time_scale
        ),
    );

    // 1. Classify every node from the TLS handshake; read its hardware.
    let t = Instant::now();
    for ip in &ips {
        let dial = Dial::parse(ip).map_err(talos)?;
        let mode = probe_mode(&dial, Some(&creds), Duration::from_secs(5))
            .await
            .map_err(talos)?;
        let c = TalosClient::connect(ip, TlsMode::Insecure { fingerprint: None }, policy)
            .map_err(talos)?;
        let version = match c.version().await {
            Ok(v) => v.tag,
            Err(e) => format!("n/a ({})", e.likely_cause()),
        };
        let disks = c.disks().await.map_err(talos)?;
        let disk_list: Vec<String> = disks
            .iter()
            .map(|d| format!("{} {} {}", d.name, d.spec.model, d.spec.serial))
            .collect();
        out.info(
            ip,
            &format!(
                "{} | Talos {version} | disks: {}",
                describe(&mode),
                disk_list.join("; ")
            ),
        );
    }
    phases.push(("probe", t.elapsed()));

    // 2. Apply configs in parallel over the insecure maintenance connection.
    let t = Instant::now();
    let applies = ips.iter().enumerate().map(|(i, ip)| {
        let role = if i < args.controlplanes {
            "controlplane"
        } else {
            "worker"
        };
        let config = identity.machine_config(&format!("node{}", i + 1), role, &endpoint);
        async move {
            let config = config.map_err(lab_err)?;
            let c = TalosClient::connect(ip, TlsMode::Insecure { fingerprint: None }, policy)
                .map_err(talos)?;
            let r = c
                .apply_configuration(config.as_bytes(), ApplyMode::Auto, false)
                .await
                .map_err(talos)?;
            Ok::<_, CliError>((ip.clone(), role, r))
        }
    });
    for r in futures::future::join_all(applies).await {
        let (ip, role, r) = r?;
        out.info(
            &ip,
            &format!(
                "applied {role} config: {}",
                if r.mode_details.is_empty() {
                    "ok".into()
                } else {
                    r.mode_details
                }
            ),
        );
    }
    phases.push(("apply", t.elapsed()));

    // 3. Wait for every node to install, reboot and serve mutual TLS.
    let t = Instant::now();
    let waits = ips.iter().map(|ip| {
        let creds = creds.clone();
        async move {
            let c = TalosClient::connect(ip, TlsMode::Mutual(creds), policy).map_err(talos)?;
            let mut last = String::new();
            wait_for_status(
                &c,
                "running",
                Duration::from_secs(120),
                |s| s.stage == MachineStage::Running,
                |p| {
                    let line = match p {
                        WaitProgress::Status(s) => s.summary(),
                        WaitProgress::Away(e) => format!("away: {}", e.likely_cause()),
                    };
                    if line != last {
                        out.info(ip, &line);
                        last = line;
                    }
                },
            )
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
            Ok::<_, CliError>(())
        }
    });
    for r in futures::future::join_all(waits).await {
        r?;
    }
    phases.push(("wait for mTLS", t.elapsed()));

    // 4. Bootstrap etcd once, then watch the others join.
    let t = Instant::now();
    let first =
        TalosClient::connect(&endpoint, TlsMode::Mutual(creds.clone()), policy).map_err(talos)?;
    first.bootstrap(false, false).await.map_err(talos)?;
    out.info(&endpoint, "etcd bootstrap requested");
    let cps = &ips[..args.controlplanes];
    for ip in cps {
        let c = first.for_node(ip);
        let mut events = Box::pin(
            c.watch("etcd", "EtcdMembers.etcd.talos.dev", Some("local"))
                .await
                .map_err(talos)?,
        );
        use futures::StreamExt;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(talos)?;
            // A missing resource first arrives as a DESTROYED tombstone.
            if matches!(ev.kind, WatchEventKind::Created | WatchEventKind::Updated) {
                out.info(ip, "joined etcd");
                break;
            }
        }
    }
    phases.push(("etcd", t.elapsed()));
    let members = first.etcd_members(false).await.map_err(talos)?;
    for m in &members {
        out.info(
            &endpoint,
            &format!(
                "member {} {} {}",
                m.id_hex(),
                m.hostname,
                m.peer_urls.join(",")
            ),
        );
    }
    let again = first
        .for_node(&cps[cps.len() - 1])
        .bootstrap(false, false)
        .await;
    if let Err(e) = again {
        if e.is_already_bootstrapped() {
            out.info(&cps[cps.len() - 1], "a second Bootstrap is refused: etcd data directory is not empty (exactly-once holds)");
        }
    }

    // 5. Kubeconfig.
    let t = Instant::now();
    let kc = first.kubeconfig().await.map_err(talos)?;
    phases.push(("kubeconfig", t.elapsed()));
    out.info(
        &endpoint,
        &format!("kubeconfig: {} bytes, context admin@demo", kc.len()),
    );

    out.info("demo", "phase timings:");
    for (name, d) in &phases {
        out.info(
            "demo",
            &format!("  {name:<14} {:>8.0} ms", d.as_secs_f64() * 1000.0),
        );
    }
    out.info(
        "demo",
        &format!(
            "  {:<14} {:>8.0} ms",
            "total",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    lab.shutdown().await;
    Ok(())
}

fn describe(mode: &NodeMode) -> &'static str {
    match mode {
        NodeMode::Maintenance => "maintenance",
        NodeMode::Configured { our_ca: Some(true) } => "configured (our CA)",
        NodeMode::Configured {
            our_ca: Some(false),
        } => "configured with ANOTHER CA",
        NodeMode::Configured { our_ca: None } => "configured",
    }
}
