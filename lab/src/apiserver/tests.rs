//! The test double against the real `kube` client (typed and dynamic
//! `Api`s, `watcher` and `reflector`) and, for what a client hides
//! (chunks, bookmarks, error events), against raw HTTP.

use std::{
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config, ResourceExt as _,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

use super::ApiServer;

/// How long anything may take to converge before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn start() -> ApiServer {
    ApiServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap()
}

fn client(server: &ApiServer) -> Client {
    Client::try_from(Config::new(server.url().parse().unwrap())).unwrap()
}

fn pod(namespace: &str, name: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    })
}

fn typed(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test]
async fn typed_pods_are_created_listed_replaced_patched_and_deleted() {
    let server = start();
    let pods: Api<Pod> = Api::namespaced(client(&server), "x");
    let post = PostParams::default();
    for (name, node, app) in [("a", "n1", "web"), ("b", "n2", "web"), ("c", "n1", "db")] {
        let made = pods
            .create(&post, &typed(pod("x", name, node, app)))
            .await
            .unwrap();
        assert_eq!(made.namespace().as_deref(), Some("x"));
        assert!(made.uid().is_some_and(|u| u.len() == 36));
        assert!(made.creation_timestamp().is_some());
        assert_eq!(
            made.resource_version(),
            Some(server.resource_version().to_string())
        );
    }
    let names = |list: kube::api::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    for (labels, fields, want) in [
        ("", "", vec!["a", "b", "c"]),
        ("app=web", "", vec!["a", "b"]),
        ("", "spec.nodeName=n1", vec!["a", "c"]),
        ("app=web", "spec.nodeName=n1", vec!["a"]),
        ("app in (db,cache)", "", vec!["c"]),
        ("app!=web", "metadata.name!=a", vec!["c"]),
        ("", "spec.nodeName=n3", vec![]),
    ] {
        let list = pods
            .list(&ListParams::default().labels(labels).fields(fields))
            .await
            .unwrap();
        assert_eq!(
            list.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
        assert_eq!(names(list), want, "{labels:?} {fields:?}");
    }
    let unsupported = pods
        .list(&ListParams::default().fields("spec.hostname=a"))
        .await
        .unwrap_err();
    assert_eq!(api_error(unsupported), (400, "BadRequest".to_owned()));
    let everywhere: Api<Pod> = Api::all(client(&server));
    assert_eq!(
        names(everywhere.list(&ListParams::default()).await.unwrap()).len(),
        3
    );
    let elsewhere: Api<Pod> = Api::namespaced(client(&server), "y");
    assert!(names(elsewhere.list(&ListParams::default()).await.unwrap()).is_empty());

    let mut a = pods.get("a").await.unwrap();
    let uid = a.uid();
    a.labels_mut().insert("app".into(), "db".into());
    let replaced = pods.replace("a", &post, &a).await.unwrap();
    assert_eq!(replaced.uid(), uid);
    assert_eq!(replaced.labels().get("app").map(String::as_str), Some("db"));
    assert_ne!(replaced.resource_version(), a.resource_version());
    let stale = pods.replace("a", &post, &a).await.unwrap_err();
    assert_eq!(api_error(stale), (409, "Conflict".to_owned()));
    let twice = pods.create(&post, &a).await.unwrap_err();
    assert_eq!(api_error(twice).0, 400, "a resourceVersion on create");
    let mut again = typed(pod("x", "a", "n1", "web"));
    again.metadata.resource_version = None;
    let duplicate = pods.create(&post, &again).await.unwrap_err();
    assert_eq!(api_error(duplicate), (409, "AlreadyExists".to_owned()));

    let patched = pods
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().len(), 2);
    let strategic = pods
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "back"}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(strategic).0, 415);

    let revision = server.resource_version();
    let deleted = pods
        .delete("b", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(deleted.name_any(), "b");
    assert_eq!(deleted.resource_version(), Some((revision + 1).to_string()));
    let missing = pods.get("b").await.unwrap_err();
    assert_eq!(api_error(missing), (404, "NotFound".to_owned()));
    let missing = pods
        .delete("b", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_error(missing), (404, "NotFound".to_owned()));
    let left: Vec<String> = server
        .list("v1", "Pod")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["a", "c"]);
}

