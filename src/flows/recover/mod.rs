//! `recover`: rebuild a cluster after a disaster, from an etcd snapshot
//! (`--snapshot FILE`), or without one as a full `up` with the existing secrets.
//!
//! With a snapshot, the runbook (the step table below; the recovery sequence of
//! siderolabs/talos v1.13.9: EtcdRecover to one control plane, then
//! Bootstrap{recover_etcd} to the same node, the others join):
//! 1. `check_snapshot`: the file is checked (size 512·n + 32, SHA-256 trailer,
//!    sidecar checksum) before any node is touched;
//! 2. `gate_nodes`: every node must be in maintenance mode; configured nodes
//!    are refused by name, or reset (STATE + EPHEMERAL wiped) with `--reset-nodes`;
//! 3. `restore`: `up` through kube-apiserver with [`UpOptions::recover_from`]:
//!    configs from the same secrets bundle (existing talosconfig/kubeconfig stay
//!    valid), every node running its final config, then EtcdRecover +
//!    Bootstrap{recover_etcd} on the first control plane only; the others join;
//! 4. `verify_restore`: the objects of the snapshot are back in Kubernetes,
//!    not an empty cluster;
//! 5. `reboot_check`: the restored control plane is rebooted and the check
//!    repeated (Omni #3300: a restore lost at the first reboot);
//! 6. `converge`: the rest of `up`, which finds the restored state in place.
//!
//! `recover.json` in the state directory records the phase reached, so a run
//! killed anywhere and started again never wipes a node it configured, never
//! bootstraps twice (the bootstrap step reads etcd on every control plane first)
//! and never reboots twice for the check.

pub mod gate;
pub mod state;
pub mod verify;

use std::time::{Duration, Instant};

use crate::engine::{
    Announce, ClusterSource, Emitter, Flow, FlowError, Journal, JournalHandle, Outcome, Scope,
    Step, StepId,
};
use crate::flows::up::up;
use crate::snapshot::{check_snapshot, sidecar_path, KubeRecord};

pub use state::{journal, Phase, RecoverFacts, RecoverOptions, RecoverReport, Recovery};
pub use verify::{judge_restore, DEFAULT_NAMESPACES};

/// A phase of the recovery (its steps report for themselves).
macro_rules! phase {
    ($id:expr, $run:path) => {
        Step {
            id: $id,
            run: |cx| Box::pin($run(cx)),
            plan: crate::engine::flow::no_plan,
        }
    };
}

/// The phases of a recovery from a snapshot, in order.
pub fn steps<'r>() -> Flow<Recovery<'r>> {
    Flow {
        steps: vec![
            phase!(StepId::CheckSnapshot, check),
            phase!(StepId::GateNodes, gate),
            phase!(StepId::Restore, restore),
            phase!(StepId::VerifyRestore, verify_restore),
            phase!(StepId::RebootCheck, reboot_check),
            phase!(StepId::Converge, converge),
        ],
        announce: Announce::Nothing,
    }
}

/// Runs a recovery (see the module documentation).
pub async fn recover(
    source: &dyn ClusterSource,
    opts: &RecoverOptions,
    em: &Emitter,
) -> Result<RecoverReport, FlowError> {
    let started = Instant::now();
    let def = source.definition()?;
    // The snapshot first: a bad file must stop us before anything is touched.
    let facts = match &opts.snapshot {
        Some(p) => Some(check_snapshot(p).map_err(FlowError::snapshot_refused)?),
        None => None,
    };
    if !source.has_secrets()? {
        return Err(FlowError::NoSecrets {
            location: source.secrets_location(),
        });
    }
    let mut up_opts = opts.up.clone();
    up_opts.new_cluster = false;
    up_opts.recover_from = None;
    let Some(facts) = facts else {
        // No snapshot: `up` with the existing secrets (a new etcd, same identities).
        return Ok(RecoverReport {
            snapshot: None,
            reset: Vec::new(),
            restored: None,
            after_reboot: None,
            up: vec![up(source, &up_opts, em).await?],
            duration: started.elapsed(),
        });
    };
    let dir = opts.up.state_dir.clone();
    let path = Journal::<RecoverFacts>::recover_path(&dir);
    let mut cx = Recovery {
        source,
        opts,
        em,
        journal: JournalHandle::new(path, Journal::new(&def.cluster, None, None)),
        def,
        report: RecoverReport {
            snapshot: Some(facts.clone()),
            reset: Vec::new(),
            restored: None,
            after_reboot: None,
            up: Vec::new(),
            duration: Duration::ZERO,
        },
        facts,
        kubeconfig: dir.join("kubeconfig"),
        dir,
        up: up_opts,
    };
    let scope = Scope {
        em,
        node: None,
        until: None,
    };
    steps().run(&mut cx, scope).await?;
    cx.report.duration = started.elapsed();
    em.progress(
        StepId::Run,
        None,
        format!(
            "recovered from {} in {:.1}s",
            cx.facts.path.display(),
            cx.report.duration.as_secs_f64()
        ),
    );
    Ok(cx.report)
}

fn next() -> Outcome {
    Outcome::Done {
        detail: String::new(),
    }
}

