//! trustmesh's per-workload proxy (a sidecar): it owns the workload's key and SPIFFE
//! certificate and renews it; inbound it terminates mutual TLS, enforces PeerAuthentication
//! and AuthorizationPolicy and forwards to the app; outbound it originates mutual TLS per
//! DestinationRule over pooled connections; it serves admin, health, metrics and the SPIFFE
//! Workload API.
//!
//! Modules: [`app`] (the composition root: `build(ProxyOptions) -> Running`), [`state`]
//! (what every part shares), [`identity`] (key, CSR, `Ca.Sign`, renewal), [`discovery`] (the
//! config stream into a `MeshView`), [`control`] (the TLS channel to the control plane),
//! [`inbound`] (service ports), [`outbound`] (the app's HTTP proxy into the mesh, 15001),
//! [`admin`] (admin, health, metrics endpoints), [`metrics`],
//! [`workload_api`], [`clock`] (injected time and jitter), [`demo_app`] (the app `up` runs
//! behind a proxy).
//!
//! The proxy never links the YAML loader or Kubernetes: its config arrives from the control
//! plane as resources it validates into a `Snapshot` with `trustmesh-core`.

pub mod admin;
pub mod app;
pub mod clock;
pub mod control;
pub mod demo_app;
pub mod discovery;
mod hop_by_hop;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod state;
pub mod workload_api;
