//! A simulated node's state as data: its lifecycle stage ([`NodeState`]), what
//! changes with it ([`NodeData`]: the persisted config, the install, the etcd data
//! directory, services, the COSI table) and the machine events it queues, built
//! as machined emits them (`TaskEvent`, `SequenceEvent`, `ServiceStateEvent`,
//! `MachineStatusEvent`, type URLs `talos/runtime/machine.*`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;

use crate::config::NodeConfig;
use endsys_talos::api::machine;

/// Lifecycle state of a simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// No config: maintenance API (TLS without client certificates).
    Maintenance,
    /// Config accepted, writing Talos to disk (apid already in mTLS mode).
    Installing,
    /// Down: listener closed, connection refused.
    Rebooting,
    /// Configured, services starting.
    Booting,
    /// Configured and up.
    Running,
    /// Off: connection refused until `LabNode::power_on`.
    PoweredOff,
    /// Reset in progress.
    Resetting,
    /// A legacy upgrade runs: cordon and drain, services stopped, installing.
    Upgrading,
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
pub(super) type StatusKey = (NodeState, bool, Vec<(String, String)>);

/// Everything about a node that changes; guarded by one mutex, never held across awaits.
pub(crate) struct NodeData {
    /// Persisted config (the STATE partition).
    pub config: Option<Arc<NodeConfig>>,
    /// A STAGED apply: the persistent copy ahead of the active one, loaded at
    /// the next boot.
    pub staged: Option<Arc<NodeConfig>>,
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
    pub(super) pending_events: Vec<(prost_types::Any, String)>,
    pub(super) last_status: Option<StatusKey>,
    /// An apply in REBOOT mode was accepted; the node is going down.
    pub rebooting_after_apply: bool,
    /// A worker's apid certificate from trustd (in memory: asked again each boot).
    pub api_cert: Option<Arc<IssuedCert>>,
    /// Why the last trustd request of this worker failed, while it has none.
    pub join_error: Option<String>,
}

pub(crate) struct EventRec {
    pub seq: u64,
    pub event: machine::Event,
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

pub(super) fn stage_of(state: NodeState) -> machine::machine_status_event::MachineStage {
    use machine::machine_status_event::MachineStage as S;
    match state {
        NodeState::Maintenance => S::Maintenance,
        NodeState::Installing => S::Installing,
        NodeState::Rebooting => S::Rebooting,
        NodeState::Booting => S::Booting,
        NodeState::Running => S::Running,
        NodeState::PoweredOff => S::ShuttingDown,
        NodeState::Resetting => S::Resetting,
        NodeState::Upgrading => S::Upgrading,
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
        NodeState::Upgrading => "upgrading",
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

impl NodeData {
    /// Records a machine event (flushed by `NodeInner::commit`).
    pub(crate) fn queue_event(&mut self, payload: prost_types::Any, actor: &str) {
        self.pending_events.push((payload, actor.to_string()));
    }

    pub(crate) fn task_event(&mut self, task: &str, stop: bool, actor: &str) {
        let ev = machine::TaskEvent {
            task: task.into(),
            action: if stop {
                machine::task_event::Action::Stop as i32
            } else {
                machine::task_event::Action::Start as i32
            },
        };
        self.queue_event(any("TaskEvent", &ev), actor);
    }

    pub(crate) fn sequence_event(&mut self, seq: &str, stop: bool, actor: &str) {
        let ev = machine::SequenceEvent {
            sequence: seq.into(),
            action: if stop {
                machine::sequence_event::Action::Stop as i32
            } else {
                machine::sequence_event::Action::Start as i32
            },
            error: None,
        };
        self.queue_event(any("SequenceEvent", &ev), actor);
    }

    pub(crate) fn set_service(&mut self, id: &str, state: &str, msg: &str) {
        let now = SystemTime::now();
        let healthy = state == "Running";
        let svc = self.services.entry(id.to_string()).or_insert_with(|| Svc {
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
        self.queue_event(any("ServiceStateEvent", &ev), "");
    }
}

/// What trustd returned to a worker: the signed certificate (with the worker's own
/// key) and the CAs its apid then accepts client certificates from.
pub(crate) struct IssuedCert {
    pub cert: endsys_core::pki::CertAndKey,
    pub accepted_cas_pem: Vec<u8>,
}
