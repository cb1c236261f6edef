//! Loading `examples/teei` and copies of it with one mistake each: every mistake is reported
//! with file, line, resource and field, and a broken folder yields no snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use trustmesh_config::{LoadError, LoadErrors, LoadOutput, load_dir, load_files, load_str};
use trustmesh_core::model::Kind;

fn teei() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei")
}

/// A temporary copy of examples/teei.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in fs::read_dir(teei()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

/// Replaces the first `from` with `to` in `file`; panics if absent (the test would be void).
fn edit(dir: &Path, file: &str, from: &str, to: &str) -> String {
    let p = dir.join(file);
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    let new = text.replacen(from, to, 1);
    fs::write(&p, &new).unwrap();
    new
}

fn append(dir: &Path, file: &str, extra: &str) -> String {
    let p = dir.join(file);
    let mut text = fs::read_to_string(&p).unwrap_or_default();
    text.push_str(extra);
    fs::write(&p, &text).unwrap();
    text
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> u32 {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"));
    u32::try_from(text[..at].matches('\n').count() + 1).unwrap()
}

fn errors(dir: &Path) -> LoadErrors {
    match load_dir(dir) {
        Ok(_) => panic!("expected errors, got a snapshot"),
        Err(e) => e,
    }
}

/// The single error whose Display contains `needle`.
#[track_caller]
fn find<'a>(errs: &'a LoadErrors, needle: &str) -> &'a LoadError {
    let hits: Vec<&LoadError> = errs
        .errors
        .iter()
        .filter(|e| e.to_string().contains(needle))
        .collect();
    assert!(
        hits.len() == 1,
        "expected one error containing {needle:?}, got:\n{errs}"
    );
    hits[0]
}

#[test]
fn teei_loads_with_no_errors_no_warnings_and_expected_counts() {
    let LoadOutput {
        snapshot,
        warnings,
        files,
    } = load_dir(teei()).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(files.len(), 9, "kustomization + 8 resource files");
    let c = snapshot.counts();
    let want = [
        (Kind::MeshConfig, 1),
        (Kind::Namespace, 5),
        (Kind::PeerAuthentication, 4),
        (Kind::AuthorizationPolicy, 7),
        (Kind::DestinationRule, 4),
        (Kind::WorkloadEntry, 4),
        (Kind::ServiceEntry, 4),
        (Kind::Certificate, 4),
        (Kind::Issuer, 0),
        (Kind::ClusterIssuer, 2),
    ];
    for (k, n) in want {
        assert_eq!(c[&k], n, "{k}");
    }
    let mesh = snapshot.mesh();
    assert_eq!(mesh.trust_domain.as_str(), "us.cluster.local");
    assert_eq!(mesh.root_namespace, "istio-system");
    assert_eq!(mesh.workload_cert_ttl.to_string(), "24h0m0s");
    let ids: Vec<(String, &str)> = snapshot
        .workloads()
        .iter()
        .map(|w| (w.address.to_string(), w.identity.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (
                "127.0.1.5".to_owned(),
                "spiffe://eu.cluster.local/ns/default/sa/reporting"
            ),
            (
                "127.0.1.2".to_owned(),
                "spiffe://us.cluster.local/ns/production/sa/api-gateway"
            ),
            (
                "127.0.1.3".to_owned(),
                "spiffe://us.cluster.local/ns/production/sa/orders"
            ),
            (
                "127.0.1.4".to_owned(),
                "spiffe://us.cluster.local/ns/production/sa/payments"
            ),
        ]
    );
    // Every selector selects a workload (no warning above says otherwise); spot-check one.
    let orders_se = snapshot
        .service_entry_for_host("orders.production.svc.cluster.local")
        .unwrap();
    assert_eq!(
        snapshot
            .service_workloads(orders_se)
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );
    // Origins point at the files.
    let ap = &snapshot.authorization_policies()[0];
    assert!(
        ap.origin
            .as_ref()
            .unwrap()
            .file
            .ends_with("authorization-policies.yaml")
    );
    // The snapshot serializes (config dumps).
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["mesh"]["trustDomain"], "us.cluster.local");
}

