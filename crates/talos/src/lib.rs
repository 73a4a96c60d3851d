//! The Talos machine API: generated types, a client with deadlines, retries and
//! typed errors, COSI resource views, and talosconfig files.

pub mod api;
pub mod bbolt;
pub mod client;
pub mod connect;
pub mod credentials;
pub mod error;
pub mod events;
pub mod resources;
pub mod talosconfig;
pub mod wait;

pub use client::{
    sequence_error, ApplyMode, CallPolicy, EtcdMember, ImageNamespace, LegacyUpgrade,
    LifecycleProgress, PullProgress, ResetOptions, TalosClient, UpgradeAck,
};
pub use connect::{probe_mode, Credentials, Dial, NodeMode, TlsMode};
pub use error::{TalosError, TlsFailure};
