//! Reading a Prometheus text exposition the way Prometheus does, so tests assert exact label
//! sets and values instead of substrings: samples with their labels (in order, unescaped),
//! and the full Istio label set of docs/metrics.md built from named parts.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::collections::BTreeMap;
use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
            .collect();
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// Every sample of `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// `name`'s samples whose labels include every pair of `subset`, as label map → value.
    pub fn matching(&self, name: &str, subset: &[(&str, &str)]) -> BTreeMap<Labels, f64> {
        self.series(name)
            .into_iter()
            .filter(|s| {
                subset
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
            })
            .map(|s| (Labels(s.labels.iter().cloned().collect()), s.value))
            .collect()
    }

    /// The value of the sample of `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.series(name)
            .into_iter()
            .find(|s| Labels(s.labels.iter().cloned().collect()) == *labels)
            .map(|s| s.value)
    }

    /// The value of a sample with exactly `labels` (given as pairs).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.value(name, &Labels::from(labels))
    }

    /// The sum over `name`'s samples whose labels include `subset`.
    pub fn sum(&self, name: &str, subset: &[(&str, &str)]) -> f64 {
        self.matching(name, subset).values().sum()
    }
}

/// A label set, order-insensitive.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels(pub BTreeMap<String, String>);

impl From<&[(&str, &str)]> for Labels {
    fn from(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl Labels {
    /// This set with `k` set to `v`.
    pub fn with(&self, k: &str, v: &str) -> Self {
        let mut m = self.0.clone();
        m.insert(k.to_owned(), v.to_owned());
        Self(m)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}}")
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some(open) = head.find('{') else {
        return Some(Sample {
            name: head.to_owned(),
            labels: vec![],
            value,
        });
    };
    let name = head[..open].to_owned();
    let body = head[open + 1..].strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut v = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.push((key, v));
        match chars.next() {
            Some(',') => {}
            None => break,
            Some(_) => return None,
        }
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The label names of the HTTP Istio metrics, in docs/metrics.md's order.
pub const HTTP_LABEL_ORDER: &[&str] = &[
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

/// One side of a connection as the `source_*` / `destination_*` labels name it.
#[derive(Debug, Clone)]
pub struct Side {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Side {
    pub fn unknown() -> Self {
        let u = || "unknown".to_owned();
        Self {
            workload: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: u(),
            cluster: u(),
        }
    }
}

/// `destination_service`, `_name`, `_namespace`.
#[derive(Debug, Clone)]
pub struct Service {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl Service {
    pub fn new(host: &str, name: &str, namespace: &str) -> Self {
        Self {
            host: host.into(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// The full label set of an Istio TCP metric.
pub fn istio_tcp(
    reporter: &str,
    src: &Side,
    dst: &Side,
    svc: &Service,
    flags: &str,
    security: &str,
) -> Labels {
    let pairs: Vec<(&str, &str)> = vec![
        ("reporter", reporter),
        ("source_workload", &src.workload),
        ("source_workload_namespace", &src.namespace),
        ("source_principal", &src.principal),
        ("source_app", &src.app),
        ("source_version", &src.version),
        ("source_canonical_service", &src.canonical_service),
        ("source_canonical_revision", &src.canonical_revision),
        ("source_cluster", &src.cluster),
        ("destination_workload", &dst.workload),
        ("destination_workload_namespace", &dst.namespace),
        ("destination_principal", &dst.principal),
        ("destination_app", &dst.app),
        ("destination_version", &dst.version),
        ("destination_service", &svc.host),
        ("destination_service_name", &svc.name),
        ("destination_service_namespace", &svc.namespace),
        ("destination_canonical_service", &dst.canonical_service),
        ("destination_canonical_revision", &dst.canonical_revision),
        ("destination_cluster", &dst.cluster),
        ("request_protocol", "tcp"),
        ("response_flags", flags),
        ("connection_security_policy", security),
        ("security_policy", security),
    ];
    Labels::from(&pairs[..])
}

/// The full label set of an Istio HTTP metric.
#[allow(clippy::too_many_arguments)]
pub fn istio_http(
    reporter: &str,
    src: &Side,
    dst: &Side,
    svc: &Service,
    code: &str,
    flags: &str,
    security: &str,
) -> Labels {
    istio_tcp(reporter, src, dst, svc, flags, security)
        .with("request_protocol", "http")
        .with("response_code", code)
        .with("grpc_response_status", "")
}
