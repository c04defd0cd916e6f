//! The file source: every `*.yaml`, `*.yml` and `*.json` file of a directory,
//! each holding any number of documents: `v1 Namespace`, `v1 Pod`, and the
//! policy kinds of `model::parse` (KubeArmorPolicy among them). Pods and
//! namespaces are read leniently (API objects carry many fields Palisade
//! does not use), except a namespace's posture annotations; policies
//! strictly.
//!
//! Last good state: an object whose new version fails keeps its previous
//! version (matched by kind, namespace and name); a file that cannot be
//! read or split at all keeps all of its previous objects. So does a file
//! over a limit of `model::limits` (its size, checked from its metadata
//! before it is read and bounded while it is read; all files' sizes
//! together; UTF-8; its number of documents): refused whole, with an
//! error naming the file and the limit. A file that held objects and reads
//! empty (as one written in place does between its truncation and its
//! write) is refused whole too: deleting a file removes its objects.
//!
//! Revision: the contents of `<dir>/.revision` when present (the lab writes
//! it after the files, so "revision N in force" covers them), else a hash of
//! every file's name and contents.
//!
//! A reading looks only at the files the directory's events named since the
//! last one (`dir_events`), and at every file where those cannot vouch for
//! the rest; both give the same reading (a test holds them to it).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    Reading, Source,
    dir_events::{Changed, DirEvents},
    objects::{self, ApiNamespace, ApiPod},
};
use crate::identity::fnv1a_more;
use crate::model::{
    Namespace, Pod, Policy, Snapshot,
    limits::{self, MAX_FILE_BYTES, MAX_SOURCE_BYTES},
    parse::{Head, ParseError, parse_one, split_documents},
    posture::namespace_postures,
    yaml::{self, Positions},
};

pub const REVISION_FILE: &str = ".revision";

/// One object of a file, in the form the snapshot takes.
#[derive(Clone, Debug)]
enum Object {
    Namespace(Namespace),
    Pod(Arc<Pod>),
    Policy(Arc<Policy>),
}

/// The pod's cgroup v2 directory on this node, for process and file rules
/// (the lab writes it; the Kubernetes source derives it from the pod's uid).
pub const CGROUP_ANNOTATION: &str = "palisade.dev/cgroup";

pub struct FileSource {
    dir: PathBuf,
    /// By file, then by `kind/namespace/name`: the last good objects,
    /// before duplicates across files are dropped.
    last_good: BTreeMap<PathBuf, BTreeMap<String, Object>>,
    /// Each file's last text and what reading it gave: reading is cheap,
    /// parsing is not, and most passes change one file of many.
    read: BTreeMap<PathBuf, FileRead>,
    /// The last snapshot and the errors duplicates gave, kept while no
    /// file changes: a pass that changed nothing costs a `stat` per file.
    last: Option<(Arc<Snapshot>, Vec<String>)>,
    /// The definitions duplicates leave out, by file and key, while no
    /// file's set of keys changes: an edit of objects that keeps their
    /// names (most changes) cannot make or end a duplicate, and finding
    /// them walks every object's key.
    left_out: Option<LeftOut>,
    /// The directory's events since the last reading, by file name: a
    /// reading looks at the files they name (and at refused ones), and
    /// takes every other as it last read it. `None` without inotify.
    events: Option<DirEvents>,
    /// When a reading last looked at every file: the first reading
    /// [`LOOK_AT_EVERY_FILE`] or more after it looks at every file again,
    /// whatever the events say.
    looked_at_all: Option<Instant>,
    /// The files refused whole by the last reading: read again by each.
    refused: BTreeSet<PathBuf>,
    /// Whether a file or the directory itself is a symbolic link: what
    /// it points to changes without an event in the directory (a
    /// ConfigMap volume swaps its `..data` link), so while one is, every
    /// reading looks at every file.
    symlinked: bool,
}

/// How often a reading looks at every file even with the directory's
/// events at hand: a safety net, at the cost of one `stat` per file.
const LOOK_AT_EVERY_FILE: Duration = Duration::from_secs(10);

/// The keys each file's definitions are left out under (see [`duplicates`]).
type LeftOut = BTreeMap<PathBuf, BTreeSet<String>>;

/// What reading one file gave.
struct FileRead {
    /// Each document of the text that gave an object without an error,
    /// by its text: a rewritten file's unchanged documents are not parsed
    /// again, and keep their objects (pods and policies the same `Arc`s,
    /// which the compiler tells unchanged by pointer). The documents'
    /// texts are all that is kept of the file's: the text itself is known
    /// again by its `hash` and `len`.
    parsed: Parsed,
    len: usize,
    /// When the text was read, and the file's metadata then.
    read_at: SystemTime,
    stamp: Option<Stamp>,
    hash: u64,
    /// What its objects' parse errors were (with the last good versions
    /// kept in force named).
    errors: Vec<String>,
}

/// The metadata that changes when a file is written or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// How long before a read a file's last change must lie for the read to
/// be trusted without reading it again: file times come from a coarse
/// clock, so a write just after a read can carry the very same time; one
/// that lies a second before the read cannot be repeated unseen.
const SETTLED: Duration = Duration::from_secs(1);

