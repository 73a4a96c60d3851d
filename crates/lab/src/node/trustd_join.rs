//! A worker's apid certificate, as Talos gets it (siderolabs/talos v1.13.9
//! `secrets.APIController.generateWorker` and `pkg/grpc/gen.RemoteGenerator`): a
//! CSR for the node's names, sent with `machine.token` in the `token` metadata
//! to trustd on port 50001 of the control-plane endpoints, over TLS verified
//! against the node's accepted CAs. The endpoints are the host of
//! `cluster.controlPlane.endpoint` (`StaticEndpointController`) merged with the
//! API server addresses of the `kubernetes` EndpointSlice once the Kubernetes API
//! answers (`EndpointController`; in the lab: the running control planes of the
//! same OS CA while the simulated API is up).
//!
//! Until a trustd signs, apid has no certificate: its service stays `Waiting`
//! ("Waiting for api certificates", the `APIReadyCondition`), nothing listens on
//! port 50000 (connection refused) and the machine stays in stage `booting`
//! (`StartAllServices` waits for every service, up to `constants.BootTimeout`,
//! 70 min, which the lab does not enforce). The request is retried; each
//! failure is kept as the console would print it
//! ("failed to sign API server CSR: rpc error: ...").
//!
//! Simplification: Talos may already get the certificate while installing (the
//! controller runs as soon as the machine type is known); the lab asks after the
//! install reboot only, and a worker answers no handshake while installing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

use super::data::{IssuedCert, NodeState};
use super::NodeInner;
use crate::api::TRUSTD_PORT;
use crate::config::NodeConfig;
use crate::tls;
use endsys_core::pki::{certs_from_pem, CsrAndKey, KeyAlgorithm, LeafSpec, Usage};
use endsys_talos::api::security::security_service_client::SecurityServiceClient;
use endsys_talos::api::security::CertificateRequest;

