use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use proptest::{collection::vec, prelude::*};

use super::*;
use crate::{
    compile::{
        compile,
        tests_common::{standard, with},
    },
    model::{Labels, Snapshot},
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A Namespace object with no labels or annotations of its own.
fn bare_namespace(name: &str) -> crate::model::Namespace {
    crate::model::Namespace {
        name: name.into(),
        labels: Labels::new(),
        annotations: std::collections::BTreeMap::new(),
    }
}

/// What `compile` gives for the compiler's snapshot, restricted to `scope`.
fn expected(s: &Snapshot, scope: Option<&BTreeSet<String>>) -> Compiled {
    let mut want = compile(s);
    if let Some(scope) = scope {
        want.endpoints.retain(|k, _| scope.contains(k));
        let ns = |name: &str| {
            s.namespaces
                .get(name)
                .map(crate::model::Namespace::effective_labels)
                .unwrap_or_default()
        };
        let used: BTreeSet<String> = s
            .policies
            .iter()
            .filter(|p| p.ingress.is_some() || p.egress.is_some())
            .filter(|p| {
                s.pods.iter().any(|pod| {
                    scope.contains(&pod.key())
                        && p.selects(&pod.namespace, &ns(&pod.namespace), &pod.labels)
                })
            })
            .map(|p| p.key())
            .collect();
        want.policies.retain(|k, _| used.contains(k));
    }
    want
}

/// Brings `inc` to `next` and checks it against a full compile, and that
/// the change names exactly the endpoints that differ.
fn update_agrees(inc: &mut Incremental, next: Snapshot) -> Change {
    let before = inc.compiled().clone();
    let change = inc.update(Arc::new(next));
    let want = expected(inc.snapshot(), inc.scope.as_ref());
    assert_eq!(inc.compiled().identities, want.identities, "identities");
    assert_eq!(inc.compiled().addresses, want.addresses, "addresses");
    assert_eq!(inc.compiled().policies, want.policies, "policies");
    assert_eq!(inc.compiled().endpoints, want.endpoints, "endpoints");
    let mut differ: Vec<String> = want
        .endpoints
        .iter()
        .filter(|(k, v)| before.endpoints.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(
            before
                .endpoints
                .keys()
                .filter(|k| !want.endpoints.contains_key(*k))
                .cloned(),
        )
        .collect();
    differ.sort();
    assert_eq!(change.endpoints, differ, "reported as touched");
    change
}

fn relabelled(s: &Snapshot, pod: &str, to: Labels) -> Snapshot {
    let mut s = s.clone();
    Arc::make_mut(s.pods.iter_mut().find(|p| p.key() == pod).unwrap()).labels = to;
    s
}

#[test]
fn a_relabel_touches_exactly_what_a_full_compile_changes() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {role: web}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    // x/b becomes a web server: its own endpoint changes, and x/a's, whose
    // peer pod b has a new identity.
    let mut inc = Incremental::new(s.clone());
    let web = relabelled(&s, "x/b", labels(&[("pod", "b"), ("role", "web")]));
    let change = update_agrees(&mut inc, web.clone());
    assert!(!change.full);
    assert_eq!(change.endpoints, ["x/a", "x/b"]);
    // y/c becomes a client (a new identity): the web pods gain a peer.
    let client = relabelled(&web, "y/c", labels(&[("pod", "c"), ("role", "client")]));
    let change = update_agrees(&mut inc, client.clone());
    assert!(!change.full);
    assert_eq!(change.endpoints, ["x/b"]);
    // x/b stops being pod b (its identity vanishes): x/a loses the peer.
    update_agrees(
        &mut inc,
        relabelled(&client, "x/b", labels(&[("pod", "q")])),
    );
}

#[test]
fn a_pod_that_renumbers_a_named_port_agrees_with_a_full_compile() {
    // x/a may reach any pod of x on the name "serve-80-tcp"; x/c comes to
    // serve it on 8080 instead: its identity changes with its ports, and
    // x/a's egress follows it, as a full compile would have it.
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-out, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {}}], ports: [{port: serve-80-tcp}]}]\n",
    );
    let mut inc = Incremental::new(s.clone());
    let mut next = s.clone();
    let c = Arc::make_mut(next.pods.iter_mut().find(|p| p.key() == "x/c").unwrap());
    let named = c
        .ports
        .iter_mut()
        .find(|p| p.name == "serve-80-tcp")
        .unwrap();
    named.port = 8080;
    let change = update_agrees(&mut inc, next.clone());
    assert!(change.endpoints.contains(&"x/a".to_owned()), "{change:?}");
    // And back: the old identity again.
    update_agrees(&mut inc, s);
}

