//! `diff` end to end against a lab cluster brought up by the real `up`: exit 0
//! when every node runs its rendered config, 2 with the changed fields and
//! Talos's verdict once the definition changes (live sysctl, reboot env), JSON
//! one object per node and document, and no secret of either bundle anywhere
//! in the output; `status` with one drift line per node. Subnets
//! 127.0.47.0/24 and 127.0.48.0/24.

#[path = "common/day2cfg.rs"]
#[allow(dead_code)]
mod day2cfg;
#[path = "common/fixture.rs"]
mod fixture;

use std::time::Duration;

use day2cfg::{json_lines, text, up_cluster};
use endsys_bootstrap::machineconfig::SecretsBundle;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exit_codes_0_and_2() {
    tokio::time::timeout(DEADLINE, async {
        let env = up_cluster(47, 3, 3, 0.0).await;
        let o = env.run(&["diff"]).await;
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
        assert_eq!(
            out.matches(": unchanged: matches the definition").count(),
            3,
            "{out}"
        );

        // A sysctl: live on every node, the field shown.
        env.set_patch("machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"");
        let o = env.run(&["diff"]).await;
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{out}\n{}", text(&o.stderr));
        assert_eq!(
            out.matches(": live: differs; applies live").count(),
            3,
            "{out}"
        );
        assert!(out.contains("[Talos dry run: NO_REBOOT]"), "{out}");
        assert!(out.contains("+++ cp1 rendered v1alpha1"), "{out}");
        assert!(
            out.contains("+  sysctls:") && out.contains("net.core.somaxconn"),
            "{out}"
        );
        assert!(
            text(&o.stderr).contains("differs from the definition"),
            "{}",
            text(&o.stderr)
        );

        // One node only, JSON: one object per document, then the node's verdict.
        let o = env.run(&["--output", "json", "diff", "cp2"]).await;
        assert_eq!(o.status.code(), Some(2));
        let lines = json_lines(&o);
        let docs: Vec<_> = lines.iter().filter(|v| v["event"] == "diff").collect();
        assert!(docs.len() >= 2, "{lines:?}");
        assert!(docs.iter().all(|v| v["node"] == "cp2"));
        let v1 = docs.iter().find(|v| v["document"] == "v1alpha1").unwrap();
        assert_eq!(v1["status"], "changed");
        assert_eq!(v1["fields"][0], ".machine.sysctls");
        assert!(docs.iter().any(|v| v["status"] == "same"), "{docs:?}");
        let drift = lines.iter().find(|v| v["event"] == "drift").unwrap();
        assert_eq!(drift["verdict"]["verdict"], "live", "{drift}");
        assert_eq!(drift["talos_mode"], "NO_REBOOT");
        assert_eq!(lines.last().unwrap()["event"], "error");
        assert_eq!(lines.last().unwrap()["exit_code"], 2);

        // .machine.env: Talos 1.13 needs a reboot, and says why.
        env.set_patch("machine:\n  env:\n    HTTPS_PROXY: http://127.0.0.1:3128");
        let o = env.run(&["diff", "cp1"]).await;
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{out}");
        assert!(
            out.contains("cp1 (127.0.47.11): reboot: differs; needs a reboot (.machine.env)"),
            "{out}"
        );
        assert!(out.contains("[Talos dry run: REBOOT]"), "{out}");
        assert!(
            out.contains("Talos: this config change can't be applied in immediate mode"),
            "{out}"
        );

        // status: one drift line per node next to the layers.
        tokio::time::timeout(Duration::from_secs(30), env.lab.kube().wait_up())
            .await
            .expect("lab kube-apiserver up");
        let o = env.run(&["status"]).await;
        let out = text(&o.stdout);
        assert!(
            out.contains("drift (running config against the definition"),
            "{out}\n{}",
            text(&o.stderr)
        );
        assert!(
            out.contains("  cp1 (127.0.47.11): reboot: differs; needs a reboot (.machine.env)"),
            "{out}"
        );
        assert_eq!(out.matches(": reboot: differs").count(), 3, "{out}");
        let o = env.run(&["--output", "json", "status"]).await;
        let drift: Vec<_> = json_lines(&o)
            .into_iter()
            .filter(|v| v["event"] == "drift")
            .collect();
        assert_eq!(drift.len(), 3, "{}", text(&o.stdout));
        assert!(drift.iter().all(|v| v["verdict"] == "reboot"));

        // An unknown node is bad input.
        let o = env.run(&["diff", "nope"]).await;
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o.stderr).contains("not in the cluster definition"));
        env.lab.shutdown().await;
    })
    .await
    .expect("diff exit codes within the deadline");
}

