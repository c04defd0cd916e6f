//! The syncer against real pinned maps: it writes the compiler's state,
//! writes nothing when nothing changed, rewrites only the endpoints a change
//! touches, repairs an entry deleted behind its back, removes what no pod
//! holds any more, swaps no policy past prefilter denies it could not
//! take out, and keeps the pods' extra source prefixes as desired.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, LpmTrie, MapData};
use ebpf_common::{
    datapath::{PolicyKey, PolicyValue, endpoint_flags},
    maps,
};
use palisade::{
    compile::{
        compile,
        desired::{Desired, endpoint_ids},
    },
    datapath::DatapathMaps,
    loader,
    model::{Snapshot, parse::parse_documents},
    sync::{Report, Written, apply_maps, apply_maps_recorded},
};
use palisade_tests::{TempPins, pinned};

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 80}]}]\n";

fn standard(policies: &str) -> anyhow::Result<Snapshot> {
    let mut s = palisade::model::standard::snapshot();
    for doc in parse_documents(policies, "p.yaml", "default") {
        s.policies.push(doc?.policy().into());
    }
    Ok(s)
}

/// Fake ifindexes: the maps do not care whether the interfaces exist.
fn placed(s: &Snapshot) -> BTreeMap<String, u32> {
    s.pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key(), 1000 + i as u32))
        .collect()
}

/// One pass of the syncer's map writes for `s`, placed on `on`.
fn apply(
    maps: &mut DatapathMaps,
    s: &Snapshot,
    on: &BTreeMap<String, u32>,
) -> anyhow::Result<Report> {
    let compiled = compile(s);
    let desired =
        Desired::on_node(&compiled, on, &[]).with_sources(s.pods.iter().map(|p| &**p), true);
    Ok(apply_maps(maps, &desired)?)
}

#[test]
fn the_syncer_writes_differences_only_and_repairs_drift() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let _loaded = palisade_tests::network_maps(&t.pins)?;
    let mut maps = DatapathMaps::open(&t.pins)?;

    let s = standard(DENY_X)?;
    let on = placed(&s);
    let first = apply(&mut maps, &s, &on)?;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.endpoints_written.len(), 9);
    assert_eq!(first.identities_written, 9);

    let again = apply(&mut maps, &s, &on)?;
    assert!(!again.changed(), "an unchanged state rewrote: {again:?}");
    // Each endpoint holds its pod's address, the only source it may send
    // from; in the family its pod has no address in, none (`::`).
    let x_a = s.pods.iter().find(|p| p.key() == "x/a").context("x/a")?;
    let IpAddr::V4(own) = x_a.ips[0] else {
        bail!("x/a has no IPv4 address")
    };
    assert_eq!(x_a.ips.len(), 1, "x/a is single-stack");
    let value = maps.endpoint(on["x/a"])?.context("x/a's endpoint")?;
    assert_eq!(
        value.flags & endpoint_flags::SOURCES,
        endpoint_flags::SOURCE4 | endpoint_flags::SOURCE6
    );
    assert_eq!(value.source4, own.octets());
    assert_eq!(value.source6, [0; 16]);

    // Behind the daemon's back: one of x/a's entries disappears.
    let ids = endpoint_ids(on.keys().map(String::as_str));
    let mut exact: HashMap<MapData, PolicyKey, PolicyValue> = pinned(&t.pins, maps::POLICY_PORT)?;
    let trie: LpmTrie<MapData, PolicyKey, PolicyValue> = pinned(&t.pins, maps::POLICY)?;
    let victim = exact
        .keys()
        .filter_map(Result::ok)
        .find(|k| k.endpoint == ids["x/a"])
        .context("x/a has an exact-port entry")?;
    exact.remove(&victim)?;
    let repaired = apply(&mut maps, &s, &on)?;
    assert_eq!(repaired.endpoints_written, vec!["x/a".to_owned()]);
    assert!(!apply(&mut maps, &s, &on)?.changed());

    // A relabel of y/b touches x/a (its peers) and y/b's own identity.
    let relabelled = relabel_y_b(&s);
    let r = apply(&mut maps, &relabelled, &on)?;
    assert_eq!(r.endpoints_written, vec!["x/a".to_owned()], "{r:?}");
    assert_eq!(
        r.identities_written, 1,
        "y/b's address moves to a new identity"
    );

    // A pod gone from the node: its endpoint and generations go.
    let mut fewer = on.clone();
    let gone = fewer.remove("x/a").context("x/a placed")?;
    let r = apply(&mut maps, &relabelled, &fewer)?;
    assert_eq!(r.endpoints_removed, vec![gone]);
    assert!(maps.endpoint(gone)?.is_none());
    let stale = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().endpoint == ids["x/a"])
        .count()
        + exact
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.endpoint == ids["x/a"])
            .count();
    assert_eq!(stale, 0, "x/a's entries are gone");
    Ok(())
}

