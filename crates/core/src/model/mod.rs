//! The typed model of every resource trustmesh reads, field for field as Istio, cert-manager
//! and Kubernetes spell them, with serde.
//!
//! Every struct is `deny_unknown_fields`: a misspelt field (`principalz`) is an error, never
//! silently ignored, because an ignored security field widens access. Fields trustmesh accepts
//! but does not interpret are typed as [`serde_json::Value`] and flagged by validation.
//! What is not here: admission rules ([`crate::validate`]) and cross-resource resolution
//! ([`crate::snapshot`]). Nothing here does I/O; the YAML reader lives in `trustmesh-config`.

pub mod certmanager;
pub mod mesh;
pub mod networking;
pub mod security;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use certmanager::{Certificate, ClusterIssuer, Issuer};
pub use mesh::{MeshConfig, Namespace};
pub use networking::{DestinationRule, ServiceEntry, WorkloadEntry};
pub use security::{AuthorizationPolicy, PeerAuthentication};

/// Kubernetes `metadata`. Server-populated fields users paste from `kubectl get -o yaml`
/// (`uid`, `resourceVersion`, `generation`, `managedFields`, `ownerReferences`, ...) are
/// accepted; `generateName` is not (a folder needs fixed names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// `metadata.name`; required (an empty name is a validation error).
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`; absent on namespaced kinds means `default`, as with kubectl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` (e.g. `istio.io/dry-run`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 time; decides "oldest wins" among competing PeerAuthentications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Accepted and kept, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Accepted and kept, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Accepted and kept, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Accepted and kept, not interpreted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Server bookkeeping: accepted, dropped from dumps.
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<Value>,
    /// Server bookkeeping: accepted, dropped from dumps.
    #[serde(default, skip_serializing)]
    pub owner_references: Option<Value>,
    /// Server bookkeeping: accepted, dropped from dumps.
    #[serde(default, skip_serializing)]
    pub self_link: Option<String>,
}

impl ObjectMeta {
    /// The namespace, or `""` when unset (cluster-scoped kinds, or before defaulting).
    pub fn namespace_str(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }

    /// `creationTimestamp` as Unix seconds, if set and well-formed RFC 3339.
    pub fn creation_unix_seconds(&self) -> Option<i64> {
        self.creation_timestamp.as_deref().and_then(parse_rfc3339)
    }
}

/// A Kubernetes object: `apiVersion`, `kind`, `metadata`, `spec`. `status` (pasted from a
/// cluster) is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Object<S> {
    /// As written, e.g. `security.istio.io/v1beta1`.
    pub api_version: String,
    /// As written, e.g. `AuthorizationPolicy`.
    pub kind: String,
    /// `metadata`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `spec`; absent or `null` is the empty spec (for an AuthorizationPolicy: allow-nothing).
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: S,
    /// Accepted, not interpreted, dropped from dumps.
    #[serde(default, skip_serializing)]
    pub status: Option<Value>,
}

/// `null` reads as the type's default, as Go's JSON decoding leaves a nil pointer.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Istio's `selector: {matchLabels: {...}}` (`istio.type.v1beta1.WorkloadSelector`), used by
/// PeerAuthentication, AuthorizationPolicy and DestinationRule `workloadSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all be present on the workload with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether `labels` contain every `matchLabels` pair (an empty selector selects all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_subset(&self.match_labels, labels)
    }
}

/// `want ⊆ have`.
pub fn labels_subset(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The kinds trustmesh reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// security.istio.io `PeerAuthentication`.
    PeerAuthentication,
    /// security.istio.io `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// networking.istio.io `DestinationRule`.
    DestinationRule,
    /// networking.istio.io `WorkloadEntry`.
    WorkloadEntry,
    /// networking.istio.io `ServiceEntry`.
    ServiceEntry,
    /// core `v1` `Namespace`.
    Namespace,
    /// cert-manager.io `Certificate`.
    Certificate,
    /// cert-manager.io `Issuer`.
    Issuer,
    /// cert-manager.io `ClusterIssuer`.
    ClusterIssuer,
    /// trustmesh.io `MeshConfig`, the mesh settings.
    MeshConfig,
}

