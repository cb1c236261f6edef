//! AuthorizationPolicy: compile once per workload, evaluate per request or connection
//! (digest §3). The same code runs in the proxy and in `trustmesh authz check`.
//!
//! [`PolicySet::new`] compiles every policy of a snapshot once (values parsed into matchers,
//! trust domain aliases expanded, policies grouped by namespace). [`PolicySet::for_workload`]
//! then picks the policies attached to one workload (§3.1) into [`CompiledPolicies`], so a
//! request only looks at that workload's policies, never at the mesh. [`evaluate_with_mode`]
//! puts the PeerAuthentication mode first (§2.4), so the CLI and the proxy share it.
//!
//! Where trustmesh has no equivalent of an Istio feature, the choice is the fail-closed one
//! and is stated where it is made: CUSTOM (no ext-authz: a matching CUSTOM policy denies), JWT
//! attributes (no RequestAuthentication: never present), `remote.ip` (no trusted proxies: the
//! connection's source address). What is not here: mTLS mode resolution
//! ([`crate::peerauth`]), path normalization ([`crate::normalize`]).

mod compile;
mod index;
mod matcher;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::model::AuthorizationPolicy;
use crate::model::labels_subset;
use crate::model::security::{Action, MtlsMode};
use crate::normalize::{
    Normalization, NormalizedPath, Reject400, check_header_name, check_method, header_value,
    normalize_path,
};
use crate::peerauth::{ModeDecision, WorkloadMtls, arc_serde};
use crate::snapshot::{MeshSettings, Snapshot};
use crate::{SpiffeId, TrustDomain};

use compile::{CompiledPolicy, CompiledRule, compile_policy, has_target_ref};
use index::PolicyList;

/// The mesh settings authorization depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzSettings {
    /// Policies here apply to every namespace.
    pub root_namespace: String,
    /// The local trust domain.
    pub trust_domain: TrustDomain,
    /// Its aliases (trust domain migration).
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// How request paths are normalized before matching.
    pub normalization: Normalization,
}

impl Default for AuthzSettings {
    fn default() -> Self {
        Self::from_mesh(&MeshSettings::default())
    }
}

impl AuthzSettings {
    /// The settings of a snapshot's mesh.
    pub fn from_mesh(m: &MeshSettings) -> Self {
        Self {
            root_namespace: m.root_namespace.clone(),
            trust_domain: m.trust_domain.clone(),
            trust_domain_aliases: m.trust_domain_aliases.clone(),
            normalization: m.path_normalization.into(),
        }
    }

    /// The local trust domain, then its aliases.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.trust_domain.as_str())
            .chain(self.trust_domain_aliases.iter().map(TrustDomain::as_str))
    }
}

/// What the destination's proxy knows about one request (HTTP) or connection (TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The verified peer identity; `None` for plaintext.
    pub peer: Option<SpiffeId>,
    /// The connection's source address.
    pub source_ip: IpAddr,
    /// The address the connection reached (the workload's).
    pub dest_ip: IpAddr,
    /// The workload port the connection reached.
    pub dest_port: u16,
    /// TLS SNI, if any.
    pub sni: Option<String>,
    /// The HTTP request; `None` for a TCP connection.
    pub http: Option<HttpRequest>,
}

/// An HTTP request as received, before normalization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// The method as sent.
    pub method: String,
    /// The raw request target (`/a/../b?x=1`), query and percent-encoding included.
    pub target: String,
    /// `:authority` / `Host`, port included if sent.
    pub host: Option<String>,
    /// Other headers in order; repeated names are allowed.
    pub headers: Vec<(String, String)>,
}

/// What the proxy does with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded to the application.
    Allow,
    /// Denied by policy: HTTP 403 `RBAC: access denied`, or a TCP close.
    Deny,
    /// Rejected by normalization with HTTP 400 before any policy ran.
    BadRequest,
    /// Refused at connection accept by the PeerAuthentication mode.
    ConnectionRejected,
}

/// The would-have result of a dry-run policy (Envoy's shadow engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowResult {
    /// The policy alone would have let the request through.
    Allowed,
    /// The policy alone would have denied it.
    Denied,
}

/// One dry-run policy's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRun {
    /// `ns/name`.
    #[serde(serialize_with = "arc_serde::one")]
    pub policy: Arc<str>,
    /// ALLOW or DENY.
    pub action: Action,
    /// Whether one of its rules matched.
    pub matched: bool,
    /// The first matching rule.
    #[serde(serialize_with = "arc_serde::opt")]
    pub rule: Option<Arc<str>>,
    /// Allowed if (ALLOW and matched) or (DENY and not matched).
    pub result: ShadowResult,
}

