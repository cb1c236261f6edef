//! Why a mutual-TLS handshake failed, as `trustmesh_tls_handshake_failures_total` names it:
//! rustls' errors (including the alert the peer sent), the SPIFFE verifiers' errors
//! (`trustmesh_pki::VerifyError`, which travel inside rustls'), and the inbound listener's
//! own refusals (plaintext on a STRICT port, the 10 s handshake timeout).
//!
//! docs/metrics.md: "failed handshakes by reason: `no_client_certificate`, `unknown_ca`,
//! `expired`, `bad_identity` (a SPIFFE ID not allowed / not the one expected),
//! `bad_certificate` (anything else wrong with the certificate), `plaintext_rejected`
//! (plaintext on a STRICT port), `protocol` (not TLS, wrong version, decode error),
//! `timeout`, `other`".

use rustls::{AlertDescription, CertificateError};
use trustmesh_pki::VerifyError;

/// A failed handshake's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client presented no certificate (or the server says we presented none).
    NoClientCertificate,
    /// The certificate chains to no root of the bundles (or to no bundle at all).
    UnknownCa,
    /// A certificate of the chain is expired.
    Expired,
    /// A valid SVID, but not an identity allowed here (secure naming).
    BadIdentity,
    /// Anything else wrong with the certificate.
    BadCertificate,
    /// Plaintext on a STRICT port.
    PlaintextRejected,
    /// Not TLS, not TLS 1.3, undecodable, or TLS where the port takes only plaintext.
    Protocol,
    /// No finished handshake within the timeout.
    Timeout,
    /// Anything else (a reset mid-handshake, an I/O error).
    Other,
}

impl HandshakeFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadIdentity => "bad_identity",
            Self::BadCertificate => "bad_certificate",
            Self::PlaintextRejected => "plaintext_rejected",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// Every reason, for zero-valued series.
    pub const ALL: [Self; 9] = [
        Self::NoClientCertificate,
        Self::UnknownCa,
        Self::Expired,
        Self::BadIdentity,
        Self::BadCertificate,
        Self::PlaintextRejected,
        Self::Protocol,
        Self::Timeout,
        Self::Other,
    ];

    /// The reason in a handshake's I/O error (tokio-rustls wraps rustls' error in it).
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => Self::from_rustls(r),
            None => Self::Other,
        }
    }

    /// The reason in a rustls error.
    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        if let Some(v) = VerifyError::from_rustls(e) {
            return Self::from_verify(v);
        }
        match e {
            E::NoCertificatesPresented => Self::NoClientCertificate,
            E::InvalidCertificate(c) => Self::from_certificate(c),
            E::AlertReceived(a) => Self::from_alert(*a),
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::NoApplicationProtocol
            | E::DecryptError => Self::Protocol,
            _ => Self::Other,
        }
    }

    fn from_certificate(c: &CertificateError) -> Self {
        use CertificateError as C;
        match c {
            // A chain whose signature does not verify under the trust domain's root was not
            // issued by a CA we trust: webpki reports a CA that has the root's name but not
            // its key (another mesh's CA, a rotated root not yet in the bundle) this way.
            C::UnknownIssuer | C::BadSignature => Self::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => Self::Expired,
            C::NotValidForName | C::NotValidForNameContext { .. } => Self::BadIdentity,
            _ => Self::BadCertificate,
        }
    }

    /// The SPIFFE verifiers' reasons (those rustls carries as `CertificateError::Other`).
    fn from_verify(v: &VerifyError) -> Self {
        match v {
            VerifyError::NoCertificate => Self::NoClientCertificate,
            VerifyError::NoBundleForTrustDomain { .. }
            | VerifyError::EmptyBundle { .. }
            | VerifyError::UntrustedIssuer { .. } => Self::UnknownCa,
            VerifyError::Expired { .. } => Self::Expired,
            VerifyError::UnexpectedPeer { .. } => Self::BadIdentity,
            // Not an X509-SVID at all (no, several or a malformed URI SAN, a CA as leaf, a
            // leaf that can sign), or a chain that fails for another reason.
            _ => Self::BadCertificate,
        }
    }

    /// The alert the peer sent about our certificate or our handshake.
    fn from_alert(a: AlertDescription) -> Self {
        use AlertDescription as A;
        match a {
            A::CertificateRequired => Self::NoClientCertificate,
            A::UnknownCA => Self::UnknownCa,
            A::CertificateExpired => Self::Expired,
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateUnknown => Self::BadCertificate,
            A::ProtocolVersion
            | A::DecodeError
            | A::IllegalParameter
            | A::UnexpectedMessage
            | A::HandshakeFailure
            | A::InsufficientSecurity
            | A::NoApplicationProtocol
            | A::MissingExtension
            | A::UnsupportedExtension => Self::Protocol,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;
    use trustmesh_core::SpiffeId;
    use trustmesh_pki::Allowed;

    use super::*;

    #[test]
    fn rustls_and_spiffe_errors_map_to_the_documented_reasons() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let other = |v: VerifyError| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(v))))
        };
        let rows: Vec<(rustls::Error, HandshakeFailure)> = vec![
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeFailure::NoClientCertificate,
            ),
            (
                CertificateError::UnknownIssuer.into(),
                HandshakeFailure::UnknownCa,
            ),
            (CertificateError::Expired.into(), HandshakeFailure::Expired),
            (
                CertificateError::BadSignature.into(),
                HandshakeFailure::UnknownCa,
            ),
            (
                CertificateError::BadEncoding.into(),
                HandshakeFailure::BadCertificate,
            ),
            (
                other(VerifyError::UnexpectedPeer {
                    got: id.clone(),
                    expected: Allowed::Ids(vec![]),
                }),
                HandshakeFailure::BadIdentity,
            ),
            (
                other(VerifyError::NoBundleForTrustDomain {
                    id: id.clone(),
                    trust_domain: id.trust_domain(),
                }),
                HandshakeFailure::UnknownCa,
            ),
            (
                other(VerifyError::NoUriSan),
                HandshakeFailure::BadCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                HandshakeFailure::NoClientCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                HandshakeFailure::Protocol,
            ),
            (
                rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
                ),
                HandshakeFailure::Protocol,
            ),
            (rustls::Error::General("x".into()), HandshakeFailure::Other),
        ];
        for (e, want) in rows {
            assert_eq!(HandshakeFailure::from_rustls(&e), want, "{e:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            assert_eq!(HandshakeFailure::from_io(&io), want);
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(HandshakeFailure::from_io(&reset), HandshakeFailure::Other);
    }
}
