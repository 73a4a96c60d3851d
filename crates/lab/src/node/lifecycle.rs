//! A node's lifecycle, the state machine Talos runs: boot into maintenance
//! without a config, else (installing first when Talos is not on disk) into
//! configured mode; an accepted apply leaves maintenance; reboot, reset (leaving
//! etcd first when graceful), power off and on, a replaced disk. Transitions that
//! take the node down first let the reply of the RPC that caused them out
//! ([`ReplySent`]); tasks of an older lifecycle (generation) stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::data::NodeState;
use super::{delay, NodeInner};
use crate::config::NodeConfig;

/// The only delay the time scale does not touch: after the reply of an RPC that
/// takes the node down (reboot, reset, leaving maintenance) has left the handler's
/// body (see [`ReplySent`]), h2 needs a moment to write it to the socket before
/// every connection is cut.
const REPLY_GRACE: Duration = Duration::from_millis(20);

/// Upper bound for waiting on a reply to be sent (a client that stops reading).
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Put into a response's extensions by handlers that trigger a transition; the
/// routing layer fires it once the response body is fully sent (or dropped).
#[derive(Clone)]
pub(crate) struct ReplySent(pub Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl ReplySent {
    pub(crate) fn fire(&self) {
        if let Some(tx) = self.0.lock().expect("reply lock").take() {
            let _ = tx.send(());
        }
    }
}

impl NodeInner {
    /// Registers the reply the next transition must let out before cutting
    /// connections; returns the marker for the response's extensions.
    pub(crate) fn expect_reply(&self) -> ReplySent {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.pending_reply.lock().expect("reply lock") = Some(rx);
        ReplySent(Arc::new(Mutex::new(Some(tx))))
    }

    /// Waits until the reply registered with [`Self::expect_reply`] has been sent.
    async fn await_reply(&self) {
        let rx = self.pending_reply.lock().expect("reply lock").take();
        if let Some(rx) = rx {
            let _ = tokio::time::timeout(REPLY_WAIT, rx).await;
        }
        tokio::time::sleep(REPLY_GRACE).await;
    }

    /// Listens; if that fails (recorded in `listen_error`, shown by the lab's
    /// report), keeps trying in the background for this lifecycle instead of
    /// leaving the node silently deaf.
    pub(super) async fn serve(self: &Arc<Self>, gen: u64) {
        if self.start_serving().await.is_ok() {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A later transition (reboot, power off) owns the listener now.
                let down = matches!(node.state(), NodeState::Rebooting | NodeState::PoweredOff);
                if node.gen() != gen || down || node.start_serving().await.is_ok() {
                    break;
                }
            }
        });
    }

    /// Boots: into maintenance without a config, else (installing first if Talos
    /// is not on disk yet) into configured mode.
    pub(crate) fn boot(
        self: &Arc<Self>,
        gen: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.boot_inner(gen))
    }

    async fn boot_inner(self: &Arc<Self>, gen: u64) {
        // A new boot ID every boot; the other slot if an installer wrote it, or
        // the bootloader's fallback when that slot does not boot.
        while let Err(failed) = self.start_boot() {
            self.failed_boot(gen, failed).await;
            if self.gen() != gen {
                return;
            }
        }
        let config = self.config();
        {
            let mut d = self.data.lock().expect("data lock");
            d.services.clear();
            d.unmet.clear();
            d.joining = false;
            d.rebooting_after_apply = false;
        }
        match config {
            None => {
                if let Err(e) = self.set_maintenance_acceptor() {
                    tracing::error!(node = %self.ip, "maintenance certificate: {e}");
                }
                {
                    let mut d = self.data.lock().expect("data lock");
                    if !self.v112() {
                        d.set_service("apid", "Running", "Health check successful");
                    }
                    d.set_service("machined", "Running", "Service started as goroutine");
                    d.task_event("runningMaintenance", false, "");
                }
                self.set_state(NodeState::Maintenance);
                self.serve(gen).await;
                self.commit();
            }
            Some(cfg) => {
                let installed = self.data.lock().expect("data lock").installed;
                if !installed {
                    // Config on a machine booted from ISO: run the install path.
                    self.install_and_boot(gen, cfg).await;
                    return;
                }
                self.boot_configured(gen, cfg).await;
            }
        }
    }

    async fn boot_configured(self: &Arc<Self>, gen: u64, cfg: Arc<NodeConfig>) {
        let is_cp = cfg.machine_type.is_control_plane();
        if !is_cp {
            // API secrets live in memory: a worker asks trustd again on every boot.
            self.data.lock().expect("data lock").api_cert = None;
        }
        if let Err(e) = self.set_configured_acceptor(&cfg) {
            tracing::error!(node = %self.ip, "apid certificate: {e}");
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.set_service("machined", "Running", "Service started as goroutine");
            if is_cp {
                d.set_service("apid", "Running", "Health check successful");
            } else {
                d.set_service("apid", "Waiting", "Waiting for api certificates");
            }
            if is_cp {
                d.set_service("trustd", "Running", "Health check successful");
                d.set_service("etcd", "Preparing", "Running pre state");
            }
            d.set_service(
                "kubelet",
                "Waiting",
                "Waiting for service \"cri\" to be \"up\"",
            );
        }
        self.set_state(NodeState::Booting);
        if is_cp {
            if let Err(e) = self.start_trustd().await {
                tracing::error!(node = %self.ip, "trustd listen: {e}");
            }
            self.serve(gen).await;
        } else {
            // No certificate yet, so no apid: connection refused until trustd signs.
            self.stop_serving().await;
        }
        self.commit();
        if is_cp {
            self.services_up(gen, true).await;
        } else {
            // The rest waits for trustd, as long as the control planes take: it
            // runs on its own (like machined's controllers), so power on returns.
            let me = self.clone();
            tokio::spawn(async move {
                if me.worker_api_up(gen, &cfg).await {
                    me.services_up(gen, false).await;
                }
            });
        }
    }

    /// Services come up after the boot delay; the node runs.
    async fn services_up(self: &Arc<Self>, gen: u64, is_cp: bool) {
        self.sleep("boot", delay::BOOT).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.set_service("kubelet", "Running", "Health check successful");
            if is_cp {
                let member = d.etcd.and_then(|m| {
                    let store = self.fabric.etcd.lock().expect("etcd lock");
                    store
                        .get(m.cluster_uid)
                        .filter(|c| c.members.iter().any(|x| x.id == m.member_id))
                        .map(|_| ())
                });
                if member.is_some() {
                    d.set_service("etcd", "Running", "Health check successful");
                } else if d.etcd.is_some() {
                    d.set_service(
                        "etcd",
                        "Failed",
                        "etcdserver: the member has been permanently removed from the cluster",
                    );
                } else {
                    d.set_service("etcd",
                        "Preparing",
                        "etcd is waiting to join the cluster, if this node is the first node in the cluster, please run `talosctl bootstrap`",
                    );
                }
            }
        }
        self.set_state(NodeState::Running);
        self.commit();
        self.fabric.kick_joins();
    }

    async fn install_and_boot(self: &Arc<Self>, gen: u64, cfg: Arc<NodeConfig>) {
        // apid restarts in mTLS mode as soon as the config is complete (a worker's
        // has no certificate until trustd signs one after the reboot: it answers
        // no handshake meanwhile).
        self.data.lock().expect("data lock").api_cert = None;
        if let Err(e) = self.set_configured_acceptor(&cfg) {
            tracing::error!(node = %self.ip, "apid certificate: {e}");
        }
        let disk = self
            .hardware
            .select_install_disk(cfg.install_disk.as_deref(), cfg.disk_selector.as_ref())
            .map(|d| d.dev_path());
        {
            let mut d = self.data.lock().expect("data lock");
            d.task_event("runningMaintenance", true, "");
            d.sequence_event("install", false, "");
            if let Err(reason) = &disk {
                d.unmet = vec![("install".into(), format!("failed to install: {reason}"))];
            }
        }
        self.set_state(NodeState::Installing);
        self.serve(gen).await;
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.kill_connections_now();
        let Ok(disk) = disk else {
            // Stays installing, the failure visible in MachineStatus.
            return;
        };
        self.sleep("install", delay::INSTALL).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.installed = true;
            d.install_disk = Some(disk);
            d.sequence_event("install", true, "");
        }
        self.reboot_cycle(gen, "").await;
    }

    /// Reboot: listener closed and connections cut, wait, boot.
    pub(crate) async fn reboot_cycle(self: &Arc<Self>, gen: u64, actor: &str) {
        {
            let mut d = self.data.lock().expect("data lock");
            d.sequence_event("reboot", false, actor);
            d.task_event("stopAllServices", false, actor);
        }
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.set_state(NodeState::Rebooting);
        self.commit();
        self.stop_serving().await;
        let custom = *self.reboot_delay.lock().expect("reboot delay lock");
        match custom {
            Some(d) => self.sleep_for("reboot", d).await,
            None => self.sleep("reboot", delay::REBOOT).await,
        }
        if self.gen() != gen {
            return;
        }
        self.boot(gen).await;
    }

    /// After an accepted maintenance apply.
    pub(crate) async fn leave_maintenance(self: &Arc<Self>, gen: u64) {
        let Some(cfg) = self.config() else { return };
        let installed = self.data.lock().expect("data lock").installed;
        if installed {
            // Booted from disk with an empty STATE: no install, no reboot.
            {
                let mut d = self.data.lock().expect("data lock");
                d.task_event("runningMaintenance", true, "");
            }
            self.commit();
            self.await_reply().await;
            if self.gen() != gen {
                return;
            }
            if let Err(e) = self.set_configured_acceptor(&cfg) {
                tracing::error!(node = %self.ip, "apid certificate: {e}");
            }
            self.kill_connections_now();
            self.boot_configured(gen, cfg).await;
        } else {
            self.install_and_boot(gen, cfg).await;
        }
    }

    pub(crate) async fn power_off(self: &Arc<Self>) {
        self.bump_gen();
        self.stop_serving().await;
        {
            let mut d = self.data.lock().expect("data lock");
            d.services.clear();
            d.joining = false;
        }
        self.set_state(NodeState::PoweredOff);
        self.commit();
    }

    pub(crate) async fn power_on(self: &Arc<Self>) {
        if self.state() != NodeState::PoweredOff {
            return;
        }
        let gen = self.bump_gen();
        self.boot(gen).await;
    }

    /// The disk died and was replaced: no Talos, no config, no etcd data.
    pub(crate) fn wipe_disk(&self) {
        let mut d = self.data.lock().expect("data lock");
        d.config = None;
        d.installed = false;
        d.install_disk = None;
        d.etcd = None;
        d.recover_file = None;
        drop(d);
        self.forget_install();
    }

    /// Reset: leave etcd (graceful control plane), wipe, then reboot or power off.
    pub(crate) async fn reset(
        self: &Arc<Self>,
        gen: u64,
        graceful: bool,
        reboot: bool,
        labels: Vec<String>,
        actor: String,
    ) {
        {
            let mut d = self.data.lock().expect("data lock");
            d.sequence_event("reset", false, &actor);
        }
        self.commit();
        self.await_reply().await;
        if self.gen() != gen {
            return;
        }
        self.set_state(NodeState::Resetting);
        self.commit();
        let is_cp = self
            .config()
            .is_some_and(|c| c.machine_type.is_control_plane());
        if graceful && is_cp {
            self.leave_etcd();
        }
        self.sleep("reset", delay::RESET).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.task_event("stopAllServices", false, &actor);
            let whole = labels.is_empty();
            if whole || labels.iter().any(|l| l == "EPHEMERAL") {
                d.etcd = None;
                d.recover_file = None;
            }
            if whole || labels.iter().any(|l| l == "STATE") {
                d.config = None;
            }
            if whole || labels.iter().any(|l| l == "BOOT" || l == "EFI") {
                d.installed = false;
                d.install_disk = None;
                self.forget_install();
            }
            d.task_event("stopAllServices", true, &actor);
        }
        self.commit();
        if reboot {
            self.reboot_cycle(gen, &actor).await;
        } else {
            self.stop_serving().await;
            self.data.lock().expect("data lock").services.clear();
            self.set_state(NodeState::PoweredOff);
            self.commit();
        }
    }
}
