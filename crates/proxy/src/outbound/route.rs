//! From a requested `host:port` to a [`Route`]: the ServiceEntry that declares the host, the
//! endpoints behind the port, the TLS to originate towards each (DestinationRule or auto
//! mTLS, with the identities secure naming accepts), and the connection pool [`Limits`].
//!
//! Pure over one [`MeshView`](crate::state::MeshView)'s snapshot: no sockets, no TLS objects.
//! What is not here: connecting, pooling ([`super::pool`]), building rustls configs
//! ([`super::tls`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use trustmesh_core::SpiffeId;
use trustmesh_core::destination::{self, ClientTls, DNS_DOMAIN, Destination};
use trustmesh_core::model::ServiceEntry;
use trustmesh_core::model::networking::{
    ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, Location, Resolution, ServicePort,
    TlsMode,
};
use trustmesh_core::model::security::MtlsMode;
use trustmesh_core::peerauth;
use trustmesh_core::snapshot::{Snapshot, Sourced, Workload};

use super::error::OutboundError;

/// What the app asked for: a host (lower-case, no trailing dot) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host as requested, normalized.
    pub host: String,
    /// Port as requested (80 when an `http://` URI names none).
    pub port: u16,
}

impl Target {
    /// "Host matching: case-insensitive" — hosts are compared lower-case, without the
    /// trailing dot of a fully qualified DNS name.
    pub fn new(host: &str, port: u16) -> Self {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        Self { host, port }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where an endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    /// An IP endpoint (every WorkloadEntry).
    Ip(SocketAddr),
    /// A name resolved at connect time (ServiceEntry `resolution: DNS`/`NONE`).
    Name {
        /// DNS name.
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Mesh mTLS towards a peer proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshTls {
    /// SNI sent (`outbound_.<port>_.<subset>_.<fqdn>` unless the rule sets one).
    pub sni: String,
    /// The identities allowed to serve the service (secure naming), sorted.
    pub allowed: Vec<SpiffeId>,
}

/// TLS from the DestinationRule's files (`SIMPLE`, `MUTUAL`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileTls {
    /// `MUTUAL`: present `client_certificate` with `private_key`.
    pub mutual: bool,
    /// `caCertificates`: PEM file of the roots that verify the server.
    pub ca_certificates: Option<String>,
    /// `clientCertificate`: PEM chain file.
    pub client_certificate: Option<String>,
    /// `privateKey`: PEM key file.
    pub private_key: Option<String>,
    /// `credentialName` (not supported on this proxy: it has no Secret store).
    pub credential_name: Option<String>,
    /// The SNI sent and, without `subject_alt_names`, the name verified: `sni` or the host.
    pub server_name: String,
    /// `subjectAltNames`: names one of which the server certificate must carry.
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`.
    pub insecure_skip_verify: bool,
}

/// The TLS originated towards one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamTls {
    /// `DISABLE`: plaintext.
    Plain,
    /// `ISTIO_MUTUAL` (written or chosen by auto mTLS).
    Mesh(MeshTls),
    /// `SIMPLE` / `MUTUAL`.
    Files(FileTls),
}

/// One endpoint and how to talk to it: together the pool key of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// Its address.
    pub addr: EndpointAddr,
    /// Its TLS.
    pub tls: UpstreamTls,
}

/// `connectionPool` as this proxy enforces it, Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `tcp.maxConnections` (all endpoints of the destination together, as Envoy's cluster
    /// circuit breaker).
    pub max_connections: u32,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Duration,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: active requests.
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`; `None` = unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxConcurrentStreams` per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// `http.idleTimeout` (falling back to `tcp.idleTimeout`); `None` = never.
    pub http_idle_timeout: Option<Duration>,
    /// `tcp.idleTimeout` for CONNECT tunnels; `None` = never.
    pub tcp_idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`.
    pub max_connection_duration: Option<Duration>,
    /// `http.http2KeepAlive`: PING interval and ack timeout.
    pub h2_keepalive: Option<(Duration, Option<Duration>)>,
    /// `tcp.tcpKeepalive` set: enable SO_KEEPALIVE (probe timings stay the OS's).
    pub tcp_keepalive: bool,
    /// HTTP/1.1 requests go to the peer proxy over HTTP/2: unless `http.h2UpgradePolicy` is
    /// DO_NOT_UPGRADE.
    pub h2_upgrade: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_destination(None, &destination::ConnectionPool::resolve(None))
    }
}

impl Limits {
    /// From the rule's settings as written (`raw`) and with defaults (`pool`).
    pub fn from_destination(
        raw: Option<&ConnectionPoolSettings>,
        pool: &destination::ConnectionPool,
    ) -> Self {
        // istio/istio `cluster_traffic_policy.go` `applyConnectionPool` only applies these
        // when `> 0` ("there isn't a way to distinguish between unset values and zero
        // values"), so an explicit 0 means the default, unlimited.
        let positive = |v: u32| if v == 0 { u32::MAX } else { v };
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let http = raw.and_then(|r| r.http.as_ref());
        let tcp = raw.and_then(|r| r.tcp.as_ref());
        // Same file: the HTTP idle timeout is `http.idleTimeout`, else `tcp.idleTimeout`.
        let http_idle = http
            .and_then(|h| h.idle_timeout)
            .or_else(|| tcp.and_then(|t| t.idle_timeout))
            .map_or(pool.http_idle_timeout.as_duration(), |d| d.as_duration());
        Self {
            max_connections: positive(pool.max_connections),
            connect_timeout: nonzero(pool.connect_timeout.as_duration())
                .unwrap_or(Duration::from_secs(10)),
            max_pending_requests: positive(pool.http1_max_pending_requests),
            max_requests: positive(pool.http2_max_requests),
            max_requests_per_connection: pool.max_requests_per_connection,
            max_concurrent_streams: positive(pool.max_concurrent_streams),
            http_idle_timeout: nonzero(http_idle),
            tcp_idle_timeout: nonzero(pool.tcp_idle_timeout.as_duration()),
            max_connection_duration: pool
                .max_connection_duration
                .map(|d| d.as_duration())
                .and_then(nonzero),
            h2_keepalive: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .and_then(|k| {
                    let interval = k.interval.map(|d| d.as_duration()).and_then(nonzero)?;
                    Some((interval, k.timeout.map(|d| d.as_duration())))
                }),
            tcp_keepalive: pool.tcp_keepalive.is_some(),
            // Istio: "DEFAULT: use the global default". trustmesh's mesh-wide default is
            // UPGRADE (Istio's is DO_NOT_UPGRADE): one multiplexed mTLS connection per peer
            // proxy instead of one per concurrent request, so one handshake and one set of
            // buffers. DO_NOT_UPGRADE keeps HTTP/1.1 keep-alive connections, as Envoy does.
            h2_upgrade: pool.h2_upgrade_policy != H2UpgradePolicy::DoNotUpgrade,
        }
    }
}

/// Everything needed to carry requests for one `host:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The service host as the ServiceEntry declares it (lower-case).
    pub host: String,
    /// The service port.
    pub port: u16,
    /// `ns/name` of the ServiceEntry.
    pub service_entry: String,
    /// `ns/name` of the DestinationRule(s) applied, for logs.
    pub rule: Option<String>,
    /// The endpoints, in snapshot order (round-robin walks them).
    pub upstreams: Vec<Upstream>,
    /// Connection pool limits.
    pub limits: Limits,
}

