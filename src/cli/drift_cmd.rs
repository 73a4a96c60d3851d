//! `diff [NODE…]`: rendered vs running config per node and document, secrets
//! redacted, with Talos's dry-run verdict; exit 0 nothing differs, 2 something
//! does, 1 on failure. The flow is [`crate::flows::drift`].

use clap::Args;

use super::day2::ClusterArgs;
use super::up::flow_error;
use super::{CliError, Output, OutputFormat};
use crate::engine::{Cluster, NodeDef};
use crate::flows::drift::{survey_node, NodeDrift};
use crate::talos::CallPolicy;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Nodes to compare (hostname or address); default: every node of the definition.
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The nodes named on the command line, or all of them.
pub(crate) fn select<'a>(
    cluster: &'a Cluster,
    names: &[String],
) -> Result<Vec<&'a NodeDef>, CliError> {
    if names.is_empty() {
        return Ok(cluster.def.nodes.iter().collect());
    }
    names
        .iter()
        .map(|n| cluster.node(n).map_err(flow_error))
        .collect()
}

/// Surveys `nodes` in parallel; failures keep their node.
pub(crate) async fn survey(
    cluster: &Cluster,
    nodes: &[&NodeDef],
) -> Vec<(String, Result<NodeDrift, String>)> {
    let policy = CallPolicy::default();
    let futs = nodes.iter().map(|n| async move {
        (
            n.label(),
            survey_node(cluster, n, policy)
                .await
                .map_err(|e| endsys_core::Doctor::explain(&e)),
        )
    });
    futures::future::join_all(futs).await
}

/// Prints one node's drift.
pub(crate) fn print_node(d: &NodeDrift, out: &Output, with_diff: bool) {
    match out.format {
        OutputFormat::Json => {
            for doc in &d.docs {
                println!(
                    "{}",
                    serde_json::json!({"event": "diff", "node": d.hostname, "document": doc.key.label(),
                        "api_version": doc.key.api_version, "kind": doc.key.kind, "name": doc.key.name,
                        "status": doc.status, "fields": doc.fields, "diff": doc.diff})
                );
            }
            println!(
                "{}",
                serde_json::json!({"event": "drift", "node": d.hostname, "version": d.version,
                    "verdict": d.verdict, "summary": d.verdict.describe(), "talos_mode": d.talos_mode,
                    "talos_reason": d.talos_reason, "fields": d.fields})
            );
        }
        OutputFormat::Text => {
            let talos = d
                .talos_mode
                .as_deref()
                .map(|m| format!(" [Talos dry run: {m}]"))
                .unwrap_or_default();
            println!(
                "{}: {}: {}{talos}",
                d.label,
                d.verdict.name(),
                d.verdict.describe()
            );
            if with_diff {
                for doc in d.docs.iter().filter(|doc| !doc.diff.is_empty()) {
                    print!("{}", doc.diff);
                }
                if let Some(reason) = &d.talos_reason {
                    println!("  Talos: {}", reason.replace('\n', "\n  "));
                }
            }
        }
    }
}

pub async fn diff(args: DiffArgs, out: &Output) -> Result<(), CliError> {
    let (cluster, _dir) = args.cluster.load()?;
    let nodes = select(&cluster, &args.nodes)?;
    let results = survey(&cluster, &nodes).await;
    let mut differ = 0;
    let mut failed = Vec::new();
    for (label, r) in &results {
        match r {
            Ok(d) => {
                print_node(d, out, true);
                if d.verdict.differs() {
                    differ += 1;
                }
            }
            Err(e) => failed.push(format!("{label}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(CliError::Failed(format!(
            "cannot compare {} node(s):\n{}",
            failed.len(),
            failed.join("\n")
        )));
    }
    if differ > 0 {
        return Err(CliError::Differs { nodes: differ });
    }
    Ok(())
}
