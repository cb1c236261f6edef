//! Property tests for the invariants of digest §3 over randomly generated policy sets and
//! requests: a matching DENY always wins; adding an ALLOW policy never turns an allow into a
//! deny unless it is the workload's first ALLOW; plaintext never matches a positive identity
//! matcher (and always matches a negative one).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use trustmesh_core::authz::{Outcome, Request};
use trustmesh_core::model::AuthorizationPolicy;

const PRINCIPALS: &[&str] = &[
    SLEEP,
    OTHER,
    "*",
    "cluster.local/ns/foo/*",
    "*/sa/other",
    "eu.example/ns/foo/sa/sleep",
];
const NAMESPACES: &[&str] = &["foo", "bar", "*", "b*"];
const SERVICE_ACCOUNTS: &[&str] = &["sleep", "bar/other", "foo/sleep"];
const TRUST_DOMAINS: &[&str] = &["cluster.local", "eu.example", "*.local"];
const PATHS: &[&str] = &["/a", "/a/*", "/b", "*", "/a/{*}"];
const IPS: &[&str] = &["10.0.0.0/24", "10.0.1.1"];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(pool, 1..=pool.len().min(2))
}

fn source() -> impl Strategy<Value = Value> {
    prop_oneof![
        pick(PRINCIPALS).prop_map(|v| json!({"principals": v})),
        pick(PRINCIPALS).prop_map(|v| json!({"notPrincipals": v})),
        pick(NAMESPACES).prop_map(|v| json!({"namespaces": v})),
        pick(NAMESPACES).prop_map(|v| json!({"notNamespaces": v})),
        pick(SERVICE_ACCOUNTS).prop_map(|v| json!({"serviceAccounts": v})),
        pick(TRUST_DOMAINS).prop_map(|v| json!({"trustDomains": v})),
        pick(IPS).prop_map(|v| json!({"ipBlocks": v})),
        (pick(NAMESPACES), pick(IPS)).prop_map(|(n, i)| json!({"namespaces": n, "notIpBlocks": i})),
    ]
}

fn operation() -> impl Strategy<Value = Value> {
    prop_oneof![
        pick(PATHS).prop_map(|v| json!({"paths": v})),
        pick(PATHS).prop_map(|v| json!({"notPaths": v})),
        pick(&["GET", "POST"]).prop_map(|v| json!({"methods": v})),
        pick(&["8080", "9090"]).prop_map(|v| json!({"ports": v})),
        (pick(&["8080", "9090"]), pick(PATHS)).prop_map(|(p, q)| json!({"ports": p, "paths": q})),
    ]
}

fn condition() -> impl Strategy<Value = Value> {
    prop_oneof![
        pick(&["a", "b*"]).prop_map(|v| json!({"key": "request.headers[x]", "values": v})),
        pick(IPS).prop_map(|v| json!({"key": "source.ip", "notValues": v})),
        pick(NAMESPACES).prop_map(|v| json!({"key": "source.namespace", "values": v})),
        pick(PRINCIPALS).prop_map(|v| json!({"key": "source.principal", "notValues": v})),
        pick(&["8080"]).prop_map(|v| json!({"key": "destination.port", "values": v})),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec(source(), 1..=2)),
        proptest::option::of(proptest::collection::vec(operation(), 1..=2)),
        proptest::collection::vec(condition(), 0..=1),
    )
        .prop_map(|(from, to, when)| {
            let mut r = json!({});
            if let Some(f) = from {
                r["from"] = Value::Array(f.into_iter().map(|s| json!({"source": s})).collect());
            }
            if let Some(t) = to {
                r["to"] = Value::Array(t.into_iter().map(|o| json!({"operation": o})).collect());
            }
            if !when.is_empty() {
                r["when"] = Value::Array(when);
            }
            r
        })
}

#[derive(Debug, Clone)]
struct Gen {
    action: &'static str,
    ns: &'static str,
    selector: Option<&'static str>,
    dry_run: bool,
    rules: Option<Vec<Value>>,
}

