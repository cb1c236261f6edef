//! What the dashboard, the alert rules and the catalogue (`docs/metrics.md`) are made of, as
//! data: dashboard queries, rule expressions, the metric names they use, Grafana variables
//! substituted. Shared by `observability` (offline checks) and `prometheus_e2e` (live).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Prefixes of the metric names the kit may use (the catalogue's families).
pub const METRIC_PREFIXES: &[&str] = &["istio_", "certmanager_", "trustmesh_", "process_"];

/// Suffixes of a histogram's series (`NAME_bucket`, `NAME_sum`, `NAME_count`).
pub const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn dashboard_path() -> PathBuf {
    repo().join("deploy/observability/grafana/mtls-security.json")
}

pub fn alerts_path() -> PathBuf {
    repo().join("deploy/observability/prometheus/alerts.yml")
}

pub fn alerts_test_path() -> PathBuf {
    repo().join("deploy/observability/prometheus/alerts_test.yml")
}

pub fn scrape_config_path() -> PathBuf {
    repo().join("deploy/observability/prometheus/prometheus.yml")
}

pub fn catalogue_path() -> PathBuf {
    repo().join("docs/metrics.md")
}

/// The dashboard JSON.
pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included, in order.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A PromQL query of the dashboard: where it is, and the query as written (with Grafana
/// variables).
#[derive(Debug, Clone)]
pub struct Query {
    /// e.g. `panel 12 "Handshake failures by reason" target A`.
    pub place: String,
    pub expr: String,
}

/// Every `targets[].expr` of every panel, and the series selector of every
/// `label_values(SELECTOR, label)` variable query.
pub fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let id = &p["id"];
        let title = p["title"].as_str().unwrap_or("");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let r = t["refId"].as_str().unwrap_or("?");
                out.push(Query {
                    place: format!("panel {id} {title:?} target {r}"),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = match &v["query"] {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("query").and_then(Value::as_str),
            _ => None,
        };
        if let Some(selector) = q.and_then(label_values_selector) {
            out.push(Query {
                place: format!("variable {}", v["name"]),
                expr: selector.to_owned(),
            });
        }
    }
    out
}

/// `SELECTOR` of `label_values(SELECTOR, label)` (Grafana's Prometheus variable query).
pub fn label_values_selector(q: &str) -> Option<&str> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    // The label is the last comma-separated argument, outside braces and quotes.
    let (mut depth, mut quoted, mut split) = (0i32, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '(' if !quoted => depth += 1,
            '}' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    Some(inner[..split?].trim())
}

/// Grafana's built-in interval variables, as a fixed duration.
pub const GRAFANA_BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "1h"),
];

/// The names of the variables (`$name`, `${name}`, `${name:format}`) used in `expr`.
pub fn grafana_variables(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    scan_variables(expr, |name, _| {
        out.insert(name.to_owned());
        String::new()
    });
    out
}

/// `expr` with Grafana's variables replaced so that promtool can parse it: the built-in
/// intervals by a duration ([`GRAFANA_BUILTINS`]), a variable inside a regex matcher
/// (`=~"..."`, `!~"..."`) by `.*`, any other by `x`.
pub fn substitute_grafana_variables(expr: &str) -> String {
    scan_variables(expr, |name, in_regex| {
        if let Some((_, v)) = GRAFANA_BUILTINS.iter().find(|(n, _)| *n == name) {
            (*v).to_owned()
        } else if in_regex {
            ".*".to_owned()
        } else {
            "x".to_owned()
        }
    })
}