/// `s` with y/b labelled `role: web`: a new identity for it.
fn relabel_y_b(s: &Snapshot) -> Snapshot {
    let mut relabelled = s.clone();
    if let Some(p) = relabelled.pods.iter_mut().find(|p| p.key() == "y/b") {
        std::sync::Arc::make_mut(p)
            .labels
            .insert("role".into(), "web".into());
    }
    relabelled
}

/// A pass that trusts the record of the last one, recorded as the daemon
/// records it.
fn apply_trusting(
    maps: &mut DatapathMaps,
    s: &Snapshot,
    on: &BTreeMap<String, u32>,
    written: &mut Option<Written>,
) -> anyhow::Result<Report> {
    let compiled = compile(s);
    let desired =
        Desired::on_node(&compiled, on, &[]).with_sources(s.pods.iter().map(|p| &**p), true);
    Ok(apply_maps_recorded(maps, &desired, written, true)?)
}

#[test]
fn a_pass_that_trusts_the_last_leaves_what_a_full_pass_would() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let _loaded = palisade_tests::network_maps(&t.pins)?;
    let mut maps = DatapathMaps::open(&t.pins)?;
    let s = standard(DENY_X)?;
    let on = placed(&s);
    let mut written = None;
    let first = apply_trusting(&mut maps, &s, &on, &mut written)?;
    assert_eq!(first.endpoints_written.len(), 9, "nothing to trust yet");
    // Changes of every kind, each checked by a full pass after it that
    // must find nothing to write.
    let relabelled = relabel_y_b(&s);
    let mut more = relabelled.clone();
    let mut remote = (*more.pods[4]).clone();
    remote.name = "elsewhere".into();
    remote.ips = vec!["10.244.9.9".parse()?];
    remote.labels.insert("new".into(), "1".into());
    more.pods.push(remote.into());
    let edited = standard(&DENY_X.replace("port: 80", "port: 81"))?;
    let mut fewer = on.clone();
    fewer.remove("x/a");
    let mut readdressed = edited.clone();
    let x_b = readdressed
        .pods
        .iter_mut()
        .find(|p| p.key() == "x/b")
        .context("x/b")?;
    std::sync::Arc::make_mut(x_b).ips = vec!["10.244.9.10".parse()?];
    let steps: [(&str, &Snapshot, &BTreeMap<String, u32>); 7] = [
        ("a relabel", &relabelled, &on),
        ("another node's pod", &more, &on),
        ("a policy edited", &edited, &on),
        ("a local pod's new address", &readdressed, &on),
        ("its old address back", &edited, &on),
        ("a pod gone from the node", &edited, &fewer),
        ("nothing", &edited, &fewer),
    ];
    for (what, snapshot, on) in steps {
        let r = apply_trusting(&mut maps, snapshot, on, &mut written)?;
        assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
        let check = apply(&mut maps, snapshot, on)?;
        assert!(
            !check.changed() && check.endpoints_removed.is_empty(),
            "{what}: the full pass after it still wrote {check:?}"
        );
        // Nor did it leave entries of a generation no endpoint reads.
        let live: std::collections::BTreeSet<(u32, u8)> = maps
            .endpoints()?
            .values()
            .map(|v| (v.endpoint, v.generation()))
            .collect();
        for (at, entries) in maps.held_policy()? {
            assert!(
                live.contains(&at),
                "{what}: {} entries left under {at:?}",
                entries.len()
            );
        }
    }
    // What it trusts, it does not check: an identity deleted behind its
    // back stays missing until a full pass.
    let compiled = compile(&edited);
    let (net, _) = compiled.addresses.iter().next().context("an address")?;
    maps.remove_identity(net.addr(), net.prefix_len())?;
    let trusted = apply_trusting(&mut maps, &edited, &fewer, &mut written)?;
    assert_eq!(trusted.identities_written, 0);
    assert_eq!(apply(&mut maps, &edited, &fewer)?.identities_written, 1);
    Ok(())
}

