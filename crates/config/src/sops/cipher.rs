//! One SOPS value: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, AES-256-GCM with a 32-byte IV.

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::AesGcm;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore as _;
use zeroize::Zeroize as _;

/// sops uses 256-bit nonces, so the common 96-bit `Aes256Gcm` alias does not fit.
type Aes256Gcm32 = AesGcm<Aes256, U32>;

const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The 32-byte data key that encrypts every value of one file. Zeroed on drop; Debug is redacted.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        DataKey(k)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm32 {
        Aes256Gcm32::new((&self.0).into())
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// The `type:` field of an encrypted value: how the plaintext text maps back to YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Str,
    Int,
    Float,
    Bool,
    Bytes,
    Time,
    Comment,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Str => "str",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Bool => "bool",
            ValueType::Bytes => "bytes",
            ValueType::Time => "time",
            ValueType::Comment => "comment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "str" => ValueType::Str,
            "int" => ValueType::Int,
            "float" => ValueType::Float,
            "bool" => ValueType::Bool,
            "bytes" => ValueType::Bytes,
            "time" => ValueType::Time,
            "comment" => ValueType::Comment,
            _ => return None,
        })
    }
}

/// Why a single value could not be decrypted; the caller adds file and YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    Malformed(String),
    Auth,
    UnknownType(String),
}

/// The pieces of a parsed `ENC[…]` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncValue {
    pub data: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub ty: String,
}

fn field<'a>(part: Option<&'a str>, name: &str) -> Result<&'a str, ValueError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix(':'))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ValueError::Malformed(format!("missing `{name}:` field")))
}

fn b64(s: &str, name: &str) -> Result<Vec<u8>, ValueError> {
    B64.decode(s)
        .map_err(|e| ValueError::Malformed(format!("{name} is not valid base64 ({e})")))
}

/// Parse `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` without decrypting.
pub fn parse_enc(s: &str) -> Result<EncValue, ValueError> {
    let inner = s
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| ValueError::Malformed("not of the form ENC[AES256_GCM,…]".into()))?;
    // Base64 never contains commas, so a plain split is exact.
    let mut parts = inner.split(',');
    let data = b64(field(parts.next(), "data")?, "data")?;
    let iv = b64(field(parts.next(), "iv")?, "iv")?;
    let tag = b64(field(parts.next(), "tag")?, "tag")?;
    let ty = field(parts.next(), "type")?.to_string();
    if parts.next().is_some() {
        return Err(ValueError::Malformed("unexpected extra field".into()));
    }
    if iv.len() != IV_LEN {
        return Err(ValueError::Malformed(format!(
            "iv is {} bytes, expected {IV_LEN}",
            iv.len()
        )));
    }
    if tag.len() != TAG_LEN {
        return Err(ValueError::Malformed(format!(
            "tag is {} bytes, expected {TAG_LEN}",
            tag.len()
        )));
    }
    Ok(EncValue { data, iv, tag, ty })
}

/// Decrypt one value; returns the plaintext text and its declared type.
pub fn decrypt_value(
    key: &DataKey,
    enc: &str,
    aad: &str,
) -> Result<(Vec<u8>, ValueType), ValueError> {
    let v = parse_enc(enc)?;
    let ty = ValueType::parse(&v.ty).ok_or_else(|| ValueError::UnknownType(v.ty.clone()))?;
    let mut msg = v.data;
    msg.extend_from_slice(&v.tag);
    let plain = key
        .cipher()
        .decrypt(
            v.iv.as_slice().into(),
            Payload {
                msg: &msg,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| ValueError::Auth)?;
    Ok((plain, ty))
}

/// Encrypt one value's text with a fresh random IV.
pub fn encrypt_value(key: &DataKey, plain: &[u8], ty: ValueType, aad: &str) -> String {
    let mut iv = [0u8; IV_LEN];
    rand::rng().fill_bytes(&mut iv);
    encrypt_value_with_iv(key, plain, ty, aad, &iv)
}

fn encrypt_value_with_iv(
    key: &DataKey,
    plain: &[u8],
    ty: ValueType,
    aad: &str,
    iv: &[u8; IV_LEN],
) -> String {
    // AES-GCM encryption with a valid key and nonce size only fails for >64 GiB inputs.
    let out = key
        .cipher()
        .encrypt(
            iv.into(),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .unwrap_or_default();
    let split = out.len().saturating_sub(TAG_LEN);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{}]",
        B64.encode(&out[..split]),
        B64.encode(iv),
        B64.encode(&out[split..]),
        ty.as_str()
    )
}

/// Go `strconv.FormatFloat(v, 'f', -1, 64)`: shortest round-trip digits, never an exponent.
/// Rust's `Display` for f64 has the same contract except for the infinities.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Go `strconv.ParseBool`, which sops uses for `type:bool`.
pub fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// sops writes booleans as Python does.
pub fn go_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey([7u8; 32])
    }

    #[test]
    fn round_trip_every_type() {
        for (text, ty) in [
            ("hello", ValueType::Str),
            ("42", ValueType::Int),
            ("3.25", ValueType::Float),
            ("True", ValueType::Bool),
            ("a comment", ValueType::Comment),
        ] {
            let enc = encrypt_value(&key(), text.as_bytes(), ty, "a:b:");
            assert!(enc.ends_with(&format!(",type:{}]", ty.as_str())), "{enc}");
            let (plain, got) = decrypt_value(&key(), &enc, "a:b:").expect("decrypts");
            assert_eq!(plain, text.as_bytes());
            assert_eq!(got, ty);
        }
    }

    #[test]
    fn aad_binds_value_to_path() {
        let enc = encrypt_value(&key(), b"x", ValueType::Str, "data:password:");
        assert_eq!(
            decrypt_value(&key(), &enc, "data:user:"),
            Err(ValueError::Auth)
        );
    }

    #[test]
    fn deterministic_with_fixed_iv() {
        let iv = [1u8; 32];
        let a = encrypt_value_with_iv(&key(), b"v", ValueType::Str, "k:", &iv);
        let b = encrypt_value_with_iv(&key(), b"v", ValueType::Str, "k:", &iv);
        assert_eq!(a, b);
        let parsed = parse_enc(&a).expect("parses");
        assert_eq!(parsed.iv.len(), 32);
        assert_eq!(parsed.tag.len(), 16);
        assert_eq!(parsed.data.len(), 1);
    }

    #[test]
    fn malformed_values() {
        assert!(matches!(parse_enc("plain"), Err(ValueError::Malformed(_))));
        assert!(matches!(
            parse_enc("ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]"),
            Err(ValueError::Malformed(_))
        ));
        assert!(matches!(
            parse_enc("ENC[AES256_GCM,data:@@,iv:AA==,tag:AA==,type:str]"),
            Err(ValueError::Malformed(_))
        ));
    }

    #[test]
    fn go_number_formats() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(3.25), "3.25");
        assert_eq!(go_float(1e21), "1000000000000000000000");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_parse_bool("True"), Some(true));
        assert_eq!(go_parse_bool("yes"), None);
        assert_eq!(go_bool(false), "False");
    }
}
