//! One test per acceptance and rejection rule of [`super::verify_svid`] and the verifiers,
//! plus an in-memory mutual TLS 1.3 handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::bundle::TrustBundle;
use crate::ca::Ca;
use crate::keys::KeyPair;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use rustls::{ClientConnection, ServerConnection};

const HOUR: Duration = Duration::from_secs(3600);

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}
fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}
fn at(t: SystemTime) -> UnixTime {
    system_to_unix(t)
}

struct Mesh {
    ca: Ca,
    bundles: TrustBundleSet,
}

fn mesh() -> Mesh {
    let ca = Ca::generate(&td("cluster.local"), t0()).unwrap();
    let mut bundles = TrustBundleSet::new();
    bundles
        .add_root(&td("cluster.local"), ca.root_der().clone())
        .unwrap();
    Mesh { ca, bundles }
}

/// A leaf signed by `ca` with the SVID profile, altered by `f`: for bad certificates.
fn leaf_with(ca: &Ca, f: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "test");
    p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/web")];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = (t0() - HOUR).into();
    p.not_after = (t0() + HOUR).into();
    p.use_authority_key_identifier_extension = true;
    f(&mut p);
    p.signed_by(key.rcgen(), ca.issuer()).unwrap().der().clone()
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

#[test]
fn valid_svid_passes_as_client_and_as_server() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    for usage in [Usage::Client, Usage::Server] {
        assert_eq!(
            verify_svid(&svid.chain_der, &m.bundles, at(t0()), usage).unwrap(),
            web
        );
    }
    let client_side = SpiffeClientVerifier::new(Arc::new(m.bundles.clone()));
    assert!(
        client_side
            .verify_client_cert(&svid.cert_der, &[], at(t0()))
            .is_ok()
    );
    let server_side =
        SpiffeServerVerifier::new(Arc::new(m.bundles), Allowed::Ids(vec![web.clone()]));
    assert_eq!(
        server_side.verify(&svid.cert_der, &[], at(t0())).unwrap(),
        web
    );
}

#[test]
fn expired_svid_is_rejected() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    let later = t0() + 2 * HOUR;
    match verify_svid(&svid.chain_der, &m.bundles, at(later), Usage::Client) {
        Err(VerifyError::Expired { id, not_after, .. }) => {
            assert_eq!(id, web);
            assert_eq!(not_after, svid.not_after);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    // The rustls error carries the certificate_expired meaning.
    let verifier = SpiffeClientVerifier::new(Arc::new(m.bundles));
    let err = verifier
        .verify_client_cert(&svid.cert_der, &[], at(later))
        .unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn not_yet_valid_svid_is_rejected() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    // Issued with notBefore = t0 - 60 s: two minutes earlier is too early.
    let early = t0() - Duration::from_secs(120);
    assert!(matches!(
        verify_svid(&svid.chain_der, &m.bundles, at(early), Usage::Client),
        Err(VerifyError::NotYetValid { .. })
    ));
}

#[test]
fn svid_from_an_untrusted_root_of_the_same_trust_domain_is_rejected() {
    let m = mesh();
    // An impostor CA claiming the same trust domain name.
    let impostor = Ca::generate(&td("cluster.local"), t0()).unwrap();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = impostor.issue_svid(&web, HOUR, t0()).unwrap();
    // Same issuer name as the trusted root, so webpki finds the root by name and the
    // signature check fails; either way the impostor is not trusted.
    match verify_svid(&svid.chain_der, &m.bundles, at(t0()), Usage::Client) {
        Err(VerifyError::Chain {
            id,
            source: ChainError::BadSignature,
        }) => assert_eq!(id, web),
        other => panic!("expected BadSignature, got {other:?}"),
    }
    // An impostor with another name has no path at all.
    let renamed = {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "impostor");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.not_before = (t0() - HOUR).into();
        p.not_after = (t0() + HOUR).into();
        let cert = p.self_signed(key.rcgen()).unwrap();
        Ca::from_pem(&cert.pem(), &key.to_pkcs8_pem().unwrap())
            .unwrap()
            .with_trust_domain(td("cluster.local"))
            .unwrap()
    };
    let (svid, _) = renamed.issue_svid(&web, HOUR, t0()).unwrap();
    match verify_svid(&svid.chain_der, &m.bundles, at(t0()), Usage::Client) {
        Err(VerifyError::UntrustedIssuer { id }) => assert_eq!(id, web),
        other => panic!("expected UntrustedIssuer, got {other:?}"),
    }
}

