//! The way back after a reboot: a new boot ID and the machine running and
//! ready, the version the operation asked for (the same version as before
//! means Talos rolled back to its other boot slot: [`GateError::RolledBack`]),
//! the node's services healthy, its etcd member healthy, and its Kubernetes
//! Node Ready (with the kubelet version, when asked).

use std::time::Duration;

use futures::StreamExt;

use crate::engine::{Backoff, Cluster, Emitter, FlowError, GateError, NodeDef, StepId, Wait};
use crate::talos::resources::MachineStage;
use crate::talos::wait::POLL_FALLBACK;
use crate::talos::{CallPolicy, TalosError};

use super::quorum::{self, GuardOp};

/// Where a boot ID was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootIdSource {
    /// COSI `BootIDs.runtime.talos.dev/boot-id` (Talos 1.14+).
    Resource,
    /// `MachineService.Read /proc/sys/kernel/random/boot_id` (admin).
    Read,
    /// The Kubernetes Node's `status.nodeInfo.bootID` (written by kubelet).
    Node,
}

/// The node's boot ID now, from the first source that answers: the BootIDs
/// resource, then the kernel file, then the Kubernetes Node.
pub async fn boot_id(
    cluster: &Cluster,
    node: &NodeDef,
    policy: CallPolicy,
    kube: Option<&kube::Client>,
) -> Result<(String, BootIdSource), FlowError> {
    let c = cluster.mtls(node, policy)?;
    // Before 1.14 the resource does not exist (NotFound): the file is next.
    if let Ok(r) = c
        .get("runtime", "BootIDs.runtime.talos.dev", "boot-id")
        .await
    {
        if let Some(id) = spec_field(&r.yaml_spec, "bootID") {
            return Ok((id, BootIdSource::Resource));
        }
    }
    let last: TalosError = match c.boot_id().await {
        Ok(id) => return Ok((id, BootIdSource::Read)),
        Err(e) => e,
    };
    if let Some(k) = kube {
        if let Ok(Some(id)) = crate::kube::nodes::boot_id(k, &node.hostname).await {
            return Ok((id, BootIdSource::Node));
        }
    }
    Err(last.into())
}

fn spec_field(yaml: &str, key: &str) -> Option<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// A node seen back after a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebooted {
    pub boot_id: String,
    /// Every boot ID seen, the one before first (a rollback shows two new ones
    /// when the failed boot answered at all).
    pub boot_ids: Vec<String>,
}

/// Waits until the node answers with a boot ID other than `before` and its
/// MachineStatus is running and ready. Polls at most [`POLL_FALLBACK`] apart
/// while the node is away; `step` names the waiting lines.
pub async fn wait_rebooted(
    cluster: &Cluster,
    node: &NodeDef,
    policy: CallPolicy,
    before: &str,
    deadline: Duration,
    em: &Emitter,
    step: StepId,
) -> Result<Rebooted, FlowError> {
    let mut w = Wait::new(
        node.label(),
        "back with a new boot ID, running and ready",
        deadline,
    )
    .backoff(Backoff::new(Duration::from_millis(25), POLL_FALLBACK));
    let mut seen = vec![before.to_string()];
    let once = policy.once();
    loop {
        w.check()?;
        match boot_id(cluster, node, once, None).await {
            Ok((id, _)) if id != before => {
                if !seen.contains(&id) {
                    seen.push(id.clone());
                }
                match cluster.mtls(node, once)?.machine_status().await {
                    Ok(s) if s.stage == MachineStage::Running && s.status.ready => {
                        return Ok(Rebooted {
                            boot_id: id,
                            boot_ids: seen,
                        })
                    }
                    Ok(s) => w.seen(format!("new boot {}: {}", short(&id), s.summary())),
                    Err(e) => w.seen(format!("new boot {}: {e}", short(&id))),
                }
            }
            Ok(_) => w.seen("still on the boot ID from before the call"),
            Err(e) => w.seen(format!("away ({})", first_line(&e.to_string()))),
        }
        if w.news("reboot") {
            em.waiting(
                step,
                Some(&node.hostname),
                format!("{}: {}", node.label(), w.last()),
            );
        }
        w.pause().await?;
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The node's running Talos version (`Version.tag`).
pub async fn running_version(
    cluster: &Cluster,
    node: &NodeDef,
    policy: CallPolicy,
) -> Result<String, FlowError> {
    Ok(cluster.mtls(node, policy)?.version().await?.tag)
}

/// Compares the version a node came back on with the one asked for: equal is
/// fine; the version from before means a rollback (stop, with the boot IDs and
/// the events); anything else is reported as such.
pub fn verify_version(
    node: &NodeDef,
    from: &str,
    to: &str,
    running: &str,
    boot_ids: &[String],
    events: Vec<String>,
) -> Result<(), FlowError> {
    let same = |a: &str, b: &str| a.trim_start_matches('v') == b.trim_start_matches('v');
    if same(running, to) {
        return Ok(());
    }
    if same(running, from) {
        return Err(GateError::RolledBack {
            node: node.label(),
            from: from.to_string(),
            to: to.to_string(),
            boot_ids: boot_ids.to_vec(),
            events,
        }
        .into());
    }
    Err(GateError::WrongVersion {
        node: node.label(),
        from: from.to_string(),
        to: to.to_string(),
        running: running.to_string(),
    }
    .into())
}

/// The node's recent events, one line each (what a rollback report shows):
/// the stream is read until it goes quiet for a moment.
pub async fn recent_events(cluster: &Cluster, node: &NodeDef, policy: CallPolicy) -> Vec<String> {
    let Ok(c) = cluster.mtls(node, policy.once()) else {
        return vec![];
    };
    let Ok(stream) = c.events(40).await else {
        return vec![];
    };
    let mut stream = Box::pin(stream);
    let mut out = Vec::new();
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await
    {
        out.push(crate::talos::events::event_line(&ev));
        if out.len() >= 40 {
            break;
        }
    }
    out
}

/// The services a node of this kind must run healthy.
pub fn expected_services(node: &NodeDef) -> Vec<&'static str> {
    let mut s = vec!["apid", "machined", "kubelet"];
    if node.control_plane {
        s.extend(["etcd", "trustd"]);
    }
    s
}

/// Waits until every expected service is running and healthy (a service the
/// node does not list at all is not waited for: not every version runs each).
pub async fn services_healthy(
    cluster: &Cluster,
    node: &NodeDef,
    policy: CallPolicy,
    deadline: Duration,
) -> Result<Vec<&'static str>, FlowError> {
    let mut w = Wait::new(node.label(), "services running and healthy", deadline)
        .backoff(Backoff::new(Duration::from_millis(25), POLL_FALLBACK));
    let want = expected_services(node);
    loop {
        match cluster.mtls(node, policy.once())?.service_list().await {
            Ok(list) => {
                let bad: Vec<String> = want
                    .iter()
                    .filter_map(|id| list.iter().find(|s| s.id == *id))
                    .filter(|s| {
                        !(s.state.eq_ignore_ascii_case("running")
                            && (s.healthy || s.health_unknown))
                    })
                    .map(|s| format!("{} {} ({})", s.id, s.state, s.last_message))
                    .collect();
                if bad.is_empty() {
                    return Ok(want
                        .into_iter()
                        .filter(|id| list.iter().any(|s| s.id == *id))
                        .collect());
                }
                w.seen(bad.join(", "));
            }
            Err(e) => w.seen(e.to_string()),
        }
        w.pause().await?;
    }
}

