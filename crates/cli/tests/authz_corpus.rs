//! The decision corpus: cases learned from Istio's own documentation and tests (istio.io
//! tasks and concept pages, istio/istio `tests/integration/security`, istio/ztunnel
//! `src/rbac.rs`), each naming its source, run through the real `trustmesh authz check`
//! binary with `-o json`, as a script would. Data: `tests/data/authz/corpus/*.yaml`.
//!
//! One file holds a config (the policies, verbatim Istio YAML), request defaults, and cases:
//! a request and the expected `decision` (plus `mode`, `policy`, `httpStatus` where they
//! matter; `policy: "-"` expects null).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    /// Where the cases come from, unless a case says otherwise.
    source: String,
    /// The config folder's one file.
    config: String,
    /// Request fields every case starts from.
    #[serde(default)]
    defaults: Req,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    request: Req,
    expect: Expect,
}

/// The flags of `authz check`, all optional here; a case's request overrides the defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Req {
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    port: Option<u16>,
    principal: Option<String>,
    plaintext: Option<bool>,
    source_ip: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Option<Vec<(String, String)>>,
    sni: Option<String>,
    root_namespace: Option<String>,
    trust_domain: Option<String>,
    trust_domain_aliases: Option<Vec<String>>,
}

impl Req {
    fn merged(&self, over: &Req) -> Req {
        macro_rules! pick {
            ($($f:ident),*) => { Req { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        let mut r = pick!(
            namespace,
            labels,
            port,
            principal,
            plaintext,
            source_ip,
            method,
            path,
            host,
            headers,
            sni,
            root_namespace,
            trust_domain,
            trust_domain_aliases
        );
        // A case that names a peer or says plaintext replaces the default peer.
        if over.plaintext == Some(true) {
            r.principal = None;
        } else if over.principal.is_some() {
            r.plaintext = None;
        }
        // `method: TCP` turns an HTTP default into a TCP connection.
        if r.method.as_deref() == Some("TCP") {
            r.method = None;
            r.path = None;
            r.host = None;
            r.headers = None;
        }
        r
    }

    fn args(&self, config: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "authz".into(),
            "check".into(),
            "-o".into(),
            "json".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        let mut flag = |k: &str, v: &str| {
            a.push(k.to_owned());
            a.push(v.to_owned());
        };
        flag(
            "--namespace",
            self.namespace.as_deref().unwrap_or("default"),
        );
        flag("--port", &self.port.unwrap_or(8080).to_string());
        for (k, v) in self.labels.iter().flatten() {
            flag("--label", &format!("{k}={v}"));
        }
        if let Some(p) = &self.principal {
            flag("--principal", p);
        }
        if let Some(ip) = &self.source_ip {
            flag("--source-ip", ip);
        }
        if let Some(m) = &self.method {
            flag("--method", m);
            flag("--path", self.path.as_deref().unwrap_or("/"));
        }
        if let Some(h) = &self.host {
            flag("--host", h);
        }
        for (k, v) in self.headers.iter().flatten() {
            flag("--header", &format!("{k}={v}"));
        }
        if let Some(s) = &self.sni {
            flag("--sni", s);
        }
        if let Some(r) = &self.root_namespace {
            flag("--root-namespace", r);
        }
        if let Some(t) = &self.trust_domain {
            flag("--trust-domain", t);
        }
        for t in self.trust_domain_aliases.iter().flatten() {
            flag("--trust-domain-alias", t);
        }
        if self.plaintext == Some(true) {
            a.push("--plaintext".into());
        }
        if self.method.is_none() {
            a.push("--tcp".into());
        }
        a
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    decision: String,
    mode: Option<String>,
    /// `ns/name`, or `-` for none.
    policy: Option<String>,
    http_status: Option<u16>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/authz/corpus")
}

#[test]
fn corpus_decisions_agree_with_istio() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let tmp = tempfile::tempdir().unwrap();
    let mut total = 0;
    let mut sources = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let corpus: CorpusFile =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let config = tmp.path().join(format!("{stem}.yaml"));
        std::fs::write(&config, &corpus.config).unwrap();
        for case in &corpus.cases {
            total += 1;
            let source = case.source.as_deref().unwrap_or(&corpus.source);
            assert!(
                !source.trim().is_empty(),
                "{stem}: {}: no source",
                case.name
            );
            sources.insert(source.to_owned());
            let req = corpus.defaults.merged(&case.request);
            let args = req.args(&config);
            let out = Command::new(env!("CARGO_BIN_EXE_trustmesh"))
                .args(&args)
                .output()
                .unwrap();
            let where_ = format!(
                "{stem}: {} [{source}]\n  trustmesh {}",
                case.name,
                args.join(" ")
            );
            if out.status.code() != Some(0) {
                failures.push(format!(
                    "{where_}\n  exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
            let got: Value = match serde_json::from_slice(&out.stdout) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{where_}\n  not JSON: {e}"));
                    continue;
                }
            };
            let mut wrong = Vec::new();
            if got["decision"] != case.expect.decision.as_str() {
                wrong.push(format!(
                    "decision {} (want {})",
                    got["decision"], case.expect.decision
                ));
            }
            if let Some(m) = &case.expect.mode
                && got["mode"] != m.as_str()
            {
                wrong.push(format!("mode {} (want {m})", got["mode"]));
            }
            if let Some(p) = &case.expect.policy {
                let want = if p == "-" {
                    Value::Null
                } else {
                    Value::from(p.as_str())
                };
                if got["policy"] != want {
                    wrong.push(format!("policy {} (want {want})", got["policy"]));
                }
            }
            if let Some(s) = case.expect.http_status
                && got["httpStatus"] != s
            {
                wrong.push(format!("httpStatus {} (want {s})", got["httpStatus"]));
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{where_}\n  {}\n  reason: {}",
                    wrong.join("; "),
                    got["reason"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus cases disagree:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        total >= 100,
        "the corpus must hold at least 100 cases, found {total}"
    );
    assert!(
        sources.len() >= 10,
        "cases should come from many sources: {sources:?}"
    );
}

/// Exit codes and the JSON shape scripts rely on (DESIGN.md CLI section).
#[test]
fn cli_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.yaml");
    std::fs::write(&empty, "# no resources\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trustmesh"))
            .args(args)
            .output()
            .unwrap()
    };
    let cfg = empty.to_str().unwrap();
    // "A config file may hold no resources at all"; exit 0 for any decision.
    let o = run(&[
        "authz",
        "check",
        "--config",
        cfg,
        "--namespace",
        "foo",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["mode"], "PERMISSIVE");
    assert_eq!(v["policy"], Value::Null);
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    // `--principal` accepted as a SPIFFE ID and in principal notation.
    for p in [
        "spiffe://cluster.local/ns/a/sa/b",
        "cluster.local/ns/a/sa/b",
    ] {
        let o = run(&[
            "authz",
            "check",
            "--config",
            cfg,
            "--namespace",
            "foo",
            "--port",
            "80",
            "--principal",
            p,
            "--method",
            "GET",
            "--path",
            "/x?y",
            "-o",
            "yaml",
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("decision: allow"));
    }
    // Bad input exits 2 with one line on stderr.
    for (args, needle) in [
        (vec!["--principal", "not a principal"], "--principal"),
        (vec!["--label", "novalue"], "--label"),
        (vec!["--method", "GET"], "--path"),
        (
            vec!["--principal", "a/ns/b/sa/c", "--plaintext"],
            "--plaintext",
        ),
        (vec!["--tcp", "--method", "GET", "--path", "/"], "--method"),
        (vec!["--trust-domain", "Bad_TD!"], "--trust-domain"),
    ] {
        let mut a = vec![
            "authz",
            "check",
            "--config",
            cfg,
            "--namespace",
            "foo",
            "--port",
            "80",
        ];
        a.extend(args);
        let o = run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?}: {err}");
        assert!(o.stdout.is_empty(), "{a:?}");
    }
    let o = run(&[
        "authz",
        "check",
        "--config",
        "/nonexistent/x.yaml",
        "--namespace",
        "foo",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: config does not load"), "{err}");
    // A config that fails validation is bad input too.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY}\n",
    )
    .unwrap();
    let o = run(&[
        "authz",
        "check",
        "--config",
        bad.to_str().unwrap(),
        "--namespace",
        "foo",
        "--port",
        "80",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The table names the decision.
    let o = run(&[
        "authz",
        "check",
        "--config",
        cfg,
        "--namespace",
        "foo",
        "--port",
        "80",
    ]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("DECISION") && t.contains("allow") && t.contains("PERMISSIVE (default)"),
        "{t}"
    );
}