/// The decision, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request reaches the application.
    pub allowed: bool,
    /// What the client sees.
    pub outcome: Outcome,
    /// Why, in one phrase.
    pub reason: Cow<'static, str>,
    /// `ns/name` of the policy that decided (the PeerAuthentication for a mode rejection).
    #[serde(serialize_with = "arc_serde::opt")]
    pub policy: Option<Arc<str>>,
    /// `ns[<ns>]-policy[<name>]-rule[<i>]` of the rule that decided.
    #[serde(serialize_with = "arc_serde::opt")]
    pub rule: Option<Arc<str>>,
    /// The mTLS mode of the port, when evaluated with [`evaluate_with_mode`].
    pub mtls: Option<ModeDecision>,
    /// Dry-run policies attached to the workload and what they would have done.
    pub dry_run: Vec<DryRun>,
    /// AUDIT policies that matched (the request is marked for audit logging).
    #[serde(serialize_with = "arc_serde::seq")]
    pub audit: Vec<Arc<str>>,
    /// The normalized path policies matched against (HTTP only).
    pub path: Option<String>,
}

impl Decision {
    fn new(outcome: Outcome, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            allowed: outcome == Outcome::Allow,
            outcome,
            reason: reason.into(),
            policy: None,
            rule: None,
            mtls: None,
            dry_run: Vec::new(),
            audit: Vec::new(),
            path: None,
        }
    }

    fn by(mut self, p: &CompiledPolicy, r: &CompiledRule) -> Self {
        self.policy = Some(p.id.clone());
        self.rule = Some(r.id.clone());
        self
    }

    /// The HTTP status the client gets: 400, 403, or `None` (forwarded, or not HTTP).
    pub fn http_status(&self, is_http: bool) -> Option<u16> {
        match self.outcome {
            Outcome::BadRequest => Some(400),
            Outcome::Deny if is_http => Some(403),
            _ => None,
        }
    }
}

/// Everything matchers read, borrowed from the request once.
#[derive(Debug)]
pub(crate) struct EvalCtx<'a> {
    /// Peer ID without `spiffe://`.
    pub(crate) principal: Option<&'a str>,
    /// Peer ID with `spiffe://`.
    pub(crate) peer_uri: Option<&'a str>,
    pub(crate) peer_trust_domain: Option<&'a str>,
    /// `(ns, sa)` of a `/ns/<ns>/sa/<sa>` peer.
    pub(crate) peer_workload: Option<(&'a str, &'a str)>,
    pub(crate) source_ip: IpAddr,
    pub(crate) dest_ip: IpAddr,
    pub(crate) dest_port: u16,
    pub(crate) sni: Option<&'a str>,
    pub(crate) http: Option<HttpCtx<'a>>,
}

/// The HTTP part of [`EvalCtx`].
#[derive(Debug)]
pub(crate) struct HttpCtx<'a> {
    pub(crate) method: &'a str,
    /// Normalized, without query.
    pub(crate) path: &'a str,
    pub(crate) host: Option<&'a str>,
    headers: &'a [(String, String)],
    normalized: &'a NormalizedPath,
}

impl<'a> HttpCtx<'a> {
    /// A header by lowercase name; pseudo-headers map to the request line.
    pub(crate) fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        match name {
            ":authority" | "host" => self.host.map(Cow::Borrowed),
            ":method" => Some(Cow::Borrowed(self.method)),
            ":path" => Some(Cow::Owned(self.normalized.forwarded())),
            _ => header_value(self.headers, name),
        }
    }
}

/// Every policy of a snapshot, compiled once and grouped by namespace.
#[derive(Debug, Clone)]
pub struct PolicySet {
    settings: Arc<AuthzSettings>,
    by_namespace: HashMap<Box<str>, Vec<Arc<CompiledPolicy>>>,
    ignored: Vec<Arc<str>>,
}

