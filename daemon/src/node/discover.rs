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

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
};

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
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
    /// Through bridge `bridge`, port `veth`, where the pod's MAC (from the
    /// node's neighbour entry for its address) sits.
    Bridged {
        bridge: u32,
        veth: u32,
        mac: [u8; 6],
    },
}

impl Placement {
    pub fn veth(self) -> u32 {
        match self {
            Self::Routed { veth } | Self::Bridged { veth, .. } => veth,
        }
    }

    /// The pod's MAC where its frames go through a bridge, which learns
    /// from their sources where each MAC lives.
    pub fn bridged_mac(self) -> Option<[u8; 6]> {
        match self {
            Self::Routed { .. } => None,
            Self::Bridged { mac, .. } => Some(mac),
        }
    }
}

/// Why an address is not placed (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplaced {
    /// No route leads to it through a veth or a bridge of this node.
    NoRoute,
    /// The route goes out through something that is neither a veth nor a bridge.
    NotLocal { ifindex: u32 },
    /// Bridged, but the node has not resolved the address or the bridge not
    /// learnt the MAC yet.
    Unresolved { bridge: u32 },
}

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// What a pass reads of each link (its kind, its bridge, its name), as
/// link notifications last told it. A veth's carrier, state, MTU or
/// statistics change many times while a CNI sets it up, and none of that
/// moves a pod or a quarantine: only a link new, gone, or changed in its
/// shape wakes a pass.
#[derive(Clone, Default)]
pub struct LinkShapes(HashMap<u32, LinkShape>);

/// What a pass reads of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkShape {
    pub kind: Option<InfoKind>,
    /// The bridge it is a port of.
    pub controller: Option<u32>,
    pub name: Option<String>,
}

impl LinkShape {
    pub fn of(link: &LinkMessage) -> Self {
        Self {
            kind: link_kind(link),
            controller: link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(c) => Some(*c),
                _ => None,
            }),
            name: link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
        }
    }
}

impl LinkShapes {
    /// Records a notification; whether a pass must look at the links.
    pub fn note(&mut self, message: &RouteNetlinkMessage) -> bool {
        match message {
            // The bridge's own notices of its ports (their STP state, as a
            // port goes from learning to forwarding): the link's own notice
            // tells of a port joining or leaving.
            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)
                if link.header.interface_family == AddressFamily::Bridge =>
            {
                false
            }
            RouteNetlinkMessage::NewLink(link) => {
                let shape = LinkShape::of(link);
                let before = self.0.insert(link.header.index, shape);
                before.as_ref() != self.0.get(&link.header.index)
            }
            RouteNetlinkMessage::DelLink(link) => {
                self.0.remove(&link.header.index);
                true
            }
            _ => false,
        }
    }

    /// Every link as a dump shows it, in place of what was recorded.
    pub fn replace(&mut self, links: &Links) {
        self.0.clone_from(links);
    }

    pub fn to_links(&self) -> Links {
        std::sync::Arc::new(self.0.clone())
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

async fn dump_neighbours(
    handle: &Handle,
    family: Option<AddressFamily>,
) -> Result<Vec<NeighbourMessage>, DiscoverError> {
    let mut request = handle.neighbours().get();
    if let Some(family) = family {
        request = request.set_address_family(family);
    }
    Ok(request.execute().try_collect().await?)
}

/// The interface the route to `ip` leaves through, and whether it goes via
/// a gateway (the address is then behind another host: another node's pod
/// under host-gw routing, even when the uplink is a veth or a bridge).
async fn route_oif(handle: &Handle, ip: IpAddr) -> Result<Option<(u32, bool)>, DiscoverError> {
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
        Ok(Some(route)) => {
            let via = route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_)));
            Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some((*i, via)),
                _ => None,
            }))
        }
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

/// The node's tables as one pass sees them: the links, the routes, the
/// neighbour table and the bridge FDB are each read at most once, however
/// many pods the pass locates. The kernel's own route lookup (which knows
/// policy routing) is asked only for addresses that an on-link route
/// through a veth or a bridge covers: a cluster's other pods, thousands of
/// them, cost a prefix scan each rather than a netlink round trip.
pub struct Tables<'a> {
    handle: &'a Handle,
    links: Option<(Links, Origin)>,
    /// By family: IPv4, IPv6.
    on_link: [Option<Vec<IpNet>>; 2],
    neighbours: Option<Vec<NeighbourMessage>>,
    fdb: Option<Vec<NeighbourMessage>>,
}

