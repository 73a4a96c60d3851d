//! The etcd calls of MachineService: Bootstrap (also from a snapshot), member
//! list, remove, leave, forfeit leadership, status, and snapshot download and
//! upload with etcd's SHA-256 trailer checked at both ends (chunked as talosctl
//! uploads).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use tonic::Code;

use super::call::TalosClient;
use super::reply::{check_metadata, first};
use crate::api::common;
use crate::api::machine;
use crate::error::TalosError;

/// Chunk size for EtcdRecover uploads (talosctl uses the same).
const UPLOAD_CHUNK: usize = 4096;

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    pub hostname: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl EtcdMember {
    /// Member IDs are shown as 16 lower-case hex digits, as talosctl does.
    pub fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }
}

/// Local etcd member status.
#[derive(Debug, Clone)]
pub struct EtcdStatus {
    pub member_id: u64,
    pub leader: u64,
    pub db_size: i64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub errors: Vec<String>,
    pub is_learner: bool,
    pub protocol_version: String,
}

/// Result of an etcd snapshot download.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

impl TalosClient {
    /// Asks this node to bootstrap etcd. `AlreadyExists` comes back as an error
    /// (see [`TalosError::is_already_bootstrapped`]): only the caller can decide
    /// whether that is success, after checking the members.
    pub async fn bootstrap(
        &self,
        recover_etcd: bool,
        skip_hash_check: bool,
    ) -> Result<(), TalosError> {
        self.call("Bootstrap", || {
            let req = self.request(machine::BootstrapRequest {
                recover_etcd,
                recover_skip_hash_check: skip_hash_check,
            })?;
            let mut c = self.machine();
            Ok(async move { c.bootstrap(req).await })
        })
        .await?;
        Ok(())
    }

