//! A Talos API client: one node (directly, or through an endpoint with the `node`
//! metadata key), deadlines on every call, retries for transient failures, typed
//! results.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::api::cluster::cluster_service_client::ClusterServiceClient;
use super::api::common;
use super::api::cosi::resource as cosi;
use super::api::cosi::resource::state_client::StateClient;
use super::api::machine;
use super::api::machine::machine_service_client::MachineServiceClient;
use super::api::storage;
use super::api::storage::storage_service_client::StorageServiceClient;
use super::connect::{classify_handshake, client_config, dial, Dial, DialError, TlsMode};
use super::error::TalosError;
use super::resources::{Resource, WatchEvent};

/// Talos servers accept up to 32 MiB; tonic's default decode limit is 4 MiB.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Chunk size for EtcdRecover uploads (talosctl uses the same).
const UPLOAD_CHUNK: usize = 4096;

/// Deadlines and the retry budget of calls.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// Deadline of one attempt (sent as grpc-timeout too).
    pub attempt_timeout: Duration,
    /// Total time spent retrying transient failures before giving up.
    pub retry_budget: Duration,
    /// First backoff; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// TCP + TLS connect deadline.
    pub connect_timeout: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(20),
            retry_budget: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl CallPolicy {
    /// No retries: one attempt only.
    pub fn once(mut self) -> Self {
        self.retry_budget = Duration::ZERO;
        self
    }

    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }
}

/// A connection to one Talos node.
#[derive(Clone)]
pub struct TalosClient {
    channel: Channel,
    /// The node the calls are for, as given (IP or name) — used in every error.
    label: String,
    /// When set, calls are proxied by the endpoint to this node (`node` metadata).
    node: Option<String>,
    policy: CallPolicy,
}

impl std::fmt::Debug for TalosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalosClient")
            .field("label", &self.label)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The apply modes of ApplyConfiguration (always sent explicitly: the wire default
/// is the deprecated REBOOT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl ApplyMode {
    fn wire(self) -> i32 {
        use machine::apply_configuration_request::Mode;
        match self {
            ApplyMode::Auto => Mode::Auto as i32,
            ApplyMode::NoReboot => Mode::NoReboot as i32,
            ApplyMode::Reboot => Mode::Reboot as i32,
            ApplyMode::Staged => Mode::Staged as i32,
            ApplyMode::Try => Mode::Try as i32,
        }
    }
}

/// What the node said about an applied config.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    pub mode: Option<String>,
    pub mode_details: String,
    pub warnings: Vec<String>,
}

/// Talos version as the node reports it.
#[derive(Debug, Clone)]
pub struct NodeVersion {
    pub tag: String,
    pub sha: String,
    pub os: String,
    pub arch: String,
    pub platform: String,
    /// True once the node has a machine config.
    pub configured: bool,
}

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

/// One service from ServiceList.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub id: String,
    pub state: String,
    pub healthy: bool,
    pub health_unknown: bool,
    pub last_message: String,
    /// Last event's message (what the service is doing or waiting for).
    pub last_event: String,
}

/// How a Reset should behave.
#[derive(Debug, Clone, Default)]
pub struct ResetOptions {
    pub graceful: bool,
    pub reboot: bool,
    /// Volume labels to wipe (STATE, EPHEMERAL); empty wipes the whole system disk.
    pub wipe_labels: Vec<String>,
}

/// Result of an etcd snapshot download.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

