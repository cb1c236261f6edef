//! What every part of one proxy shares: the workload's current identity (SVID and key), the
//! current view of the mesh (the config the control plane pushed, compiled), and the TLS
//! configurations built from both.
//!
//! Both are swapped whole ([`arc_swap`]): a request or connection reads one consistent value
//! at its start and keeps it, so a rotation or a config push never changes what an in-flight
//! request sees, and never blocks one. The rustls configurations resolve the certificate on
//! every handshake ([`CurrentCert`]), so a rotated SVID is used by the next handshake without
//! rebuilding any listener, and open connections keep the certificate they were made with.
//!
//! What does not live here: getting certificates (`identity`), listening (`inbound`,
//! `outbound`), policy semantics (`trustmesh-core`).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{InboundPolicy, PolicySet};
use trustmesh_core::snapshot::{Snapshot, Workload};
use trustmesh_pki::{
    Allowed, ChainCache, ChainCacheStats, KeyPair, SpiffeClientVerifier, SpiffeServerVerifier,
    TrustBundleSet, crypto_provider,
};

/// The workload's current X.509-SVID and its private key (which never leaves the process,
/// except to the workload itself through the SPIFFE Workload API).
pub struct Identity {
    /// The SPIFFE ID in the certificate.
    pub id: SpiffeId,
    /// Leaf first, then intermediates (no root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: Arc<KeyPair>,
    /// What rustls presents: `chain` with a signer over `key`.
    pub certified: Arc<CertifiedKey>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// When the identity manager will renew it (50 % of the lifetime, minus jitter).
    pub renewal_time: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from a signed chain and its key.
    pub fn new(
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: Arc<KeyPair>,
        not_before: SystemTime,
        not_after: SystemTime,
        renewal_time: SystemTime,
        serial: String,
    ) -> Result<Self, rustls::Error> {
        let signer = crypto_provider()
            .key_provider
            .load_private_key(key.private_key_der())?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signer));
        Ok(Self {
            id,
            chain,
            key,
            certified,
            not_before,
            not_after,
            renewal_time,
            serial,
        })
    }
}

/// The mesh as this proxy currently sees it: one config version, compiled.
#[derive(Debug)]
pub struct MeshView {
    /// `ProxyUpdate.version` it came from.
    pub version: u64,
    /// The snapshot rebuilt from the pushed resources.
    pub snapshot: Arc<Snapshot>,
    /// This proxy's own workload in that snapshot.
    pub workload: Workload,
    /// Every policy of the snapshot, compiled once (outbound needs none, inbound one workload).
    pub policies: Arc<PolicySet>,
    /// This workload's inbound rules: mTLS modes per port and its authorization policies.
    pub inbound: Arc<InboundPolicy>,
    /// Trust domain → roots.
    pub bundles: Arc<TrustBundleSet>,
    /// Inbound TLS: TLS 1.3, the current SVID, client SVIDs required and verified against
    /// `bundles`. ALPN `h2`, `http/1.1`.
    pub server_tls: Arc<ServerConfig>,
}

/// Shared by every task of one proxy.
#[derive(Debug)]
pub struct Shared {
    /// `<namespace>/<WorkloadEntry name>`.
    pub workload_key: String,
    identity: ArcSwapOption<Identity>,
    view: ArcSwapOption<MeshView>,
    /// Bumped on every identity or bundle change (Workload API streams wait on it).
    changed: watch::Sender<u64>,
    /// The verified-chain caches of the current bundles, shared by every TLS config built
    /// for them (each CONNECT tunnel builds its own config).
    chain_caches: Mutex<Option<ChainCaches>>,
}

/// One cache per side for one bundle set: what a cache holds depends only on the bundles and
/// on which side's certificates it verifies.
#[derive(Debug, Clone)]
struct ChainCaches {
    bundles: Arc<TrustBundleSet>,
    /// Client certificates, verified by the inbound side.
    inbound: Arc<ChainCache>,
    /// Server certificates, verified by the outbound side.
    outbound: Arc<ChainCache>,
}

impl Shared {
    /// Nothing known yet: no identity, no config.
    pub fn new(workload_key: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            workload_key: workload_key.into(),
            identity: ArcSwapOption::empty(),
            view: ArcSwapOption::empty(),
            changed: watch::channel(0).0,
            chain_caches: Mutex::new(None),
        })
    }

    /// The current identity, if one was issued yet.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.load_full()
    }

    /// Installs a new identity; the next handshake uses it, open connections keep theirs.
    pub fn set_identity(&self, identity: Identity) {
        self.identity.store(Some(Arc::new(identity)));
        self.changed.send_modify(|g| *g += 1);
    }

    /// The current mesh view, if a config was received yet.
    pub fn view(&self) -> Option<Arc<MeshView>> {
        self.view.load_full()
    }

    /// Installs a new mesh view.
    pub fn set_view(&self, view: MeshView) {
        self.view.store(Some(Arc::new(view)));
        self.changed.send_modify(|g| *g += 1);
    }

    /// Ready = has an identity and a config (`/healthz/ready`).
    pub fn is_ready(&self) -> bool {
        self.identity.load().is_some() && self.view.load().is_some()
    }

    /// A receiver that wakes on every identity or view change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The caches for `bundles`: the current ones while the bundles stay equal, new ones
    /// (the old dropped) when they change.
    fn chain_caches(&self, bundles: &Arc<TrustBundleSet>) -> ChainCaches {
        let mut current = self
            .chain_caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(c) if Arc::ptr_eq(&c.bundles, bundles) || *c.bundles == **bundles => c.clone(),
            _ => current
                .insert(ChainCaches {
                    bundles: bundles.clone(),
                    inbound: Arc::new(ChainCache::new()),
                    outbound: Arc::new(ChainCache::new()),
                })
                .clone(),
        }
    }

    /// The counters of the chain caches in use: (inbound, outbound).
    pub fn chain_cache_stats(&self) -> Option<(ChainCacheStats, ChainCacheStats)> {
        let current = self
            .chain_caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .map(|c| (c.inbound.stats(), c.outbound.stats()))
    }

    /// The inbound TLS config for `bundles`, presenting whatever identity is current at
    /// each handshake.
    pub fn server_tls(
        self: &Arc<Self>,
        bundles: Arc<TrustBundleSet>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let cache = self.chain_caches(&bundles).inbound;
        let verifier = Arc::new(SpiffeClientVerifier::new(bundles).with_cache(cache));
        let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCert(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No resumption: a resumed TLS 1.3 session skips client authentication, and every
        // mesh connection must prove the peer's current SVID against the current bundles.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        // And no NewSessionTicket messages nobody could use: two encrypted records per
        // handshake saved.
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// An outbound TLS config: TLS 1.3, the current SVID as client certificate, the server
    /// verified against `bundles` and required to be one of `allowed` (secure naming).
    pub fn client_tls(
        self: &Arc<Self>,
        bundles: Arc<TrustBundleSet>,
        allowed: Allowed,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let cache = self.chain_caches(&bundles).outbound;
        let verifier = Arc::new(SpiffeServerVerifier::new(bundles, allowed).with_cache(cache));
        let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentCert(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // No resumption (see `server_tls`): every connection re-checks the server's SVID.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// Resolves the certificate of both sides of a handshake to the current identity.
#[derive(Debug)]
pub struct CurrentCert(pub Arc<Shared>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.identity.load().is_some()
    }
}
