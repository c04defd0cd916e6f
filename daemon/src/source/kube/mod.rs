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
mod pods;
pub mod policies;
pub mod settings;
pub mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
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

use self::{
    access::Access,
    policies::Policies,
    watch::{States, Touched},
};
use super::{
    Reading, Source,
    objects::{self, ApiNamespace, ApiPod},
};
use crate::model::{Namespace, Pod, Policy, Snapshot, posture::namespace_postures};

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
    /// The last reading's pods, handed out again where they did not change.
    pods_made: pods::Pods,
    /// What the last reading of the policies gave: the policies and the
    /// errors of refused versions.
    last_policies: Option<(Vec<Arc<Policy>>, Vec<String>)>,
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
            pods_made: pods::Pods::default(),
            last_policies: None,
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

    /// Every live pod, in key order (see [`pods::Pods::read`]).
    fn pods(&mut self, errors: &mut Vec<String>) -> Vec<Arc<Pod>> {
        let touched = self
            .states
            .take_touched([access::PODS.resource, LOCAL_PODS]);
        let (pods, local_pods) = (&self.pods, &self.local_pods);
        let objects = |key: &str| {
            let at = watch::object_ref(key, ());
            (pods.get(&at), local_pods.get(&at))
        };
        let all = || {
            let key = |p: Arc<ApiPod>| watch::key_of(p.as_ref());
            pods.state()
                .into_iter()
                .map(key)
                .chain(local_pods.state().into_iter().map(key))
                .collect()
        };
        let cgroups = &self.options.cgroups;
        let locate = |uid: &str, qos: &str| {
            Ok(cgroups
                .locate(uid, qos)?
                .map(|path| path.display().to_string()))
        };
        self.pods_made.read(touched, objects, all, &locate, errors)
    }
}

impl KubeSource {
    /// Every policy's last good version, in key order, with the errors of
    /// the versions refused. Only the objects the policy watches' events
    /// named since the last reading are looked up (a kind's whole store
    /// after its list); with none, the last reading's policies and errors
    /// stand (a refusal is reported as an Event once, when first seen).
    fn policies(&mut self, errors: &mut Vec<String>) -> Vec<Arc<Policy>> {
        let mut new_refusals = Vec::new();
        let mut changed = false;
        for (access, store) in &self.policy_stores {
            match self.states.take_touched([access.resource]) {
                Touched::Keys(keys) => {
                    for name in keys {
                        let object = store.get(&watch::object_ref(&name, dynamic(access)));
                        self.policies.bring_one(
                            access,
                            &name,
                            object.as_deref(),
                            &mut new_refusals,
                        );
                        changed = true;
                    }
                }
                Touched::All => {
                    let objects = store.state();
                    self.policies.bring_kind(
                        access,
                        objects.iter().map(|o| o.as_ref()),
                        &mut new_refusals,
                    );
                    changed = true;
                }
            }
        }
        if !changed && let Some((policies, refused)) = &self.last_policies {
            errors.extend(refused.iter().cloned());
            return policies.clone();
        }
        let pass = self.policies.pass(new_refusals);
        for refusal in &pass.new_refusals {
            events::report(&self.client, refusal, &self.options.node);
        }
        let mut policies = pass.policies;
        policies.sort_by_cached_key(|p| p.key());
        errors.extend(pass.errors.iter().cloned());
        self.last_policies = Some((policies.clone(), pass.errors));
        policies
    }

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
        let pods = self.pods(&mut errors);
        let policies = self.policies(&mut errors);
        let node_denies = self.node_denies(&mut errors);
        Reading {
            snapshot: std::sync::Arc::new(Snapshot {
                namespaces,
                pods,
                policies,
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
    use std::net::IpAddr;

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
