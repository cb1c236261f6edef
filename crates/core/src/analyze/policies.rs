//! Selectors and principal spelling: TM0101 (a selector selects nothing), TM0103/TM0104
//! (principals that never match), TM0115 (principals of trust domains without roots). The
//! per-rule checks run from here live in `tcp.rs` (TM0102) and `plaintext.rs` (TM0105,
//! TM0111, TM0116).

use std::collections::BTreeSet;

use super::{Code, Cx, Finding, On, Severity, has_target_ref, is_dry_run, plaintext, tcp};
use crate::model::security::{Action, Rule};
use crate::model::{AuthorizationPolicy, Kind};
use crate::snapshot::Sourced;

pub(super) fn check(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    selectors(cx, out);
    for ap in cx.snap.authorization_policies() {
        principal_spelling(cx, ap, out);
        if has_target_ref(ap) || is_dry_run(ap) {
            // Not enforced by a sidecar: validation already says so for targetRef; a
            // dry-run policy changes no decision.
            continue;
        }
        for (ri, rule) in ap.spec.rules().iter().enumerate() {
            match ap.spec.action {
                Action::Deny => {
                    tcp::deny_http_only_on_tcp(cx, ap, ri, rule, out);
                    plaintext::deny_bypassed_by_plaintext(cx, ap, ri, rule, out);
                }
                Action::Allow => {
                    plaintext::allow_negation_matches_plaintext(cx, ap, ri, rule, out);
                    plaintext::broad_allow(cx, ap, ri, rule, out);
                }
                Action::Audit | Action::Custom => {}
            }
        }
    }
}

/// TM0101. "`selector.matchLabels` must be a subset of the workload's labels"; AP selectors
/// in the root namespace match "workloads in every namespace"; a PeerAuthentication
/// "Workload-level: non-root namespace, non-empty selector whose labels ⊆ workload labels";
/// a DestinationRule `workloadSelector` picks client workloads in its namespace.
fn selectors(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let snap = cx.snap;
    let none_in = |ns: Option<&str>, sel: &crate::model::LabelSelector| {
        snap.select_workloads(ns, sel).next().is_none()
    };
    for ap in snap.authorization_policies() {
        let ns = ap.metadata.namespace_str();
        let Some(sel) = ap
            .spec
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
        else {
            continue;
        };
        if has_target_ref(ap) {
            continue;
        }
        let scope = (ns != cx.root()).then_some(ns);
        if none_in(scope, sel) {
            let where_ =
                scope.map_or_else(|| "any namespace".to_owned(), |n| format!("namespace {n}"));
            On::new(Kind::AuthorizationPolicy, ap, out).push(
                Code::SelectorMatchesNothing,
                Severity::Warning,
                Some("spec.selector".into()),
                format!(
                    "selector {} selects no workload in {where_}: the {} policy has no effect",
                    labels(&sel.match_labels),
                    ap.spec.action.as_str()
                ),
                "fix spec.selector.matchLabels to the labels of the WorkloadEntries it is meant for, or delete the policy",
            );
        }
    }
    for pa in snap.peer_authentications() {
        let ns = pa.metadata.namespace_str();
        let Some(sel) = pa
            .spec
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
        else {
            continue;
        };
        // Root-namespace selector policies are ignored altogether; validation says so.
        if ns == cx.root() {
            continue;
        }
        if none_in(Some(ns), sel) {
            On::new(Kind::PeerAuthentication, pa, out).push(
                Code::SelectorMatchesNothing,
                Severity::Warning,
                Some("spec.selector".into()),
                format!(
                    "selector {} selects no workload in namespace {ns}: the mode it sets applies nowhere",
                    labels(&sel.match_labels)
                ),
                "fix spec.selector.matchLabels to the labels of the WorkloadEntries it is meant for, or delete the policy",
            );
        }
    }
    for dr in snap.destination_rules() {
        let ns = dr.metadata.namespace_str();
        let Some(sel) = dr
            .spec
            .workload_selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
        else {
            continue;
        };
        if none_in(Some(ns), sel) {
            On::new(Kind::DestinationRule, dr, out).push(
                Code::SelectorMatchesNothing,
                Severity::Warning,
                Some("spec.workloadSelector".into()),
                format!(
                    "workloadSelector {} selects no client workload in namespace {ns}: the rule applies to no caller",
                    labels(&sel.match_labels)
                ),
                "fix spec.workloadSelector.matchLabels, or remove it to apply the rule to every client",
            );
        }
    }
    for se in snap.service_entries() {
        let Some(sel) = &se.spec.workload_selector else {
            continue;
        };
        if snap.service_workloads(se).next().is_none() {
            On::new(Kind::ServiceEntry, se, out).push(
                Code::SelectorMatchesNothing,
                Severity::Warning,
                Some("spec.workloadSelector".into()),
                format!(
                    "workloadSelector {} selects no WorkloadEntry in namespace {}: the service has no endpoints",
                    labels(&sel.labels),
                    se.metadata.namespace_str()
                ),
                "fix spec.workloadSelector.labels to the labels of the service's WorkloadEntries",
            );
        }
    }
}

