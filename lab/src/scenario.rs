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
    /// The file line of each item of the top-level lists (`policies`,
    /// `steps`, `probes`, `checks`, `files`), for errors found after parsing.
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

/// A pod of `pods:`: a new pod, or for a model pod of the same name the
/// addresses (and labels) it pins.
fn add_pod(
    pods: &mut Vec<(Pod, bool)>,
    spec: &PodSpec,
    namespaces: &BTreeMap<String, Namespace>,
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
    let ips = spec.pinned_ips();
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
                ports: spec.named_ports(),
                cgroup: None,
            },
            false,
        )),
    }
    Ok(())
}

impl ScenarioFile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ParseError> {
        let mut parsed: Self = yaml::from_str(text).map_err(|e| {
            let e = e.with_field(text);
            ParseError::in_document(file, 1, e.at, None, e.message)
        })?;
        let positions = Positions::of(text);
        for key in ["policies", "steps", "probes", "checks", "files"] {
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

    /// The cluster the file describes, with every policy parsed and validated.
    pub fn snapshot(&self, file: &str) -> Result<Snapshot, ParseError> {
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
        for spec in &self.pods {
            add_pod(&mut pods, spec, &namespaces, file)?;
        }
        self.assign_addresses(&mut pods, file)?;
        Ok(Snapshot {
            namespaces,
            pods: pods.into_iter().map(|(p, _)| p).collect(),
            policies: self.policies(file)?,
        })
    }

    /// The pods of `model:` (none without it), none of them pinned yet;
    /// its namespaces go into `namespaces`.
    fn model(
        &self,
        namespaces: &mut BTreeMap<String, Namespace>,
        file: &str,
    ) -> Result<Vec<(Pod, bool)>, ParseError> {
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
        Ok(standard::pods().map(|p| (p, false)).collect())
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
            text.parse::<IpNet>()
                .ok()
                .filter(|n| n.addr().is_ipv6() == v6 && n.prefix_len() < n.max_prefix_len() - 1)
                .ok_or_else(|| {
                    invalid(
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
                return Err(invalid(
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
                    invalid(
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
}
