//! Private keys: generation ([`KeyPair::generate`] is ECDSA P-256, the mesh default), loading
//! from PEM (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`) and encoding to PEM the
//! way cert-manager does ([`KeyEncoding`]).
//!
//! What does not live here: certificates (see [`crate::ca`], [`crate::certmanager`]).

use std::fmt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::der;

/// Why a key could not be generated, loaded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The algorithm / size combination is not one trustmesh can generate.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// The crypto library failed to generate a key.
    #[error("generating a {algorithm} key: {source}")]
    Generate {
        /// The algorithm asked for.
        algorithm: KeyAlgorithm,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The PEM input held no private key, or one that could not be parsed.
    #[error("private key PEM: {0}")]
    Pem(String),
    /// The key's DER structure was not what its label promised.
    #[error("malformed {what} private key")]
    Malformed {
        /// Which encoding was being read (PKCS#8, PKCS#1, SEC1).
        what: &'static str,
    },
}

/// A key algorithm and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256 (the default for SVIDs).
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// ECDSA on NIST P-521 with SHA-512.
    EcdsaP521,
    /// Ed25519.
    Ed25519,
    /// RSA (PKCS#1 v1.5 signatures with SHA-256) with a modulus of `bits` bits.
    Rsa {
        /// Modulus size: 2048, 3072 or 4096 can be generated; any size can be loaded.
        bits: u32,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
        }
    }
}

impl KeyAlgorithm {
    /// True for RSA keys (which alone may carry `keyEncipherment`).
    pub fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa { .. })
    }
}

/// How a private key is written to PEM, as cert-manager's `privateKey.encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyEncoding {
    /// cert-manager's default: RSA as PKCS#1 (`RSA PRIVATE KEY`), ECDSA as SEC1
    /// (`EC PRIVATE KEY`), Ed25519 as PKCS#8 (it has no other encoding).
    #[default]
    Pkcs1,
    /// PKCS#8 (`PRIVATE KEY`) for every algorithm.
    Pkcs8,
}

// DER encodings of the OBJECT IDENTIFIERs used in key structures (RFC 3279, 5480, 8410).
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
const DER_NULL: &[u8] = &[0x05, 0x00];

/// A private key and its public half. The secret never appears in `Debug` output.
pub struct KeyPair {
    inner: rcgen::KeyPair,
    /// The key as it was generated (PKCS#8) or loaded (PKCS#8, PKCS#1 or SEC1).
    der: PrivateKeyDer<'static>,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new ECDSA P-256 key, the mesh default ("ECDSA P-256 by default", DESIGN.md).
    pub fn generate() -> Result<Self, KeyError> {
        Self::generate_for(KeyAlgorithm::EcdsaP256)
    }

