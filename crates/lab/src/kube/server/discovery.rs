//! `/version`, discovery (legacy and aggregated v2), a minimal `/openapi/v3`, and
//! server-side printing (`as=Table`) for kubectl.

use std::collections::{BTreeMap, HashMap};

use http::Response;
use serde_json::{json, Value};

use super::http::{json_response, Body};
use super::Api;
use crate::kube::types::{version_priority, ResType};

pub const KUBE_VERSION: &str = "v1.35.2";

/// `/version` of an API server running `git_version` (`v1.36.0`).
pub(crate) fn version(git_version: &str) -> Value {
    let mut parts = git_version.trim_start_matches('v').split('.');
    let major = parts.next().unwrap_or("1").to_string();
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(35);
    json!({
        "major": major,
        "minor": minor.to_string(),
        "emulationMajor": major,
        "emulationMinor": minor.to_string(),
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": minor.saturating_sub(1).to_string(),
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Group → versions (preferred first) → resource types.
fn groups(types: &[ResType]) -> BTreeMap<String, Vec<(String, Vec<ResType>)>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<ResType>>> = BTreeMap::new();
    for t in types {
        out.entry(t.group.clone())
            .or_default()
            .entry(t.version.clone())
            .or_default()
            .push(t.clone());
    }
    out.into_iter()
        .map(|(g, vs)| {
            let mut vs: Vec<(String, Vec<ResType>)> = vs.into_iter().collect();
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.0)));
            (g, vs)
        })
        .collect()
}

fn resource_list(gv: &str, ts: &[ResType]) -> Value {
    let mut resources = Vec::new();
    for t in ts {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
            "shortNames": t.short_names,
            "categories": t.categories,
            "storageVersionHash": "",
        }));
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn aggregated(groups: &BTreeMap<String, Vec<(String, Vec<ResType>)>>, core: bool) -> Value {
    let items: Vec<Value> = groups
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|(v, ts)| {
                    let resources: Vec<Value> = ts
                        .iter()
                        .map(|t| {
                            let gvk =
                                json!({"group": t.group, "version": t.version, "kind": t.kind});
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": gvk,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": t.verbs(),
                                "shortNames": t.short_names,
                                "categories": t.categories,
                            });
                            if t.status {
                                r["subresources"] = json!([{
                                    "subresource": "status",
                                    "responseKind": gvk,
                                    "verbs": ["get", "patch", "update"],
                                }]);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut item = json!({"metadata": {"creationTimestamp": null}, "versions": versions});
            if !g.is_empty() {
                item["metadata"]["name"] = json!(g);
            }
            item
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn wants_aggregated(accept: &str) -> bool {
    // Clients list the aggregated form first and plain JSON as the fallback; only
    // v2 is offered (v2beta1 was removed in 1.33).
    accept.split(',').any(|a| {
        let params: Vec<&str> = a.split(';').map(str::trim).collect();
        params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"v=v2")
            && params.contains(&"g=apidiscovery.k8s.io")
    })
}

fn with_type(mut r: Response<Body>, ct: &'static str) -> Response<Body> {
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r
}

/// Answers discovery and OpenAPI paths; None for anything else.
pub(crate) fn serve(api: &Api, segs: &[&str], accept: &str) -> Option<Response<Body>> {
    let is_discovery = matches!(
        segs,
        ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _]
    ) || segs.first() == Some(&"openapi");
    if !is_discovery {
        return None;
    }
    let types = api.types();
    let gs = groups(&types);
    let r = match segs {
        ["api"] => {
            if wants_aggregated(accept) {
                return Some(with_type(
                    json_response(200, &aggregated(&gs, true)),
                    AGGREGATED_V2,
                ));
            }
            json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.addr.to_string()}],
            })
        }
        ["apis"] => {
            if wants_aggregated(accept) {
                return Some(with_type(
                    json_response(200, &aggregated(&gs, false)),
                    AGGREGATED_V2,
                ));
            }
            let groups: Vec<Value> = gs
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| group_json(g, vs))
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["api", v] => {
            let ts = gs.get("")?.iter().find(|(x, _)| x == v)?;
            resource_list(v, &ts.1)
        }
        ["apis", g] => {
            let vs = gs.get(*g)?;
            group_json(g, vs)
        }
        ["apis", g, v] => {
            let ts = gs.get(*g)?.iter().find(|(x, _)| x == v)?;
            resource_list(&format!("{g}/{v}"), &ts.1)
        }
        ["openapi", "v3"] => openapi_root(&gs),
        ["openapi", "v3", rest @ ..] => openapi_gv(&gs, &rest.join("/"))?,
        _ => return None,
    };
    Some(json_response(200, &r))
}

