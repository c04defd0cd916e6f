//! A scenario file checked through before anything is built: every name a
//! step or table uses resolves, every port name resolves on its targets,
//! every `update` replaces an applied object. Whatever is wrong here is
//! invalid input (exit status 2) and nothing touches the kernel.

mod checks;
#[cfg(test)]
mod lsm_model;
mod probes;

pub use checks::{CheckPlan, FIXTURE_ROOT, Fixture, FixtureKind, Operation, parse_mode};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use palisade::model::{Labels, NamedPort, Pod, Policy, Protocol, Snapshot, parse::ParseError};

use crate::{
    expect::Cell,
    scenario::{
        self, Embedded, HeldExpect, HoldSpec, NodeNet, PodSpec, Relabel, ScenarioFile, Step,
        invalid,
    },
};

/// A policy object as the source gets it.
#[derive(Clone, Debug)]
pub struct PolicyDoc {
    /// [`Policy::key`]: kind, namespace and name.
    pub key: String,
    pub policy: Policy,
    pub yaml: String,
}

impl PolicyDoc {
    /// The source file that holds it.
    pub fn file_name(&self) -> String {
        format!("policy-{}.yaml", self.key.replace([':', '/'], "_"))
    }
}

#[derive(Clone, Debug)]
pub struct External {
    pub name: String,
    pub ip: IpAddr,
    pub serve: Vec<NamedPort>,
}

