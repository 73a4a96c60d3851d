//! A small YAML emitter that writes block style the way Go's yaml.v3 encoder does
//! (talhelper re-encodes with indent 2, talosctl secrets/talosconfig use indent 4),
//! plus the key ordering Go structs impose. serde_yaml_ng's emitter does not indent
//! sequences under mappings and quotes differently, so output would not match.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use super::error::ConfigError;

/// Emits one YAML document (no leading `---`).
pub fn emit(value: &Value, indent: usize) -> String {
    let mut out = String::new();
    let mut path = Vec::new();
    emit_block(value, indent, 0, &mut out, &mut path);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Emits several documents separated by `---`, as yaml.v3 does.
pub fn emit_documents(docs: &[Value], indent: usize) -> String {
    docs.iter()
        .map(|d| emit(d, indent))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn is_inline(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::String(s) => !s.contains('\n'),
        Value::Tagged(t) => is_inline(&t.value),
        _ => true,
    }
}

fn emit_block(v: &Value, indent: usize, level: usize, out: &mut String, path: &mut Vec<String>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            let mut first = true;
            for (k, val) in m {
                if !first {
                    out.push_str(&" ".repeat(level));
                }
                first = false;
                let key = key_scalar(k);
                out.push_str(&key);
                out.push(':');
                path.push(k.as_str().unwrap_or_default().to_string());
                emit_value_after_key(val, indent, level, out, path);
                path.pop();
            }
        }
        Value::Sequence(s) if !s.is_empty() => {
            let mut first = true;
            for item in s {
                if !first {
                    out.push_str(&" ".repeat(level));
                }
                first = false;
                out.push_str("- ");
                path.push("[]".into());
                if is_inline(item) {
                    out.push_str(&scalar_text(item, path));
                    out.push('\n');
                } else if let Value::String(text) = item {
                    emit_literal(text, level + 2, 2, out);
                } else {
                    emit_block(item, indent, level + 2, out, path);
                }
                path.pop();
            }
        }
        other => {
            out.push_str(&scalar_text(other, path));
            out.push('\n');
        }
    }
}

fn emit_value_after_key(
    val: &Value,
    indent: usize,
    level: usize,
    out: &mut String,
    path: &mut Vec<String>,
) {
    if is_inline(val) {
        out.push(' ');
        out.push_str(&scalar_text(val, path));
        out.push('\n');
        return;
    }
    match val {
        Value::String(text) => emit_literal(text, level + indent, indent, out),
        Value::Mapping(_) | Value::Sequence(_) => {
            out.push('\n');
            out.push_str(&" ".repeat(level + indent));
            emit_block(val, indent, level + indent, out, path);
        }
        Value::Tagged(t) => emit_value_after_key(&t.value, indent, level, out, path),
        _ => {}
    }
}

/// A multi-line string as a literal block, with the chomping indicator yaml.v3 picks.
/// `level` is the content's column, `rel` its indentation relative to the parent
/// node, which is what an indentation indicator states (YAML 1.2 §8.1.1.1; the
/// patch fuzz target found the absolute column written there).
fn emit_literal(text: &str, level: usize, rel: usize, out: &mut String) {
    let chomp = if !text.ends_with('\n') {
        "-"
    } else if text.ends_with("\n\n") {
        "+"
    } else {
        ""
    };
    // The indentation is detected from the first line with content, so a block whose
    // first such line starts with a space needs the indicator, even after empty lines
    // (the patch fuzz target found "\n  x" read back without its leading spaces).
    let first_content = text.split('\n').find(|l| !l.is_empty());
    let lead = if first_content.is_some_and(|l| l.starts_with(' ')) {
        rel.to_string()
    } else {
        String::new()
    };
    out.push_str(&format!(" |{lead}{chomp}\n"));
    let body = text.strip_suffix('\n').unwrap_or(text);
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&" ".repeat(level));
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// A mapping key: like any scalar, except that a line break cannot be written
/// as a block there, so such a key is double-quoted with escapes (found by the
/// patch fuzz target: a plain multi-line key broke the emitted YAML).
pub(crate) fn key_scalar(k: &Value) -> String {
    match k {
        Value::String(s) if s.contains(['\n', '\r']) => {
            serde_json::to_string(s).unwrap_or_default()
        }
        other => scalar_text(other, &[]),
    }
}

fn scalar_text(v: &Value, path: &[String]) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            // Go's FileMode marshals as an octal literal.
            if path.last().map(|s| s == "permissions").unwrap_or(false) {
                if let Some(u) = n.as_u64() {
                    return format!("0o{u:o}");
                }
            }
            n.to_string()
        }
        Value::String(s) => quote_if_needed(s),
        Value::Mapping(m) if m.is_empty() => "{}".into(),
        Value::Sequence(s) if s.is_empty() => "[]".into(),
        Value::Tagged(t) => scalar_text(&t.value, path),
        _ => String::new(),
    }
}

