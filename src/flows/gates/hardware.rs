//! The hardware safety gate: install-disk and interface selectors matched against
//! what a maintenance-mode node reports, before any config is applied.

use crate::talos::resources::{Disk, Link};

use crate::engine::FlowError;
use crate::engine::{DiskTarget, LinkSelector, NodeDef};

/// Shell-style glob with `*` and `?` (what Talos selectors accept).
pub fn glob(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

/// Parses `>= 100GB`, `< 2TB`, `500GB`, `1TiB`; None when unreadable.
fn size_cmp(expr: &str, size: u64) -> Option<bool> {
    let e = expr.trim();
    let (op, rest) = [">=", "<=", ">", "<", "=="]
        .iter()
        .find_map(|op| e.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("==", e));
    let rest = rest.trim();
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let n: f64 = digits.parse().ok()?;
    let mult: f64 = match rest[digits.len()..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024f64.powi(2),
        "GIB" => 1024f64.powi(3),
        "TIB" => 1024f64.powi(4),
        _ => return None,
    };
    let want = n * mult;
    let size = size as f64;
    Some(match op {
        ">=" => size >= want,
        "<=" => size <= want,
        ">" => size > want,
        "<" => size < want,
        // Equality with a unit is approximate, as disks are sold.
        _ => (size - want).abs() <= want * 0.01,
    })
}

fn disk_kind(d: &Disk) -> &'static str {
    match d.spec.transport.as_str() {
        "nvme" => "nvme",
        "mmc" => "sd",
        _ if d.spec.rotational => "hdd",
        _ => "ssd",
    }
}

fn disk_field_matches(d: &Disk, field: &str, pattern: &str) -> bool {
    let dev = if d.spec.dev_path.is_empty() {
        format!("/dev/{}", d.name)
    } else {
        d.spec.dev_path.clone()
    };
    match field {
        "model" => glob(pattern, &d.spec.model),
        "serial" => glob(pattern, &d.spec.serial),
        "wwid" => glob(pattern, &d.spec.wwid),
        "modalias" => glob(pattern, &d.spec.modalias),
        "busPath" => glob(pattern, &d.spec.bus_path),
        "name" => glob(pattern, &d.name) || glob(pattern, &dev),
        "type" => pattern.eq_ignore_ascii_case(disk_kind(d)),
        "size" => size_cmp(pattern, d.spec.size).unwrap_or(false),
        // Unknown fields cannot be checked here; the node decides.
        _ => true,
    }
}

/// The disks a target selects on this node.
pub fn select_disks<'a>(disks: &'a [Disk], target: &DiskTarget) -> Vec<&'a Disk> {
    disks
        .iter()
        .filter(|d| !d.spec.cdrom && !d.spec.readonly)
        .filter(|d| match target {
            DiskTarget::Path(p) => {
                let dev = format!("/dev/{}", d.name);
                p == &dev || p == &d.name || (!d.spec.dev_path.is_empty() && p == &d.spec.dev_path)
            }
            DiskTarget::Selector(fields) => fields.iter().all(|(k, v)| disk_field_matches(d, k, v)),
        })
        .collect()
}

fn human_size(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 1000.0 {
        format!("{:.1} TB", gb / 1000.0)
    } else {
        format!("{gb:.0} GB")
    }
}

/// The node's disks as a table (device, model, serial, size, transport), marking
/// the selected ones.
pub fn disk_table(disks: &[Disk], selected: &[&Disk]) -> String {
    let mut rows = vec![[
        String::new(),
        "DEVICE".to_string(),
        "MODEL".to_string(),
        "SERIAL".to_string(),
        "SIZE".to_string(),
        "TYPE".to_string(),
    ]];
    for d in disks {
        let mark = if selected.iter().any(|s| s.name == d.name) {
            "*"
        } else {
            ""
        };
        rows.push([
            mark.to_string(),
            format!("/dev/{}", d.name),
            d.spec.model.clone(),
            d.spec.serial.clone(),
            human_size(d.spec.size),
            disk_kind(d).to_string(),
        ]);
    }
    table(&rows)
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            format!("    {}", cells.join("  ").trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn link_field_matches(l: &Link, field: &str, pattern: &str) -> bool {
    match field {
        "hardwareAddr" => glob(&pattern.to_ascii_lowercase(), &l.spec.hardware_addr),
        "permanentAddr" => glob(&pattern.to_ascii_lowercase(), &l.spec.permanent_addr),
        "busPath" => glob(pattern, &l.spec.bus_path),
        "driver" => glob(pattern, &l.spec.driver),
        "physical" => {
            let physical = l.spec.link_type == "ether" || l.spec.link_type.is_empty();
            pattern.eq_ignore_ascii_case(if physical { "true" } else { "false" })
        }
        _ => true,
    }
}

pub fn select_links<'a>(links: &'a [Link], sel: &LinkSelector) -> Vec<&'a Link> {
    links
        .iter()
        .filter(|l| l.name != "lo")
        .filter(|l| sel.fields.iter().all(|(k, v)| link_field_matches(l, k, v)))
        .collect()
}

