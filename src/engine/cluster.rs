//! The one handle on a cluster that every flow holds: its definition, the
//! rendered configs and admin credentials (once a secrets bundle exists), the
//! admin kubeconfig (once `up` fetched one), and clients straight to one node —
//! never through a VIP or an endpoint proxy, so the operator sees which node
//! receives each call and a dead endpoint cannot hide which member answered.
//!
//! [`NodeProbe`] is what one TLS handshake tells about a node; every flow
//! classifies nodes with [`probe`] (never with `Version`, which Talos 1.12's
//! maintenance server does not serve).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::talos::{
    probe_mode, CallPolicy, Credentials, Dial, NodeMode, TalosClient, TalosError, TlsFailure,
    TlsMode,
};
use endsys_core::Doctor;

use super::error::FlowError;
use super::events::Emitter;
use super::kubeconfig;
use super::source::{url_host, ClusterSource, Definition, NodeDef, Rendered};
use super::step::StepId;
use super::wait::Wait;

/// A cluster as the flows see it.
#[derive(Clone)]
pub struct Cluster {
    pub def: Definition,
    /// Configs and admin credentials; `None` until a secrets bundle exists.
    pub rendered: Option<Rendered>,
    /// Admin kubeconfig bytes (`<state_dir>/kubeconfig`).
    pub kubeconfig: Option<Vec<u8>>,
}

impl Cluster {
    /// Reads the definition, renders configs and credentials (a secrets bundle
    /// must exist), and loads the kubeconfig from the state directory when present.
    pub fn load(src: &dyn ClusterSource, state_dir: &Path) -> Result<Self, FlowError> {
        let def = src.definition()?;
        let rendered = src.render()?;
        Ok(Self {
            def,
            rendered: Some(rendered),
            kubeconfig: std::fs::read(state_dir.join("kubeconfig")).ok(),
        })
    }

    /// The definition alone (configs come later, once secrets exist).
    pub fn unrendered(def: Definition) -> Self {
        Self {
            def,
            rendered: None,
            kubeconfig: None,
        }
    }

    pub fn rendered(&self) -> Result<&Rendered, FlowError> {
        self.rendered
            .as_ref()
            .ok_or_else(|| FlowError::Source("no credentials rendered".into()))
    }

    /// Admin credentials (os:admin).
    pub fn creds(&self) -> Result<&Arc<Credentials>, FlowError> {
        Ok(&self.rendered()?.credentials)
    }

