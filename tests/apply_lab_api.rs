//! The lab's ApplyConfiguration and MachineConfigs as Talos serves them: live vs
//! reboot decided per field (1.13), the dry-run summary with a real config diff,
//! STAGED moving only the `persistent` copy until the next boot, the install-disk
//! selector refused by RuntimeValidate, and 1.14 never rebooting on apply.
//! Subnets 127.0.45.0/24 and 127.0.46.0/24.

#[path = "common/nodes.rs"]
mod nodes;

use endsys_bootstrap::talos::api::{
    cosi::resource::{self as cosi, state_client::StateClient},
    machine::{self, apply_configuration_request::Mode},
};
use endsys_lab::{Lab, LabNode, NodeState};
use nodes::*;
use tonic::Code;

async fn machine_config(node: &LabNode, s: &Secrets, id: &str) -> (String, Vec<u8>) {
    let ch = channel(node.addr(), mtls_config(&s.os_ca, &s.client(&["os:admin"])))
        .await
        .unwrap();
    let r = StateClient::new(ch)
        .get(cosi::GetRequest {
            namespace: "config".into(),
            r#type: "MachineConfigs.config.talos.dev".into(),
            id: id.into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    let spec = r.spec.unwrap();
    (spec.yaml_spec, spec.proto_spec)
}

/// The config bytes of a MachineConfig, read both ways a client may.
async fn running(node: &LabNode, s: &Secrets, id: &str) -> String {
    let (yaml, proto) = machine_config(node, s, id).await;
    let from_yaml: String = serde_yaml_ng::from_str(&yaml).unwrap();
    // MachineConfigSpec{bytes yaml_marshalled = 1}: tag 0x0a, varint length, bytes.
    assert_eq!(proto.first(), Some(&0x0a));
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = proto[i];
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    assert_eq!(from_yaml.as_bytes(), &proto[i..i + len]);
    from_yaml
}

/// Every transition is broadcast: waits for Rebooting, then Running again.
async fn rebooted(mut t: tokio::sync::broadcast::Receiver<NodeState>) {
    within("a reboot", async {
        while t.recv().await.unwrap() != NodeState::Rebooting {}
        while t.recv().await.unwrap() != NodeState::Running {}
    })
    .await;
}

async fn send(
    node: &LabNode,
    s: &Secrets,
    cfg: &str,
    mode: Mode,
    dry_run: bool,
) -> Result<machine::ApplyConfiguration, tonic::Status> {
    mtls(node, s, &["os:admin"])
        .await
        .apply_configuration(machine::ApplyConfigurationRequest {
            data: cfg.as_bytes().to_vec(),
            mode: mode as i32,
            dry_run,
            try_mode_timeout: None,
        })
        .await
        .map(|r| r.into_inner().messages.remove(0))
}

fn with_sysctl(cfg: &str) -> String {
    cfg.replace(
        "  certSANs: []\n",
        "  certSANs: []\n  sysctls:\n    net.core.somaxconn: \"65535\"\n",
    )
}

fn with_env(cfg: &str) -> String {
    cfg.replace(
        "  certSANs: []\n",
        "  certSANs: []\n  env:\n    HTTPS_PROXY: http://127.0.0.1:3128\n",
    )
}

#[tokio::test]
async fn live_reboot_staged_and_dry_runs_on_113() {
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        let lab = Lab::start(opts(45, 1, "v1.13.9")).await.unwrap();
        let node = lab.nodes()[0].clone();
        let s = Secrets::new();
        configure(&node, &s, "controlplane", "cp1").await;
        let base = String::from_utf8(s.config("controlplane", "cp1", node.ip())).unwrap();

        // Read back: both ids, YAML string scalar and proto_spec agree.
        assert_eq!(running(&node, &s, "v1alpha1").await, base);
        assert_eq!(running(&node, &s, "persistent").await, base);
        let (yaml, _) = machine_config(&node, &s, "v1alpha1").await;
        assert!(yaml.starts_with('|') || yaml.starts_with('"'), "{yaml}");

        // No change.
        let dry = send(&node, &s, &base, Mode::Auto, true).await.unwrap();
        assert_eq!(
            dry.mode_details,
            "Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nNo changes."
        );

        // A sysctl applies live; the dry run shows the diff.
        let live = with_sysctl(&base);
        let dry = send(&node, &s, &live, Mode::Auto, true).await.unwrap();
        assert_eq!(dry.mode, Mode::NoReboot as i32);
        assert!(dry.mode_details.starts_with(
            "Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nConfig diff:\n\n--- a\n+++ b\n"
        ), "{}", dry.mode_details);
        assert!(dry.mode_details.contains("+    net.core.somaxconn: '65535'"), "{}", dry.mode_details);
        let mut transitions = node.transitions();
        let r = send(&node, &s, &live, Mode::NoReboot, false).await.unwrap();
        assert_eq!(r.mode, Mode::NoReboot as i32);
        assert_eq!(running(&node, &s, "v1alpha1").await, live);
        assert!(transitions.try_recv().is_err(), "a live apply changed the node's state");

        // .machine.env needs a reboot: AUTO says REBOOT, NO_REBOOT is refused with the reason.
        let env = with_env(&live);
        let dry = send(&node, &s, &env, Mode::Auto, true).await.unwrap();
        assert_eq!(dry.mode, Mode::Reboot as i32);
        assert!(dry.mode_details.starts_with("Dry run summary:\nApplied configuration with a reboot (skipped in dry-run).\nConfig diff:"));
        let e = send(&node, &s, &env, Mode::NoReboot, true).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("this config change can't be applied in immediate mode\ndiff:\n"), "{}", e.message());
        assert!(e.message().contains("+    HTTPS_PROXY:"), "{}", e.message());
        assert!(!e.message().contains("somaxconn"), "live fields are not the reason: {}", e.message());

        // STAGED moves only persistent, until the next boot.
        let r = send(&node, &s, &env, Mode::Staged, false).await.unwrap();
        assert_eq!(r.mode, Mode::Staged as i32);
        assert_eq!(running(&node, &s, "v1alpha1").await, live);
        assert_eq!(running(&node, &s, "persistent").await, env);
        assert_eq!(node.state(), NodeState::Running);
        let transitions = node.transitions();
        mtls(&node, &s, &["os:admin"]).await.reboot(machine::RebootRequest { mode: 0 }).await.unwrap();
        rebooted(transitions).await;
        assert_eq!(running(&node, &s, "v1alpha1").await, env);
        assert_eq!(running(&node, &s, "persistent").await, env);

        // AUTO with a reboot change really reboots.
        let token = env.replace("token: lab.token", "token: lab.token2");
        let transitions = node.transitions();
        let r = send(&node, &s, &token, Mode::Auto, false).await.unwrap();
        assert_eq!(r.mode, Mode::Reboot as i32);
        rebooted(transitions).await;
        assert_eq!(running(&node, &s, "v1alpha1").await, token);
        lab.shutdown().await;
    })
    .await
    .expect("lab apply test within 90 s");
}

