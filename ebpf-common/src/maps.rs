//! Map names and the layouts the daemon expects of them.
//!
//! Names fit in 15 bytes (the kernel truncates longer ones). The daemon
//! checks every pinned map against [`SPECS`] before reusing it, because aya
//! reuses a pinned map without looking at its layout. `max_entries` here is
//! the default; the daemon may configure another size per map, and then
//! checks against that.

use core::mem::size_of;

use crate::{
    datapath::{
        ADDR_LEN, CounterCell, CounterKey, Ct4Key, Ct6Key, CtValue, EndpointSlot, EndpointValue,
        FragKey, FragValue, IdentityValue, PolicyKey, PolicyValue, SourcePrefixKey, XdpPodDenyKey,
    },
    lsm::{DecisionKey, LsmConfig, PathRule, PatternSet, PodSets, RuleData},
    stats::{Counter, STATS_ENTRIES},
};

pub const XDP_STATS: &str = "PAL_XDP_STATS";
pub const TC_STATS: &str = "PAL_TC_STATS";
pub const LSM_STATS: &str = "PAL_LSM_STATS";
/// The stats maps: per-CPU [`Counter`]s by direction and reason.
pub const STATS: [&str; 3] = [XDP_STATS, TC_STATS, LSM_STATS];
/// Pod cgroup id -> [`crate::lsm::PodSets`].
pub const LSM_PODS: &str = "PAL_LSM_PODS";
/// (rule set, path) -> [`crate::lsm::PathRule`], longest prefix.
pub const LSM_RULES: &str = "PAL_LSM_RULES";
/// (rule set, executable) -> the set for processes running it.
pub const LSM_SOURCES: &str = "PAL_LSM_SOURCES";
/// Rule set id -> its patterns, [`crate::lsm::PatternSet`].
pub const LSM_PATTERNS: &str = "PAL_LSM_PATTERN";
/// One [`crate::lsm::LsmConfig`].
pub const LSM_CONFIG: &str = "PAL_LSM_CONFIG";
/// Block and Audit decisions by (policy, hook, action).
pub const LSM_DECIDE: &str = "PAL_LSM_DECIDE";
pub const LSM_EVENTS: &str = "PAL_LSM_EVENTS";
pub const IDENTITY: &str = "PAL_IDENTITY";
/// Single addresses (pods, nodes): exact match, looked up before the trie.
pub const IDENTITY_HOST: &str = "PAL_IDENT_HOST";
pub const ENDPOINTS: &str = "PAL_ENDPOINTS";
/// Endpoints by a slot of their interface's index, before `PAL_ENDPOINTS`
/// ([`crate::datapath::EndpointSlot`]).
pub const ENDPOINT_SLOTS: &str = "PAL_EP_SLOTS";
/// Whether each endpoint ever tracked a flow opened in each direction
/// ([`crate::datapath::opened_index`]).
pub const OPENED: &str = "PAL_EP_OPENED";
pub const POLICY: &str = "PAL_POLICY";
/// Entries for one protocol and one port: exact match, looked up before the
/// trie, which then only holds ranges and wildcards.
pub const POLICY_PORT: &str = "PAL_POLICY_PORT";
/// (endpoint, prefix) -> 1: the prefixes a pod may send from besides its
/// own address ([`crate::datapath::SourcePrefixKey`]), read only for a
/// packet whose source is not the pod's.
pub const SOURCE_PREFIXES: &str = "PAL_SRC_PREFIX";
pub const CT4: &str = "PAL_CT4";
pub const CT6: &str = "PAL_CT6";
/// Both conntrack maps.
pub const CT: [&str; 2] = [CT4, CT6];
/// One u32 the daemon bumps after every change of policy or identities;
/// conntrack entries judged under an older epoch are judged again.
pub const EPOCH: &str = "PAL_EPOCH";
pub const FRAGS: &str = "PAL_FRAGS";
pub const COUNTERS: &str = "PAL_COUNTERS";
pub const COUNTER_CELLS: &str = "PAL_CNT_CELLS";
pub const XDP_DENY: &str = "PAL_XDP_DENY";
pub const EVENTS: &str = "PAL_EVENTS";
pub const XDP_POD_DENY: &str = "PAL_XDP_PODDENY";
/// Single addresses of the node-level deny list: exact match, looked up
/// before the trie (`PAL_XDP_DENY`), which then only holds prefixes.
pub const XDP_DENY_HOST: &str = "PAL_XDP_DENYHST";
/// Pod address -> [`crate::datapath::xdp_pod_gate`] bits.
pub const XDP_POD_DST: &str = "PAL_XDP_PODDST";
/// The node's addresses no pod may announce or send from -> 1: its IPv6
/// link-local ones (since ABI 13), and its bridges' IPv4 ones, IPv4-mapped
/// (an extension older programs ignore: they look only at link-local
/// keys). Named for what it first held.
pub const NODE_LINK_LOCAL: &str = "PAL_NODE_LL";

