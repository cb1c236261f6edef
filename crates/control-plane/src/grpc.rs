//! The gRPC services of port 15012 (`proto/mesh.proto`), implementing docs/mesh-runtime.md
//! "Bootstrap and identity" and "Config stream":
//! - `Ca.Sign`: with `authorization: Bearer <join token>` — the token must exist, not be
//!   expired, not be used, and be bound to the requested workload; it is then marked used.
//!   Without a token — "presenting the current SVID as client certificate; the requested
//!   workload must have exactly that SPIFFE identity in the current snapshot". Either way the
//!   identity signed is the snapshot's, for `workloadCertTTL`; only the CSR's key is used.
//! - `Discovery.Stream`: "the peer's SVID must be the workload's identity"; one
//!   `ProxyUpdate` at once and one on every accepted snapshot change, bundle change or rotation
//!   request for that workload.
//!
//! Refusals are statuses (`Unauthenticated`: no credential; `PermissionDenied`: a credential
//! that does not entitle the caller), each logged with the peer address and the workload.
//! What does not live here: the TLS handshake that established the peer's identity (`tls`).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use trustmesh_api::AUTHORIZATION_METADATA;
use trustmesh_api::mesh::ca_server::Ca;
use trustmesh_api::mesh::discovery_server::Discovery;
use trustmesh_api::mesh::{ProxyUpdate, SignRequest, SignResponse, StreamRequest};
use trustmesh_core::SpiffeId;
use trustmesh_core::snapshot::Workload;
use trustmesh_pki::{CertInfo, IssuedSvid};

use crate::bootstrap::find_workload;
use crate::bundles::to_proto;
use crate::mesh::proxy_config;
use crate::state::{Published, Shared};
use crate::tls::PeerInfo;
use crate::tokens::bearer;

/// `trustmesh.v1.Ca`.
#[derive(Debug, Clone)]
pub(crate) struct CaService {
    pub shared: Arc<Shared>,
}

/// `trustmesh.v1.Discovery`.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryService {
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

fn peer_of<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection has no TLS peer information"))
}

impl CaService {
    fn refuse(&self, status: Status) -> Status {
        self.shared.metrics.sign_refusals.inc();
        status
    }

    /// Signs `csr` for `w` with the CA of its trust domain, for the mesh's lifetime.
    fn sign_for(
        &self,
        published: &Published,
        w: &Workload,
        csr: &[u8],
        now: SystemTime,
    ) -> Result<IssuedSvid, Status> {
        let cas = self.shared.cas.load();
        let ca = cas.get(&w.trust_domain).ok_or_else(|| {
            Status::internal(format!("no CA for trust domain {}", w.trust_domain))
        })?;
        let lifetime = published.snapshot.mesh().workload_cert_ttl.as_duration();
        ca.sign_csr(csr, &w.identity, lifetime, now)
            .map_err(|e| self.refuse(Status::invalid_argument(e.to_string())))
    }

    fn respond(
        &self,
        published: &Published,
        workload: &str,
        svid: IssuedSvid,
        method: &str,
    ) -> Response<SignResponse> {
        self.shared.record_issued(workload, &svid);
        tracing::info!(
            workload,
            identity = %svid.id,
            serial = %svid.serial,
            not_after = %trustmesh_pki::svid::format_rfc3339(svid.not_after),
            method,
            "SVID signed"
        );
        Response::new(SignResponse {
            cert_chain_der: svid.chain_der.iter().map(|c| c.as_ref().to_vec()).collect(),
            bundles: to_proto(&published.bundles),
        })
    }

