//! The HTTPS front of the simulated API: TLS with client certificates from the
//! cluster CA, routing, and the REST verbs over the etcd-backed store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use endsys_core::pki::{CertAndKey, CertificateAuthority};

use super::discovery;
use super::fields;
use super::select::{self, Selector};
use super::store::{rv_of, ApiError, EventType, Signal, Store, Write};
use super::types::{self, ResType};
use super::Shared;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 3 * 1024 * 1024;

/// Who is calling, from the client certificate.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// One running API server instance.
pub(crate) struct Api {
    pub store: Store,
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Wakes the simulated controllers (fault injected, ...).
    pub sim_wake: Arc<tokio::sync::Notify>,
}

pub(crate) fn unix_now() -> i64 {
    endsys_core::clock::now_secs()
}

/// RFC 3339 UTC with second precision, as metav1.Time.
pub(crate) fn now() -> String {
    endsys_core::clock::rfc3339_secs(unix_now())
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn bytes_response(code: u16, ct: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (select::percent_decode(k), select::percent_decode(v))
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

/// What a resource path names.
struct Target {
    ty: ResType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Api {
    /// Built-in types plus every established CRD's served versions.
    pub fn types(&self) -> Vec<ResType> {
        let mut all = types::builtins();
        if let Ok((crds, _)) = self
            .store
            .list("/registry/apiextensions.k8s.io/customresourcedefinitions/")
        {
            for (_, crd) in crds {
                if types::crd_established(&crd) {
                    all.extend(types::crd_types(&crd));
                }
            }
        }
        all
    }

    pub fn type_by_kind(&self, kind: &str) -> Option<ResType> {
        self.types()
            .into_iter()
            .find(|t| t.kind == kind || t.plural == kind)
    }

    pub async fn handle(self: Arc<Self>, who: Identity, req: Request<Incoming>) -> Response<Body> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let q = query_map(parts.uri.query());
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error_response(&ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "request body too large",
                ))
            }
        };
        match segs.as_slice() {
            ["version"] => return json_response(200, &discovery::version()),
            ["healthz"] | ["livez"] | ["readyz"] => {
                return bytes_response(200, "text/plain", b"ok".to_vec())
            }
            _ => {}
        }
        if parts.method == Method::GET {
            if let Some(r) = discovery::serve(&self, &segs, &accept) {
                return r;
            }
        }
        let target = match self.target(&segs) {
            Ok(t) => t,
            Err(e) => return error_response(&e),
        };
        if !who.is_admin() {
            return error_response(&forbidden(&who, &parts.method, &q, &target));
        }
        match self
            .resource(parts.method, &parts.headers, &q, &accept, target, body)
            .await
        {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    fn target(&self, segs: &[&str]) -> Result<Target, ApiError> {
        let not_found = || {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        };
        let (group, version, rest) = match segs {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return Err(not_found()),
        };
        let (ns, plural, name, sub) = match rest {
            ["namespaces", ns, p, more @ ..]
                if !(group.is_empty()
                    && matches!(*p, "status" | "finalize")
                    && more.is_empty()) =>
            {
                (Some(ns.to_string()), *p, more.first(), more.get(1))
            }
            [p, more @ ..] => (None, *p, more.first(), more.get(1)),
            [] => return Err(not_found()),
        };
        if rest.len() > 5 {
            return Err(not_found());
        }
        let ty = self
            .types()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .ok_or_else(not_found)?;
        if ns.is_some() && !ty.namespaced {
            return Err(not_found());
        }
        if !ty.namespaced && ns.is_none() && name.is_none() && sub.is_some() {
            return Err(not_found());
        }
        if ty.namespaced && ns.is_none() && name.is_some() {
            return Err(not_found());
        }
        let sub = sub.map(|s| s.to_string());
        if let Some(s) = &sub {
            // pods/eviction: the Eviction API drains use.
            let eviction = s == "eviction" && ty.kind == "Pod" && ty.group.is_empty();
            if !(eviction || (s == "status" && ty.status)) {
                return Err(not_found());
            }
        }
        Ok(Target {
            ty,
            ns,
            name: name.map(|s| s.to_string()),
            sub,
        })
    }

    async fn resource(
        self: &Arc<Self>,
        method: Method,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
        accept: &str,
        t: Target,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
            // Kubernetes derives the default manager from the user agent.
            headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.split('/').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string()
        });
        if manager.len() > 128 {
            return Err(ApiError::bad_request(
                "fieldManager: Too long: may not be more than 128 bytes",
            ));
        }
        let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
        let ctype = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let table = accept.contains("as=Table");
        match (method, &t.name) {
            (Method::GET, Some(name)) => {
                let key = t.ty.key(t.ns.as_deref(), name);
                let obj = self
                    .store
                    .get(&key)?
                    .ok_or_else(|| ApiError::not_found(&t.ty.plural, &t.ty.group, name))?;
                let obj = versioned(obj, &t.ty);
                if table {
                    return Ok(json_response(
                        200,
                        &discovery::table(&t.ty, std::slice::from_ref(&obj), rv_of(&obj), q),
                    ));
                }
                Ok(json_response(200, &obj))
            }
            (Method::GET, None) if truthy(q, "watch") => self.watch(&t, q),
            (Method::GET, None) => {
                let sel = Selector::from_query(q)?;
                let (items, rev) = self.store.list(&t.ty.list_prefix(t.ns.as_deref()))?;
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|(_, v)| versioned(v, &t.ty))
                    .filter(|v| sel.matches(v))
                    .collect();
                if table {
                    return Ok(json_response(200, &discovery::table(&t.ty, &items, rev, q)));
                }
                Ok(json_response(
                    200,
                    &json!({
                        "kind": format!("{}List", t.ty.kind),
                        "apiVersion": t.ty.api_version(),
                        "metadata": {"resourceVersion": rev.to_string()},
                        "items": items,
                    }),
                ))
            }
            (Method::POST, Some(name)) if t.sub.as_deref() == Some("eviction") => {
                // No PodDisruptionBudgets in the lab: an eviction always deletes.
                self.delete(&t.ty, t.ns.as_deref(), name, dry_run)?;
                Ok(json_response(
                    201,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            (Method::POST, None) => {
                let obj = parse_body(&body, &ctype)?;
                let out = self.create(&t, obj, &manager, dry_run)?;
                Ok(json_response(201, &out))
            }
            (Method::PUT, Some(name)) => {
                let obj = parse_body(&body, &ctype)?;
                let out = self.replace(&t, name, obj, &manager, dry_run)?;
                Ok(json_response(200, &out))
            }
            (Method::PATCH, Some(name)) => {
                let (code, out) = self.patch(&t, name, &body, &ctype, &manager, q, dry_run)?;
                Ok(json_response(code, &out))
            }
            (Method::DELETE, Some(name)) => {
                let out = self.delete(&t.ty, t.ns.as_deref(), name, dry_run)?;
                Ok(json_response(200, &out))
            }
            (Method::DELETE, None) => {
                let sel = Selector::from_query(q)?;
                let (items, rev) = self.store.list(&t.ty.list_prefix(t.ns.as_deref()))?;
                let mut gone = Vec::new();
                for (_, v) in items.into_iter().filter(|(_, v)| sel.matches(v)) {
                    let name = name_of(&v).to_string();
                    let ns = v
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    gone.push(self.delete(&t.ty, ns.as_deref(), &name, dry_run)?);
                }
                Ok(json_response(
                    200,
                    &json!({"kind": format!("{}List", t.ty.kind), "apiVersion": t.ty.api_version(),
                        "metadata": {"resourceVersion": rev.to_string()}, "items": gone}),
                ))
            }
            (m, _) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource: {m}"),
            )),
        }
    }

    /// Checks type, name and namespace of a body against the URL and fills them in.
    fn check_identity(
        &self,
        t: &Target,
        obj: &mut Value,
        url_name: Option<&str>,
    ) -> Result<String, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body must be a JSON or YAML object",
            ));
        }
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let same_group = |av: &str| {
            let g = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            g == t.ty.group
        };
        if (!kind.is_empty() && kind != t.ty.kind) || (!av.is_empty() && !same_group(av)) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) and kind ({kind}) do not match the resource {}/{}",
                t.ty.api_version(),
                t.ty.plural
            )));
        }
        obj["apiVersion"] = json!(t.ty.api_version());
        obj["kind"] = json!(t.ty.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let mut name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(n) = url_name {
                name = n.to_string();
            } else if let Some(g) = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
                name = format!("{g}{suffix}");
            }
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                &t.ty.kind,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if let Some(u) = url_name {
            if u != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({u})"
                )));
            }
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(&t.ty.kind, &name, format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
        }
        obj["metadata"]["name"] = json!(name);
        if t.ty.namespaced {
            let body_ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = t.ns.as_deref().unwrap_or("");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("namespace");
        }
        if let Some(mf) = obj.pointer("/metadata/managedFields") {
            if mf.as_array().is_some_and(|a| !a.is_empty()) && mf.is_array() {
                // Clients may only send managedFields on update to reset them; an
                // apply body must not carry them (checked in patch).
            }
        }
        Ok(name)
    }

    fn namespace_exists(&self, ns: Option<&str>) -> Result<(), ApiError> {
        let Some(ns) = ns else { return Ok(()) };
        if self
            .store
            .get(&format!("/registry/core/namespaces/{ns}"))?
            .is_none()
        {
            return Err(ApiError::not_found("namespaces", "", ns));
        }
        Ok(())
    }

    /// Server-set metadata for a new object.
    fn init_new(&self, t: &Target, obj: &mut Value) {
        let md = &mut obj["metadata"];
        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
        md["creationTimestamp"] = json!(now());
        if let Some(m) = md.as_object_mut() {
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
        }
        if t.ty.status && t.ty.kind != "Namespace" && t.ty.kind != "Node" {
            md["generation"] = json!(1);
        }
        if t.ty.status && t.ty.kind != "Node" {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if t.ty.kind == "Namespace" {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                obj["metadata"]["name"].clone();
        }
    }

    fn create(
        &self,
        t: &Target,
        mut obj: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = self.check_identity(t, &mut obj, None)?;
        self.namespace_exists(t.ns.as_deref())?;
        self.init_new(t, &mut obj);
        fields::record_update(
            &json!({}),
            &mut obj,
            manager,
            &t.ty.api_version(),
            None,
            &now(),
        );
        let key = t.ty.key(t.ns.as_deref(), &name);
        if dry_run {
            return Ok(obj);
        }
        let ty = &t.ty;
        let (_, new) = self.store.transact(&key, |old| {
            if old.is_some() {
                let mut e = ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", qualified(ty)),
                );
                e.details = Some(json!({"name": name, "group": ty.group, "kind": ty.plural}));
                return Err(e);
            }
            Ok(Write::Put(obj))
        })?;
        Ok(new.unwrap_or_default())
    }

    fn replace(
        &self,
        t: &Target,
        name: &str,
        mut obj: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.check_identity(t, &mut obj, Some(name))?;
        let key = t.ty.key(t.ns.as_deref(), name);
        let sub = t.sub.clone();
        let ty = t.ty.clone();
        let want_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut preview = None;
        let (_, new) = self.store.transact(&key, |old| {
            let Some(old) = old else {
                return Err(ApiError::not_found(&ty.plural, &ty.group, name));
            };
            if let Some(rv) = &want_rv {
                if *rv != rv_of(&old).to_string() {
                    return Err(ApiError::conflict(&ty.plural, &ty.group, name));
                }
            }
            let mut new = if sub.is_some() {
                let mut n = old.clone();
                n["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                n
            } else {
                let mut n = obj;
                keep_server_fields(&ty, &old, &mut n);
                n
            };
            fields::record_update(
                &old,
                &mut new,
                manager,
                &ty.api_version(),
                sub.as_deref(),
                &now(),
            );
            bump_generation(&ty, &old, &mut new);
            if dry_run {
                preview = Some(new);
                return Ok(Write::Keep);
            }
            Ok(if new == old {
                Write::Keep
            } else {
                Write::Put(new)
            })
        })?;
        Ok(preview
            .or(new)
            .map(|v| versioned(v, &t.ty))
            .unwrap_or_default())
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &self,
        t: &Target,
        name: &str,
        body: &[u8],
        ctype: &str,
        manager: &str,
        q: &HashMap<String, String>,
        dry_run: bool,
    ) -> Result<(u16, Value), ApiError> {
        let key = t.ty.key(t.ns.as_deref(), name);
        let ty = t.ty.clone();
        let sub = t.sub.clone();
        let force = truthy(q, "force");
        let apply =
            ctype == "application/apply-patch+yaml" || ctype == "application/apply-patch+cbor";
        if force && !apply {
            return Err(ApiError::bad_request(
                "force: Invalid value: true: may not be specified for non-apply patch",
            ));
        }
        if apply && !q.contains_key("fieldManager") {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let patch: Value = if apply {
            parse_body(body, "application/yaml")?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        let mut config = patch.clone();
        if apply {
            self.check_identity(t, &mut config, Some(name))?;
            if config
                .pointer("/metadata/managedFields")
                .is_some_and(|m| !m.is_null())
            {
                return Err(ApiError::bad_request("metadata.managedFields must be nil"));
            }
            strip_for(&ty, sub.as_deref(), &mut config);
        }
        let existing = self.store.get(&key)?;
        if existing.is_none() {
            if !apply {
                return Err(ApiError::not_found(&ty.plural, &ty.group, name));
            }
            self.namespace_exists(t.ns.as_deref())?;
        }
        let mut created = false;
        let mut preview = None;
        let (_, new) = self.store.transact(&key, |old| {
            let now = now();
            let mut new = match (&old, apply) {
                (None, true) => {
                    if sub.is_some() {
                        return Err(ApiError::not_found(&ty.plural, &ty.group, name));
                    }
                    created = true;
                    let mut base = json!({"apiVersion": ty.api_version(), "kind": ty.kind, "metadata": {"name": name}});
                    if let Some(ns) = &t.ns {
                        base["metadata"]["namespace"] = json!(ns);
                    }
                    let target = Target { ty: ty.clone(), ns: t.ns.clone(), name: None, sub: None };
                    self.init_new(&target, &mut base);
                    let mut merged = fields::apply(Some(&base), &config, manager, &ty.api_version(), None, force, &now)
                        .map_err(|c| conflict_error(&c, name, &ty))?;
                    // Status given at create is dropped for kinds with a status subresource.
                    if ty.status && ty.kind != "Namespace" {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                    merged
                }
                (None, false) => return Err(ApiError::not_found(&ty.plural, &ty.group, name)),
                (Some(old), true) => {
                    let mut merged = fields::apply(Some(old), &config, manager, &ty.api_version(), sub.as_deref(), force, &now)
                        .map_err(|c| conflict_error(&c, name, &ty))?;
                    keep_server_fields_for(&ty, sub.as_deref(), old, &mut merged);
                    merged
                }
                (Some(old), false) => {
                    let mut patched = old.clone();
                    match ctype {
                        "application/json-patch+json" => {
                            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                            json_patch::patch(&mut patched, &p).map_err(|e| {
                                ApiError::invalid(&ty.kind, name, format!("the server rejected our request due to an error in our request: {e}"))
                            })?;
                        }
                        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                            // Strategic merge is treated as a JSON merge patch: lists
                            // are replaced wholesale (documented simplification).
                            json_patch::merge(&mut patched, &patch);
                        }
                        other => {
                            return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({other})")));
                        }
                    }
                    if !patched.is_object() {
                        return Err(ApiError::bad_request("the patch did not produce an object"));
                    }
                    keep_server_fields_for(&ty, sub.as_deref(), old, &mut patched);
                    fields::record_update(old, &mut patched, manager, &ty.api_version(), sub.as_deref(), &now);
                    patched
                }
            };
            if let Some(old) = &old {
                bump_generation(&ty, old, &mut new);
            }
            if dry_run {
                preview = Some(new);
                return Ok(Write::Keep);
            }
            if old.as_ref() == Some(&new) {
                return Ok(Write::Keep);
            }
            Ok(Write::Put(new))
        })?;
        let out = preview
            .or(new)
            .map(|v| versioned(v, &ty))
            .unwrap_or_default();
        Ok((if created { 201 } else { 200 }, out))
    }

    pub(crate) fn delete(
        &self,
        ty: &ResType,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = ty.key(ns, name);
        if dry_run {
            return self
                .store
                .get(&key)?
                .ok_or_else(|| ApiError::not_found(&ty.plural, &ty.group, name));
        }
        // Contents go with their namespace, and custom objects with their CRD.
        if ty.kind == "Namespace" {
            for other in self.types() {
                if other.namespaced {
                    let (items, _) = self.store.list(&other.list_prefix(Some(name)))?;
                    for (k, _) in items {
                        self.store.transact(&k, |_| Ok(Write::Delete))?;
                    }
                }
            }
        }
        if ty.kind == "CustomResourceDefinition" {
            if let Some(crd) = self.store.get(&key)? {
                if let Some(t) = types::crd_types(&crd).first() {
                    let (items, _) = self.store.list(&t.prefix())?;
                    for (k, _) in items {
                        self.store.transact(&k, |_| Ok(Write::Delete))?;
                    }
                }
            }
        }
        let (old, _) = self.store.transact(&key, |_| Ok(Write::Delete))?;
        let Some(old) = old else {
            return Err(ApiError::not_found(&ty.plural, &ty.group, name));
        };
        Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": ty.group, "kind": ty.plural,
                "uid": old.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)},
        }))
    }

    fn watch(
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

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A chunked JSON stream: fixed lines, or lines from a producer task.
fn stream_response(
    lines: Vec<Bytes>,
    live: Option<(mpsc::Receiver<Bytes>, Task)>,
) -> Response<Body> {
    let body: Body = match live {
        None => {
            let s = futures::stream::iter(lines.into_iter().map(|b| Ok(Frame::data(b))));
            StreamBody::new(s).boxed_unsync()
        }
        Some((rx, task)) => {
            tokio::spawn(task);
            let s = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
            StreamBody::new(s).boxed_unsync()
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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
fn event_json(
    ev: &super::store::Event,
    prefix: &str,
    sel: &Selector,
    ty: &ResType,
) -> Option<Value> {
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

fn conflict_error(cs: &[fields::Conflict], name: &str, ty: &ResType) -> ApiError {
    let lines: Vec<String> = cs
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                fields::dotted(&c.path)
            )
        })
        .collect();
    let n = cs.len();
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            lines.join("\n")
        ),
    );
    e.details = Some(json!({
        "name": name, "group": ty.group, "kind": ty.plural,
        "causes": cs.iter().map(|c| json!({
            "type": "FieldManagerConflict",
            "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
            "field": fields::dotted(&c.path),
        })).collect::<Vec<_>>(),
    }));
    e
}

