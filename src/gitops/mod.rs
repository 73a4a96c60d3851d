//! The GitOps half of `up`: the Flux Kustomization graph as the repository
//! describes it ([`walk`]), the infrastructure layers it is shown in
//! ([`layers`]), and the tracker that follows the live Kustomizations and
//! HelmReleases until every layer is Ready ([`track`]).
//!
//! The repository graph is the plan (`plan` renders it with [`render_plan`]); the
//! live objects are the truth (the tracker reads only the cluster).

pub mod git;
pub mod layers;
pub mod track;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use endsys_core::Doctor;

pub use layers::{LayerMap, LAYER_NAMES};
pub use track::{Item, ItemState, Kind, LayerProgress, Progress, TrackError, Tracker};
pub use walk::{walk, Graph, KsNode, Problem, ProblemKind};

/// `namespace/name` of a Flux object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A place in the repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    pub file: PathBuf,
    /// 1-based; 0 when the object is not in a file (the generated `flux-system`).
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Errors reading the tree or a layer file.
#[derive(Debug, thiserror::Error)]
pub enum GitopsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{loc}: invalid YAML: {message}")]
    Yaml { loc: Loc, message: String },
    #[error("{loc}: {message}")]
    Invalid { loc: Loc, message: String },
}

impl Doctor for GitopsError {
    fn likely_cause(&self) -> String {
        match self {
            GitopsError::Io { .. } => "a file or folder of the repository is missing or unreadable (or --sync-path points elsewhere)".into(),
            GitopsError::Yaml { .. } => "a YAML syntax error".into(),
            GitopsError::Invalid { .. } => "the file is not what kustomize-controller (or the layer map) expects there".into(),
        }
    }

    fn next_action(&self) -> String {
        "fix the file named above (or pass --sync-path / --layers), then run `plan` to see the graph".into()
    }

    /// The repository and the layer file are the operator's input (exit code 2).
    fn is_input_error(&self) -> bool {
        true
    }
}

/// The graph layer by layer, as `plan` shows it before anything runs: every
/// Kustomization in dependency order with what it waits on, then the problems.
pub fn render_plan(graph: &Graph) -> String {
    let mut out = String::new();
    let order = graph.topo_order();
    let mut by_layer: BTreeMap<u8, Vec<&Key>> = BTreeMap::new();
    for k in &order {
        by_layer.entry(graph.layer_of(k)).or_default().push(k);
    }
    out.push_str(&format!(
        "GitOps: {} Flux Kustomizations from {}\n",
        graph.nodes.len(),
        graph.sync_path.display()
    ));
    for layer in 1..=5u8 {
        let keys = by_layer.get(&layer).cloned().unwrap_or_default();
        out.push_str(&format!(
            "Layer {layer} {} ({})\n",
            LAYER_NAMES[(layer - 1) as usize],
            keys.len()
        ));
        for k in keys {
            let Some(n) = graph.nodes.get(k) else {
                continue;
            };
            let deps: BTreeSet<String> = n.depends_on.iter().map(|d| d.key.to_string()).collect();
            if deps.is_empty() {
                out.push_str(&format!("  {k}\n"));
            } else {
                let deps: Vec<String> = deps.into_iter().collect();
                out.push_str(&format!("  {k}  <- {}\n", deps.join(", ")));
            }
        }
    }
    if !graph.problems.is_empty() {
        out.push_str("Problems:\n");
        for p in &graph.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}
