//! The bootstrap charts: the helmfile model, rendering with the operator's
//! `helm template` (or pre-rendered manifests), Helm ownership metadata so Flux's
//! helm-controller can adopt the objects, `needs` order, plain manifest sources
//! for CRDs, and the Talos lint of Cilium's values.
//!
//! - [`helmfile`]: `bootstrap/helmfile.yaml` → [`helmfile::Helmfile`], releases in `needs` order.
//! - [`helm`]: the `helm` binary (version check, `template`).
//! - [`lint`]: Cilium values Talos needs.

pub mod helm;
pub mod helmfile;

pub mod lint;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use endsys_core::Doctor;
use kube::api::DynamicObject;
use thiserror::Error;

/// Label Helm checks before adopting an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation naming the release.
pub const RELEASE_NAME: &str = "meta.helm.sh/release-name";
/// Annotation naming the release's namespace.
pub const RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";

/// What went wrong with charts or their inputs.
#[derive(Debug, Error)]
pub enum ChartsError {
    #[error("helm not found ({searched}); nothing was changed")]
    HelmMissing { searched: String },
    #[error("{path}: helm {found} is too old; helm ≥ 3.13 is required (4.x recommended)")]
    HelmTooOld { path: String, found: String },
    #[error("{path} {args}: exit {code}: {stderr}")]
    HelmFailed {
        path: String,
        args: String,
        code: i32,
        stderr: String,
    },
    #[error("{file}: {detail}")]
    Helmfile { file: String, detail: String },
    #[error("release {release}: {detail}")]
    Release { release: String, detail: String },
    #[error("{source_name}: {detail}")]
    Source { source_name: String, detail: String },
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {detail}")]
    Download {
        url: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
}

impl Doctor for ChartsError {
    fn likely_cause(&self) -> String {
        match self {
            ChartsError::HelmMissing { .. } | ChartsError::HelmTooOld { .. } => {
                "the bootstrap charts are rendered with the operator's helm".into()
            }
            ChartsError::Read { .. } => "the manifest file is not where the path says, or not readable".into(),
            ChartsError::Download { source, .. } if source.is_connect() => {
                "the host is unreachable from here (no network, DNS, firewall, or a proxy is required)".into()
            }
            ChartsError::Download { source, .. } if source.is_timeout() => {
                "the server is too slow or the network drops the connection".into()
            }
            ChartsError::Download { source, .. } if source.status().is_some() => {
                "the server has no such file (a typo in the URL, or the release moved)".into()
            }
            ChartsError::Download { .. } => {
                "the download failed (TLS, redirects or a cut connection)".into()
            }
            _ => "a chart or its inputs could not be used".into(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            ChartsError::HelmMissing { .. } | ChartsError::HelmTooOld { .. } => {
                "install helm ≥ 3.13, 4.x recommended (scripts/fetch-tools.sh fetches one into .tools/bin), or pass --helm <path>, and re-run"
                    .into()
            }
            ChartsError::HelmFailed { .. } => {
                "run the same helm command by hand to see the chart's error".into()
            }
            ChartsError::Helmfile { .. } | ChartsError::Release { .. } => {
                "fix bootstrap/helmfile.yaml".into()
            }
            ChartsError::Source { .. } | ChartsError::Read { .. } | ChartsError::Download { .. } => {
                "check the manifest source (URL reachable, file present)".into()
            }
        }
    }
}

/// Adds Helm's ownership label and annotations for `release` in `namespace`.
pub fn add_ownership(objs: &mut [DynamicObject], release: &str, namespace: &str) {
    for o in objs {
        o.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(MANAGED_BY.into(), "Helm".into());
        let a = o.metadata.annotations.get_or_insert_with(Default::default);
        a.insert(RELEASE_NAME.into(), release.into());
        a.insert(RELEASE_NAMESPACE.into(), namespace.into());
    }
}

/// Whether an object carries the ownership metadata for `release`/`namespace`.
pub fn has_ownership(o: &DynamicObject, release: &str, namespace: &str) -> bool {
    let l = o.metadata.labels.as_ref();
    let a = o.metadata.annotations.as_ref();
    l.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some("Helm")
        && a.and_then(|a| a.get(RELEASE_NAME)).map(String::as_str) == Some(release)
        && a.and_then(|a| a.get(RELEASE_NAMESPACE)).map(String::as_str) == Some(namespace)
}

/// A plain manifest source (CRDs): a URL or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    Url(String),
    File(PathBuf),
}

impl ManifestSource {
    pub fn parse(s: &str) -> ManifestSource {
        if s.starts_with("https://") || s.starts_with("http://") {
            ManifestSource::Url(s.to_string())
        } else {
            ManifestSource::File(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            ManifestSource::Url(u) => u.clone(),
            ManifestSource::File(p) => p.display().to_string(),
        }
    }

    /// The manifest text.
    pub async fn fetch(&self) -> Result<String, ChartsError> {
        let text = match self {
            ManifestSource::File(p) => {
                return std::fs::read_to_string(p).map_err(|source| ChartsError::Read {
                    path: p.clone(),
                    source,
                })
            }
            ManifestSource::Url(u) => download(u).await?,
        };
        String::from_utf8(text).map_err(|e| ChartsError::Source {
            source_name: self.name(),
            detail: format!("not UTF-8: {e}"),
        })
    }
}

/// How long a download may take in all, and to connect.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP(S) GET with reqwest over rustls (ring) and the webpki roots; redirects
/// followed (reqwest's default, at most 10), no proxy, [`DOWNLOAD_TIMEOUT`].
async fn download(url: &str) -> Result<Vec<u8>, ChartsError> {
    let fail = |source: reqwest::Error| ChartsError::Download {
        url: url.to_string(),
        detail: download_detail(&source),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ChartsError::Source {
        source_name: url.to_string(),
        detail: format!("TLS set-up: {e}"),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent("endsys-bootstrap")
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT)
        .build()
        .map_err(fail)?;
    let resp = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?;
    Ok(resp.bytes().await.map_err(fail)?.to_vec())
}

/// The operator's view of a download failure: the HTTP status, or what the
/// deepest cause says (connection refused, certificate unknown, …).
fn download_detail(e: &reqwest::Error) -> String {
    if let Some(status) = e.status() {
        return format!("HTTP {status}");
    }
    if e.is_timeout() {
        return format!("no answer within {DOWNLOAD_TIMEOUT:?}");
    }
    if e.is_redirect() {
        return "too many redirects".into();
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_connect() { "connect" } else { "request" };
    format!("{what}: {root}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_added_to_every_object() {
        let mut objs = crate::kube::parse_manifests(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: y}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
            "t",
        )
        .expect("parses");
        add_ownership(&mut objs, "cilium", "kube-system");
        assert!(objs
            .iter()
            .all(|o| has_ownership(o, "cilium", "kube-system")));
        assert_eq!(objs[0].metadata.labels.as_ref().expect("labels")["x"], "y");
        assert!(matches!(
            ManifestSource::parse("https://x/y.yaml"),
            ManifestSource::Url(_)
        ));
    }

    /// A one-file HTTP/1.1 server on loopback: `/crds.yaml` is served, `/old`
    /// redirects to it, anything else is 404.
    async fn serve_loopback() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = match path.as_str() {
                    "/crds.yaml" => {
                        let body = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    "/old" => "HTTP/1.1 302 Found\r\nlocation: /crds.yaml\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                };
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn urls_are_downloaded_following_redirects() {
        let addr = serve_loopback().await;
        let text = ManifestSource::parse(&format!("http://{addr}/old"))
            .fetch()
            .await
            .expect("downloads");
        assert!(text.contains("kind: Namespace"), "{text}");
    }

    #[tokio::test]
    async fn download_failures_name_the_url_and_explain() {
        let addr = serve_loopback().await;
        let url = format!("http://{addr}/nope.yaml");
        let e = ManifestSource::parse(&url).fetch().await.unwrap_err();
        assert_eq!(e.to_string(), format!("{url}: HTTP 404 Not Found"));
        assert!(e.likely_cause().contains("no such file"), "{}", e.explain());

        // A port nothing listens on: refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let url = format!("http://{closed}/crds.yaml");
        let e = ManifestSource::parse(&url).fetch().await.unwrap_err();
        assert!(matches!(e, ChartsError::Download { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!("{url}: connect: ")),
            "{e}"
        );
        assert!(e.likely_cause().contains("unreachable"), "{}", e.explain());
        assert!(std::error::Error::source(&e).is_some());

        let e = ManifestSource::parse("/nonexistent/crds.yaml")
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/crds.yaml: cannot read: No such file or directory (os error 2)"
        );
    }
}
