//! The cluster part of a scenario file (shared/SCENARIOS.md): namespaces,
//! pods, externals and policies, turned into a [`Snapshot`]. Steps, probes
//! and checks are accepted here and run by the lab.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    NamedPort, Namespace, Pod, Protocol, Snapshot, expect::Expect, networkpolicy::PortRef,
    parse::ParseError, selector::Labels,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDR6")]
    pub pod_cidr6: Option<String>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub externals: Vec<External>,
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// The file line of each item of the top-level lists (`policies`,
    /// `steps`, `probes`, `checks`), for errors found after parsing.
    #[serde(skip)]
    pub item_lines: BTreeMap<String, Vec<usize>>,
}

/// One step of `steps:` (a one-key map).
#[derive(Debug)]
pub enum Step {
    /// Objects of `policies:` by `name` or `namespace/name`.
    Apply(Vec<String>),
    Delete(Vec<String>),
    /// Full objects replacing applied ones of the same kind, namespace, name.
    Update(Vec<serde_yaml::Value>),
    Relabel(Relabel),
    Probe(Vec<ProbeSpec>),
    Check(Vec<CheckSpec>),
    /// Palisade's extension: pods that arrive during the scenario (the CNI
    /// makes their veth, then the source learns of them).
    Create(Vec<PodSpec>),
    /// Palisade's extension: open connections and keep them across steps.
    Connect(Vec<HoldSpec>),
    /// Palisade's extension: whether held connections still carry data.
    Held(BTreeMap<String, HeldExpect>),
}

const STEP_KINDS: &[&str] = &[
    "apply", "delete", "update", "relabel", "probe", "check", "create", "connect", "held",
];

/// A connection opened by a `connect` step and held by the runner.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSpec {
    pub name: String,
    pub from: String,
    pub to: String,
    pub port: PortRef,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default = "four")]
    pub family: u8,
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HeldExpect {
    /// A request on it still gets its reply.
    Open,
    /// It carries nothing any more (the enforcer cut it).
    Cut,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Step;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a map with one key of {}", STEP_KINDS.join(", "))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let step = match key.as_str() {
                    "apply" => Step::Apply(map.next_value()?),
                    "delete" => Step::Delete(map.next_value()?),
                    "update" => Step::Update(map.next_value()?),
                    "relabel" => Step::Relabel(map.next_value()?),
                    "probe" => Step::Probe(map.next_value()?),
                    "check" => Step::Check(map.next_value()?),
                    "create" => Step::Create(map.next_value()?),
                    "connect" => Step::Connect(map.next_value()?),
                    "held" => Step::Held(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, STEP_KINDS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a step has one key; {key} is followed by {extra}"
                    )));
                }
                Ok(step)
            }
        }
        d.deserialize_map(V)
    }
}

/// The complete new label set of one pod (`ns/name`) or namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// A number, or a port name resolved on each target.
    pub port: PortRef,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// 4 or 6 (`podCIDR6` / `ip6` addresses).
    #[serde(default = "four")]
    pub family: u8,
    pub expect: Expect,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

fn four() -> u8 {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub pod: String,
    pub run: Vec<String>,
    pub expect: CheckExpect,
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckExpect {
    Allowed,
    Denied,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Option<Labels>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub serve: Vec<Serve>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    pub name: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub serve: Vec<Serve>,
}

/// The standard model's pods serve 80 and 81 on every protocol.
fn standard_ports() -> Vec<NamedPort> {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for (protocol, name) in [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Sctp, "sctp"),
        ] {
            ports.push(NamedPort {
                name: format!("serve-{port}-{name}"),
                port,
                protocol,
            });
        }
    }
    ports
}

fn error(file: &str, message: String) -> ParseError {
    ParseError {
        file: file.to_owned(),
        line: 1,
        object: None,
        message,
    }
}

