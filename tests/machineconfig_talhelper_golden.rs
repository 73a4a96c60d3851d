//! Issue 15, whole-definition checks: every talhelper field at once, byte-stable
//! golden files per contract, and talhelper's own test expectations.

use endsys_bootstrap::machineconfig::*;
use serde_yaml_ng::Value;

mod machineconfig_helpers;
use machineconfig_helpers::*;

/// Every talhelper field at once (fixture: talhelper/every-field, each field cited).
#[test]
fn every_talhelper_field_at_once() {
    let dir = root().join("talhelper/every-field");
    let def = ClusterDefinition::load(
        &DefinitionPaths::beside(&dir.join("talconfig.yaml")),
        Vars::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = render(&def);
    let w = validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        w.iter().all(|f| !f.message.contains("unknown key")),
        "{w:?}"
    );
    let cp = &r[0];
    assert_eq!(cp.file_name, "every-cp1.yaml");
    let m = &cp.documents[0];
    let id = "104c23dfe7c5bfeff6a4cc7e166d8b3bba0f371760592c7677c90c822bb1d109";
    assert_eq!(
        m["machine"]["install"]["image"],
        Value::String(format!("factory.talos.dev/metal-installer/{id}:v1.13.0"))
    );
    assert_eq!(m["machine"]["install"]["diskSelector"], y("{serial: S1}"));
    assert_eq!(
        m["machine"]["kernel"]["modules"],
        y("[{name: br_netfilter, parameters: [nf_conntrack_max=131072]}]")
    );
    assert_eq!(
        m["machine"]["files"][0]["content"],
        y("\"Welcome to every\\n\"")
    );
    assert_eq!(m["machine"]["files"][1]["content"], y("literal text"));
    assert_eq!(
        m["machine"]["files"][1]["permissions"],
        y("384"),
        "0600 is octal for Go"
    );
    assert_eq!(m["machine"]["nodeLabels"]["secureboot"], y("\"false\""));
    assert_eq!(
        m["machine"]["nodeTaints"],
        y("{example.org/dedicated: 'control-plane:NoSchedule'}")
    );
    assert_eq!(
        m["machine"]["certSANs"],
        y("[192.0.2.10, cp1.example.org, cp.example.org]")
    );
    assert_eq!(
        m["machine"]["sysctls"],
        y("{net.core.somaxconn: \"65535\"}")
    );
    assert_eq!(
        m["machine"]["logging"]["destinations"][0]["endpoint"],
        y("udp://192.0.2.99:5514/")
    );
    assert_eq!(
        m["cluster"]["network"]["cni"],
        y("{name: custom, urls: [https://example.org/cilium.yaml]}")
    );
    assert_eq!(
        m["cluster"]["inlineManifests"][0]["contents"],
        y("\"apiVersion: v1\\nkind: Namespace\\nmetadata:\\n  name: from-talenv\\n\"")
    );
    assert_eq!(
        m["cluster"]["apiServer"]["extraArgs"]["feature-gates"],
        y("SomeGate=true")
    );
    assert_eq!(
        m["cluster"]["apiServer"]["extraArgs"]["service-cluster-ip-range"],
        y("10.96.0.0/12")
    );
    assert_eq!(m["cluster"]["allowSchedulingOnControlPlanes"], y("true"));
    let want_kinds = [
        "v1alpha1",
        "HostnameConfig",
        "ResolverConfig",
        "NetworkDefaultActionConfig",
        "NetworkRuleConfig",
        "ExtensionServiceConfig",
        "VolumeConfig",
        "UserVolumeConfig",
        "LinkAliasConfig",
        "LinkAliasConfig",
        "LinkAliasConfig",
        "BondConfig",
        "DHCPv4Config",
        "DHCPv6Config",
        "Layer2VIPConfig",
        "VLANConfig",
        "WireguardConfig",
        "BridgeConfig",
        "KmsgLogConfig",
    ];
    assert_eq!(kinds(cp), want_kinds);
    assert_eq!(
        find(cp, "ResolverConfig", "")["searchDomains"],
        y("{disableDefault: true}")
    );
    assert_eq!(
        find(cp, "ExtensionServiceConfig", "tailscale")["environment"],
        y("[TS_AUTHKEY=tskey-example]")
    );
    assert_eq!(
        cp.documents.last().unwrap()["name"],
        y("remote-controlplane")
    );
    assert!(!cp.yaml.contains("{{"));
    let w1 = &r[1].documents[0]["machine"];
    assert_eq!(
        w1["install"]["image"],
        y("factory.talos.dev/metal-installer/abc:v1.13.0")
    );
    assert!(r[1].documents[0]["cluster"]["apiServer"].is_null());
}

