//! Upgrades on lab nodes, through the tool's Talos client: the legacy
//! MachineService.Upgrade (1.12 and 1.13 semantics, etcd checks refused with
//! Talos's messages and code Unknown, force), ImageService.Pull and
//! LifecycleService.Upgrade (1.13+ only, image from the store, exit code in the
//! stream, no reboot, no etcd check), boot IDs, and the A/B fallback of an image
//! that fails to boot. Subnets 127.0.30.0/24 – 127.0.33.0/24.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{apply_all, lab, mtls, TestCluster};
use endsys_bootstrap::talos::{ImageNamespace, LegacyUpgrade, TalosClient, TalosError};
use endsys_lab::{Lab, LabOptions, NodeState};
use futures::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const STALL: Duration = Duration::from_secs(10);

fn installer(version: &str) -> String {
    format!("ghcr.io/siderolabs/installer:{version}")
}

/// `f` within the test deadline; on timeout, what the lab was doing.
async fn within<T>(lab: &Lab, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}\n{}", lab.report()),
    }
}

/// Waits, on the lab's change counter, until `f` holds.
async fn until(lab: &Lab, what: &str, mut f: impl FnMut() -> bool) {
    let mut rx = lab.changes();
    within(lab, what, async {
        while !f() {
            rx.changed().await.unwrap();
        }
    })
    .await
}

async fn etcd_running(lab: &Lab, cps: usize) {
    until(lab, "etcd running on every control plane", || {
        lab.nodes()[..cps]
            .iter()
            .all(|n| n.service_state("etcd").as_deref() == Some("Running"))
    })
    .await;
}

/// `cps` control planes and `workers` workers, applied, bootstrapped, etcd up.
async fn cluster(lab: &Lab, cps: usize) -> (TestCluster, Vec<TalosClient>) {
    let c = TestCluster::new("upgrade");
    apply_all(&c, lab, cps).await;
    let creds = c.credentials(&["os:admin"]);
    let clients: Vec<TalosClient> = lab
        .nodes()
        .iter()
        .map(|n| mtls(&n.ip().to_string(), creds.clone()))
        .collect();
    clients[0].bootstrap(false, false).await.unwrap();
    etcd_running(lab, cps).await;
    (c, clients)
}

fn code(e: &TalosError) -> Option<Code> {
    e.code()
}

async fn running(lab: &Lab, i: usize) {
    let n = lab.nodes()[i].clone();
    until(lab, &format!("{} running", n.addr()), || {
        n.state() == NodeState::Running
    })
    .await;
}

