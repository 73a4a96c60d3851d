//! The Talos machine API: generated types, a client with retries and typed errors,
//! and talosconfig files.

pub mod api;
