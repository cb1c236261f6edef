//! The certificate authority of a trust domain: [`Ca`] (generate, load from PEM, sign
//! workload CSRs into X509-SVIDs), its on-disk state [`CaStore`], and the proxy-side
//! [`csr_for`].
//!
//! The rule that shapes this module: a CSR only proves possession of a key. Everything else
//! in the certificate (the one URI SAN, CA flag, key usages, lifetime) comes from the
//! *authorized* identity the caller passes in, never from the CSR (ecosystem.md §1.4).
//!
//! What does not live here: authenticating the caller (ServiceAccount tokens, the control
//! plane's job), verification ([`crate::verify`]), cert-manager issuance ([`crate::certmanager`]).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use trustmesh_core::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::FsError;
use crate::keys::{KeyError, KeyPair, pem_encode};

mod store;
pub use store::CaStore;

/// Validity of a generated root: 10 years.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far `notBefore` is set in the past, to tolerate clock skew between machines.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CA could not be created, loaded, or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the CA store is unusable; the error names the file and says why.
    #[error("{}: {source}", path.display())]
    File {
        /// The file (`ca.crt` or `ca.key`).
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<CaError>,
    },
    /// Reading a file or directory failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The path read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Writing the CA's files failed.
    #[error(transparent)]
    Write(#[from] FsError),
    /// Only one file of the certificate/key pair exists: refusing to guess or to replace it.
    #[error(
        "{} exists but {} does not: restore the missing file or remove both to create a new CA",
        present.display(),
        missing.display()
    )]
    HalfPresent {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// An import would replace the CA a trust domain already has.
    #[error("{} already holds the CA of {trust_domain}; an import never replaces a CA", path.display())]
    Exists {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// Its CA folder.
        path: PathBuf,
    },
    /// The PEM input held no certificate.
    #[error("no CERTIFICATE found in PEM")]
    NoCertificate,
    /// The PEM or DER of a certificate could not be parsed.
    #[error("certificate could not be parsed: {0}")]
    BadCertificate(String),
    /// The certificate is not a CA (basicConstraints cA is not true). Same words as cert-manager.
    #[error("certificate is not a CA (subject {subject})")]
    NotCa {
        /// The certificate's subject.
        subject: String,
    },
    /// The private key is not the key of the certificate.
    #[error("private key does not match the certificate's public key (subject {subject})")]
    KeyMismatch {
        /// The certificate's subject.
        subject: String,
    },
    /// A key could not be loaded or generated.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The CA certificate names a different trust domain than the one it is used for.
    #[error("CA certificate is for trust domain {found}, not {expected}")]
    WrongTrustDomain {
        /// The trust domain asked for.
        expected: TrustDomain,
        /// The trust domain in the certificate's SPIFFE URI SAN.
        found: TrustDomain,
    },
    /// The CA is not bound to a trust domain, so it cannot issue SVIDs.
    #[error("CA has no trust domain: bind it with Ca::with_trust_domain before issuing SVIDs")]
    NoTrustDomain,
    /// The CSR could not be parsed, its signature is invalid, or it has unsupported content.
    #[error("CSR for {identity} rejected: {source}")]
    BadCsr {
        /// The identity the CSR was to be signed for.
        identity: SpiffeId,
        /// rcgen's reason (e.g. "Invalid CSR signature").
        #[source]
        source: rcgen::Error,
    },
    /// The CSR's public key is not one trustmesh issues SVIDs for, or is malformed.
    #[error("CSR for {identity}: unsupported public key ({reason})")]
    UnsupportedCsrKey {
        /// The identity the CSR was to be signed for.
        identity: SpiffeId,
        /// What is wrong.
        reason: String,
    },
    /// The CSR asks for URI SANs other than exactly the authorized identity.
    #[error(
        "CSR requests URI SANs {requested:?}, but the caller is authorized only for {authorized}"
    )]
    IdentityMismatch {
        /// The URI SANs the CSR asked for.
        requested: Vec<String>,
        /// The identity the caller was authenticated as.
        authorized: SpiffeId,
    },
    /// The identity belongs to another trust domain than this CA's.
    #[error("{identity} is not in this CA's trust domain {ca}")]
    ForeignIdentity {
        /// The identity asked for.
        identity: SpiffeId,
        /// The CA's trust domain.
        ca: TrustDomain,
    },
    /// The identity has no path: SPIFFE IDs of leaf SVIDs must name a workload.
    #[error("{identity} has no path: a leaf SVID's SPIFFE ID must have one")]
    NotALeafIdentity {
        /// The identity asked for.
        identity: SpiffeId,
    },
    /// The requested lifetime is zero.
    #[error("certificate lifetime must be positive")]
    InvalidLifetime,
    /// The CA certificate has expired: it can no longer issue.
    #[error("CA certificate expired at {not_after:?}")]
    CaExpired {
        /// The CA's notAfter.
        not_after: SystemTime,
    },
    /// A time could not be represented in a certificate.
    #[error("time out of range for a certificate")]
    TimeOutOfRange,
    /// The system's random generator failed.
    #[error("secure random generator failed")]
    Random,
    /// rcgen failed to build or sign a certificate.
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

