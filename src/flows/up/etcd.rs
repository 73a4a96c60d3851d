//! etcd, exactly once: `bootstrap` reads etcd on every control plane first and
//! calls Bootstrap (or, recovering, EtcdRecover + Bootstrap{recover_etcd}) on
//! one node only, recording the choice before the call; `AlreadyExists` counts
//! only once the node's membership is verified over mTLS with our CA.
//! `etcd_quorum` follows each control plane's etcd service until it runs
//! healthy and every control plane is a member.

use futures::future::join_all;
use futures::StreamExt;
use serde::Deserialize;
use tonic::Code;

use crate::engine::{
    per_node, Backoff, Doctor, FlowError, NodeDef, NodeProbe, Outcome, PlanItem, StepId, Wait,
};
use crate::talos::{TalosClient, TalosError};

use super::state::{Up, POLL, RECOVER_PENDING};

/// etcd as one control plane reports it.
#[derive(Debug, Clone)]
pub struct EtcdView {
    pub member: Option<u64>,
    /// ServiceList state (`Preparing`, `Running`, ...), None if the service is absent.
    pub service: Option<String>,
    pub last_event: String,
}

pub async fn etcd_view(c: &TalosClient) -> Result<EtcdView, TalosError> {
    let member = c.etcd_local_member().await?;
    let services = c.service_list().await?;
    let etcd = services.iter().find(|s| s.id == "etcd");
    Ok(EtcdView {
        member,
        service: etcd.map(|s| s.state.clone()),
        last_event: etcd.map(|s| s.last_event.clone()).unwrap_or_default(),
    })
}

async fn read_etcd_everywhere<'r>(
    cx: &'r Up<'_>,
) -> Result<Vec<(&'r NodeDef, EtcdView)>, FlowError> {
    let views = join_all(cx.control_planes().into_iter().map(|n| async move {
        let c = cx.mtls(n)?;
        let v = etcd_view(&c).await?;
        Ok::<_, FlowError>((n, v))
    }))
    .await;
    views.into_iter().collect()
}

// ---- bootstrap -------------------------------------------------------------------------

