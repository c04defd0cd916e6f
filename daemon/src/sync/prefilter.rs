//! The XDP prefilter's writes and their order: the node-level deny list
//! (before the prefilter is attached, then kept every pass) and the
//! stateless denies of connection attempts to this node's pods (every pass).
//!
//! Order within a pass: pod denies the new policy no longer has go first,
//! then the pods' policies are swapped, then the new pod denies come in. A
//! pod deny only repeats a deny of the pod's own policy, so at no moment
//! does the prefilter drop what the policy in force allows.
//!
//! That holds when a write fails too. A failed retire may leave denies of
//! the old policies in force, so then no policy is swapped at all: every
//! endpoint keeps its last good policy, which those denies repeat, and the
//! next pass tries again. (Per endpoint would be finer, but a retire that
//! failed halfway does not say which pods' denies are gone.) A failed add
//! only leaves the prefilter dropping less than it could: the pods' own
//! programs still deny.

use std::collections::{BTreeMap, BTreeSet};

use ebpf_common::datapath::{NODE_DENY_POLICY, XdpPodDenyKey};
use ipnet::IpNet;

use super::{Report, StartError};
use crate::{
    compile::desired::PodDeny,
    datapath::{DatapathError, DatapathMaps, prefilter::pod_deny_entries},
    loader::{self, LoadedObject},
    paths::PinDir,
};

/// Makes the node deny list exactly `cidrs`, then attaches the prefilter to
/// `uplinks`: it never runs with a shorter deny list than asked for.
/// Returns the uplinks by ifindex.
pub(super) fn install(
    maps: &mut DatapathMaps,
    xdp: &mut LoadedObject,
    pins: &PinDir,
    uplinks: &[String],
    cidrs: &[IpNet],
) -> Result<BTreeMap<u32, String>, StartError> {
    set_node_denies(maps, cidrs)?;
    let mode = aya::programs::XdpMode::default();
    let mut on = BTreeMap::new();
    for (uplink, state) in loader::attach_prefilter(xdp, pins, uplinks, mode)? {
        tracing::info!("XDP prefilter on {uplink}: {state:?}");
        if let Ok(ifindex) = crate::netns::ifindex(&uplink) {
            on.insert(ifindex, uplink);
        }
    }
    Ok(on)
}

/// [`set_node_denies`] in a pass: a failure is reported, and repaired by
/// the next pass.
pub(super) fn keep_node_denies(maps: &mut DatapathMaps, cidrs: &[IpNet], report: &mut Report) {
    if let Err(e) = set_node_denies(maps, cidrs) {
        report.errors.push(format!("XDP prefilter: {e}"));
    }
}

/// Makes the node-level deny list exactly `cidrs`, counted under
/// [`NODE_DENY_POLICY`], writing differences only.
fn set_node_denies(maps: &mut DatapathMaps, cidrs: &[IpNet]) -> Result<(), DatapathError> {
    let held = maps.cidr_denies()?;
    for net in held.keys().filter(|n| !cidrs.contains(n)) {
        maps.remove_cidr_deny(net.addr(), net.prefix_len())?;
    }
    for net in cidrs {
        if held.get(net) != Some(&NODE_DENY_POLICY) {
            maps.set_cidr_deny(net.addr(), net.prefix_len(), NODE_DENY_POLICY)?;
        }
    }
    Ok(())
}

/// A pass's pod denies between the retire and the add: what the map holds
/// after the retire, and what the pass wants, as map entries; `None`: the
/// pass leaves the pod denies as they are.
pub(super) type PodDenies = Option<(BTreeMap<XdpPodDenyKey, u32>, BTreeMap<XdpPodDenyKey, u32>)>;

/// Takes out the pod denies that `want` does not have (none when `want`
/// is `None`) and returns what [`add`] needs.
pub(super) fn retire(
    maps: &mut DatapathMaps,
    want: Option<&BTreeSet<PodDeny>>,
) -> Result<PodDenies, DatapathError> {
    let Some(want) = want else {
        return Ok(None);
    };
    let entries = pod_deny_entries(want)?;
    let kept = maps.retire_pod_denies(&entries)?;
    Ok(Some((kept, entries)))
}

