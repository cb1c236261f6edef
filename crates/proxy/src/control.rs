//! The proxy's side of the wire to the control plane (port 15012): gRPC over TLS 1.3, the
//! control plane authenticated as its SPIFFE identity, this proxy authenticated either by
//! nothing (bootstrap: the join token travels as metadata) or by its current SVID.
//!
//! docs/mesh-runtime.md: the proxy "connects to `Ca.Sign` over TLS 1.3 verifying the control
//! plane's SVID (`spiffe://<td>/ns/<root-namespace>/sa/trustmesh-control-plane`) against the
//! bootstrap bundle". Before the first config the root namespace is the one given at start
//! (Istio's `istio-system` by default) and any trust domain of the bootstrap bundle is
//! accepted; once a config arrives, its root namespace and bundles are used.
//!
//! The transport under TLS is TCP to the control plane's address, or any byte stream a
//! [`Dialer`] makes (tests on tokio's paused clock use in-memory pipes: real sockets let the
//! paused clock jump while a packet is in flight).
//!
//! What is not here: what is asked (`identity`, `discovery`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::{Allowed, SpiffeServerVerifier, TrustBundleSet, crypto_provider};

use crate::clock::Clock;
use crate::state::{CurrentCert, Shared};

/// The service account the control plane's SVID names, in the root namespace.
pub use trustmesh_core::identity::CONTROL_PLANE_SERVICE_ACCOUNT;

/// How long a TCP connect plus TLS handshake to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no channel to the control plane could be built.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The TLS client configuration was refused by rustls.
    #[error("TLS configuration for the control plane at {addr}: {source}")]
    Tls {
        /// The control plane's address.
        addr: SocketAddr,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// No trust domain is known, so no control-plane identity can be accepted.
    #[error("no trust bundle: cannot authenticate the control plane at {addr}")]
    NoBundle {
        /// The control plane's address.
        addr: SocketAddr,
    },
}

/// A byte stream to the control plane, before TLS.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

type DialFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Transport>>> + Send>>;

/// Opens a byte stream to the control plane (default: TCP to its address).
#[derive(Clone)]
pub struct Dialer(Arc<dyn Fn() -> DialFuture + Send + Sync>);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

impl Dialer {
    /// TCP to `addr` (no Nagle: gRPC messages are small and latency-bound).
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::from_fn(move || {
            Box::pin(async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Ok(Box::new(tcp) as Box<dyn Transport>)
            })
        })
    }

    /// Any function returning a connecting future.
    pub fn from_fn(f: impl Fn() -> DialFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn dial(&self) -> DialFuture {
        (self.0)()
    }
}

/// What this proxy presents to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No client certificate (bootstrap with a join token).
    None,
    /// The current SVID, resolved at each handshake.
    CurrentSvid,
}

/// Where the control plane is and how to recognise it.
#[derive(Debug)]
pub struct ControlPlane {
    addr: SocketAddr,
    dialer: Dialer,
    bootstrap: Arc<TrustBundleSet>,
    root_namespace: String,
    shared: Arc<Shared>,
    clock: Clock,
}

impl ControlPlane {
    /// The control plane at `addr`, trusted through `bootstrap` until a config arrives.
    pub fn new(
        addr: SocketAddr,
        bootstrap: Arc<TrustBundleSet>,
        root_namespace: impl Into<String>,
        shared: Arc<Shared>,
        clock: Clock,
    ) -> Self {
        Self {
            addr,
            dialer: Dialer::tcp(addr),
            bootstrap,
            root_namespace: root_namespace.into(),
            shared,
            clock,
        }
    }

    /// Reaches the control plane through `dialer` instead of TCP to its address.
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// The control plane's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bundles trusted now: the current config's, else the bootstrap bundle.
    pub fn bundles(&self) -> Arc<TrustBundleSet> {
        match self.shared.view() {
            Some(v) => v.bundles.clone(),
            None => self.bootstrap.clone(),
        }
    }

    /// The identities the control plane may present: `spiffe://<td>/ns/<root>/sa/
    /// trustmesh-control-plane`. Once a config has arrived, `<td>` is the mesh's own trust
    /// domain only — the control plane's SVID is always issued there, and a federated
    /// region's CA (its roots are in the bundles too) must never be able to act as this
    /// mesh's control plane. Before the first config (bootstrap), every trust domain of the
    /// bootstrap bundle the operator handed the proxy.
    pub fn allowed(&self) -> Result<(Arc<TrustBundleSet>, Allowed), ControlError> {
        let view = self.shared.view();
        let bundles = self.bundles();
        let ids: Vec<SpiffeId> = match &view {
            Some(v) => {
                let mesh = v.snapshot.mesh();
                control_plane_id(&mesh.trust_domain, &mesh.root_namespace)
                    .into_iter()
                    .collect()
            }
            None => bundles
                .trust_domains()
                .filter_map(|td| control_plane_id(td, &self.root_namespace))
                .collect(),
        };
        if ids.is_empty() {
            return Err(ControlError::NoBundle { addr: self.addr });
        }
        Ok((bundles, Allowed::Ids(ids)))
    }

