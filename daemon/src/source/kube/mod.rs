//! The Kubernetes API source: reflectors (kube-runtime `watcher` plus
//! `reflector`) keep local stores of
//!
//! - this node's pods (field selector `spec.nodeName`), whole: their uid
//!   and QoS class give their cgroup for the process and file rules;
//! - every pod of the cluster, trimmed to what policy needs (labels,
//!   addresses, named ports, node, phase): peers' identities, pods on
//!   other nodes included;
//! - namespaces (labels, posture annotations);
//! - the policy kinds of [`access::POLICY_KINDS`].
//!
//! A reading is built from the stores. Until every watch has listed once,
//! the reading says it is waiting and the agent applies nothing, so what
//! the last run pinned keeps enforcing. While a watch fails (API server
//! down, 410 Gone, expired credentials), its store keeps its last contents,
//! the reading is marked stale, and the watch retries with backoff.

pub mod access;
pub mod cgroup;
pub mod events;
pub mod policies;
pub mod settings;
pub mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerPort, PodSpec, PodStatus};
use kube::{
    Api, Client,
    core::{ApiResource, DynamicObject},
    runtime::{
        reflector::{Store, store::Writer},
        watcher,
    },
};
use tokio::sync::mpsc;

use self::{access::Access, policies::Policies, watch::States};
use super::{
    Reading, Source,
    objects::{self, ApiNamespace, ApiPod},
};
use crate::model::{Namespace, Pod, Snapshot, posture::namespace_postures};

#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    pub cgroups: cgroup::Layout,
    /// The node settings' ConfigMap (namespace, name), if any.
    pub settings: Option<(String, String)>,
}

pub struct KubeSource {
    client: Client,
    options: Options,
    states: States,
    namespaces: Store<ApiNamespace>,
    pods: Store<ApiPod>,
    local_pods: Store<ApiPod>,
    policy_stores: Vec<(Access, Store<DynamicObject>)>,
    policies: Policies,
    /// Each namespace's last version whose posture annotations read.
    namespaces_good: BTreeMap<String, Namespace>,
    settings: Option<Store<ConfigMap>>,
    /// The last deny list the settings gave that read.
    denies_good: Vec<ipnet::IpNet>,
    wake: Option<mpsc::Receiver<()>>,
    /// The last read's pods, handed out again where they did not change.
    last_pods: Vec<Arc<Pod>>,
}

/// A client from `kubeconfig` when given, else as kubectl would find one
/// (in-cluster service account, then `$KUBECONFIG`, then `~/.kube/config`).
pub async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// The watch of this node's pods, as the status's `observed` names it:
/// a write to a local pod is in force once this watch has seen it too
/// (its uid, QoS class and annotations are read from here).
pub const LOCAL_PODS: &str = "pods (this node)";

/// What a peer's pod needs to be kept: the cluster-wide store holds every
/// pod, so it holds no more than this.
fn trim(pod: &mut ApiPod) {
    let m = &mut pod.metadata;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.annotations = None;
    let spec = pod.spec.take().unwrap_or_default();
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        containers: spec
            .containers
            .into_iter()
            .filter(|c| {
                c.ports
                    .as_ref()
                    .is_some_and(|p| p.iter().any(|p| p.name.is_some()))
            })
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .filter(|p| p.name.is_some())
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        qos_class: status.qos_class,
        ..PodStatus::default()
    });
}

fn dynamic(access: &Access) -> ApiResource {
    ApiResource {
        group: access.group.to_owned(),
        version: access.version.to_owned(),
        api_version: access.api_version(),
        kind: access.kind.to_owned(),
        plural: access.resource.to_owned(),
    }
}

