//! Unit tests of the lab's `kustomize build`, rule by rule.

use std::path::PathBuf;

use super::rules::str_at;
use super::*;

/// A repository from (path, content) pairs.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    for (p, text) in files {
        let p = t.path().join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    t
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

fn names(docs: &[BuiltDoc]) -> Vec<String> {
    docs.iter()
        .map(|d| str_at(&d.value, "/metadata/name").to_string())
        .collect()
}

fn err(repo: &tempfile::TempDir, dir: &str) -> BuildError {
    build(repo.path(), &repo.path().join(dir)).expect_err("build should fail")
}

#[test]
fn nested_kustomizations_build_in_listed_order() {
    let r = tree(&[
        (
            "app/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ./b.yaml\n  - ./sub\n  - a.yaml\n",
        ),
        ("app/a.yaml", &cm("a")),
        ("app/b.yaml", &cm("b")),
        ("app/sub/kustomization.yml", "resources: [x.yaml, ../c.yaml]\n"),
        ("app/sub/x.yaml", &cm("x")),
        ("app/c.yaml", &cm("c")),
    ]);
    let docs = build(r.path(), &r.path().join("app")).expect("build");
    assert_eq!(names(&docs), ["b", "x", "c", "a"]);
    assert_eq!(docs[1].file, PathBuf::from("app/sub/x.yaml"));
    assert_eq!(docs[2].file, PathBuf::from("app/c.yaml"));
    assert!(docs.iter().all(|d| d.namespace.is_none()));
}

#[test]
fn the_outermost_namespace_wins_and_renames_namespaces() {
    let r = tree(&[
        (
            "apps/kustomization.yaml",
            "namespace: outer\nresources: [./inner, role.yaml]\n",
        ),
        (
            "apps/role.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n",
        ),
        (
            "apps/inner/kustomization.yaml",
            "namespace: inner\nresources: [ns.yaml, cm.yaml, ks.yaml]\n",
        ),
        (
            "apps/inner/ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: inner\n",
        ),
        (
            "apps/inner/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: mine\n",
        ),
        (
            "apps/inner/ks.yaml",
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: k\n",
        ),
    ]);
    let docs = build(r.path(), &r.path().join("apps")).expect("build");
    assert_eq!(names(&docs), ["outer", "c", "k", "r"]);
    let ns: Vec<Option<&str>> = docs.iter().map(|d| d.namespace.as_deref()).collect();
    assert_eq!(ns, [None, Some("outer"), Some("outer"), None]);
    assert_eq!(str_at(&docs[1].value, "/metadata/namespace"), "outer");
    assert_eq!(str_at(&docs[2].value, "/metadata/namespace"), "outer");
    assert_eq!(str_at(&docs[3].value, "/metadata/namespace"), "");
    // Without the outer namespace the inner one applies.
    let docs = build(r.path(), &r.path().join("apps/inner")).expect("build");
    assert_eq!(names(&docs), ["inner", "c", "k"]);
    assert_eq!(docs[1].namespace.as_deref(), Some("inner"));
}

#[test]
fn target_namespace_replaces_the_root_namespace() {
    let r = tree(&[
        (
            "app/kustomization.yaml",
            "namespace: mine\nresources: [a.yaml]\n",
        ),
        ("app/a.yaml", &cm("a")),
    ]);
    let docs = build_for(r.path(), &r.path().join("app"), Some("target")).expect("build");
    assert_eq!(docs[0].namespace.as_deref(), Some("target"));
}

#[test]
fn components_add_resources_and_transform_the_including_kustomization() {
    let r = tree(&[
        (
            "app/kustomization.yaml",
            "resources: [a.yaml]\ncomponents: [../components/common]\n",
        ),
        ("app/a.yaml", &cm("a")),
        (
            "components/common/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nnamespace: shared\nresources: [c.yaml]\n",
        ),
        ("components/common/c.yaml", &cm("c")),
        ("bad/kustomization.yaml", "resources: [a.yaml]\ncomponents: [../app]\n"),
        ("bad/a.yaml", &cm("a")),
        ("worse/kustomization.yaml", "resources: [../components/common]\n"),
    ]);
    let docs = build(r.path(), &r.path().join("app")).expect("build");
    assert_eq!(names(&docs), ["a", "c"]);
    assert!(docs
        .iter()
        .all(|d| d.namespace.as_deref() == Some("shared")));
    assert_eq!(docs[1].file, PathBuf::from("components/common/c.yaml"));

    let e = err(&r, "bad");
    assert!(
        e.to_string()
            .contains("expected kind 'Component' for path 'app' but got 'Kustomization'"),
        "{e}"
    );
    let e = err(&r, "worse");
    assert!(
        e.to_string()
            .contains("expected kind != 'Component' for path 'components/common'"),
        "{e}"
    );
}

