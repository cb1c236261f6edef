//! [`CaStore`]: the CA of each trust domain on disk, `<state>/ca/<td>/ca.crt` and `ca.key`.
//!
//! Loading never guesses: a missing pair means "create", anything else that is not a valid
//! pair (corrupt, mismatched, alone, another trust domain's) is an error naming the file.
//! What does not live here: the CA itself ([`super::Ca`]).

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use trustmesh_core::TrustDomain;

use super::{Ca, CaError};
use crate::fsutil::{self, FsError};
use crate::keys::KeyPair;

/// The CA state of every trust domain under a state folder:
/// `<state>/ca/<trust-domain>/ca.crt` (0644) and `ca.key` (0600).
#[derive(Debug, Clone)]
pub struct CaStore {
    state_dir: PathBuf,
}

impl CaStore {
    /// A store rooted at `state_dir` (created on first write).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
        }
    }

    /// `<state>/ca/<td>`.
    pub fn dir_for(&self, td: &TrustDomain) -> PathBuf {
        self.state_dir.join("ca").join(td.as_str())
    }

    /// `<state>/ca/<td>/ca.crt`.
    pub fn cert_path(&self, td: &TrustDomain) -> PathBuf {
        self.dir_for(td).join("ca.crt")
    }

    /// `<state>/ca/<td>/ca.key`.
    pub fn key_path(&self, td: &TrustDomain) -> PathBuf {
        self.dir_for(td).join("ca.key")
    }

    /// Loads the CA of `td`: `Ok(None)` if neither file exists; an error naming the file if
    /// either is unreadable, corrupt, mismatched, or alone.
    pub fn load(&self, td: &TrustDomain) -> Result<Option<Ca>, CaError> {
        let crt = self.cert_path(td);
        let key = self.key_path(td);
        match (exists(&crt)?, exists(&key)?) {
            (false, false) => Ok(None),
            (true, false) => Err(CaError::HalfPresent {
                present: crt,
                missing: key,
            }),
            (false, true) => Err(CaError::HalfPresent {
                present: key,
                missing: crt,
            }),
            (true, true) => {
                let cert_pem = read_text(&crt)?;
                let key_pem = read_text(&key)?;
                let in_file = |path: &Path, e: CaError| CaError::File {
                    path: path.to_owned(),
                    source: Box::new(e),
                };
                // Check each file on its own first, so the error names the broken one.
                KeyPair::from_pem(&key_pem).map_err(|e| in_file(&key, e.into()))?;
                let ca = Ca::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
                    e @ CaError::KeyMismatch { .. } => in_file(&key, e),
                    e => in_file(&crt, e),
                })?;
                let ca = ca
                    .with_trust_domain(td.clone())
                    .map_err(|e| in_file(&crt, e))?;
                Ok(Some(ca))
            }
        }
    }

    /// Loads the CA of `td`, or generates and persists a new one if none exists. Never
    /// replaces an existing CA: a corrupt or half-present pair is an error naming the file.
    ///
    /// Creation is all-or-nothing: both files are written into a fresh hidden directory that
    /// is then renamed to `<state>/ca/<td>`, so a crash never leaves a lone key or cert.
    pub fn load_or_create(&self, td: &TrustDomain, now: SystemTime) -> Result<Ca, CaError> {
        if let Some(ca) = self.load(td)? {
            return Ok(ca);
        }
        let ca = Ca::generate(td, now)?;
        self.persist_new(td, &ca)?;
        Ok(ca)
    }

    /// Makes `ca` (e.g. loaded with [`Ca::from_pem`] from a cert-manager CA Issuer's Secret)
    /// the CA of `td`, written as a new CA is: all or nothing. A trust domain that already
    /// has a CA keeps it ([`CaError::Exists`]).
    pub fn import(&self, td: &TrustDomain, ca: Ca) -> Result<Ca, CaError> {
        let ca = ca.with_trust_domain(td.clone())?;
        if self.load(td)?.is_some() {
            return Err(CaError::Exists {
                trust_domain: td.clone(),
                path: self.dir_for(td),
            });
        }
        self.persist_new(td, &ca)?;
        Ok(ca)
    }

    fn persist_new(&self, td: &TrustDomain, ca: &Ca) -> Result<(), CaError> {
        let parent = self.state_dir.join("ca");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| FsError::new("create directory", &parent, e))?;
        let staging = parent.join(format!(".{}.creating", td.as_str()));
        if exists(&staging)? {
            // Left by a crash during a previous creation; never visible as a CA.
            fs::remove_dir_all(&staging).map_err(|e| FsError::new("remove stale", &staging, e))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| FsError::new("create directory", &staging, e))?;
        fsutil::write_atomic(
            &staging.join("ca.key"),
            ca.key.to_pkcs8_pem()?.as_bytes(),
            0o600,
        )?;
        // The CA certificate, then the chain above it up to its root, so an imported
        // intermediate loads back with the same chain and anchor.
        let mut crt = ca.cert_pem.clone();
        let above = ca.chain_tail.iter().filter(|c| **c != ca.cert_der);
        let root = Some(&ca.root_der).filter(|r| **r != ca.cert_der && !ca.chain_tail.contains(r));
        for c in above.chain(root) {
            crt.push_str(&crate::keys::pem_encode("CERTIFICATE", c));
        }
        fsutil::write_atomic(&staging.join("ca.crt"), crt.as_bytes(), 0o644)?;
        let dir = self.dir_for(td);
        // rename(2) replaces an empty directory; a non-empty one (other files, but no CA
        // pair) makes it fail, which is reported rather than overwritten.
        fs::rename(&staging, &dir).map_err(|e| FsError::new("rename", &dir, e))?;
        fsutil::sync_dir(&parent)?;
        Ok(())
    }
}

fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }
    #[test]
    fn store_creates_once_then_reloads_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::new(dir.path());
        let first = store.load_or_create(&td(), now()).unwrap();
        let again = store.load_or_create(&td(), now() + DAY).unwrap();
        assert_eq!(first.cert_der(), again.cert_der());
        assert_eq!(again.trust_domain(), Some(&td()));
        assert!(store.cert_path(&td()).ends_with("ca/cluster.local/ca.crt"));
        // No staging directory left behind.
        let entries: Vec<_> = fs::read_dir(dir.path().join("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("cluster.local")]);
    }

    #[test]
    fn store_refuses_half_present_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::new(dir.path());
        store.load_or_create(&td(), now()).unwrap();
        fs::remove_file(store.key_path(&td())).unwrap();
        let err = store.load_or_create(&td(), now()).unwrap_err();
        assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert!(
            exists(&store.cert_path(&td())).unwrap(),
            "nothing overwritten"
        );
    }

    #[test]
    fn store_refuses_a_ca_of_another_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::new(dir.path());
        let other = TrustDomain::new("other.org").unwrap();
        let ca = store.load_or_create(&other, now()).unwrap();
        fs::create_dir_all(store.dir_for(&td())).unwrap();
        fs::write(store.cert_path(&td()), ca.cert_pem()).unwrap();
        fs::write(store.key_path(&td()), ca.key().to_pkcs8_pem().unwrap()).unwrap();
        let err = store.load(&td()).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("other.org"), "{err}");
    }

    #[test]
    fn store_reports_which_file_is_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::new(dir.path());
        store.load_or_create(&td(), now()).unwrap();
        let stranger = KeyPair::generate().unwrap().to_pkcs8_pem().unwrap();
        fs::write(store.key_path(&td()), stranger).unwrap();
        let err = store.load(&td()).unwrap_err();
        match &err {
            CaError::File { path, source } => {
                assert_eq!(path, &store.key_path(&td()));
                assert!(matches!(**source, CaError::KeyMismatch { .. }));
            }
            other => panic!("expected File, got {other:?}"),
        }
    }
}
