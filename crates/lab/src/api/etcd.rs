//! Bootstrap and the etcd calls of MachineService (member list, remove, leave,
//! forfeit leadership, recover upload, snapshot, status), on the lab's simulated
//! etcd clusters: control planes only, the local member must run, calls wrapped
//! in etcd's `WithRequireLeader` fail without quorum, and Bootstrap creates a
//! cluster (or restores one from the uploaded snapshot) exactly once per
//! secrets bundle.

use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status, Streaming};

use super::gate::{BoxStream, LabApi};
use crate::etcd::{restore, EtcdCluster};
use crate::node::data::{Membership, NodeState};
use crate::node::{delay, NodeInner};
use crate::tls::ApiMode;
use endsys_talos::api::common;
use endsys_talos::api::machine;

impl LabApi {
    /// The cluster of this node's local etcd member, which must be running.
    fn local_etcd(&self) -> Result<Membership, Status> {
        let d = self.node.data.lock().expect("data lock");
        let state = d
            .services
            .get("etcd")
            .map(|s| s.state.clone())
            .unwrap_or_else(|| "Finished".into());
        match d.etcd {
            Some(m) if state == "Running" => Ok(m),
            _ => Err(Status::unavailable(format!(
                "etcd is not running on this node (service etcd is {state})"
            ))),
        }
    }

    /// Calls wrapped in `WithRequireLeader` fail without quorum.
    fn require_leader(&self, uid: u64) -> Result<(), Status> {
        if self.node.fabric.has_quorum(uid) {
            Ok(())
        } else {
            Err(Status::unavailable("etcdserver: no leader"))
        }
    }

    fn with_cluster<R>(
        &self,
        uid: u64,
        f: impl FnOnce(&mut EtcdCluster) -> R,
    ) -> Result<R, Status> {
        let mut store = self.node.fabric.etcd.lock().expect("etcd lock");
        let c = store
            .get_mut(uid)
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        Ok(f(c))
    }

    /// Bootstrap: a new cluster of this node's secrets bundle, or one restored from
    /// the snapshot EtcdRecover uploaded; `AlreadyExists` once etcd has data.
    pub(super) async fn bootstrap_etcd(
        &self,
        request: Request<machine::BootstrapRequest>,
    ) -> Result<Response<machine::BootstrapResponse>, Status> {
        self.node
            .fabric
            .bootstrap_calls
            .fetch_add(1, Ordering::SeqCst);
        let info = self.gate(&request, "Bootstrap")?;
        let req = request.into_inner();
        let node = &self.node;
        if info.mode != ApiMode::Configured || node.state() != NodeState::Running {
            return Err(Status::failed_precondition(
                "bootstrap is not available yet",
            ));
        }
        let cfg = match self.control_plane(&info, "bootstrap") {
            Ok(c) => c,
            Err(_) if node.v112() => {
                return Err(Status::failed_precondition(
                    "bootstrap can only be performed on a control plane node",
                ))
            }
            Err(e) => return Err(e),
        };
        {
            let d = node.data.lock().expect("data lock");
            if d.etcd.is_some() {
                return Err(Status::already_exists("etcd data directory is not empty"));
            }
            let etcd_state = d.services.get("etcd").map(|s| s.state.as_str());
            if !matches!(etcd_state, Some("Preparing") | Some("Failed")) {
                return Err(Status::failed_precondition(
                    "bootstrap is not available yet",
                ));
            }
        }
        if !req.recover_etcd {
            // A cluster of this secrets bundle already runs: this node would have
            // joined it moments later; the lab joins it now, so the answer is the
            // one every later Bootstrap gets.
            // Without quorum it could not join, and Talos would start a second
            // cluster: so does the lab.
            if let Some(uid) = node
                .fabric
                .alive_cluster_for_key(&cfg.etcd_key)
                .filter(|uid| node.fabric.has_quorum(*uid))
            {
                node.join_now(uid);
                node.commit();
                return Err(Status::already_exists("etcd data directory is not empty"));
            }
        }
        let outcome: Result<(), String> = if req.recover_etcd {
            let file = node.data.lock().expect("data lock").recover_file.take();
            match file {
                None => Err("open /var/lib/etcd.snapshot: no such file or directory".into()),
                Some(bytes) => restore(&bytes, req.recover_skip_hash_check)
                    .map(|restored| node.create_cluster(&cfg.etcd_key, Some(restored))),
            }
        } else {
            node.create_cluster(&cfg.etcd_key, None);
            Ok(())
        };
        {
            let mut d = node.data.lock().expect("data lock");
            d.set_service("etcd", "Finished", "Bootstrap requested");
            match &outcome {
                Ok(()) => d.set_service("etcd", "Starting", "Starting service"),
                Err(e) => d.set_service(
                    "etcd",
                    "Failed",
                    &format!("Failed to run pre stage: failed to recover etcd: {e}"),
                ),
            }
        }
        node.commit();
        if outcome.is_ok() {
            let finish = |n: &NodeInner| {
                let mut d = n.data.lock().expect("data lock");
                d.set_service("etcd", "Running", "Health check successful");
                drop(d);
                n.commit();
                n.fabric.kick_joins();
            };
            if node.fabric.scaled(delay::ETCD_START).is_zero() {
                finish(node);
            } else {
                let n = node.clone();
                let gen = n.gen();
                tokio::spawn(async move {
                    n.sleep("etcd start", delay::ETCD_START).await;
                    if n.gen() == gen {
                        finish(&n);
                    }
                });
            }
        }
        Ok(Response::new(machine::BootstrapResponse {
            messages: vec![machine::Bootstrap { metadata: None }],
        }))
    }

