//! trustmesh's pure core: the mesh's rules with no I/O.
//!
//! What lives here: SPIFFE identities ([`identity`]), the typed model of the Istio and
//! cert-manager resources trustmesh reads ([`model`]), their admission validation
//! ([`validate`]), the validated [`snapshot::Snapshot`], and certificate renewal times
//! ([`renewal`]). What does not: files, sockets, async runtimes, TLS, Kubernetes clients.
//! Everything here is tested in memory.

pub mod analyze;
pub mod authz;
pub mod destination;
pub mod duration;
pub mod identity;
pub mod model;
pub mod normalize;
pub mod peerauth;
pub mod renewal;
pub mod snapshot;
pub mod validate;

pub use identity::{IdError, SpiffeId, TrustDomain};
