//! The [`TalosClient`] type and how every call runs: one node's channel (TLS as
//! [`TlsMode`] says, opened on first use and reopened after a reboot), the `node`
//! metadata key that apid routes on, and the [`CallPolicy`]: a deadline per attempt
//! (sent as `grpc-timeout` too) and retries of transient failures with a doubling,
//! jittered backoff inside a budget.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::reply::status_to_error;
use crate::api::cluster::cluster_service_client::ClusterServiceClient;
use crate::api::cosi::resource::state_client::StateClient;
use crate::api::machine::image_service_client::ImageServiceClient;
use crate::api::machine::lifecycle_service_client::LifecycleServiceClient;
use crate::api::machine::machine_service_client::MachineServiceClient;
use crate::api::storage::storage_service_client::StorageServiceClient;
use crate::connect::{client_config, dial, Dial, DialError, TlsMode};
use crate::error::TalosError;

/// Talos servers accept up to 32 MiB; tonic's default decode limit is 4 MiB.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

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
    pub(super) label: String,
    /// When set, calls are proxied by the endpoint to this node (`node` metadata).
    node: Option<String>,
    pub(super) policy: CallPolicy,
}

impl std::fmt::Debug for TalosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalosClient")
            .field("label", &self.label)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
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

    pub(super) fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, TalosError> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.policy.attempt_timeout);
        if let Some(node) = &self.node {
            req.metadata_mut().insert("node", node_metadata(node)?);
        }
        Ok(req)
    }

    pub(super) fn machine(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn image(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn lifecycle(&self) -> LifecycleServiceClient<Channel> {
        LifecycleServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn cosi(&self) -> StateClient<Channel> {
        StateClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn storage(&self) -> StorageServiceClient<Channel> {
        StorageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub(super) fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Turns a gRPC status into a typed error, recovering connect/TLS failures that
    /// tonic wrapped.
    pub(crate) fn error(&self, rpc: &'static str, status: Status) -> TalosError {
        status_to_error(&self.label, rpc, status)
    }

    /// Runs one call with the deadline and retry policy.
    pub(super) async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        mut attempt: F,
    ) -> Result<T, TalosError>
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
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 5;
    if spread == 0 {
        return d;
    }
    Duration::from_millis(ms - spread + rand::random_range(0..=2 * spread))
}
