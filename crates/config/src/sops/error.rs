//! Typed errors for SOPS handling. Every message names the file involved;
//! [`Doctor`] adds the likely cause and the next action. No variant carries key
//! material or decrypted values.

use std::path::PathBuf;

use endsys_core::Doctor;

/// Everything that can go wrong reading, decrypting or encrypting a SOPS file.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("age key file {path} does not exist")]
    KeyFileMissing { path: PathBuf },

    #[error("cannot read age key file {path}: {source}")]
    KeyFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{source_desc} contains a post-quantum age identity (AGE-SECRET-KEY-PQ-1…), which is not supported by this tool")]
    PostQuantumKey { source_desc: String },

    #[error("{source_desc} contains an age plugin identity (AGE-PLUGIN-…), which is not supported by this tool")]
    PluginKey { source_desc: String },

    #[error("{source_desc} line {line} is not a valid age identity")]
    MalformedKey { source_desc: String, line: usize },

    #[error("{source_desc} contains no age identity")]
    NoIdentities { source_desc: String },

    #[error("none of the age keys from {key_source} can decrypt {file}: the file is encrypted for [{}], your key(s) are [{}]", recipients.join(", "), our_recipients.join(", "))]
    NotRecipient {
        file: PathBuf,
        key_source: String,
        recipients: Vec<String>,
        our_recipients: Vec<String>,
    },

    #[error("{file}: the age-encrypted data key for {recipient} is malformed ({reason})")]
    MalformedDataKey {
        file: PathBuf,
        recipient: String,
        reason: String,
    },

    #[error("{file}: MAC mismatch")]
    MacMismatch { file: PathBuf },

    #[error("{file}: malformed encrypted value at `{path}`: {reason}")]
    MalformedEnc {
        file: PathBuf,
        path: String,
        reason: String,
    },

    #[error("{file}: value at `{path}` failed authentication")]
    ValueAuth { file: PathBuf, path: String },

    #[error("{file}: value at `{path}` has unsupported type `{ty}`")]
    UnsupportedType {
        file: PathBuf,
        path: String,
        ty: String,
    },

    #[error("{file} is not a SOPS file ({reason})")]
    NotSopsFile { file: PathBuf, reason: String },

    #[error("{file}: invalid sops metadata: {reason}")]
    InvalidMetadata { file: PathBuf, reason: String },

    /// `hint` is the next action.
    #[error("{file}: {what} is not supported by this tool")]
    Unsupported {
        file: PathBuf,
        what: String,
        hint: String,
    },

    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: invalid YAML: {reason}")]
    Yaml { file: PathBuf, reason: String },

    #[error("{file}: invalid {field} `{pattern}`: {source}")]
    InvalidRegex {
        file: PathBuf,
        field: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },

    #[error("{config}: no creation rule matches {file}")]
    NoMatchingRule { config: PathBuf, file: PathBuf },

    #[error("{file}: invalid age recipient `{recipient}`")]
    InvalidRecipient { file: PathBuf, recipient: String },

    #[error("{file}: encryption failed: {reason}")]
    Encrypt { file: PathBuf, reason: String },
}

const RESTORE: &str = "restore the file from version control";

