//! The lab's `kustomize build`: what kustomize-controller gets when it builds a
//! Kustomization's `spec.path` in a source artifact.
//!
//! This is the lab's own reading of the repository, written from upstream's
//! behaviour and not shared with the tool (the tool's Flux tree walker is what
//! the lab is meant to check). The upstream code it mirrors, by rule:
//!
//! - **Generated kustomization** (fluxcd/pkg `kustomize/kustomize_generator.go`
//!   `scanManifests`, kustomize/v1.35.4 as vendored by kustomize-controller
//!   v1.9.4): a directory without `kustomization.yaml`, `kustomization.yml` or
//!   `Kustomization` gets one listing, in `filepath.Walk` order (names sorted
//!   byte-wise, depth first, symlinked directories not followed), every `.yaml`
//!   / `.yml` file below it, except that a sub-directory holding a
//!   kustomization file is listed itself and not descended into. Each listed
//!   file must decode as Kubernetes objects, else the whole reconciliation
//!   fails with `failed to decode Kubernetes YAML from <file>: …` (a YAML file
//!   without `kind`, e.g. Helm values, is an error there, not skipped). Only
//!   the root directory (`spec.path`) is ever generated.
//! - **Artifact contents** (fluxcd/pkg `sourceignore` defaults applied by
//!   source-controller when it packs the artifact): `.git/`, `.gitignore`,
//!   `.gitmodules`, `.gitattributes`, `.github/`, `.circleci/`, the CI files
//!   and `.goreleaser.yml`, `.sops.yaml`, `.flux.yaml` are not in the
//!   artifact, so neither the scan nor `resources:` see them. A repository's
//!   own `.sourceignore` files are not read by the lab.
//! - **Kustomization files** (kustomize api v0.21.1 `types.Kustomization`,
//!   `KustTarget.Load`): unknown fields are an error (`invalid Kustomization:
//!   json: unknown field …`), `kind` must be `Kustomization`
//!   (`kustomize.config.k8s.io/v1beta1`) or `Component`
//!   (`kustomize.config.k8s.io/v1alpha1`), deprecated `bases:` are appended
//!   to `resources:`, two kustomization files in one directory are an error,
//!   and an empty nested kustomization is `kustomization.yaml is empty`
//!   (kustomize-controller adds `buildMetadata` to an empty root one, so the
//!   root never fails that way).
//! - **Accumulation** (`KustTarget.accumulateTarget` / `accumulateResources` /
//!   `accumulateComponents` / `accumulateDirectory`): `resources:` in listed
//!   order, each a file or a directory that must hold a kustomization file
//!   (`unable to find one of …`); a `kind: Component` directory is refused
//!   there. Then `components:` (directories with `kind: Component`), which
//!   add their resources to the *including* kustomization's and whose own
//!   `namespace:` transforms everything accumulated so far. Then the
//!   kustomization's own `namespace:` — so the outermost kustomization, applied
//!   last, wins. Adding a resource whose id (group, version, kind, name,
//!   effective namespace) is already present is `may not add resource with an
//!   already registered id`. Remote entries (`https://…`, `github.com/…`,
//!   `git@…`, …; kustomize's repospec prefixes) are skipped by the lab.
//! - **Loader roots** (`loader.FileLoader.errIfArgEqualOrHigher`): entering a
//!   directory that is, or contains, one already being built is `cycle
//!   detected: candidate root … contains visited root …`; fluxcd/pkg's secure
//!   file system refuses paths outside the artifact (`path … is not in or
//!   below …`). The lab adds a nesting limit ([`MAX_DEPTH`]) as a last guard.
//! - **Documents** (`resource.Factory.RNodesFromBytes`): a file is a YAML
//!   stream split on `---`; empty and null documents are dropped; every other
//!   one needs `kind` and, unless its kind ends in `List`, `metadata.name`;
//!   `…List` objects with `items` are replaced by their items (appended after
//!   the file's other documents, as kustomize does); a malformed file is
//!   `MalformedYAMLError: … in File: <file>`. Objects annotated
//!   `config.kubernetes.io/local-config` (other than `"false"`) are dropped at
//!   the end (`KustTarget.IgnoreLocal`).
//! - **Namespace transformer** (`builtins.NamespaceTransformerPlugin`,
//!   `filters/namespace`, `builtinpluginconsts/namespace.go`): sets
//!   `metadata.namespace` on every object kustomize does not know to be
//!   cluster-scoped (its built-in list; unknown custom kinds count as
//!   namespaced), renames `v1` Namespace objects to the namespace, and fails
//!   with `namespace transformation produces ID conflict` when two objects end
//!   up with one id. RoleBinding subjects are not rewritten by the lab.
//! - **Output order**: kustomize-controller builds with `krusty.Options` whose
//!   `Reorder` is unset, so the result stays in accumulation order (no legacy
//!   kind sort).
//! - **kustomize-controller around the build**: a missing `spec.path` is
//!   `kustomization path not found` (before building), `spec.targetNamespace`
//!   becomes the root kustomization's `namespace:` ([`build_for`]), and every
//!   built object needs `apiVersion`, `kind` and `metadata.name` (`failed to
//!   decode Kubernetes apiVersion, kind and name from: …`).
//!
//! Transformers that would change the objects the lab reads (patches, name
//! prefixes, replacements, vars, generators, plugins) are not simulated: a
//! kustomization using one fails the build with a message saying so, rather
//! than the lab silently building something Flux would not. Fields that only
//! touch what the lab never reads (labels, annotations, images, replicas,
//! CRD configurations, sort options) are accepted and ignored.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize as _;
use serde_json::{Map, Value};

