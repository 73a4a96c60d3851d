//! SOPS files encrypted with age, decrypted and encrypted in process (no `sops` binary).
//!
//! Format facts, as getsops/sops v3.13.2 writes and checks them (`aes/cipher.go`,
//! `sops.go`, `stores/yaml/store.go`, `age/keysource.go`): each leaf value is AES-256-GCM
//! encrypted with a per-file data key, 32-byte IV, AAD = mapping keys from the document root
//! joined by `:` plus a trailing `:` (sequence items add nothing). The data key is stored
//! age-encrypted per recipient in the `sops:` block of the first document. The MAC is SHA-512
//! over the cleartext leaves in file order, encrypted with the data key under AAD = lastmodified.
//!
//! Limitations: YAML comments are dropped (serde_yaml_ng does not keep them), so
//! `*_comment_regex` files are refused; only classic X25519 age keys; one key group.

mod cipher;
mod error;
mod keys;
mod rules;

use std::io::{Read as _, Write as _};
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest as _, Sha512};

pub use cipher::{
    decrypt_value, encrypt_value, parse_enc, DataKey, EncValue, ValueError, ValueType,
};
pub use error::SopsError;
pub use keys::{default_key_file, AgeIdentities};
pub use rules::{CreationRule, EncryptionRules, Selection, SopsConfig, DEFAULT_UNENCRYPTED_SUFFIX};

/// The sops version written into files we encrypt.
pub const SOPS_VERSION: &str = "3.11.0";

