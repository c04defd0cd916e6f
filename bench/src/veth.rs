//! TCP throughput and UDP packet rate across a veth pair with nothing, Palisade's TC programs,
//! or its XDP pod-egress program (native and generic) attached to the host-side end:
//! the measurement behind the per-pod hook default (see README).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use aya::programs::XdpMode;
use palisade::{
    datapath::DatapathMaps,
    features::Features,
    loader::{
        self,
        attach::{self, TcHook},
    },
    netns::{ifindex, in_netns},
    paths::PinDir,
};

const BYTES: usize = 1 << 30;
const CHUNK: usize = 256 * 1024;
const POD: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 1);

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Two namespaces joined by a veth; removed on drop.
struct Pair {
    pod: String,
    node: String,
}

impl Pair {
    fn new() -> anyhow::Result<Self> {
        let id = std::process::id();
        let pair = Self {
            pod: format!("palbench-pod-{id}"),
            node: format!("palbench-node-{id}"),
        };
        ip(&["netns", "add", &pair.pod])?;
        ip(&["netns", "add", &pair.node])?;
        ip(&[
            "-n", &pair.node, "link", "add", "host0", "type", "veth", "peer", "name", "eth0",
            "netns", &pair.pod,
        ])?;
        ip(&[
            "-n",
            &pair.node,
            "addr",
            "add",
            &format!("{NODE}/24"),
            "dev",
            "host0",
        ])?;
        ip(&[
            "-n",
            &pair.pod,
            "addr",
            "add",
            &format!("{POD}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &pair.node, "link", "set", "host0", "up"])?;
        ip(&["-n", &pair.pod, "link", "set", "eth0", "up"])?;
        Ok(pair)
    }

    fn ns(&self, name: &str) -> std::path::PathBuf {
        Path::new("/run/netns").join(name)
    }

    /// Gbit/s from the pod to the node, one TCP stream.
    fn throughput(&self) -> anyhow::Result<f64> {
        let listener = in_netns(&self.ns(&self.node), || TcpListener::bind((NODE, 0)))??;
        let addr = listener.local_addr()?;
        let receiver = std::thread::spawn(move || -> anyhow::Result<f64> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; CHUNK];
            let start = Instant::now();
            let mut got = 0;
            while got < BYTES {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok(got as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
        });
        let mut client = in_netns(&self.ns(&self.pod), || TcpStream::connect(addr))??;
        let buf = vec![7u8; CHUNK];
        let mut sent = 0;
        while sent < BYTES {
            client.write_all(&buf)?;
            sent += CHUNK;
        }
        drop(client);
        receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))?
    }

    /// Packets per second received by the node from a one-second flood of
    /// 64-byte UDP datagrams sent by the pod (one sender, one receiver).
    fn packets_per_second(&self) -> anyhow::Result<f64> {
        let server = in_netns(&self.ns(&self.node), || UdpSocket::bind((NODE, 0)))??;
        server.set_read_timeout(Some(Duration::from_millis(200)))?;
        let target = server.local_addr()?;
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            let mut got = 0u64;
            while server.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        let client = in_netns(&self.ns(&self.pod), || UdpSocket::bind((POD, 0)))??;
        let payload = [0u8; 64];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..256 {
                // ENOBUFS under load is part of what is measured.
                let _ = client.send_to(&payload, target);
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let got = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
        Ok(got as f64 / elapsed)
    }

    /// Median of three (Gbit/s, packets/s).
    fn measure(&self) -> anyhow::Result<(f64, f64)> {
        let (mut gbps, mut pps) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            gbps.push(self.throughput()?);
            pps.push(self.packets_per_second()?);
        }
        gbps.sort_by(f64::total_cmp);
        pps.sort_by(f64::total_cmp);
        Ok((gbps[1], pps[1]))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.pod]);
        let _ = ip(&["netns", "del", &self.node]);
    }
}

pub fn report(features: &Features) -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let none = pair.measure()?;

    let base = format!("/sys/fs/bpf/palisade-bench-veth-{}", std::process::id());
    let pins = PinDir::new(&base);
    let result = (|| -> anyhow::Result<[(f64, f64); 3]> {
        let node = pair.ns(&pair.node);
        let host0 = in_netns(&node, || ifindex("host0"))??;
        let mut loaded = loader::load_all(&pins, features)?;
        let mut maps = DatapathMaps::open(&pins)?;
        maps.replace_policy(host0, 1, 0, &[])?;
        in_netns(&node, || -> anyhow::Result<()> {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                attach::attach_tc(&mut loaded.tc, &pins, host0, hook, features.tcx)?;
            }
            Ok(())
        })??;
        let tc = pair.measure()?;
        in_netns(&node, || attach::detach_clsact(host0))??;
        attach::unpin_links(&pins)?;
        drop(loaded);

        let mut xdp = [(0.0, 0.0); 2];
        for (slot, mode) in [(0, XdpMode::Driver), (1, XdpMode::Skb)] {
            let mut loaded = loader::load_all(&pins, features)?;
            in_netns(&node, || {
                attach::attach_xdp_from_pod(&mut loaded.xdp, &pins, host0, mode)
            })??;
            drop(loaded);
            xdp[slot] = pair.measure()?;
            attach::unpin_links(&pins)?;
            // Wait for the link to go: the next attach must not find it.
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok([tc, xdp[0], xdp[1]])
    })();
    let _ = std::fs::remove_dir_all(&base);
    let [tc, native, generic] = result?;
    println!();
    println!(
        "pod -> node over a veth, median of 3: TCP one stream 1 GiB; UDP 64-byte flood 1 s (packets/s received)"
    );
    for (name, (gbps, pps)) in [
        ("nothing attached", none),
        ("Palisade TC (both hooks)", tc),
        ("Palisade XDP native (egress)", native),
        ("Palisade XDP generic (egress)", generic),
    ] {
        println!(
            "  {name:<26} {gbps:6.2} Gbit/s ({:.2} of bare)  {pps:>9.0} pps ({:.2} of bare)",
            gbps / none.0,
            pps / none.1
        );
    }
    Ok(())
}
