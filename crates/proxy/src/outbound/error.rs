//! [`OutboundError`]: every way an outbound request or tunnel fails, with the HTTP status the
//! app receives and Envoy's response flag for it.
//!
//! A failure becomes a short plain-text response whose body is the error's one-line
//! `Display`, so the app (and the person reading `curl -v`) learns which host, port and peer
//! it concerns. What is not here: logging and metrics, done where the error is answered.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// Why the outbound proxy could not carry a request or tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The request is not something an HTTP proxy can forward (no absolute URI, bad CONNECT
    /// target, unsupported scheme).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// No config was pushed to this proxy yet.
    #[error("no mesh configuration received yet")]
    NoConfig,
    /// Mesh mTLS is needed but the proxy holds no workload certificate yet.
    #[error("{host}:{port}: no workload certificate yet, cannot originate mTLS")]
    NoIdentity {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
    },
    /// No ServiceEntry visible to this workload declares the host.
    #[error("unknown host {host}: no ServiceEntry visible to this workload declares it")]
    UnknownHost {
        /// The host as requested.
        host: String,
    },
    /// The ServiceEntry exists but has no such port.
    #[error("{host}: port {port} is not a port of ServiceEntry {service_entry}")]
    UnknownPort {
        /// Service host.
        host: String,
        /// The port requested.
        port: u16,
        /// `ns/name` of the ServiceEntry.
        service_entry: String,
    },
    /// The service has no endpoint (Envoy: "no healthy upstream", flag UH).
    #[error("no healthy upstream for {host}:{port}")]
    NoEndpoints {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
    },
    /// Secure naming leaves no identity that may serve the service.
    #[error("{host}:{port}: no SPIFFE identity is allowed to serve it ({reason})")]
    NoAllowedIdentity {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// Why the list is empty.
        reason: String,
    },
    /// A circuit breaker of `connectionPool` tripped (Envoy flag UO).
    #[error("overflow: {what} to {host}:{port} reached its limit of {limit} ({setting})")]
    Overflow {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// What is limited, e.g. "active requests".
        what: &'static str,
        /// The DestinationRule field that sets it.
        setting: &'static str,
        /// The limit.
        limit: u32,
    },
    /// The TCP connect (or the wait for a connection slot) exceeded `connectTimeout`.
    #[error("connect to {peer} for {host}:{port} timed out after {}ms", timeout.as_millis())]
    ConnectTimeout {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The endpoint.
        peer: String,
        /// `tcp.connectTimeout`.
        timeout: Duration,
    },
    /// The TCP connect failed.
    #[error("connect to {peer} for {host}:{port} failed: {reason}")]
    Connect {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The endpoint.
        peer: String,
        /// The OS error.
        reason: String,
    },
    /// The TLS handshake failed (including secure naming: the server presented an identity
    /// not allowed for the service).
    #[error("TLS handshake with {peer} for {host}:{port} failed: {reason}")]
    Tls {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The endpoint.
        peer: SocketAddr,
        /// rustls' reason, with the SPIFFE ID seen and the ones expected.
        reason: String,
    },
    /// The DestinationRule's TLS settings cannot be used (unreadable file, unsupported field).
    #[error("{host}:{port}: DestinationRule tls settings unusable: {reason}")]
    TlsConfig {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP/1.1 or HTTP/2 handshake on a fresh connection failed.
    #[error("HTTP handshake with {peer} for {host}:{port} failed: {reason}")]
    Handshake {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The endpoint.
        peer: SocketAddr,
        /// hyper's reason.
        reason: String,
    },
    /// The upstream reset or closed before sending response headers (Envoy flag UC/UR).
    #[error("upstream {peer} for {host}:{port} failed before response headers: {reason}")]
    Upstream {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The endpoint.
        peer: SocketAddr,
        /// hyper's reason.
        reason: String,
    },
    /// The destination's DNS name did not resolve.
    #[error("{host}:{port}: cannot resolve endpoint {peer}: {reason}")]
    Dns {
        /// Service host.
        host: String,
        /// Service port.
        port: u16,
        /// The name looked up.
        peer: String,
        /// The resolver's reason.
        reason: String,
    },
}

impl OutboundError {
    /// The status the app receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            // The contract: "Unknown host → 502 with a one-line reason naming the host".
            Self::UnknownHost { .. } | Self::UnknownPort { .. } => StatusCode::BAD_GATEWAY,
            // Envoy answers every upstream connection failure, TLS failure and circuit
            // breaker overflow with 503.
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's response flag (`%RESPONSE_FLAGS%`, the `response_flags` metric label).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "-",
            Self::NoConfig | Self::UnknownHost { .. } | Self::UnknownPort { .. } => "NR",
            Self::NoEndpoints { .. } => "UH",
            Self::Overflow { .. } => "UO",
            Self::Upstream { .. } => "UC",
            Self::NoIdentity { .. }
            | Self::NoAllowedIdentity { .. }
            | Self::ConnectTimeout { .. }
            | Self::Connect { .. }
            | Self::Tls { .. }
            | Self::TlsConfig { .. }
            | Self::Handshake { .. }
            | Self::Dns { .. } => "UF",
        }
    }

    /// The service host the failure concerns, if it got that far.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::BadRequest { .. } | Self::NoConfig => None,
            Self::UnknownHost { host }
            | Self::NoIdentity { host, .. }
            | Self::UnknownPort { host, .. }
            | Self::NoEndpoints { host, .. }
            | Self::NoAllowedIdentity { host, .. }
            | Self::Overflow { host, .. }
            | Self::ConnectTimeout { host, .. }
            | Self::Connect { host, .. }
            | Self::Tls { host, .. }
            | Self::TlsConfig { host, .. }
            | Self::Handshake { host, .. }
            | Self::Upstream { host, .. }
            | Self::Dns { host, .. } => Some(host),
        }
    }

    /// Whether a fresh attempt on another endpoint may succeed: the request never left this
    /// proxy because no connection could be made.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::Connect { .. }
                | Self::Tls { .. }
                | Self::Handshake { .. }
                | Self::Dns { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_flags_follow_envoy() {
        let unknown = OutboundError::UnknownHost {
            host: "nope.svc".into(),
        };
        assert_eq!(unknown.status(), StatusCode::BAD_GATEWAY);
        assert!(unknown.to_string().contains("nope.svc"));
        let overflow = OutboundError::Overflow {
            host: "a".into(),
            port: 80,
            what: "active requests",
            setting: "http.http2MaxRequests",
            limit: 1,
        };
        assert_eq!(overflow.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overflow.response_flag(), "UO");
        let bad = OutboundError::BadRequest { reason: "x".into() };
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(!bad.is_connect_failure());
        let t = OutboundError::ConnectTimeout {
            host: "a".into(),
            port: 80,
            peer: "127.0.0.1:1".into(),
            timeout: Duration::from_millis(250),
        };
        assert!(t.is_connect_failure());
        assert_eq!(
            t.to_string(),
            "connect to 127.0.0.1:1 for a:80 timed out after 250ms"
        );
    }
}
