//! The proxy's composition root: [`build`] takes everything from outside as [`ProxyOptions`]
//! (control plane address, bootstrap bundle, join token, ports, clock, jitter) and starts
//! the parts in order — identity manager, config stream, then the listeners — returning a
//! [`Running`] proxy with its bound addresses and a shutdown.
//!
//! docs/mesh-runtime.md: the proxy listens on "the WorkloadEntry `address`" on ports 15000
//! admin, 15001 outbound, 15021 health, 15090 metrics and "every `WorkloadEntry.ports` value
//! (inbound)"; "Tests pass explicit ports (0 = ephemeral) through the library `build`
//! functions; the binaries default to the numbers above." Without an explicit listen IP the
//! proxy learns its address from its first config, so it binds nothing before it has one.
//! The outbound listener (15001) is served by [`crate::outbound::serve`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use trustmesh_api::{PROXY_ADMIN_PORT, PROXY_HEALTH_PORT, PROXY_METRICS_PORT, PROXY_OUTBOUND_PORT};
use trustmesh_core::model::mesh::DEFAULT_ROOT_NAMESPACE;
use trustmesh_pki::TrustBundleSet;

use crate::admin::{self, Admin, LogControl, serve_http1};
use crate::clock::{Clock, Jitter};
use crate::control::{ControlPlane, Dialer};
use crate::discovery::Discovery;
use crate::identity::{IdentityManager, RotateHandle};
use crate::inbound::{self, Inbound};
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::workload_api::{self, WorkloadApi, WorkloadApiError};

/// The proxy's own ports on the listen address; 0 picks a free one (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Admin (15000).
    pub admin: u16,
    /// Health (15021).
    pub health: u16,
    /// Prometheus metrics (15090).
    pub metrics: u16,
    /// Outbound HTTP proxy (15001).
    pub outbound: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            admin: PROXY_ADMIN_PORT,
            health: PROXY_HEALTH_PORT,
            metrics: PROXY_METRICS_PORT,
            outbound: PROXY_OUTBOUND_PORT,
        }
    }
}

/// Everything a proxy is started with.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `<namespace>/<WorkloadEntry name>`.
    pub workload: String,
    /// The control plane's gRPC address (15012).
    pub control_plane: SocketAddr,
    /// Reach the control plane through this instead of TCP to `control_plane` (tests on
    /// tokio's paused clock use in-memory pipes).
    pub control_plane_dialer: Option<Dialer>,
    /// The bootstrap trust bundle set: authenticates the control plane before a config.
    pub bundle: TrustBundleSet,
    /// The one-time join token for the first certificate.
    pub join_token: Option<String>,
    /// Where the app listens; default: the WorkloadEntry's `trustmesh.io/app-address`
    /// annotation, else the workload address with the third octet + 1.
    pub app_address: Option<IpAddr>,
    /// Where the proxy listens; default: the WorkloadEntry address of the first config.
    pub listen_ip: Option<IpAddr>,
    /// The proxy's own ports.
    pub ports: Ports,
    /// Serve the SPIFFE Workload API on this Unix socket.
    pub workload_api_socket: Option<PathBuf>,
    /// The control plane's namespace before a config names the root namespace.
    pub root_namespace: String,
    /// Wall clock.
    pub clock: Clock,
    /// Renewal jitter.
    pub jitter: Jitter,
    /// Lets admin `POST /logging` change the log filter.
    pub log_control: Option<LogControl>,
}

