//! The running mesh as the operator commands (`verify`, `debug`, `certs`) read it: a proxy's
//! admin answers (`/certs`, `/config_dump`), its SVID checked against the trust bundles of
//! the state folder's CAs, and the two probes of an inbound port (plaintext `GET /`, and a
//! TLS 1.3 handshake with a probe SVID). Also the wording those commands share for where a
//! mode came from and who denied a request.
//!
//! Nothing here decides policy: modes and decisions come from `trustmesh-core`, run on the
//! config snapshot by the commands.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trustmesh_api::PROXY_ADMIN_PORT;
use trustmesh_core::authz::{Decision, InboundPolicy, Outcome};
use trustmesh_core::model::security::Action;
use trustmesh_core::peerauth::{ModeDecision, Scope};
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::{
    Allowed, CaStore, CertInfo, SpiffeServerVerifier, TrustBundleSet, Usage, VerifyError,
};
use trustmesh_proxy::inbound::protocol::Protocol;

use crate::http;

/// How long one probe (connect, handshake, answer) may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Loads and validates a config folder, or says why not (see `trustmesh check`).
pub(crate) fn load_config(dir: &Path) -> Result<trustmesh_config::LoadOutput> {
    trustmesh_config::load_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid config (see `trustmesh check`):\n{e}",
            dir.display()
        )
    })
}

/// The mTLS probe's credentials: an SVID minted from the mesh's CA, and its key.
#[derive(Debug)]
pub(crate) struct Probe {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub id: SpiffeId,
}

/// `PeerAuthentication ns/name, workload` or `Istio's default`.
pub(crate) fn mode_source(d: &ModeDecision) -> String {
    let scope = match d.scope {
        Scope::Default => return "no PeerAuthentication applies: Istio's default".into(),
        Scope::Mesh => "mesh-wide",
        Scope::Namespace => "namespace",
        Scope::Workload => "workload",
        Scope::WorkloadPort => "port-level",
    };
    match &d.policy {
        Some(p) => format!("PeerAuthentication {p}, {scope}"),
        None => scope.to_owned(),
    }
}

/// For a default deny ("ALLOW policies apply to the workload and none matched"), which names
/// no policy: the ALLOW policies that apply, since together they made it.
pub(crate) fn default_deny_policies(d: &Decision, ib: &InboundPolicy) -> Vec<String> {
    if d.allowed || d.policy.is_some() || d.outcome != Outcome::Deny {
        return Vec::new();
    }
    ib.authz
        .attached()
        .filter(|(_, action, dry_run)| *action == Action::Allow && !dry_run)
        .map(|(name, _, _)| name.to_owned())
        .collect()
}

/// "denied by AuthorizationPolicy ns/name: why", naming the policy (or, for a default deny,
/// the ALLOW policies none of which matched).
pub(crate) fn denial_line(
    reason: &str,
    outcome: Outcome,
    policy: Option<&str>,
    allow_policies: &[String],
) -> String {
    match (policy, allow_policies) {
        (Some(p), _) if outcome == Outcome::ConnectionRejected => {
            format!("{reason} (PeerAuthentication {p})")
        }
        (Some(p), _) => format!("denied by AuthorizationPolicy {p}: {reason}"),
        (None, []) => format!("denied: {reason}"),
        (None, [one]) => format!("denied by AuthorizationPolicy {one}: no ALLOW rule matched"),
        (None, many) => format!(
            "denied by AuthorizationPolicies {}: no ALLOW rule matched",
            many.join(", ")
        ),
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No TCP connection (refused, timed out).
    Unreachable(String),
    /// The TLS handshake failed (not for a server identity reason).
    HandshakeFailed(String),
    /// The server presented an SVID that is not the workload's.
    IdentityMismatch(String),
    /// Closed (or reset) without any answer.
    Closed,
    /// An HTTP response with this status.
    Http(u16),
    /// Bytes that are not HTTP.
    Data,
    /// Open, silent for the probe's timeout (a TCP app that waits for more).
    HeldOpen,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(_) => f.write_str("unreachable"),
            Self::HandshakeFailed(_) => f.write_str("handshake failed"),
            Self::IdentityMismatch(_) => f.write_str("wrong identity"),
            Self::Closed => f.write_str("refused"),
            Self::Http(s) => write!(f, "HTTP {s}"),
            Self::Data => f.write_str("answered"),
            Self::HeldOpen => f.write_str("held open"),
        }
    }
}

