//! What every day-2 verb shares: where the cluster comes from (the definition,
//! secrets and state `up` used), and how a flow's events are printed.

use std::path::PathBuf;

use clap::Args;

use super::up::{flow_error, next};
use super::{CliError, Output, OutputFormat};
use crate::engine::journal::state_dir;
use crate::engine::talhelper::TalhelperSource;
use crate::engine::{Cluster, ClusterSource, Emitter, Event, EventKind, Outcome};

/// Where the cluster comes from: the same definition and secrets `up` used.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub definition: super::gen::DefinitionArgs,
    /// age identity file for SOPS-encrypted secrets [default: $SOPS_AGE_KEY_FILE, then ~/.config/sops/age/keys.txt].
    #[arg(long)]
    pub age_key: Option<PathBuf>,
    /// State directory holding `up`'s journal, talosconfig and kubeconfig
    /// (default: $XDG_STATE_HOME/endsys-bootstrap/<cluster>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl ClusterArgs {
    pub(crate) fn load(&self) -> Result<(Cluster, PathBuf), CliError> {
        let mut s = TalhelperSource::new(&self.definition.config, &self.definition.secrets_path());
        s.paths = self.definition.paths();
        s.age_key = self.age_key.clone();
        let def = s.definition().map_err(flow_error)?;
        let dir = state_dir(self.state_dir.as_deref(), &def.cluster);
        let cluster = Cluster::load(&s, &dir).map_err(flow_error)?;
        Ok((cluster, dir))
    }
}

/// A node operation's event as its `day2` line: the kind, and the message.
fn day2_kind(e: &Event) -> Option<(&'static str, &str)> {
    Some(match &e.kind {
        EventKind::StepStarted { description } => ("started", description.as_str()),
        EventKind::StepFinished {
            outcome: Outcome::Done { detail },
            ..
        } => ("done", detail.as_str()),
        EventKind::StepFinished {
            outcome: Outcome::Skipped { reason },
            ..
        } => ("skipped", reason.as_str()),
        EventKind::Waiting { what } => ("waiting", what.as_str()),
        EventKind::Progress { message } => ("info", message.as_str()),
        EventKind::Warning { message } => ("warning", message.as_str()),
        _ => return None,
    })
}

/// Prints a node operation's events as they come: lines on stderr, or NDJSON
/// `day2` lines on stdout. Ends when the emitter is dropped.
pub(crate) fn spawn_printer(
    em: &Emitter,
    op: &'static str,
    out: &Output,
) -> tokio::task::JoinHandle<()> {
    let mut rx = em.subscribe();
    let format = out.format;
    tokio::spawn(async move {
        while let Some(e) = next(&mut rx).await {
            let Some((kind, message)) = day2_kind(&e) else {
                continue;
            };
            let node = e.node.as_deref().unwrap_or_default();
            match format {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"event": "day2", "op": op, "node": node, "step": e.step,
                        "kind": kind, "message": message, "ts_ms": e.ts_ms})
                ),
                OutputFormat::Text => {
                    let tag = match kind {
                        "started" => "…",
                        "waiting" => "waiting for",
                        "info" => "",
                        "warning" => "WARNING",
                        other => other,
                    };
                    if tag.is_empty() {
                        eprintln!("{node} {}: {message}", e.step);
                    } else {
                        eprintln!("{node} {}: {tag} {message}", e.step);
                    }
                }
            }
        }
    })
}
