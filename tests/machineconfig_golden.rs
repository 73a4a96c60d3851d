//! Golden tests: the fixed secrets bundle plus the endsys definition (and a second
//! definition with workers) render byte-stable configs with the expected content.

use std::path::{Path, PathBuf};

use endsys_bootstrap::machineconfig::*;
use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn secrets() -> SecretsBundle {
    let p = root().join("tests/fixtures/machineconfig/secrets.yaml");
    SecretsBundle::from_yaml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap()
}

fn load(dir: &str) -> ClusterDefinition {
    let paths = DefinitionPaths::beside(&root().join(dir).join("talconfig.yaml"));
    ClusterDefinition::load(&paths, Vars::new()).unwrap()
}

/// Compares with the golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, text: &str) {
    let p = root()
        .join("tests/fixtures/machineconfig/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, text).unwrap();
    }
    let want =
        std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("missing golden {}", p.display()));
    assert_eq!(text, want, "{name} differs from its golden file");
}

fn docs(c: &RenderedConfig) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&c.yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn y(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

#[test]
fn endsys_configs_match_golden_files_and_are_stable() {
    let def = load("machineconfigs");
    let s = secrets();
    let a = render_all(&def, &s).unwrap();
    let b = render_all(&def, &s).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.yaml, y.yaml, "rendering is not deterministic");
        golden(&x.file_name, &x.yaml);
    }
    let names: Vec<_> = a.iter().map(|c| c.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kubernetes-kube1.yaml",
            "kubernetes-kube2.yaml",
            "kubernetes-kube3.yaml"
        ]
    );
    let warnings = validate_all(&def, &a).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn kube1_matches_the_reference_field_by_field() {
    let def = load("machineconfigs");
    let s = secrets();
    let kube1 = render_all(&def, &s).unwrap().remove(0);
    let d = docs(&kube1);
    assert_eq!(d.len(), 5);
    let m = &d[0];
    assert_eq!(m["version"], y("v1alpha1"));
    assert_eq!(m["debug"], y("false"));
    assert_eq!(m["persist"], y("true"));
    let mach = &m["machine"];
    assert_eq!(mach["type"], y("controlplane"));
    assert_eq!(mach["token"].as_str().unwrap(), s.trustdinfo.token);
    assert_eq!(mach["ca"]["crt"].as_str().unwrap(), s.certs.os.crt);
    assert_eq!(mach["ca"]["key"].as_str().unwrap(), s.certs.os.key);
    assert_eq!(mach["certSANs"], y("[127.0.0.1, 10.127.0.40]"));
    assert_eq!(mach["kubelet"], y("{image: 'ghcr.io/siderolabs/kubelet:v1.35.3', extraConfig: {serializeImagePulls: false}, defaultRuntimeSeccompProfileEnabled: true, nodeIP: {validSubnets: [10.127.0.0/24]}, disableManifestsDirectory: true}"));
    assert_eq!(
        mach["network"],
        y("{nameservers: [10.127.0.3, 10.127.0.1], disableSearchDomain: true}")
    );
    assert_eq!(mach["install"], y("{diskSelector: {serial: 24374AFF58D1}, image: 'factory.talos.dev/installer/65cf8364cd0de4cf7b851dc7067a2db83d0ba04f11d8635c6cd3334be6ffb825:v1.12.6', wipe: false, grubUseUKICmdline: true}"));
    assert_eq!(mach["files"], y("- content: \"[plugins.\\\"io.containerd.cri.v1.images\\\"]\\n  discard_unpacked_layers = false\\n[plugins.\\\"io.containerd.cri.v1.runtime\\\"]\\n  device_ownership_from_security_context = true\\n\"\n  permissions: 0\n  path: /etc/cri/conf.d/20-customization.part\n  op: create\n"));
    assert_eq!(
        mach["time"],
        y("{disabled: false, servers: [162.159.200.1, 162.159.200.123]}")
    );
    assert_eq!(mach["sysctls"], y("{fs.inotify.max_user_instances: '8192', fs.inotify.max_user_watches: '1048576', net.core.rmem_max: '7500000', net.core.wmem_max: '7500000', net.ipv4.neigh.default.gc_thresh1: '4096', net.ipv4.neigh.default.gc_thresh2: '8192', net.ipv4.neigh.default.gc_thresh3: '16384', user.max_user_namespaces: '11255'}"));
    assert_eq!(mach["features"], y("{diskQuotaSupport: true, kubePrism: {enabled: true, port: 7445}, hostDNS: {enabled: true, forwardKubeDNSToHost: true}}"));
    assert_eq!(
        mach["nodeLabels"],
        y("{node.kubernetes.io/exclude-from-external-load-balancers: ''}")
    );
    let keys: Vec<_> = mach
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "type",
            "token",
            "ca",
            "certSANs",
            "kubelet",
            "network",
            "install",
            "files",
            "time",
            "sysctls",
            "features",
            "nodeLabels"
        ]
    );

    let cl = &m["cluster"];
    assert_eq!(cl["id"].as_str().unwrap(), s.cluster.id);
    assert_eq!(cl["secret"].as_str().unwrap(), s.cluster.secret);
    assert_eq!(
        cl["controlPlane"],
        y("{endpoint: 'https://10.127.0.40:6443'}")
    );
    assert_eq!(cl["clusterName"], y("kubernetes"));
    assert_eq!(cl["network"], y("{cni: {name: none}, dnsDomain: cluster.local, podSubnets: [10.42.0.0/16], serviceSubnets: [10.43.0.0/16]}"));
    assert_eq!(cl["token"].as_str().unwrap(), s.secrets.bootstraptoken);
    assert_eq!(
        cl["secretboxEncryptionSecret"].as_str(),
        s.secrets.secretboxencryptionsecret.as_deref()
    );
    assert_eq!(cl["ca"]["key"].as_str().unwrap(), s.certs.k8s.key);
    assert_eq!(
        cl["aggregatorCA"]["crt"].as_str().unwrap(),
        s.certs.k8saggregator.crt
    );
    assert_eq!(
        cl["serviceAccount"]["key"].as_str().unwrap(),
        s.certs.k8sserviceaccount.key
    );
    assert_eq!(cl["apiServer"], y("{image: 'registry.k8s.io/kube-apiserver:v1.35.3', extraArgs: {enable-aggregator-routing: 'true'}, certSANs: [127.0.0.1, 10.127.0.40], auditPolicy: {apiVersion: audit.k8s.io/v1, kind: Policy, rules: [{level: Metadata}]}}"));
    assert_eq!(cl["controllerManager"], y("{image: 'registry.k8s.io/kube-controller-manager:v1.35.3', extraArgs: {bind-address: 0.0.0.0}}"));
    assert_eq!(
        cl["proxy"],
        y("{disabled: true, image: 'registry.k8s.io/kube-proxy:v1.35.3'}")
    );
    assert_eq!(
        cl["scheduler"],
        y("{image: 'registry.k8s.io/kube-scheduler:v1.35.3', extraArgs: {bind-address: 0.0.0.0}}")
    );
    assert_eq!(
        cl["discovery"],
        y("{enabled: true, registries: {kubernetes: {disabled: true}, service: {}}}")
    );
    assert_eq!(
        cl["etcd"]["extraArgs"],
        y("{listen-metrics-urls: 'http://0.0.0.0:2381'}")
    );
    assert_eq!(cl["etcd"]["advertisedSubnets"], y("[10.127.0.0/24]"));
    assert_eq!(cl["coreDNS"], y("{disabled: true}"));
    assert_eq!(cl["allowSchedulingOnControlPlanes"], y("true"));
    let keys: Vec<_> = cl
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "secret",
            "controlPlane",
            "clusterName",
            "network",
            "token",
            "secretboxEncryptionSecret",
            "ca",
            "aggregatorCA",
            "serviceAccount",
            "apiServer",
            "controllerManager",
            "proxy",
            "scheduler",
            "discovery",
            "etcd",
            "coreDNS",
            "allowSchedulingOnControlPlanes"
        ]
    );

    assert_eq!(
        d[1],
        y("{apiVersion: v1alpha1, kind: HostnameConfig, auto: 'off', hostname: kube1}")
    );
    assert_eq!(d[2], y("{apiVersion: v1alpha1, kind: LinkAliasConfig, name: ethSel0, selector: {match: 'glob(\"38:05:25:30:c5:ed\", mac(link.hardware_addr))'}}"));
    assert_eq!(
        d[3],
        y("{apiVersion: v1alpha1, kind: Layer2VIPConfig, name: 10.127.0.40, link: ethSel0}")
    );
    assert_eq!(d[4], y("{apiVersion: v1alpha1, kind: LinkConfig, name: ethSel0, mtu: 9000, addresses: [{address: 10.127.0.41/24}], routes: [{gateway: 10.127.0.1}]}"));
    // Text details the reference calls out.
    assert!(kube1.yaml.contains("      permissions: 0o0\n"));
    assert!(kube1.yaml.contains("auto: \"off\"\n"));
    assert!(kube1
        .yaml
        .contains("\n  certSANs:\n    - 127.0.0.1\n    - 10.127.0.40\n"));
}

