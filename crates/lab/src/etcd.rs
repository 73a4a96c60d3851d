//! The simulated etcd clusters shared by all nodes of a lab, and the snapshot format.
//!
//! A cluster lives in the fabric, not in a node: nodes hold a membership (their
//! "data directory"). Nodes configured from different secrets bundles get different
//! clusters, which is exactly the split the tool must never cause but must be able
//! to detect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// One etcd member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EtcdMemberInfo {
    pub id: u64,
    /// Member name (= node hostname).
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    /// The lab node IP the member runs on.
    pub node_ip: String,
}

#[derive(Debug, Clone)]
pub(crate) struct EtcdCluster {
    /// Lab-internal identity (distinguishes a cluster from the one restored after it).
    pub uid: u64,
    /// Secrets-bundle identity (hash of the etcd CA).
    pub key: String,
    pub cluster_id: u64,
    pub members: Vec<EtcdMemberInfo>,
    pub leader: u64,
    pub kv: BTreeMap<String, Vec<u8>>,
    pub revision: i64,
    pub raft_index: u64,
    pub raft_term: u64,
}

/// Serialized cluster state inside a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    format: String,
    cluster_id: u64,
    revision: i64,
    raft_index: u64,
    members: Vec<EtcdMemberInfo>,
    kv: Vec<(String, Vec<u8>)>,
}

const SNAPSHOT_FORMAT: &str = "endsys-lab-etcd/v1";
const MAGIC: &[u8; 8] = b"LABETCD1";

impl EtcdCluster {
    /// The snapshot stream: magic, body length, JSON body, zero padding to a
    /// multiple of 512, then the SHA-256 of all preceding bytes. So
    /// `len % 512 == 32` like a bbolt snapshot with etcd's trailer.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        let body = SnapshotBody {
            format: SNAPSHOT_FORMAT.into(),
            cluster_id: self.cluster_id,
            revision: self.revision,
            raft_index: self.raft_index,
            members: self.members.clone(),
            kv: self
                .kv
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let json = serde_json::to_vec(&body).expect("snapshot body serializes");
        let mut out = Vec::with_capacity(json.len() + 600);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_be_bytes());
        out.extend_from_slice(&json);
        let pad = (512 - out.len() % 512) % 512;
        out.resize(out.len() + pad, 0);
        let hash = sha2::Sha256::digest(&out);
        out.extend_from_slice(&hash);
        out
    }
}

/// What a restore yields.
#[derive(Debug)]
pub(crate) struct RestoredState {
    pub kv: BTreeMap<String, Vec<u8>>,
    pub revision: i64,
    pub raft_index: u64,
}

/// Parses a snapshot, checking the SHA-256 trailer unless `skip_hash` (a raw db copy
/// carries no trailer). Errors read like etcdutl's.
pub(crate) fn restore(data: &[u8], skip_hash: bool) -> Result<RestoredState, String> {
    let body = if skip_hash {
        if data.len() % 512 == 32 {
            &data[..data.len() - 32]
        } else {
            data
        }
    } else {
        if data.len() % 512 != 32 {
            return Err("snapshot file integrity check failed: sha256 checksum not found".into());
        }
        let (body, trailer) = data.split_at(data.len() - 32);
        if sha2::Sha256::digest(body).as_slice() != trailer {
            return Err("snapshot file integrity check failed: expected sha256 mismatch".into());
        }
        body
    };
    if body.len() < 16 || &body[..8] != MAGIC {
        return Err("snapshot file is not a valid etcd database (bad magic)".into());
    }
    let len = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes")) as usize;
    let json = body
        .get(16..16 + len)
        .ok_or_else(|| "snapshot file is truncated".to_string())?;
    let parsed: SnapshotBody =
        serde_json::from_slice(json).map_err(|e| format!("snapshot database is corrupt: {e}"))?;
    if parsed.format != SNAPSHOT_FORMAT {
        return Err(format!("unsupported snapshot format {:?}", parsed.format));
    }
    Ok(RestoredState {
        kv: parsed.kv.into_iter().collect(),
        revision: parsed.revision,
        raft_index: parsed.raft_index,
    })
}

/// All etcd clusters of a lab.
#[derive(Debug, Default)]
pub(crate) struct EtcdStore {
    pub clusters: Vec<EtcdCluster>,
    next_uid: u64,
}

impl EtcdStore {
    pub(crate) fn create(&mut self, key: &str) -> &mut EtcdCluster {
        self.next_uid += 1;
        self.clusters.push(EtcdCluster {
            uid: self.next_uid,
            key: key.to_string(),
            cluster_id: rand::random(),
            members: Vec::new(),
            leader: 0,
            kv: BTreeMap::new(),
            revision: 1,
            raft_index: 1,
            raft_term: 2,
        });
        self.clusters.last_mut().expect("just pushed")
    }

    pub(crate) fn get(&self, uid: u64) -> Option<&EtcdCluster> {
        self.clusters.iter().find(|c| c.uid == uid)
    }

    pub(crate) fn get_mut(&mut self, uid: u64) -> Option<&mut EtcdCluster> {
        self.clusters.iter_mut().find(|c| c.uid == uid)
    }
}

/// Errors from the simulated etcd KV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd cluster is running in the lab (bootstrap one first)")]
    NoCluster,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trip_and_trailer() {
        let mut store = EtcdStore::default();
        let c = store.create("k");
        c.kv.insert("/registry/a".into(), b"1".to_vec());
        c.revision = 42;
        let snap = c.snapshot();
        assert_eq!(snap.len() % 512, 32);
        let (body, trailer) = snap.split_at(snap.len() - 32);
        assert_eq!(sha2::Sha256::digest(body).as_slice(), trailer);
        let r = restore(&snap, false).unwrap();
        assert_eq!(r.revision, 42);
        assert_eq!(r.kv["/registry/a"], b"1");
        let mut bad = snap.clone();
        bad[20] ^= 0xff;
        assert!(restore(&bad, false).unwrap_err().contains("sha256"));
        // Skipping the hash check accepts the file as a raw db.
        assert!(restore(&snap, true).is_ok());
    }
}
