//! External checks: OpenSSL (/usr/bin/openssl) must agree with what trustmesh-pki issues
//! and must produce what it loads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use trustmesh_core::{SpiffeId, TrustDomain};
use trustmesh_pki::certmanager::{
    CertRequest, KeySpec, PrivateKeyAlgorithm, SecretDir, issue_self_signed, issue_with_ca,
};
use trustmesh_pki::{Ca, CaError, KeyEncoding};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Runs openssl with `args` in `dir`; returns (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed in /usr/bin");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, text) = openssl(dir, args);
    assert!(success, "openssl {args:?} failed:\n{text}");
    text
}

#[test]
fn openssl_verifies_an_svid_and_sees_the_svid_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = SystemTime::now();
    let ca = Ca::generate(&TrustDomain::new("cluster.local").unwrap(), now).unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
    let (svid, key) = ca.issue_svid(&id, DAY, now).unwrap();
    fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    fs::write(dir.join("leaf.pem"), &svid.cert_pem).unwrap();
    fs::write(dir.join("leaf.key"), key.to_pkcs8_pem().unwrap()).unwrap();

    let out = ok(dir, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert_eq!(out.trim(), "leaf.pem: OK");
    // Strict RFC 5280 checks, and both TLS purposes.
    for purpose in ["sslclient", "sslserver"] {
        let out = ok(
            dir,
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                "root.pem",
                "leaf.pem",
            ],
        );
        assert_eq!(out.trim(), "leaf.pem: OK", "{purpose}");
    }

    let text = ok(dir, &["x509", "-noout", "-text", "-in", "leaf.pem"]);
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert_eq!(
        text.matches("URI:spiffe://cluster.local/ns/default/sa/web")
            .count(),
        1
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("Subject: O = trustmesh\n"), "{text}");
    assert!(!text.contains("rcgen"), "no rcgen default subject: {text}");

    let root_text = ok(dir, &["x509", "-noout", "-text", "-in", "root.pem"]);
    assert!(
        root_text.contains("Subject: O = trustmesh, CN = cluster.local root CA"),
        "{root_text}"
    );
    assert!(root_text.contains("CA:TRUE"), "{root_text}");
    assert!(
        root_text.contains("Certificate Sign, CRL Sign"),
        "{root_text}"
    );
    assert!(
        root_text.contains("URI:spiffe://cluster.local\n"),
        "{root_text}"
    );

    // The key file holds the certificate's key.
    let cert_pub = ok(dir, &["x509", "-noout", "-pubkey", "-in", "leaf.pem"]);
    let key_pub = ok(dir, &["pkey", "-pubout", "-in", "leaf.key"]);
    assert_eq!(cert_pub, key_pub);

    // A different root does not verify it.
    let other = Ca::generate(&TrustDomain::new("cluster.local").unwrap(), now).unwrap();
    fs::write(dir.join("other.pem"), other.root_pem()).unwrap();
    let (success, _) = openssl(dir, &["verify", "-CAfile", "other.pem", "leaf.pem"]);
    assert!(!success);
}

#[test]
fn a_ca_made_by_openssl_loads_and_issues_verifiable_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The CA an operator would put in a cert-manager CA Issuer Secret, with a PKCS#1 RSA key
    // (what `openssl genrsa -traditional` and cert-manager's default encoding produce).
    ok(dir, &["genrsa", "-traditional", "-out", "tls.key", "2048"]);
    ok(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "tls.key",
            "-subj",
            "/C=DE/O=Acme GmbH/CN=Acme Root CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "tls.crt",
        ],
    );
    let cert_pem = fs::read_to_string(dir.join("tls.crt")).unwrap();
    let key_pem = fs::read_to_string(dir.join("tls.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let ca = Ca::from_pem(&cert_pem, &key_pem)
        .unwrap()
        .with_trust_domain(TrustDomain::new("acme.example").unwrap())
        .unwrap();
    let now = SystemTime::now();

    // An SVID from it.
    let id = SpiffeId::parse("spiffe://acme.example/ns/a/sa/b").unwrap();
    let (svid, _) = ca.issue_svid(&id, DAY, now).unwrap();
    fs::write(dir.join("svid.pem"), &svid.cert_pem).unwrap();
    let out = ok(
        dir,
        &["verify", "-x509_strict", "-CAfile", "tls.crt", "svid.pem"],
    );
    assert_eq!(out.trim(), "svid.pem: OK");

    // A cert-manager CA-issuer certificate from it, written as a Secret folder.
    let req = CertRequest {
        dns_names: vec!["web.acme.example".into()],
        duration: DAY,
        key: KeySpec {
            algorithm: PrivateKeyAlgorithm::Ecdsa,
            size: Some(384),
        },
        ..CertRequest::default()
    };
    let issued = issue_with_ca(&req, &ca, now).unwrap();
    let secret = dir.join("web-tls");
    SecretDir::write(&secret, &issued).unwrap();
    let out = ok(
        &secret,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
            "tls.crt",
        ],
    );
    assert_eq!(out.trim(), "tls.crt: OK");
    let text = ok(&secret, &["x509", "-noout", "-text", "-in", "tls.crt"]);
    assert!(
        text.contains("Issuer: C = DE, O = Acme GmbH, CN = Acme Root CA"),
        "{text}"
    );
    assert!(text.contains("DNS:web.acme.example"), "{text}");
    assert!(text.contains("NIST CURVE: P-384"), "{text}");
    // cert-manager's default PKCS1 encoding gives a SEC1 "EC PRIVATE KEY" OpenSSL reads.
    let key = fs::read_to_string(secret.join("tls.key")).unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let cert_pub = ok(&secret, &["x509", "-noout", "-pubkey", "-in", "tls.crt"]);
    let key_pub = ok(&secret, &["pkey", "-pubout", "-in", "tls.key"]);
    assert_eq!(cert_pub, key_pub);
}

