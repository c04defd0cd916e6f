//! The prefixes pods may send from besides their own addresses
//! (`PAL_SRC_PREFIX`), made what the desired state says every pass, before
//! the endpoints are written.
//!
//! Order: entries the desired state no longer has go first, then the new
//! ones come in, then the endpoints (whose `SOURCE_PREFIXES` flag says
//! whether the datapath looks in the map at all). Every state in between
//! allows no more than the old state or the new one: a prefix is taken
//! away before another endpoint that reuses its endpoint id could send
//! from it, and a new endpoint's prefixes are there before its flag is.
//! (A pod whose Pod changes its prefixes may meet a moment in which
//! neither list's changed entries pass: the datapath reads the map for
//! every packet that is not from the pod's own address, with no epoch or
//! swap.)
//!
//! A failed write is reported (the pass is then not in force) and the
//! rest are still made; the next pass reads the map again and repairs it.

use std::collections::BTreeMap;

use super::Report;
use crate::{
    compile::desired::Desired,
    datapath::{DatapathMaps, sources::SourcePrefix},
};

/// Makes the map hold exactly `desired.source_prefixes`.
pub(super) fn keep(maps: &mut DatapathMaps, desired: &Desired<'_>, report: &mut Report) {
    let names: BTreeMap<u32, &str> = desired
        .endpoints
        .iter()
        .map(|(name, placed)| (placed.endpoint, name.as_str()))
        .collect();
    let name = |endpoint: u32| names.get(&endpoint).copied().unwrap_or("an endpoint");
    let held = match maps.source_prefixes() {
        Ok(held) => held,
        Err(e) => {
            report.errors.push(format!("source prefixes: {e}"));
            return;
        }
    };
    let want = &desired.source_prefixes;
    for entry in &held {
        let kept = matches!(entry, SourcePrefix::Written(e, net) if want.contains(&(*e, *net)));
        if kept {
            continue;
        }
        match maps.remove_source_prefix(entry) {
            Ok(()) => report.source_prefixes_changed += 1,
            Err(e) => report.errors.push(format!("source prefixes: {e}")),
        }
    }
    for &(endpoint, net) in want {
        if held.contains(&SourcePrefix::Written(endpoint, net)) {
            continue;
        }
        match maps.set_source_prefix(endpoint, net) {
            Ok(()) => report.source_prefixes_changed += 1,
            Err(e) => {
                let pod = name(endpoint);
                report
                    .errors
                    .push(format!("source prefix {net} of {pod}: {e}"));
                report.source_prefixes_failed.insert(pod.to_owned());
            }
        }
    }
}
