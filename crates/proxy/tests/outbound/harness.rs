//! Shared by the outbound integration tests: a test CA and the client proxy's `Shared`,
//! config builders, a running outbound listener, fake peer proxies (rustls TLS 1.3 servers
//! with SVIDs, verifying client SVIDs, serving HTTP/2 or HTTP/1.1 with hyper, or echoing
//! bytes) that count what they see, and the app's HTTP/1.1 client.
// Each test crate uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use trustmesh_core::authz::{InboundPolicy, PolicySet};
use trustmesh_core::snapshot::Snapshot;
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::{
    Ca, IssuedSvid, KeyPair, SpiffeClientVerifier, TrustBundleSet, peer_spiffe_id,
};
use trustmesh_proxy::metrics::Metrics;
use trustmesh_proxy::outbound;
use trustmesh_proxy::state::{Identity, MeshView, Shared};

pub const ORDERS: &str = "orders.production.svc.cluster.local";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

// ---------------------------------------------------------------------------------------
// The mesh: a CA, the client proxy's Shared, config.

pub struct Mesh {
    pub ca: Ca,
    pub bundles: Arc<TrustBundleSet>,
}

impl Mesh {
    pub fn new() -> Self {
        let td = TrustDomain::new("cluster.local").unwrap();
        let ca = Ca::generate(&td, SystemTime::now()).unwrap();
        let mut bundles = TrustBundleSet::new();
        bundles.add_pem(&td, &ca.root_pem()).unwrap();
        Self {
            ca,
            bundles: Arc::new(bundles),
        }
    }

    pub fn svid(&self, id: &str) -> (IssuedSvid, KeyPair) {
        self.ca
            .issue_svid(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap()
    }

    pub fn identity(&self, id: &str) -> (Identity, CertificateDer<'static>) {
        let (svid, key) = self.svid(id);
        let leaf = svid.cert_der.clone();
        let identity = Identity::new(
            svid.id,
            svid.chain_der,
            Arc::new(key),
            svid.not_before,
            svid.not_after,
            svid.not_after,
            svid.serial,
        )
        .unwrap();
        (identity, leaf)
    }

    /// The client proxy's shared state for `resources` (plus the client's WorkloadEntry).
    pub fn shared(&self, mut resources: Vec<Value>) -> Arc<Shared> {
        let shared = Shared::new("default/client");
        shared.set_identity(self.identity(CLIENT_ID).0);
        resources.push(json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"address": "127.0.8.1", "serviceAccount": "client", "labels": {"app": "client"}}}));
        self.install(&shared, resources, 1);
        shared
    }

    pub fn install(&self, shared: &Arc<Shared>, resources: Vec<Value>, version: u64) {
        let cfg = json!({"workload": "default/client", "resources": resources});
        let cfg = trustmesh_api::ProxyConfig::from_json(cfg.to_string().as_bytes()).unwrap();
        let (snapshot, _) = Snapshot::build(cfg.into_sources()).unwrap_or_else(|f| panic!("{f:?}"));
        let workload = snapshot.workload("default", "client").unwrap().clone();
        let policies = PolicySet::from_snapshot(&snapshot);
        let inbound = InboundPolicy::from_snapshot(
            &snapshot,
            &policies,
            &workload.namespace,
            &workload.labels,
        );
        let view = MeshView {
            version,
            snapshot: Arc::new(snapshot),
            workload,
            policies: Arc::new(policies),
            inbound: Arc::new(inbound),
            bundles: self.bundles.clone(),
            server_tls: shared.server_tls(self.bundles.clone()).unwrap(),
        };
        shared.set_view(view);
    }
}

/// A loopback address of its own: WorkloadEntry addresses are unique in a mesh.
pub fn fresh_ip() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.0.{}.{}", 9 + n / 250, n % 250 + 1)
}

pub async fn bind_fresh() -> TcpListener {
    TcpListener::bind(format!("{}:0", fresh_ip()))
        .await
        .unwrap()
}

pub fn we(ns: &str, name: &str, sa: &str, app: &str, addr: SocketAddr) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"address": addr.ip().to_string(), "serviceAccount": sa, "labels": {"app": app},
                 "ports": {"http": addr.port(), "tcp": addr.port()}}})
}

pub fn se(ns: &str, name: &str, host: &str, app: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": app}},
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"},
                      {"number": 9000, "name": "tcp", "protocol": "TCP"}]}})
}

pub fn dr(host: &str, traffic_policy: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "orders", "namespace": "production"},
        "spec": {"host": host, "trafficPolicy": traffic_policy}})
}

/// The usual config: `orders` served by one workload (sa `orders`) at `addr`.
pub fn orders(addr: SocketAddr, extra: Vec<Value>) -> Vec<Value> {
    let mut v = vec![
        we("production", "orders", "orders", "orders", addr),
        se("production", "orders", ORDERS, "orders"),
    ];
    v.extend(extra);
    v
}

