//! The lab's Git host, as source-controller sees it: a URL answers with a
//! directory registered by whoever started the lab ([`super::KubeLab::serve_git`]),
//! `file://` URLs and plain paths answer with themselves. The revision is the
//! commit a ref points at when the directory is a Git checkout (HEAD, loose refs,
//! `packed-refs`, read like git does), otherwise a hash of the tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a fetch failed; the text is what source-controller puts after
/// `unable to clone '<url>': `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchError(pub String);

/// A fetched source: where its tree is and the artifact revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub dir: PathBuf,
    pub revision: String,
}

/// URLs the lab's Git host answers, keyed without a trailing `/` or `.git`
/// (GitHub serves a repository under both spellings).
#[derive(Debug, Default)]
pub(crate) struct GitHost {
    repos: BTreeMap<String, PathBuf>,
}

fn normalize(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    u.strip_suffix(".git").unwrap_or(u).to_string()
}

impl GitHost {
    pub fn serve(&mut self, url: &str, dir: PathBuf) {
        self.repos.insert(normalize(url), dir);
    }

    /// The directory behind a URL, if anything answers it.
    pub fn resolve(&self, url: &str) -> Option<PathBuf> {
        if let Some(p) = url.strip_prefix("file://") {
            return Some(PathBuf::from(p));
        }
        if url.starts_with('/') {
            return Some(PathBuf::from(url));
        }
        self.repos.get(&normalize(url)).cloned()
    }
}

/// The ref a GitRepository asks for (`spec.ref`), in source-controller's order
/// of precedence, and how the revision names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Commit(String),
    /// A full ref name (`refs/heads/main`) and the revision's prefix.
    Ref {
        full: String,
        shown: String,
    },
    /// No ref: HEAD's branch.
    Head,
}