/// A relabel gives a peer a new identity: the endpoints that only see
/// that peer change keep their live generation and are patched in place
/// (the peer's entries, not the whole policy written twice), and leave
/// what a full pass would.
#[test]
fn a_relabelled_peer_is_patched_in_place() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let _loaded = palisade_tests::network_maps(&t.pins)?;
    let mut maps = DatapathMaps::open(&t.pins)?;
    let s = standard(DENY_X)?;
    let on = placed(&s);
    let mut written = None;
    apply_trusting(&mut maps, &s, &on, &mut written)?;
    let x_a = on["x/a"];
    let before = maps.endpoints()?[&x_a];
    let peers = |maps: &DatapathMaps| -> anyhow::Result<Vec<u32>> {
        let held = maps.held_policy()?;
        let mut p: Vec<u32> = held
            .get(&(before.endpoint, before.generation()))
            .into_iter()
            .flat_map(|entries| entries.iter())
            .map(|(k, _)| k.data().peer)
            .collect();
        p.sort_unstable();
        Ok(p)
    };
    let peers_before = peers(&maps)?;
    let relabelled = relabel_y_b(&s);
    // y/b is 10.244.0.5 in the standard model.
    let y_b_id = |s: &Snapshot| {
        compile(s)
            .addresses
            .iter()
            .find(|(n, _)| n.addr().to_string() == "10.244.0.5")
            .map(|(_, id)| *id)
    };
    let (old_id, new_id) = (y_b_id(&s), y_b_id(&relabelled));
    assert_ne!(old_id, new_id, "y/b's identity moves");
    for trusting in [true, false] {
        let mut maps_written = written.clone();
        let r = if trusting {
            apply_trusting(&mut maps, &relabelled, &on, &mut maps_written)?
        } else {
            apply(&mut maps, &relabelled, &on)?
        };
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.endpoints_written.contains(&"x/a".to_owned()), "{r:?}");
        let after = maps.endpoints()?[&x_a];
        assert_eq!(after.revision, before.revision, "x/a is not swapped");
        let peers_after = peers(&maps)?;
        assert!(peers_after.contains(&new_id.context("new id")?));
        assert!(!peers_after.contains(&old_id.context("old id")?));
        assert_eq!(peers_after.len(), peers_before.len());
        let check = apply(&mut maps, &relabelled, &on)?;
        assert!(!check.changed(), "the full pass after it wrote {check:?}");
        // Back, for the other way of reading the maps.
        apply(&mut maps, &s, &on)?;
        assert_eq!(peers(&maps)?, peers_before);
    }
    Ok(())
}

const DENY_EXT: &str = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: no-ext-on-80}\nspec:\n  tier: Admin\n  subject: {podSelector: {matchLabels: {pod: a}}}\n  ingress: [{action: Deny, from: [{ipBlock: {cidr: 192.0.2.2/32}}], ports: [{port: 80}]}]\n";

/// Makes a pinned map read-only to every process from now on
/// (`BPF_MAP_FREEZE`; programs still write it): the syncer's next write to
/// it fails, as a write to a broken map would.
fn freeze(t: &TempPins, name: &str) -> anyhow::Result<()> {
    let map = aya::maps::MapData::from_pin(t.pins.map(name))?;
    palisade_tests::freeze_map(&map).with_context(|| format!("freezing {name}"))
}

/// Maps holding `DENY_EXT`'s policies and prefilter denies, written by a
/// first pass, with the pods' placements.
struct Denied {
    t: TempPins,
    _loaded: loader::Loaded,
    maps: DatapathMaps,
    on: BTreeMap<String, u32>,
}

