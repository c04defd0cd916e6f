//! The cluster's pods as a reading lists them, kept from one reading to
//! the next: a reading looks only at the pods whose objects the watches
//! saw change (by key, from their events), at the pods that claim an
//! address one of those claims or claimed, and at the local pods' cgroups;
//! every other pod is handed out again as the same shared object, in key
//! order, without walking or sorting the cluster.
//!
//! At 10,000 pods, making every pod again on every reading (its labels
//! copied, its addresses parsed, the whole list sorted by key and compared
//! with the last) took most of a pass through the Kubernetes source, for
//! a change that touched one pod or none; walking the store to find the
//! changed objects still took 3 ms of it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::{ApiPod, watch::Touched};
use crate::{
    model::{FastMap, FastSet, Pod},
    source::objects,
};

/// A pod as a reading made it, and what it was made from.
struct Made {
    /// The cluster-wide store's object, and the node store's (a local pod).
    api: Arc<ApiPod>,
    local: Option<Arc<ApiPod>>,
    cgroup: Option<String>,
    /// The addresses the object claims, before another pod's claim is
    /// weighed against them.
    claimed: Vec<IpAddr>,
    /// None only within a reading, for a pod new to it until it is made.
    pod: Option<Arc<Pod>>,
}

/// The pods of the last reading, by key (`namespace/name`), with who
/// claims and who holds each address.
#[derive(Default)]
pub struct Pods {
    by_key: BTreeMap<Arc<str>, Made>,
    /// Every live pod that claims the address; most have one.
    claimants: FastMap<IpAddr, Vec<Arc<str>>>,
    /// Which of them holds it (see [`rank`]).
    holder: FastMap<IpAddr, Arc<str>>,
}

/// What a reading needs of a pod besides its objects: its cgroup, given
/// its uid and QoS class (`None`: not found; `Err`: why it cannot be).
pub type Locate<'a> = &'a dyn Fn(&str, &str) -> Result<Option<String>, String>;

/// A pod's objects in the two stores, by key: the cluster-wide store's,
/// and the node store's (a pod of this node).
pub type Objects = (Option<Arc<ApiPod>>, Option<Arc<ApiPod>>);

fn same(a: Option<&Arc<ApiPod>>, b: Option<&Arc<ApiPod>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A local pod's cgroup, with why it has none where it cannot.
fn cgroup_of(
    key: &str,
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
            errors.push(format!("Pod {key}: no cgroup: {e}"));
            None
        }
    }
}

/// Two live pods can claim one address for a moment: the IPAM has given a
/// terminating pod's address to a new pod before the old object is gone.
/// The address goes to the pod that is not being deleted, else to the
/// newer one (by creation, then by resourceVersion), so a new pod never
/// takes on the old one's identity; the key settles what is left, so that
/// the holder never depends on the order pods were read in.
fn rank<'a>(key: &'a str, p: &'a ApiPod) -> impl Ord + 'a {
    (
        p.metadata.deletion_timestamp.is_none(),
        p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok()),
        key,
    )
}