impl Doctor for SopsError {
    fn likely_cause(&self) -> String {
        match self {
            SopsError::KeyFileMissing { .. } => {
                "no age key was given, and none is at the default place".into()
            }
            SopsError::KeyFileRead { .. } => "the file's permissions or type forbid reading it".into(),
            SopsError::PostQuantumKey { .. } => "the key was made with `age-keygen -pq`".into(),
            SopsError::PluginKey { .. } => {
                "the key belongs to an age plugin (hardware token or similar)".into()
            }
            SopsError::MalformedKey { .. } => {
                "the line is truncated or not an age key (it must start with AGE-SECRET-KEY-1)".into()
            }
            SopsError::NoIdentities { .. } => {
                "the file or variable is empty, or holds only comments and public keys".into()
            }
            SopsError::NotRecipient { .. } => {
                "the file was encrypted for other recipients (another key, or before yours was added to .sops.yaml)".into()
            }
            SopsError::MalformedDataKey { .. } | SopsError::InvalidMetadata { .. } => {
                "the sops metadata was edited by hand or damaged".into()
            }
            SopsError::MacMismatch { .. } => {
                "the file was edited without sops (or damaged)".into()
            }
            SopsError::MalformedEnc { .. } => {
                "the encrypted value was edited by hand or truncated".into()
            }
            SopsError::ValueAuth { .. } => {
                "a wrong tag, a wrong key, or the value was moved to another path".into()
            }
            SopsError::UnsupportedType { .. } => {
                "the value has a type this tool does not read (it reads str, int, float, bool, bytes, time and comment)".into()
            }
            SopsError::NotSopsFile { .. } => {
                "the file is not encrypted, or the path names another file".into()
            }
            SopsError::Unsupported { .. } => {
                "the file uses a sops feature this tool does not implement".into()
            }
            SopsError::Read { .. } => "the file is missing or not readable".into(),
            SopsError::Yaml { .. } => "a YAML syntax error".into(),
            SopsError::InvalidRegex { .. } => {
                "the regular expression does not parse (sops uses Go's RE2 syntax)".into()
            }
            SopsError::NoMatchingRule { .. } => {
                "no path_regex in .sops.yaml matches the file's path".into()
            }
            SopsError::InvalidRecipient { .. } => {
                "the recipient is mistyped or not an age public key".into()
            }
            SopsError::Encrypt { .. } => {
                "the age library refused the recipients or the value".into()
            }
        }
    }

    fn next_action(&self) -> String {
        match self {
            SopsError::KeyFileMissing { path } => format!(
                "create it with `age-keygen -o {}`, or pass --age-key, or set SOPS_AGE_KEY_FILE / SOPS_AGE_KEY",
                path.display()
            ),
            SopsError::KeyFileRead { .. } => "check its permissions".into(),
            SopsError::PostQuantumKey { .. } => {
                "use a classic X25519 age key (`age-keygen` without -pq)".into()
            }
            SopsError::PluginKey { .. } => "use a classic X25519 age key".into(),
            SopsError::MalformedKey { .. } => "regenerate it with `age-keygen`".into(),
            SopsError::NoIdentities { .. } => {
                "add an AGE-SECRET-KEY-1… line (see `age-keygen`)".into()
            }
            SopsError::NotRecipient { .. } => {
                "use the matching key or re-encrypt the file for your key (`sops updatekeys`)".into()
            }
            SopsError::MacMismatch { .. } => {
                format!("{RESTORE} or re-create it with `sops edit`")
            }
            SopsError::MalformedDataKey { .. }
            | SopsError::MalformedEnc { .. }
            | SopsError::ValueAuth { .. }
            | SopsError::InvalidMetadata { .. } => RESTORE.into(),
            SopsError::UnsupportedType { .. } => {
                "re-encrypt the value as one of those types".into()
            }
            SopsError::NotSopsFile { file, .. } => format!(
                "encrypt it with `sops --encrypt --in-place {}` or check the path",
                file.display()
            ),
            SopsError::Unsupported { hint, .. } => hint.clone(),
            SopsError::Read { .. } => "check the path and its permissions".into(),
            SopsError::Yaml { .. } => "fix the syntax".into(),
            SopsError::InvalidRegex { .. } => "fix the pattern".into(),
            SopsError::NoMatchingRule { .. } => {
                "add a creation_rules entry whose path_regex matches it".into()
            }
            SopsError::InvalidRecipient { .. } => {
                "write an age public key (age1…, as `age-keygen -y KEYFILE` prints it)".into()
            }
            SopsError::Encrypt { .. } => {
                "check the recipients in .sops.yaml; report the error if they are valid".into()
            }
        }
    }

    /// Keys, recipients and files are the operator's input (exit code 2).
    fn is_input_error(&self) -> bool {
        true
    }
}
