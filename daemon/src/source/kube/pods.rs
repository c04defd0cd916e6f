//! The cluster's pods as a reading lists them, kept from one reading to
//! the next: a reading makes again only the pods whose store object, node
//! object, cgroup or addresses changed, and hands the others out as the
//! same shared objects, in the same order, without sorting the cluster.
//!
//! At 10,000 pods, making every pod again on every reading (its labels
//! copied, its addresses parsed, the whole list sorted by key and compared
//! with the last) took most of a pass through the Kubernetes source, for
//! a change that touched one pod or none.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::ApiPod;
use crate::{
    model::{FastMap, Pod},
    source::objects,
};

/// A pod as a reading made it, and what it was made from.
struct Made {
    /// The cluster-wide store's object, and the node store's (a local pod).
    api: Arc<ApiPod>,
    local: Option<Arc<ApiPod>>,
    cgroup: Option<String>,
    /// The addresses the object claims, before another pod's claim is
    /// weighed against them; whether the pod holds them all.
    claimed: Vec<IpAddr>,
    holds_all: bool,
    /// `namespace/name`, the snapshot's order.
    key: String,
    pod: Arc<Pod>,
    /// The last reading that saw it.
    seen: u64,
}

/// The pods of the last reading: by the store object (its address, which
/// no other object can take while `Made` holds it: a walk of the store
/// then reads nothing of an unchanged object but its address), with the
/// object each uid last had, and in key order.
#[derive(Default)]
pub struct Pods {
    made: FastMap<usize, Made>,
    by_uid: FastMap<String, usize>,
    by_key: BTreeMap<String, Arc<Pod>>,
    readings: u64,
    /// The stores' event count the last reading found (what it gave is
    /// `by_key`).
    last_events: Option<u64>,
}

/// What a reading needs of a pod besides its objects: its cgroup, given
/// its uid and QoS class (`None`: not found; `Err`: why it cannot be).
pub type Locate<'a> = &'a dyn Fn(&str, &str) -> Result<Option<String>, String>;

/// The store's identity of `p`: its uid, or, for an object without one
/// (no API server omits it), its key.
fn id_of(p: &ApiPod) -> std::borrow::Cow<'_, str> {
    match &p.metadata.uid {
        Some(uid) => uid.as_str().into(),
        None => format!("/{}", key_of(p)).into(),
    }
}