impl Pods {
    /// Every live pod of the cluster-wide store, in key order, made again
    /// only where `touched` (the keys both stores' watches saw change since
    /// the last reading, or all) says its objects may have changed, where
    /// another pod's claim on one of its addresses changed, or where its
    /// cgroup did. An address two pods claim goes to one of them only
    /// ([`rank`]). Local pods (with an object in the node store of the
    /// same uid) get their cgroup and their annotations' source settings.
    /// A pod made again as it was is the last reading's object. `objects`
    /// looks a key up in the stores; `all` lists both stores' keys (read
    /// only for [`Touched::All`]).
    pub fn read(
        &mut self,
        touched: Touched,
        objects: impl Fn(&str) -> Objects,
        all: impl FnOnce() -> BTreeSet<String>,
        locate: Locate<'_>,
        errors: &mut Vec<String>,
    ) -> Vec<Arc<Pod>> {
        let keys: BTreeSet<String> = match touched {
            Touched::Keys(keys) => keys,
            Touched::All => {
                let mut keys = all();
                keys.extend(self.by_key.keys().map(|k| k.to_string()));
                keys
            }
        };
        let mut redo: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut contested: FastSet<IpAddr> = FastSet::default();
        let mut fresh: Vec<(Arc<str>, Made)> = Vec::new();
        for key in keys {
            let (api, local) = objects(&key);
            let api = api.filter(|p| p.metadata.namespace.is_some() && !objects::finished(p));
            // The node's object of the same pod (a recreated pod's
            // objects may be of two uids for a moment).
            let here = local.filter(|l| {
                api.as_ref()
                    .is_some_and(|p| p.metadata.uid.is_some() && p.metadata.uid == l.metadata.uid)
            });
            if let (Some(m), Some(p)) = (self.by_key.get(key.as_str()), &api)
                && Arc::ptr_eq(&m.api, p)
                && same(m.local.as_ref(), here.as_ref())
            {
                continue;
            }
            let key: Arc<str> = key.into();
            let before = self.by_key.remove(&key);
            if let Some(m) = &before {
                self.unclaim(&key, &m.claimed, &mut contested);
            }
            let Some(api) = api else { continue };
            let claimed = objects::pod_ips(&api);
            for ip in &claimed {
                self.claimants.entry(*ip).or_default().push(key.clone());
                contested.insert(*ip);
            }
            redo.insert(key.clone());
            // Until it is made again below, the pod of its last object.
            let pod = before.and_then(|m| m.pod);
            fresh.push((
                key,
                Made {
                    api,
                    local: here,
                    cgroup: None,
                    claimed,
                    pod,
                },
            ));
        }
        self.by_key.extend(fresh);
        for ip in contested {
            self.settle(ip, &mut redo);
        }
        // Cgroups come and go without an event: every local pod's is
        // looked for again.
        for (key, m) in &mut self.by_key {
            if m.local.is_none() && m.cgroup.is_none() {
                continue;
            }
            let cgroup = cgroup_of(key, &m.api, m.local.as_ref(), locate, errors);
            if cgroup != m.cgroup {
                m.cgroup = cgroup;
                redo.insert(key.clone());
            }
        }
        for key in redo {
            self.make(&key);
        }
        self.by_key.values().filter_map(|m| m.pod.clone()).collect()
    }