#[derive(Clone, Debug)]
pub struct PlannedCell {
    pub from: String,
    pub to: String,
    pub expected: Cell,
    /// Where the probe connects; `None` for unchecked cells.
    pub target: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct ProbePlan {
    /// e.g. `TCP serve-80-tcp`, `UDP 81 (IPv6)`
    pub title: String,
    pub protocol: Protocol,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<PlannedCell>,
}

#[derive(Clone, Debug)]
pub enum Action {
    Apply(Vec<PolicyDoc>),
    Delete(Vec<PolicyDoc>),
    Update(Vec<PolicyDoc>),
    RelabelPod(String, Labels),
    RelabelNamespace(String, Labels),
    Probe(Vec<ProbePlan>),
    Check(Vec<CheckPlan>),
    Connect(Vec<HoldPlan>),
    Held(Vec<(String, HeldExpect)>),
    Create(Vec<NewPod>),
}

/// A pod of a `create` step.
#[derive(Clone, Debug)]
pub struct NewPod {
    pub pod: Pod,
    /// Every port it serves, named or not.
    pub serves: Vec<(u16, Protocol)>,
    /// Index in [`Scenario::nodes`].
    pub node: usize,
}

/// A connection to open and hold (`connect` step).
#[derive(Clone, Debug)]
pub struct HoldPlan {
    pub name: String,
    pub from: String,
    pub to: String,
    pub target: SocketAddr,
    pub protocol: Protocol,
}

impl Action {
    pub fn describe(&self) -> String {
        let keys = |docs: &[PolicyDoc]| {
            docs.iter()
                .map(|d| d.key.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::Apply(d) => format!("apply {}", keys(d)),
            Self::Delete(d) => format!("delete {}", keys(d)),
            Self::Update(d) => format!("update {}", keys(d)),
            Self::RelabelPod(p, _) => format!("relabel pod {p}"),
            Self::RelabelNamespace(n, _) => format!("relabel namespace {n}"),
            Self::Probe(p) => format!("probe ({} tables)", p.len()),
            Self::Check(c) => format!("check ({} operations)", c.len()),
            Self::Connect(c) => format!("connect ({} connections)", c.len()),
            Self::Create(p) => format!(
                "create {}",
                p.iter().map(|p| p.pod.key()).collect::<Vec<_>>().join(", ")
            ),
            Self::Held(h) => format!("held ({} connections)", h.len()),
        }
    }
}

pub struct Scenario {
    pub file: String,
    pub name: String,
    /// The cluster before any step (no policies).
    pub cluster: Snapshot,
    /// Every port each pod serves, named or not.
    pub serves: BTreeMap<String, Vec<(u16, Protocol)>>,
    /// The nodes; without `nodes:` the one node of the pod networks.
    pub nodes: Vec<NodeNet>,
    /// The file declares `nodes:` (Palisade's extension), so the nodes
    /// are routed over an underlay that also holds the externals.
    pub declares_nodes: bool,
    /// Pod key -> index in `nodes`, for created pods too.
    pub node_of: BTreeMap<String, usize>,
    /// Every node's pod networks.
    pub networks: Vec<IpNet>,
    pub externals: Vec<External>,
    pub actions: Vec<Action>,
    /// The fixtures of `files:`, made before the first step.
    pub fixtures: Vec<Fixture>,
    /// Item lines of the file's top-level lists, for errors.
    lines: BTreeMap<String, Vec<usize>>,
}

/// A policy written in the scenario file; `what` names the item in errors,
/// which carry the file's own line and column of the fault.
fn parse_policy(item: &Embedded, file: &str, what: &str) -> Result<PolicyDoc, ParseError> {
    let policy = item
        .parse(file)
        .map_err(|e| ParseError {
            message: format!("{what}: {}", e.message),
            ..e
        })?
        .policy();
    Ok(PolicyDoc {
        key: policy.key(),
        policy,
        yaml: item.text.clone(),
    })
}

/// Every port each pod serves: its named ports, and for a pod of `pods:`
/// its unnamed ones too.
fn served_ports(cluster: &Snapshot, specs: &[PodSpec]) -> BTreeMap<String, Vec<(u16, Protocol)>> {
    let mut serves: BTreeMap<String, Vec<(u16, Protocol)>> = cluster
        .pods
        .iter()
        .map(|p| {
            (
                p.key(),
                p.ports.iter().map(|n| (n.port, n.protocol)).collect(),
            )
        })
        .collect();
    for spec in specs {
        let list = serves.entry(spec.key()).or_default();
        for s in &spec.serve {
            if !list.contains(&(s.port, s.protocol)) {
                list.push((s.port, s.protocol));
            }
        }
    }
    serves
}

/// The externals, each outside every pod network (and the underlay, where
/// there is one) and with a name of its own.
fn externals(
    specs: &[scenario::External],
    networks: &[IpNet],
    underlay: &[IpNet],
    file: &str,
) -> Result<Vec<External>, ParseError> {
    let mut externals: Vec<External> = Vec::new();
    for e in specs {
        let mut taken = (networks.iter().map(|n| ("the pod network", n)))
            .chain(underlay.iter().map(|n| ("the underlay", n)));
        if let Some((what, net)) = taken.find(|(_, n)| n.contains(&e.ip)) {
            return Err(invalid(
                file,
                format!("external {}: {} lies inside {what} {net}", e.name, e.ip),
            ));
        }
        if e.name.contains('/') || externals.iter().any(|x| x.name == e.name) {
            return Err(invalid(
                file,
                format!("external name {:?} is not unique or contains '/'", e.name),
            ));
        }
        externals.push(External {
            name: e.name.clone(),
            ip: e.ip,
            serve: e
                .serve
                .iter()
                .map(|s| NamedPort {
                    name: s.name.clone().unwrap_or_default(),
                    port: s.port,
                    protocol: s.protocol,
                })
                .collect(),
        });
    }
    Ok(externals)
}

/// The objects of `policies:` by their `metadata.name`, each defined once.
fn named_policies(items: &[Embedded], file: &str) -> Result<Vec<(String, PolicyDoc)>, ParseError> {
    let mut policies: Vec<(String, PolicyDoc)> = Vec::new();
    for (i, value) in items.iter().enumerate() {
        let at = format!("policies[{i}]");
        let doc = parse_policy(value, file, &at)?;
        if policies.iter().any(|(_, d)| d.key == doc.key) {
            return Err(invalid(
                file,
                format!("policies[{i}]: {} is defined twice", doc.key),
            ));
        }
        policies.push((doc.policy.name.clone(), doc));
    }
    Ok(policies)
}

impl Scenario {
    pub fn load(text: &str, file: &str) -> Result<Self, ParseError> {
        let parsed = ScenarioFile::parse(text, file)?;
        let placed = parsed.placed(file)?;
        let mut cluster = placed.snapshot;
        cluster.policies.clear();
        let networks: Vec<IpNet> = placed
            .nodes
            .iter()
            .flat_map(|n| n.networks.clone())
            .collect();
        let declares_nodes = parsed.nodes.is_some();
        let underlay: Vec<IpNet> = if declares_nodes {
            [scenario::UNDERLAY4, scenario::UNDERLAY6]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect()
        } else {
            Vec::new()
        };
        let serves = served_ports(&cluster, &parsed.pods);
        let externals = externals(&parsed.externals, &networks, &underlay, file)?;
        let policies = named_policies(&parsed.policies, file)?;
        let mut scenario = Self {
            file: file.to_owned(),
            name: parsed.name.clone(),
            cluster,
            serves,
            nodes: placed.nodes,
            declares_nodes,
            node_of: placed.node_of,
            networks,
            externals,
            actions: Vec::new(),
            fixtures: Vec::new(),
            lines: parsed.item_lines.clone(),
        };
        scenario.fixtures = checks::plan_fixtures(&parsed.files, |i, m| {
            scenario.err(&format!("files[{i}]"), m)
        })?;
        scenario.plan_actions(&parsed, &policies)?;
        scenario.single_node_checks(&parsed)?;
        Ok(scenario)
    }

