//! Objects kept in the simulated etcd (JSON under `/registry/...`, resourceVersion =
//! the etcd revision of the write), plus the in-memory window of recent changes that
//! watches are served from (the apiserver's watch cache).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::etcd::EtcdError;
use crate::node::membership::EtcdHandle;

/// A Kubernetes API error, sent as a `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", m)
    }
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let mut e = Self::new(404, "NotFound", format!("{what} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "group": group, "kind": resource}));
        e
    }
    pub fn invalid(kind: &str, name: &str, m: impl Into<String>) -> Self {
        let m = m.into();
        let mut e = Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {m}"));
        e.details = Some(json!({"name": name, "kind": kind, "causes": [{"message": m}]}));
        e
    }
    pub fn conflict(resource: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
    }
    pub fn gone(m: impl Into<String>) -> Self {
        Self::new(410, "Expired", m)
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> Self {
        // What an apiserver answers while its etcd has no quorum.
        ApiError::new(503, "ServiceUnavailable", format!("etcdserver: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as the watch cache keeps it.
#[derive(Debug)]
pub(crate) struct Event {
    pub rev: i64,
    pub key: String,
    pub kind: EventType,
    /// The object before the change (for selector transitions).
    pub old: Option<Value>,
    /// The object after (for deletes: the last state, with the delete's revision).
    pub object: Value,
}

/// What watchers receive.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    Change(Arc<Event>),
    /// History was lost (etcd went back in time after a recovery): every watch ends
    /// with 410 so clients relist.
    Reset,
}

/// What a transaction does with the key.
pub(crate) enum Write {
    Put(Value),
    Delete,
    Keep,
}

struct Window {
    history: VecDeque<Arc<Event>>,
    /// Watches may start from any revision >= this one.
    oldest: i64,
    last_rev: i64,
    capacity: usize,
}

/// Objects (key, value), their revision, and the changes after it.
pub(crate) type ListAndWatch = (Vec<(String, Value)>, i64, broadcast::Receiver<Signal>);

pub(crate) struct Store {
    pub etcd: EtcdHandle,
    window: Mutex<Window>,
    tx: broadcast::Sender<Signal>,
}

pub(crate) fn rv_of(v: &Value) -> i64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(v: &mut Value, rev: i64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

impl Store {
    pub fn new(etcd: EtcdHandle) -> Store {
        let rev = etcd.revision().unwrap_or(0);
        let (tx, _) = broadcast::channel(4096);
        Store {
            etcd,
            window: Mutex::new(Window {
                history: VecDeque::new(),
                oldest: rev,
                last_rev: rev,
                capacity: 1000,
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notices etcd going backwards (a recovered snapshot) and drops the window.
    fn check_regression(&self, w: &mut Window, now: i64) {
        if now < w.last_rev {
            w.history.clear();
            w.oldest = now;
            w.last_rev = now;
            let _ = self.tx.send(Signal::Reset);
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Value>, ApiError> {
        Ok(self
            .etcd
            .get(key)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every object under a prefix, and the revision the list is consistent at.
    pub fn list(&self, prefix: &str) -> Result<(Vec<(String, Value)>, i64), ApiError> {
        let mut w = self.lock();
        let rev = self.etcd.revision()?;
        self.check_regression(&mut w, rev);
        let items = self
            .etcd
            .list(prefix)?
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|v| (k, v)))
            .collect();
        Ok((items, rev))
    }

    /// Atomic read-modify-write of one key. Returns (old, new): `new` is the stored
    /// object with its resourceVersion (for a delete: the old object at the delete's
    /// revision; for Keep: the current object).
    pub fn transact(
        &self,
        key: &str,
        f: impl FnOnce(Option<Value>) -> Result<Write, ApiError>,
    ) -> Result<(Option<Value>, Option<Value>), ApiError> {
        let mut w = self.lock();
        let now = self.etcd.revision()?;
        self.check_regression(&mut w, now);
        let old = self.get(key)?;
        let (kind, object, rev) = match f(old.clone())? {
            Write::Keep => return Ok((old.clone(), old)),
            Write::Delete => {
                let Some(mut obj) = old.clone() else {
                    return Ok((None, None));
                };
                self.etcd.delete(key)?;
                let rev = self.etcd.revision()?;
                set_rv(&mut obj, rev);
                (EventType::Deleted, obj, rev)
            }
            Write::Put(mut obj) => {
                // resourceVersion is the revision of this very write; anything else
                // writing etcd meanwhile (tests poking keys) just moves it on.
                let mut rev = self.etcd.revision()? + 1;
                loop {
                    set_rv(&mut obj, rev);
                    let bytes = serde_json::to_vec(&obj)
                        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
                    let got = self.etcd.put(key, bytes)?;
                    if got == rev {
                        break;
                    }
                    rev = got + 1;
                }
                let kind = if old.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, obj, rev)
            }
        };
        let ev = Arc::new(Event {
            rev,
            key: key.to_string(),
            kind,
            old: old.clone(),
            object: object.clone(),
        });
        w.history.push_back(ev.clone());
        w.last_rev = rev;
        while w.history.len() > w.capacity {
            if let Some(e) = w.history.pop_front() {
                w.oldest = e.rev;
            }
        }
        let _ = self.tx.send(Signal::Change(ev));
        Ok((old, Some(object)))
    }

    /// Starts a watch after `from`: the retained events newer than it plus a live
    /// receiver, taken under one lock so nothing falls in between. 410 when `from`
    /// is older than the window.
    pub fn watch_from(
        &self,
        from: i64,
    ) -> Result<(Vec<Arc<Event>>, broadcast::Receiver<Signal>), ApiError> {
        let mut w = self.lock();
        let now = self.etcd.revision()?;
        self.check_regression(&mut w, now);
        if from < w.oldest {
            return Err(ApiError::gone(format!(
                "too old resource version: {from} ({})",
                w.oldest
            )));
        }
        let past = w.history.iter().filter(|e| e.rev > from).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// A consistent list plus a receiver for what follows it.
    pub fn list_and_watch(&self, prefix: &str) -> Result<ListAndWatch, ApiError> {
        let w = self.lock();
        let rx = self.tx.subscribe();
        let rev = self.etcd.revision()?;
        let items = self
            .etcd
            .list(prefix)?
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|v| (k, v)))
            .collect();
        drop(w);
        Ok((items, rev, rx))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }

    /// Forgets all history (etcd compaction): older watches get 410.
    pub fn compact(&self) {
        let mut w = self.lock();
        w.history.clear();
        w.oldest = self.etcd.revision().unwrap_or(w.last_rev);
    }

    pub fn set_capacity(&self, n: usize) {
        self.lock().capacity = n.max(1);
    }
}