/// What a pass reads of the node's links, by ifindex: a dump's, or the
/// link watch's (`node::link_watch`).
pub type Links = std::sync::Arc<HashMap<u32, LinkShape>>;

/// The links a pass is given instead of dumping them (see
/// [`Tables::with_links`]).
pub enum Given {
    Nothing,
    /// An earlier pass's: trusted only for links' kinds.
    Earlier(Links),
    /// The link watch's, every notification queued before the pass read:
    /// as current as a dump made when the pass began.
    Current(Links),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Dumped,
    Earlier,
    Current,
}

impl<'a> Tables<'a> {
    pub fn new(handle: &'a Handle) -> Self {
        Self {
            handle,
            links: None,
            on_link: [None, None],
            neighbours: None,
            fdb: None,
        }
    }

    /// Tables that take `given` for the node's links rather than dump
    /// them. A link dump is the dearest read here: each link's message
    /// carries its statistics and per-family settings (a few hundred links
    /// are hundreds of kilobytes to parse), and the kernel answers it under
    /// its routing lock, which a CNI making a pod's network holds on and
    /// off for tens of milliseconds.
    ///
    /// An earlier pass's dump ([`Given::Earlier`], for a pass that follows
    /// no link notification) is trusted only for what cannot go stale: a
    /// link's kind, which an interface keeps for life (its index names no
    /// other until the kernel's counter wraps, unless a tool asks for that
    /// index); whether a link still exists, its bridge and its name (the
    /// quarantine's reading) are never taken from it. The link watch's
    /// ([`Given::Current`]) is trusted for all of it. Either way, an
    /// interface the node's routes or FDB name and the links given lack is
    /// newer than they are, and makes the tables dump.
    pub fn with_links(handle: &'a Handle, given: Given) -> Self {
        Self {
            links: match given {
                Given::Nothing => None,
                Given::Earlier(l) => Some((l, Origin::Earlier)),
                Given::Current(l) => Some((l, Origin::Current)),
            },
            ..Self::new(handle)
        }
    }

    /// The links these tables read, or were given.
    pub fn links_read(&self) -> Option<Links> {
        self.links.as_ref().map(|(l, _)| l.clone())
    }

    /// The links these tables dumped themselves, if they did.
    pub fn links_dumped(&self) -> Option<Links> {
        match &self.links {
            Some((l, Origin::Dumped)) => Some(l.clone()),
            _ => None,
        }
    }

    async fn links(&mut self) -> Result<&HashMap<u32, LinkShape>, DiscoverError> {
        let (links, _) = match &mut self.links {
            Some(read) => read,
            none => {
                let dump: Vec<LinkMessage> =
                    self.handle.link().get().execute().try_collect().await?;
                let shapes = dump
                    .iter()
                    .map(|l| (l.header.index, LinkShape::of(l)))
                    .collect();
                none.insert((std::sync::Arc::new(shapes), Origin::Dumped))
            }
        };
        Ok(links)
    }

    /// The destinations of every table's routes of `ip`'s family that
    /// leave through a veth or a bridge without a gateway: the only ones
    /// that can lead to a pod of this node. A family no pod address asks
    /// for is not read (an IPv4 cluster's node has hundreds of IPv6
    /// link-local and local routes, one set per veth).
    async fn on_link(&mut self, ip: IpAddr) -> Result<&[IpNet], DiscoverError> {
        let (slot, family) = match ip {
            IpAddr::V4(_) => (0, AddressFamily::Inet),
            IpAddr::V6(_) => (1, AddressFamily::Inet6),
        };
        if self.on_link[slot].is_none() {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await?;
            let mut on_link = Vec::new();
            for route in &routes {
                if let Some(net) = self.on_link_destination(route).await? {
                    on_link.push(net);
                }
            }
            // Every veth brings its own fe80::/64, multicast and local
            // routes: hundreds of copies of a few prefixes, each asked for
            // every pod of the cluster. Their union is what counts.
            self.on_link[slot] = Some(IpNet::aggregate(&on_link));
        }
        Ok(self.on_link[slot].as_deref().unwrap_or_default())
    }

    /// Whether an on-link route through a veth or a bridge covers `ip`:
    /// only such an address can be a pod of this node.
    pub async fn may_be_local(&mut self, ip: IpAddr) -> Result<bool, DiscoverError> {
        Ok(self.on_link(ip).await?.iter().any(|net| net.contains(&ip)))
    }

