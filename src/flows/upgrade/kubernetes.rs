//! `upgrade kubernetes --to V`: like talosctl's upgrade-k8s, through
//! machine-config changes applied live (NO_REBOOT), one node at a time.
//!
//! preflight (one minor at a time, the target supported by every node's Talos,
//! the definition already on V, no object of an API the target removes) →
//! pre-pull every image → the static pods component by component
//! (kube-apiserver, then kube-controller-manager, then kube-scheduler), each
//! control plane in turn, waiting for its mirror pod on the new image and
//! Ready → kubelet on every node (control planes first, then workers in
//! batches), waiting for the Node Ready with the new kubelet version.
//!
//! The config a node gets is the definition's (already on V) with the images
//! of the components not moved yet kept on the old version. Which components
//! moved is read from the cluster each time (mirror pod images, kubelet
//! versions), so a re-run after a kill converges where it stopped.

use std::time::{Duration, Instant};

use crate::engine::{Cluster, Emitter, FlowError, GateError, NodeDef, Outcome, StepId};
use crate::flows::gates::{back, layers};
use crate::flows::rollout;
use crate::kube::nodes;
use crate::talos::{ApplyMode, ImageNamespace};

use super::preflight::{config_field, with_fields};
use super::removed;
use super::skew::{self, Version};
use super::UpgradeOptions;

/// The control-plane static pods in upgrade order, and their image field.
pub const COMPONENTS: [(&str, &[&str]); 3] = [
    ("kube-apiserver", &["cluster", "apiServer", "image"]),
    (
        "kube-controller-manager",
        &["cluster", "controllerManager", "image"],
    ),
    ("kube-scheduler", &["cluster", "scheduler", "image"]),
];
const KUBELET: &[&str] = &["machine", "kubelet", "image"];
const PROXY: &[&str] = &["cluster", "proxy", "image"];

/// What `upgrade kubernetes` did.
#[derive(Debug, Clone)]
pub struct KubeUpgradeReport {
    pub from: String,
    pub to: String,
    /// `node: what moved`.
    pub nodes: Vec<(String, String)>,
    pub elapsed: Duration,
}

const OP: &str = "upgrade-kubernetes";

struct Run<'a> {
    cluster: &'a Cluster,
    opts: &'a UpgradeOptions,
    em: &'a Emitter,
    k: kube::Client,
    from: Version,
    to: Version,
    /// What preflight says of the GitOps tree (scanned, or why not).
    tree: String,
}

/// Runs (or resumes) `upgrade kubernetes --to V`.
pub async fn upgrade_kubernetes(
    cluster: &Cluster,
    opts: &UpgradeOptions,
    em: &Emitter,
) -> Result<KubeUpgradeReport, FlowError> {
    let t0 = Instant::now();
    let run = preflight(cluster, opts, em).await?;
    let journal = rollout::open_journal(
        &opts.state_dir,
        &cluster.def.cluster,
        OP,
        &run.to.to_string(),
    )?;
    let _sink = em.attach(journal.sink());
    layers_gate(&run, "before the Kubernetes upgrade").await?;
    prepull(&run).await?;
    let mut moved: Vec<(String, Vec<String>)> = cluster
        .def
        .nodes
        .iter()
        .map(|n| (n.hostname.clone(), Vec::new()))
        .collect();
    let note = |moved: &mut Vec<(String, Vec<String>)>, host: &str, what: &str| {
        if let Some((_, w)) = moved.iter_mut().find(|(h, _)| h == host) {
            w.push(what.to_string());
        }
    };
    for (i, (component, _)) in COMPONENTS.iter().enumerate() {
        for n in cluster.def.control_planes() {
            if static_pod(&run, n, i).await? {
                note(&mut moved, &n.hostname, component);
            }
        }
    }
    for batch in rollout::batches(&cluster.def, opts.max_parallel) {
        let done = futures::future::join_all(batch.iter().map(|n| kubelet(&run, n))).await;
        for (n, d) in batch.iter().zip(done) {
            if d? {
                note(&mut moved, &n.hostname, "kubelet");
            }
        }
    }
    layers_gate(&run, "after the Kubernetes upgrade").await?;
    journal.complete()?;
    Ok(KubeUpgradeReport {
        from: run.from.to_string(),
        to: run.to.to_string(),
        nodes: moved
            .into_iter()
            .map(|(h, w)| {
                let text = if w.is_empty() {
                    format!("already on {}", run.to)
                } else {
                    format!("moved to {}: {}", run.to, w.join(", "))
                };
                (h, text)
            })
            .collect(),
        elapsed: t0.elapsed(),
    })
}

