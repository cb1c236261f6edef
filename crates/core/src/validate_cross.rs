//! Rules that span resources, checked on the assembled [`Snapshot`] before it is released:
//! duplicate names, cert-manager references (issuer exists, CA secret produced by a CA
//! Certificate, one Certificate per Secret), WorkloadEntry addresses and networks,
//! PeerAuthentication scope conflicts, selectors that select nothing, and principals from
//! trust domains the mesh cannot authenticate.

use std::collections::{BTreeMap, BTreeSet};

use super::{Findings, Origin};
use crate::model::{Kind, Object, key};
use crate::snapshot::{IssuerOf, Snapshot, Sourced};

pub(crate) fn check(snap: &Snapshot, out: &mut Findings) {
    duplicates(snap, out);
    certificates(snap, out);
    ca_issuers(snap, out);
    workload_entries(snap, out);
    peer_authentication_scopes(snap, out);
    selectors(snap, out);
    namespaces_declared(snap, out);
    foreign_principals(snap, out);
}

fn at(origin: Option<&Origin>) -> String {
    origin.map(|o| format!(" at {o}")).unwrap_or_default()
}

/// "duplicate (kind, namespace, name) → error": lists are sorted stably by (namespace, name),
/// so a duplicate follows the first definition.
fn duplicates(snap: &Snapshot, out: &mut Findings) {
    fn dup<S>(kind: Kind, v: &[Sourced<Object<S>>], out: &mut Findings) {
        for pair in v.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.metadata.namespace == b.metadata.namespace && a.metadata.name == b.metadata.name {
                let k = key(kind, b);
                out.on(k.clone(), b.origin.as_ref()).error(
                    "metadata.name",
                    format!("duplicate {k}: already defined{}", at(a.origin.as_ref())),
                );
            }
        }
    }
    dup(Kind::Namespace, snap.namespaces(), out);
    dup(Kind::PeerAuthentication, snap.peer_authentications(), out);
    dup(
        Kind::AuthorizationPolicy,
        snap.authorization_policies(),
        out,
    );
    dup(Kind::DestinationRule, snap.destination_rules(), out);
    dup(Kind::WorkloadEntry, snap.workload_entries(), out);
    dup(Kind::ServiceEntry, snap.service_entries(), out);
    dup(Kind::Certificate, snap.certificates(), out);
    dup(Kind::Issuer, snap.issuers(), out);
    dup(Kind::ClusterIssuer, snap.cluster_issuers(), out);
}

fn certificates(snap: &Snapshot, out: &mut Findings) {
    let mut secrets: BTreeMap<(&str, &str), &Sourced<crate::model::Certificate>> = BTreeMap::new();
    for c in snap.certificates() {
        let mut cx = out.on(key(Kind::Certificate, c), c.origin.as_ref());
        let r = &c.spec.issuer_ref;
        // "`issuerRef` | Issuer must be in same ns; ClusterIssuer from any ns".
        if !r.name.is_empty()
            && r.group_or_default() == "cert-manager.io"
            && snap.issuer_of(c).is_none()
        {
            match r.kind_or_default() {
                "Issuer" => cx.error(
                    "spec.issuerRef.name",
                    format!("Issuer {:?} not found in namespace {} (an Issuer must be in the Certificate's namespace; use kind: ClusterIssuer for a cluster-wide one)", r.name, c.metadata.namespace_str()),
                ),
                "ClusterIssuer" => cx.error("spec.issuerRef.name", format!("ClusterIssuer {:?} not found", r.name)),
                _ => {}
            }
        }
        // Two Certificates writing one Secret overwrite each other forever.
        if !c.spec.secret_name.is_empty() {
            let k = (c.metadata.namespace_str(), c.spec.secret_name.as_str());
            if let Some(first) = secrets.get(&k) {
                cx.error(
                    "spec.secretName",
                    format!(
                        "Secret {:?} is already written by {}{}",
                        c.spec.secret_name,
                        key(Kind::Certificate, first),
                        at(first.origin.as_ref())
                    ),
                );
            } else {
                secrets.insert(k, c);
            }
        }
    }
}

