//! `trafficPolicy.connectionPool.http.h2UpgradePolicy` decides how the client proxy carries
//! HTTP to the peer proxy (docs/mesh-runtime.md, "Outbound"): unset, DEFAULT or UPGRADE →
//! ALPN `h2`, one multiplexed mTLS connection per peer; DO_NOT_UPGRADE → ALPN `http/1.1`,
//! pooled keep-alive connections carrying one request at a time each.
//!
//! First as a user sees it: two whole proxies from `app::build`, each fed by a fake control
//! plane with certificates of one CA, an app behind the server proxy that holds `/slow`
//! requests until released, and the app's requests going through the client proxy's
//! outbound listener. What is observed is what an operator could: the server proxy's
//! `trustmesh_tls_handshakes_total{direction="inbound",result="success"}` and
//! `istio_requests_total` on its metrics port, and the ESTABLISHED TCP connections to its
//! inbound address in `/proc/net/tcp`. Then with fake peers (the outbound harness), which
//! see the negotiated ALPN and the HTTP version on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

#[path = "outbound/harness.rs"]
mod harness;
mod mesh_support;
mod scrape;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_support::{FakeCp, TD, TestCa, ip, peer_authentication, update, workload_entry};
use scrape::Scrape;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use trustmesh_pki::peer_spiffe_id;
use trustmesh_proxy::app::{self, Ports, ProxyOptions};
use trustmesh_proxy::clock::Clock;

const ORDERS_HOST: &str = "orders.prod.svc.cluster.local";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
/// Concurrent requests per round.
const N: usize = 6;
/// Larger than HTTP/2's initial 64 KiB flow-control window, and than any one read.
const BODY_LEN: u32 = 300_000;

// ---------------------------------------------------------------------------------------
// Two proxies from `app::build`.

/// The app behind the server proxy. `/slow/*` waits for a permit of `gate`; `POST` echoes
/// its body; anything else answers at once. Answers name the path and the client identity
/// the server proxy verified (`URI=` of the `x-forwarded-client-cert` it adds).
struct App {
    gate: Semaphore,
    /// `/slow` requests waiting for the gate now.
    waiting: AtomicUsize,
}

/// Serves the app on `addr` until the returned task is aborted.
async fn start_app(addr: SocketAddr, app: Arc<App>) -> JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(answer(&app, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

async fn answer(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let client = req
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').find_map(|p| p.strip_prefix("URI=")))
        .unwrap_or("nobody")
        .to_owned();
    if req.method() == http::Method::POST {
        let data = req.into_body().collect().await.unwrap().to_bytes();
        return Response::new(Full::new(data));
    }
    if path.starts_with("/slow/") {
        app.waiting.fetch_add(1, Ordering::SeqCst);
        app.gate.acquire().await.unwrap().forget();
        app.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    Response::new(Full::new(Bytes::from(format!("{path} from {client}"))))
}

/// The mesh both proxies see: `prod/orders` behind the server proxy (STRICT mTLS), serving
/// `port` as `http` of ServiceEntry `orders.prod.svc.cluster.local:8080`; `default/client`
/// behind the client proxy; with `policy`, a DestinationRule for orders setting
/// `connectionPool.http.h2UpgradePolicy` to it.
fn mesh(ips: &Ips, port: u16, policy: Option<&str>) -> Vec<Value> {
    let mut r = vec![
        workload_entry(
            "prod",
            "orders",
            ips.server,
            "orders",
            &[("http", port)],
            json!({"annotations": {"trustmesh.io/app-address": ips.app.to_string()}}),
        ),
        workload_entry("default", "client", ips.client, "client", &[], json!({})),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": "orders", "namespace": "prod"},
               "spec": {"hosts": [ORDERS_HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
                        "workloadSelector": {"labels": {"app": "orders"}},
                        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}}),
        peer_authentication("prod", "STRICT"),
    ];
    if let Some(p) = policy {
        r.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders", "namespace": "prod"},
            "spec": {"host": ORDERS_HOST,
                     "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": p}}}}}),
        );
    }
    r
}

/// One test's addresses (each test its own, as tests run in parallel).
struct Ips {
    client: IpAddr,
    server: IpAddr,
    app: IpAddr,
    client_cp: IpAddr,
    server_cp: IpAddr,
}

impl Ips {
    fn new(n: u8) -> Self {
        let at = |last| ip([127, 0, 100 + n, last]);
        Self {
            client: at(1),
            server: at(2),
            app: at(3),
            client_cp: at(4),
            server_cp: at(5),
        }
    }
}

