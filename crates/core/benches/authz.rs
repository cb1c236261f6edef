//! Authorization decision time with 1,000 policies in the destination's namespace and 10,000
//! in the mesh (goal: ≤ 1 µs per decision, DESIGN.md "Budgets"), and compile time for
//! 10,000 policies.
//!
//! Run: `cargo bench -p trustmesh-core --bench authz`.
//!
//! The mesh: 100 namespaces × 100 policies = 10,000, plus 10 mesh-wide policies in the root
//! namespace; the destination namespace `ns0` holds 1,000 (its 100 plus 900 more). Policies
//! select workloads by `app` (100 apps per namespace), as Istio users write them, so a
//! workload has ~10 attached policies of its namespace, 1 namespace-wide DENY and the
//! mesh-wide ones. The worst case attaches all 1,000 of the namespace to the workload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{AuthzSettings, HttpRequest, PolicySet, Request};
use trustmesh_core::model::AuthorizationPolicy;

fn policy(ns: &str, name: &str, spec: Value) -> AuthorizationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap()
}

/// A typical ALLOW: callers by principal and namespace, GET/POST on a path prefix, one port.
fn allow(i: usize, selector: Option<String>) -> Value {
    let mut spec = json!({
        "action": "ALLOW",
        "rules": [{
            "from": [{"source": {"principals": [format!("cluster.local/ns/client{}/sa/caller{i}", i % 50)]}},
                     {"source": {"namespaces": [format!("team-{i}")]}}],
            "to": [{"operation": {"methods": ["GET", "POST"], "paths": [format!("/api/v{i}/*"), "/healthz"], "ports": ["8080"]}}],
            "when": [{"key": "request.headers[x-tenant]", "values": [format!("t{i}"), "shared*"]}]
        }]
    });
    if let Some(app) = selector {
        spec["selector"] = json!({"matchLabels": {"app": app}});
    }
    spec
}

fn mesh(worst_case: bool) -> Vec<AuthorizationPolicy> {
    let mut out = Vec::with_capacity(10_010);
    for n in 0..100 {
        let ns = format!("ns{n}");
        let count = if n == 0 { 1_000 } else { 100 };
        for i in 0..count {
            let selector = (!(worst_case && n == 0)).then(|| format!("app-{}", i % 100));
            out.push(policy(&ns, &format!("p{i}"), allow(i, selector)));
        }
        out.push(policy(
            &ns,
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}], "from": [{"source": {"notNamespaces": [ns.clone()]}}]}]}),
        ));
    }
    for i in 0..10 {
        out.push(policy(
            "istio-system",
            &format!("mesh-{i}"),
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": [format!("192.0.{i}.0/24")]}}]}]}),
        ));
    }
    out
}

/// A request the last attached ALLOW policy allows (every other policy is evaluated first).
fn request(i: usize, tcp: bool) -> Request {
    Request {
        peer: Some(
            SpiffeId::from_principal(&format!("cluster.local/ns/client{}/sa/caller{i}", i % 50))
                .unwrap(),
        ),
        source_ip: IpAddr::from([10, 1, 2, 3]),
        dest_ip: IpAddr::from([10, 0, 0, 7]),
        dest_port: 8080,
        sni: Some("outbound_.8080_._.app-7.ns0.svc.cluster.local".into()),
        http: (!tcp).then(|| HttpRequest {
            method: "GET".into(),
            target: format!("/api/v{i}/items/42?page=2"),
            host: Some("app-7.ns0.svc.cluster.local:8080".into()),
            headers: vec![
                ("x-tenant".into(), format!("t{i}")),
                ("user-agent".into(), "bench/1.0".into()),
                ("accept".into(), "*/*".into()),
            ],
        }),
    }
}

fn bench(c: &mut Criterion) {
    let settings = AuthzSettings::default();
    let labels: BTreeMap<String, String> = [("app".to_owned(), "app-7".to_owned())].into();

    let typical = mesh(false);
    let set = PolicySet::new(&typical, &settings);
    let wl = set.for_workload("ns0", &labels);
    // The last attached ALLOW: app-7 is selected by p7, p107, ..., p907.
    let http = request(907, false);
    let d = wl.evaluate(&http);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy.as_deref(), Some("ns0/p907"));
    let attached = wl.attached().count();
    c.bench_function(
        &format!("decide/http/1k-in-ns-10k-mesh ({attached} attached)"),
        |b| b.iter(|| wl.evaluate(black_box(&http))),
    );
    let tcp = request(907, true);
    c.bench_function(
        &format!("decide/tcp/1k-in-ns-10k-mesh ({attached} attached)"),
        |b| b.iter(|| wl.evaluate(black_box(&tcp))),
    );
    let denied = request(3, false); // p3 selects app-3, not app-7: no ALLOW matches.
    assert!(!wl.evaluate(&denied).allowed);
    c.bench_function(
        &format!("decide/http-deny/1k-in-ns-10k-mesh ({attached} attached)"),
        |b| b.iter(|| wl.evaluate(black_box(&denied))),
    );

    let worst = mesh(true);
    let wset = PolicySet::new(&worst, &settings);
    let wwl = wset.for_workload("ns0", &labels);
    let last = request(999, false);
    assert_eq!(wwl.evaluate(&last).policy.as_deref(), Some("ns0/p999"));
    let wattached = wwl.attached().count();
    c.bench_function(
        &format!("decide/http/worst-case ({wattached} attached)"),
        |b| b.iter(|| wwl.evaluate(black_box(&last))),
    );

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("policy-set/10k", |b| {
        b.iter_batched(
            || (),
            |()| PolicySet::new(black_box(&typical), &settings),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("for-workload/10k-mesh", |b| {
        b.iter(|| set.for_workload(black_box("ns0"), black_box(&labels)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
