//! The gRPC API of a simulated node, as apid and machined serve it: one module per
//! service (`machine`: MachineService, `cluster`: ClusterService, `storage`:
//! StorageService, `state`: COSI State), ApplyConfiguration's rules in `apply`,
//! the etcd calls in `etcd`, and in `upgrade` the upgrade calls with the 1.13
//! ImageService and LifecycleService. `gate` holds the handler type and the checks every
//! call passes first (Talos' role rules, maintenance-mode rules, the control-plane
//! check); `routing` serves the services behind apid's `node` routing; `trustd`
//! is the control planes' certificate service on port 50001. Error codes and
//! texts are Talos'.

mod apply;
mod apply_live;
mod cluster;
mod etcd;
mod gate;
mod machine;
mod routing;
mod state;
mod storage;
mod trustd;
mod upgrade;

pub(crate) use routing::serve;
pub(crate) use trustd::TRUSTD_PORT;
