//! The tool's own reader of a git checkout's HEAD (the lab has its own, so a
//! bug here cannot hide behind the same bug in the simulated Flux).

use std::path::{Path, PathBuf};

/// The commit a git checkout's HEAD points at, read from `.git` directly
/// (loose refs, then packed-refs; worktrees' `gitdir:` files and `commondir`
/// followed). `None` when `repo` is not a git checkout. Returns (ref, sha).
pub fn git_head(repo: &Path) -> Option<(String, String)> {
    let dot = repo.join(".git");
    let gitdir = if dot.is_file() {
        let text = std::fs::read_to_string(&dot).ok()?;
        let p = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        if p.is_relative() {
            repo.join(p)
        } else {
            p
        }
    } else if dot.is_dir() {
        dot
    } else {
        return None;
    };
    let common = std::fs::read_to_string(gitdir.join("commondir"))
        .ok()
        .map(|c| {
            let p = PathBuf::from(c.trim());
            if p.is_relative() {
                gitdir.join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| gitdir.clone());
    let head = std::fs::read_to_string(gitdir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref:") else {
        // Detached HEAD: the commit itself.
        return is_sha(head).then(|| ("HEAD".to_string(), head.to_string()));
    };
    let r = r.trim().to_string();
    for dir in [&gitdir, &common] {
        if let Ok(sha) = std::fs::read_to_string(dir.join(&r)) {
            let sha = sha.trim();
            if is_sha(sha) {
                return Some((r, sha.to_string()));
            }
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (sha, name) = l.split_once(' ')?;
            (name.trim() == r && is_sha(sha)).then(|| (r.clone(), sha.to_string()))
        })
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}
