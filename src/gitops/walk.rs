//! Walks the Flux tree in a repository checkout, the way kustomize-controller
//! would build it: from the sync path (`kubernetes/flux/cluster`), every Flux
//! Kustomization found is followed to its `spec.path`, whose `kustomization.yaml`
//! `resources` (or, without one, every YAML file below it) give the next
//! Kustomizations — the `ks.yaml` files of the apps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{GitopsError, Key, LayerMap, Loc};

const KS_GROUP: &str = "kustomize.toolkit.fluxcd.io/";
const HR_GROUP: &str = "helm.toolkit.fluxcd.io/";

/// A `dependsOn` entry, namespace-resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub key: Key,
    pub loc: Loc,
}

/// One Flux Kustomization of the repository graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsNode {
    pub key: Key,
    pub loc: Loc,
    /// `spec.path`, relative to the repository root, without `./`.
    pub path: Option<String>,
    /// The Kustomization whose build contains this one (None for `flux-system`).
    pub parent: Option<Key>,
    pub depends_on: Vec<Dep>,
    pub wait: bool,
    pub target_namespace: Option<String>,
    /// `spec.decryption.secretRef.name` when SOPS decryption is on.
    pub sops_secret: Option<String>,
    /// Secrets named in `spec.postBuild.substituteFrom` (the build fails
    /// without them unless marked optional).
    pub substitute_from: Vec<String>,
    /// HelmReleases its build applies.
    pub helm_releases: Vec<Key>,
}

/// What is wrong with the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// `dependsOn` names a Kustomization that nothing in the tree creates.
    MissingDependency { from: Key, to: Key },
    /// A `dependsOn` cycle (first element repeated implicitly at the end).
    Cycle(Vec<Key>),
    /// `spec.path` does not exist in the checkout.
    MissingPath { key: Key, path: String },
    /// Two documents define the same Kustomization.
    Duplicate { key: Key, first: Loc },
    /// A Kustomization whose `spec.path` builds its own definition (the folder of
    /// its `ks.yaml`): it reconciles itself. Flux allows it; prune can then delete it.
    AppliesItself { key: Key, path: String },
}

/// A problem and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub loc: Loc,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ProblemKind::MissingDependency { from, to } => write!(
                f,
                "{}: Kustomization {from} depends on {to}, which no Kustomization in the tree defines",
                self.loc
            ),
            ProblemKind::Cycle(keys) => {
                let mut s: Vec<String> = keys.iter().map(Key::to_string).collect();
                if let Some(first) = keys.first() {
                    s.push(first.to_string());
                }
                write!(f, "{}: dependsOn cycle: {}", self.loc, s.join(" -> "))
            }
            ProblemKind::MissingPath { key, path } => write!(
                f,
                "{}: Kustomization {key} has spec.path {path:?}, which does not exist",
                self.loc
            ),
            ProblemKind::Duplicate { key, first } => write!(
                f,
                "{}: Kustomization {key} is defined twice (first at {first})",
                self.loc
            ),
            ProblemKind::AppliesItself { key, path } => write!(
                f,
                "{}: Kustomization {key} applies itself: its spec.path {path:?} is the folder of its own definition, so Flux's build of that folder includes this file. Flux allows it, but the Kustomization then reconciles (and with prune: true can delete) itself; point spec.path at the app's own folder, e.g. \"./{path}/app\"",
                self.loc
            ),
        }
    }
}

/// The repository graph: the plan.
#[derive(Debug, Clone)]
pub struct Graph {
    pub repo: PathBuf,
    pub sync_path: PathBuf,
    pub nodes: BTreeMap<Key, KsNode>,
    pub problems: Vec<Problem>,
    pub layers: LayerMap,
}

impl Graph {
    pub fn layer_of(&self, key: &Key) -> u8 {
        self.layers.layer(key)
    }

