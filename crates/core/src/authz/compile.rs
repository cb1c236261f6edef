//! AuthorizationPolicy → [`CompiledPolicy`]: every value parsed once into a matcher, trust
//! domain aliases expanded, HTTP-only attributes flagged for TCP (digest §3.3–§3.10).
//!
//! The shape follows istiod's `authz/model.New`: a rule is `from` (OR of sources) AND `to`
//! (OR of operations) AND every `when`. A value istiod fails to compile (a bad port, IP or
//! path template) makes an ALLOW rule disappear and is ignored by DENY/AUDIT/CUSTOM
//! (`model.go` `checkError`), exactly as an HTTP-only attribute on TCP does.

use std::sync::Arc;

use ipnet::IpNet;

use super::matcher::{NsPattern, PathTemplate, SaPattern, StrPattern, ip_in};
use super::{AuthzSettings, EvalCtx};
use crate::model::AuthorizationPolicy;
use crate::model::security::{Action, Condition, Operation, Rule, Source};
use crate::validate::{parse_go_bool, parse_ip_or_cidr};

/// One value of one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// `principals`, `source.principal`: the peer ID without `spiffe://`.
    Principal(StrPattern),
    /// `namespaces`, `source.namespace`.
    Namespace(NsPattern),
    /// `serviceAccounts`, `source.serviceAccount`.
    ServiceAccount(SaPattern),
    /// `trustDomains`, `source.trustDomain`.
    TrustDomain(StrPattern),
    /// `ipBlocks`, `source.ip`: the connection's source address.
    SourceIp(IpNet),
    /// `remoteIpBlocks`, `remote.ip`: the original client address. trustmesh trusts no
    /// proxies in front of it (Istio's `numTrustedProxies: 0`), so it is the source address.
    RemoteIp(IpNet),
    /// `destination.ip`.
    DestIp(IpNet),
    /// `ports`, `destination.port`.
    DestPort(u16),
    /// `hosts`: `:authority`, case-insensitive.
    Host(StrPattern),
    /// `methods`.
    Method(StrPattern),
    /// `paths` without a template.
    Path(StrPattern),
    /// `paths` with `{*}`/`{**}`.
    PathTemplate(PathTemplate),
    /// `request.headers[<name>]`; the name is lowercase.
    Header(Box<str>, StrPattern),
    /// `connection.sni`.
    Sni(StrPattern),
    /// An attribute trustmesh never has a value for: JWT claims (`requestPrincipals`,
    /// `request.auth.*` — trustmesh has no RequestAuthentication) and Envoy dynamic metadata
    /// (`experimental.envoy.filters.*`). As in Envoy when the metadata is missing, a positive
    /// value never matches and a negated one always does.
    Absent,
}

impl Matcher {
    pub(crate) fn matches(&self, cx: &EvalCtx<'_>) -> bool {
        match self {
            Matcher::Principal(p) => p.matches(cx.principal),
            Matcher::Namespace(p) => p.matches(cx.peer_uri, cx.peer_workload.map(|(ns, _)| ns)),
            Matcher::ServiceAccount(p) => p.matches(cx.peer_uri, cx.peer_workload),
            Matcher::TrustDomain(p) => p.matches(cx.peer_trust_domain),
            Matcher::SourceIp(n) | Matcher::RemoteIp(n) => ip_in(n, cx.source_ip),
            Matcher::DestIp(n) => ip_in(n, cx.dest_ip),
            Matcher::DestPort(p) => *p == cx.dest_port,
            Matcher::Host(p) => p.matches_ignore_case(cx.http.as_ref().and_then(|h| h.host)),
            Matcher::Method(p) => p.matches(cx.http.as_ref().map(|h| h.method)),
            Matcher::Path(p) => p.matches(cx.http.as_ref().map(|h| h.path)),
            Matcher::PathTemplate(t) => t.matches(cx.http.as_ref().map(|h| h.path)),
            Matcher::Header(name, p) => match &cx.http {
                Some(h) => p.matches(h.header(name).as_deref()),
                None => false,
            },
            Matcher::Sni(p) => p.matches(cx.sni),
            Matcher::Absent => false,
        }
    }
}

