//! What the control plane's tasks share: the published state proxies are streamed
//! ([`Published`], in a `watch` channel so every change wakes every stream), the CAs, the
//! reload status, who is connected, what was issued, and the counters kept in the state
//! folder (`state/control-plane.json`: the config version and each workload's rotation
//! counter, so both keep increasing across restarts as `mesh.proto` promises).
//! What does not live here: serving (`grpc`, `admin`), loading (`mesh`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use trustmesh_core::TrustDomain;
use trustmesh_core::snapshot::Snapshot;
use trustmesh_pki::fsutil;
use trustmesh_pki::svid::format_rfc3339;
use trustmesh_pki::{IssuedSvid, TrustBundleSet};

use crate::bundles::Cas;
use crate::clock::Clock;
use crate::error::{ConfigIssue, ControlPlaneError};
use crate::mesh::Loaded;
use crate::metrics::Metrics;
use crate::tokens::{JoinTokens, unix};

/// File of the persisted counters, under the state folder.
pub(crate) const COUNTERS_FILE: &str = "control-plane.json";

/// What proxies are streamed; replaced whole on every change.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    /// Increases with every accepted snapshot.
    pub version: u64,
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The bundles handed out.
    pub bundles: Arc<TrustBundleSet>,
    /// `ns/name` → rotation counter (absent = 0).
    pub rotations: Arc<BTreeMap<String, u64>>,
}

impl Published {
    /// The rotation counter of `workload`.
    pub fn rotation(&self, workload: &str) -> u64 {
        self.rotations.get(workload).copied().unwrap_or(0)
    }
}

/// The outcome of the last load attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReloadStatus {
    /// When it ran, unix seconds.
    pub at: u64,
    /// `accepted` or `rejected`.
    pub result: &'static str,
    /// Why it was rejected (empty when accepted).
    pub errors: Vec<ConfigIssue>,
    /// Warnings of the load.
    pub warnings: Vec<String>,
    /// When the running snapshot was accepted, unix seconds.
    pub last_accepted_at: u64,
}

/// One SVID issued to a workload: what `GET /v1/workloads` shows as `lastIssued` and what
/// the cert-manager gauges of `/metrics` report for it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Issued {
    /// Serial, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// Unix seconds.
    pub not_before_unix: u64,
    /// RFC 3339.
    pub not_after: String,
    /// Unix seconds.
    pub not_after_unix: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// The trust domain whose CA signed it (the workload's object already shows it).
    #[serde(skip)]
    pub trust_domain: String,
}

/// The persisted counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Counters {
    version: u64,
    #[serde(default)]
    rotations: BTreeMap<String, u64>,
}

