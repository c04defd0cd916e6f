//! Names for the numbers the kernel counts and reports by: policy ids
//! (`Policy::key`) and endpoint ids (`namespace/pod`). Shared by the
//! metrics and the event stream, refreshed by every reconcile pass.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ebpf_common::reason;

#[derive(Default)]
pub struct Names {
    /// Every policy id seen since start: counters and events outlive it.
    policies: HashMap<u32, String>,
    endpoints: HashMap<u32, String>,
    /// Pod cgroup ids (what LSM events carry) -> `namespace/pod`.
    cgroups: HashMap<u64, String>,
    /// KubeArmor's event fields, by policy id.
    meta: HashMap<u32, crate::model::policy::LsmMeta>,
}

pub type SharedNames = Arc<Mutex<Names>>;

impl Names {
    pub fn shared() -> SharedNames {
        Arc::new(Mutex::new(Self::default()))
    }

    pub fn learn(&mut self, policies: &BTreeMap<String, u32>, endpoints: &BTreeMap<String, u32>) {
        for (name, id) in policies {
            self.policies.insert(*id, name.clone());
        }
        self.endpoints = endpoints.iter().map(|(n, id)| (*id, n.clone())).collect();
    }

    /// The policies of the process and file rules, and the pod cgroups
    /// the syncer found (`None` where BPF LSM is inactive: no events).
    pub fn learn_lsm(
        &mut self,
        lsm: &crate::compile::lsm::LsmDesired,
        cgroups: Option<&BTreeMap<u64, String>>,
    ) {
        for (name, id) in &lsm.policies {
            self.policies.insert(*id, name.clone());
        }
        self.meta = lsm.meta.iter().map(|(id, m)| (*id, m.clone())).collect();
        self.cgroups = cgroups
            .map(|c| c.iter().map(|(id, pod)| (*id, pod.clone())).collect())
            .unwrap_or_default();
    }

    pub fn lsm_meta(&self, policy: u32) -> Option<&crate::model::policy::LsmMeta> {
        self.meta.get(&policy)
    }

    pub fn pod_of_cgroup(&self, id: u64) -> Option<&String> {
        self.cgroups.get(&id)
    }

    /// The deciding policy of a process or file decision: the policy, or
    /// for a section's default `posture` (`<policy> (posture)` when a
    /// policy's allowlist set it), `unjudged (preempted)` for a run that
    /// lost its working memory on every try.
    pub fn lsm_policy(&self, id: u32, default: bool) -> String {
        match (id, default) {
            (0, _) => "posture".to_owned(),
            (ebpf_common::lsm::UNJUDGED_POLICY, _) => "unjudged (preempted)".to_owned(),
            (id, false) => self.policy(id, reason::LSM_BLOCK),
            (id, true) => format!("{} (posture)", self.policy(id, reason::LSM_BLOCK)),
        }
    }

    /// `default-deny` for the default deny of an isolated pod, `none` where
    /// no policy decided, `id:N` for a policy this daemon never saw.
    pub fn policy(&self, id: u32, code: u32) -> String {
        match (id, code) {
            (0, reason::DROP_DEFAULT_DENY) => "default-deny".to_owned(),
            (ebpf_common::datapath::NODE_DENY_POLICY, _) => "node-deny-list".to_owned(),
            (0, _) => "none".to_owned(),
            (id, _) => self
                .policies
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id:{id}")),
        }
    }

    pub fn endpoint(&self, id: u32) -> Option<&String> {
        self.endpoints.get(&id)
    }

    pub fn endpoint_names(&self) -> impl Iterator<Item = &String> {
        self.endpoints.values()
    }
}

/// Locks, surviving a panicked holder (the names stay usable).
pub fn lock(names: &SharedNames) -> std::sync::MutexGuard<'_, Names> {
    names.lock().unwrap_or_else(|p| p.into_inner())
}
