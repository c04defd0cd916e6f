//! The simulated node: a node namespace with a bridge (the "existing CNI"),
//! one namespace and one cgroup per pod with a veth to the bridge, and an
//! uplink to an "outside" namespace that holds the externals. Built through
//! netlink and namespace syscalls only, so it runs wherever the binary does
//! (also in the QEMU guest); dropped, it leaves nothing behind.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::link::{InfoData, InfoVeth, LinkAttribute, State},
};

use crate::netns::Netns;
use futures_util::TryStreamExt as _;

use crate::scenario::node_address;

const BRIDGE: &str = "br0";
const UPLINK: &str = "uplink0";
/// The uplink's point-to-point networks (node side .1, outside side .2).
const UPLINK4: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(169, 254, 77, 1),
    Ipv4Addr::new(169, 254, 77, 2),
);
const UPLINK6: (Ipv6Addr, Ipv6Addr) = (
    Ipv6Addr::new(0xfd77, 0x77, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd77, 0x77, 0, 0, 0, 0, 0, 2),
);

pub struct PodNet {
    pub netns: Netns,
    /// The node-side end of the pod's veth (a bridge port).
    pub host_if: String,
    /// The pod's cgroup (v2) directory, when cgroupfs is writable.
    pub cgroup: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
}

pub struct Topology {
    pub node: Netns,
    pub pods: BTreeMap<String, PodNet>,
    pub outside: Option<Netns>,
    cgroup_root: Option<PathBuf>,
    /// What adding a pod later needs.
    netlink: Handle,
    bridge: u32,
    networks: Vec<IpNet>,
    tag: String,
}

/// What the topology is built from.
pub struct Plan<'a> {
    pub tag: &'a str,
    pub networks: Vec<IpNet>,
    /// `ns/name` -> addresses.
    pub pods: Vec<(String, Vec<IpAddr>)>,
    pub externals: Vec<IpAddr>,
}

pub async fn index_of(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    let link = links
        .try_next()
        .await
        .with_context(|| format!("looking up link {name}"))?
        .ok_or_else(|| anyhow::anyhow!("no link {name}"))?;
    Ok(link.header.index)
}

pub async fn set_up(handle: &Handle, index: u32) -> anyhow::Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("setting link {index} up"))
}

pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

pub async fn add_route(h: &Handle, to: IpNet, via: IpAddr) -> anyhow::Result<()> {
    let route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(to.addr(), to.prefix_len())
        .and_then(|r| r.gateway(via))
        .map_err(|e| anyhow::anyhow!("route to {to} via {via}: {e}"))?
        .build();
    h.route()
        .add(route)
        .execute()
        .await
        .with_context(|| format!("route to {to} via {via}"))
}

async fn default_route(h: &Handle, via: IpAddr) -> anyhow::Result<()> {
    let any = if via.is_ipv4() {
        "0.0.0.0/0".parse()?
    } else {
        "::/0".parse()?
    };
    add_route(h, any, via).await
}

pub async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> anyhow::Result<()> {
    h.address()
        .add(index, ip, prefix)
        .execute()
        .await
        .with_context(|| format!("address {ip}/{prefix}"))
}

/// A veth made with its peer already in `peer_ns`, named `eth0` there (then
/// set up), and its node-side end `host` up and, given a `controller`, a port of
/// it: one request, as a bridge CNI makes a pod's pair. Moving a made peer
/// over instead costs the move's RCU grace period (about 20 ms here), under
/// the routing lock. Returns the node-side index and the peer's handle and
/// index.
pub async fn veth_into(
    node: &Handle,
    host: &str,
    peer_ns: &Netns,
    controller: Option<u32>,
) -> anyhow::Result<(u32, Handle, u32)> {
    // Not after duplicate address detection: `eth0` takes the namespace's
    // defaults when it is made.
    peer_ns.sysctl("ipv6/conf/default/accept_dad", "0")?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0".to_owned())
        .setns_by_fd(peer_ns.fd())
        .build();
    let mut pair = LinkVeth::new(host, "eth0")
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .up();
    if let Some(controller) = controller {
        pair = pair.controller(controller);
    }
    node.link()
        .add(pair.build())
        .execute()
        .await
        .with_context(|| format!("veth {host} into {}", peer_ns.name))?;
    let host_index = index_of(node, host).await?;
    let h = peer_ns.netlink()?;
    set_up(&h, 1).await?;
    // Not made up: the kernel opens it before the pair is joined (ENOTCONN).
    let index = index_of(&h, "eth0").await?;
    set_up(&h, index).await?;
    operational(node, host_index).await?;
    operational(&h, index).await?;
    Ok((host_index, h, index))
}

/// Waits for link `index` to be operationally up. Its carrier comes on
/// with the peer's, but the kernel takes that up later, on a work queue
/// behind the routing lock, and until then drops what is sent on it: a
/// first ARP request lost there is asked again only a second later.
async fn operational(handle: &Handle, index: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let link = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .with_context(|| format!("looking up link {index}"))?
            .ok_or_else(|| anyhow::anyhow!("no link {index}"))?;
        if link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "link {index} not operationally up after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves link `name` from the namespace of `from` into `into`, renamed
/// `rename` there and up, with addresses usable at once. Returns a handle
/// in `into` and the link's index there.
pub async fn move_link(
    from: &Handle,
    name: &str,
    into: &Netns,
    rename: &str,
) -> anyhow::Result<(Handle, u32)> {
    let index = index_of(from, name).await?;
    from.link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(into.fd())
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("moving {name} into {}", into.name))?;
    let h = into.netlink()?;
    let index = index_of(&h, name).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(rename.to_owned())
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("renaming {name} to {rename}"))?;
    // Not after duplicate address detection.
    let _ = into.sysctl(&format!("ipv6/conf/{rename}/accept_dad"), "0");
    set_up(&h, index).await?;
    Ok((h, index))
}

