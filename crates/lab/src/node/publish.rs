//! What observers of a node see, published on every change ([`NodeInner::commit`]):
//! `MachineStatusEvent`s when stage, readiness or unmet conditions change (as
//! machined reports them), the recomputed COSI table behind Get/List/Watch, the
//! queued machine events flushed to the Events log and stream, and a wake-up for
//! watchers and the lab's change counter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::data::{any, stage_of, EventRec, NodeState, ResRec};
use super::resources;
use super::NodeInner;
use endsys_talos::api::machine;

impl NodeInner {
    /// Recomputes the COSI table, emits MachineStatus events on change, flushes
    /// queued events, and wakes watchers.
    pub(crate) fn commit(&self) {
        let state = self.state();
        let flushed;
        {
            let mut d = self.data.lock().expect("data lock");
            // Readiness: control planes also wait for etcd.
            let is_cp = d
                .config
                .as_ref()
                .is_some_and(|c| c.machine_type.is_control_plane());
            let mut unmet = d.unmet.clone();
            if matches!(state, NodeState::Booting | NodeState::Running) {
                let mut waiting: Vec<String> = d
                    .services
                    .iter()
                    .filter(|(id, s)| s.state != "Running" && (id.as_str() != "etcd" || is_cp))
                    .map(|(id, _)| format!("{id:?}"))
                    .collect();
                waiting.sort();
                if !waiting.is_empty() {
                    unmet.push((
                        "services".into(),
                        format!("service {} to be \"up\"", waiting.join(", ")),
                    ));
                }
            }
            let ready = state == NodeState::Running && unmet.is_empty();
            let status_now = (state, ready, unmet.clone());
            if d.last_status.as_ref() != Some(&status_now) {
                d.last_status = Some(status_now);
                let ev = machine::MachineStatusEvent {
                    stage: stage_of(state) as i32,
                    status: Some(machine::machine_status_event::MachineStatus {
                        ready,
                        unmet_conditions: unmet
                            .iter()
                            .map(|(n, r)| {
                                machine::machine_status_event::machine_status::UnmetCondition {
                                    name: n.clone(),
                                    reason: r.clone(),
                                }
                            })
                            .collect(),
                    }),
                };
                d.queue_event(any("MachineStatusEvent", &ev), "");
            }
            let fresh = resources::compute(self, &d, state, ready, &unmet);
            let now = SystemTime::now();
            let mut table = std::mem::take(&mut d.resources);
            table.retain(|k, _| {
                fresh
                    .iter()
                    .any(|r| (&r.0, &r.1, &r.2) == (&k.0, &k.1, &k.2))
            });
            for (ns, ty, id, yaml) in fresh {
                let key = (ns.clone(), ty.clone(), id.clone());
                match table.get_mut(&key) {
                    Some(rec) if rec.yaml == yaml => {}
                    Some(rec) => {
                        rec.yaml = yaml;
                        rec.version += 1;
                        rec.updated = now;
                    }
                    None => {
                        table.insert(
                            key,
                            ResRec {
                                namespace: ns,
                                r#type: ty,
                                id,
                                yaml,
                                version: 1,
                                created: now,
                                updated: now,
                            },
                        );
                    }
                }
            }
            d.resources = table;
            flushed = std::mem::take(&mut d.pending_events);
        }
        for (payload, actor) in flushed {
            let seq = self.event_seq.fetch_add(1, Ordering::SeqCst) + 1;
            let rec = Arc::new(EventRec {
                seq,
                event: machine::Event {
                    metadata: None,
                    data: Some(payload),
                    id: format!("{seq:020}"),
                    actor_id: actor,
                },
            });
            {
                let mut log = self.events_log.lock().expect("events lock");
                log.push(rec.clone());
                if log.len() > 4096 {
                    log.drain(..1024);
                }
            }
            let _ = self.events_tx.send(rec);
        }
        self.res_tx.send_modify(|v| *v += 1);
        self.fabric.notify();
    }
}
