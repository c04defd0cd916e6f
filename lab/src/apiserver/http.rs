//! The HTTP side: HTTP/1.1 without TLS, the Kubernetes paths, one handler
//! per verb, the faults applied before any of them.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinSet,
};

use super::{
    error::ApiError,
    resources::Resource,
    select::Selector,
    store::{Preconditions, ReadAt, Store, continue_token, parse_continue_token},
    watch::{Start, Watch, WatchRequest},
};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The real server's limit on a request body.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// What a watch without `timeoutSeconds` gets (the real one picks between
/// 30 and 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest `timeoutSeconds` kept; more is taken as this. No client
/// waits longer, and a deadline that far (up to 2^64 s) overflows the
/// clock: the fuzzing found a watch with `timeoutSeconds` near `u64::MAX`
/// dropping its connection with a panic instead of streaming.
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long a stopping server waits for responses in flight to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every server on the same store shares: the store, the faults, and
/// what ends watch streams.
pub struct Shared {
    pub store: Arc<Store>,
    /// Bumped to end every open watch stream.
    pub drops: watch::Sender<u64>,
    delay_nanos: AtomicU64,
    unavailable: AtomicBool,
    lists: AtomicU64,
}

impl Shared {
    pub fn new(store: Arc<Store>) -> Self {
        Shared {
            store,
            drops: watch::Sender::new(0),
            delay_nanos: AtomicU64::new(0),
            unavailable: AtomicBool::new(false),
            lists: AtomicU64::new(0),
        }
    }

    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn set_unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::Relaxed);
    }

    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
}

/// Accepts connections until `stop`, then ends the watch streams, lets
/// the responses in flight finish (for a while) and closes everything.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, say: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // As Go's listeners (the real API server's) do: a watch
                // event is a small write after the last, which Nagle's
                // algorithm would hold until the client's delayed ACK, up
                // to 40 ms on loopback.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let mut closed = closed.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        // It only ever turns true.
                        _ = closed.changed() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    shared.drop_watches();
    closing.send_replace(true);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let delay = Duration::from_nanos(shared.delay_nanos.load(Ordering::Relaxed));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if shared.unavailable.load(Ordering::Relaxed) {
        let mut response = error(&ApiError::ServiceUnavailable(
            "the test API server is made unavailable".to_owned(),
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(response);
    }
    Ok(route(&shared, request).await.unwrap_or_else(|e| error(&e)))
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, &e.status())
}

/// The query, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean as Go's `strconv.ParseBool` reads it; absent is false.
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{key}: invalid boolean {other:?}"
            ))),
        }
    }

    fn text(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// All of a kind, in one namespace or (`None`) in all.
    Collection {
        resource: &'static Resource,
        namespace: Option<String>,
    },
    Object {
        resource: &'static Resource,
        namespace: Option<String>,
        name: String,
    },
}

fn unknown_path() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".to_owned())
}

/// `/api/v1/...` or `/apis/{group}/{version}/...`, then `{plural}[/{name}]`
/// or `namespaces/{ns}/{plural}[/{name}]`. A trailing `/status` names the
/// object itself: no subresource is kept apart.
fn parse_path(path: &str) -> Result<Target, ApiError> {
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(unknown_path()),
    };
    let find = |plural: &str, namespaced: bool| {
        Resource::by_path(group, version, plural).filter(|r| r.namespaced == namespaced)
    };
    let target = match rest {
        [plural] => Resource::by_path(group, version, plural).map(|resource| Target::Collection {
            resource,
            namespace: None,
        }),
        ["namespaces", ns, plural] if find(plural, true).is_some() => {
            find(plural, true).map(|resource| Target::Collection {
                resource,
                namespace: Some((*ns).to_owned()),
            })
        }
        ["namespaces", ns, plural, name] | ["namespaces", ns, plural, name, "status"] => {
            find(plural, true).map(|resource| Target::Object {
                resource,
                namespace: Some((*ns).to_owned()),
                name: (*name).to_owned(),
            })
        }
        [plural, name] | [plural, name, "status"] => {
            find(plural, false).map(|resource| Target::Object {
                resource,
                namespace: None,
                name: (*name).to_owned(),
            })
        }
        _ => None,
    };
    target.ok_or_else(unknown_path)
}

fn content_type<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn read_json(
    request: Request<Incoming>,
    allow_empty: bool,
) -> Result<Option<Value>, ApiError> {
    let kind = content_type(&request);
    let bytes = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::RequestEntityTooLarge(format!("the request body could not be read: {e}"))
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) && allow_empty {
        return Ok(None);
    }
    if !matches!(
        kind.as_str(),
        "" | "application/json" | "application/merge-patch+json"
    ) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json (this test API server speaks JSON only; got {kind})"
        )));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

async fn read_object(request: Request<Incoming>) -> Result<Value, ApiError> {
    read_json(request, false)
        .await?
        .ok_or_else(|| ApiError::BadRequest("the body is empty".to_owned()))
}

