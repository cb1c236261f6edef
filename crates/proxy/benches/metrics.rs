//! What the metrics add to one request on the proxy's hot path (budget: well under 1 µs of
//! the ≤ 12 µs per request of the proxy pair).
//!
//! Run: `cargo bench -p trustmesh-proxy --bench metrics`.
//!
//! - `request/*`: one whole HTTP request's recording as the inbound proxy does it —
//!   `Exchange::start` (clock, request-bytes cell), `respond` (series lookup in the
//!   connection's base, `istio_requests_total` add), the response body's end (three
//!   histogram observations), and the authorization decision counter.
//! - `request/outbound_base_for_pooled_peer`: the outbound proxy's extra per-request lookup
//!   (the route's base for the peer of the pooled connection).
//! - `connection/*`: the per-connection lookup of the base for a known client identity.
//! - `family_get/*`: for comparison, the naive way — `Family::get` with all 26 label values
//!   per request, which the bases exist to avoid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Empty;
use serde_json::json;
use trustmesh_api::ProxyConfig;
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{InboundPolicy, PolicySet, Request};
use trustmesh_core::snapshot::Snapshot;
use trustmesh_metrics::{Counter, Family};
use trustmesh_proxy::metrics::{Exchange, Metrics};

/// A mesh of 50 workloads, with a ServiceEntry for `prod/orders` and one ALLOW policy.
fn snapshot() -> Snapshot {
    let mut resources = vec![
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": "orders", "namespace": "prod"},
               "spec": {"hosts": ["orders.prod.svc.cluster.local"], "location": "MESH_INTERNAL",
                        "resolution": "STATIC", "workloadSelector": {"labels": {"app": "orders"}},
                        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "allow-web", "namespace": "prod"},
               "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]}}),
    ];
    for i in 0..50 {
        let (ns, name) = if i == 0 {
            ("prod".to_owned(), "orders".to_owned())
        } else {
            ("web".to_owned(), format!("web-{i}"))
        };
        resources.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"address": format!("127.0.1.{}", i + 1), "serviceAccount": name,
                     "labels": {"app": name, "version": "v1"}, "ports": {"http": 8080}}}),
        );
    }
    let cfg = json!({"workload": "prod/orders", "resources": resources});
    let cfg = ProxyConfig::from_json(cfg.to_string().as_bytes()).unwrap();
    Snapshot::build(cfg.into_sources()).unwrap().0
}

fn bench(c: &mut Criterion) {
    let snapshot = snapshot();
    let own = snapshot.workload("prod", "orders").unwrap().clone();
    let metrics = Metrics::default();
    let labels = metrics.labels_for(&snapshot, &own);
    let peer = SpiffeId::parse("spiffe://cluster.local/ns/web/sa/web-7").unwrap();
    let base = labels.inbound(Some(&peer), 8080);
    let set = PolicySet::from_snapshot(&snapshot);
    let policy = InboundPolicy::from_snapshot(&snapshot, &set, &own.namespace, &own.labels);
    let ip: IpAddr = "127.0.1.8".parse().unwrap();
    let decision = policy.decide(&Request {
        peer: Some(peer.clone()),
        source_ip: ip,
        dest_ip: ip,
        dest_port: 8080,
        sni: None,
        http: None,
    });
    assert!(decision.allowed);
    let headers = HeaderMap::new();

    let mut g = c.benchmark_group("request");
    g.bench_function("200_record_whole_request", |b| {
        b.iter(|| {
            let ex = Exchange::start(black_box(&headers));
            let resp = ex.respond(&base, "-", Response::new(Empty::<Bytes>::new()));
            drop(black_box(resp));
        })
    });
    g.bench_function("403_deny_record_whole_request", |b| {
        b.iter(|| {
            let ex = Exchange::start(black_box(&headers));
            let mut r = Response::new(Empty::<Bytes>::new());
            *r.status_mut() = StatusCode::FORBIDDEN;
            drop(black_box(ex.respond(&base, "DENY", r)));
        })
    });
    g.bench_function("authz_decision_counter", |b| {
        b.iter(|| labels.count_decision(black_box(&decision), &policy.authz))
    });
    g.finish();

    // Outbound: per request, the route's base for the peer of the pooled connection.
    let route = labels.route(labels.service_of("orders.prod.svc.cluster.local", Some("prod")));
    let server = SpiffeId::parse("spiffe://cluster.local/ns/prod/sa/orders").unwrap();
    route.base(Some(&server));
    g = c.benchmark_group("request");
    g.bench_function("outbound_base_for_pooled_peer", |b| {
        b.iter(|| black_box(route.base(black_box(Some(&server)))))
    });
    g.finish();

    let mut g = c.benchmark_group("connection");
    g.bench_function("inbound_base_for_known_peer", |b| {
        b.iter(|| black_box(labels.inbound(black_box(Some(&peer)), 8080)))
    });
    g.finish();

    let mut g = c.benchmark_group("family_get");
    let f: Family<Counter> = Family::new("x_total", "x", LABELS26);
    let values: Vec<String> = (0..26)
        .map(|i| format!("value-number-{i}-of-a-typical-length"))
        .collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    f.get(&refs).inc();
    g.bench_function("26_labels_hit_and_inc", |b| {
        b.iter(|| f.get(black_box(&refs)).inc())
    });
    g.finish();
}

const LABELS26: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t", "u", "v", "w", "x", "y", "z",
];

criterion_group!(benches, bench);
criterion_main!(benches);
