//! The part of helmfile's `helmfile.yaml` the bootstrap uses: repositories,
//! releases (name, namespace, chart, version, values, needs) and helmDefaults.
//! Documents separated by `---` are merged; `{{ .Release.Name }}` and
//! `{{ .Release.Namespace }}` in values paths are substituted, other templates
//! are refused with the file named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ChartsError;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Repository {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub oci: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmDefaults {
    #[serde(default)]
    pub wait: bool,
    #[serde(default)]
    pub wait_for_jobs: bool,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub atomic: bool,
    #[serde(default)]
    pub cleanup_on_fail: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub chart: String,
    #[serde(default)]
    pub version: Option<String>,
    /// Values files (relative to the helmfile) or inline maps.
    #[serde(default)]
    pub values: Vec<serde_yaml_ng::Value>,
    /// `name` or `namespace/name` of releases that must be healthy first.
    #[serde(default)]
    pub needs: Vec<String>,
}

impl Release {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    repositories: Vec<Repository>,
    #[serde(default)]
    releases: Vec<Release>,
    #[serde(default)]
    helm_defaults: Option<HelmDefaults>,
}

/// A parsed helmfile.
#[derive(Debug, Clone)]
pub struct Helmfile {
    pub path: PathBuf,
    pub repositories: Vec<Repository>,
    pub releases: Vec<Release>,
    pub helm_defaults: HelmDefaults,
}

/// How `helm template` gets a release's chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartRef {
    /// A local chart directory.
    Local(PathBuf),
    /// `--repo <url> <chart>`.
    Repo { url: String, chart: String },
    /// `oci://…`.
    Oci(String),
}

