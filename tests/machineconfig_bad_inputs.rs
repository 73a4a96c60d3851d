//! The bad-input corpus: every broken definition or patch under
//! tests/fixtures/machineconfig/bad gives an error naming the file and line, with
//! exit code 2, and never panics. `expect.txt` holds `<file>:<line>|<text>`.

use std::path::PathBuf;

use endsys_bootstrap::cli::gen::{run_validate, DefinitionArgs, SecretsInput, ValidateArgs};
use endsys_bootstrap::machineconfig::*;
use endsys_bootstrap::Doctor;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machineconfig")
}

fn run_case(dir: &std::path::Path) -> ConfigError {
    let args = ValidateArgs {
        definition: DefinitionArgs {
            config: dir.join("talconfig.yaml"),
            env: vec![],
            secrets: root().join("secrets.yaml"),
            age_key: None,
        },
    };
    let secrets = SecretsInput::File(root().join("secrets.yaml"));
    match std::panic::catch_unwind(|| run_validate(&args, &secrets, Vars::new())) {
        Ok(Ok(w)) => panic!("{}: expected an error, got warnings {w:?}", dir.display()),
        Ok(Err(e)) => e,
        Err(_) => panic!("{}: panicked", dir.display()),
    }
}

#[test]
fn every_broken_input_names_file_and_line_with_exit_code_2() {
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 25, "corpus has only {} cases", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
        let (loc, text) = expect.trim_end().split_once('|').unwrap();
        let (file, line) = loc.rsplit_once(':').unwrap();
        let line: usize = line.parse().unwrap();
        let err = run_case(dir);
        let shown = err.explain();
        let ok = err.exit_code() == 2
            && err
                .location()
                .map(|l| l.file.ends_with(file) && l.line == line)
                .unwrap_or(false)
            && shown.contains(text)
            && shown.contains("\n  next action:  ");
        if !ok {
            failures.push(format!(
                "{}:\n  want {file}:{line} containing {text:?}\n  got  {:?} / {shown}",
                dir.display(),
                err.location()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn lab_def(edit: impl Fn(&str) -> String) -> ClusterDefinition {
    let dir = root().join("workers");
    let text = edit(&std::fs::read_to_string(dir.join("talconfig.yaml")).unwrap());
    let mut vars = Vars::new();
    vars.set("talosVersion", "v1.13.9");
    vars.set("kubernetesVersion", "v1.36.3");
    ClusterDefinition::from_text(&text, &dir.join("talconfig.yaml"), &vars, &FsPatchReader).unwrap()
}

fn secrets() -> SecretsBundle {
    let p = root().join("secrets.yaml");
    SecretsBundle::from_yaml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap()
}

fn cluster_errors(def: &ClusterDefinition) -> Vec<String> {
    let r = render_all(def, &secrets()).unwrap();
    match validate_all(def, &r) {
        Ok(w) => w.iter().map(|f| f.to_string()).collect(),
        Err(e) => {
            assert_eq!(e.exit_code(), 2);
            vec![e.to_string()]
        }
    }
}

#[test]
fn cluster_level_checks_catch_duplicates_overlaps_and_vip_mistakes() {
    let dup = lab_def(|t| t.replace("hostname: w2", "hostname: w1"));
    assert!(cluster_errors(&dup)[0].contains("hostname w1 is used by 2 nodes"));
    let dup_ip = lab_def(|t| t.replace("192.168.50.22", "192.168.50.21"));
    assert!(cluster_errors(&dup_ip)[0].contains("192.168.50.21 is used by both"));
    let overlap = lab_def(|t| {
        t.replace(
            "clusterName: lab",
            "clusterName: lab\nclusterPodNets: [10.0.0.0/8]\nclusterSvcNets: [10.96.0.0/12]",
        )
    });
    assert!(cluster_errors(&overlap)[0].contains("overlaps"));
    let no_cp = lab_def(|t| t.replace("controlPlane: true", "controlPlane: false"));
    assert!(cluster_errors(&no_cp)[0].contains("no control-plane node"));
    let vip_outside = lab_def(|t| {
        t.replace(
            "        dhcp: true",
            "        addresses: [192.168.50.10/24]\n        vip:\n          ip: 192.168.60.5",
        )
    });
    assert!(cluster_errors(&vip_outside)[0].contains("outside the subnet"));
    let vip_is_node = lab_def(|t| {
        t.replace(
            "        dhcp: true",
            "        addresses: [192.168.50.10/24]\n        vip:\n          ip: 192.168.50.21",
        )
    });
    assert!(cluster_errors(&vip_is_node)[0].contains("also a node address"));
    let old_k8s = lab_def(|t| {
        t.replace(
            "kubernetesVersion: ${kubernetesVersion}",
            "kubernetesVersion: v1.29.0",
        )
    });
    assert!(cluster_errors(&old_k8s)[0].contains("not supported by Talos 1.13"));
    let two_cp = lab_def(|t| {
        t.replace("  - hostname: w2\n    ipAddress: 192.168.50.22\n    controlPlane: false", "  - hostname: w2\n    ipAddress: 192.168.50.22\n    controlPlane: true\n    installDisk: /dev/sdb")
    });
    let w = cluster_errors(&two_cp);
    assert!(w.iter().any(|m| m.contains("even count")), "{w:?}");
}

#[test]
fn rendered_config_checks_catch_metal_mode_problems() {
    let def = lab_def(|t| t.to_string());
    let mut r = render_all(&def, &secrets()).unwrap();
    let cfg = &mut r[0].documents[0];
    cfg["machine"]["install"]
        .as_mapping_mut()
        .unwrap()
        .remove("disk");
    cfg["persist"] = serde_yaml_ng::Value::Bool(false);
    let f = validate_config("cp1", &r[0].documents);
    let text: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("needs disk or a diskSelector")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("persist: false")),
        "{text:?}"
    );
}
