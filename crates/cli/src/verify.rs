//! `trustmesh verify [NAMESPACE]`: prove, against the running proxies, that the mesh is what
//! the config says. For each workload of the config (of NAMESPACE, or all):
//!
//! - its certificate: the proxy's `/certs` chain verifies against the trust bundles of the
//!   state folder's CAs, names exactly the workload's SPIFFE ID, and is within its validity;
//! - its modes: the proxy's `/config_dump` mode of each port equals what PeerAuthentication
//!   resolution ([`trustmesh_core::peerauth::resolve`]) gives for the config;
//! - each inbound port, probed: plaintext (`GET / HTTP/1.1`) must be refused under STRICT and
//!   accepted under PERMISSIVE and DISABLE; a TLS 1.3 handshake with a probe SVID minted from
//!   the state folder's CA (`spiffe://<td>/ns/<root-ns>/sa/trustmesh-verify`, 5 minutes)
//!   must succeed under STRICT and PERMISSIVE, verifying the server is the workload (secure
//!   naming), and must fail under DISABLE.
//!
//! A probe that reaches the proxy but is then closed by authorization (a TCP port whose
//! policies deny the caller) proves the mode layer let it through, so it passes with a note:
//! the decision comes from the config's policies ([`InboundPolicy::decide`]).
//!
//! The control plane is consulted only for notes (the config folder it serves, a rejected
//! reload); everything proved comes from the config folder, the state folder and the proxies.
//! What is not here: the probes themselves and the proxy admin client (`crate::probe`,
//! shared with `debug` and `certs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use trustmesh_api::PROXY_ADMIN_PORT;
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{Decision, InboundPolicy, PolicySet, Request};
use trustmesh_core::model::security::MtlsMode;
use trustmesh_core::peerauth::ModeDecision;
use trustmesh_core::snapshot::{Snapshot, Workload};
use trustmesh_pki::{CaStore, TrustBundleSet};
use trustmesh_proxy::inbound::protocol::{Protocol, port_protocol};

use crate::http::AdminClient;
use crate::output::{emit, render, table};
use crate::probe::{
    AdminAnswer, Probe, ProxyCerts, Seen, check_svid, client_tls, default_deny_policies,
    denial_line, load_config, mesh_bundles, mode_source, probe_mtls, probe_plaintext, proxy_admin,
    with_foreign_bundles,
};
use crate::{OutputArgs, StateArgs};

/// Lifetime of the probe SVID: long enough for one run, short enough to be worthless after.
const PROBE_LIFETIME: Duration = Duration::from_secs(300);
/// Service account of the probe identity, in the root namespace.
const PROBE_SERVICE_ACCOUNT: &str = "trustmesh-verify";

/// Flags of `trustmesh verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only the workloads of this namespace (default: every workload of the config).
    pub namespace: Option<String>,
    /// The config folder the mesh runs (what must hold).
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// The control plane's admin API (consulted for notes only).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane_admin: SocketAddr,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// One checked (workload, port): what `-o json|yaml` prints per row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    /// `ns/name`.
    workload: String,
    address: IpAddr,
    /// The SPIFFE ID the config gives the workload.
    identity: String,
    /// `None` for a workload without ports (only its certificate is checked).
    port: Option<u16>,
    port_name: Option<String>,
    /// `HTTP` or `TCP`.
    protocol: Option<&'static str>,
    /// The mode the config resolves for the port.
    mode: Option<&'static str>,
    /// The PeerAuthentication that set it; `None` for Istio's PERMISSIVE default.
    mode_policy: Option<String>,
    /// The mode the proxy reports serving.
    proxy_mode: Option<String>,
    /// `valid`, `invalid`, `pending` (no certificate yet) or `unreachable`.
    cert: &'static str,
    cert_serial: Option<String>,
    cert_not_after: Option<String>,
    /// The plaintext probe's observation (`refused`, `accepted (HTTP 200)`, ...), `-` if not run.
    plaintext: String,
    /// The mTLS probe's observation (`ok (HTTP 403)`, `refused`, ...), `-` if not run.
    mtls: String,
    passed: bool,
    /// Why it failed (empty when passed).
    reasons: Vec<String>,
    /// Observations that explain a pass (a probe closed by policy).
    notes: Vec<String>,
}

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    passed: bool,
    /// Rows checked.
    checked: usize,
    /// Rows that failed.
    failed: usize,
    /// The probe identity used for the mTLS handshakes.
    probe_identity: String,
    /// About the run as a whole (the control plane's view).
    notes: Vec<String>,
    results: Vec<Row>,
}

/// Runs `trustmesh verify`.
pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(verify(a))
}

async fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let loaded = load_config(&a.config)?;
    let snap = loaded.snapshot;
    let workloads: Vec<&Workload> = snap
        .workloads()
        .iter()
        .filter(|w| a.namespace.as_ref().is_none_or(|ns| &w.namespace == ns))
        .collect();
    if workloads.is_empty() {
        match &a.namespace {
            Some(ns) => bail!(
                "{} declares no WorkloadEntry in namespace {ns}: nothing to verify",
                a.config.display()
            ),
            None => bail!(
                "{} declares no WorkloadEntry: nothing to verify",
                a.config.display()
            ),
        }
    }
    let state = &a.state.state;
    let bundles = mesh_bundles(state)?;
    let mesh = snap.mesh();
    let probe_id = SpiffeId::workload(
        &mesh.trust_domain,
        &mesh.root_namespace,
        PROBE_SERVICE_ACCOUNT,
    )
    .context("building the probe identity")?;
    let ca = CaStore::new(state)
        .load(&mesh.trust_domain)
        .with_context(|| format!("loading the CA of {}", mesh.trust_domain.as_str()))?
        .with_context(|| {
            format!(
                "no CA for trust domain {} in {}: verify needs the mesh's state folder (--state)",
                mesh.trust_domain.as_str(),
                state.join("ca").display()
            )
        })?;
    let (svid, key) = ca
        .issue_svid(&probe_id, PROBE_LIFETIME, SystemTime::now())
        .context("minting the probe SVID")?;
    let probe = Probe {
        chain: svid.chain_der,
        key: key.private_key_der(),
        id: probe_id.clone(),
    };

    let notes = control_plane_notes(a.control_plane_admin, state, &a.config).await;
    let policies = PolicySet::from_snapshot(&snap);
    let mut rows = Vec::new();
    for w in workloads {
        let inbound = InboundPolicy::from_snapshot(&snap, &policies, &w.namespace, &w.labels);
        rows.extend(verify_workload(&snap, w, &inbound, &bundles, &probe).await);
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    let report = Report {
        passed: failed == 0,
        checked: rows.len(),
        failed,
        probe_identity: probe_id.as_str().to_owned(),
        notes,
        results: rows,
    };
    emit(a.out.output, &report, || table_view(&report))?;
    if let Some(first) = report.results.iter().find(|r| !r.passed) {
        eprintln!(
            "error: {failed} of {} checks failed (first: {}{}: {})",
            report.checked,
            first.workload,
            first.port.map(|p| format!(":{p}")).unwrap_or_default(),
            first.reasons.join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn table_view(r: &Report) -> String {
    let mut out = String::new();
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let mut t = table([
        "WORKLOAD",
        "PORT",
        "MODE",
        "CERT",
        "PLAINTEXT",
        "MTLS",
        "RESULT",
        "REASON",
    ]);
    for row in &r.results {
        let mode = match (&row.mode, &row.proxy_mode) {
            (Some(m), Some(p)) if p != m => format!("{m} (proxy: {p})"),
            (Some(m), _) => (*m).to_owned(),
            (None, _) => "-".to_owned(),
        };
        t.add_row([
            row.workload.clone(),
            row.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            mode,
            row.cert.to_owned(),
            row.plaintext.clone(),
            row.mtls.clone(),
            if row.passed { "PASS" } else { "FAIL" }.to_owned(),
            if row.passed {
                row.notes.join("; ")
            } else {
                row.reasons.join("; ")
            },
        ]);
    }
    out.push_str(&render(&t));
    out.push('\n');
    if r.passed {
        out.push_str(&format!(
            "all {} checks passed (probe identity {})",
            r.checked, r.probe_identity
        ));
    } else {
        out.push_str(&format!("{} of {} checks FAILED", r.failed, r.checked));
    }
    out
}

/// Notes from the control plane: which config it serves and whether its last reload failed.
async fn control_plane_notes(addr: SocketAddr, state: &Path, config: &Path) -> Vec<String> {
    let Ok(cp) = AdminClient::new(addr, state) else {
        return vec![format!(
            "control plane not consulted: no admin credential in {}",
            state.display()
        )];
    };
    let status: Value = match cp.get("/v1/status").await {
        Ok(s) => s,
        Err(e) => {
            return vec![format!(
                "control plane admin at {addr} not reachable ({})",
                e.root_cause()
            )];
        }
    };
    let mut notes = Vec::new();
    if let Some(dir) = status["configDir"].as_str() {
        let same = match (std::fs::canonicalize(dir), std::fs::canonicalize(config)) {
            (Ok(a), Ok(b)) => a == b,
            _ => Path::new(dir) == config,
        };
        if !same {
            notes.push(format!(
                "the control plane serves {dir}, not {}: proxies enforce its config",
                config.display()
            ));
        }
    }
    if status["lastReload"]["result"] == "rejected" {
        let first = &status["lastReload"]["errors"][0];
        let why = first
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| first.to_string());
        notes.push(format!(
            "the control plane rejected the last config change ({why}); proxies enforce the last accepted config"
        ));
    }
    notes
}

/// The certificate part of a workload's rows.
struct CertCheck {
    label: &'static str,
    serial: Option<String>,
    not_after: Option<String>,
    problem: Option<String>,
}

async fn verify_workload(
    snap: &Snapshot,
    w: &Workload,
    inbound: &InboundPolicy,
    state_bundles: &TrustBundleSet,
    probe: &Probe,
) -> Vec<Row> {
    let key = format!("{}/{}", w.namespace, w.name);
    let mut ports: Vec<(&String, u16)> = w.ports.iter().map(|(n, p)| (n, *p)).collect();
    ports.sort_by_key(|(_, p)| *p);
    let row = |port: Option<(&String, u16)>| Row {
        workload: key.clone(),
        address: w.address,
        identity: w.identity.as_str().to_owned(),
        port: port.map(|p| p.1),
        port_name: port.map(|p| p.0.clone()),
        protocol: None,
        mode: None,
        mode_policy: None,
        proxy_mode: None,
        cert: "unreachable",
        cert_serial: None,
        cert_not_after: None,
        plaintext: "-".into(),
        mtls: "-".into(),
        passed: false,
        reasons: Vec::new(),
        notes: Vec::new(),
    };
    let port_rows: Vec<Option<(&String, u16)>> = if ports.is_empty() {
        vec![None]
    } else {
        ports.iter().copied().map(Some).collect()
    };

    let certs = proxy_admin::<ProxyCerts>(w.address, "/certs").await;
    let (cert, bundles) = match certs {
        AdminAnswer::Unreachable(e) => {
            // The proxy is not running there: nothing else can be probed meaningfully.
            return port_rows
                .into_iter()
                .map(|p| {
                    let mut r = row(p);
                    if let Some((_, port)) = p {
                        expected_mode(snap, w, inbound, port, &mut r);
                    }
                    r.reasons.push(format!(
                        "proxy not reachable at {}:{PROXY_ADMIN_PORT} ({e})",
                        w.address
                    ));
                    r
                })
                .collect();
        }
        AdminAnswer::NotReady(e) => (
            CertCheck {
                label: "pending",
                serial: None,
                not_after: None,
                problem: Some(format!("proxy has no certificate yet ({e})")),
            },
            state_bundles.clone(),
        ),
        AdminAnswer::Ok(c) => {
            let bundles = with_foreign_bundles(state_bundles, &c);
            let problem = check_svid(&c, &w.identity, &bundles, SystemTime::now()).err();
            (
                CertCheck {
                    label: if problem.is_none() {
                        "valid"
                    } else {
                        "invalid"
                    },
                    serial: Some(c.serial.clone()),
                    not_after: Some(c.not_after.clone()),
                    problem,
                },
                bundles,
            )
        }
    };
    let dump = proxy_admin::<Value>(w.address, "/config_dump").await;
    let proxy_modes: Result<BTreeMap<String, String>, String> = match dump {
        AdminAnswer::Ok(v) => Ok(v["modes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_owned()))
                    .collect()
            })
            .unwrap_or_default()),
        AdminAnswer::NotReady(e) => Err(format!("proxy has no config yet ({e})")),
        AdminAnswer::Unreachable(e) => Err(format!("proxy config_dump not reachable ({e})")),
    };
    let tls = client_tls(probe, &bundles, &w.identity);

    let mut rows = Vec::new();
    for p in port_rows {
        let mut r = row(p);
        r.cert = cert.label;
        r.cert_serial.clone_from(&cert.serial);
        r.cert_not_after.clone_from(&cert.not_after);
        if let Some(why) = &cert.problem {
            r.reasons.push(format!("certificate: {why}"));
        }
        if let Some((_, port)) = p {
            check_port(snap, w, inbound, port, &proxy_modes, &tls, probe, &mut r).await;
        }
        r.passed = r.reasons.is_empty();
        rows.push(r);
    }
    rows
}

/// The mode, the plaintext probe and the mTLS probe of one port.
#[allow(clippy::too_many_arguments)]
async fn check_port(
    snap: &Snapshot,
    w: &Workload,
    inbound: &InboundPolicy,
    port: u16,
    proxy_modes: &Result<BTreeMap<String, String>, String>,
    tls: &Result<Arc<rustls::ClientConfig>, String>,
    probe: &Probe,
    r: &mut Row,
) {
    let (expected, protocol) = expected_mode(snap, w, inbound, port, r);
    let mode = expected.mode;
    match proxy_modes {
        Ok(m) => {
            r.proxy_mode = m.get(&port.to_string()).cloned();
            match &r.proxy_mode {
                Some(p) if p == mode.as_str() => {}
                Some(p) => r.reasons.push(format!(
                    "mode: the config says {} ({}), the proxy serves {p}",
                    mode.as_str(),
                    mode_source(expected)
                )),
                None => r
                    .reasons
                    .push(format!("mode: the proxy reports no mode for port {port}")),
            }
        }
        Err(e) => r.reasons.push(format!("mode: {e}")),
    }
    let addr = SocketAddr::new(w.address, port);
    let source_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let decision = |peer: Option<SpiffeId>| {
        inbound.decide(&Request {
            peer,
            source_ip,
            dest_ip: w.address,
            dest_port: port,
            sni: None,
            http: None,
        })
    };

    // Plaintext.
    let plain = probe_plaintext(addr).await;
    r.plaintext = plain.to_string();
    let seen = plain.0;
    let plain_decision = decision(None);
    match (mode, &seen) {
        (_, Seen::Unreachable(e)) => r
            .reasons
            .push(format!("port {port}: nothing accepts connections ({e})")),
        (MtlsMode::Strict, Seen::Closed) => {}
        (MtlsMode::Strict, _) => r.reasons.push(format!(
            "plaintext accepted: port {port} is STRICT ({})",
            mode_source(expected)
        )),
        (_, Seen::Closed) if protocol == Protocol::Tcp && !plain_decision.allowed => {
            r.plaintext = "closed by policy".into();
            r.notes.push(format!(
                "plaintext passed the mode check, then the connection was {}",
                denial(&plain_decision, inbound)
            ));
        }
        (_, Seen::Closed) => r.reasons.push(format!(
            "plaintext refused: port {port} is {} ({}){}",
            mode.as_str(),
            mode_source(expected),
            if protocol == Protocol::Tcp {
                "; or the app behind the proxy is down"
            } else {
                ""
            }
        )),
        _ => {}
    }

    // mTLS with the probe SVID.
    let cfg = match tls {
        Ok(c) => c.clone(),
        Err(e) => {
            r.mtls = "not run".into();
            r.reasons.push(format!("mtls probe: {e}"));
            return;
        }
    };
    let seen = probe_mtls(addr, cfg, protocol).await;
    r.mtls = match &seen {
        Seen::Http(_) | Seen::Data | Seen::HeldOpen => format!("ok ({seen})"),
        other => other.to_string(),
    };
    let mtls_decision = decision(Some(probe.id.clone()));
    match (mode, &seen) {
        (_, Seen::Unreachable(e)) => r
            .reasons
            .push(format!("port {port}: nothing accepts connections ({e})")),
        (MtlsMode::Disable, Seen::HandshakeFailed(_) | Seen::Closed) => {
            r.mtls = "refused".into();
        }
        (MtlsMode::Disable, _) => r.reasons.push(format!(
            "mTLS accepted: port {port} is DISABLE ({})",
            mode_source(expected)
        )),
        (_, Seen::IdentityMismatch(e)) => {
            r.reasons.push(format!("server identity mismatch: {e}"));
        }
        (_, Seen::HandshakeFailed(e)) => {
            r.reasons.push(format!("mTLS handshake failed: {e}"));
        }
        (_, Seen::Closed) if protocol == Protocol::Tcp && !mtls_decision.allowed => {
            r.mtls = "ok (closed by policy)".into();
            r.notes.push(format!(
                "mTLS handshake succeeded, then the connection was {}",
                denial(&mtls_decision, inbound)
            ));
        }
        (_, Seen::Closed) => r.reasons.push(format!(
            "mTLS handshake succeeded but the proxy closed the connection without an answer on port {port}"
        )),
        _ => {}
    }
}

/// What the config says of `port`: its mode (and the policy that set it) and protocol.
fn expected_mode<'a>(
    snap: &Snapshot,
    w: &Workload,
    inbound: &'a InboundPolicy,
    port: u16,
    r: &mut Row,
) -> (&'a ModeDecision, Protocol) {
    let expected = inbound.mtls.for_port(port);
    let protocol = port_protocol(snap, w, port);
    r.protocol = Some(protocol_str(protocol));
    r.mode = Some(expected.mode.as_str());
    r.mode_policy = expected.policy.as_deref().map(str::to_owned);
    (expected, protocol)
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Tcp => "TCP",
    }
}

/// One line for a denying decision of `ib`.
fn denial(d: &Decision, ib: &InboundPolicy) -> String {
    denial_line(
        &d.reason,
        d.outcome,
        d.policy.as_deref(),
        &default_deny_policies(d, ib),
    )
}
