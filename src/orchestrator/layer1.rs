//! `up`, the Kubernetes half of layer 1: wait API → wait all nodes registered →
//! namespaces → secrets → CRDs → Cilium → nodes Ready → the other charts →
//! layer 1 done. Every step is idempotent (server-side apply with one field
//! manager): a re-run reports each object unchanged and skips.

use endsys_core::Doctor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::charts::helm::Helm;
use crate::charts::helmfile::{Helmfile, Release};
use crate::charts::{add_ownership, lint, ChartsError, ManifestSource};
use crate::kube::wait::{wait_all, wait_nodes};
use crate::kube::{
    client_from_kubeconfig, parse_manifests, server_version, Applied, Applier, KubeError, Tally,
};
use crate::sops::AgeIdentities;

use super::error::FlowError;
use super::events::{Emitter, Outcome, StepId};

/// Where releases' manifests come from.
#[derive(Clone)]
pub enum Renderer {
    /// The operator's `helm template` (`None`: `helm` on PATH).
    Helm(Option<PathBuf>),
    /// Manifests rendered ahead of time, by release name (the lab without helm).
    Prerendered(fn(&str) -> Option<&'static str>),
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renderer::Helm(p) => write!(f, "Helm({p:?})"),
            Renderer::Prerendered(_) => write!(f, "Prerendered"),
        }
    }
}

/// Inputs of the Kubernetes half.
#[derive(Clone)]
pub struct KubeHalf {
    /// The gitops repository root (kubernetes/apps/ lives here).
    pub repo: PathBuf,
    /// Relative to `repo`.
    pub helmfile: PathBuf,
    /// SOPS files (relative to `repo`) applied into flux-system.
    pub secrets: Vec<PathBuf>,
    pub crds: Vec<ManifestSource>,
    pub renderer: Renderer,
    pub identities: Option<std::sync::Arc<AgeIdentities>>,
    pub nodes_deadline: Duration,
    pub chart_deadline: Duration,
    /// SSA `force` (take over fields other managers own).
    pub force_conflicts: bool,
    /// Kustomization → layer (endsys defaults plus `--layers` overrides).
    pub layers: crate::gitops::LayerMap,
    /// The Flux sync path in the repository; `None`: the flux-instance
    /// release's values (`instance.sync.path`), else `kubernetes/flux/cluster`.
    pub sync_path: Option<String>,
    /// FluxInstance Ready, source fetched, flux-system and cluster-meta Ready.
    pub flux_deadline: Duration,
    /// Every layer Ready (the tracker).
    pub gitops_deadline: Duration,
}

impl std::fmt::Debug for KubeHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHalf")
            .field("repo", &self.repo)
            .field("helmfile", &self.helmfile)
            .field("secrets", &self.secrets)
            .field("crds", &self.crds)
            .field("renderer", &self.renderer)
            .field("sync_path", &self.sync_path)
            .field(
                "identities",
                &self.identities.as_ref().map(|i| i.source().to_string()),
            )
            .finish()
    }
}

impl KubeHalf {
    /// endsys's layout under `repo`.
    pub fn endsys(repo: PathBuf) -> KubeHalf {
        KubeHalf {
            repo,
            helmfile: "bootstrap/helmfile.yaml".into(),
            secrets: vec![
                "bootstrap/github-deploy-key.sops.yaml".into(),
                "kubernetes/components/common/sops/cluster-secrets.sops.yaml".into(),
                "kubernetes/components/common/sops/sops-age.sops.yaml".into(),
            ],
            crds: vec![],
            renderer: Renderer::Helm(None),
            identities: None,
            nodes_deadline: Duration::from_secs(10 * 60),
            chart_deadline: Duration::from_secs(10 * 60),
            force_conflicts: false,
            layers: crate::gitops::LayerMap::endsys(),
            sync_path: None,
            flux_deadline: Duration::from_secs(10 * 60),
            gitops_deadline: Duration::from_secs(30 * 60),
        }
    }

