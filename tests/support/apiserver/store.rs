//! The object store: current objects per resource, the event history, and the
//! single resourceVersion counter shared by all resources (like etcd's revision).
//!
//! Every write happens under one lock and is broadcast while the lock is held, so
//! broadcast order equals resourceVersion order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::patch::{self, PatchKind};
use super::resources::{ResourceType, RESOURCES};
use super::selector::Selector;

/// `(namespace, name)`; objects are kept sorted by it.
pub(crate) type Key = (String, String);

/// List snapshots kept for `continue` tokens before the oldest is forgotten.
const MAX_SNAPSHOTS: usize = 64;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub(crate) struct Event {
    /// The resourceVersion the change was committed at.
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    /// The object after the change (for DELETED: its last state, at `rv`).
    pub(crate) object: Arc<Value>,
    /// The object before a MODIFIED change (lets selector watches see objects leave).
    pub(crate) prev: Option<Arc<Value>>,
}

/// A failure answered with a `Status` body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" not found", rt.qualified_plural());
        ApiError::new(404, "NotFound", message)
    }

    /// The `Status` object a real API server sends.
    pub(crate) fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// Which parts of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The test's control API: everything; `.status` is kept when the new object has none.
    Whole,
    /// PUT/PATCH on the object: `.status` is kept when the type has a status subresource.
    Main,
    /// PUT/PATCH on `/status`: only `.status` changes.
    Status,
}

/// What a LIST asks for.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
}

/// One page of a LIST.
#[derive(Debug)]
pub(crate) struct ListPage {
    /// The snapshot's resourceVersion (the same on every page of one list).
    pub(crate) rv: u64,
    pub(crate) items: Vec<Arc<Value>>,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<usize>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WatchFrom {
    /// `resourceVersion` unset or `"0"`: synthetic ADDED events for the current state first.
    Current,
    /// After this resourceVersion: replay history, then live events.
    After(u64),
}

/// A watch that may start: its backlog and its live feed.
pub(crate) struct WatchStart {
    /// Events to send before live ones, in resourceVersion order.
    pub(crate) backlog: Vec<Arc<Event>>,
    /// Live events, subscribed under the same lock the backlog was read under.
    pub(crate) live: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion the stream is at once the backlog is sent.
    pub(crate) rv: u64,
}

/// A watch refused because its resourceVersion is older than the compaction point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expired {
    pub(crate) requested: u64,
    pub(crate) compacted: u64,
}

/// One resource's objects and history.
struct Table {
    objects: BTreeMap<Key, Arc<Value>>,
    history: Vec<Arc<Event>>,
    live: broadcast::Sender<Arc<Event>>,
}

/// The full result of a paginated LIST, served page by page at one resourceVersion.
struct Snapshot {
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

/// All state of the double.
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    next_uid: u64,
    uid_prefix: u32,
    tables: Vec<Table>,
    snapshots: HashMap<u64, Snapshot>,
    snapshot_order: VecDeque<u64>,
    next_snapshot: u64,
}

impl Store {
    /// An empty store whose live feeds buffer `event_buffer` events per watcher.
    pub(crate) fn new(event_buffer: usize) -> Store {
        let tables = RESOURCES
            .iter()
            .map(|_| Table {
                objects: BTreeMap::new(),
                history: Vec::new(),
                live: broadcast::channel(event_buffer.max(1)).0,
            })
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Store {
            rv: 0,
            compacted: 0,
            next_uid: 1,
            uid_prefix: nanos ^ std::process::id(),
            tables,
            snapshots: HashMap::new(),
            snapshot_order: VecDeque::new(),
            next_snapshot: 1,
        }
    }

