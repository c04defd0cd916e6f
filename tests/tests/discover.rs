//! Endpoint discovery through rtnetlink, in both CNI shapes: a routed one
//! (the route to the pod leaves through its veth) and a bridged one (route
//! to the bridge, then neighbour -> MAC -> bridge FDB port).

use std::{net::IpAddr, time::Duration};

use palisade::node::{
    discover::{Given, Links, Placement, Tables, Unplaced, connect, locate, nudge},
    link_watch::LinkWatch,
};
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
        let mac = {
            // Asked over netlink: sysfs shows the namespace it was
            // mounted in, not the calling thread's.
            let out = in_netns(&pod.netns, || {
                std::process::Command::new("ip")
                    .args(["-o", "link", "show", "dev", "eth0"])
                    .output()
            })??;
            let text = String::from_utf8(out.stdout)?;
            let text = text
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .unwrap_or_default();
            let mut mac = [0u8; 6];
            for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
                *byte = u8::from_str_radix(hex, 16)?;
            }
            mac
        };
        assert_eq!(
            found,
            Ok(Placement::Bridged { bridge, veth, mac }),
            "{}",
            pod.ip
        );
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

/// The links as a dump shows them now.
async fn dump(h: &rtnetlink::Handle) -> anyhow::Result<Links> {
    let mut tables = Tables::new(h);
    tables.pod_veths(&[]).await?;
    tables
        .links_dumped()
        .ok_or_else(|| anyhow::anyhow!("the tables did not dump"))
}

/// Seeds `watch` from a dump and waits for a spell of 100 ms in which it
/// stays seeded. Under TCG the kernel can send a notification for an
/// earlier rename late enough to overrun a one-byte buffer after the dump;
/// a test of what one notification does must start from a quiet socket.
async fn seed_until_it_holds(watch: &mut LinkWatch, h: &rtnetlink::Handle) -> anyhow::Result<()> {
    for _ in 0..20 {
        watch.seed(&dump(h).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
        watch.drain()?;
        if watch.current().is_some() {
            watch.take_changed();
            return Ok(());
        }
    }
    anyhow::bail!("the watch lost notifications in each of 20 spells of 100 ms")
}

/// The name the seeded `watch` holds for the link `ifindex`.
fn current_name(watch: &mut LinkWatch, ifindex: u32) -> anyhow::Result<String> {
    watch
        .current()
        .and_then(|c| c.get(&ifindex)?.name.clone())
        .ok_or_else(|| anyhow::anyhow!("unseeded, or no link {ifindex}"))
}

/// Reads notifications until a link came, went or changed shape.
async fn next_change(watch: &mut LinkWatch) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), watch.changes()).await??;
    watch.take_changed();
    Ok(())
}