#[test]
fn without_kustomization_every_yaml_file_is_loaded_recursively() {
    let dir = copy();
    fs::remove_file(dir.path().join("kustomization.yaml")).unwrap();
    fs::create_dir(dir.path().join("nested")).unwrap();
    fs::rename(
        dir.path().join("workloads.yaml"),
        dir.path().join("nested/workloads.yml"),
    )
    .unwrap();
    fs::write(dir.path().join("README.md"), "not yaml").unwrap();
    let out = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.snapshot.len(), 35);
    assert_eq!(out.snapshot.workloads().len(), 4);
}

#[test]
fn unknown_field_names_file_line_resource_and_field() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "authorization-policies.yaml",
        "            principals: [\"us.cluster.local/ns/production/sa/api-gateway\"]",
        "            principalz: [\"x\"]",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "principalz");
    let LoadError::Schema {
        file,
        line,
        resource,
        field,
        message,
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(file.ends_with("authorization-policies.yaml"), "{file}");
    assert_eq!(*line, line_of(&text, "principalz"));
    assert_eq!(resource, "AuthorizationPolicy production/gateway-to-orders");
    assert_eq!(field, "spec.rules[0].from[0].source.principalz");
    assert!(
        message.starts_with("unknown field `principalz`"),
        "{message}"
    );
    // One line: `file:line: Kind ns/name: field: message`.
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{file}:{line}: AuthorizationPolicy production/gateway-to-orders: spec.rules[0].from[0].source.principalz: unknown field")), "{shown}");
    assert!(!shown.contains('\n'));
}

#[test]
fn wrong_type_is_reported_at_its_field() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "destination-rules.yaml",
        "maxConnections: 100",
        "maxConnections: lots",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "maxConnections");
    let LoadError::Schema {
        line,
        resource,
        field,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*line, line_of(&text, "lots"));
    assert_eq!(resource, "DestinationRule production/orders");
    assert_eq!(
        field,
        "spec.trafficPolicy.connectionPool.tcp.maxConnections"
    );
}

#[test]
fn bad_enum_and_bad_duration_are_schema_errors() {
    let dir = copy();
    edit(
        dir.path(),
        "peer-authentication.yaml",
        "mode: STRICT",
        "mode: strict",
    );
    let text = edit(
        dir.path(),
        "certificates.yaml",
        "duration: 24h",
        "duration: 1d",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "spec.mtls.mode");
    assert!(
        e.to_string()
            .contains("PeerAuthentication istio-system/default"),
        "{e}"
    );
    let e = find(&errs, "spec.duration");
    assert_eq!(e.line(), Some(line_of(&text, "1d")));
    assert!(
        e.to_string().contains("unknown unit \\\"d\\\"") || e.to_string().contains("unknown unit"),
        "{e}"
    );
}

#[test]
fn unknown_kind_names_kind_and_api_version() {
    let dir = copy();
    let text = append(
        dir.path(),
        "workloads.yaml",
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "Deployment");
    let LoadError::Type {
        file, line, name, ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(file.ends_with("workloads.yaml"));
    assert_eq!(*line, line_of(&text, "kind: Deployment"));
    assert_eq!(name.as_deref(), Some("web"));
    assert!(
        e.to_string()
            .contains("unknown kind Deployment (apiVersion apps/v1)"),
        "{e}"
    );
}

#[test]
fn unknown_api_version_names_both() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "peer-authentication.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: staging",
        "apiVersion: security.istio.io/v2\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: staging",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "security.istio.io/v2");
    assert_eq!(
        e.line(),
        Some(line_of(&text, "security.istio.io/v2") + 1),
        "the kind: line"
    );
    assert!(e.to_string().contains("default: unknown apiVersion security.istio.io/v2 for kind PeerAuthentication; expected one of security.istio.io/v1, security.istio.io/v1beta1"), "{e}");
}

