//! The Kubernetes half of `up` for the lab repository (endsys_lab::repository).

use endsys_lab::repository::{prerendered, AGE_KEY, CRDS, SECRETS};

/// The Kubernetes half for the lab repository written at `repo`.
pub fn kube_half(
    repo: std::path::PathBuf,
    helm: Option<crate::charts::helm::Helm>,
) -> Result<crate::flows::up::KubeHalf, crate::sops::SopsError> {
    use crate::flows::up::{KubeHalf, Renderer};
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
    half.flux_deadline = std::time::Duration::from_secs(120);
    half.gitops_deadline = std::time::Duration::from_secs(300);
    Ok(half)
}