/// Resolves `target` for the proxy of `client` in `snapshot`.
pub fn resolve(
    snapshot: &Snapshot,
    client: &Workload,
    target: &Target,
) -> Result<Route, OutboundError> {
    let (se, host) =
        find_service_entry(snapshot, &client.namespace, &target.host).ok_or_else(|| {
            OutboundError::UnknownHost {
                host: target.host.clone(),
            }
        })?;
    let se_name = format!("{}/{}", se.metadata.namespace_str(), se.metadata.name);
    let sp = se
        .spec
        .ports
        .iter()
        .find(|p| p.number == u32::from(target.port))
        .ok_or_else(|| OutboundError::UnknownPort {
            host: host.clone(),
            port: target.port,
            service_entry: se_name.clone(),
        })?;
    let endpoints = endpoints(snapshot, se, sp, &host, &target.host);
    if endpoints.is_empty() {
        return Err(OutboundError::NoEndpoints {
            host,
            port: target.port,
        });
    }
    let mesh_external = se.spec.location == Some(Location::MeshExternal);
    let root = &snapshot.mesh().root_namespace;
    let dest_for = |ep: &Endpoint<'_>| -> Destination {
        // Auto mTLS needs the destination's PeerAuthentication mode at the endpoint port.
        let mtls_mode = ep.workload.map_or(MtlsMode::Permissive, |w| {
            let port = match ep.addr {
                EndpointAddr::Ip(a) => a.port(),
                EndpointAddr::Name { port, .. } => port,
            };
            peerauth::resolve(
                snapshot.peer_authentications().iter().map(|s| &s.object),
                root,
                &w.namespace,
                &w.labels,
            )
            .for_port(port)
            .mode
        });
        destination::resolve(
            snapshot.destination_rules().iter().map(|s| &s.object),
            root,
            destination::Client {
                namespace: &client.namespace,
                labels: &client.labels,
            },
            destination::Service {
                host: &host,
                namespace: se.metadata.namespace_str(),
            },
            target.port,
            None,
            destination::Endpoint {
                has_proxy: ep.workload.is_some(),
                mtls_mode,
                mesh_external,
            },
        )
    };
    let mut upstreams = Vec::with_capacity(endpoints.len());
    let mut first: Option<Destination> = None;
    for ep in &endpoints {
        let dest = dest_for(ep);
        let tls = upstream_tls(
            &dest.tls,
            dest.policy.tls.as_ref(),
            &host,
            target.port,
            || allowed_identities(se, &endpoints),
        )?;
        upstreams.push(Upstream {
            addr: ep.addr.clone(),
            tls,
        });
        first.get_or_insert(dest);
    }
    let (rule, limits) = first.map_or_else(
        || (None, Limits::default()),
        |d| {
            (
                d.rule.as_ref().map(|r| r.rules.join(",")),
                Limits::from_destination(d.policy.connection_pool.as_ref(), &d.connection_pool),
            )
        },
    );
    Ok(Route {
        host,
        port: target.port,
        service_entry: se_name,
        rule,
        upstreams,
        limits,
    })
}

