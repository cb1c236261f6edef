//! Crash-safe file writes: [`write_atomic`] and its two-step form [`stage`] + [`Staged::commit`].
//!
//! A reader of the target path sees either the old content or the whole new content, never a
//! torn file, and after `commit` returns the new content survives a power loss: the data is
//! written to a temp file in the same directory, `fsync`ed, renamed over the target (rename is
//! atomic within one filesystem), and the directory is `fsync`ed so the rename is durable.
//! The file mode (e.g. 0600 for private keys) is applied when the temp file is created, so the
//! secret is never readable by others, not even for an instant. The process umask can only
//! remove permission bits, never add them.
//!
//! Unix only (file modes, directory fsync). What does not live here: deciding *what* to write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A filesystem step that failed, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done ("create", "write", "rename", ...).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically and durably, creating the file with `mode`
/// (e.g. `0o600` for keys, `0o644` for certificates).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    stage(path, bytes, mode)?.commit()
}

/// A fully written and synced temp file, waiting to be renamed over its target.
///
/// Dropping it without [`commit`](Staged::commit) removes the temp file.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Writes `bytes` to a new temp file next to `path` (mode `mode`) and syncs it, without
/// touching `path` yet. Stage several files, then commit them, to keep the window in which a
/// reader sees a mix of old and new files as short as a few renames.
pub fn stage(path: &Path, bytes: &[u8], mode: u32) -> Result<Staged, FsError> {
    let temp = temp_path_for(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| FsError::new("create", &temp, e))?;
    let staged = Staged {
        temp,
        target: path.to_owned(),
        committed: false,
    };
    file.write_all(bytes)
        .map_err(|e| FsError::new("write", &staged.temp, e))?;
    file.sync_all()
        .map_err(|e| FsError::new("fsync", &staged.temp, e))?;
    Ok(staged)
}

impl Staged {
    /// The target path this file will be renamed to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the temp file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), FsError> {
        fs::rename(&self.temp, &self.target)
            .map_err(|e| FsError::new("rename", &self.target, e))?;
        self.committed = true;
        sync_dir(parent_of(&self.target))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temp file has a unique hidden name and holds nothing the
            // target does not; failing to remove it leaves litter, not a wrong state.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// `fsync`s a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("fsync directory", dir, e))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A unique hidden sibling name: `.<name>.tmp-<pid>-<counter>`.
pub(crate) fn temp_path_for(path: &Path) -> Result<PathBuf, FsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        FsError::new(
            "name",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id());
    Ok(parent_of(path).join(temp))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_content_with_mode_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("tls.key");
        write_atomic(&key, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&key, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"second");
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tls.key")]);
    }

    #[test]
    fn dropped_stage_leaves_target_untouched_and_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        write_atomic(&path, b"old", 0o644).unwrap();
        let staged = stage(&path, b"new", 0o644).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"old",
            "staging must not touch the target"
        );
        drop(staged);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("x");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.op, "create");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
