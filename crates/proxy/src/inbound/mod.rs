//! Inbound: the workload's service ports. Each connection is sniffed (TLS or plaintext),
//! checked against the port's PeerAuthentication mode, terminated (mutual TLS 1.3 with the
//! current SVID), authorized, and forwarded to the app.
//!
//! docs/mesh-runtime.md, "Inbound": "First bytes decide TLS (`0x16`) vs plaintext. Modes per
//! `InboundPolicy.mtls.for_port(port)`: STRICT closes plaintext, PERMISSIVE passes it, DISABLE
//! takes only plaintext. TLS: `MeshView.server_tls`. ... TCP: authorization per connection
//! (close on deny), then bytes copied both ways. A handshake not finished within 10 s is
//! dropped."
//!
//! Every connection reads the view current when it arrives; HTTP requests read the view
//! current when each request arrives, so a policy change applies to open connections at
//! their next request. A connection that has nothing to say within the handshake timeout is
//! dropped, unless its port takes plaintext TCP: there a client silent for
//! [`SERVER_FIRST_WAIT`] is taken for the client of a server-first protocol and connected to
//! the app.
//!
//! What is not here: per-request HTTP handling ([`http`]), port protocols ([`protocol`]),
//! policy semantics (`trustmesh-core`).

pub mod http;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::Request;
use trustmesh_core::model::security::MtlsMode;
use trustmesh_pki::peer_spiffe_id;

use crate::metrics::{Base, CountedIo, Direction, HandshakeFailure, Metrics};
use crate::state::{MeshView, Shared};
use protocol::{Protocol, port_protocol};

/// "A handshake not finished within 10 s is dropped": from accept to the end of the TLS
/// handshake (first bytes included).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client on a port that takes plaintext TCP may stay silent before it is taken
/// for the client of a server-first protocol and connected to the app. TLS clients send
/// their ClientHello at once, so this only delays server-first protocols, by this much.
pub const SERVER_FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long connecting to the app may take.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// WorkloadEntry annotation naming the app's address.
pub const APP_ADDRESS_ANNOTATION: &str = "trustmesh.io/app-address";

