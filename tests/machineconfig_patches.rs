//! Patch semantics: strategic merge (maps merge, lists append, replace-lists,
//! `$patch: delete`), RFC 6902 remove/replace/add, and talhelper's order.

use std::path::Path;

use endsys_bootstrap::machineconfig::patch::{apply_all, source};
use endsys_bootstrap::machineconfig::*;
use serde_yaml_ng::Value;

fn y(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

fn base() -> Vec<Value> {
    vec![
        y("machine:\n  certSANs: [a]\n  kubelet:\n    image: k\n  sysctls:\n    x: '1'\ncluster:\n  network:\n    podSubnets: [10.244.0.0/16]\n  apiServer:\n    image: api\n    admissionControl:\n      - name: PodSecurity\n        configuration: {kind: P}\n      - name: Other\n"),
        y("apiVersion: v1alpha1\nkind: HostnameConfig\nauto: stable\n"),
    ]
}

fn apply(docs: &mut Vec<Value>, text: &str) -> Result<(), ConfigError> {
    apply_all(docs, &[source(Path::new("p.yaml"), text)])
}

#[test]
fn maps_merge_and_lists_append() {
    let mut d = base();
    apply(
        &mut d,
        "machine:\n  certSANs: [b]\n  sysctls:\n    y: '2'\n  kubelet:\n    extraArgs: {a: b}\n",
    )
    .unwrap();
    assert_eq!(d[0]["machine"]["certSANs"], y("[a, b]"));
    assert_eq!(d[0]["machine"]["sysctls"], y("{x: '1', y: '2'}"));
    assert_eq!(
        d[0]["machine"]["kubelet"],
        y("{image: k, extraArgs: {a: b}}")
    );
}

#[test]
fn subnets_are_replaced_not_appended() {
    let mut d = base();
    apply(
        &mut d,
        "cluster:\n  network:\n    podSubnets: [10.42.0.0/16]\n",
    )
    .unwrap();
    assert_eq!(
        d[0]["cluster"]["network"]["podSubnets"],
        y("[10.42.0.0/16]")
    );
}

#[test]
fn booleans_replace_even_when_false() {
    let mut d = base();
    apply(&mut d, "debug: true\n").unwrap();
    apply(&mut d, "debug: false\n").unwrap();
    assert_eq!(d[0]["debug"], Value::Bool(false));
}

#[test]
fn patch_delete_removes_keys_list_items_and_documents() {
    let mut d = base();
    apply(&mut d, "cluster:\n  apiServer:\n    admissionControl:\n      - name: Other\n        $patch: delete\n").unwrap();
    assert_eq!(
        d[0]["cluster"]["apiServer"]["admissionControl"]
            .as_sequence()
            .unwrap()
            .len(),
        1
    );
    apply(
        &mut d,
        "cluster:\n  apiServer:\n    admissionControl:\n      $patch: delete\n",
    )
    .unwrap();
    assert!(d[0]["cluster"]["apiServer"]
        .get("admissionControl")
        .is_none());
    apply(
        &mut d,
        "apiVersion: v1alpha1\nkind: HostnameConfig\n$patch: delete\n",
    )
    .unwrap();
    assert_eq!(d.len(), 1);
}

#[test]
fn admission_plugins_merge_by_name() {
    let mut d = base();
    apply(&mut d, "cluster:\n  apiServer:\n    admissionControl:\n      - name: PodSecurity\n        configuration: {apiVersion: v}\n").unwrap();
    let ac = d[0]["cluster"]["apiServer"]["admissionControl"]
        .as_sequence()
        .unwrap();
    assert_eq!(ac.len(), 2);
    assert_eq!(ac[0]["configuration"], y("{kind: P, apiVersion: v}"));
}

#[test]
fn documents_match_by_kind_and_new_ones_are_appended() {
    let mut d = base();
    apply(&mut d, "apiVersion: v1alpha1\nkind: HostnameConfig\nauto: \"off\"\nhostname: h\n---\napiVersion: v1alpha1\nkind: Layer2VIPConfig\nname: 10.0.0.5\nlink: eth0\n").unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d[1]["hostname"], y("h"));
    assert_eq!(d[2]["kind"], y("Layer2VIPConfig"));
}

#[test]
fn json6902_remove_replace_add_apply_to_the_main_document() {
    let mut d = base();
    apply(&mut d, "- op: remove\n  path: /cluster/apiServer/admissionControl\n- op: replace\n  path: /machine/kubelet/image\n  value: k2\n- op: add\n  path: /machine/certSANs/-\n  value: c\n- op: add\n  path: /machine/nodeLabels\n  value: {a: b}\n").unwrap();
    assert!(d[0]["cluster"]["apiServer"]
        .get("admissionControl")
        .is_none());
    assert_eq!(d[0]["machine"]["kubelet"]["image"], y("k2"));
    assert_eq!(d[0]["machine"]["certSANs"], y("[a, c]"));
    assert_eq!(d[0]["machine"]["nodeLabels"], y("{a: b}"));
    assert_eq!(d.len(), 2, "other documents untouched");
}

#[test]
fn failing_json_patch_names_file_op_and_path() {
    let mut d = base();
    let e = apply(&mut d, "- op: remove\n  path: /cluster/nope\n").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("p.yaml:1:"), "{s}");
    assert!(s.contains("remove /cluster/nope"), "{s}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn talhelper_order_is_group_then_node_then_top_level() {
    let dir = Path::new("/defs");
    let mut files = MemPatchReader::default();
    for (name, value) in [("group", "g"), ("node", "n"), ("top", "t")] {
        files.0.insert(
            dir.join(format!("{name}.yaml")),
            format!("machine:\n  kubelet:\n    image: {value}\n  certSANs: [{value}]\n"),
        );
    }
    let text = "clusterName: c\ntalosVersion: v1.12.6\nkubernetesVersion: v1.35.3\nendpoint: https://10.0.0.10:6443\nnodes:\n  - hostname: n1\n    ipAddress: 10.0.0.11\n    controlPlane: true\n    installDisk: /dev/sda\n    talosImageURL: r/i\n    patches: ['@node.yaml']\npatches: ['@top.yaml']\ncontrolPlane:\n  patches: ['@group.yaml']\n";
    let def = ClusterDefinition::from_text(text, &dir.join("talconfig.yaml"), &Vars::new(), &files)
        .unwrap();
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/machineconfig/secrets.yaml"
    ))
    .unwrap();
    let secrets = SecretsBundle::from_yaml(&s, Path::new("s")).unwrap();
    let c = render_node(&def, &secrets, &def.nodes[0]).unwrap();
    assert_eq!(c.documents[0]["machine"]["certSANs"], y("[g, n, t]"));
    assert_eq!(c.documents[0]["machine"]["kubelet"]["image"], y("t"));
}
