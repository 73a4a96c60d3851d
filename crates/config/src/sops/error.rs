//! Typed errors for SOPS handling. Every message names the file involved and the next
//! action for the operator. No variant carries key material or decrypted values.

use std::path::PathBuf;

/// Everything that can go wrong reading, decrypting or encrypting a SOPS file.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("age key file {path} does not exist; create it with `age-keygen -o {path}`, or pass --age-key, or set SOPS_AGE_KEY_FILE / SOPS_AGE_KEY")]
    KeyFileMissing { path: PathBuf },

    #[error("cannot read age key file {path}: {source}; check its permissions")]
    KeyFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{source_desc} contains a post-quantum age identity (AGE-SECRET-KEY-PQ-1…), which is not supported by this tool; use a classic X25519 age key (`age-keygen` without -pq)")]
    PostQuantumKey { source_desc: String },

    #[error("{source_desc} contains an age plugin identity (AGE-PLUGIN-…), which is not supported by this tool; use a classic X25519 age key")]
    PluginKey { source_desc: String },

    #[error("{source_desc} line {line} is not a valid age identity; expected a line starting with AGE-SECRET-KEY-1 (regenerate it with `age-keygen`)")]
    MalformedKey { source_desc: String, line: usize },

    #[error(
        "{source_desc} contains no age identity; add an AGE-SECRET-KEY-1… line (see `age-keygen`)"
    )]
    NoIdentities { source_desc: String },

    #[error("none of the age keys from {key_source} can decrypt {file}: the file is encrypted for [{}], your key(s) are [{}]; use the matching key or re-encrypt the file for your key (`sops updatekeys`)", recipients.join(", "), our_recipients.join(", "))]
    NotRecipient {
        file: PathBuf,
        key_source: String,
        recipients: Vec<String>,
        our_recipients: Vec<String>,
    },

    #[error("{file}: the age-encrypted data key for {recipient} is malformed ({reason}); the sops metadata is damaged, restore the file from version control")]
    MalformedDataKey {
        file: PathBuf,
        recipient: String,
        reason: String,
    },

    #[error("{file}: MAC mismatch, the file was edited without sops (or damaged); restore it from version control or re-create it with `sops edit`")]
    MacMismatch { file: PathBuf },

    #[error("{file}: malformed encrypted value at `{path}`: {reason}; restore the file from version control")]
    MalformedEnc {
        file: PathBuf,
        path: String,
        reason: String,
    },

    #[error("{file}: value at `{path}` failed authentication (wrong tag, wrong key or moved to another path); restore the file from version control")]
    ValueAuth { file: PathBuf, path: String },

    #[error("{file}: value at `{path}` has unsupported type `{ty}`; this tool reads str, int, float, bool, bytes, time and comment")]
    UnsupportedType {
        file: PathBuf,
        path: String,
        ty: String,
    },

    #[error("{file} is not a SOPS file ({reason}); encrypt it with `sops --encrypt --in-place {file}` or check the path")]
    NotSopsFile { file: PathBuf, reason: String },

    #[error("{file}: invalid sops metadata: {reason}; restore the file from version control")]
    InvalidMetadata { file: PathBuf, reason: String },

    #[error("{file}: {what} is not supported by this tool; {hint}")]
    Unsupported {
        file: PathBuf,
        what: String,
        hint: String,
    },

    #[error("{file}: invalid YAML: {reason}; fix the syntax")]
    Yaml { file: PathBuf, reason: String },

    #[error("{file}: invalid {field} `{pattern}`: {reason}")]
    InvalidRegex {
        file: PathBuf,
        field: String,
        pattern: String,
        reason: String,
    },

    #[error("{config}: no creation rule matches {file}; add a creation_rules entry whose path_regex matches it")]
    NoMatchingRule { config: PathBuf, file: PathBuf },

    #[error("{file}: invalid age recipient `{recipient}`; expected age1… (see `age-keygen -y`)")]
    InvalidRecipient { file: PathBuf, recipient: String },

    #[error("{file}: encryption failed: {reason}")]
    Encrypt { file: PathBuf, reason: String },
}
