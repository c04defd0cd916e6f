//! Verdict tables for the TC programs, run with BPF_PROG_TEST_RUN on
//! crafted frames against policy written through the syncer's map API.
//!
//! BPF_PROG_TEST_RUN gives a TC program the loopback device of the calling
//! namespace, so the endpoint under test is registered on ifindex 1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use ebpf_common::{
    datapath::{DropEvent, PolicyValue, action, direction, endpoint_flags, identity, policy_flags},
    maps,
};
use palisade::{
    compile::PolicyEntry,
    loader::{self, features::Features},
    observe::stats::read_pinned,
};
use palisade_tests::{
    datapath_harness::{Harness, Hook, LO},
    packet::{ACK, ICMP, ICMPV6, SYN, TCP, UDP, arp, eth, icmp, ipv4, ipv6, tcp, udp, vlan},
};

const EP: u32 = 7;
const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const NET_HOST: [u8; 4] = [10, 0, 1, 5];
const OUTSIDE: [u8; 4] = [8, 8, 8, 8];
const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// The pod of the source-check tests, and a link-local address.
const C: [u8; 4] = [10, 0, 0, 3];
const C6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
const LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const ID_B: u32 = identity::FIRST_ALLOCATED + 1;
const ID_NET: u32 = identity::FIRST_ALLOCATED + 2;
const ID_TUNNELS: u32 = identity::FIRST_ALLOCATED + 3;
const TUNNEL_HOST: [u8; 4] = [10, 0, 2, 7];
const TUNNEL_HOST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
const GRE: u8 = 47;

const IN: u32 = direction::INGRESS;
const OUT: u32 = direction::EGRESS;

fn allow(policy: u32) -> PolicyValue {
    PolicyValue {
        action: action::ALLOW,
        policy,
        ..PolicyValue::default()
    }
}

fn deny(policy: u32, flags: u8) -> PolicyValue {
    PolicyValue {
        action: action::DENY,
        flags,
        policy,
        ..PolicyValue::default()
    }
}

fn entry(
    direction: u32,
    peer: u32,
    protocol: u8,
    ports: (u16, u16),
    value: PolicyValue,
) -> PolicyEntry {
    PolicyEntry {
        direction,
        peer,
        protocol: Some(protocol),
        ports,
        value,
    }
}

fn policy_v1() -> Vec<PolicyEntry> {
    vec![
        entry(IN, ID_B, TCP, (80, 80), allow(11)),
        entry(IN, ID_B, TCP, (22, 22), deny(12, 0)),
        entry(IN, identity::ANY, UDP, (53, 53), allow(13)),
        entry(IN, ID_NET, TCP, (8000, 8099), allow(14)),
        entry(IN, ID_NET, TCP, (9000, 9000), deny(15, policy_flags::AUDIT)),
        entry(OUT, identity::ANY, UDP, (53, 53), allow(16)),
        entry(OUT, ID_B, ICMP, (0, 65535), allow(17)),
        PolicyEntry {
            direction: IN,
            peer: ID_TUNNELS,
            protocol: None,
            ports: (0, 65535),
            value: allow(18),
        },
    ]
}

const ISOLATED: u32 = endpoint_flags::ISOLATED_INGRESS | endpoint_flags::ISOLATED_EGRESS;

/// The datapath with the identities of this file's peers and `policy_v1`
/// on the loopback device, with the default map sizes save `sizes`.
fn harness_sized(sizes: &[&str]) -> anyhow::Result<Harness> {
    let mut h = Harness::load(sizes)?;
    let maps = &mut h.maps;
    maps.set_identity(IpAddr::V4(Ipv4Addr::from(B)), 32, ID_B)?;
    maps.set_identity(IpAddr::V6(Ipv6Addr::from(B6)), 128, ID_B)?;
    maps.set_identity(IpAddr::V4(Ipv4Addr::from(NET_HOST)), 24, ID_NET)?;
    maps.set_identity(IpAddr::V4(Ipv4Addr::from(TUNNEL_HOST)), 24, ID_TUNNELS)?;
    maps.set_identity(IpAddr::V6(Ipv6Addr::from(TUNNEL_HOST6)), 64, ID_TUNNELS)?;
    maps.replace_policy(LO, EP, ISOLATED, &policy_v1())?;
    Ok(h)
}

fn harness() -> anyhow::Result<Harness> {
    harness_sized(&[])
}

fn v4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(src, dst, TCP, (0, 0, false), &tcp(sport, dport, flags)),
    )
}

fn v4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(src, dst, UDP, (0, 0, false), &udp(sport, dport)),
    )
}