/// Default sizes. The programs are compiled with these; the loader resizes.
pub mod size {
    pub const IDENTITY: u32 = 16_384;
    pub const IDENTITY_HOST: u32 = 65_536;
    pub const ENDPOINTS: u32 = 1_024;
    pub const POLICY: u32 = 65_536;
    pub const POLICY_PORT: u32 = 131_072;
    /// A pod may list 16 (`daemon::source::objects`): 64 such pods.
    pub const SOURCE_PREFIXES: u32 = 1_024;
    /// Both local endpoints of a pod-to-pod flow track it, so 65,536 held
    /// a flood of 64k flows between two pods only by evicting every flow
    /// before its next packet; this is the size of Cilium's default table
    /// for non-TCP flows (since ABI 7).
    pub const CT4: u32 = 262_144;
    pub const CT6: u32 = 32_768;
    pub const FRAGS: u32 = 8_192;
    pub const COUNTERS: u32 = 16_384;
    pub const XDP_DENY: u32 = 16_384;
    pub const XDP_POD_DENY: u32 = 16_384;
    pub const XDP_DENY_HOST: u32 = 65_536;
    pub const XDP_POD_DST: u32 = 4_096;
    /// One per interface of the node, host-side veths included, and the
    /// bridges' IPv4 addresses.
    pub const NODE_LINK_LOCAL: u32 = 4_096;
    /// Bytes, a power of two multiple of the page size: ~4600 events.
    pub const EVENTS: u32 = 256 * 1024;
    pub const LSM_PODS: u32 = 4_096;
    pub const LSM_RULES: u32 = 65_536;
    pub const LSM_SOURCES: u32 = 4_096;
    /// Rule sets with patterns (allocated as used: about 8.6 KiB each).
    pub const LSM_PATTERNS: u32 = 1_024;
    pub const LSM_DECIDE: u32 = 4_096;
    /// Bytes: ~800 events.
    pub const LSM_EVENTS: u32 = 256 * 1024;
}

/// Kernel map type numbers (`enum bpf_map_type`), the subset we use.
pub mod kind {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
}

/// What a pinned map must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec<K, V>(name: &'static str, map_type: u32, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
    }
}

/// An LPM trie key: a 4-byte prefix length, then the data.
const fn lpm<D>(name: &'static str, value_size: u32, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        map_type: kind::LPM_TRIE,
        key_size: 4 + size_of::<D>() as u32,
        value_size,
        max_entries,
    }
}

const fn stats(name: &'static str) -> MapSpec {
    spec::<u32, Counter>(name, kind::PERCPU_ARRAY, STATS_ENTRIES)
}

