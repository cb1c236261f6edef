//! `trustmesh check` as an analyzer, driven as a user drives it: the real binary on small
//! config folders under `tests/data/analyze/<case>/`, one per finding code. Every case adds
//! one file (`case.yaml`) to a clean mesh (`base/`), so each test states the complete list
//! of findings the case must produce — an extra or a missing finding fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn data(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/analyze")
        .join(case)
}

fn check(dir: &Path, format: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trustmesh"))
        .env_remove("TRUSTMESH_STATE")
        .env_remove("TRUSTMESH_CONFIG")
        .args(["check", dir.to_str().unwrap(), "-o", format])
        .output()
        .expect("run trustmesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `check -o json` on a case and returns (exit code, report).
fn run(case: &str) -> (i32, Value) {
    let o = check(&data(case), "json");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\nstderr: {}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v)
}

/// (level, code, file name, resource) of every finding, in output order.
fn summary(v: &Value) -> Vec<(String, String, String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = Path::new(f["file"].as_str().unwrap_or_default())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                f["level"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
                file,
                f["resource"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Asserts the case's exit code and exact findings, and that every analyzer finding names
/// a line and a fix.
#[track_caller]
fn assert_case(case: &str, exit: i32, want: &[(&str, &str, &str, &str)]) -> Value {
    let (code, v) = run(case);
    let got = summary(&v);
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(l, c, f, r)| (l.to_string(), c.to_string(), f.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want, "{case}: {v:#}");
    assert_eq!(code, exit, "{case}: exit status; {v:#}");
    assert_eq!(v["valid"], true, "{case}: the config loads");
    for f in v["findings"].as_array().unwrap() {
        assert!(f["line"].as_u64().is_some_and(|l| l > 0), "{case}: {f:#}");
        // Analyzer findings carry a fix; load errors and validation warnings do not.
        let analyzer = f["code"] != "TM0000" && f["code"] != "TM0001";
        assert_eq!(
            f["fix"].as_str().is_some_and(|x| !x.is_empty()),
            analyzer,
            "{case}: {f:#}"
        );
        assert!(!f["message"].as_str().unwrap().is_empty(), "{case}: {f:#}");
    }
    v
}

fn message(v: &Value, i: usize) -> &str {
    v["findings"][i]["message"].as_str().unwrap()
}

#[test]
fn a_clean_mesh_has_no_findings_and_exits_0() {
    let v = assert_case("clean", 0, &[]);
    assert_eq!(
        (
            v["errors"].as_u64(),
            v["warnings"].as_u64(),
            v["infos"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
}

#[test]
fn tm0101_selector_selects_no_workload() {
    let v = assert_case(
        "selector-no-workload",
        0,
        &[(
            "warning",
            "TM0101",
            "case.yaml",
            "AuthorizationPolicy prod/orders-callers",
        )],
    );
    // The validation warning about the same selector is folded into the finding, which
    // takes its line: the `selector:` key, not the document's first line.
    assert_eq!(v["findings"][0]["line"], 8);
    assert_eq!(v["findings"][0]["field"], "spec.selector");
}

#[test]
fn tm0102_deny_with_http_only_fields_denies_the_tcp_port() {
    let v = assert_case(
        "deny-http-on-tcp",
        0,
        &[(
            "warning",
            "TM0102",
            "case.yaml",
            "AuthorizationPolicy prod/deny-delete",
        )],
    );
    assert!(
        message(&v, 0).contains("prod/db:5432 (TCP: port name tcp-postgres)"),
        "{v:#}"
    );
    // istiod's generic warning (validation) is folded in; the line is the operation's.
    assert_eq!(v["findings"][0]["line"], 25);
}

#[test]
fn tm0103_spiffe_principal_in_a_deny_is_an_error() {
    let v = assert_case(
        "spiffe-principal",
        1,
        &[(
            "error",
            "TM0103",
            "case.yaml",
            "AuthorizationPolicy prod/deny-intruder",
        )],
    );
    assert_eq!(
        v["findings"][0]["field"],
        "spec.rules[0].from[0].source.principals[0]"
    );
    assert_eq!(v["errors"], 1);
}

#[test]
fn tm0104_inner_wildcard_principal() {
    assert_case(
        "inner-wildcard",
        0,
        &[(
            "warning",
            "TM0104",
            "case.yaml",
            "AuthorizationPolicy prod/gateways",
        )],
    );
}

#[test]
fn tm0105_allow_not_namespaces_with_plaintext_accepted_is_an_error() {
    let v = assert_case(
        "allow-not-namespaces",
        1,
        &[(
            "error",
            "TM0105",
            "case.yaml",
            "AuthorizationPolicy shop/not-from-untrusted",
        )],
    );
    assert!(
        message(&v, 0).contains("shop/cart:8080 (PERMISSIVE by PeerAuthentication shop/default)"),
        "{v:#}"
    );
}

#[test]
fn tm0106_destination_rule_disable_towards_strict() {
    let v = assert_case(
        "dr-tls-conflict",
        1,
        &[(
            "error",
            "TM0106",
            "case.yaml",
            "DestinationRule prod/orders",
        )],
    );
    assert!(message(&v, 0).contains("prod/orders:8080 for orders.prod.svc.cluster.local:80 (STRICT by PeerAuthentication istio-system/default)"), "{v:#}");
}

#[test]
fn tm0107_tm0108_namespaces_without_injection_or_resource() {
    assert_case(
        "namespaces",
        0,
        &[
            ("warning", "TM0107", "case.yaml", "Namespace legacy"),
            ("warning", "TM0108", "case.yaml", "WorkloadEntry dev/tool"),
        ],
    );
}

#[test]
fn tm0109_production_namespace_not_strict() {
    assert_case(
        "production-not-strict",
        0,
        &[(
            "warning",
            "TM0109",
            "case.yaml",
            "PeerAuthentication payments-prod/default",
        )],
    );
}

#[test]
fn tm0110_no_deny_by_default() {
    assert_case(
        "no-deny-by-default",
        0,
        &[("warning", "TM0110", "case.yaml", "Namespace shop")],
    );
}

#[test]
fn tm0111_broad_wildcards() {
    assert_case(
        "broad-allow",
        0,
        &[
            (
                "warning",
                "TM0111",
                "case.yaml",
                "AuthorizationPolicy prod/any-peer",
            ),
            (
                "warning",
                "TM0111",
                "case.yaml",
                "AuthorizationPolicy prod/open-port",
            ),
        ],
    );
}

#[test]
fn tm0112_certificate_lifetimes() {
    assert_case(
        "cert-lifetime",
        0,
        &[
            ("warning", "TM0112", "case.yaml", "MeshConfig mesh"),
            ("warning", "TM0112", "case.yaml", "Certificate prod/orders"),
        ],
    );
}

#[test]
fn tm0113_shared_service_account() {
    assert_case(
        "shared-service-account",
        0,
        &[(
            "warning",
            "TM0113",
            "case.yaml",
            "WorkloadEntry prod/payments",
        )],
    );
}

#[test]
fn tm0114_regions_share_one_trust_domain() {
    assert_case(
        "regions-one-trust-domain",
        0,
        &[(
            "warning",
            "TM0114",
            "case.yaml",
            "WorkloadEntry prod/reporting-eu",
        )],
    );
}

#[test]
fn tm0115_unknown_trust_domain() {
    let v = assert_case(
        "unknown-trust-domain",
        0,
        &[(
            "warning",
            "TM0115",
            "case.yaml",
            "AuthorizationPolicy prod/eu-callers",
        )],
    );
    // Folded: validation said the same, the finding is shown once.
    assert_eq!(v["warnings"], 1);
}

#[test]
fn tm0116_deny_bypassed_by_plaintext() {
    assert_case(
        "deny-bypassed",
        1,
        &[(
            "error",
            "TM0116",
            "case.yaml",
            "AuthorizationPolicy shop/deny-untrusted",
        )],
    );
}

#[test]
fn tm0001_validation_warnings_no_finding_restates_pass_through() {
    let v = assert_case(
        "validation-warning",
        0,
        &[(
            "warning",
            "TM0001",
            "case.yaml",
            "PeerAuthentication istio-system/orders-strict",
        )],
    );
    assert!(
        message(&v, 0).contains("ignored when deployed in the root namespace"),
        "{v:#}"
    );
    assert_eq!(v["findings"][0]["fix"], Value::Null);
}

#[test]
fn tm0000_a_rejected_config_is_not_analyzed() {
    let (code, v) = run("rejected");
    assert_eq!(code, 1);
    assert_eq!(v["valid"], false);
    assert_eq!(
        summary(&v),
        [(
            "error".to_owned(),
            "TM0000".to_owned(),
            "case.yaml".to_owned(),
            "AuthorizationPolicy prod/deny-nothing".to_owned()
        )]
    );
}

#[test]
fn the_example_has_no_errors_and_its_expected_findings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei");
    let o = check(&dir, "json");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    let got: Vec<(String, String, String)> = summary(&v)
        .into_iter()
        .map(|(l, c, _, r)| (l, c, r))
        .collect();
    // The gateway is the edge: it takes any caller on 8080, in plaintext too; the backends'
    // metrics port is a deliberate DISABLE exception for the scraper.
    let want = [
        (
            "warning",
            "TM0111",
            "AuthorizationPolicy production/allow-ingress-to-gateway",
        ),
        (
            "info",
            "TM0111",
            "AuthorizationPolicy production/allow-health-checks",
        ),
        (
            "info",
            "TM0109",
            "PeerAuthentication production/api-gateway-edge",
        ),
        (
            "info",
            "TM0109",
            "PeerAuthentication production/backend-metrics",
        ),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(l, c, r)| (l.to_string(), c.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want, "{v:#}");
}

#[test]
fn the_table_has_code_and_fix_columns_and_a_summary() {
    let o = check(&data("allow-not-namespaces"), "table");
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let header = out.lines().next().unwrap();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        ["LEVEL", "CODE", "LOCATION", "RESOURCE", "MESSAGE", "FIX"]
    );
    assert!(out.contains("ERROR  TM0105"), "{out}");
    assert!(out.contains("case.yaml:"), "{out}");
    assert!(
        out.contains("spec.rules[0].from[0].source.notNamespaces: ALLOW rule 0"),
        "{out}"
    );
    assert!(out.contains("add namespaces: [\"*\"]"), "{out}");
    assert!(
        out.contains(
            "1 error(s), 0 warning(s), 0 info: the config loads, but the analyzer found errors"
        ),
        "{out}"
    );

    // Warnings alone do not fail.
    let o = check(&data("broad-allow"), "table");
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("0 error(s), 2 warning(s), 0 info"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn yaml_output_carries_the_same_fields() {
    let o = check(&data("spiffe-principal"), "yaml");
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    for needle in [
        "valid: true",
        "errors: 1",
        "- level: error",
        "code: TM0103",
        "resource: AuthorizationPolicy prod/deny-intruder",
        "field: spec.rules[0].from[0].source.principals[0]",
        "fix: ",
    ] {
        assert!(out.contains(needle), "{needle:?} in\n{out}");
    }
}
