//! Bounds on the operator's input files, checked before any YAML parser sees them,
//! and the one way to read such a file so that every failure names what is wrong
//! with it (a folder, a link loop, no permission, binary data, too big).
//!
//! Why: libyaml keeps a stack per flow level and rescans it on every token, so
//! 100 000 nested `[` cost minutes; and a 45 MB list of SANs was held in memory
//! several times over. Real definitions, patches, bundles and manifests are far
//! below these limits.

use std::io::ErrorKind;
use std::path::Path;

/// The largest definition, talenv, patch, secrets bundle or machine config read
/// (real ones are tens of kilobytes).
pub const MAX_INPUT_BYTES: u64 = 4 << 20;
/// The largest manifest file of a Flux tree or SOPS file (CRD bundles reach a few MB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Deepest `[`/`{` nesting accepted; serde_yaml_ng stops at 128 levels anyway.
pub const MAX_FLOW_NESTING: usize = 64;
/// Most entries accepted in one list of names or addresses (certSANs, nameservers…).
pub const MAX_LIST_ENTRIES: usize = 1000;

/// Why a file could not be taken as input.
#[derive(Debug)]
pub enum InputProblem {
    NotFound,
    IsDirectory,
    SymlinkLoop,
    PermissionDenied,
    TooLarge { size: u64, max: u64 },
    NotText { offset: usize },
    TooDeep { line: usize, max: usize },
    Other(std::io::Error),
}

impl InputProblem {
    /// What is wrong, to follow the path in a message.
    pub fn message(&self) -> String {
        match self {
            InputProblem::NotFound => "does not exist".into(),
            InputProblem::IsDirectory => "is a folder, not a file".into(),
            InputProblem::SymlinkLoop => "is a symbolic link that loops back on itself".into(),
            InputProblem::PermissionDenied => {
                "cannot be read: permission denied (on the file or a folder above it)".into()
            }
            InputProblem::TooLarge { size, max } => format!(
                "is {} bytes, over the {} byte limit for this kind of file",
                size, max
            ),
            InputProblem::NotText { offset } => {
                format!("is not UTF-8 text (binary data at byte {offset})")
            }
            InputProblem::TooDeep { line, max } => {
                format!("nests `[`/`{{` more than {max} levels deep (line {line})")
            }
            InputProblem::Other(e) => format!("cannot be read: {e}"),
        }
    }

    /// The next action.
    pub fn hint(&self) -> &'static str {
        match self {
            InputProblem::NotFound => "check the path, or pass it explicitly",
            InputProblem::IsDirectory => "point at the YAML file inside the folder",
            InputProblem::SymlinkLoop => "fix or remove the link",
            InputProblem::PermissionDenied => {
                "check the permissions of the file and of the folders above it"
            }
            InputProblem::TooLarge { .. } => {
                "this is not the file you meant, or it was damaged; check its contents"
            }
            InputProblem::NotText { .. } => "this is not a YAML file; check the path",
            InputProblem::TooDeep { .. } => {
                "no real file nests this deep; check the file's contents"
            }
            InputProblem::Other(_) => "check that the path is a readable file",
        }
    }

    /// True when the operator's input is at fault (exit code 2), false for the machine.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, InputProblem::Other(_))
    }

    pub fn from_io(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound => InputProblem::NotFound,
            ErrorKind::IsADirectory => InputProblem::IsDirectory,
            ErrorKind::PermissionDenied => InputProblem::PermissionDenied,
            // ELOOP has no stable ErrorKind on the toolchains this builds with.
            _ if e.raw_os_error() == Some(40) => InputProblem::SymlinkLoop,
            _ => InputProblem::Other(e),
        }
    }
}

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Why `path` is not a readable file, or None when it is one.
pub fn check_file(path: &Path) -> Option<InputProblem> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(InputProblem::IsDirectory),
        Ok(_) => std::fs::File::open(path).err().map(InputProblem::from_io),
        Err(e) => Some(InputProblem::from_io(e)),
    }
}

/// Reads a text file of at most `max` bytes and checks its nesting.
pub fn read_text(path: &Path, max: u64) -> Result<String, InputProblem> {
    if let Some(p) = check_file(path) {
        return Err(p);
    }
    let size = std::fs::metadata(path)
        .map_err(InputProblem::from_io)?
        .len();
    if size > max {
        return Err(InputProblem::TooLarge { size, max });
    }
    // Read at most max+1 bytes: the file may have grown since the metadata call.
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(InputProblem::from_io)?;
        f.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(InputProblem::from_io)?;
    }
    if bytes.len() as u64 > max {
        return Err(InputProblem::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| InputProblem::NotText {
        offset: e.utf8_error().valid_up_to(),
    })?;
    check_text(&text, max)?;
    Ok(text)
}

/// The checks of [`read_text`] for text that did not come from a file.
pub fn check_text(text: &str, max: u64) -> Result<(), InputProblem> {
    if text.len() as u64 > max {
        return Err(InputProblem::TooLarge {
            size: text.len() as u64,
            max,
        });
    }
    if let Some(offset) = text.find('\0') {
        return Err(InputProblem::NotText { offset });
    }
    check_nesting(text)
}

/// Refuses flow collections nested deeper than [`MAX_FLOW_NESTING`]. Counts
/// brackets without parsing (quoted brackets count too): no real file comes near
/// the limit, and a real parser is what must not see such input.
pub fn check_nesting(text: &str) -> Result<(), InputProblem> {
    let mut depth = 0usize;
    let mut line = 1;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Err(InputProblem::TooDeep {
                        line,
                        max: MAX_FLOW_NESTING,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_quickly_with_its_line() {
        let text = format!("a: 1\nb: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        let e = check_text(&text, MAX_INPUT_BYTES).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(e.message().contains("line 2"), "{}", e.message());
        assert!(check_text("a: [[1], {b: [2]}]\n", MAX_INPUT_BYTES).is_ok());
    }

    #[test]
    fn an_unreadable_folder_is_named_as_such() {
        // Tests run as root here, which reads through any mode: the mapping is
        // checked on the error itself.
        let p = InputProblem::from_io(std::io::Error::from(ErrorKind::PermissionDenied));
        assert!(p.message().contains("permission denied"), "{}", p.message());
        assert!(p.hint().contains("folders above"));
        assert!(p.is_input_error());
        let other = InputProblem::from_io(std::io::Error::other("disk on fire"));
        assert!(!other.is_input_error());
    }

    #[test]
    fn folders_loops_binary_and_size_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_text(dir.path(), 10),
            Err(InputProblem::IsDirectory)
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(matches!(
            read_text(&big, 10),
            Err(InputProblem::TooLarge { size: 11, max: 10 })
        ));
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [b'a', 0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_text(&bin, 10),
            Err(InputProblem::NotText { offset: 1 })
        ));
        #[cfg(unix)]
        {
            let l = dir.path().join("loop");
            std::os::unix::fs::symlink(&l, &l).unwrap();
            assert!(matches!(read_text(&l, 10), Err(InputProblem::SymlinkLoop)));
        }
        assert!(matches!(
            read_text(&dir.path().join("nope"), 10),
            Err(InputProblem::NotFound)
        ));
    }
}
