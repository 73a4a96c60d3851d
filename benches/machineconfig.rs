//! Targets (release): render the 3-node endsys cluster from existing secrets < 50 ms,
//! a 100-node cluster < 1 s, `gen secrets` (RSA-4096 included) < 2 s.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use endsys_bootstrap::machineconfig::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn secrets() -> SecretsBundle {
    let p = root().join("tests/fixtures/machineconfig/secrets.yaml");
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    SecretsBundle::from_yaml(&text, &p).expect("fixture bundle")
}

fn hundred_nodes() -> String {
    let mut t = String::from("clusterName: big\ntalosVersion: v1.13.9\nkubernetesVersion: v1.36.3\nendpoint: https://10.10.1.10:6443\nnodes:\n");
    for i in 0..100 {
        let cp = i < 3;
        t.push_str(&format!(
            "  - hostname: n{i}\n    ipAddress: 10.10.{}.{}\n    controlPlane: {cp}\n    installDisk: /dev/sda\n    talosImageURL: factory.talos.dev/installer/x\n    networkInterfaces:\n      - deviceSelector: {{hardwareAddr: \"aa:bb:cc:00:00:{:02x}\"}}\n        addresses: [10.10.{}.{}/16]\n        routes: [{{network: 0.0.0.0/0, gateway: 10.10.0.254}}]\n",
            1 + i / 200, 10 + i % 200, i, 1 + i / 200, 10 + i % 200
        ));
    }
    t.push_str("patches:\n  - |\n    machine:\n      sysctls:\n        vm.max_map_count: 262144\n");
    t
}

fn bench(c: &mut Criterion) {
    let s = secrets();
    let paths = DefinitionPaths::beside(&root().join("machineconfigs/talconfig.yaml"));
    c.bench_function("render endsys 3 nodes (load + render + validate)", |b| {
        b.iter(|| {
            let def = ClusterDefinition::load(&paths, Vars::new()).expect("definition");
            let r = render_all(&def, &s).expect("render");
            validate_all(&def, &r).expect("valid");
        })
    });
    let text = hundred_nodes();
    c.bench_function("render 100 nodes (load + render + validate)", |b| {
        b.iter(|| {
            let def = ClusterDefinition::from_text(
                &text,
                Path::new("/big/talconfig.yaml"),
                &Vars::new(),
                &MemPatchReader::default(),
            )
            .expect("definition");
            let r = render_all(&def, &s).expect("render");
            validate_all(&def, &r).expect("valid");
        })
    });
    let mut g = c.benchmark_group("secrets");
    g.sample_size(10);
    g.bench_function("gen secrets (RSA-4096)", |b| {
        b.iter(|| SecretsBundle::generate().expect("bundle"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
