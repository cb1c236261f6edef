//! Who reaches a rule: plaintext peers carry no identity, so "positive matchers ... →
//! **never match**" and "negative matchers ... → **always match**" (digest §3.8), which
//! makes TM0105 (ALLOW negations) and TM0116 (DENY on identities) exploitable where a port
//! accepts plaintext; and TM0111, wildcards that admit more than least privilege needs.

use std::collections::BTreeSet;

use super::tcp::{PortScope, op_http_only, rule_has_http_only};
use super::{
    Code, Cx, Finding, On, Proto, Severity, accepts_plaintext, at, is_dry_run, list, mode_why,
};
use crate::model::security::{Action, Rule, Source};
use crate::model::{AuthorizationPolicy, Kind};
use crate::snapshot::Sourced;

/// The identity matchers that need mTLS: "`principals`, `namespaces`, `serviceAccounts`,
/// `source.principal`, `source.namespace`" and trust domains (§3.5, §3.8).
const IDENTITY_KEYS: [&str; 4] = [
    "source.principal",
    "source.namespace",
    "source.serviceAccount",
    "source.trustDomain",
];

fn positive_identity(s: &Source) -> bool {
    !s.principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.service_accounts.is_empty()
        || !s.trust_domains.is_empty()
}

fn negative_identity(s: &Source) -> Vec<&'static str> {
    [
        ("notPrincipals", &s.not_principals),
        ("notNamespaces", &s.not_namespaces),
        ("notServiceAccounts", &s.not_service_accounts),
        ("notTrustDomains", &s.not_trust_domains),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, _)| n)
    .collect()
}

fn when_positive_identity(rule: &Rule) -> bool {
    rule.when
        .iter()
        .any(|c| IDENTITY_KEYS.contains(&c.key.as_str()) && !c.values.is_empty())
}

/// Whether a DENY rule denies every plaintext connection on `port`: a rule whose only
/// source is `notPrincipals: ["*"]` or `notNamespaces: ["*"]` ("DENY add rule
/// `notNamespaces: ["*"]` or `notPrincipals: ["*"]` (= "deny all plaintext")", §3.8) and
/// whose operations restrict nothing but ports.
fn denies_all_plaintext(rule: &Rule, port: Option<u16>) -> bool {
    let Some(from) = &rule.from else { return false };
    let plaintext_source = from.iter().filter_map(|f| f.source.as_ref()).any(|s| {
        let star = |v: &Vec<String>| v.iter().any(|x| x == "*");
        let only = Source {
            not_principals: s.not_principals.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ..Source::default()
        };
        *s == only && (star(&s.not_principals) || star(&s.not_namespaces))
    });
    let ops_ports_only = rule
        .to
        .iter()
        .flatten()
        .filter_map(|t| t.operation.as_ref())
        .all(|o| op_http_only(o).is_empty());
    plaintext_source
        && ops_ports_only
        && rule.when.iter().all(|c| c.key == "destination.port")
        && PortScope::new(rule, None).covers(port)
}

/// (workload, port, why) where plaintext reaches the rule: the port accepts plaintext and no
/// enforced DENY rule denies all plaintext there.
fn plaintext_reachable(
    cx: &Cx<'_>,
    ap: &AuthorizationPolicy,
    scope: &PortScope,
    skip_tcp: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    for i in cx.policy_workloads(ap) {
        let w = &cx.snap.workloads()[i];
        for port in cx.ports_of(i) {
            if !scope.covers(port) {
                continue;
            }
            // "ALLOW: a rule containing *any* HTTP-only attribute ... is **dropped entirely**"
            // on TCP ports.
            if skip_tcp
                && port
                    .and_then(|p| cx.protocols[i].get(&p))
                    .is_some_and(|pp| pp.kind == Proto::Tcp)
            {
                continue;
            }
            let d = cx.mode(i, port);
            if !accepts_plaintext(d.mode) {
                continue;
            }
            let denied = cx.snap.authorization_policies().iter().any(|other| {
                other.spec.action == Action::Deny
                    && !is_dry_run(other)
                    && super::policy_applies(other, w, cx.root())
                    && other
                        .spec
                        .rules()
                        .iter()
                        .any(|r| denies_all_plaintext(r, port))
            });
            if !denied {
                v.push(format!("{} ({})", at(w, port), mode_why(d)));
            }
        }
    }
    v
}

