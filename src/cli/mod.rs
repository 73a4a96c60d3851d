//! The command-line face: argument types, output (text or NDJSON), exit codes.
//! Everything here calls into the library; no behaviour lives here.

pub mod bounds;
pub mod cluster_args;
pub mod day2;
#[cfg(feature = "lab")]
pub mod demo_cmd;
pub mod docs;
pub mod drift_cmd;
pub mod gen;
#[cfg(feature = "lab")]
pub mod lab_cmd;
pub mod migrate_cmd;
pub mod process;
pub mod recover_cmd;
pub mod talos_cmd;
pub mod up;
pub mod upgrade_cmd;

use endsys_core::Doctor;
use thiserror::Error;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    /// One JSON object per line (NDJSON), stable field names.
    Json,
}

/// Prints results and messages in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: OutputFormat,
}

impl Output {
    pub fn result(&self, node: &str, what: &str, text: &str, json: serde_json::Value) {
        match self.format {
            OutputFormat::Text => {
                if text.contains('\n') {
                    println!("{node}:\n{text}");
                } else {
                    println!("{node}: {text}");
                }
            }
            OutputFormat::Json => {
                println!(
                    "{}",
                    serde_json::json!({"event": "result", "node": node, "what": what, "data": json})
                );
            }
        }
    }

    pub fn info(&self, node: &str, text: &str) {
        match self.format {
            OutputFormat::Text => println!("{node}: {text}"),
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({"event": "info", "node": node, "message": text})
            ),
        }
    }

    pub fn warn(&self, node: &str, text: &str) {
        match self.format {
            OutputFormat::Text => eprintln!("warning: {node}: {text}"),
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({"event": "warning", "node": node, "message": text})
            ),
        }
    }
}

/// Why a command failed. [`Doctor::explain`] is what the binary prints;
/// [`CliError::exit_code`] is 2 for bad input, 1 for a failure.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad arguments or input files, already explained: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A Talos call failed: exit 1.
    #[error(transparent)]
    Talos(Box<crate::talos::TalosError>),
    /// Cluster definition, patches or secrets bundle problems (exit 2 for bad input).
    #[error(transparent)]
    Config(Box<crate::machineconfig::ConfigError>),
    /// A SOPS file could not be read or written (keys, recipients, MAC): exit 2.
    #[error(transparent)]
    Sops(Box<crate::sops::SopsError>),
    /// Anything else that failed while acting, already explained: exit 1.
    #[error("{0}")]
    Failed(String),
    /// `diff`/`apply --dry-run`: running configs differ from the definition
    /// (already printed): exit 2, a CI drift gate.
    #[error("the running config of {nodes} node(s) differs from the definition (shown above)")]
    Differs { nodes: usize },
    /// A signal stopped the run: exit 128 + the signal's number.
    #[error("interrupted by {signal} during `{verb}`{}", journals_note(.journals))]
    Interrupted {
        signal: &'static str,
        verb: String,
        journals: Vec<std::path::PathBuf>,
    },
}

fn journals_note(journals: &[std::path::PathBuf]) -> String {
    if journals.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = journals.iter().map(|p| p.display().to_string()).collect();
        format!("; run recorded as interrupted in {}", names.join(", "))
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Interrupted { signal, .. } => {
                if *signal == "SIGTERM" {
                    143
                } else {
                    130
                }
            }
            CliError::Differs { .. } => 2,
            _ if self.is_input_error() => 2,
            _ => 1,
        }
    }

    /// The one JSON object printed for a failure under `--output json`: the
    /// error, its likely cause, the next action, the exit code.
    pub fn to_json(&self) -> serde_json::Value {
        let (error, cause, next) = split_explained(&self.explain());
        serde_json::json!({
            "event": "error",
            "error": error,
            "likely_cause": cause,
            "next_action": next,
            "exit_code": self.exit_code(),
        })
    }
}

/// Splits an explained error (`Doctor::explain`, or text written in its
/// wording) into the error, the likely cause and the next action.
pub fn split_explained(text: &str) -> (String, String, String) {
    let (mut error, mut cause, mut next) = (Vec::new(), Vec::new(), Vec::new());
    let mut into = 0;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("likely cause:") {
            into = 1;
            cause.push(rest.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("next action:") {
            into = 2;
            next.push(rest.trim().to_string());
        } else {
            match into {
                1 => cause.push(t.to_string()),
                2 => next.push(t.to_string()),
                _ => error.push(line.to_string()),
            }
        }
    }
    (error.join("\n"), cause.join(" "), next.join(" "))
}

/// Takes the state directory's lock for `verb` (see [`crate::engine::lock`]).
pub fn lock_state(
    dir: &std::path::Path,
    verb: &str,
    out: &Output,
) -> Result<crate::engine::lock::StateLock, CliError> {
    let lock = crate::engine::lock::StateLock::acquire(dir, verb).map_err(up::flow_error)?;
    for p in &lock.removed {
        out.info(
            "state",
            &format!("removed {} left by an interrupted run", p.display()),
        );
    }
    Ok(lock)
}

/// Talos, config and SOPS errors keep their own diagnosis; `Usage` and `Failed`
/// carry text that was explained where it was made.
impl Doctor for CliError {
    fn likely_cause(&self) -> String {
        match self {
            CliError::Talos(e) => e.likely_cause(),
            CliError::Config(e) => e.likely_cause(),
            CliError::Sops(e) => e.likely_cause(),
            CliError::Interrupted { .. } => {
                "the run was stopped by a signal (Ctrl-C, or a service manager stopping it)".into()
            }
            CliError::Differs { .. } => {
                "the definition was edited (or a node was changed by hand) since the last apply"
                    .into()
            }
            CliError::Usage(_) | CliError::Failed(_) => String::new(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            CliError::Talos(e) => e.next_action(),
            CliError::Config(e) => e.next_action(),
            CliError::Sops(e) => e.next_action(),
            CliError::Interrupted { verb, .. } if verb == "demo" => "run it again; with the same --state-dir it resumes, without one it starts afresh".into(),
            CliError::Interrupted { .. } => "run the same command again: it reads the real state and resumes where this run stopped".into(),
            CliError::Differs { .. } => "review the diff, then `apply` it (see `plan apply` for the order and gates)".into(),
            CliError::Usage(_) | CliError::Failed(_) => String::new(),
        }
    }

    fn is_input_error(&self) -> bool {
        match self {
            CliError::Usage(_) => true,
            CliError::Config(e) => e.is_input_error(),
            CliError::Sops(e) => e.is_input_error(),
            CliError::Talos(_)
            | CliError::Failed(_)
            | CliError::Interrupted { .. }
            | CliError::Differs { .. } => false,
        }
    }
}
