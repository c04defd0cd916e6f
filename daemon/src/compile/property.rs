//! Property test: on random policies of every kind over the standard model,
//! the compiled map state evaluated the way the datapath does (`evaluate`)
//! and a direct reading of the policies (`explain`, written independently of
//! the compiler) agree on every flow, side by side, audit included.

use std::net::{IpAddr, Ipv4Addr};

use ebpf_common::datapath::{action, direction, endpoint_flags, policy_flags};

use super::{EndpointPolicy, compile, evaluate};
use crate::{
    explain::{Side, Target, explain},
    model::{
        LabelSelector, NetworkPolicy, Pod, Policy, Protocol, Snapshot,
        networkpolicy::{
            EgressRule, IngressRule, IpBlock, NetworkPolicySpec, ObjectMeta, Peer, PolicyPort,
            PolicyType, PortRef,
        },
        palisade::{
            Action, ClusterTier, EgressRule as PEgress, IngressRule as PIngress, Mode,
            PalisadeClusterNetworkPolicySpec, PalisadeNetworkPolicySpec, Subject,
        },
        scenario::ScenarioFile,
        selector::{Operator, Requirement},
    },
};

/// xorshift64*: deterministic, so a failure names its seed and replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> LabelSelector {
    let mut s = LabelSelector::default();
    match rng.below(4) {
        0 => {}
        1 => {
            s.match_labels
                .insert(key.into(), (*rng.pick(values)).into());
        }
        2 => s.match_expressions.push(Requirement {
            key: key.into(),
            operator: *rng.pick(&[Operator::In, Operator::NotIn]),
            values: vec![(*rng.pick(values)).into(), (*rng.pick(values)).into()],
        }),
        _ => s.match_expressions.push(Requirement {
            key: (*rng.pick(&[key, "absent"])).into(),
            operator: *rng.pick(&[Operator::Exists, Operator::DoesNotExist]),
            values: Vec::new(),
        }),
    }
    s
}

fn peer(rng: &mut Rng) -> Peer {
    match rng.below(4) {
        0 => Peer {
            pod_selector: Some(selector(rng, "pod", &["a", "b", "c"])),
            ..Peer::default()
        },
        1 => Peer {
            namespace_selector: Some(selector(rng, "ns", &["x", "y", "z"])),
            ..Peer::default()
        },
        2 => Peer {
            pod_selector: Some(selector(rng, "pod", &["a", "b", "c"])),
            namespace_selector: Some(selector(rng, "ns", &["x", "y", "z"])),
            ..Peer::default()
        },
        _ => {
            // Blocks around the pod network (10.244.0.1-9) and outside it.
            let (cidr, except): (&str, &[&str]) = *rng.pick(&[
                ("10.244.0.0/28", &["10.244.0.4/30"][..]),
                ("10.244.0.0/24", &[][..]),
                ("10.244.0.8/29", &["10.244.0.9/32"][..]),
                ("192.0.2.0/24", &["192.0.2.128/25"][..]),
            ]);
            Peer {
                ip_block: Some(IpBlock {
                    cidr: cidr.into(),
                    except: except.iter().map(|e| (*e).to_owned()).collect(),
                }),
                ..Peer::default()
            }
        }
    }
}

fn ports(rng: &mut Rng) -> Vec<PolicyPort> {
    (0..rng.below(3))
        .map(|_| {
            let protocol = rng
                .chance(70)
                .then(|| *rng.pick(&[Protocol::Tcp, Protocol::Udp]));
            match rng.below(4) {
                0 => PolicyPort {
                    protocol,
                    port: None,
                    end_port: None,
                },
                1 => PolicyPort {
                    protocol,
                    port: Some(PortRef::Number(*rng.pick(&[80, 81]))),
                    end_port: None,
                },
                2 => PolicyPort {
                    protocol,
                    port: Some(PortRef::Number(79)),
                    end_port: Some(80),
                },
                _ => PolicyPort {
                    protocol,
                    port: Some(PortRef::Name(
                        (*rng.pick(&["serve-80-tcp", "serve-81-udp", "serve-80-udp"])).into(),
                    )),
                    end_port: None,
                },
            }
        })
        .collect()
}

