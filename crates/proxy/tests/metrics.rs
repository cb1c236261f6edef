//! docs/metrics.md end to end: a client proxy's outbound listener (`reporter="source"`) and
//! a server proxy's inbound port (`reporter="destination"`) with real certificates of one
//! CA, the demo app or an echo server behind, and known traffic between them. Each test
//! then reads both expositions and asserts exactly which series exist, with exactly which
//! labels and values: "a request between two meshed workloads is counted twice, once by
//! each reporter".

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;
mod scrape;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_support::*;
use scrape::{Labels, Scrape, Service, Side, istio_http, istio_tcp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use trustmesh_proxy::clock::Clock;
use trustmesh_proxy::discovery::compile_view;
use trustmesh_proxy::inbound::http::RBAC_DENIED_BODY;
use trustmesh_proxy::metrics::Metrics;
use trustmesh_proxy::outbound;
use trustmesh_proxy::state::Shared;

const ORDERS_HOST: &str = "orders.prod.svc.cluster.local";
const PINNED_HOST: &str = "pinned.prod.svc.cluster.local";
const DB_HOST: &str = "db.prod.svc.cluster.local";
const CLIENT_ADDRESS: &str = "127.0.40.9";

/// The mesh both proxies see: MeshConfig names the trust domain's network `us`; `prod/orders`
/// (version v2, a canonical revision) behind the server proxy, serving `port` as `port_name`;
/// `default/client` (version v1, a canonical name) behind the client proxy; ServiceEntries
/// for the port, one of which pins an identity orders does not hold; a dry-run ALLOW for a
/// gateway that never calls; on HTTP, a DENY on `/admin*`.
fn mesh(port_name: &str, port: u16, proxy_ip: IpAddr, app_ip: IpAddr) -> Vec<Value> {
    let (service_port, protocol) = if port_name == "http" {
        (8080, "HTTP")
    } else {
        (9000, "TCP")
    };
    let se = |name: &str, host: &str, extra: Value| {
        let mut spec = json!({"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "orders"}},
            "ports": [{"number": service_port, "name": port_name, "protocol": protocol}]});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                spec[k] = v;
            }
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": name, "namespace": "prod"}, "spec": spec})
    };
    let mut resources = vec![
        json!({"apiVersion": "trustmesh.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh"},
               "spec": {"networks": {"us": {"trustDomain": TD}}}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": "orders", "namespace": "prod",
                            "annotations": {"trustmesh.io/app-address": app_ip.to_string()}},
               "spec": {"address": proxy_ip.to_string(), "serviceAccount": "orders",
                        "labels": {"app": "orders", "version": "v2",
                                   "service.istio.io/canonical-revision": "2024-06"},
                        "ports": {port_name: port}}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": "client", "namespace": "default"},
               "spec": {"address": CLIENT_ADDRESS, "serviceAccount": "client",
                        "labels": {"app": "client", "version": "v1",
                                   "service.istio.io/canonical-name": "storefront"}}}),
        if port_name == "http" {
            se("orders", ORDERS_HOST, json!({}))
        } else {
            se("db", DB_HOST, json!({}))
        },
        se(
            "pinned",
            PINNED_HOST,
            json!({"subjectAltNames": ["spiffe://cluster.local/ns/prod/sa/someone-else"]}),
        ),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "gateway-only", "namespace": "prod",
                            "annotations": {"istio.io/dry-run": "true"}},
               "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/gateway"]}}]}]}}),
    ];
    // Only on HTTP: a DENY rule with HTTP-only fields matches every TCP connection.
    if port_name == "http" {
        resources.push(authorization_policy(
            "prod",
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        ));
    }
    resources
}

/// The client proxy: `default/client` with an SVID of the harness's CA, its outbound
/// listener on loopback, counting into its own metrics.
struct ClientProxy {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: watch::Sender<bool>,
}

async fn client_proxy(h: &Harness, resources: Vec<Value>) -> ClientProxy {
    let shared = Shared::new("default/client");
    shared.set_identity(h.ca.identity("default", "client"));
    let up = update("default/client", 1, resources, &h.ca.bundle(), 0);
    let view = compile_view(&shared, &up, &h.ca.bundle(), &Clock::system()).unwrap();
    shared.set_view(view);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(outbound::serve(listener, shared, metrics.clone(), rx));
    ClientProxy {
        addr,
        metrics,
        _stop: stop,
    }
}