/// Makes the pod denies exactly what [`retire`] was given.
pub(super) fn add(maps: &mut DatapathMaps, denies: &PodDenies) -> Result<(), DatapathError> {
    match denies {
        Some((kept, want)) => maps.add_pod_denies(kept, want),
        None => Ok(()),
    }
}

/// The writes of a pass that the pod denies' order spans.
pub(super) trait Steps {
    /// Takes out the pod denies the desired state no longer has.
    fn retire_stale_denies(&mut self) -> Result<(), DatapathError>;
    /// Everything between: identities, the endpoints' policies, removals.
    /// `Err` only when the maps cannot be read.
    fn swap_policies(&mut self) -> Result<(), DatapathError>;
    /// Puts in the pod denies the desired state has.
    fn add_new_denies(&mut self) -> Result<(), DatapathError>;
    fn report(&mut self) -> &mut Report;
}

/// Stale denies out, policies swapped, new denies in; no swap after a
/// failed retire (see the module docs).
pub(super) fn in_order(pass: &mut impl Steps) -> Result<(), DatapathError> {
    if let Err(e) = pass.retire_stale_denies() {
        pass.report().errors.push(format!(
            "XDP prefilter: {e}; no policy swapped, every endpoint keeps its last good policy"
        ));
        return Ok(());
    }
    pass.swap_policies()?;
    if let Err(e) = pass.add_new_denies() {
        pass.report().errors.push(format!("XDP prefilter: {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps it is asked to take; its retire fails on demand.
    #[derive(Default)]
    struct Recorder {
        retire_fails: bool,
        add_fails: bool,
        taken: Vec<&'static str>,
        report: Report,
    }

    fn failed() -> DatapathError {
        DatapathError::Read {
            name: "PAL_XDP_POD_DENY",
            source: aya::maps::MapError::KeyNotFound,
        }
    }

    impl Steps for Recorder {
        fn retire_stale_denies(&mut self) -> Result<(), DatapathError> {
            self.taken.push("retire");
            if self.retire_fails {
                return Err(failed());
            }
            Ok(())
        }
        fn swap_policies(&mut self) -> Result<(), DatapathError> {
            self.taken.push("swap");
            Ok(())
        }
        fn add_new_denies(&mut self) -> Result<(), DatapathError> {
            self.taken.push("add");
            if self.add_fails {
                return Err(failed());
            }
            Ok(())
        }
        fn report(&mut self) -> &mut Report {
            &mut self.report
        }
    }

    #[test]
    fn stale_denies_go_before_the_swap_and_new_ones_come_after() {
        let mut pass = Recorder::default();
        in_order(&mut pass).unwrap();
        assert_eq!(pass.taken, ["retire", "swap", "add"]);
        assert!(pass.report.in_force(), "{:?}", pass.report);
    }

    #[test]
    fn a_failed_retire_swaps_nothing_and_is_reported() {
        let mut pass = Recorder {
            retire_fails: true,
            ..Recorder::default()
        };
        in_order(&mut pass).unwrap();
        assert_eq!(pass.taken, ["retire"], "a policy swapped past stale denies");
        assert_eq!(pass.report.errors.len(), 1);
        assert!(
            pass.report.errors[0].contains("no policy swapped"),
            "{:?}",
            pass.report.errors
        );
        assert!(!pass.report.in_force());
    }

    #[test]
    fn a_failed_add_keeps_the_swap_and_is_reported() {
        let mut pass = Recorder {
            add_fails: true,
            ..Recorder::default()
        };
        in_order(&mut pass).unwrap();
        assert_eq!(pass.taken, ["retire", "swap", "add"]);
        assert!(
            !pass.report.in_force(),
            "a failed prefilter write was ready"
        );
    }
}
