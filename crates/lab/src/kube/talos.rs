//! What Talos nodes and their kubelets do to the cluster's objects, beyond
//! registering: each running kubelet posts its boot ID, kubelet version (the
//! tag of `machine.kubelet.image`) and OS image; a legacy upgrade cordons the
//! Node with `talos.dev/cordoned` and evicts its pods as Talos's drain does,
//! and only a Node Talos cordoned is uncordoned after the boot
//! (`internal/app/machined/pkg/controllers/k8s/node_cordoned_spec.go`); control
//! planes run kube-apiserver, kube-controller-manager and kube-scheduler as
//! static pods whose mirror pods carry the image from the node's config and the
//! `talos.dev/config-version` annotation (bumped on every change), Ready a
//! moment after the node runs; `/version` reports the image tag of the
//! kube-apiserver serving the endpoint; Pods bound to a node are Running and Ready while
//! its kubelet runs; and the disruption controller keeps every
//! PodDisruptionBudget's status.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::select::selects;
use super::server::discovery::KUBE_VERSION;
use super::server::{now, Api};
use super::store::ApiError;
use crate::config::NodeConfig;
use crate::node::data::NodeState;
use crate::node::{Fabric, NodeInner};

/// Seconds (× time scale) from a node running to its static pods being Ready.
const STATIC_POD_READY: f64 = 1.0;

/// The annotation Talos puts on a Node it cordoned itself.
pub(crate) const CORDONED_BY_TALOS: &str = "talos.dev/cordoned";

/// The images a node's config names for Kubernetes' components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ComponentImages {
    pub kubelet: String,
    pub apiserver: String,
    pub controller_manager: String,
    pub scheduler: String,
}

impl ComponentImages {
    fn parse(raw: &[u8]) -> ComponentImages {
        let default = |repo: &str| format!("{repo}:{KUBE_VERSION}");
        let mut out = ComponentImages {
            kubelet: default("ghcr.io/siderolabs/kubelet"),
            apiserver: default("registry.k8s.io/kube-apiserver"),
            controller_manager: default("registry.k8s.io/kube-controller-manager"),
            scheduler: default("registry.k8s.io/kube-scheduler"),
        };
        let text = String::from_utf8_lossy(raw);
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(v) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) else {
                continue;
            };
            let get = |path: &[&str]| {
                let mut cur = &v;
                for p in path {
                    cur = cur.get(*p)?;
                }
                cur.as_str().filter(|s| !s.is_empty()).map(str::to_string)
            };
            if let Some(i) = get(&["machine", "kubelet", "image"]) {
                out.kubelet = i;
            }
            if let Some(i) = get(&["cluster", "apiServer", "image"]) {
                out.apiserver = i;
            }
            if let Some(i) = get(&["cluster", "controllerManager", "image"]) {
                out.controller_manager = i;
            }
            if let Some(i) = get(&["cluster", "scheduler", "image"]) {
                out.scheduler = i;
            }
        }
        out
    }
}

/// The tag of an image reference (`v1.36.0` of `…/kubelet:v1.36.0`).
pub(crate) fn tag_of(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    let slash = name.rfind('/').unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => &name[slash + i + 1..],
        None => "latest",
    }
}

/// Parsed component images per applied config (configs are immutable `Arc`s;
/// the `Arc` is kept so its address is not reused while cached).
#[derive(Default)]
pub(crate) struct ImageCache(HashMap<usize, (Arc<NodeConfig>, ComponentImages)>);

impl ImageCache {
    pub(crate) fn images(&mut self, cfg: &Arc<NodeConfig>) -> ComponentImages {
        let key = Arc::as_ptr(cfg) as usize;
        if let Some((_, i)) = self.0.get(&key) {
            return i.clone();
        }
        if self.0.len() > 4096 {
            self.0.clear();
        }
        let images = ComponentImages::parse(&cfg.raw);
        self.0.insert(key, (cfg.clone(), images.clone()));
        images
    }
}

