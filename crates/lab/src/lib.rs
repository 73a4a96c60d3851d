//! Simulated Talos nodes on loopback, for tests and `demo`.
//!
//! Each node is a real gRPC server with real TLS on its own address
//! (`127.0.0.11:50000`, `127.0.0.12:50000`, ...), behaving as Talos does: maintenance
//! mode with a throw-away certificate and no client auth; apply config → installing →
//! rebooting (connection refused) → booting → running with mutual TLS from the
//! config's OS CA and roles from the client certificate; control planes run trustd
//! on port 50001 and workers (whose config has no CA key) get their apid
//! certificate from it with the machine token (`internal/app/trustd`,
//! `secrets.APIController`); bootstrap once; etcd join, snapshot and recovery;
//! reset; faults. All nodes share one fabric holding the
//! simulated etcd cluster(s). The behaviour follows siderolabs/talos v1.13.9 and
//! v1.12.11: apid and its role checks (`internal/app/apid`,
//! `pkg/grpc/middleware/authz`, roles in `pkg/machinery/role/role.go`), machined's
//! API (`internal/app/machined/internal/server/v1alpha1`) and, for 1.12, the separate
//! maintenance server (`internal/app/maintenance/server.go`, removed in 1.13, where
//! apid serves maintenance mode with the reader role).
//!
//! Upgrades (`node::upgrade`, `api::upgrade`, knobs in `upgrades`): a node's Talos
//! version is an A/B pair of boot slots, re-read at every boot (with a new boot
//! ID, also served by `Read` of `/proc/sys/kernel/random/boot_id`); installer
//! images come from the lab's registry (`registry`: released tags of
//! `ghcr.io/siderolabs/installer` and of the image factory's installer
//! repositories, plus [`Lab::publish_installer`]); ImageService.Pull and
//! LifecycleService.Upgrade exist from 1.13 on, the legacy MachineService.Upgrade
//! checks etcd as Talos does and runs the node's own cordon, drain, install and
//! reboot; an image flagged with [`Lab::set_image_fails_to_boot`] makes the node
//! fall back to its previous slot.
//!
//! One knob, [`LabOptions::time_scale`], multiplies every delay (0 = none). Nothing
//! polls: transitions are tasks, and observers follow watch channels
//! ([`LabNode::watch_state`], COSI Watch, Events).

mod api;
mod config;
mod etcd;
mod flaky;
mod hardware;
pub mod identity;
pub mod kube;
mod node;
mod registry;
pub mod repository;
mod tls;
mod upgrades;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use etcd::{EtcdError, EtcdMemberInfo};
pub use flaky::FlakyNetwork;
pub use hardware::{DiskInfo, Hardware, LinkInfo};
pub use node::data::NodeState;
pub use node::membership::EtcdHandle;
pub use node::LabDelay;
pub use tls::{LabConnInfo, MAINTENANCE_CN};

use node::{Fabric, NodeInner};

/// The most nodes one lab runs (500-node labs are measured; 100000 exhausted
/// memory and file descriptors before failing).
pub const MAX_NODES: usize = 2000;

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// How many of them the caller intends as control planes (informational: the
    /// applied config decides a node's type, as on real hardware).
    pub controlplanes: usize,
    /// Address of node 0; node i gets `first_ip + i`.
    pub first_ip: Ipv4Addr,
    /// apid port on every node.
    pub port: u16,
    /// Talos version to emulate; `v1.12.x` selects the 1.12 maintenance server.
    pub talos_version: String,
    /// Multiplies every delay; 1.0 ≈ seconds like real hardware, 0.0 = none.
    pub time_scale: f64,
    /// Per-node hardware; missing entries get [`Hardware::default_for`].
    pub hardware: Vec<Hardware>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            nodes: 3,
            controlplanes: 3,
            first_ip: Ipv4Addr::new(127, 0, 0, 11),
            port: 50000,
            talos_version: "v1.13.9".into(),
            time_scale: 1.0,
            hardware: Vec::new(),
        }
    }
}

/// Errors starting a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab node {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lab options: {0}")]
    Options(String),
}

/// A running lab.
pub struct Lab {
    nodes: Vec<LabNode>,
    fabric: Arc<Fabric>,
    kube: kube::KubeLab,
}

