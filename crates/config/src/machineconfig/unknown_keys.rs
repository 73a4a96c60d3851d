//! talhelper decodes talconfig.yaml with plain `yaml.Unmarshal` (`th:pkg/config/loader.go`
//! @v3.1.16), which drops keys it does not know without a word. This tool accepts the
//! same files, and says which keys are dropped (file:line), since a typo there
//! silently changes the cluster.

use std::path::Path;

use serde_yaml_ng::Value;

use super::error::{Finding, Severity};

const TOP: &[&str] = &[
    "clusterName",
    "talosVersion",
    "kubernetesVersion",
    "endpoint",
    "domain",
    "allowSchedulingOnMasters",
    "allowSchedulingOnControlPlanes",
    "additionalMachineCertSans",
    "additionalApiServerCertSans",
    "inlineManifests",
    "clusterPodNets",
    "clusterSvcNets",
    "cniConfig",
    "patches",
    "nodes",
    "imageFactory",
    "controlPlane",
    "worker",
];
const NODE_ONLY: &[&str] = &[
    "hostname",
    "ipAddress",
    "controlPlane",
    "installDisk",
    "installDiskSelector",
    "ignoreHostname",
    "overridePatches",
    "overrideExtraManifests",
    "overrideMachineCertSANs",
];
const NODE_CONFIGS: &[&str] = &[
    "nodeLabels",
    "nodeAnnotations",
    "nodeTaints",
    "machineDisks",
    "machineFiles",
    "disableSearchDomain",
    "kernelModules",
    "nameservers",
    "networkInterfaces",
    "extraManifests",
    "certSANs",
    "patches",
    "talosImageURL",
    "noSchematicValidate",
    "schematic",
    "imageSchematic",
    "machineSpec",
    "ingressFirewall",
    "extensionServices",
    "volumes",
    "userVolumes",
    "filenameTmpl",
];
/// Node-level keys this tool also honours in a `controlPlane:`/`worker:` group,
/// where talhelper drops them.
const GROUP_EXTENSIONS: &[&str] = &["installDisk", "installDiskSelector"];

const DEVICE: &[&str] = &[
    "interface",
    "deviceSelector",
    "addresses",
    "cidr",
    "routes",
    "bond",
    "bridge",
    "bridgePort",
    "vlans",
    "mtu",
    "dhcp",
    "ignore",
    "dummy",
    "dhcpOptions",
    "wireguard",
    "vip",
];
const SELECTOR: &[&str] = &[
    "busPath",
    "hardwareAddr",
    "permanentAddr",
    "pciID",
    "driver",
    "physical",
];
const ROUTE: &[&str] = &["network", "gateway", "source", "metric", "mtu"];
const BOND: &[&str] = &[
    "interfaces",
    "deviceSelectors",
    "arpIPTarget",
    "mode",
    "xmitHashPolicy",
    "lacpRate",
    "adActorSystem",
    "arpValidate",
    "arpAllTargets",
    "primary",
    "primaryReselect",
    "failOverMac",
    "adSelect",
    "miimon",
    "updelay",
    "downdelay",
    "arpInterval",
    "resendIgmp",
    "minLinks",
    "lpInterval",
    "packetsPerSlave",
    "numPeerNotif",
    "tlbDynamicLb",
    "allSlavesActive",
    "useCarrier",
    "adActorSysPrio",
    "adUserPortKey",
    "peerNotifyDelay",
];
const VLAN: &[&str] = &[
    "addresses",
    "cidr",
    "routes",
    "dhcp",
    "vlanId",
    "mtu",
    "vip",
    "dhcpOptions",
];

/// One position in a YAML document.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// An owned [`Seg`], for paths built while walking.
#[derive(Debug, Clone)]
enum OwnedSeg {
    Key(String),
    Index(usize),
}

fn borrowed(segs: &[OwnedSeg]) -> Vec<Seg<'_>> {
    segs.iter()
        .map(|s| match s {
            OwnedSeg::Key(k) => Seg::Key(k),
            OwnedSeg::Index(i) => Seg::Index(*i),
        })
        .collect()
}

struct Walk<'a> {
    file: &'a Path,
    text: &'a str,
    out: Vec<Finding>,
}

