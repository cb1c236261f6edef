//! The identity manager: the workload's key and X.509-SVID, from bootstrap to every renewal.
//!
//! docs/mesh-runtime.md, "Bootstrap and identity":
//! - "The proxy generates its key (ECDSA P-256) in memory, builds a CSR, connects to
//!   `Ca.Sign` over TLS 1.3 ... with metadata `authorization: Bearer <token>`."
//! - "Renewal: `Ca.Sign` without a token, presenting the current SVID as client certificate".
//! - "the proxy renews at `trustmesh_core::renewal::workload_renewal_time` with random jitter;
//!   on failure it keeps the valid SVID and retries with exponential backoff (1s doubling to
//!   5 min, capped before expiry)."
//! - "`ProxyUpdate.rotation` increasing = renew now" (and admin `POST /rotate`): both arrive
//!   here through [`RotateHandle`].
//!
//! Every renewal generates a fresh key, so the key in memory never outlives its certificate.
//! The bootstrap CSR names no identity: the proxy does not know its service account before
//! its first config, and the control plane takes the identity from the join token anyway
//! (`Ca::sign_csr` uses only the CSR's key and accepts a CSR without URI SAN). Renewal CSRs
//! name the current identity. What is not here: the wire (`control`), serving the SVID
//! (`state`, `inbound`, `workload_api`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::{Notify, watch};
use tonic::metadata::MetadataValue;
use tracing::{info, warn};
use trustmesh_api::AUTHORIZATION_METADATA;
use trustmesh_api::mesh::ca_client::CaClient;
use trustmesh_api::mesh::{SignRequest, SignResponse};
use trustmesh_core::SpiffeId;
use trustmesh_core::renewal::workload_renewal_time;
use trustmesh_pki::svid::format_rfc3339;
use trustmesh_pki::{CertInfo, KeyPair, TrustBundleSet, Usage, VerifyError, csr_for, verify_svid};

use crate::clock::{Clock, Jitter};
use crate::control::{ControlError, ControlPlane, Credential};
use crate::metrics::Metrics;
use crate::state::{Identity, Shared};

/// First retry delay after a failed renewal.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How long one `Ca.Sign` call may take.
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one issuance attempt failed. The manager logs it and retries; the current SVID, if
/// any, stays in use.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No certificate yet and no join token: nothing to authenticate with.
    #[error("{workload}: no certificate yet and no join token to bootstrap with")]
    NoCredential {
        /// `ns/name`.
        workload: String,
    },
    /// The join token cannot be sent as gRPC metadata.
    #[error("{workload}: the join token is not a valid metadata value (control characters?)")]
    BadToken {
        /// `ns/name`.
        workload: String,
    },
    /// Key generation or CSR encoding failed.
    #[error("{workload}: building the key and CSR: {reason}")]
    Csr {
        /// `ns/name`.
        workload: String,
        /// What failed.
        reason: String,
    },
    /// No channel could be built.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The call failed (connection refused, TLS refused, or the control plane said no).
    #[error("Ca.Sign at {addr} for {workload}: {code:?}: {message}")]
    Rpc {
        /// The control plane's address.
        addr: SocketAddr,
        /// `ns/name`.
        workload: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message (transport errors included).
        message: String,
    },
    /// The call did not finish in time.
    #[error("Ca.Sign at {addr} for {workload}: no answer within {SIGN_TIMEOUT:?}")]
    Timeout {
        /// The control plane's address.
        addr: SocketAddr,
        /// `ns/name`.
        workload: String,
    },
    /// The answer held no certificate.
    #[error("Ca.Sign at {addr} for {workload}: empty certificate chain")]
    EmptyChain {
        /// The control plane's address.
        addr: SocketAddr,
        /// `ns/name`.
        workload: String,
    },
    /// The certificate is not a valid X509-SVID under the trusted bundles.
    #[error("Ca.Sign at {addr} for {workload}: issued certificate rejected: {source}")]
    Invalid {
        /// The control plane's address.
        addr: SocketAddr,
        /// `ns/name`.
        workload: String,
        /// Why.
        #[source]
        source: Box<VerifyError>,
    },
    /// The certificate does not certify the key this proxy generated.
    #[error("Ca.Sign at {addr}: certificate for {id} does not hold this proxy's public key")]
    KeyMismatch {
        /// The control plane's address.
        addr: SocketAddr,
        /// The certificate's identity.
        id: SpiffeId,
    },
    /// The certificate could not be read.
    #[error("Ca.Sign at {addr}: certificate for {id} unreadable: {reason}")]
    Unreadable {
        /// The control plane's address.
        addr: SocketAddr,
        /// The certificate's identity.
        id: SpiffeId,
        /// The parser's reason.
        reason: String,
    },
}

/// Asks the identity manager to renew now (operator rotation, admin `POST /rotate`).
#[derive(Debug, Clone, Default)]
pub struct RotateHandle(Arc<Notify>);

