//! `trustmesh debug NAMESPACE WORKLOAD TARGET`: one connection explained, from the source
//! workload's proxy to the destination, the way the proxies themselves decide it:
//!
//! 1. the source: its identity and certificate chain (the proxy's `/certs`, [`CertInfo`]),
//!    verified against the state folder's trust bundles;
//! 2. the destination: the ServiceEntry, endpoints and port the source proxy resolves TARGET
//!    to (`trustmesh_proxy::outbound::route::resolve`, the proxy's own code), the
//!    DestinationRule the source applies and the client TLS it originates
//!    ([`trustmesh_core::destination::resolve`], auto mTLS included), and the identities
//!    secure naming accepts;
//! 3. the destination port's mode (PeerAuthentication), and the mode its proxy serves;
//! 4. the authorization decision for that request from the source identity
//!    ([`InboundPolicy::decide`] on the config), with the policy and rule that made it;
//! 5. a live attempt through the source proxy's outbound listener (`http://<src>:15001`,
//!    absolute-form request), its status and the first line of the body;
//! 6. for a failure, the likely cause in one line.
//!
//! TARGET is `host[:port]` (`orders.production.svc.cluster.local:8080`, or a short name
//! resolved in the source's namespace as the proxy does, `orders:8080`) or
//! `NAMESPACE/WORKLOAD[:port]`. Without a port, the service's first port is taken.
//! Exit 0 when the attempt got an answer below 400, 1 otherwise (the explanation is printed
//! either way).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use trustmesh_api::{PROXY_ADMIN_PORT, PROXY_OUTBOUND_PORT};
use trustmesh_core::authz::{Decision, HttpRequest, InboundPolicy, Outcome, PolicySet, Request};
use trustmesh_core::destination;
use trustmesh_core::model::ServiceEntry;
use trustmesh_core::model::networking::{Location, TlsMode};
use trustmesh_core::model::security::MtlsMode;
use trustmesh_core::snapshot::{Snapshot, Workload};
use trustmesh_proxy::inbound::protocol::{Protocol, port_protocol};
use trustmesh_proxy::outbound::OutboundError;
use trustmesh_proxy::outbound::route::{self, EndpointAddr, Route, Target, UpstreamTls};

use crate::http;
use crate::output::emit;
use crate::probe::{
    AdminAnswer, ProxyCerts, chain_info, check_svid, default_deny_policies, load_config,
    mesh_bundles, mode_source, proxy_admin, with_foreign_bundles,
};
use crate::{OutputArgs, StateArgs};

mod view;

use view::{
    AttemptView, AuthzView, CertView, ClientTlsView, DestinationView, EndpointView, Explanation,
    ModeView, RuleView, SourceView, denial, text_view,
};

/// How long the live attempt may take (the default `connectTimeout` is 10 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of `trustmesh debug`.
#[derive(Debug, Args)]
pub struct DebugArgs {
    /// The source workload's namespace.
    pub namespace: String,
    /// The source workload (its WorkloadEntry name).
    pub workload: String,
    /// `host[:port]` (a ServiceEntry host, or a short name like `orders:8080`) or
    /// `NAMESPACE/WORKLOAD[:port]`.
    pub target: String,
    /// HTTP method of the request explained and attempted.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path (the raw target as sent, query included).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The config folder the mesh runs.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Runs `trustmesh debug`.
pub fn run(a: DebugArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(debug(a))
}

/// TARGET, parsed.
#[derive(Debug, PartialEq, Eq)]
enum TargetArg {
    /// `host[:port]`.
    Host(String, Option<u16>),
    /// `ns/workload[:port]`.
    Workload(String, String, Option<u16>),
}

fn parse_target(s: &str) -> Result<TargetArg> {
    let (rest, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("TARGET {s:?}: {p:?} is not a port"))?,
            ),
        ),
        None => (s, None),
    };
    if rest.is_empty() {
        bail!("TARGET {s:?}: no host");
    }
    match rest.split_once('/') {
        Some((ns, w)) if !ns.is_empty() && !w.is_empty() && !w.contains('/') => {
            Ok(TargetArg::Workload(ns.to_owned(), w.to_owned(), port))
        }
        Some(_) => bail!("TARGET {s:?}: expected host[:port] or NAMESPACE/WORKLOAD[:port]"),
        None => Ok(TargetArg::Host(rest.to_owned(), port)),
    }
}

