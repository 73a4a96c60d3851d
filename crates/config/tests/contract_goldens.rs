//! Golden renders per contract (1.12, 1.13, 1.14) for a control plane and a worker of
//! one definition (`tests/fixtures/machineconfig/contracts`), byte for byte
//! (`UPDATE_GOLDEN=1` rewrites them), and the fields that make each contract what it
//! is, each checked against the upstream source that decides it. Sources are
//! siderolabs/talos files at the tag named (`gen/` = pkg/machinery/config/generate,
//! `stab/` = pkg/machinery/config/types/v1alpha1/testdata/stability).

mod common;
use common::*;
use endsys_config::machineconfig::*;
use serde_yaml_ng::Value;

fn render(version: &str) -> Vec<RenderedConfig> {
    let dir = repo().join("tests/fixtures/machineconfig/contracts");
    let mut vars = Vars::new();
    vars.set("talosVersion", version);
    let def = ClusterDefinition::load(&DefinitionPaths::beside(&dir.join("talconfig.yaml")), vars)
        .unwrap();
    let r = render_all(&def, &secrets()).unwrap();
    let warnings = validate_all(&def, &r).unwrap();
    assert!(warnings.is_empty(), "{version}: {warnings:?}");
    r
}

fn golden(name: &str, text: &str) {
    let p = repo()
        .join("tests/fixtures/machineconfig/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, text).unwrap();
    }
    let want =
        std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("missing golden {}", p.display()));
    assert_eq!(text, want, "{name} differs from its golden file");
}

fn doc<'a>(c: &'a RenderedConfig, kind: &str) -> &'a Value {
    c.documents
        .iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("{}: no {kind}", c.hostname))
}

fn main_doc(c: &RenderedConfig) -> &Value {
    &c.documents[0]
}

fn y(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

#[test]
fn contract_goldens_match_and_are_stable() {
    for (v, tag) in [
        ("v1.12.6", "c112"),
        ("v1.13.9", "c113"),
        ("v1.14.0", "c114"),
    ] {
        let a = render(v);
        let b = render(v);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.yaml, y.yaml, "rendering is not deterministic");
            golden(&format!("{tag}-{}.yaml", x.hostname), &x.yaml);
        }
    }
}

#[test]
fn contract_1_12_and_1_13_keep_the_legacy_document() {
    let c12 = render("v1.12.6");
    let c13 = render("v1.13.9");
    // stab/v1.12/base-controlplane.yaml@v1.14.0-rc.1: `machine.network: {}`; the
    // KubeSpanMultidocConfig switch (contract.go, > 1.12) drops it from 1.13.
    assert_eq!(main_doc(&c12[0])["machine"]["network"], y("{}"));
    assert!(main_doc(&c13[0])["machine"].get("network").is_none());
    for c in c12.iter().chain(&c13) {
        let m = main_doc(c);
        // gen/init.go@v1.13.9: install image, wipe false, grubUseUKICmdline (> 1.11).
        assert_eq!(m["machine"]["install"]["wipe"], y("false"));
        assert_eq!(m["machine"]["install"]["grubUseUKICmdline"], y("true"));
        assert_eq!(
            m["cluster"]["controlPlane"]["endpoint"],
            y("https://10.0.0.10:6443")
        );
        assert_eq!(m["cluster"]["network"]["dnsDomain"], y("contracts.local"));
        assert_eq!(m["cluster"]["network"]["cni"]["name"], y("none"));
    }
    // talhelper's nodeconfig.go@v3.1.16: the selector goes to machine.install.diskSelector.
    assert_eq!(
        main_doc(&c13[0])["machine"]["install"]["diskSelector"]["serial"],
        y("S64DNL0T*")
    );
    assert_eq!(
        main_doc(&c13[1])["machine"]["install"]["disk"],
        y("/dev/sda")
    );
}

/// Kinds of stab/v1.14/base-controlplane.yaml@v1.14.0-rc.1 in order, with the
/// generator's optional documents where gen/ puts them.
const UPSTREAM_CP_1_14: &[&str] = &[
    "v1alpha1",
    "DiscoveryServiceConfig",
    "DiscoveryIdentityConfig",
    "UnattendedInstallConfig", // gen/init.go: only with an install disk
    "ResolverConfig",
    "VolumeConfig",
    "FilesystemTrimConfig",
    "SecurityProfileConfig",
    "HostnameConfig",
    "KubeClusterConfig",
    "KubeNodeConfig",
    "KubeletConfig",
    "KubeNetworkConfig",
    "KubeAPIServerCAConfig",
    "KubePrismConfig",
    "KubeAggregatorCAConfig",
    "KubeAdmissionControlConfig",
    "KubeAuditPolicyConfig",
    "KubeAuthenticationConfig",
    "KubeAuthorizerConfig",
    "KubeAuthorizerConfig",
    "KubeEtcdEncryptionConfig",
    "KubeServiceAccountConfig",
    "KubeAPIServerConfig",
    "KubeControllerManagerConfig",
    "KubeSchedulerConfig",
    "KubeProxyConfig",
    // KubeFlannelCNIConfig: gen/kubernetes.go adds it without a custom CNI; cniConfig
    // `none` drops it (research C.10).
    "KubeCoreDNSConfig",
];

