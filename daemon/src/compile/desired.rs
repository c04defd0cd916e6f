//! The desired state: what the compiler wants the kernel to hold, as plain
//! data. [`Compiled`] is the cluster's (every pod, every address); a
//! [`Desired`] is one node's share of it (the pods placed on this node's
//! veths, the quarantined veths, the prefilter's denies), which the syncer
//! brings the kernel to. How any of it is encoded in map keys is the
//! datapath's business, not this module's.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, LazyLock},
};

use ebpf_common::datapath::{PolicyValue, endpoint_flags};
use ipnet::IpNet;

use crate::{
    identity::IdentityKey,
    model::{Pod, Snapshot, SourceCheck, SourcePrefixes, limits::MAX_FURTHER_ADDRESSES_PER_POD},
    source::objects::{SOURCE_CHECK_ANNOTATION, SOURCE_PREFIXES_ANNOTATION},
};

/// One policy entry before it is placed in a generation: which peer (or
/// `identity::ANY`), protocol (`None` = any protocol, and then any port) and
/// destination port range, and the final verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub direction: u32,
    pub peer: u32,
    pub protocol: Option<u8>,
    pub ports: (u16, u16),
    pub value: PolicyValue,
}

/// The policy of one endpoint (one pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub flags: u32,
    /// Sorted and without duplicates. Shared: a pass records the policy it
    /// wrote, and compares the next one's with it, by the pointer first.
    pub entries: Arc<[PolicyEntry]>,
}

impl EndpointPolicy {
    /// The policy of `entries` in the compiler's order: one entry per
    /// (direction, peer, protocol, ports), the first policy's (lowest id,
    /// the one counters name). Resolved entries never repeat a key, so
    /// this only merges NetworkPolicy-style allows.
    pub fn of(flags: u32, mut entries: Vec<PolicyEntry>) -> Self {
        entries.sort_by_key(|e| (e.direction, e.peer, e.protocol, e.ports, e.value.policy));
        entries.dedup_by_key(|e| (e.direction, e.peer, e.protocol, e.ports));
        Self {
            flags,
            entries: entries.into(),
        }
    }
}

/// The compiler's output for a whole snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub identities: BTreeMap<IdentityKey, u32>,
    /// Address prefixes and their identity: each pod address as a host
    /// prefix, each ipBlock prefix as itself.
    pub addresses: BTreeMap<IpNet, u32>,
    /// By `namespace/pod`.
    pub endpoints: BTreeMap<String, EndpointPolicy>,
    /// Policy ids (as counted by the datapath) by `namespace/name`.
    pub policies: BTreeMap<String, u32>,
}

/// One stateless deny of the XDP prefilter: TCP SYNs from `peer` (or
/// `identity::ANY`) to the local pod address `dst` on `port` (`None`: any
/// port), counted under `policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodDeny {
    pub dst: IpAddr,
    pub peer: u32,
    pub port: Option<u16>,
    pub policy: u32,
}

/// The name a quarantined veth is enforced under (`:quarantine/IFINDEX`;
/// no namespace name can start with a colon).
pub const QUARANTINE: &str = ":quarantine";

/// The name the quarantine of veth `ifindex` is enforced under.
pub fn quarantine_name(ifindex: u32) -> String {
    format!("{QUARANTINE}/{ifindex}")
}

/// A pod-like veth whose pod is not known yet: isolated both ways, with no
/// entries, so it passes nothing.
static QUARANTINED: LazyLock<EndpointPolicy> = LazyLock::new(|| EndpointPolicy {
    flags: endpoint_flags::ISOLATED_INGRESS | endpoint_flags::ISOLATED_EGRESS,
    entries: Arc::new([]),
});

/// A placed pod the compiler has no policy for: not isolated.
static UNSELECTED: LazyLock<EndpointPolicy> = LazyLock::new(EndpointPolicy::default);

