//! The HTTP plumbing every part of the server shares: the response body type,
//! JSON and plain responses, `Status` objects for errors, chunked JSON streams
//! (watches), query strings, and request bodies (JSON, or YAML for apply and
//! manifests), with the apiserver's body limit.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::kube::select;
use crate::kube::store::ApiError;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(super) const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub(super) fn bytes_response(code: u16, ct: &str, body: Vec<u8>) -> Response<Body> {
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

pub(super) fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (select::percent_decode(k), select::percent_decode(v))
        })
        .collect()
}

pub(super) fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

pub(super) type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A chunked JSON stream: fixed lines, or lines from a producer task.
pub(super) fn stream_response(
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

/// JSON, or YAML (a superset) for apply bodies and manifests.
pub(super) fn parse_body(body: &[u8], ctype: &str) -> Result<Value, ApiError> {
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