    /// Process and file checks run on one node only: the enforcer's BPF
    /// LSM programs and its decision events are one daemon's.
    fn single_node_checks(&self, parsed: &ScenarioFile) -> Result<(), ParseError> {
        if !self.declares_nodes {
            return Ok(());
        }
        let steps = parsed.steps.iter().flatten().enumerate();
        let at = steps
            .filter(|(_, s)| matches!(s, Step::Check(_)))
            .map(|(i, _)| format!("steps[{i}]"))
            .next()
            .or_else(|| (!parsed.checks.is_empty()).then(|| "checks[0]".to_owned()));
        match at {
            Some(at) => Err(self.err(
                &at,
                "process and file checks run on a single node: \
                 a file with `nodes:` cannot have `checks:` or `check:` steps"
                    .into(),
            )),
            None => Ok(()),
        }
    }

    /// The steps' actions, then those of the top-level probes and checks.
    fn plan_actions(
        &mut self,
        parsed: &ScenarioFile,
        policies: &[(String, PolicyDoc)],
    ) -> Result<(), ParseError> {
        let mut applied = BTreeSet::new();
        let mut held = BTreeSet::new();
        // Without `steps:`, every policy is applied first, in file order.
        let implicit_apply;
        let mut steps: Vec<(String, &Step)> = Vec::new();
        match &parsed.steps {
            Some(list) => {
                steps.extend(
                    list.iter()
                        .enumerate()
                        .map(|(i, s)| (format!("steps[{i}]"), s)),
                );
            }
            None => {
                implicit_apply = Step::Apply(policies.iter().map(|(_, d)| d.key.clone()).collect());
                steps.push(("policies".into(), &implicit_apply));
            }
        }
        // Steps see the pods created before them; the run starts without.
        let initial = self.cluster.clone();
        for (at, step) in steps {
            let action = self.plan_step(step, &at, policies, &mut applied, &mut held)?;
            self.actions.push(action);
        }
        // Top-level probes and checks run after the steps, if any.
        if !parsed.probes.is_empty() {
            let probes = self.plan_probes(&parsed.probes, "probes")?;
            self.actions.push(Action::Probe(probes));
        }
        if !parsed.checks.is_empty() {
            let checks = self.plan_checks(&parsed.checks, "checks")?;
            self.actions.push(Action::Check(checks));
        }
        self.cluster = initial;
        Ok(())
    }

    fn err(&self, at: &str, message: String) -> ParseError {
        ParseError {
            line: self.line(at),
            ..invalid(&self.file, format!("{at}: {message}"))
        }
    }

    fn line(&self, at: &str) -> usize {
        crate::scenario::line_in(&self.lines, at)
    }

    fn resolve(
        &self,
        name: &str,
        at: &str,
        policies: &[(String, PolicyDoc)],
    ) -> Result<PolicyDoc, ParseError> {
        let found: Vec<&PolicyDoc> = policies
            .iter()
            .filter(|(n, d)| {
                n == name
                    || d.policy
                        .namespace
                        .as_ref()
                        .is_some_and(|ns| format!("{ns}/{n}") == name)
                    || d.key == name
            })
            .map(|(_, d)| d)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(self.err(at, format!("no policy named {name} in `policies:`"))),
            _ => Err(self.err(
                at,
                format!("{name} names several policies: write namespace/name"),
            )),
        }
    }