/// talhelper's own expectations for its extra documents
/// (pkg/talos/testdata/node1_*.yaml and node2_*.yaml @v3.1.16), at indent 2.
#[test]
fn firewall_and_user_volume_documents_match_talhelper_testdata() {
    let def = def_in(
        &format!("{HEAD}nodes:\n{}", cp(concat!(
            "    ingressFirewall:\n      defaultAction: accept\n      rules:\n",
            "        - name: kubelet-ingress\n          portSelector:\n            ports:\n              - 10250\n            protocol: tcp\n",
            "          ingress:\n            - subnet: 172.20.0.0/24\n              except: 172.20.0.1/32\n",
            "    userVolumes:\n      - name: ceph-data2\n        provisioning:\n          diskSelector:\n            match: disk.transport == \"nvme\"\n          maxSize: 50GiB\n        filesystem:\n          type: xfs\n",
        ))),
        &[],
    );
    let r = render(&def);
    let want = concat!(
        "---\napiVersion: v1alpha1\nkind: NetworkDefaultActionConfig\ningress: accept\n",
        "---\napiVersion: v1alpha1\nkind: NetworkRuleConfig\nname: kubelet-ingress\nportSelector:\n  ports:\n    - 10250\n  protocol: tcp\ningress:\n  - subnet: 172.20.0.0/24\n    except: 172.20.0.1/32\n",
        "---\napiVersion: v1alpha1\nkind: UserVolumeConfig\nname: ceph-data2\nprovisioning:\n  diskSelector:\n    match: disk.transport == \"nvme\"\n  maxSize: 50GiB\nfilesystem:\n  type: xfs\n",
    );
    assert!(r[0].yaml.ends_with(want), "{}", r[0].yaml);
    validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, text: &str) {
    let p = root().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, text).unwrap();
    }
    let want =
        std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("missing golden {}", p.display()));
    assert_eq!(text, want, "{name} differs from its golden file");
}

/// Byte-stable output per contract: the every-field definition at 1.13 and the same
/// nodes at 1.11 (legacy network path), read by eye against talhelper's
/// pkg/talos/testdata/node*_expected.yaml@v3.1.16 shapes.
#[test]
fn talhelper_outputs_match_golden_files() {
    let dir = root().join("talhelper/every-field");
    let def = ClusterDefinition::load(
        &DefinitionPaths::beside(&dir.join("talconfig.yaml")),
        Vars::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for r in render(&def) {
        golden(&format!("c113-{}", r.file_name), &r.yaml);
    }
    // The same nodes at contract 1.12 (`machine.network: {}` still emitted) and 1.11
    // (legacy network path).
    for (prefix, talos, k8s) in [
        ("c112", "v1.12.6", "v1.35.0"),
        ("c111", "v1.11.5", "v1.34.1"),
    ] {
        let text = std::fs::read_to_string(dir.join("talconfig.yaml"))
            .unwrap()
            .replace("talosVersion: v1.13.0", &format!("talosVersion: {talos}"))
            .replace(
                "kubernetesVersion: v1.36.0",
                &format!("kubernetesVersion: {k8s}"),
            );
        let mut vars = Vars::new();
        vars.load_talenv(
            &std::fs::read_to_string(dir.join("talenv.yaml")).unwrap(),
            &dir.join("talenv.yaml"),
        )
        .unwrap();
        let def =
            ClusterDefinition::from_text(&text, &dir.join("talconfig.yaml"), &vars, &FsPatchReader)
                .unwrap_or_else(|e| panic!("{e}"));
        let r = render(&def);
        for c in &r {
            golden(&format!("{prefix}-{}", c.file_name), &c.yaml);
        }
        validate_all(&def, &r).unwrap_or_else(|e| panic!("{prefix}: {e}"));
    }
}

/// The operator sees load warnings where `validate` and `gen config` print every
/// finding: a `warning` event in NDJSON (and a `warning:` line on stderr).
#[test]
fn dropped_key_warnings_reach_the_operator() {
    let cfg = root().join("warn/02-unknown-node-field/talconfig.yaml");
    let secrets = root().join("secrets.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_endsys-bootstrap"))
        .args(["-o", "json", "validate", "--config"])
        .arg(&cfg)
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let warning = all
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "warning")
        .unwrap_or_else(|| panic!("no warning event in {all}"));
    assert!(
        warning["node"]
            .as_str()
            .unwrap()
            .ends_with("talconfig.yaml:11"),
        "{warning}"
    );
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("nodes[].hostnmae: unknown key"),
        "{warning}"
    );
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_endsys-bootstrap"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&human.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("talconfig.yaml:11: nodes[].hostnmae"),
        "{stderr}"
    );
}
