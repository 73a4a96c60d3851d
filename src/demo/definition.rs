//! The lab as an operator's cluster definition: one node per lab node (`cp<i>`
//! or `worker<i>` at its lab IP), written as a talhelper `talconfig.yaml` with a
//! secrets bundle beside it, so `demo` renders every node's config, workers
//! included, exactly as `gen config` does from the same files.

use std::path::PathBuf;

use endsys_lab::Lab;

use crate::engine::{Definition, DiskTarget, FlowError, NodeDef};

/// The cluster definition of a lab: node i is `cp<i>` or `worker<i>` at its lab IP,
/// install disk chosen by model (the NVMe), endpoint the first control plane.
pub fn lab_definition(lab: &Lab, controlplanes: usize, cluster: &str) -> Definition {
    let mut nodes = Vec::new();
    let (mut cp, mut w) = (0, 0);
    for (i, n) in lab.nodes().iter().enumerate() {
        let control_plane = i < controlplanes;
        let hostname = if control_plane {
            cp += 1;
            format!("cp{cp}")
        } else {
            w += 1;
            format!("worker{w}")
        };
        nodes.push(NodeDef {
            hostname,
            address: n.ip().to_string(),
            control_plane,
            install_disk: Some(DiskTarget::Selector(vec![(
                "model".into(),
                "Samsung SSD 980*".into(),
            )])),
            links: vec![],
        });
    }
    Definition {
        cluster: cluster.to_string(),
        endpoint: format!("https://{}:6443", lab.nodes()[0].ip()),
        nodes,
    }
}

/// The lab as a talhelper `talconfig.yaml`, the format operators keep in git.
pub fn lab_talconfig(def: &Definition, talos_version: &str) -> String {
    let mut out = format!(
        "# Written by `endsys-bootstrap demo`: {} simulated node(s) on loopback.\nclusterName: {}\ntalosVersion: {talos_version}\nkubernetesVersion: v1.35.0\nendpoint: {}\nnodes:\n",
        def.nodes.len(),
        def.cluster,
        def.endpoint
    );
    for n in &def.nodes {
        out.push_str(&format!(
            "  - hostname: {}\n    ipAddress: {}\n    controlPlane: {}\n",
            n.hostname, n.address, n.control_plane
        ));
        match &n.install_disk {
            Some(DiskTarget::Selector(fields)) => {
                out.push_str("    installDiskSelector:\n");
                for (k, v) in fields {
                    out.push_str(&format!("      {k}: \"{v}\"\n"));
                }
            }
            Some(DiskTarget::Path(p)) => out.push_str(&format!("    installDisk: {p}\n")),
            None => {}
        }
    }
    out
}

/// Writes `talconfig.yaml` and a fresh `talsecret.yaml` (0600) into `dir`.
pub fn write_lab_files(
    dir: &std::path::Path,
    def: &Definition,
    talos_version: &str,
    secrets_from: Option<&std::path::Path>,
) -> Result<(PathBuf, PathBuf), FlowError> {
    let local = |p: &std::path::Path, e: String| FlowError::Local {
        path: p.display().to_string(),
        detail: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| local(dir, e.to_string()))?;
    let talconfig = dir.join("talconfig.yaml");
    std::fs::write(&talconfig, lab_talconfig(def, talos_version))
        .map_err(|e| local(&talconfig, e.to_string()))?;
    let secrets = dir.join("talsecret.yaml");
    if let (false, Some(from)) = (secrets.exists(), secrets_from) {
        let text = std::fs::read(from).map_err(|e| local(from, e.to_string()))?;
        crate::talos::talosconfig::write_private(&secrets, &text)
            .map_err(|e| local(&secrets, e.to_string()))?;
    }
    if !secrets.exists() {
        let bundle = crate::machineconfig::SecretsBundle::generate()
            .map_err(|e| FlowError::Source(e.to_string()))?;
        crate::talos::talosconfig::write_private(&secrets, bundle.to_yaml().as_bytes())
            .map_err(|e| local(&secrets, e.to_string()))?;
    }
    Ok((talconfig, secrets))
}
