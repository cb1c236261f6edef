//! The foundation commands driven as a user drives them: the real `trustmesh` binary on the
//! example config and on broken copies of it, with `openssl` checking what it issued.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustmesh"));
    c.env_remove("TRUSTMESH_STATE")
        .env_remove("TRUSTMESH_CONFIG");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run trustmesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr: {}", stdout(o), stderr(o)))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_accepts_the_example_config() {
    let o = run(&["check", s(&example())]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("trust domain us.cluster.local"),
        "{}",
        stdout(&o)
    );

    let o = run(&["check", s(&example()), "-o", "json"]);
    let v = json(&o);
    assert_eq!(v["valid"], true);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["resources"]["WorkloadEntry"], 4);
    assert_eq!(v["resources"]["Certificate"], 4);
}

#[test]
fn check_reports_every_broken_file_with_file_line_resource_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("teei");
    copy_dir(&example(), &dir);
    // Two mistakes in two files: a misspelt field and a DENY without rules.
    let ap = dir.join("authorization-policies.yaml");
    let text = std::fs::read_to_string(&ap).unwrap();
    let text = text.replacen("principals:", "principalz:", 1);
    std::fs::write(&ap, text).unwrap();
    std::fs::write(
        dir.join("extra.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-nothing\n  namespace: production\nspec:\n  action: DENY\n",
    )
    .unwrap();
    let kust = dir.join("kustomization.yaml");
    let k = std::fs::read_to_string(&kust).unwrap();
    std::fs::write(
        &kust,
        k.replace("resources:\n", "resources:\n  - extra.yaml\n"),
    )
    .unwrap();

    let o = run(&["check", s(&dir), "-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let v = json(&o);
    assert_eq!(v["valid"], false);
    let findings = v["findings"].as_array().unwrap();
    let unknown = findings
        .iter()
        .find(|f| {
            f["field"]
                .as_str()
                .is_some_and(|x| x.ends_with("principalz"))
        })
        .unwrap_or_else(|| panic!("no principalz finding in {v:#}"));
    assert!(
        unknown["file"]
            .as_str()
            .unwrap()
            .ends_with("authorization-policies.yaml")
    );
    assert!(unknown["line"].as_u64().unwrap() > 1);
    assert!(
        unknown["resource"]
            .as_str()
            .unwrap()
            .starts_with("AuthorizationPolicy ")
    );
    let deny = findings
        .iter()
        .find(|f| f["resource"] == "AuthorizationPolicy production/deny-nothing")
        .unwrap_or_else(|| panic!("no deny-nothing finding in {v:#}"));
    assert!(deny["file"].as_str().unwrap().ends_with("extra.yaml"));

    // The table names the same things for people, and exits 1.
    let o = run(&["check", s(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("principalz") && out.contains("deny-nothing"),
        "{out}"
    );
    assert!(out.contains("rejected as a whole"), "{out}");
}

#[test]
fn ca_init_keeps_its_root_across_runs_and_refuses_a_corrupt_state() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let first = run(&[
        "ca",
        "init",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let first = json(&first);
    let tds: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["trustDomain"].as_str().unwrap())
        .collect();
    assert_eq!(tds, ["eu.cluster.local", "us.cluster.local"]);
    assert!(
        first
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "created")
    );

    let second = json(&run(&[
        "ca",
        "init",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]));
    for (a, b) in first
        .as_array()
        .unwrap()
        .iter()
        .zip(second.as_array().unwrap())
    {
        assert_eq!(b["action"], "loaded");
        assert_eq!(a["serial"], b["serial"], "the same root after a restart");
    }
    let key = state.join("ca/us.cluster.local/ca.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let crt = state.join("ca/us.cluster.local/ca.crt");
    std::fs::write(
        &crt,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let o = run(&[
        "ca",
        "init",
        "--config",
        s(&example()),
        "--state",
        s(&state),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(s(&crt)), "the error names the file: {err}");
    assert_eq!(err.lines().count(), 1, "one line, no stack trace: {err}");
    // Nothing was replaced.
    assert!(std::fs::read_to_string(&crt).unwrap().contains("garbage"));
}

#[test]
fn reconcile_issues_the_certificate_chain_and_certs_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let o = run(&[
        "reconcile",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "issued"),
        "{v:#}"
    );

    // The leaf chains to the root that cert-manager's CA issuer signs with (openssl agrees).
    let secret = state.join("secrets/production/api-gateway-tls");
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(secret.join("ca.crt"))
        .arg(secret.join("tls.crt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(secret.join("tls.crt"))
        .output()
        .unwrap();
    let text = stdout(&o);
    assert_eq!(text.matches("URI:spiffe://").count(), 1, "{text}");
    assert!(text.contains("URI:spiffe://us.cluster.local/ns/production/sa/api-gateway"));
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );

    // A second pass has nothing to do.
    let v = json(&run(&[
        "reconcile",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]));
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["action"] == "upToDate"),
        "{v:#}"
    );

    // `certs`: ready, 24 h, renewal at 12 h (renewBefore: 12h), filtered by namespace.
    let v = json(&run(&[
        "certs",
        "-n",
        "production",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]));
    let certs = v.as_array().unwrap();
    assert_eq!(certs.len(), 3);
    for c in certs {
        assert_eq!(c["ready"], "True", "{c:#}");
        let exp = c["expirationTimestamp"].as_u64().unwrap();
        let ren = c["renewalTimestamp"].as_u64().unwrap();
        assert_eq!(exp - ren, 12 * 3600, "{c:#}");
        assert!(
            c["identity"]
                .as_str()
                .unwrap()
                .starts_with("spiffe://us.cluster.local/ns/production/sa/")
        );
    }

    // Removing a Secret's files makes the certificate not ready, and reconcile re-issues it.
    std::fs::remove_dir_all(&secret).unwrap();
    let v = json(&run(&[
        "certs",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]));
    let gw = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api-gateway")
        .unwrap();
    assert_eq!(gw["ready"], "False");
    let v = json(&run(&[
        "reconcile",
        "--config",
        s(&example()),
        "--state",
        s(&state),
        "-o",
        "json",
    ]));
    let gw = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api-gateway")
        .unwrap();
    assert_eq!(gw["action"], "issued");
    assert_eq!(gw["reason"], "DoesNotExist");
}

#[test]
fn bundles_export_combine_and_show_across_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let us = tmp.path().join("us");
    let eu = tmp.path().join("eu");
    for (state, td) in [(&us, "us.cluster.local"), (&eu, "eu.cluster.local")] {
        let o = run(&["ca", "init", "--trust-domain", td, "--state", s(state)]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let us_set = tmp.path().join("us.json");
    let eu_pem = tmp.path().join("eu.pem");
    let o = run(&["bundle", "export", "--state", s(&us), "--out", s(&us_set)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "bundle",
        "export",
        "--state",
        s(&eu),
        "--format",
        "pem",
        "--trust-domain",
        "eu.cluster.local",
        "--out",
        s(&eu_pem),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&eu_pem)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // A bare PEM file does not name its trust domain: combine says so.
    let o = run(&["bundle", "combine", s(&eu_pem)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("TRUST_DOMAIN="), "{}", stderr(&o));

    let combined = tmp.path().join("combined.json");
    let eu_arg = format!("eu.cluster.local={}", s(&eu_pem));
    let o = run(&[
        "bundle",
        "combine",
        s(&us_set),
        &eu_arg,
        "--out",
        s(&combined),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&combined).unwrap()).unwrap();
    for td in ["us.cluster.local", "eu.cluster.local"] {
        let keys = doc[td]["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("{td} in {doc:#}"));
        assert_eq!(keys[0]["use"], "x509-svid");
        assert_eq!(keys[0]["kty"], "EC");
    }
    let v = json(&run(&["bundle", "show", s(&combined), "-o", "json"]));
    let tds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trustDomain"].as_str().unwrap())
        .collect();
    assert_eq!(tds, ["eu.cluster.local", "us.cluster.local"]);

    // A file that is not a bundle is refused with its name.
    std::fs::write(
        tmp.path().join("bad.json"),
        "{\"eu.cluster.local\": {\"keys\": 3}}",
    )
    .unwrap();
    let o = run(&["bundle", "show", s(&tmp.path().join("bad.json"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));
}

/// DESIGN.md: "a self-signed root (or a CA key pair loaded from files, as a cert-manager CA
/// Issuer's Secret provides)". The cert-manager root issued by `reconcile` becomes the mesh
/// CA of a trust domain; a leaf is refused as a CA; an existing CA is never replaced.
#[test]
fn ca_import_takes_a_cert_manager_ca_secret_and_never_replaces_a_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let issued = tmp.path().join("issued");
    let o = run(&[
        "reconcile",
        "--config",
        s(&example()),
        "--state",
        s(&issued),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let root = issued.join("secrets/cert-manager/teei-root-ca");
    let mesh = tmp.path().join("mesh");

    let v = json(&run(&[
        "ca",
        "import",
        "--trust-domain",
        "us.cluster.local",
        "--secret",
        s(&root),
        "--state",
        s(&mesh),
        "-o",
        "json",
    ]));
    assert_eq!(v[0]["action"], "imported");
    assert!(
        v[0]["subject"]
            .as_str()
            .unwrap()
            .contains("TEEI US Root CA"),
        "{v:#}"
    );
    // It is now the CA `ca show` and `bundle export` see, and it survives as state.
    let shown = json(&run(&["ca", "show", "--state", s(&mesh), "-o", "json"]));
    assert_eq!(shown[0]["serial"], v[0]["serial"]);
    let key = mesh.join("ca/us.cluster.local/ca.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Again: refused, naming the folder; the CA stays.
    let o = run(&[
        "ca",
        "import",
        "--trust-domain",
        "us.cluster.local",
        "--secret",
        s(&root),
        "--state",
        s(&mesh),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("never replaces"), "{}", stderr(&o));

    // A workload certificate is not a CA (cert-manager: "certificate is not a CA").
    let leaf = issued.join("secrets/production/orders-tls");
    let o = run(&[
        "ca",
        "import",
        "--trust-domain",
        "eu.cluster.local",
        "--secret",
        s(&leaf),
        "--state",
        s(&mesh),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a CA"), "{}", stderr(&o));
    assert!(!mesh.join("ca/eu.cluster.local").exists());
}