impl Lab {
    /// Starts every node in maintenance mode and returns once all listen.
    pub async fn start(opts: LabOptions) -> Result<Lab, LabError> {
        if opts.nodes == 0 {
            return Err(LabError::Options("at least one node is required".into()));
        }
        if !(opts.time_scale >= 0.0 && opts.time_scale.is_finite()) {
            return Err(LabError::Options(format!(
                "time_scale must be a finite number >= 0, got {}",
                opts.time_scale
            )));
        }
        if opts.nodes > MAX_NODES {
            return Err(LabError::Options(format!(
                "{} nodes asked for, at most {MAX_NODES}: every node is a listener with its own TLS identity and tasks, and a larger lab runs out of file descriptors and memory long before it is useful",
                opts.nodes
            )));
        }
        // Loopback only: every address of the lab must stay in 127.0.0.0/8.
        let first = u32::from(opts.first_ip);
        let last = first.checked_add(opts.nodes as u32 - 1).map(Ipv4Addr::from);
        match last {
            Some(last) if opts.first_ip.is_loopback() && last.is_loopback() => {}
            _ => {
                return Err(LabError::Options(format!(
                    "{} nodes from {} leave the loopback range 127.0.0.0/8; choose a lower first address",
                    opts.nodes, opts.first_ip
                )))
            }
        }
        let (changed, _) = tokio::sync::watch::channel(0);
        let fabric = Arc::new(Fabric {
            etcd: Mutex::new(Default::default()),
            nodes: Mutex::new(Vec::new()),
            changed,
            time_scale: opts.time_scale,
            bootstrap_calls: Default::default(),
            apply_calls: Default::default(),
            member_removals: Default::default(),
            trustd_signed: Default::default(),
            flaky: Default::default(),
            registry: Default::default(),
            kube_serving: Default::default(),
            delays: Default::default(),
        });
        let mut nodes = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let ip = Ipv4Addr::from(first + i as u32);
            let hw = opts
                .hardware
                .get(i)
                .cloned()
                .unwrap_or_else(|| Hardware::default_for(i));
            let inner = NodeInner::new(
                i,
                ip,
                opts.port,
                hw,
                opts.talos_version.clone(),
                fabric.clone(),
                api::serve,
            );
            fabric
                .nodes
                .lock()
                .expect("nodes lock")
                .push(Arc::downgrade(&inner));
            nodes.push(LabNode { inner });
        }
        for n in &nodes {
            // Check the address is free first so the error says which one.
            let addr = n.addr();
            match std::net::TcpListener::bind(addr) {
                Ok(l) => drop(l),
                Err(source) => return Err(LabError::Bind { addr, source }),
            }
            n.inner.power_on().await;
            if n.state() != NodeState::Maintenance {
                return Err(LabError::Options(format!("node {addr} did not boot")));
            }
        }
        let kube = kube::KubeLab::start(fabric.clone());
        Ok(Lab {
            nodes,
            fabric,
            kube,
        })
    }

    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// A node by IP (`127.0.0.11`) or by hostname from its applied config.
    pub fn node(&self, ip_or_name: &str) -> Option<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.inner.ip.to_string() == ip_or_name)
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| n.hostname().as_deref() == Some(ip_or_name))
            })
    }

    /// Powers every node off (listeners closed, connections cut).
    pub async fn shutdown(self) {
        self.kube.halt();
        for n in &self.nodes {
            n.inner.power_off().await;
        }
    }

    /// The simulated Kubernetes API (up once a control plane runs with etcd
    /// bootstrapped, on the config's control-plane endpoint).
    pub fn kube(&self) -> kube::KubeLab {
        self.kube.clone()
    }

    /// How many Bootstrap calls reached any node of this lab (accepted or refused).
    pub fn bootstrap_calls(&self) -> usize {
        self.fabric.bootstrap_calls.load(Ordering::SeqCst)
    }

    /// How many ApplyConfiguration calls (dry runs excluded) reached any node.
    pub fn apply_calls(&self) -> usize {
        self.fabric.apply_calls.load(Ordering::SeqCst)
    }

    /// How many etcd members EtcdRemoveMemberByID removed (refusals and
    /// "member not found" not counted).
    pub fn member_removals(&self) -> usize {
        self.fabric.member_removals.load(Ordering::SeqCst)
    }

    /// How many certificates the control planes' trustd signed for workers.
    pub fn trustd_signed(&self) -> usize {
        self.fabric.trustd_signed.load(Ordering::SeqCst)
    }

    /// Bumped on every change of any node (state, services, etcd): observers
    /// sample the lab on each change instead of polling.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fabric.changed.subscribe()
    }

    /// One line per node: address, hostname, state, whether it listens (and why
    /// not), etcd; what an end-to-end test prints when its deadline passes.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&n.report());
            out.push('\n');
        }
        out.push_str(&format!(
            "calls: {} Bootstrap, {} ApplyConfiguration",
            self.bootstrap_calls(),
            self.apply_calls()
        ));
        out
    }

    /// Fault: from now on a share of all calls fails with `Unavailable` or is
    /// delayed (`None` turns it off).
    pub fn set_flaky(&self, mode: Option<FlakyNetwork>) {
        self.fabric.flaky.set(mode);
    }

    /// How many calls the flaky network failed and delayed so far.
    pub fn flaky_counts(&self) -> (usize, usize) {
        (
            self.fabric.flaky.failed.load(Ordering::Relaxed),
            self.fabric.flaky.delayed.load(Ordering::Relaxed),
        )
    }

    /// Every simulated delay run so far, timestamped: the lab's own record of
    /// the time it spent, against which `demo` measures the tool.
    pub fn delays(&self) -> Vec<LabDelay> {
        self.fabric.delays.lock().expect("delays lock").clone()
    }

    /// The simulated etcd key-value store.
    pub fn etcd(&self) -> EtcdHandle {
        EtcdHandle {
            fabric: self.fabric.clone(),
        }
    }
}

