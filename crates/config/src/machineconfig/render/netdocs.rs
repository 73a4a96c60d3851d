//! talhelper's typed network documents (contract >= 1.12) from `networkInterfaces`.

use serde_yaml_ng::{Mapping, Value};

use super::{map, s};
use crate::machineconfig::talconfig::{DeviceSelector, NetworkDevice, ResolvedNode};

fn doc(kind: &str, fields: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    m.insert(s("apiVersion"), s("v1alpha1"));
    m.insert(s("kind"), s(kind));
    for (k, v) in fields {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

fn cel_selector(sel: &DeviceSelector) -> String {
    let mut terms = Vec::new();
    if let Some(v) = &sel.hardware_addr {
        terms.push(format!("glob(\"{v}\", mac(link.hardware_addr))"));
    }
    if let Some(v) = &sel.permanent_addr {
        terms.push(format!("glob(\"{v}\", mac(link.permanent_addr))"));
    }
    if let Some(v) = &sel.bus_path {
        terms.push(format!("glob(\"{v}\", link.bus_path)"));
    }
    if let Some(v) = &sel.driver {
        terms.push(format!("glob(\"{v}\", link.driver)"));
    }
    if let Some(v) = &sel.pci_id {
        terms.push(format!("glob(\"{v}\", link.pciid)"));
    }
    if sel.physical == Some(true) {
        terms.push("link.type == 1".into());
    }
    terms.join(" && ")
}

/// talhelper's documents for contract ≥ 1.12: resolver, hostname, link aliases,
/// DHCP, VIP, links (in that order).
pub fn network_documents(node: &ResolvedNode) -> Vec<Value> {
    let n = &node.node;
    let mut resolver = Vec::new();
    if !n.nameservers.is_empty() || n.disable_search_domain.is_some() {
        let mut fields = Vec::new();
        if !n.nameservers.is_empty() {
            let ns = n
                .nameservers
                .iter()
                .map(|a| map(&[("address", s(a))]))
                .collect();
            fields.push(("nameservers", Value::Sequence(ns)));
        }
        if let Some(dis) = n.disable_search_domain {
            fields.push((
                "searchDomains",
                map(&[("disableDefault", Value::Bool(dis))]),
            ));
        }
        resolver.push(doc("ResolverConfig", &fields));
    }
    let hostname = if n.ignore_hostname {
        doc("HostnameConfig", &[("auto", s("stable"))])
    } else {
        doc(
            "HostnameConfig",
            &[("auto", s("off")), ("hostname", s(&n.hostname))],
        )
    };
    let mut used: Vec<String> = n
        .network_interfaces
        .iter()
        .filter_map(|d| d.interface.clone())
        .collect();
    let mut aliases = Vec::new();
    let mut dhcp = Vec::new();
    let mut vips = Vec::new();
    let mut links = Vec::new();
    let mut counter = 0;
    for dev in &n.network_interfaces {
        if dev.ignore {
            continue;
        }
        let name = match (&dev.interface, &dev.device_selector) {
            (Some(i), _) => i.clone(),
            (None, Some(sel)) => {
                let mut name = format!("ethSel{counter}");
                while used.contains(&name) {
                    counter += 1;
                    name = format!("ethSel{counter}");
                }
                counter += 1;
                used.push(name.clone());
                aliases.push(doc(
                    "LinkAliasConfig",
                    &[
                        ("name", s(&name)),
                        ("selector", map(&[("match", s(&cel_selector(sel)))])),
                    ],
                ));
                name
            }
            (None, None) => continue,
        };
        link_documents(dev, &name, &mut dhcp, &mut vips, &mut links);
    }
    let mut out = resolver;
    out.push(hostname);
    out.extend(aliases);
    out.extend(dhcp);
    out.extend(vips);
    out.extend(links);
    out
}

fn link_documents(
    dev: &NetworkDevice,
    name: &str,
    dhcp: &mut Vec<Value>,
    vips: &mut Vec<Value>,
    links: &mut Vec<Value>,
) {
    if dev.dhcp == Some(true) {
        let opts = dev.dhcp_options.clone().unwrap_or_default();
        let mut fields = vec![("name", s(name))];
        if let Some(m) = opts.route_metric {
            fields.push(("routeMetric", Value::Number(m.into())));
        }
        if opts.ipv4.unwrap_or(true) {
            dhcp.push(doc("DHCPv4Config", &fields));
        }
        if opts.ipv6 == Some(true) {
            dhcp.push(doc("DHCPv6Config", &fields));
        }
    }
    if let Some(v) = &dev.vip {
        vips.push(doc(
            "Layer2VIPConfig",
            &[("name", s(&v.ip)), ("link", s(name))],
        ));
    }
    if dev.addresses.is_empty() && dev.routes.is_empty() && dev.mtu.is_none() {
        return;
    }
    let mut fields = vec![("name", s(name))];
    if let Some(m) = dev.mtu {
        fields.push(("mtu", Value::Number(m.into())));
    }
    if !dev.addresses.is_empty() {
        let addrs = dev
            .addresses
            .iter()
            .map(|a| {
                let a = if a.contains('/') {
                    a.clone()
                } else if a.contains(':') {
                    format!("{a}/128")
                } else {
                    format!("{a}/32")
                };
                map(&[("address", s(&a))])
            })
            .collect();
        fields.push(("addresses", Value::Sequence(addrs)));
    }
    if !dev.routes.is_empty() {
        let routes = dev
            .routes
            .iter()
            .map(|r| {
                let mut m = Mapping::new();
                if let Some(net) = &r.network {
                    if net != "0.0.0.0/0" && net != "::/0" {
                        m.insert(s("destination"), s(net));
                    }
                }
                if let Some(g) = &r.gateway {
                    m.insert(s("gateway"), s(g));
                }
                if let Some(src) = &r.source {
                    m.insert(s("source"), s(src));
                }
                if let Some(x) = r.metric {
                    m.insert(s("metric"), Value::Number(x.into()));
                }
                if let Some(x) = r.mtu {
                    m.insert(s("mtu"), Value::Number(x.into()));
                }
                Value::Mapping(m)
            })
            .collect();
        fields.push(("routes", Value::Sequence(routes)));
    }
    links.push(doc("LinkConfig", &fields));
}