/// sops hashes these bytes first when `mac_only_encrypted` is set, so the two MAC modes differ.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Decrypt a SOPS YAML file (single or multi-document) and return the cleartext YAML without
/// the `sops` key, key order kept. `source` names the file in errors.
pub fn decrypt_yaml(
    input: &str,
    identities: &AgeIdentities,
    source: &Path,
) -> Result<String, SopsError> {
    let mut docs = parse_docs(input, source)?;
    let meta_value = docs
        .first()
        .and_then(|d| d.as_mapping())
        .and_then(|m| m.get("sops"))
        .cloned()
        .ok_or_else(|| SopsError::NotSopsFile {
            file: source.to_path_buf(),
            reason: if docs.is_empty() {
                "it is empty".into()
            } else {
                "no top-level `sops:` metadata".into()
            },
        })?;
    let meta = Metadata::parse(&meta_value, source)?;
    let key = meta.data_key(identities, source)?;

    let mut hasher = Sha512::new();
    if meta.rules.mac_only_encrypted {
        hasher.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    for doc in docs.iter_mut() {
        if let Value::Mapping(m) = doc {
            m.remove("sops");
        }
        let mut path = Vec::new();
        let mut w = Walk {
            key: &key,
            rules: &meta.rules,
            hasher: &mut hasher,
            file: source,
        };
        w.decrypt(doc, &mut path)?;
    }
    let computed = hex::encode_upper(hasher.finalize());
    let aad = go_rfc3339(&meta.lastmodified).ok_or_else(|| SopsError::InvalidMetadata {
        file: source.to_path_buf(),
        reason: format!("lastmodified `{}` is not RFC 3339", meta.lastmodified),
    })?;
    let stored = match decrypt_value(&key, &meta.mac, &aad) {
        Ok((bytes, _)) => bytes,
        Err(ValueError::Auth) => {
            return Err(SopsError::MacMismatch {
                file: source.to_path_buf(),
            })
        }
        Err(e) => return Err(map_value_error(e, source, "sops:mac")),
    };
    if stored != computed.as_bytes() {
        return Err(SopsError::MacMismatch {
            file: source.to_path_buf(),
        });
    }
    emit_docs(&docs, source)
}

/// Encrypt plaintext YAML for `recipients` the way sops 3.11 writes it (one armored age stanza
/// per recipient, MAC, RFC 3339 lastmodified, selection field from `rules`).
pub fn encrypt_yaml(
    plaintext: &str,
    recipients: &[age::x25519::Recipient],
    rules: &EncryptionRules,
) -> Result<String, SopsError> {
    encrypt_yaml_named(plaintext, recipients, rules, Path::new("<input>"))
}

/// As [`encrypt_yaml`], naming the file in errors.
pub fn encrypt_yaml_named(
    plaintext: &str,
    recipients: &[age::x25519::Recipient],
    rules: &EncryptionRules,
    source: &Path,
) -> Result<String, SopsError> {
    let enc_err = |reason: String| SopsError::Encrypt {
        file: source.to_path_buf(),
        reason,
    };
    if recipients.is_empty() {
        return Err(enc_err("no age recipients given".into()));
    }
    let mut docs = parse_docs(plaintext, source)?;
    if docs.is_empty() {
        return Err(enc_err("the input has no YAML document".into()));
    }
    for d in &docs {
        match d {
            Value::Mapping(m) if m.contains_key("sops") => {
                return Err(enc_err(
                    "the input already has a `sops` key (already encrypted?)".into(),
                ))
            }
            Value::Mapping(_) => {}
            _ => {
                return Err(enc_err(
                    "every document must be a mapping at the top level".into(),
                ))
            }
        }
    }
    let key = DataKey::generate();
    let mut hasher = Sha512::new();
    if rules.mac_only_encrypted {
        hasher.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    for doc in docs.iter_mut() {
        let mut path = Vec::new();
        let mut w = Walk {
            key: &key,
            rules,
            hasher: &mut hasher,
            file: source,
        };
        w.encrypt(doc, &mut path)?;
    }
    let lastmodified = rfc3339_now();
    let mac = encrypt_value(
        &key,
        hex::encode_upper(hasher.finalize()).as_bytes(),
        ValueType::Str,
        &lastmodified,
    );

    let mut age_list = Vec::new();
    for r in recipients {
        age_list.push(Value::Mapping(Mapping::from_iter([
            (Value::from("recipient"), Value::from(r.to_string())),
            (
                Value::from("enc"),
                Value::from(wrap_data_key(&key, r, source)?),
            ),
        ])));
    }
    let mut meta = Mapping::new();
    meta.insert("age".into(), Value::Sequence(age_list));
    meta.insert("lastmodified".into(), Value::from(lastmodified));
    meta.insert("mac".into(), Value::from(mac));
    let (field, value) = rules.metadata_field();
    meta.insert(field.into(), Value::from(value));
    if rules.mac_only_encrypted {
        meta.insert("mac_only_encrypted".into(), Value::Bool(true));
    }
    meta.insert("version".into(), Value::from(SOPS_VERSION));
    // sops appends its metadata to every document and reads it from the first.
    for doc in docs.iter_mut() {
        if let Value::Mapping(m) = doc {
            m.insert("sops".into(), Value::Mapping(meta.clone()));
        }
    }
    emit_docs(&docs, source)
}

/// The parsed `sops:` block.
struct Metadata {
    /// `(recipient, armored enc)` pairs.
    age: Vec<(String, String)>,
    lastmodified: String,
    mac: String,
    rules: EncryptionRules,
}

impl Metadata {
    fn parse(v: &Value, file: &Path) -> Result<Self, SopsError> {
        let invalid = |reason: String| SopsError::InvalidMetadata {
            file: file.to_path_buf(),
            reason,
        };
        let map = v
            .as_mapping()
            .ok_or_else(|| invalid("`sops` is not a mapping".into()))?;
        let mut stanzas: Vec<&Value> = Vec::new();
        if let Some(Value::Sequence(s)) = map.get("age") {
            stanzas.extend(s.iter());
        }
        if let Some(groups) = map.get("key_groups") {
            let groups = groups.as_sequence().cloned().unwrap_or_default();
            if groups.len() > 1 {
                return Err(SopsError::Unsupported {
                    file: file.to_path_buf(),
                    what: format!("{} key groups (Shamir secret sharing)", groups.len()),
                    hint: "re-encrypt the file with a single group of age recipients".into(),
                });
            }
            if let Some(Value::Sequence(s)) = groups.first().and_then(|g| g.get("age")) {
                // Cloned to outlive `groups`; the stanza list is tiny.
                return Self::finish(map, s.iter().collect(), file);
            }
        }
        Self::finish(map, stanzas, file)
    }

    fn finish(map: &Mapping, stanzas: Vec<&Value>, file: &Path) -> Result<Self, SopsError> {
        let invalid = |reason: String| SopsError::InvalidMetadata {
            file: file.to_path_buf(),
            reason,
        };
        let mut age = Vec::new();
        for s in stanzas {
            let recipient = s.get("recipient").and_then(|v| v.as_str()).unwrap_or("");
            let enc = s
                .get("enc")
                .and_then(|v| v.as_str())
                .ok_or_else(|| invalid(format!("age entry for `{recipient}` has no `enc`")))?;
            age.push((recipient.to_string(), enc.to_string()));
        }
        if age.is_empty() {
            let others: Vec<&str> = ["pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"]
                .into_iter()
                .filter(|k| map.get(*k).is_some_and(|v| !v.is_null()))
                .collect();
            return Err(SopsError::Unsupported {
                file: file.to_path_buf(),
                what: if others.is_empty() {
                    "a file without age recipients".into()
                } else {
                    format!("a file encrypted only with {}", others.join(", "))
                },
                hint: "re-encrypt it for an age recipient (`sops updatekeys` after adding one to .sops.yaml)".into(),
            });
        }
        let text = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let lastmodified =
            text("lastmodified").ok_or_else(|| invalid("no `lastmodified`".into()))?;
        let mac = text("mac").ok_or_else(|| invalid("no `mac`".into()))?;
        let rules = EncryptionRules::from_fields(map, file, true)?;
        Ok(Metadata {
            age,
            lastmodified,
            mac,
            rules,
        })
    }

    /// Try every age stanza with every identity; the first that opens gives the data key.
    fn data_key(&self, ids: &AgeIdentities, file: &Path) -> Result<DataKey, SopsError> {
        let mut malformed: Option<SopsError> = None;
        for (recipient, enc) in &self.age {
            let reader = age::armor::ArmoredReader::new(enc.as_bytes());
            let bad = |reason: String| SopsError::MalformedDataKey {
                file: file.to_path_buf(),
                recipient: recipient.clone(),
                reason,
            };
            let dec = match age::Decryptor::new(reader) {
                Ok(d) => d,
                Err(e) => {
                    malformed.get_or_insert(bad(e.to_string()));
                    continue;
                }
            };
            match dec.decrypt(ids.as_dyn()) {
                Ok(mut r) => {
                    let mut buf = Vec::new();
                    if let Err(e) = r.read_to_end(&mut buf) {
                        malformed.get_or_insert(bad(e.to_string()));
                        continue;
                    }
                    let key = DataKey::from_slice(&buf);
                    zeroize::Zeroize::zeroize(&mut buf);
                    match key {
                        Some(k) => return Ok(k),
                        None => {
                            malformed.get_or_insert(bad("data key is not 32 bytes".into()));
                        }
                    }
                }
                Err(age::DecryptError::NoMatchingKeys) => {}
                Err(e) => {
                    malformed.get_or_insert(bad(e.to_string()));
                }
            }
        }
        // A damaged stanza for our own key matters more than "not a recipient".
        let ours = ids.recipient_strings();
        let listed: Vec<String> = self.age.iter().map(|(r, _)| r.clone()).collect();
        if let Some(e) = malformed {
            if listed.iter().any(|r| ours.contains(r)) || listed.len() == 1 {
                return Err(e);
            }
        }
        Err(SopsError::NotRecipient {
            file: file.to_path_buf(),
            key_source: ids.source().to_string(),
            recipients: listed,
            our_recipients: ours,
        })
    }
}

fn wrap_data_key(
    key: &DataKey,
    r: &age::x25519::Recipient,
    file: &Path,
) -> Result<String, SopsError> {
    let fail = |e: &dyn std::fmt::Display| SopsError::Encrypt {
        file: file.to_path_buf(),
        reason: format!("age: {e}"),
    };
    let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))
        .map_err(|e| fail(&e))?;
    let armor = age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor)
        .map_err(|e| fail(&e))?;
    let mut w = enc.wrap_output(armor).map_err(|e| fail(&e))?;
    w.write_all(key.as_bytes()).map_err(|e| fail(&e))?;
    let out = w.finish().and_then(|a| a.finish()).map_err(|e| fail(&e))?;
    String::from_utf8(out).map_err(|e| fail(&e))
}

