//! mTLS checks: TM0106 (a DestinationRule's client TLS against the destination's
//! PeerAuthentication mode) and TM0109 (production namespaces not STRICT everywhere).
//!
//! Which DestinationRule a client uses is decided here with the digest's §4.3 rules (client
//! namespace, then the service's, then the root namespace; exact host beats wildcard, longer
//! wildcard beats shorter; `exportTo`). Simplification: a rule with a `workloadSelector`
//! competes like a namespace-wide one in its namespace.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Code, Cx, Finding, On, Severity, at, is_production, list, mesh_service_workloads, mode_why,
    target_port,
};
use crate::model::networking::{ClientTlsSettings, TlsMode, TrafficPolicy};
use crate::model::security::MtlsMode;
use crate::model::{DestinationRule, Kind};
use crate::peerauth::Scope;
use crate::snapshot::{Snapshot, Sourced};

pub(super) fn check(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    destination_tls(cx, out);
    production_strict(cx, out);
}

/// `reviews` in namespace `prod` → `reviews.prod.svc.cluster.local`: "short names resolved
/// **relative to the DR's namespace**" (§4.2).
fn dr_host(dr: &DestinationRule) -> String {
    let h = dr.spec.host.to_ascii_lowercase();
    if h.contains('.') || h == "*" {
        h
    } else {
        format!("{h}.{}.svc.cluster.local", dr.metadata.namespace_str())
    }
}

/// How specifically `pattern` matches `host`: exact beats any wildcard, a longer wildcard
/// beats a shorter one ("exact beats wildcard; longer wildcard wins"); `None` if it does not.
fn host_match(pattern: &str, host: &str) -> Option<(u8, usize)> {
    let host = host.to_ascii_lowercase();
    if pattern == host {
        Some((2, pattern.len()))
    } else if pattern == "*" {
        Some((1, 0))
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        host.ends_with(suffix).then_some((1, pattern.len()))
    } else {
        None
    }
}

/// "`exportTo`: default all namespaces; `.` = own namespace; `*` = all" — and a rule is
/// always visible in its own namespace.
fn visible(dr: &DestinationRule, client_ns: &str) -> bool {
    let own = dr.metadata.namespace_str();
    own == client_ns
        || dr.spec.export_to.is_empty()
        || dr.spec.export_to.iter().any(|e| e == "*" || e == client_ns)
}

/// The DestinationRule a client in `client_ns` uses for `host` of a service in `svc_ns`:
/// "1. DRs in C ... 2. else DRs in N exported to C; 3. else DRs in the root namespace
/// exported to C. First level with any match wins"; at one level "first rule's top-level
/// `trafficPolicy` wins" (§4.3).
fn chosen<'s>(
    snap: &'s Snapshot,
    client_ns: &str,
    host: &str,
    svc_ns: &str,
) -> Option<&'s Sourced<DestinationRule>> {
    for level in [client_ns, svc_ns, snap.mesh().root_namespace.as_str()] {
        let mut best: Option<((u8, usize), &Sourced<DestinationRule>)> = None;
        for dr in snap.destination_rules() {
            if dr.metadata.namespace_str() != level || !visible(dr, client_ns) {
                continue;
            }
            let Some(rank) = host_match(&dr_host(dr), host) else {
                continue;
            };
            // Strictly better only: among equals the first (snapshot order) stays.
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, dr));
            }
        }
        if let Some((_, dr)) = best {
            return Some(dr);
        }
    }
    None
}

/// The TLS settings a policy gives `port` and their field path: "portLevelSettings replace,
/// not merge" — a port-level entry without `tls` means no TLS setting (auto mTLS).
fn tls_for_port<'t>(
    tp: &'t TrafficPolicy,
    port: u32,
    base: &str,
) -> Option<(Option<&'t ClientTlsSettings>, String)> {
    if let Some((i, pls)) = tp
        .port_level_settings
        .iter()
        .enumerate()
        .find(|(_, p)| p.port.is_some_and(|s| s.number == port))
    {
        return Some((
            pls.tls.as_ref(),
            format!("{base}.portLevelSettings[{i}].tls.mode"),
        ));
    }
    tp.tls
        .as_ref()
        .map(|t| (Some(t), format!("{base}.tls.mode")))
}

/// A traffic policy of a DestinationRule: the top-level one, or a subset's (which applies to
/// the endpoints with the subset's labels).
struct Tp<'a> {
    policy: &'a TrafficPolicy,
    field: String,
    subset: Option<&'a BTreeMap<String, String>>,
}

