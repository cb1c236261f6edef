//! Admission rules for `DestinationRule`, `WorkloadEntry` and `ServiceEntry` (digest §4;
//! Istio `pkg/config/validation/validation.go` `ValidateDestinationRule`, `validateTLS`,
//! `ValidateWorkloadEntry`, `ValidateServiceEntry`), plus trustmesh's: a WorkloadEntry's
//! address must be an IP, because its proxy binds there.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Ctx, dns1123_label, ip_blocks, label_selector, no_empty_strings};
use crate::model::networking::{
    ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection,
    SERVICE_PROTOCOLS, TlsMode, TrafficPolicy, WorkloadEntrySpec,
};
use crate::model::{DestinationRule, ServiceEntry, WorkloadEntry};

pub(super) fn destination_rule(dr: &DestinationRule, cx: &mut Ctx<'_>) {
    let spec = &dr.spec;
    // "`host` (required)".
    if spec.host.is_empty() {
        cx.error("spec.host", "host is required");
    }
    let has_selector = spec
        .workload_selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if let Some(sel) = &spec.workload_selector {
        label_selector(sel, "spec.workloadSelector", cx);
    }
    export_to(&spec.export_to, "spec.exportTo", cx);
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", has_selector, cx);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        // Istio validateSubset: "subset name is invalid" / duplicate names.
        if subset.name.is_empty() {
            cx.error(format!("{f}.name"), "subset name is required");
        } else if !names.insert(subset.name.as_str()) {
            cx.error(
                format!("{f}.name"),
                format!("duplicate subset name {:?}", subset.name),
            );
        } else if let Err(e) = dns1123_label(&subset.name) {
            cx.error(format!("{f}.name"), e);
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(tp, &format!("{f}.trafficPolicy"), has_selector, cx);
        }
    }
}

