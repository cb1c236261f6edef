//! cert-manager style issuance with plain inputs: a [`CertRequest`] (what a `Certificate`
//! spec asks for) issued by a SelfSigned issuer ([`issue_self_signed`]) or a CA issuer
//! ([`issue_with_ca`]), and the Secret-like output folder [`SecretDir`] (`tls.crt`,
//! `tls.key`, `ca.crt`).
//!
//! What does not live here: reading `Certificate`/`Issuer` YAML, defaulting and validating
//! the resource, renewal times (trustmesh-core), and deciding when to issue (the controller).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};

use crate::ca::{Ca, CaError};
use crate::fsutil::FsError;
use crate::keys::{KeyAlgorithm, KeyEncoding, KeyError, KeyPair, pem_encode};

mod secret_dir;
pub use secret_dir::{SecretContents, SecretDir};

/// cert-manager's default `duration`: 90 days ("DefaultCertificateDuration").
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why a certificate could not be issued, written or read.
#[derive(Debug, thiserror::Error)]
pub enum CertManagerError {
    /// The request names no subject at all.
    #[error(
        "at least one of commonName, dnsNames, uris, ipAddresses or emailAddresses must be set"
    )]
    NoSubject,
    /// A name in the request cannot be encoded (e.g. a non-ASCII DNS name).
    #[error("{field}: {value:?} cannot be encoded in a certificate")]
    InvalidName {
        /// The request field (`dnsNames`, `uris`, `emailAddresses`).
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A usage string is not one cert-manager knows.
    #[error("unknown key usage {0:?}")]
    UnknownUsage(String),
    /// The duration is zero.
    #[error("duration must be positive")]
    InvalidDuration,
    /// The key algorithm or size is not supported.
    #[error("privateKey: {0}")]
    Key(#[from] KeyError),
    /// The CA issuer is unusable.
    #[error("CA issuer: {0}")]
    Ca(#[from] CaError),
    /// rcgen failed to build or sign the certificate.
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
    /// A time could not be represented in a certificate.
    #[error("time out of range for a certificate")]
    TimeOutOfRange,
    /// The system's random generator failed.
    #[error("secure random generator failed")]
    Random,
    /// Writing the output folder failed.
    #[error(transparent)]
    Write(#[from] FsError),
    /// Reading the output folder failed.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The path read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file of the output folder holds no usable certificate.
    #[error("{}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `tls.key` is not the key of the leaf in `tls.crt`.
    #[error("{}: tls.key does not match the certificate in tls.crt", dir.display())]
    KeyMismatch {
        /// The folder.
        dir: PathBuf,
    },
}

/// A cert-manager `usages` value (the `KeyUsage` strings of cert-manager's API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is exactly the cert-manager string in `as_str`
pub enum CertUsage {
    Signing,
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    KeyAgreement,
    DataEncipherment,
    CertSign,
    CrlSign,
    EncipherOnly,
    DecipherOnly,
    Any,
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    SMime,
    IpsecEndSystem,
    IpsecTunnel,
    IpsecUser,
    Timestamping,
    OcspSigning,
    MicrosoftSgc,
    NetscapeSgc,
}

const USAGES: &[(CertUsage, &str)] = &[
    (CertUsage::Signing, "signing"),
    (CertUsage::DigitalSignature, "digital signature"),
    (CertUsage::ContentCommitment, "content commitment"),
    (CertUsage::KeyEncipherment, "key encipherment"),
    (CertUsage::KeyAgreement, "key agreement"),
    (CertUsage::DataEncipherment, "data encipherment"),
    (CertUsage::CertSign, "cert sign"),
    (CertUsage::CrlSign, "crl sign"),
    (CertUsage::EncipherOnly, "encipher only"),
    (CertUsage::DecipherOnly, "decipher only"),
    (CertUsage::Any, "any"),
    (CertUsage::ServerAuth, "server auth"),
    (CertUsage::ClientAuth, "client auth"),
    (CertUsage::CodeSigning, "code signing"),
    (CertUsage::EmailProtection, "email protection"),
    (CertUsage::SMime, "s/mime"),
    (CertUsage::IpsecEndSystem, "ipsec end system"),
    (CertUsage::IpsecTunnel, "ipsec tunnel"),
    (CertUsage::IpsecUser, "ipsec user"),
    (CertUsage::Timestamping, "timestamping"),
    (CertUsage::OcspSigning, "ocsp signing"),
    (CertUsage::MicrosoftSgc, "microsoft sgc"),
    (CertUsage::NetscapeSgc, "netscape sgc"),
];

impl CertUsage {
    /// The cert-manager spelling, e.g. `"server auth"`.
    pub fn as_str(self) -> &'static str {
        USAGES
            .iter()
            .find(|(u, _)| *u == self)
            .map_or("", |(_, s)| s)
    }

    /// cert-manager's default when `usages` is empty: `digital signature`, `key encipherment`.
    pub fn defaults() -> Vec<CertUsage> {
        vec![CertUsage::DigitalSignature, CertUsage::KeyEncipherment]
    }
}

impl FromStr for CertUsage {
    type Err = CertManagerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        USAGES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(u, _)| *u)
            .ok_or_else(|| CertManagerError::UnknownUsage(s.to_owned()))
    }
}

