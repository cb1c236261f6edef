//! The cert-manager controller run continuously, as cert-manager's controller runs: one
//! `trustmesh_pki::controller::reconcile` pass at start, then at the earliest renewal time of
//! any Certificate (and at least every minute, which also picks up failure backoffs), after
//! every accepted config change, and on demand (`POST /v1/rotate` with `certificates`, as
//! `cmctl renew`: reason `ManuallyTriggered`). Passes never overlap.
//! What does not live here: issuance rules and the renewal formula (`trustmesh-pki`,
//! `trustmesh-core`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use trustmesh_core::snapshot::Snapshot;
use trustmesh_pki::controller::{self, Action, Force, Outcome};

use crate::state::Shared;

/// Longest time between two passes.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Serializes passes; `wake` asks for one now.
#[derive(Debug, Default)]
pub(crate) struct Controller {
    lock: tokio::sync::Mutex<()>,
    pub wake: Arc<Notify>,
}

impl Controller {
    /// Runs one pass over the published snapshot; returns its outcomes and the earliest
    /// future renewal time.
    pub async fn pass(&self, shared: &Shared, force: Force) -> (Vec<Outcome>, Option<SystemTime>) {
        let _one_at_a_time = self.lock.lock().await;
        let snapshot = shared.current().snapshot;
        let state = shared.state_dir.clone();
        let now = shared.clock.now();
        let result = tokio::task::spawn_blocking(move || {
            let outcomes = controller::reconcile(&snapshot, &state, now, &force);
            let next = next_renewal(&snapshot, &state, now);
            (outcomes, next)
        })
        .await;
        match result {
            Ok((outcomes, next)) => {
                for o in &outcomes {
                    match o.action {
                        Action::Issued => {
                            tracing::info!(certificate = %format!("{}/{}", o.namespace, o.name), reason = %o.reason, "{}", o.message)
                        }
                        Action::Failed => {
                            tracing::warn!(certificate = %format!("{}/{}", o.namespace, o.name), reason = %o.reason, "{}", o.message)
                        }
                        Action::UpToDate | Action::BackingOff => {}
                    }
                }
                (outcomes, next)
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate controller pass failed");
                (Vec::new(), None)
            }
        }
    }
}

/// The earliest renewal time after `now` among the snapshot's Certificates.
fn next_renewal(
    snapshot: &Snapshot,
    state: &std::path::Path,
    now: SystemTime,
) -> Option<SystemTime> {
    controller::status(snapshot, state, now)
        .iter()
        .filter_map(|v| v.renewal_timestamp)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .filter(|t| *t > now)
        .min()
}

/// Passes until `shutdown`.
pub(crate) async fn controller_loop(
    shared: Arc<Shared>,
    controller: Arc<Controller>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (_, next) = controller.pass(&shared, Force::None).await;
        let wait = next
            .and_then(|t| t.duration_since(shared.clock.now()).ok())
            .unwrap_or(MAX_INTERVAL)
            .min(MAX_INTERVAL);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = controller.wake.notified() => {}
            _ = crate::state::stopping(&mut shutdown) => return,
        }
    }
}