/// One attribute: `values` (any) AND NOT `notValues` (any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    /// Positive values, OR'ed; empty = no constraint.
    pub(crate) values: Vec<Matcher>,
    /// Negated values; empty = no constraint.
    not_values: Vec<Matcher>,
    /// Hosts, methods, paths, request principals, request headers, JWT claims.
    http_only: bool,
}

impl Field {
    /// "field_match(f) ⇔ (values empty ∨ ∃ v ∈ values: m(v)) ∧ (notValues empty ∨ ¬∃ v ∈
    /// notValues: m(v))".
    fn matches(&self, cx: &EvalCtx<'_>) -> bool {
        // "DENY / AUDIT: only the HTTP-only *attribute* is dropped (both `values` and
        // `notValues`); the rest of the rule stays". ALLOW rules holding one never get here on
        // TCP (the whole rule is dropped first).
        if self.http_only && cx.http.is_none() {
            return true;
        }
        (self.values.is_empty() || self.values.iter().any(|m| m.matches(cx)))
            && (self.not_values.is_empty() || !self.not_values.iter().any(|m| m.matches(cx)))
    }
}

/// Fields AND'ed: one source, one operation, or the rule's `when` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Clause(pub(crate) Vec<Field>);

impl Clause {
    fn matches(&self, cx: &EvalCtx<'_>) -> bool {
        self.0.iter().all(|f| f.matches(cx))
    }

    fn http_only(&self) -> bool {
        self.0.iter().any(|f| f.http_only)
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    /// `ns[<ns>]-policy[<name>]-rule[<index>]`.
    pub(crate) id: Arc<str>,
    /// Sources, OR'ed; empty = `from` absent = any source.
    pub(crate) from: Vec<Clause>,
    /// Operations, OR'ed; empty = any operation.
    to: Vec<Clause>,
    /// Conditions, AND'ed.
    when: Clause,
    /// Holds an HTTP-only attribute anywhere.
    http_only: bool,
    /// istiod skips this rule (unknown `when` key, or an ALLOW value that failed to compile).
    pub(crate) skipped: bool,
}

impl CompiledRule {
    /// "rule matches ⇔ (from absent ∨ ∃ from[i].source matches) ∧ (to absent ∨ ∃
    /// to[j].operation matches) ∧ ∀ when[k]: condition matches".
    pub(crate) fn matches(&self, cx: &EvalCtx<'_>, action: Action) -> bool {
        if self.skipped {
            return false;
        }
        // "ALLOW: a rule containing *any* HTTP-only attribute ... is **dropped entirely**".
        if action == Action::Allow && self.http_only && cx.http.is_none() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|c| c.matches(cx)))
            && (self.to.is_empty() || self.to.iter().any(|c| c.matches(cx)))
            && self.when.matches(cx)
    }
}

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledPolicy {
    /// `ns/name`.
    pub(crate) id: Arc<str>,
    /// The policy's namespace.
    pub(crate) namespace: Box<str>,
    /// The action.
    pub(crate) action: Action,
    /// `istio.io/dry-run` is true.
    pub(crate) dry_run: bool,
    /// `selector.matchLabels`; empty selects every workload in scope.
    pub(crate) selector: std::collections::BTreeMap<String, String>,
    /// The rules in order.
    pub(crate) rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    /// "policy matches ⇔ ∃ rule ∈ rules: rule matches (rules absent/[] ⇒ never matches)".
    /// Returns the first matching rule.
    pub(crate) fn first_match(&self, cx: &EvalCtx<'_>) -> Option<&CompiledRule> {
        self.rules.iter().find(|r| r.matches(cx, self.action))
    }
}

