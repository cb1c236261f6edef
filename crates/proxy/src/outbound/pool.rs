//! Connection pools and the `connectionPool` circuit breakers.
//!
//! One [`Cluster`] per destination `host:port` (Envoy's outbound cluster) holds the limits
//! and their counters: active requests (`http.http2MaxRequests`), requests waiting for a
//! connection (`http.http1MaxPendingRequests`) and open connections (`tcp.maxConnections`,
//! a semaphore shared by the cluster's endpoints and CONNECT tunnels). Under it, one
//! [`EndpointPool`] per (endpoint, TLS settings) keeps the connections:
//!
//! - HTTP/2 (between proxies by default, ALPN `h2`): one connection multiplexes every
//!   request, so the mTLS handshake is paid once per peer. Requests that find no usable
//!   connection share a single connect in flight. `http.maxRequestsPerConnection` retires a
//!   connection after N requests: it takes no new request and closes when its last one
//!   completes. `http.h2UpgradePolicy` DEFAULT means trustmesh's mesh-wide default, UPGRADE
//!   (Istio's is DO_NOT_UPGRADE).
//! - HTTP/1.1 (between proxies with `h2UpgradePolicy: DO_NOT_UPGRADE`, ALPN `http/1.1`;
//!   plaintext upstreams; TLS servers without `h2`): idle keep-alive connections, one
//!   request at a time each; a request finding none idle opens its own at once.
//!
//! A connection idle for `http.idleTimeout` (or alive for `tcp.maxConnectionDuration`) is
//! retired the same way. Nothing here ever cuts a request in flight.
//!
//! What is not here: resolving routes (`route`), HTTP message rewriting (`forward`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared as SharedFuture};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::sync::{Notify, OnceCell, Semaphore};
use trustmesh_core::SpiffeId;
use trustmesh_pki::TrustBundleSet;

use super::OutBody;
use super::connect::{self, Slot};
use super::error::OutboundError;
use super::route::{Limits, Route, Upstream, UpstreamTls};
use super::tls::{self, ALPN_H1, ALPN_H2, ALPN_HTTP, ServiceRef};
use crate::metrics::Metrics;
use crate::state::Shared;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every cluster of one outbound listener.
#[derive(Debug)]
pub struct Pools {
    clusters: Mutex<HashMap<(String, u16), Arc<Cluster>>>,
    metrics: Arc<Metrics>,
}

impl Pools {
    /// No cluster yet; mesh mTLS handshakes count into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            clusters: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The cluster of `route`; a new one when its limits changed (requests in flight finish
    /// on the old one).
    pub fn cluster(&self, route: &Route) -> Arc<Cluster> {
        let mut m = lock(&self.clusters);
        let key = (route.host.clone(), route.port);
        if let Some(c) = m.get(&key).filter(|c| c.limits == route.limits) {
            return c.clone();
        }
        let c = Arc::new(Cluster::new(
            &route.host,
            route.port,
            route.limits.clone(),
            self.metrics.clone(),
        ));
        m.insert(key, c.clone());
        c
    }
}

/// One destination `host:port`: its limits, counters and endpoint pools.
#[derive(Debug)]
pub struct Cluster {
    host: String,
    port: u16,
    limits: Limits,
    active: AtomicU32,
    pending: AtomicU32,
    slots: Arc<Semaphore>,
    /// Woken when a connection slot frees, or a connection is added or returned.
    capacity: Arc<Notify>,
    next: AtomicUsize,
    endpoints: Mutex<HashMap<Upstream, Arc<EndpointPool>>>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    fn new(host: &str, port: u16, limits: Limits, metrics: Arc<Metrics>) -> Self {
        let slots = usize::try_from(limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            host: host.to_owned(),
            port,
            limits,
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            slots: Arc::new(Semaphore::new(slots)),
            capacity: Arc::new(Notify::new()),
            next: AtomicUsize::new(0),
            endpoints: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Where mesh mTLS handshakes are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The destination, for error messages.
    pub fn svc(&self) -> ServiceRef<'_> {
        ServiceRef {
            host: &self.host,
            port: self.port,
        }
    }

    fn overflow(&self, what: &'static str, setting: &'static str, limit: u32) -> OutboundError {
        OutboundError::Overflow {
            host: self.host.clone(),
            port: self.port,
            what,
            setting,
            limit,
        }
    }

    /// Counts one active request. `http.http2MaxRequests`: "Maximum number of active
    /// requests to a destination"; overflow → "503 with response flag `UO`", at once.
    pub fn start_request(self: &Arc<Self>) -> Result<ActiveRequest, OutboundError> {
        let max = self.limits.max_requests;
        if self.active.fetch_add(1, Ordering::AcqRel) >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(self.overflow(
                "active requests",
                "connectionPool.http.http2MaxRequests",
                max,
            ));
        }
        Ok(ActiveRequest {
            cluster: self.clone(),
        })
    }

