//! Shared by the proxy's integration tests: a test CA issuing real SVIDs, config builders,
//! an in-process inbound harness (real sockets on 127.0.x.y, the demo app behind it), and
//! small TLS/HTTP clients that show exactly what a client sees.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use trustmesh_api::ProxyConfig;
use trustmesh_api::mesh::{Certificates, ProxyUpdate};
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::{Allowed, Ca, KeyPair, SpiffeServerVerifier, TrustBundleSet, crypto_provider};
use trustmesh_proxy::clock::Clock;
use trustmesh_proxy::discovery::compile_view;
use trustmesh_proxy::inbound::Inbound;
use trustmesh_proxy::metrics::Metrics;
use trustmesh_proxy::state::{CurrentCert, Identity, Shared};

/// The mesh's trust domain in these tests (Istio's default, so principals read naturally).
pub const TD: &str = "cluster.local";
/// The workload behind the proxy under test.
pub const WORKLOAD: &str = "prod/orders";

/// A CA for one trust domain.
pub struct TestCa {
    pub ca: Ca,
    pub td: TrustDomain,
}

impl TestCa {
    pub fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        // Backdated so certificates issued "now" by a following clock are already valid.
        let ca = Ca::generate(&td, SystemTime::now() - Duration::from_secs(3600)).unwrap();
        Self { ca, td }
    }

    pub fn bundle(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        set.add_root(&self.td, self.ca.root_der().clone()).unwrap();
        set
    }

    pub fn id(&self, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::workload(&self.td, ns, sa).unwrap()
    }

    /// A 24 h SVID for `ns/sa` issued now.
    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        self.identity_at(
            &self.id(ns, sa),
            Duration::from_secs(24 * 3600),
            SystemTime::now(),
        )
    }

    pub fn identity_at(&self, id: &SpiffeId, lifetime: Duration, now: SystemTime) -> Identity {
        let (svid, key) = self.ca.issue_svid(id, lifetime, now).unwrap();
        to_identity(svid, key)
    }
}

pub fn to_identity(svid: trustmesh_pki::IssuedSvid, key: KeyPair) -> Identity {
    let renewal =
        trustmesh_core::renewal::workload_renewal_time(svid.not_before, svid.not_after, 0.0);
    Identity::new(
        svid.id,
        svid.chain_der,
        Arc::new(key),
        svid.not_before,
        svid.not_after,
        renewal,
        svid.serial,
    )
    .unwrap()
}

pub fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// A WorkloadEntry.
pub fn workload_entry(
    ns: &str,
    name: &str,
    address: IpAddr,
    sa: &str,
    ports: &[(&str, u16)],
    extra: Value,
) -> Value {
    let ports: serde_json::Map<String, Value> = ports
        .iter()
        .map(|(n, p)| ((*n).to_owned(), json!(p)))
        .collect();
    let mut we = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"address": address.to_string(), "serviceAccount": sa, "labels": {"app": name}, "ports": ports}
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            we["metadata"][k] = v;
        }
    }
    we
}

pub fn peer_authentication(ns: &str, mode: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "default", "namespace": ns},
           "spec": {"mtls": {"mode": mode}}})
}

pub fn authorization_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A `ProxyUpdate` as the control plane sends it.
pub fn update(
    workload: &str,
    version: u64,
    resources: Vec<Value>,
    bundles: &TrustBundleSet,
    rotation: u64,
) -> ProxyUpdate {
    let json = json!({"workload": workload, "resources": resources});
    let cfg = ProxyConfig::from_json(json.to_string().as_bytes()).unwrap();
    ProxyUpdate {
        version,
        config_json: cfg.to_json().unwrap(),
        bundles: bundles
            .iter()
            .map(|(td, b)| {
                (
                    td.as_str().to_owned(),
                    Certificates {
                        der: b.roots().iter().map(|r| r.to_vec()).collect(),
                    },
                )
            })
            .collect(),
        rotation,
    }
}

