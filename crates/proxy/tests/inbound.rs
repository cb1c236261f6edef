//! Inbound, end to end on real sockets: a proxy's service port with real certificates, the
//! demo app (or an echo server) behind it, and clients that see what a user sees: status
//! codes, bodies, closed connections.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;
mod scrape;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_support::*;
use rustls::ClientConfig;
use scrape::{Labels, Scrape, Service, Side, istio_http, istio_tcp};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trustmesh_pki::{Allowed, SpiffeServerVerifier, crypto_provider};
use trustmesh_proxy::inbound::http::RBAC_DENIED_BODY;

/// gateway may GET anything but `/admin*`; everyone else is denied (ALLOW applies).
fn gateway_only(ns: &str) -> Vec<serde_json::Value> {
    vec![
        authorization_policy(
            ns,
            "allow-gateway",
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/gateway"]}}]}]}),
        ),
        authorization_policy(
            ns,
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        ),
    ]
}

#[tokio::test]
async fn mtls_request_allowed_for_the_gateway_and_denied_for_others() {
    let h = Harness::start([127, 0, 30, 2], [127, 0, 31, 2], "http", |_| {
        let mut r = gateway_only("prod");
        r.push(peer_authentication("prod", "STRICT"));
        r
    })
    .await;
    let ok = tls_get(h.addr, h.client("default", "gateway"), "/orders?id=7").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);
    assert!(ok.body.contains("app: prod/orders"), "{}", ok.body);
    assert!(ok.body.contains("path: /orders?id=7"), "{}", ok.body);
    // "x-forwarded-client-cert: By=<own id>;URI=<peer id>"
    assert!(
        ok.body.contains(
            "x-forwarded-client-cert: By=spiffe://cluster.local/ns/prod/sa/orders;URI=spiffe://cluster.local/ns/default/sa/gateway\n"
        ),
        "{}",
        ok.body
    );

    let denied = tls_get(h.addr, h.client("default", "intruder"), "/orders").await;
    assert_eq!(denied.status, Some(403), "{}", denied.raw);
    assert_eq!(denied.body, RBAC_DENIED_BODY);
    assert_eq!(RBAC_DENIED_BODY, "RBAC: access denied");

    let admin = tls_get(h.addr, h.client("default", "gateway"), "/admin/users").await;
    assert_eq!(admin.status, Some(403), "{}", admin.raw);
    assert_eq!(admin.body, "RBAC: access denied");

    // Exactly three requests, on exactly these label sets.
    let m = Scrape::parse(&h.metrics.render());
    let (gateway, intruder) = (client_side("gateway"), client_side("intruder"));
    let http = |src: &Side, code, flags| {
        istio_http(
            "destination",
            src,
            &orders_side(),
            &no_service(),
            code,
            flags,
            "mutual_tls",
        )
    };
    let want: Vec<(Labels, f64)> = vec![
        (http(&gateway, "200", "-"), 1.0),
        (http(&gateway, "403", "DENY"), 1.0),
        (http(&intruder, "403", "DENY"), 1.0),
    ];
    assert_eq!(
        m.matching("istio_requests_total", &[]),
        want.iter().cloned().collect(),
        "{}",
        m.text
    );
    for (labels, n) in &want {
        for h in [
            "istio_request_duration_milliseconds_count",
            "istio_request_bytes_count",
            "istio_response_bytes_count",
        ] {
            assert_eq!(m.value(h, labels), Some(*n), "{h} {labels:?}");
        }
    }
    // The demo app's 200 body and "RBAC: access denied" twice.
    assert_eq!(
        m.value("istio_response_bytes_sum", &want[0].0),
        Some(ok.body.len() as f64)
    );
    assert_eq!(
        m.value("istio_response_bytes_sum", &want[1].0),
        Some(RBAC_DENIED_BODY.len() as f64)
    );
    // One decision per request: the ALLOW that matched, the ALLOW policies none of which
    // matched (policy "none"), the DENY that matched.
    let decision = |policy, action, decision| {
        Labels::from(
            &[
                ("destination_workload", "orders"),
                ("destination_workload_namespace", "prod"),
                ("policy", policy),
                ("action", action),
                ("decision", decision),
                ("dry_run", "false"),
            ][..],
        )
    };
    assert_eq!(
        m.matching("trustmesh_authz_decisions_total", &[]),
        [
            (decision("prod/allow-gateway", "ALLOW", "allow"), 1.0),
            (decision("none", "ALLOW", "deny"), 1.0),
            (decision("prod/deny-admin", "DENY", "deny"), 1.0),
        ]
        .into_iter()
        .collect(),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "trustmesh_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "success")]
        ),
        Some(3.0)
    );
}

