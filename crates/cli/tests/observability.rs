//! The observability kit in `deploy/observability/` checked offline, with the tools its users
//! run: `promtool` (Debian package `prometheus`) for the alert rules, their unit tests, the
//! scrape config and every PromQL query of the dashboard; the TypeScript compiler and
//! `@grafana/schema` (`tools/grafana-check`) for the dashboard's structure; and
//! `docs/metrics.md`, the catalogue, for every metric name the dashboard and the rules use.
//!
//! [`kit`] holds the extraction helpers (dashboard queries, rule expressions, metric names,
//! the catalogue) so that a live-scrape test can reuse them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

/// What the dashboard, the alert rules and the catalogue are made of, as data.
#[path = "observability/kit.rs"]
pub mod kit;

use kit::{
    alert_rules, catalogue, dashboard, dashboard_queries, family, grafana_variables,
    kit_metric_families, kit_metric_names, metric_names, panels, repo,
    substitute_grafana_variables,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `promtool args...`; a missing promtool fails the test with how to install it.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: it comes with the Debian package `prometheus` \
             (apt-get install -y prometheus; promtool 2.42)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

fn assert_promtool_ok(args: &[&str]) -> String {
    let o = promtool(args);
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        o.status.success(),
        "promtool {} failed ({}):\n{out}",
        args.join(" "),
        o.status
    );
    out
}