#[test]
fn svid_of_a_trust_domain_without_bundle_is_rejected() {
    let m = mesh();
    let eu_ca = Ca::generate(&td("eu.cluster.local"), t0()).unwrap();
    let eu = id("spiffe://eu.cluster.local/ns/default/sa/web");
    let (svid, _) = eu_ca.issue_svid(&eu, HOUR, t0()).unwrap();
    match verify_svid(&svid.chain_der, &m.bundles, at(t0()), Usage::Client) {
        Err(VerifyError::NoBundleForTrustDomain { id, trust_domain }) => {
            assert_eq!(id, eu);
            assert_eq!(trust_domain, td("eu.cluster.local"));
        }
        other => panic!("expected NoBundleForTrustDomain, got {other:?}"),
    }
    // Cross-trust-domain roots do not help: the eu root under cluster.local is not used for
    // eu IDs, and cluster.local's root does not vouch for eu IDs.
    let mut crossed = m.bundles.clone();
    crossed
        .add_root(&td("cluster.local"), eu_ca.root_der().clone())
        .unwrap();
    assert!(matches!(
        verify_svid(&svid.chain_der, &crossed, at(t0()), Usage::Client),
        Err(VerifyError::NoBundleForTrustDomain { .. })
    ));
    // With its own bundle, it passes.
    crossed
        .add_root(&td("eu.cluster.local"), eu_ca.root_der().clone())
        .unwrap();
    assert_eq!(
        verify_svid(&svid.chain_der, &crossed, at(t0()), Usage::Client).unwrap(),
        eu
    );
}

#[test]
fn empty_bundle_trusts_nothing() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    let mut revoked = TrustBundleSet::new();
    revoked.insert(td("cluster.local"), TrustBundle::new());
    assert!(matches!(
        verify_svid(&svid.chain_der, &revoked, at(t0()), Usage::Client),
        Err(VerifyError::EmptyBundle { .. })
    ));
}

/// X509-SVID 5.2: "the validator MUST ensure that the `CA` field in the basic constraints
/// extension is set to `false`".
#[test]
fn ca_certificate_as_leaf_is_rejected() {
    let m = mesh();
    let leaf = leaf_with(&m.ca, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    });
    assert!(matches!(
        verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client),
        Err(VerifyError::LeafIsCa { .. })
    ));
}

/// X509-SVID 5.2: "... and that `keyCertSign` and `cRLSign` are not set in the key usage
/// extension." (webpki alone accepts such a leaf.)
#[test]
fn leaf_with_signing_key_usage_is_rejected() {
    let m = mesh();
    for ku in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
        let leaf = leaf_with(&m.ca, |p| {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, ku];
        });
        assert!(
            verify_chain(
                &leaf,
                &[],
                m.bundles.get(&td("cluster.local")).unwrap().anchors(),
                at(t0()),
                Usage::Client
            )
            .is_ok(),
            "the chain layer accepts it"
        );
        match verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client) {
            Err(VerifyError::LeafCanSign { usages, .. }) => assert_eq!(usages.len(), 1),
            other => panic!("expected LeafCanSign for {ku:?}, got {other:?}"),
        }
    }
}

/// X509-SVID 2: "Validators encountering an SVID containing more than one URI SAN MUST
/// reject the SVID."
#[test]
fn two_uri_sans_are_rejected() {
    let m = mesh();
    let leaf = leaf_with(&m.ca, |p| {
        p.subject_alt_names = vec![
            uri("spiffe://cluster.local/ns/default/sa/web"),
            uri("spiffe://cluster.local/ns/default/sa/admin"),
        ];
    });
    match verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client) {
        Err(VerifyError::MultipleUriSans { uris }) => assert_eq!(uris.len(), 2),
        other => panic!("expected MultipleUriSans, got {other:?}"),
    }
}

#[test]
fn no_uri_san_is_rejected() {
    let m = mesh();
    let leaf = leaf_with(&m.ca, |p| {
        p.subject_alt_names = vec![SanType::DnsName(
            Ia5String::try_from("web.default").unwrap(),
        )];
    });
    assert_eq!(
        verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client),
        Err(VerifyError::NoUriSan)
    );
}

#[test]
fn non_spiffe_uri_is_rejected() {
    let m = mesh();
    let leaf = leaf_with(&m.ca, |p| {
        p.subject_alt_names = vec![uri("https://cluster.local/ns/default/sa/web")];
    });
    match verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client) {
        Err(VerifyError::NotSpiffe { uri, reason }) => {
            assert_eq!(uri, "https://cluster.local/ns/default/sa/web");
            assert_eq!(reason, IdError::WrongScheme);
        }
        other => panic!("expected NotSpiffe, got {other:?}"),
    }
}