fn policy_gen() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![Just("ALLOW"), Just("DENY"), Just("AUDIT"), Just("CUSTOM")],
        prop_oneof![Just("foo"), Just("istio-system"), Just("bar")],
        proptest::option::of(prop_oneof![Just("svc"), Just("other")]),
        proptest::bool::weighted(0.15),
        proptest::option::weighted(0.9, proptest::collection::vec(rule(), 0..=3)),
    )
        .prop_map(|(action, ns, selector, dry_run, rules)| Gen {
            action,
            ns,
            selector,
            dry_run,
            rules,
        })
}

fn build(g: &Gen, name: &str) -> AuthorizationPolicy {
    let mut spec = json!({"action": g.action});
    if let Some(s) = g.selector {
        spec["selector"] = json!({"matchLabels": {"app": s}});
    }
    if g.action == "CUSTOM" {
        spec["provider"] = json!({"name": "ext"});
    }
    match (&g.rules, g.action) {
        (Some(r), _) => spec["rules"] = Value::Array(r.clone()),
        // DENY/CUSTOM without rules are invalid input; give them the empty rule.
        (None, "DENY" | "CUSTOM") => spec["rules"] = json!([{}]),
        (None, _) => {}
    }
    let mut meta = json!({"name": name, "namespace": g.ns});
    if g.dry_run {
        meta["annotations"] = json!({"istio.io/dry-run": "true"});
    }
    ap_meta(meta, spec)
}

fn request() -> impl Strategy<Value = Request> {
    (
        proptest::option::of(proptest::sample::select(vec![
            SLEEP,
            OTHER,
            "eu.example/ns/foo/sa/sleep",
            "cluster.local/ns/bbb/sa/x",
        ])),
        proptest::bool::ANY,
        proptest::sample::select(vec!["/a", "/a/x", "/b", "/c", "/a/../b", "/a%2fb"]),
        proptest::sample::select(vec!["GET", "POST"]),
        proptest::sample::select(vec![8080u16, 9090]),
        proptest::sample::select(vec!["10.0.0.1", "10.0.1.1"]),
        proptest::option::of(proptest::sample::select(vec!["a", "bx"])),
    )
        .prop_map(|(peer, is_http, path, method, port, src, header)| {
            let mut r = if is_http {
                http(peer, method, path)
            } else {
                tcp(peer)
            };
            r = r.port(port).src(src);
            if let (Some(h), true) = (header, is_http) {
                r = r.header("x", h);
            }
            r
        })
}

fn named(gens: &[Gen]) -> Vec<AuthorizationPolicy> {
    gens.iter()
        .enumerate()
        .map(|(i, g)| build(g, &format!("p{i}")))
        .collect()
}