fn node_metadata(node: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, TalosError> {
    node.parse().map_err(|_| TalosError::Connect {
        node: node.to_string(),
        addr: node.to_string(),
        refused: false,
        detail: "node name is not valid gRPC metadata".into(),
    })
}

impl TalosClient {
    /// Prepares a connection to `endpoint` (`ip`, `ip:port`, `host[:port]`). The
    /// connection opens on first use and reopens after a node reboots.
    pub fn connect(endpoint: &str, tls: TlsMode, policy: CallPolicy) -> Result<Self, TalosError> {
        let target = Dial::parse(endpoint)?;
        let label = endpoint.to_string();
        let asked = Arc::new(AtomicBool::new(false));
        let config = Arc::new(client_config(&tls, asked.clone())?);
        let uri: Uri =
            format!("http://{}", target.addr)
                .parse()
                .map_err(|e| TalosError::Connect {
                    node: label.clone(),
                    addr: target.addr.to_string(),
                    refused: false,
                    detail: format!("{e}"),
                })?;
        let connect_timeout = policy.connect_timeout;
        let label_for_dial = label.clone();
        let connector = tower::service_fn(move |_uri: Uri| {
            let target = target.clone();
            let config = config.clone();
            let asked = asked.clone();
            let label = label_for_dial.clone();
            async move {
                dial(&target, &label, config, &asked, connect_timeout)
                    .await
                    .map(TokioIo::new)
                    .map_err(DialError)
            }
        });
        let channel = Endpoint::from(uri)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector);
        Ok(Self {
            channel,
            label,
            node: None,
            policy,
        })
    }

    /// The same connection, with calls proxied to `node` by the endpoint.
    pub fn for_node(&self, node: &str) -> Self {
        let mut c = self.clone();
        c.node = Some(node.to_string());
        c.label = format!("{node} (via {})", self.label);
        c
    }

    /// The same client with another call policy.
    pub fn with_policy(&self, policy: CallPolicy) -> Self {
        let mut c = self.clone();
        c.policy = policy;
        c
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn policy(&self) -> CallPolicy {
        self.policy
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, TalosError> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.policy.attempt_timeout);
        if let Some(node) = &self.node {
            req.metadata_mut().insert("node", node_metadata(node)?);
        }
        Ok(req)
    }

    fn machine(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn cosi(&self) -> StateClient<Channel> {
        StateClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn storage(&self) -> StorageServiceClient<Channel> {
        StorageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Turns a gRPC status into a typed error, recovering connect/TLS failures that
    /// tonic wrapped.
    pub(crate) fn error(&self, rpc: &'static str, status: Status) -> TalosError {
        status_to_error(&self.label, rpc, status)
    }

    /// Runs one call with the deadline and retry policy.
    async fn call<T, F, Fut>(&self, rpc: &'static str, mut attempt: F) -> Result<T, TalosError>
    where
        F: FnMut() -> Result<Fut, TalosError>,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let outcome = match tokio::time::timeout(self.policy.attempt_timeout, attempt()?).await
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => self.error(rpc, status),
                Err(_) => TalosError::Rpc {
                    node: self.label.clone(),
                    rpc,
                    code: Code::DeadlineExceeded,
                    message: format!("no answer within {:?}", self.policy.attempt_timeout),
                },
            };
            let elapsed = started.elapsed();
            if !outcome.is_transient() || elapsed + backoff > self.policy.retry_budget {
                if attempts == 1 {
                    return Err(outcome);
                }
                return Err(TalosError::RetriesExhausted {
                    node: self.label.clone(),
                    rpc,
                    elapsed,
                    attempts,
                    last: Box::new(outcome),
                });
            }
            tracing::debug!(node = %self.label, rpc, attempt = attempts, error = %outcome, "transient failure, retrying");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }

    // ---- MachineService ----

    /// Talos version. On Talos 1.12 maintenance mode this answers Unimplemented;
    /// use [`probe_mode`](super::connect::probe_mode) to classify nodes instead.
    pub async fn version(&self) -> Result<NodeVersion, TalosError> {
        let resp = self
            .call("Version", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.version(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "Version", resp.messages)?;
        let v = msg.version.unwrap_or_default();
        Ok(NodeVersion {
            tag: v.tag,
            sha: v.sha,
            os: v.os,
            arch: v.arch,
            platform: msg
                .platform
                .map(|p| format!("{} ({})", p.name, p.mode))
                .unwrap_or_default(),
            configured: msg.features.is_some(),
        })
    }

    /// Applies a machine config. Not retried: a lost reply may still have applied,
    /// and callers verify the outcome through the node's state.
    pub async fn apply_configuration(
        &self,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        let data = config.to_vec();
        let resp = self
            .with_policy(self.policy.once())
            .call("ApplyConfiguration", || {
                let req = self.request(machine::ApplyConfigurationRequest {
                    data: data.clone(),
                    mode: mode.wire(),
                    dry_run,
                    try_mode_timeout: None,
                })?;
                let mut c = self.machine();
                Ok(async move { c.apply_configuration(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "ApplyConfiguration", resp.messages)?;
        let mode = machine::apply_configuration_request::Mode::try_from(msg.mode)
            .ok()
            .map(|m| m.as_str_name().to_string());
        Ok(ApplyOutcome {
            mode: if msg.mode_details.is_empty() && msg.mode == 0 {
                None
            } else {
                mode
            },
            mode_details: msg.mode_details,
            warnings: msg.warnings,
        })
    }

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

    /// The admin kubeconfig (the node streams a tar.gz holding one file).
    pub async fn kubeconfig(&self) -> Result<Vec<u8>, TalosError> {
        let stream = self
            .call("Kubeconfig", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.kubeconfig(req).await })
            })
            .await?
            .into_inner();
        let bytes = self.collect_data("Kubeconfig", stream).await?;
        extract_kubeconfig(&bytes).map_err(|detail| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "Kubeconfig",
            detail,
        })
    }

    async fn collect_data(
        &self,
        rpc: &'static str,
        mut stream: tonic::Streaming<common::Data>,
    ) -> Result<Vec<u8>, TalosError> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.policy.attempt_timeout, stream.message()).await {
                Ok(Ok(Some(d))) => {
                    check_metadata(&self.label, rpc, d.metadata.as_ref())?;
                    out.extend_from_slice(&d.bytes);
                }
                Ok(Ok(None)) => return Ok(out),
                Ok(Err(status)) => return Err(self.error(rpc, status)),
                Err(_) => {
                    return Err(TalosError::Rpc {
                        node: self.label.clone(),
                        rpc,
                        code: Code::DeadlineExceeded,
                        message: "stream stalled".into(),
                    })
                }
            }
        }
    }

    pub async fn service_list(&self) -> Result<Vec<ServiceState>, TalosError> {
        let resp = self
            .call("ServiceList", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.service_list(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "ServiceList", resp.messages)?;
        Ok(msg
            .services
            .into_iter()
            .map(|s| {
                let health = s.health.unwrap_or_default();
                let last_event = s
                    .events
                    .and_then(|e| e.events.last().map(|ev| ev.msg.clone()))
                    .unwrap_or_default();
                ServiceState {
                    id: s.id,
                    state: s.state,
                    healthy: health.healthy,
                    health_unknown: health.unknown,
                    last_message: health.last_message,
                    last_event,
                }
            })
            .collect())
    }

    /// Reboots the node; returns the actor id to follow in Events.
    pub async fn reboot(&self) -> Result<String, TalosError> {
        let resp = self
            .with_policy(self.policy.once())
            .call("Reboot", || {
                let req = self.request(machine::RebootRequest { mode: 0 })?;
                let mut c = self.machine();
                Ok(async move { c.reboot(req).await })
            })
            .await?
            .into_inner();
        Ok(first(&self.label, "Reboot", resp.messages)?.actor_id)
    }

    /// Resets the node (asynchronous on the node; returns the actor id).
    pub async fn reset(&self, opts: &ResetOptions) -> Result<String, TalosError> {
        let parts: Vec<machine::ResetPartitionSpec> = opts
            .wipe_labels
            .iter()
            .map(|l| machine::ResetPartitionSpec {
                label: l.clone(),
                wipe: true,
            })
            .collect();
        let resp = self
            .with_policy(self.policy.once())
            .call("Reset", || {
                let req = self.request(machine::ResetRequest {
                    graceful: opts.graceful,
                    reboot: opts.reboot,
                    system_partitions_to_wipe: parts.clone(),
                    user_disks_to_wipe: vec![],
                    mode: machine::reset_request::WipeMode::All as i32,
                })?;
                let mut c = self.machine();
                Ok(async move { c.reset(req).await })
            })
            .await?
            .into_inner();
        Ok(first(&self.label, "Reset", resp.messages)?.actor_id)
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

    /// Follows the node's event stream (machine status, services, tasks).
    pub async fn events(
        &self,
        tail_events: i32,
    ) -> Result<impl Stream<Item = Result<machine::Event, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .call("Events", || {
                let mut req = self.request(machine::EventsRequest {
                    tail_events,
                    ..Default::default()
                })?;
                // Streams live long: no per-call grpc-timeout.
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.machine();
                Ok(async move { c.events(req).await })
            })
            .await?
            .into_inner();
        Ok(stream.map(move |r| r.map_err(|s| status_to_error(&label, "Events", s))))
    }

    /// Runs the node's cluster health check, yielding its progress lines.
    pub async fn health_check(
        &self,
        wait_timeout: Duration,
        control_planes: Vec<String>,
        workers: Vec<String>,
    ) -> Result<impl Stream<Item = Result<String, TalosError>>, TalosError> {
        use super::api::cluster;
        let label = self.label.clone();
        let stream = self
            .call("HealthCheck", || {
                let mut req = self.request(cluster::HealthCheckRequest {
                    wait_timeout: Some(prost_types::Duration {
                        seconds: wait_timeout.as_secs() as i64,
                        nanos: wait_timeout.subsec_nanos() as i32,
                    }),
                    cluster_info: Some(cluster::ClusterInfo {
                        control_plane_nodes: control_planes.clone(),
                        worker_nodes: workers.clone(),
                        force_endpoint: String::new(),
                    }),
                })?;
                req.set_timeout(wait_timeout + Duration::from_secs(5));
                let mut c = self.cluster();
                Ok(async move { c.health_check(req).await })
            })
            .await?
            .into_inner();
        Ok(stream.map(move |r| {
            r.map_err(|s| status_to_error(&label, "HealthCheck", s))
                .and_then(|p| {
                    check_metadata(&label, "HealthCheck", p.metadata.as_ref())?;
                    Ok(p.message)
                })
        }))
    }

    // ---- StorageService ----

    /// Wipes block devices (only allowed in maintenance mode for non-admins).
    pub async fn block_device_wipe(&self, devices: &[String]) -> Result<(), TalosError> {
        let descs: Vec<storage::BlockDeviceWipeDescriptor> = devices
            .iter()
            .map(|d| storage::BlockDeviceWipeDescriptor {
                device: d.trim_start_matches("/dev/").to_string(),
                method: storage::block_device_wipe_descriptor::Method::Fast as i32,
                ..Default::default()
            })
            .collect();
        self.with_policy(self.policy.once())
            .call("BlockDeviceWipe", || {
                let req = self.request(storage::BlockDeviceWipeRequest {
                    devices: descs.clone(),
                })?;
                let mut c = self.storage();
                Ok(async move { c.block_device_wipe(req).await })
            })
            .await?;
        Ok(())
    }

    // ---- COSI ----

    /// Reads one resource.
    pub async fn get(
        &self,
        namespace: &str,
        type_: &str,
        id: &str,
    ) -> Result<Resource, TalosError> {
        let resp = self
            .call("cosi.Get", || {
                let req = self.request(cosi::GetRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    id: id.to_string(),
                    options: None,
                })?;
                let mut c = self.cosi();
                Ok(async move { c.get(req).await })
            })
            .await?
            .into_inner();
        Resource::from_wire(resp.resource).ok_or_else(|| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "cosi.Get",
            detail: format!("{type_}/{id}: reply without a resource"),
        })
    }

    /// Lists every resource of a type.
    pub async fn list(&self, namespace: &str, type_: &str) -> Result<Vec<Resource>, TalosError> {
        let mut stream = self
            .call("cosi.List", || {
                let req = self.request(cosi::ListRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    options: None,
                })?;
                let mut c = self.cosi();
                Ok(async move { c.list(req).await })
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(item)) => out.extend(Resource::from_wire(item.resource)),
                Ok(None) => return Ok(out),
                Err(s) => return Err(self.error("cosi.List", s)),
            }
        }
    }

    /// Watches one resource (`id` set) or a whole type; the first event is the
    /// current state. The stream ends when the connection drops (e.g. a reboot):
    /// callers re-watch.
    pub async fn watch(
        &self,
        namespace: &str,
        type_: &str,
        id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<WatchEvent, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .call("cosi.Watch", || {
                let mut req = self.request(cosi::WatchRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    id: id.map(str::to_string),
                    options: Some(cosi::WatchOptions {
                        bootstrap_contents: id.is_none(),
                        ..Default::default()
                    }),
                    api_version: 1,
                })?;
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.cosi();
                Ok(async move { c.watch(req).await })
            })
            .await?
            .into_inner();
        let out = futures::stream::unfold(Some(stream), move |state| {
            let label = label.clone();
            async move {
                let mut stream = state?;
                loop {
                    match stream.message().await {
                        // The empty first reply only says the watch is established.
                        Ok(Some(resp)) if resp.event.is_empty() => continue,
                        Ok(Some(resp)) => return Some((Ok(resp.event), Some(stream))),
                        Ok(None) => return None,
                        Err(s) => {
                            return Some((Err(status_to_error(&label, "cosi.Watch", s)), None))
                        }
                    }
                }
            }
        })
        .flat_map(|batch| {
            let items: Vec<Result<WatchEvent, TalosError>> = match batch {
                Ok(events) => events
                    .into_iter()
                    .map(|e| Ok(WatchEvent::from_wire(e)))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        });
        Ok(out)
    }
}

