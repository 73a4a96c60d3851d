//! The orchestrator: flows as ordered steps grouped by layer, each checking the
//! real state, acting only when needed and verifying; one typed event stream that
//! feeds the display, NDJSON output, the journal and the timing ledger.
//!
//! - [`events`]: the event types and the [`events::Emitter`].
//! - [`journal`]: per-cluster run journal (a hint for resuming; real state wins).
//! - [`source`]: the seam to the machine-config room ([`source::ClusterSource`]).
//! - [`hardware`]: install-disk and interface selector gate.
//! - [`up`]: the `up` flow (Talos half of layer 1) and `plan`.
//! - [`layer1`]: the Kubernetes half of `up` (namespaces, secrets, CRDs, charts).
//! - [`flux`]: layer 2 (Flux secrets check, install, sync), the tracker over
//!   layers 3–5, the adoption check, and `status`.
//! - [`kubeconfig`]: kubeconfig reading and merging.
//! - [`ledger`]: timing ledger and the per-phase table.

pub mod error;
pub mod events;
pub mod flux;
pub mod hardware;
pub mod journal;
pub mod kubeconfig;
pub mod layer1;
pub mod ledger;
pub mod source;
pub mod talhelper;
pub mod up;

pub use error::FlowError;
pub use events::{Emitter, Event, EventKind, Layer, Outcome, StepId};
pub use source::{ClusterSource, Definition, DiskTarget, LinkSelector, MemorySource, NodeDef};
pub use up::{plan, up, PlanItem, UpOptions, UpReport};
