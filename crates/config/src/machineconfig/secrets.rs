//! The secrets bundle: the same YAML `talosctl gen secrets` writes and talhelper's
//! `talsecret` holds. Certificates and keys are base64 of the whole PEM text.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use super::error::{locate_line, ConfigError};
use super::talconfig::parse_strict;
use super::yaml;
use endsys_core::pki::{CertInfo, CertificateAuthority, KeyAlgorithm, PrivateKey, CA_VALIDITY};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub bootstraptoken: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbcencryptionsecret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretboxencryptionsecret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustdInfo {
    pub token: String,
}

/// base64(PEM certificate) and base64(PEM key), as in the bundle and in configs.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncodedPair {
    pub crt: String,
    pub key: String,
}

impl std::fmt::Debug for EncodedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedPair")
            .field("crt", &self.crt)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncodedKey {
    pub key: String,
}

impl std::fmt::Debug for EncodedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedKey").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Certs {
    pub etcd: EncodedPair,
    pub k8s: EncodedPair,
    pub k8saggregator: EncodedPair,
    pub k8sserviceaccount: EncodedKey,
    pub os: EncodedPair,
}

/// A Talos secrets bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretsBundle {
    pub cluster: ClusterSecrets,
    pub secrets: Secrets,
    pub trustdinfo: TrustdInfo,
    pub certs: Certs,
}

const TOKEN_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A kubeadm-style token `[0-9a-z]{6}.[0-9a-z]{16}`.
pub fn random_token() -> String {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())] as char)
            .collect()
    };
    let a = pick(6);
    let b = pick(16);
    format!("{a}.{b}")
}

fn random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    b
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

fn pair(ca: &CertificateAuthority) -> Result<EncodedPair, ConfigError> {
    Ok(EncodedPair {
        crt: b64(&ca.pair.cert_pem),
        key: b64(&ca.pair.key.to_talos_pem()?),
    })
}

/// Generates the RSA-4096 service-account key (PKCS#1 PEM) used by contracts > 1.6.
/// The two 2048-bit primes are searched on two threads at once: prime search is
/// nearly all of the cost, and doing it in parallel halves `gen secrets`.
pub fn generate_service_account_key() -> Result<String, ConfigError> {
    use num_bigint_dig::RandPrime;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let exponent = rsa::BigUint::from(65_537u32);
    // A prime pair can (rarely) share a factor with e-1 structure; retry then.
    for _ in 0..8 {
        let search = || {
            let mut rng = rsa::rand_core::OsRng;
            rng.gen_prime(2048)
        };
        let (p, q) = std::thread::scope(|scope| {
            let other = scope.spawn(search);
            let p = search();
            other.join().map(|q| (p, q))
        })
        .map_err(|_| ConfigError::Crypto("RSA prime search thread panicked".into()))?;
        if p == q {
            continue;
        }
        let Ok(key) = rsa::RsaPrivateKey::from_p_q(p, q, exponent.clone()) else {
            continue;
        };
        if key.validate().is_err() || rsa::traits::PublicKeyParts::n(&key).bits() != 4096 {
            continue;
        }
        let pem = key
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(|e| ConfigError::Crypto(format!("RSA key encoding: {e}")))?;
        return Ok(pem.to_string());
    }
    Err(ConfigError::Crypto(
        "RSA key generation: no valid key after 8 prime pairs".into(),
    ))
}

impl SecretsBundle {
    /// Generates a new bundle the way `talosctl gen secrets` does for current contracts.
    pub fn generate() -> Result<Self, ConfigError> {
        let sa = generate_service_account_key()?;
        Self::generate_with_service_account_key(&sa)
    }