/// How long one attempt may take (connect, then the call).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry pacing when nothing in the lab changes (a change retries at once).
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The host of `https://host:port/...`.
fn endpoint_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn rpc_error(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

impl NodeInner {
    /// Where this worker sends its CSR, in order (trustd port added).
    fn trustd_endpoints(&self, cfg: &NodeConfig) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        let host = endpoint_host(&cfg.endpoint);
        // The lab never asks a DNS server (its packets stay on loopback): a name other
        // than `localhost` leaves the worker with the discovered control planes only,
        // as a real worker whose endpoint name does not resolve.
        let static_ip = match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) if host.eq_ignore_ascii_case("localhost") => Some(IpAddr::from([127, 0, 0, 1])),
            Err(_) => None,
        };
        if let Some(ip) = static_ip {
            out.push(SocketAddr::new(ip, TRUSTD_PORT));
        }
        if !self.fabric.alive_cluster_uids().is_empty() {
            for n in self.fabric.nodes() {
                let serves_api = n.state() == NodeState::Running
                    && n.config().is_some_and(|c| {
                        c.machine_type.is_control_plane() && c.os_ca_crt == cfg.os_ca_crt
                    });
                let a = SocketAddr::new(IpAddr::V4(n.ip), TRUSTD_PORT);
                if serves_api && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        // The lab lives on loopback: an endpoint elsewhere is never dialled.
        out.retain(|a| a.ip().is_loopback());
        out
    }

    /// One CSR to one trustd.
    async fn ask_trustd(
        &self,
        addr: SocketAddr,
        cfg: &NodeConfig,
        csr: &CsrAndKey,
    ) -> Result<IssuedCert, String> {
        let dial = |why: String| {
            format!(
                "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {addr}: {why}\""
            )
        };
        let mut roots = RootCertStore::empty();
        for der in certs_from_pem(&cfg.accepted_cas_pem, "machine.ca").map_err(|e| e.to_string())? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| format!("machine.ca: {e}"))?;
        }
        let mut client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let client = Arc::new(client);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let connector = tower::service_fn(move |_: http::Uri| {
            let client = client.clone();
            async move {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| std::io::Error::other("i/o timeout"))??;
                let _ = tcp.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(client)
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                let mut why = e.to_string();
                let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
                while let Some(s) = src {
                    why = s.to_string();
                    src = s.source();
                }
                if why.contains("refused") {
                    why = "connect: connection refused".into();
                }
                dial(why)
            })?;
        let mut req = tonic::Request::new(CertificateRequest {
            csr: csr.csr_pem.clone().into_bytes(),
        });
        let token = tonic::metadata::MetadataValue::try_from(cfg.token.as_str())
            .map_err(|e| format!("machine.token: {e}"))?;
        req.metadata_mut().insert("token", token);
        let resp = SecurityServiceClient::new(channel)
            .certificate(req)
            .await
            .map_err(|s| rpc_error(&s))?
            .into_inner();
        let cert = csr
            .with_cert(&resp.crt, "certificate from trustd")
            .map_err(|e| e.to_string())?;
        Ok(IssuedCert {
            cert,
            accepted_cas_pem: resp.ca,
        })
    }

    /// A worker's apid: once trustd signed its certificate, it serves mutual TLS
    /// with it. `false` when this lifecycle ended first.
    pub(super) async fn worker_api_up(self: &Arc<Self>, gen: u64, cfg: &NodeConfig) -> bool {
        if !self.obtain_api_cert(gen, cfg).await {
            return false;
        }
        if let Err(e) = self.set_configured_acceptor(cfg) {
            tracing::error!(node = %self.ip, "apid certificate: {e}");
        }
        self.data.lock().expect("data lock").set_service(
            "apid",
            "Running",
            "Health check successful",
        );
        if self.gen() != gen {
            return false;
        }
        self.serve(gen).await;
        self.commit();
        true
    }

    /// Asks the control planes' trustd until one signs; `false` when this
    /// lifecycle ended first (power off, reboot, reset).
    async fn obtain_api_cert(self: &Arc<Self>, gen: u64, cfg: &NodeConfig) -> bool {
        let (common_name, ip_sans, dns_sans) = tls::api_names(IpAddr::V4(self.ip), cfg);
        let spec = LeafSpec {
            common_name,
            organizations: vec![],
            ip_sans,
            dns_sans,
            usage: Usage::Server,
            validity: tls::SERVER_CERT_VALIDITY,
        };
        let csr = match CsrAndKey::generate(KeyAlgorithm::Ed25519, &spec) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node = %self.ip, "apid CSR: {e}");
                return false;
            }
        };
        let mut changes = self.fabric.changed.subscribe();
        let mut pause = RETRY_MIN;
        loop {
            if self.gen() != gen {
                return false;
            }
            let endpoints = self.trustd_endpoints(cfg);
            let mut last = if endpoints.is_empty() {
                "at least one root of trust endpoint is required".to_string()
            } else {
                String::new()
            };
            for addr in endpoints {
                match self.ask_trustd(addr, cfg, &csr).await {
                    Ok(issued) => {
                        if self.gen() != gen {
                            return false;
                        }
                        let mut d = self.data.lock().expect("data lock");
                        d.api_cert = Some(Arc::new(issued));
                        d.join_error = None;
                        return true;
                    }
                    Err(e) => last = e,
                }
            }
            let msg = format!("failed to sign API server CSR: {last}");
            let news = {
                let mut d = self.data.lock().expect("data lock");
                let news = d.join_error.as_deref() != Some(msg.as_str());
                d.join_error = Some(msg);
                news
            };
            if news {
                // Observers (tests, `lab serve`) follow the lab's change counter.
                self.fabric.notify();
            }
            tokio::select! {
                _ = changes.changed() => tokio::time::sleep(RETRY_MIN).await,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_host;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("https://127.0.60.11:6443"), "127.0.60.11");
        assert_eq!(endpoint_host("https://[fd00::1]:6443/"), "fd00::1");
        assert_eq!(endpoint_host("https://cp.lab:6443"), "cp.lab");
    }
}