/// The link watch replaces a pass's link dump once seeded: after every
/// notification queued is read, it holds what a dump made then holds, for
/// a port joining the bridge, a routed CNI's renamed veth and a link gone;
/// a change of MTU alone wakes nothing. Its pod-like veths are a dump's.
#[test]
fn the_link_watch_holds_what_a_dump_holds() -> anyhow::Result<()> {
    let lab = BridgeLab::new(2)?;
    let node = &lab.node;
    in_node(node, async |h| {
        let mut watch = LinkWatch::new()?;
        assert!(watch.current().is_none(), "not seeded yet");
        // Notifications queued before the dump are read after it, laid
        // over it: a link renamed, and one deleted and another made.
        ip_in(node, "link add pz0 type veth peer name pz0p")?;
        ip_in(node, "link set pz0 name pz1")?;
        ip_in(node, "link add pq0 type veth peer name pq0p")?;
        ip_in(node, "link del pq0")?;
        ip_in(node, "link add pq1 type veth peer name pq1p")?;
        watch.seed(&dump(h).await?);
        let same = async |watch: &mut LinkWatch| -> anyhow::Result<Links> {
            watch.drain()?;
            let current = watch.current().ok_or_else(|| anyhow::anyhow!("unseeded"))?;
            assert_eq!(*current, *dump(h).await?);
            let prefixes = ["lxc".to_owned()];
            let watched = Tables::with_links(h, Given::Current(current.clone()))
                .pod_veths(&prefixes)
                .await?;
            assert_eq!(watched, Tables::new(h).pod_veths(&prefixes).await?);
            Ok(current)
        };
        same(&mut watch).await?;

        ip_in(node, "link add pw0 type veth peer name pw0p")?;
        next_change(&mut watch).await?;
        ip_in(node, "link set pw0 master br0")?;
        next_change(&mut watch).await?;
        let current = same(&mut watch).await?;
        let pw0 = palisade::netns::ifindex("pw0")?;
        assert!(current.contains_key(&pw0));
        assert_eq!(
            current[&pw0].controller,
            Some(palisade::netns::ifindex("br0")?)
        );

        ip_in(node, "link set pw0 mtu 1400")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        watch.drain()?;
        assert!(!watch.take_changed(), "an MTU change moves no pod");
        // The bridge's own notice of its port, alone.
        ip_in(node, "link set pw0 type bridge_slave cost 7")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        watch.drain()?;
        assert!(!watch.take_changed(), "a port's cost moves no pod");
        same(&mut watch).await?;

        ip_in(node, "link set pw0 nomaster")?;
        ip_in(node, "link set pw0 name lxc0")?;
        next_change(&mut watch).await?;
        let renamed = same(&mut watch).await?;
        assert_eq!(renamed[&pw0].name.as_deref(), Some("lxc0"));

        ip_in(node, "link del lxc0")?;
        next_change(&mut watch).await?;
        let gone = same(&mut watch).await?;
        assert!(!gone.contains_key(&pw0));
        Ok(())
    })
}

/// Notifications lost to an overrun socket leave the watch unseeded (the
/// next pass dumps) and count as a change. What was queued before the
/// overrun is read with it, not laid over the next dump, which would take
/// the view back to a state the lost notification had replaced; a dump
/// made after that seeds the watch again, and what is queued since is
/// laid over it.
#[test]
fn lost_link_notifications_unseed_the_watch_until_a_dump() -> anyhow::Result<()> {
    let lab = BridgeLab::new(1)?;
    let node = &lab.node;
    ip_in(node, "link add pl0 type veth peer name pl0p")?;
    in_node(node, async |h| {
        let pl0 = palisade::netns::ifindex("pl0")?;
        let mut watch = LinkWatch::with_receive_buffer(1)?;
        watch.seed(&dump(h).await?);
        // The smallest buffer takes the first notification whole; the
        // second finds it full and is lost.
        ip_in(node, "link set pl0 name pla")?;
        ip_in(node, "link set pla name plb")?;
        watch.drain()?;
        assert!(watch.take_changed());
        assert!(watch.current().is_none(), "unseeded after an overrun");
        seed_until_it_holds(&mut watch, h).await?;
        let current = watch.current().ok_or_else(|| anyhow::anyhow!("unseeded"))?;
        assert_eq!(current[&pl0].name.as_deref(), Some("plb"));
        assert_eq!(*current, *dump(h).await?);
        // One notification, which even this buffer takes. The kernel may
        // send one of its own meanwhile (a veth's deferred operstate
        // change, which a slow guest delays further): two overrun the
        // buffer, and the watch rightly unseeds. So a few tries, each on
        // a watch seeded again; every one unseeded is a failure.
        for (i, name) in ["plc", "pld", "ple", "plf", "plg"].into_iter().enumerate() {
            if i > 0 {
                seed_until_it_holds(&mut watch, h).await?;
            }
            ip_in(
                node,
                &format!("link set {} name {name}", current_name(&mut watch, pl0)?),
            )?;
            watch.drain()?;
            let Some(current) = watch.current() else {
                continue;
            };
            assert_eq!(current[&pl0].name.as_deref(), Some(name));
            assert_eq!(*current, *dump(h).await?);
            return Ok(());
        }
        anyhow::bail!("one notification at a time unseeded the watch in each of 5 tries")
    })
}
