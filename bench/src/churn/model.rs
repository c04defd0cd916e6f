//! The cluster the churn bench runs, as plain data: namespaces, pods (this
//! node's and other nodes'), NetworkPolicies with a realistic mix of
//! selectors, ports and ipBlocks, and the nine kinds of change. From it
//! come the daemon's source files (`files`) and the nftables and iptables
//! rule sets (`firewall`), so all three enforcers see the same cluster.
//!
//! Selectors are `matchLabels` only: that is all the mix needs, and the
//! firewall translation then cannot disagree with the daemon about
//! expressions it would have to reimplement.

use anyhow::Context as _;

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    net::Ipv4Addr,
};

pub type Labels = BTreeMap<String, String>;

/// How big the cluster is and how many changes of each kind are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// All pods of the cluster, this node's included.
    pub pods: usize,
    /// Pods on this node (a veth on the lab's bridge each).
    pub local: usize,
    pub policies: usize,
    pub namespaces: usize,
    pub changes: usize,
}

pub const FULL: Scale = Scale {
    pods: 10_000,
    local: 100,
    policies: 1_000,
    namespaces: 50,
    changes: 50,
};

pub const QUICK: Scale = Scale {
    pods: 1_000,
    local: 20,
    policies: 100,
    namespaces: 10,
    changes: 5,
};

/// The file source refuses a file of more documents (model/limits.rs).
pub const DOCUMENTS_PER_FILE: usize = 1_000;

/// Application names: pods carry one, policies select by them.
const APPS: [&str; 10] = [
    "web", "api", "auth", "cart", "search", "db", "cache", "queue", "worker", "metrics",
];
const TEAMS: usize = 5;

