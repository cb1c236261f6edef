//! Admission rules for `PeerAuthentication` and `AuthorizationPolicy` (digest §2, §3.1, §3.5,
//! §3.7, §3.9, §3.11, §3.14; Istio `pkg/config/validation/validation.go` and the CRDs' CEL).

use super::{Ctx, ip_blocks, label_selector, no_empty_strings, parse_go_bool};
use crate::model::security::{Action, Condition, Operation, Source};
use crate::model::{AuthorizationPolicy, PeerAuthentication};

/// Istio's limit on rules per policy (CRD `maxItems: 512`).
pub const MAX_RULES: usize = 512;
/// Istio's limit on targetRefs (CRD `maxItems: 16`).
pub const MAX_TARGET_REFS: usize = 16;
/// Istio's limit on serviceAccounts (CRD `maxItems: 16`).
pub const MAX_SERVICE_ACCOUNTS: usize = 16;

pub(super) fn peer_authentication(pa: &PeerAuthentication, cx: &mut Ctx<'_>) {
    let spec = &pa.spec;
    if let Some(sel) = &spec.selector {
        label_selector(sel, "spec.selector", cx);
    }
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    // CRD CEL: "portLevelMtls requires selector".
    if !spec.port_level_mtls.is_empty() && !has_selector {
        cx.error("spec.portLevelMtls", "portLevelMtls requires selector");
    }
    // "portLevelMtls keys are workload ports ... port 1..65535".
    for port in spec.port_level_mtls.keys() {
        if !(1..=65535).contains(port) {
            cx.error(
                format!("spec.portLevelMtls.{port}"),
                format!("port {port} must be in the range 1..65535"),
            );
        }
    }
}

pub(super) fn authorization_policy(ap: &AuthorizationPolicy, cx: &mut Ctx<'_>) {
    let spec = &ap.spec;
    if let Some(sel) = &spec.selector {
        label_selector(sel, "spec.selector", cx);
    }
    // CRD CEL: "At most one of selector / targetRefs"; "only one of targetRefs or targetRef can be set".
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        cx.error(
            "spec.targetRefs",
            "only one of targetRefs or targetRef can be set",
        );
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        cx.error(
            "spec.selector",
            "only one of targetRefs or selector can be set",
        );
    }
    // "≤16 targetRefs".
    if spec.target_refs.len() > MAX_TARGET_REFS {
        cx.error(
            "spec.targetRefs",
            format!(
                "at most {MAX_TARGET_REFS} targetRefs are allowed, found {}",
                spec.target_refs.len()
            ),
        );
    }
    // "A sidecar ignores any policy that has targetRef(s)".
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        cx.warn(
            "spec.targetRefs",
            "policies with targetRef(s) are for gateways and waypoints; trustmesh proxies (sidecar semantics) ignore this policy",
        );
    }

    let rules = spec.rules();
    // "`action: DENY` without `rules` → error ("meaningless ... add an empty rule `{}`")".
    if spec.action == Action::Deny && rules.is_empty() {
        cx.error("spec.rules", "DENY action without rules is meaningless: it never matches; add an empty rule `{}` to deny everything");
    }
    // "CUSTOM without `rules` is rejected by validation."
    if spec.action == Action::Custom && rules.is_empty() {
        cx.error("spec.rules", "CUSTOM action without rules is meaningless");
    }
    // "`provider` only with CUSTOM".
    if spec.provider.is_some() && spec.action != Action::Custom {
        cx.error(
            "spec.provider",
            format!(
                "provider must only be used with the CUSTOM action, not {}",
                spec.action.as_str()
            ),
        );
    }
    if spec.action == Action::Custom {
        // "CUSTOM needs `provider.name` from MeshConfig extensionProviders".
        match &spec.provider {
            Some(p) if !p.name.is_empty() => {}
            _ => cx.error(
                "spec.provider.name",
                "CUSTOM action requires a provider name",
            ),
        }
        cx.error(
            "spec.action",
            "CUSTOM (external authorization) is not supported by trustmesh: there are no extensionProviders to delegate to",
        );
    }
    // "≤512 rules".
    if rules.len() > MAX_RULES {
        cx.error(
            "spec.rules",
            format!(
                "at most {MAX_RULES} rules are allowed, found {}",
                rules.len()
            ),
        );
    }
    if let Some(v) = ap.metadata.annotations.get("istio.io/dry-run")
        && parse_go_bool(v).is_none()
    {
        // "bad value → logged, treated as false" (digest §3.11).
        cx.warn(
            "metadata.annotations.istio.io/dry-run",
            format!(
                "{v:?} is not a boolean (strconv.ParseBool); the policy is enforced, not dry-run"
            ),
        );
    }

    for (ri, rule) in rules.iter().enumerate() {
        let rf = format!("spec.rules[{ri}]");
        // "`from: []`, `to: []` ... → error".
        if let Some(from) = &rule.from {
            if from.is_empty() {
                cx.error(format!("{rf}.from"), "`from` must not be empty");
            }
            for (fi, f) in from.iter().enumerate() {
                let field = format!("{rf}.from[{fi}].source");
                // "`from[].source: {}`/null → error".
                match &f.source {
                    None => cx.error(field, "`from.source` must not be nil"),
                    Some(s) if s.is_empty() => cx.error(field, "`from.source` must not be empty"),
                    Some(s) => source(s, &field, cx),
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                cx.error(format!("{rf}.to"), "`to` must not be empty");
            }
            for (ti, t) in to.iter().enumerate() {
                let field = format!("{rf}.to[{ti}].operation");
                // "`to[].operation: {}`/null → error".
                match &t.operation {
                    None => cx.error(field, "`to.operation` must not be nil"),
                    Some(o) if o.is_empty() => cx.error(field, "`to.operation` must not be empty"),
                    Some(o) => operation(o, &field, spec.action, cx),
                }
            }
        }
        for (wi, cond) in rule.when.iter().enumerate() {
            condition(cond, &format!("{rf}.when[{wi}]"), cx);
        }
    }
}

