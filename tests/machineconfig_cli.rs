//! The `gen secrets`, `gen config` and `validate` runners on real files.

use std::path::PathBuf;

use endsys_bootstrap::cli::gen::*;
use endsys_bootstrap::machineconfig::Vars;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn defn() -> DefinitionArgs {
    DefinitionArgs {
        config: root().join("machineconfigs/talconfig.yaml"),
        env: vec![],
        secrets: root().join("tests/fixtures/machineconfig/secrets.yaml"),
        age_key: None,
    }
}

#[test]
fn gen_config_writes_private_files_with_talhelper_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clusterconfig");
    let args = GenConfigArgs {
        definition: defn(),
        out: out.clone(),
    };
    let secrets = SecretsInput::File(defn().secrets);
    let report = run_gen_config(&args, &secrets, Vars::new()).unwrap();
    let mut names: Vec<_> = report
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kubernetes-kube1.yaml",
            "kubernetes-kube2.yaml",
            "kubernetes-kube3.yaml",
            "talosconfig"
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in &report.files {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    let golden = std::fs::read_to_string(
        root().join("tests/fixtures/machineconfig/golden/kubernetes-kube1.yaml"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("kubernetes-kube1.yaml")).unwrap(),
        golden
    );
}

#[test]
fn validate_passes_on_endsys_and_explicit_env_paths_work() {
    let mut d = defn();
    d.env = vec![root().join("machineconfigs/talenv.yaml")];
    let w = run_validate(
        &ValidateArgs {
            definition: d.clone(),
        },
        &SecretsInput::File(d.secrets.clone()),
        Vars::new(),
    )
    .unwrap();
    assert!(w.is_empty());
    // A talenv file named with --env that does not exist is an error naming it
    // (it used to be skipped silently, leaving the variables unset).
    d.env = vec![root().join("does-not-exist.yaml")];
    let e = run_validate(
        &ValidateArgs {
            definition: d.clone(),
        },
        &SecretsInput::File(d.secrets.clone()),
        Vars::new(),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string()
            .contains("does-not-exist.yaml: does not exist"),
        "{e}"
    );
}

#[test]
fn gen_secrets_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("talsecret.yaml");
    std::fs::write(&out, "existing").unwrap();
    let e = run_gen_secrets(&GenSecretsArgs { out: out.clone() }).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "existing");
}

#[test]
fn secrets_can_come_as_decrypted_text() {
    let text = std::fs::read_to_string(defn().secrets).unwrap();
    let input = SecretsInput::Text {
        text,
        source: PathBuf::from("talos/talsecret.sops.yaml"),
    };
    let d = defn();
    run_validate(&ValidateArgs { definition: d }, &input, Vars::new()).unwrap();
}
