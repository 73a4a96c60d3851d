//! A node's apid listener: bound while the node is up (connection refused while it
//! reboots or is off), TLS per connection with the acceptor of the current mode
//! (maintenance: a throw-away certificate, no client certificate; configured:
//! mutual TLS from the config's OS CA, roles from the client certificate), and
//! every open connection cut at once when the node goes down. What is served on
//! the accepted connections is the node's [`super::Apid`].

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Acceptor, NodeInner, Serving};
use crate::config::NodeConfig;
use crate::tls::{self, ApiIdentity, ApiMode, ConnSet, LabConn, LabConnInfo};

impl NodeInner {
    pub(super) async fn start_serving(self: &Arc<Self>) -> std::io::Result<()> {
        let mut guard = self.serving.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr()).await?;
        let conns = Arc::new(ConnSet::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<LabConn, std::io::Error>>(64);
        let node = self.clone();
        let conns2 = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, remote)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let Some(acc) = node.acceptor.lock().expect("acceptor lock").clone() else {
                    continue;
                };
                let cfg = match (&acc.wrong_ca, node.wrong_ca.load(Ordering::SeqCst)) {
                    (Some(w), true) => w.clone(),
                    _ => acc.normal.clone(),
                };
                let tx = tx.clone();
                let conns = conns2.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let roles = match acc.mode {
                        ApiMode::Configured => tls::roles_of(tls.get_ref().1.peer_certificates()),
                        _ => vec!["os:reader".to_string()],
                    };
                    let conn = LabConn {
                        inner: tls,
                        info: LabConnInfo {
                            roles,
                            remote,
                            mode: acc.mode,
                        },
                        kill: conns.register(),
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let server = tokio::spawn((self.apid)(self.clone(), incoming));
        *guard = Some(Serving {
            accept,
            server,
            conns,
        });
        Ok(())
    }

    /// Closes the listener (connection refused from now on) and cuts every open
    /// connection.
    pub(super) async fn stop_serving(&self) {
        self.stop_trustd().await;
        let serving = self.serving.lock().await.take();
        if let Some(s) = serving {
            s.accept.abort();
            let _ = s.accept.await;
            s.conns.kill_all();
            s.server.abort();
            let _ = s.server.await;
        }
    }

    /// Stops everything without awaiting (for `Drop`): lifecycle tasks end, the
    /// listener and server tasks are aborted, connections cut.
    pub(crate) fn halt(&self) {
        self.bump_gen();
        self.halt_trustd();
        if let Ok(mut guard) = self.serving.try_lock() {
            if let Some(s) = guard.take() {
                s.accept.abort();
                s.conns.kill_all();
                s.server.abort();
            }
        }
    }

    pub(super) fn kill_connections_now(&self) {
        if let Ok(guard) = self.serving.try_lock() {
            if let Some(s) = guard.as_ref() {
                s.conns.kill_all();
            }
        }
    }

    pub(super) fn set_maintenance_acceptor(&self) -> Result<(), String> {
        let cfg = tls::maintenance_config(IpAddr::V4(self.ip))?;
        *self.acceptor.lock().expect("acceptor lock") = Some(Acceptor {
            mode: if self.v112 {
                ApiMode::Maintenance112
            } else {
                ApiMode::Maintenance113
            },
            normal: cfg,
            wrong_ca: None,
        });
        Ok(())
    }

    /// A control plane's apid uses its own certificate; a worker's the one trustd
    /// signed for it, and without one apid has nothing to serve (no acceptor).
    pub(super) fn set_configured_acceptor(&self, cfg: &NodeConfig) -> Result<(), String> {
        let ip = IpAddr::V4(self.ip);
        let issued = self.data.lock().expect("data lock").api_cert.clone();
        let identity = match (&issued, cfg.machine_type.is_control_plane()) {
            (_, true) => ApiIdentity::Own,
            (Some(i), false) => ApiIdentity::FromTrustd {
                cert: &i.cert,
                accepted_cas_pem: &i.accepted_cas_pem,
            },
            (None, false) => {
                *self.acceptor.lock().expect("acceptor lock") = None;
                return Ok(());
            }
        };
        let normal = tls::configured_config(ip, cfg, &identity, false)?;
        let wrong = tls::configured_config(ip, cfg, &identity, true)?;
        *self.acceptor.lock().expect("acceptor lock") = Some(Acceptor {
            mode: ApiMode::Configured,
            normal,
            wrong_ca: Some(wrong),
        });
        Ok(())
    }
}
