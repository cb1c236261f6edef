//! SPIFFE X509-SVID verification, and the rustls pieces the proxy plugs it into.
//!
//! Two layers, callable separately:
//! - [`verify_chain`] / [`verify_chain_with`]: plain RFC 5280 / WebPKI path validation
//!   (rustls-webpki with the aws-lc-rs algorithms): signatures, validity, CA constraints,
//!   EKU, optional revocation and depth limit. No SPIFFE rules; the x509-limbo suite runs here.
//! - [`verify_svid`]: the SPIFFE layer. It reads the leaf's one URI SAN *before* trusting it,
//!   applies the X509-SVID leaf rules, picks the bundle of the ID's trust domain, then runs
//!   the chain layer against that bundle only.
//!
//! On top: [`SpiffeClientVerifier`] (server side: mandatory client certificate) and
//! [`SpiffeServerVerifier`] (client side: plus secure naming against [`Allowed`]), and
//! TLS 1.3-only [`server_config`] / [`client_config`]. Each verifier remembers up to 256
//! chains that verified (`verify/cache.rs`, [`ChainCacheStats`]), so a peer's unchanged SVID
//! is path-validated once, not on every handshake. What does not live here: policy
//! (AuthorizationPolicy decides what a verified identity may do).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use trustmesh_core::{IdError, SpiffeId, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::TrustBundleSet;

mod cache;

use cache::verify_svid_cached;
pub use cache::{ChainCache, ChainCacheStats};

/// Which end of a connection the certificate's owner is: selects the required EKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client: `id-kp-clientAuth` is required (if the leaf has an EKU extension).
    Client,
    /// A TLS server: `id-kp-serverAuth` is required (if the leaf has an EKU extension).
    Server,
}

impl Usage {
    fn eku(self) -> webpki::KeyUsage {
        match self {
            Self::Client => webpki::KeyUsage::client_auth(),
            Self::Server => webpki::KeyUsage::server_auth(),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "clientAuth",
            Self::Server => "serverAuth",
        })
    }
}

/// Options of the path-validation layer beyond the usage.
#[derive(Debug, Clone, Copy)]
pub struct ChainPolicy<'a> {
    /// Required extended key usage.
    pub usage: Usage,
    /// Reject paths with more intermediates than this (webpki has its own hard limit).
    pub max_intermediates: Option<usize>,
    /// Check revocation against these CRLs.
    pub revocation: Option<webpki::RevocationOptions<'a>>,
}

impl ChainPolicy<'_> {
    /// Only the usage; no depth limit, no revocation.
    pub fn new(usage: Usage) -> Self {
        Self {
            usage,
            max_intermediates: None,
            revocation: None,
        }
    }
}

/// Why path validation failed (RFC 5280 / WebPKI layer, no SPIFFE rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A certificate of the chain could not be parsed.
    #[error("malformed certificate: {0:?}")]
    Malformed(webpki::Error),
    /// A certificate of the path is expired at the validation time.
    #[error("certificate expired at {} (validation time {})", crate::svid::format_rfc3339(*not_after), crate::svid::format_rfc3339(*time))]
    Expired {
        /// The validation time.
        time: SystemTime,
        /// The certificate's notAfter.
        not_after: SystemTime,
    },
    /// A certificate of the path is not valid yet at the validation time.
    #[error("certificate not valid before {} (validation time {})", crate::svid::format_rfc3339(*not_before), crate::svid::format_rfc3339(*time))]
    NotYetValid {
        /// The validation time.
        time: SystemTime,
        /// The certificate's notBefore.
        not_before: SystemTime,
    },
    /// No path leads to a trusted root.
    #[error("issuer not trusted: no path to a root of the bundle")]
    UnknownIssuer,
    /// A signature in the path does not verify.
    #[error("bad signature in the certificate chain")]
    BadSignature,
    /// The leaf is a CA certificate.
    #[error("a CA certificate was presented as the end-entity certificate")]
    CaUsedAsLeaf,
    /// The leaf's extended key usage does not allow this use.
    #[error("certificate not valid for {required} (extended key usage)")]
    WrongUsage {
        /// The usage required.
        required: Usage,
    },
    /// A certificate of the path is revoked.
    #[error("certificate revoked")]
    Revoked,
    /// The path is longer than allowed.
    #[error("certificate path too long")]
    PathTooLong,
    /// Any other reason webpki gave (name constraints, unsupported critical extension, ...).
    #[error("certificate rejected: {0:?}")]
    Rejected(webpki::Error),
}

