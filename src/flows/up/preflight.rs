//! `preflight`: before any node is touched, the Kubernetes half's inputs (helm,
//! helmfile), the definition, the secrets bundle (never regenerated under a
//! running cluster), each node's mode by TLS handshake, and the hardware gate
//! on maintenance nodes (every disk and link selector matches exactly one).

use futures::future::join_all;

use crate::engine::{classify, FlowError, NodeDef, NodeProbe, Outcome, PlanItem, StepId};

use super::hardware;
use super::kube::kube_preflight;
use super::state::Up;

const STEP: StepId = StepId::Preflight;

pub async fn run(cx: &mut Up<'_>) -> Result<Outcome, FlowError> {
    let em = cx.em;
    let opts = cx.opts;
    let source = cx.source;
    // The Kubernetes half's inputs first: a missing helm or a broken helmfile
    // must stop the run before any node is touched.
    if let Some(half) = &opts.kube {
        if opts.until >= StepId::KubeApi {
            kube_preflight(half, &mut cx.kube, em).await?;
        }
    }
    let def = cx.cluster.def.clone();
    em.progress(
        STEP,
        None,
        format!(
            "definition ok: cluster {}, {} node(s), {} control plane(s)",
            def.cluster,
            def.nodes.len(),
            def.control_planes().count()
        ),
    );
    let has_secrets = source.has_secrets()?;
    if has_secrets {
        cx.cluster.rendered = Some(source.render()?);
    } else {
        em.progress(
            STEP,
            None,
            format!("no secrets bundle at {}", source.secrets_location()),
        );
    }
    // A node may be rebooting into a config an earlier run applied; how long
    // that may take is what --node-timeout says, never more.
    let deadline = if cx.journal.get(|j| j.attempted(StepId::Apply)) {
        opts.reach_deadline.min(opts.node_deadline)
    } else {
        opts.probe_timeout
    };
    classify_all(cx, deadline, true).await;

    let labelled = |cx: &Up<'_>, pred: &dyn Fn(&NodeProbe) -> bool| -> Vec<String> {
        def.nodes
            .iter()
            .filter(|n| pred(&cx.class(n)))
            .map(NodeDef::label)
            .collect()
    };
    let mut problems = Vec::new();
    if !has_secrets {
        let configured = labelled(cx, &|c| matches!(c, NodeProbe::ConfiguredUnknown));
        if !configured.is_empty() && !opts.new_cluster {
            // Never regenerate secrets under a running cluster.
            return Err(FlowError::SecretsMissingClusterExists {
                path: source.secrets_location(),
                nodes: configured,
            });
        }
        em.progress(STEP, None, "generating a new secrets bundle");
        source.create_secrets()?;
        cx.cluster.rendered = Some(source.render()?);
        if !configured.is_empty() {
            problems.push(FlowError::ForeignCa { nodes: configured });
        }
    }
    let foreign = labelled(cx, &|c| matches!(c, NodeProbe::Foreign));
    if !foreign.is_empty() {
        problems.push(FlowError::ForeignCa { nodes: foreign });
    }
    let unreachable: Vec<(String, String)> = def
        .nodes
        .iter()
        .filter_map(|n| match cx.class(n) {
            NodeProbe::Unreachable(why) => Some((n.label(), why)),
            _ => None,
        })
        .collect();
    if !unreachable.is_empty() {
        problems.push(FlowError::Unreachable { nodes: unreachable });
    }

    // Hardware gate on maintenance nodes: every selector must match exactly one.
    let maint: Vec<&NodeDef> = def
        .nodes
        .iter()
        .filter(|n| cx.class(n) == NodeProbe::Maintenance)
        .collect();
    let cx_ref = &*cx;
    let checks = join_all(maint.iter().map(|n| async move {
        let c = cx_ref.insecure(n)?;
        let disks = c.disks().await?;
        let links = c.links().await?;
        Ok::<_, FlowError>((n, hardware::check_node(n, &disks, &links)))
    }))
    .await;
    for r in checks {
        match r {
            Ok((n, Ok(m))) => {
                if let Some(d) = m.install_disk {
                    em.progress(STEP, Some(&n.hostname), format!("install disk: {d}"));
                }
            }
            Ok((_, Err(mut errs))) => problems.append(&mut errs),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(FlowError::Preflight(problems));
    }
    // The talosconfig the operator uses with talosctl or `talos …`.
    let tc_path = opts.state_dir.join("talosconfig");
    if !tc_path.exists() {
        if let Some(r) = &cx.cluster.rendered {
            r.talosconfig.save(&tc_path)?;
        }
    }
    let n_maint = maint.len();
    Ok(Outcome::Done {
        detail: format!(
            "{} node(s): {n_maint} in maintenance, {} configured with our CA",
            def.nodes.len(),
            def.nodes.len() - n_maint
        ),
    })
}

/// Probes every node concurrently into `cx.classes` (waiting up to
/// `deadline` for the ones that do not answer yet).
async fn classify_all(cx: &mut Up<'_>, deadline: std::time::Duration, report: bool) {
    let em = cx.em;
    let probe_timeout = cx.opts.probe_timeout;
    let creds = cx.cluster.creds().ok().cloned();
    let classes = join_all(cx.cluster.def.nodes.iter().map(|n| {
        let creds = creds.clone();
        async move {
            let c = classify(em, STEP, n, creds.as_ref(), probe_timeout, deadline).await;
            if report {
                em.node_state(STEP, &n.hostname, c.describe());
            }
            (n.hostname.clone(), c)
        }
    }))
    .await;
    cx.classes = classes.into_iter().collect();
}

/// What preflight would find now: the secrets line, each node's mode, and the
/// hardware gate's refusals (apply's plan names the install disk).
pub async fn plan(cx: &mut Up<'_>) -> Vec<PlanItem> {
    let probe_timeout = cx.opts.probe_timeout;
    classify_all(cx, probe_timeout, false).await;
    let mut items = Vec::new();
    if !cx.had_secrets {
        items.push(PlanItem::new(
            STEP,
            true,
            format!(
                "generate a new secrets bundle at {}",
                cx.source.secrets_location()
            ),
        ));
    }
    let nodes: Vec<NodeDef> = cx.cluster.def.nodes.clone();
    for n in &nodes {
        let class = cx.class(n);
        items.push(PlanItem::on(STEP, n, false, class.describe()));
        if class != NodeProbe::Maintenance {
            continue;
        }
        let hw = match cx.insecure(n) {
            Ok(c) => match (c.disks().await, c.links().await) {
                (Ok(d), Ok(l)) => match hardware::check_node(n, &d, &l) {
                    Ok(m) => m
                        .install_disk
                        .map(|d| format!("; install disk {d}"))
                        .unwrap_or_default(),
                    Err(errs) => {
                        for e in errs {
                            items.push(PlanItem::on(STEP, n, false, format!("REFUSE: {e}")));
                        }
                        String::new()
                    }
                },
                (Err(e), _) | (_, Err(e)) => format!("; hardware unreadable: {e}"),
            },
            Err(e) => format!("; {e}"),
        };
        cx.hardware.insert(n.hostname.clone(), hw);
    }
    items
}
