//! endsys-bootstrap: provisions and bootstraps Talos Linux clusters on bare metal.
//!
//! The library is the product; `main.rs` only turns arguments into calls here.
//! The workspace, from the bottom up:
//! - `endsys-core` ([`pki`], [`Doctor`]): CAs and certificates, Talos PEM quirks; the
//!   error doctor every error type implements (likely cause, next action).
//! - `endsys-talos` ([`talos`]): the Talos machine API: generated types, client, talosconfig.
//! - `endsys-config` ([`machineconfig`], [`sops`]): cluster definition, secrets bundle,
//!   rendering, patches, validation; SOPS files encrypted with age, in process.
//! - this crate, the tool:
//!   - [`charts`]: helmfile model, helm template, Helm ownership, Cilium lint.
//!   - [`kube`]: server-side apply engine and readiness waits (kube-rs).
//!   - [`gitops`]: the Flux tree walker, layer map, readiness tracker.
//!   - [`day2`]: etcd backup/status, quorum guard, node reimage and rejoin, recover.
//!   - [`orchestrator`]: flows (`up`, `plan`): steps, events, journal, timing.
//!   - [`cli`]: argument types and output for the binary.
//!   - `demo` (feature `lab`): the whole flow against `endsys-lab`'s simulated cluster.

pub use endsys_config::{machineconfig, sops};
pub use endsys_core::doctor::{self, Doctor};
pub use endsys_core::pki;
pub use endsys_talos as talos;

pub mod charts;
pub mod cli;
pub mod day2;
#[cfg(feature = "lab")]
pub mod demo;
pub mod gitops;
pub mod kube;
pub mod orchestrator;
