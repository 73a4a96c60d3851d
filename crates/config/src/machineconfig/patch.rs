//! Config patches with Talos semantics.
//!
//! Strategic merge: documents match by apiVersion/kind/name (a document without kind
//! is the v1alpha1 one); maps merge, lists append, a few lists are replaced or merged
//! by key, and `$patch: delete` removes a key, a list element or a whole document.
//! RFC 6902 patches are applied to the v1alpha1 document only. Upstream refuses them
//! on multi-document configs (all configs from contract 1.12); we apply them to the
//! main document instead so definitions written for older Talos keep working.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::error::{locate_line, ConfigError};
use super::talconfig::PatchSource;

const DIRECTIVE: &str = "$patch";

/// A loaded patch.
#[derive(Debug, Clone)]
pub enum Patch {
    /// Strategic merge documents.
    Strategic(Vec<Value>),
    /// RFC 6902 operations.
    Json6902(Vec<JsonOp>),
}

/// One RFC 6902 operation, with the line it came from.
#[derive(Debug, Clone)]
pub struct JsonOp {
    pub op: String,
    pub path: String,
    pub from: Option<String>,
    pub value: Option<Value>,
    pub line: usize,
}

/// A patch with its origin, for error messages.
#[derive(Debug, Clone)]
pub struct LoadedPatch {
    pub patch: Patch,
    pub file: PathBuf,
    pub line: usize,
    pub text: String,
}