/// The snapshot's facts, then the journal: resume this recovery, refuse while
/// another one is unfinished, converge after a finished one.
async fn check(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    let (em, facts) = (cx.em, &cx.facts);
    em.progress(
        StepId::Preflight,
        None,
        format!(
            "snapshot {}: {} bytes, SHA-256 trailer ok, sha256 {}{}",
            facts.path.display(),
            facts.size,
            &facts.sha256[..16],
            match &facts.sidecar {
                Some(meta) => format!(
                    "; sidecar {} matches (taken {} from {}); {}",
                    sidecar_path(&facts.path).display(),
                    meta.taken_at,
                    meta.node,
                    meta.kubernetes.describe()
                ),
                None => "; no sidecar".into(),
            }
        ),
    );
    // Without a recorded inventory the restore can only be judged "not empty".
    let no_inventory = match facts.sidecar.as_ref().map(|m| &m.kubernetes) {
        Some(KubeRecord::Inventory(_)) => None,
        Some(KubeRecord::None { reason }) => Some(format!("its sidecar records none ({reason})")),
        None => Some(format!(
            "it has no sidecar {}",
            sidecar_path(&facts.path).display()
        )),
    };
    if let Some(why) = no_inventory {
        em.progress(
            StepId::Preflight,
            None,
            format!(
                "warning: no Kubernetes inventory was recorded with {}: {why}; the restore can only be checked for \"not an empty cluster\", not object by object (take backups with `etcd backup` while the API answers)",
                facts.path.display()
            ),
        );
    }
    std::fs::create_dir_all(&cx.dir).map_err(|e| {
        FlowError::local(&cx.dir, format!("cannot create the state directory: {e}"))
    })?;
    let path = cx.journal.path();
    let earlier = Journal::<RecoverFacts>::read_of(&path, &cx.def.cluster)?;
    let journal = match earlier {
        Some(j) if j.facts.phase != Phase::Done && j.facts.sha256 != facts.sha256 => {
            return Err(FlowError::OtherRecoveryInProgress {
                journal: path.display().to_string(),
                other: j.facts.sha256,
                phase: format!("{:?}", j.facts.phase),
            })
        }
        Some(j) if j.facts.phase != Phase::Done => {
            em.progress(
                StepId::Run,
                None,
                format!(
                    "resuming the recovery started earlier (phase {:?})",
                    j.facts.phase
                ),
            );
            j
        }
        // The same command again after it finished: converge, never wipe the
        // restored cluster. Only a new disaster (every node in maintenance)
        // starts a new recovery from the same file.
        Some(j)
            if j.facts.sha256 == facts.sha256
                && !gate::all_in_maintenance(cx.source, &cx.opts.up, em, &cx.def.nodes).await? =>
        {
            em.progress(
                StepId::Run,
                None,
                "this snapshot was already restored and the nodes run: converging without resetting anything",
            );
            j
        }
        _ => {
            let mut j = Journal::new(&cx.def.cluster, None, None);
            j.facts = RecoverFacts {
                snapshot: facts.path.display().to_string(),
                sha256: facts.sha256.clone(),
                phase: Phase::Checked,
                reset: Vec::new(),
            };
            j
        }
    };
    cx.journal = JournalHandle::new(path, journal);
    Ok(next())
}

/// Every node in maintenance (recorded before the first apply: from here on
/// nothing is wiped again), and the marker that keeps `up` from bootstrapping
/// an empty etcd until the restore is verified.
async fn gate(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    if cx.phase() < Phase::Applying {
        cx.set(cx.phase())?;
        cx.report.reset = gate::gate_nodes(cx).await?;
        cx.set(Phase::Applying)?;
    } else {
        cx.em.progress(
            StepId::Preflight,
            None,
            "configs were applied by an earlier run of this recovery: no node is reset again",
        );
    }
    if cx.phase() < Phase::Restored {
        let marker = cx.marker();
        crate::talos::talosconfig::write_private(
            &marker,
            format!("{} sha256 {}\n", cx.facts.path.display(), cx.facts.sha256).as_bytes(),
        )
        .map_err(|e| FlowError::local(&marker, format!("cannot write: {e}")))?;
    }
    Ok(next())
}

/// Restore, quorum, kubeconfig, API server.
async fn restore(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    let mut first = cx.up.clone();
    first.recover_from = Some(cx.facts.path.clone());
    first.until = StepId::Apiserver;
    let r = up(cx.source, &first, cx.em).await?;
    if let Some(k) = &r.kubeconfig {
        cx.kubeconfig = k.clone();
    }
    cx.report.up.push(r);
    Ok(next())
}

async fn verify_restore(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    let found =
        verify::verify_restore(&cx.kubeconfig, &cx.facts, cx.opts.verify_deadline, cx.em).await?;
    if cx.phase() < Phase::Restored {
        cx.set(Phase::Restored)?;
    }
    let _ = std::fs::remove_file(cx.marker());
    cx.report.restored = Some(found);
    Ok(next())
}

async fn reboot_check(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    if !cx.opts.reboot_check || cx.phase() >= Phase::RebootChecked {
        return Ok(Outcome::Skipped {
            reason: "not asked, or checked earlier".into(),
        });
    }
    let target = verify::restored_node(&cx.dir, &cx.def)?;
    let after = verify::reboot_check(cx, &target).await?;
    cx.report.after_reboot = Some(after);
    cx.set(Phase::RebootChecked)?;
    Ok(next())
}

/// The rest of `up` against the restored state; the recovery is done.
async fn converge(cx: &mut Recovery<'_>) -> Result<Outcome, FlowError> {
    if cx.opts.up.until > StepId::Apiserver {
        let mut rest = cx.up.clone();
        rest.recover_from = Some(cx.facts.path.clone());
        cx.report.up.push(up(cx.source, &rest, cx.em).await?);
    }
    cx.set(Phase::Done)?;
    Ok(next())
}
