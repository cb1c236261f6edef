//! Route resolution against snapshots built from JSON resources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use serde_json::{Value, json};

fn snapshot(resources: Value) -> Snapshot {
    let cfg = json!({"workload": "default/client", "resources": resources});
    let cfg = trustmesh_api::ProxyConfig::from_json(cfg.to_string().as_bytes()).unwrap();
    let (snap, _) = Snapshot::build(cfg.into_sources()).unwrap_or_else(|f| panic!("{f:?}"));
    snap
}

fn we(ns: &str, name: &str, addr: &str, sa: &str, app: &str, ports: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"address": addr, "serviceAccount": sa, "labels": {"app": app}, "ports": ports}})
}

fn se(ns: &str, name: &str, host: &str, app: &str, ports: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": app}}, "ports": ports}})
}

fn dr(ns: &str, name: &str, host: &str, tp: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"host": host, "trafficPolicy": tp}})
}

fn base() -> Vec<Value> {
    vec![
        we(
            "default",
            "client",
            "127.0.1.2",
            "client",
            "client",
            json!({}),
        ),
        we(
            "production",
            "orders-1",
            "127.0.1.3",
            "orders",
            "orders",
            json!({"http": 9080}),
        ),
        we(
            "production",
            "orders-2",
            "127.0.1.4",
            "orders",
            "orders",
            json!({}),
        ),
        se(
            "production",
            "orders",
            "orders.production.svc.cluster.local",
            "orders",
            json!([{"number": 8080, "name": "http", "protocol": "HTTP", "targetPort": 8081}]),
        ),
    ]
}

fn route(resources: Vec<Value>, host: &str, port: u16) -> Result<Route, OutboundError> {
    let snap = snapshot(Value::Array(resources));
    let client = snap.workload("default", "client").unwrap().clone();
    resolve(&snap, &client, &Target::new(host, port))
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn endpoint_ports_follow_the_workload_entry_port_map_then_target_port() {
    let r = route(base(), "orders.production.svc.cluster.local", 8080).unwrap();
    let addrs: Vec<String> = r.upstreams.iter().map(|u| u.addr.to_string()).collect();
    // orders-1 maps the port name `http` to 9080; orders-2 has no map → targetPort 8081.
    assert_eq!(addrs, ["127.0.1.3:9080", "127.0.1.4:8081"]);
    assert_eq!(r.service_entry, "production/orders");
}

#[test]
fn same_port_number_when_neither_map_nor_target_port() {
    let mut res = base();
    res[3] = se(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        "orders",
        json!([{"number": 8080, "name": "web"}]),
    );
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    let addrs: Vec<String> = r.upstreams.iter().map(|u| u.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.1.3:8080", "127.0.1.4:8080"]);
}

#[test]
fn hosts_are_case_insensitive_and_short_names_use_the_search_path() {
    for host in [
        "ORDERS.Production.svc.cluster.local.",
        "orders.production",
        "orders.production.svc",
    ] {
        let r = route(base(), host, 8080).unwrap();
        assert_eq!(r.host, "orders.production.svc.cluster.local", "{host}");
    }
    // `orders` alone is relative to the client's namespace (`default`): unknown there.
    let e = route(base(), "orders", 8080).unwrap_err();
    assert_eq!(
        e,
        OutboundError::UnknownHost {
            host: "orders".into()
        }
    );
    let mut res = base();
    res.push(we(
        "default",
        "local",
        "127.0.1.9",
        "local",
        "local",
        json!({}),
    ));
    res.push(se(
        "default",
        "local",
        "local.default.svc.cluster.local",
        "local",
        json!([{"number": 80, "name": "http"}]),
    ));
    assert_eq!(
        route(res, "local", 80).unwrap().host,
        "local.default.svc.cluster.local"
    );
}

#[test]
fn unknown_port_and_no_endpoints() {
    let e = route(base(), "orders.production.svc.cluster.local", 9999).unwrap_err();
    assert!(matches!(e, OutboundError::UnknownPort { port: 9999, .. }));
    assert_eq!(e.status(), http::StatusCode::BAD_GATEWAY);
    let mut res = base();
    res.push(se(
        "production",
        "empty",
        "empty.production.svc.cluster.local",
        "nobody",
        json!([{"number": 80, "name": "http"}]),
    ));
    let e = route(res, "empty.production.svc.cluster.local", 80).unwrap_err();
    assert!(matches!(e, OutboundError::NoEndpoints { .. }));
}

#[test]
fn export_to_dot_hides_a_service_from_other_namespaces() {
    let mut res = base();
    let mut s = se(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        "orders",
        json!([{"number": 8080, "name": "http"}]),
    );
    s["spec"]["exportTo"] = json!(["."]);
    res[3] = s;
    let e = route(res, "orders.production.svc.cluster.local", 8080).unwrap_err();
    assert!(matches!(e, OutboundError::UnknownHost { .. }));
}

#[test]
fn auto_mtls_secures_workload_endpoints_with_their_identities() {
    // "No `tls` in the selected DR (or no DR) → auto mTLS: ISTIO_MUTUAL towards endpoints
    // that carry a proxy".
    let r = route(base(), "orders.production.svc.cluster.local", 8080).unwrap();
    for u in &r.upstreams {
        let UpstreamTls::Mesh(m) = &u.tls else {
            panic!("{:?}", u.tls)
        };
        assert_eq!(
            m.allowed,
            [id("spiffe://cluster.local/ns/production/sa/orders")]
        );
        // "ISTIO_MUTUAL uses SNI `outbound_.<port>_.<subset>_.<fqdn>`".
        assert_eq!(
            m.sni,
            "outbound_.8080_._.orders.production.svc.cluster.local"
        );
    }
    assert_eq!(r.limits, Limits::default());
}

#[test]
fn no_auto_mtls_when_the_destination_peer_authentication_is_disable() {
    // "no auto mTLS when the destination's PeerAuthentication mode is DISABLE".
    let mut res = base();
    res.push(
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "off", "namespace": "production"},
        "spec": {"mtls": {"mode": "DISABLE"}}}),
    );
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    assert!(r.upstreams.iter().all(|u| u.tls == UpstreamTls::Plain));
}

