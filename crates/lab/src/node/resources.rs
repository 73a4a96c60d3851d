//! The COSI resources a simulated node serves, computed from its state.
//!
//! Only `yaml_spec` is filled: the resource spec protos (`talos.resource.definitions.*`)
//! are not compiled into this crate, so `proto_spec` stays empty. Clients of the
//! tool read `yaml_spec`, as talosctl does for its YAML output (Talos fills both
//! `spec.yaml_spec` and `spec.proto_spec` in COSI State replies).

use serde_json::json;

use super::data::{stage_yaml, NodeData, NodeState};
use super::NodeInner;

/// Resource types the lab knows: (type, namespace, sensitive).
pub(crate) const TYPES: &[(&str, &str, bool)] = &[
    ("MachineStatuses.runtime.talos.dev", "runtime", false),
    ("MachineTypes.config.talos.dev", "config", false),
    ("MachineConfigs.config.talos.dev", "config", true),
    ("EtcdMembers.etcd.talos.dev", "etcd", false),
    ("Disks.block.talos.dev", "runtime", false),
    ("SystemDisks.block.talos.dev", "runtime", false),
    ("LinkStatuses.net.talos.dev", "network", false),
    ("LinkSpecs.net.talos.dev", "network", true),
    ("HostnameStatuses.net.talos.dev", "network", false),
    ("NodeAddresses.net.talos.dev", "network", false),
    ("Versions.runtime.talos.dev", "runtime", false),
    ("BootIDs.runtime.talos.dev", "runtime", false),
    ("Services.v1alpha1.talos.dev", "runtime", false),
    ("TimeStatuses.v1alpha1.talos.dev", "runtime", false),
    ("Diagnostics.runtime.talos.dev", "runtime", false),
];

/// Namespaces that exist on a Talos node.
pub(crate) const NAMESPACES: &[&str] = &[
    "runtime",
    "config",
    "etcd",
    "network",
    "cluster",
    "k8s",
    "controlplane",
    "secrets",
    "meta",
    "v1alpha1",
    "network-config",
    "files",
];

pub(crate) fn type_info(ty: &str) -> Option<(&'static str, bool)> {
    TYPES
        .iter()
        .find(|(t, _, _)| *t == ty)
        .map(|(_, ns, s)| (*ns, *s))
}

fn yaml(v: serde_json::Value) -> String {
    serde_yaml_ng::to_string(&v).unwrap_or_default()
}

fn pretty_size(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 1000.0 {
        format!("{:.1} TB", gb / 1000.0)
    } else {
        format!("{gb:.0} GB")
    }
}

