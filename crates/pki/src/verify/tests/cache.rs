//! The verifiers' cache of verified chains: one test per sentence of the safety argument on
//! `verify_svid_cached` — hits return what a full verification returns, `now` is checked on
//! every hit with the same errors, failures are never remembered, secure naming and the
//! CertificateVerify signature run on every handshake, and a new verifier starts empty.

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;

use super::*;
use crate::verify::cache::CAPACITY;

fn web() -> SpiffeId {
    id("spiffe://cluster.local/ns/default/sa/web")
}

fn stats(hits: u64, misses: u64, entries: usize) -> ChainCacheStats {
    ChainCacheStats {
        hits,
        misses,
        entries,
    }
}

/// An intermediate CA under `m`'s root valid from t0 - 1 h to `not_after`, and its
/// certificate.
fn intermediate(m: &Mesh, not_after: SystemTime) -> (Ca, CertificateDer<'static>) {
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
    p.not_after = not_after.into();
    let icert = p.signed_by(ikey.rcgen(), m.ca.issuer()).unwrap();
    let pem = format!("{}{}", icert.pem(), m.ca.cert_pem());
    let ca = Ca::from_pem(&pem, &ikey.to_pkcs8_pem().unwrap()).unwrap();
    (ca, icert.der().clone())
}

#[test]
fn a_repeated_chain_is_served_from_the_cache_with_the_same_result() {
    let m = mesh();
    let (svid, _) = m.ca.issue_svid(&web(), HOUR, t0()).unwrap();
    let bundles = Arc::new(m.bundles);

    let client_side = SpiffeClientVerifier::new(bundles.clone());
    assert_eq!(client_side.cache_stats(), stats(0, 0, 0));
    for _ in 0..3 {
        client_side
            .verify_client_cert(&svid.cert_der, &[], at(t0()))
            .unwrap();
    }
    assert_eq!(client_side.cache_stats(), stats(2, 1, 1));

    let server_side = SpiffeServerVerifier::new(bundles, Allowed::Ids(vec![web()]));
    let name = ServerName::try_from("web.default.svc").unwrap();
    for _ in 0..3 {
        assert_eq!(
            server_side.verify(&svid.cert_der, &[], at(t0())).unwrap(),
            web()
        );
        server_side
            .verify_server_cert(&svid.cert_der, &[], &name, &[], at(t0()))
            .unwrap();
    }
    assert_eq!(server_side.cache_stats(), stats(5, 1, 1));
}

#[test]
fn the_key_is_the_exact_presentation_leaf_and_intermediates() {
    let m = mesh();
    let (ica, _) = intermediate(&m, t0() + 10 * HOUR);
    let (svid, _) = ica.issue_svid(&web(), HOUR, t0()).unwrap();
    let (leaf, intermediates) = svid.chain_der.split_first().unwrap();
    let verifier = SpiffeServerVerifier::new(Arc::new(m.bundles), Allowed::Any);
    verifier.verify(leaf, intermediates, at(t0())).unwrap();
    // The same leaf without its intermediate is another key: verified in full, and it fails.
    assert!(matches!(
        verifier.verify(leaf, &[], at(t0())),
        Err(VerifyError::UntrustedIssuer { .. })
    ));
    // With the intermediate twice: another key again, verified in full, and it passes.
    let twice = [intermediates[0].clone(), intermediates[0].clone()];
    verifier.verify(leaf, &twice, at(t0())).unwrap();
    assert_eq!(verifier.cache_stats(), stats(0, 3, 2));
    verifier.verify(leaf, intermediates, at(t0())).unwrap();
    verifier.verify(leaf, &twice, at(t0())).unwrap();
    assert_eq!(verifier.cache_stats(), stats(2, 3, 2));
}

