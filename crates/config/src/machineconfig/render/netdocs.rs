//! talhelper's typed network documents (contract >= 1.12) from `networkInterfaces`,
//! in its order and with its alias counters (`th:pkg/talos/networkconfig.go@v3.1.16`,
//! `genMultiDocs` in `multidocs.go`). Field names and order follow Talos's
//! `types/network/*.go@v1.13.9`.

use std::net::IpAddr;

use serde_yaml_ng::{Mapping, Value};

use super::{map, s};
use crate::machineconfig::devices::{Bond, DeviceSelector, DhcpOptions, NetworkDevice, Route};
use crate::machineconfig::talconfig::ResolvedNode;

pub(super) fn doc(kind: &str, fields: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    m.insert(s("apiVersion"), s("v1alpha1"));
    m.insert(s("kind"), s(kind));
    for (k, v) in fields {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

fn num(n: u32) -> Value {
    Value::Number(n.into())
}

/// talhelper's `buildDeviceSelectorCELExpression`; empty when nothing is selected.
fn cel_selector(sel: &DeviceSelector) -> String {
    let mut terms = Vec::new();
    if let Some(v) = sel.hardware_addr.as_deref().filter(|v| !v.is_empty()) {
        terms.push(format!("glob(\"{v}\", mac(link.hardware_addr))"));
    }
    if let Some(v) = sel.permanent_addr.as_deref().filter(|v| !v.is_empty()) {
        terms.push(format!("glob(\"{v}\", mac(link.permanent_addr))"));
    }
    if let Some(v) = sel.bus_path.as_deref().filter(|v| !v.is_empty()) {
        terms.push(format!("glob(\"{v}\", link.bus_path)"));
    }
    if let Some(v) = sel.driver.as_deref().filter(|v| !v.is_empty()) {
        terms.push(format!("glob(\"{v}\", link.driver)"));
    }
    if let Some(v) = sel.pci_id.as_deref().filter(|v| !v.is_empty()) {
        terms.push(format!("glob(\"{v}\", link.pciid)"));
    }
    match sel.physical {
        Some(true) => terms.push("link.type == 1".into()),
        Some(false) => terms.push("link.type != 1".into()),
        None => {}
    }
    terms.join(" && ")
}

fn alias(name: &str, sel: &DeviceSelector) -> Option<Value> {
    let expr = cel_selector(sel);
    (!expr.is_empty()).then(|| {
        doc(
            "LinkAliasConfig",
            &[("name", s(name)), ("selector", map(&[("match", s(&expr))]))],
        )
    })
}

/// ResolverConfig (when nameservers are set or disableSearchDomain is true; talhelper
/// always writes `disableDefault`) and HostnameConfig.
pub fn resolver_and_hostname(node: &ResolvedNode) -> Result<Vec<Value>, String> {
    let n = &node.node;
    let mut out = Vec::new();
    let disable = n.disable_search_domain.unwrap_or(false);
    if !n.nameservers.is_empty() || disable {
        let mut ns = Vec::new();
        for a in &n.nameservers {
            a.parse::<IpAddr>()
                .map_err(|_| format!("nameserver `{a}` is not an IP address"))?;
            ns.push(map(&[("address", s(a))]));
        }
        out.push(doc(
            "ResolverConfig",
            &[
                ("nameservers", Value::Sequence(ns)),
                (
                    "searchDomains",
                    map(&[("disableDefault", Value::Bool(disable))]),
                ),
            ],
        ));
    }
    out.push(if n.ignore_hostname {
        doc("HostnameConfig", &[("auto", s("stable"))])
    } else {
        doc(
            "HostnameConfig",
            &[("auto", s("off")), ("hostname", s(&n.hostname))],
        )
    });
    Ok(out)
}

/// A Talos prefix: an address without `/` is a host prefix.
fn prefix(a: &str) -> Result<String, String> {
    if let Some((ip, bits)) = a.split_once('/') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("address `{a}` is not a prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match bits.parse::<u8>() {
            Ok(b) if b <= max => Ok(a.to_string()),
            _ => Err(format!("address `{a}` is not a prefix")),
        }
    } else {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| format!("address `{a}` is not an address or prefix"))?;
        Ok(format!("{a}/{}", if ip.is_ipv4() { 32 } else { 128 }))
    }
}