/// `name:app` of every pod in the reader, sorted.
fn seen(reader: &reflector::Store<Pod>) -> Vec<String> {
    let mut names: Vec<String> = reader
        .state()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p.name_any(),
                p.labels().get("app").map_or("", String::as_str)
            )
        })
        .collect();
    names.sort();
    names
}

async fn converges(reader: &reflector::Store<Pod>, want: &[&str], after: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = seen(reader);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}: the reflector has {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn relabel(server: &ApiServer, name: &str, app: &str) {
    let mut p = server.get("v1", "Pod", Some("x"), name).unwrap();
    p["metadata"]["labels"]["app"] = json!(app);
    server.replace(p).unwrap();
}

#[tokio::test]
async fn a_reflector_converges_through_changes_and_faults() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = ApiServer::start(listener).unwrap();
    for (name, node, app) in [("a", "n1", "web"), ("b", "n2", "web"), ("c", "n1", "db")] {
        server.create(pod("x", name, node, app)).unwrap();
    }
    let (reader, writer) = reflector::store::<Pod>();
    let config = watcher::Config::default()
        .fields("spec.nodeName=n1")
        .labels("app=web");
    let events = reflector(writer, watcher(Api::<Pod>::all(client(&server)), config))
        .default_backoff()
        .for_each(|_| std::future::ready(()));
    let task = tokio::spawn(events);
    converges(&reader, &["a:web"], "the first list").await;

    let mut b = server.get("v1", "Pod", Some("x"), "b").unwrap();
    b["spec"]["nodeName"] = json!("n1");
    server.replace(b).unwrap();
    converges(&reader, &["a:web", "b:web"], "b moved to n1").await;
    relabel(&server, "a", "db");
    relabel(&server, "c", "web");
    converges(&reader, &["b:web", "c:web"], "a left, c entered").await;
    server.delete("v1", "Pod", Some("x"), "b").unwrap();
    converges(&reader, &["c:web"], "b was deleted").await;

    // A dropped watch resumes where it was: no relist.
    let lists = server.list_requests();
    server.drop_watches();
    server.create(pod("x", "d", "n1", "web")).unwrap();
    converges(&reader, &["c:web", "d:web"], "a dropped watch").await;
    assert_eq!(server.list_requests(), lists, "a dropped watch relisted");

    // Writes it missed, then compacted away: it must relist.
    server.set_unavailable(true);
    server.drop_watches();
    server.create(pod("x", "e", "n1", "web")).unwrap();
    server.delete("v1", "Pod", Some("x"), "d").unwrap();
    server.compact();
    server.set_unavailable(false);
    converges(&reader, &["c:web", "e:web"], "a compaction").await;
    assert!(server.list_requests() > lists, "no relist after a 410");

    // An API server restart on the same address, with writes while down.
    server.stop();
    server.create(pod("x", "f", "n1", "web")).unwrap();
    relabel(&server, "c", "db");
    let mut server = server.restart(TcpListener::bind(addr).unwrap()).unwrap();
    assert_eq!(server.addr(), addr);
    converges(&reader, &["e:web", "f:web"], "a restart").await;
    server.delete("v1", "Pod", Some("x"), "e").unwrap();
    converges(&reader, &["f:web"], "a delete after the restart").await;

    task.abort();
    server.stop();
    server.stop();
}

