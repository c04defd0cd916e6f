//! The lab's node, pods and daemon for code that is not a scenario: the
//! privileged integration tests and the bench build their namespaces with
//! the same netlink code as `palisade lab run`, and run the daemon with the
//! same [`Enforcer`](crate::enforcer::Enforcer). Blocking wrappers: callers
//! are plain `#[test]` functions and benchmark loops.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use ipnet::IpNet;
use palisade::model::Snapshot;
use tokio::runtime::Runtime;

use crate::netns::Netns;

use crate::{
    cluster::cluster_yaml,
    enforcer::{DaemonArgs, Enforcer, Feed},
    topology::{Plan, Topology, add_address, set_up, veth_into},
};

/// How long a test waits for the daemon to put a revision in force.
pub const IN_FORCE_LIMIT: Duration = Duration::from_secs(20);

/// A tag of this process's own for namespaces and cgroups; the lab's sweep
/// of stale objects (`lab{pid}-...`) also clears what a killed test left.
fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "lab{}-fx{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `f` to completion on a runtime of its own.
fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(runtime()?.block_on(f))
}

/// The lab's node with `cluster`'s pods on `networks` (and `externals` in
/// the outside namespace), and the daemon (`bin`) started on it with the
/// cluster written to its source but not committed, so that a caller's
/// first revision can carry its policies too. The tests and the bench
/// start so (a scenario's nodes, `nodes::Nodes`, start the same way, one
/// such node each). Returns the daemon's directory as well (its source and
/// status file), which the caller removes.
pub async fn node_with_daemon(
    bin: &Path,
    tag: &str,
    networks: Vec<IpNet>,
    cluster: &Snapshot,
    externals: Vec<IpAddr>,
    feed: Feed,
) -> anyhow::Result<(Topology, Enforcer, PathBuf)> {
    let plan = Plan {
        tag,
        networks,
        pods: cluster
            .pods
            .iter()
            .map(|p| (p.key(), p.ips.clone()))
            .collect(),
        externals,
    };
    let topology = Topology::build(&plan).await.context("building the lab")?;
    let dir = std::env::temp_dir().join(format!("palisade-{tag}"));
    let pins = Path::new(palisade::paths::BPFFS).join(format!("palisade-{tag}"));
    let args = DaemonArgs {
        feed,
        ..DaemonArgs::default()
    };
    let enforcer = Enforcer::start_with(bin, &topology.node, &dir, &pins, args)?;
    enforcer.write(
        "cluster.yaml",
        &cluster_yaml(&topology.with_cgroups(cluster), &Default::default()),
    )?;
    Ok((topology, enforcer, dir))
}

/// Publishes what was written to the daemon's source as the next
/// revision, waits until the daemon reports it in force, and returns the
/// status file then.
pub fn commit_and_wait(daemon: &mut Enforcer) -> anyhow::Result<serde_json::Value> {
    let revision = daemon.commit()?;
    block_on(daemon.wait(revision, IN_FORCE_LIMIT))??;
    daemon.status()
}

/// Two network namespaces joined by a veth pair: `node` holds the host-side
/// end (`host_if`, where Palisade attaches) and `pod` the pod's end (`eth0`).
/// Addresses: node [`NODE_IP`]/24, pod [`POD_IP`]/24.
pub struct VethPair {
    pub node: Netns,
    pub pod: Netns,
    pub host_if: String,
}

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        let tag = unique_tag();
        let node = Netns::new(&format!("{tag}-node"))?;
        let pod = Netns::new(&format!("{tag}-pod"))?;
        let host_if = "host0".to_owned();
        block_on(async {
            let h = node.netlink()?;
            set_up(&h, 1).await?;
            let (host, ph, eth0) = veth_into(&h, &host_if, &pod, None).await?;
            add_address(&h, host, NODE_IP.into(), 24).await?;
            add_address(&ph, eth0, POD_IP.into(), 24).await
        })?
        .context("building the veth pair")?;
        Ok(Self { node, pod, host_if })
    }

    /// Sends `count` UDP datagrams from the pod to the node, which echoes
    /// each one; returns how many echoes came back. The sockets are created
    /// inside each namespace and used from here: a socket keeps its netns.
    pub fn udp_echo(&self, count: u32) -> anyhow::Result<u32> {
        let server = self.node.run(|| UdpSocket::bind((NODE_IP, 0)))??;
        let client = self.pod.run(|| UdpSocket::bind((POD_IP, 0)))??;
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
        Ok(self.node.run(f)?)
    }
}

/// The lab's node ([`Topology`]) with pods in one namespace `x` on the
/// bridge (the "existing CNI"), by position: pod `i` is `x/p<i>` at
/// 10.199.1.(i+1)/24; the node has 10.199.1.254 on the bridge.
pub struct BridgeLab {
    pub node: Netns,
    pub pods: Vec<LabPod>,
    /// Outside the node behind its uplink, when made with externals.
    pub outside: Option<Netns>,
    topology: Topology,
    /// Drives the topology's netlink connection, for pods added later.
    runtime: Runtime,
}

pub struct LabPod {
    pub netns: Netns,
    /// The pod veth's node-side end, a bridge port.
    pub host_if: String,
    pub ip: Ipv4Addr,
}

const POD_NETWORK: &str = "10.199.1.0/24";

impl BridgeLab {
    pub fn new(pods: usize) -> anyhow::Result<Self> {
        Self::with_externals(pods, &[])
    }

    /// Also an outside namespace behind an uplink, holding `externals`.
    pub fn with_externals(pods: usize, externals: &[IpAddr]) -> anyhow::Result<Self> {
        let runtime = runtime()?;
        let tag = unique_tag();
        let plan = Plan {
            tag: &tag,
            networks: vec![POD_NETWORK.parse()?],
            pods: Vec::new(),
            externals: externals.to_vec(),
        };
        let topology = runtime.block_on(Topology::build(&plan))?;
        let mut lab = Self {
            node: topology.node.try_clone()?,
            pods: Vec::new(),
            outside: topology
                .outside
                .as_ref()
                .map(Netns::try_clone)
                .transpose()?,
            topology,
            runtime,
        };
        for _ in 0..pods {
            lab.add_pod()?;
        }
        Ok(lab)
    }

    /// Adds a pod: a namespace with `eth0` to a new bridge port, the n-th
    /// at 10.199.1.(n+1)/24.
    pub fn add_pod(&mut self) -> anyhow::Result<&LabPod> {
        let n = self.pods.len();
        let ip = Ipv4Addr::new(10, 199, 1, u8::try_from(n + 1)?);
        let key = format!("x/p{n}");
        self.runtime
            .block_on(self.topology.add_pod(&key, &[IpAddr::V4(ip)]))?;
        let net = &self.topology.pods[&key];
        self.pods.push(LabPod {
            netns: net.netns.try_clone()?,
            host_if: net.host_if.clone(),
            ip,
        });
        Ok(&self.pods[n])
    }

    /// Makes the uplink the node's default route (see
    /// [`Topology::route_default_via_uplink`]).
    pub fn route_default_via_uplink(&self) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.topology.route_default_via_uplink())
    }
}
