//! Admission validation: the rules Istio's validating webhook
//! (`pkg/config/validation/validation.go`, the CRDs' CEL rules) and cert-manager's webhook
//! (`internal/apis/certmanager/validation`) apply to one resource, plus trustmesh's own
//! (what it cannot run, e.g. ACME issuers). Each rule quotes its source above the code and
//! has a test that quotes it again.
//!
//! Findings are [`ValidationError`]s (the config is rejected) and [`ValidationWarning`]s
//! (accepted; `trustmesh check` prints them). Rules spanning several resources (duplicates,
//! references, selectors that select nothing) are in `validate_cross.rs` and run when the
//! [`crate::snapshot::Snapshot`] is built. Nothing here does I/O.

#[path = "validate_certmanager.rs"]
mod certmanager;
#[path = "validate_cross.rs"]
pub(crate) mod cross;
#[path = "validate_networking.rs"]
mod networking;
#[path = "validate_security.rs"]
mod security;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

use crate::TrustDomain;
use crate::model::mesh::{CertificateData, MAX_WORKLOAD_CERT_TTL};
use crate::model::{Kind, LabelSelector, MeshConfig, Namespace, ObjectMeta, Resource};

/// Where a resource was read from: file and line of its document. Filled in by the loader.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// The file, as given to the loader.
    pub file: String,
    /// 1-based line where the resource's document starts.
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A rule violation: the config is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{kind_ns_name}: {field}: {message}")]
pub struct ValidationError {
    /// `Kind ns/name` (or `Kind name` when cluster-scoped).
    pub kind_ns_name: String,
    /// Field path, e.g. `spec.rules[0].from[0].source.principals[1]`.
    pub field: String,
    /// What is wrong, in the wording of the rule's source where it has one.
    pub message: String,
    /// Where the resource was read from, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Something accepted but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationWarning {
    /// `Kind ns/name` (or `Kind name` when cluster-scoped).
    pub kind_ns_name: String,
    /// Field path.
    pub field: String,
    /// What looks wrong.
    pub message: String,
    /// Where the resource was read from, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl fmt::Display for ValidationWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind_ns_name, self.field, self.message)
    }
}

/// Errors and warnings collected over one or more resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Rule violations.
    pub errors: Vec<ValidationError>,
    /// Warnings.
    pub warnings: Vec<ValidationWarning>,
}

impl Findings {
    /// A recorder for findings about one resource.
    pub(crate) fn on<'a>(&'a mut self, kind_ns_name: String, origin: Option<&Origin>) -> Ctx<'a> {
        Ctx {
            who: kind_ns_name,
            origin: origin.cloned(),
            out: self,
        }
    }
}

/// Records findings about one resource.
pub(crate) struct Ctx<'a> {
    who: String,
    origin: Option<Origin>,
    out: &'a mut Findings,
}

impl Ctx<'_> {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.errors.push(ValidationError {
            kind_ns_name: self.who.clone(),
            field: field.into(),
            message: message.into(),
            origin: self.origin.clone(),
        });
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.warnings.push(ValidationWarning {
            kind_ns_name: self.who.clone(),
            field: field.into(),
            message: message.into(),
            origin: self.origin.clone(),
        });
    }
}

/// Validates one resource on its own. Namespaces should already be defaulted.
pub fn validate_resource(r: &Resource) -> Findings {
    let mut f = Findings::default();
    validate_resource_into(r, None, &mut f);
    f
}

pub(crate) fn validate_resource_into(r: &Resource, origin: Option<&Origin>, out: &mut Findings) {
    let mut cx = out.on(r.key().to_string(), origin);
    validate_meta(r.kind(), r.meta(), &mut cx);
    match r {
        Resource::PeerAuthentication(pa) => security::peer_authentication(pa, &mut cx),
        Resource::AuthorizationPolicy(ap) => security::authorization_policy(ap, &mut cx),
        Resource::DestinationRule(dr) => networking::destination_rule(dr, &mut cx),
        Resource::WorkloadEntry(we) => networking::workload_entry(we, &mut cx),
        Resource::ServiceEntry(se) => networking::service_entry(se, &mut cx),
        Resource::Namespace(ns) => namespace(ns, &mut cx),
        Resource::Certificate(c) => certmanager::certificate(c, &mut cx),
        Resource::Issuer(i) | Resource::ClusterIssuer(i) => certmanager::issuer(i, &mut cx),
        Resource::MeshConfig(m) => mesh_config(m, &mut cx),
    }
}

