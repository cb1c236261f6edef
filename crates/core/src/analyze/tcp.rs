//! Rules on the wire by port: which ports a rule covers ([`PortScope`]), which attributes
//! are HTTP-only, and TM0102 — a DENY rule whose HTTP-only attributes are dropped on TCP,
//! leaving a broader deny (digest §3.9).

use std::collections::BTreeSet;

use super::{Code, Cx, Finding, On, Proto, Severity, at, list};
use crate::model::security::{Condition, Operation, Rule, Source};
use crate::model::{AuthorizationPolicy, Kind};
use crate::snapshot::Sourced;

/// Ports a rule can match, from `to[].operation.ports/notPorts` (OR over operations) and
/// `when destination.port` (AND over conditions).
#[derive(Debug, Default)]
pub(super) struct PortScope {
    /// `None`: no `to` (or an operation without ports): any port. Otherwise (ports,
    /// notPorts) per operation; an empty `ports` set means any port.
    ops: Option<Vec<(BTreeSet<u16>, BTreeSet<u16>)>>,
    /// (values, notValues) per `destination.port` condition.
    when: Vec<(BTreeSet<u16>, BTreeSet<u16>)>,
}

fn port_set(v: &[String]) -> BTreeSet<u16> {
    v.iter().filter_map(|p| p.parse().ok()).collect()
}

impl PortScope {
    /// The scope of the operations `ops` (all of the rule's when `None`) and the rule's
    /// `when`.
    pub(super) fn new(rule: &Rule, ops: Option<Vec<&Operation>>) -> Self {
        let ops = ops.or_else(|| {
            rule.to.as_ref().map(|to| {
                to.iter()
                    .filter_map(|t| t.operation.as_ref())
                    .collect::<Vec<_>>()
            })
        });
        let ops = ops.map(|ops| {
            ops.iter()
                .map(|o| (port_set(&o.ports), port_set(&o.not_ports)))
                .collect::<Vec<_>>()
        });
        // An operation with neither ports nor notPorts matches every port.
        let ops = ops.filter(|v| !v.iter().any(|(p, n)| p.is_empty() && n.is_empty()));
        let when = rule
            .when
            .iter()
            .filter(|c| c.key == "destination.port")
            .map(|c| (port_set(&c.values), port_set(&c.not_values)))
            .collect();
        Self { ops, when }
    }

    /// No port restriction at all.
    pub(super) fn unrestricted(&self) -> bool {
        self.ops.is_none() && self.when.is_empty()
    }

    /// Whether `port` (`None`: an undeclared port) can match.
    pub(super) fn covers(&self, port: Option<u16>) -> bool {
        let one = |(only, except): &(BTreeSet<u16>, BTreeSet<u16>)| match port {
            Some(p) => (only.is_empty() || only.contains(&p)) && !except.contains(&p),
            None => only.is_empty(),
        };
        self.ops.as_ref().is_none_or(|ops| ops.iter().any(one)) && self.when.iter().all(one)
    }
}

/// HTTP-only attributes of an operation (§3.6 "HTTP only"): hosts, methods, paths and their
/// negations.
pub(super) fn op_http_only(o: &Operation) -> Vec<&'static str> {
    [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, _)| n)
    .collect()
}

/// "(hosts, methods, paths and their `not*` forms, requestPrincipals/notRequestPrincipals,
/// `request.headers[...]`, `request.auth.*`)" outside operations.
fn source_http_only(s: &Source) -> Vec<&'static str> {
    [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, _)| n)
    .collect()
}

fn when_http_only(c: &Condition) -> bool {
    c.key.starts_with("request.headers") || c.key.starts_with("request.auth.")
}

pub(super) fn rule_has_http_only(rule: &Rule) -> bool {
    rule.from
        .iter()
        .flatten()
        .filter_map(|f| f.source.as_ref())
        .any(|s| !source_http_only(s).is_empty())
        || rule
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
            .any(|o| !op_http_only(o).is_empty())
        || rule.when.iter().any(when_http_only)
}