    /// The current (latest committed) resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// Forgets history up to the current resourceVersion: older watches and
    /// `continue` tokens then get `410 Expired`.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
        for table in &mut self.tables {
            table.history.clear();
        }
        self.snapshots.clear();
        self.snapshot_order.clear();
    }

    /// Number of objects of one resource.
    pub(crate) fn len(&self, res: usize) -> usize {
        self.tables[res].objects.len()
    }

    /// One object.
    pub(crate) fn get(&self, res: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let key = (namespace.to_string(), name.to_string());
        self.tables[res].objects.get(&key).cloned()
    }

    /// One page of a LIST (see [`ListQuery`]); later pages come from the first page's snapshot.
    pub(crate) fn list(&mut self, res: usize, q: &ListQuery) -> Result<ListPage, ApiError> {
        let (id, rv, items, offset) = match &q.continue_token {
            Some(token) => {
                let (id, offset) = parse_continue(token)?;
                let snap = self.snapshots.get(&id).ok_or_else(|| {
                    ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list \
                         result. You can start a new list without the continue parameter.",
                    )
                })?;
                (id, snap.rv, Arc::clone(&snap.items), offset)
            }
            None => (0, self.rv, Arc::new(self.matching(res, q)), 0),
        };
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let start = offset.min(items.len());
        let end = start.saturating_add(limit).min(items.len());
        let page = items[start..end].to_vec();
        if end == items.len() {
            self.snapshots.remove(&id);
            return Ok(ListPage {
                rv,
                items: page,
                continue_token: None,
                remaining: None,
            });
        }
        let id = if id == 0 {
            self.keep_snapshot(rv, Arc::clone(&items))
        } else {
            id
        };
        let filtered = !q.labels.is_empty() || !q.fields.is_empty();
        Ok(ListPage {
            rv,
            items: page,
            continue_token: Some(format!("{id}-{end}")),
            remaining: (!filtered).then_some(items.len() - end),
        })
    }

    /// Objects matching a query's namespace and selectors, sorted by namespace/name.
    fn matching(&self, res: usize, q: &ListQuery) -> Vec<Arc<Value>> {
        self.in_namespace(res, q.namespace.as_deref())
            .filter(|o| q.labels.matches_labels(o) && q.fields.matches_fields(o))
            .cloned()
            .collect()
    }

    /// Objects of one resource, optionally in one namespace, in key order.
    fn in_namespace<'a>(
        &'a self,
        res: usize,
        namespace: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Value>> + 'a> {
        let objects = &self.tables[res].objects;
        match namespace {
            None => Box::new(objects.values()),
            Some(ns) => Box::new(
                objects
                    .range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, o)| o),
            ),
        }
    }

    fn keep_snapshot(&mut self, rv: u64, items: Arc<Vec<Arc<Value>>>) -> u64 {
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        self.snapshots.insert(id, Snapshot { rv, items });
        self.snapshot_order.push_back(id);
        while self.snapshot_order.len() > MAX_SNAPSHOTS {
            if let Some(old) = self.snapshot_order.pop_front() {
                self.snapshots.remove(&old);
            }
        }
        id
    }

    /// Starts a watch: the backlog to send first and a live feed, read atomically.
    pub(crate) fn watch(
        &self,
        res: usize,
        from: WatchFrom,
        namespace: Option<&str>,
    ) -> Result<WatchStart, Expired> {
        let table = &self.tables[res];
        let (backlog, rv) = match from {
            WatchFrom::After(r) if r < self.compacted => {
                return Err(Expired {
                    requested: r,
                    compacted: self.compacted,
                });
            }
            WatchFrom::After(r) => {
                let first = table.history.partition_point(|e| e.rv <= r);
                (table.history[first..].to_vec(), r)
            }
            WatchFrom::Current => {
                let synthetic = self
                    .in_namespace(res, namespace)
                    .map(|o| {
                        Arc::new(Event {
                            rv: object_rv(o),
                            kind: EventType::Added,
                            object: Arc::clone(o),
                            prev: None,
                        })
                    })
                    .collect();
                (synthetic, self.rv)
            }
        };
        Ok(WatchStart {
            backlog,
            live: table.live.subscribe(),
            rv,
        })
    }

    /// Creates an object in `namespace`. `strict` (an API create) refuses a set
    /// resourceVersion and drops `.status` of a type with a status subresource, as
    /// POST does; otherwise (the control API) both are taken as given.
    pub(crate) fn create(
        &mut self,
        res: usize,
        namespace: &str,
        mut obj: Value,
        strict: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        normalize(rt, &mut obj)?;
        check_identity(&obj, namespace, None)?;
        if strict && rt.status_subresource {
            // A create through the API ignores `.status` when it is a subresource.
            set_or_remove(&mut obj, "status", None);
        }
        let meta = metadata_mut(&mut obj);
        let rv_set = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if strict && rv_set {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName"),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(Value::String(prefix))) => format!("{prefix}{:05x}", self.next_uid),
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        if self.get(res, namespace, &name).is_some() {
            let message = format!("{} \"{name}\" already exists", rt.qualified_plural());
            return Err(ApiError::new(409, "AlreadyExists", message));
        }
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.uid_prefix, self.next_uid
        );
        self.next_uid += 1;
        meta.remove("resourceVersion");
        meta.insert("name".into(), name.clone().into());
        if !namespace.is_empty() {
            meta.insert("namespace".into(), namespace.into());
        }
        meta.insert("uid".into(), uid.into());
        meta.insert("generation".into(), 1.into());
        meta.insert("creationTimestamp".into(), rfc3339_now().into());
        create_defaults(rt, &mut obj);
        let key = (namespace.to_string(), name);
        Ok(self.commit(res, key, EventType::Added, obj, None))
    }

    /// Replaces an existing object within `scope`; a no-op write changes nothing (no new
    /// resourceVersion, no event), as on a real API server.
    pub(crate) fn update(
        &mut self,
        res: usize,
        namespace: &str,
        name: &str,
        mut obj: Value,
        scope: Scope,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let prev = self
            .get(res, namespace, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        normalize(rt, &mut obj)?;
        check_identity(&obj, namespace, Some(name))?;
        if scope != Scope::Whole {
            check_precondition(rt, &prev, &obj, name)?;
        }
        let next = merge_update(rt, &prev, obj, scope);
        if next == *prev {
            return Ok(prev);
        }
        let key = (namespace.to_string(), name.to_string());
        Ok(self.commit(res, key, EventType::Modified, next, Some(prev)))
    }

    /// Creates or replaces a whole object (the control API's `apply`).
    pub(crate) fn upsert(&mut self, res: usize, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        normalize(&RESOURCES[res], &mut obj)?;
        let meta = metadata_mut(&mut obj);
        meta.remove("resourceVersion");
        let namespace = match meta.get("namespace").and_then(Value::as_str) {
            _ if RESOURCES[res].cluster_scoped => String::new(),
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => "default".to_string(),
        };
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if self.get(res, &namespace, &name).is_some() {
            self.update(res, &namespace, &name, obj, Scope::Whole)
        } else {
            self.create(res, &namespace, obj, false)
        }
    }

    /// Applies a PATCH within `scope`. Server-side apply of a missing object creates it.
    pub(crate) fn patch(
        &mut self,
        res: usize,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        scope: Scope,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        if kind == PatchKind::Strategic && rt.custom {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources",
            ));
        }
        let Some(prev) = self.get(res, namespace, name) else {
            if kind == PatchKind::Apply && scope != Scope::Status {
                let mut obj = body.clone();
                normalize(rt, &mut obj)?;
                metadata_mut(&mut obj)
                    .entry("name")
                    .or_insert_with(|| name.into());
                metadata_mut(&mut obj).remove("resourceVersion");
                return self.create(res, namespace, obj, true);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let mut next = (*prev).clone();
        patch::apply(kind, &mut next, body)
            .map_err(|e| ApiError::new(422, "Invalid", format!("invalid patch: {e}")))?;
        self.update(res, namespace, name, next, scope)
    }

    /// Deletes an object; returns its last state at the deletion's resourceVersion.
    pub(crate) fn delete(
        &mut self,
        res: usize,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let prev = self
            .get(res, namespace, name)
            .ok_or_else(|| ApiError::not_found(&RESOURCES[res], name))?;
        let key = (namespace.to_string(), name.to_string());
        Ok(self.commit(res, key, EventType::Deleted, (*prev).clone(), None))
    }

    /// Stamps the next resourceVersion, stores, records history and broadcasts.
    fn commit(
        &mut self,
        res: usize,
        key: Key,
        kind: EventType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), self.rv.to_string().into());
        let obj = Arc::new(obj);
        let table = &mut self.tables[res];
        if kind == EventType::Deleted {
            table.objects.remove(&key);
        } else {
            table.objects.insert(key, Arc::clone(&obj));
        }
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            object: Arc::clone(&obj),
            prev,
        });
        table.history.push(Arc::clone(&event));
        // An error only means that nobody is watching.
        let _ = table.live.send(event);
        obj
    }
}