/// Whether a plain scalar would read back as something other than this string.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL", "~", "y", "Y",
        "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "-.inf", "+.inf", ".nan", ".NaN", ".NAN",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let t = s.strip_prefix(['-', '+']).unwrap_or(s);
    if t.is_empty() {
        return false;
    }
    let digits = t.replace('_', "");
    if digits.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0o"))
    {
        return !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit());
    }
    // Floats: digits with one dot and/or exponent.
    if t.parse::<f64>().is_ok() && t.chars().any(|c| c.is_ascii_digit()) {
        return !t.contains(char::is_alphabetic) || t.contains(['e', 'E']);
    }
    // YAML 1.1 sexagesimal numbers (e.g. 1:30), which yaml.v3 quotes.
    let parts: Vec<&str> = t.split(':').collect();
    parts.len() > 1
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn quote_if_needed(s: &str) -> String {
    let needs_double = s.is_empty() || resolves_to_non_string(s);
    if needs_double {
        return format!("\"{}\"", s);
    }
    let first = s.chars().next().unwrap_or(' ');
    let special_start = "?:,[]{}#&*!|>'\"%@`".contains(first)
        || (first == '-' && (s == "-" || s.starts_with("- ")));
    let bad = special_start
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.chars().any(|c| c.is_control() && c != '\n')
        || s == "---";
    if !bad {
        return s.to_string();
    }
    if s.chars().any(|c| c.is_control()) {
        return serde_json::to_string(s).unwrap_or_default();
    }
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) use super::kube_order::Order;

