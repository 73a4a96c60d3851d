//! The one model of an etcd snapshot file and its metadata sidecar `FILE.json`,
//! for every flow that reads or writes one (`etcd backup|verify`, a node
//! operation's automatic snapshot, `recover`): [`check_snapshot`] (sidecar
//! optional), [`verify_snapshot`] (trailer only), [`sidecar_path`],
//! [`BackupMeta`] and its [`KubeRecord`]. Taking a snapshot is a flow
//! (src/flows/backup.rs); this room only reads and describes files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::kube::inventory::KubeInventory;
use crate::talos::client::verify_snapshot_bytes;

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

/// What is wrong with a snapshot file or its sidecar. Each names the file;
/// the flows add the likely cause and the next action
/// (`FlowError::Snapshot`).
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
    let text = match crate::limits::read_text(&side, crate::limits::MAX_MANIFEST_BYTES) {
        Ok(t) => t,
        Err(crate::limits::InputProblem::NotFound) => {
            return Ok(CheckedSnapshot {
                path: path.to_path_buf(),
                size,
                sha256,
                sidecar: None,
            })
        }
        Err(p) => {
            return Err(sidecar_err(format!(
                "cannot read the sidecar: it {}",
                p.message()
            )))
        }
    };
    let meta = parse_sidecar(&text).map_err(sidecar_err)?;
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

/// Parses a sidecar's text: JSON of the current format. Public for the fuzz target.
pub fn parse_sidecar(text: &str) -> Result<BackupMeta, String> {
    let meta: BackupMeta =
        serde_json::from_str(text).map_err(|e| format!("not a backup sidecar: {e}"))?;
    if meta.format != META_FORMAT {
        return Err(format!("unknown sidecar format {:?}", meta.format));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_sits_beside_the_file() {
        assert_eq!(
            sidecar_path(Path::new("/b/x.snapshot")),
            PathBuf::from("/b/x.snapshot.json")
        );
    }
}
