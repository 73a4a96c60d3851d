//! Talos 1.14 end to end, against lab nodes that emulate 1.14 next to 1.13 ones:
//! the migrated endsys configs are accepted by a 1.14 node (and refused by a 1.13
//! one, which does not know the documents), an old field next to its document is
//! refused with Talos's text, `demo --talos-version v1.14.x` reaches all five
//! layers, and `up` brings up a mixed cluster (one 1.13 node, two 1.14 nodes)
//! choosing each node's contract by the Talos it runs, one request per node.
//! Subnets 127.0.117–121.

#[path = "common/fixture.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use endsys_bootstrap::demo::{lab_definition, run_demo, write_lab_files, DemoOptions};
use endsys_bootstrap::engine::talhelper::TalhelperSource;
use endsys_bootstrap::engine::{ClusterSource, Doctor, Emitter, Event, EventKind, Outcome, StepId};
use endsys_bootstrap::flows::up::up;
use endsys_bootstrap::machineconfig::migrate::migrate_all;
use endsys_bootstrap::machineconfig::*;
use endsys_bootstrap::talos::{ApplyMode, CallPolicy, TalosClient, TlsMode};
use endsys_lab::{Lab, LabOptions, NodeState};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The endsys definition with its patches migrated by `migrate --to v1.14`,
/// rendered under contract 1.14.
fn migrated_endsys() -> Vec<RenderedConfig> {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("machineconfigs"), dir.path());
    let env = dir.path().join("talenv.yaml");
    let text = std::fs::read_to_string(&env)
        .unwrap()
        .replace("talosVersion: v1.12.6", "talosVersion: v1.14.0");
    std::fs::write(&env, text).unwrap();
    let paths = DefinitionPaths::beside(&dir.path().join("talconfig.yaml"));
    let def = ClusterDefinition::load(&paths, Vars::new()).unwrap();
    let mut files: Vec<PatchSource> = Vec::new();
    for p in def.nodes.iter().flat_map(|n| &n.patches) {
        if !files.iter().any(|f| f.file == p.file) {
            let text = std::fs::read_to_string(&p.file).unwrap();
            files.push(PatchSource { text, ..p.clone() });
        }
    }
    for m in migrate_all(&files).unwrap() {
        std::fs::write(&m.file, &m.after).unwrap();
    }
    let def = ClusterDefinition::load(&paths, Vars::new()).unwrap();
    let p = repo_root().join(fixture::SECRETS);
    let secrets = SecretsBundle::from_yaml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    let r = render_all(&def, &secrets).unwrap();
    validate_all(&def, &r).unwrap();
    r
}

