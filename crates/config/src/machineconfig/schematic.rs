//! Image-factory schematics, computed offline: the ID is the hex SHA-256 of the
//! schematic as `go.yaml.in/yaml/v4` marshals it (image-factory
//! `pkg/schematic/schematic.go@v1.4.0`: `Marshal`, `ID`), which is what talhelper's
//! `--offline-mode` uses. The factory's POST handler computes the same `ID()` after a
//! strict decode, so the offline ID equals the online one for any schematic the
//! factory accepts. This tool never POSTs (it must work without a network).
//!
//! Also the installer and image URL templates (`th:pkg/talos/schematic.go@v3.1.16`).

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest, Sha256};

use super::gotmpl;
use super::nodeconfigs::ImageFactory;

/// `schematic:` / `imageSchematic:` (image-factory `type Schematic`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct Schematic {
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub overlay: Overlay,
    #[serde(default)]
    pub customization: Customization,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct Overlay {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub options: Option<Mapping>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Customization {
    #[serde(default)]
    pub embedded_machine_configuration: String,
    #[serde(default)]
    pub extra_kernel_args: Vec<String>,
    #[serde(default)]
    pub meta: Vec<MetaValue>,
    #[serde(default)]
    pub system_extensions: SystemExtensions,
    /// Talos's `imageropts.BootloaderKind` text; `none` is its zero value.
    #[serde(default)]
    pub bootloader: String,
    #[serde(default)]
    pub secureboot: SecureBoot,
    #[serde(default)]
    pub disk_image: DiskImage,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct MetaValue {
    pub key: u8,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemExtensions {
    #[serde(default)]
    pub official_extensions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecureBoot {
    #[serde(default)]
    pub enroll_keys: String,
    #[serde(default)]
    pub include_well_known_certificates: bool,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiskImage {
    #[serde(default)]
    pub sector_size: u64,
}

/// The bootloader names Talos knows (`bootloaderkind_enumer.go@v1.13.9`).
pub const BOOTLOADERS: &[&str] = &["none", "dual-boot", "sd-boot", "grub"];

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn strings(v: &[String]) -> Value {
    Value::Sequence(v.iter().map(|x| s(x)).collect())
}

/// Go's yaml encoder writes map keys sorted, nested maps too.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut e: Vec<(&Value, &Value)> = m.iter().collect();
            e.sort_by_key(|(k, _)| k.as_str().map(str::to_string).unwrap_or_default());
            Value::Mapping(e.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Sequence(q) => Value::Sequence(q.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

impl Schematic {
    /// The schematic as the factory marshals it: fields in struct order, empty
    /// (omitempty) fields left out, `customization` always present.
    pub fn canonical(&self) -> Value {
        let mut top = Mapping::new();
        if !self.owner.is_empty() {
            top.insert(s("owner"), s(&self.owner));
        }
        let o = &self.overlay;
        let options = o.options.as_ref().filter(|m| !m.is_empty());
        if !o.image.is_empty() || !o.name.is_empty() || options.is_some() {
            let mut m = Mapping::new();
            m.insert(s("image"), s(&o.image));
            m.insert(s("name"), s(&o.name));
            if let Some(opts) = options {
                m.insert(s("options"), sorted(&Value::Mapping(opts.clone())));
            }
            top.insert(s("overlay"), Value::Mapping(m));
        }
        let c = &self.customization;
        let mut m = Mapping::new();
        if !c.embedded_machine_configuration.is_empty() {
            m.insert(
                s("embeddedMachineConfiguration"),
                s(&c.embedded_machine_configuration),
            );
        }
        if !c.extra_kernel_args.is_empty() {
            m.insert(s("extraKernelArgs"), strings(&c.extra_kernel_args));
        }
        if !c.meta.is_empty() {
            let items = c
                .meta
                .iter()
                .map(|mv| {
                    let mut e = Mapping::new();
                    e.insert(s("key"), Value::Number(mv.key.into()));
                    e.insert(s("value"), s(&mv.value));
                    Value::Mapping(e)
                })
                .collect();
            m.insert(s("meta"), Value::Sequence(items));
        }
        if !c.system_extensions.official_extensions.is_empty() {
            let mut e = Mapping::new();
            e.insert(
                s("officialExtensions"),
                strings(&c.system_extensions.official_extensions),
            );
            m.insert(s("systemExtensions"), Value::Mapping(e));
        }
        if !c.bootloader.is_empty() && c.bootloader != "none" {
            m.insert(s("bootloader"), s(&c.bootloader));
        }
        let sb = &c.secureboot;
        if !sb.enroll_keys.is_empty() || sb.include_well_known_certificates {
            let mut e = Mapping::new();
            if !sb.enroll_keys.is_empty() {
                e.insert(s("enrollKeys"), s(&sb.enroll_keys));
            }
            if sb.include_well_known_certificates {
                e.insert(s("includeWellKnownCertificates"), Value::Bool(true));
            }
            m.insert(s("secureboot"), Value::Mapping(e));
        }
        if c.disk_image.sector_size != 0 {
            let mut e = Mapping::new();
            e.insert(
                s("sectorSize"),
                Value::Number(c.disk_image.sector_size.into()),
            );
            m.insert(s("diskImage"), Value::Mapping(e));
        }
        top.insert(s("customization"), Value::Mapping(m));
        Value::Mapping(top)
    }

    /// The bytes the factory hashes (and talhelper POSTs online).
    pub fn marshal(&self) -> String {
        super::yaml::emit(&self.canonical(), 4)
    }

    /// The schematic ID, offline.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.marshal().as_bytes()))
    }
}

/// `machineSpec` with talhelper's defaults applied (`Node.GetMachineSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub mode: String,
    pub arch: String,
    pub secureboot: bool,
    pub use_uki: bool,
    pub boot_method: String,
    pub image_suffix: String,
}

fn tmpl_data(pairs: &[(&str, Value)]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v.clone());
    }
    Value::Mapping(m)
}

/// The installer image for a schematic ID (talhelper's `GetInstallerURL`).
pub fn installer_url(
    factory: &ImageFactory,
    spec: &Spec,
    id: &str,
    version: &str,
) -> Result<String, String> {
    let data = tmpl_data(&[
        ("RegistryURL", s(factory.registry())),
        ("ID", s(id)),
        ("Version", s(version)),
        ("Mode", s(&spec.mode)),
        ("Secureboot", Value::Bool(spec.secureboot)),
    ]);
    gotmpl::render(factory.installer_tmpl(), &data, &gotmpl::Names::Plain)
}

/// The boot image URL (talhelper's `GetImageURL`; used by `genurl image`, which
/// this tool does not have, but kept so a template error is caught here too).
pub fn image_url(
    factory: &ImageFactory,
    spec: &Spec,
    id: &str,
    version: &str,
) -> Result<String, String> {
    let suffix = if !spec.image_suffix.is_empty() {
        format!(".{}", spec.image_suffix)
    } else {
        match spec.boot_method.as_str() {
            "" => ".iso".into(),
            "iso" if spec.secureboot && spec.use_uki => ".efi".into(),
            "iso" => ".iso".into(),
            // Sic: talhelper's own spelling.
            "disk-image" => ".raw.zxt".into(),
            _ => String::new(),
        }
    };
    let data = tmpl_data(&[
        ("BootMethod", s(&spec.boot_method)),
        ("Suffix", s(&suffix)),
        ("Protocol", s(factory.protocol())),
        ("RegistryURL", s(factory.registry())),
        ("ID", s(id)),
        ("Version", s(version)),
        ("Mode", s(&spec.mode)),
        ("Arch", s(&spec.arch)),
        ("Secureboot", Value::Bool(spec.secureboot)),
        ("UseUKI", Value::Bool(spec.use_uki)),
    ]);
    gotmpl::render(factory.image_tmpl(), &data, &gotmpl::Names::Plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sch(yaml: &str) -> Schematic {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// image-factory `pkg/schematic/schematic_test.go@v1.4.0` (TestID, TestUnmarshalID)
    /// and talhelper `pkg/talos/schematic_test.go@v3.1.16`.
    #[test]
    fn ids_match_the_factory_and_talhelper_vectors() {
        let cases = [
            (
                "{}",
                "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba",
            ),
            (
                "customization: {extraKernelArgs: []}",
                "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba",
            ),
            (
                "customization: {extraKernelArgs: [noapic, nolapic]}",
                "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c",
            ),
            (
                "customization: {extraKernelArgs: [noapic, nolapic], systemExtensions: {}}",
                "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c",
            ),
            (
                "customization: {meta: [{key: 10, value: foo}]}",
                "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f",
            ),
            (
                "customization: {secureboot: {includeWellKnownCertificates: true}}",
                "fa8e05f142a851d3ee568eb0a8e5841eaf6b0ebc8df9a63df16ac5ed2c04f3e6",
            ),
            (
                "customization: {diskImage: {sectorSize: 4096}}",
                "92833e9ddd9bb9e11b2464fa5525429f01866306d52ebd882ee08d7918f6d1ea",
            ),
            (
                "overlay: {name: rpi_generic, image: siderolabs/sbc-raspberrypi}",
                "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9",
            ),
            (
                "overlay: {name: rpi_generic, image: siderolabs/sbc-raspberrypi}\ncustomization: {}",
                "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9",
            ),
            (
                "customization: {systemExtensions: {officialExtensions: [siderolabs/drbd, siderolabs/zfs]}}",
                "98442b5bb4e8d050f30978ce3e6ec22e7bf534d57cafcd51313235128057e612",
            ),
            (
                "customization: {extraKernelArgs: [hihi, hehe]}",
                "ff5083b14ccb03821ea738d712ac08a82b44d2693013622059edaae286665239",
            ),
            (
                "customization: {extraKernelArgs: [net.ifnames=0], systemExtensions: {officialExtensions: [siderolabs/tailscale]}}",
                "104c23dfe7c5bfeff6a4cc7e166d8b3bba0f371760592c7677c90c822bb1d109",
            ),
        ];
        for (yaml, want) in cases {
            let sc = sch(yaml);
            assert_eq!(sc.id(), want, "{yaml}\n{}", sc.marshal());
        }
    }

    /// Schematic IDs the factory's own profile tests expect as the schematic
    /// extension's tarball name (internal/profile/profile_test.go@v1.4.0): meta with
    /// extensions, an overlay with a tagged image, a long extension list, and a
    /// multi-line embedded machine configuration (a literal block scalar).
    #[test]
    fn ids_match_the_factory_profile_vectors() {
        let cases = [
            (
                "customization: {systemExtensions: {officialExtensions: [siderolabs/amd-ucode, siderolabs/intel-ucode]}, extraKernelArgs: [noapic, nolapic], meta: [{key: 10, value: foo}]}",
                "6ba13d510dcc57f233b9b498d34a3c919c1abdd5675b46ad53cf4f2e66362f82",
            ),
            (
                "customization: {extraKernelArgs: [noapic, nolapic], systemExtensions: {officialExtensions: [siderolabs/amd-ucode, siderolabs/intel-ucode]}}\noverlay: {name: rpi_generic, image: 'ghcr.io/siderolabs/sbc-raspberrypi:v0.1.0'}",
                "1da25204d18e6db95cb65ce2e38424b2ad94b2519a53aef34e45f07cc73ca5e8",
            ),
            (
                "customization: {systemExtensions: {officialExtensions: [siderolabs/nvidia-container-toolkit, siderolabs/nvidia-open-gpu-kernel-modules, siderolabs/nonfree-kmod-nvidia, siderolabs/nvidia-fabricmanager, siderolabs/i915-ucode, siderolabs/amdgpu-firmware]}}",
                "42c5a897579913a97ad7edc56c0d858bc4dd8639951e02b084edbb2e190a7898",
            ),
            (
                "customization:\n  embeddedMachineConfiguration: \"apiVersion: v1alpha1\\nkind: HostnameConfig\\nhostname: worker-33\"",
                "02f29f9a702fceec4fc2e2e51314d63710fc1b192ebb1629ac12301949d49c8c",
            ),
        ];
        for (yaml, want) in cases {
            let sc = sch(yaml);
            assert_eq!(sc.id(), want, "{yaml}\n{}", sc.marshal());
        }
    }

    #[test]
    fn canonical_text_uses_four_space_indent_and_struct_order() {
        let sc = sch("customization: {extraKernelArgs: [a]}\noverlay: {name: nm, image: i}");
        assert_eq!(
            sc.marshal(),
            "overlay:\n    image: i\n    name: nm\ncustomization:\n    extraKernelArgs:\n        - a\n"
        );
    }

    /// talhelper `pkg/talos/schematic_test.go@v3.1.16` `TestGetInstallerURL` shapes:
    /// default template, secureboot, a custom registry and a sprig template.
    #[test]
    fn installer_urls_follow_talhelper_templates() {
        let spec = |mode: &str, sb: bool| Spec {
            mode: mode.into(),
            arch: "amd64".into(),
            secureboot: sb,
            use_uki: false,
            boot_method: "iso".into(),
            image_suffix: String::new(),
        };
        let id = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
        let f = ImageFactory::default();
        assert_eq!(
            installer_url(&f, &spec("metal", false), id, "v1.13.0").unwrap(),
            format!("factory.talos.dev/metal-installer/{id}:v1.13.0")
        );
        assert_eq!(
            installer_url(&f, &spec("metal", true), id, "v1.13.0").unwrap(),
            format!("factory.talos.dev/metal-installer-secureboot/{id}:v1.13.0")
        );
        let custom = ImageFactory {
            registry_url: Some("my.registry.io".into()),
            installer_url_tmpl: Some(
                "{{ .RegistryURL }}/{{ if hasPrefix \"aws\" .Mode }}aws{{ else }}{{ .Mode | trim }}{{ end }}-installer{{ or (and .Secureboot \"-secureboot\") \"\" }}/{{ .ID }}:{{ print .Version }}".into(),
            ),
            ..Default::default()
        };
        assert_eq!(
            installer_url(&custom, &spec("aws-x", false), "abc", "v1.12.1").unwrap(),
            "my.registry.io/aws-installer/abc:v1.12.1"
        );
        assert_eq!(
            installer_url(&custom, &spec(" metal ", true), "abc", "v1.12.1").unwrap(),
            "my.registry.io/metal-installer-secureboot/abc:v1.12.1"
        );
        assert_eq!(
            image_url(
                &f,
                &Spec {
                    secureboot: true,
                    use_uki: true,
                    ..spec("metal", true)
                },
                id,
                "v1.13.0"
            )
            .unwrap(),
            format!("https://factory.talos.dev/image/{id}/v1.13.0/metal-amd64-secureboot-uki.efi")
        );
    }
}