/// An endpoint to enforce: the host-side veth, the endpoint's id (what the
/// datapath keys its policy and counters by), the policy on it and the
/// sources its packets may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed<'a> {
    pub ifindex: u32,
    pub endpoint: u32,
    pub policy: &'a EndpointPolicy,
    pub sources: Sources,
}

/// The address per family the endpoint holds for a pod's packets to come
/// from (its lowest in the family); `None`: not checked in that family (no
/// address known). The unspecified address stands for none: a pod with an
/// address in one family only may send nothing routable in the other (IPv6
/// link-local sources and the unspecified ones pass, as beside any
/// address). A pod's further addresses in a family go in the prefix map,
/// as host prefixes ([`Sources::beyond_endpoint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// The pod may also send from prefixes ([`Sources::beyond_endpoint`],
    /// written apart from the endpoint: `Desired::source_prefixes`).
    pub prefixes: bool,
    /// The only Ethernet source its frames may have: a bridged pod's MAC,
    /// as the node found it ([`Desired::with_macs`]).
    pub mac: Option<[u8; 6]>,
}

impl Sources {
    /// A pod's addresses, as its `status.podIPs` lists them. A family
    /// they leave out is one the pod has no address in, if they list
    /// any: the kubelet lists every address the runtime gave the pod.
    /// (The Kubernetes source leaves out an address another pod holds
    /// too, `source::kube`: a dual-stack pod whose only address in a
    /// family is in dispute then sends nothing routable in that family
    /// until the dispute ends, rather than sending from anything.) What
    /// the endpoint holds only: whether the prefix map holds more is
    /// [`Sources::of_pod`]'s to say.
    pub fn of(ips: &[IpAddr]) -> Self {
        if ips.is_empty() {
            return Self::default();
        }
        let (held4, held6) = held(ips);
        Self {
            v4: Some(held4.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            v6: Some(held6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            prefixes: false,
            mac: None,
        }
    }

    /// What `pod` may send from: nothing checked where it opted out and
    /// `opt_out` says this node honours that; its further addresses and
    /// its extra prefixes too, the latter where the node honours them.
    pub fn of_pod(pod: &Pod, opt_out: bool) -> Self {
        Self::of_pod_beyond(pod, opt_out, &Self::beyond_endpoint(pod, opt_out))
    }

    /// [`Sources::of_pod`], given what [`Sources::beyond_endpoint`] says.
    fn of_pod_beyond(pod: &Pod, opt_out: bool, beyond: &BTreeSet<IpNet>) -> Self {
        if opted_out(pod, opt_out) {
            Self::default()
        } else {
            Self {
                prefixes: !beyond.is_empty(),
                ..Self::of(&pod.ips)
            }
        }
    }

    /// What `pod` may send from that its endpoint does not hold, for the
    /// prefix map: its further addresses (as host prefixes; its own, so
    /// whatever the node honours), at most
    /// [`MAX_FURTHER_ADDRESSES_PER_POD`] of them, the lowest
    /// ([`Sources::addresses_refused`]), and its extra prefixes
    /// ([`Sources::prefixes`]). None where it is not checked.
    pub fn beyond_endpoint(pod: &Pod, opt_out: bool) -> BTreeSet<IpNet> {
        if opted_out(pod, opt_out) {
            return BTreeSet::new();
        }
        further_addresses(&pod.ips)
            .take(MAX_FURTHER_ADDRESSES_PER_POD)
            .chain(Self::prefixes(pod, opt_out).iter().copied())
            .collect()
    }

    /// The error for a checked `pod` with more further addresses than
    /// [`MAX_FURTHER_ADDRESSES_PER_POD`], if it has: each would be an entry
    /// of the prefix map, which all pods share. Its packets from the
    /// others are dropped as spoofed.
    pub fn addresses_refused(pod: &Pod, opt_out: bool) -> Option<String> {
        if opted_out(pod, opt_out) {
            return None;
        }
        let further = further_addresses(&pod.ips).count();
        (further > MAX_FURTHER_ADDRESSES_PER_POD).then(|| {
            format!(
                "Pod {}: {further} addresses besides the lowest of each family; its packets may come from the lowest {MAX_FURTHER_ADDRESSES_PER_POD} of them only (MAX_FURTHER_ADDRESSES_PER_POD)",
                pod.key()
            )
        })
    }

    /// Why `pod`'s packets leave it unchecked, if they do: it opted out
    /// (and the node honours it), or no address is known. (A family it
    /// has no address in while it has one in the other is checked: see
    /// [`Sources`].)
    pub fn unchecked(pod: &Pod, opt_out: bool) -> Option<String> {
        if opted_out(pod, opt_out) {
            return Some(format!("opted out ({SOURCE_CHECK_ANNOTATION}: \"off\")"));
        }
        pod.ips.is_empty().then(|| "no address known".into())
    }

    /// The prefixes `pod` may send from besides its own addresses: those
    /// its annotation lists, where `opt_out` says this node honours that,
    /// the pod did not opt out altogether and an address of its is known
    /// (nothing is checked otherwise, so they would change nothing).
    pub fn prefixes(pod: &Pod, opt_out: bool) -> &[IpNet] {
        match &pod.source_prefixes {
            SourcePrefixes::List(list)
                if opt_out && !opted_out(pod, opt_out) && !pod.ips.is_empty() =>
            {
                list
            }
            _ => &[],
        }
    }

    /// The error for a `pod` whose prefixes annotation asks for what this
    /// node does not do, or does not read, if any: its sources are then
    /// checked against its own addresses alone.
    pub fn prefixes_refused(pod: &Pod, opt_out: bool) -> Option<String> {
        let why = match &pod.source_prefixes {
            SourcePrefixes::None => return None,
            SourcePrefixes::List(list) if opt_out || list.is_empty() => return None,
            SourcePrefixes::List(_) => format!(
                "{SOURCE_PREFIXES_ANNOTATION} is not honoured on this node (the daemon runs without --allow-source-check-opt-out)"
            ),
            SourcePrefixes::Unreadable(why) => {
                format!("metadata.annotations.{SOURCE_PREFIXES_ANNOTATION}: {why}")
            }
        };
        Some(format!(
            "Pod {}: {why}; its sources are checked against its own addresses only",
            pod.key()
        ))
    }

    /// The error for a `pod` whose annotation asks for what this node does
    /// not do (its sources stay checked), if any.
    pub fn refused(pod: &Pod, opt_out: bool) -> Option<String> {
        let why = match &pod.source_check {
            SourceCheck::On => return None,
            SourceCheck::Off if opt_out => return None,
            SourceCheck::Off => format!(
                "{SOURCE_CHECK_ANNOTATION}: \"off\" is not honoured on this node (the daemon runs without --allow-source-check-opt-out)"
            ),
            SourceCheck::Unreadable(v) => format!(
                "metadata.annotations.{SOURCE_CHECK_ANNOTATION}: {v:?} is neither \"on\" nor \"off\""
            ),
        };
        Some(format!("Pod {}: {why}; its sources are checked", pod.key()))
    }
}

/// The pods of `snapshot` that `is_placed` says are placed on this node,
/// in the snapshot's order. A pass looks at every pod of the cluster, so
/// the caller asks by object ([`crate::model::pod_object`]), not by key.
pub fn placed_pods(snapshot: &Snapshot, is_placed: impl Fn(&Arc<Pod>) -> bool) -> Vec<&Pod> {
    snapshot
        .pods
        .iter()
        .filter(|p| is_placed(p))
        .map(|p| &**p)
        .collect()
}

/// Whether `pod` opted out of the source check and `opt_out` says this
/// node honours that: nothing of it is checked then.
fn opted_out(pod: &Pod, opt_out: bool) -> bool {
    opt_out && pod.source_check == SourceCheck::Off
}

/// The addresses of `ips` a packet's source can be: not an IPv4-mapped
/// IPv6 address, which the datapath drops as malformed wherever it
/// appears.
fn sendable(ips: &[IpAddr]) -> impl Iterator<Item = IpAddr> + '_ {
    ips.iter()
        .copied()
        .filter(|ip| !matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some()))
}

