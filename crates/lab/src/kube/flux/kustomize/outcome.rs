//! What a build yields: the objects in accumulation order ([`BuiltDoc`]), or why
//! it failed ([`BuildError`]), worded as kustomize and kustomize-controller word
//! it, with the Flux `Ready` condition reason it sets.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

/// One object of the build output.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltDoc {
    /// The object as kustomize emits it (namespace transformer applied).
    pub value: Value,
    /// The file it was read from, relative to the repository.
    pub file: PathBuf,
    /// The namespace a kustomization's `namespace:` gave it (the outermost
    /// one); None when none applied or the kind is cluster-scoped.
    pub namespace: Option<String>,
}

/// Why a build failed. Paths are relative to the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// `spec.path` does not exist (kustomize-controller checks before building).
    PathNotFound {
        path: PathBuf,
    },
    /// kustomize-controller's generator could not decode a manifest.
    Scan {
        file: PathBuf,
        cause: Box<BuildError>,
    },
    /// A `resources:` / `components:` entry of a kustomization failed.
    Entry {
        kustomization: PathBuf,
        field: &'static str,
        entry: String,
        cause: Box<BuildError>,
    },
    /// Building a nested kustomization directory failed.
    Recursed {
        dir: PathBuf,
        cause: Box<BuildError>,
    },
    /// Neither a file nor a directory.
    NotFound {
        path: PathBuf,
    },
    /// A component that is not a directory.
    NotADirectory {
        path: PathBuf,
    },
    MissingKustomization {
        dir: PathBuf,
    },
    MultipleKustomizations {
        dir: PathBuf,
    },
    EmptyKustomization {
        file: PathBuf,
    },
    InvalidKustomization {
        file: PathBuf,
        message: String,
    },
    /// A kustomization field whose effect the lab does not reproduce.
    NotSimulated {
        file: PathBuf,
        field: String,
    },
    WrongKind {
        dir: PathBuf,
        component_expected: bool,
        got: String,
    },
    Yaml {
        file: PathBuf,
        message: String,
    },
    /// A document kustomize refuses (no kind, no name, …).
    BadObject {
        file: PathBuf,
        message: String,
    },
    Cycle {
        candidate: PathBuf,
        visited: PathBuf,
    },
    TooDeep {
        dir: PathBuf,
        limit: usize,
    },
    OutsideRoot {
        path: PathBuf,
    },
    DuplicateId {
        id: String,
        file: PathBuf,
    },
    NamespaceConflict {
        id: String,
        kustomization: PathBuf,
    },
    /// kustomize-controller's check of the build output.
    NotKubernetes {
        file: PathBuf,
        object: String,
    },
    Io {
        path: PathBuf,
        message: String,
    },
}

impl BuildError {
    /// The error as kustomize-controller reports it in the Kustomization's
    /// Ready condition: its reason and message.
    pub fn flux_condition(&self) -> (&'static str, String) {
        match self {
            BuildError::PathNotFound { .. } => ("ArtifactFailed", self.to_string()),
            BuildError::Scan { .. } | BuildError::NotKubernetes { .. } => {
                ("BuildFailed", self.to_string())
            }
            _ => ("BuildFailed", format!("kustomize build failed: {self}")),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BuildError::*;
        match self {
            PathNotFound { path } => write!(
                f,
                "kustomization path not found: stat {}: no such file or directory",
                path.display()
            ),
            Scan { file, cause } => write!(
                f,
                "failed to decode Kubernetes YAML from {}: {cause}",
                file.display()
            ),
            Entry {
                kustomization,
                field,
                entry,
                cause,
            } => write!(
                f,
                "accumulating {field} from '{entry}' in {}: {cause}",
                kustomization.display()
            ),
            Recursed { dir, cause } => write!(
                f,
                "recursed accumulation of path '{}': {cause}",
                dir.display()
            ),
            NotFound { path } => {
                write!(f, "open {}: no such file or directory", path.display())
            }
            NotADirectory { path } => write!(
                f,
                "must build at directory: not a valid directory: '{}'",
                path.display()
            ),
            MissingKustomization { dir } => write!(
                f,
                "unable to find one of 'kustomization.yaml', 'kustomization.yml' or 'Kustomization' in directory '{}'",
                dir.display()
            ),
            MultipleKustomizations { dir } => write!(
                f,
                "Found multiple kustomization files under: {}",
                dir.display()
            ),
            EmptyKustomization { file } => {
                write!(f, "{}: kustomization.yaml is empty", file.display())
            }
            InvalidKustomization { file, message } => {
                write!(f, "{}: invalid Kustomization: {message}", file.display())
            }
            NotSimulated { file, field } => write!(
                f,
                "{}: kustomization field '{field}' is not simulated by the lab",
                file.display()
            ),
            WrongKind {
                dir,
                component_expected: true,
                got,
            } => write!(
                f,
                "expected kind 'Component' for path '{}' but got '{got}'",
                dir.display()
            ),
            WrongKind { dir, .. } => write!(
                f,
                "expected kind != 'Component' for path '{}'",
                dir.display()
            ),
            Yaml { file, message } => {
                write!(f, "MalformedYAMLError: {message} in File: {}", file.display())
            }
            BadObject { file, message } => write!(f, "{message} in File: {}", file.display()),
            Cycle { candidate, visited } => write!(
                f,
                "cycle detected: candidate root '{}' contains visited root '{}'",
                candidate.display(),
                visited.display()
            ),
            TooDeep { dir, limit } => write!(
                f,
                "kustomizations nest more than {limit} deep at '{}' (a symlink loop?)",
                dir.display()
            ),
            OutsideRoot { path } => write!(
                f,
                "security: path '{}' is not in or below the repository root",
                path.display()
            ),
            DuplicateId { id, file } => write!(
                f,
                "may not add resource with an already registered id: {id} (from {})",
                file.display()
            ),
            NamespaceConflict { id, kustomization } => write!(
                f,
                "namespace transformation produces ID conflict: {id} (namespace of {})",
                kustomization.display()
            ),
            NotKubernetes { file, object } => write!(
                f,
                "failed to decode Kubernetes apiVersion, kind and name from: {object} (in {})",
                file.display()
            ),
            Io { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for BuildError {}