fn key(w: &Workload) -> String {
    format!("{}/{}", w.namespace, w.name)
}

/// The ServiceEntries selecting `w`.
fn services_of<'a>(snap: &'a Snapshot, w: &Workload) -> Vec<&'a ServiceEntry> {
    snap.service_entries()
        .iter()
        .filter(|se| {
            snap.service_workloads(se)
                .any(|x| x.namespace == w.namespace && x.name == w.name)
        })
        .map(|se| &se.object)
        .collect()
}

/// The (host, service port) that reaches workload `w` (at workload port `port`, if given).
fn service_for_workload(snap: &Snapshot, w: &Workload, port: Option<u16>) -> Option<(String, u16)> {
    for se in services_of(snap, w) {
        let Some(host) = se.spec.hosts.iter().find(|h| !h.starts_with('*')) else {
            continue;
        };
        for sp in &se.spec.ports {
            let number = u16::try_from(sp.number).ok()?;
            let endpoint = w
                .ports
                .get(&sp.name)
                .copied()
                .or_else(|| sp.target_port.and_then(|p| u16::try_from(p).ok()))
                .unwrap_or(number);
            if port.is_none_or(|p| p == number || p == endpoint) {
                return Some((host.clone(), number));
            }
        }
    }
    None
}

/// The service port for a port-less host: the first port of the ServiceEntry declaring it.
fn default_port(snap: &Snapshot, src: &Workload, host: &str) -> Result<u16, OutboundError> {
    match route::resolve(snap, src, &Target::new(host, 0)) {
        Err(OutboundError::UnknownPort { service_entry, .. }) => {
            let (ns, name) = service_entry.split_once('/').unwrap_or(("", ""));
            snap.service_entries()
                .iter()
                .find(|se| se.metadata.namespace_str() == ns && se.metadata.name == name)
                .and_then(|se| se.spec.ports.first())
                .and_then(|p| u16::try_from(p.number).ok())
                .ok_or(OutboundError::UnknownPort {
                    host: host.to_owned(),
                    port: 0,
                    service_entry,
                })
        }
        Err(e) => Err(e),
        // Port 0 never resolves; keep the proxy's default if it ever does.
        Ok(_) => Ok(80),
    }
}

