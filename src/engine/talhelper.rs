//! The cluster source for operators' files: a talhelper `talconfig.yaml` (+ talenv)
//! and a secrets bundle (plain or SOPS-encrypted with age), rendered by
//! [`crate::machineconfig`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::FlowError;
use super::source::{ClusterSource, Definition, DiskTarget, LinkSelector, NodeDef, Rendered};
use crate::machineconfig::{
    render::render_all_at, render_all, validate_all, ClusterDefinition, ConfigError, Contract,
    DefinitionPaths, SecretsBundle, Vars,
};
use endsys_core::Doctor;

/// talconfig + talenv + secrets bundle on disk.
pub struct TalhelperSource {
    pub paths: DefinitionPaths,
    pub secrets: PathBuf,
    /// age identity for SOPS bundles (default: `$SOPS_AGE_KEY_FILE`, then sops' default).
    pub age_key: Option<PathBuf>,
    pub vars: Vars,
}

/// The file named is the one the error is in (a talenv, a patch), when it says;
/// `file` otherwise.
fn config_err(e: ConfigError, file: &Path) -> FlowError {
    let file = e
        .location()
        .map(|l| l.file.clone())
        .unwrap_or_else(|| file.to_path_buf());
    FlowError::Definition {
        file: file.display().to_string(),
        detail: e.explain(),
    }
}

impl TalhelperSource {
    pub fn new(talconfig: &Path, secrets: &Path) -> Self {
        Self {
            paths: DefinitionPaths::beside(talconfig),
            secrets: secrets.to_path_buf(),
            age_key: None,
            vars: Vars::from_process_env(),
        }
    }

    fn load(&self) -> Result<ClusterDefinition, FlowError> {
        if let Some(p) = crate::limits::check_file(&self.paths.talconfig) {
            let detail = match p {
                crate::limits::InputProblem::NotFound => {
                    "cluster definition not found (run from the repository root, or pass --config)"
                        .into()
                }
                p => format!("the cluster definition {} ({})", p.message(), p.hint()),
            };
            return Err(FlowError::Definition {
                file: self.paths.talconfig.display().to_string(),
                detail,
            });
        }
        // SOPS-encrypted talenv and patch files use the bundle's age key.
        let mut paths = self.paths.clone();
        if paths.age_key.is_none() {
            paths.age_key = self.age_key.clone();
        }
        ClusterDefinition::load(&paths, self.vars.clone())
            .map_err(|e| config_err(e, &self.paths.talconfig))
    }

    fn bundle(&self) -> Result<SecretsBundle, FlowError> {
        let path = &self.secrets;
        let text = crate::limits::read_text(path, crate::limits::MAX_INPUT_BYTES).map_err(|p| {
            FlowError::Local {
                path: path.display().to_string(),
                detail: format!("cannot read the secrets bundle: it {}", p.message()),
            }
        })?;
        let text = if crate::sops::is_sops_yaml(&text) {
            let ids = crate::sops::AgeIdentities::load(self.age_key.as_deref())
                .map_err(|e| FlowError::Source(format!("{}: {}", path.display(), e.explain())))?;
            crate::sops::decrypt_yaml(&text, &ids, path)
                .map_err(|e| FlowError::Source(format!("{}: {}", path.display(), e.explain())))?
        } else {
            text
        };
        SecretsBundle::from_yaml(&text, path).map_err(|e| config_err(e, path))
    }
}

