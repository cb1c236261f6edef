//! The analyzer behind `trustmesh check` (like `istioctl analyze`): reads a validated
//! [`Snapshot`] and reports configurations that are accepted but will not do what their
//! author meant, or that fall short of the security practices platform teams follow.
//!
//! Every [`Finding`] carries a stable [`Code`] (`TM0101`...), a [`Severity`], the resource
//! and where it was read, the field, a message and a one-line fix. The codes are documented
//! in `docs/analyzer.md`; `TM0000` (the config is rejected) and `TM0001` (an admission
//! validation warning) are reserved for what the loader reports, so scripts see one code
//! space. Validation warnings that an analyzer finding restates in more detail are folded
//! into it ([`Finding::supersedes`]).
//!
//! What lives here: the checks (`policies.rs`: selectors and principal spelling, `tcp.rs`:
//! HTTP-only attributes on TCP ports, `plaintext.rs`: what plaintext peers and wildcards
//! reach, `mtls.rs`: PeerAuthentication and DestinationRule interplay, `practices.rs`:
//! namespaces, certificates, identities, regions). What does not: admission validation
//! ([`crate::validate`], run before a snapshot exists), loading files, printing. Effective
//! mTLS modes come from [`crate::peerauth::resolve`], the same code the proxy runs.
//! Findings are sorted by file, line, code, so output is deterministic.

mod mtls;
mod plaintext;
mod policies;
mod practices;
mod tcp;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::model::security::MtlsMode;
use crate::model::{AuthorizationPolicy, Kind, Object, ServiceEntry, key};
use crate::peerauth::{self, WorkloadMtls};
use crate::snapshot::{Snapshot, Sourced, Workload};
use crate::validate::{Origin, parse_go_bool};

/// How bad a finding is. `trustmesh check` exits 1 when any finding is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The config does something its author cannot have meant and that breaks traffic or
    /// security (a bypassable policy, a handshake that always fails).
    Error,
    /// Probably wrong, or short of a security practice.
    Warning,
    /// Worth knowing; a deliberate exception looks like this.
    Info,
}

impl Severity {
    /// `error`, `warning`, `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding's stable code. Numbers never change meaning; retired codes are not reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// TM0000: the config is rejected (a load or admission error). Reported by the loader.
    ConfigRejected,
    /// TM0001: an admission validation warning no analyzer finding restates.
    ValidationWarning,
    /// TM0101: a selector selects no workload.
    SelectorMatchesNothing,
    /// TM0102: a DENY rule with HTTP-only attributes denies all TCP traffic on its ports.
    DenyHttpOnlyOnTcp,
    /// TM0103: a principal written with `spiffe://` never matches.
    PrincipalWithScheme,
    /// TM0104: a `*` inside a principal is a literal, not a wildcard.
    PrincipalInnerWildcard,
    /// TM0105: an ALLOW rule's negative identity matcher is satisfied by plaintext peers.
    AllowNegativeMatchesPlaintext,
    /// TM0106: a DestinationRule's TLS mode conflicts with the destination's mTLS mode.
    DestinationTlsConflict,
    /// TM0107: a namespace holding workloads is not labelled `istio-injection: enabled`.
    NamespaceNotInjected,
    /// TM0108: workloads in a namespace that has no Namespace resource.
    NamespaceUndeclared,
    /// TM0109: a production namespace is not STRICT on every workload port.
    ProductionNotStrict,
    /// TM0110: workloads with no ALLOW policy: no deny-by-default.
    NoDenyByDefault,
    /// TM0111: an ALLOW rule with a broad wildcard source (least privilege).
    BroadAllow,
    /// TM0112: a workload certificate lifetime over 24 h.
    LongCertificateLifetime,
    /// TM0113: several services share one ServiceAccount (one identity).
    SharedServiceAccount,
    /// TM0114: workloads in several regions/networks share one trust domain.
    SharedTrustDomainAcrossRegions,
    /// TM0115: a principal from a trust domain with no roots can never authenticate.
    UnknownTrustDomain,
    /// TM0116: a DENY rule on positive identities that plaintext bypasses.
    DenyBypassedByPlaintext,
}

