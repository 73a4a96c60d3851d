//! ApplyConfiguration as the node decides it: Talos 1.12's maintenance server
//! (TRY/REBOOT/AUTO only, parse errors as `Unknown`), 1.13 maintenance (an
//! incomplete config accepted and kept waiting, STAGED), and configured mode
//! (admin only, RuntimeValidate's install-disk selector match, AUTO resolved per
//! field as `CanApplyImmediate` does on 1.12/1.13 and always to NO_REBOOT on
//! 1.14, REBOOT refused on 1.14, STAGED writing only the persistent copy, dry
//! runs answering with Talos's summary and a real config diff).

use std::sync::Arc;

use tonic::{Response, Status};

use super::apply_live::{config_diff, needs_reboot, selector_text};
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
            ApiMode::Configured => self.apply_configured(info, req, mode),
        }
    }
}

/// Talos's summary line for an applied (or dry-run) mode.
fn summary(mode: ApplyMode) -> &'static str {
    match mode {
        ApplyMode::Reboot => "Applied configuration with a reboot",
        ApplyMode::Staged => "Staged configuration to be applied after the next reboot",
        _ => "Applied configuration without a reboot",
    }
}

impl LabApi {
    /// 1.14 dropped the REBOOT apply (AUTO never reboots there).
    fn never_reboots_on_apply(&self) -> bool {
        let version = self.node.talos_version();
        let v = version.trim_start_matches('v');
        let minor = v
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        v.starts_with("1.") && minor >= 14
    }

    fn apply_configured(
        &self,
        info: &LabConnInfo,
        req: machine::ApplyConfigurationRequest,
        mode: ApplyMode,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        let node = &self.node;
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
        // RuntimeValidate runs before the dry-run branch: a selector matching
        // no disk of this machine is refused either way.
        if let Some(sel) = &cfg.disk_selector {
            if node.hardware.select_install_disk(None, Some(sel)).is_err() {
                return Err(Status::invalid_argument(format!(
                    "1 error occurred:\n\t* no disks matched the expression: {}\n\n",
                    selector_text(sel)
                )));
            }
        }
        let current = node.config();
        let old: &[u8] = current.as_ref().map(|c| c.raw.as_slice()).unwrap_or(&[]);
        let diff = config_diff(old, &req.data);
        let v114 = self.never_reboots_on_apply();
        let reboot_reason = if v114 {
            None
        } else {
            needs_reboot(old, &req.data)
        };
        let effective =
            match mode {
                ApplyMode::Reboot if v114 => return Err(Status::unimplemented(
                    "the REBOOT mode is not supported, please use AUTO or NO_REBOOT modes instead",
                )),
                ApplyMode::Auto if reboot_reason.is_some() => ApplyMode::Reboot,
                ApplyMode::Auto => ApplyMode::NoReboot,
                ApplyMode::NoReboot | ApplyMode::Try => {
                    if let Some(why) = &reboot_reason {
                        return Err(Status::invalid_argument(format!(
                            "this config change can't be applied in immediate mode\ndiff:\n{why}"
                        )));
                    }
                    mode
                }
                m => m,
            };
        if req.dry_run {
            let changes = if diff.is_empty() {
                "No changes.".to_string()
            } else {
                format!("Config diff:\n\n{diff}")
            };
            return Ok(Self::apply_response(
                effective,
                &format!(
                    "Dry run summary:\n{} (skipped in dry-run).\n{changes}",
                    summary(effective)
                ),
            ));
        }
        let cfg = Arc::new(cfg);
        match effective {
            ApplyMode::Staged => {
                // Only the persistent copy moves; the next boot loads it.
                let mut d = node.data.lock().expect("data lock");
                d.staged = if diff.is_empty() { None } else { Some(cfg) };
                drop(d);
                node.commit();
                Ok(Self::apply_response(
                    ApplyMode::Staged,
                    summary(ApplyMode::Staged),
                ))
            }
            ApplyMode::Reboot => {
                {
                    let mut d = node.data.lock().expect("data lock");
                    d.config = Some(cfg);
                    d.staged = None;
                    d.rebooting_after_apply = true;
                }
                node.commit();
                let marker = self.spawn(|n, gen| async move { n.reboot_cycle(gen, "").await });
                Ok(Self::with_marker(
                    Self::apply_response(ApplyMode::Reboot, summary(ApplyMode::Reboot)),
                    marker,
                ))
            }
            // TRY is applied like NO_REBOOT; the lab does not revert it.
            m => {
                {
                    let mut d = node.data.lock().expect("data lock");
                    d.config = Some(cfg);
                    d.staged = None;
                }
                node.commit();
                Ok(Self::apply_response(m, summary(m)))
            }
        }
    }
}