fn traffic_policy(tp: &TrafficPolicy, field: &str, has_selector: bool, cx: &mut Ctx<'_>) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(lb, &format!("{field}.loadBalancer"), cx);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(cp, &format!("{field}.connectionPool"), cx);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(od, &format!("{field}.outlierDetection"), cx);
    }
    if let Some(tls) = &tp.tls {
        client_tls(tls, &format!("{field}.tls"), has_selector, cx);
    }
    for (name, set) in [
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
        ("retryBudget", tp.retry_budget.is_some()),
    ] {
        if set {
            cx.warn(
                format!("{field}.{name}"),
                format!("{name} is not implemented by trustmesh and is ignored"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        // Istio: "port must be specified"; port 1..65535; one entry per port.
        match pls.port {
            None => cx.error(format!("{f}.port"), "port must be specified"),
            Some(p) if !(1..=65535).contains(&p.number) => {
                cx.error(
                    format!("{f}.port.number"),
                    format!("port number {} must be in the range 1..65535", p.number),
                );
            }
            Some(p) => {
                if !seen.insert(p.number) {
                    cx.error(
                        format!("{f}.port.number"),
                        format!("duplicate portLevelSettings for port {}", p.number),
                    );
                }
            }
        }
        if let Some(lb) = &pls.load_balancer {
            load_balancer(lb, &format!("{f}.loadBalancer"), cx);
        }
        if let Some(cp) = &pls.connection_pool {
            connection_pool(cp, &format!("{f}.connectionPool"), cx);
        }
        if let Some(od) = &pls.outlier_detection {
            outlier_detection(od, &format!("{f}.outlierDetection"), cx);
        }
        if let Some(tls) = &pls.tls {
            client_tls(tls, &format!("{f}.tls"), has_selector, cx);
        }
    }
}

fn load_balancer(lb: &LoadBalancerSettings, field: &str, cx: &mut Ctx<'_>) {
    for (name, set) in [
        ("consistentHash", lb.consistent_hash.is_some()),
        ("localityLbSetting", lb.locality_lb_setting.is_some()),
        ("warmup", lb.warmup.is_some()),
    ] {
        if set {
            cx.warn(
                format!("{field}.{name}"),
                format!("{name} is not implemented by trustmesh and is ignored"),
            );
        }
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        cx.error(field, "only one of simple or consistentHash can be set");
    }
}

fn connection_pool(cp: &ConnectionPoolSettings, field: &str, cx: &mut Ctx<'_>) {
    // Istio validateConnectionPool: "max connections must be non-negative", ... and
    // "connect timeout must be greater than 1ms" ("`tcp.connectTimeout` (default 10s, ≥1ms)").
    if let Some(tcp) = &cp.tcp {
        non_negative(
            tcp.max_connections,
            &format!("{field}.tcp.maxConnections"),
            cx,
        );
        if let Some(t) = tcp.connect_timeout
            && t.as_duration() < std::time::Duration::from_millis(1)
        {
            cx.error(
                format!("{field}.tcp.connectTimeout"),
                format!("connect timeout {t} must be at least 1ms"),
            );
        }
    }
    if let Some(http) = &cp.http {
        non_negative(
            http.http1_max_pending_requests,
            &format!("{field}.http.http1MaxPendingRequests"),
            cx,
        );
        non_negative(
            http.http2_max_requests,
            &format!("{field}.http.http2MaxRequests"),
            cx,
        );
        non_negative(
            http.max_requests_per_connection,
            &format!("{field}.http.maxRequestsPerConnection"),
            cx,
        );
        non_negative(http.max_retries, &format!("{field}.http.maxRetries"), cx);
        non_negative(
            http.max_concurrent_streams,
            &format!("{field}.http.maxConcurrentStreams"),
            cx,
        );
    }
    if cp.tcp.is_none() && cp.http.is_none() {
        cx.error(field, "must have at least one of tcp or http set");
    }
}

fn non_negative(v: Option<i32>, field: &str, cx: &mut Ctx<'_>) {
    if let Some(n) = v
        && n < 0
    {
        cx.error(field, format!("must be non-negative, found {n}"));
    }
}

fn outlier_detection(od: &OutlierDetection, field: &str, cx: &mut Ctx<'_>) {
    // Istio validateOutlierDetection: percentages in 0..100.
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(p) = v
            && !(0..=100).contains(&p)
        {
            cx.error(
                format!("{field}.{name}"),
                format!("{name} must be in range [0, 100], found {p}"),
            );
        }
    }
    non_negative(
        od.consecutive_errors,
        &format!("{field}.consecutiveErrors"),
        cx,
    );
}

fn client_tls(tls: &ClientTlsSettings, field: &str, has_selector: bool, cx: &mut Ctx<'_>) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    match tls.mode {
        // "`ISTIO_MUTUAL` | mesh mTLS with workload cert; all other tls fields must be empty".
        // Istio's validateTLS spells out which: "cannot specify client certificates or CA
        // certificate or credentialName when mode is ISTIO_MUTUAL" (sni and subjectAltNames
        // stay allowed: they narrow secure naming).
        TlsMode::IstioMutual => {
            for (name, v) in [
                ("clientCertificate", &tls.client_certificate),
                ("privateKey", &tls.private_key),
                ("caCertificates", &tls.ca_certificates),
                ("credentialName", &tls.credential_name),
            ] {
                if set(v) {
                    cx.error(
                        format!("{field}.{name}"),
                        "cannot specify client certificates or CA certificate or credentialName when mode is ISTIO_MUTUAL",
                    );
                }
            }
        }
        // "`MUTUAL` | TLS with `clientCertificate`+`privateKey` (or `credentialName`)".
        TlsMode::Mutual if !set(&tls.credential_name) => {
            if !set(&tls.client_certificate) {
                cx.error(
                    format!("{field}.clientCertificate"),
                    "client certificate required for mutual tls",
                );
            }
            if !set(&tls.private_key) {
                cx.error(
                    format!("{field}.privateKey"),
                    "private key required for mutual tls",
                );
            }
        }
        _ => {}
    }
    // "`credentialName` on sidecars only with `workloadSelector`."
    if set(&tls.credential_name) && !has_selector {
        cx.error(
            format!("{field}.credentialName"),
            "credentialName can only be used on sidecars with a workloadSelector",
        );
    }
    no_empty_strings(
        &tls.subject_alt_names,
        &format!("{field}.subjectAltNames"),
        cx,
    );
}

fn export_to(values: &[String], field: &str, cx: &mut Ctx<'_>) {
    // Istio ValidateExportTo: ".", "*", "~" or a namespace; "*" cannot be combined; no duplicates.
    let mut seen = BTreeSet::new();
    for (i, v) in values.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !seen.insert(v.as_str()) {
            cx.error(f, format!("duplicate entry {v:?} in exportTo"));
        } else if !matches!(v.as_str(), "." | "*" | "~")
            && let Err(e) = dns1123_label(v)
        {
            cx.error(f, e);
        }
    }
    if values.len() > 1 && values.iter().any(|v| v == "*") {
        cx.error(
            field,
            "cannot have both public (*) and non-public exportTo values",
        );
    }
}

use crate::identity::CONTROL_PLANE_SERVICE_ACCOUNT;

