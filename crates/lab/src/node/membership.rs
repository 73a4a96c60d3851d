//! etcd membership as the nodes hold it: bootstrap's new cluster, joining a
//! running cluster of the same secrets bundle (as Talos' etcd service does, a
//! stale member of the same name removed first), leaving; quorum and the leader
//! as the members see them (a new term when the leader's etcd stopped, as raft
//! elects); and [`EtcdHandle`], the key-value store the simulated Kubernetes API
//! keeps its objects in.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::data::{Membership, NodeState};
use super::{delay, Fabric, NodeInner};
use crate::etcd::{EtcdCluster, EtcdError, EtcdMemberInfo, RestoredState};

impl Fabric {
    /// Clusters with at least one member whose node still holds its data.
    pub(crate) fn alive_cluster_uids(&self) -> Vec<u64> {
        let memberships: Vec<(u64, u64)> = self
            .nodes()
            .iter()
            .filter_map(|n| n.data.lock().expect("data lock").etcd)
            .map(|m| (m.cluster_uid, m.member_id))
            .collect();
        let store = self.etcd.lock().expect("etcd lock");
        let mut uids: Vec<u64> = store
            .clusters
            .iter()
            .filter(|c| {
                memberships
                    .iter()
                    .any(|(uid, id)| *uid == c.uid && c.members.iter().any(|m| m.id == *id))
            })
            .map(|c| c.uid)
            .collect();
        uids.sort_unstable();
        uids
    }

    pub(crate) fn alive_cluster_for_key(&self, key: &str) -> Option<u64> {
        let alive = self.alive_cluster_uids();
        let store = self.etcd.lock().expect("etcd lock");
        alive
            .into_iter()
            .find(|uid| store.get(*uid).is_some_and(|c| c.key == key))
    }

    /// Whether more than half of the members of cluster `uid` run (a leader exists).
    pub(crate) fn has_quorum(&self, uid: u64) -> bool {
        let members: Vec<u64> = {
            let store = self.etcd.lock().expect("etcd lock");
            match store.get(uid) {
                Some(c) => c.members.iter().map(|m| m.id).collect(),
                None => return false,
            }
        };
        let healthy = self
            .nodes()
            .iter()
            .filter(|n| {
                let d = n.data.lock().expect("data lock");
                d.etcd
                    .is_some_and(|m| m.cluster_uid == uid && members.contains(&m.member_id))
                    && d.services.get("etcd").is_some_and(|s| s.state == "Running")
            })
            .count();
        healthy * 2 > members.len()
    }

    /// Whether member `id` of cluster `uid` answers: its node holds it and runs etcd.
    pub(crate) fn member_running(&self, uid: u64, id: u64) -> bool {
        self.nodes().iter().any(|n| {
            let d = n.data.lock().expect("data lock");
            d.etcd
                .is_some_and(|m| m.cluster_uid == uid && m.member_id == id)
                && d.services.get("etcd").is_some_and(|s| s.state == "Running")
        })
    }

    /// The leader of cluster `uid` as its members see it: 0 without quorum; when
    /// the recorded leader's etcd is not running, the healthy members elect one
    /// of themselves (a new term), as raft does after an election timeout.
    pub(crate) fn elect_leader(&self, uid: u64) -> u64 {
        if !self.has_quorum(uid) {
            return 0;
        }
        let running: Vec<u64> = self
            .nodes()
            .iter()
            .filter_map(|n| {
                let d = n.data.lock().expect("data lock");
                let up = d.services.get("etcd").is_some_and(|s| s.state == "Running");
                d.etcd
                    .filter(|m| m.cluster_uid == uid && up)
                    .map(|m| m.member_id)
            })
            .collect();
        let mut store = self.etcd.lock().expect("etcd lock");
        let Some(c) = store.get_mut(uid) else {
            return 0;
        };
        if !running.contains(&c.leader) {
            if let Some(m) = c.members.iter().find(|m| running.contains(&m.id)) {
                c.leader = m.id;
                c.raft_term += 1;
            }
        }
        c.leader
    }

    /// Starts the join of every running control plane that waits for an etcd
    /// cluster of its own secrets bundle.
    pub(crate) fn kick_joins(&self) {
        for node in self.nodes() {
            if node.join_eligible().is_some() {
                let mut d = node.data.lock().expect("data lock");
                if d.joining {
                    continue;
                }
                d.joining = true;
                drop(d);
                let gen = node.gen();
                tokio::spawn(async move { node.join_etcd(gen).await });
            }
        }
    }
}

impl NodeInner {
    /// Removes this node's member from its cluster and empties its data dir.
    pub(crate) fn leave_etcd(&self) {
        let membership = self.data.lock().expect("data lock").etcd.take();
        if let Some(m) = membership {
            let mut store = self.fabric.etcd.lock().expect("etcd lock");
            if let Some(c) = store.get_mut(m.cluster_uid) {
                c.members.retain(|x| x.id != m.member_id);
                if c.leader == m.member_id {
                    c.leader = c.members.first().map(|x| x.id).unwrap_or(0);
                    c.raft_term += 1;
                }
                c.raft_index += 1;
            }
        }
        let mut d = self.data.lock().expect("data lock");
        d.set_service("etcd", "Finished", "Service finished successfully");
        drop(d);
        self.commit();
    }

    fn member_info(&self, id: u64) -> EtcdMemberInfo {
        EtcdMemberInfo {
            id,
            name: self.hostname(),
            peer_urls: vec![format!("https://{}:2380", self.ip)],
            client_urls: vec![format!("https://{}:2379", self.ip)],
            is_learner: false,
            node_ip: self.ip.to_string(),
        }
    }

