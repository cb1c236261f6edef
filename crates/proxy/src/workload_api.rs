//! The SPIFFE Workload API on a Unix socket: apps that speak SPIFFE get their X509-SVID and
//! trust bundles from their proxy, and a new message on every rotation.
//!
//! SPIFFE Workload API:
//! - "All requests MUST include the metadata key `workload.spiffe.io` with the value `true`";
//!   without it the server answers `InvalidArgument`.
//! - `FetchX509SVID` / `FetchX509Bundles`: "As this information changes, subsequent messages
//!   will be streamed from the server" — here on every identity or bundle change
//!   ([`Shared::subscribe`]), never twice the same message.
//! - `X509SVID.x509_svid_key`: "ASN.1 DER encoded PKCS#8 private key. MUST be unencrypted."
//!   `bundle`: the SVID's own trust domain; `federated_bundles`: the others, "keyed by the
//!   SPIFFE ID of the foreign trust domain".
//! - Before the first SVID the server answers `Unavailable` ("clients back off and retry").
//! - The JWT profile is not offered: `Unimplemented`.
//!
//! No client authentication on the socket (a sidecar serves one workload). What is not here:
//! where the SVID comes from (`identity`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use trustmesh_api::WORKLOAD_API_HEADER;
use trustmesh_api::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use trustmesh_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use trustmesh_pki::TrustBundleSet;

use crate::state::Shared;

/// Why the Workload API could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// The socket could not be created.
    #[error("Workload API socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API service of one proxy.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    shared: Arc<Shared>,
    bootstrap: Arc<TrustBundleSet>,
    shutdown: watch::Receiver<bool>,
}

impl WorkloadApi {
    /// Serves `shared`'s identity; `bootstrap` stands in for bundles before a config arrives;
    /// open streams end when `shutdown` turns true.
    pub fn new(
        shared: Arc<Shared>,
        bootstrap: Arc<TrustBundleSet>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            bootstrap,
            shutdown,
        }
    }

    fn bundles(&self) -> Arc<TrustBundleSet> {
        current_bundles(&self.shared, &self.bootstrap)
    }

    /// A stream of `build()` results: now, then on every change that alters the message.
    fn watch<T, F>(&self, build: F) -> Messages<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Shared, &TrustBundleSet) -> Option<T> + Send + 'static,
    {
        let state = Watch {
            changes: self.shared.subscribe(),
            stop: self.shutdown.clone(),
            shared: self.shared.clone(),
            bootstrap: self.bootstrap.clone(),
            build,
            last: None,
        };
        Box::pin(futures::stream::unfold(state, |mut s| async move {
            loop {
                let bundles = current_bundles(&s.shared, &s.bootstrap);
                let next = (s.build)(&s.shared, &bundles).filter(|m| Some(m) != s.last.as_ref());
                if let Some(msg) = next {
                    s.last = Some(msg.clone());
                    return Some((Ok(msg), s));
                }
                tokio::select! {
                    r = s.changes.changed() => if r.is_err() { return None },
                    _ = s.stop.changed() => return None,
                }
            }
        }))
    }
}

/// The state of one open stream.
struct Watch<T, F> {
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    bootstrap: Arc<TrustBundleSet>,
    build: F,
    last: Option<T>,
}

fn current_bundles(shared: &Shared, bootstrap: &Arc<TrustBundleSet>) -> Arc<TrustBundleSet> {
    shared
        .view()
        .map_or_else(|| bootstrap.clone(), |v| v.bundles.clone())
}

/// The roots of one trust domain, DER certificates concatenated.
fn concat_roots(bundles: &TrustBundleSet, td: &trustmesh_core::TrustDomain) -> Vec<u8> {
    bundles.roots(td).iter().flat_map(|r| r.to_vec()).collect()
}

/// The current `X509SVIDResponse`, if there is an SVID.
pub fn svid_response(shared: &Shared, bundles: &TrustBundleSet) -> Option<X509svidResponse> {
    let id = shared.identity()?;
    let own_td = id.id.trust_domain();
    let federated: HashMap<String, Vec<u8>> = bundles
        .trust_domains()
        .filter(|td| **td != own_td)
        .map(|td| (td.id_string(), concat_roots(bundles, td)))
        .collect();
    Some(X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: id.id.as_str().to_owned(),
            x509_svid: id.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: id.key.private_key_der().secret_der().to_vec(),
            bundle: concat_roots(bundles, &own_td),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: federated,
    })
}

/// The current `X509BundlesResponse`: every trust domain, keyed by its SPIFFE ID.
pub fn bundles_response(bundles: &TrustBundleSet) -> Option<X509BundlesResponse> {
    if bundles.is_empty() {
        return None;
    }
    Some(X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundles
            .trust_domains()
            .map(|td| (td.id_string(), concat_roots(bundles, td)))
            .collect(),
    })
}

/// "All requests MUST include the metadata key `workload.spiffe.io` with the value `true`".
fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(WORKLOAD_API_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request (workload.spiffe.io: true)",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Messages<X509svidResponse>;
    type FetchX509BundlesStream = Messages<X509BundlesResponse>;
    type FetchJWTBundlesStream = Messages<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        if self.shared.identity().is_none() {
            return Err(Status::unavailable("no X509-SVID issued yet"));
        }
        Ok(Response::new(self.watch(svid_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        if self.bundles().is_empty() {
            return Err(Status::unavailable("no trust bundle yet"));
        }
        Ok(Response::new(self.watch(|_, b| bundles_response(b))))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not issued by trustmesh",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "JWT bundles are not served by trustmesh",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not validated by trustmesh",
        ))
    }
}

/// Serves the Workload API on a Unix socket at `path` until `shutdown`, then removes the
/// socket. A stale socket file from an earlier run is replaced.
pub fn serve(
    path: &Path,
    api: WorkloadApi,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, WorkloadApiError> {
    let bind_err = |source| WorkloadApiError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "replaced a stale Workload API socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let path = path.to_owned();
    info!(path = %path.display(), "SPIFFE Workload API listening");
    Ok(tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        let result = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(api))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
            .await;
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "Workload API server failed");
        }
        let _ = std::fs::remove_file(&path);
    }))
}