// ---------------------------------------------------------------- alert rules and config

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = assert_promtool_ok(&["check", "rules", s(&kit::alerts_path())]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rule_unit_tests_pass() {
    let out = assert_promtool_ok(&["test", "rules", s(&kit::alerts_test_path())]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_accepts_the_scrape_config_and_it_loads_the_alerts() {
    let out = assert_promtool_ok(&["check", "config", s(&kit::scrape_config_path())]);
    assert!(
        out.contains("alerts.yml") && out.contains("1 rule files found"),
        "the scrape config does not load alerts.yml:\n{out}"
    );
    let cfg = std::fs::read_to_string(kit::scrape_config_path()).unwrap();
    for target in [
        "127.0.0.1:15014",
        "127.0.1.2:15090",
        "127.0.1.3:15090",
        "127.0.1.4:15090",
        "127.0.1.5:15090",
    ] {
        assert!(
            cfg.contains(target),
            "prometheus.yml does not scrape {target}"
        );
    }
}

/// Each alert is complete (severity, summary, description, `for`), and alerts_test.yml has,
/// for each, a case where it fires with its labels and annotations and one where it must not.
#[test]
fn every_alert_is_complete_and_unit_tested_both_ways() {
    #[derive(serde::Deserialize)]
    struct TestFile {
        tests: Vec<TestGroup>,
    }
    #[derive(serde::Deserialize)]
    struct TestGroup {
        #[serde(default)]
        alert_rule_test: Vec<AlertTest>,
    }
    #[derive(serde::Deserialize)]
    struct AlertTest {
        alertname: String,
        #[serde(default)]
        exp_alerts: Vec<ExpAlert>,
    }
    #[derive(serde::Deserialize)]
    struct ExpAlert {
        #[serde(default)]
        exp_labels: BTreeMap<String, String>,
        #[serde(default)]
        exp_annotations: BTreeMap<String, String>,
    }

    let path = kit::alerts_test_path();
    let tests: TestFile = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<&AlertTest> = tests
        .tests
        .iter()
        .flat_map(|g| &g.alert_rule_test)
        .collect();

    let mut problems = Vec::new();
    let mut alerts = BTreeSet::new();
    for g in alert_rules().groups {
        for r in g.rules {
            let Some(name) = r.alert else { continue };
            assert!(alerts.insert(name.clone()), "alert {name} defined twice");
            match r.labels.get("severity").map(String::as_str) {
                Some("critical" | "warning" | "info") => {}
                other => problems.push(format!("{name}: severity {other:?}")),
            }
            for a in ["summary", "description"] {
                if !r.annotations.get(a).is_some_and(|t| t.contains("{{")) {
                    problems.push(format!("{name}: no templated {a} annotation"));
                }
            }
            if r.for_.is_none() {
                problems.push(format!("{name}: no `for`"));
            }
            let mine: Vec<_> = cases.iter().filter(|c| c.alertname == name).collect();
            let fires = mine.iter().any(|c| {
                !c.exp_alerts.is_empty()
                    && c.exp_alerts.iter().all(|a| {
                        a.exp_labels.contains_key("severity")
                            && a.exp_annotations.contains_key("summary")
                            && a.exp_annotations.contains_key("description")
                    })
            });
            if !fires {
                problems.push(format!(
                    "{name}: no unit test where it fires with exp_labels (severity) and \
                     exp_annotations (summary, description)"
                ));
            }
            if !mine.iter().any(|c| c.exp_alerts.is_empty()) {
                problems.push(format!("{name}: no unit test where it must not fire"));
            }
        }
    }
    for c in &cases {
        if !alerts.contains(&c.alertname) {
            problems.push(format!(
                "alerts_test.yml tests unknown alert {}",
                c.alertname
            ));
        }
    }
    for required in [
        "CertificateExpiringSoon",
        "CertificateNotReady",
        "CertificateRenewalFailing",
        "AuthorizationDenialSpike",
        "MTLSHandshakeFailures",
        "ProxyDisconnectedFromControlPlane",
        "ProxyControlPlaneStreamDown",
        "ControlPlaneConfigRejected",
    ] {
        if !alerts.contains(required) {
            problems.push(format!("alert {required} is missing"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------- dashboard

/// Every PromQL query of the dashboard, with its Grafana variables substituted, parses:
/// written as recording rules, `promtool check rules` accepts them.
#[test]
fn dashboard_queries_parse_as_promql() {
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() > 20, "only {} queries found", queries.len());

    let mut yaml = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let mut index = String::new();
    for (i, q) in queries.iter().enumerate() {
        let expr = substitute_grafana_variables(&q.expr);
        assert!(
            !expr.contains('$'),
            "{}: variable left after substitution: {expr}",
            q.place
        );
        let record = format!("dashboard:query_{i}");
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).unwrap();
        yaml.push_str(&format!(
            "      - record: {record}\n        expr: {quoted}\n"
        ));
        index.push_str(&format!("{record}: {} {expr}\n", q.place));
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard-queries.yml");
    std::fs::write(&rules, &yaml).unwrap();
    let o = promtool(&["check", "rules", s(&rules)]);
    assert!(
        o.status.success(),
        "promtool rejects a dashboard query:\n{}{}\nqueries:\n{index}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

/// The substitution itself: regex matchers get `.*`, built-in intervals a duration.
#[test]
fn grafana_variable_substitution() {
    assert_eq!(
        substitute_grafana_variables(
            r#"sum(rate(m{a=~"$namespace", b=~"${workload:regex}", c="$x"}[$__rate_interval])) / $y"#
        ),
        r#"sum(rate(m{a=~".*", b=~".*", c="x"}[5m])) / x"#
    );
    assert_eq!(
        substitute_grafana_variables("increase(m[$__range]) + rate(m[${__interval}])"),
        "increase(m[1h]) + rate(m[1m])"
    );
    assert_eq!(
        kit::label_values_selector(r#"label_values(m{a=~"$x", b="1,2"}, lbl)"#),
        Some(r#"m{a=~"$x", b="1,2"}"#)
    );
}

/// Every variable a query uses is defined in the dashboard's templating (or is Grafana's).
#[test]
fn dashboard_variables_are_defined() {
    let d = dashboard();
    let defined: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let mut problems = Vec::new();
    for q in dashboard_queries(&d) {
        for v in grafana_variables(&q.expr) {
            let builtin = kit::GRAFANA_BUILTINS.iter().any(|(n, _)| *n == v);
            if !builtin && !defined.contains(&v) {
                problems.push(format!("{}: undefined variable ${v}", q.place));
            }
        }
    }
    for p in panels(&d) {
        if let Some(uid) = p["datasource"]["uid"].as_str()
            && uid != "${datasource}"
            && !uid.starts_with("-- ")
        {
            problems.push(format!("panel {}: datasource uid {uid:?}", p["id"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The dashboard's identity and layout: title, uid, schema version, a Prometheus
/// `datasource` variable, unique panel ids, panels inside the 24-column grid and not
/// overlapping, and every query bound to the datasource variable.
#[test]
fn dashboard_identity_and_layout() {
    let d = dashboard();
    assert_eq!(d["title"], "mTLS Security");
    assert_eq!(d["uid"], "trustmesh-mtls-security");
    let version = d["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&version), "schemaVersion {version}");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of type prometheus"
    );

    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for p in panels(&d) {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        if !ids.insert(id) {
            problems.push(format!("panel id {id} used twice"));
        }
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or(u64::MAX));
        if w == 0 || h == 0 || x.saturating_add(w) > 24 {
            problems.push(format!("panel {id}: gridPos {g}"));
        }
        for (other, ox, oy, ow, oh) in &boxes {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                problems.push(format!("panel {id} overlaps panel {other}"));
            }
        }
        boxes.push((id.to_string(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["uid"] != "${datasource}" || t["expr"].as_str().is_none() {
                problems.push(format!(
                    "panel {id}: target {t} not a Prometheus query on $datasource"
                ));
            }
        }
        if p["targets"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("panel {id} {} has no query", p["title"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The panels the brief asks for are there: each required metric is queried by the
/// dashboard, with the key filters.
#[test]
fn dashboard_covers_the_security_signals() {
    let queries = dashboard_queries(&dashboard());
    let used = |needle: &[&str]| {
        queries
            .iter()
            .any(|q| needle.iter().all(|n| q.expr.contains(n)))
    };
    let mut missing = Vec::new();
    for needle in [
        &[
            "trustmesh_tls_handshakes_total",
            "result=\"success\"",
            "direction",
        ][..],
        &[
            "istio_requests_total",
            "reporter=\"destination\"",
            "security_policy",
        ],
        &[
            "certmanager_certificate_expiration_timestamp_seconds",
            "> 0",
            "time()",
            "3600",
            "sort(",
        ],
        &["certmanager_certificate_renewal_timestamp_seconds"],
        &[
            "istio_requests_total",
            "reporter=\"destination\"",
            "response_code=\"403\"",
            "destination_workload",
        ],
        &[
            "trustmesh_authz_decisions_total",
            "policy",
            "action",
            "decision",
            "dry_run=\"true\"",
        ],
        &[
            "histogram_quantile(0.50",
            "istio_request_duration_milliseconds_bucket",
            "reporter=\"source\"",
            "source_cluster",
            "destination_cluster",
        ],
        &[
            "histogram_quantile(0.99",
            "istio_request_duration_milliseconds_bucket",
            "reporter=\"source\"",
            "source_cluster",
            "destination_cluster",
        ],
        &["trustmesh_tls_handshake_failures_total", "reason"],
        &["istio_requests_total", "response_code=~\"5..\""],
        &["istio_tcp_connections_opened_total"],
        &["istio_tcp_connections_closed_total"],
        &["istio_tcp_sent_bytes_total"],
        &["istio_tcp_received_bytes_total"],
        &["trustmesh_certificate_rotations_total", "result"],
        &["trustmesh_config_updates_total", "result"],
        &["trustmesh_control_plane_config_reloads_total", "result"],
        &["trustmesh_control_plane_proxy_connected"],
        &["trustmesh_control_plane_connected_proxies"],
        &["trustmesh_control_plane_connected"],
        &["process_resident_memory_bytes"],
        &["process_cpu_seconds_total"],
    ] {
        if !used(needle) {
            missing.push(format!("{needle:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "no dashboard query contains all of:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------- catalogue

/// Every metric name the dashboard and the alert rules use is in docs/metrics.md; a
/// `_bucket`/`_sum`/`_count` series only of a catalogued histogram.
#[test]
fn dashboard_and_alerts_use_only_catalogued_metrics() {
    let catalogue = catalogue();
    assert!(
        catalogue.contains_key("istio_requests_total")
            && catalogue.contains_key("certmanager_certificate_expiration_timestamp_seconds")
            && catalogue.contains_key("trustmesh_control_plane_proxy_connected")
            && catalogue.contains_key("process_resident_memory_bytes"),
        "docs/metrics.md's catalogue did not parse: {catalogue:?}"
    );
    let used = kit_metric_names();
    assert!(used.len() > 25, "only {} metric names found", used.len());
    let mut problems = Vec::new();
    for (name, places) in &used {
        let ok = if catalogue.contains_key(name) {
            true
        } else {
            let fam = family(name);
            fam != name && catalogue.get(fam).is_some_and(|t| t == "histogram")
        };
        if !ok {
            problems.push(format!(
                "{name} (used by {}) is not in docs/metrics.md",
                places.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The families a live scrape must expose are catalogue names.
    for f in kit_metric_families() {
        assert!(catalogue.contains_key(&f), "{f}");
    }
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="source", x="trustmesh_not_a_metric"}[5m])))
           / on (job) group_left process_open_fds and trustmesh_control_plane_connected == 0
           # certmanager_in_a_comment_counts_too"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "certmanager_in_a_comment_counts_too",
            "istio_request_duration_milliseconds_bucket",
            "process_open_fds",
            "trustmesh_control_plane_connected",
        ]
    );
    assert_eq!(
        family("istio_request_duration_milliseconds_bucket"),
        "istio_request_duration_milliseconds"
    );
    assert_eq!(family("istio_requests_total"), "istio_requests_total");
}

// ---------------------------------------------------------------- Grafana schema

/// The dashboard type-checks against @grafana/schema's `Dashboard` (tools/grafana-check).
#[test]
fn dashboard_matches_grafana_schema() {
    let tool = repo().join("tools/grafana-check");
    let tool = tool.canonicalize().unwrap_or(tool);
    assert!(
        tool.join("node_modules/@grafana/schema").is_dir()
            && tool.join("node_modules/.bin/tsc").exists(),
        "tools/grafana-check is not installed; install it with:\n  \
         npm ci --no-audit --no-fund --prefix {}\n(needs Node.js and npm: apt-get install -y nodejs npm)",
        tool.display()
    );
    let o = match Command::new("node")
        .arg(tool.join("check.mjs"))
        .arg(kit::dashboard_path())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run node (apt-get install -y nodejs): {e}"),
    };
    assert!(
        o.status.success(),
        "the dashboard does not match @grafana/schema's Dashboard:\n{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}