async fn dry_run(ip: &str, config: &[u8]) -> Result<(), String> {
    let c = TalosClient::connect(
        ip,
        TlsMode::Insecure { fingerprint: None },
        CallPolicy::default(),
    )
    .unwrap();
    c.apply_configuration(config, ApplyMode::Auto, true)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_endsys_configs_are_accepted_by_a_1_14_node_and_refused_by_1_13() {
    let configs = migrated_endsys();
    let lab14 = fixture::start_lab_of("v1.14.0", 117, 3, 3, 0.0).await;
    let lab13 = fixture::start_lab_of("v1.13.9", 118, 1, 1, 0.0).await;
    fixture::within_lab(&lab14, "dry-run applies", async {
        for (i, c) in configs.iter().enumerate() {
            let ip = format!("127.0.117.{}", 11 + i);
            dry_run(&ip, c.yaml.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{}: refused by a 1.14 node: {e}", c.hostname));
        }
        // 1.13 does not know the documents: its decoder stops at the first one.
        let e = dry_run("127.0.118.11", configs[0].yaml.as_bytes())
            .await
            .unwrap_err();
        assert!(
            e.contains("\"DiscoveryServiceConfig\" \"v1alpha1\": not registered"),
            "{e}"
        );
        // An old field next to its document, as a hand-edited config would have it.
        let bad = configs[0].yaml.replacen(
            "cluster:\n",
            "cluster:\n  apiServer:\n    extraArgs:\n      enable-aggregator-routing: \"true\"\n",
            1,
        );
        let e = dry_run("127.0.117.11", bad.as_bytes()).await.unwrap_err();
        assert!(
            e.contains(
                "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)"
            ),
            "{e}"
        );
    })
    .await;
    assert_eq!(
        lab14.apply_calls() + lab13.apply_calls(),
        0,
        "dry runs only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_talos_1_14_reaches_all_five_layers() {
    let o = DemoOptions {
        talos_version: "v1.14.0".into(),
        ..fixture::demo_options(119, 3)
    };
    let em = Emitter::new();
    let r = fixture::within("demo v1.14", run_demo(&o, &em)).await;
    let report = r.unwrap_or_else(|e| panic!("{}", e.explain()));
    let gitops = report
        .up
        .steps
        .iter()
        .find(|(s, _)| *s == StepId::Gitops)
        .map(|(_, o)| format!("{o:?}"))
        .unwrap_or_default();
    assert!(
        gitops.contains("all five layers Ready"),
        "the run reached all five layers: {:?}",
        report.up.steps
    );
    // The configs it applied were contract 1.14's.
    let rendered = std::fs::read_dir(report.state_dir.join("talos"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() == "talconfig.yaml");
    assert!(rendered);
    let talconfig = std::fs::read_to_string(report.state_dir.join("talos/talconfig.yaml")).unwrap();
    assert!(talconfig.contains("talosVersion: v1.14.0"), "{talconfig}");
}

fn apply_details(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepFinished {
                outcome: Outcome::Done { detail },
                ..
            } if e.step == StepId::Apply && e.node.is_some() => {
                Some((e.node.clone().unwrap_or_default(), detail.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_brings_up_a_mixed_1_13_and_1_14_cluster_choosing_per_node() {
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, 120, 11),
        port: 50000,
        talos_version: "v1.14.0".into(),
        node_versions: vec!["v1.13.9".into()],
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let def = lab_definition(&lab, 3, "mixed");
    let secrets_from = repo_root().join(fixture::SECRETS);
    let (talconfig, secrets) = write_lab_files(
        &dir.path().join("talos"),
        &def,
        "v1.14.0",
        Some(secrets_from.as_path()),
    )
    .unwrap();
    let mut src = TalhelperSource::new(&talconfig, &secrets);
    src.vars = Vars::default();
    let opts = fixture::up_options(
        &dir.path().join("state"),
        StepId::Kubeconfig,
        fixture::Deadlines {
            node: Duration::from_secs(30),
            reach: Duration::from_secs(10),
            retry_budget: Duration::from_secs(5),
        },
    );
    let em = Emitter::new();
    let events = fixture::collect_events(&em);
    let r = fixture::within_lab(
        &lab,
        "up on a mixed cluster",
        up(&src as &dyn ClusterSource, &opts, &em),
    )
    .await;
    drop(em);
    let events = events.await.expect("events");
    r.unwrap_or_else(|e| panic!("{}", e.explain()));
    for n in lab.nodes() {
        assert_eq!(n.state(), NodeState::Running, "{}", n.ip());
    }
    let details = apply_details(&events);
    assert_eq!(details.len(), 3, "{details:?}");
    let older: Vec<&(String, String)> = details
        .iter()
        .filter(|(_, d)| d.contains("under contract 1.13"))
        .collect();
    assert_eq!(
        older.len(),
        1,
        "only the 1.13 node gets contract 1.13: {details:?}"
    );
    assert_eq!(older[0].0, def.nodes[0].hostname);
    // One request per node: nothing asked apid to fan out.
    assert_eq!(lab.fanout_calls(), 0);
    assert_eq!(lab.bootstrap_calls(), 1);
}

/// The three commands of docs/talos-1.14.md, as an operator runs them, on a copy of
/// the endsys definition: the preview changes nothing, `--write` rewrites the
/// patches and talosVersion, `validate` passes.
#[test]
fn migration_in_three_commands() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("machineconfigs"), dir.path());
    let bin = env!("CARGO_BIN_EXE_endsys-bootstrap");
    let secrets = repo_root().join(fixture::SECRETS);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(dir.path().join("talconfig.yaml"))
            .arg("--secrets")
            .arg(&secrets)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let cluster = dir.path().join("patches/controller/cluster.yaml");
    let before = std::fs::read_to_string(&cluster).unwrap();

    // talosVersion already at 1.14 (the old patches no longer render there): the
    // preview still works, against the cluster the patches describe under 1.13.
    let env = dir.path().join("talenv.yaml");
    let original_env = std::fs::read_to_string(&env).unwrap();
    std::fs::write(&env, original_env.replace("v1.12.6", "v1.14.0")).unwrap();
    let (code, text) = run(&["migrate", "--to", "v1.14"]);
    assert_eq!(code, Some(0), "{text}");
    std::fs::write(&env, &original_env).unwrap();

    let (code, text) = run(&["migrate", "--to", "v1.14"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("-  apiServer:"), "a diff: {text}");
    assert!(text.contains("+kind: KubeAPIServerConfig"), "{text}");
    assert!(text.contains("7 of 7 patch files would change"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&cluster).unwrap(),
        before,
        "preview writes nothing"
    );

    let (code, text) = run(&["migrate", "--to", "v1.14.0", "--write"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("talosVersion set to v1.14.0"), "{text}");
    let after = std::fs::read_to_string(&cluster).unwrap();
    assert!(after.starts_with("cluster:\n  etcd:\n"), "{after}");
    let env = std::fs::read_to_string(dir.path().join("talenv.yaml")).unwrap();
    assert!(env.contains("talosVersion: v1.14.0"), "{env}");
    assert!(
        env.starts_with("# Versions the endsys cluster runs"),
        "comments kept: {env}"
    );

    let (code, text) = run(&["validate"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("valid"), "{text}");
    // Migrating again changes nothing.
    let (code, text) = run(&["migrate", "--to", "v1.14"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0 of 7 patch files"), "{text}");
}

/// Waits for `Running`, returning every state the node went through.
async fn states_until_running(
    mut rx: tokio::sync::broadcast::Receiver<NodeState>,
) -> Vec<NodeState> {
    let mut seen = vec![];
    loop {
        match rx.recv().await {
            Ok(s) => {
                seen.push(s);
                if s == NodeState::Running {
                    return seen;
                }
            }
            Err(e) => panic!("transitions ended: {e}"),
        }
    }
}

/// 1.14 maintenance: installing is opt-in (siderolabs/talos#13388). A config with
/// no UnattendedInstallConfig runs without an install; one with it installs to the
/// disk its CEL selector picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_14_node_installs_only_when_the_config_asks() {
    let lab = fixture::start_lab_of("v1.14.0", 121, 2, 2, 0.0).await;
    let dir = tempfile::tempdir().unwrap();
    let def = lab_definition(&lab, 2, "optin");
    let secrets_from = repo_root().join(fixture::SECRETS);
    let (talconfig, secrets) =
        write_lab_files(dir.path(), &def, "v1.14.0", Some(secrets_from.as_path())).unwrap();
    let mut src = TalhelperSource::new(&talconfig, &secrets);
    src.vars = Vars::default();
    let rendered = src.render().unwrap();
    let with = rendered.configs[&def.nodes[1].hostname].clone();
    let with = String::from_utf8(with).unwrap();
    assert!(with.contains("kind: UnattendedInstallConfig"));
    let without: String = with
        .split("---\n")
        .filter(|d| !d.contains("kind: UnattendedInstallConfig"))
        .collect::<Vec<_>>()
        .join("---\n");
    let without = without.replace(
        &format!("hostname: {}", def.nodes[1].hostname),
        &format!("hostname: {}", def.nodes[0].hostname),
    );
    fixture::within_lab(&lab, "opt-in install", async {
        let nodes = lab.nodes();
        // Subscribed before the applies, so no transition is missed.
        let (a, b) = (
            states_until_running(nodes[0].transitions()),
            states_until_running(nodes[1].transitions()),
        );
        for (i, cfg) in [(0, &without), (1, &with)] {
            let c = TalosClient::connect(
                &nodes[i].ip().to_string(),
                TlsMode::Insecure { fingerprint: None },
                CallPolicy::default(),
            )
            .unwrap();
            c.apply_configuration(cfg.as_bytes(), ApplyMode::Auto, false)
                .await
                .unwrap();
        }
        let (a, b) = tokio::join!(a, b);
        assert!(!a.contains(&NodeState::Installing), "{a:?}");
        assert!(b.contains(&NodeState::Installing), "{b:?}");
    })
    .await;
}

/// A node on 1.13 cannot be given a definition whose patches use 1.14-only
/// documents: `up` names the node, why, and what to do, before sending it anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_13_node_and_1_14_only_patches_are_refused_with_the_way_out() {
    let lab = Lab::start(LabOptions {
        nodes: 1,
        controlplanes: 1,
        first_ip: std::net::Ipv4Addr::new(127, 0, 122, 11),
        port: 50000,
        talos_version: "v1.13.9".into(),
        time_scale: 0.0,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let def = lab_definition(&lab, 1, "newdocs");
    let secrets_from = repo_root().join(fixture::SECRETS);
    let (talconfig, secrets) = write_lab_files(
        &dir.path().join("talos"),
        &def,
        "v1.14.0",
        Some(secrets_from.as_path()),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("talos/kubelet.yaml"),
        "apiVersion: v1alpha1\nkind: KubeletConfig\nconfig:\n  serializeImagePulls: false\n",
    )
    .unwrap();
    let mut t = std::fs::read_to_string(&talconfig).unwrap();
    t.push_str("patches:\n  - \"@./kubelet.yaml\"\n");
    std::fs::write(&talconfig, t).unwrap();
    let mut src = TalhelperSource::new(&talconfig, &secrets);
    src.vars = Vars::default();
    let opts = fixture::up_options(
        &dir.path().join("state"),
        StepId::Kubeconfig,
        fixture::Deadlines {
            node: Duration::from_secs(20),
            reach: Duration::from_secs(10),
            retry_budget: Duration::from_secs(5),
        },
    );
    let em = Emitter::new();
    let r = fixture::within_lab(
        &lab,
        "up refused",
        up(&src as &dyn ClusterSource, &opts, &em),
    )
    .await;
    let e = r
        .expect_err("a 1.13 node cannot read the 1.14 documents")
        .explain();
    assert!(
        e.contains("runs Talos 1.13, which cannot read the contract 1.14 documents"),
        "{e}"
    );
    assert!(e.contains("boot the node from a Talos 1.14 image"), "{e}");
    assert_eq!(lab.apply_calls(), 0, "nothing was sent");
}
