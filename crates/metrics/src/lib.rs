//! Prometheus text exposition, format 0.0.4 (what `promtool check metrics` and Prometheus 2
//! read), for the proxy and the control plane: labelled counters, gauges and histograms that
//! the request path updates with atomics, an [`Encoder`] for values read at scrape time, and
//! the standard `process_*` metrics ([`process`]).
//!
//! Why not the `prometheus` crate: the request path needs a lookup that does not allocate
//! (a hit hashes the borrowed label values and compares them in place), and the names we
//! must emit (Istio's `istio_requests_total`, cert-manager's gauges) are plain strings here,
//! exactly as registered. What does not live here: which metrics exist (the proxy and the
//! control plane own their catalogues; `docs/metrics.md` lists them) and the HTTP endpoint.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub mod process;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Envoy's default histogram buckets, which Istio uses for `istio_request_duration_milliseconds`.
pub const DURATION_MS_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Powers of ten from 1 B to 1 GB, for `istio_request_bytes` / `istio_response_bytes`.
pub const BYTES_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

/// What a family's `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Any value.
    Gauge,
    /// Cumulative buckets, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the text format: `# HELP`/`# TYPE` headers, then samples with escaped label values.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family. Every sample of a family must follow its header.
    pub fn header(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels.iter().copied());
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A whole family with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.header(name, help, kind);
        self.sample(name, &[], value);
    }

    /// The exposition so far.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_into(out, v);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// "label_value can be any sequence of UTF-8 characters, but the backslash (`\`),
/// double-quote (`"`), and line feed (`\n`) characters have to be escaped as `\\`, `\"`, and
/// `\n`, respectively."
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP lines escape backslash and line feed only.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's `ParseFloat` forms: `+Inf`, `-Inf`, `NaN`, else the shortest decimal.
fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A value that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that is set.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending; `+Inf` is implied).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last slot is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self
                .sum
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

/// A metric that can live in a [`Family`].
pub trait Metric: Send + Sync + 'static {
    /// What it needs to be created (histogram bounds).
    type Config: Copy + Send + Sync + std::fmt::Debug + 'static;
    /// Its `# TYPE`.
    const KIND: Kind;
    /// A zero metric.
    fn create(config: Self::Config) -> Self;
    /// Writes its samples.
    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut Encoder);
}

impl Metric for Counter {
    type Config = ();
    const KIND: Kind = Kind::Counter;
    fn create((): ()) -> Self {
        Self::default()
    }
    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut Encoder) {
        out.sample(name, labels, self.get() as f64);
    }
}

impl Metric for Gauge {
    type Config = ();
    const KIND: Kind = Kind::Gauge;
    fn create((): ()) -> Self {
        Self::default()
    }
    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut Encoder) {
        out.sample(name, labels, self.get());
    }
}

impl Metric for Histogram {
    type Config = &'static [f64];
    const KIND: Kind = Kind::Histogram;
    fn create(bounds: &'static [f64]) -> Self {
        Self::new(bounds)
    }
    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut Encoder) {
        // Read the buckets once so `_count` equals the `+Inf` bucket even under updates.
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let bucket = format!("{name}_bucket");
        let les: Vec<String> = self
            .bounds
            .iter()
            .map(|b| {
                let mut s = String::new();
                push_value(&mut s, *b);
                s
            })
            .chain(std::iter::once("+Inf".to_owned()))
            .collect();
        let mut cumulative = 0u64;
        for (n, le) in counts.iter().zip(&les) {
            cumulative += n;
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", le));
            out.sample(&bucket, &with_le, cumulative as f64);
        }
        out.sample(&format!("{name}_sum"), labels, self.sum());
        out.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// FNV-1a over the label values: a hit in [`Family::get`] hashes borrowed strings without
/// allocating. Label values come from verified certificates and the mesh's own config, not
/// from request bytes, so hash flooding is not a concern here.
#[derive(Debug, Default, Clone, Copy)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn hash_values(values: &[&str]) -> u64 {
    let mut h = Fnv::default();
    for v in values {
        h.write(v.as_bytes());
        h.write(&[0xff]);
    }
    h.finish()
}

type Entry<M> = (Box<[Box<str>]>, Arc<M>);
type Series<M> = Vec<Entry<M>>;

/// One metric name with a fixed list of label names, and one metric per set of label values.
#[derive(Debug)]
pub struct Family<M: Metric> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    config: M::Config,
    series: RwLock<HashMap<u64, Series<M>, BuildHasherDefault<Fnv>>>,
}

