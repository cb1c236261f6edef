//! The outbound listener's HTTP side end to end on loopback: a real `outbound::serve`, a
//! real app-side HTTP/1.1 client, and fake peer proxies ([`harness`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "outbound/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use harness::*;
use http::StatusCode;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use tokio::net::TcpStream;
use trustmesh_pki::certmanager::{CertUsage, KeySpec, PrivateKeyAlgorithm, issue_with_ca};
use trustmesh_pki::{CertRequest, KeyEncoding, KeyPair, crypto_provider};
use trustmesh_proxy::state::Shared;

// ---------------------------------------------------------------------------------------
// HTTP over mTLS.

#[tokio::test]
async fn absolute_form_get_reaches_the_peer_over_mtls_as_the_client() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    let (status, body) = get(&proxy, &orders_url("/hello?x=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The peer verified the client's SVID, and got an HTTP/2 request for the service.
    assert!(body.contains(&format!("peer={CLIENT_ID} ")), "{body}");
    assert!(
        body.contains(&format!("authority={ORDERS}:8080 ")),
        "{body}"
    );
    assert!(body.contains("/hello?x=1"), "{body}");
    assert!(body.contains("version=HTTP/2.0"), "{body}");
    // Short names resolve like a pod's DNS search path.
    let (status, body) = get(&proxy, "http://orders.production:8080/short").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn request_bodies_stream_to_the_peer() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    // Larger than HTTP/2's initial 64 KiB flow-control window.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = data.iter().map(|b| u64::from(*b)).sum();
    let (status, body) = post(&proxy, &orders_url("/upload"), data).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("received 300000 bytes, sum {sum}"));
}

