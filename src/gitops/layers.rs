//! Which infrastructure layer each Kustomization belongs to: the endsys
//! defaults, overridable by a small YAML file; anything unmapped is layer 5.

use std::collections::BTreeMap;
use std::path::Path;

use super::{GitopsError, Key, Loc};

/// Layer names, 1-based (index 0 is layer 1).
pub const LAYER_NAMES: [&str; 5] = [
    "Foundation",
    "GitOps",
    "Data services",
    "Security",
    "Applications",
];

/// The layer a Kustomization falls in when nothing maps it.
pub const DEFAULT_LAYER: u8 = 5;

const ENDSYS: &[(u8, &[&str])] = &[
    (
        1,
        &[
            "cilium",
            "cilium-gateway",
            "coredns",
            "spegel",
            "cert-manager",
            "metrics-server",
            "reloader",
            "snapshot-controller",
            "gpu-device-plugin",
            "k8s-gateway",
            "cloudflare-dns",
            "cloudflare-tunnel",
            "pihole-dns",
            "echo",
        ],
    ),
    (
        2,
        &[
            "flux-system",
            "cluster-meta",
            "cluster-apps",
            "flux-operator",
            "flux-instance",
        ],
    ),
    (
        3,
        &[
            "cnpg-operator",
            "longhorn",
            "csi-driver-nfs",
            "garage",
            "dragonfly-operator",
        ],
    ),
    (
        4,
        &["external-secrets", "external-secrets-stores", "pocket-id"],
    ),
];

/// Name (or `namespace/name`) → layer. `namespace/name` entries win over bare names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMap {
    entries: BTreeMap<String, u8>,
}

impl Default for LayerMap {
    fn default() -> Self {
        Self::endsys()
    }
}

impl LayerMap {
    /// The defaults for endsys (`endsys-cluster.md`).
    pub fn endsys() -> LayerMap {
        let mut entries = BTreeMap::new();
        for (layer, names) in ENDSYS {
            for n in *names {
                entries.insert((*n).to_string(), *layer);
            }
        }
        LayerMap { entries }
    }

    /// No mapping at all (everything is layer 5).
    pub fn empty() -> LayerMap {
        LayerMap {
            entries: BTreeMap::new(),
        }
    }

    /// Maps a name or `namespace/name` to a layer (1–5).
    pub fn set(&mut self, who: &str, layer: u8) {
        self.entries.insert(who.to_string(), layer.clamp(1, 5));
    }

    /// The layer of a Kustomization (or of a HelmRelease, by its own name).
    pub fn layer(&self, key: &Key) -> u8 {
        self.entries
            .get(&key.to_string())
            .or_else(|| self.entries.get(&key.name))
            .copied()
            .unwrap_or(DEFAULT_LAYER)
    }

    /// True when the name is mapped explicitly.
    pub fn is_mapped(&self, key: &Key) -> bool {
        self.entries.contains_key(&key.to_string()) || self.entries.contains_key(&key.name)
    }

    /// Applies overrides from YAML text:
    ///
    /// ```yaml
    /// layers:
    ///   garage: 5               # a name (any namespace)
    ///   database/dragonfly: 3   # or namespace/name
    /// ```
    /// `replace: true` at the top drops the defaults first.
    pub fn apply_overrides(&mut self, text: &str, file: &Path) -> Result<(), GitopsError> {
        let loc = |line: usize| Loc {
            file: file.to_path_buf(),
            line,
        };
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| GitopsError::Yaml {
                loc: loc(e.location().map(|l| l.line()).unwrap_or(0)),
                message: e.to_string(),
            })?;
        if v.get("replace").and_then(|r| r.as_bool()) == Some(true) {
            self.entries.clear();
        }
        let Some(map) = v.get("layers") else {
            return Err(GitopsError::Invalid {
                loc: loc(1),
                message: "expected a `layers:` mapping of name → layer (1-5)".into(),
            });
        };
        let Some(map) = map.as_mapping() else {
            return Err(GitopsError::Invalid {
                loc: loc(line_of(text, "layers:")),
                message: "`layers` must be a mapping of name → layer (1-5)".into(),
            });
        };
        for (k, val) in map {
            let name = k.as_str().unwrap_or_default().to_string();
            let layer = val.as_u64().filter(|l| (1..=5).contains(l));
            match (name.is_empty(), layer) {
                (false, Some(l)) => {
                    self.entries.insert(name, l as u8);
                }
                _ => {
                    return Err(GitopsError::Invalid {
                        loc: loc(line_of(text, &format!("{name}:"))),
                        message: format!("layer of {name:?} must be a number from 1 to 5"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads overrides from a file (see [`LayerMap::apply_overrides`]).
    pub fn load_overrides(&mut self, file: &Path) -> Result<(), GitopsError> {
        let text = std::fs::read_to_string(file).map_err(|source| GitopsError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        self.apply_overrides(&text, file)
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .trim_start_matches('"')
                .starts_with(needle.trim_matches('"'))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}
