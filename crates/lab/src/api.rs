//! The gRPC services of a simulated node: MachineService, ClusterService,
//! StorageService and COSI State, with Talos' role rules, maintenance-mode rules
//! and error codes/texts.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use super::config::{ConfigError, NodeConfig};
use super::node::{delay, ApiMode, NodeInner, ReplySent, ResRec};
use super::resources::{type_info, NAMESPACES};
use super::tls::LabConnInfo;
use super::NodeState;
use endsys_core::pki::{LeafSpec, Usage};
use endsys_talos::api::cluster::{
    self,
    cluster_service_server::{ClusterService, ClusterServiceServer},
};
use endsys_talos::api::common;
use endsys_talos::api::cosi::resource::{
    self as cosi,
    state_server::{State, StateServer},
};
use endsys_talos::api::machine::{
    self,
    apply_configuration_request::Mode as ApplyMode,
    machine_service_server::{MachineService, MachineServiceServer},
};
use endsys_talos::api::storage::{
    self,
    storage_service_server::{StorageService, StorageServiceServer},
};

const ADMIN: &str = "os:admin";
const OPERATOR: &str = "os:operator";
const READER: &str = "os:reader";
const BACKUP: &str = "os:etcd:backup";

/// apid's receive limit.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn not_authorized() -> Status {
    Status::permission_denied("not authorized")
}

#[derive(Clone)]
pub(crate) struct LabApi {
    pub node: Arc<NodeInner>,
}

/// Roles allowed per method (machined's rule table, 1.13; admin for unlisted ones).
fn allowed_roles(method: &str, v112: bool) -> &'static [&'static str] {
    match method {
        "ApplyConfiguration" | "BlockDeviceWipe" if v112 => &[ADMIN],
        "ApplyConfiguration" | "BlockDeviceWipe" => &[ADMIN, READER],
        "Bootstrap" | "Kubeconfig" | "Reset" => &[ADMIN],
        "Reboot" => &[ADMIN, OPERATOR],
        "Version" | "ServiceList" | "Events" | "HealthCheck" | "Disks" | "Get" | "List"
        | "Watch" => &[ADMIN, OPERATOR, READER],
        "EtcdMemberList" | "EtcdStatus" => &[ADMIN, OPERATOR, READER, BACKUP],
        "EtcdSnapshot" => &[ADMIN, OPERATOR, BACKUP],
        _ => &[ADMIN],
    }
}

fn mode_flag(mode: i32) -> String {
    let name = ApplyMode::try_from(mode)
        .map(|m| m.as_str_name())
        .unwrap_or("UNKNOWN");
    name.to_ascii_lowercase().replace('_', "-")
}

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

fn to_resource(r: &ResRec) -> cosi::Resource {
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: r.namespace.clone(),
            r#type: r.r#type.clone(),
            id: r.id.clone(),
            version: r.version.to_string(),
            owner: String::new(),
            phase: "running".into(),
            created: ts(r.created),
            updated: ts(r.updated),
            finalizers: vec![],
            labels: Default::default(),
            annotations: Default::default(),
        }),
        // proto_spec stays empty: the resource definition protos are not compiled
        // into this crate (see resources.rs).
        spec: Some(cosi::Spec {
            proto_spec: vec![],
            yaml_spec: r.yaml.clone(),
        }),
    }
}

fn tombstone(ns: &str, ty: &str, id: &str) -> cosi::Resource {
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: ns.into(),
            r#type: ty.into(),
            id: id.into(),
            version: "undefined".into(),
            phase: "running".into(),
            ..Default::default()
        }),
        spec: None,
    }
}