fn first<T>(node: &str, rpc: &'static str, mut messages: Vec<T>) -> Result<T, TalosError>
where
    T: HasMetadata,
{
    if messages.is_empty() {
        return Err(TalosError::Protocol {
            node: node.to_string(),
            rpc,
            detail: "reply carried no message".into(),
        });
    }
    let msg = messages.remove(0);
    check_metadata(node, rpc, msg.metadata())?;
    Ok(msg)
}

/// A proxied reply can carry a per-node error in its metadata while the call as a
/// whole succeeded.
fn check_metadata(
    node: &str,
    rpc: &'static str,
    md: Option<&common::Metadata>,
) -> Result<(), TalosError> {
    if let Some(md) = md {
        if !md.error.is_empty() {
            let code = md
                .status
                .as_ref()
                .map(|s| Code::from_i32(s.code))
                .unwrap_or(Code::Unknown);
            let who = if md.hostname.is_empty() {
                node.to_string()
            } else {
                md.hostname.clone()
            };
            return Err(TalosError::Rpc {
                node: who,
                rpc,
                code,
                message: md.error.clone(),
            });
        }
    }
    Ok(())
}

/// Reply messages that start with `common.Metadata metadata = 1`.
pub(crate) trait HasMetadata {
    fn metadata(&self) -> Option<&common::Metadata>;
}

macro_rules! has_metadata {
    ($($t:ty),* $(,)?) => {
        $(impl HasMetadata for $t {
            fn metadata(&self) -> Option<&common::Metadata> { self.metadata.as_ref() }
        })*
    };
}

has_metadata!(
    machine::Version,
    machine::ApplyConfiguration,
    machine::ServiceList,
    machine::Reboot,
    machine::Reset,
    machine::EtcdMembers,
    machine::EtcdForfeitLeadership,
    machine::EtcdStatus,
);

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 5;
    if spread == 0 {
        return d;
    }
    Duration::from_millis(ms - spread + rand::random_range(0..=2 * spread))
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

/// Checks an etcd snapshot's SHA-256 trailer (size = 512·n + 32).
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
    Ok(())
}

