//! The policy loader and compiler on arbitrary YAML: `trustmesh_config::load_str` parses one
//! file's text (without validation, so the compiler sees inputs validation would reject);
//! every AuthorizationPolicy and PeerAuthentication is then compiled for a workload and a
//! few requests are decided. Nothing may panic.

#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{AuthzSettings, HttpRequest, PolicySet, Request, evaluate_with_mode};
use trustmesh_core::model::Resource;
use trustmesh_core::peerauth::resolve;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = trustmesh_config::load_str("fuzz.yaml", text) else {
        return;
    };
    let mut aps = Vec::new();
    let mut pas = Vec::new();
    for r in resources {
        match r.object {
            Resource::AuthorizationPolicy(p) => aps.push(p),
            Resource::PeerAuthentication(p) => pas.push(p),
            _ => {}
        }
    }
    let settings = AuthzSettings::default();
    let set = PolicySet::new(&aps, &settings);
    let peers = [
        None,
        SpiffeId::from_principal("cluster.local/ns/foo/sa/sleep").ok(),
    ];
    for ns in ["foo", "default", "istio-system"] {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "httpbin".to_owned())].into();
        let authz = set.for_workload(ns, &labels);
        let mtls = resolve(&pas, "istio-system", ns, &labels);
        for peer in &peers {
            for http in [
                None,
                Some(HttpRequest {
                    method: "GET".into(),
                    target: "/a/../admin?x=%2e".into(),
                    host: Some("httpbin.foo:8000".into()),
                    headers: vec![("x-token".into(), "admin".into())],
                }),
            ] {
                let req = Request {
                    peer: peer.clone(),
                    source_ip: IpAddr::from([10, 0, 0, 1]),
                    dest_ip: IpAddr::from([10, 0, 0, 2]),
                    dest_port: 8080,
                    sni: Some("outbound_.8000_._.httpbin.foo.svc.cluster.local".into()),
                    http,
                };
                let _ = evaluate_with_mode(&mtls, &authz, &req);
            }
        }
    }
});
