//! Issue 15: any talhelper repository renders as talhelper renders it. Each test
//! is built from reading talhelper v3.1.16 and Talos sources (cited per case), with
//! fixtures under tests/fixtures/machineconfig/{talhelper,warn}.

use std::path::Path;

use endsys_bootstrap::machineconfig::*;
use serde_yaml_ng::Value;

mod machineconfig_helpers;
use machineconfig_helpers::*;

/// Keys talhelper drops without a word are reported with file and line, and the
/// definition still renders (th:pkg/config/loader.go@v3.1.16 decodes non-strictly).
#[test]
fn dropped_keys_are_warnings_with_file_and_line() {
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("warn"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 2);
    for dir in dirs {
        let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
        let (loc, text) = expect.trim_end().split_once('|').unwrap();
        let w = validate_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            w.iter()
                .any(|f| f.subject.ends_with(loc) && f.message.contains(text)),
            "{}: want {loc} {text:?} in {w:?}",
            dir.display()
        );
    }
    // talhelper v2.0.0 removed configPatches/inlinePatch: named as such, not applied.
    let def = def_in(
        &format!("{HEAD}nodes:\n{}    configPatches:\n      - op: add\n        path: /machine/env\n        value: {{}}\n", cp("")),
        &[],
    );
    assert!(
        def.warnings[0]
            .message
            .contains("talhelper removed it in v2.0.0"),
        "{:?}",
        def.warnings
    );
    assert!(
        def.warnings[0].subject.ends_with("talconfig.yaml:9"),
        "{:?}",
        def.warnings
    );
}

/// Contracts 1.8–1.11 (contract.go and stab/v1.11/base-*.yaml@v1.14.0-rc.1; talhelper's
/// legacy path in nodeconfig.go@v3.1.16): features, SANs, PSP, no HostnameConfig, and
/// hostname, nameservers and interfaces in machine.network in Go's field order.
#[test]
fn contract_1_11_renders_the_legacy_shape() {
    let text = format!(
        "{HEAD}talosVersion: v1.11.5\nkubernetesVersion: v1.34.1\nnodes:\n{}",
        cp("    nameservers: [192.0.2.53]\n    disableSearchDomain: true\n    networkInterfaces:\n      - interface: eth0\n        addresses: [192.0.2.11/24]\n        routes:\n          - network: 0.0.0.0/0\n            gateway: 192.0.2.1\n        vlans:\n          - vlanId: 20\n            dhcp: true\n        vip:\n          ip: 192.0.2.10\n")
    )
    .replace("kubernetesVersion: v1.36.0\n", "");
    let def = def_in(&text, &[]);
    let r = render(&def);
    assert_eq!(kinds(&r[0]), ["v1alpha1"], "no HostnameConfig below 1.12");
    let m = &r[0].documents[0];
    for f in ["rbac", "stableHostname", "apidCheckExtKeyUsage"] {
        assert_eq!(m["machine"]["features"][f], y("true"), "{f}");
    }
    assert!(m["machine"]["install"].get("grubUseUKICmdline").is_none());
    assert_eq!(m["cluster"]["apiServer"]["certSANs"], y("[192.0.2.10]"));
    assert_eq!(
        m["cluster"]["apiServer"]["disablePodSecurityPolicy"],
        y("true")
    );
    let net = &m["machine"]["network"];
    assert_eq!(net["hostname"], y("cp1"));
    assert_eq!(net["nameservers"], y("[192.0.2.53]"));
    assert_eq!(net["disableSearchDomain"], y("true"));
    // Go writes the fields without omitempty: vlan routes/vlanId, route network/gateway.
    assert_eq!(
        net["interfaces"],
        y("- interface: eth0\n  addresses: [192.0.2.11/24]\n  routes:\n    - network: 0.0.0.0/0\n      gateway: 192.0.2.1\n  vlans:\n    - routes: []\n      dhcp: true\n      vlanId: 20\n  vip:\n    ip: 192.0.2.10\n")
    );
    assert!(
        r[0].yaml
            .contains("  network:\n    hostname: cp1\n    interfaces:\n      - interface: eth0\n"),
        "{}",
        r[0].yaml
    );
    // Key order as in stab/v1.11/base-controlplane.yaml@v1.14.0-rc.1.
    for frag in [
        "  features:\n    rbac: true\n    stableHostname: true\n    apidCheckExtKeyUsage: true\n    diskQuotaSupport: true\n",
        "    certSANs:\n      - 192.0.2.10\n    disablePodSecurityPolicy: true\n    admissionControl:\n",
        "  install:\n    disk: /dev/sda\n    image: factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.11.5\n    wipe: false\n  features:",
    ] {
        assert!(r[0].yaml.contains(frag), "missing {frag:?} in\n{}", r[0].yaml);
    }
    validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        def.warnings.iter().any(|w| w
            .message
            .contains("tested against Talos 1.12 and 1.13 only")),
        "{:?}",
        def.warnings
    );
    // A document kind newer than the contract: emitted as talhelper does, with a warning.
    let uv = def_in(
        &text.replace("v1.11.5", "v1.9.6").replace("v1.34.1", "v1.32.0")
            .replace("    nameservers:", "    userVolumes:\n      - name: data\n        provisioning: {minSize: 1GiB}\n    nameservers:"),
        &[],
    );
    assert!(
        uv.warnings
            .iter()
            .any(|w| w.message.contains("Talos reads from 1.10 on")),
        "{:?}",
        uv.warnings
    );
    // Contract 1.7 and older are refused with the line.
    let old = text.replace("v1.11.5", "v1.7.4");
    let e = ClusterDefinition::from_text(
        &old,
        Path::new("/mem/t.yaml"),
        &Vars::new(),
        &MemPatchReader::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("1.8 to 1.14"), "{e}");
}