fn tier(app: &str) -> &'static str {
    match app {
        "web" | "api" | "auth" => "frontend",
        "db" | "cache" | "queue" => "data",
        _ => "backend",
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn app_labels(app: &str) -> Labels {
    labels(&[("app", app), ("tier", tier(app))])
}

/// Every pair of `selector` is among `labels` (an empty selector selects all).
pub fn matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Net {
    Net {
        addr: Ipv4Addr::new(a, b, c, d),
        len,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    /// On this node: a veth on the lab's bridge.
    pub local: bool,
    /// The source file that holds it.
    pub file: String,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub proto: Proto,
    /// `None`: every port of the protocol.
    pub port: Option<u16>,
    pub end: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyPeer {
    /// Pods by selector: without a namespace selector, in the policy's
    /// own namespace.
    Pods {
        namespaces: Option<Labels>,
        pods: Option<Labels>,
    },
    Block {
        cidr: Net,
        except: Vec<Net>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Empty: any peer.
    pub peers: Vec<PolicyPeer>,
    /// Empty: any port.
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub subject: Labels,
    /// `Some`: the policy isolates its pods in that direction and these
    /// rules are what it allows (none: nothing).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    pub file: String,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A cluster's pods by namespace.
pub type ByNamespace<'a> = BTreeMap<&'a str, Vec<&'a Pod>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}

fn ns_name(i: usize) -> String {
    format!("ns{i}")
}

fn namespace(i: usize, team: usize) -> Namespace {
    let name = ns_name(i);
    let env = if i % 3 == 2 { "dev" } else { "prod" };
    let team = format!("t{team}");
    Namespace {
        labels: labels(&[
            ("kubernetes.io/metadata.name", &name),
            ("team", &team),
            ("env", env),
        ]),
        name,
    }
}

/// Other nodes' pods: 10.32.0.1 and up.
fn remote_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a20_0001 + u32::try_from(i).unwrap_or(u32::MAX))
}

/// Remote pods added during the run: 10.47.0.1 and up, apart from the rest.
fn added_remote_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a2f_0001 + u32::try_from(i).unwrap_or(u32::MAX))
}

const NAMESPACES_FILE: &str = "00-namespaces.yaml";
const LOCAL_FILE: &str = "10-local-pods.yaml";

fn subject(app: &str) -> Labels {
    labels(&[("app", app)])
}

fn tcp(port: u16) -> Port {
    Port {
        proto: Proto::Tcp,
        port: Some(port),
        end: None,
    }
}

/// Base policy `j`: namespace `j % N`, and by its slot in that namespace one
/// of the kinds a cluster is made of (default deny, DNS egress, same-
/// namespace app to app, team frontends, monitoring from prod namespaces,
/// ipBlocks in and out).
fn base_policy(j: usize, namespaces: usize) -> Policy {
    let ns = j % namespaces;
    let slot = j / namespaces;
    let app = APPS[slot % APPS.len()];
    let namespace = ns_name(ns);
    let file = format!("30-policies-{namespace}.yaml");
    let same_ns = |pods: Labels| PolicyPeer::Pods {
        namespaces: None,
        pods: Some(pods),
    };
    let (name, subject_labels, ingress, egress) = match slot {
        0 => ("default-deny".to_owned(), Labels::new(), Some(vec![]), None),
        1 => {
            let dns = PolicyPeer::Pods {
                namespaces: Some(labels(&[("kubernetes.io/metadata.name", "ns0")])),
                pods: None,
            };
            let ports = [Proto::Udp, Proto::Tcp].map(|proto| Port {
                proto,
                port: Some(53),
                end: None,
            });
            let egress = vec![
                Rule {
                    peers: vec![dns],
                    ports: ports.to_vec(),
                },
                Rule {
                    peers: vec![same_ns(Labels::new())],
                    ports: vec![],
                },
            ];
            // Half the namespaces restrict egress as well.
            let egress = ns.is_multiple_of(2).then_some(egress);
            ("allow-dns".to_owned(), Labels::new(), None, egress)
        }
        _ => {
            let rule = match slot % 4 {
                0 => {
                    let mut ports = vec![tcp(8080), tcp(8000 + (j % 100) as u16)];
                    if j.is_multiple_of(7) {
                        ports.push(Port {
                            proto: Proto::Tcp,
                            port: Some(30_000),
                            end: Some(30_100),
                        });
                    }
                    Rule {
                        peers: vec![same_ns(subject(APPS[(slot + 1) % APPS.len()]))],
                        ports,
                    }
                }
                1 => Rule {
                    peers: vec![PolicyPeer::Pods {
                        namespaces: Some(labels(&[("team", &format!("t{}", slot % TEAMS))])),
                        pods: Some(labels(&[("tier", "frontend")])),
                    }],
                    ports: vec![tcp(443)],
                },
                2 => Rule {
                    peers: vec![PolicyPeer::Pods {
                        namespaces: Some(labels(&[("env", "prod")])),
                        pods: None,
                    }],
                    ports: vec![tcp(9090)],
                },
                _ => Rule {
                    peers: vec![
                        PolicyPeer::Block {
                            cidr: net(10, 0, 0, 0, 8),
                            except: vec![net(10, 32, 0, 0, 12)],
                        },
                        PolicyPeer::Block {
                            cidr: net(192, 168, (j % 200) as u8, 0, 24),
                            except: vec![],
                        },
                    ],
                    ports: vec![tcp(443)],
                },
            };
            let egress = (slot % 4 == 3).then(|| {
                vec![Rule {
                    peers: vec![PolicyPeer::Block {
                        cidr: net(0, 0, 0, 0, 0),
                        except: vec![net(169, 254, 169, 254, 32), net(10, 0, 0, 0, 8)],
                    }],
                    ports: vec![tcp(443)],
                }]
            });
            (format!("{app}-{j}"), subject(app), Some(vec![rule]), egress)
        }
    };
    Policy {
        namespace,
        name,
        subject: subject_labels,
        ingress,
        egress,
        file,
    }
}

impl Cluster {
    /// The cluster at `scale`, this node's pods at `local_ips` (the lab's
    /// bridge hands them out).
    pub fn generate(scale: Scale, local_ips: &[Ipv4Addr]) -> Self {
        let n = scale.namespaces;
        let namespaces = (0..n).map(|i| namespace(i, i % TEAMS)).collect();
        let mut pods = Vec::with_capacity(scale.pods);
        for (j, &ip) in local_ips.iter().enumerate().take(scale.local) {
            let app = APPS[(j / n + j) % APPS.len()];
            pods.push(Pod {
                namespace: ns_name(j % n),
                name: format!("local-{j}"),
                labels: app_labels(app),
                ip,
                local: true,
                file: LOCAL_FILE.into(),
            });
        }
        for i in 0..scale.pods.saturating_sub(scale.local) {
            pods.push(Pod {
                namespace: ns_name(i % n),
                name: format!("pod-{i}"),
                labels: app_labels(APPS[(i / n) % APPS.len()]),
                ip: remote_ip(i),
                local: false,
                file: format!("20-remote-{:02}.yaml", i / DOCUMENTS_PER_FILE),
            });
        }
        let policies = (0..scale.policies).map(|j| base_policy(j, n)).collect();
        Self {
            namespaces,
            pods,
            policies,
        }
    }

    pub fn local_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| p.local)
    }

    /// Whether `policy` selects `pod`.
    pub fn selects(&self, policy: &Policy, pod: &Pod) -> bool {
        policy.namespace == pod.namespace && matches(&policy.subject, &pod.labels)
    }

    /// The pods by namespace, for [`Cluster::peer_pods`].
    pub fn by_namespace(&self) -> ByNamespace<'_> {
        let mut by: ByNamespace<'_> = BTreeMap::new();
        for pod in &self.pods {
            by.entry(pod.namespace.as_str()).or_default().push(pod);
        }
        by
    }

    /// The pods a peer of a policy in `namespace` names; only the
    /// namespaces in scope are looked through, which keeps a compile of the
    /// whole cluster's sets fast enough to run for every change.
    pub fn peer_pods<'a>(
        &'a self,
        by_namespace: &'a ByNamespace<'a>,
        namespace: &'a str,
        ns_selector: Option<&'a Labels>,
        pod_selector: Option<&'a Labels>,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        let in_scope: Vec<&str> = match ns_selector {
            None => vec![namespace],
            Some(s) => self
                .namespaces
                .iter()
                .filter(|n| matches(s, &n.labels))
                .map(|n| n.name.as_str())
                .collect(),
        };
        in_scope
            .into_iter()
            .filter_map(|ns| by_namespace.get(ns))
            .flatten()
            .copied()
            .filter(move |p| pod_selector.is_none_or(|s| matches(s, &p.labels)))
    }

    /// The source files: every object in its file, each file at most
    /// [`DOCUMENTS_PER_FILE`] documents.
    pub fn files(&self) -> BTreeMap<String, String> {
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let mut add = |file: &str, doc: String| {
            let text = files.entry(file.to_owned()).or_default();
            if !text.is_empty() {
                text.push_str("---\n");
            }
            text.push_str(&doc);
        };
        for ns in &self.namespaces {
            add(NAMESPACES_FILE, namespace_yaml(ns));
        }
        for pod in &self.pods {
            add(&pod.file, pod_yaml(pod));
        }
        for policy in &self.policies {
            add(&policy.file, policy_yaml(policy));
        }
        files
    }
}