async fn route(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if request.uri().path() == "/version" {
        return Ok(respond(StatusCode::OK, &version()));
    }
    let target = parse_path(request.uri().path())?;
    let query = Query::parse(request.uri().query());
    let store = &shared.store;
    let method = request.method().clone();
    if method != Method::GET && query.get("dryRun").is_some() {
        return Err(ApiError::BadRequest(
            "dryRun is not implemented by the test API server".to_owned(),
        ));
    }
    match target {
        Target::Collection {
            resource,
            namespace,
        } => match method {
            Method::GET if query.flag("watch")? => watch(shared, resource, namespace, &query),
            Method::GET => list(shared, resource, namespace.as_deref(), &query),
            Method::POST if resource.namespaced && namespace.is_none() => Err(ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource: create in a namespace"
                    .to_owned(),
            )),
            Method::POST => {
                let body = read_object(request).await?;
                let created = store.create(resource, namespace.as_deref(), body)?;
                Ok(respond(StatusCode::CREATED, &created))
            }
            _ => Err(not_allowed()),
        },
        Target::Object {
            resource,
            namespace,
            name,
        } => {
            let ns = namespace.as_deref();
            let object = match method {
                Method::GET if query.flag("watch")? => {
                    return Err(ApiError::MethodNotAllowed(
                        "a watch on one object's path is not served by the test API server: \
                         watch the collection with fieldSelector=metadata.name=..."
                            .to_owned(),
                    ));
                }
                Method::GET => store.get(resource, ns, &name)?,
                Method::PUT => {
                    let body = read_object(request).await?;
                    store.update(resource, ns, &name, body)?
                }
                Method::PATCH => {
                    let kind = content_type(&request);
                    if kind != "application/merge-patch+json" {
                        return Err(ApiError::UnsupportedMediaType(format!(
                            "the body of the request was in an unknown format - accepted media types include: \
                             application/merge-patch+json (this test API server implements neither JSON patch, \
                             strategic merge patch nor server-side apply; got {kind:?})"
                        )));
                    }
                    let patch = read_object(request).await?;
                    store.merge_patch(resource, ns, &name, &patch)?
                }
                Method::DELETE => {
                    let options = read_json(request, true).await?.unwrap_or(Value::Null);
                    let field = |f: &str| {
                        options
                            .pointer(&format!("/preconditions/{f}"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    };
                    let preconditions = Preconditions {
                        uid: field("uid"),
                        resource_version: field("resourceVersion"),
                    };
                    store.delete(resource, ns, &name, &preconditions)?
                }
                _ => return Err(not_allowed()),
            };
            Ok(respond(StatusCode::OK, &object))
        }
    }
}

fn not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(
        "the server does not allow this method on the requested resource".to_owned(),
    )
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-palisade-test-double",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
    })
}

fn revision_of(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {text:?}")))
}

/// Which revision a list without a continue token reads, by the rules of
/// `resourceVersion` and `resourceVersionMatch`.
fn read_at(version: &str, matching: &str, limited: bool) -> Result<ReadAt, ApiError> {
    Ok(match (version, matching) {
        ("", "") => ReadAt::Latest,
        ("", _) => {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden unless resourceVersion is provided".to_owned(),
            ));
        }
        ("0", "" | "NotOlderThan") => ReadAt::Latest,
        ("0", "Exact") => {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".to_owned(),
            ));
        }
        // Before resourceVersionMatch, a version with a limit meant exactly it.
        (version, "") if limited => ReadAt::Exact(revision_of(version)?),
        (version, "" | "NotOlderThan") => ReadAt::NotOlderThan(revision_of(version)?),
        (version, "Exact") => ReadAt::Exact(revision_of(version)?),
        (_, other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported resourceVersionMatch {other:?}"
            )));
        }
    })
}

fn selector(resource: &Resource, query: &Query) -> Result<Selector, ApiError> {
    Selector::parse(
        resource,
        query.get("labelSelector"),
        query.get("fieldSelector"),
    )
    .map_err(ApiError::BadRequest)
}

fn list(
    shared: &Shared,
    resource: &'static Resource,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    shared.lists.fetch_add(1, Ordering::Relaxed);
    let selector = selector(resource, query)?;
    let limit = match query.text("limit") {
        "" => None,
        l => {
            let l: i64 = l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?;
            usize::try_from(l).ok().filter(|l| *l > 0)
        }
    };
    let (version, matching) = (
        query.text("resourceVersion"),
        query.text("resourceVersionMatch"),
    );
    let token = query.text("continue");
    let page = if token.is_empty() {
        let at = read_at(version, matching, limit.is_some())?;
        shared
            .store
            .list(resource, namespace, &selector, at, None, limit)?
    } else {
        if !version.is_empty() && version != "0" {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".to_owned(),
            ));
        }
        if !matching.is_empty() {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden when continue is provided".to_owned(),
            ));
        }
        let (revision, after) = parse_continue_token(token)?;
        shared
            .store
            .list(resource, namespace, &selector, ReadAt::Exact(revision), Some(&after), limit)
            .map_err(|e| match e {
                ApiError::Expired(_) => ApiError::Expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter."
                        .to_owned(),
                ),
                e => e,
            })?
    };
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(after) = &page.continue_after {
        metadata["continue"] = json!(continue_token(page.revision, after));
    }
    Ok(respond(
        StatusCode::OK,
        &json!({
            "apiVersion": resource.api_version(),
            "kind": resource.list_kind(),
            "metadata": metadata,
            "items": page.items,
        }),
    ))
}

