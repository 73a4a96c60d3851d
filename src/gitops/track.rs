//! Follows the live Flux Kustomizations and HelmReleases (the live graph is the
//! truth) and reports readiness per layer the way Flux's own `dependsOn` decides
//! that a dependency is ready (fluxcd/kustomize-controller v1.9.4
//! `internal/controller/kustomization_controller.go`, `checkDependencies`; the
//! HelmRelease check in helm-controller v1.6.3 is the same without the revision):
//! conditions present, `Ready=True`, `observedGeneration == generation`, and for
//! Kustomizations `lastAppliedRevision` equal to the source's artifact revision
//! when that is known. `Stalled=True` (Flux sets it only for terminal problems,
//! e.g. a HelmRelease's `RetriesExceeded`), or a terminal HelmRelease reason,
//! fails fast. kstatus (`sigs.k8s.io/cli-utils`) is not used: it ignores `Ready`
//! on custom kinds.
//!
//! Everything comes from watches (dynamic API, no CRD crates): nothing polls,
//! and nothing is recomputed while nothing changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use endsys_core::Doctor;
use futures::{stream, FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;

use super::{Graph, Key, LayerMap, LAYER_NAMES};
use crate::kube::flux::{self, condition, str_at as s};

/// Which Flux object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Kustomization,
    HelmRelease,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kustomization => "Kustomization",
            Kind::HelmRelease => "HelmRelease",
        })
    }
}

/// Readiness of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Ready,
    /// Not (yet) Ready; Flux keeps retrying.
    Waiting,
    /// Stalled or terminally failed: Flux will not get further by itself.
    Failed,
}

/// One live object and what it waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub key: Key,
    pub layer: u8,
    pub state: ItemState,
    /// Reason and message of the condition that decided the state.
    pub reason: String,
    pub message: String,
    /// `spec.dependsOn`, namespace-resolved (same kind).
    pub depends_on: Vec<Key>,
    /// The dependencies that are not Ready.
    pub waiting_on: Vec<Key>,
    /// Objects of the same kind that depend on this one, transitively (filled
    /// in for blockers: objects not Ready whose dependencies all are).
    pub dependents: Vec<Key>,
    /// For a HelmRelease: the Kustomization that applied it.
    pub owner: Option<Key>,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (layer {})", self.kind, self.key, self.layer)?;
        if !self.reason.is_empty() || !self.message.is_empty() {
            write!(f, ": {}: {}", self.reason, self.message)?;
        }
        if !self.waiting_on.is_empty() {
            let w: Vec<String> = self.waiting_on.iter().map(Key::to_string).collect();
            write!(f, "; waits on {}", w.join(", "))?;
        }
        if !self.dependents.is_empty() {
            let w: Vec<String> = self.dependents.iter().map(Key::to_string).collect();
            write!(f, "; blocks {}", w.join(", "))?;
        }
        Ok(())
    }
}

/// One layer's count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub layer: u8,
    pub name: &'static str,
    pub ready: usize,
    pub total: usize,
    /// Not-Ready objects of this layer (`kind ns/name`).
    pub waiting: Vec<String>,
}

/// The per-layer view (`up` progress, `status`, and failure reports).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    pub items: Vec<Item>,
    pub layers: Vec<LayerProgress>,
    /// Kustomizations the plan expects that do not exist in the cluster yet.
    pub missing: Vec<Key>,
}

impl Progress {
    pub fn all_ready(&self) -> bool {
        !self.items.is_empty()
            && self.missing.is_empty()
            && self.items.iter().all(|i| i.state == ItemState::Ready)
    }

    pub fn failed(&self) -> Vec<&Item> {
        self.items
            .iter()
            .filter(|i| i.state == ItemState::Failed)
            .collect()
    }

    /// Objects that are not Ready although everything they depend on is: where
    /// the waiting starts (the head of each critical path).
    pub fn blocking(&self) -> Vec<&Item> {
        self.items
            .iter()
            .filter(|i| i.state != ItemState::Ready && i.waiting_on.is_empty())
            .collect()
    }

