//! Mesh-wide practices: TM0107/TM0108 (workloads outside injected, declared namespaces),
//! TM0110 (deny-by-default), TM0112 (certificate lifetimes), TM0113 (one ServiceAccount per
//! service), TM0114 (one trust domain per region).

use std::collections::{BTreeMap, BTreeSet};

use super::{Code, Cx, Finding, On, Severity, is_dry_run, key, list, policy_applies};
use crate::SpiffeId;
use crate::duration::GoDuration;
use crate::model::Kind;
use crate::model::certmanager::DEFAULT_CERTIFICATE_DURATION;
use crate::model::security::Action;
use crate::snapshot::Workload;

/// The workload certificate lifetime DESIGN.md fixes: "Workload certificates: 24 h".
const MAX_WORKLOAD_CERT_LIFETIME: GoDuration = GoDuration::from_hours(24);

pub(super) fn check(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    namespaces(cx, out);
    deny_by_default(cx, out);
    certificate_lifetimes(cx, out);
    shared_service_accounts(cx, out);
    trust_domains_per_region(cx, out);
}

fn by_namespace<'a>(cx: &Cx<'a>) -> BTreeMap<&'a str, Vec<&'a Workload>> {
    let mut m: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in cx.snap.workloads() {
        m.entry(w.namespace.as_str()).or_default().push(w);
    }
    m
}

fn names(ws: &[&Workload]) -> String {
    list(&ws.iter().map(|w| w.name.clone()).collect::<Vec<_>>())
}

/// The WorkloadEntry resource of a workload.
fn entry_of<'a>(
    cx: &Cx<'a>,
    w: &Workload,
) -> Option<&'a crate::snapshot::Sourced<crate::model::WorkloadEntry>> {
    cx.snap
        .workload_entries()
        .iter()
        .find(|we| we.metadata.namespace_str() == w.namespace && we.metadata.name == w.name)
}

/// TM0107, TM0108. "`Namespace` (labels such as `istio-injection: enabled`)" marks the
/// namespaces whose workloads get a proxy (DESIGN.md, Config); off Kubernetes a namespace
/// exists only as a Namespace resource.
fn namespaces(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    for (ns, ws) in by_namespace(cx) {
        match cx.snap.namespaces().iter().find(|n| n.metadata.name == ns) {
            Some(n) => {
                let label = n.metadata.labels.get("istio-injection").map(String::as_str);
                if label == Some("enabled") {
                    continue;
                }
                let now = match label {
                    Some(v) => format!("istio-injection is {v:?}"),
                    None => "it has no istio-injection label".to_owned(),
                };
                On::new(Kind::Namespace, n, out).push(
                    Code::NamespaceNotInjected,
                    Severity::Warning,
                    Some("metadata.labels".into()),
                    format!(
                        "namespace {ns} holds workloads ({}) but {now}: they get no proxy, so their traffic is neither mTLS nor checked by any policy",
                        names(&ws)
                    ),
                    format!("label the namespace istio-injection: enabled (kubectl label namespace {ns} istio-injection=enabled)"),
                );
            }
            None => {
                let Some(we) = ws.first().and_then(|w| entry_of(cx, w)) else {
                    continue;
                };
                On::new(Kind::WorkloadEntry, we, out).push(
                    Code::NamespaceUndeclared,
                    Severity::Warning,
                    Some("metadata.namespace".into()),
                    format!(
                        "namespace {ns} has no Namespace resource in this config, so nothing labels it istio-injection: enabled; its workloads ({}) get no proxy",
                        names(&ws)
                    ),
                    format!("add a Namespace {ns} labelled istio-injection: enabled"),
                );
            }
        }
    }
}

