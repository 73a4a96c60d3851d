//! One simulated node: its lifecycle (maintenance → installing → rebooting →
//! booting → running, reset, power), its listener, its COSI resources and events.
//! State changes are driven by tasks and channels; nothing polls.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::config::NodeConfig;
use super::etcd::{EtcdMemberInfo, EtcdStore};
use super::hardware::Hardware;
use super::tls::{self, ConnSet, LabConn, LabConnInfo};
use super::NodeState;
use endsys_talos::api::machine;

/// Base delays (seconds at `time_scale` 1.0).
pub(crate) mod delay {
    pub const INSTALL: f64 = 4.0;
    pub const REBOOT: f64 = 3.0;
    pub const BOOT: f64 = 2.0;
    pub const ETCD_START: f64 = 1.0;
    pub const ETCD_JOIN: f64 = 2.0;
    pub const RESET: f64 = 1.0;
}

/// The only delay the time scale does not touch: after the reply of an RPC that
/// takes the node down (reboot, reset, leaving maintenance) has left the handler's
/// body (see [`ReplySent`]), h2 needs a moment to write it to the socket before
/// every connection is cut.
const REPLY_GRACE: Duration = Duration::from_millis(20);

/// Upper bound for waiting on a reply to be sent (a client that stops reading).
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Put into a response's extensions by handlers that trigger a transition; the
/// routing layer fires it once the response body is fully sent (or dropped).
#[derive(Clone)]
pub(crate) struct ReplySent(pub Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl ReplySent {
    pub(crate) fn fire(&self) {
        if let Some(tx) = self.0.lock().expect("reply lock").take() {
            let _ = tx.send(());
        }
    }
}

/// Which API a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiMode {
    /// Talos 1.13 maintenance: apid with the reader role for everyone.
    Maintenance113,
    /// Talos 1.12 maintenance: the separate small maintenance server.
    Maintenance112,
    /// Configured: mutual TLS, roles from the client certificate.
    Configured,
}

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
    /// Every EtcdRemoveMemberByID that removed a member.
    pub member_removals: std::sync::atomic::AtomicUsize,
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

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    pub cluster_uid: u64,
    pub member_id: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Svc {
    pub state: String,
    pub healthy: bool,
    pub unknown: bool,
    pub last_message: String,
    pub last_change: SystemTime,
    pub events: Vec<(String, String, SystemTime)>,
}

/// A COSI resource as stored in the node's table.
#[derive(Debug, Clone)]
pub(crate) struct ResRec {
    pub namespace: String,
    pub r#type: String,
    pub id: String,
    pub yaml: String,
    pub version: u64,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Stage, readiness and unmet conditions, as last reported.
type StatusKey = (NodeState, bool, Vec<(String, String)>);

/// Everything about a node that changes; guarded by one mutex, never held across awaits.
pub(crate) struct NodeData {
    /// Persisted config (the STATE partition).
    pub config: Option<Arc<NodeConfig>>,
    /// Talos installed on the system disk.
    pub installed: bool,
    pub install_disk: Option<String>,
    /// The etcd data directory: `Some` = non-empty.
    pub etcd: Option<Membership>,
    pub joining: bool,
    /// A snapshot uploaded with EtcdRecover (`/var/lib/etcd.snapshot`).
    pub recover_file: Option<Vec<u8>>,
    pub unmet: Vec<(String, String)>,
    pub services: BTreeMap<String, Svc>,
    pub maintenance_hostname: String,
    pub resources: BTreeMap<(String, String, String), ResRec>,
    pending_events: Vec<(prost_types::Any, String)>,
    last_status: Option<StatusKey>,
    /// An apply in REBOOT mode was accepted; the node is going down.
    pub rebooting_after_apply: bool,
}

pub(crate) struct EventRec {
    pub seq: u64,
    pub event: machine::Event,
}

pub(crate) struct Serving {
    accept: JoinHandle<()>,
    server: JoinHandle<()>,
    conns: Arc<ConnSet>,
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
    pub talos_version: String,
    pub v112: bool,
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
    generation: AtomicU64,
    serving: tokio::sync::Mutex<Option<Serving>>,
    pub acceptor: Mutex<Option<Acceptor>>,
    pub res_tx: watch::Sender<u64>,
    pub events_tx: broadcast::Sender<Arc<EventRec>>,
    pub events_log: Mutex<Vec<Arc<EventRec>>>,
    event_seq: AtomicU64,
}

fn type_url(name: &str) -> String {
    format!("talos/runtime/machine.{name}")
}

pub(crate) fn any<M: Message>(name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url(name),
        value: m.encode_to_vec(),
    }
}

