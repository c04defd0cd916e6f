//! The daemon's local HTTP endpoint, read-only and off the data path (the
//! datapath never waits for it): `GET /metrics` (Prometheus text) and
//! `GET /events?namespace=&pod=&verdict=` (JSON lines, streamed until the
//! client goes; `palisade events` reads it) and
//! `GET /explain?from=&to=&port=&protocol=&family=`, or
//! `?pod=&exec=|read=|write=&from=` for a process or file operation
//! (`palisade explain` without a file: the verdict on the snapshot the
//! daemon last applied).
//!
//! `/metrics` and `/explain` read every pinned map or evaluate the policy
//! snapshot: 65-90 ms a scrape at 10,000 pods (`perf` of the churn run),
//! more with a full conntrack table. The daemon's runtime is one thread,
//! shared with the reconcile loop, so they run on a blocking thread
//! instead, one at a time: a scrape, or a client asking again and again,
//! never holds back a pass.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Frame,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::broadcast::error::RecvError};

use crate::{
    model::Snapshot,
    observe::{
        events::{Filter, Hub, Line},
        metrics::Metrics,
    },
};

/// The snapshot of the last reconcile pass, for `/explain`.
pub type SharedSnapshot = Arc<std::sync::Mutex<Arc<Snapshot>>>;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct State {
    pub metrics: Arc<Metrics>,
    pub hub: Option<Hub>,
    pub snapshot: SharedSnapshot,
    /// Why this node enforces no process or file rule (BPF LSM inactive),
    /// for `/explain` to say so beside what the rules decide.
    pub lsm_inactive: Option<String>,
    /// Why the node is not ready (the source not synced yet, a pod not
    /// placed, a write that failed), or `None` when the last pass is fully
    /// in force: `/readyz`.
    pub not_ready: SharedReadiness,
    /// Whether this listener may serve what reveals other pods' traffic
    /// and the policies (`/events`, `/explain`): only one that no pod can
    /// reach, on loopback. With `hostNetwork` a listener on the node's
    /// addresses is reachable from every pod of the node.
    pub private: bool,
    /// Held while a `/metrics` or `/explain` answer is worked out aside.
    pub aside: Aside,
}

/// One answer worked out at a time (see the module docs), shared by every
/// listener of the daemon.
#[derive(Clone, Default)]
pub struct Aside(Arc<tokio::sync::Mutex<()>>);

impl Aside {
    /// `work` on a blocking thread, after any other answer worked out aside
    /// has finished; `None` when it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // Held by the work itself: a client that goes away does not let
        // the next answer start while this one still runs.
        let turn = self.0.clone().lock_owned().await;
        let work = move || {
            let out = work();
            drop(turn);
            out
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::error!("an endpoint's answer failed: {e}");
                None
            }
        }
    }
}

/// What `/readyz` answers, set by the agent after every pass.
pub type SharedReadiness = Arc<std::sync::Mutex<Option<String>>>;

/// A client that has not sent its request head by then is dropped.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The smallest read buffer hyper allows: requests are one short line.
const MAX_REQUEST: usize = 8 * 1024;

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn explain(state: &State, query: &str) -> Result<String, String> {
    let p = params(query);
    let get = |key: &str| p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let need = |key: &str| get(key).ok_or_else(|| format!("missing {key}="));
    let snapshot = state
        .snapshot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(pod) = get("pod") {
        use crate::observe::explain_lsm::{Operation, explain_lsm};
        let asked: Vec<(Operation, &str)> = Operation::ALL
            .into_iter()
            .filter_map(|o| get(o.name()).map(|p| (o, p)))
            .collect();
        let [(operation, path)] = asked[..] else {
            return Err("with pod=, give exactly one of exec=, read=, write=".into());
        };
        let (_, mut text) = explain_lsm(&snapshot, pod, operation, path, get("from"))?;
        if snapshot
            .pods
            .iter()
            .any(|p| p.key() == pod && p.cgroup.is_none())
        {
            text.push_str(&format!(
                "  note: this node knows no cgroup of {pod} (not a local pod, or not known yet): \
                 nothing is enforced for it here\n"
            ));
        }
        if let Some(why) = &state.lsm_inactive {
            text.push_str(&format!(
                "  note: {}\n",
                crate::compile::lsm::lsm_inactive(why)
            ));
        }
        return Ok(text);
    }
    crate::observe::explain::explain_text(
        &snapshot,
        need("from")?,
        need("to")?,
        need("port")?,
        get("protocol").unwrap_or("TCP"),
        get("family"),
    )
}

fn filter_of(query: &str) -> Filter {
    let mut filter = Filter::default();
    for (k, v) in params(query) {
        let v = Some(v);
        match k.as_str() {
            "namespace" => filter.namespace = v,
            "pod" => filter.pod = v,
            "verdict" => filter.verdict = v,
            "type" => filter.kind = v,
            _ => {}
        }
    }
    filter
}

