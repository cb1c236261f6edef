//! The control plane's side of TLS on the gRPC port: its own X.509-SVID
//! (`spiffe://<td>/ns/<root-namespace>/sa/trustmesh-control-plane`, issued by the mesh's CA,
//! renewed at half its lifetime), the TLS 1.3 server configuration (ALPN `h2`, client
//! certificates optional — a bootstrapping proxy has none — and verified against every bundle
//! when presented), and the acceptor that hands tonic finished TLS connections carrying the
//! peer's verified identity ([`PeerInfo`] in the request extensions, through tonic's
//! `Connected`).
//! What does not live here: deciding what a peer may do (`grpc`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use trustmesh_core::SpiffeId;
use trustmesh_core::renewal::workload_renewal_time;
use trustmesh_core::snapshot::Snapshot;
use trustmesh_pki::{KeyPair, SpiffeClientVerifier, TrustBundleSet, peer_spiffe_id};

use crate::error::ControlPlaneError;
use crate::state::Shared;

/// The service account of the control plane's identity.
pub use trustmesh_core::identity::CONTROL_PLANE_SERVICE_ACCOUNT;
/// A TLS handshake not finished in this time is dropped (docs/mesh-runtime.md, inbound).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's SPIFFE ID for `snapshot`: what proxies verify it as
/// (docs/mesh-runtime.md: `spiffe://<td>/ns/<root-namespace>/sa/trustmesh-control-plane`).
pub fn control_plane_identity(snapshot: &Snapshot) -> Result<SpiffeId, ControlPlaneError> {
    let mesh = snapshot.mesh();
    SpiffeId::workload(
        &mesh.trust_domain,
        &mesh.root_namespace,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    )
    .map_err(|e| ControlPlaneError::Identity {
        trust_domain: mesh.trust_domain.clone(),
        namespace: mesh.root_namespace.clone(),
        reason: e.to_string(),
    })
}

/// The control plane's current SVID and key.
#[derive(Debug)]
pub(crate) struct OwnSvid {
    pub id: SpiffeId,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

impl OwnSvid {
    /// Issues a fresh SVID for the identity `snapshot` gives the control plane, from the CA
    /// of the mesh's trust domain, for the mesh's workload certificate lifetime.
    pub fn issue(shared: &Shared, snapshot: &Snapshot) -> Result<Self, ControlPlaneError> {
        let id = control_plane_identity(snapshot)?;
        let cas = shared.cas.load();
        let td = &snapshot.mesh().trust_domain;
        let ca = cas.get(td).ok_or_else(|| ControlPlaneError::OwnSvid {
            identity: id.clone(),
            source: trustmesh_pki::CaError::NoTrustDomain,
        })?;
        let lifetime = snapshot.mesh().workload_cert_ttl.as_duration();
        let (svid, key) = ca
            .issue_svid(&id, lifetime, shared.clock.now())
            .map_err(|source| ControlPlaneError::OwnSvid {
                identity: id.clone(),
                source,
            })?;
        Ok(Self {
            id,
            serial: svid.serial,
            not_before: svid.not_before,
            not_after: svid.not_after,
            chain: svid.chain_der,
            key,
        })
    }

    /// When it is renewed: DESIGN "renewed at 50 % of lifetime", no jitter (one instance).
    pub fn renewal_time(&self) -> SystemTime {
        workload_renewal_time(self.not_before, self.not_after, 0.0)
    }
}

/// The gRPC port's TLS: the current SVID and the server configuration built from it and the
/// current bundles. Each new connection reads the configuration once; open connections keep
/// theirs.
#[derive(Debug)]
pub(crate) struct ServerTls {
    svid: ArcSwap<OwnSvid>,
    config: ArcSwap<ServerConfig>,
}

fn build_config(
    svid: &OwnSvid,
    bundles: &Arc<TrustBundleSet>,
) -> Result<ServerConfig, ControlPlaneError> {
    let verifier = Arc::new(SpiffeClientVerifier::optional(bundles.clone()));
    let mut config =
        trustmesh_pki::server_config(svid.chain.clone(), svid.key.private_key_der(), verifier)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ServerTls {
    /// TLS with `svid`, verifying clients against `bundles`.
    pub fn new(svid: OwnSvid, bundles: &Arc<TrustBundleSet>) -> Result<Self, ControlPlaneError> {
        let config = build_config(&svid, bundles)?;
        Ok(Self {
            svid: ArcSwap::from_pointee(svid),
            config: ArcSwap::from_pointee(config),
        })
    }

    /// The current SVID.
    pub fn svid(&self) -> Arc<OwnSvid> {
        self.svid.load_full()
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Brings the TLS up to date with the published state at `now`: a new SVID when the
    /// identity changed (trust domain or root namespace) or the renewal time has come, and a
    /// configuration with the current bundles either way. Returns whether the SVID changed.
    pub fn refresh(&self, shared: &Shared, now: SystemTime) -> Result<bool, ControlPlaneError> {
        let published = shared.current();
        let current = self.svid();
        let wanted = control_plane_identity(&published.snapshot)?;
        let renew = current.id != wanted || now >= current.renewal_time();
        let svid = if renew {
            Arc::new(OwnSvid::issue(shared, &published.snapshot)?)
        } else {
            current
        };
        let config = build_config(&svid, &published.bundles)?;
        if renew {
            tracing::info!(
                identity = %svid.id,
                serial = %svid.serial,
                not_after = %trustmesh_pki::svid::format_rfc3339(svid.not_after),
                "control plane SVID issued"
            );
            self.svid.store(svid);
        }
        self.config.store(Arc::new(config));
        Ok(renew)
    }
}

/// The peer of a gRPC connection, as the TLS handshake established it.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// Remote address.
    pub addr: SocketAddr,
    /// The verified SPIFFE ID of the client certificate, if one was presented.
    pub id: Option<SpiffeId>,
    /// The client's leaf certificate, if one was presented.
    pub leaf: Option<CertificateDer<'static>>,
}

/// A finished TLS connection for tonic.
#[derive(Debug)]
pub(crate) struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections until `shutdown`, runs each TLS handshake in its own task (with
/// [`HANDSHAKE_TIMEOUT`]) so a slow client holds up nobody, and passes finished connections
/// to `tx`. Failed handshakes are logged and dropped; the stream tonic reads never errs.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::state::stopping(&mut shutdown) => return,
        };
        let acceptor = tls.acceptor();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let (_, conn) = stream.get_ref();
                    let peer = PeerInfo {
                        addr,
                        id: peer_spiffe_id(conn),
                        leaf: conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.clone().into_owned()),
                    };
                    // The receiver is gone only when the server shut down.
                    let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                }
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "gRPC TLS handshake failed"),
                Err(_) => tracing::info!(peer = %addr, "gRPC TLS handshake timed out"),
            }
        });
    }
}

