//! The Kubernetes half of layer 1, before and after the charts: `kube_api`
//! (connect with the fetched kubeconfig), `nodes_registered`, `namespaces`
//! (one per folder under kubernetes/apps/), `secrets` (SOPS files decrypted in
//! process into flux-system), `crds`, `nodes_ready` (once the CNI runs) and
//! `layer1_done`. Every apply is server-side with one field manager: a re-run
//! reports each object unchanged and skips.

use std::time::Duration;

use crate::charts::helm::Helm;
use crate::charts::ManifestSource;
use crate::engine::{Backoff, FlowError, Outcome, PlanItem, StepId, Wait};
use crate::kube::wait::wait_nodes;
use crate::kube::{client_from_kubeconfig, parse_manifests, server_version, Applier, Tally};

use super::kube::{kube_preflight, namespace_names, secret_objects, Renderer};
use super::state::{kube_plan_half, plan_helmfile, report, tally_outcome, Up};

// ---- kube_api ------------------------------------------------------------------------

pub async fn kube_api(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::KubeApi;
    let half = cx.half()?;
    let path = cx.opts.state_dir.join("kubeconfig");
    let bytes =
        std::fs::read(&path).map_err(|e| FlowError::local(&path, format!("cannot read: {e}")))?;
    let client = client_from_kubeconfig(&bytes)
        .await
        .map_err(|e| FlowError::kube(step, e))?;
    // kube-apiserver may serve TLS before it answers requests: retry briefly.
    let mut w = Wait::new("the Kubernetes API", "answering", half.nodes_deadline)
        .backoff(Backoff::every(Duration::from_millis(200)));
    let version = loop {
        match server_version(&client).await {
            Ok(v) => break v,
            Err(e) if !w.expired() => {
                cx.em.waiting(step, None, format!("Kubernetes API ({e})"));
                w.seen(e.to_string());
                w.pause().await?;
            }
            Err(e) => return Err(FlowError::kube(step, e)),
        }
    };
    let mut applier = Applier::new(client)
        .await
        .map_err(|e| FlowError::kube(step, e))?;
    applier.force = half.force_conflicts;
    applier.crd_deadline = half.chart_deadline;
    cx.kube.applier = Some(applier);
    cx.kube.kube_version = version.clone();
    if cx.kube.helmfile.is_none() {
        kube_preflight(half, &mut cx.kube, cx.em).await?;
    }
    Ok(Outcome::Done {
        detail: format!("Kubernetes {version}, discovery read"),
    })
}

