//! Layer 2, the GitOps handoff:
//!
//! - `flux_secrets` checks Flux's inputs **before** Flux is installed: the
//!   Secrets every Kustomization decrypts and substitutes with exist in
//!   flux-system, and the age key in `sops-age` (read from the cluster, as
//!   kustomize-controller will) decrypts every SOPS file the walked graph
//!   builds and is a recipient of its `.sops.yaml` creation rule.
//! - `flux_install` is the chart path (src/flows/up/charts.rs).
//! - `flux_sync` waits, on watches, for the FluxInstance Ready, the
//!   `flux-system` GitRepository at the expected revision (the checkout's HEAD
//!   when `--repo` is a git checkout) and the `flux-system` and `cluster-meta`
//!   Kustomizations Ready at that revision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;

use crate::engine::{Emitter, FlowError, Outcome, PlanItem, StepId, Wait};
use crate::gitops::git::git_head;
use crate::gitops::Key;
use crate::kube::flux::{self as kflux, condition, ready_now, ready_text, str_at as s};
use crate::kube::KubeError;
use crate::sops::{AgeIdentities, SopsConfig};

use super::kube::{sync_spec, walk_graph};
use super::state::{gitops_plan_gate, plan_helmfile, secs, Up};

fn gitops_err(step: StepId, detail: String, cause: &str, next: &str) -> FlowError {
    FlowError::gitops(step, detail, cause, next)
}

pub async fn flux_secrets(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::FluxSecrets;
    let half = cx.half()?;
    let em = cx.em;
    let client = cx.kube.client(step)?;
    let g = cx.kube.graph(half)?;
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
            FlowError::kube(
                step,
                KubeError::from_kube(e, &format!("Secret flux-system/{name}"), "get"),
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
            let (cause, next) = match half.secret_file(name) {
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
                    half.secret_file(secret_name)
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
            let text = std::fs::read_to_string(&path)
                .map_err(|e| FlowError::local(&path, format!("cannot read: {e}")))?;
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
                        half.secret_file(secret_name)
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

/// What every wait of one step shares: client, deadline, event stream.
struct Waits<'a> {
    client: &'a Client,
    em: &'a Emitter,
    step: StepId,
    deadline: std::time::Duration,
    started: std::time::Instant,
}

/// Watches one object until `look` says done, or the step's deadline. Returns
/// the final description and whether it had to wait. Errors of the watch (the
/// kind not served yet, a dropped connection) are retried with backoff.
async fn watch_one(
    w: &Waits<'_>,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    mut look: impl FnMut(&Value) -> Look,
) -> Result<(String, bool), FlowError> {
    let Waits {
        client, em, step, ..
    } = *w;
    let what = format!("{} {ns}/{name}", ar.kind);
    let mut wait = Wait::new(
        what.clone(),
        "ready",
        w.deadline.saturating_sub(w.started.elapsed()),
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    wait.seen("not created yet");
    let mut looks = 0;
    loop {
        let next = wait.bounded(stream.next()).await;
        let obj = match next {
            None | Some(None) => {
                return Err(gitops_err(
                    step,
                    format!("{what} not ready in time; last status: {}", wait.last()),
                    "Flux did not get this far: the object's message above says why",
                    "inspect it (`kubectl -n flux-system describe`, `endsys-bootstrap status`), fix the cause, and run `up` again (it resumes here)",
                ))
            }
            Some(Some(Err(_))) => continue,
            Some(Some(Ok(o))) => o,
        };
        looks += 1;
        match look(&obj.data) {
            Look::Done(text) => return Ok((text, looks > 1)),
            Look::Wait(text) => {
                if wait.news(&text) {
                    em.waiting(step, None, format!("{what}: {text}"));
                }
                wait.seen(text);
            }
        }
    }
}

pub async fn flux_sync(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let step = StepId::FluxSync;
    let half = cx.half()?;
    let em = cx.em;
    let client = cx.kube.client(step)?;
    let spec = sync_spec(half, cx.kube.helmfile.as_ref());
    let waits = Waits {
        client: &client,
        em,
        step,
        deadline: half.flux_deadline,
        started: std::time::Instant::now(),
    };
    let mut waited = false;
    // The FluxInstance the flux-instance release applied.
    let fi_name = cx
        .kube
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
    let g = cx.kube.graph(half)?;
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

pub async fn plan_flux_secrets(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::FluxSecrets;
    let half = match gitops_plan_gate(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    let hf = plan_helmfile(cx).ok();
    let spec = sync_spec(half, hf.as_ref());
    vec![
        match walk_graph(&half.repo, &spec.path, half.layers.clone()) {
            Ok(g) => {
                let sops = g.nodes.values().filter(|n| n.sops_secret.is_some()).count();
                PlanItem::new(
                step,
                false,
                format!(
                    "check sops-age and cluster-secrets exist in flux-system and that the age key decrypts the SOPS files of {sops} decrypting Kustomization(s); refuse before Flux otherwise"
                ),
            )
            }
            Err(e) => PlanItem::new(step, false, format!("REFUSE: {e}")),
        },
    ]
}

pub async fn plan_flux_sync(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let step = StepId::FluxSync;
    let half = match gitops_plan_gate(cx, step) {
        Ok(h) => h,
        Err(lines) => return lines,
    };
    let hf = plan_helmfile(cx).ok();
    let spec = sync_spec(half, hf.as_ref());
    let head = match git_head(&half.repo) {
        Some((r, sha)) => format!("the checkout's HEAD {sha} ({r})"),
        None => "whatever Flux fetches (--repo is not a git checkout)".into(),
    };
    vec![PlanItem::new(
        step,
        false,
        format!(
            "wait (≤ {}) for the FluxInstance Ready, GitRepository flux-system/flux-system from {} {} at {head}, Kustomizations flux-system and cluster-meta Ready",
            secs(half.flux_deadline),
            if spec.url.is_empty() { "<url from the flux-instance values>" } else { &spec.url },
            spec.git_ref
        ),
    )]
}
