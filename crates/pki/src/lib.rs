//! trustmesh's public-key infrastructure: everything that creates, reads or checks X.509.
//!
//! What lives here:
//! - [`ca`]: a certificate authority per trust domain, its on-disk store, and X509-SVID
//!   issuance from CSRs (the CSR's contents are never trusted, only its public key).
//! - [`keys`]: key pairs (ECDSA P-256 by default) and their PEM encodings.
//! - [`svid`]: reading certificates for people ([`svid::CertInfo`]: the CLI's `certs`, `debug`).
//! - [`verify`]: SPIFFE X509-SVID verification on top of WebPKI path validation, packaged as
//!   the rustls client and server certificate verifiers the proxy uses, and TLS 1.3-only
//!   rustls configurations.
//! - [`bundle`]: trust bundles (trust domain → roots), PEM and the SPIFFE bundle (JWKS) format.
//! - [`certmanager`]: cert-manager style issuance (SelfSigned and CA issuers) and the
//!   `tls.crt` / `tls.key` / `ca.crt` output folder.
//! - [`controller`]: one pass of the cert-manager controller (`Certificate` → Secret folder
//!   and status).
//! - [`fsutil`]: atomic file writes (temp file, fsync, rename, fsync directory).
//!
//! What does not: sockets, async runtimes, config parsing, Kubernetes. One crypto provider
//! (aws-lc-rs) is used everywhere, always passed explicitly ([`crypto_provider`]).

pub mod bundle;
pub mod ca;
pub mod certmanager;
pub mod controller;
mod der;
pub mod fsutil;
pub mod keys;
pub mod svid;
pub mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use bundle::{BundleError, TrustBundle, TrustBundleSet};
pub use ca::{Ca, CaError, CaStore, IssuedSvid, csr_for};
pub use certmanager::{CertRequest, IssuedCert, SecretDir};
pub use keys::{KeyAlgorithm, KeyEncoding, KeyError, KeyPair};
pub use svid::CertInfo;
pub use verify::{
    Allowed, ChainCache, ChainCacheStats, SpiffeClientVerifier, SpiffeServerVerifier, Usage,
    VerifyError, client_config, peer_spiffe_id, server_config, verify_chain, verify_svid,
};

/// The one rustls crypto provider of the process: aws-lc-rs, built once.
///
/// Every rustls config in trustmesh is built with `builder_with_provider(crypto_provider())`,
/// never with the default builder, so a second provider in the dependency tree can never make
/// rustls panic on an ambiguous default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            // AES-128-GCM-SHA256 first, as BoringSSL (Envoy, Istio) orders TLS 1.3 suites on
            // CPUs with AES instructions: it runs on the SHA-256 extensions, where aws-lc's
            // SHA-384 (the default first suite) takes a slower generic path — a tenth of a
            // full handshake's CPU, and bulk encryption gets cheaper too.
            p.cipher_suites.sort_by_key(|s| match s.suite() {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
                _ => 2,
            });
            Arc::new(p)
        })
        .clone()
}

/// The provider's SHA-256, which it exposes through its TLS 1.3 suites (every suite but
/// AES-256-GCM-SHA384 uses it); `None` only for a provider without one (never aws-lc-rs).
pub fn sha256() -> Option<&'static dyn rustls::crypto::hash::Hash> {
    crypto_provider()
        .cipher_suites
        .iter()
        .filter_map(|s| s.tls13())
        .map(|s| s.common.hash_provider)
        .find(|h| h.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256)
}

/// Fills `buf` from the provider's secure random generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    crypto_provider().secure_random.fill(buf)
}

/// A random, positive, 16-byte certificate serial number.
///
/// RFC 5280 4.1.2.2: "The serial number MUST be a positive integer assigned by the CA to each
/// certificate. ... Conforming CAs MUST NOT use serialNumber values longer than 20 octets."
pub(crate) fn random_serial() -> Result<[u8; 16], rustls::crypto::GetRandomFailed> {
    let mut serial = [0u8; 16];
    fill_random(&mut serial)?;
    // Clear the sign bit (positive) and keep the first octet non-zero, so the DER INTEGER is
    // exactly 16 octets with no padding: 126 random bits remain.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(serial)
}

/// Converts a `SystemTime` to whole seconds as X.509 stores it (fractions are dropped).
pub(crate) fn truncate_to_secs(t: std::time::SystemTime) -> std::time::SystemTime {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        // Before 1970: X.509 can hold it, but nothing here issues such certificates; keep it.
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_sixteen_octets_and_distinct() {
        let a = random_serial().unwrap_or_default();
        let b = random_serial().unwrap_or_default();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s[0] & 0x80, 0, "sign bit must be clear");
            assert_ne!(s[0], 0, "first octet non-zero keeps the encoding 16 octets");
        }
    }

    #[test]
    fn provider_is_shared() {
        assert!(Arc::ptr_eq(&crypto_provider(), &crypto_provider()));
    }

    #[test]
    fn tls13_prefers_aes_128_gcm_sha256_and_keeps_every_suite() {
        let suites: Vec<rustls::CipherSuite> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(
            suites.len(),
            rustls::crypto::aws_lc_rs::default_provider()
                .cipher_suites
                .len()
        );
    }
}