/// "CA issuer's secretName must be produced by some Certificate in the folder": a CA issuer
/// reads `tls.crt`/`tls.key` from its Secret, "Ready=True reason `KeyPairVerified`... else
/// False `ErrGetKeyPair`/`ErrInvalidKeyPair` (incl. "certificate is not a CA")".
fn ca_issuers(snap: &Snapshot, out: &mut Findings) {
    let both = snap
        .issuers()
        .iter()
        .map(|i| (Kind::Issuer, IssuerOf::Namespaced(i)))
        .chain(
            snap.cluster_issuers()
                .iter()
                .map(|i| (Kind::ClusterIssuer, IssuerOf::Cluster(i))),
        );
    for (kind, iss) in both {
        let i = iss.issuer();
        let Some(ca) = &i.spec.ca else { continue };
        if ca.secret_name.is_empty() {
            continue;
        }
        let ns = iss.secret_namespace(snap.mesh());
        let producer = snap
            .certificates()
            .iter()
            .find(|c| c.metadata.namespace_str() == ns && c.spec.secret_name == ca.secret_name);
        let mut cx = out.on(key(kind, i), i.origin.as_ref());
        match producer {
            None => cx.warn(
                "spec.ca.secretName",
                format!("no Certificate in namespace {ns} writes Secret {:?}; the issuer is not Ready (ErrGetKeyPair) unless that key pair is provided", ca.secret_name),
            ),
            Some(c) if !c.spec.is_ca => cx.error(
                "spec.ca.secretName",
                format!("Secret {:?} is written by {}, which is not isCA: true (ErrInvalidKeyPair: certificate is not a CA)", ca.secret_name, key(Kind::Certificate, c)),
            ),
            Some(_) => {}
        }
    }
}

fn workload_entries(snap: &Snapshot, out: &mut Findings) {
    // trustmesh: each workload's proxy binds the WorkloadEntry address ("each workload gets its
    // own loopback address"), so two workloads cannot share one.
    let mut by_addr: BTreeMap<std::net::IpAddr, &crate::snapshot::Workload> = BTreeMap::new();
    for w in snap.workloads() {
        if let Some(first) = by_addr.get(&w.address) {
            out.on(
                format!("WorkloadEntry {}/{}", w.namespace, w.name),
                w.origin.as_ref(),
            )
            .error(
                "spec.address",
                format!(
                    "address {} is already used by WorkloadEntry {}/{}{}",
                    w.address,
                    first.namespace,
                    first.name,
                    at(first.origin.as_ref())
                ),
            );
        } else {
            by_addr.insert(w.address, w);
        }
    }
    for we in snap.workload_entries() {
        if let Some(net) = &we.spec.network
            && !snap.mesh().networks.contains_key(net)
        {
            out.on(key(Kind::WorkloadEntry, we), we.origin.as_ref()).warn(
                "spec.network",
                format!("network {net:?} is not declared in MeshConfig spec.networks; the workload gets the mesh trust domain {}", snap.mesh().trust_domain),
            );
        }
    }
}