/// Drops what a request may not set: status through the main resource (when there
/// is a status subresource), everything but status through `/status`.
fn strip_for(ty: &ResType, sub: Option<&str>, config: &mut Value) {
    let Some(m) = config.as_object_mut() else {
        return;
    };
    if sub == Some("status") {
        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            md.retain(|k, _| k == "name" || k == "namespace");
        }
    } else if ty.status {
        m.remove("status");
    }
}

fn keep_server_fields_for(ty: &ResType, sub: Option<&str>, old: &Value, new: &mut Value) {
    if sub == Some("status") {
        let status = new.get("status").cloned();
        let mf = new.pointer("/metadata/managedFields").cloned();
        *new = old.clone();
        if let Some(s) = status {
            new["status"] = s;
        }
        if let Some(mf) = mf {
            new["metadata"]["managedFields"] = mf;
        }
    } else {
        keep_server_fields(ty, old, new);
    }
}

/// Identity and server-owned metadata survive client writes; so does `.status`
/// when only the status subresource may change it.
fn keep_server_fields(ty: &ResType, old: &Value, new: &mut Value) {
    for k in [
        "uid",
        "creationTimestamp",
        "generation",
        "name",
        "namespace",
    ] {
        match old.pointer(&format!("/metadata/{k}")) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(k);
                }
            }
        }
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();
    if ty.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
}

