//! What every API server instance of a lab shares, and what outlives an
//! instance (the API comes and goes with the control plane): the request
//! counter, injected faults, the lab's Git host and the watch settings.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::git::{self, FetchError, Fetched, GitHost};

/// Faults injected into the simulation.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    /// Substrings of images (or workload names) whose pull never finishes.
    pub stuck: BTreeSet<String>,
    /// Substrings of images (or workload names) whose containers crash.
    pub crash: BTreeSet<String>,
    /// GitOps objects `(kind, namespace, name)` that are not Ready while the
    /// Node named in the value is away (workloads pinned to that node).
    pub needs_node: std::collections::BTreeMap<(String, String, String), String>,
}

/// State every API server instance shares with `KubeLab`.
pub(crate) struct Shared {
    pub requests: AtomicU64,
    pub faults: Mutex<Faults>,
    /// The lab's Git host: which directory answers which URL.
    pub git: Mutex<GitHost>,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK, in ms.
    pub bookmark_ms: AtomicU64,
    /// How many changes the watch cache keeps.
    pub watch_window: AtomicU64,
    /// The version the API server reports: the tag of the kube-apiserver image
    /// of the control plane serving the endpoint (`None`: the lab's default).
    pub apiserver_version: Mutex<Option<String>>,
}

impl Shared {
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_ms.load(Ordering::Relaxed).max(10))
    }
    /// Fetches a Git source from the lab's Git host.
    pub(crate) fn git_fetch(
        &self,
        url: &str,
        spec_ref: Option<&Value>,
    ) -> Result<Fetched, FetchError> {
        let host = self.git.lock().unwrap_or_else(|p| p.into_inner());
        git::fetch(&host, url, spec_ref)
    }

    /// The directory behind a Git URL, if the lab's Git host answers it.
    pub(crate) fn git_dir(&self, url: &str) -> Option<std::path::PathBuf> {
        let host = self.git.lock().unwrap_or_else(|p| p.into_inner());
        host.resolve(url)
    }

    pub(crate) fn apiserver_version(&self) -> String {
        self.apiserver_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| super::KUBE_VERSION.to_string())
    }

    /// The node a GitOps object needs, if a fault ties it to one.
    pub(crate) fn needs_node(&self, kind: &str, ns: &str, name: &str) -> Option<String> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .needs_node
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
