//! The state directory's lock: every verb that writes a state directory (`up`,
//! `recover`, `node reimage|rejoin`, `etcd backup` into it) holds an advisory
//! lock on `<state>/.lock` for its whole run, so two runs never act on the same
//! journal and nodes at once (two `up`s would both call Bootstrap). The file
//! names the holder (pid, verb, start time) for the refusal. The kernel drops
//! the lock with the process, however it ends: nothing stale to delete.
//!
//! Taking the lock also clears temporaries a killed run left mid-write
//! ([`endsys_core::fs::remove_stale_temps`]): only the owner may.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::FlowError;

/// The lock file's name in a state directory.
pub const LOCK_FILE: &str = ".lock";

/// The state directories this process holds locks on (for the signal handler,
/// which closes their journals' open runs).
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The state directories this process holds now.
pub fn held() -> Vec<PathBuf> {
    HELD.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
    /// Stale temporaries removed when the lock was taken.
    pub removed: Vec<PathBuf>,
}

impl StateLock {
    /// Takes the lock of `dir` (created if missing) for `verb`, or refuses
    /// naming the run that holds it. Never waits: the other run may take hours.
    pub fn acquire(dir: &Path, verb: &str) -> Result<StateLock, FlowError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            FlowError::local(dir, format!("cannot create the state directory: {e}"))
        })?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| FlowError::local(&path, format!("cannot open the lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(FlowError::StateLocked {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() {
                        "a run that has not written its name yet".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(FlowError::local(&path, format!("cannot lock: {e}")))
            }
        }
        let who = format!(
            "pid {}, `{verb}`, started {}",
            std::process::id(),
            endsys_core::clock::rfc3339_secs(endsys_core::clock::now_secs())
        );
        // Best effort: the lock holds without the name.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(who.as_bytes()))
            .and_then(|_| file.flush());
        let mut removed = endsys_core::fs::remove_stale_temps(dir);
        removed.extend(endsys_core::fs::remove_stale_temps(&dir.join("day2")));
        for p in &removed {
            tracing::info!("removed {} left by an interrupted run", p.display());
        }
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.to_path_buf());
        Ok(StateLock {
            _file: file,
            path,
            removed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent() {
            if let Some(i) = held.iter().position(|d| d == dir) {
                held.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endsys_core::Doctor;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir
            .path()
            .join(format!("{}x1", endsys_core::fs::TEMP_PREFIX));
        std::fs::write(&stale, b"talosconfig").unwrap();
        let first = StateLock::acquire(dir.path(), "up").unwrap();
        assert_eq!(first.removed, vec![stale.clone()]);
        assert!(!stale.exists());
        let e = StateLock::acquire(dir.path(), "recover").unwrap_err();
        let text = e.explain();
        assert!(
            text.contains(&format!("pid {}", std::process::id())) && text.contains("`up`"),
            "{text}"
        );
        assert!(text.contains("wait for that run"), "{text}");
        assert!(matches!(e, FlowError::StateLocked { .. }));
        drop(first);
        StateLock::acquire(dir.path(), "recover").unwrap();
    }
}