impl LoadedPatch {
    /// Parses a patch the way Talos's `LoadPatch` detects formats.
    pub fn load(src: &PatchSource) -> Result<Self, ConfigError> {
        let err = |line: usize, m: String, hint: &str| ConfigError::input(&src.file, line, m, hint);
        crate::limits::check_text(&src.text, crate::limits::MAX_INPUT_BYTES)
            .map_err(|p| ConfigError::unreadable(&src.file, p))?;
        let mut docs = Vec::new();
        for de in serde_yaml_ng::Deserializer::from_str(&src.text) {
            let v: Value = serde::Deserialize::deserialize(de).map_err(|e| {
                let line = e.location().map(|l| l.line()).unwrap_or(0) + src.line.saturating_sub(1);
                err(
                    line,
                    format!(
                        "patch is not valid YAML: {}",
                        e.to_string().split(" at line ").next().unwrap_or("")
                    ),
                    "fix the YAML syntax",
                )
            })?;
            // A custom tag (`!foo`) has no meaning in a machine config and the
            // emitter cannot write it back: refused rather than silently dropped
            // (found by the patch fuzz target).
            if let Some(tag) = first_tag(&v) {
                return Err(err(
                    locate_text_line(&src.text, &tag) + src.line.saturating_sub(1),
                    format!("YAML tag `{tag}` is not supported in a patch"),
                    "remove the tag; write the value plainly (quote it to keep it a string)",
                ));
            }
            // Keys the emitter cannot write back, which no config has: over
            // YAML's 1024-character simple-key limit, or a mapping or list used
            // as a key (`? {a: b}`); both found by the patch fuzz target.
            if let Some(m) = first_bad_key(&v) {
                return Err(err(
                    src.line,
                    m,
                    "check the patch: machine config keys are short plain names",
                ));
            }
            if !v.is_null() {
                docs.push(v);
            }
        }
        let patch = match docs.first() {
            None => Patch::Strategic(Vec::new()),
            Some(Value::Sequence(items)) if docs.len() == 1 => {
                let mut ops = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let line = nth_item_line(&src.text, i) + src.line.saturating_sub(1);
                    let m = item.as_mapping().ok_or_else(|| {
                        err(
                            line,
                            format!("JSON patch operation #{} is not a mapping", i + 1),
                            "each operation is `- op: ... path: ...`",
                        )
                    })?;
                    let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                    for k in m.keys() {
                        let k = k.as_str().unwrap_or("");
                        if !["op", "path", "from", "value"].contains(&k) {
                            return Err(err(
                                line,
                                format!("JSON patch operation #{}: unknown key `{k}`", i + 1),
                                "allowed keys are op, path, from, value",
                            ));
                        }
                    }
                    let op = get("op").ok_or_else(|| {
                        err(
                            line,
                            format!("JSON patch operation #{} has no `op`", i + 1),
                            "add op: add|remove|replace|move|copy|test",
                        )
                    })?;
                    if !["add", "remove", "replace", "move", "copy", "test"].contains(&op.as_str())
                    {
                        return Err(err(
                            line,
                            format!("JSON patch op `{op}` is not an RFC 6902 operation"),
                            "use add, remove, replace, move, copy or test",
                        ));
                    }
                    let path = get("path").ok_or_else(|| {
                        err(
                            line,
                            format!("JSON patch `{op}` has no `path`"),
                            "add path: /cluster/...",
                        )
                    })?;
                    if !path.is_empty() && !path.starts_with('/') {
                        return Err(err(
                            line,
                            format!("JSON patch `{op}` path `{path}` does not start with `/`"),
                            "JSON pointers start with `/`, e.g. /cluster/apiServer",
                        ));
                    }
                    let value = m.get("value").cloned();
                    if matches!(op.as_str(), "add" | "replace" | "test") && value.is_none() {
                        return Err(err(
                            line,
                            format!("JSON patch `{op} {path}` has no `value`"),
                            "add a value:",
                        ));
                    }
                    let from = get("from");
                    if matches!(op.as_str(), "move" | "copy") && from.is_none() {
                        return Err(err(
                            line,
                            format!("JSON patch `{op} {path}` has no `from`"),
                            "add from: /...",
                        ));
                    }
                    ops.push(JsonOp {
                        op,
                        path,
                        from,
                        value,
                        line,
                    });
                }
                Patch::Json6902(ops)
            }
            Some(_) => {
                for (i, d) in docs.iter().enumerate() {
                    if !d.is_mapping() {
                        return Err(err(src.line, format!("patch document #{} is neither a mapping nor a list of JSON patch operations", i + 1), "a strategic patch is a mapping like `machine: ...`"));
                    }
                }
                // Talos loads strategic patches strictly: unknown keys are errors.
                for d in &docs {
                    if let Some(issue) = super::schema::validate(d, true).into_iter().next() {
                        let refs: Vec<&str> = issue.path.iter().map(String::as_str).collect();
                        let line = match locate_line(&src.text, &refs) {
                            0 => src.line,
                            l => l + src.line - 1,
                        };
                        return Err(err(line, format!("patch: {}", issue.message), "fix the field name or value; see the Talos configuration reference for this version"));
                    }
                }
                Patch::Strategic(docs)
            }
        };
        Ok(Self {
            patch,
            file: src.file.clone(),
            line: src.line,
            text: src.text.clone(),
        })
    }

    fn err(&self, path: &[String], message: String, hint: &str) -> ConfigError {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let line = match locate_line(&self.text, &refs) {
            0 => self.line,
            l => l + self.line - 1,
        };
        ConfigError::input(&self.file, line, message, hint)
    }

    /// Applies this patch to a config (first document = v1alpha1).
    pub fn apply(&self, docs: &mut Vec<Value>) -> Result<(), ConfigError> {
        match &self.patch {
            Patch::Strategic(pdocs) => {
                for pd in pdocs {
                    self.apply_doc(docs, pd)?;
                }
                Ok(())
            }
            Patch::Json6902(ops) => {
                let main = docs.iter_mut().find(|d| is_v1alpha1(d)).ok_or_else(|| {
                    ConfigError::input(
                        &self.file,
                        self.line,
                        "JSON patch needs a v1alpha1 document",
                        "the config has no main document",
                    )
                })?;
                for op in ops {
                    apply_json_op(main, op).map_err(|m| {
                        ConfigError::input(&self.file, op.line, format!("JSON patch `{} {}` failed: {m}", op.op, op.path), "check that the path exists in the generated config (paths are case-sensitive)")
                    })?;
                }
                Ok(())
            }
        }
    }

    fn apply_doc(&self, docs: &mut Vec<Value>, pd: &Value) -> Result<(), ConfigError> {
        let Some(pm) = pd.as_mapping() else {
            return Ok(());
        };
        let delete_doc = pm.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
        let idx = docs.iter().position(|d| same_doc(d, pd));
        if delete_doc {
            if is_v1alpha1(pd) {
                return Err(self.err(
                    &[DIRECTIVE.into()],
                    "the main v1alpha1 document cannot be deleted".into(),
                    "delete individual keys instead",
                ));
            }
            if let Some(i) = idx {
                docs.remove(i);
            }
            return Ok(());
        }
        match idx {
            Some(i) => {
                let kind = doc_kind(&docs[i]);
                let mut path = Vec::new();
                let target = docs[i].as_mapping_mut().ok_or_else(|| {
                    self.err(&[], "config document is not a mapping".into(), "internal")
                })?;
                self.merge_map(target, pm, &kind, &mut path)
            }
            None => {
                let mut clean = pd.clone();
                strip_directives(&mut clean);
                docs.push(clean);
                Ok(())
            }
        }
    }

    fn merge_map(
        &self,
        left: &mut Mapping,
        right: &Mapping,
        kind: &str,
        path: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        for (k, rv) in right {
            let key = k.as_str().unwrap_or_default().to_string();
            if key == DIRECTIVE {
                if path.is_empty() {
                    continue;
                }
                let what = rv.as_str().unwrap_or("");
                return Err(self.err(
                    path,
                    format!("`$patch: {what}` is not supported here"),
                    "only `$patch: delete` is supported",
                ));
            }
            path.push(key.clone());
            if let Some(rm) = rv.as_mapping() {
                if let Some(d) = rm.get(DIRECTIVE) {
                    if d.as_str() != Some("delete") {
                        return Err(self.err(
                            path,
                            format!("`$patch: {}` is not supported", d.as_str().unwrap_or("?")),
                            "only `$patch: delete` is supported",
                        ));
                    }
                    left.remove(k);
                    path.pop();
                    continue;
                }
            }
            if rv.is_null() {
                // A nil value does not override (Go's merge skips zero values).
                path.pop();
                continue;
            }
            match left.get_mut(k) {
                None => {
                    let mut clean = rv.clone();
                    strip_directives(&mut clean);
                    left.insert(k.clone(), clean);
                }
                Some(lv) => self.merge_value(lv, rv, kind, path)?,
            }
            path.pop();
        }
        Ok(())
    }

    fn merge_value(
        &self,
        lv: &mut Value,
        rv: &Value,
        kind: &str,
        path: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let p = path.join(".");
        let replace = kind == "v1alpha1"
            && matches!(
                p.as_str(),
                "cluster.network.podSubnets"
                    | "cluster.network.serviceSubnets"
                    | "cluster.apiServer.auditPolicy"
            )
            || (kind == "NetworkRuleConfig"
                && matches!(p.as_str(), "ingress" | "portSelector.ports"));
        if replace {
            *lv = rv.clone();
            return Ok(());
        }
        match (lv, rv) {
            (Value::Mapping(lm), Value::Mapping(rm)) => self.merge_map(lm, rm, kind, path),
            (Value::Sequence(ls), Value::Sequence(rs)) => {
                let merge_key = match (kind, p.as_str()) {
                    ("v1alpha1", "cluster.apiServer.admissionControl") => Some("name"),
                    ("v1alpha1", "machine.network.interfaces") => Some("interface"),
                    ("v1alpha1", "machine.network.interfaces.[].vlans") => Some("vlanId"),
                    ("ExtensionServiceConfig", "configFiles") => Some("mountPath"),
                    _ => None,
                };
                for item in rs {
                    if let Some(im) = item.as_mapping() {
                        if let Some(d) = im.get(DIRECTIVE) {
                            if d.as_str() != Some("delete") {
                                return Err(self.err(
                                    path,
                                    "only `$patch: delete` is supported in list items".into(),
                                    "use `$patch: delete` with one identifying key",
                                ));
                            }
                            let (mk, mv) = im
                                .iter()
                                .find(|(k, _)| k.as_str() != Some(DIRECTIVE))
                                .ok_or_else(|| {
                                self.err(
                                    path,
                                    "`$patch: delete` list item has no key to match".into(),
                                    "add the key identifying the element, e.g. `name: PodSecurity`",
                                )
                            })?;
                            ls.retain(|e| e.as_mapping().and_then(|em| em.get(mk)) != Some(mv));
                            continue;
                        }
                        if let Some(key) = merge_key {
                            let id = im.get(key).or_else(|| {
                                if key == "interface" {
                                    im.get("deviceSelector")
                                } else {
                                    None
                                }
                            });
                            let id_key = if im.get(key).is_some() {
                                key
                            } else {
                                "deviceSelector"
                            };
                            if let Some(id) = id {
                                if let Some(existing) = ls.iter_mut().find(|e| {
                                    e.as_mapping().and_then(|em| em.get(id_key)) == Some(id)
                                }) {
                                    path.push("[]".into());
                                    let r = match existing {
                                        Value::Mapping(em) => self.merge_map(em, im, kind, path),
                                        _ => Ok(()),
                                    };
                                    path.pop();
                                    r?;
                                    continue;
                                }
                            }
                        }
                    }
                    let mut clean = item.clone();
                    strip_directives(&mut clean);
                    ls.push(clean);
                }
                Ok(())
            }
            (lv, rv) => {
                let mut clean = rv.clone();
                strip_directives(&mut clean);
                *lv = clean;
                Ok(())
            }
        }
    }
}

