//! The whole proxy from `app::build`, against a fake control plane: bootstrap, config stream,
//! inbound on the port the config names, admin/health/metrics, rotation (admin and pushed),
//! a rejected config, the control plane going away, the Workload API, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;
mod scrape;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_support::*;
use scrape::Scrape;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trustmesh_proxy::app::{self, Ports, ProxyOptions};
use trustmesh_proxy::clock::Clock;

const TOKEN: &str = "e2e-token";

/// The proxy's exposition on its metrics port.
async fn scrape(proxy: &app::Running) -> Scrape {
    let (code, text) = http(proxy.metrics_addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    Scrape::parse(&text)
}

/// Waits until the scraped `name` (no labels but `labels`) reads `want`.
async fn metric_reaches(proxy: &app::Running, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    for _ in 0..200 {
        last = scrape(proxy).await.get(name, labels);
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}{labels:?} is {last:?}, never {want}");
}

/// The SVID gauges: exactly one series each, for the SVID in use.
fn assert_svid_gauges(m: &Scrape, proxy: &app::Running) {
    let id = proxy.shared.identity().unwrap();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    for (name, at) in [
        (
            "trustmesh_certificate_expiration_timestamp_seconds",
            id.not_after,
        ),
        (
            "trustmesh_certificate_renewal_timestamp_seconds",
            id.renewal_time,
        ),
    ] {
        let series = m.series(name);
        assert_eq!(series.len(), 1, "{name}: {series:?}");
        assert_eq!(
            series[0].labels,
            [("spiffe_id".to_owned(), id.id.as_str().to_owned())]
        );
        assert_eq!(series[0].value, secs(at), "{name}");
    }
}

/// A plain HTTP/1.1 request to a local endpoint; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let r = exchange(
        s,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    (r.status.unwrap_or(0), r.body)
}

fn resources(proxy_ip: std::net::IpAddr, app_ip: std::net::IpAddr, port: u16) -> Vec<Value> {
    let mut r = vec![
        workload_entry(
            "prod",
            "orders",
            proxy_ip,
            "orders",
            &[("http", port)],
            json!({"annotations": {"trustmesh.io/app-address": app_ip.to_string()}}),
        ),
        peer_authentication("prod", "STRICT"),
    ];
    r.push(authorization_policy(
        "prod",
        "allow-gateway",
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/gateway"]}}]}]}),
    ));
    r
}