#[tokio::test]
async fn twenty_requests_pay_one_handshake() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    for i in 0..20 {
        let (status, body) = get(&proxy, &orders_url(&format!("/{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Twenty more at once: they wait for, and share, the same connection.
    let proxy = Arc::new(proxy);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(async move { get(&p, &orders_url(&format!("/c{i}"))).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(peer.counters.requests.load(Ordering::SeqCst), 40);
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(peer.counters.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn twenty_concurrent_requests_from_a_cold_pool_share_one_connect() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = Arc::new(start(mesh.shared(orders(peer.addr, vec![]))).await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(async move { get(&p, &orders_url(&format!("/{i}"))).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_requests_per_connection_rotates_the_pooled_connection() {
    // `http.maxRequestsPerConnection`: "Maximum number of requests per connection to a
    // backend" — the TEEI example's 2 means 20 requests use 10 connections.
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "ISTIO_MUTUAL"},
               "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "5s"},
                                  "http": {"http2MaxRequests": 1000, "maxRequestsPerConnection": 2}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    for i in 0..20 {
        let (status, body) = get(&proxy, &orders_url(&format!("/{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.ends_with(&format!("conn={}", i / 2 + 1)),
            "{i}: {body}"
        );
    }
    assert_eq!(peer.counters.handshakes.load(Ordering::SeqCst), 10);
    // Retired connections close once their requests are done.
    wait_until(|| peer.counters.closed.load(Ordering::SeqCst) >= 9).await;
}

#[tokio::test]
async fn a_server_with_another_identity_gets_nothing_and_the_app_gets_503() {
    // Secure naming: "a client checks the server is one of the identities allowed to serve
    // the destination service". The WorkloadEntry says `orders`; the server is `impostor`.
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/impostor",
        Serve::Mtls,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    let (status, body) = get(&proxy, &orders_url("/secret")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("TLS handshake with"), "{body}");
    assert!(
        body.contains("peer is spiffe://cluster.local/ns/production/sa/impostor, expected one of spiffe://cluster.local/ns/production/sa/orders"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    assert_eq!(peer.counters.requests.load(Ordering::SeqCst), 0);
    assert_eq!(peer.counters.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn service_entry_subject_alt_names_decide_who_may_serve() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/impostor",
        Serve::Mtls,
    )
    .await;
    let mut entry = se("production", "orders", ORDERS, "orders");
    entry["spec"]["subjectAltNames"] = json!(["spiffe://cluster.local/ns/production/sa/impostor"]);
    let resources = vec![
        we("production", "orders", "orders", "orders", peer.addr),
        entry,
    ];
    let proxy = start(mesh.shared(resources)).await;
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn unknown_host_is_502_naming_it() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = start(mesh.shared(orders(peer.addr, vec![]))).await;
    let (status, body) = get(&proxy, "http://nowhere.production.svc.cluster.local:8080/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "unknown host nowhere.production.svc.cluster.local: no ServiceEntry visible to this workload declares it\n"
    );
    let (status, body) = get(&proxy, &format!("http://{ORDERS}:1234/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("port 1234"), "{body}");
}

#[tokio::test]
async fn a_request_without_an_absolute_uri_is_400() {
    let mesh = Mesh::new();
    let proxy = start(mesh.shared(vec![])).await;
    let (status, body) = get(&proxy, "/just/a/path").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.starts_with("bad request: an HTTP proxy needs an absolute URI"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1);
}

#[tokio::test]
async fn without_config_or_identity_the_proxy_answers_503() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let proxy = start(Shared::new("default/client")).await;
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no mesh configuration received yet\n");
    // A config but no SVID: mesh mTLS is impossible.
    let shared = Shared::new("default/client");
    let mut res = orders(peer.addr, vec![]);
    res.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {"address": "127.0.8.1", "serviceAccount": "client"}}),
    );
    mesh.install(&shared, res, 1);
    let proxy = start(shared).await;
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no workload certificate yet"), "{body}");
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// Circuit breakers.

#[tokio::test]
async fn http2_max_requests_overflow_is_503_at_once() {
    // `http.http2MaxRequests`: "Maximum number of active requests to a destination";
    // overflow → "503 with response flag `UO`" (Envoy's circuit breaker).
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"http": {"http2MaxRequests": 1}}}),
    );
    let proxy = Arc::new(start(mesh.shared(orders(peer.addr, vec![rule]))).await);
    let p = proxy.clone();
    let slow = tokio::spawn(async move { get(&p, &orders_url("/slow")).await });
    wait_until(|| peer.counters.requests.load(Ordering::SeqCst) == 1).await;
    let t0 = Instant::now();
    let (status, headers, body) = app(&proxy, "GET", &orders_url("/fast")).await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get("x-envoy-overloaded").unwrap(), "true");
    assert!(body.starts_with("overflow: active requests"), "{body}");
    assert!(body.contains("http2MaxRequests"), "{body}");
    assert_eq!(peer.counters.requests.load(Ordering::SeqCst), 1);
    peer.gate.add_permits(1);
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    // The slot is free again once the first response is done.
    assert_eq!(get(&proxy, &orders_url("/again")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn pending_requests_wait_for_a_connection_and_overflow_past_the_limit() {
    // Plaintext HTTP/1.1 upstream, one connection allowed: the second request waits for it
    // (pending), a third overflows `http1MaxPendingRequests: 1`.
    let mesh = Mesh::new();
    let peer = plain_peer().await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "DISABLE"},
               "connectionPool": {"tcp": {"maxConnections": 1},
                                  "http": {"http1MaxPendingRequests": 1}}}),
    );
    let proxy = Arc::new(start(mesh.shared(orders(peer.addr, vec![rule]))).await);
    let p = proxy.clone();
    let first = tokio::spawn(async move { get(&p, &orders_url("/slow")).await });
    wait_until(|| peer.counters.requests.load(Ordering::SeqCst) == 1).await;
    let p = proxy.clone();
    let second = tokio::spawn(async move { get(&p, &orders_url("/second")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = get(&proxy, &orders_url("/third")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("http1MaxPendingRequests"), "{body}");
    peer.gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    let (status, body) = second.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // The waiting request got the same keep-alive connection.
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_connections_bounds_waiting_for_a_slot_by_the_connect_timeout() {
    let mesh = Mesh::new();
    let peer = plain_peer().await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "DISABLE"},
               "connectionPool": {"tcp": {"maxConnections": 1, "connectTimeout": "300ms"}}}),
    );
    let proxy = Arc::new(start(mesh.shared(orders(peer.addr, vec![rule]))).await);
    let p = proxy.clone();
    let first = tokio::spawn(async move { get(&p, &orders_url("/slow")).await });
    wait_until(|| peer.counters.requests.load(Ordering::SeqCst) == 1).await;
    let t0 = Instant::now();
    let (status, body) = get(&proxy, &orders_url("/second")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("open connections"), "{body}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    peer.gate.add_permits(1);
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// TLS modes.

#[tokio::test]
async fn destination_rule_disable_sends_plaintext_over_keep_alive() {
    // `DISABLE` → "plaintext".
    let mesh = Mesh::new();
    let peer = plain_peer().await;
    let rule = dr(ORDERS, json!({"tls": {"mode": "DISABLE"}}));
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    for i in 0..5 {
        let (status, body) = get(&proxy, &orders_url(&format!("/p{i}?q"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Origin-form target, `Host` from the absolute URI (not the app's Host header).
        assert!(
            body.contains(&format!(
                "authority={ORDERS}:8080 target=/p{i}?q version=HTTP/1.1"
            )),
            "{body}"
        );
        assert!(body.contains("peer=none"), "{body}");
    }
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_requests_per_connection_one_disables_keep_alive() {
    // `http.maxRequestsPerConnection`: "1 disables keep-alive".
    let mesh = Mesh::new();
    let peer = plain_peer().await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "DISABLE"},
               "connectionPool": {"http": {"maxRequestsPerConnection": 1}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    for i in 0..3 {
        assert_eq!(
            get(&proxy, &orders_url(&format!("/{i}"))).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn auto_mtls_is_off_towards_a_disable_destination() {
    // "no auto mTLS when the destination's PeerAuthentication mode is DISABLE".
    let mesh = Mesh::new();
    let peer = plain_peer().await;
    let pa = json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "off", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "DISABLE"}}});
    let proxy = start(mesh.shared(orders(peer.addr, vec![pa]))).await;
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("peer=none"), "{body}");
}

#[tokio::test]
async fn simple_and_mutual_tls_use_the_rule_files() {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    // A server certificate for a DNS name, from the test CA (cert-manager style).
    let req = CertRequest {
        dns_names: vec!["orders.example".into()],
        usages: vec![CertUsage::DigitalSignature, CertUsage::ServerAuth],
        key: KeySpec {
            algorithm: PrivateKeyAlgorithm::Ecdsa,
            size: None,
        },
        key_encoding: KeyEncoding::Pkcs8,
        ..CertRequest::default()
    };
    let server = issue_with_ca(&req, &mesh.ca, SystemTime::now()).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(server.tls_crt.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = KeyPair::from_pem(&server.tls_key).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, mesh.ca.root_pem()).unwrap();

    // SIMPLE: server authentication only.
    let simple_cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.private_key_der())
        .unwrap();
    let mut simple_cfg = simple_cfg;
    simple_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let simple = peer_with(Some(Arc::new(simple_cfg)), Serve::Mtls).await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "SIMPLE", "caCertificates": ca_file, "sni": "orders.example"}}),
    );
    let proxy = start(mesh.shared(orders(simple.addr, vec![rule]))).await;
    let (status, body) = get(&proxy, &orders_url("/simple")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("peer=none"), "{body}");

    // The wrong name fails verification.
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "SIMPLE", "caCertificates": ca_file, "sni": "other.example"}}),
    );
    let proxy = start(mesh.shared(orders(simple.addr, vec![rule]))).await;
    let (status, body) = get(&proxy, &orders_url("/simple")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("TLS handshake"), "{body}");

    // MUTUAL: the client certificate comes from files, not the workload SVID.
    let (file_svid, file_key) = mesh.svid("spiffe://cluster.local/ns/default/sa/from-files");
    let cert_file = dir.path().join("client.pem");
    let key_file = dir.path().join("client.key");
    std::fs::write(&cert_file, &file_svid.chain_pem).unwrap();
    std::fs::write(&key_file, file_key.to_pkcs8_pem().unwrap()).unwrap();
    let mutual = peer_with(Some(peer_tls(chain, &key, &mesh.bundles)), Serve::Mtls).await;
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "MUTUAL", "caCertificates": ca_file, "sni": "orders.example",
                        "clientCertificate": cert_file, "privateKey": key_file}}),
    );
    let proxy = start(mesh.shared(orders(mutual.addr, vec![rule]))).await;
    let (status, body) = get(&proxy, &orders_url("/mutual")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("peer=spiffe://cluster.local/ns/default/sa/from-files"),
        "{body}"
    );

    // A missing file is a 503 naming it.
    let rule = dr(
        ORDERS,
        json!({"tls": {"mode": "SIMPLE", "caCertificates": "/nonexistent/ca.pem"}}),
    );
    let proxy = start(mesh.shared(orders(mutual.addr, vec![rule]))).await;
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("/nonexistent/ca.pem"), "{body}");
}

