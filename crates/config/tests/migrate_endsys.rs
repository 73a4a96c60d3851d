//! `migrate --to v1.14` on the real endsys patches: the result renders under contract
//! 1.14, passes the 1.14 schema with no warning, and describes the same cluster as the
//! unmigrated 1.13 render, field by field (research P.2 step 7).

mod common;
use common::*;
use endsys_config::machineconfig::effective::{differences, model, Model, INTENDED_DIFFERENCES};
use endsys_config::machineconfig::migrate::migrate_all;
use endsys_config::machineconfig::*;

/// Every patch file the definition loads, once.
fn patch_files(def: &ClusterDefinition) -> Vec<PatchSource> {
    let mut out: Vec<PatchSource> = Vec::new();
    for n in &def.nodes {
        for p in &n.patches {
            if p.file != def.source && !out.iter().any(|o| o.file == p.file) {
                // migrate reads the file as written, before ${VAR} substitution.
                let text = std::fs::read_to_string(&p.file).unwrap();
                out.push(PatchSource { text, ..p.clone() });
            }
        }
    }
    out
}

/// The installer tag is the Talos version itself; the rest of the image must match.
fn without_version(mut m: Model) -> Model {
    if let Some(img) = m.get_mut("install.image") {
        *img = img
            .rsplit_once(':')
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
    }
    m
}

#[test]
fn migrate_endsys_to_1_14() {
    let old = endsys_copy("v1.13.9");
    let def13 = load(old.path()).unwrap();
    let r13 = render_all(&def13, &secrets()).unwrap();

    let new = endsys_copy("v1.14.0");
    let migrated = migrate_all(&patch_files(&def13)).unwrap();
    assert_eq!(migrated.len(), 7);
    assert!(
        migrated.iter().all(|m| m.changed()),
        "every endsys patch writes a moved field"
    );
    for m in &migrated {
        let rel = m.file.strip_prefix(old.path()).unwrap();
        std::fs::write(new.path().join(rel), &m.after).unwrap();
    }
    // Comments are kept: the JSON patch's header survives its rewrite.
    let adm = std::fs::read_to_string(
        new.path()
            .join("patches/controller/admission-controller-patch.yaml"),
    )
    .unwrap();
    assert!(adm.starts_with("# RFC 6902"), "{adm}");
    assert!(
        adm.contains("kind: KubeAdmissionControlConfig\nname: PodSecurity\n$$patch: delete\n"),
        "{adm}"
    );
    // etcd stays in v1alpha1 (not deprecated in 1.14).
    let cluster =
        std::fs::read_to_string(new.path().join("patches/controller/cluster.yaml")).unwrap();
    assert!(cluster.starts_with("cluster:\n  etcd:\n"), "{cluster}");

    let def14 = load(new.path()).unwrap();
    let r14 = render_all(&def14, &secrets()).unwrap();
    let warnings = validate_all(&def14, &r14).unwrap();
    assert!(
        warnings.is_empty(),
        "the migrated configs use no deprecated field: {warnings:?}"
    );

    assert_eq!(r13.len(), r14.len());
    for (a, b) in r13.iter().zip(&r14) {
        let (ma, mb) = (
            without_version(model(&a.documents)),
            without_version(model(&b.documents)),
        );
        let diff = differences(&ma, &mb);
        assert!(
            diff.is_empty(),
            "{}: the migrated 1.14 render is another cluster: {diff:#?}",
            a.hostname
        );
        // The model is not vacuous: it holds the endsys settings on both sides.
        for (k, v) in [
            ("apiserver.arg.enable-aggregator-routing", "true"),
            ("controllerManager.arg.bind-address", "0.0.0.0"),
            ("scheduler.arg.bind-address", "0.0.0.0"),
            ("proxy.enabled", "false"),
            ("coreDNS.enabled", "false"),
            ("network.cni", "none"),
            ("etcd.arg.listen-metrics-urls", "http://0.0.0.0:2381"),
            ("etcd.advertisedSubnets", "10.127.0.0/24"),
            ("node.ip.validSubnets", "10.127.0.0/24"),
            ("kubelet.config.serializeImagePulls", "false"),
            ("resolver.nameservers", "10.127.0.3,10.127.0.1"),
            ("resolver.disableSearchDomain", "true"),
            ("time.servers", "162.159.200.1,162.159.200.123"),
            ("sysctl.user.max_user_namespaces", "11255"),
            ("apiserver.certSANs", "127.0.0.1,10.127.0.40"),
            ("apiserver.admission", "[]"),
            ("node.label.node-role.kubernetes.io/control-plane", ""),
        ] {
            assert_eq!(
                mb.get(k).map(String::as_str),
                Some(v),
                "{k} in the 1.14 model"
            );
            assert_eq!(
                ma.get(k).map(String::as_str),
                Some(v),
                "{k} in the 1.13 model"
            );
        }
        assert!(
            !mb.keys().any(|k| k.starts_with("node.taint.")),
            "scheduling on control planes stays allowed"
        );
        assert!(mb["cri.customization"].contains("discard_unpacked_layers = false"));
        assert!(
            mb["install.disk"].starts_with("glob(\""),
            "{}",
            mb["install.disk"]
        );
        assert_eq!(
            ma["install.disk"], mb["install.disk"],
            "the same install disk"
        );
        // The B.4 differences are real and listed, not hidden.
        for (k, _) in INTENDED_DIFFERENCES.iter().take(3) {
            assert_ne!(ma.get(*k), mb.get(*k), "{k}");
        }
    }
}
