//! `trustmesh demo-app --listen IP:PORT --name NS/NAME`: the small HTTP/1.1 app `up` puts
//! behind a proxy (`trustmesh_proxy::demo_app`): every request gets 200 and a plain-text
//! account naming the app, the method, the path and the `x-forwarded-client-cert` it
//! received; `GET /healthz` gets 200. Runs until SIGINT or SIGTERM; prints
//! `demo-app ready name=NS/NAME listen=IP:PORT` on stdout once listening.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Flags of `trustmesh demo-app`.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// Address to listen on (the workload's app address).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The name it answers with, NAMESPACE/NAME.
    #[arg(long)]
    pub name: String,
}

/// Runs `trustmesh demo-app`.
pub fn run(a: DemoAppArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(a))
}

async fn serve(a: DemoAppArgs) -> Result<ExitCode> {
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let server = tokio::spawn(trustmesh_proxy::demo_app::serve(
        listener,
        a.name.clone(),
        stop_rx,
    ));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "demo-app ready name={} listen={addr}", a.name)?;
        out.flush()?;
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stop.send_replace(true);
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}
