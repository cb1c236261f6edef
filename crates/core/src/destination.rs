//! DestinationRule selection for a client (digest §4): which rule a client proxy applies to a
//! service, the traffic policy for one port and subset, and the resulting client TLS mode
//! (including auto mTLS) and connection pool limits with Istio's defaults.
//!
//! Selection follows istio/istio `pilot/pkg/model/push_context.go` `destinationRule` and the
//! merge in `destination_rule.go`; per-port/per-subset policy follows
//! `pilot/pkg/networking/util` `MergeSubsetTrafficPolicy`; auto mTLS follows
//! `cluster_tls.go` `buildUpstreamTLSSettings`. What is not here: opening connections,
//! load balancing, outlier ejection (the proxy does those with what this returns).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::duration::GoDuration;
use crate::model::networking::{
    ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, Subset, TlsMode, TrafficPolicy,
};
use crate::model::security::MtlsMode;
use crate::model::{DestinationRule, labels_subset};
use crate::peerauth::arc_serde;

/// The Kubernetes cluster DNS suffix short DR hosts are completed with (not the trust domain).
pub const DNS_DOMAIN: &str = "cluster.local";

/// The client proxy asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels (for `workloadSelector`).
    pub labels: &'a BTreeMap<String, String>,
}

/// The service called.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    /// Its fully qualified host, e.g. `reviews.prod.svc.cluster.local` or a ServiceEntry host.
    pub host: &'a str,
    /// The namespace that owns it.
    pub namespace: &'a str,
}

/// Where the chosen rule was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Level {
    /// The client's own namespace.
    ClientNamespace,
    /// The service's namespace, exported to the client.
    ServiceNamespace,
    /// The root namespace, exported to the client.
    RootNamespace,
}

/// The DestinationRule a client applies to a service: one rule, or several merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectedRule {
    /// `ns/name` of the rules merged, first one first.
    #[serde(serialize_with = "arc_serde::seq")]
    pub rules: Vec<Arc<str>>,
    /// The host they were written for, resolved to an FQDN.
    pub host: String,
    /// Where they were found.
    pub level: Level,
    /// Top-level traffic policy after merging.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets after merging.
    pub subsets: Vec<Subset>,
}

/// A DR `host` resolved like istiod's `ResolveShortnameToFQDN`: "short names resolved
/// **relative to the DR's namespace**" (`reviews` in `prod` → `reviews.prod.svc.cluster.local`).
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.{DNS_DOMAIN}")
    }
}

/// How well a DR host matches the service host: exact, or a wildcard of some length.
fn host_match(dr_host: &str, service_host: &str) -> Option<(bool, usize)> {
    if dr_host.eq_ignore_ascii_case(service_host) {
        return Some((true, dr_host.len()));
    }
    let suffix = dr_host.strip_prefix('*')?;
    let sh = service_host.as_bytes();
    let matches = suffix.is_empty()
        || (sh.len() > suffix.len()
            && sh[sh.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes()));
    matches.then_some((false, dr_host.len()))
}

/// "`exportTo`: default all namespaces; `.` = own namespace; `*` = all." (`~` = none.)
fn visible(dr: &DestinationRule, client_ns: &str) -> bool {
    let e = &dr.spec.export_to;
    e.is_empty()
        || e.iter().any(|x| {
            x == "*" || x == client_ns || (x == "." && dr.metadata.namespace_str() == client_ns)
        })
}

/// Oldest first, then name and namespace (istiod sorts configs by creation time).
fn order_key(dr: &DestinationRule) -> (Option<i64>, &str, &str) {
    (
        dr.metadata.creation_unix_seconds(),
        &dr.metadata.name,
        dr.metadata.namespace_str(),
    )
}