    pub(crate) fn helmfile_path(&self) -> PathBuf {
        self.repo.join(&self.helmfile)
    }
}

/// Live state of the Kubernetes half within one run.
#[derive(Default)]
pub struct KubeState {
    pub(crate) applier: Option<Applier>,
    pub(crate) kube_version: String,
    pub(crate) helm: Option<Helm>,
    pub(crate) helmfile: Option<Helmfile>,
    /// What each bootstrap release applied, with the UIDs read back right
    /// after (release id → objects): adoption compares them with the live ones.
    pub(crate) installed: std::collections::BTreeMap<String, Vec<Installed>>,
    /// The repository's Flux graph, walked once per run.
    pub(crate) graph: Option<crate::gitops::Graph>,
}

/// One object a bootstrap release applied.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    pub resource: kube::api::ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// Which releases a chart step installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// The CNI (layer 1, before nodes turn Ready).
    Cni,
    /// The other layer-1 releases.
    Foundation,
    /// flux-operator and flux-instance (layer 2).
    Flux,
}

/// flux-operator and flux-instance belong to layer 2: by release name, or by
/// the upstream chart they install.
pub fn is_flux_release(r: &Release) -> bool {
    ["flux-operator", "flux-instance"]
        .iter()
        .any(|n| r.name == *n || r.chart.trim_end_matches('/').ends_with(n))
}

pub(crate) fn kube_err(step: StepId, e: KubeError) -> FlowError {
    FlowError::Kube {
        step: step.name().into(),
        cause: match &e {
            KubeError::Timeout { .. } => "the object did not become ready in time: its pods are not scheduled, pulling, or crashing".into(),
            KubeError::Conflict { .. } => "another field manager owns fields this tool sets".into(),
            KubeError::UnknownKind { .. } => "the API server does not serve this kind".into(),
            _ => "the Kubernetes API refused or failed the request".into(),
        },
        next: e.next_action(),
        detail: e.to_string(),
    }
}

fn charts_err(step: StepId, e: ChartsError) -> FlowError {
    FlowError::Kube {
        step: step.name().into(),
        cause: match &e {
            ChartsError::HelmMissing { .. } | ChartsError::HelmTooOld { .. } => {
                "the bootstrap charts are rendered with the operator's helm".into()
            }
            _ => "a chart or its inputs could not be used".into(),
        },
        next: e.next_action(),
        detail: e.to_string(),
    }
}

/// Preflight of the Kubernetes half (before any node is touched): helm present
/// and recent, helmfile parses, values files exist.
pub async fn preflight(
    half: &KubeHalf,
    em: &Emitter,
) -> Result<(Option<Helm>, Helmfile), FlowError> {
    let step = StepId::Preflight;
    let hf = Helmfile::load(&half.helmfile_path()).map_err(|e| charts_err(step, e))?;
    let scratch = std::env::temp_dir();
    for r in &hf.releases {
        hf.values_files(r, &scratch)
            .map_err(|e| charts_err(step, e))?;
    }
    let helm = match &half.renderer {
        Renderer::Helm(p) => {
            let h = Helm::find(p.as_deref())
                .await
                .map_err(|e| charts_err(step, e))?;
            em.progress(
                step,
                None,
                format!("helm {} at {}", h.version, h.path.display()),
            );
            Some(h)
        }
        Renderer::Prerendered(_) => {
            em.progress(step, None, "charts: pre-rendered manifests (no helm)");
            None
        }
    };
    Ok((helm, hf))
}

fn outcome(what: &str, t: Tally) -> Outcome {
    if t.is_noop() {
        Outcome::Skipped {
            reason: format!("{what}: {} unchanged", t.unchanged),
        }
    } else {
        Outcome::Done {
            detail: format!("{what}: {t}"),
        }
    }
}