#[test]
fn workers_are_covered_by_a_second_definition() {
    let def = load("tests/fixtures/machineconfig/workers");
    let s = secrets();
    let all = render_all(&def, &s).unwrap();
    for c in &all {
        golden(&c.file_name, &c.yaml);
    }
    let w = all.iter().find(|c| !c.control_plane).unwrap();
    let d = docs(w);
    let m = &d[0];
    assert_eq!(m["machine"]["type"], y("worker"));
    assert_eq!(m["machine"]["ca"]["key"], y("''"));
    assert_eq!(m["cluster"]["ca"]["key"], y("''"));
    assert!(m["machine"]
        .get("nodeLabels")
        .map(|l| l
            .get("node.kubernetes.io/exclude-from-external-load-balancers")
            .is_none())
        .unwrap_or(true));
    for absent in [
        "secretboxEncryptionSecret",
        "aggregatorCA",
        "serviceAccount",
        "apiServer",
        "controllerManager",
        "proxy",
        "scheduler",
        "etcd",
        "allowSchedulingOnControlPlanes",
    ] {
        assert!(
            m["cluster"].get(absent).is_none(),
            "worker has cluster.{absent}"
        );
    }
    // Worker patch applied, control-plane patch not.
    assert_eq!(m["machine"]["kubelet"]["extraArgs"]["max-pods"], y("'250'"));
    assert_eq!(m["machine"]["install"]["disk"], y("/dev/sda"));
    validate_all(&def, &all).unwrap();
}