fn refused(rule: String, next: &str) -> FlowError {
    GateError::Refused {
        op: "upgrade kubernetes",
        rule,
        next: next.into(),
    }
    .into()
}

async fn preflight<'a>(
    cluster: &'a Cluster,
    opts: &'a UpgradeOptions,
    em: &'a Emitter,
) -> Result<Run<'a>, FlowError> {
    let t0 = em.started();
    em.started_with(
        StepId::Preflight,
        None,
        "Version → every node; Node kubelet versions; definition; removed APIs (cluster, GitOps tree)",
    );
    let r = preflight_checks(cluster, opts, em).await;
    match &r {
        Ok(run) => em.finished(
            StepId::Preflight,
            None,
            Outcome::Done {
                detail: format!(
                    "Kubernetes {} → {}; GitOps tree {}",
                    run.from, run.to, run.tree
                ),
            },
            t0,
        ),
        Err(e) => em.finished(StepId::Preflight, None, crate::engine::flow::failed(e), t0),
    }
    r
}

async fn preflight_checks<'a>(
    cluster: &'a Cluster,
    opts: &'a UpgradeOptions,
    em: &'a Emitter,
) -> Result<Run<'a>, FlowError> {
    let to_s = opts.to.clone().ok_or_else(|| {
        refused(
            "--to is required".into(),
            "pass the target, e.g. --to v1.36.0",
        )
    })?;
    let to = Version::parse(&to_s).ok_or_else(|| {
        refused(
            format!("--to {to_s} is not a version"),
            "pass e.g. --to v1.36.0",
        )
    })?;
    let k = match cluster.kube().await {
        Some(Ok(k)) => k,
        Some(Err(e)) => return Err(FlowError::kube(StepId::Preflight, e)),
        None => {
            return Err(refused(
                "no kubeconfig in the state directory: the Kubernetes versions cannot be read"
                    .into(),
                "run `up` (or `kubeconfig`) first",
            ))
        }
    };
    let mut rules = Vec::new();
    // The definition must already say V: a later `apply` would revert the images.
    for n in &cluster.def.nodes {
        let config = cluster.config_of(n)?;
        let tag = config_field(config, KUBELET)
            .as_deref()
            .and_then(skew::image_tag)
            .and_then(Version::parse);
        match tag {
            Some(v) if v.same(&to) => {}
            Some(v) => rules.push(format!(
                "{}: the definition says Kubernetes {v}; set kubernetesVersion: {to} first (else a later `up`/`apply` reverts the images)",
                n.hostname
            )),
            None => rules.push(format!("{}: the rendered config names no kubelet image", n.hostname)),
        }
    }
    // From: the Nodes' kubelet versions.
    let versions = nodes::kubelet_versions(&k)
        .await
        .map_err(|e| FlowError::kube(StepId::Preflight, e))?;
    let mut from: Option<Version> = None;
    for (node, kv) in &versions {
        let Some(v) = Version::parse(kv) else {
            rules.push(format!("Node {node}: kubelet version {kv:?} unreadable"));
            continue;
        };
        if let Err(e) = skew::kubernetes_step(&v, &to) {
            rules.push(format!("Node {node}: {e}"));
        }
        if from.as_ref().is_none_or(|f| v.older_than(f)) {
            from = Some(v);
        }
    }
    // Every node's Talos must run the target.
    let policy = opts
        .policy
        .with_budget(opts.policy.retry_budget.min(Duration::from_secs(2)));
    for n in &cluster.def.nodes {
        match cluster.mtls(n, policy)?.version().await {
            Ok(v) => match Version::parse(&v.tag) {
                Some(t) => {
                    if let Err(e) = skew::kubernetes_on(&to, &t) {
                        rules.push(format!(
                            "{}: {e}; upgrade Talos first (`upgrade talos`)",
                            n.hostname
                        ));
                    }
                }
                None => rules.push(format!(
                    "{}: Talos version {:?} unreadable",
                    n.hostname, v.tag
                )),
            },
            Err(e) => rules.push(format!("{} does not answer Version: {e}", n.label())),
        }
    }
    // APIs the target removes, still in use in the cluster…
    for r in removed::removed_in(to.minor).filter(|r| r.live) {
        if let Some(count) = objects_of(&k, r.api_version, r.resource).await {
            if count > 0 {
                rules.push(format!(
                    "{count} {}.{} object(s) in the cluster: Kubernetes 1.{} removes that API; migrate them first",
                    r.resource, r.api_version, r.minor
                ));
            }
        }
    }
    // …and in the GitOps tree, from which Flux would re-create them.
    let tree = tree_scan(opts, &to, &mut rules);
    if tree.starts_with("NOT") {
        em.warning(StepId::Preflight, None, format!("GitOps tree {tree}"));
    }
    let from = from.unwrap_or_else(|| to.clone());
    if !rules.is_empty() {
        return Err(refused(
            if rules.len() == 1 {
                rules.remove(0)
            } else {
                format!("\n- {}", rules.join("\n- "))
            },
            "fix what is named, then run the same command again",
        ));
    }
    Ok(Run {
        cluster,
        opts,
        em,
        k,
        from,
        to,
        tree,
    })
}