fn route(r: &Route) -> Result<Value, String> {
    let mut m = Mapping::new();
    if let Some(net) = r.network.as_deref().filter(|n| !n.is_empty()) {
        if crate::machineconfig::net::parse_cidr(net).is_none() {
            return Err(format!("route network `{net}` is not a prefix"));
        }
        if net != "0.0.0.0/0" && net != "::/0" {
            m.insert(s("destination"), s(net));
        }
    }
    for (key, v) in [("gateway", &r.gateway), ("source", &r.source)] {
        if let Some(a) = v.as_deref().filter(|a| !a.is_empty()) {
            a.parse::<IpAddr>()
                .map_err(|_| format!("route {key} `{a}` is not an IP address"))?;
            m.insert(s(key), s(a));
        }
    }
    if let Some(x) = r.metric.filter(|x| *x > 0) {
        m.insert(s("metric"), num(x));
    }
    if let Some(x) = r.mtu.filter(|x| *x > 0) {
        m.insert(s("mtu"), num(x));
    }
    Ok(Value::Mapping(m))
}

/// Talos's `CommonLinkConfig` part: mtu, addresses, routes.
fn common(
    fields: &mut Vec<(&'static str, Value)>,
    addresses: &[String],
    routes: &[Route],
    mtu: Option<u32>,
    lenient: bool,
) -> Result<(), String> {
    if let Some(m) = mtu.filter(|m| *m > 0) {
        fields.push(("mtu", num(m)));
    }
    let mut addrs = Vec::new();
    for a in addresses {
        match prefix(a) {
            Ok(p) => addrs.push(map(&[("address", s(&p))])),
            // VLAN addresses and routes that do not parse are skipped by talhelper.
            Err(_) if lenient => {}
            Err(e) => return Err(e),
        }
    }
    if !addrs.is_empty() {
        fields.push(("addresses", Value::Sequence(addrs)));
    }
    let mut rs = Vec::new();
    for r in routes {
        match route(r) {
            Ok(v) => rs.push(v),
            Err(_) if lenient => {}
            Err(e) => return Err(e),
        }
    }
    if !rs.is_empty() {
        fields.push(("routes", Value::Sequence(rs)));
    }
    Ok(())
}

fn dhcp(name: &str, opts: Option<&DhcpOptions>) -> Vec<Value> {
    let opts = opts.cloned().unwrap_or_default();
    let mut fields = vec![("name", s(name))];
    if let Some(m) = opts.route_metric.filter(|m| *m > 0) {
        fields.push(("routeMetric", num(m)));
    }
    let mut out = Vec::new();
    if opts.v4() {
        out.push(doc("DHCPv4Config", &fields));
    }
    if opts.v6() {
        out.push(doc("DHCPv6Config", &fields));
    }
    out
}

/// Bond option names Talos knows (`nethelpers/*.go@v1.13.9`); talhelper drops the
/// option silently when the name is unknown.
const BOND_ENUMS: &[(&str, &[&str])] = &[
    (
        "bondMode",
        &[
            "balance-rr",
            "active-backup",
            "balance-xor",
            "broadcast",
            "802.3ad",
            "balance-tlb",
            "balance-alb",
        ],
    ),
    (
        "xmitHashPolicy",
        &["layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4"],
    ),
    (
        "arpValidate",
        &[
            "none",
            "active",
            "backup",
            "all",
            "filter",
            "filter-active",
            "filter-backup",
        ],
    ),
    ("arpAllTargets", &["any", "all"]),
    ("lacpRate", &["slow", "fast"]),
    ("failOverMac", &["none", "active", "follow"]),
    ("adSelect", &["stable", "bandwidth", "count"]),
    ("primaryReselect", &["always", "better", "failure"]),
];

fn bond_doc(name: &str, dev: &NetworkDevice, b: &Bond) -> Result<Value, String> {
    let mut f: Vec<(&'static str, Value)> = vec![("name", s(name))];
    let mut links: Vec<Value> = b.interfaces.iter().map(|i| s(i)).collect();
    links.extend((0..b.device_selectors.len()).map(|i| s(&format!("{name}-m{i}"))));
    if !links.is_empty() {
        f.push(("links", Value::Sequence(links)));
    }
    let enum_of = |key: &str, v: &Option<String>| -> Option<Value> {
        let v = v.as_deref().filter(|v| !v.is_empty())?;
        let known = BOND_ENUMS.iter().find(|(k, _)| *k == key)?.1;
        known.contains(&v).then(|| s(v))
    };
    let n = |v: Option<u32>| v.filter(|x| *x > 0).map(num);
    // Talos's BondConfig field order.
    let ordered: Vec<(&'static str, Option<Value>)> = vec![
        ("bondMode", enum_of("bondMode", &b.mode)),
        ("miimon", n(b.miimon)),
        ("updelay", n(b.updelay)),
        ("downdelay", n(b.downdelay)),
        ("useCarrier", b.use_carrier.map(Value::Bool)),
        (
            "xmitHashPolicy",
            enum_of("xmitHashPolicy", &b.xmit_hash_policy),
        ),
        ("arpInterval", n(b.arp_interval)),
        (
            "arpIpTargets",
            if b.arp_ip_target.is_empty() {
                None
            } else {
                let mut ips = Vec::new();
                for ip in &b.arp_ip_target {
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("bond arpIPTarget `{ip}` is not an IP address"))?;
                    ips.push(s(ip));
                }
                Some(Value::Sequence(ips))
            },
        ),
        ("arpValidate", enum_of("arpValidate", &b.arp_validate)),
        (
            "arpAllTargets",
            enum_of("arpAllTargets", &b.arp_all_targets),
        ),
        ("lacpRate", enum_of("lacpRate", &b.lacp_rate)),
        ("failOverMac", enum_of("failOverMac", &b.fail_over_mac)),
        ("adSelect", enum_of("adSelect", &b.ad_select)),
        ("adActorSysPrio", n(b.ad_actor_sys_prio)),
        ("adUserPortKey", n(b.ad_user_port_key)),
        (
            "primaryReselect",
            enum_of("primaryReselect", &b.primary_reselect),
        ),
        ("resendIGMP", n(b.resend_igmp)),
        ("minLinks", n(b.min_links)),
        ("lpInterval", n(b.lp_interval)),
        ("packetsPerSlave", n(b.packets_per_slave)),
        ("numPeerNotif", n(b.num_peer_notif)),
        ("tlbLogicalLb", n(b.tlb_dynamic_lb)),
        ("allSlavesActive", n(b.all_slaves_active)),
        ("peerNotifDelay", n(b.peer_notify_delay)),
    ];
    f.extend(ordered.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    common(&mut f, &dev.addresses, &dev.routes, dev.mtu, false)?;
    Ok(doc("BondConfig", &f))
}

/// The link documents for `networkInterfaces`, in talhelper's order: link aliases,
/// bond member aliases, bonds, DHCP, VIPs, links, VLANs (each followed by its DHCP
/// and VIP), wireguard, bridges. Selector-only devices take the alias name
/// (`bond<N>`, `br<N>`, `wg<N>`, `ethSel<N>`, one counter per kind, skipping names in
/// use); `ignore`, `dummy`, `cidr`, `bridgePort`, cloud VIPs and `duidv6` are not
/// mapped by talhelper, so not here either.
pub fn link_documents(devices: &[NetworkDevice]) -> Result<Vec<Value>, String> {
    let mut used: Vec<String> = devices.iter().filter_map(|d| d.interface.clone()).collect();
    let mut counters = [0usize; 4];
    let mut names = Vec::new();
    let mut aliases = Vec::new();
    for d in devices {
        let mut name = d.interface.clone().unwrap_or_default();
        if let Some(sel) = &d.device_selector {
            if d.interface.as_deref().unwrap_or("").is_empty() {
                let (prefix, idx) = if d.bond.is_some() {
                    ("bond", 0)
                } else if d.bridge.is_some() {
                    ("br", 1)
                } else if d.wireguard.is_some() {
                    ("wg", 2)
                } else {
                    ("ethSel", 3)
                };
                loop {
                    name = format!("{prefix}{}", counters[idx]);
                    counters[idx] += 1;
                    if !used.contains(&name) {
                        break;
                    }
                }
                used.push(name.clone());
            }
            aliases.extend(alias(&name, sel));
        }
        names.push(name);
    }
    let mut out = aliases;
    for (d, name) in devices.iter().zip(&names) {
        if let Some(b) = &d.bond {
            for (i, sel) in b.device_selectors.iter().enumerate() {
                out.extend(alias(&format!("{name}-m{i}"), sel));
            }
        }
    }
    for (d, name) in devices.iter().zip(&names) {
        if let Some(b) = &d.bond {
            out.push(bond_doc(name, d, b)?);
        }
    }
    for (d, name) in devices.iter().zip(&names) {
        if d.dhcp == Some(true) {
            out.extend(dhcp(name, d.dhcp_options.as_ref()));
        }
    }
    for (d, name) in devices.iter().zip(&names) {
        if let Some(v) = d.vip.as_ref().filter(|v| !v.ip.is_empty()) {
            out.push(doc(
                "Layer2VIPConfig",
                &[("name", s(&v.ip)), ("link", s(name))],
            ));
        }
    }
    for (d, name) in devices.iter().zip(&names) {
        let has = !d.addresses.is_empty() || !d.routes.is_empty() || d.mtu.unwrap_or(0) > 0;
        if d.is_special() || !has {
            continue;
        }
        let mut f = vec![("name", s(name))];
        common(&mut f, &d.addresses, &d.routes, d.mtu, false)?;
        out.push(doc("LinkConfig", &f));
    }
    for (d, name) in devices.iter().zip(&names) {
        for v in d.vlans.iter().filter(|v| v.vlan_id > 0) {
            let vname = format!("{name}.{}", v.vlan_id);
            let mut f = vec![
                ("name", s(&vname)),
                ("vlanID", Value::Number(v.vlan_id.into())),
                ("parent", s(name)),
            ];
            common(&mut f, &v.addresses, &v.routes, v.mtu, true)?;
            out.push(doc("VLANConfig", &f));
            if v.dhcp == Some(true) {
                out.extend(dhcp(&vname, v.dhcp_options.as_ref()));
            }
            if let Some(vip) = &v.vip {
                out.push(doc(
                    "Layer2VIPConfig",
                    &[("name", s(&vip.ip)), ("link", s(&vname))],
                ));
            }
        }
    }
    for (d, name) in devices.iter().zip(&names) {
        let Some(w) = &d.wireguard else { continue };
        let mut f = vec![("name", s(name))];
        if let Some(k) = w.private_key.as_deref().filter(|k| !k.is_empty()) {
            f.push(("privateKey", s(k)));
        }
        if let Some(p) = w.listen_port.filter(|p| *p > 0) {
            f.push(("listenPort", num(p)));
        }
        if let Some(m) = w.firewall_mark.filter(|m| *m > 0) {
            f.push(("firewallMark", num(m)));
        }
        let peers: Vec<Value> = w
            .peers
            .iter()
            .map(|p| {
                let mut m = Mapping::new();
                if let Some(k) = p.public_key.as_deref().filter(|k| !k.is_empty()) {
                    m.insert(s("publicKey"), s(k));
                }
                // Endpoints and allowed IPs that do not parse are skipped by talhelper.
                if let Some(e) = p
                    .endpoint
                    .as_deref()
                    .filter(|e| e.parse::<std::net::SocketAddr>().is_ok())
                {
                    m.insert(s("endpoint"), s(e));
                }
                if let Some(k) = p.persistent_keepalive_interval.clone() {
                    m.insert(s("persistentKeepaliveInterval"), k);
                }
                let ips: Vec<Value> = p
                    .allowed_ips
                    .iter()
                    .filter(|a| crate::machineconfig::net::parse_cidr(a).is_some())
                    .map(|a| s(a))
                    .collect();
                if !ips.is_empty() {
                    m.insert(s("allowedIPs"), Value::Sequence(ips));
                }
                Value::Mapping(m)
            })
            .collect();
        if !peers.is_empty() {
            f.push(("peers", Value::Sequence(peers)));
        }
        common(&mut f, &d.addresses, &d.routes, d.mtu, false)?;
        out.push(doc("WireguardConfig", &f));
    }
    for (d, name) in devices.iter().zip(&names) {
        let Some(b) = &d.bridge else { continue };
        let mut f = vec![("name", s(name))];
        if !b.interfaces.is_empty() {
            f.push((
                "links",
                Value::Sequence(b.interfaces.iter().map(|i| s(i)).collect()),
            ));
        }
        if let Some(en) = b.stp.as_ref().and_then(|x| x.enabled) {
            f.push(("stp", map(&[("enabled", Value::Bool(en))])));
        }
        if b.vlan.as_ref().and_then(|x| x.vlan_filtering) == Some(true) {
            f.push(("vlan", map(&[("filtering", Value::Bool(true))])));
        }
        common(&mut f, &d.addresses, &d.routes, d.mtu, false)?;
        out.push(doc("BridgeConfig", &f));
    }
    Ok(out)
}