impl KubeSource {
    /// Starts every watch on the current tokio runtime.
    pub fn start(client: Client, options: Options) -> Self {
        let states = States::default();
        let (tx, rx) = mpsc::channel(1);
        let config = || watcher::Config::default().any_semantic();

        let writer = Writer::<ApiNamespace>::default();
        let namespaces = writer.as_reader();
        watch::spawn(
            access::NAMESPACES.resource,
            Api::all(client.clone()),
            config(),
            writer,
            |ns: &mut ApiNamespace| {
                ns.metadata.managed_fields = None;
                ns.spec = None;
                ns.status = None;
            },
            states.clone(),
            tx.clone(),
        );

        let writer = Writer::<ApiPod>::default();
        let pods = writer.as_reader();
        watch::spawn(
            access::PODS.resource,
            Api::all(client.clone()),
            config(),
            writer,
            trim,
            states.clone(),
            tx.clone(),
        );

        let writer = Writer::<ApiPod>::default();
        let local_pods = writer.as_reader();
        watch::spawn(
            LOCAL_PODS,
            Api::all(client.clone()),
            config().fields(&format!("spec.nodeName={}", options.node)),
            writer,
            |p: &mut ApiPod| p.metadata.managed_fields = None,
            states.clone(),
            tx.clone(),
        );

        let mut policy_stores = Vec::new();
        for kind in access::POLICY_KINDS {
            let resource = dynamic(&kind);
            let writer = Writer::<DynamicObject>::new(resource.clone());
            policy_stores.push((kind, writer.as_reader()));
            watch::spawn(
                kind.resource,
                Api::all_with(client.clone(), &resource),
                config(),
                writer,
                |o: &mut DynamicObject| {
                    o.metadata.managed_fields = None;
                    if let Some(data) = o.data.as_object_mut() {
                        data.remove("status");
                    }
                },
                states.clone(),
                tx.clone(),
            );
        }
        let settings = options.settings.as_ref().map(|(namespace, name)| {
            let writer = Writer::<ConfigMap>::default();
            let store = writer.as_reader();
            watch::spawn(
                access::NODE_SETTINGS.resource,
                Api::namespaced(client.clone(), namespace),
                config().fields(&format!("metadata.name={name}")),
                writer,
                |m: &mut ConfigMap| m.metadata.managed_fields = None,
                states.clone(),
                tx.clone(),
            );
            store
        });
        Self {
            client,
            options,
            states,
            settings,
            denies_good: Vec::new(),
            namespaces,
            pods,
            local_pods,
            policy_stores,
            policies: Policies::default(),
            namespaces_good: BTreeMap::new(),
            wake: Some(rx),
            last_pods: Vec::new(),
        }
    }

    fn namespaces(&mut self, errors: &mut Vec<String>) -> BTreeMap<String, Namespace> {
        let mut out = BTreeMap::new();
        for ns in self.namespaces.state() {
            let n = objects::namespace(&ns);
            match namespace_postures(&n) {
                Ok(_) => {
                    self.namespaces_good.insert(n.name.clone(), n.clone());
                    out.insert(n.name.clone(), n);
                }
                Err(e) => {
                    let kept = self.namespaces_good.get(&n.name).cloned();
                    let suffix = if kept.is_some() {
                        " (its last good version stays in force)"
                    } else {
                        ""
                    };
                    errors.push(format!("Namespace {}: {e}{suffix}", n.name));
                    if let Some(good) = kept {
                        out.insert(n.name.clone(), good);
                    }
                }
            }
        }
        self.namespaces_good
            .retain(|name, _| out.contains_key(name));
        out
    }

    /// Every live pod; an address two pods claim goes to one of them only
    /// (see [`owners`]). Local pods get their cgroup.
    fn pods(&self, errors: &mut Vec<String>) -> Vec<Pod> {
        let all: Vec<Arc<ApiPod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| !objects::finished(p))
            .collect();
        let owner = owners(&all);
        let local: BTreeMap<String, Arc<ApiPod>> = self
            .local_pods
            .state()
            .into_iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();
        let mut out: Vec<Pod> = all
            .iter()
            .map(|p| {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let here = local.get(&uid);
                let cgroup = here.and_then(|l| {
                    let qos = l.status.as_ref()?.qos_class.clone()?;
                    match self.options.cgroups.locate(&uid, &qos) {
                        Ok(path) => Some(path?.display().to_string()),
                        Err(e) => {
                            errors.push(format!(
                                "Pod {}: no cgroup: {e}",
                                objects::pod(p, None).key()
                            ));
                            None
                        }
                    }
                });
                let mut pod = objects::pod(p, cgroup);
                pod.ips.retain(|ip| owner.get(ip) == Some(&uid));
                // Only a local pod's annotations are kept (the cluster-wide
                // store trims them), and only a local pod is checked.
                if let Some(l) = here {
                    let annotations = l.metadata.annotations.as_ref();
                    pod.source_check = objects::source_check(annotations);
                    pod.source_prefixes = objects::source_prefixes(annotations);
                }
                pod
            })
            .collect();
        out.sort_by(by_key);
        out
    }
}

