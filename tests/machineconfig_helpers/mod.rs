//! Helpers shared by the machineconfig_talhelper* test targets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use endsys_bootstrap::cli::gen::{run_validate, DefinitionArgs, SecretsInput, ValidateArgs};
use endsys_bootstrap::machineconfig::*;
use serde_yaml_ng::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machineconfig")
}

pub fn secrets() -> SecretsBundle {
    let p = root().join("secrets.yaml");
    SecretsBundle::from_yaml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap()
}

pub fn y(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

/// A definition from text, patch files from memory (`dir/<name>`).
pub fn def_in(text: &str, files: &[(&str, &str)]) -> ClusterDefinition {
    let dir = PathBuf::from("/mem/def");
    let reader = MemPatchReader(
        files
            .iter()
            .map(|(n, t)| (dir.join(n), t.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    let mut vars = Vars::new();
    vars.set("featureGates", "A=true");
    ClusterDefinition::from_text(text, &dir.join("talconfig.yaml"), &vars, &reader)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn render(def: &ClusterDefinition) -> Vec<RenderedConfig> {
    render_all(def, &secrets()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn kinds(c: &RenderedConfig) -> Vec<String> {
    c.documents
        .iter()
        .map(|d| {
            d.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("v1alpha1")
                .to_string()
        })
        .collect()
}

pub fn find<'a>(c: &'a RenderedConfig, kind: &str, name: &str) -> &'a Value {
    c.documents
        .iter()
        .find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && (name.is_empty() || d.get("name").and_then(Value::as_str) == Some(name))
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(c)))
}

pub const HEAD: &str =
    "clusterName: c\nkubernetesVersion: v1.36.0\nendpoint: https://192.0.2.10:6443\n";

pub fn cp(extra: &str) -> String {
    format!("  - hostname: cp1\n    ipAddress: 192.0.2.11\n    controlPlane: true\n    installDisk: /dev/sda\n{extra}")
}

/// Loads a definition from disk the way `gen config` does and validates it.
pub fn validate_dir(dir: &Path) -> Result<Vec<Finding>, ConfigError> {
    let args = ValidateArgs {
        definition: DefinitionArgs {
            config: dir.join("talconfig.yaml"),
            env: vec![],
            secrets: root().join("secrets.yaml"),
            age_key: None,
        },
    };
    run_validate(
        &args,
        &SecretsInput::File(root().join("secrets.yaml")),
        Vars::new(),
    )
}
