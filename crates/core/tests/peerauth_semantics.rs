//! Digest §2 (PeerAuthentication), one row per sentence, and §2.4 (mode before policy).
//! The workload is in `foo` with labels `app: svc`; the root namespace is `istio-system`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

mod common;

use common::*;
use serde_json::json;
use trustmesh_core::authz::{Outcome, compile, evaluate_with_mode};
use trustmesh_core::model::PeerAuthentication;
use trustmesh_core::model::security::MtlsMode::{self, Disable, Permissive, Strict};
use trustmesh_core::peerauth::{Scope, resolve};

const T1: Option<&str> = Some("2024-01-01T00:00:00Z");
const T2: Option<&str> = Some("2024-06-01T00:00:00Z");

fn mode(m: &str) -> serde_json::Value {
    json!({"mtls": {"mode": m}})
}

fn wl(m: &str) -> serde_json::Value {
    json!({"selector": {"matchLabels": {"app": "svc"}}, "mtls": {"mode": m}})
}

struct Row {
    quote: &'static str,
    policies: Vec<PeerAuthentication>,
    port: u16,
    want: MtlsMode,
    by: Option<&'static str>,
}

fn row(
    quote: &'static str,
    policies: Vec<PeerAuthentication>,
    port: u16,
    want: MtlsMode,
    by: Option<&'static str>,
) -> Row {
    Row {
        quote,
        policies,
        port,
        want,
        by,
    }
}