fn policy(rng: &mut Rng, i: usize) -> NetworkPolicy {
    let ns = *rng.pick(&["x", "y", "z"]);
    let rules = |rng: &mut Rng| rng.below(3) as usize;
    let ingress = (0..rules(rng))
        .map(|_| IngressRule {
            from: (0..rng.below(3)).map(|_| peer(rng)).collect(),
            ports: ports(rng),
        })
        .collect();
    let egress = (0..rules(rng))
        .map(|_| EgressRule {
            to: (0..rng.below(3)).map(|_| peer(rng)).collect(),
            ports: ports(rng),
        })
        .collect();
    let policy_types = match rng.below(4) {
        0 => None,
        1 => Some(vec![PolicyType::Ingress]),
        2 => Some(vec![PolicyType::Egress]),
        _ => Some(vec![PolicyType::Ingress, PolicyType::Egress]),
    };
    NetworkPolicy {
        api_version: "networking.k8s.io/v1".into(),
        kind: "NetworkPolicy".into(),
        metadata: ObjectMeta {
            name: format!("p{i}"),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        spec: NetworkPolicySpec {
            pod_selector: selector(rng, "pod", &["a", "b", "c"]),
            policy_types,
            ingress,
            egress,
        },
        status: None,
    }
}

/// The NetworkPolicy's rules with an action each from `action`.
fn with_actions(
    np: &NetworkPolicy,
    rng: &mut Rng,
    action: impl Fn(&mut Rng) -> Option<Action>,
) -> (Vec<PIngress>, Vec<PEgress>) {
    let ingress = np
        .spec
        .ingress
        .iter()
        .map(|r| PIngress {
            action: action(rng),
            from: r.from.clone(),
            ports: r.ports.clone(),
        })
        .collect();
    let egress = np
        .spec
        .egress
        .iter()
        .map(|r| PEgress {
            action: action(rng),
            to: r.to.clone(),
            ports: r.ports.clone(),
        })
        .collect();
    (ingress, egress)
}

/// A Palisade policy of either kind, built around the same random rules.
fn palisade_policy(rng: &mut Rng, i: usize) -> Policy {
    let np = policy(rng, i);
    let mode = rng.chance(25).then_some(Mode::Audit);
    let priority = rng.chance(70).then(|| *rng.pick(&[500, 1000, 1500]));
    if rng.chance(50) {
        let (ingress, egress) = with_actions(&np, rng, |rng| {
            rng.chance(70)
                .then(|| *rng.pick(&[Action::Allow, Action::Deny]))
        });
        let spec = PalisadeNetworkPolicySpec {
            pod_selector: np.spec.pod_selector.clone(),
            priority,
            mode,
            policy_types: np.spec.policy_types.clone(),
            ingress,
            egress,
            process: None,
            file: None,
        };
        let ns = np.metadata.namespace.as_deref().unwrap_or("x");
        Policy::from_namespaced(ns, &np.metadata.name, &spec)
    } else {
        let tier = *rng.pick(&[ClusterTier::Admin, ClusterTier::Baseline]);
        let actions: &[Action] = if tier == ClusterTier::Admin {
            &[Action::Allow, Action::Deny, Action::Pass]
        } else {
            &[Action::Allow, Action::Deny]
        };
        let namespace_selector = rng
            .chance(50)
            .then(|| selector(rng, "ns", &["x", "y", "z"]));
        let pod_selector = rng.chance(50).then(|| np.spec.pod_selector.clone());
        let (ingress, egress) = with_actions(&np, rng, |rng| Some(*rng.pick(actions)));
        let spec = PalisadeClusterNetworkPolicySpec {
            tier: Some(tier),
            priority,
            mode,
            subject: Subject {
                namespace_selector,
                pod_selector,
            },
            ingress,
            egress,
            process: None,
            file: None,
        };
        Policy::from_cluster(&format!("c{i}"), &spec)
    }
}

/// What one side does to a new flow.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Pass,
    Audit,
    Drop,
}

fn seen(side: &Side) -> Seen {
    match side {
        Side::WouldDrop { .. } => Seen::Audit,
        s if s.allows() => Seen::Pass,
        _ => Seen::Drop,
    }
}

