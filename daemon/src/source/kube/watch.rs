//! One reflector per watched resource, on a task of its own: it keeps a
//! store current (the reflector swaps a relisted store in whole, so a
//! relist after 410 Gone never shows a half-listed state), and records
//! what the source reports: synced yet, the newest resourceVersion seen,
//! the current error. Errors back off (kube-runtime's default: exponential
//! with jitter, capped) and the store keeps its last contents meanwhile.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use futures_util::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt as _, reflector, reflector::store::Writer, watcher},
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
    /// The current failure and since when; cleared by the next event.
    pub failing: Option<(Instant, String)>,
    /// The newest resourceVersion of any object seen.
    pub newest: u64,
}

/// Every watch's state, by resource name.
#[derive(Clone, Default)]
pub struct States(Arc<Mutex<BTreeMap<&'static str, StreamState>>>);

impl States {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, StreamState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
        let stream = watcher(api, config).default_backoff().modify(trim);
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
                            watcher::Event::InitDone => state.synced = true,
                            watcher::Event::Apply(o)
                            | watcher::Event::Delete(o)
                            | watcher::Event::InitApply(o) => {
                                state.newest = state.newest.max(resource_version(o));
                            }
                            watcher::Event::Init => {}
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
                        let since = state.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                        state.failing = Some((since, e.to_string()));
                    }
                }
            }
            let _ = wake.try_send(());
        }
    });
}