impl ScenarioFile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ParseError> {
        let mut parsed: Self = serde_yaml::from_str(text).map_err(|e| ParseError {
            file: file.to_owned(),
            line: e.location().map_or(1, |l| l.line()),
            object: None,
            message: e.to_string(),
        })?;
        for key in ["policies", "steps", "probes", "checks"] {
            parsed
                .item_lines
                .insert(key.to_owned(), item_lines(text, key));
        }
        Ok(parsed)
    }

    /// The file line of `at` (`policies[2]`, `steps[3][1]`...): where its
    /// top-level item starts, or 1 when that cannot be told.
    pub fn line_of(&self, at: &str) -> usize {
        line_in(&self.item_lines, at)
    }

    /// The cluster the file describes, with every policy parsed and validated.
    pub fn snapshot(&self, file: &str) -> Result<Snapshot, ParseError> {
        let mut s = Snapshot::default();
        let mut pods: Vec<(Pod, bool)> = Vec::new();
        if let Some(model) = &self.model {
            if model != "standard" {
                return Err(error(
                    file,
                    format!("unknown model {model:?}: the only model is \"standard\""),
                ));
            }
            for ns in ["x", "y", "z"] {
                s.namespaces.insert(
                    ns.to_owned(),
                    Namespace {
                        name: ns.to_owned(),
                        labels: [("ns".to_owned(), ns.to_owned())].into(),
                    },
                );
                for pod in ["a", "b", "c"] {
                    pods.push((
                        Pod {
                            namespace: ns.to_owned(),
                            name: pod.to_owned(),
                            labels: [("pod".to_owned(), pod.to_owned())].into(),
                            ips: Vec::new(),
                            ports: standard_ports(),
                        },
                        false,
                    ));
                }
            }
        }
        for (name, spec) in &self.namespaces {
            s.namespaces.insert(
                name.clone(),
                Namespace {
                    name: name.clone(),
                    labels: spec.labels.clone(),
                },
            );
        }
        for spec in &self.pods {
            if !s.namespaces.contains_key(&spec.namespace) {
                return Err(error(
                    file,
                    format!(
                        "pod {}/{}: namespace {} is not defined",
                        spec.namespace, spec.name, spec.namespace
                    ),
                ));
            }
            let ports = spec
                .serve
                .iter()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.clone()?,
                        port: p.port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            let mut ips: Vec<IpAddr> = spec.ip.map(IpAddr::V4).into_iter().collect();
            ips.extend(spec.ip6.map(IpAddr::V6));
            match pods
                .iter_mut()
                .find(|(p, _)| p.namespace == spec.namespace && p.name == spec.name)
            {
                // A model pod with only addresses pins them.
                Some((pod, pinned)) => {
                    pod.ips = ips;
                    *pinned = true;
                    if let Some(labels) = &spec.labels {
                        pod.labels = labels.clone();
                    }
                }
                None => pods.push((
                    Pod {
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        labels: spec.labels.clone().unwrap_or_default(),
                        ips,
                        ports,
                    },
                    false,
                )),
            }
        }
        self.assign_addresses(&mut pods, file)?;
        s.pods = pods.into_iter().map(|(p, _)| p).collect();
        for (i, value) in self.policies.iter().enumerate() {
            let text = serde_yaml::to_string(value).map_err(|e| error(file, e.to_string()))?;
            for doc in super::parse::parse_documents(&text, file, "default") {
                let doc = doc.map_err(|e| ParseError {
                    line: self.line_of(&format!("policies[{i}]")),
                    message: format!("policies[{i}]: {}", e.message),
                    ..e
                })?;
                s.policies.push(doc.policy());
            }
        }
        Ok(s)
    }

    /// The pod networks: `podCIDR` (default 10.244.0.0/16) and `podCIDR6`.
    pub fn pod_networks(&self, file: &str) -> Result<(IpNet, Option<IpNet>), ParseError> {
        let parse = |text: &str, field: &str, v6: bool| {
            text.parse::<IpNet>()
                .ok()
                .filter(|n| n.addr().is_ipv6() == v6 && n.prefix_len() < n.max_prefix_len() - 1)
                .ok_or_else(|| {
                    error(
                        file,
                        format!(
                            "{field} {text:?} is not an IPv{} CIDR with room for pods",
                            if v6 { 6 } else { 4 }
                        ),
                    )
                })
        };
        let v4 = parse(
            self.pod_cidr.as_deref().unwrap_or("10.244.0.0/16"),
            "podCIDR",
            false,
        )?;
        let v6 = self
            .pod_cidr6
            .as_deref()
            .map(|t| parse(t, "podCIDR6", true))
            .transpose()?;
        Ok((v4, v6))
    }

    /// Pods without an address get one from the pod CIDR (and from
    /// `podCIDR6` when set) in file order. The network's last host address
    /// is the node's (the lab's bridge), never a pod's.
    fn assign_addresses(&self, pods: &mut [(Pod, bool)], file: &str) -> Result<(), ParseError> {
        let (v4, v6) = self.pod_networks(file)?;
        let taken: Vec<IpAddr> = pods.iter().flat_map(|(p, _)| p.ips.clone()).collect();
        for net in [Some(v4), v6].into_iter().flatten() {
            let gateway = node_address(net);
            if let Some((pod, _)) = pods.iter().find(|(p, _)| p.ips.contains(&gateway)) {
                return Err(error(
                    file,
                    format!(
                        "pod {} pins {gateway}, the node's address in {net}",
                        pod.key()
                    ),
                ));
            }
            let v6 = net.addr().is_ipv6();
            let mut free = net
                .hosts()
                .filter(|ip| *ip != gateway && *ip != net.network() && !taken.contains(ip));
            for (pod, _) in pods
                .iter_mut()
                .filter(|(p, _)| !p.ips.iter().any(|ip| ip.is_ipv6() == v6))
            {
                let ip = free.next().ok_or_else(|| {
                    error(
                        file,
                        format!("pod network {net} has no address left for {}", pod.key()),
                    )
                })?;
                if v6 {
                    pod.ips.push(ip);
                } else {
                    pod.ips.insert(0, ip);
                }
            }
        }
        Ok(())
    }
}

