//! The two bearer credentials of the state folder:
//! - join tokens (`state/tokens/<sha256-hex of token>.json`): one-time, bound to one workload
//!   and its SPIFFE identity, with an expiry — how a proxy with no certificate yet proves which
//!   workload it is (SPIRE's join-token attestation does the same);
//! - the admin credential (`state/admin.token`, 0600): what the CLI presents to the admin API.
//!
//! Only the SHA-256 of a join token is stored (as the file name), so reading the state folder
//! does not reveal a usable token. Every write is atomic (`trustmesh_pki::fsutil`).
//! What does not live here: deciding whether a workload exists or what its identity is (the
//! callers ask the snapshot), the gRPC refusal and its log line (`grpc`).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use trustmesh_core::SpiffeId;
use trustmesh_pki::fsutil::{self, FsError};

/// Folder of the join tokens, under the state folder.
pub const TOKENS_DIR: &str = "tokens";
/// File of the admin credential, under the state folder.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Random bytes in a join token and in the admin credential.
const TOKEN_BYTES: usize = 32;
/// How long an expired token's record is kept (so a late replay is refused as "expired",
/// not "unknown") before `create` prunes it.
const KEEP_EXPIRED: Duration = Duration::from_secs(24 * 3600);

/// Why a join token was refused, or a credential could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token with this value exists (never created, or pruned long after expiry).
    #[error("unknown join token")]
    Unknown,
    /// The token expired.
    #[error("join token for {workload} expired at {expired_at} (unix seconds)")]
    Expired {
        /// The workload it was bound to.
        workload: String,
        /// Its expiry, unix seconds.
        expired_at: u64,
    },
    /// The token was used before: join tokens are one-time.
    #[error("join token for {workload} was already used at {used_at} (unix seconds)")]
    AlreadyUsed {
        /// The workload it was bound to.
        workload: String,
        /// When it was redeemed, unix seconds.
        used_at: u64,
    },
    /// The token is bound to another workload than the one claimed.
    #[error("join token is bound to workload {bound}, not {claimed}")]
    WrongWorkload {
        /// The workload the token is for.
        bound: String,
        /// The workload the caller claimed.
        claimed: String,
    },
    /// The token's lifetime is zero.
    #[error("join token TTL must be positive")]
    InvalidTtl,
    /// A token record or the admin credential exists but is unusable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading a file or creating a folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] FsError),
    /// The secure random generator failed.
    #[error("secure random generator failed")]
    Random,
    /// The crypto provider offers no SHA-256 (it always does; kept as an error, not a panic).
    #[error("the crypto provider has no SHA-256")]
    NoSha256,
}

impl TokenError {
    /// True for a refusal of the presented token (as opposed to a failure of ours).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Unknown
                | Self::Expired { .. }
                | Self::AlreadyUsed { .. }
                | Self::WrongWorkload { .. }
        )
    }
}

/// What `state/tokens/<hash>.json` holds (docs/mesh-runtime.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// `<namespace>/<name>` of the WorkloadEntry the token is bound to.
    pub workload: String,
    /// The workload's SPIFFE ID when the token was created.
    pub identity: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// When it was redeemed, unix seconds; `null` while unused.
    pub used_at: Option<u64>,
}

/// A token just created: the secret (shown once) and its record.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The bearer value to hand to the proxy.
    pub token: String,
    /// What was stored.
    pub record: TokenRecord,
    /// Where it was stored.
    pub path: PathBuf,
}

/// A presented token that passed every check, not yet marked used.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    record: TokenRecord,
}

impl Claim {
    /// The token's record.
    pub fn record(&self) -> &TokenRecord {
        &self.record
    }

    /// Marks the token used at `now`, so any later presentation is refused.
    pub fn redeem(mut self, now: SystemTime) -> Result<TokenRecord, TokenError> {
        self.record.used_at = Some(unix(now));
        write_record(&self.path, &self.record)?;
        Ok(self.record)
    }
}

/// The join tokens of a state folder.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    dir: PathBuf,
}

