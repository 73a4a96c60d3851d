//! The Kubernetes side of layer 1, on kube-rs.
//!
//! - [`client_from_kubeconfig`]: a client from kubeconfig bytes (as Talos streams them).
//! - [`parse_manifests`]: multi-document YAML (and `kind: List`) into objects.
//! - [`Applier`]: server-side apply with one field manager ([`FIELD_MANAGER`]) in a
//!   safe order — namespaces, CRDs, wait Established, refresh discovery, the rest —
//!   reporting each object as created, changed or unchanged.
//! - [`nodes`]: cordon, drain (Eviction API), uncordon, delete and wait for a Node.
//! - [`wait`]: readiness by kind on watches, each with a deadline and the blocking
//!   object's status on timeout.
//! - [`inventory`]: namespaces and Flux Kustomizations in brief (recorded with
//!   etcd backups, compared after a restore).

pub mod flux;
pub mod inventory;
pub mod nodes;
pub mod wait;

use std::sync::Arc;
use std::time::Duration;

use endsys_core::Doctor;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::Client;
use serde_json::Value;
use thiserror::Error;

/// The one field manager every apply of this tool uses.
pub const FIELD_MANAGER: &str = "endsys-bootstrap";

/// What went wrong talking to the cluster, with the object it concerns.
#[derive(Debug, Clone, Error)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("{source_name}, document {doc}: {detail}")]
    Manifest {
        source_name: String,
        doc: usize,
        detail: String,
    },
    #[error(
        "{object}: the API server does not serve {gvk} (missing CRD, or a typo in apiVersion/kind)"
    )]
    UnknownKind { object: String, gvk: String },
    #[error("{object}: server-side apply conflict with another field manager: {detail}")]
    Conflict { object: String, detail: String },
    #[error("{object}: {verb} failed ({code} {reason}): {message}")]
    Api {
        object: String,
        verb: &'static str,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{object}: {verb}: {detail}")]
    Transport {
        object: String,
        verb: &'static str,
        detail: String,
    },
    #[error("{object}: not {what} after {after:?}; last status: {status}")]
    Timeout {
        object: String,
        what: String,
        after: Duration,
        status: String,
    },
    #[error("{object}: failed: {status}")]
    Failed { object: String, status: String },
}

