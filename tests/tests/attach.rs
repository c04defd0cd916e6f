//! Programs attached to a real veth in namespaces of the test's own, with
//! real traffic: links are pinned, survive the loader, are taken over by the
//! next loader, and detach when unpinned.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{XdpMode, loaded_programs};
use ebpf_common::maps;
use palisade::{
    loader::{
        Loaded, Programs,
        attach::{self, LinkState, TcHook},
    },
    netns::ifindex,
    observe::stats::read_pinned,
    paths::PinDir,
};
use palisade_tests::{TempPins, VethPair};

/// Events counted so far in `map` for `direction`.
fn events(pins: &PinDir, map: &str, direction: &str) -> anyhow::Result<u64> {
    Ok(read_pinned(&pins.map(map))?
        .iter()
        .filter(|r| r.direction == direction)
        .map(|r| r.events)
        .sum())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    xdp: u64,
    from_pod: u64,
    to_pod: u64,
}

fn counts(pins: &PinDir) -> anyhow::Result<Counts> {
    Ok(Counts {
        xdp: events(pins, maps::XDP_STATS, "ingress")?,
        from_pod: events(pins, maps::TC_STATS, "egress")?,
        to_pod: events(pins, maps::TC_STATS, "ingress")?,
    })
}

/// What [`attach_all`] attaches, the programs verified for it.
const ATTACHED: Programs = Programs {
    tc: true,
    prefilter: true,
    xdp_from_pod: false,
};

/// The prefilter alone.
const PREFILTER: Programs = Programs {
    tc: false,
    prefilter: true,
    xdp_from_pod: false,
};

fn attach_all(
    loaded: &mut Loaded,
    pins: &PinDir,
    veth: &VethPair,
    tcx: bool,
) -> anyhow::Result<Vec<LinkState>> {
    veth.in_node(|| -> anyhow::Result<Vec<LinkState>> {
        let index = ifindex(&veth.host_if)?;
        let mut states = vec![attach::attach_xdp(
            &mut loaded.xdp,
            pins,
            index,
            XdpMode::Default,
        )?];
        for hook in [TcHook::FromPod, TcHook::ToPod] {
            states.push(attach::attach_tc(&mut loaded.tc, pins, index, hook, tcx)?);
        }
        Ok(states)
    })?
}

const N: u32 = 5;

/// The ids of the programs `loaded` verified.
fn program_ids(loaded: &Loaded) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for object in [&loaded.xdp, &loaded.tc] {
        for (_, p) in object.ebpf.programs().filter(|(_, p)| p.fd().is_ok()) {
            ids.push(p.info()?.id());
        }
    }
    Ok(ids)
}

fn wait_until_freed(programs: &[u32]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: Vec<u32> = loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("programs {live:?} still loaded 10 s after their links were unpinned");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pinned_links_outlive_the_loader_and_are_taken_over_by_the_next() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let veth = VethPair::new()?;
    let features = palisade_tests::network_only();

    let mut loaded = palisade_tests::network_programs(&t.pins, ATTACHED)?;
    let states = attach_all(&mut loaded, &t.pins, &veth, features.tcx)?;
    assert!(
        matches!(
            states[0],
            LinkState::Pinned {
                replaced: false,
                ..
            }
        ),
        "{states:?}"
    );
    for tc in &states[1..] {
        if features.tcx {
            assert!(
                matches!(
                    tc,
                    LinkState::Pinned {
                        replaced: false,
                        ..
                    }
                ),
                "{tc:?}"
            );
        } else {
            assert_eq!(tc, &LinkState::Filter { replaced: false });
        }
    }

    assert_eq!(
        veth.udp_echo(N)?,
        N,
        "traffic must pass: nothing denies yet"
    );
    let c1 = counts(&t.pins)?;
    // At least the datagrams; ARP adds frames of its own.
    assert!(c1.xdp >= u64::from(N), "{c1:?}");
    assert!(c1.from_pod >= u64::from(N), "{c1:?}");
    assert!(c1.to_pod >= u64::from(N), "{c1:?}");

    // The "daemon" exits, in another namespace than the one it attached in:
    // pinned links and clsact filters keep the programs attached.
    drop(loaded);
    assert_eq!(veth.udp_echo(N)?, N);
    let c2 = counts(&t.pins)?;
    let n = u64::from(N);
    assert!(
        c2.xdp >= c1.xdp + n,
        "XDP ended with the loader: {c1:?} -> {c2:?}"
    );
    assert!(c2.from_pod >= c1.from_pod + n, "{c1:?} -> {c2:?}");
    assert!(c2.to_pod >= c1.to_pod + n, "{c1:?} -> {c2:?}");

    // The next loader adopts the maps and swaps its programs into the links.
    let mut next = palisade_tests::network_programs(&t.pins, ATTACHED)?;
    let states = attach_all(&mut next, &t.pins, &veth, features.tcx)?;
    assert!(
        matches!(states[0], LinkState::Pinned { replaced: true, .. }),
        "{states:?}"
    );
    for tc in &states[1..] {
        if features.tcx {
            assert!(
                matches!(tc, LinkState::Pinned { replaced: true, .. }),
                "{tc:?}"
            );
        } else {
            assert_eq!(tc, &LinkState::Filter { replaced: true });
        }
    }
    // Replaced, not added beside: each packet is counted once per hook.
    assert_eq!(veth.udp_echo(N)?, N);
    let c3 = counts(&t.pins)?;
    let once = |before: u64, after: u64| after >= before + n && after < before + 2 * n;
    assert!(once(c2.xdp, c3.xdp), "{c2:?} -> {c3:?}");
    assert!(once(c2.from_pod, c3.from_pod), "{c2:?} -> {c3:?}");
    assert!(once(c2.to_pod, c3.to_pod), "{c2:?} -> {c3:?}");

    // Unpinning detaches once no process holds the links. The kernel frees
    // a link from a workqueue and drops its program only after detaching it,
    // so waiting for the programs to go is waiting for the detach.
    let programs = program_ids(&next)?;
    drop(next);
    let removed = attach::unpin_links(&t.pins)?;
    let filters = veth.in_node(|| -> anyhow::Result<usize> {
        Ok(attach::detach_clsact(ifindex(&veth.host_if)?)?)
    })??;
    if features.tcx {
        assert_eq!((removed, filters), (3, 0));
    } else {
        assert_eq!((removed, filters), (1, 2));
    }
    wait_until_freed(&programs)?;
    // Background frames (IPv6 router solicitations) may have been counted
    // since c3; from here on nothing may count.
    let detached = counts(&t.pins)?;
    assert_eq!(veth.udp_echo(N)?, N);
    let c4 = counts(&t.pins)?;
    assert_eq!(
        c4, detached,
        "programs still attached after their links were unpinned"
    );
    Ok(())
}

