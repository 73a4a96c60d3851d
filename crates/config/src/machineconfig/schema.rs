//! Checks documents against Talos's published JSON schema (v1.13.9), and coerces
//! scalars the way Go's YAML decoder does (a YAML `true` or `8192` decodes into a
//! string field as "true" / "8192").
//!
//! Only the keywords the Talos schema uses are implemented. The schema leaves out
//! deprecated fields Talos still accepts (`persist`, `machine.time`, ...); those
//! paths are tolerated and checked by hand where it matters.

use std::sync::OnceLock;

use serde_json::Value as J;
use serde_yaml_ng::Value as Y;

static SCHEMA_TEXT: &str = include_str!("schema/talos-v1.13.9-config.schema.json");
/// Contract 1.14's schema (v1.14.0-rc.1, the newest 1.14 tag). It describes only the
/// v1alpha1 fields 1.14 does not deprecate.
static SCHEMA_1_14_TEXT: &str = include_str!("schema/talos-v1.14.0-rc.1-config.schema.json");

thread_local! {
    /// The schema `validate`/`coerce` use on this thread: 1.13's unless a
    /// [`with_contract_1_14`] call is running (the walker reaches the schema from
    /// many places; a scoped switch keeps their signatures).
    static USE_1_14: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn schema() -> &'static J {
    static S: OnceLock<J> = OnceLock::new();
    static S14: OnceLock<J> = OnceLock::new();
    let (cell, text) = if USE_1_14.with(|c| c.get()) {
        (&S14, SCHEMA_1_14_TEXT)
    } else {
        (&S, SCHEMA_TEXT)
    };
    cell.get_or_init(|| {
        let mut s = serde_json::from_str(text).unwrap_or(J::Null);
        fix_decoder_disagreements(&mut s);
        s
    })
}

/// Runs `f` with the contract-1.14 schema selected.
pub fn with_contract_1_14<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            USE_1_14.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(USE_1_14.with(|c| c.replace(true)));
    f()
}

/// Where the published schema and Talos's own decoder disagree, the decoder wins:
/// `v1alpha1.Endpoint` (logging destinations) is decoded from a URL string
/// (`UnmarshalYAML` in types/v1alpha1/v1alpha1_types.go@v1.13.9) but described as
/// an object with no properties, which no value satisfies. Every other `$ref` of the
/// schema was checked and matches its decoder (research §D).
fn fix_decoder_disagreements(s: &mut J) {
    if let Some(defs) = s.get_mut("$defs").and_then(J::as_object_mut) {
        defs.insert(
            "v1alpha1.Endpoint".into(),
            serde_json::json!({
                "type": "string",
                "description": "A URL such as tcp://1.2.3.4:12345 or udp://... (decoded with url.Parse)."
            }),
        );
    }
}

/// One schema violation: where in the document (keys) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaIssue {
    pub path: Vec<String>,
    pub message: String,
}

/// Deprecated or undocumented v1alpha1 fields Talos still decodes.
const TOLERATED: &[&str] = &[
    "persist",
    "machine.network",
    "machine.disks",
    "machine.env",
    "machine.time",
    "machine.registries",
    "machine.systemDiskEncryption",
    "machine.features.rbac",
    "machine.features.stableHostname",
    "machine.features.apidCheckExtKeyUsage",
    "machine.install.extraKernelArgs",
    "machine.install.extensions",
    "machine.install.bootloader",
    "cluster.apiServer.disablePodSecurityPolicy",
    "cluster.allowSchedulingOnMasters",
    "cluster.etcd.subnet",
];

/// Known keys of the tolerated structs that operators do patch.
const TOLERATED_KEYS: &[(&str, &[&str])] = &[
    (
        "machine.network",
        &[
            "hostname",
            "interfaces",
            "nameservers",
            "searchDomains",
            "extraHostEntries",
            "kubespan",
            "disableSearchDomain",
        ],
    ),
    ("machine.time", &["disabled", "servers", "bootTimeout"]),
];

