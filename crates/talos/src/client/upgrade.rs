//! The calls an upgrade makes: `Read` (the boot ID that proves a reboot), image
//! pulls (ImageService.Pull on Talos ≥ 1.13, the unary MachineService.ImagePull
//! before), LifecycleService.Upgrade (1.13+: runs the pulled installer, streams its
//! output and an exit code, never reboots) and the legacy MachineService.Upgrade
//! (1.12: pulls, checks etcd on control planes, installs and reboots by itself).
//!
//! Nothing that changes a node is retried: a lost reply may still have acted.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::Code;

use super::call::TalosClient;
use super::reply::{first, status_to_error};
use crate::api::common;
use crate::api::machine;
use crate::error::TalosError;

/// Where Talos 1.12 and 1.13 expose the kernel's boot ID (read with `Read`, admin only).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The containerd namespace a pull lands in, as talosctl's `--namespace` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageNamespace {
    /// Talos's own images (the installer): talosctl's default.
    #[default]
    System,
    /// Kubernetes' images.
    Cri,
}

impl ImageNamespace {
    fn instance(self) -> common::ContainerdInstance {
        let namespace = match self {
            ImageNamespace::System => common::ContainerdNamespace::NsSystem,
            ImageNamespace::Cri => common::ContainerdNamespace::NsCri,
        };
        // talosctl sends the CRI driver for both named namespaces.
        common::ContainerdInstance {
            driver: common::ContainerDriver::Cri as i32,
            namespace: namespace as i32,
        }
    }
}

/// One message of an ImageService.Pull stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    Layer {
        layer_id: String,
        /// DOWNLOADING, DOWNLOAD_COMPLETE, EXTRACTING, EXTRACT_COMPLETE, ALREADY_EXISTS.
        status: String,
        offset: i64,
        total: i64,
    },
    /// The last message: the image's resolved name.
    Done { name: String },
}

/// One message of a LifecycleService.Upgrade stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleProgress {
    /// A line of the installer's output.
    Line(String),
    /// The installer's exit code: non-zero is the failure (the RPC still ends OK).
    Exit(i32),
}

/// The legacy MachineService.Upgrade request.
#[derive(Debug, Clone, Default)]
pub struct LegacyUpgrade {
    pub image: String,
    /// Skips the node's etcd checks on control planes.
    pub force: bool,
    pub preserve: bool,
    pub stage: bool,
    pub powercycle: bool,
}

/// What the legacy Upgrade answered before it went on asynchronously.
#[derive(Debug, Clone)]
pub struct UpgradeAck {
    pub ack: String,
    /// Follow this actor in Events.
    pub actor_id: String,
}