fn labels(m: &std::collections::BTreeMap<String, String>) -> String {
    let v: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", v.join(","))
}

/// Every principal-valued entry of a rule: field path, value, and whether it is a negation.
fn principal_values(ri: usize, rule: &Rule) -> Vec<(String, &str, bool)> {
    let mut v = Vec::new();
    for (fi, from) in rule.from.iter().flatten().enumerate() {
        let Some(s) = &from.source else { continue };
        for (name, values, neg) in [
            ("principals", &s.principals, false),
            ("notPrincipals", &s.not_principals, true),
        ] {
            for (i, p) in values.iter().enumerate() {
                v.push((
                    format!("spec.rules[{ri}].from[{fi}].source.{name}[{i}]"),
                    p.as_str(),
                    neg,
                ));
            }
        }
    }
    for (wi, c) in rule.when.iter().enumerate() {
        if c.key != "source.principal" {
            continue;
        }
        for (name, values, neg) in [
            ("values", &c.values, false),
            ("notValues", &c.not_values, true),
        ] {
            for (i, p) in values.iter().enumerate() {
                v.push((
                    format!("spec.rules[{ri}].when[{wi}].{name}[{i}]"),
                    p.as_str(),
                    neg,
                ));
            }
        }
    }
    v
}

/// A value that can never match makes a positive ALLOW or a negative DENY narrower (some
/// traffic is refused), and a negative ALLOW or a positive DENY broader (some traffic the
/// author meant to stop gets through): the latter is an error.
fn never_matching_severity(ap: &AuthorizationPolicy, negative: bool) -> (Severity, &'static str) {
    let widens = match ap.spec.action {
        Action::Allow => negative,
        Action::Deny => !negative,
        Action::Audit | Action::Custom => false,
    };
    if widens && !is_dry_run(ap) && !has_target_ref(ap) {
        let what = if ap.spec.action == Action::Allow {
            "the exclusion excludes nobody, so the ALLOW admits every peer it meant to exclude"
        } else {
            "the DENY never fires for it, so that peer is not denied"
        };
        (Severity::Error, what)
    } else {
        let what = match (ap.spec.action, negative) {
            (Action::Deny, true) => {
                "the exclusion excludes nobody, so the DENY denies that peer too"
            }
            _ => "no peer ever matches it",
        };
        (Severity::Warning, what)
    }
}