fn stage_of(state: NodeState) -> machine::machine_status_event::MachineStage {
    use machine::machine_status_event::MachineStage as S;
    match state {
        NodeState::Maintenance => S::Maintenance,
        NodeState::Installing => S::Installing,
        NodeState::Rebooting => S::Rebooting,
        NodeState::Booting => S::Booting,
        NodeState::Running => S::Running,
        NodeState::PoweredOff => S::ShuttingDown,
        NodeState::Resetting => S::Resetting,
    }
}

pub(crate) fn stage_yaml(state: NodeState) -> &'static str {
    match state {
        NodeState::Maintenance => "maintenance",
        NodeState::Installing => "installing",
        NodeState::Rebooting => "rebooting",
        NodeState::Booting => "booting",
        NodeState::Running => "running",
        NodeState::PoweredOff => "shutting down",
        NodeState::Resetting => "resetting",
    }
}

fn service_action(state: &str) -> i32 {
    use machine::service_state_event::Action as A;
    (match state {
        "Initialized" => A::Initialized,
        "Preparing" => A::Preparing,
        "Waiting" => A::Waiting,
        "Running" => A::Running,
        "Stopping" => A::Stopping,
        "Finished" => A::Finished,
        "Failed" => A::Failed,
        "Skipped" => A::Skipped,
        _ => A::Starting,
    }) as i32
}

