//! Forwarding one absolute-form HTTP request: target from the URI, route, circuit breakers,
//! a pooled connection, the request rewritten for the upstream (HTTP/2 keeps the absolute
//! URI as `:scheme`/`:authority`; HTTP/1.1 gets origin-form and `Host`), and the response
//! streamed back while it holds its connection and its active-request count. Each request
//! is recorded with `reporter="source"`: the route's labels, the peer the connection
//! verified, the status, and Envoy's response flag of a failure.
//!
//! What is not here: CONNECT (`tunnel`), the pools (`pool`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::OutboundError;
use super::pool::{ActiveRequest, Lease};
use super::route::Target;
use super::{OutBody, Outbound, ProxyBody, error_response, failure_flags, log_failure};
use crate::hop_by_hop::remove_connection_options;
use crate::metrics::{Exchange, RouteLabels};

/// Connect failures are retried on the next endpoint, like Istio's default retry policy
/// (`attempts: 2`, `retryOn: connect-failure,refused-stream,...`): at most 3 tries.
const MAX_TRIES: usize = 3;

/// The target of an absolute-form request.
pub fn target_of(uri: &Uri) -> Result<(Target, Authority), OutboundError> {
    let bad = |reason: &str| OutboundError::BadRequest {
        reason: reason.to_owned(),
    };
    let Some(authority) = uri.authority() else {
        return Err(bad(
            "an HTTP proxy needs an absolute URI (GET http://host:port/path) or CONNECT host:port",
        ));
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https:// in absolute form is not proxied: use CONNECT host:port for TLS",
            ));
        }
        _ => return Err(bad("only http:// absolute URIs are proxied")),
    }
    if authority.as_str().contains('@') {
        return Err(bad("userinfo in the request URI is not allowed"));
    }
    let port = authority.port_u16().unwrap_or(80);
    Ok((Target::new(authority.host(), port), authority.clone()))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own, never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `TE: trailers` is the one TE value HTTP/2 allows, and gRPC needs it end to end.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_connection_options(headers);
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Shapes `req` for the connection it goes out on.
fn prepare(req: &mut Request<OutBody>, authority: &Authority, h2: bool) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq);
    if h2 {
        // HTTP/2 carries the target as `:scheme` and `:authority`, not `Host`.
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = http::Version::HTTP_2;
    } else {
        // RFC 9112 §3.2.2: with an absolute-form target, `Host` is replaced by its authority.
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
        *req.version_mut() = http::Version::HTTP_11;
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Forwards an absolute-form request and answers it: the upstream's response, or the
/// failure's status and reason.
pub async fn forward(ob: &Outbound, req: Request<Incoming>) -> Response<ProxyBody> {
    let exchange = Exchange::start(req.headers());
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let req = req.map(|b| exchange.count_request(b));
    let mut failed = Failed::default();
    match send(ob, req, &mut failed).await {
        Ok(sent) => {
            let base = sent.labels.base(sent.lease.peer_id());
            let (mut parts, body) = sent.resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = http::Version::HTTP_11;
            let body = Held {
                inner: body,
                lease: Some(sent.lease),
                active: Some(sent.active),
            };
            exchange
                .respond(&base, "-", Response::from_parts(parts, body))
                .map(BodyExt::boxed)
        }
        Err(e) => {
            let flags = failure_flags(&e, failed.retry_limit);
            log_failure(&method, &uri, &e, flags);
            let labels = failed.labels.unwrap_or_else(|| ob.unrouted(e.host()));
            exchange
                .respond(&labels.base(None), flags, error_response(&e))
                .map(BodyExt::boxed)
        }
    }
}

/// What a failed request had learned: its route's labels, whether it ran out of tries.
#[derive(Debug, Default)]
struct Failed {
    labels: Option<std::sync::Arc<RouteLabels>>,
    retry_limit: bool,
}

/// A response from upstream, with what it holds until its body is read.
struct Sent {
    resp: Response<Incoming>,
    lease: Lease,
    active: ActiveRequest,
    labels: std::sync::Arc<RouteLabels>,
}

async fn send(
    ob: &Outbound,
    mut req: Request<OutBody>,
    failed: &mut Failed,
) -> Result<Sent, OutboundError> {
    let (target, authority) = target_of(req.uri())?;
    let Some(view) = ob.shared.view() else {
        failed.labels = Some(ob.unrouted(Some(&target.host)));
        return Err(OutboundError::NoConfig);
    };
    let routed = ob.route(&view, &target);
    failed.labels = Some(routed.labels.clone());
    let route = routed.route?;
    let cluster = ob.pools.cluster(&route);
    let active = cluster.start_request()?;
    strip_hop_by_hop(req.headers_mut());
    let n = route.upstreams.len();
    let mut tries = 0;
    loop {
        tries += 1;
        let upstream = &route.upstreams[cluster.next_index(n)];
        let pool = cluster.endpoint(upstream, &view.bundles);
        let mut lease = match pool.checkout(&cluster, &ob.shared).await {
            Ok(l) => l,
            Err(e) if e.is_connect_failure() && n > 1 && tries < MAX_TRIES => {
                tracing::debug!(error = %e, "outbound connect failed, trying the next endpoint");
                continue;
            }
            Err(e) => {
                failed.retry_limit = e.is_connect_failure() && n > 1;
                return Err(e);
            }
        };
        prepare(&mut req, &authority, lease.is_h2());
        match lease.send(req).await {
            Ok(resp) => {
                return Ok(Sent {
                    resp,
                    lease,
                    active,
                    labels: routed.labels,
                });
            }
            Err(mut e) => {
                let peer = lease.peer();
                match e.take_message() {
                    // The connection closed before the request left (a peer's GOAWAY, an
                    // idle close): nothing reached the upstream, so another try is safe.
                    Some(r) if tries < MAX_TRIES => {
                        tracing::debug!(%peer, error = %e.error(), "request not sent, retrying");
                        req = r;
                    }
                    unsent => {
                        failed.retry_limit = unsent.is_some();
                        return Err(OutboundError::Upstream {
                            host: route.host.clone(),
                            port: route.port,
                            peer,
                            reason: e.into_error().to_string(),
                        });
                    }
                }
            }
        }
    }
}

/// A response body that releases its connection lease and active-request count at its end.
#[derive(Debug)]
struct Held {
    inner: Incoming,
    lease: Option<Lease>,
    active: Option<ActiveRequest>,
}

impl Held {
    fn release(&mut self, completed: bool) {
        if let Some(mut lease) = self.lease.take()
            && completed
        {
            lease.complete();
        }
        self.active.take();
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(true),
            Poll::Ready(Some(Err(_))) => this.release(false),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let completed = self.inner.is_end_stream();
        self.release(completed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets() {
        let (t, a) = target_of(&"http://Orders.production:8080/x?y".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("orders.production", 8080));
        assert_eq!(a.as_str(), "Orders.production:8080");
        let (t, _) = target_of(&"http://orders/".parse().unwrap()).unwrap();
        assert_eq!(t.port, 80);
        for bad in ["/path", "https://orders:443/", "http://u:p@orders/"] {
            let e = target_of(&bad.parse().unwrap()).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());
    }
}
