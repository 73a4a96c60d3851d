//! The cluster definition and what it becomes: the talhelper model, the secrets
//! bundle, machine configs rendered per Talos contract, patches and validation
//! ([`machineconfig`]), and SOPS files encrypted with age, in process ([`sops`]).

pub mod limits;
pub mod machineconfig;
pub mod sops;
