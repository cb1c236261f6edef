//! The proxy's Prometheus metrics, as docs/metrics.md catalogues them: Istio's standard
//! metrics under their own names, for both reporters (`destination` inbound, `source`
//! outbound), and trustmesh's own (TLS handshakes, authorization decisions, the SVID, the
//! config stream), plus `process_*`.
//!
//! The request path never formats a label: label values are computed once per config
//! version and per peer ([`labels`]), each base keeps the series it looked up ([`series`]),
//! and a request does an atomic add on them ([`exchange`]); [`handshake`] names why a TLS
//! handshake failed. What is not here: the HTTP endpoint (`admin`), the text
//! format (`trustmesh-metrics`).

pub mod exchange;
pub mod handshake;
pub mod labels;
pub mod series;

use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use trustmesh_metrics::{
    BYTES_BUCKETS, Counter, DURATION_MS_BUCKETS, Encoder, Family, Gauge, Kind, process,
};

pub use exchange::{CountedBody, CountedIo, Exchange, RecordedBody};
pub use handshake::HandshakeFailure;
pub use labels::{RouteLabels, UNKNOWN, ViewLabels};
pub use series::{Base, Families};

use trustmesh_core::snapshot::{Snapshot, Workload};

use crate::state::{Identity, MeshView};

/// Which side of the proxy a TLS handshake was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A client connecting to this workload's ports.
    Inbound,
    /// This proxy connecting to a peer proxy.
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Inbound => 0,
            Self::Outbound => 1,
        }
    }
}

/// Every metric of one proxy.
#[derive(Debug)]
pub struct Metrics {
    families: Arc<Families>,
    handshakes: Family<Counter>,
    handshake_failures: Family<Counter>,
    rotations: Family<Counter>,
    cert_expiration: Family<Gauge>,
    cert_renewal: Family<Gauge>,
    config_updates: Family<Counter>,
    config_version: Gauge,
    control_plane_connected: Gauge,
    /// `trustmesh_tls_handshakes_total{result="success"}` per direction.
    handshake_ok: [Arc<Counter>; 2],
    /// The labels of the view last asked about (a `Weak` so the old view is freed, and its
    /// address not reused while it is compared). Read without a lock on every request.
    view: ArcSwapOption<(Weak<MeshView>, Arc<ViewLabels>)>,
    /// Labels before the first config.
    empty: Arc<ViewLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, the fixed-label series at zero.
    pub fn new() -> Self {
        use series::{AUTHZ_LABELS, HTTP_LABELS, TCP_LABELS};
        let families = Arc::new(Families {
            requests: Family::new(
                "istio_requests_total",
                "HTTP requests, counted when the response starts (gRPC: when it ends).",
                HTTP_LABELS,
            ),
            duration: Family::with_config(
                "istio_request_duration_milliseconds",
                "HTTP request duration, request start to response end, in milliseconds.",
                HTTP_LABELS,
                DURATION_MS_BUCKETS,
            ),
            request_bytes: Family::with_config(
                "istio_request_bytes",
                "HTTP request body bytes.",
                HTTP_LABELS,
                BYTES_BUCKETS,
            ),
            response_bytes: Family::with_config(
                "istio_response_bytes",
                "HTTP response body bytes.",
                HTTP_LABELS,
                BYTES_BUCKETS,
            ),
            tcp_opened: Family::new(
                "istio_tcp_connections_opened_total",
                "TCP (non-HTTP) connections opened.",
                TCP_LABELS,
            ),
            tcp_closed: Family::new(
                "istio_tcp_connections_closed_total",
                "TCP (non-HTTP) connections closed.",
                TCP_LABELS,
            ),
            tcp_sent: Family::new(
                "istio_tcp_sent_bytes_total",
                "Bytes the proxy sent to the TCP connection's downstream (the client).",
                TCP_LABELS,
            ),
            tcp_received: Family::new(
                "istio_tcp_received_bytes_total",
                "Bytes the proxy received from the TCP connection's downstream (the client).",
                TCP_LABELS,
            ),
            authz: Family::new(
                "trustmesh_authz_decisions_total",
                "Authorization decisions, and what each dry-run policy would have decided.",
                AUTHZ_LABELS,
            ),
        });
        let handshakes = Family::new(
            "trustmesh_tls_handshakes_total",
            "Mutual TLS handshakes, by direction and result.",
            &["direction", "result"],
        );
        let handshake_failures = Family::new(
            "trustmesh_tls_handshake_failures_total",
            "Failed mutual TLS handshakes, by direction and reason.",
            &["direction", "reason"],
        );
        let rotations = Family::new(
            "trustmesh_certificate_rotations_total",
            "SVID issuances and renewals of this proxy, the first issuance included.",
            &["result"],
        );
        let config_updates = Family::new(
            "trustmesh_config_updates_total",
            "Config pushes applied or refused (a refused one leaves the last good config).",
            &["result"],
        );
        for d in [Direction::Inbound, Direction::Outbound] {
            handshakes.get(&[d.as_str(), "failure"]);
            for r in HandshakeFailure::ALL {
                handshake_failures.get(&[d.as_str(), r.as_str()]);
            }
        }
        for r in ["success", "failure"] {
            rotations.get(&[r]);
        }
        for r in ["accepted", "rejected"] {
            config_updates.get(&[r]);
        }
        let handshake_ok = [
            handshakes.get(&[Direction::Inbound.as_str(), "success"]),
            handshakes.get(&[Direction::Outbound.as_str(), "success"]),
        ];
        Self {
            empty: Arc::new(ViewLabels::empty(families.clone())),
            families,
            handshakes,
            handshake_failures,
            rotations,
            cert_expiration: Family::new(
                "trustmesh_certificate_expiration_timestamp_seconds",
                "NotAfter of the SVID in use, Unix seconds.",
                &["spiffe_id"],
            ),
            cert_renewal: Family::new(
                "trustmesh_certificate_renewal_timestamp_seconds",
                "When the proxy will renew the SVID in use, Unix seconds.",
                &["spiffe_id"],
            ),
            config_updates,
            config_version: Gauge::default(),
            control_plane_connected: Gauge::default(),
            handshake_ok,
            view: ArcSwapOption::empty(),
        }
    }

