//! The bootstrap releases of the helmfile, in `needs` order: `cni` (Cilium,
//! its Talos values linted first), `charts` (the other layer-1 releases) and
//! `flux_install` (flux-operator and flux-instance, layer 2). Each release is
//! rendered (`helm template`, or pre-rendered in the lab), applied with Helm
//! ownership metadata so Flux adopts it, its UIDs read back, then waited healthy.

use std::path::Path;
use std::time::Instant;

use crate::charts::helmfile::{Helmfile, Release};
use crate::charts::{add_ownership, lint, ChartsError};
use crate::engine::{FlowError, Outcome, PlanItem, StepId};
use crate::kube::wait::wait_all;
use crate::kube::{parse_manifests, Applied, KubeError, Tally};

use super::kube::{is_flux_release, Group, Installed, KubeHalf, KubeState, Renderer};
use super::state::{kube_plan_half, plan_helmfile, report, tally_outcome, Up};

async fn render(
    half: &KubeHalf,
    st: &KubeState,
    hf: &Helmfile,
    r: &Release,
    scratch: &Path,
    step: StepId,
) -> Result<String, FlowError> {
    match (&half.renderer, &st.helm) {
        (Renderer::Helm(_), Some(h)) => h
            .template(hf, r, scratch, &st.kube_version)
            .await
            .map_err(|e| FlowError::charts(step, e)),
        (Renderer::Prerendered(f), _) => f(&r.name).map(str::to_string).ok_or_else(|| {
            FlowError::charts(
                step,
                ChartsError::Release {
                    release: r.id(),
                    detail: "no pre-rendered manifests for this release".into(),
                },
            )
        }),
        (Renderer::Helm(_), None) => Err(FlowError::charts(
            step,
            ChartsError::HelmMissing {
                searched: "preflight did not find helm".into(),
            },
        )),
    }
}

/// Installs the releases of `group`, each waited healthy before the next.
async fn install(cx: &mut Up<'_>, step: StepId, group: Group) -> Result<Outcome, FlowError> {
    let half = cx.half()?;
    let em = cx.em;
    let hf = cx.kube.helmfile(step)?;
    let ordered: Vec<Release> = hf
        .ordered()
        .map_err(|e| FlowError::charts(step, e))?
        .into_iter()
        .cloned()
        .collect();
    let Some(first) = ordered.first().cloned() else {
        return Ok(Outcome::Skipped {
            reason: "the helmfile has no releases".into(),
        });
    };
    let scratch = cx.opts.state_dir.join("charts");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| FlowError::local(&scratch, format!("cannot create: {e}")))?;
    let mut all = Vec::new();
    let mut names = Vec::new();
    for r in ordered.iter().filter(|r| group.contains(r, &first)) {
        let t0 = Instant::now();
        if r.name == "cilium" {
            let values = hf
                .merged_values(r, &scratch)
                .map_err(|e| FlowError::charts(step, e))?;
            for w in lint::lint_cilium(&values) {
                em.progress(step, Some(&r.name), format!("WARNING: {w}"));
            }
        }
        let text = render(half, &cx.kube, &hf, r, &scratch, step).await?;
        let mut objs = parse_manifests(&text, &format!("release {}", r.id()))
            .map_err(|e| FlowError::kube(step, e))?;
        add_ownership(&mut objs, &r.name, &r.namespace);
        let applied = cx
            .kube
            .applier(step)?
            .apply_all(objs, &r.namespace)
            .await
            .map_err(|e| FlowError::kube(step, e))?;
        report(cx, step, &applied);
        let client = cx.kube.client(step)?;
        let installed = read_uids(&client, &applied)
            .await
            .map_err(|e| FlowError::kube(step, e))?;
        cx.kube.installed.insert(r.id(), installed);
        em.waiting(step, Some(&r.name), format!("release {} healthy", r.id()));
        let waited = wait_all(&client, &applied, half.chart_deadline)
            .await
            .map_err(|e| FlowError::kube(step, e))?;
        let t = Tally::of(&applied);
        em.progress(
            step,
            Some(&r.name),
            format!("release {} healthy ({t}; {waited} waited on)", r.id()),
        );
        em.timing(
            step,
            Some(&r.name),
            &format!("release {}", r.name),
            t0.elapsed(),
        );
        names.push(r.name.clone());
        all.extend(applied);
    }
    if names.is_empty() {
        return Ok(Outcome::Skipped {
            reason: "no release in this group".into(),
        });
    }
    Ok(tally_outcome(
        &format!("release(s) {}", names.join(", ")),
        Tally::of(&all),
    ))
}

