//! Endpoint discovery: which host-side veth carries a local pod's address.
//!
//! The CNI is not ours, so the answer comes from the node's own tables,
//! read through rtnetlink:
//! - routed CNIs (a cloud VPC CNI, Calico-style): the route to the pod
//!   address leaves through the pod's veth itself;
//! - bridged CNIs (flannel's `cni0`, the bridge plugin): the route leaves
//!   through the bridge; the neighbour entry gives the pod's MAC and the
//!   bridge's forwarding database the port (the veth) that MAC sits behind.
//!   Until the pod has spoken, neither exists: `nudge` makes the node ask
//!   (ARP/ND pass Palisade's programs unconditionally).

use std::net::{IpAddr, SocketAddr, UdpSocket};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        link::{InfoKind, LinkAttribute, LinkInfo},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// How a pod address was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The route's output interface is a veth.
    Routed { veth: u32 },
    /// Through bridge `bridge`, port `veth`.
    Bridged { bridge: u32, veth: u32 },
}

impl Placement {
    pub fn veth(self) -> u32 {
        match self {
            Self::Routed { veth } | Self::Bridged { veth, .. } => veth,
        }
    }
}

/// Why an address is not placed (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplaced {
    NoRoute,
    /// The route goes out through something that is neither a veth nor a bridge.
    NotLocal {
        ifindex: u32,
    },
    /// Bridged, but the node has not resolved the address or the bridge not
    /// learnt the MAC yet.
    Unresolved {
        bridge: u32,
    },
}

async fn kind_of(handle: &Handle, ifindex: u32) -> Result<Option<InfoKind>, DiscoverError> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    while let Some(link) = links.try_next().await? {
        for attr in link.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        return Ok(Some(kind));
                    }
                }
            }
        }
    }
    Ok(None)
}

async fn route_oif(handle: &Handle, ip: IpAddr) -> Result<Option<u32>, DiscoverError> {
    let mut query = RouteMessage::default();
    query.header.address_family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    query.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
    query
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(ip)));
    let mut routes = handle.route().get(query).execute();
    match routes.try_next().await {
        Ok(Some(route)) => Ok(route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })),
        Ok(None) => Ok(None),
        // ENETUNREACH and friends: no route.
        Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn neighbour_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn lladdr(m: &NeighbourMessage) -> Option<&[u8]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => Some(mac.as_slice()),
        _ => None,
    })
}

async fn mac_of(
    handle: &Handle,
    bridge: u32,
    ip: IpAddr,
) -> Result<Option<Vec<u8>>, DiscoverError> {
    let mut neighbours = handle.neighbours().get().execute();
    while let Some(n) = neighbours.try_next().await? {
        if n.header.ifindex == bridge
            && neighbour_ip(&n) == Some(ip)
            && let Some(mac) = lladdr(&n)
        {
            return Ok(Some(mac.to_vec()));
        }
    }
    Ok(None)
}

async fn port_of(handle: &Handle, bridge: u32, mac: &[u8]) -> Result<Option<u32>, DiscoverError> {
    let mut fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(n) = fdb.try_next().await? {
        let on_bridge = n
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == bridge));
        if on_bridge && n.header.ifindex != bridge && lladdr(&n) == Some(mac) {
            return Ok(Some(n.header.ifindex));
        }
    }
    Ok(None)
}

/// Where the pod with address `ip` is attached on this node, for the
/// network namespace the connection was opened in.
pub async fn locate(
    handle: &Handle,
    ip: IpAddr,
) -> Result<Result<Placement, Unplaced>, DiscoverError> {
    let Some(oif) = route_oif(handle, ip).await? else {
        return Ok(Err(Unplaced::NoRoute));
    };
    match kind_of(handle, oif).await? {
        Some(InfoKind::Veth) => Ok(Ok(Placement::Routed { veth: oif })),
        Some(InfoKind::Bridge) => {
            let Some(mac) = mac_of(handle, oif, ip).await? else {
                return Ok(Err(Unplaced::Unresolved { bridge: oif }));
            };
            match port_of(handle, oif, &mac).await? {
                Some(port) if kind_of(handle, port).await? == Some(InfoKind::Veth) => {
                    Ok(Ok(Placement::Bridged {
                        bridge: oif,
                        veth: port,
                    }))
                }
                _ => Ok(Err(Unplaced::Unresolved { bridge: oif })),
            }
        }
        _ => Ok(Err(Unplaced::NotLocal { ifindex: oif })),
    }
}

/// Makes the node resolve `ip`'s link-layer address: one datagram to the
/// discard port. The pod need not answer it; its ARP/ND reply is enough.
pub fn nudge(ip: IpAddr) {
    let bind: SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], SocketAddr::new(ip, 9));
    }
}

/// A netlink connection in the calling thread's network namespace, driven
/// on the current tokio runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
