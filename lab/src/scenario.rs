//! The cluster part of a scenario file (docs/SCENARIOS.md): namespaces,
//! pods, externals and policies, turned into a [`Snapshot`]. Steps, probes
//! and checks are accepted here and run by the lab.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::Deserialize;

use palisade::model::{
    NamedPort, Namespace, Pod, Policy, Protocol, Snapshot,
    networkpolicy::PortRef,
    parse::{Document, ParseError, item_text, parse_one},
    selector::Labels,
    standard,
    yaml::{self, At, Positions},
};

use crate::expect::Expect;

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
    /// Palisade's extension: several nodes, each with its pod networks.
    #[serde(default)]
    pub nodes: Option<Vec<NodeSpec>>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub externals: Vec<External>,
    #[serde(default)]
    pub policies: Vec<Embedded>,
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Fixtures for process and file checks, under `/srv/pal/`.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// The file line of each item of the top-level lists (`nodes`, `pods`,
    /// `policies`, `steps`, `probes`, `checks`, `files`), for errors found
    /// after parsing.
    #[serde(skip)]
    pub item_lines: BTreeMap<String, Vec<usize>>,
}

/// A policy object written inside the scenario file (`policies:` and
/// `update:` items), with its own text for the policy parser: its lines of
/// the file, so that its errors name the file's lines and columns.
#[derive(Clone, Debug)]
pub struct Embedded {
    at: Option<At>,
    value: serde_json::Value,
    pub text: String,
}

impl<'de> Deserialize<'de> for Embedded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = yaml::Spanned::<serde_json::Value>::deserialize(d)?;
        Ok(Self {
            at: At::of(spanned.referenced),
            value: spanned.value,
            text: String::new(),
        })
    }
}

impl Embedded {
    /// Takes the item's text from the file it was read from. An item that
    /// is not on lines of its own (in a flow list) is written out as JSON,
    /// whose errors then name the item's line.
    fn read_text(&mut self, file_text: &str) {
        self.text = self
            .at
            .and_then(|at| item_text(file_text, at))
            .unwrap_or_else(|| format!("{}\n", self.value));
    }

    /// The policy, with errors named by the file's lines.
    pub fn parse(&self, file: &str) -> Result<Document, ParseError> {
        parse_one(&self.text, self.line(), file, "default")
    }

    /// The file line where the item starts.
    pub fn line(&self) -> usize {
        self.at.map_or(1, |at| at.line)
    }
}

/// One step of `steps:` (a one-key map).
#[derive(Debug)]
pub enum Step {
    /// Objects of `policies:` by `name` or `namespace/name`.
    Apply(Vec<String>),
    Delete(Vec<String>),
    /// Full objects replacing applied ones of the same kind, namespace, name.
    Update(Vec<Embedded>),
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

/// One check: exactly one of `run`, `exec`, `read`, `write`, `unlink`
/// (the planner says which is missing or doubled, with the line).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub pod: String,
    #[serde(default)]
    pub run: Option<Vec<String>>,
    #[serde(default)]
    pub exec: Option<String>,
    #[serde(default)]
    pub read: Option<String>,
    #[serde(default)]
    pub write: Option<String>,
    #[serde(default)]
    pub unlink: Option<String>,
    /// An `executable: true` fixture that performs the operation.
    #[serde(default)]
    pub from: Option<String>,
    /// The uid (and gid) the operation runs as.
    #[serde(default)]
    pub user: Option<u32>,
    /// The decision event the enforcer must (or must not) report.
    #[serde(default)]
    pub event: Option<EventExpect>,
    pub expect: CheckExpect,
}

/// What the enforcer's event stream must say about a check's operation.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventExpect {
    /// No decision event for it.
    None,
    Audit,
    Block,
}