/// The Node name of a lab node (its hostname, else Talos's default).
pub(crate) fn node_name(n: &NodeInner, cfg: &NodeConfig) -> String {
    cfg.hostname
        .clone()
        .unwrap_or_else(|| format!("talos-{}", n.ip.to_string().replace('.', "-")))
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
        })
}

fn is_mirror(p: &Value) -> bool {
    p.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
}

fn owned_by_daemonset(p: &Value) -> bool {
    p.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|r| s(r, "/kind") == "DaemonSet"))
}

/// An int-or-percent of `total` (percentages rounded up, as the disruption
/// controller does for both fields).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(p) => {
            let pct: i64 = p.strip_suffix('%')?.parse().ok()?;
            Some((pct * total + 99) / 100)
        }
        _ => None,
    }
}

fn list(api: &Api, kind: &str) -> Vec<Value> {
    let Some(t) = api.type_by_kind(kind) else {
        return vec![];
    };
    api.store
        .list(&t.prefix())
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default()
}

/// One pass. `due(key, generation, base)` says whether a delay is over.
pub(crate) fn pass(
    api: &Api,
    fabric: &Fabric,
    cache: &mut ImageCache,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let (Some(node_t), Some(pod_t)) = (api.type_by_kind("Node"), api.type_by_kind("Pod")) else {
        return Ok(());
    };
    let mut up: HashMap<String, (bool, String)> = HashMap::new();
    for n in fabric.nodes() {
        let Some(cfg) = n.config() else { continue };
        let name = node_name(&n, &cfg);
        let running = n.state() == NodeState::Running;
        cordon(api, &node_t, &pod_t, &n, &name, running)?;
        if api.store.get(&node_t.key(None, &name))?.is_none() {
            continue;
        }
        up.insert(name.clone(), (running, n.ip.to_string()));
        let images = cache.images(&cfg);
        if running {
            let (boot_id, os) = (n.boot_id(), format!("Talos ({})", n.talos_version()));
            let kubelet = tag_of(&images.kubelet).to_string();
            api.sim_write(&node_t, None, &name, |o| {
                o["status"]["nodeInfo"]["bootID"] = json!(boot_id);
                o["status"]["nodeInfo"]["kubeletVersion"] = json!(kubelet);
                o["status"]["nodeInfo"]["osImage"] = json!(os);
            })?;
        }
        if cfg.machine_type.is_control_plane() && std::net::IpAddr::V4(n.ip) == api.addr.ip() {
            let v = tag_of(&images.apiserver).to_string();
            *api.shared
                .apiserver_version
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(v);
        }
        if cfg.machine_type.is_control_plane() {
            mirror_pods(api, &pod_t, &n, &name, &images, running, due)?;
        }
    }
    // Pods bound to a node follow its kubelet.
    for p in list(api, "Pod") {
        let node = s(&p, "/spec/nodeName");
        if node.is_empty() || is_mirror(&p) {
            continue;
        }
        let (running, ip) = up.get(node).cloned().unwrap_or((false, String::new()));
        let phase = s(&p, "/status/phase");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let (ns, name) = (s(&p, "/metadata/namespace"), s(&p, "/metadata/name"));
        if pod_ready(&p) == running && phase == "Running" {
            continue;
        }
        let status = pod_status(&p, running, &ip);
        api.sim_write(&pod_t, Some(ns), name, |o| o["status"] = status)?;
    }
    disruption_budgets(api)
}

fn pod_status(p: &Value, ready: bool, host_ip: &str) -> Value {
    let t = now();
    let st = if ready { "True" } else { "False" };
    let started = p
        .pointer("/status/startTime")
        .cloned()
        .unwrap_or_else(|| json!(t));
    let containers: Vec<Value> = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({"name": s(c, "/name"), "image": s(c, "/image"), "imageID": "",
                "ready": ready, "started": ready, "restartCount": 0,
                "state": {"running": {"startedAt": started}}})
        })
        .collect();
    json!({
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip, "podIPs": [{"ip": host_ip}],
        "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": st, "lastTransitionTime": t},
            {"type": "Ready", "status": st, "lastTransitionTime": t},
        ],
        "containerStatuses": containers,
        "qosClass": "Burstable",
    })
}