pub async fn plan_kube_api(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::KubeApi;
    let half = match kube_plan_half(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    vec![PlanItem::new(
        step,
        false,
        match &half.renderer {
            Renderer::Helm(p) => match Helm::find(p.as_deref()).await {
                Ok(h) => format!(
                    "connect with the kubeconfig; render charts with helm {}",
                    h.version
                ),
                Err(e) => format!("REFUSE: {e}"),
            },
            Renderer::Prerendered(_) => {
                "connect with the kubeconfig; charts from pre-rendered manifests".into()
            }
        },
    )]
}

// ---- nodes registered / Ready ------------------------------------------------------------

async fn wait_registered(cx: &mut Up<'_>, ready: bool, step: StepId) -> Result<Outcome, FlowError> {
    let half = cx.half()?;
    let nodes = cx.cluster.def.nodes.len();
    let client = cx.kube.client(step)?;
    let em = cx.em;
    em.waiting(
        step,
        None,
        format!(
            "{nodes} node(s) {}",
            if ready { "Ready" } else { "registered" }
        ),
    );
    let seen = wait_nodes(&client, nodes, ready, half.nodes_deadline, |v| {
        for (name, n) in v {
            em.node_state(
                step,
                name,
                if n.ready {
                    "Ready".to_string()
                } else {
                    "NotReady".to_string()
                },
            );
        }
    })
    .await
    .map_err(|e| FlowError::kube(step, e))?;
    let ready_n = seen.values().filter(|n| n.ready).count();
    Ok(Outcome::Done {
        detail: format!("{} node(s) registered, {ready_n} Ready", seen.len()),
    })
}

pub async fn nodes_registered(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    wait_registered(cx, false, StepId::NodesRegistered).await
}

pub async fn nodes_ready(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    wait_registered(cx, true, StepId::NodesReady).await
}

pub async fn plan_nodes_registered(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::NodesRegistered;
    match kube_plan_half(cx, step) {
        Ok(_) => vec![PlanItem::new(
            step,
            false,
            "wait until every node is registered",
        )],
        Err(lines) => lines,
    }
}

/// Planned after the CNI release (no CNI, no wait for Ready).
pub async fn plan_nodes_ready(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::NodesReady;
    if let Err(lines) = kube_plan_half(cx, step) {
        return lines;
    }
    let has_cilium = plan_helmfile(cx)
        .ok()
        .and_then(|hf| {
            hf.ordered()
                .ok()
                .map(|rs| rs.iter().any(|r| r.name == "cilium"))
        })
        .unwrap_or(false);
    if has_cilium {
        vec![PlanItem::new(step, false, "wait until every node is Ready")]
    } else {
        vec![]
    }
}

// ---- namespaces ------------------------------------------------------------------------

pub async fn namespaces(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Namespaces;
    let half = cx.half()?;
    let names = namespace_names(&half.repo, cx.kube.helmfile.as_ref())?;
    let text: String = names
        .iter()
        .map(|n| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n"))
        .collect();
    let objs = parse_manifests(&text, "namespaces").map_err(|e| FlowError::kube(step, e))?;
    let applied = cx
        .kube
        .applier(step)?
        .apply_all(objs, "default")
        .await
        .map_err(|e| FlowError::kube(step, e))?;
    report(cx, step, &applied);
    Ok(tally_outcome(
        &format!("{} namespace(s)", names.len()),
        Tally::of(&applied),
    ))
}

pub async fn plan_namespaces(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Namespaces;
    let half = match kube_plan_half(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    let hf = plan_helmfile(cx).ok();
    vec![match namespace_names(&half.repo, hf.as_ref()) {
        Ok(ns) => PlanItem::new(
            step,
            true,
            format!(
                "server-side apply {} namespace(s): {}",
                ns.len(),
                ns.join(", ")
            ),
        ),
        Err(e) => PlanItem::new(step, false, format!("REFUSE: {e}")),
    }]
}

// ---- secrets ---------------------------------------------------------------------------

pub async fn secrets(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Secrets;
    let half = cx.half()?;
    let mut all = Vec::new();
    let mut missing = Vec::new();
    for rel in &half.secrets {
        let Some(objs) = secret_objects(&half.repo, rel, half.identities.as_deref())? else {
            cx.em.progress(
                step,
                None,
                format!("WARNING: {} is missing; skipped", rel.display()),
            );
            missing.push(rel.display().to_string());
            continue;
        };
        let applied = cx
            .kube
            .applier(step)?
            .apply_all(objs, "flux-system")
            .await
            .map_err(|e| FlowError::kube(step, e))?;
        report(cx, step, &applied);
        all.extend(applied);
    }
    let mut o = tally_outcome(
        &format!("{} secret(s) into flux-system", all.len()),
        Tally::of(&all),
    );
    if !missing.is_empty() {
        let note = format!("; missing (warned): {}", missing.join(", "));
        match &mut o {
            Outcome::Done { detail } => detail.push_str(&note),
            Outcome::Skipped { reason } => reason.push_str(&note),
            Outcome::Failed { .. } => {}
        }
    }
    Ok(o)
}

pub async fn plan_secrets(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Secrets;
    let half = match kube_plan_half(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    half.secrets
        .iter()
        .map(|s| {
            let present = half.repo.join(s).is_file();
            PlanItem::new(
                step,
                present,
                if present {
                    format!("decrypt {} and apply into flux-system", s.display())
                } else {
                    format!("WARNING: {} missing; would be skipped", s.display())
                },
            )
        })
        .collect()
}

// ---- CRDs ------------------------------------------------------------------------------

pub async fn crds(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Crds;
    let half = cx.half()?;
    if half.crds.is_empty() {
        return Ok(Outcome::Skipped {
            reason: "no CRD sources listed".into(),
        });
    }
    let mut all = Vec::new();
    for src in &half.crds {
        let src = match src {
            ManifestSource::File(p) if p.is_relative() => ManifestSource::File(half.repo.join(p)),
            other => other.clone(),
        };
        cx.em
            .progress(step, None, format!("fetching {}", src.name()));
        let text = src.fetch().await.map_err(|e| FlowError::charts(step, e))?;
        let objs = parse_manifests(&text, &src.name()).map_err(|e| FlowError::kube(step, e))?;
        let applied = cx
            .kube
            .applier(step)?
            .apply_all(objs, "default")
            .await
            .map_err(|e| FlowError::kube(step, e))?;
        report(cx, step, &applied);
        all.extend(applied);
    }
    Ok(tally_outcome(
        &format!("{} object(s) from {} source(s)", all.len(), half.crds.len()),
        Tally::of(&all),
    ))
}

pub async fn plan_crds(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Crds;
    let half = match kube_plan_half(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    half.crds
        .iter()
        .map(|c| PlanItem::new(step, true, format!("apply {} (wait Established)", c.name())))
        .collect()
}

// ---- layer 1 done ----------------------------------------------------------------------

pub async fn layer1_done(_cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    Ok(Outcome::Done {
        detail: "layer 1 done: nodes Ready, bootstrap charts healthy".into(),
    })
}

pub async fn plan_layer1_done(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Layer1Done;
    match kube_plan_half(cx, step) {
        Ok(_) => vec![PlanItem::new(step, false, "layer 1 done")],
        Err(lines) => lines,
    }
}