/// Whether the policy carries `targetRef`/`targetRefs`: "A sidecar ignores any policy that has
/// targetRef(s)".
pub(crate) fn has_target_ref(p: &AuthorizationPolicy) -> bool {
    p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty()
}

/// Compiles one policy.
pub(crate) fn compile_policy(p: &AuthorizationPolicy, settings: &AuthzSettings) -> CompiledPolicy {
    let ns = p.metadata.namespace_str();
    let name = &p.metadata.name;
    let action = p.spec.action;
    // "`metadata.annotations["istio.io/dry-run"] = "true"` (parsed with Go `strconv.ParseBool`;
    // bad value → logged, treated as false)". "Only ALLOW and DENY support dry-run".
    let dry_run = matches!(action, Action::Allow | Action::Deny)
        && p.metadata
            .annotations
            .get("istio.io/dry-run")
            .and_then(|v| parse_go_bool(v))
            .unwrap_or(false);
    let rules = p
        .spec
        .rules()
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r, i, ns, name, action, settings))
        .collect();
    CompiledPolicy {
        id: Arc::from(format!("{ns}/{name}")),
        namespace: ns.into(),
        action,
        dry_run,
        selector: p
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default(),
        rules,
    }
}

/// Collects the fields of one rule; `failed` records a value istiod could not compile.
struct RuleBuilder<'a> {
    policy_ns: &'a str,
    settings: &'a AuthzSettings,
    failed: bool,
}