/// An X509-SVID just issued, with its chain and validity.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The SPIFFE ID in the certificate's one URI SAN.
    pub id: SpiffeId,
    /// The leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// The leaf certificate as PEM.
    pub cert_pem: String,
    /// Leaf then intermediates, excluding the root: what a TLS peer presents.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// `chain_der` as concatenated PEM.
    pub chain_pem: String,
    /// Start of validity (whole seconds, as in the certificate).
    pub not_before: SystemTime,
    /// End of validity (whole seconds, as in the certificate).
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

/// A certificate authority: a CA certificate, its key, and the chain above it.
#[derive(Debug)]
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// Certificates sent after the leaf: this CA (unless it is a self-signed root) and the
    /// intermediates above it, never a self-signed root.
    chain_tail: Vec<CertificateDer<'static>>,
    /// The top of the chain: the trust anchor to distribute in bundles.
    root_der: CertificateDer<'static>,
    key: KeyPair,
    issuer: Issuer<'static, rcgen::KeyPair>,
    trust_domain: Option<TrustDomain>,
    not_after: SystemTime,
    subject: String,
}

impl Ca {
    /// Generates a self-signed root CA for `td`: ECDSA P-256, subject
    /// `O=trustmesh, CN=<td> root CA`, URI SAN `spiffe://<td>`, 10 years from `now - 60 s`.
    pub fn generate(td: &TrustDomain, now: SystemTime) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        // rcgen's default subject is "CN=rcgen self signed cert"; always set our own.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "trustmesh");
        dn.push(DnType::CommonName, format!("{td} root CA"));
        params.distinguished_name = dn;
        // X509-SVID 3.2: "A signing certificate SHOULD itself be an SVID. If present, the
        // SPIFFE ID of a signing certificate MUST NOT have a path component".
        params.subject_alt_names = vec![SanType::URI(ia5(&td.id_string())?)];
        // X509-SVID 4.1: "Signing certificates MUST set the `cA` field to `true`".
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // X509-SVID 4.3: "SVID signing certificates MUST set `keyCertSign`. They MAY set
        // `cRLSign`."
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let start = crate::truncate_to_secs(now);
        params.not_before = to_offset(start.checked_sub(BACKDATE))?;
        params.not_after = to_offset(start.checked_add(ROOT_VALIDITY))?;
        params.serial_number = Some(serial()?.0);
        let cert = params.self_signed(key.rcgen()).map_err(CaError::Sign)?;
        let key_pem = key.to_pkcs8_pem()?;
        let mut ca = Self::from_pem(&cert.pem(), &key_pem)?;
        ca.trust_domain = Some(td.clone());
        Ok(ca)
    }

    /// Loads a CA from PEM, as a cert-manager CA Issuer's Secret provides it (`tls.crt`,
    /// `tls.key`). `cert_pem` may hold the CA certificate followed by the chain above it.
    ///
    /// The certificate must be a CA (cert-manager: "certificate is not a CA") and the key
    /// must be its key. The trust domain is taken from a `spiffe://<td>` URI SAN if the
    /// certificate has one; otherwise bind one with [`Ca::with_trust_domain`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CaError::BadCertificate(e.to_string()))?;
        let (first, above) = certs.split_first().ok_or(CaError::NoCertificate)?;
        let key = KeyPair::from_pem(key_pem)?;

        let (_, x509) =
            X509Certificate::from_der(first).map_err(|e| CaError::BadCertificate(e.to_string()))?;
        let subject = x509.subject().to_string();
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| CaError::BadCertificate(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CaError::NotCa { subject });
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch { subject });
        }
        let trust_domain = spiffe_trust_domain_of(&x509);
        let not_after = crate::svid::asn1_to_system_time(&x509.validity().not_after);

        // The issuer object needs its own copy of the signing key.
        let issuer_key = rcgen::KeyPair::try_from(&key.private_key_der())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(first, issuer_key)
            .map_err(|e| CaError::BadCertificate(e.to_string()))?;

        // cert-manager (ParseSingleCertificateChain): "Self-signed certificates are not
        // included in the chain because we are certain they are known and trusted by the
        // client already."
        let mut chain_tail = Vec::new();
        let mut root_der = first.clone();
        for (i, cert) in std::iter::once(first).chain(above).enumerate() {
            let self_signed = is_self_signed(cert)?;
            if self_signed {
                root_der = cert.clone();
            } else {
                chain_tail.push(cert.clone());
                if i == above.len() {
                    // Top of a chain without a self-signed root: the highest certificate is
                    // the anchor ("the highest intermediate certificate").
                    root_der = cert.clone();
                }
            }
        }

        Ok(Self {
            cert_der: first.clone(),
            cert_pem: pem_encode("CERTIFICATE", first),
            chain_tail,
            root_der,
            key,
            issuer,
            trust_domain,
            not_after,
            subject,
        })
    }

    /// Binds the CA to a trust domain so it can issue SVIDs. Fails if the certificate itself
    /// names another trust domain.
    pub fn with_trust_domain(mut self, td: TrustDomain) -> Result<Self, CaError> {
        match &self.trust_domain {
            Some(found) if *found != td => Err(CaError::WrongTrustDomain {
                expected: td,
                found: found.clone(),
            }),
            _ => {
                self.trust_domain = Some(td);
                Ok(self)
            }
        }
    }

    /// The trust domain this CA issues for, if bound.
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// The CA certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root of the CA's chain (the CA certificate itself for a self-signed root): the
    /// trust anchor peers need in their bundle.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// [`Ca::root_der`] as PEM.
    pub fn root_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.root_der)
    }

    /// Certificates a leaf issued by this CA is followed by in a TLS chain (this CA unless
    /// it is a self-signed root, then intermediates; never a self-signed root).
    pub fn chain_tail(&self) -> &[CertificateDer<'static>] {
        &self.chain_tail
    }

    /// The CA's private key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The CA certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The CA certificate's subject, as text.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// Signs a workload's CSR (DER) into an X509-SVID for `identity`, valid from `now - 60 s`
    /// for `lifetime` (capped at the CA's own notAfter).
    ///
    /// `identity` must be what the caller was *authenticated* as. Of the CSR only the public
    /// key is used (its signature is verified); a CSR asking for URI SANs other than exactly
    /// `[identity]` is refused with [`CaError::IdentityMismatch`]. Anything else it asks for
    /// (CA=true, DNS names, key usages) is ignored.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, CaError> {
        let td = self.trust_domain.as_ref().ok_or(CaError::NoTrustDomain)?;
        if identity.trust_domain_str() != td.as_str() {
            return Err(CaError::ForeignIdentity {
                identity: identity.clone(),
                ca: td.clone(),
            });
        }
        // X509-SVID 3.1: "Leaf certificate SPIFFE IDs MUST have a non-root path component."
        if identity.path().is_empty() {
            return Err(CaError::NotALeafIdentity {
                identity: identity.clone(),
            });
        }
        if lifetime.is_zero() {
            return Err(CaError::InvalidLifetime);
        }
        // Parses the CSR and verifies its signature (proof of possession of the key).
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|source| CaError::BadCsr {
                    identity: identity.clone(),
                    source,
                })?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .collect();
        if !requested.is_empty() && requested != [identity.as_str()] {
            return Err(CaError::IdentityMismatch {
                requested,
                authorized: identity.clone(),
            });
        }
        let rsa = check_csr_key(&csr.public_key, identity)?;
        self.issue_for_key(&csr.public_key, identity, rsa, lifetime, now)
    }

    /// Generates an ECDSA P-256 key and an SVID for it in one go, through the same path as a
    /// workload (key → CSR → [`Ca::sign_csr`]). For tests and tools; the proxy generates its
    /// own key and sends only a CSR.
    pub fn issue_svid(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(IssuedSvid, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let csr = csr_for(identity, &key)?;
        let svid = self.sign_csr(&csr, identity, lifetime, now)?;
        Ok((svid, key))
    }

    fn issue_for_key(
        &self,
        public_key: &impl PublicKeyData,
        identity: &SpiffeId,
        rsa: bool,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, CaError> {
        let start = crate::truncate_to_secs(now);
        if start >= self.not_after {
            return Err(CaError::CaExpired {
                not_after: self.not_after,
            });
        }
        let not_before = start.checked_sub(BACKDATE).ok_or(CaError::TimeOutOfRange)?;
        // A leaf outliving its issuer would fail validation after the CA expires anyway;
        // cap it, as SPIRE does, so late issuance still yields a usable certificate.
        let not_after = start
            .checked_add(lifetime)
            .map(crate::truncate_to_secs)
            .ok_or(CaError::TimeOutOfRange)?
            .min(self.not_after);
        let (serial, serial_hex) = serial()?;
        let params = svid_params(identity, rsa, not_before, not_after, serial)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        let cert_der = cert.der().clone();
        let mut chain_der = Vec::with_capacity(1 + self.chain_tail.len());
        chain_der.push(cert_der.clone());
        chain_der.extend(self.chain_tail.iter().cloned());
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let chain_pem = chain_der
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        Ok(IssuedSvid {
            id: identity.clone(),
            cert_der,
            cert_pem,
            chain_der,
            chain_pem,
            not_before,
            not_after,
            serial: serial_hex,
        })
    }
}

/// The X509-SVID profile for `identity`; nothing in it comes from the CSR.
fn svid_params(
    identity: &SpiffeId,
    rsa: bool,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: SerialNumber,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    // X509-SVID 3.1: "The Subject field is not required, however the URI SAN extension MUST
    // be marked as critical if Subject is omitted". We keep a Subject (O=trustmesh), so the
    // SAN stays non-critical, and replace rcgen's default CN.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "trustmesh");
    params.distinguished_name = dn;
    // X509-SVID 2: "An X.509 SVID MUST contain exactly one URI SAN, and by extension, exactly
    // one SPIFFE ID."
    params.subject_alt_names = vec![SanType::URI(ia5(identity.as_str())?)];
    // X509-SVID 4.1: "leaf certificates MUST set the `cA` field to `false`."
    params.is_ca = IsCa::ExplicitNoCa;
    // X509-SVID 4.3: "Leaf SVIDs MUST set `digitalSignature`. They MAY set `keyEncipherment`
    // and/or `keyAgreement`; these mostly make sense only for certificates for RSA keys".
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    // X509-SVID 4.4: "Leaf SVIDs SHOULD include this extension ... When included, fields
    // `id-kp-serverAuth` and `id-kp-clientAuth` MUST be set."
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = to_offset(Some(not_before))?;
    params.not_after = to_offset(Some(not_after))?;
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Checks the CSR's public key is well-formed for its algorithm; returns whether it is RSA.
///
/// rcgen derives the key's algorithm from the CSR's *signature* algorithm, so a P-384 key
/// that signed with ecdsa-with-SHA256 would be labelled P-256; the point length catches it
/// before a certificate with a mislabelled key is issued.
fn check_csr_key(key: &rcgen::PublicKey, identity: &SpiffeId) -> Result<bool, CaError> {
    let raw = key.der_bytes();
    let alg = key.algorithm();
    let unsupported = |reason: String| CaError::UnsupportedCsrKey {
        identity: identity.clone(),
        reason,
    };
    let point_ok = |len: usize| raw.len() == len && raw.first() == Some(&0x04);
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        point_ok(65)
            .then_some(false)
            .ok_or_else(|| unsupported("not a P-256 point".into()))
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        point_ok(97)
            .then_some(false)
            .ok_or_else(|| unsupported("not a P-384 point".into()))
    } else if alg == &rcgen::PKCS_ED25519 {
        (raw.len() == 32)
            .then_some(false)
            .ok_or_else(|| unsupported("not an Ed25519 key".into()))
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        match crate::keys::rsa_modulus_bits(raw) {
            Some(bits) if bits >= 2048 => Ok(true),
            Some(bits) => Err(unsupported(format!("RSA {bits} is below 2048 bits"))),
            None => Err(unsupported("malformed RSA key".into())),
        }
    } else {
        Err(unsupported(format!("{alg:?}")))
    }
}

/// Builds a CSR (DER) for `identity` with `key`: the proxy side of issuance. It asks for
/// exactly one URI SAN, the identity; the CA ignores everything else anyway.
pub fn csr_for(identity: &SpiffeId, key: &KeyPair) -> Result<Vec<u8>, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(ia5(identity.as_str())?)];
    let csr = params
        .serialize_request(key.rcgen())
        .map_err(CaError::Sign)?;
    Ok(csr.der().to_vec())
}