async fn debug(a: DebugArgs) -> Result<ExitCode> {
    let snap = load_config(&a.config)?.snapshot;
    let src = snap
        .workload(&a.namespace, &a.workload)
        .with_context(|| {
            format!(
                "no WorkloadEntry {}/{} in {}",
                a.namespace,
                a.workload,
                a.config.display()
            )
        })?
        .clone();
    let target = parse_target(&a.target)?;
    let mut notes = Vec::new();

    // 1. The source.
    let state_bundles = mesh_bundles(&a.state.state)?;
    let source = match proxy_admin::<ProxyCerts>(src.address, "/certs").await {
        AdminAnswer::Ok(c) => {
            let bundles = with_foreign_bundles(&state_bundles, &c);
            let problem = check_svid(&c, &src.identity, &bundles, SystemTime::now()).err();
            SourceView {
                workload: key(&src),
                address: src.address,
                identity: src.identity.as_str().to_owned(),
                certificate: Some(CertView {
                    chain: chain_info(&c),
                    spiffe_id: c.spiffe_id,
                    serial: c.serial,
                    not_before: c.not_before,
                    not_after: c.not_after,
                    renewal_time: c.renewal_time,
                    verified: problem.is_none(),
                    problem,
                }),
                error: None,
            }
        }
        AdminAnswer::NotReady(e) => SourceView {
            workload: key(&src),
            address: src.address,
            identity: src.identity.as_str().to_owned(),
            certificate: None,
            error: Some(format!("proxy has no certificate yet ({e})")),
        },
        AdminAnswer::Unreachable(e) => SourceView {
            workload: key(&src),
            address: src.address,
            identity: src.identity.as_str().to_owned(),
            certificate: None,
            error: Some(format!(
                "source proxy not reachable at {}:{PROXY_ADMIN_PORT} ({e})",
                src.address
            )),
        },
    };

    // 2. The destination, as the source proxy resolves it.
    let mut dest = DestinationView {
        target: a.target.clone(),
        host: None,
        port: None,
        service_entry: None,
        endpoints: Vec::new(),
        workload: None,
        address: None,
        identity: None,
        protocol: None,
        error: None,
    };
    let wanted: Option<Workload> = match &target {
        TargetArg::Workload(ns, name, _) => Some(
            snap.workload(ns, name)
                .with_context(|| {
                    format!(
                        "TARGET: no WorkloadEntry {ns}/{name} in {}",
                        a.config.display()
                    )
                })?
                .clone(),
        ),
        TargetArg::Host(..) => None,
    };
    // The request's authority: what the app would put in its absolute URI.
    let authority: Option<(String, u16)> = match &target {
        TargetArg::Host(h, Some(p)) => Some((h.clone(), *p)),
        TargetArg::Host(h, None) => match default_port(&snap, &src, h) {
            Ok(p) => Some((h.clone(), p)),
            Err(e) => {
                dest.error = Some(e.to_string());
                None
            }
        },
        TargetArg::Workload(_, _, port) => {
            let w = wanted.as_ref().context("the destination workload")?;
            match service_for_workload(&snap, w, *port) {
                Some(x) => Some(x),
                None => {
                    dest.error = Some(format!(
                        "no ServiceEntry selects {}{}: the source proxy has no route to it",
                        key(w),
                        port.map(|p| format!(" on port {p}")).unwrap_or_default()
                    ));
                    None
                }
            }
        }
    };
    let route: Option<Route> = match &authority {
        Some((h, p)) => match route::resolve(&snap, &src, &Target::new(h, *p)) {
            Ok(r) => Some(r),
            Err(e) => {
                dest.error = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    let mut upstream = None;
    if let Some(r) = &route {
        dest.host = Some(r.host.clone());
        dest.port = Some(r.port);
        dest.service_entry = Some(r.service_entry.clone());
        for u in &r.upstreams {
            let w = endpoint_ip(&u.addr).and_then(|ip| snap.workload_by_address(ip));
            dest.endpoints.push(EndpointView {
                address: u.addr.to_string(),
                workload: w.map(key),
                identity: w.map(|w| w.identity.as_str().to_owned()),
            });
        }
        // The endpoint explained: the workload asked for, else the first workload endpoint.
        upstream = r
            .upstreams
            .iter()
            .find(|u| {
                let ip = endpoint_ip(&u.addr);
                match &wanted {
                    Some(w) => ip == Some(w.address),
                    None => ip.and_then(|ip| snap.workload_by_address(ip)).is_some(),
                }
            })
            .or_else(|| r.upstreams.first());
        if r.upstreams.len() > 1 {
            notes.push(format!(
                "{} endpoints: the proxy balances between them; this explains {}",
                r.upstreams.len(),
                upstream.map(|u| u.addr.to_string()).unwrap_or_default()
            ));
        }
    }
    let dest_workload: Option<Workload> = upstream
        .and_then(|u| endpoint_ip(&u.addr))
        .and_then(|ip| snap.workload_by_address(ip))
        .cloned()
        .or_else(|| wanted.clone());
    let dest_port: Option<u16> = match (upstream, &target) {
        (Some(u), _) => Some(endpoint_port(&u.addr)),
        (None, TargetArg::Workload(_, _, Some(p))) => Some(*p),
        (None, TargetArg::Workload(..)) => dest_workload
            .as_ref()
            .and_then(|w| w.ports.values().min().copied()),
        (None, TargetArg::Host(..)) => None,
    };
    if let Some(w) = &dest_workload {
        dest.workload = Some(key(w));
        dest.identity = Some(w.identity.as_str().to_owned());
        if let Some(p) = dest_port {
            dest.address = Some(SocketAddr::new(w.address, p).to_string());
            dest.protocol = Some(match port_protocol(&snap, w, p) {
                Protocol::Http => "HTTP",
                Protocol::Tcp => "TCP",
            });
        }
    }

    // 3. The destination port's mode, from the config and from its proxy.
    let policies = PolicySet::from_snapshot(&snap);
    let inbound = dest_workload
        .as_ref()
        .map(|w| InboundPolicy::from_snapshot(&snap, &policies, &w.namespace, &w.labels));
    let mut dest_proxy_error = None;
    let destination_mode = match (&dest_workload, dest_port, &inbound) {
        (Some(w), Some(port), Some(ib)) => {
            let d = ib.mtls.for_port(port);
            let (proxy_mode, proxy_error) =
                match proxy_admin::<Value>(w.address, "/config_dump").await {
                    AdminAnswer::Ok(v) => (
                        v["modes"][port.to_string()].as_str().map(str::to_owned),
                        None,
                    ),
                    AdminAnswer::NotReady(e) => (
                        None,
                        Some(format!("destination proxy has no config yet ({e})")),
                    ),
                    AdminAnswer::Unreachable(e) => (
                        None,
                        Some(format!(
                            "destination proxy not reachable at {}:{PROXY_ADMIN_PORT} ({e})",
                            w.address
                        )),
                    ),
                };
            if let Some(p) = &proxy_mode
                && p != d.mode.as_str()
            {
                notes.push(format!(
                    "the config says {} for {}:{port} ({}), its proxy serves {p}",
                    d.mode.as_str(),
                    key(w),
                    mode_source(d)
                ));
            }
            dest_proxy_error.clone_from(&proxy_error);
            Some(ModeView {
                port,
                mode: d.mode,
                policy: d.policy.as_deref().map(str::to_owned),
                scope: d.scope,
                proxy_mode,
                proxy_error,
            })
        }
        _ => None,
    };

    // The DestinationRule and client TLS the source applies.
    let (destination_rule, client_tls) = match (&route, upstream) {
        (Some(r), Some(u)) => {
            let se = find_service_entry(&snap, &r.service_entry);
            let d = destination::resolve(
                snap.destination_rules().iter().map(|s| &s.object),
                &snap.mesh().root_namespace,
                destination::Client {
                    namespace: &src.namespace,
                    labels: &src.labels,
                },
                destination::Service {
                    host: &r.host,
                    namespace: se.map_or("", |se| se.metadata.namespace_str()),
                },
                r.port,
                None,
                destination::Endpoint {
                    has_proxy: dest_workload.is_some(),
                    mtls_mode: destination_mode
                        .as_ref()
                        .map_or(MtlsMode::Permissive, |m| m.mode),
                    mesh_external: se
                        .is_some_and(|se| se.spec.location == Some(Location::MeshExternal)),
                },
            );
            let allowed = match &u.tls {
                UpstreamTls::Mesh(m) => m.allowed.iter().map(|i| i.as_str().to_owned()).collect(),
                UpstreamTls::Files(f) => f.subject_alt_names.clone(),
                UpstreamTls::Plain => Vec::new(),
            };
            (
                d.rule.map(|r| RuleView {
                    rules: r.rules.iter().map(|x| x.to_string()).collect(),
                    host: r.host,
                    level: r.level,
                }),
                Some(ClientTlsView {
                    mode: d.tls.mode,
                    auto_mtls: d.tls.auto_mtls,
                    sni: match &u.tls {
                        UpstreamTls::Mesh(m) => Some(m.sni.clone()),
                        _ => d.tls.sni,
                    },
                    allowed_server_identities: allowed,
                }),
            )
        }
        _ => (None, None),
    };

    // 4. Authorization at the destination, for this request from the source's identity.
    let mesh_tls = upstream.is_some_and(|u| matches!(u.tls, UpstreamTls::Mesh(_)));
    let authorization = match (&dest_workload, dest_port, &inbound) {
        (Some(w), Some(port), Some(ib)) => {
            let http = (port_protocol(&snap, w, port) == Protocol::Http).then(|| HttpRequest {
                method: a.method.clone(),
                target: a.path.clone(),
                host: authority.as_ref().map(|(h, p)| format!("{h}:{p}")),
                headers: Vec::new(),
            });
            let is_http = http.is_some();
            let req = Request {
                peer: mesh_tls.then(|| src.identity.clone()),
                source_ip: src.address,
                dest_ip: w.address,
                dest_port: port,
                sni: client_tls.as_ref().and_then(|t| t.sni.clone()),
                http,
            };
            let d = ib.decide(&req);
            Some(authz_view(
                &d,
                ib,
                is_http,
                req.peer.as_ref().map(|p| p.as_str()),
            ))
        }
        _ => None,
    };
    if let (Some(t), Some(w)) = (&client_tls, &dest_workload)
        && t.mode == TlsMode::IstioMutual
        && !t
            .allowed_server_identities
            .iter()
            .any(|i| i == w.identity.as_str())
    {
        notes.push(format!(
            "secure naming: {} presents {}, which is not among the identities allowed to serve {}",
            key(w),
            w.identity.as_str(),
            dest.host.as_deref().unwrap_or("the service")
        ));
    }

    // 5. The live attempt through the source proxy.
    let via = SocketAddr::new(src.address, PROXY_OUTBOUND_PORT);
    let mut attempt = AttemptView {
        via: via.to_string(),
        request: String::new(),
        status: None,
        body: None,
        error: None,
    };
    if let Some((h, p)) = &authority {
        let uri = format!("http://{h}:{p}{}", a.path);
        attempt.request = format!("{} {uri}", a.method);
        match http::request(via, &a.method, &uri, None, None, ATTEMPT_TIMEOUT).await {
            Ok(r) => {
                attempt.status = Some(r.status);
                attempt.body = String::from_utf8_lossy(&r.body)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned());
            }
            Err(e) => {
                attempt.error = Some(format!(
                    "source proxy not reachable at {via} ({})",
                    e.root_cause()
                ));
            }
        }
    } else {
        attempt.error = Some("not attempted: the target does not resolve".into());
    }
    let ok = attempt.status.is_some_and(|s| s < 400);

    // 6. The likely cause.
    let cause = if ok {
        if authorization.as_ref().is_some_and(|z| z.decision == "deny") {
            notes.push(
                "the config denies this request but the running mesh allowed it: the proxies enforce another config (see `trustmesh verify`)"
                    .into(),
            );
        }
        None
    } else {
        Some(likely_cause(&Facts {
            attempt: &attempt,
            dest: &dest,
            mode: destination_mode.as_ref(),
            authz: authorization.as_ref(),
            client_tls: client_tls.as_ref(),
            dest_proxy_error: dest_proxy_error.as_deref(),
            dest_workload: dest_workload.as_ref(),
            secure_naming_note: notes.iter().find(|n| n.starts_with("secure naming")),
        }))
    };

    let x = Explanation {
        source,
        destination: dest,
        destination_rule,
        client_tls,
        destination_mode,
        authorization,
        attempt,
        ok,
        cause,
        notes,
    };
    emit(a.out.output, &x, || text_view(&x))?;
    Ok(if x.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn endpoint_ip(a: &EndpointAddr) -> Option<IpAddr> {
    match a {
        EndpointAddr::Ip(s) => Some(s.ip()),
        EndpointAddr::Name { .. } => None,
    }
}

fn endpoint_port(a: &EndpointAddr) -> u16 {
    match a {
        EndpointAddr::Ip(s) => s.port(),
        EndpointAddr::Name { port, .. } => *port,
    }
}

fn find_service_entry<'a>(snap: &'a Snapshot, name: &str) -> Option<&'a ServiceEntry> {
    let (ns, name) = name.split_once('/')?;
    snap.service_entries()
        .iter()
        .find(|se| se.metadata.namespace_str() == ns && se.metadata.name == name)
        .map(|se| &se.object)
}

fn authz_view(
    d: &Decision,
    ib: &InboundPolicy,
    is_http: bool,
    principal: Option<&str>,
) -> AuthzView {
    AuthzView {
        decision: if d.allowed { "allow" } else { "deny" },
        outcome: d.outcome,
        reason: d.reason.to_string(),
        policy: d.policy.as_deref().map(str::to_owned),
        rule: d.rule.as_deref().map(str::to_owned),
        http_status: d.http_status(is_http),
        principal: principal.map(str::to_owned),
        allow_policies: default_deny_policies(d, ib),
    }
}

/// What the cause is read from.
struct Facts<'a> {
    attempt: &'a AttemptView,
    dest: &'a DestinationView,
    mode: Option<&'a ModeView>,
    authz: Option<&'a AuthzView>,
    client_tls: Option<&'a ClientTlsView>,
    dest_proxy_error: Option<&'a str>,
    dest_workload: Option<&'a Workload>,
    secure_naming_note: Option<&'a String>,
}

fn likely_cause(f: &Facts<'_>) -> String {
    let body = f.attempt.body.as_deref().unwrap_or("");
    let Some(status) = f.attempt.status else {
        return f
            .dest
            .error
            .clone()
            .or_else(|| f.attempt.error.clone())
            .unwrap_or_else(|| "no response".into());
    };
    if let Some(e) = &f.dest.error {
        return e.clone();
    }
    let dest_name = f
        .dest_workload
        .map(key)
        .unwrap_or_else(|| "destination".into());
    let dest_addr = f.dest.address.clone().unwrap_or_default();
    let plaintext = f.client_tls.is_some_and(|t| t.mode == TlsMode::Disable);
    let mode = f.mode.map(|m| m.mode);
    match status {
        403 => match f.authz {
            Some(z) if z.decision == "deny" => denial(z),
            _ => format!(
                "denied by the destination ({body}), though the config allows it: its proxy enforces another config (see `trustmesh verify`)"
            ),
        },
        400 => match f.authz {
            Some(z) if z.outcome == Outcome::BadRequest => z.reason.clone(),
            _ => format!("bad request: {body}"),
        },
        502 => body.to_owned(),
        _ => {
            if plaintext && mode == Some(MtlsMode::Strict) {
                "plaintext refused: destination port is STRICT".into()
            } else if !plaintext && mode == Some(MtlsMode::Disable) {
                "mTLS refused: destination port is DISABLE".into()
            } else if body.contains("connect to") || body.contains("timed out") {
                match f.dest_proxy_error {
                    Some(e) => e.to_owned(),
                    None => format!(
                        "destination proxy {dest_name} not reachable at {dest_addr}: {body}"
                    ),
                }
            } else if body.contains("TLS handshake")
                && (body.contains("not one of")
                    || body.contains("expected")
                    || f.secure_naming_note.is_some())
            {
                format!("server identity mismatch: {body}")
            } else if body.contains("TLS handshake") {
                format!("TLS handshake with the destination failed: {body}")
            } else if let Some(e) = f.dest_proxy_error {
                e.to_owned()
            } else {
                format!("HTTP {status}: {body}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("orders:8080").unwrap(),
            TargetArg::Host("orders".into(), Some(8080))
        );
        assert_eq!(
            parse_target("orders.production.svc.cluster.local").unwrap(),
            TargetArg::Host("orders.production.svc.cluster.local".into(), None)
        );
        assert_eq!(
            parse_target("production/orders:9090").unwrap(),
            TargetArg::Workload("production".into(), "orders".into(), Some(9090))
        );
        assert_eq!(
            parse_target("production/orders").unwrap(),
            TargetArg::Workload("production".into(), "orders".into(), None)
        );
        for bad in ["orders:x", "orders:0", ":80", "a/b/c", "/x"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    fn view(policy: Option<&str>, allow: &[&str], outcome: Outcome) -> AuthzView {
        AuthzView {
            decision: "deny",
            outcome,
            reason: "ALLOW policies apply to the workload and none matched".into(),
            policy: policy.map(str::to_owned),
            rule: None,
            http_status: Some(403),
            principal: None,
            allow_policies: allow.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn denials_name_the_policy() {
        assert_eq!(
            denial(&view(None, &["production/allow-nothing"], Outcome::Deny)),
            "denied by AuthorizationPolicy production/allow-nothing: no ALLOW rule matched"
        );
        assert_eq!(
            denial(&view(None, &["p/a", "p/b"], Outcome::Deny)),
            "denied by AuthorizationPolicies p/a, p/b: no ALLOW rule matched"
        );
        let mut v = view(Some("p/deny-admin"), &[], Outcome::Deny);
        v.reason = "matched a DENY policy".into();
        assert_eq!(
            denial(&v),
            "denied by AuthorizationPolicy p/deny-admin: matched a DENY policy"
        );
    }
}