impl LabApi {
    /// The services of this node, without routing.
    pub(crate) fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            MachineServiceServer::new(self.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(ClusterServiceServer::new(self.clone()))
        .add_service(StorageServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(
            StateServer::new(self.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    /// The node's server: its services behind apid's `node` routing.
    pub(crate) fn router(
        &self,
    ) -> tonic::transport::server::Router<
        tower::layer::util::Stack<
            tower::layer::LayerFn<
                impl Fn(tonic::service::Routes) -> super::routing::Routing + Clone,
            >,
            tower::layer::util::Identity,
        >,
    > {
        let node = self.node.clone();
        Server::builder()
            .layer(tower::layer::layer_fn(move |inner| {
                super::routing::Routing {
                    inner,
                    node: node.clone(),
                }
            }))
            .add_routes(self.routes())
    }

    /// Fault injection, maintenance rules and the role check, in the order apid applies them.
    fn gate<T>(&self, req: &Request<T>, method: &str) -> Result<LabConnInfo, Status> {
        if self
            .node
            .drop_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable(
                "connection error: lab fault injection dropped this call",
            ));
        }
        let info = req
            .extensions()
            .get::<LabConnInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("lab: connection info missing"))?;
        if info.mode == ApiMode::Maintenance112 {
            return match method {
                "ApplyConfiguration" | "Disks" | "BlockDeviceWipe" | "Get" | "List" | "Watch"
                | "Create" | "Update" | "Destroy" => Ok(info),
                "Version" | "Reset" | "Upgrade" | "MetaWrite" | "MetaDelete" => Err(
                    Status::unimplemented("API is not implemented in maintenance mode"),
                ),
                "HealthCheck" => Err(Status::unimplemented(
                    "unknown service cluster.ClusterService",
                )),
                m => Err(Status::unimplemented(format!("method {m} not implemented"))),
            };
        }
        let allowed = allowed_roles(method, self.node.v112);
        if !info.roles.iter().any(|r| allowed.contains(&r.as_str())) {
            return Err(not_authorized());
        }
        Ok(info)
    }

    /// machinehelper.CheckControlplane.
    fn control_plane(&self, info: &LabConnInfo, api: &str) -> Result<Arc<NodeConfig>, Status> {
        let cfg = match (info.mode, self.node.config()) {
            (ApiMode::Configured, Some(cfg)) => cfg,
            _ => {
                return Err(Status::unimplemented(format!(
                    "machine type is not set, cannot use {api} API"
                )))
            }
        };
        if !cfg.machine_type.is_control_plane() {
            return Err(Status::unimplemented(format!(
                "{api} is only available on control plane nodes"
            )));
        }
        Ok(cfg)
    }

    /// The cluster of this node's local etcd member, which must be running.
    fn local_etcd(&self) -> Result<super::node::Membership, Status> {
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
        f: impl FnOnce(&mut super::etcd::EtcdCluster) -> R,
    ) -> Result<R, Status> {
        let mut store = self.node.fabric.etcd.lock().expect("etcd lock");
        let c = store
            .get_mut(uid)
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        Ok(f(c))
    }

    /// Starts a transition that takes the node down; the returned marker goes into
    /// the reply's extensions so the transition waits for the reply to be sent.
    fn spawn<F>(&self, f: impl FnOnce(Arc<NodeInner>, u64) -> F) -> ReplySent
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let node = self.node.clone();
        let marker = node.expect_reply();
        let gen = node.bump_gen();
        tokio::spawn(f(node, gen));
        marker
    }

    fn with_marker<T>(mut resp: Response<T>, marker: ReplySent) -> Response<T> {
        resp.extensions_mut().insert(marker);
        resp
    }

    fn apply_response(
        mode: ApplyMode,
        details: &str,
    ) -> Response<machine::ApplyConfigurationResponse> {
        Response::new(machine::ApplyConfigurationResponse {
            messages: vec![machine::ApplyConfiguration {
                metadata: None,
                warnings: vec![],
                mode: mode as i32,
                mode_details: details.into(),
            }],
        })
    }