impl KubeError {
    /// A kube-rs error as the apply engine reports it, naming the object and the
    /// verb; a 409 on `apply` is a field-manager [`KubeError::Conflict`].
    pub fn from_kube(e: kube::Error, object: &str, verb: &'static str) -> KubeError {
        match e {
            kube::Error::Api(s) if s.code == 409 && verb == "apply" => KubeError::Conflict {
                object: object.to_string(),
                detail: s.message.clone(),
            },
            kube::Error::Api(s) => KubeError::Api {
                object: object.to_string(),
                verb,
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => KubeError::Transport {
                object: object.to_string(),
                verb,
                detail: other.to_string(),
            },
        }
    }
}

impl Doctor for KubeError {
    fn likely_cause(&self) -> String {
        match self {
            KubeError::Kubeconfig(_) => "the kubeconfig is damaged, or its current context names no usable cluster or credentials".into(),
            KubeError::Manifest { .. } => "the manifest is not valid Kubernetes YAML (syntax, or apiVersion/kind/metadata.name missing)".into(),
            KubeError::Timeout { .. } => "the object did not become ready in time: its pods are not scheduled, pulling, or crashing".into(),
            KubeError::Conflict { .. } => "another field manager owns fields this tool sets".into(),
            KubeError::UnknownKind { .. } => "the API server does not serve this kind".into(),
            KubeError::Failed { .. } => "the object reports that it failed (its status above says why)".into(),
            KubeError::Api { .. } | KubeError::Transport { .. } => "the Kubernetes API refused or failed the request".into(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            KubeError::Kubeconfig(_) => "fetch the kubeconfig again (delete it from the state directory and re-run up)".into(),
            KubeError::Manifest { .. } => "fix the manifest named above".into(),
            KubeError::UnknownKind { .. } => "apply the CRD first (list it under the CRD sources) or fix apiVersion/kind".into(),
            KubeError::Conflict { .. } => "another manager owns these fields: drop them there, or re-run with conflicts forced".into(),
            KubeError::Api { .. } | KubeError::Transport { .. } => "check the API server is reachable and re-run; applies are idempotent".into(),
            KubeError::Timeout { .. } | KubeError::Failed { .. } => "inspect the object named above (kubectl describe) and its pods' events, then re-run".into(),
        }
    }
}

/// A kube-rs client from kubeconfig bytes (its current context).
pub async fn client_from_kubeconfig(bytes: &[u8]) -> Result<Client, KubeError> {
    client_of(bytes, true).await
}

/// [`client_from_kubeconfig`] without kube-rs's own retries of 429/503/504:
/// for evictions, whose 429 is a PodDisruptionBudget's answer the drain must
/// read (kube-rs would retry it for minutes, hiding the budget's name).
pub async fn client_no_retry(bytes: &[u8]) -> Result<Client, KubeError> {
    client_of(bytes, false).await
}

async fn client_of(bytes: &[u8], retry: bool) -> Result<Client, KubeError> {
    fn kubeconfig(e: impl std::error::Error + Send + Sync + 'static) -> KubeError {
        KubeError::Kubeconfig(Arc::new(e))
    }
    let text = std::str::from_utf8(bytes).map_err(kubeconfig)?;
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(kubeconfig)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(kubeconfig)?;
    cfg.default_retry = retry;
    Client::try_from(cfg).map_err(kubeconfig)
}

/// `kind ns/name` (or `kind name`) for messages.
pub fn describe(obj: &DynamicObject) -> String {
    let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("?");
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    match obj.metadata.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Multi-document YAML (documents may be `kind: List`) into objects; empty
/// documents are skipped. `source_name` names the input in errors.
pub fn parse_manifests(text: &str, source_name: &str) -> Result<Vec<DynamicObject>, KubeError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let err = |detail: String| KubeError::Manifest {
            source_name: source_name.to_string(),
            doc: i + 1,
            detail,
        };
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
            && value.get("items").is_some();
        let items = if is_list {
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            if item.get("apiVersion").and_then(Value::as_str).is_none()
                || item.get("kind").and_then(Value::as_str).is_none()
            {
                return Err(err("apiVersion and kind are required".into()));
            }
            if item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(err("metadata.name is required".into()));
            }
            let obj: DynamicObject =
                serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
            out.push(obj);
        }
    }
    Ok(out)
}

/// How an apply changed an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Changed,
    Unchanged,
}

/// One applied object.
#[derive(Debug, Clone)]
pub struct Applied {
    pub gvk: GroupVersionKind,
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub change: Change,
}

impl Applied {
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.gvk.kind, self.name),
            None => format!("{} {}", self.gvk.kind, self.name),
        }
    }
}

/// Counts of a batch of applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub created: usize,
    pub changed: usize,
    pub unchanged: usize,
}

impl Tally {
    pub fn of(applied: &[Applied]) -> Tally {
        let mut t = Tally::default();
        for a in applied {
            match a.change {
                Change::Created => t.created += 1,
                Change::Changed => t.changed += 1,
                Change::Unchanged => t.unchanged += 1,
            }
        }
        t
    }
    pub fn is_noop(&self) -> bool {
        self.created == 0 && self.changed == 0
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} changed, {} unchanged",
            self.created, self.changed, self.unchanged
        )
    }
}

/// What an apply did to the object. The resourceVersion alone is not enough:
/// a controller writing the object's status between our read and our apply
/// bumps it too (a restored cluster's controllers do exactly that), and that
/// is not a change of ours. So an object that already held every field we
/// sent is unchanged whatever its resourceVersion says.
fn classify(before: Option<&DynamicObject>, after: &DynamicObject, sent: &Value) -> Change {
    let Some(b) = before else {
        return Change::Created;
    };
    if b.metadata.resource_version == after.metadata.resource_version {
        return Change::Unchanged;
    }
    match serde_json::to_value(b) {
        Ok(held) if holds(&held, sent) => Change::Unchanged,
        _ => Change::Changed,
    }
}

