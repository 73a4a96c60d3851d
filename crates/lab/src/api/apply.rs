//! ApplyConfiguration as the node decides it: Talos 1.12's maintenance server
//! (TRY/REBOOT/AUTO only, parse errors as `Unknown`), 1.13 maintenance (an
//! incomplete config accepted and kept waiting, STAGED), and configured mode
//! (admin only, AUTO resolved to NO_REBOOT or REBOOT, changes that cannot apply
//! live refused for NO_REBOOT/TRY, dry runs, one apply at a time).

use std::sync::Arc;

use tonic::{Response, Status};

use super::gate::{not_authorized, LabApi, ADMIN};
use crate::config::{ConfigError, NodeConfig};
use crate::node::data::NodeState;
use crate::tls::{ApiMode, LabConnInfo};
use endsys_talos::api::machine::{self, apply_configuration_request::Mode as ApplyMode};

fn mode_flag(mode: i32) -> String {
    let name = ApplyMode::try_from(mode)
        .map(|m| m.as_str_name())
        .unwrap_or("UNKNOWN");
    name.to_ascii_lowercase().replace('_', "-")
}

impl LabApi {
    fn apply_response(
        mode: ApplyMode,
        details: &str,
    ) -> Response<machine::ApplyConfigurationResponse> {
        Response::new(machine::ApplyConfigurationResponse {
            messages: vec![machine::ApplyConfiguration {
                metadata: None,
                warnings: vec![],
                mode: mode as i32,
                mode_details: details.into(),
            }],
        })
    }