fn def_for_kind(kind: &str) -> Option<&'static J> {
    let s = schema();
    let defs = s.get("$defs")?;
    if kind == "v1alpha1" {
        return defs.get("v1alpha1.Config");
    }
    for r in s.get("oneOf")?.as_array()? {
        let name = r.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
        let d = defs.get(name)?;
        let kinds = d.pointer("/properties/kind/enum")?.as_array()?;
        // The 1.14 schema spells UnattendedInstallConfig `UnattendedInstall` (its doc
        // tag), while Talos registers and generates the longer kind.
        let alias = (kind == "UnattendedInstallConfig").then_some("UnattendedInstall");
        if kinds
            .iter()
            .any(|k| k.as_str() == Some(kind) || (alias.is_some() && k.as_str() == alias))
        {
            return Some(d);
        }
    }
    None
}

fn resolve(node: &'static J) -> &'static J {
    let mut n = node;
    while let Some(r) = n.get("$ref").and_then(J::as_str) {
        match r
            .strip_prefix("#/")
            .and_then(|p| schema().pointer(&format!("/{p}")))
        {
            Some(t) => n = t,
            None => break,
        }
    }
    n
}

fn kind_of(doc: &Y) -> String {
    doc.get("kind")
        .and_then(Y::as_str)
        .unwrap_or("v1alpha1")
        .to_string()
}

/// Validates a whole document. `partial` skips `required` and allows `$patch`
/// directives (for patches, which hold only the keys they change).
pub fn validate(doc: &Y, partial: bool) -> Vec<SchemaIssue> {
    let kind = kind_of(doc);
    if kind == "UnattendedInstallConfig" {
        // Checked as the schema's spelling of the kind (see def_for_kind).
        let mut aliased = doc.clone();
        if let Some(m) = aliased.as_mapping_mut() {
            m.insert(Y::from("kind"), Y::from("UnattendedInstall"));
        }
        return validate(&aliased, partial);
    }
    if partial && kind == "v1alpha1" && USE_1_14.with(|c| c.get()) {
        // Talos 1.14 still decodes every deprecated v1alpha1 field (its schema
        // leaves them out): a patch loads against what Talos decodes; the conflict
        // check and `validate` say what to move.
        USE_1_14.with(|c| c.set(false));
        let issues = validate(doc, partial);
        USE_1_14.with(|c| c.set(true));
        return issues;
    }
    let mut issues = Vec::new();
    match def_for_kind(&kind) {
        Some(d) => {
            let mut path = Vec::new();
            walk(doc, d, &mut path, partial, kind == "v1alpha1", &mut issues);
        }
        None => issues.push(SchemaIssue {
            path: vec!["kind".into()],
            message: format!("unknown document kind `{kind}`"),
        }),
    }
    issues
}

fn walk(
    v: &Y,
    node: &'static J,
    path: &mut Vec<String>,
    partial: bool,
    v1: bool,
    out: &mut Vec<SchemaIssue>,
) {
    let node = resolve(node);
    // A `$patch: delete` directive replaces the value; there is nothing to check.
    if partial && v.get("$patch").is_some() && !path.is_empty() {
        return;
    }
    if let Some(alts) = node.get("oneOf").and_then(J::as_array) {
        let ok = alts.iter().any(|a| {
            let mut tmp = Vec::new();
            let mut p = path.clone();
            walk(v, a, &mut p, partial, v1, &mut tmp);
            tmp.is_empty()
        });
        if !ok {
            out.push(issue(
                path,
                format!("`{}` has the wrong type or shape", path.join(".")),
            ));
        }
        return;
    }
    if let Some(en) = node.get("enum").and_then(J::as_array) {
        let jv = to_json(v);
        if !en.contains(&jv) {
            let allowed: Vec<String> = en.iter().map(|e| e.to_string()).collect();
            out.push(issue(
                path,
                format!("`{}` must be one of {}", path.join("."), allowed.join(", ")),
            ));
        }
        return;
    }
    let ty = node.get("type").and_then(J::as_str);
    let type_ok = match (ty, v) {
        (None, _) => true,
        (_, Y::Null) => true,
        (Some("object"), Y::Mapping(_)) => true,
        (Some("array"), Y::Sequence(_)) => true,
        // Go's decoder puts any scalar into a string field.
        (Some("string"), Y::String(_) | Y::Bool(_) | Y::Number(_)) => true,
        (Some("boolean"), Y::Bool(_)) => true,
        (Some("integer"), Y::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Y::Number(_)) => true,
        _ => false,
    };
    if !type_ok {
        out.push(issue(
            path,
            format!(
                "`{}` should be of type {}",
                path.join("."),
                ty.unwrap_or("?")
            ),
        ));
        return;
    }
    match v {
        Y::String(s) => {
            if let Some(p) = node.get("pattern").and_then(J::as_str) {
                if let Ok(re) = regex::Regex::new(p) {
                    if !re.is_match(s) {
                        out.push(issue(
                            path,
                            format!("`{}` value `{s}` does not match `{p}`", path.join(".")),
                        ));
                    }
                }
            }
        }
        Y::Sequence(items) => {
            if let Some(it) = node.get("items") {
                for (i, item) in items.iter().enumerate() {
                    if partial && item.get("$patch").is_some() {
                        continue;
                    }
                    path.push(i.to_string());
                    walk(item, it, path, partial, v1, out);
                    path.pop();
                }
            }
        }
        Y::Mapping(m) => {
            let props = node.get("properties").and_then(J::as_object);
            let pattern_props = node.get("patternProperties").and_then(J::as_object);
            let additional = node.get("additionalProperties");
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    other => to_json(other).to_string(),
                };
                if partial && key == "$patch" {
                    continue;
                }
                path.push(key.clone());
                let dotted = path
                    .iter()
                    .filter(|p| p.parse::<usize>().is_err())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(".");
                if v1 && TOLERATED.contains(&dotted.as_str()) {
                    if let Some((_, keys)) = TOLERATED_KEYS.iter().find(|(p, _)| *p == dotted) {
                        if let Y::Mapping(tm) = val {
                            for tk in tm.keys() {
                                let tk = tk.as_str().unwrap_or("");
                                if tk != "$patch" && !keys.contains(&tk) {
                                    path.push(tk.to_string());
                                    out.push(SchemaIssue {
                                        path: path.clone(),
                                        message: format!("unknown field `{tk}` in `{dotted}`"),
                                    });
                                    path.pop();
                                }
                            }
                        }
                    }
                    path.pop();
                    continue;
                }
                if let Some(p) = props.and_then(|p| p.get(&key)) {
                    walk(val, p, path, partial, v1, out);
                } else if let Some(pp) = pattern_props.and_then(|pp| {
                    pp.iter()
                        .find(|(pat, _)| {
                            regex::Regex::new(pat)
                                .map(|r| r.is_match(&key))
                                .unwrap_or(false)
                        })
                        .map(|(_, s)| s)
                }) {
                    walk(val, pp, path, partial, v1, out);
                } else {
                    match additional {
                        Some(J::Bool(false)) => {
                            let parent = path[..path.len() - 1].join(".");
                            let at = if parent.is_empty() {
                                String::new()
                            } else {
                                format!(" in `{parent}`")
                            };
                            out.push(SchemaIssue {
                                path: path.clone(),
                                message: format!("unknown field `{key}`{at}"),
                            });
                        }
                        Some(s @ J::Object(_)) => walk(val, s, path, partial, v1, out),
                        _ => {}
                    }
                }
                path.pop();
            }
            if !partial {
                if let Some(req) = node.get("required").and_then(J::as_array) {
                    for r in req.iter().filter_map(J::as_str) {
                        if !m.contains_key(r) {
                            out.push(issue(path, format!("required field `{r}` is missing")));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn issue(path: &[String], message: String) -> SchemaIssue {
    SchemaIssue {
        path: path.to_vec(),
        message,
    }
}

fn to_json(v: &Y) -> J {
    serde_json::to_value(v).unwrap_or(J::Null)
}

fn accepts_string(node: &'static J) -> bool {
    let node = resolve(node);
    if node.get("type").and_then(J::as_str) == Some("string") {
        return true;
    }
    node.get("oneOf")
        .and_then(J::as_array)
        .map(|a| {
            a.iter()
                .any(|x| resolve(x).get("type").and_then(J::as_str) == Some("string"))
        })
        .unwrap_or(false)
}

/// Turns scalars in string-typed fields into strings, as Go's decoder does, and
/// `0o644`-style permission strings into integers.
pub fn coerce(doc: &mut Y) {
    let kind = kind_of(doc);
    if let Some(d) = def_for_kind(&kind) {
        coerce_walk(doc, d);
    }
    // Deprecated v1alpha1 blocks that the schema omits but endsys patches.
    if kind == "v1alpha1" {
        for p in [
            &["machine", "network", "nameservers"][..],
            &["machine", "time", "servers"][..],
        ] {
            if let Some(Y::Sequence(items)) = get_mut(doc, p) {
                for it in items {
                    scalar_to_string(it);
                }
            }
        }
    }
}

fn get_mut<'a>(v: &'a mut Y, path: &[&str]) -> Option<&'a mut Y> {
    let mut cur = v;
    for k in path {
        cur = cur.get_mut(*k)?;
    }
    Some(cur)
}

fn scalar_to_string(v: &mut Y) {
    let s = match v {
        Y::Bool(b) => b.to_string(),
        Y::Number(n) => n.to_string(),
        _ => return,
    };
    *v = Y::String(s);
}

fn coerce_walk(v: &mut Y, node: &'static J) {
    let node = resolve(node);
    // A number stays a number where the type also takes one (PortRange: a single
    // port marshals as an integer, port_range.go@v1.13.9).
    let takes_integer = node.get("oneOf").and_then(J::as_array).is_some_and(|a| {
        a.iter()
            .any(|x| resolve(x).get("type").and_then(J::as_str) == Some("integer"))
    });
    if accepts_string(node) && !(takes_integer && v.is_number()) {
        scalar_to_string(v);
        return;
    }
    if node.get("type").and_then(J::as_str) == Some("integer") {
        if let Y::String(s) = v {
            if let Some(oct) = s.strip_prefix("0o") {
                if let Ok(n) = u64::from_str_radix(oct, 8) {
                    *v = Y::Number(n.into());
                }
            }
        }
        return;
    }
    match v {
        Y::Sequence(items) => {
            if let Some(it) = node.get("items") {
                for item in items {
                    coerce_walk(item, it);
                }
            }
        }
        Y::Mapping(m) => {
            let props = node.get("properties").and_then(J::as_object);
            let pattern_props = node.get("patternProperties").and_then(J::as_object);
            let additional = node.get("additionalProperties").filter(|a| a.is_object());
            for (k, val) in m.iter_mut() {
                let key = k.as_str().unwrap_or("");
                let sub = props
                    .and_then(|p| p.get(key))
                    .or_else(|| pattern_props.and_then(|pp| pp.values().next()))
                    .or(additional);
                if let Some(sub) = sub {
                    coerce_walk(val, sub);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Y {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn unknown_fields_are_found_with_their_path() {
        let issues = validate(&y("machine:\n  kubelet:\n    imgae: x\n"), true);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, vec!["machine", "kubelet", "imgae"]);
    }

    #[test]
    fn deprecated_fields_are_tolerated_but_their_keys_checked() {
        assert!(validate(
            &y("persist: true\nmachine:\n  time:\n    servers: [a]\n"),
            true
        )
        .is_empty());
        assert_eq!(
            validate(&y("machine:\n  network:\n    nameserver: [a]\n"), true).len(),
            1
        );
    }

    #[test]
    fn scalars_become_strings_where_go_would_decode_them_so() {
        let mut d = y("cluster:\n  apiServer:\n    extraArgs:\n      enable-aggregator-routing: true\nmachine:\n  sysctls:\n    a: 8192\n");
        coerce(&mut d);
        assert_eq!(
            d["cluster"]["apiServer"]["extraArgs"]["enable-aggregator-routing"],
            Y::String("true".into())
        );
        assert_eq!(d["machine"]["sysctls"]["a"], Y::String("8192".into()));
    }

    #[test]
    fn documents_are_matched_by_kind() {
        assert!(validate(
            &y("apiVersion: v1alpha1\nkind: HostnameConfig\nauto: \"off\"\nhostname: a\n"),
            false
        )
        .is_empty());
        assert!(!validate(
            &y("apiVersion: v1alpha1\nkind: HostnameConfig\nauto: sometimes\n"),
            false
        )
        .is_empty());
        assert!(!validate(&y("apiVersion: v1alpha1\nkind: NoSuchConfig\n"), false).is_empty());
    }
}
