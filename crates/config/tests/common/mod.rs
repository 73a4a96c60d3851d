//! Shared helpers: the endsys definition (repository `machineconfigs/`) copied to a
//! temporary directory with another talosVersion, the fixed secrets bundle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use endsys_config::machineconfig::*;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn secrets() -> SecretsBundle {
    let p = repo().join("tests/fixtures/machineconfig/secrets.yaml");
    SecretsBundle::from_yaml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A copy of `machineconfigs/` whose talenv sets `talos_version`.
pub fn endsys_copy(talos_version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("machineconfigs"), dir.path());
    let env = dir.path().join("talenv.yaml");
    let text = std::fs::read_to_string(&env).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("talosVersion:") {
                format!("talosVersion: {talos_version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&env, text).unwrap();
    dir
}

pub fn load(dir: &Path) -> Result<ClusterDefinition, ConfigError> {
    ClusterDefinition::load(
        &DefinitionPaths::beside(&dir.join("talconfig.yaml")),
        Vars::new(),
    )
}

pub fn kinds(c: &RenderedConfig) -> Vec<String> {
    c.documents
        .iter()
        .map(|d| {
            d.get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("v1alpha1")
                .to_string()
        })
        .collect()
}
