//! The TC programs on the desired endpoints' veths: attached before their
//! policy is written (a veth is never enforced with a half-written state,
//! and its endpoint entry exists before traffic is judged against it),
//! detached once nothing desired holds the veth.

use std::collections::BTreeSet;

use super::{Report, Syncer};
use crate::{compile::desired::Desired, loader::attach};

/// Attaches both TC programs to every desired veth that lacks them. A veth
/// whose attach failed is retried next pass; its endpoint is reported as
/// not enforced meanwhile.
pub(super) fn attach_new(syncer: &mut Syncer, desired: &Desired<'_>, report: &mut Report) {
    for (name, placed) in &desired.endpoints {
        let ifindex = placed.ifindex;
        if syncer.attached.contains(&ifindex) {
            continue;
        }
        let mut failed = Vec::new();
        for hook in [attach::TcHook::FromPod, attach::TcHook::ToPod] {
            if let Err(e) = attach::attach_tc(
                &mut syncer.loaded.tc,
                &syncer.pins,
                ifindex,
                hook,
                syncer.features.tcx,
            ) {
                failed.push(format!("attaching to ifindex {ifindex}: {e}"));
            }
        }
        if failed.is_empty() {
            syncer.attached.insert(ifindex);
        } else {
            report.attach_errors.extend(failed.iter().cloned());
            report.not_enforced.insert(name.clone(), failed.join("; "));
        }
    }
}

/// Detaches from the veths no desired endpoint holds. A failure is
/// reported once and the veth forgotten: it concerns no desired endpoint,
/// and a veth that went away took its programs with it.
pub(super) fn detach_unheld(syncer: &mut Syncer, desired: &Desired<'_>, report: &mut Report) {
    let held: BTreeSet<u32> = desired.endpoints.values().map(|p| p.ifindex).collect();
    let gone: Vec<u32> = syncer.attached.difference(&held).copied().collect();
    for ifindex in gone {
        if let Err(e) = attach::detach_tc(&syncer.pins, ifindex) {
            report.attach_errors.push(e.to_string());
        }
        syncer.attached.remove(&ifindex);
    }
}