impl PolicySet {
    /// Compiles `policies`. Policies with `targetRef(s)` are set aside ([`PolicySet::ignored`]).
    pub fn new<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        settings: &AuthzSettings,
    ) -> Self {
        let mut by_namespace: HashMap<Box<str>, Vec<Arc<CompiledPolicy>>> = HashMap::new();
        let mut ignored = Vec::new();
        for p in policies {
            // "A sidecar ignores any policy that has targetRef(s)".
            if has_target_ref(p) {
                ignored.push(Arc::from(format!(
                    "{}/{}",
                    p.metadata.namespace_str(),
                    p.metadata.name
                )));
                continue;
            }
            let c = compile_policy(p, settings);
            by_namespace
                .entry(c.namespace.clone())
                .or_default()
                .push(Arc::new(c));
        }
        for v in by_namespace.values_mut() {
            v.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Self {
            settings: Arc::new(settings.clone()),
            by_namespace,
            ignored,
        }
    }

    /// Every AuthorizationPolicy of `snapshot` with its mesh settings.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::new(
            snapshot.authorization_policies().iter().map(|s| &s.object),
            &AuthzSettings::from_mesh(snapshot.mesh()),
        )
    }

    /// `ns/name` of the policies a sidecar ignores because they carry `targetRef(s)`.
    pub fn ignored(&self) -> &[Arc<str>] {
        &self.ignored
    }

    /// The settings the set was compiled with.
    pub fn settings(&self) -> &AuthzSettings {
        &self.settings
    }

    /// The policies attached to the workload in `namespace` with `labels` (§3.1).
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> CompiledPolicies {
        let root = self.settings.root_namespace.as_str();
        // "Lookup namespaces = {root namespace, workload namespace}".
        let scopes: &[&str] = if namespace == root {
            &[root]
        } else {
            &[root, namespace]
        };
        let mut out = CompiledPolicies {
            normalization: self.settings.normalization,
            ..CompiledPolicies::default()
        };
        for ns in scopes {
            for p in self.by_namespace.get(*ns).into_iter().flatten() {
                // "`selector.matchLabels` must be a subset of the workload's labels ... Absent
                // selector or empty `matchLabels` → all workloads in scope." In the root
                // namespace the selector is matched against workloads in every namespace.
                if !labels_subset(&p.selector, labels) {
                    continue;
                }
                let list = match (p.dry_run, p.action) {
                    // "Dry-run policies (§3.11) are excluded from all of the above."
                    (true, _) => &mut out.dry_run,
                    (false, Action::Custom) => &mut out.custom,
                    (false, Action::Deny) => &mut out.deny,
                    (false, Action::Allow) => &mut out.allow,
                    (false, Action::Audit) => &mut out.audit,
                };
                list.push(p.clone());
            }
        }
        for l in [
            &mut out.custom,
            &mut out.deny,
            &mut out.allow,
            &mut out.audit,
            &mut out.dry_run,
        ] {
            l.seal();
        }
        out
    }
}

/// Compiles the policies attached to one workload (only `root_namespace` and `namespace`
/// policies are compiled). For many workloads, build a [`PolicySet`] once instead.
pub fn compile<'a>(
    policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    settings: &AuthzSettings,
) -> CompiledPolicies {
    let relevant = policies.into_iter().filter(|p| {
        let ns = p.metadata.namespace_str();
        ns == namespace || ns == settings.root_namespace
    });
    PolicySet::new(relevant, settings).for_workload(namespace, labels)
}

/// One workload's policies, split by action, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    custom: PolicyList,
    deny: PolicyList,
    allow: PolicyList,
    audit: PolicyList,
    dry_run: PolicyList,
    normalization: Normalization,
}

impl CompiledPolicies {
    /// `ns/name` of every attached policy with its action and dry-run flag, in evaluation order.
    pub fn attached(&self) -> impl Iterator<Item = (&str, Action, bool)> {
        [
            &self.custom,
            &self.deny,
            &self.allow,
            &self.audit,
            &self.dry_run,
        ]
        .into_iter()
        .flat_map(PolicyList::all)
        .map(|p| (&*p.id, p.action, p.dry_run))
    }

    /// Whether a (non-dry-run) ALLOW policy applies, i.e. the workload is deny-by-default.
    pub fn has_allow(&self) -> bool {
        !self.allow.is_empty()
    }

    /// Decides one request or connection (no mTLS mode check; see [`evaluate_with_mode`]).
    pub fn evaluate(&self, req: &Request) -> Decision {
        let normalized;
        let http = match &req.http {
            None => None,
            Some(h) => {
                // "Non-uppercase HTTP method → 400. Header names whitespace → 400."
                let checked = check_method(&h.method)
                    .and_then(|()| h.headers.iter().try_for_each(|(k, _)| check_header_name(k)));
                normalized =
                    match checked.and_then(|()| normalize_path(&h.target, self.normalization)) {
                        Ok(n) => n,
                        Err(e) => return bad_request(e),
                    };
                let host = h.host.as_deref().filter(|s| !s.is_empty()).or_else(|| {
                    h.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                        .map(|(_, v)| v.as_str())
                });
                Some(HttpCtx {
                    method: &h.method,
                    path: normalized.path(),
                    host,
                    headers: &h.headers,
                    normalized: &normalized,
                })
            }
        };
        let peer = req.peer.as_ref();
        let cx = EvalCtx {
            principal: peer.map(SpiffeId::principal),
            peer_uri: peer.map(SpiffeId::as_str),
            peer_trust_domain: peer.map(SpiffeId::trust_domain_str),
            peer_workload: peer.and_then(|p| Some((p.namespace()?, p.service_account()?))),
            source_ip: req.source_ip,
            dest_ip: req.dest_ip,
            dest_port: req.dest_port,
            sni: req.sni.as_deref().filter(|s| !s.is_empty()),
            http,
        };
        let mut d = self.decide(&cx);
        self.report(&cx, &mut d);
        d.path = cx.http.as_ref().map(|h| h.path.to_owned());
        d
    }