fn source(s: &Source, field: &str, cx: &mut Ctx<'_>) {
    for (name, values) in s.fields() {
        no_empty_strings(values, &format!("{field}.{name}"), cx);
    }
    // "serviceAccounts ... ≤16; cannot combine with principals/namespaces".
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_identity {
        cx.error(
            format!("{field}.serviceAccounts"),
            "cannot set serviceAccounts with namespaces or principals",
        );
    }
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            cx.error(
                format!("{field}.{name}"),
                format!(
                    "at most {MAX_SERVICE_ACCOUNTS} {name} are allowed, found {}",
                    values.len()
                ),
            );
        }
        // "`<ns>/<sa>` or `<sa>` ...; no wildcards".
        for (i, v) in values.iter().enumerate() {
            if v.contains('*') {
                cx.error(
                    format!("{field}.{name}[{i}]"),
                    format!("wildcards are not supported in {name}: {v:?}"),
                );
            } else if v.matches('/').count() > 1 {
                cx.error(
                    format!("{field}.{name}[{i}]"),
                    format!("{v:?} must be <namespace>/<serviceaccount> or <serviceaccount>"),
                );
            }
        }
    }
    // "A policy value that itself starts with `spiffe://` therefore never matches".
    for (name, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        for (i, v) in values.iter().enumerate() {
            if let Some(rest) = v.strip_prefix("spiffe://") {
                cx.warn(
                    format!("{field}.{name}[{i}]"),
                    format!("principals are written without spiffe:// ({rest:?}); this value never matches"),
                );
            }
        }
    }
    // "IPs/CIDRs must parse".
    ip_blocks(&s.ip_blocks, &format!("{field}.ipBlocks"), cx);
    ip_blocks(&s.not_ip_blocks, &format!("{field}.notIpBlocks"), cx);
    ip_blocks(&s.remote_ip_blocks, &format!("{field}.remoteIpBlocks"), cx);
    ip_blocks(
        &s.not_remote_ip_blocks,
        &format!("{field}.notRemoteIpBlocks"),
        cx,
    );
}