impl Code {
    /// Every code, in number order.
    pub const ALL: [Code; 18] = [
        Code::ConfigRejected,
        Code::ValidationWarning,
        Code::SelectorMatchesNothing,
        Code::DenyHttpOnlyOnTcp,
        Code::PrincipalWithScheme,
        Code::PrincipalInnerWildcard,
        Code::AllowNegativeMatchesPlaintext,
        Code::DestinationTlsConflict,
        Code::NamespaceNotInjected,
        Code::NamespaceUndeclared,
        Code::ProductionNotStrict,
        Code::NoDenyByDefault,
        Code::BroadAllow,
        Code::LongCertificateLifetime,
        Code::SharedServiceAccount,
        Code::SharedTrustDomainAcrossRegions,
        Code::UnknownTrustDomain,
        Code::DenyBypassedByPlaintext,
    ];

    /// `TM0xxx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ConfigRejected => "TM0000",
            Code::ValidationWarning => "TM0001",
            Code::SelectorMatchesNothing => "TM0101",
            Code::DenyHttpOnlyOnTcp => "TM0102",
            Code::PrincipalWithScheme => "TM0103",
            Code::PrincipalInnerWildcard => "TM0104",
            Code::AllowNegativeMatchesPlaintext => "TM0105",
            Code::DestinationTlsConflict => "TM0106",
            Code::NamespaceNotInjected => "TM0107",
            Code::NamespaceUndeclared => "TM0108",
            Code::ProductionNotStrict => "TM0109",
            Code::NoDenyByDefault => "TM0110",
            Code::BroadAllow => "TM0111",
            Code::LongCertificateLifetime => "TM0112",
            Code::SharedServiceAccount => "TM0113",
            Code::SharedTrustDomainAcrossRegions => "TM0114",
            Code::UnknownTrustDomain => "TM0115",
            Code::DenyBypassedByPlaintext => "TM0116",
        }
    }

    /// A short name, as in istioctl's message names.
    pub fn name(self) -> &'static str {
        match self {
            Code::ConfigRejected => "ConfigRejected",
            Code::ValidationWarning => "ValidationWarning",
            Code::SelectorMatchesNothing => "SelectorMatchesNothing",
            Code::DenyHttpOnlyOnTcp => "DenyHttpOnlyOnTcp",
            Code::PrincipalWithScheme => "PrincipalWithScheme",
            Code::PrincipalInnerWildcard => "PrincipalInnerWildcard",
            Code::AllowNegativeMatchesPlaintext => "AllowNegativeMatchesPlaintext",
            Code::DestinationTlsConflict => "DestinationTlsConflict",
            Code::NamespaceNotInjected => "NamespaceNotInjected",
            Code::NamespaceUndeclared => "NamespaceUndeclared",
            Code::ProductionNotStrict => "ProductionNotStrict",
            Code::NoDenyByDefault => "NoDenyByDefault",
            Code::BroadAllow => "BroadAllow",
            Code::LongCertificateLifetime => "LongCertificateLifetime",
            Code::SharedServiceAccount => "SharedServiceAccount",
            Code::SharedTrustDomainAcrossRegions => "SharedTrustDomainAcrossRegions",
            Code::UnknownTrustDomain => "UnknownTrustDomain",
            Code::DenyBypassedByPlaintext => "DenyBypassedByPlaintext",
        }
    }

    /// Validation warnings this code restates: a warning on the same resource, at or below
    /// the finding's field, whose message contains one of these is folded into the finding.
    fn folds(self) -> &'static [&'static str] {
        match self {
            Code::SelectorMatchesNothing => &["selects no"],
            Code::DenyHttpOnlyOnTcp => &["will deny all traffic to TCP ports"],
            Code::PrincipalWithScheme => &["principals are written without spiffe://"],
            Code::NamespaceUndeclared => &["has no Namespace resource"],
            Code::UnknownTrustDomain => &["no peer from it can authenticate"],
            _ => &[],
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One thing the analyzer found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The stable code.
    pub code: Code,
    /// How bad it is.
    pub severity: Severity,
    /// `Kind ns/name` (or `Kind name` when cluster-scoped).
    pub resource: String,
    /// Where the resource was read (its document's first line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The field, e.g. `spec.rules[0].from[0].source.notNamespaces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong and what it does at run time.
    pub message: String,
    /// One line: what to change.
    pub fix: String,
}

impl Finding {
    /// Whether this finding restates the validation warning `(resource, field, message)`,
    /// so that `trustmesh check` shows only the finding: same resource, the warning's field
    /// is the finding's field or below it, and the message is one this code folds.
    pub fn supersedes(&self, resource: &str, field: Option<&str>, message: &str) -> bool {
        if self.resource != resource || !self.code.folds().iter().any(|n| message.contains(n)) {
            return false;
        }
        match (self.field.as_deref(), field) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                theirs == mine
                    || theirs
                        .strip_prefix(mine)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            }
        }
    }
}