    /// A node of the definition by hostname (or address).
    pub fn node(&self, name: &str) -> Result<&NodeDef, FlowError> {
        self.def
            .nodes
            .iter()
            .find(|n| n.hostname == name)
            .or_else(|| self.def.nodes.iter().find(|n| n.address == name))
            .ok_or_else(|| FlowError::UnknownNode {
                node: name.to_string(),
                known: self
                    .def
                    .nodes
                    .iter()
                    .map(|n| n.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The control planes other than `exclude`, in definition order.
    pub fn other_control_planes(&self, exclude: &str) -> Vec<&NodeDef> {
        self.def
            .control_planes()
            .filter(|n| n.hostname != exclude)
            .collect()
    }

    pub fn config_of(&self, node: &NodeDef) -> Result<&[u8], FlowError> {
        self.rendered()?
            .configs
            .get(&node.hostname)
            .map(Vec::as_slice)
            .ok_or_else(|| FlowError::Source(format!("no config rendered for {}", node.hostname)))
    }

    /// The config for `node` when it runs Talos 1.`running_minor`: the rendered one,
    /// or, when the node runs an older Talos than the contract, the same definition
    /// under the node's own contract (the installer image still names talosVersion).
    /// Returns the config and the contract minor chosen, when it is an older one.
    pub fn config_for(
        &self,
        node: &NodeDef,
        running_minor: u32,
    ) -> Result<(&[u8], Option<u32>), FlowError> {
        let r = self.rendered()?;
        match r.contract_minor {
            Some(c) if running_minor < c => match r.older.get(&running_minor) {
                Some(Ok(cs)) => cs
                    .get(&node.hostname)
                    .map(|b| (b.as_slice(), Some(running_minor)))
                    .ok_or_else(|| FlowError::Source(format!("no config rendered for {}", node.hostname))),
                Some(Err(e)) => Err(FlowError::Source(format!(
                    "{} runs Talos 1.{running_minor}, which cannot read the contract 1.{c} documents, and the definition does not render under contract 1.{running_minor}: {e}; boot the node from a Talos 1.{c} image (or upgrade it) and run `up` again",
                    node.label()
                ))),
                None => Err(FlowError::Source(format!(
                    "{} runs Talos 1.{running_minor}, older than this tool renders (contract 1.12 and newer); boot it from a Talos 1.{c} image",
                    node.label()
                ))),
            },
            _ => self.config_of(node).map(|b| (b, None)),
        }
    }

    /// An mTLS client straight to `node` (never via an endpoint).
    pub fn mtls(&self, node: &NodeDef, policy: CallPolicy) -> Result<TalosClient, FlowError> {
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Mutual(self.creds()?.clone()),
            policy,
        )?)
    }

    /// A maintenance-mode (insecure) client to `node`.
    pub fn insecure(&self, node: &NodeDef, policy: CallPolicy) -> Result<TalosClient, FlowError> {
        Ok(TalosClient::connect(
            &node.address,
            TlsMode::Insecure { fingerprint: None },
            policy,
        )?)
    }

    /// The host of the kubeconfig's API server (current context's cluster,
    /// else the only one).
    pub fn api_server_host(&self) -> Option<String> {
        let server = kubeconfig::current_server(self.kubeconfig.as_ref()?)?;
        Some(url_host(&server).to_string())
    }

    /// A Kubernetes client from the kubeconfig.
    pub async fn kube(&self) -> Option<Result<kube::Client, crate::kube::KubeError>> {
        let bytes = self.kubeconfig.as_ref()?;
        Some(crate::kube::client_from_kubeconfig(bytes).await)
    }

    /// A Kubernetes client for drains: 429 answers come back instead of being
    /// retried inside the client (see [`crate::kube::client_no_retry`]).
    pub async fn kube_for_drains(&self) -> Option<Result<kube::Client, crate::kube::KubeError>> {
        let bytes = self.kubeconfig.as_ref()?;
        Some(crate::kube::client_no_retry(bytes).await)
    }
}

/// What one TLS handshake shows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeProbe {
    Maintenance,
    /// Configured; its certificate is from our CA.
    Ours,
    /// Configured from another secrets bundle.
    Foreign,
    /// Configured, but we hold no secrets to tell whose.
    ConfiguredUnknown,
    Unreachable(String),
}

impl NodeProbe {
    pub fn describe(&self) -> String {
        match self {
            NodeProbe::Maintenance => "maintenance".into(),
            NodeProbe::Ours => "configured (our CA)".into(),
            NodeProbe::Foreign => "configured (another CA)".into(),
            NodeProbe::ConfiguredUnknown => "configured (CA unknown: no secrets)".into(),
            NodeProbe::Unreachable(why) => format!("unreachable: {why}"),
        }
    }
}

/// One TLS handshake with `node`: the mode it answers in, or why it does not answer.
pub async fn probe(
    node: &NodeDef,
    creds: Option<&Arc<Credentials>>,
    timeout: Duration,
) -> Result<NodeProbe, TalosError> {
    let dial = Dial::parse(&node.address)?;
    Ok(match probe_mode(&dial, creds, timeout).await? {
        NodeMode::Maintenance => NodeProbe::Maintenance,
        NodeMode::Configured { our_ca: Some(true) } => NodeProbe::Ours,
        NodeMode::Configured {
            our_ca: Some(false),
        } => NodeProbe::Foreign,
        NodeMode::Configured { our_ca: None } => NodeProbe::ConfiguredUnknown,
    })
}

/// Classifies a node by a TLS probe; waits up to `deadline` while it does not
/// answer (it may be rebooting), saying so on `step`.
pub async fn classify(
    em: &Emitter,
    step: StepId,
    node: &NodeDef,
    creds: Option<&Arc<Credentials>>,
    probe_timeout: Duration,
    deadline: Duration,
) -> NodeProbe {
    let mut w = Wait::new(node.label(), "answering on the Talos API", deadline).backoff(
        super::wait::Backoff::new(Duration::from_millis(100), super::wait::POLL_MAX),
    );
    loop {
        let err = match probe(node, creds, probe_timeout).await {
            Ok(p) => return p,
            Err(e) => e,
        };
        let waitable = err.is_transient()
            || matches!(
                err.root(),
                TalosError::Tls {
                    kind: TlsFailure::Other,
                    ..
                }
            );
        if !waitable || w.pause_outlasts() {
            return NodeProbe::Unreachable(err.likely_cause());
        }
        let msg = format!(
            "{} to answer on the Talos API ({})",
            node.label(),
            err.likely_cause()
        );
        if w.news(&msg) {
            em.waiting(step, Some(&node.hostname), msg);
        }
        if w.pause().await.is_err() {
            return NodeProbe::Unreachable(err.likely_cause());
        }
    }
}

/// Follows a node's MachineStatus (COSI Watch, reconnecting while the node is
/// away) until `done`; a timeout names the node, `what` and the last status.
pub async fn wait_machine<F, P>(
    client: &TalosClient,
    node: &NodeDef,
    what: &str,
    deadline: Duration,
    done: F,
    progress: P,
) -> Result<crate::talos::resources::MachineStatus, FlowError>
where
    F: FnMut(&crate::talos::resources::MachineStatus) -> bool,
    P: FnMut(crate::talos::wait::WaitProgress),
{
    use crate::talos::wait::{wait_for_status, WaitError};
    wait_for_status(client, what, deadline, done, progress)
        .await
        .map_err(|e| match e {
            WaitError::Timeout { after, last, .. } => FlowError::Timeout {
                node: node.label(),
                what: what.to_string(),
                after,
                last,
            },
            WaitError::Fatal(e) => FlowError::Talos(e),
        })
}