    /// `http.http1MaxPendingRequests`: "Maximum number of requests that will be queued
    /// while waiting for a ready connection pool connection".
    fn start_pending(self: &Arc<Self>) -> Result<Pending, OutboundError> {
        let max = self.limits.max_pending_requests;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(self.overflow(
                "requests waiting for a connection",
                "connectionPool.http.http1MaxPendingRequests",
                max,
            ));
        }
        Ok(Pending {
            cluster: self.clone(),
        })
    }

    /// A connection slot now, or `None` when `tcp.maxConnections` are open.
    pub fn try_slot(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Slot::new(p, self.capacity.clone()))
    }

    /// The overflow error for a full `tcp.maxConnections`.
    pub fn connections_overflow(&self) -> OutboundError {
        self.overflow(
            "open connections",
            "connectionPool.tcp.maxConnections",
            self.limits.max_connections,
        )
    }

    /// Round-robin over `n` endpoints.
    pub fn next_index(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }

    /// The pool of `upstream`, trusting `bundles`. A pool built with other bundles is
    /// replaced: its connections finish their requests and close.
    pub fn endpoint(
        &self,
        upstream: &Upstream,
        bundles: &Arc<TrustBundleSet>,
    ) -> Arc<EndpointPool> {
        let mut m = lock(&self.endpoints);
        if let Some(ep) = m.get(upstream) {
            let same = matches!(upstream.tls, UpstreamTls::Plain | UpstreamTls::Files(_))
                || Arc::ptr_eq(&ep.bundles, bundles)
                || *ep.bundles == **bundles;
            if same {
                return ep.clone();
            }
        }
        // Forget pools nobody uses any more (endpoints gone from the config, old bundles).
        m.retain(|_, ep| {
            Arc::strong_count(ep) > 1 || {
                let st = lock(&ep.state);
                !st.conns.is_empty() || st.connecting.is_some()
            }
        });
        let ep = Arc::new(EndpointPool {
            upstream: upstream.clone(),
            bundles: bundles.clone(),
            tls: OnceCell::new(),
            state: Mutex::new(EndpointState::default()),
            next_id: AtomicU64::new(0),
        });
        m.insert(upstream.clone(), ep.clone());
        ep
    }
}

/// One active request of a cluster; released on drop.
#[derive(Debug)]
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request waiting for a connection; released on drop.
#[derive(Debug)]
struct Pending {
    cluster: Arc<Cluster>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.cluster.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a pooled connection speaks.
#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<OutBody>),
    H2(http2::SendRequest<OutBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }
}

/// Counters of one connection.
#[derive(Debug)]
struct ConnStats {
    id: u64,
    peer: SocketAddr,
    /// The SPIFFE ID the mesh mTLS handshake verified.
    peer_id: Option<SpiffeId>,
    /// Requests started on it.
    served: AtomicU32,
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
    /// Takes no new request.
    retired: AtomicBool,
}

impl ConnStats {
    /// Counts a request started on the connection; true once it may take no more.
    /// `http.maxRequestsPerConnection`: "Maximum number of requests per connection to a
    /// backend" — the connection is retired once it has served that many.
    fn count_request(&self, limits: &Limits) -> bool {
        let served = self.served.fetch_add(1, Ordering::AcqRel) + 1;
        let full = limits
            .max_requests_per_connection
            .is_some_and(|m| served >= m);
        if full {
            self.retired.store(true, Ordering::Release);
        }
        full
    }
}

/// A connection in the pool, ready for a request.
#[derive(Debug)]
struct Pooled {
    sender: Sender,
    stats: Arc<ConnStats>,
}

type Connecting = SharedFuture<BoxFuture<'static, Result<(), OutboundError>>>;

