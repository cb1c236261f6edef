//! [`Snapshot`]: the one validated, immutable configuration everything downstream reads.
//!
//! Built from resources with their [`Origin`]s (the loader's output, or the Kubernetes
//! watcher's later) by [`Snapshot::build`], which defaults namespaces like kubectl, runs every
//! admission rule ([`crate::validate`]) and the cross-resource rules, resolves the mesh
//! settings, and computes each workload's SPIFFE identity. Any error → no snapshot. Resources
//! are grouped by kind, ordered by (namespace, name), so iteration is deterministic.
//! What is not here: reading files, policy evaluation, certificate issuance.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::duration::GoDuration;
use crate::model::mesh::{
    DEFAULT_CLUSTER_RESOURCE_NAMESPACE, DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN,
    DEFAULT_WORKLOAD_CERT_TTL, NormalizationType,
};
use crate::model::{
    AuthorizationPolicy, Certificate, ClusterIssuer, DestinationRule, Issuer, Kind, LabelSelector,
    MeshConfig, Namespace, PeerAuthentication, Resource, ServiceEntry, WorkloadEntry,
    labels_subset,
};
use crate::validate::{Findings, Origin, ValidationWarning, cross, validate_resource_into};
use crate::{SpiffeId, TrustDomain};

/// A resource with where it came from. Derefs to the resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sourced<T> {
    /// File and line, when read from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The resource.
    #[serde(flatten)]
    pub object: T,
}

impl<T> Deref for Sourced<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.object
    }
}

/// Input to [`Snapshot::build`]: one resource and its origin.
pub type SourcedResource = Sourced<Resource>;

/// The mesh settings with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// The local trust domain (`cluster.local` by default).
    pub trust_domain: TrustDomain,
    /// Aliases of the local trust domain.
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// Root namespace (`istio-system` by default).
    pub root_namespace: String,
    /// Path normalization (`DEFAULT` = `BASE`).
    pub path_normalization: NormalizationType,
    /// Workload certificate lifetime (24h by default).
    pub workload_cert_ttl: GoDuration,
    /// Network name → trust domain of workloads in it.
    pub networks: BTreeMap<String, TrustDomain>,
    /// Extra roots for foreign trust domains.
    pub ca_certificates: Vec<CaCertificates>,
    /// Where ClusterIssuers find their Secrets (`cert-manager` by default).
    pub cluster_resource_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            trust_domain_aliases: Vec::new(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            path_normalization: NormalizationType::Default,
            workload_cert_ttl: DEFAULT_WORKLOAD_CERT_TTL,
            networks: BTreeMap::new(),
            ca_certificates: Vec::new(),
            cluster_resource_namespace: DEFAULT_CLUSTER_RESOURCE_NAMESPACE.to_owned(),
        }
    }
}

/// `cluster.local`.
#[allow(clippy::expect_used)] // A constant checked by `default_settings_are_istios` below.
fn default_trust_domain() -> TrustDomain {
    TrustDomain::new(DEFAULT_TRUST_DOMAIN).expect("cluster.local is a valid trust domain")
}

impl MeshSettings {
    /// Whether `td` is the local trust domain or one of its aliases.
    pub fn is_local_trust_domain(&self, td: &str) -> bool {
        self.trust_domain.as_str() == td
            || self.trust_domain_aliases.iter().any(|a| a.as_str() == td)
    }

    /// Every trust domain the mesh can authenticate: local, aliases, networks', and those
    /// with extra roots.
    pub fn known_trust_domains(&self) -> Vec<&TrustDomain> {
        let mut v: Vec<&TrustDomain> = std::iter::once(&self.trust_domain)
            .chain(&self.trust_domain_aliases)
            .chain(self.networks.values())
            .chain(self.ca_certificates.iter().flat_map(|c| &c.trust_domains))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// One `caCertificates` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificates {
    /// Where the roots are.
    pub source: CaSource,
    /// Trust domains they are for; empty = all.
    pub trust_domains: Vec<TrustDomain>,
}

/// Where extra roots come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CaSource {
    /// Inline PEM.
    Pem(String),
    /// A SPIFFE bundle file: `file://` stripped, relative paths joined to the directory of
    /// the file holding the MeshConfig. Read by the control plane, not here.
    BundleFile(PathBuf),
}

