//! etcd backups: a snapshot from a healthy control plane (asked directly, never
//! through a VIP), its SHA-256 trailer verified, written 0600 atomically with a
//! metadata sidecar `FILE.json`; and `etcd status`.
//!
//! The one model of a snapshot file and its sidecar, for every flow that reads
//! or writes one (`etcd backup|verify`, reimage's automatic snapshot, `recover`):
//! [`take_backup`], [`check_snapshot`] (sidecar optional), [`verify_backup`]
//! (sidecar required), [`verify_snapshot`] (trailer only), [`sidecar_path`],
//! [`BackupMeta`] and its [`KubeRecord`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::guard::{self, CpProbe, EtcdView};
use super::{Cluster, Day2Error};
use crate::kube::inventory::{kube_inventory, KubeInventory};
use crate::talos::client::verify_snapshot_bytes;
use crate::talos::CallPolicy;

/// Sidecar format tag.
pub const META_FORMAT: &str = "endsys-bootstrap/etcd-backup/v1";

/// One etcd member at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMeta {
    /// 16 lower-case hex digits, as talosctl prints it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

/// The sidecar `FILE.json` of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub format: String,
    pub cluster: String,
    /// The control plane that streamed the snapshot.
    pub node: String,
    pub address: String,
    pub member_id: String,
    /// etcd's MVCC revision: Talos's EtcdStatus does not report it, so it is
    /// `null` unless known (`etcdutl snapshot status FILE` prints it).
    pub revision: Option<i64>,
    pub raft_index: u64,
    pub raft_term: u64,
    pub members: Vec<MemberMeta>,
    /// RFC 3339, UTC.
    pub taken_at: String,
    pub taken_ms: u64,
    pub size: u64,
    /// SHA-256 of the whole file (data and trailer), hex.
    pub sha256: String,
    pub tool_version: String,
    /// What the Kubernetes API held just before the snapshot, or why it was
    /// not recorded (`recover` checks the restore against it).
    #[serde(default)]
    pub kubernetes: KubeRecord,
}

/// The sidecar's `kubernetes` key: the inventory read just before the snapshot
/// (a subset of what the snapshot holds), or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "recorded", rename_all = "snake_case")]
pub enum KubeRecord {
    /// `"recorded": "inventory"` with the inventory's fields beside it.
    Inventory(KubeInventory),
    /// `"recorded": "none"`, `"reason": …`.
    None { reason: String },
}

impl Default for KubeRecord {
    /// A sidecar written before the key existed.
    fn default() -> Self {
        KubeRecord::None {
            reason: "the sidecar has no `kubernetes` key (written by an older version)".into(),
        }
    }
}

impl KubeRecord {
    pub fn inventory(&self) -> Option<&KubeInventory> {
        match self {
            KubeRecord::Inventory(i) => Some(i),
            KubeRecord::None { .. } => None,
        }
    }

    /// For messages: the inventory's summary, or why there is none.
    pub fn describe(&self) -> String {
        match self {
            KubeRecord::Inventory(i) => format!("Kubernetes inventory: {}", i.summary()),
            KubeRecord::None { reason } => format!("no Kubernetes inventory: {reason}"),
        }
    }
}

/// `FILE` → `FILE.json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".json");
    PathBuf::from(s)
}

/// `<state_dir>/backups/<cluster>-etcd-<UTC time>.snapshot`.
pub fn default_backup_path(state_dir: &Path, cluster: &str) -> PathBuf {
    let stamp = rfc3339(super::now_ms())
        .replace([':', '-'], "")
        .replace(".000", "");
    state_dir
        .join("backups")
        .join(format!("{cluster}-etcd-{stamp}.snapshot"))
}

/// Unix milliseconds → `2026-01-02T03:04:05.000Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    endsys_core::clock::rfc3339_ms(ms)
}

