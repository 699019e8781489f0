//! HTTP routing and handlers: paths and query parameters in, JSON (or a watch
//! stream) out, `Status` bodies for failures.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

use super::discovery;
use super::patch::PatchKind;
use super::resources::{self, ResourceType, RESOURCES};
use super::selector::Selector;
use super::store::{ApiError, ListPage, ListQuery, Scope, WatchFrom};
use super::watch::{expired_body, WatchFilter, WatchOptions, WatchStream};
use super::Shared;

/// Response body: a whole JSON document or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Largest request body accepted.
const MAX_BODY: usize = 32 << 20;

/// The hyper service: every request gets a response, failures as `Status` bodies.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    shared.record(req.method(), req.uri());
    if let Err(e) = authenticate(&shared, &req) {
        shared.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Ok(json_response(e.code, &e.to_status()));
    }
    Ok(route(&shared, req)
        .await
        .unwrap_or_else(|e| json_response(e.code, &e.to_status())))
}

/// With a required token, anything but `Authorization: Bearer <that token>` is
/// answered `401 Unauthorized`, as a real API server answers bad credentials (and,
/// with `--anonymous-auth=false`, missing ones).
fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(want) = shared.token() else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if presented == Some(want.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(401, "Unauthorized", "Unauthorized"))
    }
}

/// What a path names.
struct Target {
    res: usize,
    /// The namespace in the path: `None` for cluster-scoped types and for lists and
    /// watches across all namespaces.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn rt(&self) -> &'static ResourceType {
        &RESOURCES[self.res]
    }

    /// The namespace objects are addressed in: the empty namespace for cluster-scoped
    /// types, the path's namespace otherwise (`None` for an all-namespaces path).
    fn object_namespace(&self) -> Option<&str> {
        if self.rt().cluster_scoped {
            Some("")
        } else {
            self.namespace.as_deref()
        }
    }

    /// Parses `/api/v1/...` and `/apis/{group}/{version}/...` paths, namespaced
    /// (`namespaces/{ns}/{plural}[/{name}[/status]]`) and cluster-scoped
    /// (`{plural}[/{name}[/status]]`). Segment count and the table's scope decide
    /// between `/api/v1/namespaces/{ns}/{plural}` (namespaced objects) and
    /// `/api/v1/namespaces/{name}/status` (a Namespace's status subresource).
    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let namespaced = |plural: &str| {
            resources::find(group, version, plural).filter(|&r| !RESOURCES[r].cluster_scoped)
        };
        let cluster = |plural: &str| {
            resources::find(group, version, plural).filter(|&r| RESOURCES[r].cluster_scoped)
        };
        let target = |res, namespace: Option<&str>, name: Option<&str>, status| Target {
            res,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            status,
        };
        let parsed = match rest {
            [plural] => target(resources::find(group, version, plural)?, None, None, false),
            [plural, name] => target(cluster(plural)?, None, Some(*name), false),
            ["namespaces", ns, plural] if namespaced(plural).is_some() => {
                target(namespaced(plural)?, Some(*ns), None, false)
            }
            [plural, name, "status"] => target(cluster(plural)?, None, Some(*name), true),
            ["namespaces", ns, plural, name] => {
                target(namespaced(plural)?, Some(*ns), Some(*name), false)
            }
            ["namespaces", ns, plural, name, "status"] => {
                target(namespaced(plural)?, Some(*ns), Some(*name), true)
            }
            _ => return None,
        };
        // A subresource the type does not have is not found, as on a real server.
        (!parsed.status || parsed.rt().status_subresource).then_some(parsed)
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if req.uri().path() == "/version" {
        return Ok(json_response(200, &version()));
    }
    if req.method() == Method::GET {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let served = |res: usize| shared.is_served(res);
        if let Some(doc) = discovery::document(req.uri().path(), host, &served) {
            return Ok(json_response(200, &doc));
        }
    }
    let target = Target::parse(req.uri().path())
        .filter(|t| shared.is_served(t.res))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
    let query = Query::parse(req.uri().query().unwrap_or_default());
    if query.get("dryRun").is_some() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the API-server double",
        ));
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (namespace, name) = (target.object_namespace(), target.name.as_deref());
    match (&method, namespace, name) {
        (&Method::GET, _, None) if query.flag("watch") => watch(shared, &target, &query),
        (&Method::GET, _, None) => list(shared, &target, &query),
        (&Method::GET, Some(ns), Some(name)) => {
            let obj = shared.store().get(target.res, ns, name);
            let obj = obj.ok_or_else(|| ApiError::not_found(target.rt(), name))?;
            Ok(json_response(200, &obj))
        }
        (&Method::POST, Some(ns), None) => {
            let body = read_json(req).await?;
            let obj = shared.store().create(target.res, ns, body, true)?;
            Ok(json_response(201, &obj))
        }
        (&Method::PUT, Some(ns), Some(name)) => {
            let body = read_json(req).await?;
            let scope = if target.status {
                Scope::Status
            } else {
                Scope::Main
            };
            let obj = shared.store().update(target.res, ns, name, body, scope)?;
            Ok(json_response(200, &obj))
        }
        (&Method::PATCH, Some(ns), Some(name)) => {
            if target.status {
                shared.stats.status_patches.fetch_add(1, Ordering::Relaxed);
            }
            let kind = patch_kind(&content_type, &query)?;
            let body = read_json(req).await?;
            let scope = if target.status {
                Scope::Status
            } else {
                Scope::Main
            };
            let obj = shared
                .store()
                .patch(target.res, ns, name, kind, &body, scope)?;
            Ok(json_response(200, &obj))
        }
        (&Method::DELETE, Some(ns), Some(name)) if !target.status => {
            let obj = shared.store().delete(target.res, ns, name)?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", req.uri().path()),
        )),
    }
}