#[test]
fn duplicate_name_points_at_both_definitions() {
    let dir = copy();
    let text = append(
        dir.path(),
        "destination-rules.yaml",
        "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: production\nspec: {}\n",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "duplicate");
    let LoadError::Invalid {
        file,
        line,
        resource,
        field,
        message,
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(file.ends_with("destination-rules.yaml"), "{file}");
    assert_eq!(*line, line_of(&text, "  name: allow-nothing"));
    assert_eq!(resource, "AuthorizationPolicy production/allow-nothing");
    assert_eq!(field, "metadata.name");
    assert!(
        message.contains("already defined at") && message.contains("authorization-policies.yaml:"),
        "{message}"
    );
}

#[test]
fn malformed_yaml_is_a_syntax_error_with_line() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "workloads.yaml",
        "hosts: [orders.production.svc.cluster.local]",
        "hosts: [orders.production.svc.cluster.local",
    );
    let errs = errors(dir.path());
    let e = errs
        .errors
        .iter()
        .find(|e| matches!(e, LoadError::Syntax { .. }))
        .unwrap_or_else(|| panic!("{errs}"));
    let LoadError::Syntax {
        file,
        line,
        message,
        ..
    } = e
    else {
        unreachable!()
    };
    assert!(file.ends_with("workloads.yaml"));
    let bracket = line_of(&text, "hosts: [orders");
    assert!(
        (bracket..bracket + 12).contains(line),
        "line {line}, bracket at {bracket}: {message}"
    );
    // The other documents of the file still load: no error about them, and exactly one error.
    assert_eq!(errs.errors.len(), 1, "{errs}");
}

#[test]
fn deny_without_rules_is_reported_with_its_line() {
    let dir = copy();
    let text = append(
        dir.path(),
        "authorization-policies.yaml",
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-everything\n  namespace: staging\nspec:\n  action: DENY\n",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "deny-everything");
    let LoadError::Invalid {
        line,
        field,
        message,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(field, "spec.rules");
    assert!(message.contains("add an empty rule"), "{message}");
    // `spec.rules` is absent: the line of its parent, `spec:`.
    let doc = text.rfind("---").unwrap();
    assert_eq!(
        *line,
        line_of(&text[doc..], "spec:") + line_of(&text, &text[doc..]) - 1
    );
}

#[test]
fn bad_cidr_is_reported_at_the_list_element() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "authorization-policies.yaml",
        "            notNamespaces: [\"production\"]",
        "            notNamespaces: [\"production\"]\n            ipBlocks:\n              - 10.0.0.0/8\n              - 10.0.0.0/33",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "10.0.0.0/33");
    let LoadError::Invalid {
        line,
        resource,
        field,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        resource,
        "AuthorizationPolicy production/deny-admin-from-outside"
    );
    assert_eq!(field, "spec.rules[0].from[0].source.ipBlocks[1]");
    assert_eq!(*line, line_of(&text, "10.0.0.0/33"));
}

#[test]
fn certificate_duration_below_one_hour() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "certificates.yaml",
        "  duration: 24h\n  renewBefore: 12h",
        "  duration: 30m\n  renewBefore: 10m",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "spec.duration");
    let LoadError::Invalid {
        line,
        resource,
        message,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(resource, "Certificate production/api-gateway");
    assert_eq!(*line, line_of(&text, "duration: 30m"));
    assert_eq!(message, "certificate duration must be greater than 1h0m0s");
}

#[test]
fn renew_before_not_below_duration() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "certificates.yaml",
        "renewBefore: 12h",
        "renewBefore: 24h",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "spec.renewBefore");
    assert_eq!(e.line(), Some(line_of(&text, "renewBefore: 24h")));
    assert!(
        e.to_string()
            .ends_with("certificate duration 24h0m0s must be greater than renewBefore 24h0m0s"),
        "{e}"
    );
}

#[test]
fn missing_issuer() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "certificates.yaml",
        "name: teei-ca",
        "name: teei-ca-typo",
    );
    let errs = errors(dir.path());
    let e = find(&errs, "teei-ca-typo");
    let LoadError::Invalid {
        line,
        resource,
        field,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(resource, "Certificate production/api-gateway");
    assert_eq!(field, "spec.issuerRef.name");
    assert_eq!(*line, line_of(&text, "teei-ca-typo"));
}