    /// EtcdMemberList (`query_local` needs the local member running).
    pub(super) async fn member_list(
        &self,
        request: Request<machine::EtcdMemberListRequest>,
    ) -> Result<Response<machine::EtcdMemberListResponse>, Status> {
        let info = self.gate(&request, "EtcdMemberList")?;
        let cfg = self.control_plane(&info, "member list")?;
        let query_local = request.get_ref().query_local;
        let uid = match self.local_etcd() {
            Ok(m) => m.cluster_uid,
            Err(e) if query_local => return Err(e),
            // Non-local: the client talks to all control-plane endpoints.
            Err(e) => self
                .node
                .fabric
                .alive_cluster_for_key(&cfg.etcd_key)
                .ok_or(e)?,
        };
        self.require_leader(uid)?;
        let members = self.with_cluster(uid, |c| c.members.clone())?;
        Ok(Response::new(machine::EtcdMemberListResponse {
            messages: vec![machine::EtcdMembers {
                metadata: None,
                legacy_members: members.iter().map(|m| m.name.clone()).collect(),
                members: members
                    .iter()
                    .map(|m| machine::EtcdMember {
                        id: m.id,
                        hostname: m.name.clone(),
                        peer_urls: m.peer_urls.clone(),
                        client_urls: m.client_urls.clone(),
                        is_learner: m.is_learner,
                    })
                    .collect(),
            }],
        }))
    }

    /// EtcdRemoveMemberByID; the removed member's etcd stops.
    pub(super) async fn remove_member(
        &self,
        request: Request<machine::EtcdRemoveMemberByIdRequest>,
    ) -> Result<Response<machine::EtcdRemoveMemberByIdResponse>, Status> {
        let info = self.gate(&request, "EtcdRemoveMemberByID")?;
        let cfg = self.control_plane(&info, "etcd remove member")?;
        let id = request.get_ref().member_id;
        let uid = match self.local_etcd() {
            Ok(m) => m.cluster_uid,
            Err(e) => self
                .node
                .fabric
                .alive_cluster_for_key(&cfg.etcd_key)
                .ok_or(e)?,
        };
        self.require_leader(uid)?;
        let removed = self.with_cluster(uid, |c| {
            let pos = c.members.iter().position(|m| m.id == id)?;
            let m = c.members.remove(pos);
            if c.leader == id {
                c.leader = c.members.first().map(|x| x.id).unwrap_or(0);
                c.raft_term += 1;
            }
            c.raft_index += 1;
            Some(m)
        })?;
        let Some(removed) = removed else {
            return Err(Status::not_found("etcdserver: member not found"));
        };
        self.node
            .fabric
            .member_removals
            .fetch_add(1, Ordering::SeqCst);
        // The removed member's etcd stops; its data dir stays until it is reset.
        for n in self.node.fabric.nodes() {
            if n.ip.to_string() == removed.node_ip {
                let mine = n.data.lock().expect("data lock").etcd;
                if mine.is_some_and(|m| m.member_id == id) {
                    let mut d = n.data.lock().expect("data lock");
                    d.set_service(
                        "etcd",
                        "Failed",
                        "etcdserver: the member has been permanently removed from the cluster",
                    );
                    drop(d);
                    n.commit();
                }
            }
        }
        self.node.commit();
        Ok(Response::new(machine::EtcdRemoveMemberByIdResponse {
            messages: vec![machine::EtcdRemoveMemberById { metadata: None }],
        }))
    }

