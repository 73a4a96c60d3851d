//! Drift: what each node runs against what the definition renders for it, per
//! document, secrets redacted, with Talos's own dry-run verdict. Read-only:
//! `diff` prints it, `status` prints its one-line verdict, `apply` plans from it.
//!
//! Per node: the `MachineConfigs` resources `v1alpha1` (what the OS runs) and
//! `persistent` (what the next boot loads; ahead after a STAGED apply), read
//! over admin mTLS straight from the node; both and the rendered config split
//! into documents and normalised through one serializer; a dry run in AUTO
//! (and, when Talos says REBOOT, in NO_REBOOT for its reason).

pub mod docs;
pub mod redact;
pub mod verdict;

use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use tonic::Code;

use crate::engine::{Cluster, FlowError, NodeDef};
use crate::talos::{ApplyMode, CallPolicy, TalosClient, TalosError};
use endsys_core::textdiff;

pub use docs::DocKey;
pub use redact::Redactor;
pub use verdict::Verdict;

const MACHINE_CONFIGS: &str = "MachineConfigs.config.talos.dev";

/// One document of one node.
#[derive(Debug, Clone)]
pub struct DocDrift {
    pub key: DocKey,
    /// `same`, `changed`, `added` (rendered only) or `removed` (running only).
    pub status: &'static str,
    /// Unified diff running → rendered, redacted; empty when the same.
    pub diff: String,
    /// Changed field paths (v1alpha1), or the document's label.
    pub fields: Vec<String>,
}

/// One node's drift.
#[derive(Debug, Clone)]
pub struct NodeDrift {
    pub hostname: String,
    pub label: String,
    pub version: String,
    pub verdict: Verdict,
    /// Talos's resolved AUTO mode (`NO_REBOOT`, `REBOOT`).
    pub talos_mode: Option<String>,
    /// Talos's reason for a reboot (its NO_REBOOT refusal), redacted.
    pub talos_reason: Option<String>,
    pub docs: Vec<DocDrift>,
    /// Every changed path, all documents (what `--mode no-reboot` names).
    pub fields: Vec<String>,
}

/// Reads a MachineConfig resource's config bytes (`yaml_spec` is a YAML string
/// scalar holding them).
pub async fn machine_config(c: &TalosClient, id: &str) -> Result<Vec<u8>, TalosError> {
    let r = c.get("config", MACHINE_CONFIGS, id).await?;
    Ok(match serde_yaml_ng::from_str::<String>(&r.yaml_spec) {
        Ok(s) => s.into_bytes(),
        Err(_) => r.yaml_spec.into_bytes(),
    })
}

fn split(raw: &[u8], what: &str) -> Result<Vec<docs::Doc>, FlowError> {
    docs::split(raw, what).map_err(FlowError::Source)
}

/// The drift of one node.
pub async fn survey_node(
    cluster: &Cluster,
    n: &NodeDef,
    policy: CallPolicy,
) -> Result<NodeDrift, FlowError> {
    let rendered_raw = cluster.config_of(n)?;
    let c = cluster.mtls(n, policy)?;
    let running_raw = machine_config(&c, "v1alpha1").await?;
    let persistent_raw = machine_config(&c, "persistent").await?;
    let version = c.version().await?.tag;
    let minor = verdict::minor_of(&version).unwrap_or(13);

    let rendered = split(rendered_raw, &format!("{} rendered config", n.hostname))?;
    let running = split(
        &running_raw,
        &format!("{} MachineConfigs/v1alpha1", n.hostname),
    )?;
    let persistent = split(
        &persistent_raw,
        &format!("{} MachineConfigs/persistent", n.hostname),
    )?;
    let same_set = |a: &[docs::Doc], b: &[docs::Doc]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.key == y.key && x.value == y.value)
    };

    let mut redactor = Redactor::default();
    let redacted = |docs: &[docs::Doc], r: &mut Redactor| -> Vec<(DocKey, Value, Value)> {
        docs.iter()
            .map(|d| {
                let mut v = d.value.clone();
                r.redact(&mut v);
                (d.key.clone(), d.value.clone(), v)
            })
            .collect()
    };
    let run_r = redacted(&running, &mut redactor);
    let ren_r = redacted(&rendered, &mut redactor);
    let _ = redacted(&persistent, &mut redactor);

    let keys: BTreeSet<DocKey> = run_r
        .iter()
        .map(|d| d.0.clone())
        .chain(ren_r.iter().map(|d| d.0.clone()))
        .collect();
    let mut out_docs = Vec::new();
    let mut fields = Vec::new();
    for key in keys {
        let a = run_r.iter().find(|d| d.0 == key);
        let b = ren_r.iter().find(|d| d.0 == key);
        let status = match (a, b) {
            (Some(a), Some(b)) if a.1 == b.1 => "same",
            (Some(_), Some(_)) => "changed",
            (None, _) => "added",
            (_, None) => "removed",
        };
        let doc_fields = if status == "same" {
            Vec::new()
        } else if key.is_v1alpha1() {
            docs::changed_paths(a.map(|d| &d.1), b.map(|d| &d.1))
        } else {
            vec![key.label()]
        };
        let text =
            |d: Option<&(DocKey, Value, Value)>| d.map(|d| docs::emit(&d.2)).unwrap_or_default();
        let diff = textdiff::unified(
            &text(a),
            &text(b),
            &format!("{} running {}", n.hostname, key.label()),
            &format!("{} rendered {}", n.hostname, key.label()),
        );
        fields.extend(doc_fields.iter().cloned());
        out_docs.push(DocDrift {
            key,
            status,
            diff,
            fields: doc_fields,
        });
    }

    let mut drift = NodeDrift {
        hostname: n.hostname.clone(),
        label: n.label(),
        version,
        verdict: Verdict::Unchanged,
        talos_mode: None,
        talos_reason: None,
        docs: out_docs,
        fields: fields.clone(),
    };
    let staged = !same_set(&running, &persistent);
    if staged && same_set(&rendered, &persistent) {
        drift.verdict = Verdict::StagedPending;
        return Ok(drift);
    }
    // Talos's own verdict (validation included: a selector matching no disk
    // is refused here, dry run or not).
    match c
        .apply_configuration(rendered_raw, ApplyMode::Auto, true)
        .await
    {
        Ok(d) => drift.talos_mode = d.mode,
        Err(e) if e.code() == Some(Code::InvalidArgument) => {
            drift.verdict = Verdict::Refused {
                message: redactor.text(&root_message(&e)),
            };
            return Ok(drift);
        }
        Err(e) => return Err(e.into()),
    }
    if drift.talos_mode.as_deref() == Some("REBOOT") {
        if let Err(e) = c
            .apply_configuration(rendered_raw, ApplyMode::NoReboot, true)
            .await
        {
            if e.code() == Some(Code::InvalidArgument) {
                drift.talos_reason = Some(redactor.text(&root_message(&e)));
            }
        }
    }
    drift.verdict = verdict::classify(&fields, drift.talos_mode.as_deref(), minor);
    Ok(drift)
}

/// The node's own message of a refused call.
fn root_message(e: &TalosError) -> String {
    match e.root() {
        TalosError::Rpc { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
