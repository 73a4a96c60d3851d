//! Variable substitution with the semantics talhelper uses (a8m/envsubst in restricted
//! mode): `$VAR` and `${VAR}` expand, `$$` is a literal `$`, and a variable that is
//! unset or empty is an error. `${VAR:-default}` / `${VAR-default}` supply defaults.
//! Whole-line comments are left alone, since talhelper strips comments first.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::ConfigError;

/// Variables for substitution: the talenv file on top of the process environment,
/// as talhelper does by calling `os.Setenv` for each talenv entry.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    map: BTreeMap<String, String>,
}

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process environment (talhelper reads it too).
    pub fn from_process_env() -> Self {
        Self {
            map: std::env::vars().collect(),
        }
    }

    pub fn set(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.map.insert(k.into(), v.into());
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }

    /// Reads a talenv file (`key: value` or `KEY=value` lines, like godotenv) and
    /// lets its entries override what is already set.
    pub fn load_talenv(&mut self, text: &str, source: &Path) -> Result<(), ConfigError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line == "---" {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = match (line.find(':'), line.find('=')) {
                (Some(c), Some(e)) => line.split_at(c.min(e)),
                (Some(c), None) => line.split_at(c),
                (None, Some(e)) => line.split_at(e),
                (None, None) => {
                    return Err(ConfigError::input(
                        source,
                        i + 1,
                        format!("`{line}` is not a `key: value` line"),
                        "talenv files hold one `name: value` per line",
                    ))
                }
            };
            let key = k.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::input(
                    source,
                    i + 1,
                    format!("`{key}` is not a valid variable name"),
                    "names use letters, digits and `_` only",
                ));
            }
            let mut val = v[1..].trim();
            if let Some(hash) = val.find(" #") {
                val = val[..hash].trim();
            }
            let val = unquote(val);
            self.map.insert(key.to_string(), val);
        }
        Ok(())
    }
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        return v[1..v.len() - 1].to_string();
    }
    v.to_string()
}

/// Substitutes variables in `text`, keeping the line count so errors found later
/// still point at the operator's lines.
pub fn substitute(text: &str, vars: &Vars, source: &Path) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        subst_line(line, vars, source, i + 1, &mut out)?;
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn subst_line(
    line: &str,
    vars: &Vars,
    source: &Path,
    lineno: usize,
    out: &mut String,
) -> Result<(), ConfigError> {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let lookup = |name: &str, default: Option<(&str, bool)>| -> Result<String, ConfigError> {
        let val = vars.get(name);
        // A line break substituted into YAML adds lines (another key, a second
        // line in install.image); no value of a talconfig field spans lines.
        if let Some(c) = val.and_then(|v| v.chars().find(|c| c.is_control() && *c != '\t')) {
            return Err(ConfigError::input(
                source,
                lineno,
                format!("variable `{name}` contains the control character {c:?}; substituted here it would inject text into the config"),
                format!("keep `{name}` on one line in talenv.yaml or the environment"),
            ));
        }
        match (val, default) {
            (Some(v), _) if !v.is_empty() => Ok(v.to_string()),
            // `:-` applies when unset or empty, `-` only when unset.
            (Some(_), Some((d, true))) | (None, Some((d, _))) => Ok(d.to_string()),
            (Some(_), _) => Err(ConfigError::input(
                source,
                lineno,
                format!("variable `{name}` is empty"),
                format!("set `{name}` in talenv.yaml or the environment, or write `$${{{name}}}` for a literal"),
            )),
            (None, None) => Err(ConfigError::input(
                source,
                lineno,
                format!("variable `{name}` is not set"),
                format!("define `{name}: <value>` in talenv.yaml (or the environment); write `$$` for a literal `$`"),
            )),
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let close = chars[i + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| {
                        ConfigError::input(
                            source,
                            lineno,
                            "unterminated `${` in variable reference",
                            "close it with `}` or escape the dollar as `$$`",
                        )
                    })?;
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                let (name, default) = if let Some(p) = inner.find(":-") {
                    (&inner[..p], Some((&inner[p + 2..], true)))
                } else if let Some(p) = inner.find('-') {
                    (&inner[..p], Some((&inner[p + 1..], false)))
                } else {
                    (inner.as_str(), None)
                };
                if name.is_empty()
                    || !name.starts_with(is_name_start)
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(ConfigError::input(
                        source,
                        lineno,
                        format!("`${{{inner}}}` is not a valid variable reference"),
                        "use ${NAME} with letters, digits and `_`, or escape the dollar as `$$`",
                    ));
                }
                out.push_str(&lookup(name, default)?);
                i += 3 + close;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&lookup(&name, None)?);
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.load_talenv(
            "talosVersion: v1.12.6\nkubernetesVersion: \"v1.35.3\"\nEMPTY:\n",
            Path::new("talenv.yaml"),
        )
        .unwrap();
        v
    }

    #[test]
    fn expands_braced_and_bare_names() {
        let out = substitute(
            "a: ${talosVersion}\nb: $kubernetesVersion\n",
            &vars(),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(out, "a: v1.12.6\nb: v1.35.3\n");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        let out = substitute("$$patch: delete\nx: $$HOME\n", &vars(), Path::new("t")).unwrap();
        assert_eq!(out, "$patch: delete\nx: $HOME\n");
    }

    #[test]
    fn unset_and_empty_are_errors_with_line() {
        let e = substitute("a: 1\nb: ${nope}\n", &vars(), Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.location().unwrap().line, 2);
        assert!(e.to_string().contains("nope"));
        assert!(substitute("c: ${EMPTY}\n", &vars(), Path::new("t")).is_err());
        assert_eq!(
            substitute("c: ${EMPTY:-d}\n", &vars(), Path::new("t")).unwrap(),
            "c: d\n"
        );
    }

    #[test]
    fn comment_lines_are_left_alone() {
        let out = substitute("# ${nope}\na: b\n", &vars(), Path::new("t")).unwrap();
        assert_eq!(out, "# ${nope}\na: b\n");
    }
}
