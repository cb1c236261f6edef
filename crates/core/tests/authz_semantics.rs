//! One table per section of digest §3 (AuthorizationPolicy); each row quotes the sentence it
//! checks. The workload under test is in namespace `foo` with labels `app: svc`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

mod common;

use common::*;
use serde_json::json;
use trustmesh_core::TrustDomain;
use trustmesh_core::authz::{AuthzSettings, Outcome, PolicySet, ShadowResult};

const DENY_ALL: fn() -> serde_json::Value = || json!({"action": "DENY", "rules": [{}]});
const ALLOW_ALL: fn() -> serde_json::Value = || json!({"rules": [{}]});

#[test]
fn attachment_3_1() {
    run(vec![
        case(
            "Policy in namespace N applies to workloads in N",
            vec![ap("foo", "deny", DENY_ALL())],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "Lookup namespaces = {root namespace, workload namespace}",
            vec![ap("bar", "deny", DENY_ALL())],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "in the **root namespace it applies to all namespaces**",
            vec![ap("istio-system", "deny", DENY_ALL())],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`selector.matchLabels` must be a subset of the workload's labels (selected)",
            vec![ap(
                "foo",
                "deny",
                json!({"selector": {"matchLabels": {"app": "svc"}}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`selector.matchLabels` must be a subset of the workload's labels (not selected)",
            vec![ap(
                "foo",
                "deny",
                json!({"selector": {"matchLabels": {"app": "svc", "version": "v2"}}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "Absent selector or empty `matchLabels` → all workloads in scope (`selector: {}`)",
            vec![ap(
                "foo",
                "deny",
                json!({"selector": {}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "Absent selector or empty `matchLabels` → all workloads in scope (`matchLabels: {}`)",
            vec![ap(
                "foo",
                "deny",
                json!({"selector": {"matchLabels": {}}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "(selector, if any, is matched against workloads in every namespace) — matching",
            vec![ap(
                "istio-system",
                "deny",
                json!({"selector": {"matchLabels": {"app": "svc"}}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "(selector, if any, is matched against workloads in every namespace) — not matching",
            vec![ap(
                "istio-system",
                "deny",
                json!({"selector": {"matchLabels": {"app": "other"}}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "**A sidecar ignores any policy that has targetRef(s)** (targetRef)",
            vec![ap(
                "foo",
                "deny",
                json!({"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}, "action": "DENY", "rules": [{}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "**A sidecar ignores any policy that has targetRef(s)** (targetRefs)",
            vec![ap(
                "foo",
                "allow-nothing",
                json!({"targetRefs": [{"kind": "Service", "group": "", "name": "svc"}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
    ]);
    let set = PolicySet::new(
        &[ap(
            "foo",
            "waypoint",
            json!({"targetRefs": [{"kind": "Service", "name": "svc"}]}),
        )],
        &AuthzSettings::default(),
    );
    assert_eq!(set.ignored().len(), 1);
    assert_eq!(&*set.ignored()[0], "foo/waypoint");
}

#[test]
fn custom_root_namespace_setting_moves_mesh_wide_scope() {
    // "in the root namespace (default `istio-system`, MeshConfig `rootNamespace`)".
    let settings = AuthzSettings {
        root_namespace: "mesh-root".into(),
        ..AuthzSettings::default()
    };
    let req = tcp(Some(SLEEP));
    let p = [ap("mesh-root", "deny", DENY_ALL())];
    assert!(!decide_with(&settings, &p, "foo", &[], &req).allowed);
    let p = [ap("istio-system", "deny", DENY_ALL())];
    assert!(decide_with(&settings, &p, "foo", &[], &req).allowed);
}

#[test]
fn evaluation_order_3_2() {
    let custom = || json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/ext"]}}]}]});
    run(vec![
        case(
            "1. CUSTOM policies matching → ask ext-authz; deny if it denies (trustmesh: no provider, fail closed)",
            vec![ap("foo", "ext", custom()), ap("foo", "all", ALLOW_ALL())],
            http(Some(SLEEP), "GET", "/ext"),
            false,
        ),
        case(
            "a CUSTOM policy that does not match leaves the decision to DENY/ALLOW",
            vec![ap("foo", "ext", custom()), ap("foo", "all", ALLOW_ALL())],
            http(Some(SLEEP), "GET", "/other"),
            true,
        ),
        case(
            "2. Any **DENY** policy matches → deny (even with an ALLOW-all)",
            vec![ap("foo", "deny", DENY_ALL()), ap("foo", "all", ALLOW_ALL())],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "3. **No ALLOW policy applies to the workload** → allow (no policy at all)",
            vec![],
            tcp(None),
            true,
        ),
        case(
            "3. **No ALLOW policy applies to the workload** → allow (a DENY that does not match)",
            vec![ap(
                "foo",
                "deny",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9999"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "4. Any ALLOW policy matches → allow",
            vec![ap(
                "foo",
                "allow",
                json!({"rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "5. Otherwise deny",
            vec![ap(
                "foo",
                "allow",
                json!({"rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]}),
            )],
            tcp(Some(OTHER)),
            false,
        ),
        case(
            "ALLOW policies are OR'ed across all applicable policies (root ns + workload ns) — root",
            vec![
                ap(
                    "istio-system",
                    "a",
                    json!({"rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
                ),
                ap(
                    "foo",
                    "b",
                    json!({"rules": [{"to": [{"operation": {"paths": ["/b"]}}]}]}),
                ),
            ],
            http(Some(SLEEP), "GET", "/a"),
            true,
        ),
        case(
            "ALLOW policies are OR'ed across all applicable policies (root ns + workload ns) — ns",
            vec![
                ap(
                    "istio-system",
                    "a",
                    json!({"rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
                ),
                ap(
                    "foo",
                    "b",
                    json!({"rules": [{"to": [{"operation": {"paths": ["/b"]}}]}]}),
                ),
            ],
            http(Some(SLEEP), "GET", "/b"),
            true,
        ),
        case(
            "an ALLOW policy that only mentions port 9090 still turns on default-deny for port 8080",
            vec![ap(
                "foo",
                "allow",
                json!({"rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}),
            )],
            tcp(Some(SLEEP)).port(8080),
            false,
        ),
        case(
            "An ALLOW policy whose rules all get dropped (e.g. HTTP-only rules on TCP) still counts as \"an ALLOW policy applies\" → deny",
            vec![ap(
                "foo",
                "allow",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "Dry-run policies (§3.11) are excluded from all of the above (dry-run DENY)",
            vec![ap_meta(
                json!({"name": "d", "namespace": "foo", "annotations": {"istio.io/dry-run": "true"}}),
                DENY_ALL(),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "Dry-run policies (§3.11) are excluded from all of the above (dry-run ALLOW-nothing)",
            vec![ap_meta(
                json!({"name": "d", "namespace": "foo", "annotations": {"istio.io/dry-run": "true"}}),
                json!({}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
    ]);
}

#[test]
fn audit_never_changes_the_decision_but_is_reported() {
    // "AUDIT only marks the request for auditing; never changes the decision."
    let audit = ap("foo", "audit", json!({"action": "AUDIT", "rules": [{}]}));
    let d = decide(std::slice::from_ref(&audit), "foo", &[], &tcp(None));
    assert!(d.allowed);
    assert_eq!(d.audit.len(), 1);
    assert_eq!(&*d.audit[0], "foo/audit");
    let deny_other = ap(
        "foo",
        "allow",
        json!({"rules": [{"from": [{"source": {"principals": [OTHER]}}]}]}),
    );
    let d = decide(&[audit, deny_other], "foo", &[], &tcp(Some(SLEEP)));
    assert!(!d.allowed, "an AUDIT [{{}}] is not an ALLOW");
    assert_eq!(d.audit.len(), 1, "reported on denials too");
}

#[test]
fn decision_names_policy_and_rule() {
    // "RBAC policy IDs: `ns[<ns>]-policy[<name>]-rule[<index>]`."
    let p = ap(
        "foo",
        "two-rules",
        json!({"action": "DENY", "rules": [
            {"to": [{"operation": {"paths": ["/a"]}}]},
            {"to": [{"operation": {"paths": ["/b"]}}]}
        ]}),
    );
    let d = decide(&[p], "foo", &[], &http(None, "GET", "/b"));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policy.as_deref(), Some("foo/two-rules"));
    assert_eq!(d.rule.as_deref(), Some("ns[foo]-policy[two-rules]-rule[1]"));
    assert_eq!(d.reason, "matched a DENY policy");
}

#[test]
fn rule_algebra_3_3() {
    let paths = |p: &[&str], np: &[&str]| json!({"rules": [{"to": [{"operation": {"paths": p, "notPaths": np}}]}]});
    run(vec![
        case(
            "policy matches ⇔ ∃ rule ∈ rules: rule matches (rules absent ⇒ never matches)",
            vec![ap("foo", "none", json!({"action": "ALLOW"}))],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "(rules absent/[] ⇒ never matches) — `rules: []`",
            vec![ap("foo", "none", json!({"rules": []}))],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`rules: [{}]` → the empty rule matches everything. So ALLOW `[{}]` = allow-all",
            vec![ap("foo", "all", ALLOW_ALL())],
            tcp(None),
            true,
        ),
        case(
            "DENY `[{}]` = deny-all",
            vec![ap("foo", "deny", DENY_ALL())],
            http(Some(SLEEP), "GET", "/"),
            false,
        ),
        case(
            "`spec: {}` ... = **allow-nothing**: it never matches, but it *is* an ALLOW policy",
            vec![ap("foo", "allow-nothing", json!({}))],
            http(Some(SLEEP), "GET", "/"),
            false,
        ),
        case(
            "allow-nothing is overridden by any other matching ALLOW policy",
            vec![
                ap("foo", "allow-nothing", json!({})),
                ap("foo", "a", paths(&["/a"], &[])),
            ],
            http(Some(SLEEP), "GET", "/a"),
            true,
        ),
        case(
            "a DENY cannot be overridden by any ALLOW",
            vec![
                ap("foo", "deny", DENY_ALL()),
                ap("istio-system", "all", ALLOW_ALL()),
            ],
            http(Some(SLEEP), "GET", "/a"),
            false,
        ),
        case(
            "Values inside one list are OR'ed (second value)",
            vec![ap("foo", "a", paths(&["/a", "/b"], &[]))],
            http(None, "GET", "/b"),
            true,
        ),
        case(
            "`X` and `notX` of the same attribute are AND'ed (in X, not in notX)",
            vec![ap("foo", "a", paths(&["/a/*"], &["/a/secret"]))],
            http(None, "GET", "/a/x"),
            true,
        ),
        case(
            "`notX` is \"none of\" (in X and in notX)",
            vec![ap(
                "foo",
                "a",
                paths(&["/a/*"], &["/a/secret", "/a/private"]),
            )],
            http(None, "GET", "/a/private"),
            false,
        ),
        case(
            "source/operation matches ⇔ ∀ set field f: field_match(f) (fields AND'ed: method fails)",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/a"]}}]}]}),
            )],
            http(None, "POST", "/a"),
            false,
        ),
        case(
            "(fields AND'ed: both hold)",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/a"]}}]}]}),
            )],
            http(None, "GET", "/a"),
            true,
        ),
        case(
            "(from absent ∨ ∃ from[i].source matches) — second source",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"from": [{"source": {"principals": [OTHER]}}, {"source": {"principals": [SLEEP]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "(to absent ∨ ∃ to[j].operation matches) — no operation matches",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"ports": ["1"]}}, {"operation": {"ports": ["2"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "∧ ∀ when[k]: condition matches — `when` values OR'ed within a key",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [{"key": "request.headers[x-env]", "values": ["dev", "test"]}]}]}),
            )],
            http(None, "GET", "/").header("x-env", "test"),
            true,
        ),
        case(
            "separate `when` entries AND'ed",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [
                    {"key": "request.headers[x-env]", "values": ["dev"]},
                    {"key": "destination.port", "values": ["9000"]}
                ]}]}),
            )],
            http(None, "GET", "/").header("x-env", "dev"),
            false,
        ),
        case(
            "both `values` and `notValues` may appear (AND)",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [{"key": "request.headers[x-env]", "values": ["d*"], "notValues": ["dev"]}]}]}),
            )],
            http(None, "GET", "/").header("x-env", "dev"),
            false,
        ),
        case(
            "rules are OR'ed: the second rule matches",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"ports": ["1"]}}]}, {"from": [{"source": {"namespaces": ["foo"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
    ]);
}

#[test]
fn string_matching_3_4() {
    let path = |p: &str| json!({"rules": [{"to": [{"operation": {"paths": [p]}}]}]});
    let from = |k: &str, v: &str| json!({"rules": [{"from": [{"source": {k: [v]}}]}]});
    run(vec![
        case(
            "`abc` | exact",
            vec![ap("foo", "a", path("/abc"))],
            http(None, "GET", "/abc"),
            true,
        ),
        case(
            "`abc` | exact (no prefix)",
            vec![ap("foo", "a", path("/abc"))],
            http(None, "GET", "/abcd"),
            false,
        ),
        case(
            "`abc*` | prefix (`abc`)",
            vec![ap("foo", "a", path("/abc*"))],
            http(None, "GET", "/abc"),
            true,
        ),
        case(
            "`abc*` | prefix (`abcd`)",
            vec![ap("foo", "a", path("/abc*"))],
            http(None, "GET", "/abcd"),
            true,
        ),
        case(
            "`/api*` matches `/apix`!",
            vec![ap("foo", "a", path("/api*"))],
            http(None, "GET", "/apix"),
            true,
        ),
        case(
            "`*abc` | suffix",
            vec![ap("foo", "a", path("*.png"))],
            http(None, "GET", "/img/a.png"),
            true,
        ),
        case(
            "`*abc` | suffix (no match)",
            vec![ap("foo", "a", path("*.png"))],
            http(None, "GET", "/img/a.png.txt"),
            false,
        ),
        case(
            "`*` | presence: value non-empty",
            vec![ap("foo", "a", path("*"))],
            http(None, "GET", "/"),
            true,
        ),
        case(
            "A `*` elsewhere is a literal for principals/paths/hosts/headers (no glob)",
            vec![ap("foo", "a", path("/a/*/c"))],
            http(None, "GET", "/a/b/c"),
            false,
        ),
        case(
            "A `*` elsewhere is a literal ... (exact match on the literal string)",
            vec![ap("foo", "a", path("/a/*/c"))],
            http(None, "GET", "/a/*/c"),
            true,
        ),
        case(
            "A `*` elsewhere is a literal for principals",
            vec![ap(
                "foo",
                "a",
                from("principals", "cluster.local/ns/*/sa/sleep"),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "(Exception: `namespaces` in sidecar splits on every `*` into `.*` regex.)",
            vec![ap("foo", "a", from("namespaces", "f*o"))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "`hosts`/`notHosts` case-**insensitive**",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"hosts": ["Example.COM"]}}]}]}),
            )],
            http(None, "GET", "/").host("example.com"),
            true,
        ),
        case(
            "everything else (paths ...) case-**sensitive**",
            vec![ap("foo", "a", path("/Admin"))],
            http(None, "GET", "/admin"),
            false,
        ),
        case(
            "everything else (... methods ...) case-**sensitive**",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"methods": ["Get"]}}]}]}),
            )],
            http(None, "GET", "/"),
            false,
        ),
        case(
            "everything else (... header values ...) case-**sensitive**",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [{"key": "request.headers[x-a]", "values": ["Yes"]}]}]}),
            )],
            http(None, "GET", "/").header("x-a", "yes"),
            false,
        ),
        case(
            "everything else (... principals ...) case-**sensitive**",
            vec![ap(
                "foo",
                "a",
                from("principals", "cluster.local/ns/foo/sa/Sleep"),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "everything else (... namespaces) case-**sensitive**",
            vec![ap("foo", "a", from("namespaces", "FOO"))],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "Header *names* are case-insensitive",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [{"key": "request.headers[X-Token]", "values": ["t"]}]}]}),
            )],
            http(None, "GET", "/").header("x-token", "t"),
            true,
        ),
        case(
            "Exact-only fields: `ports`/`notPorts` (a trailing `*` is not a prefix; ALLOW drops the rule)",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"ports": ["80*"]}}]}]}),
            )],
            tcp(Some(SLEEP)).port(8080),
            false,
        ),
        case(
            "Principal compilation (sidecar): exact → `spiffe://<v>`",
            vec![ap("foo", "a", from("principals", SLEEP))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "`x*` → prefix `spiffe://x`",
            vec![ap("foo", "a", from("principals", "cluster.local/ns/foo/*"))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "`*x` → regex `spiffe://.*x`",
            vec![ap("foo", "a", from("principals", "*/sa/sleep"))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "`*` → regex `.+` (any authenticated peer)",
            vec![ap("foo", "a", from("principals", "*"))],
            tcp(Some("eu.example/ns/x/sa/y")),
            true,
        ),
    ]);
}

#[test]
fn source_fields_3_5() {
    let from = |src: serde_json::Value| json!({"rules": [{"from": [{"source": src}]}]});
    run(vec![
        case(
            "`principals` | peer SAN w/o `spiffe://` | mTLS",
            vec![ap("foo", "a", from(json!({"principals": [SLEEP]})))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "A policy value that itself starts with `spiffe://` therefore never matches",
            vec![ap(
                "foo",
                "a",
                from(json!({"principals": ["spiffe://cluster.local/ns/foo/sa/sleep"]})),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`notPrincipals`",
            vec![ap("foo", "a", from(json!({"notPrincipals": [SLEEP]})))],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`namespaces` | `/ns/<x>/` of peer SAN",
            vec![ap("foo", "a", from(json!({"namespaces": ["bar"]})))],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`notNamespaces`",
            vec![ap("foo", "a", from(json!({"notNamespaces": ["bar"]})))],
            tcp(Some(OTHER)),
            false,
        ),
        case(
            "`serviceAccounts` | `<ns>/<sa>`",
            vec![ap(
                "foo",
                "a",
                from(json!({"serviceAccounts": ["bar/other"]})),
            )],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`serviceAccounts` | `<sa>` (= policy's namespace)",
            vec![ap("foo", "a", from(json!({"serviceAccounts": ["sleep"]})))],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "`serviceAccounts` | `<sa>` (= policy's namespace, not the peer's)",
            vec![ap("foo", "a", from(json!({"serviceAccounts": ["other"]})))],
            tcp(Some(OTHER)),
            false,
        ),
        case(
            "`serviceAccounts` | **any trust domain**",
            vec![ap("foo", "a", from(json!({"serviceAccounts": ["sleep"]})))],
            tcp(Some("eu.example/ns/foo/sa/sleep")),
            true,
        ),
        case(
            "`notServiceAccounts`",
            vec![ap(
                "foo",
                "a",
                from(json!({"notServiceAccounts": ["sleep"]})),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`trustDomains` | TD of peer SAN",
            vec![ap(
                "foo",
                "a",
                from(json!({"trustDomains": ["eu.example"]})),
            )],
            tcp(Some("eu.example/ns/x/sa/y")),
            true,
        ),
        case(
            "`notTrustDomains`",
            vec![ap(
                "foo",
                "a",
                from(json!({"notTrustDomains": ["eu.example"]})),
            )],
            tcp(Some("eu.example/ns/x/sa/y")),
            false,
        ),
        case(
            "`ipBlocks` | L4 source IP ..., IP or CIDR (CIDR)",
            vec![ap("foo", "a", from(json!({"ipBlocks": ["10.0.0.0/24"]})))],
            tcp(None).src("10.0.0.77"),
            true,
        ),
        case(
            "`ipBlocks` | ... IP or CIDR (bare IP)",
            vec![ap("foo", "a", from(json!({"ipBlocks": ["10.0.0.7"]})))],
            tcp(None).src("10.0.0.77"),
            false,
        ),
        case(
            "`notIpBlocks`",
            vec![ap("foo", "a", from(json!({"notIpBlocks": ["10.0.0.0/8"]})))],
            tcp(None).src("10.9.9.9"),
            false,
        ),
        case(
            "`remoteIpBlocks` | original client IP (trustmesh trusts no proxy: the source IP)",
            vec![ap(
                "foo",
                "a",
                from(json!({"remoteIpBlocks": ["192.168.0.0/16"]})),
            )],
            http(None, "GET", "/")
                .src("192.168.1.1")
                .header("x-forwarded-for", "10.1.1.1"),
            true,
        ),
        case(
            "`notRemoteIpBlocks`",
            vec![ap(
                "foo",
                "a",
                from(json!({"notRemoteIpBlocks": ["192.168.0.0/16"]})),
            )],
            tcp(None).src("192.168.1.1"),
            false,
        ),
        case(
            "`requestPrincipals` | JWT `<iss>/<sub>` (trustmesh has no RequestAuthentication: never matches)",
            vec![ap("foo", "a", from(json!({"requestPrincipals": ["*"]})))],
            http(Some(SLEEP), "GET", "/").header("authorization", "Bearer x"),
            false,
        ),
        case(
            "`notRequestPrincipals` (no JWT: always matches)",
            vec![ap(
                "foo",
                "a",
                from(json!({"notRequestPrincipals": ["https://issuer/*"]})),
            )],
            http(Some(SLEEP), "GET", "/"),
            true,
        ),
        case(
            "serviceAccounts regex: `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` (no `<sa>-suffix` match)",
            vec![ap(
                "foo",
                "a",
                from(json!({"serviceAccounts": ["foo/sleep"]})),
            )],
            tcp(Some("cluster.local/ns/foo/sa/sleep-v2")),
            false,
        ),
    ]);
}

#[test]
fn operation_fields_3_6() {
    let op = |o: serde_json::Value| json!({"rules": [{"to": [{"operation": o}]}]});
    run(vec![
        case(
            "`hosts` | `:authority`/Host header **including `:port` if sent**",
            vec![ap("foo", "a", op(json!({"hosts": ["example.com"]})))],
            http(None, "GET", "/").host("example.com:8080"),
            false,
        ),
        case(
            "Host `example.com` does **not** match `example.com:8080`; use `example.com:*` too",
            vec![ap(
                "foo",
                "a",
                op(json!({"hosts": ["example.com", "example.com:*"]})),
            )],
            http(None, "GET", "/").host("example.com:8080"),
            true,
        ),
        case(
            "`notHosts`",
            vec![ap("foo", "a", op(json!({"notHosts": ["*.internal"]})))],
            http(None, "GET", "/").host("db.INTERNAL"),
            false,
        ),
        case(
            "`ports` | destination (workload) port of the connection | HTTP+TCP (HTTP)",
            vec![ap("foo", "a", op(json!({"ports": ["8080"]})))],
            http(None, "GET", "/").port(8080),
            true,
        ),
        case(
            "`ports` ... HTTP+TCP (TCP)",
            vec![ap("foo", "a", op(json!({"ports": ["8080"]})))],
            tcp(None).port(8080),
            true,
        ),
        case(
            "`notPorts`",
            vec![ap("foo", "a", op(json!({"notPorts": ["8080"]})))],
            tcp(None).port(8080),
            false,
        ),
        case(
            "`methods` | `:method`, exact case (gRPC is always POST)",
            vec![ap("foo", "a", op(json!({"methods": ["POST"]})))],
            http(None, "POST", "/pkg.Svc/Method"),
            true,
        ),
        case(
            "`notMethods`",
            vec![ap("foo", "a", op(json!({"notMethods": ["DELETE"]})))],
            http(None, "DELETE", "/"),
            false,
        ),
        case(
            "`paths` | normalized path **without query/fragment**",
            vec![ap("foo", "a", op(json!({"paths": ["/info"]})))],
            http(None, "GET", "/info?user=admin#top"),
            true,
        ),
        case(
            "`paths` | gRPC `/pkg.Svc/Method`",
            vec![ap("foo", "a", op(json!({"paths": ["/pkg.Svc/*"]})))],
            http(None, "POST", "/pkg.Svc/Get"),
            true,
        ),
        case(
            "`notPaths`",
            vec![ap("foo", "a", op(json!({"notPaths": ["/admin*"]})))],
            http(None, "GET", "/admin/x"),
            false,
        ),
        case(
            "`/allow/admin/{**}` matches `/allow/admin/`",
            vec![ap("foo", "a", op(json!({"paths": ["/allow/admin/{**}"]})))],
            http(None, "GET", "/allow/admin/"),
            true,
        ),
        case(
            "`/allow/admin/{**}` matches ... `/allow/admin/foo/x.txt`",
            vec![ap("foo", "a", op(json!({"paths": ["/allow/admin/{**}"]})))],
            http(None, "GET", "/allow/admin/foo/x.txt"),
            true,
        ),
        case(
            "`/allow/admin/{**}` ... but **not** `/allow/admin`",
            vec![ap("foo", "a", op(json!({"paths": ["/allow/admin/{**}"]})))],
            http(None, "GET", "/allow/admin"),
            false,
        ),
        case(
            "`/store/{**}/cart` matches `/store//cart`",
            vec![ap("foo", "a", op(json!({"paths": ["/store/{**}/cart"]})))],
            http(None, "GET", "/store//cart"),
            true,
        ),
        case(
            "`/store/{**}/cart` ... but not `/store/cart`",
            vec![ap("foo", "a", op(json!({"paths": ["/store/{**}/cart"]})))],
            http(None, "GET", "/store/cart"),
            false,
        ),
        case(
            "`{*}` one segment",
            vec![ap("foo", "a", op(json!({"paths": ["/user/{*}/profile"]})))],
            http(None, "GET", "/user/a/b/profile"),
            false,
        ),
    ]);
}

#[test]
fn when_keys_3_7() {
    let when = |k: &str, v: &[&str], nv: &[&str]| json!({"rules": [{"when": [{"key": k, "values": v, "notValues": nv}]}]});
    let w = |k: &str, v: &str| when(k, &[v], &[]);
    run(vec![
        case(
            "`request.headers[<name>]` | header value (exact/prefix/suffix/presence)",
            vec![ap("foo", "a", w("request.headers[user-agent]", "curl/*"))],
            http(None, "GET", "/").header("User-Agent", "curl/8.0"),
            true,
        ),
        case(
            "`request.headers[<name>]` presence: absent header",
            vec![ap("foo", "a", w("request.headers[x-a]", "*"))],
            http(None, "GET", "/"),
            false,
        ),
        case(
            "Duplicate headers are joined with `,` before matching (`x: foo` + `x: bar` → `foo,bar`)",
            vec![ap("foo", "a", w("request.headers[x]", "foo,bar"))],
            http(None, "GET", "/").header("x", "foo").header("X", "bar"),
            true,
        ),
        case(
            "`source.ip` | IP/CIDR | both",
            vec![ap("foo", "a", w("source.ip", "10.0.0.0/24"))],
            tcp(None),
            true,
        ),
        case(
            "`remote.ip` | IP/CIDR (XFF/PROXY) | both (sidecar)",
            vec![ap("foo", "a", w("remote.ip", "10.0.0.1"))],
            tcp(None),
            true,
        ),
        case(
            "`source.namespace` | namespace pattern | needs mTLS",
            vec![ap("foo", "a", w("source.namespace", "bar"))],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`source.principal` | principal pattern",
            vec![ap(
                "foo",
                "a",
                w("source.principal", "cluster.local/ns/bar/*"),
            )],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`source.serviceAccount` | `ns/sa`",
            vec![ap("foo", "a", w("source.serviceAccount", "bar/other"))],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`source.trustDomain` | TD pattern",
            vec![ap("foo", "a", w("source.trustDomain", "*.local"))],
            tcp(Some(OTHER)),
            true,
        ),
        case(
            "`request.auth.principal` | JWT (never present in trustmesh)",
            vec![ap("foo", "a", w("request.auth.principal", "*"))],
            http(Some(SLEEP), "GET", "/"),
            false,
        ),
        case(
            "`request.auth.claims[c][nested]` notValues (no JWT: always satisfied)",
            vec![ap(
                "foo",
                "a",
                when("request.auth.claims[groups]", &[], &["admin"]),
            )],
            http(Some(SLEEP), "GET", "/"),
            true,
        ),
        case(
            "`destination.ip` | IP/CIDR",
            vec![ap("foo", "a", w("destination.ip", "10.0.0.2"))],
            tcp(None),
            true,
        ),
        case(
            "`destination.ip` (other address)",
            vec![ap("foo", "a", w("destination.ip", "10.0.0.2"))],
            tcp(None).dst("10.0.0.3"),
            false,
        ),
        case(
            "`destination.port` | port, exact",
            vec![ap("foo", "a", w("destination.port", "8080"))],
            tcp(None).port(8080),
            true,
        ),
        case(
            "`connection.sni` | TLS SNI (string match)",
            vec![ap("foo", "a", w("connection.sni", "*.example.com"))],
            tcp(Some(SLEEP)).sni("api.example.com"),
            true,
        ),
        case(
            "`connection.sni` | (only present on TLS)",
            vec![ap("foo", "a", w("connection.sni", "*"))],
            tcp(None),
            false,
        ),
        case(
            "`experimental.envoy.filters.*[k]` | dynamic metadata (trustmesh has none)",
            vec![ap(
                "foo",
                "a",
                w(
                    "experimental.envoy.filters.network.mysql_proxy[db.table]",
                    "[update]",
                ),
            )],
            tcp(None),
            false,
        ),
        case(
            "Unknown keys ... are **rejected by validation** (if one reaches the compiler, istiod skips the rule)",
            vec![ap("foo", "a", w("destination.labels[app]", "svc"))],
            tcp(None),
            false,
        ),
    ]);
}

#[test]
fn plaintext_3_8() {
    let from = |src: serde_json::Value| json!({"rules": [{"from": [{"source": src}]}]});
    let deny_from =
        |src: serde_json::Value| json!({"action": "DENY", "rules": [{"from": [{"source": src}]}]});
    let when = |k: &str, v: &str, negate: bool| {
        let key = if negate { "notValues" } else { "values" };
        json!({"rules": [{"when": [{"key": k, key: [v]}]}]})
    };
    run(vec![
        case(
            "positive matchers (`principals` ...) → **never match**",
            vec![ap("foo", "a", from(json!({"principals": ["*"]})))],
            tcp(None),
            false,
        ),
        case(
            "positive matchers (... `namespaces` ...) → **never match**",
            vec![ap("foo", "a", from(json!({"namespaces": ["*"]})))],
            tcp(None),
            false,
        ),
        case(
            "positive matchers (... `serviceAccounts` ...) → **never match**",
            vec![ap(
                "foo",
                "a",
                from(json!({"serviceAccounts": ["foo/sleep"]})),
            )],
            tcp(None),
            false,
        ),
        case(
            "positive matchers (... `source.principal` ...) → **never match**",
            vec![ap("foo", "a", when("source.principal", "*", false))],
            tcp(None),
            false,
        ),
        case(
            "positive matchers (... `source.namespace`, `*`) → **never match**",
            vec![ap("foo", "a", when("source.namespace", "*", false))],
            tcp(None),
            false,
        ),
        case(
            "negative matchers (`notPrincipals` ...) → **always match**",
            vec![ap("foo", "a", from(json!({"notPrincipals": [SLEEP]})))],
            tcp(None),
            true,
        ),
        case(
            "negative matchers (... `notNamespaces` ...) → **always match**",
            vec![ap("foo", "a", from(json!({"notNamespaces": ["foo"]})))],
            tcp(None),
            true,
        ),
        case(
            "negative matchers (... `notValues` of those keys) → **always match**",
            vec![ap("foo", "a", when("source.namespace", "foo", true))],
            tcp(None),
            true,
        ),
        case(
            "`not_service_accounts` plaintext→true (ztunnel rbac.rs table)",
            vec![ap(
                "foo",
                "a",
                from(json!({"notServiceAccounts": ["foo/sleep"]})),
            )],
            tcp(None),
            true,
        ),
        case(
            "ALLOW `principals: [...]` / `namespaces: [...]` → plaintext denied (nothing matches)",
            vec![ap("foo", "a", from(json!({"principals": [SLEEP]})))],
            http(None, "GET", "/"),
            false,
        ),
        case(
            "ALLOW `notNamespaces: [\"foo\"]` → plaintext request from pods in `foo` **allowed**",
            vec![ap("foo", "a", from(json!({"notNamespaces": ["foo"]})))],
            http(None, "GET", "/"),
            true,
        ),
        case(
            "DENY `namespaces: [\"foo\"]` → plaintext from `foo` **not denied**",
            vec![ap("foo", "d", deny_from(json!({"namespaces": ["foo"]})))],
            http(None, "GET", "/"),
            true,
        ),
        case(
            "Mitigation idioms: ALLOW add `namespaces: [\"*\"]`",
            vec![ap(
                "foo",
                "a",
                from(json!({"notNamespaces": ["foo"], "namespaces": ["*"]})),
            )],
            http(None, "GET", "/"),
            false,
        ),
        case(
            "Mitigation idioms: ALLOW add `namespaces: [\"*\"]` (mTLS peer still allowed)",
            vec![ap(
                "foo",
                "a",
                from(json!({"notNamespaces": ["foo"], "namespaces": ["*"]})),
            )],
            http(Some(OTHER), "GET", "/"),
            true,
        ),
        case(
            "DENY add rule `notNamespaces: [\"*\"]` (= deny all plaintext)",
            vec![ap("foo", "d", deny_from(json!({"notNamespaces": ["*"]})))],
            http(None, "GET", "/"),
            false,
        ),
        case(
            "DENY ... `notPrincipals: [\"*\"]` (= \"deny all plaintext\"; `TestAuthz_DenyPlaintext`)",
            vec![ap("foo", "d", deny_from(json!({"notPrincipals": ["*"]})))],
            tcp(None),
            false,
        ),
        case(
            "DENY ... `notPrincipals: [\"*\"]` lets mTLS through",
            vec![ap("foo", "d", deny_from(json!({"notPrincipals": ["*"]})))],
            tcp(Some(SLEEP)),
            true,
        ),
    ]);
}

#[test]
fn http_only_attributes_on_tcp_3_9() {
    let rule = |action: &str, op: serde_json::Value| json!({"action": action, "rules": [{"to": [{"operation": op}]}]});
    run(vec![
        case(
            "**ALLOW**: a rule containing *any* HTTP-only attribute (hosts ...) is **dropped entirely**",
            vec![ap(
                "foo",
                "a",
                rule("ALLOW", json!({"hosts": ["*"], "ports": ["8080"]})),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "ALLOW drops rules with ... `request.headers[...]`",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"from": [{"source": {"principals": [SLEEP]}}], "when": [{"key": "request.headers[x]", "notValues": ["y"]}]}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "ALLOW drops rules with ... requestPrincipals/notRequestPrincipals",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"from": [{"source": {"notRequestPrincipals": ["x/y"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "only the rule is dropped: another rule of the policy still allows",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}, {"to": [{"operation": {"ports": ["8080"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "(`remoteIpBlocks`/`remote.ip`, `connection.sni`, ports, IPs and identity fields are TCP-capable and kept.)",
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"from": [{"source": {"remoteIpBlocks": ["10.0.0.1"], "principals": [SLEEP]}}], "to": [{"operation": {"ports": ["8080"]}}], "when": [{"key": "connection.sni", "values": ["svc"]}, {"key": "destination.ip", "values": ["10.0.0.0/8"]}]}]}),
            )],
            tcp(Some(SLEEP)).sni("svc"),
            true,
        ),
        case(
            "If all rules drop, the policy still exists and allows nothing (`methods: [GET], ports: [9000]` → port 9000 \"connection rejected\")",
            vec![ap(
                "foo",
                "a",
                rule("ALLOW", json!({"methods": ["GET"], "ports": ["9000"]})),
            )],
            tcp(Some(SLEEP)).port(9000),
            false,
        ),
        case(
            "the same policy still allows the HTTP request it describes",
            vec![ap(
                "foo",
                "a",
                rule("ALLOW", json!({"methods": ["GET"], "ports": ["9000"]})),
            )],
            http(Some(SLEEP), "GET", "/").port(9000),
            true,
        ),
        case(
            "`DENY to: methods: [GET]` ⇒ deny **all** TCP on every port",
            vec![ap("foo", "d", rule("DENY", json!({"methods": ["GET"]})))],
            tcp(Some(SLEEP)).port(1234),
            false,
        ),
        case(
            "`DENY methods: [GET], ports: [9000]` ⇒ deny all TCP on 9000 only (9000)",
            vec![ap(
                "foo",
                "d",
                rule("DENY", json!({"methods": ["GET"], "ports": ["9000"]})),
            )],
            tcp(Some(SLEEP)).port(9000),
            false,
        ),
        case(
            "`DENY methods: [GET], ports: [9000]` ⇒ deny all TCP on 9000 only (8080)",
            vec![ap(
                "foo",
                "d",
                rule("DENY", json!({"methods": ["GET"], "ports": ["9000"]})),
            )],
            tcp(Some(SLEEP)).port(8080),
            true,
        ),
        case(
            "`DENY notPaths: [/healthz]` on TCP ⇒ deny-all (the notPaths exclusion disappears)",
            vec![ap(
                "foo",
                "d",
                rule("DENY", json!({"notPaths": ["/healthz"]})),
            )],
            tcp(Some(SLEEP)),
            false,
        ),
        case(
            "`DENY notPaths: [/healthz]` on HTTP still spares /healthz",
            vec![ap(
                "foo",
                "d",
                rule("DENY", json!({"notPaths": ["/healthz"]})),
            )],
            http(Some(SLEEP), "GET", "/healthz"),
            true,
        ),
        case(
            "DENY keeps non-HTTP attributes of the rule (principal does not match → no deny)",
            vec![ap(
                "foo",
                "d",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": [OTHER]}}], "to": [{"operation": {"paths": ["/x"]}}]}]}),
            )],
            tcp(Some(SLEEP)),
            true,
        ),
        case(
            "[ztunnel] divergence ... that DENY rule **never fires**. Do not copy this; use sidecar semantics.",
            vec![ap(
                "foo",
                "d",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}]}),
            )],
            tcp(None),
            false,
        ),
    ]);
    // "**DENY / AUDIT**: only the HTTP-only *attribute* is dropped".
    let audit = ap(
        "foo",
        "audit",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    );
    let d = decide(&[audit], "foo", &[], &tcp(None));
    assert_eq!(
        d.audit.len(),
        1,
        "AUDIT with only HTTP attributes audits all TCP"
    );
}

#[test]
fn trust_domain_aliases_3_10() {
    let td = |s: &str| TrustDomain::new(s).unwrap();
    let migrating = AuthzSettings {
        trust_domain: td("new-td"),
        trust_domain_aliases: vec![td("old-td")],
        ..AuthzSettings::default()
    };
    let renamed = AuthzSettings {
        trust_domain: td("new-td"),
        ..AuthzSettings::default()
    };
    let from = |k: &str, v: &str| {
        vec![ap(
            "foo",
            "a",
            json!({"rules": [{"from": [{"source": {k: [v]}}]}]}),
        )]
    };
    let cases: Vec<(&str, &AuthzSettings, Vec<_>, &str, bool)> = vec![
        (
            "if its TD ∈ {local TD} ∪ aliases ... expanded into one principal per member (alias → local)",
            &migrating,
            from("principals", "old-td/ns/a/sa/b"),
            "new-td/ns/a/sa/b",
            true,
        ),
        (
            "... expanded into one principal per member (local → alias)",
            &migrating,
            from("principals", "new-td/ns/a/sa/b"),
            "old-td/ns/a/sa/b",
            true,
        ),
        (
            "**or the TD is literally `cluster.local`** (pointer to our TD and aliases)",
            &migrating,
            from("principals", "cluster.local/ns/a/sa/b"),
            "old-td/ns/a/sa/b",
            true,
        ),
        (
            "with `trustDomain: new-td` and no aliases, `cluster.local/ns/a/sa/b` compiles to only `new-td/ns/a/sa/b` (matches new-td)",
            &renamed,
            from("principals", "cluster.local/ns/a/sa/b"),
            "new-td/ns/a/sa/b",
            true,
        ),
        (
            "... compiles to only `new-td/ns/a/sa/b` (no longer matches cluster.local)",
            &renamed,
            from("principals", "cluster.local/ns/a/sa/b"),
            "cluster.local/ns/a/sa/b",
            false,
        ),
        (
            "otherwise (foreign TD ...) it is kept as-is and matches only peers from that TD (same TD)",
            &migrating,
            from("principals", "eu.cluster.local/ns/a/sa/b"),
            "eu.cluster.local/ns/a/sa/b",
            true,
        ),
        (
            "otherwise (foreign TD ...) ... matches only peers from that TD (local peer)",
            &migrating,
            from("principals", "eu.cluster.local/ns/a/sa/b"),
            "new-td/ns/a/sa/b",
            false,
        ),
        (
            "whose TD part is not literally `*` (kept: any TD matches)",
            &migrating,
            from("principals", "*/ns/a/sa/b"),
            "zz/ns/a/sa/b",
            true,
        ),
        (
            "Values not of 5 parts (`*`, `*/sa/x`, `spiffe://...`) are kept verbatim",
            &migrating,
            from("principals", "*/sa/b"),
            "zz/ns/a/sa/b",
            true,
        ),
        (
            "`trustDomains` values expand to all aliases",
            &migrating,
            from("trustDomains", "old-td"),
            "new-td/ns/a/sa/b",
            true,
        ),
        (
            "`trustDomains` foreign value stays",
            &migrating,
            from("trustDomains", "eu"),
            "new-td/ns/a/sa/b",
            false,
        ),
        (
            "`source.principal` when-values are expanded too (MigrateTrustDomain)",
            &migrating,
            vec![ap(
                "foo",
                "a",
                json!({"rules": [{"when": [{"key": "source.principal", "values": ["old-td/ns/a/sa/b"]}]}]}),
            )],
            "new-td/ns/a/sa/b",
            true,
        ),
        (
            "`notPrincipals` are expanded too",
            &migrating,
            from("notPrincipals", "old-td/ns/a/sa/b"),
            "new-td/ns/a/sa/b",
            false,
        ),
    ];
    for (quote, settings, policies, peer, want) in cases {
        let d = decide_with(settings, &policies, "foo", &[], &tcp(Some(peer)));
        assert_eq!(d.allowed, want, "{quote}: peer {peer}");
    }
}

#[test]
fn dry_run_audit_custom_3_11() {
    let dry = |v: &str, spec: serde_json::Value| {
        ap_meta(
            json!({"name": "d", "namespace": "foo", "annotations": {"istio.io/dry-run": v}}),
            spec,
        )
    };
    // "`metadata.annotations["istio.io/dry-run"] = "true"` (parsed with Go `strconv.ParseBool`;
    // bad value → logged, treated as false)".
    for (v, is_dry) in [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("1", true),
        ("t", true),
        ("false", false),
        ("0", false),
        ("yes", false),
        ("on", false),
        ("", false),
    ] {
        let d = decide(&[dry(v, DENY_ALL())], "foo", &[], &tcp(Some(SLEEP)));
        assert_eq!(d.allowed, is_dry, "istio.io/dry-run: {v:?}");
        assert_eq!(d.dry_run.len(), usize::from(is_dry));
    }
    // "Dry-run policies are compiled into Envoy `shadow_rules` only: **no enforcement effect**,
    // results only in logs (`shadow denied, matched policy ns[foo]-policy[x]-rule[0]`)".
    let d = decide(&[dry("true", DENY_ALL())], "foo", &[], &tcp(Some(SLEEP)));
    assert!(d.allowed);
    let s = &d.dry_run[0];
    assert_eq!(&*s.policy, "foo/d");
    assert!(s.matched);
    assert_eq!(s.result, ShadowResult::Denied);
    assert_eq!(s.rule.as_deref(), Some("ns[foo]-policy[d]-rule[0]"));
    // "A workload whose only ALLOW policies are dry-run is *not* deny-by-default."
    let allow_sleep = json!({"rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]});
    let d = decide(
        &[dry("true", allow_sleep.clone())],
        "foo",
        &[],
        &tcp(Some(OTHER)),
    );
    assert!(d.allowed);
    assert_eq!(
        d.dry_run[0].result,
        ShadowResult::Denied,
        "would have denied"
    );
    let d = decide(&[dry("true", allow_sleep)], "foo", &[], &tcp(Some(SLEEP)));
    assert_eq!(d.dry_run[0].result, ShadowResult::Allowed);
    // "Only ALLOW and DENY support dry-run": an annotated CUSTOM is enforced (and denies).
    let custom = dry(
        "true",
        json!({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]}),
    );
    assert!(!decide(&[custom], "foo", &[], &tcp(None)).allowed);
    // "AUDIT → Envoy RBAC action LOG; marks `access_log_hint`; never allow/deny."
    let audit = dry("true", json!({"action": "AUDIT", "rules": [{}]}));
    let d = decide(&[audit], "foo", &[], &tcp(None));
    assert!(d.allowed);
    assert_eq!(d.audit.len(), 1);
    // "a CUSTOM allow cannot bypass DENY/ALLOW": trustmesh's CUSTOM never allows, and a
    // non-matching CUSTOM leaves DENY in charge.
    let d = decide(
        &[
            ap(
                "foo",
                "c",
                json!({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{"to": [{"operation": {"ports": ["1"]}}]}]}),
            ),
            ap("foo", "d", DENY_ALL()),
        ],
        "foo",
        &[],
        &tcp(None),
    );
    assert_eq!(d.policy.as_deref(), Some("foo/d"));
}

#[test]
fn normalization_applies_before_policy_3_12() {
    // "Applied before AP evaluation and forwarded to the app."
    let deny_admin = || {
        vec![ap(
            "foo",
            "d",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}),
        )]
    };
    for target in [
        "/admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/./admin",
        "/admin?x=1",
        "/%61dmin",
        "/public\\..\\admin",
        "/admin/%2E/x",
    ] {
        let d = decide(&deny_admin(), "foo", &[], &http(None, "GET", target));
        assert_eq!(
            d.outcome,
            Outcome::Deny,
            "{target} must reach the DENY as /admin: {d:?}"
        );
        assert_eq!(
            d.path.as_deref().map(|p| p.starts_with("/admin")),
            Some(true)
        );
    }
    // "Multiple slashes **not** merged by default": `//admin` is not `/admin` (BASE).
    let d = decide(&deny_admin(), "foo", &[], &http(None, "GET", "//admin"));
    assert!(d.allowed);
    assert_eq!(d.path.as_deref(), Some("//admin"));
    // "`%00` → 400."
    let d = decide(&[], "foo", &[], &http(None, "GET", "/a%00b"));
    assert_eq!(d.outcome, Outcome::BadRequest);
    assert_eq!(d.http_status(true), Some(400));
    // "Non-uppercase HTTP method → 400."
    let d = decide(&[], "foo", &[], &http(None, "get", "/"));
    assert_eq!(d.outcome, Outcome::BadRequest);
    // "Header names whitespace → 400."
    let d = decide(&[], "foo", &[], &http(None, "GET", "/").header("x y", "1"));
    assert_eq!(d.outcome, Outcome::BadRequest);
}

#[test]
fn what_a_denial_looks_like_3_13() {
    // "HTTP/1.1 and HTTP/2: status **403**"; "TCP: connection closed with no data".
    let p = [ap("foo", "d", DENY_ALL())];
    let d = decide(&p, "foo", &[], &http(None, "GET", "/"));
    assert_eq!(d.http_status(true), Some(403));
    let d = decide(&p, "foo", &[], &tcp(None));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.http_status(false), None);
    let d = decide(&[], "foo", &[], &http(None, "GET", "/"));
    assert_eq!(d.http_status(true), None);
}