const WL: &[(&str, &str)] = &[("app", "svc")];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// "Any **DENY** policy matches → deny": if one enforced DENY (or CUSTOM) policy attached to
    /// the workload denies the request on its own, the whole set denies it.
    #[test]
    fn a_matching_deny_always_wins(gens in proptest::collection::vec(policy_gen(), 0..6), req in request()) {
        let set = named(&gens);
        let all = decide(&set, "foo", WL, &req);
        for p in &set {
            let alone = decide(std::slice::from_ref(p), "foo", WL, &req);
            let is_deny = matches!(p.spec.action, trustmesh_core::model::security::Action::Deny | trustmesh_core::model::security::Action::Custom);
            if is_deny && alone.outcome == Outcome::Deny {
                prop_assert!(!all.allowed, "DENY {} matched alone but the set allowed: {all:?}", p.metadata.name);
            }
        }
    }

    /// "3. **No ALLOW policy applies to the workload** → allow. 4. Any ALLOW policy matches →
    /// allow": adding an ALLOW can only flip allow → deny when it is the first ALLOW.
    #[test]
    fn adding_an_allow_only_denies_when_it_is_the_first(
        gens in proptest::collection::vec(policy_gen(), 0..6),
        extra_rules in proptest::option::of(proptest::collection::vec(rule(), 0..=2)),
        extra_ns in prop_oneof![Just("foo"), Just("istio-system")],
        req in request(),
    ) {
        let set = named(&gens);
        let before = decide(&set, "foo", WL, &req);
        let extra = Gen { action: "ALLOW", ns: extra_ns, selector: None, dry_run: false, rules: extra_rules };
        let mut with = set.clone();
        with.push(build(&extra, "extra"));
        let after = decide(&with, "foo", WL, &req);
        if before.allowed && !after.allowed {
            prop_assert_eq!(&*before.reason, "no ALLOW policy applies to the workload",
                "allow turned into deny although an ALLOW already applied: {:?} → {:?}", before, after);
        }
        // A deny it turns into an allow is allowed by the added policy itself.
        if !before.allowed && after.allowed {
            let id = format!("{extra_ns}/extra");
            prop_assert_eq!(after.policy.as_deref(), Some(id.as_str()));
        }
    }

    /// "positive matchers (`principals`, `namespaces`, `serviceAccounts`, `source.principal`,
    /// `source.namespace`, `*`) → **never match**" on plaintext; "negative matchers ... →
    /// **always match**".
    #[test]
    fn plaintext_never_matches_a_positive_identity_matcher(
        field in proptest::sample::select(vec!["principals", "namespaces", "serviceAccounts", "trustDomains", "source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain"]),
        values in pick(&["*", "foo", "cluster.local/ns/foo/sa/sleep", "*/ns/foo/sa/*", "bar/other", "cluster.local", "*local", "f*"]),
        req in request(),
    ) {
        let mut req = req;
        req.peer = None;
        let rule = |negated: bool| -> Value {
            if field.starts_with("source.") {
                let k = if negated { "notValues" } else { "values" };
                json!({"when": [{"key": field, k: values}]})
            } else {
                let mut f = field.to_owned();
                if negated {
                    f = format!("not{}{}", &f[..1].to_uppercase(), &f[1..]);
                }
                json!({"from": [{"source": {f: values}}]})
            }
        };
        let allow = ap("foo", "allow", json!({"rules": [rule(false)]}));
        let d = decide(&[allow], "foo", WL, &req);
        prop_assert_ne!(d.outcome, Outcome::Allow, "a positive identity matcher matched plaintext: {:?}", d);
        let deny_not = ap("foo", "deny", json!({"action": "DENY", "rules": [rule(true)]}));
        let d = decide(&[deny_not], "foo", WL, &req);
        prop_assert_ne!(d.outcome, Outcome::Allow, "a negated identity matcher must match plaintext");
    }
}

/// Never-matching policies that push a workload's lists over the index threshold.
fn padding(action: &str, n: usize) -> Vec<AuthorizationPolicy> {
    (0..n)
        .map(|i| {
            let src = if i % 2 == 0 {
                json!({"principals": [format!("pad.example/ns/pad{i}/sa/x"), format!("pad.example/ns/pad/sa/{i}")]})
            } else {
                json!({"namespaces": [format!("pad-{i}")]})
            };
            let rules = if action == "DENY" {
                json!([{"from": [{"source": src}]}])
            } else {
                json!([{"from": [{"source": src}], "to": [{"operation": {"paths": ["/pad"]}}]}])
            };
            ap("foo", &format!("zz-pad-{action}-{i}"), json!({"action": action, "rules": rules}))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// The identity index (used from 16 policies of one action on) never changes a decision:
    /// the same set with 20 never-matching ALLOW, DENY and AUDIT policies added decides every
    /// request the same way and names the same policy and rule. An allow-all sorted last is
    /// in both sets, so every request names the first ALLOW that matches it.
    #[test]
    fn the_identity_index_never_changes_a_decision(
        gens in proptest::collection::vec(policy_gen(), 0..32),
        req in request(),
    ) {
        let mut set = named(&gens);
        set.push(ap("foo", "zzzz-allow-all", json!({"rules": [{}]})));
        let before = decide(&set, "foo", WL, &req);
        let mut padded = set.clone();
        padded.extend(padding("ALLOW", 20));
        padded.extend(padding("DENY", 20));
        padded.extend(padding("AUDIT", 20));
        let after = decide(&padded, "foo", WL, &req);
        prop_assert_eq!(before.allowed, after.allowed, "{:?} vs {:?}", before, after);
        prop_assert_eq!(&before.policy, &after.policy);
        prop_assert_eq!(&before.rule, &after.rule);
        prop_assert_eq!(&before.audit, &after.audit);
    }
}
