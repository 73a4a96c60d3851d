//! Typed errors for the machine-config room. Every input error carries the file and,
//! where it can be found, the line; [`Doctor`] adds the likely cause and next action.

use std::fmt;
use std::path::{Path, PathBuf};

use endsys_core::Doctor;
use thiserror::Error;

/// Where in the operator's files a problem sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: usize,
}

impl Location {
    pub fn new(file: &Path, line: usize) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file.display(), self.line)
        } else {
            write!(f, "{}", self.file.display())
        }
    }
}

/// One validation finding. Errors block rendering; warnings are reported only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// What the finding is about: a node name, a file, or `cluster`.
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: {}: {}", self.subject, self.message)
    }
}

/// Errors from loading, rendering, patching and validating machine configs.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The operator's input is wrong: a definition, env file, patch or secrets
    /// bundle. `hint` is the next action.
    #[error("{location}: {message}")]
    Input {
        location: Location,
        message: String,
        hint: String,
    },
    /// Rendered configs failed validation.
    #[error("validation failed with {} error(s):\n{}", count_errors(.findings), list(.findings))]
    Validation { findings: Vec<Finding> },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Key or certificate handling failed (not the operator's fault as a rule).
    #[error("crypto: {0}")]
    Crypto(String),
    /// A key or certificate of the bundle could not be read or issued.
    #[error("crypto: {0}")]
    Pki(#[from] endsys_core::pki::PkiError),
}

fn count_errors(f: &[Finding]) -> usize {
    f.iter().filter(|f| f.severity == Severity::Error).count()
}

fn list(f: &[Finding]) -> String {
    f.iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn input(
        file: &Path,
        line: usize,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ConfigError::Input {
            location: Location::new(file, line),
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A file that could not be taken as input, named with what is wrong with it
    /// (a folder, a link loop, binary, too large…): an input error, except a
    /// failure of the machine itself.
    pub fn unreadable(path: &Path, problem: crate::limits::InputProblem) -> Self {
        use crate::limits::InputProblem;
        match problem {
            InputProblem::Other(e) => ConfigError::io(path, e),
            InputProblem::TooDeep { line, max } => ConfigError::input(
                path,
                line,
                format!("nests `[`/`{{` more than {max} levels deep"),
                problem.hint(),
            ),
            p => ConfigError::input(path, 0, p.message(), p.hint()),
        }
    }

    /// Process exit code: 2 for anything the operator must fix in the input
    /// ([`Doctor::is_input_error`]), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        if self.is_input_error() {
            2
        } else {
            1
        }
    }

    /// The location, for input errors.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Input { location, .. } => Some(location),
            _ => None,
        }
    }
}

impl Doctor for ConfigError {
    fn likely_cause(&self) -> String {
        match self {
            // The message itself names the mistake.
            ConfigError::Input { .. } => String::new(),
            ConfigError::Validation { .. } => {
                "the rendered machine configs break rules Talos enforces (each error names its node or file)".into()
            }
            ConfigError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "the file is not where the path says".into(),
                std::io::ErrorKind::PermissionDenied => {
                    "this user may not read or write the file".into()
                }
                _ => "the path is not a readable file (a folder, a broken link, a full disk)".into(),
            },
            ConfigError::Crypto(_) | ConfigError::Pki(_) => {
                "a key or certificate in the secrets bundle is damaged, or could not be made".into()
            }
        }
    }

    fn next_action(&self) -> String {
        match self {
            ConfigError::Input { hint, .. } => hint.clone(),
            ConfigError::Validation { .. } => {
                "fix the definition or its patches for each error, then run `validate` again".into()
            }
            ConfigError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => {
                    "check the path, or pass it explicitly (--config/--env/--secrets)".into()
                }
                std::io::ErrorKind::PermissionDenied => "check the file's permissions".into(),
                _ => "check that the path is a readable file".into(),
            },
            ConfigError::Crypto(_) | ConfigError::Pki(_) => {
                "restore the secrets bundle from its SOPS file or backup; for a new cluster, `gen secrets` makes a fresh one".into()
            }
        }
    }

    fn is_input_error(&self) -> bool {
        match self {
            ConfigError::Input { .. } | ConfigError::Validation { .. } => true,
            // Binary data is the operator's file, as much as a syntax error is.
            ConfigError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
            ),
            ConfigError::Crypto(_) | ConfigError::Pki(_) => false,
        }
    }
}

/// Finds the 1-based line of a YAML key path in block-style text, by walking the
/// keys in order with growing indentation. serde values carry no spans, and this is
/// enough for the hand-written files operators keep. Returns the deepest line found.
pub fn locate_line(text: &str, path: &[&str]) -> usize {
    let mut best = 0usize;
    let mut start = 0usize;
    let mut min_indent: isize = -1;
    let lines: Vec<&str> = text.lines().collect();
    'seg: for seg in path {
        if seg.parse::<usize>().is_ok() || seg.is_empty() {
            continue;
        }
        for (i, l) in lines.iter().enumerate().skip(start) {
            let trimmed = l.trim_start();
            let indent = (l.len() - trimmed.len()) as isize;
            let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            let extra = (trimmed.len() - body.len()) as isize;
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            if indent + extra <= min_indent && i > start {
                // Left the parent block.
                break 'seg;
            }
            let key_match = body
                .strip_prefix(seg)
                .map(|rest| rest.trim_start().starts_with(':'))
                .unwrap_or(false)
                || body
                    .strip_prefix(&format!("\"{seg}\""))
                    .map(|rest| rest.trim_start().starts_with(':'))
                    .unwrap_or(false);
            if key_match && indent + extra > min_indent {
                best = i + 1;
                start = i + 1;
                min_indent = indent + extra;
                continue 'seg;
            }
        }
        break;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_line_walks_nested_keys() {
        let text = "a:\n  b: 1\nc:\n  d:\n    - e: 1\n      f: 2\n";
        assert_eq!(locate_line(text, &["c", "d", "0", "f"]), 6);
        assert_eq!(locate_line(text, &["a", "b"]), 2);
        assert_eq!(locate_line(text, &["c", "zzz"]), 3);
        assert_eq!(locate_line(text, &["nope"]), 0);
    }
}