fn validate_meta(kind: Kind, meta: &ObjectMeta, cx: &mut Ctx<'_>) {
    // Kubernetes: "metadata.name: Required value: name or generateName is required"; names
    // of Namespaces are DNS-1123 labels, of everything else DNS-1123 subdomains.
    if meta.name.is_empty() {
        cx.error("metadata.name", "name is required");
    } else if kind == Kind::Namespace {
        if let Err(m) = dns1123_label(&meta.name) {
            cx.error("metadata.name", m);
        }
    } else if let Err(m) = dns1123_subdomain(&meta.name) {
        cx.error("metadata.name", m);
    }
    if let Some(ns) = &meta.namespace {
        if !kind.is_namespaced() {
            // The API server ignores metadata.namespace on cluster-scoped objects.
            cx.warn(
                "metadata.namespace",
                format!("{kind} is cluster-scoped; namespace {ns:?} is ignored"),
            );
        } else if let Err(m) = dns1123_label(ns) {
            cx.error("metadata.namespace", m);
        }
    }
    for key in meta.labels.keys() {
        if let Err(m) = qualified_name(key) {
            cx.error(format!("metadata.labels.{key}"), m);
        }
    }
    if let Some(ts) = &meta.creation_timestamp
        && crate::model::parse_rfc3339(ts).is_none()
    {
        cx.error(
            "metadata.creationTimestamp",
            format!("{ts:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z"),
        );
    }
}

fn namespace(_ns: &Namespace, _cx: &mut Ctx<'_>) {
    // A Namespace carries only metadata, checked by `validate_meta`.
}

fn mesh_config(m: &MeshConfig, cx: &mut Ctx<'_>) {
    let spec = &m.spec;
    if let Some(td) = &spec.trust_domain {
        check_trust_domain(td, "spec.trustDomain", cx);
    }
    for (i, alias) in spec.trust_domain_aliases.iter().enumerate() {
        check_trust_domain(alias, &format!("spec.trustDomainAliases[{i}]"), cx);
    }
    if let Some(ns) = &spec.root_namespace
        && let Err(e) = dns1123_label(ns)
    {
        cx.error("spec.rootNamespace", e);
    }
    if let Some(ns) = &spec.cluster_resource_namespace
        && let Err(e) = dns1123_label(ns)
    {
        cx.error("spec.clusterResourceNamespace", e);
    }
    if let Some(ttl) = spec.workload_cert_ttl {
        // istiod: "DEFAULT_WORKLOAD_CERT_TTL ... cannot exceed MAX_WORKLOAD_CERT_TTL" (90 days);
        // trustmesh also needs a lifetime it can renew at 50 %: at least one minute.
        if ttl < crate::duration::GoDuration::from_minutes(1) {
            cx.error(
                "spec.workloadCertTTL",
                format!("workload certificate TTL {ttl} is shorter than 1m0s"),
            );
        } else if ttl > MAX_WORKLOAD_CERT_TTL {
            cx.error(
                "spec.workloadCertTTL",
                format!("workload certificate TTL {ttl} exceeds MAX_WORKLOAD_CERT_TTL {MAX_WORKLOAD_CERT_TTL}"),
            );
        }
    }
    for (name, net) in &spec.networks {
        let field = format!("spec.networks.{name}.trustDomain");
        if net.trust_domain.is_empty() {
            cx.error(field, "trustDomain is required");
        } else {
            check_trust_domain(&net.trust_domain, &field, cx);
        }
    }
    for (i, ca) in spec.ca_certificates.iter().enumerate() {
        ca_certificate(ca, &format!("spec.caCertificates[{i}]"), cx);
    }
}

