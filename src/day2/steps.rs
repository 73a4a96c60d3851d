//! Node-level building blocks shared by reimage and rejoin: classify a node by
//! TLS handshake, wait for maintenance or for running, apply in maintenance, read
//! members through another control plane and wait for a member to come back.

use endsys_core::Doctor;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::guard::owner;
use super::{emit, Cluster, Day2Error, Day2Options, EventKind};
use crate::orchestrator::source::NodeDef;
use crate::talos::client::EtcdMember;
use crate::talos::resources::MachineStage;
use crate::talos::wait::{wait_for_status, WaitError, WaitProgress, POLL_FALLBACK};
use crate::talos::{probe_mode, ApplyMode, Dial, NodeMode};

/// Most a wait on etcd membership pauses between two member lists: there is no
/// watchable resource for the cluster-wide member list (quorum reads only).
const MEMBER_POLL: Duration = Duration::from_millis(250);

/// A node as one TLS handshake shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Maintenance,
    /// Configured with our CA.
    Ours,
    /// Configured by another cluster (or serving a foreign certificate).
    Foreign,
    Unreachable(String),
}

pub(crate) async fn probe(cluster: &Cluster, node: &NodeDef, opts: &Day2Options) -> Mode {
    let dial = match Dial::parse(&node.address) {
        Ok(d) => d,
        Err(e) => return Mode::Unreachable(e.to_string()),
    };
    match probe_mode(&dial, Some(cluster.creds()), opts.probe_timeout).await {
        Ok(NodeMode::Maintenance) => Mode::Maintenance,
        Ok(NodeMode::Configured {
            our_ca: Some(false),
        }) => Mode::Foreign,
        Ok(NodeMode::Configured { .. }) => Mode::Ours,
        Err(e) => Mode::Unreachable(e.to_string()),
    }
}

/// Waits until the node answers in maintenance mode. While it still runs its
/// config, the wait follows its MachineStatus watch until the stream ends (the
/// node went down); while it is down, reconnects at most [`POLL_FALLBACK`] apart.
/// Verifying by handshake, not by the reset's event stream, is deliberate: that
/// stream is cut by the very reboot it reports.
pub(crate) async fn wait_maintenance(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
    op: &'static str,
) -> Result<(), Day2Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(25);
    let mut last = String::from("nothing yet");
    let mut told = false;
    loop {
        let remaining = opts.node_deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(Day2Error::Timeout {
                node: node.label(),
                what: "back in maintenance mode after the reset".into(),
                after: started.elapsed(),
                last,
            });
        }
        match probe(cluster, node, opts).await {
            Mode::Maintenance => return Ok(()),
            Mode::Ours => {
                last = "still running its config (reset in progress)".into();
                let c = cluster.mtls(node, opts.policy.once())?;
                // Follow the node until it goes away; a stage change wakes us.
                let followed = tokio::time::timeout(remaining, async {
                    match c.watch_machine_status().await {
                        Ok(s) => {
                            let mut s = Box::pin(s);
                            while let Some(Ok(st)) = s.next().await {
                                if !told {
                                    emit(
                                        opts,
                                        op,
                                        &node.hostname,
                                        "reset",
                                        EventKind::Waiting,
                                        format!(
                                            "{} to come back in maintenance ({})",
                                            node.label(),
                                            st.summary()
                                        ),
                                    );
                                    told = true;
                                }
                            }
                            true
                        }
                        Err(_) => false,
                    }
                })
                .await;
                if matches!(followed, Ok(true)) {
                    pause = Duration::from_millis(25);
                    continue;
                }
            }
            Mode::Foreign => last = "serves a certificate from another CA".into(),
            Mode::Unreachable(e) => last = format!("not answering ({e})"),
        }
        tokio::time::sleep(pause.min(remaining)).await;
        pause = (pause * 2).min(POLL_FALLBACK);
    }
}