#[test]
fn modes_scopes_and_precedence_2_1_and_2_2() {
    let rows = vec![
        row(
            "`UNSET` ... if no parent, PERMISSIVE (no policy at all)",
            vec![],
            8080,
            Permissive,
            None,
        ),
        row(
            "1. `mode := PERMISSIVE` (default when nothing applies) — other namespaces' policies do not apply",
            vec![pa("bar", "p", None, mode("STRICT"))],
            8080,
            Permissive,
            None,
        ),
        row(
            "**Mesh-level**: in the root namespace ... with no selector",
            vec![pa("istio-system", "default", None, mode("STRICT"))],
            8080,
            Strict,
            Some("istio-system/default"),
        ),
        row(
            "**Mesh-level**: ... or empty `matchLabels`",
            vec![pa(
                "istio-system",
                "default",
                None,
                json!({"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}}),
            )],
            8080,
            Strict,
            Some("istio-system/default"),
        ),
        row(
            "**Namespace-level**: non-root namespace, no selector / empty `matchLabels`",
            vec![pa("foo", "ns", None, mode("DISABLE"))],
            8080,
            Disable,
            Some("foo/ns"),
        ),
        row(
            "**Workload-level**: non-root namespace, non-empty selector whose labels ⊆ workload labels",
            vec![pa("foo", "wl", None, wl("STRICT"))],
            8080,
            Strict,
            Some("foo/wl"),
        ),
        row(
            "Workload-level ... labels ⊆ workload labels (not a subset: does not apply)",
            vec![pa(
                "foo",
                "wl",
                None,
                json!({"selector": {"matchLabels": {"app": "svc", "v": "2"}}, "mtls": {"mode": "STRICT"}}),
            )],
            8080,
            Permissive,
            None,
        ),
        row(
            "**Root-namespace policies WITH a selector are ignored**",
            vec![pa("istio-system", "sel", None, wl("STRICT"))],
            8080,
            Permissive,
            None,
        ),
        row(
            "Several candidates at one level → **oldest `metadata.creationTimestamp` wins** (mesh)",
            vec![
                pa("istio-system", "b-new", T2, mode("DISABLE")),
                pa("istio-system", "a-old", T1, mode("STRICT")),
            ],
            8080,
            Strict,
            Some("istio-system/a-old"),
        ),
        row(
            "oldest wins (namespace; the older one has the later name)",
            vec![
                pa("foo", "a", T2, mode("DISABLE")),
                pa("foo", "z", T1, mode("STRICT")),
            ],
            8080,
            Strict,
            Some("foo/z"),
        ),
        row(
            "oldest wins (workload)",
            vec![
                pa("foo", "a", T2, wl("DISABLE")),
                pa("foo", "z", T1, wl("STRICT")),
            ],
            8080,
            Strict,
            Some("foo/z"),
        ),
        row(
            "oldest wins; equal (or absent) timestamps: name decides, deterministically",
            vec![
                pa("foo", "b", None, mode("DISABLE")),
                pa("foo", "a", None, mode("STRICT")),
            ],
            8080,
            Strict,
            Some("foo/a"),
        ),
        row(
            "2. if mesh policy exists and its mode ≠ UNSET → `mode := mesh.mode`.",
            vec![pa("istio-system", "m", None, mode("DISABLE"))],
            8080,
            Disable,
            Some("istio-system/m"),
        ),
        row(
            "3. if namespace policy exists and its mode ≠ UNSET → `mode := ns.mode`.",
            vec![
                pa("istio-system", "m", None, mode("STRICT")),
                pa("foo", "n", None, mode("PERMISSIVE")),
            ],
            8080,
            Permissive,
            Some("foo/n"),
        ),
        row(
            "3. ... namespace UNSET inherits the mesh mode",
            vec![
                pa("istio-system", "m", None, mode("STRICT")),
                pa("foo", "n", None, mode("UNSET")),
            ],
            8080,
            Strict,
            Some("istio-system/m"),
        ),
        row(
            "4. if workload policy exists and its mode ≠ UNSET → `mode := wl.mode`.",
            vec![
                pa("istio-system", "m", None, mode("STRICT")),
                pa("foo", "n", None, mode("STRICT")),
                pa("foo", "w", None, wl("DISABLE")),
            ],
            8080,
            Disable,
            Some("foo/w"),
        ),
        row(
            "4. ... workload UNSET inherits the namespace mode",
            vec![
                pa("foo", "n", None, mode("DISABLE")),
                pa("foo", "w", None, wl("UNSET")),
            ],
            8080,
            Disable,
            Some("foo/n"),
        ),
        row(
            "`mtls` absent or `mtls: {}` ≡ UNSET (absent)",
            vec![
                pa("foo", "n", None, mode("STRICT")),
                pa(
                    "foo",
                    "w",
                    None,
                    json!({"selector": {"matchLabels": {"app": "svc"}}}),
                ),
            ],
            8080,
            Strict,
            Some("foo/n"),
        ),
        row(
            "`mtls` absent or `mtls: {}` ≡ UNSET (`{}`)",
            vec![
                pa("foo", "n", None, mode("STRICT")),
                pa(
                    "foo",
                    "w",
                    None,
                    json!({"selector": {"matchLabels": {"app": "svc"}}, "mtls": {}}),
                ),
            ],
            8080,
            Strict,
            Some("foo/n"),
        ),
        row(
            "Mesh policy with UNSET ≡ PERMISSIVE.",
            vec![pa("istio-system", "m", None, mode("UNSET"))],
            8080,
            Permissive,
            None,
        ),
        row(
            "5. if workload policy has `portLevelMtls`: for each port, ... else that mode",
            vec![pa(
                "foo",
                "w",
                None,
                json!({"selector": {"matchLabels": {"app": "svc"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            )],
            8080,
            Disable,
            Some("foo/w"),
        ),
        row(
            "6. effective(port) = perPort[port] if present else `mode`",
            vec![pa(
                "foo",
                "w",
                None,
                json!({"selector": {"matchLabels": {"app": "svc"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            )],
            9090,
            Strict,
            Some("foo/w"),
        ),
        row(
            "5. ... for each port, UNSET → current `mode`",
            vec![
                pa("foo", "n", None, mode("STRICT")),
                pa(
                    "foo",
                    "w",
                    None,
                    json!({"selector": {"matchLabels": {"app": "svc"}}, "portLevelMtls": {"8080": {"mode": "UNSET"}}}),
                ),
            ],
            8080,
            Strict,
            Some("foo/n"),
        ),
        row(
            "`portLevelMtls` keys are **workload (container/target) ports** (a port the key does not name keeps the workload mode)",
            vec![pa(
                "foo",
                "w",
                None,
                json!({"selector": {"matchLabels": {"app": "svc"}}, "portLevelMtls": {"80": {"mode": "STRICT"}}}),
            )],
            8080,
            Permissive,
            None,
        ),
        row(
            "only honoured on workload-level policies (namespace-level portLevelMtls is ignored)",
            vec![pa(
                "foo",
                "n",
                None,
                json!({"mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
            )],
            8080,
            Permissive,
            Some("foo/n"),
        ),
        row(
            "`v1` and `v1beta1` are the **same schema** (the v1beta1 helper reads like v1)",
            vec![pa("foo", "n", None, mode("STRICT"))],
            8080,
            Strict,
            Some("foo/n"),
        ),
    ];
    for r in rows {
        let m = resolve(
            &r.policies,
            "istio-system",
            "foo",
            &labels(&[("app", "svc")]),
        );
        let d = m.for_port(r.port);
        assert_eq!(d.mode, r.want, "{}", r.quote);
        assert_eq!(d.policy.as_deref(), r.by, "{} (deciding policy)", r.quote);
    }
}

#[test]
fn scope_is_reported() {
    let p = vec![
        pa("istio-system", "m", None, mode("STRICT")),
        pa(
            "foo",
            "w",
            None,
            json!({"selector": {"matchLabels": {"app": "svc"}}, "portLevelMtls": {"9000": {"mode": "DISABLE"}}}),
        ),
    ];
    let m = resolve(&p, "istio-system", "foo", &labels(&[("app", "svc")]));
    assert_eq!(m.for_port(80).scope, Scope::Mesh);
    assert_eq!(m.for_port(9000).scope, Scope::WorkloadPort);
    let m = resolve(&[], "istio-system", "foo", &labels(&[]));
    assert_eq!(m.for_port(80).scope, Scope::Default);
}

#[test]
fn workload_in_root_namespace_uses_mesh_policy() {
    // "Root-namespace policies WITH a selector are ignored" even for workloads living there.
    let p = vec![
        pa("istio-system", "m", None, mode("STRICT")),
        pa("istio-system", "sel", None, wl("DISABLE")),
    ];
    let m = resolve(
        &p,
        "istio-system",
        "istio-system",
        &labels(&[("app", "svc")]),
    );
    assert_eq!(m.for_port(1).mode, Strict);
}

#[test]
fn mode_is_enforced_before_authorization_2_4() {
    let allow_all = [ap("foo", "all", json!({"rules": [{}]}))];
    let authz = compile(&allow_all, "foo", &labels(&[]), &Default::default());
    let strict = resolve(
        &[pa("istio-system", "m", None, mode("STRICT"))],
        "istio-system",
        "foo",
        &labels(&[]),
    );
    // "A plaintext connection to a STRICT port is rejected regardless of any ALLOW-all policy."
    let d = evaluate_with_mode(&strict, &authz, &tcp(None));
    assert_eq!(d.outcome, Outcome::ConnectionRejected);
    assert_eq!(d.reason, "plaintext rejected by STRICT");
    assert_eq!(d.policy.as_deref(), Some("istio-system/m"));
    assert_eq!(d.mtls.as_ref().map(|m| m.mode), Some(Strict));
    // "`STRICT` | mTLS with client cert required": mTLS goes on to authorization.
    let d = evaluate_with_mode(&strict, &authz, &tcp(Some(SLEEP)));
    assert!(d.allowed);
    assert_eq!(d.policy.as_deref(), Some("foo/all"));
    // "`PERMISSIVE` | accept mTLS **and** plaintext".
    let permissive = resolve(&[], "istio-system", "foo", &labels(&[]));
    assert!(evaluate_with_mode(&permissive, &authz, &tcp(None)).allowed);
    assert!(evaluate_with_mode(&permissive, &authz, &tcp(Some(SLEEP))).allowed);
    // "`DISABLE` | connection is not tunneled; plaintext only".
    let disable = resolve(
        &[pa("foo", "n", None, mode("DISABLE"))],
        "istio-system",
        "foo",
        &labels(&[]),
    );
    assert!(evaluate_with_mode(&disable, &authz, &tcp(None)).allowed);
    let d = evaluate_with_mode(&disable, &authz, &tcp(Some(SLEEP)));
    assert_eq!(d.outcome, Outcome::ConnectionRejected);
    assert_eq!(d.reason, "mTLS rejected by DISABLE");
    // Port-level: STRICT on 9000 only.
    let port_strict = resolve(
        &[pa(
            "foo",
            "w",
            None,
            json!({"selector": {"matchLabels": {"app": "svc"}}, "portLevelMtls": {"9000": {"mode": "STRICT"}}}),
        )],
        "istio-system",
        "foo",
        &labels(&[("app", "svc")]),
    );
    assert!(!evaluate_with_mode(&port_strict, &authz, &tcp(None).port(9000)).allowed);
    assert!(evaluate_with_mode(&port_strict, &authz, &tcp(None).port(8080)).allowed);
}
