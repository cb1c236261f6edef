//! JWK (RFC 7517 / 7518 / 8037) members of X.509 authorities in SPIFFE bundles: reading an
//! `x509-svid` JWK into its root certificate, and computing the public-key members of a
//! root for export. What does not live here: the JWK Set level ([`super::TrustBundle`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{BundleError, USE_X509_SVID, field};

/// The X.509 root a JWK contributes, `None` if the element is to be ignored.
pub(super) fn x509_root_of_jwk(
    key: &Value,
    i: usize,
) -> Result<Option<CertificateDer<'static>>, BundleError> {
    let at = |name: &str| format!("keys[{i}].{name}");
    let jwk = key
        .as_object()
        .ok_or_else(|| field(format!("keys[{i}]"), "must be a JSON object (a JWK)"))?;
    // Trust Domain and Bundle 4.2.2: "Clients encountering either a missing `use` parameter
    // or an unknown `use` value MUST ignore the entire JWK element."
    match jwk.get("use") {
        None => return Ok(None),
        Some(Value::String(u)) if u == USE_X509_SVID => {}
        Some(Value::String(_)) => return Ok(None),
        Some(_) => return Err(field(at("use"), "must be a string")),
    }
    // 4.2.1: "The `kty` parameter MUST be set ... Clients encountering an unknown key type
    // MUST ignore the entire JWK element."
    let kty = match jwk.get("kty") {
        None => return Err(field(at("kty"), "missing (MUST be set)")),
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err(field(at("kty"), "must be a string")),
    };
    if !matches!(kty, "EC" | "RSA" | "OKP") {
        return Ok(None);
    }
    // X509-SVID 6.2: "check that the `x5c` parameter is set and has at least one value. If
    // `x5c` is not set, or is empty, then the entry MUST be ignored." ... "If the `x5c`
    // parameter contains multiple values, then all but the first MUST be ignored."
    let first = match jwk.get("x5c") {
        None => return Ok(None),
        Some(Value::Array(certs)) => match certs.first() {
            None => return Ok(None),
            Some(Value::String(b64)) => b64,
            Some(_) => return Err(field(at("x5c[0]"), "must be a base64 string")),
        },
        Some(_) => return Err(field(at("x5c"), "must be an array of base64 strings")),
    };
    // RFC 7517 4.7: "Each string in the array is a base64-encoded (Section 4 of [RFC4648] --
    // not base64url-encoded) DER [ITU.X690.2008] PKIX certificate value."
    let der = base64_standard_lenient()
        .decode(first.trim())
        .map_err(|e| field(at("x5c[0]"), format!("invalid base64: {e}")))?;
    let cert = CertificateDer::from(der);
    let params = jwk_key_params(&cert).map_err(|e| match e {
        BundleError::UnsupportedKey { algorithm, .. } => field(
            at("x5c[0]"),
            format!("certificate key type {algorithm} is not supported"),
        ),
        BundleError::Field { reason, .. } => field(at("x5c[0]"), reason),
        other => other,
    })?;
    // RFC 7517 4.7: "The key in the first certificate MUST match the public key represented
    // by other members of the JWK."
    if params.kty() != kty {
        return Err(field(
            at("kty"),
            format!("is {kty} but the x5c certificate's key is {}", params.kty()),
        ));
    }
    for (name, want) in params.into_members() {
        match jwk.get(&name) {
            None => {
                return Err(field(
                    at(&name),
                    "missing (required for this kty by RFC 7518)",
                ));
            }
            Some(got) if *got == want => {}
            Some(_) => {
                return Err(field(
                    at(&name),
                    "does not match the public key of the x5c certificate",
                ));
            }
        }
    }
    Ok(Some(cert))
}

fn base64_standard_lenient() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// The public-key members of a JWK (RFC 7518 section 6) for a certificate's key.
pub(super) enum JwkKey {
    Ec {
        crv: &'static str,
        x: String,
        y: String,
    },
    Rsa {
        n: String,
        e: String,
    },
    Okp {
        x: String,
    },
}

impl JwkKey {
    pub(super) fn kty(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
            Self::Okp { .. } => "OKP",
        }
    }

    pub(super) fn into_members(self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kty".into(), Value::from(self.kty()));
        match self {
            Self::Ec { crv, x, y } => {
                m.insert("crv".into(), Value::from(crv));
                m.insert("x".into(), Value::from(x));
                m.insert("y".into(), Value::from(y));
            }
            Self::Rsa { n, e } => {
                m.insert("n".into(), Value::from(n));
                m.insert("e".into(), Value::from(e));
            }
            Self::Okp { x } => {
                m.insert("crv".into(), Value::from("Ed25519"));
                m.insert("x".into(), Value::from(x));
            }
        }
        m
    }
}

/// RFC 7518 6.2.1 / 6.3.1 / RFC 8037: the JWK public-key members of a certificate's key.
/// Coordinates and integers are base64url without padding; RSA integers without leading
/// zero octets ("base64urlUInt").
pub(super) fn jwk_key_params(cert: &CertificateDer<'_>) -> Result<JwkKey, BundleError> {
    let (_, x509) = X509Certificate::from_der(cert)
        .map_err(|e| field("(certificate)", format!("not an X.509 certificate: {e}")))?;
    let spki = x509.public_key();
    let raw = spki.subject_public_key.data.as_ref();
    let unsupported = |algorithm: String| BundleError::UnsupportedKey {
        subject: x509.subject().to_string(),
        algorithm,
    };
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| unsupported("EC without named curve".into()))?;
        let (crv, len) = if curve == OID_EC_P256 {
            ("P-256", 32)
        } else if curve == OID_NIST_EC_P384 {
            ("P-384", 48)
        } else if curve == OID_NIST_EC_P521 {
            ("P-521", 66)
        } else {
            return Err(unsupported(format!("EC {}", curve.to_id_string())));
        };
        // SEC1 uncompressed point: 0x04 || X || Y.
        if raw.len() != 1 + 2 * len || raw[0] != 0x04 {
            return Err(unsupported(format!("{crv} point not in uncompressed form")));
        }
        return Ok(JwkKey::Ec {
            crv,
            x: URL_SAFE_NO_PAD.encode(&raw[1..=len]),
            y: URL_SAFE_NO_PAD.encode(&raw[1 + len..]),
        });
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(unsupported("malformed RSA key".into()));
        };
        let strip = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|&x| x == 0).collect() };
        return Ok(JwkKey::Rsa {
            n: URL_SAFE_NO_PAD.encode(strip(rsa.modulus)),
            e: URL_SAFE_NO_PAD.encode(strip(rsa.exponent)),
        });
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(JwkKey::Okp {
            x: URL_SAFE_NO_PAD.encode(raw),
        });
    }
    Err(unsupported(alg.to_id_string()))
}