/// Both proxies, their control planes and the app.
struct Pair {
    ca: Arc<TestCa>,
    ips: Ips,
    port: u16,
    client_cp: FakeCp,
    _server_cp: FakeCp,
    client: app::Running,
    server: app::Running,
    /// The server proxy's inbound address (what the client proxy connects to).
    inbound: SocketAddr,
    app: Arc<App>,
    app_task: JoinHandle<()>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.app_task.abort();
    }
}

async fn proxy(ca: &Arc<TestCa>, cp: &FakeCp, workload: &str, token: &str) -> app::Running {
    let mut options = ProxyOptions::new(workload, cp.addr, ca.bundle());
    options.join_token = Some(token.to_owned());
    options.ports = Ports {
        admin: 0,
        health: 0,
        metrics: 0,
        outbound: 0,
    };
    let p = tokio::time::timeout(Duration::from_secs(20), app::build(options))
        .await
        .expect("the proxy starts")
        .unwrap();
    assert!(p.ready(Duration::from_secs(10)).await, "{workload} ready");
    p
}

impl Pair {
    /// Test `n`'s proxies, the client proxy's first config carrying `policy`.
    async fn start(n: u8, policy: Option<&str>) -> Self {
        let ips = Ips::new(n);
        let ca = Arc::new(TestCa::new(TD));
        let port = {
            let l = std::net::TcpListener::bind(SocketAddr::new(ips.server, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let app = Arc::new(App {
            gate: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
        });
        let app_task = start_app(SocketAddr::new(ips.app, port), app.clone()).await;
        let cp = |bind, workload, sa, token| {
            FakeCp::start(
                SocketAddr::new(bind, 0),
                ca.clone(),
                workload,
                sa,
                Duration::from_secs(24 * 3600),
                Clock::system(),
                token,
            )
        };
        let server_cp = cp(ips.server_cp, "prod/orders", "orders", "server-token").await;
        server_cp.push(update(
            "prod/orders",
            1,
            mesh(&ips, port, None),
            &ca.bundle(),
            0,
        ));
        let client_cp = cp(ips.client_cp, "default/client", "client", "client-token").await;
        client_cp.push(update(
            "default/client",
            1,
            mesh(&ips, port, policy),
            &ca.bundle(),
            0,
        ));
        let server = proxy(&ca, &server_cp, "prod/orders", "server-token").await;
        let inbound = server
            .inbound_addr(port, Duration::from_secs(5))
            .await
            .expect("the server proxy listens on the workload port");
        let client = proxy(&ca, &client_cp, "default/client", "client-token").await;
        assert_eq!(client.listen_ip, ips.client);
        Self {
            ca,
            ips,
            port,
            client_cp,
            _server_cp: server_cp,
            client,
            server,
            inbound,
            app,
            app_task,
        }
    }

    /// Pushes config `version` with `policy` to the client proxy and waits until it is in
    /// force there.
    async fn push_policy(&self, version: u64, policy: Option<&str>) {
        self.client_cp.push(update(
            "default/client",
            version,
            mesh(&self.ips, self.port, policy),
            &self.ca.bundle(),
            0,
        ));
        let mut changes = self.client.shared.subscribe();
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.client.shared.view().map(|v| v.version) != Some(version) {
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("config {version} never reached the client proxy"));
    }

    /// What the server proxy's metrics port says.
    async fn server_metrics(&self) -> Scrape {
        let addr = self.server.metrics_addr;
        let s = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /stats/prometheus HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let reply = mesh_support::exchange(s, request.as_bytes()).await;
        assert_eq!(reply.status, Some(200), "{}", reply.raw);
        Scrape::parse(&reply.body)
    }

    /// `trustmesh_tls_handshakes_total{direction="inbound",result="success"}` of the server
    /// proxy: the mTLS connections the client proxy opened to it.
    async fn handshakes(&self) -> f64 {
        self.server_metrics()
            .await
            .get(
                "trustmesh_tls_handshakes_total",
                &[("direction", "inbound"), ("result", "success")],
            )
            .unwrap()
    }

    /// Waits until `istio_requests_total{reporter="destination",response_code="200"}` (all
    /// series) reads `want` (a request is counted when its response body ends, which may be
    /// just after the client read it).
    async fn served(&self, want: usize) {
        let mut got = 0.0;
        for _ in 0..100 {
            got = self.server_metrics().await.sum(
                "istio_requests_total",
                &[("reporter", "destination"), ("response_code", "200")],
            );
            if got == want as f64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server proxy counted {got} requests answered 200, not {want}");
    }

    /// The client ends of the ESTABLISHED TCP connections to the server proxy's inbound
    /// address, from the kernel's table.
    fn connections(&self) -> BTreeSet<String> {
        established_to(self.inbound)
    }

    /// The app's `method path` through the client proxy, on a connection of its own.
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        through(
            self.client.outbound,
            method,
            &format!("http://{ORDERS_HOST}:8080{path}"),
            body,
        )
        .await
    }

    /// `n` concurrent `GET /slow/<tag>/<i>`, all held by the app until [`Held::release`].
    async fn hold(self: &Arc<Self>, n: usize, tag: &str) -> Held {
        let before = self.app.waiting.load(Ordering::SeqCst);
        let tasks = (0..n)
            .map(|i| {
                let p = self.clone();
                let path = format!("/slow/{tag}/{i}");
                tokio::spawn(async move {
                    let (code, body) = p.request("GET", &path, vec![]).await;
                    (path, code, body)
                })
            })
            .collect();
        wait_for(&format!("{n} requests {tag} at the app"), || {
            self.app.waiting.load(Ordering::SeqCst) == before + n
        })
        .await;
        Held { tasks }
    }

    /// Several sequential requests, each from a new app connection: GETs, and a POST whose
    /// body comes back intact.
    async fn sequential(&self, tag: &str) {
        for i in 0..4 {
            let path = format!("/{tag}/{i}");
            let (code, body) = self.request("GET", &path, vec![]).await;
            assert_eq!(code, StatusCode::OK, "{body:?}");
            assert_eq!(body, format!("{path} from {CLIENT}"));
        }
        let data: Vec<u8> = (0..BODY_LEN).map(|i| (i % 251) as u8).collect();
        let (code, body) = self
            .request("POST", &format!("/{tag}/post"), data.clone())
            .await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body == data,
            "the echoed body differs ({} bytes)",
            body.len()
        );
    }
}

/// Requests held by the app.
struct Held {
    tasks: Vec<JoinHandle<(String, StatusCode, Bytes)>>,
}

impl Held {
    /// Lets them go; each must answer 200 with its own path and the client's identity.
    async fn release(self, app: &App) {
        app.gate.add_permits(self.tasks.len());
        for t in self.tasks {
            let (path, code, body) = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("a released request answers")
                .unwrap();
            assert_eq!(code, StatusCode::OK, "{path}: {body:?}");
            assert_eq!(body, format!("{path} from {CLIENT}"));
        }
    }
}

/// The remote ends of the ESTABLISHED IPv4 TCP connections whose local end is `local`
/// (`/proc/net/tcp`: addresses as the kernel's `%08X:%04X` of the raw IPv4 word and port).
fn established_to(local: SocketAddr) -> BTreeSet<String> {
    let SocketAddr::V4(local) = local else {
        panic!("{local} is not IPv4");
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(local.ip().octets()),
        local.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"01")).then(|| f[2].to_owned())
        })
        .collect()
}