/// Scans the GitOps tree for manifests of APIs the target removes (each a
/// refusal rule); returns what to say about the tree in preflight and the plan.
fn tree_scan(opts: &UpgradeOptions, to: &Version, rules: &mut Vec<String>) -> String {
    let Some((repo, sync_path)) = &opts.gitops_tree else {
        return format!(
            "NOT scanned for APIs Kubernetes 1.{} removes (no --repo): Flux may re-create such objects after the upgrade",
            to.minor
        );
    };
    let sync = sync_path.clone().unwrap_or_else(|| {
        crate::flows::up::kube::repo_sync_path(&crate::flows::up::KubeHalf::endsys(repo.clone()))
    });
    match removed::scan_tree(repo, &sync, opts.layers.clone(), to.minor) {
        Ok(scan) => {
            rules.extend(scan.findings.iter().map(ToString::to_string));
            format!(
                "{} ({sync}): {} document(s) scanned, {} of an API Kubernetes 1.{} removes",
                repo.display(),
                scan.documents,
                scan.findings.len(),
                to.minor
            )
        }
        Err(e) => {
            rules.push(format!(
                "the GitOps tree {} ({sync}) cannot be read: {e}",
                repo.display()
            ));
            format!("{} unreadable", repo.display())
        }
    }
}

/// How many objects of `resource` in `gv` exist; None when the API is not served.
async fn objects_of(k: &kube::Client, gv: &str, resource: &str) -> Option<usize> {
    let (group, version) = gv.split_once('/')?;
    let ar = kube::core::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: gv.into(),
        kind: String::new(),
        plural: resource.into(),
    };
    let api: kube::Api<kube::core::DynamicObject> = kube::Api::all_with(k.clone(), &ar);
    api.list(&Default::default())
        .await
        .ok()
        .map(|l| l.items.len())
}

async fn layers_gate(run: &Run<'_>, when: &str) -> Result<(), FlowError> {
    let t0 = run.em.started();
    let l = layers::check(
        &run.k,
        &run.opts.layers_gate(),
        run.em,
        StepId::Layers,
        None,
        when,
    )
    .await?;
    run.em.finished(
        StepId::Layers,
        None,
        Outcome::Done {
            detail: format!("{when}: {}", l.summary()),
        },
        t0,
    );
    Ok(())
}

