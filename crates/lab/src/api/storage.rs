//! StorageService: Disks from the node's hardware and BlockDeviceWipe (refused for
//! the disk holding Talos' volumes in configured mode).

use tonic::{Request, Response, Status};

use super::gate::{not_authorized, LabApi, ADMIN};
use crate::tls::ApiMode;
use endsys_talos::api::storage::{self, storage_service_server::StorageService};

#[tonic::async_trait]
impl StorageService for LabApi {
    async fn disks(
        &self,
        request: Request<()>,
    ) -> Result<Response<storage::DisksResponse>, Status> {
        self.gate(&request, "Disks")?;
        let system = self
            .node
            .data
            .lock()
            .expect("data lock")
            .install_disk
            .clone();
        use storage::disk::DiskType;
        let disks = self
            .node
            .hardware
            .disks
            .iter()
            .map(|d| storage::Disk {
                size: d.size,
                model: d.model.clone(),
                device_name: d.dev_path(),
                name: String::new(),
                serial: d.serial.clone(),
                modalias: String::new(),
                uuid: String::new(),
                wwid: d.wwid.clone(),
                r#type: (match d.transport.as_str() {
                    "nvme" => DiskType::Nvme,
                    "mmc" => DiskType::Sd,
                    _ if d.rotational => DiskType::Hdd,
                    "" => DiskType::Unknown,
                    _ => DiskType::Ssd,
                }) as i32,
                bus_path: String::new(),
                system_disk: system.as_deref() == Some(d.dev_path().as_str()),
                subsystem: String::new(),
                readonly: false,
            })
            .collect();
        Ok(Response::new(storage::DisksResponse {
            messages: vec![storage::Disks {
                metadata: None,
                disks,
            }],
        }))
    }

    async fn block_device_wipe(
        &self,
        request: Request<storage::BlockDeviceWipeRequest>,
    ) -> Result<Response<storage::BlockDeviceWipeResponse>, Status> {
        let info = self.gate(&request, "BlockDeviceWipe")?;
        if info.mode == ApiMode::Configured && !info.has(ADMIN) {
            return Err(not_authorized());
        }
        let system = self
            .node
            .data
            .lock()
            .expect("data lock")
            .install_disk
            .clone();
        for dev in &request.get_ref().devices {
            let base = dev.device.trim_start_matches("/dev/");
            let Some(disk) = self
                .node
                .hardware
                .disks
                .iter()
                .find(|d| base.starts_with(d.dev_name.as_str()))
            else {
                return Err(Status::not_found(format!(
                    "blockdevice {:?} not found",
                    dev.device
                )));
            };
            if info.mode == ApiMode::Configured
                && !dev.skip_volume_check
                && system.as_deref() == Some(disk.dev_path().as_str())
            {
                return Err(Status::failed_precondition(format!(
                    "blockdevice {:?} is in use by volume \"STATE\"",
                    dev.device
                )));
            }
        }
        Ok(Response::new(storage::BlockDeviceWipeResponse {
            messages: vec![storage::BlockDeviceWipe { metadata: None }],
        }))
    }
}