/// TM0105. "negative matchers (`notPrincipals`, `notNamespaces`, `notValues` of those keys)
/// → **always match** (the empty value is "not in" the list)"; "ALLOW `notNamespaces:
/// ["foo"]` → plaintext request from pods in `foo` **allowed**" (§3.8,
/// ISTIO-SECURITY-2021-004). Exploitable only where plaintext is accepted (§2.1).
pub(super) fn allow_negation_matches_plaintext(
    cx: &Cx<'_>,
    ap: &Sourced<AuthorizationPolicy>,
    ri: usize,
    rule: &Rule,
    out: &mut Vec<Finding>,
) {
    // Fields are AND'ed: a positive identity matcher anywhere in the `when`s, or in a
    // source, keeps plaintext out of that rule or source.
    if when_positive_identity(rule) {
        return;
    }
    let mut negations: Vec<(String, &str)> = Vec::new();
    let mut plaintext_source = rule.from.is_none();
    for (fi, from) in rule.from.iter().flatten().enumerate() {
        let Some(s) = &from.source else { continue };
        if positive_identity(s) {
            continue;
        }
        plaintext_source = true;
        for n in negative_identity(s) {
            negations.push((format!("spec.rules[{ri}].from[{fi}].source.{n}"), n));
        }
    }
    if !plaintext_source {
        return;
    }
    for (wi, c) in rule.when.iter().enumerate() {
        if IDENTITY_KEYS.contains(&c.key.as_str()) && !c.not_values.is_empty() {
            negations.push((
                format!("spec.rules[{ri}].when[{wi}].notValues"),
                c.key.as_str(),
            ));
        }
    }
    let Some((field, _)) = negations.first().cloned() else {
        return;
    };
    let names: BTreeSet<&str> = negations.iter().map(|(_, n)| *n).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let scope = PortScope::new(rule, None);
    let reachable = plaintext_reachable(cx, ap, &scope, rule_has_http_only(rule));
    let head = format!(
        "ALLOW rule {ri} matches plaintext peers: {} is satisfied by a connection without a peer identity (ISTIO-SECURITY-2021-004)",
        names.join(", ")
    );
    let (severity, message) = if reachable.is_empty() {
        (
            Severity::Warning,
            format!(
                "{head}; no port it covers takes plaintext today (STRICT, or a DENY refuses plaintext), so only a future PERMISSIVE or DISABLE port would expose it"
            ),
        )
    } else {
        (
            Severity::Error,
            format!("{head}, and plaintext is accepted on {}", list(&reachable)),
        )
    };
    On::new(Kind::AuthorizationPolicy, ap, out).push(
        Code::AllowNegativeMatchesPlaintext,
        severity,
        Some(field),
        message,
        "add namespaces: [\"*\"] (or principals: [\"*\"]) to the same source so only authenticated peers match",
    );
}

/// TM0116. "positive matchers (`principals`, `namespaces`, `serviceAccounts`,
/// `source.principal`, `source.namespace`, `*`) → **never match**"; "DENY `namespaces:
/// ["foo"]` → plaintext from `foo` **not denied**" (§3.8).
pub(super) fn deny_bypassed_by_plaintext(
    cx: &Cx<'_>,
    ap: &Sourced<AuthorizationPolicy>,
    ri: usize,
    rule: &Rule,
    out: &mut Vec<Finding>,
) {
    let sources: Vec<&Source> = rule
        .from
        .iter()
        .flatten()
        .filter_map(|f| f.source.as_ref())
        .collect();
    let from_needs_identity = rule.from.is_some() && sources.iter().all(|s| positive_identity(s));
    if !from_needs_identity && !when_positive_identity(rule) {
        return;
    }
    let reachable = plaintext_reachable(cx, ap, &PortScope::new(rule, None), false);
    if reachable.is_empty() {
        return;
    }
    On::new(Kind::AuthorizationPolicy, ap, out).push(
        Code::DenyBypassedByPlaintext,
        Severity::Error,
        Some(format!("spec.rules[{ri}]")),
        format!(
            "DENY rule {ri} matches only authenticated peers (principals/namespaces/serviceAccounts), so a plaintext connection, which carries no identity, is never denied by it; plaintext is accepted on {}",
            list(&reachable)
        ),
        "make those ports STRICT, or add a DENY rule `from: [{source: {notPrincipals: [\"*\"]}}]` that denies all plaintext",
    );
}

/// A principal that admits any authenticated peer, or any peer of a whole trust domain:
/// `*`, `<td>/*`, `<td>/ns/*`.
fn broad_principal(p: &str) -> bool {
    p == "*"
        || p.strip_suffix("/*").is_some_and(|head| {
            let parts: Vec<&str> = head.split('/').collect();
            parts.len() == 1 || (parts.len() == 2 && parts[1] == "ns")
        })
}

/// A source whose only constraint is a wildcard identity.
fn broad_source(s: &Source) -> bool {
    let only = Source {
        principals: s.principals.clone(),
        namespaces: s.namespaces.clone(),
        ..Source::default()
    };
    *s == only
        && (!s.principals.is_empty() || !s.namespaces.is_empty())
        && s.principals.iter().all(|p| broad_principal(p))
        && s.namespaces.iter().all(|n| n == "*")
}