/// Walk state shared by decrypt and encrypt: both hash the same cleartext in the same order.
struct Walk<'a> {
    key: &'a DataKey,
    rules: &'a EncryptionRules,
    hasher: &'a mut Sha512,
    file: &'a Path,
}

fn aad(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        s.push_str(p);
        s.push(':');
    }
    s
}

/// Mapping keys must be strings, as in sops (it refuses others).
fn key_text(k: &Value, path: &[String], file: &Path) -> Result<String, SopsError> {
    match k {
        Value::String(s) => Ok(s.clone()),
        _ => Err(SopsError::Unsupported {
            file: file.to_path_buf(),
            what: format!("a non-string mapping key under `{}`", aad(path)),
            hint: "quote the key".into(),
        }),
    }
}

/// Go `ToBytes` of a cleartext leaf as yaml.v3 would have typed it; None for null.
fn leaf_bytes(v: &Value) -> Option<(Vec<u8>, ValueType)> {
    match v {
        Value::String(s) => Some((s.as_bytes().to_vec(), ValueType::Str)),
        Value::Bool(b) => Some((cipher::go_bool(*b).as_bytes().to_vec(), ValueType::Bool)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some((i.to_string().into_bytes(), ValueType::Int))
            } else if let Some(u) = n.as_u64() {
                Some((u.to_string().into_bytes(), ValueType::Int))
            } else {
                n.as_f64()
                    .map(|f| (cipher::go_float(f).into_bytes(), ValueType::Float))
            }
        }
        _ => None,
    }
}

