//! One rule set, written for each enforcer in its own language: the sender
//! pod may send UDP to N (peer, port) pairs. The first N-1 peers are
//! addresses outside the cluster (10.200.0.0/16); the last is the receiver
//! pod. The allow flood matches that last pair; the deny flood goes to the
//! receiver on another port and matches none.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The allowed port, and the port of the deny flood.
pub const PORT: u16 = 5000;
pub const DENIED_PORT: u16 = 5001;

/// The nftables table, its named drop counter, the ipset and the
/// iptables chains: all in the lab's node namespace, gone with it.
pub const NFT_TABLE: &str = "palisade_peers";
pub const NFT_COUNTER: &str = "pod_drops";
pub const IPSET: &str = "pal-peers";
pub const IPT_CHAIN: &str = "PAL-PEERS";
pub const IPT_DROP: &str = "PAL-PEERS-DROP";

/// The N peers, in rule order: the receiver last.
pub fn peers(n: usize, receiver: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = (0..n.saturating_sub(1))
        .map(|i| Ipv4Addr::new(10, 200, (i >> 8) as u8, (i & 0xff) as u8))
        .collect();
    v.push(receiver);
    v
}

/// The sender's egress policy: one rule whose peers are the N-1 addresses
/// (ipBlock /32) and the receiver (podSelector), UDP to [`PORT`].
pub fn network_policy(peers: &[Ipv4Addr]) -> String {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: peers, namespace: x}\nspec:\n  podSelector: {matchLabels: {role: sender}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n",
    );
    if let Some((_receiver, others)) = peers.split_last() {
        for p in others {
            let _ = writeln!(y, "    - ipBlock: {{cidr: {p}/32}}");
        }
    }
    let _ = writeln!(
        y,
        "    - podSelector: {{matchLabels: {{role: receiver}}}}\n    ports: [{{protocol: UDP, port: {PORT}}}]"
    );
    y
}

/// The namespace and the two pods, as the daemon's file source reads them.
pub fn cluster(sender: Ipv4Addr, receiver: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{ns: x}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: sender, namespace: x, labels: {{role: sender}}}}\nstatus: {{podIP: {sender}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: receiver, namespace: x, labels: {{role: receiver}}}}\nstatus: {{podIP: {receiver}}}\n"
    )
}

/// nftables, `bridge` family, `forward` hook: the bridged pod traffic as a
/// bridge CNI's node sees it, without br_netfilter. IPv4 from the sender's
/// bridge port jumps to its egress chain; what no rule accepts is counted
/// and dropped. `set`: one lookup in a set of (address, port) instead of a
/// rule per pair.
pub fn nft(peers: &[Ipv4Addr], sender_port: &str, set: bool) -> String {
    let mut t = format!("table bridge {NFT_TABLE} {{\n  counter {NFT_COUNTER} {{ }}\n");
    if set {
        t.push_str("  set allowed {\n    type ipv4_addr . inet_service\n    elements = {");
        for (i, p) in peers.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(t, "{sep}{p} . {PORT}");
        }
        t.push_str(" }\n  }\n  chain pod_egress {\n    ip daddr . udp dport @allowed accept\n");
    } else {
        t.push_str("  chain pod_egress {\n");
        for p in peers {
            let _ = writeln!(t, "    ip daddr {p} udp dport {PORT} accept");
        }
    }
    let _ = write!(
        t,
        "    counter name {NFT_COUNTER} drop\n  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{sender_port}\" ether type ip jump pod_egress\n  }}\n}}\n"
    );
    t
}

/// iptables (legacy), `filter` table, FORWARD: bridged traffic reaches it
/// through br_netfilter (`bridge-nf-call-iptables`, which Kubernetes nodes
/// have on), the sender's bridge port matched with `physdev`. The drop is a
/// chain of its own so that its counter is read without listing N rules.
/// `ipset`: one `set` match against a `hash:ip,port` set instead.
pub fn iptables(peers: &[Ipv4Addr], sender_port: &str, ipset: bool) -> String {
    let mut t = format!(
        "*filter\n:FORWARD ACCEPT [0:0]\n:{IPT_CHAIN} - [0:0]\n:{IPT_DROP} - [0:0]\n-A FORWARD -m physdev --physdev-in {sender_port} -j {IPT_CHAIN}\n"
    );
    if ipset {
        let _ = writeln!(
            t,
            "-A {IPT_CHAIN} -m set --match-set {IPSET} dst,dst -j ACCEPT"
        );
    } else {
        for p in peers {
            let _ = writeln!(
                t,
                "-A {IPT_CHAIN} -d {p}/32 -p udp -m udp --dport {PORT} -j ACCEPT"
            );
        }
    }
    let _ = write!(
        t,
        "-A {IPT_CHAIN} -j {IPT_DROP}\n-A {IPT_DROP} -j DROP\nCOMMIT\n"
    );
    t
}

/// The empty filter table: every chain and rule of [`iptables`] gone.
pub const IPTABLES_EMPTY: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

/// `ipset restore` input for the set [`iptables`] matches with `ipset`.
pub fn ipset(peers: &[Ipv4Addr]) -> String {
    let mut t = format!(
        "create {IPSET} hash:ip,port family inet hashsize {} maxelem {}\n",
        peers.len().next_power_of_two().max(64),
        peers.len().next_power_of_two().max(65_536)
    );
    for p in peers {
        let _ = writeln!(t, "add {IPSET} {p},udp:{PORT}");
    }
    t
}

/// The flood's source ports, `FIRST_SOURCE_PORT` to 65535.
const FIRST_SOURCE_PORT: u16 = 1024;
pub const SOURCE_PORTS: u64 = 65_536 - FIRST_SOURCE_PORT as u64;

/// trafgen's packet: a 64-byte frame (14 Ethernet, 20 IPv4, 8 UDP, 22 of
/// payload), UDP checksum 0 (none), the source port counting through
/// [`SOURCE_PORTS`] values so that every packet of a pass is a new flow.
pub fn trafgen(src_mac: &str, dst_mac: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> String {
    format!(
        "{{\n  eth(da={dst_mac}, sa={src_mac}),\n  ipv4(sa={src}, da={dst}, ttl=64),\n  udp(sp=dinc({FIRST_SOURCE_PORT}, 65535, 1), dp={port}, csum=0),\n  fill(0x00, 22)\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 199, 1, 2);

    #[test]
    fn the_receiver_is_the_last_of_n_distinct_peers() {
        for n in [1, 10, 10_000] {
            let p = peers(n, RECEIVER);
            assert_eq!(p.len(), n);
            assert_eq!(p.last(), Some(&RECEIVER));
            let distinct: std::collections::BTreeSet<_> = p.iter().collect();
            assert_eq!(distinct.len(), n);
        }
    }

    #[test]
    fn every_language_holds_n_rules() {
        let p = peers(100, RECEIVER);
        assert_eq!(network_policy(&p).matches("ipBlock").count(), 99);
        assert_eq!(nft(&p, "lab0", false).matches(" accept\n").count(), 100);
        assert_eq!(nft(&p, "lab0", true).matches(" . 5000").count(), 100);
        assert_eq!(
            iptables(&p, "lab0", false).matches("-j ACCEPT").count(),
            100
        );
        assert_eq!(iptables(&p, "lab0", true).matches("-j ACCEPT").count(), 1);
        assert_eq!(ipset(&p).matches("\nadd ").count(), 100);
    }
}