// The verdict tables stay one case per line.
#[rustfmt::skip]
#[test]
fn policy_lookup_precedence_and_wildcards() -> anyhow::Result<()> {
    let mut h = harness()?;
    h.expect(IN, &v4_tcp(B, A, 40000, 80, SYN), true, "allow_policy", "B -> A:80 allowed by peer rule")?;
    h.expect(IN, &v4_tcp(B, A, 40001, 81, SYN), false, "drop_default_deny", "B -> A:81 no rule, isolated")?;
    h.expect(IN, &v4_tcp(B, A, 40002, 22, SYN), false, "drop_policy_deny", "B -> A:22 explicit deny")?;
    h.expect(IN, &v4_udp(OUTSIDE, A, 5353, 53), true, "allow_policy", "world -> A:53/udp any-peer rule")?;
    h.expect(IN, &v4_tcp(OUTSIDE, A, 5353, 80, SYN), false, "drop_default_deny", "world -> A:80 not B")?;
    h.expect(IN, &v4_tcp(NET_HOST, A, 1000, 8050, SYN), true, "allow_policy", "CIDR peer inside port range")?;
    h.expect(IN, &v4_tcp(NET_HOST, A, 1001, 8099, SYN), true, "allow_policy", "range end is inclusive")?;
    h.expect(IN, &v4_tcp(NET_HOST, A, 1002, 8100, SYN), false, "drop_default_deny", "just past the range")?;
    h.expect(IN, &v4_tcp(NET_HOST, A, 1003, 9000, SYN), true, "audit_would_drop", "audit deny passes")?;
    h.expect(IN, &v4_udp(B, A, 5000, 54), false, "drop_default_deny", "udp port without rule")?;
    let gre = |src| eth(0x0800, &ipv4(src, A, GRE, (0, 0, false), &[0u8; 8]));
    h.expect(IN, &gre(TUNNEL_HOST), true, "allow_policy", "another IP protocol, any-protocol rule")?;
    h.expect(IN, &gre(B), false, "drop_default_deny", "another IP protocol, no rule")?;
    h.expect(IN, &v4_tcp(TUNNEL_HOST, A, 1, 4444, SYN), true, "allow_policy", "any protocol covers TCP")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn unparseable_and_special_frames_have_their_own_verdicts() -> anyhow::Result<()> {
    let mut h = harness()?;
    h.expect(IN, &eth(0x0806, &[0u8; 28]), true, "pass_non_ip", "ARP always passes")?;
    // BPF_PROG_TEST_RUN refuses frames shorter than Ethernet or whose IPv4
    // header is cut short, so truncation is shown past those points.
    let mut long_ihl = ipv4(B, A, TCP, (0, 0, false), &tcp(1, 80, SYN));
    long_ihl[0] = 0x4f;
    h.expect(IN, &eth(0x0800, &long_ihl), false, "drop_truncated", "IPv4 options past the end")?;
    let mut bad_ihl = ipv4(B, A, TCP, (0, 0, false), &tcp(1, 80, SYN));
    bad_ihl[0] = 0x44;
    h.expect(IN, &eth(0x0800, &bad_ihl), false, "drop_malformed", "IHL below 5")?;
    let short_tcp = ipv4(B, A, TCP, (0, 0, false), &[0u8; 8]);
    h.expect(IN, &eth(0x0800, &short_tcp), false, "drop_truncated", "TCP header cut short")?;
    let v6_short = ipv6(B6, A6, &[], TCP, &[0u8; 4]);
    h.expect(IN, &eth(0x86dd, &v6_short), false, "drop_truncated", "IPv6 TCP header cut short")?;

    let tagged = vlan(1, 0x0800, &ipv4(B, A, TCP, (0, 0, false), &tcp(40010, 80, SYN)));
    h.expect(IN, &tagged, true, "allow_policy", "one VLAN tag is parsed through")?;
    let deep = vlan(3, 0x0800, &ipv4(B, A, TCP, (0, 0, false), &tcp(40011, 80, SYN)));
    h.expect(IN, &deep, false, "drop_vlan_limit", "three VLAN tags")?;

    let ns = ipv6(B6, A6, &[], ICMPV6, &icmp(135, [0; 4], &[0; 16]));
    h.expect(IN, &eth(0x86dd, &ns), true, "pass_neighbour_discovery", "neighbour solicitation")?;
    let v6 = ipv6(B6, A6, &[], TCP, &tcp(40020, 80, SYN));
    h.expect(IN, &eth(0x86dd, &v6), true, "allow_policy", "IPv6 peer rule")?;
    let v6_opts = ipv6(B6, A6, &[60], TCP, &tcp(40021, 80, SYN));
    h.expect(IN, &eth(0x86dd, &v6_opts), true, "allow_policy", "IPv6 behind a destination-options header")?;
    let v6_deep = ipv6(B6, A6, &[0, 60, 60, 60, 60, 60, 60], TCP, &tcp(40022, 80, SYN));
    h.expect(IN, &eth(0x86dd, &v6_deep), false, "drop_ipv6_ext_limit", "seven extension headers")?;
    let v6_other = ipv6(B6, A6, &[], TCP, &tcp(40023, 81, SYN));
    h.expect(IN, &eth(0x86dd, &v6_other), false, "drop_default_deny", "IPv6 port without rule")?;
    Ok(())
}

// Found by the random frames (tests/frames.rs): each of these was judged by
// what lay past a header cut short, or read as another family's ICMP.
#[rustfmt::skip]
#[test]
fn headers_cut_short_or_contradictory_are_not_judged_by_policy() -> anyhow::Result<()> {
    let mut h = harness()?;
    let gre = |src, ihl: u8| {
        let mut p = ipv4(src, A, GRE, (0, 0, false), &[0u8; 8]);
        p[0] = 0x40 | ihl;
        eth(0x0800, &p)
    };
    h.expect(IN, &gre(TUNNEL_HOST, 5), true, "allow_policy", "GRE from the tunnel peers")?;
    h.expect(IN, &gre(TUNNEL_HOST, 15), false, "drop_truncated", "its IPv4 options past the end")?;
    let gre6 = |ext: &[u8], len: u8| {
        let mut p = ipv6(TUNNEL_HOST6, A6, ext, GRE, &[0u8; 8]);
        if !ext.is_empty() {
            p[41] = len;
        }
        eth(0x86dd, &p)
    };
    h.expect(IN, &gre6(&[43], 0), true, "allow_policy", "IPv6 GRE behind a routing header")?;
    h.expect(IN, &gre6(&[43], 116), false, "drop_truncated", "a routing header longer than the frame")?;

    let cut = |proto, l4: &[u8], len| eth(0x0800, &ipv4(B, A, proto, (0, 0, false), &l4[..len]));
    h.expect(IN, &cut(TCP, &tcp(40000, 80, SYN), 19), false, "drop_truncated", "TCP without its 20 bytes")?;
    h.expect(IN, &cut(UDP, &udp(5353, 53), 4), false, "drop_truncated", "UDP with its ports only")?;
    let sctp = [0, 80, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0];
    h.expect(IN, &cut(132, &sctp, 8), false, "drop_truncated", "SCTP without its 12 bytes")?;

    // ICMP is 1 in IPv4 and 58 in IPv6: neighbour discovery in IPv4 is
    // protocol 58, no rule for which admits B.
    let nd4 = eth(0x0800, &ipv4(B, A, ICMPV6, (0, 0, false), &icmp(135, [0; 4], &[0; 16])));
    h.expect(IN, &nd4, false, "drop_default_deny", "ICMPv6's number in IPv4 is not neighbour discovery")?;

    // An ICMP error quotes a flow only if the quote is an IP header.
    h.expect(OUT, &v4_udp(A, B, 4000, 53), true, "allow_policy", "egress DNS allowed")?;
    let error = |first: u8| {
        let mut quoted = ipv4(A, B, UDP, (0, 0, false), &udp(4000, 53));
        quoted[0] = first;
        eth(0x0800, &ipv4(B, A, ICMP, (0, 0, false), &icmp(3, [0; 4], &quoted)))
    };
    h.expect(IN, &error(0x45), true, "allow_related", "an error quoting the flow")?;
    h.expect(IN, &error(0x05), false, "drop_default_deny", "a quote of IP version 0")?;
    h.expect(IN, &error(0x40), false, "drop_default_deny", "a quote whose IHL is 0")?;

    // IPv4-mapped IPv6 addresses are no IPv6 peer's, and would take the
    // IPv4 address's identity (B may reach A:80).
    let mut mapped = [0u8; 16];
    mapped[10..12].copy_from_slice(&[0xff, 0xff]);
    mapped[12..].copy_from_slice(&B);
    let v6 = |src, dst| eth(0x86dd, &ipv6(src, dst, &[], TCP, &tcp(40030, 80, SYN)));
    h.expect(IN, &v6(mapped, A6), false, "drop_malformed", "an IPv4-mapped source")?;
    h.expect(OUT, &v6(A6, mapped), false, "drop_malformed", "an IPv4-mapped destination")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn fragments_follow_their_first_fragment() -> anyhow::Result<()> {
    let mut h = harness()?;
    let orphan = ipv4(OUTSIDE, A, UDP, (77, 185, false), &[0u8; 32]);
    h.expect(IN, &eth(0x0800, &orphan), false, "drop_fragment_unknown", "no first fragment seen")?;
    let first = ipv4(OUTSIDE, A, UDP, (78, 0, true), &udp(5353, 53));
    h.expect(IN, &eth(0x0800, &first), true, "allow_policy", "first fragment, allowed")?;
    let later = ipv4(OUTSIDE, A, UDP, (78, 185, false), &[0u8; 32]);
    h.expect(IN, &eth(0x0800, &later), true, "allow_fragment", "later fragment of an allowed first")?;
    let denied_first = ipv4(OUTSIDE, A, UDP, (79, 0, true), &udp(5353, 54));
    h.expect(IN, &eth(0x0800, &denied_first), false, "drop_default_deny", "first fragment denied")?;
    let denied_later = ipv4(OUTSIDE, A, UDP, (79, 185, false), &[0u8; 32]);
    h.expect(IN, &eth(0x0800, &denied_later), false, "drop_fragment_unknown", "its later fragment")?;

    // IPv6, with destination options after the fragment header: only the
    // first fragment has them and the UDP header behind them; every
    // fragment's fragment header names the options as its next header.
    let v6_fragment = |ext: &[u8], proto, offset: u16, more: bool, payload: &[u8]| {
        let mut p = ipv6(B6, A6, ext, proto, payload);
        p[42..44].copy_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
        p[44..48].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        eth(0x86dd, &p)
    };
    let first = v6_fragment(&[44, 60], UDP, 0, true, &udp(5353, 53));
    h.expect(IN, &first, true, "allow_policy", "IPv6 first fragment, options after its fragment header")?;
    let later = v6_fragment(&[44], 60, 185, false, &[0u8; 32]);
    h.expect(IN, &later, true, "allow_fragment", "its later fragment, which has no options")?;
    // Keyed by that next header: a fragment naming UDP there is another datagram's.
    let other = v6_fragment(&[44], UDP, 370, false, &[0u8; 32]);
    h.expect(IN, &other, false, "drop_fragment_unknown", "a fragment of the same id, UDP next")?;
    // Two fragment headers: which id keys the datagram would be a guess.
    let twice = v6_fragment(&[44, 44], UDP, 0, true, &udp(5353, 53));
    h.expect(IN, &twice, false, "drop_malformed", "a first fragment with a second fragment header")?;
    let mut twice_later = v6_fragment(&[44, 44], UDP, 0, false, &[0u8; 32]);
    let at = 14 + 48 + 2; // the second fragment header's offset field
    twice_later[at..at + 2].copy_from_slice(&(185u16 << 3).to_be_bytes());
    h.expect(IN, &twice_later, false, "drop_malformed", "an atomic fragment, then a later fragment's header")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn conntrack_replies_related_errors_and_revalidation() -> anyhow::Result<()> {
    let mut h = harness()?;
    h.expect(IN, &v4_tcp(B, A, 40000, 80, SYN), true, "allow_policy", "SYN opens the flow")?;
    h.expect(OUT, &v4_tcp(A, B, 80, 40000, SYN | ACK), true, "allow_reply", "SYN-ACK passes as a reply")?;
    h.expect(IN, &v4_tcp(B, A, 40000, 80, ACK), true, "allow_established", "ACK of a tracked flow")?;
    h.expect(OUT, &v4_tcp(A, B, 5555, 5555, SYN), false, "drop_default_deny", "new egress flow, isolated")?;

    // ICMP echo: the identifier pairs a reply with its request.
    let echo = |src, dst, kind: u8, id: u16| {
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        eth(0x0800, &ipv4(src, dst, ICMP, (0, 0, false), &icmp(kind, rest, &[0; 8])))
    };
    h.expect(OUT, &echo(A, B, 8, 99), true, "allow_policy", "echo request to B allowed")?;
    h.expect(IN, &echo(B, A, 0, 99), true, "allow_reply", "its echo reply")?;
    h.expect(IN, &echo(B, A, 0, 98), false, "drop_default_deny", "a reply nobody asked for")?;
    h.expect(IN, &echo(B, A, 8, 97), false, "drop_default_deny", "echo request to A, isolated")?;

    // ICMP port unreachable about an allowed egress UDP flow.
    h.expect(OUT, &v4_udp(A, B, 4000, 53), true, "allow_policy", "egress DNS allowed")?;
    let quoted = ipv4(A, B, UDP, (0, 0, false), &udp(4000, 53));
    let unreachable = eth(0x0800, &ipv4(B, A, ICMP, (0, 0, false), &icmp(3, [0; 4], &quoted)));
    h.expect(IN, &unreachable, true, "allow_related", "ICMP error about the tracked flow")?;
    let unrelated_quote = ipv4(A, B, UDP, (0, 0, false), &udp(4001, 53));
    let stray = eth(0x0800, &ipv4(B, A, ICMP, (0, 0, false), &icmp(3, [0; 4], &unrelated_quote)));
    h.expect(IN, &stray, false, "drop_default_deny", "ICMP error about no flow")?;

    // A policy change without the port-80 rule cuts the established flow at its next packet.
    let v2: Vec<_> = policy_v1().into_iter().filter(|e| e.ports != (80, 80)).collect();
    let revision = h.maps.replace_policy(LO, EP, ISOLATED, &v2)?;
    assert_eq!(revision, 1);
    h.expect(IN, &v4_tcp(B, A, 40000, 80, ACK), false, "drop_revalidated", "flow cut after the change")?;
    h.expect(OUT, &v4_tcp(A, B, 80, 40000, ACK), false, "drop_default_deny", "its entry is gone")?;
    // Flows the new policy still allows survive the change.
    h.expect(OUT, &v4_udp(A, B, 4000, 53), true, "allow_established", "still allowed after re-check")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn conntrack_keys_both_families_both_sides_and_follows_identity_changes() -> anyhow::Result<()> {
    let mut h = harness()?;
    // IPv6 flows have their own map and the same single-lookup replies.
    let v6 = |src, dst, sport, dport, flags| eth(0x86dd, &ipv6(src, dst, &[], TCP, &tcp(sport, dport, flags)));
    h.expect(IN, &v6(B6, A6, 40100, 80, SYN), true, "allow_policy", "IPv6 SYN opens the flow")?;
    h.expect(OUT, &v6(A6, B6, 80, 40100, SYN | ACK), true, "allow_reply", "its reply")?;
    h.expect(IN, &v6(B6, A6, 40100, 80, ACK), true, "allow_established", "and the rest of it")?;
    h.expect(OUT, &v6(A6, B6, 80, 40101, ACK), false, "drop_default_deny", "a reply to no flow")?;

    // The lower address on either side of the key: the flow is found
    // whichever of its two ends sorts first.
    h.expect(IN, &v4_tcp(NET_HOST, A, 8001, 8001, SYN), true, "allow_policy", "peer above the pod")?;
    h.expect(OUT, &v4_tcp(A, NET_HOST, 8001, 8001, ACK), true, "allow_reply", "reply, equal ports")?;

    // A pod reaching itself through the node: its egress and its ingress
    // are the two halves of one 5-tuple's entry, each judged by its own
    // direction.
    h.expect(OUT, &v4_udp(A, A, 4000, 53), true, "allow_policy", "egress to itself, allowed")?;
    h.expect(IN, &v4_udp(A, A, 4000, 53), true, "allow_policy", "the same packet arriving, judged as ingress")?;
    h.expect(IN, &v4_tcp(A, A, 4001, 81, SYN), false, "drop_default_deny", "ingress not allowed")?;

    // Identities are part of the verdict: B's address taking another
    // identity (new labels) cuts B's flows at their next packet.
    h.expect(IN, &v4_tcp(B, A, 40200, 80, SYN), true, "allow_policy", "B to port 80")?;
    h.expect(IN, &v4_tcp(B, A, 40200, 80, ACK), true, "allow_established", "tracked")?;
    h.maps.set_identity(IpAddr::V4(Ipv4Addr::from(B)), 32, identity::FIRST_ALLOCATED + 50)?;
    h.expect(IN, &v4_tcp(B, A, 40200, 80, ACK), true, "allow_established", "before the new epoch")?;
    h.maps.next_epoch()?;
    h.expect(IN, &v4_tcp(B, A, 40200, 80, ACK), false, "drop_revalidated", "cut once B's identity changed")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn a_policy_swap_replaces_the_old_generation_entirely() -> anyhow::Result<()> {
    let mut h = harness()?;
    let ep = h.maps.endpoint(LO)?.context("endpoint registered")?;
    assert_eq!(ep.revision, 0);
    let v1_keys = h.maps.policy_keys_of(EP, ep.generation())?;
    // 8000-8099 is 3 prefixes: 8000-8063, 8064-8095, 8096-8099; ICMP any
    // port is 1, any protocol is 1.
    assert_eq!(v1_keys.len(), 10, "{} keys", v1_keys.len());

    let v2 = vec![entry(IN, ID_B, TCP, (443, 443), allow(21))];
    h.maps.replace_policy(LO, EP, endpoint_flags::ISOLATED_INGRESS, &v2)?;
    let now = h.maps.endpoint(LO)?.context("endpoint registered")?;
    assert_eq!((now.revision, now.flags), (1, endpoint_flags::ISOLATED_INGRESS));
    assert!(h.maps.policy_keys_of(EP, ep.generation())?.is_empty(), "old generation left behind");
    assert_eq!(h.maps.policy_keys_of(EP, now.generation())?.len(), 1);
    h.expect(IN, &v4_tcp(B, A, 1, 443, SYN), true, "allow_policy", "new rule live")?;
    h.expect(IN, &v4_tcp(B, A, 2, 80, SYN), false, "drop_default_deny", "old rule gone")?;
    h.expect(OUT, &v4_tcp(A, B, 3, 5555, SYN), true, "pass_unenforced", "egress no longer isolated")?;

    h.maps.remove_endpoint(LO)?;
    h.expect(IN, &v4_tcp(B, A, 4, 80, SYN), true, "pass_no_endpoint", "not an endpoint")?;
    Ok(())
}

#[test]
fn a_full_policy_map_is_an_error_and_the_last_good_policy_stays() -> anyhow::Result<()> {
    // policy_v1 has 5 single-port entries: room for 6 holds one generation, not two.
    let mut h = harness_sized(&["PAL_POLICY_PORT=6"])?;
    let before = h.maps.endpoint(LO)?.context("endpoint registered")?;
    let err = h
        .maps
        .replace_policy(LO, EP, ISOLATED, &policy_v1())
        .err()
        .context("a policy that does not fit was accepted")?;
    assert!(err.to_string().contains("PAL_POLICY_PORT"), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    let after = h.maps.endpoint(LO)?.context("endpoint registered")?;
    assert_eq!(after, before, "the endpoint moved to a half-written policy");
    assert!(
        h.maps
            .policy_keys_of(EP, before.generation() ^ 1)?
            .is_empty(),
        "half-written generation left"
    );
    h.expect(
        IN,
        &v4_tcp(B, A, 40000, 80, SYN),
        true,
        "allow_policy",
        "old policy still in force",
    )?;
    Ok(())
}

/// Packets and bytes counted for (policy, reason, direction), from the
/// counter map and the counter cells together, as metrics read them.
fn counted(h: &Harness, policy: u32, reason: u32, dir: u32) -> anyhow::Result<(u64, u64)> {
    let details = palisade::observe::metrics::kernel::details(&h.t.pins)?;
    Ok(details
        .iter()
        .filter(|d| {
            d.endpoint == EP && d.policy == policy && d.reason == reason && d.direction == dir
        })
        .fold((0, 0), |(p, b), d| (p + d.packets, b + d.bytes)))
}

#[rustfmt::skip]
#[test]
fn tracked_packets_are_counted_per_policy_through_the_counter_cells() -> anyhow::Result<()> {
    use ebpf_common::reason;
    pin_to_one_cpu()?;
    let mut h = harness()?;
    h.expect(IN, &v4_tcp(B, A, 41000, 80, SYN), true, "allow_policy", "opens the flow")?;
    for _ in 0..5 {
        h.expect(IN, &v4_tcp(B, A, 41000, 80, ACK), true, "allow_established", "established")?;
    }
    for _ in 0..3 {
        h.expect(OUT, &v4_tcp(A, B, 80, 41000, ACK), true, "allow_reply", "reply")?;
    }
    let frame = v4_tcp(B, A, 41000, 80, ACK).len() as u64;
    assert_eq!(counted(&h, 11, reason::ALLOW_POLICY, IN)?, (1, frame));
    assert_eq!(counted(&h, 11, reason::ALLOW_ESTABLISHED, IN)?, (5, 5 * frame));
    assert_eq!(counted(&h, 11, reason::ALLOW_REPLY, OUT)?, (3, 3 * frame));

    // Another policy's established packets, whose cell policy 11's hold on
    // this CPU: a policy id chosen to hash to the same cell.
    let key = |policy| ingress_key(policy, reason::ALLOW_ESTABLISHED);
    let twin = sharing_a_cell(&key(11)).next().context("no twin")?;
    let mut v2 = policy_v1();
    v2.push(entry(IN, ID_B, TCP, (8080, 8080), allow(twin)));
    h.maps.replace_policy(LO, EP, ISOLATED, &v2)?;
    h.expect(IN, &v4_tcp(B, A, 41001, 8080, SYN), true, "allow_policy", "twin flow opens")?;
    for _ in 0..4 {
        h.expect(IN, &v4_tcp(B, A, 41001, 8080, ACK), true, "allow_established", "twin, established")?;
    }
    h.expect(IN, &v4_tcp(B, A, 41000, 80, ACK), true, "allow_established", "first flow, re-judged")?;
    h.expect(IN, &v4_tcp(B, A, 41000, 80, ACK), true, "allow_established", "first flow, fast again")?;
    assert_eq!(counted(&h, twin, reason::ALLOW_ESTABLISHED, IN)?.0, 4, "the twin's packets");
    let map = aya::maps::MapData::from_pin(h.t.pins.map(maps::COUNTERS))?;
    let counters: aya::maps::PerCpuHashMap<_, ebpf_common::datapath::CounterKey, ebpf_common::stats::Counter> =
        aya::maps::PerCpuHashMap::try_from(aya::maps::Map::from_map_data(map)?)?;
    let in_map: u64 = counters.get(&key(twin), 0)?.iter().map(|c| c.events).sum();
    assert_eq!(in_map, 4, "the twin's packets went to the counter map: its cell was taken");
    assert_eq!(counted(&h, 11, reason::ALLOW_ESTABLISHED, IN)?.0, 7, "policy 11's, still its own");
    Ok(())
}

/// The endpoint's ingress counter key for `policy` and `reason`.
fn ingress_key(policy: u32, reason: u32) -> ebpf_common::datapath::CounterKey {
    ebpf_common::datapath::CounterKey {
        endpoint: EP,
        policy,
        reason: reason as u16,
        direction: IN as u8,
        _pad: 0,
    }
}

/// Policy ids above 999 whose key (as `key`, with that policy) has the
/// same counter cell as `key`.
fn sharing_a_cell(key: &ebpf_common::datapath::CounterKey) -> impl Iterator<Item = u32> + use<> {
    use ebpf_common::datapath::counter_cell;
    let (key, cell) = (*key, counter_cell(key));
    (1000..u32::MAX).filter(move |&policy| {
        counter_cell(&ebpf_common::datapath::CounterKey { policy, ..key }) == cell
    })
}

/// Keeps the calling thread on one CPU: per-CPU cells are taken per CPU.
fn pin_to_one_cpu() -> anyhow::Result<()> {
    use nix::{
        sched::{CpuSet, sched_getaffinity, sched_setaffinity},
        unistd::Pid,
    };
    // Pid 0: the calling thread.
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let cpu = (0..CpuSet::count())
        .find(|&c| set.is_set(c).unwrap_or(false))
        .context("no CPU")?;
    let mut one = CpuSet::new();
    one.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &one).context("sched_setaffinity")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn a_full_counter_map_is_counted_not_hidden() -> anyhow::Result<()> {
    use ebpf_common::reason;
    // Counters go to a per-CPU cell first and to PAL_COUNTERS when another
    // key holds the cell: three policies whose keys share one cell, on one
    // CPU, with room for one key in the map.
    pin_to_one_cpu()?;
    let mut h = harness_sized(&["PAL_COUNTERS=1"])?;
    let ids: Vec<u32> = sharing_a_cell(&ingress_key(999, reason::ALLOW_POLICY)).take(3).collect();
    let entries: Vec<PolicyEntry> = ids
        .iter()
        .zip([80, 81, 82])
        .map(|(&id, port)| entry(IN, ID_B, TCP, (port, port), allow(id)))
        .collect();
    h.maps.replace_policy(LO, EP, ISOLATED, &entries)?;
    h.expect(IN, &v4_tcp(B, A, 1, 80, SYN), true, "allow_policy", "first key: the cell")?;
    h.expect(IN, &v4_tcp(B, A, 2, 81, SYN), true, "allow_policy", "second key: the map")?;
    // The third key finds both taken.
    h.expect(IN, &v4_tcp(B, A, 3, 82, SYN), true, "allow_policy", "third key")?;
    let full: u64 = read_pinned(&h.t.pins.map(maps::TC_STATS))?
        .iter()
        .filter(|r| r.reason == "counter_map_full")
        .map(|r| r.events)
        .sum();
    assert_eq!(full, 1);
    assert_eq!(counted(&h, ids[0], reason::ALLOW_POLICY, IN)?.0, 1, "in the cell");
    assert_eq!(counted(&h, ids[1], reason::ALLOW_POLICY, IN)?.0, 1, "in the map");
    Ok(())
}

#[test]
fn configured_sizes_apply_and_a_resize_needs_an_unload() -> anyhow::Result<()> {
    let h = harness_sized(&["PAL_CT4=4096"])?;
    let info = aya::maps::MapInfo::from_pin(h.t.pins.map(maps::CT4))?;
    assert_eq!(info.max_entries(), 4096);
    let Err(err) = loader::load_all(&h.t.pins, &Features::probe()) else {
        bail!("a pinned map of another size was reused");
    };
    let expected = format!("max entries is 4096, expected {}", maps::size::CT4);
    assert!(err.to_string().contains(&expected), "{err}");
    Ok(())
}

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<DropEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<DropEvent>());
        // SAFETY: the kernel wrote a DropEvent of exactly this size.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
    }
    out
}

fn stat(h: &Harness, reason: &str) -> anyhow::Result<u64> {
    Ok(read_pinned(&h.t.pins.map(maps::TC_STATS))?
        .iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.events)
        .sum())
}

#[test]
fn drops_and_audits_are_reported_within_a_rate_limit_that_refills() -> anyhow::Result<()> {
    let mut h = harness()?;
    let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::from_map_data(
        aya::maps::MapData::from_pin(h.t.pins.map(maps::EVENTS))?,
    )?)?;
    h.expect(
        IN,
        &v4_tcp(B, A, 40001, 81, SYN),
        false,
        "drop_default_deny",
        "a drop",
    )?;
    h.expect(
        IN,
        &v4_tcp(NET_HOST, A, 1003, 9000, SYN),
        true,
        "audit_would_drop",
        "an audit",
    )?;
    h.expect(
        IN,
        &v4_tcp(B, A, 40000, 80, SYN),
        true,
        "allow_policy",
        "an allow: no event",
    )?;
    let events = drain(&mut ring);
    assert_eq!(events.len(), 2, "{events:?}");
    let drop = events[0];
    assert_eq!(
        (
            drop.endpoint,
            drop.policy,
            drop.reason,
            u32::from(drop.direction)
        ),
        (EP, 0, ebpf_common::reason::DROP_DEFAULT_DENY as u16, IN)
    );
    assert_eq!((drop.protocol, drop.sport, drop.dport), (TCP, 40001, 81));
    assert_eq!(drop.src, ebpf_common::datapath::ipv4_mapped(B));
    assert_eq!(drop.dst, ebpf_common::datapath::ipv4_mapped(A));
    assert_eq!(
        (events[1].policy, events[1].reason),
        (15, ebpf_common::reason::AUDIT_WOULD_DROP as u16)
    );

    // A flood: every denied packet is either reported or counted as limited.
    const FLOOD: u32 = 3000;
    let limited_before = stat(&h, "event_rate_limited")?;
    let lost_before = stat(&h, "event_lost")?;
    let frame = v4_tcp(B, A, 40002, 22, SYN);
    let prog = to_pod(&mut h)?;
    prog.test_run(TestRunOptions {
        data_in: Some(&frame),
        repeat: FLOOD,
        ..TestRunOptions::new()
    })?;
    let sent = drain(&mut ring).len() as u64;
    let limited = stat(&h, "event_rate_limited")? - limited_before;
    let lost = stat(&h, "event_lost")? - lost_before;
    assert_eq!(
        sent + limited + lost,
        u64::from(FLOOD),
        "sent {sent}, limited {limited}, lost {lost}"
    );
    // At most one burst per CPU the test ran on (it may have moved once).
    let burst = ebpf_common::datapath::event_rate::BURST;
    assert!(
        sent <= 2 * burst,
        "the rate limit let {sent} events through"
    );
    assert!(limited >= u64::from(FLOOD) - 2 * burst, "limited {limited}");

    // The budget refills with time: on one CPU, a flood spends it, the
    // next packets find it spent but for what the time since has earned
    // (one event a millisecond, and the coarse clock may read up to a tick
    // ahead: 10 ms at the slowest HZ), and 100 ms later it lets them
    // through again. The time since is measured, not assumed: in a TCG
    // guest a few milliseconds pass between two runs.
    pin_to_this_cpu()?;
    let prog = to_pod(&mut h)?;
    let run = |prog: &SchedClassifier, repeat: u32| -> anyhow::Result<()> {
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat,
            ..TestRunOptions::new()
        })?;
        Ok(())
    };
    const NEXT: u32 = 200;
    run(prog, FLOOD)?;
    let flooded = std::time::Instant::now();
    drain(&mut ring);
    run(prog, NEXT)?;
    let earned = flooded.elapsed().as_millis() as u64 + 10;
    let spent = drain(&mut ring).len() as u64;
    std::thread::sleep(std::time::Duration::from_millis(100));
    run(prog, 20)?;
    let refilled = drain(&mut ring).len() as u64;
    assert!(
        earned < u64::from(NEXT) / 2,
        "{earned} ms between two runs: too slow to tell a spent budget"
    );
    assert!(
        spent <= 1 + earned,
        "{spent} of {NEXT} events through a budget spent {earned} ms before at most"
    );
    assert!(refilled >= 10, "{refilled} of 20 events 100 ms later");
    Ok(())
}

