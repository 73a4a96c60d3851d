//! TLS for simulated apid: the maintenance certificate, the configured mTLS setup,
//! client-certificate checks as apid does them, which API a connection talks to
//! ([`ApiMode`]), and the connection type that carries the caller's roles into the
//! gRPC handlers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

use crate::config::NodeConfig;
use endsys_core::pki::{
    certs_from_pem, CertAndKey, CertInfo, CertificateAuthority, KeyAlgorithm, LeafSpec, Usage,
};

/// Server certificate validity, as apid (24 h).
pub(crate) const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// CN of the maintenance-mode server certificate.
pub const MAINTENANCE_CN: &str = "maintenance-service.talos.dev";

/// Which API a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiMode {
    /// Talos 1.13 maintenance: apid with the reader role for everyone.
    Maintenance113,
    /// Talos 1.12 maintenance: the separate small maintenance server.
    Maintenance112,
    /// Configured: mutual TLS, roles from the client certificate.
    Configured,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config_with(
    leaf: &CertAndKey,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, String> {
    let der = leaf.cert_der().map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(vec![CertificateDer::from(der)], key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Maintenance mode: a certificate from a CA made up in memory at boot, CN
/// `maintenance-service.talos.dev`, SAN = node IP, and no client certificate asked.
pub(crate) fn maintenance_config(ip: IpAddr) -> Result<Arc<ServerConfig>, String> {
    let ca = CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", SERVER_CERT_VALIDITY)
        .map_err(|e| e.to_string())?;
    let leaf = ca
        .issue(&LeafSpec {
            common_name: MAINTENANCE_CN.into(),
            organizations: vec![],
            ip_sans: vec![ip],
            dns_sans: vec![],
            usage: Usage::Server,
            validity: SERVER_CERT_VALIDITY,
        })
        .map_err(|e| e.to_string())?;
    server_config_with(&leaf, None)
}

fn server_leaf(
    ca: &CertificateAuthority,
    ip: IpAddr,
    cfg: &NodeConfig,
) -> Result<CertAndKey, String> {
    let (common_name, ip_sans, dns_sans) = api_names(ip, cfg);
    ca.issue(&LeafSpec {
        common_name,
        organizations: vec![],
        ip_sans,
        dns_sans,
        usage: Usage::Server,
        validity: SERVER_CERT_VALIDITY,
    })
    .map_err(|e| e.to_string())
}

/// Where a configured node's apid server certificate comes from.
pub(crate) enum ApiIdentity<'a> {
    /// A control plane issues its own from `machine.ca` (crt + key); clients
    /// must chain to `machine.ca` + `machine.acceptedCAs`.
    Own,
    /// A worker's, signed by a control plane's trustd; clients must chain to
    /// the CAs trustd returned.
    FromTrustd {
        cert: &'a CertAndKey,
        accepted_cas_pem: &'a [u8],
    },
}

/// Configured mode: the server certificate of `identity`, client certificate
/// required and verified against the accepted CAs, EKU exactly clientAuth.
/// With `wrong_ca` the server certificate comes from an unrelated CA (fault injection).
pub(crate) fn configured_config(
    ip: IpAddr,
    cfg: &NodeConfig,
    identity: &ApiIdentity<'_>,
    wrong_ca: bool,
) -> Result<Arc<ServerConfig>, String> {
    let leaf = if wrong_ca {
        let other =
            CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", SERVER_CERT_VALIDITY)
                .map_err(|e| e.to_string())?;
        server_leaf(&other, ip, cfg)?
    } else {
        match identity {
            ApiIdentity::Own => {
                let ca = cfg.os_ca.as_ref().ok_or_else(|| {
                    "machine.ca has no key: this node cannot issue its own apid certificate"
                        .to_string()
                })?;
                server_leaf(ca, ip, cfg)?
            }
            ApiIdentity::FromTrustd { cert, .. } => (*cert).clone(),
        }
    };
    let client_cas = match identity {
        ApiIdentity::Own => cfg.client_cas.clone(),
        ApiIdentity::FromTrustd {
            accepted_cas_pem, ..
        } => {
            certs_from_pem(accepted_cas_pem, "CAs returned by trustd").map_err(|e| e.to_string())?
        }
    };
    let mut roots = RootCertStore::empty();
    for der in client_cas {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| format!("machine.ca / acceptedCAs: {e}"))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    server_config_with(&leaf, Some(Arc::new(ApidClientVerifier { inner })))
}

/// The names a node's apid (and trustd) certificate carries: its address,
/// loopback, `machine.certSANs`, and its hostname (also the CN).
pub(crate) fn api_names(ip: IpAddr, cfg: &NodeConfig) -> (String, Vec<IpAddr>, Vec<String>) {
    let mut ip_sans = vec![ip, IpAddr::from([127, 0, 0, 1])];
    let mut dns_sans = Vec::new();
    for san in &cfg.cert_sans {
        match san.parse::<IpAddr>() {
            Ok(a) if !ip_sans.contains(&a) => ip_sans.push(a),
            Ok(_) => {}
            Err(_) => dns_sans.push(san.clone()),
        }
    }
    let cn = cfg.hostname.clone().unwrap_or_else(|| ip.to_string());
    if let Some(h) = &cfg.hostname {
        if !dns_sans.contains(h) {
            dns_sans.push(h.clone());
        }
    }
    (cn, ip_sans, dns_sans)
}

/// A server-only TLS setup from a certificate (trustd: no client certificate asked).
pub(crate) fn server_only_config(leaf: &CertAndKey) -> Result<Arc<ServerConfig>, String> {
    server_config_with(leaf, None)
}

/// webpki chain verification plus apid's `verifyExtKeyUsage`: every non-CA
/// certificate presented must have ExtKeyUsage exactly `[clientAuth]`.
#[derive(Debug)]
struct ApidClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ApidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        for der in std::iter::once(end_entity).chain(intermediates.iter()) {
            let info = CertInfo::from_der(der.as_ref(), "client certificate")
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            if info.is_ca {
                continue;
            }
            if !(info.eku_client_auth && !info.eku_server_auth && !info.eku_other) {
                return Err(rustls::Error::General(format!(
                    "certificate {:?} is missing the client auth extended key usage",
                    info.subject_cn.unwrap_or_default()
                )));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a handler knows about its caller.
#[derive(Debug, Clone)]
pub struct LabConnInfo {
    /// Roles from the client certificate's Organization (maintenance: `os:reader`).
    pub roles: Vec<String>,
    pub remote: SocketAddr,
    pub(crate) mode: ApiMode,
}

impl LabConnInfo {
    pub(crate) fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Lets the node cut every open connection at once (reboot, power off).
#[derive(Default)]
pub(crate) struct ConnKill {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl ConnKill {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// The registry of live connections of one serving period.
#[derive(Default)]
pub(crate) struct ConnSet {
    conns: Mutex<Vec<Weak<ConnKill>>>,
}

impl ConnSet {
    pub(crate) fn register(&self) -> Arc<ConnKill> {
        let k = Arc::new(ConnKill::default());
        let mut v = self.conns.lock().expect("conns lock");
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&k));
        k
    }

    pub(crate) fn kill_all(&self) {
        for w in self.conns.lock().expect("conns lock").drain(..) {
            if let Some(k) = w.upgrade() {
                k.kill();
            }
        }
    }
}

/// A TLS connection to simulated apid.
pub(crate) struct LabConn {
    pub inner: tokio_rustls::server::TlsStream<TcpStream>,
    pub info: LabConnInfo,
    pub kill: Arc<ConnKill>,
}

impl LabConn {
    fn check_killed(&self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.kill.waker.register(cx.waker());
        if self.kill.killed.load(Ordering::SeqCst) {
            Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "node went down",
            ))
        } else {
            None
        }
    }
}

impl Connected for LabConn {
    type ConnectInfo = LabConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for LabConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LabConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Roles of a verified client certificate (Subject Organization values).
pub(crate) fn roles_of(certs: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| CertInfo::from_der(leaf.as_ref(), "client certificate").ok())
        .map(|i| i.organizations)
        .unwrap_or_default()
}