    fn apply_inner(
        &self,
        info: &LabConnInfo,
        req: machine::ApplyConfigurationRequest,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        let node = &self.node;
        let mode = ApplyMode::try_from(req.mode).unwrap_or(ApplyMode::Reboot);
        match info.mode {
            ApiMode::Maintenance112 => {
                if !matches!(mode, ApplyMode::Try | ApplyMode::Reboot | ApplyMode::Auto) {
                    return Err(Status::unimplemented(format!(
                        "apply configuration --mode='{}' is not supported in maintenance mode",
                        mode_flag(req.mode)
                    )));
                }
                let cfg = match NodeConfig::parse(&req.data) {
                    Ok(c) => c,
                    Err(ConfigError::Parse(e)) => {
                        return Err(Status::unknown(format!("failed to parse config: {e}")))
                    }
                    Err(ConfigError::NoV1alpha1) => {
                        return Err(Status::invalid_argument(
                            "configuration validation failed: the machine configuration doesn't contain v1alpha1 config",
                        ))
                    }
                    Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(format!(
                            "configuration validation failed: {e}"
                        )))
                    }
                };
                if req.dry_run {
                    return Ok(Response::new(machine::ApplyConfigurationResponse {
                        messages: vec![machine::ApplyConfiguration {
                            mode_details: "Dry run summary:\nNode is running in maintenance mode and does not have a config yet.".into(),
                            ..Default::default()
                        }],
                    }));
                }
                if node.state() != NodeState::Maintenance {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                let marker = self.spawn(|n, gen| async move { n.leave_maintenance(gen).await });
                // 1.12 replies with warnings only; mode fields unset.
                Ok(Self::with_marker(
                    Response::new(machine::ApplyConfigurationResponse {
                        messages: vec![machine::ApplyConfiguration::default()],
                    }),
                    marker,
                ))
            }
            ApiMode::Maintenance113 => {
                let cfg = match NodeConfig::parse(&req.data) {
                    Ok(c) => c,
                    Err(ConfigError::NoV1alpha1) => {
                        // Not complete for boot: accepted, the node waits for the rest.
                        return Ok(Self::apply_response(
                            ApplyMode::NoReboot,
                            "Applied configuration without a reboot",
                        ));
                    }
                    Err(ConfigError::Parse(e)) | Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(e))
                    }
                };
                if req.dry_run {
                    return Ok(Self::apply_response(
                        ApplyMode::NoReboot,
                        "Dry run summary:\nNode is running in maintenance mode and does not have a config yet.",
                    ));
                }
                if node.state() != NodeState::Maintenance {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                if mode == ApplyMode::Staged {
                    return Ok(Self::apply_response(
                        ApplyMode::Staged,
                        "Staged configuration to be applied after a reboot",
                    ));
                }
                let marker = self.spawn(|n, gen| async move { n.leave_maintenance(gen).await });
                Ok(Self::with_marker(
                    Self::apply_response(
                        ApplyMode::NoReboot,
                        "Applied configuration without a reboot",
                    ),
                    marker,
                ))
            }
            ApiMode::Configured => {
                if !info.has(ADMIN) {
                    return Err(not_authorized());
                }
                if node.data.lock().expect("data lock").rebooting_after_apply {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                let cfg = match NodeConfig::parse(&req.data) {
                    Ok(c) => c,
                    Err(ConfigError::NoV1alpha1) => return Err(Status::invalid_argument(
                        "the applied machine configuration doesn't contain v1alpha1 config, did you mean to patch the machine config instead?",
                    )),
                    Err(ConfigError::Parse(e)) | Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(e))
                    }
                };
                let current = node.config();
                let same = current.as_ref().is_some_and(|c| c.raw == cfg.raw);
                let live_ok = current.as_ref().is_some_and(|c| {
                    c.machine_type == cfg.machine_type
                        && c.os_ca.pair.cert_pem == cfg.os_ca.pair.cert_pem
                        && c.etcd_key == cfg.etcd_key
                        && c.cert_sans == cfg.cert_sans
                });
                let effective = match mode {
                    // The lab treats every real change as needing a reboot (Talos
                    // applies some live; a reboot is the conservative superset).
                    ApplyMode::Auto if same => ApplyMode::NoReboot,
                    ApplyMode::Auto => ApplyMode::Reboot,
                    ApplyMode::NoReboot | ApplyMode::Try if !live_ok && !same => {
                        return Err(Status::invalid_argument(
                            "apply failed: the configuration change can't be applied without a reboot (machine type, CA or certificate SANs changed)",
                        ))
                    }
                    m => m,
                };
                if req.dry_run {
                    return Ok(Self::apply_response(
                        effective,
                        if same {
                            "Dry run summary:\nNo changes."
                        } else {
                            "Dry run summary:\nConfig diff: (lab: not computed)"
                        },
                    ));
                }
                if same && effective != ApplyMode::Reboot {
                    return Ok(Self::apply_response(
                        ApplyMode::NoReboot,
                        "Applied configuration without a reboot (no changes)",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                match effective {
                    ApplyMode::Reboot => {
                        node.data.lock().expect("data lock").rebooting_after_apply = true;
                        node.commit();
                        let marker =
                            self.spawn(|n, gen| async move { n.reboot_cycle(gen, "").await });
                        Ok(Self::with_marker(
                            Self::apply_response(
                                ApplyMode::Reboot,
                                "Applied configuration with a reboot",
                            ),
                            marker,
                        ))
                    }
                    ApplyMode::Staged => Ok(Self::apply_response(
                        ApplyMode::Staged,
                        "Staged configuration to be applied after a reboot",
                    )),
                    // TRY is applied like NO_REBOOT; the lab does not revert it.
                    m => {
                        node.commit();
                        Ok(Self::apply_response(
                            m,
                            "Applied configuration without a reboot",
                        ))
                    }
                }
            }
        }
    }

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