fn denied() -> anyhow::Result<Denied> {
    let t = TempPins::new()?;
    let loaded = palisade_tests::network_maps(&t.pins)?;
    let mut maps = DatapathMaps::open(&t.pins)?;
    let denied = standard(DENY_EXT)?;
    let on = placed(&denied);
    let compiled = compile(&denied);
    let desired = Desired::on_node(&compiled, &on, &[]).with_pod_denies(&denied);
    let first = apply_maps(&mut maps, &desired)?;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    Ok(Denied {
        t,
        _loaded: loaded,
        maps,
        on,
    })
}

#[test]
fn a_failed_retire_of_prefilter_denies_swaps_no_policy() -> anyhow::Result<()> {
    let Denied {
        t,
        _loaded,
        mut maps,
        on,
    } = denied()?;
    let denies = maps.pod_denies()?;
    assert!(
        !denies.is_empty(),
        "the admin deny gave the prefilter nothing"
    );
    let before = maps.endpoint(on["x/a"])?.context("x/a's endpoint")?;

    // The deny goes, but its prefilter entries cannot be taken out.
    freeze(&t, maps::XDP_POD_DENY)?;
    let open = standard("")?;
    let compiled = compile(&open);
    let desired = Desired::on_node(&compiled, &on, &[]).with_pod_denies(&open);
    let r = apply_maps(&mut maps, &desired)?;
    assert!(
        r.errors.iter().any(|e| e.contains("no policy swapped")),
        "{:?}",
        r.errors
    );
    assert!(!r.in_force());
    assert!(
        r.endpoints_written.is_empty(),
        "swapped past stale denies: {r:?}"
    );
    assert_eq!(
        maps.endpoint(on["x/a"])?,
        Some(before),
        "x/a left the policy its prefilter denies repeat"
    );
    assert_eq!(maps.pod_denies()?, denies);
    Ok(())
}

/// A full identity map fails every write after the first: the pass says so
/// once, with a count, however many addresses did not fit.
#[test]
fn a_full_identity_map_is_one_error_and_a_count() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let mut sizes = palisade::loader::sizes::MapSizes::default();
    sizes.set(&format!("{}=16", maps::IDENTITY_HOST))?;
    let _loaded = loader::load_some(
        &t.pins,
        &palisade_tests::network_only(),
        &sizes,
        loader::Programs::NONE,
    )?;
    let mut m = DatapathMaps::open(&t.pins)?;
    let mut s = standard("")?;
    // Other nodes' pods: an address each, no veth.
    let local = placed(&s);
    for i in 0..40u8 {
        s.pods.push(
            palisade::model::Pod {
                namespace: "x".into(),
                name: format!("r{i}"),
                labels: [("remote".to_owned(), format!("r{i}"))].into(),
                ips: vec![std::net::IpAddr::from([10, 250, 0, i + 1])],
                ports: Vec::new(),
                cgroup: None,
                source_check: palisade::model::SourceCheck::On,
                source_prefixes: palisade::model::SourcePrefixes::None,
            }
            .into(),
        );
    }
    let report = apply(&mut m, &s, &local)?;
    // The 16 that fit are written and counted, whether by a batch the
    // full map cuts short (`datapath.rs` tests where a refusal falls) or
    // one by one.
    assert_eq!(report.identities_written, 16);
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
    assert!(
        report.errors[0].contains(maps::IDENTITY_HOST) && report.errors[0].contains("full"),
        "{}",
        report.errors[0]
    );
    assert!(report.errors[1].contains("more addresses' identities not written"));
    Ok(())
}

