//! What `trustmesh debug` prints: the explanation as data (`-o json|yaml`) and as text
//! (the default), one `KEY  value` line each, sections in capitals.

use std::net::IpAddr;

use serde::Serialize;
use trustmesh_core::authz::Outcome;
use trustmesh_core::destination::Level;
use trustmesh_core::model::networking::TlsMode;
use trustmesh_core::model::security::MtlsMode;
use trustmesh_core::peerauth::{ModeDecision, Scope};
use trustmesh_pki::CertInfo;

use crate::probe::{denial_line, mode_source};

/// Everything `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Explanation {
    pub(super) source: SourceView,
    pub(super) destination: DestinationView,
    /// The DestinationRule(s) the source applies; `null` when none (auto mTLS).
    pub(super) destination_rule: Option<RuleView>,
    /// What the source proxy originates towards the endpoint.
    pub(super) client_tls: Option<ClientTlsView>,
    /// The destination port's mode.
    pub(super) destination_mode: Option<ModeView>,
    /// The destination proxy's decision for this request, from the config.
    pub(super) authorization: Option<AuthzView>,
    /// The request sent through the source proxy.
    pub(super) attempt: AttemptView,
    /// The attempt got an answer below 400.
    pub(super) ok: bool,
    /// For a failure: the likely cause, one line.
    pub(super) cause: Option<String>,
    /// Other findings (the running mesh disagreeing with the config, ...).
    pub(super) notes: Vec<String>,
}

/// The source workload and its proxy's certificate.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SourceView {
    pub(super) workload: String,
    pub(super) address: IpAddr,
    /// The SPIFFE ID the config gives it.
    pub(super) identity: String,
    /// Its proxy's certificate; `null` when the proxy did not answer.
    pub(super) certificate: Option<CertView>,
    /// Why there is no certificate.
    pub(super) error: Option<String>,
}

/// A proxy's SVID as it serves it, with the chain in display form.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CertView {
    pub(super) spiffe_id: String,
    pub(super) serial: String,
    pub(super) not_before: String,
    pub(super) not_after: String,
    pub(super) renewal_time: String,
    /// The chain verifies against the trust bundles and names the workload's identity.
    pub(super) verified: bool,
    pub(super) problem: Option<String>,
    /// Leaf first.
    pub(super) chain: Vec<CertInfo>,
}

/// Where TARGET leads, as the source proxy resolves it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DestinationView {
    /// TARGET as given.
    pub(super) target: String,
    /// The service host it resolves to.
    pub(super) host: Option<String>,
    /// The service port.
    pub(super) port: Option<u16>,
    /// `ns/name`.
    pub(super) service_entry: Option<String>,
    pub(super) endpoints: Vec<EndpointView>,
    /// The endpoint explained (`ns/name`), when it is a workload.
    pub(super) workload: Option<String>,
    /// Its address and workload port.
    pub(super) address: Option<String>,
    /// Its SPIFFE ID.
    pub(super) identity: Option<String>,
    /// `HTTP` or `TCP`.
    pub(super) protocol: Option<&'static str>,
    /// Why TARGET did not resolve.
    pub(super) error: Option<String>,
}

/// One endpoint of the service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointView {
    pub(super) address: String,
    pub(super) workload: Option<String>,
    pub(super) identity: Option<String>,
}

/// The DestinationRule(s) selected for the client.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RuleView {
    pub(super) rules: Vec<String>,
    pub(super) host: String,
    pub(super) level: Level,
}

/// The TLS the source proxy originates.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClientTlsView {
    pub(super) mode: TlsMode,
    /// Chosen by auto mTLS (no `tls` in the rule).
    pub(super) auto_mtls: bool,
    pub(super) sni: Option<String>,
    /// Secure naming: the server must present one of these.
    pub(super) allowed_server_identities: Vec<String>,
}

/// The destination port's PeerAuthentication mode.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ModeView {
    pub(super) port: u16,
    pub(super) mode: MtlsMode,
    pub(super) policy: Option<String>,
    pub(super) scope: Scope,
    /// The mode the destination proxy reports serving; `null` when it did not answer.
    pub(super) proxy_mode: Option<String>,
    /// Why the destination proxy did not answer.
    pub(super) proxy_error: Option<String>,
}

/// The destination's authorization decision for this request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuthzView {
    /// `allow` or `deny`.
    pub(super) decision: &'static str,
    pub(super) outcome: Outcome,
    pub(super) reason: String,
    pub(super) policy: Option<String>,
    pub(super) rule: Option<String>,
    pub(super) http_status: Option<u16>,
    /// The identity the destination sees; `null` for plaintext.
    pub(super) principal: Option<String>,
    /// For a default deny: the ALLOW policies that apply and none of which matched.
    pub(super) allow_policies: Vec<String>,
}

/// The live request through the source proxy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptView {
    /// The source proxy's outbound listener.
    pub(super) via: String,
    /// The request line sent.
    pub(super) request: String,
    pub(super) status: Option<u16>,
    /// The first line of the response body.
    pub(super) body: Option<String>,
    /// Why there is no response.
    pub(super) error: Option<String>,
}

/// "denied by AuthorizationPolicy ns/name: ..." from the config's decision.
pub(super) fn denial(z: &AuthzView) -> String {
    denial_line(&z.reason, z.outcome, z.policy.as_deref(), &z.allow_policies)
}