    /// Kustomizations that list `key` in their `dependsOn`.
    pub fn dependents(&self, key: &Key) -> Vec<Key> {
        self.nodes
            .values()
            .filter(|n| n.depends_on.iter().any(|d| &d.key == key))
            .map(|n| n.key.clone())
            .collect()
    }

    /// Dependencies first (parents before children when nothing else orders
    /// them); members of a cycle come last, in name order.
    pub fn topo_order(&self) -> Vec<Key> {
        let mut indeg: BTreeMap<&Key, usize> = BTreeMap::new();
        let mut out_edges: BTreeMap<&Key, Vec<&Key>> = BTreeMap::new();
        for n in self.nodes.values() {
            indeg.entry(&n.key).or_insert(0);
            let mut pre: BTreeSet<&Key> = n
                .depends_on
                .iter()
                .map(|d| &d.key)
                .filter(|k| self.nodes.contains_key(*k))
                .collect();
            if let Some(p) = n.parent.as_ref().filter(|p| self.nodes.contains_key(*p)) {
                pre.insert(p);
            }
            for p in pre {
                *indeg.entry(&n.key).or_insert(0) += 1;
                out_edges.entry(p).or_default().push(&n.key);
            }
        }
        let mut ready: BTreeSet<&Key> = indeg
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut order = Vec::new();
        while let Some(k) = ready.pop_first() {
            order.push(k.clone());
            for c in out_edges.get(k).cloned().unwrap_or_default() {
                if let Some(d) = indeg.get_mut(c) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(c);
                    }
                }
            }
        }
        let done: BTreeSet<Key> = order.iter().cloned().collect();
        order.extend(self.nodes.keys().filter(|k| !done.contains(*k)).cloned());
        order
    }
}

/// One YAML document of a manifest file and where it starts.
#[derive(Debug)]
pub struct Doc {
    pub value: Value,
    pub text: String,
    pub loc: Loc,
}

/// Walks the tree under `repo` from `sync_path` (e.g. `kubernetes/flux/cluster`).
/// The `flux-system` Kustomization the FluxInstance generates is the root.
/// Read and parse failures are errors; graph problems land in [`Graph::problems`].
pub fn walk(repo: &Path, sync_path: &str, layers: LayerMap) -> Result<Graph, GitopsError> {
    let sync = clean(sync_path);
    let root = KsNode {
        key: Key::new("flux-system", "flux-system"),
        loc: Loc {
            file: PathBuf::from("<FluxInstance flux-system/flux-system sync>"),
            line: 0,
        },
        path: Some(sync.clone()),
        parent: None,
        depends_on: vec![],
        wait: false,
        target_namespace: None,
        sops_secret: None,
        substitute_from: vec![],
        helm_releases: vec![],
    };
    if !repo.join(&sync).is_dir() {
        return Err(GitopsError::Io {
            path: repo.join(&sync),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "sync path is not a directory",
            ),
        });
    }
    let mut g = Graph {
        repo: repo.to_path_buf(),
        sync_path: PathBuf::from(&sync),
        nodes: BTreeMap::new(),
        problems: vec![],
        layers,
    };
    let mut queue = VecDeque::from([root.key.clone()]);
    g.nodes.insert(root.key.clone(), root);
    while let Some(k) = queue.pop_front() {
        let Some(parent) = g.nodes.get(&k).cloned() else {
            continue;
        };
        let Some(path) = parent.path.clone() else {
            continue;
        };
        let dir = repo.join(&path);
        if !dir.exists() {
            g.problems.push(Problem {
                loc: parent.loc.clone(),
                kind: ProblemKind::MissingPath {
                    key: parent.key.clone(),
                    path,
                },
            });
            continue;
        }
        let mut docs = Vec::new();
        build(repo, &dir, None, &mut docs, 0)?;
        let mut hrs = Vec::new();
        for (doc, ns_override) in docs {
            let api = s(&doc.value, "/apiVersion");
            let kind = s(&doc.value, "/kind");
            let ns = parent
                .target_namespace
                .clone()
                .or(ns_override)
                .or_else(|| opt(&doc.value, "/metadata/namespace"))
                .unwrap_or_else(|| parent.key.namespace.clone());
            let name = s(&doc.value, "/metadata/name").to_string();
            if kind == "HelmRelease" && api.starts_with(HR_GROUP) {
                hrs.push(Key::new(ns, name));
                continue;
            }
            if kind != "Kustomization" || !api.starts_with(KS_GROUP) {
                continue;
            }
            if name.is_empty() {
                return Err(GitopsError::Invalid {
                    loc: doc.loc,
                    message: "Flux Kustomization without metadata.name".into(),
                });
            }
            let node = ks_node(&doc, Key::new(ns, name), &parent.key)?;
            if node.key == parent.key {
                g.problems.push(Problem {
                    loc: node.loc.clone(),
                    kind: ProblemKind::AppliesItself {
                        key: node.key.clone(),
                        path: path.clone(),
                    },
                });
                continue;
            }
            if let Some(first) = g.nodes.get(&node.key) {
                g.problems.push(Problem {
                    loc: node.loc.clone(),
                    kind: ProblemKind::Duplicate {
                        key: node.key.clone(),
                        first: first.loc.clone(),
                    },
                });
                continue;
            }
            queue.push_back(node.key.clone());
            g.nodes.insert(node.key.clone(), node);
        }
        if let Some(p) = g.nodes.get_mut(&k) {
            p.helm_releases = hrs;
        }
    }
    check(&mut g);
    Ok(g)
}

