//! Day-2 operations on a running (or lost) cluster.
//!
//! - [`recover`]: disaster-recovery rebuild from an etcd snapshot.
//! - [`velero`]: per-app Velero restores after a rebuild.

pub mod recover;
pub mod velero;
