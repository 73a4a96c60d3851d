//! The restore checked in Kubernetes: the objects recorded with the snapshot
//! are back (not an empty cluster), before and after the restored control
//! plane's one reboot (Omni #3300: a restore lost at the first reboot).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

use crate::engine::cluster::wait_machine;
use crate::engine::{
    kubeconfig, Backoff, Definition, Emitter, FlowError, Journal, NodeDef, StepId, UpFacts, Wait,
};
use crate::kube::inventory::{kube_inventory, KubeInventory};
use crate::snapshot::CheckedSnapshot;
use crate::talos::resources::MachineStage;
use crate::talos::{TalosClient, TlsMode};

use super::state::{Phase, Recovery};

const STEP: StepId = StepId::Run;

/// Namespaces every new cluster has: their presence proves nothing.
pub const DEFAULT_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), crate::engine::wait::POLL_MAX)
}

/// Whether `found` is the restored cluster: everything `expected` recorded is
/// there (and etcd's revision did not start over); without a record, at least
/// that the cluster is not a new, empty one. Ok = what was checked.
pub fn judge_restore(
    found: &KubeInventory,
    expected: Option<&KubeInventory>,
) -> Result<String, String> {
    match expected {
        Some(want) => {
            let have_ns: BTreeSet<&str> = found.namespaces.iter().map(String::as_str).collect();
            let have_ks: BTreeSet<&str> = found.kustomizations.iter().map(String::as_str).collect();
            let missing: Vec<String> = want
                .namespaces
                .iter()
                .filter(|n| !have_ns.contains(n.as_str()))
                .map(|n| format!("Namespace {n}"))
                .chain(
                    want.kustomizations
                        .iter()
                        .filter(|k| !have_ks.contains(k.as_str()))
                        .map(|k| format!("Kustomization {k}")),
                )
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} object(s) recorded with the snapshot are missing: {}",
                    missing.len(),
                    missing.join(", ")
                ));
            }
            if let (Some(w), Some(h)) = (want.resource_version, found.resource_version) {
                if h < w {
                    return Err(format!(
                        "etcd revision {h} is below the snapshot's {w}: etcd started over"
                    ));
                }
            }
            Ok(format!(
                "all {} namespace(s) and {} Kustomization(s) recorded with the snapshot are back{}",
                want.namespaces.len(),
                want.kustomizations.len(),
                match (want.resource_version, found.resource_version) {
                    (Some(w), Some(h)) => format!("; revision {h} ≥ {w}"),
                    _ => String::new(),
                }
            ))
        }
        None => {
            let extra: Vec<&String> = found
                .namespaces
                .iter()
                .filter(|n| !DEFAULT_NAMESPACES.contains(&n.as_str()))
                .collect();
            if extra.is_empty() && found.kustomizations.is_empty() {
                return Err(
                    "only the default namespaces and no Kustomization: this is a new, empty cluster".into(),
                );
            }
            Ok(format!(
                "not empty: {} namespace(s) beyond the defaults, {} Kustomization(s) (no sidecar inventory to compare with)",
                extra.len(),
                found.kustomizations.len()
            ))
        }
    }
}

/// Reads the inventory through the admin kubeconfig until the API answers, then
/// judges it against the snapshot's record.
pub async fn verify_restore(
    kubeconfig: &Path,
    facts: &CheckedSnapshot,
    deadline: Duration,
    em: &Emitter,
) -> Result<(KubeInventory, String), FlowError> {
    let found = read_inventory(kubeconfig, deadline, em).await?;
    let verdict =
        judge_restore(&found.1, facts.inventory()).map_err(|detail| FlowError::NotRestored {
            endpoint: found.0.clone(),
            detail,
        })?;
    em.progress(
        STEP,
        None,
        format!("restore verified: {verdict} ({})", found.1.summary()),
    );
    Ok((found.1, verdict))
}

async fn read_inventory(
    kubeconfig: &Path,
    deadline: Duration,
    em: &Emitter,
) -> Result<(String, KubeInventory), FlowError> {
    let local = |detail: String| FlowError::local(kubeconfig, detail);
    let bytes = std::fs::read(kubeconfig).map_err(|e| local(format!("cannot read: {e}")))?;
    let client = crate::kube::client_from_kubeconfig(&bytes)
        .await
        .map_err(|e| local(e.to_string()))?;
    let endpoint = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| kubeconfig::server_and_ca(t, kubeconfig).ok())
        .map(|(s, _)| s)
        .unwrap_or_else(|| kubeconfig.display().to_string());
    let mut w = Wait::new(endpoint.clone(), "listing namespaces", deadline).backoff(backoff());
    loop {
        match kube_inventory(&client).await {
            Ok(inv) => return Ok((endpoint, inv)),
            Err(e) => {
                if w.expired() {
                    return Err(FlowError::NotRestored {
                        endpoint,
                        detail: format!(
                            "the Kubernetes API did not answer within {deadline:?}: {e}"
                        ),
                    });
                }
                em.waiting(
                    STEP,
                    None,
                    format!("the Kubernetes API at {endpoint} to list namespaces ({e})"),
                );
            }
        }
        w.pause().await?;
    }
}

