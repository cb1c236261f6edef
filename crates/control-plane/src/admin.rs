//! The admin API and metrics on port 15014: HTTP/1.1, JSON, every `/v1/` path behind
//! `Authorization: Bearer <state/admin.token>` (docs/mesh-runtime.md, "Control-plane admin
//! API"). `/healthz` and `/metrics` need no credential.
//!
//! | method, path | does |
//! |---|---|
//! | `GET /healthz` | 200 |
//! | `GET /metrics` | Prometheus text (`metrics`; docs/metrics.md "Control plane") |
//! | `GET /v1/status` | version, last reload result (errors with file/field), connected proxies |
//! | `GET /v1/workloads` | ns, name, address, identity, connected, last issued serial/notAfter |
//! | `POST /v1/tokens` | `{"workload":"ns/name","ttlSeconds":3600}` → `{"token":…}` |
//! | `POST /v1/rotate` | `{"workloads":[…],"certificates":[…]}` or `{"all":true}` |
//! | `GET /v1/certificates` | cert-manager Certificates |
//! | `GET /v1/snapshot` | the snapshot as JSON |
//!
//! Errors are `{"error": "<one line>"}` with 400 (bad request), 401 (no or wrong credential),
//! 404 (unknown path, workload or certificate), 405 (wrong method), 500.
//! What does not live here: what rotation and tokens do (`state`, `bootstrap`, `certs`).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use trustmesh_pki::controller::{self, Force};
use trustmesh_pki::svid::format_rfc3339;

use crate::bootstrap::{self, find_workload};
use crate::certs::Controller;
use crate::error::ControlPlaneError;
use crate::state::Shared;
use crate::tls::ServerTls;

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Default join-token lifetime: one hour.
const DEFAULT_TOKEN_TTL: u64 = 3600;

/// What the handlers need.
#[derive(Debug)]
pub(crate) struct Admin {
    pub shared: Arc<Shared>,
    pub controller: Arc<Controller>,
    pub tls: Arc<ServerTls>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_resp(status: StatusCode, value: &impl Serialize) -> Resp {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, "application/json", body)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Resp {
    let mut body = json!({ "error": message }).to_string();
    body.push('\n');
    respond(status, "application/json", body)
}

/// Serves the admin API on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (tcp, peer) = match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admin = admin.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = crate::state::stopping(&mut shutdown) => break,
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    workload: String,
    ttl_seconds: Option<u64>,
}