/// The file names kustomize recognises, in its order.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Deepest nesting of kustomization directories the lab follows.
pub const MAX_DEPTH: usize = 64;

/// source-controller's default exclusions, by entry name (directories and
/// files; every pattern matches at any depth).
const EXCLUDED_DIRS: [&str; 3] = [".git", ".github", ".circleci"];
const EXCLUDED_FILES: [&str; 13] = [
    ".gitignore",
    ".gitmodules",
    ".gitattributes",
    ".travis.yml",
    ".gitlab-ci.yml",
    "appveyor.yml",
    ".drone.yml",
    "cloudbuild.yaml",
    "codeship-services.yml",
    "codeship-steps.yml",
    ".goreleaser.yml",
    ".sops.yaml",
    ".flux.yaml",
];

/// Every field of kustomize's `Kustomization` type.
const KNOWN_FIELDS: [&str; 34] = [
    "apiVersion",
    "kind",
    "metadata",
    "openapi",
    "namePrefix",
    "nameSuffix",
    "namespace",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "patchesStrategicMerge",
    "patchesJson6902",
    "patches",
    "images",
    "imageTags",
    "replacements",
    "replicas",
    "vars",
    "sortOptions",
    "resources",
    "components",
    "crds",
    "bases",
    "configMapGenerator",
    "secretGenerator",
    "helmGlobals",
    "helmCharts",
    "helmChartInflationGenerator",
    "generatorOptions",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "buildMetadata",
];

/// Fields whose effect on the objects the lab does not reproduce.
const NOT_SIMULATED: [&str; 13] = [
    "namePrefix",
    "nameSuffix",
    "patchesStrategicMerge",
    "patchesJson6902",
    "patches",
    "replacements",
    "vars",
    "configMapGenerator",
    "secretGenerator",
    "helmCharts",
    "helmChartInflationGenerator",
    "generators",
    "transformers",
];

