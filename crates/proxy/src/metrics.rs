//! The proxy's Prometheus metrics (port 15090): a minimal, honest subset of Istio's standard
//! metrics for inbound traffic, under the names dashboards already query.
//!
//! Istio's standard metrics: `istio_requests_total` ("a COUNTER incremented for every
//! request handled by an Istio proxy"), `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, with `reporter="destination"` for the inbound side and
//! `connection_security_policy` = `mutual_tls` | `none`. Only labels this proxy actually knows
//! are emitted; the full label set, histograms and the outbound side come with the metrics
//! work. What is not here: the HTTP endpoint (`admin`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// `source_principal` / `destination_principal` when there is no verified identity.
pub const UNKNOWN: &str = "unknown";

/// One counter family: a name, its help, its label names, and a value per label set.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Family {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn add(&self, values: Vec<String>, n: u64) {
        debug_assert_eq!(values.len(), self.labels.len());
        let mut map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(values).or_insert(0) += n;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (values, n) in map.iter() {
            out.push_str(self.name);
            out.push('{');
            for (i, (k, v)) in self.labels.iter().zip(values).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            let _ = writeln!(out, "}} {n}");
        }
    }

    #[cfg(test)]
    fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }
}

/// Prometheus text format: "label_value can be any sequence of UTF-8 characters, but the
/// backslash (`\`), double-quote (`"`), and line feed (`\n`) characters have to be escaped".
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

const REQUEST_LABELS: &[&str] = &[
    "reporter",
    "source_principal",
    "destination_principal",
    "destination_workload",
    "destination_workload_namespace",
    "request_protocol",
    "response_code",
    "response_flags",
    "connection_security_policy",
];

const TCP_LABELS: &[&str] = &[
    "reporter",
    "source_principal",
    "destination_principal",
    "destination_workload",
    "destination_workload_namespace",
    "connection_security_policy",
];

/// Who talked to whom, for labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers<'a> {
    /// The verified client identity, if mTLS.
    pub source_principal: Option<&'a str>,
    /// This workload's identity.
    pub destination_principal: &'a str,
    /// This workload's name.
    pub destination_workload: &'a str,
    /// This workload's namespace.
    pub destination_namespace: &'a str,
}

impl Peers<'_> {
    fn base(&self) -> Vec<String> {
        vec![
            "destination".to_owned(),
            self.source_principal.unwrap_or(UNKNOWN).to_owned(),
            self.destination_principal.to_owned(),
            self.destination_workload.to_owned(),
            self.destination_namespace.to_owned(),
        ]
    }

    fn security(&self) -> String {
        if self.source_principal.is_some() {
            "mutual_tls"
        } else {
            "none"
        }
        .to_owned()
    }
}

/// Every counter of one proxy.
#[derive(Debug)]
pub struct Metrics {
    requests: Family,
    opened: Family,
    closed: Family,
    sent: Family,
    received: Family,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::new(
                "istio_requests_total",
                "Requests handled by this proxy.",
                REQUEST_LABELS,
            ),
            opened: Family::new(
                "istio_tcp_connections_opened_total",
                "TCP connections opened (after authorization allowed them).",
                TCP_LABELS,
            ),
            closed: Family::new(
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                TCP_LABELS,
            ),
            sent: Family::new(
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client on TCP connections.",
                TCP_LABELS,
            ),
            received: Family::new(
                "istio_tcp_received_bytes_total",
                "Bytes received from the client on TCP connections.",
                TCP_LABELS,
            ),
        }
    }
}

impl Metrics {
    /// Counts one HTTP request answered with `code` (`response_flags`: `-`, or Envoy's `UF`
    /// when the app could not be reached).
    pub fn request(&self, peers: &Peers<'_>, protocol: &str, code: u16, flags: &str) {
        let mut l = peers.base();
        l.push(protocol.to_owned());
        l.push(code.to_string());
        l.push(flags.to_owned());
        l.push(peers.security());
        self.requests.add(l, 1);
    }

    /// Counts a TCP connection opened to the app.
    pub fn tcp_opened(&self, peers: &Peers<'_>) {
        let mut l = peers.base();
        l.push(peers.security());
        self.opened.add(l, 1);
    }

    /// Counts a TCP connection closed, with the bytes each way.
    pub fn tcp_closed(&self, peers: &Peers<'_>, sent: u64, received: u64) {
        let mut l = peers.base();
        l.push(peers.security());
        self.closed.add(l.clone(), 1);
        self.sent.add(l.clone(), sent);
        self.received.add(l, received);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in [
            &self.requests,
            &self.opened,
            &self.closed,
            &self.sent,
            &self.received,
        ] {
            f.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = Metrics::default();
        let peers = Peers {
            source_principal: Some("spiffe://td/ns/a/sa/\"b\""),
            destination_principal: "spiffe://td/ns/p/sa/orders",
            destination_workload: "orders",
            destination_namespace: "p",
        };
        m.request(&peers, "http", 403, "-");
        m.request(&peers, "http", 403, "-");
        let plain = Peers {
            source_principal: None,
            ..peers.clone()
        };
        m.tcp_opened(&plain);
        m.tcp_closed(&plain, 10, 20);
        let text = m.render();
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"istio_requests_total{reporter="destination",source_principal="spiffe://td/ns/a/sa/\"b\"",destination_principal="spiffe://td/ns/p/sa/orders",destination_workload="orders",destination_workload_namespace="p",request_protocol="http",response_code="403",response_flags="-",connection_security_policy="mutual_tls"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"istio_tcp_sent_bytes_total{reporter="destination",source_principal="unknown",destination_principal="spiffe://td/ns/p/sa/orders",destination_workload="orders",destination_workload_namespace="p",connection_security_policy="none"} 10"#), "{text}");
        assert_eq!(
            m.opened.get(&[
                "destination",
                "unknown",
                "spiffe://td/ns/p/sa/orders",
                "orders",
                "p",
                "none"
            ]),
            1
        );
    }
}
