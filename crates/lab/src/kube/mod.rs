//! The simulated Kubernetes API of the lab.
//!
//! It comes up by itself, as kube-apiserver does on a Talos control plane: once a
//! control-plane node runs with an applied config and etcd has been bootstrapped,
//! it listens on the config's `cluster.controlPlane.endpoint` (`https://<ip>:6443`)
//! with a serving certificate from the config's cluster CA, and requires client
//! certificates from that CA — so the kubeconfig the nodes stream works unmodified.
//! Objects live in the simulated etcd (see [`store`]), so snapshots capture them.
//! Simulated kubelets and controllers ([`sim`]) register nodes, roll workloads out
//! after delays (× the lab's time scale) and honour injected faults.
//!
//! Simplifications, on purpose: server-side apply treats lists as atomic (no
//! `k:`/`v:` merge keys) and strategic merge patch as a JSON merge patch; LIST
//! ignores `limit`/`continue` (everything in one page); `fieldValidation` is accepted
//! but unknown fields are kept; workloads get status but no Pod objects; there is
//! no `/openapi/v2`, no protobuf, no Table watches, no admission or RBAC beyond
//! "system:masters may do anything, other users only discovery".

mod fields;
pub mod flux;
mod git;
mod select;
mod server;
mod shared;
mod sim;
mod store;
mod talos;
mod types;
pub mod velero;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::data::NodeState;
use crate::node::membership::EtcdHandle;
use crate::node::Fabric;
use endsys_core::pki::{CertificateAuthority, LeafSpec, Usage};
use server::listen::{self, Running};
use server::Api;
use shared::{Faults, Shared};

/// The Kubernetes version the simulated API reports.
pub use server::discovery::KUBE_VERSION;

/// Seconds (× time scale) from etcd up to the API server listening.
const API_START: f64 = 3.0;

/// The supervisor's side of [`KubeLab`]: the shared state, which instance
/// serves now and where, and how to stop.
struct Supervisor {
    shared: Arc<Shared>,
    current: Mutex<Option<Arc<Api>>>,
    addr: watch::Sender<Option<SocketAddr>>,
    task: Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

/// Handle on the lab's Kubernetes API (cheap to clone).
#[derive(Clone)]
pub struct KubeLab {
    sup: Arc<Supervisor>,
}

impl std::fmt::Debug for KubeLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLab")
            .field("addr", &self.addr())
            .finish()
    }
}

