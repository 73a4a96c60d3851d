//! One `networkInterfaces` entry: Talos's v1alpha1 `Device` as talhelper decodes it
//! (`types/v1alpha1/v1alpha1_types.go@v1.13.9`, `type Device struct`), read leniently
//! like talhelper's `yaml.Unmarshal` (unknown keys become warnings, see `unknown_keys.rs`).

use serde::Deserialize;
use serde_yaml_ng::Value;

/// `networkInterfaces[]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkDevice {
    pub interface: Option<String>,
    pub device_selector: Option<DeviceSelector>,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub cidr: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub bond: Option<Bond>,
    pub bridge: Option<Bridge>,
    pub bridge_port: Option<Value>,
    #[serde(default)]
    pub vlans: Vec<Vlan>,
    pub mtu: Option<u32>,
    pub dhcp: Option<bool>,
    #[serde(default)]
    pub ignore: bool,
    pub dummy: Option<bool>,
    pub dhcp_options: Option<DhcpOptions>,
    pub wireguard: Option<Wireguard>,
    pub vip: Option<Vip>,
}

impl NetworkDevice {
    /// Bonds, bridges and wireguard links get their own document instead of a
    /// LinkConfig (talhelper's `hasSpecialConfig`).
    pub fn is_special(&self) -> bool {
        self.bond.is_some() || self.bridge.is_some() || self.wireguard.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    pub bus_path: Option<String>,
    pub hardware_addr: Option<String>,
    pub permanent_addr: Option<String>,
    #[serde(rename = "pciID")]
    pub pci_id: Option<String>,
    pub driver: Option<String>,
    pub physical: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct Route {
    pub network: Option<String>,
    pub gateway: Option<String>,
    pub source: Option<String>,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptions {
    pub route_metric: Option<u32>,
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
    pub duidv6: Option<String>,
}

impl DhcpOptions {
    /// Talos's `DHCPOptions.IPv4()`: true unless set to false.
    pub fn v4(&self) -> bool {
        self.ipv4.unwrap_or(true)
    }
    pub fn v6(&self) -> bool {
        self.ipv6.unwrap_or(false)
    }
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Vip {
    #[serde(default)]
    pub ip: String,
    pub equinix_metal: Option<Value>,
    pub hcloud: Option<Value>,
}

/// `bond:`, fields in Go order (`type Bond struct`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bond {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub device_selectors: Vec<DeviceSelector>,
    #[serde(default, rename = "arpIPTarget")]
    pub arp_ip_target: Vec<String>,
    pub mode: Option<String>,
    pub xmit_hash_policy: Option<String>,
    pub lacp_rate: Option<String>,
    pub ad_actor_system: Option<String>,
    pub arp_validate: Option<String>,
    pub arp_all_targets: Option<String>,
    pub primary: Option<String>,
    pub primary_reselect: Option<String>,
    pub fail_over_mac: Option<String>,
    pub ad_select: Option<String>,
    pub miimon: Option<u32>,
    pub updelay: Option<u32>,
    pub downdelay: Option<u32>,
    pub arp_interval: Option<u32>,
    pub resend_igmp: Option<u32>,
    pub min_links: Option<u32>,
    pub lp_interval: Option<u32>,
    pub packets_per_slave: Option<u32>,
    pub num_peer_notif: Option<u32>,
    pub tlb_dynamic_lb: Option<u32>,
    pub all_slaves_active: Option<u32>,
    pub use_carrier: Option<bool>,
    pub ad_actor_sys_prio: Option<u32>,
    pub ad_user_port_key: Option<u32>,
    pub peer_notify_delay: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct Bridge {
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub stp: Option<BridgeStp>,
    pub vlan: Option<BridgeVlan>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct BridgeStp {
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeVlan {
    pub vlan_filtering: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Vlan {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub cidr: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub dhcp: Option<bool>,
    #[serde(default)]
    pub vlan_id: u16,
    pub mtu: Option<u32>,
    pub vip: Option<Vip>,
    pub dhcp_options: Option<DhcpOptions>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Wireguard {
    pub private_key: Option<String>,
    pub listen_port: Option<u32>,
    pub firewall_mark: Option<u32>,
    #[serde(default)]
    pub peers: Vec<WireguardPeer>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireguardPeer {
    pub public_key: Option<String>,
    pub endpoint: Option<String>,
    /// A Go duration (`25s`), kept as written.
    pub persistent_keepalive_interval: Option<Value>,
    #[serde(default, rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
}