#[test]
fn a_directory_without_kustomization_gets_the_generated_one() {
    let r = tree(&[
        ("cluster/b.yaml", &cm("b")),
        (
            "cluster/a.yml",
            &format!("---\n{}---\n\n---\n{}", cm("a1"), cm("a2")),
        ),
        ("cluster/notes.txt", "not a manifest"),
        ("cluster/data.json", "{\"kind\": \"ConfigMap\"}"),
        ("cluster/sub/c.yaml", &cm("c")),
        (
            "cluster/withk/kustomization.yaml",
            "namespace: k\nresources: [d.yaml]\n",
        ),
        ("cluster/withk/d.yaml", &cm("d")),
        ("cluster/withk/unlisted.yaml", &cm("unlisted")),
        ("cluster/.git/config.yaml", "not: kubernetes\n"),
        ("cluster/.sops.yaml", "creation_rules: []\n"),
        ("cluster/.hidden.yaml", &cm("hidden")),
    ]);
    let docs = build(r.path(), &r.path().join("cluster")).expect("build");
    // source-controller only drops its default patterns, not every dotfile.
    assert_eq!(names(&docs), ["hidden", "a1", "a2", "b", "c", "d"]);
    assert_eq!(docs[5].namespace.as_deref(), Some("k"));
    assert_eq!(docs[1].file, PathBuf::from("cluster/a.yml"));
}

#[test]
fn the_generator_refuses_yaml_that_is_not_kubernetes() {
    let r = tree(&[
        ("cluster/a.yaml", &cm("a")),
        ("cluster/helm/values.yaml", "replicas: 2\n"),
    ]);
    let e = err(&r, "cluster");
    let msg = e.to_string();
    assert!(
        msg.starts_with("failed to decode Kubernetes YAML from cluster/helm/values.yaml"),
        "{msg}"
    );
    assert!(msg.contains("missing kind"), "{msg}");
    assert_eq!(e.flux_condition().0, "BuildFailed");
    assert!(!e.flux_condition().1.starts_with("kustomize build failed"));
}

#[test]
fn a_missing_resource_names_the_kustomization_and_the_entry() {
    let r = tree(&[
        ("apps/kustomization.yaml", "resources:\n  - ./security\n"),
        (
            "apps/security/kustomization.yaml",
            "resources:\n  - ./namespace.yaml\n  - ./missing.yaml\n",
        ),
        (
            "apps/security/namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: security\n",
        ),
    ]);
    let e = err(&r, "apps");
    assert_eq!(
        e.to_string(),
        "accumulating resources from './security' in apps/kustomization.yaml: \
         recursed accumulation of path 'apps/security': \
         accumulating resources from './missing.yaml' in apps/security/kustomization.yaml: \
         open apps/security/missing.yaml: no such file or directory"
    );
    let (reason, msg) = e.flux_condition();
    assert_eq!(reason, "BuildFailed");
    assert!(msg.starts_with("kustomize build failed: accumulating resources"));
}

#[test]
fn a_resource_directory_needs_a_kustomization() {
    let r = tree(&[
        ("app/kustomization.yaml", "resources: [./plain]\n"),
        ("app/plain/a.yaml", &cm("a")),
    ]);
    let msg = err(&r, "app").to_string();
    assert!(
        msg.ends_with(
            "unable to find one of 'kustomization.yaml', 'kustomization.yml' or 'Kustomization' in directory 'app/plain'"
        ),
        "{msg}"
    );
}

#[test]
fn a_missing_path_is_reported_before_building() {
    let r = tree(&[("a.yaml", &cm("a"))]);
    let e = err(&r, "nowhere");
    assert_eq!(
        e.flux_condition(),
        (
            "ArtifactFailed",
            "kustomization path not found: stat nowhere: no such file or directory".into()
        )
    );
}

#[test]
fn bad_yaml_names_the_file() {
    let r = tree(&[
        (
            "app/kustomization.yaml",
            "resources: [ok.yaml, broken.yaml]\n",
        ),
        ("app/ok.yaml", &cm("ok")),
        (
            "app/broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
        ),
    ]);
    let msg = err(&r, "app").to_string();
    assert!(msg.contains("MalformedYAMLError"), "{msg}");
    assert!(msg.contains("in File: app/broken.yaml"), "{msg}");

    let r = tree(&[("app/kustomization.yaml", "resources: [a.yaml\n")]);
    let msg = err(&r, "app").to_string();
    assert!(
        msg.starts_with("app/kustomization.yaml: invalid Kustomization"),
        "{msg}"
    );
}

