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

/// How long a bind keeps retrying `AddrInUse` before the node reports it.
const BIND_RETRY: Duration = Duration::from_secs(5);

impl NodeInner {
    /// Listens on the node's address. A failure is never only logged: it is kept
    /// in [`NodeInner::listen_error`] (the lab's report shows it) and the caller
    /// gets it; an address still held by a listener that is closing is waited
    /// for briefly.
    pub(super) async fn start_serving(self: &Arc<Self>) -> std::io::Result<()> {
        let mut guard = self.serving.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let listener = match self.bind_listener().await {
            Ok(l) => {
                *self.listen_error.lock().expect("listen error lock") = None;
                l
            }
            Err(e) => {
                tracing::error!(node = %self.ip, "listen: {e}");
                *self.listen_error.lock().expect("listen error lock") = Some(e.to_string());
                self.fabric.notify();
                return Err(e);
            }
        };
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

    /// Binds the apid address; `AddrInUse` is retried for a while (another
    /// process's socket on a shared machine, or the kernel letting go).
    async fn bind_listener(&self) -> std::io::Result<tokio::net::TcpListener> {
        let mut pause = Duration::from_millis(5);
        let started = std::time::Instant::now();
        loop {
            match tokio::net::TcpListener::bind(self.addr()).await {
                Ok(l) => return Ok(l),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && started.elapsed() < BIND_RETRY =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the listener (connection refused from now on) and cuts every open
    /// connection. The serving lock is held until the listener is gone: a boot
    /// racing this stop (a transition started by a call still in flight) must not
    /// find the slot empty while the old socket still listens, or its bind fails.
    pub(super) async fn stop_serving(&self) {
        self.stop_trustd().await;
        let mut guard = self.serving.lock().await;
        if let Some(s) = guard.take() {
            s.shut_down().await;
        }
        drop(guard);
    }

    /// Whether the listener is up (for the lab's report).
    pub(crate) fn is_serving(&self) -> Option<bool> {
        self.serving.try_lock().ok().map(|g| g.is_some())
    }

    /// Stops everything without awaiting (for `Drop`): lifecycle tasks end, the
    /// listener and server tasks are aborted, connections cut.
    pub(crate) fn halt(&self) {
        self.bump_gen();
        self.halt_trustd();
        if let Ok(mut guard) = self.serving.try_lock() {
            if let Some(s) = guard.take() {
                s.halt();
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
            mode: if self.v112() {
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::{Lab, LabOptions};

    /// A boot that starts listening while a stop still closes the old listener
    /// (two transitions overlapping: one started by a call still in flight) must
    /// end up listening. Before the stop held the lock until the socket was
    /// gone, the bind failed with `AddrInUse` and the node stayed deaf, said only
    /// in a log line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_racing_a_stop_still_listens() {
        let lab = Lab::start(LabOptions {
            nodes: 1,
            first_ip: Ipv4Addr::new(127, 0, 110, 11),
            time_scale: 0.0,
            ..LabOptions::default()
        })
        .await
        .expect("lab");
        let node = lab.nodes()[0].clone();
        for round in 0..50 {
            let (_, started) = tokio::join!(node.inner.stop_serving(), node.inner.start_serving());
            assert!(started.is_ok(), "round {round}: {started:?}");
            assert!(
                tokio::net::TcpStream::connect(node.addr()).await.is_ok(),
                "round {round}: {}",
                node.report()
            );
            assert_eq!(node.listen_error(), None);
        }
    }

    /// A node that cannot listen says so in the lab's report, and listens as soon
    /// as the address is free again instead of staying deaf.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_cannot_listen_says_so_and_recovers() {
        let lab = Lab::start(LabOptions {
            nodes: 1,
            first_ip: Ipv4Addr::new(127, 0, 110, 21),
            time_scale: 0.0,
            ..LabOptions::default()
        })
        .await
        .expect("lab");
        let node = lab.nodes()[0].clone();
        node.power_off().await;
        // Someone else takes the address (no SO_REUSEADDR: the lab's bind fails).
        let squatter = std::net::TcpListener::bind(node.addr()).expect("squat");
        let mut changes = lab.changes();
        let on = tokio::spawn({
            let node = node.clone();
            async move { node.power_on().await }
        });
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while node.listen_error().is_none() {
                changes.changed().await.expect("lab alive");
            }
        })
        .await
        .expect("the failed bind is reported");
        assert!(lab.report().contains("NOT listening"), "{}", lab.report());
        drop(squatter);
        on.await.expect("power on");
        let mut states = node.watch_state();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if tokio::net::TcpStream::connect(node.addr()).await.is_ok() {
                    break;
                }
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(100), states.changed())
                        .await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("listens again: {}", lab.report()));
    }
}
