//! Before any node is touched: the target installer image of every node,
//! computed from the definition exactly as `gen config` renders it (the
//! machine config's `machine.install.image`: talosImageURL, image factory
//! schematic, secure boot), every node's running version, and the rules —
//! nodes answering, the Talos step allowed, Kubernetes supported by the target.

use std::collections::BTreeMap;

use crate::engine::{Cluster, Emitter, FlowError, GateError, Outcome, StepId};

use super::skew::{self, Version};
use super::UpgradeOptions;

/// What preflight found.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub target: Version,
    /// Installer image per node (hostname).
    pub images: BTreeMap<String, String>,
    /// Running version per answering node.
    pub versions: BTreeMap<String, String>,
    /// Nodes that do not answer, left out with `--force` (hostname, why).
    pub excused: Vec<(String, String)>,
}

/// The rules in one line, for plans.
pub fn rules_line() -> &'static str {
    "refuse unless every node answers (--force leaves the silent ones out), each host → target is one Talos minor (--allow-skip-minor: two, where the installer allows) and the cluster's Kubernetes runs on the target"
}

/// A string field of the v1alpha1 document of a rendered config
/// (`["machine", "install", "image"]`).
pub fn config_field(config: &[u8], path: &[&str]) -> Option<String> {
    let text = std::str::from_utf8(config).ok()?;
    let doc = text
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d).ok())
        .find(|d| d.get("machine").is_some())?;
    let mut cur = &doc;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().map(str::to_string)
}

/// The v1alpha1 document's `machine.install.image` of a rendered config.
pub fn install_image(config: &[u8]) -> Option<String> {
    config_field(config, &["machine", "install", "image"])
}

/// The config with `machine.install.image` set to `image` (the other documents
/// kept byte for byte). Unchanged when it already says so.
pub fn with_install_image(config: &[u8], image: &str) -> Result<Vec<u8>, String> {
    with_fields(
        config,
        &[(&["machine", "install", "image"], image.to_string())],
    )
}

/// The config with string fields of its v1alpha1 document set (mappings on
/// the way created); the other documents kept byte for byte, and the whole
/// config unchanged when every field already says so.
pub fn with_fields(config: &[u8], fields: &[(&[&str], String)]) -> Result<Vec<u8>, String> {
    if fields
        .iter()
        .all(|(p, v)| config_field(config, p).as_deref() == Some(v.as_str()))
    {
        return Ok(config.to_vec());
    }
    let text = std::str::from_utf8(config).map_err(|e| format!("config is not UTF-8: {e}"))?;
    let mut docs: Vec<String> = text.split("\n---\n").map(str::to_string).collect();
    let i = docs
        .iter()
        .position(|d| {
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d)
                .is_ok_and(|v| v.get("machine").is_some())
        })
        .ok_or("no v1alpha1 document with `machine`")?;
    let mut v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&docs[i]).map_err(|e| e.to_string())?;
    for (path, value) in fields {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut cur = &mut v;
        for p in parents {
            cur = cur
                .as_mapping_mut()
                .ok_or_else(|| format!("`{}` is not a mapping", path.join(".")))?
                .entry((*p).into())
                .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
        }
        cur.as_mapping_mut()
            .ok_or_else(|| format!("`{}` is not a mapping", path.join(".")))?
            .insert((*last).into(), value.as_str().into());
    }
    let mut doc = serde_yaml_ng::to_string(&v)
        .map_err(|e| e.to_string())?
        .trim_end()
        .to_string();
    if i + 1 == docs.len() && text.ends_with('\n') {
        doc.push('\n');
    }
    docs[i] = doc;
    Ok(docs.join("\n---\n").into_bytes())
}

