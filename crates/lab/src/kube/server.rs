//! The simulated kube-apiserver: one running instance ([`Api`]) over the
//! etcd-backed store, the resource types it serves (built-ins plus every
//! established CRD) and what a request path names ([`Target`]). How it answers,
//! one HTTP concern a file: `listen` (HTTPS, client certificates from the
//! cluster CA), `auth` (who calls, what they may do), `route` (dispatch by path
//! and verb), `crud` (create, replace, delete), `patch` (JSON, merge and
//! server-side apply patches), `watch` (watch streams from the watch cache),
//! `discovery` (`/version`, discovery, OpenAPI, Table printing), `evict` (the
//! Eviction subresource and PodDisruptionBudgets), with `http`
//! (bodies, responses, query strings) and `object` (server-owned fields) beneath.

pub(super) mod auth;
pub(super) mod crud;
pub(super) mod discovery;
pub(crate) mod evict;
pub(super) mod http;
pub(super) mod listen;
pub(super) mod object;
pub(super) mod patch;
pub(super) mod route;
pub(super) mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use super::shared::Shared;
use super::store::Store;
use super::types::{self, ResType};

/// One running API server instance.
pub(crate) struct Api {
    pub store: Store,
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Wakes the simulated controllers (fault injected, ...).
    pub sim_wake: Arc<tokio::sync::Notify>,
}

pub(crate) fn unix_now() -> i64 {
    endsys_core::clock::now_secs()
}

/// RFC 3339 UTC with second precision, as metav1.Time.
pub(crate) fn now() -> String {
    endsys_core::clock::rfc3339_secs(unix_now())
}

/// What a resource path names.
struct Target {
    ty: ResType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Api {
    /// Built-in types plus every established CRD's served versions.
    pub fn types(&self) -> Vec<ResType> {
        let mut all = types::builtins();
        if let Ok((crds, _)) = self
            .store
            .list("/registry/apiextensions.k8s.io/customresourcedefinitions/")
        {
            for (_, crd) in crds {
                if types::crd_established(&crd) {
                    all.extend(types::crd_types(&crd));
                }
            }
        }
        all
    }

    pub fn type_by_kind(&self, kind: &str) -> Option<ResType> {
        self.types()
            .into_iter()
            .find(|t| t.kind == kind || t.plural == kind)
    }
}