/// The images of the target for a node, from its rendered config.
fn target_image(run: &Run<'_>, n: &NodeDef, path: &[&str]) -> Result<String, FlowError> {
    config_field(run.cluster.config_of(n)?, path).ok_or_else(|| FlowError::NodeState {
        node: n.label(),
        detail: format!("its rendered config has no {}", path.join(".")),
        next: "check the definition renders (`gen config`)".into(),
    })
}

/// Pulls every image the node will run (legacy ImagePull: every version serves it).
async fn prepull(run: &Run<'_>) -> Result<(), FlowError> {
    for n in &run.cluster.def.nodes {
        let t0 = run.em.started();
        let mut images = vec![(target_image(run, n, KUBELET)?, ImageNamespace::System)];
        if n.control_plane {
            for (_, path) in COMPONENTS {
                images.push((target_image(run, n, path)?, ImageNamespace::Cri));
            }
        }
        let c = run.cluster.mtls(n, run.opts.policy)?;
        let mut pulled = Vec::new();
        for (image, ns) in &images {
            run.em.started_with(
                StepId::Prepull,
                Some(&n.hostname),
                format!("ImagePull {image} → {}", n.label()),
            );
            match c.image_pull_legacy(image, *ns).await {
                Ok(()) => pulled.push(image.clone()),
                Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {}
                Err(e) => return Err(e.into()),
            }
        }
        run.em.finished(
            StepId::Prepull,
            Some(&n.hostname),
            Outcome::Done {
                detail: format!("{} image(s) pulled", pulled.len()),
            },
            t0,
        );
    }
    Ok(())
}

/// The node's config with every image of the target, except the components
/// listed in `old`, kept on the version from before.
fn config_for(run: &Run<'_>, n: &NodeDef, old: &[&[&str]]) -> Result<Vec<u8>, FlowError> {
    let config = run.cluster.config_of(n)?;
    let from = run.from.to_string();
    let mut fields: Vec<(&[&str], String)> = Vec::new();
    for path in old {
        if let Some(img) = config_field(config, path) {
            fields.push((path, skew::with_tag(&img, &from)));
        }
    }
    with_fields(config, &fields).map_err(|e| FlowError::NodeState {
        node: n.label(),
        detail: format!("cannot set the images in its rendered config: {e}"),
        next: "check the definition renders (`gen config`)".into(),
    })
}

/// Moves static pod `COMPONENTS[i]` of control plane `n`; false when it already ran the target.
async fn static_pod(run: &Run<'_>, n: &NodeDef, i: usize) -> Result<bool, FlowError> {
    let (component, path) = COMPONENTS[i];
    let host = &n.hostname;
    let image = target_image(run, n, path)?;
    let t0 = run.em.started();
    let now = nodes::mirror_pod(&run.k, component, host)
        .await
        .map_err(|e| FlowError::kube_on(&n.label(), e))?;
    if now.as_ref().is_some_and(|p| p.image == image && p.ready) {
        run.em.finished(
            StepId::StaticPod,
            Some(host),
            Outcome::Skipped {
                reason: format!("{component} already runs {image}"),
            },
            t0,
        );
        return Ok(false);
    }
    // Later components (and the kubelet) stay on the old version for now.
    let mut old: Vec<&[&str]> = COMPONENTS[i + 1..].iter().map(|(_, p)| *p).collect();
    old.push(KUBELET);
    if i > 0 {
        old.push(PROXY);
    }
    let config = config_for(run, n, &old)?;
    run.em.started_with(
        StepId::StaticPod,
        Some(host),
        format!(
            "ApplyConfiguration (NO_REBOOT, {}={image}) → {}",
            path.join("."),
            n.label()
        ),
    );
    run.cluster
        .mtls(n, run.opts.policy)?
        .apply_configuration(&config, ApplyMode::NoReboot, false)
        .await?;
    run.em.waiting(
        StepId::StaticPod,
        Some(host),
        format!("mirror pod kube-system/{component}-{host} on {image} and Ready"),
    );
    let p = nodes::wait_mirror_pod(&run.k, component, host, &image, run.opts.kube_deadline)
        .await
        .map_err(|e| FlowError::kube_on(&n.label(), e))?;
    run.em.finished(
        StepId::StaticPod,
        Some(host),
        Outcome::Done {
            detail: format!(
                "{component} runs {image}, Ready (config-version {})",
                p.config_version
            ),
        },
        t0,
    );
    Ok(true)
}

