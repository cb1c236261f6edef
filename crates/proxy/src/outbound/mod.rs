//! Outbound (port 15001): the app's way into the mesh, as an HTTP proxy.
//!
//! Apps send absolute-form requests (`GET http://orders.production.svc.cluster.local:8080/x`,
//! what `HTTP_PROXY` makes clients send) or `CONNECT host:port` for TCP. The proxy resolves
//! the host to a ServiceEntry and its endpoints ([`route`]), applies the DestinationRule the
//! client workload sees (TLS mode with auto mTLS and secure naming, `connectionPool`
//! limits), and carries the request over pooled connections ([`pool`]): HTTP/2 over mTLS
//! between proxies, so the handshake is paid once per peer and not per request.
//!
//! Failures answer with a status and a one-line reason ([`OutboundError`]): 400 for what an
//! HTTP proxy cannot forward, 502 for an unknown host, 503 for everything upstream (no
//! endpoint, connect or TLS failure, circuit breaker overflow).
//!
//! Every request is counted in Istio's standard metrics with `reporter="source"` (HTTP in
//! [`forward`], CONNECT tunnels as TCP in [`tunnel`]), with the labels of the route and of
//! the peer whose SVID the connection verified.
//!
//! What is not here: inbound, identity, config (other modules of this crate); the label
//! values (`metrics`).

mod connect;
pub mod error;
mod forward;
mod pool;
pub mod route;
mod tls;
mod tunnel;
pub(crate) use tunnel::COPY_BUF;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use error::OutboundError;
use pool::Pools;
use route::{Route, Target};

use crate::metrics::{CountedBody, Metrics, RouteLabels};
use crate::state::{MeshView, Shared};

/// The body of every response the outbound listener sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The body of every request sent upstream: the app's, its bytes counted as they stream.
pub(crate) type OutBody = CountedBody<Incoming>;

/// Most routes remembered per config version; beyond it the cache starts over (it also
/// holds unknown hosts, which apps choose).
const ROUTE_CACHE_MAX: usize = 1024;

/// Serves the outbound HTTP proxy on `listener` until `shutdown` becomes true (or its sender
/// is dropped), counting into `metrics`. Then it accepts no new connection and returns;
/// open connections finish their current request and close.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let outbound = Arc::new(Outbound::new(shared, metrics));
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(outbound.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::debug!("outbound listener stopped");
}

/// Resolves when `rx` holds `true` or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_connection(
    ob: Arc<Outbound>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let ob = ob.clone();
        async move { Ok::<_, Infallible>(ob.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "outbound client connection ended with an error");
    }
}

/// The state of one outbound listener.
#[derive(Debug)]
pub(crate) struct Outbound {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    pools: Pools,
    routes: Mutex<RouteCache>,
}

/// A route (or why there is none) and the metric labels of traffic to it.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    route: Result<Arc<Route>, OutboundError>,
    labels: Arc<RouteLabels>,
}

#[derive(Debug, Default)]
struct RouteCache {
    view: Option<Arc<MeshView>>,
    routes: HashMap<Target, Routed>,
}

impl Outbound {
    fn new(shared: Arc<Shared>, metrics: Arc<Metrics>) -> Self {
        Self {
            shared,
            pools: Pools::new(metrics.clone()),
            metrics,
            routes: Mutex::new(RouteCache::default()),
        }
    }

    /// The route of `target` in `view`, computed once per config version.
    fn route(&self, view: &Arc<MeshView>, target: &Target) -> Routed {
        let mut c = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, view)) {
            c.view = Some(view.clone());
            c.routes.clear();
        }
        if let Some(r) = c.routes.get(target) {
            return r.clone();
        }
        let route = route::resolve(&view.snapshot, &view.workload, target).map(Arc::new);
        // `destination_service`: the service host the request resolved to, else the host the
        // app asked for.
        let labels = self.metrics.labels(view);
        let service = match &route {
            Ok(r) => {
                let ns = r.service_entry.split_once('/').map(|(ns, _)| ns);
                labels.service(&view.snapshot, &r.host, ns)
            }
            Err(e) => labels.service(&view.snapshot, e.host().unwrap_or(&target.host), None),
        };
        let routed = Routed {
            route,
            labels: labels.route(service),
        };
        if c.routes.len() >= ROUTE_CACHE_MAX {
            c.routes.clear();
        }
        c.routes.insert(target.clone(), routed.clone());
        routed
    }

    /// The labels of a request that failed before it had a route: to `host` if known.
    fn unrouted(&self, host: Option<&str>) -> Arc<RouteLabels> {
        let labels = match self.shared.view() {
            Some(v) => self.metrics.labels(&v),
            None => self.metrics.no_view(),
        };
        match host {
            Some(h) => labels.route(labels.service_of(h, None)),
            None => labels.no_route(),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            tunnel::connect(self, req).await
        } else {
            forward::forward(self, req).await
        }
    }
}

/// Logs a failed request or tunnel: a TLS refusal (secure naming, a bad peer certificate)
/// at warn, everything else at debug.
fn log_failure(method: &Method, uri: &http::Uri, e: &OutboundError, flags: &str) {
    match e {
        OutboundError::Tls { .. } => {
            tracing::warn!(%method, %uri, flag = flags, error = %e, "outbound request refused");
        }
        _ => {
            tracing::debug!(%method, %uri, flag = flags, error = %e, "outbound request failed");
        }
    }
}

/// Envoy's `response_flags` for `e`, with `URX` when the retry (or connect attempt) limit
/// was reached on a failure that would otherwise have been retried.
fn failure_flags(e: &OutboundError, retry_limit: bool) -> &'static str {
    match (e.response_flag(), retry_limit) {
        ("UF", true) => "UF,URX",
        ("UC", true) => "UC,URX",
        (f, _) => f,
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    resp
}

/// The response for `e`: its status and its one-line reason.
fn error_response(e: &OutboundError) -> Response<ProxyBody> {
    let mut resp = text(e.status(), &format!("{e}\n"));
    if matches!(e, OutboundError::Overflow { .. }) {
        // What Envoy adds to a circuit-breaker 503, which clients and dashboards look for.
        resp.headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    resp
}