/// A workload: a WorkloadEntry with its identity resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// WorkloadEntry name.
    pub name: String,
    /// Where its proxy listens.
    pub address: IpAddr,
    /// Labels selectors match.
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// Network, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The network's trust domain, or the mesh's.
    pub trust_domain: TrustDomain,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub identity: SpiffeId,
    /// Port name → number.
    pub ports: BTreeMap<String, u16>,
    /// Where the WorkloadEntry was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    mesh: MeshSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh_config: Option<Sourced<MeshConfig>>,
    namespaces: Vec<Sourced<Namespace>>,
    peer_authentications: Vec<Sourced<PeerAuthentication>>,
    authorization_policies: Vec<Sourced<AuthorizationPolicy>>,
    destination_rules: Vec<Sourced<DestinationRule>>,
    workload_entries: Vec<Sourced<WorkloadEntry>>,
    service_entries: Vec<Sourced<ServiceEntry>>,
    certificates: Vec<Sourced<Certificate>>,
    issuers: Vec<Sourced<Issuer>>,
    cluster_issuers: Vec<Sourced<ClusterIssuer>>,
    workloads: Vec<Workload>,
}

/// The namespace kubectl uses when a namespaced resource names none.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Snapshot {
    /// Validates `resources` and builds the snapshot. `Ok` carries the warnings; `Err` carries
    /// every error (and the warnings found so far).
    pub fn build(
        resources: Vec<SourcedResource>,
    ) -> Result<(Snapshot, Vec<ValidationWarning>), Findings> {
        let mut findings = Findings::default();
        let mut snap = Snapshot::default();
        for Sourced {
            origin,
            object: mut r,
        } in resources
        {
            let kind = r.kind();
            // "resources whose namespace is missing default to `default` (like kubectl)".
            if kind.is_namespaced() && r.meta().namespace.as_deref().is_none_or(str::is_empty) {
                r.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_owned());
            }
            validate_resource_into(&r, origin.as_ref(), &mut findings);
            if !kind.is_namespaced() {
                r.meta_mut().namespace = None;
            }
            snap.insert(r, origin, &mut findings);
        }
        snap.sort();
        snap.mesh = resolve_mesh(snap.mesh_config.as_ref());
        snap.workloads = snap.compute_workloads();
        cross::check(&snap, &mut findings);
        if findings.errors.is_empty() {
            Ok((snap, findings.warnings))
        } else {
            Err(findings)
        }
    }

    fn insert(&mut self, r: Resource, origin: Option<Origin>, findings: &mut Findings) {
        match r {
            Resource::PeerAuthentication(o) => self
                .peer_authentications
                .push(Sourced { origin, object: o }),
            Resource::AuthorizationPolicy(o) => self
                .authorization_policies
                .push(Sourced { origin, object: o }),
            Resource::DestinationRule(o) => {
                self.destination_rules.push(Sourced { origin, object: o })
            }
            Resource::WorkloadEntry(o) => self.workload_entries.push(Sourced { origin, object: o }),
            Resource::ServiceEntry(o) => self.service_entries.push(Sourced { origin, object: o }),
            Resource::Namespace(o) => self.namespaces.push(Sourced { origin, object: o }),
            Resource::Certificate(o) => self.certificates.push(Sourced { origin, object: o }),
            Resource::Issuer(o) => self.issuers.push(Sourced { origin, object: o }),
            Resource::ClusterIssuer(o) => self.cluster_issuers.push(Sourced { origin, object: o }),
            Resource::MeshConfig(o) => {
                if let Some(first) = &self.mesh_config {
                    // "At most one MeshConfig per folder".
                    let at = first
                        .origin
                        .as_ref()
                        .map(|o| format!(" (defined at {o})"))
                        .unwrap_or_default();
                    findings
                        .on(format!("MeshConfig {}", o.metadata.name), origin.as_ref())
                        .error(
                            "metadata.name",
                            format!(
                                "a config holds at most one MeshConfig; {} is already defined{at}",
                                first.metadata.name
                            ),
                        );
                } else {
                    self.mesh_config = Some(Sourced { origin, object: o });
                }
            }
        }
    }

    fn sort(&mut self) {
        fn by_ns_name<S>(v: &mut [Sourced<crate::model::Object<S>>]) {
            // Stable: duplicates keep file order, so "already defined at" names the first.
            v.sort_by(|a, b| {
                (a.metadata.namespace_str(), a.metadata.name.as_str())
                    .cmp(&(b.metadata.namespace_str(), b.metadata.name.as_str()))
            });
        }
        by_ns_name(&mut self.namespaces);
        by_ns_name(&mut self.peer_authentications);
        by_ns_name(&mut self.authorization_policies);
        by_ns_name(&mut self.destination_rules);
        by_ns_name(&mut self.workload_entries);
        by_ns_name(&mut self.service_entries);
        by_ns_name(&mut self.certificates);
        by_ns_name(&mut self.issuers);
        by_ns_name(&mut self.cluster_issuers);
    }

    fn compute_workloads(&self) -> Vec<Workload> {
        self.workload_entries
            .iter()
            .filter_map(|we| {
                let namespace = we.metadata.namespace_str().to_owned();
                let address: IpAddr = we.spec.address.parse().ok()?;
                let service_account = we
                    .spec
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".to_owned());
                let trust_domain = self
                    .trust_domain_for_network(we.spec.network.as_deref())
                    .clone();
                let identity =
                    SpiffeId::workload(&trust_domain, &namespace, &service_account).ok()?;
                let ports = we
                    .spec
                    .ports
                    .iter()
                    .filter_map(|(n, p)| {
                        Some((n.clone(), u16::try_from(*p).ok().filter(|p| *p > 0)?))
                    })
                    .collect();
                Some(Workload {
                    namespace,
                    name: we.metadata.name.clone(),
                    address,
                    labels: we.spec.labels.clone(),
                    service_account,
                    network: we.spec.network.clone(),
                    trust_domain,
                    identity,
                    ports,
                    origin: we.origin.clone(),
                })
            })
            .collect()
    }

    /// The trust domain of workloads in `network`: the network's if MeshConfig `networks`
    /// names it, else the mesh's.
    pub fn trust_domain_for_network(&self, network: Option<&str>) -> &TrustDomain {
        network
            .and_then(|n| self.mesh.networks.get(n))
            .unwrap_or(&self.mesh.trust_domain)
    }

    /// The resolved mesh settings.
    pub fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }
    /// The MeshConfig resource, if the config had one.
    pub fn mesh_config(&self) -> Option<&Sourced<MeshConfig>> {
        self.mesh_config.as_ref()
    }
    /// Namespaces, by name.
    pub fn namespaces(&self) -> &[Sourced<Namespace>] {
        &self.namespaces
    }
    /// PeerAuthentications, by (namespace, name).
    pub fn peer_authentications(&self) -> &[Sourced<PeerAuthentication>] {
        &self.peer_authentications
    }
    /// AuthorizationPolicies, by (namespace, name).
    pub fn authorization_policies(&self) -> &[Sourced<AuthorizationPolicy>] {
        &self.authorization_policies
    }
    /// DestinationRules, by (namespace, name).
    pub fn destination_rules(&self) -> &[Sourced<DestinationRule>] {
        &self.destination_rules
    }
    /// WorkloadEntries, by (namespace, name).
    pub fn workload_entries(&self) -> &[Sourced<WorkloadEntry>] {
        &self.workload_entries
    }
    /// ServiceEntries, by (namespace, name).
    pub fn service_entries(&self) -> &[Sourced<ServiceEntry>] {
        &self.service_entries
    }
    /// Certificates, by (namespace, name).
    pub fn certificates(&self) -> &[Sourced<Certificate>] {
        &self.certificates
    }
    /// Issuers, by (namespace, name).
    pub fn issuers(&self) -> &[Sourced<Issuer>] {
        &self.issuers
    }
    /// ClusterIssuers, by name.
    pub fn cluster_issuers(&self) -> &[Sourced<ClusterIssuer>] {
        &self.cluster_issuers
    }

    /// Every workload with its identity, by (namespace, name).
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The workload `namespace/name`.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The workload listening on `address`.
    pub fn workload_by_address(&self, address: IpAddr) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.address == address)
    }

    /// Workloads in `namespace` (every namespace when `None`) whose labels `selector` matches.
    pub fn select_workloads<'a>(
        &'a self,
        namespace: Option<&'a str>,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| {
            namespace.is_none_or(|ns| w.namespace == ns) && selector.matches(&w.labels)
        })
    }

    /// The workloads backing a ServiceEntry (its `workloadSelector`, same namespace).
    pub fn service_workloads<'a>(
        &'a self,
        se: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        let ns = se.metadata.namespace_str();
        let sel = se.spec.workload_selector.as_ref();
        self.workloads.iter().filter(move |w| {
            sel.is_some_and(|s| w.namespace == ns && labels_subset(&s.labels, &w.labels))
        })
    }

    /// The ServiceEntry whose `hosts` include `host` (case-insensitive), if any.
    pub fn service_entry_for_host(&self, host: &str) -> Option<&Sourced<ServiceEntry>> {
        self.service_entries
            .iter()
            .find(|se| se.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// Labels of Namespace `name`, if declared.
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .find(|n| n.metadata.name == name)
            .map(|n| &n.metadata.labels)
    }

    /// The Issuer or ClusterIssuer a Certificate references, if it exists.
    pub fn issuer_of(&self, cert: &Certificate) -> Option<IssuerOf<'_>> {
        let r = &cert.spec.issuer_ref;
        match r.kind_or_default() {
            "ClusterIssuer" => self
                .cluster_issuers
                .iter()
                .find(|i| i.metadata.name == r.name)
                .map(IssuerOf::Cluster),
            "Issuer" => self
                .issuers
                .iter()
                .find(|i| {
                    i.metadata.name == r.name && i.metadata.namespace == cert.metadata.namespace
                })
                .map(IssuerOf::Namespaced),
            _ => None,
        }
    }

    /// How many resources of each kind (MeshConfig counts 0 or 1).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        BTreeMap::from([
            (Kind::MeshConfig, usize::from(self.mesh_config.is_some())),
            (Kind::Namespace, self.namespaces.len()),
            (Kind::PeerAuthentication, self.peer_authentications.len()),
            (Kind::AuthorizationPolicy, self.authorization_policies.len()),
            (Kind::DestinationRule, self.destination_rules.len()),
            (Kind::WorkloadEntry, self.workload_entries.len()),
            (Kind::ServiceEntry, self.service_entries.len()),
            (Kind::Certificate, self.certificates.len()),
            (Kind::Issuer, self.issuers.len()),
            (Kind::ClusterIssuer, self.cluster_issuers.len()),
        ])
    }

    /// Total number of resources.
    pub fn len(&self) -> usize {
        self.counts().values().sum()
    }

    /// Whether the config held no resources at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An Issuer or a ClusterIssuer.