impl FileRead {
    /// Whether the file is as it was read, by its metadata alone.
    fn unchanged(&self, now: &fs::Metadata) -> bool {
        let Some(stamp) = self.stamp else {
            return false;
        };
        let changed_at = UNIX_EPOCH
            + Duration::new(
                u64::try_from(stamp.mtime.0.max(stamp.ctime.0)).unwrap_or(u64::MAX),
                0,
            );
        stamp == Stamp::of(now) && changed_at + SETTLED < self.read_at
    }
}

/// A lab pod's cgroup (the annotation above), and no other pod's: the
/// file source trusts its files. Its source check and extra source
/// prefixes, by their annotations.
fn pod_of(p: &ApiPod) -> Pod {
    let annotations = objects::annotations(p);
    let mut pod = objects::pod(p, annotations.get(CGROUP_ANNOTATION).cloned());
    pod.source_check = objects::source_check(Some(&annotations));
    pod.source_prefixes = objects::source_prefixes(Some(&annotations));
    pod
}

fn key_of(o: &Object) -> String {
    match o {
        Object::Namespace(n) => format!("Namespace//{}", n.name),
        Object::Pod(p) => format!("Pod/{}/{}", p.namespace, p.name),
        Object::Policy(p) => format!("Policy/{}", p.key()),
    }
}

/// Keeps one definition of each object: the first file (in name order)
/// that holds it. The API server holds one object per name; two files that
/// both define it would otherwise both be enforced, which no cluster can
/// express (a copy left behind, or a broken copy, would add its rules).
/// Returns the definitions to leave out, by file and key, with an error
/// for each.
fn duplicates(files: &BTreeMap<PathBuf, BTreeMap<String, Object>>) -> (LeftOut, Vec<String>) {
    // Every object's key on every change: a fast hasher (the keys are the
    // source's own file names and objects, seeded per process).
    let mut first: crate::model::FastMap<&str, &Path> =
        crate::model::FastMap::with_capacity_and_hasher(
            files.values().map(BTreeMap::len).sum(),
            Default::default(),
        );
    let (mut out, mut errors) = (LeftOut::new(), Vec::new());
    for (path, objects) in files {
        for key in objects.keys() {
            match first.get(key.as_str()) {
                Some(holder) => {
                    errors.push(format!(
                        "{}: {key} is also defined in {}: this definition is ignored (one object per name)",
                        path.display(),
                        holder.display()
                    ));
                    out.entry(path.clone()).or_default().insert(key.clone());
                }
                None => {
                    first.insert(key, path);
                }
            }
        }
    }
    (out, errors)
}

/// A file's documents that gave an object, by their text (see
/// [`FileRead::parsed`]). An object depends on its document's text alone:
/// the file's name and the document's line go only into errors.
type Parsed = crate::model::FastMap<String, Object>;

/// A document's error, with the key of the object it concerns when it can
/// be told (as [`key_of`] gives it).
type DocumentError = (Option<String>, String);

/// The documents of one file: objects read, and errors with the key (as
/// [`key_of`] gives it) of the object they concern when it could be told.
/// A document found in `before` (the file's last read) is not parsed
/// again. Also returns the documents of this text that gave an object.
fn read_file(
    path: &Path,
    text: &str,
    before: &Parsed,
) -> (Vec<Object>, Vec<DocumentError>, Parsed) {
    let shown = path.display().to_string();
    let (mut objects, mut errors) = (Vec::new(), Vec::new());
    let mut parsed = Parsed::default();
    for (start, doc) in split_documents(text) {
        if let Some(o) = before.get(&doc) {
            objects.push(o.clone());
            parsed.insert(doc, o.clone());
            continue;
        }
        let (objects_before, errors_before) = (objects.len(), errors.len());
        read_document(&shown, start, &doc, &mut objects, &mut errors);
        if errors.len() == errors_before
            && let [o] = &objects[objects_before..]
        {
            parsed.insert(doc, o.clone());
        }
    }
    (objects, errors, parsed)
}

/// One document's object, or its error, onto `objects` or `errors`.
fn read_document(
    shown: &str,
    start: usize,
    doc: &str,
    objects: &mut Vec<Object>,
    errors: &mut Vec<DocumentError>,
) {
    let head = yaml::from_str::<Head>(doc).ok();
    let refused = |kind: &str, e: yaml::Error| {
        let e = e.with_field(doc);
        let message = format!("{kind}: {}", e.message);
        let e = ParseError::in_document(shown, start, e.at, None, message);
        (None, e.to_string())
    };
    let unnamed = |kind: &str| {
        let at = Positions::of(doc).locate("metadata");
        let message = format!("{kind}: metadata.name is missing");
        (
            None,
            ParseError::in_document(shown, start, at, None, message).to_string(),
        )
    };
    let kind = head
        .as_ref()
        .and_then(|h| Some((h.api_version.as_deref()?, h.kind.as_deref()?)));
    match kind {
        Some(("v1", "Namespace")) => match yaml::from_str::<ApiNamespace>(doc) {
            Ok(n) if n.metadata.name.is_none() => errors.push(unnamed("Namespace")),
            Ok(n) => {
                let ns = objects::namespace(&n);
                // A posture that cannot be read is a bad document: the
                // namespace's last good version stays.
                match namespace_postures(&ns) {
                    Ok(_) => objects.push(Object::Namespace(ns)),
                    Err(e) => {
                        let at = Positions::of(doc).locate(&e.path);
                        let message = format!("Namespace {}: {e}", ns.name);
                        let e = ParseError::in_document(shown, start, at, None, message);
                        let key = key_of(&Object::Namespace(ns));
                        errors.push((Some(key), e.to_string()));
                    }
                }
            }
            Err(e) => errors.push(refused("Namespace", e)),
        },
        Some(("v1", "Pod")) => match yaml::from_str::<ApiPod>(doc) {
            Ok(p) if p.metadata.name.is_none() => errors.push(unnamed("Pod")),
            Ok(p) => objects.push(Object::Pod(Arc::new(pod_of(&p)))),
            Err(e) => errors.push(refused("Pod", e)),
        },
        // Policies, and anything else: the policy parser names unknown kinds.
        _ => match parse_one(doc, start, shown, "default") {
            Ok(d) => objects.push(Object::Policy(Arc::new(d.policy()))),
            Err(e) => {
                let key = head.as_ref().and_then(|h| h.policy_key("default"));
                errors.push((key.map(|k| format!("Policy/{k}")), e.to_string()));
            }
        },
    }
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            events: DirEvents::new(&dir),
            dir,
            last_good: BTreeMap::new(),
            read: BTreeMap::new(),
            last: None,
            left_out: None,
            looked_at_all: None,
            refused: BTreeSet::new(),
            symlinked: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The files of `dir` the file source reads (`*.yaml`, `*.yml`, `*.json`),
/// in name order.
pub fn source_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    Ok(listing(dir)?.0)
}

