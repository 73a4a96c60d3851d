//! Private files (0600) written atomically: a temporary file in the same
//! directory, fsynced, then renamed over (or, for files that must never be
//! replaced, linked without clobbering). Temporaries carry [`TEMP_PREFIX`] so a
//! run killed mid-write leaves something recognisable, which the next run that
//! owns the directory removes ([`remove_stale_temps`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Name prefix of every temporary file this tool writes.
pub const TEMP_PREFIX: &str = ".endsys-tmp-";

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A temporary file beside `path`, 0600 from its creation, holding `bytes`
/// (synced). Dropped unpersisted, it is removed.
fn staged(path: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir)?;
    let mut b = tempfile::Builder::new();
    b.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut tmp = b.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Writes `bytes` to `path` (0600) atomically, replacing what was there. A
/// symlink at `path` is replaced by the file, like `rename(2)` does; callers that
/// mean to write through a link resolve it first ([`resolve_link`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    staged(path, bytes)?.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to a NEW file `path` (0600): fails with
/// [`std::io::ErrorKind::AlreadyExists`] if `path` exists when the content is
/// ready to land, so two writers racing for the same name never silently replace
/// each other (the check happens at the link, not before the work).
pub fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(already(path));
    }
    staged(path, bytes)?.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            already(path)
        } else {
            e.error
        }
    })?;
    Ok(())
}

fn already(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{} already exists", path.display()),
    )
}

/// `path`, or the file a symlink at `path` points to (followed to the end; a
/// relative link is taken relative to the link's directory). A dangling link
/// resolves to its target, so writing creates the target, not a file over the link.
pub fn resolve_link(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    // A bound on hops, as the kernel has (ELOOP).
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = t,
            Ok(t) => p = parent_of(&p).join(t),
            Err(_) => return p,
        }
    }
    p
}

/// Removes temporaries (files named [`TEMP_PREFIX`]…) left in `dir` by a run
/// that was killed mid-write. Only the owner of the directory may call it (a
/// live writer's temporary would go too). Returns what was removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let is_temp = name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_temp
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_never_replace_and_temps_are_private_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.yaml");
        write_new_private(&p, b"one").unwrap();
        let e = write_new_private(&p, b"two").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_private(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing temporary is left, and a stale one goes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let stale = dir.path().join(format!("{TEMP_PREFIX}abc"));
        std::fs::write(&stale, b"kubeconfig").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), vec![stale.clone()]);
        assert!(!stale.exists() && p.exists());
    }

    #[cfg(unix)]
    #[test]
    fn links_resolve_to_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        assert_eq!(resolve_link(&link), real);
        assert_eq!(resolve_link(&real), real);
    }
}