    fn plan_step(
        &mut self,
        step: &Step,
        at: &str,
        policies: &[(String, PolicyDoc)],
        applied: &mut BTreeSet<String>,
        held: &mut BTreeSet<String>,
    ) -> Result<Action, ParseError> {
        Ok(match step {
            Step::Apply(names) => {
                let docs = self.resolve_all(names, at, policies)?;
                applied.extend(docs.iter().map(|d| d.key.clone()));
                Action::Apply(docs)
            }
            Step::Delete(names) => {
                let docs = self.resolve_all(names, at, policies)?;
                for d in &docs {
                    if !applied.remove(&d.key) {
                        return Err(self.err(at, format!("delete {}: it is not applied", d.key)));
                    }
                }
                Action::Delete(docs)
            }
            Step::Update(values) => {
                let mut docs = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let doc = parse_policy(v, &self.file, &format!("{at}.update[{i}]"))?;
                    if !applied.contains(&doc.key) {
                        return Err(self.err(
                            at,
                            format!(
                                "update {}: no applied object of that kind and name",
                                doc.key
                            ),
                        ));
                    }
                    docs.push(doc);
                }
                Action::Update(docs)
            }
            Step::Relabel(r) => self.plan_relabel(r, at)?,
            Step::Probe(p) => Action::Probe(self.plan_probes(p, at)?),
            Step::Create(specs) => {
                let mut pods = Vec::new();
                for spec in specs {
                    pods.push(self.plan_create(spec, at)?);
                }
                Action::Create(pods)
            }
            Step::Connect(specs) => {
                let mut plans = Vec::new();
                for spec in specs {
                    plans.push(self.plan_connect(spec, at, held)?);
                }
                Action::Connect(plans)
            }
            Step::Held(expect) => {
                for name in expect.keys() {
                    if !held.contains(name) {
                        return Err(
                            self.err(at, format!("held: no connection {name} was opened before"))
                        );
                    }
                }
                Action::Held(expect.iter().map(|(k, v)| (k.clone(), *v)).collect())
            }
            Step::Check(c) => Action::Check(self.plan_checks(c, at)?),
        })
    }

    fn resolve_all(
        &self,
        names: &[String],
        at: &str,
        policies: &[(String, PolicyDoc)],
    ) -> Result<Vec<PolicyDoc>, ParseError> {
        names
            .iter()
            .map(|n| self.resolve(n, at, policies))
            .collect()
    }

    fn plan_relabel(&self, r: &Relabel, at: &str) -> Result<Action, ParseError> {
        match (&r.pod, &r.namespace) {
            (Some(pod), None) => {
                if !self.cluster.pods.iter().any(|p| p.key() == *pod) {
                    return Err(self.err(at, format!("relabel: no pod {pod}")));
                }
                Ok(Action::RelabelPod(pod.clone(), r.labels.clone()))
            }
            (None, Some(ns)) => {
                if !self.cluster.namespaces.contains_key(ns) {
                    return Err(self.err(at, format!("relabel: no namespace {ns}")));
                }
                Ok(Action::RelabelNamespace(ns.clone(), r.labels.clone()))
            }
            _ => Err(self.err(
                at,
                "relabel names exactly one of `pod` or `namespace`".into(),
            )),
        }
    }

    /// A pod of a `create` step, added to the cluster, with the ports it
    /// serves and its node.
    fn plan_create(&mut self, spec: &PodSpec, at: &str) -> Result<NewPod, ParseError> {
        let key = spec.key();
        if !self.cluster.namespaces.contains_key(&spec.namespace) {
            return Err(self.err(at, format!("create {key}: no namespace {}", spec.namespace)));
        }
        if self.cluster.pods.iter().any(|p| p.key() == key) {
            return Err(self.err(at, format!("create {key}: the pod exists")));
        }
        let node = spec
            .node
            .as_deref()
            .map(|name| scenario::find_node(&self.nodes, self.declares_nodes, name))
            .transpose()
            .map_err(|m| self.err(at, format!("create {key}: {m}")))?
            .unwrap_or(0);
        let ips = self.new_pod_addresses(spec, &key, node, at)?;
        let pod = spec.pod(ips);
        let serves: Vec<(u16, Protocol)> =
            spec.serve.iter().map(|s| (s.port, s.protocol)).collect();
        self.serves.insert(key.clone(), serves.clone());
        self.node_of.insert(key, node);
        self.cluster.pods.push(pod.clone().into());
        Ok(NewPod { pod, serves, node })
    }