/// A fixture of `files:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Under `/srv/pal/`; a trailing `/` makes a directory.
    pub path: String,
    #[serde(default)]
    pub content: Option<String>,
    /// uid, and gid the same.
    #[serde(default)]
    pub owner: Option<u32>,
    /// Octal, as a string (`"0640"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// A copy of the runner's own check helper.
    #[serde(default)]
    pub executable: bool,
    /// Palisade's extension: a symbolic link to this path (under
    /// `/srv/pal/` too).
    #[serde(default)]
    pub link: Option<String>,
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
    /// KubeArmor's posture annotations, for instance.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A node of `nodes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    #[serde(default, rename = "podCIDR6")]
    pub pod_cidr6: Option<String>,
}

/// A node as the lab builds it: its name (the daemon's `--node-name`,
/// its pods' `spec.nodeName`) and its pod networks, IPv4 first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    pub name: String,
    pub networks: Vec<IpNet>,
}

/// The one node of a file without `nodes:`, named as the lab's node has
/// always been.
pub const DEFAULT_NODE: &str = "lab-node";

/// Where `nodes:` nodes talk to each other and to the externals (see
/// `underlay`); pod networks and externals must stay clear of them.
pub const UNDERLAY4: &str = "169.254.100.0/24";
pub const UNDERLAY6: &str = "fd77:100::/64";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// Palisade's extension: the node of `nodes:` the pod runs on (default:
    /// the first).
    #[serde(default)]
    pub node: Option<String>,
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

/// An error in the file that no single line holds (it names line 1).
pub(crate) fn invalid(file: &str, message: String) -> ParseError {
    ParseError::at_line(file, 1, message)
}

impl PodSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The addresses the file pins, IPv4 first.
    pub fn pinned_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.ip.map(IpAddr::V4).into_iter().collect();
        ips.extend(self.ip6.map(IpAddr::V6));
        ips
    }

    /// The pod this entry describes, at `ips`.
    pub fn pod(&self, ips: Vec<IpAddr>) -> Pod {
        Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone().unwrap_or_default(),
            ips,
            ports: self.named_ports(),
            cgroup: None,
            source_check: palisade::model::SourceCheck::On,
            source_prefixes: palisade::model::SourcePrefixes::None,
        }
    }

    /// The served ports that have a name: the ones a policy can name.
    pub fn named_ports(&self) -> Vec<NamedPort> {
        self.serve
            .iter()
            .filter_map(|s| {
                Some(NamedPort {
                    name: s.name.clone()?,
                    port: s.port,
                    protocol: s.protocol,
                })
            })
            .collect()
    }
}

/// A pod while the file's cluster is put together.
struct Placing {
    pod: Pod,
    /// Index in the nodes.
    node: usize,
}

/// The cluster a file describes, with the node of each pod.
pub struct Placed {
    pub snapshot: Snapshot,
    pub nodes: Vec<NodeNet>,
    /// Pod key -> index in `nodes`.
    pub node_of: BTreeMap<String, usize>,
}

/// A pod network as a field gives it, with room for pods beside the
/// node's own address.
fn parse_network(text: &str, field: &str, v6: bool) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .ok()
        .filter(|n| n.addr().is_ipv6() == v6 && n.prefix_len() < n.max_prefix_len() - 1)
        .ok_or_else(|| {
            format!(
                "{field} {text:?} is not an IPv{} CIDR with room for pods",
                if v6 { 6 } else { 4 }
            )
        })
}

/// The index of node `name`, for a pod that names it; `declared` says the
/// file has `nodes:`.
pub fn find_node(nodes: &[NodeNet], declared: bool, name: &str) -> Result<usize, String> {
    if !declared {
        return Err(format!("node {name}: the file declares no `nodes:`"));
    }
    nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| format!("no node {name} in `nodes:`"))
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A name usable as a Kubernetes node's (a DNS subdomain, kept to one
/// label's length: it also names the node's pins and cgroups).
fn valid_node_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