    async fn on_link_destination(
        &mut self,
        route: &RouteMessage,
    ) -> Result<Option<IpNet>, DiscoverError> {
        let mut oifs = Vec::new();
        for a in &route.attributes {
            match a {
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => return Ok(None),
                RouteAttribute::Oif(i) => oifs.push(*i),
                RouteAttribute::MultiPath(hops) => {
                    oifs.extend(hops.iter().map(|h| h.interface_index));
                }
                _ => {}
            }
        }
        let mut through_pod_side = false;
        for oif in oifs {
            through_pod_side |= matches!(
                self.kind(oif).await?,
                Some(InfoKind::Veth | InfoKind::Bridge)
            );
        }
        if !through_pod_side {
            return Ok(None);
        }
        let prefix = route.header.destination_prefix_length;
        let destination = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        let destination = match (destination, route.header.address_family) {
            (Some(d), _) => d,
            // A default route has no destination attribute.
            (None, AddressFamily::Inet) => Ipv4Addr::UNSPECIFIED.into(),
            (None, AddressFamily::Inet6) => Ipv6Addr::UNSPECIFIED.into(),
            (None, _) => return Ok(None),
        };
        Ok(IpNet::new(destination, prefix).ok())
    }

    async fn kind(&mut self, ifindex: u32) -> Result<Option<InfoKind>, DiscoverError> {
        let given = self
            .links
            .as_ref()
            .is_some_and(|(_, origin)| *origin != Origin::Dumped);
        if given && !self.links().await?.contains_key(&ifindex) {
            self.links = None;
        }
        Ok(self
            .links()
            .await?
            .get(&ifindex)
            .and_then(|l| l.kind.clone()))
    }

    /// Whether `ifindex` is (still) a veth: asked of current links, as an
    /// earlier pass's may hold a link gone since.
    pub async fn is_veth(&mut self, ifindex: u32) -> Result<bool, DiscoverError> {
        self.current_links();
        Ok(self.kind(ifindex).await? == Some(InfoKind::Veth))
    }

    /// Drops links an earlier pass read, so that the next read dumps.
    fn current_links(&mut self) {
        if matches!(self.links, Some((_, Origin::Earlier))) {
            self.links = None;
        }
    }

    /// The veths that look like pods' host sides: ports of a bridge
    /// (bridged CNIs), or named with one of `prefixes` (routed CNIs: `cali`,
    /// `lxc`...). The daemon quarantines such a veth until it knows which
    /// pod it carries.
    pub async fn pod_veths(&mut self, prefixes: &[String]) -> Result<Vec<u32>, DiscoverError> {
        self.current_links();
        let links = self.links().await?;
        let is_bridge = |i: &u32| {
            links
                .get(i)
                .is_some_and(|l| l.kind == Some(InfoKind::Bridge))
        };
        let mut veths: Vec<u32> = links
            .iter()
            .filter(|(_, l)| l.kind == Some(InfoKind::Veth))
            .filter(|(_, l)| {
                l.controller.as_ref().is_some_and(is_bridge)
                    || l.name
                        .as_ref()
                        .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            })
            .map(|(i, _)| *i)
            .collect();
        veths.sort_unstable();
        Ok(veths)
    }

    /// Reads the neighbour table and the bridge FDB again when next asked:
    /// after nudges, which add entries.
    pub fn forget_neighbours(&mut self) {
        self.neighbours = None;
        self.fdb = None;
    }

    async fn mac_of(&mut self, bridge: u32, ip: IpAddr) -> Result<Option<Vec<u8>>, DiscoverError> {
        if self.neighbours.is_none() {
            self.neighbours = Some(dump_neighbours(self.handle, None).await?);
        }
        Ok(self.neighbours.iter().flatten().find_map(|n| {
            (n.header.ifindex == bridge && neighbour_ip(n) == Some(ip))
                .then(|| lladdr(n).map(<[u8]>::to_vec))
                .flatten()
        }))
    }