pub(super) fn workload_entry(we: &WorkloadEntry, cx: &mut Ctx<'_>) {
    endpoint(&we.spec, "spec", true, cx);
    // The identity `spiffe://<td>/ns/<ns>/sa/<sa>` must be a valid SPIFFE ID.
    if let Some(sa) = &we.spec.service_account
        && let Err(e) = dns1123_subdomain_sa(sa)
    {
        cx.error("spec.serviceAccount", e);
    }
    // The control plane's own identity is `spiffe://<td>/ns/<root>/sa/trustmesh-control-plane`
    // and proxies trust whoever presents it; no workload may be given that name.
    if we.spec.service_account.as_deref() == Some(CONTROL_PLANE_SERVICE_ACCOUNT) {
        cx.error(
            "spec.serviceAccount",
            format!("{CONTROL_PLANE_SERVICE_ACCOUNT} is reserved for the trustmesh control plane"),
        );
    }
}

/// Service account names are DNS-1123 subdomains, which also keeps the SPIFFE ID valid.
fn dns1123_subdomain_sa(sa: &str) -> Result<(), String> {
    super::dns1123_subdomain(sa).map_err(|e| format!("service account {e}"))
}

/// Checks a WorkloadEntry spec or a ServiceEntry endpoint. `must_be_ip` for WorkloadEntries.
fn endpoint(e: &WorkloadEntrySpec, field: &str, must_be_ip: bool, cx: &mut Ctx<'_>) {
    // "WorkloadEntry address required (IP)": each proxy binds the workload's address.
    if e.address.is_empty() {
        cx.error(format!("{field}.address"), "address is required");
    } else if e.address.parse::<IpAddr>().is_err() {
        if must_be_ip {
            cx.error(
                format!("{field}.address"),
                format!("{:?} is not an IP address; trustmesh binds the workload's proxy to it, so it must be one (e.g. 127.0.1.2)", e.address),
            );
        } else if e.address.starts_with("unix://") || dns1123_subdomain_host(&e.address).is_err() {
            cx.error(
                format!("{field}.address"),
                format!("{:?} is neither an IP address nor a host name", e.address),
            );
        }
    }
    for (name, port) in &e.ports {
        if !(1..=65535).contains(port) {
            cx.error(
                format!("{field}.ports.{name}"),
                format!("port {port} must be in the range 1..65535"),
            );
        }
        if name.is_empty() {
            cx.error(format!("{field}.ports"), "port name must not be empty");
        }
    }
    for k in e.labels.keys() {
        if let Err(m) = super::qualified_name(k) {
            cx.error(format!("{field}.labels.{k}"), m);
        }
    }
    if let Some(w) = e.weight
        && w > i32::MAX as u32
    {
        cx.error(
            format!("{field}.weight"),
            "weight must be at most 2147483647",
        );
    }
}

fn dns1123_subdomain_host(s: &str) -> Result<(), String> {
    super::dns1123_subdomain(&s.to_ascii_lowercase())
}