/// Kinds kustomize's built-in OpenAPI data knows to be cluster-scoped, by API
/// group (`""` is the core group).
const CLUSTER_SCOPED: [(&str, &str); 22] = [
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("", "NodeProxyOptions"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("networking.k8s.io", "IngressClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("policy", "PodSecurityPolicy"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "VolumeAttachment"),
];

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

/// `kustomize build dir` inside the repository checkout `repo`.
pub fn build(repo: &Path, dir: &Path) -> Result<Vec<BuiltDoc>, BuildError> {
    build_for(repo, dir, None)
}

/// The build kustomize-controller runs for a Kustomization whose
/// `spec.targetNamespace` is `target_namespace`: the generator writes it into
/// the root kustomization as `namespace:` (replacing one already there).
pub fn build_for(
    repo: &Path,
    dir: &Path,
    target_namespace: Option<&str>,
) -> Result<Vec<BuiltDoc>, BuildError> {
    Builder::new(repo, MAX_DEPTH).root(dir, target_namespace)
}

/// What one kustomization file says (or what the generator would write).
struct Kust {
    /// The kustomization file (for a generated one, where it would be written).
    file: PathBuf,
    dir: PathBuf,
    component: bool,
    namespace: Option<String>,
    resources: Vec<String>,
    components: Vec<String>,
    /// Nothing but `apiVersion` / `kind` (kustomize's `CheckEmpty`; the root
    /// never fails it, kustomize-controller adds `buildMetadata` there).
    empty: bool,
}

struct Builder<'a> {
    repo: &'a Path,
    /// `repo` with symlinks resolved, for the root and cycle checks.
    real_repo: PathBuf,
    max_depth: usize,
}

impl<'a> Builder<'a> {
    fn new(repo: &'a Path, max_depth: usize) -> Self {
        let real_repo = std::fs::canonicalize(repo).unwrap_or_else(|_| clean(repo));
        Builder {
            repo,
            real_repo,
            max_depth,
        }
    }

    /// Relative to the repository, for messages and [`BuiltDoc::file`].
    fn rel(&self, p: &Path) -> PathBuf {
        let p = clean(p);
        let repo = clean(self.repo);
        match p.strip_prefix(&repo) {
            Ok(r) if r.as_os_str().is_empty() => PathBuf::from("."),
            Ok(r) => r.to_path_buf(),
            Err(_) => p
                .strip_prefix(&self.real_repo)
                .map(Path::to_path_buf)
                .unwrap_or(p),
        }
    }

    /// The path with symlinks resolved when it exists (lexically cleaned
    /// otherwise).
    fn real(&self, p: &Path) -> PathBuf {
        std::fs::canonicalize(p).unwrap_or_else(|_| clean(p))
    }

    /// fluxcd/pkg's secure file system: nothing outside the artifact.
    fn check_inside(&self, p: &Path) -> Result<(), BuildError> {
        if self.real(p).starts_with(&self.real_repo) {
            Ok(())
        } else {
            Err(BuildError::OutsideRoot { path: self.rel(p) })
        }
    }

    fn root(&self, dir: &Path, target_ns: Option<&str>) -> Result<Vec<BuiltDoc>, BuildError> {
        let dir = clean(dir);
        if !dir.exists() || excluded(&self.rel(&dir)) {
            return Err(BuildError::PathNotFound {
                path: self.rel(&dir),
            });
        }
        self.check_inside(&dir)?;
        if !dir.is_dir() {
            return Err(BuildError::NotADirectory {
                path: self.rel(&dir),
            });
        }
        let mut k = match self.find_kustomization(&dir)? {
            Some(file) => self.load_kustomization(&file)?,
            None => self.generate(&dir)?,
        };
        if let Some(ns) = target_ns.filter(|n| !n.is_empty()) {
            k.namespace = Some(ns.to_string());
        }
        let roots = vec![self.real(&dir)];
        let docs = self.accumulate(&k, Vec::new(), &roots)?;
        let docs: Vec<BuiltDoc> = docs
            .into_iter()
            .filter(|d| !local_config(&d.value))
            .collect();
        for d in &docs {
            if str_at(&d.value, "/apiVersion").is_empty()
                || str_at(&d.value, "/kind").is_empty()
                || str_at(&d.value, "/metadata/name").is_empty()
            {
                return Err(BuildError::NotKubernetes {
                    file: d.file.clone(),
                    object: serde_json::to_string(&d.value).unwrap_or_default(),
                });
            }
        }
        Ok(docs)
    }

    /// The kustomization file of `dir`, if any (two is an error).
    fn find_kustomization(&self, dir: &Path) -> Result<Option<PathBuf>, BuildError> {
        let found: Vec<PathBuf> = KUSTOMIZATION_FILES
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            _ => Err(BuildError::MultipleKustomizations { dir: self.rel(dir) }),
        }
    }

    fn load_kustomization(&self, file: &Path) -> Result<Kust, BuildError> {
        let rel = self.rel(file);
        let invalid = |message: String| BuildError::InvalidKustomization {
            file: rel.clone(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| BuildError::Io {
            path: rel.clone(),
            message: e.to_string(),
        })?;
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?
        };
        let map = match v {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(invalid(format!(
                    "expected a mapping, found {}",
                    json_type(&other)
                )))
            }
        };
        if let Some(k) = map.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(invalid(format!("json: unknown field \"{k}\"")));
        }
        if let Some(k) = map
            .iter()
            .find(|(k, v)| NOT_SIMULATED.contains(&k.as_str()) && !is_empty(v))
            .map(|(k, _)| k)
        {
            return Err(BuildError::NotSimulated {
                file: rel,
                field: k.clone(),
            });
        }
        let string = |key: &str| -> Result<Option<String>, BuildError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "json: cannot unmarshal {} into Go struct field Kustomization.{key} of type string",
                    json_type(other)
                ))),
            }
        };
        let list = |key: &str| -> Result<Vec<String>, BuildError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(invalid(format!(
                            "json: cannot unmarshal {} into Go struct field Kustomization.{key} of type string",
                            json_type(other)
                        ))),
                    })
                    .collect(),
                Some(other) => Err(invalid(format!(
                    "json: cannot unmarshal {} into Go struct field Kustomization.{key} of type []string",
                    json_type(other)
                ))),
            }
        };
        let kind = string("kind")?.unwrap_or_default();
        let api_version = string("apiVersion")?.unwrap_or_default();
        let component = kind == "Component";
        if !kind.is_empty() && kind != "Kustomization" && !component {
            return Err(invalid("kind should be Kustomization or Component".into()));
        }
        let want = if component {
            "kustomize.config.k8s.io/v1alpha1"
        } else {
            "kustomize.config.k8s.io/v1beta1"
        };
        if !api_version.is_empty() && api_version != want {
            let k = if kind.is_empty() {
                "Kustomization"
            } else {
                &kind
            };
            return Err(invalid(format!("apiVersion for {k} should be {want}")));
        }
        let mut resources = list("resources")?;
        resources.extend(list("bases")?);
        Ok(Kust {
            file: file.to_path_buf(),
            dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            component,
            namespace: string("namespace")?.filter(|n| !n.is_empty()),
            resources,
            components: list("components")?,
            empty: map.keys().all(|k| k == "apiVersion" || k == "kind"),
        })
    }

    /// kustomize-controller's generated kustomization for `dir`.
    fn generate(&self, dir: &Path) -> Result<Kust, BuildError> {
        let mut found = Vec::new();
        self.scan(dir, &mut found)?;
        let resources = found
            .iter()
            .map(|p| {
                let r = p.strip_prefix(dir).unwrap_or(p);
                format!("./{}", r.display())
            })
            .collect();
        Ok(Kust {
            file: dir.join("kustomization.yaml"),
            dir: dir.to_path_buf(),
            component: false,
            namespace: None,
            resources,
            components: vec![],
            empty: false,
        })
    }

    /// `scanManifests`: manifests and kustomization directories below `dir`.
    fn scan(&self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
        let io = |e: std::io::Error| BuildError::Io {
            path: self.rel(dir),
            message: e.to_string(),
        };
        let mut entries: Vec<(std::ffi::OsString, bool)> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| {
                let e = e.map_err(io)?;
                let is_dir = e.file_type().map_err(io)?.is_dir();
                Ok((e.file_name(), is_dir))
            })
            .collect::<Result<_, BuildError>>()?;
        entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        for (name, is_dir) in entries {
            let path = dir.join(&name);
            if excluded_name(&name.to_string_lossy(), is_dir) {
                continue;
            }
            if is_dir {
                if KUSTOMIZATION_FILES.iter().any(|k| path.join(k).is_file()) {
                    out.push(path);
                } else {
                    self.scan(&path, out)?;
                }
                continue;
            }
            let ext = Path::new(&name).extension().and_then(|e| e.to_str());
            if !matches!(ext, Some("yaml" | "yml")) {
                continue;
            }
            self.read_objects(&path).map_err(|cause| BuildError::Scan {
                file: self.rel(&path),
                cause: Box::new(cause),
            })?;
            out.push(path);
        }
        Ok(())
    }

    /// `accumulateTarget`: resources, components, then this kustomization's
    /// namespace. `acc` is empty for a kustomization and the including
    /// kustomization's objects for a component.
    fn accumulate(
        &self,
        k: &Kust,
        mut acc: Vec<BuiltDoc>,
        roots: &[PathBuf],
    ) -> Result<Vec<BuiltDoc>, BuildError> {
        let kfile = self.rel(&k.file);
        let wrap = |field: &'static str, entry: &str| {
            let kfile = kfile.clone();
            let entry = entry.to_string();
            move |cause: BuildError| BuildError::Entry {
                kustomization: kfile,
                field,
                entry,
                cause: Box::new(cause),
            }
        };
        for entry in &k.resources {
            if is_remote(entry) {
                continue;
            }
            let path = clean(&k.dir.join(entry));
            let step = || -> Result<Vec<BuiltDoc>, BuildError> {
                self.check_inside(&path)?;
                if excluded(&self.rel(&path)) {
                    return Err(BuildError::NotFound {
                        path: self.rel(&path),
                    });
                }
                if path.is_file() {
                    self.read_objects(&path)
                } else if path.is_dir() {
                    self.directory(&path, Vec::new(), roots, false)
                } else {
                    Err(BuildError::NotFound {
                        path: self.rel(&path),
                    })
                }
            };
            let docs = step().map_err(wrap("resources", entry))?;
            for d in docs {
                append(&mut acc, d).map_err(wrap("resources", entry))?;
            }
        }
        for entry in &k.components {
            if is_remote(entry) {
                continue;
            }
            let path = clean(&k.dir.join(entry));
            if !path.is_dir() || excluded(&self.rel(&path)) {
                let cause = if path.exists() {
                    BuildError::NotADirectory {
                        path: self.rel(&path),
                    }
                } else {
                    BuildError::NotFound {
                        path: self.rel(&path),
                    }
                };
                return Err(wrap("components", entry)(cause));
            }
            acc = self
                .directory(&path, acc, roots, true)
                .map_err(wrap("components", entry))?;
        }
        if let Some(ns) = &k.namespace {
            set_namespace(&mut acc, ns).map_err(|id| BuildError::NamespaceConflict {
                id,
                kustomization: kfile.clone(),
            })?;
        }
        Ok(acc)
    }

    /// `accumulateDirectory`: the kustomization in `dir`, as a resource (a
    /// fresh accumulation, merged into the caller's) or as a component (on
    /// top of `acc`).
    fn directory(
        &self,
        dir: &Path,
        acc: Vec<BuiltDoc>,
        roots: &[PathBuf],
        component: bool,
    ) -> Result<Vec<BuiltDoc>, BuildError> {
        self.check_inside(dir)?;
        let real = self.real(dir);
        if let Some(visited) = roots.iter().rev().find(|r| r.starts_with(&real)) {
            return Err(BuildError::Cycle {
                candidate: self.rel(&real),
                visited: self.rel(visited),
            });
        }
        if roots.len() >= self.max_depth {
            return Err(BuildError::TooDeep {
                dir: self.rel(dir),
                limit: self.max_depth,
            });
        }
        let inner = || -> Result<Vec<BuiltDoc>, BuildError> {
            let Some(file) = self.find_kustomization(dir)? else {
                return Err(BuildError::MissingKustomization { dir: self.rel(dir) });
            };
            let k = self.load_kustomization(&file)?;
            if k.empty {
                return Err(BuildError::EmptyKustomization {
                    file: self.rel(&file),
                });
            }
            if k.component != component {
                return Err(BuildError::WrongKind {
                    dir: self.rel(dir),
                    component_expected: component,
                    got: if k.component {
                        "Component"
                    } else {
                        "Kustomization"
                    }
                    .into(),
                });
            }
            let mut roots = roots.to_vec();
            roots.push(real.clone());
            self.accumulate(&k, acc, &roots)
        };
        inner().map_err(|cause| BuildError::Recursed {
            dir: self.rel(dir),
            cause: Box::new(cause),
        })
    }

    /// The objects of one manifest file, as kustomize's resource factory
    /// reads them.
    fn read_objects(&self, file: &Path) -> Result<Vec<BuiltDoc>, BuildError> {
        let rel = self.rel(file);
        let text = std::fs::read_to_string(file).map_err(|e| BuildError::Io {
            path: rel.clone(),
            message: e.to_string(),
        })?;
        let mut queue = std::collections::VecDeque::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).map_err(|e| BuildError::Yaml {
                file: rel.clone(),
                message: e.to_string(),
            })?;
            queue.extend(validated(v).map_err(|message| BuildError::BadObject {
                file: rel.clone(),
                message,
            })?);
        }
        let mut out = Vec::new();
        while let Some(v) = queue.pop_front() {
            let kind = str_at(&v, "/kind");
            if !kind.ends_with("List") {
                out.push(v);
                continue;
            }
            match v.get("items") {
                None => out.push(v),
                Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        queue.extend(validated(item.clone()).map_err(|message| {
                            BuildError::BadObject {
                                file: rel.clone(),
                                message,
                            }
                        })?);
                    }
                }
                Some(other) => {
                    return Err(BuildError::BadObject {
                        file: rel,
                        message: format!(
                            "expected array in {kind}/items, but found {}",
                            json_type(other)
                        ),
                    })
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|value| BuiltDoc {
                value,
                file: rel.clone(),
                namespace: None,
            })
            .collect())
    }
}

