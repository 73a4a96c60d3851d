//! Which leaves get encrypted (`*_suffix` / `*_regex`), and `.sops.yaml` creation rules.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr as _;

use regex::Regex;
use serde_yaml_ng::Value;

use super::SopsError;

/// sops' default when a file names no selection option.
pub const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// At most one selection option applies to a file, as in sops.
#[derive(Debug, Clone)]
pub enum Selection {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl Default for Selection {
    fn default() -> Self {
        Selection::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_string())
    }
}

/// How a file's leaves are chosen for encryption and hashed into the MAC.
#[derive(Debug, Clone, Default)]
pub struct EncryptionRules {
    pub selection: Selection,
    pub mac_only_encrypted: bool,
}

impl EncryptionRules {
    /// The endsys Kubernetes convention: `encrypted_regex: ^(data|stringData)$`, MAC over encrypted values.
    pub fn kubernetes() -> Self {
        EncryptionRules {
            // The pattern is a constant known to compile.
            selection: Regex::new("^(data|stringData)$")
                .map(Selection::EncryptedRegex)
                .unwrap_or_default(),
            mac_only_encrypted: true,
        }
    }

    /// Whether the leaf at `path` (mapping keys from the document root) is encrypted.
    /// Every component counts: a match on `stringData` covers everything below it.
    pub fn should_encrypt(&self, path: &[String]) -> bool {
        match &self.selection {
            Selection::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Selection::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Selection::UnencryptedRegex(r) => !path.iter().any(|p| r.is_match(p)),
            Selection::EncryptedRegex(r) => path.iter().any(|p| r.is_match(p)),
        }
    }

    /// Build from the optional fields shared by the `sops:` block and creation rules.
    /// `file` is only used in error messages.
    pub(crate) fn from_fields(
        map: &serde_yaml_ng::Mapping,
        file: &Path,
        is_metadata: bool,
    ) -> Result<Self, SopsError> {
        let get_str = |k: &str| -> Result<Option<String>, SopsError> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(file, is_metadata, format!("`{k}` must be a string"))),
            }
        };
        for k in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
            if get_str(k)?.is_some() {
                return Err(SopsError::Unsupported {
                    file: file.to_path_buf(),
                    what: format!("`{k}`"),
                    hint: "use encrypted_regex or unencrypted_suffix instead".into(),
                });
            }
        }
        let compile = |field: &str, pattern: String| {
            Regex::new(&pattern).map_err(|e| SopsError::InvalidRegex {
                file: file.to_path_buf(),
                field: field.to_string(),
                pattern,
                source: e,
            })
        };
        let mut found = Vec::new();
        if let Some(s) = get_str("unencrypted_suffix")? {
            found.push(Selection::UnencryptedSuffix(s));
        }
        if let Some(s) = get_str("encrypted_suffix")? {
            found.push(Selection::EncryptedSuffix(s));
        }
        if let Some(s) = get_str("unencrypted_regex")? {
            found.push(Selection::UnencryptedRegex(compile(
                "unencrypted_regex",
                s,
            )?));
        }
        if let Some(s) = get_str("encrypted_regex")? {
            found.push(Selection::EncryptedRegex(compile("encrypted_regex", s)?));
        }
        if found.len() > 1 {
            return Err(bad(
                file,
                is_metadata,
                "only one of unencrypted_suffix, encrypted_suffix, unencrypted_regex, encrypted_regex may be set".into(),
            ));
        }
        let mac_only_encrypted = match map.get("mac_only_encrypted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    file,
                    is_metadata,
                    "`mac_only_encrypted` must be true or false".into(),
                ))
            }
        };
        Ok(EncryptionRules {
            selection: found.pop().unwrap_or_default(),
            mac_only_encrypted,
        })
    }

    /// The selection field as sops writes it into the `sops:` block.
    pub(crate) fn metadata_field(&self) -> (&'static str, String) {
        match &self.selection {
            Selection::UnencryptedSuffix(s) => ("unencrypted_suffix", s.clone()),
            Selection::EncryptedSuffix(s) => ("encrypted_suffix", s.clone()),
            Selection::UnencryptedRegex(r) => ("unencrypted_regex", r.as_str().to_string()),
            Selection::EncryptedRegex(r) => ("encrypted_regex", r.as_str().to_string()),
        }
    }
}

fn bad(file: &Path, is_metadata: bool, reason: String) -> SopsError {
    if is_metadata {
        SopsError::InvalidMetadata {
            file: file.to_path_buf(),
            reason,
        }
    } else {
        SopsError::Yaml {
            file: file.to_path_buf(),
            reason,
        }
    }
}

/// One `creation_rules` entry of `.sops.yaml`.
#[derive(Debug, Clone)]
pub struct CreationRule {
    pub path_regex: Option<Regex>,
    pub recipients: Vec<age::x25519::Recipient>,
    pub rules: EncryptionRules,
}

