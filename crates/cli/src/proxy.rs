//! `trustmesh proxy --workload NS/NAME --bundle FILE [--token-file FILE] ...`: runs one
//! workload's proxy (`trustmesh_proxy::app::build`) until SIGINT or SIGTERM, logging to
//! stderr. Once it has a certificate and a config it prints one line to stdout:
//! `proxy ready workload=ns/name identity=spiffe://… admin=IP:15000 outbound=… health=…
//! metrics=… inbound=8080,9090`.
//!
//! Without `--listen` the proxy listens on its WorkloadEntry's address, learned from the
//! first config (docs/mesh-runtime.md), so nothing is bound before the control plane answers.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use trustmesh_api::{
    CONTROL_PLANE_GRPC_PORT, PROXY_ADMIN_PORT, PROXY_HEALTH_PORT, PROXY_METRICS_PORT,
    PROXY_OUTBOUND_PORT,
};
use trustmesh_pki::TrustBundleSet;
use trustmesh_proxy::admin::LogControl;
use trustmesh_proxy::app::{self, Ports, ProxyOptions};

/// Flags of `trustmesh proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The workload: NAMESPACE/NAME of its WorkloadEntry.
    #[arg(long)]
    pub workload: String,
    /// The control plane's gRPC address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], CONTROL_PLANE_GRPC_PORT)))]
    pub control_plane: SocketAddr,
    /// Bootstrap trust bundle set (JSON `{"<trust-domain>": <SPIFFE bundle>}`, as
    /// `trustmesh bundle export` writes): authenticates the control plane.
    #[arg(long)]
    pub bundle: PathBuf,
    /// File holding the one-time join token for the first certificate.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Where the app listens (default: the WorkloadEntry's `trustmesh.io/app-address`
    /// annotation, else the workload address with the third octet + 1).
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// Serve the SPIFFE Workload API on this Unix socket.
    #[arg(long)]
    pub workload_api_socket: Option<PathBuf>,
    /// Listen on this address (default: the WorkloadEntry address from the first config).
    #[arg(long)]
    pub listen: Option<IpAddr>,
    /// Admin port (0 = any free port).
    #[arg(long, default_value_t = PROXY_ADMIN_PORT)]
    pub admin_port: u16,
    /// Outbound HTTP proxy port (0 = any free port).
    #[arg(long, default_value_t = PROXY_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Health port (0 = any free port).
    #[arg(long, default_value_t = PROXY_HEALTH_PORT)]
    pub health_port: u16,
    /// Metrics port (0 = any free port).
    #[arg(long, default_value_t = PROXY_METRICS_PORT)]
    pub metrics_port: u16,
    /// Log filter: a level (`info`, `debug`) or tracing directives
    /// (`info,trustmesh_proxy=debug`); changeable later with admin `POST /logging?level=`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Worker threads. 1 (the default, as sidecars are usually given one core) runs every
    /// connection on one thread, which spares the cross-thread wake-ups that dominated the
    /// profile (4.7 vs 8.5 CPU-s per 100k requests for the pair, measured when it was chosen).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
}

/// Runs `trustmesh proxy`.
pub fn run(a: ProxyArgs) -> Result<ExitCode> {
    let filter = EnvFilter::try_new(&a.log_level)
        .with_context(|| format!("--log-level {:?}", a.log_level))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Another subscriber already installed (not the case in this binary) would keep its own.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    let log = LogControl::new(move |directives| {
        let f =
            EnvFilter::try_new(directives).map_err(|e| format!("log level {directives:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    let workers = usize::from(a.workers);
    let options = options(a, log)?;
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(options))
}

/// Reads the files the flags name into the proxy's options.
fn options(a: ProxyArgs, log: LogControl) -> Result<ProxyOptions> {
    let json = std::fs::read_to_string(&a.bundle)
        .with_context(|| format!("reading --bundle {}", a.bundle.display()))?;
    let bundle = TrustBundleSet::from_json(&json)
        .with_context(|| format!("--bundle {}", a.bundle.display()))?;
    let token = match &a.token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading --token-file {}", p.display()))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                bail!("--token-file {} is empty", p.display());
            }
            Some(t)
        }
    };
    let mut o = ProxyOptions::new(a.workload, a.control_plane, bundle);
    o.join_token = token;
    o.app_address = a.app_address;
    o.listen_ip = a.listen;
    o.ports = Ports {
        admin: a.admin_port,
        health: a.health_port,
        metrics: a.metrics_port,
        outbound: a.outbound_port,
    };
    o.workload_api_socket = a.workload_api_socket;
    o.log_control = Some(log);
    Ok(o)
}

async fn serve(options: ProxyOptions) -> Result<ExitCode> {
    // Installed before anything can send a signal we would otherwise die of.
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let workload = options.workload.clone();
    let started = tokio::select! {
        r = app::build(options) => r?,
        _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
        _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
    };
    let ready = async { while !started.ready(Duration::from_secs(3600)).await {} };
    let signal = tokio::select! {
        () = ready => {
            print_ready(&workload, &started).await?;
            tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            }
        }
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal, "stopping");
    started.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn print_ready(workload: &str, p: &app::Running) -> Result<()> {
    let identity = p
        .shared
        .identity()
        .map(|i| i.id.as_str().to_owned())
        .unwrap_or_default();
    // The config's ports open right after it arrives; report those that did.
    let ports: Vec<u16> = p
        .shared
        .view()
        .map(|v| v.workload.ports.values().copied().collect())
        .unwrap_or_default();
    let mut inbound = Vec::new();
    for port in ports {
        if p.inbound_addr(port, Duration::from_secs(5)).await.is_some() {
            inbound.push(port.to_string());
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "proxy ready workload={workload} identity={identity} admin={} outbound={} health={} metrics={} inbound={}",
        p.admin,
        p.outbound,
        p.health,
        p.metrics_addr,
        inbound.join(","),
    )?;
    out.flush()?;
    Ok(())
}
