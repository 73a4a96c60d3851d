//! `gen secrets`, `gen config` and `validate`: argument types and thin runners over
//! [`crate::machineconfig`]. Paths default to the endsys layout (`talos/…`).
//!
//! SOPS is not handled here: the runners take the bundle as plain YAML. When the
//! secrets file is SOPS-encrypted, the caller decrypts it (see `crate::sops`) and
//! passes the text through [`SecretsInput::Text`].

use std::path::{Path, PathBuf};

use clap::Args;

use crate::machineconfig::{
    render_all, validate_all, ClusterDefinition, ConfigError, DefinitionPaths, Finding,
    SecretsBundle, Vars,
};

/// Where the cluster definition lives.
#[derive(Debug, Clone, Args)]
pub struct DefinitionArgs {
    /// talhelper cluster definition.
    #[arg(long = "config", default_value = "talos/talconfig.yaml")]
    pub config: PathBuf,
    /// talenv file(s) with the variables talconfig refers to; default: talenv.yaml beside it.
    #[arg(long = "env")]
    pub env: Vec<PathBuf>,
    /// Secrets bundle, SOPS-encrypted or plain (talos/talsecret.yaml is read when only it exists).
    #[arg(long = "secrets", default_value = DEFAULT_SECRETS)]
    pub secrets: PathBuf,
    /// The age key for SOPS-encrypted talenv, patch and manifest files: the verb's
    /// `--age-key`, set by the caller (None: where sops looks).
    #[arg(skip)]
    pub age_key: Option<PathBuf>,
}

/// The one default secrets bundle path: `gen secrets` writes it, every other verb
/// reads it (talhelper's layout, encrypted for the repository's `.sops.yaml`).
pub const DEFAULT_SECRETS: &str = "talos/talsecret.sops.yaml";
/// Where `gen secrets` writes when no `.sops.yaml` rule covers [`DEFAULT_SECRETS`].
pub const DEFAULT_PLAIN_SECRETS: &str = "talos/talsecret.yaml";

impl DefinitionArgs {
    /// The bundle to read: `--secrets`, except that the default falls back to the
    /// plain `talos/talsecret.yaml` that `gen secrets` writes without a SOPS rule.
    pub fn secrets_path(&self) -> PathBuf {
        if self.secrets == Path::new(DEFAULT_SECRETS)
            && self.secrets.symlink_metadata().is_err()
            && Path::new(DEFAULT_PLAIN_SECRETS).is_file()
        {
            return PathBuf::from(DEFAULT_PLAIN_SECRETS);
        }
        self.secrets.clone()
    }

    pub fn paths(&self) -> DefinitionPaths {
        let mut p = DefinitionPaths::beside(&self.config);
        if !self.env.is_empty() {
            p.talenv = self.env.clone();
            p.talenv_required = true;
        }
        p.age_key = self.age_key.clone();
        p
    }
}

#[derive(Debug, Clone, Args)]
pub struct GenSecretsArgs {
    /// Where to write the bundle; refused if it exists. A `*.sops.yaml` target is encrypted for its `.sops.yaml` rule; by default, without a rule, the bundle goes to talos/talsecret.yaml in plain text (said so).
    #[arg(long = "out", default_value = DEFAULT_SECRETS)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct GenConfigArgs {
    #[command(flatten)]
    pub definition: DefinitionArgs,
    /// Output folder for `<cluster>-<hostname>.yaml` and `talosconfig`.
    #[arg(long = "out", default_value = "talos/clusterconfig")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub definition: DefinitionArgs,
}

/// The bundle's YAML: from a file, or already decrypted by the caller.
#[derive(Debug, Clone)]
pub enum SecretsInput {
    File(PathBuf),
    Text { text: String, source: PathBuf },
}

impl SecretsInput {
    pub fn load(&self) -> Result<SecretsBundle, ConfigError> {
        match self {
            SecretsInput::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::io(p, e))?;
                SecretsBundle::from_yaml(&text, p)
            }
            SecretsInput::Text { text, source } => SecretsBundle::from_yaml(text, source),
        }
    }
}

/// Writes a file readable only by its owner (atomically, via the talosconfig writer).
pub fn write_private(path: &Path, contents: &str) -> Result<(), ConfigError> {
    crate::talos::talosconfig::write_private(path, contents.as_bytes())
        .map_err(|e| ConfigError::io(path, e))
}

