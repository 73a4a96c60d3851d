//! One simulated node, as the rest of the lab sees it: [`NodeInner`] (its
//! identity, hardware, state channels, data, faults and listener) and the
//! [`Fabric`] all nodes of a lab share (the simulated etcd clusters, the node
//! list, the change counter). What a node does lives beside it, one concern a
//! file: `lifecycle` (the state machine: maintenance → installing → rebooting →
//! booting → running, reset, power), `serving` (its apid listener and TLS
//! acceptor), `membership` (etcd membership, quorum, the etcd KV handle),
//! `publish` (events and COSI resources observers see), with its data in `data`
//! and its COSI resources in `resources`. State changes are driven by tasks and
//! channels; nothing polls.

pub(crate) mod data;
pub(crate) mod lifecycle;
pub(crate) mod membership;
mod publish;
pub(crate) mod resources;
mod serving;
pub(crate) mod trustd_join;
pub(crate) mod upgrade;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::NodeConfig;
use crate::etcd::EtcdStore;
use crate::hardware::Hardware;
use crate::tls::{ApiMode, ConnSet, LabConn};
use data::{EventRec, NodeData, NodeState};

/// Base delays (seconds at `time_scale` 1.0).
pub(crate) mod delay {
    pub const INSTALL: f64 = 4.0;
    pub const REBOOT: f64 = 3.0;
    pub const BOOT: f64 = 2.0;
    pub const ETCD_START: f64 = 1.0;
    pub const ETCD_JOIN: f64 = 2.0;
    pub const RESET: f64 = 1.0;
    /// A legacy upgrade's cordon and drain.
    pub const DRAIN: f64 = 1.0;
}

/// What a node runs on its apid port: given the node and the connections its
/// listener accepted (TLS done, roles known), serves them until aborted. The lab
/// hands every node the same one (the gRPC services behind apid's routing), so
/// the node itself knows nothing of the API it serves.
pub(crate) type Apid = fn(
    Arc<NodeInner>,
    ReceiverStream<Result<LabConn, std::io::Error>>,
) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// State shared by all nodes of a lab.
pub(crate) struct Fabric {
    pub etcd: Mutex<EtcdStore>,
    pub nodes: Mutex<Vec<Weak<NodeInner>>>,
    /// Bumped on any change of any node (HealthCheck follows it).
    pub changed: watch::Sender<u64>,
    pub time_scale: f64,
    /// Every Bootstrap RPC that reached a node's handler (tests assert exactly-once).
    pub bootstrap_calls: std::sync::atomic::AtomicUsize,
    /// Every non-dry-run ApplyConfiguration that reached a node's handler.
    pub apply_calls: std::sync::atomic::AtomicUsize,
    /// Every call that asked apid to fan out to several nodes (`nodes` metadata;
    /// deprecated in 1.14, to be removed in 2.0).
    pub fanout_calls: std::sync::atomic::AtomicUsize,
    /// Every EtcdRemoveMemberByID that removed a member.
    pub member_removals: std::sync::atomic::AtomicUsize,
    /// Every certificate a control plane's trustd signed for a worker.
    pub trustd_signed: std::sync::atomic::AtomicUsize,
    /// The flaky-network fault (off unless set).
    pub flaky: crate::flaky::Flaky,
    /// The registry nodes pull installer images from, and image faults.
    pub registry: crate::registry::Registry,
    /// Whether the lab's Kubernetes API serves (a legacy upgrade waits for
    /// Talos's cordon and drain through it).
    pub kube_serving: AtomicBool,
    /// Every simulated delay the lab ran, timestamped (see [`LabDelay`]).
    pub delays: Mutex<Vec<LabDelay>>,
}

/// One simulated delay the lab ran (install, reboot, etcd join, a rollout...):
/// when it started and ended. What the lab did on its own, against which the
/// tool's time is measured.
#[derive(Debug, Clone)]
pub struct LabDelay {
    /// The node it ran on (`None`: the Kubernetes API and its controllers).
    pub node: Option<Ipv4Addr>,
    pub what: &'static str,
    pub start: std::time::Instant,
    pub end: std::time::Instant,
}

impl Fabric {
    pub(crate) fn scaled(&self, base_secs: f64) -> Duration {
        Duration::from_secs_f64((base_secs * self.time_scale).max(0.0))
    }