/// `dropBadNodes`: empty documents dropped, the rest need a kind and a name.
fn validated(v: Value) -> Result<Option<Value>, String> {
    let empty = match &v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if empty {
        return Ok(None);
    }
    if !v.is_object() {
        return Err(format!("missing kind in object (a YAML {})", json_type(&v)));
    }
    let kind = str_at(&v, "/kind");
    if kind.is_empty() {
        return Err("missing kind in object".into());
    }
    if !kind.ends_with("List") && str_at(&v, "/metadata/name").is_empty() {
        return Err(format!("missing metadata.name in object of kind {kind}"));
    }
    if let Some(path) = nil_in_list(&v, String::new()) {
        return Err(format!("empty item at {path} in object of kind {kind}"));
    }
    Ok(Some(v))
}

/// `HasNilEntryInList`: the first list holding a null item.
fn nil_in_list(v: &Value, at: String) -> Option<String> {
    match v {
        Value::Array(items) => {
            if items.iter().any(Value::is_null) {
                return Some(at);
            }
            items.iter().find_map(|i| nil_in_list(i, at.clone()))
        }
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            nil_in_list(
                v,
                if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                },
            )
        }),
        _ => None,
    }
}

/// kustomize's resource id: group, version, kind, name and effective
/// namespace (cluster-scoped kinds have none; unset means `default`).
fn res_id(v: &Value) -> (String, String, String, String, String) {
    let (group, version) = group_version(str_at(v, "/apiVersion"));
    let kind = str_at(v, "/kind").to_string();
    let ns = if cluster_scoped(&group, &kind) {
        "_non_namespaceable_".to_string()
    } else {
        match str_at(v, "/metadata/namespace") {
            "" => "default".to_string(),
            n => n.to_string(),
        }
    };
    (
        group,
        version,
        kind,
        str_at(v, "/metadata/name").to_string(),
        ns,
    )
}