/// `metadata.generation` moves when anything but metadata and status changes.
fn bump_generation(ty: &ResType, old: &Value, new: &mut Value) {
    let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64) else {
        return;
    };
    let spec = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    };
    let _ = ty;
    new["metadata"]["generation"] = json!(if spec(old) != spec(new) { g + 1 } else { g });
}

/// Serves an object in the version asked for (one stored copy for all versions).
fn versioned(mut v: Value, ty: &ResType) -> Value {
    v["apiVersion"] = json!(ty.api_version());
    v["kind"] = json!(ty.kind);
    v
}

fn qualified(ty: &ResType) -> String {
    if ty.group.is_empty() {
        ty.plural.clone()
    } else {
        format!("{}.{}", ty.plural, ty.group)
    }
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == ':'
        })
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// JSON, or YAML (a superset) for apply bodies and manifests.
fn parse_body(body: &[u8], ctype: &str) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    if ctype.contains("yaml") {
        let y: serde_yaml_ng::Value = serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        return serde_json::to_value(y)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")));
    }
    Err(ApiError::bad_request("the body is not valid JSON"))
}

fn forbidden(who: &Identity, method: &Method, q: &HashMap<String, String>, t: &Target) -> ApiError {
    let verb = match (method.as_str(), &t.name) {
        ("GET", None) if truthy(q, "watch") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", _) => "delete",
        _ => "unknown",
    };
    let scope = match &t.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let res = match &t.sub {
        Some(s) => format!("{}/{s}", t.ty.plural),
        None => t.ty.plural.clone(),
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} is forbidden: User \"{}\" cannot {verb} resource \"{res}\" in API group \"{}\" {scope}",
            match &t.name {
                Some(n) => format!("{} \"{n}\"", t.ty.plural),
                None => t.ty.plural.clone(),
            },
            who.user,
            t.ty.group
        ),
    );
    e.details = Some(
        json!({"name": t.name.clone().unwrap_or_default(), "group": t.ty.group, "kind": t.ty.plural}),
    );
    e
}