fn ca_certificate(ca: &CertificateData, field: &str, cx: &mut Ctx<'_>) {
    // Istio MeshConfig.CertificateData: `oneof certificate_data { pem, spiffe_bundle_url }`.
    match (&ca.pem, &ca.spiffe_bundle_url) {
        (None, None) | (Some(_), Some(_)) => {
            cx.error(field, "exactly one of pem or spiffeBundleUrl must be set");
        }
        (Some(pem), None) => {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                cx.error(
                    format!("{field}.pem"),
                    "pem holds no -----BEGIN CERTIFICATE----- block",
                );
            }
        }
        (None, Some(url)) => {
            if url.is_empty() {
                cx.error(format!("{field}.spiffeBundleUrl"), "must not be empty");
            } else if url.contains("://") && !url.starts_with("file://") {
                cx.error(
                    format!("{field}.spiffeBundleUrl"),
                    format!("{url:?}: trustmesh reads trust bundles from files only (a relative path or file://...), it fetches nothing over the network"),
                );
            }
        }
    }
    for (i, td) in ca.trust_domains.iter().enumerate() {
        check_trust_domain(td, &format!("{field}.trustDomains[{i}]"), cx);
    }
}

pub(crate) fn check_trust_domain(td: &str, field: &str, cx: &mut Ctx<'_>) -> Option<TrustDomain> {
    match TrustDomain::new(td) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(field, format!("invalid trust domain {td:?}: {e}"));
            None
        }
    }
}

/// Shared rule: "Empty strings in any list → error" (digest §3.14), reported per element.
pub(crate) fn no_empty_strings(values: &[String], field: &str, cx: &mut Ctx<'_>) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            cx.error(format!("{field}[{i}]"), "empty value is not allowed");
        }
    }
}

/// An IP or CIDR as Istio accepts it: `10.0.0.0/8`, `10.0.0.1` (a /32), `::1`.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    IpNet::from_str(s)
        .ok()
        .or_else(|| IpAddr::from_str(s).ok().map(IpNet::from))
}

/// Go's `strconv.ParseBool`, which istiod uses for `istio.io/dry-run`.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(crate) fn ip_blocks(values: &[String], field: &str, cx: &mut Ctx<'_>) {
    for (i, v) in values.iter().enumerate() {
        if !v.is_empty() && parse_ip_or_cidr(v).is_none() {
            cx.error(
                format!("{field}[{i}]"),
                format!("invalid IP address or CIDR range {v:?}"),
            );
        }
    }
}

pub(crate) fn label_selector(sel: &LabelSelector, field: &str, cx: &mut Ctx<'_>) {
    // Istio ValidateWorkloadSelector: "empty key is not supported in selector" and
    // "wildcard is not supported in selector".
    for (k, v) in &sel.match_labels {
        let f = format!("{field}.matchLabels.{k}");
        if k.is_empty() {
            cx.error(f, "empty key is not supported in selector");
        } else if k.contains('*') || v.contains('*') {
            cx.error(f, "wildcard is not supported in selector");
        }
    }
}

/// Kubernetes DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let ok_ends = !s.starts_with('-') && !s.ends_with('-');
    if s.is_empty() || s.len() > 63 || !ok_chars || !ok_ends {
        return Err(format!(
            "{s:?} is not a valid DNS-1123 label: lower case alphanumerics and '-', starting and ending with an alphanumeric, at most 63 characters"
        ));
    }
    Ok(())
}