/// Why an `apiVersion`/`kind` pair is not one trustmesh reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// The document has no `kind`.
    #[error("missing kind (apiVersion {api_version:?})")]
    MissingKind {
        /// The apiVersion found, possibly empty.
        api_version: String,
    },
    /// The document has no `apiVersion`.
    #[error("missing apiVersion for kind {kind}")]
    MissingApiVersion {
        /// The kind found.
        kind: String,
    },
    /// The kind is not one trustmesh reads.
    #[error("unknown kind {kind} (apiVersion {api_version}); trustmesh reads {supported}")]
    UnknownKind {
        /// The kind found.
        kind: String,
        /// The apiVersion found.
        api_version: String,
        /// The kinds trustmesh reads.
        supported: String,
    },
    /// The kind is known but not in this apiVersion.
    #[error("unknown apiVersion {api_version} for kind {kind}; expected one of {expected}")]
    UnknownApiVersion {
        /// The kind found.
        kind: String,
        /// The apiVersion found.
        api_version: String,
        /// The apiVersions accepted for that kind.
        expected: String,
    },
}

impl Kind {
    /// Every kind, in the order snapshots list them.
    pub const ALL: [Kind; 10] = [
        Kind::MeshConfig,
        Kind::Namespace,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::DestinationRule,
        Kind::WorkloadEntry,
        Kind::ServiceEntry,
        Kind::Certificate,
        Kind::Issuer,
        Kind::ClusterIssuer,
    ];

    /// The `kind:` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::DestinationRule => "DestinationRule",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Namespace => "Namespace",
            Kind::Certificate => "Certificate",
            Kind::Issuer => "Issuer",
            Kind::ClusterIssuer => "ClusterIssuer",
            Kind::MeshConfig => "MeshConfig",
        }
    }

    /// The apiVersions accepted for this kind. Istio serves `v1` and `v1beta1` (and
    /// `v1alpha3` for networking) with the same schema; they are read identically.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            Kind::DestinationRule | Kind::WorkloadEntry | Kind::ServiceEntry => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            Kind::Namespace => &["v1"],
            Kind::Certificate | Kind::Issuer | Kind::ClusterIssuer => &["cert-manager.io/v1"],
            Kind::MeshConfig => &["trustmesh.io/v1alpha1"],
        }
    }

    /// Whether objects of this kind live in a namespace (Namespace, ClusterIssuer and
    /// MeshConfig do not).
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::ClusterIssuer | Kind::MeshConfig
        )
    }

    /// Resolves a document's `apiVersion` and `kind`.
    pub fn from_type_meta(
        api_version: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Kind, TypeError> {
        let api_version = api_version.unwrap_or("");
        let Some(kind_str) = kind.filter(|k| !k.is_empty()) else {
            return Err(TypeError::MissingKind {
                api_version: api_version.to_owned(),
            });
        };
        let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_str) else {
            return Err(TypeError::UnknownKind {
                kind: kind_str.to_owned(),
                api_version: api_version.to_owned(),
                supported: Kind::ALL.map(Kind::as_str).join(", "),
            });
        };
        if api_version.is_empty() {
            return Err(TypeError::MissingApiVersion {
                kind: kind_str.to_owned(),
            });
        }
        if !k.api_versions().contains(&api_version) {
            return Err(TypeError::UnknownApiVersion {
                kind: kind_str.to_owned(),
                api_version: api_version.to_owned(),
                expected: k.api_versions().join(", "),
            });
        }
        Ok(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource of any kind trustmesh reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A DestinationRule.
    DestinationRule(DestinationRule),
    /// A WorkloadEntry.
    WorkloadEntry(WorkloadEntry),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntry),
    /// A Namespace.
    Namespace(Namespace),
    /// A cert-manager Certificate.
    Certificate(Certificate),
    /// A cert-manager Issuer.
    Issuer(Issuer),
    /// A cert-manager ClusterIssuer.
    ClusterIssuer(ClusterIssuer),
    /// The mesh settings.
    MeshConfig(MeshConfig),
}

/// Applies `$body` to the inner object of any [`Resource`] variant.
macro_rules! each_variant {
    ($r:expr, $o:ident => $body:expr) => {
        match $r {
            Resource::PeerAuthentication($o) => $body,
            Resource::AuthorizationPolicy($o) => $body,
            Resource::DestinationRule($o) => $body,
            Resource::WorkloadEntry($o) => $body,
            Resource::ServiceEntry($o) => $body,
            Resource::Namespace($o) => $body,
            Resource::Certificate($o) => $body,
            Resource::Issuer($o) => $body,
            Resource::ClusterIssuer($o) => $body,
            Resource::MeshConfig($o) => $body,
        }
    };
}