    /// Generates everything but the service-account key, which is given (PEM).
    pub fn generate_with_service_account_key(sa_key_pem: &str) -> Result<Self, ConfigError> {
        let os = CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", CA_VALIDITY)?;
        let k8s =
            CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, "kubernetes", CA_VALIDITY)?;
        let agg = CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, "", CA_VALIDITY)?;
        let etcd = CertificateAuthority::generate(KeyAlgorithm::EcdsaP256, "etcd", CA_VALIDITY)?;
        Ok(Self {
            cluster: ClusterSecrets {
                id: URL_SAFE.encode(random_32()),
                secret: STANDARD.encode(random_32()),
            },
            secrets: Secrets {
                bootstraptoken: random_token(),
                aescbcencryptionsecret: None,
                secretboxencryptionsecret: Some(STANDARD.encode(random_32())),
            },
            trustdinfo: TrustdInfo {
                token: random_token(),
            },
            certs: Certs {
                etcd: pair(&etcd)?,
                k8s: pair(&k8s)?,
                k8saggregator: pair(&agg)?,
                k8sserviceaccount: EncodedKey {
                    key: b64(sa_key_pem),
                },
                os: pair(&os)?,
            },
        })
    }

    /// Loads a bundle from (already decrypted) YAML; `source` names it in errors.
    /// Checks what Talos's `Validate()` checks: required values and parseable keys.
    pub fn from_yaml(text: &str, source: &Path) -> Result<Self, ConfigError> {
        if text.contains("ENC[AES256_GCM") {
            return Err(ConfigError::input(
                source,
                locate_line(text, &["sops"]),
                "the secrets bundle is still SOPS-encrypted",
                "decrypt it first (SOPS_AGE_KEY_FILE / --age-key), then load the plain YAML",
            ));
        }
        crate::limits::check_text(text, crate::limits::MAX_INPUT_BYTES)
            .map_err(|p| ConfigError::unreadable(source, p))?;
        let b: SecretsBundle = parse_strict(text, source)?;
        b.check(text, source)?;
        Ok(b)
    }

    fn check(&self, text: &str, source: &Path) -> Result<(), ConfigError> {
        let err = |path: &[&str], msg: String| {
            ConfigError::input(
                source,
                locate_line(text, path),
                msg,
                "the bundle is damaged or hand-edited; restore it from its SOPS file or backup",
            )
        };
        for (path, v) in [
            (&["cluster", "id"][..], &self.cluster.id),
            (&["cluster", "secret"][..], &self.cluster.secret),
            (
                &["secrets", "bootstraptoken"][..],
                &self.secrets.bootstraptoken,
            ),
            (&["trustdinfo", "token"][..], &self.trustdinfo.token),
        ] {
            if v.is_empty() {
                return Err(err(path, format!("{} is empty", path.join("."))));
            }
        }
        // Formats the nodes rely on (Talos's secrets bundle generator, see
        // reference talos-config.md "secrets bundle"): tokens are kubeadm bootstrap
        // tokens `[a-z0-9]{6}.[a-z0-9]{16}` (the apiserver's bootstrap authenticator
        // rejects anything else), cluster id/secret and the secretbox/aescbc keys
        // are base64 of 32 bytes (kube-apiserver's secretbox provider takes only 32).
        // A bundle that breaks them renders fine and fails on the node, mid-install.
        for (path, v) in [
            (
                &["secrets", "bootstraptoken"][..],
                &self.secrets.bootstraptoken,
            ),
            (&["trustdinfo", "token"][..], &self.trustdinfo.token),
        ] {
            if !is_token(v) {
                return Err(err(
                    path,
                    format!(
                        "{} is not a token of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}",
                        path.join(".")
                    ),
                ));
            }
        }
        for (path, v, url) in [
            (&["cluster", "id"][..], Some(&self.cluster.id), true),
            (
                &["cluster", "secret"][..],
                Some(&self.cluster.secret),
                false,
            ),
            (
                &["secrets", "secretboxencryptionsecret"][..],
                self.secrets.secretboxencryptionsecret.as_ref(),
                false,
            ),
            (
                &["secrets", "aescbcencryptionsecret"][..],
                self.secrets.aescbcencryptionsecret.as_ref(),
                false,
            ),
        ] {
            let Some(v) = v else { continue };
            if decoded_len(v, url) != Some(32) {
                return Err(err(
                    path,
                    format!("{} is not base64 of 32 bytes", path.join(".")),
                ));
            }
        }
        if self.secrets.aescbcencryptionsecret.is_some()
            == self.secrets.secretboxencryptionsecret.is_some()
        {
            return Err(err(
                &["secrets"],
                "exactly one of secrets.secretboxencryptionsecret and secrets.aescbcencryptionsecret must be set".into(),
            ));
        }
        let pairs = [
            ("etcd", &self.certs.etcd),
            ("k8s", &self.certs.k8s),
            ("k8saggregator", &self.certs.k8saggregator),
            ("os", &self.certs.os),
        ];
        for (name, p) in pairs {
            let crt = decode_pem(&p.crt).ok_or_else(|| {
                err(
                    &["certs", name, "crt"],
                    format!("certs.{name}.crt is not base64 PEM"),
                )
            })?;
            CertInfo::from_pem(crt.as_bytes(), &format!("certs.{name}.crt"))
                .map_err(|e| err(&["certs", name, "crt"], e.to_string()))?;
            let key = decode_pem(&p.key).ok_or_else(|| {
                err(
                    &["certs", name, "key"],
                    format!("certs.{name}.key is not base64 PEM"),
                )
            })?;
            let what = format!("certs.{name}.key");
            let k = PrivateKey::from_pem(key.as_bytes(), &what)
                .map_err(|e| err(&["certs", name, "key"], e.to_string()))?;
            // A key swapped with another CA's parses, then every certificate it
            // signs fails verification on the nodes.
            let matches = endsys_core::pki::key_matches_cert(crt.as_bytes(), &k, &what)
                .map_err(|e| err(&["certs", name, "key"], e.to_string()))?;
            if !matches {
                return Err(err(
                    &["certs", name, "key"],
                    format!("certs.{name}.key does not belong to certs.{name}.crt (a key of another CA?)"),
                ));
            }
        }
        let sa = decode_pem(&self.certs.k8sserviceaccount.key).ok_or_else(|| {
            err(
                &["certs", "k8sserviceaccount", "key"],
                "certs.k8sserviceaccount.key is not base64 PEM".into(),
            )
        })?;
        check_service_account_key(&sa)
            .map_err(|m| err(&["certs", "k8sserviceaccount", "key"], m))?;
        Ok(())
    }

    /// The YAML `talosctl gen secrets` writes (4-space indent, Go field order).
    pub fn to_yaml(&self) -> String {
        let mut root = Mapping::new();
        let s = |v: &str| Value::String(v.to_string());
        let mut cluster = Mapping::new();
        cluster.insert(s("id"), s(&self.cluster.id));
        cluster.insert(s("secret"), s(&self.cluster.secret));
        root.insert(s("cluster"), Value::Mapping(cluster));
        let mut sec = Mapping::new();
        sec.insert(s("bootstraptoken"), s(&self.secrets.bootstraptoken));
        if let Some(a) = &self.secrets.aescbcencryptionsecret {
            sec.insert(s("aescbcencryptionsecret"), s(a));
        }
        if let Some(a) = &self.secrets.secretboxencryptionsecret {
            sec.insert(s("secretboxencryptionsecret"), s(a));
        }
        root.insert(s("secrets"), Value::Mapping(sec));
        let mut td = Mapping::new();
        td.insert(s("token"), s(&self.trustdinfo.token));
        root.insert(s("trustdinfo"), Value::Mapping(td));
        let mut certs = Mapping::new();
        let p = |pair: &EncodedPair| {
            let mut m = Mapping::new();
            m.insert(s("crt"), s(&pair.crt));
            m.insert(s("key"), s(&pair.key));
            Value::Mapping(m)
        };
        certs.insert(s("etcd"), p(&self.certs.etcd));
        certs.insert(s("k8s"), p(&self.certs.k8s));
        certs.insert(s("k8saggregator"), p(&self.certs.k8saggregator));
        let mut sa = Mapping::new();
        sa.insert(s("key"), s(&self.certs.k8sserviceaccount.key));
        certs.insert(s("k8sserviceaccount"), Value::Mapping(sa));
        certs.insert(s("os"), p(&self.certs.os));
        root.insert(s("certs"), Value::Mapping(certs));
        yaml::emit(&Value::Mapping(root), 4)
    }

    /// The OS (Talos API) CA, for issuing talosconfig client certificates.
    pub fn os_ca(&self) -> Result<CertificateAuthority, ConfigError> {
        let crt = decode_pem(&self.certs.os.crt)
            .ok_or_else(|| ConfigError::Crypto("certs.os.crt is not base64".into()))?;
        let key = decode_pem(&self.certs.os.key)
            .ok_or_else(|| ConfigError::Crypto("certs.os.key is not base64".into()))?;
        Ok(CertificateAuthority::from_pem(
            crt.as_bytes(),
            key.as_bytes(),
            "certs.os",
        )?)
    }
}