impl Walk<'_> {
    fn decrypt(&mut self, v: &mut Value, path: &mut Vec<String>) -> Result<(), SopsError> {
        match v {
            Value::Null => Ok(()),
            Value::Mapping(m) => {
                for (k, child) in m.iter_mut() {
                    path.push(key_text(k, path, self.file)?);
                    self.decrypt(child, path)?;
                    path.pop();
                }
                Ok(())
            }
            Value::Sequence(items) => {
                for child in items.iter_mut() {
                    self.decrypt(child, path)?;
                }
                Ok(())
            }
            Value::Tagged(_) => Err(self.tagged(path)),
            leaf => {
                let encrypted = self.rules.should_encrypt(path);
                if !encrypted {
                    if !self.rules.mac_only_encrypted {
                        if let Some((bytes, _)) = leaf_bytes(leaf) {
                            self.hasher.update(bytes);
                        }
                    }
                    return Ok(());
                }
                let at = aad(path);
                let enc = match leaf {
                    Value::String(s) => s.clone(),
                    _ => {
                        return Err(SopsError::MalformedEnc {
                            file: self.file.to_path_buf(),
                            path: at,
                            reason: "expected an ENC[AES256_GCM,…] string".into(),
                        })
                    }
                };
                // sops stores empty strings unencrypted.
                if enc.is_empty() {
                    return Ok(());
                }
                let (plain, ty) = decrypt_value(self.key, &enc, &at)
                    .map_err(|e| map_value_error(e, self.file, &at))?;
                if ty != ValueType::Comment {
                    self.hasher.update(&plain);
                }
                *leaf = typed_value(plain, ty).map_err(|reason| SopsError::MalformedEnc {
                    file: self.file.to_path_buf(),
                    path: at.clone(),
                    reason,
                })?;
                Ok(())
            }
        }
    }

    fn encrypt(&mut self, v: &mut Value, path: &mut Vec<String>) -> Result<(), SopsError> {
        match v {
            Value::Null => Ok(()),
            Value::Mapping(m) => {
                for (k, child) in m.iter_mut() {
                    path.push(key_text(k, path, self.file)?);
                    self.encrypt(child, path)?;
                    path.pop();
                }
                Ok(())
            }
            Value::Sequence(items) => {
                for child in items.iter_mut() {
                    self.encrypt(child, path)?;
                }
                Ok(())
            }
            Value::Tagged(_) => Err(self.tagged(path)),
            leaf => {
                let Some((bytes, ty)) = leaf_bytes(leaf) else {
                    return Ok(());
                };
                let encrypted = self.rules.should_encrypt(path);
                if !self.rules.mac_only_encrypted || encrypted {
                    self.hasher.update(&bytes);
                }
                // sops leaves empty strings as "" rather than encrypting them.
                if encrypted && !(ty == ValueType::Str && bytes.is_empty()) {
                    *leaf = Value::String(encrypt_value(self.key, &bytes, ty, &aad(path)));
                }
                Ok(())
            }
        }
    }

    fn tagged(&self, path: &[String]) -> SopsError {
        SopsError::Unsupported {
            file: self.file.to_path_buf(),
            what: format!("a YAML tag (`!…`) under `{}`", aad(path)),
            hint: "remove the tag".into(),
        }
    }
}

