//! `recover`: arguments and output. The flow lives in [`crate::flows::recover`]
//! and [`crate::flows::velero`].

use std::path::PathBuf;
use std::time::Duration;

use super::up::{flow_error, spawn_display, RunArgs};
use super::{CliError, Output, OutputFormat};
use crate::engine::talhelper::TalhelperSource;
use crate::engine::{ClusterSource, Doctor, Emitter, Journal, Ledger};
use crate::flows::recover::{recover, RecoverFacts, RecoverOptions};
use crate::flows::velero::{self, VeleroOptions};

/// Rebuild the cluster after a disaster: from an etcd snapshot, or (without
/// --snapshot) as a full `up` with the existing secrets bundle.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
With --snapshot, in this order:
  1. the snapshot is checked (size, SHA-256 trailer, FILE.json sidecar checksum)
     before any node is touched; a bad file is refused;
  2. every node must be in Talos maintenance mode; configured nodes are listed
     and refused, unless --reset-nodes (wipes STATE and EPHEMERAL, reboots them
     into maintenance);
  3. configs are applied from the SAME secrets bundle (your talosconfig and
     kubeconfig stay valid); once every node runs its final config, the
     snapshot is uploaded to the first control plane (EtcdRecover) and
     Bootstrap{recover_etcd} is called there, exactly once; the other control
     planes join;
  4. the restore is verified in Kubernetes (namespaces and Kustomizations
     recorded in the sidecar are back; without a sidecar: not an empty cluster);
  5. the restored control plane is rebooted once and checked again;
  6. the rest of `up` runs against the restored state (changes nothing that is
     already there);
  7. the Velero runbook per app is printed; --velero-restore NS… runs it.

Killed at any point, run the same command again: it resumes from
<state-dir>/recover.json, never resets a node it already configured and never
bootstraps etcd twice.

Examples:
  endsys-bootstrap recover --snapshot backups/etcd-2026-05-01.db
  endsys-bootstrap recover --snapshot backups/etcd-2026-05-01.db --reset-nodes
  endsys-bootstrap recover --snapshot F --repo . --velero-restore immich n8n")]
pub struct RecoverArgs {
    #[command(flatten)]
    pub definition: super::gen::DefinitionArgs,
    /// age identity file for SOPS-encrypted secrets [default: $SOPS_AGE_KEY_FILE, then ~/.config/sops/age/keys.txt].
    #[arg(long)]
    pub age_key: Option<PathBuf>,
    /// etcd snapshot to restore (from `etcd backup` or `talosctl etcd snapshot`);
    /// its sidecar FILE.json, when present, is checked and used to verify the restore.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Reset nodes that are not in maintenance mode (wipe STATE and EPHEMERAL,
    /// reboot into maintenance) instead of refusing. Destroys what they run.
    #[arg(long)]
    pub reset_nodes: bool,
    /// Do not reboot the restored control plane to check the data survives a reboot.
    #[arg(long)]
    pub skip_reboot_check: bool,
    /// After the rebuild, restore these app namespaces from their latest Velero
    /// backup (suspend their Flux Kustomizations, Restore, wait Completed, resume).
    /// Needs Velero's CRDs in the cluster.
    #[arg(long, num_args = 1.., value_name = "NAMESPACE")]
    pub velero_restore: Vec<String>,
    /// Namespace of Velero's Backups and Restores.
    #[arg(long, default_value = "velero")]
    pub velero_namespace: String,
    #[command(flatten)]
    pub run: RunArgs,
}