#[tokio::test]
async fn a_proxy_bootstraps_follows_its_config_and_serves_until_shut_down() {
    let proxy_ip = ip([127, 0, 60, 2]);
    let app_ip = ip([127, 0, 61, 2]);
    let cp_ip = ip([127, 0, 60, 1]);
    // A free port number for the workload (the proxy binds it once the config names it).
    let port = {
        let l = std::net::TcpListener::bind(SocketAddr::new(proxy_ip, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let ca = std::sync::Arc::new(TestCa::new(TD));
    let bundle = ca.bundle();
    let cp = FakeCp::start(
        SocketAddr::new(cp_ip, 0),
        ca.clone(),
        WORKLOAD,
        "orders",
        Duration::from_secs(24 * 3600),
        Clock::system(),
        TOKEN,
    )
    .await;
    cp.push(update(
        WORKLOAD,
        1,
        resources(proxy_ip, app_ip, port),
        &bundle,
        0,
    ));
    let (_stop_app, stop_app_rx) = tokio::sync::watch::channel(false);
    let app_l = tokio::net::TcpListener::bind(SocketAddr::new(app_ip, port))
        .await
        .unwrap();
    tokio::spawn(trustmesh_proxy::demo_app::serve(
        app_l,
        WORKLOAD.to_owned(),
        stop_app_rx,
    ));

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wl.sock");
    let mut options = ProxyOptions::new(WORKLOAD, cp.addr, bundle.clone());
    options.join_token = Some(TOKEN.to_owned());
    // No listen IP: the proxy learns 127.0.60.2 from its WorkloadEntry, as under `up`.
    options.ports = Ports {
        admin: 0,
        health: 0,
        metrics: 0,
        outbound: 0,
    };
    options.workload_api_socket = Some(socket.clone());
    let proxy = tokio::time::timeout(Duration::from_secs(20), app::build(options))
        .await
        .expect("the proxy starts")
        .unwrap();
    assert_eq!(proxy.listen_ip, proxy_ip);
    assert!(proxy.ready(Duration::from_secs(10)).await);
    let inbound = proxy
        .inbound_addr(port, Duration::from_secs(5))
        .await
        .expect("inbound port open");
    assert_eq!(inbound, SocketAddr::new(proxy_ip, port));

    // Traffic, as the config says.
    let gateway = client_tls(
        Some(&cp.state.ca.identity("default", "gateway")),
        &bundle,
        &[b"http/1.1"],
    );
    let ok = tls_get(inbound, gateway.clone(), "/x").await;
    assert_eq!(ok.status, Some(200), "{}", ok.raw);
    assert!(
        ok.body
            .contains("URI=spiffe://cluster.local/ns/default/sa/gateway"),
        "{}",
        ok.body
    );
    let other = client_tls(
        Some(&cp.state.ca.identity("default", "other")),
        &bundle,
        &[b"http/1.1"],
    );
    let denied = tls_get(inbound, other, "/x").await;
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (Some(403), "RBAC: access denied")
    );
    assert_eq!(plain_get(inbound, "/x").await.status, None, "STRICT");

    // Admin, health, metrics.
    assert_eq!(http(proxy.admin, "GET", "/ready").await.0, 200);
    assert_eq!(http(proxy.health, "GET", "/healthz/ready").await.0, 200);
    let (code, certs) = http(proxy.admin, "GET", "/certs").await;
    assert_eq!(code, 200);
    let certs: Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(
        certs["spiffeId"],
        "spiffe://cluster.local/ns/prod/sa/orders"
    );
    assert!(
        certs["chainPem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    assert_eq!(
        certs["bundles"]["cluster.local"].as_array().unwrap().len(),
        1
    );
    assert!(!certs.to_string().contains("PRIVATE KEY"));
    let serial = certs["serial"].as_str().unwrap().to_owned();
    let (code, dump) = http(proxy.admin, "GET", "/config_dump").await;
    assert_eq!(code, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["workload"], "prod/orders");
    assert_eq!(dump["modes"][port.to_string()], "STRICT");
    assert_eq!(dump["policies"][0]["name"], "prod/allow-gateway");
    assert!(
        dump["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "WorkloadEntry")
    );
    let (code, metrics) = http(proxy.metrics_addr, "GET", "/stats/prometheus").await;
    assert_eq!(code, 200);
    assert!(metrics.contains(r#"response_code="403""#), "{metrics}");
    // The same exposition on the admin port.
    let (code, on_admin) = http(proxy.admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(on_admin.contains(r#"response_code="403""#), "{on_admin}");
    // The first issuance is a rotation; one config accepted, in force, streaming.
    let m = scrape(&proxy).await;
    let one = |name: &str, labels: &[(&str, &str)]| m.get(name, labels);
    let rotations = "trustmesh_certificate_rotations_total";
    let updates = "trustmesh_config_updates_total";
    assert_eq!(one(rotations, &[("result", "success")]), Some(1.0));
    assert_eq!(one(rotations, &[("result", "failure")]), Some(0.0));
    assert_eq!(one(updates, &[("result", "accepted")]), Some(1.0));
    assert_eq!(one(updates, &[("result", "rejected")]), Some(0.0));
    assert_eq!(one("trustmesh_config_version", &[]), Some(1.0));
    assert_eq!(one("trustmesh_control_plane_connected", &[]), Some(1.0));
    assert_svid_gauges(&m, &proxy);
    assert_eq!(
        http(proxy.admin, "POST", "/logging?level=debug").await.0,
        501
    );
    assert_eq!(http(proxy.admin, "GET", "/nope").await.0, 404);

    // An open connection survives every rotation below.
    let mut open = tls_connect(inbound, gateway.clone()).await.unwrap();

    // Admin rotation: a new certificate, over mTLS with the old one.
    let (code, rotated) = http(proxy.admin, "POST", "/rotate").await;
    assert_eq!(code, 200, "{rotated}");
    let rotated: Value = serde_json::from_str(&rotated).unwrap();
    assert_ne!(rotated["serial"], serial.as_str());
    let rotations = "trustmesh_certificate_rotations_total";
    metric_reaches(&proxy, rotations, &[("result", "success")], 2.0).await;
    assert_svid_gauges(&scrape(&proxy).await, &proxy);
    let calls = cp.state.signs();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].peer.is_some() && !calls[1].token);

    // Pushed rotation: `ProxyUpdate.rotation` increasing.
    let before = proxy.shared.identity().unwrap().serial.clone();
    cp.push(update(
        WORKLOAD,
        2,
        resources(proxy_ip, app_ip, port),
        &bundle,
        1,
    ));
    let mut changes = proxy.shared.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while proxy.shared.identity().unwrap().serial == before {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("rotation pushed by the control plane");
    assert_eq!(proxy.shared.view().unwrap().version, 2);
    metric_reaches(&proxy, rotations, &[("result", "success")], 3.0).await;
    let updates = "trustmesh_config_updates_total";
    metric_reaches(&proxy, updates, &[("result", "accepted")], 2.0).await;
    metric_reaches(&proxy, "trustmesh_config_version", &[], 2.0).await;

    // A config that does not validate is ignored: version 2 stays, traffic unchanged.
    let mut bad = resources(proxy_ip, app_ip, port);
    bad.push(authorization_policy(
        "prod",
        "broken",
        json!({"action": "DENY"}),
    ));
    cp.push(update(WORKLOAD, 3, bad, &bundle, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.shared.view().unwrap().version, 2);
    metric_reaches(&proxy, updates, &[("result", "rejected")], 1.0).await;
    assert_eq!(
        scrape(&proxy).await.get("trustmesh_config_version", &[]),
        Some(2.0)
    );
    assert_eq!(
        tls_get(inbound, gateway.clone(), "/y").await.status,
        Some(200)
    );

    // The control plane goes away: the last config is still enforced.
    cp.kill();
    metric_reaches(&proxy, "trustmesh_control_plane_connected", &[], 0.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tls_get(inbound, gateway.clone(), "/z").await.status,
        Some(200)
    );
    let other = client_tls(
        Some(&cp.state.ca.identity("default", "other")),
        &bundle,
        &[b"http/1.1"],
    );
    assert_eq!(tls_get(inbound, other, "/z").await.status, Some(403));
    assert_eq!(http(proxy.admin, "GET", "/ready").await.0, 200);

    open.write_all(b"GET /still HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));

    // It comes back on the same address: the proxy reconnects (with backoff) and follows
    // the new control plane's config.
    let cp2 = FakeCp::start(
        cp.addr,
        ca.clone(),
        WORKLOAD,
        "orders",
        Duration::from_secs(24 * 3600),
        Clock::system(),
        "unused",
    )
    .await;
    let mut only_other = resources(proxy_ip, app_ip, port);
    only_other[2] = authorization_policy(
        "prod",
        "allow-gateway",
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/other"]}}]}]}),
    );
    cp2.push(update(WORKLOAD, 4, only_other, &bundle, 0));
    let mut changes = proxy.shared.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while proxy.shared.view().unwrap().version != 4 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the proxy reconnects to the restarted control plane");
    metric_reaches(&proxy, "trustmesh_control_plane_connected", &[], 1.0).await;
    metric_reaches(&proxy, "trustmesh_config_version", &[], 4.0).await;
    metric_reaches(&proxy, updates, &[("result", "accepted")], 3.0).await;
    // Its rotation counter starts again at 0: a new baseline, not a rotation request.
    assert!(cp2.state.signs().is_empty(), "{:?}", cp2.state.signs());
    assert_eq!(
        tls_get(inbound, gateway.clone(), "/w").await.status,
        Some(403)
    );

    // The Workload API serves the current SVID.
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.cert_chain()[0].as_ref(),
        proxy.shared.identity().unwrap().chain[0].as_ref()
    );

    // Shutdown: listeners closed, socket removed.
    let admin = proxy.admin;
    proxy.shutdown().await;
    assert!(TcpStream::connect(inbound).await.is_err());
    assert!(TcpStream::connect(admin).await.is_err());
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_bad_workload_or_empty_bundle_is_refused_at_start() {
    let cp: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let e = app::build(ProxyOptions::new("orders", cp, TestCa::new(TD).bundle()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"workload "orders" must be <namespace>/<name>"#
    );
    let e = app::build(ProxyOptions::new(
        "prod/orders",
        cp,
        trustmesh_pki::TrustBundleSet::new(),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the bootstrap bundle for prod/orders holds no trust domain"
    );
}