/// Every secret value of a bundle (keys, tokens, encryption secrets, CA keys).
fn secrets_of(b: &SecretsBundle) -> Vec<(String, String)> {
    let mut out = vec![
        ("cluster.id".to_string(), b.cluster.id.clone()),
        ("cluster.secret".into(), b.cluster.secret.clone()),
        (
            "secrets.bootstraptoken".into(),
            b.secrets.bootstraptoken.clone(),
        ),
        ("trustdinfo.token".into(), b.trustdinfo.token.clone()),
        ("certs.etcd.key".into(), b.certs.etcd.key.clone()),
        ("certs.k8s.key".into(), b.certs.k8s.key.clone()),
        (
            "certs.k8saggregator.key".into(),
            b.certs.k8saggregator.key.clone(),
        ),
        (
            "certs.k8sserviceaccount.key".into(),
            b.certs.k8sserviceaccount.key.clone(),
        ),
        ("certs.os.key".into(), b.certs.os.key.clone()),
    ];
    if let Some(s) = &b.secrets.aescbcencryptionsecret {
        out.push(("secrets.aescbcencryptionsecret".into(), s.clone()));
    }
    if let Some(s) = &b.secrets.secretboxencryptionsecret {
        out.push(("secrets.secretboxencryptionsecret".into(), s.clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_redacts_every_bundle_secret() {
    tokio::time::timeout(DEADLINE, async {
        let mut env = up_cluster(48, 2, 1, 0.0).await;
        let a = SecretsBundle::from_yaml(
            &std::fs::read_to_string(&env.secrets).unwrap(),
            &env.secrets,
        )
        .unwrap();
        // Bundle B: every secret new but the OS CA (the admin credentials must
        // still reach the nodes), so every other secret line differs.
        let mut b = SecretsBundle::generate().unwrap();
        b.certs.os = a.certs.os.clone();
        // B uses aescbc where A uses secretbox: both kinds are checked.
        b.secrets.aescbcencryptionsecret =
            Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
        b.secrets.secretboxencryptionsecret = None;
        let b_path = env.dir.path().join("rotated.yaml");
        std::fs::write(&b_path, b.to_yaml()).unwrap();
        env.secrets = b_path;
        // A live change too, so the sysctl context lines are in the diff.
        env.set_patch("machine:\n  sysctls:\n    vm.max_map_count: \"262144\"");
        let mut outputs = Vec::new();
        for args in [&["diff"][..], &["--output", "json", "diff"][..]] {
            let o = env.run(args).await;
            assert_eq!(
                o.status.code(),
                Some(2),
                "{}\n{}",
                text(&o.stdout),
                text(&o.stderr)
            );
            outputs.push(format!("{}{}", text(&o.stdout), text(&o.stderr)));
        }
        let all = outputs.join("\n");
        assert!(all.contains("<redacted sha256:"), "{all}");
        assert!(
            all.contains("-  token: <redacted sha256:"),
            "machine.token shown as changed: {all}"
        );
        assert!(
            all.contains("Talos: this config change can't be applied"),
            "{all}"
        );
        for (what, secret) in secrets_of(&a).into_iter().chain(secrets_of(&b)) {
            assert!(
                !all.contains(&secret),
                "{what} ({secret}) is printed:\n{all}"
            );
            // Nor the PEM inside a base64 key.
            if let Ok(pem) =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &secret)
            {
                let pem = String::from_utf8_lossy(&pem).into_owned();
                for line in pem
                    .lines()
                    .filter(|l| l.len() > 20 && !l.starts_with("-----"))
                {
                    assert!(!all.contains(line), "{what}: a line of its PEM is printed");
                }
            }
        }
        env.lab.shutdown().await;
    })
    .await
    .expect("diff redaction within the deadline");
}