fn shape(path: &[&str]) -> Option<&'static [&'static str]> {
    // Sequence items are written as "[]".
    Some(match path {
        [] => TOP,
        ["cniConfig"] => &["name", "urls", "flannel"],
        ["imageFactory"] => &[
            "registryURL",
            "schematicEndpoint",
            "protocol",
            "installerURLTmpl",
            "ISOURLTmpl",
        ],
        ["inlineManifests", "[]"] => &["name", "contents", "skipEnvsubst"],
        [.., "installDiskSelector"] => &[
            "size", "name", "model", "serial", "modalias", "uuid", "wwid", "type", "busPath",
        ],
        [.., "machineSpec"] => &[
            "mode",
            "arch",
            "secureboot",
            "useUKI",
            "bootMethod",
            "imageSuffix",
        ],
        [.., "machineFiles", "[]"] => &["content", "permissions", "path", "op", "skipEnvsubst"],
        [.., "kernelModules", "[]"] => &["name", "parameters"],
        [.., "ingressFirewall"] => &["defaultAction", "rules"],
        [.., "ingressFirewall", "rules", "[]"] => &["name", "portSelector", "ingress"],
        [.., "extensionServices", "[]"] => &["name", "configFiles", "environment"],
        [.., "networkInterfaces", "[]"] => DEVICE,
        [.., "deviceSelector"] | [.., "deviceSelectors", "[]"] => SELECTOR,
        [.., "routes", "[]"] => ROUTE,
        [.., "bond"] => BOND,
        [.., "bridge"] => &["interfaces", "stp", "vlan"],
        [.., "bridge", "stp"] => &["enabled"],
        [.., "bridge", "vlan"] => &["vlanFiltering"],
        [.., "vlans", "[]"] => VLAN,
        [.., "dhcpOptions"] => &["routeMetric", "ipv4", "ipv6", "duidv6"],
        [.., "vip"] => &["ip", "equinixMetal", "hcloud"],
        [.., "wireguard"] => &["privateKey", "listenPort", "firewallMark", "peers"],
        [.., "wireguard", "peers", "[]"] => &[
            "publicKey",
            "endpoint",
            "persistentKeepaliveInterval",
            "allowedIPs",
        ],
        [.., "schematic" | "imageSchematic"] => &["owner", "overlay", "customization"],
        [.., "schematic" | "imageSchematic", "overlay"] => &["image", "name", "options"],
        [.., "schematic" | "imageSchematic", "customization"] => &[
            "embeddedMachineConfiguration",
            "extraKernelArgs",
            "meta",
            "systemExtensions",
            "bootloader",
            "secureboot",
            "diskImage",
        ],
        [.., "customization", "systemExtensions"] => &["officialExtensions"],
        [.., "customization", "meta", "[]"] => &["key", "value"],
        [.., "customization", "secureboot"] => &["enrollKeys", "includeWellKnownCertificates"],
        [.., "customization", "diskImage"] => &["sectorSize"],
        _ => return None,
    })
}

impl Walk<'_> {
    fn warn(&mut self, segs: &[OwnedSeg], message: String) {
        let line = locate(self.text, &borrowed(segs));
        self.out.push(Finding {
            severity: Severity::Warning,
            subject: if line > 0 {
                format!("{}:{line}", self.file.display())
            } else {
                self.file.display().to_string()
            },
            message,
        });
    }

    fn walk(&mut self, v: &Value, path: &mut Vec<String>, segs: &mut Vec<OwnedSeg>) {
        let shape_path: Vec<&str> = path.iter().map(String::as_str).collect();
        let known: Option<Vec<&str>> = match shape_path.as_slice() {
            ["nodes", "[]"] => Some([NODE_ONLY, NODE_CONFIGS].concat()),
            ["controlPlane" | "worker"] => Some([NODE_CONFIGS, GROUP_EXTENSIONS].concat()),
            p => shape(p).map(<[&str]>::to_vec),
        };
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    let key = k.as_str().unwrap_or_default().to_string();
                    let dotted = display(path, &key);
                    segs.push(OwnedSeg::Key(key.clone()));
                    if let Some(known) = &known {
                        if !known.contains(&key.as_str()) {
                            let why = match key.as_str() {
                                "configPatches" | "inlinePatch" => "talhelper removed it in v2.0.0 and ignores it; not applied (move it into `patches`)".to_string(),
                                "interface" if path.last().map(String::as_str) == Some("[]") => "not a field of a Talos route; talhelper ignores it, and so does this tool".to_string(),
                                _ => "unknown key: talhelper ignores it, and so does this tool (check the spelling)".to_string(),
                            };
                            self.warn(segs, format!("{dotted}: {why}"));
                            segs.pop();
                            continue;
                        }
                        if path
                            .first()
                            .map(String::as_str)
                            .is_some_and(|g| g == "controlPlane" || g == "worker")
                            && path.len() == 1
                            && GROUP_EXTENSIONS.contains(&key.as_str())
                        {
                            self.warn(segs, format!("{dotted}: talhelper ignores node-only keys in a group; this tool applies it to every node of the group that sets neither installDisk nor installDiskSelector"));
                        }
                    }
                    // Values passed through to Talos documents are checked by its schema.
                    if known.is_some() {
                        path.push(key);
                        self.walk(child, path, segs);
                        path.pop();
                    }
                    segs.pop();
                }
            }
            Value::Sequence(items)
                if known.is_some()
                    || shape(&[&shape_path[..], &["[]"]].concat()).is_some()
                    || matches!(shape_path.as_slice(), ["nodes"]) =>
            {
                for (i, item) in items.iter().enumerate() {
                    segs.push(OwnedSeg::Index(i));
                    path.push("[]".into());
                    self.walk(item, path, segs);
                    path.pop();
                    segs.pop();
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push("[]".into());
                    let p: Vec<&str> = path.iter().map(String::as_str).collect();
                    let nested = shape(&p).is_some();
                    path.pop();
                    if nested {
                        segs.push(OwnedSeg::Index(i));
                        path.push("[]".into());
                        self.walk(item, path, segs);
                        path.pop();
                        segs.pop();
                    }
                }
            }
            _ => {}
        }
    }
}

