//! Loading a definition as talhelper does (`th:pkg/config/loader.go`,
//! `nodeconfigs.go` @v3.1.16): talenv (plain or SOPS), envsubst, YAML merge keys,
//! lenient decoding (dropped keys reported), `@file` contents, group merge, then
//! each node's patches in talhelper's order.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::envsubst::{substitute, Vars};
use super::error::{locate_line, ConfigError, Finding, Severity};
use super::gotmpl;
use super::talconfig::{
    read, ClusterDefinition, DefinitionPaths, FsPatchReader, Node, NodeGroup, PatchReader,
    PatchSource, ResolvedNode, TalConfig,
};
use super::unknown_keys::unknown_keys;

/// What loading needs besides the text: variables, the file reader and, for SOPS
/// files, where the age key is (None: `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY`, the
/// default key file, as sops itself looks).
pub struct LoadContext<'a> {
    pub vars: &'a Vars,
    pub reader: &'a dyn PatchReader,
    pub age_key: Option<&'a Path>,
}

impl LoadContext<'_> {
    /// The file's text, decrypted when it is a SOPS file (talhelper's
    /// `DecryptFileWithSops`: plain files are returned as they are).
    fn decrypt(
        &self,
        text: String,
        path: &Path,
        named_at: (&Path, usize),
    ) -> Result<String, ConfigError> {
        if !crate::sops::is_sops_yaml(&text) {
            return Ok(text);
        }
        let sops_err = |e: crate::sops::SopsError| {
            use endsys_core::Doctor;
            // Said from the line that names the file, or from the file itself.
            let what = if named_at.0 == path {
                "cannot decrypt this SOPS file".to_string()
            } else {
                format!("{}: cannot decrypt this SOPS file", path.display())
            };
            ConfigError::input(
                named_at.0,
                named_at.1,
                format!("{what}: {e}"),
                e.next_action(),
            )
        };
        let ids = crate::sops::AgeIdentities::load(self.age_key).map_err(sops_err)?;
        crate::sops::decrypt_yaml(&text, &ids, path).map_err(sops_err)
    }
}

impl ClusterDefinition {
    /// Reads talconfig.yaml and its talenv files from disk. `base_vars` is the
    /// environment to start from (`Vars::from_process_env()` for the CLI, empty in tests).
    pub fn load(paths: &DefinitionPaths, base_vars: Vars) -> Result<Self, ConfigError> {
        let mut vars = base_vars;
        let ctx_vars = Vars::new();
        let ctx = LoadContext {
            vars: &ctx_vars,
            reader: &FsPatchReader,
            age_key: paths.age_key.as_deref(),
        };
        for env in &paths.talenv {
            if paths.talenv_required || env.symlink_metadata().is_ok() {
                let text = ctx.decrypt(read(env)?, env, (env, 0))?;
                vars.load_talenv(&text, env)?;
            }
        }
        let text = read(&paths.talconfig)?;
        let ctx = LoadContext {
            vars: &vars,
            reader: &FsPatchReader,
            age_key: paths.age_key.as_deref(),
        };
        Self::from_text_in(&text, &paths.talconfig, &ctx)
    }

    /// Parses a definition from text. Patch files (`@path`) are read through `reader`.
    pub fn from_text(
        raw: &str,
        source: &Path,
        vars: &Vars,
        reader: &dyn PatchReader,
    ) -> Result<Self, ConfigError> {
        Self::from_text_in(
            raw,
            source,
            &LoadContext {
                vars,
                reader,
                age_key: None,
            },
        )
    }

