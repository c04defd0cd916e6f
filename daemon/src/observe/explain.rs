//! `palisade explain`: why a flow would be allowed or denied, read from the
//! policies themselves (not from compiled state), rule by rule. A test
//! checks it against the compiler's output, so the two keep each other
//! honest.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use crate::model::{
    NamedPort, Pod, Policy, Protocol, Snapshot,
    networkpolicy::{Peer, PolicyPort, PortRef},
    palisade::Action,
    policy::{Rule, Tier},
};

/// One end of a flow.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A pod at its first address.
    Pod(&'a Pod),
    /// A pod at one of its addresses: a dual-stack pod's flows in each
    /// family are separate flows, and an ipBlock sees only its own family.
    PodAt(&'a Pod, IpAddr),
    /// An address outside the pods.
    Address(IpAddr),
}

impl<'a> Target<'a> {
    fn address(&self) -> Option<IpAddr> {
        match self {
            Self::Pod(p) => p.ips.first().copied(),
            Self::PodAt(_, a) | Self::Address(a) => Some(*a),
        }
    }

    fn pod(&self) -> Option<&'a Pod> {
        match self {
            Self::Pod(p) | Self::PodAt(p, _) => Some(p),
            Self::Address(_) => None,
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(p) | Self::PodAt(p, _) => f.write_str(&p.key()),
            Self::Address(a) => write!(f, "{a}"),
        }
    }
}

/// An IP address family, as `--family 4|6` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

impl std::str::FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "4" => Ok(Self::V4),
            "6" => Ok(Self::V6),
            other => Err(format!("unknown address family {other}: 4 or 6")),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The verdict of one side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// Not a pod: nothing of Palisade's enforces here.
    NotAPod,
    /// No rule of any policy decides and nothing isolates the pod: allowed.
    NotSelected,
    /// The first rule in evaluation order that covers the flow allows it.
    Allowed { policy: String, rule: usize },
    /// The first rule in evaluation order that covers the flow denies it.
    DeniedByRule { policy: String, rule: usize },
    /// Policies isolate the pod for this direction, and none of their rules
    /// (nor any admin rule) covers the flow.
    Denied { selected_by: Vec<String> },
    /// Enforced policies let it through; audit-mode policies would not.
    WouldDrop {
        enforced: Box<Side>,
        audited: Box<Side>,
    },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Self::Denied { .. } | Self::DeniedByRule { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub egress: Side,
    pub ingress: Side,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Whether a rule's peer list (empty: anyone) names `other`, for a policy
/// in `ns` (`None`: cluster-scoped, a bare podSelector means any namespace).
fn peers_match(s: &Snapshot, ns: Option<&str>, peers: &[Peer], other: Target<'_>) -> bool {
    peers.is_empty()
        || peers
            .iter()
            .any(|peer| match (&peer.ip_block, other.pod()) {
                // ipBlocks match pod addresses as well as outside ones.
                (Some(block), _) => {
                    // The flow's own address: a dual-stack pod's other
                    // address is another flow.
                    other.address().is_some_and(|addr| {
                        let inside = |c: &str| c.parse::<IpNet>().is_ok_and(|n| n.contains(&addr));
                        inside(&block.cidr) && !block.except.iter().any(|e| inside(e))
                    })
                }
                (None, None) => false,
                (None, Some(pod)) => {
                    let ns_ok = match &peer.namespace_selector {
                        Some(sel) => s
                            .namespaces
                            .get(&pod.namespace)
                            .is_some_and(|n| sel.matches(&n.effective_labels())),
                        None => ns.is_none_or(|ns| pod.namespace == ns),
                    };
                    ns_ok
                        && peer
                            .pod_selector
                            .as_ref()
                            .is_none_or(|sel| sel.matches(&pod.labels))
                }
            })
}

/// Whether a rule's ports (empty: all) cover `protocol`/`port` at `dest`.
fn ports_match(ports: &[PolicyPort], dest: Target<'_>, protocol: Protocol, port: u16) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            p.protocol.unwrap_or(Protocol::Tcp) == protocol
                && match &p.port {
                    None => true,
                    Some(PortRef::Number(n)) => {
                        let last = p.end_port.unwrap_or(*n);
                        (*n..=last).contains(&i64::from(port))
                    }
                    Some(PortRef::Name(name)) => dest.pod().is_some_and(|d| {
                        NamedPort::resolve(&d.ports, name, protocol) == Some(port)
                    }),
                }
        })
}

