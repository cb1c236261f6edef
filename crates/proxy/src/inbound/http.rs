//! Inbound HTTP: HTTP/1.1 and HTTP/2 on one port, authorization per request, forwarding to
//! the app over pooled HTTP/1.1 connections.
//!
//! docs/mesh-runtime.md: "HTTP: authorization per request (`InboundPolicy::decide`), denial =
//! 403 `RBAC: access denied`, normalization rejection = 400; the request is forwarded to the
//! app over HTTP/1.1 with `x-forwarded-client-cert: By=<own id>;URI=<peer id>` (any incoming
//! XFCC is removed)." The path the app receives is the normalized one policies matched
//! (Envoy's `normalize_path` rewrites the forwarded `:path`), with the query as sent.
//!
//! What is not here: accepting and TLS (`inbound`), policy semantics (`trustmesh-core`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{HttpRequest, Outcome};
use trustmesh_core::normalize::normalize_path;

use super::{ConnInfo, Inbound};
use crate::hop_by_hop::remove_connection_options;
use crate::metrics::{Base, CountedBody, Exchange, RecordedBody};

/// Istio's body for a request denied by an AuthorizationPolicy.
pub const RBAC_DENIED_BODY: &str = "RBAC: access denied";
/// How long a request's header block may take to arrive (hyper's default once a timer is
/// set).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The header carrying the client's identity to the app.
pub const XFCC: &str = "x-forwarded-client-cert";

/// The response body type of the inbound HTTP service.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The pooled HTTP/1.1 client to the app.
pub(crate) type AppClient = Client<HttpConnector, CountedBody<Incoming>>;

pub(crate) fn app_client() -> AppClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(super::APP_CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// A connection is closed instead of answered: its mode no longer admits it (a STRICT
/// policy arrived while a plaintext keep-alive connection was open).
#[derive(Debug, thiserror::Error)]
#[error("{peer} → port {port}: connection no longer admitted: {reason}")]
pub struct ConnectionRejected {
    /// The client's address.
    pub peer: SocketAddr,
    /// The port.
    pub port: u16,
    /// The mode's reason.
    pub reason: String,
}

/// Serves one connection (plaintext or TLS) as HTTP/1.1 or HTTP/2 until it ends; `base`
/// holds the connection's metric labels.
pub async fn serve<S>(inbound: Arc<Inbound>, io: S, conn: ConnInfo, base: Arc<Base>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let peer = conn.peer;
    let svc = service_fn(move |req| handle(inbound.clone(), conn.clone(), base.clone(), req));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that trickles its headers (or idles between keep-alive requests) is dropped
    // after HEADER_READ_TIMEOUT; an HTTP/2 peer that stops answering pings, after 30 s.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        debug!(%peer, error = %e, "inbound HTTP connection ended");
    }
}

fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The request target as sent: origin-form path and query (hyper has already dropped a
/// `#fragment`, which "is ignored" for matching anyway).
fn raw_target(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

/// `:authority` (HTTP/2, absolute-form) or `Host`.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
}

/// One request: decide, then answer locally or forward. Every answer is recorded in the
/// metrics: a policy denial as `response_code="403"`, `response_flags="DENY"`; an app that
/// cannot be reached as 503 with Envoy's `UF` (connect failure) or `UC` (connection
/// termination).
async fn handle(
    inbound: Arc<Inbound>,
    conn: Arc<ConnInfo>,
    base: Arc<Base>,
    req: Request<Incoming>,
) -> Result<Response<RecordedBody<Body>>, ConnectionRejected> {
    let exchange = Exchange::start(req.headers());
    let Some(view) = inbound.shared.view() else {
        return Ok(exchange.respond(
            &base,
            "-",
            local(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n"),
        ));
    };
    let target = raw_target(&req);
    let host = host_of(&req);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut authz = conn.request();
    authz.http = Some(HttpRequest {
        method: req.method().as_str().to_owned(),
        target: target.clone(),
        host: host.clone(),
        headers,
    });
    let decision = view.inbound.decide(&authz);
    inbound
        .metrics
        .labels(&view)
        .count_decision(&decision, &view.inbound.authz);
    let own = view.workload.identity.clone();
    match decision.outcome {
        Outcome::ConnectionRejected => {
            exchange.fail(&base, "-");
            return Err(ConnectionRejected {
                peer: conn.peer,
                port: conn.port,
                reason: decision.reason.to_string(),
            });
        }
        Outcome::BadRequest => {
            let r = local(StatusCode::BAD_REQUEST, "Bad Request");
            return Ok(exchange.respond(&base, "-", r));
        }
        Outcome::Deny => {
            debug!(
                peer = %conn.peer,
                principal = conn.peer_id.as_ref().map_or("plaintext", SpiffeId::as_str),
                method = %req.method(),
                %target,
                policy = decision.policy.as_deref().unwrap_or("-"),
                reason = %decision.reason,
                "request denied"
            );
            let r = local(StatusCode::FORBIDDEN, RBAC_DENIED_BODY);
            return Ok(exchange.respond(&base, "DENY", r));
        }
        Outcome::Allow => {}
    }
    // The path policies matched is the path the app gets.
    let normalization = view.policies.settings().normalization;
    let path = normalize_path(&target, normalization)
        .map(|n| n.forwarded())
        .unwrap_or(target);
    let app = SocketAddr::new(inbound.app_ip(&view), conn.port);
    let Ok(uri) = format!("http://{app}{path}").parse::<http::Uri>() else {
        let r = local(StatusCode::BAD_REQUEST, "Bad Request");
        return Ok(exchange.respond(&base, "-", r));
    };
    let (parts, body) = req.into_parts();
    let mut out = Request::new(exchange.count_request(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = forwarded_headers(parts.headers);
    if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        out.headers_mut().insert(header::HOST, h);
    }
    if let Some(peer) = &conn.peer_id {
        // Istio's XFCC for the server side: `By=<own identity>;URI=<peer identity>`.
        let own_id = inbound
            .shared
            .identity()
            .map_or_else(|| own.as_str().to_owned(), |i| i.id.as_str().to_owned());
        if let Ok(v) = HeaderValue::from_str(&format!("By={own_id};URI={}", peer.as_str())) {
            out.headers_mut().insert(HeaderName::from_static(XFCC), v);
        }
    }
    drop(view);
    match inbound.client.request(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let r = Response::from_parts(parts, body.boxed());
            Ok(exchange.respond(&base, "-", r))
        }
        Err(e) => {
            // Envoy's words and response flags: UF = upstream connection failure, UC =
            // upstream connection termination.
            let (flags, reason) = if e.is_connect() {
                ("UF", "connection failure")
            } else {
                ("UC", "connection termination")
            };
            debug!(%app, error = %e, "app unreachable");
            let r = local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                ),
            );
            Ok(exchange.respond(&base, flags, r))
        }
    }
}

/// RFC 9110 7.6.1: hop-by-hop fields, plus those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_options(headers);
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(n);
    }
}

/// The request headers the app receives: hop-by-hop and any incoming XFCC removed.
fn forwarded_headers(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(XFCC);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_client_supplied_xfcc_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-drop"),
        );
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(XFCC, HeaderValue::from_static("By=spiffe://evil/ns/a/sa/b"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let out = forwarded_headers(h);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out["x-keep"], "1");
    }
}
