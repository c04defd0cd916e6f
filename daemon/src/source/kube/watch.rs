//! One reflector per watched resource, on a task of its own: it keeps a
//! store current (the reflector swaps a relisted store in whole, so a
//! relist after 410 Gone never shows a half-listed state), and records
//! what the source reports: synced yet, the newest resourceVersion seen,
//! the current error. Errors back off (doubling, with jitter, capped at
//! [`MAX_BACKOFF`]) and the store keeps its last contents meanwhile.
//!
//! Recovery yields nothing: a watch that starts again on a quiet resource
//! sends no event (the reflector does not pass bookmarks on). But a failing
//! watch retries at least every [`MAX_BACKOFF`] and each failed retry is
//! reported at once, so a watch with no error for [`RECOVERED_AFTER`] has
//! started again. (A request that hangs longer than that, on a very slow
//! API server, reads as recovered until it fails.)

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _, reflector,
        reflector::{Lookup, ObjectRef, store::Writer},
        utils::Backoff,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// What one watch has told so far.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// The first full list has been seen.
    pub synced: bool,
    /// The API server does not serve this resource (its CRD is not
    /// installed): nothing of it exists, and the watch keeps retrying.
    pub absent: Option<String>,
    /// The current failure; cleared by the next event.
    pub failing: Option<Failing>,
    /// The newest resourceVersion of any object seen.
    pub newest: u64,
    /// The objects the store has taken an event for since a reader last
    /// took them (see [`States::take_touched`]).
    pub touched: Touched,
}

/// Which objects of a store may have changed, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Touched {
    Keys(BTreeSet<String>),
    /// Any: a list is under way or was (the first, or a relist after an
    /// error, which may have dropped or replaced any object), or more
    /// objects changed than a reader would look up one by one.
    #[default]
    All,
}

impl Touched {
    /// Past this many keys a reader reads the whole store instead.
    const MOST: usize = 1024;

    fn add(&mut self, key: String) {
        if let Self::Keys(keys) = self {
            keys.insert(key);
            if keys.len() > Self::MOST {
                *self = Self::All;
            }
        }
    }

    /// Both stores' changes, as one.
    pub fn join(mut self, other: Self) -> Self {
        match other {
            Self::Keys(keys) => keys.into_iter().for_each(|k| self.add(k)),
            Self::All => self = Self::All,
        }
        self
    }
}

/// An object's key as [`Touched`] names it: `namespace/name`, the
/// namespace empty for a cluster-scoped object.
pub fn key_of<K: Resource>(o: &K) -> String {
    let m = o.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// The store reference of the object [`key_of`] named.
pub fn object_ref<K: Lookup>(key: &str, dyntype: K::DynamicType) -> ObjectRef<K> {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let at = ObjectRef::new_with(name, dyntype);
    match namespace {
        "" => at,
        namespace => at.within(namespace),
    }
}

#[derive(Clone, Debug)]
pub struct Failing {
    pub since: Instant,
    pub last: Instant,
    pub error: String,
}

impl StreamState {
    /// The failure, unless the watch has since started again.
    pub fn failure(&self) -> Option<&Failing> {
        self.failing
            .as_ref()
            .filter(|f| f.last.elapsed() < RECOVERED_AFTER)
    }
}

pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
pub const RECOVERED_AFTER: Duration = Duration::from_secs(6);

/// Doubling from 250 ms up to [`MAX_BACKOFF`], each delay shortened by up
/// to a quarter at random, so that the nodes of a cluster do not retry
/// in step after an API server outage.
struct Retry {
    next: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(250);
}

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_BACKOFF);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Some(delay - delay / 4 * (nanos % 1000) / 1000)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Every watch's state, by resource name.
#[derive(Clone, Default)]
pub struct States(Arc<Mutex<BTreeMap<&'static str, StreamState>>>);

impl States {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, StreamState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the stores of `names` have taken in since the last call, all
    /// told; they start again from nothing. Taken before the stores are
    /// read: a reflector writes its store before the event is recorded
    /// here, so an event this misses is in the next call's, whether or
    /// not this reading's stores have it.
    pub fn take_touched<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Touched {
        let mut all = self.lock();
        names
            .into_iter()
            .fold(Touched::Keys(BTreeSet::new()), |acc, name| {
                let taken = all.get_mut(name).map_or(Touched::All, |s| {
                    std::mem::replace(&mut s.touched, Touched::Keys(BTreeSet::new()))
                });
                acc.join(taken)
            })
    }
}

fn resource_version<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The API server answered the list with 404: the resource is not served.
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
    )
}

