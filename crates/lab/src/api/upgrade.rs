//! The calls of an upgrade, as Talos answers them: `Read` (the boot ID file),
//! the legacy MachineService.ImagePull and Upgrade (the installer pulled before
//! the reply; on control planes without `force` the etcd upgrade mutex and
//! `ValidateForUpgrade`, plain errors so gRPC code Unknown; then the node's own
//! sequence: cordon, stop, install, reboot), and the 1.13 services:
//! ImageService.Pull (progress, then the pinned name) and LifecycleService.Upgrade
//! (runs the installer from the store, streams its lines and exit code; no etcd
//! check, no reboot). On 1.12 the two services do not exist.
//! Sources: `talos@v1.12.6` and `talos@v1.13.9`
//! `internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go` (Upgrade),
//! `internal/pkg/etcd/etcd.go` (ValidateForUpgrade), `internal/app/images/images.go`
//! (Pull), `internal/app/lifecycle/lifecycle.go` (Upgrade).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::gate::{BoxStream, LabApi};
use crate::node::delay;
use crate::node::upgrade::ImageNs;
use crate::node::NodeInner;
use crate::tls::ApiMode;
use endsys_talos::api::common;
use endsys_talos::api::machine::{
    self, image_service_server::ImageService, lifecycle_service_server::LifecycleService,
};

/// The only file `Read` serves in the lab.
pub(super) const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Releases the etcd upgrade mutex when the pre-checks end.
struct MutexGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn unknown_service(name: &str) -> Status {
    Status::unimplemented(format!("unknown service machine.{name}"))
}

impl LabApi {
    pub(super) fn read_file(&self, path: &str) -> Result<BoxStream<common::Data>, Status> {
        if path != BOOT_ID_PATH {
            return Err(Status::unknown(format!(
                "lab: Read serves only {BOOT_ID_PATH}; open {path}: no such file or directory"
            )));
        }
        let bytes = format!("{}\n", self.node.boot_id()).into_bytes();
        let item = Ok(common::Data {
            metadata: None,
            bytes,
        });
        Ok(Box::pin(tokio_stream::iter(vec![item])))
    }

    /// `ValidateForUpgrade` behind the etcd upgrade mutex (control planes, no force).
    fn etcd_upgrade_checks(&self) -> Result<(), Status> {
        let node = &self.node;
        let Some(cfg) = node.config() else {
            return Ok(());
        };
        let fabric = &node.fabric;
        let uid = node
            .data
            .lock()
            .expect("data lock")
            .etcd
            .map(|m| m.cluster_uid)
            .or_else(|| fabric.alive_cluster_for_key(&cfg.etcd_key));
        let Some(uid) = uid.filter(|u| fabric.has_quorum(*u)) else {
            // The mutex lives in etcd: without quorum the lock times out.
            return Err(Status::unknown(
                "failed to acquire upgrade mutex: context deadline exceeded",
            ));
        };
        let mutex = &fabric.registry.upgrade_mutex;
        if mutex
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Status::unknown(
                "failed to acquire upgrade mutex: mutex: Locked by another session",
            ));
        }
        let _held = MutexGuard(mutex);
        let members = {
            let store = fabric.etcd.lock().expect("etcd lock");
            store
                .get(uid)
                .map(|c| c.members.clone())
                .unwrap_or_default()
        };
        if members.len() == 2 {
            return Err(Status::unknown(
                "error validating etcd for upgrade: etcd member count(2) is insufficient to maintain quorum if upgrade commences",
            ));
        }
        for m in &members {
            if m.name.is_empty() {
                return Err(Status::unknown(format!(
                    "error validating etcd for upgrade: etcd member {:016x} is not started, all members must be running to perform an upgrade",
                    m.id
                )));
            }
            if !fabric.member_running(uid, m.id) {
                return Err(Status::unknown(format!(
                    "error validating etcd for upgrade: etcd member {:016x} is not healthy; all members must be healthy to perform an upgrade: context deadline exceeded",
                    m.id
                )));
            }
        }
        Ok(())
    }

    pub(super) fn legacy_upgrade(
        &self,
        request: Request<machine::UpgradeRequest>,
    ) -> Result<Response<machine::UpgradeResponse>, Status> {
        let info = self.gate(&request, "Upgrade")?;
        let req = request.into_inner();
        let node = &self.node;
        let v112 = node.v112();
        let installed = node.data.lock().expect("data lock").installed;
        if !v112 && !installed {
            return Err(Status::failed_precondition("Talos is not installed"));
        }
        if let Err(e) = node.pull_image(ImageNs::System, &req.image) {
            return Err(Status::unknown(format!(
                "error validating installer image {:?}: {e}",
                req.image
            )));
        }
        let in_maintenance = info.mode != ApiMode::Configured;
        let control_plane = node
            .config()
            .is_some_and(|c| c.machine_type.is_control_plane());
        // 1.12 skips the checks only for force; 1.13 also for preserve and maintenance.
        let skip = req.force || (!v112 && (req.preserve || in_maintenance));
        if control_plane && !skip {
            self.etcd_upgrade_checks()?;
        }
        let actor = uuid::Uuid::new_v4().to_string();
        let (a, image) = (actor.clone(), req.image.clone());
        let marker = self.spawn(|n, gen| async move { n.legacy_upgrade(gen, image, a).await });
        Ok(Self::with_marker(
            Response::new(machine::UpgradeResponse {
                messages: vec![machine::Upgrade {
                    metadata: None,
                    ack: "Upgrade request received".into(),
                    actor_id: actor,
                }],
            }),
            marker,
        ))
    }

    pub(super) fn legacy_image_pull(
        &self,
        request: Request<machine::ImagePullRequest>,
    ) -> Result<Response<machine::ImagePullResponse>, Status> {
        self.gate(&request, "ImagePull")?;
        let req = request.into_inner();
        self.node
            .pull_image(ImageNs::from_wire(req.namespace), &req.reference)
            .map_err(|e| Status::not_found(format!("error pulling image: {e}")))?;
        Ok(Response::new(machine::ImagePullResponse {
            messages: vec![machine::ImagePull { metadata: None }],
        }))
    }
}

