//! The Kubernetes half's inputs ([`KubeHalf`]: the gitops repository and how to
//! use it), its live state within one run ([`KubeState`]), and what the steps
//! read from the repository: namespaces, SOPS secrets, the Flux sync spec and
//! the Flux graph.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;
use serde_json::Value;

use crate::charts::helm::Helm;
use crate::charts::helmfile::{Helmfile, Release};
use crate::charts::ManifestSource;
use crate::engine::{Emitter, FlowError, StepId};
use crate::gitops::{walk, Graph, LayerMap};
use crate::kube::{parse_manifests, Applier};
use crate::sops::AgeIdentities;

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

/// Inputs of the Kubernetes half and the GitOps layers.
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
    pub layers: LayerMap,
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
            layers: LayerMap::endsys(),
            sync_path: None,
            flux_deadline: Duration::from_secs(10 * 60),
            gitops_deadline: Duration::from_secs(30 * 60),
        }
    }

    pub fn helmfile_path(&self) -> PathBuf {
        self.repo.join(&self.helmfile)
    }

    /// The repository file a Secret of flux-system comes from (the `secrets`
    /// step's list), by name.
    pub fn secret_file(&self, name: &str) -> Option<PathBuf> {
        self.secrets
            .iter()
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{name}.")))
            })
            .cloned()
    }
}

/// Live state of the Kubernetes half within one run.
#[derive(Default)]
pub struct KubeState {
    pub applier: Option<Applier>,
    pub kube_version: String,
    pub helm: Option<Helm>,
    pub helmfile: Option<Helmfile>,
    /// What each bootstrap release applied, with the UIDs read back right
    /// after (release id → objects): adoption compares them with the live ones.
    pub installed: std::collections::BTreeMap<String, Vec<Installed>>,
    /// The repository's Flux graph, walked once per run.
    pub graph: Option<Graph>,
}

impl KubeState {
    /// The apply engine (the `kube_api` step connects it).
    pub fn applier(&mut self, step: StepId) -> Result<&mut Applier, FlowError> {
        self.applier
            .as_mut()
            .ok_or_else(|| out_of_order(step, "no Kubernetes client (kube_api did not run)"))
    }

    pub fn client(&mut self, step: StepId) -> Result<Client, FlowError> {
        Ok(self.applier(step)?.client().clone())
    }

    /// The helmfile preflight loaded.
    pub fn helmfile(&self, step: StepId) -> Result<Helmfile, FlowError> {
        self.helmfile
            .clone()
            .ok_or_else(|| out_of_order(step, "helmfile not loaded (kube_api did not run)"))
    }

    /// The repository's Flux graph, walked on first use.
    pub fn graph(&mut self, half: &KubeHalf) -> Result<Graph, FlowError> {
        if let Some(g) = &self.graph {
            return Ok(g.clone());
        }
        let spec = sync_spec(half, self.helmfile.as_ref());
        let g = walk_graph(&half.repo, &spec.path, half.layers.clone())?;
        self.graph = Some(g.clone());
        Ok(g)
    }
}

fn out_of_order(step: StepId, detail: &str) -> FlowError {
    FlowError::step(step, detail.into(), "steps ran out of order", "re-run up")
}

