//! Every verb has help that parses (clap's debug assertions run on the whole tree)
//! and the exit codes follow the contract: 2 for invalid input.

use assert_cmd::Command;

fn bin() -> Command {
    Command::cargo_bin("endsys-bootstrap").unwrap()
}

#[test]
fn every_verb_has_help() {
    let verbs: &[&[&str]] = &[
        &[],
        &["talos"],
        &["talos", "apply"],
        &["talos", "bootstrap"],
        &["talos", "reset"],
        &["talos", "snapshot"],
        &["gen"],
        &["gen", "secrets"],
        &["gen", "config"],
        &["validate"],
        &["lab", "serve"],
        &["lab", "walkthrough"],
        &["up"],
        &["plan"],
        &["status"],
        &["kubeconfig"],
        &["demo"],
        &["recover"],
    ];
    for v in verbs {
        let mut args: Vec<&str> = v.to_vec();
        args.push("--help");
        let out = bin().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn missing_definition_is_invalid_input() {
    let out = bin()
        .args(["validate", "--config", "/nonexistent/talconfig.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/talconfig.yaml") && err.contains("next action"),
        "{err}"
    );
}

#[test]
fn gen_secrets_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.yaml");
    std::fs::write(&path, "keep me").unwrap();
    let out = bin()
        .args(["gen", "secrets", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn talos_call_to_nothing_explains_itself() {
    // Nothing listens on this loopback address: refused, with cause and next action.
    let out = bin()
        .args([
            "talos",
            "version",
            "--insecure",
            "--endpoint",
            "127.0.250.1",
            "--retry-budget",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("likely cause") && err.contains("rebooting"),
        "{err}"
    );
}

#[test]
fn gitops_help_teaches_the_new_verbs_and_flags() {
    let help = |args: &[&str]| {
        let out = bin().args(args).arg("--help").output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let up = help(&["up"]);
    for want in [
        "--layers",
        "--sync-path",
        "--flux-timeout",
        "--gitops-timeout",
        "flux",
        "all",
        "five layers",
    ] {
        assert!(up.contains(want), "up --help lacks {want}:\n{up}");
    }
    let status = help(&["status"]);
    for want in [
        "--kubeconfig",
        "--cluster",
        "--repo",
        "--layers",
        "not created yet",
    ] {
        assert!(
            status.contains(want),
            "status --help lacks {want}:\n{status}"
        );
    }
    let plan = help(&["plan"]);
    assert!(plan.contains("file:line"), "{plan}");
}
