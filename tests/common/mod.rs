//! Shared helpers for the end-to-end tests against the lab: a throw-away cluster
//! identity (CAs, admin certificate) and minimal machine configs built from it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use endsys_bootstrap::talos::{CallPolicy, Credentials, TalosClient, TlsMode};
use endsys_lab::identity::LabIdentity;
use endsys_lab::{Lab, LabOptions};

/// The secrets of one test cluster (the lab's throw-away identity).
pub struct TestCluster(pub LabIdentity);

impl TestCluster {
    pub fn new(name: &str) -> Self {
        Self(LabIdentity::generate(name).unwrap())
    }

    pub fn credentials(&self, roles: &[&str]) -> Arc<Credentials> {
        self.0.credentials(roles).unwrap()
    }

    pub fn machine_config(&self, hostname: &str, machine_type: &str, endpoint_ip: &str) -> String {
        self.0
            .machine_config(hostname, machine_type, endpoint_ip)
            .unwrap()
    }
}

/// A lab on its own loopback /24 (tests run in parallel).
pub async fn lab(subnet: u8, nodes: usize, controlplanes: usize, talos_version: &str) -> Lab {
    Lab::start(LabOptions {
        nodes,
        controlplanes,
        first_ip: Ipv4Addr::new(127, 0, subnet, 11),
        port: 50000,
        talos_version: talos_version.to_string(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

/// Short deadlines so a broken test fails fast.
pub fn policy() -> CallPolicy {
    CallPolicy {
        attempt_timeout: Duration::from_secs(5),
        retry_budget: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    }
}

pub fn insecure(ip: &str) -> TalosClient {
    TalosClient::connect(ip, TlsMode::Insecure { fingerprint: None }, policy()).unwrap()
}

pub fn mtls(ip: &str, creds: Arc<Credentials>) -> TalosClient {
    TalosClient::connect(ip, TlsMode::Mutual(creds), policy()).unwrap()
}

/// Applies configs to every node (the first `cps` are control planes, endpoint =
/// node 0) and waits, on each node's MachineStatus watch, until they all run.
pub async fn apply_all(cluster: &TestCluster, lab: &Lab, cps: usize) {
    use endsys_bootstrap::talos::resources::MachineStage;
    use endsys_bootstrap::talos::wait::wait_for_status;
    use endsys_bootstrap::talos::ApplyMode;
    let endpoint = lab.nodes()[0].ip().to_string();
    for (i, node) in lab.nodes().iter().enumerate() {
        let role = if i < cps { "controlplane" } else { "worker" };
        let cfg = cluster.machine_config(&format!("node{}", i + 1), role, &endpoint);
        insecure(&node.ip().to_string())
            .apply_configuration(cfg.as_bytes(), ApplyMode::Auto, false)
            .await
            .unwrap();
    }
    let creds = cluster.credentials(&["os:admin"]);
    for node in lab.nodes() {
        let c = mtls(&node.ip().to_string(), creds.clone());
        wait_for_status(
            &c,
            "running",
            Duration::from_secs(20),
            |s| s.stage == MachineStage::Running,
            |_| {},
        )
        .await
        .unwrap();
    }
}
