//! The mesh settings resource (`trustmesh.io/v1alpha1` `MeshConfig`) and core `v1`
//! `Namespace`.
//!
//! `MeshConfig.spec` uses Istio's MeshConfig field names where Istio has the setting
//! (`trustDomain`, `trustDomainAliases`, `rootNamespace`, `pathNormalization`,
//! `caCertificates`) and adds trustmesh's own: `workloadCertTTL` (Istio's
//! `DEFAULT_WORKLOAD_CERT_TTL` environment variable), `networks` (network name → trust
//! domain, for cross-region meshes) and `clusterResourceNamespace` (cert-manager's
//! `--cluster-resource-namespace` flag). Defaults are resolved in [`crate::snapshot`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Object;
use crate::duration::GoDuration;

/// The mesh settings; at most one per config.
pub type MeshConfig = Object<MeshConfigSpec>;
/// A Namespace (its labels, e.g. `istio-injection: enabled`).
pub type Namespace = Object<NamespaceSpec>;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Istio's `DEFAULT_WORKLOAD_CERT_TTL`: 24h.
pub const DEFAULT_WORKLOAD_CERT_TTL: GoDuration = GoDuration::from_hours(24);
/// Istio's `MAX_WORKLOAD_CERT_TTL`: 90 days.
pub const MAX_WORKLOAD_CERT_TTL: GoDuration = GoDuration::from_hours(2160);
/// cert-manager Helm chart's cluster resource namespace: its own namespace.
pub const DEFAULT_CLUSTER_RESOURCE_NAMESPACE: &str = "cert-manager";

/// MeshConfig `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// The mesh's trust domain; default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Other names for the local trust domain (migration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Where mesh-wide policies live; default `istio-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// Request path normalization before authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalization>,
    /// Extra roots for (foreign) trust domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<CertificateData>,
    /// Workload certificate lifetime; default 24h.
    #[serde(
        default,
        rename = "workloadCertTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_cert_ttl: Option<GoDuration>,
    /// Network name → settings; a WorkloadEntry in that network gets its trust domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    /// Namespace where ClusterIssuers read their Secrets; default `cert-manager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_resource_namespace: Option<String>,
}

/// `pathNormalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalization {
    /// The normalization; `DEFAULT` is `BASE`.
    #[serde(default)]
    pub normalization: NormalizationType,
}

/// Istio `ProxyPathNormalization.NormalizationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormalizationType {
    /// Same as BASE.
    #[default]
    Default,
    /// No normalization.
    None,
    /// RFC 3986 normalization, backslashes to slashes.
    Base,
    /// BASE plus merging of `//`.
    MergeSlashes,
    /// MERGE_SLASHES plus decoding of `%2F`, `%5C`.
    DecodeAndMergeSlashes,
}

/// `caCertificates[]` (Istio `MeshConfig.CertificateData`): exactly one of `pem` or
/// `spiffeBundleUrl`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateData {
    /// PEM root certificates inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// A SPIFFE bundle file: a path relative to the file holding the MeshConfig, or
    /// `file://<absolute path>`. trustmesh fetches nothing over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_bundle_url: Option<String>,
    /// Accepted for Istio compatibility, not interpreted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_signers: Vec<String>,
    /// Trust domains these roots are for; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
}

/// `networks.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Trust domain of workloads in this network; required.
    #[serde(default)]
    pub trust_domain: String,
}

/// Namespace `spec` (only `finalizers` exists).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Accepted, not interpreted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}