fn side(
    s: &Snapshot,
    me: Target<'_>,
    other: Target<'_>,
    egress: bool,
    protocol: Protocol,
    port: u16,
) -> Side {
    let Some(pod) = me.pod() else {
        return Side::NotAPod;
    };
    let enforced = side_with(s, pod, other, egress, protocol, port, false);
    let audited = side_with(s, pod, other, egress, protocol, port, true);
    if enforced.allows() && !audited.allows() {
        Side::WouldDrop {
            enforced: Box::new(enforced),
            audited: Box::new(audited),
        }
    } else {
        enforced
    }
}

/// One direction's verdict, with or without the audit-mode policies.
fn side_with(
    s: &Snapshot,
    pod: &Pod,
    other: Target<'_>,
    egress: bool,
    protocol: Protocol,
    port: u16,
    audit: bool,
) -> Side {
    let dest = if egress { other } else { Target::Pod(pod) };
    let ns_labels = s
        .namespaces
        .get(&pod.namespace)
        .map(crate::model::Namespace::effective_labels)
        .unwrap_or_default();
    let applying: Vec<&Policy> = s
        .policies
        .iter()
        .map(|p| &**p)
        .filter(|p| (audit || !p.audit) && p.rules(egress).is_some())
        .filter(|p| p.selects(&pod.namespace, &ns_labels, &pod.labels))
        .collect();
    let mut selected_by: Vec<String> = applying
        .iter()
        .filter(|p| p.isolates(egress))
        .map(|p| p.key())
        .collect();
    selected_by.sort();
    // Every (policy, rule) in evaluation order.
    let mut rules: Vec<(&Policy, usize, &Rule)> = applying
        .iter()
        .flat_map(|p| {
            p.rules(egress)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(move |(i, r)| (*p, i, r))
        })
        .collect();
    rules.sort_by_key(|(p, i, r)| (p.tier, p.priority, r.action.rank(), p.key(), *i));
    let mut passed = false;
    for (p, i, rule) in rules {
        if !(peers_match(s, p.namespace.as_deref(), &rule.peers, other)
            && ports_match(&rule.ports, dest, protocol, port))
        {
            continue;
        }
        match p.tier {
            Tier::Admin if passed => continue,
            Tier::Baseline if !selected_by.is_empty() => break,
            _ => {}
        }
        match rule.action {
            Action::Pass => passed = true,
            Action::Allow => {
                return Side::Allowed {
                    policy: p.key(),
                    rule: i,
                };
            }
            Action::Deny => {
                return Side::DeniedByRule {
                    policy: p.key(),
                    rule: i,
                };
            }
        }
    }
    if selected_by.is_empty() {
        Side::NotSelected
    } else {
        Side::Denied { selected_by }
    }
}

pub fn explain(
    s: &Snapshot,
    from: Target<'_>,
    to: Target<'_>,
    protocol: Protocol,
    port: u16,
) -> Explanation {
    Explanation {
        egress: side(s, from, to, true, protocol, port),
        ingress: side(s, to, from, false, protocol, port),
    }
}

fn say(dir: &str, side: &Side) -> String {
    match side {
        Side::NotAPod => "not a pod, nothing enforced".to_owned(),
        Side::NotSelected => {
            format!("allowed, no policy isolates it for {dir} and no rule decides")
        }
        Side::Allowed { policy, rule } => format!("allowed by {policy}, {dir} rule {rule}"),
        Side::DeniedByRule { policy, rule } => format!("denied by {policy}, {dir} rule {rule}"),
        Side::Denied { selected_by } => format!(
            "denied, isolated by {} and no rule allows it",
            selected_by.join(", ")
        ),
        Side::WouldDrop { enforced, audited } => format!(
            "{}; audit: would be {}",
            say(dir, enforced),
            say(dir, audited)
        ),
    }
}

