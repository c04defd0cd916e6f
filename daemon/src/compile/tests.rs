//! NetworkPolicy semantics on the upstream e2e suite's standard model
//! (namespaces x, y, z; pods a, b, c; ports 80 and 81 on TCP, UDP and SCTP),
//! cases written for Palisade after the suite's own.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use super::{
    compile,
    evaluate::{connection, to_address},
};
use crate::model::{NamedPort, Protocol};

use super::tests_common::*;

#[test]
fn no_policy_means_everything_is_reachable() {
    check(&standard(), "x/a", TCP, 80, EVERYONE_BUT_SELF);
}

#[test]
fn deny_all_ingress_isolates_every_pod_of_the_namespace() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    check(&s, "x/a", TCP, 80, &[]);
    check(&s, "y/a", TCP, 80, EVERYONE_BUT_SELF);
    // Egress is not isolated: x/a still reaches y.
    let c = compile(&s);
    assert!(connection(&c, pod(&s, "x/a"), pod(&s, "y/b"), TCP, 80));
}

#[test]
fn allow_from_same_namespace_only() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: same-ns}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n",
    );
    check(&s, "x/a", TCP, 80, &["x/b", "x/c"]);
    check(&s, "x/b", TCP, 80, EVERYONE_BUT_SELF);
}

#[test]
fn namespace_selector_alone_and_combined_with_a_pod_selector() {
    let alone = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n",
    );
    check(&alone, "x/a", TCP, 80, &["y/a", "y/b", "y/c"]);
    let both = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y-b}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]\n",
    );
    check(&both, "x/a", TCP, 80, &["y/b", "z/b"]);
    let implicit = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: by-name}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]\n",
    );
    check(&implicit, "x/a", TCP, 80, &["z/a", "z/b", "z/c"]);
}

#[test]
fn ports_protocols_and_ranges() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ports}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}, {protocol: UDP, port: 81}, {protocol: SCTP, port: 1000, endPort: 2000}]}]\n",
    );
    check(&s, "x/a", TCP, 80, EVERYONE_BUT_SELF);
    check(&s, "x/a", TCP, 81, &[]);
    check(&s, "x/a", UDP, 80, &[]);
    check(&s, "x/a", UDP, 81, EVERYONE_BUT_SELF);
    check(&s, "x/a", SCTP, 1500, EVERYONE_BUT_SELF);
    check(&s, "x/a", SCTP, 2001, &[]);
}

#[test]
fn named_ports_resolve_on_each_destination_pod() {
    let mut s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress-named}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {}}], ports: [{port: web}]}]\n",
    );
    // Two pods give the name "web" different numbers.
    for (key, port) in [("x/b", 8080), ("x/c", 9090)] {
        let p = Arc::make_mut(s.pods.iter_mut().find(|p| p.key() == key).unwrap());
        p.ports.push(NamedPort {
            name: "web".into(),
            port,
            protocol: Protocol::Tcp,
        });
    }
    let c = compile(&s);
    let a = pod(&s, "x/a");
    assert!(connection(&c, a, pod(&s, "x/b"), TCP, 8080));
    assert!(!connection(&c, a, pod(&s, "x/b"), TCP, 9090));
    assert!(connection(&c, a, pod(&s, "x/c"), TCP, 9090));
    assert!(!connection(&c, a, pod(&s, "x/c"), TCP, 8080));
    assert!(
        !connection(&c, a, pod(&s, "y/b"), TCP, 8080),
        "y/b is not selected (other namespace)"
    );

    // With the same labels (one identity, were it the labels' alone), each
    // still gets only its own number: the named ports are part of the
    // identity.
    Arc::make_mut(s.pods.iter_mut().find(|p| p.key() == "x/c").unwrap())
        .labels
        .insert("pod".into(), "b".into());
    let c = compile(&s);
    let a = pod(&s, "x/a");
    assert!(connection(&c, a, pod(&s, "x/b"), TCP, 8080));
    assert!(connection(&c, a, pod(&s, "x/c"), TCP, 9090));
    assert!(
        !connection(&c, a, pod(&s, "x/b"), TCP, 9090),
        "x/c's number for the name is not x/b's"
    );
    assert!(!connection(&c, a, pod(&s, "x/c"), TCP, 8080));
}

#[test]
fn ip_blocks_with_except_resolve_by_longest_prefix() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress-cidr}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.192/26}}]\n",
    );
    let c = compile(&s);
    let a = pod(&s, "x/a");
    let b = pod(&s, "x/b");
    let ip = |last| IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
    assert!(to_address(&c, a, ip(10), TCP, 80));
    assert!(!to_address(&c, a, ip(130), TCP, 80), "inside the except");
    assert!(
        !to_address(&c, a, ip(200), TCP, 80),
        "inside the except, and inside b's block"
    );
    assert!(
        to_address(&c, b, ip(200), TCP, 80),
        "b's block is unaffected by a's except"
    );
    assert!(!to_address(&c, b, ip(10), TCP, 80));
    assert!(!to_address(
        &c,
        a,
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        TCP,
        80
    ));
}

