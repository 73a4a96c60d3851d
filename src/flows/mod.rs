//! The flows: each a table of steps on the engine ([`crate::engine`]) that
//! reads like the runbook it automates.
//!
//! - [`up`]: maintenance-mode nodes to all five layers Ready (and `plan`, `status`).
//! - [`nodes`]: `node reimage` and `node rejoin`, quorum kept.
//! - [`recover`]: a cluster rebuilt from an etcd snapshot; [`velero`]: per-app restores.
//! - [`drift`]: rendered vs running config per node (`diff`, `status`, `apply`).
//! - [`apply`]: the definition rolled onto a running cluster (live in parallel, reboots one at a time behind the gates).
//! - [`rollout`]: one operation node by node (control planes alone, workers in
//!   batches), one journal; [`upgrade`]: `upgrade talos` on it.
//! - [`backup`]: verified etcd snapshots and `etcd status`.
//! - [`gates`]: the gates every rolling or destructive node operation passes
//!   (quorum, leader hand-over, drain, back after a reboot, GitOps layers,
//!   snapshot, hardware); [`guard`] is the quorum gate's old name.
//!
//! Flows call the engine and the rooms below it; only the CLI calls flows.

pub mod apply;
pub mod backup;
pub mod drift;
pub mod gates;
pub mod nodes;
pub mod recover;
pub mod rollout;
pub mod up;
pub mod upgrade;
pub mod velero;

/// The quorum gate under its first name (kept for callers of `flows::guard`).
pub use gates::quorum as guard;