#[tokio::test]
async fn dynamic_palisade_policies_list_and_watch() {
    let server = start();
    let gvk = GroupVersionKind::gvk("palisade.dev", "v1alpha1", "PalisadeNetworkPolicy");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "palisadenetworkpolicies");
    let api: Api<DynamicObject> = Api::namespaced_with(client(&server), "x", &resource);
    let policy = |name: &str, port: u16| {
        DynamicObject::new(name, &resource)
            .within("x")
            .data(json!({"spec": {"podSelector": {}, "ingress": [{"ports": [port]}]}}))
    };
    let made = api
        .create(&PostParams::default(), &policy("p1", 80))
        .await
        .unwrap();
    assert_eq!(made.data["spec"]["ingress"][0]["ports"][0], 80);
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let from = list.metadata.resource_version.unwrap();

    let mut events = api
        .watch(&WatchParams::default().timeout(10), &from)
        .await
        .unwrap()
        .boxed();
    let mut p2 = server
        .create(json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "PalisadeNetworkPolicy",
            "metadata": {"name": "p2", "namespace": "x"},
            "spec": {"podSelector": {}},
        }))
        .unwrap();
    // Another namespace: not in this watch.
    server
        .create(json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "PalisadeNetworkPolicy",
            "metadata": {"name": "p2", "namespace": "y"},
        }))
        .unwrap();
    p2["spec"]["egress"] = json!([]);
    let p2 = server.replace(p2).unwrap();
    let gone = server
        .delete(
            "palisade.dev/v1alpha1",
            "PalisadeNetworkPolicy",
            Some("x"),
            "p1",
        )
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Added(o) => got.push(("added", o.name_any(), o.resource_version())),
            WatchEvent::Modified(o) => {
                assert!(o.data["spec"]["egress"].is_array());
                got.push(("modified", o.name_any(), o.resource_version()));
            }
            WatchEvent::Deleted(o) => got.push(("deleted", o.name_any(), o.resource_version())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let rv = |o: &Value| o["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    assert_eq!(got[0].0, "added");
    assert_eq!(got[1], ("modified", "p2".to_owned(), rv(&p2)));
    assert_eq!(got[2], ("deleted", "p1".to_owned(), rv(&gone)));

    // The cluster-scoped kind, at its own path.
    let cluster = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("palisade.dev", "v1alpha1", "PalisadeClusterNetworkPolicy"),
        "palisadeclusternetworkpolicies",
    );
    let all: Api<DynamicObject> = Api::all_with(client(&server), &cluster);
    let made = all
        .create(
            &PostParams::default(),
            &DynamicObject::new("everyone", &cluster),
        )
        .await
        .unwrap();
    assert_eq!(made.namespace(), None);
    assert_eq!(all.get("everyone").await.unwrap().uid(), made.uid());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn long_lists_come_in_consistent_chunks() {
    let server = start();
    for i in 0..1_200 {
        server
            .create(pod("x", &format!("p{i:04}"), "n1", "web"))
            .unwrap();
    }
    let pods: Api<Pod> = Api::all(client(&server));
    let mut params = ListParams::default().limit(500);
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    let mut revisions = Vec::new();
    loop {
        let page = pods.list(&params).await.unwrap();
        sizes.push(page.items.len());
        revisions.push(page.metadata.resource_version.clone());
        names.extend(page.items.iter().map(|p| p.name_any()));
        if sizes.len() == 1 {
            // Not in the rest of a list that started before it.
            server.create(pod("x", "p0999a", "n1", "web")).unwrap();
            server.delete("v1", "Pod", Some("x"), "p1100").unwrap();
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(sizes, [500, 500, 200]);
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
    let want: Vec<String> = (0..1_200).map(|i| format!("p{i:04}")).collect();
    assert_eq!(names, want);

    // A token from before a compaction is expired, as in the real one.
    let first = pods.list(&ListParams::default().limit(500)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    server.create(pod("x", "late", "n1", "web")).unwrap();
    server.compact();
    let expired = pods
        .list(&ListParams::default().limit(500).continue_token(&token))
        .await
        .unwrap_err();
    assert_eq!(api_error(expired), (410, "Expired".to_owned()));

    // The watcher pages its first list the same way.
    let (reader, writer) = reflector::store::<Pod>();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(pods, watcher::Config::default().page_size(500)),
        )
        .default_backoff()
        .for_each(|_| std::future::ready(())),
    );
    let lists = server.list_requests();
    tokio::time::timeout(PATIENCE, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 1_201);
    assert_eq!(server.list_requests() - lists, 3);
    task.abort();
}

/// A raw HTTP/1.1 exchange, to see what a client library hides.
struct Raw {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Raw {
    async fn get(addr: SocketAddr, target: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        Raw {
            reader,
            status,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk of a chunked body, `None` at its end.
    async fn chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        tokio::time::timeout(PATIENCE, self.reader.read_line(&mut size))
            .await
            .unwrap()
            .unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        (size > 0).then(|| String::from_utf8(data).unwrap())
    }

    /// The next watch event, as one chunk holding one JSON line.
    async fn event(&mut self) -> Option<(String, Value)> {
        let chunk = self.chunk().await?;
        assert!(
            chunk.ends_with('\n') && chunk.matches('\n').count() == 1,
            "{chunk:?}"
        );
        let event: Value = serde_json::from_str(&chunk).unwrap();
        Some((
            event["type"].as_str().unwrap().to_owned(),
            event["object"].clone(),
        ))
    }

    /// The whole body, chunked or not.
    async fn body(mut self) -> Value {
        let mut text = String::new();
        if self.header("transfer-encoding") == Some("chunked") {
            while let Some(chunk) = self.chunk().await {
                text.push_str(&chunk);
            }
        } else {
            self.reader.read_to_string(&mut text).await.unwrap();
        }
        serde_json::from_str(&text).unwrap()
    }
}

fn revision_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn watch_streams_bookmark_every_write_and_expire_old_versions() {
    let server = start();
    server.create(pod("x", "a", "n1", "web")).unwrap();
    let from = server.resource_version();
    let path = format!(
        "/api/v1/namespaces/x/pods?watch=true&resourceVersion={from}&allowWatchBookmarks=true&labelSelector=app%3Dweb"
    );
    let mut watch = Raw::get(server.addr(), &path).await;
    assert_eq!(watch.status, 200);
    assert_eq!(watch.header("transfer-encoding"), Some("chunked"));

    // A write to another kind: no event, but a bookmark at its revision.
    server
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "c", "namespace": "x"}}))
        .unwrap();
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(object["kind"], "Pod");
    assert_eq!(object["apiVersion"], "v1");
    assert_eq!(revision_of(&object), server.resource_version());

    let b = server.create(pod("x", "b", "n1", "web")).unwrap();
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!((kind.as_str(), &object), ("ADDED", &b));
    assert_eq!(watch.event().await.unwrap().0, "BOOKMARK");
    // Not matching: only the bookmark.
    server.create(pod("x", "c", "n1", "db")).unwrap();
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(revision_of(&object), server.resource_version());
    // Leaving the selector is a deletion at the revision it left.
    relabel(&server, "b", "db");
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(kind, "DELETED");
    assert_eq!(object["metadata"]["labels"]["app"], "web");
    assert_eq!(revision_of(&object), server.resource_version());
    assert_eq!(watch.event().await.unwrap().0, "BOOKMARK");
    relabel(&server, "c", "web");
    assert_eq!(watch.event().await.unwrap().0, "ADDED");
    assert_eq!(watch.event().await.unwrap().0, "BOOKMARK");
    let gone = server.delete("v1", "Pod", Some("x"), "a").unwrap();
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(
        (kind.as_str(), revision_of(&object)),
        ("DELETED", revision_of(&gone))
    );
    assert_eq!(watch.event().await.unwrap().0, "BOOKMARK");
    server.drop_watches();
    assert_eq!(watch.event().await, None, "the stream did not end");

    // A replay: from the first version, every change since, in order.
    let mut replay = Raw::get(
        server.addr(),
        &format!("/api/v1/namespaces/x/pods?watch=1&resourceVersion={from}"),
    )
    .await;
    let mut kinds = Vec::new();
    for _ in 0..5 {
        kinds.push(replay.event().await.unwrap().0);
    }
    assert_eq!(kinds, ["ADDED", "ADDED", "MODIFIED", "MODIFIED", "DELETED"]);

    // After a compaction the same version is too old: one ERROR, then the end.
    server.compact();
    let mut old = Raw::get(
        server.addr(),
        &format!("/api/v1/pods?watch=true&resourceVersion={from}"),
    )
    .await;
    assert_eq!(old.status, 200);
    let (kind, status) = old.event().await.unwrap();
    assert_eq!(kind, "ERROR");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 410);
    assert_eq!(status["reason"], "Expired");
    assert_eq!(old.event().await, None);
    drop(replay);
}