/// kubeadm's bootstrap token shape, which Talos uses for both tokens.
fn is_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

/// Decoded length of a base64 value (URL alphabet for cluster.id, as Talos writes it).
fn decoded_len(v: &str, url: bool) -> Option<usize> {
    let r = if url {
        URL_SAFE
            .decode(v.trim())
            .or_else(|_| STANDARD.decode(v.trim()))
    } else {
        STANDARD.decode(v.trim())
    };
    r.ok().map(|b| b.len())
}

fn decode_pem(b: &str) -> Option<String> {
    let raw = STANDARD.decode(b.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.contains("-----BEGIN ").then_some(text)
}

/// The service-account key is RSA (PKCS#1 or PKCS#8) for current contracts, or
/// ECDSA for contracts ≤ 1.6; both are accepted, as Talos does.
fn check_service_account_key(pem_text: &str) -> Result<(), String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    if pem_text.contains("RSA PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs1_pem(pem_text).map_err(|e| format!("RSA key: {e}"))?;
        return Ok(());
    }
    if pem_text.contains("BEGIN PRIVATE KEY")
        && rsa::RsaPrivateKey::from_pkcs8_pem(pem_text).is_ok()
    {
        return Ok(());
    }
    PrivateKey::from_pem(pem_text.as_bytes(), "certs.k8sserviceaccount.key")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_talos_shape() {
        let re = regex::Regex::new("^[0-9a-z]{6}\\.[0-9a-z]{16}$").unwrap();
        for _ in 0..20 {
            assert!(re.is_match(&random_token()));
        }
    }

    #[test]
    fn encrypted_bundles_are_refused_with_a_hint() {
        let e = SecretsBundle::from_yaml(
            "cluster:\n  id: ENC[AES256_GCM,data:x]\nsops:\n  mac: x\n",
            Path::new("talsecret.sops.yaml"),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("SOPS"));
    }
}
