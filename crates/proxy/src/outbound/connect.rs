//! Opening one upstream connection: name resolution, the TCP connect bounded by
//! `tcp.connectTimeout`, and the TLS handshake (bounded by the same timeout), giving a byte
//! stream that holds its `tcp.maxConnections` slot until it is dropped.
//!
//! What is not here: deciding whether a connection may be opened (`pool`), HTTP on top.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_rustls::client::TlsStream;
use trustmesh_core::SpiffeId;
use trustmesh_pki::peer_spiffe_id;

use super::error::OutboundError;
use super::route::EndpointAddr;
use super::tls::{self, ServiceRef};
use crate::metrics::Metrics;

/// A `tcp.maxConnections` slot, held by an open connection. Dropping it frees the slot and
/// wakes the requests waiting for one.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Slot {
    /// A slot from a semaphore permit; `freed` is told when it is released.
    pub fn new(permit: OwnedSemaphorePermit, freed: Arc<Notify>) -> Self {
        Self {
            permit: Some(permit),
            freed,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// An upstream byte stream, plaintext or TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// `DISABLE`.
    Plain(TcpStream),
    /// Mesh mTLS or file-based TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open upstream connection and the slot it occupies.
#[derive(Debug)]
pub struct Conn {
    io: UpstreamIo,
    _slot: Slot,
}

/// What [`open`] established.
#[derive(Debug)]
pub struct Opened {
    /// The stream.
    pub conn: Conn,
    /// The endpoint's address.
    pub peer: SocketAddr,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The peer's SPIFFE ID, verified by a mesh mTLS handshake.
    pub peer_id: Option<SpiffeId>,
}

/// Resolves `addr` (a DNS name takes its first address).
async fn resolve(addr: &EndpointAddr, svc: ServiceRef<'_>) -> Result<SocketAddr, OutboundError> {
    match addr {
        EndpointAddr::Ip(a) => Ok(*a),
        EndpointAddr::Name { host, port } => {
            let dns_error = |reason: String| OutboundError::Dns {
                host: svc.host.to_owned(),
                port: svc.port,
                peer: format!("{host}:{port}"),
                reason,
            };
            tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| dns_error(e.to_string()))?
                .next()
                .ok_or_else(|| dns_error("no address".into()))
        }
    }
}

/// TCP connect to `addr` within `timeout`.
pub async fn tcp(
    addr: &EndpointAddr,
    timeout: Duration,
    keepalive: bool,
    svc: ServiceRef<'_>,
) -> Result<TcpStream, OutboundError> {
    let peer = resolve(addr, svc).await?;
    let failed = |e: io::Error| OutboundError::Connect {
        host: svc.host.to_owned(),
        port: svc.port,
        peer: peer.to_string(),
        reason: e.to_string(),
    };
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    if keepalive {
        socket.set_keepalive(true).map_err(failed)?;
    }
    // `tcp.connectTimeout`: "TCP connection timeout" (default 10s).
    let stream = match tokio::time::timeout(timeout, socket.connect(peer)).await {
        Ok(r) => r.map_err(failed)?,
        Err(_) => {
            return Err(OutboundError::ConnectTimeout {
                host: svc.host.to_owned(),
                port: svc.port,
                peer: peer.to_string(),
                timeout,
            });
        }
    };
    stream.set_nodelay(true).map_err(failed)?;
    Ok(stream)
}

/// Opens a connection to `addr` holding `slot`: TCP, then TLS with `tls` (config and SNI)
/// when given. `mesh`: the TLS is mesh mTLS, its handshake counted there and the peer's
/// SPIFFE ID kept.
pub async fn open(
    addr: &EndpointAddr,
    tls: Option<(Arc<ClientConfig>, &str)>,
    timeout: Duration,
    keepalive: bool,
    slot: Slot,
    svc: ServiceRef<'_>,
    mesh: Option<&Metrics>,
) -> Result<Opened, OutboundError> {
    let stream = tcp(addr, timeout, keepalive, svc).await?;
    let peer = stream.peer_addr().map_err(|e| OutboundError::Connect {
        host: svc.host.to_owned(),
        port: svc.port,
        peer: addr.to_string(),
        reason: e.to_string(),
    })?;
    let (io, h2, peer_id) = match tls {
        None => (UpstreamIo::Plain(stream), false, None),
        Some((config, sni)) => {
            let s = tls::handshake(config, sni, stream, timeout, svc, mesh).await?;
            let session = s.get_ref().1;
            let h2 = session.alpn_protocol() == Some(b"h2");
            let peer_id = mesh.and_then(|_| peer_spiffe_id(session));
            (UpstreamIo::Tls(Box::new(s)), h2, peer_id)
        }
    };
    Ok(Opened {
        conn: Conn { io, _slot: slot },
        peer,
        h2,
        peer_id,
    })
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The last time bytes moved through any [`Active`] stream sharing it.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved.
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no bytes moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let due = self.last() + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A stream that records its reads and writes in an [`Activity`] (for `tcp.idleTimeout`).
#[derive(Debug)]
pub struct Active<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Active<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
