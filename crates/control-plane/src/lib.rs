//! trustmesh's control plane: it reads the config folder into one validated snapshot and
//! keeps it current, runs a CA per trust domain from the state folder, signs workload CSRs,
//! streams each proxy the part of the snapshot it needs, serves the admin API and metrics,
//! and runs the cert-manager controller. The contract it implements is
//! `docs/mesh-runtime.md` (ports, state folder, bootstrap, config stream, admin API).
//!
//! - [`app`]: the composition root, [`app::build`] → [`app::Running`]; listeners, folders and
//!   clock are injected, so tests run it in process on port 0.
//! - [`tokens`]: one-time join tokens (`state/tokens/`) and the admin credential
//!   (`state/admin.token`); [`bootstrap`]: what `trustmesh token create` does (a token plus the
//!   proxy's bootstrap bundle set).
//! - [`bundles`]: the trust bundles the control plane hands out.
//! - `mesh`: loading and reloading the config (with CAs and bundles) as one unit; `watch`:
//!   the folder watcher; `tls`: the control plane's own SVID and its TLS acceptor; `grpc`: the
//!   `Ca` and `Discovery` services; `admin`: the HTTP admin API; `metrics`: the catalogue of
//!   docs/metrics.md "Control plane" and its exposition; `certs`: the cert-manager
//!   controller loop.
//!
//! What does not live here: policy semantics (`trustmesh-core`), certificates and verifiers
//! (`trustmesh-pki`), the YAML loader (`trustmesh-config`), the proxy.

mod admin;
pub mod app;
pub mod bootstrap;
pub mod bundles;
mod certs;
pub mod clock;
mod error;
mod grpc;
mod mesh;
mod metrics;
mod state;
mod tls;
pub mod tokens;
mod watch;

pub use app::{ControlPlaneConfig, Running, build};
pub use clock::{Clock, SystemClock};
pub use error::{ConfigIssue, ControlPlaneError};
pub use tls::control_plane_identity;