/// The TC program on a pod's transmit side (its ingress).
fn to_pod(h: &mut Harness) -> anyhow::Result<&mut SchedClassifier> {
    Ok(h.program(Hook::TcIngress)?.try_into()?)
}

/// Keeps the calling thread on the CPU it runs on now (test runs execute
/// on the caller's CPU, and the event budget is per CPU).
fn pin_to_this_cpu() -> anyhow::Result<()> {
    // SAFETY: sched_getcpu has no preconditions; a zeroed cpu_set_t is a
    // valid empty set, which CPU_SET and sched_setaffinity only read and
    // write.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu())?;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[rustfmt::skip]
#[test]
fn the_optional_xdp_egress_hook_shares_the_datapath() -> anyhow::Result<()> {
    let mut h = harness()?;
    let xdp = |h: &mut Harness, frame: &[u8], pass: bool, reason: &str, what: &str| -> anyhow::Result<()> {
        let got = h.run_hook(Hook::XdpEgress, frame)?;
        anyhow::ensure!(got == (pass, reason), "{what}: expected ({pass}, {reason}), got {got:?}");
        Ok(())
    };
    xdp(&mut h, &v4_tcp(A, B, 5555, 5555, SYN), false, "drop_default_deny", "new egress flow, isolated")?;
    xdp(&mut h, &v4_udp(A, B, 4000, 53), true, "allow_policy", "egress DNS allowed")?;
    xdp(&mut h, &v4_udp(A, B, 4000, 53), true, "allow_established", "and tracked")?;
    // Conntrack is shared with the TC hooks: a reply to a TC-allowed flow passes.
    h.expect(IN, &v4_tcp(B, A, 41000, 80, SYN), true, "allow_policy", "ingress SYN via TC")?;
    xdp(&mut h, &v4_tcp(A, B, 80, 41000, SYN | ACK), true, "allow_reply", "its reply via XDP")?;
    xdp(&mut h, &eth(0x0806, &[0u8; 28]), true, "pass_non_ip", "ARP")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn the_prefilter_drops_denied_cidrs_and_denied_connection_attempts() -> anyhow::Result<()> {
    let mut h = harness()?;
    h.maps.set_cidr_deny(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24, 31)?;
    h.maps.set_cidr_deny(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 32, 30)?;
    let denied6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0xde, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    h.maps.set_cidr_deny(IpAddr::V6(Ipv6Addr::from(denied6)), 48, 34)?;
    h.maps.set_pod_deny(IpAddr::V4(Ipv4Addr::from(A)), ID_B, Some(22), 32)?;
    h.maps.set_pod_deny(IpAddr::V4(Ipv4Addr::from(A)), identity::ANY, Some(23), 33)?;
    let cases: &[(Vec<u8>, bool, &str, &str)] = &[
        (v4_tcp([203, 0, 113, 9], A, 1, 80, ACK), false, "drop_cidr_deny", "source in a denied CIDR"),
        (v4_tcp([203, 0, 114, 9], A, 1, 80, SYN), true, "pass_unenforced", "just outside it"),
        (v4_udp([198, 51, 100, 7], A, 1, 53), false, "drop_cidr_deny", "a denied single address"),
        (v4_udp([198, 51, 100, 8], A, 1, 53), true, "pass_unenforced", "its neighbour"),
        (v4_tcp(B, A, 1, 22, SYN), false, "drop_xdp_pod_deny", "SYN from B to A:22, denied"),
        (v4_tcp(B, A, 1, 22, SYN | ACK), true, "pass_unenforced", "not a connection attempt"),
        (v4_tcp(B, A, 1, 22, ACK), true, "pass_unenforced", "not a connection attempt either"),
        (v4_udp(B, A, 1, 22), true, "pass_unenforced", "UDP has no attempt to recognise"),
        (v4_tcp(OUTSIDE, A, 1, 22, SYN), true, "pass_unenforced", "deny names B, not the world"),
        (v4_tcp(OUTSIDE, A, 1, 23, SYN), false, "drop_xdp_pod_deny", "any-peer deny on :23"),
        (v4_tcp(B, [10, 0, 0, 3], 1, 22, SYN), true, "pass_unenforced", "another pod"),
        (eth(0x0806, &[0u8; 28]), true, "pass_non_ip", "ARP"),
        // The deny list covers whatever follows a source it can read
        // (found by tests/frames.rs: these passed).
        (eth(0x0800, &ipv4([203, 0, 113, 9], A, TCP, (0, 0, false), &[0; 8])), false, "drop_cidr_deny", "TCP cut short from a denied source"),
        (eth(0x86dd, &ipv6(denied6, A6, &[], ICMPV6, &icmp(135, [0; 4], &[0; 16]))), false, "drop_cidr_deny", "neighbour discovery from a denied source"),
        (eth(0x86dd, &ipv6(denied6, A6, &[60; 7], UDP, &udp(1, 53))), false, "drop_cidr_deny", "seven extension headers from a denied source"),
        (eth(0x86dd, &ipv6(B6, A6, &[], ICMPV6, &icmp(135, [0; 4], &[0; 16]))), true, "pass_neighbour_discovery", "neighbour discovery otherwise"),
        (eth(0x0800, &{
            let mut p = ipv4([203, 0, 113, 9], A, TCP, (0, 0, false), &tcp(1, 80, SYN));
            p[0] = 0x44;
            p
        }), true, "pass_unenforced", "an IPv4 header that is none: no source read"),
    ];
    for (frame, pass, reason, what) in cases {
        let got = h.prefilter(frame)?;
        anyhow::ensure!(got == (*pass, *reason), "{what}: expected ({pass}, {reason}), got {got:?}");
    }
    h.maps.remove_pod_deny(IpAddr::V4(Ipv4Addr::from(A)), ID_B, Some(22))?;
    anyhow::ensure!(h.prefilter(&v4_tcp(B, A, 1, 22, SYN))?.0, "deny removed, SYN passes");
    anyhow::ensure!(!h.prefilter(&v4_tcp(B, A, 1, 23, SYN))?.0, "the any-peer deny stays");
    h.maps.remove_pod_deny(IpAddr::V4(Ipv4Addr::from(A)), identity::ANY, Some(23))?;
    anyhow::ensure!(h.maps.pod_deny_gates()?.is_empty(), "the pod's gate outlived its denies");
    h.maps.remove_cidr_deny(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 32)?;
    anyhow::ensure!(h.prefilter(&v4_udp([198, 51, 100, 7], A, 1, 53))?.0, "address deny removed");
    Ok(())
}

/// The programs find an endpoint by its interface's slot of `PAL_EP_SLOTS`
/// and fall back to `PAL_ENDPOINTS` when another endpoint holds that slot:
/// the slot's own interface number decides, never the slot alone.
#[rustfmt::skip]
#[test]
fn an_interface_whose_slot_another_endpoint_holds_is_judged_by_its_own_policy() -> anyhow::Result<()> {
    use aya::maps::{Array, Map, MapData};
    use ebpf_common::datapath::{ENDPOINT_SLOTS, EndpointSlot};

    let mut h = harness()?;
    let slot_holder = |h: &Harness| -> anyhow::Result<u32> {
        let map = Map::from_map_data(MapData::from_pin(h.t.pins.map(maps::ENDPOINT_SLOTS))?)?;
        let slots: Array<MapData, EndpointSlot> = Array::try_from(map)?;
        Ok(slots.get(&LO, 0)?.current().ifindex)
    };
    anyhow::ensure!(slot_holder(&h)? == LO, "the loopback's endpoint is not in its slot");
    // Another endpoint takes the loopback's slot: it allows port 22, which
    // the loopback's own policy denies.
    let other = LO + ENDPOINT_SLOTS;
    h.maps.remove_endpoint(LO)?;
    anyhow::ensure!(slot_holder(&h)? == 0, "a removed endpoint kept its slot");
    h.maps.replace_policy(other, EP + 1, ISOLATED, &[entry(IN, ID_B, TCP, (22, 22), allow(31))])?;
    anyhow::ensure!(slot_holder(&h)? == other, "the free slot was not taken");
    h.expect(IN, &v4_tcp(B, A, 1, 22, SYN), true, "pass_no_endpoint", "the loopback is no endpoint")?;
    h.maps.replace_policy(LO, EP, ISOLATED, &policy_v1())?;
    anyhow::ensure!(slot_holder(&h)? == other, "a held slot was taken over");
    h.expect(IN, &v4_tcp(B, A, 2, 22, SYN), false, "drop_policy_deny", "its own policy, from PAL_ENDPOINTS")?;
    h.expect(IN, &v4_tcp(B, A, 3, 80, SYN), true, "allow_policy", "its own allow")?;
    // Freed, the slot goes to the next endpoint indexed there (the syncer
    // indexes every endpoint on each pass), with its live generation.
    h.maps.remove_endpoint(other)?;
    let live = h.maps.endpoint(LO)?;
    h.maps.index_endpoint(LO, live)?;
    anyhow::ensure!(slot_holder(&h)? == LO, "the freed slot was not taken");
    h.expect(IN, &v4_tcp(B, A, 4, 22, SYN), false, "drop_policy_deny", "still its own policy")?;
    let v2 = vec![entry(IN, ID_B, TCP, (22, 22), allow(32))];
    h.maps.replace_policy(LO, EP, ISOLATED, &v2)?;
    h.expect(IN, &v4_tcp(B, A, 5, 22, SYN), true, "allow_policy", "a swap through the slot")?;
    Ok(())
}

#[rustfmt::skip]
#[test]
fn a_cached_drop_never_hides_the_reply_of_a_flow_opened_the_other_way() -> anyhow::Result<()> {
    use aya::maps::{Array, Map, MapData};
    use ebpf_common::datapath::opened_index;

    // The verdict cache and the denied-flood hint are per CPU.
    pin_to_one_cpu()?;
    let mut h = harness()?;
    let opened = |h: &Harness, dir: u32| -> anyhow::Result<u32> {
        let map = Map::from_map_data(MapData::from_pin(h.t.pins.map(maps::OPENED))?)?;
        let marks: Array<MapData, u32> = Array::try_from(map)?;
        Ok(marks.get(&opened_index(EP, dir), 0)?)
    };
    // A's egress to B on TCP is isolated: the second packet's drop comes
    // from the verdict cache, the third's from the cache before conntrack.
    for _ in 0..3 {
        h.expect(OUT, &v4_tcp(A, B, 80, 40000, ACK), false, "drop_default_deny", "egress TCP to B")?;
    }
    anyhow::ensure!(opened(&h, IN)? == 0, "A is marked before it tracked any ingress flow");
    h.expect(IN, &v4_tcp(B, A, 40000, 80, SYN), true, "allow_policy", "B opens a flow to A's port 80")?;
    anyhow::ensure!(opened(&h, IN)? == 1, "the tracked ingress flow left no mark");
    anyhow::ensure!(opened(&h, OUT)? == 0, "an ingress flow marked egress");
    // Its replies have the cached drop's key, and pass.
    h.expect(OUT, &v4_tcp(A, B, 80, 40000, SYN | ACK), true, "allow_reply", "the reply, past the cached drop")?;
    h.expect(OUT, &v4_tcp(A, B, 80, 40000, ACK), true, "allow_reply", "and the next")?;
    // A flow nobody opened the other way is still dropped.
    h.expect(OUT, &v4_tcp(A, B, 81, 40000, SYN), false, "drop_default_deny", "another egress flow")?;
    Ok(())
}

/// The full pass reads the policy maps in batches: entry for entry what
/// iterating them finds, across many batches (7 entries a call), of the
/// LPM trie (port ranges) and of the hash map (exact ports, whose batches
/// are whole buckets).
#[test]
fn batched_reads_of_the_policy_maps_are_what_iterating_finds() -> anyhow::Result<()> {
    use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
    use ebpf_common::datapath::PolicyKey;
    use palisade::datapath::batch::{Batched, count, read_all_by};
    use std::os::fd::{AsFd as _, AsRawFd as _};

    let mut h = harness()?;
    for endpoint in 0..4u32 {
        let entries: Vec<PolicyEntry> = (0..300u16)
            .map(|i| {
                let peer = identity::FIRST_ALLOCATED + u32::from(i);
                if i % 2 == 0 {
                    entry(IN, peer, TCP, (1000 + i, 1000 + i), allow(i.into()))
                } else {
                    entry(OUT, peer, UDP, (2048, 2063), allow(i.into()))
                }
            })
            .collect();
        h.maps
            .replace_policy(100 + endpoint, 40 + endpoint, ISOLATED, &entries)?;
    }
    let open = |name| MapData::from_pin(h.t.pins.map(name));
    let Batched::Read(trie_read) =
        read_all_by::<Key<PolicyKey>, PolicyValue>(&open(maps::POLICY)?, 7)?
    else {
        println!("skipped: no batch lookups for LPM tries on this kernel (the pass iterates)");
        return Ok(());
    };
    let sorted = |mut v: Vec<(u32, PolicyKey, PolicyValue)>| {
        v.sort_by_key(|(len, k, _)| (*len, k.endpoint, k.peer, k.direction, k.port, k.protocol));
        v
    };

    let trie = LpmTrie::<_, PolicyKey, PolicyValue>::try_from(Map::LpmTrie(open(maps::POLICY)?))?;
    let iterated: Vec<_> = trie
        .iter()
        .map(|e| e.map(|(k, v)| (k.prefix_len(), k.data(), v)))
        .collect::<Result<_, _>>()?;
    let read: Vec<_> = trie_read
        .into_iter()
        .map(|(k, v)| (k.prefix_len(), k.data(), v))
        .collect();
    assert!(iterated.len() > 600, "{} trie entries", iterated.len());
    assert_eq!(sorted(read), sorted(iterated));

    let hash =
        HashMap::<_, PolicyKey, PolicyValue>::try_from(Map::HashMap(open(maps::POLICY_PORT)?))?;
    let iterated: Vec<_> = hash
        .iter()
        .map(|e| e.map(|(k, v)| (0, k, v)))
        .collect::<Result<_, _>>()?;
    let read: Vec<_> = match read_all_by::<PolicyKey, PolicyValue>(&open(maps::POLICY_PORT)?, 7)? {
        Batched::Read(entries) => entries.into_iter().map(|(k, v)| (0, k, v)).collect(),
        // Hash maps have had them since Linux 5.6.
        Batched::Unsupported => bail!("no batch lookups for the policy hash map"),
    };
    assert!(iterated.len() > 600, "{} hash entries", iterated.len());
    let hash_entries = iterated.len() as u64;
    assert_eq!(sorted(read), sorted(iterated));

    // A scrape's fill levels count in batches too.
    let counted = |name, key_len| -> anyhow::Result<u64> {
        let map = open(name)?;
        let value = std::mem::size_of::<PolicyValue>();
        match count(map.fd().as_fd().as_raw_fd(), key_len, value, false)? {
            Batched::Read(n) => Ok(n),
            Batched::Unsupported => bail!("no batch lookups for {name}"),
        }
    };
    let trie_entries = trie.iter().count() as u64;
    let trie_key = std::mem::size_of::<Key<PolicyKey>>();
    assert_eq!(counted(maps::POLICY, trie_key)?, trie_entries);
    assert_eq!(
        counted(maps::POLICY_PORT, std::mem::size_of::<PolicyKey>())?,
        hash_entries
    );
    Ok(())
}

/// The syncer's patches write and remove exact policy entries in batches:
/// in their order (a key written twice holds its last value), a key the
/// map lacks passed over on removal, and a refused entry named by its
/// place, those before it written.
#[test]
fn batched_writes_of_the_policy_hash_map_keep_their_order() -> anyhow::Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use ebpf_common::datapath::PolicyKey;
    use palisade::datapath::batch::{Refused, Wrote, delete_all, update_all};

    let h = harness()?;
    let open = || MapData::from_pin(h.t.pins.map(maps::POLICY_PORT));
    // More than one call's worth (4,096 entries).
    const N: u16 = 5_000;
    let key = |port: u16| PolicyKey {
        endpoint: 7,
        peer: identity::FIRST_ALLOCATED,
        direction: 0,
        protocol: 6,
        port: port.to_be_bytes(),
        ..PolicyKey::default()
    };
    let mut entries: Vec<(PolicyKey, PolicyValue)> =
        (0..N).map(|p| (key(p), allow(p.into()))).collect();
    // Port 3 again, last: its second value must win.
    entries.push((key(3), allow(9_999)));
    let held = |n: u16| -> anyhow::Result<Vec<Option<PolicyValue>>> {
        let map = HashMap::<_, PolicyKey, PolicyValue>::try_from(Map::HashMap(open()?))?;
        Ok((0..n).map(|p| map.get(&key(p), 0).ok()).collect())
    };
    match update_all(&open()?, &entries) {
        Ok(Wrote::All) => {}
        Ok(Wrote::Unsupported) => bail!("no batch updates for hash maps (Linux 5.6 has them)"),
        Err(Refused { at, error }) => bail!("entry {at} refused: {error}"),
    }
    let after = held(N)?;
    assert_eq!(
        after[3],
        Some(allow(9_999)),
        "the later write of a key wins"
    );
    assert!(
        (0..N).all(|p| p == 3 || after[usize::from(p)] == Some(allow(p.into()))),
        "every entry written"
    );

    // Every other key removed, a key never written before each.
    let never = |port: u16| PolicyKey {
        endpoint: 8,
        ..key(port)
    };
    let gone: Vec<PolicyKey> = (0..N).step_by(2).flat_map(|p| [never(p), key(p)]).collect();
    assert_eq!(delete_all(&open()?, &gone).ok(), Some(Wrote::All));
    let after = held(N)?;
    assert!(
        (0..N).all(|p| after[usize::from(p)].is_some() == (p % 2 == 1)),
        "only the even ports removed"
    );

    // A map no process may write: the call is refused whole.
    palisade_tests::freeze_map(&open()?)?;
    match update_all(&open()?, &entries[1..3]) {
        Err(Refused { at: 0, error }) => {
            assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        }
        other => bail!("a frozen map took a batch: {other:?}"),
    }
    Ok(())
}

/// A batch the map runs out of room in: the entries before the refused
/// one are written, and the refused one is named by its place.
#[test]
fn a_batch_refused_partway_names_the_entry_and_keeps_those_before() -> anyhow::Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use ebpf_common::datapath::PolicyKey;
    use palisade::datapath::batch::{Refused, update_all};

    let h = Harness::load(&["PAL_POLICY_PORT=6"])?;
    let open = || MapData::from_pin(h.t.pins.map(maps::POLICY_PORT));
    let key = |port: u16| PolicyKey {
        endpoint: 7,
        protocol: 6,
        port: port.to_be_bytes(),
        ..PolicyKey::default()
    };
    let entries: Vec<(PolicyKey, PolicyValue)> =
        (0..8u16).map(|p| (key(p), allow(p.into()))).collect();
    match update_all(&open()?, &entries) {
        Err(Refused { at: 6, error }) => {
            assert_eq!(error.raw_os_error(), Some(libc::E2BIG), "{error}");
        }
        other => bail!("a map with room for 6 took 8 as {other:?}"),
    }
    let map = HashMap::<_, PolicyKey, PolicyValue>::try_from(Map::HashMap(open()?))?;
    let held: Vec<bool> = (0..8u16).map(|p| map.get(&key(p), 0).is_ok()).collect();
    assert_eq!(held, [true, true, true, true, true, true, false, false]);
    Ok(())
}

