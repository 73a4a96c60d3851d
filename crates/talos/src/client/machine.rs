//! MachineService calls that read a node: Version, ServiceList, Events and
//! Kubeconfig (a tar.gz unpacked as talosctl does).

use std::io::Read;

use futures::{Stream, StreamExt};
use tonic::Code;

use super::call::TalosClient;
use super::reply::{check_metadata, first, status_to_error};
use crate::api::common;
use crate::api::machine;
use crate::error::TalosError;

/// Talos version as the node reports it.
#[derive(Debug, Clone)]
pub struct NodeVersion {
    pub tag: String,
    pub sha: String,
    pub os: String,
    pub arch: String,
    pub platform: String,
    /// True once the node has a machine config.
    pub configured: bool,
}

/// One service from ServiceList.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub id: String,
    pub state: String,
    pub healthy: bool,
    pub health_unknown: bool,
    pub last_message: String,
    /// Last event's message (what the service is doing or waiting for).
    pub last_event: String,
}

impl TalosClient {
    /// Talos version. On Talos 1.12 maintenance mode this answers Unimplemented;
    /// use [`probe_mode`](crate::connect::probe_mode) to classify nodes instead.
    pub async fn version(&self) -> Result<NodeVersion, TalosError> {
        let resp = self
            .call("Version", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.version(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "Version", resp.messages)?;
        let v = msg.version.unwrap_or_default();
        Ok(NodeVersion {
            tag: v.tag,
            sha: v.sha,
            os: v.os,
            arch: v.arch,
            platform: msg
                .platform
                .map(|p| format!("{} ({})", p.name, p.mode))
                .unwrap_or_default(),
            configured: msg.features.is_some(),
        })
    }

    /// The admin kubeconfig (the node streams a tar.gz holding one file).
    pub async fn kubeconfig(&self) -> Result<Vec<u8>, TalosError> {
        let stream = self
            .call("Kubeconfig", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.kubeconfig(req).await })
            })
            .await?
            .into_inner();
        let bytes = self.collect_data("Kubeconfig", stream).await?;
        extract_kubeconfig(&bytes).map_err(|detail| TalosError::Protocol {
            node: self.label.clone(),
            rpc: "Kubeconfig",
            detail,
        })
    }

    pub(super) async fn collect_data(
        &self,
        rpc: &'static str,
        mut stream: tonic::Streaming<common::Data>,
    ) -> Result<Vec<u8>, TalosError> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.policy.attempt_timeout, stream.message()).await {
                Ok(Ok(Some(d))) => {
                    check_metadata(&self.label, rpc, d.metadata.as_ref())?;
                    out.extend_from_slice(&d.bytes);
                }
                Ok(Ok(None)) => return Ok(out),
                Ok(Err(status)) => return Err(self.error(rpc, status)),
                Err(_) => {
                    return Err(TalosError::Rpc {
                        node: self.label.clone(),
                        rpc,
                        code: Code::DeadlineExceeded,
                        message: "stream stalled".into(),
                    })
                }
            }
        }
    }

    pub async fn service_list(&self) -> Result<Vec<ServiceState>, TalosError> {
        let resp = self
            .call("ServiceList", || {
                let req = self.request(())?;
                let mut c = self.machine();
                Ok(async move { c.service_list(req).await })
            })
            .await?
            .into_inner();
        let msg = first(&self.label, "ServiceList", resp.messages)?;
        Ok(msg
            .services
            .into_iter()
            .map(|s| {
                let health = s.health.unwrap_or_default();
                let last_event = s
                    .events
                    .and_then(|e| e.events.last().map(|ev| ev.msg.clone()))
                    .unwrap_or_default();
                ServiceState {
                    id: s.id,
                    state: s.state,
                    healthy: health.healthy,
                    health_unknown: health.unknown,
                    last_message: health.last_message,
                    last_event,
                }
            })
            .collect())
    }

    /// Follows the node's event stream (machine status, services, tasks).
    pub async fn events(
        &self,
        tail_events: i32,
    ) -> Result<impl Stream<Item = Result<machine::Event, TalosError>>, TalosError> {
        let label = self.label.clone();
        let stream = self
            .call("Events", || {
                let mut req = self.request(machine::EventsRequest {
                    tail_events,
                    ..Default::default()
                })?;
                // Streams live long: no per-call grpc-timeout.
                req.metadata_mut().remove("grpc-timeout");
                let mut c = self.machine();
                Ok(async move { c.events(req).await })
            })
            .await?
            .into_inner();
        Ok(stream.map(move |r| r.map_err(|s| status_to_error(&label, "Events", s))))
    }
}

/// Unpacks the kubeconfig from Talos's tar.gz (all entries concatenated, as talosctl does).
pub fn extract_kubeconfig(targz: &[u8]) -> Result<Vec<u8>, String> {
    let gz = flate2::read::GzDecoder::new(targz);
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("kubeconfig archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("kubeconfig archive entry: {e}"))?;
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("kubeconfig archive read: {e}"))?;
    }
    if out.is_empty() {
        return Err("kubeconfig archive is empty".into());
    }
    Ok(out)
}
