//! Real traffic between two pods on a bridge, through the TC programs on
//! their host-side veths: allowed and denied TCP and UDP, replies passing an
//! isolated direction by conntrack, and a deny added under an established
//! TCP connection cutting it at its next packet.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use ebpf_common::datapath::{PolicyValue, action, direction, endpoint_flags, identity};
use palisade::{
    compile::PolicyEntry,
    datapath::DatapathMaps,
    loader::{
        self,
        attach::{self, TcHook},
    },
    netns::ifindex,
    observe::stats::read_pinned,
};
use palisade_lab::netns::Netns;
use palisade_tests::{
    BridgeLab, TempPins, answered, in_netns,
    packet::{TCP, UDP},
};

const WAIT: Duration = Duration::from_millis(700);
const ID_POD1: u32 = identity::FIRST_ALLOCATED + 1;
const ID_POD2: u32 = identity::FIRST_ALLOCATED + 2;

fn allow_from(peer: u32, protocol: u8, port: u16) -> PolicyEntry {
    PolicyEntry {
        direction: direction::INGRESS,
        peer,
        protocol: Some(protocol),
        ports: (port, port),
        value: PolicyValue {
            action: action::ALLOW,
            policy: 42,
            ..PolicyValue::default()
        },
    }
}

fn connect(netns: &Netns, to: SocketAddr) -> anyhow::Result<std::io::Result<TcpStream>> {
    in_netns(netns, || TcpStream::connect_timeout(&to, WAIT))
}

/// Whether a datagram and its reply cross; `false` only when one of them
/// is never answered (see [`answered`]).
fn udp_round_trip(client: &UdpSocket, server: &UdpSocket) -> anyhow::Result<bool> {
    let to = server.local_addr()?;
    client.send_to(b"ping", to)?;
    let mut buf = [0u8; 16];
    let request = server.recv_from(&mut buf);
    let Ok((n, from)) = request else {
        return answered(request, &format!("udp -> {to}"));
    };
    server.send_to(&buf[..n], from)?;
    answered(client.recv_from(&mut buf), &format!("udp reply from {to}"))
}

#[test]
fn two_pods_on_a_bridge() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(2)?;
    // The pods' TC programs are all it attaches.
    let features = palisade_tests::network_only();
    let tc = loader::Programs {
        tc: true,
        prefilter: false,
        xdp_from_pod: false,
    };
    let mut loaded = palisade_tests::network_programs(&t.pins, tc)?;
    let (pod1, pod2) = (&lab.pods[0], &lab.pods[1]);
    let if1 = in_netns(&lab.node, || ifindex(&pod1.host_if))??;
    let if2 = in_netns(&lab.node, || ifindex(&pod2.host_if))??;

    let mut maps = DatapathMaps::open(&t.pins)?;
    maps.set_identity(IpAddr::V4(pod1.ip), 32, ID_POD1)?;
    maps.set_identity(IpAddr::V4(pod2.ip), 32, ID_POD2)?;
    // pod1 accepts nothing new: replies to its own flows must pass by conntrack.
    maps.replace_policy(if1, 1, endpoint_flags::ISOLATED_INGRESS, &[])?;
    let pod2_policy = [
        allow_from(ID_POD1, TCP, 8080),
        allow_from(ID_POD1, UDP, 5300),
    ];
    maps.replace_policy(if2, 2, endpoint_flags::ISOLATED_INGRESS, &pod2_policy)?;

    in_netns(&lab.node, || -> anyhow::Result<()> {
        for index in [if1, if2] {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                attach::attach_tc(&mut loaded.tc, &t.pins, index, hook, features.tcx)?;
            }
        }
        Ok(())
    })??;

    let listen = |port: u16| in_netns(&pod2.netns, move || TcpListener::bind((pod2.ip, port)));
    let open_port = listen(8080)??;
    let closed_port = listen(9090)??;
    let udp_server = |port: u16| -> anyhow::Result<UdpSocket> {
        let s = in_netns(&pod2.netns, move || UdpSocket::bind((pod2.ip, port)))??;
        s.set_read_timeout(Some(WAIT))?;
        Ok(s)
    };
    let udp_client = in_netns(&pod1.netns, || UdpSocket::bind((pod1.ip, 0)))??;
    udp_client.set_read_timeout(Some(WAIT))?;

    // Allowed TCP, with data both ways.
    let mut client = connect(&pod1.netns, SocketAddr::from((pod2.ip, 8080)))?
        .context("pod1 -> pod2:8080 is allowed")?;
    let (mut server, _) = open_port.accept()?;
    server.set_read_timeout(Some(WAIT))?;
    client.set_read_timeout(Some(WAIT))?;
    client.write_all(b"hello")?;
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf)?;
    server.write_all(b"world")?;
    client.read_exact(&mut buf)?;
    assert_eq!(&buf, b"world");

    // Denied TCP: a listener exists, yet the SYN never arrives.
    let denied = SocketAddr::from((pod2.ip, 9090));
    assert!(
        !answered(connect(&pod1.netns, denied)?, "pod1 -> pod2:9090")?,
        "pod1 -> pod2:9090 must be blocked"
    );
    closed_port.set_nonblocking(true)?;
    assert!(
        !answered(closed_port.accept(), "accepting on pod2:9090")?,
        "a denied SYN reached the listener"
    );

    // UDP: allowed with its reply, denied without.
    assert!(
        udp_round_trip(&udp_client, &udp_server(5300)?)?,
        "udp 5300 allowed"
    );
    assert!(
        !udp_round_trip(&udp_client, &udp_server(5301)?)?,
        "udp 5301 denied"
    );

    // pod2 cannot open connections to pod1 (pod1 is isolated for ingress).
    let pod1_listener = in_netns(&pod1.netns, || TcpListener::bind((pod1.ip, 7000)))??;
    let isolated = SocketAddr::from((pod1.ip, 7000));
    assert!(
        !answered(connect(&pod2.netns, isolated)?, "pod2 -> pod1:7000")?,
        "pod2 -> pod1:7000 must be blocked"
    );
    drop(pod1_listener);

    // A deny under the established connection cuts it at its next packet.
    maps.replace_policy(if2, 2, endpoint_flags::ISOLATED_INGRESS, &pod2_policy[1..])?;
    client.write_all(b"after")?;
    let mut after = [0u8; 5];
    assert!(
        !answered(server.read_exact(&mut after), "data after the deny")?,
        "data crossed a connection the new policy denies"
    );
    let cut: u64 = read_pinned(&t.pins.map(ebpf_common::maps::TC_STATS))?
        .iter()
        .filter(|r| r.reason == "drop_revalidated")
        .map(|r| r.events)
        .sum();
    assert!(cut >= 1, "no packet counted as cut by revalidation");

    in_netns(&lab.node, || -> anyhow::Result<()> {
        for index in [if1, if2] {
            attach::detach_clsact(index)?;
        }
        Ok(())
    })??;
    attach::unpin_links(&t.pins)?;
    Ok(())
}
