//! The gates: checks and waits every rolling or destructive node operation
//! (`node reimage|rejoin`, `upgrade talos|kubernetes`, `apply`) passes, each
//! written once. They take the cluster, a call policy, an emitter and the node,
//! never an operation's own context, so any flow can call them; each refusal is
//! typed ([`crate::engine::GateError`], or [`crate::engine::FlowError::Guard`]
//! for quorum) and names the node, what blocks and what to do.
//!
//! - [`quorum`]: etcd healthy and quorum kept through the operation
//!   ([`quorum::GuardOp`]: `Remove`, `Replace`, `Reboot`, `Worker`).
//! - [`leader`]: hand etcd leadership away before a leader goes down.
//! - [`drain`]: cordon (recording whether we did), drain with PodDisruptionBudget
//!   refusals named, uncordon what we cordoned.
//! - [`back`]: after a reboot: new boot ID, version (rollback detection),
//!   services, etcd member, Node Ready with its kubelet version.
//! - [`layers`]: every GitOps layer Ready (or `--ignore-gitops`, loudly).
//! - [`snapshot`]: the automatic etcd snapshot before the first control plane.
//! - [`hardware`]: install-disk and link selectors against the node's hardware.

pub mod back;
pub mod drain;
pub mod hardware;
pub mod layers;
pub mod leader;
pub mod quorum;
pub mod snapshot;

pub use quorum::GuardOp;