#[test]
fn extra_source_prefixes_are_written_kept_and_repaired() -> anyhow::Result<()> {
    use ebpf_common::datapath::SourcePrefixKey;
    use palisade::{datapath::sources::SourcePrefix, model::SourcePrefixes};

    let t = TempPins::new()?;
    let _loaded = palisade_tests::network_maps(&t.pins)?;
    let mut maps = DatapathMaps::open(&t.pins)?;
    let mut s = standard(DENY_X)?;
    let on = placed(&s);
    let ids = endpoint_ids(on.keys().map(String::as_str));
    let nets: Vec<ipnet::IpNet> = vec!["10.8.0.0/24".parse()?, "fd00:8::/64".parse()?];
    let x_a = s
        .pods
        .iter_mut()
        .find(|p| p.key() == "x/a")
        .context("x/a")?;
    std::sync::Arc::make_mut(x_a).source_prefixes = SourcePrefixes::List(nets.clone());
    let written = |maps: &DatapathMaps| -> anyhow::Result<Vec<SourcePrefix>> {
        Ok(maps.source_prefixes()?.into_iter().collect())
    };
    let want: Vec<SourcePrefix> = nets
        .iter()
        .map(|&n| SourcePrefix::Written(ids["x/a"], n))
        .collect();
    let flagged = |maps: &DatapathMaps, pod: &str| -> anyhow::Result<bool> {
        let value = maps.endpoint(on[pod])?.context("endpoint")?;
        Ok(value.flags & endpoint_flags::SOURCE_PREFIXES != 0)
    };

    let first = apply(&mut maps, &s, &on)?;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.source_prefixes_changed, 2);
    assert_eq!(written(&maps)?, want);
    assert!(flagged(&maps, "x/a")? && !flagged(&maps, "x/b")?);
    assert!(
        !apply(&mut maps, &s, &on)?.changed(),
        "unchanged, rewritten"
    );

    // Behind the daemon's back: one entry goes, another endpoint gains one,
    // and a key no daemon writes appears. The next pass mends all three.
    maps.remove_source_prefix(&want[0])?;
    maps.set_source_prefix(ids["x/b"], "10.9.0.0/16".parse()?)?;
    let mut raw: LpmTrie<MapData, SourcePrefixKey, u32> = pinned(&t.pins, maps::SOURCE_PREFIXES)?;
    let foreign = SourcePrefixKey {
        endpoint: ids["x/a"],
        family: 9,
        addr: [0; 16],
    };
    raw.insert(&aya::maps::lpm_trie::Key::new(64, foreign), &1, 0)?;
    let repaired = apply(&mut maps, &s, &on)?;
    assert!(repaired.errors.is_empty(), "{:?}", repaired.errors);
    assert_eq!(repaired.source_prefixes_changed, 3);
    assert_eq!(written(&maps)?, want);

    // The Pod drops its list: the entries and the flag go.
    let x_a = s
        .pods
        .iter_mut()
        .find(|p| p.key() == "x/a")
        .context("x/a")?;
    std::sync::Arc::make_mut(x_a).source_prefixes = SourcePrefixes::None;
    let dropped = apply(&mut maps, &s, &on)?;
    assert_eq!(dropped.endpoints_written, vec!["x/a".to_owned()]);
    assert_eq!(dropped.source_prefixes_changed, 2);
    assert!(written(&maps)?.is_empty());
    assert!(!flagged(&maps, "x/a")?);
    Ok(())
}

/// New prefixes come in only for an endpoint the maps show as written:
/// where no policy could be swapped (a failed retire of prefilter denies),
/// a pod's new prefixes are held back, reported, and not in its status.
#[test]
fn prefixes_wait_for_their_endpoint_to_be_written() -> anyhow::Result<()> {
    use palisade::model::SourcePrefixes;

    let Denied {
        t,
        _loaded,
        mut maps,
        on,
    } = denied()?;
    freeze(&t, maps::XDP_POD_DENY)?;
    let mut open = standard("")?;
    let x_a = open
        .pods
        .iter_mut()
        .find(|p| p.key() == "x/a")
        .context("x/a")?;
    std::sync::Arc::make_mut(x_a).source_prefixes =
        SourcePrefixes::List(vec!["10.8.0.0/24".parse()?]);
    let compiled = compile(&open);
    let desired = Desired::on_node(&compiled, &on, &[])
        .with_sources(open.pods.iter().map(|p| &**p), true)
        .with_pod_denies(&open);
    let r = apply_maps(&mut maps, &desired)?;
    assert!(r.endpoints_written.is_empty(), "{r:?}");
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("10.8.0.0/24 of x/a") && e.contains("held back")),
        "{:?}",
        r.errors
    );
    assert!(
        r.source_prefixes_unwritten
            .contains(&("x/a".to_owned(), "10.8.0.0/24".parse()?))
    );
    assert!(
        maps.source_prefixes()?.is_empty(),
        "written without its flag"
    );
    Ok(())
}