pub async fn cni(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    install(cx, StepId::Cni, Group::Cni).await
}

pub async fn charts(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    install(cx, StepId::Charts, Group::Foundation).await
}

pub async fn flux_install(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    install(cx, StepId::FluxInstall, Group::Flux).await
}

/// The UIDs of freshly applied objects (read back: the apply engine reports
/// changes, not identities). Adoption later tells "adopted" (same UIDs) from
/// "reinstalled" (objects deleted and re-created).
async fn read_uids(
    client: &kube::Client,
    applied: &[Applied],
) -> Result<Vec<Installed>, KubeError> {
    use kube::api::{Api, DynamicObject};
    let mut out = Vec::new();
    for a in applied {
        let api: Api<DynamicObject> = match &a.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &a.resource),
            None => Api::all_with(client.clone(), &a.resource),
        };
        let o = api
            .get_opt(&a.name)
            .await
            .map_err(|e| KubeError::from_kube(e, &a.label(), "get"))?;
        if let Some(uid) = o.and_then(|o| o.metadata.uid) {
            out.push(Installed {
                resource: a.resource.clone(),
                namespace: a.namespace.clone(),
                name: a.name.clone(),
                uid,
            });
        }
    }
    Ok(out)
}

fn release_line(r: &Release) -> String {
    format!(
        "release {} ({} {}) with Helm ownership metadata, wait healthy",
        r.id(),
        r.chart,
        r.version.as_deref().unwrap_or("latest")
    )
}

/// Plan lines of a layer-1 chart step: the releases it installs, in order.
async fn plan_layer1(cx: &mut Up<'_>, step: StepId) -> Vec<PlanItem> {
    if let Err(lines) = kube_plan_half(cx, step) {
        return lines;
    }
    let rs = plan_helmfile(cx).and_then(|hf| {
        hf.ordered()
            .map(|rs| rs.into_iter().cloned().collect::<Vec<Release>>())
    });
    match rs {
        Ok(rs) => rs
            .iter()
            .filter(|r| !is_flux_release(r))
            .filter(|r| (r.name == "cilium") == (step == StepId::Cni))
            .map(|r| PlanItem::new(step, true, release_line(r)))
            .collect(),
        // One refusal, under `charts`.
        Err(e) if step == StepId::Charts => {
            vec![PlanItem::new(step, false, format!("REFUSE: {e}"))]
        }
        Err(_) => vec![],
    }
}

pub async fn plan_cni(cx: &mut Up<'_>) -> Vec<PlanItem> {
    plan_layer1(cx, StepId::Cni).await
}

pub async fn plan_charts(cx: &mut Up<'_>) -> Vec<PlanItem> {
    plan_layer1(cx, StepId::Charts).await
}

pub async fn plan_flux_install(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::FluxInstall;
    if let Err(lines) = kube_plan_half(cx, step) {
        return lines;
    }
    if cx.opts.until <= StepId::Layer1Done {
        return vec![];
    }
    match plan_helmfile(cx) {
        Ok(hf) => hf
            .releases
            .iter()
            .filter(|r| is_flux_release(r))
            .map(|r| PlanItem::new(step, true, release_line(r)))
            .collect(),
        Err(_) => vec![],
    }
}
