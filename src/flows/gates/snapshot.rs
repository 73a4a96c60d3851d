//! The automatic etcd snapshot a rolling or destructive operation takes once
//! before the first control plane is touched; the path goes in the operation's
//! journal so a resumed run does not take a second one.

use std::path::{Path, PathBuf};

use crate::engine::{Cluster, FlowError};
use crate::flows::backup::{default_backup_path, take_backup};
use crate::talos::CallPolicy;

/// A verified snapshot in `<state_dir>/backups`: `path (size, sha256, from node)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub path: String,
    pub summary: String,
}

/// Where the next automatic snapshot goes (a new timestamped file in
/// `<state_dir>/backups`).
pub fn path(cluster: &Cluster, state_dir: &Path) -> PathBuf {
    default_backup_path(state_dir, &cluster.def.cluster)
}

/// The line that says where the snapshot comes from and goes.
pub fn started_line(path: &Path) -> String {
    format!(
        "EtcdSnapshot → most up-to-date healthy control plane → {}",
        path.display()
    )
}

/// Takes the snapshot into `path` from the most up-to-date healthy control plane.
pub async fn take(cluster: &Cluster, policy: CallPolicy, path: &Path) -> Result<Taken, FlowError> {
    let meta = take_backup(cluster, policy, path).await?;
    Ok(Taken {
        path: path.display().to_string(),
        summary: format!(
            "{} ({} bytes, sha256 {}, from {})",
            path.display(),
            meta.size,
            meta.sha256.get(..12).unwrap_or(&meta.sha256),
            meta.node
        ),
    })
}

/// Where the snapshot will go, for plans.
pub fn plan_line(state_dir: &Path, tail: &str) -> String {
    format!(
        "EtcdSnapshot → most up-to-date healthy control plane → {}/backups/{tail}",
        state_dir.display()
    )
}
