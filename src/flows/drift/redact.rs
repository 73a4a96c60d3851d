//! Secrets out of everything `diff` prints. Each secret value becomes
//! `<redacted sha256:…>` (the first 12 hex digits of its SHA-256): equal secrets
//! stay equal and a rotated one shows as changed, without showing either.
//!
//! The list follows Talos's own redactor (`Container.RedactSecrets`: the
//! v1alpha1 provider's fields and every `SecretDocument` kind of 1.13, plus the
//! Kubernetes documents 1.14 adds), and adds two rules so a document kind this
//! table does not know yet still leaks nothing: a `key` beside a `crt` (a CA
//! or client identity), and field names that only ever hold secrets.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

/// Paths of secrets inside the v1alpha1 document (`*` = any key or index).
const V1ALPHA1: &[&str] = &[
    "machine.token",
    "machine.ca.key",
    "machine.registries.config.*.auth.password",
    "machine.registries.config.*.auth.auth",
    "machine.registries.config.*.auth.identityToken",
    "machine.registries.config.*.tls.clientIdentity.key",
    "machine.network.interfaces.*.wireguard.privateKey",
    "machine.network.interfaces.*.wireguard.peers.*.presharedKey",
    "machine.network.interfaces.*.vip.equinixMetal.apiToken",
    "machine.network.interfaces.*.vip.hcloud.apiToken",
    "machine.network.interfaces.*.vlans.*.vip.equinixMetal.apiToken",
    "machine.network.interfaces.*.vlans.*.vip.hcloud.apiToken",
    "machine.systemDiskEncryption.*.keys.*.static.passphrase",
    "cluster.id",
    "cluster.secret",
    "cluster.token",
    "cluster.aescbcEncryptionSecret",
    "cluster.secretboxEncryptionSecret",
    "cluster.serviceAccount.key",
    "cluster.ca.key",
    "cluster.aggregatorCA.key",
    "cluster.etcd.ca.key",
];

/// Field names that hold a secret wherever they appear (other documents).
const SECRET_NAMES: &[&str] = &[
    "password",
    "auth",
    "identityToken",
    "privateKey",
    "presharedKey",
    "apiToken",
    "passphrase",
    "keyData",
    "uniqueToken",
    "token",
    "secret",
    "aescbcEncryptionSecret",
    "secretboxEncryptionSecret",
    "encryptionConfig",
    "issuerKey",
];

/// The replacement text of one secret value.
pub fn marker(secret: &str) -> String {
    let h = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("<redacted sha256:{}>", &h[..12])
}

/// The secret values found in some documents, to redact their values and any
/// text (Talos's dry-run diff) that quotes them.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: BTreeSet<String>,
}

impl Redactor {
    /// Replaces every secret in `doc` (in place) and remembers its value.
    pub fn redact(&mut self, doc: &mut Value) {
        let v1alpha1 = doc.get("version").and_then(Value::as_str) == Some("v1alpha1")
            && doc.get("kind").is_none();
        if v1alpha1 {
            for path in V1ALPHA1 {
                let parts: Vec<&str> = path.split('.').collect();
                self.at_path(doc, &parts);
            }
        }
        self.by_shape(doc, !v1alpha1);
    }

    fn take(&mut self, v: &mut Value) {
        match v {
            Value::String(s) if !s.is_empty() && !s.starts_with("<redacted sha256:") => {
                self.secrets.insert(s.clone());
                *s = marker(s);
            }
            Value::String(_) | Value::Null => {}
            // A structured secret (an encryption config object): hash its text.
            other => {
                let text = serde_yaml_ng::to_string(other).unwrap_or_default();
                *other = Value::String(marker(&text));
            }
        }
    }

