//! A scenario file checked through before anything is built: every name a
//! step or table uses resolves, every port name resolves on its targets,
//! every `update` replaces an applied object. Whatever is wrong here is
//! invalid input (exit status 2) and nothing touches the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::model::{
    Labels, NamedPort, Pod, Policy, Protocol, Snapshot,
    expect::{Cell, Expect},
    networkpolicy::PortRef,
    parse::{ParseError, parse_documents},
    scenario::{CheckExpect, CheckSpec, HeldExpect, ProbeSpec, ScenarioFile, Step},
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
pub struct CheckPlan {
    pub pod: String,
    pub run: Vec<String>,
    pub expect: CheckExpect,
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
    /// New pods with the ports they serve.
    Create(Vec<(Pod, Vec<(u16, Protocol)>)>),
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
            Self::Check(c) => format!("check ({} commands)", c.len()),
            Self::Connect(c) => format!("connect ({} connections)", c.len()),
            Self::Create(p) => format!(
                "create {}",
                p.iter()
                    .map(|(p, _)| p.key())
                    .collect::<Vec<_>>()
                    .join(", ")
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
    pub networks: Vec<IpNet>,
    pub externals: Vec<External>,
    pub actions: Vec<Action>,
    /// Item lines of the file's top-level lists, for errors.
    lines: BTreeMap<String, Vec<usize>>,
}

fn invalid(file: &str, message: String) -> ParseError {
    ParseError {
        file: file.to_owned(),
        line: 1,
        object: None,
        message,
    }
}

fn parse_policy(
    value: &serde_yaml::Value,
    file: &str,
    line: usize,
    what: &str,
) -> Result<PolicyDoc, ParseError> {
    let at = |message: String| ParseError {
        file: file.to_owned(),
        line,
        object: None,
        message: format!("{what}: {message}"),
    };
    let yaml = serde_yaml::to_string(value).map_err(|e| at(e.to_string()))?;
    let mut docs = parse_documents(&yaml, file, "default");
    if docs.len() != 1 {
        return Err(at("one object expected".into()));
    }
    let policy = docs
        .remove(0)
        .map_err(|e| ParseError {
            object: e.object.clone(),
            ..at(e.message)
        })?
        .policy();
    Ok(PolicyDoc {
        key: policy.key(),
        policy,
        yaml,
    })
}

impl Scenario {
    pub fn load(text: &str, file: &str) -> Result<Self, ParseError> {
        let parsed = ScenarioFile::parse(text, file)?;
        let mut cluster = parsed.snapshot(file)?;
        cluster.policies.clear();
        let (v4, v6) = parsed.pod_networks(file)?;
        let networks: Vec<IpNet> = [Some(v4), v6].into_iter().flatten().collect();

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
        for spec in &parsed.pods {
            let list = serves
                .entry(format!("{}/{}", spec.namespace, spec.name))
                .or_default();
            for s in &spec.serve {
                if !list.contains(&(s.port, s.protocol)) {
                    list.push((s.port, s.protocol));
                }
            }
        }

        let mut externals = Vec::new();
        for e in &parsed.externals {
            if let Some(net) = networks.iter().find(|n| n.contains(&e.ip)) {
                return Err(invalid(
                    file,
                    format!(
                        "external {}: {} lies inside the pod network {net}",
                        e.name, e.ip
                    ),
                ));
            }
            if e.name.contains('/') || externals.iter().any(|x: &External| x.name == e.name) {
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

        let mut policies: Vec<(String, PolicyDoc)> = Vec::new();
        for (i, value) in parsed.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            let doc = parse_policy(value, file, parsed.line_of(&at), &at)?;
            if policies.iter().any(|(_, d)| d.key == doc.key) {
                return Err(invalid(
                    file,
                    format!("policies[{i}]: {} is defined twice", doc.key),
                ));
            }
            policies.push((doc.policy.name.clone(), doc));
        }

        let mut scenario = Self {
            file: file.to_owned(),
            name: parsed.name.clone(),
            cluster,
            serves,
            networks,
            externals,
            actions: Vec::new(),
            lines: parsed.item_lines.clone(),
        };
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
        let initial = scenario.cluster.clone();
        for (at, step) in steps {
            let action = scenario.plan_step(step, &at, &policies, &mut applied, &mut held)?;
            scenario.actions.push(action);
        }
        // Top-level probes and checks run after the steps, if any.
        if !parsed.probes.is_empty() {
            let probes = scenario.plan_probes(&parsed.probes, "probes")?;
            scenario.actions.push(Action::Probe(probes));
        }
        if !parsed.checks.is_empty() {
            let checks = scenario.plan_checks(&parsed.checks, "checks")?;
            scenario.actions.push(Action::Check(checks));
        }
        scenario.cluster = initial;
        Ok(scenario)
    }

    fn err(&self, at: &str, message: String) -> ParseError {
        ParseError {
            line: self.line(at),
            ..invalid(&self.file, format!("{at}: {message}"))
        }
    }

    fn line(&self, at: &str) -> usize {
        crate::model::scenario::line_in(&self.lines, at)
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
                let docs = names
                    .iter()
                    .map(|n| self.resolve(n, at, policies))
                    .collect::<Result<Vec<_>, _>>()?;
                applied.extend(docs.iter().map(|d| d.key.clone()));
                Action::Apply(docs)
            }
            Step::Delete(names) => {
                let docs = names
                    .iter()
                    .map(|n| self.resolve(n, at, policies))
                    .collect::<Result<Vec<_>, _>>()?;
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
                    let doc =
                        parse_policy(v, &self.file, self.line(at), &format!("{at}.update[{i}]"))?;
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
            Step::Relabel(r) => match (&r.pod, &r.namespace) {
                (Some(pod), None) => {
                    if !self.cluster.pods.iter().any(|p| p.key() == *pod) {
                        return Err(self.err(at, format!("relabel: no pod {pod}")));
                    }
                    Action::RelabelPod(pod.clone(), r.labels.clone())
                }
                (None, Some(ns)) => {
                    if !self.cluster.namespaces.contains_key(ns) {
                        return Err(self.err(at, format!("relabel: no namespace {ns}")));
                    }
                    Action::RelabelNamespace(ns.clone(), r.labels.clone())
                }
                _ => {
                    return Err(self.err(
                        at,
                        "relabel names exactly one of `pod` or `namespace`".into(),
                    ));
                }
            },
            Step::Probe(p) => Action::Probe(self.plan_probes(p, at)?),
            Step::Create(specs) => {
                let mut pods = Vec::new();
                for spec in specs {
                    let key = format!("{}/{}", spec.namespace, spec.name);
                    if !self.cluster.namespaces.contains_key(&spec.namespace) {
                        return Err(
                            self.err(at, format!("create {key}: no namespace {}", spec.namespace))
                        );
                    }
                    if self.cluster.pods.iter().any(|p| p.key() == key) {
                        return Err(self.err(at, format!("create {key}: the pod exists")));
                    }
                    let mut ips: Vec<IpAddr> = spec.ip.map(IpAddr::V4).into_iter().collect();
                    ips.extend(spec.ip6.map(IpAddr::V6));
                    let taken: BTreeSet<IpAddr> = self
                        .cluster
                        .pods
                        .iter()
                        .flat_map(|p| p.ips.clone())
                        .collect();
                    for net in &self.networks {
                        if ips.iter().any(|ip| ip.is_ipv6() == net.addr().is_ipv6()) {
                            continue;
                        }
                        let node = crate::model::scenario::node_address(*net);
                        let free = net
                            .hosts()
                            .find(|ip| *ip != node && *ip != net.network() && !taken.contains(ip))
                            .ok_or_else(|| self.err(at, format!("create {key}: {net} is full")))?;
                        ips.push(free);
                    }
                    ips.sort_by_key(IpAddr::is_ipv6);
                    if let Some(ip) = ips.iter().find(|ip| taken.contains(*ip)) {
                        return Err(self.err(at, format!("create {key}: {ip} is taken")));
                    }
                    let pod = Pod {
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        labels: spec.labels.clone().unwrap_or_default(),
                        ips,
                        ports: spec
                            .serve
                            .iter()
                            .filter_map(|s| {
                                Some(NamedPort {
                                    name: s.name.clone()?,
                                    port: s.port,
                                    protocol: s.protocol,
                                })
                            })
                            .collect(),
                    };
                    let serves: Vec<(u16, Protocol)> =
                        spec.serve.iter().map(|s| (s.port, s.protocol)).collect();
                    self.serves.insert(key, serves.clone());
                    self.cluster.pods.push(pod.clone());
                    pods.push((pod, serves));
                }
                Action::Create(pods)
            }
            Step::Connect(specs) => {
                let mut plans = Vec::new();
                for spec in specs {
                    if !held.insert(spec.name.clone()) {
                        return Err(
                            self.err(at, format!("connection {} is opened twice", spec.name))
                        );
                    }
                    if !self.cluster.pods.iter().any(|p| p.key() == spec.from) {
                        return Err(
                            self.err(at, format!("connect {}: no pod {}", spec.name, spec.from))
                        );
                    }
                    let target = self
                        .target(&spec.to, &spec.port, spec.protocol, spec.family)
                        .map_err(|m| self.err(at, format!("connect {}: {m}", spec.name)))?;
                    plans.push(HoldPlan {
                        name: spec.name.clone(),
                        from: spec.from.clone(),
                        to: spec.to.clone(),
                        target,
                        protocol: spec.protocol,
                    });
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

    fn serves_name(&self, target: &str, name: &str) -> bool {
        match self.cluster.pods.iter().find(|p| p.key() == target) {
            Some(p) => p.ports.iter().any(|n| n.name == name),
            None => self
                .externals
                .iter()
                .any(|e| e.name == target && e.serve.iter().any(|n| n.name == name)),
        }
    }

    /// The address and port a probe reaches `target` at.
    fn target(
        &self,
        target: &str,
        port: &PortRef,
        protocol: Protocol,
        family: u8,
    ) -> Result<SocketAddr, String> {
        let v6 = family == 6;
        let (ips, named): (Vec<IpAddr>, Vec<NamedPort>) =
            match self.cluster.pods.iter().find(|p| p.key() == target) {
                Some(p) => (p.ips.clone(), p.ports.clone()),
                None => {
                    let e = self
                        .externals
                        .iter()
                        .find(|e| e.name == target)
                        .ok_or_else(|| format!("no pod or external {target}"))?;
                    (vec![e.ip], e.serve.clone())
                }
            };
        let ip = ips
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .ok_or_else(|| format!("{target} has no IPv{} address", family))?;
        let port = match port {
            PortRef::Number(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {n} is not 1-65535"))?,
            PortRef::Name(name) => {
                let p = named
                    .iter()
                    .find(|p| p.name == *name)
                    .ok_or_else(|| format!("{target} serves no port named {name}"))?;
                if p.protocol != protocol {
                    return Err(format!(
                        "{target}'s port {name} is {}, the probe is {}",
                        p.protocol, protocol
                    ));
                }
                p.port
            }
        };
        Ok(SocketAddr::new(*ip, port))
    }

    fn plan_probes(&self, probes: &[ProbeSpec], at: &str) -> Result<Vec<ProbePlan>, ParseError> {
        let pods: Vec<String> = self.cluster.pods.iter().map(|p| p.key()).collect();
        let mut targets = pods.clone();
        targets.extend(self.externals.iter().map(|e| e.name.clone()));
        let mut out = Vec::new();
        for (i, probe) in probes.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if probe.family != 4 && probe.family != 6 {
                return Err(self.err(&at, format!("family {} is not 4 or 6", probe.family)));
            }
            let expected = probe
                .expect
                .cells(&pods, &targets)
                .map_err(|e| self.err(&at, e))?;
            let mut cells = Vec::new();
            let (mut rows, mut columns) = (Vec::new(), Vec::new());
            for e in expected {
                if !rows.contains(&e.from) {
                    rows.push(e.from.clone());
                }
                if !columns.contains(&e.to) {
                    columns.push(e.to.clone());
                }
                // The `all:` form spans every target; where a named port
                // does not exist on one, that cell is simply not checked.
                let unnamed = matches!(probe.expect, Expect::All { .. })
                    && matches!(&probe.port, PortRef::Name(n) if !self.serves_name(&e.to, n));
                let target = if e.cell == Cell::Unchecked || unnamed {
                    None
                } else {
                    let source = self.cluster.pods.iter().find(|p| p.key() == e.from);
                    if !source
                        .is_some_and(|p| p.ips.iter().any(|ip| ip.is_ipv6() == (probe.family == 6)))
                    {
                        return Err(self.err(
                            &at,
                            format!("{} has no IPv{} address", e.from, probe.family),
                        ));
                    }
                    Some(
                        self.target(&e.to, &probe.port, probe.protocol, probe.family)
                            .map_err(|m| self.err(&at, format!("{} -> {}: {m}", e.from, e.to)))?,
                    )
                };
                cells.push(PlannedCell {
                    from: e.from,
                    to: e.to,
                    expected: if unnamed { Cell::Unchecked } else { e.cell },
                    target,
                });
            }
            let port = match &probe.port {
                PortRef::Number(n) => n.to_string(),
                PortRef::Name(n) => n.clone(),
            };
            out.push(ProbePlan {
                title: format!(
                    "{} {port}{}",
                    probe.protocol,
                    if probe.family == 6 { " (IPv6)" } else { "" }
                ),
                protocol: probe.protocol,
                rows,
                columns,
                cells,
            });
        }
        Ok(out)
    }

    fn plan_checks(&self, checks: &[CheckSpec], at: &str) -> Result<Vec<CheckPlan>, ParseError> {
        checks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if !self.cluster.pods.iter().any(|p| p.key() == c.pod) {
                    return Err(self.err(&format!("{at}[{i}]"), format!("no pod {}", c.pod)));
                }
                if c.run.is_empty() {
                    return Err(self.err(&format!("{at}[{i}]"), "run is empty".into()));
                }
                Ok(CheckPlan {
                    pod: c.pod.clone(),
                    run: c.run.clone(),
                    expect: c.expect,
                })
            })
            .collect()
    }
}
