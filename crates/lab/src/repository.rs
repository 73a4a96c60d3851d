//! The lab repository: a small gitops tree with endsys's shape. The helmfile
//! installs cilium → coredns → spegel → cert-manager (layer 1) and
//! flux-operator → flux-instance (layer 2) from small local charts the
//! simulated API can roll out; the Flux tree (`kubernetes/flux/cluster` →
//! cluster-meta → cluster-apps → one `ks.yaml` per app) has 17 Kustomizations
//! in all five layers, with HelmReleases for the six bootstrap charts under the
//! helmfile's release names and namespaces (so Flux adopts them) and endsys-like
//! `dependsOn` chains. `demo` writes it out and runs the same path as a real
//! repository.
//!
//! `prerendered/` is the real helm 4.1.4 output of each release
//! (`helm template <name> ./charts/<name> --namespace <ns> --include-crds
//! --kube-version v1.35.0 --values <values>`, run in `bootstrap/`), used when
//! helm is absent; `tests/charts_helm.rs` fails when it is stale.
//!
//! The SOPS files are encrypted for `tests/fixtures/sops/key.txt`, a throw-away
//! test key ([`AGE_KEY`]); they protect nothing.

use std::path::Path;

/// The throw-away age identity the lab's SOPS files are encrypted for.
pub const AGE_KEY: &str = include_str!("../../../tests/fixtures/sops/key.txt");

/// The Git URL the lab's FluxInstance syncs (flux-instance values); the lab
/// serves the written repository under it.
pub const GIT_URL: &str = "https://github.com/endsys-lab/home-ops.git";

