//! The CA's on-disk state: it survives restarts, is never silently replaced, and its key is
//! private (DESIGN.md: "Key files are written 0600, atomically ... CA state survives
//! restarts.").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::{CaError, CaStore};

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

#[test]
fn restart_keeps_the_same_root_and_key() {
    let state = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let first = CaStore::new(state.path())
        .load_or_create(&td(), now)
        .unwrap();
    let key_pem = first.key().to_pkcs8_pem().unwrap();
    drop(first);
    // "Restart": a new store over the same folder, later.
    let second = CaStore::new(state.path())
        .load_or_create(&td(), now + Duration::from_secs(3600))
        .unwrap();
    let disk = fs::read_to_string(state.path().join("ca/cluster.local/ca.crt")).unwrap();
    assert_eq!(second.cert_pem(), disk);
    assert_eq!(second.key().to_pkcs8_pem().unwrap(), key_pem);
    let reread = CaStore::new(state.path()).load(&td()).unwrap().unwrap();
    assert_eq!(reread.cert_der(), second.cert_der(), "same root DER");
    // And it still issues.
    let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
    reread
        .issue_svid(&id, Duration::from_secs(60), now)
        .unwrap();
}

#[test]
fn key_file_is_0600_and_cert_file_0644() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    store.load_or_create(&td(), SystemTime::now()).unwrap();
    let mode = |p| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.key_path(&td())), 0o600);
    assert_eq!(mode(store.cert_path(&td())), 0o644);
    assert_eq!(mode(store.dir_for(&td())), 0o700);
}

#[test]
fn corrupted_cert_is_an_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    store.load_or_create(&td(), SystemTime::now()).unwrap();
    let crt = store.cert_path(&td());
    fs::write(
        &crt,
        "-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = store.load_or_create(&td(), SystemTime::now()).unwrap_err();
    assert!(
        err.to_string().contains(&crt.display().to_string()),
        "error must name {}: {err}",
        crt.display()
    );
    assert!(matches!(err, CaError::File { ref path, .. } if *path == crt));
    // Nothing was replaced behind the operator's back.
    assert!(fs::read_to_string(&crt).unwrap().contains("MIIBroken"));
}

#[test]
fn corrupted_key_is_an_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    store.load_or_create(&td(), SystemTime::now()).unwrap();
    let key = store.key_path(&td());
    fs::write(&key, "not a key at all").unwrap();
    let err = store.load_or_create(&td(), SystemTime::now()).unwrap_err();
    assert!(
        err.to_string().contains(&key.display().to_string()),
        "error must name {}: {err}",
        key.display()
    );
    assert_eq!(fs::read_to_string(&key).unwrap(), "not a key at all");
}

#[test]
fn missing_key_with_present_cert_is_an_error_not_a_new_ca() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    let ca = store.load_or_create(&td(), SystemTime::now()).unwrap();
    fs::remove_file(store.key_path(&td())).unwrap();
    let err = store.load_or_create(&td(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(store.cert_path(&td())).unwrap(),
        ca.cert_pem()
    );
    assert!(!store.key_path(&td()).exists());
}

#[test]
fn each_trust_domain_has_its_own_ca() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    let local = store.load_or_create(&td(), SystemTime::now()).unwrap();
    let eu = TrustDomain::new("eu.cluster.local").unwrap();
    let eu_ca = store.load_or_create(&eu, SystemTime::now()).unwrap();
    assert_ne!(local.cert_der(), eu_ca.cert_der());
    assert_eq!(eu_ca.trust_domain(), Some(&eu));
    assert!(state.path().join("ca/eu.cluster.local/ca.key").exists());
}

#[test]
fn leftovers_of_an_interrupted_creation_are_not_a_ca() {
    let state = tempfile::tempdir().unwrap();
    let store = CaStore::new(state.path());
    // A crash mid-creation leaves only the hidden staging directory.
    let staging = state.path().join("ca/.cluster.local.creating");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("ca.key"), "half-written").unwrap();
    assert!(
        store.load(&td()).unwrap().is_none(),
        "staging is never loaded"
    );
    let ca = store.load_or_create(&td(), SystemTime::now()).unwrap();
    assert!(!staging.exists());
    assert_eq!(
        fs::read_to_string(store.cert_path(&td())).unwrap(),
        ca.cert_pem()
    );
}

/// An imported intermediate CA (its certificate followed by the root above it, as a CA
/// Issuer's `tls.crt` holds them) loads back with the same chain and anchor, and issues
/// SVIDs whose chain `openssl verify` accepts against the root alone.
#[test]
fn an_imported_intermediate_keeps_its_chain_and_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "root.key",
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-subj",
        "/CN=imported root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "root.crt",
    ]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "int.key",
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "int.key",
        "-subj",
        "/CN=imported intermediate",
        "-out",
        "int.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "int.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "ca.ext",
        "-out",
        "int.crt",
    ]);
    let chain = fs::read_to_string(d.join("int.crt")).unwrap()
        + &fs::read_to_string(d.join("root.crt")).unwrap();
    let key = fs::read_to_string(d.join("int.key")).unwrap();
    let ca = trustmesh_pki::Ca::from_pem(&chain, &key).unwrap();
    let (root, tail) = (ca.root_der().clone(), ca.chain_tail().to_vec());

    let state = d.join("state");
    let store = CaStore::new(&state);
    store.import(&td(), ca).unwrap();
    let back = store.load(&td()).unwrap().unwrap();
    assert_eq!(back.root_der(), &root, "same anchor after a reload");
    assert_eq!(
        back.chain_tail(),
        tail.as_slice(),
        "same chain after a reload"
    );

    // An import never replaces a CA.
    let again = trustmesh_pki::Ca::from_pem(&chain, &key).unwrap();
    assert!(matches!(
        store.import(&td(), again),
        Err(CaError::Exists { .. })
    ));

    // Its SVIDs verify against the root alone.
    let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
    let (svid, _key) = back
        .issue_svid(&id, Duration::from_secs(600), SystemTime::now())
        .unwrap();
    fs::write(d.join("svid.pem"), &svid.chain_pem).unwrap();
    fs::write(d.join("leaf.pem"), &svid.cert_pem).unwrap();
    openssl(&[
        "verify",
        "-CAfile",
        "root.crt",
        "-untrusted",
        "svid.pem",
        "leaf.pem",
    ]);
}