/// Whether `held` carries every value of `want` (objects by key, lists item by
/// item, scalars equal); extra fields in `held` (defaults, status) don't count.
fn holds(held: &Value, want: &Value) -> bool {
    match (held, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| v.is_null() || h.get(k).is_some_and(|hv| holds(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| holds(hv, wv))
        }
        (h, w) => h == w,
    }
}

/// Apply order within one batch: 0 namespaces, 1 CRDs, then Helm's install
/// order for the rest (config before workloads).
pub fn order_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "PriorityClass" | "NetworkPolicy" | "ResourceQuota" | "LimitRange" => 2,
        "ServiceAccount" | "Secret" | "ConfigMap" | "StorageClass" | "PersistentVolume" => 3,
        "PersistentVolumeClaim" => 4,
        "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" => 5,
        "Service" => 6,
        "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Pod" => 7,
        "Job" | "CronJob" => 8,
        "Ingress"
        | "APIService"
        | "ValidatingWebhookConfiguration"
        | "MutatingWebhookConfiguration" => 9,
        _ => 10,
    }
}

/// Server-side apply with discovery, in a safe order.
pub struct Applier {
    client: Client,
    discovery: Discovery,
    /// Take over fields other managers own (SSA `force`).
    pub force: bool,
    /// How long each CRD may take to become Established.
    pub crd_deadline: Duration,
}

