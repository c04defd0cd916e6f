//! The prefixes pods may send from besides the address their endpoint
//! holds (`PAL_SRC_PREFIX`: their further addresses and their extra
//! prefixes), made what the desired state says every pass.
//!
//! Order: entries the desired state no longer has go before the endpoints
//! are written ([`retire`]), the new ones after ([`add`]). Two kinds of
//! entry are in both lists at once, and go the other way: a pod's address
//! that moves between its endpoint and the map (its lowest address
//! changed). One the endpoint will hold stays until the maps show the
//! endpoint holding it ([`settle`]); one the endpoint holds now comes in
//! before the endpoint is written, where the maps show it there. The endpoint's
//! `SOURCE_PREFIXES` flag says whether the datapath looks in the map at
//! all. No state in between lets a pod send from more than its old list
//! or its new one, even when an endpoint id passes from one pod to another
//! (ids are probed by name: a colliding pod's arrival or departure moves
//! them): an id's new entries come in only where the maps show its
//! endpoint on its pod's interface, flagged, and on no other (so not
//! after a swap or removal that failed). What it costs: a pod that gains
//! a prefix may send from it a moment after its endpoint is written, not
//! before; and a pod whose Pod changes its prefixes meets a moment in
//! which the changed entries of neither list pass (the datapath reads the
//! map for every packet that is not from the address its endpoint holds,
//! with no epoch or swap). A pod's further addresses are such entries
//! too, but an address moving between its endpoint and the map passes in
//! one place or the other throughout.
//!
//! A failed write is reported (the pass is then not in force) and the
//! rest are still made; the next pass reads the map again and repairs it.
//! The status lists what is in force: a prefix that could not be written
//! is left out of its pod's list. One failure can leave more in force
//! than either list: a stale entry whose removal failed stays usable by
//! whichever pod holds its id, until a pass removes it; the error names
//! that pod, and its list in the status holds the entry.

use std::collections::{BTreeMap, BTreeSet};

use ebpf_common::datapath::{EndpointValue, endpoint_flags};
use ipnet::IpNet;

use super::Report;
use crate::{
    compile::desired::Desired,
    datapath::{DatapathError, DatapathMaps, sources::SourcePrefix},
};

/// What [`retire`] leaves for the steps after the endpoints are written.
pub(super) struct Retired {
    /// What the map holds, for [`add`].
    pub held: BTreeSet<SourcePrefix>,
    /// Stale entries of addresses their endpoints are to hold, for
    /// [`settle`].
    pub moving: Vec<SourcePrefix>,
}

/// Takes out every entry `desired` does not have, but an address its
/// endpoint is to hold, and brings in those of addresses their endpoints
/// hold now; returns what the map holds then. `Err` only when a map cannot
/// be read (the pass then writes nothing more, as for any map it cannot
/// read).
pub(super) fn retire(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    report: &mut Report,
) -> Result<Retired, DatapathError> {
    let mut held = maps.source_prefixes()?;
    let want = &desired.source_prefixes;
    let to_hold = to_hold(desired);
    let is_moving = |entry: &SourcePrefix| match entry {
        SourcePrefix::Written(e, net) => {
            !want.contains(&(*e, *net)) && to_hold.get(e).is_some_and(|nets| nets.contains(net))
        }
        SourcePrefix::Foreign(..) => false,
    };
    // Only the same pod's address moves: its id must be on its own
    // interface alone now, or the entry would stay usable by another pod
    // that holds the id until its endpoint's write succeeds.
    let live = if held.iter().any(is_moving) {
        maps.endpoints()?
    } else {
        BTreeMap::new()
    };
    let home = homes(desired);
    let mut moving = Vec::new();
    held.retain(|entry| {
        let SourcePrefix::Written(e, net) = entry else {
            return remove(maps, desired, entry, report);
        };
        if want.contains(&(*e, *net)) {
            return true;
        }
        if is_moving(entry) && alone_at_home(&live, &home, *e).is_some() {
            moving.push(*entry);
            return true;
        }
        remove(maps, desired, entry, report)
    });
    bring_forward(maps, desired, &mut held, report)?;
    Ok(Retired { held, moving })
}

/// The host prefixes of the addresses each endpoint id is to hold.
fn to_hold(desired: &Desired<'_>) -> BTreeMap<u32, Vec<IpNet>> {
    desired
        .endpoints
        .values()
        .map(|p| {
            let v4 = p.sources.v4.map(|a| IpNet::from(std::net::IpAddr::V4(a)));
            let v6 = p.sources.v6.map(|a| IpNet::from(std::net::IpAddr::V6(a)));
            (p.endpoint, v4.into_iter().chain(v6).collect())
        })
        .collect()
}

/// Whether the endpoint as written holds `net`, a host prefix, as the
/// address its pod's packets come from.
fn holds(v: &EndpointValue, net: &IpNet) -> bool {
    if net.prefix_len() != net.max_prefix_len() {
        return false;
    }
    match net.addr() {
        std::net::IpAddr::V4(a) => {
            v.flags & endpoint_flags::SOURCE4 != 0 && v.source4 == a.octets()
        }
        std::net::IpAddr::V6(a) => {
            v.flags & endpoint_flags::SOURCE6 != 0 && v.source6 == a.octets()
        }
    }
}

