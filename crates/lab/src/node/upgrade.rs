//! Upgrades as a node lives them: the Talos version is an A/B pair of boot
//! slots, an installer writes the other slot, and the next boot takes it; a new
//! boot ID every boot; the per-node containerd store pulls land in; and the
//! bootloader's fallback: when the new slot fails to boot, the node reverts to
//! the previous one and reboots, coming back on the old version with yet another
//! boot ID (`internal/app/machined/revert.go`, META tag `Upgrade`). The legacy
//! MachineService.Upgrade sequence runs here too: cordon (Talos marks the Node
//! with `talos.dev/cordoned`), stop services, install, reboot.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::data::NodeState;
use super::{delay, NodeInner};
use endsys_talos::api::common;
use endsys_talos::api::machine;

/// How long a legacy upgrade waits at least for the Kubernetes side's cordon
/// and drain (the simulated controllers run on store events, at any time scale).
const DRAIN_WAIT_MIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Which containerd namespace an image lives in (the driver does not matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ImageNs {
    System,
    Cri,
}

impl ImageNs {
    pub(crate) fn from_wire(ns: i32) -> ImageNs {
        if ns == common::ContainerdNamespace::NsCri as i32 {
            ImageNs::Cri
        } else {
            ImageNs::System
        }
    }
}

/// A slot an installer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub version: String,
    pub image: String,
}

/// The boot slots and what goes with them.
pub(crate) struct Slots {
    /// The version of the boot medium (ISO, PXE) the node boots from while
    /// Talos is not on its disk.
    pub medium: String,
    /// The version booted now (what Version reports).
    pub current: String,
    /// The installer image the current slot came from (`None`: the first install).
    pub current_image: Option<String>,
    /// Written by an installer, booted next (META `Upgrade` holds the current label).
    pub next: Option<Slot>,
    /// The slot booted before the current one.
    pub previous: Option<String>,
    /// This boot's ID (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Boots since the lab started (the initial power-on is boot 1).
    pub boots: u64,
    /// The containerd store.
    pub images: BTreeSet<(ImageNs, String)>,
    /// LifecycleService's per-node lock: an install or upgrade runs.
    pub installing: bool,
    /// A legacy Upgrade sequence cordoned the Node (the kube side marks it).
    pub cordon_requested: bool,
    /// The kube side ran that cordon and drain.
    pub drain_ran: bool,
}

impl Slots {
    pub(crate) fn new(version: String) -> Slots {
        Slots {
            medium: version.clone(),
            current: version,
            current_image: None,
            next: None,
            previous: None,
            boot_id: String::new(),
            boots: 0,
            images: BTreeSet::new(),
            installing: false,
            cordon_requested: false,
            drain_ran: false,
        }
    }
}

/// Whether a Talos version is a 1.12 release (its API flavour differs).
pub(crate) fn is_v112(version: &str) -> bool {
    version.trim_start_matches('v').starts_with("1.12")
}

/// The digest the lab's registry gives an image (stable per reference).
pub(crate) fn digest_of(image: &str) -> String {
    use sha2::Digest;
    let name = image.split('@').next().unwrap_or(image);
    format!("sha256:{:x}", sha2::Sha256::digest(name.as_bytes()))
}

/// The pinned name a pull answers with: repository plus digest.
pub(crate) fn pinned_name(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let name = image;
    let slash = name.rfind('/').unwrap_or(0);
    let repo = match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    };
    format!("{repo}@{}", digest_of(image))
}

impl NodeInner {
    pub(crate) fn talos_version(&self) -> String {
        self.slots.lock().expect("slots lock").current.clone()
    }

    /// The API flavour of the version booted now.
    pub(crate) fn v112(&self) -> bool {
        is_v112(&self.slots.lock().expect("slots lock").current)
    }

    pub(crate) fn boot_id(&self) -> String {
        self.slots.lock().expect("slots lock").boot_id.clone()
    }

    /// Pulls `image` into the node's store; returns the pinned name.
    pub(crate) fn pull_image(&self, ns: ImageNs, image: &str) -> Result<String, String> {
        self.fabric.registry.installer_version(image)?;
        let mut s = self.slots.lock().expect("slots lock");
        s.images.insert((ns, image.to_string()));
        s.images.insert((ns, pinned_name(image)));
        Ok(pinned_name(image))
    }

    pub(crate) fn has_image(&self, ns: ImageNs, image: &str) -> bool {
        self.slots
            .lock()
            .expect("slots lock")
            .images
            .contains(&(ns, image.to_string()))
    }

    /// The installer wrote the other slot: the next boot takes it.
    pub(crate) fn write_next_slot(&self, image: &str) -> Result<String, String> {
        let version = self.fabric.registry.installer_version(image)?;
        self.slots.lock().expect("slots lock").next = Some(Slot {
            version: version.clone(),
            image: image.to_string(),
        });
        Ok(version)
    }