/// The refusal when a secrets bundle is already at `path`.
fn bundle_exists(path: &Path) -> ConfigError {
    ConfigError::input(
        path,
        0,
        "a secrets bundle already exists here; refusing to overwrite it",
        "a running cluster is bound to its bundle: keep it, or move it away explicitly if you really mean to start a new cluster",
    )
}

/// Writes a new secrets file (0600) that must not replace anything: refused if
/// `path` exists, also when it appeared while the bundle was being generated
/// (two `gen secrets` at once: one wins, the other says so).
pub fn write_new_secret_file(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    endsys_core::fs::write_new_private(path, contents).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            bundle_exists(path)
        } else {
            ConfigError::io(path, e)
        }
    })
}

/// `gen secrets`: a new bundle, never over an existing one.
pub fn run_gen_secrets(args: &GenSecretsArgs) -> Result<PathBuf, ConfigError> {
    // Checked first too: generating takes seconds, and refusing early is kinder.
    if args.out.symlink_metadata().is_ok() {
        return Err(bundle_exists(&args.out));
    }
    let bundle = SecretsBundle::generate()?;
    write_new_secret_file(&args.out, bundle.to_yaml().as_bytes())?;
    Ok(args.out.clone())
}

/// What `gen config` wrote.
#[derive(Debug, Clone)]
pub struct GenConfigReport {
    pub files: Vec<PathBuf>,
    pub warnings: Vec<Finding>,
}

/// `gen config`: renders, validates, then writes every node's config and the
/// talosconfig (0600, folder 0700). Nothing is written if validation fails.
pub fn run_gen_config(
    args: &GenConfigArgs,
    secrets: &SecretsInput,
    vars: Vars,
) -> Result<GenConfigReport, ConfigError> {
    let def = ClusterDefinition::load(&args.definition.paths(), vars)?;
    let bundle = secrets.load()?;
    let configs = render_all(&def, &bundle)?;
    let warnings = validate_all(&def, &configs)?;
    let talosconfig = crate::machineconfig::talosconfig::for_cluster(&def, &bundle)?;
    std::fs::create_dir_all(&args.out).map_err(|e| ConfigError::io(&args.out, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.out, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ConfigError::io(&args.out, e))?;
    }
    let mut files = Vec::new();
    for c in &configs {
        let p = args.out.join(&c.file_name);
        write_private(&p, &c.yaml)?;
        files.push(p);
    }
    let p = args.out.join("talosconfig");
    write_private(
        &p,
        &crate::machineconfig::talosconfig::to_yaml(&talosconfig),
    )?;
    files.push(p);
    Ok(GenConfigReport { files, warnings })
}

/// `validate`: loads, renders in memory and runs every check. Returns the warnings;
/// errors come back as [`ConfigError::Validation`] (exit code 2).
pub fn run_validate(
    args: &ValidateArgs,
    secrets: &SecretsInput,
    vars: Vars,
) -> Result<Vec<Finding>, ConfigError> {
    let def = ClusterDefinition::load(&args.definition.paths(), vars)?;
    let bundle = secrets.load()?;
    let configs = render_all(&def, &bundle)?;
    validate_all(&def, &configs)
}

/// Reads the secrets bundle for `gen config` / `validate`, decrypting SOPS files in
/// process (the cleartext never touches the disk).
pub fn secrets_input(
    definition: &DefinitionArgs,
    age_key: Option<&Path>,
) -> Result<SecretsInput, super::CliError> {
    if let Some(e) = definition_problem(&definition.config) {
        return Err(super::CliError::Usage(e));
    }
    let path = &definition.secrets_path();
    let text = crate::limits::read_text(path, crate::limits::MAX_INPUT_BYTES).map_err(|p| {
        let next = match p {
            crate::limits::InputProblem::NotFound => {
                "pass --secrets, or create one with `gen secrets`"
            }
            _ => p.hint(),
        };
        super::CliError::Usage(format!(
            "{}: cannot read the secrets bundle: it {}\n  next action: {next}",
            path.display(),
            p.message()
        ))
    })?;
    if !crate::sops::is_sops_yaml(&text) {
        return Ok(SecretsInput::Text {
            text,
            source: path.to_path_buf(),
        });
    }
    let ids = crate::sops::AgeIdentities::load(age_key)
        .map_err(|e| super::CliError::Sops(Box::new(e)))?;
    let clear = crate::sops::decrypt_yaml(&text, &ids, path)
        .map_err(|e| super::CliError::Sops(Box::new(e)))?;
    Ok(SecretsInput::Text {
        text: clear,
        source: path.to_path_buf(),
    })
}