    /// A new key of the given algorithm. RSA sizes other than 2048, 3072 and 4096 are
    /// [`KeyError::Unsupported`] (the crypto library generates only those).
    pub fn generate_for(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let generated = match algorithm {
            KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::EcdsaP521 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
            KeyAlgorithm::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyAlgorithm::Rsa { bits } => {
                let size = match bits {
                    2048 => rcgen::RsaKeySize::_2048,
                    3072 => rcgen::RsaKeySize::_3072,
                    4096 => rcgen::RsaKeySize::_4096,
                    other => {
                        return Err(KeyError::Unsupported(format!(
                            "RSA {other}: only 2048, 3072 and 4096-bit RSA keys can be generated"
                        )));
                    }
                };
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
            }
        };
        let inner = generated.map_err(|source| KeyError::Generate { algorithm, source })?;
        // Generated keys are PKCS#8.
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(inner.serialize_der()));
        Ok(Self {
            inner,
            der,
            algorithm,
        })
    }

    /// Loads the first private key of a PEM document (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        Self::from_der(der)
    }

    /// Loads a DER private key.
    pub fn from_der(der: PrivateKeyDer<'static>) -> Result<Self, KeyError> {
        let inner = rcgen::KeyPair::try_from(&der).map_err(|e| KeyError::Pem(e.to_string()))?;
        let algorithm = algorithm_of(&inner)?;
        Ok(Self {
            inner,
            der,
            algorithm,
        })
    }

    /// The algorithm and size.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The private key for rustls (`with_single_cert`, `with_client_auth_cert`).
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        self.der.clone_key()
    }

    /// The raw public key as it appears in the certificate's subjectPublicKey BIT STRING
    /// (uncompressed point for ECDSA, `RSAPublicKey` for RSA, 32 bytes for Ed25519).
    pub fn public_key_raw(&self) -> &[u8] {
        self.inner.public_key_raw()
    }

    /// The key as PEM, encoded as cert-manager's `privateKey.encoding` asks.
    pub fn to_pem(&self, encoding: KeyEncoding) -> Result<String, KeyError> {
        let (label, der) = match encoding {
            KeyEncoding::Pkcs8 => ("PRIVATE KEY", self.pkcs8_der()?),
            KeyEncoding::Pkcs1 => match self.algorithm {
                KeyAlgorithm::Rsa { .. } => ("RSA PRIVATE KEY", self.pkcs1_or_sec1_der()?),
                KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 | KeyAlgorithm::EcdsaP521 => {
                    ("EC PRIVATE KEY", self.pkcs1_or_sec1_der()?)
                }
                // cert-manager: "case ed25519.PrivateKey: return EncodePKCS8PrivateKey(k)".
                KeyAlgorithm::Ed25519 => ("PRIVATE KEY", self.pkcs8_der()?),
            },
        };
        Ok(pem_encode(label, &der))
    }

    /// The key as PKCS#8 PEM (`PRIVATE KEY`), the encoding of SVID and CA key files.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        self.to_pem(KeyEncoding::Pkcs8)
    }

    pub(crate) fn rcgen(&self) -> &rcgen::KeyPair {
        &self.inner
    }

    fn curve_oid(&self) -> Option<&'static [u8]> {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => Some(OID_P256),
            KeyAlgorithm::EcdsaP384 => Some(OID_P384),
            KeyAlgorithm::EcdsaP521 => Some(OID_P521),
            _ => None,
        }
    }

    /// PKCS#8 DER, wrapping a PKCS#1 or SEC1 key when it was loaded that way.
    fn pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        let inner = match &self.der {
            PrivateKeyDer::Pkcs8(k) => return pkcs8_v1(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
            PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
            _ => return Err(KeyError::Malformed { what: "unknown" }),
        };
        // RFC 5208: PrivateKeyInfo ::= SEQUENCE { version, privateKeyAlgorithm, privateKey }
        let mut alg = Vec::new();
        if self.algorithm.is_rsa() {
            alg.extend_from_slice(OID_RSA_ENCRYPTION);
            alg.extend_from_slice(DER_NULL);
        } else if let Some(curve) = self.curve_oid() {
            alg.extend_from_slice(OID_EC_PUBLIC_KEY);
            alg.extend_from_slice(curve);
        } else {
            return Err(KeyError::Malformed { what: "PKCS#8" });
        }
        let mut body = Vec::new();
        der::write(der::INTEGER, &[0], &mut body);
        der::write(der::SEQUENCE, &alg, &mut body);
        der::write(der::OCTET_STRING, inner, &mut body);
        let mut out = Vec::new();
        der::write(der::SEQUENCE, &body, &mut out);
        Ok(out)
    }

    /// PKCS#1 `RSAPrivateKey` (RSA) or SEC1 `ECPrivateKey` with the curve parameters (ECDSA).
    fn pkcs1_or_sec1_der(&self) -> Result<Vec<u8>, KeyError> {
        let pkcs8 = match &self.der {
            PrivateKeyDer::Pkcs1(k) => return Ok(k.secret_pkcs1_der().to_vec()),
            PrivateKeyDer::Sec1(k) => return Ok(k.secret_sec1_der().to_vec()),
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return Err(KeyError::Malformed { what: "unknown" }),
        };
        let bad8 = || KeyError::Malformed { what: "PKCS#8" };
        let outer = der::read_exact(pkcs8, der::SEQUENCE).ok_or_else(bad8)?;
        let (_version, rest) = der::read(outer.value).ok_or_else(bad8)?;
        let (_alg, rest) = der::read(rest).ok_or_else(bad8)?;
        let (private_key, _) = der::read(rest).ok_or_else(bad8)?;
        if private_key.tag != der::OCTET_STRING {
            return Err(bad8());
        }
        let Some(curve) = self.curve_oid() else {
            // RSA: the OCTET STRING holds the PKCS#1 RSAPrivateKey as is.
            return Ok(private_key.value.to_vec());
        };
        // RFC 5915: ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING,
        //   parameters [0] ECParameters OPTIONAL, publicKey [1] BIT STRING OPTIONAL }.
        // Inside PKCS#8 the parameters are usually omitted (they are in the algorithm
        // identifier); a standalone SEC1 key must name its curve, so put them back.
        let bad1 = || KeyError::Malformed { what: "SEC1" };
        let ec = der::read_exact(private_key.value, der::SEQUENCE).ok_or_else(bad1)?;
        let (version, rest) = der::read(ec.value).ok_or_else(bad1)?;
        let (secret, rest) = der::read(rest).ok_or_else(bad1)?;
        let mut body = Vec::new();
        body.extend_from_slice(version.raw);
        body.extend_from_slice(secret.raw);
        let has_params = der::read(rest).is_some_and(|(t, _)| t.tag == 0xa0);
        if !has_params {
            der::write(0xa0, curve, &mut body);
        }
        body.extend_from_slice(rest);
        let mut out = Vec::new();
        der::write(der::SEQUENCE, &body, &mut out);
        Ok(out)
    }
}

