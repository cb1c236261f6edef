//! The composition root: [`build`] takes the config and state folders, the two listeners and
//! the clock, loads everything, starts every task, and returns [`Running`]. Nothing here
//! reads flags or the environment; `trustmesh control-plane` binds the listeners and passes
//! them in, tests pass listeners on port 0.
//!
//! Start-up order: state folder (0700) → watcher (before the first load, so a change made
//! during start-up is not missed) → config, CAs and bundles (an invalid folder is fatal,
//! naming file and field) → admin credential → own SVID → gRPC (TLS 1.3, h2) and admin
//! servers, the reload loop, the SVID renewal loop and the cert-manager controller loop.

use std::fs::DirBuilder;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use trustmesh_api::mesh::ca_server::CaServer;
use trustmesh_api::mesh::discovery_server::DiscoveryServer;
use trustmesh_core::SpiffeId;

use crate::admin::{self, Admin};
use crate::bundles::Cas;
use crate::certs::{self, Controller};
use crate::clock::{Clock, SystemClock};
use crate::error::ControlPlaneError;
use crate::grpc::{CaService, DiscoveryService};
use crate::mesh;
use crate::state::Shared;
use crate::tls::{self, OwnSvid, ServerTls};
use crate::tokens;
use crate::watch::{self as config_watch, ConfigWatcher};

/// How long [`Running::shutdown`] waits for tasks to finish before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the control plane is built from.
#[derive(Debug)]
pub struct ControlPlaneConfig {
    /// The config folder (Istio, cert-manager and trustmesh YAML; a kustomization).
    pub config_dir: PathBuf,
    /// The state folder (CAs, tokens, admin credential, cert-manager output).
    pub state_dir: PathBuf,
    /// Listener for gRPC (CSR signing and config stream), port 15012 by default.
    pub grpc: TcpListener,
    /// Listener for the admin API and metrics, port 15014 by default.
    pub admin: TcpListener,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
}

impl ControlPlaneConfig {
    /// A config with the system clock.
    pub fn new(
        config_dir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        grpc: TcpListener,
        admin: TcpListener,
    ) -> Self {
        Self {
            config_dir: config_dir.into(),
            state_dir: state_dir.into(),
            grpc,
            admin,
            clock: Arc::new(SystemClock),
        }
    }
}