/// A per-CPU hash map is counted in batches whose values are one copy a
/// possible CPU, each rounded up to 8 bytes (12 here): a buffer sized
/// otherwise would be overrun, or the count wrong.
#[test]
fn a_per_cpu_map_is_counted_in_batches() -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};

    use anyhow::ensure;
    use palisade::datapath::batch::{Batched, count};
    const PERCPU_HASH: u32 = 5;
    let (key_len, value_size, entries) = (4usize, 12usize, 5_000u32);
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[PERCPU_HASH, key_len as u32, value_size as u32, 8_192]);
    // SAFETY: a `bpf_attr` of zeroes but its first four fields.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, create.as_ptr(), 128) };
    ensure!(
        fd >= 0,
        "creating a per-CPU hash map: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just gave this test alone.
    let map = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let value = vec![7u8; 16 * cpus];
    for key in 0..entries {
        // BPF_MAP_UPDATE_ELEM: map_fd, key, value, flags.
        let attr: [u64; 4] = [
            map.as_raw_fd() as u64,
            std::ptr::from_ref(&key) as u64,
            value.as_ptr() as u64,
            0,
        ];
        // SAFETY: the key and the value (16 bytes a possible CPU) outlive
        // the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 2, attr.as_ptr(), 32) };
        ensure!(r == 0, "update {key}: {}", std::io::Error::last_os_error());
    }
    match count(map.as_raw_fd(), key_len, value_size, true)? {
        Batched::Read(n) => assert_eq!(n, u64::from(entries)),
        Batched::Unsupported => println!("skipped: no batch lookups for per-CPU hash maps here"),
    }
    Ok(())
}