/// (namespace, type, id, yaml) of every resource the node has right now.
pub(crate) fn compute(
    node: &NodeInner,
    d: &NodeData,
    state: NodeState,
    ready: bool,
    unmet: &[(String, String)],
) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    if state == NodeState::PoweredOff {
        return out;
    }
    let mut push = |ns: &str, ty: &str, id: &str, y: String| {
        out.push((ns.to_string(), ty.to_string(), id.to_string(), y));
    };
    push(
        "runtime",
        "MachineStatuses.runtime.talos.dev",
        "machine",
        yaml(json!({
            "stage": stage_yaml(state),
            "status": {
                "ready": ready,
                "unmetConditions": unmet.iter().map(|(n, r)| json!({"name": n, "reason": r})).collect::<Vec<_>>(),
            }
        })),
    );
    let version = node.talos_version();
    push(
        "runtime",
        "Versions.runtime.talos.dev",
        "version",
        yaml(json!({ "version": version })),
    );
    // Talos 1.14 publishes the boot ID as a resource too.
    let minor = version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor >= 14 {
        push(
            "runtime",
            "BootIDs.runtime.talos.dev",
            "boot-id",
            yaml(json!({ "bootID": node.boot_id() })),
        );
    }
    push(
        "runtime",
        "TimeStatuses.v1alpha1.talos.dev",
        "node",
        yaml(json!({"synced": true, "epoch": 1, "syncDisabled": false})),
    );
    for disk in &node.hardware.disks {
        push(
            "runtime",
            "Disks.block.talos.dev",
            &disk.dev_name,
            yaml(json!({
                "dev_path": disk.dev_path(),
                "size": disk.size,
                "pretty_size": pretty_size(disk.size),
                "io_size": 512,
                "sector_size": 512,
                "readonly": false,
                "cdrom": false,
                "model": disk.model,
                "serial": disk.serial,
                "wwid": disk.wwid,
                "bus_path": format!("/pci0000:00/0000:00:{:02x}.0", 0x10 + node.hardware.disks.iter().position(|x| x.dev_name == disk.dev_name).unwrap_or(0)),
                "sub_system": if disk.transport == "nvme" { "/sys/class/nvme" } else { "/sys/class/block" },
                "transport": disk.transport,
                "rotational": disk.rotational,
                "symlinks": [format!("/dev/disk/by-id/{}", disk.wwid)],
            })),
        );
    }
    if let Some(dev) = &d.install_disk {
        let name = dev.trim_start_matches("/dev/");
        push(
            "runtime",
            "SystemDisks.block.talos.dev",
            "system-disk",
            yaml(json!({"diskID": name, "devPath": dev})),
        );
    }
    for (i, link) in node.hardware.links.iter().enumerate() {
        push(
            "network",
            "LinkStatuses.net.talos.dev",
            &link.name,
            yaml(json!({
                "index": i + 2,
                "type": "ether",
                "linkIndex": 0,
                "flags": "UP,BROADCAST,RUNNING,MULTICAST,LOWER_UP",
                "hardwareAddr": link.mac,
                "permanentAddr": link.mac,
                "broadcastAddr": "ff:ff:ff:ff:ff:ff",
                "mtu": 1500,
                "queueDisc": "fq_codel",
                "operationalState": "up",
                "kind": "",
                "slaveKind": "",
                "busPath": format!("0000:01:00.{i}"),
                "driver": "igc",
                "linkState": true,
                "speedMbit": link.speed_mbit,
                "port": "TwistedPair",
                "duplex": "Full",
            })),
        );
    }
    let hostname = d
        .config
        .as_ref()
        .and_then(|c| c.hostname.clone())
        .unwrap_or_else(|| d.maintenance_hostname.clone());
    push(
        "network",
        "HostnameStatuses.net.talos.dev",
        "hostname",
        yaml(json!({"hostname": hostname, "domainname": ""})),
    );
    for id in ["default", "current", "routed", "accumulative"] {
        push(
            "network",
            "NodeAddresses.net.talos.dev",
            id,
            yaml(json!({"addresses": [format!("{}/8", node.ip)], "sortAlgorithm": "v1"})),
        );
    }
    for (id, svc) in &d.services {
        push(
            "runtime",
            "Services.v1alpha1.talos.dev",
            id,
            yaml(
                json!({"running": svc.state == "Running", "healthy": svc.healthy, "unknown": svc.unknown}),
            ),
        );
    }
    if let Some(cfg) = &d.config {
        if matches!(
            state,
            NodeState::Installing
                | NodeState::Booting
                | NodeState::Running
                | NodeState::Resetting
                | NodeState::Rebooting
        ) {
            push(
                "config",
                "MachineTypes.config.talos.dev",
                "machine-type",
                format!("{}\n", cfg.machine_type.as_str()),
            );
            push(
                "config",
                "MachineConfigs.config.talos.dev",
                "v1alpha1",
                String::from_utf8_lossy(&cfg.raw).into_owned(),
            );
        }
    }
    if let Some(m) = d.etcd {
        push(
            "etcd",
            "EtcdMembers.etcd.talos.dev",
            "local",
            yaml(json!({"memberID": format!("{:016x}", m.member_id)})),
        );
    }
    out
}