fn map_value_error(e: ValueError, file: &Path, path: &str) -> SopsError {
    match e {
        ValueError::Malformed(reason) => SopsError::MalformedEnc {
            file: file.to_path_buf(),
            path: path.to_string(),
            reason,
        },
        ValueError::Auth => SopsError::ValueAuth {
            file: file.to_path_buf(),
            path: path.to_string(),
        },
        ValueError::UnknownType(ty) => SopsError::UnsupportedType {
            file: file.to_path_buf(),
            path: path.to_string(),
            ty,
        },
    }
}

/// Turn decrypted text back into a YAML value of its declared type.
fn typed_value(plain: Vec<u8>, ty: ValueType) -> Result<Value, String> {
    let text = String::from_utf8(plain).map_err(|_| "plaintext is not UTF-8".to_string())?;
    Ok(match ty {
        ValueType::Str | ValueType::Bytes | ValueType::Time | ValueType::Comment => {
            Value::String(text)
        }
        ValueType::Int => Value::Number(
            text.parse::<i64>()
                .map_err(|_| "type:int value is not an integer".to_string())?
                .into(),
        ),
        ValueType::Float => Value::Number(
            text.parse::<f64>()
                .map_err(|_| "type:float value is not a number".to_string())?
                .into(),
        ),
        ValueType::Bool => Value::Bool(
            cipher::go_parse_bool(&text)
                .ok_or_else(|| "type:bool value is not a boolean".to_string())?,
        ),
    })
}