impl Seen {
    /// Plaintext observations read "accepted (...)".
    fn plaintext_label(&self) -> String {
        match self {
            Self::Http(_) | Self::Data | Self::HeldOpen => format!("accepted ({self})"),
            other => other.to_string(),
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Seen> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Seen::Unreachable(e.to_string())),
        Err(_) => Err(Seen::Unreachable(format!(
            "no connection within {PROBE_TIMEOUT:?}"
        ))),
    }
}

/// Sends `GET / HTTP/1.1` in plaintext and reads what comes back.
pub(crate) async fn probe_plaintext(addr: SocketAddr) -> PlainSeen {
    let mut s = match connect(addr).await {
        Ok(s) => s,
        Err(seen) => return PlainSeen(seen),
    };
    let req = probe_request(addr);
    if s.write_all(req.as_bytes()).await.is_err() {
        return PlainSeen(Seen::Closed);
    }
    PlainSeen(read_answer(&mut s, PROBE_TIMEOUT).await)
}

/// A plaintext observation, displayed as `accepted (...)` or `refused`.
pub(crate) struct PlainSeen(pub Seen);

impl std::fmt::Display for PlainSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.plaintext_label())
    }
}

fn probe_request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: trustmesh-verify\r\nConnection: close\r\n\r\n"
    )
}

/// The first bytes of an answer: an HTTP status, other bytes, a close, or silence.
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Seen {
    let mut buf = [0u8; 64];
    let mut got = 0usize;
    let read = async {
        loop {
            match s.read(&mut buf[got..]).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    got += n;
                    // Enough for a status line's code, or the buffer is full.
                    if got >= 12 || got == buf.len() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(wait, read).await {
        Err(_) if got == 0 => Seen::HeldOpen,
        Ok(Err(e)) if got == 0 => tls_error(&e).unwrap_or(Seen::Closed),
        _ if got == 0 => Seen::Closed,
        _ => parse_status(&buf[..got]).map_or(Seen::Data, Seen::Http),
    }
}

fn parse_status(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b).ok()?;
    let rest = s.strip_prefix("HTTP/")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The SPIFFE or TLS reason inside an I/O error from tokio-rustls, if it carries one.
fn tls_error(e: &std::io::Error) -> Option<Seen> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match VerifyError::from_rustls(inner) {
        Some(v @ VerifyError::UnexpectedPeer { .. }) => Seen::IdentityMismatch(v.to_string()),
        Some(v) => Seen::HandshakeFailed(v.to_string()),
        None => Seen::HandshakeFailed(inner.to_string()),
    })
}

/// The probe's TLS client: TLS 1.3, the probe SVID, the server must be `expected`.
pub(crate) fn client_tls(
    probe: &Probe,
    bundles: &TrustBundleSet,
    expected: &SpiffeId,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(bundles.clone()),
        Allowed::Ids(vec![expected.clone()]),
    ));
    let mut cfg =
        trustmesh_pki::client_config(probe.chain.clone(), probe.key.clone_key(), verifier)
            .map_err(|e| format!("building the probe's TLS client: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Handshakes with the probe SVID; on HTTP ports sends `GET /` over it and reads the status.
pub(crate) async fn probe_mtls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    protocol: Protocol,
) -> Seen {
    let tcp = match connect(addr).await {
        Ok(s) => s,
        Err(seen) => return seen,
    };
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => {
            return Seen::HandshakeFailed(format!("no handshake within {PROBE_TIMEOUT:?}"));
        }
        Ok(Err(e)) => {
            return tls_error(&e)
                .unwrap_or_else(|| Seen::HandshakeFailed(format!("connection closed ({e})")));
        }
        Ok(Ok(s)) => s,
    };
    match protocol {
        Protocol::Http => {
            if let Err(e) = tls.write_all(probe_request(addr).as_bytes()).await {
                return tls_error(&e).unwrap_or(Seen::Closed);
            }
            read_answer(&mut tls, PROBE_TIMEOUT).await
        }
        // A TCP app may wait for the client: silence for a moment means the connection holds.
        Protocol::Tcp => read_answer(&mut tls, Duration::from_millis(500)).await,
    }
}

/// A proxy's `GET /certs` (docs/mesh-runtime.md, "Proxy admin").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProxyCerts {
    pub spiffe_id: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub renewal_time: String,
    pub chain_pem: String,
    #[serde(default)]
    pub bundles: BTreeMap<String, Vec<String>>,
}

impl ProxyCerts {
    /// The chain as DER, leaf first.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }
}

/// What asking a proxy's admin endpoint gave.
#[derive(Debug)]
pub(crate) enum AdminAnswer<T> {
    /// 200 with the JSON expected.
    Ok(T),
    /// It answered, but not with the data (503 before the first certificate or config).
    NotReady(String),
    /// No answer: not running there.
    Unreachable(String),
}