/// Every map the daemon pins, with its expected layout.
pub const SPECS: &[MapSpec] = &[
    stats(XDP_STATS),
    stats(TC_STATS),
    stats(LSM_STATS),
    spec::<u64, PodSets>(LSM_PODS, kind::HASH, size::LSM_PODS),
    lpm::<RuleData>(LSM_RULES, size_of::<PathRule>() as u32, size::LSM_RULES),
    lpm::<RuleData>(LSM_SOURCES, size_of::<u32>() as u32, size::LSM_SOURCES),
    spec::<u32, PatternSet>(LSM_PATTERNS, kind::HASH, size::LSM_PATTERNS),
    spec::<u32, LsmConfig>(LSM_CONFIG, kind::ARRAY, 1),
    spec::<DecisionKey, u64>(LSM_DECIDE, kind::PERCPU_HASH, size::LSM_DECIDE),
    MapSpec {
        name: LSM_EVENTS,
        map_type: kind::RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: size::LSM_EVENTS,
    },
    lpm::<[u8; ADDR_LEN]>(IDENTITY, size_of::<IdentityValue>() as u32, size::IDENTITY),
    spec::<[u8; ADDR_LEN], IdentityValue>(IDENTITY_HOST, kind::HASH, size::IDENTITY_HOST),
    spec::<u32, EndpointValue>(ENDPOINTS, kind::HASH, size::ENDPOINTS),
    spec::<u32, EndpointSlot>(
        crate::maps::ENDPOINT_SLOTS,
        kind::ARRAY,
        crate::datapath::ENDPOINT_SLOTS,
    ),
    spec::<u32, u32>(OPENED, kind::ARRAY, crate::datapath::OPENED_SLOTS * 2),
    lpm::<PolicyKey>(POLICY, size_of::<PolicyValue>() as u32, size::POLICY),
    spec::<PolicyKey, PolicyValue>(POLICY_PORT, kind::HASH, size::POLICY_PORT),
    lpm::<SourcePrefixKey>(
        SOURCE_PREFIXES,
        size_of::<u32>() as u32,
        size::SOURCE_PREFIXES,
    ),
    spec::<Ct4Key, CtValue>(CT4, kind::LRU_HASH, size::CT4),
    spec::<Ct6Key, CtValue>(CT6, kind::LRU_HASH, size::CT6),
    spec::<u32, u32>(EPOCH, kind::ARRAY, 1),
    spec::<FragKey, FragValue>(FRAGS, kind::LRU_HASH, size::FRAGS),
    spec::<CounterKey, Counter>(COUNTERS, kind::PERCPU_HASH, size::COUNTERS),
    spec::<u32, CounterCell>(
        COUNTER_CELLS,
        kind::PERCPU_ARRAY,
        crate::datapath::COUNTER_CELLS,
    ),
    lpm::<[u8; ADDR_LEN]>(XDP_DENY, size_of::<u32>() as u32, size::XDP_DENY),
    spec::<XdpPodDenyKey, u32>(XDP_POD_DENY, kind::HASH, size::XDP_POD_DENY),
    spec::<[u8; ADDR_LEN], u32>(XDP_DENY_HOST, kind::HASH, size::XDP_DENY_HOST),
    spec::<[u8; ADDR_LEN], u32>(XDP_POD_DST, kind::HASH, size::XDP_POD_DST),
    spec::<[u8; ADDR_LEN], u32>(NODE_LINK_LOCAL, kind::HASH, size::NODE_LINK_LOCAL),
    MapSpec {
        name: EVENTS,
        map_type: kind::RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: size::EVENTS,
    },
];

const fn fits_in_kernel_name(name: &str) -> bool {
    name.len() <= 15
}

const _: () = {
    let mut i = 0;
    while i < SPECS.len() {
        assert!(fits_in_kernel_name(SPECS[i].name));
        i += 1;
    }
};

/// Program names, also 15 bytes at most: they name the pinned programs.
pub mod programs {
    pub const XDP_PREFILTER: &str = "pal_xdp_pre";
    pub const XDP_FROM_POD: &str = "pal_xdp_from_pod";
    pub const TC_FROM_POD: &str = "pal_tc_from_pod";
    pub const TC_TO_POD: &str = "pal_tc_to_pod";
    pub const LSM_EXEC: &str = "pal_lsm_exec";
    pub const LSM_FILE_OPEN: &str = "pal_lsm_open";
    pub const LSM_UNLINK: &str = "pal_lsm_unlink";
    pub const LSM_RENAME: &str = "pal_lsm_rename";
    pub const LSM_RENAME_TO: &str = "pal_lsm_rename_to";
    pub const LSM_LINK: &str = "pal_lsm_link";
    pub const LSM_TRUNCATE: &str = "pal_lsm_trunc";
    pub const LSM_CHMOD: &str = "pal_lsm_chmod";
    pub const LSM_CHOWN: &str = "pal_lsm_chown";
    pub const LSM_MKNOD: &str = "pal_lsm_mknod";
    pub const LSM_MKDIR: &str = "pal_lsm_mkdir";
    pub const LSM_SYMLINK: &str = "pal_lsm_symlink";
    pub const LSM_RMDIR: &str = "pal_lsm_rmdir";
    pub const LSM_SETXATTR: &str = "pal_lsm_setxattr";
    pub const LSM_RMXATTR: &str = "pal_lsm_rmxattr";
    pub const LSM_SET_ACL: &str = "pal_lsm_set_acl";
    pub const LSM_RM_ACL: &str = "pal_lsm_rm_acl";
}