/// An HTTP/1.1 request from the app to its proxy's outbound listener: (status, body).
async fn through(proxy: SocketAddr, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached within 10 s: {what}");
}

#[tokio::test]
async fn without_a_policy_requests_share_one_mtls_connection_between_the_proxies() {
    let pair = Arc::new(Pair::start(0, None).await);
    assert_eq!(pair.handshakes().await, 0.0);

    // N slow requests at once: all at the app together, over a single connection.
    let held = pair.hold(N, "concurrent").await;
    assert_eq!(pair.connections().len(), 1, "{:?}", pair.connections());
    assert_eq!(pair.handshakes().await, 1.0);
    held.release(&pair.app).await;

    // Then one after another, a large body included: still that connection.
    pair.sequential("sequential").await;
    assert_eq!(pair.connections().len(), 1, "{:?}", pair.connections());
    assert_eq!(pair.handshakes().await, 1.0);
    pair.served(N + 5).await;
}

#[tokio::test]
async fn do_not_upgrade_carries_one_request_at_a_time_per_keep_alive_connection() {
    let pair = Arc::new(Pair::start(1, Some("DO_NOT_UPGRADE")).await);

    // One after another: one keep-alive connection, one handshake.
    pair.sequential("first").await;
    let first = pair.connections();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(pair.handshakes().await, 1.0);

    // N at once: N connections, the idle one reused and N - 1 new.
    let held = pair.hold(N, "concurrent").await;
    let during = pair.connections();
    assert_eq!(during.len(), N, "{during:?}");
    assert!(during.is_superset(&first), "{first:?} not in {during:?}");
    assert_eq!(pair.handshakes().await, N as f64);
    held.release(&pair.app).await;

    // They all stay pooled: another round at once and more sequential requests open none.
    pair.hold(N, "again").await.release(&pair.app).await;
    pair.sequential("after").await;
    assert_eq!(pair.connections(), during);
    assert_eq!(pair.handshakes().await, N as f64);
    pair.served(5 + N + N + 5).await;
}