/// The app's request through its proxy: (status, body).
async fn through(proxy: &ClientProxy, method: &str, uri: &str, body: Vec<u8>) -> (u16, Bytes) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn client_side() -> Side {
    Side {
        workload: "client".into(),
        namespace: "default".into(),
        principal: "spiffe://cluster.local/ns/default/sa/client".into(),
        app: "client".into(),
        version: "v1".into(),
        canonical_service: "storefront".into(),
        canonical_revision: "latest".into(),
        cluster: "us".into(),
    }
}

fn orders_side() -> Side {
    Side {
        workload: "orders".into(),
        namespace: "prod".into(),
        principal: "spiffe://cluster.local/ns/prod/sa/orders".into(),
        app: "orders".into(),
        version: "v2".into(),
        canonical_service: "orders".into(),
        canonical_revision: "2024-06".into(),
        cluster: "us".into(),
    }
}

/// Waits until `check` passes on a fresh scrape of `metrics` (the histograms are observed
/// when a body ends, which may be just after the client read its last byte).
async fn settled(metrics: &Metrics, check: impl Fn(&Scrape) -> Result<(), String>) -> Scrape {
    let mut last = String::new();
    for _ in 0..100 {
        let m = Scrape::parse(&metrics.render());
        match check(&m) {
            Ok(()) => return m,
            Err(e) => last = format!("{e}\n{}", m.text),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics never settled: {last}");
}

/// `name`'s series must be exactly `want`.
fn exactly(m: &Scrape, name: &str, want: &[(Labels, f64)]) -> Result<(), String> {
    let got = m.matching(name, &[]);
    let want: BTreeMap<Labels, f64> = want.iter().cloned().collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("{name}:\n got  {got:?}\n want {want:?}"))
    }
}

fn nonzero(m: &Scrape, name: &str, direction: &str) -> Vec<(String, f64)> {
    m.series(name)
        .into_iter()
        .filter(|s| s.value > 0.0 && s.labels[0].1 == direction)
        .map(|s| (s.labels[1].1.clone(), s.value))
        .collect()
}