/// "Root-namespace policies WITH a selector are ignored"; "Several candidates at one level →
/// oldest `metadata.creationTimestamp` wins; newer mesh/namespace-level ones are ignored with a
/// warning". Without timestamps (a folder), ties are broken by name, as Istio sorts.
fn peer_authentication_scopes(snap: &Snapshot, out: &mut Findings) {
    let root = snap.mesh().root_namespace.as_str();
    let mut unscoped: BTreeMap<&str, Vec<&Sourced<crate::model::PeerAuthentication>>> =
        BTreeMap::new();
    for pa in snap.peer_authentications() {
        let has_selector = pa
            .spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        let ns = pa.metadata.namespace_str();
        if has_selector && ns == root {
            out.on(key(Kind::PeerAuthentication, pa), pa.origin.as_ref()).warn(
                "spec.selector",
                "PeerAuthentication policies with workload selectors are ignored when deployed in the root namespace",
            );
        } else if !has_selector {
            unscoped.entry(ns).or_default().push(pa);
        }
    }
    for (ns, mut pas) in unscoped {
        if pas.len() < 2 {
            continue;
        }
        pas.sort_by_key(|p| {
            (
                p.metadata.creation_unix_seconds().unwrap_or(i64::MAX),
                p.metadata.name.clone(),
            )
        });
        let level = if ns == root { "mesh" } else { "namespace" };
        let winner = pas[0];
        for loser in &pas[1..] {
            out.on(key(Kind::PeerAuthentication, loser), loser.origin.as_ref())
                .warn(
                    "metadata.creationTimestamp",
                    format!(
                        "ignored: {} is the older {level}-level PeerAuthentication (oldest wins)",
                        key(Kind::PeerAuthentication, winner)
                    ),
                );
        }
    }
}

fn selectors(snap: &Snapshot, out: &mut Findings) {
    let root = snap.mesh().root_namespace.as_str();
    // Indexed by namespace: policies are checked against their own namespace's workloads.
    let mut by_ns: BTreeMap<&str, Vec<&crate::snapshot::Workload>> = BTreeMap::new();
    for w in snap.workloads() {
        by_ns.entry(w.namespace.as_str()).or_default().push(w);
    }
    let in_ns = |ns: &str| by_ns.get(ns).map_or(&[][..], Vec::as_slice);
    let any = |ns: Option<&str>, sel: &crate::model::LabelSelector| match ns {
        Some(ns) => in_ns(ns).iter().any(|w| sel.matches(&w.labels)),
        None => snap.select_workloads(None, sel).next().is_some(),
    };

    for pa in snap.peer_authentications() {
        let ns = pa.metadata.namespace_str();
        if let Some(sel) = &pa.spec.selector
            && !sel.match_labels.is_empty()
            && ns != root
            && !any(Some(ns), sel)
        {
            out.on(key(Kind::PeerAuthentication, pa), pa.origin.as_ref())
                .warn(
                    "spec.selector",
                    format!("selects no WorkloadEntry in namespace {ns}"),
                );
        }
    }
    for ap in snap.authorization_policies() {
        let ns = ap.metadata.namespace_str();
        // "in the root namespace it applies to all namespaces (selector, if any, is matched
        // against workloads in every namespace)".
        let scope = (ns != root).then_some(ns);
        if let Some(sel) = &ap.spec.selector
            && !sel.match_labels.is_empty()
            && !any(scope, sel)
        {
            let where_ =
                scope.map_or_else(|| "any namespace".to_owned(), |n| format!("namespace {n}"));
            out.on(key(Kind::AuthorizationPolicy, ap), ap.origin.as_ref())
                .warn(
                    "spec.selector",
                    format!("selects no WorkloadEntry in {where_}"),
                );
        }
    }
    for dr in snap.destination_rules() {
        let ns = dr.metadata.namespace_str();
        if let Some(sel) = &dr.spec.workload_selector
            && !sel.match_labels.is_empty()
            && !any(Some(ns), sel)
        {
            out.on(key(Kind::DestinationRule, dr), dr.origin.as_ref())
                .warn(
                    "spec.workloadSelector",
                    format!("selects no client WorkloadEntry in namespace {ns}"),
                );
        }
    }
    for se in snap.service_entries() {
        if let Some(sel) = &se.spec.workload_selector
            && !in_ns(se.metadata.namespace_str())
                .iter()
                .any(|w| crate::model::labels_subset(&sel.labels, &w.labels))
        {
            out.on(key(Kind::ServiceEntry, se), se.origin.as_ref())
                .warn(
                    "spec.workloadSelector",
                    format!(
                        "selects no WorkloadEntry in namespace {}; the service has no endpoints",
                        se.metadata.namespace_str()
                    ),
                );
        }
    }
}

