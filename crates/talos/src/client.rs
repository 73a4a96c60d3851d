//! A Talos API client: one node (directly, or through an endpoint with the `node`
//! metadata key), deadlines on every call, retries for transient failures, typed
//! results.
//!
//! One module per Talos API service the client calls, each adding its methods to
//! [`TalosClient`]: `machine` (Version, ServiceList, Events, Kubeconfig),
//! `lifecycle` (ApplyConfiguration, Reboot, Reset), `etcd` (Bootstrap and the
//! etcd calls), `upgrade` (Read and the boot ID, image pulls, LifecycleService and
//! legacy Upgrade), `cluster` (HealthCheck), `storage` (BlockDeviceWipe) and `cosi`
//! (COSI State: Get, List, Watch and the typed reads built on them). The client
//! type and its call policy live in `call`; how replies and gRPC statuses become
//! typed results in `reply`.

mod call;
mod cluster;
mod cosi;
mod etcd;
mod lifecycle;
mod machine;
mod reply;
mod storage;
mod upgrade;

pub use call::{CallPolicy, TalosClient};
pub use etcd::{verify_snapshot_bytes, EtcdMember, EtcdStatus, SnapshotInfo};
pub use lifecycle::{ApplyMode, ApplyOutcome, ResetOptions};
pub use machine::{extract_kubeconfig, NodeVersion, ServiceState};
pub use upgrade::{
    sequence_error, ImageNamespace, LegacyUpgrade, LifecycleProgress, PullProgress, UpgradeAck,
    BOOT_ID_PATH,
};
