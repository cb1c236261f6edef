//! The demo app `trustmesh up` puts behind a proxy: a small HTTP/1.1 server that answers
//! every request with 200 and a plain-text account of it — its own name, the method, the
//! path and the `x-forwarded-client-cert` it received — so a caller sees which identity the
//! proxy vouched for. `GET /healthz` answers 200 `ok`.
//!
//! It lives in the proxy crate because it is the proxy's test double too. What is not here:
//! anything of the mesh (the app knows nothing of TLS or identities).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{serve_http1, text};
use crate::inbound::http::XFCC;

/// Serves the demo app named `name` (`ns/name`) on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, name: String, shutdown: watch::Receiver<bool>) {
    let name: Arc<str> = Arc::from(name);
    serve_http1(listener, shutdown, move |_, req| {
        let name = name.clone();
        async move { answer(&name, req).await }
    })
    .await;
}

async fn answer(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let xfcc = req.headers().get(XFCC).map_or_else(
        || "-".to_owned(),
        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
    );
    // Read the body so a client's upload completes; its size is reported.
    let size = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    text(
        StatusCode::OK,
        format!(
            "app: {name}\nmethod: {method}\npath: {path}\nx-forwarded-client-cert: {xfcc}\nbody-bytes: {size}\n"
        ),
    )
}
