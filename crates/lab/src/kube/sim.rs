//! The simulated kubelets and controllers: nodes register when the API comes up
//! and turn Ready once a CNI DaemonSet has rolled out; Deployments, DaemonSets,
//! StatefulSets, Jobs and CRDs get their status after delays (× the lab's time
//! scale), unless a fault keeps them from it. Everything reacts to store events —
//! nothing polls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::server::discovery::KUBE_VERSION;
use super::server::{now, Api};
use super::shared::Faults;
use super::store::Signal;
use super::types::ResType;
use crate::node::data::NodeState;
use crate::node::Fabric;

/// Base delays in seconds, multiplied by the lab's time scale.
const KUBELET_START: f64 = 2.0;
const CNI_ROLLOUT: f64 = 8.0;
const WORKLOAD_ROLLOUT: f64 = 4.0;
const JOB_RUN: f64 = 3.0;
const CRD_ESTABLISH: f64 = 0.5;

const NOT_READY_MESSAGE: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

struct State {
    started: Instant,
    /// key → (generation, when its rollout is done).
    due: HashMap<String, (i64, Instant)>,
    scheduled: HashSet<(String, i64)>,
    /// Component images parsed from the nodes' configs.
    images: super::talos::ImageCache,
}

pub(crate) async fn run(api: Arc<Api>, fabric: Arc<Fabric>, mut stop: watch::Receiver<bool>) {
    let mut events = api.store.subscribe();
    let mut nodes = fabric.changed.subscribe();
    let mut st = State {
        started: Instant::now(),
        due: HashMap::new(),
        scheduled: HashSet::new(),
        images: Default::default(),
    };
    loop {
        if let Err(e) = pass(&api, &fabric, &mut st) {
            tracing::debug!("lab kube simulation: {}", e.message);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = nodes.changed() => {}
            _ = api.sim_wake.notified() => {}
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                // Coalesce a burst of changes into one pass.
                while let Ok(Signal::Change(_) | Signal::Reset) = events.try_recv() {}
            }
        }
    }
}

fn ty(api: &Api, kind: &str) -> Option<ResType> {
    api.type_by_kind(kind)
}

fn list(api: &Api, t: &ResType) -> Vec<Value> {
    api.store
        .list(&t.prefix())
        .map(|(items, _)| items.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn meta(v: &Value) -> (Option<String>, String) {
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    (ns, s(v, "/metadata/name").to_string())
}

/// Schedules a pass for when `key`'s current generation is due; true once it is.
fn is_due(api: &Api, fabric: &Fabric, st: &mut State, key: String, gen: i64, base: f64) -> bool {
    let delay = fabric.scaled(base);
    let now = Instant::now();
    let entry = st.due.entry(key.clone()).or_insert_with(|| {
        fabric.record_delay(
            None,
            "kube controller",
            now.into_std(),
            (now + delay).into_std(),
        );
        (gen, now + delay)
    });
    if entry.0 != gen {
        *entry = (gen, now + delay);
        fabric.record_delay(
            None,
            "kube controller",
            now.into_std(),
            (now + delay).into_std(),
        );
    }
    let at = entry.1;
    if Instant::now() >= at {
        return true;
    }
    if st.scheduled.insert((key, gen)) {
        let wake = api.sim_wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            wake.notify_one();
        });
    }
    false
}

/// Keeps the transition times of conditions whose status did not change, so a
/// pass that changes nothing writes nothing.
fn conditions(old: &Value, new: Vec<Value>) -> Value {
    let now = now();
    let olds = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let out: Vec<Value> = new
        .into_iter()
        .map(|mut c| {
            let prev = olds.iter().find(|o| o.get("type") == c.get("type"));
            for k in [
                "lastTransitionTime",
                "lastUpdateTime",
                "lastHeartbeatTime",
                "lastProbeTime",
            ] {
                if c.get(k).is_some() {
                    let same = prev.is_some_and(|p| p.get("status") == c.get("status"));
                    c[k] = match prev.and_then(|p| p.get(k)) {
                        Some(t) if same => t.clone(),
                        _ => json!(now),
                    };
                }
            }
            c
        })
        .collect();
    Value::Array(out)
}