fn wanted(spec_ref: Option<&Value>) -> Want {
    let f = |k: &str| {
        spec_ref
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if let Some(c) = f("commit") {
        return Want::Commit(c.to_string());
    }
    if let Some(n) = f("name") {
        return Want::Ref {
            full: n.to_string(),
            shown: n.to_string(),
        };
    }
    if let Some(t) = f("tag") {
        return Want::Ref {
            full: format!("refs/tags/{t}"),
            shown: t.to_string(),
        };
    }
    match f("branch") {
        Some(b) => Want::Ref {
            full: format!("refs/heads/{b}"),
            shown: b.to_string(),
        },
        None => Want::Head,
    }
}

/// The git directory of a checkout: `.git`, or where a `.git` file points
/// (worktrees, submodules).
fn git_dir(dir: &Path) -> Option<PathBuf> {
    let dot = dir.join(".git");
    if dot.join("HEAD").is_file() {
        return Some(dot);
    }
    let text = std::fs::read_to_string(&dot).ok()?;
    let target = text.trim().strip_prefix("gitdir:")?.trim();
    let p = PathBuf::from(target);
    Some(if p.is_absolute() { p } else { dir.join(p) })
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves a ref like git: a loose file (possibly symbolic), else `packed-refs`.
fn resolve_ref(gd: &Path, name: &str, depth: u8) -> Option<String> {
    if depth > 5 {
        return None; // A symbolic-ref loop.
    }
    if let Ok(text) = std::fs::read_to_string(gd.join(name)) {
        let t = text.trim();
        if let Some(target) = t.strip_prefix("ref:") {
            return resolve_ref(gd, target.trim(), depth + 1);
        }
        return is_sha(t).then(|| t.to_ascii_lowercase());
    }
    let packed = std::fs::read_to_string(gd.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| r.trim() == name)
        .map(|(sha, _)| sha.to_ascii_lowercase())
        .filter(|s| is_sha(s))
}

/// HEAD's branch (`refs/heads/main`), when HEAD is symbolic.
fn head_ref(gd: &Path) -> Option<String> {
    let text = std::fs::read_to_string(gd.join("HEAD")).ok()?;
    Some(text.trim().strip_prefix("ref:")?.trim().to_string())
}

fn git_revision(gd: &Path, want: &Want) -> Result<String, FetchError> {
    let missing = |r: &str| FetchError(format!("couldn't find remote ref \"{r}\""));
    match want {
        Want::Commit(c) => Ok(format!("sha1:{c}")),
        Want::Ref { full, shown } => resolve_ref(gd, full, 0)
            .map(|sha| format!("{shown}@sha1:{sha}"))
            .ok_or_else(|| missing(full)),
        Want::Head => {
            let full = head_ref(gd).unwrap_or_else(|| "HEAD".into());
            let shown = full
                .strip_prefix("refs/heads/")
                .unwrap_or(&full)
                .to_string();
            resolve_ref(gd, &full, 0)
                .map(|sha| format!("{shown}@sha1:{sha}"))
                .ok_or_else(|| missing(&full))
        }
    }
}

fn hash_tree(dir: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_none_or(|n| n != ".git"))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_tree(&p, h)?;
        } else {
            h.update(p.to_string_lossy().as_bytes());
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// A revision for a plain directory: the lab has no commit, so a hash of the
/// tree stands in for one (it moves whenever a file changes).
fn tree_revision(dir: &Path, want: &Want) -> Result<String, FetchError> {
    let mut h = Sha256::new();
    hash_tree(dir, &mut h).map_err(|e| FetchError(e.to_string()))?;
    let hex = hex::encode(h.finalize());
    let sha = &hex[..40];
    Ok(match want {
        Want::Commit(c) => format!("sha1:{c}"),
        Want::Ref { shown, .. } => format!("{shown}@sha1:{sha}"),
        Want::Head => format!("refs/heads/main@sha1:{sha}"),
    })
}

/// Fetches `url` at `spec_ref` from the lab's Git host.
pub(crate) fn fetch(
    host: &GitHost,
    url: &str,
    spec_ref: Option<&Value>,
) -> Result<Fetched, FetchError> {
    let dir = host
        .resolve(url)
        .ok_or_else(|| FetchError("repository not found".into()))?;
    if !dir.is_dir() {
        return Err(FetchError("repository not found".into()));
    }
    let want = wanted(spec_ref);
    let revision = match git_dir(&dir) {
        Some(gd) => git_revision(&gd, &want)?,
        None => tree_revision(&dir, &want)?,
    };
    Ok(Fetched { dir, revision })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn repo() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join(".git/refs/heads")).expect("mkdir");
        std::fs::write(t.path().join(".git/HEAD"), "ref: refs/heads/main\n").expect("HEAD");
        std::fs::write(
            t.path().join(".git/packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{A} refs/heads/main\n{B} refs/tags/v1\n"),
        )
        .expect("packed");
        std::fs::write(t.path().join("a.yaml"), "x: 1\n").expect("file");
        t
    }

    #[test]
    fn registered_urls_resolve_with_or_without_dot_git() {
        let mut h = GitHost::default();
        h.serve("https://github.com/endsys-lab/home-ops.git", "/r".into());
        assert_eq!(
            h.resolve("https://github.com/endsys-lab/home-ops"),
            Some(PathBuf::from("/r"))
        );
        assert_eq!(h.resolve("file:///x/y"), Some(PathBuf::from("/x/y")));
        assert_eq!(h.resolve("https://github.com/other/repo.git"), None);
        let e = fetch(&h, "https://github.com/other/repo.git", None).expect_err("unknown");
        assert_eq!(e.0, "repository not found");
    }

    #[test]
    fn refs_resolve_like_git_packed_then_loose() {
        let t = repo();
        let mut h = GitHost::default();
        h.serve("https://git.lab/r.git", t.path().into());
        let url = "https://git.lab/r.git";
        let by_name = fetch(&h, url, Some(&json!({"name": "refs/heads/main"}))).expect("name");
        assert_eq!(by_name.revision, format!("refs/heads/main@sha1:{A}"));
        let by_branch = fetch(&h, url, Some(&json!({"branch": "main"}))).expect("branch");
        assert_eq!(by_branch.revision, format!("main@sha1:{A}"));
        let by_tag = fetch(&h, url, Some(&json!({"tag": "v1"}))).expect("tag");
        assert_eq!(by_tag.revision, format!("v1@sha1:{B}"));
        assert_eq!(
            fetch(&h, url, None).expect("head").revision,
            format!("main@sha1:{A}")
        );
        // A loose ref wins over packed-refs (it is newer).
        std::fs::write(t.path().join(".git/refs/heads/main"), format!("{B}\n")).expect("loose");
        let moved = fetch(&h, url, Some(&json!({"name": "refs/heads/main"}))).expect("moved");
        assert_eq!(moved.revision, format!("refs/heads/main@sha1:{B}"));
        let e = fetch(&h, url, Some(&json!({"branch": "dev"}))).expect_err("missing");
        assert_eq!(e.0, "couldn't find remote ref \"refs/heads/dev\"");
    }

    #[test]
    fn plain_directories_get_a_tree_hash_that_follows_changes() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(t.path().join("a.yaml"), "x: 1\n").expect("file");
        let h = GitHost::default();
        let url = format!("file://{}", t.path().display());
        let r = json!({"name": "refs/heads/main"});
        let one = fetch(&h, &url, Some(&r)).expect("one").revision;
        assert!(
            one.starts_with("refs/heads/main@sha1:") && one.len() == 21 + 40,
            "{one}"
        );
        std::fs::write(t.path().join("a.yaml"), "x: 2\n").expect("file");
        assert_ne!(fetch(&h, &url, Some(&r)).expect("two").revision, one);
    }
}
