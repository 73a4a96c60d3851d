//! TLS to a Talos node, in both of its modes.
//!
//! Maintenance mode serves a throw-away self-signed certificate and asks for no
//! client certificate; configured mode serves a certificate from the cluster's OS CA
//! and requires ours. We never send a client key unless we verified the server
//! against our CA first, and we record whether the server asked for a client
//! certificate at all: that is how a node's mode is detected without calling any RPC.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use super::credentials::Credentials;
use super::error::{TalosError, TlsFailure};
use endsys_core::pki::certs_from_pem;

/// Default Talos API port (apid).
pub const TALOS_API_PORT: u16 = 50000;

/// How to secure the connection.
#[derive(Clone, Debug)]
pub enum TlsMode {
    /// Maintenance mode: accept the node's self-signed certificate (optionally pinned
    /// by the base64 SHA-256 of its public key, as the node console prints it), send
    /// no client certificate.
    Insecure { fingerprint: Option<String> },
    /// Configured mode: verify the node against the cluster CA, present our cert.
    Mutual(Arc<Credentials>),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Remembers whether the server asked for a client certificate, and answers with
/// ours only in mutual mode.
#[derive(Debug)]
struct RecordingResolver {
    asked: Arc<AtomicBool>,
    key: Option<Arc<CertifiedKey>>,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Accepts any server certificate (maintenance mode has nothing to verify against)
/// but still checks handshake signatures, and the pin when one is given.
#[derive(Debug)]
struct MaintenanceVerifier {
    provider: Arc<CryptoProvider>,
    pin: Option<String>,
}

impl ServerCertVerifier for MaintenanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let got = spki_fingerprint(end_entity.as_ref()).ok_or_else(|| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
            if &got != pin {
                return Err(rustls::Error::General(format!(
                    "fingerprint mismatch: node presents {got}, pinned {pin}"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// base64 (standard) SHA-256 of the certificate's SubjectPublicKeyInfo: the form
/// Talos prints on the console and talosctl takes as `--cert-fingerprint`.
pub fn spki_fingerprint(cert_der: &[u8]) -> Option<String> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Some(base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki)))
}

/// Builds the rustls config for a mode. `asked` records a client-cert request.
pub(crate) fn client_config(
    mode: &TlsMode,
    asked: Arc<AtomicBool>,
) -> Result<ClientConfig, TalosError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TalosError::Credentials {
            what: "TLS settings".into(),
            detail: e.to_string(),
        })?;
    let mut config = match mode {
        TlsMode::Insecure { fingerprint } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MaintenanceVerifier {
                provider: provider.clone(),
                pin: fingerprint.clone(),
            }))
            .with_client_cert_resolver(Arc::new(RecordingResolver { asked, key: None })),
        TlsMode::Mutual(creds) => {
            let mut roots = RootCertStore::empty();
            for der in certs_from_pem(&creds.ca_pem, "talosconfig ca").map_err(cred_err)? {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| TalosError::Credentials {
                        what: "talosconfig ca".into(),
                        detail: e.to_string(),
                    })?;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TalosError::Credentials {
                        what: "talosconfig ca".into(),
                        detail: e.to_string(),
                    })?;
            let chain: Vec<CertificateDer<'static>> =
                certs_from_pem(&creds.cert_pem, "talosconfig crt")
                    .map_err(cred_err)?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
            let key_der =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key.pkcs8_der().to_vec()));
            let signing_key = provider
                .key_provider
                .load_private_key(key_der)
                .map_err(|e| TalosError::Credentials {
                    what: "talosconfig key".into(),
                    detail: e.to_string(),
                })?;
            let certified = CertifiedKey::new(chain, signing_key);
            certified
                .keys_match()
                .map_err(|e| TalosError::Credentials {
                    what: "talosconfig crt/key".into(),
                    detail: format!("certificate and key do not belong together: {e}"),
                })?;
            builder
                .with_webpki_verifier(verifier)
                .with_client_cert_resolver(Arc::new(RecordingResolver {
                    asked,
                    key: Some(Arc::new(certified)),
                }))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn cred_err(e: endsys_core::pki::PkiError) -> TalosError {
    TalosError::Credentials {
        what: "talosconfig".into(),
        detail: e.to_string(),
    }
}

