//! The verifiers' memory of chains that verified: a small, bounded map from the exact bytes a
//! peer presented to what their verification established, so a peer presenting the same
//! X509-SVID for hours is path-validated once, not on every connection.
//!
//! What lives here: [`verify_svid_cached`] (what is cached, what is re-checked on a hit, and
//! why that is safe), the key (a SHA-256 digest of the presented certificates), the cached
//! value ([`Verified`]: the SPIFFE ID and the validity window of the verified path) and the
//! bounded map. What does not: the verification itself (`verify.rs`) and the per-call checks
//! of the verifiers (secure naming).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::crypto::hash::Hash;
use rustls_pki_types::{CertificateDer, UnixTime};
use trustmesh_core::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Usage, VerifyError, verify_svid_then};
use crate::bundle::TrustBundleSet;

/// `verify_svid_parts` through a verifier's `cache` of chains that verified.
///
/// What is cached, and why it is safe: for the exact bytes presented (leaf and intermediates,
/// in order, by SHA-256), the SPIFFE ID and the validity window of the path that verified.
/// Everything else [`super::verify_svid`] checks — the X509-SVID leaf rules, the choice of the
/// trust domain's bundle, the signatures, CA and path-length constraints, name constraints and
/// the extended key usage — depends only on those bytes and on the verifier's own bundles and
/// usage, which never change for one cache (new bundles = new verifier and a new cache); no revocation is
/// checked here. Of the per-call arguments, the server name and OCSP response play no part in
/// verification; the one that does is `now`, and webpki compares it only with the notBefore /
/// notAfter of each certificate of the path: a hit is served only when `now` lies inside the
/// cached window, where every certificate of that path is valid; outside it, the chain is
/// verified in full again, so an expired or not-yet-valid chain fails with exactly the error
/// it always did, and its entry is dropped. Failures are never cached. Per-call checks of the
/// callers (secure naming against [`super::Allowed`]) run after this on every call, and the
/// CertificateVerify signature (`verify_tls13_signature`), which proves the peer holds the key
/// in this handshake, is never cached.
pub(super) fn verify_svid_cached(
    cache: &ChainCache,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let key = cache.key(leaf, intermediates);
    if let Some(id) = key.as_ref().and_then(|k| cache.get(k, now)) {
        return Ok(id);
    }
    cache.count_miss();
    match verify_svid_then(leaf, intermediates, bundles, now, usage, |path| {
        path_window(leaf, path)
    }) {
        Ok((id, window)) => {
            // The window must contain the time webpki just accepted; if it does not, the two
            // date parsers disagree and nothing is remembered.
            if let (Some(key), Some(window)) = (key, window)
                && window.covers(now)
            {
                cache.insert(
                    key,
                    Verified {
                        id: id.clone(),
                        window,
                    },
                );
            }
            Ok(id)
        }
        Err(e) => {
            if let Some(key) = &key {
                cache.remove(key);
            }
            Err(e)
        }
    }
}

/// The validity window of a verified path: the latest notBefore and the earliest notAfter of
/// its certificates (`leaf` and the intermediates webpki chose; a trust anchor has no
/// validity). `None` if a date cannot be read, and then nothing is cached.
fn path_window(leaf: &CertificateDer<'_>, path: &webpki::VerifiedPath<'_>) -> Option<Window> {
    let mut window: Option<Window> = None;
    let intermediates: Vec<CertificateDer<'_>> =
        path.intermediate_certificates().map(|c| c.der()).collect();
    for der in std::iter::once(leaf).chain(&intermediates) {
        let (_, x509) = X509Certificate::from_der(der).ok()?;
        let validity = x509.validity();
        // A notBefore before 1970 is before any `now` rustls can pass.
        let not_before = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
        ));
        let not_after = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(validity.not_after.timestamp()).ok()?,
        ));
        window = Some(match window {
            None => Window {
                not_before,
                not_after,
            },
            Some(w) => Window {
                not_before: w.not_before.max(not_before),
                not_after: w.not_after.min(not_after),
            },
        });
    }
    window
}

/// How many verified chains one verifier remembers. A proxy talks to a handful of peers, each
/// with one current SVID (two during a rotation); 256 leaves room for a large namespace while
/// bounding memory to a few tens of kilobytes.
pub(super) const CAPACITY: usize = 256;