/// The names a requested host may stand for, in order: itself, then the Kubernetes DNS
/// search path of the client's namespace (`<ns>.svc.cluster.local`, `svc.cluster.local`,
/// `cluster.local`) — so `orders` and `orders.production` reach
/// `orders.production.svc.cluster.local` as they would in a pod.
fn candidate_names(host: &str, namespace: &str) -> Vec<String> {
    let mut v = vec![host.to_owned()];
    if host.parse::<IpAddr>().is_ok() || host.ends_with(DNS_DOMAIN) {
        return v;
    }
    // Short names are resolved relative to the client's namespace, as istiod resolves a
    // DestinationRule's short `host` relative to the rule's.
    let short = destination::resolve_host(host, namespace);
    if short != host {
        v.push(short);
    } else {
        v.push(format!("{host}.{namespace}.svc.{DNS_DOMAIN}"));
    }
    v.push(format!("{host}.svc.{DNS_DOMAIN}"));
    v.push(format!("{host}.{DNS_DOMAIN}"));
    v
}

/// ServiceEntry `exportTo` reads like a DestinationRule's (digest §4.2): "`exportTo`: default
/// all namespaces; `.` = own namespace; `*` = all" (`~`, or any other name, hides it).
fn visible_to(se: &ServiceEntry, namespace: &str) -> bool {
    let e = &se.spec.export_to;
    e.is_empty()
        || e.iter().any(|x| {
            x == "*" || x == namespace || (x == "." && se.metadata.namespace_str() == namespace)
        })
}

/// The ServiceEntry declaring `host` for a client in `namespace`, and the declared host
/// (exact names first, then the longest matching wildcard host).
fn find_service_entry<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    host: &str,
) -> Option<(&'a Sourced<ServiceEntry>, String)> {
    let entries = snapshot.service_entries();
    for name in candidate_names(host, namespace) {
        let hit = entries.iter().find(|se| {
            visible_to(se, namespace) && se.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(&name))
        });
        if let Some(se) = hit {
            return Some((se, name));
        }
    }
    // `*.example.com` declares every name under example.com.
    entries
        .iter()
        .filter(|se| visible_to(se, namespace))
        .flat_map(|se| se.spec.hosts.iter().map(move |h| (se, h)))
        .filter(|(_, h)| {
            h.strip_prefix('*').is_some_and(|suffix| {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            })
        })
        .max_by_key(|(_, h)| h.len())
        .map(|(se, _)| (se, host.to_owned()))
}

/// One endpoint found for the service port.
#[derive(Debug)]
struct Endpoint<'a> {
    addr: EndpointAddr,
    /// The WorkloadEntry behind it, which runs a proxy.
    workload: Option<&'a Workload>,
    /// Its identity, when known.
    identity: Option<SpiffeId>,
}