/// Moves the node's kubelet; false when the Node already reported the target.
async fn kubelet(run: &Run<'_>, n: &NodeDef) -> Result<bool, FlowError> {
    let host = &n.hostname;
    let want = run.to.to_string();
    let t0 = run.em.started();
    let versions = nodes::kubelet_versions(&run.k)
        .await
        .map_err(|e| FlowError::kube_on(&n.label(), e))?;
    let current = versions
        .iter()
        .find(|(h, _)| h == host)
        .map(|(_, v)| v.clone());
    if current.as_deref() == Some(want.as_str()) {
        run.em.finished(
            StepId::Kubelet,
            Some(host),
            Outcome::Skipped {
                reason: format!("kubelet already {want}"),
            },
            t0,
        );
        return Ok(false);
    }
    let config = config_for(run, n, &[])?;
    run.em.started_with(
        StepId::Kubelet,
        Some(host),
        format!(
            "ApplyConfiguration (NO_REBOOT, machine.kubelet.image={}) → {}",
            target_image(run, n, KUBELET)?,
            n.label()
        ),
    );
    run.cluster
        .mtls(n, run.opts.policy)?
        .apply_configuration(&config, ApplyMode::NoReboot, false)
        .await?;
    back::node_ready(&run.k, n, Some(&want), run.opts.kube_deadline).await?;
    run.em.finished(
        StepId::Kubelet,
        Some(host),
        Outcome::Done {
            detail: format!(
                "Node {host} Ready with kubelet {want} (was {})",
                current.unwrap_or_default()
            ),
        },
        t0,
    );
    Ok(true)
}

/// `plan upgrade kubernetes`: preflight (reads versions, changes nothing), then
/// every call in order with the node receiving it.
pub async fn plan_upgrade_kubernetes(
    cluster: &Cluster,
    opts: &UpgradeOptions,
) -> Result<Vec<crate::engine::PlanItem>, FlowError> {
    use crate::engine::PlanItem;
    let em = Emitter::new();
    let run = preflight(cluster, opts, &em).await?;
    let mut items = vec![PlanItem::new(
        StepId::Preflight,
        false,
        format!(
            "Kubernetes {} → {}: one minor at most, supported by every node's Talos, definition on {}, no object of a removed API; GitOps tree {}",
            run.from, run.to, run.to, run.tree
        ),
    )];
    for n in &cluster.def.nodes {
        items.push(PlanItem::on(
            StepId::Prepull,
            n,
            true,
            format!(
                "ImagePull {}{} → {}",
                target_image(&run, n, KUBELET)?,
                if n.control_plane {
                    " and the three control-plane images"
                } else {
                    ""
                },
                n.label()
            ),
        ));
    }
    for (component, path) in COMPONENTS {
        for n in cluster.def.control_planes() {
            let image = target_image(&run, n, path)?;
            let now = nodes::mirror_pod(&run.k, component, &n.hostname)
                .await
                .ok()
                .flatten();
            let done = now.is_some_and(|p| p.image == image && p.ready);
            items.push(
                PlanItem::on(
                    StepId::StaticPod,
                    n,
                    !done,
                    format!(
                        "ApplyConfiguration (NO_REBOOT, {}={image}) → {}; watch Pod kube-system/{component}-{} until on it and Ready",
                        path.join("."),
                        n.label(),
                        n.hostname
                    ),
                )
                .done(done),
            );
        }
    }
    for batch in rollout::batches(&cluster.def, opts.max_parallel) {
        for n in batch {
            items.push(PlanItem::on(
                StepId::Kubelet,
                n,
                true,
                format!(
                    "ApplyConfiguration (NO_REBOOT, machine.kubelet.image={}) → {}; watch Node {} until Ready with kubelet {}",
                    target_image(&run, n, KUBELET)?,
                    n.label(),
                    n.hostname,
                    run.to
                ),
            ));
        }
    }
    Ok(items)
}
