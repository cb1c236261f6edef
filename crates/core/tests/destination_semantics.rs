//! Digest §4 (DestinationRule): selection (§4.3), structure and overrides (§4.2), client TLS
//! and auto mTLS (§4.1), connection pool defaults (§4.4). The client is in `client` with
//! `app: sleep`; the service is `reviews.prod.svc.cluster.local` in `prod`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use trustmesh_core::destination::{
    Client, Endpoint, Level, Service, resolve, resolve_host, select,
};
use trustmesh_core::model::DestinationRule;
use trustmesh_core::model::networking::TlsMode;
use trustmesh_core::model::security::MtlsMode;

const HOST: &str = "reviews.prod.svc.cluster.local";

fn selected(rules: &[DestinationRule]) -> Option<(Vec<String>, Level)> {
    let l = labels(&[("app", "sleep")]);
    select(
        rules,
        "istio-system",
        Client {
            namespace: "client",
            labels: &l,
        },
        Service {
            host: HOST,
            namespace: "prod",
        },
    )
    .map(|s| (s.rules.iter().map(|r| r.to_string()).collect(), s.level))
}

fn tls(m: &str) -> serde_json::Value {
    json!({"tls": {"mode": m}})
}

#[test]
fn which_rule_applies_4_3() {
    type Row = (
        &'static str,
        Vec<DestinationRule>,
        Option<(Vec<&'static str>, Level)>,
    );
    let rows: Vec<Row> = vec![
        ("no rule → none", vec![], None),
        (
            "1. DRs in C (visible to C)",
            vec![
                dr("client", "c", None, json!({"host": HOST})),
                dr("prod", "p", None, json!({"host": HOST})),
            ],
            Some((vec!["client/c"], Level::ClientNamespace)),
        ),
        (
            "1. ... even with `exportTo: [\".\"]` (the client's own namespace)",
            vec![
                dr(
                    "client",
                    "c",
                    None,
                    json!({"host": HOST, "exportTo": ["."]}),
                ),
                dr("prod", "p", None, json!({"host": HOST})),
            ],
            Some((vec!["client/c"], Level::ClientNamespace)),
        ),
        (
            "2. else DRs in N exported to C",
            vec![
                dr("prod", "p", None, json!({"host": "reviews"})),
                dr("istio-system", "r", None, json!({"host": HOST})),
            ],
            Some((vec!["prod/p"], Level::ServiceNamespace)),
        ),
        (
            "`exportTo`: ... `.` = own namespace (not exported to C: falls to the root)",
            vec![
                dr(
                    "prod",
                    "p",
                    None,
                    json!({"host": "reviews", "exportTo": ["."]}),
                ),
                dr("istio-system", "r", None, json!({"host": HOST})),
            ],
            Some((vec!["istio-system/r"], Level::RootNamespace)),
        ),
        (
            "`exportTo`: ... named namespaces",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "exportTo": ["client"]}),
            )],
            Some((vec!["prod/p"], Level::ServiceNamespace)),
        ),
        (
            "`exportTo`: `*` = all",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "exportTo": ["*"]}),
            )],
            Some((vec!["prod/p"], Level::ServiceNamespace)),
        ),
        (
            "3. else DRs in the root namespace exported to C",
            vec![dr("istio-system", "r", None, json!({"host": "*.local"}))],
            Some((vec!["istio-system/r"], Level::RootNamespace)),
        ),
        (
            "First level with any match wins — **no field-level inheritance across levels** (a wildcard in C beats an exact in N)",
            vec![
                dr("client", "c", None, json!({"host": "*.svc.cluster.local"})),
                dr("prod", "p", None, json!({"host": HOST})),
            ],
            Some((vec!["client/c"], Level::ClientNamespace)),
        ),
        (
            "most specific host match (exact beats wildcard ...)",
            vec![
                dr(
                    "client",
                    "w",
                    None,
                    json!({"host": "*.prod.svc.cluster.local"}),
                ),
                dr("client", "e", None, json!({"host": HOST})),
            ],
            Some((vec!["client/e"], Level::ClientNamespace)),
        ),
        (
            "... longer wildcard wins",
            vec![
                dr("client", "short", None, json!({"host": "*.local"})),
                dr(
                    "client",
                    "long",
                    None,
                    json!({"host": "*.prod.svc.cluster.local"}),
                ),
            ],
            Some((vec!["client/long"], Level::ClientNamespace)),
        ),
        (
            "`host` ... short names resolved **relative to the DR's namespace** (`reviews` in client is not prod's reviews)",
            vec![
                dr("client", "c", None, json!({"host": "reviews"})),
                dr("prod", "p", None, json!({"host": "reviews"})),
            ],
            Some((vec!["prod/p"], Level::ServiceNamespace)),
        ),
        (
            "Wildcards `*.foo.svc.cluster.local`, `*.local`, `*` (`*`)",
            vec![dr("istio-system", "all", None, json!({"host": "*"}))],
            Some((vec!["istio-system/all"], Level::RootNamespace)),
        ),
        (
            "`workloadSelector`: DR applies only to client proxies with those labels (matching)",
            vec![
                dr(
                    "client",
                    "sel",
                    None,
                    json!({"host": HOST, "workloadSelector": {"matchLabels": {"app": "sleep"}}}),
                ),
                dr("client", "all", None, json!({"host": HOST})),
            ],
            Some((vec!["client/sel"], Level::ClientNamespace)),
        ),
        (
            "`workloadSelector` ... (not matching: the rule is as if absent)",
            vec![
                dr(
                    "client",
                    "sel",
                    None,
                    json!({"host": HOST, "workloadSelector": {"matchLabels": {"app": "other"}}}),
                ),
                dr("prod", "p", None, json!({"host": "reviews"})),
            ],
            Some((vec!["prod/p"], Level::ServiceNamespace)),
        ),
        (
            "`workloadSelector` ... in the DR's namespace (a selector DR elsewhere never applies)",
            vec![dr(
                "prod",
                "sel",
                None,
                json!({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "sleep"}}}),
            )],
            None,
        ),
        (
            "Multiple DRs for the same host at the same level are merged (oldest first)",
            vec![
                dr(
                    "prod",
                    "b",
                    Some("2024-01-01T00:00:00Z"),
                    json!({"host": "reviews"}),
                ),
                dr(
                    "prod",
                    "a",
                    Some("2024-06-01T00:00:00Z"),
                    json!({"host": HOST}),
                ),
            ],
            Some((vec!["prod/b", "prod/a"], Level::ServiceNamespace)),
        ),
    ];
    for (quote, rules, want) in rows {
        let want = want.map(|(v, l)| (v.into_iter().map(str::to_owned).collect::<Vec<_>>(), l));
        assert_eq!(selected(&rules), want, "{quote}");
    }
}