/// The endpoint port for service port `sp`. WorkloadEntry `ports`: "If the port map is
/// specified, it must be a map of servicePortName to this endpoint's port, such that traffic
/// to the service port will be forwarded to the endpoint port that maps to the service's
/// portName. If omitted, and the targetPort is specified as part of the service's port
/// specification, traffic to the service port will be forwarded to one of the endpoints on
/// the specified targetPort. If both the targetPort and endpoint's port map are not
/// specified, traffic to a service port will be forwarded to one of the endpoints on the
/// same port."
fn endpoint_port(sp: &ServicePort, named: Option<u32>) -> u16 {
    named
        .or(sp.target_port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .or_else(|| u16::try_from(sp.number).ok())
        .unwrap_or(0)
}

fn endpoints<'a>(
    snapshot: &'a Snapshot,
    se: &'a Sourced<ServiceEntry>,
    sp: &ServicePort,
    declared_host: &str,
    requested_host: &str,
) -> Vec<Endpoint<'a>> {
    let mut out: Vec<Endpoint<'a>> = snapshot
        .service_workloads(se)
        .map(|w| {
            let port = endpoint_port(sp, w.ports.get(&sp.name).map(|p| u32::from(*p)));
            Endpoint {
                addr: EndpointAddr::Ip(SocketAddr::new(w.address, port)),
                workload: Some(w),
                identity: Some(w.identity.clone()),
            }
        })
        .collect();
    for e in &se.spec.endpoints {
        let port = endpoint_port(sp, e.ports.get(&sp.name).copied());
        if e.address.starts_with("unix://") || e.address.is_empty() {
            continue;
        }
        let addr = match e.address.parse::<IpAddr>() {
            Ok(ip) => EndpointAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) => EndpointAddr::Name {
                host: e.address.clone(),
                port,
            },
        };
        let td = snapshot.trust_domain_for_network(e.network.as_deref());
        let identity = e
            .service_account
            .as_deref()
            .and_then(|sa| SpiffeId::workload(td, se.metadata.namespace_str(), sa).ok());
        out.push(Endpoint {
            addr,
            workload: None,
            identity,
        });
    }
    // Without endpoints or a selector, `DNS` and `NONE` services are reached at the host
    // itself (for a wildcard entry, the host requested).
    if out.is_empty()
        && se.spec.workload_selector.is_none()
        && matches!(
            se.spec.resolution,
            Some(Resolution::Dns | Resolution::DnsRoundRobin | Resolution::None)
        )
    {
        let host = if declared_host.starts_with('*') {
            requested_host
        } else {
            declared_host
        };
        out.push(Endpoint {
            addr: EndpointAddr::Name {
                host: host.to_owned(),
                port: endpoint_port(sp, None),
            },
            workload: None,
            identity: None,
        });
    }
    out
}

/// Secure naming: "ISTIO_MUTUAL ... verifies the server SAN against the service's service
/// accounts (secure naming) unless `subjectAltNames` is given" — the ServiceEntry's
/// `subjectAltNames` if set, else the identities of its endpoints.
fn allowed_identities(
    se: &ServiceEntry,
    endpoints: &[Endpoint<'_>],
) -> Result<Vec<SpiffeId>, String> {
    if !se.spec.subject_alt_names.is_empty() {
        return parse_sans(&se.spec.subject_alt_names)
            .map_err(|bad| format!("ServiceEntry subjectAltNames {bad:?} hold no SPIFFE ID"));
    }
    let mut ids: Vec<SpiffeId> = endpoints
        .iter()
        .filter_map(|e| e.identity.clone())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err("its endpoints have no workload identity".into());
    }
    Ok(ids)
}

/// SPIFFE IDs from SAN strings, written `spiffe://td/ns/x/sa/y` or `td/ns/x/sa/y`.
fn parse_sans(sans: &[String]) -> Result<Vec<SpiffeId>, Vec<String>> {
    let mut ids: Vec<SpiffeId> = sans
        .iter()
        .filter_map(|s| {
            SpiffeId::parse(s)
                .or_else(|_| SpiffeId::from_principal(s))
                .ok()
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        Err(sans.to_vec())
    } else {
        Ok(ids)
    }
}

/// The TLS to originate for a resolved client TLS mode.
fn upstream_tls(
    tls: &ClientTls,
    written: Option<&ClientTlsSettings>,
    host: &str,
    port: u16,
    service_ids: impl FnOnce() -> Result<Vec<SpiffeId>, String>,
) -> Result<UpstreamTls, OutboundError> {
    let sni = || tls.sni.clone().unwrap_or_else(|| host.to_owned());
    match tls.mode {
        TlsMode::Disable => Ok(UpstreamTls::Plain),
        TlsMode::IstioMutual => {
            // A rule's `subjectAltNames` replaces the service's identities.
            let allowed = if tls.subject_alt_names.is_empty() {
                service_ids()
            } else {
                parse_sans(&tls.subject_alt_names).map_err(|bad| {
                    format!("DestinationRule subjectAltNames {bad:?} hold no SPIFFE ID")
                })
            }
            .map_err(|reason| OutboundError::NoAllowedIdentity {
                host: host.to_owned(),
                port,
                reason,
            })?;
            Ok(UpstreamTls::Mesh(MeshTls {
                sni: sni(),
                allowed,
            }))
        }
        TlsMode::Simple | TlsMode::Mutual => {
            let w = written.cloned().unwrap_or_default();
            Ok(UpstreamTls::Files(FileTls {
                mutual: tls.mode == TlsMode::Mutual,
                ca_certificates: w.ca_certificates,
                client_certificate: w.client_certificate,
                private_key: w.private_key,
                credential_name: w.credential_name,
                server_name: sni(),
                subject_alt_names: w.subject_alt_names,
                insecure_skip_verify: w.insecure_skip_verify.unwrap_or(false),
            }))
        }
    }
}

#[cfg(test)]
mod tests;