#[test]
fn cycles_are_refused() {
    let r = tree(&[
        ("a/kustomization.yaml", "resources: [../b]\n"),
        ("b/kustomization.yaml", "resources: [../a]\n"),
        ("self/kustomization.yaml", "resources: [./]\n"),
        ("up/kustomization.yaml", "resources: [./down]\n"),
        ("up/down/kustomization.yaml", "resources: [..]\n"),
    ]);
    let msg = err(&r, "a").to_string();
    assert!(
        msg.ends_with("cycle detected: candidate root 'a' contains visited root 'a'"),
        "{msg}"
    );
    let msg = err(&r, "self").to_string();
    assert!(msg.contains("cycle detected"), "{msg}");
    let msg = err(&r, "up").to_string();
    assert!(
        msg.ends_with("cycle detected: candidate root 'up' contains visited root 'up/down'"),
        "{msg}"
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    let r = tree(&[
        ("d1/kustomization.yaml", "resources: [d2]\n"),
        ("d1/d2/kustomization.yaml", "resources: [d3]\n"),
        ("d1/d2/d3/kustomization.yaml", "resources: [d4]\n"),
        ("d1/d2/d3/d4/kustomization.yaml", "resources: [a.yaml]\n"),
        ("d1/d2/d3/d4/a.yaml", &cm("a")),
    ]);
    let dir = r.path().join("d1");
    assert_eq!(names(&build(r.path(), &dir).expect("build")), ["a"]);
    let e = Builder::new(r.path(), 3)
        .root(&dir, None)
        .expect_err("too deep");
    assert!(
        e.to_string()
            .ends_with("kustomizations nest more than 3 deep at 'd1/d2/d3/d4' (a symlink loop?)"),
        "{e}"
    );
}

#[test]
fn documents_are_read_as_kustomize_reads_them() {
    let list = "apiVersion: v1\nkind: ConfigMapList\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: l1\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: l2\n";
    let local = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\n";
    let r = tree(&[
        (
            "app/kustomization.yaml",
            "resources: [multi.yaml, https://github.com/x/y//z, github.com/x/y]\n",
        ),
        (
            "app/multi.yaml",
            &format!(
                "# comment\n---\n{list}---\n---\n{}...\n---\n{local}--- {{}}\n---\n{}",
                cm("m1"),
                cm("m2")
            ),
        ),
    ]);
    let docs = build(r.path(), &r.path().join("app")).expect("build");
    // List items go after the file's other documents; local config is dropped.
    assert_eq!(names(&docs), ["m1", "m2", "l1", "l2"]);

    let r = tree(&[
        ("app/kustomization.yaml", "resources: [noname.yaml]\n"),
        (
            "app/noname.yaml",
            "apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
        ),
    ]);
    let msg = err(&r, "app").to_string();
    assert!(msg.contains("missing metadata.name"), "{msg}");
    assert!(msg.contains("in File: app/noname.yaml"), "{msg}");
}

#[test]
fn objects_without_api_version_fail_kustomize_controller() {
    let r = tree(&[
        ("app/kustomization.yaml", "resources: [a.yaml]\n"),
        ("app/a.yaml", "kind: ConfigMap\nmetadata:\n  name: a\n"),
    ]);
    let e = err(&r, "app");
    let (reason, msg) = e.flux_condition();
    assert_eq!(reason, "BuildFailed");
    assert!(
        msg.starts_with("failed to decode Kubernetes apiVersion, kind and name from"),
        "{msg}"
    );
}

#[test]
fn duplicate_ids_are_refused() {
    let r = tree(&[
        ("app/kustomization.yaml", "resources: [a.yaml, ./sub]\n"),
        ("app/a.yaml", &cm("same")),
        ("app/sub/kustomization.yaml", "resources: [b.yaml]\n"),
        (
            "app/sub/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: same\n  namespace: default\n",
        ),
        ("other/kustomization.yaml", "resources: [a.yaml, ./sub]\n"),
        ("other/a.yaml", &cm("same")),
        (
            "other/sub/kustomization.yaml",
            "namespace: elsewhere\nresources: [b.yaml]\n",
        ),
        ("other/sub/b.yaml", &cm("same")),
        (
            "ns/kustomization.yaml",
            "namespace: one\nresources: [a.yaml, b.yaml]\n",
        ),
        (
            "ns/a.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
        ),
        (
            "ns/b.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n",
        ),
    ]);
    let msg = err(&r, "app").to_string();
    assert!(
        msg.contains(
            "may not add resource with an already registered id: ConfigMap.v1.[noGrp]/same.default"
        ),
        "{msg}"
    );
    // Different namespaces: different ids.
    assert_eq!(
        names(&build(r.path(), &r.path().join("other")).expect("build")),
        ["same", "same"]
    );
    let msg = err(&r, "ns").to_string();
    assert!(
        msg.contains("namespace transformation produces ID conflict"),
        "{msg}"
    );
}

#[test]
fn kustomization_files_are_checked_like_kustomize() {
    let r = tree(&[
        ("unknown/kustomization.yaml", "resourcez: [a.yaml]\n"),
        (
            "patched/kustomization.yaml",
            "resources: []\npatches:\n  - path: p.yaml\n",
        ),
        (
            "labels/kustomization.yaml",
            "resources: [a.yaml]\ncommonLabels: {a: b}\n",
        ),
        ("labels/a.yaml", &cm("a")),
        ("two/kustomization.yaml", "resources: []\n"),
        ("two/kustomization.yml", "resources: []\n"),
        ("outer/kustomization.yaml", "resources: [./empty]\n"),
        (
            "outer/empty/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
        ),
        ("wrongkind/kustomization.yaml", "kind: Deployment\n"),
    ]);
    let msg = err(&r, "unknown").to_string();
    assert!(msg.contains("json: unknown field \"resourcez\""), "{msg}");
    let msg = err(&r, "patched").to_string();
    assert!(msg.contains("'patches' is not simulated"), "{msg}");
    assert_eq!(
        names(&build(r.path(), &r.path().join("labels")).expect("build")),
        ["a"]
    );
    let msg = err(&r, "two").to_string();
    assert!(msg.contains("Found multiple kustomization files"), "{msg}");
    let msg = err(&r, "outer").to_string();
    assert!(msg.contains("kustomization.yaml is empty"), "{msg}");
    // The root is never "empty" (kustomize-controller adds buildMetadata).
    assert!(build(r.path(), &r.path().join("outer/empty"))
        .expect("build")
        .is_empty());
    let msg = err(&r, "wrongkind").to_string();
    assert!(
        msg.contains("kind should be Kustomization or Component"),
        "{msg}"
    );
}

#[test]
fn nothing_outside_the_artifact_is_read() {
    let t = tree(&[
        ("outside.yaml", &cm("outside")),
        (
            "repo/app/kustomization.yaml",
            "resources: [../../outside.yaml]\n",
        ),
        (
            "repo/git/kustomization.yaml",
            "resources: [../.git/x.yaml]\n",
        ),
        ("repo/.git/x.yaml", &cm("x")),
    ]);
    let repo = t.path().join("repo");
    let e = build(&repo, &repo.join("app")).expect_err("outside");
    assert!(
        e.to_string()
            .ends_with("outside.yaml' is not in or below the repository root"),
        "{e}"
    );
    let e = build(&repo, &repo.join("git")).expect_err("excluded");
    assert!(
        e.to_string()
            .ends_with("open .git/x.yaml: no such file or directory"),
        "{e}"
    );
}

#[test]
fn every_kustomization_of_the_lab_repository_builds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/repository/repo");
    let mut queue = vec![("kubernetes/flux/cluster".to_string(), None::<String>)];
    let mut built = 0;
    let mut namespaces = Vec::new();
    while let Some((path, target)) = queue.pop() {
        let docs = build_for(&repo, &repo.join(&path), target.as_deref())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        built += 1;
        for d in docs {
            let kind = str_at(&d.value, "/kind");
            if kind == "Namespace" {
                namespaces.push(str_at(&d.value, "/metadata/name").to_string());
            }
            if kind == "Kustomization" {
                let p = str_at(&d.value, "/spec/path").trim_start_matches("./");
                let t = str_at(&d.value, "/spec/targetNamespace");
                queue.push((p.to_string(), Some(t.to_string()).filter(|t| !t.is_empty())));
            }
        }
    }
    assert!(built > 10, "only {built} builds");
    namespaces.sort();
    assert_eq!(
        namespaces,
        [
            "cert-manager",
            "database",
            "default",
            "flux-system",
            "kube-system",
            "network",
            "security",
            "storage"
        ]
    );
}