fn unix_to_system(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

fn system_to_unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

impl ChainError {
    fn from_webpki(e: webpki::Error, usage: Usage) -> Self {
        use webpki::Error as W;
        match e {
            W::CertExpired { time, not_after } => Self::Expired {
                time: unix_to_system(time),
                not_after: unix_to_system(not_after),
            },
            W::CertNotValidYet { time, not_before } => Self::NotYetValid {
                time: unix_to_system(time),
                not_before: unix_to_system(not_before),
            },
            W::UnknownIssuer => Self::UnknownIssuer,
            W::InvalidSignatureForPublicKey => Self::BadSignature,
            W::CaUsedAsEndEntity => Self::CaUsedAsLeaf,
            W::RequiredEkuNotFoundContext(_) => Self::WrongUsage { required: usage },
            W::CertRevoked => Self::Revoked,
            W::MaximumPathDepthExceeded => Self::PathTooLong,
            W::BadDer | W::BadDerTime | W::TrailingData(_) | W::UnsupportedCertVersion => {
                Self::Malformed(e)
            }
            other => Self::Rejected(other),
        }
    }
}

/// RFC 5280 / WebPKI path validation of `leaf` to one of `anchors`, using `intermediates`
/// as the untrusted pool, at time `now`, for `usage`. No SPIFFE rules.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<(), ChainError> {
    verify_chain_with(leaf, intermediates, anchors, now, &ChainPolicy::new(usage))
}

/// [`verify_chain`] with a depth limit and revocation.
pub fn verify_chain_with(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
    policy: &ChainPolicy<'_>,
) -> Result<(), ChainError> {
    verify_chain_then(leaf, intermediates, anchors, now, policy, |_| ())
}

/// [`verify_chain_with`], then `inspect` applied to the path that verified.
fn verify_chain_then<T>(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
    policy: &ChainPolicy<'_>,
    inspect: impl FnOnce(&webpki::VerifiedPath<'_>) -> T,
) -> Result<T, ChainError> {
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(ChainError::Malformed)?;
    let algs = crate::crypto_provider().signature_verification_algorithms;
    let max = policy.max_intermediates;
    let depth_check = move |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
        match max {
            // An error here is non-fatal to webpki: it goes on to try other paths.
            Some(max) if path.intermediate_certificates().count() > max => {
                Err(webpki::Error::MaximumPathDepthExceeded)
            }
            _ => Ok(()),
        }
    };
    ee.verify_for_usage(
        algs.all,
        anchors,
        intermediates,
        now,
        policy.usage.eku(),
        policy.revocation,
        max.is_some()
            .then_some(&depth_check as &dyn Fn(&webpki::VerifiedPath<'_>) -> _),
    )
    .map(|path| inspect(&path))
    .map_err(|e| ChainError::from_webpki(e, policy.usage))
}

/// Why a peer's X509-SVID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The peer presented no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// The leaf certificate could not be parsed.
    #[error("malformed certificate: {reason}")]
    Malformed {
        /// The parser's reason.
        reason: String,
    },
    /// The leaf has no URI SAN, so no SPIFFE ID.
    #[error("certificate has no URI SAN: not an X509-SVID")]
    NoUriSan,
    /// The leaf has several URI SANs.
    #[error("certificate has {} URI SANs {uris:?}: an X509-SVID has exactly one", uris.len())]
    MultipleUriSans {
        /// All URI SANs.
        uris: Vec<String>,
    },
    /// The one URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    NotSpiffe {
        /// The URI as written.
        uri: String,
        /// Why it is not a SPIFFE ID.
        reason: IdError,
    },
    /// The leaf's SPIFFE ID has no path (it is a trust domain ID).
    #[error("{id}: a leaf SVID's SPIFFE ID must have a path")]
    NoPath {
        /// The ID.
        id: SpiffeId,
    },
    /// The leaf is a CA certificate (basicConstraints cA=true).
    #[error("{id}: leaf certificate is a CA")]
    LeafIsCa {
        /// The ID.
        id: SpiffeId,
    },
    /// The leaf may sign certificates or CRLs (keyCertSign / cRLSign).
    #[error("{id}: leaf certificate has key usage {usages:?}")]
    LeafCanSign {
        /// The ID.
        id: SpiffeId,
        /// The offending key usages.
        usages: Vec<&'static str>,
    },
    /// No bundle is known for the ID's trust domain.
    #[error("{id}: no trust bundle for trust domain {trust_domain}")]
    NoBundleForTrustDomain {
        /// The ID.
        id: SpiffeId,
        /// Its trust domain.
        trust_domain: TrustDomain,
    },
    /// The trust domain's bundle is empty (all its keys revoked).
    #[error("{id}: trust bundle of {trust_domain} is empty")]
    EmptyBundle {
        /// The ID.
        id: SpiffeId,
        /// Its trust domain.
        trust_domain: TrustDomain,
    },
    /// A certificate of the path is expired.
    #[error("{id}: certificate expired at {}", crate::svid::format_rfc3339(*not_after))]
    Expired {
        /// The ID.
        id: SpiffeId,
        /// The expired certificate's notAfter.
        not_after: SystemTime,
        /// The validation time.
        time: SystemTime,
    },
    /// A certificate of the path is not valid yet.
    #[error("{id}: certificate not valid before {}", crate::svid::format_rfc3339(*not_before))]
    NotYetValid {
        /// The ID.
        id: SpiffeId,
        /// The certificate's notBefore.
        not_before: SystemTime,
        /// The validation time.
        time: SystemTime,
    },
    /// The chain does not lead to a root of the ID's trust domain bundle.
    #[error("{id}: not issued by a trusted root of trust domain {}", id.trust_domain_str())]
    UntrustedIssuer {
        /// The ID.
        id: SpiffeId,
    },
    /// Path validation failed for another reason.
    #[error("{id}: {source}")]
    Chain {
        /// The ID.
        id: SpiffeId,
        /// The path-validation error.
        #[source]
        source: ChainError,
    },
    /// Secure naming: the verified peer is not one of the identities allowed here.
    #[error("peer is {got}, expected {expected}")]
    UnexpectedPeer {
        /// The peer's verified ID.
        got: SpiffeId,
        /// What was allowed.
        expected: Allowed,
    },
}