/// A TLS 1.3 client presenting `client` (or no certificate), trusting `bundles`, accepting
/// any server identity that verifies.
pub fn client_tls(
    client: Option<&Identity>,
    bundles: &TrustBundleSet,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(bundles.clone()),
        Allowed::Any,
    ));
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client {
        Some(id) => {
            let shared = Shared::new("test/client");
            shared.set_identity(clone_identity(id));
            builder.with_client_cert_resolver(Arc::new(CurrentCert(shared)))
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub fn clone_identity(id: &Identity) -> Identity {
    Identity::new(
        id.id.clone(),
        id.chain.clone(),
        id.key.clone(),
        id.not_before,
        id.not_after,
        id.renewal_time,
        id.serial.clone(),
    )
    .unwrap()
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// What a client got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code, or `None` if the connection closed without a response.
    pub status: Option<u16>,
    /// The body (everything after the header block).
    pub body: String,
    /// Every byte received, as text.
    pub raw: String,
}

/// Writes `request` (raw bytes) and reads until the server closes, or 5 s pass.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> Reply {
    let _ = s.write_all(request).await;
    let _ = s.flush().await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    parse_reply(&buf)
}

pub fn parse_reply(buf: &[u8]) -> Reply {
    let raw = String::from_utf8_lossy(buf).into_owned();
    let status = raw
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Reply { status, body, raw }
}

pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: orders.prod.svc:8080\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// `GET path` over mTLS (or plain TLS without a client certificate).
pub async fn tls_get(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str) -> Reply {
    match tls_connect(addr, cfg).await {
        Ok(s) => exchange(s, &get_request(path)).await,
        Err(e) => Reply {
            status: None,
            body: String::new(),
            raw: format!("handshake failed: {e}"),
        },
    }
}

/// `GET path` in plaintext.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    let s = TcpStream::connect(addr).await.unwrap();
    exchange(s, &get_request(path)).await
}