impl fmt::Display for CertUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Usage {
    Key(KeyUsagePurpose),
    Extended(ExtendedKeyUsagePurpose),
}

impl CertUsage {
    /// The X.509 bit or OID, as Go's `x509.KeyUsage*` / `x509.ExtKeyUsage*` that cert-manager
    /// maps each string to.
    fn x509(self) -> Usage {
        use ExtendedKeyUsagePurpose as E;
        use KeyUsagePurpose as K;
        match self {
            Self::Signing | Self::DigitalSignature => Usage::Key(K::DigitalSignature),
            Self::ContentCommitment => Usage::Key(K::ContentCommitment),
            Self::KeyEncipherment => Usage::Key(K::KeyEncipherment),
            Self::KeyAgreement => Usage::Key(K::KeyAgreement),
            Self::DataEncipherment => Usage::Key(K::DataEncipherment),
            Self::CertSign => Usage::Key(K::KeyCertSign),
            Self::CrlSign => Usage::Key(K::CrlSign),
            Self::EncipherOnly => Usage::Key(K::EncipherOnly),
            Self::DecipherOnly => Usage::Key(K::DecipherOnly),
            Self::Any => Usage::Extended(E::Any),
            Self::ServerAuth => Usage::Extended(E::ServerAuth),
            Self::ClientAuth => Usage::Extended(E::ClientAuth),
            Self::CodeSigning => Usage::Extended(E::CodeSigning),
            Self::EmailProtection | Self::SMime => Usage::Extended(E::EmailProtection),
            Self::IpsecEndSystem => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5])),
            Self::IpsecTunnel => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6])),
            Self::IpsecUser => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7])),
            Self::Timestamping => Usage::Extended(E::TimeStamping),
            Self::OcspSigning => Usage::Extended(E::OcspSigning),
            Self::MicrosoftSgc => Usage::Extended(E::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])),
            Self::NetscapeSgc => Usage::Extended(E::Other(vec![2, 16, 840, 1, 113_730, 4, 1])),
        }
    }
}

/// cert-manager `privateKey.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrivateKeyAlgorithm {
    /// `RSA` (cert-manager's default).
    #[default]
    Rsa,
    /// `ECDSA`.
    Ecdsa,
    /// `Ed25519`.
    Ed25519,
}

/// cert-manager `privateKey.algorithm` + `privateKey.size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeySpec {
    /// The algorithm.
    pub algorithm: PrivateKeyAlgorithm,
    /// The size; `None` for the default.
    pub size: Option<u32>,
}