/// [`source_files`], and whether any of them is a symbolic link, told by
/// the listing's own entry types (no call per file; an entry whose type
/// cannot be told counts as one).
fn listing(dir: &Path) -> Result<(Vec<PathBuf>, bool), std::io::Error> {
    let mut symlinked = false;
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            is_source_file(&path).then(|| {
                symlinked |= e.file_type().map_or(true, |t| t.is_symlink());
                path
            })
        })
        .collect();
    files.sort();
    Ok((files, symlinked))
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn is_source_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

impl FileSource {
    /// One file's objects by key: the ones that parse, and for each that
    /// does not, its last good version if there is one.
    fn good_objects(
        &mut self,
        path: &Path,
        text: &str,
        before: &Parsed,
        errors: &mut Vec<String>,
    ) -> (BTreeMap<String, Object>, Parsed) {
        let (objects, bad, parsed) = read_file(path, text, before);
        let mut good: BTreeMap<String, Object> =
            objects.into_iter().map(|o| (key_of(&o), o)).collect();
        let old = self.last_good.get(path);
        let mut unnamed = Vec::new();
        for (key, message) in bad {
            let Some(key) = key else {
                unnamed.push(message);
                continue;
            };
            // The bad object's last good version stays in force.
            match old.and_then(|old| old.get(&key)) {
                Some(o) => {
                    errors.push(format!("{message} (its last good version stays in force)"));
                    good.entry(key).or_insert_with(|| o.clone());
                }
                None => errors.push(message),
            }
        }
        // A document broken before it names its object (a file cut short
        // while written in place) could be any of the file's objects: none
        // of them is taken for removed.
        let missing: Vec<(String, Object)> = old
            .into_iter()
            .flatten()
            .filter(|(k, _)| !good.contains_key(*k))
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        if !unnamed.is_empty() {
            good.extend(missing.iter().cloned());
        }
        for message in unnamed {
            errors.push(if missing.is_empty() {
                message
            } else {
                format!(
                    "{message} (which object it is cannot be told: the file's last good {} stays in force)",
                    missing.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                )
            });
        }
        (good, parsed)
    }

    /// Every last good object of every file, but duplicates.
    fn snapshot(&self, left_out: &LeftOut) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot
            .pods
            .reserve(self.last_good.values().map(BTreeMap::len).sum());
        for (path, objects) in &self.last_good {
            let left = left_out.get(path);
            for (key, o) in objects {
                if left.is_some_and(|keys| keys.contains(key)) {
                    continue;
                }
                match o {
                    Object::Namespace(n) => {
                        snapshot.namespaces.insert(n.name.clone(), n.clone());
                    }
                    Object::Pod(p) => snapshot.pods.push(p.clone()),
                    Object::Policy(p) => snapshot.policies.push(p.clone()),
                }
            }
        }
        snapshot
    }

    /// One file: from what was read before when its metadata says it is
    /// unchanged, else read (and parsed when its text changed). Returns
    /// whether its objects changed; `Err` for a file refused whole.
    fn read_one(
        &mut self,
        path: &Path,
        vouched: bool,
        total: &mut u64,
        errors: &mut Vec<String>,
    ) -> Result<bool, String> {
        // Unchanged by the directory's events: as read, without a `stat`.
        if vouched
            && let Some(before) = self.read.get(path)
            && *total + before.len as u64 <= MAX_SOURCE_BYTES
        {
            *total += before.len as u64;
            errors.extend(before.errors.iter().cloned());
            return Ok(false);
        }
        let meta = fs::metadata(path).ok();
        if let (Some(meta), Some(before)) = (&meta, self.read.get(path))
            && before.unchanged(meta)
            && *total + meta.len() <= MAX_SOURCE_BYTES
        {
            *total += meta.len();
            errors.extend(before.errors.iter().cloned());
            return Ok(false);
        }
        let read_at = SystemTime::now();
        let text = read_limited(path, total)?;
        // Truncated and not written yet: a file written in place reads
        // empty for a moment, and taken as it reads, its objects would be
        // gone until the write is read. One that held objects and reads
        // empty is refused whole instead, its objects kept; deleting the
        // file removes them.
        if text.is_empty() && self.last_good.get(path).is_some_and(|old| !old.is_empty()) {
            return Err(
                "empty, as a file being written in place reads for a moment (to remove \
                        its objects, delete the file)"
                    .to_owned(),
            );
        }
        let stamp = meta.as_ref().map(Stamp::of);
        let hash = crate::identity::fnv1a(text.as_bytes());
        if let Some(before) = self.read.get_mut(path)
            && (before.hash, before.len) == (hash, text.len())
        {
            before.read_at = read_at;
            before.stamp = stamp;
            errors.extend(before.errors.iter().cloned());
            return Ok(false);
        }
        let mut file_errors = Vec::new();
        let before = self
            .read
            .get_mut(path)
            .map(|r| std::mem::take(&mut r.parsed))
            .unwrap_or_default();
        let (good, parsed) = self.good_objects(path, &text, &before, &mut file_errors);
        errors.extend(file_errors.iter().cloned());
        if self
            .last_good
            .get(path)
            .is_none_or(|old| !old.keys().eq(good.keys()))
        {
            self.left_out = None;
        }
        self.last_good.insert(path.to_owned(), good);
        self.read.insert(
            path.to_owned(),
            FileRead {
                parsed,
                len: text.len(),
                read_at,
                stamp,
                hash,
                errors: file_errors,
            },
        );
        Ok(true)
    }
}