/// Per-CPU maps read in batches (`read_all_per_cpu`, the metrics' read of
/// the counters) hold what lookups find, CPU by CPU: an array whose values
/// are not a multiple of 8 bytes (the kernel pads each CPU's) and a hash
/// map larger than one batch. A read as the wrong type is refused.
#[test]
fn per_cpu_maps_read_in_batches_hold_what_lookups_find() -> anyhow::Result<()> {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use palisade::datapath::batch::{Batched, read_all_per_cpu};
    use palisade_tests::{TempPins, pin_raw_map};
    const PERCPU_HASH: u32 = 5;
    const PERCPU_ARRAY: u32 = 6;
    type Value = [u32; 3];
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get();
    let value = |k: u32, cpu: u32| [k, cpu, !k];
    let values = |k: u32| (0..cpus).map(|c| value(k, c)).collect::<Vec<Value>>();
    let t = TempPins::new()?;
    let (array_pin, hash_pin) = (t.base.join("array"), t.base.join("hash"));
    let (cells, entries) = (300u32, 5_000u32);
    pin_raw_map(&array_pin, PERCPU_ARRAY, 4, 12, cells)?;
    pin_raw_map(&hash_pin, PERCPU_HASH, 4, 12, 8_192)?;
    let open = |pin: &std::path::Path| -> anyhow::Result<Map> {
        Ok(Map::from_map_data(MapData::from_pin(pin)?)?)
    };
    let mut array: PerCpuArray<MapData, Value> = PerCpuArray::try_from(open(&array_pin)?)?;
    for k in 0..cells {
        array.set(k, PerCpuValues::try_from(values(k))?, 0)?;
    }
    let mut hash: PerCpuHashMap<MapData, u32, Value> = PerCpuHashMap::try_from(open(&hash_pin)?)?;
    for k in 0..entries {
        hash.insert(&(k * 7), PerCpuValues::try_from(values(k * 7))?, 0)?;
    }
    for (pin, expected) in [
        (&array_pin, (0..cells).collect::<Vec<u32>>()),
        (&hash_pin, (0..entries).map(|k| k * 7).collect()),
    ] {
        match read_all_per_cpu::<u32, Value>(&MapData::from_pin(pin)?)? {
            Batched::Read(mut all) => {
                all.sort_by_key(|(k, _)| *k);
                let keys: Vec<u32> = all.iter().map(|(k, _)| *k).collect();
                assert_eq!(keys, expected, "{}", pin.display());
                for (k, per_cpu) in all {
                    assert_eq!(per_cpu, values(k), "key {k} of {}", pin.display());
                }
            }
            Batched::Unsupported => println!("skipped: no batch lookups for {}", pin.display()),
        }
        assert!(read_all_per_cpu::<u32, u64>(&MapData::from_pin(pin)?).is_err());
    }
    Ok(())
}