#[test]
fn a_relabel_onto_a_taken_identity_compiles_everything_and_still_agrees() {
    // Two label sets of x whose identities collide (a birthday search).
    let s = standard();
    let ns = s.namespaces["x"].effective_labels();
    // Every pod of the standard model serves the same named ports.
    let ports = crate::identity::named_ports(&s.pods[0].ports);
    let key = |v: &str| IdentityKey::Labels {
        namespace: ns.clone(),
        pod: labels(&[("pod", v)]),
        cidr: None,
        ports: ports.clone(),
    };
    let mut seen = HashMap::new();
    let (first, second) = (0..200_000)
        .map(|i| format!("v{i}"))
        .find_map(|v| {
            let id = natural(&key(&v));
            seen.insert(id, v.clone()).map(|other| (other, v))
        })
        .expect("a collision within 200k label sets");
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n",
    );
    let s = relabelled(&s, "x/a", labels(&[("pod", &first)]));
    let mut inc = Incremental::new(s.clone());
    let change = update_agrees(&mut inc, relabelled(&s, "x/b", labels(&[("pod", &second)])));
    assert!(change.full, "the collision forces a full compile");

    // Both are held now, the greater key pushed past its natural number.
    // Retiring the lesser frees that number, which a fresh allocation
    // would give the pushed key: everything is compiled again.
    let both = inc.snapshot().as_ref().clone();
    let (lesser, greater) = if key(&first) < key(&second) {
        ("x/a", "x/b")
    } else {
        ("x/b", "x/a")
    };
    let gone = labels(&[("pod", "gone")]);
    let mut retire_lesser = Incremental::new(both.clone());
    let change = update_agrees(&mut retire_lesser, relabelled(&both, lesser, gone.clone()));
    assert!(change.full, "the pushed key takes its natural number back");
    // Retiring the pushed key moves no other: no full compile, then or
    // when the other goes too.
    let mut retire_greater = Incremental::new(both.clone());
    let once = relabelled(&both, greater, gone.clone());
    let change = update_agrees(&mut retire_greater, once.clone());
    assert!(!change.full, "{change:?}");
    let change = update_agrees(&mut retire_greater, relabelled(&once, lesser, gone));
    assert!(!change.full, "{change:?}");
}

#[test]
fn pods_and_policies_come_and_go_without_a_full_compile() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    let scope: BTreeSet<String> = ["x/a".to_owned(), "x/c".to_owned()].into();
    let mut inc = Incremental::scoped(Arc::new(s.clone()), scope);
    assert_eq!(inc.compiled().endpoints.len(), 2, "only the pods in scope");
    // Another node's pod b appears: x/a gains nothing (same identity as y/b).
    let mut more = s.clone();
    let mut pod = (*more.pods[4]).clone();
    pod.name = "b2".into();
    pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))];
    more.pods.push(pod.into());
    let change = update_agrees(&mut inc, more.clone());
    assert!(!change.full);
    assert!(change.endpoints.is_empty());
    // With a label of its own: a new identity x/a admits.
    let fresh = relabelled(&more, "y/b2", labels(&[("pod", "b"), ("new", "1")]));
    let change = update_agrees(&mut inc, fresh.clone());
    assert_eq!(
        (change.full, change.endpoints),
        (false, vec!["x/a".to_owned()])
    );
    // A policy added, selecting x/c; then edited; then deleted.
    let mut added = fresh.clone();
    let extra = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  ingress: [{ports: [{port: 80}]}]\n",
    );
    added.policies.push(extra.policies[0].clone());
    let change = update_agrees(&mut inc, added.clone());
    assert_eq!(
        (change.full, change.endpoints),
        (false, vec!["x/c".to_owned()])
    );
    let mut edited = added.clone();
    Arc::make_mut(&mut edited.policies[1])
        .ingress
        .as_mut()
        .unwrap()[0]
        .ports[0]
        .port = Some(PortRef::Number(81));
    let change = update_agrees(&mut inc, edited.clone());
    assert_eq!(
        (change.full, change.endpoints),
        (false, vec!["x/c".to_owned()])
    );
    let change = update_agrees(&mut inc, fresh.clone());
    assert_eq!(
        (change.full, change.endpoints),
        (false, vec!["x/c".to_owned()])
    );
    // The scope moves: x/a's endpoint goes, y/a's comes.
    let change = inc.set_scope(["x/c".to_owned(), "y/a".to_owned()].into());
    assert_eq!(change.endpoints, ["x/a", "y/a"]);
    assert_eq!(inc.compiled(), &expected(&fresh, inc.scope.as_ref()));
}

/// A pod change as keys: (before, after).
type KeyChange = (Option<String>, Option<String>);

