//! The GitOps tree walker: the lab tree, and a tree shaped like endsys (43 app
//! Kustomizations with the chains of `endsys-cluster.md`, generated here from
//! those facts); layer mapping and overrides; cycles and missing references
//! reported with file:line.

use std::path::{Path, PathBuf};

use endsys_bootstrap::gitops::{render_plan, walk, Key, LayerMap, ProblemKind};

fn lab_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux-tree")
}

/// (namespace, app, dependsOn as (namespace, name)).
type App = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn endsys_apps() -> Vec<App> {
    let ess = ("security", "external-secrets-stores");
    let cnpg = ("database", "cnpg-operator");
    let nfs = ("kube-system", "csi-driver-nfs");
    let lh = ("storage", "longhorn");
    let mut v = vec![];
    for a in [
        "cilium",
        "coredns",
        "spegel",
        "csi-driver-nfs",
        "metrics-server",
        "reloader",
        "snapshot-controller",
        "gpu-device-plugin",
    ] {
        v.push(("kube-system", a, vec![]));
    }
    v.push((
        "kube-system",
        "cilium-gateway",
        vec![("cert-manager", "cert-manager")],
    ));
    for a in [
        "k8s-gateway",
        "cloudflare-dns",
        "cloudflare-tunnel",
        "pihole-dns",
        "echo",
    ] {
        v.push(("network", a, vec![]));
    }
    v.push(("cert-manager", "cert-manager", vec![]));
    v.push(("flux-system", "flux-operator", vec![]));
    v.push((
        "flux-system",
        "flux-instance",
        vec![("flux-system", "flux-operator")],
    ));
    v.push(("storage", "longhorn", vec![]));
    v.push(("storage", "garage", vec![ess, nfs, lh]));
    v.push(("storage", "velero", vec![("storage", "garage")]));
    v.push(("database", "cnpg-operator", vec![]));
    v.push((
        "security",
        "external-secrets",
        vec![("cert-manager", "cert-manager")],
    ));
    v.push((
        "security",
        "external-secrets-stores",
        vec![("security", "external-secrets")],
    ));
    v.push(("security", "pocket-id", vec![ess]));
    for a in [
        "n8n",
        "gatus",
        "otterwiki",
        "gameserver",
        "octopi",
        "taxsale-monitor",
    ] {
        v.push(("default", a, vec![]));
    }
    for a in [
        "firecrawl",
        "home-assistant",
        "kube-prometheus-stack",
        "obsidian-livesync",
        "pelican",
        "pricebuddy",
    ] {
        v.push(("default", a, vec![ess]));
    }
    v.push(("default", "coder", vec![ess, cnpg]));
    v.push(("default", "larder", vec![ess, cnpg]));
    v.push(("default", "matrix-secrets", vec![ess, cnpg]));
    v.push(("default", "matrix", vec![("default", "matrix-secrets")]));
    v.push(("default", "hindsight", vec![cnpg]));
    v.push(("default", "immich", vec![ess, cnpg, nfs, lh]));
    v.push(("default", "romm", vec![ess, cnpg, nfs, lh]));
    v
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn ks_yaml(ns: &str, app: &str, deps: &[(&str, &str)]) -> String {
    let mut s = format!(
        "---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: {app}\nspec:\n"
    );
    if !deps.is_empty() {
        s.push_str("  dependsOn:\n");
        for (dns, d) in deps {
            if *dns == ns {
                s.push_str(&format!("    - name: {d}\n"));
            } else {
                s.push_str(&format!("    - name: {d}\n      namespace: {dns}\n"));
            }
        }
    }
    s.push_str(&format!(
        "  path: ./kubernetes/apps/{ns}/{app}/app\n  targetNamespace: {ns}\n  prune: true\n  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n  postBuild:\n    substituteFrom:\n      - kind: Secret\n        name: cluster-secrets\n  sourceRef:\n    kind: GitRepository\n    name: flux-system\n    namespace: flux-system\n"
    ));
    s
}

/// Writes the endsys-shaped tree into `root` (repository layout: `kubernetes/…`).
fn endsys_tree(root: &Path) {
    let k = root.join("kubernetes");
    write(
        &k.join("flux/cluster/ks.yaml"),
        "---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: cluster-meta\n  namespace: flux-system\nspec:\n  path: ./kubernetes/flux/meta\n  wait: true\n  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n  sourceRef:\n    kind: GitRepository\n    name: flux-system\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: cluster-apps\n  namespace: flux-system\nspec:\n  dependsOn:\n    - name: cluster-meta\n  path: ./kubernetes/apps\n  wait: false\n  sourceRef:\n    kind: GitRepository\n    name: flux-system\n",
    );
    write(
        &k.join("flux/meta/repos/helm.yaml"),
        "apiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: cilium\n  namespace: flux-system\nspec:\n  url: https://helm.cilium.io\n",
    );
    let apps = endsys_apps();
    let mut namespaces: Vec<&str> = apps.iter().map(|a| a.0).collect();
    namespaces.sort();
    namespaces.dedup();
    let mut top = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        .to_string();
    for ns in &namespaces {
        top.push_str(&format!("  - ./{ns}\n"));
        let mut nk = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nresources:\n"
        );
        for (ans, app, deps) in apps.iter().filter(|a| a.0 == *ns) {
            nk.push_str(&format!("  - ./{app}/ks.yaml\n"));
            write(
                &k.join(format!("apps/{ans}/{app}/ks.yaml")),
                &ks_yaml(ans, app, deps),
            );
            write(
                &k.join(format!("apps/{ans}/{app}/app/helmrelease.yaml")),
                &format!("apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: {app}\nspec:\n  chart:\n    spec:\n      chart: {app}\n"),
            );
        }
        write(&k.join(format!("apps/{ns}/kustomization.yaml")), &nk);
    }
    write(&k.join("apps/kustomization.yaml"), &top);
}

