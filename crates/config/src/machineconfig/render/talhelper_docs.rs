//! What talhelper adds to the generator's output for one node, besides networking
//! documents: v1alpha1 overrides (`applyNodeOverride` in `th:pkg/talos/nodeconfig.go`
//! @v3.1.16, the legacy `machine.network` path for contracts up to 1.11) and the extra
//! documents of `genMultiDocs` (`multidocs.go`): firewall, extension services, volumes.

use serde_yaml_ng::{Mapping, Value};

use super::netdocs::doc;
use super::{s, seq, set, Contract};
use crate::machineconfig::devices::{DeviceSelector, DhcpOptions, NetworkDevice, Route, Vip};
use crate::machineconfig::talconfig::{ClusterDefinition, ResolvedNode};

fn num(n: u32) -> Value {
    Value::Number(n.into())
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = v;
    for k in path {
        cur = cur.get_mut(*k)?;
    }
    Some(cur)
}

/// The v1alpha1 fields talhelper sets on the generated document.
pub fn v1alpha1_overrides(
    d: &mut Value,
    def: &ClusterDefinition,
    node: &ResolvedNode,
    contract: Contract,
) {
    let n = &node.node;
    if !contract.multidoc_network_config_supported() {
        if !n.ignore_hostname {
            set(d, &["machine", "network", "hostname"], s(&n.hostname));
        }
        if !n.nameservers.is_empty() {
            set(
                d,
                &["machine", "network", "nameservers"],
                seq(&n.nameservers),
            );
        }
        if n.disable_search_domain == Some(true) {
            set(
                d,
                &["machine", "network", "disableSearchDomain"],
                Value::Bool(true),
            );
        }
        if !n.network_interfaces.is_empty() {
            let devs = n.network_interfaces.iter().map(legacy_device).collect();
            set(
                d,
                &["machine", "network", "interfaces"],
                Value::Sequence(devs),
            );
        }
    }
    if !n.machine_disks.is_empty() {
        set(
            d,
            &["machine", "disks"],
            Value::Sequence(n.machine_disks.clone()),
        );
    }
    if !n.kernel_modules.is_empty() {
        let mods = n
            .kernel_modules
            .iter()
            .map(|m| {
                let mut e = Mapping::new();
                e.insert(s("name"), s(&m.name));
                if !m.parameters.is_empty() {
                    e.insert(s("parameters"), seq(&m.parameters));
                }
                Value::Mapping(e)
            })
            .collect();
        set(d, &["machine", "kernel", "modules"], Value::Sequence(mods));
    }
    if !n.machine_files.is_empty() {
        let files = n
            .machine_files
            .iter()
            .map(|f| {
                let mut e = Mapping::new();
                e.insert(s("content"), s(&f.content));
                e.insert(s("permissions"), num(f.permissions));
                e.insert(s("path"), s(&f.path));
                e.insert(s("op"), s(&f.op));
                Value::Mapping(e)
            })
            .collect();
        set(d, &["machine", "files"], Value::Sequence(files));
    }
    // Schematic kernel args reach the installer's command line only where GRUB does
    // not take them from the UKI (contracts up to 1.11, without useUKI).
    let use_uki = n
        .machine_spec
        .as_ref()
        .and_then(|m| m.use_uki)
        .unwrap_or(false);
    if let Some(sc) = &n.schematic {
        let args = &sc.customization.extra_kernel_args;
        if !args.is_empty() && !use_uki && !contract.grub_use_uki_cmdline_default() {
            if let Some(Value::Sequence(existing)) =
                get_mut(d, &["machine", "install", "extraKernelArgs"])
            {
                existing.extend(args.iter().map(|a| s(a)));
            } else {
                set(d, &["machine", "install", "extraKernelArgs"], seq(args));
            }
        }
    }
    if !def.config.inline_manifests.is_empty() {
        let ims = def
            .config
            .inline_manifests
            .iter()
            .map(|m| {
                let mut e = Mapping::new();
                e.insert(s("name"), s(&m.name));
                e.insert(s("contents"), s(&m.contents));
                Value::Mapping(e)
            })
            .collect();
        set(d, &["cluster", "inlineManifests"], Value::Sequence(ims));
    }
}