/// The resourceVersion stamped on a stored object.
pub(crate) fn object_rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// Makes `obj` an object with this type's `apiVersion`/`kind` and a `metadata` map;
/// a top-level `"status": null` is dropped, a cluster-scoped object loses any
/// `metadata.namespace` (as a real API server clears it), and a Secret's
/// `stringData` is folded into `data` (base64), as the real conversion does.
fn normalize(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    normalize_shape(rt, obj)?;
    if rt.cluster_scoped {
        metadata_mut(obj).remove("namespace");
    }
    if rt.group.is_empty() && rt.kind == "Secret" {
        check_secret_data(obj)?;
        fold_string_data(obj)?;
    }
    Ok(())
}

/// Refuses a Secret whose `data` values are not base64 strings, with the 400 a
/// real API server answers when it cannot decode the body.
fn check_secret_data(obj: &Value) -> Result<(), ApiError> {
    let Some(data) = obj.get("data").filter(|d| !d.is_null()) else {
        return Ok(());
    };
    let refuse = |why: String| {
        ApiError::bad_request(format!(
            "Secret in version \"v1\" cannot be handled as a Secret: {why}"
        ))
    };
    let data = data
        .as_object()
        .ok_or_else(|| refuse("data must be an object".into()))?;
    for (key, value) in data {
        let text = value
            .as_str()
            .ok_or_else(|| refuse(format!("data.{key} must be a base64 string")))?;
        if let Some(at) = base64_error(text) {
            return Err(refuse(format!("illegal base64 data at input byte {at}")));
        }
    }
    Ok(())
}

