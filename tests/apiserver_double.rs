//! Self-test of the API-server double: kube-rs's own client and watcher, used
//! directly (not through the gateway), see the double behave like an API server.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use isthmus::discovery::crd::{Mapping, MappingSpec};
use isthmus_tests::apiserver::{ApiServer, Options};
use isthmus_tests::eventually;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
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
