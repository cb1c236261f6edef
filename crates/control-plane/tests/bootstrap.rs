//! Bootstrap and identity (docs/mesh-runtime.md), in process with real certificates: a join
//! token works once for its own workload; renewal works with the current SVID and only for
//! the SVID's own identity; the CA survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tonic::Code;
use trustmesh_control_plane::tokens::JoinTokens;
use trustmesh_core::TrustDomain;
use trustmesh_pki::{CertInfo, TrustBundleSet};

fn leaf(resp: &trustmesh_api::mesh::SignResponse) -> CertInfo {
    CertInfo::parse(&resp.cert_chain_der[0]).unwrap()
}

#[tokio::test]
async fn a_join_token_bootstraps_once_and_is_refused_on_replay_and_for_another_workload() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    // Made on disk while the control plane runs, as `trustmesh token create` does.
    let (token, bundles) = fx.token("shop/web");
    let root = bundles.roots(&TrustDomain::new("td.test").unwrap())[0].clone();
    // The bootstrap bundle lets the proxy verify the control plane's SVID.
    let ch = channel(cp.grpc_addr, &bundles, None).await.unwrap();

    // A claim for another workload is refused and does not burn the token.
    let (_, csr) = key_and_csr(DB);
    let e = sign(&ch, "shop/db", csr, Some(&token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("bound to workload shop/web"),
        "{}",
        e.message()
    );

    let (_, csr) = key_and_csr(WEB);
    let resp = sign(&ch, "shop/web", csr, Some(&token)).await.unwrap();
    let cert = leaf(&resp);
    assert_eq!(cert.spiffe_id, Some(id(WEB)));
    assert!(!cert.is_ca);
    // workloadCertTTL: 1h (the CA backdates notBefore by a minute).
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600 + 60));
    assert_eq!(resp.bundles["td.test"].der, vec![root.as_ref().to_vec()]);

    // Replay: refused.
    let (_, csr) = key_and_csr(WEB);
    let e = sign(&ch, "shop/web", csr, Some(&token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("already used"), "{}", e.message());

    // A token that is not one, a malformed header, an expired token.
    let (_, csr) = key_and_csr(WEB);
    let e = sign(&ch, "shop/web", csr.clone(), Some("made-up"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let expired = JoinTokens::new(&fx.state)
        .create(
            "shop/web",
            &id(WEB),
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(120),
        )
        .unwrap();
    let e = sign(&ch, "shop/web", csr.clone(), Some(&expired.token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("expired"), "{}", e.message());

    // No token and no client certificate: nothing to authenticate.
    let e = sign(&ch, "shop/web", csr, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Every refusal of a token was counted.
    let (_, metrics) = http(cp.admin_addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("trustmesh_control_plane_join_token_refusals_total 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trustmesh_control_plane_svids_signed_total{method=\"join_token\"} 1\n"),
        "{metrics}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_csr_for_another_identity_does_not_get_past_a_valid_token() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (token, bundles) = fx.token("shop/web");
    let ch = channel(cp.grpc_addr, &bundles, None).await.unwrap();
    // The CSR asks for db's identity with web's token: refused, and the token stays usable.
    let (_, csr) = key_and_csr(DB);
    let e = sign(&ch, "shop/web", csr, Some(&token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains(DB), "{}", e.message());
    let (_, csr) = key_and_csr(WEB);
    let resp = sign(&ch, "shop/web", csr, Some(&token)).await.unwrap();
    assert_eq!(leaf(&resp).spiffe_id, Some(id(WEB)));
    cp.shutdown().await;
}

#[tokio::test]
async fn renewal_over_mtls_works_for_the_own_identity_and_is_refused_for_another() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let first = CertInfo::parse(&web.chain[0]).unwrap();

    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let (_, csr) = key_and_csr(WEB);
    let resp = sign(&ch, "shop/web", csr, None).await.unwrap();
    let renewed = leaf(&resp);
    assert_eq!(renewed.spiffe_id, Some(id(WEB)));
    assert_ne!(renewed.serial_hex, first.serial_hex);

    // web's SVID asking for db's certificate.
    let (_, csr) = key_and_csr(DB);
    let e = sign(&ch, "shop/db", csr, None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains(WEB) && e.message().contains("shop/db"),
        "{}",
        e.message()
    );
    // A workload that does not exist.
    let (_, csr) = key_and_csr(WEB);
    let e = sign(&ch, "shop/nope", csr, None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // An SVID with the right name from a CA the mesh does not trust gets nowhere.
    let rogue =
        trustmesh_pki::Ca::generate(&TrustDomain::new("td.test").unwrap(), SystemTime::now())
            .unwrap();
    let (svid, key) = rogue
        .issue_svid(&id(WEB), Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    let forged = Svid {
        chain: svid.chain_der,
        key: std::sync::Arc::new(key),
    };
    let refused = match channel(cp.grpc_addr, &bundles, Some(&forged)).await {
        Err(_) => true,
        Ok(ch) => {
            let (_, csr) = key_and_csr(WEB);
            sign(&ch, "shop/web", csr, None).await.is_err()
        }
    };
    assert!(refused, "an untrusted SVID must not renew");

    let (_, metrics) = http(cp.admin_addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("trustmesh_control_plane_svids_signed_total{method=\"svid\"} 1\n"),
        "{metrics}"
    );
    let workloads = get_json(&cp, "/v1/workloads").await;
    let w = workloads["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap();
    assert_eq!(w["identity"], WEB);
    assert_eq!(w["lastIssued"]["serial"], renewed.serial_hex);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_restart_with_the_same_state_keeps_the_ca_root_and_the_admin_credential() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let token = cp.admin_token().to_owned();
    let version = cp.version();
    cp.shutdown().await;

    let cp = fx.start().await;
    assert_eq!(cp.admin_token(), token);
    assert!(
        cp.version() > version,
        "the version keeps increasing across restarts"
    );
    // The SVID issued before the restart still authenticates: same CA.
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let (_, csr) = key_and_csr(WEB);
    let resp = sign(&ch, "shop/web", csr, None).await.unwrap();
    let root = &bundles.roots(&TrustDomain::new("td.test").unwrap())[0];
    assert_eq!(resp.bundles["td.test"].der, vec![root.as_ref().to_vec()]);
    let again = TrustBundleSet::from_json(
        &std::fs::read_to_string(fx.state.join("proxies/shop/web/bundle.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(again, bundles);
    cp.shutdown().await;
}

#[tokio::test]
async fn an_invalid_config_folder_at_startup_is_fatal_and_names_file_and_field() {
    let fx = Fixture::new();
    fx.edit(
        "policies.yaml",
        &POLICIES.replace("mode: STRICT", "mode: STRICTEST"),
    );
    let e = fx.try_start().await.unwrap_err().to_string();
    assert!(e.contains("policies.yaml"), "{e}");
    assert!(e.contains("spec.mtls.mode"), "{e}");
    assert!(e.contains("PeerAuthentication istio-system/default"), "{e}");
}
