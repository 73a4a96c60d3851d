//! APIs a Kubernetes minor stops serving, and the scan of the GitOps tree for
//! manifests that use them: an object left there is re-created by Flux after
//! the upgrade (and its apply then fails), so `upgrade kubernetes` refuses
//! before the first node is touched. The live-cluster scan in
//! [`super::kubernetes`] reads the same table.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use crate::gitops::{walk, GitopsError, LayerMap, Loc};

/// One API version of one kind that Kubernetes 1.`minor` no longer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedApi {
    pub minor: u32,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The plural the live scan lists.
    pub resource: &'static str,
    /// Whether listing `resource` in `api_version` tells that such objects
    /// exist. Not when the same objects are served through a newer version
    /// too (flowcontrol: the apiserver's own FlowSchemas list through every
    /// served version), since a list cannot say which version wrote them.
    pub live: bool,
    /// What to use instead, when there is one to name.
    pub instead: Option<&'static str>,
}

/// Removals from Kubernetes 1.32 to 1.37, the minors Talos 1.12–1.14 run.
///
/// Sources (facts only):
/// - 1.32: flowcontrol.apiserver.k8s.io/v1beta3 FlowSchema and
///   PriorityLevelConfiguration, use flowcontrol.apiserver.k8s.io/v1
///   (kubernetes.io/docs/reference/using-api/deprecation-guide, "v1.32").
/// - 1.33–1.36: no API removals (the deprecation guide lists none; for
///   1.35→1.36 go-kubernetes' `kubernetes/upgrade/checks.go` lists feature
///   gates only — research-13-16 §6 item 4).
/// - 1.37: scheduling.k8s.io/v1alpha2 workloads and podgroups
///   (go-kubernetes v0.2.41 `kubernetes/upgrade/checks.go`, research §6).
pub const REMOVED: &[RemovedApi] = &[
    RemovedApi {
        minor: 32,
        api_version: "flowcontrol.apiserver.k8s.io/v1beta3",
        kind: "FlowSchema",
        resource: "flowschemas",
        live: false,
        instead: Some("flowcontrol.apiserver.k8s.io/v1"),
    },
    RemovedApi {
        minor: 32,
        api_version: "flowcontrol.apiserver.k8s.io/v1beta3",
        kind: "PriorityLevelConfiguration",
        resource: "prioritylevelconfigurations",
        live: false,
        instead: Some("flowcontrol.apiserver.k8s.io/v1"),
    },
    RemovedApi {
        minor: 37,
        api_version: "scheduling.k8s.io/v1alpha2",
        kind: "Workload",
        resource: "workloads",
        live: true,
        instead: None,
    },
    RemovedApi {
        minor: 37,
        api_version: "scheduling.k8s.io/v1alpha2",
        kind: "PodGroup",
        resource: "podgroups",
        live: true,
        instead: None,
    },
];

/// The removals of Kubernetes 1.`minor`.
pub fn removed_in(minor: u32) -> impl Iterator<Item = &'static RemovedApi> {
    REMOVED.iter().filter(move |r| r.minor == minor)
}

/// A manifest of the GitOps tree whose API the target removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFinding {
    /// The file (relative to the repository) and the line of its `apiVersion`.
    pub loc: Loc,
    pub api: RemovedApi,
    pub name: String,
}

impl fmt::Display for TreeFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} {:?} in the GitOps tree: Kubernetes 1.{} removes that API, so Flux would re-create it and fail after the upgrade; {}",
            self.loc,
            self.api.api_version,
            self.api.kind,
            self.name,
            self.api.minor,
            match self.api.instead {
                Some(v) => format!("move it to {v} (or delete it) first"),
                None => "migrate or delete it first".into(),
            }
        )
    }
}

/// What the tree scan read, for the plan and the preflight line.
#[derive(Debug, Clone, Default)]
pub struct TreeScan {
    /// Documents of every Kustomization build that were looked at.
    pub documents: usize,
    pub findings: Vec<TreeFinding>,
}