pub use palisade::sync::lsm::cgroup2_root;

impl Topology {
    pub async fn build(plan: &Plan<'_>) -> anyhow::Result<Self> {
        let node = Netns::new(&format!("{}-node", plan.tag))?;
        let h = node.netlink()?;
        set_up(&h, 1).await?;
        node.sysctl("ipv4/ip_forward", "1")?;
        node.sysctl("ipv6/conf/all/forwarding", "1")?;
        node.sysctl("ipv6/conf/default/accept_dad", "0")?;
        h.link()
            .add(LinkBridge::new(BRIDGE).up().build())
            .execute()
            .await
            .context("bridge")?;
        let bridge = index_of(&h, BRIDGE).await?;
        for net in &plan.networks {
            add_address(&h, bridge, node_address(*net), net.prefix_len()).await?;
        }
        let root = cgroup2_root().map(|r| r.join(format!("palisade-{}", plan.tag)));
        let mut topology = Self {
            node,
            pods: BTreeMap::new(),
            outside: None,
            cgroup_root: root.filter(|r| fs::create_dir(r).is_ok()),
            netlink: h.clone(),
            bridge,
            networks: plan.networks.clone(),
            tag: plan.tag.to_owned(),
        };
        for (key, ips) in &plan.pods {
            topology.add_pod(key, ips).await?;
        }

        if !plan.externals.is_empty() {
            let outside = Netns::new(&format!("{}-outside", plan.tag))?;
            let (uplink, oh, eth0) = veth_into(&h, UPLINK, &outside, None).await?;
            add_address(&h, uplink, UPLINK4.0.into(), 30).await?;
            add_address(&oh, eth0, UPLINK4.1.into(), 30).await?;
            add_address(&h, uplink, UPLINK6.0.into(), 126).await?;
            add_address(&oh, eth0, UPLINK6.1.into(), 126).await?;
            for ip in &plan.externals {
                add_address(&oh, eth0, *ip, host_prefix(*ip)).await?;
                let via = if ip.is_ipv4() {
                    IpAddr::from(UPLINK4.1)
                } else {
                    UPLINK6.1.into()
                };
                add_route(&h, IpNet::new(*ip, host_prefix(*ip))?, via).await?;
            }
            for net in &plan.networks {
                let via = if net.addr().is_ipv4() {
                    IpAddr::from(UPLINK4.0)
                } else {
                    UPLINK6.0.into()
                };
                add_route(&oh, *net, via).await?;
            }
            topology.outside = Some(outside);
        }
        Ok(topology)
    }
}

impl Topology {
    /// A pod's namespace, cgroup and veth to the bridge, as a bridge CNI
    /// would make them (also for pods that arrive during a scenario).
    pub async fn add_pod(&mut self, key: &str, ips: &[IpAddr]) -> anyhow::Result<()> {
        let h = self.netlink.clone();
        let netns = Netns::new(&format!("{}-{key}", self.tag))?;
        let host = format!("lab{}", self.pods.len());
        let (_, ph, eth0) = veth_into(&h, &host, &netns, Some(self.bridge)).await?;
        for ip in ips {
            let net = self
                .networks
                .iter()
                .find(|n| n.contains(ip))
                .with_context(|| format!("{key}: {ip} is outside the pod networks"))?;
            add_address(&ph, eth0, *ip, net.prefix_len()).await?;
            default_route(&ph, node_address(*net)).await.ok();
        }
        let cgroup = self.cgroup_root.as_ref().and_then(|root| {
            let dir = root.join(key.replace('/', "."));
            fs::create_dir(&dir).ok().map(|()| dir)
        });
        self.pods.insert(
            key.to_owned(),
            PodNet {
                netns,
                host_if: host,
                cgroup,
                ips: ips.to_vec(),
            },
        );
        Ok(())
    }
}

impl Topology {
    /// `cluster` with each local pod's cgroup, as the daemon must know it
    /// (`palisade.dev/cgroup` on the Pod the source reads).
    pub fn with_cgroups(&self, cluster: &palisade::model::Snapshot) -> palisade::model::Snapshot {
        let mut cluster = cluster.clone();
        for pod in &mut cluster.pods {
            if let Some(net) = self.pods.get(&pod.key()) {
                std::sync::Arc::make_mut(pod).cgroup =
                    net.cgroup.as_ref().map(|c| c.display().to_string());
            }
        }
        cluster
    }

    /// Makes the uplink the node's IPv4 default route, as on a node whose
    /// traffic leaves through it (`--uplink auto` then finds it). Needs
    /// externals, which make the uplink.
    pub async fn route_default_via_uplink(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.outside.is_some(),
            "no uplink: the plan has no externals"
        );
        default_route(&self.netlink, UPLINK4.1.into()).await
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The namespaces go with their descriptors; cgroups need rmdir,
        // which fails while a process is still in one.
        for pod in self.pods.values() {
            if let Some(dir) = &pod.cgroup {
                let _ = fs::remove_dir(dir);
            }
        }
        if let Some(root) = &self.cgroup_root {
            let _ = fs::remove_dir(root);
        }
    }
}