/// Analyzes a snapshot. Deterministic: sorted by file, line, code (findings without an
/// origin last), then resource, field and message.
pub fn analyze(snap: &Snapshot) -> Vec<Finding> {
    let cx = Cx::new(snap);
    let mut out = Vec::new();
    policies::check(&cx, &mut out);
    mtls::check(&cx, &mut out);
    practices::check(&cx, &mut out);
    out.sort_by(|a, b| {
        let key = |f: &Finding| {
            (
                f.origin.is_none(),
                f.origin.as_ref().map(|o| (o.file.clone(), o.line)),
                f.code,
                f.resource.clone(),
                f.field.clone(),
                f.message.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out.dedup();
    out
}

/// The snapshot with what several checks need computed once.
struct Cx<'a> {
    snap: &'a Snapshot,
    /// Effective mTLS modes per workload, by index into `snap.workloads()`.
    modes: Vec<WorkloadMtls>,
    /// What each workload port speaks, by index into `snap.workloads()`.
    protocols: Vec<BTreeMap<u16, PortProtocol>>,
}

impl<'a> Cx<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let root = snap.mesh().root_namespace.as_str();
        let modes = snap
            .workloads()
            .iter()
            .map(|w| {
                peerauth::resolve(
                    snap.peer_authentications().iter().map(|p| &p.object),
                    root,
                    &w.namespace,
                    &w.labels,
                )
            })
            .collect();
        let protocols = snap
            .workloads()
            .iter()
            .map(|w| port_protocols(snap, w))
            .collect();
        Self {
            snap,
            modes,
            protocols,
        }
    }

    fn root(&self) -> &str {
        &self.snap.mesh().root_namespace
    }

    /// Workloads with their index.
    fn workloads(&self) -> impl Iterator<Item = (usize, &'a Workload)> + 'a {
        self.snap.workloads().iter().enumerate()
    }

    /// The ports worth looking at for `w`: its declared ports and its `portLevelMtls`
    /// ports; `None` stands for "any other port" (the workload-level mode), included when
    /// the workload declares no ports.
    fn ports_of(&self, i: usize) -> Vec<Option<u16>> {
        let w = &self.snap.workloads()[i];
        let mut set: BTreeSet<u16> = w.ports.values().copied().collect();
        set.extend(self.modes[i].ports.keys().copied());
        let mut v: Vec<Option<u16>> = set.into_iter().map(Some).collect();
        if w.ports.is_empty() {
            v.push(None);
        }
        v
    }

    /// The effective mode of workload `i` on `port` (`None`: any other port).
    fn mode(&self, i: usize, port: Option<u16>) -> &peerauth::ModeDecision {
        match port {
            Some(p) => self.modes[i].for_port(p),
            None => &self.modes[i].workload,
        }
    }

    /// Indices of the workloads an AuthorizationPolicy is attached to.
    fn policy_workloads(&self, ap: &AuthorizationPolicy) -> Vec<usize> {
        self.workloads()
            .filter(|(_, w)| policy_applies(ap, w, self.root()))
            .map(|(i, _)| i)
            .collect()
    }
}

/// A workload port's protocol, as far as the config tells.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortProtocol {
    kind: Proto,
    /// Why: `ServiceEntry ns/name port http (HTTP)` or `port name tcp-db`.
    because: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Tcp,
    /// Not declared: the proxy sniffs; anything that is not HTTP is handled as TCP.
    Unknown,
}

/// Istio's protocol selection: a ServiceEntry port's `protocol`, else the port name's
/// `<protocol>[-<suffix>]` prefix ("Istio supports ... by naming the service port
/// `name: <protocol>[-<suffix>]`"), else undeclared (auto-detection).
fn protocol_word(p: &str) -> Option<Proto> {
    match p.to_ascii_lowercase().as_str() {
        "http" | "http2" | "grpc" | "grpc-web" => Some(Proto::Http),
        "https" | "tls" | "tcp" | "mongo" | "mysql" | "redis" => Some(Proto::Tcp),
        _ => None,
    }
}

fn protocol_from_name(name: &str) -> Option<Proto> {
    // `grpc-web` is a protocol name with a dash; try it before splitting off a suffix.
    if let Some(p) = protocol_word(name) {
        return Some(p);
    }
    if name.to_ascii_lowercase().starts_with("grpc-web-") {
        return Some(Proto::Http);
    }
    name.split_once('-').and_then(|(p, _)| protocol_word(p))
}

/// The port a ServiceEntry port reaches on workload `w`: "ports: ... a map of
/// servicePortName to this endpoint's port" (WorkloadEntry), else `targetPort`, else the
/// service port itself.
fn target_port(w: &Workload, sp: &crate::model::networking::ServicePort) -> Option<u16> {
    if let Some(p) = w.ports.get(&sp.name) {
        return Some(*p);
    }
    u16::try_from(sp.target_port.unwrap_or(sp.number)).ok()
}

fn port_protocols(snap: &Snapshot, w: &Workload) -> BTreeMap<u16, PortProtocol> {
    let mut out = BTreeMap::new();
    for se in snap.service_entries() {
        if !snap.service_workloads(se).any(|x| std::ptr::eq(x, w)) {
            continue;
        }
        for sp in &se.spec.ports {
            let Some(port) = target_port(w, sp) else {
                continue;
            };
            let declared = sp.protocol.as_deref().and_then(protocol_word);
            let kind = declared.or_else(|| protocol_from_name(&sp.name));
            if let Some(kind) = kind {
                let proto = sp.protocol.clone().unwrap_or_else(|| sp.name.clone());
                out.entry(port).or_insert(PortProtocol {
                    kind,
                    because: format!(
                        "{} port {} ({})",
                        key(Kind::ServiceEntry, se),
                        sp.name,
                        proto.to_uppercase()
                    ),
                });
            }
        }
    }
    for (name, port) in &w.ports {
        let entry = out.entry(*port);
        if let std::collections::btree_map::Entry::Vacant(v) = entry {
            v.insert(match protocol_from_name(name) {
                Some(kind) => PortProtocol {
                    kind,
                    because: format!("port name {name}"),
                },
                None => PortProtocol {
                    kind: Proto::Unknown,
                    because: format!(
                        "port name {name} declares no protocol and no ServiceEntry port does"
                    ),
                },
            });
        }
    }
    out
}

/// "Policy in namespace N applies to workloads in N; in the **root namespace it applies to
/// all namespaces**"; "`selector.matchLabels` must be a subset of the workload's labels";
/// "**A sidecar ignores any policy that has targetRef(s)**" (digest §3.1).
fn policy_applies(ap: &AuthorizationPolicy, w: &Workload, root: &str) -> bool {
    if has_target_ref(ap) {
        return false;
    }
    let ns = ap.metadata.namespace_str();
    (ns == root || ns == w.namespace)
        && ap
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.matches(&w.labels))
}