/// Waits until the node answers at all (maintenance or configured).
pub(crate) async fn wait_reachable(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
    op: &'static str,
    step: &'static str,
) -> Result<Mode, Day2Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(25);
    let mut told = false;
    loop {
        let mode = probe(cluster, node, opts).await;
        let Mode::Unreachable(e) = &mode else {
            return Ok(mode);
        };
        if !told {
            emit(
                opts,
                op,
                &node.hostname,
                step,
                EventKind::Waiting,
                format!(
                    "for {} to answer on port 50000 (power it on / boot it into maintenance): {e}",
                    node.label()
                ),
            );
            told = true;
        }
        let remaining = opts.node_deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(Day2Error::Timeout {
                node: node.label(),
                what: "answering on port 50000".into(),
                after: started.elapsed(),
                last: e.clone(),
            });
        }
        tokio::time::sleep(pause.min(remaining)).await;
        pause = (pause * 2).min(POLL_FALLBACK);
    }
}

/// Applies the node's config over the maintenance API (no client certificate).
pub(crate) async fn apply_insecure(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
) -> Result<(), Day2Error> {
    let config = cluster.config_of(node)?;
    let c = cluster.insecure(node, opts.policy)?;
    c.apply_configuration(config, ApplyMode::Auto, false)
        .await?;
    Ok(())
}

/// Waits on the node's MachineStatus watch until it runs and is ready (for a
/// control plane that includes etcd running).
pub(crate) async fn wait_running(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
    op: &'static str,
) -> Result<(), Day2Error> {
    let c = cluster.mtls(node, opts.policy)?;
    let mut last_told = String::new();
    let what = if node.control_plane {
        "running and ready (etcd joined)"
    } else {
        "running and ready"
    };
    let r = wait_for_status(
        &c,
        what,
        opts.node_deadline,
        |s| s.stage == MachineStage::Running && s.status.ready,
        |p| {
            let line = match p {
                WaitProgress::Status(s) => s.summary(),
                WaitProgress::Away(e) => format!("the node to answer again ({})", e.likely_cause()),
            };
            if line != last_told {
                emit(
                    opts,
                    op,
                    &node.hostname,
                    "wait_join",
                    EventKind::Waiting,
                    line.clone(),
                );
                last_told = line;
            }
        },
    )
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(WaitError::Timeout { after, last, .. }) => Err(Day2Error::Timeout {
            node: node.label(),
            what: if node.control_plane {
                "running with etcd joined".into()
            } else {
                "running".into()
            },
            after,
            last,
        }),
        Err(WaitError::Fatal(e)) => Err(Day2Error::Talos(e)),
    }
}

/// What both node plans start from: the node, an unfinished journal (steps
/// already done), the other control planes and where Kubernetes calls go.
pub(crate) struct PlanBasis {
    pub node: NodeDef,
    journal: Option<super::journal::OpJournal>,
    /// The first other control plane (the one asked for member lists).
    pub other: String,
    pub cps: Vec<String>,
    kube_api: Option<String>,
}

impl PlanBasis {
    pub fn new(
        cluster: &Cluster,
        name: &str,
        opts: &Day2Options,
        op: &'static str,
    ) -> Result<PlanBasis, Day2Error> {
        let node = cluster.node(name)?.clone();
        let journal = super::journal::OpJournal::peek(&opts.state_dir, op, &node.hostname)
            .filter(|j| j.completed_ms.is_none());
        let other = other_cps(cluster, &node.hostname)
            .first()
            .map(|n| n.label())
            .unwrap_or_else(|| "(no other control plane)".into());
        let cps = cluster.def.control_planes().map(|n| n.label()).collect();
        // The Cluster loaded the state directory's kubeconfig already.
        let kube_api = (!opts.skip_kubernetes && cluster.kubeconfig.is_some())
            .then(|| format!("Kubernetes API ({})", cluster.def.endpoint));
        Ok(PlanBasis {
            node,
            journal,
            other,
            cps,
            kube_api,
        })
    }

    /// Whether an interrupted run already did `step`.
    pub fn done(&self, step: &str) -> bool {
        self.journal.as_ref().is_some_and(|j| j.done(step))
    }