#[test]
fn openssl_reads_every_key_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases = [
        (
            PrivateKeyAlgorithm::Rsa,
            None,
            KeyEncoding::Pkcs1,
            "RSA PRIVATE KEY",
        ),
        (
            PrivateKeyAlgorithm::Rsa,
            None,
            KeyEncoding::Pkcs8,
            "PRIVATE KEY",
        ),
        (
            PrivateKeyAlgorithm::Ecdsa,
            Some(256),
            KeyEncoding::Pkcs1,
            "EC PRIVATE KEY",
        ),
        (
            PrivateKeyAlgorithm::Ecdsa,
            Some(521),
            KeyEncoding::Pkcs8,
            "PRIVATE KEY",
        ),
        (
            PrivateKeyAlgorithm::Ed25519,
            None,
            KeyEncoding::Pkcs1,
            "PRIVATE KEY",
        ),
    ];
    for (i, (algorithm, size, encoding, label)) in cases.into_iter().enumerate() {
        let req = CertRequest {
            common_name: Some(format!("case-{i}")),
            key: KeySpec { algorithm, size },
            key_encoding: encoding,
            ..CertRequest::default()
        };
        let issued = issue_self_signed(&req, SystemTime::now()).unwrap();
        assert!(
            issued
                .tls_key
                .starts_with(&format!("-----BEGIN {label}-----")),
            "case {i}"
        );
        let key = format!("key-{i}.pem");
        let crt = format!("crt-{i}.pem");
        fs::write(dir.join(&key), &issued.tls_key).unwrap();
        fs::write(dir.join(&crt), &issued.tls_crt).unwrap();
        let key_pub = ok(dir, &["pkey", "-pubout", "-in", &key]);
        let cert_pub = ok(dir, &["x509", "-noout", "-pubkey", "-in", &crt]);
        assert_eq!(key_pub, cert_pub, "case {i}");
        // Self-signed: verifies against itself.
        ok(dir, &["verify", "-CAfile", &crt, &crt]);
    }
}

/// CSRs made by another tool: accepted when sound, refused when the key is weak or would be
/// mislabelled (rcgen infers the key's curve from the CSR's signature hash).
#[test]
fn csrs_made_by_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = SystemTime::now();
    let ca = Ca::generate(&TrustDomain::new("cluster.local").unwrap(), now).unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
    let csr = |key: &str, extra: &[&str]| -> Vec<u8> {
        let mut args = vec![
            "req",
            "-new",
            "-key",
            key,
            "-subj",
            "/CN=ignored",
            "-outform",
            "DER",
            "-out",
            "req.der",
        ];
        args.extend_from_slice(extra);
        ok(dir, &args);
        fs::read(dir.join("req.der")).unwrap()
    };

    ok(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "p256.pem",
        ],
    );
    let good = csr(
        "p256.pem",
        &[
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/web",
        ],
    );
    let svid = ca.sign_csr(&good, &id, DAY, now).unwrap();
    fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    fs::write(dir.join("svid.pem"), &svid.cert_pem).unwrap();
    assert_eq!(
        ok(dir, &["verify", "-CAfile", "root.pem", "svid.pem"]).trim(),
        "svid.pem: OK"
    );
    let text = ok(dir, &["x509", "-noout", "-subject", "-in", "svid.pem"]);
    assert_eq!(
        text.trim(),
        "subject=O = trustmesh",
        "the CSR's CN is not copied"
    );

    ok(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.pem",
        ],
    );
    let mislabelled = csr("p384.pem", &["-sha256"]);
    assert!(matches!(
        ca.sign_csr(&mislabelled, &id, DAY, now),
        Err(CaError::UnsupportedCsrKey { .. })
    ));
    let p384 = csr("p384.pem", &["-sha384"]);
    ca.sign_csr(&p384, &id, DAY, now).unwrap();

    ok(dir, &["genrsa", "-out", "rsa1024.pem", "1024"]);
    let weak = csr("rsa1024.pem", &[]);
    // aws-lc already refuses to verify RSA signatures under 2048 bits, so the CSR fails its
    // proof of possession before the key-size check is reached; refused either way.
    match ca.sign_csr(&weak, &id, DAY, now) {
        Err(CaError::BadCsr { .. } | CaError::UnsupportedCsrKey { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}
