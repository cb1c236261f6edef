//! What the control plane's tasks share: the published state proxies are streamed
//! ([`Published`], in a `watch` channel so every change wakes every stream), the CAs, the
//! reload status, who is connected, what was issued, and what is kept in the state folder
//! (`state/control-plane.json`: the config version and each workload's rotation counter, so
//! both keep increasing across restarts as `mesh.proto` promises, and the last SVID signed
//! for each workload, so `/v1/workloads` and the cert-manager gauges of `/metrics` still
//! show it after a restart, before the proxy renews).
//! What does not live here: serving (`grpc`, `admin`), loading (`mesh`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

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

/// File of the persisted counters and issued SVIDs, under the state folder.
pub(crate) const STATE_FILE: &str = "control-plane.json";

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

impl Issued {
    /// From the persisted record; the RFC 3339 forms are derived from the Unix seconds
    /// (certificate times are whole seconds, so they read as they did when signed).
    fn from_record(r: IssuedRecord) -> Self {
        let rfc3339 = |s: u64| format_rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        Self {
            not_before: rfc3339(r.not_before_unix),
            not_after: rfc3339(r.not_after_unix),
            serial: r.serial,
            not_before_unix: r.not_before_unix,
            not_after_unix: r.not_after_unix,
            issued_at: r.issued_at,
            trust_domain: r.trust_domain,
        }
    }

    fn to_record(&self) -> IssuedRecord {
        IssuedRecord {
            serial: self.serial.clone(),
            not_before_unix: self.not_before_unix,
            not_after_unix: self.not_after_unix,
            issued_at: self.issued_at,
            trust_domain: self.trust_domain.clone(),
        }
    }
}

/// What `state/control-plane.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    /// The config version last published.
    version: u64,
    /// `ns/name` → rotation counter.
    #[serde(default)]
    rotations: BTreeMap<String, u64>,
    /// `ns/name` → the last SVID signed for it. Absent in files written before it existed.
    #[serde(default)]
    issued: BTreeMap<String, IssuedRecord>,
}

/// One entry of [`Persisted::issued`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssuedRecord {
    /// Serial, lowercase hex.
    serial: String,
    /// Unix seconds.
    not_before_unix: u64,
    /// Unix seconds.
    not_after_unix: u64,
    /// Unix seconds.
    issued_at: u64,
    /// The trust domain whose CA signed it.
    trust_domain: String,
}