/// On 1.12 the new services do not exist; the legacy Upgrade refuses while a
/// member is down, installs and reboots by itself otherwise (node cordoned by
/// Talos's sequence: stage Upgrading), and the node comes back on the new
/// version with a new boot ID. Force skips the etcd checks.
#[tokio::test]
async fn legacy_upgrade_on_112_checks_etcd_installs_and_reboots() {
    let lab = lab(30, 3, 3, "v1.12.11").await;
    let (_c, cl) = cluster(&lab, 3).await;
    let target = installer("v1.13.9");

    let e = cl[0]
        .image_pull(&target, ImageNamespace::System)
        .await
        .err()
        .expect("no ImageService on 1.12");
    assert_eq!(code(&e), Some(Code::Unimplemented), "{e}");
    let e = cl[0]
        .lifecycle_upgrade(&target)
        .await
        .err()
        .expect("no LifecycleService on 1.12");
    assert_eq!(code(&e), Some(Code::Unimplemented), "{e}");

    // An image the registry does not have: refused before anything else.
    let e = cl[0]
        .upgrade_legacy(&LegacyUpgrade {
            image: installer("v1.13.99"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::Unknown), "{e}");
    assert!(
        e.to_string().contains("error validating installer image"),
        "{e}"
    );

    // A member down: refused without force, with Talos's message.
    lab.nodes()[2].power_off().await;
    let e = cl[0]
        .upgrade_legacy(&LegacyUpgrade {
            image: target.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::Unknown), "{e}");
    let member = lab.nodes()[2].etcd_member_id().unwrap();
    assert!(
        e.to_string().contains(&format!(
            "error validating etcd for upgrade: etcd member {member:016x} is not healthy; all members must be healthy to perform an upgrade"
        )),
        "{e}"
    );
    assert_eq!(lab.nodes()[0].talos_version(), "v1.12.11");
    lab.nodes()[2].power_on().await;
    etcd_running(&lab, 3).await;

    // Accepted: the node runs its own sequence and reboots.
    let before = cl[0].boot_id().await.unwrap();
    assert_eq!(before, lab.nodes()[0].boot_id());
    let mut states = lab.nodes()[0].transitions();
    let ack = cl[0]
        .upgrade_legacy(&LegacyUpgrade {
            image: target.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ack.ack, "Upgrade request received");
    assert!(!ack.actor_id.is_empty());
    within(&lab, "upgrading, rebooting, running", async {
        let mut seen = Vec::new();
        while seen.last() != Some(&NodeState::Running) {
            seen.push(states.recv().await.unwrap());
        }
        assert!(seen.contains(&NodeState::Upgrading), "{seen:?}");
        assert!(seen.contains(&NodeState::Rebooting), "{seen:?}");
    })
    .await;
    let after = within(&lab, "boot id", cl[0].boot_id()).await.unwrap();
    assert_ne!(before, after, "a new boot ID after the upgrade");
    assert_eq!(cl[0].version().await.unwrap().tag, "v1.13.9");
    assert_eq!(
        lab.nodes()[0].previous_talos_version().as_deref(),
        Some("v1.12.11")
    );
    // Booted 1.13: its API flavour follows (LifecycleService answers now).
    cl[0]
        .image_pull_to_end(&target, ImageNamespace::System, STALL)
        .await
        .unwrap();

    // Force skips the etcd checks while a member is down.
    etcd_running(&lab, 3).await;
    lab.nodes()[0].power_off().await;
    cl[1]
        .upgrade_legacy(&LegacyUpgrade {
            image: target.clone(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap();
    lab.nodes()[0].power_on().await;
    running(&lab, 1).await;
    until(&lab, "node 2 on 1.13.9", || {
        lab.nodes()[1].talos_version() == "v1.13.9" && lab.nodes()[1].state() == NodeState::Running
    })
    .await;
    lab.shutdown().await;
}

/// Two members cannot lose one: refused without force (1.13 semantics, where
/// `preserve` skips the checks too).
#[tokio::test]
async fn legacy_upgrade_refuses_two_member_clusters() {
    let lab = Lab::start(LabOptions {
        nodes: 2,
        controlplanes: 2,
        first_ip: std::net::Ipv4Addr::new(127, 0, 31, 11),
        talos_version: "v1.13.0".into(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let (_c, cl) = cluster(&lab, 2).await;
    let e = cl[0]
        .upgrade_legacy(&LegacyUpgrade {
            image: installer("v1.13.9"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::Unknown), "{e}");
    assert!(
        e.to_string().contains("error validating etcd for upgrade: etcd member count(2) is insufficient to maintain quorum if upgrade commences"),
        "{e}"
    );
    assert_eq!(lab.nodes()[0].state(), NodeState::Running);
    cl[0]
        .upgrade_legacy(&LegacyUpgrade {
            image: installer("v1.13.9"),
            preserve: true,
            ..Default::default()
        })
        .await
        .unwrap();
    until(&lab, "node 1 on 1.13.9", || {
        lab.nodes()[0].talos_version() == "v1.13.9" && lab.nodes()[0].state() == NodeState::Running
    })
    .await;
    lab.shutdown().await;
}

/// 1.13: Pull then LifecycleService.Upgrade. The installer image must be in
/// the store; the upgrade streams lines and an exit code, neither reboots nor
/// checks etcd (a control plane down does not stop it); the reboot boots the
/// new slot. A failing installer ends the stream OK with its code and writes
/// nothing; a second upgrade during the first is refused.
#[tokio::test]
async fn lifecycle_upgrade_needs_the_pulled_image_and_never_reboots() {
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, 32, 11),
        talos_version: "v1.13.0".into(),
        time_scale: 0.1,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let (_c, cl) = cluster(&lab, 3).await;
    let target = installer("v1.13.9");

    let e = cl[0]
        .lifecycle_upgrade_to_end(&target, STALL, |_| {})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::Internal), "{e}");
    assert!(
        e.to_string().contains("not found in containerd store"),
        "{e}"
    );

    let e = cl[0]
        .image_pull_to_end(&installer("v1.13.42"), ImageNamespace::System, STALL)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::NotFound), "{e}");

    let name = cl[0]
        .image_pull_to_end(&target, ImageNamespace::System, STALL)
        .await
        .unwrap();
    assert!(
        name.starts_with("ghcr.io/siderolabs/installer@sha256:"),
        "{name}"
    );
    assert!(lab.nodes()[0].has_image(&target));
    // Through a control plane with the `node` key, as apid proxies one-to-one.
    let via = cl[0].for_node(&lab.nodes()[1].ip().to_string());
    via.image_pull_to_end(&target, ImageNamespace::System, STALL)
        .await
        .unwrap();
    assert!(lab.nodes()[1].has_image(&target));

    // etcd unhealthy does not matter to this API.
    lab.nodes()[2].power_off().await;
    let boot = lab.nodes()[0].boot_id();
    let first = cl[0].lifecycle_upgrade(&target).await.unwrap();
    let e = cl[0]
        .lifecycle_upgrade(&target)
        .await
        .err()
        .expect("one upgrade at a time");
    assert_eq!(code(&e), Some(Code::FailedPrecondition), "{e}");
    let items: Vec<_> = within(&lab, "installer stream", first.collect()).await;
    let items: Vec<_> = items.into_iter().map(Result::unwrap).collect();
    use endsys_bootstrap::talos::LifecycleProgress;
    assert!(items.len() >= 2, "{items:?}");
    assert_eq!(items.last(), Some(&LifecycleProgress::Exit(0)));
    assert_eq!(lab.nodes()[0].state(), NodeState::Running, "no reboot");
    assert_eq!(lab.nodes()[0].boot_id(), boot);
    assert_eq!(cl[0].version().await.unwrap().tag, "v1.13.0");
    assert_eq!(
        lab.nodes()[0].staged_talos_version().as_deref(),
        Some("v1.13.9")
    );
    cl[0].reboot().await.unwrap();
    until(&lab, "node 1 rebooted into 1.13.9", || {
        lab.nodes()[0].state() == NodeState::Running && lab.nodes()[0].boot_id() != boot
    })
    .await;
    assert_eq!(cl[0].version().await.unwrap().tag, "v1.13.9");
    assert_eq!(cl[0].boot_id().await.unwrap(), lab.nodes()[0].boot_id());

    // A failing installer: exit code in the stream, the RPC itself OK, no slot.
    let broken = installer("v1.13.8");
    lab.set_installer_exit_code(&broken, 1);
    cl[1]
        .image_pull_to_end(&broken, ImageNamespace::System, STALL)
        .await
        .unwrap();
    let mut lines = Vec::new();
    let exit = cl[1]
        .lifecycle_upgrade_to_end(&broken, STALL, |l| lines.push(l.to_string()))
        .await
        .unwrap();
    assert_eq!(exit, 1, "{lines:?}");
    assert_eq!(lab.nodes()[1].staged_talos_version(), None);
    lab.shutdown().await;
}

/// An image that fails to boot: the node reboots into it, the bootloader falls
/// back, and the node comes back on the old version with a second new boot ID
/// and an event saying so.
#[tokio::test]
async fn a_failed_boot_falls_back_to_the_previous_slot() {
    let lab = lab(33, 1, 1, "v1.13.0").await;
    let (_c, cl) = cluster(&lab, 1).await;
    let target = installer("v1.13.9");
    lab.set_image_fails_to_boot(&target);
    cl[0]
        .image_pull_to_end(&target, ImageNamespace::System, STALL)
        .await
        .unwrap();
    let exit = cl[0]
        .lifecycle_upgrade_to_end(&target, STALL, |_| {})
        .await
        .unwrap();
    assert_eq!(exit, 0);
    let (boot, boots) = (lab.nodes()[0].boot_id(), lab.nodes()[0].boots());
    cl[0].reboot().await.unwrap();
    until(&lab, "node back after the fallback", || {
        lab.nodes()[0].state() == NodeState::Running && lab.nodes()[0].boots() >= boots + 2
    })
    .await;
    assert_eq!(
        lab.nodes()[0].boots(),
        boots + 2,
        "the failed boot, then the fallback"
    );
    assert_ne!(cl[0].boot_id().await.unwrap(), boot);
    assert_eq!(cl[0].version().await.unwrap().tag, "v1.13.0", "rolled back");
    assert_eq!(lab.nodes()[0].staged_talos_version(), None);
    // The failed boot left its error in the event log.
    let mut events = cl[0].events(-1).await.unwrap();
    let (sequence, error) = within(&lab, "the failed boot's event", async {
        loop {
            let ev = events.next().await.unwrap().unwrap();
            if let Some(found) = endsys_bootstrap::talos::sequence_error(&ev) {
                return found;
            }
        }
    })
    .await;
    assert_eq!(sequence, "boot");
    assert!(
        error.contains("v1.13.9") && error.contains("failed to boot"),
        "{error}"
    );

    // Any image the registry has boots; Talos 1.14 also publishes its boot ID
    // as a resource (absent before).
    let e = cl[0]
        .get("runtime", "BootIDs.runtime.talos.dev", "boot-id")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::NotFound), "{e}");
    let v114 = "registry.lab/siderolabs/installer:v1.14.0";
    lab.publish_installer(v114, "v1.14.0");
    cl[0]
        .image_pull_to_end(v114, ImageNamespace::System, STALL)
        .await
        .unwrap();
    let exit = cl[0]
        .lifecycle_upgrade_to_end(v114, STALL, |_| {})
        .await
        .unwrap();
    assert_eq!(exit, 0);
    let boots = lab.nodes()[0].boots();
    cl[0].reboot().await.unwrap();
    until(&lab, "node on 1.14.0", || {
        lab.nodes()[0].state() == NodeState::Running && lab.nodes()[0].boots() > boots
    })
    .await;
    assert_eq!(cl[0].version().await.unwrap().tag, "v1.14.0");
    let r = cl[0]
        .get("runtime", "BootIDs.runtime.talos.dev", "boot-id")
        .await
        .unwrap();
    assert!(
        r.yaml_spec.contains(&lab.nodes()[0].boot_id()),
        "{}",
        r.yaml_spec
    );

    // A replaced disk boots the boot medium's version again.
    lab.nodes()[0].wipe_disk().await;
    lab.nodes()[0].power_on().await;
    assert_eq!(lab.nodes()[0].state(), NodeState::Maintenance);
    assert_eq!(lab.nodes()[0].talos_version(), "v1.13.0");
    lab.shutdown().await;
}