#[tokio::test]
async fn unmatched_disk_selector_and_114_modes() {
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        let lab = Lab::start(opts(46, 1, "v1.14.0")).await.unwrap();
        let node = lab.nodes()[0].clone();
        let s = Secrets::new();
        configure(&node, &s, "controlplane", "cp1").await;
        let base = String::from_utf8(s.config("controlplane", "cp1", node.ip())).unwrap();

        // RuntimeValidate: a selector matching no disk, dry run or not.
        let bad = base.replace(
            "    disk: /dev/sda\n",
            "    diskSelector:\n      model: NoSuchDisk*\n",
        );
        for dry in [true, false] {
            let e = send(&node, &s, &bad, Mode::Auto, dry).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(
                e.message()
                    .contains("no disks matched the expression: model: NoSuchDisk*"),
                "{}",
                e.message()
            );
        }
        assert_eq!(running(&node, &s, "v1alpha1").await, base);

        // 1.14: REBOOT is gone, AUTO never reboots (even for .machine.env).
        let env = with_env(&base);
        let e = send(&node, &s, &env, Mode::Reboot, false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert_eq!(
            e.message(),
            "the REBOOT mode is not supported, please use AUTO or NO_REBOOT modes instead"
        );
        let mut transitions = node.transitions();
        let r = send(&node, &s, &env, Mode::Auto, false).await.unwrap();
        assert_eq!(r.mode, Mode::NoReboot as i32);
        assert_eq!(running(&node, &s, "v1alpha1").await, env);
        assert!(transitions.try_recv().is_err());
        lab.shutdown().await;
    })
    .await
    .expect("lab 1.14 apply test within 90 s");
}
