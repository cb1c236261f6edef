//! The SPIFFE Workload API on a Unix socket, checked with the `spiffe` crate (a client nobody
//! here wrote) and with a raw gRPC client that omits the mandatory header.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use mesh_support::*;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::codegen::Service;
use tonic::transport::Endpoint;
use trustmesh_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use trustmesh_api::workload::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use trustmesh_proxy::state::Shared;
use trustmesh_proxy::workload_api::{self, WorkloadApi};

struct Api {
    ca: TestCa,
    shared: Arc<Shared>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn start(with_identity: bool) -> Api {
    let ca = TestCa::new(TD);
    let shared = Shared::new(WORKLOAD);
    if with_identity {
        shared.set_identity(ca.identity("prod", "orders"));
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload-api.sock");
    let (stop, stop_rx) = watch::channel(false);
    let api = WorkloadApi::new(shared.clone(), Arc::new(ca.bundle()), stop_rx.clone());
    workload_api::serve(&socket, api, stop_rx).unwrap();
    Api {
        ca,
        shared,
        socket,
        _dir: dir,
        _stop: stop,
    }
}

/// A raw tonic client over the Unix socket: sends exactly the metadata we give it.
#[derive(Clone)]
struct Uds(PathBuf);

impl Service<http::Uri> for Uds {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(p).await?)) })
    }
}

async fn raw_client(
    socket: &std::path::Path,
) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(Uds(socket.to_owned()))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

#[tokio::test]
async fn the_spiffe_crate_fetches_the_svid_and_bundles() {
    let api = start(true).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", api.socket.display()))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    let ours = api.shared.identity().unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/prod/sa/orders"
    );
    assert_eq!(svid.cert_chain()[0].as_ref(), ours.chain[0].as_ref());
    assert_eq!(
        svid.private_key().as_ref(),
        ours.key.private_key_der().secret_der()
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("cluster.local").unwrap();
    let bundle = bundles.get(&td).expect("bundle of the local trust domain");
    assert_eq!(
        bundle.authorities()[0].as_ref(),
        api.ca.ca.root_der().as_ref()
    );
}

#[tokio::test]
async fn svid_streams_push_a_new_message_on_every_rotation() {
    let api = start(true).await;
    let mut client = raw_client(&api.socket).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    assert_eq!(
        first.svids[0].spiffe_id,
        "spiffe://cluster.local/ns/prod/sa/orders"
    );
    assert_eq!(first.svids[0].bundle, api.ca.ca.root_der().to_vec());
    assert!(first.federated_bundles.is_empty());

    // A view change that alters nothing of the SVID sends nothing.
    api.shared
        .set_identity(clone_identity(&api.shared.identity().unwrap()));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err(),
        "no duplicate message"
    );

    api.shared.set_identity(api.ca.identity("prod", "orders"));
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message after rotation")
        .unwrap()
        .unwrap();
    assert_ne!(second.svids[0].x509_svid, first.svids[0].x509_svid);
    let leaf = trustmesh_pki::CertInfo::parse(&second.svids[0].x509_svid).ok();
    // The chain is DER certificates concatenated, leaf first; parsing the concatenation
    // reads the leaf.
    assert_eq!(
        leaf.map(|l| l.serial_hex),
        Some(api.shared.identity().unwrap().serial.clone())
    );
}

#[tokio::test]
async fn requests_without_the_security_header_are_invalid_arguments() {
    let api = start(true).await;
    let mut client = raw_client(&api.socket).await;
    let e = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = client
        .fetch_x509_bundles(tonic::Request::new(X509BundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A wrong value is no better.
    let mut r = tonic::Request::new(X509svidRequest {});
    r.metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    let e = client.fetch_x509svid(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // JWT: not offered.
    let e = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
}

#[tokio::test]
async fn before_the_first_svid_the_answer_is_unavailable() {
    let api = start(false).await;
    let mut client = raw_client(&api.socket).await;
    let e = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    // Bundles are known from the bootstrap bundle already.
    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = bundles.next().await.unwrap().unwrap();
    assert_eq!(
        b.bundles.get("spiffe://cluster.local"),
        Some(&api.ca.ca.root_der().to_vec())
    );
}
