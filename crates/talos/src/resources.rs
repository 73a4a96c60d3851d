//! COSI resources as Talos serves them, read from their `yaml_spec` (so the tool
//! needs none of the resource protos), with typed views of the ones it uses.

use serde::Deserialize;

use super::api::cosi::resource as cosi;

/// Namespaces and types (full names: Talos does no alias resolution server-side).
pub mod types {
    pub const MACHINE_STATUS: (&str, &str, &str) =
        ("runtime", "MachineStatuses.runtime.talos.dev", "machine");
    pub const MACHINE_TYPE: (&str, &str, &str) =
        ("config", "MachineTypes.config.talos.dev", "machine-type");
    pub const ETCD_LOCAL_MEMBER: (&str, &str, &str) =
        ("etcd", "EtcdMembers.etcd.talos.dev", "local");
    pub const HOSTNAME: (&str, &str, &str) =
        ("network", "HostnameStatuses.net.talos.dev", "hostname");
    pub const VERSION: (&str, &str, &str) = ("runtime", "Versions.runtime.talos.dev", "version");
    pub const DISKS: (&str, &str) = ("runtime", "Disks.block.talos.dev");
    pub const LINKS: (&str, &str) = ("network", "LinkStatuses.net.talos.dev");
    pub const SERVICES: (&str, &str) = ("runtime", "Services.v1alpha1.talos.dev");
}

/// One COSI resource: identity, version and its spec as YAML text.
#[derive(Debug, Clone)]
pub struct Resource {
    pub namespace: String,
    pub type_: String,
    pub id: String,
    pub version: String,
    pub phase: String,
    pub yaml_spec: String,
}

impl Resource {
    pub(crate) fn from_wire(r: Option<cosi::Resource>) -> Option<Self> {
        let r = r?;
        let md = r.metadata.unwrap_or_default();
        Some(Self {
            namespace: md.namespace,
            type_: md.r#type,
            id: md.id,
            version: md.version,
            phase: md.phase,
            yaml_spec: r.spec.map(|s| s.yaml_spec).unwrap_or_default(),
        })
    }

    /// Parses the spec into a typed view.
    pub fn spec<T: for<'de> Deserialize<'de>>(&self) -> Result<T, String> {
        serde_yaml_ng::from_str(&self.yaml_spec)
            .map_err(|e| format!("{}/{}: unexpected spec: {e}", self.type_, self.id))
    }
}

/// What changed in a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    Created,
    Updated,
    Destroyed,
    Bootstrapped,
    Errored,
    Noop,
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    pub resource: Option<Resource>,
    pub error: Option<String>,
}

impl WatchEvent {
    pub(crate) fn from_wire(e: cosi::Event) -> Self {
        let kind = match cosi::EventType::try_from(e.event_type) {
            Ok(cosi::EventType::Created) => WatchEventKind::Created,
            Ok(cosi::EventType::Updated) => WatchEventKind::Updated,
            Ok(cosi::EventType::Destroyed) => WatchEventKind::Destroyed,
            Ok(cosi::EventType::Bootstrapped) => WatchEventKind::Bootstrapped,
            Ok(cosi::EventType::Errored) => WatchEventKind::Errored,
            _ => WatchEventKind::Noop,
        };
        Self {
            kind,
            resource: Resource::from_wire(e.resource),
            error: e.error,
        }
    }
}

/// Boot stage of a machine (MachineStatus `stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineStage {
    Unknown,
    Booting,
    Installing,
    Maintenance,
    Running,
    Rebooting,
    #[serde(rename = "shutting down")]
    ShuttingDown,
    Resetting,
    Upgrading,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct UnmetCondition {
    pub name: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct MachineStatusStatus {
    #[serde(default)]
    pub ready: bool,
    #[serde(default, rename = "unmetConditions")]
    pub unmet_conditions: Vec<UnmetCondition>,
}

/// `MachineStatuses.runtime.talos.dev/machine`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MachineStatus {
    pub stage: MachineStage,
    #[serde(default)]
    pub status: MachineStatusStatus,
}