/// The firewall, extension-service, volume and user-volume documents, emitted at
/// every contract as talhelper does (`UserVolumeConfig` needs Talos >= 1.10 on the node).
pub fn extra_documents(node: &ResolvedNode) -> Result<Vec<Value>, String> {
    let n = &node.node;
    let mut out = Vec::new();
    if let Some(fw) = &n.ingress_firewall {
        let action = fw.default_action.clone().unwrap_or_else(|| "block".into());
        if action != "block" && action != "accept" {
            return Err(format!(
                "ingressFirewall.defaultAction `{action}` is not block or accept"
            ));
        }
        out.push(doc(
            "NetworkDefaultActionConfig",
            &[("ingress", s(&action))],
        ));
        for (i, r) in fw.rules.iter().enumerate() {
            // talhelper's checkNodeIngressFirewall (validator.go@v3.1.16), same texts.
            if r.name.is_empty() {
                return Err(format!("ingressFirewall: rules[{i}]: name is required"));
            }
            let sel = r.port_selector.as_ref();
            let proto = sel
                .and_then(|p| p.get("protocol"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !["tcp", "udp", "icmp", "icmpv6"].contains(&proto) {
                return Err(format!(
                    "ingressFirewall: rules[{i}]: \"{proto}\" is not a valid protocol"
                ));
            }
            let ports = sel
                .and_then(|p| p.get("ports"))
                .and_then(Value::as_sequence)
                .is_some_and(|p| !p.is_empty());
            if !ports {
                return Err(format!(
                    "ingressFirewall: rules[{i}]: portSelector.ports is required"
                ));
            }
            for rule in r
                .ingress
                .as_ref()
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                for (key, what) in [("subnet", "invalid subnet"), ("except", "invalid except")] {
                    if let Some(v) = rule.get(key).and_then(Value::as_str) {
                        if crate::machineconfig::net::parse_cidr(v).is_none() {
                            return Err(format!("ingressFirewall: rules[{i}]: {what}: {v}"));
                        }
                    }
                }
            }
            out.push(doc(
                "NetworkRuleConfig",
                &[
                    ("name", s(&r.name)),
                    (
                        "portSelector",
                        r.port_selector.clone().unwrap_or(Value::Null),
                    ),
                    (
                        "ingress",
                        r.ingress.clone().unwrap_or(Value::Sequence(Vec::new())),
                    ),
                ],
            ));
        }
    }
    for e in &n.extension_services {
        let mut f = vec![("name", s(&e.name))];
        if let Some(c) = &e.config_files {
            f.push(("configFiles", c.clone()));
        }
        if !e.environment.is_empty() {
            f.push(("environment", seq(&e.environment)));
        }
        out.push(doc("ExtensionServiceConfig", &f));
    }
    for (kind, list, keys) in [
        (
            "VolumeConfig",
            &n.volumes,
            &["provisioning", "encryption"][..],
        ),
        (
            "UserVolumeConfig",
            &n.user_volumes,
            &["volumeType", "provisioning", "filesystem", "encryption"][..],
        ),
    ] {
        let mut names: Vec<String> = Vec::new();
        for v in list {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            if names.iter().any(|x| x == name) {
                return Err(format!("duplicated {kind} name found: {name}"));
            }
            names.push(name.to_string());
            let mut f = vec![("name", s(name))];
            for k in keys {
                if let Some(x) = v.get(*k).filter(|x| !is_empty(x)) {
                    f.push((k, x.clone()));
                }
            }
            out.push(doc(kind, &f));
        }
    }
    Ok(out)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Mapping(m) => m.is_empty(),
        Value::Sequence(q) => q.is_empty(),
        _ => false,
    }
}

fn opt_str(m: &mut Mapping, k: &str, v: &Option<String>) {
    if let Some(x) = v.as_deref().filter(|x| !x.is_empty()) {
        m.insert(s(k), s(x));
    }
}

fn opt_num(m: &mut Mapping, k: &str, v: Option<u32>) {
    if let Some(x) = v.filter(|x| *x > 0) {
        m.insert(s(k), num(x));
    }
}

