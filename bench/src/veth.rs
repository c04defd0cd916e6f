//! TCP throughput across a veth pair with nothing, Palisade's TC programs,
//! or its XDP program (native and generic) attached to the host-side end:
//! the measurement behind the per-pod hook default (see README).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Instant,
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
    netns::in_netns,
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

    fn median_throughput(&self) -> anyhow::Result<f64> {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(self.throughput()?);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[1])
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
    let none = pair.median_throughput()?;

    let base = format!("/sys/fs/bpf/palisade-bench-veth-{}", std::process::id());
    let pins = PinDir::new(&base);
    let result = (|| -> anyhow::Result<[f64; 3]> {
        let node = pair.ns(&pair.node);
        let host0 = in_netns(&node, || nix_ifindex("host0"))??;
        let mut loaded = loader::load_all(&pins, features)?;
        let mut maps = DatapathMaps::open(&pins)?;
        maps.replace_policy(host0, 1, 0, &[])?;
        in_netns(&node, || -> anyhow::Result<()> {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                attach::attach_tc(&mut loaded.tc, &pins, host0, hook, features.tcx)?;
            }
            Ok(())
        })??;
        let tc = pair.median_throughput()?;
        in_netns(&node, || attach::detach_clsact(host0))??;
        attach::unpin_links(&pins)?;
        drop(loaded);

        let mut xdp = [0.0; 2];
        for (slot, mode) in [(0, XdpMode::Driver), (1, XdpMode::Skb)] {
            let mut loaded = loader::load_all(&pins, features)?;
            in_netns(&node, || {
                attach::attach_xdp(&mut loaded.xdp, &pins, host0, mode)
            })??;
            drop(loaded);
            xdp[slot] = pair.median_throughput()?;
            attach::unpin_links(&pins)?;
            // Wait for the link to go: the next attach must not find it.
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok([tc, xdp[0], xdp[1]])
    })();
    let _ = std::fs::remove_dir_all(&base);
    let [tc, native, generic] = result?;
    println!();
    println!("TCP throughput pod -> node over a veth, one stream, 1 GiB, median of 3 (Gbit/s):");
    println!("  nothing attached        {none:6.2}");
    println!(
        "  Palisade TC (both hooks) {tc:6.2}  ({:.2} of bare)",
        tc / none
    );
    println!(
        "  Palisade XDP native      {native:6.2}  ({:.2} of bare)",
        native / none
    );
    println!(
        "  Palisade XDP generic     {generic:6.2}  ({:.2} of bare)",
        generic / none
    );
    Ok(())
}

fn nix_ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}");
    }
    Ok(index)
}