/// JSON lines of the events `filter` lets through, until the client goes.
fn stream_events(hub: &Hub, filter: Filter) -> Body {
    let lines =
        futures_util::stream::unfold((hub.subscribe(), filter), |(mut rx, filter)| async move {
            let text = loop {
                match rx.recv().await {
                    Ok(line) => {
                        let keep = match line.as_ref() {
                            Line::Event(e) => filter.matches(e),
                            Line::Lsm(e) => filter.matches_lsm(e),
                            Line::Lost { .. } => true,
                        };
                        if !keep {
                            continue;
                        }
                        let mut text = serde_json::to_string(line.as_ref()).unwrap_or_default();
                        text.push('\n');
                        break text;
                    }
                    // This client fell behind; say how much it missed.
                    Err(RecvError::Lagged(n)) => {
                        break format!("{{\"type\":\"skipped\",\"events\":{n}}}\n");
                    }
                    Err(RecvError::Closed) => return None,
                }
            };
            Some((Ok(Frame::data(Bytes::from(text))), (rx, filter)))
        });
    StreamBody::new(lines).boxed_unsync()
}

fn answer(status: StatusCode, kind: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

fn text(status: StatusCode, kind: &'static str, text: String) -> Response<Body> {
    answer(status, kind, Full::new(Bytes::from(text)).boxed_unsync())
}

async fn respond<B>(state: State, request: Request<B>) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        );
    }
    let query = request.uri().query().unwrap_or("");
    let path = request.uri().path();
    if !state.private && matches!(path, "/events" | "/explain") {
        return text(
            StatusCode::FORBIDDEN,
            TEXT,
            format!(
                "{path} is served on the daemon's loopback endpoint (--api-addr), not on an address pods can reach\n"
            ),
        );
    }
    match (path, &state.hub) {
        ("/events", Some(hub)) => answer(
            StatusCode::OK,
            "application/x-ndjson",
            stream_events(hub, filter_of(query)),
        ),
        ("/metrics", _) => {
            let metrics = state.metrics.clone();
            match state.aside.run(move || metrics.render()).await {
                Some(body) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                ),
                None => failed(),
            }
        }
        ("/explain", _) => {
            let (asked, query) = (state.clone(), query.to_owned());
            match state.aside.run(move || explain(&asked, &query)).await {
                Some(Ok(body)) => text(StatusCode::OK, TEXT, body),
                Some(Err(e)) => text(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
                None => failed(),
            }
        }
        // Live while the process answers: enforcement itself is pinned
        // and does not depend on it.
        ("/healthz", _) => text(StatusCode::OK, TEXT, "ok\n".to_owned()),
        ("/readyz", _) => match state
            .not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            None => text(StatusCode::OK, TEXT, "ready\n".to_owned()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        ("/", _) => text(
            StatusCode::OK,
            TEXT,
            "palisade: /metrics (Prometheus), /events (JSON lines), /explain, /healthz, /readyz\n"
                .to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

fn failed() -> Response<Body> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/plain",
        "the answer failed; the daemon's log says why\n".to_owned(),
    )
}

/// Serves until the runtime stops.
pub async fn serve(listener: TcpListener, state: State) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(respond(state, request).await) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_come_from_the_query() {
        let f = filter_of("namespace=x&pod=x%2Fa&verdict=dropped&other=1");
        assert_eq!(f.namespace.as_deref(), Some("x"));
        assert_eq!(f.pod.as_deref(), Some("x/a"));
        assert_eq!(f.verdict.as_deref(), Some("dropped"));
        assert!(filter_of("").namespace.is_none());
        assert_eq!(filter_of("pod=a%2").pod.as_deref(), Some("a%2"));
    }

    #[test]
    fn answers_worked_out_aside_leave_the_loop_free_and_take_turns() {
        use std::sync::mpsc::{RecvTimeoutError, channel};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let aside = Aside::default();
            let (release, released) = channel::<()>();
            let first = tokio::spawn({
                let aside = aside.clone();
                async move {
                    aside
                        .run(move || released.recv_timeout(Duration::from_secs(30)).is_ok())
                        .await
                }
            });
            let (started, second_started) = channel::<()>();
            let second = tokio::spawn({
                let aside = aside.clone();
                async move { aside.run(move || started.send(()).is_ok()).await }
            });
            // Both are polled: the first's work now waits on its thread.
            tokio::task::yield_now().await;
            // Worked out on the runtime's own thread, the first would have
            // blocked it, and this task would not run until it gave up.
            assert_eq!(
                second_started.recv_timeout(Duration::from_millis(200)),
                Err(RecvTimeoutError::Timeout),
                "the second answer began while the first was still worked out"
            );
            release.send(()).unwrap();
            assert_eq!(first.await.unwrap(), Some(true), "the loop was held");
            assert_eq!(second.await.unwrap(), Some(true));
            assert!(second_started.try_recv().is_ok());
            let panicked = aside.run(|| -> u8 { panic!("a bug in an answer") }).await;
            assert_eq!(panicked, None, "a panic is an answer that failed");
        });
    }
}