    async fn port_of(&mut self, bridge: u32, mac: &[u8]) -> Result<Option<u32>, DiscoverError> {
        if self.fdb.is_none() {
            self.fdb = Some(dump_neighbours(self.handle, Some(AddressFamily::Bridge)).await?);
        }
        Ok(self.fdb.iter().flatten().find_map(|n| {
            let on_bridge = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == bridge));
            (on_bridge && n.header.ifindex != bridge && lladdr(n) == Some(mac))
                .then_some(n.header.ifindex)
        }))
    }

    /// Where the pod with address `ip` is attached on this node, for the
    /// network namespace the connection was opened in.
    pub async fn locate(
        &mut self,
        ip: IpAddr,
    ) -> Result<Result<Placement, Unplaced>, DiscoverError> {
        if !self.may_be_local(ip).await? {
            return Ok(Err(Unplaced::NoRoute));
        }
        let Some((oif, via_gateway)) = route_oif(self.handle, ip).await? else {
            return Ok(Err(Unplaced::NoRoute));
        };
        // Routed CNIs reach their pods on-link; a gateway means another host.
        if via_gateway {
            return Ok(Err(Unplaced::NotLocal { ifindex: oif }));
        }
        match self.kind(oif).await? {
            Some(InfoKind::Veth) => Ok(Ok(Placement::Routed { veth: oif })),
            Some(InfoKind::Bridge) => {
                let Some(mac) = self.mac_of(oif, ip).await? else {
                    return Ok(Err(Unplaced::Unresolved { bridge: oif }));
                };
                let port = self.port_of(oif, &mac).await?;
                match (port, <[u8; 6]>::try_from(&mac[..])) {
                    (Some(port), Ok(mac)) if self.kind(port).await? == Some(InfoKind::Veth) => {
                        Ok(Ok(Placement::Bridged {
                            bridge: oif,
                            veth: port,
                            mac,
                        }))
                    }
                    _ => Ok(Err(Unplaced::Unresolved { bridge: oif })),
                }
            }
            _ => Ok(Err(Unplaced::NotLocal { ifindex: oif })),
        }
    }
}

/// One address, with fresh tables.
pub async fn locate(
    handle: &Handle,
    ip: IpAddr,
) -> Result<Result<Placement, Unplaced>, DiscoverError> {
    Tables::new(handle).locate(ip).await
}

/// Makes the node resolve `ip`'s link-layer address: one datagram to the
/// discard port. The pod need not answer it; its ARP/ND reply is enough.
pub fn nudge(ip: IpAddr) {
    let bind = if ip.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], SocketAddr::new(ip, 9));
    }
}

/// Nudges `ips` (see [`nudge`]) on a thread of its own, for a pass that
/// reads no answer: a nudge of an IPv4 address is an ARP broadcast that
/// the bridge floods to every port in the sender's own system call
/// (with 200 ports, 38 ms for 167 nudges in one pass), which the
/// pass, and a change behind it, need not wait for. One round at a time:
/// addresses asked for while one is under way join it, sent once it has
/// sent what it held, so a pass's own addresses are never skipped.
pub fn nudge_aside(ips: Vec<IpAddr>) {
    static ROUNDS: Rounds = Rounds::new();
    ROUNDS.ask(ips, nudge);
}

/// The addresses waiting for a nudge and whether a round is sending.
struct Rounds(std::sync::Mutex<(Vec<IpAddr>, bool)>);

impl Rounds {
    const fn new() -> Self {
        Self(std::sync::Mutex::new((Vec::new(), false)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Vec<IpAddr>, bool)> {
        // A panic while holding it leaves only a list of addresses.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `ips` to what waits and, unless a round is under way, starts
    /// one that `send`s until nothing waits.
    fn ask(&'static self, ips: Vec<IpAddr>, send: fn(IpAddr)) {
        {
            let mut state = self.state();
            let (waiting, under_way) = &mut *state;
            for ip in ips {
                if !waiting.contains(&ip) {
                    waiting.push(ip);
                }
            }
            if *under_way || waiting.is_empty() {
                return;
            }
            *under_way = true;
        }
        let round = std::thread::Builder::new()
            .name("nudge".into())
            .spawn(move || self.send_all(send));
        if let Err(e) = round {
            // Sent by the pass itself, then: slower, but asked all the same.
            tracing::debug!("no thread for nudges ({e}): sent in the pass");
            self.send_all(send);
        }
    }

    /// Sends what waits, and what comes meanwhile, then ends the round.
    fn send_all(&self, send: fn(IpAddr)) {
        // A send that panicked would otherwise leave the round under way
        // for good, and every later ask would only queue.
        struct EndsOnPanic<'a>(&'a Rounds);
        impl Drop for EndsOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.state().1 = false;
                }
            }
        }
        let _ends = EndsOnPanic(self);
        loop {
            let batch = {
                let mut state = self.state();
                if state.0.is_empty() {
                    state.1 = false;
                    return;
                }
                std::mem::take(&mut state.0)
            };
            for ip in batch {
                send(ip);
            }
        }
    }
}