#[derive(Default)]
struct EndpointState {
    conns: Vec<Pooled>,
    connecting: Option<Connecting>,
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("conns", &self.conns)
            .field("connecting", &self.connecting.is_some())
            .finish()
    }
}

/// The connections to one endpoint with one TLS setting.
#[derive(Debug)]
pub struct EndpointPool {
    upstream: Upstream,
    bundles: Arc<TrustBundleSet>,
    /// Built once: a pool lives in one [`Cluster`], whose limits (`h2_upgrade` among them)
    /// never change — changed limits make a new cluster.
    tls: OnceCell<Arc<ClientConfig>>,
    state: Mutex<EndpointState>,
    next_id: AtomicU64,
}

/// What one pass over the pool decided.
enum Step {
    Got(Lease),
    Wait(Connecting),
    ConnectHere(Slot),
    WaitForSlot,
}

impl EndpointPool {
    /// The TLS config and SNI for this endpoint (`None` for plaintext).
    /// Between proxies, `h2` multiplexes every request over one connection; without it
    /// (`h2UpgradePolicy: DO_NOT_UPGRADE`) HTTP/1.1 keep-alive connections carry one request
    /// at a time each.
    async fn client_tls(
        &self,
        shared: &Arc<Shared>,
        svc: ServiceRef<'_>,
        h2: bool,
    ) -> Result<Option<(Arc<ClientConfig>, String)>, OutboundError> {
        match &self.upstream.tls {
            UpstreamTls::Plain => Ok(None),
            UpstreamTls::Mesh(m) => {
                if shared.identity().is_none() {
                    return Err(OutboundError::NoIdentity {
                        host: svc.host.to_owned(),
                        port: svc.port,
                    });
                }
                let alpn = if h2 { ALPN_H2 } else { ALPN_H1 };
                let cfg = self
                    .tls
                    .get_or_try_init(|| async {
                        tls::mesh_config(shared, self.bundles.clone(), m, alpn, svc)
                    })
                    .await?;
                Ok(Some((cfg.clone(), m.sni.clone())))
            }
            UpstreamTls::Files(f) => {
                let cfg = self
                    .tls
                    .get_or_try_init(|| tls::file_config(f, ALPN_HTTP, svc))
                    .await?;
                Ok(Some((cfg.clone(), f.server_name.clone())))
            }
        }
    }

    /// Whether connections here are expected to multiplex (TLS with ALPN `h2` offered):
    /// then requests waiting for a connection share one connect. Otherwise each waiting
    /// request opens its own, at once: an HTTP/1.1 connection carries one request at a time.
    fn multiplexed(&self, limits: &Limits) -> bool {
        match self.upstream.tls {
            UpstreamTls::Plain => false,
            UpstreamTls::Mesh(_) => limits.h2_upgrade,
            UpstreamTls::Files(_) => true,
        }
    }

    /// A connection for one request: a pooled one with room, or a new one. Waits (as a
    /// pending request) for a connect in progress or a free `tcp.maxConnections` slot, at
    /// most `connectTimeout` for the slot.
    pub async fn checkout(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        shared: &Arc<Shared>,
    ) -> Result<Lease, OutboundError> {
        let limits = cluster.limits();
        let mut pending: Option<Pending> = None;
        let slot_deadline = tokio::time::Instant::now() + limits.connect_timeout;
        loop {
            let capacity = cluster.capacity.notified();
            tokio::pin!(capacity);
            capacity.as_mut().enable();
            let step = self.step(cluster, shared, &mut pending)?;
            match step {
                Step::Got(mut lease) => {
                    if lease.ready().await {
                        return Ok(lease);
                    }
                }
                Step::Wait(connecting) => connecting.await?,
                Step::ConnectHere(slot) => {
                    let pooled = connect_new(self, cluster, shared, slot).await?;
                    if matches!(pooled.sender, Sender::H1(_)) {
                        drop(pending);
                        pooled.stats.count_request(limits);
                        return Ok(self.lease(cluster, pooled));
                    }
                    lock(&self.state).conns.push(pooled);
                }
                Step::WaitForSlot => {
                    if tokio::time::timeout_at(slot_deadline, capacity)
                        .await
                        .is_err()
                    {
                        return Err(cluster.connections_overflow());
                    }
                }
            }
        }
    }