/// Human-readable lines for the CLI.
pub fn render(
    e: &Explanation,
    from: Target<'_>,
    to: Target<'_>,
    protocol: Protocol,
    port: u16,
) -> String {
    let side =
        |dir: &str, who: Target<'_>, side: &Side| format!("{dir} of {who}: {}", say(dir, side));
    let address = |t: Target<'_>| {
        t.address()
            .map_or_else(|| "no address".to_owned(), |a| a.to_string())
    };
    format!(
        "{from} ({}) -> {to} ({}) {protocol}/{port}: {}\n  {}\n  {}\n",
        address(from),
        address(to),
        if e.allowed() { "ALLOWED" } else { "DENIED" },
        side("egress", from, &e.egress),
        side("ingress", to, &e.ingress)
    )
}

/// The family a question is asked in: the one named, else that of an
/// address given as an end, else that of the source pod's first address
/// (the destination's if the source has none). `None`: no end has an
/// address, and only label rules can decide.
fn family_of(
    named: Option<Family>,
    from: Target<'_>,
    to: Target<'_>,
) -> Result<Option<Family>, String> {
    let given: Vec<IpAddr> = [from, to]
        .iter()
        .filter_map(|t| match t {
            Target::Address(a) => Some(*a),
            _ => None,
        })
        .collect();
    if let Some(named) = named {
        return match given.iter().find(|a| Family::of(**a) != named) {
            Some(a) => Err(format!("{a} is not an {named} address")),
            None => Ok(Some(named)),
        };
    }
    match given.as_slice() {
        [a, b] if Family::of(*a) != Family::of(*b) => {
            Err(format!("{a} and {b} are of different families"))
        }
        [a, ..] => Ok(Some(Family::of(*a))),
        [] => Ok(from.address().or_else(|| to.address()).map(Family::of)),
    }
}

