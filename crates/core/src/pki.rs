//! CAs and certificates the way Talos makes them, and the PEM quirks of its files.
//!
//! Talos writes Ed25519 keys under the PEM label `ED25519 PRIVATE KEY` (PKCS#8 v1
//! body) and ECDSA keys as SEC1 `EC PRIVATE KEY`. rustls and rcgen (ring backend)
//! accept neither label as is, so every key that enters the tool goes through
//! [`PrivateKey::from_pem`], and every key it writes goes out in Talos's own form.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

/// Errors from certificate and key handling. `what` names the file or field involved.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{what}: not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: unsupported private key (label `{label}`): {reason}")]
    BadKey {
        what: String,
        label: String,
        reason: String,
    },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("issuing certificate `{subject}` failed: {reason}")]
    Issue { subject: String, reason: String },
}

/// Key algorithms Talos uses: Ed25519 for the OS CA and its leaves, ECDSA P-256 for
/// the Kubernetes, aggregator and etcd CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ed25519,
    EcdsaP256,
}

/// A private key, held as PKCS#8 DER, with the algorithm it belongs to.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        let alg = match algorithm {
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let kp = KeyPair::generate_for(alg).map_err(|e| PkiError::BadKey {
            what: "generated key".into(),
            label: String::new(),
            reason: e.to_string(),
        })?;
        Self::from_pkcs8_der(kp.serialize_der(), "generated key")
    }

    /// Reads a key in any of the PEM forms Talos, talosctl or openssl write:
    /// `ED25519 PRIVATE KEY`, `EC PRIVATE KEY` (SEC1) or `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(pem_text: &[u8], what: &str) -> Result<Self, PkiError> {
        let block = pem::parse(pem_text).map_err(|e| PkiError::BadPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| PkiError::BadKey {
            what: what.into(),
            label: block.tag().to_string(),
            reason,
        };
        match block.tag() {
            "ED25519 PRIVATE KEY" | "PRIVATE KEY" => {
                Self::from_pkcs8_der(block.contents().to_vec(), what)
            }
            "EC PRIVATE KEY" => {
                use p256::pkcs8::EncodePrivateKey;
                let sk = p256::SecretKey::from_sec1_der(block.contents())
                    .map_err(|e| bad(format!("SEC1 P-256 key: {e}")))?;
                let der = sk
                    .to_pkcs8_der()
                    .map_err(|e| bad(format!("re-encoding as PKCS#8: {e}")))?;
                Self::from_pkcs8_der(der.as_bytes().to_vec(), what)
            }
            other => Err(bad(format!(
                "expected ED25519 PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY, found `{other}`"
            ))),
        }
    }

    fn from_pkcs8_der(der: Vec<u8>, what: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::BadKey {
            what: what.into(),
            label: "PRIVATE KEY".into(),
            reason: reason.into(),
        };
        let algorithm = pkcs8_algorithm(&der).ok_or_else(|| bad("not a PKCS#8 private key"))?;
        if algorithm == OID_ED25519 {
            // Normalise to PKCS#8 v1 (seed only), the form Go writes and reads.
            let seed = ed25519_seed(&der).ok_or_else(|| bad("malformed Ed25519 PKCS#8"))?;
            let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
            v1.extend_from_slice(&seed);
            return Ok(Self {
                algorithm: KeyAlgorithm::Ed25519,
                pkcs8_der: v1,
            });
        }
        if algorithm == OID_EC_PUBLIC_KEY {
            return Ok(Self {
                algorithm: KeyAlgorithm::EcdsaP256,
                pkcs8_der: der,
            });
        }
        Err(bad("only Ed25519 and ECDSA P-256 keys are supported"))
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// PKCS#8 DER, the form rustls wants.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// PEM with the standard `PRIVATE KEY` label (for rustls/tonic identities).
    pub fn to_pkcs8_pem(&self) -> String {
        pem_lf(&pem::Pem::new("PRIVATE KEY", self.pkcs8_der.clone()))
    }

    /// PEM in the form Talos writes: `ED25519 PRIVATE KEY` or SEC1 `EC PRIVATE KEY`.
    pub fn to_talos_pem(&self) -> Result<String, PkiError> {
        match self.algorithm {
            KeyAlgorithm::Ed25519 => Ok(pem_lf(&pem::Pem::new(
                "ED25519 PRIVATE KEY",
                self.pkcs8_der.clone(),
            ))),
            KeyAlgorithm::EcdsaP256 => {
                use p256::pkcs8::DecodePrivateKey;
                let sk = p256::SecretKey::from_pkcs8_der(&self.pkcs8_der).map_err(|e| {
                    PkiError::BadKey {
                        what: "ECDSA key".into(),
                        label: "PRIVATE KEY".into(),
                        reason: e.to_string(),
                    }
                })?;
                // SEC1 with the named-curve parameters, as Go's x509.MarshalECPrivateKey
                // writes it: p256's to_sec1_der leaves them out, and Go (kubectl,
                // Talos) and OpenSSL then refuse the key.
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let public = sk.public_key().to_encoded_point(false);
                let mut der = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
                der.extend_from_slice(&sk.to_bytes());
                der.extend_from_slice(&[
                    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]);
                der.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
                der.extend_from_slice(public.as_bytes());
                Ok(pem_lf(&pem::Pem::new("EC PRIVATE KEY", der)))
            }
        }
    }

    fn key_pair(&self) -> Result<KeyPair, PkiError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8_der.clone());
        let alg = match self.algorithm {
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).map_err(|e| PkiError::BadKey {
            what: "key".into(),
            label: "PRIVATE KEY".into(),
            reason: e.to_string(),
        })
    }
}

