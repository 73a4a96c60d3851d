//! The build itself, as kustomize's `KustTarget` runs it: the root directory
//! (generated kustomization or kustomization file, `spec.targetNamespace`),
//! loading and checking kustomization files, the generator's scan, accumulating
//! `resources:` and `components:` in order with the loader's root and cycle
//! checks, and reading each file's documents.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::outcome::{BuildError, BuiltDoc};
use super::rules::*;

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

pub(super) struct Builder<'a> {
    repo: &'a Path,
    /// `repo` with symlinks resolved, for the root and cycle checks.
    real_repo: PathBuf,
    max_depth: usize,
}

impl<'a> Builder<'a> {
    pub(super) fn new(repo: &'a Path, max_depth: usize) -> Self {
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

    pub(super) fn root(
        &self,
        dir: &Path,
        target_ns: Option<&str>,
    ) -> Result<Vec<BuiltDoc>, BuildError> {
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
