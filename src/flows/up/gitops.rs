//! Layers 3–5 and the handoff's last check:
//!
//! - `gitops` runs the [`Tracker`] until every layer is Ready, emitting one
//!   `layer_progress` event per layer whose count changed.
//! - `adoption` confirms Flux's helm-controller adopted each bootstrap release
//!   (same release name and namespace, the objects' UIDs unchanged).
//!
//! [`status`] is the tracker's one-shot view for the `status` verb.

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;
use serde_json::Value;

use crate::charts::helmfile::Release;
use crate::engine::{Emitter, FlowError, Outcome, PlanItem, StepId};
use crate::gitops::{Graph, LayerMap, Progress, Tracker};
use crate::kube::flux::{self as kflux, ready_now, ready_text, str_at as s};
use crate::kube::KubeError;

use super::kube::{sync_spec, walk_graph, KubeState};
use super::state::{gitops_plan_gate, plan_helmfile, secs, Up};

/// Emits a `layer_progress` event for each layer whose count changed since
/// the last call (`last` keeps what was emitted).
pub fn emit_layers(
    em: &Emitter,
    step: StepId,
    p: &Progress,
    last: &mut BTreeMap<u8, (usize, usize)>,
) {
    for l in &p.layers {
        if last.get(&l.layer) != Some(&(l.ready, l.total)) {
            last.insert(l.layer, (l.ready, l.total));
            em.layer_progress(step, l.layer, l.name, l.ready, l.total, l.waiting.clone());
        }
    }
}

pub async fn gitops(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Gitops;
    let half = cx.half()?;
    let em = cx.em;
    let client = cx.kube.client(step)?;
    let g = cx.kube.graph(half)?;
    let tracker = Tracker::new(client, half.layers.clone()).expect(&g);
    let mut last = BTreeMap::new();
    let mut calls = 0usize;
    let mut ready_at_first = false;
    em.waiting(
        step,
        None,
        format!(
            "{} Flux Kustomizations (and their HelmReleases) Ready, by layer",
            g.nodes.len()
        ),
    );
    let p = tracker
        .wait_ready(half.gitops_deadline, |p| {
            calls += 1;
            if calls == 1 {
                ready_at_first = p.all_ready();
            }
            emit_layers(em, step, p, &mut last);
        })
        .await
        .map_err(|e| FlowError::track(step, e))?;
    let counts: Vec<String> = p
        .layers
        .iter()
        .map(|l| format!("layer {} {}/{}", l.layer, l.ready, l.total))
        .collect();
    let detail = format!(
        "all five layers Ready: {} ({} Kustomizations, {} HelmReleases)",
        counts.join(", "),
        p.items
            .iter()
            .filter(|i| i.kind == crate::gitops::Kind::Kustomization)
            .count(),
        p.items
            .iter()
            .filter(|i| i.kind == crate::gitops::Kind::HelmRelease)
            .count()
    );
    Ok(if ready_at_first {
        Outcome::Skipped {
            reason: format!("already Ready: {detail}"),
        }
    } else {
        Outcome::Done { detail }
    })
}

/// What adoption found for one bootstrap release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Adoption {
    /// The HelmRelease owns the release: same name and namespace, the
    /// bootstrap objects kept their UIDs.
    Adopted { helmrelease: String, revision: i64 },
    /// Flux's release has the same name, but objects were deleted and
    /// re-created (UIDs changed): a reinstall, with downtime.
    Reinstalled {
        helmrelease: String,
        changed: Vec<String>,
    },
    /// No HelmRelease installs a release of this name and namespace: the
    /// bootstrap install stays orphaned, or Flux manages it under another name.
    NotManaged { detail: String },
    /// History or readiness not there to tell.
    CannotConfirm { helmrelease: String, detail: String },
}