/// PEM with `\n` line endings, as Go writes it (the pem crate defaults to CRLF).
fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The algorithm OID of a PKCS#8 document (RFC 5958 `OneAsymmetricKey`:
/// SEQUENCE { INTEGER version, SEQUENCE { OID algorithm, … }, … }). Read at its
/// place, not searched for: key bytes can contain any OID's bytes.
fn pkcs8_algorithm(der: &[u8]) -> Option<&[u8]> {
    /// Tag and length of the DER element at `at`: (content start, content length).
    fn element(der: &[u8], at: usize, tag: u8) -> Option<(usize, usize)> {
        if *der.get(at)? != tag {
            return None;
        }
        let first = *der.get(at + 1)? as usize;
        if first < 0x80 {
            return Some((at + 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(at + 2..at + 2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        Some((at + 2 + n, len))
    }
    let (body, _) = element(der, 0, 0x30)?;
    let (version, version_len) = element(der, body, 0x02)?;
    let (alg, _) = element(der, version + version_len, 0x30)?;
    let (oid, oid_len) = element(der, alg, 0x06)?;
    der.get(oid..oid + oid_len)
}

/// Finds the 32-byte seed in an Ed25519 PKCS#8 v1 or v2 document: the OCTET STRING
/// wrapped in the privateKey OCTET STRING (`04 22 04 20 <seed>`).
fn ed25519_seed(der: &[u8]) -> Option<[u8; 32]> {
    let pos = der.windows(4).position(|w| w == [0x04, 0x22, 0x04, 0x20])?;
    let seed = der.get(pos + 4..pos + 36)?;
    seed.try_into().ok()
}

/// A certificate with its private key, both PEM (key in Talos form).
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key: PrivateKey,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertAndKey {
    /// Loads a certificate and key from PEM (any of the key forms in [`PrivateKey::from_pem`]).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self, PkiError> {
        let cert_text = std::str::from_utf8(cert_pem).map_err(|e| PkiError::BadPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
        CertInfo::from_pem(cert_pem, what)?;
        Ok(Self {
            cert_pem: cert_text.to_string(),
            key: PrivateKey::from_pem(key_pem, what)?,
        })
    }

    /// The key in Talos's PEM form.
    pub fn key_pem(&self) -> Result<String, PkiError> {
        self.key.to_talos_pem()
    }

    /// DER of the certificate.
    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        let block = pem::parse(&self.cert_pem).map_err(|e| PkiError::BadPem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
        Ok(block.contents().to_vec())
    }
}

/// What a certificate is for, which fixes its key usages the way Talos sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// apid / API server serving certificate: EKU serverAuth only.
    Server,
    /// Client certificate: EKU exactly clientAuth (apid rejects anything else).
    Client,
    /// Both (etcd peers); never valid for talosconfig client certs.
    ServerAndClient,
}

/// The subject and names of a certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// Subject Organization values; for Talos client certs these are the roles.
    pub organizations: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<String>,
    pub usage: Usage,
    pub validity: Duration,
}

/// A certificate authority that can issue leaves.
#[derive(Debug, Clone)]
pub struct CertificateAuthority {
    pub pair: CertAndKey,
}

/// Ten years, the lifetime of the CAs Talos generates.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// One year, the lifetime of admin client certificates.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

impl CertificateAuthority {
    /// Makes a self-signed CA like Talos does: Organization `org`, KU certSign +
    /// digitalSignature, EKU serverAuth + clientAuth.
    pub fn generate(
        algorithm: KeyAlgorithm,
        org: &str,
        validity: Duration,
    ) -> Result<Self, PkiError> {
        let key = PrivateKey::generate(algorithm)?;
        let kp = key.key_pair()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Talos's front-proxy (aggregator) CA has an empty subject.
        if !org.is_empty() {
            dn.push(DnType::OrganizationName, org);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, validity);
        let cert = params.self_signed(&kp).map_err(|e| PkiError::Issue {
            subject: format!("CA {org}"),
            reason: e.to_string(),
        })?;
        Ok(Self {
            pair: CertAndKey {
                cert_pem: cert.pem(),
                key,
            },
        })
    }

    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self, PkiError> {
        Ok(Self {
            pair: CertAndKey::from_pem(cert_pem, key_pem, what)?,
        })
    }

    /// Issues a leaf signed by this CA; the leaf key uses the CA's algorithm, as
    /// Talos does.
    pub fn issue(&self, spec: &LeafSpec) -> Result<CertAndKey, PkiError> {
        let issue_err = |reason: String| PkiError::Issue {
            subject: spec.common_name.clone(),
            reason,
        };
        let ca_kp = self.pair.key.key_pair()?;
        let issuer = Issuer::from_ca_cert_pem(&self.pair.cert_pem, ca_kp)
            .map_err(|e| issue_err(format!("reading the CA certificate: {e}")))?;
        let key = PrivateKey::generate(self.pair.key.algorithm())?;
        let kp = key.key_pair()?;
        let mut params = leaf_params(spec)?;
        set_validity(&mut params, spec.validity);
        let cert = params
            .signed_by(&kp, &issuer)
            .map_err(|e| issue_err(e.to_string()))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key,
        })
    }
}