    /// A short summary per layer, one line each, plus the blockers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.layers {
            out.push_str(&format!(
                "Layer {} {}: {} of {} Ready",
                l.layer, l.name, l.ready, l.total
            ));
            if !l.waiting.is_empty() {
                let shown: Vec<&str> = l.waiting.iter().take(5).map(String::as_str).collect();
                out.push_str(&format!("; waiting: {}", shown.join(", ")));
                if l.waiting.len() > 5 {
                    out.push_str(&format!(" and {} more", l.waiting.len() - 5));
                }
            }
            out.push('\n');
        }
        if !self.missing.is_empty() {
            let m: Vec<String> = self.missing.iter().map(Key::to_string).collect();
            out.push_str(&format!("Not in the cluster yet: {}\n", m.join(", ")));
        }
        for i in self.blocking() {
            out.push_str(&format!("  {i}\n"));
        }
        out
    }

    /// Progress counts only, to tell whether anything worth reporting changed.
    fn signature(&self) -> Vec<(u8, usize, usize)> {
        self.layers
            .iter()
            .map(|l| (l.layer, l.ready, l.total))
            .collect()
    }
}

/// Why tracking ended without every layer Ready.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{}", failure_report("Flux failed", .progress))]
    Failed { progress: Progress },
    #[error("{}", failure_report(&format!("not Ready after {:?}", .after), .progress))]
    Deadline { after: Duration, progress: Progress },
    #[error("listing {kind}s: {source}")]
    Kube {
        kind: Kind,
        #[source]
        source: kube::Error,
    },
}

impl TrackError {
    pub fn progress(&self) -> Option<&Progress> {
        match self {
            TrackError::Failed { progress } | TrackError::Deadline { progress, .. } => {
                Some(progress)
            }
            TrackError::Kube { .. } => None,
        }
    }
}

impl Doctor for TrackError {
    fn likely_cause(&self) -> String {
        match self {
            TrackError::Failed { .. } => "Flux stopped retrying: an object is Stalled or its HelmRelease failed terminally (above, with its message)",
            TrackError::Deadline { .. } => "the objects above are not Ready yet; everything listed after `blocks` waits on them",
            TrackError::Kube { .. } => "the Flux objects cannot be listed or watched (Flux CRDs missing, API unreachable)",
        }
        .into()
    }

    fn next_action(&self) -> String {
        match self {
            TrackError::Failed { .. } => "fix the cause in Git and push (or `flux reconcile` after fixing it in the cluster), then run `up` again: it resumes at this step",
            TrackError::Deadline { .. } => "read the blocking object's message, fix it in Git and push, then run `up` again (it resumes here); `endsys-bootstrap status` shows the live view meanwhile; a longer --gitops-timeout helps only if it is merely slow",
            TrackError::Kube { .. } => "check the API server and that Flux is installed, then run `up` again",
        }
        .into()
    }
}

fn failure_report(head: &str, p: &Progress) -> String {
    let mut out = format!("{head}:\n");
    let failed = p.failed();
    let list = if failed.is_empty() {
        p.blocking()
    } else {
        failed
    };
    for i in list {
        out.push_str(&format!("  {i}\n"));
    }
    if !p.missing.is_empty() {
        let m: Vec<String> = p.missing.iter().map(Key::to_string).collect();
        out.push_str(&format!("  never created: {}\n", m.join(", ")));
    }
    out.push_str(&p.render());
    out
}

/// What the tracker keeps of a live object (small, so 500 of them stay cheap).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Obj {
    generation: i64,
    observed: i64,
    has_conditions: bool,
    ready: Option<(String, String, String)>,
    stalled: Option<(String, String)>,
    last_applied: String,
    source: Option<Key>,
    depends_on: Vec<Key>,
    owner: Option<Key>,
    suspended: bool,
}

