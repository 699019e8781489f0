//! A protocol-faithful Kubernetes API-server double for tests.
//!
//! [`ApiServer`] is a real HTTP/1.1 server on `127.0.0.1` that kube-rs's own
//! `kube::Client` and `kube::runtime::watcher()`, and the real `kubectl`, talk to
//! unmodified. Everything it serves comes from one table (`apiserver/resources.rs`):
//!
//! | group/version | resources |
//! |---|---|
//! | core `v1` | `services` (+`/status`), `secrets`, `serviceaccounts`, `namespaces` (cluster-scoped, +`/status`), `configmaps` |
//! | `apps/v1` | `deployments` (+`/status`) |
//! | `discovery.k8s.io/v1` | `endpointslices` |
//! | `coordination.k8s.io/v1` | `leases` |
//! | `isthmus.dev/v1alpha1` | `mappings` (+`/status`), `links` (+`/status`) |
//! | `split.smi-spec.io/v1alpha1`..`v1alpha4` | `trafficsplits` (one storage per version) |
//! | `gateway.networking.k8s.io/v1` | `gatewayclasses` (cluster-scoped, +`/status`), `gateways` (+`/status`), `httproutes` (+`/status`) |
//! | `gateway.networking.k8s.io/v1beta1` | `referencegrants` |
//!
//! `isthmus.dev`, `split.smi-spec.io` and `gateway.networking.k8s.io` types behave as
//! custom resources (LIST items carry `apiVersion`/`kind`; strategic merge patch is
//! refused with 415). The `trafficsplits` versions are a simplification: a real API
//! server keeps one storage and converts between versions, the double keeps each
//! version apart (an object created at `v1alpha2` is not seen at `v1alpha4`).
//!
//! What it does like a real API server:
//! - namespaced paths (`/api/v1/namespaces/{ns}/{plural}[/{name}[/status]]`,
//!   `/apis/{g}/{v}/namespaces/{ns}/...`, and `/{plural}` across namespaces) and
//!   cluster-scoped paths (`/api/v1/{plural}[/{name}[/status]]`,
//!   `/apis/{g}/{v}/{plural}[/{name}[/status]]`); `/api/v1/namespaces/{name}` is the
//!   Namespace object and `/api/v1/namespaces/{ns}/{plural}` a namespaced collection
//!   (told apart by segment count and the table's scope); a path of the wrong scope,
//!   or a `/status` the type lacks, is 404. Cluster-scoped objects are stored under
//!   the empty namespace and carry no `metadata.namespace` (a body's is cleared);
//! - one global resourceVersion counter (as etcd's revision) stamped on every
//!   write; creates set `uid`, `generation: 1` and `creationTimestamp`; spec
//!   changes bump `generation`; no-op writes change nothing; a PUT or PATCH body
//!   carrying a stale `metadata.resourceVersion` gets 409 `Conflict` (optimistic
//!   concurrency, e.g. for Lease-based leader election);
//! - defaulting and conversion where clients see it: a Secret's `stringData` is
//!   folded into `data` (base64) and `type` defaults to `Opaque`; a Namespace gets
//!   `status.phase: Active`; an API create ignores `.status` of a type with a status
//!   subresource;
//! - LIST with `limit`/`continue` pagination served from a consistent snapshot
//!   (every page carries the first page's resourceVersion), `labelSelector`
//!   (`k=v`, `k!=v`, `k`, `!k`, `k in (..)`, `k notin (..)`), `fieldSelector` on
//!   any dotted field, items sorted by namespace/name, built-in items without
//!   `apiVersion`/`kind`;
//! - WATCH as chunked newline-delimited JSON: history replayed after the
//!   requested resourceVersion then live events, filtered by namespace and
//!   selectors (objects leaving a selector are sent DELETED), periodic BOOKMARKs
//!   when asked, `timeoutSeconds`, `sendInitialEvents`; a resourceVersion older
//!   than the compaction point gets HTTP 200 with one `ERROR` event carrying a
//!   410 `Expired` `Status`;
//! - GET, POST, PUT, PATCH (merge, JSON patch, server-side apply as a JSON
//!   merge, strategic merge for built-ins as a merge) and DELETE, on objects and
//!   `/status`; failures as `Status` bodies (400, 401, 404, 405, 409, 410, 415, 422);
//! - optional bearer-token authentication ([`Options::require_token`],
//!   [`ApiServer::set_token`] to revoke or rotate at run time): any request
//!   without `Authorization: Bearer <token>` gets 401 with a `Status` whose reason
//!   is `Unauthorized` (`/version` included: a server with `--anonymous-auth=false`);
//!   open watches are not cut when the token changes; the kubeconfig helpers carry
//!   the current token;
//! - discovery (unaggregated): `/api` (`APIVersions`), `/api/v1` and
//!   `/apis/{g}/{v}` (`APIResourceList`: name, singularName, namespaced, kind,
//!   verbs, shortNames, and `{plural}/status` entries), `/apis` (`APIGroupList`,
//!   versions in Kubernetes priority order, the highest preferred) and
//!   `/apis/{g}` (`APIGroup`); `/version`. A request for aggregated discovery
//!   (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...`)
//!   is answered with the legacy document as plain `application/json`, which
//!   kubectl and kube-rs accept as a fallback.
//!
//! `kubectl` (verified with v1.33.1, the version the gcloud dispatcher picks for
//! this server's `v1.33.0` `/version`) works with the kubeconfig from
//! [`ApiServer::kubeconfig`]:
//! `kubectl --kubeconfig K --cache-dir D apply --validate=false -f FILE` creates
//! (GET 404, then POST), re-applies as `unchanged` (no write), and applies changes
//! as client-side apply does (strategic merge PATCH for built-ins, JSON merge PATCH
//! for custom types, with the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation); `apply --server-side`, `get` (plain lists, no server-side Table)
//! and `delete` (which then polls until the object is gone) work too.
//! `--validate=false` (or `=ignore`) is required: the double serves no OpenAPI,
//! and kubectl's default `--validate=strict` (like `=warn`) refuses to apply when
//! `/openapi/v3` and `/openapi/v2` are 404 ("failed to download openapi") and also
//! when they are empty documents (it then wants a protobuf v2 schema). `--cache-dir`
//! is optional; a fresh one per test keeps kubectl's discovery cache from leaking.
//!
//! What it does not do: OpenAPI documents (`/openapi/v2`, `/openapi/v3` are 404),
//! aggregated discovery, server-side Table output, authorization (any
//! authenticated request may do anything), namespace lifecycle (objects may be
//! created in namespaces that do not exist; deleting a Namespace deletes only it,
//! immediately), version conversion, validation against schemas (`fieldValidation`
//! is accepted and ignored), finalizers or graceful deletion, `deletecollection`,
//! managedFields and field ownership, `dryRun`, YAML or protobuf bodies, HTTP/2,
//! TLS, and `watch` on one object by path (use `fieldSelector=metadata.name=...`,
//! as kube-rs does).
//!
//! Tests drive it through the control API: [`ApiServer::apply`],
//! [`ApiServer::apply_json`] and [`ApiServer::delete`] change state as a
//! controller elsewhere would (the namespace is ignored for cluster-scoped types), and the
//! fault hooks ([`ApiServer::drop_watches`], [`ApiServer::compact`],
//! [`ApiServer::stop`]/[`ApiServer::restart`], [`ApiServer::set_token`]) reproduce
//! what clients must survive. Counters ([`ApiServer::watch_count`],
//! [`ApiServer::list_count`], [`ApiServer::unauthorized_requests`], ...) let tests
//! wait on conditions instead of sleeping.

