//! Talos API latency over real TCP + TLS on loopback against a simulated node:
//! a Version round trip on an open mTLS connection, and a fresh connect + handshake.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use endsys_bootstrap::talos::connect::handshake;
use endsys_bootstrap::talos::resources::MachineStage;
use endsys_bootstrap::talos::wait::wait_for_status;
use endsys_bootstrap::talos::{ApplyMode, CallPolicy, Dial, TalosClient, TlsMode};
use endsys_lab::identity::LabIdentity;
use endsys_lab::{Lab, LabOptions};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (lab, creds) = rt.block_on(async {
        let lab = Lab::start(LabOptions {
            nodes: 1,
            controlplanes: 1,
            first_ip: std::net::Ipv4Addr::new(127, 0, 200, 11),
            time_scale: 0.0,
            ..LabOptions::default()
        })
        .await
        .expect("lab");
        let id = LabIdentity::generate("bench").expect("identity");
        let ip = lab.nodes()[0].ip().to_string();
        let cfg = id
            .machine_config("bench1", "controlplane", &ip)
            .expect("config");
        let insecure = TalosClient::connect(
            &ip,
            TlsMode::Insecure { fingerprint: None },
            CallPolicy::default(),
        )
        .expect("client");
        insecure
            .apply_configuration(cfg.as_bytes(), ApplyMode::Auto, false)
            .await
            .expect("apply");
        let creds = id.credentials(&["os:admin"]).expect("creds");
        let admin =
            TalosClient::connect(&ip, TlsMode::Mutual(creds.clone()), CallPolicy::default())
                .expect("client");
        wait_for_status(
            &admin,
            "running",
            Duration::from_secs(30),
            |s| s.stage == MachineStage::Running,
            |_| {},
        )
        .await
        .expect("node running");
        (lab, creds)
    });
    let ip = lab.nodes()[0].ip().to_string();
    // The lazy channel spawns its connection task on the current runtime.
    let _guard = rt.enter();
    let admin = TalosClient::connect(&ip, TlsMode::Mutual(creds.clone()), CallPolicy::default())
        .expect("client");
    rt.block_on(admin.version()).expect("warm-up");

    c.bench_function("version_mtls_open_connection", |b| {
        b.to_async(&rt)
            .iter(|| async { admin.version().await.expect("version") })
    });
    let dial = Dial::parse(&ip).expect("dial");
    let mutual = TlsMode::Mutual(creds.clone());
    c.bench_function("connect_and_mtls_handshake", |b| {
        b.to_async(&rt).iter(|| async {
            handshake(&dial, &mutual, Duration::from_secs(5))
                .await
                .expect("handshake")
        })
    });
    let insecure = TlsMode::Insecure { fingerprint: None };
    c.bench_function("connect_and_maintenance_style_handshake", |b| {
        b.to_async(&rt).iter(|| async {
            // Against a configured node this is the mode probe's first step.
            handshake(&dial, &insecure, Duration::from_secs(5))
                .await
                .expect("handshake")
        })
    });
    drop(lab);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
