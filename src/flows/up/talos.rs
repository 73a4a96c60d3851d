//! The Talos steps of layer 1 around etcd: `apply` (insecure to maintenance
//! nodes; to configured ones a dry run, then NO_REBOOT in parallel when the
//! change applies live, else `apply`'s rollout one node at a time), `wait_configured` (every node running its config, followed on its
//! MachineStatus watch), `kubeconfig` (fetched once, 0600) and `apiserver`
//! (kube-apiserver serving TLS with the cluster CA).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::engine::cluster::wait_machine;
use crate::engine::{
    aggregate, classify, kubeconfig, per_node, Backoff, Doctor, FlowError, NodeDef, NodeProbe,
    Outcome, PlanItem, StepId, Wait,
};
use crate::talos::resources::MachineStage;
use crate::talos::wait::WaitProgress;
use crate::talos::{ApplyMode, Dial, TalosError};

use super::state::{Up, POLL};

/// Real Talos puts a config diff into the dry-run details; the lab says "No changes".
pub fn dry_run_unchanged(details: &str) -> bool {
    let lower = details.to_ascii_lowercase();
    if lower.contains("no changes") {
        return true;
    }
    match lower.split_once("config diff:") {
        Some((_, diff)) => diff.trim().is_empty(),
        None => false,
    }
}

// ---- apply -------------------------------------------------------------------------

/// Why a configured node is left to the rollout.
const ROLLED: &str = "needs a reboot: rolled one node at a time after the other applies";