impl RuleBuilder<'_> {
    fn field(
        &mut self,
        values: &[String],
        not_values: &[String],
        http_only: bool,
        mut compile: impl FnMut(&str) -> Option<Matcher>,
    ) -> Option<Field> {
        if values.is_empty() && not_values.is_empty() {
            return None;
        }
        let mut conv = |vs: &[String]| -> Vec<Matcher> {
            vs.iter()
                .filter_map(|v| {
                    let m = compile(v);
                    if m.is_none() {
                        self.failed = true;
                    }
                    m
                })
                .collect()
        };
        let values = conv(values);
        let not_values = conv(not_values);
        Some(Field {
            values,
            not_values,
            http_only,
        })
    }

    fn source(&mut self, s: &Source) -> Clause {
        let td = self.settings;
        let ns = self.policy_ns;
        let mut f = Vec::new();
        f.extend(self.field(&s.ip_blocks, &s.not_ip_blocks, false, |v| {
            parse_ip_or_cidr(v).map(Matcher::SourceIp)
        }));
        f.extend(
            self.field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, false, |v| {
                parse_ip_or_cidr(v).map(Matcher::RemoteIp)
            }),
        );
        f.extend(self.field(&s.namespaces, &s.not_namespaces, false, |v| {
            Some(Matcher::Namespace(NsPattern::new(v)))
        }));
        // "`requestPrincipals` / `notRequestPrincipals` | JWT `<iss>/<sub>` | HTTP + JWT".
        f.extend(self.field(
            &s.request_principals,
            &s.not_request_principals,
            true,
            |_| Some(Matcher::Absent),
        ));
        // "Principal compilation (sidecar): exact → `spiffe://<v>`; `x*` → prefix; `*x` → suffix;
        // `*` → regex `.+` (any authenticated peer)", after trust domain alias expansion.
        f.extend(self.field(
            &expand_principals(&s.principals, td),
            &expand_principals(&s.not_principals, td),
            false,
            |v| Some(Matcher::Principal(StrPattern::string(v))),
        ));
        f.extend(
            self.field(&s.service_accounts, &s.not_service_accounts, false, |v| {
                Some(Matcher::ServiceAccount(SaPattern::new(v, ns)))
            }),
        );
        // "`trustDomains` values expand to all aliases (`ExpandTrustDomainAliases`)".
        f.extend(self.field(
            &expand_trust_domains(&s.trust_domains, td),
            &expand_trust_domains(&s.not_trust_domains, td),
            false,
            |v| Some(Matcher::TrustDomain(StrPattern::string(v))),
        ));
        Clause(f)
    }

    fn operation(&mut self, o: &Operation) -> Clause {
        let mut f = Vec::new();
        // "Host ... case-**insensitive** ... including `:port` if sent".
        f.extend(self.field(&o.hosts, &o.not_hosts, true, |v| {
            Some(Matcher::Host(StrPattern::header(v)))
        }));
        f.extend(self.field(&o.methods, &o.not_methods, true, |v| {
            Some(Matcher::Method(StrPattern::header(v)))
        }));
        f.extend(self.field(&o.paths, &o.not_paths, true, |v| {
            if PathTemplate::is_template(v) {
                PathTemplate::new(v).map(Matcher::PathTemplate)
            } else {
                Some(Matcher::Path(StrPattern::string(v)))
            }
        }));
        // "Exact-only fields: `ports`/`notPorts` (decimal 0..65535)".
        f.extend(self.field(&o.ports, &o.not_ports, false, |v| {
            v.parse::<u16>().ok().map(Matcher::DestPort)
        }));
        Clause(f)
    }

    /// A `when` condition; `Err(())` for a key istiod does not know (the rule is skipped).
    fn condition(&mut self, c: &Condition) -> Result<Option<Field>, ()> {
        let td = self.settings;
        let ns = self.policy_ns;
        let key = c.key.as_str();
        let (vals, nots) = (&c.values, &c.not_values);
        Ok(match key {
            "source.ip" => self.field(vals, nots, false, |v| {
                parse_ip_or_cidr(v).map(Matcher::SourceIp)
            }),
            "remote.ip" => self.field(vals, nots, false, |v| {
                parse_ip_or_cidr(v).map(Matcher::RemoteIp)
            }),
            "destination.ip" => self.field(vals, nots, false, |v| {
                parse_ip_or_cidr(v).map(Matcher::DestIp)
            }),
            "destination.port" => self.field(vals, nots, false, |v| {
                v.parse::<u16>().ok().map(Matcher::DestPort)
            }),
            "connection.sni" => self.field(vals, nots, false, |v| {
                Some(Matcher::Sni(StrPattern::string(v)))
            }),
            "source.namespace" => self.field(vals, nots, false, |v| {
                Some(Matcher::Namespace(NsPattern::new(v)))
            }),
            "source.principal" => self.field(
                &expand_principals(vals, td),
                &expand_principals(nots, td),
                false,
                |v| Some(Matcher::Principal(StrPattern::string(v))),
            ),
            "source.serviceAccount" => self.field(vals, nots, false, |v| {
                Some(Matcher::ServiceAccount(SaPattern::new(v, ns)))
            }),
            "source.trustDomain" => self.field(
                &expand_trust_domains(vals, td),
                &expand_trust_domains(nots, td),
                false,
                |v| Some(Matcher::TrustDomain(StrPattern::string(v))),
            ),
            // JWT attributes: HTTP-only, and never present (no RequestAuthentication).
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
                self.field(vals, nots, true, |_| Some(Matcher::Absent))
            }
            k if k.starts_with("request.auth.claims[") => {
                self.field(vals, nots, true, |_| Some(Matcher::Absent))
            }
            k if k.starts_with("experimental.envoy.filters.") => {
                self.field(vals, nots, false, |_| Some(Matcher::Absent))
            }
            k if k.starts_with("request.headers[") && k.ends_with(']') => {
                // "`request.headers[<name>]` | header value ...; name case-insensitive".
                let name = k["request.headers[".len()..k.len() - 1].to_ascii_lowercase();
                if name.is_empty() {
                    return Err(());
                }
                self.field(vals, nots, true, |v| {
                    Some(Matcher::Header(name.as_str().into(), StrPattern::header(v)))
                })
            }
            _ => return Err(()),
        })
    }
}

