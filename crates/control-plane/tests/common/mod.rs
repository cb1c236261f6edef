//! Test support: a small config folder, a control plane built in process on port 0, a gRPC
//! client over tokio-rustls (with or without a client SVID) using the generated
//! `trustmesh_api::mesh` clients, and an HTTP/1.1 client for the admin API.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use trustmesh_api::AUTHORIZATION_METADATA;
use trustmesh_api::mesh::ca_client::CaClient;
use trustmesh_api::mesh::discovery_client::DiscoveryClient;
use trustmesh_api::mesh::{ProxyUpdate, SignRequest, SignResponse, StreamRequest};
use trustmesh_control_plane::{ControlPlaneConfig, Running, bootstrap};
use trustmesh_core::SpiffeId;
use trustmesh_pki::{Allowed, KeyPair, SpiffeServerVerifier, TrustBundleSet, csr_for};

pub const MESH: &str = r#"apiVersion: trustmesh.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  trustDomain: td.test
  rootNamespace: istio-system
  workloadCertTTL: 1h
"#;

pub const WORKLOADS: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.1.2, serviceAccount: web, labels: {app: web}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: shop}
spec: {address: 127.0.1.3, serviceAccount: db, labels: {app: db}, ports: {tcp: 5432}}
"#;

pub const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-access, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["td.test/ns/shop/sa/web"]}}]
"#;

pub const CERTS: &str = r#"apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: selfsigned, namespace: shop}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: shop-tls, namespace: shop}
spec:
  secretName: shop-tls
  duration: 24h
  uris: [spiffe://td.test/ns/shop/sa/web]
  issuerRef: {name: selfsigned, kind: Issuer}
"#;

pub const WEB: &str = "spiffe://td.test/ns/shop/sa/web";
pub const DB: &str = "spiffe://td.test/ns/shop/sa/db";
pub const CONTROL_PLANE: &str = "spiffe://td.test/ns/istio-system/sa/trustmesh-control-plane";

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A config folder and a state folder in one temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&config).unwrap();
        for (name, text) in [
            ("mesh.yaml", MESH),
            ("workloads.yaml", WORKLOADS),
            ("policies.yaml", POLICIES),
            ("certs.yaml", CERTS),
        ] {
            std::fs::write(config.join(name), text).unwrap();
        }
        Self { dir, config, state }
    }

    /// Replaces a config file the way editors save: write a temp file, rename it over.
    pub fn edit(&self, name: &str, text: &str) {
        let tmp = self.config.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config.join(name)).unwrap();
    }

    /// Starts a control plane on 127.0.0.1:0.
    pub async fn start(&self) -> Running {
        self.try_start().await.unwrap()
    }

    pub async fn try_start(&self) -> Result<Running, trustmesh_control_plane::ControlPlaneError> {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        trustmesh_control_plane::build(ControlPlaneConfig::new(
            &self.config,
            &self.state,
            grpc,
            admin,
        ))
        .await
    }

    /// `trustmesh token create` for `workload`: the token and the bootstrap bundle set.
    pub fn token(&self, workload: &str) -> (String, TrustBundleSet) {
        let b = bootstrap::create_offline(
            &self.config,
            &self.state,
            workload,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        let bundles =
            TrustBundleSet::from_json(&std::fs::read_to_string(&b.bundle_file).unwrap()).unwrap();
        (b.token, bundles)
    }
}

/// An X.509-SVID with its key, as a proxy holds it.
#[derive(Clone)]
pub struct Svid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<KeyPair>,
}

/// TCP + TLS to the control plane, for tonic.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("control-plane").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A gRPC channel to `addr`, verifying the control plane's SVID against `bundles`, presenting
/// `svid` if given.
pub async fn channel(
    addr: SocketAddr,
    bundles: &TrustBundleSet,
    svid: Option<&Svid>,
) -> Result<Channel, tonic::transport::Error> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        Arc::new(bundles.clone()),
        Allowed::Ids(vec![id(CONTROL_PLANE)]),
    ));
    let mut config = match svid {
        Some(s) => trustmesh_pki::client_config(s.chain.clone(), s.key.private_key_der(), verifier)
            .unwrap(),
        None => ClientConfig::builder_with_provider(trustmesh_pki::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Endpoint::from_static("http://control-plane.invalid")
        .connect_with_connector(Connector {
            addr,
            config: Arc::new(config),
        })
        .await
}

/// Generates a key and a CSR for `identity`: the proxy's side of issuance.
pub fn key_and_csr(identity: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&id(identity), &key).unwrap();
    (key, csr)
}

/// `Ca.Sign`, with a join token or not.
pub async fn sign(
    ch: &Channel,
    workload: &str,
    csr: Vec<u8>,
    token: Option<&str>,
) -> Result<SignResponse, tonic::Status> {
    let mut req = tonic::Request::new(SignRequest {
        workload: workload.to_owned(),
        csr_der: csr,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            AUTHORIZATION_METADATA,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    CaClient::new(ch.clone())
        .sign(req)
        .await
        .map(|r| r.into_inner())
}

/// Bootstraps `workload` with a fresh join token: its SVID and the bundles.
pub async fn bootstrap(
    fx: &Fixture,
    cp: &Running,
    workload: &str,
    identity: &str,
) -> (Svid, TrustBundleSet) {
    let (token, bundles) = fx.token(workload);
    let ch = channel(cp.grpc_addr, &bundles, None).await.unwrap();
    let (key, csr) = key_and_csr(identity);
    let resp = sign(&ch, workload, csr, Some(&token)).await.unwrap();
    (svid_from(&resp, key), bundles)
}

pub fn svid_from(resp: &SignResponse, key: KeyPair) -> Svid {
    Svid {
        chain: resp
            .cert_chain_der
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        key: Arc::new(key),
    }
}

/// Opens `Discovery.Stream` for `workload`.
pub async fn stream(
    ch: &Channel,
    workload: &str,
) -> Result<tonic::Streaming<ProxyUpdate>, tonic::Status> {
    DiscoveryClient::new(ch.clone())
        .stream(StreamRequest {
            workload: workload.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The next update, failing the test after `within`.
pub async fn next_update(s: &mut tonic::Streaming<ProxyUpdate>, within: Duration) -> ProxyUpdate {
    tokio::time::timeout(within, s.message())
        .await
        .unwrap_or_else(|_| panic!("no ProxyUpdate within {within:?}"))
        .unwrap()
        .expect("stream ended")
}

/// The resources of an update as `Kind ns/name` strings.
pub fn resource_names(u: &ProxyUpdate) -> Vec<String> {
    let cfg = trustmesh_api::ProxyConfig::from_json(&u.config_json).unwrap();
    cfg.resources
        .iter()
        .map(|r| {
            format!(
                "{:?} {}/{}",
                r.kind(),
                r.meta().namespace.as_deref().unwrap_or(""),
                r.meta().name
            )
        })
        .collect()
}

/// One HTTP/1.1 request to the admin API: status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A JSON GET with the admin credential.
pub async fn get_json(cp: &Running, path: &str) -> Value {
    let (status, body) = http(cp.admin_addr, "GET", path, Some(cp.admin_token()), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `f` every 20 ms until it is true, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
