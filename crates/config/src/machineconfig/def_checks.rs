//! The checks on a loaded definition that talhelper makes before generating
//! (docs: talos-config.md §5.6), plus what keeps values out of file names, image
//! references and talosconfig (issue 12): split from talconfig.rs by job.

use super::error::ConfigError;
use super::talconfig::{parse_k8s_version, valid_hostname, ClusterDefinition, Node};

impl ClusterDefinition {
    /// talhelper's own checks on the definition (before any rendering).
    pub(super) fn check_basics(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.cluster_name.trim().is_empty() {
            return Err(self.err(
                &["clusterName"],
                "clusterName is empty".into(),
                "set clusterName, e.g. `kubernetes`",
            ));
        }
        super::checks::cluster_name(&c.cluster_name).map_err(|m| {
            self.err(
                &["clusterName"],
                m,
                "use a plain name such as `kubernetes`; output goes to `<clusterName>-<hostname>.yaml`",
            )
        })?;
        for (path, v) in [
            ("talosVersion", c.talos_version.as_deref().unwrap_or("")),
            ("kubernetesVersion", c.kubernetes_version.as_str()),
            ("endpoint", c.endpoint.as_str()),
            ("domain", c.domain.as_deref().unwrap_or("")),
        ] {
            super::checks::single_line(path, v).map_err(|m| {
                self.err(
                    &[path],
                    m,
                    "a talenv value or variable holds a line break; keep it on one line",
                )
            })?;
        }
        if let Some(v) = &c.talos_version {
            super::contract::Contract::parse(v).map_err(|m| {
                self.err(
                    &["talosVersion"],
                    m,
                    "use a Talos release such as v1.12.6 or v1.13.9",
                )
            })?;
        }
        match parse_k8s_version(&c.kubernetes_version) {
            None => {
                return Err(self.err(
                    &["kubernetesVersion"],
                    format!(
                        "kubernetesVersion `{}` is not a version like v1.35.3",
                        c.kubernetes_version.escape_debug()
                    ),
                    "write it as vMAJOR.MINOR.PATCH",
                ))
            }
            // Talos runs Kubernetes 1.x only (compatibility/kubernetes.go).
            Some((major, ..)) if major != 1 => {
                return Err(self.err(
                    &["kubernetesVersion"],
                    format!(
                        "kubernetesVersion `{}`: there is no Kubernetes {major}.x; Talos runs Kubernetes 1.x",
                        c.kubernetes_version
                    ),
                    "write a Kubernetes 1.x release, e.g. v1.35.3",
                ))
            }
            Some(_) => {}
        }
        for (field, list) in [
            ("additionalMachineCertSans", &c.additional_machine_cert_sans),
            (
                "additionalApiServerCertSans",
                &c.additional_api_server_cert_sans,
            ),
        ] {
            check_sans(list).map_err(|m| {
                self.err(
                    &[field],
                    format!("{field}: {m}"),
                    "list IP addresses or DNS names",
                )
            })?;
        }
        if let Err(m) = super::net::check_endpoint(&c.endpoint) {
            return Err(self.err(
                &["endpoint"],
                m,
                "write it as https://<VIP or DNS name>:6443",
            ));
        }
        for (field, nets) in [
            ("clusterPodNets", &c.cluster_pod_nets),
            ("clusterSvcNets", &c.cluster_svc_nets),
        ] {
            for n in nets {
                if super::net::parse_cidr(n).is_none() {
                    return Err(self.err(
                        &[field],
                        format!("{field}: `{n}` is not a CIDR"),
                        "write networks as address/prefix, e.g. 10.42.0.0/16",
                    ));
                }
            }
        }
        if let Some(cni) = &c.cni_config {
            if !["flannel", "custom", "none"].contains(&cni.name.as_str()) {
                return Err(self.err(
                    &["cniConfig", "name"],
                    format!(
                        "cniConfig.name `{}` is not flannel, custom or none",
                        cni.name
                    ),
                    "Talos knows only these three CNI settings",
                ));
            }
            if cni.name != "custom" && !cni.urls.is_empty() {
                return Err(self.err(
                    &["cniConfig", "urls"],
                    "cniConfig.urls is only allowed with name: custom".into(),
                    "remove the urls or set name: custom",
                ));
            }
        }
        if c.nodes.is_empty() {
            return Err(self.err(
                &["nodes"],
                "no nodes defined".into(),
                "add at least one control-plane node under `nodes:`",
            ));
        }
        Ok(())
    }

