//! TCP throughput and UDP packet rate across a veth pair with nothing, Palisade's TC programs,
//! or its XDP pod-egress program (native and generic) attached to the host-side end:
//! the measurement behind the per-pod hook default (see README).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use palisade::{
    datapath::DatapathMaps,
    loader::features::Features,
    loader::{
        self,
        attach::{self, TcHook},
    },
    netns::ifindex,
    paths::PinDir,
};
use palisade_lab::fixtures::{NODE_IP, POD_IP, VethPair};

const BYTES: usize = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// The bench's measurements on the lab's veth pair.
struct Pair(VethPair);

impl Pair {
    /// Gbit/s from the pod to the node, one TCP stream.
    fn throughput(&self) -> anyhow::Result<f64> {
        let listener = self.0.node.run(|| TcpListener::bind((NODE_IP, 0)))??;
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
        let mut client = self.0.pod.run(|| TcpStream::connect(addr))??;
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
        let server = self.0.node.run(|| UdpSocket::bind((NODE_IP, 0)))??;
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
        let client = self.0.pod.run(|| UdpSocket::bind((POD_IP, 0)))??;
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

pub fn report(features: &Features) -> anyhow::Result<()> {
    let pair = Pair(VethPair::new()?);
    let none = pair.measure()?;

    let base = format!("/sys/fs/bpf/palisade-bench-veth-{}", std::process::id());
    let pins = PinDir::new(&base);
    let result = (|| -> anyhow::Result<[(f64, f64); 3]> {
        let node = &pair.0.node;
        let host0 = node.run(|| ifindex(&pair.0.host_if))??;
        let mut loaded = loader::load_all(&pins, features)?;
        let mut maps = DatapathMaps::open(&pins)?;
        maps.replace_policy(host0, 1, 0, &[])?;
        node.run(|| -> anyhow::Result<()> {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                attach::attach_tc(&mut loaded.tc, &pins, host0, hook, features.tcx)?;
            }
            Ok(())
        })??;
        let tc = pair.measure()?;
        node.run(|| attach::detach_clsact(host0))??;
        attach::unpin_links(&pins)?;
        drop(loaded);

        let mut xdp = [(0.0, 0.0); 2];
        for (slot, mode) in [(0, XdpMode::Driver), (1, XdpMode::Skb)] {
            let mut loaded = loader::load_all(&pins, features)?;
            node.run(|| attach::attach_xdp_from_pod(&mut loaded.xdp, &pins, host0, mode))??;
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