/// Reboots the restored control plane once and checks the data survived it.
pub async fn reboot_check(
    cx: &Recovery<'_>,
    node: &NodeDef,
) -> Result<(KubeInventory, String), FlowError> {
    let (up, em) = (&cx.up, cx.em);
    let creds = cx.source.render()?.credentials;
    let c = TalosClient::connect(&node.address, TlsMode::Mutual(creds), up.policy)?;
    let lost = |detail: String| FlowError::LostAfterReboot {
        node: node.label(),
        detail,
    };
    if cx.phase() < Phase::RebootRequested {
        // Subscribed before the reboot: the stream's end marks the node going down.
        let mut watch = Box::pin(
            c.with_policy(up.policy.once())
                .watch_machine_status()
                .await?,
        );
        let _ = watch.next().await;
        em.decision(
            STEP,
            Some(&node.hostname),
            "recover_reboot_check",
            &node.hostname,
        );
        em.progress(
            STEP,
            Some(&node.hostname),
            "rebooting the restored control plane once: the data must survive it (Omni #3300)",
        );
        c.reboot().await?;
        // Recorded once the node took the request: a run killed before that
        // reboots on the re-run instead of skipping the check.
        cx.set(Phase::RebootRequested)?;
        // Followed on the watch: its end is the node going down.
        let mut w = Wait::new(
            node.label(),
            "going down for the requested reboot",
            up.node_deadline,
        );
        w.seen("still answering");
        let gone = w
            .bounded(async {
                while let Some(item) = watch.next().await {
                    if item.is_err() {
                        break;
                    }
                }
            })
            .await;
        if gone.is_none() {
            return Err(w.timeout());
        }
    }
    em.waiting(
        STEP,
        Some(&node.hostname),
        format!("{} to run again after its reboot", node.label()),
    );
    wait_machine(
        &c,
        node,
        "running",
        up.node_deadline,
        |s| s.stage == MachineStage::Running,
        |_| {},
    )
    .await?;
    // etcd on the rebooted node: its member must still be there and running.
    let mut w = Wait::new(
        node.label(),
        "etcd running after the reboot",
        up.etcd_deadline,
    )
    .backoff(backoff());
    loop {
        let member = c.etcd_local_member().await;
        let service = c
            .service_list()
            .await
            .map(|l| l.into_iter().find(|s| s.id == "etcd"));
        match (member, service) {
            (Ok(Some(_)), Ok(Some(s))) if s.state == "Running" => break,
            (Ok(_), Ok(Some(s))) if s.state == "Failed" => {
                return Err(lost(format!("etcd failed: {}", s.last_event)))
            }
            (Ok(_), Ok(Some(s))) if s.state == "Preparing" => {
                return Err(lost(format!(
                    "etcd waits to be bootstrapped again: its data directory is empty ({})",
                    s.last_event
                )))
            }
            _ => {}
        }
        if w.expired() {
            return Err(lost("etcd did not come back running".into()));
        }
        w.pause().await?;
    }
    let (endpoint, found) = read_inventory(&cx.kubeconfig, cx.opts.verify_deadline, em).await?;
    let verdict = judge_restore(&found, cx.facts.inventory())
        .map_err(|detail| lost(format!("{detail} (API {endpoint})")))?;
    em.progress(
        STEP,
        Some(&node.hostname),
        format!("still restored after the reboot: {verdict}"),
    );
    Ok((found, verdict))
}