fn key(ns: &str, name: &str) -> Key {
    Key::new(ns, name)
}

#[test]
fn endsys_shaped_tree_has_43_apps_their_chains_and_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    endsys_tree(dir.path());
    let g = walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).expect("walk");
    assert!(g.problems.is_empty(), "{:?}", g.problems);
    assert_eq!(
        g.nodes.len(),
        43 + 3,
        "43 apps + flux-system, cluster-meta, cluster-apps"
    );
    let apps = g
        .nodes
        .values()
        .filter(|n| n.parent.as_ref() == Some(&key("flux-system", "cluster-apps")))
        .count();
    assert_eq!(apps, 43);
    // Namespace from the namespace folder's kustomization.yaml; cross-namespace dependsOn.
    let immich = &g.nodes[&key("default", "immich")];
    let deps: Vec<String> = immich
        .depends_on
        .iter()
        .map(|d| d.key.to_string())
        .collect();
    assert_eq!(
        deps,
        [
            "security/external-secrets-stores",
            "database/cnpg-operator",
            "kube-system/csi-driver-nfs",
            "storage/longhorn"
        ]
    );
    assert_eq!(immich.helm_releases, vec![key("default", "immich")]);
    assert_eq!(
        g.nodes[&key("flux-system", "cluster-apps")].depends_on[0].key,
        key("flux-system", "cluster-meta")
    );
    // Dependents of external-secrets-stores: the 13 of the chain.
    assert_eq!(
        g.dependents(&key("security", "external-secrets-stores"))
            .len(),
        13
    );
    // Order: the chain cert-manager → external-secrets → stores → garage → velero.
    let order = g.topo_order();
    let pos = |ns: &str, n: &str| {
        order
            .iter()
            .position(|k| k == &key(ns, n))
            .expect("in order")
    };
    assert!(pos("flux-system", "flux-system") < pos("flux-system", "cluster-meta"));
    assert!(pos("flux-system", "cluster-apps") < pos("cert-manager", "cert-manager"));
    assert!(pos("cert-manager", "cert-manager") < pos("security", "external-secrets"));
    assert!(pos("security", "external-secrets") < pos("security", "external-secrets-stores"));
    assert!(pos("security", "external-secrets-stores") < pos("storage", "garage"));
    assert!(pos("storage", "garage") < pos("storage", "velero"));
    assert!(pos("default", "matrix-secrets") < pos("default", "matrix"));
    // Default layers.
    let count = |l: u8| g.nodes.keys().filter(|k| g.layer_of(k) == l).count();
    assert_eq!(
        [count(1), count(2), count(3), count(4), count(5)],
        [14, 5, 4, 3, 20]
    );
    let plan = render_plan(&g);
    assert!(plan.contains("Layer 1 Foundation (14)"), "{plan}");
    assert!(plan.contains("Layer 5 Applications (20)"), "{plan}");
    assert!(
        plan.contains("  storage/velero  <- storage/garage"),
        "{plan}"
    );
}

