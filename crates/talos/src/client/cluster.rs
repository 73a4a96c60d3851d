//! ClusterService: the node's cluster health check, streamed as progress lines.

use std::time::Duration;

use futures::{Stream, StreamExt};

use super::call::TalosClient;
use super::reply::{check_metadata, status_to_error};
use crate::error::TalosError;

impl TalosClient {
    /// Runs the node's cluster health check, yielding its progress lines.
    pub async fn health_check(
        &self,
        wait_timeout: Duration,
        control_planes: Vec<String>,
        workers: Vec<String>,
    ) -> Result<impl Stream<Item = Result<String, TalosError>>, TalosError> {
        use crate::api::cluster;
        let label = self.label.clone();
        let stream = self
            .call("HealthCheck", || {
                let mut req = self.request(cluster::HealthCheckRequest {
                    wait_timeout: Some(prost_types::Duration {
                        seconds: wait_timeout.as_secs() as i64,
                        nanos: wait_timeout.subsec_nanos() as i32,
                    }),
                    cluster_info: Some(cluster::ClusterInfo {
                        control_plane_nodes: control_planes.clone(),
                        worker_nodes: workers.clone(),
                        force_endpoint: String::new(),
                    }),
                })?;
                req.set_timeout(wait_timeout + Duration::from_secs(5));
                let mut c = self.cluster();
                Ok(async move { c.health_check(req).await })
            })
            .await?
            .into_inner();
        Ok(stream.map(move |r| {
            r.map_err(|s| status_to_error(&label, "HealthCheck", s))
                .and_then(|p| {
                    check_metadata(&label, "HealthCheck", p.metadata.as_ref())?;
                    Ok(p.message)
                })
        }))
    }
}