/// A pod end at its address in `family`; an address end as it is.
fn in_family(t: Target<'_>, family: Option<Family>) -> Result<Target<'_>, String> {
    match (t.pod(), family) {
        // A pod without addresses (not started yet) is still matched by labels.
        (Some(pod), Some(family)) if !pod.ips.is_empty() => pod
            .ips
            .iter()
            .find(|ip| Family::of(**ip) == family)
            .map(|ip| Target::PodAt(pod, *ip))
            .ok_or_else(|| format!("{} has no {family} address", pod.key())),
        _ => Ok(t),
    }
}

/// `explain` from text arguments, as the CLI and the daemon's `/explain`
/// take them: `from`/`to` are `namespace/pod` or an address of either
/// family, `port` a number or a port name on the destination pod, `family`
/// `4` or `6` (see [`family_of`] for its default).
pub fn explain_text(
    s: &Snapshot,
    from: &str,
    to: &str,
    port: &str,
    protocol: &str,
    family: Option<&str>,
) -> Result<String, String> {
    let target = |spec: &str| -> Result<Target<'_>, String> {
        if let Ok(ip) = spec.parse::<IpAddr>() {
            return Ok(Target::Address(ip));
        }
        s.pods
            .iter()
            .find(|p| p.key() == spec)
            .map(|p| Target::Pod(p))
            .ok_or_else(|| format!("no pod {spec} (use namespace/pod or an address)"))
    };
    let (from, to) = (target(from)?, target(to)?);
    let family = family_of(family.map(str::parse).transpose()?, from, to)?;
    let (from, to) = (in_family(from, family)?, in_family(to, family)?);
    let protocol = match protocol.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("unknown protocol {other}: TCP, UDP or SCTP")),
    };
    let port = match port.parse::<u16>() {
        Ok(n) => n,
        Err(_) => match to.pod() {
            Some(pod) => NamedPort::resolve(&pod.ports, port, protocol)
                .ok_or_else(|| format!("{} has no {protocol} port named {port}", pod.key()))?,
            None => return Err("a named port needs a pod as destination".into()),
        },
    };
    Ok(render(
        &explain(s, from, to, protocol, port),
        from,
        to,
        protocol,
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::{compile, evaluate},
        model::{parse::parse_documents, standard},
    };

    /// The standard model with policies that exercise every kind of peer.
    fn snapshot() -> Snapshot {
        let mut s = standard::snapshot();
        for doc in parse_documents(POLICIES, "t.yaml", "default") {
            s.policies.push(doc.unwrap().policy().into());
        }
        s
    }

    const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}, {protocol: UDP, port: 81}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress:
  - to: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
    ports: [{port: 80, endPort: 81}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-by-address, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/28, except: [10.244.0.4/30]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: z-deny-all, namespace: z}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";

    #[test]
    fn explain_and_the_compiled_datapath_agree_on_every_flow() {
        let s = snapshot();
        let c = compile(&s);
        let mut allowed = 0;
        for from in &s.pods {
            for to in &s.pods {
                if from.key() == to.key() {
                    continue;
                }
                for (protocol, number) in [(Protocol::Tcp, 6), (Protocol::Udp, 17)] {
                    for port in [80, 81] {
                        let e = explain(&s, Target::Pod(from), Target::Pod(to), protocol, port);
                        let compiled = evaluate::connection(&c, from, to, number, port);
                        assert_eq!(
                            e.allowed(),
                            compiled,
                            "{} -> {} {protocol:?}/{port}: {e:?}",
                            from.key(),
                            to.key()
                        );
                        allowed += usize::from(compiled);
                    }
                }
            }
            for last in [10, 200] {
                let ip = IpAddr::from([192, 0, 2, last]);
                let e = explain(
                    &s,
                    Target::Pod(from),
                    Target::Address(ip),
                    Protocol::Tcp,
                    80,
                );
                assert_eq!(
                    e.allowed(),
                    evaluate::to_address(&c, from, ip, 6, 80),
                    "{} -> {ip}",
                    from.key()
                );
            }
        }
        // Neither everything nor nothing: the policies bite.
        assert!(allowed > 0 && allowed < 72 * 4, "{allowed}");
    }

    #[test]
    fn the_deciding_rule_is_named() {
        let s = snapshot();
        let pod = |k: &str| s.pods.iter().find(|p| p.key() == k).unwrap();
        let e = explain(
            &s,
            Target::Pod(pod("y/b")),
            Target::Pod(pod("x/a")),
            Protocol::Tcp,
            80,
        );
        assert_eq!(
            e.ingress,
            Side::Allowed {
                policy: "x/a-from-y-b".into(),
                rule: 0
            }
        );
        assert_eq!(e.egress, Side::NotSelected);
        let e = explain(
            &s,
            Target::Pod(pod("y/c")),
            Target::Pod(pod("x/a")),
            Protocol::Tcp,
            80,
        );
        assert_eq!(
            e.ingress,
            Side::Denied {
                selected_by: vec!["x/a-from-y-b".into()]
            }
        );
        let e = explain(
            &s,
            Target::Pod(pod("x/b")),
            Target::Address(IpAddr::from([192, 0, 2, 10])),
            Protocol::Tcp,
            81,
        );
        assert_eq!(
            e.egress,
            Side::Allowed {
                policy: "x/b-egress".into(),
                rule: 1
            }
        );
        assert_eq!(e.ingress, Side::NotAPod);
        assert!(
            render(
                &e,
                Target::Pod(pod("x/b")),
                Target::Address(IpAddr::from([192, 0, 2, 10])),
                Protocol::Tcp,
                81
            )
            .contains("ALLOWED")
        );
    }

    /// x/b admits only an IPv6 block, which holds y/b's IPv6 address (as
    /// in tests/scenarios/ipv6.yaml).
    const V6_BLOCK: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-v6-block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{ipBlock: {cidr: "fd00:10:244::b0/124"}}]}]