/// What `by_object` finds: its changes as keys, and how many objects came
/// (`usize::MAX` for a duplicate key).
fn found(inc: &mut Incremental, next: &Snapshot) -> Option<(Vec<KeyChange>, usize)> {
    let old = inc.snapshot().clone();
    match inc.by_object(&old, next)? {
        super::Objects::Changed { changes, came } => {
            let mut keys: Vec<_> = changes
                .iter()
                .map(|(a, b)| (a.map(Pod::key), b.map(Pod::key)))
                .collect();
            keys.sort();
            Some((keys, came.len()))
        }
        super::Objects::Duplicate => Some((Vec::new(), usize::MAX)),
    }
}

/// Pods found by object: a scoped pod that comes, one rebuilt with the
/// same contents (a file read again), one that goes, and a key that comes
/// twice; and through `update`, each agreeing with a full compile.
#[test]
fn pods_that_come_or_go_are_found_by_object() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    let scope: BTreeSet<String> = ["x/a".to_owned(), "x/new".to_owned()].into();
    let fresh = || Incremental::scoped(Arc::new(s.clone()), scope.clone());
    // x/new comes, in scope; x/a is rebuilt as an equal object.
    let mut next = s.clone();
    let mut pod = (*next.pods[0]).clone();
    pod.name = "new".into();
    pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))];
    next.pods.insert(1, pod.into());
    let a = next.pods.iter().position(|p| p.key() == "x/a").unwrap();
    next.pods[a] = Arc::new((*next.pods[a]).clone());
    assert_eq!(
        found(&mut fresh(), &next),
        Some((vec![(None, Some("x/new".to_owned()))], 2)),
        "the rebuilt x/a is a new object but no change"
    );
    // The same number of pods: left to the index by key.
    assert_eq!(
        found(
            &mut fresh(),
            &relabelled(&s, "y/b", labels(&[("pod", "c")]))
        ),
        None
    );
    // A pod comes under a key another pod holds.
    let mut twice = s.clone();
    twice.pods.push(Arc::new((*twice.pods[2]).clone()));
    assert_eq!(found(&mut fresh(), &twice), Some((Vec::new(), usize::MAX)));
    // Through `update`: x/new's endpoint comes, and x/a is still kept.
    let mut inc = fresh();
    let change = update_agrees(&mut inc, next.clone());
    assert!(!change.full);
    assert_eq!(change.endpoints, ["x/new"]);
    assert_eq!(inc.compiled().endpoints.len(), 2, "x/a is still kept");
    // A pod goes, found by object against the kept keys.
    let mut fewer = next.clone();
    fewer.pods.retain(|p| p.key() != "y/b");
    assert_eq!(
        found(
            &mut Incremental::scoped(Arc::new(next.clone()), scope.clone()),
            &fewer
        ),
        Some((vec![(Some("y/b".to_owned()), None)], 0))
    );
    assert!(!update_agrees(&mut inc, fewer.clone()).full);
    // y/b comes back: its key went from the index with it.
    assert!(!update_agrees(&mut inc, next).full);
    // A key held twice: a full compile.
    let mut twice = fewer.clone();
    twice.pods.push(Arc::new((*twice.pods[a]).clone()));
    assert!(update_agrees(&mut inc, twice).full);
}

/// One random change of the standard model.
#[derive(Clone, Debug)]
enum Op {
    Relabel(usize, u8),
    Remove(usize),
    Add(u8, u8),
    AddPolicy(usize),
    RemovePolicy(usize),
    EditPolicy(usize, usize),
    RelabelNamespace(usize, u8),
    /// A Namespace object goes, or comes back without labels of its own.
    ToggleNamespace(usize),
    Scope(u16),
}

fn label_set(n: u8) -> Labels {
    match n % 4 {
        0 => labels(&[("pod", "a")]),
        1 => labels(&[("pod", "b"), ("extra", "1")]),
        2 => labels(&[("pod", "fresh")]),
        _ => labels(&[]),
    }
}

