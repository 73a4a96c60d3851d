//! `up` beyond layer 1: the GitOps handoff and the watch over layers 3–5.
//!
//! - `flux_secrets` checks Flux's inputs **before** Flux is installed: the
//!   Secrets every Kustomization decrypts and substitutes with exist in
//!   flux-system, and the age key in `sops-age` (read from the cluster, as
//!   kustomize-controller will) decrypts every SOPS file the walked graph
//!   builds and is a recipient of its `.sops.yaml` creation rule.
//! - `flux_install` is the chart path of layer 1 for flux-operator and
//!   flux-instance (src/orchestrator/layer1.rs, [`super::layer1::Group::Flux`]).
//! - `flux_sync` waits, on watches, for the FluxInstance Ready, the
//!   `flux-system` GitRepository at the expected revision (the checkout's HEAD
//!   when `--repo` is a git checkout) and the `flux-system` and `cluster-meta`
//!   Kustomizations Ready at that revision.
//! - `gitops` runs the [`Tracker`] until every layer is Ready, emitting one
//!   `layer_progress` event per layer whose count changed.
//! - `adoption` confirms Flux's helm-controller adopted each bootstrap release
//!   (same release name and namespace, the objects' UIDs unchanged).
//!
//! [`status`] is the tracker's one-shot view for the `status` verb.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;

use crate::charts::helmfile::Release;
use crate::gitops::{walk, Graph, Key, LayerMap, Progress, TrackError, Tracker};
use crate::kube::flux::{self as kflux, condition, str_at as s};
use crate::kube::KubeError;
use crate::sops::{AgeIdentities, SopsConfig};

use super::error::FlowError;
use super::events::{Emitter, Outcome, StepId};
use super::layer1::{applier, is_flux_release, KubeHalf, KubeState};

/// The sync path when neither `--sync-path` nor the flux-instance values say.
pub const DEFAULT_SYNC_PATH: &str = "kubernetes/flux/cluster";

/// A kube-rs error as the apply engine reports it (object and verb named).
pub(crate) fn api_err(e: kube::Error, object: &str, verb: &'static str) -> KubeError {
    match e {
        kube::Error::Api(s) => KubeError::Api {
            object: object.to_string(),
            verb,
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        other => KubeError::Transport {
            object: object.to_string(),
            verb,
            detail: other.to_string(),
        },
    }
}

fn gitops_err(step: StepId, detail: String, cause: &str, next: &str) -> FlowError {
    FlowError::Gitops {
        step: step.name().into(),
        detail,
        cause: cause.into(),
        next: next.into(),
    }
}

fn kube_failed(step: StepId, e: KubeError) -> FlowError {
    super::layer1::kube_err(step, e)
}

/// Ready=True for the current generation (the check Flux's own dependsOn does).
fn ready_now(v: &Value) -> bool {
    let generation = v.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = v
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    condition(v, "Ready").is_some_and(|c| c.0 == "True")
        && (generation.is_none() || generation == observed)
}

fn ready_text(v: &Value) -> String {
    match condition(v, "Ready") {
        Some((st, reason, msg)) => format!("Ready={st} {reason}: {msg}"),
        None => "no Ready condition yet (waiting to be reconciled)".into(),
    }
}

// ---- inputs from the repository ------------------------------------------------------

/// What the flux-instance release's values say the FluxInstance syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSpec {
    pub url: String,
    pub git_ref: String,
    pub path: String,
}

/// The flux-instance release of the helmfile.
fn flux_instance_release(st: &KubeState) -> Option<&Release> {
    st.helmfile.as_ref()?.releases.iter().find(|r| {
        is_flux_release(r)
            && (r.name == "flux-instance"
                || r.chart.trim_end_matches('/').ends_with("flux-instance"))
    })
}

