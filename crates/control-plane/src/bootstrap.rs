//! Bootstrap material for one proxy, as `trustmesh token create` and `POST /v1/tokens` make
//! it (docs/mesh-runtime.md, "Bootstrap and identity", step 1): a one-time join token bound to
//! the workload and the SPIFFE identity the snapshot gives it, and the bundle set the proxy
//! verifies the control plane with (`state/proxies/<ns>/<name>/bundle.json`).
//! What does not live here: redeeming tokens (`grpc`), storing them ([`crate::tokens`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use trustmesh_core::snapshot::{Snapshot, Workload};
use trustmesh_pki::TrustBundleSet;

use crate::bundles::{self, Cas};
use crate::error::ControlPlaneError;
use crate::mesh;
use crate::tokens::JoinTokens;

/// A join token just created, with where its material went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// The one-time bearer token (shown once; only its hash is stored).
    pub token: String,
    /// `<namespace>/<name>`.
    pub workload: String,
    /// The SPIFFE ID the token lets the proxy obtain.
    pub identity: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// The token record (named by the token's SHA-256).
    pub token_file: PathBuf,
    /// The bootstrap bundle set for the proxy's `--bundle`.
    pub bundle_file: PathBuf,
}

/// The workload `ns/name` of `snapshot`.
pub fn find_workload<'a>(snapshot: &'a Snapshot, workload: &str) -> Option<&'a Workload> {
    let (ns, name) = workload.split_once('/')?;
    snapshot.workload(ns, name)
}

/// Creates a join token for `workload` and writes its bootstrap bundle set.
pub fn create(
    snapshot: &Snapshot,
    bundles: &TrustBundleSet,
    state_dir: &Path,
    workload: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Bootstrap, ControlPlaneError> {
    let w =
        find_workload(snapshot, workload).ok_or_else(|| ControlPlaneError::UnknownWorkload {
            workload: workload.to_owned(),
        })?;
    let bundle_file = bundles::write_bootstrap_bundle(state_dir, &w.namespace, &w.name, bundles)?;
    let token = JoinTokens::new(state_dir).create(workload, &w.identity, ttl, now)?;
    Ok(Bootstrap {
        token: token.token,
        workload: token.record.workload,
        identity: token.record.identity,
        expires_at: token.record.expires_at,
        token_file: token.path,
        bundle_file,
    })
}

/// [`create`] without a running control plane: loads `config_dir`, creates the CAs the
/// config needs in `state_dir` if they do not exist yet (as the control plane would at start),
/// and computes the same bundles the control plane hands out.
pub fn create_offline(
    config_dir: &Path,
    state_dir: &Path,
    workload: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Bootstrap, ControlPlaneError> {
    let loaded = mesh::load(config_dir, state_dir, &Cas::new(), now).map_err(|issues| {
        ControlPlaneError::Config {
            dir: config_dir.to_owned(),
            issues,
        }
    })?;
    create(
        &loaded.snapshot,
        &loaded.bundles,
        state_dir,
        workload,
        ttl,
        now,
    )
}
