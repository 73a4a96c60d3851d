//! The helm path: a stub `helm` script (argv recorded, version gate, missing
//! helm refused), the real helm 4 rendering the lab charts (interop: never
//! skipped when CI is set; a loud SKIPPED otherwise), and Helm ownership
//! metadata on every object applied to the simulated API.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use endsys_bootstrap::charts::helm::Helm;
use endsys_bootstrap::charts::helmfile::Helmfile;
use endsys_bootstrap::charts::{add_ownership, has_ownership, ChartsError};
use endsys_bootstrap::kube::{client_from_kubeconfig, parse_manifests, Applier};
use endsys_lab::repository as lab;

fn stub(dir: &Path, version: &str) -> PathBuf {
    let p = dir.join("helm");
    let log = dir.join("argv.log");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nif [ \"$1\" = version ]; then echo '{version}'; exit 0; fi\nif [ \"$1\" = template ]; then printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: %s-rendered\\n' \"$2\"; exit 0; fi\necho \"unexpected: $*\" >&2; exit 3\n",
        log.display()
    );
    std::fs::write(&p, script).expect("write stub");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn lab_repo() -> (tempfile::TempDir, Helmfile) {
    let dir = tempfile::tempdir().expect("tempdir");
    lab::write_repo(dir.path()).expect("write lab repo");
    let hf = Helmfile::load(&dir.path().join("bootstrap/helmfile.yaml")).expect("helmfile");
    (dir, hf)
}

#[tokio::test]
async fn stub_helm_gets_the_template_argv_and_old_or_missing_helm_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let helm = Helm::find(Some(&stub(tmp.path(), "v4.1.4+g05fa379")))
        .await
        .expect("helm 4 accepted");
    assert_eq!(helm.version, "v4.1.4+g05fa379");
    let (repo, hf) = lab_repo();
    let order: Vec<&str> = hf
        .ordered()
        .expect("order")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "cilium",
            "coredns",
            "spegel",
            "cert-manager",
            "flux-operator",
            "flux-instance"
        ]
    );
    let cilium = &hf.releases[0];
    let out = helm
        .template(&hf, cilium, repo.path(), "v1.35.2")
        .await
        .expect("stub renders");
    assert!(out.contains("name: cilium-rendered"));
    let argv = std::fs::read_to_string(tmp.path().join("argv.log")).expect("argv log");
    let line = argv.lines().last().expect("a template call");
    for want in [
        "template cilium ",
        "/bootstrap/./charts/cilium",
        "--namespace kube-system",
        "--version 1.19.5",
        "--include-crds",
        "--kube-version v1.35.2",
        "kubernetes/apps/kube-system/cilium/app/helm/values.yaml",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }

    let old = tempfile::tempdir().expect("tempdir");
    match Helm::find(Some(&stub(old.path(), "v3.12.3+g3a31588"))).await {
        Err(ChartsError::HelmTooOld { found, .. }) => assert!(found.starts_with("v3.12")),
        other => panic!("expected too old, got {other:?}"),
    }
    match Helm::find(Some(Path::new("/nonexistent/helm"))).await {
        Err(e @ ChartsError::HelmMissing { .. }) => {
            assert!(e.to_string().contains("nothing was changed"), "{e}")
        }
        other => panic!("expected missing, got {other:?}"),
    }
}

fn real_helm() -> Option<PathBuf> {
    let p = PathBuf::from(".tools/bin/helm");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but .tools/bin/helm is missing: run scripts/fetch-tools.sh");
    }
    eprintln!(
        "\n*** SKIPPED: real helm interop (no .tools/bin/helm; run scripts/fetch-tools.sh) ***\n"
    );
    None
}

#[tokio::test]
async fn real_helm_renders_the_lab_charts_like_the_prerendered_manifests() {
    let Some(path) = real_helm() else { return };
    let helm = Helm::find(Some(&path)).await.expect("real helm");
    assert!(helm.version.starts_with("v4."), "{}", helm.version);
    let (repo, hf) = lab_repo();
    for r in hf.ordered().expect("order") {
        let out = helm
            .template(&hf, r, repo.path(), "v1.35.0")
            .await
            .expect("helm template");
        let ours = parse_manifests(&out, &r.name).expect("parses");
        let pre = parse_manifests(lab::prerendered(&r.name).expect("prerendered"), &r.name)
            .expect("parses");
        assert_eq!(
            serde_json::to_value(&ours).expect("json"),
            serde_json::to_value(&pre).expect("json"),
            "{}: the pre-rendered manifests are stale (re-render with helm)",
            r.name
        );
        if r.name == "cert-manager" {
            assert!(
                ours.iter().any(|o| o
                    .types
                    .as_ref()
                    .is_some_and(|t| t.kind == "CustomResourceDefinition")),
                "--include-crds"
            );
        }
    }
}

#[tokio::test]
async fn every_applied_object_carries_helm_ownership() {
    let kc = kubelab::up(175, "k175").await;
    let client = client_from_kubeconfig(kc.kubeconfig.as_bytes())
        .await
        .expect("client");
    let mut applier = Applier::new(client).await.expect("discovery");
    let (_repo, hf) = lab_repo();
    let mut applied = Vec::new();
    for r in hf.ordered().expect("order") {
        let mut objs = parse_manifests(lab::prerendered(&r.name).expect("prerendered"), &r.name)
            .expect("parses");
        add_ownership(&mut objs, &r.name, &r.namespace);
        let ns = parse_manifests(
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
                r.namespace
            ),
            "ns",
        )
        .expect("parses");
        applier.apply_all(ns, "default").await.expect("namespace");
        for a in applier
            .apply_all(objs, &r.namespace)
            .await
            .expect("applies")
        {
            applied.push((a, r.name.clone(), r.namespace.clone()));
        }
    }
    assert!(applied.len() >= 12, "{} objects", applied.len());
    for (a, release, ns) in &applied {
        let obj = kc
            .lab
            .kube()
            .get(&a.gvk.kind, a.namespace.as_deref(), &a.name)
            .unwrap_or_else(|| panic!("{} stored", a.label()));
        let o: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
        assert!(
            has_ownership(&o, release, ns),
            "{} lacks Helm ownership",
            a.label()
        );
    }
}
