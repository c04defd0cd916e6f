//! `--via kube`: the daemon reads the lab's cluster through the Kubernetes
//! source, from the test API server (`apiserver`), instead of a directory.
//! The lab still writes its source files; at each commit this feed turns
//! them into API writes: objects that appeared are created, changed ones
//! replaced in place (same uid, new resourceVersion), vanished ones
//! deleted. Pods run on the node their `spec.nodeName` names (the lab's
//! one node, [`NODE_NAME`], when the files name none), Running, with the
//! server's uid. Several daemons may read one feed, each as its node
//! ([`KubeFeed::daemon_args_for`]). The daemon reports, per resource, the newest
//! resourceVersion its watches have seen; a commit is in force when every
//! resource it wrote has been seen up to its last write, and each node's
//! watch of its own pods up to the last write to one of them (it can lag
//! the cluster-wide watch), in a pass that is fully in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use palisade::{model::parse::split_documents, model::yaml, source::kube::access};
use serde_json::{Value, json};

use crate::{apiserver::ApiServer, netns::Netns};

/// The lab node's name, as its pods' `spec.nodeName` say where the lab
/// has one node.
pub const NODE_NAME: &str = crate::scenario::DEFAULT_NODE;

/// The node settings' ConfigMap the lab's daemons read (as the install's
/// DaemonSet does): a test writes it as a source file.
pub const NODE_SETTINGS: &str = "palisade-system/palisade-node";

/// apiVersion, kind, namespace, name.
type Key = (String, String, Option<String>, String);

pub struct KubeFeed {
    /// `None` only for the moment of a restart.
    server: Option<ApiServer>,
    kubeconfig: PathBuf,
    /// What was last sent, by key.
    sent: BTreeMap<Key, Value>,
    /// By resource (as the daemon's status names it): the resourceVersion
    /// of the last write the daemon must have seen.
    wanted: BTreeMap<String, u64>,
    /// By node: the resourceVersion of the last write to a pod of that
    /// node, which its daemon's watch of the node's own pods (whence the
    /// daemon reads a local pod's uid, QoS class and annotations) must
    /// have seen too; that watch can lag the cluster-wide one.
    wanted_local: BTreeMap<String, u64>,
    /// Where the pods' cgroups are laid out as a kubelet with the systemd
    /// driver lays them out (`--cgroup-root`): links named from each pod's
    /// uid to the cgroup the lab made for it.
    cgroups: PathBuf,
    /// The uid each linked pod had.
    linked: BTreeMap<Key, String>,
    /// Each source file's text when last read and its objects' keys: a
    /// sync parses again only the files whose text changed, and compares
    /// only their objects with what was sent (the churn bench's cluster is
    /// 10,000 pods in a few dozen files, one of which changes).
    read: BTreeMap<PathBuf, (String, Vec<Key>)>,
    /// Every object the files held when last read, by key.
    wanted_objects: BTreeMap<Key, Value>,
    /// Keys a plan named that no write has settled yet (a send that
    /// failed part-way): the next plan looks at them again.
    unsettled: BTreeSet<Key>,
}

/// The writes that bring the API server to a source directory's objects
/// ([`KubeFeed::plan`]), sent by [`KubeFeed::send`].
pub struct Plan {
    /// Objects new or changed, namespaces first, as they are to be.
    changed: Vec<(Key, Value)>,
    /// Objects gone, namespaces last.
    gone: Vec<Key>,
}

impl Plan {
    /// Whether the API server holds what the directory says already.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gone.is_empty()
    }
}

/// Creation order: namespaces before what lives in them (and deleted
/// after it).
fn order(k: &Key) -> u8 {
    match k.1.as_str() {
        "Namespace" => 0,
        "Pod" => 1,
        _ => 2,
    }
}

/// The objects of one source file's text.
fn file_objects(path: &Path, text: &str) -> anyhow::Result<Vec<(Key, Value)>> {
    let mut out = Vec::new();
    for (_, doc) in split_documents(text) {
        let object: Value =
            yaml::from_str(&doc).map_err(|e| anyhow!("{}: {}", path.display(), e.message))?;
        if object.is_null() {
            continue;
        }
        let key = key_of(&object).with_context(|| path.display().to_string())?;
        let object = if key.1 == "Pod" {
            placed(object)
        } else {
            object
        };
        out.push((key, object));
    }
    Ok(out)
}

