//! The lab chart set: a small gitops tree with endsys's shape (helmfile with
//! cilium → coredns → spegel → cert-manager, one folder per namespace under
//! kubernetes/apps, SOPS secrets) and local charts the simulated API can roll
//! out. `demo` writes it out and runs the same path as a real repository.
//! `prerendered/` is the real helm 4.1.4 output of each release
//! (`helm template <name> ./charts/<name> --namespace <ns> --include-crds
//! --kube-version v1.35.0 --values <values>`), used when helm is absent.
//!
//! The SOPS files are encrypted for `tests/fixtures/sops/key.txt`, a throw-away
//! test key ([`AGE_KEY`]); they protect nothing.

use std::path::Path;

/// The throw-away age identity the lab's SOPS files are encrypted for.
pub const AGE_KEY: &str = include_str!("../../tests/fixtures/sops/key.txt");

/// Every file of the lab repository: (path, contents).
pub const FILES: &[(&str, &str)] = &[
    (
        "bootstrap/charts/cert-manager/Chart.yaml",
        include_str!("lab/repo/bootstrap/charts/cert-manager/Chart.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/crds/certificates.yaml",
        include_str!("lab/repo/bootstrap/charts/cert-manager/crds/certificates.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/templates/cert-manager.yaml",
        include_str!("lab/repo/bootstrap/charts/cert-manager/templates/cert-manager.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/values.yaml",
        include_str!("lab/repo/bootstrap/charts/cert-manager/values.yaml"),
    ),
    (
        "bootstrap/charts/cilium/Chart.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/Chart.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/configmap.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/templates/configmap.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/daemonset.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/templates/daemonset.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/operator.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/templates/operator.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/serviceaccount.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/templates/serviceaccount.yaml"),
    ),
    (
        "bootstrap/charts/cilium/values.yaml",
        include_str!("lab/repo/bootstrap/charts/cilium/values.yaml"),
    ),
    (
        "bootstrap/charts/coredns/Chart.yaml",
        include_str!("lab/repo/bootstrap/charts/coredns/Chart.yaml"),
    ),
    (
        "bootstrap/charts/coredns/templates/coredns.yaml",
        include_str!("lab/repo/bootstrap/charts/coredns/templates/coredns.yaml"),
    ),
    (
        "bootstrap/charts/coredns/values.yaml",
        include_str!("lab/repo/bootstrap/charts/coredns/values.yaml"),
    ),
    (
        "bootstrap/charts/spegel/Chart.yaml",
        include_str!("lab/repo/bootstrap/charts/spegel/Chart.yaml"),
    ),
    (
        "bootstrap/charts/spegel/templates/spegel.yaml",
        include_str!("lab/repo/bootstrap/charts/spegel/templates/spegel.yaml"),
    ),
    (
        "bootstrap/charts/spegel/values.yaml",
        include_str!("lab/repo/bootstrap/charts/spegel/values.yaml"),
    ),
    (
        "bootstrap/crds/dnsendpoints.yaml",
        include_str!("lab/repo/bootstrap/crds/dnsendpoints.yaml"),
    ),
    (
        "bootstrap/helmfile.yaml",
        include_str!("lab/repo/bootstrap/helmfile.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/cert-manager/app/helm/values.yaml",
        include_str!("lab/repo/kubernetes/apps/cert-manager/cert-manager/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-operator/app/helm/values.yaml",
        include_str!("lab/repo/kubernetes/apps/flux-system/flux-operator/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/cilium/app/helm/values.yaml",
        include_str!("lab/repo/kubernetes/apps/kube-system/cilium/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/coredns/app/helm/values.yaml",
        include_str!("lab/repo/kubernetes/apps/kube-system/coredns/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/spegel/app/helm/values.yaml",
        include_str!("lab/repo/kubernetes/apps/kube-system/spegel/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/network/echo/app/kustomization.yaml",
        include_str!("lab/repo/kubernetes/apps/network/echo/app/kustomization.yaml"),
    ),
    (
        "kubernetes/components/common/sops/cluster-secrets.sops.yaml",
        include_str!("lab/repo/kubernetes/components/common/sops/cluster-secrets.sops.yaml"),
    ),
    (
        "kubernetes/components/common/sops/sops-age.sops.yaml",
        include_str!("lab/repo/kubernetes/components/common/sops/sops-age.sops.yaml"),
    ),
];

/// The SOPS files the bootstrap decrypts into flux-system (the first is absent
/// on purpose, as github-deploy-key is in the endsys snapshot).
pub const SECRETS: &[&str] = &[
    "bootstrap/github-deploy-key.sops.yaml",
    "kubernetes/components/common/sops/cluster-secrets.sops.yaml",
    "kubernetes/components/common/sops/sops-age.sops.yaml",
];

/// CRD sources (relative to the repository).
pub const CRDS: &[&str] = &["bootstrap/crds/dnsendpoints.yaml"];

/// The Kubernetes half for the lab repository written at `repo`.
pub fn kube_half(
    repo: std::path::PathBuf,
    helm: Option<crate::charts::helm::Helm>,
) -> Result<crate::orchestrator::layer1::KubeHalf, crate::sops::SopsError> {
    use crate::orchestrator::layer1::{KubeHalf, Renderer};
    let mut half = KubeHalf::endsys(repo);
    half.secrets = SECRETS.iter().map(Into::into).collect();
    half.crds = CRDS
        .iter()
        .map(|c| crate::charts::ManifestSource::File(c.into()))
        .collect();
    half.renderer = match helm {
        Some(h) => Renderer::Helm(Some(h.path)),
        None => Renderer::Prerendered(prerendered),
    };
    half.identities = Some(std::sync::Arc::new(crate::sops::AgeIdentities::parse(
        AGE_KEY,
        "the lab's throw-away test key",
    )?));
    half.nodes_deadline = std::time::Duration::from_secs(120);
    half.chart_deadline = std::time::Duration::from_secs(120);
    Ok(half)
}

/// Pre-rendered manifests by release name.
pub fn prerendered(release: &str) -> Option<&'static str> {
    match release {
        "cilium" => Some(include_str!("lab/prerendered/cilium.yaml")),
        "coredns" => Some(include_str!("lab/prerendered/coredns.yaml")),
        "spegel" => Some(include_str!("lab/prerendered/spegel.yaml")),
        "cert-manager" => Some(include_str!("lab/prerendered/cert-manager.yaml")),
        _ => None,
    }
}

/// Writes the lab repository under `dir`.
pub fn write_repo(dir: &Path) -> std::io::Result<()> {
    for (p, text) in FILES {
        let path = dir.join(p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