/// X509-SVID 3.1: "Leaf certificate SPIFFE IDs MUST have a non-root path component."
#[test]
fn trust_domain_id_as_leaf_is_rejected() {
    let m = mesh();
    let leaf = leaf_with(&m.ca, |p| {
        p.subject_alt_names = vec![uri("spiffe://cluster.local")];
    });
    assert!(matches!(
        verify_svid(&[leaf], &m.bundles, at(t0()), Usage::Client),
        Err(VerifyError::NoPath { .. })
    ));
}

#[test]
fn wrong_extended_key_usage_is_rejected() {
    let m = mesh();
    let client_only = leaf_with(&m.ca, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert!(
        verify_svid(
            std::slice::from_ref(&client_only),
            &m.bundles,
            at(t0()),
            Usage::Client
        )
        .is_ok()
    );
    match verify_svid(&[client_only], &m.bundles, at(t0()), Usage::Server) {
        Err(VerifyError::Chain {
            source: ChainError::WrongUsage { required },
            ..
        }) => assert_eq!(required, Usage::Server),
        other => panic!("expected WrongUsage, got {other:?}"),
    }
}

#[test]
fn secure_naming_rejects_an_unexpected_server_identity() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let db = id("spiffe://cluster.local/ns/default/sa/db");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    let bundles = Arc::new(m.bundles);
    let want_db = SpiffeServerVerifier::new(bundles.clone(), Allowed::Ids(vec![db.clone()]));
    match want_db.verify(&svid.cert_der, &[], at(t0())) {
        Err(VerifyError::UnexpectedPeer { got, expected }) => {
            assert_eq!(got, web);
            assert_eq!(expected, Allowed::Ids(vec![db.clone()]));
        }
        other => panic!("expected UnexpectedPeer, got {other:?}"),
    }
    // Through the rustls trait, the error is recoverable as a VerifyError.
    let name = ServerName::try_from("db.default.svc").unwrap();
    let err = want_db
        .verify_server_cert(&svid.cert_der, &[], &name, &[], at(t0()))
        .unwrap_err();
    assert!(matches!(
        VerifyError::from_rustls(&err),
        Some(VerifyError::UnexpectedPeer { .. })
    ));
    // Trust-domain-wide allowances.
    let eu_only = SpiffeServerVerifier::new(
        bundles.clone(),
        Allowed::TrustDomains(vec![td("eu.cluster.local")]),
    );
    assert!(eu_only.verify(&svid.cert_der, &[], at(t0())).is_err());
    let local =
        SpiffeServerVerifier::new(bundles, Allowed::TrustDomains(vec![td("cluster.local")]));
    assert_eq!(local.verify(&svid.cert_der, &[], at(t0())).unwrap(), web);
}

#[test]
fn chain_through_an_intermediate_verifies() {
    let m = mesh();
    let ikey = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "intermediate");
    p.subject_alt_names = vec![uri("spiffe://cluster.local")];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.use_authority_key_identifier_extension = true;
    p.not_before = (t0() - HOUR).into();
    p.not_after = (t0() + 10 * HOUR).into();
    let icert = p.signed_by(ikey.rcgen(), m.ca.issuer()).unwrap();
    let pem = format!("{}{}", icert.pem(), m.ca.cert_pem());
    let ica = Ca::from_pem(&pem, &ikey.to_pkcs8_pem().unwrap()).unwrap();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = ica.issue_svid(&web, HOUR, t0()).unwrap();
    assert_eq!(svid.chain_der.len(), 2);
    assert_eq!(
        verify_svid(&svid.chain_der, &m.bundles, at(t0()), Usage::Server).unwrap(),
        web
    );
    // Without the intermediate, no path.
    assert!(matches!(
        verify_svid(&svid.chain_der[..1], &m.bundles, at(t0()), Usage::Server),
        Err(VerifyError::UntrustedIssuer { .. })
    ));
    // A depth limit of zero intermediates refuses it.
    let anchors = m.bundles.get(&td("cluster.local")).unwrap().anchors();
    let policy = ChainPolicy {
        max_intermediates: Some(0),
        ..ChainPolicy::new(Usage::Server)
    };
    assert_eq!(
        verify_chain_with(
            &svid.chain_der[0],
            &svid.chain_der[1..],
            anchors,
            at(t0()),
            &policy
        ),
        Err(ChainError::PathTooLong)
    );
}

#[test]
fn no_certificate_at_all() {
    let m = mesh();
    assert_eq!(
        verify_svid(&[], &m.bundles, at(t0()), Usage::Client),
        Err(VerifyError::NoCertificate)
    );
    assert!(matches!(
        verify_svid(
            &[CertificateDer::from(vec![1, 2, 3])],
            &m.bundles,
            at(t0()),
            Usage::Client
        ),
        Err(VerifyError::Malformed { .. })
    ));
}