/// Runs preflight, reported as the `preflight` step; a refusal lists every rule
/// broken. Nodes in `in_flight` (an earlier run requested their reboot) may be
/// silent: they are rebooting.
pub async fn run(
    cluster: &Cluster,
    opts: &UpgradeOptions,
    em: &Emitter,
    in_flight: &[String],
) -> Result<Preflight, FlowError> {
    let t0 = em.started();
    em.started_with(
        StepId::Preflight,
        None,
        "Version → every node; target image from the definition; skew rules",
    );
    let r = check(cluster, opts, em, in_flight).await;
    match &r {
        Ok(p) => em.finished(
            StepId::Preflight,
            None,
            Outcome::Done {
                detail: format!(
                    "target {}; {}",
                    p.target,
                    p.versions
                        .iter()
                        .map(|(h, v)| format!("{h} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            t0,
        ),
        Err(e) => em.finished(StepId::Preflight, None, crate::engine::flow::failed(e), t0),
    }
    r
}

fn refused(rules: Vec<String>, next: &str) -> FlowError {
    GateError::Refused {
        op: "upgrade talos",
        rule: if rules.len() == 1 {
            rules[0].clone()
        } else {
            format!("\n- {}", rules.join("\n- "))
        },
        next: next.into(),
    }
    .into()
}

async fn check(
    cluster: &Cluster,
    opts: &UpgradeOptions,
    em: &Emitter,
    in_flight: &[String],
) -> Result<Preflight, FlowError> {
    // 1. The images, from the rendered configs.
    let mut images = BTreeMap::new();
    let mut target: Option<Version> = match &opts.to {
        Some(t) => Some(Version::parse(t).ok_or_else(|| {
            refused(
                vec![format!("--to {t} is not a version (vX.Y.Z)")],
                "pass a release version, e.g. --to v1.13.9",
            )
        })?),
        None => None,
    };
    for n in &cluster.def.nodes {
        let config = cluster.config_of(n)?;
        let image = install_image(config).ok_or_else(|| {
            refused(
                vec![format!(
                    "{}: the rendered config has no machine.install.image",
                    n.hostname
                )],
                "set talosVersion (and talosImageURL) in the definition",
            )
        })?;
        let tag = skew::image_tag(&image).unwrap_or("");
        let t = match &target {
            Some(t) => t.clone(),
            None => {
                let v = Version::parse(tag).ok_or_else(|| {
                    refused(
                        vec![format!(
                            "{}: install image {image} has no version tag",
                            n.hostname
                        )],
                        "pass --to vX.Y.Z",
                    )
                })?;
                target = Some(v.clone());
                v
            }
        };
        if opts.to.is_some() && Version::parse(tag).is_some_and(|d| !d.same(&t)) {
            em.warning(
                StepId::Preflight,
                Some(&n.hostname),
                format!("the definition says {tag}, upgrading to {t}: set talosVersion: {t} in the definition, or a later `up`/`apply` writes the old install image back"),
            );
        }
        images.insert(n.hostname.clone(), skew::with_tag(&image, &t.to_string()));
    }
    let target = target.ok_or_else(|| {
        refused(
            vec!["no nodes in the definition".into()],
            "check the definition",
        )
    })?;
    // 2. Every node's version, each asked directly.
    let policy = opts.policy.with_budget(
        opts.policy
            .retry_budget
            .min(std::time::Duration::from_secs(2)),
    );
    let answers = futures::future::join_all(cluster.def.nodes.iter().map(|n| async move {
        let v = match cluster.mtls(n, policy) {
            Ok(c) => c.version().await.map(|v| v.tag).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        (n, v)
    }))
    .await;
    let mut versions = BTreeMap::new();
    let mut rules = Vec::new();
    let mut excused = Vec::new();
    for (n, v) in answers {
        match v {
            Ok(tag) => {
                versions.insert(n.hostname.clone(), tag);
            }
            Err(_) if in_flight.contains(&n.hostname) => {
                em.progress(
                    StepId::Preflight,
                    Some(&n.hostname),
                    "not answering: its upgrade is under way (requested by an earlier run); waiting for it comes next",
                );
            }
            Err(e) => {
                let why = format!("{} does not answer Version: {}", n.label(), first_line(&e));
                if opts.force {
                    em.warning(
                        StepId::Preflight,
                        Some(&n.hostname),
                        format!(
                            "{why}; left out of the upgrade (--force){}",
                            if n.control_plane {
                                "; etcd runs with one member fewer throughout"
                            } else {
                                ""
                            }
                        ),
                    );
                    excused.push((n.hostname.clone(), why));
                } else {
                    rules.push(format!(
                        "{why} (a {} down)",
                        if n.control_plane {
                            "control plane"
                        } else {
                            "worker"
                        }
                    ));
                }
            }
        }
    }
    // LifecycleService (1.13+) does not pass extraKernelArgs to the installer on
    // GRUB nodes unless grubUseUKICmdline (Talos 1.13 docs, "Known limitation").
    for n in &cluster.def.nodes {
        let config = cluster.config_of(n)?;
        if kernel_args_dropped(config)
            && !opts.legacy_upgrade
            && versions.get(&n.hostname).is_some_and(|v| lifecycle_api(v))
        {
            em.warning(
                StepId::Preflight,
                Some(&n.hostname),
                "machine.install.extraKernelArgs is set and grubUseUKICmdline is not: the 1.13 upgrade API does not pass kernel arguments to the installer on GRUB nodes; check them after the upgrade (`talos read /proc/cmdline`), or pass --legacy-upgrade (MachineService.Upgrade, Talos's documented stopgap)",
            );
        }
    }
    // 3. Each host's step to the target.
    for (host, tag) in &versions {
        match Version::parse(tag) {
            Some(v) => {
                if let Err(e) = skew::talos_step(&v, &target, opts.allow_skip_minor) {
                    rules.push(format!("{host}: {e}"));
                }
            }
            None => rules.push(format!(
                "{host}: running version {tag:?} is not a release version"
            )),
        }
    }
    // 4. The cluster's Kubernetes on the target Talos.
    if let Some(Ok(k)) = cluster.kube().await {
        match crate::kube::nodes::kubelet_versions(&k).await {
            Ok(list) => {
                for (node, kv) in list {
                    if let Some(kv) = Version::parse(&kv) {
                        if let Err(e) = skew::kubernetes_on(&kv, &target) {
                            rules.push(format!("Node {node}: {e}; upgrade Kubernetes first"));
                        }
                    }
                }
            }
            Err(e) => em.warning(
                StepId::Preflight,
                None,
                format!("Kubernetes versions not checked: {e}"),
            ),
        }
    }
    if !rules.is_empty() {
        return Err(refused(
            rules,
            "fix what is named (bring the node back, upgrade in steps), then run the same command again; --force leaves silent nodes out",
        ));
    }
    Ok(Preflight {
        target,
        images,
        versions,
        excused,
    })
}

/// The node's running version takes LifecycleService (Talos ≥ 1.13).
fn lifecycle_api(tag: &str) -> bool {
    Version::parse(tag).is_some_and(|v| v.major > 1 || v.minor >= 13)
}

/// extraKernelArgs set without grubUseUKICmdline: true.
fn kernel_args_dropped(config: &[u8]) -> bool {
    let Some(doc) = std::str::from_utf8(config).ok().and_then(|t| {
        t.split("\n---")
            .filter_map(|d| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d).ok())
            .find(|d| d.get("machine").is_some())
    }) else {
        return false;
    };
    let install = doc.get("machine").and_then(|m| m.get("install"));
    let args = install
        .and_then(|i| i.get("extraKernelArgs"))
        .and_then(|a| a.as_sequence())
        .is_some_and(|a| !a.is_empty());
    let uki = install
        .and_then(|i| i.get("grubUseUKICmdline"))
        .and_then(|u| u.as_bool())
        == Some(true);
    args && !uki
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "version: v1alpha1\nmachine:\n  type: worker\n  install:\n    disk: /dev/sda\n    image: ghcr.io/siderolabs/installer:v1.12.6\ncluster:\n  id: x\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w1\n";

    #[test]
    fn the_install_image_is_read_and_replaced_in_v1alpha1_only() {
        assert_eq!(
            install_image(CFG.as_bytes()).as_deref(),
            Some("ghcr.io/siderolabs/installer:v1.12.6")
        );
        let out =
            with_install_image(CFG.as_bytes(), "ghcr.io/siderolabs/installer:v1.13.9").unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            install_image(&out).as_deref(),
            Some("ghcr.io/siderolabs/installer:v1.13.9")
        );
        assert!(
            text.ends_with("---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w1\n"),
            "{text}"
        );
        assert!(text.contains("disk: /dev/sda"), "{text}");
        assert!(!kernel_args_dropped(CFG.as_bytes()));
        let with_args = CFG.replace(
            "    disk: /dev/sda\n",
            "    disk: /dev/sda\n    extraKernelArgs: [net.ifnames=0]\n",
        );
        assert!(kernel_args_dropped(with_args.as_bytes()));
        let uki = with_args.replace(
            "    disk: /dev/sda\n",
            "    disk: /dev/sda\n    grubUseUKICmdline: true\n",
        );
        assert!(!kernel_args_dropped(uki.as_bytes()));
        // Already there: byte for byte the same.
        assert_eq!(
            with_install_image(CFG.as_bytes(), "ghcr.io/siderolabs/installer:v1.12.6").unwrap(),
            CFG.as_bytes()
        );
    }
}
