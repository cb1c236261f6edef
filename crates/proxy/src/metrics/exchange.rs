//! Recording one HTTP request: [`Exchange`] starts the clock and counts the request body as
//! it streams ([`CountedBody`]); when the response starts it counts `istio_requests_total`
//! and wraps the response body ([`RecordedBody`]), which counts its bytes as they stream and
//! observes the three histograms when it ends. Nothing is buffered. [`CountedIo`] does the
//! same for the bytes of a TCP connection.
//!
//! docs/metrics.md: `istio_requests_total` "one per HTTP request, when the response starts
//! (or the request fails)"; `istio_request_duration_milliseconds` "request start to response
//! end"; `istio_request_bytes` / `istio_response_bytes` "request body bytes" / "response body
//! bytes". A gRPC request is counted when its response ends instead: its
//! `grpc_response_status` travels in the trailers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::Response;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use trustmesh_metrics::Counter;

use super::series::{Base, HttpKey, HttpProtocol, HttpSeries};

/// gRPC's status header (in the trailers, or in the headers of a trailers-only response).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED), as label values.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The `grpc_response_status` of a `grpc-status` value. A value outside the 17 codes gRPC
/// defines is reported as 2 (UNKNOWN), so a peer cannot mint label values.
fn grpc_status(v: &[u8]) -> &'static str {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|i| GRPC_CODES.get(i).copied())
        .unwrap_or(GRPC_CODES[2])
}

/// `request_protocol`: gRPC when the request's `content-type` is `application/grpc...`.
pub fn protocol_of(headers: &HeaderMap) -> HttpProtocol {
    match headers.get(CONTENT_TYPE) {
        Some(c) if c.as_bytes().starts_with(b"application/grpc") => HttpProtocol::Grpc,
        _ => HttpProtocol::Http,
    }
}

/// One HTTP request being recorded, from its start.
#[derive(Debug)]
pub struct Exchange {
    start: Instant,
    protocol: HttpProtocol,
    request_bytes: Arc<AtomicU64>,
}

impl Exchange {
    /// A request with these headers starts now.
    pub fn start(headers: &HeaderMap) -> Self {
        Self {
            start: Instant::now(),
            protocol: protocol_of(headers),
            request_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `body`, counting its bytes into this exchange as they are read.
    pub fn count_request<B>(&self, body: B) -> CountedBody<B> {
        CountedBody {
            inner: body,
            bytes: self.request_bytes.clone(),
        }
    }

    /// The response starts with `flags`: counts the request (unless gRPC) and wraps the body.
    pub fn respond<B>(
        self,
        base: &Arc<Base>,
        flags: &'static str,
        resp: Response<B>,
    ) -> Response<RecordedBody<B>> {
        let code = resp.status().as_u16();
        let pending = match self.protocol {
            HttpProtocol::Http => {
                let series = base.http(HttpKey {
                    protocol: HttpProtocol::Http,
                    code,
                    grpc_status: "",
                    flags,
                });
                series.requests.inc();
                Pending::Counted(series)
            }
            HttpProtocol::Grpc => Pending::Grpc {
                base: base.clone(),
                code,
                flags,
                // A trailers-only response carries the status in its headers.
                status: resp
                    .headers()
                    .get(GRPC_STATUS)
                    .map(|v| grpc_status(v.as_bytes())),
            },
        };
        resp.map(|inner| RecordedBody {
            inner,
            response_bytes: 0,
            end: Some(End {
                start: self.start,
                request_bytes: self.request_bytes,
                pending,
            }),
        })
    }

    /// The request failed without a response (`response_code="0"`): everything is recorded
    /// now.
    pub fn fail(self, base: &Arc<Base>, flags: &'static str) {
        let series = base.http(HttpKey {
            protocol: self.protocol,
            code: 0,
            grpc_status: "",
            flags,
        });
        series.requests.inc();
        End {
            start: self.start,
            request_bytes: self.request_bytes,
            pending: Pending::Counted(series),
        }
        .finish(0);
    }
}

/// A request body that counts its data bytes into its exchange.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.bytes
                .fetch_add(hyper::body::Buf::remaining(d) as u64, Ordering::Relaxed);
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

/// What is still to be recorded when the response ends.
#[derive(Debug)]
enum Pending {
    /// Counted at the response start; the histograms remain.
    Counted(Arc<HttpSeries>),
    /// gRPC: the status (from the headers, or from the trailers still to come) decides the
    /// series.
    Grpc {
        base: Arc<Base>,
        code: u16,
        flags: &'static str,
        status: Option<&'static str>,
    },
}

#[derive(Debug)]
struct End {
    start: Instant,
    request_bytes: Arc<AtomicU64>,
    pending: Pending,
}

impl End {
    fn finish(self, response_bytes: u64) {
        let series = match &self.pending {
            Pending::Counted(s) => s.clone(),
            Pending::Grpc {
                base,
                code,
                flags,
                status,
            } => {
                let s = base.http(HttpKey {
                    protocol: HttpProtocol::Grpc,
                    code: *code,
                    grpc_status: status.unwrap_or(""),
                    flags,
                });
                s.requests.inc();
                s
            }
        };
        self.observe(&series, response_bytes);
    }

    fn observe(&self, series: &HttpSeries, response_bytes: u64) {
        series
            .duration
            .observe(self.start.elapsed().as_secs_f64() * 1000.0);
        series
            .request_bytes
            .observe(self.request_bytes.load(Ordering::Relaxed) as f64);
        series.response_bytes.observe(response_bytes as f64);
    }
}

/// A response body that counts its data bytes and records the exchange when it ends (or is
/// dropped: the client went away).
#[derive(Debug)]
pub struct RecordedBody<B> {
    inner: B,
    response_bytes: u64,
    end: Option<End>,
}

impl<B> RecordedBody<B> {
    fn finish(&mut self) {
        if let Some(end) = self.end.take() {
            end.finish(self.response_bytes);
        }
    }
}

impl<B: Body + Unpin> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.response_bytes += hyper::body::Buf::remaining(d) as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let Some(End {
                        pending: Pending::Grpc { status, .. },
                        ..
                    }) = &mut this.end
                    && let Some(v) = t.get(GRPC_STATUS)
                {
                    *status = Some(grpc_status(v.as_bytes()));
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
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

impl<B> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A byte stream whose reads count into `received` and writes into `sent` as they happen,
/// so a long-lived connection shows its bytes before it closes, and one that ends in an
/// error still reports what it moved.
#[derive(Debug)]
pub struct CountedIo<T> {
    inner: T,
    sent: Arc<Counter>,
    received: Arc<Counter>,
}

impl<T> CountedIo<T> {
    /// Wraps `inner` (the downstream side of a connection).
    pub fn new(inner: T, sent: Arc<Counter>, received: Arc<Counter>) -> Self {
        Self {
            inner,
            sent,
            received,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.received.add(n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.sent.add(n as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_are_bounded() {
        assert_eq!(grpc_status(b"0"), "0");
        assert_eq!(grpc_status(b" 14 "), "14");
        assert_eq!(grpc_status(b"16"), "16");
        assert_eq!(grpc_status(b"17"), "2");
        assert_eq!(grpc_status(b"x"), "2");
    }
}
