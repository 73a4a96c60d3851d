//! One line per machine event (the `Events` stream), for reports that show
//! what a node went through: sequences, phases, tasks, services, stages.

use prost::Message;

use crate::api::machine;

/// `SequenceEvent upgrade start`, `ServiceStateEvent etcd running: …`,
/// `MachineStatusEvent running ready`; an unknown type by its name.
pub fn event_line(ev: &machine::Event) -> String {
    let Some(data) = &ev.data else {
        return "event without data".into();
    };
    let kind = data.type_url.rsplit('.').next().unwrap_or(&data.type_url);
    let v = data.value.as_slice();
    let body = match kind {
        "SequenceEvent" => machine::SequenceEvent::decode(v).ok().map(|e| {
            let err = e
                .error
                .as_ref()
                .map(|x| format!(" error: {}", x.message))
                .unwrap_or_default();
            format!(
                "{} {}{err}",
                e.sequence,
                e.action().as_str_name().to_lowercase()
            )
        }),
        "PhaseEvent" => machine::PhaseEvent::decode(v)
            .ok()
            .map(|e| format!("{} {}", e.phase, e.action().as_str_name().to_lowercase())),
        "TaskEvent" => machine::TaskEvent::decode(v)
            .ok()
            .map(|e| format!("{} {}", e.task, e.action().as_str_name().to_lowercase())),
        "ServiceStateEvent" => machine::ServiceStateEvent::decode(v).ok().map(|e| {
            format!(
                "{} {}: {}",
                e.service,
                e.action().as_str_name().to_lowercase(),
                e.message
            )
        }),
        "MachineStatusEvent" => machine::MachineStatusEvent::decode(v).ok().map(|e| {
            let ready = e.status.as_ref().is_some_and(|s| s.ready);
            format!(
                "{}{}",
                e.stage().as_str_name().to_lowercase(),
                if ready { " ready" } else { "" }
            )
        }),
        _ => None,
    };
    match body {
        Some(b) => format!("{kind} {b}"),
        None => kind.to_string(),
    }
}