fn order_for(kind: &str, path: &[&str]) -> Option<Order> {
    use Order::*;
    let p = path.join(".");
    let o = match (kind, p.as_str()) {
        ("v1alpha1", "") => Struct(&["version", "debug", "persist", "machine", "cluster"]),
        ("v1alpha1", "machine") => Struct(&[
            "type",
            "token",
            "ca",
            "acceptedCAs",
            "certSANs",
            "controlPlane",
            "kubelet",
            "pods",
            "network",
            "disks",
            "install",
            "files",
            "env",
            "time",
            "sysctls",
            "sysfs",
            "registries",
            "systemDiskEncryption",
            "features",
            "udev",
            "logging",
            "kernel",
            "seccompProfiles",
            "baseRuntimeSpecOverrides",
            "nodeLabels",
            "nodeAnnotations",
            "nodeTaints",
        ]),
        ("v1alpha1", "machine.ca" | "cluster.ca" | "cluster.aggregatorCA" | "cluster.etcd.ca") => {
            Struct(&["crt", "key"])
        }
        ("v1alpha1", "machine.kubelet") => Struct(&[
            "image",
            "clusterDNS",
            "extraArgs",
            "extraMounts",
            "extraConfig",
            "credentialProviderConfig",
            "defaultRuntimeSeccompProfileEnabled",
            "registerWithFQDN",
            "nodeIP",
            "skipNodeRegistration",
            "disableManifestsDirectory",
        ]),
        ("v1alpha1", "machine.kubelet.nodeIP") => Struct(&["validSubnets"]),
        ("v1alpha1", "machine.network") => Struct(&[
            "hostname",
            "interfaces",
            "nameservers",
            "searchDomains",
            "extraHostEntries",
            "kubespan",
            "disableSearchDomain",
        ]),
        ("v1alpha1", "machine.install") => Struct(&[
            "disk",
            "diskSelector",
            "extraKernelArgs",
            "image",
            "extensions",
            "bootloader",
            "wipe",
            "legacyBIOSSupport",
            "grubUseUKICmdline",
        ]),
        ("v1alpha1", "machine.install.diskSelector") => Struct(&[
            "size", "name", "model", "serial", "modalias", "uuid", "wwid", "type", "busPath",
        ]),
        ("v1alpha1", "machine.files.[]") => Struct(&["content", "permissions", "path", "op"]),
        ("v1alpha1", "machine.time") => Struct(&["disabled", "servers", "bootTimeout"]),
        ("v1alpha1", "machine.features") => Struct(&[
            "rbac",
            "stableHostname",
            "kubernetesTalosAPIAccess",
            "apidCheckExtKeyUsage",
            "diskQuotaSupport",
            "kubePrism",
            "hostDNS",
            "imageCache",
            "nodeAddressSortAlgorithm",
        ]),
        ("v1alpha1", "machine.features.kubePrism") => Struct(&["enabled", "port"]),
        ("v1alpha1", "machine.features.hostDNS") => {
            Struct(&["enabled", "forwardKubeDNSToHost", "resolveMemberNames"])
        }
        ("v1alpha1", "cluster") => Struct(&[
            "id",
            "secret",
            "controlPlane",
            "clusterName",
            "network",
            "token",
            "aescbcEncryptionSecret",
            "secretboxEncryptionSecret",
            "ca",
            "acceptedCAs",
            "aggregatorCA",
            "serviceAccount",
            "apiServer",
            "controllerManager",
            "proxy",
            "scheduler",
            "discovery",
            "etcd",
            "coreDNS",
            "externalCloudProvider",
            "extraManifests",
            "extraManifestHeaders",
            "inlineManifests",
            "adminKubeconfig",
            "allowSchedulingOnMasters",
            "allowSchedulingOnControlPlanes",
        ]),
        ("v1alpha1", "cluster.controlPlane") => Struct(&["endpoint", "localAPIServerPort"]),
        ("v1alpha1", "cluster.network") => {
            Struct(&["cni", "dnsDomain", "podSubnets", "serviceSubnets"])
        }
        ("v1alpha1", "cluster.network.cni") => Struct(&["name", "urls", "flannel"]),
        ("v1alpha1", "cluster.apiServer") => Struct(&[
            "image",
            "extraArgs",
            "extraVolumes",
            "env",
            "certSANs",
            "disablePodSecurityPolicy",
            "admissionControl",
            "auditPolicy",
            "resources",
            "authorizationConfig",
        ]),
        ("v1alpha1", "cluster.apiServer.admissionControl.[]") => Struct(&["name", "configuration"]),
        ("v1alpha1", "cluster.controllerManager" | "cluster.scheduler") => Struct(&[
            "image",
            "extraArgs",
            "extraVolumes",
            "env",
            "resources",
            "config",
        ]),
        ("v1alpha1", "cluster.proxy") => Struct(&["disabled", "image", "mode", "extraArgs"]),
        ("v1alpha1", "cluster.discovery") => Struct(&["enabled", "registries"]),
        ("v1alpha1", "cluster.discovery.registries") => Struct(&["kubernetes", "service"]),
        ("v1alpha1", "cluster.discovery.registries.service") => Struct(&["disabled", "endpoint"]),
        ("v1alpha1", "cluster.etcd") => Struct(&[
            "image",
            "ca",
            "extraArgs",
            "subnet",
            "advertisedSubnets",
            "listenSubnets",
        ]),
        ("v1alpha1", "cluster.coreDNS") => Struct(&["disabled", "image"]),
        ("v1alpha1", "cluster.inlineManifests.[]") => Struct(&["name", "contents"]),
        (
            "v1alpha1",
            "machine.kubelet.extraArgs"
            | "machine.kubelet.extraConfig"
            | "machine.sysctls"
            | "machine.sysfs"
            | "machine.nodeLabels"
            | "machine.nodeAnnotations"
            | "machine.nodeTaints"
            | "machine.env"
            | "cluster.apiServer.extraArgs"
            | "cluster.apiServer.auditPolicy"
            | "cluster.controllerManager.extraArgs"
            | "cluster.scheduler.extraArgs"
            | "cluster.proxy.extraArgs"
            | "cluster.etcd.extraArgs"
            | "cluster.apiServer.admissionControl.[].configuration",
        ) => SortedDeep,
        ("v1alpha1", "machine.registries.mirrors") => Sorted,
        ("HostnameConfig", "") => Struct(&["apiVersion", "kind", "auto", "hostname"]),
        ("LinkAliasConfig", "") => Struct(&["apiVersion", "kind", "name", "selector"]),
        ("Layer2VIPConfig", "") => Struct(&["apiVersion", "kind", "name", "link"]),
        ("LinkConfig", "") => Struct(&[
            "apiVersion",
            "kind",
            "name",
            "up",
            "mtu",
            "addresses",
            "routes",
            "multicast",
        ]),
        ("LinkConfig", "addresses.[]") => Struct(&["address", "routePriority"]),
        ("LinkConfig", "routes.[]") => {
            Struct(&["destination", "gateway", "source", "metric", "mtu", "table"])
        }
        ("DHCPv4Config" | "DHCPv6Config", "") => Struct(&[
            "apiVersion",
            "kind",
            "name",
            "routeMetric",
            "ignoreHostname",
            "clientIdentifier",
            "duid",
        ]),
        ("ResolverConfig", "") => Struct(&["apiVersion", "kind", "nameservers", "searchDomains"]),
        ("ResolverConfig", "searchDomains") => Struct(&["domains", "disableDefault"]),
        (k, p) if super::kube_order::order(k, p).is_some() => {
            return super::kube_order::order(k, p)
        }
        (_, "") => Struct(&["apiVersion", "kind", "name"]),
        _ => return None,
    };
    Some(o)
}