fn list(shared: &Shared, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let limit = query
        .get("limit")
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
        })
        .transpose()?;
    let q = ListQuery {
        namespace: target.namespace.clone(),
        labels: selector(query, "labelSelector")?,
        fields: selector(query, "fieldSelector")?,
        limit,
        continue_token: query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
    };
    shared.stats.lists[target.res].fetch_add(1, Ordering::Relaxed);
    let page = shared.store().list(target.res, &q)?;
    Ok(bytes_response(200, render_list(target.rt(), &page)))
}

fn watch(shared: &Arc<Shared>, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = WatchFilter {
        namespace: target.namespace.clone(),
        labels: selector(query, "labelSelector")?,
        fields: selector(query, "fieldSelector")?,
    };
    let initial_events_end = query.flag("sendInitialEvents");
    let from = match query.get("resourceVersion") {
        _ if initial_events_end => WatchFrom::Current,
        None | Some("" | "0") => WatchFrom::Current,
        Some(rv) => WatchFrom::After(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        None => None,
        Some(t) => {
            let secs: u64 = t
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?;
            (secs > 0).then(|| Duration::from_secs(secs))
        }
    };
    let opts = WatchOptions {
        bookmarks: query
            .flag("allowWatchBookmarks")
            .then(|| shared.bookmark_interval()),
        timeout,
        initial_events_end,
    };
    shared.stats.watch_requests[target.res].fetch_add(1, Ordering::Relaxed);
    let start = shared
        .store()
        .watch(target.res, from, target.namespace.as_deref());
    Ok(match start {
        Ok(start) => {
            let stream = WatchStream::new(Arc::clone(shared), target.res, filter, start, opts);
            stream_response(stream.into_body_stream())
        }
        Err(expired) => stream_response(expired_body(expired)),
    })
}

fn patch_kind(content_type: &str, query: &Query) -> Result<PatchKind, ApiError> {
    let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    })?;
    if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    Ok(kind)
}

fn selector(query: &Query, param: &str) -> Result<Selector, ApiError> {
    Selector::parse(query.get(param).unwrap_or_default()).map_err(ApiError::bad_request)
}

/// Reads and parses a JSON request body (apply bodies too: JSON is YAML).
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not JSON (the double parses JSON only): {e}"
        ))
    })
}

/// A list document; built-in types' items go without `apiVersion`/`kind`.
fn render_list(rt: &ResourceType, page: &ListPage) -> Vec<u8> {
    let mut metadata = json!({ "resourceVersion": page.rv.to_string() });
    if let Some(token) = &page.continue_token {
        metadata["continue"] = token.clone().into();
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = remaining.into();
    }
    let head =
        json!({ "apiVersion": rt.api_version(), "kind": rt.list_kind, "metadata": metadata });
    let mut buf = serde_json::to_vec(&head).expect("a JSON value serializes");
    buf.pop(); // the closing brace; items follow
    buf.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let written = if rt.custom {
            serde_json::to_writer(&mut buf, &**item)
        } else {
            serde_json::to_writer(&mut buf, &Untyped(item))
        };
        written.expect("a JSON value serializes");
    }
    buf.extend_from_slice(b"]}");
    buf
}

/// Serializes an object without its `apiVersion` and `kind`.
struct Untyped<'a>(&'a Value);

impl Serialize for Untyped<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(map) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut out = serializer.serialize_map(None)?;
        for (k, v) in map
            .iter()
            .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
        {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-isthmus-double",
        "platform": "linux/amd64",
    })
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    bytes_response(
        code,
        serde_json::to_vec(value).expect("a JSON value serializes"),
    )
}

fn bytes_response(code: u16, bytes: Vec<u8>) -> Response<Body> {
    let body = Full::new(Bytes::from(bytes)).map_err(|never| match never {});
    response(code, UnsyncBoxBody::new(body))
}

/// A chunked `200` whose body is `stream`.
fn stream_response(
    stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
) -> Response<Body> {
    let body = StreamBody::new(stream.map(|chunk| chunk.map(Frame::data)));
    response(200, UnsyncBoxBody::new(body))
}

fn response(code: u16, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Decoded query parameters.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex_byte(bytes.get(i + 1..i + 3))) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(hex: Option<&[u8]>) -> Option<u8> {
    u8::from_str_radix(std::str::from_utf8(hex?).ok()?, 16).ok()
}