/// Moves TLS records between the two ends until neither has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..32 {
        let mut progressed = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
        }
        if !progressed {
            return Ok(());
        }
    }
    panic!("handshake did not settle");
}

/// Real rustls connections with the real verifiers, pumped through memory buffers. The
/// validation time is the wall clock, so certificates are issued for now.
#[test]
fn mutual_tls13_handshake_in_memory() {
    let now = SystemTime::now();
    let ca = Ca::generate(&td("cluster.local"), now).unwrap();
    let mut set = TrustBundleSet::new();
    set.add_root(&td("cluster.local"), ca.root_der().clone())
        .unwrap();
    let bundles = Arc::new(set);
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let sleep = id("spiffe://cluster.local/ns/default/sa/sleep");
    let (server_svid, server_key) = ca.issue_svid(&web, HOUR, now).unwrap();
    let (client_svid, client_key) = ca.issue_svid(&sleep, HOUR, now).unwrap();

    let server_cfg = Arc::new(
        server_config(
            server_svid.chain_der.clone(),
            server_key.private_key_der(),
            Arc::new(SpiffeClientVerifier::new(bundles.clone())),
        )
        .unwrap(),
    );
    let client_cfg = Arc::new(
        client_config(
            client_svid.chain_der.clone(),
            client_key.private_key_der(),
            Arc::new(SpiffeServerVerifier::new(
                bundles.clone(),
                Allowed::Ids(vec![web.clone()]),
            )),
        )
        .unwrap(),
    );
    // Any SNI: identity comes from the SVID.
    let name = ServerName::try_from("web.default.svc.cluster.local").unwrap();
    let mut client = ClientConnection::new(client_cfg, name.clone()).unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        peer_spiffe_id(&server),
        Some(sleep.clone()),
        "server learns the client"
    );
    assert_eq!(
        peer_spiffe_id(&client),
        Some(web.clone()),
        "client learns the server"
    );

    // Application data flows.
    use std::io::{Read, Write};
    client.writer().write_all(b"ping").unwrap();
    pump(&mut client, &mut server).unwrap();
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // A client without a certificate is refused by the server.
    let anonymous = ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundles,
            Allowed::Ids(vec![web]),
        )))
        .with_no_client_auth();
    let mut client = ClientConnection::new(Arc::new(anonymous), name).unwrap();
    let mut server = ServerConnection::new(server_cfg).unwrap();
    let err = pump(&mut client, &mut server).unwrap_err();
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
    assert_eq!(peer_spiffe_id(&server), None);
}

#[test]
fn client_rejects_a_server_with_the_wrong_identity_during_the_handshake() {
    let now = SystemTime::now();
    let ca = Ca::generate(&td("cluster.local"), now).unwrap();
    let mut set = TrustBundleSet::new();
    set.add_root(&td("cluster.local"), ca.root_der().clone())
        .unwrap();
    let bundles = Arc::new(set);
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let db = id("spiffe://cluster.local/ns/default/sa/db");
    let (server_svid, server_key) = ca.issue_svid(&web, HOUR, now).unwrap();
    let (client_svid, client_key) = ca.issue_svid(&db, HOUR, now).unwrap();
    let server_cfg = server_config(
        server_svid.chain_der,
        server_key.private_key_der(),
        Arc::new(SpiffeClientVerifier::new(bundles.clone())),
    )
    .unwrap();
    let client_cfg = client_config(
        client_svid.chain_der,
        client_key.private_key_der(),
        Arc::new(SpiffeServerVerifier::new(
            bundles,
            Allowed::Ids(vec![db.clone()]),
        )),
    )
    .unwrap();
    let mut client =
        ClientConnection::new(Arc::new(client_cfg), ServerName::try_from("db").unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let err = pump(&mut client, &mut server).unwrap_err();
    match VerifyError::from_rustls(&err) {
        Some(VerifyError::UnexpectedPeer { got, .. }) => assert_eq!(got, &web),
        other => panic!("expected UnexpectedPeer, got {other:?} from {err:?}"),
    }
}

#[test]
fn spiffe_id_of_reads_only_single_uri_svids() {
    let m = mesh();
    let web = id("spiffe://cluster.local/ns/default/sa/web");
    let (svid, _) = m.ca.issue_svid(&web, HOUR, t0()).unwrap();
    assert_eq!(spiffe_id_of(&svid.cert_der), Some(web));
    let two = leaf_with(&m.ca, |p| {
        p.subject_alt_names = vec![uri("spiffe://a/b"), uri("spiffe://a/c")];
    });
    assert_eq!(spiffe_id_of(&two), None);
}

mod cache;
