//! The series of Istio's standard metrics under one [`Base`]: the label sets (in
//! docs/metrics.md's order), the families they live in, and the cache of series a base has
//! already looked up, so a request costs an atomic add, not a hash of 26 strings.
//!
//! What is not here: where the label values come from (`labels`).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use http::StatusCode;
use trustmesh_metrics::{Counter, Family, Histogram};

use super::labels::{PeerLabels, ServiceLabels, UNKNOWN};

/// Labels of the HTTP metrics, in docs/metrics.md's order.
pub const HTTP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
    "security_policy",
];

/// Labels of the TCP metrics: the HTTP ones without `response_code` and
/// `grpc_response_status` ("HTTP only").
pub const TCP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "security_policy",
];

/// The labels of `trustmesh_authz_decisions_total`.
pub const AUTHZ_LABELS: &[&str] = &[
    "destination_workload",
    "destination_workload_namespace",
    "policy",
    "action",
    "decision",
    "dry_run",
];

/// The labels a [`Base`] holds: `reporter` to `destination_cluster`.
const BASE_LEN: usize = 20;
/// A base remembers at most this many series of each kind (the family keeps the rest).
pub(super) const SERIES_CACHE: usize = 64;
/// A view remembers at most this many client identities per port.
pub(super) const BASES_CACHE: usize = 4096;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The labelled families that the caches below fill.
#[derive(Debug)]
pub struct Families {
    /// `istio_requests_total`.
    pub requests: Family<Counter>,
    /// `istio_request_duration_milliseconds`.
    pub duration: Family<Histogram>,
    /// `istio_request_bytes`.
    pub request_bytes: Family<Histogram>,
    /// `istio_response_bytes`.
    pub response_bytes: Family<Histogram>,
    /// `istio_tcp_connections_opened_total`.
    pub tcp_opened: Family<Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub tcp_closed: Family<Counter>,
    /// `istio_tcp_sent_bytes_total`.
    pub tcp_sent: Family<Counter>,
    /// `istio_tcp_received_bytes_total`.
    pub tcp_received: Family<Counter>,
    /// `trustmesh_authz_decisions_total`.
    pub authz: Family<Counter>,
}

/// Which proxy of the pair reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The client's proxy (outbound).
    Source,
    /// The server's proxy (inbound).
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// `connection_security_policy` (and `security_policy`): "on `reporter="destination"`,
/// `mutual_tls` when the peer presented a verified SPIFFE certificate, else `none`; on
/// `reporter="source"` always `unknown` (Istio's rule)."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// A verified client SVID.
    MutualTls,
    /// Plaintext.
    None,
    /// The source reporter.
    Unknown,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
            Self::Unknown => UNKNOWN,
        }
    }
}

/// `request_protocol` of an HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    /// Anything but gRPC.
    Http,
    /// `content-type: application/grpc...`.
    Grpc,
}

impl HttpProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// The key of one HTTP series under a [`Base`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpKey {
    /// `request_protocol`.
    pub protocol: HttpProtocol,
    /// `response_code`; 0 when no response was sent.
    pub code: u16,
    /// `grpc_response_status`; empty unless gRPC.
    pub grpc_status: &'static str,
    /// `response_flags`.
    pub flags: &'static str,
}

/// Most requests: HTTP, 200, no flag.
const HTTP_OK: HttpKey = HttpKey {
    protocol: HttpProtocol::Http,
    code: 200,
    grpc_status: "",
    flags: "-",
};

/// The four series of one HTTP label set.
#[derive(Debug)]
pub struct HttpSeries {
    /// `istio_requests_total`.
    pub requests: Arc<Counter>,
    /// `istio_request_duration_milliseconds`.
    pub duration: Arc<Histogram>,
    /// `istio_request_bytes`.
    pub request_bytes: Arc<Histogram>,
    /// `istio_response_bytes`.
    pub response_bytes: Arc<Histogram>,
}