#[tokio::test]
async fn http_requests_are_counted_once_by_each_reporter_with_their_labels() {
    let h = Harness::start_with([127, 0, 40, 2], [127, 0, 41, 2], "http", |port, p, a| {
        mesh("http", port, p, a)
    })
    .await;
    let client = client_proxy(&h, mesh("http", h.port, h.addr.ip(), h.app_ip)).await;
    let url = |host: &str, path: &str| format!("http://{host}:8080{path}");

    // Three GETs and a 1000-byte POST, allowed; a GET the destination's DENY refuses.
    let mut ok_bytes = 0;
    for i in 0..3 {
        let (status, body) = through(
            &client,
            "GET",
            &url(ORDERS_HOST, &format!("/ok/{i}")),
            vec![],
        )
        .await;
        assert_eq!(status, 200, "{body:?}");
        ok_bytes += body.len();
    }
    let (status, body) =
        through(&client, "POST", &url(ORDERS_HOST, "/upload"), vec![7; 1000]).await;
    assert_eq!(status, 200, "{body:?}");
    ok_bytes += body.len();
    let (status, body) = through(&client, "GET", &url(ORDERS_HOST, "/admin/users"), vec![]).await;
    assert_eq!((status, &body[..]), (403, RBAC_DENIED_BODY.as_bytes()));
    // A host no ServiceEntry declares: 502 from the client proxy (Envoy's NR).
    let (status, _) = through(&client, "GET", "http://nope.example/x", vec![]).await;
    assert_eq!(status, 502);
    // A service whose pinned identity orders does not hold: secure naming fails the
    // handshake, 503 with UF.
    let (status, body) = through(&client, "GET", &url(PINNED_HOST, "/"), vec![]).await;
    assert_eq!(status, 503, "{body:?}");
    // Straight to the server proxy: plaintext (PERMISSIVE), a certificate from another CA,
    // and no certificate.
    let plain = plain_get(h.addr, "/plain").await;
    assert_eq!(plain.status, Some(200), "{}", plain.raw);
    let rogue = TestCa::new(TD);
    let cfg = client_tls(
        Some(&rogue.identity("default", "client")),
        &h.ca.bundle(),
        &[b"http/1.1"],
    );
    assert_eq!(tls_get(h.addr, cfg, "/").await.status, None);
    let anonymous = client_tls(None, &h.ca.bundle(), &[b"http/1.1"]);
    assert_eq!(tls_get(h.addr, anonymous, "/").await.status, None);

    let orders_svc = Service::new(ORDERS_HOST, "orders", "prod");
    let (client_s, orders) = (client_side(), orders_side());

    // reporter="destination": the four allowed requests and the denied one from the client
    // (known by its SVID: workload, app, version, canonical name, network), the plaintext
    // one with every source_* unknown.
    let dest = |src: &Side, code, flags, security| {
        istio_http(
            "destination",
            src,
            &orders,
            &orders_svc,
            code,
            flags,
            security,
        )
    };
    let dest_ok = dest(&client_s, "200", "-", "mutual_tls");
    let dest_denied = dest(&client_s, "403", "DENY", "mutual_tls");
    let dest_plain = dest(&Side::unknown(), "200", "-", "none");
    let want_dest = [
        (dest_ok.clone(), 4.0),
        (dest_denied.clone(), 1.0),
        (dest_plain.clone(), 1.0),
    ];
    let server = settled(&h.metrics, |m| {
        exactly(m, "istio_requests_total", &want_dest)?;
        exactly(m, "istio_request_duration_milliseconds_count", &want_dest)?;
        exactly(m, "istio_request_bytes_count", &want_dest)?;
        exactly(m, "istio_response_bytes_count", &want_dest)
    })
    .await;

    // reporter="source": the same five as the client proxy saw them (the 403 came from
    // upstream: no flag of its own), security policy unknown; the unknown host and the
    // secure-naming failure with their flags and no destination peer.
    let source = |dst: &Side, svc: &Service, code, flags| {
        istio_http("source", &client_s, dst, svc, code, flags, "unknown")
    };
    let src_ok = source(&orders, &orders_svc, "200", "-");
    let src_denied = source(&orders, &orders_svc, "403", "-");
    let src_nr = source(
        &Side::unknown(),
        &Service::new("nope.example", "unknown", "unknown"),
        "502",
        "NR",
    );
    let src_uf = source(
        &Side::unknown(),
        &Service::new(PINNED_HOST, "pinned", "prod"),
        "503",
        "UF",
    );
    let want_src = [
        (src_ok.clone(), 4.0),
        (src_denied.clone(), 1.0),
        (src_nr, 1.0),
        (src_uf, 1.0),
    ];
    let client_m = settled(&client.metrics, |m| {
        exactly(m, "istio_requests_total", &want_src)?;
        exactly(m, "istio_request_duration_milliseconds_count", &want_src)?;
        exactly(m, "istio_request_bytes_count", &want_src)?;
        exactly(m, "istio_response_bytes_count", &want_src)
    })
    .await;

    // Body bytes as they streamed, the same on both sides.
    for (m, ok, denied) in [
        (&server, &dest_ok, &dest_denied),
        (&client_m, &src_ok, &src_denied),
    ] {
        assert_eq!(m.value("istio_request_bytes_sum", ok), Some(1000.0));
        assert_eq!(
            m.value("istio_response_bytes_sum", ok),
            Some(ok_bytes as f64)
        );
        assert_eq!(
            m.value("istio_response_bytes_sum", denied),
            Some(RBAC_DENIED_BODY.len() as f64)
        );
        // 1000 bytes fall in the le="1000" bucket, the three empty GETs in le="1".
        assert_eq!(
            m.value("istio_request_bytes_bucket", &ok.with("le", "1")),
            Some(3.0)
        );
        assert_eq!(
            m.value("istio_request_bytes_bucket", &ok.with("le", "100")),
            Some(3.0)
        );
        assert_eq!(
            m.value("istio_request_bytes_bucket", &ok.with("le", "1000")),
            Some(4.0)
        );
        assert_eq!(
            m.value("istio_request_bytes_bucket", &ok.with("le", "+Inf")),
            Some(4.0)
        );
    }

    // Handshakes: the client proxy made one pooled connection and failed one on secure
    // naming; the server accepted that one, and refused the rogue certificate, the missing
    // one, and the client proxy's abort (its alert says our certificate was bad).
    let result = |m: &Scrape, d, r| {
        m.get(
            "trustmesh_tls_handshakes_total",
            &[("direction", d), ("result", r)],
        )
    };
    assert_eq!(result(&client_m, "outbound", "success"), Some(1.0));
    assert_eq!(result(&client_m, "outbound", "failure"), Some(1.0));
    assert_eq!(
        nonzero(
            &client_m,
            "trustmesh_tls_handshake_failures_total",
            "outbound"
        ),
        [("bad_identity".to_owned(), 1.0)]
    );
    assert_eq!(result(&server, "inbound", "success"), Some(1.0));
    assert_eq!(result(&server, "inbound", "failure"), Some(3.0));
    assert_eq!(
        nonzero(&server, "trustmesh_tls_handshake_failures_total", "inbound"),
        [
            ("bad_certificate".to_owned(), 1.0),
            ("no_client_certificate".to_owned(), 1.0),
            ("unknown_ca".to_owned(), 1.0),
        ]
    );

    // Authorization at the destination: five allowed with no ALLOW policy attached (the
    // dry-run one does not count), one denied by the DENY; and for all six, what the dry-run
    // ALLOW would have done (deny: none is the gateway).
    let decision = |policy, action, decision, dry_run| {
        Labels::from(
            &[
                ("destination_workload", "orders"),
                ("destination_workload_namespace", "prod"),
                ("policy", policy),
                ("action", action),
                ("decision", decision),
                ("dry_run", dry_run),
            ][..],
        )
    };
    exactly(
        &server,
        "trustmesh_authz_decisions_total",
        &[
            (decision("none", "NONE", "allow", "false"), 5.0),
            (decision("prod/deny-admin", "DENY", "deny", "false"), 1.0),
            (decision("prod/gateway-only", "ALLOW", "deny", "true"), 6.0),
        ],
    )
    .unwrap();
    assert!(
        client_m
            .series("trustmesh_authz_decisions_total")
            .is_empty()
    );
    // No TCP series on an HTTP port.
    assert!(
        server
            .series("istio_tcp_connections_opened_total")
            .is_empty()
    );
    assert!(
        client_m
            .series("istio_tcp_connections_opened_total")
            .is_empty()
    );
}