/// `GET path` on the proxy admin endpoint of the workload at `ip` (port 15000).
pub(crate) async fn proxy_admin<T: DeserializeOwned>(ip: IpAddr, path: &str) -> AdminAnswer<T> {
    let addr = SocketAddr::new(ip, PROXY_ADMIN_PORT);
    match http::request(addr, "GET", path, None, None, PROBE_TIMEOUT).await {
        Err(e) => AdminAnswer::Unreachable(e.root_cause().to_string()),
        Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
            Ok(v) => AdminAnswer::Ok(v),
            Err(e) => AdminAnswer::NotReady(format!("{path}: unexpected answer: {e}")),
        },
        Ok(r) => {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let why = body["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_owned());
            AdminAnswer::NotReady(format!("{path}: {} {why}", r.status))
        }
    }
}

/// The trust bundles of the state folder's CAs: the roots this mesh's SVIDs must chain to.
pub(crate) fn mesh_bundles(state: &Path) -> Result<TrustBundleSet> {
    let store = CaStore::new(state);
    let mut set = TrustBundleSet::new();
    for td in crate::ca::state_trust_domains(state)? {
        if let Some(ca) = store
            .load(&td)
            .with_context(|| format!("loading the CA of {}", td.as_str()))?
        {
            set.add_root(&td, ca.root_der().clone())
                .with_context(|| format!("the CA root of {}", td.as_str()))?;
        }
    }
    Ok(set)
}

/// `local` plus the bundles a proxy holds for trust domains the state folder has no CA for
/// (a foreign region's, imported through the config): those only the mesh's config can vouch
/// for, and the proxy got them from the control plane.
pub(crate) fn with_foreign_bundles(local: &TrustBundleSet, certs: &ProxyCerts) -> TrustBundleSet {
    let mut set = local.clone();
    for (td, pems) in &certs.bundles {
        let Ok(td) = TrustDomain::new(td) else {
            continue;
        };
        if local.get(&td).is_some() {
            continue;
        }
        for pem in pems {
            let _ = set.add_pem(&td, pem);
        }
    }
    set
}

/// Verifies a proxy's SVID: chain to the bundles, exactly `expected`, valid at `now`.
pub(crate) fn check_svid(
    certs: &ProxyCerts,
    expected: &SpiffeId,
    bundles: &TrustBundleSet,
    now: SystemTime,
) -> Result<SpiffeId, String> {
    let chain = certs.chain_der();
    if chain.is_empty() {
        return Err("the proxy reports no certificate chain".into());
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let id = trustmesh_pki::verify_svid(
        &chain,
        bundles,
        UnixTime::since_unix_epoch(since),
        Usage::Server,
    )
    .map_err(|e| e.to_string())?;
    if &id != expected {
        return Err(format!(
            "identity {} is not the workload's {}",
            id.as_str(),
            expected.as_str()
        ));
    }
    Ok(id)
}

/// The certificates of a chain in display form (unparseable ones are skipped).
pub(crate) fn chain_info(certs: &ProxyCerts) -> Vec<CertInfo> {
    CertInfo::parse_pem(&certs.chain_pem).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trustmesh_core::model::security::MtlsMode;

    #[test]
    fn status_lines_are_read_from_the_first_bytes() {
        assert_eq!(parse_status(b"HTTP/1.1 403 Forbidden\r\n"), Some(403));
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 2x"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn mode_sources_name_the_policy_and_scope() {
        let d = ModeDecision {
            mode: MtlsMode::Strict,
            policy: Some(Arc::from("istio-system/default")),
            scope: Scope::Mesh,
        };
        assert_eq!(
            mode_source(&d),
            "PeerAuthentication istio-system/default, mesh-wide"
        );
        let d = ModeDecision {
            mode: MtlsMode::Permissive,
            policy: None,
            scope: Scope::Default,
        };
        assert_eq!(
            mode_source(&d),
            "no PeerAuthentication applies: Istio's default"
        );
    }

    #[tokio::test]
    async fn answers_are_classified() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(256);
        a.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(a);
        assert_eq!(
            read_answer(&mut b, Duration::from_secs(1)).await,
            Seen::Http(200)
        );
        let (a, mut b) = tokio::io::duplex(256);
        drop(a);
        assert_eq!(
            read_answer(&mut b, Duration::from_secs(1)).await,
            Seen::Closed
        );
        let (_a, mut b) = tokio::io::duplex(256);
        assert_eq!(
            read_answer(&mut b, Duration::from_millis(50)).await,
            Seen::HeldOpen
        );
    }
}
