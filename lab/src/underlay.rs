//! The network between the nodes of a scenario with `nodes:`, routed as
//! flannel's host-gw backend routes it: every node has an address on one
//! shared layer-2 network, and each node reaches every other node's pod
//! networks through a route via that node's address. The underlay's own
//! namespace stands for the world outside the cluster as well: it holds the
//! externals' addresses, and routes each pod network back via its node.
//!
//! A node's link to the underlay is a macvlan (bridge mode) on a bridge in
//! the underlay namespace, moved into the node's namespace. Not a veth: the
//! daemon takes a route that leaves through a veth for a routed CNI's pod
//! (`discover`), so another node's pods behind a veth would look like this
//! node's own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use ipnet::IpNet;
use rtnetlink::{Handle, LinkBridge, LinkMacVlan, packet_route::link::MacVlanMode};

use crate::{
    netns::Netns,
    topology::{add_address, add_route, host_prefix, index_of, move_link, set_up},
};

/// The underlay's bridge, in its namespace.
const BRIDGE: &str = "ulbr";
/// The underlay's link in each node, and in the underlay namespace the
/// outside's own.
pub const LINK: &str = "underlay0";
/// Prefix lengths of the underlay networks (`scenario::UNDERLAY4`, `6`).
const PREFIX4: u8 = 24;
const PREFIX6: u8 = 64;
/// The outside's host number on the underlay; node `i` has `i + 1`.
const OUTSIDE_HOST: u8 = 254;

fn address(host: u8, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, host.into()).into()
    } else {
        Ipv4Addr::new(169, 254, 100, host).into()
    }
}

/// Node `i`'s address on the underlay, in the family of `v6`.
pub fn node_address(i: usize, v6: bool) -> anyhow::Result<IpAddr> {
    let host = u8::try_from(i + 1)
        .ok()
        .filter(|h| *h < OUTSIDE_HOST)
        .context("too many nodes for the underlay")?;
    Ok(address(host, v6))
}

/// The outside's address on the underlay.
pub fn outside_address(v6: bool) -> IpAddr {
    address(OUTSIDE_HOST, v6)
}

/// A node to connect: its namespace and pod networks.
pub struct Member<'a> {
    pub netns: &'a Netns,
    pub networks: &'a [IpNet],
}

/// The underlay's namespace, which is also the outside.
pub struct Underlay {
    pub netns: Netns,
}

/// Gives link `index` its underlay addresses (both families).
async fn address_both(
    h: &Handle,
    index: u32,
    host_v4: IpAddr,
    host_v6: IpAddr,
) -> anyhow::Result<()> {
    add_address(h, index, host_v4, PREFIX4).await?;
    add_address(h, index, host_v6, PREFIX6).await
}

impl Underlay {
    /// Connects `nodes` and holds `externals`; every node reaches every
    /// other's pod networks and every external, and the externals reach
    /// every pod network.
    pub async fn build(
        tag: &str,
        nodes: &[Member<'_>],
        externals: &[IpAddr],
    ) -> anyhow::Result<Self> {
        let netns = Netns::new(&format!("{tag}-underlay"))?;
        netns.sysctl("ipv6/conf/default/accept_dad", "0")?;
        let h = netns.netlink()?;
        set_up(&h, 1).await?;
        h.link()
            .add(LinkBridge::new(BRIDGE).up().build())
            .execute()
            .await
            .context("the underlay's bridge")?;
        let bridge = index_of(&h, BRIDGE).await?;
        let macvlan = |name: &str| LinkMacVlan::new(name, bridge, MacVlanMode::Bridge).build();

        h.link()
            .add(macvlan(LINK))
            .execute()
            .await
            .context("the outside's underlay link")?;
        let outside = index_of(&h, LINK).await?;
        netns.sysctl(&format!("ipv6/conf/{LINK}/accept_dad"), "0")?;
        set_up(&h, outside).await?;
        address_both(&h, outside, outside_address(false), outside_address(true)).await?;
        for ip in externals {
            add_address(&h, outside, *ip, host_prefix(*ip)).await?;
        }

        let mut handles = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("ul{i}");
            h.link()
                .add(macvlan(&name))
                .execute()
                .await
                .with_context(|| format!("the underlay link of {}", node.netns.name))?;
            let (nh, index) = move_link(&h, &name, node.netns, LINK).await?;
            address_both(&nh, index, node_address(i, false)?, node_address(i, true)?).await?;
            handles.push(nh);
        }

        for (i, node) in nodes.iter().enumerate() {
            for net in node.networks {
                let via = node_address(i, net.addr().is_ipv6())?;
                add_route(&h, *net, via).await?;
                for (_, other) in handles.iter().enumerate().filter(|(j, _)| *j != i) {
                    add_route(other, *net, via).await?;
                }
            }
        }
        for ip in externals {
            let to = IpNet::new(*ip, host_prefix(*ip))?;
            for nh in &handles {
                add_route(nh, to, outside_address(ip.is_ipv6())).await?;
            }
        }
        Ok(Self { netns })
    }
}
