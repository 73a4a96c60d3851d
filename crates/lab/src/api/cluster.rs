//! ClusterService: HealthCheck as talosctl's cluster checks run it on a control
//! plane (etcd healthy, etcd members consistent, apid ready, every node booted),
//! following lab changes instead of polling, until its wait timeout.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::gate::{BoxStream, LabApi};
use crate::node::data::NodeState;
use endsys_talos::api::cluster::{self, cluster_service_server::ClusterService};

#[tonic::async_trait]
impl ClusterService for LabApi {
    type HealthCheckStream = BoxStream<cluster::HealthCheckProgress>;

    async fn health_check(
        &self,
        request: Request<cluster::HealthCheckRequest>,
    ) -> Result<Response<Self::HealthCheckStream>, Status> {
        let info = self.gate(&request, "HealthCheck")?;
        if !self.node.v112() {
            self.control_plane(&info, "cluster health check")?;
        }
        let req = request.into_inner();
        let timeout = req
            .wait_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        if timeout.is_zero() {
            return Err(Status::deadline_exceeded("context deadline exceeded"));
        }
        let fabric = self.node.fabric.clone();
        let key = self
            .node
            .config()
            .map(|c| c.etcd_key.clone())
            .unwrap_or_default();
        let all = fabric.nodes();
        let (cps, workers): (Vec<String>, Vec<String>) = match req.cluster_info {
            Some(ci) if !ci.control_plane_nodes.is_empty() || !ci.worker_nodes.is_empty() => {
                (ci.control_plane_nodes, ci.worker_nodes)
            }
            _ => {
                let mut cps = Vec::new();
                let mut ws = Vec::new();
                for n in &all {
                    if let Some(c) = n.config().filter(|c| c.etcd_key == key) {
                        if c.machine_type.is_control_plane() {
                            cps.push(n.ip.to_string());
                        } else {
                            ws.push(n.ip.to_string());
                        }
                    }
                }
                (cps, ws)
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let mut changed = fabric.changed.subscribe();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let send = |m: String| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(cluster::HealthCheckProgress {
                        metadata: None,
                        message: m,
                    }))
                    .await
                    .is_ok()
                }
            };
            let mut discovered: Vec<String> = cps.iter().chain(workers.iter()).cloned().collect();
            discovered.sort();
            if !send(format!("discovered nodes: {discovered:?}")).await {
                return;
            }
            let find = |ip: &str| fabric.nodes().into_iter().find(|n| n.ip.to_string() == ip);
            type Check<'a> = (&'a str, Box<dyn Fn() -> Option<String> + Send + 'a>);
            let checks: Vec<Check> = vec![
                (
                    "etcd to be healthy",
                    Box::new(|| {
                        for ip in &cps {
                            let Some(n) = find(ip) else {
                                return Some(format!("{ip}: node not found"));
                            };
                            let state = n
                                .data
                                .lock()
                                .expect("data lock")
                                .services
                                .get("etcd")
                                .map(|s| s.state.clone());
                            match state {
                                Some(s) if s == "Running" => {}
                                Some(s) => {
                                    return Some(format!(
                                        "{ip}: service \"etcd\" not in expected state \"Running\": current state [{s}]"
                                    ))
                                }
                                None => return Some(format!("{ip}: rpc error: code = Unavailable desc = connection refused")),
                            }
                        }
                        None
                    }),
                ),
                (
                    "etcd members to be consistent across nodes",
                    Box::new(|| {
                        let mut seen: Option<u64> = None;
                        for ip in &cps {
                            let m = find(ip).and_then(|n| n.data.lock().expect("data lock").etcd);
                            match (m, seen) {
                                (None, _) => return Some(format!("{ip}: no etcd member")),
                                (Some(m), Some(s)) if m.cluster_uid != s => {
                                    return Some(format!(
                                        "{ip}: etcd members differ from other nodes"
                                    ))
                                }
                                (Some(m), _) => seen = Some(m.cluster_uid),
                            }
                        }
                        None
                    }),
                ),
                (
                    "apid to be ready",
                    Box::new(|| {
                        for ip in cps.iter().chain(workers.iter()) {
                            let up = find(ip).is_some_and(|n| {
                                matches!(n.state(), NodeState::Running | NodeState::Booting)
                            });
                            if !up {
                                return Some(format!(
                                    "{ip}: rpc error: code = Unavailable desc = connection refused"
                                ));
                            }
                        }
                        None
                    }),
                ),
                (
                    "all nodes to finish boot sequence",
                    Box::new(|| {
                        for ip in cps.iter().chain(workers.iter()) {
                            let st = find(ip).map(|n| n.state());
                            if st != Some(NodeState::Running) {
                                return Some(format!("{ip}: stage is not running"));
                            }
                        }
                        None
                    }),
                ),
            ];
            for (name, check) in checks {
                let mut last = String::new();
                loop {
                    changed.borrow_and_update();
                    match check() {
                        None => {
                            if !send(format!("waiting for {name}: OK")).await {
                                return;
                            }
                            break;
                        }
                        Some(why) => {
                            let msg = format!("waiting for {name}: {why}");
                            if msg != last {
                                if !send(msg.clone()).await {
                                    return;
                                }
                                last = msg;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            let _ = tx.send(Err(Status::deadline_exceeded(format!("{name}: context deadline exceeded")))).await;
                            return;
                        }
                        r = changed.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