"#;

    /// The standard model made dual-stack as a scenario file with
    /// `podCIDR6: fd00:10:244::/64` makes it: y/b pins fd00:10:244::b0, the
    /// other pods take ::1, ::2, ... in pod order; with [`V6_BLOCK`].
    fn dual_stack() -> Snapshot {
        let mut s = standard::snapshot();
        let v6 = |n: u16| IpAddr::from([0xfd00, 0x10, 0x244, 0, 0, 0, 0, n]);
        let mut next = (1..).map(v6);
        for pod in &mut s.pods {
            let ip = if pod.key() == "y/b" {
                v6(0xb0)
            } else {
                next.next().unwrap()
            };
            std::sync::Arc::make_mut(pod).ips.push(ip);
        }
        for doc in parse_documents(V6_BLOCK, "t.yaml", "default") {
            s.policies.push(doc.unwrap().policy().into());
        }
        s
    }

    fn ask(s: &Snapshot, from: &str, to: &str, family: Option<&str>) -> Result<String, String> {
        explain_text(s, from, to, "80", "TCP", family)
    }

    #[test]
    fn a_dual_stack_pair_is_asked_in_the_family_named() {
        let s = dual_stack();
        let v4 = ask(&s, "y/b", "x/b", None).unwrap();
        assert!(v4.contains("DENIED") && v4.contains("10.244."), "{v4}");
        assert_eq!(ask(&s, "y/b", "x/b", Some("4")).unwrap(), v4);
        let v6 = ask(&s, "y/b", "x/b", Some("6")).unwrap();
        assert!(
            v6.contains("(fd00:10:244::b0) -> x/b (fd00:10:244::")
                && v6.contains("ALLOWED")
                && v6.contains("allowed by x/b-from-v6-block, ingress rule 0"),
            "{v6}"
        );
        // The compiler agrees, address by address.
        let c = compile(&s);
        let pod = |k: &str| s.pods.iter().find(|p| p.key() == k).unwrap();
        let v6_of = |p: &Pod| *p.ips.iter().find(|ip| ip.is_ipv6()).unwrap();
        let (yb, xb) = (pod("y/b"), pod("x/b"));
        assert!(evaluate::connection_between(
            &c,
            (yb, v6_of(yb)),
            (xb, v6_of(xb)),
            6,
            80
        ));
        assert!(!evaluate::connection(&c, yb, xb, 6, 80));
        assert_eq!(
            ask(&s, "y/b", "x/b", Some("5")).unwrap_err(),
            "unknown address family 5: 4 or 6"
        );
    }

    #[test]
    fn an_ipv6_only_pair_is_asked_in_ipv6() {
        let mut s = dual_stack();
        for pod in &mut s.pods {
            std::sync::Arc::make_mut(pod).ips.retain(IpAddr::is_ipv6);
        }
        let out = ask(&s, "y/b", "x/b", None).unwrap();
        assert!(out.contains("ALLOWED") && !out.contains("10.244."), "{out}");
        assert_eq!(ask(&s, "y/b", "x/b", Some("6")).unwrap(), out);
        assert_eq!(
            ask(&s, "y/b", "x/b", Some("4")).unwrap_err(),
            "y/b has no IPv4 address"
        );
    }

    #[test]
    fn addresses_of_either_family_are_accepted() {
        let s = dual_stack();
        let out = ask(&s, "fd00:10:244::b1", "x/b", None).unwrap();
        assert!(out.contains("ALLOWED"), "{out}");
        assert!(out.contains("ingress of x/b: allowed by x/b-from-v6-block"));
        let out = ask(&s, "10.244.0.200", "x/b", None).unwrap();
        assert!(
            out.contains("DENIED") && out.contains("x/b (10.244."),
            "{out}"
        );
        let out = ask(&s, "x/a", "2001:db8::1", Some("6")).unwrap();
        assert!(
            out.contains("(2001:db8::1)") && out.contains("ALLOWED"),
            "{out}"
        );
        assert_eq!(
            ask(&s, "x/a", "2001:db8::1", Some("4")).unwrap_err(),
            "2001:db8::1 is not an IPv4 address"
        );
        assert_eq!(
            ask(&s, "192.0.2.1", "2001:db8::1", None).unwrap_err(),
            "192.0.2.1 and 2001:db8::1 are of different families"
        );
    }
}