/// TM0111. Least privilege: `*` means "any authenticated peer, never anyone" (§7.3), and a
/// rule without `from` matches every caller, plaintext ones included where the port is
/// PERMISSIVE. Info when every operation narrows the request to paths or methods.
pub(super) fn broad_allow(
    cx: &Cx<'_>,
    ap: &Sourced<AuthorizationPolicy>,
    ri: usize,
    rule: &Rule,
    out: &mut Vec<Finding>,
) {
    if rule.when.iter().any(|c| {
        c.key.starts_with("source.")
            || c.key.starts_with("remote.")
            || c.key.starts_with("request.auth.")
    }) {
        return;
    }
    let narrowed = rule.to.as_ref().is_some_and(|to| {
        to.iter()
            .filter_map(|t| t.operation.as_ref())
            .all(|o| !o.paths.is_empty() || !o.methods.is_empty())
    });
    let severity = if narrowed {
        Severity::Info
    } else {
        Severity::Warning
    };
    let what = if narrowed {
        "limited to the paths/methods of its `to`"
    } else {
        "to every path and method of the ports it covers"
    };
    let workloads = cx.policy_workloads(ap);
    match &rule.from {
        None => {
            let prod: Vec<usize> = workloads
                .iter()
                .copied()
                .filter(|&i| super::is_production(&cx.snap.workloads()[i].namespace))
                .collect();
            if prod.is_empty() {
                return;
            }
            let scope = PortScope::new(rule, None);
            let plaintext = plaintext_reachable(cx, ap, &scope, rule_has_http_only(rule));
            let who = if plaintext.is_empty() {
                "any authenticated peer of the mesh".to_owned()
            } else {
                format!(
                    "any caller, plaintext ones included on {}",
                    list(&plaintext)
                )
            };
            On::new(Kind::AuthorizationPolicy, ap, out).push(
                Code::BroadAllow,
                severity,
                Some(format!("spec.rules[{ri}]")),
                format!("ALLOW rule {ri} has no `from`, in production: it admits {who}, {what}"),
                "add `from:` with the principals (or namespaces) that need this access",
            );
        }
        Some(from) => {
            let Some(fi) = from
                .iter()
                .position(|f| f.source.as_ref().is_some_and(broad_source))
            else {
                return;
            };
            if workloads.is_empty() {
                return;
            }
            On::new(Kind::AuthorizationPolicy, ap, out).push(
                Code::BroadAllow,
                severity,
                Some(format!("spec.rules[{ri}].from[{fi}].source")),
                format!(
                    "ALLOW rule {ri} admits any authenticated peer (a wildcard principal or namespace is its only source constraint), {what}"
                ),
                "name the principals (td/ns/<ns>/sa/<sa>) or namespaces that need this access",
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::super::tests::{ap, ns, pa, strict_mesh, we, with};
    use super::*;

    #[test]
    fn tm0105_allow_negations_match_plaintext_error_where_plaintext_is_accepted() {
        let allow = json!({"selector": {"matchLabels": {"app": "orders"}},
            "rules": [{"from": [{"source": {"notNamespaces": ["untrusted"]}}], "to": [{"operation": {"ports": ["8080"]}}]}]});
        // PERMISSIVE (Istio's default): exploitable.
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "not-untrusted", allow.clone()),
        ];
        let f = with(Code::AllowNegativeMatchesPlaintext, docs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(
            f[0].field.as_deref(),
            Some("spec.rules[0].from[0].source.notNamespaces")
        );
        assert!(
            f[0].message
                .contains("prod/orders:8080 (PERMISSIVE (no PeerAuthentication applies))"),
            "{}",
            f[0].message
        );
        // STRICT everywhere: a warning.
        let docs = vec![
            ns("prod", true),
            strict_mesh(),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "not-untrusted", allow.clone()),
        ];
        let f = with(Code::AllowNegativeMatchesPlaintext, docs);
        assert_eq!(f[0].severity, Severity::Warning);
        // "Mitigation idioms: ALLOW add `namespaces: ["*"]`": no finding.
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap(
                "prod",
                "fixed",
                json!({"rules": [{"from": [{"source": {"notNamespaces": ["untrusted"], "namespaces": ["*"]}}]}]}),
            ),
            // A positive identity condition in `when` also keeps plaintext out.
            ap(
                "prod",
                "fixed-when",
                json!({"rules": [{"from": [{"source": {"notPrincipals": ["a/ns/b/sa/c"]}}],
                "when": [{"key": "source.namespace", "values": ["prod"]}]}]}),
            ),
        ];
        assert!(with(Code::AllowNegativeMatchesPlaintext, docs).is_empty());
        // notValues on source.principal; a DENY-all-plaintext rule on the port makes it safe.
        let when = json!({"rules": [{"when": [{"key": "source.principal", "notValues": ["cluster.local/ns/x/sa/y"]}]}]});
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "when-not", when.clone()),
        ];
        let f = with(Code::AllowNegativeMatchesPlaintext, docs);
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(
            f[0].field.as_deref(),
            Some("spec.rules[0].when[0].notValues")
        );
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "when-not", when),
            ap(
                "prod",
                "deny-plaintext",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}),
            ),
        ];
        assert_eq!(
            with(Code::AllowNegativeMatchesPlaintext, docs)[0].severity,
            Severity::Warning
        );
    }

    #[test]
    fn tm0105_uses_port_level_modes() {
        // STRICT except 9090 DISABLE: a rule limited to 8080 is safe, one on 9090 is not.
        let docs = |port: &str| {
            vec![
                ns("prod", true),
                strict_mesh(),
                we(
                    "prod",
                    "orders",
                    "10.0.0.1",
                    json!({"http": 8080, "metrics": 9090}),
                ),
                pa(
                    "prod",
                    "metrics",
                    json!({"selector": {"matchLabels": {"app": "orders"}}, "portLevelMtls": {"9090": {"mode": "DISABLE"}}}),
                ),
                ap(
                    "prod",
                    "p",
                    json!({"rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/x/sa/y"]}}], "to": [{"operation": {"ports": [port]}}]}]}),
                ),
            ]
        };
        assert_eq!(
            with(Code::AllowNegativeMatchesPlaintext, docs("8080"))[0].severity,
            Severity::Warning
        );
        let f = with(Code::AllowNegativeMatchesPlaintext, docs("9090"));
        assert_eq!(f[0].severity, Severity::Error);
        assert!(
            f[0].message
                .contains("prod/orders:9090 (DISABLE by PeerAuthentication prod/metrics)"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn tm0111_broad_wildcards_and_rules_without_from_in_production() {
        let docs = vec![
            ns("production", true),
            ns("dev", true),
            strict_mesh(),
            we("production", "orders", "10.0.0.1", json!({"http": 8080})),
            we("dev", "tool", "10.0.0.2", json!({"http": 8080})),
            ap(
                "production",
                "any-peer",
                json!({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
            ),
            ap(
                "production",
                "health",
                json!({"rules": [{"from": [{"source": {"namespaces": ["*"]}}], "to": [{"operation": {"paths": ["/healthz"]}}]}]}),
            ),
            ap(
                "production",
                "no-from",
                json!({"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}),
            ),
            ap(
                "production",
                "whole-td",
                json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/*"]}}]}]}),
            ),
            // Not production: a rule without `from` is not reported there.
            ap("dev", "dev-open", json!({"rules": [{}]})),
            // Named principals are least privilege.
            ap(
                "production",
                "named",
                json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/production/sa/gw"]}}]}]}),
            ),
        ];
        let f = with(Code::BroadAllow, docs);
        let got: Vec<(&str, Severity)> = f
            .iter()
            .map(|f| (f.resource.as_str(), f.severity))
            .collect();
        assert_eq!(
            got,
            [
                ("AuthorizationPolicy production/any-peer", Severity::Warning),
                ("AuthorizationPolicy production/health", Severity::Info),
                ("AuthorizationPolicy production/no-from", Severity::Warning),
                ("AuthorizationPolicy production/whole-td", Severity::Warning),
            ]
        );
        assert!(
            f[2].message.contains("any authenticated peer of the mesh"),
            "{}",
            f[2].message
        );
    }

    #[test]
    fn tm0116_deny_on_identities_is_bypassed_by_plaintext() {
        let deny = json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["untrusted"]}}]}]});
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "deny-untrusted", deny.clone()),
        ];
        let f = with(Code::DenyBypassedByPlaintext, docs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(
            f[0].message.contains("prod/orders:8080"),
            "{}",
            f[0].message
        );
        // STRICT: plaintext never arrives; the idiomatic deny-plaintext rule also fixes it.
        let docs = vec![
            ns("prod", true),
            strict_mesh(),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "deny-untrusted", deny.clone()),
        ];
        assert!(with(Code::DenyBypassedByPlaintext, docs).is_empty());
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap("prod", "deny-untrusted", deny),
            ap(
                "prod",
                "deny-plaintext",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["*"]}}]}]}),
            ),
        ];
        assert!(with(Code::DenyBypassedByPlaintext, docs).is_empty());
    }

    #[test]
    fn dry_run_and_target_ref_policies_enforce_nothing() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "dry", "namespace": "prod", "annotations": {"istio.io/dry-run": "true"}},
                "spec": {"rules": [{"from": [{"source": {"notNamespaces": ["x"]}}]}]}}),
        ];
        assert!(with(Code::AllowNegativeMatchesPlaintext, docs).is_empty());
    }
}