    /// A Kubernetes call, or why it will be skipped.
    pub fn kube(&self, call: &str) -> String {
        match &self.kube_api {
            Some(api) => format!("{call} → {api}"),
            None => format!(
                "{call}: skipped (--skip-kubernetes, or no kubeconfig in the state directory)"
            ),
        }
    }
}

/// The control planes other than `exclude`, in definition order (the order the
/// plan names them in).
pub(crate) fn other_cps<'a>(cluster: &'a Cluster, exclude: &str) -> Vec<&'a NodeDef> {
    cluster
        .def
        .control_planes()
        .filter(|n| n.hostname != exclude)
        .collect()
}

/// The member list as another control plane reports it: `(who answered, members)`.
pub(crate) async fn members_via_other(
    cluster: &Cluster,
    exclude: &str,
    opts: &Day2Options,
) -> Result<(String, Vec<EtcdMember>), Day2Error> {
    let mut tried = Vec::new();
    let policy = opts
        .policy
        .with_budget(opts.policy.retry_budget.min(Duration::from_secs(2)));
    for n in other_cps(cluster, exclude) {
        match cluster.mtls(n, policy)?.etcd_members(false).await {
            Ok(m) => return Ok((n.hostname.clone(), m)),
            Err(e) => tried.push(format!("{}: {e}", n.label())),
        }
    }
    Err(Day2Error::NoHealthyControlPlane {
        what: "EtcdMemberList".into(),
        tried,
    })
}

/// Members of the definition node `node` (normally one; more after a botched rejoin).
pub(crate) fn members_of<'a>(
    cluster: &Cluster,
    node: &NodeDef,
    members: &'a [EtcdMember],
) -> Vec<&'a EtcdMember> {
    members
        .iter()
        .filter(|m| owner(cluster, m).is_some_and(|n| n.hostname == node.hostname))
        .collect()
}

/// Waits until `cond(members)` holds, reading the list through another control
/// plane; `what` names the wait in progress and timeout messages.
pub(crate) async fn wait_members(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
    op: &'static str,
    step: &'static str,
    what: &str,
    mut cond: impl FnMut(&[EtcdMember]) -> bool,
) -> Result<String, Day2Error> {
    let started = Instant::now();
    let mut last: String;
    let mut told = false;
    loop {
        match members_via_other(cluster, &node.hostname, opts).await {
            Ok((from, m)) => {
                if cond(&m) {
                    return Ok(from);
                }
                last = format!(
                    "{} member(s) via {from}: {}",
                    m.len(),
                    m.iter()
                        .map(|x| format!(
                            "{}{}",
                            x.hostname,
                            if x.is_learner { " (learner)" } else { "" }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Err(e) => last = e.to_string(),
        }
        if !told {
            emit(
                opts,
                op,
                &node.hostname,
                step,
                EventKind::Waiting,
                format!("{what}: {last}"),
            );
            told = true;
        }
        if started.elapsed() >= opts.etcd_deadline {
            return Err(Day2Error::Timeout {
                node: node.label(),
                what: format!("{what} (etcd)"),
                after: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(MEMBER_POLL).await;
    }
}

/// After a join: the node's member present and promoted, and as many members as
/// control planes in the definition.
pub(crate) async fn wait_member_back(
    cluster: &Cluster,
    node: &NodeDef,
    opts: &Day2Options,
    op: &'static str,
) -> Result<String, Day2Error> {
    let want = cluster.def.control_planes().count();
    wait_members(
        cluster,
        node,
        opts,
        op,
        "wait_join",
        &format!("{} etcd member(s) with {} promoted", want, node.hostname),
        |m| {
            let mine = members_of(cluster, node, m);
            m.len() == want && mine.len() == 1 && mine.iter().all(|x| !x.is_learner)
        },
    )
    .await
}

/// A Kubernetes failure on `node`.
pub(crate) fn kube_err(node: &NodeDef, error: crate::kube::KubeError) -> Day2Error {
    Day2Error::Kube {
        node: node.label(),
        error,
    }
}