    /// The addresses a created pod pins, and in each of its node's pod
    /// networks where it pins none the first free one (never the node's).
    fn new_pod_addresses(
        &self,
        spec: &PodSpec,
        key: &str,
        node: usize,
        at: &str,
    ) -> Result<Vec<IpAddr>, ParseError> {
        let mut ips = spec.pinned_ips();
        let networks = &self.nodes[node].networks;
        if self.declares_nodes
            && let Some(ip) = ips
                .iter()
                .find(|ip| !networks.iter().any(|n| n.contains(*ip)))
        {
            return Err(self.err(
                at,
                format!(
                    "create {key}: {ip} lies outside the pod networks of its node {}",
                    self.nodes[node].name
                ),
            ));
        }
        let taken: BTreeSet<IpAddr> = self
            .cluster
            .pods
            .iter()
            .flat_map(|p| p.ips.clone())
            .collect();
        for net in networks {
            if ips.iter().any(|ip| ip.is_ipv6() == net.addr().is_ipv6()) {
                continue;
            }
            let gateway = crate::scenario::node_address(*net);
            let free = net
                .hosts()
                .find(|ip| *ip != gateway && *ip != net.network() && !taken.contains(ip))
                .ok_or_else(|| self.err(at, format!("create {key}: {net} is full")))?;
            ips.push(free);
        }
        ips.sort_by_key(IpAddr::is_ipv6);
        if let Some(ip) = ips.iter().find(|ip| taken.contains(*ip)) {
            return Err(self.err(at, format!("create {key}: {ip} is taken")));
        }
        Ok(ips)
    }

    /// A connection of a `connect` step; `held` names those opened so far.
    fn plan_connect(
        &self,
        spec: &HoldSpec,
        at: &str,
        held: &mut BTreeSet<String>,
    ) -> Result<HoldPlan, ParseError> {
        if !held.insert(spec.name.clone()) {
            return Err(self.err(at, format!("connection {} is opened twice", spec.name)));
        }
        if !self.cluster.pods.iter().any(|p| p.key() == spec.from) {
            return Err(self.err(at, format!("connect {}: no pod {}", spec.name, spec.from)));
        }
        let target = self
            .target(&spec.to, &spec.port, spec.protocol, spec.family)
            .map_err(|m| self.err(at, format!("connect {}: {m}", spec.name)))?;
        Ok(HoldPlan {
            name: spec.name.clone(),
            from: spec.from.clone(),
            to: spec.to.clone(),
            target,
            protocol: spec.protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_NODES: &str = "name: t
model: standard
nodes:
  - {name: n1, podCIDR: 10.9.1.0/24}
  - {name: n2, podCIDR: 10.9.2.0/24}
";

    #[test]
    fn created_pods_take_their_node_s_addresses() {
        let s = Scenario::load(
            &format!(
                "{TWO_NODES}steps:\n  - create: [{{namespace: x, name: d, node: n2}}, {{namespace: x, name: e}}]\n"
            ),
            "t.yaml",
        )
        .unwrap();
        let Some(Action::Create(pods)) = s.actions.first() else {
            unreachable!()
        };
        assert_eq!((pods[0].node, pods[1].node), (1, 0));
        assert_eq!(pods[0].pod.ips, ["10.9.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(pods[1].pod.ips, ["10.9.1.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.node_of["x/d"], 1);
        assert!(s.declares_nodes);

        let bad = format!("{TWO_NODES}steps:\n  - create: [{{namespace: x, name: d, node: n3}}]\n");
        let e = Scenario::load(&bad, "t.yaml").err().unwrap();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("create x/d: no node n3"), "{e}");
        let outside = format!(
            "{TWO_NODES}steps:\n  - create: [{{namespace: x, name: d, node: n2, ip: 10.9.1.50}}]\n"
        );
        let e = Scenario::load(&outside, "t.yaml").err().unwrap();
        assert!(
            e.message
                .contains("outside the pod networks of its node n2"),
            "{e}"
        );
    }

    #[test]
    fn checks_and_externals_on_the_underlay_are_refused_with_nodes() {
        let checks = format!(
            "{TWO_NODES}steps:\n  - apply: []\n  - check: [{{pod: x/a, exec: /bin/true, expect: allowed}}]\n"
        );
        let e = Scenario::load(&checks, "t.yaml").err().unwrap();
        assert_eq!(e.line, 8, "{e}");
        assert!(
            e.message
                .contains("steps[1]: process and file checks run on a single node"),
            "{e}"
        );
        let top = format!("{TWO_NODES}checks: [{{pod: x/a, exec: /bin/true, expect: allowed}}]\n");
        let e = Scenario::load(&top, "t.yaml").err().unwrap();
        assert!(
            e.message.contains("checks[0]: process and file checks"),
            "{e}"
        );
        let underlay = format!("{TWO_NODES}externals: [{{name: e, ip: 169.254.100.7}}]\n");
        let e = Scenario::load(&underlay, "t.yaml").err().unwrap();
        assert!(e.message.contains("inside the underlay"), "{e}");
        // Without `nodes:`, checks run as ever.
        let single =
            "name: t\nmodel: standard\nchecks: [{pod: x/a, exec: /bin/true, expect: allowed}]\n";
        assert!(Scenario::load(single, "t.yaml").is_ok());
    }
}
