//! `migrate --to v1.14`: rewrites the definition's patch files into the contract-1.14
//! documents. By default a preview (a unified diff per file, nothing written); with
//! `--write` the files change (and `talosVersion`, when `--to` names a release). Both
//! render the migrated definition under 1.14 in memory first and refuse unless it
//! validates and describes the same cluster as today's render, field by field.

use std::path::{Path, PathBuf};

use clap::Args;

use super::gen::{self, DefinitionArgs};
use super::{CliError, Output};
use crate::machineconfig::effective::{differences, model, INTENDED_DIFFERENCES};
use crate::machineconfig::envsubst::substitute;
use crate::machineconfig::migrate::{migrate_all, Migrated};
use crate::machineconfig::render::render_all_at;
use crate::machineconfig::{
    render_all, validate_all, ClusterDefinition, ConfigError, Contract, PatchSource, SecretsBundle,
    Vars,
};

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Target contract: `v1.14`, or a release such as `v1.14.0` (with --write, talosVersion is set to it).
    #[arg(long = "to")]
    pub to: String,
    #[command(flatten)]
    pub definition: DefinitionArgs,
    /// Rewrite the patch files (default: print the diff and change nothing).
    #[arg(long)]
    pub write: bool,
    /// age identity file for a SOPS-encrypted secrets bundle (used for the in-memory check only).
    #[arg(long)]
    pub age_key: Option<PathBuf>,
}

/// The target: contract minor and, when given, the full release.
fn target(to: &str) -> Result<(u32, Option<String>), CliError> {
    let v = to.strip_prefix('v').unwrap_or(to);
    let parts: Vec<&str> = v.split('.').collect();
    let minor = match parts.as_slice() {
        ["1", m] | ["1", m, _] => m.parse::<u32>().ok(),
        _ => None,
    };
    match minor {
        Some(14) if parts.len() == 2 => Ok((14, None)),
        Some(14) if crate::machineconfig::checks::release_version(v).is_some() => {
            Ok((14, Some(format!("v{v}"))))
        }
        _ => Err(CliError::Usage(format!(
            "--to {to}: only contract v1.14 (or a v1.14.x release) is a migration target"
        ))),
    }
}

/// The variables the definition was loaded with (process environment, then talenv).
fn vars_for(args: &DefinitionArgs) -> Result<Vars, ConfigError> {
    let mut vars = Vars::from_process_env();
    for env in &args.paths().talenv {
        if let Ok(text) = std::fs::read_to_string(env) {
            vars.load_talenv(&text, env)?;
        }
    }
    Ok(vars)
}

/// Every patch file of the definition, as written on disk.
fn patch_files(def: &ClusterDefinition) -> Result<Vec<PatchSource>, ConfigError> {
    let mut out: Vec<PatchSource> = Vec::new();
    for n in &def.nodes {
        for p in &n.patches {
            if p.file == def.source || out.iter().any(|o| o.file == p.file) {
                continue;
            }
            let text = std::fs::read_to_string(&p.file).map_err(|e| ConfigError::io(&p.file, e))?;
            out.push(PatchSource { text, ..p.clone() });
        }
    }
    Ok(out)
}

/// The definition with the migrated patch texts and the target version, in memory.
fn migrated_definition(
    def: &ClusterDefinition,
    migrated: &[Migrated],
    vars: &Vars,
    version: &str,
) -> Result<ClusterDefinition, ConfigError> {
    let mut out = def.clone();
    out.config.talos_version = Some(version.to_string());
    for n in out.nodes.iter_mut() {
        for p in n.patches.iter_mut() {
            if let Some(m) = migrated.iter().find(|m| m.file == p.file) {
                p.text = substitute(&m.after, vars, &m.file)?;
            }
        }
    }
    Ok(out)
}

/// A line diff of two texts in unified format (whole-file hunk with context).
pub fn unified_diff(path: &Path, before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence table; patch files are small.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!(
        "--- {p}\n+++ {p}\n@@ -1,{} +1,{} @@\n",
        a.len(),
        b.len(),
        p = path.display()
    );
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) shows a change.
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// Sets `talosVersion:` where the definition takes it from (a talenv line, else
/// talconfig.yaml). Returns the file changed.
fn set_talos_version(args: &DefinitionArgs, version: &str) -> Result<Option<PathBuf>, ConfigError> {
    let mut files = args.paths().talenv;
    files.push(args.config.clone());
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let mut changed = false;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                let value = l.strip_prefix("talosVersion:").map(str::trim);
                match value {
                    Some(v) if !v.contains('$') => {
                        changed = true;
                        format!("talosVersion: {version}")
                    }
                    _ => l.to_string(),
                }
            })
            .collect();
        if changed {
            std::fs::write(&f, new.join("\n") + "\n").map_err(|e| ConfigError::io(&f, e))?;
            return Ok(Some(f));
        }
    }
    Ok(None)
}