fn compile_rule(
    r: &Rule,
    index: usize,
    ns: &str,
    name: &str,
    action: Action,
    settings: &AuthzSettings,
) -> CompiledRule {
    let mut b = RuleBuilder {
        policy_ns: ns,
        settings,
        failed: false,
    };
    let mut unknown_key = false;
    let mut when = Vec::new();
    for c in &r.when {
        match b.condition(c) {
            Ok(f) => when.extend(f),
            Err(()) => unknown_key = true,
        }
    }
    // `from: []` / `source: null` are rejected by validation; istiod treats them as absent.
    let from: Vec<Clause> = r
        .from
        .iter()
        .flatten()
        .map(|f| f.source.as_ref().map(|s| b.source(s)).unwrap_or_default())
        .collect();
    let to: Vec<Clause> =
        r.to.iter()
            .flatten()
            .map(|t| {
                t.operation
                    .as_ref()
                    .map(|o| b.operation(o))
                    .unwrap_or_default()
            })
            .collect();
    let when = Clause(when);
    let http_only =
        when.http_only() || from.iter().any(Clause::http_only) || to.iter().any(Clause::http_only);
    CompiledRule {
        id: Arc::from(format!("ns[{ns}]-policy[{name}]-rule[{index}]")),
        from,
        to,
        when,
        http_only,
        // ALLOW: "Return the error as-is for allow policy" → the rule is gone; others ignore
        // the bad value.
        skipped: unknown_key || (b.failed && action == Action::Allow),
    }
}

/// Trust domain alias expansion of principal values (digest §3.10; istio
/// `trustdomain/bundle.go` `ReplaceTrustDomainAliases`).
pub(crate) fn expand_principals(values: &[String], settings: &AuthzSettings) -> Vec<String> {
    let bundle: Vec<&str> = settings.trust_domains().collect();
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let parts: Vec<&str> = v.split('/').collect();
        // "For each principal value with exactly 5 `/`-separated parts whose TD part is not
        // literally `*`". "Values not of 5 parts (`*`, `*/sa/x`, `spiffe://...`) are kept verbatim."
        if parts.len() != 5 || parts[0] == "*" {
            out.push(v.clone());
            continue;
        }
        let td = parts[0];
        // "if its TD ∈ {local TD} ∪ aliases, **or the TD is literally `cluster.local`**, it is
        // expanded into one principal per member of {local TD} ∪ aliases". Membership is
        // istio's `stringMatch`, which lets either side carry a leading/trailing `*`.
        if bundle.iter().any(|t| td_string_match(td, t)) || td == "cluster.local" {
            let mut expanded: Vec<String> = Vec::with_capacity(bundle.len());
            for t in &bundle {
                // A `*`-prefixed TD in the policy that covers this member is kept as written.
                let p = if suffix_match(t, td) {
                    v.clone()
                } else {
                    format!("{t}/{}", parts[1..].join("/"))
                };
                if !expanded.contains(&p) {
                    expanded.push(p);
                }
            }
            out.extend(expanded);
        } else {
            // "otherwise (foreign TD ...) it is kept as-is and matches only peers from that TD."
            out.push(v.clone());
        }
    }
    out
}

/// istio `trustdomain/util.go` `stringMatch` for one list member.
fn td_string_match(a: &str, s: &str) -> bool {
    a == s
        || s == "*"
        || prefix_match(a, s)
        || prefix_match(s, a)
        || suffix_match(a, s)
        || suffix_match(s, a)
}

fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}

fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| a.ends_with(p))
}

/// `ExpandTrustDomainAliases`: a value equal to the local TD or an alias becomes all of them.
pub(crate) fn expand_trust_domains(values: &[String], settings: &AuthzSettings) -> Vec<String> {
    let bundle: Vec<&str> = settings.trust_domains().collect();
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        let add: Vec<&str> = if bundle.contains(&v.as_str()) {
            bundle.clone()
        } else {
            vec![v.as_str()]
        };
        for a in add {
            if !out.iter().any(|o| o == a) {
                out.push(a.to_owned());
            }
        }
    }
    out
}