#[test]
fn merge_of_rules_at_one_level_4_3() {
    // "subsets concatenated (duplicates dropped), first rule's top-level `trafficPolicy` wins,
    // later ones only fill if the first had none".
    let l = labels(&[]);
    let rules = vec![
        dr(
            "prod",
            "first",
            Some("2024-01-01T00:00:00Z"),
            json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"v": "1"}}]}),
        ),
        dr(
            "prod",
            "second",
            Some("2024-02-01T00:00:00Z"),
            json!({"host": "reviews", "trafficPolicy": tls("DISABLE"), "subsets": [{"name": "v1", "labels": {"v": "x"}}, {"name": "v2", "labels": {"v": "2"}}]}),
        ),
        dr(
            "prod",
            "third",
            Some("2024-03-01T00:00:00Z"),
            json!({"host": "reviews", "trafficPolicy": tls("SIMPLE")}),
        ),
    ];
    let s = select(
        &rules,
        "istio-system",
        Client {
            namespace: "client",
            labels: &l,
        },
        Service {
            host: HOST,
            namespace: "prod",
        },
    )
    .unwrap();
    let names: Vec<&str> = s.subsets.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2"]);
    assert_eq!(
        s.subsets[0].labels.get("v").map(String::as_str),
        Some("1"),
        "duplicate dropped, first kept"
    );
    let mode = s.traffic_policy.and_then(|p| p.tls).map(|t| t.mode);
    assert_eq!(
        mode,
        Some(TlsMode::Disable),
        "the first rule had none, so the second fills it; the third does not"
    );
}

#[test]
fn short_host_resolution() {
    // "`host` (required): registry name; short names resolved **relative to the DR's namespace**."
    assert_eq!(resolve_host("reviews", "prod"), HOST);
    assert_eq!(resolve_host("reviews.prod.svc.cluster.local", "x"), HOST);
    assert_eq!(resolve_host("*.example.com", "x"), "*.example.com");
    assert_eq!(resolve_host("*", "x"), "*");
}