    /// etcd members as this control plane sees them (`query_local` asks only its own
    /// member, as `talosctl etcd members` does).
    pub async fn etcd_members(&self, query_local: bool) -> Result<Vec<EtcdMember>, TalosError> {
        let resp = self
            .call("EtcdMemberList", || {
                let req = self.request(machine::EtcdMemberListRequest { query_local })?;
                let mut c = self.machine();
                Ok(async move { c.etcd_member_list(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "EtcdMemberList", resp.messages)?;
        Ok(msg
            .members
            .into_iter()
            .map(|m| EtcdMember {
                id: m.id,
                hostname: m.hostname,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect())
    }

    /// Removes a (stale) member by ID. Not retried: removal is not idempotent.
    pub async fn etcd_remove_member(&self, member_id: u64) -> Result<(), TalosError> {
        self.with_policy(self.policy.once())
            .call("EtcdRemoveMemberByID", || {
                let req = self.request(machine::EtcdRemoveMemberByIdRequest { member_id })?;
                let mut c = self.machine();
                Ok(async move { c.etcd_remove_member_by_id(req).await })
            })
            .await?;
        Ok(())
    }

    pub async fn etcd_leave_cluster(&self) -> Result<(), TalosError> {
        self.with_policy(self.policy.once())
            .call("EtcdLeaveCluster", || {
                let req = self.request(machine::EtcdLeaveClusterRequest {})?;
                let mut c = self.machine();
                Ok(async move { c.etcd_leave_cluster(req).await })
            })
            .await?;
        Ok(())
    }

    /// Hands leadership away; returns the new leader's name ("" if this node was not leader).
    pub async fn etcd_forfeit_leadership(&self) -> Result<String, TalosError> {
        let resp = self
            .call("EtcdForfeitLeadership", || {
                let req = self.request(machine::EtcdForfeitLeadershipRequest {})?;
                let mut c = self.machine();
                Ok(async move { c.etcd_forfeit_leadership(req).await })
            })
            .await?
            .into_inner();
        Ok(first(&self.label, "EtcdForfeitLeadership", resp.messages)?.member)
    }

    pub async fn etcd_status(&self) -> Result<EtcdStatus, TalosError> {
        let resp = self
            .call("EtcdStatus", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.etcd_status(req).await })
            })
            .await?
            .into_inner();
        let s = first(&self.label, "EtcdStatus", resp.messages)?
            .member_status
            .unwrap_or_default();
        Ok(EtcdStatus {
            member_id: s.member_id,
            leader: s.leader,
            db_size: s.db_size,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            errors: s.errors,
            is_learner: s.is_learner,
            protocol_version: s.protocol_version,
        })
    }

    /// Streams an etcd snapshot to `path` (via `<path>.part`, fsync, rename) and
    /// verifies etcd's 32-byte SHA-256 trailer. A bad snapshot never lands at `path`.
    pub async fn etcd_snapshot(&self, path: &Path) -> Result<SnapshotInfo, TalosError> {
        let rpc = "EtcdSnapshot";
        let io_err = |detail: String| TalosError::Io {
            node: self.label.clone(),
            rpc,
            detail,
        };
        let mut stream = self
            .call(rpc, || {
                let req = self.request(machine::EtcdSnapshotRequest {})?;
                let mut c = self.machine();
                Ok(async move { c.etcd_snapshot(req).await })
            })
            .await?
            .into_inner();
        let part = part_path(path);
        // 0600 from the first byte: a snapshot holds every Secret of the cluster.
        let mut file = create_private(&part)
            .map_err(|e| io_err(format!("creating {}: {e}", part.display())))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        // Keep the last 32 bytes aside: they are the trailer, not data.
        let mut tail: Vec<u8> = Vec::with_capacity(64);
        let mut data_hasher = sha2::Sha256::new();
        let result: Result<(), TalosError> = async {
            loop {
                let next = tokio::time::timeout(self.policy.attempt_timeout, stream.message()).await;
                match next {
                    Ok(Ok(Some(d))) => {
                        check_metadata(&self.label, rpc, d.metadata.as_ref())?;
                        file.write_all(&d.bytes)
                            .map_err(|e| io_err(format!("writing {}: {e}", part.display())))?;
                        hasher.update(&d.bytes);
                        size += d.bytes.len() as u64;
                        tail.extend_from_slice(&d.bytes);
                        if tail.len() > 32 {
                            let cut = tail.len() - 32;
                            data_hasher.update(&tail[..cut]);
                            tail.drain(..cut);
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => return Err(self.error(rpc, status)),
                    Err(_) => {
                        return Err(TalosError::Rpc {
                            node: self.label.clone(),
                            rpc,
                            code: Code::DeadlineExceeded,
                            message: "snapshot stream stalled".into(),
                        })
                    }
                }
            }
            if size % 512 != 32 || tail.len() != 32 {
                return Err(TalosError::Protocol {
                    node: self.label.clone(),
                    rpc,
                    detail: format!("sha256 checksum not found (size {size} is not 512·n + 32): snapshot truncated or not an etcd snapshot"),
                });
            }
            let computed = data_hasher.clone().finalize();
            if computed.as_slice() != tail.as_slice() {
                return Err(TalosError::Protocol {
                    node: self.label.clone(),
                    rpc,
                    detail: "snapshot checksum mismatch: the SHA-256 trailer does not match the data".into(),
                });
            }
            file.sync_all()
                .map_err(|e| io_err(format!("syncing {}: {e}", part.display())))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, path).map_err(|e| {
            io_err(format!(
                "renaming {} to {}: {e}",
                part.display(),
                path.display()
            ))
        })?;
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Uploads a snapshot for Bootstrap{recover_etcd}. The file's trailer is checked
    /// first so a corrupt file is refused here, not after the node wiped anything.
    pub async fn etcd_recover(&self, path: &Path, skip_hash_check: bool) -> Result<(), TalosError> {
        let rpc = "EtcdRecover";
        let bytes = std::fs::read(path).map_err(|e| TalosError::Io {
            node: self.label.clone(),
            rpc,
            detail: format!("reading {}: {e}", path.display()),
        })?;
        if !skip_hash_check {
            verify_snapshot_bytes(&bytes).map_err(|detail| TalosError::Protocol {
                node: self.label.clone(),
                rpc,
                detail: format!("{}: {detail}", path.display()),
            })?;
        }
        let bytes = Arc::new(bytes);
        self.with_policy(self.policy.once())
            .call(rpc, || {
                let chunks: Vec<common::Data> = bytes
                    .chunks(UPLOAD_CHUNK)
                    .map(|c| common::Data {
                        metadata: None,
                        bytes: c.to_vec(),
                    })
                    .collect();
                let req = self.request(futures::stream::iter(chunks))?;
                let mut c = self.machine();
                Ok(async move { c.etcd_recover(req).await })
            })
            .await?;
        Ok(())
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

/// Checks an etcd snapshot's SHA-256 trailer (size = 512·n + 32), then that
/// the data is a bbolt database ([`crate::bbolt::check_db`]).
pub fn verify_snapshot_bytes(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() % 512 != 32 {
        return Err(format!(
            "sha256 checksum not found (size {} is not 512·n + 32)",
            bytes.len()
        ));
    }
    let (data, trailer) = bytes.split_at(bytes.len() - 32);
    if sha2::Sha256::digest(data).as_slice() != trailer {
        return Err(
            "snapshot checksum mismatch: the SHA-256 trailer does not match the data".into(),
        );
    }
    crate::bbolt::check_db(data)?;
    Ok(())
}
