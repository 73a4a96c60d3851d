//! Workers in the lab get their apid certificate from the control planes'
//! trustd (port 50001, machine token in the `token` metadata), as on metal: a
//! wrong token is refused as trustd refuses it, and a worker whose control
//! planes are unreachable stays `booting` with apid waiting for its certificate.

mod common;

use std::time::Duration;

use common::{insecure, mtls, TestCluster};
use endsys_bootstrap::talos::api::security::security_service_client::SecurityServiceClient;
use endsys_bootstrap::talos::ApplyMode;
use endsys_lab::{Lab, LabNode, NodeState};

const DEADLINE: Duration = Duration::from_secs(30);

async fn apply(node: &LabNode, config: &str) {
    insecure(&node.ip().to_string())
        .apply_configuration(config.as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap();
}

/// Waits, on the lab's change counter, until `f` holds; fails naming `what`
/// and what the nodes were doing.
async fn until(lab: &Lab, what: &str, f: impl Fn() -> bool) {
    let mut rx = lab.changes();
    let r = tokio::time::timeout(DEADLINE, async {
        while !f() {
            let _ = rx.changed().await;
        }
    })
    .await;
    if r.is_err() {
        let states: Vec<String> = lab
            .nodes()
            .iter()
            .map(|n| {
                format!(
                    "{}: {:?} apid={:?} trustd={:?}",
                    n.ip(),
                    n.state(),
                    n.service_state("apid"),
                    n.trustd_error()
                )
            })
            .collect();
        panic!("{what}: not within {DEADLINE:?}; lab: {states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_mtls_with_a_certificate_trustd_signed() {
    let lab = common::lab(60, 2, 1, "v1.13.9").await;
    let cluster = TestCluster::new("trust");
    let cp_ip = lab.nodes()[0].ip().to_string();
    let worker = lab.nodes()[1].clone();
    // The worker first: its trustd endpoint is not up yet, it retries.
    apply(&worker, &cluster.machine_config("w1", "worker", &cp_ip)).await;
    until(&lab, "worker waiting for trustd", || {
        worker.state() == NodeState::Booting && worker.trustd_error().is_some()
    })
    .await;
    assert_eq!(worker.service_state("apid").as_deref(), Some("Waiting"));
    assert!(
        worker
            .trustd_error()
            .is_some_and(|e| e.contains("connection refused")),
        "{:?}",
        worker.trustd_error()
    );
    apply(
        &lab.nodes()[0],
        &cluster.machine_config("cp1", "controlplane", &cp_ip),
    )
    .await;
    until(&lab, "worker running", || {
        worker.state() == NodeState::Running
    })
    .await;
    assert!(worker.has_trustd_certificate());
    assert_eq!(lab.trustd_signed(), 1);
    // Its apid serves mutual TLS with the OS CA's certificate: the admin client
    // (which verifies the server against the OS CA) gets through.
    let admin = cluster.credentials(&["os:admin"]);
    let v = mtls(&worker.ip().to_string(), admin)
        .version()
        .await
        .unwrap();
    assert!(v.tag.starts_with("v1.13"), "{v:?}");
    assert!(
        worker.os_ca().is_none(),
        "a worker's config carries no CA key"
    );
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_as_trustd_refuses_it() {
    let lab = common::lab(61, 2, 1, "v1.13.9").await;
    let cluster = TestCluster::new("token");
    let cp_ip = lab.nodes()[0].ip().to_string();
    apply(
        &lab.nodes()[0],
        &cluster.machine_config("cp1", "controlplane", &cp_ip),
    )
    .await;
    let cp = lab.nodes()[0].clone();
    until(&lab, "control plane running", || {
        cp.state() == NodeState::Running
    })
    .await;
    let worker = lab.nodes()[1].clone();
    let bad = cluster
        .0
        .machine_config_with_token("w1", "worker", &cp_ip, "wrong0.0123456789abcdef")
        .unwrap();
    apply(&worker, &bad).await;
    until(&lab, "trustd refusal", || {
        worker
            .trustd_error()
            .is_some_and(|e| e.contains("Unauthenticated"))
    })
    .await;
    assert_eq!(
        worker.trustd_error().as_deref(),
        Some(
            "failed to sign API server CSR: rpc error: code = Unauthenticated desc = invalid token"
        )
    );
    assert_eq!(worker.state(), NodeState::Booting);
    assert_eq!(lab.trustd_signed(), 0);
    // No certificate, no apid: nothing listens on the worker's API port.
    let refused = tokio::net::TcpStream::connect(worker.addr()).await;
    assert!(
        refused.is_err(),
        "apid must not listen without a certificate"
    );

    // trustd itself, called directly: no token, a wrong one.
    let ca_pem = cp.os_ca().unwrap().pair.cert_pem;
    let call = |token: Option<&'static str>| {
        let cp_ip = cp_ip.clone();
        let ca_pem = ca_pem.clone();
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
                .domain_name(cp_ip.clone());
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{cp_ip}:50001"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut req =
                tonic::Request::new(endsys_bootstrap::talos::api::security::CertificateRequest {
                    csr: b"x".to_vec(),
                });
            if let Some(t) = token {
                req.metadata_mut().insert("token", t.parse().unwrap());
            }
            SecurityServiceClient::new(ch)
                .certificate(req)
                .await
                .unwrap_err()
        }
    };
    let missing = call(None).await;
    assert_eq!(
        (missing.code(), missing.message()),
        (tonic::Code::Unauthenticated, "missing token")
    );
    let wrong = call(Some("nope")).await;
    assert_eq!(
        (wrong.code(), wrong.message()),
        (tonic::Code::Unauthenticated, "invalid token")
    );
    let garbage = call(Some(common_token())).await;
    assert_eq!(
        (garbage.code(), garbage.message()),
        (tonic::Code::InvalidArgument, "failed to decode CSR")
    );
    lab.shutdown().await;
}

fn common_token() -> &'static str {
    endsys_lab::identity::LAB_TOKEN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_unreachable_control_planes_stays_booting() {
    let lab = common::lab(62, 2, 1, "v1.13.9").await;
    let cluster = TestCluster::new("alone");
    let cp_ip = lab.nodes()[0].ip().to_string();
    apply(
        &lab.nodes()[0],
        &cluster.machine_config("cp1", "controlplane", &cp_ip),
    )
    .await;
    let worker = lab.nodes()[1].clone();
    apply(&worker, &cluster.machine_config("w1", "worker", &cp_ip)).await;
    until(&lab, "worker running", || {
        worker.state() == NodeState::Running
    })
    .await;
    // The control plane goes away; the worker reboots and asks again.
    lab.nodes()[0].power_off().await;
    worker.power_off().await;
    worker.power_on().await;
    until(&lab, "worker refused by the dead endpoint", || {
        worker
            .trustd_error()
            .is_some_and(|e| e.contains("connection refused"))
    })
    .await;
    assert_eq!(worker.state(), NodeState::Booting);
    assert_eq!(worker.service_state("apid").as_deref(), Some("Waiting"));
    assert!(!worker.has_trustd_certificate());
    // The control plane returns: the worker gets a fresh certificate.
    lab.nodes()[0].power_on().await;
    until(&lab, "worker running again", || {
        worker.state() == NodeState::Running
    })
    .await;
    assert_eq!(lab.trustd_signed(), 2);
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_join_with_the_bootstrap_token_only() {
    let lab = common::lab(69, 3, 1, "v1.13.9").await;
    let cluster = TestCluster::new("kubelet");
    let cp_ip = lab.nodes()[0].ip().to_string();
    apply(
        &lab.nodes()[0],
        &cluster.machine_config("cp1", "controlplane", &cp_ip),
    )
    .await;
    apply(
        &lab.nodes()[1],
        &cluster.machine_config("w1", "worker", &cp_ip),
    )
    .await;
    // w2 carries another bootstrap token (cluster.token): trustd still signs
    // (the machine token is right), but the API server refuses its kubelet.
    let other = cluster.machine_config("w2", "worker", &cp_ip).replacen(
        "cluster:\n",
        "cluster:\n  token: zzzzzz.0123456789abcdef\n",
        1,
    );
    apply(&lab.nodes()[2], &other).await;
    until(&lab, "all running", || {
        lab.nodes().iter().all(|n| n.state() == NodeState::Running)
    })
    .await;
    mtls(&cp_ip, cluster.credentials(&["os:admin"]))
        .bootstrap(false, false)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, lab.kube().wait_up())
        .await
        .expect("kube-apiserver up");
    // Nodes register in one pass of the simulated kubelets; wait for it on the
    // API's own data (bounded, short pauses between looks).
    let kube = lab.kube();
    tokio::time::timeout(DEADLINE, async {
        while kube.get("Node", None, "cp1").is_none() || kube.get("Node", None, "w1").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("cp1 and w1 registered");
    let w1 = kube.get("Node", None, "w1").unwrap();
    // NotReady until a CNI rolls out.
    let ready = w1
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    assert_eq!(ready, Some(serde_json::json!("False")), "{w1}");
    assert!(
        kube.get("Node", None, "w2").is_none(),
        "w2 registered with a wrong bootstrap token"
    );
    lab.shutdown().await;
}