pub(super) fn text_view(x: &Explanation) -> String {
    let mut out = Vec::<(String, String)>::new();
    let mut put = |k: &str, v: String| out.push((k.to_owned(), v));
    let s = &x.source;
    put("SOURCE", format!("{} ({})", s.workload, s.address));
    put("  identity", s.identity.clone());
    match (&s.certificate, &s.error) {
        (Some(c), _) => {
            put(
                "  certificate",
                format!(
                    "serial {}, valid {} to {}, renewal at {}",
                    c.serial, c.not_before, c.not_after, c.renewal_time
                ),
            );
            put(
                "  verified",
                match &c.problem {
                    None => "yes: the chain verifies against the trust bundle of its trust domain"
                        .to_owned(),
                    Some(p) => format!("NO: {p}"),
                },
            );
            for (i, info) in c.chain.iter().enumerate() {
                let name = info
                    .spiffe_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_else(|| info.subject.clone());
                put(
                    &format!("  chain[{i}]"),
                    format!(
                        "{name}, issued by {}, not after {}",
                        info.issuer, info.not_after_rfc3339
                    ),
                );
            }
        }
        (None, Some(e)) => put("  certificate", e.clone()),
        (None, None) => put("  certificate", "-".into()),
    }
    let d = &x.destination;
    put(
        "DESTINATION",
        match (&d.host, d.port) {
            (Some(h), Some(p)) => format!("{} → {h}:{p}", d.target),
            _ => d.target.clone(),
        },
    );
    if let Some(e) = &d.error {
        put("  error", e.clone());
    }
    if let Some(se) = &d.service_entry {
        put("  service", format!("ServiceEntry {se}"));
    }
    for (i, e) in d.endpoints.iter().enumerate() {
        put(
            if i == 0 { "  endpoints" } else { "" },
            format!(
                "{} {} {}",
                e.address,
                e.workload.as_deref().unwrap_or("-"),
                e.identity.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(w) = &d.workload {
        put(
            "  workload",
            format!(
                "{w} at {} ({})",
                d.address.as_deref().unwrap_or("-"),
                d.protocol.unwrap_or("-")
            ),
        );
    }
    put(
        "  rule",
        match &x.destination_rule {
            Some(r) => format!(
                "DestinationRule {} (host {}, {})",
                r.rules.join(", "),
                r.host,
                match r.level {
                    Level::ClientNamespace => "client namespace",
                    Level::ServiceNamespace => "service namespace",
                    Level::RootNamespace => "root namespace",
                }
            ),
            None => "none".into(),
        },
    );
    if let Some(t) = &x.client_tls {
        put(
            "  client TLS",
            format!(
                "{}{}{}",
                tls_mode_str(t.mode),
                if t.auto_mtls { " (auto mTLS)" } else { "" },
                t.sni
                    .as_ref()
                    .map(|s| format!(", SNI {s}"))
                    .unwrap_or_default()
            ),
        );
        if !t.allowed_server_identities.is_empty() {
            put(
                "  secure naming",
                format!(
                    "server must be {}",
                    t.allowed_server_identities.join(" or ")
                ),
            );
        }
    }
    if let Some(m) = &x.destination_mode {
        let from = mode_source(&ModeDecision {
            mode: m.mode,
            policy: m.policy.as_deref().map(std::sync::Arc::from),
            scope: m.scope,
        });
        put(
            "  mode",
            format!(
                "port {} {} ({from}); {}",
                m.port,
                m.mode.as_str(),
                match (&m.proxy_mode, &m.proxy_error) {
                    (Some(p), _) => format!("its proxy serves {p}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "its proxy reports no mode".into(),
                }
            ),
        );
    }
    if let Some(z) = &x.authorization {
        put(
            "AUTHORIZATION",
            format!(
                "{}: {}",
                z.decision,
                if z.decision == "deny" {
                    denial(z)
                } else {
                    z.reason.clone()
                }
            ),
        );
        put(
            "  as",
            z.principal
                .clone()
                .unwrap_or_else(|| "plaintext (no identity)".into()),
        );
        if let Some(p) = &z.policy {
            put(
                "  policy",
                format!(
                    "{p}{}",
                    z.rule.as_ref().map(|r| format!(" {r}")).unwrap_or_default()
                ),
            );
        }
    }
    let t = &x.attempt;
    put(
        "ATTEMPT",
        if t.request.is_empty() {
            "-".into()
        } else {
            format!("{} via {}", t.request, t.via)
        },
    );
    put(
        "  response",
        match (t.status, &t.error) {
            (Some(s), _) => format!("{s} {}", t.body.as_deref().unwrap_or(""))
                .trim_end()
                .to_owned(),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        },
    );
    for n in &x.notes {
        put("NOTE", n.clone());
    }
    put(
        "RESULT",
        match &x.cause {
            None if x.ok => "ok".into(),
            None => "failed".into(),
            Some(c) => format!("failed: {c}"),
        },
    );
    let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let lines: Vec<String> = out
        .into_iter()
        .map(|(k, v)| format!("{k:<width$}{v}"))
        .collect();
    lines.join("\n")
}

fn tls_mode_str(m: TlsMode) -> &'static str {
    match m {
        TlsMode::Disable => "DISABLE (plaintext)",
        TlsMode::Simple => "SIMPLE",
        TlsMode::Mutual => "MUTUAL",
        TlsMode::IstioMutual => "ISTIO_MUTUAL",
    }
}
