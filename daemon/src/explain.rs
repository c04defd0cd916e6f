//! `palisade explain`: why a flow would be allowed or denied, read from the
//! policies themselves (not from compiled state), rule by rule. A test
//! checks it against the compiler's output, so the two keep each other
//! honest.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use crate::model::{
    NetworkPolicy, Pod, Protocol, Snapshot,
    networkpolicy::{Peer, PolicyPort, PortRef},
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
    /// No policy selects the pod for this direction: allowed.
    NotSelected,
    /// The first rule (of the policies selecting the pod, in order) that allows it.
    Allowed { policy: String, rule: usize },
    /// Policies select the pod for this direction, and none of their rules allows it.
    Denied { selected_by: Vec<String> },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Self::Denied { .. })
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

fn name(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name
    )
}

/// Whether a rule's peer list (empty: anyone) names `other`, for a policy in `ns`.
fn peers_match(s: &Snapshot, ns: &str, peers: &[Peer], other: Target<'_>) -> bool {
    peers.is_empty()
        || peers.iter().any(|peer| match (&peer.ip_block, other) {
            // ipBlocks match pod addresses as well as outside ones.
            (Some(block), _) => {
                let addrs: Vec<IpAddr> = match other {
                    Target::Pod(p) => p.ips.clone(),
                    Target::Address(a) => vec![a],
                };
                addrs.iter().any(|addr| {
                    let inside = |c: &str| c.parse::<IpNet>().is_ok_and(|n| n.contains(addr));
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
                    None => pod.namespace == ns,
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
    let dest = if egress { other } else { me };
    let mut selected_by = Vec::new();
    for p in &s.policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let (ingress_type, egress_type) = p.policy_types();
        let applies = if egress { egress_type } else { ingress_type };
        if ns != pod.namespace || !applies || !p.spec.pod_selector.matches(&pod.labels) {
            continue;
        }
        selected_by.push(name(p));
        for (i, (peers, ports)) in p.rules(egress).into_iter().enumerate() {
            if peers_match(s, ns, peers, other) && ports_match(ports, dest, protocol, port) {
                return Side::Allowed {
                    policy: name(p),
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

/// Human-readable lines for the CLI.
pub fn render(
    e: &Explanation,
    from: Target<'_>,
    to: Target<'_>,
    protocol: Protocol,
    port: u16,
) -> String {
    let side = |dir: &str, who: Target<'_>, side: &Side| match side {
        Side::NotAPod => format!("{dir} of {who}: not a pod, nothing enforced"),
        Side::NotSelected => format!("{dir} of {who}: allowed, no policy selects it for {dir}"),
        Side::Allowed { policy, rule } => {
            format!("{dir} of {who}: allowed by {policy}, {dir} rule {rule}")
        }
        Side::Denied { selected_by } => format!(
            "{dir} of {who}: denied, selected by {} and no rule allows it",
            selected_by.join(", ")
        ),
    };
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