#[test]
fn no_auto_mtls_to_mesh_external_services() {
    // "... or the service is mesh-external".
    let mut res = base();
    let mut s = se(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        "orders",
        json!([{"number": 8080, "name": "http"}]),
    );
    s["spec"]["location"] = json!("MESH_EXTERNAL");
    res[3] = s;
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    assert!(r.upstreams.iter().all(|u| u.tls == UpstreamTls::Plain));
}

#[test]
fn subject_alt_names_replace_the_endpoint_identities() {
    let mut res = base();
    let mut s = se(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        "orders",
        json!([{"number": 8080, "name": "http"}]),
    );
    s["spec"]["subjectAltNames"] = json!(["spiffe://cluster.local/ns/production/sa/other"]);
    res[3] = s;
    let r = route(res.clone(), "orders.production.svc.cluster.local", 8080).unwrap();
    let UpstreamTls::Mesh(m) = &r.upstreams[0].tls else {
        panic!()
    };
    assert_eq!(
        m.allowed,
        [id("spiffe://cluster.local/ns/production/sa/other")]
    );
    // The DestinationRule's list wins over the ServiceEntry's.
    res.push(dr(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        json!({"tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["cluster.local/ns/production/sa/third"]}}),
    ));
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    let UpstreamTls::Mesh(m) = &r.upstreams[0].tls else {
        panic!()
    };
    assert_eq!(
        m.allowed,
        [id("spiffe://cluster.local/ns/production/sa/third")]
    );
}

#[test]
fn destination_rule_disable_and_pool_limits() {
    let mut res = base();
    res.push(dr(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        json!({"tls": {"mode": "DISABLE"}, "connectionPool": {
            "tcp": {"maxConnections": 3, "connectTimeout": "250ms", "idleTimeout": "30s"},
            "http": {"http2MaxRequests": 7, "http1MaxPendingRequests": 0,
                     "maxRequestsPerConnection": 2}}}),
    ));
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    assert!(r.upstreams.iter().all(|u| u.tls == UpstreamTls::Plain));
    assert_eq!(r.rule.as_deref(), Some("production/orders"));
    let l = &r.limits;
    assert_eq!(l.max_connections, 3);
    assert_eq!(l.connect_timeout, Duration::from_millis(250));
    assert_eq!(l.max_requests, 7);
    // An explicit 0 is "unset" for Istio: unlimited.
    assert_eq!(l.max_pending_requests, u32::MAX);
    assert_eq!(l.max_requests_per_connection, Some(2));
    // `http.idleTimeout` unset → `tcp.idleTimeout`.
    assert_eq!(l.http_idle_timeout, Some(Duration::from_secs(30)));
}

#[test]
fn simple_tls_takes_the_rule_files_and_sni() {
    let mut res = base();
    res.push(dr(
        "production",
        "orders",
        "orders.production.svc.cluster.local",
        json!({"tls": {"mode": "SIMPLE", "caCertificates": "/etc/ca.pem", "sni": "orders.example"}}),
    ));
    let r = route(res, "orders.production.svc.cluster.local", 8080).unwrap();
    let UpstreamTls::Files(f) = &r.upstreams[0].tls else {
        panic!()
    };
    assert!(!f.mutual);
    assert_eq!(f.ca_certificates.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(f.server_name, "orders.example");
}

#[test]
fn dns_service_without_endpoints_is_reached_at_its_host() {
    let res = vec![
        we(
            "default",
            "client",
            "127.0.1.2",
            "client",
            "client",
            json!({}),
        ),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"hosts": ["*.example.com"], "location": "MESH_EXTERNAL",
                "resolution": "NONE", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}}),
    ];
    let r = route(res, "API.example.com", 443).unwrap();
    assert_eq!(
        r.upstreams,
        [Upstream {
            addr: EndpointAddr::Name {
                host: "api.example.com".into(),
                port: 443
            },
            tls: UpstreamTls::Plain
        }]
    );
}
