//! `trustmesh bundle export | combine | show`: trust bundles, the roots each trust domain's
//! certificates chain to, exchanged between regions.
//!
//! File formats: the *bundle set* `{"<trust-domain>": <SPIFFE bundle>, ...}` (self-describing,
//! what `export` writes by default and `combine` writes), a bare SPIFFE bundle (JWKS, the
//! SPIFFE federation format), or PEM roots. A bare bundle or PEM file does not name its trust
//! domain, so `combine` and `show` take it as `TRUST_DOMAIN=FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use trustmesh_core::TrustDomain;
use trustmesh_pki::svid::format_rfc3339;
use trustmesh_pki::{CaStore, CertInfo, TrustBundle, TrustBundleSet};

use crate::output::{emit, render, table};
use crate::{OutputArgs, StateArgs};

/// `trustmesh bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write this mesh's trust bundle (the roots of the CAs in the state folder).
    Export(ExportArgs),
    /// Combine bundles of several trust domains into one bundle set.
    Combine(CombineArgs),
    /// Show the trust domains and roots of a bundle file, or of the state folder's CAs.
    Show(ShowArgs),
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Bundle set `{"<td>": <SPIFFE bundle>}`: names its trust domains.
    Set,
    /// One bare SPIFFE bundle (JWKS); needs exactly one trust domain.
    Spiffe,
    /// PEM roots; needs exactly one trust domain.
    Pem,
}

/// Flags of `trustmesh bundle export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only these trust domains (repeatable). Default: every CA in the state folder.
    #[arg(long = "trust-domain")]
    pub trust_domains: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Set)]
    pub format: ExportFormat,
    /// Write here (atomically) instead of standard output.
    #[arg(long = "out")]
    pub out_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Flags of `trustmesh bundle combine`.
#[derive(Debug, Args)]
pub struct CombineArgs {
    /// Bundle files: a bundle set, or `TRUST_DOMAIN=FILE` for a bare SPIFFE bundle or PEM.
    #[arg(required = true)]
    pub files: Vec<String>,
    /// Write here (atomically) instead of standard output.
    #[arg(long = "out")]
    pub out_file: Option<PathBuf>,
}

/// Flags of `trustmesh bundle show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A bundle file (as for `combine`); default: the state folder's CAs.
    pub file: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Runs `trustmesh bundle ...`.
pub fn run(cmd: BundleCommand) -> Result<ExitCode> {
    match cmd {
        BundleCommand::Export(a) => export(a),
        BundleCommand::Combine(a) => combine(a),
        BundleCommand::Show(a) => show(a),
    }
}

/// The bundle set of the CAs in the state folder.
fn state_bundles(state: &Path, only: &[TrustDomain]) -> Result<TrustBundleSet> {
    let store = CaStore::new(state);
    let mut set = TrustBundleSet::new();
    let tds = if only.is_empty() {
        crate::ca::state_trust_domains(state)?
    } else {
        only.to_vec()
    };
    for td in tds {
        let Some(ca) = store.load(&td)? else {
            bail!("no CA for trust domain {td} in {}", state.display());
        };
        set.insert(td, TrustBundle::from_roots([ca.root_der().clone()])?);
    }
    if set.is_empty() {
        bail!(
            "no CA in {}; create one with `trustmesh ca init`",
            state.display()
        );
    }
    Ok(set)
}

fn write_out(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(p) => {
            trustmesh_pki::fsutil::write_atomic(p, text.as_bytes(), 0o644)?;
            eprintln!("wrote {}", p.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<ExitCode> {
    let only = a
        .trust_domains
        .iter()
        .map(|s| TrustDomain::new(s).with_context(|| format!("--trust-domain {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    let set = state_bundles(&a.state.state, &only)?;
    let text = match a.format {
        ExportFormat::Set => set.to_json()?,
        ExportFormat::Spiffe | ExportFormat::Pem => {
            let mut it = set.iter();
            let (Some((_, bundle)), None) = (it.next(), it.next()) else {
                bail!("--format spiffe and pem hold one trust domain: name it with --trust-domain");
            };
            if a.format == ExportFormat::Pem {
                bundle.to_pem()
            } else {
                bundle.to_spiffe_json()?
            }
        }
    };
    write_out(a.out_file.as_deref(), &text)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a bundle argument: a bundle-set file, or `TD=FILE` for a bare SPIFFE bundle or PEM.
fn read_bundle_arg(arg: &str) -> Result<TrustBundleSet> {
    let (td, path) = match arg.split_once('=') {
        Some((td, path)) => (
            Some(TrustDomain::new(td).with_context(|| format!("{arg}: trust domain {td:?}"))?),
            path,
        ),
        None => (None, arg),
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    match td {
        None => TrustBundleSet::from_json(&text).with_context(|| {
            format!("{path}: not a bundle set (for a bare SPIFFE bundle or PEM file write TRUST_DOMAIN={path})")
        }),
        Some(td) => {
            let bundle = if text.trim_start().starts_with('{') {
                TrustBundle::from_spiffe_json(&text)
                    .with_context(|| format!("{path}: not a SPIFFE bundle"))?
            } else {
                TrustBundle::from_pem(&text).with_context(|| format!("{path}: not PEM roots"))?
            };
            let mut set = TrustBundleSet::new();
            set.insert(td, bundle);
            Ok(set)
        }
    }
}

fn combine(a: CombineArgs) -> Result<ExitCode> {
    let sets = a
        .files
        .iter()
        .map(|f| read_bundle_arg(f))
        .collect::<Result<Vec<_>>>()?;
    let combined = TrustBundleSet::combine(sets);
    write_out(a.out_file.as_deref(), &combined.to_json()?)?;
    Ok(ExitCode::SUCCESS)
}

/// One root, as printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RootView {
    trust_domain: String,
    subject: String,
    not_after: String,
    serial: String,
}

fn show(a: ShowArgs) -> Result<ExitCode> {
    let set = match &a.file {
        Some(f) => read_bundle_arg(f)?,
        None => state_bundles(&a.state.state, &[])?,
    };
    let mut roots = Vec::new();
    for (td, bundle) in set.iter() {
        for der in bundle.roots() {
            let info = CertInfo::parse(der).with_context(|| format!("a root of {td}"))?;
            roots.push(RootView {
                trust_domain: td.to_string(),
                subject: info.subject,
                not_after: format_rfc3339(info.not_after),
                serial: info.serial_hex,
            });
        }
    }
    emit(a.out.output, &roots, || {
        let mut t = table(["TRUST DOMAIN", "SUBJECT", "NOT AFTER", "SERIAL"]);
        for r in &roots {
            t.add_row([
                r.trust_domain.clone(),
                r.subject.clone(),
                r.not_after.clone(),
                r.serial.clone(),
            ]);
        }
        render(&t)
    })?;
    Ok(ExitCode::SUCCESS)
}