/// Where to dial and what name to verify.
#[derive(Clone, Debug)]
pub struct Dial {
    pub addr: SocketAddr,
    /// Name the server certificate must carry (IP or DNS name).
    pub server_name: String,
}

impl Dial {
    /// Parses `host`, `host:port`, `[v6]:port`; the port defaults to 50000.
    /// DNS names are resolved at dial time by the caller (`resolve`).
    pub fn parse(endpoint: &str) -> Result<Self, TalosError> {
        let bad = |detail: String| TalosError::Connect {
            node: endpoint.to_string(),
            addr: endpoint.to_string(),
            refused: false,
            detail,
        };
        let trimmed = endpoint
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/');
        if let Ok(sa) = trimmed.parse::<SocketAddr>() {
            return Ok(Self {
                addr: sa,
                server_name: sa.ip().to_string(),
            });
        }
        if let Ok(ip) = trimmed.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(Self {
                addr: SocketAddr::new(ip, TALOS_API_PORT),
                server_name: ip.to_string(),
            });
        }
        let (host, port) = match trimmed.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(format!("bad port `{p}`")))?,
            ),
            None => (trimmed, TALOS_API_PORT),
        };
        use std::net::ToSocketAddrs;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(format!("cannot resolve `{host}`: {e}")))?
            .next()
            .ok_or_else(|| bad(format!("`{host}` resolves to no address")))?;
        Ok(Self {
            addr,
            server_name: host.to_string(),
        })
    }
}

/// The error type our connector hands to tonic; classified again on the way out.
#[derive(Debug)]
pub(crate) struct DialError(pub TalosError);

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DialError {}

/// Opens TCP + TLS to a node. Returns the stream and whether a client certificate
/// was requested.
pub(crate) async fn dial(
    dial: &Dial,
    node_label: &str,
    config: Arc<ClientConfig>,
    asked: &AtomicBool,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TalosError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(dial.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(TalosError::Connect {
                node: node_label.to_string(),
                addr: dial.addr.to_string(),
                refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                detail: e.to_string(),
            })
        }
        Err(_) => {
            return Err(TalosError::Connect {
                node: node_label.to_string(),
                addr: dial.addr.to_string(),
                refused: false,
                detail: format!("no answer within {timeout:?}"),
            })
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(dial.server_name.clone()).map_err(|e| TalosError::Connect {
        node: node_label.to_string(),
        addr: dial.addr.to_string(),
        refused: false,
        detail: format!("invalid server name `{}`: {e}", dial.server_name),
    })?;
    let connector = TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(classify_handshake(
            node_label,
            &e,
            asked.load(Ordering::SeqCst),
        )),
        Err(_) => Err(TalosError::Tls {
            node: node_label.to_string(),
            kind: TlsFailure::Other,
            detail: format!("handshake did not finish within {timeout:?}"),
        }),
    }
}

/// Maps a rustls failure to what it means for a Talos node.
pub(crate) fn classify_handshake(node: &str, e: &std::io::Error, asked: bool) -> TalosError {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let kind = match rustls_err {
        Some(rustls::Error::InvalidCertificate(ce)) => match ce {
            rustls::CertificateError::UnknownIssuer
            | rustls::CertificateError::BadSignature
            | rustls::CertificateError::InvalidPurpose => TlsFailure::UnknownAuthority,
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
            _ => TlsFailure::Other,
        },
        Some(rustls::Error::General(msg)) if msg.contains("fingerprint mismatch") => {
            TlsFailure::FingerprintMismatch
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            use rustls::AlertDescription as A;
            match alert {
                A::CertificateRequired | A::HandshakeFailure if asked => {
                    TlsFailure::ClientCertRequired
                }
                A::CertificateRequired => TlsFailure::ClientCertRequired,
                A::UnknownCA
                | A::BadCertificate
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::UnsupportedCertificate
                | A::AccessDenied => TlsFailure::ClientCertRejected,
                _ => TlsFailure::Other,
            }
        }
        _ if e.kind() == std::io::ErrorKind::ConnectionReset
            || e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            // The node closed during the handshake: a restarting apid looks like this.
            return TalosError::Connect {
                node: node.to_string(),
                addr: node.to_string(),
                refused: false,
                detail: format!("connection closed during TLS handshake: {e}"),
            };
        }
        // Past the handshake, TLS errors reach us as text only (the stream layers
        // stringify them), so read the text rustls wrote.
        _ => classify_text(&e.to_string(), asked),
    };
    TalosError::Tls {
        node: node.to_string(),
        kind,
        detail: e.to_string(),
    }
}

