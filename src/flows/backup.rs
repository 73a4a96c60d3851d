//! etcd backups: a snapshot from a healthy control plane (asked directly, never
//! through a VIP), its SHA-256 trailer verified, written 0600 atomically with a
//! metadata sidecar `FILE.json` ([`crate::snapshot`] is the file model); and
//! `etcd status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::gates::quorum::{self as guard, CpProbe, EtcdView};
use crate::engine::{now_ms, Cluster, FlowError};
use crate::kube::inventory::kube_inventory;
use crate::snapshot::{
    check_snapshot, sidecar_path, BackupMeta, KubeRecord, MemberMeta, META_FORMAT,
};
use crate::talos::CallPolicy;
use endsys_core::clock::rfc3339_ms as rfc3339;

/// `<state_dir>/backups/<cluster>-etcd-<UTC time>.snapshot`.
pub fn default_backup_path(state_dir: &Path, cluster: &str) -> PathBuf {
    let stamp = rfc3339(now_ms())
        .replace([':', '-'], "")
        .replace(".000", "");
    state_dir
        .join("backups")
        .join(format!("{cluster}-etcd-{stamp}.snapshot"))
}

fn local(path: &Path, detail: impl Into<String>) -> FlowError {
    FlowError::Backup {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Control planes fit to serve a snapshot, most up to date first: etcd running
/// with a leader, no alarms, not a learner.
fn candidates(view: &EtcdView) -> Vec<&CpProbe> {
    let mut ok: Vec<&CpProbe> = view
        .cps
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_ok_and(|s| s.leader != 0 && s.errors.is_empty() && !s.is_learner)
        })
        .collect();
    ok.sort_by_key(|p| std::cmp::Reverse(p.status.as_ref().map(|s| s.raft_index).unwrap_or(0)));
    ok
}

/// Takes a verified snapshot into `out` (0600, atomic) and writes `out.json`.
/// Each control plane is asked directly; the first healthy one with the highest
/// raft index serves it, the next is tried if its stream fails.
pub async fn take_backup(
    cluster: &Cluster,
    policy: CallPolicy,
    out: &Path,
) -> Result<BackupMeta, FlowError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| local(dir, format!("cannot create: {e}")))?;
    }
    let view = guard::survey(cluster, policy).await;
    let kubernetes = record_kubernetes(cluster, policy.attempt_timeout).await;
    let mut tried = Vec::new();
    let cands = candidates(&view);
    if cands.is_empty() {
        for p in &view.cps {
            match &p.status {
                Err(e) => tried.push(format!("{} ({}): {e}", p.hostname, p.address)),
                Ok(s) => tried.push(format!(
                    "{} ({}): leader {:016x}, errors [{}]",
                    p.hostname,
                    p.address,
                    s.leader,
                    s.errors.join("; ")
                )),
            }
        }
    }
    // The snapshot lands next to `out` first so the final rename is atomic.
    let mut tmp = out.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    for p in cands {
        let Some(node) = cluster.def.nodes.iter().find(|n| n.hostname == p.hostname) else {
            continue;
        };
        let client = cluster.mtls(node, policy)?;
        let info = match client.etcd_snapshot(&tmp).await {
            Ok(i) => i,
            // Writing here failed (disk full, permissions): another control
            // plane would fail the same way, and etcd is not to blame.
            Err(e @ crate::talos::TalosError::Io { .. }) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(local(
                    out,
                    format!(
                        "cannot write the snapshot ({e}); etcd answered, the local write failed"
                    ),
                ));
            }
            Err(e) => {
                tried.push(format!("{}: {e}", node.label()));
                continue;
            }
        };
        // A stream with a valid trailer can still be no etcd database.
        if let Err(detail) = bbolt_head(&tmp, info.size) {
            let _ = std::fs::remove_file(&tmp);
            tried.push(format!("{}: {detail}", node.label()));
            continue;
        }
        let status = p.status.as_ref().ok();
        let taken_ms = now_ms();
        let meta = BackupMeta {
            format: META_FORMAT.into(),
            cluster: cluster.def.cluster.clone(),
            node: node.hostname.clone(),
            address: node.address.clone(),
            member_id: status
                .map(|s| format!("{:016x}", s.member_id))
                .unwrap_or_default(),
            revision: None,
            raft_index: status.map(|s| s.raft_index).unwrap_or(0),
            raft_term: status.map(|s| s.raft_term).unwrap_or(0),
            members: view
                .members
                .iter()
                .map(|m| MemberMeta {
                    id: m.id_hex(),
                    name: m.hostname.clone(),
                    peer_urls: m.peer_urls.clone(),
                    learner: m.is_learner,
                })
                .collect(),
            taken_at: rfc3339(taken_ms),
            taken_ms,
            size: info.size,
            sha256: info.sha256.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            kubernetes: kubernetes.clone(),
        };
        set_private(&tmp)?;
        std::fs::rename(&tmp, out)
            .map_err(|e| local(out, format!("cannot rename from {}: {e}", tmp.display())))?;
        write_meta(out, &meta)?;
        return Ok(meta);
    }
    let _ = std::fs::remove_file(&tmp);
    Err(FlowError::NoHealthyControlPlane {
        what: "an etcd snapshot".into(),
        tried,
    })
}