/// Everything the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub cas: ArcSwap<Cas>,
    pub published: watch::Sender<Published>,
    pub tokens: JoinTokens,
    /// Serializes check → sign → redeem of join tokens.
    pub token_lock: tokio::sync::Mutex<()>,
    pub admin_token: String,
    pub metrics: Metrics,
    reload: Mutex<ReloadStatus>,
    streams: Mutex<BTreeMap<String, usize>>,
    issued: Mutex<BTreeMap<String, Issued>>,
    /// Serializes updates of the persisted counters.
    counters: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding one of these short locks leaves plain data behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The shared state around the first load.
    pub fn new(
        config_dir: PathBuf,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        admin_token: String,
        loaded: Loaded,
    ) -> Result<Self, ControlPlaneError> {
        let mut counters = read_counters(&state_dir)?;
        counters.version += 1;
        write_counters(&state_dir, &counters)?;
        let now = unix(clock.now());
        let metrics = Metrics::default();
        metrics.reloads_accepted.inc();
        let (published, _) = watch::channel(Published {
            version: counters.version,
            snapshot: loaded.snapshot,
            bundles: loaded.bundles,
            rotations: Arc::new(counters.rotations),
        });
        Ok(Self {
            tokens: JoinTokens::new(&state_dir),
            config_dir,
            state_dir,
            clock,
            cas: ArcSwap::from_pointee(loaded.cas),
            published,
            token_lock: tokio::sync::Mutex::new(()),
            admin_token,
            metrics,
            reload: Mutex::new(ReloadStatus {
                at: now,
                result: "accepted",
                errors: Vec::new(),
                warnings: loaded.warnings,
                last_accepted_at: now,
            }),
            streams: Mutex::new(BTreeMap::new()),
            issued: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(()),
        })
    }

    /// The published state now.
    pub fn current(&self) -> Published {
        self.published.borrow().clone()
    }

    /// Publishes an accepted reload: new version, snapshot, bundles; every stream wakes.
    pub fn accept(&self, loaded: Loaded) -> u64 {
        let now = unix(self.clock.now());
        self.cas.store(Arc::new(loaded.cas));
        let _guard = lock(&self.counters);
        let mut version = 0;
        self.published.send_modify(|p| {
            p.version += 1;
            p.snapshot = loaded.snapshot;
            p.bundles = loaded.bundles;
            version = p.version;
        });
        self.persist(&self.current());
        self.metrics.reloads_accepted.inc();
        *lock(&self.reload) = ReloadStatus {
            at: now,
            result: "accepted",
            errors: Vec::new(),
            warnings: loaded.warnings,
            last_accepted_at: now,
        };
        version
    }

    /// Records a reload that loaded what is already published: nothing to push.
    pub fn unchanged(&self, warnings: Vec<String>) {
        let now = unix(self.clock.now());
        self.metrics.reloads_accepted.inc();
        let mut r = lock(&self.reload);
        r.at = now;
        r.result = "accepted";
        r.errors.clear();
        r.warnings = warnings;
    }

    /// Records a rejected reload; what is published stays.
    pub fn reject(&self, issues: Vec<ConfigIssue>) {
        let now = unix(self.clock.now());
        self.metrics.reloads_rejected.inc();
        let mut r = lock(&self.reload);
        r.at = now;
        r.result = "rejected";
        r.errors = issues;
        r.warnings.clear();
    }

    /// The last reload's outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        lock(&self.reload).clone()
    }

    /// Increments the rotation counter of each workload and wakes the streams; returns the
    /// new counters.
    pub fn rotate(&self, workloads: &[String]) -> Vec<(String, u64)> {
        let _guard = lock(&self.counters);
        let mut out = Vec::new();
        self.published.send_modify(|p| {
            let mut r = (*p.rotations).clone();
            for w in workloads {
                let c = r.entry(w.clone()).or_insert(0);
                *c += 1;
                out.push((w.clone(), *c));
            }
            p.rotations = Arc::new(r);
        });
        self.persist(&self.current());
        out
    }

    fn persist(&self, p: &Published) {
        let counters = Counters {
            version: p.version,
            rotations: (*p.rotations).clone(),
        };
        if let Err(e) = write_counters(&self.state_dir, &counters) {
            // Still increasing for this run; only a restart could step back.
            tracing::error!(error = %e, "could not persist the config version and rotation counters");
        }
    }

    /// Registers an open config stream of `workload`; dropping the guard unregisters it.
    pub fn stream_opened(self: &Arc<Self>, workload: &str) -> StreamGuard {
        *lock(&self.streams).entry(workload.to_owned()).or_insert(0) += 1;
        StreamGuard {
            shared: self.clone(),
            workload: workload.to_owned(),
        }
    }

    /// Open streams per workload.
    pub fn streams(&self) -> BTreeMap<String, usize> {
        lock(&self.streams).clone()
    }

    /// Records an SVID issued to `workload` by the CA of `trust_domain`.
    pub fn record_issued(&self, workload: &str, svid: &IssuedSvid, trust_domain: &TrustDomain) {
        lock(&self.issued).insert(
            workload.to_owned(),
            Issued {
                serial: svid.serial.clone(),
                not_before: format_rfc3339(svid.not_before),
                not_before_unix: unix(svid.not_before),
                not_after: format_rfc3339(svid.not_after),
                not_after_unix: unix(svid.not_after),
                issued_at: unix(self.clock.now()),
                trust_domain: trust_domain.as_str().to_owned(),
            },
        );
    }

    /// The last SVID issued to each workload by this process.
    pub fn issued(&self) -> BTreeMap<String, Issued> {
        lock(&self.issued).clone()
    }

    /// Counts a sent update.
    pub fn update_sent(&self) {
        self.metrics.updates_sent.inc();
    }
}

/// An open config stream; unregisters on drop.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    shared: Arc<Shared>,
    workload: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.streams);
        if let Some(n) = s.get_mut(&self.workload) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.workload);
            }
        }
    }
}

fn counters_path(state_dir: &Path) -> PathBuf {
    state_dir.join(COUNTERS_FILE)
}

fn read_counters(state_dir: &Path) -> Result<Counters, ControlPlaneError> {
    let path = counters_path(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ControlPlaneError::CorruptState {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Counters::default()),
        Err(source) => Err(ControlPlaneError::State { path, source }),
    }
}

fn write_counters(state_dir: &Path, c: &Counters) -> Result<(), ControlPlaneError> {
    let path = counters_path(state_dir);
    let json = serde_json::to_vec_pretty(c).map_err(|e| ControlPlaneError::CorruptState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fsutil::write_atomic(&path, &json, 0o644)?;
    Ok(())
}

/// Resolves once shutdown is signalled (or its sender is gone). Holds no borrow of the
/// channel afterwards, so it can sit in `select!` arms of `Send` futures.
pub(crate) async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
