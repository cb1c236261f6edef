//! The proxy's local HTTP endpoints: admin (15000), health (15021) and Prometheus metrics
//! (15090), all HTTP/1.1 on the workload's (loopback) address.
//!
//! docs/mesh-runtime.md, "Proxy admin":
//! | `GET /ready` | 200 when it has an SVID and a config, else 503 |
//! | `GET /certs` | `{"spiffeId","serial","notBefore","notAfter","renewalTime","chainPem","bundles":{td:[pem]}}` (never the key) |
//! | `GET /config_dump` | `{"version","workload","modes":{port:mode},"policies":[…],"resources":[…]}` |
//! | `POST /rotate` | renew now |
//! | `POST /logging?level=debug` | change the log filter |
//! "Health on 15021: `GET /healthz/ready` 200/503."
//!
//! What is not here: the data they show (`state`, `metrics`), renewing (`identity`).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use trustmesh_pki::TrustBundleSet;
use trustmesh_pki::svid::format_rfc3339;

use crate::identity::RotateHandle;
use crate::metrics::Metrics;
use crate::state::Shared;

/// How long `POST /rotate` waits for the new certificate before answering.
const ROTATE_WAIT: Duration = Duration::from_secs(15);

/// Changes the process's log filter (`POST /logging?level=...`); the binary owns the
/// subscriber, so it hands this in.
#[derive(Clone)]
pub struct LogControl(Arc<SetFilter>);

/// Sets the log filter from directives; the error says why they were refused.
type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogControl {
    /// Wraps a setter taking a filter directive (`debug`, `trustmesh_proxy=trace`, ...).
    pub fn new(f: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogControl")
    }
}

/// A plain response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves HTTP/1.1 on `listener` with `handler` (given the client's address) until
/// `shutdown`.
pub async fn serve_http1<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let handler = handler.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "HTTP connection ended") },
                _ = stop.changed() => {}
            }
        });
    }
}

/// What the admin endpoint reads and acts on.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Identity and config.
    pub shared: Arc<Shared>,
    /// Bundles to show before a config arrives.
    pub bootstrap: Arc<TrustBundleSet>,
    /// Renew now.
    pub rotate: RotateHandle,
    /// Change the log filter, if the binary allows it.
    pub log: Option<LogControl>,
    /// The metrics, also served here (`GET /metrics`).
    pub metrics: Arc<Metrics>,
}

impl Admin {
    /// Routes one admin request. DESIGN.md: admin is "loopback only" — it can rotate the
    /// certificate and change logging — so a client from elsewhere gets 403 even if the
    /// listen address is reachable.
    pub async fn handle<B>(self, peer: SocketAddr, req: Request<B>) -> Response<Full<Bytes>> {
        if !peer.ip().is_loopback() {
            return text(StatusCode::FORBIDDEN, "admin is loopback only\n");
        }
        // A web page in a browser on this machine is loopback too, but no operator: refuse a
        // cross-site request (browsers send `Origin` with it) and a DNS-rebound one (its Host
        // is the attacker's name, not localhost or a loopback address).
        if req.headers().contains_key(header::ORIGIN)
            || !host_is_loopback(req.headers().get(header::HOST))
        {
            return text(
                StatusCode::FORBIDDEN,
                "admin takes no browser requests (Origin, or a Host that is not loopback)\n",
            );
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ready") => ready(&self.shared),
            (&Method::GET, "/certs") => self.certs(),
            (&Method::GET, "/config_dump") => self.config_dump(),
            (&Method::POST, "/rotate") => self.rotate().await,
            (&Method::POST, "/logging") => self.logging(req.uri().query().unwrap_or("")),
            (&Method::GET, "/metrics" | "/stats/prometheus") => exposition(&self.metrics),
            (
                _,
                "/ready" | "/certs" | "/config_dump" | "/rotate" | "/logging" | "/metrics"
                | "/stats/prometheus",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /ready /certs /config_dump /metrics, POST /rotate, POST /logging?level=\n",
            ),
        }
    }