#[test]
fn rendered_configs_pass_the_upstream_schema() {
    for dir in ["machineconfigs", "tests/fixtures/machineconfig/workers"] {
        let def = load(dir);
        for c in render_all(&def, &secrets()).unwrap() {
            for d in &c.documents {
                let issues = schema::validate(d, false);
                assert!(issues.is_empty(), "{}: {issues:?}", c.file_name);
            }
        }
    }
}

#[test]
fn talosconfig_has_admin_cert_and_control_plane_endpoints() {
    let def = load("machineconfigs");
    let s = secrets();
    let tc = talosconfig::for_cluster(&def, &s).unwrap();
    assert_eq!(tc.context, "kubernetes");
    let ctx = &tc.contexts["kubernetes"];
    assert_eq!(ctx.endpoints, ["10.127.0.41", "10.127.0.42", "10.127.0.43"]);
    assert!(!ctx.endpoints.contains(&"10.127.0.40".to_string()));
    assert_eq!(ctx.ca, s.certs.os.crt);
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(&ctx.crt)
        .unwrap();
    let info = endsys_bootstrap::pki::CertInfo::from_pem(&pem, "admin").unwrap();
    assert_eq!(info.organizations, ["os:admin"]);
    assert!(info.eku_client_auth && !info.eku_server_auth && !info.is_ca);
    let key = base64::engine::general_purpose::STANDARD
        .decode(&ctx.key)
        .unwrap();
    assert!(String::from_utf8(key)
        .unwrap()
        .starts_with("-----BEGIN ED25519 PRIVATE KEY-----"));
    let text = talosconfig::to_yaml(&tc);
    assert!(text.starts_with("context: kubernetes\ncontexts:\n    kubernetes:\n        endpoints:\n            - 10.127.0.41\n"));
    let back =
        endsys_bootstrap::talos::talosconfig::Talosconfig::parse(&text, Path::new("talosconfig"))
            .unwrap();
    assert_eq!(back, tc);
}

#[test]
fn secrets_bundle_round_trips_in_talosctl_form() {
    let p = root().join("tests/fixtures/machineconfig/secrets.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    let b = SecretsBundle::from_yaml(&text, Path::new("secrets.yaml")).unwrap();
    assert_eq!(b.to_yaml(), text);
    use base64::Engine;
    let dec = |s: &str| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
    };
    assert!(dec(&b.certs.os.key).starts_with("-----BEGIN ED25519 PRIVATE KEY-----"));
    assert!(dec(&b.certs.k8s.key).starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(dec(&b.certs.k8sserviceaccount.key).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let os =
        endsys_bootstrap::pki::CertInfo::from_pem(dec(&b.certs.os.crt).as_bytes(), "os").unwrap();
    assert!(os.is_ca);
    assert_eq!(os.organizations, ["talos"]);
    let agg = endsys_bootstrap::pki::CertInfo::from_pem(
        dec(&b.certs.k8saggregator.crt).as_bytes(),
        "agg",
    )
    .unwrap();
    assert!(agg.organizations.is_empty() && agg.subject_cn.is_none());
}