fn traffic_policies(dr: &DestinationRule) -> Vec<Tp<'_>> {
    let mut v = Vec::new();
    if let Some(policy) = &dr.spec.traffic_policy {
        v.push(Tp {
            policy,
            field: "spec.trafficPolicy".into(),
            subset: None,
        });
    }
    for (si, s) in dr.spec.subsets.iter().enumerate() {
        if let Some(policy) = &s.traffic_policy {
            v.push(Tp {
                policy,
                field: format!("spec.subsets[{si}].trafficPolicy"),
                subset: Some(&s.labels),
            });
        }
    }
    v
}

/// TM0106. "An explicit `DISABLE` towards a STRICT server fails (reachability test
/// "migration tls disabled")" (§4.1); ISTIO_MUTUAL towards a DISABLE port sends TLS to a
/// listener that has "only raw_buffer chains" (§2.3), so the handshake never happens. Auto
/// mTLS (no `tls`) adapts to the server and is not reported.
fn destination_tls(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let snap = cx.snap;
    let mut clients: BTreeSet<&str> = snap
        .workloads()
        .iter()
        .map(|w| w.namespace.as_str())
        .collect();
    clients.extend(snap.namespaces().iter().map(|n| n.metadata.name.as_str()));
    // (DR index, field, problem) → targets; BTreeMap keeps the output ordered.
    // `true`: ISTIO_MUTUAL towards DISABLE; `false`: DISABLE towards STRICT.
    let mut problems: BTreeMap<(usize, String, bool), BTreeSet<String>> = BTreeMap::new();
    for se in snap.service_entries() {
        let svc_ns = se.metadata.namespace_str();
        let backends: Vec<usize> = mesh_service_workloads(snap, se)
            .filter_map(|w| snap.workloads().iter().position(|x| std::ptr::eq(x, w)))
            .collect();
        if backends.is_empty() {
            continue;
        }
        for host in &se.spec.hosts {
            // Every rule some client namespace would use for this host, once.
            let used: BTreeSet<usize> = clients
                .iter()
                .copied()
                .chain([svc_ns])
                .filter_map(|c| chosen(snap, c, host, svc_ns))
                .filter_map(|dr| {
                    snap.destination_rules()
                        .iter()
                        .position(|d| std::ptr::eq(d, dr))
                })
                .collect();
            for di in used {
                let dr = &snap.destination_rules()[di];
                for tp in traffic_policies(dr) {
                    for sp in &se.spec.ports {
                        let Some((Some(tls), field)) =
                            tls_for_port(tp.policy, sp.number, &tp.field)
                        else {
                            continue;
                        };
                        let istio_mutual = tls.mode == TlsMode::IstioMutual;
                        for &wi in &backends {
                            let w = &snap.workloads()[wi];
                            if tp
                                .subset
                                .is_some_and(|l| !crate::model::labels_subset(l, &w.labels))
                            {
                                continue;
                            }
                            let Some(port) = target_port(w, sp) else {
                                continue;
                            };
                            let d = cx.mode(wi, Some(port));
                            let bad = matches!(
                                (tls.mode, d.mode),
                                (TlsMode::IstioMutual, MtlsMode::Disable)
                                    | (TlsMode::Disable, MtlsMode::Strict)
                            );
                            if bad {
                                problems
                                    .entry((di, field.clone(), istio_mutual))
                                    .or_default()
                                    .insert(format!(
                                        "{} for {host}:{} ({})",
                                        at(w, Some(port)),
                                        sp.number,
                                        mode_why(d)
                                    ));
                            }
                        }
                    }
                }
            }
        }
    }
    for ((di, field, istio_mutual), targets) in problems {
        let dr = &snap.destination_rules()[di];
        let targets: Vec<String> = targets.into_iter().collect();
        let (message, fix) = if istio_mutual {
            (
                format!(
                    "tls.mode ISTIO_MUTUAL originates mTLS towards {}, which accepts only plaintext: every connection fails",
                    list(&targets)
                ),
                "drop `tls` (auto mTLS sends plaintext to DISABLE ports) or make the destination port PERMISSIVE/STRICT",
            )
        } else {
            (
                format!(
                    "tls.mode DISABLE sends plaintext towards {}, which requires mTLS: every connection is refused",
                    list(&targets)
                ),
                "set tls.mode: ISTIO_MUTUAL, or drop `tls` to let auto mTLS choose",
            )
        };
        On::new(Kind::DestinationRule, dr, out).push(
            Code::DestinationTlsConflict,
            Severity::Error,
            Some(field),
            message,
            fix,
        );
    }
}

