//! `trustmesh ca ...`: the certificate authorities in the state folder, one per trust domain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use trustmesh_core::TrustDomain;
use trustmesh_pki::svid::format_rfc3339;
use trustmesh_pki::{Ca, CaStore, CertInfo};

use crate::output::{emit, render, table};
use crate::{OutputArgs, StateArgs};

/// `trustmesh ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA of each trust domain (or load it if the state folder has it already).
    Init(InitArgs),
    /// Show the CAs in the state folder.
    Show(ShowArgs),
    /// Make an existing CA key pair the CA of a trust domain — e.g. a cert-manager CA
    /// Issuer's Secret (`tls.crt`, `tls.key`), so workload certificates chain to it.
    Import(ImportArgs),
}

/// Flags of `trustmesh ca import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The trust domain this CA will sign for.
    #[arg(long = "trust-domain")]
    pub trust_domain: String,
    /// A folder holding `tls.crt` and `tls.key` (a cert-manager Secret as trustmesh writes
    /// it); or give --cert and --key.
    #[arg(long, conflicts_with_all = ["cert", "key"], required_unless_present_all = ["cert", "key"])]
    pub secret: Option<PathBuf>,
    /// The CA certificate (PEM; the chain above it may follow).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Flags of `trustmesh ca init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Take the trust domains from this config folder: the mesh's, and each network's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A trust domain to create a CA for (repeatable). Default: from --config, else cluster.local.
    #[arg(long = "trust-domain")]
    pub trust_domains: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Flags of `trustmesh ca show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// One CA, as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaView {
    trust_domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    subject: String,
    not_before: String,
    not_after: String,
    serial: String,
    cert_file: String,
}

/// Runs `trustmesh ca ...`.
pub fn run(cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::Init(a) => init(a),
        CaCommand::Show(a) => show(a),
        CaCommand::Import(a) => import(a),
    }
}

fn import(a: ImportArgs) -> Result<ExitCode> {
    let td = TrustDomain::new(&a.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", a.trust_domain))?;
    let (cert, key) = match (&a.secret, &a.cert, &a.key) {
        (Some(dir), _, _) => (dir.join("tls.crt"), dir.join("tls.key")),
        (None, Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => anyhow::bail!("give --secret DIR, or --cert and --key"),
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca = Ca::from_pem(&read(&cert)?, &read(&key)?)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    let store = CaStore::new(&a.state.state);
    let ca = store.import(&td, ca)?;
    print(a.out, &[view(&store, &td, &ca, Some("imported"))?])
}

/// The trust domains a config folder needs CAs for.
pub fn config_trust_domains(config: &Path) -> Result<Vec<TrustDomain>> {
    let out = trustmesh_config::load_dir(config)
        .map_err(|e| anyhow::anyhow!("{} is not a valid config:\n{e}", config.display()))?;
    let mesh = out.snapshot.mesh();
    let mut tds: Vec<TrustDomain> = std::iter::once(mesh.trust_domain.clone())
        .chain(mesh.networks.values().cloned())
        .collect();
    tds.sort();
    tds.dedup();
    Ok(tds)
}

fn view(
    store: &CaStore,
    td: &TrustDomain,
    ca: &Ca,
    action: Option<&'static str>,
) -> Result<CaView> {
    let info = CertInfo::parse(ca.root_der()).context("reading the CA certificate")?;
    Ok(CaView {
        trust_domain: td.to_string(),
        action,
        subject: info.subject,
        not_before: format_rfc3339(info.not_before),
        not_after: format_rfc3339(info.not_after),
        serial: info.serial_hex,
        cert_file: store.cert_path(td).display().to_string(),
    })
}

fn init(a: InitArgs) -> Result<ExitCode> {
    let mut tds = a
        .trust_domains
        .iter()
        .map(|s| TrustDomain::new(s).with_context(|| format!("--trust-domain {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    if tds.is_empty() {
        tds = match &a.config {
            Some(dir) => config_trust_domains(dir)?,
            None => vec![TrustDomain::new("cluster.local")?],
        };
    }
    let store = CaStore::new(&a.state.state);
    let mut views = Vec::new();
    for td in &tds {
        let existed = store.load(td)?.is_some();
        let ca = store.load_or_create(td, SystemTime::now())?;
        views.push(view(
            &store,
            td,
            &ca,
            Some(if existed { "loaded" } else { "created" }),
        )?);
    }
    print(a.out, &views)
}

fn show(a: ShowArgs) -> Result<ExitCode> {
    let store = CaStore::new(&a.state.state);
    let mut views = Vec::new();
    for td in state_trust_domains(&a.state.state)? {
        if let Some(ca) = store.load(&td)? {
            views.push(view(&store, &td, &ca, None)?);
        }
    }
    if views.is_empty() {
        anyhow::bail!(
            "no CA in {}; create one with `trustmesh ca init`",
            a.state.state.display()
        );
    }
    print(a.out, &views)
}

/// The trust domains that have a CA folder in the state folder, sorted.
pub fn state_trust_domains(state: &Path) -> Result<Vec<TrustDomain>> {
    let dir = state.join("ca");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut tds = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden entries are in-progress creations.
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        if let Ok(td) = TrustDomain::new(&name) {
            tds.push(td);
        }
    }
    tds.sort();
    Ok(tds)
}

fn print(out: OutputArgs, views: &[CaView]) -> Result<ExitCode> {
    emit(out.output, &views, || {
        let mut t = table([
            "TRUST DOMAIN",
            "STATE",
            "SUBJECT",
            "NOT AFTER",
            "SERIAL",
            "FILE",
        ]);
        for v in views {
            t.add_row([
                v.trust_domain.clone(),
                v.action.unwrap_or("present").to_owned(),
                v.subject.clone(),
                v.not_after.clone(),
                v.serial.clone(),
                v.cert_file.clone(),
            ]);
        }
        render(&t)
    })?;
    Ok(ExitCode::SUCCESS)
}