/// Orders pods as their keys (`namespace/name`) sort, without building
/// them: a pass sorts the cluster's pods.
fn by_key(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    fn key(p: &Pod) -> impl Iterator<Item = u8> + '_ {
        p.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(p.name.bytes())
    }
    key(a).cmp(key(b))
}

/// `pods` (in [`by_key`] order) as shared objects: `last`'s where a pod is
/// unchanged, so that the compiler tells what changed by pointer.
fn share(last: &[Arc<Pod>], pods: Vec<Pod>) -> Vec<Arc<Pod>> {
    let mut i = 0;
    pods.into_iter()
        .map(|pod| {
            while last
                .get(i)
                .is_some_and(|l| by_key(l, &pod) == std::cmp::Ordering::Less)
            {
                i += 1;
            }
            match last.get(i) {
                Some(l) if **l == pod => l.clone(),
                _ => Arc::new(pod),
            }
        })
        .collect()
}

/// Which pod (by uid) holds each address. Two live pods can claim one
/// address for a moment: the IPAM has given a terminating pod's address
/// to a new pod before the old object is gone. The address goes to the
/// pod that is not being deleted, else to the newer one, so a new pod
/// never takes on the old one's identity.
fn owners(pods: &[Arc<ApiPod>]) -> BTreeMap<IpAddr, String> {
    let rank = |p: &ApiPod| {
        (
            p.metadata.deletion_timestamp.is_none(),
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok()),
        )
    };
    let mut best: BTreeMap<IpAddr, &ApiPod> = BTreeMap::new();
    for p in pods {
        for ip in objects::pod_ips(p) {
            match best.get(&ip) {
                Some(held) if rank(held) >= rank(p) => {}
                _ => {
                    best.insert(ip, p);
                }
            }
        }
    }
    best.into_iter()
        .map(|(ip, p)| (ip, p.metadata.uid.clone().unwrap_or_default()))
        .collect()
}

impl KubeSource {
    /// The settings' deny list: the ConfigMap's, its last good one when it
    /// does not read, none when there is no ConfigMap.
    fn node_denies(&mut self, errors: &mut Vec<String>) -> Option<Vec<ipnet::IpNet>> {
        let store = self.settings.as_ref()?;
        let Some(map) = store.state().into_iter().next() else {
            self.denies_good.clear();
            return Some(Vec::new());
        };
        match settings::deny_cidrs(&map) {
            Ok(cidrs) => self.denies_good = cidrs,
            Err(faults) => {
                let name = map.metadata.name.clone().unwrap_or_default();
                for fault in faults {
                    errors.push(format!(
                        "ConfigMap {name} (node settings): {fault} (the last good settings stay in force)"
                    ));
                }
            }
        }
        Some(self.denies_good.clone())
    }
}

impl Source for KubeSource {
    fn read(&mut self) -> Reading {
        let (waiting, stale, observed) = {
            let states = self.states.lock();
            let unsynced: Vec<&str> = states
                .iter()
                .filter(|(_, s)| !s.synced && s.absent.is_none())
                .map(|(name, _)| *name)
                .collect();
            let failing: Vec<String> = states
                .iter()
                .filter_map(|(name, s)| {
                    let f = s.failure()?;
                    Some(format!(
                        "{name}: {} (for {}s)",
                        f.error,
                        f.since.elapsed().as_secs()
                    ))
                })
                .collect();
            let observed: BTreeMap<String, u64> = states
                .iter()
                .map(|(name, s)| ((*name).to_owned(), s.newest))
                .collect();
            (
                (!unsynced.is_empty())
                    .then(|| format!("the first list of {}", unsynced.join(", "))),
                (!failing.is_empty()).then(|| failing.join("; ")),
                observed,
            )
        };
        let revision = observed.values().max().copied().unwrap_or(0).to_string();
        if waiting.is_some() {
            return Reading {
                revision,
                waiting,
                stale,
                observed,
                ..Reading::default()
            };
        }
        let mut errors = Vec::new();
        let namespaces = self.namespaces(&mut errors);
        let pods = share(&self.last_pods, self.pods(&mut errors));
        self.last_pods.clone_from(&pods);
        let objects: Vec<(Access, Arc<DynamicObject>)> = self
            .policy_stores
            .iter()
            .flat_map(|(access, store)| store.state().into_iter().map(move |o| (*access, o)))
            .collect();
        let pass = self
            .policies
            .read(objects.iter().map(|(a, o)| (*a, o.as_ref())));
        for refusal in &pass.new_refusals {
            events::report(&self.client, refusal, &self.options.node);
        }
        errors.extend(pass.errors);
        let node_denies = self.node_denies(&mut errors);
        let mut policies = pass.policies;
        policies.sort_by_key(|p| p.key());
        Reading {
            snapshot: std::sync::Arc::new(Snapshot {
                namespaces,
                pods,
                policies: policies.into_iter().map(Arc::new).collect(),
            }),
            revision,
            errors,
            waiting: None,
            stale,
            observed,
            node_denies,
        }
    }

