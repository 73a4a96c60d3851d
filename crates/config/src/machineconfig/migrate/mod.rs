//! `migrate --to v1.14`: rewrites talhelper patches that write the v1alpha1 fields
//! contract 1.14 moved into documents (research B.3, types/k8s@v1.14.0-rc.1) into
//! patches of those documents. A pure function from patch texts to patch texts.
//!
//! Strategic patches are edited as text: the moved blocks are cut out (the rest of
//! the file, comments included, stays byte for byte) and the new documents are
//! appended after `---`, preceded by the comments that were inside the moved blocks.
//! RFC 6902 operations on moved paths become strategic documents (removing the
//! admission plugins or the audit policy deletes their document). A field with no
//! 1.14 target (apiserver `extraVolumes`, kubelet `extraMounts`, ...) is refused
//! with its file and line.

use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};

use super::error::{locate_line, ConfigError};
use super::patch::{LoadedPatch, Patch};
use super::talconfig::PatchSource;

/// One patch file before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub file: PathBuf,
    pub before: String,
    pub after: String,
}

impl Migrated {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// New documents being built for one file, keyed by kind and name.
#[derive(Default)]
struct Docs {
    list: Vec<Value>,
}

impl Docs {
    fn get(&mut self, kind: &str, name: Option<&str>) -> &mut Mapping {
        let pos = self.list.iter().position(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && d.get("name").and_then(Value::as_str) == name
        });
        let i = match pos {
            Some(i) => i,
            None => {
                let mut m = Mapping::new();
                m.insert(s("apiVersion"), s("v1alpha1"));
                m.insert(s("kind"), s(kind));
                if let Some(n) = name {
                    m.insert(s("name"), s(n));
                }
                self.list.push(Value::Mapping(m));
                self.list.len() - 1
            }
        };
        match &mut self.list[i] {
            Value::Mapping(m) => m,
            _ => unreachable!("documents are mappings"),
        }
    }

    fn set(&mut self, kind: &str, key: &str, v: Value) {
        self.get(kind, None).insert(s(key), v);
    }

    fn set_in(&mut self, kind: &str, path: &[&str], v: Value) {
        let mut cur = self.get(kind, None);
        for k in &path[..path.len() - 1] {
            let e = cur
                .entry(s(k))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !e.is_mapping() {
                *e = Value::Mapping(Mapping::new());
            }
            cur = match e {
                Value::Mapping(m) => m,
                _ => unreachable!("just made a mapping"),
            };
        }
        cur.insert(s(path[path.len() - 1]), v);
    }

    fn delete(&mut self, kind: &str, name: Option<&str>) {
        self.get(kind, name).insert(s("$patch"), s("delete"));
    }
}

/// A field that cannot be moved: its dotted path and why.
struct NoTarget {
    field: String,
    why: String,
}

fn no_target(field: &str, why: &str) -> NoTarget {
    NoTarget {
        field: field.to_string(),
        why: why.to_string(),
    }
}