/// `POST /v1/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default)]
    certificates: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match path.as_str() {
            "/healthz" => {
                return only(&method, Method::GET, || {
                    respond(StatusCode::OK, "text/plain", "ok\n")
                });
            }
            "/metrics" if method == Method::GET => return self.metrics().await,
            "/metrics" => return method_not_allowed("GET"),
            _ => {}
        }
        if !path.starts_with("/v1/") {
            return error(StatusCode::NOT_FOUND, &format!("no such path {path}"));
        }
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !crate::tokens::bearer_matches(auth, &self.shared.admin_token) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <state/admin.token>`",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (path.as_str(), method) {
            ("/v1/status", Method::GET) => json_resp(StatusCode::OK, &self.status()),
            ("/v1/workloads", Method::GET) => json_resp(StatusCode::OK, &self.workloads()),
            ("/v1/snapshot", Method::GET) => {
                json_resp(StatusCode::OK, &*self.shared.current().snapshot)
            }
            ("/v1/certificates", Method::GET) => self.certificates().await,
            ("/v1/tokens", Method::POST) => match body::<TokenRequest>(req).await {
                Ok(r) => self.create_token(r),
                Err(resp) => resp,
            },
            ("/v1/rotate", Method::POST) => match body::<RotateRequest>(req).await {
                Ok(r) => self.rotate(r).await,
                Err(resp) => resp,
            },
            ("/v1/status" | "/v1/workloads" | "/v1/snapshot" | "/v1/certificates", _) => {
                method_not_allowed("GET")
            }
            ("/v1/tokens" | "/v1/rotate", _) => method_not_allowed("POST"),
            _ => error(StatusCode::NOT_FOUND, &format!("no such path {path}")),
        }
    }

    /// `GET /metrics`: read off the runtime, since it reads the cert-manager Secret folders
    /// and `/proc`.
    async fn metrics(&self) -> Resp {
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || crate::metrics::render(&shared)).await {
            Ok(text) => respond(StatusCode::OK, trustmesh_metrics::CONTENT_TYPE, text),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn status(&self) -> Value {
        let p = self.shared.current();
        let svid = self.tls.svid();
        let streams = self.shared.streams();
        let cas = self.shared.cas.load();
        json!({
            "version": p.version,
            "configDir": self.shared.config_dir.display().to_string(),
            "stateDir": self.shared.state_dir.display().to_string(),
            "grpcAddress": self.grpc_addr.to_string(),
            "adminAddress": self.admin_addr.to_string(),
            "trustDomain": p.snapshot.mesh().trust_domain.as_str(),
            "trustDomains": cas.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
            "resources": p.snapshot.len(),
            "workloads": p.snapshot.workloads().len(),
            "lastReload": self.shared.reload_status(),
            "connectedProxies": streams.values().sum::<usize>(),
            "proxies": streams.iter().map(|(w, n)| json!({"workload": w, "streams": n})).collect::<Vec<_>>(),
            "controlPlane": {
                "identity": svid.id.as_str(),
                "serial": svid.serial,
                "notAfter": format_rfc3339(svid.not_after),
                "renewalTime": format_rfc3339(svid.renewal_time()),
            },
        })
    }

    fn workloads(&self) -> Value {
        let p = self.shared.current();
        let streams = self.shared.streams();
        let issued = self.shared.issued();
        let list: Vec<Value> = p
            .snapshot
            .workloads()
            .iter()
            .map(|w| {
                let key = format!("{}/{}", w.namespace, w.name);
                json!({
                    "namespace": w.namespace,
                    "name": w.name,
                    "address": w.address.to_string(),
                    "identity": w.identity.as_str(),
                    "trustDomain": w.trust_domain.as_str(),
                    "connected": streams.get(&key).is_some_and(|n| *n > 0),
                    "rotation": p.rotation(&key),
                    "lastIssued": issued.get(&key),
                })
            })
            .collect();
        json!({ "version": p.version, "workloads": list })
    }

    async fn certificates(&self) -> Resp {
        let snapshot = self.shared.current().snapshot;
        let state = self.shared.state_dir.clone();
        let now = self.shared.clock.now();
        match tokio::task::spawn_blocking(move || controller::status(&snapshot, &state, now)).await
        {
            Ok(views) => json_resp(StatusCode::OK, &json!({ "certificates": views })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn create_token(&self, r: TokenRequest) -> Resp {
        let ttl = Duration::from_secs(r.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL));
        let p = self.shared.current();
        match bootstrap::create(
            &p.snapshot,
            &p.bundles,
            &self.shared.state_dir,
            &r.workload,
            ttl,
            self.shared.clock.now(),
        ) {
            Ok(b) => {
                tracing::info!(workload = %b.workload, expires_at = b.expires_at, "join token created");
                json_resp(StatusCode::OK, &b)
            }
            Err(e @ ControlPlaneError::UnknownWorkload { .. }) => {
                error(StatusCode::NOT_FOUND, &e.to_string())
            }
            Err(ControlPlaneError::Token(e @ crate::tokens::TokenError::InvalidTtl)) => {
                error(StatusCode::BAD_REQUEST, &e.to_string())
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn rotate(&self, r: RotateRequest) -> Resp {
        if !r.all && r.workloads.is_empty() && r.certificates.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "name workloads and/or certificates (\"ns/name\"), or set \"all\": true",
            );
        }
        let snapshot = self.shared.current().snapshot;
        let workloads: Vec<String> = if r.all {
            snapshot
                .workloads()
                .iter()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect()
        } else {
            r.workloads
        };
        let mut unknown: Vec<String> = workloads
            .iter()
            .filter(|w| find_workload(&snapshot, w).is_none())
            .map(|w| format!("workload {w}"))
            .collect();
        let mut certs = BTreeSet::new();
        for c in &r.certificates {
            let known = c.split_once('/').is_some_and(|(ns, name)| {
                snapshot
                    .certificates()
                    .iter()
                    .any(|x| x.metadata.namespace_str() == ns && x.metadata.name == name)
            });
            match c.split_once('/') {
                Some((ns, name)) if known => {
                    certs.insert((ns.to_owned(), name.to_owned()));
                }
                _ => unknown.push(format!("certificate {c}")),
            }
        }
        if !unknown.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                &format!("not in the config: {}", unknown.join(", ")),
            );
        }
        let rotated = self.shared.rotate(&workloads);
        for (w, n) in &rotated {
            tracing::info!(workload = %w, rotation = n, "rotation requested");
        }
        let force = if r.all && !snapshot.certificates().is_empty() {
            Some(Force::All)
        } else if !certs.is_empty() {
            Some(Force::Some(certs.clone()))
        } else {
            None
        };
        let outcomes = match force {
            Some(f) => {
                let (all, _) = self.controller.pass(&self.shared, f).await;
                all.into_iter()
                    .filter(|o| r.all || certs.contains(&(o.namespace.clone(), o.name.clone())))
                    .collect()
            }
            None => Vec::new(),
        };
        json_resp(
            StatusCode::OK,
            &json!({
                "workloads": rotated.iter().map(|(w, n)| json!({"workload": w, "rotation": n})).collect::<Vec<_>>(),
                "certificates": outcomes,
            }),
        )
    }
}

fn only(method: &Method, allowed: Method, f: impl FnOnce() -> Resp) -> Resp {
    if *method == allowed {
        f()
    } else {
        method_not_allowed(allowed.as_str())
    }
}

fn method_not_allowed(allow: &str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    if let Ok(v) = header::HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body: {e}")))
}