#[tokio::test]
async fn a_pushed_policy_applies_to_new_connections_and_requests_in_flight_finish() {
    let pair = Arc::new(Pair::start(2, None).await);
    let mut handshakes = 0.0;
    // Each round: N requests held at once, counting the connections opened for them.
    // Every push flips the protocol, so each round starts on a pool of its own.
    let rounds: [(Option<&str>, usize); 5] = [
        (None, 1),
        (Some("DO_NOT_UPGRADE"), N),
        (Some("UPGRADE"), 1),
        (Some("DO_NOT_UPGRADE"), N),
        (Some("DEFAULT"), 1),
    ];
    let mut still_held = None;
    for (round, (policy, want)) in (1..).zip(rounds) {
        if round > 1 {
            pair.push_policy(round, policy).await;
        }
        let before = pair.connections();
        let held = pair.hold(N, &format!("v{round}")).await;
        let new: Vec<_> = pair.connections().difference(&before).cloned().collect();
        assert_eq!(new.len(), want, "{policy:?}: {new:?}");
        handshakes += want as f64;
        assert_eq!(pair.handshakes().await, handshakes, "{policy:?}");
        // The previous round's requests were held across this push: they finish now, 200
        // each, without a new connection (the next round counts handshakes exactly).
        if let Some(h) = still_held.replace(held) {
            h.release(&pair.app).await;
        }
    }
    still_held.unwrap().release(&pair.app).await;
    assert_eq!(pair.handshakes().await, handshakes);
    pair.served(5 * N).await;
}

// ---------------------------------------------------------------------------------------
// Fake peers: what the client proxy offers and speaks on the wire.

const ORDERS_ID: &str = "spiffe://cluster.local/ns/production/sa/orders";

/// A peer proxy stand-in offering `h2` and `http/1.1` (as the server proxy does) that
/// records the ALPN each handshake agreed on, and with `hold_handshakes` leaves every
/// accepted TCP connection waiting for a permit of `handshake_gate` before its handshake.
struct AlpnPeer {
    addr: SocketAddr,
    counters: Arc<harness::Counters>,
    alpn: Arc<Mutex<Vec<String>>>,
    handshake_gate: Arc<Semaphore>,
    /// `/slow` waits for a permit here.
    gate: Arc<Semaphore>,
}