impl MachineStatus {
    /// One line for progress output: stage, and what it still waits for.
    pub fn summary(&self) -> String {
        if self.status.ready || self.status.unmet_conditions.is_empty() {
            return format!("{:?}", self.stage).to_lowercase();
        }
        let waits: Vec<String> = self
            .status
            .unmet_conditions
            .iter()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect();
        format!("{:?}, waiting for {}", self.stage, waits.join("; ")).to_lowercase()
    }
}

/// `Disks.block.talos.dev` (snake_case YAML keys).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct DiskSpec {
    pub size: u64,
    pub model: String,
    pub serial: String,
    pub wwid: String,
    pub modalias: String,
    pub transport: String,
    pub rotational: bool,
    pub readonly: bool,
    pub cdrom: bool,
    pub dev_path: String,
    pub pretty_size: String,
    pub bus_path: String,
}

/// `LinkStatuses.net.talos.dev` (camelCase YAML keys), the fields the tool uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct LinkStatusSpec {
    #[serde(rename = "hardwareAddr")]
    pub hardware_addr: String,
    #[serde(rename = "permanentAddr")]
    pub permanent_addr: String,
    #[serde(rename = "type")]
    pub link_type: String,
    pub mtu: u32,
    #[serde(rename = "operationalState")]
    pub operational_state: String,
    #[serde(rename = "linkState")]
    pub link_state: bool,
    #[serde(rename = "speedMbit")]
    pub speed_mbit: u32,
    pub driver: String,
    #[serde(rename = "busPath")]
    pub bus_path: String,
}

/// `HostnameStatuses.net.talos.dev/hostname`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct HostnameSpec {
    pub hostname: String,
    pub domainname: String,
}

/// `EtcdMembers.etcd.talos.dev/local`: the local member ID as hex.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct EtcdLocalMemberSpec {
    #[serde(rename = "memberID")]
    pub member_id: String,
}

/// `MachineTypes.config.talos.dev/machine-type`: a bare scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    Unknown,
    Init,
    Controlplane,
    Worker,
}

/// A disk with its name (the resource ID), for matching install-disk selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub spec: DiskSpec,
}

/// A network link with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub spec: LinkStatusSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(yaml: &str) -> Resource {
        Resource {
            namespace: "runtime".into(),
            type_: "T".into(),
            id: "x".into(),
            version: "1".into(),
            phase: "running".into(),
            yaml_spec: yaml.into(),
        }
    }

    #[test]
    fn machine_status_parses_talos_yaml() {
        let r = res("stage: booting\nstatus:\n  ready: false\n  unmetConditions:\n    - name: time\n      reason: time is not synced\n");
        let ms: MachineStatus = r.spec().unwrap();
        assert_eq!(ms.stage, MachineStage::Booting);
        assert!(!ms.status.ready);
        assert_eq!(
            ms.summary(),
            "booting, waiting for time: time is not synced"
        );
        let r = res("stage: shutting down\nstatus:\n  ready: false\n");
        assert_eq!(
            r.spec::<MachineStatus>().unwrap().stage,
            MachineStage::ShuttingDown
        );
    }

    #[test]
    fn bad_specs_name_the_resource() {
        let err = res("stage: flying\n").spec::<MachineStatus>().unwrap_err();
        assert!(err.contains("T/x"), "{err}");
        assert!(res("controlplane").spec::<MachineType>().unwrap() == MachineType::Controlplane);
    }

    #[test]
    fn disks_and_links_parse() {
        let d: DiskSpec = res("size: 512110190592\nmodel: Samsung SSD 980\nserial: S1\ntransport: nvme\nrotational: false\ndev_path: /dev/nvme0n1\n").spec().unwrap();
        assert_eq!(d.serial, "S1");
        assert_eq!(d.size, 512110190592);
        let l: LinkStatusSpec = res("hardwareAddr: 38:05:25:30:c5:ed\ntype: ether\nmtu: 1500\noperationalState: up\nlinkState: true\n").spec().unwrap();
        assert_eq!(l.hardware_addr, "38:05:25:30:c5:ed");
        assert!(l.link_state);
    }
}