/// PKCS#8 v1 (RFC 5208) from v1 or v2 (RFC 5958 `OneAsymmetricKey`, which aws-lc writes for
/// Ed25519 with the public key in `[1]`). OpenSSL 3.0 cannot read v2 Ed25519 keys, and the
/// public key is redundant, so files always get v1.
fn pkcs8_v1(pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
    let bad = || KeyError::Malformed { what: "PKCS#8" };
    let outer = der::read_exact(pkcs8, der::SEQUENCE).ok_or_else(bad)?;
    let (version, rest) = der::read(outer.value).ok_or_else(bad)?;
    if version.tag != der::INTEGER {
        return Err(bad());
    }
    if version.value == [0] {
        return Ok(pkcs8.to_vec());
    }
    let (alg, rest) = der::read(rest).ok_or_else(bad)?;
    let (private_key, mut rest) = der::read(rest).ok_or_else(bad)?;
    let mut body = Vec::new();
    der::write(der::INTEGER, &[0], &mut body);
    body.extend_from_slice(alg.raw);
    body.extend_from_slice(private_key.raw);
    // Keep `[0] attributes` if present; drop `[1] publicKey` (not part of v1).
    while let Some((field, after)) = der::read(rest) {
        if field.tag == 0xa0 {
            body.extend_from_slice(field.raw);
        }
        rest = after;
    }
    let mut out = Vec::new();
    der::write(der::SEQUENCE, &body, &mut out);
    Ok(out)
}

/// The algorithm of a loaded key (rcgen reports the signature algorithm; RSA size is read
/// from the public modulus).
fn algorithm_of(key: &rcgen::KeyPair) -> Result<KeyAlgorithm, KeyError> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(KeyAlgorithm::EcdsaP256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(KeyAlgorithm::EcdsaP384)
    } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
        Ok(KeyAlgorithm::EcdsaP521)
    } else if alg == &rcgen::PKCS_ED25519 {
        Ok(KeyAlgorithm::Ed25519)
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        let bits = rsa_modulus_bits(key.public_key_raw())
            .ok_or(KeyError::Malformed { what: "RSA public" })?;
        Ok(KeyAlgorithm::Rsa { bits })
    } else {
        Err(KeyError::Unsupported(format!("{alg:?}")))
    }
}

/// Bits of the modulus of a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus, publicExponent }`.
pub(crate) fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<u32> {
    let seq = der::read(rsa_public_key)?.0;
    let modulus = der::read(seq.value)?.0;
    let n = modulus.value;
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return None,
    };
    let top_bits = 8 - n[0].leading_zeros();
    u32::try_from(n.len() - 1)
        .ok()
        .map(|bytes| bytes * 8 + top_bits)
}