impl KubeLab {
    /// Starts the supervisor that brings the API up and down with the control plane.
    pub(crate) fn start(fabric: Arc<Fabric>) -> KubeLab {
        let (addr, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: AtomicU64::new(0),
            faults: Mutex::new(Faults {
                stuck: ["never-pull".to_string()].into(),
                crash: ["crash-loop".to_string()].into(),
                needs_node: Default::default(),
            }),
            git: Mutex::new(git::GitHost::default()),
            bookmark_ms: AtomicU64::new(5000),
            watch_window: AtomicU64::new(1000),
            apiserver_version: Mutex::new(None),
        });
        let sup = Arc::new(Supervisor {
            shared,
            current: Mutex::new(None),
            addr,
            task: Mutex::new(None),
            stop,
        });
        let task = tokio::spawn(supervise(fabric, sup.clone()));
        *sup.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        KubeLab { sup }
    }

    /// Stops serving (the lab is going away).
    pub(crate) fn halt(&self) {
        let _ = self.sup.stop.send_replace(true);
        if let Some(t) = self
            .sup
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }

    /// Where the API listens, while it is up.
    pub fn addr(&self) -> Option<SocketAddr> {
        *self.sup.addr.borrow()
    }

    /// Waits until the API is up and returns its address.
    pub async fn wait_up(&self) -> SocketAddr {
        let mut rx = self.sup.addr.subscribe();
        loop {
            if let Some(a) = *rx.borrow_and_update() {
                return a;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Requests answered so far (all instances).
    pub fn requests_served(&self) -> u64 {
        self.sup.shared.requests.load(Ordering::Relaxed)
    }

    fn api(&self) -> Option<Arc<Api>> {
        self.sup
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An object by kind (`Deployment`, or the plural), namespace and name.
    pub fn get(&self, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let api = self.api()?;
        let ty = api.type_by_kind(kind)?;
        api.store.get(&ty.key(ns, name)).ok().flatten()
    }

    /// Every object of a kind (in one namespace, or all).
    pub fn list(&self, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let Some(api) = self.api() else {
            return vec![];
        };
        let Some(ty) = api.type_by_kind(kind) else {
            return vec![];
        };
        api.store
            .list(&ty.list_prefix(ns))
            .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect())
            .unwrap_or_default()
    }

    /// Image pulls matching `pattern` (a substring of an image or workload name)
    /// never finish: the workload stays unavailable with ImagePullBackOff.
    pub fn inject_stuck_image(&self, pattern: &str) {
        self.sup
            .shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stuck
            .insert(pattern.to_string());
        self.poke();
    }

    /// Containers matching `pattern` crash (CrashLoopBackOff; Jobs fail).
    pub fn inject_crash(&self, pattern: &str) {
        self.sup
            .shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .crash
            .insert(pattern.to_string());
        self.poke();
    }

    /// Fault: the Flux object `kind` (`Kustomization` or `HelmRelease`)
    /// `namespace/name` is not Ready while the Kubernetes Node `node` is away
    /// (its kubelet not posting: powered off, rebooting, upgrading; its
    /// workloads run there), and reconciles back to Ready once it is back. [`Self::clear_faults`] removes it.
    pub fn set_not_ready_while_node_away(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        node: &str,
    ) {
        self.sup
            .shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .needs_node
            .insert(
                (kind.to_string(), namespace.to_string(), name.to_string()),
                node.to_string(),
            );
        self.poke();
    }

    /// Removes injected faults (the built-in `never-pull` / `crash-loop` stay).
    pub fn clear_faults(&self) {
        {
            let mut f = self
                .sup
                .shared
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            f.stuck.retain(|p| p == "never-pull");
            f.crash.retain(|p| p == "crash-loop");
            f.needs_node.clear();
        }
        self.poke();
    }

    /// Serves the Git repository at `url` (as a FluxInstance or GitRepository
    /// names it, e.g. `https://github.com/endsys-lab/home-ops.git`; with or
    /// without `.git`) from `dir`. When `dir/.git` exists the revision is the
    /// commit its ref points at, else a hash of the tree. `file://` URLs need no
    /// registration; any other URL that nobody serves fails the GitRepository
    /// with source-controller's "repository not found". Registrations outlive
    /// API restarts; registering wakes the lab's Flux.
    pub fn serve_git(&self, url: &str, dir: std::path::PathBuf) {
        self.sup
            .shared
            .git
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serve(url, dir);
        self.poke();
    }

    /// Forgets watch history, like an etcd compaction: watches from older
    /// resourceVersions get 410 Gone.
    pub fn compact(&self) {
        if let Some(api) = self.api() {
            api.store.compact();
        }
    }

    /// How many changes the watch window keeps (default 1000).
    pub fn set_watch_window(&self, n: usize) {
        self.sup
            .shared
            .watch_window
            .store(n as u64, Ordering::Relaxed);
        if let Some(api) = self.api() {
            api.store.set_capacity(n);
        }
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK (default 5 s).
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.sup
            .shared
            .bookmark_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn poke(&self) {
        if let Some(api) = self.api() {
            api.sim_wake.notify_one();
        }
    }
}

/// What the API should be serving now, from the nodes' state.
#[derive(Clone)]
struct Want {
    addr: SocketAddr,
    ca: CertificateAuthority,
    ips: Vec<IpAddr>,
    host: Option<String>,
}

fn desired(fabric: &Fabric) -> Option<Want> {
    if fabric.alive_cluster_uids().is_empty() {
        return None;
    }
    let nodes = fabric.nodes();
    // A control plane in a legacy upgrade still runs its API server until it
    // reboots (its static pods stop with it).
    let serving = |s: NodeState| matches!(s, NodeState::Running | NodeState::Upgrading);
    let cp = nodes.iter().find(|n| {
        serving(n.state())
            && n.config()
                .is_some_and(|c| c.machine_type.is_control_plane() && c.cluster_ca.is_some())
    })?;
    let cfg = cp.config()?;
    let ca = cfg.cluster_ca.clone()?;
    let rest = cfg
        .endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.trim_matches(['[', ']']), p.parse().unwrap_or(6443))
        }
        _ => (hostport, 6443),
    };
    let (ip, dns) = match host.parse::<IpAddr>() {
        Ok(ip) => (ip, None),
        // A DNS endpoint: serve on the control plane's own address.
        Err(_) => (IpAddr::V4(cp.ip), Some(host.to_string())),
    };
    // An endpoint that is a node's own address is only served while that node
    // runs (a VIP or DNS name moves between control planes).
    if let Some(owner) = nodes.iter().find(|n| IpAddr::V4(n.ip) == ip) {
        let serves = serving(owner.state())
            && owner
                .config()
                .is_some_and(|c| c.machine_type.is_control_plane());
        if !serves {
            return None;
        }
    }
    let ips = nodes.iter().map(|n| IpAddr::V4(n.ip)).collect();
    Some(Want {
        addr: SocketAddr::new(ip, port),
        ca,
        ips,
        host: dns,
    })
}