    /// One pass under the lock.
    fn step(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        shared: &Arc<Shared>,
        pending: &mut Option<Pending>,
    ) -> Result<Step, OutboundError> {
        let limits = cluster.limits();
        let mut st = lock(&self.state);
        st.conns.retain(|c| !c.sender.is_closed());
        let usable = st.conns.iter().position(|c| match c.sender {
            Sender::H1(_) => true,
            Sender::H2(_) => {
                c.stats.in_flight.load(Ordering::Acquire) < limits.max_concurrent_streams as usize
            }
        });
        if let Some(i) = usable {
            let stats = st.conns[i].stats.clone();
            let full = stats.count_request(limits);
            let sender = match &st.conns[i].sender {
                Sender::H2(s) if !full => Sender::H2(s.clone()),
                _ => st.conns.swap_remove(i).sender,
            };
            drop(st);
            return Ok(Step::Got(self.lease(cluster, Pooled { sender, stats })));
        }
        if pending.is_none() {
            *pending = Some(cluster.start_pending()?);
        }
        if self.multiplexed(limits)
            && let Some(c) = &st.connecting
        {
            return Ok(Step::Wait(c.clone()));
        }
        let Some(slot) = cluster.try_slot() else {
            return Ok(Step::WaitForSlot);
        };
        if !self.multiplexed(limits) {
            return Ok(Step::ConnectHere(slot));
        }
        // One connect for every request waiting on this endpoint.
        let (ep, cl, sh) = (self.clone(), cluster.clone(), shared.clone());
        let task = tokio::spawn(async move {
            let r = connect_new(&ep, &cl, &sh, slot).await;
            let mut st = lock(&ep.state);
            st.connecting = None;
            let r = r.map(|p| st.conns.push(p));
            drop(st);
            cl.capacity.notify_waiters();
            r
        });
        let (host, port) = (cluster.host.clone(), cluster.port);
        let peer = self.upstream.addr.to_string();
        let connecting: Connecting = async move {
            task.await.unwrap_or_else(|e| {
                Err(OutboundError::Connect {
                    host,
                    port,
                    peer,
                    reason: format!("connect task failed: {e}"),
                })
            })
        }
        .boxed()
        .shared();
        st.connecting = Some(connecting.clone());
        Ok(Step::Wait(connecting))
    }

    fn lease(self: &Arc<Self>, cluster: &Arc<Cluster>, p: Pooled) -> Lease {
        p.stats.in_flight.fetch_add(1, Ordering::AcqRel);
        *lock(&p.stats.last_active) = Instant::now();
        Lease {
            sender: Some(p.sender),
            stats: p.stats,
            pool: self.clone(),
            capacity: cluster.capacity.clone(),
            max_requests_per_connection: cluster.limits.max_requests_per_connection,
            completed: false,
        }
    }

    /// Takes connection `id` out of the pool: it serves no new request.
    fn retire(&self, id: u64) {
        let mut st = lock(&self.state);
        if let Some(i) = st.conns.iter().position(|c| c.stats.id == id) {
            let p = st.conns.swap_remove(i);
            p.stats.retired.store(true, Ordering::Release);
        }
    }
}

/// Opens a connection and starts its driver task.
async fn connect_new(
    ep: &Arc<EndpointPool>,
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    slot: Slot,
) -> Result<Pooled, OutboundError> {
    let svc = cluster.svc();
    let limits = cluster.limits();
    let tls = ep.client_tls(shared, svc, limits.h2_upgrade).await?;
    let mesh = matches!(ep.upstream.tls, UpstreamTls::Mesh(_)).then(|| cluster.metrics());
    let opened = connect::open(
        &ep.upstream.addr,
        tls.as_ref().map(|(c, sni)| (c.clone(), sni.as_str())),
        limits.connect_timeout,
        limits.tcp_keepalive,
        slot,
        svc,
        mesh,
    )
    .await?;
    let peer = opened.peer;
    let handshake_error = |e: hyper::Error| OutboundError::Handshake {
        host: cluster.host.clone(),
        port: cluster.port,
        peer,
        reason: e.to_string(),
    };
    let stats = Arc::new(ConnStats {
        id: ep.next_id.fetch_add(1, Ordering::Relaxed),
        peer,
        peer_id: opened.peer_id.clone(),
        served: AtomicU32::new(0),
        in_flight: AtomicUsize::new(0),
        last_active: Mutex::new(Instant::now()),
        retired: AtomicBool::new(false),
    });
    let io = TokioIo::new(opened.conn);
    let sender = if opened.h2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        if let Some((interval, timeout)) = limits.h2_keepalive {
            b.keep_alive_interval(interval);
            if let Some(t) = timeout {
                b.keep_alive_timeout(t);
            }
        }
        let (s, conn) = b.handshake(io).await.map_err(handshake_error)?;
        tokio::spawn(drive(
            conn,
            Arc::downgrade(ep),
            stats.clone(),
            limits.clone(),
        ));
        Sender::H2(s)
    } else {
        let (s, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(handshake_error)?;
        tokio::spawn(drive(
            conn,
            Arc::downgrade(ep),
            stats.clone(),
            limits.clone(),
        ));
        Sender::H1(s)
    };
    tracing::debug!(peer = %peer, h2 = opened.h2, "outbound connection opened");
    Ok(Pooled { sender, stats })
}