/// TM0103, TM0104, TM0115.
fn principal_spelling(cx: &Cx<'_>, ap: &Sourced<AuthorizationPolicy>, out: &mut Vec<Finding>) {
    let known: BTreeSet<&str> = cx
        .snap
        .mesh()
        .known_trust_domains()
        .into_iter()
        .map(|t| t.as_str())
        .collect();
    for (ri, rule) in ap.spec.rules().iter().enumerate() {
        for (field, value, negative) in principal_values(ri, rule) {
            // "In AP **principals are written without `spiffe://`** ... A policy value that
            // itself starts with `spiffe://` therefore never matches (`spiffe://spiffe://...`)."
            if let Some(rest) = value.strip_prefix("spiffe://") {
                let (severity, effect) = never_matching_severity(ap, negative);
                On::new(Kind::AuthorizationPolicy, ap, out).push(
                    Code::PrincipalWithScheme,
                    severity,
                    Some(field),
                    format!(
                        "principal {value:?} starts with spiffe://; principals are compared without the scheme, so it never matches: {effect}"
                    ),
                    format!("write the principal without the scheme: {rest:?}"),
                );
                continue;
            }
            // "Only a **single leading or trailing** `*` is special. A `*` elsewhere is a
            // literal for principals" (§3.4); Istio tests `*` first, then a leading, then a
            // trailing star, so `*/ns/x/sa/*` is the suffix `/ns/x/sa/*` with a literal star.
            if value != "*" {
                let rest = value
                    .strip_prefix('*')
                    .or_else(|| value.strip_suffix('*'))
                    .unwrap_or(value);
                if rest.contains('*') {
                    let (severity, effect) = never_matching_severity(ap, negative);
                    On::new(Kind::AuthorizationPolicy, ap, out).push(
                        Code::PrincipalInnerWildcard,
                        severity,
                        Some(field),
                        format!(
                            "principal {value:?} has a * that is neither its first nor its last character; Istio matches it literally and no SPIFFE ID contains *: {effect}"
                        ),
                        "use one leading or trailing * only (e.g. \"td/ns/prod/sa/*\"), or list the principals, or use namespaces/serviceAccounts",
                    );
                    continue;
                }
            }
            // "Values not of 5 parts (`*`, `*/sa/x`, `spiffe://...`) are kept verbatim";
            // exact 5-part values name a trust domain, and `cluster.local` always means ours.
            let parts: Vec<&str> = value.split('/').collect();
            if parts.len() == 5
                && !parts[0].contains('*')
                && parts[0] != "cluster.local"
                && !known.contains(parts[0])
            {
                On::new(Kind::AuthorizationPolicy, ap, out).push(
                    Code::UnknownTrustDomain,
                    Severity::Warning,
                    Some(field),
                    format!(
                        "trust domain {} is neither the mesh's ({}), an alias, a network's nor one with caCertificates: no peer from it can authenticate, so {value:?} never matches",
                        parts[0],
                        cx.snap.mesh().trust_domain
                    ),
                    format!(
                        "import that region's bundle (MeshConfig spec.caCertificates with trustDomains: [{}]) or correct the trust domain",
                        parts[0]
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::super::tests::{ap, ns, pa, we, with};
    use super::*;

    #[test]
    fn tm0101_selectors_that_select_no_workload() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap(
                "prod",
                "typo",
                json!({"selector": {"matchLabels": {"app": "order"}}}),
            ),
            ap(
                "prod",
                "ok",
                json!({"selector": {"matchLabels": {"app": "orders"}}}),
            ),
            // Root namespace: matched against every namespace.
            ap(
                "istio-system",
                "root-ok",
                json!({"selector": {"matchLabels": {"app": "orders"}}}),
            ),
            pa(
                "prod",
                "pa-typo",
                json!({"selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "STRICT"}}),
            ),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "dr", "namespace": "prod"},
                "spec": {"host": "orders", "workloadSelector": {"matchLabels": {"app": "nobody"}}}}),
        ];
        let f = with(Code::SelectorMatchesNothing, docs);
        let got: Vec<&str> = f.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(
            got,
            [
                "AuthorizationPolicy prod/typo",
                "PeerAuthentication prod/pa-typo",
                "DestinationRule prod/dr"
            ]
        );
        assert!(
            f[0].message
                .contains("selects no workload in namespace prod"),
            "{}",
            f[0].message
        );
        assert_eq!(f[0].field.as_deref(), Some("spec.selector"));
        assert!(f.iter().all(|f| f.severity == Severity::Warning));
    }

    #[test]
    fn tm0103_spiffe_scheme_in_principals_severity_follows_the_effect() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            // ALLOW principals: narrower (nobody admitted by it).
            ap(
                "prod",
                "allow",
                json!({"rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/prod/sa/gw"]}}]}]}),
            ),
            // DENY principals: the deny never fires: broader.
            ap(
                "prod",
                "deny",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/evil/sa/x"]}}]}]}),
            ),
            // ALLOW notPrincipals via `when`: the exclusion excludes nobody: broader.
            ap(
                "prod",
                "allow-not",
                json!({"rules": [{"from": [{"source": {"namespaces": ["*"]}}], "when": [{"key": "source.principal", "notValues": ["spiffe://cluster.local/ns/evil/sa/x"]}]}]}),
            ),
        ];
        let f = with(Code::PrincipalWithScheme, docs);
        let got: Vec<(&str, Severity)> = f
            .iter()
            .map(|f| (f.resource.as_str(), f.severity))
            .collect();
        assert_eq!(
            got,
            [
                ("AuthorizationPolicy prod/allow", Severity::Warning),
                ("AuthorizationPolicy prod/deny", Severity::Error),
                ("AuthorizationPolicy prod/allow-not", Severity::Error),
            ]
        );
        assert_eq!(
            f[0].field.as_deref(),
            Some("spec.rules[0].from[0].source.principals[0]")
        );
        assert_eq!(
            f[0].fix,
            "write the principal without the scheme: \"cluster.local/ns/prod/sa/gw\""
        );
        assert_eq!(
            f[2].field.as_deref(),
            Some("spec.rules[0].when[0].notValues[0]")
        );
    }

    #[test]
    fn tm0104_inner_star_is_a_literal() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap(
                "prod",
                "p",
                json!({"rules": [{"from": [{"source": {"principals": [
                    "cluster.local/ns/*/sa/gw",    // literal
                    "*/ns/prod/sa/*",              // suffix "/ns/prod/sa/*": literal trailing star
                    "cluster.local/ns/prod/sa/*",  // prefix: fine
                    "*/sa/gw",                     // suffix: fine
                    "*"                            // presence: fine
                ]}}]}]}),
            ),
        ];
        let f = with(Code::PrincipalInnerWildcard, docs);
        let fields: Vec<&str> = f.iter().map(|f| f.field.as_deref().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].from[0].source.principals[0]",
                "spec.rules[0].from[0].source.principals[1]"
            ]
        );
        assert!(f.iter().all(|f| f.severity == Severity::Warning));
        assert!(
            f[0].message.contains("matches it literally"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn tm0115_principals_from_trust_domains_without_roots() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            ap(
                "prod",
                "p",
                json!({"rules": [{"from": [{"source": {"principals": [
                    "eu.example/ns/prod/sa/gw",      // unknown
                    "cluster.local/ns/prod/sa/gw",   // always ours
                    "eu.example/*",                  // not 5 parts: "kept verbatim"
                    "eu.example/ns/prod/sa/*"        // 5 parts: a prefix within eu.example
                ]}}]}]}),
            ),
        ];
        let f = with(Code::UnknownTrustDomain, docs);
        let fields: Vec<&str> = f.iter().map(|f| f.field.as_deref().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].from[0].source.principals[0]",
                "spec.rules[0].from[0].source.principals[3]"
            ]
        );
        // With roots for eu.example, nothing.
        let docs = vec![
            json!({"apiVersion": "trustmesh.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "m"},
                "spec": {"networks": {"eu": {"trustDomain": "eu.example"}}}}),
            ap(
                "prod",
                "p",
                json!({"rules": [{"from": [{"source": {"principals": ["eu.example/ns/prod/sa/gw"]}}]}]}),
            ),
        ];
        assert!(with(Code::UnknownTrustDomain, docs).is_empty());
    }
}