fn resource_of(api_version: &str, kind: &str) -> Option<access::Access> {
    access::ALL
        .into_iter()
        .chain(access::IN_OWN_NAMESPACE)
        .find(|a| a.api_version() == api_version && a.kind == kind)
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn key_of(object: &Value) -> anyhow::Result<Key> {
    let api_version = text(object, "/apiVersion").context("an object without apiVersion")?;
    let kind = text(object, "/kind").context("an object without kind")?;
    let access = resource_of(api_version, kind)
        .ok_or_else(|| anyhow!("{api_version} {kind} is not a kind the Kubernetes source reads"))?;
    let name = text(object, "/metadata/name").context("an object without a name")?;
    let namespace = access.namespaced.then(|| {
        text(object, "/metadata/namespace")
            .unwrap_or("default")
            .to_owned()
    });
    Ok((api_version.into(), kind.into(), namespace, name.into()))
}

/// What the API server would show of a pod running on its node (the
/// lab's one node where the pod names none).
fn placed(mut pod: Value) -> Value {
    if pod.pointer("/spec/nodeName").is_none() {
        pod["spec"]["nodeName"] = json!(NODE_NAME);
    }
    let status = &mut pod["status"];
    if status.get("phase").is_none() {
        status["phase"] = json!("Running");
    }
    if status.get("qosClass").is_none() {
        status["qosClass"] = json!("BestEffort");
    }
    pod
}

/// The node whose daemon's watch of its own pods sees a write of
/// `object`, if it is a pod.
fn node_of<'a>(key: &Key, object: &'a Value) -> Option<&'a str> {
    (key.1 == "Pod")
        .then(|| text(object, "/spec/nodeName"))
        .flatten()
}

fn rv_of(object: &Value) -> u64 {
    text(object, "/metadata/resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl KubeFeed {
    /// Starts the API server on the loopback of `node` (where the daemon
    /// runs) and writes the daemon's kubeconfig into `dir`.
    pub fn start(node: &Netns, dir: &Path) -> anyhow::Result<Self> {
        Self::start_at(node, Ipv4Addr::LOCALHOST.into(), dir)
    }

    /// [`KubeFeed::start`] on address `ip` of namespace `netns`: one that
    /// daemons in other namespaces reach (the underlay of several nodes).
    pub fn start_at(netns: &Netns, ip: IpAddr, dir: &Path) -> anyhow::Result<Self> {
        let listener = netns
            .run(move || TcpListener::bind(SocketAddr::new(ip, 0)))?
            .context("the test API server's listener")?;
        let server = ApiServer::start(listener)?;
        let kubeconfig = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: lab, cluster: {{server: '{}'}}}}]
