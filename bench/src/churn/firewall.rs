//! The cluster as an nftables or iptables enforcer on this node would hold
//! it, and the delta such an enforcer applies for a change.
//!
//! One neutral state, rendered in each tool's language:
//!
//! - a **set** per distinct peer selector (namespace scope, namespace
//!   selector, pod selector) holding the addresses of every pod of the
//!   cluster it names (nftables `set` of `ipv4_addr`, ipset `hash:ip`), and
//!   one per ipBlock (inline in nftables rules; ipset `hash:net` with the
//!   `except` prefixes as `nomatch` entries);
//! - a **chain per policy and direction** (every policy of the cluster:
//!   the rule set is at the cluster's scale): one accept rule per (peer,
//!   protocol) of each rule, ports as a set of the protocol's ports;
//! - a **chain per local pod and direction** it is isolated in: a jump to
//!   each policy selecting it, in name order, then drop;
//! - **dispatch** by the pod's address to its chain: nftables verdict maps
//!   looked up from two base chains on the forward hook (egress at priority
//!   0, ingress at 10: an accept ends only its own base chain, so a packet
//!   must pass both); iptables the same split over two tables, egress in
//!   `mangle` FORWARD and ingress in `filter` FORWARD, one rule per pod in
//!   a dispatch chain. Established and related traffic is accepted first.
//!
//! A change's delta is the difference of the states before and after, in
//! the order the tools need (references go before what they refer to):
//! set and element adds and deletes, new chains, flush and refill of
//! changed chains, dispatch adds and deletes, then chains and sets no longer
//! used. For nftables that is one `nft -f` file, one transaction; for
//! iptables an `ipset restore` (sets and elements), an `iptables-restore
//! --noflush` (a declared chain is flushed by it) and an `ipset restore`
//! that destroys unused sets, each run only when it has work.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use super::model::{ByNamespace, Cluster, Labels, Net, PolicyPeer, Port, Proto};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

/// What a direction is called in each language.
struct Words {
    /// The peer's address field in nftables and ipset matches: the
    /// source of what comes in, the destination of what goes out.
    nft_peer: &'static str,
    ipt_peer: &'static str,
    /// The pod's own address field, in nftables and in iptables.
    nft_pod: &'static str,
    ipt_pod: &'static str,
    /// Chain names end with it.
    suffix: char,
    /// The nftables verdict map, the iptables table and dispatch chain.
    nft_map: &'static str,
    ipt_table: &'static str,
    ipt_dispatch: &'static str,
}

const INGRESS: Words = Words {
    nft_peer: "saddr",
    ipt_peer: "src",
    nft_pod: "daddr",
    ipt_pod: "-d",
    suffix: 'i',
    nft_map: "ingress_pods",
    ipt_table: "filter",
    ipt_dispatch: "PAL-INGRESS",
};

const EGRESS: Words = Words {
    nft_peer: "daddr",
    ipt_peer: "dst",
    nft_pod: "saddr",
    ipt_pod: "-s",
    suffix: 'e',
    nft_map: "egress_pods",
    ipt_table: "mangle",
    ipt_dispatch: "PAL-EGRESS",
};