    /// The label values of `view`, computed once per view.
    pub fn labels(&self, view: &Arc<MeshView>) -> Arc<ViewLabels> {
        if let Some(cached) = &*self.view.load()
            && std::ptr::eq(cached.0.as_ptr(), Arc::as_ptr(view))
        {
            return cached.1.clone();
        }
        // Computed outside any lock: after a config push, requests on the old and the new
        // view may both compute theirs; the last one stored stays until the next miss.
        let l = self.labels_for(&view.snapshot, &view.workload);
        self.view
            .store(Some(Arc::new((Arc::downgrade(view), l.clone()))));
        l
    }

    /// The label values of the proxy of `own` in `snapshot`, uncached ([`Metrics::labels`]
    /// keeps one per view).
    pub fn labels_for(&self, snapshot: &Snapshot, own: &Workload) -> Arc<ViewLabels> {
        Arc::new(ViewLabels::new(self.families.clone(), snapshot, own))
    }

    /// The labels before a config arrived: every value unknown.
    pub fn no_view(&self) -> Arc<ViewLabels> {
        self.empty.clone()
    }

    /// A mutual TLS handshake succeeded.
    pub fn handshake_succeeded(&self, direction: Direction) {
        self.handshake_ok[direction.index()].inc();
    }

    /// A handshake failed (also counted in `trustmesh_tls_handshakes_total{result="failure"}`,
    /// so the failures by reason add up to it).
    pub fn handshake_failed(&self, direction: Direction, reason: HandshakeFailure) {
        let d = direction.as_str();
        self.handshakes.get(&[d, "failure"]).inc();
        self.handshake_failures.get(&[d, reason.as_str()]).inc();
    }

    /// A new SVID is in use.
    pub fn certificate_issued(&self, identity: &Identity) {
        self.rotations.get(&["success"]).inc();
        // The identity may change with the config: only the SVID in use has a series.
        self.cert_expiration.clear();
        self.cert_renewal.clear();
        let id = identity.id.as_str();
        self.cert_expiration
            .get(&[id])
            .set(unix_seconds(identity.not_after));
        self.cert_renewal
            .get(&[id])
            .set(unix_seconds(identity.renewal_time));
    }

    /// An issuance or renewal attempt failed.
    pub fn certificate_failed(&self) {
        self.rotations.get(&["failure"]).inc();
    }

    /// Config `version` is in force.
    pub fn config_accepted(&self, version: u64) {
        self.config_updates.get(&["accepted"]).inc();
        self.config_version.set(version as f64);
    }

    /// A config push was refused.
    pub fn config_rejected(&self) {
        self.config_updates.get(&["rejected"]).inc();
    }

    /// The config stream to the control plane went up or down.
    pub fn set_control_plane_connected(&self, up: bool) {
        self.control_plane_connected.set(if up { 1.0 } else { 0.0 });
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Encoder::new();
        let f = &self.families;
        f.requests.render(&mut out);
        f.duration.render(&mut out);
        f.request_bytes.render(&mut out);
        f.response_bytes.render(&mut out);
        f.tcp_opened.render(&mut out);
        f.tcp_closed.render(&mut out);
        f.tcp_sent.render(&mut out);
        f.tcp_received.render(&mut out);
        self.handshakes.render(&mut out);
        self.handshake_failures.render(&mut out);
        f.authz.render(&mut out);
        self.rotations.render(&mut out);
        self.cert_expiration.render(&mut out);
        self.cert_renewal.render(&mut out);
        self.config_updates.render(&mut out);
        out.single(
            "trustmesh_config_version",
            "Version of the config in force (0: none yet).",
            Kind::Gauge,
            self.config_version.get(),
        );
        out.single(
            "trustmesh_control_plane_connected",
            "1 while the config stream to the control plane is up, else 0.",
            Kind::Gauge,
            self.control_plane_connected.get(),
        );
        process::render(&mut out);
        out.finish()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