fn watch(
    shared: &Shared,
    resource: &'static Resource,
    namespace: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let selector = selector(resource, query)?;
    let version = query.text("resourceVersion");
    let start = match (
        query
            .get("sendInitialEvents")
            .map(|_| query.flag("sendInitialEvents")),
        version,
    ) {
        (Some(Err(e)), _) => return Err(e),
        // Initial events are the state now, which is at least as new as
        // any version the client can have had.
        (Some(Ok(true)), _) => Start::Now { end_bookmark: true },
        (Some(Ok(false)), "" | "0") => Start::After(shared.store.revision()),
        (None, "" | "0") => Start::Now {
            end_bookmark: false,
        },
        (_, version) => Start::After(revision_of(version)?),
    };
    let timeout = match query.text("timeoutSeconds") {
        "" => DEFAULT_WATCH_TIMEOUT,
        t => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        )
        .min(MAX_WATCH_TIMEOUT),
    };
    let request = WatchRequest {
        resource,
        namespace,
        selector,
        start,
        bookmarks: query.flag("allowWatchBookmarks")?,
        timeout,
    };
    let watch = Watch::new(shared.store.clone(), request, shared.drops.subscribe());
    let chunks = futures_util::stream::unfold(watch, |mut watch| async move {
        let line = watch.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), watch))
    });
    let mut response = Response::new(StreamBody::new(chunks).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Result<(&'static str, Option<String>, Option<String>), u16> {
        match parse_path(path) {
            Ok(Target::Collection {
                resource,
                namespace,
            }) => Ok((resource.plural, namespace, None)),
            Ok(Target::Object {
                resource,
                namespace,
                name,
            }) => Ok((resource.plural, namespace, Some(name))),
            Err(e) => Err(e.code()),
        }
    }

    #[test]
    fn paths_name_what_the_real_ones_name() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(target("/api/v1/pods"), Ok(("pods", None, None)));
        assert_eq!(target("/api/v1/namespaces"), Ok(("namespaces", None, None)));
        assert_eq!(
            target("/api/v1/namespaces/x"),
            Ok(("namespaces", None, s("x")))
        );
        assert_eq!(
            target("/api/v1/namespaces/x/status"),
            Ok(("namespaces", None, s("x")))
        );
        assert_eq!(
            target("/api/v1/namespaces/x/pods"),
            Ok(("pods", s("x"), None))
        );
        assert_eq!(
            target("/api/v1/namespaces/x/pods/a"),
            Ok(("pods", s("x"), s("a")))
        );
        assert_eq!(
            target("/api/v1/namespaces/x/pods/a/status"),
            Ok(("pods", s("x"), s("a")))
        );
        assert_eq!(
            target("/apis/palisade.dev/v1alpha1/palisadeclusternetworkpolicies/all"),
            Ok(("palisadeclusternetworkpolicies", None, s("all")))
        );
        assert_eq!(
            target("/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/a%2Db"),
            Ok(("networkpolicies", s("x"), s("a-b")))
        );
        for missing in [
            "/",
            "/api/v2/pods",
            "/api/v1/pods/a",
            "/api/v1/namespaces/x/pods/a/log",
            "/apis/networking.k8s.io/v1/networkpolicies/a",
            "/api/v1/namespaces/x/palisadenetworkpolicies",
            "/apis/palisade.dev/v1alpha1/namespaces/x/palisadeclusternetworkpolicies",
        ] {
            assert_eq!(target(missing), Err(404), "{missing}");
        }
    }

    #[test]
    fn list_revisions_follow_the_version_rules() {
        assert_eq!(read_at("", "", true), Ok(ReadAt::Latest));
        assert_eq!(read_at("0", "", true), Ok(ReadAt::Latest));
        assert_eq!(read_at("0", "NotOlderThan", false), Ok(ReadAt::Latest));
        assert_eq!(read_at("7", "", false), Ok(ReadAt::NotOlderThan(7)));
        assert_eq!(read_at("7", "", true), Ok(ReadAt::Exact(7)));
        assert_eq!(read_at("7", "Exact", false), Ok(ReadAt::Exact(7)));
        assert_eq!(
            read_at("7", "NotOlderThan", true),
            Ok(ReadAt::NotOlderThan(7))
        );
        for (v, m) in [("", "Exact"), ("0", "Exact"), ("x", ""), ("7", "Newest")] {
            assert_eq!(
                read_at(v, m, false).map_err(|e| e.code()),
                Err(400),
                "{v:?} {m:?}"
            );
        }
    }
}