    fn decide(&self, cx: &EvalCtx<'_>) -> Decision {
        // "1. CUSTOM policies matching → ask ext-authz; deny if it denies." trustmesh has no
        // ext-authz provider, so a matching CUSTOM policy denies: failing closed is the only
        // answer that never allows what the provider would have refused.
        for p in self.custom.candidates(cx) {
            if let Some(r) = p.first_match(cx) {
                return Decision::new(
                    Outcome::Deny,
                    "matched a CUSTOM policy; trustmesh has no ext-authz provider, so it denies (fail closed)",
                )
                .by(p, r);
            }
        }
        // "2. Any **DENY** policy matches → deny."
        for p in self.deny.candidates(cx) {
            if let Some(r) = p.first_match(cx) {
                return Decision::new(Outcome::Deny, "matched a DENY policy").by(p, r);
            }
        }
        // "3. **No ALLOW policy applies to the workload** → allow." "'ALLOW applies' is per
        // workload, not per port/protocol".
        if self.allow.is_empty() {
            return Decision::new(Outcome::Allow, "no ALLOW policy applies to the workload");
        }
        // "4. Any ALLOW policy matches → allow." "ALLOW policies are OR'ed across all
        // applicable policies (root ns + workload ns)."
        for p in self.allow.candidates(cx) {
            if let Some(r) = p.first_match(cx) {
                return Decision::new(Outcome::Allow, "matched an ALLOW policy").by(p, r);
            }
        }
        // "5. Otherwise deny."
        Decision::new(
            Outcome::Deny,
            "ALLOW policies apply to the workload and none matched",
        )
    }

    /// "AUDIT only marks the request for auditing; never changes the decision." Dry-run
    /// policies: "results only in logs".
    fn report(&self, cx: &EvalCtx<'_>, d: &mut Decision) {
        for p in self.audit.candidates(cx) {
            if p.first_match(cx).is_some() {
                d.audit.push(p.id.clone());
            }
        }
        for p in self.dry_run.all() {
            let rule = p.first_match(cx).map(|r| r.id.clone());
            let matched = rule.is_some();
            let allowed = (p.action == Action::Allow) == matched;
            d.dry_run.push(DryRun {
                policy: p.id.clone(),
                action: p.action,
                matched,
                rule,
                result: if allowed {
                    ShadowResult::Allowed
                } else {
                    ShadowResult::Denied
                },
            });
        }
    }
}

fn bad_request(e: Reject400) -> Decision {
    Decision::new(Outcome::BadRequest, format!("bad request (400): {e}"))
}

/// PeerAuthentication first, then authorization: "PeerAuthentication is enforced at
/// connection accept ... before any AP. A plaintext connection to a STRICT port is rejected
/// regardless of any ALLOW-all policy."
pub fn evaluate_with_mode(
    mtls: &WorkloadMtls,
    policies: &CompiledPolicies,
    req: &Request,
) -> Decision {
    let mode = mtls.for_port(req.dest_port);
    let rejected = match (mode.mode, req.peer.is_some()) {
        // "`STRICT` | mTLS with client cert required; plaintext rejected".
        (MtlsMode::Strict, false) => Some("plaintext rejected by STRICT"),
        // "`DISABLE` | ... plaintext only": the port has no mTLS filter chain.
        (MtlsMode::Disable, true) => Some("mTLS rejected by DISABLE"),
        _ => None,
    };
    let mut d = match rejected {
        Some(reason) => {
            let mut d = Decision::new(Outcome::ConnectionRejected, reason);
            d.policy = mode.policy.clone();
            d
        }
        None => policies.evaluate(req),
    };
    d.mtls = Some(mode.clone());
    d
}

/// One workload's inbound rules: its mTLS modes and its authorization policies.
#[derive(Debug, Clone, Default)]
pub struct InboundPolicy {
    /// PeerAuthentication modes.
    pub mtls: WorkloadMtls,
    /// AuthorizationPolicies.
    pub authz: CompiledPolicies,
}

impl InboundPolicy {
    /// Resolves both for the workload in `namespace` with `labels` of `snapshot`.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        set: &PolicySet,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            mtls: crate::peerauth::resolve(
                snapshot.peer_authentications().iter().map(|s| &s.object),
                &set.settings().root_namespace,
                namespace,
                labels,
            ),
            authz: set.for_workload(namespace, labels),
        }
    }

    /// [`evaluate_with_mode`] on this workload.
    pub fn decide(&self, req: &Request) -> Decision {
        evaluate_with_mode(&self.mtls, &self.authz, req)
    }
}
