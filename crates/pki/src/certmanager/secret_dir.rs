//! [`SecretDir`]: a folder laid out like a mounted Kubernetes Secret (`tls.crt`, `tls.key`,
//! `ca.crt`), written so readers never see a key and a certificate of different issuances.
//! What does not live here: issuing ([`super::issue`]).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{CertManagerError, IssuedCert};
use crate::fsutil::{self, FsError};
use crate::keys::KeyPair;
use crate::svid::CertInfo;

/// The three Secret files, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretContents {
    /// `tls.crt`.
    pub tls_crt: String,
    /// `tls.key`.
    pub tls_key: String,
    /// `ca.crt`, if present.
    pub ca_crt: Option<String>,
    /// The leaf certificate of `tls.crt`, for status.
    pub leaf: CertInfo,
}

/// A folder laid out like a mounted Kubernetes Secret: `tls.crt`, `tls.key` (0600), `ca.crt`.
///
/// Consistency: the three files of one issuance must never be seen mixed with those of
/// another (a key that does not match its certificate). Renaming three files one by one
/// cannot promise that, so the folder uses the kubelet's atomic-writer layout: each issuance
/// is written, fsynced, into a fresh hidden directory `..<version>`; the symlink `..data` is
/// then switched to it with one atomic `rename`; `tls.crt`, `tls.key` and `ca.crt` are
/// symlinks to `..data/<name>`; old versions are removed last. A reader that resolves
/// `..data` once (as [`SecretDir::read`] does) always gets one issuance's files. A reader
/// that opens `tls.crt` and then `tls.key` by name has the same guarantee as with a mounted
/// Secret: only if no rotation happens between its two opens.
#[derive(Debug, Clone, Copy)]
pub struct SecretDir;

const DATA: &str = "..data";
const FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