/// Where standard padded base64 (as Go's `encoding/json` decodes `[]byte`) is
/// invalid, if it is; CR and LF are skipped, as Go skips them.
fn base64_error(text: &str) -> Option<usize> {
    let mut len = 0;
    let mut padding = 0;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'\r' | b'\n' => continue,
            b'=' => padding += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => {}
            _ => return Some(i),
        }
        len += 1;
    }
    (len % 4 != 0 || padding > 2).then_some(text.len())
}

/// Fields a real API server defaults on create: a Secret's `type` (`Opaque`) and a
/// Namespace's `status.phase` (`Active`; the double has no namespace lifecycle).
fn create_defaults(rt: &ResourceType, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (rt.group, rt.kind) {
        ("", "Secret") => {
            map.entry("type").or_insert_with(|| "Opaque".into());
        }
        ("", "Namespace") => {
            let status = map.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                status.entry("phase").or_insert_with(|| "Active".into());
            }
        }
        _ => {}
    }
}

/// Moves a Secret's `stringData` into `data`, base64-encoded (`stringData` wins).
fn fold_string_data(obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Ok(());
    };
    let Some(string_data) = map.remove("stringData") else {
        return Ok(());
    };
    let string_data = match string_data {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => return Err(ApiError::bad_request("stringData must be an object")),
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if data.is_null() {
        *data = json!({});
    }
    let data = data
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("data must be an object"))?;
    for (k, v) in string_data {
        let text = v
            .as_str()
            .ok_or_else(|| ApiError::bad_request(format!("stringData.{k} must be a string")))?;
        data.insert(k, base64(text.as_bytes()).into());
    }
    Ok(())
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The shape checks of [`normalize`].
fn normalize_shape(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    map.insert("apiVersion".into(), rt.api_version().into());
    map.insert("kind".into(), rt.kind.into());
    if map.get("status").is_some_and(Value::is_null) {
        map.remove("status");
    }
    match map.get("metadata") {
        Some(Value::Object(_)) => Ok(()),
        None | Some(Value::Null) => {
            map.insert("metadata".into(), Value::Object(Map::new()));
            Ok(())
        }
        Some(_) => Err(ApiError::bad_request("metadata must be an object")),
    }
}