pub fn link_table(links: &[Link]) -> String {
    let mut rows = vec![[
        "LINK".to_string(),
        "MAC".to_string(),
        "DRIVER".to_string(),
        "STATE".to_string(),
    ]];
    for l in links.iter().filter(|l| l.name != "lo") {
        rows.push([
            l.name.clone(),
            l.spec.hardware_addr.clone(),
            l.spec.driver.clone(),
            l.spec.operational_state.clone(),
        ]);
    }
    table(&rows)
}

/// What the gate decided for one node.
#[derive(Debug, Clone)]
pub struct HardwareMatch {
    /// The install disk, as `/dev/x model serial size`.
    pub install_disk: Option<String>,
}

/// Checks a node's selectors against its hardware; every problem is returned.
pub fn check_node(
    node: &NodeDef,
    disks: &[Disk],
    links: &[Link],
) -> Result<HardwareMatch, Vec<FlowError>> {
    let mut problems = Vec::new();
    let mut install_disk = None;
    if let Some(target) = &node.install_disk {
        let hits = select_disks(disks, target);
        if hits.len() == 1 {
            let d = hits[0];
            install_disk = Some(format!(
                "/dev/{} {} {} {}",
                d.name,
                d.spec.model,
                d.spec.serial,
                human_size(d.spec.size)
            ));
        } else {
            problems.push(FlowError::DiskSelector {
                node: node.label(),
                selector: target.to_string(),
                matched: hits.len(),
                table: disk_table(disks, &hits),
            });
        }
    }
    for sel in &node.links {
        let hits = select_links(links, sel);
        if hits.len() != 1 {
            problems.push(FlowError::LinkSelector {
                node: node.label(),
                selector: sel.to_string(),
                matched: hits.len(),
                table: link_table(links),
            });
        }
    }
    if problems.is_empty() {
        Ok(HardwareMatch { install_disk })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::talos::resources::DiskSpec;

    fn disk(name: &str, model: &str, serial: &str, size: u64, transport: &str) -> Disk {
        Disk {
            name: name.into(),
            spec: DiskSpec {
                size,
                model: model.into(),
                serial: serial.into(),
                transport: transport.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn selectors_match_exactly_one_or_explain() {
        let disks = vec![
            disk("sda", "Samsung SSD 870", "S1", 500_107_862_016, "sata"),
            disk("nvme0n1", "Samsung SSD 980", "S2", 500_107_862_016, "nvme"),
        ];
        let sel = |f: &[(&str, &str)]| {
            DiskTarget::Selector(
                f.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            select_disks(&disks, &sel(&[("model", "Samsung SSD 980*")])).len(),
            1
        );
        assert_eq!(
            select_disks(&disks, &sel(&[("model", "Samsung*")])).len(),
            2
        );
        assert_eq!(select_disks(&disks, &sel(&[("size", ">= 1TB")])).len(), 0);
        assert_eq!(select_disks(&disks, &sel(&[("type", "nvme")])).len(), 1);
        assert_eq!(
            select_disks(&disks, &DiskTarget::Path("/dev/sda".into())).len(),
            1
        );
        let node = NodeDef {
            hostname: "cp1".into(),
            address: "10.0.0.1".into(),
            control_plane: true,
            install_disk: Some(sel(&[("model", "WD*")])),
            links: vec![],
        };
        let errs = check_node(&node, &disks, &[]).unwrap_err();
        let text = errs[0].to_string();
        assert!(
            text.contains("cp1 (10.0.0.1)") && text.contains("matches 0 disk"),
            "{text}"
        );
        assert!(text.contains("S2") && text.contains("500 GB"), "{text}");
        assert!(glob("a?c*", "abcdef") && !glob("a?c", "abcd"));
    }
}