#[test]
fn lab_tree_walks_into_all_five_layers() {
    let g = walk(&lab_tree(), "flux/cluster", LayerMap::endsys()).expect("walk");
    assert!(g.problems.is_empty(), "{:?}", g.problems);
    assert_eq!(g.nodes.len(), 3 + 11);
    for l in 1..=5 {
        assert!(
            g.nodes.keys().any(|k| g.layer_of(k) == l),
            "layer {l} empty"
        );
    }
    let pid = &g.nodes[&key("security", "pocket-id")];
    assert_eq!(
        pid.loc.file,
        PathBuf::from("apps/security/pocket-id/ks.yaml")
    );
    assert_eq!(pid.loc.line, 3, "the kind: line of the document");
    assert_eq!(pid.sops_secret.as_deref(), Some("sops-age"));
}

#[test]
fn layer_overrides_from_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    endsys_tree(dir.path());
    let mut layers = LayerMap::endsys();
    layers
        .apply_overrides(
            "layers:\n  garage: 5\n  default/n8n: 3\n  newthing: 2\n",
            Path::new("layers.yaml"),
        )
        .expect("overrides");
    let g = walk(dir.path(), "kubernetes/flux/cluster", layers).expect("walk");
    assert_eq!(g.layer_of(&key("storage", "garage")), 5);
    assert_eq!(g.layer_of(&key("default", "n8n")), 3);
    assert_eq!(
        g.layer_of(&key("other", "n8n")),
        5,
        "namespace/name is exact"
    );
    assert_eq!(g.layer_of(&key("default", "gatus")), 5, "unmapped");
    assert_eq!(
        g.layer_of(&key("kube-system", "cilium")),
        1,
        "defaults kept"
    );

    let mut bad = LayerMap::endsys();
    let e = bad
        .apply_overrides(
            "layers:\n  garage: 5\n  immich: 9\n",
            Path::new("layers.yaml"),
        )
        .expect_err("layer 9");
    assert!(e.to_string().starts_with("layers.yaml:3:"), "{e}");

    let mut replaced = LayerMap::endsys();
    replaced
        .apply_overrides("replace: true\nlayers:\n  immich: 1\n", Path::new("l.yaml"))
        .expect("replace");
    assert_eq!(replaced.layer(&key("kube-system", "cilium")), 5);
    assert_eq!(replaced.layer(&key("default", "immich")), 1);
}