impl Resource {
    /// Deserializes the document as `kind` (resolved beforehand by [`Kind::from_type_meta`]).
    pub fn deserialize_as<'de, D: Deserializer<'de>>(
        kind: Kind,
        d: D,
    ) -> Result<Resource, D::Error> {
        Ok(match kind {
            Kind::PeerAuthentication => Resource::PeerAuthentication(Deserialize::deserialize(d)?),
            Kind::AuthorizationPolicy => {
                Resource::AuthorizationPolicy(Deserialize::deserialize(d)?)
            }
            Kind::DestinationRule => Resource::DestinationRule(Deserialize::deserialize(d)?),
            Kind::WorkloadEntry => Resource::WorkloadEntry(Deserialize::deserialize(d)?),
            Kind::ServiceEntry => Resource::ServiceEntry(Deserialize::deserialize(d)?),
            Kind::Namespace => Resource::Namespace(Deserialize::deserialize(d)?),
            Kind::Certificate => Resource::Certificate(Deserialize::deserialize(d)?),
            Kind::Issuer => Resource::Issuer(Deserialize::deserialize(d)?),
            Kind::ClusterIssuer => Resource::ClusterIssuer(Deserialize::deserialize(d)?),
            Kind::MeshConfig => Resource::MeshConfig(Deserialize::deserialize(d)?),
        })
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Certificate(_) => Kind::Certificate,
            Resource::Issuer(_) => Kind::Issuer,
            Resource::ClusterIssuer(_) => Kind::ClusterIssuer,
            Resource::MeshConfig(_) => Kind::MeshConfig,
        }
    }

    /// The `metadata`.
    pub fn meta(&self) -> &ObjectMeta {
        each_variant!(self, o => &o.metadata)
    }

    /// The `metadata`, mutably (kustomize's `namespace:`, namespace defaulting).
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each_variant!(self, o => &mut o.metadata)
    }

    /// The `apiVersion` as written.
    pub fn api_version(&self) -> &str {
        each_variant!(self, o => &o.api_version)
    }

    /// The identity used for duplicate detection and ordering.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: self.meta().namespace_str().to_owned(),
            name: self.meta().name.clone(),
        }
    }
}

/// `(kind, namespace, name)`: what must be unique in a config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace, `""` for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// `Kind ns/name`, or `Kind name` for cluster-scoped kinds, as used in every message.
impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// `Kind ns/name` of `o`, an object of kind `kind`: a [`ResourceKey`] as messages print it.
pub(crate) fn key<S>(kind: Kind, o: &Object<S>) -> String {
    ResourceKey {
        kind,
        namespace: o.metadata.namespace_str().to_owned(),
        name: o.metadata.name.clone(),
    }
    .to_string()
}

/// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `...T12:00:00.5+02:00`) to Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn type_meta_resolution_names_both_parts() {
        assert_eq!(
            Kind::from_type_meta(
                Some("security.istio.io/v1beta1"),
                Some("AuthorizationPolicy")
            ),
            Ok(Kind::AuthorizationPolicy)
        );
        assert_eq!(
            Kind::from_type_meta(
                Some("networking.istio.io/v1alpha3"),
                Some("DestinationRule")
            ),
            Ok(Kind::DestinationRule)
        );
        let e = Kind::from_type_meta(Some("security.istio.io/v2"), Some("AuthorizationPolicy"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown apiVersion security.istio.io/v2 for kind AuthorizationPolicy; expected one of security.istio.io/v1, security.istio.io/v1beta1"
        );
        let e = Kind::from_type_meta(Some("apps/v1"), Some("Deployment")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown kind Deployment (apiVersion apps/v1)"),
            "{e}"
        );
        assert!(matches!(
            Kind::from_type_meta(None, Some("Namespace")),
            Err(TypeError::MissingApiVersion { .. })
        ));
        assert!(matches!(
            Kind::from_type_meta(Some("v1"), None),
            Err(TypeError::MissingKind { .. })
        ));
    }

    #[test]
    fn rfc3339_parses_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00.123+02:00"),
            Some(1_709_208_000)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn resource_key_display() {
        let k = ResourceKey {
            kind: Kind::AuthorizationPolicy,
            namespace: "prod".into(),
            name: "deny-admin".into(),
        };
        assert_eq!(k.to_string(), "AuthorizationPolicy prod/deny-admin");
        let k = ResourceKey {
            kind: Kind::ClusterIssuer,
            namespace: String::new(),
            name: "ca".into(),
        };
        assert_eq!(k.to_string(), "ClusterIssuer ca");
    }
}
