//! Replies and statuses as typed results: the first message of a reply, the
//! per-node error a proxied reply carries in its `common.Metadata`, and gRPC
//! statuses turned into [`TalosError`] with connect and TLS failures dug out of
//! the source chain tonic wraps them in.

use tonic::{Code, Status};

use crate::api::common;
use crate::api::machine;
use crate::connect::{classify_handshake, DialError};
use crate::error::TalosError;

pub(super) fn first<T>(node: &str, rpc: &'static str, mut messages: Vec<T>) -> Result<T, TalosError>
where
    T: HasMetadata,
{
    if messages.is_empty() {
        return Err(TalosError::Protocol {
            node: node.to_string(),
            rpc,
            detail: "reply carried no message".into(),
        });
    }
    let msg = messages.remove(0);
    check_metadata(node, rpc, msg.metadata())?;
    Ok(msg)
}

/// A proxied reply can carry a per-node error in its metadata while the call as a
/// whole succeeded.
pub(super) fn check_metadata(
    node: &str,
    rpc: &'static str,
    md: Option<&common::Metadata>,
) -> Result<(), TalosError> {
    if let Some(md) = md {
        if !md.error.is_empty() {
            let code = md
                .status
                .as_ref()
                .map(|s| Code::from_i32(s.code))
                .unwrap_or(Code::Unknown);
            let who = if md.hostname.is_empty() {
                node.to_string()
            } else {
                md.hostname.clone()
            };
            return Err(TalosError::Rpc {
                node: who,
                rpc,
                code,
                message: md.error.clone(),
            });
        }
    }
    Ok(())
}

/// Reply messages that start with `common.Metadata metadata = 1`.
pub(crate) trait HasMetadata {
    fn metadata(&self) -> Option<&common::Metadata>;
}

macro_rules! has_metadata {
    ($($t:ty),* $(,)?) => {
        $(impl HasMetadata for $t {
            fn metadata(&self) -> Option<&common::Metadata> { self.metadata.as_ref() }
        })*
    };
}

has_metadata!(
    machine::Version,
    machine::ApplyConfiguration,
    machine::ServiceList,
    machine::Reboot,
    machine::Reset,
    machine::EtcdMembers,
    machine::EtcdForfeitLeadership,
    machine::EtcdStatus,
    machine::Upgrade,
    machine::ImagePull,
);

/// Converts a tonic status to a typed error. Connect and TLS failures hide in the
/// status's source chain; find them so the operator sees "connection refused" or
/// "unknown authority", not "transport error".
pub(crate) fn status_to_error(node: &str, rpc: &'static str, status: Status) -> TalosError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&status);
    while let Some(e) = src {
        if let Some(d) = e.downcast_ref::<DialError>() {
            return d.0.clone();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            let typed = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some();
            if typed || text.contains("fatal alert") || text.contains("invalid peer certificate") {
                return classify_handshake(node, io, true);
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return TalosError::Connect {
                    node: node.to_string(),
                    addr: node.to_string(),
                    refused: io.kind() == std::io::ErrorKind::ConnectionRefused,
                    detail: format!("connection lost: {io}"),
                };
            }
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, r.clone());
            return classify_handshake(node, &io, true);
        }
        src = e.source();
    }
    let message = status.message();
    if status.code() == Code::Unknown
        && (message.contains("h2 protocol error") || message.contains("error reading a body"))
    {
        // The node dropped the HTTP/2 connection under the call.
        return TalosError::Connect {
            node: node.to_string(),
            addr: node.to_string(),
            refused: false,
            detail: format!("connection closed by the node during {rpc}: {message}"),
        };
    }
    TalosError::Rpc {
        node: node.to_string(),
        rpc,
        code: status.code(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection cut under a call names where it was going: the message
    /// read "cannot connect to : connection lost" before.
    #[test]
    fn a_lost_connection_names_its_address() {
        let io = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        );
        let status = Status::from_error(Box::new(io));
        let e = status_to_error("127.0.20.11", "ApplyConfiguration", status);
        let text = e.to_string();
        assert!(matches!(e, TalosError::Connect { .. }), "{e:?}");
        assert!(text.contains("cannot connect to 127.0.20.11"), "{text}");
        assert!(!text.contains("to :"), "{text}");
    }
}
