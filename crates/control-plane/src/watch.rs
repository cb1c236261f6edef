//! Keeping the snapshot current: a debounced watcher on the config folder and the reload
//! task it wakes.
//!
//! The folder is watched, not the files (ecosystem.md §1.11: "editors save with rename ...
//! Watch the *directory*, debounce, then reload the whole folder"), recursively, plus the
//! folders of files a kustomization pulls in from outside it. Every reload loads everything
//! again (DESIGN: "Every change is loaded whole and validated; an invalid file leaves the
//! running snapshot untouched and the error names file, line where possible, resource and
//! field"): on success the version increases and every stream is pushed an update; on
//! failure each issue is logged, kept for `/v1/status` and counted.
//! What does not live here: loading (`mesh`), publishing (`state`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::{Notify, watch};

use crate::error::ControlPlaneError;
use crate::mesh;
use crate::state::Shared;
use crate::tls::ServerTls;

/// Events closer together than this are one change (an editor's write + rename, a
/// `kubectl kustomize`-style rewrite of several files).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The watcher; dropping it stops watching.
pub(crate) struct ConfigWatcher {
    debouncer: Mutex<Debouncer<RecommendedWatcher, RecommendedCache>>,
    config_dir: PathBuf,
    extra: Mutex<BTreeSet<PathBuf>>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("config_dir", &self.config_dir)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// Watches `config_dir` recursively; relevant changes notify `wake`. Changes under
    /// `state_dir` (should it sit inside the config folder) are ignored.
    pub fn start(
        config_dir: &Path,
        state_dir: &Path,
        wake: Arc<Notify>,
    ) -> Result<Self, ControlPlaneError> {
        let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let config_dir = canonical(config_dir);
        let state_dir = canonical(state_dir);
        let watched = config_dir.clone();
        let handler = move |res: DebounceEventResult| match res {
            Ok(events) => {
                let relevant = events.iter().any(|e| {
                    e.event.need_rescan()
                        || (!matches!(e.event.kind, EventKind::Access(_))
                            && e.event
                                .paths
                                .iter()
                                .any(|p| relevant_path(p, &watched, &state_dir)))
                });
                if relevant {
                    wake.notify_one();
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "config watcher error; reloading to be safe");
                }
                wake.notify_one();
            }
        };
        let watch_err = |source| ControlPlaneError::Watch {
            path: config_dir.clone(),
            source,
        };
        let mut debouncer = new_debouncer(DEBOUNCE, None, handler).map_err(watch_err)?;
        debouncer
            .watch(&config_dir, RecursiveMode::Recursive)
            .map_err(watch_err)?;
        Ok(Self {
            debouncer: Mutex::new(debouncer),
            config_dir,
            extra: Mutex::new(BTreeSet::new()),
        })
    }

    /// Also watches the folders of `files` that lie outside the config folder.
    pub fn follow(&self, files: &[PathBuf]) {
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        for file in files {
            let Some(dir) = file.parent().and_then(|d| fs::canonicalize(d).ok()) else {
                continue;
            };
            if dir.starts_with(&self.config_dir) || extra.contains(&dir) {
                continue;
            }
            let mut d = self
                .debouncer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match d.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "watching a folder the config includes");
                    extra.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a folder the config includes")
                }
            }
        }
    }
}

/// Whether a change to `path` can change the config: not in the state folder (unless the
/// config folder itself lies inside the state folder, as `state/config`), not an editor's
/// swap or backup file, not a hidden file (the loader skips those).
fn relevant_path(path: &Path, config_dir: &Path, state_dir: &Path) -> bool {
    let config_inside_state = config_dir.starts_with(state_dir) && config_dir != state_dir;
    if path.starts_with(state_dir) && !(config_inside_state && path.starts_with(config_dir)) {
        return false;
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    !(name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx"))
}

/// Reloads the config each time `wake` fires, until `shutdown`.
pub(crate) async fn reload_loop(
    shared: Arc<Shared>,
    tls: Arc<ServerTls>,
    watcher: Arc<ConfigWatcher>,
    wake: Arc<Notify>,
    controller_wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
        reload_once(&shared, &tls, &watcher, &controller_wake).await;
    }
}

/// One reload: load whole; publish it, or keep the running snapshot and report why not.
pub(crate) async fn reload_once(
    shared: &Arc<Shared>,
    tls: &ServerTls,
    watcher: &ConfigWatcher,
    controller_wake: &Notify,
) {
    let config_dir = shared.config_dir.clone();
    let state_dir = shared.state_dir.clone();
    let existing = (**shared.cas.load()).clone();
    let now = shared.clock.now();
    let result =
        tokio::task::spawn_blocking(move || mesh::load(&config_dir, &state_dir, &existing, now))
            .await;
    let running = shared.current();
    match result {
        Ok(Ok(loaded)) => {
            watcher.follow(&loaded.files);
            for w in &loaded.warnings {
                tracing::warn!(warning = %w, "config warning");
            }
            if *loaded.snapshot == *running.snapshot && *loaded.bundles == *running.bundles {
                tracing::debug!(version = running.version, "config reloaded, unchanged");
                shared.unchanged(loaded.warnings);
                return;
            }
            let version = shared.accept(loaded);
            tracing::info!(version, "config reloaded; pushing to connected proxies");
            if let Err(e) = tls.refresh(shared, shared.clock.now()) {
                tracing::error!(error = %e, "updating the control plane's TLS after a reload failed; keeping the previous");
            }
            controller_wake.notify_one();
        }
        Ok(Err(issues)) => {
            for i in &issues {
                tracing::error!(
                    file = %i.file,
                    line = ?i.line,
                    resource = ?i.resource,
                    field = ?i.field,
                    "{}",
                    i.message
                );
            }
            tracing::warn!(
                errors = issues.len(),
                version = running.version,
                "config rejected; the running snapshot stays"
            );
            shared.reject(issues);
        }
        Err(e) => tracing::error!(error = %e, "config reload task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_litter_and_the_state_folder_do_not_trigger_reloads() {
        let (cfg, state) = (Path::new("/cfg"), Path::new("/cfg/state"));
        assert!(relevant_path(Path::new("/cfg/policies.yaml"), cfg, state));
        assert!(relevant_path(Path::new("/cfg/sub"), cfg, state));
        assert!(!relevant_path(
            Path::new("/cfg/.policies.yaml.swp"),
            cfg,
            state
        ));
        assert!(!relevant_path(Path::new("/cfg/policies.yaml~"), cfg, state));
        assert!(!relevant_path(
            Path::new("/cfg/state/tokens/ab.json"),
            cfg,
            state
        ));
    }

    /// The other nesting: a config folder kept inside the state folder still reloads, while
    /// the rest of the state folder (tokens, logs) does not.
    #[test]
    fn a_config_folder_inside_the_state_folder_is_watched() {
        let (cfg, state) = (Path::new("/run/mesh/config"), Path::new("/run/mesh"));
        assert!(relevant_path(
            Path::new("/run/mesh/config/policies.yaml"),
            cfg,
            state
        ));
        assert!(!relevant_path(
            Path::new("/run/mesh/tokens/ab.json"),
            cfg,
            state
        ));
        assert!(!relevant_path(
            Path::new("/run/mesh/logs/proxy.log"),
            cfg,
            state
        ));
    }
}