fn endpoint(mode: MtlsMode) -> Endpoint {
    Endpoint {
        has_proxy: true,
        mtls_mode: mode,
        mesh_external: false,
    }
}

fn dest(
    rules: &[DestinationRule],
    port: u16,
    subset: Option<&str>,
    ep: Endpoint,
) -> trustmesh_core::destination::Destination {
    let l = labels(&[("app", "sleep")]);
    resolve(
        rules,
        "istio-system",
        Client {
            namespace: "client",
            labels: &l,
        },
        Service {
            host: HOST,
            namespace: "prod",
        },
        port,
        subset,
        ep,
    )
}

#[test]
fn client_tls_and_auto_mtls_4_1() {
    let none: Vec<DestinationRule> = vec![];
    type Row = (&'static str, Vec<DestinationRule>, Endpoint, TlsMode, bool);
    let rows: Vec<Row> = vec![
        (
            "No `tls` ... (or no DR) → **auto mTLS**: ISTIO_MUTUAL towards endpoints that carry a proxy",
            none.clone(),
            endpoint(MtlsMode::Strict),
            TlsMode::IstioMutual,
            true,
        ),
        (
            "auto mTLS to a PERMISSIVE endpoint",
            none.clone(),
            endpoint(MtlsMode::Permissive),
            TlsMode::IstioMutual,
            true,
        ),
        (
            "..., plaintext to others",
            none.clone(),
            Endpoint {
                has_proxy: false,
                ..endpoint(MtlsMode::Permissive)
            },
            TlsMode::Disable,
            true,
        ),
        (
            "no auto mTLS when the destination's PeerAuthentication mode is DISABLE",
            none.clone(),
            endpoint(MtlsMode::Disable),
            TlsMode::Disable,
            true,
        ),
        (
            "no auto mTLS when ... the service is mesh-external",
            none,
            Endpoint {
                mesh_external: true,
                ..endpoint(MtlsMode::Permissive)
            },
            TlsMode::Disable,
            true,
        ),
        (
            "No `tls` in the selected DR → auto mTLS (a DR with only a connection pool)",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}}),
            )],
            endpoint(MtlsMode::Strict),
            TlsMode::IstioMutual,
            true,
        ),
        (
            "`DISABLE` (0) | plaintext (explicit, even to a STRICT endpoint)",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "trafficPolicy": tls("DISABLE")}),
            )],
            endpoint(MtlsMode::Strict),
            TlsMode::Disable,
            false,
        ),
        (
            "`SIMPLE` | TLS, server-auth only",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "reviews.example"}}}),
            )],
            endpoint(MtlsMode::Strict),
            TlsMode::Simple,
            false,
        ),
        (
            "`ISTIO_MUTUAL` | mesh mTLS with workload cert (explicit)",
            vec![dr(
                "prod",
                "p",
                None,
                json!({"host": "reviews", "trafficPolicy": tls("ISTIO_MUTUAL")}),
            )],
            endpoint(MtlsMode::Disable),
            TlsMode::IstioMutual,
            false,
        ),
    ];
    for (quote, rules, ep, mode, auto) in rows {
        let d = dest(&rules, 9080, None, ep);
        assert_eq!((d.tls.mode, d.tls.auto_mtls), (mode, auto), "{quote}");
    }
    // "ISTIO_MUTUAL uses SNI `outbound_.<port>_.<subset>_.<fqdn>`".
    let d = dest(&[], 9080, Some("v1"), endpoint(MtlsMode::Strict));
    assert_eq!(
        d.tls.sni.as_deref(),
        Some("outbound_.9080_.v1_.reviews.prod.svc.cluster.local")
    );
    let d = dest(&[], 9080, None, endpoint(MtlsMode::Strict));
    assert_eq!(
        d.tls.sni.as_deref(),
        Some("outbound_.9080_._.reviews.prod.svc.cluster.local")
    );
    let d = dest(
        &[dr(
            "prod",
            "p",
            None,
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "x.example"}}}),
        )],
        9080,
        None,
        endpoint(MtlsMode::Strict),
    );
    assert_eq!(d.tls.sni.as_deref(), Some("x.example"));
}