/// Opens a CONNECT tunnel through the client proxy; the stream once the answer was 200.
async fn tunnel(proxy: &ClientProxy, target: &str) -> (String, Option<TcpStream>) {
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

#[tokio::test]
async fn tcp_tunnels_are_counted_by_both_reporters_with_their_bytes() {
    let h = Harness::start_with([127, 0, 40, 3], [127, 0, 41, 3], "tcp", |port, p, a| {
        let mut r = mesh("tcp", port, p, a);
        r.push(authorization_policy(
            "prod",
            "db-clients",
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}]}]}),
        ));
        r
    })
    .await;
    let client = client_proxy(&h, mesh("tcp", h.port, h.addr.ip(), h.app_ip)).await;

    // One tunnel: 11 bytes out, 11 echoed back, closed by the app.
    let (head, s) = tunnel(&client, &format!("{DB_HOST}:9000")).await;
    let mut s = s.unwrap_or_else(|| panic!("{head}"));
    s.write_all(b"hello mesh\n").await.unwrap();
    let mut echo = [0u8; 11];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello mesh\n");
    drop(s);
    // A host nobody declares: refused with 502 (NR).
    let (head, s) = tunnel(&client, "nope.example:9000").await;
    assert!(s.is_none() && head.starts_with("HTTP/1.1 502"), "{head}");
    // Straight to the server proxy: an identity the ALLOW does not name.
    let mut denied = tls_connect(h.addr, h.client("default", "intruder"))
        .await
        .unwrap();
    let _ = denied.write_all(b"x").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), denied.read_to_end(&mut out)).await;
    assert!(out.is_empty());

    let db = Service::new(DB_HOST, "db", "prod");
    let (client_s, orders) = (client_side(), orders_side());
    let intruder = Side {
        namespace: "default".into(),
        principal: "spiffe://cluster.local/ns/default/sa/intruder".into(),
        cluster: "us".into(),
        ..Side::unknown()
    };
    let d_ok = istio_tcp("destination", &client_s, &orders, &db, "-", "mutual_tls");
    let d_deny = istio_tcp("destination", &intruder, &orders, &db, "DENY", "mutual_tls");
    let server = settled(&h.metrics, |m| {
        exactly(
            m,
            "istio_tcp_connections_closed_total",
            &[(d_ok.clone(), 1.0), (d_deny.clone(), 1.0)],
        )
    })
    .await;
    for (name, want) in [
        ("istio_tcp_connections_opened_total", [1.0, 1.0]),
        ("istio_tcp_sent_bytes_total", [11.0, 0.0]),
        ("istio_tcp_received_bytes_total", [11.0, 0.0]),
    ] {
        exactly(
            &server,
            name,
            &[(d_ok.clone(), want[0]), (d_deny.clone(), want[1])],
        )
        .unwrap();
    }

    let s_ok = istio_tcp("source", &client_s, &orders, &db, "-", "unknown");
    let s_nr = istio_tcp(
        "source",
        &client_s,
        &Side::unknown(),
        &Service::new("nope.example", "unknown", "unknown"),
        "NR",
        "unknown",
    );
    let client_m = settled(&client.metrics, |m| {
        exactly(
            m,
            "istio_tcp_connections_closed_total",
            &[(s_ok.clone(), 1.0), (s_nr.clone(), 1.0)],
        )
    })
    .await;
    for (name, want) in [
        ("istio_tcp_connections_opened_total", [1.0, 1.0]),
        ("istio_tcp_sent_bytes_total", [11.0, 0.0]),
        ("istio_tcp_received_bytes_total", [11.0, 0.0]),
    ] {
        exactly(
            &client_m,
            name,
            &[(s_ok.clone(), want[0]), (s_nr.clone(), want[1])],
        )
        .unwrap();
    }
    // No HTTP series for tunnels.
    assert!(client_m.series("istio_requests_total").is_empty());
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
    exactly(
        &server,
        "trustmesh_authz_decisions_total",
        &[
            decision("prod/db-clients", "allow", 1.0),
            decision("none", "deny", 1.0),
            (
                Labels::from(
                    &[
                        ("destination_workload", "orders"),
                        ("destination_workload_namespace", "prod"),
                        ("policy", "prod/gateway-only"),
                        ("action", "ALLOW"),
                        ("decision", "deny"),
                        ("dry_run", "true"),
                    ][..],
                ),
                2.0,
            ),
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn labels_are_in_the_documented_order_and_the_exposition_is_well_formed() {
    let h = Harness::start_with([127, 0, 40, 4], [127, 0, 41, 4], "http", |port, p, a| {
        mesh("http", port, p, a)
    })
    .await;
    assert_eq!(plain_get(h.addr, "/").await.status, Some(200));
    let m = Scrape::parse(&h.metrics.render());
    for name in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_sum",
    ] {
        let s = &m.series(name)[0];
        let names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, scrape::HTTP_LABEL_ORDER, "{name}");
    }
    // Every family the catalogue lists is declared, with its type.
    for (name, kind) in [
        ("istio_requests_total", "counter"),
        ("istio_request_duration_milliseconds", "histogram"),
        ("istio_request_bytes", "histogram"),
        ("istio_response_bytes", "histogram"),
        ("istio_tcp_connections_opened_total", "counter"),
        ("istio_tcp_connections_closed_total", "counter"),
        ("istio_tcp_sent_bytes_total", "counter"),
        ("istio_tcp_received_bytes_total", "counter"),
        ("trustmesh_tls_handshakes_total", "counter"),
        ("trustmesh_tls_handshake_failures_total", "counter"),
        ("trustmesh_authz_decisions_total", "counter"),
        ("trustmesh_certificate_rotations_total", "counter"),
        (
            "trustmesh_certificate_expiration_timestamp_seconds",
            "gauge",
        ),
        ("trustmesh_certificate_renewal_timestamp_seconds", "gauge"),
        ("trustmesh_config_updates_total", "counter"),
        ("trustmesh_config_version", "gauge"),
        ("trustmesh_control_plane_connected", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert!(
            m.text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "{name} {kind}\n{}",
            m.text
        );
    }
    // Envoy's duration buckets, in order.
    let les: Vec<String> = m
        .series("istio_request_duration_milliseconds_bucket")
        .iter()
        .map(|s| s.labels.last().unwrap().1.clone())
        .collect();
    assert_eq!(
        les,
        [
            "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
            "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"
        ]
    );
}

/// GET `path` from a local HTTP endpoint: (status, content-type, body).
async fn fetch(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

/// Serves `metrics` on a loopback port with the proxy's own metrics endpoint (15090).
async fn metrics_endpoint(metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(trustmesh_proxy::admin::serve_http1(
        l,
        stop,
        move |_, req| trustmesh_proxy::admin::metrics(metrics.clone(), req),
    ));
    addr
}

/// The one lint docs/metrics.md accepts: Istio's name for the duration histogram.
const ALLOWED_LINT: &str =
    r#"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#;

/// Pipes `text` into `promtool check metrics`; panics on exit code 1 (errors) or on any
/// output line but the allowed lint.
fn promtool_check(what: &str, text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool not found ({e}): install the Debian package `prometheus` \
             (apt-get install prometheus), which ships /usr/bin/promtool"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool found errors in the {what} exposition:\n{output}\n---\n{text}"
    );
    // The one lint proves promtool read the families (an empty input passes silently).
    assert!(
        output.contains(ALLOWED_LINT),
        "promtool did not lint the duration histogram:\n{output}"
    );
    let unexpected: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != ALLOWED_LINT)
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool on the {what} exposition (exit {:?}):\n{}\n---\n{text}",
        out.status.code(),
        unexpected.join("\n")
    );
}

