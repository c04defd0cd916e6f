//! The objects, as etcd and the API server's registry would keep them: one
//! revision counter for everything, every write a change in a bounded
//! history (what watches replay and what lets a paged list be read at the
//! revision of its first page), and the object metadata the server owns
//! (uid, creationTimestamp, resourceVersion, namespace).
//!
//! The HTTP handlers and the lab's own writes go through the same methods,
//! so a write by the lab reaches watchers exactly like a client's.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{
    error::ApiError,
    meta::{name_suffix, new_uid, now_rfc3339},
    patch::merge_patch,
    resources::Resource,
    select::Selector,
};

/// How many changes are kept; a watch from before the oldest gets 410.
pub const HISTORY: usize = 10_000;

/// An object's place: namespace ("" when cluster-scoped) and name, in the
/// order etcd keys sort, which is the order lists come in.
pub type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    pub resource: &'static Resource,
    pub kind: ChangeKind,
    pub key: Key,
    /// The object after the write; for a deletion, the last state with the
    /// deletion's resourceVersion (what a DELETED event carries).
    pub object: Arc<Value>,
    /// The object before the write, `None` for a creation.
    pub previous: Option<Arc<Value>>,
}

/// Which revision a list reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    Latest,
    /// The latest, provided the store has reached this revision.
    NotOlderThan(u64),
    /// Exactly this one, rebuilt from the history.
    Exact(u64),
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    pub revision: u64,
    /// The last key returned, when more objects match after it.
    pub continue_after: Option<Key>,
}

/// A deletion's preconditions (`DeleteOptions.preconditions`).
#[derive(Clone, Debug, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub struct Store {
    state: Mutex<State>,
    revisions: watch::Sender<u64>,
}

struct State {
    revision: u64,
    /// Changes after this revision are all in `history`; reading or
    /// watching from before it is no longer possible.
    floor: u64,
    history_limit: usize,
    objects: HashMap<Resource, BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::with_history(HISTORY)
    }
}

fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

/// A non-empty string field of `metadata`.
fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".to_owned()))
}

/// Checks the body is an object of this kind, filling in `apiVersion`,
/// `kind` and an empty `metadata` where they are missing (as the real one
/// takes them from the path).
fn prepare(resource: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let api_version = resource.api_version();
    let Value::Object(fields) = object else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".to_owned(),
        ));
    };
    for (field, want) in [
        ("apiVersion", api_version.as_str()),
        ("kind", resource.kind),
    ] {
        match fields.get(field) {
            None | Some(Value::Null) => {
                fields.insert(field.to_owned(), Value::from(want));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "the {field} of the object ({other}) does not match the expected {field} ({want})"
                )));
            }
        }
    }
    match fields.get("metadata") {
        None | Some(Value::Null) => {
            fields.insert("metadata".to_owned(), Value::Object(Map::new()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "metadata must be an object".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The real server checks names per kind; a name that cannot be a path
/// segment is refused here because it could not be addressed afterwards.
fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '%'])
        || name.len() > 253
    {
        return Err(ApiError::BadRequest(format!("invalid name: {name:?}")));
    }
    Ok(())
}

fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(
            "resourceVersion".to_owned(),
            Value::from(revision.to_string()),
        );
    }
}

fn key_of(resource: &Resource, namespace: Option<&str>, name: &str) -> Result<Key, ApiError> {
    match (resource.namespaced, namespace) {
        (true, Some(ns)) if !ns.is_empty() => Ok((ns.to_owned(), name.to_owned())),
        (true, _) => Err(ApiError::BadRequest(format!(
            "{} are namespaced: a namespace is required",
            resource.qualified()
        ))),
        (false, _) => Ok((String::new(), name.to_owned())),
    }
}

impl State {
    fn table(&self, resource: &Resource) -> Option<&BTreeMap<Key, Arc<Value>>> {
        self.objects.get(resource)
    }

    fn current(&self, resource: &Resource, key: &Key) -> Result<Arc<Value>, ApiError> {
        self.table(resource)
            .and_then(|t| t.get(key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, &key.1))
    }