#[derive(Debug, Clone, Copy)]
pub enum IssuerOf<'a> {
    /// A namespaced Issuer.
    Namespaced(&'a Sourced<Issuer>),
    /// A ClusterIssuer.
    Cluster(&'a Sourced<ClusterIssuer>),
}

impl<'a> IssuerOf<'a> {
    /// The issuer resource (both kinds share the spec).
    pub fn issuer(&self) -> &'a Sourced<Issuer> {
        match self {
            IssuerOf::Namespaced(i) | IssuerOf::Cluster(i) => i,
        }
    }

    /// Where the issuer reads its CA Secret: its own namespace, or the cluster resource
    /// namespace for a ClusterIssuer.
    pub fn secret_namespace<'s>(&self, mesh: &'s MeshSettings) -> &'s str
    where
        'a: 's,
    {
        match self {
            IssuerOf::Namespaced(i) => i.metadata.namespace_str(),
            IssuerOf::Cluster(_) => &mesh.cluster_resource_namespace,
        }
    }
}

/// Applies defaults to the MeshConfig; invalid values (already reported) fall back to them.
fn resolve_mesh(mc: Option<&Sourced<MeshConfig>>) -> MeshSettings {
    let mut m = MeshSettings::default();
    let Some(mc) = mc else {
        return m;
    };
    let s = &mc.spec;
    let td = |v: &str| TrustDomain::new(v).ok();
    if let Some(t) = s.trust_domain.as_deref().and_then(td) {
        m.trust_domain = t;
    }
    m.trust_domain_aliases = s
        .trust_domain_aliases
        .iter()
        .filter_map(|a| td(a))
        .collect();
    if let Some(ns) = &s.root_namespace {
        m.root_namespace.clone_from(ns);
    }
    if let Some(p) = s.path_normalization {
        m.path_normalization = p.normalization;
    }
    if let Some(ttl) = s.workload_cert_ttl {
        m.workload_cert_ttl = ttl;
    }
    m.networks = s
        .networks
        .iter()
        .filter_map(|(n, net)| Some((n.clone(), td(&net.trust_domain)?)))
        .collect();
    if let Some(ns) = &s.cluster_resource_namespace {
        m.cluster_resource_namespace.clone_from(ns);
    }
    let base_dir = mc
        .origin
        .as_ref()
        .and_then(|o| Path::new(&o.file).parent().map(Path::to_path_buf));
    m.ca_certificates = s
        .ca_certificates
        .iter()
        .filter_map(|c| {
            let source = match (&c.pem, &c.spiffe_bundle_url) {
                (Some(pem), None) => CaSource::Pem(pem.clone()),
                (None, Some(url)) => {
                    CaSource::BundleFile(resolve_bundle_path(url, base_dir.as_deref()))
                }
                _ => return None,
            };
            Some(CaCertificates {
                source,
                trust_domains: c.trust_domains.iter().filter_map(|t| td(t)).collect(),
            })
        })
        .collect();
    m
}