/// Unpacks the kubeconfig from Talos's tar.gz (all entries concatenated, as talosctl does).
pub fn extract_kubeconfig(targz: &[u8]) -> Result<Vec<u8>, String> {
    let gz = flate2::read::GzDecoder::new(targz);
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("kubeconfig archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("kubeconfig archive entry: {e}"))?;
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("kubeconfig archive read: {e}"))?;
    }
    if out.is_empty() {
        return Err("kubeconfig archive is empty".into());
    }
    Ok(out)
}

/// Converts a tonic status to a typed error. Connect and TLS failures hide in the
/// status's source chain; find them so the operator sees "connection refused" or
/// "unknown authority", not "transport error".
pub(crate) fn status_to_error(node: &str, rpc: &'static str, status: Status) -> TalosError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&status);
    while let Some(e) = src {
        if let Some(d) = e.downcast_ref::<DialError>() {
            return d.0.clone();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            let typed = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some();
            if typed || text.contains("fatal alert") || text.contains("invalid peer certificate") {
                return classify_handshake(node, io, true);
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return TalosError::Connect {
                    node: node.to_string(),
                    addr: String::new(),
                    refused: io.kind() == std::io::ErrorKind::ConnectionRefused,
                    detail: format!("connection lost: {io}"),
                };
            }
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, r.clone());
            return classify_handshake(node, &io, true);
        }
        src = e.source();
    }
    let message = status.message();
    if status.code() == Code::Unknown
        && (message.contains("h2 protocol error") || message.contains("error reading a body"))
    {
        // The node dropped the HTTP/2 connection under the call.
        return TalosError::Connect {
            node: node.to_string(),
            addr: String::new(),
            refused: false,
            detail: format!("connection closed by the node during {rpc}: {message}"),
        };
    }
    TalosError::Rpc {
        node: node.to_string(),
        rpc,
        code: status.code(),
        message: message.to_string(),
    }
}

