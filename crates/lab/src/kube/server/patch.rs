//! PATCH: JSON patch, merge patch (strategic merge treated as a merge patch) and
//! server-side apply with field ownership and conflicts, as the apiserver's
//! patcher applies them (`force` only for apply, `fieldManager` required for
//! apply, create on apply); and the forced applies of the simulated controllers.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::http::{parse_body, truthy};
use super::object::{
    bump_generation, keep_server_fields, keep_server_fields_for, strip_for, versioned,
};
use super::{now, Api, Target};
use crate::kube::fields;
use crate::kube::store::{ApiError, Write};
use crate::kube::types::ResType;

impl Api {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn patch(
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