impl ProxyOptions {
    /// Options with every default: Istio's ports, the system clock, random jitter.
    pub fn new(
        workload: impl Into<String>,
        control_plane: SocketAddr,
        bundle: TrustBundleSet,
    ) -> Self {
        Self {
            workload: workload.into(),
            control_plane,
            control_plane_dialer: None,
            bundle,
            join_token: None,
            app_address: None,
            listen_ip: None,
            ports: Ports::default(),
            workload_api_socket: None,
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            clock: Clock::system(),
            jitter: Jitter::random(),
            log_control: None,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `--workload` is not `namespace/name`.
    #[error("workload {workload:?} must be <namespace>/<name>")]
    BadWorkload {
        /// As given.
        workload: String,
    },
    /// The bootstrap bundle holds no root: the control plane cannot be authenticated.
    #[error("the bootstrap bundle for {workload} holds no trust domain")]
    EmptyBundle {
        /// `ns/name`.
        workload: String,
    },
    /// A listener could not be opened.
    #[error("{what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Workload API socket could not be created.
    #[error(transparent)]
    WorkloadApi(#[from] WorkloadApiError),
    /// The proxy was stopped before it learned its address.
    #[error("{workload}: stopped before the first config arrived")]
    Stopped {
        /// `ns/name`.
        workload: String,
    },
}

/// A started proxy. Dropping it stops every task; [`Running::shutdown`] also waits for them.
#[derive(Debug)]
pub struct Running {
    /// Identity and config, shared by every part.
    pub shared: Arc<Shared>,
    /// The counters behind the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// The address everything listens on.
    pub listen_ip: IpAddr,
    /// Admin endpoint.
    pub admin: SocketAddr,
    /// Health endpoint.
    pub health: SocketAddr,
    /// Metrics endpoint.
    pub metrics_addr: SocketAddr,
    /// Outbound HTTP proxy.
    pub outbound: SocketAddr,
    /// The Workload API socket, if served.
    pub workload_api: Option<PathBuf>,
    inbound: watch::Receiver<BTreeMap<u16, SocketAddr>>,
    rotate: RotateHandle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The inbound listeners open now: workload port → bound address.
    pub fn inbound_addrs(&self) -> BTreeMap<u16, SocketAddr> {
        self.inbound.borrow().clone()
    }

    /// Waits until workload port `port` is listening, up to `timeout`.
    pub async fn inbound_addr(&self, port: u16, timeout: Duration) -> Option<SocketAddr> {
        let mut rx = self.inbound.clone();
        let wait = async {
            loop {
                if let Some(a) = rx.borrow_and_update().get(&port) {
                    return Some(*a);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Waits until the proxy has an SVID and a config, up to `timeout`; true if it has.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut changes = self.shared.subscribe();
        let wait = async {
            while !self.shared.is_ready() {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Asks for a new certificate now.
    pub fn rotate(&self) {
        self.rotate.rotate();
    }

    /// Stops every listener and task and waits for them (at most a few seconds); removes
    /// the Workload API socket.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        if let Some(p) = &self.workload_api {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind(what: &'static str, ip: IpAddr, port: u16) -> Result<TcpListener, AppError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

fn local(l: &TcpListener, what: &'static str, ip: IpAddr) -> Result<SocketAddr, AppError> {
    l.local_addr().map_err(|source| AppError::Bind {
        what,
        addr: SocketAddr::new(ip, 0),
        source,
    })
}

/// Starts a proxy.
pub async fn build(options: ProxyOptions) -> Result<Running, AppError> {
    let ProxyOptions {
        workload,
        control_plane,
        control_plane_dialer,
        bundle,
        join_token,
        app_address,
        listen_ip,
        ports,
        workload_api_socket,
        root_namespace,
        clock,
        jitter,
        log_control,
    } = options;
    match workload.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
        _ => return Err(AppError::BadWorkload { workload }),
    }
    if bundle.is_empty() {
        return Err(AppError::EmptyBundle { workload });
    }
    info!(
        %workload,
        %control_plane,
        trust_domains = ?bundle.trust_domains().map(|t| t.as_str()).collect::<Vec<_>>(),
        join_token = join_token.is_some(),
        app_address = ?app_address,
        listen_ip = ?listen_ip,
        ?ports,
        workload_api = ?workload_api_socket,
        "starting proxy"
    );
    let bootstrap = Arc::new(bundle);
    let shared = Shared::new(workload.clone());
    let metrics = Arc::new(Metrics::default());
    let rotate = RotateHandle::new();
    let (shutdown, stop) = watch::channel(false);
    let mut control = ControlPlane::new(
        control_plane,
        bootstrap.clone(),
        root_namespace,
        shared.clone(),
        clock.clone(),
    );
    if let Some(d) = control_plane_dialer {
        control = control.with_dialer(d);
    }
    let control = Arc::new(control);
    let mut tasks = Vec::new();

    // 1. identity, 2. config: both run for the life of the proxy.
    let identity = IdentityManager::new(
        shared.clone(),
        control.clone(),
        join_token,
        clock.clone(),
        jitter,
        rotate.clone(),
    )
    .with_metrics(metrics.clone());
    tasks.push(tokio::spawn(identity.run(stop.clone())));
    let discovery = Discovery::new(
        shared.clone(),
        control,
        bootstrap.clone(),
        clock,
        rotate.clone(),
    )
    .with_metrics(metrics.clone());
    tasks.push(tokio::spawn(discovery.run(stop.clone())));

    // 3. listeners, on the given address or the one the first config names.
    let listen_ip = match listen_ip {
        Some(ip) => ip,
        None => {
            info!(%workload, "waiting for the first config to learn the workload address");
            let mut changes = shared.subscribe();
            loop {
                if let Some(v) = shared.view() {
                    break v.workload.address;
                }
                if changes.changed().await.is_err() {
                    return Err(AppError::Stopped { workload });
                }
            }
        }
    };
    let admin_l = bind("admin", listen_ip, ports.admin).await?;
    let health_l = bind("health", listen_ip, ports.health).await?;
    let metrics_l = bind("metrics", listen_ip, ports.metrics).await?;
    let outbound_l = bind("outbound", listen_ip, ports.outbound).await?;
    let admin_addr = local(&admin_l, "admin", listen_ip)?;
    let health_addr = local(&health_l, "health", listen_ip)?;
    let metrics_addr = local(&metrics_l, "metrics", listen_ip)?;
    let outbound_addr = local(&outbound_l, "outbound", listen_ip)?;

    let admin = Admin {
        shared: shared.clone(),
        bootstrap: bootstrap.clone(),
        rotate: rotate.clone(),
        log: log_control,
        metrics: metrics.clone(),
    };
    tasks.push(tokio::spawn(serve_http1(
        admin_l,
        stop.clone(),
        move |peer, req| admin.clone().handle(peer, req),
    )));
    let s = shared.clone();
    tasks.push(tokio::spawn(serve_http1(
        health_l,
        stop.clone(),
        move |_, req| admin::health(s.clone(), req),
    )));
    let m = metrics.clone();
    tasks.push(tokio::spawn(serve_http1(
        metrics_l,
        stop.clone(),
        move |_, req| admin::metrics(m.clone(), req),
    )));

    tasks.push(tokio::spawn(crate::outbound::serve(
        outbound_l,
        shared.clone(),
        metrics.clone(),
        stop.clone(),
    )));

    if let Some(path) = &workload_api_socket {
        let api = WorkloadApi::new(shared.clone(), bootstrap.clone(), stop.clone());
        tasks.push(workload_api::serve(path, api, stop.clone())?);
    }

    let (bound_tx, bound_rx) = watch::channel(BTreeMap::new());
    let inbound = Arc::new(Inbound::new(shared.clone(), metrics.clone(), app_address));
    tasks.push(tokio::spawn(inbound::run_listeners(
        inbound,
        listen_ip,
        bound_tx,
        stop.clone(),
    )));

    info!(%workload, admin = %admin_addr, outbound = %outbound_addr, health = %health_addr, metrics = %metrics_addr, "proxy listening");
    Ok(Running {
        shared,
        metrics,
        listen_ip,
        admin: admin_addr,
        health: health_addr,
        metrics_addr,
        outbound: outbound_addr,
        workload_api: workload_api_socket,
        inbound: bound_rx,
        rotate,
        shutdown,
        tasks,
    })
}
