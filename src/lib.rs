//! endsys-bootstrap: provisions and bootstraps Talos Linux clusters on bare metal.
//!
//! The library is the product; `main.rs` only turns arguments into calls here.
//! Rooms, from the bottom up:
//! - [`pki`]: CAs and certificates, Talos PEM quirks.
//! - [`machineconfig`]: cluster definition, secrets bundle, rendering, patches, validation.
//! - [`sops`]: SOPS files encrypted with age, in process.
//! - [`talos`]: the Talos machine API: generated types, client, talosconfig.
//! - [`charts`]: helmfile model, helm template, Helm ownership, Cilium lint, lab chart set.
//! - [`kube`]: server-side apply engine and readiness waits (kube-rs).
//! - [`lab`]: simulated Talos nodes (and later Kubernetes) on loopback, for tests and `demo`.
//! - [`day2`]: etcd backup/status, quorum guard, node reimage and rejoin.
//! - [`orchestrator`]: flows (`up`, `plan`, `demo`): steps, events, journal, timing.
//! - [`day2`]: recover (disaster rebuild), Velero restores.
//! - [`cli`]: argument types and output for the binary.

pub mod charts;
pub mod cli;
pub mod day2;
pub mod gitops;
pub mod kube;
pub mod lab;
pub mod machineconfig;
pub mod orchestrator;
pub mod pki;
pub mod sops;
pub mod talos;