#[tokio::test]
async fn the_live_exposition_passes_promtool_check_metrics() {
    let h = Harness::start_with([127, 0, 40, 5], [127, 0, 41, 5], "http", |port, p, a| {
        mesh("http", port, p, a)
    })
    .await;
    let client = client_proxy(&h, mesh("http", h.port, h.addr.ip(), h.app_ip)).await;
    let url = format!("http://{ORDERS_HOST}:8080");
    // Every kind of series: requests allowed and denied, an unknown host, secure naming
    // failing, plaintext, a refused handshake.
    assert_eq!(
        through(&client, "GET", &format!("{url}/a"), vec![]).await.0,
        200
    );
    assert_eq!(
        through(&client, "POST", &format!("{url}/b"), vec![1; 50])
            .await
            .0,
        200
    );
    assert_eq!(
        through(&client, "GET", &format!("{url}/admin"), vec![])
            .await
            .0,
        403
    );
    assert_eq!(
        through(&client, "GET", "http://nope.example/", vec![])
            .await
            .0,
        502
    );
    let pinned = format!("http://{PINNED_HOST}:8080/");
    assert_eq!(through(&client, "GET", &pinned, vec![]).await.0, 503);
    assert_eq!(plain_get(h.addr, "/p").await.status, Some(200));
    let anonymous = client_tls(None, &h.ca.bundle(), &[b"http/1.1"]);
    assert_eq!(tls_get(h.addr, anonymous, "/").await.status, None);

    let (_stop, stop) = watch::channel(false);
    for (what, metrics) in [
        ("server", h.metrics.clone()),
        ("client", client.metrics.clone()),
    ] {
        let addr = metrics_endpoint(metrics, stop.clone()).await;
        let (status, ctype, text) = fetch(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(ctype, trustmesh_metrics::CONTENT_TYPE);
        assert!(text.contains("istio_requests_total{"), "{text}");
        promtool_check(what, &text);
    }
}