    pub(super) fn apply_inner(
        &self,
        info: &LabConnInfo,
        req: machine::ApplyConfigurationRequest,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        let node = &self.node;
        let mode = ApplyMode::try_from(req.mode).unwrap_or(ApplyMode::Reboot);
        match info.mode {
            ApiMode::Maintenance112 => {
                if !matches!(mode, ApplyMode::Try | ApplyMode::Reboot | ApplyMode::Auto) {
                    return Err(Status::unimplemented(format!(
                        "apply configuration --mode='{}' is not supported in maintenance mode",
                        mode_flag(req.mode)
                    )));
                }
                let cfg = match NodeConfig::parse_for(&req.data, &node.talos_version()) {
                    Ok(c) => c,
                    Err(ConfigError::Parse(e)) => {
                        return Err(Status::unknown(format!("failed to parse config: {e}")))
                    }
                    Err(ConfigError::NoV1alpha1) => {
                        return Err(Status::invalid_argument(
                            "configuration validation failed: the machine configuration doesn't contain v1alpha1 config",
                        ))
                    }
                    Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(format!(
                            "configuration validation failed: {e}"
                        )))
                    }
                };
                if req.dry_run {
                    return Ok(Response::new(machine::ApplyConfigurationResponse {
                        messages: vec![machine::ApplyConfiguration {
                            mode_details: "Dry run summary:\nNode is running in maintenance mode and does not have a config yet.".into(),
                            ..Default::default()
                        }],
                    }));
                }
                if node.state() != NodeState::Maintenance {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                let marker = self.spawn(|n, gen| async move { n.leave_maintenance(gen).await });
                // 1.12 replies with warnings only; mode fields unset.
                Ok(Self::with_marker(
                    Response::new(machine::ApplyConfigurationResponse {
                        messages: vec![machine::ApplyConfiguration::default()],
                    }),
                    marker,
                ))
            }
            ApiMode::Maintenance113 => {
                let cfg = match NodeConfig::parse_for(&req.data, &node.talos_version()) {
                    Ok(c) => c,
                    Err(ConfigError::NoV1alpha1) => {
                        // Not complete for boot: accepted, the node waits for the rest.
                        return Ok(Self::apply_response(
                            ApplyMode::NoReboot,
                            "Applied configuration without a reboot",
                        ));
                    }
                    Err(ConfigError::Parse(e)) | Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(e))
                    }
                };
                if req.dry_run {
                    return Ok(Self::apply_response(
                        ApplyMode::NoReboot,
                        "Dry run summary:\nNode is running in maintenance mode and does not have a config yet.",
                    ));
                }
                if node.state() != NodeState::Maintenance {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                if mode == ApplyMode::Staged {
                    return Ok(Self::apply_response(
                        ApplyMode::Staged,
                        "Staged configuration to be applied after a reboot",
                    ));
                }
                let marker = self.spawn(|n, gen| async move { n.leave_maintenance(gen).await });
                Ok(Self::with_marker(
                    Self::apply_response(
                        ApplyMode::NoReboot,
                        "Applied configuration without a reboot",
                    ),
                    marker,
                ))
            }
            ApiMode::Configured => {
                if !info.has(ADMIN) {
                    return Err(not_authorized());
                }
                if node.data.lock().expect("data lock").rebooting_after_apply {
                    return Err(Status::failed_precondition(
                        "configuration was already applied and node is rebooting, please wait for the reboot to complete",
                    ));
                }
                let cfg = match NodeConfig::parse_for(&req.data, &node.talos_version()) {
                    Ok(c) => c,
                    Err(ConfigError::NoV1alpha1) => return Err(Status::invalid_argument(
                        "the applied machine configuration doesn't contain v1alpha1 config, did you mean to patch the machine config instead?",
                    )),
                    Err(ConfigError::Parse(e)) | Err(ConfigError::Invalid(e)) => {
                        return Err(Status::invalid_argument(e))
                    }
                };
                let current = node.config();
                let same = current.as_ref().is_some_and(|c| c.raw == cfg.raw);
                let live_ok = current.as_ref().is_some_and(|c| {
                    c.machine_type == cfg.machine_type
                        && c.os_ca_crt == cfg.os_ca_crt
                        && c.etcd_key == cfg.etcd_key
                        && c.cert_sans == cfg.cert_sans
                });
                let effective = match mode {
                    // The lab treats every real change as needing a reboot (Talos
                    // applies some live; a reboot is the conservative superset).
                    ApplyMode::Auto if same => ApplyMode::NoReboot,
                    ApplyMode::Auto => ApplyMode::Reboot,
                    ApplyMode::NoReboot | ApplyMode::Try if !live_ok && !same => {
                        return Err(Status::invalid_argument(
                            "apply failed: the configuration change can't be applied without a reboot (machine type, CA or certificate SANs changed)",
                        ))
                    }
                    m => m,
                };
                if req.dry_run {
                    return Ok(Self::apply_response(
                        effective,
                        if same {
                            "Dry run summary:\nNo changes."
                        } else {
                            "Dry run summary:\nConfig diff: (lab: not computed)"
                        },
                    ));
                }
                if same && effective != ApplyMode::Reboot {
                    return Ok(Self::apply_response(
                        ApplyMode::NoReboot,
                        "Applied configuration without a reboot (no changes)",
                    ));
                }
                node.data.lock().expect("data lock").config = Some(Arc::new(cfg));
                match effective {
                    ApplyMode::Reboot => {
                        node.data.lock().expect("data lock").rebooting_after_apply = true;
                        node.commit();
                        let marker =
                            self.spawn(|n, gen| async move { n.reboot_cycle(gen, "").await });
                        Ok(Self::with_marker(
                            Self::apply_response(
                                ApplyMode::Reboot,
                                "Applied configuration with a reboot",
                            ),
                            marker,
                        ))
                    }
                    ApplyMode::Staged => Ok(Self::apply_response(
                        ApplyMode::Staged,
                        "Staged configuration to be applied after a reboot",
                    )),
                    // TRY is applied like NO_REBOOT; the lab does not revert it.
                    m => {
                        node.commit();
                        Ok(Self::apply_response(
                            m,
                            "Applied configuration without a reboot",
                        ))
                    }
                }
            }
        }
    }
}