/// Writes now the new entries of addresses their endpoints hold now, as
/// the maps show them on their pods' interfaces alone (about to move into
/// the map): in both lists, so no moment passes them in neither place.
/// What fails here is left to [`add`], which reports it.
fn bring_forward(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    held: &mut BTreeSet<SourcePrefix>,
    report: &mut Report,
) -> Result<(), DatapathError> {
    let new: Vec<(u32, IpNet)> = (desired.source_prefixes.iter())
        .filter(|&&(e, net)| {
            !held.contains(&SourcePrefix::Written(e, net))
                && net.prefix_len() == net.max_prefix_len()
        })
        .copied()
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let live = maps.endpoints()?;
    let home = homes(desired);
    for (endpoint, net) in new {
        let alone = alone_at_home(&live, &home, endpoint);
        if alone.is_some_and(|v| holds(v, &net)) && maps.set_source_prefix(endpoint, net).is_ok() {
            held.insert(SourcePrefix::Written(endpoint, net));
            report.source_prefixes_changed += 1;
        }
    }
    Ok(())
}

/// Each endpoint id's interface in `desired`.
fn homes(desired: &Desired<'_>) -> BTreeMap<u32, u32> {
    desired
        .endpoints
        .values()
        .map(|p| (p.endpoint, p.ifindex))
        .collect()
}

/// The endpoint the maps show on `endpoint`'s interface, where it is
/// there and on no other.
fn alone_at_home<'m>(
    live: &'m BTreeMap<u32, EndpointValue>,
    home: &BTreeMap<u32, u32>,
    endpoint: u32,
) -> Option<&'m EndpointValue> {
    let ifindex = home.get(&endpoint)?;
    let mut holders = live.iter().filter(|(_, v)| v.endpoint == endpoint);
    if !holders.all(|(i, _)| i == ifindex) {
        return None;
    }
    live.get(ifindex).filter(|v| v.endpoint == endpoint)
}

/// Takes out the stale entries of addresses their endpoints were to hold,
/// where the maps show them holding those now; the others stay (their
/// endpoints still hold the old lists) and are reported, for the next
/// pass.
pub(super) fn settle(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    moving: &[SourcePrefix],
    report: &mut Report,
) -> Result<(), DatapathError> {
    if moving.is_empty() {
        return Ok(());
    }
    let live = maps.endpoints()?;
    let home = homes(desired);
    for entry in moving {
        let SourcePrefix::Written(endpoint, net) = entry else {
            continue;
        };
        if alone_at_home(&live, &home, *endpoint).is_some_and(|v| holds(v, net)) {
            remove(maps, desired, entry, report);
        } else {
            let holder = name(desired, *endpoint);
            report.source_prefixes_left.insert((holder.clone(), *net));
            report.errors.push(format!(
                "source prefixes: {net} of {holder} kept: the maps do not show its endpoint holding it yet"
            ));
        }
    }
    Ok(())
}

/// Removes one entry; false once it is out (for `retain`), true where the
/// removal failed (reported: it stays usable by whichever pod holds its
/// id).
fn remove(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    entry: &SourcePrefix,
    report: &mut Report,
) -> bool {
    match maps.remove_source_prefix(entry) {
        Ok(()) => {
            report.source_prefixes_changed += 1;
            false
        }
        Err(e) => {
            let holder = match entry {
                SourcePrefix::Written(endpoint, net) => {
                    let holder = name(desired, *endpoint);
                    report.source_prefixes_left.insert((holder.clone(), *net));
                    holder
                }
                SourcePrefix::Foreign(..) => "no endpoint".into(),
            };
            report.errors.push(format!(
                "source prefixes: {e}; {holder} may send from it until a pass removes it"
            ));
            true
        }
    }
}

/// Puts in every entry of `desired` that `held` ([`retire`]'s) lacks, for
/// the endpoints the maps show as written (see the module docs).
pub(super) fn add(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    held: &BTreeSet<SourcePrefix>,
    report: &mut Report,
) -> Result<(), DatapathError> {
    let new: Vec<_> = desired
        .source_prefixes
        .iter()
        .filter(|&&(e, net)| !held.contains(&SourcePrefix::Written(e, net)))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let live = maps.endpoints()?;
    let home = homes(desired);
    let written = |endpoint: u32| {
        alone_at_home(&live, &home, endpoint)
            .is_some_and(|v| v.flags & endpoint_flags::SOURCE_PREFIXES != 0)
    };
    for &(endpoint, net) in new {
        let pod = name(desired, endpoint);
        let result = if written(endpoint) {
            maps.set_source_prefix(endpoint, net)
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "held back: the maps do not show endpoint id {endpoint} as written on its interface alone"
            ))
        };
        match result {
            Ok(()) => report.source_prefixes_changed += 1,
            Err(e) => {
                report
                    .errors
                    .push(format!("source prefix {net} of {pod}: {e}"));
                report.source_prefixes_unwritten.insert((pod, net));
            }
        }
    }
    Ok(())
}

/// The endpoint's name in `desired` (`namespace/pod`).
fn name(desired: &Desired<'_>, endpoint: u32) -> String {
    desired
        .endpoints
        .iter()
        .find(|(_, placed)| placed.endpoint == endpoint)
        .map_or_else(|| format!("endpoint {endpoint}"), |(name, _)| name.clone())
}