/// Every file of the lab repository: (path, contents).
pub const FILES: &[(&str, &str)] = &[
    (".sops.yaml", include_str!("repository/repo/.sops.yaml")),
    (
        "bootstrap/charts/cert-manager/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/cert-manager/Chart.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/crds/certificates.yaml",
        include_str!("repository/repo/bootstrap/charts/cert-manager/crds/certificates.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/templates/cert-manager.yaml",
        include_str!("repository/repo/bootstrap/charts/cert-manager/templates/cert-manager.yaml"),
    ),
    (
        "bootstrap/charts/cert-manager/values.yaml",
        include_str!("repository/repo/bootstrap/charts/cert-manager/values.yaml"),
    ),
    (
        "bootstrap/charts/cilium/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/Chart.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/configmap.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/templates/configmap.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/daemonset.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/templates/daemonset.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/operator.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/templates/operator.yaml"),
    ),
    (
        "bootstrap/charts/cilium/templates/serviceaccount.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/templates/serviceaccount.yaml"),
    ),
    (
        "bootstrap/charts/cilium/values.yaml",
        include_str!("repository/repo/bootstrap/charts/cilium/values.yaml"),
    ),
    (
        "bootstrap/charts/coredns/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/coredns/Chart.yaml"),
    ),
    (
        "bootstrap/charts/coredns/templates/coredns.yaml",
        include_str!("repository/repo/bootstrap/charts/coredns/templates/coredns.yaml"),
    ),
    (
        "bootstrap/charts/coredns/values.yaml",
        include_str!("repository/repo/bootstrap/charts/coredns/values.yaml"),
    ),
    (
        "bootstrap/charts/flux-instance/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-instance/Chart.yaml"),
    ),
    (
        "bootstrap/charts/flux-instance/templates/instance.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-instance/templates/instance.yaml"),
    ),
    (
        "bootstrap/charts/flux-instance/values.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-instance/values.yaml"),
    ),
    (
        "bootstrap/charts/flux-operator/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-operator/Chart.yaml"),
    ),
    (
        "bootstrap/charts/flux-operator/crds/fluxinstances.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-operator/crds/fluxinstances.yaml"),
    ),
    (
        "bootstrap/charts/flux-operator/templates/flux-operator.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-operator/templates/flux-operator.yaml"),
    ),
    (
        "bootstrap/charts/flux-operator/values.yaml",
        include_str!("repository/repo/bootstrap/charts/flux-operator/values.yaml"),
    ),
    (
        "bootstrap/charts/spegel/Chart.yaml",
        include_str!("repository/repo/bootstrap/charts/spegel/Chart.yaml"),
    ),
    (
        "bootstrap/charts/spegel/templates/spegel.yaml",
        include_str!("repository/repo/bootstrap/charts/spegel/templates/spegel.yaml"),
    ),
    (
        "bootstrap/charts/spegel/values.yaml",
        include_str!("repository/repo/bootstrap/charts/spegel/values.yaml"),
    ),
    (
        "bootstrap/crds/dnsendpoints.yaml",
        include_str!("repository/repo/bootstrap/crds/dnsendpoints.yaml"),
    ),
    (
        "bootstrap/helmfile.yaml",
        include_str!("repository/repo/bootstrap/helmfile.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/cert-manager/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/cert-manager/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/cert-manager/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/cert-manager/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/cert-manager/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/cert-manager/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/cert-manager/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/cert-manager/ks.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/cert-manager/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/cert-manager/namespace.yaml"),
    ),
    (
        "kubernetes/apps/database/cnpg-operator/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/database/cnpg-operator/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/database/cnpg-operator/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/database/cnpg-operator/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/database/cnpg-operator/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/database/cnpg-operator/ks.yaml"),
    ),
    (
        "kubernetes/apps/database/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/database/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/database/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/database/namespace.yaml"),
    ),
    (
        "kubernetes/apps/default/immich/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/default/immich/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/default/immich/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/default/immich/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/default/immich/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/default/immich/ks.yaml"),
    ),
    (
        "kubernetes/apps/default/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/default/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/default/n8n/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/default/n8n/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/default/n8n/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/default/n8n/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/default/n8n/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/default/n8n/ks.yaml"),
    ),
    (
        "kubernetes/apps/default/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/default/namespace.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-instance/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-instance/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-instance/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-instance/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-instance/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-instance/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-instance/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-instance/ks.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-operator/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-operator/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-operator/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-operator/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-operator/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-operator/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/flux-operator/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/flux-operator/ks.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/flux-system/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/flux-system/namespace.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/cilium/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/cilium/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/cilium/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/cilium/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/cilium/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/cilium/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/cilium/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/cilium/ks.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/coredns/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/coredns/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/coredns/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/coredns/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/coredns/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/coredns/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/coredns/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/coredns/ks.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/namespace.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/spegel/app/helm/values.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/spegel/app/helm/values.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/spegel/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/spegel/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/spegel/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/spegel/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/kube-system/spegel/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/kube-system/spegel/ks.yaml"),
    ),
    (
        "kubernetes/apps/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/network/echo/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/network/echo/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/network/echo/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/network/echo/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/network/echo/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/network/echo/ks.yaml"),
    ),
    (
        "kubernetes/apps/network/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/network/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/network/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/network/namespace.yaml"),
    ),
    (
        "kubernetes/apps/security/external-secrets-stores/app/helmrelease.yaml",
        include_str!(
            "repository/repo/kubernetes/apps/security/external-secrets-stores/app/helmrelease.yaml"
        ),
    ),
    (
        "kubernetes/apps/security/external-secrets-stores/app/kustomization.yaml",
        include_str!(
            "repository/repo/kubernetes/apps/security/external-secrets-stores/app/kustomization.yaml"
        ),
    ),
    (
        "kubernetes/apps/security/external-secrets-stores/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/security/external-secrets-stores/ks.yaml"),
    ),
    (
        "kubernetes/apps/security/external-secrets/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/security/external-secrets/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/security/external-secrets/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/security/external-secrets/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/security/external-secrets/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/security/external-secrets/ks.yaml"),
    ),
    (
        "kubernetes/apps/security/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/security/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/security/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/security/namespace.yaml"),
    ),
    (
        "kubernetes/apps/security/pocket-id/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/security/pocket-id/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/security/pocket-id/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/security/pocket-id/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/security/pocket-id/app/secret.sops.yaml",
        include_str!("repository/repo/kubernetes/apps/security/pocket-id/app/secret.sops.yaml"),
    ),
    (
        "kubernetes/apps/security/pocket-id/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/security/pocket-id/ks.yaml"),
    ),
    (
        "kubernetes/apps/storage/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/storage/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/storage/longhorn/app/helmrelease.yaml",
        include_str!("repository/repo/kubernetes/apps/storage/longhorn/app/helmrelease.yaml"),
    ),
    (
        "kubernetes/apps/storage/longhorn/app/kustomization.yaml",
        include_str!("repository/repo/kubernetes/apps/storage/longhorn/app/kustomization.yaml"),
    ),
    (
        "kubernetes/apps/storage/longhorn/ks.yaml",
        include_str!("repository/repo/kubernetes/apps/storage/longhorn/ks.yaml"),
    ),
    (
        "kubernetes/apps/storage/namespace.yaml",
        include_str!("repository/repo/kubernetes/apps/storage/namespace.yaml"),
    ),
    (
        "kubernetes/components/common/sops/cluster-secrets.sops.yaml",
        include_str!("repository/repo/kubernetes/components/common/sops/cluster-secrets.sops.yaml"),
    ),
    (
        "kubernetes/components/common/sops/sops-age.sops.yaml",
        include_str!("repository/repo/kubernetes/components/common/sops/sops-age.sops.yaml"),
    ),
    (
        "kubernetes/flux/cluster/ks.yaml",
        include_str!("repository/repo/kubernetes/flux/cluster/ks.yaml"),
    ),
    (
        "kubernetes/flux/meta/kustomization.yaml",
        include_str!("repository/repo/kubernetes/flux/meta/kustomization.yaml"),
    ),
    (
        "kubernetes/flux/meta/repositories.yaml",
        include_str!("repository/repo/kubernetes/flux/meta/repositories.yaml"),
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

/// Pre-rendered manifests by release name.
pub fn prerendered(release: &str) -> Option<&'static str> {
    match release {
        "cilium" => Some(include_str!("repository/prerendered/cilium.yaml")),
        "coredns" => Some(include_str!("repository/prerendered/coredns.yaml")),
        "spegel" => Some(include_str!("repository/prerendered/spegel.yaml")),
        "cert-manager" => Some(include_str!("repository/prerendered/cert-manager.yaml")),
        "flux-operator" => Some(include_str!("repository/prerendered/flux-operator.yaml")),
        "flux-instance" => Some(include_str!("repository/prerendered/flux-instance.yaml")),
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