/// Follows the fabric and (re)starts or stops the API server.
async fn supervise(fabric: Arc<Fabric>, sup: Arc<Supervisor>) {
    let mut changed = fabric.changed.subscribe();
    let mut running: Option<(SocketAddr, String, Running)> = None;
    loop {
        let want = desired(&fabric);
        let same = match (&running, &want) {
            (Some((a, ca, _)), Some(w)) => *a == w.addr && *ca == w.ca.pair.cert_pem,
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some((_, _, r)) = running.take() {
                *sup.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let _ = sup.addr.send_replace(None);
                fabric.kube_serving.store(false, Ordering::SeqCst);
                r.stop().await;
            }
            if let Some(w) = want {
                // kube-apiserver takes a while to come up after etcd; the port
                // refuses connections meanwhile.
                let since = std::time::Instant::now();
                tokio::time::sleep(fabric.scaled(API_START)).await;
                let end = std::time::Instant::now();
                fabric.record_delay(None, "kube-apiserver start", since, end);
                let Some(w) = desired(&fabric).filter(|x| x.addr == w.addr) else {
                    continue;
                };
                match start(&fabric, &sup, &w).await {
                    Ok(r) => {
                        running = Some((w.addr, w.ca.pair.cert_pem.clone(), r));
                        let _ = sup.addr.send_replace(Some(w.addr));
                        fabric.kube_serving.store(true, Ordering::SeqCst);
                    }
                    Err(e) => tracing::warn!("lab kube-apiserver on {}: {e}", w.addr),
                }
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

async fn start(fabric: &Arc<Fabric>, sup: &Arc<Supervisor>, w: &Want) -> Result<Running, String> {
    let mut dns: Vec<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    dns.extend(w.host.clone());
    let mut ips = vec![w.addr.ip(), "127.0.0.1".parse().map_err(|_| "ip")?];
    ips.extend(w.ips.iter().copied());
    ips.sort();
    ips.dedup();
    let leaf =
        w.ca.issue(&LeafSpec {
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            ip_sans: ips,
            dns_sans: dns,
            usage: Usage::Server,
            validity: Duration::from_secs(365 * 24 * 3600),
        })
        .map_err(|e| e.to_string())?;
    let etcd = EtcdHandle {
        fabric: fabric.clone(),
    };
    let api = Arc::new(Api {
        store: store::Store::new(etcd),
        addr: w.addr,
        shared: sup.shared.clone(),
        sim_wake: Arc::new(tokio::sync::Notify::new()),
    });
    api.store
        .set_capacity(sup.shared.watch_window.load(Ordering::Relaxed) as usize);
    // The namespaces every cluster starts with.
    if let Some(ns) = api.type_by_kind("Namespace") {
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            api.sim_create(
                &ns,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
            )
            .map_err(|e| e.message)?;
        }
    }
    let running = listen::serve(api.clone(), &w.ca, &leaf, sup.stop.subscribe()).await?;
    let sim = tokio::spawn(sim::run(api.clone(), fabric.clone(), running.stop_rx()));
    running.add_task(sim);
    *sup.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(api);
    Ok(running)
}
