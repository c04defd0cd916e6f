//! Property test: on random policies of every kind over the standard model,
//! the compiled map state evaluated the way the datapath does (`evaluate`)
//! and a direct reading of the policies (`explain`, written independently of
//! the compiler) agree on every flow, side by side, audit included.
//!
//! proptest draws the policies and, on a failure, shrinks them to a minimal
//! failing set: the generator reads its choices from a list of numbers that
//! proptest generates and shrinks (shorter lists and smaller numbers mean
//! fewer policies, rules, peers and ports), and the runner is seeded, so a
//! run replays.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRng, TestRunner},
};

use ebpf_common::datapath::{action, direction, endpoint_flags, policy_flags};

use super::{EndpointPolicy, compile, evaluate};
use crate::{
    model::{
        LabelSelector, NetworkPolicy, Pod, Policy, Protocol, Snapshot,
        networkpolicy::{
            EgressRule, IngressRule, IpBlock, NetworkPolicySpec, ObjectMeta, Peer, PolicyPort,
            PolicyType, PortRef,
        },
        palisade::{
            Action, ClusterTier, Mode, PalisadeClusterNetworkPolicySpec, PalisadeNetworkPolicySpec,
            Subject,
        },
        selector::{Operator, Requirement},
        standard,
    },
    observe::explain::{Side, Target, explain},
};

/// Choices read from proptest's numbers; past their end every choice is 0,
/// the simplest (no optional part, the first item, the fewest repeats).
struct Rng<'a> {
    choices: &'a [u32],
    next: usize,
}

impl Rng<'_> {
    fn below(&mut self, n: u64) -> u64 {
        let choice = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        u64::from(choice) % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// True with `percent` % probability; false for choice 0.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) >= 100 - percent
    }
}

