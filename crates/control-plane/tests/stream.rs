//! The config stream and the config watch (docs/mesh-runtime.md, "Config stream"), in
//! process: initial update, a new version within a second of a policy edit, a broken file that
//! keeps the last snapshot and is reported with file and field, rotation requests, and
//! refusals for the wrong identity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tonic::Code;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn the_stream_sends_the_config_at_once_and_a_new_version_within_a_second_of_an_edit() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let mut s = stream(&ch, "shop/web").await.unwrap();

    let first = next_update(&mut s, SECOND).await;
    assert_eq!(first.version, cp.version());
    assert_eq!(first.rotation, 0);
    assert!(first.bundles.contains_key("td.test"));
    let cfg = trustmesh_api::ProxyConfig::from_json(&first.config_json).unwrap();
    assert_eq!(cfg.workload, "shop/web");
    assert_eq!(
        resource_names(&first),
        [
            "MeshConfig /mesh",
            "PeerAuthentication istio-system/default",
            "AuthorizationPolicy shop/db-access",
            "WorkloadEntry shop/db",
            "WorkloadEntry shop/web",
        ]
    );
    let status = get_json(&cp, "/v1/status").await;
    assert_eq!(status["connectedProxies"], 1);
    assert_eq!(status["proxies"][0]["workload"], "shop/web");

    // An operator edits a policy: web may now also reach db from the gateway namespace.
    let edited = POLICIES.replace(
        "principals: [\"td.test/ns/shop/sa/web\"]",
        "principals: [\"td.test/ns/shop/sa/web\", \"td.test/ns/edge/sa/gateway\"]",
    );
    let t = Instant::now();
    fx.edit("policies.yaml", &edited);
    let second = next_update(&mut s, SECOND).await;
    let took = t.elapsed();
    assert!(took < SECOND, "update took {took:?}");
    assert_eq!(second.version, first.version + 1);
    let cfg = String::from_utf8(second.config_json.clone()).unwrap();
    assert!(cfg.contains("td.test/ns/edge/sa/gateway"), "{cfg}");

    // A new policy file in a new folder (recursive watch) arrives the same way.
    std::fs::create_dir_all(fx.config.join("extra")).unwrap();
    std::fs::write(
        fx.config.join("extra/deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}\n",
    )
    .unwrap();
    let third = next_update(&mut s, 2 * SECOND).await;
    assert_eq!(third.version, second.version + 1);
    assert!(resource_names(&third).contains(&"AuthorizationPolicy shop/deny-admin".to_owned()));
    cp.shutdown().await;
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_snapshot_and_status_names_file_and_field() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let mut s = stream(&ch, "shop/web").await.unwrap();
    let first = next_update(&mut s, SECOND).await;

    fx.edit(
        "policies.yaml",
        &POLICIES.replace("action: ALLOW", "action: ALLOW\n  rulez: []"),
    );
    eventually(5 * SECOND, "the reload is rejected", || async {
        get_json(&cp, "/v1/status").await["lastReload"]["result"] == "rejected"
    })
    .await;
    let status = get_json(&cp, "/v1/status").await;
    assert_eq!(status["version"], first.version, "{status}");
    let err = &status["lastReload"]["errors"][0];
    assert!(
        err["file"].as_str().unwrap().ends_with("policies.yaml"),
        "{status}"
    );
    assert_eq!(err["field"], "spec.rulez", "{status}");
    assert_eq!(
        err["resource"], "AuthorizationPolicy shop/db-access",
        "{status}"
    );
    assert!(err["line"].as_u64().is_some(), "{status}");
    // The running snapshot is the old one, and proxies were sent nothing.
    let snap = get_json(&cp, "/v1/snapshot").await;
    assert_eq!(snap["authorizationPolicies"].as_array().unwrap().len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.message())
            .await
            .is_err(),
        "no update for a rejected config"
    );
    let (_, metrics) = http(cp.admin_addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("trustmesh_control_plane_config_reloads_total{result=\"rejected\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("trustmesh_control_plane_config_last_reload_successful 0\n"));

    // Fixed: accepted again, the stream gets the next version.
    fx.edit(
        "policies.yaml",
        &POLICIES.replace("mode: STRICT", "mode: PERMISSIVE"),
    );
    let next = next_update(&mut s, 2 * SECOND).await;
    assert_eq!(next.version, first.version + 1);
    let status = get_json(&cp, "/v1/status").await;
    assert_eq!(status["lastReload"]["result"], "accepted");
    assert_eq!(status["lastReload"]["errors"], json!([]));
    cp.shutdown().await;
}

#[tokio::test]
async fn rotate_bumps_rotation_on_that_workloads_stream_only() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let (db, _) = bootstrap(&fx, &cp, "shop/db", DB).await;
    let web_ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let db_ch = channel(cp.grpc_addr, &bundles, Some(&db)).await.unwrap();
    let mut ws = stream(&web_ch, "shop/web").await.unwrap();
    let mut ds = stream(&db_ch, "shop/db").await.unwrap();
    let w0 = next_update(&mut ws, SECOND).await;
    next_update(&mut ds, SECOND).await;

    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/rotate",
        Some(cp.admin_token()),
        Some(json!({"workloads": ["shop/web"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let w1 = next_update(&mut ws, SECOND).await;
    assert_eq!(w1.rotation, w0.rotation + 1);
    assert_eq!(w1.version, w0.version, "a rotation is not a config change");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ds.message())
            .await
            .is_err(),
        "db was not asked to rotate"
    );

    // --all: both.
    let (status, _) = http(
        cp.admin_addr,
        "POST",
        "/v1/rotate",
        Some(cp.admin_token()),
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_update(&mut ws, SECOND).await.rotation, w0.rotation + 2);
    assert_eq!(next_update(&mut ds, SECOND).await.rotation, 1);

    // Unknown names: nothing rotates.
    let (status, body) = http(
        cp.admin_addr,
        "POST",
        "/v1/rotate",
        Some(cp.admin_token()),
        Some(json!({"workloads": ["shop/web", "shop/ghost"]})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("shop/ghost"), "{body}");
    let workloads = get_json(&cp, "/v1/workloads").await;
    let web_row = workloads["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web_row["rotation"], w0.rotation + 2);
    assert_eq!(web_row["connected"], true);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_stream_needs_the_workloads_own_svid() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (web, bundles) = bootstrap(&fx, &cp, "shop/web", WEB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&web)).await.unwrap();
    let e = stream(&ch, "shop/db").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let anonymous = channel(cp.grpc_addr, &bundles, None).await.unwrap();
    let e = stream(&anonymous, "shop/web").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let status = get_json(&cp, "/v1/status").await;
    assert_eq!(status["connectedProxies"], 0);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_when_the_workload_leaves_the_config() {
    let fx = Fixture::new();
    let cp = fx.start().await;
    let (db, bundles) = bootstrap(&fx, &cp, "shop/db", DB).await;
    let ch = channel(cp.grpc_addr, &bundles, Some(&db)).await.unwrap();
    let mut s = stream(&ch, "shop/db").await.unwrap();
    next_update(&mut s, SECOND).await;
    let web_only = WORKLOADS.split("---").next().unwrap().to_owned();
    fx.edit("workloads.yaml", &web_only);
    let end = tokio::time::timeout(2 * SECOND, s.message()).await.unwrap();
    let e = end.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("no longer in the config"),
        "{}",
        e.message()
    );
    eventually(SECOND, "the stream is no longer counted", || async {
        get_json(&cp, "/v1/status").await["connectedProxies"] == 0
    })
    .await;
    cp.shutdown().await;
}