#[test]
fn a_connection_needs_both_egress_and_ingress() {
    let s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-egress-to-b}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-deny}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}\n",
    );
    let c = compile(&s);
    assert!(
        !connection(&c, pod(&s, "x/a"), pod(&s, "x/b"), TCP, 80),
        "b's ingress denies"
    );
    assert!(
        !connection(&c, pod(&s, "x/a"), pod(&s, "x/c"), TCP, 80),
        "a's egress denies"
    );
    assert!(
        connection(&c, pod(&s, "x/c"), pod(&s, "x/a"), TCP, 80),
        "a's ingress is open"
    );
}

#[test]
fn compiling_is_deterministic_and_one_pod_change_touches_only_its_entries() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: same-ns}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";
    let s = with(yaml);
    assert_eq!(compile(&s), compile(&s));
    let mut relabeled = s.clone();
    Arc::make_mut(
        relabeled
            .pods
            .iter_mut()
            .find(|p| p.key() == "y/c")
            .unwrap(),
    )
    .labels
    .insert("role".into(), "web".into());
    let (before, after) = (compile(&s), compile(&relabeled));
    let changed: Vec<_> = before
        .endpoints
        .iter()
        .filter(|(k, v)| after.endpoints.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(changed.is_empty(), "{changed:?}");
}

#[test]
fn ip_blocks_match_pod_addresses_too() {
    // 10.244.0.4/30 holds y/a, y/b, y/c and z/a; y/b (10.244.0.5) is excepted.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: by-address}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.244.0.4/30, except: [10.244.0.5/32]}}]}]\n";
    let s = with(policy);
    check(&s, "x/a", TCP, 80, &["y/a", "y/c", "z/a"]);
    // A pod with y/a's labels but an address outside the block does not
    // inherit y/a's access: the block is part of the identity.
    let mut twin = s.clone();
    let mut outside = pod(&twin, "y/a").clone();
    outside.name = "a-twin".into();
    outside.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 9, 9))];
    twin.pods.push(outside.into());
    let c = compile(&twin);
    assert!(connection(
        &c,
        pod(&twin, "y/a"),
        pod(&twin, "x/a"),
        TCP,
        80
    ));
    assert!(!connection(
        &c,
        pod(&twin, "y/a-twin"),
        pod(&twin, "x/a"),
        TCP,
        80
    ));
}

#[test]
fn an_ip_block_matches_only_the_address_of_a_dual_stack_pod_it_covers() {
    let mut s = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-v6, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{ipBlock: {cidr: 'fd00::/64'}}]}]\n",
    );
    for (i, p) in s.pods.iter_mut().enumerate() {
        Arc::make_mut(p)
            .ips
            .push(format!("fd00::{}", i + 1).parse().unwrap());
    }
    let c = compile(&s);
    let (from, to) = (pod(&s, "y/b"), pod(&s, "x/b"));
    let v4 = (from, from.ips[0]);
    let v6 = (from, from.ips[1]);
    assert!(!super::evaluate::connection_between(
        &c,
        v4,
        (to, to.ips[0]),
        TCP,
        80
    ));
    assert!(super::evaluate::connection_between(
        &c,
        v6,
        (to, to.ips[1]),
        TCP,
        80
    ));
    assert_ne!(
        super::evaluate::identity_of(&c, from.ips[0]),
        super::evaluate::identity_of(&c, from.ips[1])
    );
}

#[test]
fn a_peers_identities_are_those_of_the_pods_it_names() {
    // Peers of every shape; a block that gives some addresses keys of their
    // own; a dual-stack pod; pods of a namespace that has no object, which
    // a namespace selector never names (not even by its name label).
    let peers = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: peers}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: a}}\n    - namespaceSelector: {}\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}\n    - podSelector: {}\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: DoesNotExist}]}\n    - ipBlock: {cidr: 10.244.0.4/30}\n";
    let mut s = with(peers);
    let mut ghost = pod(&s, "x/a").clone();
    ghost.namespace = "ghost".into();
    ghost.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 244, 9, 1))];
    s.pods.push(ghost.into());
    let mut dual = pod(&s, "y/b").clone();
    dual.name = "dual".into();
    dual.ips = vec![
        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 6)),
        "fd00::6".parse().unwrap(),
    ];
    s.pods.push(dual.into());
    let t = super::tables::Tables::new(&s);
    let cx = super::tables::Context {
        snapshot: &s,
        t: &t,
    };
    let mut compared = 0;
    for policy in &s.policies {
        for rule in policy.rules(false).into_iter().flatten() {
            for peer in rule.peers.iter().filter(|p| p.ip_block.is_none()) {
                // None: as a cluster policy's peer, any namespace.
                for namespace in [policy.namespace.as_deref(), None] {
                    let mut by_pods: Vec<u32> = cx
                        .peer_pods(namespace, peer)
                        .into_iter()
                        .flat_map(|p| cx.identities_of(p))
                        .collect();
                    by_pods.sort_unstable();
                    by_pods.dedup();
                    let mut by_keys = cx.peer_identities(namespace, peer);
                    by_keys.sort_unstable();
                    assert_eq!(by_keys, by_pods, "{peer:?} in {namespace:?}");
                    compared += usize::from(!by_pods.is_empty());
                }
            }
        }
    }
    // Two peers name nobody: the ghost namespace's, and a selector of
    // namespaces without an `ns` label (each has one).
    assert_eq!(compared, 8, "peers that named someone");
}