/// Classifies a TLS failure from the message rustls produced.
pub(crate) fn classify_text(text: &str, asked: bool) -> TlsFailure {
    if text.contains("CertificateRequired") || (asked && text.contains("HandshakeFailure")) {
        TlsFailure::ClientCertRequired
    } else if text.contains("fatal alert")
        && [
            "UnknownCA",
            "BadCertificate",
            "CertificateUnknown",
            "CertificateExpired",
            "AccessDenied",
        ]
        .iter()
        .any(|a| text.contains(a))
    {
        TlsFailure::ClientCertRejected
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        TlsFailure::UnknownAuthority
    } else if text.contains("NotValidForName") {
        TlsFailure::NameMismatch
    } else if text.contains("fingerprint mismatch") {
        TlsFailure::FingerprintMismatch
    } else {
        TlsFailure::Other
    }
}

/// What a TLS probe learned about a node without calling any RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMode {
    /// Serves TLS without asking for a client certificate: no config yet.
    Maintenance,
    /// Asks for a client certificate; `our_ca` tells whether its server certificate
    /// verifies against the CA we hold (None when we hold no credentials).
    Configured { our_ca: Option<bool> },
}

/// Classifies a node by one TLS handshake (no key is ever sent in the first step).
pub async fn probe_mode(
    dial_to: &Dial,
    creds: Option<&Arc<Credentials>>,
    timeout: Duration,
) -> Result<NodeMode, TalosError> {
    let label = dial_to.server_name.clone();
    let asked = Arc::new(AtomicBool::new(false));
    let config = Arc::new(client_config(
        &TlsMode::Insecure { fingerprint: None },
        asked.clone(),
    )?);
    let first = dial(dial_to, &label, config, &asked, timeout).await;
    let asked_now = asked.load(Ordering::SeqCst);
    match first {
        Ok(_) if !asked_now => return Ok(NodeMode::Maintenance),
        Ok(_) => {}
        Err(TalosError::Tls { .. }) if asked_now => {}
        Err(e) => return Err(e),
    }
    // Configured: does its certificate chain to our CA?
    let Some(creds) = creds else {
        return Ok(NodeMode::Configured { our_ca: None });
    };
    let asked2 = Arc::new(AtomicBool::new(false));
    let config = Arc::new(client_config(
        &TlsMode::Mutual(creds.clone()),
        asked2.clone(),
    )?);
    match dial(dial_to, &label, config, &asked2, timeout).await {
        Ok(_) => Ok(NodeMode::Configured { our_ca: Some(true) }),
        Err(TalosError::Tls {
            kind: TlsFailure::UnknownAuthority,
            ..
        }) => Ok(NodeMode::Configured {
            our_ca: Some(false),
        }),
        Err(e) => Err(e),
    }
}

/// One TCP + TLS handshake in the given mode, then close. Returns whether the
/// node asked for a client certificate. Used for probes and to time handshakes.
pub async fn handshake(
    dial_to: &Dial,
    tls: &TlsMode,
    timeout: Duration,
) -> Result<bool, TalosError> {
    let asked = Arc::new(AtomicBool::new(false));
    let config = Arc::new(client_config(tls, asked.clone())?);
    let stream = dial(dial_to, &dial_to.server_name, config, &asked, timeout).await?;
    drop(stream);
    Ok(asked.load(Ordering::SeqCst))
}