/// The address of each family the endpoint holds: the lowest, so that
/// the order a source lists them in changes nothing.
fn held(ips: &[IpAddr]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut held = (None, None);
    for ip in sendable(ips) {
        match ip {
            IpAddr::V4(a) => held.0 = Some(held.0.map_or(a, |h: Ipv4Addr| h.min(a))),
            IpAddr::V6(a) => held.1 = Some(held.1.map_or(a, |h: Ipv6Addr| h.min(a))),
        }
    }
    held
}

/// A pod's further addresses: those of `ips` a source can be, past the
/// one of their family that the endpoint holds ([`held`]), lowest first
/// and each once, as host prefixes.
fn further_addresses(ips: &[IpAddr]) -> impl Iterator<Item = IpNet> + '_ {
    let (held4, held6) = held(ips);
    let further: BTreeSet<IpAddr> = sendable(ips)
        .filter(|&ip| match ip {
            IpAddr::V4(a) => Some(a) != held4,
            IpAddr::V6(a) => Some(a) != held6,
        })
        .collect();
    further.into_iter().map(IpNet::from)
}

/// A stable, non-zero endpoint id for a pod (`namespace/name`), so counters
/// keep naming the same pod across daemon restarts. Collisions among the
/// current pods are resolved by probing in name order.
pub fn endpoint_ids<'a>(pods: impl Iterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let mut names: Vec<&str> = pods.collect();
    names.sort_unstable();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let mut id = crate::identity::stable_id(name);
        while !used.insert(id) {
            id = id.wrapping_add(1).max(1);
        }
        out.insert(name.to_owned(), id);
    }
    out
}

