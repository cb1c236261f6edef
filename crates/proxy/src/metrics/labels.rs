//! The label values of Istio's standard metrics, computed once and shared: per config
//! version a [`ViewLabels`] (this workload, every identity of the snapshot, this workload's
//! services), per client identity and port (inbound) or per route and peer (outbound) a
//! [`Base`] holding the 20 labels that do not change from one request to the next.
//!
//! docs/metrics.md: "Unknown values are `unknown`; a missing canonical revision is
//! `latest`." "`source_*` on `reporter="destination"` comes from the verified peer
//! certificate (the workload name and app/version only when the peer is a known workload of
//! the snapshot); with a plaintext peer every `source_*` is `unknown`." "`source_cluster` /
//! `destination_cluster` are the trust domain's network (`us`, `eu`) from MeshConfig
//! `networks`, else `unknown`."
//!
//! What is not here: the series under a base (`series`), when they are counted
//! (`exchange`, `inbound`, `outbound`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{CompiledPolicies, Decision, Outcome, ShadowResult};
use trustmesh_core::destination::DNS_DOMAIN;
use trustmesh_core::model::ServiceEntry;
use trustmesh_core::snapshot::{MeshSettings, Snapshot, Workload};
use trustmesh_metrics::Counter;

use super::series::{BASES_CACHE, Base, Families, Reporter, SERIES_CACHE, Security, lock};
use crate::inbound::protocol::target_port;

/// The value of a label the proxy does not know.
pub const UNKNOWN: &str = "unknown";
/// `*_canonical_revision` of a known workload without the label.
pub const LATEST: &str = "latest";

/// WorkloadEntry label naming the canonical service.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// WorkloadEntry label naming the canonical revision.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// One end of a connection, as the `source_*` / `destination_*` labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLabels {
    /// `*_workload`.
    pub workload: Arc<str>,
    /// `*_workload_namespace`.
    pub namespace: Arc<str>,
    /// `*_principal`: the full SPIFFE URI.
    pub principal: Arc<str>,
    /// `*_app`.
    pub app: Arc<str>,
    /// `*_version`.
    pub version: Arc<str>,
    /// `*_canonical_service`.
    pub canonical_service: Arc<str>,
    /// `*_canonical_revision`.
    pub canonical_revision: Arc<str>,
    /// `*_cluster`.
    pub cluster: Arc<str>,
}

impl PeerLabels {
    /// Every value `unknown` (a plaintext peer).
    pub fn unknown(u: &Arc<str>) -> Self {
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u.clone(),
        }
    }
}

/// `destination_service`, `destination_service_name`, `destination_service_namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLabels {
    /// The service host.
    pub host: Arc<str>,
    /// Its short name.
    pub name: Arc<str>,
    /// The ServiceEntry's namespace.
    pub namespace: Arc<str>,
}

impl ServiceLabels {
    /// No service known.
    pub fn unknown(u: &Arc<str>) -> Self {
        Self {
            host: u.clone(),
            name: u.clone(),
            namespace: u.clone(),
        }
    }

    /// `host` declared by a ServiceEntry in `namespace` (`None`: no ServiceEntry declares
    /// it). The name is the Kubernetes service name when the host is
    /// `<name>.<namespace>.svc.cluster.local`, else the host itself (Istio's
    /// `ServiceAttributes.Name` of a ServiceEntry host).
    pub fn of(host: &str, namespace: Option<&str>, u: &Arc<str>) -> Self {
        let Some(ns) = namespace else {
            return Self {
                host: host.into(),
                name: u.clone(),
                namespace: u.clone(),
            };
        };
        let kube_name = host
            .strip_suffix(DNS_DOMAIN)
            .and_then(|h| h.strip_suffix(".svc."))
            .and_then(|h| h.strip_suffix(ns))
            .and_then(|h| h.strip_suffix('.'))
            .filter(|n| !n.is_empty() && !n.contains('.'));
        Self {
            host: host.into(),
            name: kube_name.unwrap_or(host).into(),
            namespace: ns.into(),
        }
    }
}

/// The bases of one inbound port.
#[derive(Debug, Default)]
struct PortBases {
    plaintext: Option<Arc<Base>>,
    by_peer: HashMap<Box<str>, Arc<Base>>,
}

/// One `trustmesh_authz_decisions_total` series already looked up.
#[derive(Debug)]
struct AuthzEntry {
    policy: Option<Arc<str>>,
    action: &'static str,
    allowed: bool,
    dry_run: bool,
    counter: Arc<Counter>,
}