/// The file line of `at` (`steps[3][1]`...) in `item_lines` (as
/// `ScenarioFile::item_lines` holds them), or 1.
pub fn line_in(item_lines: &BTreeMap<String, Vec<usize>>, at: &str) -> usize {
    let Some((key, rest)) = at.split_once('[') else {
        return 1;
    };
    rest.split(']')
        .next()
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| item_lines.get(key)?.get(i).copied())
        .unwrap_or(1)
}

/// The 1-based line where each item of the top-level block list `key`
/// starts (a flow list `key: [...]` gives its own line for every item).
fn item_lines(text: &str, key: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| {
        l.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    }) else {
        return Vec::new();
    };
    let rest = lines[start].split_once(':').map_or("", |(_, r)| r).trim();
    if rest.starts_with('[') {
        return vec![start + 1; rest.matches("{").count().max(1)];
    }
    let mut items = Vec::new();
    let mut indent = None;
    for (n, line) in lines.iter().enumerate().skip(start + 1) {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let at = line.len() - body.len();
        if at == 0 && !body.starts_with('-') {
            break;
        }
        if body.starts_with("- ") || body == "-" {
            match indent {
                None => {
                    indent = Some(at);
                    items.push(n + 1);
                }
                Some(i) if i == at => items.push(n + 1),
                _ => {}
            }
        }
    }
    items
}

/// The node's own address in a pod network: its last host address.
pub fn node_address(net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.broadcast()) - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_probes_and_checks_parse_and_unknown_keys_name_their_line() {
        let text = "name: t
model: standard
steps:
  - apply: [deny-all]
  - relabel: {pod: x/a, labels: {pod: a, role: web}}
  - probe:
      - port: serve-80-tcp
        expect: {all: \".\"}
  - check:
      - {pod: x/a, run: [/bin/true], expect: allowed}
";
        let s = ScenarioFile::parse(text, "t.yaml").unwrap();
        let steps = s.steps.as_ref().unwrap();
        assert!(matches!(&steps[0], Step::Apply(n) if n == &["deny-all"]));
        assert!(matches!(&steps[1], Step::Relabel(r) if r.pod.as_deref() == Some("x/a")));
        assert!(
            matches!(&steps[2], Step::Probe(p) if p[0].protocol == Protocol::Tcp && p[0].family == 4)
        );
        let bad = text.replace("  - check:", "  - chek:");
        let e = ScenarioFile::parse(&bad, "t.yaml").unwrap_err();
        assert!(e.message.contains("chek"), "{e}");
        assert_eq!(e.line, 9, "{e}");
        assert_eq!(s.line_of("steps[2][0]"), 6);
        assert_eq!(s.line_of("steps[3]"), 9);
        let bad = text.replace("port: serve", "prot: serve");
        let e = ScenarioFile::parse(&bad, "t.yaml").unwrap_err();
        assert!(e.message.contains("prot"), "{e}");
    }

    #[test]
    fn addresses_skip_the_node_address_and_ipv6_is_assigned_when_asked() {
        let s = ScenarioFile::parse(
            "name: t\npodCIDR: 10.9.0.0/30\npodCIDR6: fd00:9::/126\nnamespaces: {x: {}}\npods: [{namespace: x, name: a}]\n",
            "t.yaml",
        )
        .unwrap();
        let snap = s.snapshot("t.yaml").unwrap();
        assert_eq!(
            snap.pods[0].ips,
            [
                "10.9.0.1".parse::<IpAddr>().unwrap(),
                "fd00:9::1".parse().unwrap()
            ]
        );
        assert_eq!(
            node_address("10.9.0.0/30".parse().unwrap()).to_string(),
            "10.9.0.2"
        );
        let full = ScenarioFile::parse(
            "name: t\npodCIDR: 10.9.0.0/30\nnamespaces: {x: {}}\npods: [{namespace: x, name: a}, {namespace: x, name: b}]\n",
            "t.yaml",
        )
        .unwrap();
        let e = full.snapshot("t.yaml").unwrap_err();
        assert!(e.message.contains("no address left for x/b"), "{e}");
        let pinned = ScenarioFile::parse(
            "name: t\nnamespaces: {x: {}}\npods: [{namespace: x, name: a, ip: 10.244.255.254}]\n",
            "t.yaml",
        )
        .unwrap();
        assert!(
            pinned
                .snapshot("t.yaml")
                .unwrap_err()
                .message
                .contains("node's address")
        );
    }
}