    /// Creates a cluster with this node as its only member (Bootstrap).
    pub(crate) fn create_cluster(&self, key: &str, restored: Option<RestoredState>) {
        let id: u64 = rand::random();
        let info = self.member_info(id);
        let uid = {
            let mut store = self.fabric.etcd.lock().expect("etcd lock");
            let c = store.create(key);
            c.members.push(info);
            c.leader = id;
            if let Some(r) = restored {
                c.kv = r.kv;
                c.revision = r.revision;
                c.raft_index = r.raft_index.max(1);
            }
            c.uid
        };
        self.data.lock().expect("data lock").etcd = Some(Membership {
            cluster_uid: uid,
            member_id: id,
        });
    }

    /// Some(cluster uid) when this node should join an existing cluster now.
    pub(crate) fn join_eligible(&self) -> Option<u64> {
        if self.state() != NodeState::Running || self.etcd_join_blocked.load(Ordering::SeqCst) {
            return None;
        }
        let key = {
            let d = self.data.lock().expect("data lock");
            let cfg = d.config.as_ref()?;
            if !cfg.machine_type.is_control_plane() || d.etcd.is_some() {
                return None;
            }
            if d.services.get("etcd").map(|s| s.state.as_str()) != Some("Preparing") {
                return None;
            }
            cfg.etcd_key.clone()
        };
        // Joining needs a leader (MemberAddAsLearner with WithRequireLeader).
        self.fabric
            .alive_cluster_for_key(&key)
            .filter(|uid| self.fabric.has_quorum(*uid))
    }

    /// Adds this node as a member of `uid` at once.
    pub(crate) fn join_now(&self, uid: u64) {
        let id: u64 = rand::random();
        let info = self.member_info(id);
        {
            let mut store = self.fabric.etcd.lock().expect("etcd lock");
            let Some(c) = store.get_mut(uid) else { return };
            // As Talos' addMember: a member with this node's name is a stale copy of
            // itself (data wiped) and is removed before joining.
            c.members.retain(|m| m.name != info.name);
            c.members.push(info);
            c.raft_index += 1;
        }
        let mut d = self.data.lock().expect("data lock");
        d.etcd = Some(Membership {
            cluster_uid: uid,
            member_id: id,
        });
        d.joining = false;
        d.set_service("etcd", "Running", "Health check successful");
    }

    async fn join_etcd(self: Arc<Self>, gen: u64) {
        self.sleep("etcd join", delay::ETCD_JOIN).await;
        if self.gen() != gen {
            return;
        }
        match self.join_eligible() {
            Some(uid) => self.join_now(uid),
            None => self.data.lock().expect("data lock").joining = false,
        }
        self.commit();
    }
}

/// Handle on the simulated etcd key-value store (the cluster the Kubernetes API of
/// the lab will use): the first cluster that still has a member with data.
#[derive(Clone)]
pub struct EtcdHandle {
    pub(crate) fabric: Arc<Fabric>,
}

impl EtcdHandle {
    fn with<R>(&self, f: impl FnOnce(&mut EtcdCluster) -> R) -> Result<R, EtcdError> {
        let alive = self.fabric.alive_cluster_uids();
        let mut store = self.fabric.etcd.lock().expect("etcd lock");
        let uid = *alive.first().ok_or(EtcdError::NoCluster)?;
        let c = store.get_mut(uid).ok_or(EtcdError::NoCluster)?;
        Ok(f(c))
    }

    /// Stores a value; returns the new revision.
    pub fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<i64, EtcdError> {
        let value = value.into();
        self.with(|c| {
            c.kv.insert(key.to_string(), value);
            c.revision += 1;
            c.raft_index += 1;
            c.revision
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        self.with(|c| c.kv.get(key).cloned())
    }

    /// Deletes a key; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        self.with(|c| {
            let existed = c.kv.remove(key).is_some();
            if existed {
                c.revision += 1;
                c.raft_index += 1;
            }
            existed
        })
    }

    /// Every key/value under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        self.with(|c| {
            c.kv.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    pub fn revision(&self) -> Result<i64, EtcdError> {
        self.with(|c| c.revision)
    }

    /// The members of the running cluster.
    pub fn members(&self) -> Result<Vec<EtcdMemberInfo>, EtcdError> {
        self.with(|c| c.members.clone())
    }

    /// Quorum of the running cluster right now: `(members with etcd running,
    /// members, has quorum)`. Tests sample it on every lab change.
    pub fn quorum(&self) -> Result<(usize, usize, bool), EtcdError> {
        let alive = self.fabric.alive_cluster_uids();
        let uid = *alive.first().ok_or(EtcdError::NoCluster)?;
        let members: Vec<u64> = {
            let store = self.fabric.etcd.lock().expect("etcd lock");
            store
                .get(uid)
                .ok_or(EtcdError::NoCluster)?
                .members
                .iter()
                .map(|m| m.id)
                .collect()
        };
        let healthy = self
            .fabric
            .nodes()
            .iter()
            .filter(|n| {
                let d = n.data.lock().expect("data lock");
                d.etcd
                    .is_some_and(|m| m.cluster_uid == uid && members.contains(&m.member_id))
                    && d.services.get("etcd").is_some_and(|s| s.state == "Running")
            })
            .count();
        Ok((healthy, members.len(), self.fabric.has_quorum(uid)))
    }

    /// How many distinct etcd clusters have live members (more than one = split brain).
    pub fn cluster_count(&self) -> usize {
        self.fabric.alive_cluster_uids().len()
    }
}