/// The bbolt structure check of a downloaded snapshot, on its first pages only.
fn bbolt_head(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(crate::talos::bbolt::HEAD_LEN as u64)
                .read_to_end(&mut head)
        })
        .map_err(|e| format!("cannot read back {}: {e}", path.display()))?;
    crate::talos::bbolt::check_head(&head, size.saturating_sub(32)).map(|_| ())
}

fn set_private(path: &Path) -> Result<(), FlowError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| local(path, format!("cannot chmod 0600: {e}")))?;
    }
    Ok(())
}

fn write_meta(out: &Path, meta: &BackupMeta) -> Result<(), FlowError> {
    let side = sidecar_path(out);
    let text = serde_json::to_vec_pretty(meta).map_err(|e| local(&side, e.to_string()))?;
    crate::talos::talosconfig::write_private(&side, &text)
        .map_err(|e| local(&side, format!("cannot write: {e}")))
}

/// Reads the Kubernetes inventory through the cluster's kubeconfig (the state
/// directory's, or the one set on [`Cluster::kubeconfig`]); `None` with the
/// reason when there is no kubeconfig or the API does not answer in `timeout`.
async fn record_kubernetes(cluster: &Cluster, timeout: Duration) -> KubeRecord {
    let client = match cluster.kube().await {
        None => {
            return KubeRecord::None {
                reason: "no kubeconfig (none in the state directory, none given)".into(),
            }
        }
        Some(Err(e)) => {
            return KubeRecord::None {
                reason: format!("the kubeconfig is unusable: {e}"),
            }
        }
        Some(Ok(c)) => c,
    };
    match tokio::time::timeout(timeout, kube_inventory(&client)).await {
        Ok(Ok(inv)) => KubeRecord::Inventory(inv),
        Ok(Err(e)) => KubeRecord::None {
            reason: format!("the Kubernetes API refused the inventory: {e}"),
        },
        Err(_) => KubeRecord::None {
            reason: format!("the Kubernetes API did not answer within {timeout:?}"),
        },
    }
}

/// Checks a backup: the snapshot's trailer, then its sidecar's size and
/// checksum. A backup without a sidecar, or whose file changed, is refused.
pub fn verify_backup(path: &Path) -> Result<BackupMeta, FlowError> {
    let checked = check_snapshot(path).map_err(FlowError::snapshot)?;
    checked.sidecar.ok_or_else(|| {
        local(
            &sidecar_path(path),
            "cannot read the backup's sidecar: not found (a snapshot from elsewhere: check it with verify_snapshot)",
        )
    })
}

/// One control plane in `etcd status`.
#[derive(Debug, Clone, Serialize)]
pub struct CpStatus {
    pub hostname: String,
    pub address: String,
    pub error: Option<String>,
    pub member_id: Option<String>,
    pub leader: Option<String>,
    pub db_size: Option<i64>,
    pub raft_index: Option<u64>,
    pub raft_term: Option<u64>,
    pub learner: Option<bool>,
    pub protocol_version: Option<String>,
    /// etcd's status errors (active alarms read `memberID:<id> alarm:NOSPACE`).
    pub alarms: Vec<String>,
}

