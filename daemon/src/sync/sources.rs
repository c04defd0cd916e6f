//! The prefixes pods may send from besides the address their endpoint
//! holds (`PAL_SRC_PREFIX`: their further addresses and their extra
//! prefixes), made what the desired state says every pass.
//!
//! Order: entries the desired state no longer has go before the endpoints
//! are written ([`retire`]), the new ones after ([`add`]). The endpoint's
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
//! too: one whose lowest address changes meets that moment for the
//! address that moves between its endpoint and the map.
//!
//! A failed write is reported (the pass is then not in force) and the
//! rest are still made; the next pass reads the map again and repairs it.
//! The status lists what is in force: a prefix that could not be written
//! is left out of its pod's list. One failure can leave more in force
//! than either list: a stale entry whose removal failed stays usable by
//! whichever pod holds its id, until a pass removes it; the error names
//! that pod, and its list in the status holds the entry.

use std::collections::{BTreeMap, BTreeSet};

use ebpf_common::datapath::endpoint_flags;

use super::Report;
use crate::{
    compile::desired::Desired,
    datapath::{DatapathError, DatapathMaps, sources::SourcePrefix},
};

/// Takes out every entry `desired` does not have; returns what the map
/// holds then, for [`add`]. `Err` only when the map cannot be read (the
/// pass then writes nothing more, as for any map it cannot read).
pub(super) fn retire(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    report: &mut Report,
) -> Result<BTreeSet<SourcePrefix>, DatapathError> {
    let mut held = maps.source_prefixes()?;
    let want = &desired.source_prefixes;
    held.retain(|entry| {
        if matches!(entry, SourcePrefix::Written(e, net) if want.contains(&(*e, *net))) {
            return true;
        }
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
    });
    Ok(held)
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
    let home: BTreeMap<u32, u32> = desired
        .endpoints
        .values()
        .map(|p| (p.endpoint, p.ifindex))
        .collect();
    let written = |endpoint: u32| {
        let mut holders = live.iter().filter(|(_, v)| v.endpoint == endpoint);
        holders.all(|(ifindex, _)| home.get(&endpoint) == Some(ifindex))
            && home
                .get(&endpoint)
                .and_then(|i| live.get(i))
                .is_some_and(|v| {
                    v.endpoint == endpoint && v.flags & endpoint_flags::SOURCE_PREFIXES != 0
                })
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
