//! Loading classic X25519 age identities the way sops finds them.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use age::secrecy::ExposeSecret as _;

use super::SopsError;

/// Age identities plus a description of where they came from (for error messages).
/// Debug shows only the source and public keys, never the secret keys.
pub struct AgeIdentities {
    identities: Vec<age::x25519::Identity>,
    source: String,
}

impl std::fmt::Debug for AgeIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgeIdentities")
            .field("source", &self.source)
            .field("recipients", &self.recipient_strings())
            .finish()
    }
}

impl AgeIdentities {
    /// Parse key-file text: `AGE-SECRET-KEY-1…` lines; blank lines and `#` comments skipped.
    pub fn parse(text: &str, source_desc: &str) -> Result<Self, SopsError> {
        let mut identities = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("AGE-SECRET-KEY-PQ-1") {
                return Err(SopsError::PostQuantumKey {
                    source_desc: source_desc.to_string(),
                });
            }
            if upper.starts_with("AGE-PLUGIN-") {
                return Err(SopsError::PluginKey {
                    source_desc: source_desc.to_string(),
                });
            }
            let malformed = || SopsError::MalformedKey {
                source_desc: source_desc.to_string(),
                line: i + 1,
            };
            if !upper.starts_with("AGE-SECRET-KEY-1") {
                return Err(malformed());
            }
            identities.push(age::x25519::Identity::from_str(line).map_err(|_| malformed())?);
        }
        if identities.is_empty() {
            return Err(SopsError::NoIdentities {
                source_desc: source_desc.to_string(),
            });
        }
        Ok(AgeIdentities {
            identities,
            source: source_desc.to_string(),
        })
    }

    /// Read a key file such as `~/.config/sops/age/keys.txt`.
    pub fn from_file(path: &Path) -> Result<Self, SopsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SopsError::KeyFileMissing {
                    path: path.to_path_buf(),
                }
            } else {
                SopsError::KeyFileRead {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        Self::parse(&text, &format!("age key file {}", path.display()))
    }

    /// Resolve identities from, in order: `explicit` (`--age-key`), `SOPS_AGE_KEY_FILE`,
    /// `SOPS_AGE_KEY` (inline), then the default key file.
    pub fn load(explicit: Option<&Path>) -> Result<Self, SopsError> {
        Self::load_with_env(explicit, |k| std::env::var(k).ok())
    }

    /// As [`AgeIdentities::load`], with the environment supplied by the caller (for tests).
    pub fn load_with_env(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SopsError> {
        let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = nonempty("SOPS_AGE_KEY_FILE") {
            return Self::from_file(Path::new(&p));
        }
        if let Some(inline) = nonempty("SOPS_AGE_KEY") {
            return Self::parse(&inline, "SOPS_AGE_KEY");
        }
        match default_key_file(&env) {
            Some(p) => Self::from_file(&p),
            None => Err(SopsError::KeyFileMissing {
                path: PathBuf::from("~/.config/sops/age/keys.txt"),
            }),
        }
    }

    /// Build from identities already in memory (e.g. freshly generated in tests).
    pub fn from_identities(identities: Vec<age::x25519::Identity>, source_desc: &str) -> Self {
        AgeIdentities {
            identities,
            source: source_desc.to_string(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn recipients(&self) -> Vec<age::x25519::Recipient> {
        self.identities.iter().map(|i| i.to_public()).collect()
    }

    pub fn recipient_strings(&self) -> Vec<String> {
        self.recipients().iter().map(|r| r.to_string()).collect()
    }

    pub(crate) fn as_dyn(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.identities.iter().map(|i| i as &dyn age::Identity)
    }

    /// The secret key text, for writing a key file; callers must not log it.
    pub fn secret_lines(&self) -> Vec<String> {
        self.identities
            .iter()
            .map(|i| i.to_string().expose_secret().to_string())
            .collect()
    }
}

/// `$XDG_CONFIG_HOME/sops/age/keys.txt`, else `$HOME/.config/sops/age/keys.txt`.
pub fn default_key_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&x).join("sops/age/keys.txt"));
    }
    env("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| Path::new(&h).join(".config/sops/age/keys.txt"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn key_text() -> (String, String) {
        let id = age::x25519::Identity::generate();
        (
            id.to_string().expose_secret().to_string(),
            id.to_public().to_string(),
        )
    }

    #[test]
    fn parses_comments_and_keys() {
        let (sk, pk) = key_text();
        let ids = AgeIdentities::parse(
            &format!("# created: now\n# public key: {pk}\n\n{sk}\n"),
            "t",
        )
        .expect("parses");
        assert_eq!(ids.recipient_strings(), vec![pk]);
        let dbg = format!("{ids:?}");
        assert!(!dbg.contains("AGE-SECRET-KEY"), "{dbg}");
    }

    #[test]
    fn rejects_pq_plugin_garbage_and_empty() {
        assert!(matches!(
            AgeIdentities::parse("AGE-SECRET-KEY-PQ-1ABCDEF", "t"),
            Err(SopsError::PostQuantumKey { .. })
        ));
        assert!(matches!(
            AgeIdentities::parse("AGE-PLUGIN-YUBIKEY-1XYZ", "t"),
            Err(SopsError::PluginKey { .. })
        ));
        assert!(matches!(
            AgeIdentities::parse("# c\nnot a key", "t"),
            Err(SopsError::MalformedKey { line: 2, .. })
        ));
        assert!(matches!(
            AgeIdentities::parse("AGE-SECRET-KEY-1QQQ", "t"),
            Err(SopsError::MalformedKey { line: 1, .. })
        ));
        assert!(matches!(
            AgeIdentities::parse("# nothing\n", "t"),
            Err(SopsError::NoIdentities { .. })
        ));
    }

    #[test]
    fn resolution_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk1, pk1) = key_text();
        let (sk2, pk2) = key_text();
        let (sk3, pk3) = key_text();
        let f1 = dir.path().join("explicit.txt");
        let f2 = dir.path().join("envfile.txt");
        std::fs::write(&f1, &sk1).expect("write");
        std::fs::write(&f2, &sk2).expect("write");
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("sops/age")).expect("mkdir");
        std::fs::write(xdg.join("sops/age/keys.txt"), &sk3).expect("write");
        let f2s = f2.to_string_lossy().to_string();
        let xdgs = xdg.to_string_lossy().to_string();
        let all = env_of(&[
            ("SOPS_AGE_KEY_FILE", &f2s),
            ("SOPS_AGE_KEY", &sk3),
            ("XDG_CONFIG_HOME", &xdgs),
        ]);
        let got = AgeIdentities::load_with_env(Some(&f1), &all).expect("explicit");
        assert_eq!(got.recipient_strings(), vec![pk1]);
        let got = AgeIdentities::load_with_env(None, &all).expect("env file");
        assert_eq!(got.recipient_strings(), vec![pk2]);
        let inline = env_of(&[("SOPS_AGE_KEY", &sk1), ("XDG_CONFIG_HOME", &xdgs)]);
        assert_eq!(
            AgeIdentities::load_with_env(None, inline)
                .expect("inline")
                .source(),
            "SOPS_AGE_KEY"
        );
        let def = AgeIdentities::load_with_env(None, env_of(&[("XDG_CONFIG_HOME", &xdgs)]))
            .expect("default");
        assert_eq!(def.recipient_strings(), vec![pk3]);
        let missing = AgeIdentities::load_with_env(
            None,
            env_of(&[("HOME", &dir.path().join("nohome").to_string_lossy())]),
        );
        match missing {
            Err(SopsError::KeyFileMissing { path }) => {
                assert!(path.ends_with(".config/sops/age/keys.txt"))
            }
            other => panic!("expected KeyFileMissing, got {other:?}"),
        }
    }
}
