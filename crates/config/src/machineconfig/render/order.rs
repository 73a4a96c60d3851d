//! Key order of the documents talhelper adds, as Go marshals their structs
//! (`types/network/*.go`, `types/block/*.go`, `types/runtime/extensions/*.go` @v1.13.9);
//! applied after the generic canonical order (`yaml::canonicalize`), which only
//! knows the generator's documents.

use serde_yaml_ng::{Mapping, Value};

const LINK: &[&str] = &["up", "mtu", "addresses", "routes", "multicast"];
const ROUTE: &[&str] = &["destination", "gateway", "source", "metric", "mtu", "table"];
const ADDRESS: &[&str] = &["address", "routePriority"];

fn top(kind: &str) -> Option<Vec<&'static str>> {
    let head = ["apiVersion", "kind", "name"];
    let own: &[&str] = match kind {
        "BondConfig" => &[
            "hardwareAddr",
            "links",
            "bondMode",
            "miimon",
            "updelay",
            "downdelay",
            "useCarrier",
            "xmitHashPolicy",
            "arpInterval",
            "arpIpTargets",
            "nsIp6Targets",
            "arpValidate",
            "arpAllTargets",
            "lacpRate",
            "failOverMac",
            "adSelect",
            "adActorSysPrio",
            "adUserPortKey",
            "adLACPActive",
            "primaryReselect",
            "resendIGMP",
            "minLinks",
            "lpInterval",
            "packetsPerSlave",
            "numPeerNotif",
            "tlbLogicalLb",
            "allSlavesActive",
            "peerNotifDelay",
            "missedMax",
        ],
        "BridgeConfig" => &["hardwareAddr", "links", "stp", "vlan"],
        "VLANConfig" => &["vlanID", "vlanMode", "parent"],
        "WireguardConfig" => &["privateKey", "listenPort", "firewallMark", "peers"],
        "NetworkRuleConfig" => &["portSelector", "ingress"],
        "ExtensionServiceConfig" => &["configFiles", "environment"],
        "VolumeConfig" => &["provisioning", "encryption"],
        "UserVolumeConfig" => &["volumeType", "provisioning", "filesystem", "encryption"],
        _ => return None,
    };
    let link: &[&str] = match kind {
        "BondConfig" | "BridgeConfig" | "VLANConfig" | "WireguardConfig" => LINK,
        _ => &[],
    };
    Some(head.iter().chain(own).chain(link).copied().collect())
}

fn reorder(m: &mut Mapping, fields: &[&str]) {
    let mut old = std::mem::take(m);
    for f in fields {
        if let Some(v) = old.remove(*f) {
            m.insert(Value::String((*f).to_string()), v);
        }
    }
    for (k, v) in old {
        m.insert(k, v);
    }
}

fn each_item(v: Option<&mut Value>, fields: &[&str]) {
    if let Some(Value::Sequence(items)) = v {
        for it in items.iter_mut().filter_map(Value::as_mapping_mut) {
            reorder(it, fields);
        }
    }
}

/// Puts a talhelper-added document's keys in Go's order (other kinds untouched).
pub fn apply(doc: &mut Value) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(fields) = top(&kind) else { return };
    let Value::Mapping(m) = doc else { return };
    reorder(m, &fields);
    each_item(m.get_mut("routes"), ROUTE);
    each_item(m.get_mut("addresses"), ADDRESS);
    each_item(
        m.get_mut("peers"),
        &[
            "publicKey",
            "presharedKey",
            "endpoint",
            "persistentKeepaliveInterval",
            "allowedIPs",
        ],
    );
    each_item(m.get_mut("ingress"), &["subnet", "except"]);
    if let Some(Value::Mapping(p)) = m.get_mut("portSelector") {
        reorder(p, &["ports", "protocol"]);
    }
    each_item(m.get_mut("configFiles"), &["content", "mountPath"]);
}