    /// Talos is gone from the disk: the next boot runs the boot medium's version.
    pub(crate) fn forget_install(&self) {
        let mut s = self.slots.lock().expect("slots lock");
        s.current = s.medium.clone();
        s.current_image = None;
        s.next = None;
        s.previous = None;
    }

    /// A new boot: a new boot ID and, when an installer wrote the other slot,
    /// that slot. `Err` carries the slot that failed to boot: the bootloader
    /// already reverted to the current one.
    pub(super) fn start_boot(&self) -> Result<(), Slot> {
        let mut s = self.slots.lock().expect("slots lock");
        s.boot_id = uuid::Uuid::new_v4().to_string();
        s.boots += 1;
        let Some(next) = s.next.take() else {
            return Ok(());
        };
        if self.fabric.registry.fails_to_boot(&next.image) {
            return Err(next);
        }
        let old = std::mem::replace(&mut s.current, next.version);
        s.previous = Some(old);
        s.current_image = Some(next.image);
        Ok(())
    }

    /// The failed boot of `slot`: what machined reports before the bootloader
    /// falls back, then the reboot into the previous slot.
    pub(super) async fn failed_boot(self: &Arc<Self>, gen: u64, slot: Slot) {
        let old = self.talos_version();
        {
            let mut d = self.data.lock().expect("data lock");
            d.services.clear();
            d.sequence_event("boot", false, "");
            let message = format!(
                "Talos {} (installer {}) failed to boot: boot sequence failed; reverting the bootloader to the previous boot entry (Talos {old}) and rebooting",
                slot.version, slot.image
            );
            let ev = machine::SequenceEvent {
                sequence: "boot".into(),
                action: machine::sequence_event::Action::Stop as i32,
                error: Some(common::Error {
                    code: common::Code::Fatal as i32,
                    message,
                    details: vec![],
                }),
            };
            d.queue_event(super::data::any("SequenceEvent", &ev), "");
        }
        self.set_state(NodeState::Booting);
        self.commit();
        self.sleep("failed boot", delay::BOOT).await;
        if self.gen() != gen {
            return;
        }
        self.set_state(NodeState::Rebooting);
        self.commit();
        self.sleep("reboot", delay::REBOOT).await;
    }

    /// MachineService.Upgrade's sequence after its reply: cordon (the Node gets
    /// `talos.dev/cordoned`), stop the services (etcd and kubelet included: the
    /// member stays, its data too), install the other slot, reboot.
    pub(crate) async fn legacy_upgrade(self: &Arc<Self>, gen: u64, image: String, actor: String) {
        {
            let mut d = self.data.lock().expect("data lock");
            d.sequence_event("upgrade", false, &actor);
            d.task_event("cordonAndDrainNode", false, &actor);
        }
        {
            let mut s = self.slots.lock().expect("slots lock");
            s.cordon_requested = true;
            s.drain_ran = false;
        }
        let mut drained = self.drained.subscribe();
        drained.mark_unchanged();
        self.set_state(NodeState::Upgrading);
        self.commit();
        let start = std::time::Instant::now();
        if self
            .fabric
            .kube_serving
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Talos's cordon and drain go through the API server; a drain that
            // PodDisruptionBudgets hold gives up after the drain time.
            let limit = self.fabric.scaled(delay::DRAIN).max(DRAIN_WAIT_MIN);
            let _ = tokio::time::timeout(limit, drained.changed()).await;
        }
        let rest = self
            .fabric
            .scaled(delay::DRAIN)
            .saturating_sub(start.elapsed());
        self.sleep_for("drain", rest).await;
        if self.gen() != gen {
            return;
        }
        {
            let mut d = self.data.lock().expect("data lock");
            d.task_event("cordonAndDrainNode", true, &actor);
            d.task_event("stopServicesEphemeral", false, &actor);
            for id in ["kubelet", "etcd"] {
                if d.services.contains_key(id) {
                    d.set_service(id, "Finished", "Service finished successfully");
                }
            }
            d.task_event("stopServicesEphemeral", true, &actor);
            d.task_event("upgrade", false, &actor);
        }
        self.commit();
        self.sleep("install", delay::INSTALL).await;
        if self.gen() != gen {
            return;
        }
        let written = self.write_next_slot(&image);
        {
            let mut d = self.data.lock().expect("data lock");
            d.task_event("upgrade", true, &actor);
            d.sequence_event("upgrade", true, &actor);
        }
        if let Err(e) = written {
            // The image was validated before the reply; nothing else fails here.
            tracing::error!(node = %self.ip, "lab upgrade: {e}");
        }
        self.reboot_cycle(gen, &actor).await;
    }
}