/// Runs `frame` through `hook` on interface `ifindex` and returns whether
/// it passed and the one reason counted for it.
fn run_at(
    h: &mut Harness,
    hook: Hook,
    ifindex: u32,
    frame: &[u8],
) -> anyhow::Result<(bool, &'static str)> {
    use palisade_tests::datapath_harness::{Ran, counted_reason};
    let stats = h.t.pins.map(hook.stats_map());
    let before = read_pinned(&stats)?;
    let Ran::Verdict(pass) = h.test_run(hook, frame, Some(ifindex))? else {
        bail!("the kernel refused to run {} on the frame", hook.name());
    };
    Ok((pass, counted_reason(&before, &read_pinned(&stats)?)?))
}

/// Runs `f` in a new namespace holding a veth, given the veth's ifindex (a
/// second endpoint beside the harness's on loopback) and a harness.
fn beside_a_veth(f: impl FnOnce(u32, Harness) -> anyhow::Result<()> + Send) -> anyhow::Result<()> {
    let pair = palisade_tests::VethPair::new()?;
    let host_if = pair.host_if.clone();
    palisade_tests::in_netns(&pair.node, move || {
        f(palisade::netns::ifindex(&host_if)?, harness()?)
    })?
}

/// [`run_at`], which must give `want`.
fn expect_at(
    h: &mut Harness,
    hook: Hook,
    ifindex: u32,
    frame: &[u8],
    want: (bool, &str),
    what: &str,
) -> anyhow::Result<()> {
    let got = run_at(h, hook, ifindex, frame).with_context(|| what.to_owned())?;
    anyhow::ensure!(got == want, "{what}: expected {want:?}, got {got:?}");
    Ok(())
}