impl<M: Metric> Family<M> {
    /// A family with the given label names.
    pub fn with_config(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        config: M::Config,
    ) -> Self {
        Self {
            name,
            help,
            labels,
            config,
            series: RwLock::new(HashMap::default()),
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The metric for these label values (in the family's label order), created at zero on
    /// first use.
    ///
    /// # Panics
    /// If `values` does not have one value per label name: that is a bug at the call site.
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values do not match label names",
            self.name
        );
        let hash = hash_values(values);
        let same = |k: &[Box<str>]| k.iter().map(|s| &**s).eq(values.iter().copied());
        {
            let map = self.series.read().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = map
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(k, _)| same(k)))
            {
                return found.1.clone();
            }
        }
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(hash).or_default();
        if let Some(found) = bucket.iter().find(|(k, _)| same(k)) {
            return found.1.clone();
        }
        let metric = Arc::new(M::create(self.config));
        bucket.push((
            values.iter().map(|v| Box::from(*v)).collect(),
            metric.clone(),
        ));
        metric
    }

    /// Writes the header and every series, ordered by label values.
    pub fn render(&self, out: &mut Encoder) {
        out.header(self.name, self.help, M::KIND);
        let map = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&Entry<M>> = map.values().flatten().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(self.labels.len());
        for (values, metric) in all {
            labels.clear();
            labels.extend(self.labels.iter().copied().zip(values.iter().map(|v| &**v)));
            metric.render(self.name, &labels, out);
        }
    }

    /// Drops every series (for gauges that are rebuilt from current state).
    pub fn clear(&self) {
        self.series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl<M: Metric<Config = ()>> Family<M> {
    /// A counter or gauge family.
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::with_config(name, help, labels, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_family_renders_sorted_escaped_series() {
        let f: Family<Counter> = Family::new("x_total", "Things.\nMore.", &["a", "b"]);
        f.get(&["z", "1"]).inc();
        f.get(&["q\"\\\n", "2"]).add(5);
        f.get(&["z", "1"]).inc();
        let mut e = Encoder::new();
        f.render(&mut e);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\\nMore.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\",b=\"2\"} 5\nx_total{a=\"z\",b=\"1\"} 2\n"
        );
    }

    #[test]
    fn same_values_same_series_different_values_different_series() {
        let f: Family<Counter> = Family::new("y_total", "h", &["a", "b"]);
        // "ab","c" and "a","bc" must not collide even though the bytes concatenate alike.
        f.get(&["ab", "c"]).inc();
        f.get(&["a", "bc"]).add(2);
        assert_eq!(f.get(&["ab", "c"]).get(), 1);
        assert_eq!(f.get(&["a", "bc"]).get(), 2);
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let f: Family<Histogram> =
            Family::with_config("d_ms", "Duration.", &["w"], &[1.0, 10.0][..]);
        let h = f.get(&["x"]);
        h.observe(0.5);
        h.observe(1.0);
        h.observe(7.0);
        h.observe(100.0);
        let mut e = Encoder::new();
        f.render(&mut e);
        let text = e.finish();
        for line in [
            "# TYPE d_ms histogram",
            "d_ms_bucket{w=\"x\",le=\"1\"} 2",
            "d_ms_bucket{w=\"x\",le=\"10\"} 3",
            "d_ms_bucket{w=\"x\",le=\"+Inf\"} 4",
            "d_ms_sum{w=\"x\"} 108.5",
            "d_ms_count{w=\"x\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn gauge_and_special_values() {
        let mut e = Encoder::new();
        e.single("g", "A gauge.", Kind::Gauge, f64::INFINITY);
        e.sample("g", &[("k", "v")], 0.25);
        e.sample("g", &[("k", "w")], f64::NAN);
        let text = e.finish();
        assert!(text.contains("g +Inf\n"), "{text}");
        assert!(text.contains("g{k=\"v\"} 0.25\n"), "{text}");
        assert!(text.contains("g{k=\"w\"} NaN\n"), "{text}");
        let g = Gauge::default();
        g.set(1_700_000_000.0);
        assert_eq!(g.get(), 1_700_000_000.0);
    }

    #[test]
    #[should_panic(expected = "label values do not match")]
    fn wrong_arity_is_a_bug() {
        let f: Family<Counter> = Family::new("z_total", "h", &["a"]);
        f.get(&["1", "2"]);
    }
}
