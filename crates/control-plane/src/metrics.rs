//! The control plane's metrics, as docs/metrics.md "Control plane" lists them, and their
//! Prometheus exposition through `trustmesh-metrics`:
//! - counters updated where things happen ([`Metrics`]): config reloads, SVIDs signed and
//!   refused, join-token and stream refusals, updates sent;
//! - values read at scrape time ([`Scrape`]): the config version and reload status, open
//!   config streams and which workloads hold one, the CA roots' NotAfter, and cert-manager's
//!   certificate gauges for every cert-manager `Certificate` of the config and every workload
//!   SVID this process signed ([`CertGauges`]);
//! - the `process_*` metrics (`trustmesh_metrics::process`).
//!
//! Nothing is estimated: each value is a count or a time read from what the control plane
//! holds. What does not live here: the HTTP endpoint (`admin`), the encoding
//! (`trustmesh-metrics`), the renewal formulas (`trustmesh_core::renewal`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use trustmesh_core::renewal::workload_renewal_time;
use trustmesh_metrics::{Counter, Encoder, Kind};
use trustmesh_pki::CertInfo;
use trustmesh_pki::controller::{self, CertificateView};

use crate::state::{Issued, Shared};
use crate::tokens::unix;

/// `issuer_kind` of a workload SVID's cert-manager gauges.
pub(crate) const MESH_CA_KIND: &str = "MeshCA";
/// `issuer_group` of a workload SVID's cert-manager gauges.
pub(crate) const MESH_CA_GROUP: &str = "trustmesh.io";

/// Counters updated where things happen.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Reloads accepted (the initial load included).
    pub reloads_accepted: Counter,
    /// Reloads refused (the last good snapshot stayed).
    pub reloads_rejected: Counter,
    /// SVIDs signed against a join token.
    pub signed_bootstrap: Counter,
    /// SVIDs signed for a caller presenting its current SVID.
    pub signed_renewal: Counter,
    /// Sign requests refused (any reason: token, identity, CSR).
    pub sign_refusals: Counter,
    /// Join tokens refused (unknown, expired, used, other workload).
    pub token_refusals: Counter,
    /// Config streams refused (no or wrong identity, unknown workload).
    pub stream_refusals: Counter,
    /// `ProxyUpdate`s sent.
    pub updates_sent: Counter,
}

/// The `condition` label of `certmanager_certificate_ready_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Ready condition `True`.
    True,
    /// Ready condition `False`.
    False,
    /// No Ready condition.
    Unknown,
}

impl Ready {
    const ALL: [Ready; 3] = [Ready::True, Ready::False, Ready::Unknown];

    fn as_str(self) -> &'static str {
        match self {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        }
    }
}

/// One certificate as cert-manager's certificate collector reports it: its labels and the
/// times of its status, Unix seconds, 0 when unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertGauges {
    pub name: String,
    pub namespace: String,
    pub issuer_name: String,
    pub issuer_kind: String,
    pub issuer_group: String,
    /// `status.notBefore`.
    pub not_before: u64,
    /// `status.notAfter`.
    pub not_after: u64,
    /// `status.renewalTime`.
    pub renewal: u64,
    /// The Ready condition.
    pub ready: Ready,
}

impl CertGauges {
    /// A cert-manager `Certificate` from the controller's status. cert-manager §5.7: labels
    /// "taken verbatim from `spec.issuerRef`, so empty string if omitted"; the times are
    /// "Unix seconds (0 if unset)"; `ready_status` "Unknown=1 if no Ready condition".
    pub fn from_view(v: &CertificateView) -> Self {
        let not_before = v.not_before_timestamp.unwrap_or(0);
        Self {
            name: v.name.clone(),
            namespace: v.namespace.clone(),
            issuer_name: v.issuer_name.clone(),
            issuer_kind: v.issuer_kind.clone(),
            issuer_group: v.issuer_group.clone(),
            not_before,
            not_after: v.expiration_timestamp.unwrap_or(0),
            renewal: v.renewal_timestamp.unwrap_or(0),
            ready: match v.ready.as_str() {
                "True" => Ready::True,
                "False" => Ready::False,
                _ => Ready::Unknown,
            },
        }
    }