impl KeySpec {
    /// The concrete key to generate. cert-manager: "If `algorithm` is specified and `size` is
    /// not provided, key size of 256 will be used for `ECDSA` key algorithm and key size of
    /// 2048 will be used for `RSA` key algorithm. key size is ignored when using the
    /// `Ed25519` key algorithm."
    pub fn resolve(&self) -> Result<KeyAlgorithm, CertManagerError> {
        let unsupported = |what: String| CertManagerError::Key(KeyError::Unsupported(what));
        match (self.algorithm, self.size) {
            (PrivateKeyAlgorithm::Rsa, None) => Ok(KeyAlgorithm::Rsa { bits: 2048 }),
            (PrivateKeyAlgorithm::Rsa, Some(bits @ (2048 | 3072 | 4096))) => {
                Ok(KeyAlgorithm::Rsa { bits })
            }
            (PrivateKeyAlgorithm::Rsa, Some(8192)) => Err(unsupported(
                "RSA 8192: valid for cert-manager, but only 2048, 3072 and 4096-bit RSA keys can \
                 be generated here"
                    .into(),
            )),
            (PrivateKeyAlgorithm::Rsa, Some(other)) => Err(unsupported(format!(
                "RSA size {other}: cert-manager accepts 2048, 4096 or 8192"
            ))),
            (PrivateKeyAlgorithm::Ecdsa, None | Some(256)) => Ok(KeyAlgorithm::EcdsaP256),
            (PrivateKeyAlgorithm::Ecdsa, Some(384)) => Ok(KeyAlgorithm::EcdsaP384),
            (PrivateKeyAlgorithm::Ecdsa, Some(521)) => Ok(KeyAlgorithm::EcdsaP521),
            (PrivateKeyAlgorithm::Ecdsa, Some(other)) => Err(unsupported(format!(
                "ECDSA size {other}: valid values are 256, 384 or 521"
            ))),
            (PrivateKeyAlgorithm::Ed25519, _) => Ok(KeyAlgorithm::Ed25519),
        }
    }
}

/// What a cert-manager `Certificate` asks for, already defaulted and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// `commonName`.
    pub common_name: Option<String>,
    /// `dnsNames`.
    pub dns_names: Vec<String>,
    /// `uris`.
    pub uris: Vec<String>,
    /// `ipAddresses`.
    pub ip_addresses: Vec<IpAddr>,
    /// `emailAddresses`.
    pub email_addresses: Vec<String>,
    /// `subject.organizations`.
    pub organizations: Vec<String>,
    /// `duration`.
    pub duration: Duration,
    /// `isCA`.
    pub is_ca: bool,
    /// `usages` (empty: cert-manager's defaults).
    pub usages: Vec<CertUsage>,
    /// `privateKey.algorithm` and `privateKey.size`.
    pub key: KeySpec,
    /// `privateKey.encoding`.
    pub key_encoding: KeyEncoding,
}

impl Default for CertRequest {
    /// cert-manager's defaults: 90 days, RSA 2048, PKCS#1, default usages, no names.
    fn default() -> Self {
        Self {
            common_name: None,
            dns_names: Vec::new(),
            uris: Vec::new(),
            ip_addresses: Vec::new(),
            email_addresses: Vec::new(),
            organizations: Vec::new(),
            duration: DEFAULT_DURATION,
            is_ca: false,
            usages: Vec::new(),
            key: KeySpec::default(),
            key_encoding: KeyEncoding::Pkcs1,
        }
    }
}

/// An issued certificate in the shape of a cert-manager Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// `tls.crt`: the leaf, then the chain without a self-signed root.
    pub tls_crt: String,
    /// `tls.key`: the private key in the requested encoding.
    pub tls_key: String,
    /// `ca.crt`: the certificate itself (SelfSigned) or the top of the issuer's chain (CA).
    pub ca_crt: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

/// Who signs.
#[derive(Debug, Clone, Copy)]
pub enum IssuerRef<'a> {
    /// cert-manager's SelfSigned issuer: the certificate signs itself.
    SelfSigned,
    /// cert-manager's CA issuer, with the CA from its Secret.
    Ca(&'a Ca),
}

/// Issues `req` with a new key, self-signed (cert-manager SelfSigned issuer).
pub fn issue_self_signed(
    req: &CertRequest,
    now: SystemTime,
) -> Result<IssuedCert, CertManagerError> {
    issue(req, IssuerRef::SelfSigned, None, now)
}

