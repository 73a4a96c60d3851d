//! apid's node routing: a call on a control plane carrying the `node` metadata key
//! is proxied one-to-one to that node (here: dispatched in process to the target's
//! services with the caller's roles, as apid does with `os:impersonator`). Workers
//! cannot forward; maintenance mode does not route; the one-to-many `nodes` key is
//! not simulated and says so.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::service::Routes;
use tonic::Status;

use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use super::gate::LabApi;
use crate::flaky::Fate;
use crate::node::data::NodeState;
use crate::node::lifecycle::ReplySent;
use crate::node::NodeInner;
use crate::tls::{ApiMode, LabConn, LabConnInfo};
use endsys_talos::api::cluster::cluster_service_server::ClusterServiceServer;
use endsys_talos::api::cosi::resource::state_server::StateServer;
use endsys_talos::api::machine::image_service_server::ImageServiceServer;
use endsys_talos::api::machine::lifecycle_service_server::LifecycleServiceServer;
use endsys_talos::api::machine::machine_service_server::MachineServiceServer;
use endsys_talos::api::storage::storage_service_server::StorageServiceServer;

/// apid's receive limit.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

impl LabApi {
    /// The services of this node, without routing.
    pub(crate) fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            MachineServiceServer::new(self.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(ClusterServiceServer::new(self.clone()))
        .add_service(ImageServiceServer::new(self.clone()))
        .add_service(LifecycleServiceServer::new(self.clone()))
        .add_service(StorageServiceServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(
            StateServer::new(self.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    /// The node's server: its services behind apid's `node` routing.
    pub(crate) fn router(
        &self,
    ) -> tonic::transport::server::Router<
        tower::layer::util::Stack<
            tower::layer::LayerFn<impl Fn(tonic::service::Routes) -> Routing + Clone>,
            tower::layer::util::Identity,
        >,
    > {
        let node = self.node.clone();
        Server::builder()
            .layer(tower::layer::layer_fn(move |inner| Routing {
                inner,
                node: node.clone(),
            }))
            .add_routes(self.routes())
    }
}

/// The node's apid ([`crate::node::Apid`]): its services behind the routing
/// layer, on the connections the node's listener accepted.
pub(crate) fn serve(
    node: Arc<NodeInner>,
    incoming: ReceiverStream<Result<LabConn, std::io::Error>>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = LabApi { node }.router().serve_with_incoming(incoming).await;
    })
}

#[derive(Clone)]
pub(crate) struct Routing {
    pub inner: Routes,
    pub node: Arc<NodeInner>,
}

enum Decision {
    Local,
    Forward(Arc<NodeInner>, LabConnInfo),
    Fail(Status),
}

fn status_response(status: Status) -> http::Response<Body> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    http::Response::from_parts(parts, Body::empty())
}

fn unreachable(target: &str, why: &str) -> Status {
    Status::unavailable(format!(
        "connection error: desc = \"transport: Error while dialing: dial tcp {target}:50000: {why}\""
    ))
}

fn decide<B>(node: &Arc<NodeInner>, req: &http::Request<B>) -> Decision {
    let Some(info) = req.extensions().get::<LabConnInfo>().cloned() else {
        return Decision::Local;
    };
    if info.mode != ApiMode::Configured {
        // Maintenance: routing disabled, everything is local.
        return Decision::Local;
    }
    if req.headers().get("nodes").is_some() {
        return Decision::Fail(Status::unimplemented(
            "lab: one-to-many proxying (`nodes` metadata) is not simulated; use `node`",
        ));
    }
    let values: Vec<_> = req.headers().get_all("node").iter().collect();
    let target = match values.as_slice() {
        [] => return Decision::Local,
        [one] => one.to_str().unwrap_or_default().trim().to_string(),
        _ => {
            return Decision::Fail(Status::invalid_argument(
                "node metadata must be single-valued",
            ))
        }
    };
    if target.is_empty() || target.contains(':') && target.parse::<std::net::IpAddr>().is_err() {
        return Decision::Fail(Status::internal(format!("invalid target {target:?}")));
    }
    if target == node.ip.to_string() || target == node.hostname() {
        return Decision::Local;
    }
    let Some(cfg) = node.config() else {
        return Decision::Local;
    };
    if !cfg.machine_type.is_control_plane() {
        return Decision::Fail(Status::permission_denied("no request forwarding"));
    }
    let Some(dest) = node
        .fabric
        .nodes()
        .into_iter()
        .find(|n| n.ip.to_string() == target || n.hostname() == target)
    else {
        return Decision::Fail(unreachable(&target, "connect: no route to host"));
    };
    let up = !matches!(dest.state(), NodeState::Rebooting | NodeState::PoweredOff);
    let acceptor = dest.acceptor.lock().expect("acceptor lock").clone();
    let Some(acceptor) = acceptor.filter(|_| up) else {
        return Decision::Fail(unreachable(&target, "connect: connection refused"));
    };
    // apid dials the target with mTLS from its own OS CA.
    let trusted = acceptor.mode == ApiMode::Configured
        && !dest.wrong_ca.load(Ordering::SeqCst)
        && dest.config().is_some_and(|d| d.os_ca_crt == cfg.os_ca_crt);
    if !trusted {
        return Decision::Fail(Status::unavailable(format!(
            "connection error: desc = \"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority\" (proxying to {target})"
        )));
    }
    Decision::Forward(
        dest,
        LabConnInfo {
            roles: info.roles,
            remote: info.remote,
            mode: ApiMode::Configured,
        },
    )
}

impl<B> tower::Service<http::Request<B>> for Routing
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let hold = match self.node.fabric.flaky.draw() {
            Fate::Pass => None,
            Fate::Delay(d) => Some(d),
            Fate::Fail => {
                return Box::pin(async {
                    Ok(status_response(Status::unavailable(
                        "connection error: lab flaky network dropped this call",
                    )))
                })
            }
        };
        if let Some(d) = hold {
            // Held back, then handled as usual (the decision is taken after the wait).
            // (Routes is always ready: no poll_ready needed after the wait.)
            let mut this = self.clone();
            return Box::pin(async move {
                tokio::time::sleep(d).await;
                this.route(req).await
            });
        }
        self.route(req)
    }
}