type TaskResult = (&'static str, Result<(), String>);

/// A running control plane. Stop it with [`Running::shutdown`]; dropping it instead aborts
/// its tasks at once, without ending the config streams in order.
#[derive(Debug)]
pub struct Running {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<TaskResult>,
    shared: Arc<Shared>,
    tls: Arc<ServerTls>,
    _watcher: Arc<ConfigWatcher>,
}

impl Running {
    /// The admin API credential (`state/admin.token`).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// The SPIFFE ID the control plane serves gRPC as.
    pub fn identity(&self) -> SpiffeId {
        self.tls.svid().id.clone()
    }

    /// The config version proxies are currently sent.
    pub fn version(&self) -> u64 {
        self.shared.current().version
    }

    /// Waits until a task stops on its own, which is a failure: it says which and why.
    pub async fn wait(&mut self) -> ControlPlaneError {
        match self.tasks.join_next().await {
            Some(Ok((what, Ok(())))) => ControlPlaneError::Stopped {
                what,
                reason: "ended".into(),
            },
            Some(Ok((what, Err(reason)))) => ControlPlaneError::Stopped { what, reason },
            Some(Err(e)) => ControlPlaneError::Stopped {
                what: "task",
                reason: e.to_string(),
            },
            None => ControlPlaneError::Stopped {
                what: "control plane",
                reason: "no tasks".into(),
            },
        }
    }

    /// Stops accepting, ends the config streams, and waits for the tasks (aborting what is
    /// still running after a few seconds). The listeners are closed when this returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(r) = self.tasks.join_next().await {
                if let Ok((what, Err(e))) = r {
                    tracing::warn!(task = what, error = %e, "task ended with an error during shutdown");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("tasks still running after {SHUTDOWN_GRACE:?}; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        tracing::info!("control plane stopped");
    }
}

/// Builds and starts the control plane.
pub async fn build(config: ControlPlaneConfig) -> Result<Running, ControlPlaneError> {
    let ControlPlaneConfig {
        config_dir,
        state_dir,
        grpc,
        admin,
        clock,
    } = config;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .map_err(|source| ControlPlaneError::State {
            path: state_dir.clone(),
            source,
        })?;
    let reload_wake = Arc::new(Notify::new());
    let watcher = Arc::new(ConfigWatcher::start(
        &config_dir,
        &state_dir,
        reload_wake.clone(),
    )?);

    let now = clock.now();
    let (cfg, st) = (config_dir.clone(), state_dir.clone());
    let loaded = tokio::task::spawn_blocking(move || mesh::load(&cfg, &st, &Cas::new(), now))
        .await
        .map_err(|e| ControlPlaneError::Stopped {
            what: "config load",
            reason: e.to_string(),
        })?
        .map_err(|issues| ControlPlaneError::Config {
            dir: config_dir.clone(),
            issues,
        })?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    watcher.follow(&loaded.files);
    let admin_token = tokens::load_or_create_admin_token(&state_dir)?;
    let shared = Arc::new(Shared::new(
        config_dir,
        state_dir,
        clock,
        admin_token,
        loaded,
    )?);
    let published = shared.current();
    let tls = Arc::new(ServerTls::new(
        OwnSvid::issue(&shared, &published.snapshot)?,
        &published.bundles,
    )?);

    let grpc_addr = grpc
        .local_addr()
        .map_err(|source| ControlPlaneError::Listener {
            what: "gRPC",
            source,
        })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|source| ControlPlaneError::Listener {
            what: "admin",
            source,
        })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let controller = Arc::new(Controller::default());
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    // gRPC: our acceptor does TLS, tonic serves HTTP/2 on the finished connections.
    let (conn_tx, conn_rx) = mpsc::channel(64);
    tasks.spawn({
        let (tls, sd) = (tls.clone(), shutdown_rx.clone());
        async move {
            tls::accept_loop(grpc, tls, conn_tx, sd).await;
            ("gRPC acceptor", Ok(()))
        }
    });
    tasks.spawn({
        let router = tonic::transport::Server::builder()
            // Notice proxies that vanished without closing, so "connected" stays true.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(CaServer::new(CaService {
                shared: shared.clone(),
            }))
            .add_service(DiscoveryServer::new(DiscoveryService {
                shared: shared.clone(),
                shutdown: shutdown_rx.clone(),
            }));
        let mut sd = shutdown_rx.clone();
        async move {
            let r = router
                .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                    crate::state::stopping(&mut sd).await;
                })
                .await;
            ("gRPC server", r.map_err(|e| e.to_string()))
        }
    });
    tasks.spawn({
        let admin_state = Arc::new(Admin {
            shared: shared.clone(),
            controller: controller.clone(),
            tls: tls.clone(),
            grpc_addr,
            admin_addr,
        });
        let sd = shutdown_rx.clone();
        async move {
            admin::serve(admin, admin_state, sd).await;
            ("admin server", Ok(()))
        }
    });
    tasks.spawn({
        let (shared, tls, watcher, sd) = (
            shared.clone(),
            tls.clone(),
            watcher.clone(),
            shutdown_rx.clone(),
        );
        let wake = controller.wake.clone();
        async move {
            config_watch::reload_loop(shared, tls, watcher, reload_wake, wake, sd).await;
            ("config reloader", Ok(()))
        }
    });
    tasks.spawn({
        let (shared, tls, sd) = (shared.clone(), tls.clone(), shutdown_rx.clone());
        async move {
            tls::renewal_loop(shared, tls, sd).await;
            ("SVID renewal", Ok(()))
        }
    });
    tasks.spawn({
        let (shared, controller, sd) = (shared.clone(), controller.clone(), shutdown_rx);
        async move {
            certs::controller_loop(shared, controller, sd).await;
            ("certificate controller", Ok(()))
        }
    });

    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        version = published.version,
        identity = %tls.svid().id,
        workloads = published.snapshot.workloads().len(),
        trust_domains = ?shared.cas.load().keys().map(|t| t.as_str()).collect::<Vec<_>>(),
        "control plane ready"
    );
    Ok(Running {
        grpc_addr,
        admin_addr,
        shutdown,
        tasks,
        shared,
        tls,
        _watcher: watcher,
    })
}