/// Reorders every mapping of a document the way Go would marshal it.
pub fn canonicalize(doc: &mut Value) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("v1alpha1")
        .to_string();
    let mut path = Vec::new();
    canon(doc, &kind, &mut path, false);
}

fn canon(v: &mut Value, kind: &str, path: &mut Vec<String>, deep_sort: bool) {
    match v {
        Value::Mapping(m) => {
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            let order = if deep_sort {
                Some(Order::SortedDeep)
            } else {
                order_for(kind, &refs)
            };
            let child_deep = matches!(order, Some(Order::SortedDeep));
            match order {
                Some(Order::Struct(fields)) => reorder(m, fields),
                Some(Order::Sorted) | Some(Order::SortedDeep) => sort_keys(m),
                None => {}
            }
            for (k, val) in m.iter_mut() {
                path.push(k.as_str().unwrap_or_default().to_string());
                canon(val, kind, path, child_deep);
                path.pop();
            }
        }
        Value::Sequence(s) => {
            for item in s.iter_mut() {
                path.push("[]".into());
                canon(item, kind, path, deep_sort);
                path.pop();
            }
        }
        _ => {}
    }
}

fn reorder(m: &mut Mapping, fields: &[&str]) {
    let mut old = std::mem::take(m);
    for f in fields {
        // shift_remove keeps the unlisted keys in their order (remove swaps).
        if let Some(v) = old.shift_remove(*f) {
            m.insert(Value::String((*f).to_string()), v);
        }
    }
    for (k, v) in old {
        m.insert(k, v);
    }
}

fn sort_keys(m: &mut Mapping) {
    let old = std::mem::take(m);
    let mut entries: Vec<(Value, Value)> = old.into_iter().collect();
    entries.sort_by_key(|a| key_text(&a.0));
    for (k, v) in entries {
        m.insert(k, v);
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => scalar_text(other, &[]),
    }
}

/// Strict YAML decode; unknown fields and type errors carry the file and line.
pub fn parse_strict<T: serde::de::DeserializeOwned>(
    text: &str,
    source: &Path,
) -> Result<T, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        let hint = if msg.contains("unknown field") {
            "remove the field or fix its spelling; fields this tool does not implement are refused rather than ignored"
        } else if msg.contains("missing field") {
            "add the required field"
        } else {
            "check the YAML syntax and the value's type at that line"
        };
        ConfigError::input(source, line, msg, hint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn sequences_are_indented_under_keys() {
        let v = y("a:\n  b: [x, z]\n  c: []\n  d: {}\n");
        assert_eq!(
            emit(&v, 2),
            "a:\n  b:\n    - x\n    - z\n  c: []\n  d: {}\n"
        );
    }

    #[test]
    fn strings_that_read_as_other_types_are_quoted() {
        let v = y("a: \"off\"\nb: \"8192\"\nc: \"\"\nd: 10.127.0.40\ne: \"true\"\nf: \"1.5\"\n");
        assert_eq!(
            emit(&v, 2),
            "a: \"off\"\nb: \"8192\"\nc: \"\"\nd: 10.127.0.40\ne: \"true\"\nf: \"1.5\"\n"
        );
    }

    #[test]
    fn multiline_strings_become_literal_blocks() {
        let v = y("files:\n  - content: \"a\\n  b\\n\"\n    op: create\n");
        assert_eq!(
            emit(&v, 2),
            "files:\n  - content: |\n      a\n        b\n    op: create\n"
        );
    }

    #[test]
    fn emitted_text_reads_back_identically() {
        let v =
            y("a: \"-x\"\nb: \"x: y\"\nc: \"#c\"\nd: '*'\ne: \"yes\"\nf: ' lead'\ng: \"a\\tb\"\n");
        let back: Value = serde_yaml_ng::from_str(&emit(&v, 2)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn keys_with_line_breaks_read_back() {
        let v = y("\"a\\nb\": 1\nc:\n  \"x\\ny\": [1]\n");
        let back: Value = serde_yaml_ng::from_str(&emit(&v, 2)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn nested_blocks_with_leading_spaces_read_back() {
        let v = y("a:\n  b:\n    c: \"  x\\ny\\n\"\n  d:\n    - \" z\\nw\"\n");
        let back: Value = serde_yaml_ng::from_str(&emit(&v, 2)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn blocks_whose_first_content_line_is_indented_after_empty_lines_read_back() {
        let v = y("a:\n  b: \"\\n  x\\ny\"\n  c: \"\\n\\n z\\n\"\n");
        let back: Value = serde_yaml_ng::from_str(&emit(&v, 2)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn permissions_are_octal() {
        let v = y("files:\n  - permissions: 420\n");
        assert_eq!(emit(&v, 2), "files:\n  - permissions: 0o644\n");
    }
}
