//! `CONNECT host:port`: a TCP tunnel through the mesh. Each tunnel opens its own upstream
//! connection (mTLS to the peer proxy, or per the DestinationRule), counted against
//! `tcp.maxConnections`; the app gets `200` only once that connection is up, so a failure is
//! a status code with its reason, never a silent close. Bytes are then copied both ways
//! until either side closes or `tcp.idleTimeout` passes without traffic.
//!
//! What is not here: HTTP forwarding (`forward`), pooling (`pool`): tunnels are never pooled.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::{self, Active, Activity, Opened, Slot};
use super::error::OutboundError;
use super::pool::Cluster;
use super::route::{Target, Upstream, UpstreamTls};
use super::tls::{self, ALPN_NONE, ServiceRef};
use super::{Outbound, ProxyBody, error_response, failure_flags, log_failure, text};
use crate::metrics::{CountedIo, RouteLabels};
use crate::state::MeshView;

/// Tries per tunnel when connects fail and other endpoints exist (as for HTTP).
const MAX_TRIES: usize = 3;

/// Opens the tunnel for a CONNECT request and answers it. Counted as a TCP connection with
/// `reporter="source"`: opened when the tunnel is up, closed when it ends; one that cannot
/// be opened is counted opened and closed with the failure's response flag.
pub async fn connect(ob: &Outbound, req: Request<Incoming>) -> Response<ProxyBody> {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut labels = None;
    let mut retry_limit = false;
    match open_tunnel(ob, req, &mut labels, &mut retry_limit).await {
        Ok(resp) => resp,
        Err(e) => {
            let flags = failure_flags(&e, retry_limit);
            log_failure(&method, &uri, &e, flags);
            let labels = labels.unwrap_or_else(|| ob.unrouted(e.host()));
            let series = labels.base(None).tcp(flags);
            series.opened.inc();
            series.closed.inc();
            error_response(&e)
        }
    }
}

async fn open_tunnel(
    ob: &Outbound,
    mut req: Request<Incoming>,
    labels: &mut Option<Arc<RouteLabels>>,
    retry_limit: &mut bool,
) -> Result<Response<ProxyBody>, OutboundError> {
    let bad = |reason: &str| OutboundError::BadRequest {
        reason: reason.to_owned(),
    };
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or_else(|| bad("CONNECT needs a host:port target"))?;
    let port = authority
        .port_u16()
        .ok_or_else(|| bad("CONNECT target needs a port (host:port)"))?;
    let target = Target::new(authority.host(), port);
    let Some(view) = ob.shared.view() else {
        *labels = Some(ob.unrouted(Some(&target.host)));
        return Err(OutboundError::NoConfig);
    };
    let routed = ob.route(&view, &target);
    *labels = Some(routed.labels.clone());
    let route = routed.route?;
    let cluster = ob.pools.cluster(&route);
    let n = route.upstreams.len();
    let mut tries = 0;
    let upstream = loop {
        tries += 1;
        let up = &route.upstreams[cluster.next_index(n)];
        // Envoy's TCP proxy closes a connection that overflows `maxConnections` at once.
        let slot = cluster
            .try_slot()
            .ok_or_else(|| cluster.connections_overflow())?;
        match open(ob, &view, &cluster, up, slot).await {
            Ok(c) => break c,
            Err(e) if e.is_connect_failure() && n > 1 && tries < MAX_TRIES => {
                tracing::debug!(error = %e, "tunnel connect failed, trying the next endpoint");
            }
            Err(e) => {
                *retry_limit = e.is_connect_failure() && n > 1;
                return Err(e);
            }
        }
    };
    let series = routed.labels.base(upstream.peer_id.as_ref()).tcp("-");
    series.opened.inc();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = cluster.limits().tcp_idle_timeout;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // The app is the downstream: sent = bytes to it, received = bytes from it.
                let app = CountedIo::new(
                    TokioIo::new(upgraded),
                    series.sent.clone(),
                    series.received.clone(),
                );
                pipe(app, upstream.conn, idle).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        series.closed.inc();
    });
    Ok(text(StatusCode::OK, ""))
}

async fn open(
    ob: &Outbound,
    view: &MeshView,
    cluster: &Cluster,
    up: &Upstream,
    slot: Slot,
) -> Result<Opened, OutboundError> {
    let svc: ServiceRef<'_> = cluster.svc();
    let limits = cluster.limits();
    let (tls, mesh) = match &up.tls {
        UpstreamTls::Plain => (None, None),
        UpstreamTls::Mesh(m) => {
            if ob.shared.identity().is_none() {
                return Err(OutboundError::NoIdentity {
                    host: svc.host.to_owned(),
                    port: svc.port,
                });
            }
            let cfg = tls::mesh_config(&ob.shared, view.bundles.clone(), m, ALPN_NONE, svc)?;
            (Some((cfg, m.sni.as_str())), Some(cluster.metrics()))
        }
        UpstreamTls::Files(f) => (
            Some((
                tls::file_config(f, ALPN_NONE, svc).await?,
                f.server_name.as_str(),
            )),
            None,
        ),
    };
    connect::open(
        &up.addr,
        tls,
        limits.connect_timeout,
        limits.tcp_keepalive,
        slot,
        svc,
        mesh,
    )
    .await
}

/// Bytes read per copy step each way: one full TLS record (16 KiB of plaintext), so bulk
/// transfers are sealed in full records rather than tokio's default 8 KiB halves.
pub(crate) const COPY_BUF: usize = 16 * 1024;

/// Copies both ways until both sides finished, or nothing moved for `idle`.
async fn pipe<A, B>(a: A, b: B, idle: Option<Duration>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = Active::new(a, activity.clone());
    let mut b = Active::new(b, activity.clone());
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF);
    let idle = async {
        match idle {
            Some(t) => activity.idle_for(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = copy => match r {
            Ok((up, down)) => tracing::debug!(sent = up, received = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel failed"),
        },
        () = idle => tracing::debug!("tunnel closed: tcp.idleTimeout without traffic"),
    }
}