    fn check_cosi_type(&self, info: &LabConnInfo, ns: &str, ty: &str) -> Result<(), Status> {
        let Some((_, sensitive)) = type_info(ty) else {
            return Err(Status::permission_denied(format!(
                "resource type {ty:?} is not supported"
            )));
        };
        if !NAMESPACES.contains(&ns) {
            return Err(Status::permission_denied(format!(
                "namespace {ns:?} is not supported"
            )));
        }
        if sensitive && !info.has(ADMIN) {
            return Err(not_authorized());
        }
        Ok(())
    }

    fn snapshot_of(&self, ns: &str, ty: &str, id: Option<&str>) -> Vec<ResRec> {
        let d = self.node.data.lock().expect("data lock");
        d.resources
            .values()
            .filter(|r| r.namespace == ns && r.r#type == ty && id.is_none_or(|i| r.id == i))
            .cloned()
            .collect()
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
            Err(_) if node.v112 => {
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
                Some(bytes) => super::etcd::restore(&bytes, req.recover_skip_hash_check)
                    .map(|restored| node.create_cluster(&cfg.etcd_key, Some(restored))),
            }
        } else {
            node.create_cluster(&cfg.etcd_key, None);
            Ok(())
        };
        {
            let mut d = node.data.lock().expect("data lock");
            NodeInner::set_service(&mut d, "etcd", "Finished", "Bootstrap requested");
            match &outcome {
                Ok(()) => NodeInner::set_service(&mut d, "etcd", "Starting", "Starting service"),
                Err(e) => NodeInner::set_service(
                    &mut d,
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
                NodeInner::set_service(&mut d, "etcd", "Running", "Health check successful");
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
                    n.sleep(delay::ETCD_START).await;
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

    async fn etcd_remove_member_by_id(
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
                    NodeInner::set_service(
                        &mut d,
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

    async fn etcd_leave_cluster(
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

    async fn etcd_forfeit_leadership(
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

    async fn etcd_recover(
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

    type EtcdSnapshotStream = BoxStream<common::Data>;

    async fn etcd_snapshot(
        &self,
        request: Request<machine::EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
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

    async fn etcd_status(
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
                    tag: self.node.talos_version.clone(),
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

#[tonic::async_trait]
impl ClusterService for LabApi {
    type HealthCheckStream = BoxStream<cluster::HealthCheckProgress>;

    async fn health_check(
        &self,
        request: Request<cluster::HealthCheckRequest>,
    ) -> Result<Response<Self::HealthCheckStream>, Status> {
        let info = self.gate(&request, "HealthCheck")?;
        if !self.node.v112 {
            self.control_plane(&info, "cluster health check")?;
        }
        let req = request.into_inner();
        let timeout = req
            .wait_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        if timeout.is_zero() {
            return Err(Status::deadline_exceeded("context deadline exceeded"));
        }
        let fabric = self.node.fabric.clone();
        let key = self
            .node
            .config()
            .map(|c| c.etcd_key.clone())
            .unwrap_or_default();
        let all = fabric.nodes();
        let (cps, workers): (Vec<String>, Vec<String>) = match req.cluster_info {
            Some(ci) if !ci.control_plane_nodes.is_empty() || !ci.worker_nodes.is_empty() => {
                (ci.control_plane_nodes, ci.worker_nodes)
            }
            _ => {
                let mut cps = Vec::new();
                let mut ws = Vec::new();
                for n in &all {
                    if let Some(c) = n.config().filter(|c| c.etcd_key == key) {
                        if c.machine_type.is_control_plane() {
                            cps.push(n.ip.to_string());
                        } else {
                            ws.push(n.ip.to_string());
                        }
                    }
                }
                (cps, ws)
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let mut changed = fabric.changed.subscribe();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let send = |m: String| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(cluster::HealthCheckProgress {
                        metadata: None,
                        message: m,
                    }))
                    .await
                    .is_ok()
                }
            };
            let mut discovered: Vec<String> = cps.iter().chain(workers.iter()).cloned().collect();
            discovered.sort();
            if !send(format!("discovered nodes: {discovered:?}")).await {
                return;
            }
            let find = |ip: &str| fabric.nodes().into_iter().find(|n| n.ip.to_string() == ip);
            type Check<'a> = (&'a str, Box<dyn Fn() -> Option<String> + Send + 'a>);
            let checks: Vec<Check> = vec![
                (
                    "etcd to be healthy",
                    Box::new(|| {
                        for ip in &cps {
                            let Some(n) = find(ip) else {
                                return Some(format!("{ip}: node not found"));
                            };
                            let state = n
                                .data
                                .lock()
                                .expect("data lock")
                                .services
                                .get("etcd")
                                .map(|s| s.state.clone());
                            match state {
                                Some(s) if s == "Running" => {}
                                Some(s) => {
                                    return Some(format!(
                                        "{ip}: service \"etcd\" not in expected state \"Running\": current state [{s}]"
                                    ))
                                }
                                None => return Some(format!("{ip}: rpc error: code = Unavailable desc = connection refused")),
                            }
                        }
                        None
                    }),
                ),
                (
                    "etcd members to be consistent across nodes",
                    Box::new(|| {
                        let mut seen: Option<u64> = None;
                        for ip in &cps {
                            let m = find(ip).and_then(|n| n.data.lock().expect("data lock").etcd);
                            match (m, seen) {
                                (None, _) => return Some(format!("{ip}: no etcd member")),
                                (Some(m), Some(s)) if m.cluster_uid != s => {
                                    return Some(format!(
                                        "{ip}: etcd members differ from other nodes"
                                    ))
                                }
                                (Some(m), _) => seen = Some(m.cluster_uid),
                            }
                        }
                        None
                    }),
                ),
                (
                    "apid to be ready",
                    Box::new(|| {
                        for ip in cps.iter().chain(workers.iter()) {
                            let up = find(ip).is_some_and(|n| {
                                matches!(n.state(), NodeState::Running | NodeState::Booting)
                            });
                            if !up {
                                return Some(format!(
                                    "{ip}: rpc error: code = Unavailable desc = connection refused"
                                ));
                            }
                        }
                        None
                    }),
                ),
                (
                    "all nodes to finish boot sequence",
                    Box::new(|| {
                        for ip in cps.iter().chain(workers.iter()) {
                            let st = find(ip).map(|n| n.state());
                            if st != Some(NodeState::Running) {
                                return Some(format!("{ip}: stage is not running"));
                            }
                        }
                        None
                    }),
                ),
            ];
            for (name, check) in checks {
                let mut last = String::new();
                loop {
                    changed.borrow_and_update();
                    match check() {
                        None => {
                            if !send(format!("waiting for {name}: OK")).await {
                                return;
                            }
                            break;
                        }
                        Some(why) => {
                            let msg = format!("waiting for {name}: {why}");
                            if msg != last {
                                if !send(msg.clone()).await {
                                    return;
                                }
                                last = msg;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            let _ = tx.send(Err(Status::deadline_exceeded(format!("{name}: context deadline exceeded")))).await;
                            return;
                        }
                        r = changed.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl StorageService for LabApi {
    async fn disks(
        &self,
        request: Request<()>,
    ) -> Result<Response<storage::DisksResponse>, Status> {
        self.gate(&request, "Disks")?;
        let system = self
            .node
            .data
            .lock()
            .expect("data lock")
            .install_disk
            .clone();
        use storage::disk::DiskType;
        let disks = self
            .node
            .hardware
            .disks
            .iter()
            .map(|d| storage::Disk {
                size: d.size,
                model: d.model.clone(),
                device_name: d.dev_path(),
                name: String::new(),
                serial: d.serial.clone(),
                modalias: String::new(),
                uuid: String::new(),
                wwid: d.wwid.clone(),
                r#type: (match d.transport.as_str() {
                    "nvme" => DiskType::Nvme,
                    "mmc" => DiskType::Sd,
                    _ if d.rotational => DiskType::Hdd,
                    "" => DiskType::Unknown,
                    _ => DiskType::Ssd,
                }) as i32,
                bus_path: String::new(),
                system_disk: system.as_deref() == Some(d.dev_path().as_str()),
                subsystem: String::new(),
                readonly: false,
            })
            .collect();
        Ok(Response::new(storage::DisksResponse {
            messages: vec![storage::Disks {
                metadata: None,
                disks,
            }],
        }))
    }

    async fn block_device_wipe(
        &self,
        request: Request<storage::BlockDeviceWipeRequest>,
    ) -> Result<Response<storage::BlockDeviceWipeResponse>, Status> {
        let info = self.gate(&request, "BlockDeviceWipe")?;
        if info.mode == ApiMode::Configured && !info.has(ADMIN) {
            return Err(not_authorized());
        }
        let system = self
            .node
            .data
            .lock()
            .expect("data lock")
            .install_disk
            .clone();
        for dev in &request.get_ref().devices {
            let base = dev.device.trim_start_matches("/dev/");
            let Some(disk) = self
                .node
                .hardware
                .disks
                .iter()
                .find(|d| base.starts_with(d.dev_name.as_str()))
            else {
                return Err(Status::not_found(format!(
                    "blockdevice {:?} not found",
                    dev.device
                )));
            };
            if info.mode == ApiMode::Configured
                && !dev.skip_volume_check
                && system.as_deref() == Some(disk.dev_path().as_str())
            {
                return Err(Status::failed_precondition(format!(
                    "blockdevice {:?} is in use by volume \"STATE\"",
                    dev.device
                )));
            }
        }
        Ok(Response::new(storage::BlockDeviceWipeResponse {
            messages: vec![storage::BlockDeviceWipe { metadata: None }],
        }))
    }
}

#[tonic::async_trait]
impl State for LabApi {
    async fn get(
        &self,
        request: Request<cosi::GetRequest>,
    ) -> Result<Response<cosi::GetResponse>, Status> {
        let info = self.gate(&request, "Get")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let found = self.snapshot_of(&req.namespace, &req.r#type, Some(&req.id));
        match found.first() {
            Some(r) => Ok(Response::new(cosi::GetResponse {
                resource: Some(to_resource(r)),
            })),
            None => Err(Status::not_found(format!(
                "resource {}({}/{}@undefined) doesn't exist",
                req.r#type, req.namespace, req.id
            ))),
        }
    }

    type ListStream = BoxStream<cosi::ListResponse>;

    async fn list(
        &self,
        request: Request<cosi::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let info = self.gate(&request, "List")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let items: Vec<Result<cosi::ListResponse, Status>> = self
            .snapshot_of(&req.namespace, &req.r#type, None)
            .iter()
            .map(|r| {
                Ok(cosi::ListResponse {
                    resource: Some(to_resource(r)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn create(
        &self,
        request: Request<cosi::CreateRequest>,
    ) -> Result<Response<cosi::CreateResponse>, Status> {
        self.gate(&request, "Create")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    async fn update(
        &self,
        request: Request<cosi::UpdateRequest>,
    ) -> Result<Response<cosi::UpdateResponse>, Status> {
        self.gate(&request, "Update")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    async fn destroy(
        &self,
        request: Request<cosi::DestroyRequest>,
    ) -> Result<Response<cosi::DestroyResponse>, Status> {
        self.gate(&request, "Destroy")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    type WatchStream = BoxStream<cosi::WatchResponse>;

    async fn watch(
        &self,
        request: Request<cosi::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let info = self.gate(&request, "Watch")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let mut changes = self.node.res_tx.subscribe();
        changes.borrow_and_update();
        let api = self.clone();
        let (ns, ty, id) = (req.namespace, req.r#type, req.id);
        let bootstrap = req.options.as_ref().is_some_and(|o| o.bootstrap_contents);
        let api_version = req.api_version;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            use cosi::EventType;
            let ev = |t: EventType, r: cosi::Resource, old: Option<cosi::Resource>| cosi::Event {
                resource: Some(r),
                old,
                error: None,
                event_type: t as i32,
                bookmark: None,
            };
            let send = |events: Vec<cosi::Event>| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(cosi::WatchResponse { event: events }))
                        .await
                        .is_ok()
                }
            };
            let mut current = api.snapshot_of(&ns, &ty, id.as_deref());
            // Readiness marker.
            if !send(vec![]).await {
                return;
            }
            if let Some(one) = &id {
                let first = match current.first() {
                    Some(r) => ev(EventType::Created, to_resource(r), None),
                    None => ev(EventType::Destroyed, tombstone(&ns, &ty, one), None),
                };
                if !send(vec![first]).await {
                    return;
                }
            } else if bootstrap {
                for r in &current {
                    if !send(vec![ev(EventType::Created, to_resource(r), None)]).await {
                        return;
                    }
                }
                if api_version >= 1 {
                    let marker = cosi::Event {
                        resource: None,
                        old: None,
                        error: None,
                        event_type: EventType::Bootstrapped as i32,
                        bookmark: None,
                    };
                    if !send(vec![marker]).await {
                        return;
                    }
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                let fresh = api.snapshot_of(&ns, &ty, id.as_deref());
                let mut events = Vec::new();
                for r in &fresh {
                    match current.iter().find(|o| o.id == r.id) {
                        None => events.push(ev(EventType::Created, to_resource(r), None)),
                        Some(o) if o.version != r.version || o.created != r.created => events
                            .push(ev(EventType::Updated, to_resource(r), Some(to_resource(o)))),
                        Some(_) => {}
                    }
                }
                for o in &current {
                    if !fresh.iter().any(|r| r.id == o.id) {
                        events.push(ev(EventType::Destroyed, to_resource(o), None));
                    }
                }
                current = fresh;
                for e in events {
                    if !send(vec![e]).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