/// The sync spec from the flux-instance values (`instance.sync.*`).
pub(crate) fn sync_spec(half: &KubeHalf, st: &KubeState) -> SyncSpec {
    let mut spec = SyncSpec {
        git_ref: "refs/heads/main".into(),
        path: DEFAULT_SYNC_PATH.into(),
        ..SyncSpec::default()
    };
    if let (Some(hf), Some(r)) = (st.helmfile.as_ref(), flux_instance_release(st)) {
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
    let st = KubeState {
        helmfile: crate::charts::helmfile::Helmfile::load(&half.helmfile_path()).ok(),
        ..KubeState::default()
    };
    sync_spec(half, &st).path
}

/// Walks the repository's Flux graph (once per run).
pub fn walk_graph(repo: &Path, sync_path: &str, layers: LayerMap) -> Result<Graph, FlowError> {
    walk(repo, sync_path, layers).map_err(|e| {
        gitops_err(
            StepId::FluxSecrets,
            format!("cannot walk the Flux tree: {e}"),
            "the Flux tree in the repository cannot be read as kustomize-controller would build it",
            "fix the file named above (or pass --sync-path), then run `plan` to see the graph",
        )
    })
}

fn graph<'a>(half: &KubeHalf, st: &'a mut KubeState) -> Result<&'a Graph, FlowError> {
    if st.graph.is_none() {
        let spec = sync_spec(half, st);
        st.graph = Some(walk_graph(&half.repo, &spec.path, half.layers.clone())?);
    }
    st.graph.as_ref().ok_or_else(|| {
        gitops_err(
            StepId::FluxSecrets,
            "no Flux graph".into(),
            "internal",
            "re-run",
        )
    })
}