    /// Records a write at the next revision and returns the stored object.
    fn commit(
        &mut self,
        resource: &'static Resource,
        key: Key,
        kind: ChangeKind,
        mut object: Value,
    ) -> Value {
        self.revision += 1;
        set_resource_version(&mut object, self.revision);
        let stored = Arc::new(object);
        let table = self.objects.entry(*resource).or_default();
        let previous = match kind {
            ChangeKind::Deleted => table.remove(&key),
            ChangeKind::Added | ChangeKind::Modified => table.insert(key.clone(), stored.clone()),
        };
        self.history.push_back(Arc::new(Change {
            revision: self.revision,
            resource,
            kind,
            key,
            object: stored.clone(),
            previous,
        }));
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.revision;
            }
        }
        Value::clone(&stored)
    }

    fn create(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        prepare(resource, &mut object)?;
        // Refused, as by the real one: a client that sends one back on
        // create has mistaken a stored object for a new one.
        if meta_str(&object, "resourceVersion").is_some() {
            return Err(ApiError::BadRequest(
                "resourceVersion should not be set on objects to be created".to_owned(),
            ));
        }
        let namespace = match (
            resource.namespaced,
            namespace,
            meta_str(&object, "namespace"),
        ) {
            (false, _, _) => None,
            (true, Some(path), Some(body)) if path != body => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .to_owned(),
                ));
            }
            (true, Some(ns), _) | (true, None, Some(ns)) => Some(ns.to_owned()),
            (true, None, None) => None,
        };
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) => name.to_owned(),
            (None, Some(prefix)) => {
                let prefix = prefix.to_owned();
                // Like the real one, a generated name may collide; unlike
                // it, try again rather than answer 409.
                let free = |name: &String| {
                    key_of(resource, namespace.as_deref(), name)
                        .is_ok_and(|k| self.table(resource).is_none_or(|t| !t.contains_key(&k)))
                };
                (0..16)
                    .map(|_| format!("{prefix}{}", name_suffix()))
                    .find(free)
                    .unwrap_or_else(|| format!("{prefix}{}", name_suffix()))
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "name or generateName is required".to_owned(),
                ));
            }
        };
        check_name(&name)?;
        let key = key_of(resource, namespace.as_deref(), &name)?;
        if self.table(resource).is_some_and(|t| t.contains_key(&key)) {
            return Err(ApiError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                resource.qualified()
            )));
        }
        let m = meta_mut(&mut object)?;
        m.insert("name".to_owned(), Value::from(name));
        match namespace {
            Some(ns) => m.insert("namespace".to_owned(), Value::from(ns)),
            None => m.remove("namespace"),
        };
        m.insert("uid".to_owned(), Value::from(new_uid()));
        m.insert("creationTimestamp".to_owned(), Value::from(now_rfc3339()));
        Ok(self.commit(resource, key, ChangeKind::Added, object))
    }

    fn update(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        prepare(resource, &mut object)?;
        let key = key_of(resource, namespace, name)?;
        let current = self.current(resource, &key)?;
        if let Some(body) = meta_str(&object, "name").filter(|n| *n != name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body}) does not match the name on the URL ({name})"
            )));
        }
        if resource.namespaced && meta_str(&object, "namespace").is_some_and(|n| n != key.0) {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_owned(),
            ));
        }
        if let Some(rv) = meta_str(&object, "resourceVersion")
            && Some(rv) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::modified(resource, name));
        }
        if let (Some(asked), Some(uid)) = (meta_str(&object, "uid"), meta_str(&current, "uid"))
            && asked != uid
        {
            return Err(ApiError::Conflict(format!(
                "Precondition failed: UID in precondition: {asked}, UID in object meta: {uid}"
            )));
        }
        let m = meta_mut(&mut object)?;
        m.insert("name".to_owned(), Value::from(name));
        if resource.namespaced {
            m.insert("namespace".to_owned(), Value::from(key.0.clone()));
        } else {
            m.remove("namespace");
        }
        for owned in ["uid", "creationTimestamp", "resourceVersion"] {
            match meta(&current).and_then(|c| c.get(owned)) {
                Some(v) => m.insert(owned.to_owned(), v.clone()),
                None => m.remove(owned),
            };
        }
        // As in the real one, a write that changes nothing is no write: no
        // new resourceVersion, no event.
        if object == *current {
            return Ok(object);
        }
        Ok(self.commit(resource, key, ChangeKind::Modified, object))
    }

    fn delete(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Value, ApiError> {
        let key = key_of(resource, namespace, name)?;
        let current = self.current(resource, &key)?;
        for (field, asked, label) in [
            ("uid", &preconditions.uid, "UID"),
            (
                "resourceVersion",
                &preconditions.resource_version,
                "ResourceVersion",
            ),
        ] {
            if let Some(asked) = asked
                && Some(asked.as_str()) != meta_str(&current, field)
            {
                return Err(ApiError::Conflict(format!(
                    "Precondition failed: {label} in precondition: {asked}, {label} in object meta: {}",
                    meta_str(&current, field).unwrap_or("")
                )));
            }
        }
        Ok(self.commit(resource, key, ChangeKind::Deleted, Value::clone(&current)))
    }

    /// The objects of `resource` after `after` as they were at `revision`:
    /// the current ones, with every key a later change touched set back to
    /// what the first such change found.
    fn view_at(
        &self,
        resource: &Resource,
        revision: u64,
        after: Option<&Key>,
    ) -> BTreeMap<&Key, &Arc<Value>> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut view: BTreeMap<&Key, &Arc<Value>> = self
            .table(resource)
            .map(|t| t.range::<Key, _>((lower, Bound::Unbounded)).collect())
            .unwrap_or_default();
        let mut past: BTreeMap<&Key, Option<&Arc<Value>>> = BTreeMap::new();
        for change in self.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            if change.resource == resource && after.is_none_or(|a| change.key > *a) {
                past.insert(&change.key, change.previous.as_ref());
            }
        }
        for (key, then) in past {
            match then {
                Some(object) => view.insert(key, object),
                None => view.remove(key),
            };
        }
        view
    }
}