/// `prod/orders` behind the harness, as the destination labels name it.
fn orders_side() -> Side {
    Side {
        workload: "orders".into(),
        namespace: "prod".into(),
        principal: "spiffe://cluster.local/ns/prod/sa/orders".into(),
        app: "orders".into(),
        version: "unknown".into(),
        canonical_service: "orders".into(),
        canonical_revision: "latest".into(),
        cluster: "unknown".into(),
    }
}

/// A verified client `default/<sa>` that no WorkloadEntry of the config holds: only what its
/// SPIFFE ID says.
fn client_side(sa: &str) -> Side {
    Side {
        namespace: "default".into(),
        principal: format!("spiffe://cluster.local/ns/default/sa/{sa}"),
        ..Side::unknown()
    }
}

fn no_service() -> Service {
    Service::new("unknown", "unknown", "unknown")
}

/// `trustmesh_tls_handshake_failures_total` of the inbound side, by reason (non-zero only).
fn inbound_failures(h: &Harness) -> Vec<(String, f64)> {
    let m = Scrape::parse(&h.metrics.render());
    m.series("trustmesh_tls_handshake_failures_total")
        .into_iter()
        .filter(|s| s.value > 0.0 && s.labels[0].1 == "inbound")
        .map(|s| (s.labels[1].1.clone(), s.value))
        .collect()
}

#[tokio::test]
async fn a_client_supplied_xfcc_header_is_replaced() {
    let h = Harness::start([127, 0, 30, 3], [127, 0, 31, 3], "http", |_| vec![]).await;
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nx-forwarded-client-cert: By=spiffe://evil/ns/a/sa/b;URI=spiffe://cluster.local/ns/prod/sa/admin\r\nConnection: close\r\n\r\n";
    // Plaintext (PERMISSIVE by default): no identity, so no XFCC at all.
    let plain = exchange(TcpStream::connect(h.addr).await.unwrap(), req).await;
    assert_eq!(plain.status, Some(200), "{}", plain.raw);
    assert!(
        plain.body.contains("x-forwarded-client-cert: -\n"),
        "{}",
        plain.body
    );
    // mTLS: exactly the proxy's own XFCC.
    let s = tls_connect(h.addr, h.client("default", "web"))
        .await
        .unwrap();
    let tls = exchange(s, req).await;
    assert!(
        tls.body.contains("x-forwarded-client-cert: By=spiffe://cluster.local/ns/prod/sa/orders;URI=spiffe://cluster.local/ns/default/sa/web\n"),
        "{}",
        tls.body
    );
}

#[tokio::test]
async fn strict_closes_plaintext_without_an_answer() {
    let h = Harness::start([127, 0, 30, 4], [127, 0, 31, 4], "http", |_| {
        vec![peer_authentication("prod", "STRICT")]
    })
    .await;
    let r = plain_get(h.addr, "/").await;
    assert_eq!(r.status, None, "{}", r.raw);
    assert!(r.raw.is_empty(), "{}", r.raw);
    // ... and mTLS on the same port works.
    let ok = tls_get(h.addr, h.client("default", "web"), "/").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);
    assert_eq!(
        inbound_failures(&h),
        [("plaintext_rejected".to_owned(), 1.0)]
    );
    let m = Scrape::parse(&h.metrics.render());
    assert_eq!(
        m.matching(
            "trustmesh_tls_handshakes_total",
            &[("direction", "inbound")]
        ),
        [
            (
                Labels::from(&[("direction", "inbound"), ("result", "failure")][..]),
                1.0
            ),
            (
                Labels::from(&[("direction", "inbound"), ("result", "success")][..]),
                1.0
            ),
        ]
        .into_iter()
        .collect()
    );
}