/// Issues `req` with a new key, signed by `ca` (cert-manager CA issuer).
pub fn issue_with_ca(
    req: &CertRequest,
    ca: &Ca,
    now: SystemTime,
) -> Result<IssuedCert, CertManagerError> {
    issue(req, IssuerRef::Ca(ca), None, now)
}

/// Issues `req` by `issuer`, with `key` if given (`rotationPolicy: Never` keeps the existing
/// key) or else a new key per `req.key`. Validity is `[now, now + duration]`: cert-manager does
/// not backdate.
pub fn issue(
    req: &CertRequest,
    issuer: IssuerRef<'_>,
    key: Option<&KeyPair>,
    now: SystemTime,
) -> Result<IssuedCert, CertManagerError> {
    let generated;
    let key = match key {
        Some(k) => k,
        None => {
            generated = KeyPair::generate_for(req.key.resolve()?)?;
            &generated
        }
    };
    let Prepared {
        mut params,
        not_before,
        not_after,
        serial,
    } = prepare(req, now)?;
    let (tls_crt, ca_crt) = match issuer {
        IssuerRef::SelfSigned => {
            let cert = params
                .self_signed(key.rcgen())
                .map_err(CertManagerError::Sign)?;
            let pem = pem_encode("CERTIFICATE", cert.der());
            (pem.clone(), pem)
        }
        IssuerRef::Ca(ca) => {
            params.use_authority_key_identifier_extension = true;
            let cert = params
                .signed_by(key.rcgen(), ca.issuer())
                .map_err(CertManagerError::Sign)?;
            let mut tls_crt = pem_encode("CERTIFICATE", cert.der());
            for c in ca.chain_tail() {
                tls_crt.push_str(&pem_encode("CERTIFICATE", c));
            }
            (tls_crt, ca.root_pem())
        }
    };
    Ok(IssuedCert {
        tls_crt,
        tls_key: key.to_pem(req.key_encoding)?,
        ca_crt,
        not_before,
        not_after,
        serial,
    })
}

