//! SPIFFE identities: [`TrustDomain`] and [`SpiffeId`], types that cannot hold an invalid value.
//!
//! Rules implemented here are those of the SPIFFE ID standard
//! (spiffe/spiffe `standards/SPIFFE-ID.md`); each rule has a test below that quotes it.
//! Istio's workload shape `spiffe://<td>/ns/<ns>/sa/<sa>` is layered on top
//! ([`SpiffeId::workload`], [`SpiffeId::namespace`], [`SpiffeId::service_account`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// "SPIFFE implementations MUST support SPIFFE URIs up to 2048 bytes in length and SHOULD NOT
/// generate URIs of length greater than 2048 bytes."
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// "The trust domain name ... MUST NOT exceed 255 bytes" (DNS name limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// The service account of the control plane's own SVID,
/// `spiffe://<trust-domain>/ns/<root-namespace>/sa/trustmesh-control-plane`; proxies trust
/// whoever presents that identity, so validation reserves the name.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "trustmesh-control-plane";

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("empty")]
    Empty,
    /// The scheme was missing or not exactly `spiffe://`.
    #[error("scheme must be spiffe:// (lowercase)")]
    WrongScheme,
    /// The trust domain component was empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain held a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain character {0:?} not allowed: only lowercase letters, digits, '.', '-' and '_'"
    )]
    BadTrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A path segment was empty (`//` or a trailing `/`).
    #[error("path has an empty segment (double or trailing slash)")]
    EmptySegment,
    /// A path segment was `.` or `..`.
    #[error("path segment '.' or '..' not allowed")]
    DotSegment,
    /// A path segment held a character outside `[a-zA-Z0-9._-]`.
    #[error("path character {0:?} not allowed: only letters, digits, '.', '-' and '_'")]
    BadPathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The ID is not of Istio's workload form `/ns/<ns>/sa/<sa>`.
    #[error(
        "not a workload identity of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotWorkload,
}

/// A SPIFFE trust domain name such as `cluster.local` or `eu.cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name. Accepts the bare name or `spiffe://name`.
    pub fn new(s: &str) -> Result<Self, IdError> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

fn validate_trust_domain(name: &str) -> Result<(), IdError> {
    // "The trust domain ... MUST NOT be empty."
    if name.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    // "Trust domain names MUST contain only lowercase letters, numbers, dots, dashes, and
    // underscores." (So no port, no userinfo, no uppercase.)
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdError::BadTrustDomainChar(c));
    }
    Ok(())
}

/// A valid SPIFFE ID: `spiffe://<trust-domain>[/<segment>...]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole URI.
    uri: String,
    /// Byte offset where the path starts (== uri.len() when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        // "The scheme and trust domain name are case-insensitive, but ... MUST be lowercase"
        // for SPIFFE IDs we generate; we accept only the canonical lowercase form, as go-spiffe does.
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// The Istio workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        Self::parse(&format!(
            "{SCHEME}{}/ns/{namespace}/sa/{service_account}",
            td.as_str()
        ))
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain part as a string slice.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The whole URI, `spiffe://...`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Istio's principal notation: the URI without `spiffe://` (`td/ns/x/sa/y`).
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// Parses Istio's principal notation (`td/ns/x/sa/y`) or a full SPIFFE ID.
    pub fn from_principal(s: &str) -> Result<Self, IdError> {
        if s.starts_with(SCHEME) {
            Self::parse(s)
        } else {
            Self::parse(&format!("{SCHEME}{s}"))
        }
    }

    fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// True when the path is Istio's `/ns/<ns>/sa/<sa>`.
    pub fn is_workload(&self) -> bool {
        self.workload_parts().is_some()
    }

    /// The `<ns>` of `/ns/<ns>/sa/<sa>`, if the ID has that shape.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The `<sa>` of `/ns/<ns>/sa/<sa>`, if the ID has that shape.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // Path starts with '/' by construction. "Paths MUST NOT include empty segments",
    // "MUST NOT include relative path modifiers (. or ..)", and "MUST NOT include a trailing
    // forward slash"; "Valid characters are [a-zA-Z0-9], '.', '-' and '_'". Query and fragment
    // ('?', '#') and percent-encoding fall out of the character rule.
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}
impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}
impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}
impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}
impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

