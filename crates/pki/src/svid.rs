//! Reading certificates for people and status: [`CertInfo`] (subject, issuer, serial,
//! validity, SANs, CA flag, key usages, key algorithm), parsed with x509-parser.
//!
//! This is for display and status (`trustmesh certs`, `debug`, cert-manager status), not for
//! trust decisions: nothing here verifies a signature chain. See [`crate::verify`] for that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trustmesh_core::SpiffeId;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertInfoError {
    /// The PEM text could not be decoded.
    #[error("PEM: {0}")]
    Pem(String),
    /// The PEM text held no CERTIFICATE block.
    #[error("no CERTIFICATE found in PEM")]
    Empty,
    /// The DER is not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Der(String),
    /// An extension is present but malformed or duplicated.
    #[error("extension {name}: {reason}")]
    Extension {
        /// The extension (e.g. "subjectAltName").
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What a certificate says, in display form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject DN, e.g. `O=trustmesh, CN=cluster.local root CA` (empty for an empty DN).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, lowercase hex without separators.
    pub serial_hex: String,
    /// Start of validity.
    #[serde(skip)]
    pub not_before: SystemTime,
    /// End of validity.
    #[serde(skip)]
    pub not_after: SystemTime,
    /// Start of validity, RFC 3339 (UTC).
    pub not_before_rfc3339: String,
    /// End of validity, RFC 3339 (UTC).
    pub not_after_rfc3339: String,
    /// URI SANs in certificate order.
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// IP address SANs.
    pub ip_sans: Vec<IpAddr>,
    /// Email (RFC 822) SANs.
    pub email_sans: Vec<String>,
    /// The SPIFFE ID, when the certificate has exactly one URI SAN and it is one.
    pub spiffe_id: Option<SpiffeId>,
    /// basicConstraints cA is true.
    pub is_ca: bool,
    /// The basicConstraints extension: `None` if absent, `Some(cA)` if present.
    pub basic_constraints_ca: Option<bool>,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u32>,
    /// Key usage bits set, RFC 5280 names (`digitalSignature`, `keyCertSign`, ...).
    pub key_usage: Vec<String>,
    /// Extended key usages (`serverAuth`, `clientAuth`, ... or a dotted OID).
    pub extended_key_usage: Vec<String>,
    /// `ECDSA P-256`, `ECDSA P-384`, `ECDSA P-521`, `Ed25519`, `RSA 2048`, or the OID.
    pub public_key_algorithm: String,
    /// The signature algorithm name (e.g. `ecdsa-with-SHA256`) or its OID.
    pub signature_algorithm: String,
    /// Subject equals issuer and the signature verifies with the certificate's own key.
    pub self_signed: bool,
    /// The raw subjectPublicKey bits.
    #[serde(skip)]
    pub public_key_raw: Vec<u8>,
}

