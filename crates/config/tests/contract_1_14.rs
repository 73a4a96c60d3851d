//! Contract 1.14 on the endsys definition: the unmigrated patches are refused the way
//! Talos refuses them, a patch next to its document is refused with file:line, and
//! the base render validates against the 1.14 schema.

mod common;
use common::*;
use endsys_config::machineconfig::*;

fn without(dir: &std::path::Path, patch: &str) {
    let p = dir.join("talconfig.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    let t = t.replace(&format!("    - \"@./patches/{patch}\"\n"), "");
    std::fs::write(&p, t).unwrap();
}

#[test]
fn endsys_1_14_unmigrated_is_refused() {
    let dir = endsys_copy("v1.14.0");
    let def = load(dir.path()).unwrap();
    let err = render_all(&def, &secrets()).unwrap_err().to_string();
    // The RFC 6902 removal comes first (controller patches apply first).
    assert!(
        err.contains("patches/controller/admission-controller-patch.yaml:3:"),
        "{err}"
    );
    assert!(
        err.contains("belongs in KubeAdmissionControlConfig"),
        "{err}"
    );
    // Without it, the strategic patches: every old field with its document.
    without(dir.path(), "controller/admission-controller-patch.yaml");
    let def = load(dir.path()).unwrap();
    let err = render_all(&def, &secrets()).unwrap_err().to_string();
    for want in [
        "patches/controller/cluster.yaml:2) belongs in KubeNodeConfig.taints",
        "cluster.apiServer.extraArgs (",
        "patches/controller/cluster.yaml:4) belongs in KubeAPIServerConfig",
        "patches/global/machine-kubelet.yaml:3) belongs in KubeletConfig",
        "patches/controller/cluster.yaml:10) belongs in KubeCoreDNSConfig",
        "Talos: \".machine.network.nameservers is already set in v1alpha1 config\"",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

#[test]
fn apiserver_extra_args_next_to_document_refused() {
    // Contract 1.14 generates a KubeAPIServerConfig; a patch that still sets
    // cluster.apiServer.extraArgs is refused at its line, with Talos's text.
    let dir = endsys_copy("v1.14.0");
    std::fs::write(
        dir.path().join("patches/controller/apiserver.yaml"),
        "# aggregation\ncluster:\n  apiServer:\n    extraArgs:\n      enable-aggregator-routing: true\n",
    )
    .unwrap();
    let p = dir.path().join("talconfig.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    let t = t.split("\n# Applied last").next().unwrap().to_string()
        + "\ncontrolPlane:\n  patches:\n    - \"@./patches/controller/apiserver.yaml\"\n";
    std::fs::write(&p, t).unwrap();
    let def = load(dir.path()).unwrap();
    let err = render_all(&def, &secrets()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:4: cluster.apiServer.extraArgs belongs in KubeAPIServerConfig",
            dir.path()
                .join("patches/controller/apiserver.yaml")
                .display()
        )),
        "{err}"
    );
    assert!(err.contains(
        "Talos: \"kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)\""
    ));
}

#[test]
fn endsys_base_render_1_14_passes_the_1_14_schema() {
    let dir = endsys_copy("v1.14.0");
    let p = dir.path().join("talconfig.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    let t = t.split("\n# Applied last").next().unwrap().to_string();
    std::fs::write(&p, t).unwrap();
    let def = load(dir.path()).unwrap();
    let r = render_all(&def, &secrets()).unwrap();
    let warnings = validate_all(&def, &r).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}