fn cond(t: &str, status: bool, reason: &str, message: &str, update: bool) -> Value {
    let mut c = json!({
        "type": t,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": "",
    });
    if update {
        c["lastUpdateTime"] = json!("");
    }
    c
}

fn images(pod_spec: Option<&Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in ["initContainers", "containers"] {
        if let Some(cs) = pod_spec.and_then(|p| p.get(k)).and_then(Value::as_array) {
            for c in cs {
                out.push((s(c, "/name").to_string(), s(c, "/image").to_string()));
            }
        }
    }
    out
}

/// Why pods of a workload cannot run, pod-style (None = they run).
fn pod_problem(faults: &Faults, name: &str, pod_spec: Option<&Value>) -> Option<String> {
    let hit = |pats: &std::collections::BTreeSet<String>, image: &str| {
        pats.iter()
            .any(|p| !p.is_empty() && (image.contains(p.as_str()) || name.contains(p.as_str())))
    };
    let pod = format!("{name}-7d9c5b8f6-x2k4q");
    for (c, image) in images(pod_spec) {
        if hit(&faults.stuck, &image) {
            return Some(format!(
                "Pod \"{pod}\": container \"{c}\" is waiting: ImagePullBackOff: Back-off pulling image \"{image}\""
            ));
        }
        if hit(&faults.crash, &image) {
            return Some(format!(
                "Pod \"{pod}\": container \"{c}\" is waiting: CrashLoopBackOff: back-off 5m0s restarting failed container={c} pod={pod}"
            ));
        }
    }
    None
}

fn is_cni(ds: &Value) -> bool {
    let labels = ds.pointer("/metadata/labels");
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    s(ds, "/metadata/namespace") == "kube-system"
        && (s(ds, "/metadata/name") == "cilium"
            || label("k8s-app") == "cilium"
            || label("app.kubernetes.io/name") == "cilium-agent")
}