    /// One node, group settings folded in; errors point at its line.
    pub(super) fn check_node(&self, i: usize, n: &Node, line: usize) -> Result<(), ConfigError> {
        let bad = |m: String, hint: &str| ConfigError::input(&self.source, line, m, hint);
        if !valid_hostname(&n.hostname) {
            return Err(bad(
                format!(
                    "nodes[{i}]: hostname `{}` is not a valid hostname",
                    n.hostname
                ),
                "use lowercase letters, digits and `-` (RFC 1123)",
            ));
        }
        if n.ip_address.trim().is_empty() {
            return Err(bad(
                format!("node {}: ipAddress is empty", n.hostname),
                "set the address the tool reaches the node on",
            ));
        }
        // The addresses go into talosconfig and are dialled: IPs or DNS names only.
        for a in n
            .ip_address
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            super::checks::node_address(a).map_err(|m| {
                bad(
                    format!("node {}: {m}", n.hostname),
                    "write the node's IP address (e.g. 10.0.0.11), several separated by commas",
                )
            })?;
        }
        if n.install_disk.is_none() && n.install_disk_selector.is_none() {
            return Err(bad(format!("node {}: neither installDisk nor installDiskSelector is set", n.hostname), "Talos needs to know where to install: set installDiskSelector (e.g. serial) or installDisk"));
        }
        for (field, v) in [
            ("installDisk", n.install_disk.as_deref()),
            (
                "machineSpec.mode",
                n.machine_spec.as_ref().and_then(|m| m.mode.as_deref()),
            ),
        ] {
            let v = v.unwrap_or("");
            let ok = super::checks::single_line(field, v).and_then(|_| {
                if field == "machineSpec.mode"
                    && !v
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    Err(format!(
                        "machineSpec.mode `{v}` is not a platform name such as metal"
                    ))
                } else {
                    Ok(())
                }
            });
            ok.map_err(|m| {
                bad(
                    format!("node {}: {m}", n.hostname),
                    "keep the value on one line, without spaces",
                )
            })?;
        }
        check_sans(&n.cert_sans).map_err(|m| {
            bad(
                format!("node {}: certSANs: {m}", n.hostname),
                "list IP addresses or DNS names",
            )
        })?;
        if let Some(url) = &n.talos_image_url {
            super::checks::single_line("talosImageURL", url).map_err(|m| {
                bad(
                    format!("node {}: {m}", n.hostname),
                    "a talenv value or variable holds a line break; keep it on one line",
                )
            })?;
            let last = url.rsplit('/').next().unwrap_or("");
            if last.contains(':') || url.contains('@') {
                return Err(bad(
                    format!(
                        "node {}: talosImageURL `{url}` carries a tag or digest",
                        n.hostname
                    ),
                    "drop the `:tag`; the tag is talosVersion",
                ));
            }
            super::checks::image_repository(url).map_err(|m| {
                bad(
                    format!("node {}: {m}", n.hostname),
                    "write the installer repository, e.g. factory.talos.dev/installer/<schematic>",
                )
            })?;
        }
        // talhelper's checkNodeMachineFiles (validator.go@v3.1.16), same texts.
        for f in &n.machine_files {
            if !["create", "append", "overwrite"].contains(&f.op.as_str()) {
                return Err(bad(format!("node {}: machineFiles: \"{}\" is not a valid operation name (create,append,overwrite)", n.hostname, f.op), "set op to create, append or overwrite"));
            }
            if !f.path.starts_with('/') {
                return Err(bad(
                    format!(
                        "node {}: machineFiles: \"{}\" is not a valid Unix file path",
                        n.hostname, f.path
                    ),
                    "write an absolute path such as /var/etc/motd",
                ));
            }
        }
        // talhelper's checkNodeNameServers (validator.go@v3.1.16), at every contract.
        if n.nameservers
            .iter()
            .any(|a| a.parse::<std::net::IpAddr>().is_err())
        {
            return Err(bad(
                format!(
                    "node {}: nameservers: {:?} is not a valid list of IP addresses",
                    n.hostname, n.nameservers
                ),
                "list nameservers as IP addresses",
            ));
        }
        // talhelper's checkNodeSchematic (validator.go@v3.1.16), where it runs: the
        // public factory, unless noSchematicValidate. The extension catalogue check
        // (talos-extensions.json) is not made here: the image factory itself refuses
        // unknown extensions when the image is built.
        if self.config.image_factory.registry() == super::nodeconfigs::DEFAULT_REGISTRY
            && !n.no_schematic_validate
        {
            for sc in [&n.schematic, &n.image_schematic].into_iter().flatten() {
                let exts = &sc.customization.system_extensions.official_extensions;
                for (k, e) in exts.iter().enumerate() {
                    if exts[..k].contains(e) {
                        return Err(bad(
                            format!(
                                "node {}: schematic: duplicate system extension \"{e}\"",
                                n.hostname
                            ),
                            "list each extension once (or set noSchematicValidate)",
                        ));
                    }
                }
                let o = &sc.overlay;
                if o.image.is_empty() != o.name.is_empty() {
                    return Err(bad(format!("node {}: schematic overlay: both `image` and `name` is required to be set", n.hostname), "set the overlay's image and name, e.g. siderolabs/sbc-raspberrypi and rpi_generic"));
                }
            }
        }
        for (j, dev) in n.network_interfaces.iter().enumerate() {
            // talhelper's checkNodeNetworkInterfaces (validator.go@v3.1.16), same texts.
            let name = dev.interface.as_deref().unwrap_or("");
            if dev.bond.is_some() && dev.bridge.is_some() {
                return Err(bad(format!("node {}: networkInterfaces[{j}]: interface has both bridge and bond section set \"{name}\"", n.hostname), "a link is either a bond or a bridge"));
            }
            if let Some(b) = &dev.bond {
                if !b.interfaces.is_empty() && !b.device_selectors.is_empty() {
                    return Err(bad(format!("node {}: networkInterfaces[{j}]: interface \"{name}\" has both interfaces and selectors set", n.hostname), "list the bond members either by name (interfaces) or by deviceSelectors"));
                }
            }
            for a in &dev.addresses {
                if super::net::parse_cidr(a).is_none() && a.parse::<std::net::IpAddr>().is_err() {
                    return Err(bad(format!("node {}: networkInterfaces[{j}] address `{a}` is not an address or CIDR", n.hostname), "write it as 10.0.0.5/24"));
                }
            }
            for r in &dev.routes {
                if r.gateway.is_none() && r.network.is_none() {
                    return Err(bad(format!("node {}: networkInterfaces[{j}] has a route with neither network nor gateway", n.hostname), "a route needs a gateway (default route) or a network"));
                }
            }
            if let Some(v) = &dev.vip {
                if v.ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(bad(
                        format!(
                            "node {}: networkInterfaces[{j}] vip `{}` is not an IP address",
                            n.hostname, v.ip
                        ),
                        "the VIP is a single address without prefix",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// certSANs lists: IPs or DNS names, and not more than a certificate can carry.
fn check_sans(list: &[String]) -> Result<(), String> {
    if list.len() > crate::limits::MAX_LIST_ENTRIES {
        return Err(format!(
            "{} entries, over the limit of {}",
            list.len(),
            crate::limits::MAX_LIST_ENTRIES
        ));
    }
    list.iter().try_for_each(|s| super::checks::cert_san(s))
}
