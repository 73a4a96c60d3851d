//! What a cluster's Kubernetes API holds, in brief: its namespaces and Flux
//! Kustomizations, and the etcd revision they were read at. `etcd backup`
//! records it in the snapshot's sidecar; `recover` reads it again after the
//! restore and compares.

use kube::api::{Api, DynamicObject, ListParams};
use serde::{Deserialize, Serialize};

/// Namespaces and Flux Kustomizations at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeInventory {
    /// resourceVersion of the Namespace list (the etcd revision); a restore keeps
    /// etcd's revision, a new cluster starts near 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<i64>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `namespace/name` of every Flux Kustomization.
    #[serde(default)]
    pub kustomizations: Vec<String>,
}

impl KubeInventory {
    /// `N namespace(s), M Kustomization(s), resourceVersion R`.
    pub fn summary(&self) -> String {
        format!(
            "{} namespace(s), {} Kustomization(s){}",
            self.namespaces.len(),
            self.kustomizations.len(),
            self.resource_version
                .map(|rv| format!(", resourceVersion {rv}"))
                .unwrap_or_default()
        )
    }
}

/// Namespaces and Flux Kustomizations the API serves now (Kustomizations: none
/// when Flux's CRD is absent).
pub async fn kube_inventory(client: &kube::Client) -> Result<KubeInventory, kube::Error> {
    use k8s_openapi::api::core::v1::Namespace;
    let ns = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?;
    let resource_version = ns
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok());
    let mut namespaces: Vec<String> = ns
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    namespaces.sort();
    let ks_api: Api<DynamicObject> = Api::all_with(client.clone(), &super::flux::kustomizations());
    let mut kustomizations: Vec<String> = match ks_api.list_metadata(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|k| {
                format!(
                    "{}/{}",
                    k.metadata.namespace.as_deref().unwrap_or(""),
                    k.metadata.name.as_deref().unwrap_or("")
                )
            })
            .collect(),
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    kustomizations.sort();
    Ok(KubeInventory {
        resource_version,
        namespaces,
        kustomizations,
    })
}