/// One object a bootstrap release applied.
#[derive(Debug, Clone)]
pub struct Installed {
    pub resource: kube::api::ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// Which releases a chart step installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
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

/// The CNI release: `cilium` by name, else the first in `needs` order.
pub fn is_cni(r: &Release, first: &Release) -> bool {
    r.name == "cilium" || (r.id() == first.id() && r.name.contains("cni"))
}

impl Group {
    pub fn contains(self, r: &Release, first: &Release) -> bool {
        match self {
            Group::Cni => is_cni(r, first),
            Group::Foundation => !is_cni(r, first) && !is_flux_release(r),
            Group::Flux => is_flux_release(r),
        }
    }
}

/// Preflight of the Kubernetes half (before any node is touched): helm present
/// and recent, helmfile parses, values files exist. Keeps both in `st` for the
/// later steps.
pub async fn kube_preflight(
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<(), FlowError> {
    let step = StepId::Preflight;
    let hf = Helmfile::load(&half.helmfile_path()).map_err(|e| FlowError::charts(step, e))?;
    let scratch = std::env::temp_dir();
    for r in &hf.releases {
        hf.values_files(r, &scratch)
            .map_err(|e| FlowError::charts(step, e))?;
    }
    st.helm = match &half.renderer {
        Renderer::Helm(p) => {
            let h = Helm::find(p.as_deref())
                .await
                .map_err(|e| FlowError::charts(step, e))?;
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
    st.helmfile = Some(hf);
    Ok(())
}

// ---- the repository ------------------------------------------------------------------

/// One namespace per folder under kubernetes/apps/, plus flux-system and the
/// releases' namespaces.
pub fn namespace_names(repo: &Path, hf: Option<&Helmfile>) -> Result<Vec<String>, FlowError> {
    let apps = repo.join("kubernetes/apps");
    let mut names = std::collections::BTreeSet::new();
    let rd = std::fs::read_dir(&apps)
        .map_err(|e| FlowError::local(&apps, format!("cannot list: {e}")))?;
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
    let ids = identities.ok_or_else(|| {
        FlowError::step(
            step,
            format!("{}: no age identity to decrypt it", rel.display()),
            "no age key was found",
            "pass --age-key or set SOPS_AGE_KEY_FILE",
        )
    })?;
    let clear = crate::sops::decrypt_yaml(&text, ids, &path)
        .map_err(|e| FlowError::sops(step, rel.display().to_string(), e))?;
    let mut objs = parse_manifests(&clear, &rel.display().to_string())
        .map_err(|e| FlowError::kube(step, e))?;
    for o in &mut objs {
        o.metadata
            .namespace
            .get_or_insert_with(|| "flux-system".into());
    }
    Ok(Some(objs))
}

/// The sync path when neither `--sync-path` nor the flux-instance values say.
pub const DEFAULT_SYNC_PATH: &str = "kubernetes/flux/cluster";

/// What the flux-instance release's values say the FluxInstance syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSpec {
    pub url: String,
    pub git_ref: String,
    pub path: String,
}

/// The flux-instance release of the helmfile.
fn flux_instance_release(hf: &Helmfile) -> Option<&Release> {
    hf.releases.iter().find(|r| {
        is_flux_release(r)
            && (r.name == "flux-instance"
                || r.chart.trim_end_matches('/').ends_with("flux-instance"))
    })
}

/// The sync spec from the flux-instance values (`instance.sync.*`).
pub fn sync_spec(half: &KubeHalf, hf: Option<&Helmfile>) -> SyncSpec {
    let mut spec = SyncSpec {
        git_ref: "refs/heads/main".into(),
        path: DEFAULT_SYNC_PATH.into(),
        ..SyncSpec::default()
    };
    if let Some((hf, r)) = hf.and_then(|hf| Some((hf, flux_instance_release(hf)?))) {
        if let Ok(v) = hf.merged_values(r, &std::env::temp_dir()) {
            let get = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
            };
            if let Some(u) = get("/instance/sync/url") {
                spec.url = u;
            }
            if let Some(r) = get("/instance/sync/ref") {
                spec.git_ref = r;
            }
            if let Some(p) = get("/instance/sync/path") {
                spec.path = p;
            }
        }
    }
    if let Some(p) = &half.sync_path {
        spec.path = p.clone();
    }
    spec
}

/// The sync path for `--repo` without a run: the flux-instance values in its
/// helmfile, else [`DEFAULT_SYNC_PATH`].
pub fn repo_sync_path(half: &KubeHalf) -> String {
    let hf = Helmfile::load(&half.helmfile_path()).ok();
    sync_spec(half, hf.as_ref()).path
}

/// Walks the repository's Flux graph.
pub fn walk_graph(repo: &Path, sync_path: &str, layers: LayerMap) -> Result<Graph, FlowError> {
    walk(repo, sync_path, layers).map_err(|e| {
        FlowError::gitops(
            StepId::FluxSecrets,
            format!("cannot walk the Flux tree: {e}"),
            "the Flux tree in the repository cannot be read as kustomize-controller would build it",
            "fix the file named above (or pass --sync-path), then run `plan` to see the graph",
        )
    })
}