fn parse_docs(input: &str, file: &Path) -> Result<Vec<Value>, SopsError> {
    crate::limits::check_text(input, crate::limits::MAX_MANIFEST_BYTES).map_err(|p| {
        SopsError::Yaml {
            file: file.to_path_buf(),
            reason: p.message(),
        }
    })?;
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(input) {
        let v = serde::Deserialize::deserialize(de).map_err(|e: serde_yaml_ng::Error| {
            SopsError::Yaml {
                file: file.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        // Empty documents (a stray `---`) carry nothing to encrypt or hash.
        if !matches!(v, Value::Null) {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn emit_docs(docs: &[Value], file: &Path) -> Result<String, SopsError> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d).map_err(|e| SopsError::Yaml {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Go `time.Parse(RFC3339)` then `Format(RFC3339)`: drops fractional seconds and writes a UTC
/// offset as `Z`. Returns None when the text is not RFC 3339.
pub fn go_rfc3339(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19))
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let zone = match rest {
        "Z" | "z" | "+00:00" => "Z".to_string(),
        z if z.len() == 6
            && matches!(z.as_bytes()[0], b'+' | b'-')
            && z.as_bytes()[3] == b':'
            && z[1..3].bytes().all(|c| c.is_ascii_digit())
            && z[4..6].bytes().all(|c| c.is_ascii_digit()) =>
        {
            z.to_string()
        }
        _ => return None,
    };
    Some(format!("{}T{}{}", &s[..10], &s[11..19], zone))
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    endsys_core::clock::rfc3339_secs(endsys_core::clock::now_secs())
}

/// True when the text is a SOPS-encrypted YAML file (its first document has a
/// top-level `sops` mapping with a `mac`).
pub fn is_sops_yaml(text: &str) -> bool {
    // Input beyond the limits is not parsed here; whoever reads it next says why.
    if crate::limits::check_text(text, crate::limits::MAX_MANIFEST_BYTES).is_err() {
        return false;
    }
    let Some(doc) = serde_yaml_ng::Deserializer::from_str(text).next() else {
        return false;
    };
    let Ok(value) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) else {
        return false;
    };
    value.get("sops").and_then(|s| s.get("mac")).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> AgeIdentities {
        AgeIdentities::from_identities(vec![age::x25519::Identity::generate()], "test key")
    }

    #[test]
    fn aad_is_keys_joined_with_trailing_colon() {
        assert_eq!(
            aad(&["stringData".into(), "SECRET_DOMAIN".into()]),
            "stringData:SECRET_DOMAIN:"
        );
        assert_eq!(aad(&[]), "");
    }

    #[test]
    fn sequence_items_share_the_parent_aad() {
        let id = ids();
        let enc = encrypt_yaml(
            "an_array:\n  - a\n  - b\n",
            &id.recipients(),
            &EncryptionRules::default(),
        )
        .expect("encrypts");
        let doc: Value = serde_yaml_ng::from_str(&enc).expect("yaml");
        let meta = Metadata::parse(&doc["sops"], Path::new("t")).expect("meta");
        let key = meta.data_key(&id, Path::new("t")).expect("key");
        for item in doc["an_array"].as_sequence().expect("seq") {
            let s = item.as_str().expect("str");
            assert!(decrypt_value(&key, s, "an_array:").is_ok());
            assert_eq!(decrypt_value(&key, s, "an_array:0:"), Err(ValueError::Auth));
        }
    }

    #[test]
    fn typed_round_trip() {
        let id = ids();
        let plain = "s: hello\ni: -42\nf: 3.25\nb: true\nn: null\ne: \"\"\nnested:\n  list: [1, false, x]\n";
        let enc = encrypt_yaml(plain, &id.recipients(), &EncryptionRules::default()).expect("enc");
        assert!(
            enc.contains("type:int]") && enc.contains("type:float]") && enc.contains("type:bool]")
        );
        let dec = decrypt_yaml(&enc, &id, Path::new("t.yaml")).expect("dec");
        let a: Value = serde_yaml_ng::from_str(plain).expect("a");
        let b: Value = serde_yaml_ng::from_str(&dec).expect("b");
        assert_eq!(a, b);
        let keys: Vec<_> = b
            .as_mapping()
            .expect("map")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["s", "i", "f", "b", "n", "e", "nested"]);
    }

    #[test]
    fn comment_type_decrypts_to_text_and_is_not_hashed() {
        let key = DataKey::generate();
        let enc = encrypt_value(&key, b"note", ValueType::Comment, "k:");
        let (plain, ty) = decrypt_value(&key, &enc, "k:").expect("dec");
        assert_eq!(ty, ValueType::Comment);
        assert_eq!(typed_value(plain, ty).expect("typed"), Value::from("note"));
    }

    #[test]
    fn multi_document_and_mac_only() {
        let id = ids();
        let plain = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\nstringData:\n  K: v\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: b\ndata:\n  K: dg==\n";
        let enc =
            encrypt_yaml(plain, &id.recipients(), &EncryptionRules::kubernetes()).expect("enc");
        assert!(enc.contains("name: a") && enc.contains("encrypted_regex"));
        let dec = decrypt_yaml(&enc, &id, Path::new("s.yaml")).expect("dec");
        assert_eq!(dec, plain);
        // With mac_only_encrypted, clear fields may change without breaking the MAC.
        let edited = enc.replacen("name: a", "name: renamed", 1);
        assert!(decrypt_yaml(&edited, &id, Path::new("s.yaml")).is_ok());
    }

    #[test]
    fn full_mac_covers_cleartext_leaves() {
        let id = ids();
        let enc = encrypt_yaml(
            "a: 1\nb_unencrypted: clear\n",
            &id.recipients(),
            &EncryptionRules::default(),
        )
        .expect("enc");
        let edited = enc.replace("b_unencrypted: clear", "b_unencrypted: changed");
        assert!(matches!(
            decrypt_yaml(&edited, &id, Path::new("f.yaml")),
            Err(SopsError::MacMismatch { .. })
        ));
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(
            go_rfc3339("2026-01-19T22:05:55Z").as_deref(),
            Some("2026-01-19T22:05:55Z")
        );
        assert_eq!(
            go_rfc3339("2026-01-19T22:05:55.123Z").as_deref(),
            Some("2026-01-19T22:05:55Z")
        );
        assert_eq!(
            go_rfc3339("2026-01-19T22:05:55+01:00").as_deref(),
            Some("2026-01-19T22:05:55+01:00")
        );
        assert_eq!(go_rfc3339("yesterday"), None);
        assert_eq!(endsys_core::clock::rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            endsys_core::clock::rfc3339_secs(1_768_860_355),
            "2026-01-19T22:05:55Z"
        );
        assert_eq!(
            endsys_core::clock::rfc3339_secs(951_782_400),
            "2000-02-29T00:00:00Z"
        );
    }
}