/// TM0110. "**No ALLOW policy applies to the workload** → allow" (§3.2); "`spec: {}` ...
/// = **allow-nothing** ... with no other matching ALLOW the workload is deny-by-default";
/// "Dry-run policies (§3.11) are excluded from all of the above". A DENY `rules: [{}]`
/// (deny-all) also leaves nothing open.
fn deny_by_default(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let root = cx.root();
    for (ns, ws) in by_namespace(cx) {
        let open: Vec<&Workload> =
            ws.iter()
                .copied()
                .filter(|w| {
                    !cx.snap.authorization_policies().iter().any(|ap| {
                        policy_applies(ap, w, root)
                            && !is_dry_run(ap)
                            && match ap.spec.action {
                                Action::Allow => true,
                                Action::Deny => ap.spec.rules().iter().any(|r| {
                                    r.from.is_none() && r.to.is_none() && r.when.is_empty()
                                }),
                                Action::Audit | Action::Custom => false,
                            }
                    })
                })
                .collect();
        if open.is_empty() {
            continue;
        }
        let message = format!(
            "no ALLOW policy applies to {} in namespace {ns}: every workload accepts any authenticated peer (and any plaintext client on ports that accept plaintext)",
            names(&open)
        );
        let fix = format!(
            "add an allow-nothing AuthorizationPolicy (spec: {{}}) in namespace {ns} (or in {root} for the whole mesh), then ALLOW only the callers each workload needs"
        );
        if let Some(n) = cx.snap.namespaces().iter().find(|n| n.metadata.name == ns) {
            On::new(Kind::Namespace, n, out).push(
                Code::NoDenyByDefault,
                Severity::Warning,
                None,
                message,
                fix,
            );
        } else if let Some(we) = open.first().and_then(|w| entry_of(cx, w)) {
            On::new(Kind::WorkloadEntry, we, out).push(
                Code::NoDenyByDefault,
                Severity::Warning,
                None,
                message,
                fix,
            );
        }
    }
}

/// TM0112. DESIGN.md: "Workload certificates: 24 h, renewed at 50 % of lifetime"; a
/// cert-manager `duration` defaults to "**90d** (`DefaultCertificateDuration = 2160h`)"
/// (§5.1), so a SPIFFE certificate without one lives 90 days.
fn certificate_lifetimes(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    for c in cx.snap.certificates() {
        if c.spec.is_ca {
            continue;
        }
        let Some(id) = c
            .spec
            .uris
            .iter()
            .find_map(|u| SpiffeId::parse(u).ok().filter(SpiffeId::is_workload))
        else {
            continue;
        };
        let duration = c.spec.duration.unwrap_or(DEFAULT_CERTIFICATE_DURATION);
        if duration <= MAX_WORKLOAD_CERT_LIFETIME {
            continue;
        }
        let how = if c.spec.duration.is_some() {
            format!("duration {duration}")
        } else {
            format!("no duration, so cert-manager's default {duration}")
        };
        On::new(Kind::Certificate, c, out).push(
            Code::LongCertificateLifetime,
            Severity::Warning,
            Some("spec.duration".into()),
            format!(
                "workload certificate for {id} has {how}; a stolen key stays valid that long (mesh workload certificates live 24h)"
            ),
            "set duration: 24h and renewBefore: 12h",
        );
    }
    if let Some(mc) = cx.snap.mesh_config()
        && let Some(ttl) = mc.spec.workload_cert_ttl
        && ttl > MAX_WORKLOAD_CERT_LIFETIME
    {
        On::new(Kind::MeshConfig, mc, out).push(
            Code::LongCertificateLifetime,
            Severity::Warning,
            Some("spec.workloadCertTTL".into()),
            format!(
                "workloadCertTTL {ttl} is over 24h: every workload certificate the mesh issues lives that long"
            ),
            "set workloadCertTTL: 24h (certificates renew at 50 %)",
        );
    }
}

/// TM0113. One identity per service: a ServiceAccount shared by several services makes
/// them indistinguishable to every policy (a principal names the account, not the service).
fn shared_service_accounts(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let snap = cx.snap;
    // identity → services, and the first workload holding it
    let mut services: BTreeMap<String, (BTreeSet<String>, Option<&Workload>)> = BTreeMap::new();
    for w in snap.workloads() {
        let entry = services.entry(w.identity.to_string()).or_default();
        entry.1.get_or_insert(w);
        let mut found = false;
        for se in snap.service_entries() {
            if snap.service_workloads(se).any(|x| std::ptr::eq(x, w)) {
                entry.0.insert(key(Kind::ServiceEntry, se));
                found = true;
            }
        }
        if !found && let Some(app) = w.labels.get("app") {
            entry.0.insert(format!("app={app}"));
        }
    }
    for (identity, (svcs, first)) in services {
        if svcs.len() < 2 {
            continue;
        }
        let Some(we) = first.and_then(|w| entry_of(cx, w)) else {
            continue;
        };
        let svcs: Vec<String> = svcs.into_iter().collect();
        On::new(Kind::WorkloadEntry, we, out).push(
            Code::SharedServiceAccount,
            Severity::Warning,
            Some("spec.serviceAccount".into()),
            format!(
                "{} services share the identity {identity}: {}; no policy can tell them apart, and compromising one is compromising all",
                svcs.len(),
                list(&svcs)
            ),
            "give each service its own serviceAccount",
        );
    }
}

