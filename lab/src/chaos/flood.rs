//! A packet flood from inside a pod: IPv4 UDP datagrams written whole to a
//! raw socket, so that the source port can differ in every one (each a new
//! flow to conntrack) at a rate no socket per flow could reach.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::Context as _;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// What a flood sent.
#[derive(Debug)]
pub struct Flooded {
    pub packets: u64,
    pub seconds: f64,
}

/// Sends `count` datagrams from `src` (the pod in `netns`) to each of
/// `targets` in turn, the source port walking through 1024..=65535, so a
/// target receives up to 64,512 flows.
/// On a blocking thread: the runtime goes on serving the pods' listeners.
pub async fn flood(
    netns: PathBuf,
    src: Ipv4Addr,
    targets: Vec<(Ipv4Addr, u16)>,
    count: u64,
) -> anyhow::Result<Flooded> {
    tokio::task::spawn_blocking(move || {
        palisade::netns::in_netns(&netns, || send(src, &targets, count))?
    })
    .await?
}

fn send(src: Ipv4Addr, targets: &[(Ipv4Addr, u16)], count: u64) -> anyhow::Result<Flooded> {
    // IPPROTO_RAW: the header is ours (the kernel fills the checksum and the
    // total length).
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket")?;
    let start = Instant::now();
    let mut sent = 0;
    let mut frame = [0u8; 28 + 8];
    'out: loop {
        for sport in 1024..=u16::MAX {
            for &(dst, dport) in targets {
                if sent == count {
                    break 'out;
                }
                datagram(&mut frame, src, dst, sport, dport);
                let to = SockAddr::from(std::net::SocketAddrV4::new(dst, 0));
                match socket.send_to(&frame, &to) {
                    Ok(_) => sent += 1,
                    // A full queue: the flood outruns the veth; go on.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => return Err(e).context("sending"),
                }
            }
        }
    }
    Ok(Flooded {
        packets: sent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn datagram(frame: &mut [u8; 36], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) {
    let len = frame.len() as u16;
    frame[0] = 0x45;
    frame[2..4].copy_from_slice(&len.to_be_bytes());
    frame[8] = 64;
    frame[9] = libc::IPPROTO_UDP as u8;
    frame[12..16].copy_from_slice(&src.octets());
    frame[16..20].copy_from_slice(&dst.octets());
    frame[20..22].copy_from_slice(&sport.to_be_bytes());
    frame[22..24].copy_from_slice(&dport.to_be_bytes());
    frame[24..26].copy_from_slice(&(len - 20).to_be_bytes());
    // A zero UDP checksum: none, which IPv4 allows.
    frame[26..28].copy_from_slice(&[0, 0]);
    frame[28..].copy_from_slice(b"chaos!!!");
}
