//! Label and field selectors, and query-string decoding.

use std::collections::HashMap;

use serde_json::Value;

use super::store::ApiError;

/// Whether a label selector object (`matchLabels`, `matchExpressions`) selects `labels`.
pub(crate) fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(m) = selector.get("matchLabels").and_then(Value::as_object) {
        if !m.iter().all(|(k, v)| label(k) == v.as_str()) {
            return false;
        }
    }
    let exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    exprs.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => label(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => !label(key).is_some_and(|v| values.contains(&v)),
            "Exists" => label(key).is_some(),
            "DoesNotExist" => label(key).is_none(),
            _ => false,
        }
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector plus a field selector.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse(s: &str, what: &str) -> Result<Vec<Req>, ApiError> {
    let bad = |t: &str| ApiError::bad_request(format!("unable to parse requirement: {what} {t:?}"));
    let mut out = Vec::new();
    for term in split_top(s) {
        let r = if let Some((k, v)) = term.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==") {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once('=') {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once(" notin ") {
            Req::NotIn(k.trim().into(), parse_set(v).ok_or_else(|| bad(&term))?)
        } else if let Some((k, v)) = term.split_once(" in ") {
            Req::In(k.trim().into(), parse_set(v).ok_or_else(|| bad(&term))?)
        } else if let Some(k) = term.strip_prefix('!') {
            Req::NotExists(k.trim().into())
        } else if !term.contains(' ') {
            Req::Exists(term.clone())
        } else {
            return Err(bad(&term));
        };
        out.push(r);
    }
    Ok(out)
}

fn check(reqs: &[Req], get: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

impl Selector {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Selector, ApiError> {
        let labels = match q.get("labelSelector") {
            Some(s) => parse(s, "labelSelector")?,
            None => vec![],
        };
        let fields = match q.get("fieldSelector") {
            Some(s) => parse(s, "fieldSelector")?,
            None => vec![],
        };
        if fields
            .iter()
            .any(|f| !matches!(f, Req::Eq(..) | Req::Ne(..)))
        {
            return Err(ApiError::bad_request(
                "field selectors only support =, == and !=",
            ));
        }
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        // Field paths are dotted JSON paths (metadata.name, spec.nodeName, ...).
        let field = |k: &str| {
            let ptr: String = k.split('.').map(|p| format!("/{p}")).collect();
            match obj.pointer(&ptr) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => Some(String::new()),
                Some(v) => Some(v.to_string()),
            }
        };
        check(&self.labels, label) && check(&self.fields, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}}});
        let q = |l: &str, f: &str| {
            let mut m = HashMap::new();
            if !l.is_empty() {
                m.insert("labelSelector".to_string(), l.to_string());
            }
            if !f.is_empty() {
                m.insert("fieldSelector".to_string(), f.to_string());
            }
            Selector::from_query(&m).unwrap().matches(&o)
        };
        assert!(q("app=x,tier in (web, db)", "metadata.name=a"));
        assert!(!q("app!=x", ""));
        assert!(q("!missing,app", "metadata.name!=b"));
        assert!(!q("tier notin (web)", ""));
        assert!(!q("", "metadata.name=b"));
        assert_eq!(percent_decode("a%3Db%2Cc+d"), "a=b,c d");
    }
}