/// One node's desired kernel state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    /// Every address prefix with its identity (peers on other nodes too).
    pub addresses: &'a BTreeMap<IpNet, u32>,
    /// The endpoints to enforce, by name: `namespace/pod` for the pods on
    /// this node's veths, [`QUARANTINE`]`/IFINDEX` for quarantined veths.
    /// Every other endpoint the maps hold goes.
    pub endpoints: BTreeMap<String, Placed<'a>>,
    /// The prefilter's stateless pod denies; `None`: this node runs no
    /// prefilter, and they are left as they are.
    pub pod_denies: Option<BTreeSet<PodDeny>>,
    /// The node-level deny list: every packet from these sources is dropped
    /// on the uplinks.
    pub node_denies: &'a [IpNet],
    /// The local pods' process and file rule sets; `None`: left as they are.
    pub lsm: Option<&'a super::lsm::LsmDesired>,
    /// (endpoint, prefix): the prefixes placed pods may send from besides
    /// their own addresses ([`Sources::prefixes`]). Every other entry the
    /// map holds goes.
    pub source_prefixes: BTreeSet<(u32, IpNet)>,
}

impl<'a> Desired<'a> {
    /// `compiled` for the pods placed on this node (`namespace/pod` ->
    /// host-side veth ifindex), and the `quarantined` veths. Pods not
    /// placed are not enforced on this node.
    pub fn on_node(
        compiled: &'a Compiled,
        placed: &BTreeMap<String, u32>,
        quarantined: &[u32],
    ) -> Self {
        let mut policies: BTreeMap<String, (u32, &'a EndpointPolicy)> = placed
            .iter()
            .map(|(pod, &ifindex)| {
                let policy = compiled.endpoints.get(pod).unwrap_or(&UNSELECTED);
                (pod.clone(), (ifindex, policy))
            })
            .collect();
        for &ifindex in quarantined {
            policies.insert(quarantine_name(ifindex), (ifindex, &QUARANTINED));
        }
        let ids = endpoint_ids(policies.keys().map(String::as_str));
        let endpoints = policies
            .into_iter()
            .map(|(name, (ifindex, policy))| {
                let endpoint = ids.get(&name).copied().unwrap_or_default();
                (
                    name,
                    Placed {
                        ifindex,
                        endpoint,
                        policy,
                        sources: Sources::default(),
                    },
                )
            })
            .collect();
        Self {
            addresses: &compiled.addresses,
            endpoints,
            pod_denies: None,
            node_denies: &[],
            lsm: None,
            source_prefixes: BTreeSet::new(),
        }
    }

    /// With the sources each placed pod may send from, by `pods` (the
    /// local ones of the snapshot `compiled` came from, [`placed_pods`];
    /// others are passed over); `opt_out`: whether this node honours a
    /// pod's opt-out ([`Sources::of_pod`]).
    pub fn with_sources<'p>(
        mut self,
        pods: impl IntoIterator<Item = &'p Pod>,
        opt_out: bool,
    ) -> Self {
        for pod in pods {
            if let Some(placed) = self.endpoints.get_mut(&pod.key()) {
                let beyond = Sources::beyond_endpoint(pod, opt_out);
                placed.sources = Sources::of_pod_beyond(pod, opt_out, &beyond);
                let endpoint = placed.endpoint;
                self.source_prefixes
                    .extend(beyond.into_iter().map(|net| (endpoint, net)));
            }
        }
        self
    }