#[test]
fn attaching_to_a_missing_interface_is_a_clear_error() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let mut loaded = palisade_tests::network_programs(&t.pins, PREFILTER)?;
    let err = attach::attach_xdp(&mut loaded.xdp, &t.pins, u32::MAX - 1, XdpMode::Default)
        .err()
        .context("attach to a nonexistent ifindex succeeded")?;
    assert!(err.to_string().contains("pal_xdp_pre"), "{err}");
    assert!(!t.pins.link(&format!("xdp-{}", u32::MAX - 1)).exists());
    Ok(())
}

#[test]
fn a_link_pinned_by_an_older_abi_is_taken_over_and_that_abi_retired() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let old = PinDir::with_abi(t.pins.base(), ebpf_common::ABI_VERSION - 1);
    let veth = VethPair::new()?;
    let xdp_pin = |pins: &PinDir| -> anyhow::Result<PathBuf> {
        Ok(pins.link(&format!(
            "xdp-{}",
            veth.in_node(|| ifindex(&veth.host_if))??
        )))
    };

    // What the previous daemon version left: its own maps and an XDP link.
    let mut previous = palisade_tests::network_programs(&old, PREFILTER)?;
    veth.in_node(|| -> anyhow::Result<LinkState> {
        let index = ifindex(&veth.host_if)?;
        Ok(attach::attach_xdp(
            &mut previous.xdp,
            &old,
            index,
            XdpMode::Default,
        )?)
    })??;
    drop(previous);
    assert!(xdp_pin(&old)?.exists());

    let mut current = palisade_tests::network_programs(&t.pins, PREFILTER)?;
    let state = veth.in_node(|| -> anyhow::Result<LinkState> {
        let index = ifindex(&veth.host_if)?;
        Ok(attach::attach_xdp(
            &mut current.xdp,
            &t.pins,
            index,
            XdpMode::Default,
        )?)
    })??;
    assert_eq!(
        state,
        LinkState::Pinned {
            path: xdp_pin(&t.pins)?,
            replaced: true
        }
    );
    assert!(
        !xdp_pin(&old)?.exists(),
        "the old pin must move, not be copied"
    );

    // One program on the link, and it counts into the new maps.
    let old_before = events(&old, maps::XDP_STATS, "ingress")?;
    let new_before = events(&t.pins, maps::XDP_STATS, "ingress")?;
    assert_eq!(veth.udp_echo(N)?, N);
    assert_eq!(events(&old, maps::XDP_STATS, "ingress")?, old_before);
    let new_after = events(&t.pins, maps::XDP_STATS, "ingress")?;
    assert!(
        new_after >= new_before + u64::from(N),
        "{new_before} -> {new_after}"
    );

    let retired = attach::retire_other_abis(&t.pins)?;
    assert_eq!(retired, [old.root().to_path_buf()]);
    assert!(!old.root().exists());
    drop(current);
    attach::unpin_links(&t.pins)?;
    Ok(())
}