/// A bridged pod's frames must come from its own MAC, whatever they carry
/// (IP, ARP, another protocol), through either egress hook; what reaches
/// it is not checked, nor a pod whose MAC is not written.
#[rustfmt::skip]
#[test]
fn a_bridged_pods_frames_come_from_its_own_mac() -> anyhow::Result<()> {
    use palisade::compile::Sources;
    const OWN: [u8; 6] = [2, 0, 0, 0, 0, 3];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 4];
    beside_a_veth(|pod, mut h| {
        let sources = Sources { v4: Some(Ipv4Addr::from(C)), v6: Some(Ipv6Addr::from(C6)), prefixes: false, mac: Some(OWN) };
        let egress = [entry(OUT, identity::ANY, UDP, (53, 53), allow(41))];
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &egress, &sources, None)?;
        let at = |h: &mut Harness, hook, frame: &[u8], want: (bool, &str), what: &str| expect_at(h, hook, pod, frame, want, what);
        let from = |mac: [u8; 6], frame: Vec<u8>| {
            let mut frame = frame;
            frame[6..12].copy_from_slice(&mac);
            frame
        };
        let spoofed = (false, "drop_spoofed_mac");
        let ip = v4_udp(C, B, 5000, 53);
        let arp_frame = eth(0x0806, &arp(1, (OWN, C), ([0; 6], B)));
        let other_kind = eth(0x88cc, &[0; 46]);
        at(&mut h, Hook::TcEgress, &from(OWN, ip.clone()), (true, "allow_policy"), "IP from its own MAC")?;
        at(&mut h, Hook::TcEgress, &from(OTHER, ip.clone()), spoofed, "IP from another MAC")?;
        at(&mut h, Hook::XdpEgress, &from(OTHER, ip.clone()), spoofed, "the same through the XDP egress hook")?;
        at(&mut h, Hook::TcEgress, &from(OWN, arp_frame.clone()), (true, "pass_non_ip"), "ARP from its own MAC")?;
        at(&mut h, Hook::TcEgress, &from(OTHER, arp_frame.clone()), spoofed, "ARP from another MAC")?;
        at(&mut h, Hook::TcEgress, &from(OWN, other_kind.clone()), (true, "pass_non_ip"), "LLDP from its own MAC")?;
        at(&mut h, Hook::TcEgress, &from(OTHER, other_kind.clone()), spoofed, "LLDP from another MAC")?;
        at(&mut h, Hook::TcIngress, &from(OTHER, v4_udp(B, C, 54, 6000)), (true, "pass_unenforced"), "received from any MAC")?;
        // What its ARP and neighbour discovery announce as its link-layer
        // address is its own MAC too: receivers (the node's placement of
        // it among them) learn the claimed address at the announced MAC.
        let pass_nd = (true, "pass_neighbour_discovery");
        let all_nodes: [u8; 16] = "ff02::1".parse::<Ipv6Addr>()?.octets();
        let lla = |kind: u8, mac: [u8; 6]| [&[kind, 1][..], &mac].concat();
        let nd = |kind: u8, head: &[u8], options: &[Vec<u8>]| {
            let body = [head.to_vec(), options.concat()].concat();
            from(OWN, eth(0x86dd, &ipv6(LINK_LOCAL, all_nodes, &[], ICMPV6, &icmp(kind, [0; 4], &body))))
        };
        let nonce = vec![14, 1, 1, 2, 3, 4, 5, 6];
        at(&mut h, Hook::TcEgress, &from(OWN, eth(0x0806, &arp(2, (OTHER, C), ([0; 6], B)))), spoofed, "ARP announcing another MAC")?;
        at(&mut h, Hook::XdpEgress, &from(OWN, eth(0x0806, &arp(2, (OTHER, C), ([0; 6], B)))), spoofed, "the same through the XDP egress hook")?;
        at(&mut h, Hook::TcEgress, &from(OWN, eth(0x0806, &arp(2, (OWN, C), (OTHER, B)))), (true, "pass_non_ip"), "ARP to another MAC")?;
        at(&mut h, Hook::TcEgress, &nd(135, &B6, &[lla(1, OWN)]), pass_nd, "a solicitation with its own MAC")?;
        at(&mut h, Hook::TcEgress, &nd(135, &B6, &[lla(1, OTHER)]), spoofed, "a solicitation with another MAC")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[lla(2, OWN)]), pass_nd, "an advertisement of its own MAC")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[lla(2, OTHER)]), spoofed, "an advertisement of another MAC")?;
        at(&mut h, Hook::XdpEgress, &nd(136, &C6, &[lla(2, OTHER)]), spoofed, "the same through the XDP egress hook")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[nonce.clone(), lla(2, OTHER)]), spoofed, "another MAC after a nonce")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[nonce.clone(), lla(1, OWN), lla(2, OTHER)]), spoofed, "another MAC third")?;
        at(&mut h, Hook::TcEgress, &nd(133, &[], &[lla(1, OTHER)]), spoofed, "a router solicitation with another MAC")?;
        at(&mut h, Hook::TcEgress, &nd(133, &[], &[lla(1, OWN)]), pass_nd, "a router solicitation with its own MAC")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[vec![2, 0, 0, 0, 0, 0, 0, 0], lla(2, OWN)]), spoofed, "an option of length 0")?;
        let many = vec![nonce.clone(); ebpf_common::datapath::MAX_ND_OPTIONS];
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &many), pass_nd, "as many nonces as are read")?;
        let more = [many.clone(), vec![lla(2, OWN)]].concat();
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &more), spoofed, "options past those read")?;
        let mut long = nd(136, &C6, &[lla(2, OWN)]);
        long[18..20].copy_from_slice(&200u16.to_be_bytes());
        at(&mut h, Hook::TcEgress, &long, (false, "drop_truncated"), "options announced past the frame")?;
        // What cannot be read whole is not vouched for: a first fragment
        // (its options may go on in the next), a payload ending before the
        // options start.
        let fragmented = |more: bool| {
            let body = [C6.to_vec(), lla(2, OWN)].concat();
            let mut f = from(OWN, eth(0x86dd, &ipv6(LINK_LOCAL, all_nodes, &[44], ICMPV6, &icmp(136, [0; 4], &body))));
            f[14 + 40 + 3] |= u8::from(more);
            f
        };
        at(&mut h, Hook::TcEgress, &fragmented(true), spoofed, "a first fragment of an advertisement")?;
        at(&mut h, Hook::TcEgress, &fragmented(false), pass_nd, "an atomic fragment, whole")?;
        at(&mut h, Hook::TcEgress, &nd(135, &C6[..8], &[]), spoofed, "a solicitation ending inside its target")?;
        at(&mut h, Hook::TcIngress, &nd(136, &C6, &[lla(2, OTHER)]), pass_nd, "received, whatever MAC it announces")?;
        // A routed pod's MAC is not written: nothing learns from it.
        let routed = Sources { mac: None, ..sources };
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &egress, &routed, None)?;
        at(&mut h, Hook::TcEgress, &from(OTHER, v4_udp(C, B, 5001, 53)), (true, "allow_policy"), "no MAC written, no check")?;
        at(&mut h, Hook::TcEgress, &nd(136, &C6, &[lla(2, OTHER)]), pass_nd, "nor of what it announces")?;
        Ok(())
    })
}

/// A pod that writes a neighbour's address and ports into its packets
/// builds the key of the neighbour's tracked flow. Its packets are judged
/// by its own endpoint's policy, not passed on the neighbour's entry; and
/// the neighbour's flow, whose entry the denied packets left alone, goes on.
#[rustfmt::skip]
#[test]
fn a_pod_cannot_ride_on_a_neighbours_tracked_flow() -> anyhow::Result<()> {
    beside_a_veth(|neighbour, mut h| {
        // The pod on the other veth may send nothing and receive nothing.
        h.maps.replace_policy(neighbour, EP + 1, ISOLATED, &[])?;
        let out = v4_udp(A, B, 5000, 53);
        let back = v4_udp(B, A, 53, 5000);
        let at = expect_at;
        h.expect(OUT, &out, true, "allow_policy", "A's flow to B's DNS port opens")?;
        h.expect(OUT, &out, true, "allow_established", "and is tracked")?;
        for _ in 0..2 {
            at(&mut h, Hook::TcEgress, neighbour, &out, (false, "drop_default_deny"), "the neighbour sends as A")?;
            at(&mut h, Hook::TcIngress, neighbour, &back, (false, "drop_default_deny"), "B's reply handed to the neighbour")?;
        }
        h.expect(OUT, &out, true, "allow_established", "A's flow, after the spoofed packets")?;
        h.expect(IN, &back, true, "allow_reply", "its reply, at A")?;
        Ok(())
    })
}

/// A pod whose addresses the syncer wrote may send only from them (in IPv6
/// also from link-local addresses and `::`), whatever its policy allows;
/// what it receives is not checked. Its packets from other sources are
/// dropped as spoofed, before conntrack could pass them, unless an extra
/// prefix written for its endpoint (not another's), in the packet's
/// family, covers them, and the endpoint is flagged as having some.
#[rustfmt::skip]
#[test]
fn a_pods_packets_from_a_source_not_its_own_are_dropped_as_spoofed() -> anyhow::Result<()> {
    use palisade::compile::Sources;
    beside_a_veth(|pod, mut h| {
        // Its policy allows UDP to port 53 anywhere, and lets anything in.
        let sources = Sources { v4: Some(Ipv4Addr::from(C)), v6: Some(Ipv6Addr::from(C6)), prefixes: false, mac: None };
        let egress = [entry(OUT, identity::ANY, UDP, (53, 53), allow(41))];
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &egress, &sources, None)?;
        let at = |h: &mut Harness, hook, frame: &[u8], want: (bool, &str), what: &str| expect_at(h, hook, pod, frame, want, what);
        let v6_udp = |src: [u8; 16], dst: [u8; 16]| eth(0x86dd, &ipv6(src, dst, &[], UDP, &udp(5000, 53)));
        at(&mut h, Hook::TcEgress, &v4_udp(C, B, 5000, 53), (true, "allow_policy"), "its own source")?;
        at(&mut h, Hook::TcEgress, &v4_udp(C, B, 5000, 53), (true, "allow_established"), "its own flow")?;
        at(&mut h, Hook::TcEgress, &v4_udp(C, B, 5000, 54), (false, "drop_default_deny"), "its own, denied by policy")?;
        // A's flow is tracked at A: C sending as A finds its entry.
        h.expect(OUT, &v4_udp(A, B, 5000, 53), true, "allow_policy", "A's flow opens")?;
        for _ in 0..2 {
            at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5000, 53), (false, "drop_spoofed_source"), "C sending as A")?;
        }
        at(&mut h, Hook::TcEgress, &v4_udp(B, A, 53, 5000), (false, "drop_spoofed_source"), "C sending B's reply to A")?;
        at(&mut h, Hook::TcEgress, &v6_udp(C6, B6), (true, "allow_policy"), "its own IPv6 source")?;
        at(&mut h, Hook::TcEgress, &v6_udp(LINK_LOCAL, B6), (true, "allow_policy"), "a link-local source")?;
        at(&mut h, Hook::TcEgress, &v6_udp(A6, B6), (false, "drop_spoofed_source"), "another IPv6 source")?;
        // Extra prefixes (a gateway's): A's address in each family. Each
        // counts in its own family only, for its own endpoint only, and
        // only once the endpoint says it has some.
        h.maps.set_source_prefix(EP + 1, "10.0.0.0/30".parse()?)?;
        h.maps.set_source_prefix(EP + 1, "fd00::/127".parse()?)?;
        h.maps.set_source_prefix(EP + 2, "10.0.0.64/26".parse()?)?;
        h.maps.set_source_prefix(EP + 2, "fd00::/64".parse()?)?;
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5002, 53), (false, "drop_spoofed_source"), "prefixes, but not the flag")?;
        let with_prefixes = Sources { prefixes: true, ..sources };
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &egress, &with_prefixes, None)?;
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5002, 53), (true, "allow_policy"), "a source its prefix covers")?;
        at(&mut h, Hook::TcEgress, &v6_udp(A6, B6), (true, "allow_policy"), "fd00::1, in fd00::/127")?;
        at(&mut h, Hook::TcEgress, &v6_udp(B6, A6), (false, "drop_spoofed_source"), "fd00::2, past it")?;
        at(&mut h, Hook::TcEgress, &v4_udp([10, 0, 0, 77], B, 5002, 53), (false, "drop_spoofed_source"), "another endpoint's prefix")?;
        h.maps.set_source_prefix(EP + 1, "::/0".parse()?)?;
        at(&mut h, Hook::TcEgress, &v6_udp(B6, A6), (true, "allow_policy"), "any IPv6 source, by ::/0")?;
        // But never one of the node's link-local addresses, its pods' router.
        let node: [u8; 16] = "fe80::1".parse::<Ipv6Addr>()?.octets();
        h.maps.set_node_addresses(&[Ipv6Addr::from(node)].into()).into_iter().try_for_each(Err)?;
        at(&mut h, Hook::TcEgress, &v6_udp(node, B6), (false, "drop_spoofed_source"), "the node's link-local, whatever the prefixes")?;
        let all_nodes: [u8; 16] = "ff02::1".parse::<Ipv6Addr>()?.octets();
        let advert = |target: &[u8; 16]| eth(0x86dd, &ipv6(LINK_LOCAL, all_nodes, &[], ICMPV6, &icmp(136, [0; 4], target)));
        at(&mut h, Hook::TcEgress, &advert(&node), (false, "drop_spoofed_source"), "nor announce it")?;
        at(&mut h, Hook::TcEgress, &advert(&B6), (true, "pass_neighbour_discovery"), "another address ::/0 covers")?;
        // Nor one of the node's bridges' IPv4 addresses (its pods' gateway),
        // though its prefix covers it: not as a source, not in ARP.
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5004, 53), (true, "allow_policy"), "A, in its prefix")?;
        let gateway = Ipv4Addr::from(A).to_ipv6_mapped();
        h.maps.set_node_addresses(&[Ipv6Addr::from(node), gateway].into()).into_iter().try_for_each(Err)?;
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5005, 53), (false, "drop_spoofed_source"), "A, the node's bridge's")?;
        let arp_for = |spa: [u8; 4]| eth(0x0806, &arp(2, ([0; 6], spa), ([0; 6], B)));
        at(&mut h, Hook::TcEgress, &arp_for(A), (false, "drop_spoofed_source"), "ARP for the node's bridge's address")?;
        at(&mut h, Hook::TcEgress, &arp_for([10, 0, 0, 2]), (true, "pass_non_ip"), "ARP for another its prefix covers")?;
        h.maps.set_node_addresses(&Default::default()).into_iter().try_for_each(Err)?;
        at(&mut h, Hook::TcEgress, &v4_udp([0, 0, 0, 0], B, 5002, 53), (false, "drop_spoofed_source"), "::/0 does not cover IPv4")?;
        for held in h.maps.source_prefixes()? {
            h.maps.remove_source_prefix(&held)?;
        }
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5003, 53), (false, "drop_spoofed_source"), "its prefix removed")?;
        // Ingress is the sender's to check: anything addressed to C is judged
        // by policy alone (none isolates C's ingress).
        at(&mut h, Hook::TcIngress, &v4_udp(B, A, 53, 5000), (true, "pass_unenforced"), "received, whatever its addresses")?;
        // Without sources written, nothing is checked.
        h.maps.replace_policy(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &egress)?;
        at(&mut h, Hook::TcEgress, &v4_udp(A, B, 5001, 53), (true, "allow_policy"), "no sources, no check")?;
        Ok(())
    })
}