/// Waits until etcd has as many members as the definition has control planes,
/// all healthy with one leader (the node's own member back). Control planes
/// in `excused` (left out with `--force`) are not asked. Returns the control
/// plane the member list came from.
pub async fn etcd_healthy(
    cluster: &Cluster,
    node: &NodeDef,
    policy: CallPolicy,
    deadline: Duration,
    excused: &[String],
) -> Result<String, FlowError> {
    let mut w = Wait::new(
        node.label(),
        "etcd: every member healthy, one leader",
        deadline,
    )
    .backoff(Backoff::new(
        Duration::from_millis(25),
        Duration::from_millis(250),
    ));
    let want = cluster.def.control_planes().count();
    loop {
        let mut view = quorum::survey(cluster, policy).await;
        view.cps.retain(|p| !excused.contains(&p.hostname));
        let mut why = quorum::evaluate(cluster, &view, node, GuardOp::Worker);
        if view.members.len() != want {
            why.push(format!(
                "{} etcd member(s), {want} control plane(s) in the definition",
                view.members.len()
            ));
        }
        if why.is_empty() {
            return Ok(view.members_from.unwrap_or_default());
        }
        w.seen(why.join("; "));
        if w.check().is_err() {
            return Err(FlowError::Guard {
                op: "verify",
                node: node.label(),
                reasons: why,
                table: quorum::member_table(cluster, &view),
            });
        }
        w.pause().await?;
    }
}

/// Waits until the Node is Ready and, with `kubelet`, reports that kubelet
/// version (`v1.36.0`).
pub async fn node_ready(
    k: &kube::Client,
    node: &NodeDef,
    kubelet: Option<&str>,
    deadline: Duration,
) -> Result<(), FlowError> {
    crate::kube::nodes::wait_node_version(k, &node.hostname, kubelet, deadline)
        .await
        .map_err(|e| FlowError::kube_on(&node.label(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeDef {
        NodeDef {
            hostname: "cp2".into(),
            address: "127.0.0.12".into(),
            control_plane: true,
            install_disk: None,
            links: vec![],
        }
    }

    #[test]
    fn a_node_back_on_its_old_version_rolled_back() {
        let ids = vec!["a".to_string(), "b".into(), "c".into()];
        assert!(verify_version(&node(), "v1.12.6", "v1.13.9", "v1.13.9", &ids, vec![]).is_ok());
        let e = verify_version(
            &node(),
            "v1.12.6",
            "v1.13.9",
            "v1.12.6",
            &ids,
            vec!["SequenceEvent boot stop error: boot failed".into()],
        )
        .unwrap_err();
        let t = e.to_string();
        assert!(t.contains("cp2 (127.0.0.12) rolled back"), "{t}");
        assert!(
            t.contains("v1.12.6 → v1.13.9") && t.contains("a → b → c"),
            "{t}"
        );
        assert!(t.contains("boot failed"), "{t}");
        let e = verify_version(&node(), "v1.12.6", "v1.13.9", "v1.13.8", &ids, vec![]).unwrap_err();
        assert!(e.to_string().contains("runs v1.13.8"), "{e}");
    }

    #[test]
    fn control_planes_need_etcd_and_trustd() {
        assert!(expected_services(&node()).contains(&"etcd"));
        let w = NodeDef {
            control_plane: false,
            ..node()
        };
        assert_eq!(expected_services(&w), ["apid", "machined", "kubelet"]);
    }
}