/// A YAML flow mapping of labels, every scalar quoted.
fn flow(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn namespace_yaml(ns: &Namespace) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {}}}\n",
        ns.name,
        flow(&ns.labels)
    )
}

/// The node the lab's pods run on (`spec.nodeName`), as the daemon's
/// Kubernetes source is told its own node's name.
pub const LOCAL_NODE: &str = "lab";

fn pod_yaml(pod: &Pod) -> String {
    let node = if pod.local { LOCAL_NODE } else { "elsewhere" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {}}}\nspec: {{nodeName: {node}}}\nstatus: {{podIP: {}}}\n",
        pod.name,
        pod.namespace,
        flow(&pod.labels),
        pod.ip
    )
}

fn selector(labels: &Labels) -> String {
    format!("{{matchLabels: {}}}", flow(labels))
}

fn rules_yaml(y: &mut String, field: &str, peer_field: &str, rules: &[Rule]) {
    if rules.is_empty() {
        let _ = writeln!(y, "  {field}: []");
        return;
    }
    let _ = writeln!(y, "  {field}:");
    for rule in rules {
        let mut first = "  - ";
        if !rule.peers.is_empty() {
            let _ = writeln!(y, "{first}{peer_field}:");
            first = "    ";
            for peer in &rule.peers {
                match peer {
                    PolicyPeer::Pods { namespaces, pods } => {
                        let mut lead = "    - ";
                        if let Some(n) = namespaces {
                            let _ = writeln!(y, "{lead}namespaceSelector: {}", selector(n));
                            lead = "      ";
                        }
                        if let Some(p) = pods {
                            let _ = writeln!(y, "{lead}podSelector: {}", selector(p));
                        }
                    }
                    PolicyPeer::Block { cidr, except } => {
                        let except: Vec<String> = except.iter().map(Net::to_string).collect();
                        let _ = writeln!(
                            y,
                            "    - ipBlock: {{cidr: \"{cidr}\", except: [{}]}}",
                            except
                                .iter()
                                .map(|e| format!("\"{e}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
            }
        }
        if !rule.ports.is_empty() {
            let _ = writeln!(y, "{first}ports:");
            for p in &rule.ports {
                let proto = p.proto.name().to_uppercase();
                let mut port = format!("protocol: {proto}");
                if let Some(n) = p.port {
                    let _ = write!(port, ", port: {n}");
                }
                if let Some(e) = p.end {
                    let _ = write!(port, ", endPort: {e}");
                }
                let _ = writeln!(y, "    - {{{port}}}");
            }
        }
        if rule.peers.is_empty() && rule.ports.is_empty() {
            let _ = writeln!(y, "  - {{}}");
        }
    }
}

fn policy_yaml(p: &Policy) -> String {
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  podSelector: {}\n",
        p.name,
        p.namespace,
        selector(&p.subject)
    );
    let mut types = Vec::new();
    if p.ingress.is_some() {
        types.push("Ingress");
    }
    if p.egress.is_some() {
        types.push("Egress");
    }
    let _ = writeln!(y, "  policyTypes: [{}]", types.join(", "));
    if let Some(rules) = &p.ingress {
        rules_yaml(&mut y, "ingress", "from", rules);
    }
    if let Some(rules) = &p.egress {
        rules_yaml(&mut y, "egress", "to", rules);
    }
    y
}

/// The kinds of change, in the order the bench runs them (deletes take
/// back what the adds before them added, so the cluster keeps its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    PolicyEdited,
    PolicyAdded,
    PolicyDeleted,
    RemotePodAdded,
    RemotePodRemoved,
    LocalPodAdded,
    LocalPodAfterVeth,
    PodRelabelled,
    NamespaceRelabelled,
}

pub const KINDS: [Kind; 9] = [
    Kind::PolicyEdited,
    Kind::PolicyAdded,
    Kind::PolicyDeleted,
    Kind::RemotePodAdded,
    Kind::RemotePodRemoved,
    Kind::LocalPodAdded,
    Kind::LocalPodAfterVeth,
    Kind::PodRelabelled,
    Kind::NamespaceRelabelled,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::PolicyEdited => "policy edited",
            Self::PolicyAdded => "policy added",
            Self::PolicyDeleted => "policy deleted",
            Self::RemotePodAdded => "remote pod added",
            Self::RemotePodRemoved => "remote pod removed",
            Self::LocalPodAdded => "local pod added",
            Self::LocalPodAfterVeth => "local pod, veth first",
            Self::PodRelabelled => "pod relabelled",
            Self::NamespaceRelabelled => "namespace relabelled",
        }
    }

    /// A pod of this node: its namespace and veth are made with it.
    pub fn is_local_pod(self) -> bool {
        matches!(self, Self::LocalPodAdded | Self::LocalPodAfterVeth)
    }

    /// A name without spaces, for the CSV.
    pub fn id(self) -> &'static str {
        match self {
            Self::PolicyEdited => "policy_edited",
            Self::PolicyAdded => "policy_added",
            Self::PolicyDeleted => "policy_deleted",
            Self::RemotePodAdded => "remote_pod_added",
            Self::RemotePodRemoved => "remote_pod_removed",
            Self::LocalPodAdded => "local_pod_added",
            Self::LocalPodAfterVeth => "local_pod_after_veth",
            Self::PodRelabelled => "pod_relabelled",
            Self::NamespaceRelabelled => "namespace_relabelled",
        }
    }
}