#[tokio::test]
async fn idle_watches_bookmark_and_time_out() {
    let server = start();
    server.create(pod("x", "a", "n1", "web")).unwrap();
    let started = Instant::now();
    let mut watch = Raw::get(
        server.addr(),
        "/api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=5",
    )
    .await;
    // No version: the state now first.
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(
        (kind.as_str(), object["metadata"]["name"].as_str()),
        ("ADDED", Some("a"))
    );
    let (kind, object) = watch.event().await.unwrap();
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(revision_of(&object), server.resource_version());
    assert!(started.elapsed() >= super::BOOKMARK_EVERY);
    while let Some((kind, _)) = watch.event().await {
        assert_eq!(kind, "BOOKMARK");
    }
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_secs(5) && lasted < Duration::from_secs(8),
        "{lasted:?}"
    );

    // The end of initial events is marked for streaming lists.
    let mut stream = Raw::get(
        server.addr(),
        "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(stream.event().await.unwrap().0, "ADDED");
    let (kind, object) = stream.event().await.unwrap();
    assert_eq!(kind, "BOOKMARK");
    assert_eq!(
        object["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn errors_are_statuses_and_faults_apply_to_every_request() {
    let server = start();
    let missing = Raw::get(server.addr(), "/api/v1/namespaces/x/pods/nope").await;
    assert_eq!(missing.status, 404);
    let status = missing.body().await;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert_eq!(status["message"], "pods \"nope\" not found");
    let unknown = Raw::get(server.addr(), "/apis/apps/v1/deployments").await;
    assert_eq!(unknown.status, 404);
    let one = Raw::get(server.addr(), "/api/v1/namespaces/x/pods/nope?watch=true").await;
    assert_eq!(one.status, 405);
    let version = Raw::get(server.addr(), "/version").await;
    assert_eq!(version.status, 200);
    assert_eq!(version.body().await["major"], "1");

    server.set_unavailable(true);
    let down = Raw::get(server.addr(), "/api/v1/pods").await;
    assert_eq!(down.status, 503);
    assert_eq!(down.header("retry-after"), Some("1"));
    assert_eq!(down.body().await["reason"], "ServiceUnavailable");
    server.set_unavailable(false);
    let up = Raw::get(server.addr(), "/api/v1/pods").await;
    assert_eq!(up.status, 200);
    let list = up.body().await;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"], json!([]));

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(Raw::get(server.addr(), "/api/v1/pods").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);

    // A lab write of a kind that is not served says so.
    let err = server
        .create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}))
        .unwrap_err();
    assert_eq!(err.code(), 404);
    // apply creates, then replaces whatever version it names.
    let made = server.apply(pod("x", "a", "n1", "web")).unwrap();
    let mut stale = made.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["spec"]["nodeName"] = json!("n2");
    let applied = server.apply(stale).unwrap();
    assert_eq!(applied["metadata"]["uid"], made["metadata"]["uid"]);
    assert_eq!(applied["spec"]["nodeName"], "n2");
    assert_eq!(server.list("v1", "Pod").len(), 1);
    assert!(server.list("apps/v1", "Deployment").is_empty());
}
