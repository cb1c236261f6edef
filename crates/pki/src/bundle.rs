//! Trust bundles: which roots vouch for which trust domain.
//!
//! - [`TrustBundle`]: the X.509 roots of one trust domain (kept both as DER and as parsed
//!   WebPKI trust anchors, so verification does not re-parse them), with PEM and SPIFFE
//!   bundle (JWKS) import and export.
//! - [`TrustBundleSet`]: trust domain → bundle, the thing verifiers consult; `merge`,
//!   [`TrustBundleSet::combine`], and a multi-domain JSON document `{"<td>": <bundle>, ...}`
//!   shaped like the Workload API's federated bundles map.
//!
//! Formats follow the SPIFFE Trust Domain and Bundle standard (section 4) and X509-SVID
//! section 6. What does not live here: fetching bundles (federation endpoints) or choosing
//! which ones to trust (config).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::{Map, Value};
use trustmesh_core::{IdError, TrustDomain};

use crate::keys::pem_encode;

mod jwk;
use jwk::{jwk_key_params, x509_root_of_jwk};

/// X509-SVID 6.1: "The `use` parameter of each JWK entry MUST be set to `x509-svid`."
pub const USE_X509_SVID: &str = "x509-svid";

/// Why a bundle could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The document is not JSON, or not the expected JSON shape at the top level.
    #[error("bundle JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field of a SPIFFE bundle is missing or malformed; `field` is a path like
    /// `keys[1].x5c[0]`.
    #[error("{field}: {reason}")]
    Field {
        /// Where in the document.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate cannot serve as a trust anchor.
    #[error("certificate {index} is not a usable trust anchor: {reason}")]
    NotAnAnchor {
        /// Position of the certificate in its input.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
    /// The PEM input could not be decoded.
    #[error("PEM: {0}")]
    Pem(String),
    /// The PEM input held no CERTIFICATE.
    #[error("no CERTIFICATE found in PEM")]
    NoCertificates,
    /// A root's public key has no JWK representation here (only EC P-256/384/521, RSA,
    /// Ed25519).
    #[error("root {subject}: key type {algorithm} cannot be written as a JWK")]
    UnsupportedKey {
        /// The root's subject.
        subject: String,
        /// The key algorithm (OID or curve).
        algorithm: String,
    },
    /// A map key of a multi-domain document is not a trust domain name.
    #[error("{key:?} is not a trust domain: {source}")]
    BadTrustDomain {
        /// The key as written.
        key: String,
        /// Why it is not one.
        #[source]
        source: IdError,
    },
    /// An error within the bundle of one trust domain.
    #[error("trust domain {trust_domain}: {source}")]
    InTrustDomain {
        /// The trust domain whose bundle is at fault.
        trust_domain: TrustDomain,
        /// The error.
        #[source]
        source: Box<BundleError>,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> BundleError {
    BundleError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The X.509 roots of one trust domain, with the SPIFFE bundle's sequence and refresh hint.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    sequence: Option<u64>,
    refresh_hint: Option<u64>,
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        // `anchors` is derived from `roots`.
        self.roots == other.roots
            && self.sequence == other.sequence
            && self.refresh_hint == other.refresh_hint
    }
}

impl TrustBundle {
    /// An empty bundle. SPIFFE: with no keys, "workloads MUST treat all SVIDs from the trust
    /// domain as invalid and untrusted" — verification against it always fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle of these roots (deduplicated, order kept).
    pub fn from_roots(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let mut b = Self::new();
        for (index, root) in roots.into_iter().enumerate() {
            b.add_root_at(root, index)?;
        }
        Ok(b)
    }

    /// Reads every CERTIFICATE of a PEM document as a root.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(BundleError::NoCertificates);
        }
        Self::from_roots(certs)
    }

    /// Adds a root; returns false if it was already present.
    pub fn add_root(&mut self, root: CertificateDer<'static>) -> Result<bool, BundleError> {
        let index = self.roots.len();
        self.add_root_at(root, index)
    }

    fn add_root_at(
        &mut self,
        root: CertificateDer<'static>,
        index: usize,
    ) -> Result<bool, BundleError> {
        if self.roots.contains(&root) {
            return Ok(false);
        }
        let anchor = webpki::anchor_from_trusted_cert(&root)
            .map_err(|e| BundleError::NotAnAnchor {
                index,
                reason: format!("{e:?}"),
            })?
            .to_owned();
        self.roots.push(root);
        self.anchors.push(anchor);
        Ok(true)
    }

    /// The roots, as DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as parsed WebPKI trust anchors (same order as [`TrustBundle::roots`]).
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// True when the bundle holds no root.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The SPIFFE bundle's `spiffe_sequence`, if known.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// Sets `spiffe_sequence`.
    pub fn set_sequence(&mut self, sequence: Option<u64>) {
        self.sequence = sequence;
    }

    /// The SPIFFE bundle's `spiffe_refresh_hint` in seconds, if known.
    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    /// Sets `spiffe_refresh_hint` (seconds).
    pub fn set_refresh_hint(&mut self, seconds: Option<u64>) {
        self.refresh_hint = seconds;
    }

    /// Adds every root of `other` not already present; keeps the higher sequence number.
    pub fn merge(&mut self, other: &TrustBundle) {
        for (root, anchor) in other.roots.iter().zip(&other.anchors) {
            if !self.roots.contains(root) {
                self.roots.push(root.clone());
                self.anchors.push(anchor.clone());
            }
        }
        self.sequence = self.sequence.max(other.sequence);
        self.refresh_hint = match (self.refresh_hint, other.refresh_hint) {
            // The more frequent hint wins: rotations propagate no slower than either asks.
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The roots as concatenated PEM.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| pem_encode("CERTIFICATE", r))
            .collect()
    }

    /// The bundle as a SPIFFE bundle (JWK Set) value.
    pub fn to_spiffe_value(&self) -> Result<Value, BundleError> {
        let mut keys = Vec::with_capacity(self.roots.len());
        for root in &self.roots {
            let mut jwk = jwk_key_params(root)?.into_members();
            // X509-SVID 6.1: "The `use` parameter of each JWK entry MUST be set to
            // `x509-svid`. Additionally, the `kid` parameter of each JWK entry MUST NOT be
            // set." ... "each entry ... MUST contain the `x5c` parameter with a value equal to
            // the base64 encoded DER CA certificate ... exactly one CA certificate".
            jwk.insert("use".into(), Value::from(USE_X509_SVID));
            jwk.insert(
                "x5c".into(),
                Value::Array(vec![Value::from(STANDARD.encode(root))]),
            );
            keys.push(Value::Object(jwk));
        }
        let mut set = Map::new();
        // Trust Domain and Bundle 4.1.3: "The parameter `keys` MUST be present."
        set.insert("keys".into(), Value::Array(keys));
        if let Some(seq) = self.sequence {
            set.insert("spiffe_sequence".into(), Value::from(seq));
        }
        if let Some(hint) = self.refresh_hint {
            set.insert("spiffe_refresh_hint".into(), Value::from(hint));
        }
        Ok(Value::Object(set))
    }

    /// The bundle as SPIFFE bundle JSON (pretty-printed).
    pub fn to_spiffe_json(&self) -> Result<String, BundleError> {
        Ok(serde_json::to_string_pretty(&self.to_spiffe_value()?)?)
    }

    /// Reads a SPIFFE bundle (JWK Set) document.
    pub fn from_spiffe_json(json: &str) -> Result<Self, BundleError> {
        let value: Value = serde_json::from_str(json)?;
        Self::from_spiffe_value(&value)
    }

    /// Reads a SPIFFE bundle (JWK Set) value. Keys for other SVID types or of unknown key
    /// types are skipped as the standard requires; malformed X.509 entries are errors.
    pub fn from_spiffe_value(value: &Value) -> Result<Self, BundleError> {
        let set = value
            .as_object()
            .ok_or_else(|| field("(bundle)", "must be a JSON object (a JWK Set)"))?;
        let mut bundle = Self::new();
        bundle.sequence = optional_u64(set, "spiffe_sequence")?;
        bundle.refresh_hint = optional_u64(set, "spiffe_refresh_hint")?;
        // 4.1.3: "The parameter `keys` MUST be present. Its value is an array of JWKs."
        let keys = set
            .get("keys")
            .ok_or_else(|| field("keys", "missing (MUST be present)"))?
            .as_array()
            .ok_or_else(|| field("keys", "must be an array of JWKs"))?;
        for (i, key) in keys.iter().enumerate() {
            if let Some(root) = x509_root_of_jwk(key, i)? {
                bundle.add_root_at(root, i).map_err(|e| match e {
                    BundleError::NotAnAnchor { reason, .. } => {
                        field(format!("keys[{i}].x5c[0]"), reason)
                    }
                    other => other,
                })?;
            }
        }
        Ok(bundle)
    }
}