mod discovery;
mod handler;
mod patch;
mod resources;
mod selector;
mod store;
mod watch;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use store::Store;

/// Requests remembered by [`ApiServer::requests`].
const REQUEST_LOG: usize = 10_000;

/// Tunables for [`ApiServer::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Period of BOOKMARK events on watches that allow them (default 1 s).
    pub bookmark_interval: Duration,
    /// Live events buffered per watch before a slow watch is dropped so that
    /// its client resumes from history (default 16384).
    pub event_buffer: usize,
    /// When set, every request must carry `Authorization: Bearer <token>`; any
    /// other gets `401 Unauthorized` (default: no authentication). Change it at
    /// run time with [`ApiServer::set_token`].
    pub require_token: Option<String>,
    /// The address to listen on (default `127.0.0.1`; `0.0.0.0` lets processes
    /// in the tests' network namespaces reach it through their veth).
    pub bind: std::net::IpAddr,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bookmark_interval: Duration::from_secs(1),
            event_buffer: 16_384,
            require_token: None,
            bind: std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }
}

/// A running API-server double; cheap to clone (all clones share one server).
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The accept loop (owning every connection) while the server is up.
    accept: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.accept.get_mut().take() {
            task.abort();
        }
    }
}

/// State shared by the handle, the accept loop, connections and watch streams.
struct Shared {
    store: Mutex<Store>,
    stats: Stats,
    /// Bumped to end every open watch abruptly.
    epoch: tokio::sync::watch::Sender<u64>,
    bookmark_ms: AtomicU64,
    log: Mutex<VecDeque<String>>,
    /// The bearer token required of every request, if any.
    token: Mutex<Option<String>>,
    /// Resource ids hidden by [`ApiServer::set_served`].
    hidden: Mutex<std::collections::HashSet<usize>>,
}