/// A parsed `.sops.yaml`.
#[derive(Debug, Clone)]
pub struct SopsConfig {
    pub path: PathBuf,
    pub creation_rules: Vec<CreationRule>,
}

impl SopsConfig {
    pub fn load(path: &Path) -> Result<Self, SopsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SopsError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse `.sops.yaml` text; `path` is where it lives (rules match relative to its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, SopsError> {
        let yerr = |reason: String| SopsError::Yaml {
            file: path.to_path_buf(),
            reason,
        };
        crate::limits::check_text(text, crate::limits::MAX_INPUT_BYTES)
            .map_err(|p| yerr(p.message()))?;
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| yerr(e.to_string()))?;
        let rules = match doc.get("creation_rules") {
            Some(Value::Sequence(s)) => s.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(yerr("`creation_rules` must be a list".into())),
        };
        let mut creation_rules = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let map = r
                .as_mapping()
                .ok_or_else(|| yerr(format!("creation_rules[{i}] must be a mapping")))?;
            creation_rules.push(parse_rule(map, path, i)?);
        }
        Ok(SopsConfig {
            path: path.to_path_buf(),
            creation_rules,
        })
    }

    /// The first rule whose `path_regex` matches `file` relative to the config's directory
    /// (a rule without `path_regex` matches everything), as sops picks it.
    pub fn rule_for(&self, file: &Path) -> Result<&CreationRule, SopsError> {
        let rel = relative_to_config(&self.path, file);
        self.creation_rules
            .iter()
            .find(|r| r.path_regex.as_ref().is_none_or(|re| re.is_match(&rel)))
            .ok_or_else(|| SopsError::NoMatchingRule {
                config: self.path.clone(),
                file: file.to_path_buf(),
            })
    }
}

