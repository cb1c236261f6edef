//! `trustmesh control-plane --config DIR --state DIR`: runs the control plane
//! (`trustmesh_control_plane::build`) until SIGINT or SIGTERM, logging to stderr. When it is
//! ready it prints one line to stdout with its addresses, so scripts and `up` can wait for it:
//! `control plane ready grpc=127.0.0.1:15012 admin=127.0.0.1:15014 identity=spiffe://…`.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use trustmesh_api::{CONTROL_PLANE_ADMIN_PORT, CONTROL_PLANE_GRPC_PORT};
use trustmesh_control_plane::ControlPlaneConfig;

use crate::StateArgs;

/// Flags of `trustmesh control-plane`.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// The config folder (Istio, cert-manager and trustmesh YAML); watched for changes.
    #[arg(long, env = "TRUSTMESH_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub listen: IpAddr,
    /// gRPC port: CSR signing and the config stream (0 = any free port).
    #[arg(long, default_value_t = CONTROL_PLANE_GRPC_PORT)]
    pub grpc_port: u16,
    /// Admin API and metrics port (0 = any free port).
    #[arg(long, default_value_t = CONTROL_PLANE_ADMIN_PORT)]
    pub admin_port: u16,
    /// Log filter: a level (`info`, `debug`) or tracing directives
    /// (`info,trustmesh_control_plane=debug`).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Runs `trustmesh control-plane`.
pub fn run(a: ControlPlaneArgs) -> Result<ExitCode> {
    let filter = EnvFilter::try_new(&a.log_level)
        .with_context(|| format!("--log-level {:?}", a.log_level))?;
    // Another subscriber already installed (not the case in this binary) would keep its own.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(a))
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} port {addr}"))
}

async fn serve(a: ControlPlaneArgs) -> Result<ExitCode> {
    // Installed before anything can send a signal we would otherwise die of.
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let grpc = bind("gRPC", SocketAddr::new(a.listen, a.grpc_port)).await?;
    let admin = bind("admin", SocketAddr::new(a.listen, a.admin_port)).await?;
    let mut running = trustmesh_control_plane::build(ControlPlaneConfig::new(
        a.config,
        a.state.state,
        grpc,
        admin,
    ))
    .await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "control plane ready grpc={} admin={} identity={}",
            running.grpc_addr,
            running.admin_addr,
            running.identity()
        )?;
        out.flush()?;
    }
    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        e = running.wait() => return Err(e.into()),
    };
    tracing::info!(signal, "stopping");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