fn optional_u64(set: &Map<String, Value>, name: &str) -> Result<Option<u64>, BundleError> {
    match set.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| field(name, "must be a non-negative integer")),
    }
}

/// Trust domain → roots: what a verifier trusts, per trust domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustBundleSet {
    domains: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    /// An empty set (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the bundle of `td`, replacing any previous one.
    pub fn insert(&mut self, td: TrustDomain, bundle: TrustBundle) {
        self.domains.insert(td, bundle);
    }

    /// Adds one root to `td`'s bundle; returns false if it was already there.
    pub fn add_root(
        &mut self,
        td: &TrustDomain,
        root: CertificateDer<'static>,
    ) -> Result<bool, BundleError> {
        self.domains
            .entry(td.clone())
            .or_default()
            .add_root(root)
            .map_err(|e| in_td(td, e))
    }

    /// Adds every CERTIFICATE of `pem` to `td`'s bundle; returns how many were new.
    pub fn add_pem(&mut self, td: &TrustDomain, pem: &str) -> Result<usize, BundleError> {
        let incoming = TrustBundle::from_pem(pem).map_err(|e| in_td(td, e))?;
        let bundle = self.domains.entry(td.clone()).or_default();
        let before = bundle.roots.len();
        bundle.merge(&incoming);
        Ok(bundle.roots.len() - before)
    }

    /// The bundle of `td`.
    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.domains.get(td)
    }

    /// The roots of `td` (empty if unknown).
    pub fn roots(&self, td: &TrustDomain) -> &[CertificateDer<'static>] {
        self.domains.get(td).map_or(&[], |b| b.roots())
    }

    /// The trust domains present, sorted.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    /// Every (trust domain, bundle), sorted by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = (&TrustDomain, &TrustBundle)> {
        self.domains.iter()
    }

    /// Number of trust domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// True when no trust domain is present.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Adds `other` into `self`: new trust domains are added; for a trust domain in both,
    /// the roots are united (deduplicated), so a rotation in progress keeps both roots.
    pub fn merge(&mut self, other: &TrustBundleSet) {
        for (td, bundle) in &other.domains {
            self.domains.entry(td.clone()).or_default().merge(bundle);
        }
    }

    /// The union of several sets (`trustmesh bundle combine`).
    pub fn combine(sets: impl IntoIterator<Item = TrustBundleSet>) -> TrustBundleSet {
        let mut out = TrustBundleSet::new();
        for set in sets {
            out.merge(&set);
        }
        out
    }

    /// `td`'s roots as PEM, if `td` is present.
    pub fn to_pem(&self, td: &TrustDomain) -> Option<String> {
        self.domains.get(td).map(TrustBundle::to_pem)
    }

    /// The multi-domain document `{"<td>": <SPIFFE bundle>, ...}`, pretty-printed.
    pub fn to_json(&self) -> Result<String, BundleError> {
        let mut doc = Map::new();
        for (td, bundle) in &self.domains {
            let value = bundle.to_spiffe_value().map_err(|e| in_td(td, e))?;
            doc.insert(td.as_str().to_owned(), value);
        }
        Ok(serde_json::to_string_pretty(&Value::Object(doc))?)
    }

    /// Reads a multi-domain document. Keys may be bare names (`eu.cluster.local`) or trust
    /// domain IDs (`spiffe://eu.cluster.local`, as the Workload API keys federated bundles).
    pub fn from_json(json: &str) -> Result<Self, BundleError> {
        let value: Value = serde_json::from_str(json)?;
        let doc = value.as_object().ok_or_else(|| {
            field(
                "(document)",
                "must be a JSON object of trust domain → bundle",
            )
        })?;
        let mut set = Self::new();
        for (key, bundle) in doc {
            let td = TrustDomain::new(key).map_err(|source| BundleError::BadTrustDomain {
                key: key.clone(),
                source,
            })?;
            let bundle = TrustBundle::from_spiffe_value(bundle).map_err(|e| in_td(&td, e))?;
            set.domains.entry(td).or_default().merge(&bundle);
        }
        Ok(set)
    }
}