fn has_target_ref(ap: &AuthorizationPolicy) -> bool {
    ap.spec.target_ref.is_some() || !ap.spec.target_refs.is_empty()
}

/// "`metadata.annotations["istio.io/dry-run"] = "true"` (parsed with Go
/// `strconv.ParseBool`; bad value → logged, treated as false)" (digest §3.11).
fn is_dry_run(ap: &AuthorizationPolicy) -> bool {
    use crate::model::security::Action;
    matches!(ap.spec.action, Action::Allow | Action::Deny)
        && ap
            .metadata
            .annotations
            .get("istio.io/dry-run")
            .is_some_and(|v| parse_go_bool(v) == Some(true))
}

/// Builds findings about one resource.
struct On<'o> {
    resource: String,
    origin: Option<Origin>,
    out: &'o mut Vec<Finding>,
}

impl<'o> On<'o> {
    fn new<S>(kind: Kind, r: &Sourced<Object<S>>, out: &'o mut Vec<Finding>) -> Self {
        Self {
            resource: key(kind, r),
            origin: r.origin.clone(),
            out,
        }
    }

    fn push(
        &mut self,
        code: Code,
        severity: Severity,
        field: Option<String>,
        message: String,
        fix: impl Into<String>,
    ) {
        self.out.push(Finding {
            code,
            severity,
            resource: self.resource.clone(),
            origin: self.origin.clone(),
            field,
            message,
            fix: fix.into(),
        });
    }
}