/// The user and groups of a verified client certificate (CN and O).
pub(crate) fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    Some(Identity { user, groups })
}

/// Writes done by the simulated controllers (kubelet, controller-manager).
impl Api {
    pub(crate) fn sim_write(
        &self,
        ty: &ResType,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Option<Value>, ApiError> {
        let key = ty.key(ns, name);
        let (_, new) = self.store.transact(&key, |old| {
            let Some(old) = old else {
                return Ok(Write::Keep);
            };
            let mut new = old.clone();
            f(&mut new);
            Ok(if new == old {
                Write::Keep
            } else {
                Write::Put(new)
            })
        })?;
        Ok(new)
    }

    /// Server-side applies `config` onto an existing object as a controller's
    /// field manager (conflicts forced, as Helm does under SSA). A missing
    /// object is left missing.
    pub(crate) fn sim_apply(
        &self,
        ty: &ResType,
        ns: Option<&str>,
        name: &str,
        config: &Value,
        manager: &str,
    ) -> Result<Option<Value>, ApiError> {
        let key = ty.key(ns, name);
        let now = now();
        let (_, new) = self.store.transact(&key, |old| {
            let Some(old) = old else {
                return Ok(Write::Keep);
            };
            let mut new = fields::apply(
                Some(&old),
                config,
                manager,
                &ty.api_version(),
                None,
                true,
                &now,
            )
            .map_err(|c| conflict_error(&c, name, ty))?;
            keep_server_fields(ty, &old, &mut new);
            bump_generation(ty, &old, &mut new);
            Ok(if new == old {
                Write::Keep
            } else {
                Write::Put(new)
            })
        })?;
        Ok(new)
    }

    /// Creates an object as a controller would (existing objects are left alone).
    pub(crate) fn sim_create(&self, ty: &ResType, obj: Value) -> Result<(), ApiError> {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let t = Target {
            ty: ty.clone(),
            ns,
            name: None,
            sub: None,
        };
        match self.create(&t, obj, "kubelet", false) {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A listening API server; [`Running::stop`] closes the listener and every
/// connection.
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Running {
    pub fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn add_task(&self, t: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }

    pub async fn stop(self) {
        let _ = self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send_replace(true);
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

fn tls_config(
    ca: &CertificateAuthority,
    leaf: &CertAndKey,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in endsys_core::pki::certs_from_pem(ca.pair.cert_pem.as_bytes(), "cluster.ca")
        .map_err(|e| e.to_string())?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| e.to_string())?;
    }
    // Client certificates are required and must chain to the cluster CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let cert = CertificateDer::from(leaf.cert_der().map_err(|e| e.to_string())?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    // HTTP/1.1 only: watches are chunked responses, which every client handles.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds the address (retrying briefly while a previous instance lets go of it)
/// and serves until stopped.
pub(crate) async fn serve(
    api: Arc<Api>,
    ca: &CertificateAuthority,
    leaf: &CertAndKey,
    mut lab_stop: watch::Receiver<bool>,
) -> Result<Running, String> {
    let cfg = tls_config(ca, leaf)?;
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(api.addr).await {
            Ok(l) => break l,
            Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot listen: {e}")),
        }
    };
    let (stop, _) = watch::channel(false);
    let running = Running {
        stop,
        tasks: std::sync::Mutex::new(Vec::new()),
    };
    let mut stop_rx = running.stop_rx();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop_rx.changed() => return,
                _ = lab_stop.changed() => return,
            };
            let acceptor = acceptor.clone();
            let api = api.clone();
            let mut conn_stop = stop_rx.clone();
            let mut conn_lab_stop = lab_stop.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(t)) => t,
                    _ => return,
                };
                let who = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| identity_of(c.as_ref()));
                let Some(who) = who else { return };
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    let who = who.clone();
                    async move { Ok::<_, Infallible>(api.handle(who, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = conn_stop.changed() => {}
                    _ = conn_lab_stop.changed() => {}
                }
            });
        }
    });
    running.add_task(accept);
    Ok(running)
}