/// Runs one step of the Kubernetes half.
pub async fn run_step(
    step: StepId,
    half: &KubeHalf,
    st: &mut KubeState,
    state_dir: &Path,
    nodes: usize,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    let t0 = Instant::now();
    let r = match step {
        StepId::KubeApi => kube_api(half, st, state_dir, em).await,
        StepId::NodesRegistered => wait_registered(half, st, nodes, false, em, step).await,
        StepId::Namespaces => namespaces(half, st, em).await,
        StepId::Secrets => secrets(half, st, em).await,
        StepId::Crds => crds(half, st, em).await,
        StepId::Cni => charts(half, st, state_dir, em, step, Group::Cni).await,
        StepId::NodesReady => wait_registered(half, st, nodes, true, em, step).await,
        StepId::Charts => charts(half, st, state_dir, em, step, Group::Foundation).await,
        StepId::Layer1Done => Ok(Outcome::Done {
            detail: "layer 1 done: nodes Ready, bootstrap charts healthy".into(),
        }),
        StepId::FluxInstall => charts(half, st, state_dir, em, step, Group::Flux).await,
        StepId::FluxSecrets | StepId::FluxSync | StepId::Gitops | StepId::Adoption => {
            super::flux::run_step(step, half, st, em).await
        }
        _ => Ok(Outcome::Skipped {
            reason: "not a Kubernetes step".into(),
        }),
    };
    em.timing(step, None, step.name(), t0.elapsed());
    r
}

pub(crate) fn applier(st: &mut KubeState, step: StepId) -> Result<&mut Applier, FlowError> {
    st.applier.as_mut().ok_or_else(|| FlowError::Kube {
        step: step.name().into(),
        detail: "no Kubernetes client (kube_api did not run)".into(),
        cause: "steps ran out of order".into(),
        next: "re-run up".into(),
    })
}