fn ks_node(doc: &Doc, key: Key, parent: &Key) -> Result<KsNode, GitopsError> {
    let v = &doc.value;
    let lines: Vec<&str> = doc.text.lines().collect();
    let dep_start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("dependsOn:"))
        .unwrap_or(0);
    let mut depends_on = Vec::new();
    if let Some(ds) = v.pointer("/spec/dependsOn") {
        let Some(ds) = ds.as_array() else {
            return Err(GitopsError::Invalid {
                loc: at(&doc.loc, dep_start),
                message: format!("{key}: spec.dependsOn must be a list"),
            });
        };
        for d in ds {
            let name = s(d, "/name");
            if name.is_empty() {
                return Err(GitopsError::Invalid {
                    loc: at(&doc.loc, dep_start),
                    message: format!("{key}: a dependsOn entry has no name"),
                });
            }
            let ns = opt(d, "/namespace").unwrap_or_else(|| key.namespace.clone());
            let line = lines
                .iter()
                .enumerate()
                .skip(dep_start)
                .find(|(_, l)| {
                    let t = l.trim_start().trim_start_matches("- ").trim();
                    t.strip_prefix("name:")
                        .is_some_and(|r| r.trim().trim_matches(['"', '\'']) == name)
                })
                .map(|(i, _)| i)
                .unwrap_or(dep_start);
            depends_on.push(Dep {
                key: Key::new(ns, name),
                loc: at(&doc.loc, line),
            });
        }
    }
    let kind_line = lines
        .iter()
        .position(|l| l.starts_with("kind:"))
        .unwrap_or(0);
    Ok(KsNode {
        loc: at(&doc.loc, kind_line),
        path: opt(v, "/spec/path").map(|p| clean(&p)),
        parent: Some(parent.clone()),
        depends_on,
        wait: v.pointer("/spec/wait").and_then(Value::as_bool) == Some(true),
        target_namespace: opt(v, "/spec/targetNamespace"),
        sops_secret: opt(v, "/spec/decryption/secretRef/name"),
        substitute_from: v
            .pointer("/spec/postBuild/substituteFrom")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter(|r| {
                        s(r, "/kind") == "Secret" && r.get("optional") != Some(&Value::Bool(true))
                    })
                    .map(|r| s(r, "/name").to_string())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        helm_releases: vec![],
        key,
    })
}

fn at(doc: &Loc, offset: usize) -> Loc {
    Loc {
        file: doc.file.clone(),
        line: doc.line + offset,
    }
}