/// The commit a git checkout's HEAD points at, read from `.git` directly
/// (loose refs, then packed-refs; worktrees' `gitdir:` files and `commondir`
/// followed). `None` when `repo` is not a git checkout. Returns (ref, sha).
pub fn git_head(repo: &Path) -> Option<(String, String)> {
    let dot = repo.join(".git");
    let gitdir = if dot.is_file() {
        let text = std::fs::read_to_string(&dot).ok()?;
        let p = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        if p.is_relative() {
            repo.join(p)
        } else {
            p
        }
    } else if dot.is_dir() {
        dot
    } else {
        return None;
    };
    let common = std::fs::read_to_string(gitdir.join("commondir"))
        .ok()
        .map(|c| {
            let p = PathBuf::from(c.trim());
            if p.is_relative() {
                gitdir.join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| gitdir.clone());
    let head = std::fs::read_to_string(gitdir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref:") else {
        // Detached HEAD: the commit itself.
        return is_sha(head).then(|| ("HEAD".to_string(), head.to_string()));
    };
    let r = r.trim().to_string();
    for dir in [&gitdir, &common] {
        if let Ok(sha) = std::fs::read_to_string(dir.join(&r)) {
            let sha = sha.trim();
            if is_sha(sha) {
                return Some((r, sha.to_string()));
            }
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (sha, name) = l.split_once(' ')?;
            (name.trim() == r && is_sha(sha)).then(|| (r.clone(), sha.to_string()))
        })
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

// ---- steps ---------------------------------------------------------------------------

/// Runs one of the steps after layer 1 (`flux_install` is the chart path).
pub(crate) async fn run_step(
    step: StepId,
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    match step {
        StepId::FluxSecrets => flux_secrets(half, st, em).await,
        StepId::FluxSync => flux_sync(half, st, em).await,
        StepId::Gitops => gitops(half, st, em).await,
        StepId::Adoption => adoption(half, st, em).await,
        _ => Ok(Outcome::Skipped {
            reason: "not a GitOps step".into(),
        }),
    }
}

fn client(st: &mut KubeState, step: StepId) -> Result<Client, FlowError> {
    Ok(applier(st, step)?.client().clone())
}

/// The repository file a Secret of flux-system comes from (the `secrets`
/// step's list), by name.
fn secret_file(half: &KubeHalf, name: &str) -> Option<PathBuf> {
    half.secrets
        .iter()
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{name}.")))
        })
        .cloned()
}

async fn flux_secrets(
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    let step = StepId::FluxSecrets;
    let client = client(st, step)?;
    let g = graph(half, st)?.clone();
    for p in &g.problems {
        em.progress(step, None, format!("WARNING: {p}"));
    }
    // Which Secrets the tree needs, and who needs them. sops-age and
    // cluster-secrets always: endsys's components expect both.
    let mut needed: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
    needed.entry("sops-age".into()).or_default();
    needed.entry("cluster-secrets".into()).or_default();
    for n in g.nodes.values() {
        for name in n.sops_secret.iter().chain(n.substitute_from.iter()) {
            needed
                .entry(name.clone())
                .or_default()
                .insert(n.key.clone());
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client, "flux-system");
    let mut found: BTreeMap<String, Secret> = BTreeMap::new();
    for (name, users) in &needed {
        let got = secrets.get_opt(name).await.map_err(|e| {
            kube_failed(
                step,
                api_err(e, &format!("Secret flux-system/{name}"), "get"),
            )
        })?;
        let Some(secret) = got else {
            let users: Vec<String> = users.iter().map(Key::to_string).collect();
            let who = if users.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} Kustomization(s) need it: {}",
                    users.len(),
                    users.join(", ")
                )
            };
            let (cause, next) = match secret_file(half, name) {
                Some(f) if !half.repo.join(&f).is_file() => (
                    format!("{} is missing from the repository (the secrets step warned and skipped it)", f.display()),
                    format!("create {} (sops-encrypted for the .sops.yaml recipients), then run `up` again; Flux was not installed", f.display()),
                ),
                Some(f) => (
                    format!("{} does not define a Secret named {name}", f.display()),
                    format!("fix the Secret's name in {}, then run `up` again; Flux was not installed", f.display()),
                ),
                None => (
                    format!("no SOPS file the secrets step applies defines {name}"),
                    "add the file that defines it to the secrets the bootstrap applies, then run `up` again; Flux was not installed".into(),
                ),
            };
            return Err(gitops_err(
                step,
                format!("Secret flux-system/{name} does not exist{who}"),
                &cause,
                &next,
            ));
        };
        em.progress(step, None, format!("Secret flux-system/{name} present"));
        found.insert(name.clone(), secret);
    }
    // The age key Flux will decrypt with, as it will read it.
    let mut checked = 0;
    let mut recipients_seen = BTreeSet::new();
    let sops_cfg_path = half.repo.join(".sops.yaml");
    let sops_cfg = if sops_cfg_path.is_file() {
        Some(SopsConfig::load(&sops_cfg_path).map_err(|e| {
            gitops_err(
                step,
                format!("{e}"),
                "the repository's .sops.yaml cannot be read",
                "fix .sops.yaml",
            )
        })?)
    } else {
        em.progress(
            step,
            None,
            "WARNING: no .sops.yaml in the repository: the key is not checked against creation rules",
        );
        None
    };
    let decrypting: BTreeMap<&String, Vec<&crate::gitops::KsNode>> =
        g.nodes.values().fold(BTreeMap::new(), |mut m, n| {
            if let Some(sec) = &n.sops_secret {
                m.entry(sec).or_default().push(n);
            }
            m
        });
    for (secret_name, nodes) in decrypting {
        let secret = found.get(secret_name);
        // The API returns `data`; the lab keeps `stringData` as applied.
        let key_text = secret
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get("age.agekey"))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .or_else(|| {
                secret
                    .and_then(|s| s.string_data.as_ref())
                    .and_then(|d| d.get("age.agekey"))
                    .cloned()
            });
        let Some(key_text) = key_text else {
            return Err(gitops_err(
                step,
                format!("Secret flux-system/{secret_name} has no `age.agekey` entry"),
                "kustomize-controller reads the age identity from the key `age.agekey`",
                &format!(
                    "put the age identity (AGE-SECRET-KEY-1…) under stringData.age.agekey in {}, then run `up` again; Flux was not installed",
                    secret_file(half, secret_name)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| format!("the file defining {secret_name}"))
                ),
            ));
        };
        let ids = AgeIdentities::parse(
            &key_text,
            &format!("Secret flux-system/{secret_name} (age.agekey)"),
        )
        .map_err(|e| {
            gitops_err(
                step,
                e.to_string(),
                "the Secret does not hold a usable age identity",
                "fix the age key in the Secret's SOPS file, then run `up` again; Flux was not installed",
            )
        })?;
        let ours = ids.recipient_strings();
        recipients_seen.extend(ours.iter().cloned());
        // Every SOPS document the Kustomizations using this Secret build.
        let mut files: BTreeMap<PathBuf, Key> = BTreeMap::new();
        for n in nodes {
            let Some(path) = &n.path else { continue };
            let dir = half.repo.join(path);
            if !dir.is_dir() {
                continue; // A graph problem, reported above.
            }
            let docs = crate::gitops::walk::build_docs(&half.repo, &dir).map_err(|e| {
                gitops_err(
                    step,
                    format!("Kustomization {}: {e}", n.key),
                    "the Flux tree cannot be built",
                    "fix the file named above",
                )
            })?;
            for (doc, loc, _) in docs {
                if doc.get("sops").is_some() {
                    files.entry(loc.file).or_insert_with(|| n.key.clone());
                }
            }
        }
        for (rel, user) in &files {
            let path = half.repo.join(rel);
            let text = std::fs::read_to_string(&path).map_err(|e| FlowError::Local {
                path: path.display().to_string(),
                detail: format!("cannot read: {e}"),
            })?;
            if let Err(e) = crate::sops::decrypt_yaml(&text, &ids, rel) {
                return Err(gitops_err(
                    step,
                    format!(
                        "{} (built by Kustomization {user}) does not decrypt with the key in Secret flux-system/{secret_name}: {e}",
                        rel.display()
                    ),
                    &format!(
                        "Secret {secret_name} holds another age key than the one {} is encrypted for (or the file is damaged); Flux would fail this Kustomization and everything that depends on it",
                        rel.display()
                    ),
                    &format!(
                        "put the matching key into {} or re-encrypt {} for the key's recipient (`sops updatekeys`), then run `up` again; Flux was not installed",
                        secret_file(half, secret_name)
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| format!("the Secret {secret_name}")),
                        rel.display()
                    ),
                ));
            }
            if let Some(cfg) = &sops_cfg {
                let rule = cfg.rule_for(&path).map_err(|e| {
                    gitops_err(
                        step,
                        e.to_string(),
                        "no .sops.yaml creation rule covers this file",
                        "add a creation rule for it to .sops.yaml",
                    )
                })?;
                let rule_recipients: Vec<String> =
                    rule.recipients.iter().map(|r| r.to_string()).collect();
                if !ours.iter().any(|o| rule_recipients.contains(o)) {
                    return Err(gitops_err(
                        step,
                        format!(
                            "{}: the key in Secret flux-system/{secret_name} ({}) is not a recipient of its .sops.yaml creation rule ({})",
                            rel.display(),
                            ours.join(", "),
                            rule_recipients.join(", ")
                        ),
                        "files encrypted from now on (sops follows .sops.yaml) would not decrypt in the cluster",
                        "make the cluster's age key a recipient in .sops.yaml (and `sops updatekeys` the files), then run `up` again; Flux was not installed",
                    ));
                }
            }
            em.progress(
                step,
                None,
                format!(
                    "{} decrypts with Secret flux-system/{secret_name}",
                    rel.display()
                ),
            );
            checked += 1;
        }
    }
    let recips: Vec<String> = recipients_seen.into_iter().collect();
    Ok(Outcome::Done {
        detail: format!(
            "{} present in flux-system; age key {} decrypts {checked} SOPS file(s) under the Flux paths{}",
            needed.keys().cloned().collect::<Vec<_>>().join(", "),
            recips.join(", "),
            if sops_cfg.is_some() {
                " and matches .sops.yaml"
            } else {
                ""
            }
        ),
    })
}