/// Every document the Flux tree under `repo` (from `sync_path`, as `up`
/// walks it) applies, checked against the removals of 1.`minor`. Charts
/// rendered from HelmReleases are not in the tree and not scanned.
pub fn scan_tree(
    repo: &Path,
    sync_path: &str,
    layers: LayerMap,
    minor: u32,
) -> Result<TreeScan, GitopsError> {
    let graph = walk(repo, sync_path, layers)?;
    let mut seen: BTreeSet<Loc> = BTreeSet::new();
    let mut scan = TreeScan::default();
    for node in graph.nodes.values() {
        let Some(path) = &node.path else { continue };
        let dir = repo.join(path);
        // A missing path is already a problem of the graph (`plan` shows it).
        if !dir.is_dir() {
            continue;
        }
        for (doc, loc, _) in crate::gitops::walk::build_docs(repo, &dir)? {
            // Two Kustomizations may build the same file: report it once.
            if !seen.insert(loc.clone()) {
                continue;
            }
            scan.documents += 1;
            let field = |p: &str| doc.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
            let (api_version, kind) = (field("/apiVersion"), field("/kind"));
            if let Some(api) =
                removed_in(minor).find(|r| r.api_version == api_version && r.kind == kind)
            {
                scan.findings.push(TreeFinding {
                    loc: Loc {
                        line: api_version_line(repo, &loc),
                        file: loc.file,
                    },
                    api: *api,
                    name: field("/metadata/name").to_string(),
                });
            }
        }
    }
    Ok(scan)
}

/// The line of the document's `apiVersion:` key (its first line if unread).
fn api_version_line(repo: &Path, doc: &Loc) -> usize {
    let Ok(text) = std::fs::read_to_string(repo.join(&doc.file)) else {
        return doc.line;
    };
    text.lines()
        .enumerate()
        .skip(doc.line.saturating_sub(1))
        .take_while(|(_, l)| !l.starts_with("---"))
        .find(|(_, l)| l.starts_with("apiVersion:"))
        .map(|(i, _)| i + 1)
        .unwrap_or(doc.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A sync path with one Flux Kustomization whose folder holds `app`.
    fn tree(app: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "kubernetes/flux/cluster/ks.yaml",
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: flux-system\nspec:\n  path: ./kubernetes/apps\n",
        );
        write(d.path(), "kubernetes/apps/manifests.yaml", app);
        d
    }

    const APP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\n# the removed one\napiVersion: scheduling.k8s.io/v1alpha2\nkind: Workload\nmetadata:\n  name: train\n";

    #[test]
    fn a_removed_api_in_the_tree_is_found_with_file_and_line() {
        let d = tree(APP);
        let scan = scan_tree(d.path(), "kubernetes/flux/cluster", LayerMap::endsys(), 37).unwrap();
        assert_eq!(scan.findings.len(), 1, "{:?}", scan.findings);
        let f = &scan.findings[0];
        assert_eq!(f.loc.to_string(), "kubernetes/apps/manifests.yaml:7", "{f}");
        assert_eq!((f.api.kind, f.name.as_str()), ("Workload", "train"));
        let text = f.to_string();
        assert!(
            text.contains("scheduling.k8s.io/v1alpha2") && text.contains("Kubernetes 1.37"),
            "{text}"
        );
        // The same tree is clean for a minor that removes nothing of it.
        let scan = scan_tree(d.path(), "kubernetes/flux/cluster", LayerMap::endsys(), 36).unwrap();
        assert!(scan.findings.is_empty(), "{:?}", scan.findings);
        assert!(scan.documents >= 3, "{}", scan.documents);
    }

    #[test]
    fn a_clean_tree_has_no_finding() {
        let d = tree("apiVersion: flowcontrol.apiserver.k8s.io/v1\nkind: FlowSchema\nmetadata:\n  name: fs\n");
        let scan = scan_tree(d.path(), "kubernetes/flux/cluster", LayerMap::endsys(), 32).unwrap();
        assert!(scan.findings.is_empty(), "{:?}", scan.findings);
        assert_eq!(scan.documents, 2);
    }

    #[test]
    fn the_table_covers_each_live_entry_with_a_resource() {
        for r in REMOVED {
            assert!(r.api_version.contains('/') && !r.kind.is_empty(), "{r:?}");
            assert!(!r.resource.is_empty() && r.resource == r.resource.to_lowercase());
            assert!((32..=37).contains(&r.minor), "{r:?}");
        }
    }
}
