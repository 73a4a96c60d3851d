//! Contract 1.14 install document: `UnattendedInstallConfig` replaces
//! `machine.install` (gen/init.go@v1.14.0-rc.1 emits it only when an install disk is
//! given; installation is opt-in from 1.14). The disk selector becomes the CEL
//! expression Talos itself builds from a legacy `installDiskSelector`
//! (`InstallConfig.DiskMatchExpression`, types/v1alpha1/v1alpha1_provider.go@rc.1),
//! so the same disk is chosen before and after the move.

use serde_yaml_ng::Value;

use super::{map, s};
use crate::machineconfig::talconfig::DiskSelector;

/// `disk.dev_path == "<disk>"`, what the generator writes for an install disk path.
pub fn dev_path_match(disk: &str) -> String {
    format!("disk.dev_path == {}", quote(disk))
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Bytes of a talconfig size (`256GB`, `1TiB`, `1048576`), as go-humanize parses it.
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" | "ki" => 1024.0,
        "mib" | "mi" => 1024f64.powi(2),
        "gib" | "gi" => 1024f64.powi(3),
        "tib" | "ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// The CEL expression Talos derives from a legacy install disk selector, wrapped the
/// way cel-go's unparser wraps it (after `&&` once a line reaches column 80).
pub fn selector_match(sel: &DiskSelector) -> Result<String, String> {
    let mut terms = Vec::new();
    let glob = |pat: &str, field: &str| format!("glob({}, disk.{field})", quote(pat));
    if let Some(size) = &sel.size {
        let size = size.trim();
        let (op, rest) = ["<=", ">=", "==", "<", ">"]
            .iter()
            .find_map(|op| size.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("==", size));
        let n = parse_size(rest)
            .ok_or_else(|| format!("installDiskSelector.size `{size}` is not a size"))?;
        terms.push(format!("disk.size {op} {n}u"));
    }
    for (v, field) in [
        (&sel.uuid, "uuid"),
        (&sel.wwid, "wwid"),
        (&sel.model, "model"),
    ] {
        if let Some(v) = v {
            terms.push(glob(v, field));
        }
    }
    if sel.name.is_some() {
        return Err("installDiskSelector.name is not supported by Talos's disk selector from contract 1.14 (selector on name is not supported)".into());
    }
    for (v, field) in [(&sel.serial, "serial"), (&sel.modalias, "modalias")] {
        if let Some(v) = v {
            terms.push(glob(v, field));
        }
    }
    terms.push("disk.transport != \"\"".into());
    if let Some(t) = &sel.kind {
        terms.push(
            match t.as_str() {
                "nvme" => "disk.transport == \"nvme\"",
                "sd" => "disk.transport == \"mmc\"",
                "hdd" => "disk.rotational",
                "ssd" => "!disk.rotational",
                other => return Err(format!("unsupported disk type \"{other}\"")),
            }
            .to_string(),
        );
    }
    if let Some(b) = &sel.bus_path {
        terms.push(glob(b, "bus_path"));
    }
    terms.push("!disk.readonly".into());
    terms.push("!disk.cdrom".into());
    Ok(join_wrapped(&terms))
}

fn join_wrapped(terms: &[String]) -> String {
    let mut out = String::new();
    let mut line_start = 0;
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            // cel-go counts the operator's internal name `_&&_` (4 characters).
            if out.len() - line_start + 4 >= 80 {
                line_start = out.len();
                out.push_str(" &&\n");
            } else {
                out.push_str(" && ");
            }
        }
        out.push_str(t);
    }
    out
}

/// `UnattendedInstallConfig {installer: {image}, provisioning: {diskSelector:
/// {match}, wipe: false}}`.
pub fn unattended_install(image: &str, disk_match: &str) -> Value {
    map(&[
        ("apiVersion", s("v1alpha1")),
        ("kind", s("UnattendedInstallConfig")),
        ("installer", map(&[("image", s(image))])),
        (
            "provisioning",
            map(&[
                ("diskSelector", map(&[("match", s(disk_match))])),
                ("wipe", Value::Bool(false)),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(f: impl FnOnce(&mut DiskSelector)) -> DiskSelector {
        let mut d: DiskSelector = serde_yaml_ng::from_str("{}").unwrap();
        f(&mut d);
        d
    }

    /// The five vectors of v1alpha1_provider_test.go@v1.14.0-rc.1 (sizes as numbers).
    #[test]
    fn cel_matches_upstream_vectors() {
        let cases = [
            (
                sel(|d| d.size = Some("<= 262144".into())),
                "disk.size <= 262144u && disk.transport != \"\" && !disk.readonly && !disk.cdrom",
            ),
            (
                sel(|d| {
                    d.size = Some("1048576".into());
                    d.kind = Some("nvme".into())
                }),
                "disk.size == 1048576u && disk.transport != \"\" && disk.transport == \"nvme\" && !disk.readonly &&\n!disk.cdrom",
            ),
            (
                sel(|d| {
                    d.size = Some("1048576".into());
                    d.kind = Some("hdd".into());
                    d.modalias = Some("pci:1234:5678*".into())
                }),
                "disk.size == 1048576u && glob(\"pci:1234:5678*\", disk.modalias) && disk.transport != \"\" &&\ndisk.rotational && !disk.readonly && !disk.cdrom",
            ),
            (
                sel(|d| d.kind = Some("ssd".into())),
                "disk.transport != \"\" && !disk.rotational && !disk.readonly && !disk.cdrom",
            ),
            (
                sel(|d| d.bus_path = Some("/pci-0000:00:1f.2/*".into())),
                "disk.transport != \"\" && glob(\"/pci-0000:00:1f.2/*\", disk.bus_path) && !disk.readonly &&\n!disk.cdrom",
            ),
            (
                sel(|d| d.uuid = Some("0000-0001-*".into())),
                "glob(\"0000-0001-*\", disk.uuid) && disk.transport != \"\" && !disk.readonly && !disk.cdrom",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(selector_match(&s).unwrap(), want);
        }
    }

    #[test]
    fn sizes_with_units_and_name_refused() {
        assert_eq!(parse_size("256GB"), Some(256_000_000_000));
        assert_eq!(parse_size("1TiB"), Some(1 << 40));
        assert!(selector_match(&sel(|d| d.name = Some("/dev/sda".into()))).is_err());
        assert!(selector_match(&sel(|d| d.size = Some("big".into()))).is_err());
    }
}
