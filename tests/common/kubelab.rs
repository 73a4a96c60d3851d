//! A lab with a bootstrapped control plane and its Kubernetes API, for the
//! `lab_kube_*` tests. Included with `#[path]` next to `mod common;`.
#![allow(dead_code)]

use std::time::Duration;

use endsys_bootstrap::talos::TalosClient;
use endsys_lab::Lab;

use crate::common::{lab, mtls, TestCluster};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct KubeCluster {
    pub lab: Lab,
    pub cluster: TestCluster,
    pub admin: TalosClient,
    pub ips: Vec<String>,
    /// The kubeconfig streamed by the Talos API, unmodified.
    pub kubeconfig: String,
}

pub use crate::common::apply_all;

/// Three control planes, bootstrapped; the API is up and the kubeconfig fetched.
pub async fn up(subnet: u8, name: &str) -> KubeCluster {
    up_lab(lab(subnet, 3, 3, "v1.13.9").await, name).await
}

/// The same on a lab started by the caller (e.g. with a non-zero time scale).
pub async fn up_lab(lab: Lab, name: &str) -> KubeCluster {
    let cluster = TestCluster::new(name);
    apply_all(&cluster, &lab, 3).await;
    let ips: Vec<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let admin = mtls(&ips[0], cluster.credentials(&["os:admin"]));
    admin.bootstrap(false, false).await.unwrap();
    let addr = tokio::time::timeout(WAIT, lab.kube().wait_up())
        .await
        .expect("the Kubernetes API comes up after bootstrap");
    assert_eq!(addr.to_string(), format!("{}:6443", ips[0]));
    let kubeconfig = String::from_utf8(admin.kubeconfig().await.unwrap()).unwrap();
    KubeCluster {
        lab,
        cluster,
        admin,
        ips,
        kubeconfig,
    }
}

/// A kube-rs client from a kubeconfig, exactly as the tool builds one.
pub async fn client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}