impl IssuedRecord {
    /// What serde cannot check: a record that fails here was not written by the control
    /// plane.
    fn check(&self) -> Result<(), String> {
        if self.serial.is_empty()
            || !self
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("serial {:?} is not lowercase hex", self.serial));
        }
        if self.not_before_unix > self.not_after_unix {
            return Err(format!(
                "notBeforeUnix {} is after notAfterUnix {}",
                self.not_before_unix, self.not_after_unix
            ));
        }
        TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("trustDomain {:?}: {e}", self.trust_domain))?;
        Ok(())
    }
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
    /// Serializes updates of `state/control-plane.json`; taken before `issued`.
    persisting: Mutex<()>,
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
        let mut persisted = read_state(&state_dir)?;
        persisted.version += 1;
        write_state(&state_dir, &persisted)?;
        let issued = persisted
            .issued
            .into_iter()
            .map(|(w, r)| (w, Issued::from_record(r)))
            .collect();
        let now = unix(clock.now());
        let metrics = Metrics::default();
        metrics.reloads_accepted.inc();
        let (published, _) = watch::channel(Published {
            version: persisted.version,
            snapshot: loaded.snapshot,
            bundles: loaded.bundles,
            rotations: Arc::new(persisted.rotations),
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
            issued: Mutex::new(issued),
            persisting: Mutex::new(()),
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
        let _guard = lock(&self.persisting);
        let mut version = 0;
        self.published.send_modify(|p| {
            p.version += 1;
            p.snapshot = loaded.snapshot;
            p.bundles = loaded.bundles;
            version = p.version;
        });
        self.persist();
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
        let _guard = lock(&self.persisting);
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
        self.persist();
        out
    }

    /// Writes what is published and issued now to `state/control-plane.json`. The caller
    /// holds `persisting`, so writes land in the order of the changes they carry.
    fn persist(&self) {
        let p = self.current();
        let persisted = Persisted {
            version: p.version,
            rotations: (*p.rotations).clone(),
            issued: lock(&self.issued)
                .iter()
                .map(|(w, i)| (w.clone(), i.to_record()))
                .collect(),
        };
        if let Err(e) = write_state(&self.state_dir, &persisted) {
            // Still right for this run; only a restart could step back.
            tracing::error!(
                error = %e,
                "could not persist the config version, rotation counters and issued SVIDs"
            );
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

    /// Records an SVID issued to `workload` by the CA of `trust_domain`, in memory and in
    /// the state folder.
    pub fn record_issued(&self, workload: &str, svid: &IssuedSvid) {
        let issued = Issued {
            serial: svid.serial.clone(),
            not_before: format_rfc3339(svid.not_before),
            not_before_unix: unix(svid.not_before),
            not_after: format_rfc3339(svid.not_after),
            not_after_unix: unix(svid.not_after),
            issued_at: unix(self.clock.now()),
            // `sign_for` signed with the CA of the identity's trust domain.
            trust_domain: svid.id.trust_domain().as_str().to_owned(),
        };
        let _guard = lock(&self.persisting);
        lock(&self.issued).insert(workload.to_owned(), issued);
        self.persist();
    }

    /// The last SVID issued to each workload, by this process or, if none since, by the
    /// ones before it on this state folder.
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

fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Reads `state/control-plane.json`: absent = nothing yet; unreadable or not what
/// [`write_state`] writes = an error naming the file, never a silent reset (the counters
/// must not step back).
fn read_state(state_dir: &Path) -> Result<Persisted, ControlPlaneError> {
    let path = state_path(state_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Persisted::default()),
        Err(source) => return Err(ControlPlaneError::State { path, source }),
    };
    let persisted: Persisted =
        serde_json::from_str(&text).map_err(|e| ControlPlaneError::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    for (workload, record) in &persisted.issued {
        record
            .check()
            .map_err(|reason| ControlPlaneError::CorruptState {
                path: path.clone(),
                reason: format!("issued[{workload:?}]: {reason}"),
            })?;
    }
    Ok(persisted)
}

/// Replaces `state/control-plane.json` atomically (`fsutil::write_atomic`).
fn write_state(state_dir: &Path, c: &Persisted) -> Result<(), ControlPlaneError> {
    let path = state_path(state_dir);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> IssuedRecord {
        IssuedRecord {
            serial: "1f2e3d".to_owned(),
            not_before_unix: 1_700_000_000,
            not_after_unix: 1_700_086_400,
            issued_at: 1_700_000_060,
            trust_domain: "td.test".to_owned(),
        }
    }

    #[test]
    fn issued_svids_round_trip_through_the_state_file() {
        let tmp = tempfile::tempdir().unwrap();
        let written = Persisted {
            version: 7,
            rotations: BTreeMap::from([("shop/web".to_owned(), 2)]),
            issued: BTreeMap::from([("shop/web".to_owned(), record())]),
        };
        write_state(tmp.path(), &written).unwrap();
        let read = read_state(tmp.path()).unwrap();
        assert_eq!(read, written);

        let issued = Issued::from_record(read.issued["shop/web"].clone());
        assert_eq!(issued.not_before, "2023-11-14T22:13:20Z");
        assert_eq!(issued.not_after, "2023-11-15T22:13:20Z");
        assert_eq!(issued.trust_domain, "td.test");
        assert_eq!(issued.to_record(), record());
    }

    #[test]
    fn a_file_written_before_issued_svids_were_kept_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join(STATE_FILE),
            r#"{"version": 4, "rotations": {"shop/web": 1}}"#,
        )
        .unwrap();
        let read = read_state(tmp.path()).unwrap();
        assert_eq!(read.version, 4);
        assert_eq!(read.rotations["shop/web"], 1);
        assert!(read.issued.is_empty());
    }

    #[test]
    fn no_file_is_a_fresh_state_folder() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_state(tmp.path()).unwrap(), Persisted::default());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        let mut bad_serial = record();
        bad_serial.serial = "XYZ".to_owned();
        let mut bad_td = record();
        bad_td.trust_domain = "not a domain".to_owned();
        let mut backwards = record();
        backwards.not_before_unix = backwards.not_after_unix + 1;
        let cases = [
            ("{\"version\": 3, \"rotat".to_owned(), "EOF".to_owned()),
            (
                r#"{"version": 3, "issued": {"shop/web": {"serial": "ab"}}}"#.to_owned(),
                "missing field".to_owned(),
            ),
            (
                r#"{"version": 3, "issued": []}"#.to_owned(),
                "invalid type".to_owned(),
            ),
            (
                serde_json::to_string(&Persisted {
                    version: 3,
                    rotations: BTreeMap::new(),
                    issued: BTreeMap::from([("shop/web".to_owned(), bad_serial)]),
                })
                .unwrap(),
                r#"issued["shop/web"]: serial "XYZ""#.to_owned(),
            ),
            (
                serde_json::to_string(&Persisted {
                    version: 3,
                    rotations: BTreeMap::new(),
                    issued: BTreeMap::from([("shop/web".to_owned(), bad_td)]),
                })
                .unwrap(),
                "trustDomain".to_owned(),
            ),
            (
                serde_json::to_string(&Persisted {
                    version: 3,
                    rotations: BTreeMap::new(),
                    issued: BTreeMap::from([("shop/web".to_owned(), backwards)]),
                })
                .unwrap(),
                "is after notAfterUnix".to_owned(),
            ),
        ];
        for (text, want) in cases {
            fs::write(&path, &text).unwrap();
            let e = read_state(tmp.path()).unwrap_err();
            assert!(
                matches!(&e, ControlPlaneError::CorruptState { path: p, .. } if p == &path),
                "{text}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&want), "{text}: {msg}");
            // Never reset: the file is left as it was.
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
    }
}