impl NodeInner {
    pub(crate) fn new(
        index: usize,
        ip: Ipv4Addr,
        port: u16,
        hardware: Hardware,
        talos_version: String,
        fabric: Arc<Fabric>,
    ) -> Arc<Self> {
        let v112 = talos_version.trim_start_matches('v').starts_with("1.12");
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
            talos_version,
            v112,
            fabric,
            state_tx,
            transitions_tx: broadcast::channel(256).0,
            data: Mutex::new(NodeData {
                config: None,
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
            }),
            drop_calls: AtomicUsize::new(0),
            wrong_ca: AtomicBool::new(false),
            reboot_delay: Mutex::new(None),
            apply_busy: AtomicBool::new(false),
            etcd_join_blocked: AtomicBool::new(false),
            etcd_alarms: Mutex::new(Vec::new()),
            pending_reply: Mutex::new(None),
            generation: AtomicU64::new(0),
            serving: tokio::sync::Mutex::new(None),
            acceptor: Mutex::new(None),
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

    /// Registers the reply the next transition must let out before cutting
    /// connections; returns the marker for the response's extensions.
    pub(crate) fn expect_reply(&self) -> ReplySent {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.pending_reply.lock().expect("reply lock") = Some(rx);
        ReplySent(Arc::new(Mutex::new(Some(tx))))
    }

    /// Waits until the reply registered with [`Self::expect_reply`] has been sent.
    async fn await_reply(&self) {
        let rx = self.pending_reply.lock().expect("reply lock").take();
        if let Some(rx) = rx {
            let _ = tokio::time::timeout(REPLY_WAIT, rx).await;
        }
        tokio::time::sleep(REPLY_GRACE).await;
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

    pub(crate) async fn sleep(&self, base_secs: f64) {
        let d = self.fabric.scaled(base_secs);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn set_state(&self, s: NodeState) {
        let old = self.state_tx.send_replace(s);
        if old != s {
            let _ = self.transitions_tx.send(s);
        }
    }

    /// Records a machine event (flushed by [`Self::commit`]).
    pub(crate) fn queue_event(d: &mut NodeData, payload: prost_types::Any, actor: &str) {
        d.pending_events.push((payload, actor.to_string()));
    }

    pub(crate) fn task_event(d: &mut NodeData, task: &str, stop: bool, actor: &str) {
        let ev = machine::TaskEvent {
            task: task.into(),
            action: if stop {
                machine::task_event::Action::Stop as i32
            } else {
                machine::task_event::Action::Start as i32
            },
        };
        Self::queue_event(d, any("TaskEvent", &ev), actor);
    }

    pub(crate) fn sequence_event(d: &mut NodeData, seq: &str, stop: bool, actor: &str) {
        let ev = machine::SequenceEvent {
            sequence: seq.into(),
            action: if stop {
                machine::sequence_event::Action::Stop as i32
            } else {
                machine::sequence_event::Action::Start as i32
            },
            error: None,
        };
        Self::queue_event(d, any("SequenceEvent", &ev), actor);
    }

    pub(crate) fn set_service(d: &mut NodeData, id: &str, state: &str, msg: &str) {
        let now = SystemTime::now();
        let healthy = state == "Running";
        let svc = d.services.entry(id.to_string()).or_insert_with(|| Svc {
            state: String::new(),
            healthy: false,
            unknown: true,
            last_message: String::new(),
            last_change: now,
            events: Vec::new(),
        });
        if svc.state == state && svc.last_message == msg {
            return;
        }
        svc.state = state.to_string();
        svc.healthy = healthy;
        svc.unknown = !matches!(state, "Running" | "Failed" | "Finished");
        svc.last_message = msg.to_string();
        svc.last_change = now;
        svc.events.push((msg.to_string(), state.to_string(), now));
        let ev = machine::ServiceStateEvent {
            service: id.to_string(),
            action: service_action(state),
            message: msg.to_string(),
            health: Some(machine::ServiceHealth {
                unknown: svc.unknown,
                healthy,
                last_message: msg.to_string(),
                last_change: Some(now.into()),
            }),
        };
        Self::queue_event(d, any("ServiceStateEvent", &ev), "");
    }

    /// Recomputes the COSI table, emits MachineStatus events on change, flushes
    /// queued events, and wakes watchers.
    pub(crate) fn commit(&self) {
        let state = self.state();
        let flushed;
        {
            let mut d = self.data.lock().expect("data lock");
            // Readiness: control planes also wait for etcd.
            let is_cp = d
                .config
                .as_ref()
                .is_some_and(|c| c.machine_type.is_control_plane());
            let mut unmet = d.unmet.clone();
            if matches!(state, NodeState::Booting | NodeState::Running) {
                let mut waiting: Vec<String> = d
                    .services
                    .iter()
                    .filter(|(id, s)| s.state != "Running" && (id.as_str() != "etcd" || is_cp))
                    .map(|(id, _)| format!("{id:?}"))
                    .collect();
                waiting.sort();
                if !waiting.is_empty() {
                    unmet.push((
                        "services".into(),
                        format!("service {} to be \"up\"", waiting.join(", ")),
                    ));
                }
            }
            let ready = state == NodeState::Running && unmet.is_empty();
            let status_now = (state, ready, unmet.clone());
            if d.last_status.as_ref() != Some(&status_now) {
                d.last_status = Some(status_now);
                let ev = machine::MachineStatusEvent {
                    stage: stage_of(state) as i32,
                    status: Some(machine::machine_status_event::MachineStatus {
                        ready,
                        unmet_conditions: unmet
                            .iter()
                            .map(|(n, r)| {
                                machine::machine_status_event::machine_status::UnmetCondition {
                                    name: n.clone(),
                                    reason: r.clone(),
                                }
                            })
                            .collect(),
                    }),
                };
                Self::queue_event(&mut d, any("MachineStatusEvent", &ev), "");
            }
            let fresh = super::resources::compute(self, &d, state, ready, &unmet);
            let now = SystemTime::now();
            let mut table = std::mem::take(&mut d.resources);
            table.retain(|k, _| {
                fresh
                    .iter()
                    .any(|r| (&r.0, &r.1, &r.2) == (&k.0, &k.1, &k.2))
            });
            for (ns, ty, id, yaml) in fresh {
                let key = (ns.clone(), ty.clone(), id.clone());
                match table.get_mut(&key) {
                    Some(rec) if rec.yaml == yaml => {}
                    Some(rec) => {
                        rec.yaml = yaml;
                        rec.version += 1;
                        rec.updated = now;
                    }
                    None => {
                        table.insert(
                            key,
                            ResRec {
                                namespace: ns,
                                r#type: ty,
                                id,
                                yaml,
                                version: 1,
                                created: now,
                                updated: now,
                            },
                        );
                    }
                }
            }
            d.resources = table;
            flushed = std::mem::take(&mut d.pending_events);
        }
        for (payload, actor) in flushed {
            let seq = self.event_seq.fetch_add(1, Ordering::SeqCst) + 1;
            let rec = Arc::new(EventRec {
                seq,
                event: machine::Event {
                    metadata: None,
                    data: Some(payload),
                    id: format!("{seq:020}"),
                    actor_id: actor,
                },
            });
            {
                let mut log = self.events_log.lock().expect("events lock");
                log.push(rec.clone());
                if log.len() > 4096 {
                    log.drain(..1024);
                }
            }
            let _ = self.events_tx.send(rec);
        }
        self.res_tx.send_modify(|v| *v += 1);
        self.fabric.notify();
    }

    // ---- serving -------------------------------------------------------------

    async fn start_serving(self: &Arc<Self>) -> std::io::Result<()> {
        let mut guard = self.serving.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr()).await?;
        let conns = Arc::new(ConnSet::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<LabConn, std::io::Error>>(64);
        let node = self.clone();
        let conns2 = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, remote)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let Some(acc) = node.acceptor.lock().expect("acceptor lock").clone() else {
                    continue;
                };
                let cfg = match (&acc.wrong_ca, node.wrong_ca.load(Ordering::SeqCst)) {
                    (Some(w), true) => w.clone(),
                    _ => acc.normal.clone(),
                };
                let tx = tx.clone();
                let conns = conns2.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let roles = match acc.mode {
                        ApiMode::Configured => tls::roles_of(tls.get_ref().1.peer_certificates()),
                        _ => vec!["os:reader".to_string()],
                    };
                    let conn = LabConn {
                        inner: tls,
                        info: LabConnInfo {
                            roles,
                            remote,
                            mode: acc.mode,
                        },
                        kill: conns.register(),
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        let api = super::api::LabApi { node: self.clone() };
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let server = tokio::spawn(async move {
            let _ = api.router().serve_with_incoming(incoming).await;
        });
        *guard = Some(Serving {
            accept,
            server,
            conns,
        });
        Ok(())
    }

    /// Closes the listener (connection refused from now on) and cuts every open
    /// connection.
    async fn stop_serving(&self) {
        let serving = self.serving.lock().await.take();
        if let Some(s) = serving {
            s.accept.abort();
            let _ = s.accept.await;
            s.conns.kill_all();
            s.server.abort();
            let _ = s.server.await;
        }
    }

    /// Stops everything without awaiting (for `Drop`): lifecycle tasks end, the
    /// listener and server tasks are aborted, connections cut.
    pub(crate) fn halt(&self) {
        self.bump_gen();
        if let Ok(mut guard) = self.serving.try_lock() {
            if let Some(s) = guard.take() {
                s.accept.abort();
                s.conns.kill_all();
                s.server.abort();
            }
        }
    }

    fn kill_connections_now(&self) {
        if let Ok(guard) = self.serving.try_lock() {
            if let Some(s) = guard.as_ref() {
                s.conns.kill_all();
            }
        }
    }

    fn set_maintenance_acceptor(&self) -> Result<(), String> {
        let cfg = tls::maintenance_config(IpAddr::V4(self.ip))?;
        *self.acceptor.lock().expect("acceptor lock") = Some(Acceptor {
            mode: if self.v112 {
                ApiMode::Maintenance112
            } else {
                ApiMode::Maintenance113
            },
            normal: cfg,
            wrong_ca: None,
        });
        Ok(())
    }

    fn set_configured_acceptor(&self, cfg: &NodeConfig) -> Result<(), String> {
        let ip = IpAddr::V4(self.ip);
        let normal = tls::configured_config(ip, cfg, false)?;
        let wrong = tls::configured_config(ip, cfg, true)?;
        *self.acceptor.lock().expect("acceptor lock") = Some(Acceptor {
            mode: ApiMode::Configured,
            normal,
            wrong_ca: Some(wrong),
        });
        Ok(())
    }

    // ---- lifecycle -------------------------------------------------------------

    /// Boots: into maintenance without a config, else (installing first if Talos
    /// is not on disk yet) into configured mode.
    pub(crate) fn boot(
        self: &Arc<Self>,
        gen: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.boot_inner(gen))
    }

    async fn boot_inner(self: &Arc<Self>, gen: u64) {
        let config = self.config();
        {
            let mut d = self.data.lock().expect("data lock");
            d.services.clear();
            d.unmet.clear();
            d.joining = false;
            d.rebooting_after_apply = false;
        }
        match config {
            None => {
                if let Err(e) = self.set_maintenance_acceptor() {
                    tracing::error!(node = %self.ip, "maintenance certificate: {e}");
                }
                {
                    let mut d = self.data.lock().expect("data lock");
                    if !self.v112 {
                        Self::set_service(&mut d, "apid", "Running", "Health check successful");
                    }
                    Self::set_service(
                        &mut d,
                        "machined",
                        "Running",
                        "Service started as goroutine",
                    );
                    Self::task_event(&mut d, "runningMaintenance", false, "");
                }
                self.set_state(NodeState::Maintenance);
                if let Err(e) = self.start_serving().await {
                    tracing::error!(node = %self.ip, "listen: {e}");
                }
                self.commit();
            }
            Some(cfg) => {
                let installed = self.data.lock().expect("data lock").installed;
                if !installed {
                    // Config on a machine booted from ISO: run the install path.
                    self.install_and_boot(gen, cfg).await;
                    return;
                }
                self.boot_configured(gen, cfg).await;
            }
        }
    }

    async fn boot_configured(self: &Arc<Self>, gen: u64, cfg: Arc<NodeConfig>) {
        if let Err(e) = self.set_configured_acceptor(&cfg) {
            tracing::error!(node = %self.ip, "apid certificate: {e}");
        }
        let is_cp = cfg.machine_type.is_control_plane();
        {
            let mut d = self.data.lock().expect("data lock");
            Self::set_service(
                &mut d,
                "machined",
                "Running",
                "Service started as goroutine",
            );
            Self::set_service(&mut d, "apid", "Running", "Health check successful");
            if is_cp {
                Self::set_service(&mut d, "trustd", "Running", "Health check successful");
                Self::set_service(&mut d, "etcd", "Preparing", "Running pre state");
            }
            Self::set_service(
                &mut d,
                "kubelet",
                "Waiting",
                "Waiting for service \"cri\" to be \"up\"",
            );
        }
        self.set_state(NodeState::Booting);
        if let Err(e) = self.start_serving().await {
            tracing::error!(node = %self.ip, "listen: {e}");
        }
        self.commit();
        self.sleep(delay::BOOT).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            Self::set_service(&mut d, "kubelet", "Running", "Health check successful");
            if is_cp {
                let member = d.etcd.and_then(|m| {
                    let store = self.fabric.etcd.lock().expect("etcd lock");
                    store
                        .get(m.cluster_uid)
                        .filter(|c| c.members.iter().any(|x| x.id == m.member_id))
                        .map(|_| ())
                });
                if member.is_some() {
                    Self::set_service(&mut d, "etcd", "Running", "Health check successful");
                } else if d.etcd.is_some() {
                    Self::set_service(
                        &mut d,
                        "etcd",
                        "Failed",
                        "etcdserver: the member has been permanently removed from the cluster",
                    );
                } else {
                    Self::set_service(
                        &mut d,
                        "etcd",
                        "Preparing",
                        "etcd is waiting to join the cluster, if this node is the first node in the cluster, please run `talosctl bootstrap`",
                    );
                }
            }
        }
        self.set_state(NodeState::Running);
        self.commit();
        self.fabric.kick_joins();
    }

    async fn install_and_boot(self: &Arc<Self>, gen: u64, cfg: Arc<NodeConfig>) {
        // apid restarts in mTLS mode as soon as the config is complete.
        if let Err(e) = self.set_configured_acceptor(&cfg) {
            tracing::error!(node = %self.ip, "apid certificate: {e}");
        }
        let disk = self
            .hardware
            .select_install_disk(cfg.install_disk.as_deref(), cfg.disk_selector.as_ref())
            .map(|d| d.dev_path());
        {
            let mut d = self.data.lock().expect("data lock");
            Self::task_event(&mut d, "runningMaintenance", true, "");
            Self::sequence_event(&mut d, "install", false, "");
            if let Err(reason) = &disk {
                d.unmet = vec![("install".into(), format!("failed to install: {reason}"))];
            }
        }
        self.set_state(NodeState::Installing);
        if let Err(e) = self.start_serving().await {
            tracing::error!(node = %self.ip, "listen: {e}");
        }
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.kill_connections_now();
        let Ok(disk) = disk else {
            // Stays installing, the failure visible in MachineStatus.
            return;
        };
        self.sleep(delay::INSTALL).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.installed = true;
            d.install_disk = Some(disk);
            Self::sequence_event(&mut d, "install", true, "");
        }
        self.reboot_cycle(gen, "").await;
    }

