//! Watch streams: newline-delimited JSON events, one per chunk, replayed
//! from the store's history after the asked resourceVersion and then live,
//! with the request's namespace and selectors applied the way the real
//! watch cache applies them (an object that leaves the selector is
//! DELETED, one that enters it ADDED).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};

use super::{
    error::ApiError,
    resources::Resource,
    select::Selector,
    store::{Change, ChangeKind, Store},
};

/// How often an idle stream with bookmarks says where it is; the real
/// server waits about a minute, which would only slow the lab down.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(3);

/// The annotation on the bookmark that ends `sendInitialEvents`.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// ADDED for every object now, then the changes (`resourceVersion`
    /// unset or "0"; with `sendInitialEvents=true`, followed by the bookmark
    /// that marks their end).
    Now { end_bookmark: bool },
    /// The changes after this revision.
    After(u64),
}

/// What a watch request asked.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Duration,
}

/// A stream's state between chunks.
pub struct Watch {
    store: Arc<Store>,
    request: WatchRequest,
    /// The revision the client has been brought up to; `None` until the
    /// first catch-up.
    seen: Option<u64>,
    lines: VecDeque<Bytes>,
    revisions: watch::Receiver<u64>,
    drops: watch::Receiver<u64>,
    deadline: Instant,
    next_bookmark: Instant,
    done: bool,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    // Serializing a `Value` cannot fail; an empty object stands in anyway.
    if serde_json::to_writer(&mut text, object).is_err() {
        text.extend_from_slice(b"{}");
    }
    text.extend_from_slice(b"}\n");
    Bytes::from(text)
}

fn with_revision(object: &Value, revision: u64) -> Value {
    let mut object = object.clone();
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".to_owned(), json!(revision.to_string()));
    }
    object
}

impl Watch {
    pub fn new(store: Arc<Store>, request: WatchRequest, drops: watch::Receiver<u64>) -> Self {
        let revisions = store.subscribe();
        let now = Instant::now();
        Watch {
            deadline: now + request.timeout,
            next_bookmark: now + BOOKMARK_EVERY,
            seen: None,
            lines: VecDeque::new(),
            store,
            request,
            revisions,
            drops,
            done: false,
        }
    }

    fn bookmark(&self, revision: u64, end_of_initial_events: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if end_of_initial_events {
            metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let object = json!({
            "kind": self.request.resource.kind,
            "apiVersion": self.request.resource.api_version(),
            "metadata": metadata,
        });
        line("BOOKMARK", &object)
    }

    fn fail(&mut self, error: &ApiError) {
        self.lines.push_back(line("ERROR", &error.status()));
        self.done = true;
    }

    /// The event a change makes for this watch, if any.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if self
            .request
            .namespace
            .as_deref()
            .is_some_and(|ns| change.key.0 != ns)
        {
            return None;
        }
        let selector = &self.request.selector;
        let now = selector.matches(&change.object);
        match change.kind {
            ChangeKind::Added => now.then(|| line("ADDED", &change.object)),
            ChangeKind::Deleted => now.then(|| line("DELETED", &change.object)),
            ChangeKind::Modified => {
                let before = change
                    .previous
                    .as_deref()
                    .is_some_and(|p| selector.matches(p));
                match (before, now) {
                    (true, true) => Some(line("MODIFIED", &change.object)),
                    (false, true) => Some(line("ADDED", &change.object)),
                    // Gone from the client's view: the state it last saw,
                    // at the revision it left.
                    (true, false) => change
                        .previous
                        .as_deref()
                        .map(|p| line("DELETED", &with_revision(p, change.revision))),
                    (false, false) => None,
                }
            }
        }
    }

    /// Queues what happened since the client was last brought up to date.
    fn catch_up(&mut self) {
        // Marked before reading, so a write after the read wakes us again.
        self.revisions.borrow_and_update();
        let seen = match (self.seen, self.request.start) {
            (Some(seen), _) => seen,
            (None, Start::After(revision)) => revision,
            (None, Start::Now { end_bookmark }) => {
                let (objects, revision) = self.store.snapshot(
                    self.request.resource,
                    self.request.namespace.as_deref(),
                    &self.request.selector,
                );
                self.lines.extend(objects.iter().map(|o| line("ADDED", o)));
                if end_bookmark {
                    let mark = self.bookmark(revision, true);
                    self.lines.push_back(mark);
                }
                self.seen = Some(revision);
                revision
            }
        };
        match self.store.changes_after(self.request.resource, seen) {
            Err(e) => self.fail(&e),
            Ok((changes, revision)) => {
                for change in &changes {
                    if let Some(event) = self.event(change) {
                        self.lines.push_back(event);
                    }
                }
                if revision != seen && self.request.bookmarks {
                    let mark = self.bookmark(revision, false);
                    self.lines.push_back(mark);
                }
                self.seen = Some(revision);
            }
        }
    }

    /// The next chunk, or `None` once the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Some(line);
            }
            // A dropped stream sends nothing written after the drop, so a
            // test that drops and then writes knows the client missed it.
            if self.done || self.drops.has_changed().unwrap_or(true) {
                return None;
            }
            if self.seen.is_none() {
                self.catch_up();
                continue;
            }
            tokio::select! {
                biased;
                _ = self.drops.changed() => self.done = true,
                changed = self.revisions.changed() => match changed {
                    Ok(()) => self.catch_up(),
                    Err(_) => self.done = true,
                },
                () = sleep_until(self.deadline) => self.done = true,
                () = sleep_until(self.next_bookmark), if self.request.bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                    if let Some(seen) = self.seen {
                        let mark = self.bookmark(seen, false);
                        self.lines.push_back(mark);
                    }
                }
            }
        }
    }
}