impl ScenarioFile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ParseError> {
        let mut parsed: Self = yaml::from_str(text).map_err(|e| {
            let e = e.with_field(text);
            ParseError::in_document(file, 1, e.at, None, e.message)
        })?;
        let positions = Positions::of(text);
        for key in [
            "nodes", "pods", "policies", "steps", "probes", "checks", "files",
        ] {
            let lines = positions.items(key).iter().map(|at| at.line).collect();
            parsed.item_lines.insert(key.to_owned(), lines);
        }
        let updates = parsed.steps.iter_mut().flatten().filter_map(|s| match s {
            Step::Update(items) => Some(items),
            _ => None,
        });
        for item in parsed.policies.iter_mut().chain(updates.flatten()) {
            item.read_text(text);
        }
        Ok(parsed)
    }

    /// The file line of `at` (`policies[2]`, `steps[3][1]`...): where its
    /// top-level item starts, or 1 when that cannot be told.
    pub fn line_of(&self, at: &str) -> usize {
        line_in(&self.item_lines, at)
    }

    /// An error at `at` (`pods[2]`...), naming its line.
    fn err(&self, file: &str, at: &str, message: String) -> ParseError {
        ParseError::at_line(file, self.line_of(at), format!("{at}: {message}"))
    }

    /// The cluster the file describes, with every policy parsed and validated.
    pub fn snapshot(&self, file: &str) -> Result<Snapshot, ParseError> {
        Ok(self.placed(file)?.snapshot)
    }

    /// [`ScenarioFile::snapshot`] with the nodes and where each pod runs.
    pub fn placed(&self, file: &str) -> Result<Placed, ParseError> {
        let nodes = self.nodes(file)?;
        let mut namespaces = BTreeMap::new();
        let mut pods = self.model(&mut namespaces, file)?;
        for (name, spec) in &self.namespaces {
            namespaces.insert(
                name.clone(),
                Namespace {
                    name: name.clone(),
                    labels: spec.labels.clone(),
                    annotations: spec.annotations.clone(),
                },
            );
        }
        for (i, spec) in self.pods.iter().enumerate() {
            self.add_pod(&mut pods, i, spec, &namespaces, &nodes, file)?;
        }
        self.assign_addresses(&mut pods, &nodes, file)?;
        Ok(Placed {
            node_of: pods.iter().map(|p| (p.pod.key(), p.node)).collect(),
            snapshot: Snapshot {
                namespaces,
                pods: pods.into_iter().map(|p| p.pod.into()).collect(),
                policies: self.policies(file)?.into_iter().map(Into::into).collect(),
            },
            nodes,
        })
    }

    /// `pods[i]`: a new pod, or for a model pod of the same name the
    /// addresses (and labels, and node) it pins.
    fn add_pod(
        &self,
        pods: &mut Vec<Placing>,
        i: usize,
        spec: &PodSpec,
        namespaces: &BTreeMap<String, Namespace>,
        nodes: &[NodeNet],
        file: &str,
    ) -> Result<(), ParseError> {
        if !namespaces.contains_key(&spec.namespace) {
            return Err(invalid(
                file,
                format!(
                    "pod {}: namespace {} is not defined",
                    spec.key(),
                    spec.namespace
                ),
            ));
        }
        let node = spec
            .node
            .as_deref()
            .map(|name| find_node(nodes, self.nodes.is_some(), name))
            .transpose()
            .map_err(|m| self.err(file, &format!("pods[{i}]"), m))?;
        let ips = spec.pinned_ips();
        match pods
            .iter_mut()
            .find(|p| p.pod.namespace == spec.namespace && p.pod.name == spec.name)
        {
            // A model pod with only addresses pins them.
            Some(placing) => {
                placing.pod.ips = ips;
                if let Some(labels) = &spec.labels {
                    placing.pod.labels = labels.clone();
                }
                if let Some(node) = node {
                    placing.node = node;
                }
            }
            None => pods.push(Placing {
                pod: spec.pod(ips),
                node: node.unwrap_or(0),
            }),
        }
        Ok(())
    }

    /// The pods of `model:` (none without it), on the first node;
    /// its namespaces go into `namespaces`.
    fn model(
        &self,
        namespaces: &mut BTreeMap<String, Namespace>,
        file: &str,
    ) -> Result<Vec<Placing>, ParseError> {
        let Some(model) = &self.model else {
            return Ok(Vec::new());
        };
        if model != "standard" {
            return Err(invalid(
                file,
                format!("unknown model {model:?}: the only model is \"standard\""),
            ));
        }
        namespaces.extend(standard::namespaces().map(|n| (n.name.clone(), n)));
        Ok(standard::pods()
            .map(|pod| Placing { pod, node: 0 })
            .collect())
    }

    /// Every object of `policies:`, parsed and validated.
    fn policies(&self, file: &str) -> Result<Vec<Policy>, ParseError> {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let doc = item.parse(file).map_err(|e| ParseError {
                    message: format!("policies[{i}]: {}", e.message),
                    ..e
                })?;
                Ok(doc.policy())
            })
            .collect()
    }

    /// The pod networks: `podCIDR` (default 10.244.0.0/16) and `podCIDR6`.
    pub fn pod_networks(&self, file: &str) -> Result<(IpNet, Option<IpNet>), ParseError> {
        let parse = |text: &str, field: &str, v6: bool| {
            parse_network(text, field, v6).map_err(|m| invalid(file, m))
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

    /// The nodes: those of `nodes:`, each with pod networks of its own that
    /// overlap no other's nor the underlay; without `nodes:`, the one node
    /// with `podCIDR` and `podCIDR6`.
    pub fn nodes(&self, file: &str) -> Result<Vec<NodeNet>, ParseError> {
        let Some(specs) = &self.nodes else {
            let (v4, v6) = self.pod_networks(file)?;
            return Ok(vec![NodeNet {
                name: DEFAULT_NODE.to_owned(),
                networks: [Some(v4), v6].into_iter().flatten().collect(),
            }]);
        };
        if self.pod_cidr.is_some() || self.pod_cidr6.is_some() {
            return Err(self.err(
                file,
                "nodes[0]",
                "with `nodes:`, each node gives its own podCIDR (and podCIDR6); \
                 drop the top-level ones"
                    .into(),
            ));
        }
        if specs.is_empty() {
            return Err(invalid(file, "`nodes:` lists no node".into()));
        }
        let underlay: [IpNet; 2] = [UNDERLAY4, UNDERLAY6].map(|n| n.parse().unwrap_or_default());
        let mut nodes: Vec<NodeNet> = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("nodes[{i}]");
            if !valid_node_name(&spec.name) {
                return Err(self.err(
                    file,
                    &at,
                    format!(
                        "node name {:?} is not 1-63 lowercase letters, digits, '-' or '.', \
                         starting and ending with a letter or digit",
                        spec.name
                    ),
                ));
            }
            if nodes.iter().any(|n| n.name == spec.name) {
                return Err(self.err(file, &at, format!("node {} is declared twice", spec.name)));
            }
            let mut networks = vec![
                parse_network(&spec.pod_cidr, "podCIDR", false)
                    .map_err(|m| self.err(file, &at, m))?,
            ];
            if let Some(v6) = &spec.pod_cidr6 {
                networks
                    .push(parse_network(v6, "podCIDR6", true).map_err(|m| self.err(file, &at, m))?);
            }
            for net in &networks {
                if let Some(u) = underlay.iter().find(|u| overlap(u, net)) {
                    return Err(self.err(
                        file,
                        &at,
                        format!(
                            "{net} overlaps the underlay {u}, where nodes have their addresses"
                        ),
                    ));
                }
                for other in &nodes {
                    if let Some(o) = other.networks.iter().find(|o| overlap(o, net)) {
                        return Err(self.err(
                            file,
                            &at,
                            format!("{net} overlaps node {}'s {o}", other.name),
                        ));
                    }
                }
            }
            nodes.push(NodeNet {
                name: spec.name.clone(),
                networks,
            });
        }
        Ok(nodes)
    }

    /// Pods without an address get one from their node's pod networks in
    /// file order. A network's last host address is its node's (the lab's
    /// bridge), never a pod's. With `nodes:`, an address a pod pins must
    /// lie in its own node's networks.
    fn assign_addresses(
        &self,
        pods: &mut [Placing],
        nodes: &[NodeNet],
        file: &str,
    ) -> Result<(), ParseError> {
        let taken: Vec<IpAddr> = pods.iter().flat_map(|p| p.pod.ips.clone()).collect();
        for net in nodes.iter().flat_map(|n| &n.networks) {
            let gateway = node_address(*net);
            if let Some(p) = pods.iter().find(|p| p.pod.ips.contains(&gateway)) {
                return Err(invalid(
                    file,
                    format!(
                        "pod {} pins {gateway}, the node's address in {net}",
                        p.pod.key()
                    ),
                ));
            }
        }
        if self.nodes.is_some() {
            for p in pods.iter() {
                let node = &nodes[p.node];
                if let Some(ip) = p
                    .pod
                    .ips
                    .iter()
                    .find(|ip| !node.networks.iter().any(|n| n.contains(*ip)))
                {
                    return Err(invalid(
                        file,
                        format!(
                            "pod {} pins {ip}, outside the pod networks of its node {}",
                            p.pod.key(),
                            node.name
                        ),
                    ));
                }
            }
        }
        for (n, node) in nodes.iter().enumerate() {
            for net in &node.networks {
                let gateway = node_address(*net);
                let v6 = net.addr().is_ipv6();
                let mut free = net
                    .hosts()
                    .filter(|ip| *ip != gateway && *ip != net.network() && !taken.contains(ip));
                let unplaced = pods
                    .iter_mut()
                    .filter(|p| p.node == n && !p.pod.ips.iter().any(|ip| ip.is_ipv6() == v6));
                for p in unplaced {
                    let ip = free.next().ok_or_else(|| {
                        invalid(
                            file,
                            format!("pod network {net} has no address left for {}", p.pod.key()),
                        )
                    })?;
                    if v6 {
                        p.pod.ips.push(ip);
                    } else {
                        p.pod.ips.insert(0, ip);
                    }
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
    fn a_policy_error_names_the_scenario_file_line_of_its_field() {
        let text = "name: t
model: standard
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: p, namespace: x}
    spec:
      podSelector: {}
      ingress:
        - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]
steps:
  - update:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: x}
        spec: {podSelector: {}, egres: []}
";
        let s = ScenarioFile::parse(text, "t.yaml").unwrap();
        let e = s.snapshot("t.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (10, 56), "{e}");
        assert!(
            e.message
                .contains("policies[0]: spec.ingress[0].from[0].ipBlock.except[0]"),
            "{e}"
        );
        let Some(Step::Update(items)) = s.steps.as_ref().and_then(|s| s.first()) else {
            unreachable!()
        };
        let e = items[0].parse("t.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (16, 33), "{e}");
        assert!(e.message.contains("unknown field `egres`"), "{e}");
    }

    #[test]
    fn the_standard_model_is_the_library_s() {
        let file = ScenarioFile::parse("name: t\nmodel: standard\n", "t.yaml").unwrap();
        let got = file.snapshot("t.yaml").unwrap();
        let want = standard::snapshot();
        assert_eq!(got.namespaces, want.namespaces);
        assert_eq!(got.pods, want.pods);
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

    #[test]
    fn nodes_place_pods_and_give_each_its_own_addresses() {
        let s = ScenarioFile::parse(
            "name: t
model: standard
nodes:
  - {name: n1, podCIDR: 10.9.1.0/24}
  - {name: n2, podCIDR: 10.9.2.0/24, podCIDR6: \"fd00:9:2::/64\"}
namespaces: {w: {}}
pods:
  - {namespace: z, name: a, node: n2}
  - {namespace: w, name: d, node: n2, ip: 10.9.2.77}
  - {namespace: w, name: e}
",
            "t.yaml",
        )
        .unwrap();
        let placed = s.placed("t.yaml").unwrap();
        assert_eq!(
            placed
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        let ips = |key: &str| {
            let pod = placed
                .snapshot
                .pods
                .iter()
                .find(|p| p.key() == key)
                .unwrap();
            pod.ips.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(
            placed.node_of["x/a"], 0,
            "model pods default to the first node"
        );
        assert_eq!(placed.node_of["w/e"], 0);
        assert_eq!(placed.node_of["z/a"], 1);
        assert_eq!(ips("x/a"), ["10.9.1.1"]);
        assert_eq!(
            ips("w/e"),
            ["10.9.1.9"],
            "after the eight model pods left on n1"
        );
        assert_eq!(ips("z/a"), ["10.9.2.1", "fd00:9:2::1"]);
        assert_eq!(ips("w/d"), ["10.9.2.77", "fd00:9:2::2"]);

        let without = ScenarioFile::parse("name: t\nmodel: standard\n", "t.yaml").unwrap();
        let one = without.placed("t.yaml").unwrap();
        assert_eq!(one.nodes.len(), 1);
        assert_eq!(one.nodes[0].name, DEFAULT_NODE);
        assert!(one.node_of.values().all(|n| *n == 0));
    }

    #[test]
    fn bad_nodes_and_placements_are_invalid_input_naming_the_line() {
        let base = "name: t
namespaces: {w: {}}
nodes:
  - {name: n1, podCIDR: 10.9.1.0/24}
  - NODE
pods:
  - POD
";
        let error = |node: &str, pod: &str| {
            let text = base.replace("NODE", node).replace("POD", pod);
            ScenarioFile::parse(&text, "t.yaml")
                .unwrap()
                .placed("t.yaml")
                .err()
                .map(|e| (e.line, e.message))
        };
        let fine = "{name: n2, podCIDR: 10.9.2.0/24}";
        assert_eq!(error(fine, "{namespace: w, name: a, node: n2}"), None);
        let (line, m) = error(fine, "{namespace: w, name: a, node: n3}").unwrap();
        assert_eq!(line, 7);
        assert!(m.contains("pods[0]: no node n3 in `nodes:`"), "{m}");
        let (line, m) = error(
            "{name: n1, podCIDR: 10.9.2.0/24}",
            "{namespace: w, name: a}",
        )
        .unwrap();
        assert_eq!(line, 5);
        assert!(m.contains("node n1 is declared twice"), "{m}");
        let (_, m) = error(
            "{name: n2, podCIDR: 10.9.0.0/16}",
            "{namespace: w, name: a}",
        )
        .unwrap();
        assert!(
            m.contains("10.9.0.0/16 overlaps node n1's 10.9.1.0/24"),
            "{m}"
        );
        let (_, m) = error(
            "{name: N_2, podCIDR: 10.9.2.0/24}",
            "{namespace: w, name: a}",
        )
        .unwrap();
        assert!(m.contains("node name \"N_2\""), "{m}");
        let (_, m) = error(
            "{name: n2, podCIDR: 169.254.0.0/16}",
            "{namespace: w, name: a}",
        )
        .unwrap();
        assert!(m.contains("overlaps the underlay"), "{m}");
        let (_, m) = error(fine, "{namespace: w, name: a, node: n2, ip: 10.9.1.5}").unwrap();
        assert!(
            m.contains("pod w/a pins 10.9.1.5, outside the pod networks of its node n2"),
            "{m}"
        );
        let (_, m) = error(fine, "{namespace: w, name: a, node: n2, ip: 10.9.1.254}").unwrap();
        assert!(m.contains("the node's address"), "{m}");

        let top = "name: t\npodCIDR: 10.0.0.0/16\nnodes: [{name: n1, podCIDR: 10.9.1.0/24}]\n";
        let e = ScenarioFile::parse(top, "t.yaml")
            .unwrap()
            .placed("t.yaml")
            .err()
            .unwrap();
        assert!(e.message.contains("each node gives its own podCIDR"), "{e}");
        let none = "name: t\nnamespaces: {w: {}}\npods: [{namespace: w, name: a, node: n1}]\n";
        let e = ScenarioFile::parse(none, "t.yaml")
            .unwrap()
            .placed("t.yaml")
            .err()
            .unwrap();
        assert!(
            e.message.contains("node n1: the file declares no `nodes:`"),
            "{e}"
        );
    }
}