/// Runs the watch of `name` until the process ends, waking `wake` after
/// every event or error.
#[allow(clippy::too_many_arguments)]
pub fn spawn<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
    states: States,
    wake: mpsc::Sender<()>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    states.lock().entry(name).or_default();
    tokio::spawn(async move {
        let retry = Retry { next: Retry::FIRST };
        let stream = watcher(api, config).backoff(retry).modify(trim);
        let mut stream = std::pin::pin!(reflector(writer, stream));
        while let Some(item) = stream.next().await {
            {
                let mut all = states.lock();
                let state = all.entry(name).or_default();
                match item {
                    Ok(event) => {
                        state.failing = None;
                        state.absent = None;
                        match &event {
                            // The store is swapped whole here: a reader
                            // that took `All` during the list read the old.
                            watcher::Event::InitDone => {
                                state.synced = true;
                                state.touched = Touched::All;
                            }
                            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                                state.newest = state.newest.max(resource_version(o));
                                // No key is built for a store whose next
                                // reader reads it whole anyway.
                                if matches!(state.touched, Touched::Keys(_)) {
                                    state.touched.add(key_of(o));
                                }
                            }
                            watcher::Event::InitApply(o) => {
                                state.newest = state.newest.max(resource_version(o));
                            }
                            watcher::Event::Init => state.touched = Touched::All,
                        }
                    }
                    Err(e) if not_served(&e) => {
                        if state.absent.is_none() {
                            tracing::info!(
                                "{name}: not served by the API server (no CRD?); retrying"
                            );
                        }
                        state.failing = None;
                        state.absent = Some(e.to_string());
                    }
                    Err(e) => {
                        metrics::counter!("palisade_source_watch_errors_total", "resource" => name)
                            .increment(1);
                        tracing::warn!("{name}: {e}");
                        let now = Instant::now();
                        // A failure that had ended starts a new count.
                        let since = state.failure().map_or(now, |f| f.since);
                        state.failing = Some(Failing {
                            since,
                            last: now,
                            error: e.to_string(),
                        });
                    }
                }
            }
            let _ = wake.try_send(());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Touched {
        Touched::Keys(list.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn touched_keys_join_and_give_way_to_all_past_the_most() {
        assert_eq!(keys(&["a/x"]).join(keys(&["b/y"])), keys(&["a/x", "b/y"]));
        assert_eq!(keys(&["a/x"]).join(Touched::All), Touched::All);
        let mut many = keys(&[]);
        for i in 0..Touched::MOST {
            many.add(format!("n/{i}"));
        }
        assert!(matches!(&many, Touched::Keys(k) if k.len() == Touched::MOST));
        assert_eq!(many.clone().join(keys(&["n/x"])), Touched::All);
        many.add("n/x".into());
        assert_eq!(many, Touched::All);
    }

    #[test]
    fn taking_what_was_touched_starts_again_from_nothing() {
        let states = States::default();
        assert_eq!(states.take_touched(["pods"]), Touched::All, "never listed");
        states.lock().entry("pods").or_default().touched = keys(&[]);
        states.lock().entry("nodes").or_default().touched = keys(&[]);
        if let Some(s) = states.lock().get_mut("pods") {
            s.touched.add("x/a".into());
        }
        assert_eq!(states.take_touched(["pods", "nodes"]), keys(&["x/a"]));
        assert_eq!(states.take_touched(["pods", "nodes"]), keys(&[]));
    }
}
