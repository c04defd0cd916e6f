//! Policies from the API server: each object, whatever its kind, is put
//! back into the document form the policy parser reads (apiVersion, kind,
//! name, namespace, labels, annotations, spec; the server's bookkeeping
//! left out) and parsed and validated as strictly as a file's. A version
//! that is refused keeps the object's last good version in force, and is
//! reported once, naming the field (and as an Event on the object).
//!
//! Parsing is cached by resourceVersion: a pass re-parses only what
//! changed, and through the watches' keys looks only at what may have.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kube::core::DynamicObject;
use serde_json::{Map, Value, json};

use super::{access::Access, watch::key_of};
use crate::model::{Policy, parse::parse_one};

/// A refused version of a policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub access: Access,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: String,
    pub message: String,
}

/// What parsing one version of an object gave.
type Parsed = Result<Arc<Policy>, Box<Refusal>>;

#[derive(Default)]
pub struct Policies {
    /// By `resource/namespace/name`: the version last parsed and its outcome.
    /// A policy is shared with the snapshots: one unchanged since the
    /// last pass is the same object, which the compiler tells by pointer.
    parsed: BTreeMap<String, (String, Parsed)>,
    /// By the same key: the last version that parsed.
    last_good: BTreeMap<String, Arc<Policy>>,
}

/// The document the parser reads, as JSON (a subset of YAML).
fn document(access: &Access, o: &DynamicObject) -> String {
    let m = &o.metadata;
    let mut meta = Map::new();
    meta.insert("name".into(), json!(m.name));
    if access.namespaced {
        meta.insert("namespace".into(), json!(m.namespace));
    }
    if let Some(labels) = &m.labels {
        meta.insert("labels".into(), json!(labels));
    }
    if let Some(annotations) = &m.annotations {
        meta.insert("annotations".into(), json!(annotations));
    }
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(access.api_version()));
    doc.insert("kind".into(), json!(access.kind));
    doc.insert("metadata".into(), Value::Object(meta));
    if let Some(spec) = o.data.get("spec") {
        doc.insert("spec".into(), spec.clone());
    }
    // Multi-line, so that an error's line points at the field's line.
    serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default()
}

fn parse(access: &Access, o: &DynamicObject) -> Result<Policy, Box<Refusal>> {
    let name = o.metadata.name.clone().unwrap_or_default();
    let namespace = o.metadata.namespace.clone();
    let rv = o.metadata.resource_version.clone().unwrap_or_default();
    let shown = match &namespace {
        Some(ns) if access.namespaced => format!("{} {ns}/{name}", access.kind),
        _ => format!("{} {name}", access.kind),
    };
    let where_ = format!("{shown} (resourceVersion {rv})");
    let default_ns = namespace.as_deref().unwrap_or("default");
    parse_one(&document(access, o), 1, &where_, default_ns)
        .map(|d| d.policy())
        .map_err(|e| {
            Box::new(Refusal {
                access: *access,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: o.metadata.uid.clone(),
                resource_version: rv.clone(),
                message: e.to_string(),
            })
        })
}

/// `resource/namespace/name`: an object's key in its kind's store
/// ([`key_of`]), under its kind.
fn key(access: &Access, name: &str) -> String {
    format!("{}/{name}", access.resource)
}

/// One pass's policies: the objects' parsed or last good versions, the
/// errors to report, and the refusals seen for the first time (to be
/// turned into Events).
pub struct PassPolicies {
    pub policies: Vec<Arc<Policy>>,
    pub errors: Vec<String>,
    pub new_refusals: Vec<Refusal>,
}

impl Policies {
    /// Every policy object there is, of every kind: an object not among
    /// them is gone. The daemon brings objects by kind or by key; the
    /// tests read everything, as the reference the others must match.
    #[cfg(test)]
    pub fn read<'a>(
        &mut self,
        objects: impl IntoIterator<Item = (Access, &'a DynamicObject)>,
    ) -> PassPolicies {
        let mut new_refusals = Vec::new();
        let mut seen = BTreeSet::new();
        for (access, o) in objects {
            let k = key(&access, &key_of(o));
            self.bring(&access, &k, Some(o), &mut new_refusals);
            seen.insert(k);
        }
        self.keep(|k| seen.contains(k));
        self.pass(new_refusals)
    }