impl FileSource {
    /// The source files the directory's events named since the last
    /// reading, or `None` where this reading must look at every file: the
    /// first; one without the events, or where they cannot vouch for the
    /// files they do not name (see [`DirEvents::take`], and
    /// [`Self::symlinked`]); one after a listing failed; the first
    /// [`LOOK_AT_EVERY_FILE`] or more after the last that looked.
    fn named_changes(&mut self) -> Option<BTreeSet<PathBuf>> {
        let changed = self.events.as_mut().map_or(Changed::All, DirEvents::take);
        let due = self.last.is_none()
            || self.symlinked
            || self
                .looked_at_all
                .is_none_or(|at| at.elapsed() >= LOOK_AT_EVERY_FILE);
        match changed {
            Changed::Names(names) if !due => Some(
                names
                    .into_iter()
                    .map(|name| self.dir.join(name))
                    .filter(|path| is_source_file(path))
                    .collect(),
            ),
            _ => {
                self.looked_at_all = Some(Instant::now());
                None
            }
        }
    }

    /// The files the last reading listed, with the `named` ones that now
    /// exist and without those that do not, in name order.
    fn listed_with(&mut self, named: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
        // In order already; the few others are put in their places (the
        // files listed without a read are the refused ones).
        let mut files: Vec<PathBuf> = self.read.keys().cloned().collect();
        for path in self.refused.iter().chain(named) {
            if let Err(at) = files.binary_search(path) {
                files.insert(at, path.clone());
            }
        }
        let mut symlinked = false;
        files.retain(|path| {
            if !named.contains(path) {
                return true;
            }
            // Only a name that is not there is gone: one that cannot be
            // looked at is refused by its reading, as a full one would.
            match fs::symlink_metadata(path) {
                Ok(meta) => {
                    symlinked |= meta.file_type().is_symlink();
                    true
                }
                Err(e) => e.kind() != std::io::ErrorKind::NotFound,
            }
        });
        self.symlinked |= symlinked;
        files
    }
}