/// `ResId.String()`: `Kind.version.group/name.namespace`.
fn id_string(v: &Value) -> String {
    let (group, version) = group_version(str_at(v, "/apiVersion"));
    let or = |s: &str, none: &str| {
        if s.is_empty() {
            none.to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{}.{}.{}/{}.{}",
        or(str_at(v, "/kind"), "[noKind]"),
        or(&version, "[noVer]"),
        or(&group, "[noGrp]"),
        or(str_at(v, "/metadata/name"), "[noName]"),
        or(str_at(v, "/metadata/namespace"), "[noNs]"),
    )
}

/// `ResMap.Append`: refuses an id already present.
fn append(acc: &mut Vec<BuiltDoc>, d: BuiltDoc) -> Result<(), BuildError> {
    let id = res_id(&d.value);
    if acc.iter().any(|a| res_id(&a.value) == id) {
        return Err(BuildError::DuplicateId {
            id: id_string(&d.value),
            file: d.file,
        });
    }
    acc.push(d);
    Ok(())
}

/// The namespace transformer over everything accumulated; Err(id) on a
/// resulting id conflict.
fn set_namespace(acc: &mut [BuiltDoc], ns: &str) -> Result<(), String> {
    for d in acc.iter_mut() {
        let (group, version) = group_version(str_at(&d.value, "/apiVersion"));
        let kind = str_at(&d.value, "/kind").to_string();
        let Some(meta) = d
            .value
            .as_object_mut()
            .map(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Map::new()))
            })
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if kind == "Namespace" && group.is_empty() && version == "v1" {
            meta.insert("name".into(), Value::String(ns.to_string()));
        }
        if !cluster_scoped(&group, &kind) {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
            d.namespace = Some(ns.to_string());
        }
    }
    for (i, d) in acc.iter().enumerate() {
        let id = res_id(&d.value);
        if acc[..i].iter().any(|o| res_id(&o.value) == id) {
            return Err(id_string(&d.value));
        }
    }
    Ok(())
}

fn group_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

fn cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&(group, kind))
}

/// Annotated `config.kubernetes.io/local-config` (any value but "false").
fn local_config(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .and_then(|a| a.get("config.kubernetes.io/local-config"))
        .is_some_and(|x| x.as_str() != Some("false"))
}

/// kustomize's remote-resource prefixes (fluxcd/pkg `IsLocalRelativePath`,
/// from kustomize's repospec), plus any other URL scheme.
fn is_remote(entry: &str) -> bool {
    let lower = entry.to_ascii_lowercase();
    [
        "git::",
        "gh:",
        "ssh://",
        "https://",
        "http://",
        "git@",
        "github.com:",
        "github.com/",
    ]
    .iter()
    .any(|p| lower.len() > p.len() && lower.starts_with(p))
        || (lower.contains("://") && !lower.starts_with("file://"))
}

fn excluded_name(name: &str, is_dir: bool) -> bool {
    if is_dir {
        EXCLUDED_DIRS.contains(&name)
    } else {
        EXCLUDED_FILES.contains(&name)
    }
}

/// Not in source-controller's artifact (`rel` relative to the repository).
fn excluded(rel: &Path) -> bool {
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    parents.iter().any(|p| excluded_name(p, true))
        || excluded_name(last, true)
        || excluded_name(last, false)
}