fn clean(p: &str) -> String {
    let p = p.trim();
    let p = p.strip_prefix("./").unwrap_or(p);
    p.trim_start_matches('/').trim_end_matches('/').to_string()
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn opt(v: &Value, p: &str) -> Option<String> {
    v.pointer(p)
        .and_then(Value::as_str)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GitopsError + '_ {
    move |source| GitopsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn rel(repo: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(repo).unwrap_or(p).to_path_buf()
}

/// The documents a kustomize build of `dir` would see, each with the namespace
/// an enclosing `kustomization.yaml` imposes (the outermost one wins).
fn build(
    repo: &Path,
    dir: &Path,
    ns: Option<String>,
    out: &mut Vec<(Doc, Option<String>)>,
    depth: usize,
) -> Result<(), GitopsError> {
    if depth > 32 {
        return Err(GitopsError::Invalid {
            loc: Loc {
                file: rel(repo, dir),
                line: 0,
            },
            message: "kustomization resources nest more than 32 deep (a loop?)".into(),
        });
    }
    let kfile = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let Some(kfile) = kfile else {
        // kustomize-controller generates a kustomization of every manifest below.
        let mut files = Vec::new();
        yaml_files(dir, &mut files)?;
        for f in files {
            for d in docs(repo, &f)? {
                out.push((d, ns.clone()));
            }
        }
        return Ok(());
    };
    let text = read_manifest(repo, &kfile)?;
    let k: Value = serde_yaml_ng::from_str(&text).map_err(|e| GitopsError::Yaml {
        loc: Loc {
            file: rel(repo, &kfile),
            line: e.location().map(|l| l.line()).unwrap_or(0),
        },
        message: e.to_string(),
    })?;
    let ns = ns.or_else(|| opt(&k, "/namespace"));
    let resources = k
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in resources {
        let Some(r) = r.as_str() else { continue };
        if r.contains("://") || r.starts_with("github.com/") {
            continue;
        }
        let p: PathBuf = dir
            .join(r)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if p.is_dir() {
            build(repo, &p, ns.clone(), out, depth + 1)?;
        } else if p.is_file() {
            for d in docs(repo, &p)? {
                out.push((d, ns.clone()));
            }
        } else {
            let line = text
                .lines()
                .position(|l| l.contains(r))
                .map(|i| i + 1)
                .unwrap_or(0);
            return Err(GitopsError::Invalid {
                loc: Loc {
                    file: rel(repo, &kfile),
                    line,
                },
                message: format!("resource {r:?} does not exist"),
            });
        }
    }
    Ok(())
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), GitopsError> {
    // Symbolic links to folders are not followed (as kustomize-controller's
    // generator walks): a link to a parent folder would otherwise never end.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| !(e.file_type().is_ok_and(|t| t.is_symlink()) && e.path().is_dir()))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            yaml_files(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Splits a file into YAML documents, remembering where each starts.
fn docs(repo: &Path, file: &Path) -> Result<Vec<Doc>, GitopsError> {
    let text = read_manifest(repo, file)?;
    split_docs(&rel(repo, file), &text)
}

/// Reads a manifest within the size and nesting limits; a file that breaks them
/// is named with what is wrong.
fn read_manifest(repo: &Path, file: &Path) -> Result<String, GitopsError> {
    use crate::limits::{read_text, InputProblem, MAX_MANIFEST_BYTES};
    read_text(file, MAX_MANIFEST_BYTES).map_err(|p| match p {
        InputProblem::Other(e) => io(file)(e),
        p => GitopsError::Invalid {
            loc: Loc {
                file: rel(repo, file),
                line: 0,
            },
            message: format!("{} ({})", p.message(), p.hint()),
        },
    })
}

/// Splits the text of a manifest file (`relf`, for locations) into YAML
/// documents, remembering where each starts. Public for the fuzz targets.
pub fn split_docs(relf: &Path, text: &str) -> Result<Vec<Doc>, GitopsError> {
    if let Err(p) = crate::limits::check_text(text, crate::limits::MAX_MANIFEST_BYTES) {
        return Err(GitopsError::Invalid {
            loc: Loc {
                file: relf.to_path_buf(),
                line: 0,
            },
            message: p.message(),
        });
    }
    let relf = relf.to_path_buf();
    let mut out = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    let mut flush = |start: usize, cur: &mut String| -> Result<(), GitopsError> {
        let t = std::mem::take(cur);
        if t.trim().is_empty() {
            return Ok(());
        }
        let loc = Loc {
            file: relf.clone(),
            line: start,
        };
        let value: Value = serde_yaml_ng::from_str(&t).map_err(|e| GitopsError::Yaml {
            loc: Loc {
                file: relf.clone(),
                line: start - 1 + e.location().map(|l| l.line()).unwrap_or(1),
            },
            message: e.to_string(),
        })?;
        if !value.is_null() {
            out.push(Doc {
                value,
                text: t,
                loc,
            });
        }
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            flush(start, &mut cur)?;
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    flush(start, &mut cur)?;
    Ok(out)
}

/// The documents a kustomize build of `dir` would apply (for the lab Flux):
/// each document, where it starts, and the namespace an enclosing
/// `kustomization.yaml` imposes.
pub(crate) fn build_docs(
    repo: &Path,
    dir: &Path,
) -> Result<Vec<(Value, Loc, Option<String>)>, GitopsError> {
    let mut docs = Vec::new();
    build(repo, dir, None, &mut docs, 0)?;
    Ok(docs
        .into_iter()
        .map(|(d, ns)| (d.value, d.loc, ns))
        .collect())
}

/// Missing dependencies and cycles.
fn check(g: &mut Graph) {
    for n in g.nodes.values() {
        for d in &n.depends_on {
            if !g.nodes.contains_key(&d.key) {
                g.problems.push(Problem {
                    loc: d.loc.clone(),
                    kind: ProblemKind::MissingDependency {
                        from: n.key.clone(),
                        to: d.key.clone(),
                    },
                });
            }
        }
    }
    // Depth-first search with colours; each cycle reported once, rotated to
    // start at its smallest key.
    let mut colour: BTreeMap<&Key, u8> = BTreeMap::new();
    let mut seen: BTreeSet<Vec<Key>> = BTreeSet::new();
    let mut cycles = Vec::new();
    for start in g.nodes.keys() {
        if colour.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(&Key, usize)> = vec![(start, 0)];
        colour.insert(start, 1);
        while let Some((k, i)) = stack.pop() {
            let deps = g.nodes.get(k).map(|n| &n.depends_on[..]).unwrap_or(&[]);
            if i < deps.len() {
                stack.push((k, i + 1));
                let d = &deps[i].key;
                if !g.nodes.contains_key(d) {
                    continue;
                }
                match colour.get(d).copied().unwrap_or(0) {
                    0 => {
                        colour.insert(d, 1);
                        stack.push((d, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|(x, _)| *x == d).unwrap_or(0);
                        let mut cyc: Vec<Key> =
                            stack[pos..].iter().map(|(x, _)| (*x).clone()).collect();
                        let min = cyc
                            .iter()
                            .enumerate()
                            .min_by(|a, b| a.1.cmp(b.1))
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        cyc.rotate_left(min);
                        if seen.insert(cyc.clone()) {
                            cycles.push(cyc);
                        }
                    }
                    _ => {}
                }
            } else {
                colour.insert(k, 2);
            }
        }
    }
    for cyc in cycles {
        let loc = cyc
            .first()
            .and_then(|a| {
                let next = cyc.get(1).unwrap_or(a);
                g.nodes
                    .get(a)
                    .and_then(|n| n.depends_on.iter().find(|d| &d.key == next))
                    .map(|d| d.loc.clone())
            })
            .unwrap_or(Loc {
                file: PathBuf::new(),
                line: 0,
            });
        g.problems.push(Problem {
            loc,
            kind: ProblemKind::Cycle(cyc),
        });
    }
}