macro_rules! serde_via_str {
    ($t:ty, $parse:path, $as_str:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.$as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(SpiffeId, SpiffeId::parse, as_str);
serde_via_str!(TrustDomain, TrustDomain::new, as_str);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_istio_workload_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id.trust_domain_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/sleep");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("sleep"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        let td = TrustDomain::new("eu.cluster.local").unwrap();
        let w = SpiffeId::workload(&td, "prod", "api").unwrap();
        assert_eq!(w.as_str(), "spiffe://eu.cluster.local/ns/prod/sa/api");
        assert_eq!(
            SpiffeId::from_principal("eu.cluster.local/ns/prod/sa/api").unwrap(),
            w
        );
        assert!(!SpiffeId::parse("spiffe://td/foo").unwrap().is_workload());
        assert!(
            !SpiffeId::parse("spiffe://td/ns/a/sa/b/c")
                .unwrap()
                .is_workload()
        );
    }

    #[test]
    fn trust_domain_id_has_empty_path() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id.trust_domain().id_string(), "spiffe://example.org");
    }

    /// One case per rule of the SPIFFE ID standard, each quoting it.
    #[test]
    fn rejects_what_the_spiffe_id_standard_forbids() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            // "The scheme ... MUST be set to spiffe"
            ("https://example.org/a", IdError::WrongScheme),
            ("SPIFFE://example.org/a", IdError::WrongScheme),
            ("example.org/a", IdError::WrongScheme),
            // "The trust domain ... MUST NOT be empty"
            ("spiffe:///ns/a", IdError::EmptyTrustDomain),
            ("spiffe://", IdError::EmptyTrustDomain),
            // "only lowercase letters, numbers, dots, dashes, and underscores"
            ("spiffe://Example.org/a", IdError::BadTrustDomainChar('E')),
            (
                "spiffe://example.org:8080/a",
                IdError::BadTrustDomainChar(':'),
            ),
            (
                "spiffe://user@example.org/a",
                IdError::BadTrustDomainChar('@'),
            ),
            // "Paths MUST NOT include empty segments"
            ("spiffe://example.org//a", IdError::EmptySegment),
            // "MUST NOT include a trailing forward slash"
            ("spiffe://example.org/a/", IdError::EmptySegment),
            ("spiffe://example.org/", IdError::EmptySegment),
            // "MUST NOT include relative path modifiers"
            ("spiffe://example.org/a/./b", IdError::DotSegment),
            ("spiffe://example.org/a/../b", IdError::DotSegment),
            // path characters; also no query, fragment or percent-encoding
            ("spiffe://example.org/a b", IdError::BadPathChar(' ')),
            ("spiffe://example.org/a?x=1", IdError::BadPathChar('?')),
            ("spiffe://example.org/a#f", IdError::BadPathChar('#')),
            ("spiffe://example.org/a%20b", IdError::BadPathChar('%')),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref().err(),
                Some(want),
                "input {input:?}"
            );
        }
        let long_td = "a".repeat(256);
        assert_eq!(TrustDomain::new(&long_td), Err(IdError::TrustDomainTooLong));
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong));
    }

    #[test]
    fn serde_round_trip_rejects_invalid() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/a/sa/b\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://TD/x\"").is_err());
    }

    proptest! {
        /// Whatever parses prints back to the same string and re-parses to the same value.
        #[test]
        fn parse_display_round_trip(s in "spiffe://[a-z0-9._-]{1,20}(/[a-zA-Z0-9._-]{1,8}){0,4}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s.clone());
                prop_assert_eq!(SpiffeId::parse(&s).unwrap(), id);
            }
        }

        /// No input makes the parser panic, and accepted IDs satisfy every rule.
        #[test]
        fn never_panics_and_accepts_only_valid(s in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert!(id.as_str().starts_with("spiffe://"));
                prop_assert!(!id.path().ends_with('/'));
                prop_assert!(!id.path().contains("//"));
            }
        }
    }
}