/// `ns/name:port`, or `ns/name (all ports)` for the workload-level mode.
fn at(w: &Workload, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{}/{}:{p}", w.namespace, w.name),
        None => format!("{}/{} (all ports)", w.namespace, w.name),
    }
}

/// At most five items, then "and N more".
fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..SHOWN].join(", "),
            items.len() - SHOWN
        )
    }
}

/// A mode with where it came from: `PERMISSIVE (PeerAuthentication production/edge)` or
/// `PERMISSIVE (default: no PeerAuthentication applies)`.
fn mode_why(d: &peerauth::ModeDecision) -> String {
    match &d.policy {
        Some(p) => format!("{} by PeerAuthentication {p}", d.mode.as_str()),
        None => format!("{} (no PeerAuthentication applies)", d.mode.as_str()),
    }
}

/// A production-like namespace: its name contains `prod` (`prod`, `production`,
/// `payments-prod`).
fn is_production(namespace: &str) -> bool {
    namespace.to_ascii_lowercase().contains("prod")
}

fn accepts_plaintext(m: MtlsMode) -> bool {
    matches!(
        m,
        MtlsMode::Permissive | MtlsMode::Disable | MtlsMode::Unset
    )
}

/// The workloads behind a ServiceEntry that trustmesh proxies (in-mesh ones).
fn mesh_service_workloads<'a>(
    snap: &'a Snapshot,
    se: &'a ServiceEntry,
) -> impl Iterator<Item = &'a Workload> + 'a {
    let external = se.spec.location == Some(crate::model::networking::Location::MeshExternal);
    snap.service_workloads(se).filter(move |_| !external)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Resource;
    use crate::snapshot::SourcedResource;

    /// Builds a snapshot from JSON documents (the model is YAML-agnostic); document `i` is
    /// `test.yaml` line `10 * i + 1`, so findings can be told apart by line.
    pub(crate) fn snap(docs: Vec<serde_json::Value>) -> Snapshot {
        let resources: Vec<SourcedResource> = docs
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let kind =
                    Kind::from_type_meta(d["apiVersion"].as_str(), d["kind"].as_str()).unwrap();
                let object = Resource::deserialize_as(kind, d).unwrap();
                Sourced {
                    origin: Some(Origin {
                        file: "test.yaml".into(),
                        line: u32::try_from(10 * i + 1).unwrap(),
                    }),
                    object,
                }
            })
            .collect();
        match Snapshot::build(resources) {
            Ok((s, _)) => s,
            Err(f) => panic!("invalid test config: {:#?}", f.errors),
        }
    }

    /// The findings with `code`.
    pub(crate) fn with(code: Code, docs: Vec<serde_json::Value>) -> Vec<Finding> {
        analyze(&snap(docs))
            .into_iter()
            .filter(|f| f.code == code)
            .collect()
    }

    pub(crate) fn ns(name: &str, injected: bool) -> serde_json::Value {
        let labels = if injected {
            serde_json::json!({"istio-injection": "enabled"})
        } else {
            serde_json::json!({})
        };
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    }

    /// A WorkloadEntry `name` in `ns` with `app: name` and service account `name`.
    pub(crate) fn we(
        ns: &str,
        name: &str,
        addr: &str,
        ports: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"address": addr, "serviceAccount": name, "labels": {"app": name}, "ports": ports}})
    }

    pub(crate) fn ap(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    pub(crate) fn pa(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    pub(crate) fn strict_mesh() -> serde_json::Value {
        pa(
            "istio-system",
            "default",
            serde_json::json!({"mtls": {"mode": "STRICT"}}),
        )
    }

    #[test]
    fn codes_are_unique_and_numbered_in_order() {
        let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted);
        assert!(codes.iter().all(|c| c.len() == 6 && c.starts_with("TM0")));
    }

    #[test]
    fn every_code_is_documented_in_docs_analyzer_md() {
        let doc = include_str!("../../../../docs/analyzer.md");
        for c in Code::ALL {
            let row = format!("| {} | {} |", c.as_str(), c.name());
            assert!(doc.contains(&row), "docs/analyzer.md lacks the row {row:?}");
        }
    }

    #[test]
    fn an_empty_mesh_has_no_findings() {
        assert_eq!(analyze(&Snapshot::default()), Vec::new());
    }

    #[test]
    fn findings_are_sorted_by_file_line_code() {
        // Two policies, the later one (line 21) with two problems, the earlier (line 11)
        // with one: order is line 11, then line 21 in code order.
        let docs = vec![
            ns("default", true),
            ap(
                "default",
                "a",
                serde_json::json!({"selector": {"matchLabels": {"app": "none"}}}),
            ),
            ap(
                "default",
                "b",
                serde_json::json!({"selector": {"matchLabels": {"app": "none"}},
                "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}]}),
            ),
        ];
        let got: Vec<(u32, &str)> = analyze(&snap(docs.clone()))
            .iter()
            .map(|f| (f.origin.as_ref().unwrap().line, f.code.as_str()))
            .collect();
        assert_eq!(got, [(11, "TM0101"), (21, "TM0101"), (21, "TM0103")]);
        // Deterministic: the same input gives the same output.
        assert_eq!(analyze(&snap(docs.clone())), analyze(&snap(docs)));
    }

    #[test]
    fn supersedes_matches_resource_field_prefix_and_message() {
        let f = Finding {
            code: Code::DenyHttpOnlyOnTcp,
            severity: Severity::Warning,
            resource: "AuthorizationPolicy p/x".into(),
            origin: None,
            field: Some("spec.rules[1]".into()),
            message: String::new(),
            fix: String::new(),
        };
        let msg =
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope";
        assert!(f.supersedes(
            "AuthorizationPolicy p/x",
            Some("spec.rules[1].to[0].operation"),
            msg
        ));
        assert!(f.supersedes("AuthorizationPolicy p/x", Some("spec.rules[1]"), msg));
        assert!(!f.supersedes(
            "AuthorizationPolicy p/x",
            Some("spec.rules[10].to[0].operation"),
            msg
        ));
        assert!(!f.supersedes(
            "AuthorizationPolicy p/y",
            Some("spec.rules[1].to[0].operation"),
            msg
        ));
        assert!(!f.supersedes(
            "AuthorizationPolicy p/x",
            Some("spec.rules[1]"),
            "something else"
        ));
    }

    #[test]
    fn port_protocols_follow_service_entry_then_port_name() {
        let s = snap(vec![
            we(
                "default",
                "db",
                "10.0.0.1",
                serde_json::json!({"tcp-db": 5432, "http-api": 8080, "metrics": 9090, "grpc-web-ui": 7000, "main": 8000}),
            ),
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {"hosts": ["db.default.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                    "workloadSelector": {"labels": {"app": "db"}},
                    "ports": [{"number": 80, "name": "main", "protocol": "TCP"}]}}),
        ]);
        let p = port_protocols(&s, &s.workloads()[0]);
        assert_eq!(p[&5432].kind, Proto::Tcp);
        assert_eq!(p[&8080].kind, Proto::Http);
        assert_eq!(p[&9090].kind, Proto::Unknown);
        assert_eq!(p[&7000].kind, Proto::Http);
        // The ServiceEntry port `main` reaches workload port 8000 (the WorkloadEntry maps
        // the service port name), and says TCP.
        assert_eq!(p[&8000].kind, Proto::Tcp);
        assert!(
            p[&8000].because.contains("ServiceEntry default/db"),
            "{:?}",
            p[&8000]
        );
    }
}
