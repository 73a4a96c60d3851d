//! The handler every service of a node is implemented on ([`LabApi`]) and the
//! checks each call passes first, in the order apid applies them: fault injection,
//! Talos 1.12's maintenance server rules, machined's role table (1.13; admin for
//! unlisted methods), and `machinehelper.CheckControlplane`; plus what the
//! services share: starting a transition that waits for its reply, timestamps.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::node::lifecycle::ReplySent;
use crate::node::NodeInner;
use crate::tls::{ApiMode, LabConnInfo};

pub(super) const ADMIN: &str = "os:admin";
const OPERATOR: &str = "os:operator";
const READER: &str = "os:reader";
const BACKUP: &str = "os:etcd:backup";

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(super) fn not_authorized() -> Status {
    Status::permission_denied("not authorized")
}

#[derive(Clone)]
pub(crate) struct LabApi {
    pub node: Arc<NodeInner>,
}

/// Roles allowed per method (machined's rule table, 1.13; admin for unlisted ones).
fn allowed_roles(method: &str, v112: bool) -> &'static [&'static str] {
    match method {
        "ApplyConfiguration" | "BlockDeviceWipe" if v112 => &[ADMIN],
        "ApplyConfiguration" | "BlockDeviceWipe" => &[ADMIN, READER],
        "Bootstrap" | "Kubeconfig" | "Reset" => &[ADMIN],
        "Reboot" | "ImagePull" | "ImageService.Pull" => &[ADMIN, OPERATOR],
        "Version" | "ServiceList" | "Events" | "HealthCheck" | "Disks" | "Get" | "List"
        | "Watch" => &[ADMIN, OPERATOR, READER],
        "EtcdMemberList" | "EtcdStatus" => &[ADMIN, OPERATOR, READER, BACKUP],
        "EtcdSnapshot" => &[ADMIN, OPERATOR, BACKUP],
        _ => &[ADMIN],
    }
}

pub(super) fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

impl LabApi {
    /// Fault injection, maintenance rules and the role check, in the order apid applies them.
    pub(super) fn gate<T>(&self, req: &Request<T>, method: &str) -> Result<LabConnInfo, Status> {
        if self
            .node
            .drop_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable(
                "connection error: lab fault injection dropped this call",
            ));
        }
        let info = req
            .extensions()
            .get::<LabConnInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("lab: connection info missing"))?;
        if info.mode == ApiMode::Maintenance112 {
            return match method {
                "ApplyConfiguration" | "Disks" | "BlockDeviceWipe" | "Get" | "List" | "Watch"
                | "Create" | "Update" | "Destroy" => Ok(info),
                "Version" | "Reset" | "Upgrade" | "MetaWrite" | "MetaDelete" => Err(
                    Status::unimplemented("API is not implemented in maintenance mode"),
                ),
                "HealthCheck" => Err(Status::unimplemented(
                    "unknown service cluster.ClusterService",
                )),
                m => Err(Status::unimplemented(format!("method {m} not implemented"))),
            };
        }
        let allowed = allowed_roles(method, self.node.v112());
        if !info.roles.iter().any(|r| allowed.contains(&r.as_str())) {
            return Err(not_authorized());
        }
        Ok(info)
    }

    /// machinehelper.CheckControlplane.
    pub(super) fn control_plane(
        &self,
        info: &LabConnInfo,
        api: &str,
    ) -> Result<Arc<NodeConfig>, Status> {
        let cfg = match (info.mode, self.node.config()) {
            (ApiMode::Configured, Some(cfg)) => cfg,
            _ => {
                return Err(Status::unimplemented(format!(
                    "machine type is not set, cannot use {api} API"
                )))
            }
        };
        if !cfg.machine_type.is_control_plane() {
            return Err(Status::unimplemented(format!(
                "{api} is only available on control plane nodes"
            )));
        }
        Ok(cfg)
    }

    /// Starts a transition that takes the node down; the returned marker goes into
    /// the reply's extensions so the transition waits for the reply to be sent.
    pub(super) fn spawn<F>(&self, f: impl FnOnce(Arc<NodeInner>, u64) -> F) -> ReplySent
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let node = self.node.clone();
        let marker = node.expect_reply();
        let gen = node.bump_gen();
        tokio::spawn(f(node, gen));
        marker
    }

    pub(super) fn with_marker<T>(mut resp: Response<T>, marker: ReplySent) -> Response<T> {
        resp.extensions_mut().insert(marker);
        resp
    }
}