fn group_json(g: &str, vs: &[(String, Vec<ResType>)]) -> Value {
    let versions: Vec<Value> = vs
        .iter()
        .map(|(v, _)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": g,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() {
        format!("api/{v}")
    } else {
        format!("apis/{g}/{v}")
    }
}

/// The OpenAPI v3 index. kubectl reads it to learn that PATCH takes
/// `fieldValidation`, so it leaves validation to the server instead of needing
/// full schemas.
fn openapi_root(gs: &BTreeMap<String, Vec<(String, Vec<ResType>)>>) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in gs {
        for (v, ts) in vs {
            let p = gv_path(g, v);
            let hash = format!("{:016X}", fnv(&format!("{p}{}", ts.len())));
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// One group-version document: a PATCH operation per kind, with the
/// `x-kubernetes-group-version-kind` kubectl matches on and the query parameters.
fn openapi_gv(gs: &BTreeMap<String, Vec<(String, Vec<ResType>)>>, path: &str) -> Option<Value> {
    let (g, v) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let (_, ts) = gs.get(&g)?.iter().find(|(x, _)| *x == v)?;
    let mut paths = serde_json::Map::new();
    let param = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for t in ts {
        let p = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(&g, &v),
                t.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(&g, &v), t.plural)
        };
        paths.insert(
            p,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

fn age(created: Option<&str>) -> String {
    let Some(c) = created else {
        return "<unknown>".into();
    };
    let secs = parse_time(c)
        .map(|t| (super::unix_now() - t).max(0))
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-01-02T03:04:05Z`).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    endsys_core::clock::parse_rfc3339(s)
}

fn condition_status(v: &Value, t: &str) -> Option<String> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .map(str::to_string)
}

/// Computes one table cell from an object.
type Cell = Box<dyn Fn(&Value) -> Value>;

/// A `meta.k8s.io/v1` Table (what `kubectl get` prints).
pub(crate) fn table(ty: &ResType, items: &[Value], rev: i64, q: &HashMap<String, String>) -> Value {
    let col = |n: &str, t: &str, f: &str| json!({"name": n, "type": t, "format": f, "description": n, "priority": 0});
    let mut cols = vec![col("Name", "string", "name")];
    let extra: Vec<(&str, Cell)> = match ty.kind.as_str() {
        "Node" => vec![
            (
                "Status",
                Box::new(|v: &Value| {
                    json!(if condition_status(v, "Ready").as_deref() == Some("True") {
                        "Ready"
                    } else {
                        "NotReady"
                    })
                }),
            ),
            (
                "Roles",
                Box::new(|v: &Value| {
                    let roles: Vec<String> = v
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .map(|l| {
                            l.keys()
                                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    json!(if roles.is_empty() {
                        "<none>".to_string()
                    } else {
                        roles.join(",")
                    })
                }),
            ),
            (
                "Version",
                Box::new(|v: &Value| {
                    v.pointer("/status/nodeInfo/kubeletVersion")
                        .cloned()
                        .unwrap_or(json!(""))
                }),
            ),
        ],
        "Deployment" | "StatefulSet" => vec![(
            "Ready",
            Box::new(|v: &Value| {
                let r = v
                    .pointer("/status/readyReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let w = v
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                json!(format!("{r}/{w}"))
            }),
        )],
        "DaemonSet" => vec![
            (
                "Desired",
                Box::new(|v: &Value| {
                    v.pointer("/status/desiredNumberScheduled")
                        .cloned()
                        .unwrap_or(json!(0))
                }),
            ),
            (
                "Ready",
                Box::new(|v: &Value| {
                    v.pointer("/status/numberReady")
                        .cloned()
                        .unwrap_or(json!(0))
                }),
            ),
        ],
        "Namespace" | "Pod" => vec![(
            "Status",
            Box::new(|v: &Value| v.pointer("/status/phase").cloned().unwrap_or(json!(""))),
        )],
        _ => vec![],
    };
    for (n, _) in &extra {
        cols.push(col(n, "string", ""));
    }
    cols.push(col("Age", "string", ""));
    let full = q.get("includeObject").is_some_and(|s| s == "Object");
    let rows: Vec<Value> = items
        .iter()
        .map(|v| {
            let mut cells = vec![v.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            for (_, f) in &extra {
                cells.push(f(v));
            }
            cells.push(json!(age(v.pointer("/metadata/creationTimestamp").and_then(Value::as_str))));
            let object = if full {
                v.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v.get("metadata").cloned().unwrap_or(json!({}))})
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rev.to_string()},
        "columnDefinitions": cols,
        "rows": rows,
    })
}
