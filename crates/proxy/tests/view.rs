//! Compiling pushed configs into views: a push that leaves the trust bundles as they are keeps
//! the inbound TLS config in force — and with it the verifier's cache of peer chains already
//! verified — while a push with other bundles gets a new one that trusts exactly them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its location

mod mesh_support;

use std::sync::Arc;

use mesh_support::*;
use serde_json::json;
use trustmesh_proxy::clock::Clock;
use trustmesh_proxy::discovery::compile_view;
use trustmesh_proxy::state::Shared;

#[test]
fn same_bundles_keep_the_inbound_tls_config_other_bundles_replace_it() {
    let ca = TestCa::new("cluster.local");
    let other = TestCa::new("cluster.local");
    let shared = Shared::new("default/server");
    shared.set_identity(ca.identity("default", "server"));
    let resources = vec![workload_entry(
        "default",
        "server",
        ip([127, 0, 0, 1]),
        "server",
        &[("http", 8080)],
        json!({}),
    )];
    let clock = Clock::system();
    let push = |version, bundles: &trustmesh_pki::TrustBundleSet| {
        compile_view(
            &shared,
            &update("default/server", version, resources.clone(), bundles, 0),
            &ca.bundle(),
            &clock,
        )
        .unwrap()
    };

    let v1 = push(1, &ca.bundle());
    let tls1 = v1.server_tls.clone();
    shared.set_view(v1);
    let v2 = push(2, &ca.bundle());
    assert_eq!(v2.version, 2);
    assert!(
        Arc::ptr_eq(&tls1, &v2.server_tls),
        "a push with the same bundles must keep the TLS config (and its verifier cache)"
    );
    shared.set_view(v2);

    let v3 = push(3, &other.bundle());
    assert!(
        !Arc::ptr_eq(&tls1, &v3.server_tls),
        "other bundles need a new verifier"
    );
    assert_eq!(*v3.bundles, other.bundle());
}