    /// A TLS 1.3 client config for the control plane.
    pub fn tls(&self, credential: Credential) -> Result<Arc<ClientConfig>, ControlError> {
        let (bundles, allowed) = self.allowed()?;
        let verifier = Arc::new(SpiffeServerVerifier::new(bundles, allowed));
        let tls_err = |source| ControlError::Tls {
            addr: self.addr,
            source,
        };
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = match credential {
            Credential::None => builder.with_no_client_auth(),
            Credential::CurrentSvid => {
                builder.with_client_cert_resolver(Arc::new(CurrentCert(self.shared.clone())))
            }
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg.time_provider = Arc::new(self.clock.clone());
        Ok(Arc::new(cfg))
    }

    /// A gRPC channel to the control plane; it connects on first use.
    pub fn channel(&self, credential: Credential) -> Result<Channel, ControlError> {
        let tls = self.tls(credential)?;
        // The URI only names the origin in HTTP/2 `:authority`; the connector dials `addr`.
        let endpoint = Endpoint::from(
            http::Uri::builder()
                .scheme("http")
                .authority(self.addr.to_string())
                .path_and_query("/")
                .build()
                .unwrap_or_default(),
        )
        .connect_timeout(CONNECT_TIMEOUT)
        // A control plane that vanished without a FIN (machine gone, network cut) is found
        // by pings, so the config stream reconnects instead of waiting forever.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(Connector {
            addr: self.addr,
            dialer: self.dialer.clone(),
            tls,
        }))
    }
}

/// `spiffe://<td>/ns/<root>/sa/trustmesh-control-plane`.
pub fn control_plane_id(td: &TrustDomain, root_namespace: &str) -> Option<SpiffeId> {
    SpiffeId::workload(td, root_namespace, CONTROL_PLANE_SERVICE_ACCOUNT).ok()
}

/// Dials the control plane, then TLS with the given config.
#[derive(Debug, Clone)]
struct Connector {
    addr: SocketAddr,
    dialer: Dialer,
    tls: Arc<ClientConfig>,
}

type Conn = TokioIo<TlsStream<Box<dyn Transport>>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, std::io::Error>> + Send>>;

impl Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.addr;
        let tls = self.tls.clone();
        let dial = self.dialer.dial();
        Box::pin(async move {
            let io = dial.await?;
            // SVIDs carry no DNS name: the verifier checks the SPIFFE ID, the name is unused.
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = TlsConnector::from(tls).connect(name, io).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};
    use trustmesh_api::ProxyConfig;
    use trustmesh_api::mesh::{Certificates, ProxyUpdate};
    use trustmesh_pki::Ca;

    fn root(td: &str) -> (TrustDomain, Ca) {
        let td = TrustDomain::new(td).unwrap();
        let ca = Ca::generate(&td, SystemTime::now() - Duration::from_secs(60)).unwrap();
        (td, ca)
    }

    #[test]
    fn the_control_plane_identity_follows_the_bootstrap_bundle_then_the_config() {
        let (us, us_ca) = root("us.example");
        let (eu, eu_ca) = root("eu.example");
        let mut bootstrap = TrustBundleSet::new();
        bootstrap.add_root(&us, us_ca.root_der().clone()).unwrap();
        bootstrap.add_root(&eu, eu_ca.root_der().clone()).unwrap();
        let shared = Shared::new("shop/web");
        let cp = ControlPlane::new(
            "127.0.0.1:15012".parse().unwrap(),
            Arc::new(bootstrap),
            "istio-system",
            shared.clone(),
            Clock::system(),
        );
        let ids = |a: Allowed| match a {
            Allowed::Ids(ids) => ids
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        // Before a config: any trust domain of the bootstrap bundle, the given namespace.
        assert_eq!(
            ids(cp.allowed().unwrap().1),
            [
                "spiffe://eu.example/ns/istio-system/sa/trustmesh-control-plane",
                "spiffe://us.example/ns/istio-system/sa/trustmesh-control-plane",
            ]
        );
        // With a config: its root namespace and the mesh's own trust domain only.
        let cfg = ProxyConfig::from_json(
            br#"{"workload":"shop/web","resources":[
            {"apiVersion":"trustmesh.io/v1alpha1","kind":"MeshConfig","metadata":{"name":"m"},
             "spec":{"trustDomain":"us.example","rootNamespace":"mesh-root"}},
            {"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry",
             "metadata":{"name":"web","namespace":"shop"},"spec":{"address":"127.0.1.2"}}]}"#,
        )
        .unwrap();
        let update = ProxyUpdate {
            version: 1,
            config_json: cfg.to_json().unwrap(),
            // A federated region's roots come along; its CA must not be able to act as
            // this mesh's control plane.
            bundles: [
                (
                    "us.example".to_owned(),
                    Certificates {
                        der: vec![us_ca.root_der().to_vec()],
                    },
                ),
                (
                    "eu.example".to_owned(),
                    Certificates {
                        der: vec![eu_ca.root_der().to_vec()],
                    },
                ),
            ]
            .into_iter()
            .collect(),
            rotation: 0,
        };
        let view = crate::discovery::compile_view(
            &shared,
            &update,
            &TrustBundleSet::new(),
            &Clock::system(),
        )
        .unwrap();
        shared.set_view(view);
        assert_eq!(
            ids(cp.allowed().unwrap().1),
            ["spiffe://us.example/ns/mesh-root/sa/trustmesh-control-plane"]
        );
    }

    #[test]
    fn an_empty_bundle_authenticates_no_control_plane() {
        let cp = ControlPlane::new(
            "127.0.0.1:15012".parse().unwrap(),
            Arc::new(TrustBundleSet::new()),
            "istio-system",
            Shared::new("shop/web"),
            Clock::system(),
        );
        assert_eq!(
            cp.allowed().unwrap_err().to_string(),
            "no trust bundle: cannot authenticate the control plane at 127.0.0.1:15012"
        );
    }
}
