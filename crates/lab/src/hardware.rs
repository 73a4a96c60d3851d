//! The hardware a simulated node reports: disks and network links.
//!
//! Defaults are deterministic per node index so tests and `demo` see the same
//! serials and MACs every run; tests can pass their own (e.g. the endsys inventory).

/// One block device, as Talos' `Disks.block.talos.dev` resource describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name without `/dev/`, e.g. `sda`, `nvme0n1`.
    pub dev_name: String,
    pub model: String,
    pub serial: String,
    /// Size in bytes.
    pub size: u64,
    pub wwid: String,
    /// `nvme`, `sata`, `usb`, `mmc`, ...
    pub transport: String,
    pub rotational: bool,
}

impl DiskInfo {
    /// `/dev/<name>`.
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.dev_name)
    }
}

/// One network link, as `LinkStatuses.net.talos.dev` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    pub speed_mbit: u32,
}

/// Everything a node reports about its hardware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardware {
    pub disks: Vec<DiskInfo>,
    pub links: Vec<LinkInfo>,
}

impl Hardware {
    /// The default hardware of node `index` (0-based): a SATA SSD `sda` and an NVMe
    /// `nvme0n1` (both 512 GB, serials unique per node), one 1 Gbit link `enp1s0`
    /// with MAC `02:00:00:00:00:<index+1 in hex>`.
    pub fn default_for(index: usize) -> Self {
        let n = index + 1;
        Hardware {
            disks: vec![
                DiskInfo {
                    dev_name: "sda".into(),
                    model: "Samsung SSD 870 EVO 500GB".into(),
                    serial: format!("S6PXNM0T{n:06}A"),
                    size: 500_107_862_016,
                    wwid: format!("naa.5002538f{n:08x}"),
                    transport: "sata".into(),
                    rotational: false,
                },
                DiskInfo {
                    dev_name: "nvme0n1".into(),
                    model: "Samsung SSD 980 500GB".into(),
                    serial: format!("S64DNL0T{n:06}B"),
                    size: 500_107_862_016,
                    wwid: format!("eui.002538b{n:013x}"),
                    transport: "nvme".into(),
                    rotational: false,
                },
            ],
            links: vec![LinkInfo {
                name: "enp1s0".into(),
                mac: format!("02:00:00:00:00:{:02x}", n % 256),
                speed_mbit: 1000,
            }],
        }
    }

    /// The disk a Talos `machine.install.disk` path (`/dev/sda`) or a
    /// `machine.install.diskSelector` mapping selects, if any.
    pub(crate) fn select_install_disk(
        &self,
        disk: Option<&str>,
        selector: Option<&serde_yaml_ng::Value>,
    ) -> Result<&DiskInfo, String> {
        if let Some(sel) = selector.and_then(|v| v.as_mapping()) {
            return self
                .disks
                .iter()
                .find(|d| selector_matches(d, sel))
                .ok_or_else(|| "no disk found matching the install disk selector".to_string());
        }
        match disk {
            Some(path) => self
                .disks
                .iter()
                .find(|d| d.dev_path() == path || d.dev_name == path)
                .ok_or_else(|| format!("install disk {path:?} not found")),
            None => Err("install disk or disk selector is required".into()),
        }
    }
}

pub(crate) fn glob(pattern: &str, value: &str) -> bool {
    // Talos selectors support shell globs; `*` is enough for the lab.
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let mut rest = value;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

fn disk_type(d: &DiskInfo) -> &'static str {
    match d.transport.as_str() {
        "nvme" => "nvme",
        "mmc" => "sd",
        _ if d.rotational => "hdd",
        _ => "ssd",
    }
}

fn selector_matches(d: &DiskInfo, sel: &serde_yaml_ng::Mapping) -> bool {
    sel.iter().all(|(k, v)| {
        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
            return true;
        };
        match k {
            "model" => glob(v, &d.model),
            "serial" => glob(v, &d.serial),
            "wwid" => glob(v, &d.wwid),
            "name" => glob(v, &d.dev_name) || glob(v, &d.dev_path()),
            "type" => v.eq_ignore_ascii_case(disk_type(d)),
            "size" => size_matches(v, d.size),
            // busPath, modalias, uuid: not modelled; don't block a match.
            _ => true,
        }
    })
}

fn size_matches(expr: &str, size: u64) -> bool {
    let expr = expr.trim();
    let (op, num) = if let Some(r) = expr.strip_prefix(">=") {
        (">=", r)
    } else if let Some(r) = expr.strip_prefix("<=") {
        ("<=", r)
    } else if let Some(r) = expr.strip_prefix('>') {
        (">", r)
    } else if let Some(r) = expr.strip_prefix('<') {
        ("<", r)
    } else {
        ("==", expr)
    };
    let num = num.trim();
    let digits: String = num.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(n) = digits.parse::<u64>() else {
        return true;
    };
    let unit = num[digits.len()..].trim().to_ascii_uppercase();
    let mult: u64 = match unit.as_str() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return true,
    };
    let want = n.saturating_mul(mult);
    match op {
        ">=" => size >= want,
        "<=" => size <= want,
        ">" => size > want,
        "<" => size < want,
        _ => size == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_unique_per_node() {
        let a = Hardware::default_for(0);
        let b = Hardware::default_for(1);
        assert_ne!(a.disks[0].serial, b.disks[0].serial);
        assert_eq!(a.links[0].mac, "02:00:00:00:00:01");
    }

    #[test]
    fn install_disk_selection() {
        let hw = Hardware::default_for(0);
        assert_eq!(
            hw.select_install_disk(Some("/dev/sda"), None)
                .unwrap()
                .dev_name,
            "sda"
        );
        assert!(hw.select_install_disk(Some("/dev/sdz"), None).is_err());
        let sel: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("model: Samsung SSD 980*\nsize: '>= 100GB'").unwrap();
        assert_eq!(
            hw.select_install_disk(None, Some(&sel)).unwrap().dev_name,
            "nvme0n1"
        );
        let sel: serde_yaml_ng::Value = serde_yaml_ng::from_str("type: hdd").unwrap();
        assert!(hw.select_install_disk(None, Some(&sel)).is_err());
    }
}