users: [{{name: lab, user: {{}}}}]
contexts: [{{name: lab, context: {{cluster: lab, user: lab}}}}]
current-context: lab
",
            server.url()
        );
        fs::write(&kubeconfig, config)?;
        let cgroups = dir.join("cgroups");
        fs::create_dir_all(&cgroups)?;
        Ok(Self {
            server: Some(server),
            kubeconfig,
            sent: BTreeMap::new(),
            wanted: BTreeMap::new(),
            wanted_local: BTreeMap::new(),
            cgroups,
            linked: BTreeMap::new(),
            read: BTreeMap::new(),
            wanted_objects: BTreeMap::new(),
            unsettled: BTreeSet::new(),
        })
    }

    /// The daemon's arguments for its source.
    pub fn daemon_args(&self) -> Vec<String> {
        self.daemon_args_for(NODE_NAME)
    }

    /// The source arguments of the daemon of node `node`.
    pub fn daemon_args_for(&self, node: &str) -> Vec<String> {
        vec![
            "--kube".into(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--node-name".into(),
            node.into(),
            "--node-settings".into(),
            NODE_SETTINGS.into(),
            "--cgroup-root".into(),
            self.cgroups.display().to_string(),
            "--cgroup-driver".into(),
            "systemd".into(),
        ]
    }

    pub fn server(&self) -> anyhow::Result<&ApiServer> {
        self.server
            .as_ref()
            .context("the test API server did not come back from a restart")
    }

    /// Stops the API server: open watches end, connections are refused.
    pub fn stop_server(&mut self) {
        if let Some(s) = &mut self.server {
            s.stop();
        }
    }

    /// Serves the same store again at the same address (inside `node`), as
    /// an API server restarting over the same etcd.
    pub fn restart_server(&mut self, node: &Netns) -> anyhow::Result<()> {
        let server = self.server.take().context("no API server to restart")?;
        let addr = server.addr();
        let listener = node
            .run(move || TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} again"))?;
        self.server = Some(server.restart(listener)?);
        Ok(())
    }

    /// Reads the source files in `dir` (the files the file source would
    /// read) into [`Self::wanted_objects`], parsing only the files whose
    /// text changed; returns the keys of the objects those files held
    /// before or hold now.
    fn read_objects(&mut self, dir: &Path) -> anyhow::Result<BTreeSet<Key>> {
        let files = palisade::source::files::source_files(dir)?;
        let mut touched = BTreeSet::new();
        let gone: Vec<PathBuf> = self
            .read
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some((_, keys)) = self.read.remove(&path) {
                touched.extend(keys);
            }
        }
        let mut parsed = Vec::new();
        for path in files {
            let text = fs::read_to_string(&path)?;
            if self
                .read
                .get(&path)
                .is_some_and(|(before, _)| *before == text)
            {
                continue;
            }
            let objects = file_objects(&path, &text)?;
            let keys = objects.iter().map(|(k, _)| k.clone()).collect();
            if let Some((_, old)) = self.read.insert(path, (text, keys)) {
                touched.extend(old);
            }
            parsed.push(objects);
        }
        for key in &touched {
            self.wanted_objects.remove(key);
        }
        for (key, object) in parsed.into_iter().flatten() {
            touched.insert(key.clone());
            self.wanted_objects.insert(key, object);
        }
        // A key that left one file and is still in an unchanged one would
        // be deleted: two files holding one object are refused instead.
        let lost: Vec<&Key> = touched
            .iter()
            .filter(|k| !self.wanted_objects.contains_key(*k))
            .filter(|k| self.read.values().any(|(_, keys)| keys.contains(k)))
            .collect();
        anyhow::ensure!(
            lost.is_empty(),
            "objects defined in more than one file: {lost:?}"
        );
        Ok(touched)
    }

    fn wrote(&mut self, key: &Key, written: &Value) {
        self.deleted(key, written);
        if let Some(node) = node_of(key, written) {
            let wanted = self.wanted_local.entry(node.to_owned()).or_default();
            *wanted = (*wanted).max(rv_of(written));
        }
    }

    /// A deletion: seen by the watch of its resource, as every write is.
    /// (Its node's daemon's watch of the node's pods sees it too, but a
    /// deleted pod's annotations and cgroup are nothing that daemon reads.)
    fn deleted(&mut self, key: &Key, deleted: &Value) {
        if let Some(access) = resource_of(&key.0, &key.1) {
            let wanted = self.wanted.entry(access.resource.to_owned()).or_default();
            *wanted = (*wanted).max(rv_of(deleted));
        }
    }

    /// Makes the API server hold what the files in `dir` say: namespaces
    /// first and last (created before what lives in them, deleted after).
    pub fn sync(&mut self, dir: &Path) -> anyhow::Result<()> {
        let plan = self.plan(dir)?;
        self.send(plan)
    }

    /// The writes [`Self::sync`] makes, not made yet: a caller that times
    /// the API server's writes and what follows them leaves the files'
    /// reading out.
    pub fn plan(&mut self, dir: &Path) -> anyhow::Result<Plan> {
        let mut touched = self.read_objects(dir)?;
        touched.append(&mut self.unsettled);
        let mut changed: Vec<(Key, Value)> = Vec::new();
        let mut gone: Vec<Key> = Vec::new();
        for key in touched {
            match self.wanted_objects.get(&key) {
                Some(object) if self.sent.get(&key) != Some(object) => {
                    changed.push((key, object.clone()));
                }
                Some(_) => {}
                None if self.sent.contains_key(&key) => gone.push(key),
                None => {}
            }
        }
        changed.sort_by_key(|(k, _)| order(k));
        gone.sort_by_key(|k| std::cmp::Reverse(order(k)));
        Ok(Plan { changed, gone })
    }

    /// Makes the writes of `plan`.
    pub fn send(&mut self, plan: Plan) -> anyhow::Result<()> {
        self.unsettled = plan
            .changed
            .iter()
            .map(|(k, _)| k)
            .chain(&plan.gone)
            .cloned()
            .collect();
        for (key, object) in plan.changed {
            let stored = self
                .server()?
                .apply(object.clone())
                .map_err(|e| anyhow!("writing {key:?}: {e}"))?;
            self.wrote(&key, &stored);
            if key.1 == "Pod" && self.link_cgroup(&key, &stored)? {
                // Written again once its cgroup can be found, so that the
                // write the lab waits for is seen after the link exists.
                let mut touched = stored;
                touched["metadata"]["annotations"]["lab.palisade.dev/cgroup-linked"] =
                    json!("true");
                let stored = self
                    .server()?
                    .replace(touched)
                    .map_err(|e| anyhow!("writing {key:?}: {e}"))?;
                self.wrote(&key, &stored);
            }
            self.unsettled.remove(&key);
            self.sent.insert(key, object);
        }
        for key in plan.gone {
            let deleted = self
                .server()?
                .delete(&key.0, &key.1, key.2.as_deref(), &key.3)
                .map_err(|e| anyhow!("deleting {key:?}: {e}"))?;
            self.deleted(&key, &deleted);
            self.unsettled.remove(&key);
            self.sent.remove(&key);
        }
        Ok(())
    }

    /// Links the pod's kubelet-style cgroup path (from its uid, as the
    /// daemon derives it) to the cgroup the lab made for it (its
    /// `palisade.dev/cgroup` annotation); whether a new link was made.
    fn link_cgroup(&mut self, key: &Key, stored: &Value) -> anyhow::Result<bool> {
        let (Some(uid), Some(cgroup)) = (
            text(stored, "/metadata/uid"),
            stored
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(palisade::source::files::CGROUP_ANNOTATION))
                .and_then(Value::as_str),
        ) else {
            return Ok(false);
        };
        if self.linked.get(key).map(String::as_str) == Some(uid) {
            return Ok(false);
        }
        let qos = text(stored, "/status/qosClass").unwrap_or("BestEffort");
        let relative = palisade::source::kube::cgroup::relative(
            palisade::source::kube::cgroup::Driver::Systemd,
            uid,
            qos,
        )
        .map_err(|e| anyhow!("{key:?}: {e}"))?;
        let link = self.cgroups.join(relative);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(cgroup, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        self.linked.insert(key.clone(), uid.to_owned());
        Ok(true)
    }

    /// After a daemon restart: a new daemon lists, and learns of a deletion
    /// before its list only by the object's absence; its `observed` (the
    /// newest resourceVersion among the objects) cannot reach a deletion's
    /// version. So for every resource whose last write was a deletion one
    /// object is written again (an annotation bumped), which gives the
    /// restarted daemon a version to report at least as new.
    pub fn mark_restart(&mut self) -> anyhow::Result<()> {
        // Each watch the daemon reports: the version it must reach, and the
        // live objects it sees (by resource; by node, its pods).
        let mut watches: Vec<(u64, Vec<&Key>, Option<&String>)> = Vec::new();
        for (resource, &wanted) in &self.wanted {
            let live = self
                .sent
                .keys()
                .filter(|k| resource_of(&k.0, &k.1).is_some_and(|a| a.resource == resource))
                .collect();
            watches.push((wanted, live, None));
        }
        for (node, &wanted) in &self.wanted_local {
            let live = self
                .sent
                .iter()
                .filter(|(k, o)| node_of(k, o) == Some(node.as_str()))
                .map(|(k, _)| k)
                .collect();
            watches.push((wanted, live, Some(node)));
        }
        let (mut marks, mut nothing_left) = (Vec::new(), Vec::new());
        for (wanted, live, node) in watches {
            let newest = live
                .iter()
                .filter_map(|k| {
                    self.server()
                        .ok()?
                        .get(&k.0, &k.1, k.2.as_deref(), &k.3)
                        .ok()
                })
                .map(|o| rv_of(&o))
                .max()
                .unwrap_or(0);
            if newest < wanted {
                match (live.first(), node) {
                    (Some(key), _) => marks.push((*key).clone()),
                    // A node with no pod left: its watch lists nothing to
                    // report a version of, and has nothing to be read.
                    (None, Some(node)) => nothing_left.push(node.clone()),
                    (None, None) => {}
                }
            }
        }
        for node in nothing_left {
            self.wanted_local.remove(&node);
        }
        for key in marks {
            let mut object = self
                .server()?
                .get(&key.0, &key.1, key.2.as_deref(), &key.3)
                .map_err(|e| anyhow!("reading {key:?}: {e}"))?;
            let n = rv_of(&object);
            object["metadata"]["annotations"]["lab.palisade.dev/restart-mark"] =
                json!(n.to_string());
            let stored = self
                .server()?
                .replace(object)
                .map_err(|e| anyhow!("marking {key:?}: {e}"))?;
            self.wrote(&key, &stored);
        }
        Ok(())
    }

    /// The status of node `node`'s daemon has seen every write of the
    /// last sync, its own pods' in its watch of them too.
    pub fn seen(&self, status: &Value, node: &str) -> bool {
        let reached = |watch: &str, rv: u64| {
            status["observed"][watch]
                .as_u64()
                .is_some_and(|seen| seen >= rv)
        };
        self.wanted
            .iter()
            .all(|(resource, rv)| reached(resource, *rv))
            && self
                .wanted_local
                .get(node)
                .is_none_or(|rv| reached(palisade::source::kube::LOCAL_PODS, *rv))
    }
}