/// Counters, per resource where tests may care which one.
#[derive(Default)]
struct Stats {
    lists: Vec<AtomicUsize>,
    watch_requests: Vec<AtomicUsize>,
    open_watches: Vec<Arc<AtomicUsize>>,
    status_patches: AtomicUsize,
    bookmarks: AtomicUsize,
    lagged: AtomicUsize,
    unauthorized: AtomicUsize,
    connections: Arc<AtomicUsize>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token(&self) -> Option<String> {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_served(&self, res: usize) -> bool {
        !self
            .hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&res)
    }

    fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_ms.load(Ordering::Relaxed))
    }

    fn drop_watches(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    fn record(&self, method: &http::Method, uri: &http::Uri) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(format!("{method} {uri}"));
    }
}

/// Counts while alive (open connections, open watches).
struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    fn new(counter: &Arc<AtomicUsize>) -> Gauge {
        counter.fetch_add(1, Ordering::SeqCst);
        Gauge(Arc::clone(counter))
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ApiServer {
    /// Starts a double on `127.0.0.1:0` with default [`Options`].
    pub async fn start() -> ApiServer {
        ApiServer::start_with(Options::default()).await
    }

    /// Starts a double on `127.0.0.1:0`.
    pub async fn start_with(opts: Options) -> ApiServer {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(opts.event_buffer)),
            stats: Stats {
                lists: per_resource(),
                watch_requests: per_resource(),
                open_watches: per_resource(),
                ..Stats::default()
            },
            epoch: tokio::sync::watch::channel(0).0,
            bookmark_ms: AtomicU64::new(duration_ms(opts.bookmark_interval)),
            log: Mutex::new(VecDeque::new()),
            token: Mutex::new(opts.require_token),
            hidden: Mutex::new(std::collections::HashSet::new()),
        });
        let listener = listen(SocketAddr::new(opts.bind, 0))
            .await
            .expect("bind the API-server double");
        let mut addr = listener.local_addr().expect("the double's local address");
        if addr.ip().is_unspecified() {
            // Listening everywhere; this process reaches it on loopback.
            addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let inner = Inner {
            shared,
            addr,
            accept: tokio::sync::Mutex::new(Some(accept)),
        };
        ApiServer {
            inner: Arc::new(inner),
        }
    }

    /// Serves (`true`, the default) or hides every version of the resource
    /// `plural` (`"mappings"`, `"httproutes"`): hidden, its paths answer 404 and
    /// discovery leaves it out (a group left with nothing is not found), as
    /// when its CRD is not installed. Stored objects are kept; open watches of
    /// it end. Showing it again is the CRD "appearing".
    pub fn set_served(&self, plural: &str, served: bool) {
        let ids = resources::RESOURCES
            .iter()
            .enumerate()
            .filter(|(_, r)| r.plural.eq_ignore_ascii_case(plural))
            .map(|(i, _)| i);
        {
            let mut hidden = self
                .inner
                .shared
                .hidden
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for i in ids {
                if served {
                    hidden.remove(&i);
                } else {
                    hidden.insert(i);
                }
            }
        }
        if !served {
            self.inner.shared.drop_watches();
        }
    }

    /// Where it listens (the same across [`stop`](Self::stop)/[`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig with one cluster (this server, plain HTTP), one user, and one
    /// current context whose namespace is `default`. The user carries the token
    /// currently required ([`Options::require_token`], [`set_token`](Self::set_token)),
    /// or no credentials when none is.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url(), self.inner.shared.token().as_deref())
    }

    /// [`kubeconfig_yaml`](Self::kubeconfig_yaml) whose user presents `token`
    /// (whether or not the server accepts it).
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        kubeconfig_yaml(&self.url(), Some(token))
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `dir/kubeconfig` and returns that path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml()).expect("write the double's kubeconfig");
        path
    }

    /// A kube-rs client configured from [`kubeconfig_yaml`](Self::kubeconfig_yaml).
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig_yaml()).await
    }

    /// A kube-rs client presenting `token`, from
    /// [`kubeconfig_yaml_with_token`](Self::kubeconfig_yaml_with_token).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        client_from(&self.kubeconfig_yaml_with_token(token)).await
    }

    /// Changes the bearer token required from the next request on (`None`: no
    /// authentication), e.g. to revoke a client's credentials. As on a real API
    /// server, watches already open are not ended; [`drop_watches`](Self::drop_watches)
    /// makes their clients come back and meet the new token.
    pub fn set_token(&self, token: Option<&str>) {
        *self
            .inner
            .shared
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = token.map(str::to_string);
    }

    /// Requests refused with `401 Unauthorized` so far.
    pub fn unauthorized_requests(&self) -> usize {
        self.inner.shared.stats.unauthorized.load(Ordering::SeqCst)
    }

    /// Creates or replaces an object, as `kubectl apply` of the full object would:
    /// emits ADDED or MODIFIED (nothing when it is unchanged). Server-owned
    /// metadata is stamped; `.status` is kept when the object carries none. The
    /// namespace defaults to `default` (cluster-scoped objects have none). Returns
    /// the stored resourceVersion.
    pub fn apply<K>(&self, obj: &K) -> u64
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        self.apply_all(std::iter::once(obj))
    }

    /// [`apply`](Self::apply) for many objects under one lock (fast bulk loads);
    /// returns the last stored resourceVersion.
    pub fn apply_all<'a, K>(&self, objs: impl IntoIterator<Item = &'a K>) -> u64
    where
        K: Resource<DynamicType = ()> + Serialize + 'a,
    {
        let res = resource_of::<K>();
        let mut store = self.inner.shared.store();
        let mut last = store.rv();
        for obj in objs {
            let value = serde_json::to_value(obj).expect("serialize the applied object");
            let stored = store.upsert(res, value).unwrap_or_else(|e| {
                panic!(
                    "the double refused an applied {}: {}",
                    K::kind(&()),
                    e.message
                )
            });
            last = store::object_rv(&stored);
        }
        last
    }

    /// [`apply`](Self::apply) of a JSON object, for types without a Rust struct
    /// (`"links"`, `"Gateway"`, `"split.smi-spec.io/v1alpha2/trafficsplits"`: see
    /// [`get_json`](Self::get_json) for the names). Returns the stored resourceVersion.
    pub fn apply_json(&self, plural_or_kind: &str, obj: Value) -> u64 {
        let res = resources::find_by_name(plural_or_kind)
            .unwrap_or_else(|| panic!("the double does not serve {plural_or_kind:?}"));
        let stored = self
            .inner
            .shared
            .store()
            .upsert(res, obj)
            .unwrap_or_else(|e| {
                panic!(
                    "the double refused an applied {plural_or_kind}: {}",
                    e.message
                )
            });
        store::object_rv(&stored)
    }

    /// Deletes an object (namespace ignored for cluster-scoped types), emitting
    /// DELETED; false when there was none.
    pub fn delete<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        let res = resource_of::<K>();
        self.inner
            .shared
            .store()
            .delete(res, key_namespace(res, namespace), name)
            .is_ok()
    }

    /// [`delete`](Self::delete) by plural or kind, for types without a Rust
    /// struct (names as for [`get_json`](Self::get_json)).
    pub fn delete_json(&self, plural_or_kind: &str, namespace: &str, name: &str) -> bool {
        let res = resources::find_by_name(plural_or_kind)
            .unwrap_or_else(|| panic!("the double does not serve {plural_or_kind:?}"));
        self.inner
            .shared
            .store()
            .delete(res, key_namespace(res, namespace), name)
            .is_ok()
    }

    /// The stored object, typed (the namespace is ignored for cluster-scoped types).
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let res = resource_of::<K>();
        let obj = self
            .inner
            .shared
            .store()
            .get(res, key_namespace(res, namespace), name)?;
        Some(serde_json::from_value((*obj).clone()).expect("a stored object deserializes"))
    }

    /// The stored object as JSON, by plural or kind (`"mappings"`, `"Mapping"`; the
    /// first version served), or `apiVersion/plural` for one version
    /// (`"split.smi-spec.io/v1alpha3/trafficsplits"`). The namespace is
    /// ignored for cluster-scoped types.
    pub fn get_json(&self, plural_or_kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resources::find_by_name(plural_or_kind)
            .unwrap_or_else(|| panic!("the double does not serve {plural_or_kind:?}"));
        let obj = self
            .inner
            .shared
            .store()
            .get(res, key_namespace(res, namespace), name)?;
        Some((*obj).clone())
    }

    /// How many objects of one type are stored.
    pub fn count<K: Resource<DynamicType = ()>>(&self) -> usize {
        self.inner.shared.store().len(resource_of::<K>())
    }

    /// The current (latest committed) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.shared.store().rv()
    }

    /// PATCH requests received on any `/status` subresource (including refused ones).
    pub fn status_patches(&self) -> usize {
        self.inner
            .shared
            .stats
            .status_patches
            .load(Ordering::SeqCst)
    }

    /// Ends every open watch abruptly (the connection closes without the final
    /// chunk); no event committed after this returns reaches those streams.
    pub fn drop_watches(&self) {
        self.inner.shared.drop_watches();
    }

    /// Moves the compaction point to the current resourceVersion: a later watch
    /// from an older resourceVersion gets the 410 `Expired` ERROR event, and
    /// outstanding `continue` tokens expire.
    pub fn compact(&self) {
        self.inner.shared.store().compact();
    }

    /// An outage: stops accepting and closes every open connection (watches and
    /// requests in flight). State is kept, and the control API keeps working.
    pub async fn stop(&self) {
        let task = self.inner.accept.lock().await.take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.inner.shared.drop_watches();
        let open = &self.inner.shared.stats.connections;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Listens again on the same port with the same state (no-op when running).
    pub async fn restart(&self) {
        let mut accept = self.inner.accept.lock().await;
        if accept.is_some() {
            return;
        }
        let mut attempts = 0;
        let listener = loop {
            match listen(self.inner.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    rebind_pause().await;
                }
                Err(e) => panic!("re-bind the double on {}: {e}", self.inner.addr),
            }
        };
        *accept = Some(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.inner.shared),
        )));
    }

    /// Whether it is accepting connections (between [`stop`](Self::stop) and
    /// [`restart`](Self::restart) it is not).
    pub async fn is_running(&self) -> bool {
        self.inner.accept.lock().await.is_some()
    }

    /// Watch streams currently open, all resources.
    pub fn watch_count(&self) -> usize {
        let open = &self.inner.shared.stats.open_watches;
        open.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// Watch streams currently open on one resource.
    pub fn watch_count_of<K: Resource<DynamicType = ()>>(&self) -> usize {
        self.inner.shared.stats.open_watches[resource_of::<K>()].load(Ordering::SeqCst)
    }

    /// WATCH requests received so far, all resources (resumptions included).
    pub fn watch_requests(&self) -> usize {
        sum(&self.inner.shared.stats.watch_requests)
    }

    /// LIST requests served so far, all resources (each page counts).
    pub fn list_count(&self) -> usize {
        sum(&self.inner.shared.stats.lists)
    }

    /// LIST requests served so far on one resource (each page counts).
    pub fn list_count_of<K: Resource<DynamicType = ()>>(&self) -> usize {
        self.inner.shared.stats.lists[resource_of::<K>()].load(Ordering::SeqCst)
    }

    /// BOOKMARK events sent so far.
    pub fn bookmarks_sent(&self) -> usize {
        self.inner.shared.stats.bookmarks.load(Ordering::SeqCst)
    }

    /// Watches ended because they fell more than the event buffer behind.
    pub fn lagged_watches(&self) -> usize {
        self.inner.shared.stats.lagged.load(Ordering::SeqCst)
    }

    /// Changes the BOOKMARK period for watches opened from now on.
    pub fn set_bookmark_interval(&self, period: Duration) {
        self.inner
            .shared
            .bookmark_ms
            .store(duration_ms(period), Ordering::Relaxed);
    }

    /// The most recent requests (up to 10 000), oldest first, as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        let log = self
            .inner
            .shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }
}

