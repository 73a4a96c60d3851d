//! Shared basics of endsys-bootstrap, below every other crate of the workspace:
//! - [`pki`]: CAs and certificates, Talos PEM quirks.
//! - [`doctor`]: the error doctor trait (likely cause, next action) every error implements.
//! - [`backoff`]: the doubling pause between looks at a state without a watch.
//! - [`clock`]: Unix milliseconds and RFC 3339 UTC, through the `time` crate.
//! - [`net`]: addresses as the definition writes them.
//! - [`fs`]: private (0600) files written atomically, with recognisable temporaries.
//! - [`textdiff`]: line-based unified diff (dry-run texts, `diff`).

pub mod backoff;
pub mod clock;
pub mod doctor;
pub mod fs;
pub mod net;
pub mod pki;
pub mod textdiff;

pub use doctor::Doctor;
