//! The rules kustomize and source-controller apply on the way, as data and small
//! functions: kustomization file names and fields, source-controller's artifact
//! exclusions, remote entries, document validation (`dropBadNodes`,
//! `HasNilEntryInList`), resource ids and `ResMap.Append`, the namespace
//! transformer with kustomize's cluster-scoped kinds, and path cleaning as Go's
//! `filepath` does it.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::outcome::{BuildError, BuiltDoc};

/// The file names kustomize recognises, in its order.
pub(super) const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Deepest nesting of kustomization directories the lab follows.
pub const MAX_DEPTH: usize = 64;

/// source-controller's default exclusions, by entry name (directories and
/// files; every pattern matches at any depth).
pub(super) const EXCLUDED_DIRS: [&str; 3] = [".git", ".github", ".circleci"];
pub(super) const EXCLUDED_FILES: [&str; 13] = [
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
pub(super) const KNOWN_FIELDS: [&str; 34] = [
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
pub(super) const NOT_SIMULATED: [&str; 13] = [
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
pub(super) const CLUSTER_SCOPED: [(&str, &str); 22] = [
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

/// `dropBadNodes`: empty documents dropped, the rest need a kind and a name.
pub(super) fn validated(v: Value) -> Result<Option<Value>, String> {
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
pub(super) fn nil_in_list(v: &Value, at: String) -> Option<String> {
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
pub(super) fn res_id(v: &Value) -> (String, String, String, String, String) {
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
pub(super) fn id_string(v: &Value) -> String {
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
pub(super) fn append(acc: &mut Vec<BuiltDoc>, d: BuiltDoc) -> Result<(), BuildError> {
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
pub(super) fn set_namespace(acc: &mut [BuiltDoc], ns: &str) -> Result<(), String> {
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

pub(super) fn group_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

pub(super) fn cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&(group, kind))
}

/// Annotated `config.kubernetes.io/local-config` (any value but "false").
pub(super) fn local_config(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .and_then(|a| a.get("config.kubernetes.io/local-config"))
        .is_some_and(|x| x.as_str() != Some("false"))
}

/// kustomize's remote-resource prefixes (fluxcd/pkg `IsLocalRelativePath`,
/// from kustomize's repospec), plus any other URL scheme.
pub(super) fn is_remote(entry: &str) -> bool {
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

pub(super) fn excluded_name(name: &str, is_dir: bool) -> bool {
    if is_dir {
        EXCLUDED_DIRS.contains(&name)
    } else {
        EXCLUDED_FILES.contains(&name)
    }
}

/// Not in source-controller's artifact (`rel` relative to the repository).
pub(super) fn excluded(rel: &Path) -> bool {
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
pub(super) fn clean(p: &Path) -> PathBuf {
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

pub(super) fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