    /// EtcdLeaveCluster: this node's member leaves, its data dir emptied.
    pub(super) async fn leave_cluster(
        &self,
        request: Request<machine::EtcdLeaveClusterRequest>,
    ) -> Result<Response<machine::EtcdLeaveClusterResponse>, Status> {
        let info = self.gate(&request, "EtcdLeaveCluster")?;
        self.control_plane(&info, "etcd leave")?;
        let me = self.local_etcd()?;
        self.require_leader(me.cluster_uid)?;
        self.node.leave_etcd();
        Ok(Response::new(machine::EtcdLeaveClusterResponse {
            messages: vec![machine::EtcdLeaveCluster { metadata: None }],
        }))
    }

    /// EtcdForfeitLeadership: leadership handed to another member.
    pub(super) async fn forfeit_leadership(
        &self,
        request: Request<machine::EtcdForfeitLeadershipRequest>,
    ) -> Result<Response<machine::EtcdForfeitLeadershipResponse>, Status> {
        let info = self.gate(&request, "EtcdForfeitLeadership")?;
        self.control_plane(&info, "etcd forfeit leadership")?;
        let me = self.local_etcd()?;
        self.require_leader(me.cluster_uid)?;
        let new_leader = self.with_cluster(me.cluster_uid, |c| {
            if c.leader != me.member_id {
                return String::new();
            }
            match c.members.iter().find(|m| m.id != me.member_id) {
                Some(other) => {
                    c.leader = other.id;
                    c.raft_term += 1;
                    other.name.clone()
                }
                None => String::new(),
            }
        })?;
        Ok(Response::new(machine::EtcdForfeitLeadershipResponse {
            messages: vec![machine::EtcdForfeitLeadership {
                metadata: None,
                member: new_leader,
            }],
        }))
    }

    /// EtcdRecover: stores the snapshot a later Bootstrap{recover_etcd} restores.
    pub(super) async fn receive_snapshot(
        &self,
        request: Request<Streaming<common::Data>>,
    ) -> Result<Response<machine::EtcdRecoverResponse>, Status> {
        let info = self.gate(&request, "EtcdRecover")?;
        self.control_plane(&info, "etcd recover")?;
        let ready = {
            let d = self.node.data.lock().expect("data lock");
            self.node.state() == NodeState::Running && d.etcd.is_none()
        };
        if !ready {
            return Err(Status::failed_precondition(
                "etcd service is not ready for recovery yet",
            ));
        }
        let mut stream = request.into_inner();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.message().await? {
            buf.extend_from_slice(&chunk.bytes);
        }
        self.node.data.lock().expect("data lock").recover_file = Some(buf);
        Ok(Response::new(machine::EtcdRecoverResponse {
            messages: vec![machine::EtcdRecover { metadata: None }],
        }))
    }

    /// EtcdSnapshot, streamed in 1 KiB chunks.
    pub(super) async fn stream_snapshot(
        &self,
        request: Request<machine::EtcdSnapshotRequest>,
    ) -> Result<Response<BoxStream<common::Data>>, Status> {
        let info = self.gate(&request, "EtcdSnapshot")?;
        self.control_plane(&info, "etcd snapshot")?;
        let me = self.local_etcd()?;
        let bytes = self.with_cluster(me.cluster_uid, |c| c.snapshot())?;
        let chunks: Vec<Result<common::Data, Status>> = bytes
            .chunks(1024)
            .map(|c| {
                Ok(common::Data {
                    metadata: None,
                    bytes: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    /// EtcdStatus, with the member's alarms listed as etcd lists them.
    pub(super) async fn member_status(
        &self,
        request: Request<()>,
    ) -> Result<Response<machine::EtcdStatusResponse>, Status> {
        let info = self.gate(&request, "EtcdStatus")?;
        self.control_plane(&info, "etcd status")?;
        let me = self.local_etcd()?;
        // etcd lists active alarms in the status errors as "memberID:<id> alarm:<type>".
        let errors: Vec<String> = self
            .node
            .etcd_alarms
            .lock()
            .expect("alarms lock")
            .iter()
            .map(|a| format!("memberID:{} alarm:{a}", me.member_id))
            .collect();
        let leader = self.node.fabric.elect_leader(me.cluster_uid);
        let status = self.with_cluster(me.cluster_uid, |c| {
            let size = c.snapshot().len() as i64;
            machine::EtcdMemberStatus {
                storage_version: "3.6.0".into(),
                member_id: me.member_id,
                protocol_version: "3.6.5".into(),
                db_size: size,
                db_size_in_use: size,
                leader,
                raft_index: c.raft_index,
                raft_term: c.raft_term,
                raft_applied_index: c.raft_index,
                errors,
                is_learner: false,
            }
        })?;
        Ok(Response::new(machine::EtcdStatusResponse {
            messages: vec![machine::EtcdStatus {
                metadata: None,
                member_status: Some(status),
            }],
        }))
    }
}