    /// [`ClusterDefinition::from_text`] with a full [`LoadContext`].
    pub fn from_text_in(raw: &str, source: &Path, ctx: &LoadContext) -> Result<Self, ConfigError> {
        crate::limits::check_text(raw, crate::limits::MAX_INPUT_BYTES)
            .map_err(|p| ConfigError::unreadable(source, p))?;
        let text = substitute(raw, ctx.vars, source)?;
        let (config, warnings) = decode(&text, source)?;
        let mut def = ClusterDefinition {
            config,
            source: source.to_path_buf(),
            text,
            nodes: Vec::new(),
            warnings,
            vars: ctx.vars.clone(),
        };
        def.check_basics()?;
        let version = super::render::talos_version(&def);
        if let Ok(c) = super::contract::Contract::parse(&version) {
            if !c.multidoc_network_config_supported() {
                let line = locate_line(&def.text, &["talosVersion"]);
                def.warnings.push(warning(&def.source, line, format!("talosVersion {version}: configs for contract {}.{} are rendered as talosctl and talhelper do, but this tool's node flows (up, upgrade, reimage) are tested against Talos 1.12 and 1.13 only", c.major, c.minor)));
            }
        }
        def.load_contents(ctx)?;
        def.nodes = def.resolve_nodes(ctx)?;
        let minor = super::contract::Contract::parse(&version)
            .map(|c| c.minor)
            .unwrap_or(13);
        for n in &def.nodes {
            // talhelper emits these documents at every contract; older nodes refuse them.
            if minor < 10 && !n.node.user_volumes.is_empty() {
                def.warnings.push(warning(&def.source, n.line, format!("node {}: userVolumes become UserVolumeConfig documents, which Talos reads from 1.10 on; a {version} node refuses the config", n.hostname())));
            }
            if n.node.install_disk.is_some() && n.node.install_disk_selector.is_some() {
                // Both tools accept it; the installer uses the selector
                // (v1alpha1_sequencer_tasks.go@v1.13.9).
                def.warnings.push(warning(&def.source, n.line, format!("node {}: both installDisk and installDiskSelector are set; Talos installs to the disk the selector matches, installDisk is ignored", n.hostname())));
            }
        }
        Ok(def)
    }

    /// `@file` contents of inlineManifests and machineFiles, read (and decrypted)
    /// at load time, then envsubst unless `skipEnvsubst` (`th:pkg/config/loader.go`).
    fn load_contents(&mut self, ctx: &LoadContext) -> Result<(), ConfigError> {
        let dir = self.dir();
        let source = self.source.clone();
        let text = self.text.clone();
        let read_content =
            |value: &str, skip: bool, at: &[&str]| -> Result<Option<String>, ConfigError> {
                let Some(f) = value.strip_prefix('@') else {
                    return Ok(None);
                };
                let line = locate_line(&text, at);
                let path = dir.join(f.strip_prefix("./").unwrap_or(f));
                let raw = ctx.reader.read(&path).map_err(|e| {
                    ConfigError::input(
                        &source,
                        line,
                        format!("file `{f}` cannot be read: {e}"),
                        "check the path; it is relative to talconfig.yaml's folder",
                    )
                })?;
                let clear = ctx.decrypt(raw, &path, (&source, line))?;
                Ok(Some(if skip {
                    clear
                } else {
                    substitute(&clear, ctx.vars, &path)?
                }))
            };
        for m in self.config.inline_manifests.iter_mut() {
            if let Some(c) = read_content(
                &m.contents,
                m.skip_envsubst,
                &["inlineManifests", "contents"],
            )? {
                m.contents = c;
            }
        }
        let mut groups: Vec<&mut Vec<super::nodeconfigs::MachineFile>> = Vec::new();
        for n in self.config.nodes.iter_mut() {
            groups.push(&mut n.machine_files);
        }
        if let Some(g) = self.config.control_plane.as_mut() {
            groups.push(&mut g.machine_files);
        }
        if let Some(g) = self.config.worker.as_mut() {
            groups.push(&mut g.machine_files);
        }
        for files in groups {
            for f in files.iter_mut() {
                if let Some(c) =
                    read_content(&f.content, f.skip_envsubst, &["machineFiles", "content"])?
                {
                    f.content = c;
                }
            }
        }
        Ok(())
    }