pub async fn run(args: RecoverArgs, out: &Output) -> Result<(), CliError> {
    if args.run.new_cluster {
        return Err(CliError::Usage(
            "recover never creates new secrets (--new-cluster): it rebuilds the cluster with the existing bundle so talosconfig, kubeconfig and workloads keep working; use `up --new-cluster` for a new cluster".into(),
        ));
    }
    let mut source = TalhelperSource::new(&args.definition.config, &args.definition.secrets_path());
    source.paths = args.definition.paths();
    source.age_key = args.age_key.clone();
    let def = source.definition().map_err(flow_error)?;
    let mut up = args.run.options(&def.cluster);
    up.kube = args.run.kube_half(args.age_key.as_deref())?;
    up.fingerprints = args.run.fingerprints(&def)?;
    let _lock = super::lock_state(&up.state_dir, "recover", out)?;
    let mut opts = RecoverOptions::new(up);
    opts.snapshot = args.snapshot.clone();
    opts.reset_nodes = args.reset_nodes;
    opts.reboot_check = !args.skip_reboot_check;
    let em = Emitter::new();
    let ledger = Ledger::new();
    em.add_sink(ledger.sink());
    let display = spawn_display(&em, out);
    let result = recover(&source as &dyn ClusterSource, &opts, &em).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            drop(em);
            let _ = display.await;
            return Err(flow_error(e));
        }
    };
    let kubeconfig = opts.up.state_dir.join("kubeconfig");
    let client = match std::fs::read(&kubeconfig) {
        Ok(bytes) => crate::kube::client_from_kubeconfig(&bytes).await.ok(),
        Err(_) => None,
    };
    let vopts = VeleroOptions {
        namespace: args.velero_namespace.clone(),
        deadline: Duration::from_secs(args.run.kube_timeout.max(60) * 6),
    };
    let mut restored = Vec::new();
    let mut runbook = None;
    if let Some(client) = &client {
        if !args.velero_restore.is_empty() {
            restored = velero::restore_apps(client, &args.velero_restore, &vopts, &em)
                .await
                .map_err(|e| CliError::Failed(e.explain()))?;
        }
        if let Ok(apps) = velero::apps(client).await {
            runbook = Some(velero::runbook(&apps, &vopts.namespace));
        }
    }
    drop(em);
    let _ = display.await;
    let snapshot = report.snapshot.as_ref().map(|s| {
        serde_json::json!({"path": s.path, "sha256": s.sha256, "size": s.size,
            "sidecar": s.sidecar.as_ref().map(|_| crate::snapshot::sidecar_path(&s.path)),
            "kubernetes": s.sidecar.as_ref().map(|m| &m.kubernetes)})
    });
    out.result(
        "recover",
        "recover",
        &format!(
            "{}\n{}{}{}duration {:.1}s",
            ledger.table(),
            report
                .snapshot
                .as_ref()
                .map(|s| format!("snapshot: {} (sha256 {})\n", s.path.display(), s.sha256))
                .unwrap_or_else(|| "no snapshot: full `up` with the existing secrets\n".into()),
            report
                .restored
                .as_ref()
                .map(|(_, v)| format!("restore verified: {v}\n"))
                .unwrap_or_default(),
            report
                .after_reboot
                .as_ref()
                .map(|(_, v)| format!("after the reboot: {v}\n"))
                .unwrap_or_default(),
            report.duration.as_secs_f64()
        ),
        serde_json::json!({
            "snapshot": snapshot,
            "reset": report.reset,
            "restored": report.restored.as_ref().map(|(i, v)| serde_json::json!({"inventory": i, "verdict": v})),
            "after_reboot": report.after_reboot.as_ref().map(|(i, v)| serde_json::json!({"inventory": i, "verdict": v})),
            "velero": restored.iter().map(|r| serde_json::json!({"namespace": r.namespace, "backup": r.backup,
                "restore": r.restore, "phase": r.phase, "resumed": r.resumed, "left_suspended": r.left_suspended})).collect::<Vec<_>>(),
            "duration_ms": report.duration.as_millis() as u64,
        }),
    );
    for r in &restored {
        out.info(
            &r.namespace,
            &format!(
                "Velero restore {} from backup {}: {}; resumed {}{}",
                r.restore,
                r.backup,
                r.phase,
                if r.resumed.is_empty() {
                    "-".into()
                } else {
                    r.resumed.join(", ")
                },
                if r.left_suspended.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left suspended (suspended before): {}",
                        r.left_suspended.join(", ")
                    )
                }
            ),
        );
    }
    if out.format == OutputFormat::Text {
        if let Some(rb) = runbook {
            println!("\n{rb}");
        }
        println!("kubeconfig:  {}", kubeconfig.display());
        println!(
            "journal:     {}",
            Journal::<RecoverFacts>::recover_path(&opts.up.state_dir).display()
        );
    }
    Ok(())
}