/// Off Kubernetes a namespace exists only as a `Namespace` resource (its labels matter);
/// `default` always exists.
fn namespaces_declared(snap: &Snapshot, out: &mut Findings) {
    let declared: BTreeSet<&str> = snap
        .namespaces()
        .iter()
        .map(|n| n.metadata.name.as_str())
        .collect();
    if declared.is_empty() {
        return;
    }
    let mut warned = BTreeSet::new();
    let mut check = |kind: Kind,
                     meta: &crate::model::ObjectMeta,
                     origin: Option<&Origin>,
                     out: &mut Findings| {
        let ns = meta.namespace_str();
        if ns != crate::snapshot::DEFAULT_NAMESPACE
            && !declared.contains(ns)
            && warned.insert(ns.to_owned())
        {
            out.on(format!("{kind} {ns}/{}", meta.name), origin).warn(
                "metadata.namespace",
                format!("namespace {ns} has no Namespace resource in this config"),
            );
        }
    };
    for r in snap.peer_authentications() {
        check(
            Kind::PeerAuthentication,
            &r.metadata,
            r.origin.as_ref(),
            out,
        );
    }
    for r in snap.authorization_policies() {
        check(
            Kind::AuthorizationPolicy,
            &r.metadata,
            r.origin.as_ref(),
            out,
        );
    }
    for r in snap.destination_rules() {
        check(Kind::DestinationRule, &r.metadata, r.origin.as_ref(), out);
    }
    for r in snap.workload_entries() {
        check(Kind::WorkloadEntry, &r.metadata, r.origin.as_ref(), out);
    }
    for r in snap.service_entries() {
        check(Kind::ServiceEntry, &r.metadata, r.origin.as_ref(), out);
    }
    for r in snap.certificates() {
        check(Kind::Certificate, &r.metadata, r.origin.as_ref(), out);
    }
    for r in snap.issuers() {
        check(Kind::Issuer, &r.metadata, r.origin.as_ref(), out);
    }
}