    /// With the MAC of each placed pod whose sources are checked, where
    /// the node knows it (`macs`, by pod: a bridged pod's, from the
    /// neighbour entry that placed it). A pod that opted out, or whose
    /// address is not known, is not checked by MAC either.
    pub fn with_macs(mut self, macs: &BTreeMap<String, [u8; 6]>) -> Self {
        for (key, placed) in &mut self.endpoints {
            if placed.sources.v4.is_some() || placed.sources.v6.is_some() {
                placed.sources.mac = macs.get(key).copied();
            }
        }
        self
    }

    /// With the local pods' process and file rule sets.
    pub fn with_lsm(mut self, lsm: &'a super::lsm::LsmDesired) -> Self {
        self.lsm = Some(lsm);
        self
    }

    /// With the prefilter's pod denies for the pods placed here, over all
    /// their addresses in `snapshot` (the one `compiled` came from).
    pub fn with_pod_denies(mut self, snapshot: &Snapshot) -> Self {
        self.pod_denies = Some(super::prefilter::placed_pod_denies(
            &self.endpoints,
            snapshot,
        ));
        self
    }

    /// With no pod denies: a node without uplinks must not keep the denies
    /// of an earlier run's prefilter, which would outlive the policy that
    /// made them.
    pub fn without_pod_denies(mut self) -> Self {
        self.pod_denies = Some(BTreeSet::new());
        self
    }