    fn changes(&mut self) -> mpsc::Receiver<()> {
        self.wake.take().unwrap_or_else(|| mpsc::channel(1).1)
    }
}

/// The names of the resources in [`access::ALL`] that the source watches,
/// for messages.
pub fn watched() -> BTreeSet<&'static str> {
    access::ALL
        .iter()
        .filter(|a| a.verbs.contains(&"watch"))
        .map(|a| a.resource)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, ip: &str, created: &str, deleting: bool) -> Arc<ApiPod> {
        let mut meta = json!({"name": uid, "namespace": "x", "uid": uid,
                              "creationTimestamp": created, "resourceVersion": "1"});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-12-02T00:10:00Z");
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": meta,
                "status": {"podIP": ip, "phase": "Running"}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn an_unchanged_pod_is_the_last_read_s_object() {
        let model = |ns: &str, name: &str, label: &str| Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_owned(), label.to_owned())].into(),
            ips: Vec::new(),
            ports: Vec::new(),
            cgroup: None,
            source_check: crate::model::SourceCheck::On,
            source_prefixes: crate::model::SourcePrefixes::None,
        };
        let mut first = vec![
            model("x", "b", "1"),
            model("x", "a", "1"),
            model("x-y", "a", "1"),
        ];
        first.sort_by(by_key);
        let keys: Vec<String> = first.iter().map(Pod::key).collect();
        assert_eq!(keys, ["x-y/a", "x/a", "x/b"], "as the keys sort");
        let last = share(&[], first);
        // x/a relabelled, x/b gone, x/c new.
        let mut next = vec![
            model("x-y", "a", "1"),
            model("x", "a", "2"),
            model("x", "c", "1"),
        ];
        next.sort_by(by_key);
        let now = share(&last, next);
        assert!(Arc::ptr_eq(&now[0], &last[0]), "x-y/a unchanged");
        assert!(!Arc::ptr_eq(&now[1], &last[1]) && now[1].labels["app"] == "2");
        assert_eq!(now[2].key(), "x/c");
    }

    #[test]
    fn a_reused_address_goes_to_the_new_pod_never_the_old_one() {
        let old = pod("old", "10.0.0.5", "2026-12-02T00:00:00Z", false);
        let new = pod("new", "10.0.0.5", "2026-12-02T00:05:00Z", false);
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(owners(&[old.clone(), new.clone()])[&ip], "new");
        assert_eq!(owners(&[new.clone(), old.clone()])[&ip], "new");
        // A terminating pod loses its address even to an older claimant.
        let terminating = pod("terminating", "10.0.0.5", "2026-12-02T00:09:00Z", true);
        assert_eq!(owners(&[terminating, old])[&ip], "old");
    }

    #[test]
    fn a_trimmed_pod_keeps_what_policy_needs() {
        let mut p: ApiPod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "uid": "u", "labels": {"pod": "a"},
                         "annotations": {"big": "x"}, "managedFields": [{"manager": "m"}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}],
                 "ports": [{"name": "web", "containerPort": 80}, {"containerPort": 81}]},
                {"name": "d", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "qosClass": "BestEffort",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        trim(&mut p);
        let model = objects::pod(&p, None);
        assert_eq!(model.labels["pod"], "a");
        assert_eq!(model.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(model.ports.len(), 1);
        assert_eq!(model.ports[0].port, 80);
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers.len(), 1);
        assert!(spec.containers[0].env.is_none() && spec.containers[0].image.is_none());
        let status = p.status.unwrap();
        assert!(status.conditions.is_none());
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        assert!(p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
    }
}
