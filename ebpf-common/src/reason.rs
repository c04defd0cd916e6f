//! Reason codes for counters and events.
//!
//! Append-only: a code is never renumbered or reused, because pinned counter
//! maps and dashboards outlive any one daemon version.

/// The packet or operation passed because no policy governs this hook.
pub const PASS_UNENFORCED: u32 = 0;
/// A policy entry allowed a new flow.
pub const ALLOW_POLICY: u32 = 1;
/// A reply of a flow allowed in the other direction (conntrack, no lookup).
pub const ALLOW_REPLY: u32 = 2;
/// A later packet of a tracked flow, judged under the current epoch.
pub const ALLOW_ESTABLISHED: u32 = 3;
/// An explicit deny entry matched.
pub const DROP_POLICY_DENY: u32 = 4;
/// The endpoint is isolated in this direction and no entry allowed the flow.
pub const DROP_DEFAULT_DENY: u32 = 5;
/// An audit-mode entry would have dropped the packet; it passed.
pub const AUDIT_WOULD_DROP: u32 = 6;
/// Not IPv4 or IPv6 (ARP and other ethertypes): passes (a pod's ARP only
/// with a sender address of its own).
pub const PASS_NON_IP: u32 = 7;
/// IPv6 neighbour discovery, MLD and router messages: pass (a pod's only
/// from a source, and announcing a target, of its own; never a router
/// advertisement or redirect).
pub const PASS_NEIGHBOUR_DISCOVERY: u32 = 8;
/// Too short for the headers it announces.
pub const DROP_TRUNCATED: u32 = 9;
/// Headers that contradict themselves (IPv4 IHL < 5, bad IPv6 version...).
pub const DROP_MALFORMED: u32 = 10;
/// A non-first fragment whose first fragment was not seen or not allowed.
pub const DROP_FRAGMENT_UNKNOWN: u32 = 11;
/// A non-first fragment of a flow whose first fragment was allowed.
pub const ALLOW_FRAGMENT: u32 = 12;
/// More IPv6 extension headers than the parser walks.
pub const DROP_IPV6_EXT_LIMIT: u32 = 13;
/// The interface is not a Palisade endpoint; nothing to enforce.
pub const PASS_NO_ENDPOINT: u32 = 14;
/// A tracked flow judged again after a policy or identity change and now
/// denied.
pub const DROP_REVALIDATED: u32 = 15;
/// The XDP prefilter's node-level CIDR deny list matched.
pub const DROP_CIDR_DENY: u32 = 16;
/// The flow passed but could not be recorded: the conntrack map refused it.
pub const CT_MAP_FULL: u32 = 17;
/// A detailed counter could not be created: the counter map is full.
pub const COUNTER_MAP_FULL: u32 = 18;
/// More VLAN tags than the parser walks.
pub const DROP_VLAN_LIMIT: u32 = 19;
/// An ICMP error about a tracked flow, passed as part of that flow.
pub const ALLOW_RELATED: u32 = 20;

/// A drop or audit event was not sent: the per-CPU event rate was exceeded.
pub const EVENT_RATE_LIMITED: u32 = 21;
/// A drop or audit event was not sent: the ring buffer was full.
pub const EVENT_LOST: u32 = 22;

/// The XDP prefilter dropped a connection attempt (TCP SYN) to a local pod
/// that an explicit deny forbids: no connection state is needed to know.
pub const DROP_XDP_POD_DENY: u32 = 23;