    async fn bootstrap(
        &self,
        peer: &PeerInfo,
        header: &str,
        req: SignRequest,
    ) -> Result<Response<SignResponse>, Status> {
        let Some(token) = bearer(header) else {
            return Err(self.refuse(Status::unauthenticated(
                "authorization metadata must be `Bearer <join token>`",
            )));
        };
        // Check, sign and redeem under one lock: a token is redeemed at most once.
        let _one_at_a_time = self.shared.token_lock.lock().await;
        let now = self.shared.clock.now();
        let claim = match self.shared.tokens.check(token, &req.workload, now) {
            Ok(c) => c,
            Err(e) if e.is_refusal() => {
                self.shared.metrics.token_refusals.inc();
                tracing::warn!(peer = %peer.addr, workload = %req.workload, reason = %e, "join token refused");
                return Err(self.refuse(Status::permission_denied(e.to_string())));
            }
            Err(e) => {
                tracing::error!(peer = %peer.addr, workload = %req.workload, error = %e, "join token unreadable");
                return Err(Status::internal(e.to_string()));
            }
        };
        let published = self.shared.current();
        let Some(w) = find_workload(&published.snapshot, &req.workload) else {
            tracing::warn!(peer = %peer.addr, workload = %req.workload, "join token for a workload no longer in the config");
            return Err(self.refuse(Status::permission_denied(format!(
                "workload {} is not in the config",
                req.workload
            ))));
        };
        // "A token is bound to one workload identity" (issue 4): a config change that gave
        // the workload another identity voids the token.
        if claim.record().identity != w.identity.as_str() {
            self.shared.metrics.token_refusals.inc();
            tracing::warn!(peer = %peer.addr, workload = %req.workload, token_identity = %claim.record().identity, identity = %w.identity, "join token refused: the workload's identity changed since the token was made");
            return Err(self.refuse(Status::permission_denied(format!(
                "join token was made for {}, but workload {} is now {}; create a new token",
                claim.record().identity,
                req.workload,
                w.identity
            ))));
        }
        let svid = self.sign_for(&published, w, &req.csr_der, now)?;
        claim.redeem(now).map_err(|e| {
            tracing::error!(workload = %req.workload, error = %e, "could not mark the join token used; not issuing");
            Status::internal(e.to_string())
        })?;
        self.shared.metrics.signed_bootstrap.inc();
        Ok(self.respond(&published, &req.workload, svid, "join_token"))
    }

    fn renew(&self, peer: &PeerInfo, req: SignRequest) -> Result<Response<SignResponse>, Status> {
        let Some(peer_id) = &peer.id else {
            return Err(self.refuse(Status::unauthenticated(
                "present the workload's SVID as TLS client certificate, or a join token",
            )));
        };
        let now = self.shared.clock.now();
        // The handshake verified the certificate then; a long-lived connection must not
        // renew with one that has expired since.
        if let Some(leaf) = &peer.leaf
            && CertInfo::parse(leaf).is_ok_and(|c| now >= c.not_after)
        {
            return Err(self.refuse(Status::unauthenticated(
                "the client certificate has expired; bootstrap again with a join token",
            )));
        }
        let published = self.shared.current();
        let w = match find_workload(&published.snapshot, &req.workload) {
            Some(w) if &w.identity == peer_id => w,
            other => {
                tracing::warn!(
                    peer = %peer.addr,
                    peer_identity = %peer_id,
                    workload = %req.workload,
                    workload_identity = %other.map(|w| w.identity.as_str()).unwrap_or("(not in the config)"),
                    "renewal refused: the client certificate is not the workload's identity"
                );
                return Err(self.refuse(Status::permission_denied(format!(
                    "{peer_id} may not obtain certificates for workload {}",
                    req.workload
                ))));
            }
        };
        let svid = self.sign_for(&published, w, &req.csr_der, now)?;
        self.shared.metrics.signed_renewal.inc();
        Ok(self.respond(&published, &req.workload, svid, "svid"))
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = peer_of(&request)?;
        let header = match request.metadata().get(AUTHORIZATION_METADATA) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        self.refuse(Status::unauthenticated(
                            "authorization metadata is not text",
                        ))
                    })?
                    .to_owned(),
            ),
        };
        let req = request.into_inner();
        match header {
            Some(h) => self.bootstrap(&peer, &h, req).await,
            None => self.renew(&peer, req),
        }
    }
}

