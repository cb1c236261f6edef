//! The wire between trustmesh's control plane and its proxies, and the SPIFFE Workload API.
//!
//! - [`mesh`]: generated gRPC code of `proto/mesh.proto` (`trustmesh.v1.Ca`,
//!   `trustmesh.v1.Discovery`), the control-plane protocol on port 15012.
//! - [`workload`]: generated gRPC code of the SPIFFE Workload API (`proto/workload.proto`,
//!   package-less as the standard requires), which each proxy serves on a Unix socket.
//! - [`ProxyConfig`]: what a `ProxyUpdate` carries as JSON — the resources one proxy needs.
//!   The proxy rebuilds a `Snapshot` from them with the same validation the control plane ran,
//!   so both sides evaluate policy with identical code and data.
//! - The port numbers and metadata keys both sides must agree on.
//!
//! What does not live here: certificates and TLS (`trustmesh-pki`), policy semantics
//! (`trustmesh-core`), servers and clients (`trustmesh-control-plane`, `trustmesh-proxy`).

use serde::{Deserialize, Deserializer, Serialize};
use trustmesh_core::model::{Kind, Resource};
use trustmesh_core::snapshot::{Sourced, SourcedResource};

/// Generated from `proto/mesh.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod mesh {
    tonic::include_proto!("trustmesh.v1");
}

/// Generated from `proto/workload.proto` (no package: method paths are
/// `/SpiffeWorkloadAPI/<Method>`).
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod workload {
    tonic::include_proto!("_");
}

/// Proxy admin: config dump, certificate, ready, log level (loopback only).
pub const PROXY_ADMIN_PORT: u16 = 15000;
/// Outbound: HTTP proxy (absolute-form requests and CONNECT).
pub const PROXY_OUTBOUND_PORT: u16 = 15001;
/// Proxy health: `/healthz/ready`.
pub const PROXY_HEALTH_PORT: u16 = 15021;
/// Proxy Prometheus metrics.
pub const PROXY_METRICS_PORT: u16 = 15090;
/// Control plane: CSR signing and config stream.
pub const CONTROL_PLANE_GRPC_PORT: u16 = 15012;
/// Control plane: metrics and admin API.
pub const CONTROL_PLANE_ADMIN_PORT: u16 = 15014;

/// gRPC metadata carrying a join token: `authorization: Bearer <token>`.
pub const AUTHORIZATION_METADATA: &str = "authorization";
/// SPIFFE Workload API: "All requests MUST include the metadata key `workload.spiffe.io`
/// with the value `true`".
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// The resources one proxy needs, as sent in `ProxyUpdate.config_json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `<namespace>/<WorkloadEntry name>` of the proxy this is for.
    pub workload: String,
    /// The resources, each a whole object with `apiVersion` and `kind`.
    #[serde(deserialize_with = "resources_from_json")]
    pub resources: Vec<Resource>,
}

impl ProxyConfig {
    /// Encodes as JSON for `ProxyUpdate.config_json`.
    pub fn to_json(&self) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(self).map_err(|e| ApiError::Encode(e.to_string()))
    }

    /// Decodes `ProxyUpdate.config_json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// The resources as `Snapshot::build` takes them, so the proxy validates and snapshots
    /// them with the same code the control plane ran. Pushed resources have no file of origin.
    pub fn into_sources(self) -> Vec<SourcedResource> {
        self.resources
            .into_iter()
            .map(|object| Sourced {
                origin: None,
                object,
            })
            .collect()
    }
}

fn resources_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Resource>, D::Error> {
    use serde::de::Error;
    let values = Vec::<serde_json::Value>::deserialize(d)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let kind = Kind::from_type_meta(
                v.get("apiVersion").and_then(|x| x.as_str()),
                v.get("kind").and_then(|x| x.as_str()),
            )
            .map_err(|e| D::Error::custom(format!("resources[{i}]: {e}")))?;
            Resource::deserialize_as(kind, v)
                .map_err(|e| D::Error::custom(format!("resources[{i}]: {e}")))
        })
        .collect()
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A `ProxyConfig` could not be serialized.
    #[error("encoding proxy config: {0}")]
    Encode(String),
    /// `config_json` is not a valid `ProxyConfig`.
    #[error("decoding proxy config: {0}")]
    Decode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_config_round_trips_every_kind_it_carries() {
        let json = br#"{"workload":"production/orders","resources":[
            {"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy",
             "metadata":{"name":"allow-nothing","namespace":"production"},"spec":{}},
            {"apiVersion":"security.istio.io/v1beta1","kind":"PeerAuthentication",
             "metadata":{"name":"default","namespace":"istio-system"},"spec":{"mtls":{"mode":"STRICT"}}},
            {"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry",
             "metadata":{"name":"orders","namespace":"production"},
             "spec":{"address":"127.0.1.3","serviceAccount":"orders","ports":{"http":8080}}}
        ]}"#;
        let cfg = ProxyConfig::from_json(json).unwrap();
        assert_eq!(cfg.resources.len(), 3);
        assert_eq!(cfg.resources[1].kind(), Kind::PeerAuthentication);
        let again = ProxyConfig::from_json(&cfg.to_json().unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused_with_their_index() {
        let bad_kind = br#"{"workload":"a/b","resources":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}]}"#;
        let e = ProxyConfig::from_json(bad_kind).unwrap_err().to_string();
        assert!(e.contains("resources[0]") && e.contains("Pod"), "{e}");
        let bad_field = br#"{"workload":"a/b","resources":[{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"x"},"spec":{"rulez":[]}}]}"#;
        let e = ProxyConfig::from_json(bad_field).unwrap_err().to_string();
        assert!(e.contains("rulez"), "{e}");
    }
}