    /// The last SVID signed for workload `namespace/name`, as docs/metrics.md maps it:
    /// "`name` = workload, `namespace` = its namespace, `issuer_name` = trust domain,
    /// `issuer_kind="MeshCA"`, `issuer_group="trustmesh.io"`". The renewal time is the one the
    /// proxy works from (`workload_renewal_time`, without its random jitter); Ready is `True`
    /// while the SVID has not expired.
    pub fn from_svid(namespace: &str, name: &str, svid: &Issued, now: SystemTime) -> Self {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let renewal = workload_renewal_time(at(svid.not_before_unix), at(svid.not_after_unix), 0.0);
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            issuer_name: svid.trust_domain.clone(),
            issuer_kind: MESH_CA_KIND.to_owned(),
            issuer_group: MESH_CA_GROUP.to_owned(),
            not_before: svid.not_before_unix,
            not_after: svid.not_after_unix,
            renewal: unix(renewal),
            ready: if now < at(svid.not_after_unix) {
                Ready::True
            } else {
                Ready::False
            },
        }
    }

    fn labels(&self) -> [(&'static str, &str); 5] {
        [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("issuer_name", &self.issuer_name),
            ("issuer_kind", &self.issuer_kind),
            ("issuer_group", &self.issuer_group),
        ]
    }
}

/// Whether the proxy of one workload of the snapshot holds a config stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyConnected {
    pub namespace: String,
    pub workload: String,
    pub connected: bool,
}

/// What `/metrics` reads at scrape time rather than counts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    /// Current config version.
    pub config_version: u64,
    /// Open config streams.
    pub connected_proxies: u64,
    /// Whether the last reload was accepted.
    pub last_reload_ok: bool,
    /// Unix seconds of the last accepted reload.
    pub last_accepted_unix: u64,
    /// cert-manager Certificates, then workload SVIDs.
    pub certificates: Vec<CertGauges>,
    /// One per workload of the snapshot.
    pub proxies: Vec<ProxyConnected>,
    /// Trust domain → NotAfter of its CA root, Unix seconds.
    pub ca_roots: Vec<(String, u64)>,
}

/// Reads everything [`Scrape`] holds from the shared state. Blocking: it reads the
/// cert-manager Secret folders.
pub(crate) fn scrape(shared: &Shared) -> Scrape {
    let published = shared.current();
    let now = shared.clock.now();
    let reload = shared.reload_status();
    let streams = shared.streams();
    let issued = shared.issued();
    let workloads = published.snapshot.workloads();

    let mut certificates: Vec<CertGauges> =
        controller::status(&published.snapshot, &shared.state_dir, now)
            .iter()
            .map(CertGauges::from_view)
            .collect();
    // Workloads that left the config are gone from the metrics, as a deleted Certificate is
    // from cert-manager's.
    certificates.extend(workloads.iter().filter_map(|w| {
        let svid = issued.get(&format!("{}/{}", w.namespace, w.name))?;
        Some(CertGauges::from_svid(&w.namespace, &w.name, svid, now))
    }));

    let proxies = workloads
        .iter()
        .map(|w| ProxyConnected {
            namespace: w.namespace.clone(),
            workload: w.name.clone(),
            connected: streams
                .get(&format!("{}/{}", w.namespace, w.name))
                .is_some_and(|n| *n > 0),
        })
        .collect();

    let ca_roots = shared
        .cas
        .load()
        .iter()
        .filter_map(|(td, ca)| match CertInfo::parse(ca.root_der()) {
            Ok(root) => Some((td.as_str().to_owned(), unix(root.not_after))),
            Err(e) => {
                tracing::warn!(trust_domain = %td, error = %e, "CA root unreadable; not in the metrics");
                None
            }
        })
        .collect();

    Scrape {
        config_version: published.version,
        connected_proxies: streams.values().map(|n| *n as u64).sum(),
        last_reload_ok: reload.result == "accepted",
        last_accepted_unix: reload.last_accepted_at,
        certificates,
        proxies,
        ca_roots,
    }
}

/// The whole exposition of the control plane: [`scrape`], [`Metrics::render`], `process_*`.
pub(crate) fn render(shared: &Shared) -> String {
    let mut out = Encoder::new();
    shared.metrics.render(&scrape(shared), &mut out);
    trustmesh_metrics::process::render(&mut out);
    out.finish()
}

/// A time gauge of cert-manager's: name, help, which time.
type CertTime = (&'static str, &'static str, fn(&CertGauges) -> u64);