pub async fn bootstrap(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let cx = &*cx;
    let step = StepId::Bootstrap;
    let em = cx.em;
    // 1. Read etcd on every control plane; wait until each waits to join or has joined.
    let mut w = Wait::new(
        "the control planes",
        "etcd waiting to be bootstrapped",
        cx.opts.etcd_deadline,
    )
    .backoff(Backoff::every(POLL));
    loop {
        let views = read_etcd_everywhere(cx).await?;
        for (n, v) in &views {
            em.node_state(
                step,
                &n.hostname,
                format!(
                    "etcd {}{}",
                    v.service.as_deref().unwrap_or("absent"),
                    v.member
                        .map(|m| format!(", member {m:016x}"))
                        .unwrap_or_default()
                ),
            );
        }
        if let Some((n, v)) = views.iter().find(|(_, v)| v.member.is_some()) {
            return Ok(Outcome::Skipped {
                reason: format!(
                    "etcd already bootstrapped: {} is member {:016x}",
                    n.label(),
                    v.member.unwrap_or_default()
                ),
            });
        }
        let failed: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.service.as_deref() == Some("Failed"))
            .map(|(n, v)| format!("{}: {}", n.label(), v.last_event))
            .collect();
        if !failed.is_empty() {
            return Err(FlowError::BootstrapRefused {
                node: failed.join("; "),
                detail: "etcd failed on a control plane that has no member".into(),
            });
        }
        let not_ready: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.service.as_deref() != Some("Preparing"))
            .map(|(n, v)| {
                format!(
                    "{} ({})",
                    n.hostname,
                    v.service.as_deref().unwrap_or("no etcd service yet")
                )
            })
            .collect();
        let started = views.iter().any(|(_, v)| {
            matches!(
                v.service.as_deref(),
                Some("Starting" | "Running" | "Finished")
            )
        });
        if started {
            // A Bootstrap was accepted moments ago (the member appears shortly).
            return Ok(Outcome::Skipped {
                reason: "etcd is already starting after an earlier Bootstrap".into(),
            });
        }
        if not_ready.is_empty() {
            break;
        }
        if w.expired() {
            return Err(FlowError::Timeout {
                node: not_ready.join(", "),
                what: w.what().to_string(),
                after: w.elapsed(),
                last: "see `talos services`".into(),
            });
        }
        em.waiting(
            step,
            None,
            format!("etcd to wait for bootstrap on {}", not_ready.join(", ")),
        );
        w.pause().await?;
    }
    // 2. Choose one node, record the choice, then call Bootstrap on it only.
    let target = cx.bootstrap_node().clone();
    em.decision(
        step,
        Some(&target.hostname),
        "bootstrap_node",
        &target.hostname,
    );
    let recover = cx.opts.recover_from.as_deref();
    if recover.is_none() && !cx.opts.new_cluster {
        // Every control plane has an empty etcd, yet this cluster ran etcd
        // before: its data is gone (nodes wiped, a new lab or machines). A
        // Bootstrap now would quietly start a new, empty cluster.
        if let Some(when) = cx.journal.get(bootstrapped_before) {
            return Err(FlowError::BootstrapRefused {
                node: target.label(),
                detail: format!(
                    "the journal {} says etcd was bootstrapped {when}, but every control plane now has an empty etcd: the cluster's data is gone (wiped nodes or new machines). Restore it with `recover --snapshot`, or pass --new-cluster to start an empty cluster",
                    cx.journal.path().display()
                ),
            });
        }
    }
    if recover.is_none() {
        // An empty etcd now would bury the snapshot a recovery is restoring.
        let marker = cx.opts.state_dir.join(RECOVER_PENDING);
        if let Ok(what) = std::fs::read_to_string(&marker) {
            return Err(FlowError::BootstrapRefused {
                node: target.label(),
                detail: format!(
                    "a disaster recovery is in progress ({}: {}); run `recover --snapshot` with that file to finish it",
                    marker.display(),
                    what.trim()
                ),
            });
        }
    }
    let c = cx.mtls(&target)?.with_policy(cx.opts.policy.once());
    let mut w = Wait::new(target.label(), "accepting Bootstrap", cx.opts.etcd_deadline).backoff(
        Backoff::new(
            std::time::Duration::from_millis(200),
            crate::engine::wait::POLL_MAX,
        ),
    );
    loop {
        let attempt = match recover {
            None => {
                em.progress(step, Some(&target.hostname), "calling Bootstrap");
                c.bootstrap(false, false).await
            }
            Some(path) => {
                // Uploaded again on every attempt: the node truncates the file.
                em.progress(
                    step,
                    Some(&target.hostname),
                    format!("uploading snapshot {} (EtcdRecover)", path.display()),
                );
                match c.etcd_recover(path, false).await {
                    Ok(()) => {
                        em.progress(
                            step,
                            Some(&target.hostname),
                            "calling Bootstrap (recover_etcd)",
                        );
                        c.bootstrap(true, false).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match attempt {
            Ok(()) => {
                if let Some(path) = recover {
                    // The restore runs when etcd starts, after the reply.
                    wait_restored(cx, &c, &target).await?;
                    return Ok(Outcome::Done {
                        detail: format!(
                            "etcd restored from {} on {}",
                            path.display(),
                            target.label()
                        ),
                    });
                }
                return Ok(Outcome::Done {
                    detail: format!("etcd bootstrapped on {}", target.label()),
                });
            }
            Err(e) if e.is_already_bootstrapped() => return verify_already(&c, &target).await,
            Err(e)
                if (e.code() == Some(Code::FailedPrecondition) || e.is_transient())
                    && !w.expired() =>
            {
                em.waiting(
                    step,
                    Some(&target.hostname),
                    format!(
                        "{} to accept Bootstrap ({})",
                        target.label(),
                        e.likely_cause()
                    ),
                );
                w.seen(e.to_string());
                w.pause().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// When the journal shows etcd running before (bootstrap or quorum done in
/// an earlier run), described for the refusal.
fn bootstrapped_before(j: &crate::engine::Journal<crate::engine::UpFacts>) -> Option<String> {
    [StepId::Bootstrap, StepId::EtcdQuorum]
        .into_iter()
        .filter_map(|s| j.steps.get(s.name()).map(|r| (s, r)))
        .find(|(_, r)| r.outcome == "done")
        .map(|(s, r)| {
            let ago = endsys_core::clock::now_ms().saturating_sub(r.finished_ms) / 1000;
            format!("({} done {ago} s ago)", s.name())
        })
}

/// `AlreadyExists` is success only if the node is now a member of a cluster
/// that includes it, reached over mTLS with our CA.
async fn verify_already(c: &TalosClient, target: &NodeDef) -> Result<Outcome, FlowError> {
    let members =
        c.etcd_members(true)
            .await
            .map_err(|err| FlowError::AlreadyBootstrappedUnverified {
                node: target.label(),
                detail: err.to_string(),
            })?;
    let local = c.etcd_local_member().await?;
    match local {
        Some(id) if members.iter().any(|m| m.id == id) => Ok(Outcome::Skipped {
            reason: format!(
                "AlreadyExists verified: {} is member {id:016x} of a {}-member cluster, served with our CA",
                target.label(),
                members.len()
            ),
        }),
        _ => Err(FlowError::AlreadyBootstrappedUnverified {
            node: target.label(),
            detail: format!(
                "local member {:?} not among {} member(s)",
                local,
                members.len()
            ),
        }),
    }
}

/// After Bootstrap{recover_etcd}: etcd restores the snapshot as it starts
/// (`etcdutl` snapshot status + restore into `/var/lib/etcd`), so a failed
/// restore shows only as a failed etcd service, never as a Bootstrap error
/// (siderolabs/talos v1.13.9 `internal/app/machined/pkg/system/services/etcd.go`).
async fn wait_restored(cx: &Up<'_>, c: &TalosClient, target: &NodeDef) -> Result<(), FlowError> {
    let mut w = Wait::new(
        target.label(),
        "etcd running on the restored snapshot",
        cx.opts.etcd_deadline,
    )
    .backoff(Backoff::every(POLL));
    loop {
        match etcd_view(c).await {
            Ok(v) if v.member.is_some() && v.service.as_deref() == Some("Running") => return Ok(()),
            Ok(v) if v.service.as_deref() == Some("Failed") => {
                return Err(FlowError::RestoreFailed {
                    node: target.label(),
                    detail: v.last_event,
                })
            }
            Ok(v) => w.seen(format!("etcd {}", v.service.as_deref().unwrap_or("absent"))),
            Err(e) if e.is_transient() => w.seen(e.to_string()),
            Err(e) => return Err(e.into()),
        }
        w.check()?;
        cx.em.waiting(
            StepId::Bootstrap,
            Some(&target.hostname),
            format!(
                "etcd on {} to restore the snapshot and start",
                target.label()
            ),
        );
        w.pause().await?;
    }
}

pub async fn plan_bootstrap(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Bootstrap;
    let all_ours = cx.nodes().iter().all(|n| cx.class(n) == NodeProbe::Ours);
    let target = cx.bootstrap_node().hostname.clone();
    let item = if all_ours {
        match read_etcd_everywhere(cx).await {
            Ok(views) => match views.iter().find(|(_, v)| v.member.is_some()) {
                Some((n, _)) => PlanItem::new(
                    step,
                    false,
                    format!(
                        "etcd already bootstrapped ({} is a member): no Bootstrap call",
                        n.hostname
                    ),
                ),
                None => PlanItem::new(step, true, format!("call Bootstrap once on {target}")),
            },
            Err(e) => PlanItem::new(
                step,
                true,
                format!("etcd state unreadable now ({e}); decide after the nodes run"),
            ),
        }
    } else {
        PlanItem::new(step, true, format!("after the nodes run: read etcd on every control plane, call Bootstrap once on {target} if none has members"))
    };
    vec![item]
}

// ---- etcd quorum -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ServiceSpec {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    healthy: bool,
}

/// Follows the node's etcd service resource (COSI Watch, reconnecting at most a
/// second apart) until it runs healthy.
async fn wait_etcd_healthy(cx: &Up<'_>, n: &NodeDef) -> Result<(), FlowError> {
    let step = StepId::EtcdQuorum;
    let c = cx.mtls(n)?;
    let (ns, ty) = crate::talos::resources::types::SERVICES;
    let mut w = Wait::new(
        n.label(),
        "etcd member running and healthy",
        cx.opts.etcd_deadline,
    );
    let mut last = String::from("nothing yet");
    loop {
        w.check()?;
        let attempt = w
            .bounded(async {
                let stream = c.watch(ns, ty, Some("etcd")).await?;
                let mut stream = Box::pin(stream);
                while let Some(ev) = stream.next().await {
                    let ev = ev?;
                    if let Some(r) = ev.resource {
                        if let Ok(spec) = r.spec::<ServiceSpec>() {
                            let now = format!(
                                "etcd {}",
                                match (spec.running, spec.healthy) {
                                    (true, true) => "running, healthy",
                                    (true, false) => "running, not healthy yet",
                                    _ => "not running",
                                }
                            );
                            if now != last {
                                cx.em.node_state(step, &n.hostname, now.clone());
                                last = now;
                            }
                            if spec.running && spec.healthy {
                                return Ok::<bool, TalosError>(true);
                            }
                        }
                    }
                }
                Ok(false)
            })
            .await;
        w.seen(last.clone());
        match attempt {
            Some(Ok(true)) => return Ok(()),
            Some(Ok(false)) | None => {}
            Some(Err(e)) if e.is_transient() || e.code() == Some(Code::NotFound) => {
                last = e.to_string();
                w.seen(last.clone());
            }
            Some(Err(e)) => return Err(e.into()),
        }
        w.pause().await?;
    }
}

pub async fn etcd_quorum(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let cx = &*cx;
    let step = StepId::EtcdQuorum;
    let t0 = std::time::Instant::now();
    let mut w =
        Wait::new("", "an etcd member", cx.opts.etcd_deadline).backoff(Backoff::every(POLL));
    let cps = cx.control_planes();
    let already = read_etcd_everywhere(cx)
        .await
        .map(|v| {
            v.iter()
                .all(|(_, v)| v.member.is_some() && v.service.as_deref() == Some("Running"))
        })
        .unwrap_or(false);
    cx.em.waiting(
        step,
        None,
        format!("etcd running on {} control plane(s)", cps.len()),
    );
    per_node(cx.em, step, cps.clone(), |n| async move {
        wait_etcd_healthy(cx, n).await?;
        Ok(Outcome::Done {
            detail: "etcd running, healthy".into(),
        })
    })
    .await?;
    // Every control plane must be in the member list, as every member sees it.
    let anchor = cx.bootstrap_node();
    let c = cx.mtls(anchor)?;
    loop {
        let members = c.etcd_members(false).await?;
        let missing: Vec<String> = cps
            .iter()
            .filter(|n| {
                let host = n.host();
                !members.iter().any(|m| {
                    m.hostname == n.hostname
                        || m.peer_urls
                            .iter()
                            .any(|u| u.contains(&format!("//{host}:")))
                })
            })
            .map(|n| n.label())
            .collect();
        if missing.is_empty() {
            // Workers behind a VIP could not get their certificate before now.
            let workers = super::talos::workers_after_bootstrap(cx);
            if !workers.is_empty() {
                per_node(cx.em, step, workers, |n| {
                    super::talos::wait_node_running(cx, n, step)
                })
                .await?;
            }
            cx.em.timing(step, None, "etcd_quorum", t0.elapsed());
            let detail = format!("{} member(s): every control plane joined", members.len());
            return Ok(if already {
                Outcome::Skipped { reason: detail }
            } else {
                Outcome::Done { detail }
            });
        }
        if w.expired() {
            return Err(FlowError::Timeout {
                node: missing.join(", "),
                what: w.what().to_string(),
                after: w.elapsed(),
                last: format!("{} member(s) listed", members.len()),
            });
        }
        cx.em.waiting(
            step,
            None,
            format!("etcd membership of {}", missing.join(", ")),
        );
        w.seen(format!("{} member(s) listed", members.len()));
        w.pause().await?;
    }
}

pub async fn plan_quorum(cx: &mut Up<'_>) -> Vec<PlanItem> {
    vec![PlanItem::new(
        StepId::EtcdQuorum,
        false,
        format!("wait for {} etcd member(s)", cx.control_planes().len()),
    )]
}
