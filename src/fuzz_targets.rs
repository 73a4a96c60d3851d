//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), one per parser of
//! the operator's input, as plain functions: the fuzzer calls them with random
//! bytes, and `tests/bad_inputs.rs` calls them over the seed corpus so that
//! `cargo test` runs them too. Each must return without panicking on any input;
//! where the parser refuses input, the error must be an input error (exit code 2)
//! that names the file.

use std::path::Path;
use std::sync::OnceLock;

use crate::machineconfig::{
    patch, render_all, talosconfig, validate_all, ClusterDefinition, ConfigError, MemPatchReader,
    RenderedConfig, SecretsBundle, Vars,
};
use crate::Doctor;

/// A valid bundle for rendering (a test fixture: keys of no cluster).
const FIXTURE_SECRETS: &str = include_str!("../tests/fixtures/machineconfig/secrets.yaml");

/// A definition the talenv target substitutes into.
const TALENV_TALCONFIG: &str = "clusterName: ${clusterName:-fuzz}\ntalosVersion: ${talosVersion}\nkubernetesVersion: ${kubernetesVersion}\nendpoint: https://10.5.0.10:6443\nnodes:\n  - hostname: cp1\n    ipAddress: ${cp1Address:-10.5.0.11}\n    controlPlane: true\n    installDisk: ${disk:-/dev/sda}\n";

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn secrets() -> &'static SecretsBundle {
    static S: OnceLock<SecretsBundle> = OnceLock::new();
    S.get_or_init(|| {
        SecretsBundle::from_yaml(FIXTURE_SECRETS, Path::new("secrets.yaml"))
            .unwrap_or_else(|e| panic!("the fixture bundle is valid: {e}"))
    })
}

/// An input error naming `file`: what every refusal of operator input must be.
fn assert_input_error(e: &ConfigError, file: &str) {
    assert_eq!(e.exit_code(), 2, "not an input error: {}", e.explain());
    if let Some(l) = e.location() {
        assert!(
            l.file.ends_with(file) || l.file.ends_with("talconfig.yaml"),
            "error names {} instead of {file}: {e}",
            l.file.display()
        );
    }
}

/// Loads, renders, validates and builds the talosconfig of a definition.
fn definition_pipeline(def: &ClusterDefinition) {
    let configs = match render_all(def, secrets()) {
        Ok(c) => c,
        Err(e) => return assert_input_error(&e, "talconfig.yaml"),
    };
    if let Err(e) = validate_all(def, &configs) {
        assert_input_error(&e, "talconfig.yaml");
        return;
    }
    // What passes validation must give files inside the output folder, and
    // text that reads back as the documents it was written from.
    for c in &configs {
        assert_reads_back(&c.yaml, &c.documents);
        assert!(
            !c.file_name.contains('/') && !c.file_name.starts_with('.'),
            "output file name {:?} escapes the folder",
            c.file_name
        );
    }
    if let Err(e) = talosconfig::for_cluster(def, secrets()) {
        panic!("talosconfig of a valid definition failed: {e}");
    }
}

/// The emitted YAML parses back to `docs` (the emitter is this tool's own).
fn assert_reads_back(text: &str, docs: &[serde_yaml_ng::Value]) {
    let back: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(serde::Deserialize::deserialize)
        .collect::<Result<_, serde_yaml_ng::Error>>()
        .unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
    assert!(
        back.as_slice() == docs,
        "emitted YAML reads back differently:\n{text}\nwant {docs:?}\ngot  {back:?}"
    );
}

/// `talconfig.yaml` (with talhelper substitution, empty environment).
pub fn talconfig(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let mut vars = Vars::new();
    vars.set("talosVersion", "v1.13.9");
    vars.set("kubernetesVersion", "v1.35.3");
    match ClusterDefinition::from_text(
        raw,
        Path::new("talconfig.yaml"),
        &vars,
        &MemPatchReader::default(),
    ) {
        Ok(def) => definition_pipeline(&def),
        Err(e) => assert_input_error(&e, "talconfig.yaml"),
    }
}

/// `talenv.yaml`, substituted into a fixed definition.
pub fn talenv(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let mut vars = Vars::new();
    if let Err(e) = vars.load_talenv(raw, Path::new("talenv.yaml")) {
        return assert_input_error(&e, "talenv.yaml");
    }
    match ClusterDefinition::from_text(
        TALENV_TALCONFIG,
        Path::new("talconfig.yaml"),
        &vars,
        &MemPatchReader::default(),
    ) {
        Ok(def) => definition_pipeline(&def),
        Err(e) => assert_input_error(&e, "talconfig.yaml"),
    }
}

