//! COSI State: Get, List and Watch of a node's resources, and the typed reads of
//! the resources the tool relies on (machine status and type, hostname, local
//! etcd member, disks, links), decoded from their YAML specs.

use futures::{Stream, StreamExt};
use tonic::Code;

use super::call::TalosClient;
use super::reply::status_to_error;
use crate::api::cosi::resource as cosi;
use crate::error::TalosError;
use crate::resources::{Resource, WatchEvent};

impl TalosClient {
    /// Reads one resource.
    pub async fn get(
        &self,
        namespace: &str,
        type_: &str,
        id: &str,
    ) -> Result<Resource, TalosError> {
        let resp = self
            .call("cosi.Get", || {
                let req = self.request(cosi::GetRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    id: id.to_string(),
                    options: None,
                })?;
                let mut c = self.cosi();
                Ok(async move { c.get(req).await })
            })
            .await?
            .into_inner();
        Resource::from_wire(resp.resource).ok_or_else(|| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "cosi.Get",
            detail: format!("{type_}/{id}: reply without a resource"),
        })
    }

    /// Lists every resource of a type.
    pub async fn list(&self, namespace: &str, type_: &str) -> Result<Vec<Resource>, TalosError> {
        let mut stream = self
            .call("cosi.List", || {
                let req = self.request(cosi::ListRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    options: None,
                })?;
                let mut c = self.cosi();
                Ok(async move { c.list(req).await })
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(item)) => out.extend(Resource::from_wire(item.resource)),
                Ok(None) => return Ok(out),
                Err(s) => return Err(self.error("cosi.List", s)),
            }
        }
    }

    /// Watches one resource (`id` set) or a whole type; the first event is the
    /// current state. The stream ends when the connection drops (e.g. a reboot):
    /// callers re-watch.
    pub async fn watch(
        &self,
        namespace: &str,
        type_: &str,
        id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<WatchEvent, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .call("cosi.Watch", || {
                let mut req = self.request(cosi::WatchRequest {
                    namespace: namespace.to_string(),
                    r#type: type_.to_string(),
                    id: id.map(str::to_string),
                    options: Some(cosi::WatchOptions {
                        bootstrap_contents: id.is_none(),
                        ..Default::default()
                    }),
                    api_version: 1,
                })?;
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.cosi();
                Ok(async move { c.watch(req).await })
            })
            .await?
            .into_inner();
        let out = futures::stream::unfold(Some(stream), move |state| {
            let label = label.clone();
            async move {
                let mut stream = state?;
                loop {
                    match stream.message().await {
                        // The empty first reply only says the watch is established.
                        Ok(Some(resp)) if resp.event.is_empty() => continue,
                        Ok(Some(resp)) => return Some((Ok(resp.event), Some(stream))),
                        Ok(None) => return None,
                        Err(s) => {
                            return Some((Err(status_to_error(&label, "cosi.Watch", s)), None))
                        }
                    }
                }
            }
        })
        .flat_map(|batch| {
            let items: Vec<Result<WatchEvent, TalosError>> = match batch {
                Ok(events) => events
                    .into_iter()
                    .map(|e| Ok(WatchEvent::from_wire(e)))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        });
        Ok(out)
    }
}

/// Typed reads of the resources the tool relies on.
impl TalosClient {
    async fn get_spec<T: for<'de> serde::Deserialize<'de>>(
        &self,
        (ns, ty, id): (&str, &str, &str),
    ) -> Result<T, TalosError> {
        let r = self.get(ns, ty, id).await?;
        r.spec().map_err(|detail| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "cosi.Get",
            detail,
        })
    }

    /// Boot stage and readiness (works in maintenance mode on 1.12 and 1.13).
    pub async fn machine_status(&self) -> Result<crate::resources::MachineStatus, TalosError> {
        self.get_spec(crate::resources::types::MACHINE_STATUS).await
    }

    pub async fn machine_type(&self) -> Result<crate::resources::MachineType, TalosError> {
        self.get_spec(crate::resources::types::MACHINE_TYPE).await
    }

    pub async fn hostname(&self) -> Result<crate::resources::HostnameSpec, TalosError> {
        self.get_spec(crate::resources::types::HOSTNAME).await
    }

    /// The local etcd member ID, if this node is a member.
    pub async fn etcd_local_member(&self) -> Result<Option<u64>, TalosError> {
        match self
            .get_spec::<crate::resources::EtcdLocalMemberSpec>(
                crate::resources::types::ETCD_LOCAL_MEMBER,
            )
            .await
        {
            Ok(spec) => Ok(u64::from_str_radix(&spec.member_id, 16).ok()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Disks the node sees (COSI `Disks.block.talos.dev`).
    pub async fn disks(&self) -> Result<Vec<crate::resources::Disk>, TalosError> {
        let (ns, ty) = crate::resources::types::DISKS;
        let mut out = Vec::new();
        for r in self.list(ns, ty).await? {
            let spec = r.spec().map_err(|detail| TalosError::Protocol {
                node: self.label.clone(),
                rpc: "cosi.List",
                detail,
            })?;
            out.push(crate::resources::Disk { name: r.id, spec });
        }
        Ok(out)
    }

    /// Network links (COSI `LinkStatuses.net.talos.dev`).
    pub async fn links(&self) -> Result<Vec<crate::resources::Link>, TalosError> {
        let (ns, ty) = crate::resources::types::LINKS;
        let mut out = Vec::new();
        for r in self.list(ns, ty).await? {
            let spec = r.spec().map_err(|detail| TalosError::Protocol {
                node: self.label.clone(),
                rpc: "cosi.List",
                detail,
            })?;
            out.push(crate::resources::Link { name: r.id, spec });
        }
        Ok(out)
    }

    /// Watches the machine status; yields each new state.
    pub async fn watch_machine_status(
        &self,
    ) -> Result<impl Stream<Item = Result<crate::resources::MachineStatus, TalosError>>, TalosError>
    {
        let (ns, ty, id) = crate::resources::types::MACHINE_STATUS;
        let label = self.label.clone();
        let events = self.watch(ns, ty, Some(id)).await?;
        Ok(events.filter_map(move |ev| {
            let label = label.clone();
            async move {
                match ev {
                    Err(e) => Some(Err(e)),
                    Ok(ev) => match (ev.kind, ev.resource) {
                        (
                            crate::resources::WatchEventKind::Created
                            | crate::resources::WatchEventKind::Updated,
                            Some(r),
                        ) => Some(r.spec().map_err(|detail| TalosError::Protocol {
                            node: label,
                            rpc: "cosi.Watch",
                            detail,
                        })),
                        _ => None,
                    },
                }
            }
        }))
    }
}