/// Picks the DestinationRule `client` applies to `service` (§4.3).
pub fn select<'a>(
    rules: impl IntoIterator<Item = &'a DestinationRule>,
    root_namespace: &str,
    client: Client<'_>,
    service: Service<'_>,
) -> Option<SelectedRule> {
    let mut all: Vec<&DestinationRule> = rules.into_iter().collect();
    all.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    let has_selector = |d: &DestinationRule| {
        d.spec
            .workload_selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    };

    // "1. DRs in C (visible to C)": every rule of the client's namespace. "`workloadSelector`:
    // DR applies only to client proxies with those labels in the DR's namespace"; a rule
    // whose selector does not match this client is as if absent.
    let local: Vec<&DestinationRule> = all
        .iter()
        .copied()
        .filter(|d| d.metadata.namespace_str() == client.namespace)
        .filter(|d| {
            !has_selector(d)
                || d.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|s| labels_subset(&s.match_labels, client.labels))
        })
        .collect();
    let exported_from = |ns: &str| -> Vec<&DestinationRule> {
        all.iter()
            .copied()
            .filter(|d| {
                d.metadata.namespace_str() == ns && !has_selector(d) && visible(d, client.namespace)
            })
            .collect()
    };
    let mut levels = vec![(Level::ClientNamespace, local)];
    // "2. else DRs in N exported to C"; "3. else DRs in the root namespace exported to C."
    if service.namespace != client.namespace {
        levels.push((Level::ServiceNamespace, exported_from(service.namespace)));
    }
    if root_namespace != client.namespace && root_namespace != service.namespace {
        levels.push((Level::RootNamespace, exported_from(root_namespace)));
    }
    // "First level with any match wins — **no field-level inheritance across levels**."
    levels
        .into_iter()
        .find_map(|(level, candidates)| pick(level, &candidates, service.host))
}

/// The most specific host match among `candidates`, merged.
fn pick(level: Level, candidates: &[&DestinationRule], service_host: &str) -> Option<SelectedRule> {
    // "most specific host match (exact beats wildcard; longer wildcard wins)".
    let best = candidates
        .iter()
        .filter_map(|d| {
            let h = resolve_host(&d.spec.host, d.metadata.namespace_str());
            host_match(&h, service_host).map(|m| (m, h))
        })
        .max_by_key(|(m, _)| *m)?;
    let host = best.1;
    let same_host: Vec<&DestinationRule> = candidates
        .iter()
        .copied()
        .filter(|d| {
            resolve_host(&d.spec.host, d.metadata.namespace_str()).eq_ignore_ascii_case(&host)
        })
        .collect();
    // A rule selecting this client wins over selector-less ones and is not merged with them.
    let chosen: Vec<&DestinationRule> = match same_host.iter().find(|d| {
        d.spec
            .workload_selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    }) {
        Some(d) => vec![*d],
        None => same_host,
    };
    let mut out = SelectedRule {
        rules: Vec::new(),
        host,
        level,
        traffic_policy: None,
        subsets: Vec::new(),
    };
    // "Multiple DRs for the same host at the same level are merged: subsets concatenated
    // (duplicates dropped), first rule's top-level `trafficPolicy` wins, later ones only fill
    // if the first had none".
    for d in chosen {
        out.rules.push(Arc::from(format!(
            "{}/{}",
            d.metadata.namespace_str(),
            d.metadata.name
        )));
        for s in &d.spec.subsets {
            if !out.subsets.iter().any(|x| x.name == s.name) {
                out.subsets.push(s.clone());
            }
        }
        if out.traffic_policy.is_none() {
            out.traffic_policy.clone_from(&d.spec.traffic_policy);
        }
    }
    Some(out)
}

/// The four per-port fields of a traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits as written.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// Client TLS as written.
    pub tls: Option<ClientTlsSettings>,
}

impl PortPolicy {
    fn of(p: &TrafficPolicy) -> Self {
        Self {
            load_balancer: p.load_balancer.clone(),
            connection_pool: p.connection_pool.clone(),
            outlier_detection: p.outlier_detection.clone(),
            tls: p.tls.clone(),
        }
    }