#[test]
fn kustomization_naming_a_missing_file() {
    let dir = copy();
    let text = append(dir.path(), "kustomization.yaml", "  - missing.yaml\n");
    let errs = errors(dir.path());
    let e = find(&errs, "missing.yaml");
    let LoadError::MissingResource {
        file, line, entry, ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(file.ends_with("kustomization.yaml"));
    assert_eq!(*line, line_of(&text, "missing.yaml"));
    assert_eq!(entry, "missing.yaml");
}

#[test]
fn kustomization_unsupported_field_is_an_error() {
    let dir = copy();
    let text = append(dir.path(), "kustomization.yaml", "namePrefix: eu-\n");
    let errs = errors(dir.path());
    let e = find(&errs, "namePrefix");
    assert_eq!(e.line(), Some(line_of(&text, "namePrefix")));
    assert!(
        e.to_string().contains("is not supported by trustmesh"),
        "{e}"
    );
}

#[test]
fn nested_kustomization_namespace_and_labels() {
    let dir = copy();
    let sub = dir.path().join("staging");
    fs::create_dir(&sub).unwrap();
    fs::write(
        sub.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: staging\ncommonLabels:\n  team: checkout\nresources:\n  - policy.yaml\n",
    )
    .unwrap();
    fs::write(
        sub.join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: production\nspec: {}\n",
    )
    .unwrap();
    append(dir.path(), "kustomization.yaml", "  - staging\n");
    let out = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let ap = out
        .snapshot
        .authorization_policies()
        .iter()
        .find(|a| a.metadata.namespace.as_deref() == Some("staging"))
        .expect("kustomize's namespace overrides production");
    assert_eq!(ap.metadata.labels["team"], "checkout");
    // A folder without a kustomization cannot be a resource (kustomize requires one).
    fs::remove_file(sub.join("kustomization.yaml")).unwrap();
    let errs = errors(dir.path());
    find(&errs, "has no kustomization.yaml");
}

#[test]
fn two_broken_files_are_both_reported_and_no_snapshot() {
    let dir = copy();
    edit(
        dir.path(),
        "workloads.yaml",
        "serviceAccount: orders",
        "serviceAccont: orders",
    );
    edit(
        dir.path(),
        "destination-rules.yaml",
        "host: \"*.local\"",
        "host: \"\"",
    );
    let errs = errors(dir.path());
    find(&errs, "serviceAccont");
    find(&errs, "host is required");
    let files: Vec<String> = errs.errors.iter().map(LoadError::file).collect();
    assert!(
        files.iter().any(|f| f.ends_with("workloads.yaml"))
            && files.iter().any(|f| f.ends_with("destination-rules.yaml")),
        "{files:?}"
    );
    // Display lists one error per line.
    assert_eq!(errs.to_string().lines().count(), errs.errors.len());
}

#[test]
fn missing_spiffe_bundle_is_a_warning() {
    let dir = copy();
    let text = edit(
        dir.path(),
        "cross-region-tls.yaml",
        "  # caCertificates:\n  #   - spiffeBundleUrl: bundles/eu.cluster.local.json\n  #     trustDomains: [eu.cluster.local]",
        "  caCertificates:\n    - spiffeBundleUrl: bundles/eu.cluster.local.json\n      trustDomains: [eu.cluster.local]",
    );
    let out = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.warnings.len(), 1, "{:#?}", out.warnings);
    let w = &out.warnings[0];
    assert_eq!(w.line, Some(line_of(&text, "spiffeBundleUrl")));
    assert!(w.to_string().contains("not yet imported"), "{w}");
    fs::create_dir(dir.path().join("bundles")).unwrap();
    fs::write(dir.path().join("bundles/eu.cluster.local.json"), "{}").unwrap();
    assert!(load_dir(dir.path()).unwrap().warnings.is_empty());
}

#[test]
fn load_files_reads_the_given_files() {
    let out = load_files(&[
        teei().join("workloads.yaml"),
        teei().join("cross-region-tls.yaml"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.snapshot.workloads().len(), 4);
    assert_eq!(
        out.snapshot.mesh().trust_domain.as_str(),
        "us.cluster.local"
    );
    let err = load_files(&[teei().join("nope.yaml")]).unwrap_err();
    assert!(matches!(err.errors[0], LoadError::Io { .. }), "{err}");
}

#[test]
fn load_str_handles_lists_empty_and_null_documents() {
    let text = "# nothing\n---\n---\n~\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\n...\n";
    let rs = load_str("x.yaml", text).unwrap();
    let names: Vec<&str> = rs.iter().map(|r| r.object.meta().name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(rs[1].origin.as_ref().unwrap().line, 12);
    let bad = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a, labelz: {}}\n";
    let e = load_str("x.yaml", bad).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("x.yaml:6: Namespace a: items[0].metadata.labelz: unknown field"),
        "{e}"
    );
    let dup = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n";
    let e = load_str("x.yaml", dup).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
}