/// Why an inbound connection was closed without being served. Logged at debug level: each
/// is the expected answer to a client, not a fault of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// No config yet: the port's mode is unknown.
    #[error("{peer} → port {port}: no config yet")]
    NoConfig {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
    },
    /// Plaintext to a STRICT port.
    #[error("{peer} → port {port}: plaintext refused (STRICT)")]
    PlaintextRefused {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
    },
    /// TLS to a DISABLE port.
    #[error("{peer} → port {port}: TLS refused (DISABLE)")]
    TlsRefused {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
    },
    /// The client sent nothing, or did not finish the handshake, in time.
    #[error("{peer} → port {port}: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
    },
    /// The TLS handshake failed (TLS 1.2, no or bad client certificate, garbage).
    #[error("{peer} → port {port}: TLS handshake failed: {source}")]
    Handshake {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
        /// rustls' reason, via tokio-rustls.
        #[source]
        source: std::io::Error,
    },
    /// The verified certificate holds no SPIFFE ID (cannot happen with the SPIFFE verifier).
    #[error("{peer} → port {port}: peer certificate has no SPIFFE ID")]
    NoPeerId {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
    },
    /// Authorization denied the TCP connection.
    #[error("{peer} ({principal}) → port {port}: denied: {reason}")]
    Denied {
        /// The client's address.
        peer: SocketAddr,
        /// The client's identity, or `plaintext`.
        principal: String,
        /// The port.
        port: u16,
        /// The decision's reason and policy.
        reason: String,
    },
    /// The app could not be reached.
    #[error("{peer} → port {port}: app at {app}: {source}")]
    App {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
        /// The app's address.
        app: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the first bytes failed.
    #[error("{peer} → port {port}: {source}")]
    Io {
        /// The client's address.
        peer: SocketAddr,
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One accepted connection, after TLS (if any).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified client identity; `None` for plaintext.
    pub peer_id: Option<SpiffeId>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client reached.
    pub local: SocketAddr,
    /// The workload port (the number in the WorkloadEntry).
    pub port: u16,
    /// TLS SNI, if sent.
    pub sni: Option<String>,
}

impl ConnInfo {
    /// The authorization input for this connection (HTTP part left empty).
    pub fn request(&self) -> Request {
        Request {
            peer: self.peer_id.clone(),
            source_ip: self.peer.ip(),
            dest_ip: self.local.ip(),
            dest_port: self.port,
            sni: self.sni.clone(),
            http: None,
        }
    }
}

/// What every inbound connection of one proxy shares.
#[derive(Debug)]
pub struct Inbound {
    /// Identity and config.
    pub shared: Arc<Shared>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `--app-address`: overrides the annotation and the derived address.
    pub app_override: Option<IpAddr>,
    /// The pooled HTTP/1.1 client to the app.
    pub(crate) client: http::AppClient,
}

impl Inbound {
    /// Inbound handling for `shared`.
    pub fn new(shared: Arc<Shared>, metrics: Arc<Metrics>, app_override: Option<IpAddr>) -> Self {
        Self {
            shared,
            metrics,
            app_override,
            client: http::app_client(),
        }
    }

    /// Where the app behind `view`'s workload listens.
    pub fn app_ip(&self, view: &MeshView) -> IpAddr {
        self.app_override.unwrap_or_else(|| app_address(view))
    }

    /// Serves `listener` as workload port `port` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        port: u16,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut stop = shutdown.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(port, error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let this = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    r = this.connection(stream, peer, port) => {
                        if let Err(e) = r {
                            debug!(error = %e, "inbound connection closed");
                        }
                    }
                    _ = stop.changed() => {}
                }
            });
        }
    }

    /// One connection, from the first byte to the end.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        port: u16,
    ) -> Result<(), InboundError> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let _ = stream.set_nodelay(true);
        let local =
            stream
                .local_addr()
                .map_err(|source| InboundError::Io { peer, port, source })?;
        let Some(view) = self.shared.view() else {
            return Err(InboundError::NoConfig { peer, port });
        };
        let labels = self.metrics.labels(&view);
        let mode = view.inbound.mtls.for_port(port).mode;
        let protocol = port_protocol(&view.snapshot, &view.workload, port);
        // A port that takes plaintext TCP may carry a server-first protocol (MySQL, SMTP):
        // its client waits for the server to speak, so silence means plaintext.
        let server_first = mode != MtlsMode::Strict && protocol == Protocol::Tcp;
        let sniff_until = if server_first {
            deadline.min(Instant::now() + SERVER_FIRST_WAIT)
        } else {
            deadline
        };
        let failed = |reason| self.metrics.handshake_failed(Direction::Inbound, reason);
        let mut first = [0u8; 1];
        let sniffed = tokio::time::timeout_at(sniff_until, stream.peek(&mut first)).await;
        let tls = match sniffed {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => first[0] == TLS_HANDSHAKE_RECORD,
            Ok(Err(source)) => return Err(InboundError::Io { peer, port, source }),
            Err(_) if server_first => false,
            Err(_) => {
                failed(HandshakeFailure::Timeout);
                return Err(InboundError::HandshakeTimeout { peer, port });
            }
        };
        let mut conn = ConnInfo {
            peer_id: None,
            peer,
            local,
            port,
            sni: None,
        };
        if !tls {
            // "`STRICT` | mTLS with client cert required; plaintext rejected".
            if mode == MtlsMode::Strict {
                failed(HandshakeFailure::PlaintextRejected);
                return Err(InboundError::PlaintextRefused { peer, port });
            }
            let base = labels.inbound(None, port);
            return self.serve_stream(stream, conn, protocol, base).await;
        }
        // "DISABLE takes only plaintext": the port has no TLS filter chain.
        if mode == MtlsMode::Disable {
            failed(HandshakeFailure::Protocol);
            return Err(InboundError::TlsRefused { peer, port });
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(view.server_tls.clone());
        drop(view);
        let accept = acceptor.accept(stream).into_fallible();
        let tls = match tokio::time::timeout_at(deadline, accept).await {
            Err(_) => {
                failed(HandshakeFailure::Timeout);
                return Err(InboundError::HandshakeTimeout { peer, port });
            }
            Ok(Err((source, io))) => {
                failed(HandshakeFailure::from_io(&source));
                linger_close(io).await;
                return Err(InboundError::Handshake { peer, port, source });
            }
            Ok(Ok(s)) => s,
        };
        let (_, session) = tls.get_ref();
        let Some(id) = peer_spiffe_id(session) else {
            failed(HandshakeFailure::BadCertificate);
            return Err(InboundError::NoPeerId { peer, port });
        };
        self.metrics.handshake_succeeded(Direction::Inbound);
        conn.sni = session.server_name().map(str::to_owned);
        let base = labels.inbound(Some(&id), port);
        conn.peer_id = Some(id);
        self.serve_stream(tls, conn, protocol, base).await
    }

    async fn serve_stream<S>(
        self: Arc<Self>,
        io: S,
        conn: ConnInfo,
        protocol: Protocol,
        base: Arc<Base>,
    ) -> Result<(), InboundError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http => {
                http::serve(self, io, conn, base).await;
                Ok(())
            }
            Protocol::Tcp => self.tcp(io, conn, base).await,
        }
    }

    /// "TCP: authorization per connection (close on deny), then bytes copied both ways."
    /// A denied connection is counted opened and closed with `response_flags="DENY"`, one
    /// whose app cannot be reached with `UF`.
    async fn tcp<S>(&self, io: S, conn: ConnInfo, base: Arc<Base>) -> Result<(), InboundError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(view) = self.shared.view() else {
            return Err(InboundError::NoConfig {
                peer: conn.peer,
                port: conn.port,
            });
        };
        let decision = view.inbound.decide(&conn.request());
        self.metrics
            .labels(&view)
            .count_decision(&decision, &view.inbound.authz);
        let refused = |flags| {
            let series = base.tcp(flags);
            series.opened.inc();
            series.closed.inc();
        };
        if !decision.allowed {
            refused("DENY");
            return Err(InboundError::Denied {
                peer: conn.peer,
                principal: principal(&conn),
                port: conn.port,
                reason: match &decision.policy {
                    Some(p) => format!("{} ({p})", decision.reason),
                    None => decision.reason.to_string(),
                },
            });
        }
        let app = SocketAddr::new(self.app_ip(&view), conn.port);
        drop(view);
        let connected = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let mut upstream = match connected {
            Ok(s) => s,
            Err(source) => {
                refused("UF");
                return Err(InboundError::App {
                    peer: conn.peer,
                    port: conn.port,
                    app,
                    source,
                });
            }
        };
        let _ = upstream.set_nodelay(true);
        let series = base.tcp("-");
        series.opened.inc();
        // Counted on the client side as the bytes move: sent = what the app answered,
        // received = what the client sent (Envoy's `tcp_proxy` view).
        let mut counted = CountedIo::new(io, series.sent.clone(), series.received.clone());
        let copy_buf = crate::outbound::COPY_BUF;
        if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
            &mut counted,
            &mut upstream,
            copy_buf,
            copy_buf,
        )
        .await
        {
            debug!(peer = %conn.peer, port = conn.port, error = %e, "inbound TCP copy ended");
        }
        series.closed.inc();
        Ok(())
    }
}

