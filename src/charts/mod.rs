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
#[derive(Debug, Clone, Error)]
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
}

impl Doctor for ChartsError {
    fn likely_cause(&self) -> String {
        match self {
            ChartsError::HelmMissing { .. } | ChartsError::HelmTooOld { .. } => {
                "the bootstrap charts are rendered with the operator's helm".into()
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
            ChartsError::Source { .. } => {
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
        let err = |detail: String| ChartsError::Source {
            source_name: self.name(),
            detail,
        };
        match self {
            ManifestSource::File(p) => {
                std::fs::read_to_string(p).map_err(|e| err(format!("cannot read: {e}")))
            }
            ManifestSource::Url(u) => fetch_url(u).await.map_err(err),
        }
    }
}

/// HTTP(S) GET with rustls (ring) and the webpki roots.
async fn fetch_url(url: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header("host", &host)
        .header("user-agent", "endsys-bootstrap")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(hyper_util::rt::TokioIo::new(tls), req).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    if resp.status().is_redirection() {
        let to = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("redirect without location")?
            .to_string();
        return Box::pin(fetch_url(&to)).await;
    }
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
}

async fn send<IO>(
    io: IO,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
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
}
