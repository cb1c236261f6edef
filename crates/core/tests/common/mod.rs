//! Helpers shared by the semantics tests: resources from JSON (the core crate has no YAML
//! reader), requests by builder, and one-call decisions.
#![allow(dead_code)] // Each test crate uses a different subset.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use trustmesh_core::SpiffeId;
use trustmesh_core::authz::{AuthzSettings, Decision, HttpRequest, Request, compile};
use trustmesh_core::model::{AuthorizationPolicy, DestinationRule, PeerAuthentication};

/// An AuthorizationPolicy `ns/name` with `spec`.
pub fn ap(ns: &str, name: &str, spec: Value) -> AuthorizationPolicy {
    ap_meta(json!({"name": name, "namespace": ns}), spec)
}

/// An AuthorizationPolicy with full `metadata`.
pub fn ap_meta(metadata: Value, spec: Value) -> AuthorizationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap()
}

/// A PeerAuthentication `ns/name` with `spec`, created at `created` (RFC 3339) if given.
pub fn pa(ns: &str, name: &str, created: Option<&str>, spec: Value) -> PeerAuthentication {
    let mut meta = json!({"name": name, "namespace": ns});
    if let Some(t) = created {
        meta["creationTimestamp"] = json!(t);
    }
    serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": meta,
        "spec": spec,
    }))
    .unwrap()
}

/// A DestinationRule `ns/name` with `spec`, created at `created` if given.
pub fn dr(ns: &str, name: &str, created: Option<&str>, spec: Value) -> DestinationRule {
    let mut meta = json!({"name": name, "namespace": ns});
    if let Some(t) = created {
        meta["creationTimestamp"] = json!(t);
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": meta,
        "spec": spec,
    }))
    .unwrap()
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn peer(principal: Option<&str>) -> Option<SpiffeId> {
    principal.map(|p| SpiffeId::from_principal(p).unwrap())
}

/// A TCP connection to port 8080 of 10.0.0.2 from 10.0.0.1.
pub fn tcp(principal: Option<&str>) -> Request {
    Request {
        peer: peer(principal),
        source_ip: IpAddr::from([10, 0, 0, 1]),
        dest_ip: IpAddr::from([10, 0, 0, 2]),
        dest_port: 8080,
        sni: None,
        http: None,
    }
}

/// An HTTP request `method target` on the same connection as [`tcp`].
pub fn http(principal: Option<&str>, method: &str, target: &str) -> Request {
    Request {
        http: Some(HttpRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            host: Some("svc.foo.svc.cluster.local".to_owned()),
            headers: Vec::new(),
        }),
        ..tcp(principal)
    }
}

/// Builder-style tweaks.
pub trait With: Sized {
    fn port(self, p: u16) -> Self;
    fn src(self, ip: &str) -> Self;
    fn dst(self, ip: &str) -> Self;
    fn host(self, h: &str) -> Self;
    fn no_host(self) -> Self;
    fn header(self, k: &str, v: &str) -> Self;
    fn sni(self, s: &str) -> Self;
}

impl With for Request {
    fn port(mut self, p: u16) -> Self {
        self.dest_port = p;
        self
    }
    fn src(mut self, ip: &str) -> Self {
        self.source_ip = ip.parse().unwrap();
        self
    }
    fn dst(mut self, ip: &str) -> Self {
        self.dest_ip = ip.parse().unwrap();
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.http.as_mut().unwrap().host = Some(h.to_owned());
        self
    }
    fn no_host(mut self) -> Self {
        self.http.as_mut().unwrap().host = None;
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.http
            .as_mut()
            .unwrap()
            .headers
            .push((k.to_owned(), v.to_owned()));
        self
    }
    fn sni(mut self, s: &str) -> Self {
        self.sni = Some(s.to_owned());
        self
    }
}

/// The decision for a workload in `ns` with `wl_labels`, default mesh settings.
pub fn decide(
    policies: &[AuthorizationPolicy],
    ns: &str,
    wl_labels: &[(&str, &str)],
    req: &Request,
) -> Decision {
    decide_with(&AuthzSettings::default(), policies, ns, wl_labels, req)
}

/// As [`decide`] with explicit settings.
pub fn decide_with(
    settings: &AuthzSettings,
    policies: &[AuthorizationPolicy],
    ns: &str,
    wl_labels: &[(&str, &str)],
    req: &Request,
) -> Decision {
    compile(policies, ns, &labels(wl_labels), settings).evaluate(req)
}

/// One table row: the sentence (or source) it checks, the policies, the request, and
/// whether it is allowed. The workload is `foo` / `app: svc` unless a test says otherwise.
pub struct Case {
    pub quote: &'static str,
    pub policies: Vec<AuthorizationPolicy>,
    pub req: Request,
    pub allowed: bool,
}

/// Runs every case against the workload `foo`/`app=svc`, naming the failing sentence.
pub fn run(cases: Vec<Case>) {
    for (i, c) in cases.into_iter().enumerate() {
        let d = decide(&c.policies, "foo", &[("app", "svc")], &c.req);
        assert_eq!(
            d.allowed, c.allowed,
            "case {i}: {}\nrequest: {:?}\ndecision: {d:?}",
            c.quote, c.req
        );
    }
}

/// `Case` shorthand.
pub fn case(
    quote: &'static str,
    policies: Vec<AuthorizationPolicy>,
    req: Request,
    allowed: bool,
) -> Case {
    Case {
        quote,
        policies,
        req,
        allowed,
    }
}

/// Common principals.
pub const SLEEP: &str = "cluster.local/ns/foo/sa/sleep";
pub const OTHER: &str = "cluster.local/ns/bar/sa/other";