impl VerifyError {
    fn from_chain(id: SpiffeId, e: ChainError) -> Self {
        match e {
            ChainError::Expired { time, not_after } => Self::Expired {
                id,
                not_after,
                time,
            },
            ChainError::NotYetValid { time, not_before } => Self::NotYetValid {
                id,
                not_before,
                time,
            },
            ChainError::UnknownIssuer => Self::UntrustedIssuer { id },
            ChainError::CaUsedAsLeaf => Self::LeafIsCa { id },
            source => Self::Chain { id, source },
        }
    }

    /// The `VerifyError` inside a rustls error produced by the verifiers here, if any (the
    /// SPIFFE-specific ones travel as `CertificateError::Other`).
    pub fn from_rustls(e: &rustls::Error) -> Option<&VerifyError> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }
}

/// Maps to the rustls error whose TLS alert fits: expired, not yet valid, unknown CA, bad
/// signature, revoked and "no certificate" get their own alerts; every SPIFFE-specific
/// rejection travels whole as `CertificateError::Other` (alert `bad_certificate`), so logs
/// keep the SPIFFE ID and reason ([`VerifyError::from_rustls`]).
impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::NoCertificate => rustls::Error::NoCertificatesPresented,
            VerifyError::Expired {
                not_after, time, ..
            } => CertificateError::ExpiredContext {
                time: system_to_unix(time),
                not_after: system_to_unix(not_after),
            }
            .into(),
            VerifyError::NotYetValid {
                not_before, time, ..
            } => CertificateError::NotValidYetContext {
                time: system_to_unix(time),
                not_before: system_to_unix(not_before),
            }
            .into(),
            VerifyError::UntrustedIssuer { .. } => CertificateError::UnknownIssuer.into(),
            VerifyError::Chain {
                source: ChainError::BadSignature,
                ..
            } => CertificateError::BadSignature.into(),
            VerifyError::Chain {
                source: ChainError::Revoked,
                ..
            } => CertificateError::Revoked.into(),
            VerifyError::Malformed { .. } => CertificateError::BadEncoding.into(),
            other => CertificateError::Other(OtherError(Arc::new(other))).into(),
        }
    }
}