/// Certificate parameters for a request, and what they fix.
struct Prepared {
    params: CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

fn prepare(req: &CertRequest, now: SystemTime) -> Result<Prepared, CertManagerError> {
    if req.common_name.is_none()
        && req.dns_names.is_empty()
        && req.uris.is_empty()
        && req.ip_addresses.is_empty()
        && req.email_addresses.is_empty()
    {
        return Err(CertManagerError::NoSubject);
    }
    if req.duration.is_zero() {
        return Err(CertManagerError::InvalidDuration);
    }
    let mut p = CertificateParams::default();
    // rcgen's default subject is "CN=rcgen self signed cert": always build our own.
    let mut dn = DistinguishedName::new();
    for org in &req.organizations {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    if let Some(cn) = &req.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    p.distinguished_name = dn;
    let ia5 = |field: &'static str, v: &str| {
        Ia5String::try_from(v).map_err(|_| CertManagerError::InvalidName {
            field,
            value: v.to_owned(),
        })
    };
    for d in &req.dns_names {
        p.subject_alt_names
            .push(SanType::DnsName(ia5("dnsNames", d)?));
    }
    for u in &req.uris {
        p.subject_alt_names.push(SanType::URI(ia5("uris", u)?));
    }
    for ip in &req.ip_addresses {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for e in &req.email_addresses {
        p.subject_alt_names
            .push(SanType::Rfc822Name(ia5("emailAddresses", e)?));
    }
    p.is_ca = if req.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    // cert-manager BuildKeyUsages: "if isCA { ku |= x509.KeyUsageCertSign }" and "if
    // len(usages) == 0 { usages = append(usages, v1.DefaultKeyUsages()...) }".
    let mut usages = if req.usages.is_empty() {
        CertUsage::defaults()
    } else {
        req.usages.clone()
    };
    if req.is_ca {
        usages.insert(0, CertUsage::CertSign);
    }
    for u in usages {
        match u.x509() {
            Usage::Key(k) if !p.key_usages.contains(&k) => p.key_usages.push(k),
            Usage::Extended(e) if !p.extended_key_usages.contains(&e) => {
                p.extended_key_usages.push(e)
            }
            _ => {}
        }
    }
    let start = crate::truncate_to_secs(now);
    let end = start
        .checked_add(req.duration)
        .map(crate::truncate_to_secs)
        .ok_or(CertManagerError::TimeOutOfRange)?;
    p.not_before = start.into();
    p.not_after = end.into();
    // cert-manager: "serialNumberLimit = new(big.Int).Lsh(big.NewInt(1), 128)" — a random
    // serial below 2^128.
    let serial = crate::random_serial().map_err(|_| CertManagerError::Random)?;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(Prepared {
        params: p,
        not_before: start,
        not_after: end,
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::svid::CertInfo;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use std::time::UNIX_EPOCH;
    use trustmesh_core::TrustDomain;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn web_request() -> CertRequest {
        CertRequest {
            common_name: Some("web.example.com".into()),
            dns_names: vec!["web.example.com".into(), "*.web.example.com".into()],
            uris: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
            ip_addresses: vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            email_addresses: vec!["ops@example.com".into()],
            organizations: vec!["Example Inc".into()],
            duration: Duration::from_secs(3600),
            key: KeySpec {
                algorithm: PrivateKeyAlgorithm::Ecdsa,
                size: None,
            },
            ..CertRequest::default()
        }
    }

    #[test]
    fn self_signed_carries_every_requested_field() {
        let issued = issue_self_signed(&web_request(), t0()).unwrap();
        let infos = CertInfo::parse_pem(&issued.tls_crt).unwrap();
        assert_eq!(infos.len(), 1);
        let c = &infos[0];
        assert_eq!(c.subject, "O=Example Inc, CN=web.example.com");
        assert!(c.self_signed);
        assert_eq!(c.dns_sans, vec!["web.example.com", "*.web.example.com"]);
        assert_eq!(c.uri_sans, vec!["spiffe://cluster.local/ns/default/sa/web"]);
        assert_eq!(c.ip_sans.len(), 2);
        assert_eq!(c.email_sans, vec!["ops@example.com"]);
        assert_eq!(c.not_before, t0(), "cert-manager does not backdate");
        assert_eq!(c.not_after, t0() + Duration::from_secs(3600));
        assert_eq!(issued.not_after, c.not_after);
        assert_eq!(c.serial_hex, issued.serial);
        // Defaults: "digital signature", "key encipherment"; not a CA.
        assert_eq!(c.key_usage, vec!["digitalSignature", "keyEncipherment"]);
        assert!(c.extended_key_usage.is_empty());
        assert_eq!(c.basic_constraints_ca, Some(false));
        // SelfSigned: ca.crt is the certificate itself.
        assert_eq!(issued.ca_crt, issued.tls_crt);
        assert_eq!(c.public_key_algorithm, "ECDSA P-256");
        assert!(issued.tls_key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    }

    #[test]
    fn is_ca_adds_cert_sign_and_usages_map_like_cert_manager() {
        let req = CertRequest {
            is_ca: true,
            usages: [
                "server auth",
                "client auth",
                "crl sign",
                "signing",
                "s/mime",
                "ipsec tunnel",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            ..web_request()
        };
        let issued = issue_self_signed(&req, t0()).unwrap();
        let c = CertInfo::parse_pem(&issued.tls_crt).unwrap().remove(0);
        assert!(c.is_ca);
        assert_eq!(
            c.key_usage,
            vec!["digitalSignature", "keyCertSign", "cRLSign"]
        );
        assert_eq!(
            c.extended_key_usage,
            vec![
                "serverAuth",
                "clientAuth",
                "emailProtection",
                "1.3.6.1.5.5.7.3.6"
            ]
        );
        assert!(matches!(
            "flying".parse::<CertUsage>(),
            Err(CertManagerError::UnknownUsage(u)) if u == "flying"
        ));
        for (u, s) in USAGES {
            assert_eq!(u.as_str(), *s);
            assert_eq!(s.parse::<CertUsage>().unwrap(), *u);
        }
    }

    #[test]
    fn ca_issuer_chains_to_the_ca_and_names_its_root() {
        let root = Ca::generate(&TrustDomain::new("example.org").unwrap(), t0()).unwrap();
        let req = CertRequest {
            key: KeySpec {
                algorithm: PrivateKeyAlgorithm::Ed25519,
                size: None,
            },
            key_encoding: KeyEncoding::Pkcs8,
            ..web_request()
        };
        let issued = issue_with_ca(&req, &root, t0()).unwrap();
        let chain = CertInfo::parse_pem(&issued.tls_crt).unwrap();
        assert_eq!(chain.len(), 1, "self-signed root not in tls.crt");
        assert_eq!(chain[0].issuer, root.subject());
        assert_eq!(issued.ca_crt, root.root_pem());
        assert_eq!(chain[0].public_key_algorithm, "Ed25519");
        assert!(issued.tls_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        // And it verifies to the CA as a server certificate.
        let leaf = CertificateDer::from_pem_slice(issued.tls_crt.as_bytes()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(root.root_der()).unwrap();
        crate::verify::verify_chain(
            &leaf,
            &[],
            &[anchor],
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_010)),
            crate::verify::Usage::Server,
        )
        .unwrap();
    }

    #[test]
    fn key_specs_resolve_like_cert_manager() {
        let spec = |algorithm, size| KeySpec { algorithm, size };
        use PrivateKeyAlgorithm::*;
        assert_eq!(
            spec(Rsa, None).resolve().unwrap(),
            KeyAlgorithm::Rsa { bits: 2048 }
        );
        assert_eq!(
            spec(Ecdsa, None).resolve().unwrap(),
            KeyAlgorithm::EcdsaP256
        );
        assert_eq!(
            spec(Ecdsa, Some(384)).resolve().unwrap(),
            KeyAlgorithm::EcdsaP384
        );
        assert_eq!(
            spec(Ecdsa, Some(521)).resolve().unwrap(),
            KeyAlgorithm::EcdsaP521
        );
        assert_eq!(
            spec(Ed25519, Some(4096)).resolve().unwrap(),
            KeyAlgorithm::Ed25519
        );
        assert!(spec(Ecdsa, Some(512)).resolve().is_err());
        let err = spec(Rsa, Some(8192)).resolve().unwrap_err();
        assert!(err.to_string().contains("8192"), "{err}");
        // Default request: RSA 2048 in PKCS#1.
        let issued = issue_self_signed(
            &CertRequest {
                common_name: Some("x".into()),
                ..CertRequest::default()
            },
            t0(),
        )
        .unwrap();
        assert!(
            issued
                .tls_key
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        let c = CertInfo::parse_pem(&issued.tls_crt).unwrap().remove(0);
        assert_eq!(c.public_key_algorithm, "RSA 2048");
        assert_eq!(c.not_after, t0() + DEFAULT_DURATION);
    }

    #[test]
    fn requests_without_names_or_with_unencodable_names_fail() {
        let empty = CertRequest::default();
        assert!(matches!(
            issue_self_signed(&empty, t0()),
            Err(CertManagerError::NoSubject)
        ));
        let bad = CertRequest {
            dns_names: vec!["bücher.example".into()],
            ..web_request()
        };
        assert!(matches!(
            issue_self_signed(&bad, t0()),
            Err(CertManagerError::InvalidName {
                field: "dnsNames",
                ..
            })
        ));
    }

    #[test]
    fn existing_key_is_reused_when_given() {
        let key = KeyPair::generate().unwrap();
        let issued = issue(&web_request(), IssuerRef::SelfSigned, Some(&key), t0()).unwrap();
        let c = CertInfo::parse_pem(&issued.tls_crt).unwrap().remove(0);
        assert_eq!(c.public_key_raw, key.public_key_raw());
    }
}