async fn kube_api(
    half: &KubeHalf,
    st: &mut KubeState,
    state_dir: &Path,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    let step = StepId::KubeApi;
    let path = state_dir.join("kubeconfig");
    let bytes = std::fs::read(&path).map_err(|e| FlowError::Local {
        path: path.display().to_string(),
        detail: format!("cannot read: {e}"),
    })?;
    let client = client_from_kubeconfig(&bytes)
        .await
        .map_err(|e| kube_err(step, e))?;
    // kube-apiserver may serve TLS before it answers requests: retry briefly.
    let t0 = Instant::now();
    let version = loop {
        match server_version(&client).await {
            Ok(v) => break v,
            Err(e) if t0.elapsed() < half.nodes_deadline => {
                em.waiting(step, None, format!("Kubernetes API ({e})"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(kube_err(step, e)),
        }
    };
    let mut applier = Applier::new(client).await.map_err(|e| kube_err(step, e))?;
    applier.force = half.force_conflicts;
    applier.crd_deadline = half.chart_deadline;
    st.applier = Some(applier);
    st.kube_version = version.clone();
    if st.helmfile.is_none() {
        let (helm, hf) = preflight(half, em).await?;
        st.helm = helm;
        st.helmfile = Some(hf);
    }
    Ok(Outcome::Done {
        detail: format!("Kubernetes {version}, discovery read"),
    })
}

async fn wait_registered(
    half: &KubeHalf,
    st: &mut KubeState,
    nodes: usize,
    ready: bool,
    em: &Emitter,
    step: StepId,
) -> Result<Outcome, FlowError> {
    let client = applier(st, step)?.client().clone();
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
    .map_err(|e| kube_err(step, e))?;
    let ready_n = seen.values().filter(|n| n.ready).count();
    Ok(Outcome::Done {
        detail: format!("{} node(s) registered, {ready_n} Ready", seen.len()),
    })
}

/// One namespace per folder under kubernetes/apps/, plus flux-system and the
/// releases' namespaces.
pub fn namespace_names(repo: &Path, hf: Option<&Helmfile>) -> Result<Vec<String>, FlowError> {
    let apps = repo.join("kubernetes/apps");
    let mut names = std::collections::BTreeSet::new();
    let rd = std::fs::read_dir(&apps).map_err(|e| FlowError::Local {
        path: apps.display().to_string(),
        detail: format!("cannot list: {e}"),
    })?;
    for e in rd.flatten() {
        if e.path().is_dir() {
            names.insert(e.file_name().to_string_lossy().to_string());
        }
    }
    names.insert("flux-system".to_string());
    if let Some(hf) = hf {
        names.extend(hf.releases.iter().map(|r| r.namespace.clone()));
    }
    Ok(names.into_iter().collect())
}

async fn namespaces(
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    let step = StepId::Namespaces;
    let names = namespace_names(&half.repo, st.helmfile.as_ref())?;
    let text: String = names
        .iter()
        .map(|n| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n"))
        .collect();
    let objs = parse_manifests(&text, "namespaces").map_err(|e| kube_err(step, e))?;
    let applied = applier(st, step)?
        .apply_all(objs, "default")
        .await
        .map_err(|e| kube_err(step, e))?;
    report(em, step, &applied);
    Ok(outcome(
        &format!("{} namespace(s)", names.len()),
        Tally::of(&applied),
    ))
}

fn report(em: &Emitter, step: StepId, applied: &[Applied]) {
    for a in applied {
        em.progress(step, None, format!("{} {}", a.label(), change_word(a)));
    }
}

fn change_word(a: &Applied) -> &'static str {
    match a.change {
        crate::kube::Change::Created => "created",
        crate::kube::Change::Changed => "changed",
        crate::kube::Change::Unchanged => "unchanged",
    }
}

/// The objects of one SOPS file, decrypted in process, namespaced to
/// flux-system when they name none. `None`: the file is missing (a warning);
/// a file that does not decrypt is an error naming it.
pub fn secret_objects(
    repo: &Path,
    rel: &Path,
    identities: Option<&AgeIdentities>,
) -> Result<Option<Vec<kube::api::DynamicObject>>, FlowError> {
    let step = StepId::Secrets;
    let path = repo.join(rel);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let ids = identities.ok_or_else(|| FlowError::Kube {
        step: step.name().into(),
        detail: format!("{}: no age identity to decrypt it", rel.display()),
        cause: "no age key was found".into(),
        next: "pass --age-key or set SOPS_AGE_KEY_FILE".into(),
    })?;
    let clear = crate::sops::decrypt_yaml(&text, ids, &path).map_err(|e| FlowError::Kube {
        step: step.name().into(),
        detail: format!("{} does not decrypt: {e}", rel.display()),
        cause: "the file is damaged or encrypted for another age key".into(),
        next: "check the file with `sops -d` and the age key in use".into(),
    })?;
    let mut objs =
        parse_manifests(&clear, &rel.display().to_string()).map_err(|e| kube_err(step, e))?;
    for o in &mut objs {
        o.metadata
            .namespace
            .get_or_insert_with(|| "flux-system".into());
    }
    Ok(Some(objs))
}

async fn secrets(half: &KubeHalf, st: &mut KubeState, em: &Emitter) -> Result<Outcome, FlowError> {
    let step = StepId::Secrets;
    let mut all = Vec::new();
    let mut missing = Vec::new();
    for rel in &half.secrets {
        let Some(objs) = secret_objects(&half.repo, rel, half.identities.as_deref())? else {
            em.progress(
                step,
                None,
                format!("WARNING: {} is missing; skipped", rel.display()),
            );
            missing.push(rel.display().to_string());
            continue;
        };
        let applied = applier(st, step)?
            .apply_all(objs, "flux-system")
            .await
            .map_err(|e| kube_err(step, e))?;
        report(em, step, &applied);
        all.extend(applied);
    }
    let mut o = outcome(
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

async fn crds(half: &KubeHalf, st: &mut KubeState, em: &Emitter) -> Result<Outcome, FlowError> {
    let step = StepId::Crds;
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
        em.progress(step, None, format!("fetching {}", src.name()));
        let text = src.fetch().await.map_err(|e| charts_err(step, e))?;
        let objs = parse_manifests(&text, &src.name()).map_err(|e| kube_err(step, e))?;
        let applied = applier(st, step)?
            .apply_all(objs, "default")
            .await
            .map_err(|e| kube_err(step, e))?;
        report(em, step, &applied);
        all.extend(applied);
    }
    Ok(outcome(
        &format!("{} object(s) from {} source(s)", all.len(), half.crds.len()),
        Tally::of(&all),
    ))
}

/// The CNI release: `cilium` by name, else the first in `needs` order.
fn is_cni(r: &Release, first: &Release) -> bool {
    r.name == "cilium" || (r.id() == first.id() && r.name.contains("cni"))
}

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
            .map_err(|e| charts_err(step, e)),
        (Renderer::Prerendered(f), _) => f(&r.name).map(str::to_string).ok_or_else(|| {
            charts_err(
                step,
                ChartsError::Release {
                    release: r.id(),
                    detail: "no pre-rendered manifests for this release".into(),
                },
            )
        }),
        (Renderer::Helm(_), None) => Err(charts_err(
            step,
            ChartsError::HelmMissing {
                searched: "preflight did not find helm".into(),
            },
        )),
    }
}

async fn charts(
    half: &KubeHalf,
    st: &mut KubeState,
    state_dir: &Path,
    em: &Emitter,
    step: StepId,
    group: Group,
) -> Result<Outcome, FlowError> {
    let hf = st.helmfile.clone().ok_or_else(|| FlowError::Kube {
        step: step.name().into(),
        detail: "helmfile not loaded (kube_api did not run)".into(),
        cause: "steps ran out of order".into(),
        next: "re-run up".into(),
    })?;
    let ordered: Vec<Release> = hf
        .ordered()
        .map_err(|e| charts_err(step, e))?
        .into_iter()
        .cloned()
        .collect();
    let Some(first) = ordered.first().cloned() else {
        return Ok(Outcome::Skipped {
            reason: "the helmfile has no releases".into(),
        });
    };
    let scratch = state_dir.join("charts");
    std::fs::create_dir_all(&scratch).map_err(|e| FlowError::Local {
        path: scratch.display().to_string(),
        detail: format!("cannot create: {e}"),
    })?;
    let mut all = Vec::new();
    let mut names = Vec::new();
    let in_group = |r: &Release| match group {
        Group::Cni => is_cni(r, &first),
        Group::Foundation => !is_cni(r, &first) && !is_flux_release(r),
        Group::Flux => is_flux_release(r),
    };
    for r in ordered.iter().filter(|r| in_group(r)) {
        let t0 = Instant::now();
        if r.name == "cilium" {
            let values = hf
                .merged_values(r, &scratch)
                .map_err(|e| charts_err(step, e))?;
            for w in lint::lint_cilium(&values) {
                em.progress(step, Some(&r.name), format!("WARNING: {w}"));
            }
        }
        let text = render(half, st, &hf, r, &scratch, step).await?;
        let mut objs = parse_manifests(&text, &format!("release {}", r.id()))
            .map_err(|e| kube_err(step, e))?;
        add_ownership(&mut objs, &r.name, &r.namespace);
        let applied = applier(st, step)?
            .apply_all(objs, &r.namespace)
            .await
            .map_err(|e| kube_err(step, e))?;
        report(em, step, &applied);
        let client = applier(st, step)?.client().clone();
        let installed = read_uids(&client, &applied)
            .await
            .map_err(|e| kube_err(step, e))?;
        st.installed.insert(r.id(), installed);
        em.waiting(step, Some(&r.name), format!("release {} healthy", r.id()));
        let waited = wait_all(&client, &applied, half.chart_deadline)
            .await
            .map_err(|e| kube_err(step, e))?;
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
    Ok(outcome(
        &format!("release(s) {}", names.join(", ")),
        Tally::of(&all),
    ))
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
            .map_err(|e| super::flux::api_err(e, &a.label(), "get"))?;
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

/// Preflight into the run's state (so later steps reuse helm and the helmfile).
pub async fn preflight_into(
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<(), FlowError> {
    let (helm, hf) = preflight(half, em).await?;
    st.helm = helm;
    st.helmfile = Some(hf);
    Ok(())
}

/// Plan lines of the Kubernetes half (reads local inputs only).
pub async fn plan_items(opts: &super::up::UpOptions) -> Vec<super::up::PlanItem> {
    let item = |step: StepId, acts: bool, action: String| super::up::PlanItem {
        step,
        node: None,
        acts,
        action,
    };
    let mut out = Vec::new();
    let Some(half) = &opts.kube else {
        for s in StepId::UP.into_iter().filter(|s| *s >= StepId::KubeApi) {
            out.push(item(
                s,
                false,
                "not run: no gitops repository given (--repo)".into(),
            ));
        }
        return out;
    };
    if opts.until < StepId::KubeApi {
        for s in StepId::UP.into_iter().filter(|s| *s >= StepId::KubeApi) {
            out.push(item(
                s,
                false,
                format!("not run: --until {}", opts.until.until_flag()),
            ));
        }
        return out;
    }
    let hf = Helmfile::load(&half.helmfile_path());
    out.push(item(
        StepId::KubeApi,
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
    ));
    out.push(item(
        StepId::NodesRegistered,
        false,
        "wait until every node is registered".into(),
    ));
    match namespace_names(&half.repo, hf.as_ref().ok()) {
        Ok(ns) => out.push(item(
            StepId::Namespaces,
            true,
            format!(
                "server-side apply {} namespace(s): {}",
                ns.len(),
                ns.join(", ")
            ),
        )),
        Err(e) => out.push(item(StepId::Namespaces, false, format!("REFUSE: {e}"))),
    }
    for s in &half.secrets {
        let present = half.repo.join(s).is_file();
        out.push(item(
            StepId::Secrets,
            present,
            if present {
                format!("decrypt {} and apply into flux-system", s.display())
            } else {
                format!("WARNING: {} missing; would be skipped", s.display())
            },
        ));
    }
    for c in &half.crds {
        out.push(item(
            StepId::Crds,
            true,
            format!("apply {} (wait Established)", c.name()),
        ));
    }
    match &hf {
        Ok(hf) => match hf.ordered() {
            Ok(rs) => {
                for r in rs.into_iter().filter(|r| !is_flux_release(r)) {
                    let step = if r.name == "cilium" {
                        StepId::Cni
                    } else {
                        StepId::Charts
                    };
                    out.push(item(
                        step,
                        true,
                        format!(
                            "release {} ({} {}) with Helm ownership metadata, wait healthy",
                            r.id(),
                            r.chart,
                            r.version.as_deref().unwrap_or("latest")
                        ),
                    ));
                    if r.name == "cilium" {
                        out.push(item(
                            StepId::NodesReady,
                            false,
                            "wait until every node is Ready".into(),
                        ));
                    }
                }
            }
            Err(e) => out.push(item(StepId::Charts, false, format!("REFUSE: {e}"))),
        },
        Err(e) => out.push(item(StepId::Charts, false, format!("REFUSE: {e}"))),
    }
    out.push(item(StepId::Layer1Done, false, "layer 1 done".into()));
    if opts.until > StepId::Layer1Done {
        let st = KubeState {
            helmfile: hf.ok(),
            ..KubeState::default()
        };
        out.extend(super::flux::plan_items(half, &st).await);
    }
    out
}