fn summarize(kind: Kind, o: &DynamicObject) -> (Key, Obj) {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let key = Key::new(ns.clone(), o.metadata.name.clone().unwrap_or_default());
    let v = &o.data;
    let depends_on = v
        .pointer("/spec/dependsOn")
        .and_then(Value::as_array)
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    let dns = s(d, "/namespace");
                    Key::new(if dns.is_empty() { &ns } else { dns }, s(d, "/name"))
                })
                .collect()
        })
        .unwrap_or_default();
    let source = (kind == Kind::Kustomization && s(v, "/spec/sourceRef/kind") == "GitRepository")
        .then(|| {
            let sns = s(v, "/spec/sourceRef/namespace");
            Key::new(
                if sns.is_empty() { &ns } else { sns },
                s(v, "/spec/sourceRef/name"),
            )
        });
    let labels = o.metadata.labels.as_ref();
    let owner = labels.and_then(|l| {
        Some(Key::new(
            l.get("kustomize.toolkit.fluxcd.io/namespace")?.clone(),
            l.get("kustomize.toolkit.fluxcd.io/name")?.clone(),
        ))
    });
    let obj = Obj {
        generation: o.metadata.generation.unwrap_or(0),
        observed: v
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(-1),
        has_conditions: v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty()),
        ready: condition(v, "Ready"),
        stalled: condition(v, "Stalled")
            .filter(|c| c.0 == "True")
            .map(|c| (c.1, c.2)),
        last_applied: s(v, "/status/lastAppliedRevision").to_string(),
        source,
        depends_on,
        owner,
        suspended: v.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true),
    };
    (key, obj)
}

/// HelmRelease reasons after which helm-controller stops trying.
const TERMINAL_HR_REASONS: &[&str] = &["RetriesExceeded", "MissingRollbackTarget"];

/// Flux readiness of one object: (state, reason, message).
fn assess(kind: Kind, o: &Obj, sources: &BTreeMap<Key, String>) -> (ItemState, String, String) {
    if let Some((reason, msg)) = &o.stalled {
        return (ItemState::Failed, reason.clone(), msg.clone());
    }
    if o.suspended {
        return (
            ItemState::Waiting,
            "Suspended".into(),
            "reconciliation is suspended".into(),
        );
    }
    if !o.has_conditions {
        return (
            ItemState::Waiting,
            String::new(),
            "waiting to be reconciled".into(),
        );
    }
    let (status, reason, msg) = o.ready.clone().unwrap_or_default();
    if kind == Kind::HelmRelease && status == "False" && TERMINAL_HR_REASONS.contains(&&*reason) {
        return (ItemState::Failed, reason, msg);
    }
    if status != "True" {
        return (ItemState::Waiting, reason, msg);
    }
    if o.generation != o.observed {
        return (
            ItemState::Waiting,
            reason,
            format!(
                "generation {} not observed yet (observedGeneration {})",
                o.generation, o.observed
            ),
        );
    }
    if let Some(rev) = o.source.as_ref().and_then(|k| sources.get(k)) {
        if !rev.is_empty() && &o.last_applied != rev {
            return (
                ItemState::Waiting,
                reason,
                format!(
                    "applied revision {:?}, source is at {rev:?}",
                    o.last_applied
                ),
            );
        }
    }
    (ItemState::Ready, reason, msg)
}

/// The live world as the watches last saw it.
#[derive(Default)]
struct World {
    ks: BTreeMap<Key, Obj>,
    hr: BTreeMap<Key, Obj>,
    /// GitRepository → artifact revision (when Ready).
    git: BTreeMap<Key, String>,
}