/// How one look at a watched object went.
enum Look {
    Done(String),
    Wait(String),
}

/// Watches one object until `look` says done, or `deadline`. Returns the
/// final description and whether it had to wait. Errors of the watch (the
/// kind not served yet, a dropped connection) are retried with backoff.
/// What every wait of one step shares: client, deadline, event stream.
#[derive(Clone, Copy)]
struct Waits<'a> {
    client: &'a Client,
    until: tokio::time::Instant,
    em: &'a Emitter,
    step: StepId,
}

async fn watch_one(
    w: &Waits<'_>,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    mut look: impl FnMut(&Value) -> Look,
) -> Result<(String, bool), FlowError> {
    let Waits {
        client,
        until,
        em,
        step,
    } = *w;
    let what = format!("{} {ns}/{name}", ar.kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last = "not created yet".to_string();
    let mut looks = 0;
    loop {
        let next = tokio::time::timeout_at(until, stream.next()).await;
        let obj = match next {
            Err(_) | Ok(None) => {
                return Err(gitops_err(
                    step,
                    format!("{what} not ready in time; last status: {last}"),
                    "Flux did not get this far: the object's message above says why",
                    "inspect it (`kubectl -n flux-system describe`, `endsys-bootstrap status`), fix the cause, and run `up` again (it resumes here)",
                ))
            }
            Ok(Some(Err(_))) => continue,
            Ok(Some(Ok(o))) => o,
        };
        looks += 1;
        match look(&obj.data) {
            Look::Done(text) => return Ok((text, looks > 1)),
            Look::Wait(text) => {
                if text != last {
                    em.waiting(step, None, format!("{what}: {text}"));
                    last = text;
                }
            }
        }
    }
}

async fn flux_sync(
    half: &KubeHalf,
    st: &mut KubeState,
    em: &Emitter,
) -> Result<Outcome, FlowError> {
    let step = StepId::FluxSync;
    let client = client(st, step)?;
    let spec = sync_spec(half, st);
    let waits = Waits {
        client: &client,
        until: tokio::time::Instant::now() + half.flux_deadline,
        em,
        step,
    };
    let mut waited = false;
    // The FluxInstance the flux-instance release applied.
    let fi_name = st
        .installed
        .values()
        .flatten()
        .find(|o| o.resource.kind == "FluxInstance")
        .map(|o| {
            (
                o.namespace.clone().unwrap_or_else(|| "flux-system".into()),
                o.name.clone(),
            )
        })
        .unwrap_or_else(|| ("flux-system".into(), "flux".into()));
    let (fi_text, w) = watch_one(
        &waits,
        &kflux::fluxinstances(),
        &fi_name.0,
        &fi_name.1,
        |v| {
            if condition(v, "Stalled").is_some_and(|c| c.0 == "True") || !ready_now(v) {
                Look::Wait(ready_text(v))
            } else {
                let rev = s(v, "/status/lastAppliedRevision");
                Look::Done(format!(
                    "FluxInstance {}/{} Ready (distribution {})",
                    fi_name.0,
                    fi_name.1,
                    if rev.is_empty() { "applied" } else { rev }
                ))
            }
        },
    )
    .await?;
    waited |= w;
    em.progress(step, None, fi_text.clone());
    // The sync source: flux-operator names it after the namespace by default.
    let expected = git_head(&half.repo);
    if let Some((r, sha)) = &expected {
        em.progress(
            step,
            None,
            format!("local checkout HEAD: {r} at {sha} (Flux must fetch this commit)"),
        );
        if r != "HEAD" && *r != spec.git_ref {
            em.progress(
                step,
                None,
                format!(
                    "WARNING: the checkout is on {r}, the FluxInstance syncs {}",
                    spec.git_ref
                ),
            );
        }
    }
    let (src_text, w) = watch_one(
        &waits,
        &kflux::gitrepositories(),
        "flux-system",
        "flux-system",
        |v| {
            let rev = s(v, "/status/artifact/revision");
            if !ready_now(v) || rev.is_empty() {
                return Look::Wait(ready_text(v));
            }
            match &expected {
                Some((_, sha)) if !rev.ends_with(sha.as_str()) => Look::Wait(format!(
                    "Flux fetched {rev}, the local checkout is at {sha} (commits not pushed, or another branch?)"
                )),
                Some(_) => Look::Done(format!("{rev} (= local HEAD)")),
                None => Look::Done(format!("{rev} (what Flux fetched; --repo is not a git checkout)")),
            }
        },
    )
    .await?;
    waited |= w;
    em.progress(
        step,
        None,
        format!("GitRepository flux-system/flux-system at {src_text}"),
    );
    let revision = src_text.split(' ').next().unwrap_or_default().to_string();
    // flux-system, then cluster-meta (when the tree has one).
    let mut ready = Vec::new();
    let g = graph(half, st)?.clone();
    let mut ks = vec![Key::new("flux-system", "flux-system")];
    let meta = Key::new("flux-system", "cluster-meta");
    if g.nodes.contains_key(&meta) {
        ks.push(meta);
    }
    for k in ks {
        let rev = revision.clone();
        let (text, w) = watch_one(
            &waits,
            &kflux::kustomizations(),
            &k.namespace,
            &k.name,
            |v| {
                let applied = s(v, "/status/lastAppliedRevision");
                if !ready_now(v) {
                    Look::Wait(ready_text(v))
                } else if applied != rev {
                    Look::Wait(format!("applied {applied}, the source is at {rev}"))
                } else {
                    Look::Done(format!("Kustomization {} Ready at {applied}", k))
                }
            },
        )
        .await?;
        waited |= w;
        em.progress(step, None, text);
        ready.push(k.to_string());
    }
    let detail = format!(
        "{fi_text}; source flux-system/flux-system at {src_text}; {} Ready",
        ready.join(", ")
    );
    Ok(if waited {
        Outcome::Done { detail }
    } else {
        Outcome::Skipped {
            reason: format!("already synced: {detail}"),
        }
    })
}

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

fn track_err(step: StepId, e: TrackError) -> FlowError {
    let (cause, next) = match &e {
        TrackError::Failed { .. } => (
            "Flux stopped retrying: an object is Stalled or its HelmRelease failed terminally (above, with its message)",
            "fix the cause in Git and push (or `flux reconcile` after fixing it in the cluster), then run `up` again: it resumes at this step",
        ),
        TrackError::Deadline { .. } => (
            "the objects above are not Ready yet; everything listed after `blocks` waits on them",
            "read the blocking object's message, fix it in Git and push, then run `up` again (it resumes here); `endsys-bootstrap status` shows the live view meanwhile; a longer --gitops-timeout helps only if it is merely slow",
        ),
        TrackError::Kube { .. } => (
            "the Flux objects cannot be listed or watched (Flux CRDs missing, API unreachable)",
            "check the API server and that Flux is installed, then run `up` again",
        ),
    };
    gitops_err(step, e.to_string(), cause, next)
}

async fn gitops(half: &KubeHalf, st: &mut KubeState, em: &Emitter) -> Result<Outcome, FlowError> {
    let step = StepId::Gitops;
    let client = client(st, step)?;
    let g = graph(half, st)?.clone();
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
        .map_err(|e| track_err(step, e))?;
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

async fn adoption(half: &KubeHalf, st: &mut KubeState, em: &Emitter) -> Result<Outcome, FlowError> {
    let step = StepId::Adoption;
    let _ = half; // Releases come from the helmfile the run loaded.
    let client = client(st, step)?;
    let releases: Vec<Release> = st
        .helmfile
        .as_ref()
        .map(|h| h.releases.clone())
        .unwrap_or_default();
    let hrs: Api<DynamicObject> = Api::all_with(client.clone(), &kflux::helmreleases());
    let list = hrs
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_failed(step, api_err(e, "HelmReleases", "list")))?;
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

// ---- status ----------------------------------------------------------------------------

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
        .map_err(|e| kube_failed(step, e))?;
    let mut tracker = Tracker::new(client, layers);
    if let Some(g) = graph {
        tracker = tracker.expect(g);
    }
    tracker.snapshot().await.map_err(|e| track_err(step, e))
}

/// A deadline shown in plans.
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

// ---- plan ------------------------------------------------------------------------------

/// Plan lines of layers 2–5 (reads local inputs only).
pub async fn plan_items(half: &KubeHalf, st: &KubeState) -> Vec<super::up::PlanItem> {
    let item = |step: StepId, acts: bool, action: String| super::up::PlanItem {
        step,
        node: None,
        acts,
        action,
    };
    let spec = sync_spec(half, st);
    let mut out = Vec::new();
    let graph = walk_graph(&half.repo, &spec.path, half.layers.clone());
    match &graph {
        Ok(g) => {
            let sops = g.nodes.values().filter(|n| n.sops_secret.is_some()).count();
            out.push(item(
                StepId::FluxSecrets,
                false,
                format!(
                    "check sops-age and cluster-secrets exist in flux-system and that the age key decrypts the SOPS files of {sops} decrypting Kustomization(s); refuse before Flux otherwise"
                ),
            ));
        }
        Err(e) => out.push(item(StepId::FluxSecrets, false, format!("REFUSE: {e}"))),
    }
    if let Some(hf) = &st.helmfile {
        for r in hf.releases.iter().filter(|r| is_flux_release(r)) {
            out.push(item(
                StepId::FluxInstall,
                true,
                format!(
                    "release {} ({} {}) with Helm ownership metadata, wait healthy",
                    r.id(),
                    r.chart,
                    r.version.as_deref().unwrap_or("latest")
                ),
            ));
        }
    }
    let head = match git_head(&half.repo) {
        Some((r, sha)) => format!("the checkout's HEAD {sha} ({r})"),
        None => "whatever Flux fetches (--repo is not a git checkout)".into(),
    };
    out.push(item(
        StepId::FluxSync,
        false,
        format!(
            "wait (≤ {}) for the FluxInstance Ready, GitRepository flux-system/flux-system from {} {} at {head}, Kustomizations flux-system and cluster-meta Ready",
            secs(half.flux_deadline),
            if spec.url.is_empty() { "<url from the flux-instance values>" } else { &spec.url },
            spec.git_ref
        ),
    ));
    if let Ok(g) = &graph {
        let mut per: BTreeMap<u8, usize> = BTreeMap::new();
        for k in g.nodes.keys() {
            *per.entry(g.layer_of(k)).or_default() += 1;
        }
        let counts: Vec<String> = (1..=5u8)
            .map(|l| format!("layer {l}: {}", per.get(&l).copied().unwrap_or(0)))
            .collect();
        out.push(item(
            StepId::Gitops,
            false,
            format!(
                "watch {} Kustomizations and their HelmReleases until every layer is Ready (≤ {}; {})",
                g.nodes.len(),
                secs(half.gitops_deadline),
                counts.join(", ")
            ),
        ));
    }
    out.push(item(
        StepId::Adoption,
        false,
        "confirm Flux adopted each bootstrap release (HelmRelease history = helmfile name and namespace, UIDs unchanged)".into(),
    ));
    out
}
