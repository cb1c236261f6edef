//! [`ControlPlaneError`]: why the control plane could not start or a command could not
//! complete, and [`ConfigIssue`]: one reason a config (re)load was refused, naming file,
//! line, resource and field where the loader knows them.
//!
//! Per-request refusals are not errors here: the gRPC services answer them with a status
//! (`PermissionDenied`, `Unauthenticated`, ...), the admin API with an HTTP status.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Serialize;
use trustmesh_config::LoadError;
use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::CaError;
use trustmesh_pki::fsutil::FsError;

use crate::tokens::TokenError;

/// Why the control plane (or `trustmesh token create`) failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The config folder is not valid: every issue, one per line.
    #[error("config {} rejected:\n{}", dir.display(), ConfigIssue::lines(issues))]
    Config {
        /// The config folder.
        dir: PathBuf,
        /// What is wrong, each naming its file.
        issues: Vec<ConfigIssue>,
    },
    /// A folder of the state could not be created or read.
    #[error("state folder {}: {source}", path.display())]
    State {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A state file of the control plane exists but is not what it wrote.
    #[error("{}: {reason}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing a state file failed.
    #[error(transparent)]
    Write(#[from] FsError),
    /// A join token or the admin credential could not be created or read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The control plane's own SVID could not be issued.
    #[error("issuing the control plane's SVID {identity}: {source}")]
    OwnSvid {
        /// The identity it serves as.
        identity: SpiffeId,
        /// The CA's reason.
        #[source]
        source: CaError,
    },
    /// The control plane's identity could not be formed from the mesh settings.
    #[error(
        "control plane identity in trust domain {trust_domain}, namespace {namespace}: {reason}"
    )]
    Identity {
        /// The mesh's trust domain.
        trust_domain: TrustDomain,
        /// The root namespace.
        namespace: String,
        /// Why it is not a SPIFFE ID.
        reason: String,
    },
    /// The TLS server configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The config folder could not be watched.
    #[error("watching {}: {source}", path.display())]
    Watch {
        /// The folder.
        path: PathBuf,
        /// notify's reason.
        #[source]
        source: notify::Error,
    },
    /// A listener's address could not be read.
    #[error("{what} listener: {source}")]
    Listener {
        /// Which listener (`gRPC`, `admin`).
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A server task stopped on its own.
    #[error("{what} stopped: {reason}")]
    Stopped {
        /// Which task.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The workload named is not a WorkloadEntry of the config.
    #[error("workload {workload} is not a WorkloadEntry of the config (expected NAMESPACE/NAME)")]
    UnknownWorkload {
        /// As given.
        workload: String,
    },
}

/// One reason a config was refused, as `/v1/status` reports it and the log prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigIssue {
    /// The file concerned.
    pub file: String,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// `Kind ns/name`, when the issue concerns one resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Field path, when the issue concerns one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The whole issue on one line: `file:line: Kind ns/name: field: message`.
    pub message: String,
}

impl ConfigIssue {
    /// An issue about a file as a whole (a bundle file, a CA file).
    pub fn file(file: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        let file = file.into().display().to_string();
        Self {
            message: format!("{file}: {message}"),
            file,
            line: None,
            resource: None,
            field: None,
        }
    }

    fn lines(issues: &[ConfigIssue]) -> String {
        issues
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&LoadError> for ConfigIssue {
    fn from(e: &LoadError) -> Self {
        let (resource, field) = match e {
            LoadError::Schema {
                resource, field, ..
            }
            | LoadError::Invalid {
                resource, field, ..
            } => (Some(resource.clone()), Some(field.clone())),
            LoadError::Type { name, .. } => (name.clone(), None),
            _ => (None, None),
        };
        Self {
            file: e.file(),
            line: e.line(),
            resource,
            field,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_keep_file_line_resource_and_field() {
        let e = LoadError::Schema {
            file: "policies.yaml".into(),
            line: 7,
            resource: "AuthorizationPolicy shop/allow".into(),
            field: "spec.rulez".into(),
            message: "unknown field `rulez`".into(),
        };
        let i = ConfigIssue::from(&e);
        assert_eq!(i.file, "policies.yaml");
        assert_eq!(i.line, Some(7));
        assert_eq!(
            i.resource.as_deref(),
            Some("AuthorizationPolicy shop/allow")
        );
        assert_eq!(i.field.as_deref(), Some("spec.rulez"));
        assert_eq!(
            i.message,
            "policies.yaml:7: AuthorizationPolicy shop/allow: spec.rulez: unknown field `rulez`"
        );
    }
}