#[test]
fn port_level_and_subset_overrides_4_2() {
    let rule = dr(
        "prod",
        "p",
        None,
        json!({"host": "reviews",
        "trafficPolicy": {
            "tls": {"mode": "ISTIO_MUTUAL"},
            "connectionPool": {"tcp": {"maxConnections": 100}},
            "portLevelSettings": [{"port": {"number": 9443}, "connectionPool": {"tcp": {"maxConnections": 7}}}]
        },
        "subsets": [
            {"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 10}}}},
            {"name": "v2", "labels": {"v": "2"}, "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}}
        ]}),
    );
    let rules = [rule];
    let ep = endpoint(MtlsMode::Permissive);
    // Top level applies to a port without port-level settings.
    let d = dest(&rules, 9080, None, ep);
    assert_eq!(d.connection_pool.max_connections, 100);
    assert_eq!(d.tls.mode, TlsMode::IstioMutual);
    // "**portLevelSettings replace, not merge**: ... default values will be applied to fields
    // omitted": port 9443 sets only the pool, so tls falls back to no tls → auto mTLS.
    let d = dest(&rules, 9443, None, ep);
    assert_eq!(d.connection_pool.max_connections, 7);
    assert!(d.policy.tls.is_none());
    assert!(d.tls.auto_mtls);
    // "subset policy overrides top-level **per top-level field** (... each replaced wholesale if set)".
    let d = dest(&rules, 9080, Some("v1"), ep);
    assert_eq!(d.connection_pool.http2_max_requests, 10);
    assert_eq!(
        d.connection_pool.max_connections,
        u32::MAX,
        "connectionPool replaced wholesale"
    );
    assert_eq!(
        d.tls.mode,
        TlsMode::IstioMutual,
        "tls inherited from the top level"
    );
    // A subset's port-level entry replaces every field for that port.
    let d = dest(&rules, 9080, Some("v2"), ep);
    assert!(d.policy.load_balancer.is_some());
    assert!(d.policy.tls.is_none());
    // "Subset policies apply only when a route targets the subset."
    let d = dest(&rules, 9080, None, ep);
    assert_eq!(d.connection_pool.http2_max_requests, u32::MAX);
}

#[test]
fn connection_pool_defaults_4_4() {
    let d = dest(&[], 80, None, endpoint(MtlsMode::Permissive));
    let p = &d.connection_pool;
    // "`tcp.maxConnections` (per upstream host, default 2^32-1), `tcp.connectTimeout` (default 10s ...)".
    assert_eq!(p.max_connections, u32::MAX);
    assert_eq!(p.connect_timeout.as_duration(), Duration::from_secs(10));
    // "`tcp.idleTimeout` (default 1h; 0s disables)"; "`http.idleTimeout` (default 1h)".
    assert_eq!(p.tcp_idle_timeout.as_duration(), Duration::from_secs(3600));
    assert_eq!(p.http_idle_timeout.as_duration(), Duration::from_secs(3600));
    // "`http.http1MaxPendingRequests` (... default 2^32-1 ...), `http.http2MaxRequests` (... default 2^32-1 ...)".
    assert_eq!(p.http1_max_pending_requests, u32::MAX);
    assert_eq!(p.http2_max_requests, u32::MAX);
    // "`http.maxRequestsPerConnection` (0 = unlimited ...)", "`http.maxRetries` (... default 2^32-1)".
    assert_eq!(p.max_requests_per_connection, None);
    assert_eq!(p.max_retries, u32::MAX);
    // "`http.maxConcurrentStreams` (default 2^31-1)".
    assert_eq!(p.max_concurrent_streams, (1u32 << 31) - 1);
    let d = dest(
        &[dr(
            "prod",
            "p",
            None,
            json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
                "tcp": {"maxConnections": 1, "connectTimeout": "30ms", "idleTimeout": "0s"},
                "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1, "maxRetries": 3}
            }}}),
        )],
        80,
        None,
        endpoint(MtlsMode::Permissive),
    );
    let p = &d.connection_pool;
    assert_eq!(p.max_connections, 1);
    assert_eq!(p.connect_timeout.as_duration(), Duration::from_millis(30));
    assert_eq!(p.tcp_idle_timeout.as_duration(), Duration::ZERO);
    assert_eq!(p.http1_max_pending_requests, 1);
    assert_eq!(
        p.max_requests_per_connection,
        Some(1),
        "1 disables keep-alive"
    );
    assert_eq!(p.max_retries, 3);
}
