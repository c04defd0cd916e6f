//! Endpoint discovery through rtnetlink, in both CNI shapes: a routed one
//! (the route to the pod leaves through its veth) and a bridged one (route
//! to the bridge, then neighbour -> MAC -> bridge FDB port).

use std::{net::IpAddr, time::Duration};

use palisade::node::discover::{Placement, Unplaced, connect, locate, nudge};
use palisade_lab::netns::Netns;
use palisade_tests::{BridgeLab, POD_IP, VethPair, in_netns, ip_in};

/// Runs `f` with a netlink handle opened inside namespace `ns`.
fn in_node<T: Send>(
    ns: &Netns,
    f: impl AsyncFnOnce(&rtnetlink::Handle) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let handle = connect()?;
            f(&handle).await
        })
    })?
}

#[test]
fn a_routed_pod_is_found_behind_its_veth() -> anyhow::Result<()> {
    let pair = VethPair::new()?;
    let veth = in_netns(&pair.node, || palisade::netns::ifindex(&pair.host_if))??;
    let ip = IpAddr::V4(POD_IP);
    let found = in_node(&pair.node, async |h| Ok(locate(h, ip).await?))?;
    assert_eq!(found, Ok(Placement::Routed { veth }));
    let nowhere = in_node(&pair.node, async |h| {
        Ok(locate(h, "192.0.2.1".parse()?).await?)
    })?;
    assert_eq!(nowhere, Err(Unplaced::NoRoute));
    Ok(())
}

#[test]
fn a_bridged_pod_is_found_through_neighbour_and_fdb() -> anyhow::Result<()> {
    let lab = BridgeLab::new(2)?;
    let bridge = in_netns(&lab.node, || palisade::netns::ifindex("br0"))??;
    for pod in &lab.pods {
        let veth = in_netns(&lab.node, || palisade::netns::ifindex(&pod.host_if))??;
        let ip = IpAddr::V4(pod.ip);
        let found = in_node(&lab.node, async |h| {
            // Nothing has spoken yet: unresolved until the node asks.
            let mut found = locate(h, ip).await?;
            for _ in 0..50 {
                if found.is_ok() {
                    break;
                }
                nudge(ip);
                tokio::time::sleep(Duration::from_millis(40)).await;
                found = locate(h, ip).await?;
            }
            Ok(found)
        })?;
        assert_eq!(found, Ok(Placement::Bridged { bridge, veth }), "{}", pod.ip);
    }
    Ok(())
}

/// Another node's pods under host-gw routing are reached via a gateway:
/// they are not local, even when the node's uplink is a veth (a node in a
/// container) or a bridge, where the route alone would look like a routed
/// or a bridged pod of this node.
#[test]
fn an_address_behind_a_gateway_is_not_local_whatever_the_link() -> anyhow::Result<()> {
    let pair = VethPair::new()?;
    let veth = in_netns(&pair.node, || palisade::netns::ifindex(&pair.host_if))??;
    ip_in(&pair.node, &format!("route add 10.250.0.0/24 via {POD_IP}"))?;
    let remote = in_node(&pair.node, async |h| {
        Ok(locate(h, "10.250.0.7".parse()?).await?)
    })?;
    assert!(
        matches!(remote, Err(Unplaced::NoRoute | Unplaced::NotLocal { .. })),
        "{remote:?} (the pod's veth is {veth})"
    );

    let lab = BridgeLab::new(1)?;
    let bridge = in_netns(&lab.node, || palisade::netns::ifindex("br0"))??;
    ip_in(
        &lab.node,
        &format!("route add 10.251.0.0/24 via {}", lab.pods[0].ip),
    )?;
    let remote = in_node(&lab.node, async |h| {
        Ok(locate(h, "10.251.0.7".parse()?).await?)
    })?;
    assert!(
        matches!(remote, Err(Unplaced::NoRoute | Unplaced::NotLocal { .. })),
        "{remote:?} (the bridge is {bridge})"
    );
    Ok(())
}
