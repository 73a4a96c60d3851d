//! Typed errors for Talos API calls, each able to say what probably happened and
//! what the operator should do next (through [`Doctor`]).

use std::time::Duration;

use endsys_core::Doctor;
use thiserror::Error;
use tonic::Code;

/// Why a TLS handshake with a node failed, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The node's certificate is not signed by the CA in our talosconfig.
    UnknownAuthority,
    /// The certificate does not name the address we dialled.
    NameMismatch,
    /// The node asked for a client certificate but we connected without one.
    ClientCertRequired,
    /// The node refused our client certificate (other CA, wrong EKU, expired).
    ClientCertRejected,
    /// The pinned maintenance-certificate fingerprint did not match.
    FingerprintMismatch,
    /// Anything else (protocol error, expired server cert, ...).
    Other,
}

/// A Talos API failure.
#[derive(Debug, Clone, Error)]
pub enum TalosError {
    #[error("{node}: cannot connect to {addr}: {detail}")]
    Connect {
        node: String,
        addr: String,
        refused: bool,
        detail: String,
    },
    #[error("{node}: TLS handshake failed ({kind:?}): {detail}")]
    Tls {
        node: String,
        kind: TlsFailure,
        detail: String,
    },
    #[error("{node}: {rpc} failed: {code:?} \"{message}\"")]
    Rpc {
        node: String,
        rpc: &'static str,
        code: Code,
        message: String,
    },
    #[error("{node}: {rpc} gave up after {elapsed:?} ({attempts} attempts); last error: {last}")]
    RetriesExhausted {
        node: String,
        rpc: &'static str,
        elapsed: Duration,
        attempts: u32,
        last: Box<TalosError>,
    },
    #[error("{node}: {rpc}: unexpected reply: {detail}")]
    Protocol {
        node: String,
        rpc: &'static str,
        detail: String,
    },
    #[error("{node}: {rpc}: {detail}")]
    Io {
        node: String,
        rpc: &'static str,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Credentials { what: String, detail: String },
    #[error("{path}: {detail}")]
    Talosconfig { path: String, detail: String },
}

impl TalosError {
    /// The error at the root of a retry chain.
    pub fn root(&self) -> &TalosError {
        match self {
            TalosError::RetriesExhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// The gRPC code, when the node answered with one.
    pub fn code(&self) -> Option<Code> {
        match self.root() {
            TalosError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the node said etcd is already bootstrapped.
    pub fn is_already_bootstrapped(&self) -> bool {
        matches!(
            self.root(),
            TalosError::Rpc {
                code: Code::AlreadyExists,
                rpc: "Bootstrap",
                ..
            }
        )
    }

    /// Failures that go away on their own while a node installs, reboots or restarts
    /// apid: worth retrying within a budget.
    pub fn is_transient(&self) -> bool {
        match self.root() {
            TalosError::Connect { .. } => true,
            TalosError::Rpc { code, message, .. } => match code {
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => true,
                Code::Unknown | Code::Internal => {
                    // Connection cut under a call: apid restarting or the node rebooting.
                    const CUT: [&str; 7] = [
                        "connection refused",
                        "error reading from server: EOF",
                        "transport",
                        "h2 protocol error",
                        "connection reset",
                        "broken pipe",
                        "error reading a body",
                    ];
                    CUT.iter().any(|m| message.contains(m))
                }
                _ => false,
            },
            TalosError::Io { .. } => true,
            _ => false,
        }
    }
}

/// What most likely happened and what to do, in the operator's terms; a retry
/// chain is diagnosed by its last error.
impl Doctor for TalosError {
    fn likely_cause(&self) -> String {
        match self.root() {
            TalosError::Connect { refused: true, .. } => {
                "the node is not listening on 50000: it is rebooting, installing, powered off, or the address is wrong".into()
            }
            TalosError::Connect { detail, .. } if detail.contains("closed") || detail.contains("lost") => {
                "the node dropped the connection: it is rebooting or restarting its API (expected right after an apply, reboot or reset)".into()
            }
            TalosError::Connect { .. } => "the node is unreachable from here (network, firewall, wrong address)".into(),
            TalosError::Tls { kind, .. } => match kind {
                TlsFailure::UnknownAuthority => "the node's certificate is not from our CA: it has not rebooted into its config yet (still in maintenance or installing), or it was configured from a different secrets bundle".into(),
                TlsFailure::NameMismatch => "the node's certificate does not cover the address used; add it to machine.certSANs or connect by the node IP".into(),
                TlsFailure::ClientCertRequired => "the node is already configured (it asks for a client certificate), so insecure/maintenance access no longer works".into(),
                TlsFailure::ClientCertRejected => "the node refused our client certificate: the talosconfig comes from a different secrets bundle, has expired, or lacks EKU clientAuth only".into(),
                TlsFailure::FingerprintMismatch => "the maintenance certificate fingerprint differs from the pinned one: a different machine answers on this address".into(),
                TlsFailure::Other => "TLS negotiation failed".into(),
            },
            TalosError::Rpc { rpc, code, message, .. } => rpc_cause(rpc, *code, message),
            TalosError::Protocol { .. } => "the node sent data this tool does not understand (version mismatch or corruption)".into(),
            TalosError::Io { .. } => "a local file or the stream failed".into(),
            TalosError::Credentials { .. } | TalosError::Talosconfig { .. } => "the talosconfig or its certificates are unreadable".into(),
            TalosError::RetriesExhausted { .. } => unreachable_root(),
        }
    }

    fn next_action(&self) -> String {
        match self.root() {
            TalosError::Connect { .. } => "check the node's console; wait for it to finish rebooting, or power it on; verify the IP".into(),
            TalosError::Tls { kind, .. } => match kind {
                TlsFailure::UnknownAuthority => "wait for the node to finish installing and rebooting; if it persists, compare the node's CA with the talosconfig (same secrets bundle?)".into(),
                TlsFailure::ClientCertRequired => "use --talosconfig with the cluster's credentials instead of --insecure".into(),
                TlsFailure::ClientCertRejected => "regenerate the talosconfig from the cluster's secrets bundle (gen config)".into(),
                TlsFailure::NameMismatch => "connect to the node's own IP, or add the name to machine.certSANs".into(),
                TlsFailure::FingerprintMismatch => "read the fingerprint on the node's console and check you are talking to the right machine".into(),
                TlsFailure::Other => "retry with RUST_LOG=debug for the handshake details".into(),
            },
            TalosError::Rpc { rpc, code, .. } => rpc_action(rpc, *code),
            TalosError::Protocol { .. } => "retry; if it persists, check that the node runs a supported Talos version (1.12, 1.13 or 1.14)".into(),
            TalosError::Io { .. } => "check disk space and permissions of the output path".into(),
            TalosError::Credentials { .. } | TalosError::Talosconfig { .. } => "point --talosconfig at a valid file (gen config writes one)".into(),
            TalosError::RetriesExhausted { .. } => unreachable_root(),
        }
    }
}

fn unreachable_root() -> String {
    // root() never returns RetriesExhausted.
    String::from("see the last error")
}

fn rpc_cause(rpc: &str, code: Code, message: &str) -> String {
    match (rpc, code) {
        ("Bootstrap", Code::Unimplemented) if message.contains("machine type is not set") => {
            "the node is still in maintenance mode (no machine config applied yet)".into()
        }
        (_, Code::Unimplemented) if message.contains("maintenance mode") => {
            "the node is in maintenance mode, where this call does not exist (Talos 1.12)".into()
        }
        (_, Code::Unimplemented) if message.contains("control plane") => {
            "this call only works on a control-plane node and this one is a worker".into()
        }
        (_, Code::Unimplemented) if message.contains("machine type is not set") => {
            "the node has no machine config yet (maintenance mode)".into()
        }
        ("Bootstrap", Code::AlreadyExists) => {
            "etcd is already bootstrapped on this node (its data directory is not empty)".into()
        }
        ("Bootstrap", Code::FailedPrecondition) if message.contains("time") => {
            "the node's clock is not synchronised yet (NTP, UDP 123 outbound)".into()
        }
        ("Bootstrap", Code::FailedPrecondition) => {
            "the node is still booting: etcd is not yet waiting to be bootstrapped".into()
        }
        (_, Code::PermissionDenied) if message.contains("no request forwarding") => {
            "a worker node is used as endpoint; workers cannot forward requests".into()
        }
        (_, Code::PermissionDenied) => {
            "the client certificate's role does not allow this call (or the node is in maintenance, where only read calls and apply are allowed)".into()
        }
        (_, Code::InvalidArgument) => "the node rejected the request as invalid".into(),
        (_, Code::NotFound) => "the object asked for does not exist on the node".into(),
        (_, Code::Unavailable) => "the node is restarting its API or is unreachable".into(),
        (_, Code::DeadlineExceeded) => "the node did not answer within the deadline".into(),
        (_, Code::FailedPrecondition) => "the node is not in a state where this call can run yet".into(),
        _ => "the node returned an error".into(),
    }
}

fn rpc_action(rpc: &str, code: Code) -> String {
    match (rpc, code) {
        ("Bootstrap", Code::Unimplemented) => {
            "apply the node's machine config first, then wait for it to reboot".into()
        }
        ("Bootstrap", Code::AlreadyExists) => {
            "nothing to do if the members belong to this cluster: check with `talos members`".into()
        }
        (_, Code::PermissionDenied) => {
            "use an os:admin talosconfig, or check the node's mode with `talos version`".into()
        }
        (_, Code::InvalidArgument) => {
            "run `validate` on the cluster definition and fix what it reports".into()
        }
        (_, Code::Unavailable) | (_, Code::DeadlineExceeded) => {
            "retry in a moment; check the node's console if it persists".into()
        }
        (_, Code::FailedPrecondition) => {
            "wait and retry; `talos services` shows what the node is waiting for".into()
        }
        (_, Code::Unimplemented) => {
            "target a control-plane node, or check the node's Talos version and mode".into()
        }
        _ => "check the node's logs (`talosctl logs machined`)".into(),
    }
}