/// Why the cluster definition at `config` cannot be read (not found, a folder, a
/// link loop, no permission), as a message with its next action; None when it can.
pub fn definition_problem(config: &Path) -> Option<String> {
    let p = crate::limits::check_file(config)?;
    Some(match p {
        crate::limits::InputProblem::NotFound => format!(
            "{}: cluster definition not found\n  next action: run from the repository root (talos/talconfig.yaml) or pass --config",
            config.display()
        ),
        p => format!(
            "{}: the cluster definition {}\n  next action: {}",
            config.display(),
            p.message(),
            p.hint()
        ),
    })
}

/// Finds the `.sops.yaml` that governs `file`: in its folder or any parent.
pub fn find_sops_config(file: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(file).ok()?;
    let mut dir = abs.parent();
    while let Some(d) = dir {
        let candidate = d.join(".sops.yaml");
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = d.parent();
    }
    None
}

/// The `.sops.yaml` creation rule for `out`, or why there is none (no
/// `.sops.yaml` above it, or no rule matching it). A `.sops.yaml` that cannot be
/// read is an error.
fn sops_rule_for(out: &Path) -> Result<Result<crate::sops::CreationRule, String>, super::CliError> {
    let Some(cfg_path) = find_sops_config(out) else {
        return Ok(Err("no .sops.yaml found in its folder or above".into()));
    };
    let sops_cfg =
        crate::sops::SopsConfig::load(&cfg_path).map_err(|e| super::CliError::Sops(Box::new(e)))?;
    match sops_cfg.rule_for(out) {
        Ok(rule) => Ok(Ok(rule.clone())),
        Err(crate::sops::SopsError::NoMatchingRule { .. }) => Ok(Err(format!(
            "no creation rule in {} matches it",
            cfg_path.display()
        ))),
        Err(e) => Err(super::CliError::Sops(Box::new(e))),
    }
}

/// `gen secrets`: writes a new bundle; a `*.sops.yaml` target is encrypted for the
/// recipients of the matching `.sops.yaml` creation rule, as `sops -e` would.
pub fn run_gen_secrets_cli(args: &GenSecretsArgs) -> Result<PathBuf, super::CliError> {
    let name = args
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !name.ends_with(".sops.yaml") {
        return run_gen_secrets(args).map_err(|e| super::CliError::Config(Box::new(e)));
    }
    if args.out.exists() {
        return run_gen_secrets(args).map_err(|e| super::CliError::Config(Box::new(e)));
    }
    // The readers fall back to the plain bundle: a new encrypted one beside it
    // would silently replace the bundle a cluster may be bound to.
    if args.out == Path::new(DEFAULT_SECRETS) && Path::new(DEFAULT_PLAIN_SECRETS).exists() {
        return Err(super::CliError::Usage(format!(
            "{DEFAULT_PLAIN_SECRETS}: a plain secrets bundle already exists; refusing to make a second one\n  next action: encrypt it in place (`sops -e {DEFAULT_PLAIN_SECRETS} > {DEFAULT_SECRETS}`, then remove the plain file), or move it away if you really mean to start a new cluster"
        )));
    }
    let rule = match sops_rule_for(&args.out)? {
        Ok(rule) => rule,
        // The default target without a rule: a plain bundle beside it, said so.
        Err(why) if args.out == Path::new(DEFAULT_SECRETS) => {
            let plain = GenSecretsArgs {
                out: PathBuf::from(DEFAULT_PLAIN_SECRETS),
            };
            eprintln!(
                "note: {why}; writing the bundle unencrypted to {} (every verb reads it when {} is absent). Encrypt it with sops before committing it.",
                plain.out.display(),
                DEFAULT_SECRETS
            );
            return run_gen_secrets(&plain).map_err(|e| super::CliError::Config(Box::new(e)));
        }
        Err(why) => {
            return Err(super::CliError::Usage(format!(
                "{}: {why}, so there are no recipients to encrypt for\n  next action: add a .sops.yaml creation rule for it, or write a plain bundle (e.g. --out {DEFAULT_PLAIN_SECRETS})",
                args.out.display()
            )))
        }
    };
    let bundle = SecretsBundle::generate().map_err(|e| super::CliError::Config(Box::new(e)))?;
    let encrypted = crate::sops::encrypt_yaml_named(
        &bundle.to_yaml(),
        &rule.recipients,
        &rule.rules,
        &args.out,
    )
    .map_err(|e| super::CliError::Sops(Box::new(e)))?;
    write_new_secret_file(&args.out, encrypted.as_bytes())
        .map_err(|e| super::CliError::Config(Box::new(e)))?;
    Ok(args.out.clone())
}