fn key_of(p: &ApiPod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn same(a: Option<&Arc<ApiPod>>, b: Option<&Arc<ApiPod>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A local pod's cgroup, with why it has none where it cannot.
fn cgroup_of(
    p: &ApiPod,
    here: Option<&Arc<ApiPod>>,
    locate: Locate<'_>,
    errors: &mut Vec<String>,
) -> Option<String> {
    let qos = here?.status.as_ref()?.qos_class.as_deref()?;
    let uid = p.metadata.uid.as_deref()?;
    match locate(uid, qos) {
        Ok(path) => path,
        Err(e) => {
            errors.push(format!("Pod {}: no cgroup: {e}", key_of(p)));
            None
        }
    }
}

/// What a reading does with one live pod.
enum Step {
    /// The last reading's pod holds.
    Keep,
    /// Made again: the addresses its object claims, and those it holds.
    Make {
        claimed: Vec<IpAddr>,
        owned: Vec<IpAddr>,
    },
}

impl Pods {
    /// Every live pod of the cluster-wide store, in key order; an address
    /// two pods claim goes to one of them only (see [`owners`]). Local pods
    /// (the node store's objects, by uid) get their cgroup and their
    /// annotations' source settings. A pod whose result is as before is
    /// the last reading's object. `events`: the two stores' events, all
    /// told (read before them); where none came since the last reading,
    /// only the local pods' cgroups are looked for again. `stores`: the
    /// cluster-wide store's objects and the node store's by uid.
    pub fn read(
        &mut self,
        events: u64,
        stores: impl FnOnce() -> (Vec<Arc<ApiPod>>, BTreeMap<String, Arc<ApiPod>>),
        locate: Locate<'_>,
        errors: &mut Vec<String>,
    ) -> Vec<Arc<Pod>> {
        if self.last_events == Some(events) {
            let mut found = Vec::new();
            let cgroups_held = self
                .made
                .values()
                .filter(|m| m.local.is_some())
                .all(|m| cgroup_of(&m.api, m.local.as_ref(), locate, &mut found) == m.cgroup);
            if cgroups_held {
                errors.append(&mut found);
                return self.by_key.values().cloned().collect();
            }
        }
        let (all, local) = stores();
        self.last_events = Some(events);
        self.read_stores(all, &local, locate, errors)
    }

    fn read_stores(
        &mut self,
        all: Vec<Arc<ApiPod>>,
        local: &BTreeMap<String, Arc<ApiPod>>,
        locate: Locate<'_>,
        errors: &mut Vec<String>,
    ) -> Vec<Arc<Pod>> {
        self.readings += 1;
        let reading = self.readings;
        let live: Vec<Arc<ApiPod>> = all.into_iter().filter(|p| !objects::finished(p)).collect();
        let at = |p: &Arc<ApiPod>| Arc::as_ptr(p) as usize;
        // The node's objects by the cluster-wide object of their uid: a
        // few, found without reading every pod's uid.
        let here_of: FastMap<usize, &Arc<ApiPod>> = local
            .iter()
            .filter_map(|(uid, l)| Some((*self.by_uid.get(uid)?, l)))
            .collect();
        let steps: Vec<Step> = {
            let before: Vec<Option<&Made>> = live.iter().map(|p| self.made.get(&at(p))).collect();
            let fresh: Vec<Option<Vec<IpAddr>>> = live
                .iter()
                .zip(&before)
                .map(|(p, m)| m.is_none().then(|| objects::pod_ips(p)))
                .collect();
            let claims: Vec<&[IpAddr]> = before
                .iter()
                .zip(&fresh)
                .map(|(m, f)| match (m, f) {
                    (Some(m), _) => m.claimed.as_slice(),
                    (None, Some(f)) => f.as_slice(),
                    (None, None) => &[],
                })
                .collect();
            let owner = owners(&live, &claims);
            claims
                .iter()
                .zip(&before)
                .enumerate()
                .map(|(i, (claims, m))| {
                    let holds = |ip: &&IpAddr| owner.get(*ip) == Some(&i);
                    match m {
                        Some(m) if m.holds_all && claims.iter().all(|ip| holds(&ip)) => Step::Keep,
                        _ => {
                            let owned: Vec<IpAddr> = claims.iter().filter(holds).copied().collect();
                            match m {
                                Some(m) if m.pod.ips == owned => Step::Keep,
                                _ => Step::Make {
                                    claimed: claims.to_vec(),
                                    owned,
                                },
                            }
                        }
                    }
                })
                .collect()
        };
        for (p, step) in live.iter().zip(steps) {
            let ptr = at(p);
            // A new object of a pod: its uid's object before, if any.
            let known = self.made.contains_key(&ptr);
            let here = if known {
                here_of.get(&ptr).copied()
            } else {
                p.metadata.uid.as_ref().and_then(|uid| local.get(uid))
            };
            let cgroup = cgroup_of(p, here, locate, errors);
            let (claimed, owned) = match step {
                Step::Keep => match self.made.get_mut(&ptr) {
                    Some(m) if same(m.local.as_ref(), here) && m.cgroup == cgroup => {
                        m.seen = reading;
                        continue;
                    }
                    Some(m) => (m.claimed.clone(), m.pod.ips.clone()),
                    None => continue,
                },
                Step::Make { claimed, owned } => (claimed, owned),
            };
            let mut pod = objects::pod(p, cgroup.clone());
            pod.ips = owned;
            // Only a local pod's annotations are kept (the cluster-wide
            // store trims them), and only a local pod is checked.
            if let Some(l) = here {
                let annotations = l.metadata.annotations.as_ref();
                pod.source_check = objects::source_check(annotations);
                pod.source_prefixes = objects::source_prefixes(annotations);
            }
            let key = pod.key();
            let id = id_of(p).into_owned();
            // What this object, or the uid's object it replaces, made.
            let previous = match known {
                true => self.made.remove(&ptr),
                false => self.by_uid.get(&id).and_then(|at| self.made.remove(at)),
            };
            // A new version that changes nothing policy reads (a status
            // condition, the resourceVersion) keeps the pod's object, so
            // that the compiler sees nothing changed.
            let pod = match previous {
                Some(m) if *m.pod == pod => m.pod,
                _ => Arc::new(pod),
            };
            self.by_key.insert(key.clone(), pod.clone());
            self.by_uid.insert(id, ptr);
            let holds_all = pod.ips.len() == claimed.len();
            self.made.insert(
                ptr,
                Made {
                    api: p.clone(),
                    local: here.cloned(),
                    cgroup,
                    claimed,
                    holds_all,
                    key,
                    pod,
                    seen: reading,
                },
            );
        }
        // Pods gone (or finished, or replaced by a new object) since: out,
        // unless another object has taken their key or uid this reading.
        let (by_key, by_uid) = (&mut self.by_key, &mut self.by_uid);
        self.made.retain(|&at, m| {
            if m.seen == reading {
                return true;
            }
            if by_key.get(&m.key).is_some_and(|p| Arc::ptr_eq(p, &m.pod)) {
                by_key.remove(&m.key);
            }
            let id = id_of(&m.api);
            if by_uid.get(id.as_ref()) == Some(&at) {
                by_uid.remove(id.as_ref());
            }
            false
        });
        self.by_key.values().cloned().collect()
    }
}

/// Which pod (by its place in `pods`) holds each address it claims
/// (`claimed`, in the same order). Two live pods can claim one address for
/// a moment: the IPAM has given a terminating pod's address to a new pod
/// before the old object is gone. The address goes to the pod that is not
/// being deleted, else to the newer one, so a new pod never takes on the
/// old one's identity.
pub fn owners(pods: &[Arc<ApiPod>], claimed: &[&[IpAddr]]) -> FastMap<IpAddr, usize> {
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
    let mut best: FastMap<IpAddr, usize> =
        FastMap::with_capacity_and_hasher(pods.len(), Default::default());
    for (i, ips) in claimed.iter().enumerate() {
        for ip in ips.iter() {
            match best.get(ip) {
                Some(&held) if rank(&pods[held]) >= rank(&pods[i]) => {}
                _ => {
                    best.insert(*ip, i);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(uid: &str, ns: &str, name: &str, app: &str, ip: &str, created: &str) -> Arc<ApiPod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": uid,
                             "labels": {"app": app},
                             "creationTimestamp": created, "resourceVersion": "1"},
                "status": {"podIP": ip, "phase": "Running"}
            }))
            .unwrap(),
        )
    }

    /// `p` as the node's store has it, with its QoS class.
    fn on_node(p: &ApiPod, qos: &str) -> ApiPod {
        let mut node_object = p.clone();
        node_object.status.as_mut().unwrap().qos_class = Some(qos.into());
        node_object
    }

    fn none(_: &str, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// A reading after an event: the stores are read.
    fn read_local(
        pods: &mut Pods,
        all: &[Arc<ApiPod>],
        local: &BTreeMap<String, Arc<ApiPod>>,
        locate: Locate<'_>,
        errors: &mut Vec<String>,
    ) -> Vec<Arc<Pod>> {
        let events = pods.readings + 1;
        pods.read(events, || (all.to_vec(), local.clone()), locate, errors)
    }

    fn read(pods: &mut Pods, all: &[Arc<ApiPod>]) -> Vec<Arc<Pod>> {
        let mut errors = Vec::new();
        let out = read_local(pods, all, &BTreeMap::new(), &none, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        out
    }

    fn keys(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| p.key()).collect()
    }

    const T0: &str = "2026-12-02T00:00:00Z";
    const T1: &str = "2026-12-02T00:05:00Z";

    #[test]
    fn an_unchanged_pod_is_the_last_reading_s_object_in_key_order() {
        let mut pods = Pods::default();
        let (a, b, c) = (
            api("1", "x", "b", "1", "10.0.0.1", T0),
            api("2", "x", "a", "1", "10.0.0.2", T0),
            api("3", "x-y", "a", "1", "10.0.0.3", T0),
        );
        let first = read(&mut pods, &[a.clone(), b, c.clone()]);
        assert_eq!(keys(&first), ["x-y/a", "x/a", "x/b"], "as the keys sort");
        // x/a relabelled, x/b gone, x/c new; x-y/a the same object.
        let relabelled = api("2", "x", "a", "2", "10.0.0.2", T0);
        let new = api("4", "x", "c", "1", "10.0.0.4", T0);
        let now = read(&mut pods, &[new, relabelled, c]);
        assert_eq!(keys(&now), ["x-y/a", "x/a", "x/c"]);
        assert!(Arc::ptr_eq(&now[0], &first[0]), "x-y/a unchanged");
        assert!(!Arc::ptr_eq(&now[1], &first[1]) && now[1].labels["app"] == "2");
        // x/b back: a pod of its own again.
        let back = read(&mut pods, &[a]);
        assert_eq!(keys(&back), ["x/b"]);
        assert!(!Arc::ptr_eq(&back[0], &first[2]));
        // A new version of its object that policy reads nothing new in.
        let same = read(&mut pods, &[api("1", "x", "b", "1", "10.0.0.1", T0)]);
        assert!(
            Arc::ptr_eq(&same[0], &back[0]),
            "an equal pod keeps its object"
        );
    }

    #[test]
    fn a_pod_deleted_and_created_again_by_name_is_listed_once() {
        let mut pods = Pods::default();
        read(&mut pods, &[api("1", "x", "a", "1", "10.0.0.1", T0)]);
        let now = read(&mut pods, &[api("2", "x", "a", "2", "10.0.0.1", T1)]);
        assert_eq!(keys(&now), ["x/a"]);
        assert_eq!(now[0].labels["app"], "2");
        assert_eq!(keys(&read(&mut pods, &[])), Vec::<String>::new());
    }

    #[test]
    fn a_reused_address_goes_to_the_new_pod_never_the_old_one() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let old = api("old", "x", "old", "1", "10.0.0.5", T0);
        let new = api("new", "x", "new", "1", "10.0.0.5", T1);
        let claims: &[&[IpAddr]] = &[&[ip], &[ip]];
        assert_eq!(owners(&[old.clone(), new.clone()], claims)[&ip], 1);
        assert_eq!(owners(&[new.clone(), old.clone()], claims)[&ip], 0);
        // A terminating pod loses its address even to an older claimant.
        let mut terminating =
            (*api("t", "x", "t", "1", "10.0.0.5", "2026-12-02T00:09:00Z")).clone();
        terminating.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        assert_eq!(
            owners(&[Arc::new(terminating), old.clone()], claims)[&ip],
            1
        );

        // The old pod's object does not change when the new one comes: it
        // loses the address all the same, and gets it back when the new
        // one goes.
        let mut pods = Pods::default();
        let first = read(&mut pods, std::slice::from_ref(&old));
        assert_eq!(first[0].ips, [ip]);
        let both = read(&mut pods, &[old.clone(), new.clone()]);
        let by = |list: &[Arc<Pod>], name: &str| {
            list.iter().find(|p| p.name == name).unwrap().ips.clone()
        };
        assert_eq!(by(&both, "old"), Vec::<IpAddr>::new());
        assert_eq!(by(&both, "new"), [ip]);
        let alone = read(&mut pods, &[old]);
        assert_eq!(by(&alone, "old"), [ip]);
    }

    #[test]
    fn a_local_pod_gets_its_cgroup_and_its_node_object_s_settings() {
        let mut pods = Pods::default();
        let p = api("u1", "x", "a", "1", "10.0.0.1", T0);
        let mut node_object = on_node(&p, "BestEffort");
        let local = BTreeMap::from([("u1".to_owned(), Arc::new(node_object.clone()))]);
        let found = |uid: &str, qos: &str| Ok(Some(format!("/cg/{qos}/{uid}")));
        let mut errors = Vec::new();
        let all = [p.clone()];
        let first = read_local(&mut pods, &all, &local, &found, &mut errors);
        assert_eq!(first[0].cgroup.as_deref(), Some("/cg/BestEffort/u1"));
        // Its cgroup gone: the pod is made again without one.
        let now = read_local(&mut pods, &all, &local, &none, &mut errors);
        assert_eq!(now[0].cgroup, None);
        // Its node object annotated: read again, though the cluster-wide
        // object is the same.
        node_object.metadata.annotations = Some(BTreeMap::from([(
            objects::SOURCE_CHECK_ANNOTATION.to_owned(),
            "off".to_owned(),
        )]));
        let local = BTreeMap::from([("u1".to_owned(), Arc::new(node_object))]);
        let off = read_local(&mut pods, &all, &local, &none, &mut errors);
        assert_ne!(off[0].source_check, now[0].source_check);
        let failing = |_: &str, _: &str| Err("no driver".to_owned());
        read_local(&mut pods, &all, &local, &failing, &mut errors);
        assert!(
            errors.iter().any(|e| e == "Pod x/a: no cgroup: no driver"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_reading_with_no_event_since_reads_no_store_but_looks_for_cgroups_again() {
        let mut pods = Pods::default();
        let p = api("u1", "x", "a", "1", "10.0.0.1", T0);
        let local = BTreeMap::from([("u1".to_owned(), Arc::new(on_node(&p, "Burstable")))]);
        let mut errors = Vec::new();
        let stores = || (vec![p.clone()], local.clone());
        let first = pods.read(7, stores, &none, &mut errors);
        assert_eq!(first[0].cgroup, None);
        let unread = || -> (Vec<Arc<ApiPod>>, BTreeMap<String, Arc<ApiPod>>) {
            panic!("the stores were read with no event since the last reading")
        };
        let again = pods.read(7, unread, &none, &mut errors);
        assert!(Arc::ptr_eq(&again[0], &first[0]));
        // The pod's cgroup made since: it is made again.
        let found = |uid: &str, qos: &str| Ok(Some(format!("/cg/{qos}/{uid}")));
        let placed = pods.read(7, stores, &found, &mut errors);
        assert_eq!(placed[0].cgroup.as_deref(), Some("/cg/Burstable/u1"));
        // An event on either store: read.
        let relabelled = api("u1", "x", "a", "2", "10.0.0.1", T0);
        let now = pods.read(8, || (vec![relabelled], local.clone()), &found, &mut errors);
        assert_eq!(now[0].labels["app"], "2");
        assert!(errors.is_empty(), "{errors:?}");
    }
}