impl Store {
    pub fn with_history(limit: usize) -> Self {
        let start = 1;
        Store {
            state: Mutex::new(State {
                revision: start,
                floor: start,
                history_limit: limit.max(1),
                objects: HashMap::new(),
                history: VecDeque::new(),
            }),
            revisions: watch::Sender::new(start),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write and wakes the watchers if it wrote.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut state = self.lock();
        let before = state.revision;
        let result = f(&mut state);
        let after = state.revision;
        drop(state);
        if after != before {
            self.revisions.send_replace(after);
        }
        result
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Changes whenever the revision does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    pub fn get(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = key_of(resource, namespace, name)?;
        self.lock()
            .current(resource, &key)
            .map(|o| Value::clone(&o))
    }

    pub fn create(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.write(|s| s.create(resource, namespace, object))
    }

    /// Replaces the whole object (PUT): a `metadata.resourceVersion` in it
    /// must be the current one.
    pub fn update(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.write(|s| s.update(resource, namespace, name, object))
    }

    /// Creates or replaces, whatever resourceVersion the object names.
    pub fn apply(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let name = meta_str(&object, "name")
            .ok_or_else(|| ApiError::BadRequest("apply needs metadata.name".to_owned()))?
            .to_owned();
        let namespace = namespace
            .or(meta_str(&object, "namespace"))
            .map(str::to_owned);
        self.write(|s| {
            let key = key_of(resource, namespace.as_deref(), &name)?;
            if s.table(resource).is_some_and(|t| t.contains_key(&key)) {
                s.update(resource, namespace.as_deref(), &name, object)
            } else {
                s.create(resource, namespace.as_deref(), object)
            }
        })
    }

    pub fn merge_patch(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        self.write(|s| {
            let key = key_of(resource, namespace, name)?;
            let mut object = Value::clone(&*s.current(resource, &key)?);
            // A resourceVersion the patch names survives the merge and is
            // then checked like a PUT's; without one the current one is.
            merge_patch(&mut object, patch);
            s.update(resource, namespace, name, object)
        })
    }

    pub fn delete(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Value, ApiError> {
        self.write(|s| s.delete(resource, namespace, name, preconditions))
    }

    /// One page: objects after `after` in key order, in `namespace` if
    /// given, that `selector` matches, at most `limit`.
    pub fn list(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        selector: &Selector,
        at: ReadAt,
        after: Option<&Key>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let state = self.lock();
        let revision = match at {
            ReadAt::Latest => state.revision,
            ReadAt::NotOlderThan(n) | ReadAt::Exact(n) if n > state.revision => {
                return Err(ApiError::too_new());
            }
            ReadAt::NotOlderThan(_) => state.revision,
            ReadAt::Exact(n) if n < state.floor => {
                return Err(ApiError::too_old(n, state.floor));
            }
            ReadAt::Exact(n) => n,
        };
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        let view = state.view_at(resource, revision, after);
        let wanted = view
            .into_iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.0 == ns))
            .filter(|(_, o)| selector.matches(o));
        for (key, object) in wanted {
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(Value::clone(object));
            last = Some(key);
        }
        Ok(Page {
            items,
            revision,
            continue_after: last.filter(|_| more).cloned(),
        })
    }

    /// The matching objects now, and the revision they are at.
    pub fn snapshot(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Arc<Value>>, u64) {
        let state = self.lock();
        let objects = state
            .table(resource)
            .into_iter()
            .flat_map(|t| t.iter())
            .filter(|(k, o)| namespace.is_none_or(|ns| k.0 == ns) && selector.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        (objects, state.revision)
    }

    /// Every object of the kind, in every namespace.
    pub fn all(&self, resource: &Resource) -> Vec<Value> {
        self.lock()
            .table(resource)
            .map(|t| t.values().map(|o| Value::clone(o)).collect())
            .unwrap_or_default()
    }

    /// The changes to `resource` after revision `after`, and the revision
    /// they lead to (which later changes to other kinds may have moved).
    pub fn changes_after(
        &self,
        resource: &Resource,
        after: u64,
    ) -> Result<(Vec<Arc<Change>>, u64), ApiError> {
        let state = self.lock();
        if after < state.floor {
            return Err(ApiError::too_old(after, state.floor));
        }
        if after > state.revision {
            return Err(ApiError::too_new());
        }
        let start = state.history.partition_point(|c| c.revision <= after);
        let changes = state
            .history
            .range(start..)
            .filter(|c| c.resource == resource)
            .cloned()
            .collect();
        Ok((changes, state.revision))
    }

    /// Forgets the history, as an etcd compaction does.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.floor = state.revision;
    }
}

/// A continue token: the list's revision and the last key it returned.
/// Opaque to clients, as the real one is (which base64-encodes the same).
pub fn continue_token(revision: u64, key: &Key) -> String {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{revision}.{}.{}", hex(&key.0), hex(&key.1))
}

pub fn parse_continue_token(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let unhex = |s: &str| -> Option<String> {
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok()
    };
    let mut parts = token.split('.');
    let (Some(revision), Some(ns), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let revision = revision.parse().map_err(|_| bad())?;
    let key = (unhex(ns).ok_or_else(bad)?, unhex(name).ok_or_else(bad)?);
    Ok((revision, key))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pods() -> &'static Resource {
        Resource::by_path("", "v1", "pods").unwrap()
    }

    fn pod(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {}})
    }

    fn rv(object: &Value) -> u64 {
        meta_str(object, "resourceVersion")
            .unwrap()
            .parse()
            .unwrap()
    }

    fn names(page: &Page) -> Vec<&str> {
        page.items
            .iter()
            .map(|o| meta_str(o, "name").unwrap())
            .collect()
    }

    #[test]
    fn writes_stamp_metadata_and_bump_one_revision() {
        let store = Store::default();
        let start = store.revision();
        let a = store.create(pods(), Some("x"), pod("a", "web")).unwrap();
        assert_eq!(rv(&a), start + 1);
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(a["kind"], "Pod");
        assert_eq!(a["metadata"]["namespace"], "x");
        let uid = meta_str(&a, "uid").unwrap().to_owned();
        let ns = Resource::by_path("", "v1", "namespaces").unwrap();
        let n = store
            .create(
                ns,
                None,
                json!({"metadata": {"name": "x", "namespace": "y"}}),
            )
            .unwrap();
        assert_eq!(rv(&n), start + 2);
        assert!(n["metadata"].get("namespace").is_none());
        assert_ne!(meta_str(&n, "uid"), Some(uid.as_str()));

        let mut changed = a.clone();
        changed["spec"]["nodeName"] = json!("n1");
        let b = store.update(pods(), Some("x"), "a", changed).unwrap();
        assert_eq!(rv(&b), start + 3);
        assert_eq!(meta_str(&b, "uid"), Some(uid.as_str()));
        assert_eq!(
            b["metadata"]["creationTimestamp"],
            a["metadata"]["creationTimestamp"]
        );

        // The stale resourceVersion of `a` conflicts; no version is no check.
        let stale = store.update(pods(), Some("x"), "a", a.clone());
        assert!(matches!(stale, Err(ApiError::Conflict(_))), "{stale:?}");
        let mut unconditional = a.clone();
        unconditional["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        let c = store.update(pods(), Some("x"), "a", unconditional).unwrap();
        assert_eq!(rv(&c), start + 4);
        // Writing the same again changes nothing.
        let same = store.update(pods(), Some("x"), "a", c.clone()).unwrap();
        assert_eq!(rv(&same), start + 4);
        assert_eq!(store.revision(), start + 4);

        let dup = store.create(pods(), Some("x"), pod("a", "web"));
        assert!(matches!(dup, Err(ApiError::AlreadyExists(_))), "{dup:?}");
        let gone = store
            .delete(pods(), Some("x"), "a", &Preconditions::default())
            .unwrap();
        assert_eq!(rv(&gone), start + 5);
        let again = store.delete(pods(), Some("x"), "a", &Preconditions::default());
        assert_eq!(again.map_err(|e| e.code()), Err(404));
    }

    #[test]
    fn bodies_that_do_not_fit_the_request_are_refused() {
        let store = Store::default();
        for (ns, body) in [
            (
                Some("x"),
                json!({"apiVersion": "v2", "metadata": {"name": "a"}}),
            ),
            (
                Some("x"),
                json!({"kind": "Namespace", "metadata": {"name": "a"}}),
            ),
            (
                Some("x"),
                json!({"metadata": {"name": "a", "namespace": "y"}}),
            ),
            (
                Some("x"),
                json!({"metadata": {"name": "a", "resourceVersion": "3"}}),
            ),
            (Some("x"), json!({"metadata": {}})),
            (Some("x"), json!({"metadata": {"name": "a/b"}})),
            (Some("x"), json!({"metadata": 1})),
            (Some("x"), json!([])),
            (None, json!({"metadata": {"name": "a"}})),
        ] {
            let r = store.create(pods(), ns, body.clone());
            assert!(matches!(r, Err(ApiError::BadRequest(_))), "{body}: {r:?}");
        }
        let made = store
            .create(
                pods(),
                Some("x"),
                json!({"metadata": {"generateName": "web-"}}),
            )
            .unwrap();
        let name = meta_str(&made, "name").unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }

    #[test]
    fn merge_patches_keep_what_they_do_not_name() {
        let store = Store::default();
        let a = store.create(pods(), Some("x"), pod("a", "web")).unwrap();
        let patched = store
            .merge_patch(
                pods(),
                Some("x"),
                "a",
                &json!({"metadata": {"labels": {"tier": "front"}}}),
            )
            .unwrap();
        assert_eq!(
            patched["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
        assert_eq!(patched["metadata"]["uid"], a["metadata"]["uid"]);
        let stale = store.merge_patch(
            pods(),
            Some("x"),
            "a",
            &json!({"metadata": {"resourceVersion": a["metadata"]["resourceVersion"]}}),
        );
        assert!(matches!(stale, Err(ApiError::Conflict(_))), "{stale:?}");
        let rename = store.merge_patch(pods(), Some("x"), "a", &json!({"metadata": {"name": "b"}}));
        assert!(matches!(rename, Err(ApiError::BadRequest(_))), "{rename:?}");
    }

    #[test]
    fn paged_lists_read_the_revision_of_their_first_page() {
        let store = Store::default();
        for i in 0..10 {
            store
                .create(pods(), Some("x"), pod(&format!("p{i}"), "web"))
                .unwrap();
        }
        let all = Selector::default();
        let first = store
            .list(pods(), None, &all, ReadAt::Latest, None, Some(4))
            .unwrap();
        assert_eq!(names(&first), ["p0", "p1", "p2", "p3"]);
        let after = first.continue_after.clone().unwrap();
        // Later writes do not show in the rest of the list.
        store
            .delete(pods(), Some("x"), "p5", &Preconditions::default())
            .unwrap();
        store.create(pods(), Some("x"), pod("p45", "web")).unwrap();
        let mut p6 = store.get(pods(), Some("x"), "p6").unwrap();
        p6["metadata"]["labels"]["app"] = json!("db");
        store.update(pods(), Some("x"), "p6", p6).unwrap();
        let token = continue_token(first.revision, &after);
        let (revision, after) = parse_continue_token(&token).unwrap();
        let web = Selector::parse(pods(), Some("app=web"), None).unwrap();
        let second = store
            .list(
                pods(),
                None,
                &web,
                ReadAt::Exact(revision),
                Some(&after),
                Some(4),
            )
            .unwrap();
        assert_eq!(names(&second), ["p4", "p5", "p6", "p7"]);
        assert_eq!(second.revision, first.revision);
        let last = store
            .list(
                pods(),
                Some("x"),
                &web,
                ReadAt::Exact(revision),
                second.continue_after.as_ref(),
                Some(4),
            )
            .unwrap();
        assert_eq!(names(&last), ["p8", "p9"]);
        assert!(last.continue_after.is_none());
        // The latest list sees the writes.
        let now = store
            .list(pods(), None, &web, ReadAt::Latest, None, None)
            .unwrap();
        assert_eq!(
            names(&now),
            ["p0", "p1", "p2", "p3", "p4", "p45", "p7", "p8", "p9"]
        );
        assert!(
            store
                .list(pods(), Some("y"), &web, ReadAt::Latest, None, None)
                .unwrap()
                .items
                .is_empty()
        );
        // After a compaction the old revision cannot be rebuilt.
        store.compact();
        let expired = store.list(
            pods(),
            None,
            &web,
            ReadAt::Exact(revision),
            Some(&after),
            Some(4),
        );
        assert_eq!(expired.map_err(|e| e.code()).err(), Some(410));
        let future = store.list(
            pods(),
            None,
            &web,
            ReadAt::NotOlderThan(store.revision() + 1),
            None,
            None,
        );
        assert_eq!(future.map_err(|e| e.code()).err(), Some(504));
        assert!(parse_continue_token("12.zz.00").is_err());
        assert!(parse_continue_token("12").is_err());
    }

    #[test]
    fn history_is_bounded() {
        let store = Store::with_history(3);
        let start = store.revision();
        for i in 0..5 {
            store
                .create(pods(), Some("x"), pod(&format!("p{i}"), "web"))
                .unwrap();
        }
        assert_eq!(
            store
                .changes_after(pods(), start)
                .map_err(|e| e.code())
                .err(),
            Some(410)
        );
        let (changes, now) = store.changes_after(pods(), start + 2).unwrap();
        assert_eq!(now, start + 5);
        let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [start + 3, start + 4, start + 5]);
        assert_eq!(
            store
                .changes_after(pods(), now + 1)
                .map_err(|e| e.code())
                .err(),
            Some(504)
        );
        store.compact();
        assert!(store.changes_after(pods(), now).unwrap().0.is_empty());
        assert!(store.changes_after(pods(), now - 1).is_err());
    }
}
