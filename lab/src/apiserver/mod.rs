//! A **test double** of the Kubernetes API server: a small in-process HTTP
//! server that speaks the list/watch protocol well enough for the real
//! `kube` client (`Api`, `watcher`, `reflector`) to run against it, so that
//! the Kubernetes source of the daemon can be tested without a cluster.
//! It is not an API server: nothing here checks who asks or whether what
//! is stored makes sense.
//!
//! # What it implements
//!
//! - The kinds in [`RESOURCES`] (core v1 namespaces, pods, events,
//!   configmaps; events.k8s.io/v1 events; networking.k8s.io/v1
//!   networkpolicies; palisade.dev/v1alpha1 palisadenetworkpolicies and
//!   palisadeclusternetworkpolicies; security.kubearmor.com/v1
//!   kubearmorpolicies) at the real paths: `/api/v1/{plural}`,
//!   `/api/v1/namespaces/{ns}/{plural}[/{name}]`, `/apis/{group}/{version}/...`
//!   likewise, cluster-scoped `/.../{plural}/{name}`; and `/version`.
//!   Objects are stored as JSON.
//! - One resourceVersion counter for everything, as etcd's revision: every
//!   create, update and delete takes the next one. The server owns
//!   `metadata.resourceVersion`, `uid` (a random UUID v4),
//!   `creationTimestamp`, and `namespace` (from the path; removed on
//!   cluster-scoped kinds).
//! - LIST with `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists,
//!   `!key`, `>`, `<`), `fieldSelector` (`=`, `==`, `!=` on
//!   `metadata.name`, `metadata.namespace` and the fields the real server
//!   indexes for the kind, such as `spec.nodeName` and `status.phase` of
//!   pods; any other field is refused with 400 as by the real one), `limit`
//!   and `continue` (every page is read at the revision of the first,
//!   rebuilt from the history; a token older than the history gets 410
//!   Expired), `resourceVersion` with `resourceVersionMatch`: unset or "0"
//!   reads the latest; `NotOlderThan` reads the latest, or answers 504 for
//!   a version the store has not reached; `Exact` (and, as in the real
//!   one, a version with a `limit` and no match) reads exactly that
//!   revision, or 410 if it is older than the history.
//! - WATCH (`watch=true`): a chunked stream of JSON lines, one event a
//!   chunk, replayed from the history after `resourceVersion` (unset or
//!   "0": ADDED for every object now first), with the selectors applied as
//!   the watch cache applies them (an object that leaves the selector is
//!   sent DELETED, with its last matching state at the revision it left;
//!   one that enters it, ADDED). A version older than the history gets a
//!   single ERROR event with a 410 Expired `Status`, then the end, as from
//!   the real one. `allowWatchBookmarks=true` adds a BOOKMARK after every
//!   write to the store (of any kind: the client learns it is caught up)
//!   and every [`BOOKMARK_EVERY`] when idle. `sendInitialEvents=true`
//!   sends the state now and then the bookmark annotated
//!   `k8s.io/initial-events-end`. `timeoutSeconds` ends the stream.
//!   Deletions carry the deletion's resourceVersion.
//! - CREATE (POST, 201; `generateName` is honoured; 409 AlreadyExists),
//!   GET (404 NotFound), REPLACE (PUT; a stale `metadata.resourceVersion`
//!   gets 409 Conflict; no `resourceVersion` is an unconditional update;
//!   an update that changes nothing writes nothing, as in the real one),
//!   PATCH with `application/merge-patch+json`, DELETE (returns the
//!   deleted object; honours `preconditions` in the DeleteOptions body).
//!   Errors are `Status` objects with the reason and HTTP code of the real
//!   server.
//! - Faults for tests: [`ApiServer::compact`], [`ApiServer::drop_watches`],
//!   [`ApiServer::set_delay`], [`ApiServer::set_unavailable`] (503 with
//!   `Retry-After: 1`), and stop/restart over the same store (etcd
//!   survives an API server restart).
//! - The history keeps the last [`HISTORY`] writes.
//!
//! # What it does not do
//!
//! - No TLS, no authentication, no authorization (RBAC is not checked: a
//!   ClusterRole that lacks a verb is not caught here), no impersonation.
//! - No admission: no namespace lifecycle (objects may be created in a
//!   namespace that does not exist; deleting a namespace deletes nothing
//!   in it), no webhooks, no quota, no defaulting.
//! - No validation of objects against their schema (a Pod without
//!   containers is stored), and only light checks of names; no
//!   `metadata.generation`, no `managedFields`, no field managers.
//! - No strategic merge patch, JSON patch or server-side apply: those
//!   patch types get 415. No dry run (refused with 400).
//! - No subresources: `/status` is the object itself (a write there writes
//!   the whole object), and there is no `/log`, `/exec`, `/scale`,
//!   `/eviction`, `/binding`.
//! - No graceful deletion: no `deletionTimestamp`, no finalizers, no
//!   garbage collection of dependents; DELETE removes at once.
//!   DELETE on a collection (deletecollection) is not served.
//! - No discovery (`/api`, `/apis`, `/openapi`): clients must be told the
//!   resource, as `kube::Api` with a type or an `ApiResource` is.
//! - No YAML or protobuf, no `Table` output, no `PartialObjectMetadata`
//!   conversion (a metadata-only list or watch gets whole objects), no
//!   gzip, no HTTP/2, no watch over the legacy `/watch/` paths nor on one
//!   object's path (watch the collection with a `metadata.name` field
//!   selector, as kube's `watch_object` does).
//! - No waiting: a list or watch at a version the store has not reached
//!   is answered at once (504), where the real one first waits a while.
//! - GET of one object ignores `resourceVersion` (it reads the latest).
//! - core v1 and events.k8s.io/v1 events are two separate collections.
//! - No CRD registration: the palisade.dev and kubearmor kinds are served
//!   whether or not their CustomResourceDefinitions exist.

