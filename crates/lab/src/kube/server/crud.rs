//! Create, replace (also through the status subresource) and delete, as the
//! apiserver's REST storage does them: the body checked against the URL and
//! filled in, server-set metadata on create, `resourceVersion` preconditions,
//! managed fields recorded, namespaces and CRDs taking their contents with them;
//! and the writes of the simulated controllers.

use serde_json::{json, Value};

use super::object::{bump_generation, keep_server_fields, qualified, valid_name, versioned};
use super::{now, Api, Target};
use crate::kube::fields;
use crate::kube::store::{rv_of, ApiError, Write};
use crate::kube::types::{self, ResType};

impl Api {
    /// Checks type, name and namespace of a body against the URL and fills them in.
    pub(super) fn check_identity(
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

    pub(super) fn namespace_exists(&self, ns: Option<&str>) -> Result<(), ApiError> {
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
    pub(super) fn init_new(&self, t: &Target, obj: &mut Value) {
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

    pub(super) fn create(
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

    pub(super) fn replace(
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
