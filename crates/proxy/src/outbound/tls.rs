//! The rustls client configurations outbound connections use, and the handshake.
//!
//! - Mesh mTLS (`ISTIO_MUTUAL`, auto mTLS): [`Shared::client_tls`] — TLS 1.3, the current
//!   SVID as client certificate (resolved at each handshake, so a rotated SVID is used by the
//!   next connection), the server verified against the trust bundles and required to be one
//!   of the service's identities (secure naming). Session resumption is off: every
//!   connection is a full handshake that presents the *current* SVID and re-checks the
//!   peer's.
//! - `SIMPLE` / `MUTUAL`: roots, client chain and key from the DestinationRule's files,
//!   TLS 1.3 only, the server name (`sni` or the host) or one of `subjectAltNames` verified.
//!
//! What is not here: choosing the mode (`route`), pooling (`pool`).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use trustmesh_pki::{Allowed, TrustBundleSet, crypto_provider, verify::spiffe_id_of};

use super::error::OutboundError;
use super::route::{FileTls, MeshTls};
use crate::metrics::{Direction, HandshakeFailure, Metrics};
use crate::state::Shared;

/// ALPN between proxies with `h2UpgradePolicy: UPGRADE` (one multiplexed connection).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN between proxies with `h2UpgradePolicy: DO_NOT_UPGRADE` (keep-alive HTTP/1.1).
pub const ALPN_H1: &[&[u8]] = &[b"http/1.1"];
/// ALPN towards non-mesh TLS servers: either HTTP version.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// No ALPN: a CONNECT tunnel carries the app's own bytes.
pub const ALPN_NONE: &[&[u8]] = &[];

/// Which service a config is for, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRef<'a> {
    /// Service host.
    pub host: &'a str,
    /// Service port.
    pub port: u16,
}

impl ServiceRef<'_> {
    fn config_error(&self, reason: impl Into<String>) -> OutboundError {
        OutboundError::TlsConfig {
            host: self.host.to_owned(),
            port: self.port,
            reason: reason.into(),
        }
    }
}

/// The mesh mTLS config for `mesh` with `alpn`.
pub fn mesh_config(
    shared: &Arc<Shared>,
    bundles: Arc<TrustBundleSet>,
    mesh: &MeshTls,
    alpn: &[&[u8]],
    svc: ServiceRef<'_>,
) -> Result<Arc<ClientConfig>, OutboundError> {
    // `Shared::client_tls` turns resumption off: a resumed session would skip presenting the
    // (possibly rotated) SVID and re-verifying the peer's.
    shared
        .client_tls(bundles, Allowed::Ids(mesh.allowed.clone()), alpn)
        .map_err(|e| svc.config_error(e.to_string()))
}

async fn read_file(path: &str, what: &str, svc: ServiceRef<'_>) -> Result<Vec<u8>, OutboundError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| svc.config_error(format!("cannot read {what} {path}: {e}")))
}

/// The config for `SIMPLE` / `MUTUAL` from the rule's files.
pub async fn file_config(
    files: &FileTls,
    alpn: &[&[u8]],
    svc: ServiceRef<'_>,
) -> Result<Arc<ClientConfig>, OutboundError> {
    if let Some(name) = &files.credential_name {
        return Err(svc.config_error(format!(
            "credentialName {name:?} needs a Secret store; give caCertificates, \
             clientCertificate and privateKey files instead"
        )));
    }
    let mut roots = RootCertStore::empty();
    match &files.ca_certificates {
        Some(path) => {
            let pem = read_file(path, "caCertificates", svc).await?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| svc.config_error(format!("{path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| svc.config_error(format!("{path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(svc.config_error(format!("{path}: no certificate in the file")));
            }
        }
        None if files.insecure_skip_verify => {}
        None => {
            return Err(
                svc.config_error("caCertificates is required: this proxy trusts no system roots")
            );
        }
    }
    let verifier = Arc::new(FileServerVerifier {
        roots: Arc::new(roots),
        subject_alt_names: files.subject_alt_names.clone(),
        insecure_skip_verify: files.insecure_skip_verify,
    });
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| svc.config_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = if files.mutual {
        let (Some(cert_path), Some(key_path)) = (&files.client_certificate, &files.private_key)
        else {
            return Err(svc.config_error("MUTUAL needs clientCertificate and privateKey"));
        };
        let chain_pem = read_file(cert_path, "clientCertificate", svc).await?;
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| svc.config_error(format!("{cert_path}: {e}")))?;
        let key_pem = read_file(key_path, "privateKey", svc).await?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| svc.config_error(format!("{key_path}: {e}")))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| svc.config_error(e.to_string()))?
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Runs the client handshake on `tcp` within `timeout`; a mesh mTLS handshake (`mesh`) is
/// counted there, a failure with its reason.
pub async fn handshake(
    config: Arc<ClientConfig>,
    sni: &str,
    tcp: TcpStream,
    timeout: Duration,
    svc: ServiceRef<'_>,
    mesh: Option<&Metrics>,
) -> Result<TlsStream<TcpStream>, OutboundError> {
    let peer = tcp.peer_addr().map_err(|e| OutboundError::Connect {
        host: svc.host.to_owned(),
        port: svc.port,
        peer: "?".into(),
        reason: e.to_string(),
    })?;
    let tls_error = |reason: String| OutboundError::Tls {
        host: svc.host.to_owned(),
        port: svc.port,
        peer,
        reason,
    };
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|_| tls_error(format!("{sni:?} is not a valid TLS server name")))?;
    let failed = |reason| {
        if let Some(m) = mesh {
            m.handshake_failed(Direction::Outbound, reason);
        }
    };
    match tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp)).await {
        Ok(Ok(s)) => {
            if let Some(m) = mesh {
                m.handshake_succeeded(Direction::Outbound);
            }
            Ok(s)
        }
        Ok(Err(e)) => {
            failed(HandshakeFailure::from_io(&e));
            Err(tls_error(tls_reason(&e)))
        }
        Err(_) => {
            failed(HandshakeFailure::Timeout);
            Err(tls_error(format!(
                "no handshake within {}ms",
                timeout.as_millis()
            )))
        }
    }
}

/// The most specific reason in a handshake I/O error: the SPIFFE verification error when
/// the verifiers produced one (it names the identity seen and the ones expected).
fn tls_reason(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(r) => match trustmesh_pki::VerifyError::from_rustls(r) {
            Some(v) => v.to_string(),
            None => r.to_string(),
        },
        None => e.to_string(),
    }
}

/// Server verification for `SIMPLE` / `MUTUAL`: WebPKI path validation to the rule's roots,
/// then the server name — or, when the rule lists `subjectAltNames`, any one of them (DNS
/// names, IP addresses, or a SPIFFE ID in the URI SAN).
#[derive(Debug)]
struct FileServerVerifier {
    roots: Arc<RootCertStore>,
    subject_alt_names: Vec<String>,
    insecure_skip_verify: bool,
}

impl ServerCertVerifier for FileServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure_skip_verify {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            crypto_provider().signature_verification_algorithms.all,
        )?;
        if self.subject_alt_names.is_empty() {
            verify_server_name(&cert, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        let uri = spiffe_id_of(end_entity);
        let matched = self.subject_alt_names.iter().any(|san| {
            if san.starts_with("spiffe://") {
                uri.as_ref().is_some_and(|id| id.as_str() == san)
            } else {
                ServerName::try_from(san.as_str())
                    .is_ok_and(|name| verify_server_name(&cert, &name).is_ok())
            }
        });
        if matched {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate matches none of subjectAltNames {:?}",
                self.subject_alt_names
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not accepted: trustmesh speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
