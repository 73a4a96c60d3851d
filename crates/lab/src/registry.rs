//! The container registry the lab's nodes pull installer images from, and the
//! faults images can carry.
//!
//! What a real registry would answer: Sidero's installer repository
//! (`ghcr.io/siderolabs/installer`) and the image factory's installer
//! repositories (`factory.talos.dev/installer[-secureboot]/<schematic>` and the
//! platform forms `factory.talos.dev/<platform>-installer[-secureboot]/<schematic>`,
//! a schematic being 64 hex digits) carry one tag per released Talos version
//! (`vX.Y.Z`), and the installer installs exactly that version. Any other
//! repository or tag is "not found". Tests add images of their own with
//! [`Registry::publish`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// The newest patch of every Talos minor the lab's registry carries (1.x).
const RELEASED: &[(u32, u32)] = &[(8, 4), (9, 6), (10, 9), (11, 6), (12, 11), (13, 9), (14, 2)];

/// The lab-wide registry and image faults (in the [`crate::node::Fabric`]).
#[derive(Default)]
pub(crate) struct Registry {
    /// Extra images and the Talos version each installs.
    published: Mutex<BTreeMap<String, String>>,
    /// Images whose Talos fails to boot (the node falls back to its previous slot).
    fails_to_boot: Mutex<BTreeSet<String>>,
    /// Images whose installer exits with this code.
    installer_exit: Mutex<BTreeMap<String, i32>>,
    /// Talos's etcd upgrade mutex (`constants.EtcdTalosEtcdUpgradeMutex`), one per
    /// lab: taken by a legacy Upgrade's pre-checks.
    pub upgrade_mutex: AtomicBool,
}

/// The reference without a digest, and the digest if any.
fn split_digest(image: &str) -> (&str, Option<&str>) {
    match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    }
}

/// Repository and tag (`None` without one).
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let slash = name.rfind('/').unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    }
}

fn is_schematic(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_installer_repo(repo: &str) -> bool {
    if repo == "ghcr.io/siderolabs/installer" {
        return true;
    }
    let Some(rest) = repo.strip_prefix("factory.talos.dev/") else {
        return false;
    };
    let Some((flavour, schematic)) = rest.split_once('/') else {
        return false;
    };
    let base = flavour.strip_suffix("-secureboot").unwrap_or(flavour);
    let platform_ok = base == "installer"
        || base.strip_suffix("-installer").is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    platform_ok && is_schematic(schematic)
}

fn released(tag: &str) -> bool {
    let Some(v) = tag.strip_prefix("v1.") else {
        return false;
    };
    let mut parts = v.split('.');
    let (Some(minor), Some(patch), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(minor), Ok(patch)) = (minor.parse::<u32>(), patch.parse::<u32>()) else {
        return false;
    };
    RELEASED
        .iter()
        .any(|(m, last)| *m == minor && patch <= *last)
}

/// containerd's answer for a reference the registry does not have.
pub(crate) fn not_found(image: &str) -> String {
    format!(
        "failed to pull image {image:?}: failed to resolve reference {image:?}: {image}: not found"
    )
}

impl Registry {
    /// The Talos version the installer image installs, or containerd's pull error.
    pub(crate) fn installer_version(&self, image: &str) -> Result<String, String> {
        if let Some(v) = self.published.lock().expect("registry lock").get(image) {
            return Ok(v.clone());
        }
        let (name, _digest) = split_digest(image);
        let (repo, tag) = split_tag(name);
        match tag {
            Some(tag) if is_installer_repo(repo) && released(tag) => Ok(tag.to_string()),
            _ => Err(not_found(image)),
        }
    }

    /// Adds an image installing `version` (any reference, any version).
    pub(crate) fn publish(&self, image: &str, version: &str) {
        self.published
            .lock()
            .expect("registry lock")
            .insert(image.to_string(), version.to_string());
    }

    pub(crate) fn set_fails_to_boot(&self, image: &str, on: bool) {
        let mut set = self.fails_to_boot.lock().expect("registry lock");
        if on {
            set.insert(image.to_string());
        } else {
            set.remove(image);
        }
    }

    pub(crate) fn fails_to_boot(&self, image: &str) -> bool {
        self.fails_to_boot
            .lock()
            .expect("registry lock")
            .contains(image)
    }

    pub(crate) fn set_installer_exit(&self, image: &str, code: i32) {
        let mut m = self.installer_exit.lock().expect("registry lock");
        if code == 0 {
            m.remove(image);
        } else {
            m.insert(image.to_string(), code);
        }
    }

    pub(crate) fn installer_exit(&self, image: &str) -> i32 {
        self.installer_exit
            .lock()
            .expect("registry lock")
            .get(image)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMATIC: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

    #[test]
    fn installer_tags_of_released_versions_resolve_to_that_version() {
        let r = Registry::default();
        assert_eq!(
            r.installer_version("ghcr.io/siderolabs/installer:v1.13.9"),
            Ok("v1.13.9".to_string())
        );
        for repo in ["installer", "metal-installer", "metal-installer-secureboot"] {
            let image = format!("factory.talos.dev/{repo}/{SCHEMATIC}:v1.12.11");
            assert_eq!(r.installer_version(&image), Ok("v1.12.11".to_string()));
        }
        let digest = format!("ghcr.io/siderolabs/installer:v1.13.9@sha256:{SCHEMATIC}");
        assert_eq!(r.installer_version(&digest), Ok("v1.13.9".to_string()));
    }

    #[test]
    fn unknown_repositories_tags_and_schematics_are_not_found() {
        let r = Registry::default();
        for image in [
            "ghcr.io/siderolabs/installer:v1.13.10",
            "ghcr.io/siderolabs/installer:v1.99.0",
            "ghcr.io/siderolabs/installer",
            "ghcr.io/example/installer:v1.13.9",
            "factory.talos.dev/installer/abc123:v1.13.9",
            "docker.io/library/busybox:v1.13.9",
        ] {
            let e = r.installer_version(image).expect_err(image);
            assert!(e.contains("not found"), "{image}: {e}");
        }
        r.publish("registry.lab/custom:v1", "v1.13.9");
        assert_eq!(
            r.installer_version("registry.lab/custom:v1"),
            Ok("v1.13.9".to_string())
        );
    }
}