/// The region of a workload: its network, else the first part of `locality`
/// (`region/zone/subzone`).
fn region(cx: &Cx<'_>, w: &Workload) -> Option<String> {
    if let Some(n) = &w.network {
        return Some(format!("network {n}"));
    }
    let we = entry_of(cx, w)?;
    let loc = we.spec.locality.as_deref()?;
    let r = loc.split('/').next().filter(|r| !r.is_empty())?;
    Some(format!("region {r}"))
}

/// TM0114. DESIGN.md: "Cross-region = each region its own trust domain and CA".
fn trust_domains_per_region(cx: &Cx<'_>, out: &mut Vec<Finding>) {
    let mut regions: BTreeSet<String> = BTreeSet::new();
    let mut tds: BTreeSet<&str> = BTreeSet::new();
    let mut first = None;
    for w in cx.snap.workloads() {
        if let Some(r) = region(cx, w) {
            regions.insert(r);
            tds.insert(w.trust_domain.as_str());
            first = first.or(Some(w));
        }
    }
    if regions.len() < 2 || tds.len() != 1 {
        return;
    }
    let td = tds.into_iter().next().unwrap_or_default();
    let regions: Vec<String> = regions.into_iter().collect();
    let message = format!(
        "workloads run in {} regions/networks ({}) but all share trust domain {td}: one CA compromise or misissued certificate is valid in every region",
        regions.len(),
        list(&regions)
    );
    let fix = "give each region its own trust domain (MeshConfig spec.networks.<network>.trustDomain) and exchange bundles with `trustmesh bundle`";
    if let Some(mc) = cx.snap.mesh_config() {
        On::new(Kind::MeshConfig, mc, out).push(
            Code::SharedTrustDomainAcrossRegions,
            Severity::Warning,
            Some("spec.networks".into()),
            message,
            fix,
        );
    } else if let Some(we) = first.and_then(|w| entry_of(cx, w)) {
        On::new(Kind::WorkloadEntry, we, out).push(
            Code::SharedTrustDomainAcrossRegions,
            Severity::Warning,
            None,
            message,
            fix,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{ap, ns, we, with};
    use super::*;

    fn cert(name: &str, spec: Value) -> Value {
        let mut spec = spec;
        spec["secretName"] = json!(format!("{name}-tls"));
        spec["issuerRef"] = json!({"name": "ca", "kind": "ClusterIssuer"});
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": name, "namespace": "prod"}, "spec": spec})
    }

    fn mesh(spec: Value) -> Value {
        json!({"apiVersion": "trustmesh.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh"}, "spec": spec})
    }

    #[test]
    fn tm0107_namespace_without_injection_label() {
        let docs = vec![
            ns("prod", false),
            we("prod", "orders", "10.0.0.1", json!({"http": 8080})),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy", "labels": {"istio-injection": "disabled"}}}),
            we("legacy", "old", "10.0.0.2", json!({})),
            ns("empty", false), // no workloads: nothing to say
            ns("good", true),
            we("good", "a", "10.0.0.3", json!({})),
        ];
        let f = with(Code::NamespaceNotInjected, docs);
        let got: Vec<&str> = f.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(got, ["Namespace prod", "Namespace legacy"]);
        assert!(
            f[0].message.contains("holds workloads (orders)"),
            "{}",
            f[0].message
        );
        assert!(
            f[1].message.contains("istio-injection is \"disabled\""),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn tm0108_workloads_in_undeclared_namespaces() {
        let docs = vec![
            ns("prod", true),
            we("prod", "orders", "10.0.0.1", json!({})),
            we("dev", "a", "10.0.0.2", json!({})),
            we("dev", "b", "10.0.0.3", json!({})),
        ];
        let f = with(Code::NamespaceUndeclared, docs);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "WorkloadEntry dev/a");
        assert_eq!(f[0].field.as_deref(), Some("metadata.namespace"));
        assert!(f[0].message.contains("(a, b)"), "{}", f[0].message);
    }

    #[test]
    fn tm0110_no_deny_by_default() {
        let docs = vec![
            ns("prod", true),
            ns("dev", true),
            ns("shop", true),
            we("prod", "orders", "10.0.0.1", json!({})),
            we("dev", "a", "10.0.0.2", json!({})),
            we("dev", "b", "10.0.0.3", json!({})),
            we("shop", "c", "10.0.0.4", json!({})),
            // allow-nothing covers prod.
            ap("prod", "allow-nothing", json!({})),
            // Only `a` has an ALLOW in dev.
            ap(
                "dev",
                "a-only",
                json!({"selector": {"matchLabels": {"app": "a"}}, "rules": [{}]}),
            ),
            // A dry-run ALLOW does not count.
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "dry", "namespace": "shop", "annotations": {"istio.io/dry-run": "true"}}, "spec": {}}),
        ];
        let f = with(Code::NoDenyByDefault, docs);
        let got: Vec<&str> = f.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(got, ["Namespace dev", "Namespace shop"]);
        assert!(
            f[0].message
                .contains("no ALLOW policy applies to b in namespace dev"),
            "{}",
            f[0].message
        );
        // A root-namespace allow-nothing covers every namespace; so does a DENY-all.
        let docs = vec![
            ns("dev", true),
            ns("shop", true),
            we("dev", "a", "10.0.0.2", json!({})),
            we("shop", "c", "10.0.0.4", json!({})),
            ap(
                "istio-system",
                "mesh-allow-nothing",
                json!({"selector": {"matchLabels": {"app": "a"}}}),
            ),
            ap("shop", "deny-all", json!({"action": "DENY", "rules": [{}]})),
        ];
        assert!(with(Code::NoDenyByDefault, docs).is_empty());
    }

    #[test]
    fn tm0112_certificate_lifetimes_over_24h() {
        let docs = vec![
            cert(
                "ok",
                json!({"duration": "24h", "uris": ["spiffe://cluster.local/ns/prod/sa/ok"]}),
            ),
            cert(
                "long",
                json!({"duration": "48h", "uris": ["spiffe://cluster.local/ns/prod/sa/long"]}),
            ),
            cert(
                "default",
                json!({"uris": ["spiffe://cluster.local/ns/prod/sa/d"]}),
            ),
            cert(
                "not-spiffe",
                json!({"duration": "2160h", "dnsNames": ["web.example"]}),
            ),
            cert(
                "root",
                json!({"isCA": true, "commonName": "root", "duration": "87600h", "uris": ["spiffe://cluster.local/ns/prod/sa/root"]}),
            ),
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "ca"}, "spec": {"selfSigned": {}}}),
            mesh(json!({"workloadCertTTL": "72h"})),
        ];
        let f = with(Code::LongCertificateLifetime, docs);
        let got: Vec<&str> = f.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(
            got,
            [
                "Certificate prod/long",
                "Certificate prod/default",
                "MeshConfig mesh"
            ]
        );
        assert!(
            f[1].message.contains("cert-manager's default 2160h0m0s"),
            "{}",
            f[1].message
        );
        assert_eq!(f[2].field.as_deref(), Some("spec.workloadCertTTL"));
    }

    #[test]
    fn tm0113_services_sharing_a_service_account() {
        let mut a = we("prod", "a", "10.0.0.1", json!({}));
        a["spec"]["serviceAccount"] = json!("shared");
        let mut b = we("prod", "b", "10.0.0.2", json!({}));
        b["spec"]["serviceAccount"] = json!("shared");
        let mut b2 = we("prod", "b2", "10.0.0.3", json!({}));
        b2["spec"]["serviceAccount"] = json!("solo");
        b2["spec"]["labels"] = json!({"app": "solo"});
        let mut b3 = we("prod", "b3", "10.0.0.4", json!({}));
        b3["spec"]["serviceAccount"] = json!("solo");
        b3["spec"]["labels"] = json!({"app": "solo"});
        let f = with(
            Code::SharedServiceAccount,
            vec![ns("prod", true), a, b, b2, b3],
        );
        // Two replicas of one app share an account legitimately; two apps do not.
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "WorkloadEntry prod/a");
        assert!(
            f[0].message
                .contains("spiffe://cluster.local/ns/prod/sa/shared: app=a, app=b"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn tm0114_regions_sharing_one_trust_domain() {
        let mut us = we("prod", "us", "10.0.0.1", json!({}));
        us["spec"]["locality"] = json!("us-east-1/a");
        let mut eu = we("prod", "eu", "10.0.0.2", json!({}));
        eu["spec"]["locality"] = json!("eu-west-1");
        // A workload without a region says nothing about regions.
        let plain = we("prod", "a-plain", "10.0.0.3", json!({}));
        let f = with(
            Code::SharedTrustDomainAcrossRegions,
            vec![ns("prod", true), plain, us.clone(), eu.clone()],
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "WorkloadEntry prod/eu");
        assert!(
            f[0].message.contains("region eu-west-1, region us-east-1"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains("trust domain cluster.local"),
            "{}",
            f[0].message
        );
        // Networks with their own trust domains: fine.
        us["spec"]["network"] = json!("us");
        eu["spec"]["network"] = json!("eu");
        let m = mesh(
            json!({"networks": {"us": {"trustDomain": "us.example"}, "eu": {"trustDomain": "eu.example"}}}),
        );
        assert!(
            with(
                Code::SharedTrustDomainAcrossRegions,
                vec![ns("prod", true), m, us, eu]
            )
            .is_empty()
        );
    }
}
