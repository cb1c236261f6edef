//! cert-manager.io/v1 `Certificate`, `Issuer` and `ClusterIssuer`, as in cert-manager
//! `pkg/apis/certmanager/v1/types_{certificate,issuer}.go`.
//!
//! trustmesh honours SelfSigned and CA issuers; the other issuer types (ACME, Vault, Venafi)
//! are read so that validation can say "issuer type X is not supported by trustmesh" instead
//! of "unknown field". Renewal times live in `crate::renewal`, not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Object;
use crate::duration::GoDuration;

/// A Certificate.
pub type Certificate = Object<CertificateSpec>;
/// A namespaced Issuer.
pub type Issuer = Object<IssuerSpec>;
/// A cluster-scoped ClusterIssuer (same spec as Issuer).
pub type ClusterIssuer = Object<IssuerSpec>;

/// cert-manager's default `duration` when unset: 90 days (`DefaultCertificateDuration = 2160h`).
pub const DEFAULT_CERTIFICATE_DURATION: GoDuration = GoDuration::from_hours(2160);
/// "minimum permitted certificate duration by cert-manager" (`MinimumCertificateDuration`).
pub const MINIMUM_CERTIFICATE_DURATION: GoDuration = GoDuration::from_hours(1);
/// "minimum certificate duration before certificate expiration" (`MinimumRenewBefore`).
pub const MINIMUM_RENEW_BEFORE: GoDuration = GoDuration::from_minutes(5);

/// Certificate `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// The Secret (here: output folder) the key pair is written to; required.
    #[serde(default)]
    pub secret_name: String,
    /// The issuer; required.
    #[serde(default)]
    pub issuer_ref: IssuerRef,
    /// Subject CN, at most 64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// An RFC 4514 subject, exclusive with `commonName`/`subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal_subject: Option<String>,
    /// DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// URI SANs: where a SPIFFE ID goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// IP SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Email SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_addresses: Vec<String>,
    /// Accepted, not implemented (feature-gated in cert-manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_names: Option<Value>,
    /// Subject attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<X509Subject>,
    /// Requested lifetime; default 90 days, minimum 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<GoDuration>,
    /// Renew this long before expiry; minimum 5m, less than `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<GoDuration>,
    /// Renew when this % of the lifetime remains; exclusive with `renewBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_percentage: Option<i32>,
    /// Issue a CA certificate.
    #[serde(default, rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    /// Key usages; cert-manager's default is `digital signature`, `key encipherment`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<KeyUsage>,
    /// Private key options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<CertificatePrivateKey>,
    /// Labels/annotations copied to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
    /// CertificateRequests kept; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Put usages into the CSR (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_usages_in_request: Option<bool>,
    /// e.g. `ECDSAWithSHA256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_algorithm: Option<String>,
    /// Accepted, not implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<Value>,
    /// Accepted, not implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_output_formats: Option<Value>,
    /// Accepted, not implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_constraints: Option<Value>,
}

/// `issuerRef`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerRef {
    /// Issuer name; required.
    #[serde(default)]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `cert-manager.io` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl IssuerRef {
    /// The kind with cert-manager's default applied.
    pub fn kind_or_default(&self) -> &str {
        match self.kind.as_deref() {
            None | Some("") => "Issuer",
            Some(k) => k,
        }
    }

    /// The group with cert-manager's default applied.
    pub fn group_or_default(&self) -> &str {
        match self.group.as_deref() {
            None | Some("") => "cert-manager.io",
            Some(g) => g,
        }
    }
}

/// `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509Subject {
    /// O.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    /// C.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// OU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_units: Vec<String>,
    /// L.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub localities: Vec<String>,
    /// ST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provinces: Vec<String>,
    /// Street.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub street_addresses: Vec<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postal_codes: Vec<String>,
    /// Serial number attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

/// `privateKey`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatePrivateKey {
    /// RSA (cert-manager's default), ECDSA or Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// RSA 2048..8192 (default 2048); ECDSA 256/384/521 (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// PKCS1 (default) or PKCS8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<KeyEncoding>,
    /// Always (default since v1.18) or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

/// `privateKey.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// RSA.
    #[serde(rename = "RSA")]
    Rsa,
    /// ECDSA.
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

/// `privateKey.encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyEncoding {
    /// PKCS#1 (RSA) / SEC1 (EC).
    #[serde(rename = "PKCS1")]
    Pkcs1,
    /// PKCS#8.
    #[serde(rename = "PKCS8")]
    Pkcs8,
}

/// `privateKey.rotationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationPolicy {
    /// New key on every issuance.
    Always,
    /// Reuse the key.
    Never,
}

/// `secretTemplate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretTemplate {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// cert-manager `KeyUsage` strings (`pkg/apis/certmanager/v1/types.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUsage {
    /// `signing`.
    #[serde(rename = "signing")]
    Signing,
    /// `digital signature`.
    #[serde(rename = "digital signature")]
    DigitalSignature,
    /// `content commitment`.
    #[serde(rename = "content commitment")]
    ContentCommitment,
    /// `key encipherment`.
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    /// `key agreement`.
    #[serde(rename = "key agreement")]
    KeyAgreement,
    /// `data encipherment`.
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    /// `cert sign`.
    #[serde(rename = "cert sign")]
    CertSign,
    /// `crl sign`.
    #[serde(rename = "crl sign")]
    CrlSign,
    /// `encipher only`.
    #[serde(rename = "encipher only")]
    EncipherOnly,
    /// `decipher only`.
    #[serde(rename = "decipher only")]
    DecipherOnly,
    /// `any`.
    #[serde(rename = "any")]
    Any,
    /// `server auth`.
    #[serde(rename = "server auth")]
    ServerAuth,
    /// `client auth`.
    #[serde(rename = "client auth")]
    ClientAuth,
    /// `code signing`.
    #[serde(rename = "code signing")]
    CodeSigning,
    /// `email protection`.
    #[serde(rename = "email protection")]
    EmailProtection,
    /// `s/mime`.
    #[serde(rename = "s/mime")]
    Smime,
    /// `ipsec end system`.
    #[serde(rename = "ipsec end system")]
    IpsecEndSystem,
    /// `ipsec tunnel`.
    #[serde(rename = "ipsec tunnel")]
    IpsecTunnel,
    /// `ipsec user`.
    #[serde(rename = "ipsec user")]
    IpsecUser,
    /// `timestamping`.
    #[serde(rename = "timestamping")]
    Timestamping,
    /// `ocsp signing`.
    #[serde(rename = "ocsp signing")]
    OcspSigning,
    /// `microsoft sgc`.
    #[serde(rename = "microsoft sgc")]
    MicrosoftSgc,
    /// `netscape sgc`.
    #[serde(rename = "netscape sgc")]
    NetscapeSgc,
}

/// Issuer / ClusterIssuer `spec`: exactly one issuer type.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    /// Signs each request with the request's own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Signs with the CA key pair in `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Not supported by trustmesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Value>,
    /// Not supported by trustmesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<Value>,
    /// Not supported by trustmesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venafi: Option<Value>,
}

/// `selfSigned`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfSignedIssuer {
    /// CRL distribution points put in issued certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
}

/// `ca`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIssuer {
    /// Secret with the CA's `tls.crt`/`tls.key`; required.
    #[serde(default)]
    pub secret_name: String,
    /// CRL distribution points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
    /// OCSP servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ocsp_servers: Vec<String>,
    /// AIA issuing certificate URLs.
    #[serde(
        default,
        rename = "issuingCertificateURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub issuing_certificate_urls: Vec<String>,
}