/// Loads and applies patches in order. The first failure names its file and line.
pub fn apply_all(docs: &mut Vec<Value>, patches: &[PatchSource]) -> Result<(), ConfigError> {
    for p in patches {
        LoadedPatch::load(p)?.apply(docs)?;
    }
    Ok(())
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.remove(DIRECTIVE);
            for (_, c) in m.iter_mut() {
                strip_directives(c);
            }
        }
        Value::Sequence(s) => {
            s.retain(|e| {
                e.as_mapping()
                    .map(|m| !m.contains_key(DIRECTIVE))
                    .unwrap_or(true)
            });
            for c in s.iter_mut() {
                strip_directives(c);
            }
        }
        _ => {}
    }
}

fn nth_item_line(text: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.starts_with("- ")
                || l.starts_with("-\t")
                || l.trim_start().starts_with("{\"op\"")
                || l.trim_start().starts_with("- op")
        })
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}

/// A document is the v1alpha1 config when it has no `kind`.
pub fn is_v1alpha1(d: &Value) -> bool {
    d.get("kind").is_none()
}

pub fn doc_kind(d: &Value) -> String {
    d.get("kind")
        .and_then(Value::as_str)
        .unwrap_or("v1alpha1")
        .to_string()
}

fn same_doc(a: &Value, b: &Value) -> bool {
    if is_v1alpha1(a) || is_v1alpha1(b) {
        return is_v1alpha1(a) && is_v1alpha1(b);
    }
    let f = |d: &Value, k: &str| d.get(k).cloned();
    f(a, "apiVersion") == f(b, "apiVersion")
        && f(a, "kind") == f(b, "kind")
        && f(a, "name") == f(b, "name")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Vec<String> {
    if path.is_empty() {
        return Vec::new();
    }
    path[1..].split('/').map(unescape).collect()
}

fn json_get<'a>(root: &'a Value, tokens: &[String]) -> Result<&'a Value, String> {
    let mut cur = root;
    for (i, t) in tokens.iter().enumerate() {
        cur = match cur {
            Value::Mapping(m) => m.get(t.as_str()),
            Value::Sequence(s) => t.parse::<usize>().ok().and_then(|i| s.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("`/{}` does not exist", tokens[..=i].join("/")))?;
    }
    Ok(cur)
}