impl Adoption {
    pub fn text(&self) -> String {
        match self {
            Adoption::Adopted {
                helmrelease,
                revision,
            } => format!("adopted by HelmRelease {helmrelease} (revision {revision}, bootstrap objects kept their UIDs)"),
            Adoption::Reinstalled {
                helmrelease,
                changed,
            } => format!(
                "reinstalled by HelmRelease {helmrelease}: {} object(s) re-created ({})",
                changed.len(),
                changed.join(", ")
            ),
            Adoption::NotManaged { detail } => format!("not managed by Flux: {detail}"),
            Adoption::CannotConfirm {
                helmrelease,
                detail,
            } => format!("cannot confirm for HelmRelease {helmrelease}: {detail}"),
        }
    }
}

/// The Helm release a HelmRelease writes: `spec.releaseName`, else
/// `[targetNamespace-]name`; stored in `spec.storageNamespace`, else the
/// HelmRelease's namespace (helm-controller's defaults, reference §2.3).
fn release_of(hr: &DynamicObject) -> (String, String) {
    let v = &hr.data;
    let ns = hr.metadata.namespace.clone().unwrap_or_default();
    let name = hr.metadata.name.clone().unwrap_or_default();
    let release = match (s(v, "/spec/releaseName"), s(v, "/spec/targetNamespace")) {
        (r, _) if !r.is_empty() => r.to_string(),
        ("", t) if !t.is_empty() => format!("{t}-{name}"),
        _ => name,
    };
    let storage = match s(v, "/spec/storageNamespace") {
        "" => ns,
        x => x.to_string(),
    };
    (release, storage)
}

pub async fn adoption(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::Adoption;
    let em = cx.em;
    let client = cx.kube.client(step)?;
    // Releases come from the helmfile the run loaded.
    let st = &cx.kube;
    let releases: Vec<Release> = st
        .helmfile
        .as_ref()
        .map(|h| h.releases.clone())
        .unwrap_or_default();
    let hrs: Api<DynamicObject> = Api::all_with(client.clone(), &kflux::helmreleases());
    let list = hrs
        .list(&ListParams::default())
        .await
        .map_err(|e| FlowError::kube(step, KubeError::from_kube(e, "HelmReleases", "list")))?;
    let mut verdicts = Vec::new();
    for r in &releases {
        let hr = list
            .items
            .iter()
            .find(|h| release_of(h) == (r.name.clone(), r.namespace.clone()));
        let verdict = match hr {
            None => Adoption::NotManaged {
                detail: format!(
                    "no HelmRelease installs release {} (Flux would leave the bootstrap install orphaned)",
                    r.id()
                ),
            },
            Some(hr) => judge(&client, st, r, hr).await,
        };
        em.progress(
            step,
            Some(&r.name),
            format!("release {}: {}", r.id(), verdict.text()),
        );
        verdicts.push((r.id(), verdict));
    }
    let count = |f: fn(&Adoption) -> bool| verdicts.iter().filter(|(_, v)| f(v)).count();
    let adopted = count(|v| matches!(v, Adoption::Adopted { .. }));
    let reinstalled = count(|v| matches!(v, Adoption::Reinstalled { .. }));
    let unmanaged = count(|v| matches!(v, Adoption::NotManaged { .. }));
    let unknown = count(|v| matches!(v, Adoption::CannotConfirm { .. }));
    let mut detail = format!(
        "{adopted} of {} bootstrap release(s) adopted by Flux",
        verdicts.len()
    );
    for (n, what) in [
        (reinstalled, "reinstalled"),
        (unmanaged, "not managed by Flux"),
        (unknown, "cannot confirm"),
    ] {
        if n > 0 {
            detail.push_str(&format!(", {n} {what}"));
        }
    }
    Ok(Outcome::Done { detail })
}