/// The X509-SVID leaf rules, applied before anything about the certificate is trusted.
fn inspect_leaf(leaf: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let malformed = |e: &dyn fmt::Display| VerifyError::Malformed {
        reason: e.to_string(),
    };
    let (_, x509) = X509Certificate::from_der(leaf).map_err(|e| malformed(&e))?;
    let san = x509.subject_alternative_name().map_err(|e| malformed(&e))?;
    let uris: Vec<String> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            // A URI SAN that is not valid text still counts as a URI SAN.
            GeneralName::Invalid(tag, bytes) if tag.0 == 6 => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        })
        .collect();
    // X509-SVID 2: "An X.509 SVID MUST contain exactly one URI SAN ... Validators
    // encountering an SVID containing more than one URI SAN MUST reject the SVID."
    let uri = match uris.len() {
        0 => return Err(VerifyError::NoUriSan),
        1 => &uris[0],
        _ => return Err(VerifyError::MultipleUriSans { uris }),
    };
    // X509-SVID 5.2: "The validator must also ensure that the scheme of the SPIFFE ID is set
    // to `spiffe`."
    let id = SpiffeId::parse(uri).map_err(|reason| VerifyError::NotSpiffe {
        uri: uri.clone(),
        reason,
    })?;
    // X509-SVID 3.1: "Leaf certificate SPIFFE IDs MUST have a non-root path component."
    if id.path().is_empty() {
        return Err(VerifyError::NoPath { id });
    }
    // X509-SVID 5.2: "the validator MUST ensure that the `CA` field in the basic constraints
    // extension is set to `false`, and that `keyCertSign` and `cRLSign` are not set in the
    // key usage extension."
    let bc = x509.basic_constraints().map_err(|e| malformed(&e))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(VerifyError::LeafIsCa { id });
    }
    if let Some(ku) = x509.key_usage().map_err(|e| malformed(&e))? {
        let mut usages = Vec::new();
        if ku.value.key_cert_sign() {
            usages.push("keyCertSign");
        }
        if ku.value.crl_sign() {
            usages.push("cRLSign");
        }
        if !usages.is_empty() {
            return Err(VerifyError::LeafCanSign { id, usages });
        }
    }
    Ok(id)
}

/// Verifies a peer's X509-SVID chain (leaf first) and returns its SPIFFE ID.
///
/// Steps: the leaf's URI SANs are read unverified (exactly one, a SPIFFE ID with a path, the
/// leaf not a CA and unable to sign); the bundle of *that ID's* trust domain is selected
/// (Trust Domain and Bundle 3: "validators must choose the bundle corresponding to the trust
/// domain that the SVID resides in"); then WebPKI path validation runs against that bundle
/// only, for `usage`, at `now` (X509-SVID 5.1: path validation "MUST follow RFC 5280 path
/// validation semantics").
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
    verify_svid_parts(leaf, intermediates, bundles, now, usage)
}

fn verify_svid_parts(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    verify_svid_then(leaf, intermediates, bundles, now, usage, |_| ()).map(|(id, ())| id)
}

/// [`verify_svid`] on a split chain, then `inspect` applied to the path that verified.
fn verify_svid_then<T>(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    now: UnixTime,
    usage: Usage,
    inspect: impl FnOnce(&webpki::VerifiedPath<'_>) -> T,
) -> Result<(SpiffeId, T), VerifyError> {
    let id = inspect_leaf(leaf)?;
    let trust_domain = id.trust_domain();
    let Some(bundle) = bundles.get(&trust_domain) else {
        return Err(VerifyError::NoBundleForTrustDomain { id, trust_domain });
    };
    // Trust Domain and Bundle 4.1.3: with an empty key set, "workloads MUST treat all SVIDs
    // from the trust domain as invalid and untrusted."
    if bundle.is_empty() {
        return Err(VerifyError::EmptyBundle { id, trust_domain });
    }
    let policy = ChainPolicy::new(usage);
    match verify_chain_then(leaf, intermediates, bundle.anchors(), now, &policy, inspect) {
        Ok(t) => Ok((id, t)),
        Err(e) => Err(VerifyError::from_chain(id, e)),
    }
}

/// Which server identities a client accepts for a destination (secure naming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Any identity that verifies against the bundles.
    Any,
    /// Any identity in one of these trust domains.
    TrustDomains(Vec<TrustDomain>),
    /// Exactly one of these identities (the destination service's service accounts).
    Ids(Vec<SpiffeId>),
}

impl Allowed {
    /// True if `id` may serve.
    pub fn permits(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::TrustDomains(tds) => tds.iter().any(|td| td.as_str() == id.trust_domain_str()),
            Self::Ids(ids) => ids.contains(id),
        }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |items: Vec<&str>| items.join(", ");
        match self {
            Self::Any => f.write_str("any verified identity"),
            Self::TrustDomains(tds) => write!(
                f,
                "an identity in trust domain(s) {}",
                join(tds.iter().map(TrustDomain::as_str).collect())
            ),
            Self::Ids(ids) => write!(
                f,
                "one of {}",
                join(ids.iter().map(SpiffeId::as_str).collect())
            ),
        }
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    crate::crypto_provider().signature_verification_algorithms
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not accepted: trustmesh speaks TLS 1.3 only".into())
}