async fn apply_node(
    cx: &Up<'_>,
    n: &NodeDef,
    to_roll: &std::sync::Mutex<Vec<String>>,
) -> Result<Outcome, FlowError> {
    let roll = || {
        to_roll
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(n.hostname.clone());
        Ok(Outcome::Skipped {
            reason: ROLLED.into(),
        })
    };
    match cx.class(n) {
        NodeProbe::Maintenance => apply_in_maintenance(cx, n).await,
        NodeProbe::Ours => {
            let config = cx.cluster.config_of(n)?;
            let c = cx.mtls(n)?;
            // The node may be between install and reboot: wait that out.
            let mut w = Wait::new(
                n.label(),
                "answering to a dry-run apply",
                cx.opts.reach_deadline.min(cx.opts.node_deadline),
            )
            .backoff(Backoff::every(POLL));
            // A dry run first; a real apply whose connection dropped goes back
            // to it (the dry run then says whether the config landed).
            let mut retried = false;
            loop {
                let dry = loop {
                    match c.apply_configuration(config, ApplyMode::Auto, true).await {
                        Ok(d) => break d,
                        Err(e)
                            if e.code() == Some(Code::FailedPrecondition)
                                && e.to_string().contains("already applied") =>
                        {
                            return Ok(if retried {
                                Outcome::Done {
                                detail: "applied over mTLS; the reply was lost, and the node is rebooting into it".into(),
                            }
                            } else {
                                Outcome::Skipped {
                                    reason: "config already applied; the node is rebooting into it"
                                        .into(),
                                }
                            })
                        }
                        Err(e) if e.is_transient() && !w.expired() => {
                            cx.em.waiting(
                                StepId::Apply,
                                Some(&n.hostname),
                                format!("{} to answer ({})", n.label(), e.likely_cause()),
                            );
                            w.seen(e.to_string());
                            w.pause().await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                if dry_run_unchanged(&dry.mode_details) {
                    return Ok(if retried {
                        Outcome::Done {
                        detail: "applied over mTLS; the reply was lost, and the node runs the config".into(),
                    }
                    } else {
                        Outcome::Skipped {
                            reason: "config unchanged".into(),
                        }
                    });
                }
                // A change that needs a reboot never goes out with AUTO to
                // every node at once: the rollout takes it, one at a time.
                if dry.mode.as_deref() == Some("REBOOT") {
                    return roll();
                }
                match c
                    .apply_configuration(config, ApplyMode::NoReboot, false)
                    .await
                {
                    Ok(_) => {
                        return Ok(Outcome::Done {
                            detail: "applied over mTLS (no reboot needed)".into(),
                        })
                    }
                    Err(e)
                        if e.code() == Some(Code::InvalidArgument)
                            && e.to_string().contains("immediate mode") =>
                    {
                        return roll()
                    }
                    Err(e) if e.is_transient() && !w.expired() => {
                        retried = true;
                        retrying_apply(cx, n, &mut w, &e);
                        w.pause().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        other => Err(FlowError::Source(format!(
            "{} cannot be configured: {}",
            n.label(),
            other.describe()
        ))),
    }
}

/// The insecure apply to a node in maintenance. A connection dropped under it
/// is retried (the apply is idempotent while the node waits for a config),
/// after asking the node whether the config landed and only the reply was lost.
async fn apply_in_maintenance(cx: &Up<'_>, n: &NodeDef) -> Result<Outcome, FlowError> {
    let c = cx.insecure(n)?;
    // Per node by its running Talos: a node older than the contract gets the same
    // definition under its own contract (it cannot decode the newer documents).
    // Asked only when there is a choice (an older contract rendered).
    let choice = cx
        .cluster
        .rendered()
        .map(|r| !r.older.is_empty())
        .unwrap_or(false);
    let running = if choice {
        running_minor(&c).await
    } else {
        None
    };
    let (config, older) = match running {
        Some(m) => cx.cluster.config_for(n, m)?,
        None => (cx.cluster.config_of(n)?, None),
    };
    let how = match older {
        Some(m) => format!(" under contract 1.{m}, the one its running Talos reads"),
        None => String::new(),
    };
    let deadline = cx.opts.reach_deadline.min(cx.opts.node_deadline);
    let mut w =
        Wait::new(n.label(), "accepting its config", deadline).backoff(Backoff::every(POLL));
    loop {
        let e = match c.apply_configuration(config, ApplyMode::Auto, false).await {
            Ok(_) => {
                return Ok(Outcome::Done {
                    detail: format!(
                        "applied in maintenance mode (insecure){how}; the node installs and reboots"
                    ),
                })
            }
            Err(e) if e.is_transient() && !w.expired() => e,
            Err(e) => return Err(e.into()),
        };
        retrying_apply(cx, n, &mut w, &e);
        let creds = cx.cluster.creds().ok().cloned();
        let remaining = deadline.saturating_sub(w.elapsed());
        match classify(
            cx.em,
            StepId::Apply,
            n,
            creds.as_ref(),
            cx.opts.probe_timeout,
            remaining,
        )
        .await
        {
            NodeProbe::Maintenance => w.pause().await?,
            NodeProbe::Ours => {
                return Ok(Outcome::Done {
                    detail: "applied in maintenance mode (insecure); the reply was lost, and the node now serves our CA".into(),
                })
            }
            _ => return Err(e.into()),
        }
    }
}

/// The Talos minor a maintenance node runs: its Version reply (1.13+); 1.12's
/// maintenance API has no Version (Unimplemented). None when the node does not say.
async fn running_minor(c: &crate::talos::TalosClient) -> Option<u32> {
    match c.version().await {
        Ok(v) => crate::machineconfig::checks::release_version(&v.tag).map(|(_, m, _)| m),
        Err(e) if e.code() == Some(Code::Unimplemented) => Some(12),
        Err(_) => None,
    }
}

/// Says an apply whose connection dropped is about to be sent again.
fn retrying_apply(cx: &Up<'_>, n: &NodeDef, w: &mut Wait, e: &TalosError) {
    cx.em.waiting(
        StepId::Apply,
        Some(&n.hostname),
        format!(
            "{} to take its config again ({})",
            n.label(),
            e.likely_cause()
        ),
    );
    w.seen(e.to_string());
}

pub async fn apply(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let cx = &*cx;
    let to_roll = std::sync::Mutex::new(Vec::new());
    let results = per_node(cx.em, StepId::Apply, cx.nodes(), |n| {
        apply_node(cx, n, &to_roll)
    })
    .await?;
    let to_roll = to_roll.into_inner().unwrap_or_else(|p| p.into_inner());
    if to_roll.is_empty() {
        return Ok(aggregate(&results));
    }
    let report = roll_configured(cx, to_roll).await?;
    let changed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Done { .. }))
        .count();
    Ok(Outcome::Done {
        detail: format!(
            "{changed} node(s) applied in parallel, {} rolled one at a time behind the quorum, drain and back gates",
            report.nodes.len()
        ),
    })
}

/// Configured nodes whose change needs a reboot: `apply`'s rollout (control
/// planes one at a time, then workers), so a re-run of `up` never reboots two
/// control planes together. Before etcd is bootstrapped there is no quorum to
/// keep, and the guard would only refuse.
async fn roll_configured(
    cx: &Up<'_>,
    nodes: Vec<String>,
) -> Result<crate::flows::apply::ApplyReport, FlowError> {
    use crate::flows::apply::{apply, ApplyOptions};
    let mut o = ApplyOptions::new(cx.opts.state_dir.clone());
    o.nodes = nodes;
    o.policy = cx.opts.policy;
    o.node_deadline = cx.opts.node_deadline;
    o.etcd_deadline = cx.opts.etcd_deadline;
    o.kube_deadline = cx.opts.node_deadline;
    let view = crate::flows::gates::quorum::survey(&cx.cluster, cx.opts.policy).await;
    if view.members.is_empty() {
        o.force = true;
        o.no_snapshot = true;
    }
    apply(&cx.cluster, &o, cx.em).await
}

/// Per node: insecure in maintenance, a dry run over mTLS when configured.
pub async fn plan_apply(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let mut items = Vec::new();
    for n in cx.nodes() {
        let (acts, action) = match cx.class(n) {
            NodeProbe::Maintenance => (
                true,
                format!(
                    "apply config insecurely (maintenance), install and reboot{}",
                    cx.hardware.get(&n.hostname).cloned().unwrap_or_default()
                ),
            ),
            NodeProbe::Ours if cx.cluster.rendered.is_some() => {
                match (cx.mtls(n), cx.cluster.config_of(n)) {
                    (Ok(c), Ok(cfg)) => {
                        match c.apply_configuration(cfg, ApplyMode::Auto, true).await {
                            Ok(d) if dry_run_unchanged(&d.mode_details) => {
                                (false, "config unchanged: skip".to_string())
                            }
                            Ok(d) if d.mode.as_deref() == Some("REBOOT") => (
                                true,
                                "needs a reboot: rolled one node at a time (see `plan apply` for the gates)".to_string(),
                            ),
                            Ok(_) => (true, "apply over mTLS, NO_REBOOT (applies live)".to_string()),
                            Err(e) => (true, format!("dry run failed: {e}")),
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => (true, e.to_string()),
                }
            }
            NodeProbe::Foreign | NodeProbe::ConfiguredUnknown => {
                (false, "REFUSE: configured by another cluster".to_string())
            }
            NodeProbe::Unreachable(why) => (false, format!("REFUSE: unreachable ({why})")),
            NodeProbe::Ours => (false, "no credentials".to_string()),
        };
        items.push(PlanItem::on(StepId::Apply, n, acts, action));
    }
    items
}

// ---- wait for configured + running -------------------------------------------------

/// The doctor's cause, or the error itself when the doctor has nothing specific.
fn short_cause(e: &TalosError) -> String {
    let cause = e.likely_cause();
    if cause == "the node returned an error" {
        e.root().to_string()
    } else {
        cause
    }
}

/// What a worker waits for: Talos starts its apid only once trustd on a
/// control plane signed its certificate (the timeout's doctor says so).
pub const WORKER_RUNNING: &str =
    "running (a worker serves its API once trustd signed its certificate)";

/// Workers that cannot run before etcd is bootstrapped: when the cluster
/// endpoint is no control plane's own address (a Layer-2 VIP, which Talos
/// brings up only once etcd elects its holder, or a load balancer), a worker
/// reaches trustd only through it or through the API server's endpoints, both
/// after bootstrap. `wait_configured` leaves them to `etcd_quorum`.
pub fn workers_after_bootstrap<'a>(cx: &'a Up<'_>) -> Vec<&'a NodeDef> {
    let host = crate::engine::source::url_host(&cx.cluster.def.endpoint);
    if cx.control_planes().iter().any(|n| n.host() == host) {
        return Vec::new();
    }
    cx.nodes()
        .into_iter()
        .filter(|n| !n.control_plane)
        .collect()
}

/// How long a node may keep answering in maintenance mode (MachineStatus stage
/// `maintenance`) during the wait before it counts as back in maintenance when
/// it was never seen configured: leaving maintenance after an apply takes Talos
/// a moment, never this long.
const MAINTENANCE_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn wait_node_running(
    cx: &Up<'_>,
    n: &NodeDef,
    step: StepId,
) -> Result<Outcome, FlowError> {
    let em = cx.em;
    let c = cx.mtls(n)?;
    let t0 = Instant::now();
    let mut last = String::new();
    let mut first_seen: Option<String> = None;
    // Seen configured (a MachineStatus over mTLS) during this wait; each TLS
    // refusal of our CA wakes the maintenance check.
    let configured_seen = std::sync::atomic::AtomicBool::new(false);
    let (tls_refused, refusals) = tokio::sync::watch::channel(0u64);
    em.waiting(
        step,
        Some(&n.hostname),
        format!("{} to run its config", n.label()),
    );
    let wait = wait_machine(
        &c,
        n,
        if n.control_plane {
            "running"
        } else {
            WORKER_RUNNING
        },
        cx.opts.node_deadline,
        |s| s.stage == MachineStage::Running,
        |p| {
            let now = match &p {
                WaitProgress::Status(s) => {
                    configured_seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    s.summary()
                }
                WaitProgress::Away(e) => {
                    if matches!(e.root(), TalosError::Tls { .. }) {
                        tls_refused.send_modify(|v| *v += 1);
                    }
                    format!("away: {}", short_cause(e))
                }
            };
            if first_seen.is_none() {
                first_seen = Some(now.clone());
            }
            if now != last {
                match &p {
                    WaitProgress::Status(_) => em.node_state(step, &n.hostname, now.clone()),
                    WaitProgress::Away(_) => em.waiting(
                        step,
                        Some(&n.hostname),
                        format!("{} to come back ({now})", n.label()),
                    ),
                }
                last = now;
            }
        },
    );
    let status = tokio::select! {
        r = wait => r?,
        e = back_in_maintenance(cx, n, refusals, &configured_seen) => return Err(e),
    };
    em.timing(step, Some(&n.hostname), "node_running", t0.elapsed());
    if first_seen.as_deref() == Some("running") {
        Ok(Outcome::Skipped {
            reason: "already running".into(),
        })
    } else {
        Ok(Outcome::Done {
            detail: status.summary(),
        })
    }
}

/// Resolves once `n` is seen waiting in maintenance mode for a config (its
/// MachineStatus read without credentials says stage `maintenance`) after it
/// was seen configured, or for longer than [`MAINTENANCE_GRACE`]: wiped,
/// reset, or a reinstalled machine will not run the config it was given.
/// Checked each time the node refuses our CA, never otherwise.
async fn back_in_maintenance(
    cx: &Up<'_>,
    n: &NodeDef,
    mut refusals: tokio::sync::watch::Receiver<u64>,
    configured_seen: &std::sync::atomic::AtomicBool,
) -> FlowError {
    let mut since: Option<Instant> = None;
    loop {
        if refusals.changed().await.is_err() {
            return std::future::pending().await;
        }
        let stage = match cx.insecure(n) {
            Ok(c) => c
                .with_policy(cx.opts.policy.once())
                .machine_status()
                .await
                .ok()
                .map(|s| s.stage),
            Err(_) => None,
        };
        if stage != Some(MachineStage::Maintenance) {
            since = None;
            continue;
        }
        let since = *since.get_or_insert_with(Instant::now);
        let seen = configured_seen.load(std::sync::atomic::Ordering::SeqCst);
        if seen || since.elapsed() >= MAINTENANCE_GRACE {
            return FlowError::BackInMaintenance {
                node: n.label(),
                detail: if seen {
                    "it ran with our CA earlier in this wait".into()
                } else {
                    format!(
                        "waiting for a config for {:?} after its apply",
                        since.elapsed()
                    )
                },
            };
        }
    }
}

pub async fn wait_configured(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let cx = &*cx;
    let later = workers_after_bootstrap(cx);
    let endpoint = crate::engine::source::url_host(&cx.cluster.def.endpoint).to_string();
    let results = per_node(cx.em, StepId::WaitConfigured, cx.nodes(), |n| {
        let deferred = later.iter().any(|w| w.hostname == n.hostname);
        let endpoint = endpoint.clone();
        async move {
            if deferred {
                return Ok(Outcome::Skipped {
                    reason: format!(
                        "a worker gets its apid certificate from trustd through {endpoint}, which answers once etcd is bootstrapped: waited for in etcd_quorum"
                    ),
                });
            }
            wait_node_running(cx, n, StepId::WaitConfigured).await
        }
    })
    .await?;
    Ok(aggregate(&results))
}

// ---- kubeconfig ----------------------------------------------------------------------

pub async fn kubeconfig(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let path = cx.opts.state_dir.join("kubeconfig");
    cx.kubeconfig_path = Some(path.clone());
    if let Ok(text) = std::fs::read_to_string(&path) {
        if kubeconfig::server_and_ca(&text, &path).is_ok() {
            cx.cluster.kubeconfig = Some(text.into_bytes());
            return Ok(Outcome::Skipped {
                reason: format!("present at {}", path.display()),
            });
        }
    }
    let node = cx.bootstrap_node();
    let c = cx.mtls(node)?;
    let bytes = c.kubeconfig().await?;
    crate::talos::talosconfig::write_private(&path, &bytes)
        .map_err(|e| FlowError::local(&path, format!("cannot write: {e}")))?;
    cx.cluster.kubeconfig = Some(bytes);
    Ok(Outcome::Done {
        detail: format!("written to {} (0600)", path.display()),
    })
}

pub async fn plan_kubeconfig(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let kc = cx.opts.state_dir.join("kubeconfig");
    let present = kc.exists();
    vec![PlanItem::new(
        StepId::Kubeconfig,
        !present,
        if present {
            format!("present at {}", kc.display())
        } else {
            format!("fetch to {}", kc.display())
        },
    )]
}

// ---- kube-apiserver serving ----------------------------------------------------------

/// One TCP + TLS handshake with `server` (https://host:port), verified against `ca_pem`.
pub async fn probe_apiserver(server: &str, ca_pem: &[u8], timeout: Duration) -> Result<(), String> {
    let rest = server.trim_start_matches("https://").trim_end_matches('/');
    let dial = Dial::parse(rest).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::pki::certs_from_pem(ca_pem, "kubeconfig CA").map_err(|e| e.to_string())? {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("kubeconfig CA: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(dial.server_name.clone())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(dial.addr))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", dial.addr))?
        .map_err(|e| format!("{}: {e}", dial.addr))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(())
}

pub async fn apiserver(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Apiserver;
    let path = cx.opts.state_dir.join("kubeconfig");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| FlowError::local(&path, format!("cannot read: {e}")))?;
    let (server, ca) = kubeconfig::server_and_ca(&text, &path)?;
    let mut w = Wait::new(
        server.clone(),
        "kube-apiserver serving",
        cx.opts.apiserver_deadline,
    )
    .backoff(Backoff::every(Duration::from_secs(1)));
    loop {
        match probe_apiserver(&server, &ca, cx.opts.probe_timeout).await {
            Ok(()) => {
                return Ok(Outcome::Done {
                    detail: format!("{server} serves TLS with the cluster CA"),
                })
            }
            Err(e) => {
                let msg = format!("kube-apiserver at {server} ({e})");
                w.seen(e);
                w.check()?;
                if w.news(&msg) {
                    cx.em.waiting(step, None, msg);
                }
                w.pause().await?;
            }
        }
    }
}

pub async fn plan_apiserver(cx: &mut Up<'_>) -> Vec<PlanItem> {
    vec![PlanItem::new(
        StepId::Apiserver,
        false,
        if cx.opts.until < StepId::Apiserver {
            cx.until_note()
        } else {
            "wait for kube-apiserver to serve TLS with the cluster CA".into()
        },
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_details_are_read() {
        assert!(dry_run_unchanged("Dry run summary:\nNo changes."));
        assert!(dry_run_unchanged(
            "Dry run summary:\nApplied configuration without a reboot\n\nConfig diff:\n\n"
        ));
        assert!(!dry_run_unchanged(
            "Dry run summary:\nConfig diff:\n- a\n+ b"
        ));
    }
}