    /// With the node-level deny list.
    pub fn with_node_denies(mut self, cidrs: &'a [IpNet]) -> Self {
        self.node_denies = cidrs;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplaced_pods_are_left_out_and_quarantined_veths_isolated() {
        let mut compiled = Compiled::default();
        compiled
            .endpoints
            .insert("x/a".into(), EndpointPolicy::default());
        let placed = BTreeMap::from([("x/b".to_owned(), 7)]);
        let d = Desired::on_node(&compiled, &placed, &[9]);
        let names: Vec<&str> = d.endpoints.keys().map(String::as_str).collect();
        assert_eq!(names, [":quarantine/9", "x/b"]);
        assert_eq!(d.endpoints["x/b"].policy.flags, 0, "no policy selects b");
        assert_eq!(
            d.endpoints[":quarantine/9"].policy.flags,
            endpoint_flags::ISOLATED_INGRESS | endpoint_flags::ISOLATED_EGRESS
        );
        assert!(d.pod_denies.is_none());
    }

    #[test]
    fn a_pods_endpoint_holds_one_address_per_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let both = Sources::of(&[ip("10.0.0.1"), ip("fd00::1")]);
        assert_eq!(both.v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(both.v6, "fd00::1".parse().ok());
        assert_eq!(
            Sources::of(&[ip("fd00::1")]).v4,
            Some(Ipv4Addr::UNSPECIFIED),
            "a single-stack pod sends nothing routable in the other family"
        );
        assert_eq!(
            Sources::of(&[ip("10.0.0.1")]).v6,
            Some(Ipv6Addr::UNSPECIFIED)
        );
        assert!(!both.prefixes);
        let two = Sources::of(&[ip("10.0.0.2"), ip("fd00::1"), ip("10.0.0.1")]);
        assert_eq!(
            two.v4,
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "the endpoint holds the lowest address of a family, whatever the order"
        );
        assert_eq!(two.v6, "fd00::1".parse().ok());
        let mut pod = crate::model::standard::pods().next().unwrap();
        pod.ips = vec![ip("10.0.0.2"), ip("fd00::1"), ip("10.0.0.1")];
        assert!(
            Sources::of_pod(&pod, false).prefixes,
            "the other goes in the prefix map"
        );
        let mapped = Sources::of(&[ip("::ffff:10.0.0.1"), ip("10.0.0.1")]);
        assert_eq!(
            mapped.v6,
            Some(Ipv6Addr::UNSPECIFIED),
            "an IPv4-mapped address is no IPv6 source"
        );
        pod.ips = vec![ip("::ffff:10.0.0.1"), ip("10.0.0.1")];
        assert!(!Sources::of_pod(&pod, false).prefixes);
        assert_eq!(Sources::of(&[]), Sources::default());
    }

    #[test]
    fn an_opt_out_is_honoured_only_where_the_node_allows_it() {
        let mut pod = crate::model::standard::pods().next().unwrap();
        assert_eq!(
            Sources::unchecked(&pod, true).as_deref(),
            Some("no address known")
        );
        pod.ips = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(Sources::unchecked(&pod, true), None);
        assert_eq!(Sources::of_pod(&pod, true), Sources::of(&pod.ips));
        pod.ips.push("10.0.0.2".parse().unwrap());
        assert_eq!(Sources::unchecked(&pod, true), None, "several are checked");
        pod.ips.truncate(2);

        pod.source_check = SourceCheck::Off;
        assert_eq!(Sources::of_pod(&pod, true), Sources::default());
        assert_eq!(
            Sources::unchecked(&pod, true).as_deref(),
            Some("opted out (palisade.dev/source-check: \"off\")")
        );
        assert_eq!(Sources::refused(&pod, true), None);
        // A node that does not honour it checks the pod, and says so.
        assert_eq!(Sources::of_pod(&pod, false), Sources::of(&pod.ips));
        assert_eq!(Sources::unchecked(&pod, false), None);
        let refused = Sources::refused(&pod, false).unwrap();
        assert!(
            refused.contains("is not honoured") && refused.ends_with("its sources are checked"),
            "{refused}"
        );

        pod.source_check = SourceCheck::Unreadable("of".into());
        assert_eq!(Sources::of_pod(&pod, true), Sources::of(&pod.ips));
        assert_eq!(Sources::unchecked(&pod, true), None);
        let refused = Sources::refused(&pod, true).unwrap();
        assert!(refused.contains("\"of\" is neither"), "{refused}");
    }

    /// A compile that selects `pod` with no policy, and its placement on
    /// interface 7.
    fn placed_alone(pod: &Pod) -> (Compiled, BTreeMap<String, u32>) {
        let mut compiled = Compiled::default();
        compiled
            .endpoints
            .insert(pod.key(), EndpointPolicy::default());
        (compiled, BTreeMap::from([(pod.key(), 7)]))
    }

    #[test]
    fn a_placed_pods_mac_is_checked_only_with_its_addresses() {
        let mut pod = crate::model::standard::pods().next().unwrap();
        pod.ips = vec!["10.0.0.1".parse().unwrap()];
        let (compiled, placed) = placed_alone(&pod);
        let mac = [2, 0, 0, 0, 0, 7];
        let macs = BTreeMap::from([(pod.key(), mac)]);
        let sources = |pod: &Pod, opt_out, macs: &BTreeMap<String, [u8; 6]>| {
            Desired::on_node(&compiled, &placed, &[])
                .with_sources([pod], opt_out)
                .with_macs(macs)
                .endpoints[&pod.key()]
                .sources
        };
        assert_eq!(sources(&pod, false, &macs).mac, Some(mac));
        // A routed pod: no MAC found.
        assert_eq!(sources(&pod, false, &BTreeMap::new()).mac, None);
        // Opted out, or with no address known: nothing checked.
        let mut off = pod.clone();
        off.source_check = SourceCheck::Off;
        assert_eq!(sources(&off, true, &macs), Sources::default());
        assert_eq!(sources(&off, false, &macs).mac, Some(mac));
        let mut unknown = pod.clone();
        unknown.ips.clear();
        assert_eq!(sources(&unknown, false, &macs), Sources::default());
    }

    #[test]
    fn extra_source_prefixes_are_honoured_only_where_the_node_allows_them() {
        let mut pod = crate::model::standard::pods().next().unwrap();
        pod.ips = vec!["10.0.0.1".parse().unwrap()];
        let net: IpNet = "10.8.0.0/24".parse().unwrap();
        pod.source_prefixes = SourcePrefixes::List(vec![net]);
        let (compiled, placed) = placed_alone(&pod);
        let desired = |pod: &Pod, opt_out| {
            Desired::on_node(&compiled, &placed, &[])
                .with_sources([pod], opt_out)
                .source_prefixes
        };
        let endpoint = Desired::on_node(&compiled, &placed, &[]).endpoints[&pod.key()].endpoint;

        assert_eq!(Sources::prefixes(&pod, true), [net]);
        assert_eq!(desired(&pod, true), BTreeSet::from([(endpoint, net)]));
        assert_eq!(Sources::prefixes_refused(&pod, true), None);
        // The pod's own address stays checked beside them.
        let own = Sources::of(&pod.ips);
        assert_eq!(
            Sources::of_pod(&pod, true),
            Sources {
                prefixes: true,
                ..own
            }
        );
        assert_eq!(Sources::of_pod(&pod, false), own);

        assert!(Sources::prefixes(&pod, false).is_empty());
        assert!(desired(&pod, false).is_empty());
        let refused = Sources::prefixes_refused(&pod, false).unwrap();
        assert!(
            refused.contains("is not honoured") && refused.ends_with("its own addresses only"),
            "{refused}"
        );

        // Opted out altogether, nothing is checked: no prefix to write.
        pod.source_check = SourceCheck::Off;
        assert!(desired(&pod, true).is_empty());
        pod.source_check = SourceCheck::On;

        pod.source_prefixes = SourcePrefixes::Unreadable("\"x\" is not a prefix (a CIDR)".into());
        assert!(desired(&pod, true).is_empty());
        let refused = Sources::prefixes_refused(&pod, true).unwrap();
        assert!(
            refused.contains("source-prefixes: \"x\" is not a prefix"),
            "{refused}"
        );

        // With no address known nothing is checked: they would change
        // nothing, and the status does not list them.
        pod.source_prefixes = SourcePrefixes::List(vec![net]);
        pod.ips.clear();
        assert!(Sources::prefixes(&pod, true).is_empty());
        assert!(desired(&pod, true).is_empty());
    }

    #[test]
    fn further_addresses_of_a_family_go_in_the_prefix_map_whatever_the_node_honours() {
        let mut pod = crate::model::standard::pods().next().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        pod.ips = vec![ip("10.0.0.1"), ip("fd00::1"), ip("10.0.0.2"), ip("fd00::2")];
        let (compiled, placed) = placed_alone(&pod);
        let desired = |pod: &Pod, opt_out| {
            Desired::on_node(&compiled, &placed, &[]).with_sources([pod], opt_out)
        };
        let host = |s: &str| IpNet::from(ip(s));
        for opt_out in [false, true] {
            let d = desired(&pod, opt_out);
            let placed = &d.endpoints[&pod.key()];
            assert_eq!(placed.sources.v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
            assert_eq!(placed.sources.v6, "fd00::1".parse().ok());
            assert!(placed.sources.prefixes);
            assert_eq!(
                d.source_prefixes,
                BTreeSet::from([
                    (placed.endpoint, host("10.0.0.2")),
                    (placed.endpoint, host("fd00::2"))
                ])
            );
            // The status lists annotated prefixes only.
            assert!(Sources::prefixes(&pod, opt_out).is_empty());
        }
        // Beside an annotated prefix, which the status lists alone.
        let net: IpNet = "10.8.0.0/24".parse().unwrap();
        pod.source_prefixes = SourcePrefixes::List(vec![net]);
        let d = desired(&pod, true);
        let endpoint = d.endpoints[&pod.key()].endpoint;
        assert_eq!(
            d.source_prefixes,
            BTreeSet::from([
                (endpoint, host("10.0.0.2")),
                (endpoint, host("fd00::2")),
                (endpoint, net)
            ])
        );
        assert_eq!(Sources::prefixes(&pod, true), [net]);
        pod.source_prefixes = SourcePrefixes::None;

        pod.source_check = SourceCheck::Off;
        assert!(desired(&pod, true).source_prefixes.is_empty());
        assert_eq!(desired(&pod, false).source_prefixes.len(), 2);
        pod.source_check = SourceCheck::On;

        // Repeated and IPv4-mapped addresses are no further address; past
        // the limit the lowest are kept, with an error.
        pod.ips.extend([ip("10.0.0.1"), ip("::ffff:10.0.0.9")]);
        assert_eq!(desired(&pod, false).source_prefixes.len(), 2);
        assert_eq!(Sources::addresses_refused(&pod, false), None);
        pod.ips
            .extend((0..=MAX_FURTHER_ADDRESSES_PER_POD as u8).map(|n| ip(&format!("10.1.0.{n}"))));
        let kept = desired(&pod, false).source_prefixes;
        assert_eq!(kept.len(), MAX_FURTHER_ADDRESSES_PER_POD);
        assert!(
            kept.iter().any(|&(_, n)| n == host("10.0.0.2")),
            "the lowest are kept"
        );
        assert!(!kept.iter().any(|&(_, n)| n == host("fd00::2")));
        let refused = Sources::addresses_refused(&pod, false).unwrap();
        assert!(
            refused.contains("19 addresses besides the lowest"),
            "{refused}"
        );
        pod.source_check = SourceCheck::Off;
        assert_eq!(
            Sources::addresses_refused(&pod, true),
            None,
            "nothing is checked"
        );
    }

    #[test]
    fn endpoint_ids_are_stable_distinct_and_nonzero() {
        let a = endpoint_ids(["x/a", "x/b", "y/a"].into_iter());
        let b = endpoint_ids(["y/a", "x/b", "x/a", "z/c"].into_iter());
        assert_eq!(a["x/a"], b["x/a"]);
        assert_eq!(a["y/a"], b["y/a"]);
        let distinct: BTreeSet<u32> = b.values().copied().collect();
        assert_eq!(distinct.len(), 4);
        assert!(!distinct.contains(&0));
    }
}
