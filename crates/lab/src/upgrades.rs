//! The lab's knobs and views for upgrades: the registry's images and their
//! faults ([`Lab`]), and each node's boot slots, boot ID and image store
//! ([`LabNode`]).

use crate::node::upgrade::ImageNs;
use crate::{Lab, LabNode};

impl Lab {
    /// Fault: Talos installed from `image_ref` fails to boot. A node that
    /// reboots into it falls back to its previous slot (the A/B fallback) and
    /// comes back on the old version, after two reboots and with a new boot ID.
    pub fn set_image_fails_to_boot(&self, image_ref: &str) {
        self.fabric.registry.set_fails_to_boot(image_ref, true);
    }

    /// Undoes [`Self::set_image_fails_to_boot`].
    pub fn clear_image_fails_to_boot(&self, image_ref: &str) {
        self.fabric.registry.set_fails_to_boot(image_ref, false);
    }

    /// Fault: the installer in `image_ref` exits with `code` (0 clears it).
    /// LifecycleService.Upgrade streams that code and writes no slot.
    pub fn set_installer_exit_code(&self, image_ref: &str, code: i32) {
        self.fabric.registry.set_installer_exit(image_ref, code);
    }

    /// Adds an installer image to the lab's registry that installs `version`
    /// (besides the released tags of Sidero's and the image factory's installer
    /// repositories, which resolve by themselves).
    pub fn publish_installer(&self, image_ref: &str, version: &str) {
        self.fabric.registry.publish(image_ref, version);
    }

    /// The Talos version an installer image installs, or the pull error a node
    /// would report for it.
    pub fn installer_version(&self, image_ref: &str) -> Result<String, String> {
        self.fabric.registry.installer_version(image_ref)
    }
}

impl LabNode {
    /// The Talos version booted now (what Version reports).
    pub fn talos_version(&self) -> String {
        self.inner.talos_version()
    }

    /// The version of the slot booted before the current one, once the node
    /// has booted an upgrade.
    pub fn previous_talos_version(&self) -> Option<String> {
        self.inner
            .slots
            .lock()
            .expect("slots lock")
            .previous
            .clone()
    }

    /// The version an installer wrote to the other slot, booted at the next reboot.
    pub fn staged_talos_version(&self) -> Option<String> {
        self.inner
            .slots
            .lock()
            .expect("slots lock")
            .next
            .as_ref()
            .map(|s| s.version.clone())
    }

    /// This boot's ID (new at every boot, the fallback's second boot included).
    pub fn boot_id(&self) -> String {
        self.inner.boot_id()
    }

    /// How many times the node booted (the first power-on is boot 1).
    pub fn boots(&self) -> u64 {
        self.inner.slots.lock().expect("slots lock").boots
    }

    /// Whether `image_ref` is in the node's containerd store (system namespace,
    /// where talosctl pulls installers).
    pub fn has_image(&self, image_ref: &str) -> bool {
        self.inner.has_image(ImageNs::System, image_ref)
    }
}