/// The `i`-th change of `kind` to `cluster`, in place. `next_local_ip` is
/// where the lab's bridge puts the next pod (for [`Kind::LocalPodAdded`]).
/// Edits, adds and relabels all touch pods of this node, so that every
/// change is work for a node's enforcer; each lands in one source file.
pub fn apply(
    cluster: &mut Cluster,
    kind: Kind,
    i: usize,
    next_local_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let locals: Vec<Pod> = cluster.local_pods().cloned().collect();
    let local = locals
        .get(i % locals.len().max(1))
        .context("no pod on this node")?;
    match kind {
        Kind::PolicyEdited => {
            // Policies with ports that select one of this node's pods.
            let edited: Vec<usize> = (0..cluster.policies.len())
                .filter(|&at| {
                    let p = &cluster.policies[at];
                    p.ingress
                        .as_ref()
                        .and_then(|r| r.first())
                        .is_some_and(|r| r.ports.iter().any(|p| p.port.is_some()))
                        && locals.iter().any(|l| cluster.selects(p, l))
                })
                .collect();
            let at = *edited
                .get(i % edited.len().max(1))
                .context("no policy with ports selects a pod of this node")?;
            let port = cluster.policies[at]
                .ingress
                .iter_mut()
                .flatten()
                .next()
                .and_then(|r| r.ports.iter_mut().find(|p| p.port.is_some()))
                .context("the edited policy has no port")?;
            port.port = Some(20_000 + i as u16);
            port.end = None;
        }
        Kind::PolicyAdded => {
            let app = local.labels["app"].clone();
            let from = APPS[(i + 3) % APPS.len()];
            let name = format!("added-{i}");
            cluster.policies.push(Policy {
                file: format!("40-{}-{name}.yaml", local.namespace),
                namespace: local.namespace.clone(),
                name,
                subject: subject(&app),
                ingress: Some(vec![Rule {
                    peers: vec![PolicyPeer::Pods {
                        namespaces: None,
                        pods: Some(subject(from)),
                    }],
                    ports: vec![tcp(7000 + i as u16)],
                }]),
                egress: None,
            });
        }
        Kind::PolicyDeleted => {
            let name = format!("added-{i}");
            cluster.policies.retain(|p| p.name != name);
        }
        Kind::RemotePodAdded => {
            // In a prod namespace: the monitoring policies' namespace
            // selector names every pod there, so every nftables and
            // iptables enforcer has a set element to add.
            let prod: Vec<usize> = (0..cluster.namespaces.len())
                .filter(|&n| cluster.namespaces[n].labels["env"] == "prod")
                .collect();
            let ns = ns_name(prod[i % prod.len()]);
            let name = format!("added-{i}");
            cluster.pods.push(Pod {
                file: format!("50-{ns}-{name}.yaml"),
                namespace: ns,
                name,
                labels: app_labels(APPS[i % APPS.len()]),
                ip: added_remote_ip(i),
                local: false,
            });
        }
        Kind::RemotePodRemoved => {
            let name = format!("added-{i}");
            cluster.pods.retain(|p| p.local || p.name != name);
        }
        Kind::LocalPodAdded | Kind::LocalPodAfterVeth => {
            let n = cluster.namespaces.len();
            let (name, file) = match kind {
                Kind::LocalPodAdded => (format!("local-added-{i}"), "60"),
                _ => (format!("local-after-veth-{i}"), "61"),
            };
            cluster.pods.push(Pod {
                namespace: ns_name(i % n),
                file: format!("{file}-{}-{name}.yaml", ns_name(i % n)),
                name,
                labels: app_labels(APPS[(i + 1) % APPS.len()]),
                ip: next_local_ip,
                local: true,
            });
        }
        Kind::PodRelabelled => {
            // The next app that changes which policies select it: a
            // relabel no policy notices would be no work for anyone.
            let selecting = |labels: &Labels| -> Vec<bool> {
                let pod = Pod {
                    labels: labels.clone(),
                    ..local.clone()
                };
                cluster
                    .policies
                    .iter()
                    .map(|p| cluster.selects(p, &pod))
                    .collect()
            };
            let now = selecting(&local.labels);
            let at = APPS
                .iter()
                .position(|a| local.labels["app"] == *a)
                .unwrap_or(0);
            let labels = (1..APPS.len())
                .map(|k| app_labels(APPS[(at + k) % APPS.len()]))
                .find(|l| selecting(l) != now)
                .unwrap_or_else(|| app_labels(APPS[(at + 1) % APPS.len()]));
            let key = local.key();
            let pod = cluster
                .pods
                .iter_mut()
                .find(|p| p.key() == key)
                .context("the relabelled pod")?;
            pod.labels = labels;
        }
        Kind::NamespaceRelabelled => {
            // The next team that some namespace selector tells apart from
            // the present one, so that its pods move between peers.
            let selectors: Vec<&Labels> = cluster
                .policies
                .iter()
                .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
                .flat_map(|r| &r.peers)
                .filter_map(|peer| match peer {
                    PolicyPeer::Pods {
                        namespaces: Some(s),
                        ..
                    } => Some(s),
                    _ => None,
                })
                .collect();
            let at = i % cluster.namespaces.len();
            let labels = &cluster.namespaces[at].labels;
            let named =
                |l: &Labels| -> Vec<bool> { selectors.iter().map(|s| matches(s, l)).collect() };
            let team: usize = labels["team"][1..].parse().unwrap_or(0);
            let relabelled = |k: usize| {
                let mut l = labels.clone();
                l.insert("team".into(), format!("t{}", (team + k) % TEAMS));
                l
            };
            let next = (1..TEAMS)
                .map(relabelled)
                .find(|l| named(l) != named(labels))
                .unwrap_or_else(|| relabelled(1));
            cluster.namespaces[at].labels = next;
        }
    }
    Ok(())
}

