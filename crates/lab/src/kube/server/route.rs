//! Dispatch of one request: the health and version endpoints, discovery, the
//! resource a path names (group, version, namespace, plural, name, subresource,
//! as the apiserver's request info resolves it), the admin check, and the verb,
//! to the CRUD, patch and watch handlers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::{forbidden, Identity};
use super::discovery;
use super::http::{
    bytes_response, error_response, json_response, parse_body, query_map, truthy, Body, MAX_BODY,
};
use super::object::{name_of, versioned};
use super::{Api, Target};
use crate::kube::select::Selector;
use crate::kube::store::{rv_of, ApiError};

impl Api {
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
            ["version"] => {
                let v = self.shared.apiserver_version();
                return json_response(200, &discovery::version(&v));
            }
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
                if dry_run {
                    self.delete(&t.ty, t.ns.as_deref(), name, true)?;
                } else {
                    super::evict::evict(self, &t.ty, t.ns.as_deref().unwrap_or_default(), name)?;
                }
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
}