/// A TCP echo server (the app of a TCP port).
pub async fn echo_app(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

/// A server-first TCP app: greets, then echoes.
pub async fn banner_app(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(b"220 banner\r\n").await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

/// One proxy's inbound side serving one port, the app behind it, no control plane.
pub struct Harness {
    pub ca: TestCa,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    /// The proxy's inbound address.
    pub addr: SocketAddr,
    /// The workload port (same number on the app address).
    pub port: u16,
    pub app_ip: IpAddr,
    pub stop: watch::Sender<bool>,
}

impl Harness {
    /// Starts inbound on `proxy_ip` (an ephemeral port, used as the WorkloadEntry port named
    /// `port_name`) with the demo app (HTTP), a greeting server (a name with `banner`) or an
    /// echo server (TCP) on `app_ip`. `policies`
    /// get the port number and return the other resources.
    pub async fn start(
        proxy_ip: [u8; 4],
        app_ip: [u8; 4],
        port_name: &str,
        policies: impl FnOnce(u16) -> Vec<Value>,
    ) -> Self {
        let name = port_name.to_owned();
        Self::start_with(
            proxy_ip,
            app_ip,
            port_name,
            move |port, proxy_ip, app_ip| {
                let mut resources = vec![workload_entry(
                    "prod",
                    "orders",
                    proxy_ip,
                    "orders",
                    &[(&name, port)],
                    json!({"annotations": {"trustmesh.io/app-address": app_ip.to_string()}}),
                )];
                resources.extend(policies(port));
                resources
            },
        )
        .await
    }

    /// As [`Harness::start`], but `resources` (given the port, the proxy and the app address)
    /// return every resource, the WorkloadEntry `prod/orders` included.
    pub async fn start_with(
        proxy_ip: [u8; 4],
        app_ip: [u8; 4],
        port_name: &str,
        resources: impl FnOnce(u16, IpAddr, IpAddr) -> Vec<Value>,
    ) -> Self {
        let ca = TestCa::new(TD);
        let (proxy_ip, app_ip) = (ip(proxy_ip), ip(app_ip));
        let listener = TcpListener::bind(SocketAddr::new(proxy_ip, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stop_rx) = watch::channel(false);
        let app = SocketAddr::new(app_ip, port);
        if port_name.starts_with("http") {
            let l = TcpListener::bind(app).await.unwrap();
            tokio::spawn(trustmesh_proxy::demo_app::serve(
                l,
                WORKLOAD.to_owned(),
                stop_rx.clone(),
            ));
        } else if port_name.contains("banner") {
            banner_app(app).await;
        } else {
            echo_app(app).await;
        }
        let shared = Shared::new(WORKLOAD);
        shared.set_identity(ca.identity("prod", "orders"));
        let resources = resources(port, proxy_ip, app_ip);
        let h = Self {
            shared: shared.clone(),
            metrics: Arc::new(Metrics::default()),
            addr: SocketAddr::new(proxy_ip, port),
            port,
            app_ip,
            stop,
            ca,
        };
        h.configure(1, resources);
        let inbound = Arc::new(Inbound::new(shared, h.metrics.clone(), None));
        tokio::spawn(inbound.serve(listener, port, stop_rx));
        h
    }

    /// Installs a new config, as a `ProxyUpdate` would.
    pub fn configure(&self, version: u64, resources: Vec<Value>) {
        let up = update(WORKLOAD, version, resources, &self.ca.bundle(), 0);
        let view = compile_view(&self.shared, &up, &self.ca.bundle(), &Clock::system()).unwrap();
        self.shared.set_view(view);
    }

    /// A client TLS config for `ns/sa` of the mesh's CA.
    pub fn client(&self, ns: &str, sa: &str) -> Arc<ClientConfig> {
        client_tls(
            Some(&self.ca.identity(ns, sa)),
            &self.ca.bundle(),
            &[b"http/1.1"],
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------
// A fake control plane: `Ca.Sign` and `Discovery.Stream` over TLS 1.3, authenticating the
// proxy by join token (bootstrap) or by its SVID, exactly as docs/mesh-runtime.md says.
// ---------------------------------------------------------------------------------------

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use rustls::ServerConfig;
use tokio::io::ReadBuf;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use trustmesh_api::mesh::ca_server::{Ca as CaService, CaServer};
use trustmesh_api::mesh::discovery_server::{Discovery as DiscoveryService, DiscoveryServer};
use trustmesh_api::mesh::{SignRequest, SignResponse, StreamRequest};
use trustmesh_pki::SpiffeClientVerifier;
use trustmesh_proxy::control::{Dialer, Transport};

/// A TLS connection that tells tonic who the client is.
struct TlsConn(tokio_rustls::server::TlsStream<Box<dyn Transport>>);

/// The verified client SPIFFE ID of a connection (request extension).
#[derive(Debug, Clone)]
pub struct PeerId(pub Option<SpiffeId>);

impl Connected for TlsConn {
    type ConnectInfo = PeerId;
    fn connect_info(&self) -> PeerId {
        PeerId(trustmesh_pki::peer_spiffe_id(self.0.get_ref().1))
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One `Ca.Sign` call as the fake control plane saw it.
#[derive(Debug, Clone)]
pub struct SignCall {
    /// When (the fake's clock).
    pub at: SystemTime,
    /// The client certificate's identity, if one was presented.
    pub peer: Option<SpiffeId>,
    /// Whether a bearer token came with it.
    pub token: bool,
    /// What was answered: the new serial, or the refusal.
    pub result: Result<String, tonic::Code>,
}

/// What the fake control plane knows and does.
pub struct FakeState {
    pub ca: Arc<TestCa>,
    pub clock: Clock,
    pub lifetime: Duration,
    /// The workload key and identity it signs for.
    pub workload: String,
    pub identity: SpiffeId,
    /// The one join token; consumed on first use.
    pub token: Mutex<Option<String>>,
    /// When set, every `Ca.Sign` fails with `Unavailable`.
    pub fail_sign: AtomicBool,
    pub signs: Mutex<Vec<SignCall>>,
    /// The update every stream sends, and sends again on change.
    pub updates: watch::Sender<Option<ProxyUpdate>>,
    /// Set when the control plane is killed: streams end, the server stops.
    pub killed: watch::Sender<bool>,
}

impl FakeState {
    pub fn signs(&self) -> Vec<SignCall> {
        self.signs.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct FakeCa(Arc<FakeState>);

#[tonic::async_trait]
impl CaService for FakeCa {
    async fn sign(
        &self,
        request: tonic::Request<SignRequest>,
    ) -> Result<tonic::Response<SignResponse>, tonic::Status> {
        let s = &self.0;
        let peer = request
            .extensions()
            .get::<PeerId>()
            .and_then(|p| p.0.clone());
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let req = request.into_inner();
        let verdict = (|| {
            if s.fail_sign.load(Ordering::SeqCst) {
                return Err(tonic::Status::unavailable("CA is down (test)"));
            }
            if req.workload != s.workload {
                return Err(tonic::Status::permission_denied("wrong workload"));
            }
            match (&peer, &bearer) {
                (Some(id), _) if *id == s.identity => {}
                (Some(id), _) => {
                    return Err(tonic::Status::permission_denied(format!(
                        "{id} is not {}",
                        s.identity
                    )));
                }
                (None, Some(t)) => {
                    let mut token = s.token.lock().unwrap();
                    if token.as_deref() != Some(t.as_str()) {
                        return Err(tonic::Status::permission_denied(
                            "unknown or used join token",
                        ));
                    }
                    *token = None;
                }
                (None, None) => return Err(tonic::Status::unauthenticated("no credential")),
            }
            let svid =
                s.ca.ca
                    .sign_csr(&req.csr_der, &s.identity, s.lifetime, s.clock.now())
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            Ok(svid)
        })();
        s.signs.lock().unwrap().push(SignCall {
            at: s.clock.now(),
            peer,
            token: bearer.is_some(),
            result: verdict
                .as_ref()
                .map(|v| v.serial.clone())
                .map_err(tonic::Status::code),
        });
        let svid = verdict?;
        Ok(tonic::Response::new(SignResponse {
            cert_chain_der: svid.chain_der.iter().map(|c| c.to_vec()).collect(),
            bundles: [(
                s.ca.td.as_str().to_owned(),
                Certificates {
                    der: vec![s.ca.ca.root_der().to_vec()],
                },
            )]
            .into_iter()
            .collect(),
        }))
    }
}

#[derive(Clone)]
struct FakeDiscovery(Arc<FakeState>);

type UpdateStream = Pin<Box<dyn futures::Stream<Item = Result<ProxyUpdate, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryService for FakeDiscovery {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: tonic::Request<StreamRequest>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        let peer = request
            .extensions()
            .get::<PeerId>()
            .and_then(|p| p.0.clone());
        if peer.as_ref() != Some(&self.0.identity) {
            return Err(tonic::Status::permission_denied(format!("peer {peer:?}")));
        }
        let rx = self.0.updates.subscribe();
        let killed = self.0.killed.subscribe();
        let stream = futures::stream::unfold(
            (rx, killed, true),
            |(mut rx, mut killed, first)| async move {
                loop {
                    if !first || rx.borrow().is_none() {
                        tokio::select! {
                            r = rx.changed() => if r.is_err() { return None },
                            _ = killed.wait_for(|k| *k) => return None,
                        }
                    }
                    let current = rx.borrow_and_update().clone();
                    if let Some(u) = current {
                        return Some((Ok(u), (rx, killed, false)));
                    }
                }
            },
        );
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// A running fake control plane.
pub struct FakeCp {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    raw: tokio::sync::mpsc::Sender<Box<dyn Transport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeCp {
    /// Starts on `bind` (port 0: any) for `workload` (`ns/name`, service account `sa`),
    /// signing `lifetime`-long SVIDs at `clock`, accepting join token `token` once.
    pub async fn start(
        bind: SocketAddr,
        ca: Arc<TestCa>,
        workload: &str,
        sa: &str,
        lifetime: Duration,
        clock: Clock,
        token: &str,
    ) -> Self {
        let ns = workload.split_once('/').unwrap().0;
        let identity = ca.id(ns, sa);
        let cp_id = ca.id("istio-system", "trustmesh-control-plane");
        let cp = ca.identity_at(
            &cp_id,
            Duration::from_secs(90 * 24 * 3600),
            SystemTime::now(),
        );
        let verifier = Arc::new(SpiffeClientVerifier::optional(Arc::new(ca.bundle())));
        let mut tls = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(cp.chain.clone(), cp.key.private_key_der())
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        tls.time_provider = Arc::new(clock.clone());
        let state = Arc::new(FakeState {
            ca,
            clock,
            lifetime,
            workload: workload.to_owned(),
            identity,
            token: Mutex::new(Some(token.to_owned())),
            fail_sign: AtomicBool::new(false),
            signs: Mutex::new(Vec::new()),
            updates: watch::channel(None).0,
            killed: watch::channel(false).0,
        });
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conns_tx, conns_rx) =
            tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(16);
        let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Box<dyn Transport>>(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let tcp_tx = raw_tx.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                if tcp_tx.send(Box::new(tcp)).await.is_err() {
                    return;
                }
            }
        });
        let handshakes = tokio::spawn(async move {
            while let Some(io) = raw_rx.recv().await {
                let acceptor = acceptor.clone();
                let tx = conns_tx.clone();
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(io).await {
                        let _ = tx.send(Ok(TlsConn(s))).await;
                    }
                });
            }
        });
        let svc_state = state.clone();
        let mut killed = state.killed.subscribe();
        let serve = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(CaServer::new(FakeCa(svc_state.clone())))
                .add_service(DiscoveryServer::new(FakeDiscovery(svc_state)))
                .serve_with_incoming_shutdown(ReceiverStream::new(conns_rx), async move {
                    let _ = killed.wait_for(|k| *k).await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            state,
            raw: raw_tx,
            tasks: vec![accept, handshakes, serve],
        }
    }

    /// Pushes a new update to every stream.
    pub fn push(&self, update: ProxyUpdate) {
        self.state.updates.send_replace(Some(update));
    }

    /// In-memory connections to this control plane (for tokio's paused clock).
    pub fn dialer(&self) -> Dialer {
        let raw = self.raw.clone();
        Dialer::from_fn(move || {
            let raw = raw.clone();
            Box::pin(async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                raw.send(Box::new(server))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                Ok(Box::new(client) as Box<dyn Transport>)
            })
        })
    }

    /// Stops at once, like a killed process: no new connection, open streams end.
    pub fn kill(&self) {
        self.state.killed.send_replace(true);
        // The listener goes with the accept task, pipes with the handshake task; the server
        // drains and ends.
        self.tasks[0].abort();
        self.tasks[1].abort();
    }
}

impl Drop for FakeCp {
    fn drop(&mut self) {
        self.kill();
    }
}