/// Everything one config version says about label values.
#[derive(Debug)]
pub struct ViewLabels {
    families: Arc<Families>,
    unknown: Arc<str>,
    /// This proxy's workload.
    own: PeerLabels,
    /// SPIFFE URI → the labels of the workloads holding that identity.
    identities: HashMap<Box<str>, PeerLabels>,
    /// Trust domain → its network, where MeshConfig `networks` names exactly one.
    networks: HashMap<Box<str>, Arc<str>>,
    /// This workload's ports → the service it serves there.
    own_services: HashMap<u16, ServiceLabels>,
    inbound: Mutex<HashMap<u16, PortBases>>,
    authz: Mutex<Vec<AuthzEntry>>,
    no_route: OnceLock<Arc<RouteLabels>>,
}

impl ViewLabels {
    /// Before any config: every value unknown.
    pub fn empty(families: Arc<Families>) -> Self {
        let unknown: Arc<str> = Arc::from(UNKNOWN);
        Self {
            families,
            own: PeerLabels::unknown(&unknown),
            unknown,
            identities: HashMap::new(),
            networks: HashMap::new(),
            own_services: HashMap::new(),
            inbound: Mutex::new(HashMap::new()),
            authz: Mutex::new(Vec::new()),
            no_route: OnceLock::new(),
        }
    }

    /// The labels of `snapshot` for the proxy of `own`.
    pub fn new(families: Arc<Families>, snapshot: &Snapshot, own: &Workload) -> Self {
        let mut v = Self::empty(families);
        v.networks = networks(snapshot.mesh());
        let mut by_id: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
        for w in snapshot.workloads() {
            by_id.entry(w.identity.as_str()).or_default().push(w);
        }
        v.identities = by_id
            .into_iter()
            .map(|(id, ws)| (Box::from(id), v.workloads_labels(&ws)))
            .collect();
        v.own = v.workloads_labels(&[own]);
        v.own_services = own
            .ports
            .values()
            .map(|p| (*p, v.inbound_service(snapshot, own, *p)))
            .collect();
        v
    }

    /// The labels of the workloads holding one identity. The workload name "only when the
    /// snapshot has exactly one workload with that identity"; app, version, canonical
    /// service and revision when they all agree.
    fn workloads_labels(&self, ws: &[&Workload]) -> PeerLabels {
        let u = &self.unknown;
        let Some(first) = ws.first() else {
            return PeerLabels::unknown(u);
        };
        let agreed = |f: &dyn Fn(&Workload) -> Option<String>| -> Arc<str> {
            let v = f(first);
            if ws.iter().all(|w| f(w) == v) {
                v.map_or_else(|| u.clone(), Arc::from)
            } else {
                u.clone()
            }
        };
        let label = |w: &Workload, k: &str| w.labels.get(k).cloned();
        PeerLabels {
            workload: if ws.len() == 1 {
                first.name.as_str().into()
            } else {
                u.clone()
            },
            namespace: agreed(&|w| Some(w.namespace.clone())),
            principal: first.identity.as_str().into(),
            app: agreed(&|w| label(w, "app")),
            version: agreed(&|w| label(w, "version")),
            // Istio's canonical service: the label, else `app`, else the workload name.
            canonical_service: agreed(&|w| {
                label(w, CANONICAL_NAME_LABEL)
                    .or_else(|| label(w, "app"))
                    .or_else(|| Some(w.name.clone()))
            }),
            canonical_revision: agreed(&|w| {
                label(w, CANONICAL_REVISION_LABEL).or_else(|| Some(LATEST.to_owned()))
            }),
            cluster: self.cluster_of(first.identity.trust_domain_str()),
        }
    }

    fn cluster_of(&self, trust_domain: &str) -> Arc<str> {
        self.networks
            .get(trust_domain)
            .cloned()
            .unwrap_or_else(|| self.unknown.clone())
    }

