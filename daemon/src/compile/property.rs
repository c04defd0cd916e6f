//! Property test: on random policies over the standard model, the compiled
//! map state evaluated the way the datapath does (`evaluate`) and a direct
//! reading of the policies (`explain`, written independently of the
//! compiler) agree on every flow.

use std::net::{IpAddr, Ipv4Addr};

use super::{compile, evaluate};
use crate::{
    explain::{Target, explain},
    model::{
        LabelSelector, NetworkPolicy, Protocol, Snapshot,
        networkpolicy::{
            EgressRule, IngressRule, IpBlock, NetworkPolicySpec, ObjectMeta, Peer, PolicyPort,
            PolicyType, PortRef,
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

fn standard() -> Snapshot {
    ScenarioFile::parse("name: property\nmodel: standard\n", "property")
        .and_then(|f| f.snapshot("property"))
        .unwrap_or_default()
}

#[test]
fn compiled_state_and_policies_agree_on_random_snapshots() {
    let base = standard();
    assert_eq!(base.pods.len(), 9);
    let outside = [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
    ];
    let (mut allowed, mut denied) = (0u32, 0u32);
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut s = base.clone();
        s.policies = (0..1 + rng.below(4) as usize)
            .map(|i| policy(&mut rng, i))
            .collect();
        let c = compile(&s);
        for from in &s.pods {
            for to in &s.pods {
                if from.key() == to.key() {
                    continue;
                }
                for (protocol, number) in [(Protocol::Tcp, 6), (Protocol::Udp, 17)] {
                    for port in [79, 80, 81] {
                        let direct =
                            explain(&s, Target::Pod(from), Target::Pod(to), protocol, port)
                                .allowed();
                        let compiled = evaluate::connection(&c, from, to, number, port);
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
        allowed > 10_000 && denied > 10_000,
        "allowed {allowed}, denied {denied}"
    );
}