/// "peers are verified against the trust bundle of the peer ID's trust domain": a principal
/// from a trust domain with no roots can never authenticate (digest §3.10: foreign TDs are
/// "kept as-is and match only peers from that TD").
fn foreign_principals(snap: &Snapshot, out: &mut Findings) {
    let known: BTreeSet<&str> = snap
        .mesh()
        .known_trust_domains()
        .into_iter()
        .map(|t| t.as_str())
        .collect();
    for ap in snap.authorization_policies() {
        for (ri, rule) in ap.spec.rules().iter().enumerate() {
            for (fi, from) in rule.from.iter().flatten().enumerate() {
                let Some(src) = &from.source else { continue };
                for (name, values) in [
                    ("principals", &src.principals),
                    ("notPrincipals", &src.not_principals),
                ] {
                    for (i, p) in values.iter().enumerate() {
                        let parts: Vec<&str> = p.split('/').collect();
                        // Only exact 5-part principals name a trust domain (§3.10); `cluster.local`
                        // always means "ours".
                        if parts.len() != 5
                            || parts[0].contains('*')
                            || parts[0] == "cluster.local"
                            || p.starts_with("spiffe:")
                        {
                            continue;
                        }
                        if !known.contains(parts[0]) {
                            out.on(key(Kind::AuthorizationPolicy, ap), ap.origin.as_ref()).warn(
                                format!("spec.rules[{ri}].from[{fi}].source.{name}[{i}]"),
                                format!(
                                    "trust domain {} is neither the mesh's, an alias, a network's nor one with caCertificates: no peer from it can authenticate",
                                    parts[0]
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    // DestinationRule subjectAltNames naming SPIFFE IDs of unknown trust domains.
    for dr in snap.destination_rules() {
        let Some(tls) = dr.spec.traffic_policy.as_ref().and_then(|t| t.tls.as_ref()) else {
            continue;
        };
        if tls.mode != crate::model::networking::TlsMode::IstioMutual {
            continue;
        }
        for (i, san) in tls.subject_alt_names.iter().enumerate() {
            if let Ok(id) = crate::SpiffeId::parse(san)
                && !known.contains(id.trust_domain_str())
            {
                out.on(key(Kind::DestinationRule, dr), dr.origin.as_ref()).warn(
                    format!("spec.trafficPolicy.tls.subjectAltNames[{i}]"),
                    format!("trust domain {} has no roots in this mesh: the server can never be verified", id.trust_domain_str()),
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use crate::model::{Kind, Resource};
    use crate::snapshot::{Snapshot, Sourced};
    use crate::validate::{Findings, Origin, ValidationWarning};

    fn r(kind: Kind, ns: Option<&str>, name: &str, spec: Value) -> Sourced<Resource> {
        let api = kind.api_versions()[0];
        let mut meta = json!({"name": name});
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        let object = Resource::deserialize_as(
            kind,
            json!({"apiVersion": api, "kind": kind.as_str(), "metadata": meta, "spec": spec}),
        )
        .unwrap();
        Sourced {
            origin: Some(Origin {
                file: format!("{name}.yaml"),
                line: 1,
            }),
            object,
        }
    }

    fn build(rs: Vec<Sourced<Resource>>) -> Result<(Snapshot, Vec<ValidationWarning>), Findings> {
        Snapshot::build(rs)
    }

    fn errs(rs: Vec<Sourced<Resource>>) -> Vec<String> {
        build(rs)
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn warns(rs: Vec<Sourced<Resource>>) -> Vec<String> {
        build(rs).unwrap().1.iter().map(|e| e.to_string()).collect()
    }

    #[track_caller]
    fn has(list: &[String], needle: &str) {
        assert!(
            list.iter().any(|l| l.contains(needle)),
            "expected {needle:?} in {list:#?}"
        );
    }

    fn we(ns: &str, name: &str, addr: &str, app: &str) -> Sourced<Resource> {
        r(
            Kind::WorkloadEntry,
            Some(ns),
            name,
            json!({"address": addr, "serviceAccount": name, "labels": {"app": app}, "ports": {"http": 8080}}),
        )
    }

    #[test]
    fn duplicate_kind_namespace_name_is_an_error() {
        // "duplicate (kind, namespace, name) → error"; v1 and v1beta1 are one kind.
        let a = r(Kind::AuthorizationPolicy, Some("prod"), "p", json!({}));
        let mut b = r(Kind::AuthorizationPolicy, Some("prod"), "p", json!({}));
        b.origin = Some(Origin {
            file: "b.yaml".into(),
            line: 7,
        });
        let e = errs(vec![a, b]);
        assert_eq!(
            e,
            [
                "AuthorizationPolicy prod/p: metadata.name: duplicate AuthorizationPolicy prod/p: already defined at p.yaml:1"
            ]
        );
        // Same name in another namespace or another kind is fine.
        build(vec![
            r(Kind::AuthorizationPolicy, Some("prod"), "p", json!({})),
            r(Kind::AuthorizationPolicy, Some("dev"), "p", json!({})),
            r(Kind::PeerAuthentication, Some("prod"), "p", json!({})),
        ])
        .unwrap();
    }

    #[test]
    fn missing_namespace_defaults_to_default_and_cluster_scoped_have_none() {
        // "resources whose namespace is missing default to `default` (like kubectl)"; a
        // duplicate only shows once both are in `default`.
        let e = errs(vec![
            r(Kind::DestinationRule, None, "d", json!({"host": "a"})),
            r(
                Kind::DestinationRule,
                Some("default"),
                "d",
                json!({"host": "a"}),
            ),
        ]);
        has(&e, "duplicate DestinationRule default/d");
        let (snap, _) = build(vec![
            r(Kind::ClusterIssuer, None, "ca", json!({"selfSigned": {}})),
            r(Kind::DestinationRule, None, "d", json!({"host": "a"})),
        ])
        .unwrap();
        assert_eq!(snap.cluster_issuers()[0].metadata.namespace, None);
        assert_eq!(
            snap.destination_rules()[0].metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn at_most_one_mesh_config() {
        let e = errs(vec![
            r(Kind::MeshConfig, None, "a", json!({})),
            r(Kind::MeshConfig, None, "b", json!({})),
        ]);
        has(
            &e,
            "MeshConfig b: metadata.name: a config holds at most one MeshConfig; a is already defined (defined at a.yaml:1)",
        );
    }

    fn cert(
        ns: &str,
        name: &str,
        issuer_kind: &str,
        issuer: &str,
        secret: &str,
        is_ca: bool,
    ) -> Sourced<Resource> {
        r(
            Kind::Certificate,
            Some(ns),
            name,
            json!({"secretName": secret, "isCA": is_ca, "commonName": name, "issuerRef": {"name": issuer, "kind": issuer_kind}}),
        )
    }

    #[test]
    fn referenced_issuer_must_exist_issuer_in_same_namespace() {
        // "an Issuer referenced by a Certificate must exist in the same namespace, ClusterIssuer anywhere".
        let e = errs(vec![
            r(Kind::Issuer, Some("a"), "local", json!({"selfSigned": {}})),
            cert("b", "c1", "Issuer", "local", "s1", false),
            cert("b", "c2", "ClusterIssuer", "missing", "s2", false),
        ]);
        has(
            &e,
            "Certificate b/c1: spec.issuerRef.name: Issuer \"local\" not found in namespace b",
        );
        has(
            &e,
            "Certificate b/c2: spec.issuerRef.name: ClusterIssuer \"missing\" not found",
        );
        build(vec![
            r(Kind::Issuer, Some("a"), "local", json!({"selfSigned": {}})),
            cert("a", "c1", "Issuer", "local", "s1", false),
        ])
        .unwrap();
    }

    #[test]
    fn ca_issuer_secret_must_come_from_a_ca_certificate() {
        // The canonical bootstrap: "SelfSigned (Cluster)Issuer → Certificate{isCA: true, secretName: root}
        // → CA Issuer `ca.secretName: root` → leaf Certificates"; ClusterIssuers read Secrets
        // from the cluster resource namespace.
        let ok = vec![
            r(
                Kind::ClusterIssuer,
                None,
                "selfsigned",
                json!({"selfSigned": {}}),
            ),
            cert(
                "cert-manager",
                "root",
                "ClusterIssuer",
                "selfsigned",
                "root-ca",
                true,
            ),
            r(
                Kind::ClusterIssuer,
                None,
                "ca",
                json!({"ca": {"secretName": "root-ca"}}),
            ),
            cert("prod", "leaf", "ClusterIssuer", "ca", "leaf-tls", false),
        ];
        let (snap, w) = build(ok).unwrap();
        assert!(w.is_empty(), "{w:#?}");
        let leaf = &snap.certificates()[1];
        assert_eq!(snap.issuer_of(leaf).unwrap().issuer().metadata.name, "ca");
        // Not produced at all → warning; produced by a non-CA → error.
        let w = warns(vec![r(
            Kind::ClusterIssuer,
            None,
            "ca",
            json!({"ca": {"secretName": "root-ca"}}),
        )]);
        has(
            &w,
            "no Certificate in namespace cert-manager writes Secret \"root-ca\"",
        );
        let e = errs(vec![
            r(
                Kind::ClusterIssuer,
                None,
                "selfsigned",
                json!({"selfSigned": {}}),
            ),
            cert(
                "cert-manager",
                "root",
                "ClusterIssuer",
                "selfsigned",
                "root-ca",
                false,
            ),
            r(
                Kind::ClusterIssuer,
                None,
                "ca",
                json!({"ca": {"secretName": "root-ca"}}),
            ),
        ]);
        has(&e, "certificate is not a CA");
    }

    #[test]
    fn one_certificate_per_secret() {
        let e = errs(vec![
            r(Kind::ClusterIssuer, None, "ss", json!({"selfSigned": {}})),
            cert("prod", "a", "ClusterIssuer", "ss", "tls", false),
            cert("prod", "b", "ClusterIssuer", "ss", "tls", false),
        ]);
        has(
            &e,
            "Certificate prod/b: spec.secretName: Secret \"tls\" is already written by Certificate prod/a",
        );
    }

    #[test]
    fn workloads_get_identities_from_their_network() {
        // "a WorkloadEntry whose `network` names a network gets that trust domain".
        let mesh = r(
            Kind::MeshConfig,
            None,
            "mesh",
            json!({"trustDomain": "us.cluster.local", "networks": {"eu": {"trustDomain": "eu.cluster.local"}}}),
        );
        let mut eu = we("default", "reporting", "127.0.1.5", "reporting");
        if let Resource::WorkloadEntry(w) = &mut eu.object {
            w.spec.network = Some("eu".into());
        }
        let mut nosa = we("production", "orders", "127.0.1.3", "orders");
        if let Resource::WorkloadEntry(w) = &mut nosa.object {
            w.spec.service_account = None;
        }
        let (snap, w) = build(vec![mesh, eu, nosa]).unwrap();
        assert!(w.is_empty(), "{w:#?}");
        let ids: Vec<&str> = snap
            .workloads()
            .iter()
            .map(|w| w.identity.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://eu.cluster.local/ns/default/sa/reporting",
                "spiffe://us.cluster.local/ns/production/sa/default"
            ]
        );
        assert_eq!(
            snap.workload_by_address("127.0.1.3".parse().unwrap())
                .unwrap()
                .name,
            "orders"
        );
    }

    #[test]
    fn workload_addresses_are_unique_and_networks_declared() {
        let e = errs(vec![
            we("a", "x", "127.0.1.2", "x"),
            we("b", "y", "127.0.1.2", "y"),
        ]);
        has(
            &e,
            "WorkloadEntry b/y: spec.address: address 127.0.1.2 is already used by WorkloadEntry a/x at x.yaml:1",
        );
        let mut w = we("a", "x", "127.0.1.2", "x");
        if let Resource::WorkloadEntry(o) = &mut w.object {
            o.spec.network = Some("mars".into());
        }
        has(&warns(vec![w]), "network \"mars\" is not declared");
    }

    #[test]
    fn peer_authentication_scope_rules() {
        // "Root-namespace policies WITH a selector are ignored".
        let w = warns(vec![
            we("prod", "api", "127.0.1.2", "api"),
            r(
                Kind::PeerAuthentication,
                Some("istio-system"),
                "sel",
                json!({"selector": {"matchLabels": {"app": "api"}}}),
            ),
        ]);
        has(&w, "ignored when deployed in the root namespace");
        // "Several candidates at one level → oldest `metadata.creationTimestamp` wins".
        let mut newer = r(
            Kind::PeerAuthentication,
            Some("prod"),
            "a-newer",
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        );
        newer.object.meta_mut().creation_timestamp = Some("2024-02-01T00:00:00Z".into());
        let mut older = r(
            Kind::PeerAuthentication,
            Some("prod"),
            "b-older",
            json!({"mtls": {"mode": "STRICT"}}),
        );
        older.object.meta_mut().creation_timestamp = Some("2024-01-01T00:00:00Z".into());
        let w = warns(vec![newer, older]);
        has(
            &w,
            "PeerAuthentication prod/a-newer: metadata.creationTimestamp: ignored: PeerAuthentication prod/b-older is the older namespace-level",
        );
    }

    #[test]
    fn selectors_that_select_nothing_warn() {
        let w = warns(vec![
            we("prod", "api", "127.0.1.2", "api"),
            r(
                Kind::AuthorizationPolicy,
                Some("prod"),
                "hit",
                json!({"selector": {"matchLabels": {"app": "api"}}}),
            ),
            r(
                Kind::AuthorizationPolicy,
                Some("prod"),
                "miss",
                json!({"selector": {"matchLabels": {"app": "nope"}}}),
            ),
            r(
                Kind::AuthorizationPolicy,
                Some("istio-system"),
                "root-hit",
                json!({"selector": {"matchLabels": {"app": "api"}}}),
            ),
            r(
                Kind::PeerAuthentication,
                Some("prod"),
                "pa-miss",
                json!({"selector": {"matchLabels": {"app": "nope"}}}),
            ),
            r(
                Kind::ServiceEntry,
                Some("prod"),
                "se-miss",
                json!({"hosts": ["x"], "workloadSelector": {"labels": {"app": "nope"}}}),
            ),
            r(
                Kind::DestinationRule,
                Some("prod"),
                "dr-miss",
                json!({"host": "x", "workloadSelector": {"matchLabels": {"app": "nope"}}}),
            ),
        ]);
        has(
            &w,
            "AuthorizationPolicy prod/miss: spec.selector: selects no WorkloadEntry in namespace prod",
        );
        has(
            &w,
            "PeerAuthentication prod/pa-miss: spec.selector: selects no WorkloadEntry",
        );
        has(
            &w,
            "ServiceEntry prod/se-miss: spec.workloadSelector: selects no WorkloadEntry",
        );
        has(
            &w,
            "DestinationRule prod/dr-miss: spec.workloadSelector: selects no client",
        );
        assert!(
            !w.iter()
                .any(|l| l.contains("prod/hit") || l.contains("root-hit")),
            "{w:#?}"
        );
        let (snap, _) = build(vec![
            we("prod", "api", "127.0.1.2", "api"),
            r(
                Kind::ServiceEntry,
                Some("prod"),
                "se",
                json!({"hosts": ["api.prod"], "workloadSelector": {"labels": {"app": "api"}}}),
            ),
        ])
        .unwrap();
        let se = &snap.service_entries()[0];
        assert_eq!(snap.service_workloads(se).count(), 1);
        assert_eq!(
            snap.service_entry_for_host("API.prod")
                .unwrap()
                .metadata
                .name,
            "se"
        );
    }

    #[test]
    fn undeclared_namespaces_warn_once() {
        let w = warns(vec![
            r(Kind::Namespace, None, "prod", json!({})),
            r(
                Kind::DestinationRule,
                Some("staging"),
                "a",
                json!({"host": "a"}),
            ),
            r(
                Kind::DestinationRule,
                Some("staging"),
                "b",
                json!({"host": "b"}),
            ),
            r(Kind::DestinationRule, None, "c", json!({"host": "c"})),
        ]);
        assert_eq!(
            w,
            [
                "DestinationRule staging/a: metadata.namespace: namespace staging has no Namespace resource in this config"
            ]
        );
    }

    #[test]
    fn principals_from_unknown_trust_domains_warn() {
        let mesh = r(
            Kind::MeshConfig,
            None,
            "mesh",
            json!({"trustDomain": "us.cluster.local", "networks": {"eu": {"trustDomain": "eu.cluster.local"}}}),
        );
        let ap = r(
            Kind::AuthorizationPolicy,
            Some("default"),
            "p",
            json!({"rules": [{"from": [{"source": {"principals": [
            "eu.cluster.local/ns/default/sa/*", "us.cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", "asia.cluster.local/ns/a/sa/b", "*"]}}]}]}),
        );
        let w = warns(vec![mesh, ap]);
        assert_eq!(w.len(), 1, "{w:#?}");
        has(
            &w,
            "principals[3]: trust domain asia.cluster.local is neither",
        );
    }
}