#[test]
fn a_chain_cached_while_valid_fails_as_before_once_expired() {
    let m = mesh();
    let (svid, _) = m.ca.issue_svid(&web(), HOUR, t0()).unwrap();
    let bundles = Arc::new(m.bundles);
    let cached = SpiffeClientVerifier::new(bundles.clone());
    cached
        .verify_client_cert(&svid.cert_der, &[], at(t0()))
        .unwrap();

    // RFC 5280: validity is "from notBefore through notAfter, inclusive": the last second is
    // still served from the cache.
    cached
        .verify_client_cert(&svid.cert_der, &[], at(svid.not_after))
        .unwrap();
    assert_eq!(cached.cache_stats(), stats(1, 1, 1));

    // One second later: the error of a verifier that never saw the chain, and the entry goes.
    let later = at(svid.not_after + Duration::from_secs(1));
    let err = cached
        .verify_client_cert(&svid.cert_der, &[], later)
        .unwrap_err();
    let fresh = SpiffeClientVerifier::new(bundles)
        .verify_client_cert(&svid.cert_der, &[], later)
        .unwrap_err();
    assert_eq!(err, fresh);
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: later,
            not_after: at(svid.not_after),
        })
    );
    assert_eq!(cached.cache_stats(), stats(1, 2, 0));
    // And every time after.
    assert_eq!(
        cached
            .verify_client_cert(&svid.cert_der, &[], later)
            .unwrap_err(),
        fresh
    );
    assert_eq!(cached.cache_stats(), stats(1, 3, 0));
}

#[test]
fn a_cached_chain_is_not_valid_before_its_not_before() {
    let m = mesh();
    let (svid, _) = m.ca.issue_svid(&web(), HOUR, t0()).unwrap();
    let verifier = SpiffeServerVerifier::new(Arc::new(m.bundles.clone()), Allowed::Any);
    verifier.verify(&svid.cert_der, &[], at(t0())).unwrap();
    // Issued with notBefore = t0 - 60 s.
    let early = at(t0() - Duration::from_secs(61));
    assert_eq!(
        verifier.verify(&svid.cert_der, &[], early),
        verify_svid(&svid.chain_der, &m.bundles, early, Usage::Server)
    );
    assert!(matches!(
        verifier.verify(&svid.cert_der, &[], early),
        Err(VerifyError::NotYetValid { .. })
    ));
    assert_eq!(verifier.cache_stats(), stats(0, 3, 0));
    // Valid again: verified in full once, then cached again.
    verifier.verify(&svid.cert_der, &[], at(t0())).unwrap();
    verifier.verify(&svid.cert_der, &[], at(t0())).unwrap();
    assert_eq!(verifier.cache_stats(), stats(1, 4, 1));
}

#[test]
fn the_window_is_the_whole_paths_an_intermediate_expiring_first_ends_it() {
    let m = mesh();
    let ica_end = t0() + HOUR / 2;
    let (ica, icert) = intermediate(&m, ica_end);
    // The leaf outlives its issuer (leaf_with: t0 - 1 h .. t0 + 1 h).
    let leaf = leaf_with(&ica, |_| {});
    let chain = [leaf.clone(), icert];
    let verifier = SpiffeClientVerifier::new(Arc::new(m.bundles.clone()));
    verifier
        .verify_client_cert(&leaf, &chain[1..], at(t0()))
        .unwrap();
    verifier
        .verify_client_cert(&leaf, &chain[1..], at(ica_end))
        .unwrap();
    assert_eq!(verifier.cache_stats(), stats(1, 1, 1));
    let after = at(ica_end + Duration::from_secs(1));
    match verifier.verify_client_cert(&leaf, &chain[1..], after) {
        Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            not_after,
            ..
        })) => assert_eq!(not_after, at(ica_end)),
        other => panic!("expected the intermediate's expiry, got {other:?}"),
    }
    assert_eq!(
        verify_svid(&chain, &m.bundles, after, Usage::Client),
        Err(VerifyError::Expired {
            id: web(),
            not_after: ica_end,
            time: ica_end + Duration::from_secs(1),
        })
    );
    assert_eq!(verifier.cache_stats(), stats(1, 2, 0));
}