/// Kubernetes DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| dns1123_label(l).is_err()) {
        return Err(format!(
            "{s:?} is not a valid DNS-1123 subdomain: lower case alphanumerics, '-' and '.', each part starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

/// Kubernetes qualified name (label keys): `[prefix/]name`, name ≤ 63 of `[A-Za-z0-9._-]`
/// starting and ending alphanumeric; prefix a DNS subdomain.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let bad_name = name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if bad_name || prefix.is_some_and(|p| dns1123_subdomain(p).is_err()) {
        return Err(format!(
            "{s:?} is not a valid label key: [prefix/]name, name of alphanumerics, '-', '_', '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// Parses a resource from JSON (the model is YAML-agnostic; JSON keeps core free of YAML).
    pub(crate) fn res(kind: Kind, json: serde_json::Value) -> Resource {
        Resource::deserialize_as(kind, json).unwrap()
    }

    /// The messages of all errors, `field: message`.
    pub(crate) fn errors(r: &Resource) -> Vec<String> {
        validate_resource(r)
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    /// The messages of all warnings, `field: message`.
    pub(crate) fn warnings(r: &Resource) -> Vec<String> {
        validate_resource(r)
            .warnings
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    /// Asserts that some error mentions `field` and contains `needle`.
    #[track_caller]
    pub(crate) fn assert_error(r: &Resource, field: &str, needle: &str) {
        let errs = errors(r);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(needle)),
            "expected error at {field} containing {needle:?}, got {errs:#?}"
        );
    }

    #[track_caller]
    pub(crate) fn assert_warning(r: &Resource, field: &str, needle: &str) {
        let w = warnings(r);
        assert!(
            w.iter()
                .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(needle)),
            "expected warning at {field} containing {needle:?}, got {w:#?}"
        );
    }

    #[track_caller]
    pub(crate) fn assert_valid(r: &Resource) {
        let errs = errors(r);
        assert!(errs.is_empty(), "expected no errors, got {errs:#?}");
    }

    fn mesh(spec: serde_json::Value) -> Resource {
        res(
            Kind::MeshConfig,
            serde_json::json!({"apiVersion": "trustmesh.io/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "mesh"}, "spec": spec}),
        )
    }

    #[test]
    fn metadata_names_follow_kubernetes() {
        let r = res(
            Kind::Namespace,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}),
        );
        assert_error(&r, "metadata.name", "name is required");
        let r = res(
            Kind::Namespace,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Prod"}}),
        );
        assert_error(&r, "metadata.name", "DNS-1123 label");
        let r = res(
            Kind::Namespace,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "namespace": "x", "labels": {"-bad": "v"}, "creationTimestamp": "yesterday"}}),
        );
        assert_warning(&r, "metadata.namespace", "cluster-scoped");
        assert_error(&r, "metadata.labels.-bad", "label key");
        assert_error(&r, "metadata.creationTimestamp", "RFC 3339");
        let r = res(
            Kind::Namespace,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "labels": {"istio-injection": "enabled", "app.kubernetes.io/name": "x"}}}),
        );
        assert_valid(&r);
    }

    #[test]
    fn mesh_config_rules() {
        assert_valid(&mesh(serde_json::json!({
            "trustDomain": "us.cluster.local", "trustDomainAliases": ["cluster.local"], "rootNamespace": "istio-system",
            "workloadCertTTL": "24h", "networks": {"eu": {"trustDomain": "eu.cluster.local"}},
            "caCertificates": [{"spiffeBundleUrl": "bundles/eu.json", "trustDomains": ["eu.cluster.local"]}],
            "pathNormalization": {"normalization": "MERGE_SLASHES"}
        })));
        let r = mesh(
            serde_json::json!({"trustDomain": "US.local", "workloadCertTTL": "3000h", "networks": {"eu": {}}}),
        );
        assert_error(&r, "spec.trustDomain", "invalid trust domain");
        assert_error(
            &r,
            "spec.workloadCertTTL",
            "exceeds MAX_WORKLOAD_CERT_TTL 2160h0m0s",
        );
        assert_error(&r, "spec.networks.eu.trustDomain", "required");
        let r = mesh(serde_json::json!({"workloadCertTTL": "10s"}));
        assert_error(&r, "spec.workloadCertTTL", "shorter than 1m0s");
        // Istio CertificateData: "oneof certificate_data { pem, spiffe_bundle_url }".
        let r = mesh(
            serde_json::json!({"caCertificates": [{}, {"pem": "x"}, {"spiffeBundleUrl": "https://eu.example/bundle"}]}),
        );
        assert_error(
            &r,
            "spec.caCertificates[0]",
            "exactly one of pem or spiffeBundleUrl",
        );
        assert_error(&r, "spec.caCertificates[1].pem", "BEGIN CERTIFICATE");
        assert_error(&r, "spec.caCertificates[2].spiffeBundleUrl", "files only");
    }

    #[test]
    fn ip_or_cidr_accepts_bare_ips() {
        // Ecosystem pitfall 12: "Istio ipBlocks accept bare IPs; IpNet::from_str doesn't."
        assert_eq!(
            parse_ip_or_cidr("10.0.0.1").unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(parse_ip_or_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_ip_or_cidr("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_ip_or_cidr("10.0.0.0/33").is_none());
        assert!(parse_ip_or_cidr("10.0.0").is_none());
    }

    #[test]
    fn dns_names() {
        assert!(dns1123_label("prod-1").is_ok());
        assert!(dns1123_label("-x").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("topology.kubernetes.io/zone").is_ok());
        assert!(qualified_name("a/b/c").is_err());
    }
}