/// Closes a connection whose handshake failed so that the client reads the TLS alert
/// (`certificate required`, `protocol version`, ...) instead of a reset: send FIN, then
/// discard what the client already sent (unread data makes the kernel answer with RST) for
/// at most [`LINGER`].
async fn linger_close(mut io: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = io.read(&mut buf).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long a refused handshake's connection may linger for its alert to be read.
const LINGER: Duration = Duration::from_secs(1);

fn principal(conn: &ConnInfo) -> String {
    conn.peer_id
        .as_ref()
        .map_or_else(|| "plaintext".to_owned(), |id| id.as_str().to_owned())
}

/// The app address of the view's workload. docs/mesh-runtime.md: "WorkloadEntry annotation
/// `trustmesh.io/app-address` (an IP), default the workload address with the third octet + 1
/// (`127.0.1.2` → `127.0.2.2`)". An IPv6 workload without the annotation uses its own address.
pub fn app_address(view: &MeshView) -> IpAddr {
    let w = &view.workload;
    let annotated = view
        .snapshot
        .workload_entries()
        .iter()
        .find(|e| e.metadata.name == w.name && e.metadata.namespace_str() == w.namespace)
        .and_then(|e| e.metadata.annotations.get(APP_ADDRESS_ANNOTATION))
        .and_then(|a| a.trim().parse::<IpAddr>().ok());
    annotated.unwrap_or(match w.address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddr::from([a, b, c.wrapping_add(1), d])
        }
        v6 => v6,
    })
}

/// Opens and closes the inbound listeners as the config's ports change, on `listen_ip`.
/// Publishes the bound addresses (port → address) on `bound`.
pub async fn run_listeners(
    inbound: Arc<Inbound>,
    listen_ip: IpAddr,
    bound: watch::Sender<BTreeMap<u16, SocketAddr>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = inbound.shared.subscribe();
    let mut active: BTreeMap<u16, (SocketAddr, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let want: BTreeSet<u16> = inbound
            .shared
            .view()
            .map(|v| v.workload.ports.values().copied().collect())
            .unwrap_or_default();
        active.retain(|port, (addr, task)| {
            let keep = want.contains(port);
            if !keep {
                info!(%addr, "inbound port removed from the config; listener closed");
                task.abort();
            }
            keep
        });
        let mut missing = false;
        let new: Vec<u16> = want
            .iter()
            .copied()
            .filter(|p| !active.contains_key(p))
            .collect();
        for port in new {
            match TcpListener::bind(SocketAddr::new(listen_ip, port)).await {
                Ok(l) => {
                    let addr = l.local_addr().unwrap_or(SocketAddr::new(listen_ip, port));
                    info!(%addr, "inbound listener open");
                    let task = tokio::spawn(inbound.clone().serve(l, port, shutdown.clone()));
                    active.insert(port, (addr, task));
                }
                Err(e) => {
                    error!(ip = %listen_ip, port, error = %e, "cannot open inbound port; retrying");
                    missing = true;
                }
            }
        }
        bound.send_replace(active.iter().map(|(p, (a, _))| (*p, *a)).collect());
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            () = tokio::time::sleep(Duration::from_secs(2)), if missing => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, task)) in active {
        task.abort();
    }
}
