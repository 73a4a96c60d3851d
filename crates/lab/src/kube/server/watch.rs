//! Watches as the apiserver serves them from its watch cache: initial events
//! (or events since a `resourceVersion`, `410 Gone` when it is too old), label
//! and field selectors with ADDED/DELETED on selector transitions, BOOKMARKs
//! (`allowWatchBookmarks`, the `initial-events-end` annotation), relist on a
//! lagging watcher, and `timeoutSeconds`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::http::{stream_response, truthy, Body};
use super::object::versioned;
use super::{Api, Target};
use crate::kube::select::Selector;
use crate::kube::store::{self, ApiError, EventType, Signal};
use crate::kube::types::ResType;

impl Api {
    pub(super) fn watch(
        self: &Arc<Self>,
        t: &Target,
        q: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let sel = Selector::from_query(q)?;
        let prefix = t.ty.list_prefix(t.ns.as_deref());
        let bookmarks = truthy(q, "allowWatchBookmarks");
        let initial_events = truthy(q, "sendInitialEvents");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let rv = q.get("resourceVersion").cloned().unwrap_or_default();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let line = |v: &Value| {
            let mut b = serde_json::to_vec(v).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        let ty = t.ty.clone();
        let bookmark = move |rev: i64, end: bool| {
            let mut md = json!({"resourceVersion": rev.to_string()});
            if end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": {"kind": ty.kind, "apiVersion": ty.api_version(), "metadata": md}})
        };
        let mut first: Vec<Bytes> = Vec::new();
        let (start_rev, live) = if initial_events || rv.is_empty() || rv == "0" {
            let (items, rev, live) = self.store.list_and_watch(&prefix)?;
            for (_, v) in items {
                let v = versioned(v, &t.ty);
                if sel.matches(&v) {
                    first.push(line(&json!({"type": "ADDED", "object": v})));
                }
            }
            if initial_events {
                first.push(line(&bookmark(rev, true)));
            }
            (rev, live)
        } else {
            let from: i64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
            match self.store.watch_from(from) {
                Ok((past, live)) => {
                    for ev in past {
                        if let Some(v) = event_json(&ev, &prefix, &sel, &t.ty) {
                            first.push(line(&v));
                        }
                    }
                    (from, live)
                }
                Err(e) if e.code == 410 => {
                    // The apiserver answers 200 and one ERROR event; clients relist.
                    let ev = json!({"type": "ERROR", "object": e.status()});
                    return Ok(stream_response(vec![line(&ev)], None));
                }
                Err(e) => return Err(e),
            }
        };
        let ty = t.ty.clone();
        let interval = self.shared.bookmark_interval();
        let task = async move {
            for b in first {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            let mut live = live;
            let mut last = start_rev;
            let deadline = tokio::time::Instant::now() + timeout;
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        drain(&mut live, &tx, &prefix, &sel, &ty, &mut last).await;
                        if bookmarks {
                            let _ = tx.send(line(&bookmark(last, false))).await;
                        }
                        return;
                    }
                    _ = tick.tick(), if bookmarks => {
                        if !drain(&mut live, &tx, &prefix, &sel, &ty, &mut last).await {
                            return;
                        }
                        if tx.send(line(&bookmark(last, false))).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    sig = live.recv() => {
                        if !forward(sig, &tx, &prefix, &sel, &ty, &mut last).await {
                            return;
                        }
                    }
                }
            }
        };
        Ok(stream_response(Vec::new(), Some((rx, Box::pin(task)))))
    }
}

/// Delivers one broadcast signal; false ends the watch.
async fn forward(
    sig: Result<Signal, broadcast::error::RecvError>,
    tx: &mpsc::Sender<Bytes>,
    prefix: &str,
    sel: &Selector,
    ty: &ResType,
    last: &mut i64,
) -> bool {
    let line = |v: &Value| {
        let mut b = serde_json::to_vec(v).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    match sig {
        Ok(Signal::Change(ev)) => {
            *last = (*last).max(ev.rev);
            match event_json(&ev, prefix, sel, ty) {
                Some(v) => tx.send(line(&v)).await.is_ok(),
                None => true,
            }
        }
        Ok(Signal::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
            // History is gone for this watcher: tell it to relist.
            let e = ApiError::gone("the resource version is no longer available; relist");
            let _ = tx
                .send(line(&json!({"type": "ERROR", "object": e.status()})))
                .await;
            false
        }
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

/// Delivers whatever is already queued, so a bookmark never claims a revision
/// ahead of undelivered events.
async fn drain(
    live: &mut broadcast::Receiver<Signal>,
    tx: &mpsc::Sender<Bytes>,
    prefix: &str,
    sel: &Selector,
    ty: &ResType,
    last: &mut i64,
) -> bool {
    loop {
        match live.try_recv() {
            Ok(sig) => {
                if !forward(Ok(sig), tx, prefix, sel, ty, last).await {
                    return false;
                }
            }
            Err(broadcast::error::TryRecvError::Empty) => return true,
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                return forward(
                    Err(broadcast::error::RecvError::Lagged(n)),
                    tx,
                    prefix,
                    sel,
                    ty,
                    last,
                )
                .await
            }
            Err(broadcast::error::TryRecvError::Closed) => return false,
        }
    }
}

/// The watch event a change means for one watcher (selector transitions turn into
/// ADDED/DELETED as in Kubernetes), or None.
fn event_json(ev: &store::Event, prefix: &str, sel: &Selector, ty: &ResType) -> Option<Value> {
    if !ev.key.starts_with(prefix) {
        return None;
    }
    let now = sel.matches(&ev.object);
    let before = ev.old.as_ref().is_some_and(|o| sel.matches(o));
    let kind = match ev.kind {
        EventType::Deleted if before || now => "DELETED",
        EventType::Deleted => return None,
        _ if now && before => EventType::Modified.as_str(),
        _ if now => "ADDED",
        _ if before => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": versioned(ev.object.clone(), ty)}))
}