fn in_td(td: &TrustDomain, e: BundleError) -> BundleError {
    BundleError::InTrustDomain {
        trust_domain: td.clone(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ca::Ca;
    use crate::keys::{KeyAlgorithm, KeyPair};
    use std::time::{Duration, SystemTime};

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }
    fn root(name: &str) -> CertificateDer<'static> {
        Ca::generate(&td(name), SystemTime::now())
            .unwrap()
            .cert_der()
            .clone()
    }

    fn self_signed_with(alg: KeyAlgorithm) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = SystemTime::now().into();
        p.not_after = (SystemTime::now() + Duration::from_secs(3600)).into();
        p.self_signed(key.rcgen()).unwrap().der().clone()
    }

    #[test]
    fn spiffe_bundle_round_trips_with_the_standard_members() {
        let mut b = TrustBundle::from_roots([root("a.org"), root("a.org")]).unwrap();
        assert_eq!(b.roots().len(), 2);
        b.set_sequence(Some(7));
        b.set_refresh_hint(Some(300));
        let v = b.to_spiffe_value().unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        let k = &v["keys"][0];
        assert_eq!(k["use"], "x509-svid");
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert!(k.get("kid").is_none(), "X509-SVID 6.1: kid MUST NOT be set");
        // base64url, no padding, 32-byte coordinates → 43 characters.
        for c in ["x", "y"] {
            let s = k[c].as_str().unwrap();
            assert_eq!(s.len(), 43, "{c}");
            assert!(!s.contains('=') && !s.contains('+') && !s.contains('/'));
        }
        // x5c: standard base64 of the DER, exactly one certificate.
        let x5c = k["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        assert_eq!(
            STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
            b.roots()[0].as_ref()
        );
        let back = TrustBundle::from_spiffe_json(&b.to_spiffe_json().unwrap()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn jwk_members_match_the_certificate_for_rsa_p384_and_ed25519() {
        let roots = [
            self_signed_with(KeyAlgorithm::Rsa { bits: 2048 }),
            self_signed_with(KeyAlgorithm::EcdsaP384),
            self_signed_with(KeyAlgorithm::Ed25519),
        ];
        let b = TrustBundle::from_roots(roots).unwrap();
        let v = b.to_spiffe_value().unwrap();
        assert_eq!(v["keys"][0]["kty"], "RSA");
        assert_eq!(v["keys"][0]["e"], "AQAB", "65537, no leading zeros");
        assert_eq!(v["keys"][0]["n"].as_str().unwrap().len(), 342, "256 octets");
        assert_eq!(v["keys"][1]["crv"], "P-384");
        assert_eq!(v["keys"][1]["x"].as_str().unwrap().len(), 64, "48 octets");
        assert_eq!(v["keys"][2]["kty"], "OKP");
        assert_eq!(v["keys"][2]["crv"], "Ed25519");
        assert_eq!(TrustBundle::from_spiffe_value(&v).unwrap(), b);
    }

    /// Trust Domain and Bundle 4.2.2 and 4.2.1, X509-SVID 6.2: elements to ignore.
    #[test]
    fn ignores_what_the_standard_says_to_ignore() {
        let good = TrustBundle::from_roots([root("a.org")])
            .unwrap()
            .to_spiffe_value()
            .unwrap();
        let key = good["keys"][0].clone();
        let mut jwt_key = key.clone();
        jwt_key["use"] = Value::from("jwt-svid");
        let mut no_use = key.clone();
        no_use.as_object_mut().unwrap().remove("use");
        let mut unknown_kty = key.clone();
        unknown_kty["kty"] = Value::from("oct");
        let mut no_x5c = key.clone();
        no_x5c.as_object_mut().unwrap().remove("x5c");
        let mut empty_x5c = key.clone();
        empty_x5c["x5c"] = Value::Array(vec![]);
        let mut extra_x5c = key.clone();
        extra_x5c["x5c"]
            .as_array_mut()
            .unwrap()
            .push(Value::from(STANDARD.encode(root("b.org"))));
        let doc = serde_json::json!({
            "keys": [jwt_key, no_use, unknown_kty, no_x5c, empty_x5c, extra_x5c]
        });
        let b = TrustBundle::from_spiffe_value(&doc).unwrap();
        assert_eq!(
            b.roots().len(),
            1,
            "only extra_x5c's first certificate counts"
        );
        assert_eq!(
            STANDARD.encode(&b.roots()[0]),
            key["x5c"][0].as_str().unwrap()
        );
        // An empty key set is valid and yields an empty bundle.
        assert!(
            TrustBundle::from_spiffe_json(r#"{"keys": []}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_bundles_are_rejected_naming_the_field() {
        let good = TrustBundle::from_roots([root("a.org")])
            .unwrap()
            .to_spiffe_value()
            .unwrap();
        let key = good["keys"][0].clone();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut k = key.clone();
            f(&mut k);
            serde_json::json!({ "keys": [k] })
        };
        let other_root = root("b.org");
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!({}), "keys"),
            (serde_json::json!({"keys": {}}), "keys"),
            (
                serde_json::json!({"keys": [], "spiffe_sequence": -1}),
                "spiffe_sequence",
            ),
            (
                serde_json::json!({"keys": [], "spiffe_refresh_hint": "1h"}),
                "spiffe_refresh_hint",
            ),
            (serde_json::json!({"keys": [1]}), "keys[0]"),
            (
                with(&|k| {
                    k.as_object_mut().unwrap().remove("kty");
                }),
                "keys[0].kty",
            ),
            (with(&|k| k["use"] = Value::from(1)), "keys[0].use"),
            (with(&|k| k["x5c"] = Value::from("abc")), "keys[0].x5c"),
            (
                with(&|k| k["x5c"][0] = Value::from("%%%")),
                "keys[0].x5c[0]",
            ),
            (
                with(&|k| k["x5c"][0] = Value::from(STANDARD.encode(b"not der"))),
                "keys[0].x5c[0]",
            ),
            (with(&|k| k["kty"] = Value::from("RSA")), "keys[0].kty"),
            (
                with(&|k| {
                    k.as_object_mut().unwrap().remove("y");
                }),
                "keys[0].y",
            ),
            (with(&|k| k["x"] = Value::from("AAAA")), "keys[0].x"),
            (with(&|k| k["crv"] = Value::from("P-384")), "keys[0].crv"),
            (
                with(&|k| k["x5c"][0] = Value::from(STANDARD.encode(&other_root))),
                "keys[0].x",
            ),
        ];
        for (doc, want_field) in cases {
            match TrustBundle::from_spiffe_value(&doc) {
                Err(BundleError::Field { field, reason }) => {
                    assert_eq!(field, want_field, "{doc}: {reason}")
                }
                other => panic!("{doc}: expected error on {want_field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn multi_domain_json_round_trips_and_accepts_spiffe_keys() {
        let mut set = TrustBundleSet::new();
        set.add_root(&td("a.org"), root("a.org")).unwrap();
        set.add_root(&td("b.org"), root("b.org")).unwrap();
        let json = set.to_json().unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert!(v["a.org"]["keys"].is_array());
        assert_eq!(TrustBundleSet::from_json(&json).unwrap(), set);
        let spiffe_keyed = json.replace("\"a.org\"", "\"spiffe://a.org\"");
        assert_eq!(TrustBundleSet::from_json(&spiffe_keyed).unwrap(), set);
        match TrustBundleSet::from_json(r#"{"Bad Domain": {"keys": []}}"#) {
            Err(BundleError::BadTrustDomain { key, .. }) => assert_eq!(key, "Bad Domain"),
            other => panic!("{other:?}"),
        }
        let err = TrustBundleSet::from_json(r#"{"a.org": {"keys": [{"use": "x509-svid"}]}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "trust domain a.org: keys[0].kty: missing (MUST be set)"
        );
    }

    #[test]
    fn combine_unites_and_deduplicates_per_trust_domain() {
        let (r1, r2, r3) = (root("a.org"), root("a.org"), root("b.org"));
        let mut east = TrustBundleSet::new();
        east.add_root(&td("a.org"), r1.clone()).unwrap();
        let mut west = TrustBundleSet::new();
        west.add_root(&td("a.org"), r1.clone()).unwrap();
        west.add_root(&td("a.org"), r2.clone()).unwrap();
        west.add_root(&td("b.org"), r3.clone()).unwrap();
        let all = TrustBundleSet::combine([east, west]);
        assert_eq!(all.roots(&td("a.org")), &[r1, r2]);
        assert_eq!(all.roots(&td("b.org")), &[r3]);
        assert_eq!(all.get(&td("a.org")).unwrap().anchors().len(), 2);
        assert!(all.roots(&td("c.org")).is_empty());
    }

    #[test]
    fn merge_keeps_the_newer_sequence_and_the_shorter_refresh_hint() {
        let mut a = TrustBundle::from_roots([root("a.org")]).unwrap();
        a.set_sequence(Some(3));
        a.set_refresh_hint(Some(600));
        let mut b = TrustBundle::from_roots([root("a.org")]).unwrap();
        b.set_sequence(Some(5));
        b.set_refresh_hint(Some(300));
        a.merge(&b);
        assert_eq!(a.roots().len(), 2);
        assert_eq!(a.sequence(), Some(5));
        assert_eq!(a.refresh_hint(), Some(300));
        let mut c = TrustBundle::new();
        c.merge(&a);
        assert_eq!(c, a);
    }

    #[test]
    fn pem_import_export() {
        let mut set = TrustBundleSet::new();
        let pem = format!(
            "{}{}",
            pem_encode("CERTIFICATE", &root("a.org")),
            pem_encode("CERTIFICATE", &root("a.org"))
        );
        assert_eq!(set.add_pem(&td("a.org"), &pem).unwrap(), 2);
        assert_eq!(set.add_pem(&td("a.org"), &pem).unwrap(), 0, "deduplicated");
        assert_eq!(set.to_pem(&td("a.org")).unwrap(), pem);
        assert!(matches!(
            set.add_pem(&td("a.org"), "nothing"),
            Err(BundleError::InTrustDomain { .. })
        ));
        assert!(matches!(
            TrustBundle::from_pem(""),
            Err(BundleError::NoCertificates)
        ));
    }
}