fn compiled_side(ep: &EndpointPolicy, dir: u32, peer: u32, protocol: u8, port: u16) -> Seen {
    let isolated = if dir == direction::INGRESS {
        endpoint_flags::ISOLATED_INGRESS
    } else {
        endpoint_flags::ISOLATED_EGRESS
    };
    match evaluate::matching(ep, dir, peer, protocol, port) {
        Some(e) if e.value.action == action::ALLOW => Seen::Pass,
        Some(e) if e.value.flags & policy_flags::AUDIT != 0 => Seen::Audit,
        Some(_) => Seen::Drop,
        None if ep.flags & isolated != 0 => Seen::Drop,
        None => Seen::Pass,
    }
}

fn standard() -> Snapshot {
    ScenarioFile::parse("name: property\nmodel: standard\n", "property")
        .and_then(|f| f.snapshot("property"))
        .unwrap_or_default()
}

/// The standard model with 1-4 random policies (Palisade's kinds mixed in
/// for even seeds), as the property test draws them.
pub fn random_snapshot(seed: u64) -> Snapshot {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut s = standard();
    let mixed = seed.is_multiple_of(2);
    s.policies = (0..1 + rng.below(4) as usize)
        .map(|i| {
            if mixed && rng.chance(60) {
                palisade_policy(&mut rng, i)
            } else {
                Policy::from(&policy(&mut rng, i))
            }
        })
        .collect();
    s
}

#[test]
fn compiled_state_and_policies_agree_on_random_snapshots() {
    let base = standard();
    assert_eq!(base.pods.len(), 9);
    let outside = [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
    ];
    let (mut allowed, mut denied, mut audited) = (0u32, 0u32, 0u32);
    let none = EndpointPolicy::default();
    for seed in 1..=400u64 {
        // Half the seeds: NetworkPolicy only; the others mix in Palisade's kinds.
        let s = random_snapshot(seed);
        let c = compile(&s);
        for from in &s.pods {
            for to in &s.pods {
                if from.key() == to.key() {
                    continue;
                }
                for (protocol, number) in [(Protocol::Tcp, 6), (Protocol::Udp, 17)] {
                    for port in [79, 80, 81] {
                        let e = explain(&s, Target::Pod(from), Target::Pod(to), protocol, port);
                        let direct = e.allowed();
                        let compiled = evaluate::connection(&c, from, to, number, port);
                        let side = |pod: &Pod, dir: u32, peer: &Pod| {
                            compiled_side(
                                c.endpoints.get(&pod.key()).unwrap_or(&none),
                                dir,
                                evaluate::identity_of(&c, peer.ips[0]),
                                number,
                                port,
                            )
                        };
                        let egress = side(from, direction::EGRESS, to);
                        let ingress = side(to, direction::INGRESS, from);
                        assert_eq!(
                            (egress, ingress),
                            (seen(&e.egress), seen(&e.ingress)),
                            "seed {seed}: {} -> {} {protocol}/{port} sides\n{e:?}\npolicies: {:#?}",
                            from.key(),
                            to.key(),
                            s.policies
                        );
                        audited += u32::from(matches!(e.egress, Side::WouldDrop { .. }));
                        assert_eq!(
                            compiled,
                            direct,
                            "seed {seed}: {} -> {} {protocol}/{port}\npolicies: {:#?}",
                            from.key(),
                            to.key(),
                            s.policies
                        );
                        if direct { allowed += 1 } else { denied += 1 }
                    }
                }
            }
            for ip in outside {
                let direct = explain(
                    &s,
                    Target::Pod(from),
                    Target::Address(ip),
                    Protocol::Tcp,
                    80,
                )
                .allowed();
                assert_eq!(
                    evaluate::to_address(&c, from, ip, 6, 80),
                    direct,
                    "seed {seed}: {} -> {ip}",
                    from.key()
                );
            }
        }
    }
    // The generator exercises both outcomes in earnest.
    assert!(
        allowed > 10_000 && denied > 10_000 && audited > 100,
        "allowed {allowed}, denied {denied}, audited {audited}"
    );
}