/// SHA-256 over the presented certificates.
pub(super) type Key = [u8; 32];

/// The validity window of a verified path: every certificate of it is valid at `t` iff
/// `not_before <= t <= not_after` (RFC 5280 4.1.2.5: "The validity period for a certificate
/// is the period of time from notBefore through notAfter, inclusive").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// The latest notBefore of the path.
    pub not_before: UnixTime,
    /// The earliest notAfter of the path.
    pub not_after: UnixTime,
}

impl Window {
    /// Whether every certificate of the path is valid at `now` (webpki's own comparison).
    pub fn covers(&self, now: UnixTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// What a successful verification established, from the certificate bytes and the verifier's
/// bundles alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verified {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// When the path that verified is valid.
    pub window: Window,
}

/// Counters of a verifier's chain cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainCacheStats {
    /// Verifications answered from the cache (no path building, no signature check).
    pub hits: u64,
    /// Verifications that ran in full (first sight, eviction, outside the cached window,
    /// failures).
    pub misses: u64,
    /// Chains remembered now (at most 256).
    pub entries: usize,
}

/// The bounded map, oldest insertion evicted first.
#[derive(Default)]
struct Entries {
    map: HashMap<Key, Verified>,
    /// Keys in insertion order; exactly the keys of `map`.
    order: VecDeque<Key>,
}

/// A cache of successful chain verifications (see the module docs). Each verifier has its
/// own unless it is given one to share ([`super::SpiffeClientVerifier::with_cache`],
/// [`super::SpiffeServerVerifier::with_cache`]): what it holds depends only on the bundles
/// and the usage, so verifiers of the same bundles and side may share one.
pub struct ChainCache {
    /// The provider's SHA-256; without one (never with aws-lc-rs) nothing is cached.
    sha256: Option<&'static dyn Hash>,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl fmt::Debug for ChainCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ChainCache {
    /// An empty cache hashing with the process' crypto provider.
    #[allow(clippy::new_without_default)] // building it looks up the provider's SHA-256
    pub fn new() -> Self {
        let sha256 = crate::sha256();
        Self {
            sha256,
            entries: Mutex::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The key of a presented chain: SHA-256 over the count, then each certificate's length
    /// and bytes, leaf first, so no two different presentations share an input.
    pub(super) fn key(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Key> {
        let mut ctx = self.sha256?.start();
        ctx.update(&(intermediates.len() as u64 + 1).to_be_bytes());
        for cert in std::iter::once(leaf).chain(intermediates) {
            ctx.update(&(cert.len() as u64).to_be_bytes());
            ctx.update(cert);
        }
        ctx.finish().as_ref().try_into().ok()
    }

    /// The SPIFFE ID remembered for `key` if `now` lies inside its validity window, counted
    /// as a hit. Outside the window the caller verifies in full.
    pub(super) fn get(&self, key: &Key, now: UnixTime) -> Option<SpiffeId> {
        let id = self
            .lock()
            .map
            .get(key)
            .filter(|v| v.window.covers(now))
            .map(|v| v.id.clone())?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    /// Counts one verification that ran in full.
    pub(super) fn count_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers a successful verification, evicting the oldest entry when full.
    pub(super) fn insert(&self, key: Key, verified: Verified) {
        let mut e = self.lock();
        if let Some(old) = e.map.get_mut(&key) {
            *old = verified;
            return;
        }
        if e.map.len() >= CAPACITY
            && let Some(oldest) = e.order.pop_front()
        {
            e.map.remove(&oldest);
        }
        e.map.insert(key, verified);
        e.order.push_back(key);
    }

    /// Forgets `key` (its chain no longer verifies at the time asked).
    pub(super) fn remove(&self, key: &Key) {
        let mut e = self.lock();
        if e.map.remove(key).is_some() {
            e.order.retain(|k| k != key);
        }
    }

    /// The counters.
    pub fn stats(&self) -> ChainCacheStats {
        ChainCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().map.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map is consistent after every statement that can panic (none do while holding
        // the lock), so a poisoned lock still guards a valid map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