impl World {
    fn progress(&self, layers: &LayerMap, expected: &[Key]) -> Progress {
        let mut items = Vec::new();
        let mut state: BTreeMap<(Kind, &Key), ItemState> = BTreeMap::new();
        let mut assessed = Vec::new();
        for (kind, map) in [
            (Kind::Kustomization, &self.ks),
            (Kind::HelmRelease, &self.hr),
        ] {
            for (k, o) in map {
                let a = assess(kind, o, &self.git);
                state.insert((kind, k), a.0);
                assessed.push((kind, k, o, a));
            }
        }
        // Reverse edges, for dependents.
        let mut rev: BTreeMap<(Kind, &Key), Vec<&Key>> = BTreeMap::new();
        for (kind, k, o, _) in &assessed {
            for d in &o.depends_on {
                rev.entry((*kind, d)).or_default().push(k);
            }
        }
        for (kind, k, o, (st, reason, message)) in assessed {
            let waiting_on: Vec<Key> = o
                .depends_on
                .iter()
                .filter(|d| state.get(&(kind, *d)) != Some(&ItemState::Ready))
                .cloned()
                .collect();
            // Dependents only where reports need them (the blockers): the
            // transitive walk is quadratic over long chains.
            let mut dependents = BTreeSet::new();
            let blocker = st != ItemState::Ready && waiting_on.is_empty();
            let mut todo = if blocker { vec![k] } else { vec![] };
            while let Some(x) = todo.pop() {
                for y in rev.get(&(kind, x)).cloned().unwrap_or_default() {
                    if dependents.insert(y.clone()) {
                        todo.push(y);
                    }
                }
            }
            let layer = match (kind, &o.owner) {
                (Kind::HelmRelease, Some(owner)) if !layers.is_mapped(k) => layers.layer(owner),
                _ => layers.layer(k),
            };
            items.push(Item {
                kind,
                key: k.clone(),
                layer,
                state: st,
                reason,
                message,
                depends_on: o.depends_on.clone(),
                waiting_on,
                dependents: dependents.into_iter().collect(),
                owner: o.owner.clone(),
            });
        }
        let missing: Vec<Key> = expected
            .iter()
            .filter(|k| !self.ks.contains_key(*k))
            .cloned()
            .collect();
        let layers = (1..=5u8)
            .map(|l| {
                let of: Vec<&Item> = items.iter().filter(|i| i.layer == l).collect();
                let missing_here = missing.iter().filter(|k| layers.layer(k) == l).count();
                LayerProgress {
                    layer: l,
                    name: LAYER_NAMES[(l - 1) as usize],
                    ready: of.iter().filter(|i| i.state == ItemState::Ready).count(),
                    total: of.len() + missing_here,
                    waiting: of
                        .iter()
                        .filter(|i| i.state != ItemState::Ready)
                        .map(|i| format!("{} {}", i.kind, i.key))
                        .collect(),
                }
            })
            .collect();
        Progress {
            items,
            layers,
            missing,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Src {
    Ks,
    Hr,
    Git,
}

/// Follows Flux in one cluster.
#[derive(Clone)]
pub struct Tracker {
    client: Client,
    layers: LayerMap,
    expected: Vec<Key>,
}

impl Tracker {
    pub fn new(client: Client, layers: LayerMap) -> Tracker {
        Tracker {
            client,
            layers,
            expected: vec![],
        }
    }

    /// Also wait for every Kustomization of the plan to exist.
    pub fn expect(mut self, graph: &Graph) -> Tracker {
        self.expected = graph.nodes.keys().cloned().collect();
        self
    }

    /// The per-layer view right now (`status`), from one LIST of each kind.
    pub async fn snapshot(&self) -> Result<Progress, TrackError> {
        let mut w = World::default();
        for (kind, ar) in [
            (Kind::Kustomization, flux::kustomizations()),
            (Kind::HelmRelease, flux::helmreleases()),
        ] {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|source| TrackError::Kube { kind, source })?;
            for o in &list.items {
                let (k, v) = summarize(kind, o);
                match kind {
                    Kind::Kustomization => w.ks.insert(k, v),
                    Kind::HelmRelease => w.hr.insert(k, v),
                };
            }
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &flux::gitrepositories());
        if let Ok(list) = api.list(&ListParams::default()).await {
            for o in &list.items {
                if let Some((k, rev)) = git_revision(o) {
                    w.git.insert(k, rev);
                }
            }
        }
        Ok(w.progress(&self.layers, &self.expected))
    }

    /// Watches until every layer is Ready (Ok), something fails terminally, or
    /// `deadline` passes (Err, with the blocking objects). `on_progress` gets the
    /// view whenever a layer's count changes, and once at the start.
    pub async fn wait_ready(
        &self,
        deadline: Duration,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Progress, TrackError> {
        let until = tokio::time::Instant::now() + deadline;
        let watch = |ar: ApiResource, src: Src| {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (src, e))
                .boxed()
        };
        let mut events = stream::select_all([
            watch(flux::kustomizations(), Src::Ks),
            watch(flux::helmreleases(), Src::Hr),
            watch(flux::gitrepositories(), Src::Git),
        ]);
        let mut world = World::default();
        let mut buffers: BTreeMap<Src, World> = BTreeMap::new();
        let mut synced: BTreeSet<Src> = BTreeSet::new();
        let mut last: Option<Progress> = None;
        loop {
            let next = tokio::time::timeout_at(until, events.next()).await;
            let first = match next {
                Err(_) => {
                    let progress = world.progress(&self.layers, &self.expected);
                    return Err(TrackError::Deadline {
                        after: deadline,
                        progress,
                    });
                }
                Ok(None) => {
                    let progress = world.progress(&self.layers, &self.expected);
                    return Err(TrackError::Deadline {
                        after: deadline,
                        progress,
                    });
                }
                Ok(Some(e)) => e,
            };
            // Take whatever else is already there, then look once.
            let mut batch = vec![first];
            while let Some(Some(e)) = events.next().now_or_never() {
                batch.push(e);
                if batch.len() > 1024 {
                    break;
                }
            }
            for (src, ev) in batch {
                let Ok(ev) = ev else {
                    // The watcher retries with backoff (e.g. CRDs not there yet).
                    continue;
                };
                apply(&mut world, &mut buffers, &mut synced, src, ev);
            }
            if !(synced.contains(&Src::Ks) && synced.contains(&Src::Hr)) {
                continue;
            }
            let p = world.progress(&self.layers, &self.expected);
            if !p.failed().is_empty() {
                on_progress(&p);
                return Err(TrackError::Failed { progress: p });
            }
            let changed = last.as_ref().is_none_or(|l| l.signature() != p.signature());
            if changed {
                on_progress(&p);
            }
            if p.all_ready() {
                return Ok(p);
            }
            last = Some(p);
        }
    }
}

fn git_revision(o: &DynamicObject) -> Option<(Key, String)> {
    let ready = condition(&o.data, "Ready").is_some_and(|c| c.0 == "True");
    let rev = s(&o.data, "/status/artifact/revision");
    (ready && !rev.is_empty()).then(|| {
        (
            Key::new(
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            rev.to_string(),
        )
    })
}

fn apply(
    world: &mut World,
    buffers: &mut BTreeMap<Src, World>,
    synced: &mut BTreeSet<Src>,
    src: Src,
    ev: Event<DynamicObject>,
) {
    fn put(w: &mut World, src: Src, o: &DynamicObject) {
        match src {
            Src::Ks => {
                let (k, v) = summarize(Kind::Kustomization, o);
                w.ks.insert(k, v);
            }
            Src::Hr => {
                let (k, v) = summarize(Kind::HelmRelease, o);
                w.hr.insert(k, v);
            }
            Src::Git => {
                let k = Key::new(
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                );
                match git_revision(o) {
                    Some((_, rev)) => w.git.insert(k, rev),
                    None => w.git.remove(&k),
                };
            }
        }
    }
    match ev {
        Event::Apply(o) => put(world, src, &o),
        Event::Delete(o) => {
            let k = Key::new(
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
            );
            match src {
                Src::Ks => world.ks.remove(&k),
                Src::Hr => world.hr.remove(&k),
                Src::Git => world.git.remove(&k).map(|_| Obj::default()),
            };
        }
        Event::Init => {
            buffers.insert(src, World::default());
        }
        Event::InitApply(o) => put(buffers.entry(src).or_default(), src, &o),
        Event::InitDone => {
            let b = buffers.remove(&src).unwrap_or_default();
            match src {
                Src::Ks => world.ks = b.ks,
                Src::Hr => world.hr = b.hr,
                Src::Git => world.git = b.git,
            }
            synced.insert(src);
        }
    }
}