/// Subject, usages and names of a leaf, as Talos sets them.
fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams, PkiError> {
    let issue_err = |reason: String| PkiError::Issue {
        subject: spec.common_name.clone(),
        reason,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if !spec.common_name.is_empty() {
        dn.push(DnType::CommonName, spec.common_name.as_str());
    }
    for org in &spec.organizations {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match spec.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    for ip in &spec.ip_sans {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for dns in &spec.dns_sans {
        let name = dns
            .clone()
            .try_into()
            .map_err(|e| issue_err(format!("DNS name `{dns}`: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    Ok(params)
}

/// A certificate signing request with the key it was made with: what a Talos
/// worker sends trustd for its apid server certificate.
#[derive(Clone)]
pub struct CsrAndKey {
    pub csr_pem: String,
    pub key: PrivateKey,
}

impl CsrAndKey {
    /// A fresh `algorithm` key and a CSR for `spec`'s subject and names.
    pub fn generate(algorithm: KeyAlgorithm, spec: &LeafSpec) -> Result<Self, PkiError> {
        let key = PrivateKey::generate(algorithm)?;
        let kp = key.key_pair()?;
        let csr = leaf_params(spec)?
            .serialize_request(&kp)
            .and_then(|r| r.pem())
            .map_err(|e| PkiError::Issue {
                subject: spec.common_name.clone(),
                reason: format!("certificate signing request: {e}"),
            })?;
        Ok(Self { csr_pem: csr, key })
    }

    /// The certificate trustd returned, with this key.
    pub fn with_cert(&self, cert_pem: &[u8], what: &str) -> Result<CertAndKey, PkiError> {
        let text = std::str::from_utf8(cert_pem).map_err(|e| PkiError::BadPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
        CertInfo::from_pem(cert_pem, what)?;
        Ok(CertAndKey {
            cert_pem: text.to_string(),
            key: self.key.clone(),
        })
    }
}

impl CertificateAuthority {
    /// Signs a CSR the way trustd does: names and CN from the request, no
    /// Organization (so the result can never carry a role), KU digitalSignature,
    /// EKU serverAuth only. Returns the certificate PEM.
    pub fn sign_server_csr(&self, csr_pem: &str, validity: Duration) -> Result<String, PkiError> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadPem {
                what: "certificate signing request".into(),
                reason: e.to_string(),
            }
        })?;
        let issue_err = |reason: String| PkiError::Issue {
            subject: "CSR".into(),
            reason,
        };
        let mut dn = DistinguishedName::new();
        for (ty, value) in req.params.distinguished_name.iter() {
            if *ty != DnType::OrganizationName {
                dn.push(ty.clone(), value.clone());
            }
        }
        req.params.distinguished_name = dn;
        req.params.is_ca = IsCa::ExplicitNoCa;
        req.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        req.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut req.params, validity);
        let ca_kp = self.pair.key.key_pair()?;
        let issuer = Issuer::from_ca_cert_pem(&self.pair.cert_pem, ca_kp)
            .map_err(|e| issue_err(format!("reading the CA certificate: {e}")))?;
        let cert = req
            .signed_by(&issuer)
            .map_err(|e| issue_err(e.to_string()))?;
        Ok(cert.pem())
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree by a few seconds.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
}

/// What the tool needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    pub organizations: Vec<String>,
    pub is_ca: bool,
    pub not_after_unix: i64,
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<String>,
    /// Extended key usages: (serverAuth, clientAuth, any other).
    pub eku_server_auth: bool,
    pub eku_client_auth: bool,
    pub eku_other: bool,
    /// SHA-256 of the DER certificate, hex; compares CAs across files.
    pub fingerprint_sha256: String,
}

impl CertInfo {
    /// Parses the first certificate of a PEM text.
    pub fn from_pem(cert_pem: &[u8], what: &str) -> Result<Self, PkiError> {
        let block = pem::parse(cert_pem).map_err(|e| PkiError::BadPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
        if block.tag() != "CERTIFICATE" {
            return Err(PkiError::BadCertificate {
                what: what.into(),
                reason: format!("PEM label is `{}`, expected CERTIFICATE", block.tag()),
            });
        }
        Self::from_der(block.contents(), what)
    }

    pub fn from_der(der: &[u8], what: &str) -> Result<Self, PkiError> {
        use sha2::Digest;
        use x509_parser::prelude::*;
        let bad = |reason: String| PkiError::BadCertificate {
            what: what.into(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let organizations = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut ip_sans = Vec::new();
        let mut dns_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ip_sans.push(IpAddr::from(a));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ip_sans.push(IpAddr::from(a));
                        }
                    }
                    GeneralName::DNSName(d) => dns_sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        let (mut s, mut c, mut o) = (false, false, false);
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            s = eku.value.server_auth;
            c = eku.value.client_auth;
            o = eku.value.any
                || eku.value.code_signing
                || eku.value.email_protection
                || eku.value.time_stamping
                || eku.value.ocsp_signing
                || !eku.value.other.is_empty();
        }
        Ok(Self {
            subject_cn,
            organizations,
            is_ca: cert.is_ca(),
            not_after_unix: cert.validity().not_after.timestamp(),
            ip_sans,
            dns_sans,
            eku_server_auth: s,
            eku_client_auth: c,
            eku_other: o,
            fingerprint_sha256: hex::encode(sha2::Sha256::digest(der)),
        })
    }
}

/// Whether `key` is the private half of the first certificate in `cert_pem`
/// (compares the key's public part with the certificate's subjectPublicKey).
pub fn key_matches_cert(cert_pem: &[u8], key: &PrivateKey, what: &str) -> Result<bool, PkiError> {
    use x509_parser::prelude::*;
    let block = ::pem::parse(cert_pem).map_err(|e| PkiError::BadPem {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let (_, cert) =
        X509Certificate::from_der(block.contents()).map_err(|e| PkiError::BadCertificate {
            what: what.into(),
            reason: e.to_string(),
        })?;
    let public = key.key_pair()?.public_key_raw().to_vec();
    Ok(cert.public_key().subject_public_key.data.as_ref() == public.as_slice())
}

/// Every certificate in a PEM bundle, as DER.
pub fn certs_from_pem(pem_text: &[u8], what: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| PkiError::BadPem {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.contents().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(PkiError::BadCertificate {
            what: what.into(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_round_trip_in_talos_form() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let pem = key.to_talos_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN ED25519 PRIVATE KEY-----"));
        let back = PrivateKey::from_pem(pem.as_bytes(), "test").unwrap();
        assert_eq!(back.pkcs8_der(), key.pkcs8_der());
        // Go's MarshalPKCS8PrivateKey output is 48 bytes (v1, seed only).
        assert_eq!(key.pkcs8_der().len(), 48);
    }

    #[test]
    fn the_algorithm_is_read_from_its_place_not_found_in_key_bytes() {
        // An ECDSA key whose bytes happen to hold Ed25519's OID (2b 65 70) was
        // once taken for a malformed Ed25519 key, about once in 10^5 keys.
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut der = key.pkcs8_der().to_vec();
        let n = der.len();
        der[n - 3..].copy_from_slice(OID_ED25519);
        let back = PrivateKey::from_pkcs8_der(der, "test").unwrap();
        assert_eq!(back.algorithm(), KeyAlgorithm::EcdsaP256);
        assert!(PrivateKey::from_pkcs8_der(vec![0x30, 0x03, 0x02, 0x01], "test").is_err());
    }

    #[test]
    fn ecdsa_keys_are_written_as_sec1_and_read_back() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_talos_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let back = PrivateKey::from_pem(pem.as_bytes(), "test").unwrap();
        assert_eq!(back.algorithm(), KeyAlgorithm::EcdsaP256);
        assert_eq!(back.pkcs8_der(), key.pkcs8_der());
    }

    #[test]
    fn issued_client_cert_has_roles_and_only_client_auth() {
        let ca =
            CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", CA_VALIDITY).unwrap();
        let leaf = ca
            .issue(&LeafSpec {
                common_name: String::new(),
                organizations: vec!["os:admin".into()],
                ip_sans: vec![],
                dns_sans: vec![],
                usage: Usage::Client,
                validity: CLIENT_VALIDITY,
            })
            .unwrap();
        let info = CertInfo::from_pem(leaf.cert_pem.as_bytes(), "leaf").unwrap();
        assert_eq!(info.organizations, vec!["os:admin".to_string()]);
        assert!(info.eku_client_auth && !info.eku_server_auth && !info.eku_other);
        assert!(!info.is_ca);
        assert_eq!(leaf.key.algorithm(), KeyAlgorithm::Ed25519);
        let ca_info = CertInfo::from_pem(ca.pair.cert_pem.as_bytes(), "ca").unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.organizations, vec!["talos".to_string()]);
    }

    #[test]
    fn garbage_is_rejected_with_the_source_named() {
        let err = PrivateKey::from_pem(b"not pem", "talosconfig key").unwrap_err();
        assert!(err.to_string().contains("talosconfig key"));
        let rsa = pem_lf(&pem::Pem::new("RSA PRIVATE KEY", vec![1, 2, 3]));
        let err = PrivateKey::from_pem(rsa.as_bytes(), "k").unwrap_err();
        assert!(matches!(err, PkiError::BadKey { .. }));
        let err = CertInfo::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "c",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::BadCertificate { .. }));
    }

    #[test]
    fn trustd_signs_a_csr_as_server_only_without_roles() {
        let ca =
            CertificateAuthority::generate(KeyAlgorithm::Ed25519, "talos", CA_VALIDITY).unwrap();
        let spec = LeafSpec {
            common_name: "worker1".into(),
            organizations: vec!["os:admin".into()],
            ip_sans: vec!["127.0.60.14".parse().unwrap()],
            dns_sans: vec!["worker1".into()],
            usage: Usage::Server,
            validity: CLIENT_VALIDITY,
        };
        let csr = CsrAndKey::generate(KeyAlgorithm::Ed25519, &spec).unwrap();
        let crt = ca
            .sign_server_csr(&csr.csr_pem, Duration::from_secs(3600))
            .unwrap();
        let info = CertInfo::from_pem(crt.as_bytes(), "signed").unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("worker1"));
        // A role smuggled into the CSR is dropped, and the EKU is serverAuth only.
        assert!(info.organizations.is_empty(), "{:?}", info.organizations);
        assert!(info.eku_server_auth && !info.eku_client_auth);
        let pair = csr.with_cert(crt.as_bytes(), "signed").unwrap();
        assert!(pair.cert_der().is_ok());
        assert!(ca
            .sign_server_csr("not a csr", Duration::from_secs(1))
            .is_err());
    }
}