impl Dir {
    fn words(self) -> &'static Words {
        match self {
            Self::Ingress => &INGRESS,
            Self::Egress => &EGRESS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetDef {
    Addrs(BTreeSet<Ipv4Addr>),
    Block { cidr: Net, except: Vec<Net> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Any,
    Set(String),
    /// An ipBlock, also a set of that name for iptables.
    Block {
        set: String,
        cidr: Net,
        except: Vec<Net>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Jump(String),
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peer: Peer,
    /// `None`: any protocol; with an empty port list, any port of it.
    pub proto: Option<Proto>,
    pub ports: Vec<(u16, u16)>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub dir: Dir,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fw {
    pub sets: BTreeMap<String, SetDef>,
    pub chains: BTreeMap<String, Chain>,
    pub dispatch: BTreeMap<(Dir, Ipv4Addr), String>,
}

/// A short stable name for what `key` describes; iptables chain names
/// are at most 28 characters and ipset names 31.
fn name(prefix: char, key: &str) -> String {
    format!("{prefix}{:016x}", palisade::identity::fnv1a(key.as_bytes()))
}

fn selector_key(s: Option<&Labels>) -> String {
    s.map_or_else(|| "-".to_owned(), |l| format!("{l:?}"))
}

fn policy_chain(key: &str, dir: Dir) -> String {
    format!("{}{}", name('p', key), dir.words().suffix)
}

fn pod_chain(ip: Ipv4Addr, dir: Dir) -> String {
    format!("q{:08x}{}", u32::from(ip), dir.words().suffix)
}

/// A protocol (none: any) and its port ranges (none: any port).
type PortGroup = (Option<Proto>, Vec<(u16, u16)>);

/// A policy's ports by protocol (none: any protocol, any port).
fn port_groups(ports: &[Port]) -> Vec<PortGroup> {
    if ports.is_empty() {
        return vec![(None, Vec::new())];
    }
    let mut by: BTreeMap<Proto, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for p in ports {
        let entry = by.entry(p.proto).or_insert_with(|| Some(Vec::new()));
        match (p.port, entry.as_mut()) {
            // A port-less entry opens the whole protocol.
            (None, _) => *entry = None,
            (Some(n), Some(list)) => list.push((n, p.end.unwrap_or(n))),
            (Some(_), None) => {}
        }
    }
    by.into_iter()
        .map(|(proto, ports)| (Some(proto), ports.unwrap_or_default()))
        .collect()
}

impl Fw {
    pub fn compile(cluster: &Cluster) -> Self {
        let mut fw = Self::default();
        let by_namespace = cluster.by_namespace();
        for policy in &cluster.policies {
            let key = policy.key();
            for (dir, rules) in [
                (Dir::Ingress, &policy.ingress),
                (Dir::Egress, &policy.egress),
            ] {
                let Some(rules) = rules else { continue };
                let mut chain = Vec::new();
                for rule in rules {
                    let mut peers = Vec::new();
                    for peer in &rule.peers {
                        peers.push(fw.peer(cluster, &by_namespace, &policy.namespace, peer));
                    }
                    if peers.is_empty() {
                        peers.push(Peer::Any);
                    }
                    for peer in peers {
                        for (proto, ports) in port_groups(&rule.ports) {
                            chain.push(Rule {
                                peer: peer.clone(),
                                proto,
                                ports,
                                verdict: Verdict::Accept,
                            });
                        }
                    }
                }
                fw.chains
                    .insert(policy_chain(&key, dir), Chain { dir, rules: chain });
            }
        }
        for pod in cluster.local_pods() {
            for dir in [Dir::Ingress, Dir::Egress] {
                let mut selecting: Vec<String> = cluster
                    .policies
                    .iter()
                    .filter(|p| {
                        let isolates = match dir {
                            Dir::Ingress => p.ingress.is_some(),
                            Dir::Egress => p.egress.is_some(),
                        };
                        isolates && cluster.selects(p, pod)
                    })
                    .map(|p| p.key())
                    .collect();
                if selecting.is_empty() {
                    continue;
                }
                selecting.sort();
                let mut rules: Vec<Rule> = selecting
                    .iter()
                    .map(|key| Rule {
                        peer: Peer::Any,
                        proto: None,
                        ports: Vec::new(),
                        verdict: Verdict::Jump(policy_chain(key, dir)),
                    })
                    .collect();
                rules.push(Rule {
                    peer: Peer::Any,
                    proto: None,
                    ports: Vec::new(),
                    verdict: Verdict::Drop,
                });
                let chain = pod_chain(pod.ip, dir);
                fw.chains.insert(chain.clone(), Chain { dir, rules });
                fw.dispatch.insert((dir, pod.ip), chain);
            }
        }
        fw
    }

    /// The peer of a rule, its set made (once per distinct selector).
    fn peer(
        &mut self,
        cluster: &Cluster,
        by_namespace: &ByNamespace<'_>,
        namespace: &str,
        peer: &PolicyPeer,
    ) -> Peer {
        match peer {
            PolicyPeer::Pods { namespaces, pods } => {
                let scope = if namespaces.is_some() { "*" } else { namespace };
                let set = name(
                    's',
                    &format!(
                        "{scope}|{}|{}",
                        selector_key(namespaces.as_ref()),
                        selector_key(pods.as_ref())
                    ),
                );
                if !self.sets.contains_key(&set) {
                    let addrs = cluster
                        .peer_pods(by_namespace, namespace, namespaces.as_ref(), pods.as_ref())
                        .map(|p| p.ip)
                        .collect();
                    self.sets.insert(set.clone(), SetDef::Addrs(addrs));
                }
                Peer::Set(set)
            }
            PolicyPeer::Block { cidr, except } => {
                let set = name('b', &format!("{cidr} {except:?}"));
                self.sets.entry(set.clone()).or_insert(SetDef::Block {
                    cidr: *cidr,
                    except: except.clone(),
                });
                Peer::Block {
                    set,
                    cidr: *cidr,
                    except: except.clone(),
                }
            }
        }
    }

    /// Rules and set elements, the sizes a reader compares.
    pub fn size(&self) -> (usize, usize, usize) {
        let rules = self.chains.values().map(|c| c.rules.len()).sum();
        let elements = self
            .sets
            .values()
            .map(|s| match s {
                SetDef::Addrs(a) => a.len(),
                SetDef::Block { except, .. } => 1 + except.len(),
            })
            .sum();
        (self.sets.len(), rules, elements)
    }
}

/// What turns one state into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub new_sets: Vec<(String, SetDef)>,
    pub added: Vec<(String, Ipv4Addr)>,
    pub removed: Vec<(String, Ipv4Addr)>,
    pub new_chains: Vec<(String, Chain)>,
    /// Existing chains whose rules differ: flushed and filled again.
    pub refilled: Vec<(String, Chain)>,
    pub dispatch_add: Vec<((Dir, Ipv4Addr), String)>,
    pub dispatch_del: Vec<((Dir, Ipv4Addr), String)>,
    pub gone_chains: Vec<(String, Dir)>,
    pub gone_sets: Vec<(String, SetDef)>,
}

impl Delta {
    pub fn between(before: &Fw, after: &Fw) -> Self {
        let mut d = Self::default();
        for (name, set) in &after.sets {
            match (before.sets.get(name), set) {
                (None, _) => d.new_sets.push((name.clone(), set.clone())),
                (Some(SetDef::Addrs(old)), SetDef::Addrs(new)) => {
                    d.added
                        .extend(new.difference(old).map(|a| (name.clone(), *a)));
                    d.removed
                        .extend(old.difference(new).map(|a| (name.clone(), *a)));
                }
                // Block sets are named by their contents: never changed.
                (Some(_), _) => {}
            }
        }
        for (name, chain) in &after.chains {
            match before.chains.get(name) {
                None => d.new_chains.push((name.clone(), chain.clone())),
                Some(old) if old != chain => d.refilled.push((name.clone(), chain.clone())),
                Some(_) => {}
            }
        }
        for (key, chain) in &after.dispatch {
            if before.dispatch.get(key) != Some(chain) {
                if let Some(old) = before.dispatch.get(key) {
                    d.dispatch_del.push((*key, old.clone()));
                }
                d.dispatch_add.push((*key, chain.clone()));
            }
        }
        for (key, chain) in &before.dispatch {
            if !after.dispatch.contains_key(key) {
                d.dispatch_del.push((*key, chain.clone()));
            }
        }
        d.gone_chains = before
            .chains
            .iter()
            .filter(|(n, _)| !after.chains.contains_key(*n))
            .map(|(n, c)| (n.clone(), c.dir))
            .collect();
        d.gone_sets = before
            .sets
            .iter()
            .filter(|(n, _)| !after.sets.contains_key(*n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        d
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `fw` with this delta applied: what the kernel holds after the tool
    /// ran, for the tests.
    #[cfg(test)]
    pub fn apply(&self, fw: &Fw) -> Fw {
        let mut fw = fw.clone();
        fw.sets.extend(self.new_sets.iter().cloned());
        for (set, a) in &self.added {
            let Some(SetDef::Addrs(s)) = fw.sets.get_mut(set) else {
                panic!("element of {set}, which is no address set");
            };
            assert!(s.insert(*a), "{a} already in {set}");
        }
        for (set, a) in &self.removed {
            let Some(SetDef::Addrs(s)) = fw.sets.get_mut(set) else {
                panic!("element of {set}, which is no address set");
            };
            assert!(s.remove(a), "{a} not in {set}");
        }
        for (name, chain) in self.new_chains.iter().chain(&self.refilled) {
            fw.chains.insert(name.clone(), chain.clone());
        }
        for (key, _) in &self.dispatch_del {
            assert!(fw.dispatch.remove(key).is_some());
        }
        for (key, chain) in &self.dispatch_add {
            fw.dispatch.insert(*key, chain.clone());
        }
        for (name, _) in &self.gone_chains {
            assert!(fw.chains.remove(name).is_some());
        }
        for (name, _) in &self.gone_sets {
            assert!(fw.sets.remove(name).is_some());
        }
        fw
    }
}

pub const NFT_TABLE: &str = "palisade_churn";

fn nft_ports(proto: Option<Proto>, ports: &[(u16, u16)]) -> String {
    let Some(proto) = proto else {
        return String::new();
    };
    if ports.is_empty() {
        return format!(" meta l4proto {}", proto.name());
    }
    format!(
        " {} dport {{ {} }}",
        proto.name(),
        port_list(ports, '-', ", ")
    )
}

/// Port ranges as a tool writes them: `a` alone, else `a` to `b` joined
/// by `to`; the ranges separated by `sep`.
fn port_list(ports: &[(u16, u16)], to: char, sep: &str) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}{to}{b}")
            }
        })
        .collect();
    list.join(sep)
}

fn nft_rule(dir: Dir, rule: &Rule) -> String {
    let field = dir.words().nft_peer;
    let mut r = match &rule.peer {
        Peer::Any => String::new(),
        Peer::Set(set) => format!(" ip {field} @{set}"),
        Peer::Block { cidr, except, .. } => {
            let mut m = format!(" ip {field} {cidr}");
            if !except.is_empty() {
                let e: Vec<String> = except.iter().map(Net::to_string).collect();
                let _ = write!(m, " ip {field} != {{ {} }}", e.join(", "));
            }
            m
        }
    };
    r.push_str(&nft_ports(rule.proto, &rule.ports));
    match &rule.verdict {
        Verdict::Accept => r.push_str(" accept"),
        Verdict::Jump(c) => {
            let _ = write!(r, " jump {c}");
        }
        Verdict::Drop => r.push_str(" drop"),
    }
    r
}

/// Elements per `add element` line: long enough to keep the file short,
/// short enough that no line is megabytes.
const PER_LINE: usize = 512;

fn nft_elements(t: &mut String, verb: &str, set: &str, addrs: &[Ipv4Addr]) {
    for chunk in addrs.chunks(PER_LINE) {
        let list: Vec<String> = chunk.iter().map(Ipv4Addr::to_string).collect();
        let _ = writeln!(
            t,
            "{verb} element inet {NFT_TABLE} {set} {{ {} }}",
            list.join(", ")
        );
    }
}

/// Elements by set, in order.
fn by_set(list: &[(String, Ipv4Addr)]) -> BTreeMap<&str, Vec<Ipv4Addr>> {
    let mut m: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for (set, a) in list {
        m.entry(set).or_default().push(*a);
    }
    m
}

impl Delta {
    /// The `nft -f` file: one transaction.
    pub fn nft(&self) -> String {
        let mut t = String::new();
        let table = format!("inet {NFT_TABLE}");
        for (set, def) in &self.new_sets {
            if let SetDef::Addrs(addrs) = def {
                let _ = writeln!(t, "add set {table} {set} {{ type ipv4_addr; }}");
                nft_elements(
                    &mut t,
                    "add",
                    set,
                    &addrs.iter().copied().collect::<Vec<_>>(),
                );
            }
        }
        for (set, addrs) in by_set(&self.added) {
            nft_elements(&mut t, "add", set, &addrs);
        }
        for (set, addrs) in by_set(&self.removed) {
            nft_elements(&mut t, "delete", set, &addrs);
        }
        for (chain, _) in &self.new_chains {
            let _ = writeln!(t, "add chain {table} {chain}");
        }
        for (chain, _) in &self.refilled {
            let _ = writeln!(t, "flush chain {table} {chain}");
        }
        for (chain, c) in self.new_chains.iter().chain(&self.refilled) {
            for rule in &c.rules {
                let _ = writeln!(t, "add rule {table} {chain}{}", nft_rule(c.dir, rule));
            }
        }
        for ((dir, ip), _) in &self.dispatch_del {
            let _ = writeln!(
                t,
                "delete element {table} {} {{ {ip} }}",
                dir.words().nft_map
            );
        }
        for ((dir, ip), chain) in &self.dispatch_add {
            let _ = writeln!(
                t,
                "add element {table} {} {{ {ip} : jump {chain} }}",
                dir.words().nft_map
            );
        }
        // Emptied first, so that no jump into a chain deleted next is left.
        for (chain, _) in &self.gone_chains {
            let _ = writeln!(t, "flush chain {table} {chain}");
        }
        for (chain, _) in &self.gone_chains {
            let _ = writeln!(t, "delete chain {table} {chain}");
        }
        for (set, def) in &self.gone_sets {
            if matches!(def, SetDef::Addrs(_)) {
                let _ = writeln!(t, "delete set {table} {set}");
            }
        }
        t
    }

    /// The whole rule set for `fw` as an `nft -f` file: the table, its
    /// dispatch maps and base chains, then everything as a delta from
    /// nothing.
    pub fn nft_base(fw: &Fw) -> String {
        let mut t = format!(
            "add table inet {NFT_TABLE}\nadd map inet {NFT_TABLE} ingress_pods {{ type ipv4_addr : verdict; }}\nadd map inet {NFT_TABLE} egress_pods {{ type ipv4_addr : verdict; }}\n"
        );
        t.push_str(&Self::between(&Fw::default(), fw).nft());
        for (dir, priority) in [(Dir::Egress, 0), (Dir::Ingress, 10)] {
            let chain = format!("forward_{}", dir.words().nft_map);
            let _ = writeln!(
                t,
                "add chain inet {NFT_TABLE} {chain} {{ type filter hook forward priority {priority}; policy accept; }}\nadd rule inet {NFT_TABLE} {chain} ct state established,related accept\nadd rule inet {NFT_TABLE} {chain} ip {} vmap @{}",
                dir.words().nft_pod,
                dir.words().nft_map
            );
        }
        t
    }
}

fn ipt_rule(chain: &str, dir: Dir, rule: &Rule) -> String {
    let mut r = format!("-A {chain}");
    match &rule.peer {
        Peer::Any => {}
        Peer::Set(set) | Peer::Block { set, .. } => {
            let _ = write!(r, " -m set --match-set {set} {}", dir.words().ipt_peer);
        }
    }
    if let Some(proto) = rule.proto {
        let _ = write!(r, " -p {}", proto.name());
        if !rule.ports.is_empty() {
            let _ = write!(
                r,
                " -m multiport --dports {}",
                port_list(&rule.ports, ':', ",")
            );
        }
    }
    match &rule.verdict {
        Verdict::Accept => r.push_str(" -j ACCEPT"),
        Verdict::Jump(c) => {
            let _ = write!(r, " -j {c}");
        }
        Verdict::Drop => r.push_str(" -j DROP"),
    }
    r
}

/// The iptables side of a delta: what runs, in order; `None` where a step
/// has nothing to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IptDelta {
    /// `ipset restore`: new sets, element adds and deletes.
    pub sets: Option<String>,
    /// `iptables-restore --noflush`.
    pub rules: Option<String>,
    /// `ipset restore`: sets no rule uses any more.
    pub destroy: Option<String>,
}

fn ipset_create(t: &mut String, set: &str, def: &SetDef) {
    match def {
        SetDef::Addrs(addrs) => {
            let _ = writeln!(
                t,
                "create {set} hash:ip family inet hashsize {} maxelem 65536",
                addrs.len().next_power_of_two().clamp(64, 65_536)
            );
            for a in addrs {
                let _ = writeln!(t, "add {set} {a}");
            }
        }
        SetDef::Block { cidr, except } => {
            let _ = writeln!(t, "create {set} hash:net family inet");
            // A /0 is not a hash:net entry: its two halves are.
            if cidr.len == 0 {
                let _ = writeln!(t, "add {set} 0.0.0.0/1\nadd {set} 128.0.0.0/1");
            } else {
                let _ = writeln!(t, "add {set} {cidr}");
            }
            for e in except {
                let _ = writeln!(t, "add {set} {e} nomatch");
            }
        }
    }
}

impl Delta {
    pub fn iptables(&self) -> IptDelta {
        let mut sets = String::new();
        for (set, def) in &self.new_sets {
            ipset_create(&mut sets, set, def);
        }
        for (set, a) in &self.added {
            let _ = writeln!(sets, "add {set} {a}");
        }
        for (set, a) in &self.removed {
            let _ = writeln!(sets, "del {set} {a}");
        }
        let mut rules = String::new();
        for dir in [Dir::Ingress, Dir::Egress] {
            let mut t = String::new();
            let chains = self
                .new_chains
                .iter()
                .chain(&self.refilled)
                .filter(|(_, c)| c.dir == dir);
            // A declared chain that exists is flushed (--noflush or not).
            for (chain, _) in chains.clone() {
                let _ = writeln!(t, ":{chain} - [0:0]");
            }
            for (chain, c) in chains {
                for rule in &c.rules {
                    let _ = writeln!(t, "{}", ipt_rule(chain, dir, rule));
                }
            }
            for (verb, list) in [("-D", &self.dispatch_del), ("-A", &self.dispatch_add)] {
                for ((d, ip), chain) in list.iter().filter(|((d, _), _)| *d == dir) {
                    let w = d.words();
                    let _ = writeln!(
                        t,
                        "{verb} {} {} {ip}/32 -j {chain}",
                        w.ipt_dispatch, w.ipt_pod
                    );
                }
            }
            let gone = self.gone_chains.iter().filter(|(_, d)| *d == dir);
            for (chain, _) in gone.clone() {
                let _ = writeln!(t, "-F {chain}");
            }
            for (chain, _) in gone {
                let _ = writeln!(t, "-X {chain}");
            }
            if !t.is_empty() {
                let _ = write!(rules, "*{}\n{t}COMMIT\n", dir.words().ipt_table);
            }
        }
        let mut destroy = String::new();
        for (set, _) in &self.gone_sets {
            let _ = writeln!(destroy, "destroy {set}");
        }
        let some = |s: String| (!s.is_empty()).then_some(s);
        IptDelta {
            sets: some(sets),
            rules: some(rules),
            destroy: some(destroy),
        }
    }