fn ia5(s: &str) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s).map_err(CaError::Sign)
}

fn to_offset(t: Option<SystemTime>) -> Result<OffsetDateTime, CaError> {
    t.map(OffsetDateTime::from).ok_or(CaError::TimeOutOfRange)
}

fn serial() -> Result<(SerialNumber, String), CaError> {
    let bytes = crate::random_serial().map_err(|_| CaError::Random)?;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

/// The trust domain of a signing certificate's `spiffe://<td>` URI SAN, if it has one.
fn spiffe_trust_domain_of(x509: &X509Certificate<'_>) -> Option<TrustDomain> {
    let san = x509.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let id = SpiffeId::parse(uris.next()?).ok()?;
    (uris.next().is_none() && id.path().is_empty()).then(|| id.trust_domain())
}

/// Subject equals issuer and the certificate's signature verifies with its own key.
pub(crate) fn is_self_signed(der: &[u8]) -> Result<bool, CaError> {
    let (_, x509) =
        X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    Ok(x509.subject().as_raw() == x509.issuer().as_raw() && x509.verify_signature(None).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::KeyAlgorithm;
    use crate::svid::CertInfo;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }
    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn generated_root_has_the_ca_profile() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let info = CertInfo::parse(ca.cert_der()).unwrap();
        assert_eq!(info.subject, "O=trustmesh, CN=cluster.local root CA");
        assert_eq!(info.issuer, info.subject);
        assert!(info.is_ca);
        assert_eq!(info.uri_sans, vec!["spiffe://cluster.local".to_owned()]);
        assert_eq!(info.key_usage, vec!["keyCertSign", "cRLSign"]);
        assert_eq!(info.public_key_algorithm, "ECDSA P-256");
        assert_eq!(info.not_before, now() - BACKDATE);
        assert_eq!(info.not_after, now() + ROOT_VALIDITY);
        assert_eq!(ca.root_der(), ca.cert_der());
        assert!(ca.chain_tail().is_empty());
        assert_eq!(ca.trust_domain(), Some(&td()));
        assert_eq!(info.serial_hex.len(), 32, "16-octet serial");
    }

    #[test]
    fn signs_a_csr_into_the_svid_profile() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let key = KeyPair::generate().unwrap();
        let csr = csr_for(&me, &key).unwrap();
        let svid = ca.sign_csr(&csr, &me, DAY, now()).unwrap();
        let info = CertInfo::parse(&svid.cert_der).unwrap();
        assert_eq!(info.uri_sans, vec![me.as_str().to_owned()]);
        assert_eq!(info.spiffe_id.as_ref(), Some(&me));
        assert!(!info.is_ca);
        assert_eq!(info.basic_constraints_ca, Some(false), "CA:FALSE written");
        assert_eq!(info.key_usage, vec!["digitalSignature"]);
        assert_eq!(info.extended_key_usage, vec!["serverAuth", "clientAuth"]);
        assert_eq!(info.subject, "O=trustmesh");
        assert_eq!(info.issuer, "O=trustmesh, CN=cluster.local root CA");
        assert_eq!(svid.not_before, now() - BACKDATE);
        assert_eq!(svid.not_after, now() + DAY);
        assert_eq!(info.not_after, svid.not_after);
        assert_eq!(info.serial_hex, svid.serial);
        assert_eq!(
            svid.chain_der,
            vec![svid.cert_der.clone()],
            "root not in chain"
        );
        assert_eq!(svid.chain_pem, svid.cert_pem);
        assert_eq!(
            info.public_key_raw,
            key.public_key_raw(),
            "the certificate carries the CSR's key"
        );
    }

    /// ecosystem.md §1.4: "from_der copies the requested SANs, EKU, KU and BasicConstraints
    /// (CA=true is accepted!) into .params ... The CA must overwrite params entirely".
    #[test]
    fn csr_contents_are_never_trusted() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let key = KeyPair::generate().unwrap();
        let mut evil = CertificateParams::default();
        evil.distinguished_name = DistinguishedName::new();
        evil.distinguished_name.push(DnType::CommonName, "root");
        evil.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        evil.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        evil.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        evil.subject_alt_names = vec![
            SanType::URI(ia5(me.as_str()).unwrap()),
            SanType::DnsName(Ia5String::try_from("evil.example").unwrap()),
        ];
        let csr = evil.serialize_request(key.rcgen()).unwrap();
        let svid = ca.sign_csr(csr.der(), &me, DAY, now()).unwrap();
        let info = CertInfo::parse(&svid.cert_der).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.key_usage, vec!["digitalSignature"]);
        assert_eq!(info.extended_key_usage, vec!["serverAuth", "clientAuth"]);
        assert!(info.dns_sans.is_empty());
        assert_eq!(info.uri_sans, vec![me.as_str().to_owned()]);
        assert_eq!(info.subject, "O=trustmesh");
    }

    #[test]
    fn csr_asking_for_another_identity_is_refused() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let other = id("spiffe://cluster.local/ns/kube-system/sa/admin");
        let key = KeyPair::generate().unwrap();
        let csr = csr_for(&other, &key).unwrap();
        match ca.sign_csr(&csr, &me, DAY, now()) {
            Err(CaError::IdentityMismatch {
                requested,
                authorized,
            }) => {
                assert_eq!(requested, vec![other.as_str().to_owned()]);
                assert_eq!(authorized, me);
            }
            other => panic!("expected IdentityMismatch, got {other:?}"),
        }
        // Two URI SANs, one of them right, is still a mismatch.
        let mut two = CertificateParams::default();
        two.subject_alt_names = vec![
            SanType::URI(ia5(me.as_str()).unwrap()),
            SanType::URI(ia5(other.as_str()).unwrap()),
        ];
        let csr = two.serialize_request(key.rcgen()).unwrap();
        assert!(matches!(
            ca.sign_csr(csr.der(), &me, DAY, now()),
            Err(CaError::IdentityMismatch { .. })
        ));
        // No URI SAN at all is fine: the identity comes from authentication.
        let csr = CertificateParams::default()
            .serialize_request(key.rcgen())
            .unwrap();
        let svid = ca.sign_csr(csr.der(), &me, DAY, now()).unwrap();
        assert_eq!(svid.id, me);
    }

    #[test]
    fn csr_with_a_bad_signature_is_rejected() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/default/sa/web");
        let key = KeyPair::generate().unwrap();
        let mut csr = csr_for(&me, &key).unwrap();
        // The signature BIT STRING is at the end of the CSR: flip a bit inside it.
        let last = csr.len() - 5;
        csr[last] ^= 0x01;
        match ca.sign_csr(&csr, &me, DAY, now()) {
            Err(CaError::BadCsr { source, identity }) => {
                assert_eq!(identity, me);
                assert!(
                    matches!(source, rcgen::Error::InvalidCertificationRequestSignature),
                    "{source:?}"
                );
            }
            other => panic!("expected BadCsr, got {other:?}"),
        }
        assert!(matches!(
            ca.sign_csr(b"not a csr", &me, DAY, now()),
            Err(CaError::BadCsr { .. })
        ));
    }

    #[test]
    fn identity_must_be_in_the_cas_trust_domain_and_have_a_path() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let key = KeyPair::generate().unwrap();
        let foreign = id("spiffe://eu.cluster.local/ns/default/sa/web");
        let csr = csr_for(&foreign, &key).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &foreign, DAY, now()),
            Err(CaError::ForeignIdentity { .. })
        ));
        let bare = id("spiffe://cluster.local");
        let csr = csr_for(&bare, &key).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &bare, DAY, now()),
            Err(CaError::NotALeafIdentity { .. })
        ));
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let csr = csr_for(&me, &key).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &me, Duration::ZERO, now()),
            Err(CaError::InvalidLifetime)
        ));
    }

    #[test]
    fn rsa_csr_gets_key_encipherment_too() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let key = KeyPair::generate_for(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
        let csr = csr_for(&me, &key).unwrap();
        let svid = ca.sign_csr(&csr, &me, DAY, now()).unwrap();
        let info = CertInfo::parse(&svid.cert_der).unwrap();
        assert_eq!(info.key_usage, vec!["digitalSignature", "keyEncipherment"]);
        assert_eq!(info.public_key_algorithm, "RSA 2048");
    }

    #[test]
    fn lifetime_is_capped_at_the_ca_not_after_and_expired_ca_refuses() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let late = ca.not_after() - Duration::from_secs(3600);
        let (svid, _) = ca.issue_svid(&me, DAY, late).unwrap();
        assert_eq!(svid.not_after, ca.not_after());
        assert!(matches!(
            ca.issue_svid(&me, DAY, ca.not_after() + Duration::from_secs(1)),
            Err(CaError::CaExpired { .. })
        ));
    }

    #[test]
    fn from_pem_requires_a_ca_and_the_matching_key() {
        let ca = Ca::generate(&td(), now()).unwrap();
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let (leaf, leaf_key) = ca.issue_svid(&me, DAY, now()).unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf_key.to_pkcs8_pem().unwrap()).unwrap_err();
        assert!(matches!(err, CaError::NotCa { .. }));
        assert!(err.to_string().contains("certificate is not a CA"), "{err}");
        let other_key = KeyPair::generate().unwrap().to_pkcs8_pem().unwrap();
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), &other_key),
            Err(CaError::KeyMismatch { .. })
        ));
        assert!(matches!(
            Ca::from_pem("", &other_key),
            Err(CaError::NoCertificate)
        ));
        let reloaded = Ca::from_pem(ca.cert_pem(), &ca.key().to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(
            reloaded.trust_domain(),
            Some(&td()),
            "from the spiffe://td SAN"
        );
        assert!(matches!(
            reloaded.with_trust_domain(TrustDomain::new("other.org").unwrap()),
            Err(CaError::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn intermediate_ca_puts_itself_in_the_chain_and_names_the_root() {
        let root = Ca::generate(&td(), now()).unwrap();
        // An intermediate signed by the root, loaded as "tls.crt = intermediate + root".
        let ikey = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "intermediate");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now().into();
        p.not_after = (now() + 365 * DAY).into();
        let icert = p.signed_by(ikey.rcgen(), root.issuer()).unwrap();
        let tls_crt = format!("{}{}", icert.pem(), root.cert_pem());
        let ica = Ca::from_pem(&tls_crt, &ikey.to_pkcs8_pem().unwrap())
            .unwrap()
            .with_trust_domain(td())
            .unwrap();
        assert_eq!(ica.root_der(), root.cert_der());
        assert_eq!(ica.chain_tail(), &[icert.der().clone()]);
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let (svid, _) = ica.issue_svid(&me, DAY, now()).unwrap();
        assert_eq!(svid.chain_der.len(), 2);
        assert_eq!(&svid.chain_der[1], icert.der());
        assert!(ica.issue_svid(&me, DAY, now()).is_ok());
        // Without a trust domain bound, no SVIDs.
        let unbound = Ca::from_pem(&tls_crt, &ikey.to_pkcs8_pem().unwrap()).unwrap();
        assert!(matches!(
            unbound.issue_svid(&me, DAY, now()),
            Err(CaError::NoTrustDomain)
        ));
    }
}