/// Lexically cleaned path (`.` dropped, `..` applied), like Go's
/// `filepath.Join`.
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository from (path, content) pairs.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for (p, text) in files {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        t
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
    }

    fn names(docs: &[BuiltDoc]) -> Vec<String> {
        docs.iter()
            .map(|d| str_at(&d.value, "/metadata/name").to_string())
            .collect()
    }

    fn err(repo: &tempfile::TempDir, dir: &str) -> BuildError {
        build(repo.path(), &repo.path().join(dir)).expect_err("build should fail")
    }

    #[test]
    fn nested_kustomizations_build_in_listed_order() {
        let r = tree(&[
            (
                "app/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ./b.yaml\n  - ./sub\n  - a.yaml\n",
            ),
            ("app/a.yaml", &cm("a")),
            ("app/b.yaml", &cm("b")),
            ("app/sub/kustomization.yml", "resources: [x.yaml, ../c.yaml]\n"),
            ("app/sub/x.yaml", &cm("x")),
            ("app/c.yaml", &cm("c")),
        ]);
        let docs = build(r.path(), &r.path().join("app")).expect("build");
        assert_eq!(names(&docs), ["b", "x", "c", "a"]);
        assert_eq!(docs[1].file, PathBuf::from("app/sub/x.yaml"));
        assert_eq!(docs[2].file, PathBuf::from("app/c.yaml"));
        assert!(docs.iter().all(|d| d.namespace.is_none()));
    }

    #[test]
    fn the_outermost_namespace_wins_and_renames_namespaces() {
        let r = tree(&[
            (
                "apps/kustomization.yaml",
                "namespace: outer\nresources: [./inner, role.yaml]\n",
            ),
            (
                "apps/role.yaml",
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n",
            ),
            (
                "apps/inner/kustomization.yaml",
                "namespace: inner\nresources: [ns.yaml, cm.yaml, ks.yaml]\n",
            ),
            (
                "apps/inner/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: inner\n",
            ),
            (
                "apps/inner/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: mine\n",
            ),
            (
                "apps/inner/ks.yaml",
                "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: k\n",
            ),
        ]);
        let docs = build(r.path(), &r.path().join("apps")).expect("build");
        assert_eq!(names(&docs), ["outer", "c", "k", "r"]);
        let ns: Vec<Option<&str>> = docs.iter().map(|d| d.namespace.as_deref()).collect();
        assert_eq!(ns, [None, Some("outer"), Some("outer"), None]);
        assert_eq!(str_at(&docs[1].value, "/metadata/namespace"), "outer");
        assert_eq!(str_at(&docs[2].value, "/metadata/namespace"), "outer");
        assert_eq!(str_at(&docs[3].value, "/metadata/namespace"), "");
        // Without the outer namespace the inner one applies.
        let docs = build(r.path(), &r.path().join("apps/inner")).expect("build");
        assert_eq!(names(&docs), ["inner", "c", "k"]);
        assert_eq!(docs[1].namespace.as_deref(), Some("inner"));
    }

    #[test]
    fn target_namespace_replaces_the_root_namespace() {
        let r = tree(&[
            (
                "app/kustomization.yaml",
                "namespace: mine\nresources: [a.yaml]\n",
            ),
            ("app/a.yaml", &cm("a")),
        ]);
        let docs = build_for(r.path(), &r.path().join("app"), Some("target")).expect("build");
        assert_eq!(docs[0].namespace.as_deref(), Some("target"));
    }

    #[test]
    fn components_add_resources_and_transform_the_including_kustomization() {
        let r = tree(&[
            (
                "app/kustomization.yaml",
                "resources: [a.yaml]\ncomponents: [../components/common]\n",
            ),
            ("app/a.yaml", &cm("a")),
            (
                "components/common/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nnamespace: shared\nresources: [c.yaml]\n",
            ),
            ("components/common/c.yaml", &cm("c")),
            ("bad/kustomization.yaml", "resources: [a.yaml]\ncomponents: [../app]\n"),
            ("bad/a.yaml", &cm("a")),
            ("worse/kustomization.yaml", "resources: [../components/common]\n"),
        ]);
        let docs = build(r.path(), &r.path().join("app")).expect("build");
        assert_eq!(names(&docs), ["a", "c"]);
        assert!(docs
            .iter()
            .all(|d| d.namespace.as_deref() == Some("shared")));
        assert_eq!(docs[1].file, PathBuf::from("components/common/c.yaml"));

        let e = err(&r, "bad");
        assert!(
            e.to_string()
                .contains("expected kind 'Component' for path 'app' but got 'Kustomization'"),
            "{e}"
        );
        let e = err(&r, "worse");
        assert!(
            e.to_string()
                .contains("expected kind != 'Component' for path 'components/common'"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_without_kustomization_gets_the_generated_one() {
        let r = tree(&[
            ("cluster/b.yaml", &cm("b")),
            (
                "cluster/a.yml",
                &format!("---\n{}---\n\n---\n{}", cm("a1"), cm("a2")),
            ),
            ("cluster/notes.txt", "not a manifest"),
            ("cluster/data.json", "{\"kind\": \"ConfigMap\"}"),
            ("cluster/sub/c.yaml", &cm("c")),
            (
                "cluster/withk/kustomization.yaml",
                "namespace: k\nresources: [d.yaml]\n",
            ),
            ("cluster/withk/d.yaml", &cm("d")),
            ("cluster/withk/unlisted.yaml", &cm("unlisted")),
            ("cluster/.git/config.yaml", "not: kubernetes\n"),
            ("cluster/.sops.yaml", "creation_rules: []\n"),
            ("cluster/.hidden.yaml", &cm("hidden")),
        ]);
        let docs = build(r.path(), &r.path().join("cluster")).expect("build");
        // source-controller only drops its default patterns, not every dotfile.
        assert_eq!(names(&docs), ["hidden", "a1", "a2", "b", "c", "d"]);
        assert_eq!(docs[5].namespace.as_deref(), Some("k"));
        assert_eq!(docs[1].file, PathBuf::from("cluster/a.yml"));
    }

    #[test]
    fn the_generator_refuses_yaml_that_is_not_kubernetes() {
        let r = tree(&[
            ("cluster/a.yaml", &cm("a")),
            ("cluster/helm/values.yaml", "replicas: 2\n"),
        ]);
        let e = err(&r, "cluster");
        let msg = e.to_string();
        assert!(
            msg.starts_with("failed to decode Kubernetes YAML from cluster/helm/values.yaml"),
            "{msg}"
        );
        assert!(msg.contains("missing kind"), "{msg}");
        assert_eq!(e.flux_condition().0, "BuildFailed");
        assert!(!e.flux_condition().1.starts_with("kustomize build failed"));
    }

    #[test]
    fn a_missing_resource_names_the_kustomization_and_the_entry() {
        let r = tree(&[
            ("apps/kustomization.yaml", "resources:\n  - ./security\n"),
            (
                "apps/security/kustomization.yaml",
                "resources:\n  - ./namespace.yaml\n  - ./missing.yaml\n",
            ),
            (
                "apps/security/namespace.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: security\n",
            ),
        ]);
        let e = err(&r, "apps");
        assert_eq!(
            e.to_string(),
            "accumulating resources from './security' in apps/kustomization.yaml: \
             recursed accumulation of path 'apps/security': \
             accumulating resources from './missing.yaml' in apps/security/kustomization.yaml: \
             open apps/security/missing.yaml: no such file or directory"
        );
        let (reason, msg) = e.flux_condition();
        assert_eq!(reason, "BuildFailed");
        assert!(msg.starts_with("kustomize build failed: accumulating resources"));
    }

    #[test]
    fn a_resource_directory_needs_a_kustomization() {
        let r = tree(&[
            ("app/kustomization.yaml", "resources: [./plain]\n"),
            ("app/plain/a.yaml", &cm("a")),
        ]);
        let msg = err(&r, "app").to_string();
        assert!(
            msg.ends_with(
                "unable to find one of 'kustomization.yaml', 'kustomization.yml' or 'Kustomization' in directory 'app/plain'"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_path_is_reported_before_building() {
        let r = tree(&[("a.yaml", &cm("a"))]);
        let e = err(&r, "nowhere");
        assert_eq!(
            e.flux_condition(),
            (
                "ArtifactFailed",
                "kustomization path not found: stat nowhere: no such file or directory".into()
            )
        );
    }

    #[test]
    fn bad_yaml_names_the_file() {
        let r = tree(&[
            (
                "app/kustomization.yaml",
                "resources: [ok.yaml, broken.yaml]\n",
            ),
            ("app/ok.yaml", &cm("ok")),
            (
                "app/broken.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
            ),
        ]);
        let msg = err(&r, "app").to_string();
        assert!(msg.contains("MalformedYAMLError"), "{msg}");
        assert!(msg.contains("in File: app/broken.yaml"), "{msg}");

        let r = tree(&[("app/kustomization.yaml", "resources: [a.yaml\n")]);
        let msg = err(&r, "app").to_string();
        assert!(
            msg.starts_with("app/kustomization.yaml: invalid Kustomization"),
            "{msg}"
        );
    }

    #[test]
    fn cycles_are_refused() {
        let r = tree(&[
            ("a/kustomization.yaml", "resources: [../b]\n"),
            ("b/kustomization.yaml", "resources: [../a]\n"),
            ("self/kustomization.yaml", "resources: [./]\n"),
            ("up/kustomization.yaml", "resources: [./down]\n"),
            ("up/down/kustomization.yaml", "resources: [..]\n"),
        ]);
        let msg = err(&r, "a").to_string();
        assert!(
            msg.ends_with("cycle detected: candidate root 'a' contains visited root 'a'"),
            "{msg}"
        );
        let msg = err(&r, "self").to_string();
        assert!(msg.contains("cycle detected"), "{msg}");
        let msg = err(&r, "up").to_string();
        assert!(
            msg.ends_with("cycle detected: candidate root 'up' contains visited root 'up/down'"),
            "{msg}"
        );
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let r = tree(&[
            ("d1/kustomization.yaml", "resources: [d2]\n"),
            ("d1/d2/kustomization.yaml", "resources: [d3]\n"),
            ("d1/d2/d3/kustomization.yaml", "resources: [d4]\n"),
            ("d1/d2/d3/d4/kustomization.yaml", "resources: [a.yaml]\n"),
            ("d1/d2/d3/d4/a.yaml", &cm("a")),
        ]);
        let dir = r.path().join("d1");
        assert_eq!(names(&build(r.path(), &dir).expect("build")), ["a"]);
        let e = Builder::new(r.path(), 3)
            .root(&dir, None)
            .expect_err("too deep");
        assert!(
            e.to_string().ends_with(
                "kustomizations nest more than 3 deep at 'd1/d2/d3/d4' (a symlink loop?)"
            ),
            "{e}"
        );
    }

    #[test]
    fn documents_are_read_as_kustomize_reads_them() {
        let list = "apiVersion: v1\nkind: ConfigMapList\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: l1\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: l2\n";
        let local = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\n";
        let r = tree(&[
            (
                "app/kustomization.yaml",
                "resources: [multi.yaml, https://github.com/x/y//z, github.com/x/y]\n",
            ),
            (
                "app/multi.yaml",
                &format!(
                    "# comment\n---\n{list}---\n---\n{}...\n---\n{local}--- {{}}\n---\n{}",
                    cm("m1"),
                    cm("m2")
                ),
            ),
        ]);
        let docs = build(r.path(), &r.path().join("app")).expect("build");
        // List items go after the file's other documents; local config is dropped.
        assert_eq!(names(&docs), ["m1", "m2", "l1", "l2"]);

        let r = tree(&[
            ("app/kustomization.yaml", "resources: [noname.yaml]\n"),
            (
                "app/noname.yaml",
                "apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
            ),
        ]);
        let msg = err(&r, "app").to_string();
        assert!(msg.contains("missing metadata.name"), "{msg}");
        assert!(msg.contains("in File: app/noname.yaml"), "{msg}");
    }

    #[test]
    fn objects_without_api_version_fail_kustomize_controller() {
        let r = tree(&[
            ("app/kustomization.yaml", "resources: [a.yaml]\n"),
            ("app/a.yaml", "kind: ConfigMap\nmetadata:\n  name: a\n"),
        ]);
        let e = err(&r, "app");
        let (reason, msg) = e.flux_condition();
        assert_eq!(reason, "BuildFailed");
        assert!(
            msg.starts_with("failed to decode Kubernetes apiVersion, kind and name from"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let r = tree(&[
            ("app/kustomization.yaml", "resources: [a.yaml, ./sub]\n"),
            ("app/a.yaml", &cm("same")),
            ("app/sub/kustomization.yaml", "resources: [b.yaml]\n"),
            (
                "app/sub/b.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: same\n  namespace: default\n",
            ),
            ("other/kustomization.yaml", "resources: [a.yaml, ./sub]\n"),
            ("other/a.yaml", &cm("same")),
            (
                "other/sub/kustomization.yaml",
                "namespace: elsewhere\nresources: [b.yaml]\n",
            ),
            ("other/sub/b.yaml", &cm("same")),
            (
                "ns/kustomization.yaml",
                "namespace: one\nresources: [a.yaml, b.yaml]\n",
            ),
            (
                "ns/a.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
            ),
            (
                "ns/b.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n",
            ),
        ]);
        let msg = err(&r, "app").to_string();
        assert!(
            msg.contains(
                "may not add resource with an already registered id: ConfigMap.v1.[noGrp]/same.default"
            ),
            "{msg}"
        );
        // Different namespaces: different ids.
        assert_eq!(
            names(&build(r.path(), &r.path().join("other")).expect("build")),
            ["same", "same"]
        );
        let msg = err(&r, "ns").to_string();
        assert!(
            msg.contains("namespace transformation produces ID conflict"),
            "{msg}"
        );
    }

    #[test]
    fn kustomization_files_are_checked_like_kustomize() {
        let r = tree(&[
            ("unknown/kustomization.yaml", "resourcez: [a.yaml]\n"),
            (
                "patched/kustomization.yaml",
                "resources: []\npatches:\n  - path: p.yaml\n",
            ),
            (
                "labels/kustomization.yaml",
                "resources: [a.yaml]\ncommonLabels: {a: b}\n",
            ),
            ("labels/a.yaml", &cm("a")),
            ("two/kustomization.yaml", "resources: []\n"),
            ("two/kustomization.yml", "resources: []\n"),
            ("outer/kustomization.yaml", "resources: [./empty]\n"),
            (
                "outer/empty/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
            ),
            ("wrongkind/kustomization.yaml", "kind: Deployment\n"),
        ]);
        let msg = err(&r, "unknown").to_string();
        assert!(msg.contains("json: unknown field \"resourcez\""), "{msg}");
        let msg = err(&r, "patched").to_string();
        assert!(msg.contains("'patches' is not simulated"), "{msg}");
        assert_eq!(
            names(&build(r.path(), &r.path().join("labels")).expect("build")),
            ["a"]
        );
        let msg = err(&r, "two").to_string();
        assert!(msg.contains("Found multiple kustomization files"), "{msg}");
        let msg = err(&r, "outer").to_string();
        assert!(msg.contains("kustomization.yaml is empty"), "{msg}");
        // The root is never "empty" (kustomize-controller adds buildMetadata).
        assert!(build(r.path(), &r.path().join("outer/empty"))
            .expect("build")
            .is_empty());
        let msg = err(&r, "wrongkind").to_string();
        assert!(
            msg.contains("kind should be Kustomization or Component"),
            "{msg}"
        );
    }

    #[test]
    fn nothing_outside_the_artifact_is_read() {
        let t = tree(&[
            ("outside.yaml", &cm("outside")),
            (
                "repo/app/kustomization.yaml",
                "resources: [../../outside.yaml]\n",
            ),
            (
                "repo/git/kustomization.yaml",
                "resources: [../.git/x.yaml]\n",
            ),
            ("repo/.git/x.yaml", &cm("x")),
        ]);
        let repo = t.path().join("repo");
        let e = build(&repo, &repo.join("app")).expect_err("outside");
        assert!(
            e.to_string()
                .ends_with("outside.yaml' is not in or below the repository root"),
            "{e}"
        );
        let e = build(&repo, &repo.join("git")).expect_err("excluded");
        assert!(
            e.to_string()
                .ends_with("open .git/x.yaml: no such file or directory"),
            "{e}"
        );
    }

    #[test]
    fn every_kustomization_of_the_lab_repository_builds() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/repository/repo");
        let mut queue = vec![("kubernetes/flux/cluster".to_string(), None::<String>)];
        let mut built = 0;
        let mut namespaces = Vec::new();
        while let Some((path, target)) = queue.pop() {
            let docs = build_for(&repo, &repo.join(&path), target.as_deref())
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            built += 1;
            for d in docs {
                let kind = str_at(&d.value, "/kind");
                if kind == "Namespace" {
                    namespaces.push(str_at(&d.value, "/metadata/name").to_string());
                }
                if kind == "Kustomization" {
                    let p = str_at(&d.value, "/spec/path").trim_start_matches("./");
                    let t = str_at(&d.value, "/spec/targetNamespace");
                    queue.push((p.to_string(), Some(t.to_string()).filter(|t| !t.is_empty())));
                }
            }
        }
        assert!(built > 10, "only {built} builds");
        namespaces.sort();
        assert_eq!(
            namespaces,
            [
                "cert-manager",
                "database",
                "default",
                "flux-system",
                "kube-system",
                "network",
                "security",
                "storage"
            ]
        );
    }
}