/// The interfaces the node's default routes (main table, IPv4 and IPv6,
/// every next hop of a multipath route) leave through: what `--uplink
/// auto` attaches the prefilter to.
pub async fn default_route_links(handle: &Handle) -> Result<Vec<u32>, DiscoverError> {
    const RT_TABLE_MAIN: u8 = 254;
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let routes: Vec<RouteMessage> = handle.route().get(query).execute().try_collect().await?;
        for route in routes.iter().filter(|r| {
            r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && r.header.table == RT_TABLE_MAIN
        }) {
            for a in &route.attributes {
                match a {
                    RouteAttribute::Oif(i) => out.push(*i),
                    RouteAttribute::MultiPath(hops) => {
                        out.extend(hops.iter().map(|h| h.interface_index));
                    }
                    _ => {}
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The node's addresses no pod may claim (`PAL_NODE_LL`): every IPv6
/// link-local address of its interfaces, tentative ones included (a dump
/// shows an address from the moment it is added, before duplicate address
/// detection is done), and the IPv4 addresses of its bridges, IPv4-mapped
/// (a bridge's address is its pods' gateway, which a pod whose source
/// prefixes cover it could otherwise announce at its own MAC). Other IPv4
/// addresses are left out: a node may hold thousands (kube-proxy's IPVS
/// dummy interface holds every Service's), and no bridged pod's neighbour
/// resolves them on its bridge. `links`: the pass's, for their kinds,
/// else they are dumped.
pub async fn node_addresses(
    handle: &Handle,
    links: Option<&Links>,
) -> Result<std::collections::BTreeSet<Ipv6Addr>, DiscoverError> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
    let bridges: std::collections::BTreeSet<u32> = match links {
        Some(links) => (links.iter())
            .filter(|(_, shape)| shape.kind == Some(InfoKind::Bridge))
            .map(|(index, _)| *index)
            .collect(),
        None => {
            let dumped: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
            (dumped.iter())
                .filter(|l| link_kind(l) == Some(InfoKind::Bridge))
                .map(|l| l.header.index)
                .collect()
        }
    };
    let addresses: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    Ok(addresses
        .iter()
        .flat_map(|m| m.attributes.iter().map(move |a| (m.header.index, a)))
        .filter_map(|(index, a)| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) if v6.is_unicast_link_local() => Some(*v6),
            AddressAttribute::Address(IpAddr::V4(v4)) if bridges.contains(&index) => {
                Some(v4.to_ipv6_mapped())
            }
            _ => None,
        })
        .collect())
}

/// The interfaces (ifindex) that carry a clsact filter of Palisade's (its
/// priority and handle, `loader::attach`) on either side. Reads only: a
/// dump needs no capability. An interface with no clsact qdisc answers
/// with an error, which means none.
pub async fn palisade_filters(
    handle: &Handle,
) -> Result<std::collections::BTreeSet<u32>, DiscoverError> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let mut found = std::collections::BTreeSet::new();
    for link in links {
        let Ok(index) = i32::try_from(link.header.index) else {
            continue;
        };
        for side in [true, false] {
            let request = handle.traffic_filter(index).get();
            let request = if side {
                request.ingress()
            } else {
                request.egress()
            };
            let Ok(filters) = request.execute().try_collect::<Vec<_>>().await else {
                continue;
            };
            if filters.iter().any(|f| {
                crate::loader::attach::is_palisade_filter(f.header.handle.into(), f.header.info)
            }) {
                found.insert(link.header.index);
            }
        }
    }
    Ok(found)
}