#[test]
fn contract_1_14_is_what_the_rc1_generator_renders_plus_the_talhelper_mapping() {
    let r = render("v1.14.0");
    let (cp, w) = (&r[0], &r[1]);
    let cp_kinds = kinds(cp);
    // talhelper's network documents follow (netdocs: link, VIP).
    assert_eq!(
        &cp_kinds[..UPSTREAM_CP_1_14.len()],
        UPSTREAM_CP_1_14,
        "{cp_kinds:?}"
    );
    assert!(
        cp_kinds[UPSTREAM_CP_1_14.len()..]
            .iter()
            .all(|k| ["LinkConfig", "Layer2VIPConfig"].contains(&k.as_str())),
        "{cp_kinds:?}"
    );

    // gen/init.go@rc.1 through nilIf(contract): the v1alpha1 document keeps identity,
    // the cluster token and etcd only.
    let m = main_doc(cp);
    let machine: Vec<&str> = m["machine"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        machine,
        ["type", "token", "ca", "acceptedCAs", "certSANs", "features"][..]
            .iter()
            .copied()
            .filter(|k| *k != "acceptedCAs")
            .collect::<Vec<_>>()
    );
    let cluster: Vec<&str> = m["cluster"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(cluster, ["token", "etcd"]);
    assert_eq!(m["machine"]["features"], y("diskQuotaSupport: true"));

    // UnattendedInstallConfig: the CEL Talos derives from the selector
    // (v1alpha1_provider.go@rc.1 DiskMatchExpression), the talhelper image.
    let ui = doc(cp, "UnattendedInstallConfig");
    assert_eq!(ui["provisioning"]["diskSelector"]["match"], y("'glob(\"S64DNL0T*\", disk.serial) && disk.transport != \"\" && !disk.readonly && !disk.cdrom'"));
    assert_eq!(ui["provisioning"]["wipe"], y("false"));
    assert!(ui["installer"]["image"]
        .as_str()
        .unwrap()
        .ends_with(":v1.14.0"));
    assert_eq!(
        doc(w, "UnattendedInstallConfig")["provisioning"]["diskSelector"]["match"],
        y("disk.dev_path == \"/dev/sda\"")
    );

    // KubeNodeConfig (gen/kubernetes.go@rc.1): the control-plane label and taint;
    // the node's own nodeLabels replace the exclude-from-LB label, as talhelper's
    // applyNodeOverride does at 1.12/1.13 (th:pkg/talos/nodeconfig.go@v3.1.16).
    let n = doc(cp, "KubeNodeConfig");
    assert_eq!(
        n["labels"],
        y("{node-role.kubernetes.io/control-plane: '', topology.kubernetes.io/zone: a}")
    );
    assert_eq!(
        n["taints"],
        y("{node-role.kubernetes.io/control-plane: NoSchedule}")
    );
    let nw = doc(w, "KubeNodeConfig");
    assert_eq!(nw["taints"], y("{dedicated: 'storage:NoSchedule'}"));
    assert_eq!(nw["annotations"], y("{note: contracts}"));
    assert!(nw.get("labels").is_none());

    // ResolverConfig: the generator's hostDNS merged with talhelper's nameservers.
    let res = doc(cp, "ResolverConfig");
    assert_eq!(res["nameservers"], y("[{address: 10.0.0.1}]"));
    assert_eq!(
        res["hostDNS"],
        y("{enabled: true, forwardKubeDNSToHost: true}")
    );
    // HostnameConfig: talhelper's static hostname (auto off) over the generator's stable.
    assert_eq!(doc(cp, "HostnameConfig")["auto"], y("'off'"));
    assert_eq!(doc(cp, "HostnameConfig")["hostname"], y("cp1"));

    // Kube* certificates are PEM text (stab/v1.14/base-controlplane.yaml).
    let ca = doc(cp, "KubeAPIServerCAConfig");
    assert!(ca["issuingCA"]["cert"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let wca = doc(w, "KubeAPIServerCAConfig");
    assert!(wca["acceptedCAs"][0]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(wca.get("issuingCA").is_none());
    assert_eq!(
        doc(cp, "KubeAPIServerConfig")["certExtraSANs"],
        y("[api.contracts.internal]")
    );
    assert_eq!(
        doc(cp, "KubeNetworkConfig")["dnsDomain"],
        y("contracts.local")
    );
    assert_eq!(
        doc(cp, "KubeServiceAccountConfig")["issuer"]["issuerURL"],
        y("https://10.0.0.10:6443")
    );

    // gen/worker.go@rc.1: a worker carries no control-plane-only kind and no etcd.
    let wk = kinds(w);
    for k in validate_1_14::CONTROL_PLANE_ONLY {
        assert!(!wk.iter().any(|x| x == k), "worker has {k}");
    }
    assert_eq!(main_doc(w)["machine"]["ca"]["key"], y("''"));
    assert!(main_doc(w)["cluster"].get("etcd").is_none());
}
