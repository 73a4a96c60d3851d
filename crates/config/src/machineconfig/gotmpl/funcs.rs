//! The functions a template may call: Go's builtins and the sprig ones talhelper's
//! users reach for.

use serde_yaml_ng::{Mapping, Value};

use super::{str_arg, text, truthy, Eval};

impl Eval<'_> {
    pub(super) fn call(&mut self, f: &str, a: &[Value], _dot: &Value) -> Result<Value, String> {
        let need = |n: usize| -> Result<(), String> {
            if a.len() == n {
                Ok(())
            } else {
                Err(format!("{f}: wants {n} arguments, got {}", a.len()))
            }
        };
        let st = |i: usize| str_arg(&a[i]);
        let b = Value::Bool;
        let s = |x: String| Value::String(x);
        Ok(match f {
            "not" => {
                need(1)?;
                b(!truthy(&a[0]))
            }
            "eq" => {
                if a.len() < 2 {
                    return Err("eq: wants at least 2 arguments".into());
                }
                b(a[1..].iter().any(|x| same(&a[0], x)))
            }
            "ne" => {
                need(2)?;
                b(!same(&a[0], &a[1]))
            }
            "lt" | "le" | "gt" | "ge" => {
                need(2)?;
                let o = order(&a[0], &a[1])?;
                b(match f {
                    "lt" => o.is_lt(),
                    "le" => o.is_le(),
                    "gt" => o.is_gt(),
                    _ => o.is_ge(),
                })
            }
            "len" => {
                need(1)?;
                let n = match &a[0] {
                    Value::String(x) => x.len(),
                    Value::Sequence(x) => x.len(),
                    Value::Mapping(x) => x.len(),
                    Value::Null => 0,
                    other => return Err(format!("len of {}", text(other))),
                };
                Value::Number((n as u64).into())
            }
            "index" => {
                let mut cur = a.first().cloned().unwrap_or(Value::Null);
                for k in a.iter().skip(1) {
                    cur = match (&cur, k) {
                        (Value::Sequence(q), Value::Number(n)) => n
                            .as_u64()
                            .and_then(|i| q.get(i as usize).cloned())
                            .ok_or("index out of range")?,
                        (Value::Mapping(m), k) => m.get(k).cloned().unwrap_or(Value::Null),
                        _ => return Err("index of a non-collection".into()),
                    };
                }
                cur
            }
            "print" => s(go_print(a)),
            "printf" => {
                if a.is_empty() {
                    return Err("printf: no format".into());
                }
                s(printf(&st(0), &a[1..]))
            }
            "contains" => {
                need(2)?;
                b(st(1).contains(&st(0)))
            }
            "hasPrefix" => {
                need(2)?;
                b(st(1).starts_with(&st(0)))
            }
            "hasSuffix" => {
                need(2)?;
                b(st(1).ends_with(&st(0)))
            }
            "trim" => {
                need(1)?;
                s(st(0).trim().to_string())
            }
            "trimPrefix" => {
                need(2)?;
                let x = st(1);
                s(x.strip_prefix(&st(0)).unwrap_or(&x).to_string())
            }
            "trimSuffix" => {
                need(2)?;
                let x = st(1);
                s(x.strip_suffix(&st(0)).unwrap_or(&x).to_string())
            }
            "replace" => {
                need(3)?;
                s(st(2).replace(&st(0), &st(1)))
            }
            "lower" => {
                need(1)?;
                s(st(0).to_lowercase())
            }
            "upper" => {
                need(1)?;
                s(st(0).to_uppercase())
            }
            "quote" => s(a
                .iter()
                .map(|x| serde_json::to_string(&text(x)).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")),
            "default" => {
                if a.is_empty() || a.len() > 2 {
                    return Err("default: wants 1 or 2 arguments".into());
                }
                match a.get(1) {
                    Some(given) if truthy(given) => given.clone(),
                    _ => a[0].clone(),
                }
            }
            "empty" => {
                need(1)?;
                b(!truthy(&a[0]))
            }
            "join" => {
                need(2)?;
                let items = match &a[1] {
                    Value::Sequence(q) => q.iter().map(text).collect::<Vec<_>>(),
                    other => vec![text(other)],
                };
                s(items.join(&st(0)))
            }
            "split" => {
                need(2)?;
                let mut m = Mapping::new();
                for (i, part) in st(1).split(&st(0)).enumerate() {
                    m.insert(s(format!("_{i}")), s(part.to_string()));
                }
                Value::Mapping(m)
            }
            other => return Err(format!("function `{other}` is not supported by this tool")),
        })
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .ok_or_else(|| "incomparable numbers".to_string()),
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => Err("incompatible types for comparison".into()),
    }
}

/// Go's `fmt.Sprint`: spaces only between operands that are not both strings.
fn go_print(a: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        if i > 0 && !(a[i - 1].is_string() || v.is_string()) {
            out.push(' ');
        }
        out.push_str(&text(v));
    }
    out
}

fn printf(fmt: &str, a: &[Value]) -> String {
    let mut out = String::new();
    let mut it = a.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('q') => out.push_str(
                &serde_json::to_string(&it.next().map(text).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            Some(_) => out.push_str(&it.next().map(text).unwrap_or_default()),
            None => out.push('%'),
        }
    }
    out
}