/// The four series of one TCP label set.
#[derive(Debug)]
pub struct TcpSeries {
    /// `istio_tcp_connections_opened_total`.
    pub opened: Arc<Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub closed: Arc<Counter>,
    /// `istio_tcp_sent_bytes_total`.
    pub sent: Arc<Counter>,
    /// `istio_tcp_received_bytes_total`.
    pub received: Arc<Counter>,
}

/// The labels every request between one source and one destination shares, and the series
/// already looked up under them.
#[derive(Debug)]
pub struct Base {
    families: Arc<Families>,
    values: [Arc<str>; BASE_LEN],
    security: Security,
    http_ok: OnceLock<Arc<HttpSeries>>,
    http: Mutex<Vec<(HttpKey, Arc<HttpSeries>)>>,
    tcp: Mutex<Vec<(&'static str, Arc<TcpSeries>)>>,
}

impl Base {
    pub(super) fn new(
        families: Arc<Families>,
        reporter: Reporter,
        source: &PeerLabels,
        destination: &PeerLabels,
        service: &ServiceLabels,
        security: Security,
    ) -> Self {
        let values = [
            Arc::from(reporter.as_str()),
            source.workload.clone(),
            source.namespace.clone(),
            source.principal.clone(),
            source.app.clone(),
            source.version.clone(),
            source.canonical_service.clone(),
            source.canonical_revision.clone(),
            source.cluster.clone(),
            destination.workload.clone(),
            destination.namespace.clone(),
            destination.principal.clone(),
            destination.app.clone(),
            destination.version.clone(),
            service.host.clone(),
            service.name.clone(),
            service.namespace.clone(),
            destination.canonical_service.clone(),
            destination.canonical_revision.clone(),
            destination.cluster.clone(),
        ];
        Self {
            families,
            values,
            security,
            http_ok: OnceLock::new(),
            http: Mutex::new(Vec::new()),
            tcp: Mutex::new(Vec::new()),
        }
    }

    /// The HTTP series for `key`.
    pub fn http(&self, key: HttpKey) -> Arc<HttpSeries> {
        if key == HTTP_OK {
            return self.http_ok.get_or_init(|| self.new_http(key)).clone();
        }
        let mut cache = lock(&self.http);
        if let Some((_, s)) = cache.iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let s = self.new_http(key);
        if cache.len() < SERIES_CACHE {
            cache.push((key, s.clone()));
        }
        s
    }

    fn new_http(&self, key: HttpKey) -> Arc<HttpSeries> {
        // `StatusCode::as_str` reads a static table of every code from 100 to 999.
        let status = StatusCode::from_u16(key.code).ok();
        let code = status.as_ref().map_or("0", StatusCode::as_str);
        let security = self.security.as_str();
        let mut v: [&str; 26] = [""; 26];
        for (slot, value) in v.iter_mut().zip(&self.values) {
            *slot = value;
        }
        v[20] = key.protocol.as_str();
        v[21] = code;
        v[22] = key.grpc_status;
        v[23] = key.flags;
        v[24] = security;
        v[25] = security;
        let f = &self.families;
        Arc::new(HttpSeries {
            requests: f.requests.get(&v),
            duration: f.duration.get(&v),
            request_bytes: f.request_bytes.get(&v),
            response_bytes: f.response_bytes.get(&v),
        })
    }

    /// The TCP series with `response_flags` = `flags`.
    pub fn tcp(&self, flags: &'static str) -> Arc<TcpSeries> {
        let mut cache = lock(&self.tcp);
        if let Some((_, s)) = cache.iter().find(|(k, _)| *k == flags) {
            return s.clone();
        }
        let security = self.security.as_str();
        let mut v: [&str; 24] = [""; 24];
        for (slot, value) in v.iter_mut().zip(&self.values) {
            *slot = value;
        }
        v[20] = "tcp";
        v[21] = flags;
        v[22] = security;
        v[23] = security;
        let f = &self.families;
        let s = Arc::new(TcpSeries {
            opened: f.tcp_opened.get(&v),
            closed: f.tcp_closed.get(&v),
            sent: f.tcp_sent.get(&v),
            received: f.tcp_received.get(&v),
        });
        if cache.len() < SERIES_CACHE {
            cache.push((flags, s.clone()));
        }
        s
    }
}