    /// The whole rule set for `fw`: the dispatch chains hooked into FORWARD
    /// of both tables, then everything as a delta from nothing.
    pub fn iptables_base(fw: &Fw) -> IptDelta {
        let mut base = Self::between(&Fw::default(), fw).iptables();
        let mut prelude = String::new();
        for dir in [Dir::Ingress, Dir::Egress] {
            let chain = dir.words().ipt_dispatch;
            let _ = write!(
                prelude,
                "*{}\n:{chain} - [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -j {chain}\nCOMMIT\n",
                dir.words().ipt_table
            );
        }
        prelude.push_str(base.rules.as_deref().unwrap_or_default());
        base.rules = Some(prelude);
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::churn::model::{KINDS, Kind, apply, tests::quick};

    #[test]
    fn ports_group_by_protocol_and_a_portless_entry_opens_it() {
        let p = |proto, port: Option<u16>, end| Port { proto, port, end };
        assert_eq!(port_groups(&[]), vec![(None, vec![])]);
        assert_eq!(
            port_groups(&[
                p(Proto::Tcp, Some(80), None),
                p(Proto::Udp, Some(53), None),
                p(Proto::Tcp, Some(8000), Some(8100)),
            ]),
            vec![
                (Some(Proto::Tcp), vec![(80, 80), (8000, 8100)]),
                (Some(Proto::Udp), vec![(53, 53)])
            ]
        );
        assert_eq!(
            port_groups(&[p(Proto::Tcp, Some(80), None), p(Proto::Tcp, None, None)]),
            vec![(Some(Proto::Tcp), vec![])]
        );
    }

    #[test]
    fn the_base_holds_every_policy_and_pod_and_only_local_pods_dispatch() {
        let c = quick();
        let fw = Fw::compile(&c);
        let policy_chains = fw.chains.keys().filter(|n| n.starts_with('p')).count();
        let directions: usize = c
            .policies
            .iter()
            .map(|p| usize::from(p.ingress.is_some()) + usize::from(p.egress.is_some()))
            .sum();
        assert_eq!(policy_chains, directions);
        // Every namespace denies ingress by default: every local pod has an
        // ingress chain, and only local pods.
        let ingress: BTreeSet<Ipv4Addr> = fw
            .dispatch
            .keys()
            .filter(|(d, _)| *d == Dir::Ingress)
            .map(|(_, ip)| *ip)
            .collect();
        let local: BTreeSet<Ipv4Addr> = c.local_pods().map(|p| p.ip).collect();
        assert_eq!(ingress, local);
        // Every pod is in some set.
        let members: BTreeSet<Ipv4Addr> = fw
            .sets
            .values()
            .filter_map(|s| match s {
                SetDef::Addrs(a) => Some(a.iter().copied()),
                SetDef::Block { .. } => None,
            })
            .flatten()
            .collect();
        // Most pods are some rule's peer (not all: no rule names some
        // apps of some namespaces).
        let all: BTreeSet<Ipv4Addr> = c.pods.iter().map(|p| p.ip).collect();
        assert!(members.is_subset(&all));
        assert!(
            members.len() * 10 >= all.len() * 9,
            "{} of {}",
            members.len(),
            all.len()
        );
        // The same base in both languages.
        let nft = Delta::nft_base(&fw);
        assert_eq!(
            nft.matches(" accept\n").count(),
            fw.size().1 - local_drops(&fw) + 2
        );
        let ipt = Delta::iptables_base(&fw);
        let sets = ipt.sets.unwrap();
        assert_eq!(sets.matches("create ").count(), fw.sets.len());
        assert_eq!(
            ipt.rules.unwrap().matches(" -j ACCEPT\n").count(),
            fw.size().1 - local_drops(&fw) + 2
        );
    }

    /// Rules that are not accepts: the pod chains' jumps and drops.
    fn local_drops(fw: &Fw) -> usize {
        fw.chains
            .values()
            .flat_map(|c| &c.rules)
            .filter(|r| r.verdict != Verdict::Accept)
            .count()
    }

    /// For each kind, the delta takes the state before to the state after,
    /// and has the shape an enforcer would give it.
    #[test]
    fn each_change_translates_to_the_delta_of_its_kind() {
        let mut c = quick();
        let mut fw = Fw::compile(&c);
        for (k, kind) in KINDS.into_iter().enumerate() {
            for i in 0..3 {
                apply(
                    &mut c,
                    kind,
                    i,
                    std::net::Ipv4Addr::new(10, 199, 1, 100 + (4 * k + i) as u8),
                )
                .unwrap();
                let after = Fw::compile(&c);
                let d = Delta::between(&fw, &after);
                assert_eq!(d.apply(&fw), after, "{kind:?} {i}");
                assert!(!d.is_empty(), "{kind:?} {i}: no work");
                let only_elements = d.new_sets.is_empty()
                    && d.new_chains.is_empty()
                    && d.refilled.is_empty()
                    && d.dispatch_add.is_empty()
                    && d.dispatch_del.is_empty()
                    && d.gone_chains.is_empty()
                    && d.gone_sets.is_empty();
                match kind {
                    Kind::PolicyEdited => {
                        assert_eq!(d.refilled.len(), 1, "{d:?}");
                        assert!(
                            d.added.is_empty() && d.removed.is_empty() && d.new_chains.is_empty()
                        );
                        let nft = d.nft();
                        assert!(
                            nft.starts_with("flush chain inet palisade_churn p"),
                            "{nft}"
                        );
                        assert!(nft.contains(&(20_000 + i).to_string()), "{nft}");
                    }
                    Kind::PolicyAdded => {
                        assert_eq!(d.new_chains.len(), 1, "{d:?}");
                        assert!(!d.refilled.is_empty(), "a local pod's chain jumps to it");
                    }
                    Kind::PolicyDeleted => {
                        assert_eq!(d.gone_chains.len(), 1, "{d:?}");
                        assert!(!d.refilled.is_empty());
                        let nft = d.nft();
                        let (flush, delete) = (
                            nft.rfind("flush chain").unwrap(),
                            nft.find("delete chain").unwrap(),
                        );
                        assert!(flush < delete, "{nft}");
                    }
                    Kind::RemotePodAdded => {
                        assert!(only_elements && d.removed.is_empty(), "{d:?}");
                    }
                    Kind::RemotePodRemoved => {
                        assert!(only_elements && d.added.is_empty(), "{d:?}");
                        assert_eq!(d.iptables().rules, None, "sets only");
                    }
                    Kind::LocalPodAdded | Kind::LocalPodAfterVeth => {
                        assert!(!d.added.is_empty() && !d.dispatch_add.is_empty(), "{d:?}");
                        assert!(d.new_chains.iter().all(|(n, _)| n.starts_with('q')));
                    }
                    Kind::PodRelabelled => {
                        // Other policies select it: its own chains are
                        // refilled (and sets naming its labels change).
                        assert!(!d.refilled.is_empty(), "{d:?}");
                        assert!(d.refilled.iter().all(|(n, _)| n.starts_with('q')));
                        assert!(d.new_chains.is_empty() && d.gone_chains.is_empty());
                    }
                    Kind::NamespaceRelabelled => {
                        // Its pods join or leave the team selectors' sets.
                        assert!(only_elements, "{d:?}");
                        assert!(!d.added.is_empty() || !d.removed.is_empty());
                    }
                }
                fw = after;
            }
        }
    }

    #[test]
    fn rules_render_in_each_language() {
        let rule = Rule {
            peer: Peer::Block {
                set: "bx".into(),
                cidr: Net {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    len: 8,
                },
                except: vec![Net {
                    addr: Ipv4Addr::new(10, 32, 0, 0),
                    len: 12,
                }],
            },
            proto: Some(Proto::Tcp),
            ports: vec![(443, 443), (8000, 8100)],
            verdict: Verdict::Accept,
        };
        assert_eq!(
            nft_rule(Dir::Ingress, &rule),
            " ip saddr 10.0.0.0/8 ip saddr != { 10.32.0.0/12 } tcp dport { 443, 8000-8100 } accept"
        );
        assert_eq!(
            ipt_rule("c", Dir::Egress, &rule),
            "-A c -m set --match-set bx dst -p tcp -m multiport --dports 443,8000:8100 -j ACCEPT"
        );
        let jump = Rule {
            peer: Peer::Any,
            proto: None,
            ports: vec![],
            verdict: Verdict::Jump("p1i".into()),
        };
        assert_eq!(nft_rule(Dir::Ingress, &jump), " jump p1i");
        assert_eq!(ipt_rule("q", Dir::Ingress, &jump), "-A q -j p1i");
    }

    /// At the bench's scale: every policy has its chains, and what the
    /// bench computes for each change stays small next to the change.
    #[test]
    fn the_full_scale_rule_set_holds_every_policy() {
        use crate::churn::model::{FULL, tests::local_ips};
        let mut c = Cluster::generate(FULL, &local_ips(FULL.local));
        let start = std::time::Instant::now();
        let fw = Fw::compile(&c);
        let compile = start.elapsed();
        let chains = fw.chains.keys().filter(|n| n.starts_with('p')).count();
        assert!(chains >= FULL.policies, "{chains} policy chains");
        let (sets, rules, elements) = fw.size();
        apply(&mut c, Kind::NamespaceRelabelled, 0, Ipv4Addr::LOCALHOST).unwrap();
        let start = std::time::Instant::now();
        let d = Delta::between(&fw, &Fw::compile(&c));
        let change = start.elapsed();
        assert!(!d.added.is_empty() || !d.removed.is_empty());
        println!(
            "full scale: {sets} sets, {rules} rules, {elements} elements; compile {compile:?}, a change {change:?}"
        );
    }

    #[test]
    fn names_fit_iptables_and_ipset() {
        let fw = Fw::compile(&quick());
        assert!(fw.chains.keys().all(|n| n.len() <= 28));
        assert!(fw.sets.keys().all(|n| n.len() <= 31));
    }
}