impl RotateHandle {
    /// A handle not yet attached to a manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renew as soon as possible. Requests made while one is pending count once.
    pub fn rotate(&self) {
        self.0.notify_one();
    }

    async fn requested(&self) {
        self.0.notified().await;
    }
}

/// Gets and renews the workload's SVID and installs it in [`Shared`].
#[derive(Debug)]
pub struct IdentityManager {
    shared: Arc<Shared>,
    control: Arc<ControlPlane>,
    token: Option<String>,
    clock: Clock,
    jitter: Jitter,
    rotate: RotateHandle,
    metrics: Arc<Metrics>,
}

impl IdentityManager {
    /// A manager for `shared.workload_key`, bootstrapping with `token` if it has no SVID.
    pub fn new(
        shared: Arc<Shared>,
        control: Arc<ControlPlane>,
        token: Option<String>,
        clock: Clock,
        jitter: Jitter,
        rotate: RotateHandle,
    ) -> Self {
        Self {
            shared,
            control,
            token,
            clock,
            jitter,
            rotate,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts issuances into `metrics` (`trustmesh_certificate_*`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown` turns true (or its sender is gone): issue at once if there is no
    /// SVID, then renew at each renewal time, on rotation requests, and after failures.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = INITIAL_BACKOFF;
        let mut retry: Option<Duration> = None;
        loop {
            let wait = match (retry, self.shared.identity()) {
                (Some(d), _) => d,
                (None, None) => Duration::ZERO,
                (None, Some(current)) => self.clock.until(current.renewal_time),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.rotate.requested() => info!(workload = %self.shared.workload_key, "certificate rotation requested"),
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let attempt = tokio::select! {
                r = self.issue() => r,
                _ = shutdown.changed() => return,
            };
            match attempt {
                Ok(identity) => {
                    info!(
                        workload = %self.shared.workload_key,
                        id = %identity.id,
                        serial = %identity.serial,
                        not_after = %format_rfc3339(identity.not_after),
                        renewal = %format_rfc3339(identity.renewal_time),
                        "certificate installed"
                    );
                    self.metrics.certificate_issued(&identity);
                    self.shared.set_identity(identity);
                    backoff = INITIAL_BACKOFF;
                    retry = None;
                }
                Err(e) => {
                    let until_expiry = self
                        .shared
                        .identity()
                        .map(|i| self.clock.until(i.not_after));
                    let delay = retry_delay(backoff, until_expiry);
                    self.metrics.certificate_failed();
                    warn!(
                        workload = %self.shared.workload_key,
                        error = %e,
                        retry_in = ?delay,
                        still_serving = until_expiry.is_some_and(|d| !d.is_zero()),
                        "certificate renewal failed; keeping the current certificate"
                    );
                    retry = Some(delay);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One issuance: key, CSR, `Ca.Sign`, checks.
    pub async fn issue(&self) -> Result<Identity, IdentityError> {
        let workload = self.shared.workload_key.clone();
        let current = self.shared.identity();
        let csr_err = |reason: String| IdentityError::Csr {
            workload: workload.clone(),
            reason,
        };
        let key = KeyPair::generate().map_err(|e| csr_err(e.to_string()))?;
        let (csr, credential) = match &current {
            Some(c) => (
                csr_for(&c.id, &key).map_err(|e| csr_err(e.to_string()))?,
                Credential::CurrentSvid,
            ),
            None => (
                bootstrap_csr(&key).map_err(|e| csr_err(e.to_string()))?,
                Credential::None,
            ),
        };
        let mut request = tonic::Request::new(SignRequest {
            workload: workload.clone(),
            csr_der: csr,
        });
        if credential == Credential::None {
            let Some(token) = &self.token else {
                return Err(IdentityError::NoCredential { workload });
            };
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                IdentityError::BadToken {
                    workload: workload.clone(),
                }
            })?;
            request.metadata_mut().insert(AUTHORIZATION_METADATA, value);
        }
        let addr = self.control.addr();
        let mut client = CaClient::new(self.control.channel(credential)?);
        let response = match tokio::time::timeout(SIGN_TIMEOUT, client.sign(request)).await {
            Err(_) => return Err(IdentityError::Timeout { addr, workload }),
            Ok(Err(status)) => {
                return Err(IdentityError::Rpc {
                    addr,
                    workload,
                    code: status.code(),
                    message: status_message(&status),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        self.accept(response, key)
    }

    /// Checks an answer and turns it into an [`Identity`].
    fn accept(&self, response: SignResponse, key: KeyPair) -> Result<Identity, IdentityError> {
        let addr = self.control.addr();
        let workload = &self.shared.workload_key;
        let chain: Vec<CertificateDer<'static>> = response
            .cert_chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if chain.is_empty() {
            return Err(IdentityError::EmptyChain {
                addr,
                workload: workload.clone(),
            });
        }
        // Trusted: what this proxy already trusts, plus what the control plane (authenticated
        // by its SVID) says the roots are, so a CA root rotation does not strand the proxy.
        let mut trusted = (*self.control.bundles()).clone();
        trusted.merge(&bundles_from_wire(&response.bundles));
        let now = UnixTime::since_unix_epoch(
            self.clock
                .now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let invalid = |source| IdentityError::Invalid {
            addr,
            workload: workload.clone(),
            source: Box::new(source),
        };
        // The SVID serves both ends of mesh connections.
        let id = verify_svid(&chain, &trusted, now, Usage::Server).map_err(invalid)?;
        verify_svid(&chain, &trusted, now, Usage::Client).map_err(invalid)?;
        let info = CertInfo::parse(&chain[0]).map_err(|e| IdentityError::Unreadable {
            addr,
            id: id.clone(),
            reason: e.to_string(),
        })?;
        if info.public_key_raw != key.public_key_raw() {
            return Err(IdentityError::KeyMismatch { addr, id });
        }
        if let Some(current) = self.shared.identity()
            && current.id != id
        {
            info!(%workload, from = %current.id, to = %id, "identity changed with the config");
        }
        let renewal_time =
            workload_renewal_time(info.not_before, info.not_after, self.jitter.draw());
        Identity::new(
            id.clone(),
            chain,
            Arc::new(key),
            info.not_before,
            info.not_after,
            renewal_time,
            info.serial_hex,
        )
        .map_err(|e| IdentityError::Unreadable {
            addr,
            id,
            reason: e.to_string(),
        })
    }
}

/// The wait before retrying a failed renewal: the backoff, but never sleeping through the
/// expiry of the certificate still in use (at most half the time it has left, at least 1 s).
pub fn retry_delay(backoff: Duration, until_expiry: Option<Duration>) -> Duration {
    match until_expiry {
        Some(left) if !left.is_zero() => backoff.min((left / 2).max(INITIAL_BACKOFF)),
        _ => backoff,
    }
}

/// A CSR with an empty subject and no SAN: only its key counts (see the module docs).
fn bootstrap_csr(key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    let signer = rcgen::KeyPair::try_from(&key.private_key_der())?;
    let mut params = rcgen::CertificateParams::default();
    // rcgen's default subject is `CN=rcgen self signed cert`.
    params.distinguished_name = rcgen::DistinguishedName::new();
    Ok(params.serialize_request(&signer)?.der().to_vec())
}

/// Trust domain → roots as carried by `SignResponse.bundles` and `ProxyUpdate.bundles`.
/// Keys are trust domain names (`spiffe://` accepted); entries that do not parse are skipped
/// with a warning rather than failing the whole update.
pub fn bundles_from_wire(
    wire: &std::collections::HashMap<String, trustmesh_api::mesh::Certificates>,
) -> TrustBundleSet {
    let mut set = TrustBundleSet::new();
    for (key, certs) in wire {
        let td = match trustmesh_core::TrustDomain::new(key) {
            Ok(td) => td,
            Err(e) => {
                warn!(trust_domain = %key, error = %e, "ignoring bundle with an invalid trust domain");
                continue;
            }
        };
        for der in &certs.der {
            if let Err(e) = set.add_root(&td, CertificateDer::from(der.clone())) {
                warn!(trust_domain = %td, error = %e, "ignoring an unusable root");
            }
        }
    }
    set
}

/// A status message with its transport cause (tonic hides "connection refused" in the
/// source chain).
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let mut msg = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_but_never_sleeps_through_expiry() {
        let s = Duration::from_secs;
        // "1s doubling to 5 min"
        assert_eq!(retry_delay(s(1), Some(s(43_200))), s(1));
        assert_eq!(retry_delay(MAX_BACKOFF, Some(s(43_200))), MAX_BACKOFF);
        // "capped before expiry": 4 min left → wait 2 min, not 5.
        assert_eq!(retry_delay(MAX_BACKOFF, Some(s(240))), s(120));
        // close to expiry: at least a second between attempts.
        assert_eq!(retry_delay(s(64), Some(s(1))), s(1));
        // expired or no certificate: the plain backoff.
        assert_eq!(retry_delay(s(8), Some(Duration::ZERO)), s(8));
        assert_eq!(retry_delay(s(8), None), s(8));
    }

    #[test]
    fn the_bootstrap_csr_names_no_identity_and_a_ca_signs_it_for_the_token_identity() {
        let td = trustmesh_core::TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let ca = trustmesh_pki::Ca::generate(&td, now).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = bootstrap_csr(&key).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        let svid = ca
            .sign_csr(&csr, &id, Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(svid.id, id);
        let info = CertInfo::parse(&svid.cert_der).unwrap();
        assert_eq!(info.public_key_raw, key.public_key_raw());
        assert_eq!(info.uri_sans, vec![id.as_str().to_owned()]);
        // The CSR itself asks for nothing: no SAN, an empty subject.
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
        assert!(parsed.params.subject_alt_names.is_empty());
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);
    }
}