fn local(path: &Path, detail: impl Into<String>) -> Day2Error {
    Day2Error::Backup {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// What is wrong with a snapshot file or its sidecar. Each names the file;
/// callers add the likely cause and the next action for their flow
/// ([`Day2Error::Backup`], `RecoverError`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{}: cannot read: {detail}", .path.display())]
    Unreadable { path: PathBuf, detail: String },
    /// Not 512·n + 32 bytes, or the SHA-256 trailer does not match.
    #[error("{}: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The sidecar is missing (where required), unreadable, not JSON, or of
    /// another format.
    #[error("{}: {detail}", .sidecar.display())]
    Sidecar {
        snapshot: PathBuf,
        sidecar: PathBuf,
        detail: String,
    },
    /// The file's size or checksum differs from what its sidecar records.
    #[error("{}: {detail}", .snapshot.display())]
    Mismatch {
        snapshot: PathBuf,
        sidecar: PathBuf,
        detail: String,
    },
}

impl From<SnapshotFileError> for Day2Error {
    fn from(e: SnapshotFileError) -> Self {
        let (path, detail) = match e {
            SnapshotFileError::Unreadable { path, detail } => {
                (path, format!("cannot read: {detail}"))
            }
            SnapshotFileError::Corrupt { path, detail } => (path, detail),
            SnapshotFileError::Sidecar {
                sidecar: path,
                detail,
                ..
            } => (path, detail),
            SnapshotFileError::Mismatch {
                snapshot: path,
                detail,
                ..
            } => (path, detail),
        };
        local(&path, detail)
    }
}

/// A snapshot file whose trailer checked out, with its sidecar when it has one
/// (and then its size and checksum matched).
#[derive(Debug, Clone)]
pub struct CheckedSnapshot {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// `FILE.json`, when present.
    pub sidecar: Option<BackupMeta>,
}

impl CheckedSnapshot {
    /// The Kubernetes inventory recorded with the snapshot, if any.
    pub fn inventory(&self) -> Option<&KubeInventory> {
        self.sidecar.as_ref().and_then(|m| m.kubernetes.inventory())
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
) -> Result<BackupMeta, Day2Error> {
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
            Err(e) => {
                tried.push(format!("{}: {e}", node.label()));
                continue;
            }
        };
        let status = p.status.as_ref().ok();
        let taken_ms = super::now_ms();
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
    Err(Day2Error::NoHealthyControlPlane {
        what: "an etcd snapshot".into(),
        tried,
    })
}

fn set_private(path: &Path) -> Result<(), Day2Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| local(path, format!("cannot chmod 0600: {e}")))?;
    }
    Ok(())
}

fn write_meta(out: &Path, meta: &BackupMeta) -> Result<(), Day2Error> {
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

/// Checks a snapshot file's SHA-256 trailer (any etcd snapshot, with or without
/// a sidecar); returns its size and the SHA-256 of the whole file.
pub fn verify_snapshot(path: &Path) -> Result<(u64, String), SnapshotFileError> {
    let bytes = std::fs::read(path).map_err(|e| SnapshotFileError::Unreadable {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    verify_snapshot_bytes(&bytes).map_err(|detail| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        detail,
    })?;
    Ok((
        bytes.len() as u64,
        hex::encode(sha2::Sha256::digest(&bytes)),
    ))
}

/// Checks a snapshot without touching any node: its trailer, then, when
/// `FILE.json` exists, that it is a backup sidecar whose size and checksum match
/// the file. A snapshot without a sidecar (`talosctl etcd snapshot`) passes with
/// `sidecar: None`.
pub fn check_snapshot(path: &Path) -> Result<CheckedSnapshot, SnapshotFileError> {
    let (size, sha256) = verify_snapshot(path)?;
    let side = sidecar_path(path);
    let sidecar_err = |detail: String| SnapshotFileError::Sidecar {
        snapshot: path.to_path_buf(),
        sidecar: side.clone(),
        detail,
    };
    let text = match std::fs::read(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CheckedSnapshot {
                path: path.to_path_buf(),
                size,
                sha256,
                sidecar: None,
            })
        }
        Err(e) => return Err(sidecar_err(format!("cannot read the sidecar: {e}"))),
    };
    let meta: BackupMeta = serde_json::from_slice(&text)
        .map_err(|e| sidecar_err(format!("not a backup sidecar: {e}")))?;
    if meta.format != META_FORMAT {
        return Err(sidecar_err(format!(
            "unknown sidecar format {:?}",
            meta.format
        )));
    }
    if meta.size != size || meta.sha256 != sha256 {
        return Err(SnapshotFileError::Mismatch {
            snapshot: path.to_path_buf(),
            sidecar: side.clone(),
            detail: format!(
                "checksum mismatch: the sidecar records {} bytes sha256 {}, the file has {size} bytes sha256 {sha256}",
                meta.size, meta.sha256
            ),
        });
    }
    Ok(CheckedSnapshot {
        path: path.to_path_buf(),
        size,
        sha256,
        sidecar: Some(meta),
    })
}

/// Checks a backup: the snapshot's trailer, then its sidecar's size and
/// checksum. A backup without a sidecar, or whose file changed, is refused.
pub fn verify_backup(path: &Path) -> Result<BackupMeta, Day2Error> {
    let checked = check_snapshot(path)?;
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
    fn rfc3339_is_utc_civil_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_767_225_599_000), "2025-12-31T23:59:59.000Z");
    }

    #[test]
    fn sidecar_sits_beside_the_file() {
        assert_eq!(
            sidecar_path(Path::new("/b/x.snapshot")),
            PathBuf::from("/b/x.snapshot.json")
        );
        let p = default_backup_path(Path::new("/s"), "lab");
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("lab-etcd-") && name.ends_with("Z.snapshot"),
            "{name}"
        );
    }
}