impl TalosClient {
    /// Reads a file from the node (MachineService.Read; admin only).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, TalosError> {
        let stream = self
            .call("Read", || {
                let req = self.request(machine::ReadRequest {
                    path: path.to_string(),
                })?;
                let mut c = self.machine();
                Ok(async move { c.read(req).await })
            })
            .await?
            .into_inner();
        self.collect_data("Read", stream).await
    }

    /// The node's current boot ID: a new one proves the node rebooted.
    pub async fn boot_id(&self) -> Result<String, TalosError> {
        let bytes = self.read_file(BOOT_ID_PATH).await?;
        let id = String::from_utf8_lossy(&bytes).trim().to_string();
        if id.is_empty() {
            return Err(TalosError::Protocol {
                node: self.label.clone(),
                rpc: "Read",
                detail: format!("{BOOT_ID_PATH} is empty"),
            });
        }
        Ok(id)
    }

    /// Starts ImageService.Pull (Talos ≥ 1.13; `Unimplemented` before).
    pub async fn image_pull(
        &self,
        image_ref: &str,
        namespace: ImageNamespace,
    ) -> Result<impl Stream<Item = Result<PullProgress, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .call("ImageService.Pull", || {
                let mut req = self.request(machine::ImageServicePullRequest {
                    containerd: Some(namespace.instance()),
                    image_ref: image_ref.to_string(),
                })?;
                // A pull of a large image outlives one call deadline.
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.image();
                Ok(async move { c.pull(req).await })
            })
            .await?
            .into_inner();
        Ok(stream.map(move |r| {
            r.map_err(|s| status_to_error(&label, "ImageService.Pull", s))
                .map(pull_progress)
        }))
    }

    /// Pulls an image to the end; `stall` bounds the wait for each message.
    /// Returns the name the node resolved.
    pub async fn image_pull_to_end(
        &self,
        image_ref: &str,
        namespace: ImageNamespace,
        stall: Duration,
    ) -> Result<String, TalosError> {
        let stream = self.image_pull(image_ref, namespace).await?;
        let mut stream = std::pin::pin!(stream);
        loop {
            match self
                .next_or_stall("ImageService.Pull", &mut stream, stall)
                .await?
            {
                Some(PullProgress::Done { name }) => return Ok(name),
                Some(PullProgress::Layer { .. }) => {}
                None => {
                    return Err(TalosError::Protocol {
                        node: self.label.clone(),
                        rpc: "ImageService.Pull",
                        detail: format!("the stream ended before {image_ref} was named"),
                    })
                }
            }
        }
    }

    /// The unary MachineService.ImagePull (deprecated in 1.13; what 1.12 offers).
    pub async fn image_pull_legacy(
        &self,
        reference: &str,
        namespace: ImageNamespace,
    ) -> Result<(), TalosError> {
        let ns = namespace.instance().namespace;
        let resp = self
            .call("ImagePull", || {
                let mut req = self.request(machine::ImagePullRequest {
                    namespace: ns,
                    reference: reference.to_string(),
                })?;
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.machine();
                Ok(async move { c.image_pull(req).await })
            })
            .await?
            .into_inner();
        first(&self.label, "ImagePull", resp.messages).map(|_| ())
    }

    /// Starts LifecycleService.Upgrade with an installer image already pulled into
    /// the system namespace (Talos ≥ 1.13; `Unimplemented` before). Not retried.
    pub async fn lifecycle_upgrade(
        &self,
        image_name: &str,
    ) -> Result<impl Stream<Item = Result<LifecycleProgress, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .with_policy(self.policy.once())
            .call("LifecycleService.Upgrade", || {
                let mut req = self.request(machine::LifecycleServiceUpgradeRequest {
                    containerd: Some(ImageNamespace::System.instance()),
                    source: Some(machine::InstallArtifactsSource {
                        image_name: image_name.to_string(),
                    }),
                })?;
                // The installer runs for minutes.
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.lifecycle();
                Ok(async move { c.upgrade(req).await })
            })
            .await?
            .into_inner();
        let node = self.label.clone();
        Ok(stream.map(move |r| {
            let msg = r.map_err(|s| status_to_error(&label, "LifecycleService.Upgrade", s))?;
            lifecycle_progress(&node, msg)
        }))
    }

    /// Runs LifecycleService.Upgrade to its exit code, handing each output line to
    /// `line`; `stall` bounds the wait for each message.
    pub async fn lifecycle_upgrade_to_end(
        &self,
        image_name: &str,
        stall: Duration,
        mut line: impl FnMut(&str),
    ) -> Result<i32, TalosError> {
        let stream = self.lifecycle_upgrade(image_name).await?;
        let mut stream = std::pin::pin!(stream);
        loop {
            match self
                .next_or_stall("LifecycleService.Upgrade", &mut stream, stall)
                .await?
            {
                Some(LifecycleProgress::Line(l)) => line(&l),
                Some(LifecycleProgress::Exit(code)) => return Ok(code),
                None => {
                    return Err(TalosError::Protocol {
                        node: self.label.clone(),
                        rpc: "LifecycleService.Upgrade",
                        detail: "the stream ended without an exit code".into(),
                    })
                }
            }
        }
    }

    /// The legacy MachineService.Upgrade: answers once the image is pulled and the
    /// etcd checks passed, then the node drains, installs and reboots by itself.
    pub async fn upgrade_legacy(&self, req: &LegacyUpgrade) -> Result<UpgradeAck, TalosError> {
        let mode = if req.powercycle {
            machine::upgrade_request::RebootMode::Powercycle
        } else {
            machine::upgrade_request::RebootMode::Default
        };
        let resp = self
            .with_policy(self.policy.once())
            .call("Upgrade", || {
                let mut r = self.request(machine::UpgradeRequest {
                    image: req.image.clone(),
                    preserve: req.preserve,
                    stage: req.stage,
                    force: req.force,
                    reboot_mode: mode as i32,
                })?;
                // The node pulls the installer before it answers.
                r.metadata_mut().remove("grpc-timeout");
                let mut c = self.machine();
                Ok(async move { c.upgrade(r).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "Upgrade", resp.messages)?;
        Ok(UpgradeAck {
            ack: msg.ack,
            actor_id: msg.actor_id,
        })
    }

    async fn next_or_stall<T>(
        &self,
        rpc: &'static str,
        stream: &mut (impl Stream<Item = Result<T, TalosError>> + Unpin),
        stall: Duration,
    ) -> Result<Option<T>, TalosError> {
        match tokio::time::timeout(stall, stream.next()).await {
            Ok(Some(r)) => r.map(Some),
            Ok(None) => Ok(None),
            Err(_) => Err(TalosError::Rpc {
                node: self.label.clone(),
                rpc,
                code: Code::DeadlineExceeded,
                message: format!("no message for {stall:?}"),
            }),
        }
    }
}

/// A machine event that is a sequence failing: `(sequence, error message)`.
/// After an upgrade, this is how a node's failed boot shows in its Events
/// (the boot sequence failed, the bootloader fell back).
pub fn sequence_error(ev: &machine::Event) -> Option<(String, String)> {
    use prost::Message;
    let data = ev.data.as_ref()?;
    if !data.type_url.ends_with("machine.SequenceEvent") {
        return None;
    }
    let seq = machine::SequenceEvent::decode(data.value.as_slice()).ok()?;
    let err = seq.error?;
    Some((seq.sequence, err.message))
}

fn pull_progress(msg: machine::ImageServicePullResponse) -> PullProgress {
    use machine::image_service_pull_response::Response;
    match msg.response {
        Some(Response::Name(name)) => PullProgress::Done { name },
        Some(Response::PullProgress(p)) => {
            let layer = p.progress.unwrap_or_default();
            let status = machine::image_service_pull_layer_progress::Status::try_from(layer.status)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| format!("status {}", layer.status));
            PullProgress::Layer {
                layer_id: p.layer_id,
                status,
                offset: layer.offset,
                total: layer.total,
            }
        }
        // An empty message carries no progress: count it as a layer without news.
        None => PullProgress::Layer {
            layer_id: String::new(),
            status: String::new(),
            offset: 0,
            total: 0,
        },
    }
}

fn lifecycle_progress(
    node: &str,
    msg: machine::LifecycleServiceUpgradeResponse,
) -> Result<LifecycleProgress, TalosError> {
    use machine::lifecycle_service_install_progress::Response;
    match msg.progress.and_then(|p| p.response) {
        Some(Response::Message(m)) => Ok(LifecycleProgress::Line(m)),
        Some(Response::ExitCode(c)) => Ok(LifecycleProgress::Exit(c)),
        None => Err(TalosError::Protocol {
            node: node.to_string(),
            rpc: "LifecycleService.Upgrade",
            detail: "a progress message carried neither a line nor an exit code".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_messages_become_layers_then_the_name() {
        use machine::image_service_pull_response::Response;
        let layer = machine::ImageServicePullResponse {
            response: Some(Response::PullProgress(machine::ImageServicePullProgress {
                layer_id: "sha256:aa".into(),
                progress: Some(machine::ImageServicePullLayerProgress {
                    status: 2,
                    elapsed: None,
                    offset: 5,
                    total: 10,
                }),
            })),
        };
        assert_eq!(
            pull_progress(layer),
            PullProgress::Layer {
                layer_id: "sha256:aa".into(),
                status: "EXTRACTING".into(),
                offset: 5,
                total: 10
            }
        );
        let done = machine::ImageServicePullResponse {
            response: Some(Response::Name("ghcr.io/x/installer:v1".into())),
        };
        assert_eq!(
            pull_progress(done),
            PullProgress::Done {
                name: "ghcr.io/x/installer:v1".into()
            }
        );
    }

    #[test]
    fn an_empty_lifecycle_message_is_a_protocol_error() {
        let e = lifecycle_progress("n1", machine::LifecycleServiceUpgradeResponse::default());
        assert!(matches!(e, Err(TalosError::Protocol { .. })), "{e:?}");
    }

    #[test]
    fn named_namespaces_use_the_cri_driver_as_talosctl_does() {
        let i = ImageNamespace::System.instance();
        assert_eq!(i.driver, common::ContainerDriver::Cri as i32);
        assert_eq!(i.namespace, common::ContainerdNamespace::NsSystem as i32);
        assert_eq!(
            ImageNamespace::Cri.instance().namespace,
            common::ContainerdNamespace::NsCri as i32
        );
    }
}