impl Helmfile {
    pub fn load(path: &Path) -> Result<Helmfile, ChartsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ChartsError::Helmfile {
            file: path.display().to_string(),
            detail: format!("cannot read: {e}"),
        })?;
        Helmfile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Helmfile, ChartsError> {
        let err = |detail: String| ChartsError::Helmfile {
            file: path.display().to_string(),
            detail,
        };
        let mut hf = Helmfile {
            path: path.to_path_buf(),
            repositories: vec![],
            releases: vec![],
            helm_defaults: HelmDefaults::default(),
        };
        for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v: serde_yaml_ng::Value =
                Deserialize::deserialize(d).map_err(|e| err(format!("document {}: {e}", i + 1)))?;
            if v.is_null() {
                continue;
            }
            let doc: Doc = serde_yaml_ng::from_value(v)
                .map_err(|e| err(format!("document {}: {e}", i + 1)))?;
            hf.repositories.extend(doc.repositories);
            hf.releases.extend(doc.releases);
            if let Some(h) = doc.helm_defaults {
                hf.helm_defaults = h;
            }
        }
        let mut seen = BTreeMap::new();
        for r in &hf.releases {
            if seen.insert(r.id(), ()).is_some() {
                return Err(err(format!("release {} is defined twice", r.id())));
            }
        }
        hf.ordered()?;
        Ok(hf)
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// A release by `namespace/name`, or by name (same namespace first).
    fn find(&self, need: &str, from: &Release) -> Option<usize> {
        if need.contains('/') {
            return self.releases.iter().position(|r| r.id() == need);
        }
        self.releases
            .iter()
            .position(|r| r.name == need && r.namespace == from.namespace)
            .or_else(|| self.releases.iter().position(|r| r.name == need))
    }

    /// Releases in `needs` order (a stable topological sort: file order among
    /// releases whose needs are met). Unknown needs and cycles are errors.
    pub fn ordered(&self) -> Result<Vec<&Release>, ChartsError> {
        let n = self.releases.len();
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(n);
        for r in &self.releases {
            let mut d = Vec::new();
            for need in &r.needs {
                let j = self.find(need, r).ok_or_else(|| ChartsError::Release {
                    release: r.id(),
                    detail: format!("needs {need}, which no release defines"),
                })?;
                d.push(j);
            }
            deps.push(d);
        }
        let mut done = vec![false; n];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let next = (0..n).find(|&i| !done[i] && deps[i].iter().all(|&j| done[j]));
            match next {
                Some(i) => {
                    done[i] = true;
                    out.push(&self.releases[i]);
                }
                None => {
                    let stuck: Vec<String> = (0..n)
                        .filter(|&i| !done[i])
                        .map(|i| self.releases[i].id())
                        .collect();
                    return Err(ChartsError::Helmfile {
                        file: self.path.display().to_string(),
                        detail: format!("needs form a cycle among {}", stuck.join(", ")),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Where `helm template` finds the chart of `r`.
    pub fn chart_ref(&self, r: &Release) -> ChartRef {
        if r.chart.starts_with("oci://") {
            return ChartRef::Oci(r.chart.clone());
        }
        if let Some((repo, chart)) = r.chart.split_once('/') {
            if let Some(rp) = self.repositories.iter().find(|x| x.name == repo) {
                if rp.oci || rp.url.starts_with("oci://") {
                    let base = rp.url.trim_start_matches("oci://").trim_end_matches('/');
                    return ChartRef::Oci(format!("oci://{base}/{chart}"));
                }
                return ChartRef::Repo {
                    url: rp.url.clone(),
                    chart: chart.to_string(),
                };
            }
        }
        ChartRef::Local(self.dir().join(&r.chart))
    }

    /// Values files of `r` (paths resolved against the helmfile's directory);
    /// inline maps are written to `scratch`.
    pub fn values_files(&self, r: &Release, scratch: &Path) -> Result<Vec<PathBuf>, ChartsError> {
        let mut out = Vec::new();
        for (i, v) in r.values.iter().enumerate() {
            match v {
                serde_yaml_ng::Value::String(s) => {
                    let s = s
                        .replace("{{ .Release.Name }}", &r.name)
                        .replace("{{.Release.Name}}", &r.name)
                        .replace("{{ .Release.Namespace }}", &r.namespace)
                        .replace("{{.Release.Namespace}}", &r.namespace);
                    if s.contains("{{") {
                        return Err(ChartsError::Release {
                            release: r.id(),
                            detail: format!("values entry {s:?} uses a helmfile template this tool does not evaluate"),
                        });
                    }
                    let p = self.dir().join(&s);
                    if !p.is_file() {
                        return Err(ChartsError::Release {
                            release: r.id(),
                            detail: format!("values file {} does not exist", p.display()),
                        });
                    }
                    out.push(p);
                }
                serde_yaml_ng::Value::Mapping(_) => {
                    let p = scratch.join(format!("{}-{}-values-{i}.yaml", r.namespace, r.name));
                    let text = serde_yaml_ng::to_string(v).map_err(|e| ChartsError::Release {
                        release: r.id(),
                        detail: e.to_string(),
                    })?;
                    std::fs::write(&p, text).map_err(|e| ChartsError::Release {
                        release: r.id(),
                        detail: format!("cannot write {}: {e}", p.display()),
                    })?;
                    out.push(p);
                }
                other => {
                    return Err(ChartsError::Release {
                        release: r.id(),
                        detail: format!("values entry {i} is neither a path nor a map: {other:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The merged values of `r` (later files win, maps merge deeply), for lints.
    pub fn merged_values(
        &self,
        r: &Release,
        scratch: &Path,
    ) -> Result<serde_json::Value, ChartsError> {
        let mut acc = serde_json::Value::Object(Default::default());
        for p in self.values_files(r, scratch)? {
            let text = std::fs::read_to_string(&p).map_err(|e| ChartsError::Release {
                release: r.id(),
                detail: format!("cannot read {}: {e}", p.display()),
            })?;
            let v: serde_json::Value =
                serde_yaml_ng::from_str(&text).map_err(|e| ChartsError::Release {
                    release: r.id(),
                    detail: format!("{}: {e}", p.display()),
                })?;
            merge(&mut acc, v);
        }
        Ok(acc)
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF: &str = r#"
helmDefaults: {wait: true, waitForJobs: true, timeout: 600, atomic: true, cleanupOnFail: true}
repositories:
  - {name: cilium, url: https://helm.cilium.io}
releases:
  - name: coredns
    namespace: kube-system
    chart: oci://ghcr.io/coredns/charts/coredns
    version: 1.47.0
    needs: [kube-system/cilium]
  - name: cilium
    namespace: kube-system
    chart: cilium/cilium
    version: 1.19.5
  - name: cert-manager
    namespace: cert-manager
    chart: ./charts/cert-manager
    needs: [coredns]
"#;

    #[test]
    fn releases_come_in_needs_order_with_chart_refs() {
        let hf = Helmfile::parse(HF, Path::new("/r/bootstrap/helmfile.yaml")).expect("parses");
        let names: Vec<&str> = hf
            .ordered()
            .expect("acyclic")
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["cilium", "coredns", "cert-manager"]);
        assert!(hf.helm_defaults.wait_for_jobs);
        assert_eq!(
            hf.chart_ref(&hf.releases[1]),
            ChartRef::Repo {
                url: "https://helm.cilium.io".into(),
                chart: "cilium".into()
            }
        );
        assert_eq!(
            hf.chart_ref(&hf.releases[0]),
            ChartRef::Oci("oci://ghcr.io/coredns/charts/coredns".into())
        );
        assert_eq!(
            hf.chart_ref(&hf.releases[2]),
            ChartRef::Local("/r/bootstrap/./charts/cert-manager".into())
        );
        let cyc = HF.replace(
            "chart: cilium/cilium",
            "chart: cilium/cilium\n    needs: [cert-manager]",
        );
        assert!(
            matches!(Helmfile::parse(&cyc, Path::new("h.yaml")), Err(ChartsError::Helmfile { detail, .. }) if detail.contains("cycle"))
        );
        let unknown = HF.replace("needs: [coredns]", "needs: [nope]");
        assert!(matches!(
            Helmfile::parse(&unknown, Path::new("h.yaml")),
            Err(ChartsError::Release { .. })
        ));
    }
}