/// The flows' view of a loaded talhelper definition.
pub fn definition_of(def: &ClusterDefinition) -> Definition {
    let nodes = def
        .nodes
        .iter()
        .map(|n| {
            let install_disk = match (&n.node.install_disk, &n.node.install_disk_selector) {
                (_, Some(sel)) => Some(DiskTarget::Selector(
                    sel.fields()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )),
                (Some(p), None) => Some(DiskTarget::Path(p.clone())),
                (None, None) => None,
            };
            let links = n
                .node
                .network_interfaces
                .iter()
                .filter(|i| !i.ignore)
                .filter_map(|i| i.device_selector.as_ref())
                .map(|s| {
                    let mut fields = Vec::new();
                    let mut push = |k: &str, v: &Option<String>| {
                        if let Some(v) = v {
                            fields.push((k.to_string(), v.clone()));
                        }
                    };
                    push("hardwareAddr", &s.hardware_addr);
                    push("permanentAddr", &s.permanent_addr);
                    push("busPath", &s.bus_path);
                    push("driver", &s.driver);
                    if let Some(p) = s.physical {
                        fields.push(("physical".into(), p.to_string()));
                    }
                    LinkSelector { fields }
                })
                .filter(|l| !l.fields.is_empty())
                .collect();
            NodeDef {
                hostname: n.hostname().to_string(),
                address: n.addresses().first().cloned().unwrap_or_default(),
                control_plane: n.is_control_plane(),
                install_disk,
                links,
            }
        })
        .collect();
    Definition {
        cluster: def.cluster_name().to_string(),
        endpoint: def.config.endpoint.clone(),
        nodes,
    }
}

impl ClusterSource for TalhelperSource {
    fn definition(&self) -> Result<Definition, FlowError> {
        let def = self.load()?;
        let d = definition_of(&def);
        d.check(&self.paths.talconfig.display().to_string())?;
        Ok(d)
    }

    fn secrets_location(&self) -> String {
        self.secrets.display().to_string()
    }

    fn has_secrets(&self) -> Result<bool, FlowError> {
        Ok(self.secrets.is_file())
    }

    fn create_secrets(&self) -> Result<(), FlowError> {
        let name = self
            .secrets
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".sops.yaml") {
            return Err(FlowError::Source(format!(
                "{}: no secrets bundle; create the encrypted one with `gen secrets --out {}` (it applies your .sops.yaml rules), then run `up` again",
                self.secrets.display(),
                self.secrets.display()
            )));
        }
        if self.secrets.exists() {
            return Err(FlowError::Local {
                path: self.secrets.display().to_string(),
                detail: "a secrets bundle already exists; refusing to overwrite it".into(),
            });
        }
        let bundle = SecretsBundle::generate().map_err(|e| config_err(e, &self.secrets))?;
        crate::talos::talosconfig::write_private(&self.secrets, bundle.to_yaml().as_bytes())
            .map_err(|e| FlowError::Local {
                path: self.secrets.display().to_string(),
                detail: format!("cannot write: {e}"),
            })
    }

    fn render(&self) -> Result<Rendered, FlowError> {
        let def = self.load()?;
        let bundle = self.bundle()?;
        let configs = render_all(&def, &bundle).map_err(|e| config_err(e, &def.source))?;
        let warnings = validate_all(&def, &configs).map_err(|e| config_err(e, &def.source))?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let talosconfig = crate::machineconfig::talosconfig::for_cluster(&def, &bundle)
            .map_err(|e| config_err(e, &self.secrets))?;
        let tc_path = Path::new("<generated talosconfig>");
        let credentials = talosconfig
            .context(Some(def.cluster_name()), tc_path)?
            .credentials(tc_path)?;
        let configs: BTreeMap<String, Vec<u8>> = configs
            .into_iter()
            .map(|c| (c.hostname, c.yaml.into_bytes()))
            .collect();
        super::join::check_worker_join(
            &definition_of(&def),
            &configs,
            &def.source.display().to_string(),
        )?;
        let contract = Contract::parse(&crate::machineconfig::render::talos_version(&def)).ok();
        let mut older = BTreeMap::new();
        if let Some(c) = contract {
            for minor in 12..c.minor {
                let at = Contract { major: 1, minor };
                let r = render_all_at(&def, &bundle, at)
                    .map(|cs| {
                        cs.into_iter()
                            .map(|c| (c.hostname, c.yaml.into_bytes()))
                            .collect()
                    })
                    .map_err(|e| e.to_string());
                older.insert(minor, r);
            }
        }
        Ok(Rendered {
            configs,
            credentials,
            talosconfig,
            contract_minor: contract.map(|c| c.minor),
            older,
        })
    }
}
