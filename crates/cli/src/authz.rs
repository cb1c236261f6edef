//! `trustmesh authz check`: what the destination workload's proxy would decide for one
//! request or connection, offline, from a config.
//!
//! It runs the proxy's own decision code ([`trustmesh_core::authz::evaluate_with_mode`]): the
//! PeerAuthentication mode of the port first, then request normalization (`--path` is the
//! raw request target), then AuthorizationPolicy. Every decision exits 0; bad input (flags,
//! a config that does not load) exits 2 with a one-line reason on stderr.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use trustmesh_core::authz::{
    AuthzSettings, Decision, DryRun, HttpRequest, Outcome, Request, compile, evaluate_with_mode,
};
use trustmesh_core::model::labels_subset;
use trustmesh_core::peerauth::resolve;
use trustmesh_core::{SpiffeId, TrustDomain};

use crate::OutputArgs;
use crate::output::{emit, render, table};

/// `trustmesh authz ...`.
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide one request (or TCP connection) as the destination's proxy would, offline.
    Check(CheckArgs),
}

/// Flags of `trustmesh authz check`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("peer").args(["principal", "plaintext"])))]
#[command(group(clap::ArgGroup::new("protocol").args(["tcp", "method"])))]
pub struct CheckArgs {
    /// Config files or folders (a file may hold no resources).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// The destination workload's namespace.
    #[arg(long)]
    pub namespace: String,
    /// A label of the destination workload (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// The destination workload port.
    #[arg(long)]
    pub port: u16,
    /// The peer's verified identity: `spiffe://td/ns/x/sa/y` or `td/ns/x/sa/y`.
    #[arg(long, value_name = "P")]
    pub principal: Option<String>,
    /// The connection is plaintext (the default when no --principal is given).
    #[arg(long)]
    pub plaintext: bool,
    /// The connection's source address (default 0.0.0.0, matched by no narrower ipBlocks).
    #[arg(long = "source-ip", value_name = "IP")]
    pub source_ip: Option<IpAddr>,
    /// A TCP connection, no HTTP request (the default when no --method is given).
    #[arg(long)]
    pub tcp: bool,
    /// HTTP method, as sent.
    #[arg(long, value_name = "M", requires = "path")]
    pub method: Option<String>,
    /// The raw request target as sent (query and percent-encoding included).
    #[arg(long, value_name = "P", requires = "method")]
    pub path: Option<String>,
    /// `Host` / `:authority`, port included if sent.
    #[arg(long, value_name = "H", requires = "method")]
    pub host: Option<String>,
    /// A request header (repeatable; repeated names are joined with `,`).
    #[arg(long = "header", value_name = "K=V", requires = "method")]
    pub headers: Vec<String>,
    /// TLS SNI the client sent.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Override the mesh's root namespace.
    #[arg(long = "root-namespace", value_name = "NS")]
    pub root_namespace: Option<String>,
    /// Override the mesh's trust domain.
    #[arg(long = "trust-domain", value_name = "TD")]
    pub trust_domain: Option<String>,
    /// Add a trust domain alias (repeatable; replaces the config's aliases).
    #[arg(long = "trust-domain-alias", value_name = "TD")]
    pub trust_domain_aliases: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// `allow` or `deny`.
    decision: &'static str,
    /// The port's effective mTLS mode.
    mode: &'static str,
    reason: String,
    /// The policy that decided (a PeerAuthentication when the mode refused the connection).
    policy: Option<String>,
    rule: Option<String>,
    /// `allow`, `deny`, `bad_request` or `connection_rejected`.
    outcome: Outcome,
    /// 403 or 400 for HTTP; null otherwise.
    http_status: Option<u16>,
    /// The PeerAuthentication that set the mode; null for Istio's PERMISSIVE default.
    mode_policy: Option<String>,
    /// The normalized path policies saw (HTTP).
    path: Option<String>,
    dry_run: Vec<DryRun>,
    audit: Vec<String>,
}

/// Runs `trustmesh authz`.
pub fn run(cmd: AuthzCommand) -> Result<ExitCode> {
    match cmd {
        AuthzCommand::Check(a) => match check(&a) {
            Ok(report) => {
                print(&a, &report)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Bad input: one line, exit 2 (scripts tell it from a decision, which exits 0).
                eprintln!("error: {}", format!("{e:#}").replace('\n', "; "));
                Ok(ExitCode::from(2))
            }
        },
    }
}