/// A pod's address that moves between its endpoint and the prefix map (its
/// lowest address changed) passes in one place or the other throughout:
/// one the endpoint is to hold leaves the map only once the maps show the
/// endpoint holding it, and one the endpoint holds now enters the map
/// before the endpoint is written. The order shows where the endpoint's
/// write fails (a frozen map): the moving address is still in the map (on
/// its way into the endpoint), or already there (on its way out of it).
#[test]
fn an_address_moving_between_endpoint_and_prefix_map_passes_throughout() -> anyhow::Result<()> {
    use std::net::IpAddr;

    use palisade::datapath::sources::SourcePrefix;

    let ip = |text: &str| text.parse::<IpAddr>();
    // x/a's second address moves into its endpoint (its lowest goes), and
    // x/b's only address moves into the map (a lower one comes): one load
    // for both, as it should go and with the endpoint's write failing.
    let moves = [
        (
            "x/a",
            vec![ip("10.77.0.1")?, ip("10.77.0.2")?],
            vec![ip("10.77.0.2")?],
            "into the endpoint",
        ),
        (
            "x/b",
            vec![ip("10.77.0.4")?],
            vec![ip("10.77.0.3")?, ip("10.77.0.4")?],
            "into the map",
        ),
    ];
    let with_ips = |s: &mut Snapshot, to: bool| -> anyhow::Result<()> {
        for (pod, from, after, _) in &moves {
            let p = s.pods.iter_mut().find(|p| p.key() == *pod).context("pod")?;
            std::sync::Arc::make_mut(p).ips = if to { after.clone() } else { from.clone() };
        }
        Ok(())
    };
    for fail in [false, true] {
        let t = TempPins::new()?;
        let _loaded = palisade_tests::network_maps(&t.pins)?;
        let mut maps = DatapathMaps::open(&t.pins)?;
        let mut s = standard("")?;
        let on = placed(&s);
        let ids = endpoint_ids(on.keys().map(String::as_str));
        let holds = |maps: &DatapathMaps, pod: &str, a: IpAddr| {
            let v = maps.endpoint(on[pod])?.context("endpoint")?;
            anyhow::Ok(IpAddr::from(v.source4) == a)
        };
        let in_map = |maps: &DatapathMaps, pod: &str, a: IpAddr| {
            let entry = SourcePrefix::Written(ids[pod], ipnet::IpNet::from(a));
            anyhow::Ok(maps.source_prefixes()?.contains(&entry))
        };
        with_ips(&mut s, false)?;
        let first = apply(&mut maps, &s, &on)?;
        anyhow::ensure!(first.errors.is_empty(), "{:?}", first.errors);
        for (pod, from, _, moving) in &moves {
            anyhow::ensure!(
                holds(&maps, pod, from[0])?,
                "{moving}: the lowest address held"
            );
            let further = from.len() == 2 && in_map(&maps, pod, from[1])?;
            anyhow::ensure!(further == (from.len() == 2), "{moving}: the map before");
        }
        with_ips(&mut s, true)?;
        if fail {
            freeze(&t, maps::ENDPOINTS)?;
        }
        let r = apply(&mut maps, &s, &on)?;
        anyhow::ensure!(
            r.errors.is_empty() != fail,
            "failing {fail}: {:?}",
            r.errors
        );
        for (pod, from, to, moving) in &moves {
            // The address that moves: the higher, in both.
            let address = *to.last().context("an address")?;
            let mapped = in_map(&maps, pod, address)?;
            if !fail {
                anyhow::ensure!(
                    holds(&maps, pod, to[0])?,
                    "{moving}: the new lowest address held"
                );
                anyhow::ensure!(mapped == (to.len() == 2), "{moving}: the map after");
                continue;
            }
            anyhow::ensure!(
                holds(&maps, pod, from[0])?,
                "{moving}: the endpoint keeps its old address"
            );
            let held = if holds(&maps, pod, address)? {
                "held by the endpoint"
            } else {
                "not held by the endpoint"
            };
            anyhow::ensure!(
                mapped,
                "{moving}, the endpoint's write failed: {address} {held} and not in the map"
            );
        }
    }
    Ok(())
}