/// One member in `etcd status`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    /// The definition node it runs on; `None` = stale.
    pub node: Option<String>,
    pub leader: bool,
}

/// `etcd status`: members, leader, per control plane DB size, raft index, alarms.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub cluster: String,
    pub members: Vec<MemberStatus>,
    pub members_from: Option<String>,
    pub members_error: Option<String>,
    pub leader: Option<String>,
    pub control_planes: Vec<CpStatus>,
    #[serde(skip)]
    pub table: String,
}

/// Asks every control plane directly and reads the member list.
pub async fn etcd_status(cluster: &Cluster, policy: CallPolicy) -> StatusReport {
    let view = guard::survey(cluster, policy).await;
    status_report(cluster, &view)
}

pub fn status_report(cluster: &Cluster, view: &EtcdView) -> StatusReport {
    let leader_id = view
        .cps
        .iter()
        .filter_map(|p| p.status.as_ref().ok())
        .map(|s| s.leader)
        .find(|l| *l != 0);
    let members = view
        .members
        .iter()
        .map(|m| MemberStatus {
            id: m.id_hex(),
            name: m.hostname.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
            learner: m.is_learner,
            node: guard::owner(cluster, m).map(|n| n.hostname.clone()),
            leader: Some(m.id) == leader_id,
        })
        .collect();
    let leader = leader_id.map(|l| {
        view.members
            .iter()
            .find(|m| m.id == l)
            .map(|m| m.hostname.clone())
            .unwrap_or_else(|| format!("{l:016x}"))
    });
    let control_planes: Vec<CpStatus> = view
        .cps
        .iter()
        .map(|p| match &p.status {
            Ok(s) => CpStatus {
                hostname: p.hostname.clone(),
                address: p.address.clone(),
                error: None,
                member_id: Some(format!("{:016x}", s.member_id)),
                leader: Some(format!("{:016x}", s.leader)),
                db_size: Some(s.db_size),
                raft_index: Some(s.raft_index),
                raft_term: Some(s.raft_term),
                learner: Some(s.is_learner),
                protocol_version: Some(s.protocol_version.clone()),
                alarms: s.errors.clone(),
            },
            Err(e) => CpStatus {
                hostname: p.hostname.clone(),
                address: p.address.clone(),
                error: Some(e.clone()),
                member_id: None,
                leader: None,
                db_size: None,
                raft_index: None,
                raft_term: None,
                learner: None,
                protocol_version: None,
                alarms: vec![],
            },
        })
        .collect();
    let mut rows = vec![[
        "NODE".to_string(),
        "MEMBER".into(),
        "DB SIZE".into(),
        "RAFT INDEX".into(),
        "TERM".into(),
        "LEADER".into(),
        "ALARMS".into(),
    ]];
    for c in &control_planes {
        match &c.error {
            Some(e) => rows.push([
                format!("{} ({})", c.hostname, c.address),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unreachable: {e}"),
            ]),
            None => rows.push([
                format!("{} ({})", c.hostname, c.address),
                c.member_id.clone().unwrap_or_default(),
                human_bytes(c.db_size.unwrap_or(0)),
                c.raft_index.unwrap_or(0).to_string(),
                c.raft_term.unwrap_or(0).to_string(),
                c.leader.clone().unwrap_or_default(),
                if c.alarms.is_empty() {
                    "none".into()
                } else {
                    c.alarms.join("; ")
                },
            ]),
        }
    }
    let table = format!(
        "{}\n{}leader: {}",
        guard::member_table(cluster, view).trim_end(),
        guard::render_rows(&rows),
        leader.as_deref().unwrap_or("none (no quorum?)")
    );
    StatusReport {
        cluster: cluster.def.cluster.clone(),
        members,
        members_from: view.members_from.clone(),
        members_error: view.members_error.clone(),
        leader,
        control_planes,
        table,
    }
}

fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_named_after_cluster_and_time() {
        let p = default_backup_path(Path::new("/s"), "lab");
        assert!(p.starts_with("/s/backups"));
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("lab-etcd-") && name.ends_with("Z.snapshot"),
            "{name}"
        );
    }
}