#[test]
fn cycles_and_missing_references_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    endsys_tree(dir.path());
    let apps = dir.path().join("kubernetes/apps");
    // garage ← velero, and now garage → velero too: a cycle.
    write(
        &apps.join("storage/garage/ks.yaml"),
        &ks_yaml("storage", "garage", &[("storage", "velero")]),
    );
    // A dependency nobody defines.
    write(
        &apps.join("default/n8n/ks.yaml"),
        &ks_yaml("default", "n8n", &[("database", "postgres")]),
    );
    let g = walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).expect("walk");
    let text: Vec<String> = g.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(g.problems.len(), 2, "{text:#?}");
    let missing = g
        .problems
        .iter()
        .find(|p| matches!(p.kind, ProblemKind::MissingDependency { .. }))
        .expect("missing reported");
    assert_eq!(
        missing.to_string(),
        "kubernetes/apps/default/n8n/ks.yaml:8: Kustomization default/n8n depends on database/postgres, which no Kustomization in the tree defines"
    );
    let cycle = g
        .problems
        .iter()
        .find(|p| matches!(p.kind, ProblemKind::Cycle(_)))
        .expect("cycle reported");
    assert_eq!(
        cycle.to_string(),
        "kubernetes/apps/storage/garage/ks.yaml:8: dependsOn cycle: storage/garage -> storage/velero -> storage/garage"
    );
    assert!(render_plan(&g).contains("Problems:"));
}

#[test]
fn missing_sync_path_and_bad_yaml_are_errors_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).is_err());
    write(
        &dir.path().join("kubernetes/flux/cluster/ks.yaml"),
        "apiVersion: v1\nkind: ConfigMap\n---\nkind: [unclosed\n",
    );
    let e = walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).expect_err("bad yaml");
    assert!(
        e.to_string()
            .starts_with("kubernetes/flux/cluster/ks.yaml:"),
        "{e}"
    );
}

/// endsys-gitops quirk: network/cloudflare-dns's spec.path is its own folder, so
/// Flux's generated kustomization of that folder includes its own ks.yaml. It is
/// reported as what it is (a Kustomization that applies itself), with the fix,
/// not as "defined twice" at one and the same place.
#[test]
fn a_kustomization_whose_path_is_its_own_folder_is_named_as_applying_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    endsys_tree(dir.path());
    let ks = dir
        .path()
        .join("kubernetes/apps/network/cloudflare-dns/ks.yaml");
    let text = std::fs::read_to_string(&ks).expect("ks");
    write(
        &ks,
        &text.replace(
            "path: ./kubernetes/apps/network/cloudflare-dns/app",
            "path: ./kubernetes/apps/network/cloudflare-dns",
        ),
    );
    let g = walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).expect("walk");
    let text: Vec<String> = g.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(g.problems.len(), 1, "{text:#?}");
    assert!(
        matches!(g.problems[0].kind, ProblemKind::AppliesItself { .. }),
        "{text:#?}"
    );
    let msg = &text[0];
    assert!(
        msg.starts_with("kubernetes/apps/network/cloudflare-dns/ks.yaml:"),
        "{msg}"
    );
    assert!(!msg.contains("defined twice"), "{msg}");
    assert!(
        msg.contains("network/cloudflare-dns applies itself"),
        "{msg}"
    );
    assert!(msg.contains("prune"), "{msg}");
    assert!(
        msg.contains("\"./kubernetes/apps/network/cloudflare-dns/app\""),
        "{msg}"
    );
    // Its HelmRelease is still found (the build of the folder includes app/).
    assert!(g.nodes.contains_key(&key("network", "cloudflare-dns")));
}

/// A symbolic link back to a parent folder inside an app folder without a
/// kustomization.yaml used to send the walker round the loop until the stack
/// overflowed; linked folders are not followed.
#[test]
fn a_link_to_a_parent_folder_does_not_loop_the_walk() {
    let dir = tempfile::tempdir().expect("tempdir");
    endsys_tree(dir.path());
    let app = dir
        .path()
        .join("kubernetes/apps/network/cloudflare-dns/app");
    std::os::unix::fs::symlink("..", app.join("up")).expect("symlink");
    let g = walk(dir.path(), "kubernetes/flux/cluster", LayerMap::endsys()).expect("walk");
    assert!(g.problems.is_empty(), "{:?}", g.problems);
    assert!(g.nodes.contains_key(&key("network", "cloudflare-dns")));
}