    /// Takes `key`'s claims on `claimed` back.
    fn unclaim(&mut self, key: &Arc<str>, claimed: &[IpAddr], contested: &mut FastSet<IpAddr>) {
        for ip in claimed {
            if let Some(list) = self.claimants.get_mut(ip) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.claimants.remove(ip);
                }
            }
            contested.insert(*ip);
        }
    }

    /// Gives `ip` to the best of its claimants; each claimant whose
    /// holdings may have changed is to be made again.
    fn settle(&mut self, ip: IpAddr, redo: &mut BTreeSet<Arc<str>>) {
        let by_key = &self.by_key;
        let best = self.claimants.get(&ip).and_then(|list| {
            list.iter()
                .filter_map(|k| Some((k, &by_key.get(k)?.api)))
                .max_by(|(a, p), (b, q)| rank(a, p).cmp(&rank(b, q)))
                .map(|(k, _)| k.clone())
        });
        let before = match best {
            Some(best) => self.holder.insert(ip, best),
            None => self.holder.remove(&ip),
        };
        if before.as_ref() != self.holder.get(&ip) {
            redo.extend(before);
            redo.extend(self.holder.get(&ip).cloned());
        }
    }

    /// Makes `key`'s pod from its objects, its cgroup and the addresses it
    /// holds; where that gives the pod it had, it keeps that object (so
    /// the compiler sees nothing changed).
    fn make(&mut self, key: &Arc<str>) {
        let Some(m) = self.by_key.get(key) else {
            return;
        };
        let owned: Vec<IpAddr> = m
            .claimed
            .iter()
            .filter(|ip| self.holder.get(*ip) == Some(key))
            .copied()
            .collect();
        let mut pod = objects::pod(&m.api, m.cgroup.clone());
        pod.ips = owned;
        // Only a local pod's annotations are kept (the cluster-wide store
        // trims them), and only a local pod is checked.
        if let Some(l) = &m.local {
            let annotations = l.metadata.annotations.as_ref();
            pod.source_check = objects::source_check(annotations);
            pod.source_prefixes = objects::source_prefixes(annotations);
        }
        if let Some(m) = self.by_key.get_mut(key)
            && m.pod.as_deref() != Some(&pod)
        {
            m.pod = Some(Arc::new(pod));
        }
    }
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
    fn on_node(p: &ApiPod, qos: &str) -> Arc<ApiPod> {
        let mut node_object = p.clone();
        node_object.status.as_mut().unwrap().qos_class = Some(qos.into());
        Arc::new(node_object)
    }

    fn none(_: &str, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    fn found(uid: &str, qos: &str) -> Result<Option<String>, String> {
        Ok(Some(format!("/cg/{qos}/{uid}")))
    }

    fn key(p: &ApiPod) -> String {
        super::super::watch::key_of(p)
    }

    /// The two stores, as the watches keep them, and the keys their
    /// events named since the last reading.
    #[derive(Clone, Default)]
    struct Stores {
        all: BTreeMap<String, Arc<ApiPod>>,
        local: BTreeMap<String, Arc<ApiPod>>,
        touched: BTreeSet<String>,
    }

    impl Stores {
        fn put(&mut self, p: &Arc<ApiPod>) {
            self.touched.insert(key(p));
            self.all.insert(key(p), p.clone());
        }
        fn put_local(&mut self, p: &Arc<ApiPod>) {
            self.touched.insert(key(p));
            self.local.insert(key(p), p.clone());
        }
        fn delete(&mut self, key: &str) {
            self.touched.insert(key.to_owned());
            self.all.remove(key);
            self.local.remove(key);
        }

        /// A reading by the keys touched (or of everything).
        fn read_with(
            &mut self,
            pods: &mut Pods,
            everything: bool,
            locate: Locate<'_>,
            errors: &mut Vec<String>,
        ) -> Vec<Arc<Pod>> {
            let touched = std::mem::take(&mut self.touched);
            let touched = if everything {
                Touched::All
            } else {
                Touched::Keys(touched)
            };
            let objects = |k: &str| (self.all.get(k).cloned(), self.local.get(k).cloned());
            let all = || self.all.keys().chain(self.local.keys()).cloned().collect();
            pods.read(touched, objects, all, locate, errors)
        }

        fn read(&mut self, pods: &mut Pods) -> Vec<Arc<Pod>> {
            let mut errors = Vec::new();
            let out = self.read_with(pods, false, &none, &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            out
        }
    }

    fn keys(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| p.key()).collect()
    }

    const T0: &str = "2026-12-02T00:00:00Z";
    const T1: &str = "2026-12-02T00:05:00Z";

    #[test]
    fn an_unchanged_pod_is_the_last_reading_s_object_in_key_order() {
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        let a = api("1", "x", "b", "1", "10.0.0.1", T0);
        s.put(&a);
        s.put(&api("2", "x", "a", "1", "10.0.0.2", T0));
        s.put(&api("3", "x-y", "a", "1", "10.0.0.3", T0));
        let first = s.read(&mut pods);
        assert_eq!(keys(&first), ["x-y/a", "x/a", "x/b"], "as the keys sort");
        // x/a relabelled, x/b gone, x/c new; x-y/a the same object.
        s.put(&api("2", "x", "a", "2", "10.0.0.2", T0));
        s.delete("x/b");
        s.put(&api("4", "x", "c", "1", "10.0.0.4", T0));
        let now = s.read(&mut pods);
        assert_eq!(keys(&now), ["x-y/a", "x/a", "x/c"]);
        assert!(Arc::ptr_eq(&now[0], &first[0]), "x-y/a unchanged");
        assert!(!Arc::ptr_eq(&now[1], &first[1]) && now[1].labels["app"] == "2");
        // x/b back: a pod of its own again.
        s.put(&a);
        let back = s.read(&mut pods);
        assert_eq!(keys(&back), ["x-y/a", "x/a", "x/b", "x/c"]);
        assert!(!Arc::ptr_eq(&back[2], &first[2]));
        // A new version of its object that policy reads nothing new in.
        s.put(&api("1", "x", "b", "1", "10.0.0.1", T0));
        let same = s.read(&mut pods);
        assert!(
            Arc::ptr_eq(&same[2], &back[2]),
            "an equal pod keeps its object"
        );
        // Its key named by an event while its object did not change.
        s.touched.insert("x/b".into());
        assert!(Arc::ptr_eq(&s.read(&mut pods)[2], &back[2]));
    }

    #[test]
    fn a_pod_deleted_and_created_again_by_name_is_listed_once() {
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        s.put(&api("1", "x", "a", "1", "10.0.0.1", T0));
        s.read(&mut pods);
        s.delete("x/a");
        s.put(&api("2", "x", "a", "2", "10.0.0.1", T1));
        let now = s.read(&mut pods);
        assert_eq!(keys(&now), ["x/a"]);
        assert_eq!(now[0].labels["app"], "2");
        s.delete("x/a");
        assert_eq!(keys(&s.read(&mut pods)), Vec::<String>::new());
    }

    #[test]
    fn a_finished_pod_is_not_listed() {
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        let p = api("1", "x", "a", "1", "10.0.0.1", T0);
        s.put(&p);
        assert_eq!(s.read(&mut pods).len(), 1);
        let mut done = (*p).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        s.put(&Arc::new(done));
        assert!(s.read(&mut pods).is_empty());
    }

    #[test]
    fn a_reused_address_goes_to_the_new_pod_never_the_old_one() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let old = api("old", "x", "old", "1", "10.0.0.5", T0);
        let new = api("new", "x", "new", "1", "10.0.0.5", T1);
        let by = |list: &[Arc<Pod>], name: &str| {
            list.iter().find(|p| p.name == name).unwrap().ips.clone()
        };
        // The old pod's object does not change when the new one comes: it
        // loses the address all the same, and gets it back when the new
        // one goes.
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        s.put(&old);
        assert_eq!(s.read(&mut pods)[0].ips, [ip]);
        s.put(&new);
        let both = s.read(&mut pods);
        assert_eq!(by(&both, "old"), Vec::<IpAddr>::new());
        assert_eq!(by(&both, "new"), [ip]);
        s.delete("x/new");
        assert_eq!(by(&s.read(&mut pods), "old"), [ip]);
        // A terminating pod loses its address even to an older claimant.
        let mut terminating = (*api("t", "x", "t", "1", "10.0.0.5", T1)).clone();
        terminating.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        s.put(&Arc::new(terminating));
        let now = s.read(&mut pods);
        assert_eq!(by(&now, "old"), [ip]);
        assert_eq!(by(&now, "t"), Vec::<IpAddr>::new());
    }

    #[test]
    fn a_local_pod_gets_its_cgroup_and_its_node_object_s_settings() {
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        let p = api("u1", "x", "a", "1", "10.0.0.1", T0);
        s.put(&p);
        s.put_local(&on_node(&p, "BestEffort"));
        let mut errors = Vec::new();
        let first = s.read_with(&mut pods, false, &found, &mut errors);
        assert_eq!(first[0].cgroup.as_deref(), Some("/cg/BestEffort/u1"));
        // Its cgroup gone, with no event: the pod is made again without one.
        let now = s.read_with(&mut pods, false, &none, &mut errors);
        assert_eq!(now[0].cgroup, None);
        // Its node object annotated: read again, though the cluster-wide
        // object is the same.
        let mut annotated = (*on_node(&p, "BestEffort")).clone();
        annotated.metadata.annotations = Some(BTreeMap::from([(
            objects::SOURCE_CHECK_ANNOTATION.to_owned(),
            "off".to_owned(),
        )]));
        s.put_local(&Arc::new(annotated));
        let off = s.read_with(&mut pods, false, &none, &mut errors);
        assert_ne!(off[0].source_check, now[0].source_check);
        // A node object of another uid (the pod recreated) is not its.
        let mut other = (*on_node(&p, "BestEffort")).clone();
        other.metadata.uid = Some("u2".into());
        s.put_local(&Arc::new(other));
        let placed = s.read_with(&mut pods, false, &found, &mut errors);
        assert_eq!(placed[0].cgroup, None);
        s.put_local(&on_node(&p, "BestEffort"));
        let failing = |_: &str, _: &str| Err("no driver".to_owned());
        s.read_with(&mut pods, false, &failing, &mut errors);
        assert!(
            errors.iter().any(|e| e == "Pod x/a: no cgroup: no driver"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_reading_with_no_event_since_looks_nothing_up_but_cgroups() {
        let (mut pods, mut s) = (Pods::default(), Stores::default());
        let p = api("u1", "x", "a", "1", "10.0.0.1", T0);
        s.put(&p);
        s.put_local(&on_node(&p, "Burstable"));
        let mut errors = Vec::new();
        let first = s.read_with(&mut pods, false, &none, &mut errors);
        assert_eq!(first[0].cgroup, None);
        let unread = |_: &str| -> Objects { panic!("a store looked up with no event since") };
        let unlisted = || -> BTreeSet<String> { panic!("a store listed with no relist") };
        let again = pods.read(
            Touched::Keys(BTreeSet::new()),
            unread,
            unlisted,
            &none,
            &mut errors,
        );
        assert!(Arc::ptr_eq(&again[0], &first[0]));
        // The pod's cgroup made since: it is made again.
        let placed = pods.read(
            Touched::Keys(BTreeSet::new()),
            unread,
            unlisted,
            &found,
            &mut errors,
        );
        assert_eq!(placed[0].cgroup.as_deref(), Some("/cg/Burstable/u1"));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// One step of a store's history, over a few keys, uids and addresses
    /// so that pods collide on addresses and are recreated by name.
    #[derive(Clone, Debug)]
    enum Op {
        /// A pod written (created or replaced): its key, uid, label,
        /// address, a second address, creation minute, deleting,
        /// finished, and a resourceVersion others share (so that only
        /// the key breaks a tie).
        Put(u8, u8, u8, u8, Option<u8>, u8, bool, bool, bool),
        /// Its node object written (of the pod's uid or another), or gone.
        Local(u8, Option<u8>, bool),
        Delete(u8),
        /// An event whose object policy reads nothing new in.
        Touch(u8),
        /// A cgroup made or removed (by uid).
        Cgroup(u8),
        /// A relist: every object in the stores replaced by an equal one
        /// and no key named; the next reading is of everything.
        Relist,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (
                (0u8..6, 0u8..4, 0u8..2, 0u8..4, proptest::option::weighted(0.3, 0u8..4)),
                (0u8..3, proptest::bool::weighted(0.2), proptest::bool::weighted(0.1), proptest::bool::weighted(0.3)),
            )
                .prop_map(|((k, u, l, ip, ip2), (t, d, f, tie))| Op::Put(k, u, l, ip, ip2, t, d, f, tie)),
            2 => (0u8..6, proptest::option::weighted(0.8, 0u8..4), any::<bool>())
                .prop_map(|(k, u, q)| Op::Local(k, u, q)),
            1 => (0u8..6).prop_map(Op::Delete),
            1 => (0u8..6).prop_map(Op::Touch),
            1 => (0u8..4).prop_map(Op::Cgroup),
            1 => Just(Op::Relist),
        ]
    }

    proptest::proptest! {
        /// Read by the keys the events named, the pods are those a reading
        /// of everything from nothing gives, after every batch of changes,
        /// whatever the collisions, ties and relists; each address a live
        /// pod claims is held by its best ranked claimant alone (worked
        /// out from the store here); and a pod that did not change is the
        /// last reading's object.
        #[test]
        fn a_reading_by_events_gives_what_a_reading_of_everything_gives(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 0..5), 1..8),
        ) {
            let (mut pods, mut s) = (Pods::default(), Stores::default());
            let mut cgroups: BTreeSet<String> = BTreeSet::new();
            let mut rv = 0u64;
            let mut relist = true;
            let mut last: Vec<Arc<Pod>> = Vec::new();
            for batch in batches {
                for op in batch {
                    rv += 1;
                    match op {
                        Op::Put(k, u, l, ip, ip2, t, deleting, finished, tie) => {
                            let mut p = (*api(&format!("u{u}"), &format!("n{}", k % 2), &format!("p{k}"),
                                &l.to_string(), &format!("10.0.0.{ip}"),
                                &format!("2026-12-02T00:0{}:00Z", if tie { 0 } else { t }))).clone();
                            p.metadata.resource_version = Some(if tie { "1".into() } else { rv.to_string() });
                            if let Some(ip2) = ip2 {
                                let status = p.status.as_mut().unwrap();
                                status.pod_ips = Some(
                                    [format!("10.0.0.{ip}"), format!("10.0.0.{ip2}")]
                                        .into_iter()
                                        .map(|ip| k8s_openapi::api::core::v1::PodIP { ip })
                                        .collect(),
                                );
                            }
                            if deleting {
                                p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
                            }
                            if finished {
                                p.status.as_mut().unwrap().phase = Some("Failed".into());
                            }
                            s.put(&Arc::new(p));
                        }
                        Op::Local(k, uid, burstable) => {
                            let key = format!("n{}/p{k}", k % 2);
                            match (s.all.get(&key).cloned(), uid) {
                                (Some(p), Some(u)) => {
                                    let mut l = (*on_node(&p, if burstable { "Burstable" } else { "BestEffort" })).clone();
                                    if u > 1 {
                                        l.metadata.uid = Some(format!("u{u}"));
                                    }
                                    s.put_local(&Arc::new(l));
                                }
                                _ => {
                                    s.touched.insert(key.clone());
                                    s.local.remove(&key);
                                }
                            }
                        }
                        Op::Delete(k) => s.delete(&format!("n{}/p{k}", k % 2)),
                        Op::Touch(k) => {
                            s.touched.insert(format!("n{}/p{k}", k % 2));
                        }
                        Op::Cgroup(u) => {
                            let uid = format!("u{u}");
                            if !cgroups.remove(&uid) {
                                cgroups.insert(uid);
                            }
                        }
                        Op::Relist => {
                            let fresh = |m: &mut BTreeMap<String, Arc<ApiPod>>| {
                                for p in m.values_mut() {
                                    *p = Arc::new((**p).clone());
                                }
                            };
                            fresh(&mut s.all);
                            fresh(&mut s.local);
                            relist = true;
                        }
                    }
                }
                let locate = |uid: &str, qos: &str| {
                    Ok(cgroups.contains(uid).then(|| format!("/cg/{qos}/{uid}")))
                };
                let mut errors = Vec::new();
                let now = s.read_with(&mut pods, relist, &locate, &mut errors);
                relist = false;
                let mut fresh = s.clone();
                let whole = fresh.read_with(&mut Pods::default(), true, &locate, &mut errors);
                let values = |l: &[Arc<Pod>]| l.iter().map(|p| (**p).clone()).collect::<Vec<Pod>>();
                proptest::prop_assert_eq!(values(&now), values(&whole));
                // And what the holders should be, from the store alone:
                // each address claimed by a live pod is held by the best
                // ranked of its claimants, and by no other pod.
                let mut best: BTreeMap<IpAddr, (&String, &Arc<ApiPod>)> = BTreeMap::new();
                for (k, p) in s.all.iter().filter(|(_, p)| !objects::finished(p)) {
                    for ip in objects::pod_ips(p) {
                        match best.get(&ip) {
                            Some((bk, bp)) if rank(bk, bp) > rank(k, p) => {}
                            _ => {
                                best.insert(ip, (k, p));
                            }
                        }
                    }
                }
                let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
                for p in &now {
                    for ip in &p.ips {
                        proptest::prop_assert!(held.insert(*ip, p.key()).is_none(), "{} held twice", ip);
                    }
                }
                let should: BTreeMap<IpAddr, String> =
                    best.into_iter().map(|(ip, (k, _))| (ip, k.clone())).collect();
                proptest::prop_assert_eq!(held, should);
                for p in &now {
                    if let Some(was) = last.iter().find(|w| ***w == **p) {
                        proptest::prop_assert!(Arc::ptr_eq(was, p), "{} made again as it was", p.key());
                    }
                }
                last = now;
            }
        }
    }
}