/// rustls client-certificate verifier for the server side of mesh connections: a client
/// certificate is mandatory and must be a valid X509-SVID of a trust domain in the bundles.
///
/// It authenticates only; what the identity may do is AuthorizationPolicy's decision. Read
/// the verified identity afterwards with [`peer_spiffe_id`]. The bundles are fixed per
/// verifier: when they change, build a new verifier and config. Chains that verified are
/// remembered per verifier, or per bundle set when verifiers share a cache
/// ([`SpiffeClientVerifier::with_cache`]); `now` is re-checked on every call.
///
/// [`SpiffeClientVerifier::optional`] is the control plane's variant: a client may connect
/// without a certificate (a proxy bootstrapping with a join token has none yet), but a
/// certificate it does present is verified exactly as here, and a bad one fails the handshake.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<TrustBundleSet>,
    mandatory: bool,
    cache: Arc<ChainCache>,
}

impl SpiffeClientVerifier {
    /// A verifier trusting `bundles`; a client certificate is required.
    pub fn new(bundles: Arc<TrustBundleSet>) -> Self {
        Self {
            bundles,
            mandatory: true,
            cache: Arc::new(ChainCache::new()),
        }
    }

    /// A verifier trusting `bundles` for which a client certificate is optional: clients
    /// without one complete the handshake unauthenticated ([`peer_spiffe_id`] is `None`);
    /// a presented certificate must verify.
    pub fn optional(bundles: Arc<TrustBundleSet>) -> Self {
        Self {
            bundles,
            mandatory: false,
            cache: Arc::new(ChainCache::new()),
        }
    }

    /// The bundles it trusts.
    pub fn bundles(&self) -> &TrustBundleSet {
        &self.bundles
    }

    /// Shares `cache` with other client-side verifiers of the same bundles (a cache must
    /// never serve another bundle set or usage).
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<ChainCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The counters of its cache of verified chains.
    pub fn cache_stats(&self) -> ChainCacheStats {
        self.cache.stats()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA name hints: clients have exactly one SVID to present.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_svid_cached(
            &self.cache,
            end_entity,
            intermediates,
            &self.bundles,
            now,
            Usage::Client,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// rustls server-certificate verifier for the client side of mesh connections: the server
/// must present a valid X509-SVID, and its identity must be [`Allowed`] (secure naming).
///
/// The TLS server name (SNI) plays no part in identity: SVIDs carry no DNS SAN. Chains that
/// verified are remembered per verifier, or per bundle set when verifiers share a cache
/// ([`SpiffeServerVerifier::with_cache`]); `now` and secure naming are re-checked on every call.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: Arc<TrustBundleSet>,
    allowed: Allowed,
    cache: Arc<ChainCache>,
}

impl SpiffeServerVerifier {
    /// A verifier trusting `bundles` and accepting the server identities `allowed`.
    pub fn new(bundles: Arc<TrustBundleSet>, allowed: Allowed) -> Self {
        Self {
            bundles,
            allowed,
            cache: Arc::new(ChainCache::new()),
        }
    }

    /// The identities accepted.
    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }

    /// Shares `cache` with other server-verifying verifiers of the same bundles, whatever
    /// identities each allows (secure naming is checked per call, never cached).
    #[must_use]
    pub fn with_cache(mut self, cache: Arc<ChainCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The counters of its cache of verified chains.
    pub fn cache_stats(&self) -> ChainCacheStats {
        self.cache.stats()
    }

    /// The SPIFFE verification and secure naming, without rustls types.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        let id = verify_svid_cached(
            &self.cache,
            end_entity,
            intermediates,
            &self.bundles,
            now,
            Usage::Server,
        )?;
        // Checked on every call, cache hit or not. DESIGN.md: "a client checks the server is
        // one of the identities allowed to serve the destination service".
        if !self.allowed.permits(&id) {
            return Err(VerifyError::UnexpectedPeer {
                got: id,
                expected: self.allowed.clone(),
            });
        }
        Ok(id)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A TLS 1.3-only server config presenting `chain` (leaf first) with `key`, requiring client
/// SVIDs checked by `verifier`. ALPN is left to the caller.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<ServerConfig, rustls::Error> {
    // ecosystem.md §1.1: "TLS 1.3-only must be enforced in code" — feature unification can
    // turn rustls' tls12 feature back on.
    ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
}

/// A TLS 1.3-only client config presenting `chain` with `key` and checking the server with
/// `verifier`. ALPN is left to the caller.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
}

