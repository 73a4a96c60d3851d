//! The one flow engine under `up`, `recover`, `node reimage` and `node rejoin`.
//!
//! - [`step`]: [`StepId`], the typed name of every step of every flow, and the layers.
//! - [`flow`]: [`Step`] (plan and run side by side), [`Flow`] (a step table and
//!   the one dispatcher), [`PlanItem`], [`per_node`].
//! - [`events`]: the one [`Event`] type and [`Emitter`]; sinks are fed synchronously.
//! - [`journal`]: the one journal format ([`Journal`], [`JournalHandle`]) every flow keeps.
//! - [`ledger`]: the timing sink and the per-phase table.
//! - [`lock`]: the state directory's lock ([`lock::StateLock`]), one run at a time.
//! - [`wait`]: [`Wait`], the one wait/backoff helper (deadline, what, last seen).
//! - [`cluster`]: the one cluster handle ([`Cluster`]) and node probe ([`NodeProbe`]).
//! - [`source`]: the seam to the machine-config room ([`ClusterSource`]) and the
//!   definition model; [`talhelper`]: the source for operators' files.
//! - [`kubeconfig`]: the admin kubeconfig: read, merge.
//! - [`error`]: [`FlowError`], with the likely cause and next action of each;
//!   [`gate_error`]: [`GateError`], why a gate of a rolling operation stopped it.
//!
//! Floors: the CLI calls the flows (src/flows), the flows run on this engine, the
//! engine uses kube/charts/gitops and the Talos client and config rooms below it.
//! Nothing here imports a flow.

pub mod cluster;
pub mod error;
pub mod events;
pub mod flow;
pub mod gate_error;
pub mod join;
pub mod journal;
pub mod kubeconfig;
pub mod ledger;
pub mod lock;
pub mod source;
pub mod step;
pub mod talhelper;
pub mod wait;

pub use cluster::{classify, probe, Cluster, NodeProbe};
pub use endsys_core::Doctor;
pub use error::{FlowError, NodeFailure};
pub use events::{now_ms, Emitter, Event, EventKind, EventSink, Outcome};
pub use flow::{aggregate, per_node, Announce, Flow, PlanItem, Scope, Step};
pub use gate_error::GateError;
pub use journal::{Facts, Journal, JournalHandle, UpFacts};
pub use ledger::Ledger;
pub use source::{host_of, ClusterSource, Definition, DiskTarget, LinkSelector, NodeDef, Rendered};
pub use step::{Layer, StepId};
pub use wait::{Backoff, Wait};