    pub(crate) fn nodes(&self) -> Vec<Arc<NodeInner>> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Records a delay (skipped when the time scale makes it zero).
    pub(crate) fn record_delay(
        &self,
        node: Option<Ipv4Addr>,
        what: &'static str,
        start: std::time::Instant,
        end: std::time::Instant,
    ) {
        if end > start {
            self.delays.lock().expect("delays lock").push(LabDelay {
                node,
                what,
                start,
                end,
            });
        }
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// One serving period of the listener: the accept loop, the server task and
/// the open connections.
pub(crate) struct Serving {
    pub(crate) accept: JoinHandle<()>,
    pub(crate) server: JoinHandle<()>,
    pub(crate) conns: Arc<ConnSet>,
}

impl Serving {
    /// Stops accepting, cuts every open connection and waits until the socket is
    /// closed (so the port can be bound again at once).
    pub(crate) async fn shut_down(self) {
        self.accept.abort();
        let _ = self.accept.await;
        self.conns.kill_all();
        self.server.abort();
        let _ = self.server.await;
    }

    /// [`Self::shut_down`] without waiting (for `Drop`).
    pub(crate) fn halt(self) {
        self.accept.abort();
        self.conns.kill_all();
        self.server.abort();
    }
}

/// The TLS setup new connections get.
#[derive(Clone)]
pub(crate) struct Acceptor {
    pub mode: ApiMode,
    pub normal: Arc<rustls::ServerConfig>,
    /// Configured mode only: the same, with a server certificate from a foreign CA.
    pub wrong_ca: Option<Arc<rustls::ServerConfig>>,
}

pub(crate) struct NodeInner {
    pub index: usize,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub hardware: Hardware,
    /// The Talos boot slots, boot ID and image store (see `upgrade`); the
    /// version and its API flavour are read from here at each boot.
    pub(crate) slots: Mutex<upgrade::Slots>,
    pub fabric: Arc<Fabric>,
    pub state_tx: watch::Sender<NodeState>,
    /// Every transition, none coalesced.
    pub transitions_tx: broadcast::Sender<NodeState>,
    pub data: Mutex<NodeData>,
    pub drop_calls: AtomicUsize,
    pub wrong_ca: AtomicBool,
    pub reboot_delay: Mutex<Option<Duration>>,
    pub apply_busy: AtomicBool,
    /// Fault: etcd on this node never joins (stays Preparing), as when the new
    /// member cannot reach its peers.
    pub etcd_join_blocked: AtomicBool,
    /// Fault: alarms the local etcd member reports (`NOSPACE`, `CORRUPT`).
    pub etcd_alarms: Mutex<Vec<String>>,
    pending_reply: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Why the last attempt to listen failed (cleared once listening): a node
    /// that should serve but cannot says so in the lab's report.
    pub listen_error: Mutex<Option<String>>,
    generation: AtomicU64,
    serving: tokio::sync::Mutex<Option<Serving>>,
    /// trustd's listener on port 50001 (control planes, while up).
    pub(crate) trustd: tokio::sync::Mutex<Option<Serving>>,
    /// What the listener serves (see [`Apid`]).
    apid: Apid,
    pub acceptor: Mutex<Option<Acceptor>>,
    /// Fired by the Kubernetes side once a legacy upgrade's cordon and drain ran.
    pub(crate) drained: watch::Sender<u64>,
    pub res_tx: watch::Sender<u64>,
    pub events_tx: broadcast::Sender<Arc<EventRec>>,
    pub events_log: Mutex<Vec<Arc<EventRec>>>,
    event_seq: AtomicU64,
}

impl NodeInner {
    pub(crate) fn new(
        index: usize,
        ip: Ipv4Addr,
        port: u16,
        hardware: Hardware,
        talos_version: String,
        fabric: Arc<Fabric>,
        apid: Apid,
    ) -> Arc<Self> {
        let (state_tx, _) = watch::channel(NodeState::PoweredOff);
        let (res_tx, _) = watch::channel(0);
        let (events_tx, _) = broadcast::channel(1024);
        let mac_tail = hardware
            .links
            .first()
            .map(|l| l.mac.replace(':', ""))
            .unwrap_or_default();
        let tail = &mac_tail[mac_tail.len().saturating_sub(6)..];
        Arc::new(NodeInner {
            index,
            ip,
            port,
            hardware,
            slots: Mutex::new(upgrade::Slots::new(talos_version)),
            fabric,
            state_tx,
            transitions_tx: broadcast::channel(256).0,
            data: Mutex::new(NodeData {
                config: None,
                staged: None,
                installed: false,
                install_disk: None,
                etcd: None,
                joining: false,
                recover_file: None,
                unmet: Vec::new(),
                services: BTreeMap::new(),
                maintenance_hostname: format!(
                    "talos-{}-{}",
                    &tail[..tail.len().min(3)],
                    &tail[tail.len().min(3)..]
                ),
                resources: BTreeMap::new(),
                pending_events: Vec::new(),
                last_status: None,
                rebooting_after_apply: false,
                api_cert: None,
                join_error: None,
            }),
            drop_calls: AtomicUsize::new(0),
            wrong_ca: AtomicBool::new(false),
            reboot_delay: Mutex::new(None),
            apply_busy: AtomicBool::new(false),
            etcd_join_blocked: AtomicBool::new(false),
            etcd_alarms: Mutex::new(Vec::new()),
            pending_reply: Mutex::new(None),
            listen_error: Mutex::new(None),
            generation: AtomicU64::new(0),
            serving: tokio::sync::Mutex::new(None),
            trustd: tokio::sync::Mutex::new(None),
            apid,
            acceptor: Mutex::new(None),
            drained: watch::channel(0).0,
            res_tx,
            events_tx,
            events_log: Mutex::new(Vec::new()),
            event_seq: AtomicU64::new(0),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.port)
    }

    pub(crate) fn state(&self) -> NodeState {
        *self.state_tx.borrow()
    }

    pub(crate) fn gen(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Starts a new lifecycle; tasks of older lifecycles notice and stop.
    pub(crate) fn bump_gen(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) fn config(&self) -> Option<Arc<NodeConfig>> {
        self.data.lock().expect("data lock").config.clone()
    }

    pub(crate) fn hostname(&self) -> String {
        let d = self.data.lock().expect("data lock");
        d.config
            .as_ref()
            .and_then(|c| c.hostname.clone())
            .unwrap_or_else(|| d.maintenance_hostname.clone())
    }

    pub(crate) async fn sleep(&self, what: &'static str, base_secs: f64) {
        let d = self.fabric.scaled(base_secs);
        self.sleep_for(what, d).await;
    }

    /// Sleeps `d`, recorded as one of the lab's delays.
    pub(crate) async fn sleep_for(&self, what: &'static str, d: Duration) {
        if !d.is_zero() {
            let start = std::time::Instant::now();
            tokio::time::sleep(d).await;
            self.fabric
                .record_delay(Some(self.ip), what, start, std::time::Instant::now());
        }
    }

    pub(crate) fn set_state(&self, s: NodeState) {
        let old = self.state_tx.send_replace(s);
        if old != s {
            let _ = self.transitions_tx.send(s);
        }
    }
}