pub(super) fn service_entry(se: &ServiceEntry, cx: &mut Ctx<'_>) {
    let spec = &se.spec;
    // Istio ValidateServiceEntry: "services must have at least one host".
    if spec.hosts.is_empty() {
        cx.error("spec.hosts", "services must have at least one host");
    }
    no_empty_strings(&spec.hosts, "spec.hosts", cx);
    for (i, h) in spec.hosts.iter().enumerate() {
        if h == "*" {
            cx.error(
                format!("spec.hosts[{i}]"),
                "a ServiceEntry host cannot be the wildcard *",
            );
        }
    }
    ip_blocks(&spec.addresses, "spec.addresses", cx);
    export_to(&spec.export_to, "spec.exportTo", cx);
    no_empty_strings(&spec.subject_alt_names, "spec.subjectAltNames", cx);
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        // "port number must be in range 1..65535"; port numbers and names unique.
        if !(1..=65535).contains(&p.number) {
            cx.error(
                format!("{f}.number"),
                format!("port number {} must be in the range 1..65535", p.number),
            );
        } else if !numbers.insert(p.number) {
            cx.error(
                format!("{f}.number"),
                format!("duplicate port number {}", p.number),
            );
        }
        if p.name.is_empty() {
            cx.error(format!("{f}.name"), "port name is required");
        } else if !names.insert(p.name.as_str()) {
            cx.error(
                format!("{f}.name"),
                format!("duplicate port name {:?}", p.name),
            );
        }
        if let Some(proto) = &p.protocol
            && !SERVICE_PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
        {
            cx.error(
                format!("{f}.protocol"),
                format!(
                    "unrecognized protocol {proto:?}; expected one of {}",
                    SERVICE_PROTOCOLS.join(", ")
                ),
            );
        }
        if let Some(tp) = p.target_port
            && !(1..=65535).contains(&tp)
        {
            cx.error(
                format!("{f}.targetPort"),
                format!("target port {tp} must be in the range 1..65535"),
            );
        }
    }
    // Istio: "only one of WorkloadSelector or Endpoints is allowed in Service Entry".
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        cx.error(
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        for (k, v) in &ws.labels {
            if k.is_empty() || k.contains('*') || v.contains('*') {
                cx.error(
                    format!("spec.workloadSelector.labels.{k}"),
                    "empty keys and wildcards are not supported in selector",
                );
            }
        }
    }
    let static_res = spec.resolution == Some(crate::model::networking::Resolution::Static);
    for (i, e) in spec.endpoints.iter().enumerate() {
        endpoint(e, &format!("spec.endpoints[{i}]"), static_res, cx);
    }
    // Istio: "NONE mode cannot set endpoints".
    if spec
        .resolution
        .is_none_or(|r| r == crate::model::networking::Resolution::None)
        && !spec.endpoints.is_empty()
    {
        cx.error(
            "spec.endpoints",
            "no endpoints should be provided for resolution type NONE",
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{assert_error, assert_valid, assert_warning, res};
    use crate::model::{Kind, Resource};

    fn dr(spec: Value) -> Resource {
        res(
            Kind::DestinationRule,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "d", "namespace": "prod"}, "spec": spec}),
        )
    }
    fn we(spec: Value) -> Resource {
        res(
            Kind::WorkloadEntry,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "w", "namespace": "prod"}, "spec": spec}),
        )
    }
    fn se(spec: Value) -> Resource {
        res(
            Kind::ServiceEntry,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s", "namespace": "prod"}, "spec": spec}),
        )
    }

    #[test]
    fn destination_rule_host_is_required() {
        // "`host` (required)".
        assert_error(&dr(json!({})), "spec.host", "host is required");
        assert_valid(&dr(
            json!({"host": "orders.production.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
        ));
    }

    #[test]
    fn istio_mutual_forbids_certificates_but_allows_sans() {
        // "ISTIO_MUTUAL | mesh mTLS with workload cert; all other tls fields must be empty"
        // (validateTLS: "cannot specify client certificates or CA certificate or credentialName").
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "caCertificates": "/ca.pem", "privateKey": "/k.pem"}}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.tls.caCertificates",
            "when mode is ISTIO_MUTUAL",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.tls.privateKey",
            "when mode is ISTIO_MUTUAL",
        );
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 8080}, "tls": {"mode": "ISTIO_MUTUAL", "clientCertificate": "/c"}}]}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate",
            "ISTIO_MUTUAL",
        );
        assert_valid(&dr(
            json!({"host": "a", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "sni": "a", "subjectAltNames": ["spiffe://eu.cluster.local/ns/default/sa/reporting"]}}}),
        ));
    }

    #[test]
    fn mutual_needs_certificate_and_key_or_credential_name() {
        // "`MUTUAL` | TLS with `clientCertificate`+`privateKey` (or `credentialName`)".
        let r = dr(json!({"host": "a", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}}));
        assert_error(
            &r,
            "spec.trafficPolicy.tls.clientCertificate",
            "client certificate required",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.tls.privateKey",
            "private key required",
        );
        // "`credentialName` on sidecars only with `workloadSelector`."
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c"}}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.tls.credentialName",
            "workloadSelector",
        );
        assert_valid(&dr(
            json!({"host": "a", "workloadSelector": {"matchLabels": {"app": "x"}}, "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c"}}}),
        ));
    }

    #[test]
    fn connection_pool_limits() {
        // "`tcp.connectTimeout` (default 10s, ≥1ms)"; Istio: counts must be non-negative.
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": -1, "connectTimeout": "0s"}, "http": {"http2MaxRequests": -5}}}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "non-negative",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "at least 1ms",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "non-negative",
        );
        assert_valid(&dr(
            json!({"host": "a", "trafficPolicy": {"connectionPool": {
                "tcp": {"maxConnections": 100, "connectTimeout": "30ms", "tcpKeepalive": {"time": "7200s", "interval": "75s", "probes": 9}, "maxConnectionDuration": "1h", "idleTimeout": "1h"},
                "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 1000, "maxRequestsPerConnection": 2, "maxRetries": 3, "idleTimeout": "30s", "h2UpgradePolicy": "UPGRADE", "useClientProtocol": true, "maxConcurrentStreams": 100}
            }}}),
        ));
        assert_error(
            &dr(json!({"host": "a", "trafficPolicy": {"connectionPool": {}}})),
            "spec.trafficPolicy.connectionPool",
            "at least one of tcp or http",
        );
    }

    #[test]
    fn port_level_settings_and_subsets() {
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"portLevelSettings": [{"tls": {"mode": "SIMPLE"}}, {"port": {"number": 70000}}, {"port": {"number": 80}}, {"port": {"number": 80}}]}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.portLevelSettings[0].port",
            "must be specified",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.portLevelSettings[1].port.number",
            "1..65535",
        );
        assert_error(
            &r,
            "spec.trafficPolicy.portLevelSettings[3].port.number",
            "duplicate",
        );
        let r = dr(
            json!({"host": "a", "subsets": [{"name": "v1"}, {"name": "v1"}, {"labels": {"a": "b"}}]}),
        );
        assert_error(&r, "spec.subsets[1].name", "duplicate subset name");
        assert_error(&r, "spec.subsets[2].name", "required");
    }

    #[test]
    fn outlier_detection_and_unimplemented_settings() {
        let r = dr(
            json!({"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 101}, "loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}, "tunnel": {"protocol": "CONNECT"}}}),
        );
        assert_error(
            &r,
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "[0, 100]",
        );
        assert_warning(
            &r,
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "not implemented",
        );
        assert_warning(&r, "spec.trafficPolicy.tunnel", "not implemented");
    }

    #[test]
    fn export_to_values() {
        let r = dr(json!({"host": "a", "exportTo": ["*", ".", "Bad_NS", "."]}));
        assert_error(&r, "spec.exportTo[2]", "DNS-1123");
        assert_error(&r, "spec.exportTo[3]", "duplicate");
        assert_error(&r, "spec.exportTo", "both public (*)");
    }

    #[test]
    fn workload_entry_address_must_be_an_ip() {
        // "WorkloadEntry address required (IP)".
        assert_error(&we(json!({})), "spec.address", "address is required");
        assert_error(
            &we(json!({"address": "vm1.example.com"})),
            "spec.address",
            "not an IP address",
        );
        let r = we(
            json!({"address": "127.0.1.2", "ports": {"http": 0}, "serviceAccount": "Bad_SA", "labels": {"app": "orders"}}),
        );
        assert_error(&r, "spec.ports.http", "1..65535");
        assert_error(&r, "spec.serviceAccount", "service account");
        assert_valid(&we(
            json!({"address": "127.0.1.2", "ports": {"http": 8080}, "serviceAccount": "orders", "labels": {"app": "orders"}, "network": "us", "locality": "us-east/1", "weight": 1}),
        ));
        // The control plane's identity is not for workloads.
        assert_error(
            &we(json!({"address": "127.0.1.2", "serviceAccount": "trustmesh-control-plane"})),
            "spec.serviceAccount",
            "reserved for the trustmesh control plane",
        );
    }

    #[test]
    fn service_entry_rules() {
        // Istio: "services must have at least one host".
        assert_error(&se(json!({})), "spec.hosts", "at least one host");
        let r = se(
            json!({"hosts": ["a.b", ""], "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}, {"number": 8080, "name": "http", "protocol": "FTP", "targetPort": 0}], "addresses": ["10.0.0.0/40"]}),
        );
        assert_error(&r, "spec.hosts[1]", "empty value");
        assert_error(&r, "spec.ports[1].number", "duplicate port number");
        assert_error(&r, "spec.ports[1].name", "duplicate port name");
        assert_error(&r, "spec.ports[1].protocol", "unrecognized protocol");
        assert_error(&r, "spec.ports[1].targetPort", "1..65535");
        assert_error(&r, "spec.addresses[0]", "invalid IP");
        // "only one of WorkloadSelector or Endpoints is allowed in Service Entry".
        let r = se(
            json!({"hosts": ["a"], "resolution": "STATIC", "workloadSelector": {"labels": {"app": "a"}}, "endpoints": [{"address": "10.0.0.1"}]}),
        );
        assert_error(
            &r,
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints",
        );
        let r = se(
            json!({"hosts": ["a"], "resolution": "STATIC", "endpoints": [{"address": "a.example"}]}),
        );
        assert_error(&r, "spec.endpoints[0].address", "not an IP address");
        let r = se(
            json!({"hosts": ["a"], "resolution": "NONE", "endpoints": [{"address": "10.0.0.1"}]}),
        );
        assert_error(&r, "spec.endpoints", "resolution type NONE");
        assert_valid(&se(
            json!({"hosts": ["orders.production.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "orders"}}, "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}),
        ));
        assert_valid(&se(
            json!({"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS", "endpoints": [{"address": "api.example.com"}], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}),
        ));
    }
}
