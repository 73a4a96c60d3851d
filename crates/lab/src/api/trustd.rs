//! trustd, as a Talos control plane runs it (siderolabs/talos v1.13.9
//! `internal/app/trustd`): `securityapi.SecurityService/Certificate` on port
//! 50001 over TLS with a server certificate from the OS CA and no client
//! certificate asked; every call must carry the node's `machine.token` in the
//! `token` metadata key (compared as SHA-256 digests in constant time, as
//! `pkg/grpc/middleware/auth/basic` does), else `Unauthenticated` ("missing
//! token" / "invalid token"). The CSR is signed by the OS CA as a server-only
//! certificate without Organization (no role can be smuggled in), and the reply
//! carries the accepted CAs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::node::{NodeInner, Serving};
use crate::tls::{self, ApiMode, ConnSet, LabConn, LabConnInfo, SERVER_CERT_VALIDITY};
use endsys_core::pki::{LeafSpec, PkiError, Usage};
use endsys_talos::api::security::security_service_server::{
    SecurityService, SecurityServiceServer,
};
use endsys_talos::api::security::{CertificateRequest, CertificateResponse};

/// trustd's port (`constants.TrustdPort`).
pub(crate) const TRUSTD_PORT: u16 = 50001;

/// The signed certificate's lifetime (the worker asks again on every boot).
const SIGNED_VALIDITY: Duration = SERVER_CERT_VALIDITY;

/// trustd of one control plane.
#[derive(Clone)]
struct Trustd {
    node: Arc<NodeInner>,
}

/// `basic.TokenCredentials.authenticate`: the expected token is read from the
/// node's current config on every call (the dynamic token getter).
fn authenticate(node: &NodeInner, req: &Request<()>) -> Result<(), Status> {
    let expected = node.config().map(|c| c.token.clone()).unwrap_or_default();
    let Some(got) = req.metadata().get("token") else {
        return Err(Status::unauthenticated("missing token"));
    };
    let a = Sha256::digest(got.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if diff != 0 {
        return Err(Status::unauthenticated("invalid token"));
    }
    Ok(())
}

#[tonic::async_trait]
impl SecurityService for Trustd {
    async fn certificate(
        &self,
        req: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let cfg = self
            .node
            .config()
            .ok_or_else(|| Status::unavailable("trustd is not running"))?;
        let ca = cfg
            .os_ca
            .as_ref()
            .ok_or_else(|| Status::internal("failed to sign CSR: machine.ca has no key"))?;
        let csr = String::from_utf8_lossy(&req.get_ref().csr).to_string();
        if !csr.contains("-----BEGIN") {
            return Err(Status::invalid_argument("failed to decode CSR"));
        }
        let crt = ca
            .sign_server_csr(&csr, SIGNED_VALIDITY)
            .map_err(|e| match e {
                PkiError::BadPem { reason, .. } => {
                    Status::invalid_argument(format!("failed to parse CSR: {reason}"))
                }
                other => Status::internal(format!("failed to sign CSR: {other}")),
            })?;
        self.node
            .fabric
            .trustd_signed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(CertificateResponse {
            ca: cfg.accepted_cas_pem.clone(),
            crt: crt.into_bytes(),
        }))
    }
}

impl NodeInner {
    /// Starts trustd on `ip:50001` (control planes, while up). Its certificate
    /// comes from the OS CA with the node's names, like apid's.
    pub(crate) async fn start_trustd(self: &Arc<Self>) -> std::io::Result<()> {
        let mut guard = self.trustd.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let Some(cfg) = self.config() else {
            return Ok(());
        };
        let Some(ca) = cfg.os_ca.as_ref() else {
            return Ok(());
        };
        let (common_name, ip_sans, dns_sans) = tls::api_names(IpAddr::V4(self.ip), &cfg);
        let leaf = ca
            .issue(&LeafSpec {
                common_name,
                organizations: vec![],
                ip_sans,
                dns_sans,
                usage: Usage::Server,
                validity: SERVER_CERT_VALIDITY,
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let server_cfg = tls::server_only_config(&leaf).map_err(std::io::Error::other)?;
        let addr = SocketAddr::new(IpAddr::V4(self.ip), TRUSTD_PORT);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let conns = Arc::new(ConnSet::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<LabConn, std::io::Error>>(16);
        let conns2 = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, remote)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg.clone());
                let tx = tx.clone();
                let conns = conns2.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let conn = LabConn {
                        inner: tls,
                        info: LabConnInfo {
                            roles: vec![],
                            remote,
                            mode: ApiMode::Configured,
                        },
                        kill: conns.register(),
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        let node = self.clone();
        let svc = SecurityServiceServer::with_interceptor(
            Trustd { node: node.clone() },
            move |req: Request<()>| authenticate(&node, &req).map(|()| req),
        );
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        });
        *guard = Some(Serving {
            accept,
            server,
            conns,
        });
        Ok(())
    }

    /// Closes trustd's listener and cuts its connections.
    /// Holds the slot until the socket is gone, as `stop_serving` does: a boot racing
    /// this stop must not bind while the old listener still holds port 50001.
    pub(crate) async fn stop_trustd(&self) {
        let mut guard = self.trustd.lock().await;
        if let Some(s) = guard.take() {
            s.shut_down().await;
        }
        drop(guard);
    }

    /// [`Self::stop_trustd`] without awaiting (for `Drop`).
    pub(crate) fn halt_trustd(&self) {
        if let Ok(mut guard) = self.trustd.try_lock() {
            if let Some(s) = guard.take() {
                s.halt();
            }
        }
    }
}
