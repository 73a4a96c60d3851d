//! Waiting for a node to reach a state, event-driven: a COSI Watch on its
//! MachineStatus while the node answers, and reconnect attempts at most 250 ms
//! apart while it does not (installing, rebooting, apid restarting).

use std::time::{Duration, Instant};

use endsys_core::backoff::Backoff;
use futures::StreamExt;

use super::client::TalosClient;
use super::error::TalosError;
use super::resources::MachineStatus;

/// Longest pause between reconnect attempts while a node is away: a node that comes
/// back is seen within a quarter second (the reaction-lag budget of `up`).
pub const POLL_FALLBACK: Duration = Duration::from_millis(250);

/// What the wait saw, for progress output.
#[derive(Debug, Clone)]
pub enum WaitProgress {
    /// The node answered with this status.
    Status(MachineStatus),
    /// The node could not be reached; the error says why (rebooting, old cert, …).
    Away(TalosError),
}

/// Why a wait ended without the wanted state.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{node}: still not {wanted} after {after:?}; last seen: {last}")]
    Timeout {
        node: String,
        wanted: String,
        after: Duration,
        last: String,
    },
    #[error(transparent)]
    Fatal(Box<TalosError>),
}

/// Waits until `done(status)` holds, or `deadline` passes. Transient failures
/// (refused, unknown authority while the node still presents its maintenance
/// certificate, dropped streams) are reported through `progress` and waited out;
/// anything else (wrong credentials, permission denied) ends the wait at once.
pub async fn wait_for_status<F, P>(
    client: &TalosClient,
    wanted: &str,
    deadline: Duration,
    mut done: F,
    mut progress: P,
) -> Result<MachineStatus, WaitError>
where
    F: FnMut(&MachineStatus) -> bool,
    P: FnMut(WaitProgress),
{
    let started = Instant::now();
    let once = client.with_policy(client.policy().once());
    let mut last = String::from("nothing yet");
    let mut pause = Backoff::new(Duration::from_millis(25), POLL_FALLBACK);
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(WaitError::Timeout {
                node: client.label().to_string(),
                wanted: wanted.to_string(),
                after: started.elapsed(),
                last,
            });
        }
        let attempt = tokio::time::timeout(remaining, async {
            let mut stream = match once.watch_machine_status().await {
                Ok(s) => Box::pin(s),
                Err(e) => return Err(e),
            };
            while let Some(item) = stream.next().await {
                let status = item?;
                last = status.summary();
                let ok = done(&status);
                progress(WaitProgress::Status(status.clone()));
                if ok {
                    return Ok(Some(status));
                }
            }
            // Stream ended: the node went away (reboot). Reconnect.
            Ok(None)
        })
        .await;
        match attempt {
            Err(_) => continue, // deadline reached; the top of the loop reports it
            Ok(Ok(Some(status))) => return Ok(status),
            Ok(Ok(None)) => pause.reset(),
            Ok(Err(e)) => {
                if !is_waitable(&e) {
                    return Err(WaitError::Fatal(Box::new(e)));
                }
                last = e.to_string();
                progress(WaitProgress::Away(e));
            }
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        tokio::time::sleep(pause.next_pause().min(remaining)).await;
    }
}

/// Errors that a booting node produces on its way to the wanted state.
fn is_waitable(e: &TalosError) -> bool {
    use super::error::TlsFailure;
    if e.is_transient() {
        return true;
    }
    match e.root() {
        // Still serving the maintenance certificate: not rebooted into its config yet.
        TalosError::Tls {
            kind: TlsFailure::UnknownAuthority | TlsFailure::Other,
            ..
        } => true,
        TalosError::Rpc { code, .. } => {
            matches!(code, tonic::Code::NotFound | tonic::Code::Unimplemented)
        }
        _ => false,
    }
}