    /// The labels of a peer: a verified identity (known to the snapshot or not), or none.
    pub fn peer(&self, id: Option<&SpiffeId>) -> PeerLabels {
        let Some(id) = id else {
            return PeerLabels::unknown(&self.unknown);
        };
        if let Some(known) = self.identities.get(id.as_str()) {
            return known.clone();
        }
        let u = &self.unknown;
        PeerLabels {
            workload: u.clone(),
            namespace: id.namespace().map_or_else(|| u.clone(), Arc::from),
            principal: id.as_str().into(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: self.cluster_of(id.trust_domain_str()),
        }
    }

    /// The service this workload serves on `port`: the first ServiceEntry selecting it with
    /// a port that reaches `port`, else the first ServiceEntry selecting it at all.
    fn inbound_service(&self, snapshot: &Snapshot, own: &Workload, port: u16) -> ServiceLabels {
        let selecting: Vec<&ServiceEntry> = snapshot
            .service_entries()
            .iter()
            .map(|s| &s.object)
            .filter(|se| {
                snapshot
                    .service_workloads(se)
                    .any(|x| x.namespace == own.namespace && x.name == own.name)
            })
            .collect();
        let on_port = selecting.iter().find(|se| {
            se.spec
                .ports
                .iter()
                .any(|sp| target_port(own, sp) == Some(port))
        });
        match on_port.or(selecting.first()) {
            Some(se) => match se.spec.hosts.first() {
                Some(h) => ServiceLabels::of(
                    &h.to_ascii_lowercase(),
                    Some(se.metadata.namespace_str()),
                    &self.unknown,
                ),
                None => ServiceLabels::unknown(&self.unknown),
            },
            None => ServiceLabels::unknown(&self.unknown),
        }
    }

    /// The base of inbound connections on `port` from `peer` (`None`: plaintext).
    pub fn inbound(&self, peer: Option<&SpiffeId>, port: u16) -> Arc<Base> {
        let mut ports = lock(&self.inbound);
        let bases = ports.entry(port).or_default();
        let new = |security| {
            let service = self
                .own_services
                .get(&port)
                .cloned()
                .unwrap_or_else(|| ServiceLabels::unknown(&self.unknown));
            Arc::new(Base::new(
                self.families.clone(),
                Reporter::Destination,
                &self.peer(peer),
                &self.own,
                &service,
                security,
            ))
        };
        match peer {
            None => bases
                .plaintext
                .get_or_insert_with(|| new(Security::None))
                .clone(),
            Some(id) => {
                if let Some(b) = bases.by_peer.get(id.as_str()) {
                    return b.clone();
                }
                let b = new(Security::MutualTls);
                if bases.by_peer.len() >= BASES_CACHE {
                    bases.by_peer.clear();
                }
                bases.by_peer.insert(id.as_str().into(), b.clone());
                b
            }
        }
    }

    /// The labels of outbound traffic to `service`.
    pub fn route(self: &Arc<Self>, service: ServiceLabels) -> Arc<RouteLabels> {
        Arc::new(RouteLabels {
            view: self.clone(),
            service,
            bases: Mutex::new(Vec::new()),
        })
    }

    /// The labels of outbound traffic to a host this proxy cannot name (a request without
    /// a target).
    pub fn no_route(self: &Arc<Self>) -> Arc<RouteLabels> {
        self.no_route
            .get_or_init(|| self.route(ServiceLabels::unknown(&self.unknown)))
            .clone()
    }

    /// The service labels of outbound traffic to `host`, declared by a ServiceEntry in
    /// `se_namespace` (when not given, the ServiceEntry of `snapshot` declaring it, if any).
    pub fn service(
        &self,
        snapshot: &Snapshot,
        host: &str,
        se_namespace: Option<&str>,
    ) -> ServiceLabels {
        let ns = se_namespace.or_else(|| {
            snapshot
                .service_entry_for_host(host)
                .map(|se| se.metadata.namespace_str())
        });
        self.service_of(host, ns)
    }

    /// The service labels of `host` declared in `se_namespace` (`None`: by no ServiceEntry).
    pub fn service_of(&self, host: &str, se_namespace: Option<&str>) -> ServiceLabels {
        ServiceLabels::of(host, se_namespace, &self.unknown)
    }

    /// Counts one authorization decision, and one sample per dry-run policy attached.
    pub fn count_decision(&self, d: &Decision, policies: &CompiledPolicies) {
        self.authz_counter(
            d.policy.as_ref(),
            decision_action(d, policies),
            d.allowed,
            false,
        )
        .inc();
        for dry in &d.dry_run {
            self.authz_counter(
                Some(&dry.policy),
                dry.action.as_str(),
                dry.result == ShadowResult::Allowed,
                true,
            )
            .inc();
        }
    }

    fn authz_counter(
        &self,
        policy: Option<&Arc<str>>,
        action: &'static str,
        allowed: bool,
        dry_run: bool,
    ) -> Arc<Counter> {
        let mut cache = lock(&self.authz);
        let same = |e: &AuthzEntry| {
            e.action == action
                && e.allowed == allowed
                && e.dry_run == dry_run
                && e.policy.as_deref() == policy.map(|p| &**p)
        };
        if let Some(e) = cache.iter().find(|e| same(e)) {
            return e.counter.clone();
        }
        let counter = self.families.authz.get(&[
            &self.own.workload,
            &self.own.namespace,
            policy.map_or("none", |p| &**p),
            action,
            if allowed { "allow" } else { "deny" },
            if dry_run { "true" } else { "false" },
        ]);
        if cache.len() < SERIES_CACHE {
            cache.push(AuthzEntry {
                policy: policy.cloned(),
                action,
                allowed,
                dry_run,
                counter: counter.clone(),
            });
        }
        counter
    }
}

/// The `action` of the policy that decided, from the evaluation order of
/// `trustmesh_core::authz`: a CUSTOM or DENY policy that matched denies (its action), an
/// ALLOW policy that matched allows (`ALLOW`); "No ALLOW policy applies to the workload →
/// allow" (`NONE`: no policy decided); "Otherwise deny" (`ALLOW`, with `policy="none"`: the
/// ALLOW policies decided, none of them matched, as Envoy's RBAC reports
/// `matched_policy[none]`). A normalization rejection (400) and a PeerAuthentication mode
/// rejection decide before any AuthorizationPolicy: `NONE`.
pub fn decision_action(d: &Decision, policies: &CompiledPolicies) -> &'static str {
    match (d.outcome, &d.policy) {
        (Outcome::BadRequest | Outcome::ConnectionRejected, _) => "NONE",
        (Outcome::Allow, Some(_)) => "ALLOW",
        (Outcome::Allow, None) => "NONE",
        (Outcome::Deny, None) => "ALLOW",
        (Outcome::Deny, Some(p)) => policies
            .attached()
            .find(|(name, _, dry_run)| !dry_run && *name == &**p)
            .map_or("DENY", |(_, action, _)| action.as_str()),
    }
}