    /// Reboot: listener closed and connections cut, wait, boot.
    pub(crate) async fn reboot_cycle(self: &Arc<Self>, gen: u64, actor: &str) {
        {
            let mut d = self.data.lock().expect("data lock");
            Self::sequence_event(&mut d, "reboot", false, actor);
            Self::task_event(&mut d, "stopAllServices", false, actor);
        }
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.set_state(NodeState::Rebooting);
        self.commit();
        self.stop_serving().await;
        let custom = *self.reboot_delay.lock().expect("reboot delay lock");
        match custom {
            Some(d) => tokio::time::sleep(d).await,
            None => self.sleep(delay::REBOOT).await,
        }
        if self.gen() != gen {
            return;
        }
        self.boot(gen).await;
    }

    /// After an accepted maintenance apply.
    pub(crate) async fn leave_maintenance(self: &Arc<Self>, gen: u64) {
        let Some(cfg) = self.config() else { return };
        let installed = self.data.lock().expect("data lock").installed;
        if installed {
            // Booted from disk with an empty STATE: no install, no reboot.
            {
                let mut d = self.data.lock().expect("data lock");
                Self::task_event(&mut d, "runningMaintenance", true, "");
            }
            self.commit();
            self.await_reply().await;
            if self.gen() != gen {
                return;
            }
            if let Err(e) = self.set_configured_acceptor(&cfg) {
                tracing::error!(node = %self.ip, "apid certificate: {e}");
            }
            self.kill_connections_now();
            self.boot_configured(gen, cfg).await;
        } else {
            self.install_and_boot(gen, cfg).await;
        }
    }