#[test]
fn an_untrusted_chain_fails_every_time_and_is_never_cached() {
    let m = mesh();
    let impostor = Ca::generate(&td("cluster.local"), t0()).unwrap();
    let (svid, _) = impostor.issue_svid(&web(), HOUR, t0()).unwrap();
    let verifier = SpiffeClientVerifier::new(Arc::new(m.bundles));
    for round in 1..=3 {
        let err = verifier
            .verify_client_cert(&svid.cert_der, &[], at(t0()))
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        );
        assert_eq!(verifier.cache_stats(), stats(0, round, 0));
    }
}

#[test]
fn secure_naming_is_checked_on_every_call_cache_hit_or_not() {
    let m = mesh();
    let db = id("spiffe://cluster.local/ns/default/sa/db");
    let (web_svid, _) = m.ca.issue_svid(&web(), HOUR, t0()).unwrap();
    let (db_svid, _) = m.ca.issue_svid(&db, HOUR, t0()).unwrap();
    let want_db = SpiffeServerVerifier::new(Arc::new(m.bundles), Allowed::Ids(vec![db.clone()]));
    // The chain verifies (and is remembered), but web may not serve db.
    for hits in [0, 1] {
        match want_db.verify(&web_svid.cert_der, &[], at(t0())) {
            Err(VerifyError::UnexpectedPeer { got, expected }) => {
                assert_eq!(got, web());
                assert_eq!(expected, Allowed::Ids(vec![db.clone()]));
            }
            other => panic!("expected UnexpectedPeer, got {other:?}"),
        }
        assert_eq!(want_db.cache_stats(), stats(hits, 1, 1));
    }
    // Through rustls too.
    let name = ServerName::try_from("db.default.svc").unwrap();
    let err = want_db
        .verify_server_cert(&web_svid.cert_der, &[], &name, &[], at(t0()))
        .unwrap_err();
    assert!(matches!(
        VerifyError::from_rustls(&err),
        Some(VerifyError::UnexpectedPeer { .. })
    ));
    assert_eq!(want_db.cache_stats(), stats(2, 1, 1));
    // The allowed identity passes, and its entry does not change web's verdict.
    assert_eq!(
        want_db.verify(&db_svid.cert_der, &[], at(t0())).unwrap(),
        db
    );
    assert!(want_db.verify(&web_svid.cert_der, &[], at(t0())).is_err());
    assert_eq!(want_db.cache_stats(), stats(3, 2, 2));
}

#[test]
fn another_verifier_does_not_see_the_first_ones_cache() {
    let m = mesh();
    let (svid, _) = m.ca.issue_svid(&web(), HOUR, t0()).unwrap();
    let first = SpiffeClientVerifier::new(Arc::new(m.bundles.clone()));
    first
        .verify_client_cert(&svid.cert_der, &[], at(t0()))
        .unwrap();
    assert_eq!(first.cache_stats(), stats(0, 1, 1));

    // New bundles for the same trust domain (the root was replaced): the chain no longer
    // verifies there.
    let other_root = Ca::generate(&td("cluster.local"), t0()).unwrap();
    let mut other = TrustBundleSet::new();
    other
        .add_root(&td("cluster.local"), other_root.root_der().clone())
        .unwrap();
    let rotated = SpiffeClientVerifier::new(Arc::new(other));
    assert_eq!(
        rotated
            .verify_client_cert(&svid.cert_der, &[], at(t0()))
            .unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
    );
    assert_eq!(rotated.cache_stats(), stats(0, 1, 0));

    // Even a verifier of the same bundles starts empty.
    let same = SpiffeServerVerifier::new(Arc::new(m.bundles), Allowed::Any);
    same.verify(&svid.cert_der, &[], at(t0())).unwrap();
    assert_eq!(same.cache_stats(), stats(0, 1, 1));
    assert_eq!(first.cache_stats(), stats(0, 1, 1));
}