fn json_parent<'a>(root: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = root;
    for (i, t) in tokens.iter().enumerate() {
        let here = format!("/{}", tokens[..=i].join("/"));
        cur = match cur {
            Value::Mapping(m) => m.get_mut(t.as_str()),
            Value::Sequence(s) => t.parse::<usize>().ok().and_then(move |i| s.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("`{here}` does not exist"))?;
    }
    Ok(cur)
}

fn json_remove(root: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (last, parent) = tokens
        .split_last()
        .ok_or("cannot remove the whole document")?;
    let p = json_parent(root, parent)?;
    match p {
        Value::Mapping(m) => m
            .remove(last.as_str())
            .ok_or_else(|| format!("`{last}` does not exist")),
        Value::Sequence(s) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not a list index"))?;
            if i >= s.len() {
                return Err(format!("index {i} is out of range (length {})", s.len()));
            }
            Ok(s.remove(i))
        }
        _ => Err("parent is not a map or list".into()),
    }
}

fn json_add(
    root: &mut Value,
    tokens: &[String],
    value: Value,
    replace: bool,
) -> Result<(), String> {
    let Some((last, parent)) = tokens.split_last() else {
        *root = value;
        return Ok(());
    };
    let p = json_parent(root, parent)?;
    match p {
        Value::Mapping(m) => {
            if replace && !m.contains_key(last.as_str()) {
                return Err(format!("`{last}` does not exist"));
            }
            m.insert(Value::String(last.clone()), value);
            Ok(())
        }
        Value::Sequence(s) => {
            if last == "-" && !replace {
                s.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not a list index"))?;
            if replace {
                let slot = s
                    .get_mut(i)
                    .ok_or_else(|| format!("index {i} is out of range"))?;
                *slot = value;
            } else {
                if i > s.len() {
                    return Err(format!("index {i} is out of range (length {})", s.len()));
                }
                s.insert(i, value);
            }
            Ok(())
        }
        _ => Err("parent is not a map or list".into()),
    }
}

fn apply_json_op(doc: &mut Value, op: &JsonOp) -> Result<(), String> {
    let tokens = split_pointer(&op.path);
    match op.op.as_str() {
        "remove" => json_remove(doc, &tokens).map(|_| ()),
        "add" => json_add(doc, &tokens, op.value.clone().unwrap_or(Value::Null), false),
        "replace" => json_add(doc, &tokens, op.value.clone().unwrap_or(Value::Null), true),
        "test" => {
            let cur = json_get(doc, &tokens)?;
            if Some(cur) == op.value.as_ref() {
                Ok(())
            } else {
                Err("value differs".into())
            }
        }
        "move" | "copy" => {
            let from = split_pointer(op.from.as_deref().unwrap_or(""));
            let v = if op.op == "move" {
                json_remove(doc, &from)?
            } else {
                json_get(doc, &from)?.clone()
            };
            json_add(doc, &tokens, v, false)
        }
        other => Err(format!("unknown op `{other}`")),
    }
}

/// The first YAML tag (`!name`) anywhere in a value.
fn first_tag(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) => Some(t.tag.to_string()),
        Value::Sequence(s) => s.iter().find_map(first_tag),
        Value::Mapping(m) => m
            .iter()
            .find_map(|(k, v)| first_tag(k).or_else(|| first_tag(v))),
        _ => None,
    }
}

/// What is wrong with the first key that is not a short scalar.
fn first_bad_key(v: &Value) -> Option<String> {
    match v {
        Value::Tagged(t) => first_bad_key(&t.value),
        Value::Sequence(s) => s.iter().find_map(first_bad_key),
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            if matches!(k, Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_)) {
                return Some("a mapping or list is used as a key".into());
            }
            // Measured as written (quotes and escapes count): that is what
            // the parser of the rendered config will see.
            let n = super::yaml::key_scalar(k).chars().count();
            if n > 1000 {
                return Some(format!(
                    "a key of {n} characters: keys are limited to 1000 (YAML allows 1024 as written)"
                ));
            }
            first_bad_key(v)
        }),
        _ => None,
    }
}

fn locate_text_line(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// For callers that only have a path and text.
pub fn source(file: &Path, text: &str) -> PatchSource {
    PatchSource {
        file: file.to_path_buf(),
        line: 1,
        text: text.to_string(),
        template: false,
        envsubst_after_template: false,
    }
}
