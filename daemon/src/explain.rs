//! `palisade explain`: why a flow would be allowed or denied, read from the
//! policies themselves (not from compiled state), rule by rule. A test
//! checks it against the compiler's output, so the two keep each other
//! honest.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use crate::model::{
    Pod, Policy, Protocol, Snapshot,
    networkpolicy::{Peer, PolicyPort, PortRef},
    palisade::Action,
    policy::{Rule, Tier},
};

/// One end of a flow.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Pod(&'a Pod),
    /// An address outside the pods.
    Address(IpAddr),
}

impl Target<'_> {
    fn address(&self) -> Option<IpAddr> {
        match self {
            Self::Pod(p) => p.ips.first().copied(),
            Self::Address(a) => Some(*a),
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(p) => f.write_str(&p.key()),
            Self::Address(a) => write!(f, "{a}"),
        }
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
        || peers.iter().any(|peer| match (&peer.ip_block, other) {
            // ipBlocks match pod addresses as well as outside ones.
            (Some(block), _) => {
                // The flow's own address: a dual-stack pod's other
                // address is another flow.
                other.address().is_some_and(|addr| {
                    let inside = |c: &str| c.parse::<IpNet>().is_ok_and(|n| n.contains(&addr));
                    inside(&block.cidr) && !block.except.iter().any(|e| inside(e))
                })
            }
            (None, Target::Address(_)) => false,
            (None, Target::Pod(pod)) => {
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
                    Some(PortRef::Name(name)) => match dest {
                        Target::Pod(d) => d.ports.iter().any(|np| {
                            &np.name == name && np.protocol == protocol && np.port == port
                        }),
                        Target::Address(_) => false,
                    },
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
    let Target::Pod(pod) = me else {
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

/// `explain` from text arguments, as the CLI and the daemon's `/explain`
/// take them: `from`/`to` are `namespace/pod` or an address, `port` a
/// number or a port name on the destination pod.
pub fn explain_text(
    s: &Snapshot,
    from: &str,
    to: &str,
    port: &str,
    protocol: &str,
) -> Result<String, String> {
    let target = |spec: &str| -> Result<Target<'_>, String> {
        if let Ok(ip) = spec.parse::<IpAddr>() {
            return Ok(Target::Address(ip));
        }
        s.pods
            .iter()
            .find(|p| p.key() == spec)
            .map(Target::Pod)
            .ok_or_else(|| format!("no pod {spec} (use namespace/pod or an address)"))
    };
    let (from, to) = (target(from)?, target(to)?);
    let protocol = match protocol.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("unknown protocol {other}: TCP, UDP or SCTP")),
    };
    let port = match port.parse::<u16>() {
        Ok(n) => n,
        Err(_) => match to {
            Target::Pod(pod) => pod
                .ports
                .iter()
                .find(|p| p.name == port && p.protocol == protocol)
                .map(|p| p.port)
                .ok_or_else(|| format!("{} has no {protocol} port named {port}", pod.key()))?,
            Target::Address(_) => return Err("a named port needs a pod as destination".into()),
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
        model::scenario::ScenarioFile,
    };

    const POLICIES: &str = "
name: explain-agrees-with-the-compiler
model: standard
externals: [{name: ext1, ip: 192.0.2.10}]
policies:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a-from-y-b, namespace: x}
  spec:
    podSelector: {matchLabels: {pod: a}}
    ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}, {protocol: UDP, port: 81}]}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: b-egress, namespace: x}
  spec:
    podSelector: {matchLabels: {pod: b}}
    egress:
    - to: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]
    - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
      ports: [{port: 80, endPort: 81}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: c-by-address, namespace: x}
  spec:
    podSelector: {matchLabels: {pod: c}}
    ingress:
    - from: [{ipBlock: {cidr: 10.244.0.0/28, except: [10.244.0.4/30]}}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: z-deny-all, namespace: z}
  spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";

    #[test]
    fn explain_and_the_compiled_datapath_agree_on_every_flow() {
        let scenario = ScenarioFile::parse(POLICIES, "t.yaml").unwrap();
        let s = scenario.snapshot("t.yaml").unwrap();
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
        let s = ScenarioFile::parse(POLICIES, "t.yaml")
            .unwrap()
            .snapshot("t.yaml")
            .unwrap();
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
}
