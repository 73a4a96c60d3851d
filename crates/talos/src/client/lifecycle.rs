//! MachineService calls that change a node's lifecycle: ApplyConfiguration (the
//! mode always sent explicitly), Reboot and Reset. None is retried: a lost reply
//! may still have acted, and callers verify through the node's state.

use super::call::TalosClient;
use super::reply::first;
use crate::api::machine;
use crate::error::TalosError;

/// The apply modes of ApplyConfiguration (always sent explicitly: the wire default
/// is the deprecated REBOOT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl ApplyMode {
    fn wire(self) -> i32 {
        use machine::apply_configuration_request::Mode;
        match self {
            ApplyMode::Auto => Mode::Auto as i32,
            ApplyMode::NoReboot => Mode::NoReboot as i32,
            ApplyMode::Reboot => Mode::Reboot as i32,
            ApplyMode::Staged => Mode::Staged as i32,
            ApplyMode::Try => Mode::Try as i32,
        }
    }
}

/// What the node said about an applied config.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    pub mode: Option<String>,
    pub mode_details: String,
    pub warnings: Vec<String>,
}

/// How a Reset should behave.
#[derive(Debug, Clone, Default)]
pub struct ResetOptions {
    pub graceful: bool,
    pub reboot: bool,
    /// Volume labels to wipe (STATE, EPHEMERAL); empty wipes the whole system disk.
    pub wipe_labels: Vec<String>,
}

impl TalosClient {
    /// Applies a machine config. Not retried: a lost reply may still have applied,
    /// and callers verify the outcome through the node's state.
    pub async fn apply_configuration(
        &self,
        config: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, TalosError> {
        let data = config.to_vec();
        let resp = self
            .with_policy(self.policy.once())
            .call("ApplyConfiguration", || {
                let req = self.request(machine::ApplyConfigurationRequest {
                    data: data.clone(),
                    mode: mode.wire(),
                    dry_run,
                    try_mode_timeout: None,
                })?;
                let mut c = self.machine();
                Ok(async move { c.apply_configuration(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "ApplyConfiguration", resp.messages)?;
        let mode = machine::apply_configuration_request::Mode::try_from(msg.mode)
            .ok()
            .map(|m| m.as_str_name().to_string());
        Ok(ApplyOutcome {
            mode: if msg.mode_details.is_empty() && msg.mode == 0 {
                None
            } else {
                mode
            },
            mode_details: msg.mode_details,
            warnings: msg.warnings,
        })
    }

    /// Reboots the node; returns the actor id to follow in Events.
    pub async fn reboot(&self) -> Result<String, TalosError> {
        let resp = self
            .with_policy(self.policy.once())
            .call("Reboot", || {
                let req = self.request(machine::RebootRequest { mode: 0 })?;
                let mut c = self.machine();
                Ok(async move { c.reboot(req).await })
            })
            .await?
            .into_inner();
        Ok(first(&self.label, "Reboot", resp.messages)?.actor_id)
    }

    /// Resets the node (asynchronous on the node; returns the actor id).
    pub async fn reset(&self, opts: &ResetOptions) -> Result<String, TalosError> {
        let parts: Vec<machine::ResetPartitionSpec> = opts
            .wipe_labels
            .iter()
            .map(|l| machine::ResetPartitionSpec {
                label: l.clone(),
                wipe: true,
            })
            .collect();
        let resp = self
            .with_policy(self.policy.once())
            .call("Reset", || {
                let req = self.request(machine::ResetRequest {
                    graceful: opts.graceful,
                    reboot: opts.reboot,
                    system_partitions_to_wipe: parts.clone(),
                    user_disks_to_wipe: vec![],
                    mode: machine::reset_request::WipeMode::All as i32,
                })?;
                let mut c = self.machine();
                Ok(async move { c.reset(req).await })
            })
            .await?
            .into_inner();
        Ok(first(&self.label, "Reset", resp.messages)?.actor_id)
    }
}
