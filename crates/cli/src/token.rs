//! `trustmesh token create NS/NAME`: a one-time join token bound to one workload and the
//! SPIFFE identity the config gives it, written straight into the state folder (no running
//! control plane needed: it redeems tokens from there), plus the proxy's bootstrap bundle
//! set `state/proxies/<ns>/<name>/bundle.json` (docs/mesh-runtime.md, "Bootstrap and
//! identity"). The token is printed, or written to `--out FILE` (0600).

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use trustmesh_control_plane::bootstrap;
use trustmesh_core::duration::GoDuration;
use trustmesh_pki::svid::format_rfc3339;

use crate::output::emit;
use crate::{OutputArgs, StateArgs};

/// `trustmesh token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token for a workload's proxy (and its bootstrap bundle set).
    Create(CreateArgs),
}

/// Flags of `trustmesh token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The workload: NAMESPACE/NAME of its WorkloadEntry.
    pub workload: String,
    /// How long the token stays valid (Go duration: 30m, 1h, 24h).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The config folder the workload's identity is read from.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Write the token to this file (mode 0600) instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = GoDuration::parse(s)
        .map_err(|e| format!("{s:?}: {e}"))?
        .as_duration();
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: a join token must live at least 1s"));
    }
    Ok(d)
}

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView {
    /// Absent when written to `--out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    workload: String,
    identity: String,
    expires_at: String,
    token_record: String,
    bundle_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

/// Runs `trustmesh token ...`.
pub fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create(a) => create(a),
    }
}

fn create(a: CreateArgs) -> Result<ExitCode> {
    let b = bootstrap::create_offline(
        &a.config,
        &a.state.state,
        &a.workload,
        a.ttl,
        SystemTime::now(),
    )?;
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        trustmesh_pki::fsutil::write_atomic(out, format!("{}\n", b.token).as_bytes(), 0o600)?;
    }
    let expires = format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(b.expires_at));
    let view = TokenView {
        token: a.out.is_none().then(|| b.token.clone()),
        workload: b.workload.clone(),
        identity: b.identity.clone(),
        expires_at: expires.clone(),
        token_record: b.token_file.display().to_string(),
        bundle_file: b.bundle_file.display().to_string(),
        token_file: a.out.as_ref().map(|p| p.display().to_string()),
    };
    emit(a.output.output, &view, || match &a.out {
        // The token alone, so `TOKEN=$(trustmesh token create ns/name)` works.
        None => b.token.clone(),
        Some(out) => format!(
            "join token for {} ({}) written to {}, expires {expires}; bootstrap bundle {}",
            b.workload,
            b.identity,
            out.display(),
            b.bundle_file.display()
        ),
    })?;
    Ok(ExitCode::SUCCESS)
}