/// Typed reads of the resources the tool relies on.
impl TalosClient {
    async fn get_spec<T: for<'de> serde::Deserialize<'de>>(
        &self,
        (ns, ty, id): (&str, &str, &str),
    ) -> Result<T, TalosError> {
        let r = self.get(ns, ty, id).await?;
        r.spec().map_err(|detail| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "cosi.Get",
            detail,
        })
    }

    /// Boot stage and readiness (works in maintenance mode on 1.12 and 1.13).
    pub async fn machine_status(&self) -> Result<super::resources::MachineStatus, TalosError> {
        self.get_spec(super::resources::types::MACHINE_STATUS).await
    }

    pub async fn machine_type(&self) -> Result<super::resources::MachineType, TalosError> {
        self.get_spec(super::resources::types::MACHINE_TYPE).await
    }

    pub async fn hostname(&self) -> Result<super::resources::HostnameSpec, TalosError> {
        self.get_spec(super::resources::types::HOSTNAME).await
    }

    /// The local etcd member ID, if this node is a member.
    pub async fn etcd_local_member(&self) -> Result<Option<u64>, TalosError> {
        match self
            .get_spec::<super::resources::EtcdLocalMemberSpec>(
                super::resources::types::ETCD_LOCAL_MEMBER,
            )
            .await
        {
            Ok(spec) => Ok(u64::from_str_radix(&spec.member_id, 16).ok()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Disks the node sees (COSI `Disks.block.talos.dev`).
    pub async fn disks(&self) -> Result<Vec<super::resources::Disk>, TalosError> {
        let (ns, ty) = super::resources::types::DISKS;
        let mut out = Vec::new();
        for r in self.list(ns, ty).await? {
            let spec = r.spec().map_err(|detail| TalosError::Protocol {
                node: self.label.clone(),
                rpc: "cosi.List",
                detail,
            })?;
            out.push(super::resources::Disk { name: r.id, spec });
        }
        Ok(out)
    }

    /// Network links (COSI `LinkStatuses.net.talos.dev`).
    pub async fn links(&self) -> Result<Vec<super::resources::Link>, TalosError> {
        let (ns, ty) = super::resources::types::LINKS;
        let mut out = Vec::new();
        for r in self.list(ns, ty).await? {
            let spec = r.spec().map_err(|detail| TalosError::Protocol {
                node: self.label.clone(),
                rpc: "cosi.List",
                detail,
            })?;
            out.push(super::resources::Link { name: r.id, spec });
        }
        Ok(out)
    }

    /// Watches the machine status; yields each new state.
    pub async fn watch_machine_status(
        &self,
    ) -> Result<impl Stream<Item = Result<super::resources::MachineStatus, TalosError>>, TalosError>
    {
        let (ns, ty, id) = super::resources::types::MACHINE_STATUS;
        let label = self.label.clone();
        let events = self.watch(ns, ty, Some(id)).await?;
        Ok(events.filter_map(move |ev| {
            let label = label.clone();
            async move {
                match ev {
                    Err(e) => Some(Err(e)),
                    Ok(ev) => match (ev.kind, ev.resource) {
                        (
                            super::resources::WatchEventKind::Created
                            | super::resources::WatchEventKind::Updated,
                            Some(r),
                        ) => Some(r.spec().map_err(|detail| TalosError::Protocol {
                            node: label,
                            rpc: "cosi.Watch",
                            detail,
                        })),
                        _ => None,
                    },
                }
            }
        }))
    }
}