/// A process or file operation a rule or the section's default allowed.
pub const LSM_ALLOW: u32 = 24;
/// A process or file operation an Audit rule or an audit default let
/// through and reported.
pub const LSM_AUDIT: u32 = 25;
/// A process or file operation blocked (EPERM) by a rule or the default.
pub const LSM_BLOCK: u32 = 26;
/// A path the kernel could not resolve whole (longer than PATH_MAX), or one
/// judged without knowing whether a non-recursive directory covered it:
/// judged by the default or the stricter verdict, and reported.
pub const LSM_UNRESOLVED: u32 = 27;
/// A pod's packet whose source is not the pod's address: it would claim
/// another workload's identity at its peer, or ride on another pod's
/// tracked flow.
pub const DROP_SPOOFED_SOURCE: u32 = 28;
/// An IPv6 router advertisement or redirect sent by a pod: pods are hosts
/// on the pod network, and such a message would make its peers route
/// through the pod (CVE-2020-10749).
pub const DROP_ROUTER_MESSAGE: u32 = 29;
/// A frame from a bridged pod whose Ethernet source is not the pod's MAC:
/// it would teach the bridge that another pod's MAC lives behind this
/// pod's port, and so take that pod's traffic.
pub const DROP_SPOOFED_MAC: u32 = 30;
/// A process or file operation whose judgement was begun again: another
/// task's run on the same CPU took the programs' working memory while this
/// one was preempted (kernels that preempt kernel code).
pub const LSM_INTERLEAVED: u32 = 31;

/// One past the highest code in use; counter arrays are sized from it.
pub const COUNT: u32 = 32;

/// A stable name for each code, as exported in metrics and `palisade status`.
pub const fn name(code: u32) -> &'static str {
    match code {
        PASS_UNENFORCED => "pass_unenforced",
        ALLOW_POLICY => "allow_policy",
        ALLOW_REPLY => "allow_reply",
        ALLOW_ESTABLISHED => "allow_established",
        DROP_POLICY_DENY => "drop_policy_deny",
        DROP_DEFAULT_DENY => "drop_default_deny",
        AUDIT_WOULD_DROP => "audit_would_drop",
        PASS_NON_IP => "pass_non_ip",
        PASS_NEIGHBOUR_DISCOVERY => "pass_neighbour_discovery",
        DROP_TRUNCATED => "drop_truncated",
        DROP_MALFORMED => "drop_malformed",
        DROP_FRAGMENT_UNKNOWN => "drop_fragment_unknown",
        ALLOW_FRAGMENT => "allow_fragment",
        DROP_IPV6_EXT_LIMIT => "drop_ipv6_ext_limit",
        PASS_NO_ENDPOINT => "pass_no_endpoint",
        DROP_REVALIDATED => "drop_revalidated",
        DROP_CIDR_DENY => "drop_cidr_deny",
        CT_MAP_FULL => "ct_map_full",
        COUNTER_MAP_FULL => "counter_map_full",
        DROP_VLAN_LIMIT => "drop_vlan_limit",
        ALLOW_RELATED => "allow_related",
        EVENT_RATE_LIMITED => "event_rate_limited",
        EVENT_LOST => "event_lost",
        DROP_XDP_POD_DENY => "drop_xdp_pod_deny",
        LSM_ALLOW => "lsm_allow",
        LSM_AUDIT => "lsm_audit",
        LSM_BLOCK => "lsm_block",
        LSM_UNRESOLVED => "lsm_unresolved",
        DROP_SPOOFED_SOURCE => "drop_spoofed_source",
        DROP_ROUTER_MESSAGE => "drop_router_message",
        DROP_SPOOFED_MAC => "drop_spoofed_mac",
        LSM_INTERLEAVED => "lsm_interleaved",
        _ => "unknown",
    }
}

/// Whether a code means the packet was dropped.
pub const fn is_drop(code: u32) -> bool {
    matches!(
        code,
        DROP_POLICY_DENY
            | DROP_DEFAULT_DENY
            | DROP_TRUNCATED
            | DROP_MALFORMED
            | DROP_FRAGMENT_UNKNOWN
            | DROP_IPV6_EXT_LIMIT
            | DROP_REVALIDATED
            | DROP_CIDR_DENY
            | DROP_VLAN_LIMIT
            | DROP_XDP_POD_DENY
            | DROP_SPOOFED_SOURCE
            | DROP_ROUTER_MESSAGE
            | DROP_SPOOFED_MAC
            | LSM_BLOCK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_below_count_has_a_distinct_name() {
        let mut seen = [""; COUNT as usize];
        for code in 0..COUNT {
            let n = name(code);
            assert_ne!(n, "unknown", "code {code} has no name");
            assert!(!seen.contains(&n), "name {n} used twice");
            seen[code as usize] = n;
        }
        assert_eq!(name(COUNT), "unknown");
    }
}