/// A kubeconfig for `url` whose user presents `token` (none: no credentials).
fn kubeconfig_yaml(url: &str, token: Option<&str>) -> String {
    let user = match token {
        // A JSON string is a YAML string: any token is quoted safely.
        Some(token) => format!("\n    token: {}", Value::from(token)),
        None => " {}".to_string(),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: isthmus-double\n  cluster:\n    server: {url}\n\
         users:\n\
         - name: isthmus-double\n  user:{user}\n\
         contexts:\n\
         - name: isthmus-double\n  context:\n    cluster: isthmus-double\n    user: isthmus-double\n    namespace: default\n\
         current-context: isthmus-double\n"
    )
}

/// A kube-rs client from a kubeconfig document.
async fn client_from(kubeconfig_yaml: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml)
        .expect("the double's kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("the double's kubeconfig loads");
    kube::Client::try_from(config).expect("a client for the double")
}

/// The namespace objects of `res` are stored under: `""` for cluster-scoped types
/// (whatever the caller passed), `namespace` otherwise.
fn key_namespace(res: usize, namespace: &str) -> &str {
    if resources::RESOURCES[res].cluster_scoped {
        ""
    } else {
        namespace
    }
}

/// The table index of `K`; panics for a type the double does not serve.
fn resource_of<K: Resource<DynamicType = ()>>() -> usize {
    resources::find(&K::group(&()), &K::version(&()), &K::plural(&()))
        .unwrap_or_else(|| panic!("the API-server double does not serve {}", K::kind(&())))
}

/// One default counter per served resource.
fn per_resource<T: Default>() -> Vec<T> {
    resources::RESOURCES.iter().map(|_| T::default()).collect()
}

fn sum(counters: &[AtomicUsize]) -> usize {
    counters.iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Pause between re-bind attempts (a port just released can linger briefly).
async fn rebind_pause() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// A listener with `SO_REUSEADDR`, so a restart can take the same port back.
async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until aborted; aborting drops (closes) every connection.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _open = Gauge::new(&shared.stats.connections);
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handler::handle(Arc::clone(&shared), req));
    // Errors are the client going away or a watch being dropped on purpose.
    let _ = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