impl Drop for Lab {
    /// A lab dropped without [`Lab::shutdown`] still stops serving.
    fn drop(&mut self) {
        self.kube.halt();
        for n in &self.nodes {
            n.inner.halt();
        }
    }
}

/// Handle on one simulated node (cheap to clone).
#[derive(Clone)]
pub struct LabNode {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for LabNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabNode")
            .field("addr", &self.addr())
            .field("state", &self.state())
            .finish()
    }
}

impl LabNode {
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.inner.ip)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// Position in the lab (0-based).
    pub fn index(&self) -> usize {
        self.inner.index
    }

    pub fn state(&self) -> NodeState {
        self.inner.state()
    }

    /// Follows state changes (tests await transitions on this).
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<NodeState> {
        self.inner.state_tx.subscribe()
    }

    /// Every state transition from now on, none coalesced (a `watch` only keeps
    /// the latest, and at `time_scale` 0 some states last microseconds).
    pub fn transitions(&self) -> tokio::sync::broadcast::Receiver<NodeState> {
        self.inner.transitions_tx.subscribe()
    }

    /// Whether the apid listener is up (`None`: it is being changed right now).
    pub fn listening(&self) -> Option<bool> {
        self.inner.is_serving()
    }

    /// Why the node could not listen the last time it tried (cleared once it does).
    pub fn listen_error(&self) -> Option<String> {
        self.inner
            .listen_error
            .lock()
            .expect("listen error lock")
            .clone()
    }

    /// One line on this node for reports: address, hostname, state, listener,
    /// etcd, the Talos version booted and how many boots so far.
    pub fn report(&self) -> String {
        let listening = match (self.listening(), self.listen_error()) {
            (_, Some(e)) => format!("NOT listening: {e}"),
            (Some(true), None) => "listening".into(),
            (Some(false), None) => "not listening".into(),
            (None, None) => "listener changing".into(),
        };
        format!(
            "{} {}: {:?}, {listening}, etcd {}, Talos {} (boot {})",
            self.addr(),
            self.hostname().unwrap_or_else(|| "-".into()),
            self.state(),
            self.service_state("etcd")
                .unwrap_or_else(|| "absent".into()),
            self.talos_version(),
            self.boots(),
        )
    }

    /// Hostname from the applied config, if any.
    pub fn hostname(&self) -> Option<String> {
        self.inner.config().and_then(|c| c.hostname.clone())
    }

    pub fn hardware(&self) -> &Hardware {
        &self.inner.hardware
    }

    /// The OS CA of the applied config (what an operator holds in secrets.yaml);
    /// `lab serve` mints the lab talosconfig from it. Control planes only: a
    /// worker's config carries the CA certificate without its key.
    pub fn os_ca(&self) -> Option<endsys_core::pki::CertificateAuthority> {
        self.inner.config().and_then(|c| c.os_ca.clone())
    }

    /// The machine config this node received, byte for byte (tests compare it
    /// with the file the tool rendered).
    pub fn applied_config(&self) -> Option<Vec<u8>> {
        self.inner.config().map(|c| c.raw.clone())
    }

    /// Whether the applied config makes this node a control plane.
    pub fn is_control_plane(&self) -> bool {
        self.inner
            .config()
            .is_some_and(|c| c.machine_type.is_control_plane())
    }

    /// Whether the etcd data directory is non-empty.
    pub fn has_etcd_data(&self) -> bool {
        self.inner.data.lock().expect("data lock").etcd.is_some()
    }

    /// State of one service as ServiceList reports it (`Running`, `Preparing`, ...).
    pub fn service_state(&self, id: &str) -> Option<String> {
        self.inner
            .data
            .lock()
            .expect("data lock")
            .services
            .get(id)
            .map(|s| s.state.clone())
    }

    /// A worker waiting for its apid certificate: why the last trustd request
    /// failed, as the console shows it ("failed to sign API server CSR: rpc
    /// error: code = Unauthenticated desc = invalid token"). `None` once signed.
    pub fn trustd_error(&self) -> Option<String> {
        self.inner
            .data
            .lock()
            .expect("data lock")
            .join_error
            .clone()
    }

    /// Whether apid serves a certificate trustd signed (workers).
    pub fn has_trustd_certificate(&self) -> bool {
        self.inner
            .data
            .lock()
            .expect("data lock")
            .api_cert
            .is_some()
    }

    // ---- faults ----

    /// The next `n` RPCs answer `Unavailable`.
    pub fn drop_next_calls(&self, n: usize) {
        self.inner.drop_calls.store(n, Ordering::SeqCst);
    }

    /// Power off: listener closed (connection refused), connections cut, tasks stop.
    pub async fn power_off(&self) {
        self.inner.power_off().await;
    }

    /// Power on: boots from disk (configured) or into maintenance.
    pub async fn power_on(&self) {
        self.inner.power_on().await;
    }

    /// Time a reboot keeps the node down (overrides the scaled default).
    pub fn set_reboot_delay(&self, d: Duration) {
        *self.inner.reboot_delay.lock().expect("reboot delay lock") = Some(d);
    }

    /// Configured mode serves a certificate from a foreign CA while on.
    pub fn serve_wrong_ca(&self, on: bool) {
        self.inner.wrong_ca.store(on, Ordering::SeqCst);
    }

    /// Fault: etcd on this node never joins its cluster (the service stays
    /// `Preparing`), until turned off again.
    pub fn block_etcd_join(&self, on: bool) {
        self.inner.etcd_join_blocked.store(on, Ordering::SeqCst);
        if !on {
            self.inner.fabric.kick_joins();
        }
    }

    /// Fault: the local etcd member raises an alarm (`NOSPACE`, `CORRUPT`); it shows
    /// in EtcdStatus errors the way etcd reports it. An empty name clears them.
    pub fn set_etcd_alarm(&self, alarm: &str) {
        let mut a = self.inner.etcd_alarms.lock().expect("alarms lock");
        a.clear();
        if !alarm.is_empty() {
            a.push(alarm.to_string());
        }
    }

    /// The etcd member ID this node holds in its data directory, if any.
    pub fn etcd_member_id(&self) -> Option<u64> {
        self.inner
            .data
            .lock()
            .expect("data lock")
            .etcd
            .map(|m| m.member_id)
    }

    /// The system disk died and was replaced: the next power on boots into
    /// maintenance with a fresh identity (no config, no etcd data). Powers the node
    /// off first if needed.
    pub async fn wipe_disk(&self) {
        if self.state() != NodeState::PoweredOff {
            self.inner.power_off().await;
        }
        self.inner.wipe_disk();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lab serve --nodes 100000` grew to 4.2 GB before failing; now it is
    /// refused before a single node exists, and so is a range leaving loopback.
    #[tokio::test]
    async fn oversized_or_non_loopback_labs_are_refused_up_front() {
        let too_many = LabOptions {
            nodes: 100_000,
            first_ip: Ipv4Addr::new(127, 0, 111, 11),
            ..LabOptions::default()
        };
        let e = Lab::start(too_many).await.err().expect("refused");
        assert!(e.to_string().contains("at most 2000"), "{e}");
        let leaves = LabOptions {
            nodes: 10,
            first_ip: Ipv4Addr::new(127, 255, 255, 250),
            ..LabOptions::default()
        };
        let e = Lab::start(leaves).await.err().expect("refused");
        assert!(e.to_string().contains("loopback"), "{e}");
    }
}