/// Talos's cordon during a legacy upgrade, its drain, and its uncordon after
/// the boot (only of a Node it cordoned).
fn cordon(
    api: &Api,
    node_t: &super::types::ResType,
    pod_t: &super::types::ResType,
    n: &NodeInner,
    name: &str,
    running: bool,
) -> Result<(), ApiError> {
    let requested = n.slots.lock().expect("slots lock").cordon_requested;
    if !requested {
        return Ok(());
    }
    let key = format!(
        "/metadata/annotations/{}",
        CORDONED_BY_TALOS.replace('/', "~1")
    );
    if n.state() == NodeState::Upgrading {
        api.sim_write(node_t, None, name, |o| {
            let cordoned = o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true);
            if !cordoned {
                o["spec"]["unschedulable"] = json!(true);
                o["metadata"]["annotations"][CORDONED_BY_TALOS] = json!("true");
            }
        })?;
        // Talos's drain: evictions, each subject to the PodDisruptionBudgets.
        for p in list(api, "Pod") {
            if s(&p, "/spec/nodeName") != name || is_mirror(&p) || owned_by_daemonset(&p) {
                continue;
            }
            let (ns, pod) = (s(&p, "/metadata/namespace"), s(&p, "/metadata/name"));
            if super::server::evict::evict(api, pod_t, ns, pod).is_err() {
                tracing::debug!("lab Talos drain of {name}: {ns}/{pod} stays (PDB)");
            }
        }
        let first = {
            let mut s = n.slots.lock().expect("slots lock");
            !std::mem::replace(&mut s.drain_ran, true)
        };
        if first {
            n.drained.send_modify(|v| *v += 1);
        }
    } else if running {
        let mut ours = false;
        api.sim_write(node_t, None, name, |o| {
            if o.pointer(&key).is_some() {
                ours = true;
                o["spec"]["unschedulable"] = json!(false);
                if let Some(a) = o
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove(CORDONED_BY_TALOS);
                }
            }
        })?;
        if !ours {
            tracing::debug!("lab Talos: {name} not cordoned by Talos, left as it is");
        }
        n.slots.lock().expect("slots lock").cordon_requested = false;
    }
    Ok(())
}

/// The three control-plane static pods' mirror pods of a control plane.
fn mirror_pods(
    api: &Api,
    pod_t: &super::types::ResType,
    n: &NodeInner,
    node: &str,
    images: &ComponentImages,
    running: bool,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    let ip = n.ip.to_string();
    for (app, image) in [
        ("kube-apiserver", &images.apiserver),
        ("kube-controller-manager", &images.controller_manager),
        ("kube-scheduler", &images.scheduler),
    ] {
        let name = format!("{app}-{node}");
        let current = api.store.get(&pod_t.key(Some("kube-system"), &name))?;
        let version: i64 = match &current {
            None => 1,
            Some(p) => {
                let v: i64 = s(p, "/metadata/annotations/talos.dev~1config-version")
                    .parse()
                    .unwrap_or(1);
                let same = p
                    .pointer("/spec/containers/0/image")
                    .and_then(Value::as_str)
                    == Some(image.as_str());
                if same {
                    v
                } else {
                    v + 1
                }
            }
        };
        let ready = running && due(format!("static/{name}"), version, STATIC_POD_READY);
        let hash = format!("{:x}", {
            use sha2::Digest;
            sha2::Sha256::digest(format!("{name}/{image}/{version}").as_bytes())
        });
        let hash = &hash[..32];
        let desired = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kube-system",
                "labels": {"k8s-app": app, "tier": "control-plane"},
                "annotations": {"kubernetes.io/config.hash": hash, "kubernetes.io/config.mirror": hash,
                    "kubernetes.io/config.source": "file", "talos.dev/config-version": version.to_string()},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": "", "controller": true}]},
            "spec": {"nodeName": node, "hostNetwork": true, "priorityClassName": "system-cluster-critical",
                "containers": [{"name": app, "image": image}]},
        });
        let status = pod_status(&desired, ready, &ip);
        match current {
            None => {
                let mut obj = desired;
                obj["status"] = status;
                api.sim_create(pod_t, obj)?;
                // Creation drops the status; the write below sets it.
                let st = pod_status(
                    &json!({"spec": {"containers": [{"name": app, "image": image}]}}),
                    ready,
                    &ip,
                );
                api.sim_write(pod_t, Some("kube-system"), &format!("{app}-{node}"), |o| {
                    o["status"] = st
                })?;
            }
            Some(p) => {
                let same_spec = p.pointer("/spec/containers")
                    == desired.pointer("/spec/containers")
                    && s(&p, "/metadata/annotations/talos.dev~1config-version")
                        == version.to_string();
                if same_spec && pod_ready(&p) == ready {
                    continue;
                }
                api.sim_write(pod_t, Some("kube-system"), s(&p, "/metadata/name"), |o| {
                    o["metadata"]["annotations"] = desired["metadata"]["annotations"].clone();
                    o["spec"]["containers"] = desired["spec"]["containers"].clone();
                    o["status"] = status;
                })?;
            }
        }
    }
    Ok(())
}