impl Routing {
    fn route<B>(
        &mut self,
        mut req: http::Request<B>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        match decide(&self.node, &req) {
            Decision::Local => {
                let fut = tower::Service::call(&mut self.inner, req);
                Box::pin(async move { fut.await.map(track_reply) })
            }
            Decision::Forward(dest, info) => {
                req.extensions_mut().insert(info);
                let mut routes = LabApi { node: dest }.routes();
                Box::pin(async move {
                    tower::Service::call(&mut routes, req)
                        .await
                        .map(track_reply)
                })
            }
            Decision::Fail(status) => Box::pin(async move { Ok(status_response(status)) }),
        }
    }
}

/// Wraps the body of a reply that carries a [`ReplySent`] marker so the marker
/// fires once the body (data and trailers) has been handed to h2, or dropped.
fn track_reply(resp: http::Response<Body>) -> http::Response<Body> {
    let Some(marker) = resp.extensions().get::<ReplySent>().cloned() else {
        return resp;
    };
    resp.map(|inner| {
        Body::new(NotifyBody {
            inner,
            marker: Some(marker),
        })
    })
}

struct NotifyBody {
    inner: Body,
    marker: Option<ReplySent>,
}

impl NotifyBody {
    fn fire(&mut self) {
        if let Some(m) = self.marker.take() {
            m.fire();
        }
    }
}

impl Drop for NotifyBody {
    fn drop(&mut self) {
        self.fire();
    }
}

impl http_body::Body for NotifyBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.fire(),
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => self.fire(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