/// What turns the files of one cluster into another's: files to write
/// (name, text) and files to remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileChange {
    pub write: Vec<(String, String)>,
    pub remove: Vec<String>,
}

pub fn file_change(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> FileChange {
    FileChange {
        write: after
            .iter()
            .filter(|(name, text)| before.get(*name) != Some(*text))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
        remove: before
            .keys()
            .filter(|n| !after.contains_key(*n))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    pub fn local_ips(n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| Ipv4Addr::new(10, 199, 1, (i + 1) as u8))
            .collect()
    }

    pub fn quick() -> Cluster {
        Cluster::generate(QUICK, &local_ips(QUICK.local))
    }

    #[test]
    fn the_cluster_has_the_scale_asked_for() {
        for scale in [QUICK, FULL] {
            let c = Cluster::generate(scale, &local_ips(scale.local));
            assert_eq!(c.pods.len(), scale.pods);
            assert_eq!(c.local_pods().count(), scale.local);
            assert_eq!(c.policies.len(), scale.policies);
            assert_eq!(c.namespaces.len(), scale.namespaces);
            let ips: BTreeSet<_> = c.pods.iter().map(|p| p.ip).collect();
            assert_eq!(ips.len(), scale.pods, "every pod its own address");
            let keys: BTreeSet<_> = c.policies.iter().map(Policy::key).collect();
            assert_eq!(keys.len(), scale.policies, "every policy its own name");
            // The mix: each kind of peer is there.
            let peers: Vec<&PolicyPeer> = c
                .policies
                .iter()
                .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
                .flat_map(|r| &r.peers)
                .collect();
            assert!(peers.iter().any(|p| matches!(p, PolicyPeer::Block { .. })));
            assert!(peers.iter().any(|p| matches!(
                p,
                PolicyPeer::Pods {
                    namespaces: Some(_),
                    pods: Some(_)
                }
            )));
            assert!(peers.iter().any(|p| matches!(
                p,
                PolicyPeer::Pods {
                    namespaces: None,
                    ..
                }
            )));
        }
    }

    #[test]
    fn no_file_holds_more_documents_than_the_source_accepts() {
        let c = Cluster::generate(FULL, &local_ips(FULL.local));
        let files = c.files();
        for (name, text) in &files {
            let docs = text.matches("\n---\n").count() + 1;
            assert!(docs <= DOCUMENTS_PER_FILE, "{name}: {docs} documents");
        }
        let docs: usize = files
            .values()
            .map(|t| t.matches("apiVersion:").count())
            .sum();
        assert_eq!(docs, FULL.pods + FULL.policies + FULL.namespaces);
    }

    #[test]
    fn the_files_parse_as_the_daemon_reads_them() {
        // The daemon's own parser: every document an object, none an error.
        let c = quick();
        let mut policies = 0;
        for (name, text) in c.files() {
            for (start, doc) in palisade::model::parse::split_documents(&text) {
                if doc.contains("kind: NetworkPolicy") {
                    palisade::model::parse::parse_one(&doc, start, &name, "default")
                        .unwrap_or_else(|e| panic!("{name}: {e}\n{doc}"));
                    policies += 1;
                }
            }
        }
        assert_eq!(policies, QUICK.policies);
    }

    #[test]
    fn each_change_touches_one_file_and_the_deletes_undo_the_adds() {
        let base = quick();
        let mut c = base.clone();
        let mut next = 200u8;
        for kind in KINDS {
            for i in 0..QUICK.changes {
                let before = c.files();
                apply(&mut c, kind, i, Ipv4Addr::new(10, 199, 1, next)).unwrap();
                if kind.is_local_pod() {
                    next += 1;
                }
                let change = file_change(&before, &c.files());
                assert_eq!(
                    change.write.len() + change.remove.len(),
                    1,
                    "{kind:?} {i}: {change:?}"
                );
            }
        }
        assert_eq!(c.policies.len(), base.policies.len());
        assert_eq!(c.pods.len(), base.pods.len() + 2 * QUICK.changes);
        assert_eq!(c.local_pods().count(), QUICK.local + 2 * QUICK.changes);
    }

    #[test]
    fn an_edit_changes_a_port_of_a_policy_that_selects_a_local_pod() {
        let mut c = quick();
        let before = c.clone();
        apply(&mut c, Kind::PolicyEdited, 0, Ipv4Addr::LOCALHOST).unwrap();
        let changed: Vec<(&Policy, &Policy)> = before
            .policies
            .iter()
            .zip(&c.policies)
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 1);
        let (_, after) = changed[0];
        assert!(c.local_pods().any(|l| c.selects(after, l)));
        let ports = &after.ingress.as_ref().unwrap()[0].ports;
        assert!(ports.iter().any(|p| p.port == Some(20_000)), "{ports:?}");
    }

    #[test]
    fn selectors_match_by_every_pair() {
        let l = labels(&[("app", "web"), ("tier", "frontend")]);
        assert!(matches(&Labels::new(), &l));
        assert!(matches(&labels(&[("app", "web")]), &l));
        assert!(!matches(&labels(&[("app", "web"), ("tier", "data")]), &l));
        assert!(!matches(&labels(&[("team", "t1")]), &l));
    }
}