impl Source for FileSource {
    fn read(&mut self) -> Reading {
        let mut errors = Vec::new();
        // Read before the files: a writer that writes the files and then the
        // revision can then never have revision N reported with older files.
        let written_revision = fs::read_to_string(self.dir.join(REVISION_FILE))
            .ok()
            .map(|r| r.trim().to_owned());
        // After the revision, as the files are: every event of a file
        // written before that revision is in the queue by now.
        let named = self.named_changes();
        let files = match &named {
            Some(names) => self.listed_with(names),
            None => match listing(&self.dir) {
                Ok((f, symlinked)) => {
                    self.symlinked = symlinked || is_symlink(&self.dir);
                    f
                }
                Err(e) => {
                    errors.push(format!(
                        "{}: {e}; keeping the last good state",
                        self.dir.display()
                    ));
                    // The events drained are lost with this listing: the
                    // next reading looks at every file again.
                    self.looked_at_all = None;
                    self.last_good.keys().cloned().collect()
                }
            },
        };
        // Every file's name and contents, for the fallback revision.
        let mut seen = crate::identity::fnv1a(&[]);
        let mut total = 0u64;
        let mut changed = self.last.is_none();
        let before = self.last_good.len();
        match &named {
            // Only a named file can have gone.
            Some(names) => {
                for path in names.iter().filter(|p| files.binary_search(p).is_err()) {
                    self.last_good.remove(path);
                    self.read.remove(path);
                    self.refused.remove(path);
                }
            }
            None => {
                let listed: BTreeSet<&PathBuf> = files.iter().collect();
                self.last_good.retain(|p, _| listed.contains(p));
                self.read.retain(|p, _| listed.contains(p));
                self.refused.retain(|p| listed.contains(p));
            }
        }
        if self.last_good.len() != before {
            changed = true;
            self.left_out = None;
        }
        for path in &files {
            seen = fnv1a_more(seen, path.to_string_lossy().as_bytes());
            // A refused file has no read to take, so is read again.
            let vouched = named.as_ref().is_some_and(|names| !names.contains(path));
            match self.read_one(path, vouched, &mut total, &mut errors) {
                Ok(file_changed) => {
                    changed |= file_changed;
                    if !self.refused.is_empty() {
                        self.refused.remove(path);
                    }
                    let hash = self.read.get(path).map_or(0, |r| r.hash);
                    seen = fnv1a_more(seen, &hash.to_le_bytes());
                }
                Err(e) => {
                    // Refused files count in the revision by what was seen
                    // of them, so that a change to one is a new revision.
                    seen = fnv1a_more(seen, e.as_bytes());
                    // Read again next time, whatever its metadata says.
                    self.read.remove(path);
                    self.refused.insert(path.clone());
                    let kept = self.last_good.contains_key(path);
                    errors.push(format!(
                        "{}: {e}; the file is refused whole{}",
                        path.display(),
                        if kept {
                            " and its last good version stays in force"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        let (snapshot, duplicate_errors) = match &self.last {
            Some((snapshot, dups)) if !changed => (snapshot.clone(), dups.clone()),
            _ => {
                let (left_out, dups) = match (self.left_out.take(), &self.last) {
                    (Some(left_out), Some((_, dups))) => (left_out, dups.clone()),
                    _ => duplicates(&self.last_good),
                };
                let snapshot = Arc::new(self.snapshot(&left_out));
                self.last = Some((snapshot.clone(), dups.clone()));
                self.left_out = Some(left_out);
                (snapshot, dups)
            }
        };
        errors.extend(duplicate_errors);
        Reading {
            snapshot,
            revision: written_revision.unwrap_or_else(|| format!("{seen:016x}")),
            errors,
            ..Reading::default()
        }
    }

    fn changes(&mut self) -> tokio::sync::mpsc::Receiver<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("palisade-watch".into())
            .spawn(move || watch_dir(&dir, &tx));
        if let Err(e) = spawned {
            tracing::warn!("no watcher thread ({e}): changes are picked up on resync only");
        }
        rx
    }
}

/// A file's text, within the limits of `model::limits`: its size from its
/// metadata first (a file over [`MAX_FILE_BYTES`], or one that would take
/// the files read so far, `total`, over [`MAX_SOURCE_BYTES`], is not read),
/// the read bounded as well (it may grow meanwhile), then UTF-8 and the
/// number of documents. The error names the limit, or what failed.
fn read_limited(path: &Path, total: &mut u64) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(limits::too_large(size));
    }
    if *total + size > MAX_SOURCE_BYTES {
        return Err(format!(
            "{size} bytes would take the source's files over the limit of {MAX_SOURCE_BYTES} \
             bytes ({} MiB) in all; not read",
            MAX_SOURCE_BYTES >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    *total += bytes.len() as u64;
    limits::check_file(&bytes)?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// Forwards inotify events on `dir` as wake-ups; a burst of events is one.
fn watch_dir(dir: &Path, tx: &tokio::sync::mpsc::Sender<()>) {
    use inotify::{Inotify, WatchMask};
    let Ok(mut inotify) = Inotify::init() else {
        tracing::warn!("inotify unavailable: changes are picked up on resync only");
        return;
    };
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::CREATE;
    if let Err(e) = inotify.watches().add(dir, mask) {
        tracing::warn!("watching {}: {e}", dir.display());
        return;
    }
    let mut buffer = [0u8; 4096];
    loop {
        match inotify.read_events_blocking(&mut buffer) {
            Ok(_) => {
                // Full channel: a wake-up is already pending.
                let _ = tx.try_send(());
                if tx.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("inotify: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}, uid: abc}
spec:
  containers: [{name: c, image: busybox, ports: [{name: web, containerPort: 8080}]}]
status: {podIP: 10.244.0.1, podIPs: [{ip: 10.244.0.1}, {ip: 'fd00::1'}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "palisade-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `text` written to `path`, its modification time then set to `at`.
    fn write_dated(path: &Path, text: &str, at: SystemTime) {
        fs::write(path, text).unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn namespaces_pods_and_policies_are_read() {
        let dir = temp_dir();
        fs::write(dir.join("cluster.yaml"), GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.snapshot.namespaces["x"].labels["ns"], "x");
        let pod = &r.snapshot.pods[0];
        assert_eq!(pod.key(), "x/a");
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.ports[0].port, 8080);
        assert_eq!(r.snapshot.policies[0].key(), "x/deny");
        fs::write(dir.join(REVISION_FILE), "7\n").unwrap();
        assert_eq!(source.read().revision, "7");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_reads_empty_keeps_its_objects_until_it_is_deleted() {
        let dir = temp_dir();
        let path = dir.join("cluster.yaml");
        fs::write(&path, GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        assert!(source.read().errors.is_empty());
        // The moment between an in-place write's truncation and its write.
        fs::write(&path, "").unwrap();
        let r = source.read();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].contains("empty") && r.errors[0].contains("last good"),
            "{:?}",
            r.errors
        );
        assert_eq!(r.snapshot.policies[0].key(), "x/deny");
        assert_eq!(r.snapshot.pods[0].key(), "x/a");
        fs::write(&path, GOOD).unwrap();
        assert!(source.read().errors.is_empty());
        fs::remove_file(&path).unwrap();
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.snapshot.policies.is_empty() && r.snapshot.pods.is_empty());
        // A file that never held objects may be empty.
        fs::write(&path, "").unwrap();
        assert!(source.read().errors.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_broken_policy_keeps_its_last_good_version_and_others_apply() {
        let dir = temp_dir();
        fs::write(dir.join("cluster.yaml"), GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        assert!(source.read().errors.is_empty());
        let broken = GOOD.replace("policyTypes: [Ingress]", "policyTypes: [Ingress], bogus: 1")
            + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: new, namespace: x}\nspec: {podSelector: {}}\n";
        fs::write(dir.join("cluster.yaml"), broken).unwrap();
        let r = source.read();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].contains("bogus") && r.errors[0].contains("last good"),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors[0].contains("cluster.yaml:15:49: "),
            "the line and column of `bogus` named: {:?}",
            r.errors
        );
        let keys: Vec<String> = r.snapshot.policies.iter().map(|p| p.key()).collect();
        assert_eq!(keys, vec!["x/deny".to_owned(), "x/new".to_owned()]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rewritten_file_keeps_the_objects_of_its_unchanged_documents() {
        let dir = temp_dir();
        let path = dir.join("cluster.yaml");
        fs::write(&path, GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        let first = source.read();
        // The pod relabelled, a comment line before everything (every
        // document moves down a line), the rest as it was.
        let relabelled = format!("# rewritten\n{}", GOOD.replace("{pod: a}", "{pod: b}"));
        fs::write(&path, &relabelled).unwrap();
        let second = source.read();
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        assert!(
            Arc::ptr_eq(&first.snapshot.policies[0], &second.snapshot.policies[0]),
            "an unchanged document keeps its object"
        );
        let (before, after) = (&first.snapshot.pods[0], &second.snapshot.pods[0]);
        assert!(
            !Arc::ptr_eq(before, after),
            "a changed document is read again"
        );
        assert_eq!(
            (&before.labels["pod"], &after.labels["pod"]),
            (&"a".into(), &"b".into())
        );
        // A document broken, then restored: read again each time, its
        // error at its line, and then its object back.
        let broken =
            relabelled.replace("policyTypes: [Ingress]", "policyTypes: [Ingress], bogus: 1");
        fs::write(&path, &broken).unwrap();
        let third = source.read();
        assert!(
            third.errors.len() == 1 && third.errors[0].contains("cluster.yaml:16:49: "),
            "{:?}",
            third.errors
        );
        fs::write(&path, &relabelled).unwrap();
        let fourth = source.read();
        assert!(fourth.errors.is_empty(), "{:?}", fourth.errors);
        assert_eq!(fourth.snapshot.policies[0], second.snapshot.policies[0]);
        assert!(Arc::ptr_eq(
            &second.snapshot.pods[0],
            &fourth.snapshot.pods[0]
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_cut_before_a_name_keeps_all_its_last_good_objects() {
        let dir = temp_dir();
        fs::write(dir.join("cluster.yaml"), GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        assert!(source.read().errors.is_empty());
        let before: Vec<String> = source
            .read()
            .snapshot
            .policies
            .iter()
            .map(|p| p.key())
            .collect();
        assert!(!before.is_empty());
        // Cut inside the policy's metadata, as a writer stopped half-way
        // through an in-place write leaves it.
        let cut = &GOOD[..GOOD.find("name: deny").expect("the policy's name") + 7];
        fs::write(dir.join("cluster.yaml"), cut).unwrap();
        let r = source.read();
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains("cannot be told") && e.contains("Policy/x/deny")),
            "{:?}",
            r.errors
        );
        let after: Vec<String> = r.snapshot.policies.iter().map(|p| p.key()).collect();
        assert_eq!(after, before, "a policy vanished with a file cut short");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_object_defined_in_two_files_is_taken_from_the_first_only() {
        let dir = temp_dir();
        fs::write(dir.join("a.yaml"), GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        assert!(source.read().errors.is_empty());
        // A copy of the policy that isolates more, in a later file.
        let copy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
        fs::write(dir.join("b.yaml"), copy).unwrap();
        let r = source.read();
        assert!(
            r.errors.iter().any(|e| e.contains("b.yaml")
                && e.contains("also defined in")
                && e.contains("a.yaml")),
            "{:?}",
            r.errors
        );
        let deny: Vec<_> = r
            .snapshot
            .policies
            .iter()
            .filter(|p| p.key() == "x/deny")
            .collect();
        assert_eq!(deny.len(), 1, "one definition of x/deny");
        assert!(!deny[0].isolates(true), "the first file's: ingress only");
        let denies = |r: &Reading| {
            r.snapshot
                .policies
                .iter()
                .filter(|p| p.key() == "x/deny")
                .map(|p| p.isolates(true))
                .collect::<Vec<_>>()
        };
        // An edit that keeps every name keeps the duplicate and its error.
        fs::write(dir.join("b.yaml"), copy.replace("Egress]", "Egress] ")).unwrap();
        let r = source.read();
        assert_eq!(denies(&r), [false], "still the first file's");
        assert!(r.errors.iter().any(|e| e.contains("also defined in")));
        // A new name in the second file ends the duplicate without a file
        // going: no error, and x/deny is the first file's alone.
        fs::write(
            dir.join("b.yaml"),
            copy.replace("name: deny", "name: deny2"),
        )
        .unwrap();
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(denies(&r), [false]);
        fs::write(dir.join("b.yaml"), copy).unwrap();
        let r = source.read();
        assert_eq!(denies(&r), [false], "a duplicate again");
        assert!(r.errors.iter().any(|e| e.contains("also defined in")));
        // The first file's goes: the second's is the one left.
        fs::remove_file(dir.join("a.yaml")).unwrap();
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(
            r.snapshot
                .policies
                .iter()
                .any(|p| p.key() == "x/deny" && p.isolates(true))
        );
        let _ = fs::remove_dir_all(&dir);
    }

    const KSP: &str = "apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: no-shell, namespace: x}
spec:
  selector: {matchLabels: {pod: a}}
  process:
    matchPaths: [{path: /bin/sh}]
  action: Block
";

    #[test]
    fn kubearmor_policies_are_read_and_keep_their_last_good_version() {
        let dir = temp_dir();
        fs::write(dir.join("cluster.yaml"), format!("{GOOD}---\n{KSP}")).unwrap();
        let mut source = FileSource::new(&dir);
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let ksp = r
            .snapshot
            .policies
            .iter()
            .find(|p| p.key() == "kubearmor:x/no-shell")
            .unwrap();
        assert_eq!(ksp.process.as_ref().unwrap().rules[0].paths, ["/bin/sh"]);
        let broken = KSP.replace("  action: Block\n", "  action: Block\n  capabilities: {}\n");
        fs::write(dir.join("cluster.yaml"), format!("{GOOD}---\n{broken}")).unwrap();
        let r = source.read();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].contains("spec.capabilities: Palisade does not enforce capabilities")
                && r.errors[0].contains("last good"),
            "{:?}",
            r.errors
        );
        assert!(
            r.snapshot
                .policies
                .iter()
                .any(|p| p.key() == "kubearmor:x/no-shell")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_posture_annotation_keeps_the_namespaces_last_good_version() {
        let dir = temp_dir();
        let annotated = |posture: &str| {
            GOOD.replace(
                "metadata: {name: x, labels: {ns: x}}",
                &format!(
                    "metadata: {{name: x, labels: {{ns: x}}, annotations: {{kubearmor-file-posture: {posture}}}}}"
                ),
            )
        };
        fs::write(dir.join("cluster.yaml"), annotated("block")).unwrap();
        let mut source = FileSource::new(&dir);
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        fs::write(dir.join("cluster.yaml"), annotated("enforce")).unwrap();
        let r = source.read();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        let e = &r.errors[0];
        assert!(
            e.contains("cluster.yaml:3:")
                && e.contains("metadata.annotations.kubearmor-file-posture")
                && e.contains("\"enforce\"")
                && e.contains("last good"),
            "{e}"
        );
        assert_eq!(
            r.snapshot.namespaces["x"].annotations["kubearmor-file-posture"],
            "block"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pods_source_check_annotation_is_read_whatever_its_value() {
        use crate::model::SourceCheck;
        let dir = temp_dir();
        let annotated = |check: &str| {
            GOOD.replace(
                "labels: {pod: a}, uid: abc}",
                &format!(
                    "labels: {{pod: a}}, uid: abc, annotations: {{palisade.dev/source-check: '{check}'}}}}"
                ),
            )
        };
        let mut source = FileSource::new(&dir);
        // A value that does not read is the node's to report (with the
        // check on): the Pod itself, its addresses and labels, stands.
        for (text, want) in [
            (GOOD.to_owned(), SourceCheck::On),
            (annotated("off"), SourceCheck::Off),
            (annotated("maybe"), SourceCheck::Unreadable("maybe".into())),
            (annotated("on"), SourceCheck::On),
        ] {
            fs::write(dir.join("cluster.yaml"), text).unwrap();
            let r = source.read();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            assert_eq!(r.snapshot.pods[0].source_check, want);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_is_read_again_whenever_its_metadata_cannot_vouch_for_it() {
        let dir = temp_dir();
        let path = dir.join("cluster.yaml");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let write = |text: &str| write_dated(&path, text, hour_ago);
        write(GOOD);
        let mut source = FileSource::new(&dir);
        let first = source.read();
        // Nothing changed: the very same snapshot, and the same revision.
        let again = source.read();
        assert!(Arc::ptr_eq(&first.snapshot, &again.snapshot));
        assert_eq!(first.revision, again.revision);
        // Rewritten in place, same size, its time put back (a coarse clock
        // would give the same): its change time still moved.
        write(&GOOD.replace("name: deny", "name: dent"));
        let r = source.read();
        assert_eq!(r.snapshot.policies[0].name, "dent");
        assert_ne!(r.revision, first.revision);
        // Written again right after a read, twice: each is seen.
        fs::write(&path, GOOD).unwrap();
        assert_eq!(source.read().snapshot.policies[0].name, "deny");
        fs::write(&path, GOOD.replace("name: deny", "name: dent")).unwrap();
        assert_eq!(source.read().snapshot.policies[0].name, "dent");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_over_a_limit_is_refused_whole_and_keeps_its_last_good_version() {
        let dir = temp_dir();
        fs::write(dir.join("cluster.yaml"), GOOD).unwrap();
        let mut source = FileSource::new(&dir);
        assert!(source.read().errors.is_empty());
        let keys = |r: &Reading| {
            r.snapshot
                .policies
                .iter()
                .map(|p| p.key())
                .collect::<Vec<_>>()
        };
        // 100 MB, sparse: refused from its metadata, never read.
        let big = fs::File::create(dir.join("cluster.yaml")).unwrap();
        big.set_len(100 << 20).unwrap();
        // Not UTF-8, in a new file: nothing of it was ever in force.
        fs::write(dir.join("new.yaml"), b"apiVersion: v1\nkind: \xc3\x28\n").unwrap();
        let r = source.read();
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        let cluster = dir.join("cluster.yaml").display().to_string();
        assert!(
            r.errors[0].starts_with(&format!("{cluster}: 104857600 bytes, above the limit of 4194304 bytes (4 MiB) for a source file; not read; the file is refused whole and its last good version stays in force")),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors[1].contains("new.yaml: not UTF-8: invalid byte 0xc3 at line 2 column 7")
                && r.errors[1].ends_with("the file is refused whole"),
            "{:?}",
            r.errors
        );
        assert_eq!(keys(&r), ["x/deny"], "the last good version stays");
        assert_eq!(r.snapshot.pods.len(), 1);
        // Too many documents, then fixed: the file applies again.
        let many = format!("{GOOD}---\n{}", "kind: x\n---\n".repeat(1_000));
        fs::write(dir.join("cluster.yaml"), many).unwrap();
        fs::remove_file(dir.join("new.yaml")).unwrap();
        let r = source.read();
        assert!(
            r.errors.len() == 1
                && r.errors[0].contains("1003 documents, above the limit of 1000 per file"),
            "{:?}",
            r.errors
        );
        assert_eq!(keys(&r), ["x/deny"]);
        fs::write(
            dir.join("cluster.yaml"),
            GOOD.replace("name: deny", "name: other"),
        )
        .unwrap();
        let r = source.read();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(keys(&r), ["x/other"]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Readings that take the files the directory's events do not name as
    /// they were read give what readings that look at every file give,
    /// through writes in place and by rename, removals, broken and empty
    /// files, files over the limit, rewrites that keep size and time,
    /// files that are not sources, and symbolic links to files outside the
    /// directory, whose targets change with no event in it.
    #[test]
    fn readings_by_the_directory_s_events_give_what_looking_at_every_file_gives() {
        let dir = temp_dir();
        let mut by_events = FileSource::new(&dir);
        if by_events.events.is_none() {
            eprintln!("skipped: inotify unavailable");
            return;
        }
        let mut every_file = FileSource {
            events: None,
            ..FileSource::new(&dir)
        };
        let texts = [
            GOOD.to_owned(),
            GOOD.replace("name: deny", "name: dent"),
            GOOD.replace("labels: {pod: a}", "labels: {pod: b}"),
            GOOD.replace("podSelector: {}", "podSelector: 7"),
            GOOD.replace("name: a,", "name: c,")
                .replace("10.244.0.1", "10.244.0.3"),
            String::new(),
            "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1),
        ];
        let names = ["a.yaml", "b.yml", "c.json", "notes.txt"];
        let targets = dir.with_extension("targets");
        fs::create_dir_all(&targets).unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap()
        };
        for step in 0..400 {
            let path = dir.join(names[next(names.len())]);
            let text = &texts[next(texts.len())];
            // Symbolic links come late, so that most steps run without.
            let target = targets.join(names[next(names.len())]);
            match next(if step < 300 { 4 } else { 6 }) {
                0 => fs::write(&path, text).unwrap(),
                4 => {
                    let _ = fs::remove_file(&path);
                    std::os::unix::fs::symlink(&target, &path).unwrap();
                }
                5 => fs::write(&target, text).unwrap(),
                1 => {
                    let tmp = dir.join(".tmp");
                    fs::write(&tmp, text).unwrap();
                    fs::rename(&tmp, &path).unwrap();
                }
                2 => {
                    let _ = fs::remove_file(&path);
                }
                _ => {
                    // Same size, its time put back: only its change time
                    // and the events tell.
                    write_dated(&path, text, hour_ago);
                }
            }
            if next(3) == 0 {
                // Several changes before one reading.
                continue;
            }
            let (a, b) = (by_events.read(), every_file.read());
            assert_eq!(a.revision, b.revision, "step {step}");
            assert_eq!(a.errors, b.errors, "step {step}");
            assert_eq!(
                format!("{:?}", a.snapshot),
                format!("{:?}", b.snapshot),
                "step {step}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&targets);
    }

    /// A link found by the first look, which no event named, still makes
    /// every reading look at every file: its target's change is seen.
    #[test]
    fn a_link_already_there_makes_every_reading_look_at_every_file() {
        let dir = temp_dir();
        let target = dir.with_extension("target.yaml");
        fs::write(&target, GOOD).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("cluster.yaml")).unwrap();
        let mut source = FileSource::new(&dir);
        assert_eq!(source.read().snapshot.policies[0].name, "deny");
        fs::write(&target, GOOD.replace("name: deny", "name: dent")).unwrap();
        assert_eq!(source.read().snapshot.policies[0].name, "dent");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&target);
    }
}