/// The control plane that restored etcd (the bootstrap node `up` recorded).
pub fn restored_node(dir: &Path, def: &Definition) -> Result<NodeDef, FlowError> {
    let path = Journal::<UpFacts>::up_path(dir);
    let chosen =
        Journal::<UpFacts>::read_of(&path, &def.cluster)?.and_then(|j| j.facts.bootstrap_node);
    def.control_planes()
        .find(|n| Some(n.hostname.as_str()) == chosen.as_deref())
        .or_else(|| def.control_planes().next())
        .cloned()
        .ok_or_else(|| FlowError::Source("no control plane in the definition".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Doctor;

    fn inv(ns: &[&str], ks: &[&str], rv: Option<i64>) -> KubeInventory {
        KubeInventory {
            resource_version: rv,
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            kustomizations: ks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_cluster_is_not_a_restore() {
        let empty = inv(&DEFAULT_NAMESPACES, &[], Some(5));
        assert!(judge_restore(&empty, None).is_err());
        let want = inv(&["default", "apps"], &["apps/web"], Some(400));
        let err = judge_restore(&empty, Some(&want)).unwrap_err();
        assert!(
            err.contains("Namespace apps") && err.contains("Kustomization apps/web"),
            "{err}"
        );
        let back = inv(&["apps", "default"], &["apps/web"], Some(380));
        assert!(judge_restore(&back, Some(&want))
            .unwrap_err()
            .contains("revision 380"));
        let back = inv(&["apps", "default"], &["apps/web"], Some(401));
        assert!(judge_restore(&back, Some(&want)).is_ok());
        assert!(judge_restore(&back, None).is_ok());
    }

    #[test]
    fn snapshot_check_refuses_truncated_and_mismatched_files() {
        use crate::snapshot::{
            check_snapshot, sidecar_path, BackupMeta, KubeRecord, SnapshotFileError, META_FORMAT,
        };
        use sha2::Digest;
        let refusal = |p: &Path| FlowError::snapshot_refused(check_snapshot(p).unwrap_err());
        let dir = tempfile::tempdir().unwrap();
        // A minimal bbolt file (two meta pages of 512 bytes, freelist, root).
        use crate::talos::bbolt::{fnv1a64, MAGIC, META_PAGE_FLAG, PAGE_HEADER, VERSION};
        let mut data = vec![0u8; 2048];
        for (page, txid) in [(0usize, 2u64), (1, 1)] {
            let o = page * 512;
            data[o + 8..o + 10].copy_from_slice(&META_PAGE_FLAG.to_le_bytes());
            let m = o + PAGE_HEADER;
            data[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
            data[m + 4..m + 8].copy_from_slice(&VERSION.to_le_bytes());
            data[m + 8..m + 12].copy_from_slice(&512u32.to_le_bytes());
            data[m + 16..m + 24].copy_from_slice(&3u64.to_le_bytes());
            data[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes());
            data[m + 40..m + 48].copy_from_slice(&4u64.to_le_bytes());
            data[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&data[m..m + 56]);
            data[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
        }
        // Random bytes with a valid trailer are refused: not an etcd database.
        let mut random = vec![7u8; 1024];
        let sum = sha2::Sha256::digest(&random);
        random.extend_from_slice(&sum);
        let not_db = dir.path().join("random.db");
        std::fs::write(&not_db, &random).unwrap();
        let e = refusal(&not_db);
        assert!(
            e.to_string().contains("not a valid etcd database")
                && e.to_string().contains("random.db"),
            "{e}"
        );
        assert!(e.is_input_error());
        let sum = sha2::Sha256::digest(&data);
        data.extend_from_slice(&sum);
        let good = dir.path().join("good.db");
        std::fs::write(&good, &data).unwrap();
        let facts = check_snapshot(&good).unwrap();
        assert_eq!(facts.size, 2080);
        assert!(facts.sidecar.is_none());
        let cut = dir.path().join("cut.db");
        std::fs::write(&cut, &data[..1000]).unwrap();
        let e = refusal(&cut);
        assert!(
            matches!(&e, FlowError::Snapshot { source, .. } if matches!(**source, SnapshotFileError::Corrupt { .. })),
            "{e}"
        );
        assert!(e.is_input_error());
        assert!(e.to_string().contains("cut.db"), "{e}");
        let e = refusal(&dir.path().join("absent.db"));
        assert!(
            matches!(&e, FlowError::Snapshot { source, .. } if matches!(**source, SnapshotFileError::Unreadable { .. })),
            "{e}"
        );
        // Not a backup sidecar, then one recording another file.
        std::fs::write(sidecar_path(&good), r#"{"sha256": "00"}"#).unwrap();
        let e = refusal(&good);
        assert!(
            matches!(&e, FlowError::Snapshot { source, .. } if matches!(**source, SnapshotFileError::Sidecar { .. })),
            "{e}"
        );
        assert!(e.explain().contains("next action"), "{}", e.explain());
        let mut meta = BackupMeta {
            format: META_FORMAT.into(),
            cluster: "c".into(),
            node: "cp1".into(),
            address: "127.0.0.1".into(),
            member_id: String::new(),
            revision: None,
            raft_index: 1,
            raft_term: 1,
            members: vec![],
            taken_at: String::new(),
            taken_ms: 0,
            size: facts.size,
            sha256: "0".repeat(64),
            tool_version: String::new(),
            kubernetes: KubeRecord::Inventory(KubeInventory {
                resource_version: Some(9),
                namespaces: vec!["apps".into()],
                kustomizations: vec![],
            }),
        };
        std::fs::write(sidecar_path(&good), serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = refusal(&good);
        assert!(
            matches!(&e, FlowError::Snapshot { source, .. } if matches!(**source, SnapshotFileError::Mismatch { .. }))
                && e.to_string().contains("good.db.json"),
            "{e}"
        );
        meta.sha256 = facts.sha256.clone();
        std::fs::write(sidecar_path(&good), serde_json::to_vec(&meta).unwrap()).unwrap();
        let f = check_snapshot(&good).unwrap();
        assert_eq!(f.inventory().unwrap().namespaces, vec!["apps".to_string()]);
        // A sidecar from before the `kubernetes` key: read, no inventory.
        let mut old = serde_json::to_value(&meta).unwrap();
        old.as_object_mut().unwrap().remove("kubernetes");
        std::fs::write(sidecar_path(&good), old.to_string()).unwrap();
        let f = check_snapshot(&good).unwrap();
        assert!(f.sidecar.is_some() && f.inventory().is_none());
    }
}
