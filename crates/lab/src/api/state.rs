//! COSI State: Get, List and Watch of the node's resource table (read-only:
//! Create/Update/Destroy are refused), with COSI's rules: unsupported types and
//! namespaces refused, sensitive types admin-only, Watch's empty readiness reply,
//! bootstrap contents and `Bootstrapped` marker (API version 1), tombstones.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::gate::{not_authorized, ts, BoxStream, LabApi, ADMIN};
use crate::node::data::ResRec;
use crate::node::resources::{type_info, MachineConfigSpec, NAMESPACES};
use crate::tls::LabConnInfo;
use endsys_talos::api::cosi::resource::{self as cosi, state_server::State};

fn to_resource(r: &ResRec) -> cosi::Resource {
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: r.namespace.clone(),
            r#type: r.r#type.clone(),
            id: r.id.clone(),
            version: r.version.to_string(),
            owner: String::new(),
            phase: "running".into(),
            created: ts(r.created),
            updated: ts(r.updated),
            finalizers: vec![],
            labels: Default::default(),
            annotations: Default::default(),
        }),
        // proto_spec stays empty but for MachineConfigs: the resource definition
        // protos are not compiled into this crate (see `node/resources.rs`).
        spec: Some(cosi::Spec {
            proto_spec: proto_spec(r),
            yaml_spec: r.yaml.clone(),
        }),
    }
}

fn proto_spec(r: &ResRec) -> Vec<u8> {
    use prost::Message;
    if r.r#type != "MachineConfigs.config.talos.dev" {
        return Vec::new();
    }
    let raw: String = serde_yaml_ng::from_str(&r.yaml).unwrap_or_default();
    MachineConfigSpec {
        yaml_marshalled: raw.into_bytes(),
    }
    .encode_to_vec()
}

fn tombstone(ns: &str, ty: &str, id: &str) -> cosi::Resource {
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: ns.into(),
            r#type: ty.into(),
            id: id.into(),
            version: "undefined".into(),
            phase: "running".into(),
            ..Default::default()
        }),
        spec: None,
    }
}

impl LabApi {
    fn check_cosi_type(&self, info: &LabConnInfo, ns: &str, ty: &str) -> Result<(), Status> {
        let Some((_, sensitive)) = type_info(ty) else {
            return Err(Status::permission_denied(format!(
                "resource type {ty:?} is not supported"
            )));
        };
        if !NAMESPACES.contains(&ns) {
            return Err(Status::permission_denied(format!(
                "namespace {ns:?} is not supported"
            )));
        }
        if sensitive && !info.has(ADMIN) {
            return Err(not_authorized());
        }
        Ok(())
    }

    fn snapshot_of(&self, ns: &str, ty: &str, id: Option<&str>) -> Vec<ResRec> {
        let d = self.node.data.lock().expect("data lock");
        d.resources
            .values()
            .filter(|r| r.namespace == ns && r.r#type == ty && id.is_none_or(|i| r.id == i))
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl State for LabApi {
    async fn get(
        &self,
        request: Request<cosi::GetRequest>,
    ) -> Result<Response<cosi::GetResponse>, Status> {
        let info = self.gate(&request, "Get")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let found = self.snapshot_of(&req.namespace, &req.r#type, Some(&req.id));
        match found.first() {
            Some(r) => Ok(Response::new(cosi::GetResponse {
                resource: Some(to_resource(r)),
            })),
            None => Err(Status::not_found(format!(
                "resource {}({}/{}@undefined) doesn't exist",
                req.r#type, req.namespace, req.id
            ))),
        }
    }

    type ListStream = BoxStream<cosi::ListResponse>;

    async fn list(
        &self,
        request: Request<cosi::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let info = self.gate(&request, "List")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let items: Vec<Result<cosi::ListResponse, Status>> = self
            .snapshot_of(&req.namespace, &req.r#type, None)
            .iter()
            .map(|r| {
                Ok(cosi::ListResponse {
                    resource: Some(to_resource(r)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn create(
        &self,
        request: Request<cosi::CreateRequest>,
    ) -> Result<Response<cosi::CreateResponse>, Status> {
        self.gate(&request, "Create")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    async fn update(
        &self,
        request: Request<cosi::UpdateRequest>,
    ) -> Result<Response<cosi::UpdateResponse>, Status> {
        self.gate(&request, "Update")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    async fn destroy(
        &self,
        request: Request<cosi::DestroyRequest>,
    ) -> Result<Response<cosi::DestroyResponse>, Status> {
        self.gate(&request, "Destroy")?;
        Err(Status::permission_denied("write access is not allowed"))
    }

    type WatchStream = BoxStream<cosi::WatchResponse>;

    async fn watch(
        &self,
        request: Request<cosi::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let info = self.gate(&request, "Watch")?;
        let req = request.into_inner();
        self.check_cosi_type(&info, &req.namespace, &req.r#type)?;
        let mut changes = self.node.res_tx.subscribe();
        changes.borrow_and_update();
        let api = self.clone();
        let (ns, ty, id) = (req.namespace, req.r#type, req.id);
        let bootstrap = req.options.as_ref().is_some_and(|o| o.bootstrap_contents);
        let api_version = req.api_version;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            use cosi::EventType;
            let ev = |t: EventType, r: cosi::Resource, old: Option<cosi::Resource>| cosi::Event {
                resource: Some(r),
                old,
                error: None,
                event_type: t as i32,
                bookmark: None,
            };
            let send = |events: Vec<cosi::Event>| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(cosi::WatchResponse { event: events }))
                        .await
                        .is_ok()
                }
            };
            let mut current = api.snapshot_of(&ns, &ty, id.as_deref());
            // Readiness marker.
            if !send(vec![]).await {
                return;
            }
            if let Some(one) = &id {
                let first = match current.first() {
                    Some(r) => ev(EventType::Created, to_resource(r), None),
                    None => ev(EventType::Destroyed, tombstone(&ns, &ty, one), None),
                };
                if !send(vec![first]).await {
                    return;
                }
            } else if bootstrap {
                for r in &current {
                    if !send(vec![ev(EventType::Created, to_resource(r), None)]).await {
                        return;
                    }
                }
                if api_version >= 1 {
                    let marker = cosi::Event {
                        resource: None,
                        old: None,
                        error: None,
                        event_type: EventType::Bootstrapped as i32,
                        bookmark: None,
                    };
                    if !send(vec![marker]).await {
                        return;
                    }
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                let fresh = api.snapshot_of(&ns, &ty, id.as_deref());
                let mut events = Vec::new();
                for r in &fresh {
                    match current.iter().find(|o| o.id == r.id) {
                        None => events.push(ev(EventType::Created, to_resource(r), None)),
                        Some(o) if o.version != r.version || o.created != r.created => events
                            .push(ev(EventType::Updated, to_resource(r), Some(to_resource(o)))),
                        Some(_) => {}
                    }
                }
                for o in &current {
                    if !fresh.iter().any(|r| r.id == o.id) {
                        events.push(ev(EventType::Destroyed, to_resource(o), None));
                    }
                }
                current = fresh;
                for e in events {
                    if !send(vec![e]).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
