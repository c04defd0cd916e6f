//! The prefixes pods may send from besides their own addresses
//! (`PAL_SRC_PREFIX`), made what the desired state says every pass.
//!
//! Order: entries the desired state no longer has go before the endpoints
//! are written ([`retire`]), the new ones after ([`add`]). The endpoint's
//! `SOURCE_PREFIXES` flag says whether the datapath looks in the map at
//! all. No state in between lets a pod send from more than its old list
//! or its new one, even when an endpoint id passes from one pod to another
//! (ids are probed by name: a colliding pod's arrival or departure moves
//! them): the new holder's entries come in only once every endpoint
//! carries its new id. What it costs: a pod that gains a prefix may send
//! from it a moment after its endpoint is written, not before; and a pod
//! whose Pod changes its prefixes meets a moment in which the changed
//! entries of neither list pass (the datapath reads the map for every
//! packet that is not from the pod's own address, with no epoch or swap).
//!
//! A failed write is reported (the pass is then not in force) and the
//! rest are still made; the next pass reads the map again and repairs it.

use std::collections::BTreeSet;

use super::Report;
use crate::{
    compile::desired::Desired,
    datapath::{DatapathMaps, sources::SourcePrefix},
};

/// Takes out every entry `desired` does not have; returns what the map
/// holds then, for [`add`] (`None` when it could not be read: every pod
/// with prefixes is then reported as not having them written).
pub(super) fn retire(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    report: &mut Report,
) -> Option<BTreeSet<SourcePrefix>> {
    let mut held = match maps.source_prefixes() {
        Ok(held) => held,
        Err(e) => {
            report.errors.push(format!("source prefixes: {e}"));
            for &(endpoint, _) in &desired.source_prefixes {
                report
                    .source_prefixes_failed
                    .insert(name(desired, endpoint));
            }
            return None;
        }
    };
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
                report.errors.push(format!("source prefixes: {e}"));
                true
            }
        }
    });
    Some(held)
}

/// Puts in every entry of `desired` that `held` ([`retire`]'s) lacks.
pub(super) fn add(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    held: Option<&BTreeSet<SourcePrefix>>,
    report: &mut Report,
) {
    let Some(held) = held else {
        return;
    };
    for &(endpoint, net) in &desired.source_prefixes {
        if held.contains(&SourcePrefix::Written(endpoint, net)) {
            continue;
        }
        if let Err(e) = maps.set_source_prefix(endpoint, net) {
            let pod = name(desired, endpoint);
            report
                .errors
                .push(format!("source prefix {net} of {pod}: {e}"));
            report.source_prefixes_failed.insert(pod);
        } else {
            report.source_prefixes_changed += 1;
        }
    }
}

/// The endpoint's name in `desired` (`namespace/pod`).
fn name(desired: &Desired<'_>, endpoint: u32) -> String {
    desired
        .endpoints
        .iter()
        .find(|(_, placed)| placed.endpoint == endpoint)
        .map_or_else(|| format!("endpoint {endpoint}"), |(name, _)| name.clone())
}
