//! The lab's source-controller: a GitRepository's `spec.url` fetched from the lab's
//! Git host (`file://` URLs and plain paths are directories on disk), its artifact
//! revision `<ref>@sha1:<commit>`, and `GitOperationFailed` for a URL nobody
//! serves, as source-controller reports it.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::objects::{gen, is_ready, s, set_status, Types};
use crate::kube::server::{now, Api};
use crate::kube::store::ApiError;

const SOURCE_FETCH: f64 = 0.5;

/// source-controller: fetches a GitRepository from the lab's Git host.
pub(super) fn reconcile_source(
    api: &Api,
    ty: &Types,
    g: &Value,
    due: &mut dyn FnMut(String, i64, f64) -> bool,
) -> Result<(), ApiError> {
    if is_ready(g) && !s(g, "/status/artifact/revision").is_empty() {
        return Ok(());
    }
    let ns = s(g, "/metadata/namespace");
    let name = s(g, "/metadata/name");
    if !due(format!("git/{ns}/{name}"), gen(g), SOURCE_FETCH) {
        return Ok(());
    }
    let url = s(g, "/spec/url");
    match api.shared.git_fetch(url, g.pointer("/spec/ref")) {
        Ok(fetched) => {
            let rev = fetched.revision;
            let digest = hex::encode(Sha256::digest(rev.as_bytes()));
            set_status(
                api,
                &ty.git,
                g,
                &[(
                    "Ready",
                    "True",
                    "Succeeded",
                    format!("stored artifact for revision '{rev}'"),
                )],
                json!({"observedGeneration": gen(g),
                    "artifact": {"revision": rev, "path": format!("gitrepository/{ns}/{name}/{}.tar.gz", &digest[..40]),
                        "url": format!("http://source-controller.flux-system.svc.cluster.local./gitrepository/{ns}/{name}/{}.tar.gz", &digest[..40]),
                        "digest": format!("sha256:{digest}"), "lastUpdateTime": now()}}),
            )
        }
        Err(e) => set_status(
            api,
            &ty.git,
            g,
            &[
                (
                    "Ready",
                    "False",
                    "GitOperationFailed",
                    format!(
                        "failed to checkout and determine revision: unable to clone '{url}': {}",
                        e.0
                    ),
                ),
                ("Stalled", "False", "GitOperationFailed", String::new()),
            ],
            json!({"observedGeneration": gen(g)}),
        ),
    }
}