    fn resolve_nodes(&self, ctx: &LoadContext) -> Result<Vec<ResolvedNode>, ConfigError> {
        let c = &self.config;
        let top = self.load_patches(&c.patches, locate_line(&self.text, &["patches"]), ctx)?;
        let group_patches = |g: &Option<NodeGroup>, name: &str| match g {
            Some(g) => {
                self.load_patches(&g.patches, locate_line(&self.text, &[name, "patches"]), ctx)
            }
            None => Ok(Vec::new()),
        };
        let cp_patches = group_patches(&c.control_plane, "controlPlane")?;
        let wk_patches = group_patches(&c.worker, "worker")?;
        let mut out = Vec::new();
        for (i, n) in c.nodes.iter().enumerate() {
            let line = self.node_line(i);
            let (group, group_patches) = if n.control_plane {
                (c.control_plane.clone().unwrap_or_default(), &cp_patches)
            } else {
                (c.worker.clone().unwrap_or_default(), &wk_patches)
            };
            let mut node = n.clone();
            fold_group(&mut node, &group);
            self.check_node(i, &node, line)?;
            let own = self.load_patches(&n.patches, line, ctx)?;
            // mergeNodeConfigs: group then node unless overridePatches; a node that
            // overrides with no patches of its own still gets the group's (its field
            // is zero, so the group's value wins).
            let mut patches = if n.override_patches && !own.is_empty() {
                own
            } else {
                let mut p = group_patches.clone();
                p.extend(own);
                p
            };
            let global_patches_from = patches.len();
            patches.extend(top.iter().cloned());
            let extra_manifests = self.load_manifests(&node.extra_manifests, line, ctx)?;
            out.push(ResolvedNode {
                node,
                patches,
                global_patches_from,
                extra_manifests,
                line,
            });
        }
        Ok(out)
    }

    /// Node `extraManifests`: files relative to talconfig.yaml (with or without `@`),
    /// decrypted when SOPS files, templated against the config at render time.
    fn load_manifests(
        &self,
        list: &[String],
        line: usize,
        ctx: &LoadContext,
    ) -> Result<Vec<PatchSource>, ConfigError> {
        let mut out = Vec::new();
        for entry in list {
            let f = entry.trim().trim_start_matches('@');
            let path = relative_to(&self.dir(), f);
            let raw = ctx.reader.read(&path).map_err(|e| {
                ConfigError::input(
                    &self.source,
                    line,
                    format!("extraManifests: `{f}` cannot be read: {e}"),
                    "check the path; it is relative to talconfig.yaml's folder",
                )
            })?;
            let text = ctx.decrypt(raw, &path, (&self.source, line))?;
            out.push(PatchSource {
                file: path,
                line: 1,
                template: gotmpl::is_template(&text),
                text,
                envsubst_after_template: false,
            });
        }
        Ok(out)
    }

    fn load_patches(
        &self,
        list: &[String],
        line: usize,
        ctx: &LoadContext,
    ) -> Result<Vec<PatchSource>, ConfigError> {
        let mut out = Vec::new();
        for entry in list {
            let trimmed = entry.trim();
            // `@file`; a bare word without spaces is a file name too (Talos's LoadPatches).
            let file = trimmed.strip_prefix('@').or_else(|| {
                (!trimmed.contains(' ')
                    && !trimmed.contains('\n')
                    && !trimmed.starts_with(['[', '{']))
                .then_some(trimmed)
            });
            let Some(f) = file else {
                out.push(PatchSource {
                    file: self.source.clone(),
                    line,
                    text: entry.clone(),
                    // Inline patches are templated, and were substituted with the file.
                    template: gotmpl::is_template(entry),
                    envsubst_after_template: false,
                });
                continue;
            };
            let path = self.dir().join(f.strip_prefix("./").unwrap_or(f));
            let raw = ctx.reader.read(&path).map_err(|e| match e {
                ConfigError::Io { source, .. } => ConfigError::input(
                    &self.source,
                    line,
                    format!("patch file `{f}` cannot be read: {source}"),
                    "check the path; it is relative to talconfig.yaml's folder",
                ),
                // The reader's own verdict (a folder, a loop, binary…), said from
                // the line that names the patch.
                ConfigError::Input {
                    location,
                    message,
                    hint,
                } if location.line == 0 => ConfigError::input(
                    &self.source,
                    line,
                    format!("patch file `{f}` cannot be read: {message}"),
                    hint,
                ),
                other => other,
            })?;
            crate::limits::check_text(&raw, crate::limits::MAX_INPUT_BYTES)
                .map_err(|p| ConfigError::unreadable(&path, p))?;
            let raw = ctx.decrypt(raw, &path, (&self.source, line))?;
            if raw.trim().is_empty() {
                continue; // talhelper skips blank patch files
            }
            if raw.contains("ENC[AES256_GCM") {
                return Err(ConfigError::input(
                    &path,
                    locate_text(&raw, "ENC["),
                    "this patch holds SOPS-encrypted values but no `sops:` metadata to decrypt them with",
                    "encrypt the whole file with sops (so it carries its metadata), or decrypt it",
                ));
            }
            // talhelper renders a patch file's template first, then substitutes
            // talenv variables (`$var` in a template is a template variable).
            let template = gotmpl::is_template(&raw);
            let text = if template {
                raw
            } else {
                substitute(&raw, ctx.vars, &path)?
            };
            out.push(PatchSource {
                file: path,
                line: 1,
                text,
                template,
                envsubst_after_template: template,
            });
        }
        Ok(out)
    }
}

