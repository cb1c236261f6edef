//! The admin API (docs/mesh-runtime.md, "Control-plane admin API"), in process: the
//! credential is required, tokens made over it bootstrap a proxy, cert-manager Certificates
//! are issued at start and re-issued on request, metrics are served without credential.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use trustmesh_pki::TrustBundleSet;

#[tokio::test]
async fn the_admin_api_refuses_requests_without_the_credential() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let file = std::fs::read_to_string(fx.state.join("admin.token")).unwrap();
    assert_eq!(file.trim(), cp.admin_token());

    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/workloads"),
        ("GET", "/v1/snapshot"),
        ("GET", "/v1/certificates"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/rotate"),
    ] {
        let (status, body) = http(cp.admin_addr, method, path, None, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let (status, _) = http(cp.admin_addr, method, path, Some("wrong"), None).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    // Without a credential: health and metrics only.
    let (status, body) = http(cp.admin_addr, "GET", "/healthz", None, None).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    let (status, body) = http(cp.admin_addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE trustmesh_control_plane_connected_proxies gauge"),
        "{body}"
    );

    // With it.
    let status = get_json(&cp, "/v1/status").await;
    assert_eq!(status["version"], cp.version());
    assert_eq!(status["lastReload"]["result"], "accepted");
    assert_eq!(status["controlPlane"]["identity"], CONTROL_PLANE);
    assert_eq!(status["trustDomains"], json!(["td.test"]));
    let snap = get_json(&cp, "/v1/snapshot").await;
    assert_eq!(snap["mesh"]["trustDomain"], "td.test");
    let (status, _) = http(
        cp.admin_addr,
        "GET",
        "/v1/nope",
        Some(cp.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        cp.admin_addr,
        "DELETE",
        "/v1/status",
        Some(cp.admin_token()),
        None,
    )
    .await;
    assert_eq!(status, 405);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_token_made_over_the_admin_api_bootstraps_its_workload() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/tokens",
        Some(cp.admin_token()),
        Some(json!({"workload": "shop/db", "ttlSeconds": 600})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["workload"], "shop/db");
    assert_eq!(v["identity"], DB);
    let token = v["token"].as_str().unwrap();
    let bundles = TrustBundleSet::from_json(
        &std::fs::read_to_string(v["bundleFile"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let ch = channel(cp.grpc_addr, &bundles, None).await.unwrap();
    let (_, csr) = key_and_csr(DB);
    sign(&ch, "shop/db", csr, Some(token)).await.unwrap();

    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/tokens",
        Some(cp.admin_token()),
        Some(json!({"workload": "shop/ghost"})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("shop/ghost"));
    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/tokens",
        Some(cp.admin_token()),
        Some(json!({"workload": "shop/db", "ttl": 5})),
    )
    .await;
    assert_eq!(status, 400, "unknown field: {body}");
    cp.shutdown().await;
}

#[tokio::test]
async fn certificates_are_issued_at_start_and_reissued_on_rotate() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    eventually(
        std::time::Duration::from_secs(5),
        "shop-tls is issued",
        || async { get_json(&cp, "/v1/certificates").await["certificates"][0]["ready"] == "True" },
    )
    .await;
    let before = get_json(&cp, "/v1/certificates").await["certificates"][0].clone();
    assert_eq!(before["name"], "shop-tls");
    assert_eq!(before["revision"], 1);
    assert!(fx.state.join("secrets/shop/shop-tls/tls.crt").exists());

    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/rotate",
        Some(cp.admin_token()),
        Some(json!({"certificates": ["shop/shop-tls"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["certificates"][0]["reason"], "ManuallyTriggered",
        "{body}"
    );
    assert_eq!(v["certificates"][0]["action"], "issued", "{body}");
    let after = get_json(&cp, "/v1/certificates").await["certificates"][0].clone();
    assert_eq!(after["revision"], 2);
    assert_ne!(after["serial"], before["serial"]);

    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/rotate",
        Some(cp.admin_token()),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    cp.shutdown().await;
}
