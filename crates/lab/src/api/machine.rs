//! MachineService: every call of the node's machine API. The configuration, info
//! and lifecycle calls (ApplyConfiguration, Events, Kubeconfig, Reboot, Reset,
//! ServiceList, Version) are answered here; ApplyConfiguration's rules live in
//! `apply`, Bootstrap and the etcd calls in `etcd`, Read, ImagePull and Upgrade
//! in `upgrade`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::gate::{ts, BoxStream, LabApi};
use crate::config::NodeConfig;
use crate::tls::ApiMode;
use endsys_core::pki::{LeafSpec, Usage};
use endsys_talos::api::common;
use endsys_talos::api::machine::{self, machine_service_server::MachineService};

impl LabApi {
    fn kubeconfig_bytes(&self, cfg: &NodeConfig) -> Result<Vec<u8>, Status> {
        let ca = cfg.cluster_ca.as_ref().ok_or_else(|| {
            Status::internal("failed to generate kubeconfig: cluster.ca is not set")
        })?;
        let leaf = ca
            .issue(&LeafSpec {
                common_name: "admin".into(),
                organizations: vec!["system:masters".into()],
                ip_sans: vec![],
                dns_sans: vec![],
                usage: Usage::Client,
                validity: Duration::from_secs(365 * 24 * 3600),
            })
            .map_err(|e| Status::internal(format!("failed to generate kubeconfig: {e}")))?;
        let key_pem = leaf
            .key_pem()
            .map_err(|e| Status::internal(format!("failed to generate kubeconfig: {e}")))?;
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let name = &cfg.cluster_name;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n    - name: {name}\n      cluster:\n        server: {server}\n        certificate-authority-data: {ca}\nusers:\n    - name: admin@{name}\n      user:\n        client-certificate-data: {crt}\n        client-key-data: {key}\ncontexts:\n    - context:\n        cluster: {name}\n        namespace: default\n        user: admin@{name}\n      name: admin@{name}\ncurrent-context: admin@{name}\n",
            server = cfg.endpoint,
            ca = b64(&ca.pair.cert_pem),
            crt = b64(&leaf.cert_pem),
            key = b64(&key_pem),
        );
        let mut tar_bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar_bytes);
            let mut header = tar::Header::new_gnu();
            header.set_size(kubeconfig.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder
                .append_data(&mut header, "kubeconfig", kubeconfig.as_bytes())
                .map_err(|e| Status::internal(e.to_string()))?;
            builder
                .finish()
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar_bytes)
            .map_err(|e| Status::internal(e.to_string()))?;
        gz.finish().map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl MachineService for LabApi {
    async fn apply_configuration(
        &self,
        request: Request<machine::ApplyConfigurationRequest>,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        if !request.get_ref().dry_run {
            self.node.fabric.apply_calls.fetch_add(1, Ordering::SeqCst);
        }
        let info = self.gate(&request, "ApplyConfiguration")?;
        if self
            .node
            .apply_busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Status::failed_precondition(
                "another apply configuration is already in progress",
            ));
        }
        let result = self.apply_inner(&info, request.into_inner());
        self.node.apply_busy.store(false, Ordering::SeqCst);
        result
    }

    async fn bootstrap(
        &self,
        request: Request<machine::BootstrapRequest>,
    ) -> Result<Response<machine::BootstrapResponse>, Status> {
        self.bootstrap_etcd(request).await
    }

    type EventsStream = BoxStream<machine::Event>;

    async fn events(
        &self,
        request: Request<machine::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.gate(&request, "Events")?;
        let req = request.into_inner();
        let mut live = self.node.events_tx.subscribe();
        let history: Vec<_> = self.node.events_log.lock().expect("events lock").clone();
        let mut backlog: Vec<_> = if !req.tail_id.is_empty() {
            history
                .iter()
                .filter(|e| e.event.id > req.tail_id)
                .cloned()
                .collect()
        } else if req.tail_events < 0 {
            history.clone()
        } else {
            let n = req.tail_events as usize;
            history[history.len().saturating_sub(n)..].to_vec()
        };
        let actor = req.with_actor_id;
        backlog.retain(|e| actor.is_empty() || e.event.actor_id == actor);
        let mut last_seq = history.last().map(|e| e.seq).unwrap_or(0);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for e in backlog {
                if tx.send(Ok(e.event.clone())).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = live.recv() => match r {
                        Ok(e) => {
                            if e.seq <= last_seq || (!actor.is_empty() && e.event.actor_id != actor) {
                                continue;
                            }
                            last_seq = e.seq;
                            if tx.send(Ok(e.event.clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn etcd_member_list(
        &self,
        request: Request<machine::EtcdMemberListRequest>,
    ) -> Result<Response<machine::EtcdMemberListResponse>, Status> {
        self.member_list(request).await
    }

    async fn etcd_remove_member_by_id(
        &self,
        request: Request<machine::EtcdRemoveMemberByIdRequest>,
    ) -> Result<Response<machine::EtcdRemoveMemberByIdResponse>, Status> {
        self.remove_member(request).await
    }

    async fn etcd_leave_cluster(
        &self,
        request: Request<machine::EtcdLeaveClusterRequest>,
    ) -> Result<Response<machine::EtcdLeaveClusterResponse>, Status> {
        self.leave_cluster(request).await
    }

    async fn etcd_forfeit_leadership(
        &self,
        request: Request<machine::EtcdForfeitLeadershipRequest>,
    ) -> Result<Response<machine::EtcdForfeitLeadershipResponse>, Status> {
        self.forfeit_leadership(request).await
    }

    async fn etcd_recover(
        &self,
        request: Request<Streaming<common::Data>>,
    ) -> Result<Response<machine::EtcdRecoverResponse>, Status> {
        self.receive_snapshot(request).await
    }

    type EtcdSnapshotStream = BoxStream<common::Data>;

    async fn etcd_snapshot(
        &self,
        request: Request<machine::EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        self.stream_snapshot(request).await
    }

    async fn etcd_status(
        &self,
        request: Request<()>,
    ) -> Result<Response<machine::EtcdStatusResponse>, Status> {
        self.member_status(request).await
    }

    type KubeconfigStream = BoxStream<common::Data>;

    async fn kubeconfig(
        &self,
        request: Request<()>,
    ) -> Result<Response<Self::KubeconfigStream>, Status> {
        let info = self.gate(&request, "Kubeconfig")?;
        let cfg = self.control_plane(&info, "kubeconfig")?;
        let bytes = self.kubeconfig_bytes(&cfg)?;
        let item = Ok(common::Data {
            metadata: None,
            bytes,
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![item]))))
    }

    async fn reboot(
        &self,
        request: Request<machine::RebootRequest>,
    ) -> Result<Response<machine::RebootResponse>, Status> {
        self.gate(&request, "Reboot")?;
        let actor = uuid::Uuid::new_v4().to_string();
        let a = actor.clone();
        let marker = self.spawn(|n, gen| async move { n.reboot_cycle(gen, &a).await });
        Ok(Self::with_marker(
            Response::new(machine::RebootResponse {
                messages: vec![machine::Reboot {
                    metadata: None,
                    actor_id: actor,
                }],
            }),
            marker,
        ))
    }

    async fn reset(
        &self,
        request: Request<machine::ResetRequest>,
    ) -> Result<Response<machine::ResetResponse>, Status> {
        self.gate(&request, "Reset")?;
        let req = request.into_inner();
        use machine::reset_request::WipeMode;
        let mode = WipeMode::try_from(req.mode).unwrap_or(WipeMode::All);
        if mode == WipeMode::SystemDisk && !req.user_disks_to_wipe.is_empty() {
            return Err(Status::unknown(
                "reset user disks is not allowed with SYSTEM_DISK wipe mode",
            ));
        }
        if mode == WipeMode::UserDisks && !req.system_partitions_to_wipe.is_empty() {
            return Err(Status::unknown(
                "reset system partitions is not allowed with USER_DISKS wipe mode",
            ));
        }
        let mut labels = Vec::new();
        for p in &req.system_partitions_to_wipe {
            if !["STATE", "EPHEMERAL", "META", "BOOT", "EFI"].contains(&p.label.as_str()) {
                return Err(Status::unknown(format!(
                    "failed to reset: volume {:?} not found",
                    p.label
                )));
            }
            if p.wipe {
                labels.push(p.label.clone());
            }
        }
        for disk in &req.user_disks_to_wipe {
            let name = disk.trim_start_matches("/dev/");
            if !self.node.hardware.disks.iter().any(|d| d.dev_name == name) {
                return Err(Status::unknown(format!("disk {disk} not found")));
            }
        }
        if mode == WipeMode::UserDisks {
            labels.clear();
            labels.push("USER-ONLY".into());
        }
        let actor = uuid::Uuid::new_v4().to_string();
        let a = actor.clone();
        let (graceful, reboot) = (req.graceful, req.reboot);
        let marker =
            self.spawn(|n, gen| async move { n.reset(gen, graceful, reboot, labels, a).await });
        Ok(Self::with_marker(
            Response::new(machine::ResetResponse {
                messages: vec![machine::Reset {
                    metadata: None,
                    actor_id: actor,
                }],
            }),
            marker,
        ))
    }

    async fn service_list(
        &self,
        request: Request<()>,
    ) -> Result<Response<machine::ServiceListResponse>, Status> {
        self.gate(&request, "ServiceList")?;
        let d = self.node.data.lock().expect("data lock");
        let services = d
            .services
            .iter()
            .map(|(id, s)| machine::ServiceInfo {
                id: id.clone(),
                state: s.state.clone(),
                events: Some(machine::ServiceEvents {
                    events: s
                        .events
                        .iter()
                        .map(|(msg, state, t)| machine::ServiceEvent {
                            msg: msg.clone(),
                            state: state.clone(),
                            ts: ts(*t),
                        })
                        .collect(),
                }),
                health: Some(machine::ServiceHealth {
                    unknown: s.unknown,
                    healthy: s.healthy,
                    last_message: s.last_message.clone(),
                    last_change: ts(s.last_change),
                }),
            })
            .collect();
        Ok(Response::new(machine::ServiceListResponse {
            messages: vec![machine::ServiceList {
                metadata: None,
                services,
            }],
        }))
    }

    type ReadStream = BoxStream<common::Data>;

    async fn read(
        &self,
        request: Request<machine::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.gate(&request, "Read")?;
        let stream = self.read_file(&request.get_ref().path)?;
        Ok(Response::new(stream))
    }

    async fn upgrade(
        &self,
        request: Request<machine::UpgradeRequest>,
    ) -> Result<Response<machine::UpgradeResponse>, Status> {
        self.legacy_upgrade(request)
    }

    async fn image_pull(
        &self,
        request: Request<machine::ImagePullRequest>,
    ) -> Result<Response<machine::ImagePullResponse>, Status> {
        self.legacy_image_pull(request)
    }

    async fn version(
        &self,
        request: Request<()>,
    ) -> Result<Response<machine::VersionResponse>, Status> {
        let info = self.gate(&request, "Version")?;
        let features =
            (info.mode == ApiMode::Configured).then_some(machine::FeaturesInfo { rbac: true });
        Ok(Response::new(machine::VersionResponse {
            messages: vec![machine::Version {
                metadata: None,
                version: Some(machine::VersionInfo {
                    tag: self.node.talos_version(),
                    sha: "endsys-lab".into(),
                    built: String::new(),
                    go_version: "go1.25.5".into(),
                    os: "linux".into(),
                    arch: "amd64".into(),
                }),
                platform: Some(machine::PlatformInfo {
                    name: "metal".into(),
                    mode: "metal".into(),
                }),
                features,
            }],
        }))
    }
}