pub fn run(args: MigrateArgs, out: &Output) -> Result<(), CliError> {
    let cfg = |e: ConfigError| CliError::Config(Box::new(e));
    let (_, release) = target(&args.to)?;
    let vars = vars_for(&args.definition).map_err(cfg)?;
    let def =
        ClusterDefinition::load(&args.definition.paths(), Vars::from_process_env()).map_err(cfg)?;
    let sources = patch_files(&def).map_err(cfg)?;
    let migrated = migrate_all(&sources).map_err(cfg)?;

    // The proof before any write: same cluster, valid under 1.14.
    let bundle = match gen::secrets_input(&args.definition, args.age_key.as_deref())
        .and_then(|s| s.load().map_err(cfg))
    {
        Ok(b) => b,
        Err(_) => {
            out.info(
                "migrate",
                "no readable secrets bundle: comparing with a throwaway one (the comparison does not depend on it)",
            );
            SecretsBundle::generate().map_err(cfg)?
        }
    };
    let version = release.clone().unwrap_or_else(|| "v1.14.0".into());
    // Today's cluster: as rendered now, or — when talosVersion already says 1.14 and
    // the old patches no longer render there — under contract 1.13.
    let before = match render_all(&def, &bundle) {
        Ok(r) => r,
        Err(_) => render_all_at(
            &def,
            &bundle,
            Contract {
                major: 1,
                minor: 13,
            },
        )
        .map_err(cfg)?,
    };
    let def14 = migrated_definition(&def, &migrated, &vars, &version).map_err(cfg)?;
    let after = render_all(&def14, &bundle).map_err(cfg)?;
    let warnings = validate_all(&def14, &after).map_err(cfg)?;
    for w in &warnings {
        out.warn(&w.subject, &w.message);
    }
    let mut problems = Vec::new();
    for (a, b) in before.iter().zip(&after) {
        for (k, l, r) in differences(&model(&a.documents), &model(&b.documents)) {
            if k == "install.image" {
                continue; // the installer tag is the Talos version itself
            }
            problems.push(format!("{}: {k}: {l} → {r}", a.hostname));
        }
    }
    if !problems.is_empty() {
        return Err(CliError::Failed(format!(
            "the migrated definition would describe another cluster:\n  {}\nnothing written; report this (the mapping lacks a field)",
            problems.join("\n  ")
        )));
    }
    for (k, why) in INTENDED_DIFFERENCES {
        out.info("migrate", &format!("by design in 1.14: {k}: {why}"));
    }

    let changed: Vec<&Migrated> = migrated.iter().filter(|m| m.changed()).collect();
    for m in &changed {
        if args.write {
            std::fs::write(&m.file, &m.after).map_err(|e| cfg(ConfigError::io(&m.file, e)))?;
            out.result(
                "migrate",
                "wrote",
                &format!("rewrote {}", m.file.display()),
                serde_json::json!({"path": m.file}),
            );
        } else {
            let diff = unified_diff(&m.file, &m.before, &m.after);
            out.result(
                "migrate",
                "diff",
                diff.trim_end(),
                serde_json::json!({"path": m.file, "diff": diff}),
            );
        }
    }
    let version_file = match (&release, args.write) {
        (Some(v), true) => set_talos_version(&args.definition, v).map_err(cfg)?,
        _ => None,
    };
    let summary = format!(
        "{} of {} patch files {}; {} nodes render the same cluster under contract 1.14{}",
        changed.len(),
        migrated.len(),
        if args.write {
            "rewritten"
        } else {
            "would change (preview; --write to apply)"
        },
        after.len(),
        match &version_file {
            Some(f) => format!("; talosVersion set to {} in {}", version, f.display()),
            None if args.write =>
                "; set talosVersion to a v1.14 release (nodes must run 1.14 first)".into(),
            None => String::new(),
        }
    );
    out.result(
        "migrate",
        "summary",
        &summary,
        serde_json::json!({"changed": changed.len(), "files": migrated.len(), "written": args.write, "nodes": after.len()}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target("v1.14").unwrap(), (14, None));
        assert_eq!(target("v1.14.2").unwrap(), (14, Some("v1.14.2".into())));
        assert!(target("v1.13").is_err());
        assert!(target("v1.14.x").is_err());
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = unified_diff(Path::new("p"), "a\nb\nc\n", "a\nx\nc\n");
        assert!(d.ends_with(" a\n-b\n+x\n c\n"), "{d}");
    }
}
