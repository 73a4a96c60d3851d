//! Who calls and what they may do: the user and groups of the verified client
//! certificate (CN and O, as the apiserver's x509 authenticator reads them), and
//! the `Forbidden` status for everyone outside `system:masters`, worded as the
//! apiserver's RBAC authorizer words it.

use std::collections::HashMap;

use http::Method;
use serde_json::json;

use super::http::truthy;
use super::Target;
use crate::kube::store::ApiError;

/// Who is calling, from the client certificate.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub(super) fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

pub(super) fn forbidden(
    who: &Identity,
    method: &Method,
    q: &HashMap<String, String>,
    t: &Target,
) -> ApiError {
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
