//! The local vault-token store and the shape check of vault tokens.
//!
//! Layout (the Go service's, so a migration keeps its tokens):
//! `<root>/vt_u<uid>-<credd>-<real service name>` per credd, and
//! `<root>/vt_u<uid>-<real service name>` for services using htgettoken directly. Files are
//! replaced atomically (temporary file in the same directory, fsync, rename) with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};

/// The store file of `real_name` for `credd` (or for htgettoken directly when `None`).
pub fn store_path(root: &Path, uid: u32, credd: Option<&str>, real_name: &str) -> PathBuf {
    match credd {
        Some(credd) => root.join(format!("vt_u{uid}-{credd}-{real_name}")),
        None => root.join(format!("vt_u{uid}-{real_name}")),
    }
}

/// Whether `text` has the shape of a Vault (`hvs.`, `hvb.`, legacy `s.`) or OpenBao token.
pub fn is_token(text: &str) -> bool {
    let token = text.trim_end_matches('\n');
    let body = ["hvs.", "hvb.", "s.", "b."]
        .iter()
        .find_map(|p| token.strip_prefix(p));
    body.is_some_and(|b| {
        b.len() >= 8
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    })
}

/// The token in `path`, if the file exists and holds a well-formed token.
pub fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to read `{}`", path.display())),
    };
    Ok(is_token(&text).then(|| text.trim_end_matches('\n').to_string()))
}

/// Replaces `path` atomically with `token` (mode 0600), creating the store directory
/// (mode 0700) if needed.
pub fn install(path: &Path, token: &str) -> anyhow::Result<()> {
    if !is_token(token) {
        bail!(
            "refusing to store something that is not a vault token in `{}`",
            path.display()
        );
    }
    let dir = path.parent().context("token path has no directory")?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create the token store `{}`", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vt-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(token.as_bytes())
        .and_then(|()| tmp.write_all(b"\n"))
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("failed to write a token for `{}`", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("failed to replace `{}`", path.display()))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

/// Writes `token` to a new file at `path` (mode 0600), failing if anything exists there,
/// so a file or symlink planted in a shared directory is never written through.
pub fn write_new(path: &Path, token: &str) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create `{}`", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("failed to write `{}`", path.display()))
}

/// The newest valid stored token of `real_name` for `uid`, among every credd's copy and
/// the direct htgettoken copy.
pub fn newest_token(
    root: &Path,
    uid: u32,
    real_name: &str,
) -> anyhow::Result<Option<(PathBuf, String)>> {
    let prefix = format!("vt_u{uid}-");
    let exact = format!("vt_u{uid}-{real_name}");
    let suffix = format!("-{real_name}");
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to list `{}`", root.display())),
    };
    let mut best: Option<(SystemTime, PathBuf, String)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list `{}`", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let matches = name == exact
            || (name.starts_with(&prefix)
                && name.ends_with(&suffix)
                && name.len() > exact.len() + 1);
        if !matches {
            continue;
        }
        let path = entry.path();
        let Some(token) = read_token(&path)? else {
            log::warn!(
                "ignoring `{}`: it does not hold a vault token",
                path.display()
            );
            continue;
        };
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _, _)| modified > *t) {
            best = Some((modified, path, token));
        }
    }
    Ok(best.map(|(_, path, token)| (path, token)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn recognises_token_shapes() {
        assert!(is_token("hvs.CAESIabcdefghijklmnop\n"));
        assert!(is_token("s.AbCdEfGhIjKlMnOp"));
        assert!(!is_token("s.short"));
        assert!(!is_token("Error: permission denied"));
        assert!(!is_token("hvs.abc def ghi jkl"));
        assert!(!is_token(""));
    }

    #[test]
    fn installs_atomically_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(
            &dir.path().join("store"),
            0,
            Some("credd1"),
            "dune_production",
        );
        install(&path, "s.AbCdEfGhIjKlMnOp").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(read_token(&path).unwrap().unwrap(), "s.AbCdEfGhIjKlMnOp");
        assert!(install(&path, "garbage").is_err());
        assert_eq!(read_token(&path).unwrap().unwrap(), "s.AbCdEfGhIjKlMnOp");
    }

    #[test]
    fn finds_the_newest_copy_of_a_service_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        install(
            &store_path(root, 7, Some("c1"), "dune_production"),
            "s.OlderOlderOlder1",
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        install(
            &store_path(root, 7, Some("c2"), "dune_production"),
            "s.NewerNewerNewer2",
        )
        .unwrap();
        install(
            &store_path(root, 7, Some("c3"), "dune_analysis"),
            "s.OtherOtherOther3",
        )
        .unwrap();
        install(
            &store_path(root, 8, Some("c3"), "dune_production"),
            "s.OtherUidOther34",
        )
        .unwrap();
        let (_, token) = newest_token(root, 7, "dune_production").unwrap().unwrap();
        assert_eq!(token, "s.NewerNewerNewer2");
        assert!(newest_token(root, 7, "nova_production").unwrap().is_none());
    }

    #[test]
    fn write_new_refuses_existing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vt");
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(write_new(&path, "s.AbCdEfGhIjKlMnOp").is_err());
    }
}