/// Decodes talconfig.yaml leniently: merge keys applied, dropped keys as warnings.
fn decode(text: &str, source: &Path) -> Result<(TalConfig, Vec<Finding>), ConfigError> {
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e, source))?;
    let merged = has_merge_key(&value);
    if merged {
        value.apply_merge().map_err(|e| yaml_error(e, source))?;
    }
    let warnings = unknown_keys(&value, source, text);
    let config = if merged {
        // Line numbers are gone once merged; the error still names the field.
        serde_yaml_ng::from_value(value).map_err(|e| yaml_error(e, source))?
    } else {
        super::yaml::parse_strict(text, source)?
    };
    Ok((config, warnings))
}

fn yaml_error(e: serde_yaml_ng::Error, source: &Path) -> ConfigError {
    let line = e.location().map(|l| l.line()).unwrap_or(0);
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    ConfigError::input(
        source,
        line,
        msg,
        "check the YAML syntax and the value's type at that line",
    )
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

fn locate_text(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// talhelper's `mergeNodeConfigs`: certSANs and extraManifests are node then group
/// (unless overridden); every other field is the node's when set, otherwise the
/// group's — maps and lists are replaced whole, never merged.
fn fold_group(node: &mut Node, g: &NodeGroup) {
    fn pick<T: Clone + Default + PartialEq>(n: &mut T, g: &T) {
        if *n == T::default() {
            *n = g.clone();
        }
    }
    if node.install_disk.is_none() && node.install_disk_selector.is_none() {
        node.install_disk = g.install_disk.clone();
        node.install_disk_selector = g.install_disk_selector.clone();
    }
    pick(&mut node.machine_spec, &g.machine_spec);
    pick(&mut node.talos_image_url, &g.talos_image_url);
    pick(&mut node.nameservers, &g.nameservers);
    pick(&mut node.disable_search_domain, &g.disable_search_domain);
    pick(&mut node.node_labels, &g.node_labels);
    pick(&mut node.node_annotations, &g.node_annotations);
    pick(&mut node.node_taints, &g.node_taints);
    pick(&mut node.network_interfaces, &g.network_interfaces);
    pick(&mut node.machine_disks, &g.machine_disks);
    pick(&mut node.machine_files, &g.machine_files);
    pick(&mut node.kernel_modules, &g.kernel_modules);
    pick(&mut node.no_schematic_validate, &g.no_schematic_validate);
    pick(&mut node.schematic, &g.schematic);
    pick(&mut node.image_schematic, &g.image_schematic);
    pick(&mut node.ingress_firewall, &g.ingress_firewall);
    pick(&mut node.extension_services, &g.extension_services);
    pick(&mut node.volumes, &g.volumes);
    pick(&mut node.user_volumes, &g.user_volumes);
    pick(&mut node.filename_tmpl, &g.filename_tmpl);
    if !node.override_machine_cert_sans || node.cert_sans.is_empty() {
        node.cert_sans.extend(g.cert_sans.iter().cloned());
    }
    if !node.override_extra_manifests || node.extra_manifests.is_empty() {
        node.extra_manifests
            .extend(g.extra_manifests.iter().cloned());
    }
}

/// A warning about the definition, located in `file`.
pub fn warning(file: &Path, line: usize, message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        subject: if line > 0 {
            format!("{}:{line}", file.display())
        } else {
            file.display().to_string()
        },
        message,
    }
}

/// Where a file named in a definition is, relative to talconfig.yaml's folder.
pub fn relative_to(def_dir: &Path, f: &str) -> PathBuf {
    def_dir.join(f.strip_prefix("./").unwrap_or(f))
}