/// Walks `expr`, calling `f(name, inside_a_regex_matcher)` for each variable and
/// replacing it by what `f` returns.
fn scan_variables(expr: &str, mut f: impl FnMut(&str, bool) -> String) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let (mut i, mut in_string, mut in_regex) = (0, false, false);
    while i < b.len() {
        let c = b[i];
        if c == b'"' && (i == 0 || b[i - 1] != b'\\') {
            if !in_string {
                let before = expr[..i].trim_end();
                in_regex = before.ends_with("=~") || before.ends_with("!~");
            }
            in_string = !in_string;
            out.push('"');
            i += 1;
            continue;
        }
        if c == b'$' {
            let (name, end) = if b.get(i + 1) == Some(&b'{') {
                let close = expr[i..].find('}').map_or(b.len(), |k| i + k);
                let inner = &expr[(i + 2).min(close)..close];
                (inner.split(':').next().unwrap_or(""), close + 1)
            } else {
                let len = expr[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(expr.len() - i - 1);
                (&expr[i + 1..i + 1 + len], i + 1 + len)
            };
            if !name.is_empty() {
                out.push_str(&f(name, in_string && in_regex));
                i = end.min(b.len());
                continue;
            }
        }
        let ch = expr[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The metric names (identifiers starting with one of [`METRIC_PREFIXES`]) in a PromQL
/// expression or any text, outside double-quoted strings, as written (a histogram's
/// `_bucket` suffix kept; see [`family`]).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_string = false;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while let Some((i, c)) = chars.next() {
        if c == '"' && prev != Some('\\') {
            in_string = !in_string;
        } else if !in_string && ident(c) && !prev.is_some_and(ident) {
            let end = text[i..]
                .find(|c: char| !ident(c))
                .map_or(text.len(), |k| i + k);
            let word = &text[i..end];
            if METRIC_PREFIXES.iter().any(|p| word.starts_with(p)) {
                out.insert(word.to_owned());
            }
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            prev = word.chars().last();
            continue;
        }
        prev = Some(c);
    }
    out
}

/// The metric family of a series name: a histogram's `NAME_bucket`/`NAME_sum`/
/// `NAME_count` is `NAME`; any other name is itself. None of the catalogue's names ends
/// with those suffixes, so the strip is unambiguous against it.
pub fn family(name: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// A Prometheus rule file (the parts the tests read).
#[derive(Debug, Deserialize)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
pub struct Rule {
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `deploy/observability/prometheus/alerts.yml`.
pub fn alert_rules() -> RuleFile {
    let path = alerts_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a rule file: {e}", path.display()))
}

/// Every metric name the dashboard's queries and the alert rules' expressions and
/// annotations use, as written, each with where it is used.
pub fn kit_metric_names() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for q in dashboard_queries(&dashboard()) {
        for m in metric_names(&q.expr) {
            out.entry(m)
                .or_default()
                .insert(format!("dashboard {}", q.place));
        }
    }
    for g in alert_rules().groups {
        for r in g.rules {
            let name = r.alert.or(r.record).unwrap_or_default();
            let texts = std::iter::once(&r.expr).chain(r.annotations.values());
            for m in texts.flat_map(|t| metric_names(t)) {
                out.entry(m).or_default().insert(format!("alert {name}"));
            }
        }
    }
    out
}

/// Every metric family the kit uses ([`kit_metric_names`] through [`family`]): what a
/// live scrape of the proxies and the control plane must expose.
pub fn kit_metric_families() -> BTreeSet<String> {
    kit_metric_names()
        .keys()
        .map(|n| family(n).to_owned())
        .collect()
}

/// docs/metrics.md's catalogue: each backquoted metric name in the first column of its
/// tables, with the type column (`counter`, `gauge`, `histogram`, or empty). Wildcard
/// rows (`process_*`) are left out; the proxy table names the `process_` metrics.
pub fn catalogue() -> BTreeMap<String, String> {
    let path = catalogue_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | b |" splits into ["", "a", "b", ""].
        let (Some(first), Some(kind)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        for name in first.split('`').skip(1).step_by(2) {
            if !name.contains('*') && METRIC_PREFIXES.iter().any(|p| name.starts_with(p)) {
                out.insert(name.to_owned(), (*kind).to_owned());
            }
        }
    }
    out
}