    /// The policy's settings for `port`, and whether a `portLevelSettings` entry decided them.
    /// "**portLevelSettings replace, not merge**: ... default values will be applied to fields
    /// omitted".
    fn for_port(p: &TrafficPolicy, port: u16) -> (Self, bool) {
        match p
            .port_level_settings
            .iter()
            .find(|s| s.port.is_some_and(|n| n.number == u32::from(port)))
        {
            Some(s) => (
                Self {
                    load_balancer: s.load_balancer.clone(),
                    connection_pool: s.connection_pool.clone(),
                    outlier_detection: s.outlier_detection.clone(),
                    tls: s.tls.clone(),
                },
                true,
            ),
            None => (Self::of(p), false),
        }
    }
}

impl SelectedRule {
    /// The policy for service port `port` and, when a route targets one, `subset`:
    /// "subset policy overrides top-level **per top-level field** ... Subset policies apply only
    /// when a route targets the subset."
    pub fn policy_for(&self, port: u16, subset: Option<&str>) -> PortPolicy {
        let top = self
            .traffic_policy
            .as_ref()
            .map(|p| PortPolicy::for_port(p, port).0);
        let sub = subset
            .and_then(|name| self.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_ref());
        let Some(sub) = sub else {
            return top.unwrap_or_default();
        };
        let (sp, sub_port_level) = PortPolicy::for_port(sub, port);
        let Some(mut merged) = top else {
            return sp;
        };
        // A subset port-level entry replaces every field; otherwise only the fields it sets.
        if sp.connection_pool.is_some() || sub_port_level {
            merged.connection_pool = sp.connection_pool;
        }
        if sp.outlier_detection.is_some() || sub_port_level {
            merged.outlier_detection = sp.outlier_detection;
        }
        if sp.load_balancer.is_some() || sub_port_level {
            merged.load_balancer = sp.load_balancer;
        }
        if sp.tls.is_some() || sub_port_level {
            merged.tls = sp.tls;
        }
        merged
    }
}

/// What auto mTLS needs to know about the destination endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint runs a proxy (every trustmesh workload does; a ServiceEntry's own
    /// endpoints do not).
    pub has_proxy: bool,
    /// The destination port's PeerAuthentication mode.
    pub mtls_mode: MtlsMode,
    /// The service is `MESH_EXTERNAL`.
    pub mesh_external: bool,
}

/// The TLS the client originates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// `DISABLE` means plaintext.
    pub mode: TlsMode,
    /// Chosen by auto mTLS (no `tls` in the rule) rather than written.
    pub auto_mtls: bool,
    /// SNI sent: `outbound_.<port>_.<subset>_.<fqdn>` for ISTIO_MUTUAL, else the rule's `sni`.
    pub sni: Option<String>,
    /// Server identities accepted instead of the service's (secure naming) when set.
    pub subject_alt_names: Vec<String>,
}