fn host_network(pod_spec: Option<&Value>) -> bool {
    pod_spec
        .and_then(|p| p.get("hostNetwork"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn node_ready(n: &Value) -> bool {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
        })
}

fn pass(api: &Api, fabric: &Fabric, st: &mut State) -> Result<(), super::store::ApiError> {
    let faults = api.shared.faults();
    let (Some(node_t), Some(ds_t), Some(dep_t), Some(sts_t), Some(job_t), Some(crd_t)) = (
        ty(api, "Node"),
        ty(api, "DaemonSet"),
        ty(api, "Deployment"),
        ty(api, "StatefulSet"),
        ty(api, "Job"),
        ty(api, "CustomResourceDefinition"),
    ) else {
        return Ok(());
    };

    // CRDs: names accepted and established.
    for crd in list(api, &crd_t) {
        let (_, name) = meta(&crd);
        let gen = crd
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if !is_due(api, fabric, st, format!("crd/{name}"), gen, CRD_ESTABLISH) {
            continue;
        }
        let mut names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        if names.get("singular").is_none() {
            names["singular"] = json!(s(&crd, "/spec/names/kind").to_ascii_lowercase());
        }
        if names.get("listKind").is_none() {
            names["listKind"] = json!(format!("{}List", s(&crd, "/spec/names/kind")));
        }
        let stored: Vec<Value> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({
            "conditions": conditions(&crd, vec![
                cond("NamesAccepted", true, "NoConflicts", "no conflicts found", false),
                cond("Established", true, "InitialNamesAccepted", "the initial names have been accepted", false),
            ]),
            "acceptedNames": names,
            "storedVersions": stored,
        });
        api.sim_write(&crd_t, None, &name, |o| o["status"] = status)?;
    }

    // Kubelets register their nodes once they "start".
    let kubelets_up = Instant::now() >= st.started + fabric.scaled(KUBELET_START);
    if !kubelets_up {
        let at = st.started + fabric.scaled(KUBELET_START);
        if st.scheduled.insert(("kubelet".into(), 0)) {
            fabric.record_delay(
                None,
                "kubelet start",
                Instant::now().into_std(),
                at.into_std(),
            );
            let wake = api.sim_wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                wake.notify_one();
            });
        }
    }
    let lab_nodes = fabric.nodes();
    // What the API server checks a kubelet's TLS bootstrap against: the bootstrap
    // token (`cluster.token`) and the cluster CA its kubeconfig trusts.
    let api_cfg = lab_nodes
        .iter()
        .filter(|n| n.state() == NodeState::Running)
        .filter_map(|n| n.config())
        .find(|c| c.machine_type.is_control_plane() && c.cluster_ca.is_some());
    let mut node_up: HashMap<String, bool> = HashMap::new();
    for n in &lab_nodes {
        let Some(cfg) = n.config() else { continue };
        let joins = api_cfg.as_ref().is_some_and(|a| {
            a.bootstrap_token == cfg.bootstrap_token && a.cluster_ca_crt == cfg.cluster_ca_crt
        });
        if !joins {
            // 401 Unauthorized to the kubelet (or another cluster's CA): no Node.
            continue;
        }
        let name = cfg
            .hostname
            .clone()
            .unwrap_or_else(|| format!("talos-{}", n.ip.to_string().replace('.', "-")));
        let running = n.state() == NodeState::Running;
        node_up.insert(name.clone(), running);
        if !running || !kubelets_up {
            continue;
        }
        let cp = cfg.machine_type.is_control_plane();
        let mut labels = json!({
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
        });
        let mut taints =
            vec![json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})];
        if cp {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
            taints.push(
                json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}),
            );
        }
        let t = now();
        let c = |ty: &str, reason: &str, msg: &str| {
            json!({"type": ty, "status": "False", "reason": reason, "message": msg,
                "lastHeartbeatTime": t, "lastTransitionTime": t})
        };
        let capacity = json!({"cpu": "4", "memory": "8029976Ki", "pods": "110", "ephemeral-storage": "61202244Ki"});
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"podCIDR": format!("10.244.{}.0/24", n.index), "podCIDRs": [format!("10.244.{}.0/24", n.index)], "taints": taints},
            "status": {
                "addresses": [{"type": "InternalIP", "address": n.ip.to_string()}, {"type": "Hostname", "address": name}],
                "capacity": capacity, "allocatable": capacity,
                "conditions": [
                    c("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    c("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    c("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    c("Ready", "KubeletNotReady", NOT_READY_MESSAGE),
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"architecture": "amd64", "bootID": n.boot_id(),
                    "containerRuntimeVersion": "containerd://2.1.5", "kernelVersion": "6.18.2-talos",
                    "kubeProxyVersion": "", "kubeletVersion": KUBE_VERSION, "machineID": format!("{:032x}", n.index + 1),
                    "operatingSystem": "linux", "osImage": format!("Talos ({})", n.talos_version()),
                    "systemUUID": uuid::Uuid::new_v4().to_string()},
            },
        });
        api.sim_create(&node_t, node)?;
    }
    let nodes = list(api, &node_t);
    let total = nodes.len() as i64;
    let ready = nodes.iter().filter(|n| node_ready(n)).count() as i64;

    // DaemonSets (the CNI first: nodes depend on it).
    let mut cni_ready = false;
    for ds in list(api, &ds_t) {
        let (ns, name) = meta(&ds);
        let gen = ds
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec = ds.pointer("/spec/template/spec");
        let cni = is_cni(&ds);
        let base = if cni { CNI_ROLLOUT } else { WORKLOAD_ROLLOUT };
        let due = is_due(api, fabric, st, format!("ds/{ns:?}/{name}"), gen, base);
        let problem = pod_problem(&faults, &name, spec);
        let runnable = if cni || host_network(spec) {
            total
        } else {
            ready
        };
        let up = if due && problem.is_none() {
            runnable
        } else {
            0
        };
        if cni && total > 0 && up == total {
            cni_ready = true;
        }
        let mut status = json!({
            "currentNumberScheduled": total,
            "desiredNumberScheduled": total,
            "numberMisscheduled": 0,
            "numberReady": up,
            "numberAvailable": up,
            "updatedNumberScheduled": if due { total } else { 0 },
            "observedGeneration": gen,
        });
        if total - up > 0 {
            status["numberUnavailable"] = json!(total - up);
        }
        if let Some(p) = &problem {
            status["conditions"] = conditions(
                &ds,
                vec![cond("Available", false, "PodsNotReady", p, false)],
            );
        }
        api.sim_write(&ds_t, ns.as_deref(), &name, |o| o["status"] = status)?;
    }

    // Nodes follow the CNI (and their lab node's power).
    for n in &nodes {
        let (_, name) = meta(n);
        let up = node_up.get(&name).copied().unwrap_or(false);
        let (status, reason, message) = match (up, cni_ready) {
            (false, _) => (
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            ),
            (true, true) => ("True", "KubeletReady", "kubelet is posting ready status"),
            (true, false) => ("False", "KubeletNotReady", NOT_READY_MESSAGE),
        };
        let t = now();
        api.sim_write(&node_t, None, &name, |o| {
            let Some(cs) = o.pointer_mut("/status/conditions").and_then(Value::as_array_mut) else {
                return;
            };
            for c in cs.iter_mut() {
                if s(c, "/type") == "Ready" && s(c, "/status") != status {
                    *c = json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": t, "lastTransitionTime": t});
                }
            }
            if let Some(ts) = o.pointer_mut("/spec/taints").and_then(Value::as_array_mut) {
                let has = ts.iter().any(|x| s(x, "/key") == "node.kubernetes.io/not-ready");
                if status == "True" && has {
                    ts.retain(|x| s(x, "/key") != "node.kubernetes.io/not-ready");
                } else if status != "True" && !has {
                    ts.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}));
                }
            }
        })?;
    }
    let ready = list(api, &node_t).iter().filter(|n| node_ready(n)).count() as i64;
    let unschedulable = format!(
        "0/{total} nodes are available: {total} node(s) had untolerated taint {{node.kubernetes.io/not-ready: }}."
    );

    // Deployments and StatefulSets.
    for (t, kind) in [(&dep_t, "Deployment"), (&sts_t, "StatefulSet")] {
        for w in list(api, t) {
            let (ns, name) = meta(&w);
            let gen = w
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let replicas = w
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let spec = w.pointer("/spec/template/spec");
            let due = is_due(
                api,
                fabric,
                st,
                format!("{kind}/{ns:?}/{name}"),
                gen,
                WORKLOAD_ROLLOUT,
            );
            let problem = pod_problem(&faults, &name, spec).or_else(|| {
                (replicas > 0 && ready == 0 && !host_network(spec)).then(|| unschedulable.clone())
            });
            let ok = due && problem.is_none();
            let up = if ok { replicas } else { 0 };
            let mut status = json!({"observedGeneration": gen, "replicas": replicas});
            if up > 0 {
                status["readyReplicas"] = json!(up);
                status["availableReplicas"] = json!(up);
            }
            status["updatedReplicas"] = json!(if due { replicas } else { 0 });
            if kind == "Deployment" {
                if replicas - up > 0 {
                    status["unavailableReplicas"] = json!(replicas - up);
                }
                let rs = format!("{name}-7d9c5b8f6");
                let (avail_reason, avail_msg) = if ok {
                    (
                        "MinimumReplicasAvailable",
                        "Deployment has minimum availability.".to_string(),
                    )
                } else {
                    let mut m = "Deployment does not have minimum availability.".to_string();
                    if let (true, Some(p)) = (due, &problem) {
                        m = format!("{m} {p}");
                    }
                    ("MinimumReplicasUnavailable", m)
                };
                let (prog_reason, prog_msg) = if ok {
                    (
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{rs}\" has successfully progressed."),
                    )
                } else {
                    (
                        "ReplicaSetUpdated",
                        format!("ReplicaSet \"{rs}\" is progressing."),
                    )
                };
                status["conditions"] = conditions(
                    &w,
                    vec![
                        cond("Available", ok, avail_reason, &avail_msg, true),
                        cond("Progressing", true, prog_reason, &prog_msg, true),
                    ],
                );
            } else {
                status["currentReplicas"] = json!(if due { replicas } else { 0 });
                status["currentRevision"] = json!(format!("{name}-7d9c5b8f6"));
                status["updateRevision"] = json!(format!("{name}-7d9c5b8f6"));
                status["collisionCount"] = json!(0);
                if let (true, Some(p)) = (due, &problem) {
                    status["conditions"] =
                        conditions(&w, vec![cond("Available", false, "PodsNotReady", p, false)]);
                }
            }
            api.sim_write(t, ns.as_deref(), &name, |o| o["status"] = status)?;
        }
    }

    // Jobs run to completion (or fail when their pods crash).
    for j in list(api, &job_t) {
        let (ns, name) = meta(&j);
        let gen = j
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec = j.pointer("/spec/template/spec");
        let completions = j
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let backoff = j
            .pointer("/spec/backoffLimit")
            .and_then(Value::as_i64)
            .unwrap_or(6);
        let due = is_due(api, fabric, st, format!("job/{ns:?}/{name}"), gen, JOB_RUN);
        let start = j
            .pointer("/status/startTime")
            .cloned()
            .unwrap_or_else(|| json!(now()));
        let problem = pod_problem(&faults, &name, spec)
            .or_else(|| (ready == 0 && !host_network(spec)).then(|| unschedulable.clone()));
        let crashing = problem
            .as_deref()
            .is_some_and(|p| p.contains("CrashLoopBackOff"));
        let status = if due && crashing {
            json!({"startTime": start, "failed": backoff + 1, "active": 0, "ready": 0, "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": conditions(&j, vec![
                cond("FailureTarget", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit", false),
                cond("Failed", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit", false),
            ])})
        } else if due && problem.is_none() {
            let done = j
                .pointer("/status/completionTime")
                .cloned()
                .unwrap_or_else(|| json!(now()));
            json!({"startTime": start, "completionTime": done, "succeeded": completions, "active": 0,
            "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
            "conditions": conditions(&j, vec![
                cond("SuccessCriteriaMet", true, "CompletionsReached", "Reached expected number of succeeded pods", false),
                cond("Complete", true, "CompletionsReached", "Reached expected number of succeeded pods", false),
            ])})
        } else {
            let mut s = json!({"startTime": start, "active": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}});
            if let (true, Some(p)) = (due, &problem) {
                s["conditions"] =
                    conditions(&j, vec![cond("PodsReady", false, "PodsNotReady", p, false)]);
            }
            s
        };
        api.sim_write(&job_t, ns.as_deref(), &name, |o| o["status"] = status)?;
    }
    // What Talos and the kubelets do: node info, cordons, static pods, pods, PDBs.
    let mut images = std::mem::take(&mut st.images);
    let done = super::talos::pass(api, fabric, &mut images, &mut |key, gen, base| {
        is_due(api, fabric, st, key, gen, base)
    });
    st.images = images;
    done?;
    // The lab's Flux controllers (idle until a FluxInstance exists).
    super::flux::pass(api, &mut |key, gen, base| {
        is_due(api, fabric, st, key, gen, base)
    })?;
    // The lab's Velero (idle until its CRDs are installed).
    super::velero::pass(api, &mut |key, gen, base| {
        is_due(api, fabric, st, key, gen, base)
    })?;
    let _ = Duration::ZERO;
    Ok(())
}
