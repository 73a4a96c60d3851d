//! The command-line face: argument types, output (text or NDJSON), exit codes.
//! Everything here calls into the library; no behaviour lives here.

pub mod day2;
#[cfg(feature = "lab")]
pub mod demo_cmd;
pub mod docs;
pub mod gen;
#[cfg(feature = "lab")]
pub mod lab_cmd;
pub mod recover_cmd;
pub mod talos_cmd;
pub mod up;

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
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        if self.is_input_error() {
            2
        } else {
            1
        }
    }
}

/// Talos, config and SOPS errors keep their own diagnosis; `Usage` and `Failed`
/// carry text that was explained where it was made.
impl Doctor for CliError {
    fn likely_cause(&self) -> String {
        match self {
            CliError::Talos(e) => e.likely_cause(),
            CliError::Config(e) => e.likely_cause(),
            CliError::Sops(e) => e.likely_cause(),
            CliError::Usage(_) | CliError::Failed(_) => String::new(),
        }
    }

    fn next_action(&self) -> String {
        match self {
            CliError::Talos(e) => e.next_action(),
            CliError::Config(e) => e.next_action(),
            CliError::Sops(e) => e.next_action(),
            CliError::Usage(_) | CliError::Failed(_) => String::new(),
        }
    }

    fn is_input_error(&self) -> bool {
        match self {
            CliError::Usage(_) => true,
            CliError::Config(e) => e.is_input_error(),
            CliError::Sops(e) => e.is_input_error(),
            CliError::Talos(_) | CliError::Failed(_) => false,
        }
    }
}