// ---------------------------------------------------------------------------------------
// Timeouts, failures, endpoints.

#[tokio::test]
async fn connect_timeout_bounds_a_peer_that_never_completes_the_handshake() {
    // `tcp.connectTimeout`: a listener that accepts TCP but never answers the ClientHello.
    let mesh = Mesh::new();
    let silent = bind_fresh().await;
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"tcp": {"connectTimeout": "200ms"}}}),
    );
    let proxy = start(mesh.shared(orders(addr, vec![rule]))).await;
    let t0 = Instant::now();
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no handshake within 200ms"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn connect_timeout_bounds_a_tcp_connect_that_hangs() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connect
    // hangs until the timeout.
    let mesh = Mesh::new();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{}:0", fresh_ip()).parse().unwrap())
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"tcp": {"connectTimeout": "200ms"}}}),
    );
    let proxy = start(mesh.shared(orders(addr, vec![rule]))).await;
    let t0 = Instant::now();
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("timed out after 200ms"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn nothing_listening_is_503_quickly() {
    let mesh = Mesh::new();
    let gone = bind_fresh().await;
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let proxy = start(mesh.shared(orders(addr, vec![]))).await;
    let t0 = Instant::now();
    let (status, body) = get(&proxy, &orders_url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains(&format!("connect to {addr} for {ORDERS}:8080 failed")),
        "{body}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn requests_round_robin_and_fail_over_past_a_dead_endpoint() {
    let mesh = Mesh::new();
    let a = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let b = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let gone = bind_fresh().await;
    let dead = gone.local_addr().unwrap();
    drop(gone);
    let resources = vec![
        we("production", "orders-a", "orders", "orders", a.addr),
        we("production", "orders-b", "orders", "orders", b.addr),
        we("production", "orders-c", "orders", "orders", dead),
        se("production", "orders", ORDERS, "orders"),
    ];
    let proxy = start(mesh.shared(resources)).await;
    for i in 0..9 {
        let (status, body) = get(&proxy, &orders_url(&format!("/{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{i}: {body}");
    }
    let (ra, rb) = (
        a.counters.requests.load(Ordering::SeqCst),
        b.counters.requests.load(Ordering::SeqCst),
    );
    assert_eq!(ra + rb, 9);
    assert!(ra >= 3 && rb >= 3, "{ra} {rb}");
}

#[tokio::test]
async fn idle_pooled_connections_close_after_the_idle_timeout() {
    // `http.idleTimeout`: "The idle timeout is defined as the period in which there are no
    // active requests ... When the idle timeout is reached, the connection will be closed."
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"http": {"idleTimeout": "300ms"}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    assert_eq!(get(&proxy, &orders_url("/1")).await.0, StatusCode::OK);
    wait_until(|| peer.counters.closed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(get(&proxy, &orders_url("/2")).await.0, StatusCode::OK);
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_are_recycled_after_the_max_connection_duration() {
    // `tcp.maxConnectionDuration`: the pooled connection takes no request past its age.
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"tcp": {"maxConnectionDuration": "300ms"}}}),
    );
    let proxy = start(mesh.shared(orders(peer.addr, vec![rule]))).await;
    assert_eq!(get(&proxy, &orders_url("/1")).await.0, StatusCode::OK);
    assert_eq!(get(&proxy, &orders_url("/2")).await.0, StatusCode::OK);
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 1);
    wait_until(|| peer.counters.closed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(get(&proxy, &orders_url("/3")).await.0, StatusCode::OK);
    assert_eq!(peer.counters.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rotated_svid_is_used_by_new_connections_while_pooled_ones_finish() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let rule = dr(
        ORDERS,
        json!({"connectionPool": {"http": {"maxRequestsPerConnection": 2}}}),
    );
    let (first, first_leaf) = mesh.identity(CLIENT_ID);
    let shared = mesh.shared(orders(peer.addr, vec![rule]));
    shared.set_identity(first);
    let proxy = start(shared.clone()).await;
    assert_eq!(get(&proxy, &orders_url("/1")).await.0, StatusCode::OK);
    let (second, second_leaf) = mesh.identity(CLIENT_ID);
    shared.set_identity(second);
    // The pooled connection still carries the certificate it was made with...
    assert_eq!(get(&proxy, &orders_url("/2")).await.0, StatusCode::OK);
    // ...and the next connection presents the new one.
    assert_eq!(get(&proxy, &orders_url("/3")).await.0, StatusCode::OK);
    let leaves = peer.counters.client_leaves.lock().unwrap().clone();
    assert_eq!(
        leaves,
        [
            first_leaf.to_vec(),
            first_leaf.to_vec(),
            second_leaf.to_vec()
        ]
    );
}

#[tokio::test]
async fn a_slow_request_survives_identity_rotation_and_a_config_push() {
    let mesh = Mesh::new();
    let peer = peer(
        &mesh,
        "spiffe://cluster.local/ns/production/sa/orders",
        Serve::Mtls,
    )
    .await;
    let shared = mesh.shared(orders(peer.addr, vec![]));
    let proxy = Arc::new(start(shared.clone()).await);
    let p = proxy.clone();
    let slow = tokio::spawn(async move { get(&p, &orders_url("/slow")).await });
    wait_until(|| peer.counters.requests.load(Ordering::SeqCst) == 1).await;
    shared.set_identity(mesh.identity(CLIENT_ID).0);
    let mut res = orders(
        peer.addr,
        vec![dr(
            ORDERS,
            json!({"connectionPool": {"http": {"http2MaxRequests": 5}}}),
        )],
    );
    res.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {"address": "127.0.8.1", "serviceAccount": "client", "labels": {"app": "client"}}}),
    );
    mesh.install(&shared, res, 2);
    assert_eq!(get(&proxy, &orders_url("/during")).await.0, StatusCode::OK);
    peer.gate.add_permits(1);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}
