//! The config stream: `Discovery.Stream` over mutual TLS, each `ProxyUpdate` rebuilt into a
//! validated `Snapshot` and compiled into the [`MeshView`] every listener reads.
//!
//! docs/mesh-runtime.md, "Config stream": "The proxy rebuilds a `Snapshot` with
//! `Snapshot::build` and compiles it (`PolicySet::from_snapshot`, `InboundPolicy::from_snapshot`)
//! into a `state::MeshView`. While the control plane is away the proxy keeps enforcing its last
//! view and reconnects with backoff." A config that does not validate is logged and ignored:
//! the last view stays. `ProxyUpdate.rotation` increasing asks the identity manager to renew.
//!
//! What is not here: what the view means for traffic (`inbound`, `outbound`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use trustmesh_api::ProxyConfig;
use trustmesh_api::mesh::discovery_client::DiscoveryClient;
use trustmesh_api::mesh::{ProxyUpdate, StreamRequest};
use trustmesh_core::authz::{InboundPolicy, PolicySet};
use trustmesh_core::snapshot::Snapshot;
use trustmesh_pki::TrustBundleSet;

use crate::clock::Clock;
use crate::control::{ControlPlane, Credential};
use crate::identity::{RotateHandle, bundles_from_wire, status_message};
use crate::metrics::Metrics;
use crate::state::{MeshView, Shared};