async fn alpn_peer(mesh: &harness::Mesh, hold_handshakes: bool) -> AlpnPeer {
    let (svid, key) = mesh.svid(ORDERS_ID);
    let tls = harness::peer_tls(svid.chain_der, &key, &mesh.bundles);
    let listener = harness::bind_fresh().await;
    let peer = AlpnPeer {
        addr: listener.local_addr().unwrap(),
        counters: Arc::default(),
        alpn: Arc::default(),
        handshake_gate: Arc::new(Semaphore::new(0)),
        gate: Arc::new(Semaphore::new(0)),
    };
    let (c, alpn, hs_gate, gate) = (
        peer.counters.clone(),
        peer.alpn.clone(),
        peer.handshake_gate.clone(),
        peer.gate.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let (c, alpn, hs_gate, gate, tls) = (
                c.clone(),
                alpn.clone(),
                hs_gate.clone(),
                gate.clone(),
                tls.clone(),
            );
            tokio::spawn(async move {
                if hold_handshakes {
                    hs_gate.acquire().await.unwrap().forget();
                }
                let Ok(s) = TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                c.handshakes.fetch_add(1, Ordering::SeqCst);
                let session = s.get_ref().1;
                let agreed = session
                    .alpn_protocol()
                    .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
                alpn.lock().unwrap().push(agreed);
                let id = peer_spiffe_id(session).map_or("none".to_owned(), |i| i.to_string());
                let leaf = session.peer_certificates().map(|c| c[0].to_vec());
                harness::serve_http(TokioIo::new(s), id, leaf, c.clone(), gate).await;
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    peer
}

/// The client proxy (`default/client`) routing orders to `peer`, with `policy` set.
async fn client_to(
    mesh: &harness::Mesh,
    peer: SocketAddr,
    policy: Option<&str>,
    pool: Value,
) -> Arc<harness::Proxy> {
    let mut connection_pool = pool;
    if let Some(p) = policy {
        connection_pool["http"] = json!({"h2UpgradePolicy": p});
    }
    let rules = if connection_pool == json!({}) {
        vec![]
    } else {
        vec![harness::dr(
            harness::ORDERS,
            json!({"connectionPool": connection_pool}),
        )]
    };
    Arc::new(harness::start(mesh.shared(harness::orders(peer, rules))).await)
}

fn alpns(peer: &AlpnPeer) -> Vec<String> {
    peer.alpn.lock().unwrap().clone()
}

#[tokio::test]
async fn the_peer_is_offered_h2_unless_do_not_upgrade_then_http11() {
    for (policy, alpn, version) in [
        (None, "h2", "HTTP/2.0"),
        (Some("DEFAULT"), "h2", "HTTP/2.0"),
        (Some("UPGRADE"), "h2", "HTTP/2.0"),
        (Some("DO_NOT_UPGRADE"), "http/1.1", "HTTP/1.1"),
    ] {
        let mesh = harness::Mesh::new();
        let peer = alpn_peer(&mesh, false).await;
        let proxy = client_to(&mesh, peer.addr, policy, json!({})).await;
        for i in 0..3 {
            let (code, body) = harness::get(&proxy, &harness::orders_url(&format!("/{i}?q"))).await;
            assert_eq!(code, StatusCode::OK, "{policy:?}: {body}");
            // HTTP/2 carries the authority in `:authority`, HTTP/1.1 in `Host` with an
            // origin-form target; either way the peer sees the same request.
            let target = if alpn == "h2" {
                format!("http://{}:8080/{i}?q", harness::ORDERS)
            } else {
                format!("/{i}?q")
            };
            assert_eq!(
                body,
                format!(
                    "peer={CLIENT} authority={}:8080 target={target} version={version} conn=1",
                    harness::ORDERS
                ),
                "{policy:?}"
            );
        }
        // Sequential requests: one connection, one handshake, in either mode.
        assert_eq!(alpns(&peer), [alpn], "{policy:?}");
        assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn do_not_upgrade_connects_for_concurrent_requests_in_parallel() {
    // HTTP/1.1 connections carry one request at a time: N requests arriving together need
    // N connections, and none of them should wait for another's handshake.
    let mesh = harness::Mesh::new();
    let peer = alpn_peer(&mesh, true).await;
    let proxy = client_to(&mesh, peer.addr, Some("DO_NOT_UPGRADE"), json!({})).await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(
                async move { harness::get(&p, &harness::orders_url(&format!("/{i}"))).await },
            )
        })
        .collect();
    wait_for("N TCP connects before any handshake completes", || {
        peer.counters.accepted.load(Ordering::SeqCst) == N
    })
    .await;
    assert_eq!(peer.counters.handshakes.load(Ordering::SeqCst), 0);
    peer.handshake_gate.add_permits(N);
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.contains("version=HTTP/1.1"), "{body}");
    }
    assert_eq!(alpns(&peer), vec!["http/1.1"; N]);

    // By default the same burst waits for, and shares, one connect.
    let peer = alpn_peer(&mesh, true).await;
    let proxy = client_to(&mesh, peer.addr, None, json!({})).await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(
                async move { harness::get(&p, &harness::orders_url(&format!("/{i}"))).await },
            )
        })
        .collect();
    wait_for("one TCP connect", || {
        peer.counters.accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    peer.handshake_gate.add_permits(N);
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.contains("version=HTTP/2.0"), "{body}");
    }
    assert_eq!(alpns(&peer), ["h2"]);
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn do_not_upgrade_under_max_connections_queues_requests_for_a_free_connection() {
    // `tcp.maxConnections: 2` with HTTP/1.1: two requests in flight, the others wait for one
    // of the two connections to finish its request, then reuse it.
    let mesh = harness::Mesh::new();
    let peer = alpn_peer(&mesh, false).await;
    let proxy = client_to(
        &mesh,
        peer.addr,
        Some("DO_NOT_UPGRADE"),
        json!({"tcp": {"maxConnections": 2}}),
    )
    .await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(async move {
                harness::get(&p, &harness::orders_url(&format!("/slow?{i}"))).await
            })
        })
        .collect();
    let requests = || peer.counters.requests.load(Ordering::SeqCst);
    wait_for("two requests at the peer", || requests() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(requests(), 2, "more than one request per connection");
    peer.gate.add_permits(2);
    wait_for("the other two at the peer", || requests() == 4).await;
    peer.gate.add_permits(2);
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(alpns(&peer), ["http/1.1", "http/1.1"]);
}