/// A netlink connection in the calling thread's network namespace, driven
/// on the current tokio runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::LinkHeader;

    use super::*;

    /// Polls `done` every millisecond for at most ten seconds.
    fn within_a_while(done: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_round_whose_send_panicked_does_not_stop_later_ones() {
        use std::sync::Mutex;
        static ROUNDS: Rounds = Rounds::new();
        static SENT: Mutex<Vec<IpAddr>> = Mutex::new(Vec::new());
        fn send(ip: IpAddr) {
            assert!(!ip.is_unspecified(), "a send that panics");
            SENT.lock().unwrap().push(ip);
        }
        let [bad, good]: [IpAddr; 2] = ["0.0.0.0", "10.0.0.9"].map(|s| s.parse().unwrap());
        ROUNDS.ask(vec![bad], send);
        assert!(
            within_a_while(|| !ROUNDS.state().1),
            "the panicked round ended"
        );
        ROUNDS.ask(vec![good], send);
        assert!(within_a_while(|| *SENT.lock().unwrap() == [good]));
    }

    #[test]
    fn addresses_asked_for_while_a_round_sends_are_sent_by_it() {
        use std::sync::{Condvar, Mutex};
        static ROUNDS: Rounds = Rounds::new();
        static SENT: Mutex<Vec<IpAddr>> = Mutex::new(Vec::new());
        static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        // Holds the round in its first send until the gate opens (were no
        // thread to be had, the round would run here and the test hang).
        fn send(ip: IpAddr) {
            let (open, opened) = &GATE;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            SENT.lock().unwrap().push(ip);
        }
        let [a, b, c]: [IpAddr; 3] =
            ["10.0.0.1", "10.0.0.2", "fd00::3"].map(|s| s.parse().unwrap());
        ROUNDS.ask(vec![a], send);
        assert!(
            within_a_while(|| ROUNDS.state().0.is_empty()),
            "the round took its address"
        );
        ROUNDS.ask(vec![b, c, b], send);
        assert_eq!(*ROUNDS.state(), (vec![b, c], true), "joined, once each");
        *GATE.0.lock().unwrap() = true;
        GATE.1.notify_all();
        assert!(
            within_a_while(|| !ROUNDS.state().1),
            "the round ends once nothing waits"
        );
        assert_eq!(*SENT.lock().unwrap(), vec![a, b, c]);
        // And a later ask starts a round again.
        ROUNDS.ask(vec![c], send);
        assert!(within_a_while(|| SENT.lock().unwrap().len() == 4));
    }

    fn link(index: u32, family: AddressFamily, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header = LinkHeader {
            interface_family: family,
            index,
            ..LinkHeader::default()
        };
        m.attributes = attributes;
        m
    }

    fn new_link(
        index: u32,
        name: &str,
        kind: InfoKind,
        controller: Option<u32>,
        mtu: u32,
    ) -> RouteNetlinkMessage {
        let mut attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]),
            LinkAttribute::Mtu(mtu),
        ];
        attributes.extend(controller.map(LinkAttribute::Controller));
        RouteNetlinkMessage::NewLink(link(index, AddressFamily::Unspec, attributes))
    }

    fn veth(index: u32, controller: Option<u32>, mtu: u32) -> RouteNetlinkMessage {
        new_link(index, "veth7", InfoKind::Veth, controller, mtu)
    }

    #[test]
    fn only_a_link_new_gone_or_reshaped_wakes_a_pass() {
        let mut shapes = LinkShapes::default();
        assert!(shapes.note(&veth(7, None, 1400)), "new");
        assert!(!shapes.note(&veth(7, None, 1500)), "its MTU changed only");
        assert!(shapes.note(&veth(7, Some(3), 1500)), "it joined a bridge");
        assert!(!shapes.note(&veth(7, Some(3), 1500)), "the same again");
        let port = link(7, AddressFamily::Bridge, vec![LinkAttribute::Controller(3)]);
        assert!(
            !shapes.note(&RouteNetlinkMessage::NewLink(port.clone())),
            "the bridge's notice of its port"
        );
        assert!(!shapes.note(&RouteNetlinkMessage::DelLink(port)));
        assert!(!shapes.note(&veth(7, Some(3), 1500)), "still known");
        assert!(shapes.note(&veth(7, None, 1500)), "it left the bridge");
        let renamed = new_link(7, "cali7", InfoKind::Veth, None, 1500);
        assert!(shapes.note(&renamed), "renamed (a routed CNI's prefix)");
        let other_kind = new_link(7, "cali7", InfoKind::Dummy, None, 1500);
        assert!(shapes.note(&other_kind), "another kind");
        let gone = link(7, AddressFamily::Unspec, Vec::new());
        assert!(shapes.note(&RouteNetlinkMessage::DelLink(gone)), "gone");
        assert!(shapes.note(&veth(7, None, 1500)), "new again");
    }
}
