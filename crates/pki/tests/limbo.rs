//! The x509-limbo path-validation vectors (C2SP, Apache-2.0; vendored in
//! `tests/data/x509-limbo/`) run through the same chain-validation function the SPIFFE
//! verifier uses (`verify::verify_chain_with`), plus the peer-name, key-usage and depth
//! checks each case asks for.
//!
//! `exceptions.json` lists every case whose result differs from the expected one, with the
//! reason. The test fails on a divergence that is not listed, and on a listed exception that
//! no longer diverges (or names no case), so the list stays true.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use serde::Deserialize;
use trustmesh_core::TrustDomain;
use trustmesh_pki::TrustBundleSet;
use trustmesh_pki::svid::CertInfo;
use trustmesh_pki::verify::{ChainPolicy, Usage, VerifyError, verify_chain_with, verify_svid};

const LIMBO: &str = include_str!("data/x509-limbo/limbo-nobettertls.json");
const EXCEPTIONS: &str = include_str!("data/x509-limbo/exceptions.json");

// ---- serde model of limbo-schema.json (version 1) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limbo {
    version: u32,
    testcases: Vec<Testcase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum ExpectedResult {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum ValidationKind {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Feature {
    HasPolicyConstraints,
    HasCertPolicies,
    NoCertPolicies,
    PedanticPublicSuffixWildcard,
    NameConstraintDn,
    PedanticWebpkiSubscriberKey,
    PedanticWebpkiEku,
    PedanticSerialNumber,
    MaxChainDepth,
    PedanticRfc5280,
    Rfc5280IncompatibleWithWebpki,
    DenialOfService,
    HasCrl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Importance {
    #[default]
    Undetermined,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum KeyUsage {
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    #[serde(rename = "cRLSign")]
    CrlSign,
    EncipherOnly,
    DecipherOnly,
}

impl KeyUsage {
    /// The name `CertInfo` reports.
    fn name(self) -> &'static str {
        match self {
            Self::DigitalSignature => "digitalSignature",
            Self::ContentCommitment => "contentCommitment",
            Self::KeyEncipherment => "keyEncipherment",
            Self::DataEncipherment => "dataEncipherment",
            Self::KeyAgreement => "keyAgreement",
            Self::KeyCertSign => "keyCertSign",
            Self::CrlSign => "cRLSign",
            Self::EncipherOnly => "encipherOnly",
            Self::DecipherOnly => "decipherOnly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum KnownEku {
    #[serde(rename = "anyExtendedKeyUsage")]
    Any,
    #[serde(rename = "serverAuth")]
    ServerAuth,
    #[serde(rename = "clientAuth")]
    ClientAuth,
    #[serde(rename = "codeSigning")]
    CodeSigning,
    #[serde(rename = "emailProtection")]
    EmailProtection,
    #[serde(rename = "timeStamping")]
    TimeStamping,
    #[serde(rename = "OCSPSigning")]
    OcspSigning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum PeerKind {
    #[serde(rename = "RFC822")]
    Rfc822,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "IP")]
    Ip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerName {
    kind: PeerKind,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // descriptive fields are kept so the model matches the schema
struct Testcase {
    id: String,
    #[serde(default)]
    conflicts_with: Vec<String>,
    #[serde(default)]
    features: Vec<Feature>,
    #[serde(default)]
    importance: Importance,
    description: String,
    validation_kind: ValidationKind,
    trusted_certs: Vec<String>,
    untrusted_intermediates: Vec<String>,
    peer_certificate: String,
    #[serde(default)]
    peer_certificate_key: Option<String>,
    #[serde(default)]
    validation_time: Option<String>,
    signature_algorithms: Vec<String>,
    key_usage: Vec<KeyUsage>,
    extended_key_usage: Vec<KnownEku>,
    expected_result: ExpectedResult,
    #[serde(default)]
    expected_peer_name: Option<PeerName>,
    expected_peer_names: Vec<PeerName>,
    #[serde(default)]
    max_chain_depth: Option<usize>,
    #[serde(default)]
    crls: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Exception {
    expected: ExpectedResult,
    actual: ExpectedResult,
    reason: String,
}

fn load() -> Vec<Testcase> {
    let limbo: Limbo = serde_json::from_str(LIMBO).expect("limbo JSON matches the schema");
    assert_eq!(limbo.version, 1);
    limbo.testcases
}

fn certs(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, String> {
    pems.iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| format!("PEM: {e}")))
        .collect()
}

fn validation_time(tc: &Testcase) -> UnixTime {
    match &tc.validation_time {
        None => UnixTime::now(),
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{}: validation_time {s:?}: {e}", tc.id));
            UnixTime::since_unix_epoch(Duration::from_secs(
                u64::try_from(t.unix_timestamp()).expect("after 1970"),
            ))
        }
    }
}

fn usage(tc: &Testcase) -> Usage {
    if tc.extended_key_usage.contains(&KnownEku::ServerAuth) {
        Usage::Server
    } else if tc.extended_key_usage.contains(&KnownEku::ClientAuth) {
        Usage::Client
    } else {
        match tc.validation_kind {
            ValidationKind::Server => Usage::Server,
            ValidationKind::Client => Usage::Client,
        }
    }
}

fn check_name(ee: &webpki::EndEntityCert<'_>, peer: &PeerName) -> Result<(), String> {
    let name = match peer.kind {
        PeerKind::Dns => ServerName::try_from(peer.value.as_str())
            .map_err(|e| format!("peer name {:?}: {e}", peer.value))?,
        PeerKind::Ip => ServerName::IpAddress(
            peer.value
                .parse::<IpAddr>()
                .map_err(|e| format!("peer IP {:?}: {e}", peer.value))?
                .into(),
        ),
        // webpki has no RFC 822 name matching; such names are not checked (and never are in
        // the mesh: identities are SPIFFE URIs).
        PeerKind::Rfc822 => return Ok(()),
    };
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("name {:?}: {e:?}", peer.value))
}

/// Runs one case; `Err` carries why it failed.
fn evaluate(tc: &Testcase) -> Result<(), String> {
    let trusted = certs(&tc.trusted_certs)?;
    let anchors = trusted
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map_err(|e| format!("trust anchor: {e:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let intermediates = certs(&tc.untrusted_intermediates)?;
    let leaf = CertificateDer::from_pem_slice(tc.peer_certificate.as_bytes())
        .map_err(|e| format!("leaf PEM: {e}"))?;

    let crl_ders = tc
        .crls
        .iter()
        .map(|p| CertificateRevocationListDer::from_pem_slice(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CRL PEM: {e}"))?;
    let crls = crl_ders
        .iter()
        .map(|d| {
            webpki::BorrowedCertRevocationList::from_der(d).map(webpki::CertRevocationList::from)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CRL: {e:?}"))?;
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = if crl_refs.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&crl_refs)
                .map_err(|e| format!("{e:?}"))?
                .with_depth(webpki::RevocationCheckDepth::Chain)
                // The CRLs cover some certificates of the path, not necessarily all.
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .build(),
        )
    };

    let policy = ChainPolicy {
        usage: usage(tc),
        max_intermediates: tc.max_chain_depth,
        revocation,
    };
    verify_chain_with(
        &leaf,
        &intermediates,
        &anchors,
        validation_time(tc),
        &policy,
    )
    .map_err(|e| e.to_string())?;

    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("{e:?}"))?;
    if let Some(peer) = &tc.expected_peer_name {
        check_name(&ee, peer)?;
    }
    for peer in &tc.expected_peer_names {
        check_name(&ee, peer)?;
    }
    if !tc.key_usage.is_empty() {
        let info = CertInfo::parse(&leaf).map_err(|e| e.to_string())?;
        // Only a present keyUsage extension restricts the key.
        if !info.key_usage.is_empty() {
            for ku in &tc.key_usage {
                if !info.key_usage.iter().any(|k| k == ku.name()) {
                    return Err(format!("leaf key usage lacks {}", ku.name()));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn limbo_results_match_expectations_or_listed_exceptions() {
    let cases = load();
    let exceptions: BTreeMap<String, Exception> =
        serde_json::from_str(EXCEPTIONS).expect("exceptions.json");
    let mut problems = Vec::new();
    let (mut agree, mut diverge) = (0usize, 0usize);
    let mut seen = BTreeMap::new();
    for tc in &cases {
        let outcome = evaluate(tc);
        let actual = if outcome.is_ok() {
            ExpectedResult::Success
        } else {
            ExpectedResult::Failure
        };
        seen.insert(tc.id.clone(), actual);
        match (actual == tc.expected_result, exceptions.get(&tc.id)) {
            (true, None) => agree += 1,
            (true, Some(_)) => problems.push(format!(
                "{}: listed in exceptions.json but now gives the expected {:?}: remove the exception",
                tc.id, tc.expected_result
            )),
            (false, Some(ex)) if ex.actual == actual && ex.expected == tc.expected_result => {
                assert!(!ex.reason.trim().is_empty(), "{}: exception without reason", tc.id);
                diverge += 1;
            }
            (false, _) => problems.push(format!(
                "{}: expected {:?}, got {:?} ({}) — not listed in exceptions.json",
                tc.id,
                tc.expected_result,
                actual,
                outcome.err().unwrap_or_default()
            )),
        }
    }
    for id in exceptions.keys() {
        if !seen.contains_key(id) {
            problems.push(format!("{id}: exception for a case that does not exist"));
        }
    }
    eprintln!(
        "x509-limbo: {} cases, {agree} as expected, {diverge} listed exceptions",
        cases.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(agree + diverge, cases.len());
}

/// The documented divergence class: plain RFC 5280 accepts these chains, but none is an
/// X509-SVID (no `spiffe://` URI SAN), so the SPIFFE layer must reject every one of them,
/// before any bundle is even consulted.
#[test]
fn spiffe_layer_rejects_every_limbo_success_case() {
    let mut rejected_by: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut success_cases = 0;
    for tc in load()
        .iter()
        .filter(|tc| tc.expected_result == ExpectedResult::Success)
    {
        success_cases += 1;
        let mut chain =
            vec![CertificateDer::from_pem_slice(tc.peer_certificate.as_bytes()).unwrap()];
        chain.extend(certs(&tc.untrusted_intermediates).unwrap());
        // Trust the case's roots under some trust domain: the leaf never gets that far.
        let td = TrustDomain::new("limbo.test").unwrap();
        let mut bundles = TrustBundleSet::new();
        for root in certs(&tc.trusted_certs).unwrap() {
            let _ = bundles.add_root(&td, root);
        }
        let err = verify_svid(&chain, &bundles, validation_time(tc), usage(tc)).expect_err(
            &format!("{}: a SPIFFE verifier must reject a non-SVID", tc.id),
        );
        let kind = match err {
            VerifyError::NoUriSan => "NoUriSan",
            VerifyError::MultipleUriSans { .. } => "MultipleUriSans",
            VerifyError::NotSpiffe { .. } => "NotSpiffe",
            other => panic!(
                "{}: rejected for {other}, expected a missing SPIFFE ID",
                tc.id
            ),
        };
        *rejected_by.entry(kind).or_default() += 1;
    }
    eprintln!("SPIFFE layer over {success_cases} limbo SUCCESS cases: rejected {rejected_by:?}");
    assert_eq!(rejected_by.values().sum::<usize>(), success_cases);
}