impl SecretDir {
    /// Writes `cert` into `dir` (created if missing) and makes it current atomically.
    pub fn write(dir: &Path, cert: &IssuedCert) -> Result<(), CertManagerError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| FsError::new("create directory", dir, e))?;
        let version = new_version_name();
        let vdir = dir.join(&version);
        DirBuilder::new()
            .mode(0o755)
            .create(&vdir)
            .map_err(|e| FsError::new("create directory", &vdir, e))?;
        // The key is written 0600 from its creation.
        fsutil::write_atomic(&vdir.join("tls.key"), cert.tls_key.as_bytes(), 0o600)?;
        fsutil::write_atomic(&vdir.join("tls.crt"), cert.tls_crt.as_bytes(), 0o644)?;
        fsutil::write_atomic(&vdir.join("ca.crt"), cert.ca_crt.as_bytes(), 0o644)?;
        // The switch: one rename of a symlink.
        replace_symlink(dir, DATA, Path::new(&version))?;
        for name in FILES {
            let target = Path::new(DATA).join(name);
            let path = dir.join(name);
            if fs::read_link(&path).ok().as_deref() != Some(target.as_path()) {
                replace_symlink(dir, name, &target)?;
            }
        }
        fsutil::sync_dir(dir)?;
        // Old versions, no longer reachable through ..data.
        let entries = fs::read_dir(dir).map_err(|source| CertManagerError::Read {
            path: dir.to_owned(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && name.starts_with("..") && name != DATA && *name != *version {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| FsError::new("remove old version", &entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// Reads the current files of `dir` (one issuance's, see [`SecretDir`]) and checks that
    /// `tls.key` is the key of the leaf in `tls.crt`. Plain files (no `..data`) are read too.
    pub fn read(dir: &Path) -> Result<SecretContents, CertManagerError> {
        // A writer may remove the version we resolved before we read it; resolve again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let base = match fs::read_link(dir.join(DATA)) {
                Ok(version) => dir.join(version),
                Err(_) => dir.to_owned(),
            };
            match read_files(&base) {
                Err(CertManagerError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && base != dir && attempts < 3 => {}
                Ok((tls_crt, tls_key, ca_crt)) => {
                    return check(dir, &base, tls_crt, tls_key, ca_crt);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

type Files = (String, String, Option<String>);

fn read_files(base: &Path) -> Result<Files, CertManagerError> {
    let read = |name: &str| {
        let path = base.join(name);
        fs::read_to_string(&path).map_err(|source| CertManagerError::Read { path, source })
    };
    let tls_crt = read("tls.crt")?;
    let tls_key = read("tls.key")?;
    let ca_crt = match read("ca.crt") {
        Ok(s) => Some(s),
        Err(CertManagerError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            None
        }
        Err(e) => return Err(e),
    };
    Ok((tls_crt, tls_key, ca_crt))
}

fn check(
    dir: &Path,
    base: &Path,
    tls_crt: String,
    tls_key: String,
    ca_crt: Option<String>,
) -> Result<SecretContents, CertManagerError> {
    let crt_path = base.join("tls.crt");
    let leaf_der = CertificateDer::pem_slice_iter(tls_crt.as_bytes())
        .next()
        .ok_or_else(|| CertManagerError::BadCertificate {
            path: crt_path.clone(),
            reason: "no CERTIFICATE found".into(),
        })?
        .map_err(|e| CertManagerError::BadCertificate {
            path: crt_path.clone(),
            reason: e.to_string(),
        })?;
    let leaf = CertInfo::parse(&leaf_der).map_err(|e| CertManagerError::BadCertificate {
        path: crt_path,
        reason: e.to_string(),
    })?;
    let key = KeyPair::from_pem(&tls_key)?;
    if key.public_key_raw() != leaf.public_key_raw.as_slice() {
        return Err(CertManagerError::KeyMismatch {
            dir: dir.to_owned(),
        });
    }
    Ok(SecretContents {
        tls_crt,
        tls_key,
        ca_crt,
        leaf,
    })
}

/// `..<unix nanos>.<pid>.<counter>`: unique per writer and time-ordered.
fn new_version_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("..{nanos}.{}.{n}", std::process::id())
}

/// Atomically makes `dir/name` a symlink to `target` (relative): create a temp symlink,
/// rename it over `name`.
fn replace_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), FsError> {
    let path = dir.join(name);
    let temp = fsutil::temp_path_for(&path)?;
    symlink(target, &temp).map_err(|e| FsError::new("symlink", &temp, e))?;
    fs::rename(&temp, &path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        FsError::new("rename", &path, e)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::certmanager::{CertRequest, KeySpec, PrivateKeyAlgorithm, issue_self_signed};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn web_request() -> CertRequest {
        CertRequest {
            dns_names: vec!["web.example.com".into()],
            duration: Duration::from_secs(3600),
            key: KeySpec {
                algorithm: PrivateKeyAlgorithm::Ecdsa,
                size: None,
            },
            ..CertRequest::default()
        }
    }

    #[test]
    fn secret_dir_writes_links_and_reads_back_consistently() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("web-tls");
        let first = issue_self_signed(&web_request(), t0()).unwrap();
        SecretDir::write(&dir, &first).unwrap();
        let mode = fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "tls.key is 0600 (followed through the symlink)"
        );
        assert_eq!(
            fs::read_to_string(dir.join("tls.crt")).unwrap(),
            first.tls_crt
        );
        assert_eq!(
            fs::read_to_string(dir.join("ca.crt")).unwrap(),
            first.ca_crt
        );
        let read = SecretDir::read(&dir).unwrap();
        assert_eq!(read.tls_key, first.tls_key);
        assert_eq!(read.leaf.serial_hex, first.serial);

        // Rotation: new files, one version directory left, links unchanged in shape.
        let second = issue_self_signed(&web_request(), t0()).unwrap();
        SecretDir::write(&dir, &second).unwrap();
        let read = SecretDir::read(&dir).unwrap();
        assert_eq!(read.tls_crt, second.tls_crt);
        assert_eq!(read.tls_key, second.tls_key);
        let versions: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert_eq!(
            fs::read_link(dir.join("tls.key")).unwrap(),
            Path::new("..data/tls.key")
        );
    }

    /// The claim of the layout: a reader never sees a key from one issuance with the
    /// certificate of another, however the reads interleave with rotations.
    #[test]
    fn readers_never_see_a_mixed_pair_during_rotations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let issued: Vec<IssuedCert> = (0..8)
            .map(|_| issue_self_signed(&web_request(), t0()).unwrap())
            .collect();
        SecretDir::write(&dir, &issued[0]).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, done) = (dir.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    let got = SecretDir::read(&dir).expect("consistent read");
                    assert!(got.tls_crt.contains("BEGIN CERTIFICATE"));
                    reads += 1;
                }
                reads
            })
        };
        for round in 0..40 {
            SecretDir::write(&dir, &issued[round % issued.len()]).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn secret_dir_replaces_plain_files_and_detects_mismatched_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = issue_self_signed(&web_request(), t0()).unwrap();
        let b = issue_self_signed(&web_request(), t0()).unwrap();
        // Plain files, as a user or another tool might leave them, with a wrong key.
        fs::write(dir.join("tls.crt"), &a.tls_crt).unwrap();
        fs::write(dir.join("tls.key"), &b.tls_key).unwrap();
        assert!(matches!(
            SecretDir::read(dir),
            Err(CertManagerError::KeyMismatch { .. })
        ));
        SecretDir::write(dir, &a).unwrap();
        let read = SecretDir::read(dir).unwrap();
        assert_eq!(read.tls_key, a.tls_key);
        assert!(
            fs::symlink_metadata(dir.join("tls.crt"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(matches!(
            SecretDir::read(&dir.join("missing")),
            Err(CertManagerError::Read { .. })
        ));
    }
}