/// First reconnect delay.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest reconnect delay: a control plane that comes back is found within this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why one update was not applied (the previous view stays).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// `config_json` is not a `ProxyConfig`.
    #[error("update {version} for {workload}: {source}")]
    Decode {
        /// `ns/name`.
        workload: String,
        /// `ProxyUpdate.version`.
        version: u64,
        /// The decoder's reason.
        #[source]
        source: trustmesh_api::ApiError,
    },
    /// The resources do not validate.
    #[error("update {version} for {workload}: config rejected: {errors}")]
    Invalid {
        /// `ns/name`.
        workload: String,
        /// `ProxyUpdate.version`.
        version: u64,
        /// Every error, one per line.
        errors: String,
    },
    /// The config holds no WorkloadEntry for this proxy.
    #[error("update {version}: no WorkloadEntry {workload} in the config")]
    NoWorkload {
        /// `ns/name`.
        workload: String,
        /// `ProxyUpdate.version`.
        version: u64,
    },
    /// The config is for another workload.
    #[error("update {version} is for {got}, this proxy is {workload}")]
    WrongWorkload {
        /// `ns/name` of this proxy.
        workload: String,
        /// `ProxyConfig.workload`.
        got: String,
        /// `ProxyUpdate.version`.
        version: u64,
    },
    /// The inbound TLS configuration could not be built.
    #[error("update {version} for {workload}: TLS configuration: {source}")]
    Tls {
        /// `ns/name`.
        workload: String,
        /// `ProxyUpdate.version`.
        version: u64,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// Compiles one update into a view. `bootstrap` stands in when the update carries no bundles.
pub fn compile_view(
    shared: &Arc<Shared>,
    update: &ProxyUpdate,
    bootstrap: &TrustBundleSet,
    clock: &Clock,
) -> Result<MeshView, UpdateError> {
    let workload = shared.workload_key.clone();
    let version = update.version;
    let config =
        ProxyConfig::from_json(&update.config_json).map_err(|source| UpdateError::Decode {
            workload: workload.clone(),
            version,
            source,
        })?;
    if config.workload != workload {
        return Err(UpdateError::WrongWorkload {
            workload,
            got: config.workload,
            version,
        });
    }
    let (snapshot, warnings) =
        Snapshot::build(config.into_sources()).map_err(|f| UpdateError::Invalid {
            workload: workload.clone(),
            version,
            errors: f
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    for w in &warnings {
        debug!(%workload, version, warning = %w, "config warning");
    }
    let (ns, name) = workload.split_once('/').unwrap_or(("", workload.as_str()));
    let own = snapshot
        .workload(ns, name)
        .cloned()
        .ok_or_else(|| UpdateError::NoWorkload {
            workload: workload.clone(),
            version,
        })?;
    let policies = PolicySet::from_snapshot(&snapshot);
    let inbound = InboundPolicy::from_snapshot(&snapshot, &policies, &own.namespace, &own.labels);
    let mut bundles = bundles_from_wire(&update.bundles);
    if bundles.is_empty() {
        bundles = bootstrap.clone();
    }
    // Same bundles as the view in force: keep its TLS config, and so its verifier's cache of
    // peer chains already verified (trustmesh_pki::verify), across config pushes.
    let (bundles, server_tls) = match shared.view() {
        Some(v) if *v.bundles == bundles => (v.bundles.clone(), v.server_tls.clone()),
        _ => {
            let bundles = Arc::new(bundles);
            let server_tls =
                shared
                    .server_tls(bundles.clone())
                    .map_err(|source| UpdateError::Tls {
                        workload: workload.clone(),
                        version,
                        source,
                    })?;
            // Client certificates are checked against the same clock the proxy schedules by.
            let mut tls = (*server_tls).clone();
            tls.time_provider = Arc::new(clock.clone());
            (bundles, Arc::new(tls))
        }
    };
    Ok(MeshView {
        version,
        snapshot: Arc::new(snapshot),
        workload: own,
        policies: Arc::new(policies),
        inbound: Arc::new(inbound),
        bundles,
        server_tls,
    })
}

/// Follows the config stream for the life of the proxy.
#[derive(Debug)]
pub struct Discovery {
    shared: Arc<Shared>,
    control: Arc<ControlPlane>,
    bootstrap: Arc<TrustBundleSet>,
    clock: Clock,
    rotate: RotateHandle,
    /// The last `ProxyUpdate.rotation` seen (across reconnects).
    rotation: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// A follower that installs views into `shared` and forwards rotations to `rotate`.
    pub fn new(
        shared: Arc<Shared>,
        control: Arc<ControlPlane>,
        bootstrap: Arc<TrustBundleSet>,
        clock: Clock,
        rotate: RotateHandle,
    ) -> Self {
        Self {
            shared,
            control,
            bootstrap,
            clock,
            rotate,
            rotation: None,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts updates and the stream's state into `metrics` (`trustmesh_config_*`,
    /// `trustmesh_control_plane_connected`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown` turns true: waits for an SVID, then streams, reconnecting with
    /// backoff (1 s doubling to 30 s, reset once an update arrives).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.shared.subscribe();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            // The stream needs mTLS, so an SVID first.
            while self.shared.identity().is_none() {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
            if *shutdown.borrow() {
                return;
            }
            let ended = tokio::select! {
                r = self.stream_once(&mut backoff) => r,
                _ = shutdown.changed() => return,
            };
            match ended {
                Ok(()) => {
                    info!(workload = %self.shared.workload_key, retry_in = ?backoff, "config stream ended; reconnecting")
                }
                Err(e) => {
                    warn!(workload = %self.shared.workload_key, error = %e, retry_in = ?backoff, "config stream failed; keeping the last config")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One stream, until it ends or fails.
    async fn stream_once(&mut self, backoff: &mut Duration) -> Result<(), String> {
        let addr = self.control.addr();
        let channel = self
            .control
            .channel(Credential::CurrentSvid)
            .map_err(|e| e.to_string())?;
        let mut client = DiscoveryClient::new(channel);
        let mut stream = client
            .stream(StreamRequest {
                workload: self.shared.workload_key.clone(),
            })
            .await
            .map_err(|s| {
                format!(
                    "Discovery.Stream at {addr}: {:?}: {}",
                    s.code(),
                    status_message(&s)
                )
            })?
            .into_inner();
        info!(workload = %self.shared.workload_key, %addr, "config stream connected");
        let _connected = Connected::new(self.metrics.clone());
        loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    *backoff = INITIAL_BACKOFF;
                    self.apply(&update);
                }
                Ok(None) => return Ok(()),
                Err(s) => {
                    return Err(format!(
                        "Discovery.Stream at {addr}: {:?}: {}",
                        s.code(),
                        status_message(&s)
                    ));
                }
            }
        }
    }

    /// Applies one update: a new view if it compiles, and a rotation if asked.
    pub fn apply(&mut self, update: &ProxyUpdate) {
        match compile_view(&self.shared, update, &self.bootstrap, &self.clock) {
            Ok(view) => {
                info!(
                    workload = %self.shared.workload_key,
                    version = view.version,
                    ports = ?view.workload.ports.values().collect::<Vec<_>>(),
                    "config applied"
                );
                self.metrics.config_accepted(view.version);
                self.shared.set_view(view);
            }
            Err(e) => {
                self.metrics.config_rejected();
                error!(error = %e, "config update ignored; keeping the last config");
            }
        }
        // "`ProxyUpdate.rotation` increasing = renew now". The first value seen is the
        // baseline (the SVID was just issued); a smaller one means the control plane
        // restarted and counts afresh.
        match self.rotation {
            Some(last) if update.rotation > last => {
                info!(workload = %self.shared.workload_key, rotation = update.rotation, "rotation requested by the control plane");
                self.rotate.rotate();
            }
            _ => {}
        }
        self.rotation = Some(update.rotation);
    }
}

/// `trustmesh_control_plane_connected` is 1 while this lives: from the stream's start to
/// its end, however it ends (failure, close, shutdown).
#[derive(Debug)]
struct Connected(Arc<Metrics>);

impl Connected {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.set_control_plane_connected(true);
        Self(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.set_control_plane_connected(false);
    }
}