/// cert-manager's time gauges, by the names its certificate collector registers.
const CERT_GAUGES: [CertTime; 4] = [
    (
        "certmanager_certificate_expiration_timestamp_seconds",
        "The time after which the certificate expires (status.notAfter), Unix seconds; 0 if unset.",
        |c| c.not_after,
    ),
    (
        "certmanager_certificate_not_after_timestamp_seconds",
        "The time after which the certificate is invalid (status.notAfter), Unix seconds; 0 if unset.",
        |c| c.not_after,
    ),
    (
        "certmanager_certificate_not_before_timestamp_seconds",
        "The time before which the certificate is invalid (status.notBefore), Unix seconds; 0 if unset.",
        |c| c.not_before,
    ),
    (
        "certmanager_certificate_renewal_timestamp_seconds",
        "The time the certificate is due for renewal (status.renewalTime), Unix seconds; 0 if unset.",
        |c| c.renewal,
    ),
];

impl Metrics {
    /// Writes every family of the catalogue, in docs/metrics.md's order.
    pub fn render(&self, s: &Scrape, out: &mut Encoder) {
        let mut certs: Vec<&CertGauges> = s.certificates.iter().collect();
        certs.sort_by(|a, b| a.labels().cmp(&b.labels()));
        // Two sources could name the same series only by a Certificate whose issuerRef is
        // spelled like the mesh CA; Prometheus refuses a scrape with a duplicate series.
        certs.dedup_by(|a, b| a.labels() == b.labels());
        for (name, help, time) in CERT_GAUGES {
            out.header(name, help, Kind::Gauge);
            for c in &certs {
                out.sample(name, &c.labels(), time(c) as f64);
            }
        }
        let ready = "certmanager_certificate_ready_status";
        out.header(ready, "The ready status of the certificate.", Kind::Gauge);
        for c in &certs {
            for condition in Ready::ALL {
                let mut labels = c.labels().to_vec();
                labels.push(("condition", condition.as_str()));
                out.sample(ready, &labels, f64::from(u8::from(c.ready == condition)));
            }
        }

        let name = "trustmesh_control_plane_config_reloads_total";
        out.header(
            name,
            "Config loads by result; a rejected reload keeps the last good snapshot.",
            Kind::Counter,
        );
        out.sample(
            name,
            &[("result", "accepted")],
            self.reloads_accepted.get() as f64,
        );
        out.sample(
            name,
            &[("result", "rejected")],
            self.reloads_rejected.get() as f64,
        );
        out.single(
            "trustmesh_control_plane_config_version",
            "Version of the snapshot proxies are sent.",
            Kind::Gauge,
            s.config_version as f64,
        );
        out.single(
            "trustmesh_control_plane_config_last_reload_successful",
            "1 if the last config reload was accepted, else 0.",
            Kind::Gauge,
            f64::from(u8::from(s.last_reload_ok)),
        );
        out.single(
            "trustmesh_control_plane_config_last_accepted_timestamp_seconds",
            "Unix time of the last accepted config load.",
            Kind::Gauge,
            s.last_accepted_unix as f64,
        );
        out.single(
            "trustmesh_control_plane_connected_proxies",
            "Open config streams.",
            Kind::Gauge,
            s.connected_proxies as f64,
        );
        let name = "trustmesh_control_plane_proxy_connected";
        out.header(
            name,
            "1 if the proxy of this workload of the snapshot holds a config stream, else 0.",
            Kind::Gauge,
        );
        let mut proxies: Vec<&ProxyConnected> = s.proxies.iter().collect();
        proxies.sort_by(|a, b| (&a.workload, &a.namespace).cmp(&(&b.workload, &b.namespace)));
        for p in proxies {
            out.sample(
                name,
                &[("workload", &p.workload), ("namespace", &p.namespace)],
                f64::from(u8::from(p.connected)),
            );
        }
        let name = "trustmesh_control_plane_svids_signed_total";
        out.header(
            name,
            "Workload SVIDs signed, by how the caller authenticated.",
            Kind::Counter,
        );
        out.sample(
            name,
            &[("method", "join_token")],
            self.signed_bootstrap.get() as f64,
        );
        out.sample(
            name,
            &[("method", "svid")],
            self.signed_renewal.get() as f64,
        );
        for (name, help, c) in [
            (
                "trustmesh_control_plane_sign_refusals_total",
                "Sign requests refused.",
                &self.sign_refusals,
            ),
            (
                "trustmesh_control_plane_join_token_refusals_total",
                "Join tokens refused: unknown, expired, already used, or bound to another workload.",
                &self.token_refusals,
            ),
            (
                "trustmesh_control_plane_stream_refusals_total",
                "Config streams refused.",
                &self.stream_refusals,
            ),
            (
                "trustmesh_control_plane_proxy_updates_sent_total",
                "ProxyUpdate messages sent to proxies.",
                &self.updates_sent,
            ),
        ] {
            out.single(name, help, Kind::Counter, c.get() as f64);
        }
        let name = "trustmesh_ca_expiration_timestamp_seconds";
        out.header(
            name,
            "NotAfter of the root of the CA of each trust domain, Unix seconds.",
            Kind::Gauge,
        );
        let mut roots: Vec<&(String, u64)> = s.ca_roots.iter().collect();
        roots.sort();
        for (td, not_after) in roots {
            out.sample(name, &[("trust_domain", td)], *not_after as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const H: u64 = 3600;
    const T0: u64 = 1_800_000_000;

    fn render(m: &Metrics, s: &Scrape) -> String {
        let mut out = Encoder::new();
        m.render(s, &mut out);
        out.finish()
    }

    /// Sample lines: series → value.
    fn samples(text: &str) -> BTreeMap<&str, &str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap())
            .collect()
    }

    fn view() -> CertificateView {
        CertificateView {
            namespace: "shop".into(),
            name: "shop-tls".into(),
            ready: "True".into(),
            reason: "Ready".into(),
            message: String::new(),
            secret_name: "shop-tls".into(),
            issuer: "Issuer/ca".into(),
            identity: String::new(),
            not_before: Some("2027-01-15T08:00:00Z".into()),
            not_after: Some("2027-01-16T08:00:00Z".into()),
            renewal_time: Some("2027-01-16T00:00:00Z".into()),
            not_before_timestamp: Some(T0),
            expiration_timestamp: Some(T0 + 24 * H),
            renewal_timestamp: Some(T0 + 16 * H),
            revision: 1,
            serial: Some("01".into()),
            issuer_kind: String::new(),
            issuer_name: "ca".into(),
            issuer_group: String::new(),
        }
    }

    fn issued(not_before: u64, not_after: u64) -> Issued {
        Issued {
            serial: "0a".into(),
            not_before: String::new(),
            not_before_unix: not_before,
            not_after: String::new(),
            not_after_unix: not_after,
            issued_at: not_before,
            trust_domain: "td.test".into(),
        }
    }

    #[test]
    fn counters_and_scrape_values_keep_their_names() {
        let m = Metrics::default();
        m.reloads_accepted.inc();
        m.reloads_rejected.inc();
        m.reloads_rejected.inc();
        m.token_refusals.inc();
        let text = render(
            &m,
            &Scrape {
                config_version: 3,
                connected_proxies: 2,
                last_reload_ok: false,
                last_accepted_unix: 1_800_000_000,
                ..Scrape::default()
            },
        );
        for line in [
            "# TYPE trustmesh_control_plane_config_reloads_total counter",
            "trustmesh_control_plane_config_reloads_total{result=\"accepted\"} 1",
            "trustmesh_control_plane_config_reloads_total{result=\"rejected\"} 2",
            "trustmesh_control_plane_config_version 3",
            "trustmesh_control_plane_connected_proxies 2",
            "trustmesh_control_plane_config_last_reload_successful 0",
            "trustmesh_control_plane_config_last_accepted_timestamp_seconds 1800000000",
            "trustmesh_control_plane_join_token_refusals_total 1",
            "trustmesh_control_plane_svids_signed_total{method=\"svid\"} 0",
            "trustmesh_control_plane_svids_signed_total{method=\"join_token\"} 0",
            "trustmesh_control_plane_sign_refusals_total 0",
            "trustmesh_control_plane_stream_refusals_total 0",
            "trustmesh_control_plane_proxy_updates_sent_total 0",
            "# TYPE certmanager_certificate_ready_status gauge",
            "# TYPE trustmesh_control_plane_proxy_connected gauge",
            "# TYPE trustmesh_ca_expiration_timestamp_seconds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family announced with HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    /// §5.7: labels "taken verbatim from `spec.issuerRef`, so empty string if omitted";
    /// `expiration_timestamp_seconds` = "`status.notAfter` Unix seconds"; `renewal` =
    /// "`status.renewalTime`"; `ready_status` "one-hot".
    #[test]
    fn a_certificate_has_its_status_times_and_one_hot_ready() {
        let s = Scrape {
            certificates: vec![CertGauges::from_view(&view())],
            ..Scrape::default()
        };
        let text = render(&Metrics::default(), &s);
        let got = samples(&text);
        let l =
            r#"{name="shop-tls",namespace="shop",issuer_name="ca",issuer_kind="",issuer_group=""}"#;
        let at = |m: &str| got[format!("{m}{l}").as_str()];
        assert_eq!(
            at("certmanager_certificate_expiration_timestamp_seconds"),
            "1800086400"
        );
        assert_eq!(
            at("certmanager_certificate_not_after_timestamp_seconds"),
            "1800086400"
        );
        assert_eq!(
            at("certmanager_certificate_not_before_timestamp_seconds"),
            "1800000000"
        );
        assert_eq!(
            at("certmanager_certificate_renewal_timestamp_seconds"),
            "1800057600"
        );
        let ready = |c: &str| {
            got[format!(
                r#"certmanager_certificate_ready_status{{name="shop-tls",namespace="shop",issuer_name="ca",issuer_kind="",issuer_group="",condition="{c}"}}"#
            )
            .as_str()]
        };
        assert_eq!(
            (ready("True"), ready("False"), ready("Unknown")),
            ("1", "0", "0")
        );
    }

    /// §5.7: "(0 if unset)" — a Certificate not issued yet has no status times.
    #[test]
    fn an_unissued_certificate_has_zero_times_and_ready_false() {
        let mut v = view();
        v.ready = "False".into();
        v.not_before = None;
        v.not_before_timestamp = None;
        v.not_after = None;
        v.expiration_timestamp = None;
        v.renewal_timestamp = None;
        let c = CertGauges::from_view(&v);
        assert_eq!((c.not_before, c.not_after, c.renewal), (0, 0, 0));
        assert_eq!(c.ready, Ready::False);
        v.ready = "Pending".into();
        assert_eq!(CertGauges::from_view(&v).ready, Ready::Unknown);
    }

    /// docs/metrics.md: a workload SVID is `issuer_kind="MeshCA"`, `issuer_group="trustmesh.io"`,
    /// `issuer_name` = trust domain; renewal at half-life (no jitter); Ready while unexpired.
    #[test]
    fn a_workload_svid_is_reported_like_a_certificate_of_the_mesh_ca() {
        let svid = issued(T0, T0 + 24 * H);
        let now = UNIX_EPOCH + Duration::from_secs(T0 + H);
        let c = CertGauges::from_svid("shop", "web", &svid, now);
        assert_eq!(
            c,
            CertGauges {
                name: "web".into(),
                namespace: "shop".into(),
                issuer_name: "td.test".into(),
                issuer_kind: "MeshCA".into(),
                issuer_group: "trustmesh.io".into(),
                not_before: T0,
                not_after: T0 + 24 * H,
                renewal: T0 + 12 * H,
                ready: Ready::True,
            }
        );
        let expired = UNIX_EPOCH + Duration::from_secs(T0 + 24 * H);
        assert_eq!(
            CertGauges::from_svid("shop", "web", &svid, expired).ready,
            Ready::False
        );
    }

    #[test]
    fn proxies_and_ca_roots_are_one_sample_each() {
        let s = Scrape {
            proxies: vec![
                ProxyConnected {
                    namespace: "shop".into(),
                    workload: "web".into(),
                    connected: true,
                },
                ProxyConnected {
                    namespace: "shop".into(),
                    workload: "db".into(),
                    connected: false,
                },
            ],
            ca_roots: vec![("td.test".into(), T0 + 87_600 * H)],
            ..Scrape::default()
        };
        let text = render(&Metrics::default(), &s);
        let got = samples(&text);
        assert_eq!(
            got[r#"trustmesh_control_plane_proxy_connected{workload="web",namespace="shop"}"#],
            "1"
        );
        assert_eq!(
            got[r#"trustmesh_control_plane_proxy_connected{workload="db",namespace="shop"}"#],
            "0"
        );
        assert_eq!(
            got[r#"trustmesh_ca_expiration_timestamp_seconds{trust_domain="td.test"}"#],
            "2115360000"
        );
    }

    #[test]
    fn a_certificate_spelled_like_the_mesh_ca_does_not_duplicate_a_series() {
        let svid = CertGauges::from_svid(
            "shop",
            "web",
            &issued(T0, T0 + 24 * H),
            UNIX_EPOCH + Duration::from_secs(T0),
        );
        let s = Scrape {
            certificates: vec![svid.clone(), svid],
            ..Scrape::default()
        };
        let text = render(&Metrics::default(), &s);
        let n = text
            .lines()
            .filter(|l| l.starts_with("certmanager_certificate_expiration_timestamp_seconds{"))
            .count();
        assert_eq!(n, 1, "{text}");
    }
}