/// The SPIFFE ID of a connection's peer, once the handshake has verified it: the one URI SAN
/// of the peer's leaf certificate. `None` before the handshake or for non-SVID peers.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    spiffe_id_of(conn.peer_certificates()?.first()?)
}

/// The SPIFFE ID in a certificate's single URI SAN, without any verification.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut uris = ee.valid_uri_names();
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(first).ok()
}

#[cfg(test)]
mod tests;

/// The optional-client-auth variant, in real in-memory TLS 1.3 handshakes.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod optional_client_auth_tests {
    use std::io::{Read, Write};

    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::ca::Ca;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Moves TLS records both ways until neither end has anything to send.
    fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
        for _ in 0..32 {
            let mut moved = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                }
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                }
                c.process_new_packets()?;
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("handshake did not settle");
    }

    struct Setup {
        server: Arc<ServerConfig>,
        server_verifier: Arc<SpiffeServerVerifier>,
        ca: Ca,
        now: SystemTime,
    }

    fn setup() -> Setup {
        let now = SystemTime::now();
        let td = TrustDomain::new("cluster.local").unwrap();
        let ca = Ca::generate(&td, now).unwrap();
        let mut set = TrustBundleSet::new();
        set.add_root(&td, ca.root_der().clone()).unwrap();
        let bundles = Arc::new(set);
        let cp = SpiffeId::parse("spiffe://cluster.local/ns/istio-system/sa/cp").unwrap();
        let (svid, key) = ca.issue_svid(&cp, HOUR, now).unwrap();
        let verifier = SpiffeClientVerifier::optional(bundles.clone());
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.offer_client_auth());
        assert!(SpiffeClientVerifier::new(bundles.clone()).client_auth_mandatory());
        let server = Arc::new(
            server_config(svid.chain_der, key.private_key_der(), Arc::new(verifier)).unwrap(),
        );
        let server_verifier = Arc::new(SpiffeServerVerifier::new(bundles, Allowed::Ids(vec![cp])));
        Setup {
            server,
            server_verifier,
            ca,
            now,
        }
    }

    fn connect(
        server: &Arc<ServerConfig>,
        client: ClientConfig,
    ) -> (
        ClientConnection,
        ServerConnection,
        Result<(), rustls::Error>,
    ) {
        let name = ServerName::try_from("control-plane").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        let r = pump(&mut c, &mut s);
        (c, s, r)
    }

    #[test]
    fn a_client_without_certificate_completes_the_handshake_unauthenticated() {
        let t = setup();
        let anonymous = ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(t.server_verifier.clone())
            .with_no_client_auth();
        let (mut c, mut s, r) = connect(&t.server, anonymous);
        r.unwrap();
        assert!(!s.is_handshaking());
        assert_eq!(peer_spiffe_id(&s), None);
        c.writer().write_all(b"token").unwrap();
        pump(&mut c, &mut s).unwrap();
        let mut got = [0u8; 5];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"token");
    }

    #[test]
    fn a_presented_certificate_is_verified_and_identifies_the_client() {
        let t = setup();
        let web = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        let (svid, key) = t.ca.issue_svid(&web, HOUR, t.now).unwrap();
        let client = client_config(
            svid.chain_der,
            key.private_key_der(),
            t.server_verifier.clone(),
        )
        .unwrap();
        let (_c, s, r) = connect(&t.server, client);
        r.unwrap();
        assert_eq!(peer_spiffe_id(&s), Some(web));
    }

    #[test]
    fn a_certificate_from_an_untrusted_ca_still_fails_the_handshake() {
        let t = setup();
        let td = TrustDomain::new("cluster.local").unwrap();
        let rogue = Ca::generate(&td, t.now).unwrap();
        let web = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        let (svid, key) = rogue.issue_svid(&web, HOUR, t.now).unwrap();
        let client = client_config(
            svid.chain_der,
            key.private_key_der(),
            t.server_verifier.clone(),
        )
        .unwrap();
        let (_c, s, r) = connect(&t.server, client);
        // Same subject as the real root, so path building reaches the signature check.
        let err = r.unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        assert_eq!(peer_spiffe_id(&s), None);
    }
}
