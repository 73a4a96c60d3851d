//! Cluster definition (talhelper's `talconfig.yaml`), secrets bundle, per-node
//! machine-config rendering, patches and validation.
//!
//! The usual flow:
//! ```no_run
//! use endsys_config::machineconfig::*;
//! # fn main() -> Result<(), ConfigError> {
//! let paths = DefinitionPaths::beside(std::path::Path::new("talos/talconfig.yaml"));
//! let def = ClusterDefinition::load(&paths, Vars::from_process_env())?;
//! let text = std::fs::read_to_string("talos/talsecret.yaml").unwrap_or_default();
//! let secrets = SecretsBundle::from_yaml(&text, std::path::Path::new("talos/talsecret.yaml"))?;
//! let configs = render_all(&def, &secrets)?;
//! let warnings = validate_all(&def, &configs)?;
//! let talosconfig = talosconfig::for_cluster(&def, &secrets)?;
//! # let _ = (warnings, talosconfig); Ok(()) }
//! ```
//!
//! Differences from upstream, on purpose: RFC 6902 patches are applied to the v1alpha1
//! document even though Talos ≥ 1.12 configs are multi-document (upstream refuses);
//! image-factory schematic IDs are computed offline (never POSTed); Go templates
//! support the subset in [`gotmpl`]; contracts below 1.8 are refused. The full list of
//! talhelper behaviours not followed is in docs/talhelper.md.

pub mod checks;
pub mod config_file;
pub mod conflicts;
pub mod contract;
mod def_checks;
pub mod devices;
pub mod effective;
pub mod envsubst;
pub mod error;
pub mod gotmpl;
mod kube_order;
pub mod loader;
pub mod migrate;
pub mod net;
pub mod nodeconfigs;
pub mod patch;
pub mod render;
pub mod schema;
pub mod schematic;
pub mod secrets;
pub mod talconfig;
pub mod talosconfig;
pub mod unknown_keys;
pub mod validate;
pub mod validate_1_14;
pub mod yaml;

pub use envsubst::Vars;
pub use error::{ConfigError, Finding, Location, Severity};
pub use patch::{LoadedPatch, Patch};
pub use render::{render_all, render_node, Contract, RenderedConfig};
pub use secrets::SecretsBundle;
pub use talconfig::{
    ClusterDefinition, DefinitionPaths, FsPatchReader, MemPatchReader, PatchReader, PatchSource,
    ResolvedNode, TalConfig,
};
pub use validate::{validate_all, validate_cluster, validate_config};