#[test]
fn the_cache_holds_at_most_capacity_chains_oldest_evicted_first() {
    let m = mesh();
    let verifier = SpiffeServerVerifier::new(Arc::new(m.bundles), Allowed::Any);
    let leaves: Vec<CertificateDer<'static>> = (0..=CAPACITY)
        .map(|i| {
            leaf_with(&m.ca, |p| {
                p.subject_alt_names = vec![uri(&format!("spiffe://cluster.local/sa/{i}"))];
            })
        })
        .collect();
    for leaf in &leaves {
        verifier.verify(leaf, &[], at(t0())).unwrap();
    }
    let n = leaves.len() as u64;
    assert_eq!(verifier.cache_stats(), stats(0, n, CAPACITY));
    // The newest is remembered, the first one was evicted.
    verifier.verify(&leaves[CAPACITY], &[], at(t0())).unwrap();
    assert_eq!(verifier.cache_stats(), stats(1, n, CAPACITY));
    verifier.verify(&leaves[0], &[], at(t0())).unwrap();
    assert_eq!(verifier.cache_stats(), stats(1, n + 1, CAPACITY));
}

/// Presents `chain` and signs the handshake with `key`, whether or not they belong together.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn presenting(
    chain: &[CertificateDer<'static>],
    key: &KeyPair,
    verifier: Arc<SpiffeServerVerifier>,
) -> Arc<ClientConfig> {
    let provider = crate::crypto_provider();
    let signer = provider
        .key_provider
        .load_private_key(key.private_key_der())
        .unwrap();
    let certified = Arc::new(CertifiedKey::new(chain.to_vec(), signer));
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Present(certified)));
    // As in the proxy: a resumed session would skip certificate verification altogether.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Real handshakes: the second is served from both verifiers' caches; a client presenting the
/// cached chain without its private key still fails (CertificateVerify is checked every time).
#[test]
fn handshakes_hit_the_cache_but_still_prove_key_possession() {
    let now = SystemTime::now();
    let ca = Ca::generate(&td("cluster.local"), now).unwrap();
    let mut set = TrustBundleSet::new();
    set.add_root(&td("cluster.local"), ca.root_der().clone())
        .unwrap();
    let bundles = Arc::new(set);
    let sleep = id("spiffe://cluster.local/ns/default/sa/sleep");
    let (server_svid, server_key) = ca.issue_svid(&web(), HOUR, now).unwrap();
    let (client_svid, client_key) = ca.issue_svid(&sleep, HOUR, now).unwrap();
    let client_verifier = Arc::new(SpiffeClientVerifier::new(bundles.clone()));
    let server_cfg = Arc::new(
        server_config(
            server_svid.chain_der,
            server_key.private_key_der(),
            client_verifier.clone(),
        )
        .unwrap(),
    );
    let server_verifier = Arc::new(SpiffeServerVerifier::new(
        bundles,
        Allowed::Ids(vec![web()]),
    ));
    let name = ServerName::try_from("web").unwrap();
    let handshake = |client_cfg: Arc<ClientConfig>| {
        let mut client = ClientConnection::new(client_cfg, name.clone()).unwrap();
        let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
        let r = pump(&mut client, &mut server);
        (r, peer_spiffe_id(&server))
    };

    let honest = presenting(&client_svid.chain_der, &client_key, server_verifier.clone());
    for _ in 0..2 {
        let (r, peer) = handshake(honest.clone());
        r.unwrap();
        assert_eq!(peer, Some(sleep.clone()));
    }
    assert_eq!(client_verifier.cache_stats(), stats(1, 1, 1));
    assert_eq!(server_verifier.cache_stats(), stats(1, 1, 1));

    // Someone replaying sleep's certificate with another key: the chain is a cache hit, the
    // CertificateVerify signature is not, and the server refuses.
    let thief = presenting(
        &client_svid.chain_der,
        &KeyPair::generate().unwrap(),
        server_verifier,
    );
    let (r, peer) = handshake(thief);
    assert_eq!(
        r.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
    );
    assert_eq!(peer, None);
    assert_eq!(client_verifier.cache_stats(), stats(2, 1, 1));
}