fn key_value(s: &str, flag: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{flag} {s:?}: expected K=V"))?;
    if k.is_empty() {
        bail!("{flag} {s:?}: empty key");
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn check(a: &CheckArgs) -> Result<Report> {
    let loaded = trustmesh_config::load_files(&a.config).map_err(|e| {
        let n = e.errors.len();
        let first = e
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        if n > 1 {
            anyhow!("config does not load: {first} (and {} more)", n - 1)
        } else {
            anyhow!("config does not load: {first}")
        }
    })?;
    let snap = &loaded.snapshot;

    let mut settings = AuthzSettings::from_mesh(snap.mesh());
    if let Some(ns) = &a.root_namespace {
        settings.root_namespace.clone_from(ns);
    }
    if let Some(td) = &a.trust_domain {
        settings.trust_domain =
            TrustDomain::new(td).with_context(|| format!("--trust-domain {td:?}"))?;
    }
    if !a.trust_domain_aliases.is_empty() {
        settings.trust_domain_aliases = a
            .trust_domain_aliases
            .iter()
            .map(|t| TrustDomain::new(t).with_context(|| format!("--trust-domain-alias {t:?}")))
            .collect::<Result<_>>()?;
    }

    let labels: BTreeMap<String, String> = a
        .labels
        .iter()
        .map(|l| key_value(l, "--label"))
        .collect::<Result<_>>()?;
    let peer = a
        .principal
        .as_deref()
        .map(|p| SpiffeId::from_principal(p).with_context(|| format!("--principal {p:?}")))
        .transpose()?;
    let http = match (&a.method, &a.path) {
        (Some(method), Some(path)) => Some(HttpRequest {
            method: method.clone(),
            target: path.clone(),
            host: a.host.clone(),
            headers: a
                .headers
                .iter()
                .map(|h| key_value(h, "--header"))
                .collect::<Result<_>>()?,
        }),
        _ => None,
    };
    // `destination.ip`: the address of the one WorkloadEntry the namespace and labels pick.
    let mut candidates = snap
        .workloads()
        .iter()
        .filter(|w| w.namespace == a.namespace && labels_subset(&labels, &w.labels));
    let dest_ip = match (candidates.next(), candidates.next()) {
        (Some(w), None) => w.address,
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let req = Request {
        peer,
        source_ip: a.source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        dest_ip,
        dest_port: a.port,
        sni: a.sni.clone(),
        http,
    };

    let policies = compile(
        snap.authorization_policies().iter().map(|s| &s.object),
        &a.namespace,
        &labels,
        &settings,
    );
    let mtls = resolve(
        snap.peer_authentications().iter().map(|s| &s.object),
        &settings.root_namespace,
        &a.namespace,
        &labels,
    );
    let d = evaluate_with_mode(&mtls, &policies, &req);
    Ok(report(&d, req.http.is_some()))
}

fn report(d: &Decision, is_http: bool) -> Report {
    let mode = d.mtls.as_ref();
    Report {
        decision: if d.allowed { "allow" } else { "deny" },
        mode: mode.map_or("PERMISSIVE", |m| m.mode.as_str()),
        reason: d.reason.to_string(),
        policy: d.policy.as_deref().map(str::to_owned),
        rule: d.rule.as_deref().map(str::to_owned),
        outcome: d.outcome,
        http_status: d.http_status(is_http),
        mode_policy: mode.and_then(|m| m.policy.as_deref()).map(str::to_owned),
        path: d.path.clone(),
        dry_run: d.dry_run.clone(),
        audit: d.audit.iter().map(|a| a.to_string()).collect(),
    }
}

fn print(a: &CheckArgs, r: &Report) -> Result<()> {
    emit(a.out.output, r, || {
        let mut t = table(["FIELD", "VALUE"]);
        let dash = || "-".to_owned();
        t.add_row(["DECISION".to_owned(), r.decision.to_owned()]);
        t.add_row([
            "MODE".to_owned(),
            match &r.mode_policy {
                Some(p) => format!("{} ({p})", r.mode),
                None => format!("{} (default)", r.mode),
            },
        ]);
        t.add_row(["REASON".to_owned(), r.reason.clone()]);
        t.add_row(["POLICY".to_owned(), r.policy.clone().unwrap_or_else(dash)]);
        t.add_row(["RULE".to_owned(), r.rule.clone().unwrap_or_else(dash)]);
        if let Some(s) = r.http_status {
            t.add_row(["HTTP STATUS".to_owned(), s.to_string()]);
        }
        if let Some(p) = &r.path {
            t.add_row(["PATH".to_owned(), p.clone()]);
        }
        for d in &r.dry_run {
            let result = match d.result {
                trustmesh_core::authz::ShadowResult::Allowed => "would allow",
                trustmesh_core::authz::ShadowResult::Denied => "would deny",
            };
            t.add_row([
                "DRY-RUN".to_owned(),
                format!("{} {} {result}", d.action.as_str(), d.policy),
            ]);
        }
        for p in &r.audit {
            t.add_row(["AUDIT".to_owned(), p.clone()]);
        }
        render(&t)
    })
}