/// The `metadata` map of a normalized object.
fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let map = obj
        .as_object_mut()
        .expect("normalized objects are JSON objects");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .expect("metadata was just made an object")
}

/// Refuses a body whose namespace or name disagrees with the URL.
fn check_identity(obj: &Value, namespace: &str, name: Option<&str>) -> Result<(), ApiError> {
    let field = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(ns) = field("namespace").filter(|ns| *ns != namespace) {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
        )));
    }
    match (field("name"), name) {
        (Some(body), Some(url)) if body != url => Err(ApiError::bad_request(format!(
            "the name of the object ({body}) does not match the name on the URL ({url})"
        ))),
        _ => Ok(()),
    }
}

/// A body carrying a resourceVersion must carry the current one (optimistic concurrency).
fn check_precondition(
    rt: &ResourceType,
    prev: &Value,
    next: &Value,
    name: &str,
) -> Result<(), ApiError> {
    let rv = |v: &Value| {
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match rv(next) {
        Some(wanted) if !wanted.is_empty() && Some(&wanted) != rv(prev).as_ref() => {
            Err(ApiError::new(
                409,
                "Conflict",
                format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified_plural()
            ),
            ))
        }
        _ => Ok(()),
    }
}

/// The object a write produces: `scope` decides where `.status` comes from, server-owned
/// metadata is carried over, and a spec change bumps `metadata.generation`.
fn merge_update(rt: &ResourceType, prev: &Value, new: Value, scope: Scope) -> Value {
    let prev_status = prev.get("status").cloned();
    let mut next = match scope {
        Scope::Status => {
            let mut next = prev.clone();
            set_or_remove(&mut next, "status", new.get("status").cloned());
            next
        }
        Scope::Main if rt.status_subresource => {
            let mut next = new;
            set_or_remove(&mut next, "status", prev_status);
            next
        }
        Scope::Whole if new.get("status").is_none() => {
            let mut next = new;
            set_or_remove(&mut next, "status", prev_status);
            next
        }
        Scope::Main | Scope::Whole => new,
    };
    let prev_meta = prev.get("metadata").and_then(Value::as_object);
    let meta = metadata_mut(&mut next);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
    ] {
        match prev_meta.and_then(|m| m.get(field)) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    if spec_changed(prev, &next) {
        let generation = prev
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        metadata_mut(&mut next).insert("generation".into(), (generation + 1).into());
    }
    next
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => map.insert(field.into(), v),
            None => map.remove(field),
        };
    }
}

/// Whether anything but `apiVersion`, `kind`, `metadata` and `status` differs.
fn spec_changed(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let body = |k: &String| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status");
    a.iter()
        .filter(|(k, _)| body(k))
        .any(|(k, v)| b.get(k) != Some(v))
        || b.keys().filter(|k| body(k)).any(|k| !a.contains_key(k))
}

fn parse_continue(token: &str) -> Result<(u64, usize), ApiError> {
    token
        .split_once('-')
        .and_then(|(id, offset)| Some((id.parse().ok()?, offset.parse().ok()?)))
        .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {token:?}")))
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}
