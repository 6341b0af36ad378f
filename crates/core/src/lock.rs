//! The advisory lock each binary holds for its whole run, so two runs of one binary (a
//! timer and an operator) never overlap.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A held lock; released when dropped (or when the process ends, whatever the cause).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another run holds the lock `{}`", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl RunLock {
    /// Takes `<dir>/<name>.lock` without waiting.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self, LockError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("failed to create the lock directory `{}`", dir.display()))?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to open the lock file `{}`", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held { path }),
            Err(TryLockError::Error(e)) => Err(LockError::Io(
                anyhow::Error::new(e).context(format!("failed to lock `{}`", path.display())),
            )),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path(), "token-pusher").unwrap();
        assert!(matches!(
            RunLock::acquire(dir.path(), "token-pusher"),
            Err(LockError::Held { .. })
        ));
        RunLock::acquire(dir.path(), "ping-nodes").unwrap();
        drop(first);
        RunLock::acquire(dir.path(), "token-pusher").unwrap();
    }
}