    /// Every object of one kind there is: an object of the kind not among
    /// them is gone. Refusals seen for the first time go to `new_refusals`.
    pub fn bring_kind<'a>(
        &mut self,
        access: &Access,
        objects: impl IntoIterator<Item = &'a DynamicObject>,
        new_refusals: &mut Vec<Refusal>,
    ) {
        let mut seen = BTreeSet::new();
        for o in objects {
            let k = key(access, &key_of(o));
            self.bring(access, &k, Some(o), new_refusals);
            seen.insert(k);
        }
        let kind = format!("{}/", access.resource);
        self.keep(|k| !k.starts_with(&kind) || seen.contains(k));
    }

    /// One object, by its `namespace/name` in its kind's store, as the
    /// store has it now (`None`: gone).
    pub fn bring_one(
        &mut self,
        access: &Access,
        name: &str,
        object: Option<&DynamicObject>,
        new_refusals: &mut Vec<Refusal>,
    ) {
        self.bring(access, &key(access, name), object, new_refusals);
    }

    fn bring(
        &mut self,
        access: &Access,
        k: &str,
        object: Option<&DynamicObject>,
        new_refusals: &mut Vec<Refusal>,
    ) {
        let Some(o) = object else {
            // A deleted object takes its last good version with it.
            self.parsed.remove(k);
            self.last_good.remove(k);
            return;
        };
        let rv = o.metadata.resource_version.clone().unwrap_or_default();
        if self.parsed.get(k).is_some_and(|(old, _)| *old == rv) {
            return;
        }
        let outcome = parse(access, o).map(Arc::new);
        match &outcome {
            Ok(p) => {
                self.last_good.insert(k.to_owned(), p.clone());
            }
            Err(r) => new_refusals.push(Refusal::clone(r)),
        }
        self.parsed.insert(k.to_owned(), (rv, outcome));
    }

    fn keep(&mut self, wanted: impl Fn(&str) -> bool) {
        self.parsed.retain(|k, _| wanted(k));
        self.last_good.retain(|k, _| wanted(k));
    }

    /// The policies as the objects last brought stand: each one's parsed
    /// or last good version, and the errors of every refused version.
    pub fn pass(&self, new_refusals: Vec<Refusal>) -> PassPolicies {
        let mut out = PassPolicies {
            policies: Vec::with_capacity(self.parsed.len()),
            errors: Vec::new(),
            new_refusals,
        };
        for (k, (_, outcome)) in &self.parsed {
            match outcome {
                Ok(p) => out.policies.push(p.clone()),
                Err(r) => match self.last_good.get(k) {
                    Some(good) => {
                        out.errors.push(format!(
                            "{} (its last good version stays in force)",
                            r.message
                        ));
                        out.policies.push(good.clone());
                    }
                    None => out.errors.push(r.message.clone()),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::access::{NETWORK_POLICIES, PALISADE_CLUSTER_POLICIES};

    fn object(rv: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "deny", "namespace": "x", "resourceVersion": rv,
                "uid": "0b7e0c6e-0000-4000-8000-000000000001",
                "managedFields": [{"manager": "kubectl"}],
                "creationTimestamp": "2026-12-02T00:00:00Z"
            },
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn an_api_object_parses_as_its_file_form_would() {
        let o = object("5", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        let pass = Policies::default().read([(NETWORK_POLICIES, &o)]);
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        assert_eq!(pass.policies[0].key(), "x/deny");
    }

    #[test]
    fn a_refused_version_names_the_field_and_keeps_the_last_good_one() {
        let mut policies = Policies::default();
        let good = object("5", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        assert!(policies.read([(NETWORK_POLICIES, &good)]).errors.is_empty());
        let bad = object(
            "6",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
        );
        let pass = policies.read([(NETWORK_POLICIES, &bad)]);
        assert_eq!(pass.policies.len(), 1, "the last good version stays");
        assert_eq!(pass.errors.len(), 1);
        let e = &pass.errors[0];
        assert!(
            e.contains("NetworkPolicy x/deny (resourceVersion 6)")
                && e.contains("port")
                && e.contains("last good"),
            "{e}"
        );
        assert_eq!(pass.new_refusals.len(), 1);
        // The same version again is not a new refusal (one Event per version).
        let again = policies.read([(NETWORK_POLICIES, &bad)]);
        assert!(again.new_refusals.is_empty());
        assert_eq!(again.errors.len(), 1);
        // Deleted: nothing stays.
        assert!(policies.read([]).policies.is_empty());
        assert!(policies.last_good.is_empty());
    }

    #[test]
    fn a_version_over_a_limit_is_refused_naming_it_and_the_last_good_one_stays() {
        let mut policies = Policies::default();
        let good = object("5", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        assert!(policies.read([(NETWORK_POLICIES, &good)]).errors.is_empty());
        let ports: Vec<Value> = (1..=10_001).map(|p| json!({"port": p})).collect();
        let wide = object(
            "6",
            json!({"podSelector": {}, "ingress": [{"ports": ports}]}),
        );
        let mut nested = json!("x");
        for _ in 0..40 {
            nested = json!({ "a": nested });
        }
        let deep = object("7", json!({"podSelector": {"matchLabels": nested}}));
        for (bad, says) in [
            (
                &wide,
                "10001 ports in its rules, above the limit of 10000 per policy",
            ),
            (
                &deep,
                "nested deeper than 32 levels, the limit for a document",
            ),
        ] {
            let pass = policies.read([(NETWORK_POLICIES, bad)]);
            assert_eq!(pass.policies.len(), 1, "the last good version stays");
            let e = &pass.errors[0];
            assert!(
                e.contains("NetworkPolicy x/deny (resourceVersion")
                    && e.contains(says)
                    && e.contains("last good"),
                "{e}"
            );
        }
    }

    fn named(name: &str, rv: &str, spec: Value) -> DynamicObject {
        let mut o = object(rv, spec);
        o.metadata.name = Some(name.into());
        o
    }

    /// Objects brought one by one, by the keys a watch named, or a kind
    /// at a time, stand as a reading of every object from nothing does.
    #[test]
    fn bringing_what_changed_gives_what_reading_everything_gives() {
        let open = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
        let bad = json!({"podSelector": {}, "bogus": 1});
        let cluster: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "PalisadeClusterNetworkPolicy",
            "metadata": {"name": "base", "resourceVersion": "9"},
            "spec": {"priority": 10, "subject": {"namespaceSelector": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaceSelector": {}}]}]},
        }))
        .unwrap();
        let (a, b, c) = (
            named("a", "1", open.clone()),
            named("b", "2", open.clone()),
            named("c", "3", bad.clone()),
        );
        let mut policies = Policies::default();
        policies.read([
            (NETWORK_POLICIES, &a),
            (NETWORK_POLICIES, &b),
            (NETWORK_POLICIES, &c),
        ]);
        // a refused in a new version (its last good stays), b deleted, c
        // named but not changed, the cluster policy new.
        let a2 = named("a", "4", bad.clone());
        let mut refusals = Vec::new();
        policies.bring_one(&NETWORK_POLICIES, "x/a", Some(&a2), &mut refusals);
        policies.bring_one(&NETWORK_POLICIES, "x/b", None, &mut refusals);
        policies.bring_one(&NETWORK_POLICIES, "x/c", Some(&c), &mut refusals);
        policies.bring_one(
            &PALISADE_CLUSTER_POLICIES,
            "/base",
            Some(&cluster),
            &mut refusals,
        );
        assert_eq!(refusals.len(), 1, "a's new version only: {refusals:?}");
        assert!(
            !policies.last_good.contains_key("networkpolicies/x/b"),
            "a deleted object takes its last good version with it"
        );
        let now = policies.pass(refusals);
        let whole = Policies::default().read([
            (NETWORK_POLICIES, &a2),
            (NETWORK_POLICIES, &c),
            (PALISADE_CLUSTER_POLICIES, &cluster),
        ]);
        let values =
            |p: &PassPolicies| p.policies.iter().map(|p| (**p).clone()).collect::<Vec<_>>();
        // The one difference: a's last good version, which only a reader
        // that saw it can keep.
        assert_eq!(now.policies.len(), 2);
        assert_eq!(values(&now)[0], *policies.last_good["networkpolicies/x/a"]);
        assert_eq!(values(&now)[1], values(&whole)[0], "the cluster policy");
        assert!(now.errors[0].contains("last good") && now.errors[1].contains("bogus"));
        assert_eq!(whole.errors.len(), 2);
        // A relist of one kind: what it no longer lists is gone, the other
        // kind's objects stay.
        let mut refusals = Vec::new();
        policies.bring_kind(&NETWORK_POLICIES, [&c], &mut refusals);
        assert!(refusals.is_empty(), "c's version was refused once already");
        let relisted = policies.pass(refusals);
        let whole = Policies::default().read([
            (NETWORK_POLICIES, &c),
            (PALISADE_CLUSTER_POLICIES, &cluster),
        ]);
        assert_eq!(values(&relisted), values(&whole));
        assert_eq!(relisted.errors, whole.errors);
        assert!(!policies.last_good.contains_key("networkpolicies/x/a"));
    }

    #[test]
    fn a_refused_first_version_enforces_nothing_of_it() {
        let bad = object("7", json!({"podSelector": {}, "bogus": 1}));
        let pass = Policies::default().read([(NETWORK_POLICIES, &bad)]);
        assert!(pass.policies.is_empty());
        assert!(pass.errors[0].contains("bogus"), "{:?}", pass.errors);
    }

    #[test]
    fn a_cluster_policy_has_no_namespace() {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "PalisadeClusterNetworkPolicy",
            "metadata": {"name": "base", "resourceVersion": "3"},
            "spec": {"priority": 10, "subject": {"namespaceSelector": {"matchLabels": {"ns": "x"}}},
                     "ingress": [{"action": "Deny", "from": [{"namespaceSelector": {}}]}]},
        }))
        .unwrap();
        let pass = Policies::default().read([(PALISADE_CLUSTER_POLICIES, &o)]);
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        assert_eq!(pass.policies[0].key(), "cluster:base");
    }
}