/// Trust domain → network, for the trust domains exactly one network of MeshConfig
/// `networks` names.
fn networks(mesh: &MeshSettings) -> HashMap<Box<str>, Arc<str>> {
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for (network, td) in &mesh.networks {
        seen.entry(td.as_str())
            .and_modify(|n| *n = None)
            .or_insert(Some(network));
    }
    seen.into_iter()
        .filter_map(|(td, n)| Some((Box::from(td), Arc::from(n?))))
        .collect()
}

/// The labels of outbound traffic to one destination service, and the bases per peer.
#[derive(Debug)]
pub struct RouteLabels {
    view: Arc<ViewLabels>,
    service: ServiceLabels,
    bases: Mutex<Vec<PeerBase>>,
}

/// A peer's verified SPIFFE ID (`None`: none) and its base.
type PeerBase = (Option<Box<str>>, Arc<Base>);

impl RouteLabels {
    /// The base of requests to this service carried to `peer` (its verified SPIFFE ID; `None`
    /// for a plaintext upstream, or when no connection was made).
    pub fn base(&self, peer: Option<&SpiffeId>) -> Arc<Base> {
        let key = peer.map(SpiffeId::as_str);
        let mut bases = lock(&self.bases);
        if let Some((_, b)) = bases.iter().find(|(k, _)| k.as_deref() == key) {
            return b.clone();
        }
        let b = Arc::new(Base::new(
            self.view.families.clone(),
            Reporter::Source,
            &self.view.own,
            &self.view.peer(peer),
            &self.service,
            Security::Unknown,
        ));
        // A route has a handful of endpoint identities; past that, the family dedups.
        if bases.len() < SERIES_CACHE {
            bases.push((key.map(Box::from), b.clone()));
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_kubernetes_short_names_or_the_host() {
        let u: Arc<str> = Arc::from(UNKNOWN);
        let s = ServiceLabels::of(
            "orders.production.svc.cluster.local",
            Some("production"),
            &u,
        );
        assert_eq!((&*s.name, &*s.namespace), ("orders", "production"));
        let s = ServiceLabels::of("orders.production.svc.cluster.local", Some("other"), &u);
        assert_eq!(&*s.name, "orders.production.svc.cluster.local");
        let s = ServiceLabels::of("api.example.com", Some("ext"), &u);
        assert_eq!((&*s.name, &*s.namespace), ("api.example.com", "ext"));
        let s = ServiceLabels::of("nope.example", None, &u);
        assert_eq!(
            (&*s.host, &*s.name, &*s.namespace),
            ("nope.example", UNKNOWN, UNKNOWN)
        );
    }
}