    fn at_path(&mut self, v: &mut Value, parts: &[&str]) {
        let Some((first, rest)) = parts.split_first() else {
            self.take(v);
            return;
        };
        match (first, v) {
            (&"*", Value::Mapping(m)) => m.values_mut().for_each(|c| self.at_path(c, rest)),
            (&"*", Value::Sequence(s)) => s.iter_mut().for_each(|c| self.at_path(c, rest)),
            (name, Value::Mapping(m)) => {
                if let Some(c) = m.get_mut(*name) {
                    self.at_path(c, rest);
                }
            }
            _ => {}
        }
    }

    /// `key` beside `crt` anywhere; secret field names in other documents; a
    /// `jointoken` in a SideroLink URL.
    fn by_shape(&mut self, v: &mut Value, names: bool) {
        match v {
            Value::Mapping(m) => {
                let has_crt = m.contains_key("crt");
                for (k, c) in m.iter_mut() {
                    let k = k.as_str().unwrap_or_default();
                    if (k == "key" && has_crt) || (names && SECRET_NAMES.contains(&k)) {
                        self.take(c);
                    } else if k == "apiUrl" {
                        self.url_token(c);
                    } else {
                        self.by_shape(c, names);
                    }
                }
            }
            Value::Sequence(s) => s.iter_mut().for_each(|c| self.by_shape(c, names)),
            _ => {}
        }
    }

    fn url_token(&mut self, v: &mut Value) {
        let Value::String(url) = v else { return };
        let Some(pos) = url.find("jointoken=") else {
            return;
        };
        let start = pos + "jointoken=".len();
        let end = url[start..].find('&').map_or(url.len(), |e| start + e);
        let token = url[start..end].to_string();
        if token.is_empty() {
            return;
        }
        self.secrets.insert(token.clone());
        url.replace_range(start..end, &marker(&token));
    }

    /// `text` with every secret seen so far replaced by its marker.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a secret containing another is replaced whole.
        let mut secrets: Vec<&String> = self.secrets.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            if s.len() >= 4 {
                out = out.replace(s.as_str(), &marker(s));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1alpha1_secrets_and_unknown_documents_are_redacted() {
        let mut doc: Value = serde_yaml_ng::from_str(
            "version: v1alpha1\nmachine:\n  token: abc.def\n  ca: {crt: CRT, key: OSKEY}\n  registries:\n    config:\n      r.io: {auth: {password: PW}}\ncluster:\n  secret: CS\n  token: tok.en\n  secretboxEncryptionSecret: SB\n  serviceAccount: {key: SA}\n  etcd: {ca: {crt: E, key: EKEY}}\n",
        )
        .unwrap();
        let mut other: Value = serde_yaml_ng::from_str(
            "apiVersion: v1alpha1\nkind: FutureSecretConfig\nname: x\nprivateKey: WGKEY\nissuer: {crt: C, key: IKEY}\n",
        )
        .unwrap();
        let mut r = Redactor::default();
        r.redact(&mut doc);
        r.redact(&mut other);
        let text = format!(
            "{}{}",
            serde_yaml_ng::to_string(&doc).unwrap(),
            serde_yaml_ng::to_string(&other).unwrap()
        );
        for secret in [
            "abc.def", "OSKEY", "PW", "CS", "tok.en", "SB", "SA", "EKEY", "WGKEY", "IKEY",
        ] {
            assert!(
                !text.contains(&format!(" {secret}\n")),
                "{secret} in {text}"
            );
        }
        assert!(text.contains("CRT"), "certificates stay");
        assert!(text.contains(&marker("OSKEY")));
        // Text quoting the secrets (Talos's dry-run diff) is redacted too.
        let dry = r.text("-    token: abc.def\n+    key: OSKEY\n");
        assert!(!dry.contains("abc.def") && !dry.contains("OSKEY"), "{dry}");
    }

    #[test]
    fn equal_secrets_give_equal_markers() {
        assert_eq!(marker("x"), marker("x"));
        assert_ne!(marker("x"), marker("y"));
        assert!(marker("x").starts_with("<redacted sha256:"));
    }
}