fn display(path: &[String], key: &str) -> String {
    let mut s = String::new();
    for p in path {
        if p == "[]" {
            s.push_str("[]");
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(p);
        }
    }
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(key);
    s
}

/// The keys of talconfig.yaml that talhelper would drop, as warnings.
pub fn unknown_keys(doc: &Value, file: &Path, text: &str) -> Vec<Finding> {
    let mut w = Walk {
        file,
        text,
        out: Vec::new(),
    };
    w.walk(doc, &mut Vec::new(), &mut Vec::new());
    w.out
}

enum Entry<'a> {
    Item(usize, usize),
    Key(usize, &'a str, usize),
}

/// The 1-based line of a key path with sequence indexes in block-style YAML; the
/// deepest line found (0 when not even the first key is there).
pub fn locate(text: &str, path: &[Seg]) -> usize {
    let mut entries = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - t.len();
        let mut rest = t;
        while let Some(r) = rest
            .strip_prefix("- ")
            .or(if rest == "-" { Some("") } else { None })
        {
            entries.push(Entry::Item(indent, no + 1));
            let r2 = r.trim_start();
            indent += 2 + (r.len() - r2.len());
            rest = r2;
        }
        if let Some((k, _)) = rest.split_once(':') {
            let k = k.trim().trim_matches(['"', '\'']);
            if !k.is_empty() && !k.contains(' ') {
                entries.push(Entry::Key(indent, k, no + 1));
            }
        }
    }
    let mut best = 0;
    let mut p = 0usize;
    let mut parent: isize = -1;
    'seg: for seg in path {
        match seg {
            Seg::Key(want) => {
                while p < entries.len() {
                    match &entries[p] {
                        Entry::Key(i, k, line) => {
                            if (*i as isize) <= parent {
                                break 'seg;
                            }
                            p += 1;
                            if k == want {
                                best = *line;
                                parent = *i as isize;
                                continue 'seg;
                            }
                        }
                        // The next item of the sequence we are in: left the block.
                        Entry::Item(i, _) if (*i as isize) <= parent => break 'seg,
                        Entry::Item(..) => p += 1,
                    }
                }
                break;
            }
            Seg::Index(n) => {
                let mut dash: Option<usize> = None;
                let mut count = 0;
                while p < entries.len() {
                    match &entries[p] {
                        Entry::Key(i, _, _) if (*i as isize) <= parent => break 'seg,
                        Entry::Item(i, line) if (*i as isize) + 2 > parent => {
                            let d = *dash.get_or_insert(*i);
                            p += 1;
                            if *i == d {
                                if count == *n {
                                    best = *line;
                                    parent = *i as isize;
                                    continue 'seg;
                                }
                                count += 1;
                            }
                        }
                        _ => p += 1,
                    }
                }
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_follows_keys_and_indexes() {
        let t = "a: 1\nnodes:\n  - hostname: x\n    foo: 1\n  - hostname: y\n    bar:\n      - k: 1\n        z: 2\nw:\n  q: 1\n";
        use Seg::*;
        assert_eq!(locate(t, &[Key("nodes"), Index(1), Key("bar")]), 6);
        assert_eq!(locate(t, &[Key("nodes"), Index(0), Key("foo")]), 4);
        assert_eq!(
            locate(t, &[Key("nodes"), Index(1), Key("bar"), Index(0), Key("z")]),
            8
        );
        assert_eq!(locate(t, &[Key("w"), Key("q")]), 10);
        let flat = "nodes:\n- hostname: a\n  x: 1\n- hostname: b\n  y: 2\n";
        assert_eq!(locate(flat, &[Key("nodes"), Index(1), Key("y")]), 5);
    }

    #[test]
    fn dropped_keys_are_named_with_their_line() {
        let t = "clusterName: c\nclusterNmae: d\nnodes:\n  - hostname: a\n    configPatches: []\n    networkInterfaces:\n      - interface: eth0\n        routes:\n          - network: 0.0.0.0/0\n            interface: eth0\n";
        let v: Value = serde_yaml_ng::from_str(t).unwrap();
        let w = unknown_keys(&v, Path::new("talconfig.yaml"), t);
        let got: Vec<String> = w.iter().map(|f| f.to_string()).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].contains("talconfig.yaml:2: clusterNmae: unknown key"),
            "{got:?}"
        );
        assert!(
            got[1].contains(":5: nodes[].configPatches: talhelper removed it in v2.0.0"),
            "{got:?}"
        );
        assert!(
            got[2].contains(
                ":10: nodes[].networkInterfaces[].routes[].interface: not a field of a Talos route"
            ),
            "{got:?}"
        );
    }
}
