//! Talos API client credentials: the certificate a client presents (roles in its
//! Organization), minted from the cluster's OS CA, and the decoded PEM a
//! connection uses. Below both the talosconfig model and the connection code.

use std::sync::Arc;

use endsys_core::pki::{
    CertAndKey, CertificateAuthority, LeafSpec, PkiError, PrivateKey, Usage, CLIENT_VALIDITY,
};

/// The role of an admin talosconfig: Talos reads roles from the client
/// certificate's Organization, prefixed `os:` (`os:admin`, `os:operator`,
/// `os:reader`, `os:etcd:backup`; siderolabs/talos `pkg/machinery/role/role.go`).
pub const ADMIN_ROLE: &str = "os:admin";

/// A Talos API client certificate carrying `roles`, issued by the cluster's OS CA
/// as `talosctl gen config` and talhelper issue the admin one (siderolabs/talos
/// v1.13.9 `pkg/machinery/config/generate/secrets/ca.go`, `NewAdminCertificateAndKey`):
/// a fresh key of the CA's family (Ed25519 for the OS CA), Subject `O=<roles>` and
/// no CN or SANs, KeyUsage DigitalSignature, ExtKeyUsage ClientAuth only (apid checks
/// it since 1.12), valid one year (`TalosAPIDefaultCertificateValidityDuration`).
pub fn client_certificate(
    os_ca: &CertificateAuthority,
    roles: &[&str],
) -> Result<CertAndKey, PkiError> {
    os_ca.issue(&LeafSpec {
        common_name: String::new(),
        organizations: roles.iter().map(|r| r.to_string()).collect(),
        ip_sans: vec![],
        dns_sans: vec![],
        usage: Usage::Client,
        validity: CLIENT_VALIDITY,
    })
}

/// Client credentials from a talosconfig context (decoded PEM).
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key: PrivateKey,
}

impl Credentials {
    /// Credentials for `roles`, minted from the cluster's OS CA
    /// ([`client_certificate`]).
    pub fn issue(os_ca: &CertificateAuthority, roles: &[&str]) -> Result<Arc<Self>, PkiError> {
        let leaf = client_certificate(os_ca, roles)?;
        Ok(Arc::new(Credentials {
            ca_pem: os_ca.pair.cert_pem.clone().into_bytes(),
            cert_pem: leaf.cert_pem.into_bytes(),
            key: leaf.key,
        }))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}