fn operation(o: &Operation, field: &str, action: Action, cx: &mut Ctx<'_>) {
    for (name, values) in o.fields() {
        no_empty_strings(values, &format!("{field}.{name}"), cx);
    }
    // "Ports must parse as ≤65535".
    ports(&o.ports, &format!("{field}.ports"), cx);
    ports(&o.not_ports, &format!("{field}.notPorts"), cx);
    // istiod warns: "configured AuthorizationPolicy will deny all traffic to TCP ports under
    // its scope due to the use of only HTTP attributes in a DENY rule".
    let http_only = !o.hosts.is_empty()
        || !o.not_hosts.is_empty()
        || !o.methods.is_empty()
        || !o.not_methods.is_empty()
        || !o.paths.is_empty()
        || !o.not_paths.is_empty();
    if action == Action::Deny && http_only && o.ports.is_empty() && o.not_ports.is_empty() {
        cx.warn(
            field,
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port",
        );
    }
}

fn ports(values: &[String], field: &str, cx: &mut Ctx<'_>) {
    for (i, v) in values.iter().enumerate() {
        if !v.is_empty() && v.parse::<u16>().is_err() {
            cx.error(
                format!("{field}[{i}]"),
                format!("port {v:?} must be a decimal number in 0..65535"),
            );
        }
    }
}

/// The `when` keys Istio accepts (digest §3.7), exact ones.
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Whether `key` is one of digest §3.7's keys.
pub(crate) fn is_known_when_key(key: &str) -> bool {
    if WHEN_KEYS.contains(&key) {
        return true;
    }
    // `request.headers[<name>]`, `request.auth.claims[c][nested]...`,
    // `experimental.envoy.filters.*[k]`: a prefix followed by one or more non-empty `[...]`.
    let bracketed = |rest: &str| -> bool {
        let mut rest = rest;
        let mut n = 0;
        while let Some(r) = rest.strip_prefix('[') {
            match r.find(']') {
                Some(end) if end > 0 => {
                    rest = &r[end + 1..];
                    n += 1;
                }
                _ => return false,
            }
        }
        n > 0 && rest.is_empty()
    };
    if let Some(rest) = key.strip_prefix("request.headers") {
        return bracketed(rest) && rest.matches('[').count() == 1;
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracketed(rest);
    }
    if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
        return rest
            .find('[')
            .is_some_and(|i| i > 0 && bracketed(&rest[i..]));
    }
    false
}

