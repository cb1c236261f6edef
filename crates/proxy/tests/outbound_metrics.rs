//! `reporter="source"` details on the client proxy alone (fake peers from the outbound
//! harness): gRPC requests counted at their end with `grpc_response_status` from the
//! trailers (or the headers of a trailers-only response), and Envoy's response flags for
//! what the client proxy itself decides: `UO` (circuit breaker), `UH` (no endpoint),
//! `UF,URX` (every connect attempt failed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "outbound/harness.rs"]
mod harness;
mod scrape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use harness::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scrape::{Labels, Scrape, Service, Side, istio_http};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

const ORDERS_ID: &str = "spiffe://cluster.local/ns/production/sa/orders";

fn client() -> Side {
    Side {
        workload: "client".into(),
        namespace: "default".into(),
        principal: CLIENT_ID.into(),
        app: "client".into(),
        canonical_service: "client".into(),
        canonical_revision: "latest".into(),
        ..Side::unknown()
    }
}

fn orders_peer() -> Side {
    Side {
        workload: "orders".into(),
        namespace: "production".into(),
        principal: ORDERS_ID.into(),
        app: "orders".into(),
        canonical_service: "orders".into(),
        canonical_revision: "latest".into(),
        ..Side::unknown()
    }
}

fn orders_service() -> Service {
    Service::new(ORDERS, "orders", "production")
}

/// The full label set of a `reporter="source"` HTTP series to orders.
fn source(dst: &Side, code: &str, flags: &str) -> Labels {
    istio_http(
        "source",
        &client(),
        dst,
        &orders_service(),
        code,
        flags,
        "unknown",
    )
}

/// A gRPC server behind mTLS: `/trailers` answers one message and `grpc-status: 5` in the
/// trailers, `/only` a trailers-only response (`grpc-status: 14` in the headers).
async fn grpc_peer(mesh: &Mesh) -> SocketAddr {
    let (svid, key) = mesh.svid(ORDERS_ID);
    let tls = peer_tls(svid.chain_der, &key, &mesh.bundles);
    let listener = bind_fresh().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(s) = TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = if req.uri().path() == "/trailers" {
                        // Streamed, as gRPC servers do: no content-length, so the client
                        // proxy relays it chunked and reads on to the trailers.
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("5"));
                        let frames = futures::stream::iter([
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                            Ok(Frame::trailers(trailers)),
                        ]);
                        Response::new(StreamBody::new(frames).boxed())
                    } else {
                        let mut r = Response::new(Empty::<Bytes>::new().boxed());
                        r.headers_mut()
                            .insert("grpc-status", HeaderValue::from_static("14"));
                        r
                    };
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gRPC call from the app: POST with `content-type: application/grpc`; the response read
/// to its end (trailers included).
async fn grpc_call(proxy: &Proxy, path: &str) -> StatusCode {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(orders_url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01x")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

async fn settled(proxy: &Proxy, check: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..100 {
        let m = Scrape::parse(&proxy.metrics.render());
        if check(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never settled:\n{}", proxy.metrics.render());
}

#[tokio::test]
async fn grpc_requests_carry_the_status_from_trailers_or_trailers_only_headers() {
    let mesh = Mesh::new();
    let peer = grpc_peer(&mesh).await;
    let proxy = start(mesh.shared(orders(peer, vec![]))).await;
    assert_eq!(grpc_call(&proxy, "/trailers").await, StatusCode::OK);
    assert_eq!(grpc_call(&proxy, "/only").await, StatusCode::OK);
    assert_eq!(grpc_call(&proxy, "/only").await, StatusCode::OK);
    let grpc = |status| {
        source(&orders_peer(), "200", "-")
            .with("request_protocol", "grpc")
            .with("grpc_response_status", status)
    };
    let want = [(grpc("14"), 2.0), (grpc("5"), 1.0)];
    let m = settled(&proxy, |m| {
        m.matching("istio_requests_total", &[]) == want.iter().cloned().collect()
    })
    .await;
    for (labels, n) in &want {
        assert_eq!(
            m.value("istio_request_duration_milliseconds_count", labels),
            Some(*n)
        );
        // One 6-byte message each way (a 7-byte one from /trailers).
        assert_eq!(m.value("istio_request_bytes_sum", labels), Some(6.0 * n));
    }
    assert_eq!(m.value("istio_response_bytes_sum", &grpc("5")), Some(7.0));
    assert_eq!(m.value("istio_response_bytes_sum", &grpc("14")), Some(0.0));
}

#[tokio::test]
async fn the_client_proxys_own_refusals_carry_envoys_flags() {
    let mesh = Mesh::new();
    let peer = peer(&mesh, ORDERS_ID, Serve::Mtls).await;
    // One active request at most: a second one overflows (UO).
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"http": {"http2MaxRequests": 1}}}),
    );
    let proxy = Arc::new(start(mesh.shared(orders(peer.addr, vec![rule]))).await);
    let p = proxy.clone();
    let slow = tokio::spawn(async move { get(&p, &orders_url("/slow")).await });
    wait_until(|| peer.counters.requests.load(Ordering::SeqCst) == 1).await;
    assert_eq!(
        get(&proxy, &orders_url("/fast")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    peer.gate.add_permits(1);
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    let m = settled(&proxy, |m| m.sum("istio_requests_total", &[]) == 2.0).await;
    assert_eq!(
        m.matching("istio_requests_total", &[]),
        [
            (source(&orders_peer(), "200", "-"), 1.0),
            (source(&Side::unknown(), "503", "UO"), 1.0),
        ]
        .into_iter()
        .collect()
    );

    // No endpoint (UH), and two endpoints that refuse connections: three attempts, then
    // UF with URX (the connect attempt limit).
    let gone: Vec<SocketAddr> = {
        let a = bind_fresh().await;
        let b = bind_fresh().await;
        vec![a.local_addr().unwrap(), b.local_addr().unwrap()]
    };
    let unreachable = start(mesh.shared(vec![
        we("production", "orders-a", "orders", "orders", gone[0]),
        we("production", "orders-b", "orders", "orders", gone[1]),
        se("production", "orders", ORDERS, "orders"),
        se(
            "production",
            "empty",
            "empty.production.svc.cluster.local",
            "nobody",
        ),
    ]))
    .await;
    let (status, body) = get(&unreachable, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = get(
        &unreachable,
        "http://empty.production.svc.cluster.local:8080/",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("no healthy upstream"), "{body}");
    let m = settled(&unreachable, |m| m.sum("istio_requests_total", &[]) == 2.0).await;
    let empty = istio_http(
        "source",
        &client(),
        &Side::unknown(),
        &Service::new("empty.production.svc.cluster.local", "empty", "production"),
        "503",
        "UH",
        "unknown",
    );
    assert_eq!(
        m.matching("istio_requests_total", &[]),
        [
            (source(&Side::unknown(), "503", "UF,URX"), 1.0),
            (empty, 1.0)
        ]
        .into_iter()
        .collect()
    );
}
