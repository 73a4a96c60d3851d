//! StorageService: BlockDeviceWipe.

use super::call::TalosClient;
use crate::api::storage;
use crate::error::TalosError;

impl TalosClient {
    /// Wipes block devices (only allowed in maintenance mode for non-admins).
    pub async fn block_device_wipe(&self, devices: &[String]) -> Result<(), TalosError> {
        let descs: Vec<storage::BlockDeviceWipeDescriptor> = devices
            .iter()
            .map(|d| storage::BlockDeviceWipeDescriptor {
                device: d.trim_start_matches("/dev/").to_string(),
                method: storage::block_device_wipe_descriptor::Method::Fast as i32,
                ..Default::default()
            })
            .collect();
        self.with_policy(self.policy.once())
            .call("BlockDeviceWipe", || {
                let req = self.request(storage::BlockDeviceWipeRequest {
                    devices: descs.clone(),
                })?;
                let mut c = self.storage();
                Ok(async move { c.block_device_wipe(req).await })
            })
            .await?;
        Ok(())
    }
}