fn condition(c: &Condition, field: &str, cx: &mut Ctx<'_>) {
    // "Unknown keys, `destination.labels[...]`, `destination.namespace`, `destination.name/user`
    // are rejected by validation (`ValidateAttribute`)".
    if c.key.is_empty() {
        cx.error(format!("{field}.key"), "key must not be empty");
    } else if !is_known_when_key(&c.key) {
        cx.error(
            format!("{field}.key"),
            format!("unknown attribute {:?}", c.key),
        );
    }
    // "Each `when` needs ≥1 of `values`/`notValues`."
    if c.values.is_empty() && c.not_values.is_empty() {
        cx.error(
            field,
            format!(
                "at least one of values or notValues must be set for key {:?}",
                c.key
            ),
        );
    }
    no_empty_strings(&c.values, &format!("{field}.values"), cx);
    no_empty_strings(&c.not_values, &format!("{field}.notValues"), cx);
    // `ValidateAttribute`: IP keys take IPs/CIDRs, `destination.port` takes ports.
    match c.key.as_str() {
        "source.ip" | "remote.ip" | "destination.ip" => {
            ip_blocks(&c.values, &format!("{field}.values"), cx);
            ip_blocks(&c.not_values, &format!("{field}.notValues"), cx);
        }
        "destination.port" => {
            ports(&c.values, &format!("{field}.values"), cx);
            ports(&c.not_values, &format!("{field}.notValues"), cx);
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{assert_error, assert_valid, assert_warning, errors, res};
    use super::*;
    use crate::model::{Kind, Resource};

    fn ap(spec: Value) -> Resource {
        res(
            Kind::AuthorizationPolicy,
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "prod"}, "spec": spec}),
        )
    }

    fn pa(spec: Value) -> Resource {
        res(
            Kind::PeerAuthentication,
            json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication", "metadata": {"name": "p", "namespace": "prod"}, "spec": spec}),
        )
    }

    fn rule_from(source: Value) -> Value {
        json!({"rules": [{"from": [{"source": source}]}]})
    }

    #[test]
    fn allow_nothing_allow_all_and_deny_all_are_valid() {
        // "`spec: {}` (action defaults to ALLOW, no rules) = allow-nothing".
        assert_valid(&ap(json!({})));
        // "ALLOW `[{}]` = allow-all, DENY `[{}]` = deny-all".
        assert_valid(&ap(json!({"rules": [{}]})));
        assert_valid(&ap(json!({"action": "DENY", "rules": [{}]})));
    }

    #[test]
    fn deny_without_rules_is_an_error() {
        // "`action: DENY` without `rules` → error (\"meaningless ... add an empty rule `{}`\")."
        assert_error(
            &ap(json!({"action": "DENY"})),
            "spec.rules",
            "add an empty rule `{}`",
        );
        assert_error(
            &ap(json!({"action": "DENY", "rules": []})),
            "spec.rules",
            "meaningless",
        );
    }

    #[test]
    fn empty_from_to_source_operation_are_errors() {
        // "`from: []`, `to: []`, `from[].source: {}`/null, `to[].operation: {}`/null → error."
        let r = ap(json!({"rules": [{"from": [], "to": []}]}));
        assert_error(&r, "spec.rules[0].from", "must not be empty");
        assert_error(&r, "spec.rules[0].to", "must not be empty");
        let r = ap(
            json!({"rules": [{"from": [{"source": {}}, {}], "to": [{"operation": {}}, {"operation": null}]}]}),
        );
        assert_error(&r, "spec.rules[0].from[0].source", "must not be empty");
        assert_error(&r, "spec.rules[0].from[1].source", "must not be nil");
        assert_error(&r, "spec.rules[0].to[0].operation", "must not be empty");
        assert_error(&r, "spec.rules[0].to[1].operation", "must not be nil");
    }

    #[test]
    fn empty_strings_in_lists_are_errors() {
        // "Empty strings in any list → error."
        let r = ap(rule_from(json!({"principals": ["a/ns/b/sa/c", ""]})));
        assert_error(
            &r,
            "spec.rules[0].from[0].source.principals[1]",
            "empty value",
        );
        let r = ap(
            json!({"rules": [{"to": [{"operation": {"paths": [""]}}], "when": [{"key": "source.namespace", "values": [""]}]}]}),
        );
        assert_error(&r, "spec.rules[0].to[0].operation.paths[0]", "empty value");
        assert_error(&r, "spec.rules[0].when[0].values[0]", "empty value");
    }

    #[test]
    fn ports_must_parse_up_to_65535() {
        // "Ports must parse as ≤65535".
        let r = ap(
            json!({"rules": [{"to": [{"operation": {"ports": ["8080", "65536"], "notPorts": ["http"]}}]}]}),
        );
        assert_error(&r, "spec.rules[0].to[0].operation.ports[1]", "0..65535");
        assert_error(&r, "spec.rules[0].to[0].operation.notPorts[0]", "0..65535");
        assert_eq!(errors(&r).len(), 2);
        assert_valid(&ap(
            json!({"rules": [{"to": [{"operation": {"ports": ["0", "65535"]}}]}]}),
        ));
    }

    #[test]
    fn ips_and_cidrs_must_parse_bare_ips_allowed() {
        // "IPs/CIDRs must parse" ; "`ipBlocks` ... IP or CIDR".
        assert_valid(&ap(rule_from(
            json!({"ipBlocks": ["10.0.0.1", "10.0.0.0/8", "::1"]}),
        )));
        let r = ap(rule_from(
            json!({"ipBlocks": ["10.0.0.0/33"], "notRemoteIpBlocks": ["nope"]}),
        ));
        assert_error(
            &r,
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "invalid IP address or CIDR",
        );
        assert_error(
            &r,
            "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
            "invalid IP",
        );
        let r = ap(
            json!({"rules": [{"when": [{"key": "source.ip", "values": ["300.1.1.1"]}, {"key": "destination.port", "notValues": ["x"]}]}]}),
        );
        assert_error(&r, "spec.rules[0].when[0].values[0]", "invalid IP");
        assert_error(&r, "spec.rules[0].when[1].notValues[0]", "0..65535");
    }

    #[test]
    fn provider_only_with_custom_and_custom_needs_rules() {
        // "`provider` only with CUSTOM".
        assert_error(
            &ap(json!({"provider": {"name": "opa"}, "rules": [{}]})),
            "spec.provider",
            "only be used with the CUSTOM",
        );
        // "CUSTOM without `rules` is rejected by validation."
        let r = ap(json!({"action": "CUSTOM", "provider": {"name": "opa"}}));
        assert_error(&r, "spec.rules", "CUSTOM action without rules");
        // "CUSTOM needs `provider.name`" — and trustmesh has no ext-authz to delegate to.
        let r = ap(json!({"action": "CUSTOM", "rules": [{}]}));
        assert_error(&r, "spec.provider.name", "requires a provider");
        assert_error(&r, "spec.action", "not supported by trustmesh");
    }

    #[test]
    fn service_accounts_rules() {
        // "serviceAccounts ... no wildcards; ≤16; cannot combine with principals/namespaces".
        let r = ap(rule_from(
            json!({"serviceAccounts": ["prod/api"], "namespaces": ["prod"]}),
        ));
        assert_error(
            &r,
            "spec.rules[0].from[0].source.serviceAccounts",
            "cannot set serviceAccounts with namespaces or principals",
        );
        let many: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
        assert_error(
            &ap(rule_from(json!({"serviceAccounts": many}))),
            "spec.rules[0].from[0].source.serviceAccounts",
            "at most 16",
        );
        let r = ap(rule_from(
            json!({"notServiceAccounts": ["prod/*", "a/b/c"]}),
        ));
        assert_error(
            &r,
            "spec.rules[0].from[0].source.notServiceAccounts[0]",
            "wildcards are not supported",
        );
        assert_error(
            &r,
            "spec.rules[0].from[0].source.notServiceAccounts[1]",
            "<namespace>/<serviceaccount>",
        );
        assert_valid(&ap(rule_from(
            json!({"serviceAccounts": ["prod/api", "reporting"]}),
        )));
    }

    #[test]
    fn when_keys_must_be_known_and_need_values() {
        // "Unknown keys, `destination.labels[...]`, `destination.namespace`, `destination.name/user`
        // are rejected by validation". "Each `when` needs ≥1 of `values`/`notValues`."
        for key in [
            "destination.labels[app]",
            "destination.namespace",
            "destination.name",
            "destination.user",
            "request.headers",
            "request.headers[]",
            "foo",
        ] {
            let r = ap(json!({"rules": [{"when": [{"key": key, "values": ["x"]}]}]}));
            assert_error(&r, "spec.rules[0].when[0].key", "unknown attribute");
        }
        for key in [
            "request.headers[x-token]",
            "source.ip",
            "remote.ip",
            "source.namespace",
            "source.principal",
            "source.serviceAccount",
            "source.trustDomain",
            "request.auth.principal",
            "request.auth.audiences",
            "request.auth.presenter",
            "request.auth.claims[groups]",
            "request.auth.claims[a][b]",
            "destination.ip",
            "destination.port",
            "connection.sni",
            "experimental.envoy.filters.network.mysql_proxy[db.table]",
        ] {
            let value = if key.ends_with(".ip") {
                "10.0.0.1"
            } else if key == "destination.port" {
                "80"
            } else {
                "x"
            };
            assert_valid(&ap(
                json!({"rules": [{"when": [{"key": key, "values": [value]}]}]}),
            ));
        }
        let r = ap(json!({"rules": [{"when": [{"key": "source.namespace"}]}]}));
        assert_error(
            &r,
            "spec.rules[0].when[0]",
            "at least one of values or notValues",
        );
    }

    #[test]
    fn at_most_512_rules_and_16_target_refs() {
        // "≤512 rules, ≤16 targetRefs."
        let rules: Vec<Value> = (0..513).map(|_| json!({})).collect();
        assert_error(
            &ap(json!({"rules": rules})),
            "spec.rules",
            "at most 512 rules",
        );
        let refs: Vec<Value> = (0..17)
            .map(|i| json!({"kind": "Service", "name": format!("s{i}")}))
            .collect();
        assert_error(
            &ap(json!({"targetRefs": refs})),
            "spec.targetRefs",
            "at most 16 targetRefs",
        );
    }

    #[test]
    fn selector_and_target_refs_are_exclusive_and_target_refs_are_ignored() {
        // "At most one of selector / targetRefs (CRD CEL)."
        let r = ap(
            json!({"selector": {"matchLabels": {"app": "a"}}, "targetRef": {"kind": "Gateway", "name": "g"}}),
        );
        assert_error(&r, "spec.selector", "only one of targetRefs or selector");
        let r = ap(
            json!({"targetRef": {"kind": "Gateway", "name": "g"}, "targetRefs": [{"kind": "Gateway", "name": "h"}]}),
        );
        assert_error(&r, "spec.targetRefs", "only one of targetRefs or targetRef");
        // "A sidecar ignores any policy that has targetRef(s)".
        assert_warning(
            &ap(json!({"targetRefs": [{"kind": "Gateway", "name": "h"}]})),
            "spec.targetRefs",
            "ignore this policy",
        );
    }

    #[test]
    fn selector_wildcards_rejected() {
        let r = ap(json!({"selector": {"matchLabels": {"app": "api-*"}}}));
        assert_error(
            &r,
            "spec.selector.matchLabels.app",
            "wildcard is not supported in selector",
        );
    }

    #[test]
    fn spiffe_prefixed_principal_warns() {
        // "A policy value that itself starts with `spiffe://` therefore never matches".
        let r = ap(rule_from(
            json!({"principals": ["spiffe://cluster.local/ns/a/sa/b"]}),
        ));
        assert_valid(&r);
        assert_warning(
            &r,
            "spec.rules[0].from[0].source.principals[0]",
            "never matches",
        );
    }

    #[test]
    fn deny_with_only_http_attributes_warns() {
        // istiod: "will deny all traffic to TCP ports under its scope due to the use of only
        // HTTP attributes in a DENY rule".
        let r = ap(
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        );
        assert_warning(
            &r,
            "spec.rules[0].to[0].operation",
            "deny all traffic to TCP ports",
        );
        let r = ap(
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"], "ports": ["8080"]}}]}]}),
        );
        assert!(super::super::tests::warnings(&r).is_empty());
    }

    #[test]
    fn dry_run_annotation_must_be_a_go_bool() {
        // "`istio.io/dry-run` ... parsed with Go `strconv.ParseBool`; bad value → logged, treated as false".
        let mut r = ap(json!({}));
        r.meta_mut()
            .annotations
            .insert("istio.io/dry-run".into(), "yes".into());
        assert_warning(&r, "metadata.annotations.istio.io/dry-run", "not a boolean");
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn port_level_mtls_requires_selector_and_valid_ports() {
        // CRD CEL "portLevelMtls requires selector"; "port 1..65535".
        let r = pa(json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}));
        assert_error(&r, "spec.portLevelMtls", "portLevelMtls requires selector");
        let r = pa(
            json!({"selector": {"matchLabels": {}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        );
        assert_error(&r, "spec.portLevelMtls", "requires selector");
        let r = pa(
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"0": {"mode": "DISABLE"}, "70000": {}}}),
        );
        assert_error(&r, "spec.portLevelMtls.0", "1..65535");
        assert_error(&r, "spec.portLevelMtls.70000", "1..65535");
        assert_valid(&pa(
            json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"9090": {"mode": "DISABLE"}}}),
        ));
    }

    #[test]
    fn modes_and_actions_use_istio_spellings() {
        use crate::model::security::MtlsMode;
        let mode = |r: Resource| match r {
            Resource::PeerAuthentication(p) => p.spec.mode(),
            _ => unreachable!(),
        };
        assert_eq!(
            mode(pa(json!({"mtls": {"mode": "STRICT"}}))),
            MtlsMode::Strict
        );
        // "`mtls` absent or `mtls: {}` ≡ UNSET."
        assert_eq!(mode(pa(json!({"mtls": {}}))), MtlsMode::Unset);
        assert_eq!(mode(pa(json!({}))), MtlsMode::Unset);
        let lower = json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "spec": {"mtls": {"mode": "strict"}}});
        assert!(Resource::deserialize_as(Kind::PeerAuthentication, lower).is_err());
    }
}