fn legacy_selector(sel: &DeviceSelector) -> Value {
    let mut m = Mapping::new();
    opt_str(&mut m, "busPath", &sel.bus_path);
    opt_str(&mut m, "hardwareAddr", &sel.hardware_addr);
    opt_str(&mut m, "permanentAddr", &sel.permanent_addr);
    opt_str(&mut m, "pciID", &sel.pci_id);
    opt_str(&mut m, "driver", &sel.driver);
    if let Some(p) = sel.physical {
        m.insert(s("physical"), Value::Bool(p));
    }
    Value::Mapping(m)
}

/// Talos's `Route`: `network` and `gateway` have no omitempty.
fn legacy_route(r: &Route) -> Value {
    let mut m = Mapping::new();
    m.insert(s("network"), s(r.network.as_deref().unwrap_or("")));
    m.insert(s("gateway"), s(r.gateway.as_deref().unwrap_or("")));
    opt_str(&mut m, "source", &r.source);
    opt_num(&mut m, "metric", r.metric);
    opt_num(&mut m, "mtu", r.mtu);
    Value::Mapping(m)
}

fn legacy_dhcp_options(o: &DhcpOptions) -> Value {
    let mut m = Mapping::new();
    m.insert(s("routeMetric"), num(o.route_metric.unwrap_or(0)));
    if let Some(x) = o.ipv4 {
        m.insert(s("ipv4"), Value::Bool(x));
    }
    if let Some(x) = o.ipv6 {
        m.insert(s("ipv6"), Value::Bool(x));
    }
    opt_str(&mut m, "duidv6", &o.duidv6);
    Value::Mapping(m)
}

fn legacy_vip(v: &Vip) -> Value {
    let mut m = Mapping::new();
    if !v.ip.is_empty() {
        m.insert(s("ip"), s(&v.ip));
    }
    if let Some(x) = &v.equinix_metal {
        m.insert(s("equinixMetal"), x.clone());
    }
    if let Some(x) = &v.hcloud {
        m.insert(s("hcloud"), x.clone());
    }
    Value::Mapping(m)
}

fn routes(rs: &[Route]) -> Value {
    Value::Sequence(rs.iter().map(legacy_route).collect())
}

