//! endsys-bootstrap: provisions and bootstraps Talos Linux clusters on bare metal.
//!
//! The library is the product; `main.rs` only turns arguments into calls here.
//! The workspace, from the bottom up:
//! - `endsys-core` ([`pki`], [`Doctor`]): CAs and certificates, Talos PEM quirks; the
//!   error doctor every error type implements (likely cause, next action).
//! - `endsys-talos` ([`talos`]): the Talos machine API: generated types, client, talosconfig.
//! - `endsys-config` ([`machineconfig`], [`sops`]): cluster definition, secrets bundle,
//!   rendering, patches, validation; SOPS files encrypted with age, in process.
//! - this crate, the tool (floors only go down: cli → flows → engine → the rooms):
//!   - [`charts`]: helmfile model, helm template, Helm ownership, Cilium lint.
//!   - [`kube`]: server-side apply engine and readiness waits (kube-rs).
//!   - [`gitops`]: the Flux tree walker, layer map, readiness tracker, git HEAD.
//!   - [`snapshot`]: the etcd snapshot file and its metadata sidecar.
//!   - [`engine`]: the one flow engine: steps and their dispatcher, events,
//!     journal, waits, the cluster handle, the flow error.
//!   - [`flows`]: `up`, `node reimage|rejoin`, `recover`, backups, the quorum guard.
//!   - [`cli`]: argument types and output for the binary.
//!   - `demo` (feature `lab`): the whole flow against `endsys-lab`'s simulated cluster.

pub use endsys_config::{limits, machineconfig, sops};
pub use endsys_core::doctor::{self, Doctor};
pub use endsys_core::pki;
pub use endsys_talos as talos;

pub mod charts;
pub mod cli;
#[cfg(feature = "lab")]
pub mod demo;
pub mod engine;
pub mod flows;
pub mod fuzz_targets;
pub mod gitops;
pub mod kube;
pub mod snapshot;