#[tokio::test]
async fn permissive_takes_plaintext_and_mtls_on_one_port() {
    let h = Harness::start([127, 0, 30, 5], [127, 0, 31, 5], "http", |_| {
        vec![peer_authentication("prod", "PERMISSIVE")]
    })
    .await;
    let plain = plain_get(h.addr, "/p").await;
    assert_eq!(plain.status, Some(200), "{}", plain.raw);
    assert!(
        plain.body.contains("x-forwarded-client-cert: -"),
        "{}",
        plain.body
    );
    let tls = tls_get(h.addr, h.client("default", "web"), "/t").await;
    assert_eq!(tls.status, Some(200), "{}", tls.raw);
    assert!(
        tls.body
            .contains("URI=spiffe://cluster.local/ns/default/sa/web"),
        "{}",
        tls.body
    );
    // The plaintext request: every source_* unknown, security policy none; the mTLS one
    // from its SPIFFE ID.
    let m = Scrape::parse(&h.metrics.render());
    let http = |src: &Side, security| {
        istio_http(
            "destination",
            src,
            &orders_side(),
            &no_service(),
            "200",
            "-",
            security,
        )
    };
    assert_eq!(
        m.matching("istio_requests_total", &[]),
        [
            (http(&Side::unknown(), "none"), 1.0),
            (http(&client_side("web"), "mutual_tls"), 1.0),
        ]
        .into_iter()
        .collect(),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "istio_requests_total",
            &[
                ("security_policy", "mutual_tls"),
                ("reporter", "destination")
            ]
        ),
        1.0
    );
    assert_eq!(inbound_failures(&h), []);
}

#[tokio::test]
async fn disable_refuses_tls_and_takes_plaintext() {
    let h = Harness::start([127, 0, 30, 6], [127, 0, 31, 6], "http", |_| {
        vec![peer_authentication("prod", "DISABLE")]
    })
    .await;
    let tls = tls_get(h.addr, h.client("default", "web"), "/").await;
    assert_eq!(tls.status, None, "{}", tls.raw);
    let plain = plain_get(h.addr, "/").await;
    assert_eq!(plain.status, Some(200), "{}", plain.raw);
    // TLS where the port takes only plaintext: the client's protocol is wrong for it.
    assert_eq!(inbound_failures(&h), [("protocol".to_owned(), 1.0)]);
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_on_an_open_connection() {
    let h = Harness::start([127, 0, 30, 7], [127, 0, 31, 7], "http", |_| vec![]).await;
    let mut s = tls_connect(h.addr, h.client("default", "web"))
        .await
        .unwrap();
    let keepalive = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(keepalive).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Only the gateway now.
    let mut resources = vec![workload_entry(
        "prod",
        "orders",
        h.addr.ip(),
        "orders",
        &[("http", h.port)],
        json!({"annotations": {"trustmesh.io/app-address": h.app_ip.to_string()}}),
    )];
    resources.extend(gateway_only("prod"));
    h.configure(2, resources);
    s.write_all(keepalive).await.unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 403"), "{second}");
    assert!(second.ends_with("RBAC: access denied"), "{second}");
}

/// Reads one response with a Content-Length body from a keep-alive connection.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-headers");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    buf.extend(body);
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn tls12_only_clients_and_clients_without_a_certificate_are_refused() {
    let h = Harness::start([127, 0, 30, 8], [127, 0, 31, 8], "http", |_| vec![]).await;
    // TLS 1.2 is compiled into this test build (rustls `tls12`), so only the proxy's own
    // TLS 1.3 pin refuses it.
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(h.ca.bundle()),
        Allowed::Any,
    ));
    let tls12 = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let err = tls_connect(h.addr, Arc::new(tls12)).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("protocolversion")
            || err.to_string().to_lowercase().contains("protocol version"),
        "{err}"
    );

    // No client certificate: TLS 1.3 lets the client finish its side; the server's
    // `certificate required` alert arrives instead of any HTTP answer.
    let anonymous = client_tls(None, &h.ca.bundle(), &[b"http/1.1"]);
    let r = tls_get(h.addr, anonymous, "/").await;
    assert_eq!(r.status, None, "{}", r.raw);

    // A certificate from another CA for the same trust domain.
    let rogue = TestCa::new(TD);
    let cfg = client_tls(
        Some(&rogue.identity("default", "gateway")),
        &h.ca.bundle(),
        &[b"http/1.1"],
    );
    let r = tls_get(h.addr, cfg, "/").await;
    assert_eq!(r.status, None, "{}", r.raw);

    // And nothing else broke.
    let ok = tls_get(h.addr, h.client("default", "web"), "/").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);

    // Each refusal counted once, under its reason; only the last handshake succeeded.
    assert_eq!(
        inbound_failures(&h),
        [
            ("no_client_certificate".to_owned(), 1.0),
            ("protocol".to_owned(), 1.0),
            ("unknown_ca".to_owned(), 1.0),
        ]
    );
    let m = Scrape::parse(&h.metrics.render());
    let result = |r| {
        m.get(
            "trustmesh_tls_handshakes_total",
            &[("direction", "inbound"), ("result", r)],
        )
    };
    assert_eq!(
        (result("success"), result("failure")),
        (Some(1.0), Some(3.0))
    );
}

