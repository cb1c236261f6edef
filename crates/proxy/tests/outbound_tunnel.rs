//! The outbound listener's CONNECT tunnels and shutdown, end to end on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "outbound/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use trustmesh_proxy::outbound;

// ---------------------------------------------------------------------------------------
// CONNECT.

async fn connect_tunnel(proxy: &Proxy, target: &str) -> (String, Option<TcpStream>) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let ok = head.starts_with("HTTP/1.1 200");
    (head, ok.then_some(s))
}

async fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn connect_tunnels_bytes_over_mtls() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::MtlsEcho,
    )
    .await;
    let shared = mesh.shared(orders(peer.addr, vec![]));
    let proxy = start(shared.clone()).await;
    let (head, s) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    let mut s = s.unwrap_or_else(|| panic!("{head}"));
    assert_eq!(read_line(&mut s).await, format!("hello {CLIENT_ID}\n"));
    s.write_all(b"ping through the mesh\n").await.unwrap();
    assert_eq!(read_line(&mut s).await, "ping through the mesh\n");
    // Each tunnel is its own connection.
    let (_, s2) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    let mut s2 = s2.unwrap();
    assert_eq!(read_line(&mut s2).await, format!("hello {CLIENT_ID}\n"));
    assert_eq!(peer.counters.handshakes.load(Ordering::SeqCst), 2);
    // Each tunnel builds its own TLS config, yet the peer's chain is verified once: the
    // second handshake is answered by the cache the proxy keeps per bundle set.
    let (_, outbound) = shared.chain_cache_stats().expect("caches in use");
    assert_eq!((outbound.misses, outbound.hits), (1, 1), "{outbound:?}");
}

#[tokio::test]
async fn connect_to_an_unknown_host_or_wrong_identity_is_refused_with_a_status() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/impostor",
        Serve::MtlsEcho,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    let (head, s) = connect_tunnel(&proxy, "nowhere.example:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(s.is_none());
    let (head, s) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(s.is_none());
    let (head, _) = connect_tunnel(&proxy, ORDERS).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn connect_enforces_max_connections() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::MtlsEcho,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"tcp": {"maxConnections": 1}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    let (_, first) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    let mut first = first.unwrap();
    assert_eq!(read_line(&mut first).await, format!("hello {CLIENT_ID}\n"));
    let (head, second) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(second.is_none());
    // Closing the first tunnel frees its slot.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let (_, s) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
        if s.is_some() {
            again = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some());
}

#[tokio::test]
async fn connect_tunnels_close_after_the_tcp_idle_timeout() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::MtlsEcho,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"tcp": {"idleTimeout": "300ms"}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    let (_, s) = connect_tunnel(&proxy, &format!("{ORDERS}:9000")).await;
    let mut s = s.unwrap();
    assert_eq!(read_line(&mut s).await, format!("hello {CLIENT_ID}\n"));
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the tunnel should close");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test]
async fn serve_returns_on_shutdown_and_accepts_no_more() {
    let mesh = Mesh::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(outbound::serve(
        listener,
        mesh.shared(vec![]),
        Default::default(),
        rx,
    ));
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