    fn certs(&self) -> Response<Full<Bytes>> {
        let Some(id) = self.shared.identity() else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "no certificate issued yet"}),
            );
        };
        let bundles = self
            .shared
            .view()
            .map_or_else(|| self.bootstrap.clone(), |v| v.bundles.clone());
        let mut by_td = Map::new();
        for (td, bundle) in bundles.iter() {
            let pems: Vec<Value> = bundle
                .roots()
                .iter()
                .map(|r| Value::String(pem("CERTIFICATE", r)))
                .collect();
            by_td.insert(td.as_str().to_owned(), Value::Array(pems));
        }
        let chain_pem: String = id.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        json_response(
            StatusCode::OK,
            &json!({
                "spiffeId": id.id.as_str(),
                "serial": id.serial,
                "notBefore": format_rfc3339(id.not_before),
                "notAfter": format_rfc3339(id.not_after),
                "renewalTime": format_rfc3339(id.renewal_time),
                "chainPem": chain_pem,
                "bundles": by_td,
            }),
        )
    }

    fn config_dump(&self) -> Response<Full<Bytes>> {
        let Some(view) = self.shared.view() else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "no config received yet", "workload": self.shared.workload_key}),
            );
        };
        let mut modes = Map::new();
        let mut mtls = Map::new();
        for port in view.workload.ports.values() {
            let d = view.inbound.mtls.for_port(*port);
            modes.insert(
                port.to_string(),
                serde_json::to_value(d.mode).unwrap_or(Value::Null),
            );
            mtls.insert(
                port.to_string(),
                serde_json::to_value(d).unwrap_or(Value::Null),
            );
        }
        let policies: Vec<Value> = view
            .inbound
            .authz
            .attached()
            .map(|(name, action, dry_run)| json!({"name": name, "action": action, "dryRun": dry_run}))
            .collect();
        // The snapshot's resources, each whole with apiVersion and kind.
        let mut resources = Vec::new();
        if let Ok(Value::Object(snap)) = serde_json::to_value(&*view.snapshot) {
            for (key, value) in snap {
                match (key.as_str(), value) {
                    ("mesh" | "workloads", _) => {}
                    (_, Value::Array(items)) => resources.extend(items),
                    (_, obj @ Value::Object(_)) => resources.push(obj),
                    _ => {}
                }
            }
        }
        json_response(
            StatusCode::OK,
            &json!({
                "version": view.version,
                "workload": self.shared.workload_key,
                "identity": view.workload.identity.as_str(),
                "address": view.workload.address.to_string(),
                "modes": modes,
                "mtls": mtls,
                "policies": policies,
                "ignoredPolicies": view.policies.ignored().iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
                "resources": resources,
            }),
        )
    }

    async fn rotate(&self) -> Response<Full<Bytes>> {
        let before = self.shared.identity().map(|i| i.serial.clone());
        let mut changes = self.shared.subscribe();
        changes.mark_unchanged();
        self.rotate.rotate();
        info!(workload = %self.shared.workload_key, "rotation requested through the admin endpoint");
        let wait = async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                if let Some(now) = self.shared.identity()
                    && Some(&now.serial) != before.as_ref()
                {
                    return Some(now);
                }
            }
        };
        match tokio::time::timeout(ROTATE_WAIT, wait).await {
            Ok(Some(id)) => json_response(
                StatusCode::OK,
                &json!({"spiffeId": id.id.as_str(), "serial": id.serial, "notAfter": format_rfc3339(id.not_after)}),
            ),
            _ => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("rotation requested, but no new certificate within {}s; the current one stays in use (see the proxy log)", ROTATE_WAIT.as_secs())}),
            ),
        }
    }

    fn logging(&self, query: &str) -> Response<Full<Bytes>> {
        let level = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "level")
            .map(|(_, v)| v);
        let Some(level) = level.filter(|l| !l.is_empty()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "missing ?level= (e.g. debug, info, trustmesh_proxy=trace)\n",
            );
        };
        let Some(log) = &self.log else {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "this proxy was started without a changeable log filter\n",
            );
        };
        match (log.0)(level) {
            Ok(()) => {
                info!(%level, "log filter changed");
                text(StatusCode::OK, format!("log level: {level}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
}

/// "200 when it has an SVID and a config, else 503".
pub fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    match (shared.identity().is_some(), shared.view().is_some()) {
        (true, true) => text(StatusCode::OK, "ready\n"),
        (false, _) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no certificate yet\n",
        ),
        (true, false) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config yet\n",
        ),
    }
}

/// Health (15021): `GET /healthz/ready`.
pub async fn health<B>(shared: Arc<Shared>, req: Request<B>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/ready") => ready(&shared),
        _ => text(StatusCode::NOT_FOUND, "not found; try /healthz/ready\n"),
    }
}

/// Metrics (15090): `GET /stats/prometheus` (Istio's path) or `/metrics`.
pub async fn metrics<B>(metrics: Arc<Metrics>, req: Request<B>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus" | "/metrics") => exposition(&metrics),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics or /stats/prometheus\n",
        ),
    }
}

/// The Prometheus text exposition, format 0.0.4.
fn exposition(metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, metrics.render());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(trustmesh_metrics::CONTENT_TYPE),
    );
    r
}

