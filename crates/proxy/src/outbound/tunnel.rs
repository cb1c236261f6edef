//! `CONNECT host:port`: a TCP tunnel through the mesh. Each tunnel opens its own upstream
//! connection (mTLS to the peer proxy, or per the DestinationRule), counted against
//! `tcp.maxConnections`; the app gets `200` only once that connection is up, so a failure is
//! a status code with its reason, never a silent close. Bytes are then copied both ways
//! until either side closes or `tcp.idleTimeout` passes without traffic.
//!
//! What is not here: HTTP forwarding (`forward`), pooling (`pool`): tunnels are never pooled.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::{self, Active, Activity, Conn, Slot};
use super::error::OutboundError;
use super::pool::Cluster;
use super::route::{Target, Upstream, UpstreamTls};
use super::tls::{self, ALPN_NONE, ServiceRef};
use super::{Outbound, ProxyBody, text};
use crate::state::MeshView;

/// Tries per tunnel when connects fail and other endpoints exist (as for HTTP).
const MAX_TRIES: usize = 3;

/// Opens the tunnel for a CONNECT request and answers it.
pub async fn connect(
    ob: &Outbound,
    mut req: Request<Incoming>,
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
    let view = ob.shared.view().ok_or(OutboundError::NoConfig)?;
    let route = ob.route(&view, &target)?;
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
            Err(e) => return Err(e),
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = cluster.limits().tcp_idle_timeout;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pipe(TokioIo::new(upgraded), upstream, idle).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(text(StatusCode::OK, ""))
}

async fn open(
    ob: &Outbound,
    view: &MeshView,
    cluster: &Cluster,
    up: &Upstream,
    slot: Slot,
) -> Result<Conn, OutboundError> {
    let svc: ServiceRef<'_> = cluster.svc();
    let limits = cluster.limits();
    let tls = match &up.tls {
        UpstreamTls::Plain => None,
        UpstreamTls::Mesh(m) => {
            if ob.shared.identity().is_none() {
                return Err(OutboundError::NoIdentity {
                    host: svc.host.to_owned(),
                    port: svc.port,
                });
            }
            let cfg = tls::mesh_config(&ob.shared, view.bundles.clone(), m, ALPN_NONE, svc)?;
            Some((cfg, m.sni.as_str()))
        }
        UpstreamTls::Files(f) => Some((
            tls::file_config(f, ALPN_NONE, svc).await?,
            f.server_name.as_str(),
        )),
    };
    let opened = connect::open(
        &up.addr,
        tls,
        limits.connect_timeout,
        limits.tcp_keepalive,
        slot,
        svc,
    )
    .await?;
    Ok(opened.conn)
}

/// Copies both ways until both sides finished, or nothing moved for `idle`.
async fn pipe<A, B>(a: A, b: B, idle: Option<Duration>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = Active::new(a, activity.clone());
    let mut b = Active::new(b, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
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
