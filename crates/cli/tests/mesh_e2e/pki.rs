//! Client certificates minted with the `openssl` command line: SVIDs from the mesh's own CA
//! (read from the state folder) and the hostile variants a proxy must refuse — untrusted CA,
//! a trust domain without a bundle, an identity signed by the other region's CA, expired, not
//! yet valid, a CA as the leaf, two URI SANs.

use std::path::{Path, PathBuf};

use crate::harness::{openssl_ok, s};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The extensions of an X.509-SVID (DESIGN: one URI SAN, not a CA, ECDSA P-256).
pub fn svid_ext(uris: &[&str]) -> String {
    let sans: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
    format!(
        "subjectAltName={}\nextendedKeyUsage=clientAuth,serverAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        sans.join(",")
    )
}

/// A fresh P-256 key and CSR in `dir`.
fn key_and_csr(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
    );
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=mesh-e2e",
        "-keyout",
        s(&key),
        "-out",
        s(&csr),
    ]);
    (key, csr)
}

/// A leaf signed by `ca` with the extensions `ext` (an `openssl x509 -extfile` text), valid
/// from now for a day.
pub fn leaf(dir: &Path, name: &str, ca: &KeyPair, ext: &str) -> KeyPair {
    let (key, csr) = key_and_csr(dir, name);
    let (cert, extfile, serial) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.ext")),
        // Never next to the mesh's CA key: the state folder is the control plane's.
        dir.join("ca.srl"),
    );
    std::fs::write(&extfile, ext).expect("write extfile");
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&ca.cert),
        "-CAkey",
        s(&ca.key),
        "-CAserial",
        s(&serial),
        "-CAcreateserial",
        "-days",
        "1",
        "-sha256",
        "-extfile",
        s(&extfile),
        "-out",
        s(&cert),
    ]);
    KeyPair { cert, key }
}

/// A leaf valid only between `start` and `end` (`YYYYMMDDHHMMSSZ`), signed by `ca` with the
/// SVID extensions for `uri`. `openssl x509` cannot set dates; `openssl ca` can, with a
/// throwaway database.
pub fn leaf_dated(
    dir: &Path,
    name: &str,
    ca: &KeyPair,
    uri: &str,
    start: &str,
    end: &str,
) -> KeyPair {
    let (key, csr) = key_and_csr(dir, name);
    let db = dir.join(format!("{name}-ca"));
    std::fs::create_dir_all(&db).expect("ca db dir");
    std::fs::write(db.join("index.txt"), "").expect("index");
    std::fs::write(db.join("serial"), "1000\n").expect("serial");
    let conf = db.join("ca.cnf");
    std::fs::write(
        &conf,
        format!(
            "[ca]\ndefault_ca = dated\n[dated]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\nserial = {db}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\norganizationName = optional\n[ext]\n{ext}",
            db = s(&db),
            ext = svid_ext(&[uri])
        ),
    )
    .expect("ca config");
    let cert = dir.join(format!("{name}.crt"));
    openssl_ok(&[
        "ca",
        "-batch",
        "-notext",
        "-config",
        s(&conf),
        "-extensions",
        "ext",
        "-cert",
        s(&ca.cert),
        "-keyfile",
        s(&ca.key),
        "-startdate",
        start,
        "-enddate",
        end,
        "-in",
        s(&csr),
        "-out",
        s(&cert),
    ]);
    KeyPair { cert, key }
}

/// A self-signed CA nobody in the mesh trusts.
pub fn rogue_ca(dir: &Path, name: &str) -> KeyPair {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
    ]);
    KeyPair { cert, key }
}

/// The mesh's CA for a trust domain, from the state folder.
pub fn mesh_ca(state: &Path, trust_domain: &str) -> KeyPair {
    let dir = state.join("ca").join(trust_domain);
    KeyPair {
        cert: dir.join("ca.crt"),
        key: dir.join("ca.key"),
    }
}