/// Go's decoder turns a YAML scalar into the string an argument is; the new
/// documents' `extraArgs` take strings or lists of strings.
fn args(v: &Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Bool(b) => s(&b.to_string()),
                        Value::Number(n) => s(&n.to_string()),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn not_bool(v: &Value) -> Value {
    Value::Bool(!v.as_bool().unwrap_or(false))
}

/// Moves one legacy subtree (`section.key` of the v1alpha1 patch) into `docs`.
/// Returns false when the subtree is not one contract 1.14 moved.
fn move_subtree(section: &str, key: &str, v: &Value, docs: &mut Docs) -> Result<bool, NoTarget> {
    let path = format!("{section}.{key}");
    let fields: Vec<(String, &Value)> = v
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v))
                .collect()
        })
        .unwrap_or_default();
    let sub = |f: &str| format!("{path}.{f}");
    match path.as_str() {
        "cluster.apiServer" => {
            for (f, v) in fields {
                match f.as_str() {
                    "image" | "env" | "resources" => docs.set("KubeAPIServerConfig", &f, v.clone()),
                    "extraArgs" => docs.set("KubeAPIServerConfig", "extraArgs", args(v)),
                    "certSANs" => docs.set("KubeAPIServerConfig", "certExtraSANs", v.clone()),
                    "admissionControl" => {
                        for p in v.as_sequence().into_iter().flatten() {
                            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                            let d = docs.get("KubeAdmissionControlConfig", Some(name));
                            if let Some(c) = p.get("configuration") {
                                d.insert(s("configuration"), c.clone());
                            }
                        }
                    }
                    "auditPolicy" => docs.set("KubeAuditPolicyConfig", "configuration", v.clone()),
                    "disablePodSecurityPolicy" => {}
                    "extraVolumes" => {
                        return Err(no_target(&sub(&f), "the KubeAPIServerConfig document has no volumes (types/k8s/apiserver.go@v1.14.0-rc.1); mount what the flag needs another way or stay on contract 1.13"))
                    }
                    _ => return Err(no_target(&sub(&f), "no counterpart in KubeAPIServerConfig, KubeAuthorizerConfig or KubeAuthenticationConfig that this tool maps")),
                }
            }
        }
        "cluster.controllerManager" | "cluster.scheduler" => {
            let kind = if key == "scheduler" {
                "KubeSchedulerConfig"
            } else {
                "KubeControllerManagerConfig"
            };
            for (f, v) in fields {
                match f.as_str() {
                    "image" | "env" | "resources" => docs.set(kind, &f, v.clone()),
                    "config" if kind == "KubeSchedulerConfig" => docs.set(kind, "config", v.clone()),
                    "extraArgs" => docs.set(kind, "extraArgs", args(v)),
                    "extraVolumes" => return Err(no_target(&sub(&f), "the new document has no volumes")),
                    _ => return Err(no_target(&sub(&f), "no counterpart in the new document")),
                }
            }
        }
        "cluster.proxy" => {
            for (f, v) in fields {
                match f.as_str() {
                    "disabled" => docs.set("KubeProxyConfig", "enabled", not_bool(v)),
                    "image" | "mode" => docs.set("KubeProxyConfig", &f, v.clone()),
                    "extraArgs" => docs.set("KubeProxyConfig", "extraArgs", args(v)),
                    _ => return Err(no_target(&sub(&f), "no counterpart in KubeProxyConfig")),
                }
            }
        }
        "cluster.coreDNS" => {
            for (f, v) in fields {
                match f.as_str() {
                    "disabled" => docs.set("KubeCoreDNSConfig", "enabled", not_bool(v)),
                    "image" => docs.set("KubeCoreDNSConfig", "image", v.clone()),
                    _ => return Err(no_target(&sub(&f), "no counterpart in KubeCoreDNSConfig")),
                }
            }
        }
        "cluster.allowSchedulingOnControlPlanes" | "cluster.allowSchedulingOnMasters" => {
            if v.as_bool() == Some(true) {
                // The generator adds the taint to KubeNodeConfig; removing the key
                // is what the legacy flag did.
                let mut del = Mapping::new();
                del.insert(s("$patch"), s("delete"));
                docs.set_in(
                    "KubeNodeConfig",
                    &["taints", "node-role.kubernetes.io/control-plane"],
                    Value::Mapping(del),
                );
            }
        }
        "cluster.network" => {
            for (f, v) in fields {
                match f.as_str() {
                    "dnsDomain" | "podSubnets" | "serviceSubnets" => {
                        docs.set("KubeNetworkConfig", &f, v.clone())
                    }
                    _ => return Err(no_target(&sub(&f), "set the CNI with talconfig's cniConfig (rendered as KubeFlannelCNIConfig or KubeExternalManifestConfig under 1.14)")),
                }
            }
        }
        "machine.kubelet" => {
            for (f, v) in fields {
                match f.as_str() {
                    "image" | "clusterDNS" | "defaultRuntimeSeccompProfileEnabled" => {
                        docs.set("KubeletConfig", &f, v.clone())
                    }
                    "extraArgs" => docs.set("KubeletConfig", "extraArgs", args(v)),
                    "extraConfig" => docs.set("KubeletConfig", "config", v.clone()),
                    "nodeIP" | "registerWithFQDN" | "skipNodeRegistration" => {
                        docs.set("KubeNodeConfig", &f, v.clone())
                    }
                    // The new kubelet document always disables the manifests directory.
                    "disableManifestsDirectory" if v.as_bool() == Some(true) => {}
                    "extraMounts" => return Err(no_target(&sub(&f), "the KubeletConfig document has no mounts (types/k8s/kubelet.go@v1.14.0-rc.1)")),
                    _ => return Err(no_target(&sub(&f), "no counterpart in KubeletConfig or KubeNodeConfig that this tool maps")),
                }
            }
        }
        "machine.nodeLabels" => docs.set("KubeNodeConfig", "labels", v.clone()),
        "machine.nodeAnnotations" => docs.set("KubeNodeConfig", "annotations", v.clone()),
        "machine.nodeTaints" => docs.set("KubeNodeConfig", "taints", v.clone()),
        "machine.time" => {
            for (f, v) in fields {
                match f.as_str() {
                    "disabled" => docs.set("TimeSyncConfig", "enabled", not_bool(v)),
                    "bootTimeout" => docs.set("TimeSyncConfig", "bootTimeout", v.clone()),
                    "servers" => docs.set_in("TimeSyncConfig", &["ntp", "servers"], v.clone()),
                    _ => return Err(no_target(&sub(&f), "no counterpart in TimeSyncConfig")),
                }
            }
        }
        "machine.sysctls" => {
            docs.set("SysctlConfig", "params", args(v));
        }
        "machine.files" => {
            for (i, f) in v.as_sequence().into_iter().flatten().enumerate() {
                let p = f.get("path").and_then(Value::as_str).unwrap_or("");
                if p != "/etc/cri/conf.d/20-customization.part" {
                    return Err(no_target(&format!("{path}[{i}]"), "only the CRI customization part has a document (CRICustomizationConfig); other machine files stay on contract 1.13"));
                }
                let content = f.get("content").cloned().unwrap_or(s(""));
                docs.get("CRICustomizationConfig", Some("20-customization"))
                    .insert(s("content"), content);
            }
        }
        "machine.features" => {
            let mut moved = false;
            for (f, v) in fields {
                match f.as_str() {
                    "kubePrism" => {
                        if v.get("enabled").and_then(Value::as_bool) == Some(false) {
                            docs.delete("KubePrismConfig", None);
                        } else if let Some(p) = v.get("port") {
                            docs.set("KubePrismConfig", "port", p.clone());
                        }
                        moved = true;
                    }
                    "hostDNS" => {
                        docs.set("ResolverConfig", "hostDNS", v.clone());
                        moved = true;
                    }
                    _ => {}
                }
            }
            return Ok(moved);
        }
        "machine.network" => {
            let mut moved = false;
            for (f, v) in fields {
                match f.as_str() {
                    "nameservers" => {
                        let list = v
                            .as_sequence()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                let mut m = Mapping::new();
                                m.insert(s("address"), a.clone());
                                Value::Mapping(m)
                            })
                            .collect();
                        docs.set("ResolverConfig", "nameservers", Value::Sequence(list));
                        moved = true;
                    }
                    "searchDomains" => {
                        docs.set_in("ResolverConfig", &["searchDomains", "domains"], v.clone());
                        moved = true;
                    }
                    "disableSearchDomain" => {
                        docs.set_in(
                            "ResolverConfig",
                            &["searchDomains", "disableDefault"],
                            v.clone(),
                        );
                        moved = true;
                    }
                    _ => {}
                }
            }
            return Ok(moved);
        }
        "machine.install" => return Err(no_target(&path, "set installDisk / installDiskSelector / talosImageURL in talconfig.yaml: under 1.14 they render as UnattendedInstallConfig")),
        "cluster.discovery" | "cluster.ca" | "cluster.aggregatorCA" | "cluster.serviceAccount" | "cluster.clusterName" | "cluster.controlPlane" => {
            return Err(no_target(&path, "generated from talconfig and the secrets bundle under 1.14; remove it from the patch"))
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Which keys of `machine.features` / `machine.network` move (the others stay).
const PARTIAL: &[(&str, &[&str])] = &[
    ("machine.features", &["kubePrism", "hostDNS"]),
    (
        "machine.network",
        &["nameservers", "searchDomains", "disableSearchDomain"],
    ),
];

/// Migrates one patch file. Unchanged text when nothing in it moved.
///
/// `src.text` is the file as written (before `${VAR}` substitution), so variables
/// stay variables in the moved values; a `$patch` directive is written `$$patch`,
/// as talhelper's substitution wants.
pub fn migrate_patch(src: &PatchSource) -> Result<Migrated, ConfigError> {
    let keep = |after: String| Migrated {
        file: src.file.clone(),
        before: src.text.clone(),
        after,
    };
    let mut parsed = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(&src.text) {
        let v: Value = serde::Deserialize::deserialize(de).map_err(|e| {
            ConfigError::input(
                &src.file,
                e.location().map(|l| l.line()).unwrap_or(src.line),
                format!("patch is not valid YAML: {e}"),
                "fix the YAML syntax",
            )
        })?;
        if !v.is_null() {
            parsed.push(v);
        }
    }
    let is_json = matches!(parsed.as_slice(), [Value::Sequence(_)]);
    let lp = if is_json {
        LoadedPatch::load(src)?.patch
    } else {
        Patch::Strategic(parsed)
    };
    match &lp {
        Patch::Strategic(docs) => {
            let mains: Vec<&Value> = docs.iter().filter(|d| d.get("kind").is_none()).collect();
            let Some(main) = mains.first() else {
                return Ok(keep(src.text.clone()));
            };
            let mut new = Docs::default();
            let mut cut: Vec<Vec<String>> = Vec::new();
            for section in ["machine", "cluster"] {
                let Some(m) = main.get(section).and_then(Value::as_mapping) else {
                    continue;
                };
                for (k, v) in m {
                    let key = k.as_str().unwrap_or_default();
                    let moved = move_subtree(section, key, v, &mut new).map_err(|e| {
                        let segs: Vec<&str> = e.field.split(['.', '[']).collect();
                        let line = match locate_line(&src.text, &segs) {
                            0 => src.line,
                            l => l + src.line - 1,
                        };
                        ConfigError::input(
                            &src.file,
                            line,
                            format!(
                                "{} has no place in the contract 1.14 documents: {}",
                                e.field, e.why
                            ),
                            "remove or rewrite the field by hand, then run migrate again",
                        )
                    })?;
                    if !moved {
                        continue;
                    }
                    match PARTIAL
                        .iter()
                        .find(|(p, _)| *p == format!("{section}.{key}"))
                    {
                        Some((_, subkeys)) => {
                            for sk in v.as_mapping().into_iter().flat_map(|m| m.keys()) {
                                let sk = sk.as_str().unwrap_or_default();
                                if subkeys.contains(&sk) {
                                    cut.push(vec![section.into(), key.into(), sk.into()]);
                                }
                            }
                        }
                        None => cut.push(vec![section.into(), key.into()]),
                    }
                }
            }
            if new.list.is_empty() {
                return Ok(keep(src.text.clone()));
            }
            if docs.len() > 1 {
                return Err(ConfigError::input(
                    &src.file,
                    src.line,
                    "a multi-document patch that writes moved fields: migrate edits single-document patches only",
                    "split the v1alpha1 part into its own patch file, then run migrate again",
                ));
            }
            let (rest, comments) = text::cut_blocks(&src.text, &cut);
            Ok(keep(text::join(&rest, &comments, &new.list)))
        }
        Patch::Json6902(ops) => {
            let mut new = Docs::default();
            let mut touched = 0;
            for op in ops {
                let field = op.path.trim_start_matches('/').replace('/', ".");
                let moved = match (op.op.as_str(), field.as_str()) {
                    ("remove", "cluster.apiServer.admissionControl") => {
                        new.delete("KubeAdmissionControlConfig", Some("PodSecurity"));
                        true
                    }
                    ("remove", "cluster.apiServer.auditPolicy") => {
                        new.delete("KubeAuditPolicyConfig", None);
                        true
                    }
                    _ => {
                        super::conflicts::RULES.iter().any(|r| {
                            field == r.legacy || field.starts_with(&format!("{}.", r.legacy))
                        }) && {
                            return Err(ConfigError::input(
                            &src.file,
                            op.line,
                            format!("JSON patch `{} {}` has no automatic 1.14 rewrite", op.op, op.path),
                            "write it as a strategic patch of the document the field moved to (see docs/talos-1.14.md)",
                        ));
                        }
                    }
                };
                if moved {
                    touched += 1;
                }
            }
            if touched == 0 {
                return Ok(keep(src.text.clone()));
            }
            if touched != ops.len() {
                return Err(ConfigError::input(
                    &src.file,
                    src.line,
                    "this JSON patch mixes moved and unmoved paths",
                    "split the operations on moved paths into their own file, then run migrate again",
                ));
            }
            // The operations become strategic documents; the file's comments stay on top.
            let comments: Vec<String> = src
                .text
                .lines()
                .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
                .map(str::to_string)
                .collect();
            Ok(keep(text::join(&comments, &[], &new.list)))
        }
    }
}

/// Migrates every patch; the first file that cannot be migrated stops it.
pub fn migrate_all(sources: &[PatchSource]) -> Result<Vec<Migrated>, ConfigError> {
    sources.iter().map(migrate_patch).collect()
}

mod text;

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> PatchSource {
        PatchSource {
            file: "p.yaml".into(),
            line: 1,
            text: text.into(),
            template: false,
            envsubst_after_template: false,
        }
    }

    #[test]
    fn apiserver_args_move_and_comments_stay() {
        let text = "# top comment\ncluster:\n  # args for aggregation\n  apiServer:\n    extraArgs:\n      enable-aggregator-routing: true\n  etcd:\n    # metrics\n    extraArgs:\n      listen-metrics-urls: http://0.0.0.0:2381\n";
        let m = migrate_patch(&src(text)).unwrap();
        assert_eq!(
            m.after,
            "# top comment\ncluster:\n  etcd:\n    # metrics\n    extraArgs:\n      listen-metrics-urls: http://0.0.0.0:2381\n---\n# args for aggregation\napiVersion: v1alpha1\nkind: KubeAPIServerConfig\nextraArgs:\n  enable-aggregator-routing: \"true\"\n"
        );
    }

    #[test]
    fn whole_file_moves_without_a_dangling_separator() {
        let m = migrate_patch(&src("machine:\n  sysctls:\n    a.b: 1\n")).unwrap();
        assert_eq!(
            m.after,
            "apiVersion: v1alpha1\nkind: SysctlConfig\nparams:\n  a.b: \"1\"\n"
        );
    }

    #[test]
    fn partial_network_keeps_the_rest() {
        let text = "machine:\n  network:\n    hostname: x\n    nameservers:\n      - 1.1.1.1\n";
        let m = migrate_patch(&src(text)).unwrap();
        assert!(
            m.after
                .starts_with("machine:\n  network:\n    hostname: x\n---\n"),
            "{}",
            m.after
        );
        assert!(m
            .after
            .contains("kind: ResolverConfig\nnameservers:\n  - address: 1.1.1.1\n"));
    }

    #[test]
    fn no_target_fields_are_refused_with_their_line() {
        let text =
            "cluster:\n  apiServer:\n    image: x\n    extraVolumes:\n      - hostPath: /a\n";
        let e = migrate_patch(&src(text)).unwrap_err().to_string();
        assert!(e.contains("p.yaml:4"), "{e}");
        assert!(e.contains("cluster.apiServer.extraVolumes"), "{e}");
        let k = "machine:\n  kubelet:\n    extraMounts: []\n";
        let e = migrate_patch(&src(k)).unwrap_err().to_string();
        assert!(e.contains("p.yaml:3") && e.contains("extraMounts"), "{e}");
    }

    #[test]
    fn json_remove_of_admission_becomes_a_document_delete() {
        let text = "# why\n- op: remove\n  path: /cluster/apiServer/admissionControl\n";
        let m = migrate_patch(&src(text)).unwrap();
        assert_eq!(
            m.after,
            "# why\napiVersion: v1alpha1\nkind: KubeAdmissionControlConfig\nname: PodSecurity\n$$patch: delete\n"
        );
        let other = "- op: add\n  path: /cluster/apiServer/extraArgs/x\n  value: y\n";
        assert!(migrate_patch(&src(other)).is_err());
        let untouched = "- op: add\n  path: /machine/env/x\n  value: y\n";
        assert!(!migrate_patch(&src(untouched)).unwrap().changed());
    }
}