async fn judge(client: &Client, st: &KubeState, r: &Release, hr: &DynamicObject) -> Adoption {
    let key = format!(
        "{}/{}",
        hr.metadata.namespace.clone().unwrap_or_default(),
        hr.metadata.name.clone().unwrap_or_default()
    );
    let v = &hr.data;
    if !ready_now(v) {
        return Adoption::CannotConfirm {
            helmrelease: key,
            detail: format!("not Ready ({})", ready_text(v)),
        };
    }
    let Some(h0) = v.pointer("/status/history/0") else {
        return Adoption::CannotConfirm {
            helmrelease: key,
            detail: "no status.history (helm-controller before v1.0, or a lab without it): the release it manages cannot be read".into(),
        };
    };
    let (name, ns) = (s(h0, "/name"), s(h0, "/namespace"));
    if (name, ns) != (r.name.as_str(), r.namespace.as_str()) {
        return Adoption::NotManaged {
            detail: format!(
                "HelmRelease {key} manages release {ns}/{name}, not the bootstrap release {} (a second release over the same objects)",
                r.id()
            ),
        };
    }
    let revision = h0.get("version").and_then(Value::as_i64).unwrap_or(0);
    // The bootstrap objects must still be the same objects.
    let Some(objs) = st.installed.get(&r.id()) else {
        return Adoption::CannotConfirm {
            helmrelease: key,
            detail: "this run did not install the release (its UIDs were not recorded)".into(),
        };
    };
    let mut changed = Vec::new();
    for o in objs {
        let api: Api<DynamicObject> = match &o.namespace {
            Some(n) => Api::namespaced_with(client.clone(), n, &o.resource),
            None => Api::all_with(client.clone(), &o.resource),
        };
        let label = match &o.namespace {
            Some(n) => format!("{} {n}/{}", o.resource.kind, o.name),
            None => format!("{} {}", o.resource.kind, o.name),
        };
        match api.get_opt(&o.name).await {
            Ok(Some(live)) if live.metadata.uid.as_deref() == Some(o.uid.as_str()) => {}
            Ok(_) => changed.push(label),
            Err(e) => {
                return Adoption::CannotConfirm {
                    helmrelease: key,
                    detail: format!("{label}: {e}"),
                }
            }
        }
    }
    if changed.is_empty() {
        Adoption::Adopted {
            helmrelease: key,
            revision,
        }
    } else {
        Adoption::Reinstalled {
            helmrelease: key,
            changed,
        }
    }
}

/// The per-layer view from the cluster now (the `status` verb): one LIST of
/// Kustomizations, HelmReleases and GitRepositories. With `graph`, the
/// Kustomizations the repository defines but the cluster lacks are counted
/// (and listed as missing).
pub async fn status(
    kubeconfig: &[u8],
    layers: LayerMap,
    graph: Option<&Graph>,
) -> Result<Progress, FlowError> {
    let step = StepId::Gitops;
    let client = crate::kube::client_from_kubeconfig(kubeconfig)
        .await
        .map_err(|e| FlowError::kube(step, e))?;
    let mut tracker = Tracker::new(client, layers);
    if let Some(g) = graph {
        tracker = tracker.expect(g);
    }
    tracker
        .snapshot()
        .await
        .map_err(|e| FlowError::track(step, e))
}

pub async fn plan_gitops(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Gitops;
    let half = match gitops_plan_gate(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    let hf = plan_helmfile(cx).ok();
    let spec = sync_spec(half, hf.as_ref());
    let Ok(g) = walk_graph(&half.repo, &spec.path, half.layers.clone()) else {
        return vec![];
    };
    let mut per: BTreeMap<u8, usize> = BTreeMap::new();
    for k in g.nodes.keys() {
        *per.entry(g.layer_of(k)).or_default() += 1;
    }
    let counts: Vec<String> = (1..=5u8)
        .map(|l| format!("layer {l}: {}", per.get(&l).copied().unwrap_or(0)))
        .collect();
    vec![PlanItem::new(
        step,
        false,
        format!(
            "watch {} Kustomizations and their HelmReleases until every layer is Ready (≤ {}; {})",
            g.nodes.len(),
            secs(half.gitops_deadline),
            counts.join(", ")
        ),
    )]
}

pub async fn plan_adoption(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::Adoption;
    if let Err(lines) = gitops_plan_gate(cx, step) {
        return lines;
    }
    vec![PlanItem::new(
        step,
        false,
        "confirm Flux adopted each bootstrap release (HelmRelease history = helmfile name and namespace, UIDs unchanged)",
    )]
}