/// Connection pool limits with Istio's defaults filled in (§4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// `tcp.maxConnections` per upstream host (default 2^32-1).
    pub max_connections: u32,
    /// `tcp.connectTimeout` (default 10s).
    pub connect_timeout: GoDuration,
    /// `tcp.idleTimeout` (default 1h; 0s disables).
    pub tcp_idle_timeout: GoDuration,
    /// `tcp.maxConnectionDuration`, none by default.
    pub max_connection_duration: Option<GoDuration>,
    /// `tcp.tcpKeepalive` probes/time/interval; `None` = OS defaults (keep-alive off).
    pub tcp_keepalive: Option<(Option<u32>, Option<GoDuration>, Option<GoDuration>)>,
    /// `http.http1MaxPendingRequests` (default 2^32-1).
    pub http1_max_pending_requests: u32,
    /// `http.http2MaxRequests` (default 2^32-1).
    pub http2_max_requests: u32,
    /// `http.maxRequestsPerConnection`; `None` = unlimited (0 or unset).
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries` (default 2^32-1).
    pub max_retries: u32,
    /// `http.idleTimeout` (default 1h).
    pub http_idle_timeout: GoDuration,
    /// `http.maxConcurrentStreams` (default 2^31-1).
    pub max_concurrent_streams: u32,
    /// `http.h2UpgradePolicy`.
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// `http.useClientProtocol`.
    pub use_client_protocol: bool,
}

impl ConnectionPool {
    /// `settings` with every omitted field at its default.
    pub fn resolve(settings: Option<&ConnectionPoolSettings>) -> Self {
        let tcp = settings.and_then(|s| s.tcp.as_ref());
        let http = settings.and_then(|s| s.http.as_ref());
        let max =
            |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
        let hour = GoDuration::from_hours(1);
        Self {
            max_connections: max(tcp.and_then(|t| t.max_connections), u32::MAX),
            connect_timeout: tcp
                .and_then(|t| t.connect_timeout)
                .unwrap_or(GoDuration::new(std::time::Duration::from_secs(10))),
            tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout).unwrap_or(hour),
            max_connection_duration: tcp.and_then(|t| t.max_connection_duration),
            tcp_keepalive: tcp
                .and_then(|t| t.tcp_keepalive.as_ref())
                .map(|k| (k.probes, k.time, k.interval)),
            http1_max_pending_requests: max(
                http.and_then(|h| h.http1_max_pending_requests),
                u32::MAX,
            ),
            http2_max_requests: max(http.and_then(|h| h.http2_max_requests), u32::MAX),
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0),
            max_retries: max(http.and_then(|h| h.max_retries), u32::MAX),
            http_idle_timeout: http.and_then(|h| h.idle_timeout).unwrap_or(hour),
            max_concurrent_streams: max(
                http.and_then(|h| h.max_concurrent_streams),
                i32::MAX as u32,
            ),
            h2_upgrade_policy: http
                .and_then(|h| h.h2_upgrade_policy)
                .unwrap_or(H2UpgradePolicy::Default),
            use_client_protocol: http.and_then(|h| h.use_client_protocol).unwrap_or(false),
        }
    }
}

/// Everything the client proxy applies to one (service, port, subset).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The rule applied, if any.
    pub rule: Option<SelectedRule>,
    /// The per-port, per-subset policy as written.
    pub policy: PortPolicy,
    /// The TLS the client originates.
    pub tls: ClientTls,
    /// Connection pool limits.
    pub connection_pool: ConnectionPool,
}

/// Selects the rule and computes the client's settings for `service` port `port` (and
/// `subset`, when a route targets one) towards `endpoint`.
pub fn resolve<'a>(
    rules: impl IntoIterator<Item = &'a DestinationRule>,
    root_namespace: &str,
    client: Client<'_>,
    service: Service<'_>,
    port: u16,
    subset: Option<&str>,
    endpoint: Endpoint,
) -> Destination {
    let rule = select(rules, root_namespace, client, service);
    let policy = rule
        .as_ref()
        .map(|r| r.policy_for(port, subset))
        .unwrap_or_default();
    let istio_sni = || {
        format!(
            "outbound_.{port}_.{}_.{}",
            subset.unwrap_or(""),
            service.host
        )
    };
    let tls = match &policy.tls {
        Some(t) => ClientTls {
            mode: t.mode,
            auto_mtls: false,
            // "ISTIO_MUTUAL uses SNI `outbound_.<port>_.<subset>_.<fqdn>`".
            sni: if t.mode == TlsMode::IstioMutual {
                Some(t.sni.clone().unwrap_or_else(istio_sni))
            } else {
                t.sni.clone()
            },
            subject_alt_names: t.subject_alt_names.clone(),
        },
        None => {
            // "No `tls` in the selected DR (or no DR) → **auto mTLS**: ISTIO_MUTUAL towards
            // endpoints that carry a proxy ..., plaintext to others; no auto mTLS when the
            // destination's PeerAuthentication mode is DISABLE or the service is mesh-external".
            let mtls = endpoint.has_proxy
                && endpoint.mtls_mode != MtlsMode::Disable
                && !endpoint.mesh_external;
            ClientTls {
                mode: if mtls {
                    TlsMode::IstioMutual
                } else {
                    TlsMode::Disable
                },
                auto_mtls: true,
                sni: mtls.then(istio_sni),
                subject_alt_names: Vec::new(),
            }
        }
    };
    Destination {
        connection_pool: ConnectionPool::resolve(policy.connection_pool.as_ref()),
        rule,
        policy,
        tls,
    }
}