impl JoinTokens {
    /// The tokens under `state_dir/tokens`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(TOKENS_DIR),
        }
    }

    /// The folder holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record file of `token`.
    pub fn path_of(&self, token: &str) -> Result<PathBuf, TokenError> {
        Ok(self
            .dir
            .join(format!("{}.json", sha256_hex(token.as_bytes())?)))
    }

    /// Creates a one-time token for `workload` (`ns/name`) with `identity`, valid for `ttl`
    /// from `now`. Records that expired more than a day ago are pruned on the way.
    pub fn create(
        &self,
        workload: &str,
        identity: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<NewToken, TokenError> {
        if ttl.is_zero() {
            return Err(TokenError::InvalidTtl);
        }
        create_private_dir(&self.dir)?;
        self.prune(now);
        let token = random_token()?;
        let record = TokenRecord {
            workload: workload.to_owned(),
            identity: identity.as_str().to_owned(),
            expires_at: unix(now).saturating_add(ttl.as_secs().max(1)),
            used_at: None,
        };
        let path = self.path_of(&token)?;
        write_record(&path, &record)?;
        Ok(NewToken {
            token,
            record,
            path,
        })
    }

    /// Checks `token` for a claim of `workload` at `now`: it must exist, not be expired, not
    /// be used, and be bound to `workload`. Nothing is written: [`Claim::redeem`] marks it
    /// used once the caller has done what the token was for. Callers serialize check and
    /// redeem (one lock), so a token cannot be redeemed twice.
    pub fn check(&self, token: &str, workload: &str, now: SystemTime) -> Result<Claim, TokenError> {
        let path = self.path_of(token)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TokenError::Unknown),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let record: TokenRecord = serde_json::from_str(&text).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(used_at) = record.used_at {
            return Err(TokenError::AlreadyUsed {
                workload: record.workload,
                used_at,
            });
        }
        if unix(now) >= record.expires_at {
            return Err(TokenError::Expired {
                workload: record.workload,
                expired_at: record.expires_at,
            });
        }
        if record.workload != workload {
            return Err(TokenError::WrongWorkload {
                bound: record.workload,
                claimed: workload.to_owned(),
            });
        }
        Ok(Claim { path, record })
    }

    /// Removes records that expired more than [`KEEP_EXPIRED`] ago. Best effort: a record
    /// that cannot be read or removed stays, and an expired token is refused either way.
    fn prune(&self, now: SystemTime) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let cutoff = unix(now).saturating_sub(KEEP_EXPIRED.as_secs());
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let expired = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<TokenRecord>(&t).ok())
                .is_some_and(|r| r.expires_at < cutoff);
            if expired {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

fn write_record(path: &Path, record: &TokenRecord) -> Result<(), TokenError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| TokenError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    fsutil::write_atomic(path, &json, 0o600)?;
    Ok(())
}