fn apply(s: &mut Snapshot, op: &Op, spare: &[crate::model::Policy], step: usize) {
    match *op {
        Op::Relabel(i, l) if !s.pods.is_empty() => {
            let n = s.pods.len();
            Arc::make_mut(&mut s.pods[i % n]).labels = label_set(l);
        }
        Op::Remove(i) if !s.pods.is_empty() => {
            let n = s.pods.len();
            s.pods.remove(i % n);
        }
        Op::Add(ns, l) => {
            let mut pod = (*standard().pods[0]).clone();
            pod.namespace = ["x", "y", "z"][usize::from(ns % 3)].into();
            pod.name = format!("new{step}");
            pod.labels = label_set(l);
            pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, step as u8))];
            s.pods.push(pod.into());
        }
        Op::AddPolicy(j) if !spare.is_empty() => {
            let mut p = spare[j % spare.len()].clone();
            p.name = format!("{}-{step}", p.name);
            s.policies.push(p.into());
        }
        Op::RemovePolicy(i) if !s.policies.is_empty() => {
            let n = s.policies.len();
            s.policies.remove(i % n);
        }
        Op::EditPolicy(i, j) if !s.policies.is_empty() && !spare.is_empty() => {
            let n = s.policies.len();
            let old = &s.policies[i % n];
            let mut p = spare[j % spare.len()].clone();
            (p.kind, p.namespace, p.name) = (old.kind, old.namespace.clone(), old.name.clone());
            s.policies[i % n] = p.into();
        }
        Op::RelabelNamespace(ns, l) => {
            let ns = ["x", "y", "z"][ns % 3];
            if let Some(n) = s.namespaces.get_mut(ns) {
                n.labels.insert("team".into(), format!("t{}", l % 2));
            }
        }
        Op::ToggleNamespace(ns) => {
            let ns = ["x", "y", "z"][ns % 3];
            if s.namespaces.remove(ns).is_none() {
                s.namespaces.insert(ns.into(), bare_namespace(ns));
            }
        }
        _ => {}
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..12usize, any::<u8>()).prop_map(|(i, l)| Op::Relabel(i, l)),
        (0..12usize).prop_map(Op::Remove),
        (any::<u8>(), any::<u8>()).prop_map(|(n, l)| Op::Add(n, l)),
        (0..4usize).prop_map(Op::AddPolicy),
        (0..4usize).prop_map(Op::RemovePolicy),
        (0..4usize, 0..4usize).prop_map(|(i, j)| Op::EditPolicy(i, j)),
        (0..3usize, any::<u8>()).prop_map(|(n, l)| Op::RelabelNamespace(n, l)),
        (0..3usize).prop_map(Op::ToggleNamespace),
        any::<u16>().prop_map(Op::Scope),
    ]
}

#[test]
fn random_changes_under_random_policies_agree_with_a_full_compile() {
    let policies = crate::compile::property::policy_sets;
    let cases = (policies(), policies(), any::<u16>(), vec(op(), 1..6));
    crate::compile::property::check(400, cases, |(policies, spare, mask, ops)| {
        let mut s = crate::compile::property::snapshot_with(policies);
        let scope = |mask: u16, s: &Snapshot| -> BTreeSet<String> {
            s.pods
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << (i % 16)) != 0)
                .map(|(_, p)| p.key())
                .collect()
        };
        let mut inc = Incremental::scoped(Arc::new(s.clone()), scope(mask, &s));
        for (step, op) in ops.iter().enumerate() {
            if let Op::Scope(m) = op {
                inc.set_scope(scope(*m, &s));
            } else {
                apply(&mut s, op, &spare, step + 1);
                inc.update(Arc::new(s.clone()));
            }
            let want = expected(inc.snapshot(), inc.scope.as_ref());
            prop_assert!(inc.compiled() == &want, "after {:?}", op);
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_namespace_object_that_comes_after_its_pods_or_goes_agrees() {
    // Pods of namespace w before its Namespace object (a watch may list
    // them first). Without labels of its own the object leaves the pods'
    // identity keys as they were, but a namespace selector names only
    // namespaces that exist.
    let mut s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: w}}}]}]\n",
    );
    let mut pod = (*s.pods[0]).clone();
    pod.namespace = "w".into();
    pod.name = "w1".into();
    pod.labels = labels(&[("pod", "w")]);
    pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 2, 1))];
    s.pods.push(pod.into());
    let scope: BTreeSet<String> = ["x/a".to_owned()].into();
    let mut inc = Incremental::scoped(Arc::new(s.clone()), scope);
    let mut with_w = s.clone();
    with_w.namespaces.insert("w".into(), bare_namespace("w"));
    let change = update_agrees(&mut inc, with_w);
    assert_eq!(
        change.endpoints,
        vec!["x/a".to_owned()],
        "x/a admits w1 now"
    );
    let change = update_agrees(&mut inc, s);
    assert_eq!(change.endpoints, vec!["x/a".to_owned()], "and no longer");
}

#[test]
fn a_policy_taken_up_again_by_the_scope_sees_the_changes_made_meanwhile() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    let a: BTreeSet<String> = ["x/a".to_owned()].into();
    let mut inc = Incremental::scoped(Arc::new(s.clone()), a.clone());
    // No kept pod uses the policy while another pod it names changes.
    inc.set_scope(["x/c".to_owned()].into());
    let fresh = relabelled(&s, "y/b", labels(&[("pod", "b"), ("new", "1")]));
    update_agrees(&mut inc, fresh);
    inc.set_scope(a);
    let want = expected(inc.snapshot(), inc.scope.as_ref());
    assert_eq!(inc.compiled().endpoints, want.endpoints);
}
