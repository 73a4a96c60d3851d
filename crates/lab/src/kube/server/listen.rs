//! The HTTPS listener: a serving certificate from the cluster CA, client
//! certificates required and verified against it (as kube-apiserver's
//! `--client-ca-file`), HTTP/1.1, one task per connection, everything stopped
//! with the instance or the lab.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use super::auth::identity_of;
use super::Api;
use endsys_core::pki::{CertAndKey, CertificateAuthority};

/// A listening API server; [`Running::stop`] closes the listener and every
/// connection.
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Running {
    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn add_task(&self, t: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }

    pub async fn stop(self) {
        let _ = self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send_replace(true);
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

fn tls_config(
    ca: &CertificateAuthority,
    leaf: &CertAndKey,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in endsys_core::pki::certs_from_pem(ca.pair.cert_pem.as_bytes(), "cluster.ca")
        .map_err(|e| e.to_string())?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| e.to_string())?;
    }
    // Client certificates are required and must chain to the cluster CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let cert = CertificateDer::from(leaf.cert_der().map_err(|e| e.to_string())?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    // HTTP/1.1 only: watches are chunked responses, which every client handles.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds the address (retrying briefly while a previous instance lets go of it)
/// and serves until stopped.
pub(crate) async fn serve(
    api: Arc<Api>,
    ca: &CertificateAuthority,
    leaf: &CertAndKey,
    mut lab_stop: watch::Receiver<bool>,
) -> Result<Running, String> {
    let cfg = tls_config(ca, leaf)?;
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(api.addr).await {
            Ok(l) => break l,
            Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot listen: {e}")),
        }
    };
    let (stop, _) = watch::channel(false);
    let running = Running {
        stop,
        tasks: std::sync::Mutex::new(Vec::new()),
    };
    let mut stop_rx = running.stop_rx();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop_rx.changed() => return,
                _ = lab_stop.changed() => return,
            };
            let acceptor = acceptor.clone();
            let api = api.clone();
            let mut conn_stop = stop_rx.clone();
            let mut conn_lab_stop = lab_stop.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(t)) => t,
                    _ => return,
                };
                let who = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| identity_of(c.as_ref()));
                let Some(who) = who else { return };
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    let who = who.clone();
                    async move { Ok::<_, Infallible>(api.handle(who, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = conn_stop.changed() => {}
                    _ = conn_lab_stop.changed() => {}
                }
            });
        }
    });
    running.add_task(accept);
    Ok(running)
}