#[tokio::test]
async fn garbage_and_truncated_first_bytes_get_closed_and_nothing_else_breaks() {
    let strict = Harness::start([127, 0, 30, 9], [127, 0, 31, 9], "http", |_| {
        vec![peer_authentication("prod", "STRICT")]
    })
    .await;
    for bytes in [
        &b"\x00\xff\x13garbage\r\n\r\n"[..],
        &b"\x16"[..],
        &b"\x16\x03\x01\x00\x05hello"[..],
        &b"\x16\x03\x03\xff\xff"[..],
    ] {
        let mut s = TcpStream::connect(strict.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the proxy closes the connection");
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP/"),
            "{bytes:?}: {buf:?}"
        );
    }
    let ok = tls_get(strict.addr, strict.client("default", "web"), "/").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);
    // Not TLS on a STRICT port; two undecodable records; a client that hung up after one
    // byte of a record (nothing wrong with what it sent: it just left).
    assert_eq!(
        inbound_failures(&strict),
        [
            ("other".to_owned(), 1.0),
            ("plaintext_rejected".to_owned(), 1.0),
            ("protocol".to_owned(), 2.0),
        ]
    );

    // PERMISSIVE: garbage is plaintext HTTP that does not parse → 400, never the app.
    let permissive = Harness::start([127, 0, 30, 10], [127, 0, 31, 10], "http", |_| vec![]).await;
    let r = exchange(
        TcpStream::connect(permissive.addr).await.unwrap(),
        b"\x00\xff\x13garbage\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, Some(400), "{}", r.raw);
    assert!(!r.body.contains("app:"), "{}", r.raw);
    let ok = plain_get(permissive.addr, "/").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_handshake_is_dropped_after_ten_seconds() {
    let h = Harness::start([127, 0, 30, 11], [127, 0, 31, 11], "http", |_| {
        vec![peer_authentication("prod", "STRICT")]
    })
    .await;
    // Half a ClientHello, then silence; and a client that sends nothing at all.
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"\x16\x03\x01\x02\x00\x01").await.unwrap();
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut byte = [0u8; 1];
    for s in [&mut slow, &mut silent] {
        assert!(
            tokio::time::timeout(Duration::from_millis(10), s.read(&mut byte))
                .await
                .is_err(),
            "still open at 9 s"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(inbound_failures(&h), [("timeout".to_owned(), 2.0)]);
    for s in [&mut slow, &mut silent] {
        let r = tokio::time::timeout(Duration::from_millis(10), s.read(&mut byte)).await;
        // EOF or reset: the proxy let go of it.
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "not closed at 11 s: {r:?}"
        );
    }
}

/// Istio's answers to path tricks against a `/admin*` DENY, with everything else allowed:
/// BASE normalization (decode unreserved `%xx` once, `\` → `/`, dot segments removed, no
/// slash merging, no case folding, query and fragment ignored, `%00` → 400).
#[tokio::test]
async fn path_tricks_against_an_admin_deny_get_istios_answers() {
    let h = Harness::start([127, 0, 30, 12], [127, 0, 31, 12], "http", |_| {
        vec![authorization_policy(
            "prod",
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        )]
    })
    .await;
    // (raw target, status, path the app sees when forwarded)
    let rows: &[(&str, u16, Option<&str>)] = &[
        ("/admin", 403, None),
        ("/public", 200, Some("/public")),
        ("/%61dmin", 403, None),
        ("/%2e%2e/admin", 403, None),
        ("/public/%2E%2E/admin", 403, None),
        ("/public/../admin", 403, None),
        ("/./admin", 403, None),
        ("//admin", 200, Some("//admin")),
        ("/public\\..\\admin", 403, None),
        ("\\admin", 400, None),
        ("/ADMIN", 200, Some("/ADMIN")),
        ("/Admin/x", 200, Some("/Admin/x")),
        ("/admin;x=1", 403, None),
        ("/public;/../admin", 403, None),
        ("/admin?debug=1", 403, None),
        ("/public?/admin", 200, Some("/public?/admin")),
        ("/admin#frag", 403, None),
        ("/public#/../admin", 200, Some("/public")),
        ("/admin%00", 400, None),
        ("/public%00/../admin", 400, None),
        ("/%2561dmin", 200, Some("/%2561dmin")),
        ("/public/..%2fadmin", 200, Some("/public/..%2fadmin")),
    ];
    for (target, status, seen) in rows {
        let r = exchange(
            TcpStream::connect(h.addr).await.unwrap(),
            &get_request(target),
        )
        .await;
        assert_eq!(r.status, Some(*status), "{target}: {}", r.raw);
        match (status, seen) {
            (403, _) => assert_eq!(r.body, "RBAC: access denied", "{target}"),
            (200, Some(p)) => assert!(
                r.body.contains(&format!("path: {p}\n")),
                "{target}: {}",
                r.body
            ),
            _ => assert!(
                !r.body.contains("app:"),
                "{target} reached the app: {}",
                r.body
            ),
        }
    }
}

#[tokio::test]
async fn http2_over_mtls_is_authorized_per_request() {
    let h = Harness::start([127, 0, 30, 13], [127, 0, 31, 13], "http2", |_| {
        gateway_only("prod")
    })
    .await;
    let cfg = client_tls(
        Some(&h.ca.identity("default", "gateway")),
        &h.ca.bundle(),
        &[b"h2"],
    );
    let tls = tls_connect(h.addr, cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, status) in [("/a", 200), ("/admin", 403), ("/b", 200)] {
        let req = http::Request::get(format!("https://orders.prod.svc{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        if status == 403 {
            assert_eq!(body, "RBAC: access denied");
        } else {
            assert!(body.contains(&format!("path: {path}\n")), "{body}");
        }
    }
}

#[tokio::test]
async fn tcp_ports_authorize_per_connection_and_copy_bytes() {
    let h = Harness::start([127, 0, 30, 14], [127, 0, 31, 14], "tcp-db", |port| {
        vec![authorization_policy(
            "prod",
            "db-clients",
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/gateway"]}}], "to": [{"operation": {"ports": [port.to_string()]}}]}]}),
        )]
    })
    .await;
    let mut ok = tls_connect(h.addr, h.client("default", "gateway"))
        .await
        .unwrap();
    ok.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    ok.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\n");

    let mut denied = tls_connect(h.addr, h.client("default", "intruder"))
        .await
        .unwrap();
    let _ = denied.write_all(b"ping\n").await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), denied.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "a denied TCP connection is closed");
    assert!(out.is_empty(), "{out:?}");
    // Plaintext is denied too (no principal), even though PERMISSIVE lets it in.
    let mut plain = TcpStream::connect(h.addr).await.unwrap();
    plain.write_all(b"ping\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(out.is_empty(), "{out:?}");

    drop(ok);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The allowed connection moved 5 bytes each way; the two denied ones are counted opened
    // and closed with Envoy's DENY flag (ztunnel's spelling), no bytes.
    let m = Scrape::parse(&h.metrics.render());
    let tcp = |src: &Side, flags, security| {
        istio_tcp(
            "destination",
            src,
            &orders_side(),
            &no_service(),
            flags,
            security,
        )
    };
    let allowed = tcp(&client_side("gateway"), "-", "mutual_tls");
    let denied = tcp(&client_side("intruder"), "DENY", "mutual_tls");
    let plaintext = tcp(&Side::unknown(), "DENY", "none");
    for (name, want) in [
        ("istio_tcp_connections_opened_total", [1.0, 1.0, 1.0]),
        ("istio_tcp_connections_closed_total", [1.0, 1.0, 1.0]),
        ("istio_tcp_sent_bytes_total", [5.0, 0.0, 0.0]),
        ("istio_tcp_received_bytes_total", [5.0, 0.0, 0.0]),
    ] {
        assert_eq!(
            m.matching(name, &[]),
            [
                (allowed.clone(), want[0]),
                (denied.clone(), want[1]),
                (plaintext.clone(), want[2]),
            ]
            .into_iter()
            .collect(),
            "{name}\n{}",
            m.text
        );
    }
    assert!(m.series("istio_requests_total").is_empty());
    let decision = |policy, decision, n| {
        (
            Labels::from(
                &[
                    ("destination_workload", "orders"),
                    ("destination_workload_namespace", "prod"),
                    ("policy", policy),
                    ("action", "ALLOW"),
                    ("decision", decision),
                    ("dry_run", "false"),
                ][..],
            ),
            n,
        )
    };
    assert_eq!(
        m.matching("trustmesh_authz_decisions_total", &[]),
        [
            decision("prod/db-clients", "allow", 1.0),
            decision("none", "deny", 2.0)
        ]
        .into_iter()
        .collect()
    );
}

#[tokio::test]
async fn rotation_swaps_the_svid_without_dropping_open_connections() {
    let h = Harness::start([127, 0, 30, 15], [127, 0, 31, 15], "http", |_| vec![]).await;
    let before = h.shared.identity().unwrap().serial.clone();
    let mut open = tls_connect(h.addr, h.client("default", "web"))
        .await
        .unwrap();
    let served_with = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let cert = &s.get_ref().1.peer_certificates().unwrap()[0];
        trustmesh_pki::CertInfo::parse(cert).unwrap().serial_hex
    };
    assert_eq!(served_with(&open), before);
    open.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut open).await.starts_with("HTTP/1.1 200"));

    h.shared.set_identity(h.ca.identity("prod", "orders"));
    let after = h.shared.identity().unwrap().serial.clone();
    assert_ne!(before, after);

    // The open connection keeps working on its certificate ...
    open.write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut open).await.starts_with("HTTP/1.1 200"));
    // ... and the next handshake gets the new one.
    let fresh = tls_connect(h.addr, h.client("default", "web"))
        .await
        .unwrap();
    assert_eq!(served_with(&fresh), after);
}

#[tokio::test]
async fn a_silent_client_on_a_plaintext_tcp_port_gets_the_server_first_greeting() {
    let h = Harness::start([127, 0, 30, 16], [127, 0, 31, 16], "tcp-banner", |_| vec![]).await;
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut greeting = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .expect("greeting")
        .unwrap();
    assert_eq!(&greeting, b"220 banner\r\n");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    s.write_all(b"EHLO\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO\r\n");

    // Under STRICT the same silence is not plaintext: nothing reaches the app.
    let mut strict = vec![workload_entry(
        "prod",
        "orders",
        h.addr.ip(),
        "orders",
        &[("tcp-banner", h.port)],
        json!({"annotations": {"trustmesh.io/app-address": h.app_ip.to_string()}}),
    )];
    strict.push(peer_authentication("prod", "STRICT"));
    h.configure(2, strict);
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .is_err(),
        "no greeting under STRICT"
    );
}