/// One device as Go's yaml.v3 writes Talos's v1alpha1 `Device` (struct order;
/// fields without omitempty appear even when empty).
pub fn legacy_device(d: &NetworkDevice) -> Value {
    let mut m = Mapping::new();
    opt_str(&mut m, "interface", &d.interface);
    if let Some(sel) = &d.device_selector {
        m.insert(s("deviceSelector"), legacy_selector(sel));
    }
    if !d.addresses.is_empty() {
        m.insert(s("addresses"), seq(&d.addresses));
    }
    opt_str(&mut m, "cidr", &d.cidr);
    if !d.routes.is_empty() {
        m.insert(s("routes"), routes(&d.routes));
    }
    if let Some(b) = &d.bond {
        let mut e = Mapping::new();
        e.insert(s("interfaces"), seq(&b.interfaces));
        if !b.device_selectors.is_empty() {
            e.insert(
                s("deviceSelectors"),
                Value::Sequence(b.device_selectors.iter().map(legacy_selector).collect()),
            );
        }
        if !b.arp_ip_target.is_empty() {
            e.insert(s("arpIPTarget"), seq(&b.arp_ip_target));
        }
        e.insert(s("mode"), s(b.mode.as_deref().unwrap_or("")));
        for (k, v) in [
            ("xmitHashPolicy", &b.xmit_hash_policy),
            ("lacpRate", &b.lacp_rate),
            ("adActorSystem", &b.ad_actor_system),
            ("arpValidate", &b.arp_validate),
            ("arpAllTargets", &b.arp_all_targets),
            ("primary", &b.primary),
            ("primaryReselect", &b.primary_reselect),
            ("failOverMac", &b.fail_over_mac),
            ("adSelect", &b.ad_select),
        ] {
            opt_str(&mut e, k, v);
        }
        for (k, v) in [
            ("miimon", b.miimon),
            ("updelay", b.updelay),
            ("downdelay", b.downdelay),
            ("arpInterval", b.arp_interval),
            ("resendIgmp", b.resend_igmp),
            ("minLinks", b.min_links),
            ("lpInterval", b.lp_interval),
            ("packetsPerSlave", b.packets_per_slave),
            ("numPeerNotif", b.num_peer_notif),
            ("tlbDynamicLb", b.tlb_dynamic_lb),
            ("allSlavesActive", b.all_slaves_active),
        ] {
            opt_num(&mut e, k, v);
        }
        if let Some(u) = b.use_carrier {
            e.insert(s("useCarrier"), Value::Bool(u));
        }
        opt_num(&mut e, "adActorSysPrio", b.ad_actor_sys_prio);
        opt_num(&mut e, "adUserPortKey", b.ad_user_port_key);
        opt_num(&mut e, "peerNotifyDelay", b.peer_notify_delay);
        m.insert(s("bond"), Value::Mapping(e));
    }
    if let Some(b) = &d.bridge {
        let mut e = Mapping::new();
        e.insert(s("interfaces"), seq(&b.interfaces));
        if let Some(stp) = &b.stp {
            let mut x = Mapping::new();
            if let Some(en) = stp.enabled {
                x.insert(s("enabled"), Value::Bool(en));
            }
            e.insert(s("stp"), Value::Mapping(x));
        }
        if let Some(v) = &b.vlan {
            let mut x = Mapping::new();
            if let Some(f) = v.vlan_filtering {
                x.insert(s("vlanFiltering"), Value::Bool(f));
            }
            e.insert(s("vlan"), Value::Mapping(x));
        }
        m.insert(s("bridge"), Value::Mapping(e));
    }
    if let Some(bp) = &d.bridge_port {
        m.insert(s("bridgePort"), bp.clone());
    }
    if !d.vlans.is_empty() {
        let vlans = d
            .vlans
            .iter()
            .map(|v| {
                let mut e = Mapping::new();
                if !v.addresses.is_empty() {
                    e.insert(s("addresses"), seq(&v.addresses));
                }
                opt_str(&mut e, "cidr", &v.cidr);
                e.insert(s("routes"), routes(&v.routes));
                if let Some(x) = v.dhcp.filter(|x| *x) {
                    e.insert(s("dhcp"), Value::Bool(x));
                }
                e.insert(s("vlanId"), Value::Number(v.vlan_id.into()));
                opt_num(&mut e, "mtu", v.mtu);
                if let Some(vip) = &v.vip {
                    e.insert(s("vip"), legacy_vip(vip));
                }
                if let Some(o) = &v.dhcp_options {
                    e.insert(s("dhcpOptions"), legacy_dhcp_options(o));
                }
                Value::Mapping(e)
            })
            .collect();
        m.insert(s("vlans"), Value::Sequence(vlans));
    }
    opt_num(&mut m, "mtu", d.mtu);
    if let Some(x) = d.dhcp.filter(|x| *x) {
        m.insert(s("dhcp"), Value::Bool(x));
    }
    if d.ignore {
        m.insert(s("ignore"), Value::Bool(true));
    }
    if let Some(x) = d.dummy.filter(|x| *x) {
        m.insert(s("dummy"), Value::Bool(x));
    }
    if let Some(o) = &d.dhcp_options {
        m.insert(s("dhcpOptions"), legacy_dhcp_options(o));
    }
    if let Some(w) = &d.wireguard {
        let mut e = Mapping::new();
        opt_str(&mut e, "privateKey", &w.private_key);
        opt_num(&mut e, "listenPort", w.listen_port);
        opt_num(&mut e, "firewallMark", w.firewall_mark);
        if !w.peers.is_empty() {
            let peers = w
                .peers
                .iter()
                .map(|p| {
                    let mut x = Mapping::new();
                    opt_str(&mut x, "publicKey", &p.public_key);
                    opt_str(&mut x, "endpoint", &p.endpoint);
                    if let Some(k) = &p.persistent_keepalive_interval {
                        x.insert(s("persistentKeepaliveInterval"), k.clone());
                    }
                    if !p.allowed_ips.is_empty() {
                        x.insert(s("allowedIPs"), seq(&p.allowed_ips));
                    }
                    Value::Mapping(x)
                })
                .collect();
            e.insert(s("peers"), Value::Sequence(peers));
        }
        m.insert(s("wireguard"), Value::Mapping(e));
    }
    if let Some(v) = &d.vip {
        m.insert(s("vip"), legacy_vip(v));
    }
    Value::Mapping(m)
}