fn namespace_of(c: Option<&common::ContainerdInstance>) -> ImageNs {
    ImageNs::from_wire(c.map(|c| c.namespace).unwrap_or_default())
}

fn layer_progress(layer: &str, status: i32, total: i64) -> machine::ImageServicePullResponse {
    use machine::image_service_pull_response::Response;
    machine::ImageServicePullResponse {
        response: Some(Response::PullProgress(machine::ImageServicePullProgress {
            layer_id: layer.to_string(),
            progress: Some(machine::ImageServicePullLayerProgress {
                status,
                elapsed: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 250_000_000,
                }),
                offset: total,
                total,
            }),
        })),
    }
}

fn install_line(line: String) -> machine::LifecycleServiceUpgradeResponse {
    use machine::lifecycle_service_install_progress::Response;
    machine::LifecycleServiceUpgradeResponse {
        progress: Some(machine::LifecycleServiceInstallProgress {
            response: Some(Response::Message(line)),
        }),
    }
}

fn install_exit(code: i32) -> machine::LifecycleServiceUpgradeResponse {
    use machine::lifecycle_service_install_progress::Response;
    machine::LifecycleServiceUpgradeResponse {
        progress: Some(machine::LifecycleServiceInstallProgress {
            response: Some(Response::ExitCode(code)),
        }),
    }
}

#[tonic::async_trait]
impl ImageService for LabApi {
    type PullStream = BoxStream<machine::ImageServicePullResponse>;

    async fn pull(
        &self,
        request: Request<machine::ImageServicePullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        if self.node.v112() {
            return Err(unknown_service("ImageService"));
        }
        self.gate(&request, "ImageService.Pull")?;
        let req = request.into_inner();
        let ns = namespace_of(req.containerd.as_ref());
        let name = self
            .node
            .pull_image(ns, &req.image_ref)
            .map_err(|e| Status::not_found(format!("error pulling image: {e}")))?;
        use machine::image_service_pull_layer_progress::Status as S;
        let digest = crate::node::upgrade::digest_of(&req.image_ref);
        let layer = format!("sha256:{}", &digest[7..19]);
        let msgs = vec![
            Ok(layer_progress(&layer, S::Downloading as i32, 73_400_320)),
            Ok(layer_progress(&layer, S::Extracting as i32, 73_400_320)),
            Ok(layer_progress(
                &layer,
                S::ExtractComplete as i32,
                73_400_320,
            )),
            Ok(machine::ImageServicePullResponse {
                response: Some(machine::image_service_pull_response::Response::Name(name)),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }
}

/// The installer container's run: its output lines over the install delay,
/// then its exit code; slot B written on success. The lock is released at the
/// end whether or not the caller still listens.
async fn run_installer(
    node: Arc<NodeInner>,
    image: String,
    tx: mpsc::Sender<Result<machine::LifecycleServiceUpgradeResponse, Status>>,
) {
    let code = node.fabric.registry.installer_exit(&image);
    let disk = node
        .data
        .lock()
        .expect("data lock")
        .install_disk
        .clone()
        .unwrap_or_else(|| "/dev/sda".into());
    let version = node
        .fabric
        .registry
        .installer_version(&image)
        .unwrap_or_default();
    let lines = [
        format!("running installer {image} on {disk} (upgrade)"),
        format!("installing Talos {version}: writing the boot assets to the other boot entry"),
        if code == 0 {
            "installation of the bootloader and the boot entry complete".to_string()
        } else {
            format!("error: the installer failed (exit code {code})")
        },
    ];
    for line in lines {
        let _ = tx.send(Ok(install_line(line))).await;
        node.sleep("install", delay::INSTALL / 3.0).await;
    }
    if code == 0 {
        if let Err(e) = node.write_next_slot(&image) {
            tracing::error!(node = %node.ip, "lab installer: {e}");
        }
    }
    node.slots.lock().expect("slots lock").installing = false;
    node.commit();
    let _ = tx.send(Ok(install_exit(code))).await;
}

#[tonic::async_trait]
impl LifecycleService for LabApi {
    type UpgradeStream = BoxStream<machine::LifecycleServiceUpgradeResponse>;

    async fn upgrade(
        &self,
        request: Request<machine::LifecycleServiceUpgradeRequest>,
    ) -> Result<Response<Self::UpgradeStream>, Status> {
        if self.node.v112() {
            return Err(unknown_service("LifecycleService"));
        }
        self.gate(&request, "LifecycleService.Upgrade")?;
        let req = request.into_inner();
        let node = self.node.clone();
        {
            let mut s = node.slots.lock().expect("slots lock");
            if s.installing {
                return Err(Status::failed_precondition(
                    "another installation/upgrade is already in progress",
                ));
            }
            s.installing = true;
        }
        let release = || node.slots.lock().expect("slots lock").installing = false;
        if !node.data.lock().expect("data lock").installed {
            release();
            return Err(Status::failed_precondition("machine is not installed"));
        }
        let image = req.source.map(|s| s.image_name).unwrap_or_default();
        if image.is_empty() {
            release();
            return Err(Status::invalid_argument("installer image name is required"));
        }
        let ns = namespace_of(req.containerd.as_ref());
        if !node.has_image(ns, &image) {
            release();
            return Err(Status::internal(format!(
                "upgrade failed: installer image {image:?} not found in containerd store: image {image:?}: not found"
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_installer(node, image, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