/// The disruption controller: every PDB's expected, healthy and allowed counts.
fn disruption_budgets(api: &Api) -> Result<(), ApiError> {
    let Some(t) = api.type_by_kind("PodDisruptionBudget") else {
        return Ok(());
    };
    let pods = list(api, "Pod");
    for pdb in list(api, "PodDisruptionBudget") {
        let ns = s(&pdb, "/metadata/namespace").to_string();
        let name = s(&pdb, "/metadata/name").to_string();
        let gen = pdb
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let Some(sel) = pdb.pointer("/spec/selector") else {
            continue;
        };
        let selected: Vec<&Value> = pods
            .iter()
            .filter(|p| s(p, "/metadata/namespace") == ns)
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .filter(|p| selects(sel, p.pointer("/metadata/labels").unwrap_or(&Value::Null)))
            .collect();
        let expected = selected.len() as i64;
        let healthy = selected.iter().filter(|p| pod_ready(p)).count() as i64;
        let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
            scaled(min, expected).unwrap_or(expected)
        } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
            (expected - scaled(max, expected).unwrap_or(0)).max(0)
        } else {
            expected
        };
        let allowed = (healthy - desired).max(0);
        let (st, reason) = if allowed > 0 {
            ("True", "SufficientPods")
        } else {
            ("False", "InsufficientPods")
        };
        let old_cond = pdb
            .pointer("/status/conditions/0")
            .filter(|c| s(c, "/status") == st)
            .cloned();
        let cond = old_cond.unwrap_or_else(|| {
            json!({"type": "DisruptionAllowed", "status": st, "reason": reason, "message": "",
                "observedGeneration": gen, "lastTransitionTime": now()})
        });
        let status = json!({
            "observedGeneration": gen,
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [cond],
        });
        api.sim_write(&t, Some(&ns), &name, |o| o["status"] = status)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_images_come_from_the_config_and_tags_are_versions() {
        let raw = b"version: v1alpha1\nmachine:\n  kubelet:\n    image: ghcr.io/siderolabs/kubelet:v1.36.1\ncluster:\n  apiServer:\n    image: registry.k8s.io/kube-apiserver:v1.36.1\n";
        let i = ComponentImages::parse(raw);
        assert_eq!(tag_of(&i.kubelet), "v1.36.1");
        assert_eq!(tag_of(&i.apiserver), "v1.36.1");
        assert_eq!(tag_of(&i.scheduler), KUBE_VERSION);
        assert_eq!(tag_of("registry.lab:5000/x@sha256:ab"), "latest");
    }

    #[test]
    fn selectors_and_percentages() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selects(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"app": "db"}}), &labels));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}),
            &labels
        ));
        assert!(!selects(
            &json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert_eq!(scaled(&json!("50%"), 3), Some(2));
        assert_eq!(scaled(&json!(1), 3), Some(1));
    }
}
