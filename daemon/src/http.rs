//! The daemon's local HTTP endpoint, read-only and off the data path (the
//! datapath never waits for it): `GET /metrics` (Prometheus text) and
//! `GET /events?namespace=&pod=&verdict=` (JSON lines, streamed until the
//! client goes; `palisade events` reads it) and
//! `GET /explain?from=&to=&port=&protocol=` (`palisade explain` without a
//! file: the verdict on the snapshot the daemon last applied).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::broadcast::error::RecvError,
};

use crate::{
    events::{Filter, Hub, Line},
    metrics::Metrics,
    model::Snapshot,
};

/// The snapshot of the last reconcile pass, for `/explain`.
pub type SharedSnapshot = Arc<std::sync::Mutex<Arc<Snapshot>>>;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct State {
    pub metrics: Arc<Metrics>,
    pub hub: Option<Hub>,
    pub snapshot: SharedSnapshot,
}

const MAX_REQUEST: usize = 8 * 1024;

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn params(path: &str) -> Vec<(&str, String)> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, percent_decode(v)))
        .collect()
}

fn explain(state: &State, path: &str) -> Result<String, String> {
    let p = params(path);
    let get = |key: &str| p.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
    let need = |key: &str| get(key).ok_or_else(|| format!("missing {key}="));
    let snapshot = state
        .snapshot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    crate::explain::explain_text(
        &snapshot,
        need("from")?,
        need("to")?,
        need("port")?,
        get("protocol").unwrap_or("TCP"),
    )
}

fn filter_of(path: &str) -> Filter {
    let mut filter = Filter::default();
    for (k, v) in params(path) {
        let v = Some(v);
        match k {
            "namespace" => filter.namespace = v,
            "pod" => filter.pod = v,
            "verdict" => filter.verdict = v,
            _ => {}
        }
    }
    filter
}

async fn stream_events(mut stream: TcpStream, hub: &Hub, path: &str) -> std::io::Result<()> {
    let filter = filter_of(path);
    let mut rx = hub.subscribe();
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
        )
        .await?;
    loop {
        let line = match rx.recv().await {
            Ok(line) => line,
            // This client fell behind; say how much it missed.
            Err(RecvError::Lagged(n)) => {
                let note = format!("{{\"type\":\"skipped\",\"events\":{n}}}\n");
                stream.write_all(note.as_bytes()).await?;
                continue;
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        if let Line::Event(e) = line.as_ref()
            && !filter.matches(e)
        {
            continue;
        }
        let mut text = serde_json::to_string(line.as_ref()).unwrap_or_default();
        text.push('\n');
        stream.write_all(text.as_bytes()).await?;
    }
}

async fn respond(mut stream: TcpStream, state: State) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        // A client that never finishes its request is dropped.
        let Ok(read) = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
        else {
            return Ok(());
        };
        let n = read?;
        if n == 0 || request.len() > MAX_REQUEST {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let route = path.split('?').next().unwrap_or("");
    if method == "GET"
        && route == "/events"
        && let Some(hub) = &state.hub
    {
        return stream_events(stream, hub, path).await;
    }
    let (status, kind, body) = match (method, route) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        ("GET", "/explain") => match explain(&state, path) {
            Ok(text) => ("200 OK", "text/plain; charset=utf-8", text),
            Err(e) => (
                "400 Bad Request",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        },
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "palisade: /metrics (Prometheus), /events (JSON lines), /explain\n".to_owned(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves until the runtime stops.
pub async fn serve(listener: TcpListener, state: State) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = respond(stream, state).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_come_from_the_query() {
        let f = filter_of("/events?namespace=x&pod=x%2Fa&verdict=dropped&other=1");
        assert_eq!(f.namespace.as_deref(), Some("x"));
        assert_eq!(f.pod.as_deref(), Some("x/a"));
        assert_eq!(f.verdict.as_deref(), Some("dropped"));
        assert!(filter_of("/events").namespace.is_none());
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