    pub(crate) async fn power_off(self: &Arc<Self>) {
        self.bump_gen();
        self.stop_serving().await;
        {
            let mut d = self.data.lock().expect("data lock");
            d.services.clear();
            d.joining = false;
        }
        self.set_state(NodeState::PoweredOff);
        self.commit();
    }

    pub(crate) async fn power_on(self: &Arc<Self>) {
        if self.state() != NodeState::PoweredOff {
            return;
        }
        let gen = self.bump_gen();
        self.boot(gen).await;
    }

    /// The disk died and was replaced: no Talos, no config, no etcd data.
    pub(crate) fn wipe_disk(&self) {
        let mut d = self.data.lock().expect("data lock");
        d.config = None;
        d.installed = false;
        d.install_disk = None;
        d.etcd = None;
        d.recover_file = None;
    }

    /// Reset: leave etcd (graceful control plane), wipe, then reboot or power off.
    pub(crate) async fn reset(
        self: &Arc<Self>,
        gen: u64,
        graceful: bool,
        reboot: bool,
        labels: Vec<String>,
        actor: String,
    ) {
        {
            let mut d = self.data.lock().expect("data lock");
            Self::sequence_event(&mut d, "reset", false, &actor);
        }
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.set_state(NodeState::Resetting);
        self.commit();
        let is_cp = self
            .config()
            .is_some_and(|c| c.machine_type.is_control_plane());
        if graceful && is_cp {
            self.leave_etcd();
        }
        self.sleep(delay::RESET).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            Self::task_event(&mut d, "stopAllServices", false, &actor);
            let whole = labels.is_empty();
            if whole || labels.iter().any(|l| l == "EPHEMERAL") {
                d.etcd = None;
                d.recover_file = None;
            }
            if whole || labels.iter().any(|l| l == "STATE") {
                d.config = None;
            }
            if whole || labels.iter().any(|l| l == "BOOT" || l == "EFI") {
                d.installed = false;
                d.install_disk = None;
            }
            Self::task_event(&mut d, "stopAllServices", true, &actor);
        }
        self.commit();
        if reboot {
            self.reboot_cycle(gen, &actor).await;
        } else {
            self.stop_serving().await;
            self.data.lock().expect("data lock").services.clear();
            self.set_state(NodeState::PoweredOff);
            self.commit();
        }
    }

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
        Self::set_service(&mut d, "etcd", "Finished", "Service finished successfully");
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
    pub(crate) fn create_cluster(&self, key: &str, restored: Option<super::etcd::RestoredState>) {
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
        Self::set_service(&mut d, "etcd", "Running", "Health check successful");
    }

    async fn join_etcd(self: Arc<Self>, gen: u64) {
        self.sleep(delay::ETCD_JOIN).await;
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
