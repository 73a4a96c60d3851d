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

// The bbolt file layout etcd's snapshots have (go.etcd.io/bbolt): pages of
// PAGE bytes, a 16-byte header each; pages 0 and 1 are meta pages, page 2 the
// freelist, page 3 the root leaf (here: the lab's own body, over overflow pages).
const PAGE: usize = 4096;
const BOLT_MAGIC: u32 = 0xED0C_DAED;
const BOLT_VERSION: u32 = 2;
const ROOT_PAGE: u64 = 3;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn page_header(out: &mut [u8], id: u64, flags: u16, overflow: u32) {
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..10].copy_from_slice(&flags.to_le_bytes());
    out[12..16].copy_from_slice(&overflow.to_le_bytes());
}

/// A bbolt file holding `body` in its root page.
fn bolt_file(body: &[u8]) -> Vec<u8> {
    let root_pages = (16 + body.len()).div_ceil(PAGE);
    let pages = ROOT_PAGE as usize + root_pages;
    let mut d = vec![0u8; pages * PAGE];
    for (id, txid) in [(0u64, 2u64), (1, 1)] {
        let o = id as usize * PAGE;
        page_header(&mut d[o..], id, 0x04, 0);
        let m = o + 16;
        d[m..m + 4].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
        d[m + 4..m + 8].copy_from_slice(&BOLT_VERSION.to_le_bytes());
        d[m + 8..m + 12].copy_from_slice(&(PAGE as u32).to_le_bytes());
        d[m + 16..m + 24].copy_from_slice(&ROOT_PAGE.to_le_bytes());
        d[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes());
        d[m + 40..m + 48].copy_from_slice(&(pages as u64).to_le_bytes());
        d[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&d[m..m + 56]);
        d[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
    }
    page_header(&mut d[2 * PAGE..], 2, 0x10, 0);
    let r = ROOT_PAGE as usize * PAGE;
    page_header(&mut d[r..], ROOT_PAGE, 0x02, (root_pages - 1) as u32);
    d[r + 16..r + 16 + body.len()].copy_from_slice(body);
    d
}

/// The root page's content of a bbolt file, checking a meta page as bbolt
/// does (magic, version, checksum); errors read like etcdutl's.
fn bolt_body(db: &[u8]) -> Result<&[u8], String> {
    let meta_ok = |o: usize| -> Option<u64> {
        let m = db.get(o + 16..o + 80)?;
        let u32_at = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or([0; 8]));
        (u32_at(0) == BOLT_MAGIC && u32_at(4) == BOLT_VERSION && u64_at(56) == fnv1a64(&m[..56]))
            .then(|| u64_at(16))
    };
    let root = meta_ok(0)
        .or_else(|| meta_ok(PAGE))
        .ok_or_else(|| "snapshot file is not a valid etcd database (bad magic)".to_string())?;
    db.get(root as usize * PAGE + 16..)
        .ok_or_else(|| "snapshot file is truncated".to_string())
}

impl EtcdCluster {
    /// The snapshot stream: a bbolt file (meta pages, freelist, a root page
    /// with the lab's body: magic, length, JSON), then the SHA-256 of all
    /// preceding bytes, as etcd streams it (`len % 512 == 32`).
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
        let mut inner = Vec::with_capacity(json.len() + 16);
        inner.extend_from_slice(MAGIC);
        inner.extend_from_slice(&(json.len() as u64).to_be_bytes());
        inner.extend_from_slice(&json);
        let mut out = bolt_file(&inner);
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
    let db = if skip_hash {
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
    let body = bolt_body(db)?;
    if body.len() < 16 || &body[..8] != MAGIC {
        return Err("snapshot database is corrupt: no etcd data in the root page".into());
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
        // A bbolt file underneath, as etcd's snapshots are.
        assert_eq!(&snap[16..20], &0xED0C_DAEDu32.to_le_bytes());
        assert!(restore(&vec![0u8; 4096], true)
            .unwrap_err()
            .contains("bad magic"));
    }
}