impl CertInfo {
    /// Reads one DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertInfoError> {
        let (_, x509) =
            X509Certificate::from_der(der).map_err(|e| CertInfoError::Der(e.to_string()))?;

        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        let mut email_sans = Vec::new();
        let san = x509
            .subject_alternative_name()
            .map_err(|e| ext_err("subjectAltName", e))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => email_sans.push((*e).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ip_sans.push(ip);
                    }
                }
                _ => {}
            }
        }
        let spiffe_id = match uri_sans.as_slice() {
            [one] => SpiffeId::parse(one).ok(),
            _ => None,
        };

        let bc = x509
            .basic_constraints()
            .map_err(|e| ext_err("basicConstraints", e))?;
        let basic_constraints_ca = bc.as_ref().map(|b| b.value.ca);
        let path_len = bc.and_then(|b| b.value.path_len_constraint);

        let mut key_usage = Vec::new();
        if let Some(ku) = x509.key_usage().map_err(|e| ext_err("keyUsage", e))? {
            let ku = ku.value;
            for (set, name) in [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "contentCommitment"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
                (ku.encipher_only(), "encipherOnly"),
                (ku.decipher_only(), "decipherOnly"),
            ] {
                if set {
                    key_usage.push(name.to_owned());
                }
            }
        }

        let mut extended_key_usage = Vec::new();
        if let Some(eku) = x509
            .extended_key_usage()
            .map_err(|e| ext_err("extendedKeyUsage", e))?
        {
            let eku = eku.value;
            for (set, name) in [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ] {
                if set {
                    extended_key_usage.push(name.to_owned());
                }
            }
            extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
        }

        let not_before = asn1_to_system_time(&x509.validity().not_before);
        let not_after = asn1_to_system_time(&x509.validity().not_after);
        let spki = x509.public_key();
        let sig_oid = &x509.signature_algorithm.algorithm;
        let signature_algorithm =
            x509_parser::objects::oid2sn(sig_oid, x509_parser::objects::oid_registry())
                .map(str::to_owned)
                .unwrap_or_else(|_| sig_oid.to_id_string());

        Ok(Self {
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            serial_hex: x509
                .raw_serial()
                .iter()
                .skip_while(|&&b| b == 0)
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_before,
            not_after,
            not_before_rfc3339: rfc3339(&x509.validity().not_before),
            not_after_rfc3339: rfc3339(&x509.validity().not_after),
            uri_sans,
            dns_sans,
            ip_sans,
            email_sans,
            spiffe_id,
            is_ca: basic_constraints_ca == Some(true),
            basic_constraints_ca,
            path_len,
            key_usage,
            extended_key_usage,
            public_key_algorithm: key_algorithm_name(&x509),
            signature_algorithm,
            self_signed: x509.subject().as_raw() == x509.issuer().as_raw()
                && x509.verify_signature(None).is_ok(),
            public_key_raw: spki.subject_public_key.data.to_vec(),
        })
    }

    /// Reads every certificate of a PEM document, in order.
    pub fn parse_pem(pem: &str) -> Result<Vec<Self>, CertInfoError> {
        let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertInfoError::Pem(e.to_string()))?;
        if ders.is_empty() {
            return Err(CertInfoError::Empty);
        }
        ders.iter().map(|d| Self::parse(d)).collect()
    }

    /// True when `at` lies within `[not_before, not_after]`.
    pub fn is_valid_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

fn ext_err(name: &'static str, e: impl std::fmt::Display) -> CertInfoError {
    CertInfoError::Extension {
        name,
        reason: e.to_string(),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

fn key_algorithm_name(x509: &X509Certificate<'_>) -> String {
    let spki = x509.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA {}", c.to_id_string()),
            None => "ECDSA".to_owned(),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match crate::keys::rsa_modulus_bits(&spki.subject_public_key.data) {
            Some(bits) => format!("RSA {bits}"),
            None => "RSA".to_owned(),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    alg.to_id_string()
}

/// An X.509 time as `SystemTime`.
pub(crate) fn asn1_to_system_time(t: &ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn rfc3339(t: &ASN1Time) -> String {
    let dt: OffsetDateTime = t.to_datetime();
    dt.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Formats a `SystemTime` as RFC 3339 UTC (e.g. `2026-11-28T01:00:00Z`).
pub fn format_rfc3339(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    dt.format(&Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ca::Ca;
    use trustmesh_core::TrustDomain;

    #[test]
    fn reads_an_svid_and_its_root() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = Ca::generate(&TrustDomain::new("example.org").unwrap(), now).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
        let (svid, _) = ca.issue_svid(&id, Duration::from_secs(3600), now).unwrap();
        let infos = CertInfo::parse_pem(&format!("{}{}", svid.cert_pem, ca.cert_pem())).unwrap();
        let (leaf, root) = (&infos[0], &infos[1]);
        assert_eq!(leaf.spiffe_id.as_ref(), Some(&id));
        assert_eq!(leaf.not_before_rfc3339, "2027-01-15T07:59:00Z");
        assert_eq!(leaf.not_after_rfc3339, "2027-01-15T09:00:00Z");
        assert!(leaf.is_valid_at(now));
        assert!(!leaf.is_valid_at(now + Duration::from_secs(7200)));
        assert!(!leaf.self_signed);
        assert!(root.self_signed);
        assert_eq!(leaf.signature_algorithm, "ecdsa-with-SHA256");
        assert_eq!(
            root.spiffe_id.as_ref().map(SpiffeId::as_str),
            Some("spiffe://example.org")
        );
        let json = serde_json::to_value(leaf).unwrap();
        assert_eq!(json["spiffe_id"], "spiffe://example.org/ns/a/sa/b");
        assert_eq!(json["not_after_rfc3339"], "2027-01-15T09:00:00Z");
        assert_eq!(format_rfc3339(now), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn rejects_non_certificates() {
        assert!(matches!(
            CertInfo::parse(b"junk"),
            Err(CertInfoError::Der(_))
        ));
        assert!(matches!(CertInfo::parse_pem(""), Err(CertInfoError::Empty)));
    }
}