/// The admin credential of `state_dir`, created (32 random bytes, base64url, mode 0600) if
/// absent. An existing one is refused if others may read it, or if it is empty.
pub fn load_or_create_admin_token(state_dir: &Path) -> Result<String, TokenError> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    match read_admin_token(state_dir) {
        Ok(t) => Ok(t),
        Err(TokenError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            create_private_dir(state_dir)?;
            let token = random_token()?;
            fsutil::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// Reads `state_dir/admin.token` (what a client of the admin API presents).
pub fn read_admin_token(state_dir: &Path) -> Result<String, TokenError> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    let meta = fs::metadata(&path).map_err(|source| TokenError::Io {
        path: path.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(TokenError::Corrupt {
            path,
            reason: format!(
                "mode {:o} lets others read the admin credential; chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    let text = fs::read_to_string(&path).map_err(|source| TokenError::Io {
        path: path.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Corrupt {
            path,
            reason: "empty".into(),
        });
    }
    Ok(token.to_owned())
}

/// Whether an `Authorization` header value carries `Bearer <expected>`. The comparison takes
/// the same time wherever the first difference is.
pub fn bearer_matches(header: Option<&str>, expected: &str) -> bool {
    let Some(presented) = header.and_then(bearer) else {
        return false;
    };
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential of an `Authorization: Bearer <credential>` value (scheme case-insensitive,
/// RFC 7235).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, value) = header.trim().split_once(' ')?;
    let value = value.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !value.is_empty()).then_some(value)
}

/// SHA-256 of `data` as lowercase hex, from the process's one crypto provider.
pub fn sha256_hex(data: &[u8]) -> Result<String, TokenError> {
    let hash = trustmesh_pki::sha256().ok_or(TokenError::NoSha256)?;
    Ok(hash
        .hash(data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn random_token() -> Result<String, TokenError> {
    let mut buf = [0u8; TOKEN_BYTES];
    trustmesh_pki::crypto_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn create_private_dir(dir: &Path) -> Result<(), TokenError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TokenError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Unix seconds of `t` (0 before 1970).
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn web() -> SpiffeId {
        SpiffeId::parse("spiffe://td.test/ns/shop/sa/web").unwrap()
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn sha256_matches_the_fips_180_test_vector() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        assert_eq!(
            sha256_hex(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_hash_of_a_token_is_stored_and_the_record_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::new(dir.path());
        let t = tokens.create("shop/web", &web(), HOUR, t0()).unwrap();
        assert_eq!(t.token.len(), 43, "32 bytes in unpadded base64url");
        let name = t.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            name,
            format!("{}.json", sha256_hex(t.token.as_bytes()).unwrap())
        );
        let text = fs::read_to_string(&t.path).unwrap();
        assert!(!text.contains(&t.token));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["workload"], "shop/web");
        assert_eq!(v["identity"], "spiffe://td.test/ns/shop/sa/web");
        assert_eq!(v["expiresAt"], 1_800_003_600u64);
        assert!(v["usedAt"].is_null());
        let mode = fs::metadata(&t.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_token_is_redeemed_once_for_its_own_workload_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::new(dir.path());
        let t = tokens.create("shop/web", &web(), HOUR, t0()).unwrap();
        // Another workload: refused, and the token is not burnt by the attempt.
        assert!(matches!(
            tokens.check(&t.token, "shop/db", t0()),
            Err(TokenError::WrongWorkload { bound, claimed }) if bound == "shop/web" && claimed == "shop/db"
        ));
        let claim = tokens.check(&t.token, "shop/web", t0()).unwrap();
        assert_eq!(claim.record().identity, web().as_str());
        claim.redeem(t0()).unwrap();
        assert!(matches!(
            tokens.check(&t.token, "shop/web", t0()),
            Err(TokenError::AlreadyUsed {
                used_at: 1_800_000_000,
                ..
            })
        ));
        // Expiry: valid up to the second before, refused from that second on.
        let t2 = tokens.create("shop/web", &web(), HOUR, t0()).unwrap();
        assert!(
            tokens
                .check(&t2.token, "shop/web", t0() + HOUR - Duration::from_secs(1))
                .is_ok()
        );
        assert!(matches!(
            tokens.check(&t2.token, "shop/web", t0() + HOUR),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            tokens.check("made-up", "shop/web", t0()),
            Err(TokenError::Unknown)
        ));
        assert!(matches!(
            tokens.create("shop/web", &web(), Duration::ZERO, t0()),
            Err(TokenError::InvalidTtl)
        ));
    }

    #[test]
    fn records_long_expired_are_pruned_when_a_token_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::new(dir.path());
        let old = tokens.create("shop/web", &web(), HOUR, t0()).unwrap();
        let later = t0() + HOUR + KEEP_EXPIRED + Duration::from_secs(1);
        tokens.create("shop/web", &web(), HOUR, later).unwrap();
        assert!(!old.path.exists());
        assert!(matches!(
            tokens.check(&old.token, "shop/web", later),
            Err(TokenError::Unknown)
        ));
    }

    #[test]
    fn admin_token_is_created_once_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_create_admin_token(&state).unwrap();
        assert_eq!(a.len(), 43);
        let path = state.join(ADMIN_TOKEN_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_admin_token(&state).unwrap(), a);
        assert_eq!(read_admin_token(&state).unwrap(), a);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_admin_token(&state).unwrap_err().to_string();
        assert!(e.contains("admin.token") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn bearer_header_parsing_and_comparison() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("bearer   abc "), "abc"));
        assert!(!bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!bearer_matches(Some("Bearer ab"), "abc"));
        assert!(!bearer_matches(Some("Basic abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }
}