/// TM0109. Platform practice: production namespaces run STRICT on every workload port.
/// Non-STRICT ports are grouped by the PeerAuthentication that made them so; an explicit
/// `portLevelMtls` exception (scope "workload port") is reported as info, anything else —
/// Istio's PERMISSIVE default included — as a warning.
fn production_strict(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let snap = cx.snap;
    // (policy or namespace, mode, explicit port exception) → ports
    let mut groups: BTreeMap<(Option<String>, String, &str, bool), Vec<String>> = BTreeMap::new();
    for (i, w) in cx.workloads() {
        if !is_production(&w.namespace) {
            continue;
        }
        for port in cx.ports_of(i) {
            let d = cx.mode(i, port);
            if d.mode == MtlsMode::Strict {
                continue;
            }
            let exception = d.scope == Scope::WorkloadPort;
            groups
                .entry((
                    d.policy.as_deref().map(str::to_owned),
                    w.namespace.clone(),
                    d.mode.as_str(),
                    exception,
                ))
                .or_default()
                .push(at(w, port));
        }
    }
    for ((policy, ns, mode, exception), ports) in groups {
        let severity = if exception {
            Severity::Info
        } else {
            Severity::Warning
        };
        let message = if exception {
            format!(
                "production namespace {ns}: port-level exception {mode} on {}; the rest of the workload is STRICT",
                list(&ports)
            )
        } else {
            let why = policy.as_deref().map_or_else(
                || "no PeerAuthentication applies and Istio's default is PERMISSIVE".to_owned(),
                |p| format!("set by PeerAuthentication {p}"),
            );
            format!(
                "production namespace {ns} is not STRICT: {mode} on {} ({why}); plaintext is accepted there",
                list(&ports)
            )
        };
        let fix = if exception {
            "keep the exception only if that port must take plaintext (e.g. a scraper without mesh certificates)".to_owned()
        } else {
            format!(
                "apply a PeerAuthentication with mtls.mode: STRICT in namespace {ns} (or mesh-wide in the root namespace)"
            )
        };
        let pa = policy.as_deref().and_then(|p| {
            snap.peer_authentications()
                .iter()
                .find(|pa| format!("{}/{}", pa.metadata.namespace_str(), pa.metadata.name) == p)
        });
        if let Some(pa) = pa {
            let field = if exception {
                None
            } else {
                Some("spec.mtls.mode".to_owned())
            };
            let field = field.or_else(|| {
                let port = ports.first()?.rsplit_once(':')?.1.to_owned();
                Some(format!("spec.portLevelMtls.{port}"))
            });
            On::new(Kind::PeerAuthentication, pa, out).push(
                Code::ProductionNotStrict,
                severity,
                field,
                message,
                fix,
            );
        } else if let Some(n) = snap.namespaces().iter().find(|n| n.metadata.name == ns) {
            On::new(Kind::Namespace, n, out).push(
                Code::ProductionNotStrict,
                severity,
                None,
                message,
                fix,
            );
        } else if let Some(we) = snap
            .workload_entries()
            .iter()
            .find(|we| we.metadata.namespace_str() == ns)
        {
            On::new(Kind::WorkloadEntry, we, out).push(
                Code::ProductionNotStrict,
                severity,
                None,
                message,
                fix,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{ns, pa, snap, strict_mesh, we, with};
    use super::*;

    fn se(ns: &str, name: &str, port: u32) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": [format!("{name}.{ns}.svc.cluster.local")], "location": "MESH_INTERNAL", "resolution": "STATIC",
                "workloadSelector": {"labels": {"app": name}},
                "ports": [{"number": port, "name": "http", "protocol": "HTTP"}]}})
    }

    fn dr(ns: &str, name: &str, host: &str, spec: Value) -> Value {
        let mut spec = spec;
        spec["host"] = json!(host);
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    #[test]
    fn dr_selection_follows_client_service_root_and_specificity() {
        let s = snap(vec![
            dr("istio-system", "mesh", "*.local", json!({})),
            dr("prod", "wild", "*.prod.svc.cluster.local", json!({})),
            dr("prod", "exact", "orders", json!({})),
            dr(
                "team",
                "team",
                "orders.prod.svc.cluster.local",
                json!({"exportTo": ["."]}),
            ),
        ]);
        let name = |c: &str, h: &str| chosen(&s, c, h, "prod").map(|d| d.metadata.name.clone());
        let h = "orders.prod.svc.cluster.local";
        // "1. DRs in C (visible to C)"
        assert_eq!(name("team", h).as_deref(), Some("team"));
        // "2. else DRs in N exported to C"; "exact beats wildcard".
        assert_eq!(name("other", h).as_deref(), Some("exact"));
        assert_eq!(
            name("other", "payments.prod.svc.cluster.local").as_deref(),
            Some("wild")
        );
        // "3. else DRs in the root namespace exported to C".
        assert_eq!(
            chosen(&s, "other", "x.dev.svc.cluster.local", "dev").map(|d| d.metadata.name.as_str()),
            Some("mesh")
        );
    }

    #[test]
    fn tm0106_istio_mutual_towards_disable_and_disable_towards_strict() {
        let docs = vec![
            ns("prod", true),
            strict_mesh(),
            we("prod", "legacy", "10.0.0.1", json!({"http": 8080})),
            se("prod", "legacy", 80),
            pa(
                "prod",
                "legacy-off",
                json!({"selector": {"matchLabels": {"app": "legacy"}}, "mtls": {"mode": "DISABLE"}}),
            ),
            dr(
                "prod",
                "legacy",
                "legacy",
                json!({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
            ),
            we("prod", "orders", "10.0.0.2", json!({"http": 8080})),
            se("prod", "orders", 8080),
            dr(
                "prod",
                "orders",
                "orders.prod.svc.cluster.local",
                json!({"trafficPolicy": {"portLevelSettings": [{"port": {"number": 8080}, "tls": {"mode": "DISABLE"}}]}}),
            ),
        ];
        let f = with(Code::DestinationTlsConflict, docs);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].resource, "DestinationRule prod/legacy");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].field.as_deref(), Some("spec.trafficPolicy.tls.mode"));
        assert!(f[0].message.contains("prod/legacy:8080 for legacy.prod.svc.cluster.local:80 (DISABLE by PeerAuthentication prod/legacy-off)"), "{}", f[0].message);
        assert_eq!(f[1].resource, "DestinationRule prod/orders");
        assert_eq!(
            f[1].field.as_deref(),
            Some("spec.trafficPolicy.portLevelSettings[0].tls.mode")
        );
        assert!(f[1].message.contains("requires mTLS"), "{}", f[1].message);
    }

    #[test]
    fn tm0106_not_reported_for_compatible_modes_or_auto_mtls() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.2", json!({"http": 8080})),
            se("prod", "orders", 8080),
            // "PERMISSIVE + DR DISABLE succeeds in plaintext".
            dr(
                "prod",
                "orders",
                "orders",
                json!({"trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            ),
            // A shadowed root rule is never used for orders.
            dr(
                "istio-system",
                "mesh",
                "*",
                json!({"trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            ),
            strict_mesh(),
            pa("prod", "ns", json!({"mtls": {"mode": "PERMISSIVE"}})),
        ];
        assert!(with(Code::DestinationTlsConflict, docs).is_empty());
    }

    #[test]
    fn tm0109_production_not_strict_with_port_exceptions_as_info() {
        let docs = vec![
            ns("production", true),
            ns("staging", true),
            strict_mesh(),
            we("production", "gw", "10.0.0.1", json!({"http": 8080})),
            we(
                "production",
                "orders",
                "10.0.0.2",
                json!({"http": 8080, "metrics": 9090}),
            ),
            pa(
                "production",
                "gw-edge",
                json!({"selector": {"matchLabels": {"app": "gw"}}, "mtls": {"mode": "PERMISSIVE"}}),
            ),
            pa(
                "production",
                "metrics",
                json!({"selector": {"matchLabels": {"app": "orders"}}, "portLevelMtls": {"9090": {"mode": "DISABLE"}}}),
            ),
            we("staging", "orders", "10.0.0.3", json!({"http": 8080})),
            pa(
                "staging",
                "default",
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            ),
        ];
        let f = with(Code::ProductionNotStrict, docs);
        let got: Vec<(&str, Severity, Option<&str>)> = f
            .iter()
            .map(|f| (f.resource.as_str(), f.severity, f.field.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "PeerAuthentication production/gw-edge",
                    Severity::Warning,
                    Some("spec.mtls.mode")
                ),
                (
                    "PeerAuthentication production/metrics",
                    Severity::Info,
                    Some("spec.portLevelMtls.9090")
                ),
            ]
        );
        assert!(
            f[0].message.contains("PERMISSIVE on production/gw:8080"),
            "{}",
            f[0].message
        );
        // Nothing applies: Istio's PERMISSIVE default, reported on the Namespace.
        let f = with(
            Code::ProductionNotStrict,
            vec![
                ns("prod", true),
                we("prod", "a", "10.0.0.1", json!({"http": 8080})),
            ],
        );
        assert_eq!(f[0].resource, "Namespace prod");
        assert!(
            f[0].message.contains("Istio's default is PERMISSIVE"),
            "{}",
            f[0].message
        );
    }
}