/// What a pod's ARP and neighbour discovery announce on the link is held to
/// the source check's rules: the sender protocol address of its ARP (or
/// `0.0.0.0`, a probe), the source of its neighbour discovery and the
/// target its advertisements announce must be its own (or link-local, in
/// IPv6, but not the node's), or in its prefixes. A pod sends no router advertisement or
/// redirect at all. What reaches a pod, and a pod with no address
/// written, is not checked.
#[rustfmt::skip]
#[test]
fn a_pods_arp_and_neighbour_discovery_claim_only_its_own_addresses() -> anyhow::Result<()> {
    use palisade::compile::Sources;
    const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
    beside_a_veth(|pod, mut h| {
        let sources = Sources { v4: Some(Ipv4Addr::from(C)), v6: Some(Ipv6Addr::from(C6)), prefixes: false, mac: None };
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &[], &sources, None)?;
        let at = |h: &mut Harness, hook, frame: &[u8], want: (bool, &str), what: &str| expect_at(h, hook, pod, frame, want, what);
        let out = |h: &mut Harness, frame: &[u8], want: (bool, &str), what: &str| {
            at(h, Hook::TcEgress, frame, want, what)
        };
        let arp_from = |spa: [u8; 4]| eth(0x0806, &arp(1, (MAC, spa), ([0; 6], B)));
        let nd = |src: [u8; 16], kind: u8, body: &[u8]| {
            eth(0x86dd, &ipv6(src, ALL_NODES, &[], ICMPV6, &icmp(kind, [0; 4], body)))
        };
        let pass_arp = (true, "pass_non_ip");
        let pass_nd = (true, "pass_neighbour_discovery");
        let spoofed = (false, "drop_spoofed_source");
        let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::from_map_data(
            aya::maps::MapData::from_pin(h.t.pins.map(maps::EVENTS))?,
        )?)?;
        out(&mut h, &arp_from(C), pass_arp, "ARP from its own address")?;
        out(&mut h, &arp_from([0; 4]), pass_arp, "an ARP probe")?;
        out(&mut h, &arp_from(A), spoofed, "ARP claiming A's address")?;
        // Its event names what it claimed, marked as ARP.
        let mapped = |a: [u8; 4]| IpAddr::from(Ipv4Addr::from(a).to_ipv6_mapped().octets());
        let events = drain(&mut ring);
        anyhow::ensure!(events.len() == 1, "one event for the one drop: {events:?}");
        let e = events[0];
        anyhow::ensure!(
            (e.protocol, e.sport, IpAddr::from(e.src), IpAddr::from(e.dst)) == (0, ebpf_common::datapath::ARP_EVENT_SPORT, mapped(A), mapped(B)),
            "the ARP drop's event: {e:?}"
        );
        at(&mut h, Hook::XdpEgress, &arp_from(A), spoofed, "the same through the XDP egress hook")?;
        let mut ieee802 = arp(1, (MAC, A), ([0; 6], B));
        ieee802[1] = 6;
        out(&mut h, &eth(0x0806, &ieee802), spoofed, "ARP of IEEE 802's hardware type, which Linux takes alike")?;
        let mut other_kind = ieee802;
        other_kind[1] = 4;
        out(&mut h, &eth(0x0806, &other_kind), pass_arp, "ARP of another hardware type claims nothing")?;
        out(&mut h, &eth(0x0806, &arp(1, (MAC, A), ([0; 6], B))[..20]), (false, "drop_truncated"), "ARP cut short")?;
        out(&mut h, &nd(C6, 135, &B6), pass_nd, "a solicitation from its own address")?;
        out(&mut h, &nd([0; 16], 135, &C6), pass_nd, "duplicate address detection, from ::")?;
        out(&mut h, &nd(A6, 135, &B6), spoofed, "a solicitation from A's address")?;
        out(&mut h, &nd(A6, 143, &[]), spoofed, "an MLD report from A's address")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &C6), pass_nd, "an advertisement of its own address")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &LINK_LOCAL), pass_nd, "an advertisement of a link-local address")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &A6), spoofed, "an advertisement of A's address")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &[]), (false, "drop_truncated"), "an advertisement without its target")?;
        out(&mut h, &nd(LINK_LOCAL, 133, &[]), pass_nd, "a router solicitation")?;
        out(&mut h, &nd(LINK_LOCAL, 134, &[0; 8]), (false, "drop_router_message"), "a router advertisement")?;
        out(&mut h, &nd(LINK_LOCAL, 137, &[0; 32]), (false, "drop_router_message"), "a redirect")?;
        // The node's link-local addresses (its router's, on a bridge) are
        // no pod's, though every other link-local address may be.
        let node: [u8; 16] = "fe80::1".parse::<Ipv6Addr>()?.octets();
        let other: [u8; 16] = "fe80::2".parse::<Ipv6Addr>()?.octets();
        h.maps.set_node_addresses(&[Ipv6Addr::from(node)].into()).into_iter().try_for_each(Err)?;
        out(&mut h, &nd(LINK_LOCAL, 136, &node), spoofed, "an advertisement of the node's link-local address")?;
        out(&mut h, &nd(node, 135, &B6), spoofed, "a solicitation from the node's link-local address")?;
        at(&mut h, Hook::XdpEgress, &nd(LINK_LOCAL, 136, &node), spoofed, "the same through the XDP egress hook")?;
        out(&mut h, &eth(0x86dd, &ipv6(node, C6, &[], UDP, &udp(5000, 53))), spoofed, "UDP from the node's link-local address")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &other), pass_nd, "an advertisement of another link-local address")?;
        out(&mut h, &nd(other, 135, &B6), pass_nd, "a solicitation from another link-local address")?;
        at(&mut h, Hook::TcIngress, &nd(node, 136, &node), pass_nd, "the node's own advertisement, to the pod")?;
        h.maps.set_node_addresses(&Default::default()).into_iter().try_for_each(Err)?;
        anyhow::ensure!(h.maps.node_addresses()?.is_empty(), "the node's addresses removed");
        out(&mut h, &nd(LINK_LOCAL, 136, &node), pass_nd, "no longer the node's")?;
        // What reaches the pod is the sender's to check.
        at(&mut h, Hook::TcIngress, &arp_from(A), pass_arp, "ARP to the pod")?;
        at(&mut h, Hook::TcIngress, &nd(LINK_LOCAL, 136, &A6), pass_nd, "an advertisement to the pod")?;
        at(&mut h, Hook::TcIngress, &nd(LINK_LOCAL, 134, &[0; 8]), pass_nd, "the node's router advertisement")?;
        // Its prefixes count as its own, for what it announces too.
        h.maps.set_source_prefix(EP + 1, "10.0.0.0/30".parse()?)?;
        h.maps.set_source_prefix(EP + 1, "fd00::/127".parse()?)?;
        let with_prefixes = Sources { prefixes: true, ..sources };
        h.maps.replace_policy_held(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &[], &with_prefixes, None)?;
        out(&mut h, &arp_from(A), pass_arp, "ARP for an address its prefix covers")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &A6), pass_nd, "an advertisement of fd00::1, in its prefix")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &B6), spoofed, "fd00::2, past it")?;
        out(&mut h, &arp_from(NET_HOST), spoofed, "ARP past its prefix")?;
        for held in h.maps.source_prefixes()? {
            h.maps.remove_source_prefix(&held)?;
        }
        // Without sources written, nothing is checked; a router message
        // is still no pod's to send.
        h.maps.replace_policy(pod, EP + 1, endpoint_flags::ISOLATED_EGRESS, &[])?;
        out(&mut h, &arp_from(A), pass_arp, "no sources: ARP unchecked")?;
        out(&mut h, &nd(LINK_LOCAL, 136, &A6), pass_nd, "no sources: advertisements unchecked")?;
        out(&mut h, &nd(LINK_LOCAL, 134, &[0; 8]), (false, "drop_router_message"), "no sources: still no router advertisement")?;
        Ok(())
    })
}
