//! The operator's `helm` binary: found before any node is touched, version
//! checked, and used only for `helm template`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::helmfile::{ChartRef, Helmfile, Release};
use super::ChartsError;

/// A usable `helm`.
#[derive(Debug, Clone)]
pub struct Helm {
    pub path: PathBuf,
    /// `v4.1.4` and the like.
    pub version: String,
}

/// `v3.13.0+g…` → (3, 13).
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let v = s.trim().trim_start_matches('v');
    let mut it = v.split(['.', '+', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

impl Helm {
    /// `explicit`, else `helm` on PATH. Runs `helm version --short`; refuses < 3.13.
    pub async fn find(explicit: Option<&Path>) -> Result<Helm, ChartsError> {
        let path = match explicit {
            Some(p) => {
                if !p.is_file() {
                    return Err(ChartsError::HelmMissing {
                        searched: p.display().to_string(),
                    });
                }
                p.to_path_buf()
            }
            None => which("helm").ok_or_else(|| ChartsError::HelmMissing {
                searched: "helm on PATH".into(),
            })?,
        };
        let out = run(&path, &["version".into(), "--short".into()]).await?;
        let found = out.lines().next().unwrap_or("").trim().to_string();
        match parse_version(&found) {
            Some((major, minor)) if major > 3 || (major == 3 && minor >= 13) => Ok(Helm {
                path,
                version: found,
            }),
            _ => Err(ChartsError::HelmTooOld {
                path: path.display().to_string(),
                found,
            }),
        }
    }

    /// The argv of `helm template` for `r` (values files already resolved).
    pub fn template_args(
        hf: &Helmfile,
        r: &Release,
        values: &[PathBuf],
        kube_version: &str,
    ) -> Vec<String> {
        let mut a = vec!["template".to_string(), r.name.clone()];
        match hf.chart_ref(r) {
            ChartRef::Local(p) => a.push(p.display().to_string()),
            ChartRef::Oci(u) => a.push(u),
            ChartRef::Repo { url, chart } => {
                a.push(chart);
                a.push("--repo".into());
                a.push(url);
            }
        }
        a.extend(["--namespace".into(), r.namespace.clone()]);
        if let Some(v) = &r.version {
            a.extend(["--version".into(), v.clone()]);
        }
        a.push("--include-crds".into());
        a.extend(["--kube-version".into(), kube_version.to_string()]);
        for v in values {
            a.extend(["--values".into(), v.display().to_string()]);
        }
        a
    }

    /// Renders `r` with `helm template`.
    pub async fn template(
        &self,
        hf: &Helmfile,
        r: &Release,
        scratch: &Path,
        kube_version: &str,
    ) -> Result<String, ChartsError> {
        let values = hf.values_files(r, scratch)?;
        let args = Helm::template_args(hf, r, &values, kube_version);
        run(&self.path, &args).await
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn run(path: &Path, args: &[String]) -> Result<String, ChartsError> {
    let out = tokio::process::Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ChartsError::HelmMissing {
            searched: format!("{}: {e}", path.display()),
        })?;
    if !out.status.success() {
        return Err(ChartsError::HelmFailed {
            path: path.display().to_string(),
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| ChartsError::HelmFailed {
        path: path.display().to_string(),
        args: args.join(" "),
        code: 0,
        stderr: format!("output is not UTF-8: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("v4.1.4+g05fa379"), Some((4, 1)));
        assert_eq!(parse_version("v3.12.3"), Some((3, 12)));
        assert_eq!(parse_version("garbage"), None);
    }
}