impl Applier {
    pub async fn new(client: Client) -> Result<Applier, KubeError> {
        let discovery = discover(&client).await?;
        Ok(Applier {
            client,
            discovery,
            force: false,
            crd_deadline: Duration::from_secs(60),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Re-reads discovery (after CRDs).
    pub async fn refresh(&mut self) -> Result<(), KubeError> {
        self.discovery = discover(&self.client).await?;
        Ok(())
    }

    fn resolve(&self, obj: &DynamicObject) -> Result<(ApiResource, ApiCapabilities), KubeError> {
        let t = obj.types.as_ref().ok_or_else(|| KubeError::Manifest {
            source_name: describe(obj),
            doc: 0,
            detail: "no apiVersion/kind".into(),
        })?;
        let gvk = GroupVersionKind::try_from(t).map_err(|e| KubeError::Manifest {
            source_name: describe(obj),
            doc: 0,
            detail: e.to_string(),
        })?;
        self.discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| KubeError::UnknownKind {
                object: describe(obj),
                gvk: format!("{}/{}", t.api_version, t.kind),
            })
    }

    /// Applies `objects`: namespaces, then CRDs (waiting until Established and
    /// refreshing discovery), then the rest in install order. Namespaced objects
    /// without a namespace go to `default_ns`.
    pub async fn apply_all(
        &mut self,
        mut objects: Vec<DynamicObject>,
        default_ns: &str,
    ) -> Result<Vec<Applied>, KubeError> {
        objects
            .sort_by_key(|o| order_rank(o.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")));
        let split = objects
            .iter()
            .position(|o| order_rank(o.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")) > 1)
            .unwrap_or(objects.len());
        let rest = objects.split_off(split);
        let mut out = Vec::new();
        let mut crds = Vec::new();
        for obj in objects {
            let a = self.apply_one(obj, default_ns).await?;
            if a.gvk.kind == "CustomResourceDefinition" {
                crds.push(a.clone());
            }
            out.push(a);
        }
        if !crds.is_empty() {
            let waits = crds
                .iter()
                .map(|a| wait::wait_ready(&self.client, a, self.crd_deadline));
            for r in futures::future::join_all(waits).await {
                r?;
            }
            self.refresh().await?;
        }
        for obj in rest {
            out.push(self.apply_one(obj, default_ns).await?);
        }
        Ok(out)
    }

    /// Server-side applies one object.
    pub async fn apply_one(
        &self,
        mut obj: DynamicObject,
        default_ns: &str,
    ) -> Result<Applied, KubeError> {
        let (ar, caps) = self.resolve(&obj)?;
        let namespaced = caps.scope == Scope::Namespaced;
        if namespaced && obj.metadata.namespace.is_none() {
            obj.metadata.namespace = Some(default_ns.to_string());
        }
        if !namespaced {
            obj.metadata.namespace = None;
        }
        obj.metadata.managed_fields = None;
        obj.metadata.resource_version = None;
        obj.metadata.uid = None;
        obj.metadata.creation_timestamp = None;
        let label = describe(&obj);
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or_else(|| KubeError::Manifest {
                source_name: label.clone(),
                doc: 0,
                detail: "metadata.name is required".into(),
            })?;
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let before = api
            .get_opt(&name)
            .await
            .map_err(|e| KubeError::from_kube(e, &label, "get"))?;
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        pp.force = self.force;
        let body = serde_json::to_value(&obj).map_err(|e| KubeError::Manifest {
            source_name: label.clone(),
            doc: 0,
            detail: e.to_string(),
        })?;
        let after = api
            .patch(&name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| KubeError::from_kube(e, &label, "apply"))?;
        let change = classify(before.as_ref(), &after, &body);
        Ok(Applied {
            gvk: GroupVersionKind::gvk(&ar.group, &ar.version, &ar.kind),
            resource: ar,
            namespace: obj.metadata.namespace.clone(),
            name,
            change,
        })
    }
}

async fn discover(client: &Client) -> Result<Discovery, KubeError> {
    match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => Ok(d),
        Err(_) => Discovery::new(client.clone())
            .run()
            .await
            .map_err(|e| KubeError::from_kube(e, "discovery", "discover")),
    }
}

/// The cluster's Kubernetes version as `vMAJOR.MINOR.PATCH` (for `helm --kube-version`).
pub async fn server_version(client: &Client) -> Result<String, KubeError> {
    let v = client
        .apiserver_version()
        .await
        .map_err(|e| KubeError::from_kube(e, "/version", "get"))?;
    Ok(v.git_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_lists_and_skip_empty_documents() {
        let text = "---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: n}\n";
        let objs = parse_manifests(text, "t.yaml").expect("parses");
        assert_eq!(objs.len(), 2);
        assert_eq!(describe(&objs[1]), "Namespace n");
        let bad = parse_manifests("kind: ConfigMap\nmetadata: {name: a}\n", "b.yaml");
        match bad {
            Err(KubeError::Manifest { doc, .. }) => assert_eq!(doc, 1),
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    fn object(rv: &str, replicas: u64, status: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "n", "resourceVersion": rv},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"phase": status}
        }))
        .expect("object")
    }

    #[test]
    fn a_status_write_between_read_and_apply_is_not_our_change() {
        let sent = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "n"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        });
        let before = object("5", 2, "Pending");
        // A controller wrote status (rv 5 → 6) before our apply landed.
        assert_eq!(
            classify(Some(&before), &object("6", 2, "Ready"), &sent),
            Change::Unchanged
        );
        assert_eq!(
            classify(Some(&before), &object("5", 2, "Pending"), &sent),
            Change::Unchanged
        );
        // Our own field differed: a change, whatever else happened.
        assert_eq!(
            classify(
                Some(&object("5", 1, "Pending")),
                &object("6", 2, "Pending"),
                &sent
            ),
            Change::Changed
        );
        assert_eq!(classify(None, &before, &sent), Change::Created);
    }

    #[test]
    fn order_puts_namespaces_and_crds_first() {
        let mut kinds = [
            "Deployment",
            "CustomResourceDefinition",
            "ConfigMap",
            "Namespace",
        ];
        kinds.sort_by_key(|k| order_rank(k));
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "ConfigMap",
                "Deployment"
            ]
        );
    }
}