/// Renews the control plane's SVID when due (checked at least every minute, so a clock jump
/// is noticed), until `shutdown`. A failed renewal keeps the valid SVID and is retried.
pub(crate) async fn renewal_loop(
    shared: Arc<Shared>,
    tls: Arc<ServerTls>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        let due = tls.svid().renewal_time();
        let wait = due
            .duration_since(shared.clock.now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
        if shared.clock.now() < due {
            continue;
        }
        match tls.refresh(&shared, shared.clock.now()) {
            Ok(_) => retry = Duration::from_secs(1),
            Err(e) => {
                tracing::error!(error = %e, "renewing the control plane SVID failed; keeping the current one");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = crate::state::stopping(&mut shutdown) => return,
                }
                retry = (retry * 2).min(Duration::from_secs(300));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bundles::Cas;
    use crate::clock::SystemClock;
    use crate::mesh;

    fn mesh_yaml(root: &str) -> String {
        format!(
            "apiVersion: trustmesh.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: m}}\nspec: {{trustDomain: td.test, rootNamespace: {root}, workloadCertTTL: 1h}}\n"
        )
    }

    #[test]
    fn own_svid_renews_at_half_its_lifetime_and_when_its_identity_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, state) = (tmp.path().join("cfg"), tmp.path().join("state"));
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("mesh.yaml"), mesh_yaml("istio-system")).unwrap();
        let now = SystemTime::now();
        let loaded = mesh::load(&cfg, &state, &Cas::new(), now).unwrap();
        let shared = Shared::new(
            cfg.clone(),
            state.clone(),
            Arc::new(SystemClock),
            "t".into(),
            loaded,
        )
        .unwrap();
        let p = shared.current();
        let svid = OwnSvid::issue(&shared, &p.snapshot).unwrap();
        assert_eq!(
            svid.id.as_str(),
            "spiffe://td.test/ns/istio-system/sa/trustmesh-control-plane"
        );
        // DESIGN: "renewed at 50 % of lifetime": 1h (plus the CA's 60 s backdating) / 2.
        let lifetime = svid.not_after.duration_since(svid.not_before).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3660));
        assert_eq!(svid.renewal_time(), svid.not_before + lifetime / 2);

        let tls = ServerTls::new(svid, &p.bundles).unwrap();
        let first = tls.svid();
        assert!(
            !tls.refresh(&shared, first.renewal_time() - Duration::from_secs(1))
                .unwrap()
        );
        assert_eq!(tls.svid().serial, first.serial);
        assert!(tls.refresh(&shared, first.renewal_time()).unwrap());
        assert_ne!(tls.svid().serial, first.serial);

        // A new root namespace is a new identity: re-issued at once.
        std::fs::write(cfg.join("mesh.yaml"), mesh_yaml("mesh-root")).unwrap();
        let reloaded = mesh::load(&cfg, &state, &shared.cas.load(), now).unwrap();
        shared.accept(reloaded);
        assert!(tls.refresh(&shared, SystemTime::now()).unwrap());
        assert_eq!(
            tls.svid().id.as_str(),
            "spiffe://td.test/ns/mesh-root/sa/trustmesh-control-plane"
        );
    }
}