fn selector(rng: &mut Rng<'_>, key: &str, values: &[&str]) -> LabelSelector {
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

fn peer(rng: &mut Rng<'_>) -> Peer {
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

fn ports(rng: &mut Rng<'_>) -> Vec<PolicyPort> {
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

fn policy(rng: &mut Rng<'_>, i: usize) -> NetworkPolicy {
    let ns = *rng.pick(&["x", "y", "z"]);
    let rules = |rng: &mut Rng<'_>| rng.below(3) as usize;
    let ingress = (0..rules(rng))
        .map(|_| IngressRule {
            from: (0..rng.below(3)).map(|_| peer(rng)).collect(),
            ports: ports(rng),
            action: None,
        })
        .collect();
    let egress = (0..rules(rng))
        .map(|_| EgressRule {
            to: (0..rng.below(3)).map(|_| peer(rng)).collect(),
            ports: ports(rng),
            action: None,
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
    rng: &mut Rng<'_>,
    action: impl Fn(&mut Rng<'_>) -> Option<Action>,
) -> (Vec<IngressRule>, Vec<EgressRule>) {
    let (mut ingress, mut egress) = (np.spec.ingress.clone(), np.spec.egress.clone());
    for r in &mut ingress {
        r.action = action(rng);
    }
    for r in &mut egress {
        r.action = action(rng);
    }
    (ingress, egress)
}

/// A Palisade policy of either kind, built around the same random rules.
fn palisade_policy(rng: &mut Rng<'_>, i: usize) -> Policy {
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

/// One policy per list of choices: NetworkPolicy only, or with `mixed`
/// Palisade's kinds too.
fn random_policies(mixed: bool, choices: &[Vec<u32>]) -> Vec<Policy> {
    choices
        .iter()
        .enumerate()
        .map(|(i, choices)| {
            let mut rng = Rng { choices, next: 0 };
            if mixed && rng.chance(60) {
                palisade_policy(&mut rng, i)
            } else {
                Policy::from(&policy(&mut rng, i))
            }
        })
        .collect()
}

/// Sets of 1-4 random policies, as the property tests draw them. Each
/// policy reads its own choices, so that shrinking can drop a policy and
/// leave the others as they were.
pub fn policy_sets() -> impl Strategy<Value = Vec<Policy>> {
    use proptest::collection::vec;
    // Enough choices for the largest policy.
    let policy = vec(any::<u32>(), 0..=120);
    (any::<bool>(), vec(policy, 1..=4)).prop_map(|(mixed, c)| random_policies(mixed, &c))
}

/// The standard model with `policies`.
pub fn snapshot_with(policies: Vec<Policy>) -> Snapshot {
    let mut s = standard::snapshot();
    s.policies = policies.into_iter().map(std::sync::Arc::new).collect();
    s
}

/// A property that failed: why, and the smallest input proptest found
/// that still fails (none when proptest gave up).
pub struct Failure<V> {
    pub why: String,
    pub input: Option<V>,
}

impl<V: std::fmt::Debug> std::fmt::Debug for Failure<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nminimal failing input: {:#?}", self.why, self.input)
    }
}

/// Runs `test` on `cases` values of `strategy`, from a fixed seed so that a
/// run replays; a failure comes back shrunk.
pub fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), Failure<S::Value>> {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner.run(&strategy, test).map_err(|e| match e {
        TestError::Fail(why, input) => Failure {
            why: why.to_string(),
            input: Some(input),
        },
        TestError::Abort(why) => Failure {
            why: format!("aborted: {why}"),
            input: None,
        },
    })
}

/// [`check`] on random policy sets over the standard model.
pub fn check_policy_sets(
    cases: u32,
    test: impl Fn(Snapshot) -> Result<(), TestCaseError>,
) -> Result<(), Failure<Vec<Policy>>> {
    check(cases, policy_sets(), |policies| {
        test(snapshot_with(policies))
    })
}

#[test]
fn compiled_state_and_policies_agree_on_random_snapshots() {
    let base = standard::snapshot();
    assert_eq!(base.pods.len(), 9);
    let outside = [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
    ];
    let (allowed, denied, audited) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let count = |c: &Cell<u32>| c.set(c.get() + 1);
    let none = EndpointPolicy::default();
    let agree = |s: Snapshot| {
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
                        prop_assert_eq!(
                            (egress, ingress),
                            (seen(&e.egress), seen(&e.ingress)),
                            "{} -> {} {}/{} sides\n{:?}",
                            from.key(),
                            to.key(),
                            protocol,
                            port,
                            e
                        );
                        if matches!(e.egress, Side::WouldDrop { .. }) {
                            count(&audited);
                        }
                        prop_assert_eq!(
                            compiled,
                            direct,
                            "{} -> {} {}/{}",
                            from.key(),
                            to.key(),
                            protocol,
                            port
                        );
                        count(if direct { &allowed } else { &denied });
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
                prop_assert_eq!(
                    evaluate::to_address(&c, from, ip, 6, 80),
                    direct,
                    "{} -> {}",
                    from.key(),
                    ip
                );
            }
        }
        Ok(())
    };
    check_policy_sets(400, agree).unwrap();
    // The generator exercises both outcomes in earnest.
    let (allowed, denied, audited) = (allowed.get(), denied.get(), audited.get());
    assert!(
        allowed > 10_000 && denied > 10_000 && audited > 100,
        "allowed {allowed}, denied {denied}, audited {audited}"
    );
}

/// A deliberate mutation proves that the property can fail, and that its
/// failure shrinks: a compiler that forgets the last policy disagrees with
/// the policies, and the smallest set that shows it has one policy.
#[test]
fn a_compiler_that_forgets_a_policy_is_caught_with_one_policy() {
    let failure = check_policy_sets(400, |s| {
        let mut forgetful = s.clone();
        forgetful.policies.pop();
        let c = compile(&forgetful);
        for from in &s.pods {
            for to in s.pods.iter().filter(|to| to.key() != from.key()) {
                let direct =
                    explain(&s, Target::Pod(from), Target::Pod(to), Protocol::Tcp, 80).allowed();
                prop_assert_eq!(evaluate::connection(&c, from, to, 6, 80), direct);
            }
        }
        Ok(())
    })
    .unwrap_err();
    assert_eq!(failure.input.as_ref().map(Vec::len), Some(1), "{failure:?}");
}