/// A secrets bundle (`talsecret.yaml`, decrypted).
pub fn secrets_bundle(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    match SecretsBundle::from_yaml(raw, Path::new("talsecret.yaml")) {
        // A bundle that loads can issue the admin certificate.
        Ok(b) => {
            if let Err(e) = b.os_ca() {
                panic!("a bundle that passed its checks has a bad OS CA: {e}");
            }
        }
        Err(e) => assert_input_error(&e, "talsecret.yaml"),
    }
}

fn base_configs() -> &'static [RenderedConfig] {
    static C: OnceLock<Vec<RenderedConfig>> = OnceLock::new();
    C.get_or_init(|| {
        let mut vars = Vars::new();
        vars.set("talosVersion", "v1.13.9");
        vars.set("kubernetesVersion", "v1.35.3");
        ClusterDefinition::from_text(
            &TALENV_TALCONFIG.replace("${clusterName:-fuzz}", "fuzz"),
            Path::new("talconfig.yaml"),
            &vars,
            &MemPatchReader::default(),
        )
        .and_then(|def| render_all(&def, secrets()))
        .unwrap_or_else(|e| panic!("the base definition renders: {e}"))
    })
}

/// A patch file (strategic merge or RFC 6902), applied to a rendered config.
pub fn patch(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let src = patch::source(Path::new("patch.yaml"), raw);
    let loaded = match patch::LoadedPatch::load(&src) {
        Ok(p) => p,
        Err(e) => return assert_input_error(&e, "patch.yaml"),
    };
    let mut docs = base_configs()[0].documents.clone();
    if let Err(e) = loaded.apply(&mut docs) {
        return assert_input_error(&e, "patch.yaml");
    }
    // What a patch leaves must be written out faithfully (NaN never equals itself).
    if !format!("{docs:?}").contains("NaN") {
        for d in docs.iter_mut() {
            crate::machineconfig::yaml::canonicalize(d);
        }
        let text = crate::machineconfig::yaml::emit_documents(&docs, 2);
        assert_reads_back(&text, &docs);
    }
}

fn age_identities() -> &'static crate::sops::AgeIdentities {
    static I: OnceLock<crate::sops::AgeIdentities> = OnceLock::new();
    I.get_or_init(|| {
        // The key of the SOPS fixtures, so seeds encrypted for it decrypt.
        crate::sops::AgeIdentities::parse(
            include_str!("../tests/fixtures/sops/key.txt"),
            "fuzz key",
        )
        .unwrap_or_else(|e| panic!("the fixture age key is valid: {e}"))
    })
}

/// A SOPS-encrypted YAML file, and `.sops.yaml` creation rules.
pub fn sops_file(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let path = Path::new("secret.sops.yaml");
    let _ = crate::sops::is_sops_yaml(raw);
    if let Err(e) = crate::sops::decrypt_yaml(raw, age_identities(), path) {
        assert!(
            e.to_string().contains("secret.sops.yaml"),
            "SOPS error does not name the file: {e}"
        );
    }
    let _ = crate::sops::SopsConfig::parse(raw, Path::new("/repo/.sops.yaml"));
}

/// A manifest file of the Flux tree, and a layer-override file.
pub fn flux_tree(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    if let Err(e) = crate::gitops::walk::split_docs(Path::new("ks.yaml"), raw) {
        assert!(e.to_string().contains("ks.yaml"), "error without file: {e}");
    }
    let mut layers = crate::gitops::LayerMap::endsys();
    let _ = layers.apply_overrides(raw, Path::new("layers.yaml"));
}

/// The JSON sidecar of an etcd snapshot.
pub fn sidecar(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    if let Ok(meta) = crate::snapshot::parse_sidecar(raw) {
        let _ = meta.kubernetes.describe();
    }
}

/// A machine config given to `talos apply --file`.
pub fn machine_config(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    if let Err(e) =
        crate::machineconfig::config_file::parse_machine_config(raw, Path::new("node.yaml"))
    {
        assert_input_error(&e, "node.yaml");
    }
}

/// A target body: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus test and the fuzz script.
pub const TARGETS: &[(&str, Target)] = &[
    ("talconfig", talconfig),
    ("talenv", talenv),
    ("secrets_bundle", secrets_bundle),
    ("patch", patch),
    ("sops_file", sops_file),
    ("flux_tree", flux_tree),
    ("sidecar", sidecar),
    ("machine_config", machine_config),
];