/// PEM with 64-column base64 lines, as OpenSSL and Go write it.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rustls_pki_types::PrivateSec1KeyDer;

    fn label_of(pem: &str) -> &str {
        pem.lines()
            .next()
            .unwrap()
            .trim_start_matches("-----BEGIN ")
            .trim_end_matches("-----")
    }

    /// cert-manager `privateKey.encoding`: PKCS1 gives `RSA PRIVATE KEY` / `EC PRIVATE KEY`
    /// (Ed25519 stays PKCS#8), PKCS8 gives `PRIVATE KEY`; every output loads back to the same
    /// public key.
    #[test]
    fn encodings_round_trip_for_every_algorithm() {
        let cases = [
            (KeyAlgorithm::EcdsaP256, "EC PRIVATE KEY"),
            (KeyAlgorithm::EcdsaP384, "EC PRIVATE KEY"),
            (KeyAlgorithm::EcdsaP521, "EC PRIVATE KEY"),
            (KeyAlgorithm::Ed25519, "PRIVATE KEY"),
            (KeyAlgorithm::Rsa { bits: 2048 }, "RSA PRIVATE KEY"),
        ];
        for (alg, pkcs1_label) in cases {
            let key = KeyPair::generate_for(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            let pkcs1 = key.to_pem(KeyEncoding::Pkcs1).unwrap();
            let pkcs8 = key.to_pem(KeyEncoding::Pkcs8).unwrap();
            assert_eq!(label_of(&pkcs1), pkcs1_label, "{alg}");
            assert_eq!(label_of(&pkcs8), "PRIVATE KEY", "{alg}");
            for pem in [&pkcs1, &pkcs8] {
                let back = KeyPair::from_pem(pem).unwrap();
                assert_eq!(back.public_key_raw(), key.public_key_raw(), "{alg}");
                assert_eq!(back.algorithm(), alg);
                // And back again from the loaded form, in both encodings.
                for enc in [KeyEncoding::Pkcs1, KeyEncoding::Pkcs8] {
                    let again = KeyPair::from_pem(&back.to_pem(enc).unwrap()).unwrap();
                    assert_eq!(
                        again.public_key_raw(),
                        key.public_key_raw(),
                        "{alg} {enc:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn sec1_output_names_its_curve() {
        let key = KeyPair::generate_for(KeyAlgorithm::EcdsaP384).unwrap();
        let pem = key.to_pem(KeyEncoding::Pkcs1).unwrap();
        let der = PrivateSec1KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let raw = der.secret_sec1_der();
        assert!(
            raw.windows(OID_P384.len()).any(|w| w == OID_P384),
            "SEC1 key must carry the secp384r1 parameters"
        );
    }

    #[test]
    fn ed25519_pkcs8_is_written_as_v1() {
        let key = KeyPair::generate_for(KeyAlgorithm::Ed25519).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let outer = der::read_exact(der.secret_pkcs8_der(), der::SEQUENCE).unwrap();
        let (version, rest) = der::read(outer.value).unwrap();
        assert_eq!(version.value, [0], "version 0 = PKCS#8 v1");
        let (_alg, rest) = der::read(rest).unwrap();
        let (_key, rest) = der::read(rest).unwrap();
        assert!(rest.is_empty(), "no [1] publicKey in v1");
        assert_eq!(
            KeyPair::from_pem(&pem).unwrap().public_key_raw(),
            key.public_key_raw()
        );
    }

    #[test]
    fn unsupported_rsa_size_is_a_clear_error() {
        let err = KeyPair::generate_for(KeyAlgorithm::Rsa { bits: 8192 }).unwrap_err();
        assert!(matches!(err, KeyError::Unsupported(_)));
        assert!(err.to_string().contains("8192"), "{err}");
    }

    #[test]
    fn garbage_pem_is_rejected() {
        assert!(matches!(KeyPair::from_pem("nope"), Err(KeyError::Pem(_))));
        let broken = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(KeyPair::from_pem(broken).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = KeyPair::generate().unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("EcdsaP256"));
        let pem = key.to_pkcs8_pem().unwrap();
        let b64_line = pem.lines().nth(1).unwrap();
        assert!(!dbg.contains(b64_line));
    }

    #[test]
    fn pem_lines_are_64_columns() {
        let pem = pem_encode("X", &[7u8; 100]);
        let lines: Vec<_> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END X-----"));
    }
}