/// A running outbound listener; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    /// What it counted.
    pub metrics: Arc<Metrics>,
    _stop: watch::Sender<bool>,
}

pub async fn start(shared: Arc<Shared>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(outbound::serve(listener, shared, metrics.clone(), rx));
    Proxy {
        addr,
        metrics,
        _stop: tx,
    }
}

// ---------------------------------------------------------------------------------------
// Fake peers.

#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicUsize,
    pub handshakes: AtomicUsize,
    pub requests: AtomicUsize,
    pub closed: AtomicUsize,
    /// Leaf certificate the client presented, per request.
    pub client_leaves: Mutex<Vec<Vec<u8>>>,
}

pub struct Peer {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    /// Requests to `/slow` wait for a permit here.
    pub gate: Arc<Semaphore>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Serve {
    /// TLS 1.3 with a client SVID required, HTTP/1.1 or HTTP/2 by ALPN.
    Mtls,
    /// Plaintext HTTP.
    Plain,
    /// TLS 1.3, client SVID required, then an echo of raw bytes (a TCP service behind a proxy).
    MtlsEcho,
}

pub fn peer_tls(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
    bundles: &Arc<TrustBundleSet>,
) -> Arc<ServerConfig> {
    let mut cfg = trustmesh_pki::server_config(
        chain,
        key.private_key_der(),
        Arc::new(SpiffeClientVerifier::new(bundles.clone())),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub async fn peer(mesh: &Mesh, id: &str, serve: Serve) -> Peer {
    let (svid, key) = mesh.svid(id);
    let tls = peer_tls(svid.chain_der, &key, &mesh.bundles);
    peer_with(Some(tls), serve).await
}

pub async fn plain_peer() -> Peer {
    peer_with(None, Serve::Plain).await
}

pub async fn peer_with(tls: Option<Arc<ServerConfig>>, serve: Serve) -> Peer {
    let listener = bind_fresh().await;
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (counters.clone(), gate.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let (c, g, tls) = (c.clone(), g.clone(), tls.clone());
            tokio::spawn(async move {
                let Some(tls) = tls else {
                    serve_http(TokioIo::new(tcp), "none".into(), None, c.clone(), g).await;
                    c.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let Ok(mut s) = TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                c.handshakes.fetch_add(1, Ordering::SeqCst);
                let id = peer_spiffe_id(s.get_ref().1).map_or("none".to_owned(), |i| i.to_string());
                let leaf = s.get_ref().1.peer_certificates().map(|c| c[0].to_vec());
                if serve == Serve::MtlsEcho {
                    s.write_all(format!("hello {id}\n").as_bytes())
                        .await
                        .unwrap();
                    let (mut r, mut w) = tokio::io::split(s);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                } else {
                    serve_http(TokioIo::new(s), id, leaf, c.clone(), g).await;
                }
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Peer {
        addr,
        counters,
        gate,
    }
}

pub async fn serve_http<I>(
    io: I,
    id: String,
    leaf: Option<Vec<u8>>,
    c: Arc<Counters>,
    gate: Arc<Semaphore>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn_no = c.accepted.load(Ordering::SeqCst);
    let svc = service_fn(move |req: Request<Incoming>| {
        let (id, leaf, c, gate) = (id.clone(), leaf.clone(), c.clone(), gate.clone());
        async move {
            c.requests.fetch_add(1, Ordering::SeqCst);
            if let Some(l) = leaf {
                c.client_leaves.lock().unwrap().push(l);
            }
            if req.uri().path() == "/slow" {
                gate.acquire().await.unwrap().forget();
            }
            if req.method() == http::Method::POST {
                let data = req.into_body().collect().await.unwrap().to_bytes();
                let sum: u64 = data.iter().map(|b| u64::from(*b)).sum();
                let body = format!("received {} bytes, sum {sum}", data.len());
                return Ok(Response::new(Full::new(Bytes::from(body))));
            }
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_owned())
                })
                .unwrap_or_default();
            let body = format!(
                "peer={id} authority={authority} target={} version={:?} conn={conn_no}",
                req.uri(),
                req.version()
            );
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

// ---------------------------------------------------------------------------------------
// The app: an HTTP/1.1 client of the outbound listener.

pub async fn app(proxy: &Proxy, method: &str, uri: &str) -> (StatusCode, http::HeaderMap, String) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "ignored.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub async fn post(proxy: &Proxy, uri: &str, data: Vec<u8>) -> (StatusCode, String) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .body(Full::new(Bytes::from(data)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(proxy: &Proxy, uri: &str) -> (StatusCode, String) {
    let (s, _, b) = app(proxy, "GET", uri).await;
    (s, b)
}

pub fn orders_url(path: &str) -> String {
    format!("http://{ORDERS}:8080{path}")
}

pub async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5s");
}