/// `file:///abs` → `/abs`; a relative path → joined to `base_dir`.
pub fn resolve_bundle_path(url: &str, base_dir: Option<&Path>) -> PathBuf {
    let p = Path::new(url.strip_prefix("file://").unwrap_or(url));
    match base_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_are_istios() {
        // Istio defaults: trust domain `cluster.local`, root namespace `istio-system`,
        // DEFAULT_WORKLOAD_CERT_TTL 24h, normalization BASE ("Default = `BASE`").
        let (snap, warnings) = Snapshot::build(Vec::new()).unwrap();
        assert!(warnings.is_empty());
        assert!(snap.is_empty());
        let m = snap.mesh();
        assert_eq!(m.trust_domain.as_str(), "cluster.local");
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(m.workload_cert_ttl.to_string(), "24h0m0s");
        assert_eq!(m.path_normalization, NormalizationType::Default);
        assert_eq!(m.cluster_resource_namespace, "cert-manager");
    }

    #[test]
    fn bundle_paths_resolve_relative_to_the_mesh_config_file() {
        let base = Path::new("/cfg/teei");
        assert_eq!(
            resolve_bundle_path("bundles/eu.json", Some(base)),
            PathBuf::from("/cfg/teei/bundles/eu.json")
        );
        assert_eq!(
            resolve_bundle_path("file:///etc/eu.json", Some(base)),
            PathBuf::from("/etc/eu.json")
        );
        assert_eq!(
            resolve_bundle_path("/abs/eu.json", Some(base)),
            PathBuf::from("/abs/eu.json")
        );
        assert_eq!(
            resolve_bundle_path("eu.json", None),
            PathBuf::from("eu.json")
        );
    }
}