/// networkInterfaces → documents as talhelper's networkconfig.go@v3.1.16 renders
/// them: alias counters, bond member aliases, enum names, document order.
#[test]
fn network_shapes_render_as_talhelper_documents() {
    let def = def_in(
        &format!(
            "{HEAD}talosVersion: v1.13.0\nnodes:\n{}",
            cp(r#"    networkInterfaces:
      - deviceSelector: {driver: igb}
        dhcp: true
      - bond:
          mode: 802.3ad
          lacpRate: fast
          xmitHashPolicy: no-such-policy
          miimon: 100
          deviceSelectors:
            - hardwareAddr: "aa:bb:*"
            - {permanentAddr: "cc:dd:*", physical: false}
        deviceSelector: {busPath: "0000:01:*"}
        addresses: [192.0.2.11]
        routes: [{network: 0.0.0.0/0, gateway: 192.0.2.1, metric: 10}]
        vip: {ip: 192.0.2.10}
        vlans:
          - {vlanId: 20, addresses: [198.51.100.11/24], dhcp: true, dhcpOptions: {ipv4: false, ipv6: true}}
          - {vlanId: 0, addresses: [203.0.113.1/24]}
      - interface: br0
        bridge: {interfaces: [eth5], stp: {enabled: true}, vlan: {vlanFiltering: true}}
        ignore: true
      - interface: eth7
        mtu: 9000
"#)
        ),
        &[],
    );
    let r = render(&def);
    assert_eq!(
        kinds(&r[0]),
        [
            "v1alpha1",
            "HostnameConfig",
            "LinkAliasConfig",
            "LinkAliasConfig",
            "LinkAliasConfig",
            "LinkAliasConfig",
            "BondConfig",
            "DHCPv4Config",
            "Layer2VIPConfig",
            "LinkConfig",
            "VLANConfig",
            "DHCPv6Config",
            "BridgeConfig"
        ]
    );
    assert_eq!(
        find(&r[0], "LinkAliasConfig", "ethSel0")["selector"]["match"],
        y(r#"'glob("igb", link.driver)'"#)
    );
    assert_eq!(
        find(&r[0], "LinkAliasConfig", "bond0-m1")["selector"]["match"],
        y(r#"'glob("cc:dd:*", mac(link.permanent_addr)) && link.type != 1'"#)
    );
    let bond = find(&r[0], "BondConfig", "bond0");
    assert_eq!(bond["links"], y("[bond0-m0, bond0-m1]"));
    assert_eq!(bond["bondMode"], y("802.3ad"));
    assert_eq!(bond["lacpRate"], y("fast"));
    assert!(
        bond.get("xmitHashPolicy").is_none(),
        "unknown names are dropped"
    );
    assert_eq!(bond["addresses"], y("[{address: 192.0.2.11/32}]"));
    assert_eq!(bond["routes"], y("[{gateway: 192.0.2.1, metric: 10}]"));
    assert_eq!(
        find(&r[0], "Layer2VIPConfig", "192.0.2.10")["link"],
        y("bond0")
    );
    let vlan = find(&r[0], "VLANConfig", "bond0.20");
    assert_eq!(vlan["parent"], y("bond0"));
    assert_eq!(vlan["vlanID"], y("20"));
    assert_eq!(
        find(&r[0], "DHCPv6Config", "bond0.20")["name"],
        y("bond0.20")
    );
    let br = find(&r[0], "BridgeConfig", "br0");
    assert_eq!(br["stp"], y("{enabled: true}"));
    assert_eq!(br["vlan"], y("{filtering: true}"));
    assert_eq!(find(&r[0], "LinkConfig", "eth7")["mtu"], y("9000"));
    validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
}

/// talhelper fills templates in labels and annotations against the config with the
/// installer image set (nodeconfig.go templateConfig; guide docs/docs/guides.md), and
/// replaces the generated labels (dropping the control-plane exclude-LB label).
#[test]
fn label_and_annotation_templates_are_rendered() {
    let def = def_in(
        &format!("{HEAD}talosVersion: v1.13.0\nnodes:\n{}", cp(concat!(
            "    machineSpec: {secureboot: true}\n",
            "    nodeLabels:\n      zone: a\n      sb: '{{ .MachineConfig.MachineInstall.InstallImage | contains \"installer-secureboot\" }}'\n",
            "    nodeAnnotations:\n      installerUrl: '{{ .MachineConfig.MachineInstall.InstallImage }}'\n",
        ))),
        &[],
    );
    let r = render(&def);
    let m = &r[0].documents[0]["machine"];
    let image = "factory.talos.dev/metal-installer-secureboot/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0";
    assert_eq!(m["install"]["image"], Value::String(image.into()));
    assert_eq!(m["nodeLabels"], y("{sb: \"true\", zone: a}"));
    assert_eq!(
        m["nodeAnnotations"]["installerUrl"],
        Value::String(image.into())
    );
    assert!(!r[0].yaml.contains("{{"));
    // An unsupported function is refused with the node's line, never written.
    let bad = def_in(
        &format!(
            "{HEAD}nodes:\n{}",
            cp("    nodeAnnotations: {a: '{{ tpl . }}'}\n")
        ),
        &[],
    );
    // A template where talhelper renders none (a volume field) is refused, not written.
    let left = def_in(
        &format!("{HEAD}nodes:\n{}", cp("    volumes:\n      - name: EPHEMERAL\n        provisioning:\n          maxSize: '{{ .Size }}'\n")),
        &[],
    );
    let e = render_all(&left, &secrets()).unwrap_err();
    assert!(
        e.to_string()
            .contains("`{{` is left in the rendered config at provisioning.maxSize"),
        "{e}"
    );
    let e = render_all(&bad, &secrets()).unwrap_err();
    assert!(
        e.to_string().contains("talconfig.yaml:5") && e.to_string().contains("`tpl`"),
        "{e}"
    );
    // Under contract 1.14 the templates' data (the v1alpha1 document) is split
    // up: refused with the field and the way out, never written as `{{ … }}`.
    let at_1_14 = def_in(
        &format!(
            "{HEAD}talosVersion: v1.14.0\nnodes:\n{}",
            cp("    nodeLabels:\n      zone: a\n      sb: '{{ .MachineConfig.MachineInstall.InstallImage }}'\n")
        ),
        &[],
    );
    let e = render_all(&at_1_14, &secrets()).unwrap_err().to_string();
    assert!(
        e.contains("nodeLabels.sb is a template") && e.contains("contract 1.13"),
        "{e}"
    );
}

/// The installer image for a schematic, offline (image-factory schematic.go@v1.4.0 ID;
/// talhelper installerURL precedence), and schematic kernel args on contracts <= 1.11.
#[test]
fn schematic_gives_the_installer_image() {
    let sch = "    schematic:\n      customization:\n        extraKernelArgs: [net.ifnames=0]\n        systemExtensions:\n          officialExtensions: [siderolabs/tailscale]\n";
    let id = "104c23dfe7c5bfeff6a4cc7e166d8b3bba0f371760592c7677c90c822bb1d109";
    for (version, kargs) in [("v1.13.0", false), ("v1.11.5", true)] {
        let def = def_in(
            &format!("{HEAD}talosVersion: {version}\nnodes:\n{}", cp(sch))
                .replace("v1.36.0", "v1.34.0"),
            &[],
        );
        let r = render(&def);
        let inst = &r[0].documents[0]["machine"]["install"];
        assert_eq!(
            inst["image"],
            Value::String(format!("factory.talos.dev/metal-installer/{id}:{version}"))
        );
        assert_eq!(inst.get("extraKernelArgs").is_some(), kargs, "{version}");
    }
    // talosImageURL wins; a custom template with sprig functions is evaluated.
    let def = def_in(
        &format!("{HEAD}imageFactory:\n  registryURL: ' my.registry '\n  installerURLTmpl: '{{{{ trim .RegistryURL }}}}/{{{{ .Mode | upper }}}}/{{{{ .ID }}}}:{{{{ .Version }}}}'\nnodes:\n{}  - hostname: w1\n    ipAddress: 192.0.2.21\n    installDisk: /dev/sda\n    talosImageURL: ghcr.io/me/installer\n{sch}", cp(sch)),
        &[],
    );
    let r = render(&def);
    assert_eq!(
        r[0].documents[0]["machine"]["install"]["image"],
        Value::String(format!("my.registry/METAL/{id}:v1.13.8"))
    );
    assert_eq!(
        r[1].documents[0]["machine"]["install"]["image"],
        y("ghcr.io/me/installer:v1.13.8")
    );
}

/// YAML merge keys (resolved by talhelper's yaml.v3 round trip in pathsubst.go).
#[test]
fn merge_keys_are_resolved() {
    let text = format!(
        "{HEAD}x-common: &common\n  installDisk: /dev/nvme0n1\n  nameservers: [192.0.2.53]\nnodes:\n  - <<: *common\n    hostname: cp1\n    ipAddress: 192.0.2.11\n    controlPlane: true\n"
    );
    let def = def_in(&text, &[]);
    assert_eq!(
        def.nodes[0].node.install_disk.as_deref(),
        Some("/dev/nvme0n1")
    );
    assert_eq!(def.nodes[0].node.nameservers, ["192.0.2.53"]);
    assert!(
        def.warnings
            .iter()
            .any(|w| w.message.starts_with("x-common")),
        "{:?}",
        def.warnings
    );
    let r = render(&def);
    assert_eq!(
        find(&r[0], "ResolverConfig", "")["nameservers"],
        y("[{address: 192.0.2.53}]")
    );
}

/// Patch templates render against the config they patch, then talenv substitution
/// (th:pkg/patcher@v3.1.16; the guide's `ne .MachineConfig.MachineType` and `range`).
#[test]
fn patch_templates_render_before_envsubst() {
    let patch = "{{- if ne .MachineConfig.MachineType \"worker\" }}\ncluster:\n  apiServer:\n    extraArgs:\n      ranges: \"{{- range $i, $s := .ClusterConfig.ClusterNetwork.ServiceSubnet }}{{ if $i }},{{ end }}{{ $s }}{{ end }}\"\n      feature-gates: ${featureGates}\n{{- end }}\n";
    let def = def_in(
        &format!("{HEAD}clusterSvcNets: [10.96.0.0/12, fd00:10::/108]\npatches: ['@p.yaml']\nnodes:\n{}  - hostname: w1\n    ipAddress: 192.0.2.21\n    installDisk: /dev/sda\n", cp("")),
        &[("p.yaml", patch)],
    );
    let r = render(&def);
    let args = &r[0].documents[0]["cluster"]["apiServer"]["extraArgs"];
    assert_eq!(args["ranges"], y("10.96.0.0/12,fd00:10::/108"));
    assert_eq!(args["feature-gates"], y("A=true"));
    assert!(r[1].documents[0]["cluster"].get("apiServer").is_none());
}

/// SOPS-encrypted patch, content and talenv files are decrypted with the age key
/// (talhelper's DecryptFileWithSops; plain files pass through).
#[test]
fn sops_encrypted_files_are_decrypted() {
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let key = dir.path().join("keys.txt");
    std::fs::write(
        &key,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        ),
    )
    .unwrap();
    let enc = |plain: &str| {
        endsys_bootstrap::sops::encrypt_yaml(plain, &[id.to_public()], &Default::default()).unwrap()
    };
    std::fs::write(
        dir.path().join("patch.sops.yaml"),
        enc("machine:\n  env:\n    SECRET: from-sops\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("talenv.sops.yaml"),
        enc("nodeDisk: /dev/vdb\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("talconfig.yaml"),
        format!("{HEAD}patches: ['@patch.sops.yaml']\nnodes:\n  - hostname: cp1\n    ipAddress: 192.0.2.11\n    controlPlane: true\n    installDisk: ${{nodeDisk}}\n"),
    )
    .unwrap();
    // talenv.sops.yaml is one of talhelper's default env files (cmd/genconfig.go).
    let mut paths = DefinitionPaths::beside(&dir.path().join("talconfig.yaml"));
    paths.age_key = Some(key);
    let def = ClusterDefinition::load(&paths, Vars::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(def.nodes[0].node.install_disk.as_deref(), Some("/dev/vdb"));
    let r = render(&def);
    assert_eq!(
        r[0].documents[0]["machine"]["env"]["SECRET"],
        y("from-sops")
    );
    // Without the key: refused, naming the file.
    paths.age_key = Some(dir.path().join("missing.txt"));
    let e = ClusterDefinition::load(&paths, Vars::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("talenv.sops.yaml: cannot decrypt this SOPS file"),
        "{e}"
    );
    // A plain talenv and the encrypted patch: the patch's line in talconfig.yaml.
    std::fs::remove_file(dir.path().join("talenv.sops.yaml")).unwrap();
    std::fs::write(dir.path().join("talenv.yaml"), "nodeDisk: /dev/vdb\n").unwrap();
    let e = ClusterDefinition::load(&paths, Vars::new()).unwrap_err();
    assert!(
        e.to_string().contains("talconfig.yaml:4: ")
            && e.to_string().contains("patch.sops.yaml: cannot decrypt"),
        "{e}"
    );
}

/// The logging endpoint is a URL string for Talos (v1alpha1_types.go@v1.13.9
/// Endpoint.UnmarshalYAML); the published schema's empty object refused it.
#[test]
fn logging_endpoint_url_passes_validation() {
    let def = def_in(
        &format!("{HEAD}patches:\n  - |-\n    machine:\n      logging:\n        destinations:\n          - endpoint: udp://192.0.2.99:5514/\n            format: json_lines\nnodes:\n{}", cp("")),
        &[],
    );
    let r = render(&def);
    validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
}

/// What talhelper and Talos accept but may bite is a warning, not an error
/// (research 14-15 §0.8): installDisk with a selector, a worker VIP, an endpoint that
/// is neither a control plane nor a VIP (external LB, kube-vip).
#[test]
fn stricter_checks_are_warnings() {
    let def = def_in(
        &format!("clusterName: c\nkubernetesVersion: v1.36.0\nendpoint: https://192.0.2.200:6443\nnodes:\n{}  - hostname: w1\n    ipAddress: 192.0.2.21\n    installDisk: /dev/sda\n    networkInterfaces:\n      - interface: eth0\n        addresses: [192.0.2.21/24]\n        vip: {{ip: 192.0.2.10}}\n",
            cp("    installDiskSelector: {serial: S1}\n")),
        &[],
    );
    let r = render(&def);
    let w = validate_all(&def, &r).unwrap_or_else(|e| panic!("{e}"));
    let text: Vec<String> = w.iter().map(|f| f.to_string()).collect();
    for want in [
        "both installDisk and installDiskSelector",
        "a VIP on a worker",
        "external load balancer",
    ] {
        assert!(text.iter().any(|t| t.contains(want)), "{want}: {text:?}");
    }
}

/// An AES-CBC secret in the bundle (older bundles) goes on every node, workers too
/// (th:pkg/talos/nodeconfig.go@v3.1.16, GenerateNodeConfig).
#[test]
fn aescbc_secret_goes_on_every_node() {
    let def = def_in(
        &format!("{HEAD}nodes:\n{}  - hostname: w1\n    ipAddress: 192.0.2.21\n    installDisk: /dev/sda\n", cp("")),
        &[],
    );
    let mut bundle = secrets();
    bundle.secrets.aescbcencryptionsecret =
        Some("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlYw==".into());
    let r = render_all(&def, &bundle).unwrap_or_else(|e| panic!("{e}"));
    for c in &r {
        assert_eq!(
            c.documents[0]["cluster"]["aescbcEncryptionSecret"],
            y("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlYw=="),
            "{}",
            c.hostname
        );
    }
}
