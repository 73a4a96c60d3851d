//! talosconfig files, read and written the way talosctl does: a current `context`
//! and named `contexts`, each with endpoints, nodes and base64-encoded PEM
//! `ca`/`crt`/`key` (siderolabs/talos `pkg/machinery/client/config/config.go`). The
//! path comes from `--talosconfig`, then `TALOSCONFIG`, then `~/.talos/config`.
//!
//! This is the one talosconfig model of the workspace: the cluster config crate
//! builds it for `gen config`, the flows and the lab mint admin access with
//! [`Talosconfig::admin`] / [`client_certificate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::credentials::Credentials;
pub use super::credentials::{client_certificate, ADMIN_ROLE};
use super::error::TalosError;
use endsys_core::pki::{CertificateAuthority, PkiError, PrivateKey};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Talosconfig {
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Omni/cluster name; kept so files round-trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Which talosconfig file to use: the flag, then `$TALOSCONFIG`, then `~/.talos/config`.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("TALOSCONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".talos")
        .join("config")
}

fn err(path: &Path, detail: impl Into<String>) -> TalosError {
    TalosError::Talosconfig {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

impl Talosconfig {
    pub fn load(path: &Path) -> Result<Self, TalosError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, TalosError> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {}", l.line()))
                .unwrap_or_default();
            err(path, format!("not a talosconfig{at}: {e}"))
        })
    }

    /// Writes the file with mode 0600 (it holds an admin key), atomically.
    pub fn save(&self, path: &Path) -> Result<(), TalosError> {
        let text = serde_yaml_ng::to_string(self).map_err(|e| err(path, e.to_string()))?;
        write_private(path, text.as_bytes()).map_err(|e| err(path, format!("cannot write: {e}")))
    }

    /// The named context, or the current one.
    pub fn context(&self, name: Option<&str>, path: &Path) -> Result<&Context, TalosError> {
        let name = name.unwrap_or(&self.context);
        if name.is_empty() {
            return Err(err(path, "no current context set; pass --context"));
        }
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            err(
                path,
                format!("context `{name}` not found (known: {})", known.join(", ")),
            )
        })
    }

    /// A talosconfig whose one context, `cluster`, holds a fresh [`ADMIN_ROLE`]
    /// certificate from `os_ca` (see [`client_certificate`]), current.
    pub fn admin(
        cluster: &str,
        os_ca: &CertificateAuthority,
        endpoints: Vec<String>,
        nodes: Vec<String>,
    ) -> Result<Self, PkiError> {
        let mut tc = Talosconfig::default();
        tc.upsert(cluster, Context::admin(os_ca, endpoints, nodes)?);
        Ok(tc)
    }

    /// Adds or replaces a context and makes it current (`talosctl config merge`
    /// semantics without the renaming).
    pub fn upsert(&mut self, name: &str, ctx: Context) {
        self.contexts.insert(name.to_string(), ctx);
        self.context = name.to_string();
    }
}

impl Context {
    /// Builds a context from PEM material.
    pub fn from_pem(
        endpoints: Vec<String>,
        nodes: Vec<String>,
        ca_pem: &str,
        crt_pem: &str,
        key_pem: &str,
    ) -> Self {
        let b = base64::engine::general_purpose::STANDARD;
        Self {
            endpoints,
            nodes,
            ca: b.encode(ca_pem),
            crt: b.encode(crt_pem),
            key: b.encode(key_pem),
            cluster: None,
        }
    }

    /// A context with a fresh [`ADMIN_ROLE`] certificate from `os_ca`.
    pub fn admin(
        os_ca: &CertificateAuthority,
        endpoints: Vec<String>,
        nodes: Vec<String>,
    ) -> Result<Self, PkiError> {
        let leaf = client_certificate(os_ca, &[ADMIN_ROLE])?;
        Ok(Self::from_pem(
            endpoints,
            nodes,
            &os_ca.pair.cert_pem,
            &leaf.cert_pem,
            &leaf.key_pem()?,
        ))
    }

    /// Decodes the credentials (keys may carry Talos's `ED25519 PRIVATE KEY` label).
    pub fn credentials(&self, path: &Path) -> Result<Arc<Credentials>, TalosError> {
        let b = base64::engine::general_purpose::STANDARD;
        let decode = |field: &str, v: &str| -> Result<Vec<u8>, TalosError> {
            if v.is_empty() {
                return Err(err(path, format!("context has no `{field}`")));
            }
            b.decode(v.trim())
                .map_err(|e| err(path, format!("`{field}` is not valid base64: {e}")))
        };
        let ca_pem = decode("ca", &self.ca)?;
        let cert_pem = decode("crt", &self.crt)?;
        let key_pem = decode("key", &self.key)?;
        let key = PrivateKey::from_pem(&key_pem, &format!("{} key", path.display()))
            .map_err(|e| err(path, e.to_string()))?;
        Ok(Arc::new(Credentials {
            ca_pem,
            cert_pem,
            key,
        }))
    }
}

/// Writes a file readable only by its owner, via a temporary file and rename
/// ([`endsys_core::fs::write_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    endsys_core::fs::write_private(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "context: kubernetes\ncontexts:\n  kubernetes:\n    endpoints:\n      - 10.127.0.41\n      - 10.127.0.42\n    nodes:\n      - 10.127.0.41\n    ca: Y2E=\n    crt: Y3J0\n    key: a2V5\n";

    #[test]
    fn reads_talosctl_format_and_round_trips() {
        let p = Path::new("talosconfig");
        let tc = Talosconfig::parse(SAMPLE, p).unwrap();
        let ctx = tc.context(None, p).unwrap();
        assert_eq!(ctx.endpoints, vec!["10.127.0.41", "10.127.0.42"]);
        let back = Talosconfig::parse(&serde_yaml_ng::to_string(&tc).unwrap(), p).unwrap();
        assert_eq!(back, tc);
    }

    #[test]
    fn missing_context_lists_the_known_ones() {
        let p = Path::new("tc");
        let tc = Talosconfig::parse(SAMPLE, p).unwrap();
        let e = tc.context(Some("prod"), p).unwrap_err().to_string();
        assert!(e.contains("prod") && e.contains("kubernetes"), "{e}");
        let e = Talosconfig::parse("context: [", p).unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn credentials_reject_bad_base64_and_bad_keys() {
        let p = Path::new("tc");
        let tc = Talosconfig::parse(SAMPLE, p).unwrap();
        let e = tc
            .context(None, p)
            .unwrap()
            .credentials(p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key"), "{e}");
        let mut ctx = tc.context(None, p).unwrap().clone();
        ctx.ca = "!!!".into();
        assert!(ctx
            .credentials(p)
            .unwrap_err()
            .to_string()
            .contains("`ca` is not valid base64"));
    }

    #[test]
    fn save_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/talosconfig");
        let tc = Talosconfig::parse(SAMPLE, &path).unwrap();
        tc.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(Talosconfig::load(&path).unwrap(), tc);
    }
}