mod error;
#[cfg(test)]
mod fuzz_tests;
mod http;
mod meta;
mod patch;
mod resources;
mod select;
mod store;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;
use tokio::sync::oneshot;

pub use error::ApiError;
pub use resources::{RESOURCES, Resource};
pub use store::HISTORY;
pub use watch::BOOKMARK_EVERY;

use http::Shared;
use store::{Preconditions, Store};

/// The test API server (see the module documentation for what it is and
/// is not). It runs on a thread of its own with its own runtime, so that a
/// caller that blocks never stalls it.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

fn resource_of(api_version: &str, kind: &str) -> Result<&'static Resource, ApiError> {
    Resource::by_kind(api_version, kind).ok_or_else(|| ApiError::no_such_kind(api_version, kind))
}

/// The resource an object's `apiVersion` and `kind` name, and its namespace
/// (`default` when a namespaced object names none, as kubectl assumes).
fn place_of(object: &Value) -> Result<(&'static Resource, Option<String>), ApiError> {
    let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or("");
    let resource = resource_of(text("apiVersion"), text("kind"))?;
    let namespace = resource.namespaced.then(|| {
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .to_owned()
    });
    Ok((resource, namespace))
}

impl ApiServer {
    /// Serves on `listener` (already bound: the lab binds it inside a
    /// network namespace).
    pub fn start(listener: TcpListener) -> anyhow::Result<Self> {
        Self::serve(Arc::new(Shared::new(Arc::new(Store::default()))), listener)
    }

    fn serve(shared: Arc<Shared>, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr().context("the API server's listener")?;
        listener
            .set_nonblocking(true)
            .context("the API server's listener")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the API server's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("the API server's listener")?
        };
        let (stop, stopped) = oneshot::channel();
        let served = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".to_owned())
            .spawn(move || runtime.block_on(http::serve(listener, served, stopped)))
            .context("the API server's thread")?;
        Ok(ApiServer {
            shared,
            addr,
            running: Some(Running { stop, thread }),
        })
    }

    /// The same store served again on `listener`, as an API server that
    /// restarts over the same etcd: objects, revisions and history survive,
    /// watches do not. Faults set before stay set.
    pub fn restart(mut self, listener: TcpListener) -> anyhow::Result<Self> {
        self.stop();
        Self::serve(self.shared.clone(), listener)
    }

    /// Ends every watch stream, closes the listener and the connections
    /// (responses in flight get two seconds to finish). Idempotent; also
    /// done on drop.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            let _ = running.thread.join();
        }
    }

    /// Where it listens (listened, once stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The revision of the last write.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.revision()
    }

    /// Creates `object` (its `apiVersion`, `kind` and `metadata.namespace`
    /// pick the collection); returns it as stored.
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let (resource, namespace) = place_of(&object)?;
        self.shared
            .store
            .create(resource, namespace.as_deref(), object)
    }

    /// Replaces the object of that name (same uid, next resourceVersion; a
    /// `metadata.resourceVersion` in it must be the current one). One that
    /// changes nothing writes nothing.
    pub fn replace(&self, object: Value) -> Result<Value, ApiError> {
        let (resource, namespace) = place_of(&object)?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest("metadata.name is required".to_owned()))?
            .to_owned();
        self.shared
            .store
            .update(resource, namespace.as_deref(), &name, object)
    }

    /// Creates or replaces, whatever resourceVersion the object names.
    pub fn apply(&self, object: Value) -> Result<Value, ApiError> {
        let (resource, namespace) = place_of(&object)?;
        self.shared
            .store
            .apply(resource, namespace.as_deref(), object)
    }

    /// Deletes; returns the object with the deletion's resourceVersion.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let resource = resource_of(api_version, kind)?;
        self.shared
            .store
            .delete(resource, namespace, name, &Preconditions::default())
    }

    /// One object, as stored.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let resource = resource_of(api_version, kind)?;
        self.shared.store.get(resource, namespace, name)
    }

    /// Every object of the kind in every namespace, in key order (empty for
    /// a kind not served).
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        resource_of(api_version, kind)
            .map(|r| self.shared.store.all(r))
            .unwrap_or_default()
    }

    /// How many LIST requests have been served, watches not counted: a
    /// relisting client shows here.
    pub fn list_requests(&self) -> u64 {
        self.shared.lists()
    }

    /// Forgets the history, as an etcd compaction: a watch or a continue
    /// token from before the current revision gets 410 Expired.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Ends every open watch stream, cleanly, as an API server does when a
    /// watch times out: the client must watch again.
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Every response starts this much later (a slow API server); zero to
    /// stop.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// Every request gets 503 while on (an outage); writes by the lab still
    /// go to the store.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.set_unavailable(on);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