/// PEM with 64-column base64 lines.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Whether a `Host` header names this machine's loopback: `localhost` or a loopback IP, with
/// or without a port. No header (HTTP/1.0, or a hand-made request) is not a browser's.
fn host_is_loopback(host: Option<&header::HeaderValue>) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Mutex;

    fn admin(log: Option<LogControl>) -> Admin {
        Admin {
            shared: Shared::new("prod/orders"),
            bootstrap: Arc::new(TrustBundleSet::new()),
            rotate: RotateHandle::new(),
            log,
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    async fn call(a: &Admin, peer: &str, method: &str, uri: &str) -> (u16, String) {
        let r = a
            .clone()
            .handle(peer.parse().unwrap(), req(method, uri))
            .await;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn admin_answers_loopback_clients_only() {
        let a = admin(None);
        let (code, body) = call(&a, "10.0.0.7:4000", "GET", "/ready").await;
        assert_eq!((code, body.as_str()), (403, "admin is loopback only\n"));
        let (code, body) = call(&a, "127.0.1.2:4000", "GET", "/ready").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: no certificate yet\n")
        );
        let (code, _) = call(&a, "[::1]:4000", "GET", "/certs").await;
        assert_eq!(code, 503);
        assert_eq!(call(&a, "127.0.0.1:1", "GET", "/config_dump").await.0, 503);
        assert_eq!(call(&a, "127.0.0.1:1", "DELETE", "/certs").await.0, 405);
        assert_eq!(call(&a, "127.0.0.1:1", "GET", "/stats").await.0, 404);
        let (code, text) = call(&a, "127.0.0.1:1", "GET", "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert_eq!(call(&a, "10.0.0.7:4000", "GET", "/metrics").await.0, 403);
    }

    /// A page in a local browser must not rotate certificates or read the config:
    /// cross-site requests carry `Origin`, DNS-rebound ones a foreign `Host`.
    #[tokio::test]
    async fn admin_refuses_browser_requests() {
        let a = admin(None);
        let with = |name: header::HeaderName, value: &str| {
            Request::builder()
                .method("POST")
                .uri("/rotate")
                .header(name, value)
                .body(())
                .unwrap()
        };
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for r in [
            with(header::ORIGIN, "http://evil.example"),
            with(header::HOST, "evil.example:15000"),
            with(header::HOST, "127.0.1.3.evil.example"),
        ] {
            let resp = a.clone().handle(peer, r).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
        for host in [
            "127.0.1.3:15000",
            "localhost:15000",
            "[::1]:15000",
            "127.0.0.1",
        ] {
            assert!(
                host_is_loopback(Some(&header::HeaderValue::from_static(host))),
                "{host}"
            );
        }
        let r = Request::builder()
            .method("GET")
            .uri("/ready")
            .header(header::HOST, "127.0.1.3:15000")
            .body(())
            .unwrap();
        assert_eq!(a.clone().handle(peer, r).await.status(), 503);
    }

    #[tokio::test]
    async fn logging_sets_the_filter_through_the_binarys_control() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        let a = admin(Some(LogControl::new(move |level| {
            if level == "nonsense[" {
                return Err("bad directive".into());
            }
            s.lock().unwrap().push(level.to_owned());
            Ok(())
        })));
        let lo = "127.0.0.1:1";
        assert_eq!(
            call(&a, lo, "POST", "/logging?level=debug").await,
            (200, "log level: debug\n".to_owned())
        );
        assert_eq!(
            call(&a, lo, "POST", "/logging?x=1&level=trustmesh_proxy=trace")
                .await
                .0,
            200
        );
        assert_eq!(call(&a, lo, "POST", "/logging").await.0, 400);
        assert_eq!(
            call(&a, lo, "POST", "/logging?level=nonsense[").await,
            (400, "bad directive\n".to_owned())
        );
        assert_eq!(*seen.lock().unwrap(), ["debug", "trustmesh_proxy=trace"]);
        assert_eq!(
            call(&admin(None), lo, "POST", "/logging?level=debug")
                .await
                .0,
            501
        );
    }

    #[tokio::test]
    async fn health_and_metrics_routes() {
        let shared = Shared::new("prod/orders");
        let r = health(shared.clone(), req("GET", "/healthz/ready")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            health(shared, req("GET", "/")).await.status(),
            StatusCode::NOT_FOUND
        );
        let m = Arc::new(Metrics::default());
        let r = metrics(m.clone(), req("GET", "/stats/prometheus")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            metrics(m, req("GET", "/metrics")).await.status(),
            StatusCode::OK
        );
    }
}