/// TM0102. "**DENY / AUDIT**: only the HTTP-only *attribute* is dropped (both `values` and
/// `notValues`); the rest of the rule stays → **broader deny**. `DENY to: methods: [GET]` ⇒
/// deny **all** TCP on every port; `DENY methods: [GET], ports: [9000]` ⇒ deny all TCP on
/// 9000 only" (digest §3.9).
pub(super) fn deny_http_only_on_tcp(
    cx: &Cx<'_>,
    ap: &Sourced<AuthorizationPolicy>,
    ri: usize,
    rule: &Rule,
    out: &mut Vec<Finding>,
) {
    let mut attrs: BTreeSet<&str> = BTreeSet::new();
    for s in rule.from.iter().flatten().filter_map(|f| f.source.as_ref()) {
        attrs.extend(source_http_only(s));
    }
    for c in rule.when.iter().filter(|c| when_http_only(c)) {
        attrs.insert(if c.key.starts_with("request.headers") {
            "request.headers"
        } else {
            "request.auth"
        });
    }
    let outside_ops = !attrs.is_empty();
    let ops: Vec<&Operation> = rule
        .to
        .iter()
        .flatten()
        .filter_map(|t| t.operation.as_ref())
        .collect();
    let mut broadened: Vec<&Operation> = Vec::new();
    for o in &ops {
        let a = op_http_only(o);
        if outside_ops || !a.is_empty() {
            broadened.push(o);
        }
        attrs.extend(a);
    }
    if attrs.is_empty() {
        return;
    }
    // With HTTP-only attributes outside `to`, every operation (or, without `to`, every port)
    // is broadened; otherwise only the operations that carry them.
    let scope = if rule.to.is_none() {
        PortScope::new(rule, None)
    } else {
        PortScope::new(rule, Some(broadened))
    };
    let mut tcp = Vec::new();
    let mut undeclared = Vec::new();
    let mut http = 0usize;
    for i in cx.policy_workloads(ap) {
        let w = &cx.snap.workloads()[i];
        for port in cx.ports_of(i) {
            if !scope.covers(port) {
                continue;
            }
            match port.and_then(|p| cx.protocols[i].get(&p)) {
                Some(pp) if pp.kind == Proto::Http => http += 1,
                Some(pp) if pp.kind == Proto::Tcp => {
                    tcp.push(format!("{} (TCP: {})", at(w, port), pp.because));
                }
                Some(pp) => undeclared.push(format!("{} ({})", at(w, port), pp.because)),
                None => undeclared.push(at(w, port)),
            }
        }
    }
    let attrs: Vec<&str> = attrs.into_iter().collect();
    let what = format!(
        "DENY rule {ri} uses HTTP-only attributes ({}); on TCP traffic they are dropped and the rest of the rule still denies",
        attrs.join(", ")
    );
    let message = if !tcp.is_empty() {
        format!("{what}: it denies every connection to {}", list(&tcp))
    } else if !undeclared.is_empty() {
        format!(
            "{what}: any non-HTTP connection to {} is denied outright (protocol not declared)",
            list(&undeclared)
        )
    } else if scope.unrestricted() {
        let today = if http > 0 {
            "every port it covers is HTTP today, but any TCP port added later is denied outright"
        } else {
            "it selects no declared port today; any TCP port under its scope is denied outright"
        };
        format!(
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; {today}"
        )
    } else {
        return;
    };
    On::new(Kind::AuthorizationPolicy, ap, out).push(
        Code::DenyHttpOnlyOnTcp,
        Severity::Warning,
        Some(format!("spec.rules[{ri}]")),
        message,
        "add `ports:` naming only the HTTP ports to each operation of the rule, or declare the port's protocol (ServiceEntry ports[].protocol or an http-* port name)",
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::super::tests::{ap, ns, we, with};
    use super::*;

    #[test]
    fn tm0102_deny_with_http_only_attributes_names_the_tcp_ports() {
        let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"hosts": ["db.prod.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                "workloadSelector": {"labels": {"app": "db"}},
                "ports": [{"number": 5432, "name": "tcp-pg", "protocol": "TCP"}, {"number": 8080, "name": "http", "protocol": "HTTP"}]}});
        let docs = vec![
            ns("prod", true),
            we(
                "prod",
                "db",
                "10.0.0.1",
                json!({"tcp-pg": 5432, "http": 8080}),
            ),
            se,
            // "`DENY to: methods: [GET]` ⇒ deny **all** TCP on every port".
            ap(
                "prod",
                "deny-get",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
            ),
            // "`DENY methods: [GET], ports: [9000]` ⇒ deny all TCP on 9000 only": 8080 is HTTP.
            ap(
                "prod",
                "deny-get-http",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]}]}),
            ),
            // requestPrincipals is HTTP-only too, outside `to`.
            ap(
                "prod",
                "deny-jwt",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"ports": ["5432"]}}]}]}),
            ),
            // ALLOW drops the rule instead: narrower, not this finding.
            ap(
                "prod",
                "allow-get",
                json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
            ),
        ];
        let f = with(Code::DenyHttpOnlyOnTcp, docs);
        let got: Vec<&str> = f.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(
            got,
            [
                "AuthorizationPolicy prod/deny-get",
                "AuthorizationPolicy prod/deny-jwt"
            ]
        );
        assert!(
            f[0].message
                .contains("prod/db:5432 (TCP: ServiceEntry prod/db port tcp-pg (TCP))"),
            "{}",
            f[0].message
        );
        assert!(!f[0].message.contains("8080"), "{}", f[0].message);
        assert!(
            f[1].message.contains("notRequestPrincipals"),
            "{}",
            f[1].message
        );
        assert_eq!(f[0].field.as_deref(), Some("spec.rules[0]"));
    }

    #[test]
    fn tm0102_undeclared_protocols_and_istiods_generic_warning() {
        let docs = vec![
            ns("prod", true),
            we(
                "prod",
                "web",
                "10.0.0.1",
                json!({"http": 8080, "metrics": 9090}),
            ),
            ap(
                "prod",
                "deny-admin",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
            ),
        ];
        let f = with(Code::DenyHttpOnlyOnTcp, docs);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message
                .contains("prod/web:9090 (port name metrics declares no protocol"),
            "{}",
            f[0].message
        );
        // Only HTTP ports, no port restriction: istiod's warning still holds.
        let docs = vec![
            ns("prod", true),
            we("prod", "web", "10.0.0.1", json!({"http": 8080})),
            ap(
                "prod",
                "deny-admin",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
            ),
        ];
        let f = with(Code::DenyHttpOnlyOnTcp, docs);
        assert!(
            f[0].message
                .contains("will deny all traffic to TCP ports under its scope"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains("every port it covers is HTTP today"),
            "{}",
            f[0].message
        );
    }
}