/// The update for `workload` (whose proxy is `peer_id`) in `p`, or why the stream must end.
fn update_for(p: &Published, workload: &str, peer_id: &SpiffeId) -> Result<ProxyUpdate, Status> {
    let Some(w) = find_workload(&p.snapshot, workload) else {
        return Err(Status::permission_denied(format!(
            "workload {workload} is no longer in the config"
        )));
    };
    if &w.identity != peer_id {
        return Err(Status::permission_denied(format!(
            "workload {workload} is now {}, not {peer_id}; bootstrap again",
            w.identity
        )));
    }
    let config_json = proxy_config(&p.snapshot, w)
        .to_json()
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(ProxyUpdate {
        version: p.version,
        config_json,
        bundles: to_proto(&p.bundles),
        rotation: p.rotation(workload),
    })
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<ProxyUpdate, Status>>;

    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = peer_of(&request)?;
        let workload = request.into_inner().workload;
        let refuse = |s: Status| {
            self.shared.metrics.stream_refusals.inc();
            s
        };
        let Some(peer_id) = peer.id.clone() else {
            tracing::warn!(peer = %peer.addr, %workload, "config stream refused: no client certificate");
            return Err(refuse(Status::unauthenticated(
                "the config stream requires the workload's SVID as TLS client certificate",
            )));
        };
        // Subscribed before the first update is built, so no change can fall in between.
        let mut changes = self.shared.published.subscribe();
        let current = changes.borrow_and_update().clone();
        let first = match update_for(&current, &workload, &peer_id) {
            Ok(u) => u,
            Err(status) => {
                tracing::warn!(peer = %peer.addr, peer_identity = %peer_id, %workload, reason = %status.message(), "config stream refused");
                return Err(refuse(status));
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let task = StreamTask {
            shared: self.shared.clone(),
            workload,
            peer,
            peer_id,
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(task.run(first, changes));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One proxy's config stream.
struct StreamTask {
    shared: Arc<Shared>,
    workload: String,
    peer: PeerInfo,
    peer_id: SpiffeId,
    tx: mpsc::Sender<Result<ProxyUpdate, Status>>,
    shutdown: watch::Receiver<bool>,
}

impl StreamTask {
    async fn run(mut self, first: ProxyUpdate, mut changes: watch::Receiver<Published>) {
        let _connected = self.shared.stream_opened(&self.workload);
        tracing::info!(peer = %self.peer.addr, workload = %self.workload, identity = %self.peer_id, "proxy connected");
        let mut sent = (first.version, first.rotation);
        if self.send(Ok(first)).await {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = self.tx.closed() => break,
                    _ = crate::state::stopping(&mut self.shutdown) => break,
                }
                let p = changes.borrow_and_update().clone();
                match update_for(&p, &self.workload, &self.peer_id) {
                    // A wake-up for another workload's rotation: nothing new for this one.
                    Ok(u) if (u.version, u.rotation) == sent => {}
                    Ok(u) => {
                        sent = (u.version, u.rotation);
                        if !self.send(Ok(u)).await {
                            break;
                        }
                    }
                    Err(status) => {
                        tracing::warn!(peer = %self.peer.addr, workload = %self.workload, reason = %status.message(), "config stream ended");
                        self.send(Err(status)).await;
                        break;
                    }
                }
            }
        }
        tracing::info!(peer = %self.peer.addr, workload = %self.workload, "proxy disconnected");
    }

    /// Sends one message; false when the proxy is gone or the server is stopping.
    async fn send(&mut self, m: Result<ProxyUpdate, Status>) -> bool {
        let ok = m.is_ok();
        tokio::select! {
            r = self.tx.send(m) => {
                if r.is_ok() && ok {
                    self.shared.update_sent();
                }
                r.is_ok()
            }
            _ = crate::state::stopping(&mut self.shutdown) => false,
        }
    }
}