/// Runs a connection until it closes; retires it from the pool after `http.idleTimeout`
/// without requests or `tcp.maxConnectionDuration`, then lets it finish what it carries.
async fn drive<F>(conn: F, pool: Weak<EndpointPool>, stats: Arc<ConnStats>, limits: Limits)
where
    F: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let idle = idle(&stats, limits.http_idle_timeout);
    let max_age = async {
        match limits.max_connection_duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = &mut conn => r,
        () = idle => {
            if let Some(p) = pool.upgrade() { p.retire(stats.id) }
            conn.await
        }
        () = max_age => {
            if let Some(p) = pool.upgrade() { p.retire(stats.id) }
            conn.await
        }
    };
    if let Some(p) = pool.upgrade() {
        p.retire(stats.id);
    }
    match result {
        Ok(()) => tracing::debug!(peer = %stats.peer, "outbound connection closed"),
        Err(e) => tracing::debug!(peer = %stats.peer, error = %e, "outbound connection failed"),
    }
}

/// Resolves once the connection carried no request for `timeout`. `http.idleTimeout`:
/// "The idle timeout is defined as the period in which there are no active requests."
async fn idle(stats: &ConnStats, timeout: Option<std::time::Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let now = Instant::now();
        let due = *lock(&stats.last_active) + timeout;
        if stats.in_flight.load(Ordering::Acquire) == 0 && now >= due {
            return;
        }
        let wake = if due > now { due } else { now + timeout };
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// One request's use of a connection. Dropping it ends the use: an HTTP/1.1 connection
/// whose response was read to the end goes back to the pool.
#[derive(Debug)]
pub struct Lease {
    sender: Option<Sender>,
    stats: Arc<ConnStats>,
    pool: Arc<EndpointPool>,
    capacity: Arc<Notify>,
    max_requests_per_connection: Option<u32>,
    completed: bool,
}

impl Lease {
    /// The endpoint address.
    pub fn peer(&self) -> SocketAddr {
        self.stats.peer
    }

    /// The peer's SPIFFE ID, verified by the mesh mTLS handshake (`None` otherwise).
    pub fn peer_id(&self) -> Option<&SpiffeId> {
        self.stats.peer_id.as_ref()
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Some(Sender::H2(_)))
    }

    /// Waits until an HTTP/1.1 connection can take the request; false if it closed.
    async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => !s.is_closed(),
            None => false,
        }
    }

    /// Sends `req`. On failure the request comes back if it never left.
    pub async fn send(
        &mut self,
        req: Request<OutBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<OutBody>>> {
        match &mut self.sender {
            Some(Sender::H1(s)) => s.try_send_request(req).await,
            Some(Sender::H2(s)) => s.try_send_request(req).await,
            // A lease always holds a sender until dropped.
            None => std::future::pending().await,
        }
    }

    /// The response was read to its end: an HTTP/1.1 connection may be reused.
    pub fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        *lock(&self.stats.last_active) = Instant::now();
        if let Some(Sender::H1(s)) = self.sender.take() {
            let reusable = self.completed
                && !s.is_closed()
                && !self.stats.retired.load(Ordering::Acquire)
                && self
                    .max_requests_per_connection
                    .is_none_or(|m| self.stats.served.load(Ordering::Acquire) < m);
            if reusable {
                lock(&self.pool.state).conns.push(Pooled {
                    sender: Sender::H1(s),
                    stats: self.stats.clone(),
                });
            }
        }
        self.capacity.notify_waiters();
    }
}
