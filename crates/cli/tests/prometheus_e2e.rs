//! A real Prometheus (Debian package `prometheus`) scraping a running local mesh: `trustmesh
//! up --prometheus on` of the example, known traffic through the proxies, then the operators'
//! queries asked of Prometheus' HTTP API — the numbers must be the traffic's. Also: every
//! expression of the shipped dashboard runs, every metric name the dashboard and the alert
//! rules use is one the running processes expose, and the alert rules load and evaluate.
//!
//! Counting follows Istio: a request between two meshed workloads is reported by both proxies
//! (`reporter="source"` and `reporter="destination"`); only the destination knows the
//! connection's security (`security_policy="unknown"` at the source), so the mTLS query counts
//! each request once and the 403 query counts a denied meshed request twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[allow(dead_code)] // shared with mesh_e2e, which uses more of it
#[path = "mesh_e2e/harness.rs"]
mod harness;
#[allow(dead_code)] // shared with observability, which uses more of it
#[path = "observability/kit.rs"]
mod kit;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use harness::*;
use serde_json::Value;

/// Allowed mTLS requests gateway → orders (second round).
const ALLOWED: usize = 5;
/// Denied (403) mTLS requests gateway → orders.
const DENIED: usize = 3;
/// Plaintext requests from outside the mesh to the gateway's PERMISSIVE port.
const PLAINTEXT: usize = 2;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/v1/...` of the Prometheus at `at`, as JSON with `status: success`.
fn api(at: SocketAddr, path: &str) -> Value {
    let r = get(at, path, &[]).unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
    let v: Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("Prometheus {path}: {e}: {}", r.body));
    assert_eq!(v["status"], "success", "Prometheus {path}: {v}");
    v
}

/// An instant query's result vector.
fn query(at: SocketAddr, q: &str) -> Vec<Value> {
    api(at, &format!("/api/v1/query?query={}", encode(q)))["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of a query that returns one sample (None if it returns none).
fn scalar(at: SocketAddr, q: &str) -> Option<f64> {
    let r = query(at, q);
    assert!(r.len() <= 1, "{q} returned {} series: {r:?}", r.len());
    r.first()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
}

#[test]
fn prometheus_scraping_the_mesh_answers_the_operators_queries() {
    assert!(
        std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test runs a real Prometheus: install the Debian package `prometheus` (`.ci/run` does)"
    );
    let prom = free_port();
    let mesh = Mesh::start_with(&[
        "--prometheus",
        "on",
        "--prometheus-listen",
        &prom.to_string(),
        "--scrape-interval",
        "1",
    ]);
    let printed = mesh.up_output();
    assert!(
        printed.contains(&format!("Prometheus on http://{prom}")),
        "`up` must say where Prometheus is:\n{printed}"
    );
    // Prometheus is up and sees every process of the mesh.
    let targets = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let r = query(prom, "up == 1");
        (r.len() == 1 + WORKLOADS.len()).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus does not see the control plane and {} proxies up: {:?}\n{}",
            WORKLOADS.len(),
            query(prom, "up"),
            std::fs::read_to_string(mesh.state.join("logs/prometheus.log")).unwrap_or_default()
        )
    });
    eprintln!("[prometheus] {} targets up", targets.len());

    // Known traffic, in two rounds. Prometheus' rate() sees only increases between two
    // scrapes of a series, and a series appears with its first request: the first round
    // creates the series and is scraped, the second is what rate() must see.
    let gw = format!("http://{GATEWAY}:15001");
    let orders = format!("{ORDERS_URL}/api/orders");
    let round = |allowed: usize, denied: usize, plaintext: usize| {
        for _ in 0..allowed {
            let c = curl(&["-x", &gw, &orders]);
            assert_eq!(c.status, Some(200), "{c:?}");
        }
        for _ in 0..denied {
            let c = curl(&["-x", &gw, &format!("{ORDERS_URL}/admin")]);
            assert_eq!(c.status, Some(403), "{c:?}");
        }
        for _ in 0..plaintext {
            let c = curl(&[&format!("http://{GATEWAY}:8080/hello")]);
            assert_eq!(c.status, Some(200), "{c:?}");
        }
    };
    round(1, 1, 1);
    let scraped = poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let v = scalar(
            prom,
            r#"sum(istio_requests_total{security_policy="mutual_tls"})"#,
        )?;
        (v == 2.0).then_some(v)
    });
    assert_eq!(scraped, Some(2.0), "the first round was not scraped");
    round(ALLOWED, DENIED, PLAINTEXT);
    // A TLS client without a certificate at orders' STRICT port: a failed mTLS handshake.
    let c = curl(&["-k", &format!("https://{ORDERS}:8080/api/orders")]);
    assert_eq!(
        c.status, None,
        "no client certificate must get no answer: {c:?}"
    );

    // The operators' queries, as totals (what their rate() is the derivative of) ...
    let mtls = (1 + ALLOWED + 1 + DENIED) as f64;
    let got = poll(Duration::from_secs(30), Duration::from_millis(500), || {
        let v = scalar(
            prom,
            r#"sum(istio_requests_total{security_policy="mutual_tls"})"#,
        )?;
        (v == mtls).then_some(v)
    });
    assert_eq!(
        got,
        Some(mtls),
        "sum(istio_requests_total{{security_policy=\"mutual_tls\"}}): {:?}",
        query(
            prom,
            r#"istio_requests_total{security_policy="mutual_tls"}"#
        )
    );
    // Both proxies report a denied meshed request (Istio's reporters).
    let denied = poll(Duration::from_secs(10), Duration::from_millis(500), || {
        let v = scalar(prom, r#"sum(istio_requests_total{response_code="403"})"#)?;
        (v == (2 * (1 + DENIED)) as f64).then_some(v)
    });
    assert_eq!(
        denied,
        Some((2 * (1 + DENIED)) as f64),
        "403s: {:?}",
        query(prom, r#"istio_requests_total{response_code="403"}"#)
    );
    assert_eq!(
        scalar(
            prom,
            r#"sum(istio_requests_total{response_code="403",reporter="destination"})"#
        ),
        Some((1 + DENIED) as f64)
    );
    assert_eq!(
        scalar(
            prom,
            r#"sum(istio_requests_total{security_policy="none",reporter="destination"})"#
        ),
        Some((1 + PLAINTEXT) as f64),
        "plaintext requests at the gateway: {:?}",
        query(prom, r#"istio_requests_total{security_policy="none"}"#)
    );
    // ... and as written, with rate() over 5m: the second round's requests per second of
    // the window. Prometheus extrapolates the increase it saw between the first and last
    // sample towards the window's ends (at most half a scrape interval back, since the
    // series began inside the window), so the figure is the second round's count, or a
    // little more, divided by 300 s.
    std::thread::sleep(Duration::from_secs(3));
    for (q, second_round) in [
        (
            r#"sum(rate(istio_requests_total{security_policy="mutual_tls"}[5m]))"#,
            ALLOWED + DENIED,
        ),
        (
            r#"sum(rate(istio_requests_total{response_code="403"}[5m]))"#,
            2 * DENIED,
        ),
    ] {
        let per_window = scalar(prom, q).unwrap_or(0.0) * 300.0;
        eprintln!("[prometheus] {q} × 300 s = {per_window:.2} (second round: {second_round})");
        assert!(
            (second_round as f64 * 0.99..=second_round as f64 * 1.6).contains(&per_window),
            "{q} × 300 s = {per_window}, the second round was {second_round} requests"
        );
    }
    // The failed handshake, by reason, at orders' inbound side.
    let failures = poll(Duration::from_secs(10), Duration::from_millis(500), || {
        let r = query(
            prom,
            r#"sum by (reason) (trustmesh_tls_handshake_failures_total{direction="inbound",workload="orders"}) > 0"#,
        );
        (!r.is_empty()).then_some(r)
    })
    .expect("orders counted no inbound handshake failure");
    let reasons: Vec<&str> = failures
        .iter()
        .map(|s| s["metric"]["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["no_client_certificate"], "{failures:?}");

    // Hours left on every certificate, as the operators' query computes it: each was issued
    // at this mesh's start, so it is its lifetime (from the notBefore gauge) less minutes.
    // The workload SVIDs live 24 h (+60 s of backdating); the example's service
    // Certificates 24 h, its root CA ten years.
    let hours = query(
        prom,
        "(certmanager_certificate_expiration_timestamp_seconds - time()) / 3600",
    );
    let lifetimes = query(
        prom,
        "(certmanager_certificate_expiration_timestamp_seconds - certmanager_certificate_not_before_timestamp_seconds) / 3600",
    );
    let value = |s: &Value| -> f64 { s["value"][1].as_str().unwrap().parse().unwrap() };
    assert_eq!(hours.len(), lifetimes.len(), "{hours:?}\n{lifetimes:?}");
    let mut svids = 0;
    for s in &hours {
        let h = value(s);
        let life = lifetimes
            .iter()
            .find(|l| l["metric"] == s["metric"])
            .map(value)
            .unwrap_or_else(|| panic!("no lifetime for {}", s["metric"]));
        assert!(
            h <= life && life - h < 0.25,
            "hours left {h} of a {life} h certificate issued minutes ago: {}",
            s["metric"]
        );
        if s["metric"]["issuer_kind"] == "MeshCA" {
            svids += 1;
            assert!(
                (24.0..24.02).contains(&life),
                "SVID lifetime {life} h: {}",
                s["metric"]
            );
        }
        if s["metric"]["name"] == "orders" && s["metric"]["issuer_kind"] == "ClusterIssuer" {
            assert!((life - 24.0).abs() < 0.01, "orders' Certificate: {life} h");
        }
    }
    assert_eq!(svids, WORKLOADS.len(), "one SVID per workload: {hours:?}");
    assert!(
        hours
            .iter()
            .any(|s| s["metric"]["issuer_kind"] == "ClusterIssuer"),
        "the example's cert-manager Certificates: {hours:?}"
    );
    // Every proxy holds its config stream.
    assert_eq!(
        scalar(prom, "sum(trustmesh_control_plane_proxy_connected)"),
        Some(WORKLOADS.len() as f64)
    );

    // The dashboard's expressions all run, and every name it and the rules use is emitted.
    let queries = kit::dashboard_queries(&kit::dashboard());
    assert!(queries.len() >= 10, "{} queries", queries.len());
    for q in &queries {
        let expr = kit::substitute_grafana_variables(&q.expr);
        let r = get(prom, &format!("/api/v1/query?query={}", encode(&expr)), &[]).unwrap();
        assert!(
            r.body.contains("\"status\":\"success\""),
            "dashboard {}: {expr}\n{}",
            q.place,
            r.body
        );
    }
    let mut emitted = BTreeSet::new();
    let scrape = |a: SocketAddr| get(a, "/metrics", &[]).unwrap().body;
    let mut bodies = vec![scrape(CP_ADMIN.parse().unwrap())];
    bodies.extend(WORKLOADS.iter().map(|ip| scrape(addr(ip, 15090))));
    for body in &bodies {
        for l in body.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, _kind) = rest.split_once(' ').unwrap();
                emitted.insert(name.to_owned());
            }
        }
    }
    let used = kit::kit_metric_families();
    let missing: Vec<&String> = used.iter().filter(|n| !emitted.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alert rules use names no process emits: {missing:?}"
    );
    eprintln!(
        "[prometheus] {} dashboard queries ran; {} metric families used, all emitted",
        queries.len(),
        used.len()
    );

    // The shipped rules are loaded and evaluate cleanly; none of the certificate or
    // connectivity alerts fires on this healthy mesh.
    let groups = poll(Duration::from_secs(15), Duration::from_millis(500), || {
        let v = api(prom, "/api/v1/rules");
        let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    })
    .unwrap_or_else(|| {
        panic!(
            "rules not loaded or not healthy: {}",
            api(prom, "/api/v1/rules")
        )
    });
    for r in &groups {
        let name = r["name"].as_str().unwrap_or_default();
        if [
            "CertificateExpiringSoon",
            "CertificateNotReady",
            "ProxyDisconnectedFromControlPlane",
            "ControlPlaneConfigRejected",
        ]
        .contains(&name)
        {
            assert_eq!(r["state"], "inactive", "{name} on a healthy mesh: {r}");
        }
    }
    eprintln!(
        "[prometheus] {} alert rules loaded and healthy",
        groups.len()
    );
    mesh.stop();
}