fn parse_rule(
    map: &serde_yaml_ng::Mapping,
    path: &Path,
    i: usize,
) -> Result<CreationRule, SopsError> {
    let unsupported = |what: String| SopsError::Unsupported {
        file: path.to_path_buf(),
        what,
        hint: "use a single group of age recipients".into(),
    };
    let path_regex = match map.get("path_regex") {
        Some(Value::String(s)) if !s.is_empty() => {
            Some(Regex::new(s).map_err(|e| SopsError::InvalidRegex {
                file: path.to_path_buf(),
                field: format!("creation_rules[{i}].path_regex"),
                pattern: s.clone(),
                source: e,
            })?)
        }
        _ => None,
    };
    let mut recipient_texts = age_list(map.get("age"));
    match map.get("key_groups") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(groups)) => {
            if groups.len() > 1 {
                return Err(unsupported(format!(
                    "creation_rules[{i}]: {} key_groups (Shamir secret sharing)",
                    groups.len()
                )));
            }
            for g in groups {
                let gm = g.as_mapping().ok_or_else(|| {
                    unsupported(format!(
                        "creation_rules[{i}]: a key group that is not a mapping"
                    ))
                })?;
                for (k, _) in gm {
                    let k = k.as_str().unwrap_or("?");
                    if k != "age" {
                        return Err(unsupported(format!(
                            "creation_rules[{i}]: `{k}` keys in key_groups"
                        )));
                    }
                }
                recipient_texts.extend(age_list(gm.get("age")));
            }
        }
        Some(_) => {
            return Err(unsupported(format!(
                "creation_rules[{i}]: key_groups shape"
            )))
        }
    }
    if recipient_texts.is_empty() {
        for k in [
            "pgp",
            "kms",
            "gcp_kms",
            "azure_keyvault",
            "hc_vault_transit_uri",
            "hckms",
        ] {
            if map.get(k).is_some() {
                return Err(SopsError::Unsupported {
                    file: path.to_path_buf(),
                    what: format!("creation_rules[{i}]: `{k}` keys"),
                    hint: "add an `age:` recipient to the rule".into(),
                });
            }
        }
    }
    let recipients = recipient_texts
        .into_iter()
        .map(|t| {
            age::x25519::Recipient::from_str(&t).map_err(|_| SopsError::InvalidRecipient {
                file: path.to_path_buf(),
                recipient: t,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreationRule {
        path_regex,
        recipients,
        rules: EncryptionRules::from_fields(map, path, false)?,
    })
}

/// `age:` is a comma-separated string (whitespace and newlines allowed) or a list of them.
fn age_list(v: Option<&Value>) -> Vec<String> {
    let split = |s: &str| {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    match v {
        Some(Value::String(s)) => split(s),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .flat_map(split)
            .collect(),
        _ => Vec::new(),
    }
}

/// sops strips `<dir of .sops.yaml>/` from the (absolute) file path before matching.
fn relative_to_config(config: &Path, file: &Path) -> String {
    let abs = |p: &Path| -> PathBuf {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        // Lexical clean-up only: the file may not exist yet.
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    };
    let file_abs = abs(file);
    let dir = abs(config.parent().unwrap_or(Path::new("")));
    match file_abs.strip_prefix(&dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => file_abs.to_string_lossy().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selection_checks_every_component() {
        let k = EncryptionRules::kubernetes();
        assert!(k.should_encrypt(&path(&["stringData", "SECRET_DOMAIN"])));
        assert!(k.should_encrypt(&path(&["data", "x"])));
        assert!(!k.should_encrypt(&path(&["metadata", "name"])));
        assert!(!k.should_encrypt(&path(&["metadata", "database"])));
        let d = EncryptionRules::default();
        assert!(d.should_encrypt(&path(&["a", "b"])));
        assert!(!d.should_encrypt(&path(&["a_unencrypted", "b"])));
        let enc_suffix = EncryptionRules {
            selection: Selection::EncryptedSuffix("_secret".into()),
            mac_only_encrypted: false,
        };
        assert!(enc_suffix.should_encrypt(&path(&["x_secret", "y"])));
        assert!(!enc_suffix.should_encrypt(&path(&["x", "y"])));
        let unenc_re = EncryptionRules {
            selection: Selection::UnencryptedRegex(Regex::new("^public").expect("re")),
            mac_only_encrypted: false,
        };
        assert!(!unenc_re.should_encrypt(&path(&["cluster", "publicKey"])));
        assert!(unenc_re.should_encrypt(&path(&["cluster", "key"])));
    }

    const CFG: &str = r#"
creation_rules:
  - path_regex: talos/.*\.sops\.ya?ml
    mac_only_encrypted: true
    key_groups:
      - age:
          - age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5
  - path_regex: (bootstrap|kubernetes)/.*\.sops\.ya?ml
    encrypted_regex: "^(data|stringData)$"
    mac_only_encrypted: true
    age: "age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5, age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5"
  - age: age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5
    unencrypted_suffix: _plain
"#;

    #[test]
    fn picks_first_matching_rule_relative_to_config_dir() {
        let cfg = SopsConfig::parse(CFG, Path::new("/repo/.sops.yaml")).expect("parses");
        assert_eq!(cfg.creation_rules.len(), 3);
        let r = cfg
            .rule_for(Path::new("/repo/talos/talsecret.sops.yaml"))
            .expect("rule");
        assert!(
            matches!(r.rules.selection, Selection::UnencryptedSuffix(ref s) if s == "_unencrypted")
        );
        assert!(r.rules.mac_only_encrypted);
        assert_eq!(r.recipients.len(), 1);
        let r = cfg
            .rule_for(Path::new("/repo/kubernetes/apps/x/../secret.sops.yaml"))
            .expect("rule");
        assert!(matches!(r.rules.selection, Selection::EncryptedRegex(_)));
        assert_eq!(r.recipients.len(), 2);
        let r = cfg.rule_for(Path::new("/repo/other.yaml")).expect("rule");
        assert!(matches!(r.rules.selection, Selection::UnencryptedSuffix(ref s) if s == "_plain"));
    }

    #[test]
    fn no_match_and_unsupported() {
        let cfg = SopsConfig::parse(
            "creation_rules:\n  - path_regex: ^only/\n    age: age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5\n",
            Path::new("/r/.sops.yaml"),
        )
        .expect("parses");
        assert!(matches!(
            cfg.rule_for(Path::new("/r/else/x.yaml")),
            Err(SopsError::NoMatchingRule { .. })
        ));
        assert!(cfg.rule_for(Path::new("/r/only/x.yaml")).is_ok());
        let two_groups = "creation_rules:\n  - key_groups:\n      - age: [age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5]\n      - age: [age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5]\n";
        assert!(matches!(
            SopsConfig::parse(two_groups, Path::new(".sops.yaml")),
            Err(SopsError::Unsupported { .. })
        ));
        let pgp = "creation_rules:\n  - pgp: ABCDEF\n";
        assert!(matches!(
            SopsConfig::parse(pgp, Path::new(".sops.yaml")),
            Err(SopsError::Unsupported { .. })
        ));
        let two_sel = "creation_rules:\n  - age: age1kzl8h9rdm64tgjx8rl7skaw3pac6dtmvvs9yh9eg3xdjgg20eynqnyy5r5\n    encrypted_regex: a\n    unencrypted_suffix: b\n";
        assert!(SopsConfig::parse(two_sel, Path::new(".sops.yaml")).is_err());
        let bad_rcpt = "creation_rules:\n  - age: age1nope\n";
        assert!(matches!(
            SopsConfig::parse(bad_rcpt, Path::new(".sops.yaml")),
            Err(SopsError::InvalidRecipient { .. })
        ));
    }
}
