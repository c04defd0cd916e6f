//! Fixtures for the privileged integration tests.
//!
//! Every fixture creates its own namespaces and pin directory and removes
//! them on drop, so a failing test leaves nothing behind. The tests run one
//! at a time (`--test-threads=1`): they share the kernel.

pub mod packet;

use std::{
    fs,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use palisade::paths::PinDir;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for kernel objects.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `palisade` binary next to this test's build directory.
pub fn palisade_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("palisade"))
        .context("no build directory")?;
    if !bin.exists() {
        bail!(
            "{} missing: `cargo build -p palisade` first (make privileged does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A pin directory of the test's own on bpffs, removed on drop.
pub struct TempPins {
    pub pins: PinDir,
    base: PathBuf,
}

impl TempPins {
    pub fn new() -> anyhow::Result<Self> {
        let base = PathBuf::from(palisade::paths::BPFFS).join(unique("palisade-test-"));
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Ok(Self {
            pins: PinDir::new(&base),
            base,
        })
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Runs a command and fails with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two network namespaces joined by a veth pair: `node` holds the host-side
/// end (`host_if`, where Palisade attaches) and `pod` the pod's end.
/// Addresses: node 10.199.0.1/24, pod 10.199.0.2/24.
pub struct VethPair {
    pub node: String,
    pub pod: String,
    pub host_if: String,
}

pub const NODE_IP: &str = "10.199.0.1";
pub const POD_IP: &str = "10.199.0.2";

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        let node = unique("pn");
        let pod = unique("pp");
        let host_if = unique("vh");
        let pod_if = unique("vp");
        let pair = Self {
            node: node.clone(),
            pod: pod.clone(),
            host_if: host_if.clone(),
        };
        run("ip", &["netns", "add", &node])?;
        run("ip", &["netns", "add", &pod])?;
        run(
            "ip",
            &[
                "-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
                "netns", &pod,
            ],
        )?;
        for (ns, dev, ip) in [(&node, &host_if, NODE_IP), (&pod, &pod_if, POD_IP)] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            )?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Sends `count` UDP datagrams from the pod to the node, which echoes
    /// each one; returns how many echoes came back. The sockets are created
    /// inside each namespace and used from here: a socket keeps its netns.
    pub fn udp_echo(&self, count: u32) -> anyhow::Result<u32> {
        let server = in_netns(&self.node, || UdpSocket::bind((NODE_IP, 0)))??;
        let client = in_netns(&self.pod, || UdpSocket::bind((POD_IP, 0)))??;
        let timeout = Some(Duration::from_millis(500));
        server.set_read_timeout(timeout)?;
        client.set_read_timeout(timeout)?;
        let target = server.local_addr()?;
        let mut buf = [0u8; 64];
        let mut echoed = 0;
        for i in 0..count {
            client.send_to(&i.to_be_bytes(), target)?;
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                continue;
            };
            server.send_to(&buf[..n], from)?;
            if client.recv_from(&mut buf).is_ok() {
                echoed += 1;
            }
        }
        Ok(echoed)
    }

    /// Runs `f` on a thread that has entered the node namespace. Only the
    /// network namespace is switched (not mounts), so bpffs stays visible.
    pub fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.node, f)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.node]);
        let _ = run("ip", &["netns", "del", &self.pod]);
    }
}

pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    Ok(palisade::netns::in_netns(
        &Path::new("/run/netns").join(name),
        f,
    )?)
}

/// True when running inside the QEMU guest started by tests/vm/run-guest.sh,
/// where BPF LSM must be active.
pub fn in_guest() -> bool {
    std::env::var_os("PALISADE_IN_GUEST").is_some()
}

/// A node namespace with a bridge (the "existing CNI") and pods, each a
/// namespace with a veth to the bridge: `eth0` in the pod, a bridge port on
/// the node. Pod `i` has address 10.199.1.(i+1)/24.
pub struct BridgeLab {
    pub node: String,
    pub pods: Vec<LabPod>,
}

pub struct LabPod {
    pub netns: String,
    pub host_if: String,
    pub ip: std::net::Ipv4Addr,
}

impl BridgeLab {
    pub fn new(pods: usize) -> anyhow::Result<Self> {
        let node = unique("bn");
        let mut lab = Self {
            node: node.clone(),
            pods: Vec::new(),
        };
        run("ip", &["netns", "add", &node])?;
        run("ip", &["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &node, "link", "set", "br0", "up"])?;
        for _ in 0..pods {
            lab.add_pod()?;
        }
        Ok(lab)
    }
}

impl BridgeLab {
    /// Adds a pod: a namespace with `eth0` to a new bridge port, address
    /// 10.199.1.(n+1)/24 for the n-th pod.
    pub fn add_pod(&mut self) -> anyhow::Result<&LabPod> {
        let node = self.node.clone();
        let netns = unique("bp");
        let host_if = unique("bh");
        let ip = std::net::Ipv4Addr::new(10, 199, 1, (self.pods.len() + 1) as u8);
        run("ip", &["netns", "add", &netns])?;
        self.pods.push(LabPod {
            netns: netns.clone(),
            host_if: host_if.clone(),
            ip,
        });
        run(
            "ip",
            &[
                "-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ],
        )?;
        run(
            "ip",
            &["-n", &node, "link", "set", &host_if, "master", "br0", "up"],
        )?;
        run(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(&self.pods[self.pods.len() - 1])
    }

    /// Gives the node an address on the bridge (10.199.1.254/24), as a
    /// bridged CNI's gateway has: the node then routes to the pods through
    /// the bridge and resolves their addresses there.
    pub fn add_node_address(&self) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "-n",
                &self.node,
                "addr",
                "add",
                "10.199.1.254/24",
                "dev",
                "br0",
            ],
        )?;
        Ok(())
    }
}

impl Drop for BridgeLab {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = run("ip", &["netns", "del", &pod.netns]);
        }
        let _ = run("ip", &["netns", "del", &self.node]);
    }
}
